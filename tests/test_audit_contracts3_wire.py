"""A third acceptance audit of contracts, overrides and grants over the wire, with a finance user's eye (README "What
the server does today": Contracts, Contract switches; "Credits and the gateway"; docs/architecture.md §3 burn order
and revenue recognition; contracts.proto). The earlier audits (test_audit_contracts_wire.py, test_audit_periods_wire.py,
test_audit_credits_wire.py, test_audit_credits2_wire.py, test_audit_pricing_wire.py) leave out what this file covers:
grants of both kinds at one priority (creation order decides, not the kind), a product list beating a lower priority,
cost bases that are no whole number of picos recognised period by period, a paid amount below zero, override windows
read to the millisecond with several overrides matching one event, a multiplier rounding the period's cumulative
amount once, and a switch between two contracts mid-month: each side priced with its own contract's overrides, a
grant expiring exactly at the switch, a grant of the new contract starting before it, credit paying across both;
the revenue of grants starting in another contract's time or before every contract, of a rollover at a switched
contract's last period's end, and of a grant expiring after its contract ended; a retroactive publish across a
switch; overrides sent together to a contract one short of its 1,000.

Every amount asserted is computed by hand from the docs (the arithmetic is in each docstring), none read back from
the server.

Products (SUM of `n`, each its own event type): `units` (event type `work`) and `extra` (event type `other`) at 1
credit a unit, `tokens` (event type `llm`, pricing dimension `model`) at 1 credit a unit. Rate card `card` (credits),
in force from 2026-01-01. One server for the file (`--close-grace off`: no period closes by itself), each test on
customers of its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, preview, serving
from tests.serverproc import ServerProcess, wait_for

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def at(text: str) -> int:
    """Unix ms of an ISO-8601 UTC instant ("2026-10-10T12:00:00.500")."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def month_start_ms(ms: int) -> int:
    day = datetime.fromtimestamp(ms / 1000, UTC)
    return int(datetime(day.year, day.month, 1, tzinfo=UTC).timestamp() * 1000)


def next_month_ms(ms: int) -> int:
    day = datetime.fromtimestamp(ms / 1000, UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def catalogue(client: TariffClient) -> None:
    products = [("units", "work", []), ("extra", "other", []), ("tokens", "llm", ["model"])]
    for product_id, event_type, dimensions in products:
        product = pricing_pb2.Product(
            id=product_id,
            event_type=event_type,
            aggregation=pricing_pb2.SUM,
            value_key="n",
            pricing_dimensions=dimensions,
        )
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rates = [pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price="1")) for p, _, _ in products]
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id="card", version=1, effective_from=stamp(at("2026-01-01T00:00:00"))
        )
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-contracts3")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def contract(
    client: TariffClient, customer_id: str, contract_id: str, start_ms: int, end_ms: int | None = None, **fields: Any
) -> str:
    """A contract on `card` unless given (audit_fixtures.open_contract); its id."""
    fields.setdefault("rate_card_id", "card")
    open_contract(client, customer_id, contract_id, start_ms, end_ms, **fields)
    return contract_id


def grant(
    client: TariffClient,
    contract_id: str,
    grant_id: str,
    amount: str,
    *,
    paid: str = "0",
    priority: int = 0,
    products: tuple[str, ...] = (),
    starts_at_ms: int | None = None,
    expires_at_ms: int | None = None,
) -> contracts_pb2.Grant:
    """A grant under the contract: PREPAID when paid, else PROMOTIONAL."""
    fields = contracts_pb2.Grant(
        id=grant_id,
        contract_id=contract_id,
        kind=contracts_pb2.PREPAID if paid != "0" else contracts_pb2.PROMOTIONAL,
        amount=amount,
        paid_amount=paid,
        priority=priority,
        applicable_product_ids=list(products),
    )
    if starts_at_ms is not None:
        fields.starts_at.CopyFrom(stamp(starts_at_ms))
    if expires_at_ms is not None:
        fields.expires_at.CopyFrom(stamp(expires_at_ms))
    answer: contracts_pb2.Grant = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=fields))
    return answer


def override(client: TariffClient, contract_id: str, **fields: Any) -> None:
    for key in ("starting_at", "ending_before"):
        if key in fields:
            fields[key] = stamp(fields[key])
    request = contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=contracts_pb2.PriceOverride(**fields))
    client.contracts.AddOverride(request)


