"""Invoices in the engine and the kernel together: lines grouped by pricing-dimension values and split by version,
the one rounding rule, closing a period (and what it refuses), the preview equal to the final invoice, and the
independent oracle in tests/reference_billing.py computing the same invoice."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine import revenue
from engine.billing import Billing, drain_compile
from engine.control import NO_CLOSED_PERIODS, NO_INVOICES
from engine.errors import FailedPrecondition, InvalidArgument, Repeated
from engine.invoices import Invoice, minor_unit
from tests.engine_fixtures import ACTOR, DAY_MS, EPOCH_MS, HOUR_MS, World, rate, unit
from tests.kernel_fixtures import usage_event
from tests.reference_billing import reference_invoice
from tests.test_invoice_properties import as_server as server

FEB_1_MS = EPOCH_MS + 31 * DAY_MS
PICO = Decimal(1).scaleb(-12)


@dataclass
class BillingWorld(World):
    """A World whose commands go through engine.billing.Billing, usage to its kernel."""

    billing: Billing = field(default_factory=Billing)
    batches: int = 0

    def __post_init__(self) -> None:
        self.engine = self.billing.engine

    def apply(self, command: cmd.AdminCommand) -> object:
        result = self.billing.apply(command, self.seq + 1)
        self.journal.append(command)
        return result

    def usage(self, events: list[usage_pb2.UsageEvent], received_ms: int = FEB_1_MS) -> usage_pb2.IngestAck:
        self.batches += 1
        batch = usage_pb2.UsageBatch(batch_id=f"b{self.batches}", events=events)
        return usage_pb2.IngestAck.FromString(self.billing.ingest(batch.SerializeToString(), received_ms).ack)

    def close(self, period_start_ms: int = EPOCH_MS, at_ms: int = FEB_1_MS) -> Invoice:
        result = self.apply(cmd.ClosePeriod(at_ms, ACTOR, "acme", period_start_ms))
        assert isinstance(result, Invoice)
        return result


def world(
    prices: list[tuple[int, str, str]], *, pricing_unit: str = "credits", overage_price: str = "1"
) -> BillingWorld:
    """acme on a card whose versions price tokens per unit by model: (effective_from_ms, gpt4 price, claude price)."""
    w = BillingWorld()
    w.product("tokens", dimensions=("model",))
    w.rate_card(pricing_unit=pricing_unit)
    for effective_from_ms, gpt4, claude in prices:
        w.version(
            [rate("tokens", unit(gpt4), model="gpt4"), rate("tokens", unit(claude), model="claude")],
            effective_from_ms=effective_from_ms,
        )
    w.customer()
    w.contract(overage_price=overage_price)
    return w


def tokens(tx: str, ts_ms: int, quantity: float, model: str = "gpt4") -> usage_pb2.UsageEvent:
    return usage_event(tx, ts_ms, {"tokens": quantity}, dimensions={"model": model})


def draft_fields(invoice: Invoice) -> dict[str, Any]:
    """Every field but those only a final invoice has (number, status, close time, what was recorded before it)."""
    fields: dict[str, Any] = msgspec.to_builtins(invoice)
    for name in ("number", "final", "closed_at_ms", "recorded_before"):
        fields.pop(name)
    return fields


def test_lines_group_by_dimension_values_and_split_across_versions() -> None:
    w = world([(EPOCH_MS, "2", "1"), (EPOCH_MS + 5 * HOUR_MS, "3", "1")])
    w.grant("prepaid", "10")
    ack = w.usage(
        [
            tokens("t1", EPOCH_MS + HOUR_MS, 2),
            tokens("t2", EPOCH_MS + 6 * HOUR_MS, 2),
            tokens("t3", EPOCH_MS + 7 * HOUR_MS, 1.5, "claude"),
        ]
    )
    assert ack.accepted == 3
    invoice = w.billing.engine.preview("acme", EPOCH_MS + DAY_MS)
    assert [line.line_id for line in invoice.lines] == ["tokens;model=claude", "tokens;model=gpt4"]
    gpt4 = invoice.lines[1]
    # 2 tokens at 2, then 2 more at 3 on the cumulative 4: 4 x 3 - 2 x 3 = 6.
    assert [(p.version, p.quantity_e18, p.amount_picos, p.unit_price_picos) for p in gpt4.parts] == [
        (1, 2 * 10**18, 4 * 10**12, 2 * 10**12),
        (2, 2 * 10**18, 6 * 10**12, 3 * 10**12),
    ]
    assert (gpt4.amount_picos, gpt4.credits, gpt4.overage_picos) == (10 * 10**12, [("prepaid", 10 * 10**12)], 0)
    claude = invoice.lines[0]
    assert (claude.amount_picos, claude.overage_picos, claude.amount_due_minor) == (15 * 10**11, 15 * 10**11, 150)
    assert (invoice.subtotal_picos, invoice.overage_due_minor, invoice.total_due_minor) == (115 * 10**11, 150, 150)
    assert invoice.credits_applied == [("prepaid", 10 * 10**12)]
    assert [(g.grant_id, g.granted_picos, g.drawn_picos, g.remaining_picos) for g in invoice.grant_balances] == [
        ("prepaid", 10 * 10**12, 10 * 10**12, 0)
    ]
    assert not invoice.final and invoice.number == ""


def test_many_tiny_charges_round_once_and_the_adjustment_keeps_every_cent() -> None:
    models = [f"m{i}" for i in range(30)]
    w = BillingWorld()
    w.product("tokens", dimensions=("model",))
    w.rate_card(pricing_unit="USD")
    w.version([rate("tokens", unit("0.0015"))])
    w.customer()
    w.contract(overage_price="1")
    # 30 lines of 3 tokens each at 0.0015: 0.0045 a line rounds to 0.00, yet the period owes 0.135 -> 0.14.
    w.usage([tokens(f"t{i}", EPOCH_MS + i * HOUR_MS, 3, model) for i, model in enumerate(models)])
    invoice = w.close()
    assert all(line.amount_due_minor == 0 for line in invoice.lines) and len(invoice.lines) == 30
    assert invoice.overage_picos == 135 * 10**9
    assert (invoice.overage_due_minor, invoice.rounding_adjustment_minor, invoice.total_due_minor) == (14, 14, 14)
    assert sum(line.amount_due_minor for line in invoice.lines) + invoice.rounding_adjustment_minor == 14


def test_a_currency_without_minor_unit_rounds_to_whole_units_half_even() -> None:
    assert (minor_unit("JPY"), minor_unit("usd"), minor_unit("KWD"), minor_unit("credits")) == (0, 2, 3, 2)
    w = world([(EPOCH_MS, "2.5", "1")], overage_price="1")
    w.engine.state.contracts["c-acme"].currency = "JPY"  # as CreateContract(currency="JPY") would store it
    w.usage([tokens("t1", EPOCH_MS + HOUR_MS, 1)])  # 2.5 yen owed: half-even gives 2
    invoice = w.close()
    assert (invoice.minor_unit, invoice.overage_due_minor, invoice.lines[0].amount_due_minor) == (0, 2, 2)


def test_close_refuses_what_it_cannot_close_and_closes_once() -> None:
    w = world([(EPOCH_MS, "2", "1")])
    w.usage([tokens("t1", EPOCH_MS + HOUR_MS, 1)])
    with pytest.raises(FailedPrecondition, match="ends at 2026-02-01T00:00:00Z"):
        w.close(at_ms=FEB_1_MS - 1)
    with pytest.raises(InvalidArgument, match="nearest period start is 2026-01-01T00:00:00Z") as bad:
        w.close(EPOCH_MS + 3 * DAY_MS)
    assert bad.value.violations[0][0] == "period_start"
    seq = w.seq
    invoice = w.close()
    assert (invoice.number, invoice.final, invoice.closed_at_ms, w.seq) == ("INV-00000001", True, FEB_1_MS, seq + 1)
    with pytest.raises(Repeated) as again:
        w.close(at_ms=FEB_1_MS + DAY_MS)
    assert again.value.result is invoice
    # The period is closed in the kernel too: a late event for it is refused, one for February is rated.
    ack = w.usage(
        [tokens("late", EPOCH_MS + 2 * HOUR_MS, 1), tokens("feb", FEB_1_MS + HOUR_MS, 1)], FEB_1_MS + 2 * HOUR_MS
    )
    assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"] and ack.accepted == 1
    assert w.engine.preview("acme", EPOCH_MS) is invoice
    assert w.engine.preview("acme", FEB_1_MS).subtotal_picos == 2 * 10**12


def test_close_due_periods_closes_every_ended_period_once_and_survives_a_snapshot() -> None:
    w = world([(EPOCH_MS, "2", "1")])
    w.customer("globex")
    w.contract("c-globex", customer_id="globex")
    assert w.engine.next_period_end_ms() == FEB_1_MS
    w.usage([tokens("t1", EPOCH_MS + HOUR_MS, 1)])
    with pytest.raises(Repeated):  # within the grace: nothing due
        w.apply(cmd.CloseDuePeriods(FEB_1_MS + HOUR_MS, ACTOR, DAY_MS))
    closed = w.apply(cmd.CloseDuePeriods(FEB_1_MS + DAY_MS, ACTOR, DAY_MS))
    assert isinstance(closed, list)
    assert [(i.customer_id, i.number, i.total_due_minor) for i in closed] == [
        ("acme", "INV-00000001", 200),
        ("globex", "INV-00000002", 0),
    ]
    assert w.engine.next_period_end_ms() == EPOCH_MS + (31 + 28) * DAY_MS
    restored = Billing.from_snapshot(w.billing.encode_snapshot())
    assert restored.engine.invoices_of("acme") == w.engine.invoices_of("acme")
    assert restored.engine.invoice("INV-00000002").customer_id == "globex"


def test_closing_one_customers_period_leaves_the_shared_empty_dicts_of_the_others_empty() -> None:
    """Accounts without closed periods share one empty dict each for closed periods and invoices (64 bytes each
    a customer): closing acme's period gives acme dicts of its own, and globex's, a snapshot's too, stay empty."""
    w = world([(EPOCH_MS, "2", "1")])
    w.customer("globex")
    w.contract("c-globex", customer_id="globex")
    acme, globex = w.engine.state.accounts["acme"], w.engine.state.accounts["globex"]
    assert acme.invoices is globex.invoices and acme.closed_periods is globex.closed_periods
    w.close()
    assert (acme.invoices, acme.closed_periods) == ({EPOCH_MS: "INV-00000001"}, {EPOCH_MS: None})
    assert (globex.invoices, globex.closed_periods) == ({}, {})
    assert (NO_INVOICES, NO_CLOSED_PERIODS) == ({}, {})
    restored = Billing.from_snapshot(w.billing.encode_snapshot()).engine.state.accounts
    assert restored["globex"].invoices is NO_INVOICES and restored["globex"].closed_periods is NO_CLOSED_PERIODS
    assert restored["acme"].invoices == {EPOCH_MS: "INV-00000001"}


