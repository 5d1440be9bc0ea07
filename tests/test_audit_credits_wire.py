"""An audit of README "Credits and the gateway" and the proto comments it cites, over the wire: each scenario runs
against a real server process, and every amount asserted was computed by hand from the documents, not read
back from the server. One product, `units` (event type `work`, SUM of `n`), at 1 credit a unit, so an event of
n units costs n credits; a second product, `extra` (event type `other`), at the same price."""

from __future__ import annotations

import time
from calendar import monthrange
from datetime import UTC, datetime
from decimal import Decimal

import grpc
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import refusal, release
from tests.serverproc import ServerFactory, wait_for
from tests.test_server_explain import month_start_ms

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
# The card is in force from 60 days ago (on an hour), so every past instant the scenarios use has a price.
CARD_FROM_MS = (time.time_ns() // 1_000_000 // HOUR_MS - 60 * 24) * HOUR_MS


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing
    for product_id, event_type in (("units", "work"), ("extra", "other")):
        product = pricing_pb2.Product(id=product_id, event_type=event_type, aggregation=pricing_pb2.SUM, value_key="n")
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rates = [pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price="1")) for p in ("units", "extra")]
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


def customer(client: TariffClient, customer_id: str, starting_at_ms: int = CARD_FROM_MS) -> str:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract = client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id="card", starting_at=stamp(starting_at_ms)
        )
    )
    return str(contract.id)


def grant(
    client: TariffClient,
    customer_id: str,
    grant_id: str,
    amount: str,
    *,
    paid: str = "0",
    priority: int = 0,
    products: tuple[str, ...] = (),
    starts_at_ms: int | None = None,
    expires_at_ms: int | None = None,
    rollover_fraction: str = "",
) -> None:
    kind = contracts_pb2.PREPAID if paid != "0" else contracts_pb2.PROMOTIONAL
    new = contracts_pb2.Grant(
        id=grant_id,
        contract_id=f"k-{customer_id}",
        kind=kind,
        amount=amount,
        paid_amount=paid,
        priority=priority,
        applicable_product_ids=list(products),
        rollover_fraction=rollover_fraction,
    )
    if starts_at_ms is not None:
        new.starts_at.CopyFrom(stamp(starts_at_ms))
    if expires_at_ms is not None:
        new.expires_at.CopyFrom(stamp(expires_at_ms))
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))


def work(
    transaction_id: str, customer_id: str, units: float, at_ms: int, reservation_id: str = ""
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="work",
        timestamp_ms=at_ms,
        values={"n": units},
        reservation_id=reservation_id,
    )


Row = tuple[str, str, str, str, str]


def grants_of(client: TariffClient, customer_id: str) -> dict[str, Row]:
    """grant id -> (drawn, remaining, held, expired, recognized_revenue), as GetBalance shows them."""
    balance = client.get_balance(customer_id)
    return {g.grant_id: (g.drawn, g.remaining, g.held, g.expired, g.recognized_revenue) for g in balance.grants}


def totals(client: TariffClient, customer_id: str) -> tuple[str, str, str]:
    b = client.get_balance(customer_id)
    return b.credits_remaining, b.credits_held, b.credits_available


def breakage(client: TariffClient, customer_id: str) -> Decimal:
    """The customer's breakage from GetRevenueReport, which reads the kernel and compiles nothing: polling it does
    not stand in for the reads and batches that would otherwise bring the kernel's tables up to date."""
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(
            period_start=stamp(CARD_FROM_MS), period_end=stamp(now_ms() + 40 * DAY_MS), customer_id=customer_id
        )
    )
    return Decimal(report.reconciliation.breakage)