def usage(
    transaction_id: str, customer_id: str, n: float, at_ms: int, event_type: str = "work", **dimensions: str
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        values={"n": n},
        dimensions=dimensions,
    )


def rated(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch(list(events))
    assert (ack.accepted, list(ack.rejected)) == (len(events), []), ack


def grants_of(client: TariffClient, customer_id: str) -> dict[str, tuple[str, str, str]]:
    """grant id -> (drawn, remaining, recognized_revenue), from GetBalance."""
    balance = client.get_balance(customer_id)
    return {g.grant_id: (g.drawn, g.remaining, g.recognized_revenue) for g in balance.grants}


def revenue(client: TariffClient, customer_id: str, start_ms: int, end_ms: int) -> invoices_pb2.RevenueReport:
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=stamp(start_ms), period_end=stamp(end_ms), customer_id=customer_id
    )
    report: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(request)
    return report


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, list[str]]:
    with pytest.raises(TariffError) as failed:
        call()
    return failed.value.code, [v.field for v in failed.value.field_violations]


# Grants: burn order, cost basis, revenue --------------------------------------------------------------------------


def test_equal_priorities_burn_in_creation_order_whatever_the_kind_and_each_draw_is_sold_at_its_cost_basis(
    server: ServerProcess,
) -> None:
    """This month, ALLOW. Grants, in the order made:
    - `bp.promo-first`: PROMOTIONAL 5, priority -1;
    - `bp.prepaid`: PREPAID 30 credits bought for 40 USD (a premium: 4/3 USD a credit), priority 0;
    - `bp.promo`: PROMOTIONAL 10, priority 0, made after `bp.prepaid`: at equal priority, expiry and products it
      burns after it (creation order), its kind changes nothing;
    - `bp.extra-only`: PREPAID 6 for 3 USD (0.5 a credit), priority -5, for `extra` only: the lowest priority, yet
      it never pays `units`.
    20 units: promo-first 5, prepaid 15 (recognised 40 x 15 / 30 = 20). 20 more: prepaid 15 (recognised 40 in all,
    what was paid), promo 5. 2 extra: extra-only 2 (3 x 2 / 6 = 1). Nothing is overage: charges 42. Revenue of the
    month: sold 40 + 3 = 43, recognised 41, deferred at its end 43 - 41 = 2 (extra-only's 4 credits at 0.5)."""
    now = now_ms()
    start = month_start_ms(now)
    with server.client() as client:
        k = contract(client, "bp", "bp-k", start)
        grant(client, k, "bp.promo-first", "5", priority=-1)
        grant(client, k, "bp.prepaid", "30", paid="40")
        grant(client, k, "bp.promo", "10")
        grant(client, k, "bp.extra-only", "6", paid="3", priority=-5, products=("extra",))
        rated(client, usage("bp-1", "bp", 20, now))
        assert grants_of(client, "bp") == {
            "bp.promo-first": ("5", "0", "0"),
            "bp.prepaid": ("15", "15", "20"),
            "bp.promo": ("0", "10", "0"),
            "bp.extra-only": ("0", "6", "0"),
        }
        rated(client, usage("bp-2", "bp", 20, now), usage("bp-3", "bp", 2, now, event_type="other"))
        assert grants_of(client, "bp") == {
            "bp.promo-first": ("5", "0", "0"),
            "bp.prepaid": ("30", "0", "40"),
            "bp.promo": ("5", "5", "0"),
            "bp.extra-only": ("2", "4", "1"),
        }
        balance = client.get_balance("bp")
        assert (balance.period_charges, balance.overage_amount, balance.credits_available) == ("42", "0", "9")
        r = revenue(client, "bp", start, next_month_ms(now)).reconciliation
        shown = (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles)
        assert shown == ("0", "43", "41", "0", "2", True)


