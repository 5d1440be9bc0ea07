"""An audit of the burn order at exact ties, over the wire (docs/architecture.md §3: "by priority (lower first),
then earliest expiry, then the narrowest product list, then creation order", with the grants the server makes
itself after every grant made through GrantCredits; README "Top-ups": a bought top-up burns "after every other
grant"), and of the revenue of a rolled-over grant period by period. Each test ties grants on every key but one
and checks that the one key decides, the same way for ingestion, holds (Authorize with reserve) and GetBalance's
listing (`tariff grants`: "the customer's grants in burn order"); grant ids are spelled against the order, so an
order by id would show. Every amount is computed by hand in the docstrings.

Products: `units` (event type `work`, SUM of `n`) and `extra` (event type `other`) at 1 credit a unit, rate card
in force from 2025. One server for the file (`--close-grace off`), each test on customers of its own."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import release, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits_wire import period_anchor_ms

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CARD_FROM_MS = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)


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


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-burnorder")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


@pytest.fixture(autouse=True)
def month_under_way() -> None:
    """Usage is dated an hour back and contracts and versions start at this month's 1st."""
    now = datetime.now(UTC)
    if now < datetime(now.year, now.month, 1, 2, tzinfo=UTC):
        pytest.skip("this month started under two hours ago: no room for usage dated in it an hour back")


def month_start_ms(months_from_now: int) -> int:
    """00:00 UTC on the 1st of the month `months_from_now` months from this one."""
    now = datetime.now(UTC)
    index = now.year * 12 + now.month - 1 + months_from_now
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp() * 1000)


def customer(client: TariffClient, customer_id: str, start_ms: int, rate_card_id: str = "card") -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract = contracts_pb2.CreateContractRequest(
        id=f"k-{customer_id}",
        customer_id=customer_id,
        rate_card_id=rate_card_id,
        starting_at=stamp(start_ms),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    client.contracts.CreateContract(contract)


def grant(
    client: TariffClient,
    customer_id: str,
    name: str,
    amount: str,
    *,
    kind: contracts_pb2.GrantKind = contracts_pb2.PROMOTIONAL,
    paid: str = "0",
    priority: int = 0,
    products: tuple[str, ...] = (),
    starts_at_ms: int | None = None,
    expires_at_ms: int | None = None,
    rollover_fraction: str = "",
) -> None:
    """Grant `<customer>.<name>` (ids are server-wide)."""
    made = contracts_pb2.Grant(
        id=f"{customer_id}.{name}",
        contract_id=f"k-{customer_id}",
        kind=kind,
        amount=amount,
        paid_amount=paid,
        priority=priority,
        applicable_product_ids=list(products),
        rollover_fraction=rollover_fraction,
    )
    if starts_at_ms is not None:
        made.starts_at.CopyFrom(stamp(starts_at_ms))
    if expires_at_ms is not None:
        made.expires_at.CopyFrom(stamp(expires_at_ms))
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def use(client: TariffClient, customer_id: str, transaction_id: str, units: str, event_type: str = "work") -> None:
    event = usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=now_ms() - HOUR_MS,
        values={"n": float(units)},
    )
    assert client.ingest_batch([event]).accepted == 1


def hold(client: TariffClient, customer_id: str, units: str, reservation_id: str) -> balance_pb2.AuthorizeResponse:
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id,
        event_type="work",
        values={"n": float(units)},
        reserve=True,
        reservation_id=reservation_id,
    )
    answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(request)
    assert answer.allowed, answer
    return answer


def listed(client: TariffClient, customer_id: str) -> list[tuple[str, str, str, str]]:
    """GetBalance's grants as listed (in burn order): (name, drawn, remaining, held)."""
    return [
        (g.grant_id.removeprefix(f"{customer_id}."), g.drawn, g.remaining, g.held)
        for g in client.get_balance(customer_id).grants
    ]


