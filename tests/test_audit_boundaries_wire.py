"""An acceptance audit of what happens at exact instants, over the wire against a real server driven only as
proto/tariff/v1/*.proto and README describe it. The earlier audits already pin most single boundaries (an event at a
period's end opens the next period, test_audit_periods3_wire.py; at a contract's start and end,
test_audit_usage_wire.py; at a switch, test_audit_contracts_wire.py; at a grant's start and expiry,
test_audit_credits2_wire.py; at an override's window to the millisecond, test_audit_contracts3_wire.py; at a
version's effective_from, test_audit_prices4_wire.py; the range ends of an instant, test_server_instants.py; a
sub-millisecond period_start of ClosePeriod and ExplainLineItem, a revenue span read to the nanosecond). This file
covers what they leave out:

- README "Times": the part of a request's instant finer than a millisecond is dropped, for a contract's
  starting_at and ending_before, an override's window and a grant's starts_at and expires_at alike: each is
  answered and applied at its whole millisecond.
- contracts.proto: a window (a contract's, an override's, a grant's) must end at least a millisecond after it starts,
  also once the sub-millisecond parts are dropped; a one-millisecond window holds exactly its start.
- README "Rollover" at a period end already past: the ROLLOVER grant is usable from exactly that end until the
  next period's end; an event dated exactly at the end draws on it, one a millisecond before draws nothing from the
  original (breakage is final); a rollover grant expiring exactly at that end breaks whole (it expires by then:
  nothing rolls); one starting exactly at that end belongs to the next period and rolls at its end instead; the
  breakage and sales of those grants land on the revenue lines of those periods; the ROLLOVER grant pays up to but
  not at the next period's end.
- usage.proto: an event may be dated as far back as timestamp_ms 1 (0 and below are INVALID_EVENT).
- A rollover grant starting exactly at a contract's ending_before: refused with no successor (no contract in force
  then), in the next contract's period after a switch; a millisecond before, in the ended contract's last period.

Every amount is computed by hand from the docs (the arithmetic is in the docstrings), none read back from the
server. The module shares one server (`--close-grace off`, so no period closes by itself); each test has its own
customers.

Product `units` (event type `work`, SUM of `n`) at 1 credit a unit on rate card `bnd` (credits), version 1 in force
from 2024-01-01, and on `bnd-epoch` (credits), version 1 in force from 1970-01-01T00:00:00Z."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, preview, rejected_in, serving
from tests.serverproc import ServerProcess, wait_for

CARD = "bnd"
EPOCH_CARD = "bnd-epoch"  # the same price, in force from 1970-01-01T00:00:00Z


def at(text: str) -> int:
    """Unix ms of an ISO-8601 UTC instant ("2025-01-10T12:00:00.500")."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def past_ms(ms: int, nanos: int) -> Timestamp:
    """The instant `nanos` nanoseconds (less than a millisecond) past the whole millisecond `ms`."""
    assert 0 <= nanos < 1_000_000
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000 + nanos)


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[rate]))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=stamp(at("2024-01-01T00:00:00")))
    )
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=EPOCH_CARD, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=EPOCH_CARD, upsert_rates=[rate])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=EPOCH_CARD, version=1, effective_from=stamp(0))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-boundaries")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def work(transaction_id: str, customer_id: str, at_ms: int, n: float = 1) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id, customer_id=customer_id, event_type="work", timestamp_ms=at_ms, values={"n": n}
    )


def promotional(
    client: TariffClient, customer_id: str, grant_id: str, amount: str, paid: str = "", **fields: Any
) -> contracts_pb2.Grant:
    """A promotional grant, or a prepaid one when `paid` is given."""
    kind = contracts_pb2.PREPAID if paid else contracts_pb2.PROMOTIONAL
    grant = contracts_pb2.Grant(
        id=grant_id, customer_id=customer_id, kind=kind, amount=amount, paid_amount=paid or "0", **fields
    )
    made: contracts_pb2.Grant = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return made


def grants(client: TariffClient, customer_id: str) -> dict[str, tuple[str, str, str, str]]:
    """GetBalance's grants: id -> (amount, drawn, remaining, expired)."""
    return {g.grant_id: (g.amount, g.drawn, g.remaining, g.expired) for g in client.get_balance(customer_id).grants}