def test_close_due_periods_in_slices_takes_the_earliest_period_ends_first() -> None:
    w = world([(EPOCH_MS, "2", "1")])
    w.customer("globex")
    w.contract("c-globex", customer_id="globex", starting_at_ms=FEB_1_MS)
    w.close()  # acme's January, by hand
    march_1_ms = EPOCH_MS + (31 + 28) * DAY_MS
    april_1_ms = march_1_ms + 31 * DAY_MS
    first = w.apply(cmd.CloseDuePeriods(april_1_ms, ACTOR, 0, 2))
    second = w.apply(cmd.CloseDuePeriods(april_1_ms, ACTOR, 0, 2))
    assert isinstance(first, list) and isinstance(second, list)
    # February ends first for both (c-acme before c-globex), then March for both.
    assert [(i.customer_id, i.period_end_ms) for i in first + second] == [
        ("acme", march_1_ms),
        ("globex", march_1_ms),
        ("acme", april_1_ms),
        ("globex", april_1_ms),
    ]
    assert w.engine.next_period_end_ms() == april_1_ms + 30 * DAY_MS
    with pytest.raises(Repeated):
        w.apply(cmd.CloseDuePeriods(april_1_ms, ACTOR, 0, 2))


def test_close_due_periods_recompiles_the_closed_customers_tables_only() -> None:
    """A month's end closes every customer's period, 256 a command: each command recompiles the tables of the
    customers it closed (as ClosePeriod does its one's), not every customer's, which at 10,000 customers cost
    about 120 ms a command (40 of them) and grows with the square of the customers."""
    w = world([(EPOCH_MS, "2", "1")])
    w.customer("globex")
    w.contract("c-globex", customer_id="globex")
    w.billing.refresh_tables()
    closed = w.apply(cmd.CloseDuePeriods(FEB_1_MS + HOUR_MS, ACTOR, 0, 1))
    assert isinstance(closed, list) and [i.customer_id for i in closed] == ["acme"]
    # Only the closed customer's tables compile, loaded as they compile: no whole tables to load.
    assert drain_compile(w.billing.compile_steps()) is None
    late = w.usage(
        [
            tokens("late", EPOCH_MS + 2 * HOUR_MS, 1),
            usage_event("g", EPOCH_MS + 2 * HOUR_MS, {"tokens": 1}, customer_id="globex", dimensions={"model": "gpt4"}),
        ],
        FEB_1_MS + 2 * HOUR_MS,
    )
    # acme's January is closed in the kernel; globex's is still open.
    assert [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in late.rejected] == [(0, "PERIOD_CLOSED")]
    assert late.accepted == 1
    assert w.engine.preview("globex", EPOCH_MS).subtotal_picos == 2 * 10**12