def test_a_grant_that_expired_before_anything_was_read_breaks_at_once_and_a_late_event_draws_nothing(
    server_factory: ServerFactory,
) -> None:
    """README: "when a grant's expires_at has passed, the clock driver's AdvanceClock turns what it still holds into
    breakage ... a late event dated before the expiry but arriving after the breakage was recorded is rated but draws
    nothing from that grant"; usage may still draw on it only "before the AdvanceClock (normally milliseconds)".
    A grant whose expiry has passed when it is granted (or passes before any batch or balance read) must break
    without waiting for one."""
    server = server_factory()
    expires_at_ms = CARD_FROM_MS + 15 * DAY_MS
    with server.client() as client:
        catalogue(client)
        customer(client, "ex")
        grant(client, "ex", "old", "10", paid="4", expires_at_ms=expires_at_ms)
        # 10 credits at 0.4 break: 4 of revenue, recorded by the clock driver on its own.
        assert wait_for(lambda: breakage(client, "ex") == Decimal(4), 10)
        ack = client.ingest_batch([work("late", "ex", 1, expires_at_ms - 1)])
        assert ack.accepted == 1
        # Drew nothing from "old" (10 expired, 0 drawn) and nothing recognised from it.
        assert grants_of(client, "ex") == {"old": ("0", "0", "0", "10", "0")}


def test_a_hold_on_a_grant_that_expires_stays_held_and_breaks_when_it_ends(server_factory: ServerFactory) -> None:
    """Balance: credits_available = credits_remaining - credits_held, and credit held on a grant that expired is
    still held (GrantBalance.held) but usable by nothing: credits_remaining counts it with the holds, and it becomes
    breakage when the hold ends (README "Expiry and breakage")."""
    server = server_factory()
    with server.client() as client:
        catalogue(client)
        customer(client, "he")
        expires_at_ms = now_ms() + 1500
        grant(client, "he", "short", "10", expires_at_ms=expires_at_ms)
        grant(client, "he", "long", "10", priority=1)
        held = client.authorize("he", "work", values={"n": 4}, reserve=True, reservation_id="r1", reservation_ttl_s=60)
        assert (held.allowed, held.estimated_cost, held.credits_available) == (True, "4", "16")
        assert totals(client, "he") == ("20", "4", "16")
        # "short" expires: its 6 unheld credits are expired at once, the 4 held stay held.
        assert wait_for(lambda: grants_of(client, "he")["short"] == ("0", "0", "4", "6", "0"), 10)
        assert totals(client, "he") == ("14", "4", "10")
        decision = client.authorize("he", "work", values={"n": 10})
        assert (decision.reason, decision.credits_available) == ("OK", "10")
        assert release(client, "he", "r1") == "4"
        assert wait_for(lambda: grants_of(client, "he")["short"] == ("0", "0", "0", "10", "0"), 10)
        assert totals(client, "he") == ("10", "0", "10")


def period_anchor_ms(end_ms: int) -> int:
    """A contract start whose monthly periods have a boundary at `end_ms`: the same day and time one month earlier,
    or, when that month is too short for the day, the latest earlier month that has it (README "Contracts":
    boundaries computed from the anchor, clamped to shorter months)."""
    end = datetime.fromtimestamp(end_ms / 1000, UTC)
    year, month = end.year, end.month
    while True:
        year, month = (year, month - 1) if month > 1 else (year - 1, 12)
        if end.day <= monthrange(year, month)[1]:
            return int(end.replace(year=year, month=month).timestamp() * 1000)