def month_start(year: int, month: int) -> int:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def test_sub_millisecond_parts_of_contract_override_and_grant_instants_are_dropped(server: ServerProcess) -> None:
    """README "Times": what finer than a millisecond an instant carries is dropped. Contract `subms-k` from
    2025-01-01 + 999,999 ns (so from 2025-01-01T00:00:00.000) before 2025-01-20 + 500,000 ns (before 2025-01-20
    exactly); an override at price 5 from 2025-01-10T12:00 + 250,000 ns before 2025-01-12 + 750,000 ns (so
    [12:00:00.000 Jan 10, 00:00:00.000 Jan 12)); a promotional grant of 3 credits from 2025-01-05 + 700,000 ns (from
    2025-01-05T00:00:00.000). Each is answered at its whole millisecond. One unit at each edge and a millisecond
    before it, sent in time order (a grant draws in the order events are rated):
      S-1 (Dec 31 23:59:59.999): NO_ACTIVE_CONTRACT;  S: 1, no grant yet -> overage 1;
      G-1: 1, overage 1;  G: 1, the grant pays 1;  O-1: 1, the grant pays 1;  O: 5 (override), the grant pays its
      last 1, overage 4;  P-1: 5, overage 5;  P: 1, overage 1;  F-1: 1, overage 1;  F: NO_ACTIVE_CONTRACT.
    The line: 8 units, 1+1+1+1+5+5+1+1 = 16 credits, 3 from the grant, 13 of overage (13.00 USD at 1 USD)."""
    s, f = at("2025-01-01T00:00:00"), at("2025-01-20T00:00:00")
    o, p = at("2025-01-10T12:00:00"), at("2025-01-12T00:00:00")
    g = at("2025-01-05T00:00:00")
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="subms", name="subms"))
        contract = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="subms-k",
                customer_id="subms",
                rate_card_id=CARD,
                starting_at=past_ms(s, 999_999),
                ending_before=past_ms(f, 500_000),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="1",
                currency="USD",
            )
        )
        assert (contract.starting_at, contract.ending_before) == (stamp(s), stamp(f))
        with_override = client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id="subms-k",
                override=contracts_pb2.PriceOverride(
                    id="five",
                    product_id="units",
                    price="5",
                    starting_at=past_ms(o, 250_000),
                    ending_before=past_ms(p, 750_000),
                ),
            )
        )
        assert [(x.starting_at, x.ending_before) for x in with_override.overrides] == [(stamp(o), stamp(p))]
        made = promotional(client, "subms", "three", "3", contract_id="subms-k", starts_at=past_ms(g, 700_000))
        assert made.starts_at == stamp(g)

        instants = [s - 1, s, g - 1, g, o - 1, o, p - 1, p, f - 1, f]
        rejected = rejected_in(client, *(work(f"e{i}", "subms", t) for i, t in enumerate(instants)))
        assert rejected == [("e0", "NO_ACTIVE_CONTRACT"), ("e9", "NO_ACTIVE_CONTRACT")]

        explained = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="subms", period_start=stamp(s), line_id="units")
        )
        assert [
            (e.timestamp_ms, e.amount, [(d.grant_id, d.credits) for d in e.draws], e.overage) for e in explained.events
        ] == [
            (s, "1", [], "1"),
            (g - 1, "1", [], "1"),
            (g, "1", [("three", "1")], "0"),
            (o - 1, "1", [("three", "1")], "0"),
            (o, "5", [("three", "1")], "4"),
            (p - 1, "5", [], "5"),
            (p, "1", [], "1"),
            (f - 1, "1", [], "1"),
        ]
        invoice = preview(client, "subms", s)
        line = invoice.lines[0]
        assert (line.quantity, line.amount, [(c.grant_id, c.credits) for c in line.credits_applied], line.overage) == (
            "8",
            "16",
            [("three", "3")],
            "13",
        )
        assert invoice.total_due == "13.00"