def test_grant_balances_at_the_period_end_count_earlier_periods_and_expiry() -> None:
    w = world([(EPOCH_MS, "2", "1")])
    w.grant("prepaid", "10")
    w.grant("promo", "3", priority=-1, expires_at_ms=EPOCH_MS + 10 * DAY_MS)  # drawn first, expires mid-January
    w.usage([tokens("jan", EPOCH_MS + HOUR_MS, 1), tokens("feb", FEB_1_MS + HOUR_MS, 2)], FEB_1_MS + 2 * HOUR_MS)
    january = w.engine.preview("acme", EPOCH_MS)
    february = w.engine.preview("acme", FEB_1_MS)

    def balances(invoice: Invoice) -> list[tuple[str, int, int, int, int]]:
        return [
            (g.grant_id, g.granted_picos, g.drawn_picos, g.remaining_picos, g.expired_picos)
            for g in invoice.grant_balances
        ]

    one = 10**12
    # January's 2 came from the promotion, whose last credit then expired unused; February's 4 from the prepaid.
    assert balances(january) == [("prepaid", 10 * one, 0, 10 * one, 0), ("promo", 3 * one, 2 * one, 0, one)]
    assert balances(february) == [("prepaid", 10 * one, 4 * one, 6 * one, 0), ("promo", 3 * one, 2 * one, 0, one)]