def test_a_cost_basis_of_a_third_recognises_picos_that_add_up_to_exactly_what_was_paid(server: ServerProcess) -> None:
    """3 credits bought for 1 USD (a third of a dollar each, no whole number of picos), one credit drawn in each of
    August, September and October 2026. Recognised up to a period is 1 x drawn / 3 rounded half-even to the pico
    once: 0.333333333333 after August, 0.666666666667 after September, 1 after October; each period recognises the
    difference: 0.333333333333, 0.333333333334, 0.333333333333 (never 0.999999999999 in all). Deferred after each:
    0.666666666667, 0.333333333333, 0. GetBalance shows the grant's recognised revenue, 1, what was paid."""
    aug, sep, oct, nov = (at(f"2026-{m:02}-01T00:00:00") for m in (8, 9, 10, 11))
    with server.client() as client:
        k = contract(client, "third", "third-k", aug)
        grant(client, k, "third.g", "3", paid="1")
        rated(client, *(usage(f"third-{i}", "third", 1, month + 9 * DAY_MS) for i, month in enumerate((aug, sep, oct))))
        report = revenue(client, "third", aug, nov)
        lines = [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.deferred)
            for line in report.customer_lines
        ]
        assert lines == [
            (aug, "0.333333333333", "0.666666666667"),
            (sep, "0.333333333334", "0.333333333333"),
            (oct, "0.333333333333", "0"),
        ]
        r = report.reconciliation
        assert (r.prepaid_sold, r.recognized_credits, r.deferred_end, r.reconciles) == ("1", "1", "0", True)
        assert grants_of(client, "third") == {"third.g": ("3", "0", "1")}


def test_a_paid_amount_below_zero_is_refused_and_grants_nothing(server: ServerProcess) -> None:
    """contracts.proto Grant.paid_amount: "what the customer paid"; cost basis = paid_amount / amount. A PREPAID grant
    of 100 credits "paid" -50 USD would recognise -0.5 USD of revenue per credit drawn and show a negative deferred
    balance: no customer pays a negative amount for credit. INVALID_ARGUMENT naming grant.paid_amount, nothing
    granted (a retry with a sane amount then grants under the same id)."""
    with server.client() as client:
        k = contract(client, "neg", "neg-k", month_start_ms(now_ms()))
        code, fields = refusal(partial(grant, client, k, "neg.g", "100", paid="-50"))
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["grant.paid_amount"])
        assert grants_of(client, "neg") == {}
        grant(client, k, "neg.g", "100", paid="50")
        assert grants_of(client, "neg") == {"neg.g": ("0", "100", "0")}


# Overrides ---------------------------------------------------------------------------------------------------------


def test_override_windows_are_read_to_the_millisecond_and_of_several_matching_the_most_specific_then_last_wins(
    server: ServerProcess,
) -> None:
    """October 2026, tokens at 1 a unit. Overrides, in the order added:
    - `wide`: x2, no match, no window (in force from the contract's start, open-ended);
    - `big`: price 1.5, model=big, no window: more specific than any other, so it prices every big token whatever
      was added after it;
    - `window`: price 5, no match, [Oct 10 12:00:00.500, Oct 11 00:00): as specific as `wide`, added after it, so
      it wins inside its window, to the millisecond (off the hour);
    - `from-20th`: x3, no match, from Oct 20, no end: added last, it wins from its start on.
    One token each (UNIT: the price of a cumulative quantity is linear, so each event costs its curve's price):
    small at 12:00:00.499 (wide: 2), at 12:00:00.500 (window: 5), at 23:59:59.999 (window: 5), at Oct 11 00:00
    (wide: 2), Oct 25 (from-20th: 3); big at 12:00:00.500 and Oct 25 (big: 1.5 each). Lines: small 5 tokens, 17;
    big 2 tokens, 3."""
    oct1 = at("2026-10-01T00:00:00")
    opens, closes = at("2026-10-10T12:00:00.500"), at("2026-10-11T00:00:00")
    with server.client() as client:
        k = contract(client, "win", "win-k", oct1)
        override(client, k, id="wide", product_id="tokens", multiplier="2")
        override(client, k, id="big", product_id="tokens", price="1.5", match={"model": "big"})
        override(client, k, id="window", product_id="tokens", price="5", starting_at=opens, ending_before=closes)
        override(client, k, id="from-20th", product_id="tokens", multiplier="3", starting_at=at("2026-10-20T00:00:00"))
        oct25 = at("2026-10-25T00:00:00")
        small = [opens - 1, opens, closes - 1, closes, oct25]
        rated(
            client,
            *(usage(f"win-s{i}", "win", 1, t, "llm", model="small") for i, t in enumerate(small)),
            *(usage(f"win-b{i}", "win", 1, t, "llm", model="big") for i, t in enumerate((opens, oct25))),
        )
        explained = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(
                customer_id="win", period_start=stamp(oct1), line_id="tokens;model=small"
            )
        )
        assert sorted((e.timestamp_ms, e.amount) for e in explained.events) == [
            (opens - 1, "2"),
            (opens, "5"),
            (closes - 1, "5"),
            (closes, "2"),
            (oct25, "3"),
        ]
        lines = {line.line_id: (line.quantity, line.amount) for line in preview(client, "win", oct1).lines}
        assert lines == {"tokens;model=small": ("5", "17"), "tokens;model=big": ("2", "3")}