def test_at_a_tie_on_every_other_key_creation_order_decides_whatever_the_kind_or_the_id(
    server: ServerProcess,
) -> None:
    """Four grants of 1 credit, priority 0, no expiry, every product, granted in this order: `z` PROMOTIONAL,
    `a` PREPAID (paid 1), `m` ROLLOVER (by hand, paid 1), `b` TOP_UP (by hand, paid 1). Only creation order
    tells them apart: z, a, m, b (not the ids' order a, b, m, z, nor one by kind). Authorize of 2.5 with reserve:
    credits_available 4 before, so OK, holding z 1, a 1, m 0.5. Released; then 2.5 ingested draw the same: z 1,
    a 1, m 0.5 (0.5 left), b untouched; a hold of 1 then takes m 0.5 and b 0.5."""
    with server.client() as client:
        customer(client, "kinds", month_start_ms(0))
        grant(client, "kinds", "z", "1")
        grant(client, "kinds", "a", "1", kind=contracts_pb2.PREPAID, paid="1")
        grant(client, "kinds", "m", "1", kind=contracts_pb2.ROLLOVER, paid="1")
        grant(client, "kinds", "b", "1", kind=contracts_pb2.TOP_UP, paid="1")
        answer = hold(client, "kinds", "2.5", "h1")
        assert (answer.reason, answer.credits_available) == ("OK", "1.5")
        assert listed(client, "kinds") == [
            ("z", "0", "1", "1"),
            ("a", "0", "1", "1"),
            ("m", "0", "1", "0.5"),
            ("b", "0", "1", "0"),
        ]
        assert release(client, "kinds", "h1") == "2.5"
        use(client, "kinds", "k1", "2.5")
        assert listed(client, "kinds") == [
            ("z", "1", "0", "0"),
            ("a", "1", "0", "0"),
            ("m", "0.5", "0.5", "0"),
            ("b", "0", "1", "0"),
        ]
        hold(client, "kinds", "1", "h2")
        assert [row[3] for row in listed(client, "kinds")] == ["0", "0", "0.5", "0.5"]


def publish(client: TariffClient, rate_card_id: str, version: int, price: str, effective_from_ms: int) -> None:
    rates = [pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price=price))]
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=rate_card_id, upsert_rates=rates)
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id=rate_card_id, version=version, effective_from=stamp(effective_from_ms)
        )
    )