def _engine_view(invoice: Invoice) -> dict[str, Any]:
    """The invoice in the oracle's terms (Decimals in units)."""

    def units(picos: int) -> Decimal:
        return Decimal(picos) * PICO

    minor = Decimal(1).scaleb(-invoice.minor_unit)
    return {
        "lines": [
            {
                "model": line.dimensions["model"],
                "quantity": Decimal(line.quantity_e18).scaleb(-18),
                "amount": units(line.amount_picos),
                "overage": units(line.overage_picos),
                "credits": {g: units(c) for g, c in line.credits},
                "parts": {p.version: (Decimal(p.quantity_e18).scaleb(-18), units(p.amount_picos)) for p in line.parts},
                "amount_due": line.amount_due_minor * minor,
            }
            for line in invoice.lines
        ],
        "credits": {g: units(c) for g, c in invoice.credits_applied},
        "balances": {
            g.grant_id: (units(g.granted_picos), units(g.drawn_picos), units(g.remaining_picos))
            for g in invoice.grant_balances
        },
        "subtotal": units(invoice.subtotal_picos),
        "overage": units(invoice.overage_picos),
        "overage_due": invoice.overage_due_minor * minor,
        "rounding_adjustment": invoice.rounding_adjustment_minor * minor,
        "total_due": invoice.total_due_minor * minor,
    }


PRICES = st.sampled_from(["0.0015", "0.002", "0.3", "1", "2.5", "0.000007"])
EVENTS = st.lists(
    st.tuples(st.integers(0, 30 * 24 - 1), st.sampled_from(["gpt4", "claude"]), st.integers(1, 5000)),
    min_size=1,
    max_size=40,
)