def test_a_grants_sub_millisecond_expiry_is_dropped_so_its_whole_millisecond_is_already_past_it(
    server: ServerProcess,
) -> None:
    """A grant of 5 credits expiring at X + 500,000 ns, X two minutes ahead on a whole second (events may be dated
    up to 5 minutes ahead), is answered expiring at X and usable before X only: one unit at X - 1 ms draws 1, one at
    X (which is before X + 0.5 ms, but the half millisecond was dropped) is 1 of overage. Balance: drawn 1,
    remaining 4, period charges 2, overage 1."""
    with server.client() as client:
        start = now_ms() // 3_600_000 * 3_600_000 - 2 * 3_600_000
        open_contract(client, "subx", "subx-k", start, rate_card_id=CARD)
        x = (now_ms() // 1000 + 120) * 1000
        made = promotional(client, "subx", "soon", "5", contract_id="subx-k", expires_at=past_ms(x, 500_000))
        assert made.expires_at == stamp(x)
        assert rejected_in(client, work("before", "subx", x - 1), work("at", "subx", x)) == []
        assert now_ms() < x, "the scenario needs the events rated before the grant's expiry"
        assert grants(client, "subx") == {"soon": ("5", "1", "4", "0")}
        balance = client.get_balance("subx")
        assert (balance.period_charges, balance.overage_amount) == ("2", "1")


def test_at_a_past_period_end_the_rollover_is_usable_from_exactly_that_end_and_a_tie_with_expiry_rolls_over(
    server: ServerProcess,
) -> None:
    """Contract `rl-k` from the start of last month (P0), so its periods are [P0, E) and [E, E2), E the start of
    this month (already past) and E2 that of next month. Prepaid grants, each with rollover_fraction 0.5:
      - `r`: 10 credits paid 20 (2 a credit), priority 0, from the contract's start, no expiry: at E, 0.5 x 10 = 5
        roll into `rollover-r-<E>` (ROLLOVER, priority 0, usable from E exactly until E2), 5 break;
      - `tie`: 10 credits paid 10, priority 9, expiring exactly at E, its period's end: its credits are there up to
        that end, so it rolls over there as `r` does (README "Rollover": only a grant expiring before then simply
        breaks): 0.5 x 10 = 5 roll into `rollover-tie-<E>` (ROLLOVER, priority 9, usable from E until E2), 5 break;
      - `next`: 4 credits paid 4, priority 5, starting exactly at E: its billing period is [E, E2), so it rolls at
        E2, not at E, and pays from E.
    Once the clock has passed E (the grants are made after it), one unit dated E - 1 ms (late usage of the open
    first period) finds `r` and `tie` rolled over (the rollover is final; the ROLLOVER grants start at E) and
    `next` not started: 1 of overage. One unit at E draws on `rollover-r-<E>` (priority 0 before `next`'s 5 and
    `rollover-tie-<E>`'s 9). The first period's draft: the line 1, overage 1, balances r (10 granted, 5 drawn, 0,
    5 expired), tie (10, 5, 0, 5) and not `next` (it starts at the period's end). The second's: the line 1 paid
    by the rolled grant; `next` shows as it will roll at E2, the draft's end (2 drawn into its ROLLOVER grant, 2
    expired), `rollover-r-<E>`, expiring at E2 too, 1 drawn and 4 expired, and `rollover-tie-<E>` 0 drawn and 5
    expired. Revenue (README "Revenue"), by each grant's last usable instant (E - 1, in [P0, E)) and start:
      [P0, E): sold 20 + 10 = 30; breakage r 5 x 2 = 10, tie 5 x 1 = 5; recognised from credits 0, from
        overage 1 x 1 USD = 1; deferred 30 - 15 = 15 (r's 5 rolled credits at 2, tie's 5 at 1);
      [E, E2): sold 4 (`next`, starting exactly at E); recognised 1 credit at r's 2 = 2; deferred 15 + 4 - 2 = 17.
    """
    now = datetime.now(UTC)
    p0, e = month_start(now.year, now.month - 1), month_start(now.year, now.month)
    e2 = month_start(now.year, now.month + 1)
    rolled, tied = f"rollover-r-{e}", f"rollover-tie-{e}"
    with server.client() as client:
        open_contract(client, "rl", "rl-k", p0, rate_card_id=CARD)
        promotional(client, "rl", "r", "10", "20", contract_id="rl-k", rollover_fraction="0.5")
        promotional(
            client,
            "rl",
            "tie",
            "10",
            "10",
            contract_id="rl-k",
            priority=9,
            rollover_fraction="0.5",
            expires_at=stamp(e),
        )
        promotional(
            client, "rl", "next", "4", "4", contract_id="rl-k", priority=5, rollover_fraction="0.5", starts_at=stamp(e)
        )
        assert wait_for(lambda: {rolled, tied} <= set(grants(client, "rl")), 15)
        assert rejected_in(client, work("late", "rl", e - 1), work("edge", "rl", e)) == []

        balance = client.get_balance("rl")
        shown = {
            g.grant_id: (g.kind, g.drawn, g.remaining, g.expired, g.starts_at, g.expires_at) for g in balance.grants
        }
        unset = Timestamp()
        assert shown == {
            "r": (contracts_pb2.PREPAID, "5", "0", "5", stamp(p0), unset),
            "tie": (contracts_pb2.PREPAID, "5", "0", "5", stamp(p0), stamp(e)),
            "next": (contracts_pb2.PREPAID, "0", "4", "0", stamp(e), unset),
            rolled: (contracts_pb2.ROLLOVER, "1", "4", "0", stamp(e), stamp(e2)),
            tied: (contracts_pb2.ROLLOVER, "0", "5", "0", stamp(e), stamp(e2)),
        }
        assert (balance.period_start, balance.period_charges, balance.overage_amount) == (stamp(e), "1", "0")

        first, second = preview(client, "rl", e - 1), preview(client, "rl", e)
        assert (first.period_start, first.period_end, second.period_start, second.period_end) == (
            stamp(p0),
            stamp(e),
            stamp(e),
            stamp(e2),
        )
        assert [(ln.quantity, ln.amount, ln.overage) for ln in first.lines] == [("1", "1", "1")]
        assert [(b.grant_id, b.granted, b.drawn, b.remaining, b.expired) for b in first.grant_balances] == [
            ("r", "10", "5", "0", "5"),
            ("tie", "10", "5", "0", "5"),
        ]
        assert [(ln.quantity, ln.amount, ln.overage) for ln in second.lines] == [("1", "1", "0")]
        assert [(c.grant_id, c.credits) for c in second.credits_applied] == [(rolled, "1")]
        assert sorted(
            (b.grant_id, b.granted, b.drawn, b.remaining, b.expired) for b in second.grant_balances
        ) == sorted(
            [
                ("r", "10", "5", "0", "5"),
                ("tie", "10", "5", "0", "5"),
                ("next", "4", "2", "0", "2"),
                (rolled, "5", "1", "0", "4"),
                (tied, "5", "0", "0", "5"),
            ]
        )

        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=stamp(p0), period_end=stamp(e2), customer_id="rl")
        )
        assert [
            (ln.period_start, ln.recognized_credits, ln.recognized_overage, ln.breakage, ln.deferred)
            for ln in report.customer_lines
        ] == [(stamp(p0), "0", "1", "15", "15"), (stamp(e), "2", "0", "0", "17")]
        r = report.reconciliation
        assert (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
            "0",
            "34",
            "2",
            "15",
            "17",
            True,
        )