def test_a_multiplier_rounds_the_periods_cumulative_amount_once(server: ServerProcess) -> None:
    """contracts.proto PriceOverride.multiplier: it multiplies the amount of the period's cumulative quantity and
    the product is rounded to 10^-12 once. x0.333333333333333333 on units at 1, three events of 1 unit: the
    period's amount after each is 0.333333333333, 0.666666666667, 1.000000000000 (0.999999999999999999 rounded), so
    the events cost 0.333333333333, 0.333333333334, 0.333333333333 and the line 1, not 3 x 0.333333333333."""
    sep = at("2026-09-01T00:00:00")
    with server.client() as client:
        k = contract(client, "third-x", "third-x-k", sep)
        override(client, k, id="third", product_id="units", multiplier="0.333333333333333333")
        for i in range(3):
            rated(client, usage(f"tx-{i}", "third-x", 1, sep + (i + 1) * DAY_MS))
        explained = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="third-x", period_start=stamp(sep), line_id="units")
        )
        assert [e.amount for e in explained.events] == ["0.333333333333", "0.333333333334", "0.333333333333"]
        (line,) = preview(client, "third-x", sep).lines
        assert (line.quantity, line.amount) == ("3", "1")


# Contract switches -------------------------------------------------------------------------------------------------


def plus_one_month(ms: int) -> int:
    """The same UTC day and time a month later (a day past the month's end clamped to its last day)."""
    day = datetime.fromtimestamp(ms / 1000, UTC)
    year, month = (day.year + 1, 1) if day.month == 12 else (day.year, day.month + 1)
    last_day = (
        datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=UTC) - datetime(year, month, 1, tzinfo=UTC)
    ).days
    return int(day.replace(year=year, month=month, day=min(day.day, last_day)).timestamp() * 1000)