@settings(max_examples=40, deadline=None)
@given(
    prices=st.lists(st.tuples(st.integers(0, 30 * 24 - 1), PRICES, PRICES), min_size=1, max_size=3),
    grants=st.lists(st.tuples(st.sampled_from(["0.5", "3", "40", "900"]), st.integers(0, 2)), max_size=3),
    events=EVENTS,
    overage_price=st.sampled_from(["1", "0.9", "1.005", "0.0333"]),
)
def test_preview_before_close_is_the_final_invoice_and_the_oracle_agrees(
    prices: list[tuple[int, str, str]],
    grants: list[tuple[str, int]],
    events: list[tuple[int, str, int]],
    overage_price: str,
) -> None:
    hours = sorted({hour for hour, _, _ in prices} | {0})
    versions = [
        (EPOCH_MS + hour * HOUR_MS, prices[i % len(prices)][1], prices[i % len(prices)][2])
        for i, hour in enumerate(hours)
    ]
    w = world(versions, overage_price=overage_price)
    for index, (amount, priority) in enumerate(grants):
        w.grant(f"g{index}", amount, priority=priority)
    quantities = [(EPOCH_MS + hour * HOUR_MS + 17, model, q / 100) for hour, model, q in events]
    ack = w.usage([tokens(f"t{i}", ts, q, model) for i, (ts, model, q) in enumerate(quantities)])
    assert ack.accepted == len(events)
    preview = w.engine.preview("acme", EPOCH_MS)
    final = w.close()
    assert draft_fields(preview) == draft_fields(final)
    expected = reference_invoice(
        [(start, {"gpt4": Decimal(gpt4), "claude": Decimal(claude)}) for start, gpt4, claude in versions],
        [(f"g{i}", Decimal(amount), priority) for i, (amount, priority) in enumerate(grants)],
        [(ts, model, Decimal(str(q))) for ts, model, q in quantities],
        Decimal(overage_price),
        2,
    )
    assert _engine_view(final) == expected


def switched_contracts() -> BillingWorld:
    """acme's contract c-acme ends on Jan 20 12:00 (its last period keeps its monthly end, Feb 1), c-next starts
    then; gpt4 tokens at 2 a token, no usage yet."""
    w = BillingWorld()
    w.product("tokens", dimensions=("model",))
    w.rate_card()
    w.version([rate("tokens", unit("2"), model="gpt4")], effective_from_ms=EPOCH_MS)
    w.customer()
    switch_ms = EPOCH_MS + 19 * DAY_MS + 12 * HOUR_MS
    w.contract(ending_before_ms=switch_ms)
    w.contract("c-next", starting_at_ms=switch_ms)
    return w


def switched_world() -> BillingWorld:
    """acme's contract c-acme ends on Jan 20 12:00 (its last period keeps its monthly end, Feb 1), c-next starts
    then: 2 gpt4 tokens on Jan 10 (c-acme's), 3 on Jan 25 (c-next's), at 2 a token."""
    w = switched_contracts()
    ack = w.usage([tokens("t1", EPOCH_MS + 9 * DAY_MS, 2), tokens("t2", EPOCH_MS + 24 * DAY_MS, 3)])
    assert ack.accepted == 2
    return w


def parts_of(invoice: Invoice) -> list[tuple[int, int, int, int]]:
    [line] = invoice.lines
    return [(p.version, p.quantity_e18, p.events, p.amount_picos) for p in line.parts]