def test_the_readme_rollover_example_over_the_wire_and_revenue_of_the_rolled_grant(
    server_factory: ServerFactory,
) -> None:
    """README "Held credit at a rollover": 100 credits with fraction 0.5, 40 drawn, r1 holding 20 and r2 6 at the
    period's end: 30 roll over (17 available, 10 and 3 still held by r1 and r2), 30 break; a settling event draws on
    the ROLLOVER grant. GrantBalance.recognized_revenue is "revenue recognised from this grant's draws": the original
    (paid 80: 0.8 a credit) recognised 40 x 0.8 = 32, as GetRevenueReport says; the 30 that rolled over are not
    revenue of the original (they are the ROLLOVER grant's, deferred until drawn)."""
    server = server_factory()
    period_end_ms = (now_ms() // 1000 + 3) * 1000
    with server.client() as client:
        catalogue(client)
        customer(client, "ro", starting_at_ms=period_anchor_ms(period_end_ms))
        grant(client, "ro", "g100", "100", paid="80", starts_at_ms=now_ms() - 1000, rollover_fraction="0.5")
        assert client.ingest_batch([work("d40", "ro", 40, now_ms())]).accepted == 1
        for reservation_id, units in (("r1", 20), ("r2", 6)):
            assert client.authorize(
                "ro", "work", values={"n": units}, reserve=True, reservation_id=reservation_id, reservation_ttl_s=600
            ).allowed
        assert totals(client, "ro") == ("60", "26", "34")
        rolled = f"rollover-g100-{period_end_ms}"
        assert wait_for(lambda: rolled in grants_of(client, "ro"), 15)
        assert totals(client, "ro") == ("30", "13", "17")
        grants = grants_of(client, "ro")
        assert grants[rolled] == ("0", "30", "13", "0", "0")
        assert grants["g100"][1:] == ("0", "0", "30", "32")  # nothing left, 30 broke, 40 x 0.8 recognised
        # r2 settles on the ROLLOVER grant: its 3 come back there and 1 is drawn (at 0.8); r1 gives back its 10.
        assert client.ingest_batch([work("feb", "ro", 1, now_ms(), reservation_id="r2")]).accepted == 1
        assert grants_of(client, "ro")[rolled] == ("1", "29", "10", "0", "0.8")
        assert release(client, "ro", "r1") == "10"
        assert totals(client, "ro") == ("29", "0", "29")
        assert grants_of(client, "ro")["g100"][1:] == ("0", "0", "30", "32")
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(CARD_FROM_MS), period_end=stamp(now_ms() + 40 * DAY_MS), customer_id="ro"
            )
        )
        r = report.reconciliation
        # Sold 80; recognised 32 + 0.8; broke 30 x 0.8 = 24; deferred: the ROLLOVER grant's 29 x 0.8 = 23.2.
        assert (r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end) == ("80", "32.8", "24", "23.2")


def test_top_ups_buy_back_to_recharge_to_at_most_max_per_period_and_are_invoiced(
    server_factory: ServerFactory,
) -> None:
    """README "Automatic top-up": below threshold after a rated event (or a hold), one TOP_UP grant of recharge_to -
    available, id top-up-<period start ms>-<n>, burning after every other grant, at most max_per_period a period;
    paid credits x price, due on the invoice of the period (rounded once to cents)."""
    server = server_factory()
    period_start_ms = month_start_ms()
    with server.client() as client:
        catalogue(client)
        contract_id = customer(client, "tu", starting_at_ms=period_start_ms)
        grant(client, "tu", "g", "10", paid="5")
        policy = contracts_pb2.TopUpPolicy(threshold="4", recharge_to="20", price_per_credit="0.37", max_per_period=2)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        first, second = f"top-up-{period_start_ms}-1", f"top-up-{period_start_ms}-2"
        # 3 + 3 leave 4 (not below 4): no top-up; 3 more leave 1: one of 20 - 1 = 19.
        for i in range(3):
            assert client.ingest_batch([work(f"t{i}", "tu", 3, now_ms())]).accepted == 1
            assert (first in grants_of(client, "tu")) == (i == 2)
        assert totals(client, "tu") == ("20", "0", "20")
        # A hold of 14: "g"'s 1 first (a top-up burns last), then 13 of the top-up; 6 left, not below 4.
        hold = client.authorize("tu", "work", values={"n": 14}, reserve=True, reservation_id="big")
        assert (hold.allowed, hold.credits_available) == (True, "6")
        assert grants_of(client, "tu") == {"g": ("9", "1", "1", "0", "4.5"), first: ("0", "19", "13", "0", "0")}
        # 30 units: the 6 available, 24 overage; then 0 < 4 buys the period's second and last top-up: 20.
        assert client.ingest_batch([work("t9", "tu", 30, now_ms())]).accepted == 1
        grants = grants_of(client, "tu")
        assert (grants[first], grants[second]) == (("6", "13", "13", "0", "2.22"), ("0", "20", "0", "0", "0"))
        # The cap is reached: 20 more units drain the second top-up and buy nothing.
        assert client.ingest_batch([work("t10", "tu", 20, now_ms())]).accepted == 1
        assert sorted(grants_of(client, "tu")) == sorted(["g", first, second])
        assert totals(client, "tu") == ("14", "14", "0")
        invoice = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="tu"))
        assert invoice.top_up_purchases == "14.43"  # (19 + 20) x 0.37