def test_a_window_is_at_least_one_millisecond_once_its_sub_millisecond_parts_are_dropped(server: ServerProcess) -> None:
    """A contract's [starting_at, ending_before), an override's window and a grant's [starts_at, expires_at) must each
    end after they start (contracts.proto): an end equal to the start is INVALID_ARGUMENT naming the end, also when
    the two differ only below the millisecond (T + 200,000 ns and T + 700,000 ns are both T once dropped), and
    nothing is made. A window of exactly one millisecond holds exactly one instant:
      - contract `one-a` [T, T + 1), then `one-b` from T + 1: one unit at T - 1 is NO_ACTIVE_CONTRACT, at T is
        one-a's, at T + 1 one-b's; PreviewInvoice at T reads one-a's period [T, T + 1 month) (its last period keeps
        its monthly end), at T + 1 one-b's [T + 1, T + 1 + 1 month), each line 1 unit, 1 credit;
      - an override at price 5 on one-b for [O, O + 1): units at O - 1, O, O + 1 cost 1, 5, 1;
      - a grant of 5 credits usable [X, X + 1), X two minutes ahead: of units at X - 1, X, X + 1 only X draws (1).
    one-b's first period (May 10 - Jun 10, 2025): 4 units, 1 + 1 + 5 + 1 = 8 credits; the grant: 1 drawn, 4 left."""
    t = at("2025-05-10T08:30:00.250")
    o = at("2025-05-20T10:00:00.123")
    x = (now_ms() // 1000 + 120) * 1000
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="one", name="one"))

        def contract_request(
            contract_id: str, start: Timestamp, end: Timestamp | None
        ) -> contracts_pb2.CreateContractRequest:
            request = contracts_pb2.CreateContractRequest(
                id=contract_id, customer_id="one", rate_card_id=CARD, starting_at=start, overage_price="1"
            )
            if end is not None:
                request.ending_before.CopyFrom(end)
            return request

        def refused(call: Callable[[], object]) -> str:
            with pytest.raises(TariffError) as failed:
                call()
            assert failed.value.code.name == "INVALID_ARGUMENT", failed.value
            return str(failed.value.details)

        for end in (stamp(t), past_ms(t, 700_000)):
            request = contract_request("one-zero", past_ms(t, 200_000), end)
            assert (
                refused(partial(client.contracts.CreateContract, request)) == "ending_before: must be after starting_at"
            )
        client.contracts.CreateContract(contract_request("one-a", stamp(t), stamp(t + 1)))
        client.contracts.CreateContract(contract_request("one-b", stamp(t + 1), None))

        def override(override_id: str, start: Timestamp, end: Timestamp) -> contracts_pb2.AddOverrideRequest:
            return contracts_pb2.AddOverrideRequest(
                contract_id="one-b",
                override=contracts_pb2.PriceOverride(
                    id=override_id, product_id="units", price="5", starting_at=start, ending_before=end
                ),
            )

        zero = override("zero", past_ms(o, 200_000), past_ms(o, 700_000))
        assert (
            refused(lambda: client.contracts.AddOverride(zero)) == "override.ending_before: must be after starting_at"
        )
        client.contracts.AddOverride(override("one-ms", stamp(o), stamp(o + 1)))

        def window(grant_id: str, start: Timestamp, end: Timestamp) -> contracts_pb2.GrantCreditsRequest:
            grant = contracts_pb2.Grant(
                id=grant_id, customer_id="one", kind=contracts_pb2.PROMOTIONAL, amount="5", paid_amount="0"
            )
            grant.starts_at.CopyFrom(start)
            grant.expires_at.CopyFrom(end)
            return contracts_pb2.GrantCreditsRequest(grant=grant)

        zero_grant = window("g-zero", past_ms(x, 100_000), past_ms(x, 900_000))
        assert refused(lambda: client.contracts.GrantCredits(zero_grant)) == "grant.expires_at: must be after starts_at"
        client.contracts.GrantCredits(window("g-one", stamp(x), stamp(x + 1)))
        assert [c.id for c in client.contracts.GetContract(contracts_pb2.GetContractRequest(id="one-b")).overrides] == [
            "one-ms"
        ]
        assert set(grants(client, "one")) == {"g-one"}

        instants = [t - 1, t, t + 1, o - 1, o, o + 1, x - 1, x, x + 1]
        assert rejected_in(client, *(work(f"one-{i}", "one", ms) for i, ms in enumerate(instants))) == [
            ("one-0", "NO_ACTIVE_CONTRACT")
        ]
        assert now_ms() < x, "the scenario needs the events rated before the grant's window"
        first, second = preview(client, "one", t), preview(client, "one", t + 1)
        assert (first.contract_id, first.period_start, first.period_end) == (
            "one-a",
            stamp(t),
            stamp(at("2025-06-10T08:30:00.250")),
        )
        assert [(ln.quantity, ln.amount) for ln in first.lines] == [("1", "1")]
        assert (second.contract_id, second.period_start, second.period_end) == (
            "one-b",
            stamp(t + 1),
            stamp(at("2025-06-10T08:30:00.251")),
        )
        assert [(ln.quantity, ln.amount) for ln in second.lines] == [("4", "8")]
        explained = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="one", period_start=stamp(t + 1), line_id="units")
        )
        assert [(e.timestamp_ms, e.amount) for e in explained.events] == [
            (t + 1, "1"),
            (o - 1, "1"),
            (o, "5"),
            (o + 1, "1"),
        ]
        assert grants(client, "one") == {"g-one": ("5", "1", "4", "0")}