def test_a_switched_contracts_last_period_prices_its_own_hours_unless_closed_by_an_earlier_release() -> None:
    """The draft and a close the server records now (parts_in_contract) count c-acme's Jan 10 hour only in the
    line's version parts (2 tokens, 4), as in its quantity and amount; a ClosePeriod or CloseDuePeriods record of
    an earlier release (without it, adjustments_in_contract or not) replays as it closed: every hour up to Feb 1,
    c-next's Jan 25 included (5 tokens, 10)."""
    own, every_hour = [(1, 2 * 10**18, 1, 4 * 10**12)], [(1, 5 * 10**18, 2, 10 * 10**12)]
    w = switched_world()
    draft = w.engine.preview("acme", EPOCH_MS)
    assert (draft.lines[0].quantity_e18, draft.lines[0].amount_picos, parts_of(draft)) == (2 * 10**18, 4 * 10**12, own)
    now = w.apply(
        cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS, adjustments_in_contract=True, parts_in_contract=True)
    )
    assert isinstance(now, Invoice) and draft_fields(now) == draft_fields(draft)
    for earlier in (
        cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS),
        cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS, rollovers_shown=True, adjustments_in_contract=True),
    ):
        replayed = switched_world().apply(earlier)
        assert isinstance(replayed, Invoice) and parts_of(replayed) == every_hour, earlier
    due = switched_world().apply(cmd.CloseDuePeriods(FEB_1_MS, ACTOR, 0, adjustments_in_contract=True))
    assert isinstance(due, list) and [parts_of(i) for i in due if i.period_start_ms == EPOCH_MS] == [every_hour]
    due_now = switched_world().apply(cmd.CloseDuePeriods(FEB_1_MS, ACTOR, 0, parts_in_contract=True))
    assert isinstance(due_now, list) and [parts_of(i) for i in due_now if i.period_start_ms == EPOCH_MS] == [own]


def test_parts_in_contract_is_the_servers_in_neither_audit_entry_nor_retry_fingerprint() -> None:
    from engine.control import fingerprint

    w = switched_world()
    server_close = cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS, parts_in_contract=True)
    assert fingerprint(server_close) == fingerprint(cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS))
    w.apply(server_close)
    w.apply(cmd.CloseDuePeriods(FEB_1_MS + 29 * DAY_MS, ACTOR, DAY_MS, parts_in_contract=True))
    closes = [e for e in w.engine.state.audit if e.action in ("ClosePeriod", "CloseDuePeriods")]
    assert [e.action for e in closes] == ["ClosePeriod", "CloseDuePeriods"]
    assert all("parts_in_contract" not in entry.diff for entry in closes), closes


def g_of(invoice: Invoice) -> tuple[int, int, int, int]:
    """Grant g on the invoice: (granted, drawn, remaining, expired)."""
    [g] = [b for b in invoice.grant_balances if b.grant_id == "g"]
    return (g.granted_picos, g.drawn_picos, g.remaining_picos, g.expired_picos)


def assert_draft_final_and_balance_show(w: BillingWorld, shown: tuple[int, int, int, int], next_start_ms: int) -> None:
    """After switched_contracts and the next contract's 2 tokens of Jan 25 drawing 4 credits of g: the drafts of
    both periods show g as `shown` (amount, drawn, 0, expired); once the clock passes Feb 1 the kernel records the
    expired part as g's breakage and GetBalance's view agrees; the final invoice and the due close of the next
    period show it alike."""
    credits = 10**12
    drawn, expired = shown[1], shown[3]
    draft = w.engine.preview("acme", EPOCH_MS)
    assert g_of(draft) == shown
    assert g_of(w.engine.preview("acme", next_start_ms)) == shown
    [line] = w.engine.preview("acme", next_start_ms).lines
    assert line.credits == [("g", 4 * credits)]
    w.apply(server(cmd.AdvanceClock(FEB_1_MS, "clock")))
    assert [(g, c) for _, g, _, c, _ in w.billing.kernel.breakage("acme")] == [("g", expired)]
    balance = w.billing.kernel.balance("acme", FEB_1_MS)
    assert balance is not None
    assert [grant[3:] for grant in balance["grants"] if grant[0] == "g"] == [(expired, drawn)]  # expired, drawn
    final = w.apply(server(cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS)))
    assert isinstance(final, Invoice) and g_of(final) == shown
    assert draft_fields(final) == draft_fields(draft)
    assert g_of(w.engine.preview("acme", next_start_ms)) == shown
    due = w.apply(server(cmd.CloseDuePeriods(next_start_ms + 31 * DAY_MS, ACTOR, 0)))
    assert isinstance(due, list) and [g_of(i) for i in due if i.period_start_ms == next_start_ms] == [shown]