def test_re_rating_gives_back_and_draws_tied_grants_in_creation_order_not_by_id(server: ServerProcess) -> None:
    """Card `rr-card`: `units` at 1 credit from 2025. Grants `z` then `a`, 1 credit each, priority 0, no expiry,
    every product: z burns first. 1.5 units draw z 1, a 0.5. Version 2 at 0.5 from this month's start re-rates the
    bucket to 0.75: the 0.75 given back goes in reverse burn order, a 0.5 then z 0.25 (z drawn 0.75, a 0).
    Version 3 at 2 from then: 3 credits, 2.25 more drawn in burn order: z 0.25, a 1, 1 of overage."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="rr-card", pricing_unit="credits"))
        publish(client, "rr-card", 1, "1", CARD_FROM_MS)
        customer(client, "rr", month_start_ms(0), rate_card_id="rr-card")
        grant(client, "rr", "z", "1")
        grant(client, "rr", "a", "1")
        use(client, "rr", "k1", "1.5")
        assert [row[:2] for row in listed(client, "rr")] == [("z", "1"), ("a", "0.5")]
        publish(client, "rr-card", 2, "0.5", month_start_ms(0))
        assert [row[:2] for row in listed(client, "rr")] == [("z", "0.75"), ("a", "0")]
        publish(client, "rr-card", 3, "2", month_start_ms(0))
        assert [row[:2] for row in listed(client, "rr")] == [("z", "1"), ("a", "1")]
        assert client.get_balance("rr").overage_amount == "1"


def test_an_expiry_burns_before_none_and_a_product_list_before_every_product_at_a_tie(server: ServerProcess) -> None:
    """Priority 0, 1 credit each, granted in this order: `a` every product, no expiry; `b` units only, no
    expiry; `c` every product, expiring in 400 days; `d` units and extra, expiring then too; `e` units only,
    expiring then too. Burn order for `units`: the expiring ones first, narrowest first (e: 1 product, d: 2, c:
    every one), then the never-expiring ones (b: 1 product, a: every one): e, d, c, b, a. A hold of 3.5 takes
    e 1, d 1, c 1, b 0.5; released, 3.5 ingested draw the same; then 0.5 of `extra` may draw d and c (spent)
    and a, not b (units only): a 0.5, no overage."""
    far_ms = now_ms() + 400 * DAY_MS
    with server.client() as client:
        customer(client, "keys", month_start_ms(0))
        grant(client, "keys", "a", "1")
        grant(client, "keys", "b", "1", products=("units",))
        grant(client, "keys", "c", "1", expires_at_ms=far_ms)
        grant(client, "keys", "d", "1", products=("units", "extra"), expires_at_ms=far_ms)
        grant(client, "keys", "e", "1", products=("units",), expires_at_ms=far_ms)
        assert [row[0] for row in listed(client, "keys")] == ["e", "d", "c", "b", "a"]
        hold(client, "keys", "3.5", "h1")
        assert [row[3] for row in listed(client, "keys")] == ["1", "1", "1", "0.5", "0"]
        assert release(client, "keys", "h1") == "3.5"
        use(client, "keys", "k1", "3.5")
        assert [row[1] for row in listed(client, "keys")] == ["1", "1", "1", "0.5", "0"]
        use(client, "keys", "k2", "0.5", event_type="other")
        assert [row[1] for row in listed(client, "keys")] == ["1", "1", "1", "0.5", "0.5"]
        assert client.get_balance("keys").overage_amount == "0"


def test_a_rollover_grant_the_clock_made_burns_after_a_tied_grant_made_later_through_grant_credits(
    server: ServerProcess,
) -> None:
    """Contract from P0 = last month's 1st; P1 = this month's 1st (past), P2 = next month's. Grant R: 10 credits
    paid 10, fraction 0.5, priority 5, from P0. The clock rolls it over at P1 at once: 5 into rollover-R-<P1>
    (priority 5, every product, expiring at P2), 5 break. Then, granted through GrantCredits after that rollover:
    `c` 5 credits paid 5, priority 5, every product, from P1, expiring at P2: tied with the ROLLOVER grant on
    priority, expiry and products. The server's own grants come after every grant made through GrantCredits
    (docs/architecture.md §3), so `c` burns first though made later: 2 credits of usage an hour ago draw c 2,
    the ROLLOVER grant nothing; a hold of 4 then takes c 3 and the ROLLOVER grant 1."""
    p0_ms, p1_ms, p2_ms = month_start_ms(-1), month_start_ms(0), month_start_ms(1)
    rolled = f"rollover-ro.R-{p1_ms}"
    with server.client() as client:
        customer(client, "ro", p0_ms)
        grant(client, "ro", "R", "10", kind=contracts_pb2.PREPAID, paid="10", priority=5, rollover_fraction="0.5")
        assert wait_for(lambda: any(g.grant_id == rolled for g in client.get_balance("ro").grants), 15)
        grant(
            client,
            "ro",
            "c",
            "5",
            kind=contracts_pb2.PREPAID,
            paid="5",
            priority=5,
            starts_at_ms=p1_ms,
            expires_at_ms=p2_ms,
        )
        use(client, "ro", "k1", "2")
        usable = [row for row in listed(client, "ro") if row[0] != "R"]
        assert usable == [("c", "2", "3", "0"), (rolled, "0", "5", "0")]
        hold(client, "ro", "4", "h1")
        assert [row[3] for row in listed(client, "ro") if row[0] != "R"] == ["3", "1"]


def test_a_bought_top_up_burns_after_a_never_expiring_grant_of_the_highest_priority_made_after_it(
    server: ServerProcess,
) -> None:
    """Top-up policy: below 1 credit, recharge to 3 at 0.5 USD a credit. Grant `g` of 1 credit; 0.5 of usage
    leaves 0.5 < 1: a top-up of 2.5 credits (priority 2147483647, every product, no expiry). Then grant `late`:
    1 credit, priority 2147483647 (int32's max), every product, no expiry, made after the top-up: tied on every
    key but creation, yet the top-up burns "after every other grant" (README "Top-ups"): 1 credit of usage draws
    g 0.5 and late 0.5, the top-up nothing. Then 1.5 more draw late 0.5 and the top-up 1. Revenue of the month
    (README: recognised as drawn at the price paid per credit, 2.5 x 0.5 = 1.25 USD paid): recognised 1 x 0.5 =
    0.5, no breakage, deferred 1.5 x 0.5 = 0.75."""
    with server.client() as client:
        customer(client, "tu", month_start_ms(0))
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="3", price_per_credit="0.5", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="k-tu", top_up=policy))
        grant(client, "tu", "g", "1")
        use(client, "tu", "k1", "0.5")
        top_up = f"top-up-{month_start_ms(0)}-1"
        assert listed(client, "tu") == [("g", "0.5", "0.5", "0"), (top_up, "0", "2.5", "0")]
        grant(client, "tu", "late", "1", priority=2147483647)
        use(client, "tu", "k2", "1")
        assert listed(client, "tu") == [("g", "1", "0", "0"), ("late", "0.5", "0.5", "0"), (top_up, "0", "2.5", "0")]
        use(client, "tu", "k3", "1.5")
        assert listed(client, "tu")[1:] == [("late", "1", "0", "0"), (top_up, "1", "1.5", "0")]
        assert revenue_lines(client, "tu", month_start_ms(0), month_start_ms(1)) == [("0.5", "0", "0.75")]


def revenue_lines(client: TariffClient, customer_id: str, start_ms: int, end_ms: int) -> list[tuple[str, ...]]:
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(
            period_start=stamp(start_ms), period_end=stamp(end_ms), customer_id=customer_id
        )
    )
    return [(x.recognized_credits, x.breakage, x.deferred) for x in report.customer_lines]


def test_a_rolled_grant_breaks_in_the_period_that_ended_and_its_credit_is_recognised_at_the_origins_price(
    server: ServerProcess,
) -> None:
    """Monthly contract with a period ending at E, a few seconds from now. Grant R: 100 credits paid 90 USD
    (0.9 a credit), fraction 0.5, usable from a second ago. 40 drawn before E; at E 60 remain: 30 roll into
    rollover-rv.R-<E> (paid 30 x 90 / 100 = 27, the same cost basis), 30 break (README: "the breakage is all in
    the period that ended"). Then 30 of usage after E draw the ROLLOVER grant whole. Revenue: the period ending at
    E recognises 40 x 0.9 = 36, breaks 30 x 0.9 = 27 and defers 90 - 36 - 27 = 27; the next recognises 30 x 0.9 =
    27, breaks nothing and defers 0 (a fully drawn grant has recognised exactly what was paid)."""
    end_ms = (now_ms() // 1000 + 5) * 1000
    start_ms = period_anchor_ms(end_ms)
    with server.client() as client:
        customer(client, "rv", start_ms)
        grant(
            client,
            "rv",
            "R",
            "100",
            kind=contracts_pb2.PREPAID,
            paid="90",
            starts_at_ms=now_ms() - 1000,
            rollover_fraction="0.5",
        )
        event = usage_pb2.UsageEvent(
            transaction_id="before", customer_id="rv", event_type="work", timestamp_ms=now_ms(), values={"n": 40}
        )
        if event.timestamp_ms >= end_ms - 1000:
            pytest.skip("the machine was too slow to draw before the period's end")
        assert client.ingest_batch([event]).accepted == 1
        rolled = f"rollover-rv.R-{end_ms}"
        assert wait_for(lambda: any(g.grant_id == rolled for g in client.get_balance("rv").grants), 15)
        after = usage_pb2.UsageEvent(
            transaction_id="after", customer_id="rv", event_type="work", timestamp_ms=now_ms(), values={"n": 30}
        )
        assert client.ingest_batch([after]).accepted == 1
        grants = {
            g.grant_id: (g.drawn, g.remaining, g.expired, g.recognized_revenue) for g in client.get_balance("rv").grants
        }
        assert grants == {"rv.R": ("70", "0", "30", "36"), rolled: ("30", "0", "0", "27")}
        next_end_ms = end_ms + DAY_MS
        assert revenue_lines(client, "rv", start_ms, next_end_ms) == [("36", "27", "27"), ("27", "0", "0")]


def test_after_a_kill_9_the_tied_grants_burn_in_the_same_order(server: ServerProcess) -> None:
    """Last in the file (it restarts the server). As the rollover test, on customer `rs`: R (10 credits, fraction
    0.5, priority 5) rolls 5 into rollover-rs.R-<P1>; then `z` and `a` (1 credit each, priority 5, from P1,
    expiring at P2, every product) are granted in that order. Burn order: z, a (creation order, not id), then the
    ROLLOVER grant (made by the server). The journal replayed after a kill -9 rebuilds that order: 2.5 credits of
    usage then draw z 1, a 1 and the ROLLOVER grant 0.5."""
    p0_ms, p1_ms, p2_ms = month_start_ms(-1), month_start_ms(0), month_start_ms(1)
    rolled = f"rollover-rs.R-{p1_ms}"
    with server.client() as client:
        customer(client, "rs", p0_ms)
        grant(client, "rs", "R", "10", kind=contracts_pb2.PREPAID, paid="10", priority=5, rollover_fraction="0.5")
        assert wait_for(lambda: any(g.grant_id == rolled for g in client.get_balance("rs").grants), 15)
        for name in ("z", "a"):
            grant(client, "rs", name, "1", priority=5, starts_at_ms=p1_ms, expires_at_ms=p2_ms)
        before = listed(client, "rs")
    server.kill9()
    server.restart()
    with server.client() as client:
        assert listed(client, "rs") == before
        use(client, "rs", "k1", "2.5")
        usable = [row[:3] for row in listed(client, "rs") if row[0] != "R"]
        assert usable == [("z", "1", "0"), ("a", "1", "0"), (rolled, "0.5", "4.5")]