def test_a_rollover_grant_starting_at_a_contracts_end_belongs_to_what_is_in_force_at_that_instant(
    server: ServerProcess,
) -> None:
    """contracts.proto Grant.rollover_fraction: such a grant rolls at the end of the billing period in which it starts,
    and must start in a contract of its customer. A contract is in force up to but not at its ending_before, so:
      - `rend`: one contract [Jul 1, Jul 11 2025), no successor. A grant starting exactly at Jul 11 starts when no
        contract is in force: FAILED_PRECONDITION, nothing granted. One starting at Jul 11 - 1 ms is in the
        contract's last period [Jul 1, Aug 1) (it keeps its monthly end): 10 credits roll at Aug 1, 5 into
        `rollover-last-<Aug 1>` usable [Aug 1, Sep 1) (a full next period though no contract follows), 5 break; all
        of it long past, so the rolled 5 have expired too.
      - `rsw`: contract A [Jul 1, Jul 11 2025), B from Jul 11 (periods Jul 11 - Aug 11, ...). A grant starting at
        Jul 11 - 1 ms is in A's last period: it rolls at Aug 1 into a grant usable [Aug 1, Sep 1); one starting
        exactly at Jul 11 is in B's first period: it rolls at Aug 11, into a grant usable [Aug 11, Sep 11).
    GetBalance (amount, drawn, remaining, expired, starts_at, expires_at): each original 10 granted, 5 drawn (moved
    into its ROLLOVER grant), 0 left, 5 expired; each ROLLOVER grant 5 granted, nothing drawn, 5 expired.
    README "Revenue": a grant is sold at the start of the billing period containing its starts_at; `rend`'s prepaid
    `after` (2 credits paid 2 USD, no rollover, starting exactly at Jul 11, after the contract ended but inside its
    last period, which keeps its monthly end) is sold in [Jul 1, Aug 1): that span's reconciliation sold 2, and its
    line's deferred is 2 (never drawn, never expiring)."""
    jul1, jul11 = at("2025-07-01T00:00:00"), at("2025-07-11T00:00:00")
    aug1, aug11 = at("2025-08-01T00:00:00"), at("2025-08-11T00:00:00")
    sep1, sep11 = at("2025-09-01T00:00:00"), at("2025-09-11T00:00:00")
    with server.client() as client:
        open_contract(client, "rend", "rend-k", jul1, jul11, rate_card_id=CARD)
        open_contract(client, "rsw", "rsw-a", jul1, jul11, rate_card_id=CARD)
        open_contract(client, "rsw", "rsw-b", jul11, rate_card_id=CARD)

        def rolling(customer_id: str, grant_id: str, starts_at_ms: int) -> contracts_pb2.GrantCreditsRequest:
            grant = contracts_pb2.Grant(
                id=grant_id,
                customer_id=customer_id,
                kind=contracts_pb2.PROMOTIONAL,
                amount="10",
                rollover_fraction="0.5",
                starts_at=stamp(starts_at_ms),
            )
            return contracts_pb2.GrantCreditsRequest(grant=grant)

        with pytest.raises(TariffError) as refused:
            client.contracts.GrantCredits(rolling("rend", "at-end", jul11))
        assert refused.value.code.name == "FAILED_PRECONDITION", refused.value
        client.contracts.GrantCredits(rolling("rend", "last", jul11 - 1))
        client.contracts.GrantCredits(rolling("rsw", "old", jul11 - 1))
        client.contracts.GrantCredits(rolling("rsw", "new", jul11))
        promotional(client, "rend", "after", "2", "2", starts_at=stamp(jul11))

        def shown(customer_id: str) -> dict[str, tuple[str, str, str, str, int, int]]:
            return {
                g.grant_id: (
                    g.amount,
                    g.drawn,
                    g.remaining,
                    g.expired,
                    g.starts_at.ToMilliseconds(),
                    g.expires_at.ToMilliseconds(),
                )
                for g in client.get_balance(customer_id).grants
            }

        def expired_both(customer_id: str, count: int) -> bool:
            return sum(1 for g in shown(customer_id).values() if g[:4] == ("5", "0", "0", "5")) == count

        assert wait_for(lambda: expired_both("rend", 1) and expired_both("rsw", 2), 15)
        assert shown("rend") == {
            "last": ("10", "5", "0", "5", jul11 - 1, 0),
            f"rollover-last-{aug1}": ("5", "0", "0", "5", aug1, sep1),
            "after": ("2", "0", "2", "0", jul11, 0),
        }
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=stamp(jul1), period_end=stamp(aug1), customer_id="rend")
        )
        assert [(ln.period_start, ln.deferred) for ln in report.customer_lines] == [(stamp(jul1), "2")]
        assert (report.reconciliation.prepaid_sold, report.reconciliation.deferred_end) == ("2", "2")
        assert shown("rsw") == {
            "old": ("10", "5", "0", "5", jul11 - 1, 0),
            f"rollover-old-{aug1}": ("5", "0", "0", "5", aug1, sep1),
            "new": ("10", "5", "0", "5", jul11, 0),
            f"rollover-new-{aug11}": ("5", "0", "0", "5", aug11, sep11),
        }