def test_settling_notices_releases_and_burn_order(server_factory: ServerFactory) -> None:
    """README "Settling" and "Releasing", and the burn order of docs/architecture.md §3: priority, then earliest
    expiry, then the narrowest product list, then creation order."""
    server = server_factory()
    with server.client() as client:
        catalogue(client)
        customer(client, "h")
        grant(client, "h", "g", "10")
        assert (
            client.authorize("h", "work", values={"n": 4}, reserve=True, reservation_id="r1").credits_available == "6"
        )
        # Settled by an event costing 3: the 4 come back, 3 are drawn.
        assert client.ingest_batch([work("s1", "h", 3, now_ms(), reservation_id="r1")]).accepted == 1
        assert totals(client, "h") == ("7", "0", "7")
        assert client.authorize("h", "work", values={"n": 2}, reserve=True, reservation_id="r2").allowed
        assert release(client, "h", "r2") == "2"
        assert release(client, "h", "r2") == "2"  # again: the same amount, nothing changed
        assert totals(client, "h") == ("7", "0", "7")
        ack = client.ingest_batch(
            [
                work("s2", "h", 1, now_ms(), reservation_id="r1"),
                work("s3", "h", 1, now_ms(), reservation_id="r2"),
                work("s4", "h", 1, now_ms(), reservation_id="r9"),
            ]
        )
        assert ack.accepted == 3
        assert [(n.index, n.reservation_id, n.reason) for n in ack.notices] == [
            (0, "r1", usage_pb2.NOTICE_RESERVATION_ALREADY_SETTLED),
            (1, "r2", usage_pb2.NOTICE_RESERVATION_RELEASED),
            (2, "r9", usage_pb2.NOTICE_RESERVATION_UNKNOWN),
        ]
        assert totals(client, "h") == ("4", "0", "4")  # all three rated
        assert refusal(lambda: release(client, "h", "r1"))[0] == grpc.StatusCode.FAILED_PRECONDITION
        assert refusal(lambda: release(client, "h", "r9")) == (
            grpc.StatusCode.NOT_FOUND,
            "customer 'h' has no reservation 'r9'",
        )

        customer(client, "bo")
        far_ms = now_ms() + 400 * DAY_MS
        grant(client, "bo", "a-all", "1")
        grant(client, "bo", "b-expiring", "1", expires_at_ms=far_ms)
        grant(client, "bo", "c-narrow", "1", products=("units",))
        grant(client, "bo", "d-later", "1")
        grant(client, "bo", "e-first", "1", priority=-1, products=("units", "extra"))
        order = ["e-first", "b-expiring", "c-narrow", "a-all", "d-later"]
        for i, grant_id in enumerate(order):
            assert client.ingest_batch([work(f"bo{i}", "bo", 1, now_ms())]).accepted == 1
            drawn = {g: row[0] for g, row in grants_of(client, "bo").items()}
            assert drawn == {g: ("1" if g in order[: i + 1] else "0") for g in order}, grant_id
