"""An acceptance audit of credit rollover over the wire (README "Rollover", contracts.proto Grant.rollover_fraction:
"a ROLLOVER grant with the same cost basis, usable until the end of the next period"), against a real server,
every amount computed by hand from the docs. Everything happens in 2026 periods long over, with `--close-grace
off`, so the server's own clock rolls the grants over (and expires the ROLLOVER grants) as soon as they exist.

Product `unit` costs 1 credit per 1000 units, so 1000 x n units cost n credits. "The next period" is the billing
period that follows the one the grant rolled over at, on that period's schedule: a full period, whatever contract
is in force (or none) when the rollover happens."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, usage_pb2

from engine import commands as cmd
from tests.credits_fixtures import Ledger
from tests.engine_fixtures import EPOCH_MS, basic_world
from tests.serverproc import ServerFactory, wait_for
from tests.test_audit_invoices_wire import CARD, FEB, JAN, MAR, catalogue, ms, start_server, ts

JAN16 = ms("2026-01-16T00:00:00")
DAY_MS = 86_400_000
HOUR_MS = 3_600_000


def contract(client: TariffClient, contract_id: str, customer_id: str, start_ms: int, end_ms: int | None) -> None:
    request = contracts_pb2.CreateContractRequest(
        id=contract_id,
        customer_id=customer_id,
        rate_card_id=CARD,
        starting_at=ts(start_ms),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(ts(end_ms))
    client.contracts.CreateContract(request)


def rolling_grant(client: TariffClient, contract_id: str, amount: str, paid: str) -> None:
    """Grant R of `amount` credits paid `paid` USD, fraction 0.5, from the contract's start."""
    grant = contracts_pb2.Grant(
        id="R",
        contract_id=contract_id,
        kind=contracts_pb2.PREPAID,
        amount=amount,
        paid_amount=paid,
        rollover_fraction="0.5",
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def units(customer_id: str, transaction_id: str, credits: int, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="unit",
        timestamp_ms=at_ms,
        dimensions={"k": "a"},
        values={"n": credits * 1000},
    )


def grant_rows(client: TariffClient, customer_id: str) -> dict[str, balance_pb2.GrantBalance]:
    return {g.grant_id: g for g in client.get_balance(customer_id).grants}


def row(g: balance_pb2.GrantBalance) -> tuple[str, str, str, str, int]:
    """(amount, drawn, remaining, expired, expires_at ms; 0 when unset)."""
    expires = g.expires_at.ToMilliseconds() if g.HasField("expires_at") else 0
    return g.amount, g.drawn, g.remaining, g.expired, expires


def switched_customer(client: TariffClient, customer_id: str, start_ms: int, switch_ms: int) -> None:
    """Contract `<customer>-old` from start_ms, ended at switch_ms; `<customer>-new` from switch_ms, open-ended."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract(client, f"{customer_id}-old", customer_id, start_ms, switch_ms)
    contract(client, f"{customer_id}-new", customer_id, switch_ms, None)


def test_after_a_switch_the_rolled_credit_lasts_a_full_next_period_not_until_the_new_contracts_period_ends(
    server_factory: ServerFactory,
) -> None:
    """Contract `sw-old` from Jan 1, ended at Jan 16: its one period keeps its monthly end, Jan 1 - Feb 1. Contract
    `sw-new` from Jan 16: periods Jan 16 - Feb 16, Feb 16 - Mar 16. Grant R under sw-old: 7.000000000001 credits
    paid as many USD (1 USD a credit), fraction 0.5, from Jan 1, never drawn (granted now, it rolls over at once):
    it rolls over at the end of its period, Feb 1. 7.000000000001 x 0.5 = 3.5000000000005, floored at 10^-12:
    3.5 roll into rollover-R-<Feb 1>, 7.000000000001 - 3.5 = 3.500000000001 break. The rolled credit is usable
    "until the end of the next period": the period after Jan 1 - Feb 1 is Feb 1 - Mar 1, so it expires at Mar 1
    (not at Feb 16, the end of sw-new's period in force at the rollover, which would leave it 15 days), when its
    3.5 break. R: drawn 3.5 (rolled out), expired 3.500000000001; ROLLOVER: 3.5, drawn 0, expired 3.5.
    Revenue at 1 USD a credit, the ROLLOVER grant on R's ledger (no sale): sw-old's Jan 1 line sells 7.000000000001,
    breaks 3.500000000001 and defers the rolled 3.5; sw-new's Jan 16 line carries the 3.5; its Feb 16 - Mar 16 line
    (the period of the ROLLOVER grant's last usable instant) breaks 3.5 and defers 0."""
    with start_server(server_factory, "rollover2-switch") as client:
        catalogue(client)
        switched_customer(client, "sw", JAN, JAN16)
        rolling_grant(client, "sw-old", "7.000000000001", "7.000000000001")
        rolled = f"rollover-R-{FEB}"
        assert wait_for(lambda: rolled in grant_rows(client, "sw"), 15), "the server did not roll R over"
        assert wait_for(lambda: grant_rows(client, "sw")[rolled].expired != "0", 15), "the rolled credit never broke"
        grants = grant_rows(client, "sw")
        assert row(grants["R"]) == ("7.000000000001", "3.5", "0", "3.500000000001", 0)
        assert row(grants[rolled]) == ("3.5", "0", "0", "3.5", MAR)
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(MAR), customer_id="sw")
        )
        lines = [(x.period_start.ToMilliseconds(), x.breakage, x.deferred) for x in report.customer_lines]
        assert lines == [(JAN, "3.500000000001", "3.5"), (JAN16, "0", "3.5"), (ms("2026-02-16T00:00:00"), "3.5", "0")]
        assert (report.reconciliation.prepaid_sold, report.reconciliation.deferred_end) == ("7.000000000001", "0")


def test_after_a_switch_credit_rolled_over_25_days_ago_still_pays_todays_usage(server_factory: ServerFactory) -> None:
    """S = 00:00 UTC 55 days ago (its day of month cut to 28 at most, so months add without clamping: S is then 55
    to 58 days ago). Contract `lv-old` from S, ended at S + 15 days; `lv-new` from S + 15 days. Grant R under
    lv-old: 7.000000000001 credits paid as many USD, fraction 0.5, never drawn. At S + 1 month (24 to 28 days ago)
    3.5 roll over (7.000000000001 x 0.5 floored at 10^-12), 3.500000000001 break. The rolled credit lasts until
    the end of the next period, S + 2 months (59 to 62 days after S: 1 to 7 days from now), not S + 15 days + 1
    month (9 to 16 days ago). So 2 credits of usage dated an hour ago draw on it: ROLLOVER grant 3.5, drawn 2,
    remaining 1.5, nothing expired; overage 0."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=55)
    start = start.replace(day=min(start.day, 28))
    start_ms, switch_ms = int(start.timestamp() * 1000), int((start + timedelta(days=15)).timestamp() * 1000)
    rolls_at_ms = int(start.replace(month=start.month % 12 + 1, year=start.year + start.month // 12).timestamp() * 1000)
    later = start.month + 1
    lasts_until_ms = int(start.replace(month=later % 12 + 1, year=start.year + later // 12).timestamp() * 1000)
    with start_server(server_factory, "rollover2-live") as client:
        catalogue(client)
        switched_customer(client, "lv", start_ms, switch_ms)
        rolling_grant(client, "lv-old", "7.000000000001", "7.000000000001")
        rolled = f"rollover-R-{rolls_at_ms}"
        assert wait_for(lambda: rolled in grant_rows(client, "lv"), 15), "the server did not roll R over"
        assert client.ingest_batch([units("lv", "today", 2, now_ms() - HOUR_MS)], "lv-today").accepted == 1
        grants = grant_rows(client, "lv")
        assert row(grants["R"]) == ("7.000000000001", "3.5", "0", "3.500000000001", 0)
        assert row(grants[rolled]) == ("3.5", "2", "1.5", "0", lasts_until_ms)
        assert client.get_balance("lv").overage_amount == "0"


def revenue(client: TariffClient, customer_id: str, start_ms: int, end_ms: int) -> invoices_pb2.RevenueReconciliation:
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(period_start=ts(start_ms), period_end=ts(end_ms), customer_id=customer_id)
    )
    reconciliation: invoices_pb2.RevenueReconciliation = report.reconciliation
    return reconciliation


def test_with_no_later_contract_the_rolled_credit_still_expires_and_its_deferred_revenue_clears(
    server_factory: ServerFactory,
) -> None:
    """Contract `nx-c` from Jan 1, ended at Jan 20, no contract after it: its one period Jan 1 - Feb 1. Grant R:
    10 credits paid 5 USD (0.5 USD a credit), fraction 0.5, from Jan 1, never drawn. Feb 1: floor(10 x 0.5) = 5
    roll into rollover-R-<Feb 1> (paid 5 x 5 / 10 = 2.5), 5 break (2.5 USD). The ROLLOVER grant is usable until the
    end of the next period, Feb 1 - Mar 1: it expires at Mar 1 and its 5 break then (2.5 USD), even though no
    contract is in force by then. Over 2026: sold 5, recognised 0, breakage 2.5 + 2.5 = 5, deferred at end 0."""
    with start_server(server_factory, "rollover2-none-after") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="nx", name="nx"))
        contract(client, "nx-c", "nx", JAN, ms("2026-01-20T00:00:00"))
        rolling_grant(client, "nx-c", "10", "5")
        rolled = f"rollover-R-{FEB}"
        assert wait_for(lambda: rolled in grant_rows(client, "nx"), 15), "the server did not roll R over"
        assert wait_for(lambda: grant_rows(client, "nx")[rolled].expired != "0", 15), "the rolled credit never broke"
        grants = grant_rows(client, "nx")
        assert row(grants["R"]) == ("10", "5", "0", "5", 0)
        assert row(grants[rolled]) == ("5", "0", "0", "5", MAR)
        reconciliation = revenue(client, "nx", JAN, ms("2027-01-01T00:00:00"))
        found = (reconciliation.prepaid_sold, reconciliation.recognized_credits, reconciliation.breakage)
        assert tuple(Decimal(x) for x in found) == (Decimal(5), Decimal(0), Decimal(5))
        assert Decimal(reconciliation.deferred_end) == 0 and reconciliation.reconciles


def rolled_after_the_contract_ended(rollover_lasts_next_period: bool) -> Ledger:
    """The engine alone: contract c-acme from Jan 1 (EPOCH), ended at Jan 21, nothing after it; grant g of 10
    credits paid 10, fraction 0.5, from Jan 1; an AdvanceClock to Feb 1 + 1 ms with `rollover_lasts_next_period`
    as given (the server sets it; records of earlier releases lack it): 5 roll into rollover-g-<Feb 1>."""
    world = basic_world(contract_end_ms=EPOCH_MS + 20 * DAY_MS)
    m = Ledger(world)
    m.run(world.grant_command("g", "10", paid="10", rollover_fraction="0.5"))
    feb_ms = EPOCH_MS + 31 * DAY_MS
    m.run(
        cmd.AdvanceClock(
            feb_ms + 1, "clock", rollover_ids_distinct=True, rollover_lasts_next_period=rollover_lasts_next_period
        )
    )
    return m


def rolled_grant(m: Ledger) -> tuple[str, int, int | None]:
    """(id, remaining picos, expires_at ms) of the ROLLOVER grant, as the balance an hour after Feb 1 shows it."""
    feb_ms = EPOCH_MS + 31 * DAY_MS
    views = [v for v in m.billing.balance("acme", feb_ms + HOUR_MS).grants if v.grant.id != "g"]
    assert len(views) == 1, views
    return views[0].grant.id, views[0].remaining, views[0].grant.expires_at_ms


def test_an_advance_clock_recorded_before_rollovers_lasted_the_next_period_replays_as_it_did() -> None:
    """Recorded with the field (the server's now): the 5 rolled credits last until the end of the next period,
    Feb 1 + 28 days = Mar 1. Recorded without it (an earlier release): no contract is in force at Feb 1, so they
    never expire, as that release made them; each journal replays to its own grant."""
    feb_ms = EPOCH_MS + 31 * DAY_MS
    five = 5 * 10**12
    now = rolled_after_the_contract_ended(True)
    assert rolled_grant(now) == (f"rollover-g-{feb_ms}", five, feb_ms + 28 * DAY_MS)
    before = rolled_after_the_contract_ended(False)
    assert rolled_grant(before) == (f"rollover-g-{feb_ms}", five, None)
    for m in (now, before):
        replayed = m.replayed().balance("acme", feb_ms + HOUR_MS).grants
        shown = m.billing.balance("acme", feb_ms + HOUR_MS).grants
        assert [(v.grant, v.remaining) for v in replayed] == [(v.grant, v.remaining) for v in shown]


def free_grant(client: TariffClient, contract_id: str, grant_id: str, amount: str, priority: int) -> None:
    """A PROMOTIONAL grant from the contract's start, never expiring."""
    grant = contracts_pb2.Grant(
        id=grant_id, contract_id=contract_id, kind=contracts_pb2.PROMOTIONAL, amount=amount, priority=priority
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def test_a_rollover_grant_burns_by_priority_then_before_a_later_expiring_grant(server_factory: ServerFactory) -> None:
    """S = 00:00 UTC 40 days ago (day of month cut to 28 at most: 40 to 43 days ago); one contract `bo-c` from S.
    Grant R: 7.000000000001 credits paid as many USD, fraction 0.5, priority 0: at S + 1 month (9 to 13 days ago)
    3.5 roll into rollover-R-<S + 1 month> (same priority 0), usable until S + 2 months (16 to 22 days from now);
    3.500000000001 break. P: 10 PROMOTIONAL, priority 0, never expiring; Q: 1 PROMOTIONAL, priority -1. 3 credits
    dated an hour ago draw in burn order (architecture §3: priority, then earliest expiry): Q's 1 first (lower
    priority), then 2 from the ROLLOVER grant (it expires, P never), none from P. ROLLOVER: drawn 2, remaining 1.5;
    P: remaining 10; Q: drawn 1; overage 0."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = today - timedelta(days=40)
    start = start.replace(day=min(start.day, 28))
    start_ms = int(start.timestamp() * 1000)
    rolls_at_ms = int(start.replace(month=start.month % 12 + 1, year=start.year + start.month // 12).timestamp() * 1000)
    later = start.month + 1
    lasts_until_ms = int(start.replace(month=later % 12 + 1, year=start.year + later // 12).timestamp() * 1000)
    with start_server(server_factory, "rollover2-burn") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="bo", name="bo"))
        contract(client, "bo-c", "bo", start_ms, None)
        rolling_grant(client, "bo-c", "7.000000000001", "7.000000000001")
        rolled = f"rollover-R-{rolls_at_ms}"
        assert wait_for(lambda: rolled in grant_rows(client, "bo"), 15), "the server did not roll R over"
        free_grant(client, "bo-c", "P", "10", 0)
        free_grant(client, "bo-c", "Q", "1", -1)
        assert client.ingest_batch([units("bo", "today", 3, now_ms() - HOUR_MS)], "bo-today").accepted == 1
        grants = grant_rows(client, "bo")
        assert row(grants["R"]) == ("7.000000000001", "3.5", "0", "3.500000000001", 0)
        assert row(grants[rolled]) == ("3.5", "2", "1.5", "0", lasts_until_ms)
        assert grants[rolled].kind == contracts_pb2.ROLLOVER and grants[rolled].priority == 0
        assert row(grants["P"]) == ("10", "0", "10", "0", 0)
        assert row(grants["Q"]) == ("1", "1", "0", "0", 0)
        assert client.get_balance("bo").overage_amount == "0"