def test_a_rollover_grant_pays_up_to_but_not_at_the_next_periods_end(server: ServerProcess) -> None:
    """README "Rollover": the ROLLOVER grant is usable from the period's end until the end of the next billing
    period (its own expiry). A contract anchored so that a period ends at E2, about 2.5 minutes from now (events may
    be dated up to 5 minutes ahead); the period before it is [E, E2), E long past. A grant of 10 credits with
    rollover_fraction 0.5 starting at E - 1 ms (in the period ending at E) rolled at E: 5 into `rollover-roll-<E>`,
    usable [E, E2). One unit at E2 - 1 ms draws 1 from it; one at E2 (the next period's first instant) draws
    nothing: 1 of overage in that period. The rolled grant: 1 drawn, 4 remaining; the current period [E, E2)
    charges 1, none of it overage."""
    target = datetime.fromtimestamp(now_ms() // 1000 + 150, UTC)
    # An anchor on the target's day (and time) some months before, in a month that has that day, so that the
    # contract's periods (each boundary computed from the anchor, clamped to shorter months) end exactly at it.
    for months_back in (2, 3, 4):
        year, month = target.year + (target.month - 1 - months_back) // 12, (target.month - 1 - months_back) % 12 + 1
        try:
            anchor = target.replace(year=year, month=month)
            break
        except ValueError:
            continue
    else:
        raise AssertionError(f"no month before {target} has its day")  # one of three months in a row has 31 days
    e2 = int(target.timestamp() * 1000)
    with server.client() as client:
        open_contract(client, "ro2", "ro2-k", int(anchor.timestamp() * 1000), rate_card_id=CARD)
        current = preview(client, "ro2", now_ms())
        assert current.period_end == stamp(e2)
        e = current.period_start.ToMilliseconds()
        promotional(client, "ro2", "roll", "10", contract_id="ro2-k", rollover_fraction="0.5", starts_at=stamp(e - 1))
        rolled = f"rollover-roll-{e}"
        assert wait_for(lambda: rolled in grants(client, "ro2"), 15)
        assert rejected_in(client, work("last", "ro2", e2 - 1), work("next", "ro2", e2)) == []
        assert now_ms() < e2, "the scenario needs the events rated before the rolled grant's expiry"
        shown = {
            g.grant_id: (g.drawn, g.remaining, g.starts_at, g.expires_at) for g in client.get_balance("ro2").grants
        }
        assert shown[rolled] == ("1", "4", stamp(e), stamp(e2))
        balance = client.get_balance("ro2")
        assert (balance.period_end, balance.period_charges, balance.overage_amount) == (stamp(e2), "1", "0")
        after = preview(client, "ro2", e2)
        assert [(ln.quantity, ln.amount, ln.overage) for ln in after.lines] == [("1", "1", "1")]


def test_an_event_may_be_dated_as_far_back_as_the_first_millisecond_after_the_epoch(server: ServerProcess) -> None:
    """usage.proto UsageEvent.timestamp_ms: positive, and in a contract of the customer (no other limit on the past
    while its period is open). A contract from 1970-01-01T00:00:00Z on a card priced from then: one unit at
    timestamp_ms 1 is accepted and charged 1 in the period [1970-01-01, 1970-02-01); 0 is INVALID_EVENT (required),
    -1 INVALID_EVENT (must be positive), and neither is charged."""
    with server.client() as client:
        open_contract(client, "epoch", "epoch-k", 0, rate_card_id=EPOCH_CARD)
        assert rejected_in(
            client, work("zero", "epoch", 0), work("first", "epoch", 1), work("before", "epoch", -1)
        ) == [
            ("zero", "INVALID_EVENT"),
            ("before", "INVALID_EVENT"),
        ]
        invoice = preview(client, "epoch", 0)
        assert (invoice.period_start, invoice.period_end) == (stamp(0), stamp(at("1970-02-01T00:00:00")))
        assert [(ln.quantity, ln.amount, ln.events) for ln in invoice.lines] == [("1", "1", 1)]