def test_a_switch_mid_month_prices_each_side_with_its_own_overrides_and_credit_pays_across_it(
    server: ServerProcess,
) -> None:
    """A switch planned for S, two minutes ahead and off the second (events may be dated up to 5 minutes ahead, so
    every event below is rated before S comes). `sw-old` runs from the month's start to S, with units at x0.5;
    `sw-new` from S, with units at price 2 from S - 1 h (an override window opening before its contract: it prices
    only its own contract's usage, none dated before S). Grants:
    - `sw.old-g`: under sw-old, PREPAID 5 for 5 USD, priority 0, expiring at S exactly;
    - `sw.new-g`: under sw-new, PROMOTIONAL 10, priority 0, no starts_at: it pays from sw-new's start, S;
    - `sw.early`: under sw-new, PROMOTIONAL 10, priority 1, starting at S - 60 s, before its contract: it pays the
      old contract's usage from then.
    Events, one batch in this order:
    - S - 1 ms, 4 units: sw-old, 4 x 0.5 = 2: old-g 2 (3 left; it expires a millisecond later);
    - S, 4 units: sw-new, 4 x 2 = 8: old-g has expired at S, new-g 8 (2 left);
    - S + 1 ms, 1 unit: sw-new, 2: new-g 2 (0 left);
    - S - 30 s, 8 units: sw-old, 4: old-g 3, early 1 (new-g has not started);
    - S - 90 s, 3 units: sw-old, 1.5: no grant has started but the spent old-g: 1.5 of overage.
    The old contract's last period (month start - next month start, its monthly end) bills 15 units, 7.5 credits:
    old-g 5, early 1, overage 1.5 (1.50 USD due); the new contract's first (S - S + 1 month) 5 units, 10 credits:
    new-g 10, nothing due. Now (before S) the balance's period is the old one's (charges 7.5, overage 1.5), and
    Authorize prices 2 units as ingesting them now would, at the old contract's x0.5: 1. Revenue of the month: old-g
    sold 5 and recognised 5 (1 USD a credit) in the old period, overage 1.5; nothing in the new one."""
    now = now_ms()
    switch = (now // 1000 + 120) * 1000 + 250
    start = month_start_ms(now)
    if month_start_ms(switch) != start or switch - 90_000 < start:
        pytest.skip("the switch would straddle a month's start")
    with server.client() as client:
        old = contract(client, "sw", "sw-old", start, switch)
        new = contract(client, "sw", "sw-new", switch)
        override(client, old, id="half", product_id="units", multiplier="0.5")
        override(client, new, id="two", product_id="units", price="2", starting_at=switch - HOUR_MS)
        grant(client, old, "sw.old-g", "5", paid="5", expires_at_ms=switch)
        new_g = grant(client, new, "sw.new-g", "10")
        early = grant(client, new, "sw.early", "10", priority=1, starts_at_ms=switch - 60_000)
        assert (new_g.starts_at.ToMilliseconds(), early.starts_at.ToMilliseconds()) == (switch, switch - 60_000)
        dated = [(switch - 1, 4), (switch, 4), (switch + 1, 1), (switch - 30_000, 8), (switch - 90_000, 3)]
        rated(client, *(usage(f"sw-{i}", "sw", n, t) for i, (t, n) in enumerate(dated)))

        assert grants_of(client, "sw") == {
            "sw.old-g": ("5", "0", "5"),
            "sw.new-g": ("10", "0", "0"),
            "sw.early": ("1", "9", "0"),
        }
        balance = client.get_balance("sw")
        assert (balance.period_start.ToMilliseconds(), balance.period_charges, balance.overage_amount) == (
            start,
            "7.5",
            "1.5",
        )
        estimate = client.authorize("sw", "work", values={"n": 2})
        assert (estimate.allowed, estimate.estimated_cost) == (True, "1")

        shown = [
            (
                i.contract_id,
                i.period_start.ToMilliseconds(),
                i.period_end.ToMilliseconds(),
                [(line.line_id, line.quantity, line.amount, line.events) for line in i.lines],
                sorted((c.grant_id, c.credits) for c in i.credits_applied),
                (i.overage_amount, i.overage_due, i.total_due),
            )
            for i in (preview(client, "sw", start), preview(client, "sw", switch))
        ]
        assert shown == [
            (
                "sw-old",
                start,
                next_month_ms(start),
                [("units", "15", "7.5", 3)],
                [("sw.early", "1"), ("sw.old-g", "5")],
                ("1.5", "1.50", "1.50"),
            ),
            (
                "sw-new",
                switch,
                plus_one_month(switch),
                [("units", "5", "10", 2)],
                [("sw.new-g", "10")],
                ("0", "0.00", "0.00"),
            ),
        ]

        report = revenue(client, "sw", start, next_month_ms(start))
        lines = [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.recognized_overage, line.deferred)
            for line in report.customer_lines
        ]
        assert lines == [(start, "5", "1.5", "0"), (switch, "0", "0", "0")]
        r = report.reconciliation
        assert (r.prepaid_sold, r.recognized_credits, r.recognized_overage, r.deferred_end, r.reconciles) == (
            "5",
            "5",
            "1.5",
            "0",
            True,
        )


def test_breakage_of_a_grant_expiring_after_its_contract_ended_counts_in_that_contracts_last_period(
    server: ServerProcess,
) -> None:
    """A customer leaves: its only contract runs from the month's start to E, two seconds ahead (no contract after
    it). Its last period keeps its monthly end (README "Contract switches"): the month. A PREPAID grant of 10
    credits for 10 USD expires at X, two seconds after E, inside that period; 4 units dated now draw 4. At X the
    clock breaks the 6 left. The period's invoice shows them expired, and revenue must say the same of that period:
    its line recognises 4 and breaks 6 (1 USD a credit), leaving 0 deferred, as the month's reconciliation does
    (sold 10, recognised 4, breakage 6, deferred 0). Before, the breakage counted at the instant it was recorded,
    in no period's line (no contract was in force then), so the line showed 6 still deferred and no breakage while
    the invoice of the same period showed them expired."""
    now = now_ms()
    start = month_start_ms(now)
    ends, expires = now + 2_000, now + 4_000
    if month_start_ms(expires + 1_000) != start:
        pytest.skip("the month ends within the scenario")
    with server.client() as client:
        k = contract(client, "gone", "gone-k", start, ends)
        grant(client, k, "gone.g", "10", paid="10", expires_at_ms=expires)
        rated(client, usage("gone-1", "gone", 4, now))
        assert wait_for(lambda: grants_of(client, "gone")["gone.g"] == ("4", "0", "4"), 15), grants_of(client, "gone")
        invoice = preview(client, "gone", start)
        assert [(g.grant_id, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances] == [
            ("gone.g", "4", "0", "6")
        ]
        # The clock driver records the breakage (README "Expiry and breakage"); GetBalance shows it expired before.
        month = partial(revenue, client, "gone", start, next_month_ms(start))
        assert wait_for(lambda: month().reconciliation.breakage == "6", 15), month()
        report = month()
        lines = [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.breakage, line.deferred)
            for line in report.customer_lines
        ]
        assert lines == [(start, "4", "6", "0")]
        r = report.reconciliation
        assert (r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
            "10",
            "4",
            "6",
            "0",
            True,
        )