def test_a_grant_rolling_over_after_the_next_contracts_usage_drew_on_it_shows_the_breakage_it_recorded() -> None:
    """c-acme's period (Jan 1 - Feb 1) keeps its monthly end past the Jan 20 12:00 switch: g (10 credits, fraction
    0.5, from Jan 1) pays c-next's 2 tokens of Jan 25 (4 credits, dated before its Feb 1 rollover), so 6 are left
    at Feb 1: 3 roll over, 3 break. c-acme's draft and final invoice show g as GetBalance does: drawn 7 (the 4 and
    the 3 rolled), expired 3, the breakage recorded; c-next's alike. A ClosePeriod record of an earlier release
    (without rolled_breakage_shown) replays as it closed: drawn 3 (the rolled share only), expired 7."""

    def world() -> BillingWorld:
        w = switched_contracts()
        w.apply(server(w.grant_command("g", "10", rollover_fraction="0.5")))
        ack = w.usage([tokens("t1", EPOCH_MS + 24 * DAY_MS, 2)], received_ms=EPOCH_MS + 25 * DAY_MS)
        assert ack.accepted == 1
        return w

    credits = 10**12
    shown = (10 * credits, 7 * credits, 0, 3 * credits)
    next_start_ms = EPOCH_MS + 19 * DAY_MS + 12 * HOUR_MS
    w = world()
    assert_draft_final_and_balance_show(w, shown, next_start_ms)

    earlier = world()
    earlier.apply(server(cmd.AdvanceClock(FEB_1_MS, "clock")))
    record = msgspec.structs.replace(
        server(cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS)), rolled_breakage_shown=False
    )
    replayed = earlier.apply(record)
    assert isinstance(replayed, Invoice) and g_of(replayed) == (10 * credits, 3 * credits, 0, 7 * credits)


def test_an_expiring_grant_the_next_contracts_usage_drew_on_shows_what_its_expiry_broke() -> None:
    """c-acme's period (Jan 1 - Feb 1) keeps its monthly end past the Jan 20 12:00 switch: g (10 credits paid 5, no
    rollover, from Jan 1, expiring Jan 28) pays c-next's 2 tokens of Jan 25 (4 credits, dated before its expiry),
    so 6 are left when the clock passes Jan 28: they break. c-acme's draft and final invoice show g as GetBalance
    does: drawn 4, expired 6, the breakage recorded (not drawn 0, expired 10); c-next's alike. Revenue, at 0.5 a
    credit, recognises the 4 drawn (2) and breaks the 6 (3) on c-next's line, the period the draw and the lapse
    count in; c-acme's line defers the 5 sold. A ClosePeriod record of an earlier release (without
    expired_breakage_shown) replays as it closed: drawn 0 (c-acme's period's usage only), expired 10."""
    expires_ms = EPOCH_MS + 27 * DAY_MS

    def world() -> BillingWorld:
        w = switched_contracts()
        w.apply(server(w.grant_command("g", "10", paid="5", expires_at_ms=expires_ms)))
        ack = w.usage([tokens("t1", EPOCH_MS + 24 * DAY_MS, 2)], received_ms=EPOCH_MS + 25 * DAY_MS)
        assert ack.accepted == 1
        return w

    credits = 10**12
    shown = (10 * credits, 4 * credits, 0, 6 * credits)
    next_start_ms = EPOCH_MS + 19 * DAY_MS + 12 * HOUR_MS
    w = world()
    assert_draft_final_and_balance_show(w, shown, next_start_ms)
    kernel = w.billing.kernel
    usage = kernel.usage("acme")
    assert usage is not None
    report = revenue.report(
        w.engine,
        lambda _: usage[0],
        EPOCH_MS,
        FEB_1_MS,
        "acme",
        lambda _: revenue.KernelCredits(kernel.made_grants("acme"), kernel.breakage("acme")),
    )
    lines = [
        (line.period_start_ms, line.recognized_credits, line.breakage, line.deferred) for line in report.by_customer
    ]
    assert lines == [(EPOCH_MS, 0, 0, 5 * credits), (next_start_ms, 2 * credits, 3 * credits, 0)]

    earlier = world()
    earlier.apply(server(cmd.AdvanceClock(FEB_1_MS, "clock")))
    record = msgspec.structs.replace(
        server(cmd.ClosePeriod(FEB_1_MS, ACTOR, "acme", EPOCH_MS)), expired_breakage_shown=False
    )
    replayed = earlier.apply(record)
    assert isinstance(replayed, Invoice) and g_of(replayed) == (10 * credits, 0, 0, 10 * credits)