def test_concurrent_overrides_never_take_a_contract_past_1000(server: ServerProcess) -> None:
    """contracts.proto AddOverride: a contract holds at most 1,000 overrides; another is RESOURCE_EXHAUSTED. Three
    contracts holding 999 each, then 64 different overrides for each of them sent at once: on each, exactly one is
    added and the 63 others are RESOURCE_EXHAUSTED, and it holds 1,000 (GetContract), whichever order the writer
    takes them in. Before, requests arriving together all passed the check made as each arrived, before the writer
    had applied any of them, and a contract ended with more than 1,000."""
    contracts = [f"full{n}-k" for n in range(3)]
    with server.client() as client:
        for n, k in enumerate(contracts):
            contract(client, f"full{n}", k, month_start_ms(now_ms()))

    async def fill() -> None:
        # The 999 overrides of each, sent 64 at a time (each call, as the test's own race, waits for its answer).
        async with server.async_client() as own:
            requests = [
                contracts_pb2.AddOverrideRequest(
                    contract_id=k,
                    override=contracts_pb2.PriceOverride(id=f"o{index}", product_id="units", multiplier="1"),
                )
                for k in contracts
                for index in range(999)
            ]
            for start in range(0, len(requests), 64):
                await asyncio.gather(*(own.contracts.AddOverride(request) for request in requests[start : start + 64]))

    asyncio.run(fill())

    async def race() -> list[list[str]]:
        async with server.async_client() as own:

            async def add(k: str, index: int) -> str:
                fields = contracts_pb2.PriceOverride(id=f"race{index}", product_id="units", multiplier="2")
                try:
                    await own.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=k, override=fields))
                except TariffError as error:
                    name: str = error.code.name
                    return name
                return "OK"

            answers = await asyncio.gather(*(add(k, index) for index in range(64) for k in contracts))
            return [sorted(answers[n :: len(contracts)]) for n in range(len(contracts))]

    assert asyncio.run(race()) == [["OK", *["RESOURCE_EXHAUSTED"] * 63]] * len(contracts)
    with server.client() as client:
        for k in contracts:
            assert len(client.contracts.GetContract(contracts_pb2.GetContractRequest(id=k)).overrides) == 1_000


def test_a_grant_is_sold_in_the_period_of_its_start_whichever_contract_it_was_granted_under(
    server: ServerProcess,
) -> None:
    """docs/architecture.md §3 "Revenue recognition": a grant is sold at the start of the billing period containing
    its starts_at; README "Contract switches": a grant's contract_id only sets when it starts paying. `sv-old` runs
    Sep 1 - Sep 16 2026 (its one period Sep 1 - Oct 1), `sv-new` from Sep 16 (periods Sep 16 - Oct 16 - Nov 16).
    - `sv.early`: under sv-new, PREPAID 10 for 10 USD, starting Sep 10, in sv-old's time: sold Sep 1;
    - `sv.late`: under sv-old, PREPAID 10 for 20 USD, priority 1, starting Oct 20, in sv-new's time: sold Oct 16.
    Sep 12, 4 units (sv-old): early 4, recognised 4 in Sep 1. Oct 25, 8 units (sv-new): early 6, late 2,
    recognised 6 + 2 x 2 = 10 in Oct 16. Lines of Sep 1 - Nov 1, deferred after each (sold - recognised so far):
    Sep 1: 4 recognised, 10 - 4 = 6 deferred; Sep 16: 0, 6; Oct 16: 10, 30 - 14 = 16. Reports over one switch side
    each: Sep 1 - Sep 16 sells 10, recognises 4, defers 6; Oct 16 - Nov 16 starts at 6 deferred, sells 20,
    recognises 10, ends at 16. Before, each grant was sold in a period of its own contract: early at sv-new's
    first (Sep 16), after 4 of its credits were recognised (Sep 1's line deferred -4), late in an Oct 1 period
    sv-old never had (counted before the Oct 16 report's span: deferred 26 at its start, 0 sold)."""
    sep1, sep16, oct16, nov1 = (
        at(t) for t in ("2026-09-01T00:00:00", "2026-09-16T00:00:00", "2026-10-16T00:00:00", "2026-11-01T00:00:00")
    )
    with server.client() as client:
        old = contract(client, "sv", "sv-old", sep1, sep16)
        new = contract(client, "sv", "sv-new", sep16)
        grant(client, new, "sv.early", "10", paid="10", starts_at_ms=at("2026-09-10T00:00:00"))
        grant(client, old, "sv.late", "10", paid="20", priority=1, starts_at_ms=at("2026-10-20T00:00:00"))
        rated(
            client, usage("sv-1", "sv", 4, at("2026-09-12T00:00:00")), usage("sv-2", "sv", 8, at("2026-10-25T00:00:00"))
        )
        assert grants_of(client, "sv") == {"sv.early": ("10", "0", "10"), "sv.late": ("2", "8", "4")}

        report = revenue(client, "sv", sep1, nov1)
        lines = [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.deferred)
            for line in report.customer_lines
        ]
        assert lines == [(sep1, "4", "6"), (sep16, "0", "6"), (oct16, "10", "16")], lines
        spans = []
        for start, end in ((sep1, sep16), (oct16, at("2026-11-16T00:00:00"))):
            r = revenue(client, "sv", start, end).reconciliation
            spans.append((r.deferred_start, r.prepaid_sold, r.recognized_credits, r.deferred_end, r.reconciles))
        assert spans == [("0", "10", "4", "6", True), ("6", "20", "10", "16", True)]


def test_a_grant_rolling_over_at_the_end_of_a_switched_contracts_last_period_breaks_in_that_period(
    server: ServerProcess,
) -> None:
    """README "Rollover": a grant with rollover_fraction lasts until the end of the billing period in which it starts;
    at that end the share rolls over "and the rest is breakage at once, in the period that ended". `ro-old` runs
    Sep 1 - Sep 16 2026 (its one period Sep 1 - Oct 1), `ro-new` from Sep 16. `ro.g`: under ro-old, PREPAID 10 for
    10 USD, fraction 0.5, from Sep 1: its period is ro-old's, ending Oct 1. Granted now, long after, it rolls over at
    once: 5 into a ROLLOVER grant, 5 broken (5 USD). The period that ended is ro-old's Sep 1 - Oct 1: its line
    breaks 5 and defers 5 (the rolled credits stay deferred, README "Revenue"), as its invoice lists 5 rolled (drawn)
    and 5 expired. The ROLLOVER grant is usable from Oct 1 to the end of the next period, Oct 1 - Nov 1 (a full
    period, not the 15 days to the end of ro-new's Sep 16 - Oct 16), long past too: its 5 break then, in the period
    of its last usable instant, ro-new's Oct 16 - Nov 16, whose line breaks 5 and defers 0 (10 broken in all);
    ro-new's Sep 16 line breaks nothing and still defers the rolled 5. Before, the 5 the rollover broke counted in
    ro-new's period as well: ro-old's line broke nothing and deferred 10."""
    sep1, sep16, oct16 = (at(t) for t in ("2026-09-01T00:00:00", "2026-09-16T00:00:00", "2026-10-16T00:00:00"))
    with server.client() as client:
        old = contract(client, "ro", "ro-old", sep1, sep16)
        contract(client, "ro", "ro-new", sep16)
        request = contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id="ro.g",
                contract_id=old,
                kind=contracts_pb2.PREPAID,
                amount="10",
                paid_amount="10",
                rollover_fraction="0.5",
            )
        )
        client.contracts.GrantCredits(request)
        period = partial(revenue, client, "ro", sep1, at("2026-11-01T00:00:00"))
        assert wait_for(lambda: period().reconciliation.breakage == "10", 15), period()
        invoice = preview(client, "ro", sep1)
        assert [(g.grant_id, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances] == [
            ("ro.g", "5", "0", "5")
        ]
        lines = [(line.period_start.ToMilliseconds(), line.breakage, line.deferred) for line in period().customer_lines]
        assert lines == [(sep1, "5", "5"), (sep16, "0", "5"), (oct16, "5", "0")], lines


def test_a_retroactive_publish_re_rates_each_side_of_a_switch_with_its_own_contracts_overrides(
    server: ServerProcess,
) -> None:
    """README "Contracts": a retroactive publish re-rates usage already rated "with the overrides then in force" of
    its contract. Card `rr-card` prices units at 1. `rr-old` (Sep 1 - Sep 16 2026) has units x0.5, `rr-new` (from
    Sep 16) units at price 2. 4 units Sep 10 (rr-old: 2), 3 units Sep 20 (rr-new: 6). Version 2 from Sep 1 raises
    units to 3: rr-old's hour re-rates to 4 x 3 x 0.5 = 6 (its multiplier), rr-new's stays 3 x 2 = 6 (its own price
    replaces the card's). Invoices: rr-old's period 6, rr-new's 6, each with one adjustment (2 -> 6, 6 -> 6)."""
    sep1, sep16 = at("2026-09-01T00:00:00"), at("2026-09-16T00:00:00")
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="rr-card", pricing_unit="credits"))

        def publish(price: str) -> None:
            rates = [pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price=price))]
            draft = client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="rr-card", upsert_rates=rates)
            )
            client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(
                    rate_card_id="rr-card", version=draft.version, effective_from=stamp(sep1)
                )
            )

        publish("1")
        old = contract(client, "rr", "rr-old", sep1, sep16, rate_card_id="rr-card")
        new = contract(client, "rr", "rr-new", sep16, rate_card_id="rr-card")
        override(client, old, id="half", product_id="units", multiplier="0.5")
        override(client, new, id="two", product_id="units", price="2")
        sep10, sep20 = at("2026-09-10T00:00:00"), at("2026-09-20T00:00:00")
        rated(client, usage("rr-1", "rr", 4, sep10), usage("rr-2", "rr", 3, sep20))
        assert [preview(client, "rr", t).subtotal for t in (sep1, sep16)] == ["2", "6"]
        publish("3")
        shown = [
            (
                i.contract_id,
                i.subtotal,
                [(a.hour.ToMilliseconds(), a.old_amount, a.new_amount) for line in i.lines for a in line.adjustments],
            )
            for i in (preview(client, "rr", sep1), preview(client, "rr", sep16))
        ]
        assert shown == [("rr-old", "6", [(sep10, "2", "6")]), ("rr-new", "6", [(sep20, "6", "6")])]


def test_a_grant_starting_before_every_contract_is_sold_in_the_customers_first_period(server: ServerProcess) -> None:
    """A grant starting before any contract of its customer is sold at the first period a draw on it can fall in
    (engine/revenue.py period_of: "at its first period when before it"): the customer's, whichever contract it
    names. `sf-old` runs Sep 1 - Sep 16 2026, `sf-new` from Sep 16; `sf.g`: under sf-new, PREPAID 10 for 10 USD,
    starting Aug 1. 4 units Sep 10 (sf-old) draw 4, recognised 4 in Sep 1. Lines: Sep 1: 4 recognised, 6 deferred;
    Sep 16: 0, 6; the span Sep 1 - Sep 16 sells 10, recognises 4, ends at 6 deferred. Before, the grant was sold
    at sf-new's first period, Sep 16, after 4 of its credits were recognised: Sep 1's span did not reconcile."""
    sep1, sep16, oct1 = (at(t) for t in ("2026-09-01T00:00:00", "2026-09-16T00:00:00", "2026-10-01T00:00:00"))
    with server.client() as client:
        contract(client, "sf", "sf-old", sep1, sep16)
        new = contract(client, "sf", "sf-new", sep16)
        grant(client, new, "sf.g", "10", paid="10", starts_at_ms=at("2026-08-01T00:00:00"))
        rated(client, usage("sf-1", "sf", 4, at("2026-09-10T00:00:00")))
        report = revenue(client, "sf", sep1, oct1)
        lines = [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.deferred)
            for line in report.customer_lines
        ]
        assert lines == [(sep1, "4", "6"), (sep16, "0", "6")], lines
        r = revenue(client, "sf", sep1, sep16).reconciliation
        assert (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.deferred_end, r.reconciles) == (
            "0",
            "10",
            "4",
            "6",
            True,
        )
