"""Audit: an Authorize estimate is priced exactly as ingesting the same event prices it (balance.proto Authorize:
"Prices the described event exactly as ingestion would at the server's current time"; README "What the server does
today", Balances; docs/architecture.md §5 "Authorize runs steps 3, 5 and 6 on a probe event"), over the wire, on the
three forms (Authorize, AuthorizeStream, AuthorizeBatches), with and without reserve, at the edges of each price
model with usage already in the period, under overrides, on multi-product events and gauges that fall, with grants
restricted, expired or not yet started, with open holds, BLOCK boundaries and top-ups. Every amount is worked out by
hand from pricing.proto (Tier, TierMode, UnitPrice, PackagePrice, FlatPrice, Rate) and contracts.proto
(PriceOverride, TopUpPolicy). After each estimate the same event is ingested and the balance must move by exactly
the estimate: period_charges by estimated_cost, and credits plus overage by it together.

Card `est` (credits, version 1 from 60 days ago), every product of its own event type but `ma`/`mb` and `lv`/`ls`:
- `gr` (SUM n) GRADUATED: up to 10 at 1, up to 20 at 0.5, beyond at 0.25 (no flat fees);
- `vo` (SUM n) VOLUME: up to 10 at 1, up to 20 at 0.5 plus 3 on reaching it, beyond at 0.25;
- `pk` (SUM n) PACKAGE: packages of 10 at 3;  `fl` (SUM n) FLAT 7;
- `un` (SUM n) UNIT 1 per 3 units (each side of a charge rounded to 10^-12);
- `ma` (SUM a) at 1 and `mb` (COUNT) at 0.25, both of event type `m`;
- `lv` (LATEST level) at 1 and `ls` (SUM n) at 1, both of event type `gauge`;
- `uq` (UNIQUE_COUNT of dimension `user`) at 1 and `mx` (MAX n) at 1; `nr` (SUM n) has no rate.
Contracts from this month's start, overage at 1 USD."""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, serving
from tests.serverproc import ServerProcess
from tests.test_audit_credits2_wire import CARD_FROM_MS
from tests.test_audit_topups_wire import month_start_ms

STREAM_TIMEOUT_S = 20.0
DAY_MS = 24 * HOUR_MS
# (allowed, reason, estimated_cost, credits_available)
Answer = tuple[bool, str, str, str]


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing

    def product(product_id: str, event_type: str, aggregation: int, value_key: str = "n") -> None:
        made = pricing_pb2.Product(
            id=product_id,
            event_type=event_type,
            aggregation=aggregation,  # type: ignore[arg-type]
            value_key=value_key,
        )
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=made))

    for product_id in ("gr", "vo", "pk", "fl", "un"):
        product(product_id, product_id, pricing_pb2.SUM)
    product("ma", "m", pricing_pb2.SUM, "a")
    product("mb", "m", pricing_pb2.COUNT, "")
    product("lv", "gauge", pricing_pb2.LATEST, "level")
    product("ls", "gauge", pricing_pb2.SUM)
    product("uq", "uq", pricing_pb2.UNIQUE_COUNT, "user")
    product("mx", "mx", pricing_pb2.MAX)
    product("nr", "nr", pricing_pb2.SUM)
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="est", pricing_unit="credits"))
    graduated = [
        pricing_pb2.Tier(up_to="10", unit_price="1"),
        pricing_pb2.Tier(up_to="20", unit_price="0.5"),
        pricing_pb2.Tier(unit_price="0.25"),
    ]
    volume = [
        pricing_pb2.Tier(up_to="10", unit_price="1"),
        pricing_pb2.Tier(up_to="20", unit_price="0.5", flat_price="3"),
        pricing_pb2.Tier(unit_price="0.25"),
    ]

    def unit(product_id: str, price: str, per_units: str = "") -> pricing_pb2.Rate:
        return pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=price, per_units=per_units))

    rates = [
        pricing_pb2.Rate(product_id="gr", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=graduated)),
        pricing_pb2.Rate(product_id="vo", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME, tiers=volume)),
        pricing_pb2.Rate(product_id="pk", package=pricing_pb2.PackagePrice(package_size="10", package_price="3")),
        pricing_pb2.Rate(product_id="fl", flat=pricing_pb2.FlatPrice(price="7")),
        unit("un", "1", "3"),
        unit("ma", "1"),
        unit("mb", "0.25"),
        unit("lv", "1"),
        unit("ls", "1"),
        unit("uq", "1"),
        unit("mx", "1"),
    ]
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="est", upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="est", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-estimates")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def customer(client: TariffClient, customer_id: str, *, block: bool) -> str:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract_id = f"{customer_id}-c"
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=contract_id,
            customer_id=customer_id,
            rate_card_id="est",
            starting_at=stamp(month_start_ms()),
            overage_policy=contracts_pb2.BLOCK if block else contracts_pb2.ALLOW,
            overage_price="1",
            currency="USD",
        )
    )
    return contract_id


def grant(
    client: TariffClient,
    customer_id: str,
    name: str,
    amount: str,
    *,
    products: tuple[str, ...] = (),
    starts_at_ms: int | None = None,
    expires_at_ms: int | None = None,
) -> None:
    made = contracts_pb2.Grant(
        id=f"{customer_id}.{name}",
        contract_id=f"{customer_id}-c",
        kind=contracts_pb2.PROMOTIONAL,
        amount=amount,
        paid_amount="0",
        applicable_product_ids=list(products),
    )
    if starts_at_ms is not None:
        made.starts_at.CopyFrom(stamp(starts_at_ms))
    if expires_at_ms is not None:
        made.expires_at.CopyFrom(stamp(expires_at_ms))
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def ask(
    customer_id: str,
    event_type: str,
    values: Mapping[str, float],
    *,
    request_id: str = "q",
    **fields: object,
) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id,
        customer_id=customer_id,
        event_type=event_type,
        values=values,
        **fields,  # type: ignore[arg-type]
    )


def answer_of(answer: balance_pb2.AuthorizeResponse) -> Answer:
    return (answer.allowed, answer.reason, answer.estimated_cost, answer.credits_available)


def forms(client: TariffClient, request: balance_pb2.AuthorizeRequest) -> Answer:
    """The answer of the three forms to a request without a hold, which must be the same (messages and reservation
    ids included): AuthorizeBatches answers each of two copies in one message as if alone."""

    def whole(answer: balance_pb2.AuthorizeResponse) -> tuple[object, ...]:
        return (*answer_of(answer), answer.message, answer.reservation_id)

    first = client.balance.Authorize(request)
    unary = whole(first)
    streamed = [whole(a) for a in client.balance.AuthorizeStream(iter([request]), timeout=STREAM_TIMEOUT_S)]
    message = balance_pb2.AuthorizeBatch(requests=[request, request])
    results = list(client.balance.AuthorizeBatches(iter([message]), timeout=STREAM_TIMEOUT_S))
    batched = [whole(a) for a in results[0].responses]
    assert streamed == [unary] and batched == [unary, unary], (streamed, batched, unary)
    return answer_of(first)


def batch(client: TariffClient, *requests: balance_pb2.AuthorizeRequest) -> list[Answer]:
    message = balance_pb2.AuthorizeBatch(requests=list(requests))
    results = list(client.balance.AuthorizeBatches(iter([message]), timeout=STREAM_TIMEOUT_S))
    assert len(results) == 1
    return [answer_of(a) for a in results[0].responses]


def plain(amount: Decimal) -> str:
    """An amount as the server writes it: no exponent, no trailing zeros."""
    return format(amount.normalize(), "f") if amount else "0"


_sent = [0]


def ingest(client: TariffClient, customer_id: str, event_type: str, values: Mapping[str, float]) -> tuple[str, ...]:
    """Ingests the event; answers how the balance moved: (period_charges, credits_available, overage_amount)."""
    before = client.get_balance(customer_id)
    _sent[0] += 1
    event = usage_pb2.UsageEvent(
        transaction_id=f"t{_sent[0]}",
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=now_ms(),
        values=values,
    )
    ack = client.ingest_batch([event])
    assert ack.accepted == 1, ack
    after = client.get_balance(customer_id)
    moved = (
        Decimal(after.period_charges) - Decimal(before.period_charges),
        Decimal(after.credits_available) - Decimal(before.credits_available),
        Decimal(after.overage_amount) - Decimal(before.overage_amount),
    )
    return tuple(plain(m) for m in moved)


def estimate_then_ingest(
    client: TariffClient, customer_id: str, event_type: str, values: Mapping[str, float], want: Answer
) -> tuple[str, ...]:
    """Asserts the three forms answer `want`, ingests the event, and answers how the balance moved. The
    period's charges must have moved by exactly the estimate."""
    assert forms(client, ask(customer_id, event_type, values)) == want, (customer_id, event_type, values)
    moved = ingest(client, customer_id, event_type, values)
    assert Decimal(moved[0]) == Decimal(want[2]), (moved, want)
    return moved


def test_graduated_estimates_cross_tiers_from_the_periods_usage(server: ServerProcess) -> None:
    """GRADUATED (each tier prices the quantity in it): 8 units cost 8; 5 more take the line 8 -> 13: price(13) =
    10 + 3 x 0.5 = 11.5, so 3.5; 10 more take it to 23: 10 + 5 + 3 x 0.25 = 15.75, so 4.25. Grant 100 (ALLOW)."""
    with server.client() as client:
        customer(client, "gr1", block=False)
        grant(client, "gr1", "g", "100")
        assert estimate_then_ingest(client, "gr1", "gr", {"n": 8}, (True, "OK", "8", "100")) == ("8", "-8", "0")
        assert estimate_then_ingest(client, "gr1", "gr", {"n": 5}, (True, "OK", "3.5", "92")) == ("3.5", "-3.5", "0")
        want = (True, "OK", "4.25", "88.5")
        assert estimate_then_ingest(client, "gr1", "gr", {"n": 10}, want) == ("4.25", "-4.25", "0")


def test_volume_estimates_reprice_the_periods_earlier_usage(server: ServerProcess) -> None:
    """VOLUME (the tier the whole quantity reaches prices all of it, plus its flat fee): 8 units cost 8; 5 more
    reach tier 2: 13 x 0.5 + 3 = 9.5, so 1.5; 10 more reach tier 3: 23 x 0.25 = 5.75, so -3.75: the earlier usage
    is repriced and the estimate is that refund, which ingesting gives back to the grant. Under BLOCK with
    credit available the refund is allowed (nothing positive is uncovered)."""
    for block in (False, True):
        customer_id = f"vo{int(block)}"
        with server.client() as client:
            customer(client, customer_id, block=block)
            grant(client, customer_id, "g", "100")
            assert estimate_then_ingest(client, customer_id, "vo", {"n": 8}, (True, "OK", "8", "100"))[0] == "8"
            moved = estimate_then_ingest(client, customer_id, "vo", {"n": 5}, (True, "OK", "1.5", "92"))
            assert moved == ("1.5", "-1.5", "0")
            moved = estimate_then_ingest(client, customer_id, "vo", {"n": 10}, (True, "OK", "-3.75", "90.5"))
            assert moved == ("-3.75", "3.75", "0")
            assert client.get_balance(customer_id).credits_available == "94.25"


def test_package_estimates_round_partial_packages_up_from_the_periods_usage(server: ServerProcess) -> None:
    """PACKAGE (every started package of 10 at 3): 4 units start one package, 3; 7 more take the line to 11, two
    packages: 3 more; 5 more (16) start none: 0; 4 more (20) none: 0; 1 more (21) a third: 3."""
    with server.client() as client:
        customer(client, "pk1", block=False)
        grant(client, "pk1", "g", "100")
        available = Decimal(100)
        for units, cost in ((4, "3"), (7, "3"), (5, "0"), (4, "0"), (1, "3")):
            want = (True, "OK", cost, plain(available))
            assert estimate_then_ingest(client, "pk1", "pk", {"n": units}, want)[1] == (
                "0" if cost == "0" else f"-{cost}"
            )
            available -= Decimal(cost)


def test_flat_is_estimated_once_a_period(server: ServerProcess) -> None:
    """FLAT 7 "charged once per period per line whose quantity in the period is above zero (an event that adds 0 to
    it charges nothing)": an event of 0 units is estimated 0 and charges 0; the first of 1 unit 7; the next 0.
    Under BLOCK with a grant of exactly 7: the first is allowed (available == cost), then no credit is left, and
    usage costing nothing is denied "while no credit is available to the usage's products at all" (README)."""
    with server.client() as client:
        for block in (False, True):
            customer_id = f"fl{int(block)}"
            customer(client, customer_id, block=block)
            grant(client, customer_id, "g", "7")
            assert estimate_then_ingest(client, customer_id, "fl", {"n": 0}, (True, "OK", "0", "7")) == ("0",) * 3
            assert estimate_then_ingest(client, customer_id, "fl", {"n": 1}, (True, "OK", "7", "7")) == (
                "7",
                "-7",
                "0",
            )
            second = (False, "INSUFFICIENT_CREDIT", "0", "0") if block else (True, "OK", "0", "0")
            assert estimate_then_ingest(client, customer_id, "fl", {"n": 5}, second) == ("0",) * 3


def test_unit_per_units_estimates_round_each_side_as_ingestion_does(server: ServerProcess) -> None:
    """UNIT 1 per 3 units: price(q) = q / 3 rounded half-even to 10^-12 on each side of a charge. 1 unit:
    0.333333333333; 1 more: 0.666666666667 - 0.333333333333 = 0.333333333334; 1 more: 1 - 0.666666666667 =
    0.333333333333. Under BLOCK a grant of exactly 0.333333333333 allows the first (available == cost) and a
    grant one pico short denies it."""
    with server.client() as client:
        customer(client, "un1", block=False)
        grant(client, "un1", "g", "1")
        left = Decimal(1)
        for cost in ("0.333333333333", "0.333333333334", "0.333333333333"):
            moved = estimate_then_ingest(client, "un1", "un", {"n": 1}, (True, "OK", cost, plain(left)))
            assert moved == (cost, f"-{cost}", "0")
            left -= Decimal(cost)
        assert client.get_balance("un1").credits_available == "0"
        customer(client, "un2", block=True)
        grant(client, "un2", "g", "0.333333333333")
        want = (True, "OK", "0.333333333333", "0.333333333333")
        assert estimate_then_ingest(client, "un2", "un", {"n": 1}, want) == ("0.333333333333", "-0.333333333333", "0")
        customer(client, "un3", block=True)
        grant(client, "un3", "g", "0.333333333332")
        want = (False, "INSUFFICIENT_CREDIT", "0.333333333333", "0.333333333332")
        # Ingested anyway (usage that happened is recorded): the pico beyond the grant is overage.
        moved = estimate_then_ingest(client, "un3", "un", {"n": 1}, want)
        assert moved == ("0.333333333333", "-0.333333333332", "0.000000000001")


def override(client: TariffClient, contract_id: str, product_id: str, **fields: object) -> None:
    made = contracts_pb2.PriceOverride(product_id=product_id, **fields)  # type: ignore[arg-type]
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=made))


def test_overrides_price_estimates_as_ingestion(server: ServerProcess) -> None:
    """contracts.proto PriceOverride: a multiplier multiplies the amount the card's price gives for the period's
    quantity, "rounded to 10^-12 once"; a price replaces the card's by price model. ALLOW, grant 100.
    - `gr` x 1.5: 8 units 12; 5 more 11.5 x 1.5 - 12 = 5.25.
    - `vo` at price 0.3 (TIERED: a flat unit price for the whole quantity): 13 units 3.9; 10 more 6.9 - 3.9 = 3.
    - `pk` at price 5 (a package's price, size 10 kept): 11 units, two packages, 10.
    - `fl` at price 2: 2, then 0.
    - `un` x 0.1 (1 per 3 units): 1 unit 1/30 = 0.033333333333; 1 more 0.066666666667 - 0.033333333333 =
      0.033333333334.
    - `ma` x 3 from the next hour and `mb` x 5 until this hour's start: neither in force now: `m` a=2 costs 2.25."""
    with server.client() as client:
        contract_id = customer(client, "ov1", block=False)
        grant(client, "ov1", "g", "100")
        hour_ms = now_ms() // HOUR_MS * HOUR_MS
        override(client, contract_id, "gr", multiplier="1.5")
        override(client, contract_id, "vo", price="0.3")
        override(client, contract_id, "pk", price="5")
        override(client, contract_id, "fl", price="2")
        override(client, contract_id, "un", multiplier="0.1")
        override(client, contract_id, "ma", multiplier="3", starting_at=stamp(hour_ms + HOUR_MS))
        override(
            client, contract_id, "mb", multiplier="5", starting_at=stamp(CARD_FROM_MS), ending_before=stamp(hour_ms)
        )
        left = Decimal(100)
        for event_type, values, cost in (
            ("gr", {"n": 8}, "12"),
            ("gr", {"n": 5}, "5.25"),
            ("vo", {"n": 13}, "3.9"),
            ("vo", {"n": 10}, "3"),
            ("pk", {"n": 11}, "10"),
            ("fl", {"n": 1}, "2"),
            ("fl", {"n": 1}, "0"),
            ("un", {"n": 1}, "0.033333333333"),
            ("un", {"n": 1}, "0.033333333334"),
            ("m", {"a": 2}, "2.25"),
        ):
            moved = estimate_then_ingest(client, "ov1", event_type, values, (True, "OK", cost, plain(left)))
            assert Decimal(moved[1]) == -Decimal(cost) and moved[2] == "0", (event_type, moved)
            left -= Decimal(cost)


def test_multi_product_estimates_with_grants_restricted_to_products(server: ServerProcess) -> None:
    """One `m` event a=2 feeds `ma` (2) and `mb` (0.25): 2.25. credits_available counts the grants applying to at
    least one product the usage feeds (balance.proto).
    - mp1 (BLOCK) and mp2 (ALLOW): grant 1 for `ma` only and 100 for `gr` only: available 1; `ma` draws 1 and
      1 is overage, `mb` 0.25 overage: BLOCK denies, ALLOW allows as overage; ingested, 1 drawn, 1.25 overage.
    - mp3 (BLOCK): 2 for `ma` only and 0.25 for `mb` only: available 2.25, covered exactly: OK.
    - mp4 (BLOCK): only 100 for `gr`: available "0" for this usage, denied.
    - An event type feeding no product costs 0 and is answered the whole available credit (101 for mp1)."""
    with server.client() as client:
        for customer_id, block in (("mp1", True), ("mp2", False)):
            customer(client, customer_id, block=block)
            grant(client, customer_id, "a", "1", products=("ma",))
            grant(client, customer_id, "r", "100", products=("gr",))
            assert forms(client, ask(customer_id, "nothing", {"a": 1})) == (True, "OK", "0", "101")
            want = (False, "INSUFFICIENT_CREDIT", "2.25", "1") if block else (True, "OVERAGE_ALLOWED", "2.25", "1")
            assert estimate_then_ingest(client, customer_id, "m", {"a": 2}, want) == ("2.25", "-1", "1.25")
        customer(client, "mp3", block=True)
        grant(client, "mp3", "a", "2", products=("ma",))
        grant(client, "mp3", "b", "0.25", products=("mb",))
        assert estimate_then_ingest(client, "mp3", "m", {"a": 2}, (True, "OK", "2.25", "2.25")) == (
            "2.25",
            "-2.25",
            "0",
        )
        customer(client, "mp4", block=True)
        grant(client, "mp4", "r", "100", products=("gr",))
        want = (False, "INSUFFICIENT_CREDIT", "2.25", "0")
        assert estimate_then_ingest(client, "mp4", "m", {"a": 2}, want) == ("2.25", "0", "2.25")


def test_a_falling_gauge_nets_against_the_events_other_charges(server: ServerProcess) -> None:
    """`gauge` feeds `lv` (LATEST level, 1 a unit) and `ls` (SUM n, 1). level 5 costs 5. Then level 2 with n=3:
    `lv` gives back 3, `ls` costs 3: 0, netted (§5 step 7): the charge takes back what the refund gave back.
    Then level 1 alone: -1.
    - ga1 (ALLOW, grant 100): 5, then 0 (credits unmoved), then -1 (1 back to the grant).
    - ga2 (BLOCK, grant 5): 5 allowed at available == cost; then the netted event: no credit is available to its
      products, so it is denied though it costs 0 (README: "while no credit is available to the usage's products at
      all even usage that would cost nothing is"); ingested, it moves nothing.
    - ga3 (BLOCK, no grant at first): level 5 is 5 of overage; then a grant of 3: the netted event's charge takes
      back the 3 of overage its refund gave back, adding no overage (OK), and moves nothing: the grant keeps its 3
      (releases before drew them from it, leaving 2 of overage; their journals replay so)."""
    with server.client() as client:
        customer(client, "ga1", block=False)
        grant(client, "ga1", "g", "100")
        assert estimate_then_ingest(client, "ga1", "gauge", {"level": 5, "n": 0}, (True, "OK", "5", "100"))[1] == "-5"
        moved = estimate_then_ingest(client, "ga1", "gauge", {"level": 2, "n": 3}, (True, "OK", "0", "95"))
        assert moved == ("0", "0", "0")
        moved = estimate_then_ingest(client, "ga1", "gauge", {"level": 1, "n": 0}, (True, "OK", "-1", "95"))
        assert moved == ("-1", "1", "0")
        customer(client, "ga2", block=True)
        grant(client, "ga2", "g", "5")
        assert estimate_then_ingest(client, "ga2", "gauge", {"level": 5, "n": 0}, (True, "OK", "5", "5"))[1] == "-5"
        want = (False, "INSUFFICIENT_CREDIT", "0", "0")
        assert estimate_then_ingest(client, "ga2", "gauge", {"level": 2, "n": 3}, want) == ("0", "0", "0")
        customer(client, "ga3", block=True)
        want = (False, "INSUFFICIENT_CREDIT", "5", "0")
        assert estimate_then_ingest(client, "ga3", "gauge", {"level": 5, "n": 0}, want) == ("5", "0", "5")
        grant(client, "ga3", "g", "3")
        moved = estimate_then_ingest(client, "ga3", "gauge", {"level": 2, "n": 3}, (True, "OK", "0", "3"))
        assert moved == ("0", "0", "0")


def test_expired_and_later_grants_are_not_available_to_an_estimate(server: ServerProcess) -> None:
    """A grant pays from starts_at until expires_at (README; balance.proto: "started, unexpired grants"): one that
    expired an hour ago and one starting tomorrow, 50 each, are not available; one of 5 is. `gr` 8 costs 8: BLOCK
    denies it (available 5), ALLOW allows it as overage and ingesting draws 5, 3 overage; `gr` 5 is covered."""
    with server.client() as client:
        for customer_id, block in (("ex1", True), ("ex2", False)):
            customer(client, customer_id, block=block)
            grant(client, customer_id, "old", "50", expires_at_ms=now_ms() - HOUR_MS)
            grant(client, customer_id, "later", "50", starts_at_ms=now_ms() + DAY_MS)
            grant(client, customer_id, "now", "5")
            assert forms(client, ask(customer_id, "gr", {"n": 5})) == (True, "OK", "5", "5")
            want = (False, "INSUFFICIENT_CREDIT", "8", "5") if block else (True, "OVERAGE_ALLOWED", "8", "5")
            assert estimate_then_ingest(client, customer_id, "gr", {"n": 8}, want) == ("8", "-5", "3")


def hold(client: TariffClient, customer_id: str, reservation_id: str, units: float) -> Answer:
    request = ask(customer_id, "gr", {"n": units}, reserve=True, reservation_id=reservation_id)
    return answer_of(client.balance.Authorize(request))


def test_open_holds_reduce_what_an_estimate_finds_available(server: ServerProcess) -> None:
    """BLOCK, grant 10, `gr` at 1 a unit up to 10. A hold of 6 leaves 4 (its answer: available after its own hold).
    `gr` 5 is denied (available 4), `gr` 4 allowed (available == cost); ingesting 4 (no reservation) draws them;
    then nothing is available and `gr` 1 is denied. Released, the hold gives its 6 back and `gr` 6 (line 4 -> 10)
    costs 6 and is allowed."""
    with server.client() as client:
        customer(client, "ho1", block=True)
        grant(client, "ho1", "g", "10")
        assert hold(client, "ho1", "h1", 6) == (True, "OK", "6", "4")
        assert forms(client, ask("ho1", "gr", {"n": 5})) == (False, "INSUFFICIENT_CREDIT", "5", "4")
        assert estimate_then_ingest(client, "ho1", "gr", {"n": 4}, (True, "OK", "4", "4")) == ("4", "-4", "0")
        assert forms(client, ask("ho1", "gr", {"n": 1})) == (False, "INSUFFICIENT_CREDIT", "1", "0")
        released = client.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id="ho1", reservation_id="h1")
        )
        assert released.released_amount == "6"
        assert estimate_then_ingest(client, "ho1", "gr", {"n": 6}, (True, "OK", "6", "6")) == ("6", "-6", "0")


def hold_message(customer_id: str) -> list[balance_pb2.AuthorizeRequest]:
    """Holds of `gr` 6 (b1), 6 (b2), then a plain `gr` 6, then a hold of `gr` 4 (b3)."""
    return [
        ask(customer_id, "gr", {"n": 6}, request_id="r1", reserve=True, reservation_id="b1"),
        ask(customer_id, "gr", {"n": 6}, request_id="r2", reserve=True, reservation_id="b2"),
        ask(customer_id, "gr", {"n": 6}, request_id="r3"),
        ask(customer_id, "gr", {"n": 4}, request_id="r4", reserve=True, reservation_id="b3"),
    ]


@pytest.mark.parametrize("block", [True, False], ids=["block", "allow"])
def test_batched_holds_are_decided_as_single_authorize_calls_in_request_order(
    server: ServerProcess, block: bool
) -> None:
    """balance.proto AuthorizeBatches: holds "applied in request order (each decided against the holds before it, in
    the same message too)"; "the requests without reserve are decided when the message arrives (before its holds
    are placed)". Grant 10 each. In one message: b1 holds 6 (4 left); b2 (6) finds 4: BLOCK denies it, ALLOW allows
    it as overage holding the 4; the plain request sees no hold (10); b3 (4) finds 4 under BLOCK (allowed at
    available == cost, 0 left) and 0 under ALLOW (overage, holds nothing). The same holds made by single
    Authorize calls, on a customer of their own (the plain one first, as it is decided first), answer alike.
    Then the event settling b1 is charged 6, its hold given back first."""
    suffix = "b" if block else "a"
    if block:
        want = [
            (True, "OK", "6", "4"),
            (False, "INSUFFICIENT_CREDIT", "6", "4"),
            (True, "OK", "6", "10"),
            (True, "OK", "4", "0"),
        ]
    else:
        want = [
            (True, "OK", "6", "4"),
            (True, "OVERAGE_ALLOWED", "6", "0"),
            (True, "OK", "6", "10"),
            (True, "OVERAGE_ALLOWED", "4", "0"),
        ]
    with server.client() as client:
        batched, single = f"hb{suffix}", f"hs{suffix}"
        for customer_id in (batched, single):
            customer(client, customer_id, block=block)
            grant(client, customer_id, "g", "10")
        assert batch(client, *hold_message(batched)) == want
        requests = hold_message(single)
        singles = [answer_of(client.balance.Authorize(requests[2]))]
        singles += [answer_of(client.balance.Authorize(r)) for r in (requests[0], requests[1], requests[3])]
        assert [singles[1], singles[2], singles[0], singles[3]] == want
        for customer_id in (batched, single):
            balance = client.get_balance(customer_id)
            assert (balance.credits_held, balance.credits_available) == ("10", "0")
            before = balance.credits_remaining
            event = usage_pb2.UsageEvent(
                transaction_id="settle-b1",
                customer_id=customer_id,
                event_type="gr",
                timestamp_ms=now_ms(),
                values={"n": 6},
                reservation_id="b1",
            )
            ack = client.ingest_batch([event])
            assert (ack.accepted, list(ack.notices)) == (1, [])
            after = client.get_balance(customer_id)
            assert (before, after.period_charges, after.credits_remaining) == ("10", "6", "4")


def policy(client: TariffClient, contract_id: str) -> None:
    """Below 5 available, buy up to 20 at 1 USD a credit, at most 3 times a period."""
    top_up = contracts_pb2.TopUpPolicy(threshold="5", recharge_to="20", price_per_credit="1", max_per_period=3)
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=top_up))


def test_top_ups_are_not_counted_in_an_estimate_and_ingestion_charges_it(server: ServerProcess) -> None:
    """contracts.proto TopUpPolicy: "The purchase follows the draw: an event costing more than is available is
    rated against what is there (the rest is overage, BLOCK or not), and Authorize decides without it". Grant 10,
    policy below 5 up to 20. `m` a=5.75 costs 6; a=11.75 costs 12.
    - tp1 (ALLOW): 6 is OK (available 10); ingested it charges 6, leaves 4 and buys 16: available 20.
    - tp2 (BLOCK): 12 is denied (the top-up it would trigger is not counted); ingested anyway: 10 drawn, 2 overage,
      then 20 bought.
    - tp3 (BLOCK): a hold of 6 leaves 4 and its own top-up buys 16: the answer counts it (20), on Authorize and on
      AuthorizeBatches alike (tp4)."""
    with server.client() as client:
        for customer_id, block in (("tp1", False), ("tp2", True), ("tp3", True), ("tp4", True)):
            policy(client, customer(client, customer_id, block=block))
            grant(client, customer_id, "g", "10")
        assert estimate_then_ingest(client, "tp1", "m", {"a": 5.75}, (True, "OK", "6", "10")) == ("6", "10", "0")
        want = (False, "INSUFFICIENT_CREDIT", "12", "10")
        assert estimate_then_ingest(client, "tp2", "m", {"a": 11.75}, want) == ("12", "10", "2")
        request = ask("tp3", "m", {"a": 5.75}, reserve=True, reservation_id="t1")
        assert answer_of(client.balance.Authorize(request)) == (True, "OK", "6", "20")
        request = ask("tp4", "m", {"a": 5.75}, reserve=True, reservation_id="t1")
        assert batch(client, request) == [(True, "OK", "6", "20")]
        for customer_id in ("tp3", "tp4"):
            balance = client.get_balance(customer_id)
            assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("26", "6", "20")


def test_unique_count_and_max_estimates_follow_the_periods_line(server: ServerProcess) -> None:
    """UNIQUE_COUNT counts distinct values of `user` (1 each): a, a again (0), b (1). MAX prices the largest value
    seen: 4 (4), 3 (0), 6 (2 more)."""
    with server.client() as client:
        customer(client, "uq1", block=False)
        grant(client, "uq1", "g", "100")
        left = Decimal(100)
        for user, cost in (("a", "1"), ("a", "0"), ("b", "1")):
            request = ask("uq1", "uq", {}, dimensions={"user": user})
            assert forms(client, request) == (True, "OK", cost, plain(left))
            _sent[0] += 1
            event = usage_pb2.UsageEvent(
                transaction_id=f"t{_sent[0]}",
                customer_id="uq1",
                event_type="uq",
                timestamp_ms=now_ms(),
                dimensions={"user": user},
            )
            assert client.ingest_batch([event]).accepted == 1
            left -= Decimal(cost)
            assert client.get_balance("uq1").credits_available == plain(left)
        for level, cost in ((4, "4"), (3, "0"), (6, "2")):
            assert estimate_then_ingest(client, "uq1", "mx", {"n": level}, (True, "OK", cost, plain(left)))[2] == "0"
            left -= Decimal(cost)


def test_more_override_forms_price_estimates_as_ingestion(server: ServerProcess) -> None:
    """PriceOverride price on UNIT keeps per_units: `un` at price 2 per 3 units: 1 unit 0.666666666667, 1 more
    1.333333333333 - 0.666666666667 = 0.666666666666. A multiplier covers tier flat fees: `vo` x 2: 13 units (tier 2,
    13 x 0.5 + 3 = 9.5) 19. A price of 0 on `fl`: 0. An override added after usage of the period prices the line on
    both sides from then on: `gr` 8 units at the card's 8, then x 2: 5 more 2 x 11.5 - 2 x 8 = 7."""
    with server.client() as client:
        contract_id = customer(client, "ov2", block=True)
        grant(client, "ov2", "g", "100")
        assert estimate_then_ingest(client, "ov2", "gr", {"n": 8}, (True, "OK", "8", "100"))[0] == "8"
        override(client, contract_id, "un", price="2")
        override(client, contract_id, "vo", multiplier="2")
        override(client, contract_id, "fl", price="0")
        override(client, contract_id, "gr", multiplier="2")
        left = Decimal(92)
        for event_type, values, cost in (
            ("un", {"n": 1}, "0.666666666667"),
            ("un", {"n": 1}, "0.666666666666"),
            ("vo", {"n": 13}, "19"),
            ("fl", {"n": 1}, "0"),
            ("gr", {"n": 5}, "7"),
        ):
            moved = estimate_then_ingest(client, "ov2", event_type, values, (True, "OK", cost, plain(left)))
            assert Decimal(moved[1]) == -Decimal(cost), (event_type, moved)
            left -= Decimal(cost)


def test_a_negative_estimate_under_block_with_no_credit_left_is_denied(server: ServerProcess) -> None:
    """README (Balances): under BLOCK, "while no credit is available to the usage's products at all even usage that
    would cost nothing is" denied: so is usage whose estimate is negative. BLOCK, grant 8: `vo` 8 units cost 8 (all
    of it); 15 more reach tier 3: 23 x 0.25 = 5.75, so -2.25: denied, with the refund as its estimate, on the three
    forms and as a hold (nothing held). Ingested anyway (usage that happened is recorded), it gives 2.25 back; with
    that credit available the same kind of usage is allowed again."""
    with server.client() as client:
        customer(client, "vz1", block=True)
        grant(client, "vz1", "g", "8")
        assert estimate_then_ingest(client, "vz1", "vo", {"n": 8}, (True, "OK", "8", "8"))[1] == "-8"
        denied = (False, "INSUFFICIENT_CREDIT", "-2.25", "0")
        held = client.balance.Authorize(ask("vz1", "vo", {"n": 15}, reserve=True, reservation_id="v1"))
        assert (answer_of(held), held.reservation_id) == (denied, "")
        assert estimate_then_ingest(client, "vz1", "vo", {"n": 15}, denied) == ("-2.25", "2.25", "0")
        # The line is at 23 (tier 3, 0.25 a unit): 4 more cost 1.
        assert forms(client, ask("vz1", "vo", {"n": 4})) == (True, "OK", "1", "2.25")


@pytest.mark.parametrize("block", [True, False], ids=["block", "allow"])
def test_a_hold_of_usage_that_also_gives_credit_back_holds_what_its_charges_draw(
    server: ServerProcess, block: bool
) -> None:
    """A hold takes what the usage would draw from grants in burn order (README "Credits and the gateway"; docs/
    architecture.md §3 "A hold"), which is its estimated cost unless the usage also gives credit back: grant L 5 for
    `lv` only and S 3 for `ls` only; level 5 draws L's 5. Then level 2 with n=3 is estimated 0 (`lv` gives 3 back to
    L, `ls` costs 3), allowed (S covers `ls`), and a hold of it holds the 3 `ls` would draw from S (the refund goes
    to L, which cannot pay `ls`): credits_available 0 after it. The event settling it gives the 3 back, then
    charges 0: L 3, S 0."""
    customer_id = "gh1" if block else "gh2"
    with server.client() as client:
        customer(client, customer_id, block=block)
        grant(client, customer_id, "l", "5", products=("lv",))
        grant(client, customer_id, "s", "3", products=("ls",))
        assert ingest(client, customer_id, "gauge", {"level": 5, "n": 0}) == ("5", "-5", "0")
        values = {"level": 2.0, "n": 3.0}
        assert forms(client, ask(customer_id, "gauge", values)) == (True, "OK", "0", "3")
        held = client.balance.Authorize(ask(customer_id, "gauge", values, reserve=True, reservation_id="x"))
        assert (answer_of(held), held.reservation_id) == ((True, "OK", "0", "0"), "x")
        balance = client.get_balance(customer_id)
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("3", "3", "0")
        event = usage_pb2.UsageEvent(
            transaction_id="settle-x",
            customer_id=customer_id,
            event_type="gauge",
            timestamp_ms=now_ms(),
            values=values,
            reservation_id="x",
        )
        ack = client.ingest_batch([event])
        assert (ack.accepted, list(ack.notices)) == (1, [])
        balance = client.get_balance(customer_id)
        assert (balance.period_charges, balance.credits_held, balance.credits_available) == ("5", "0", "3")
        remaining = {g.grant_id.removeprefix(f"{customer_id}."): g.remaining for g in balance.grants}
        assert remaining == {"l": "3", "s": "0"}


def test_a_streamed_hold_and_a_batched_hold_after_a_top_up_price_as_unary(server: ServerProcess) -> None:
    """AuthorizeStream with reserve holds as Authorize does; in one AuthorizeBatches message a later hold sees the
    top-up an earlier hold bought (each decided against what the holds before it left). BLOCK, grant 10, policy
    below 5 up to 20: `m` a=5.75 (6) held leaves 4, whose top-up buys 16: 20; then `m` a=11.75 (12) held in the same
    message finds 20: OK, 8 left (not below 5: nothing bought). On AuthorizeStream (customer ts1) the same two holds
    answer alike; each customer then holds 18 with 8 available."""
    with server.client() as client:
        for customer_id in ("tb1", "ts1"):
            policy(client, customer(client, customer_id, block=True))
            grant(client, customer_id, "g", "10")
        want = [(True, "OK", "6", "20"), (True, "OK", "12", "8")]

        def holds(customer_id: str) -> list[balance_pb2.AuthorizeRequest]:
            return [
                ask(customer_id, "m", {"a": 5.75}, request_id="r1", reserve=True, reservation_id="k1"),
                ask(customer_id, "m", {"a": 11.75}, request_id="r2", reserve=True, reservation_id="k2"),
            ]

        assert batch(client, *holds("tb1")) == want
        streamed = client.balance.AuthorizeStream(iter(holds("ts1")), timeout=STREAM_TIMEOUT_S)
        assert [answer_of(a) for a in streamed] == want
        for customer_id in ("tb1", "ts1"):
            balance = client.get_balance(customer_id)
            assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("26", "18", "8")


def test_tier_and_package_bounds_are_estimated_as_ingestion_prices_them(server: ServerProcess) -> None:
    """Tier.up_to: "the tier covers quantities up to this bound (inclusive)"; PACKAGE rounds up to whole packages.
    - VOLUME: 10 units are all in tier 1: 10; 0.5 more (10.5) reach tier 2: 10.5 x 0.5 + 3 = 8.25, so -1.75; 9.5
      more (20, still tier 2): 13, so 4.75; 0.25 more (20.25, tier 3): 5.0625, so -7.9375.
    - GRADUATED: 10 units 10 (tier 1 whole); 0.5 more: 0.25; 9.5 more: 4.75 (tier 2 full at 20: 15); 0.25 more
      in tier 3: 0.0625.
    - PACKAGE of 10: 10 units one package (3); 10 more, exactly two (3 more); 0.5 more start a third (3 more)."""
    with server.client() as client:
        customer(client, "tb", block=False)
        grant(client, "tb", "g", "100")
        left = Decimal(100)
        for event_type, units, cost in (
            ("vo", 10, "10"),
            ("vo", 0.5, "-1.75"),
            ("vo", 9.5, "4.75"),
            ("vo", 0.25, "-7.9375"),
            ("gr", 10, "10"),
            ("gr", 0.5, "0.25"),
            ("gr", 9.5, "4.75"),
            ("gr", 0.25, "0.0625"),
            ("pk", 10, "3"),
            ("pk", 10, "3"),
            ("pk", 0.5, "3"),
        ):
            moved = estimate_then_ingest(client, "tb", event_type, {"n": units}, (True, "OK", cost, plain(left)))
            assert moved == (cost, plain(-Decimal(cost)), "0"), (event_type, units, moved)
            left -= Decimal(cost)


def test_a_grant_that_expires_or_starts_while_serving_moves_what_an_estimate_finds(server: ServerProcess) -> None:
    """A grant pays up to, not at, its expires_at, and from its starts_at (README "Times"; balance.proto: "started,
    unexpired grants"). BLOCK: C 5, A 50 expiring and B 20 starting at t0 + 1.5 s. Before t0 + 1.5 s `gr` 8 finds
    55 (A and C). After it (waited for, not raced) it finds 25 (B and C), A's 50 being gone whether or not the clock
    has recorded its breakage yet; ingested, the 8 are drawn from C and B: 17 left."""
    with server.client() as client:
        customer(client, "tx1", block=True)
        grant(client, "tx1", "c", "5")
        t0 = now_ms()
        grant(client, "tx1", "a", "50", expires_at_ms=t0 + 1500)
        grant(client, "tx1", "b", "20", starts_at_ms=t0 + 1500)
        before = answer_of(client.balance.Authorize(ask("tx1", "gr", {"n": 8})))
        if now_ms() < t0 + 1500:  # a loaded machine may have taken longer: then only the second half is checked
            assert before == (True, "OK", "8", "55")
        while now_ms() < t0 + 1600:
            time.sleep(0.05)
        assert estimate_then_ingest(client, "tx1", "gr", {"n": 8}, (True, "OK", "8", "25")) == ("8", "-8", "0")
        assert client.get_balance("tx1").credits_available == "17"


def test_requests_refused_before_pricing_are_answered_the_whole_credit_and_ingestion_refuses_alike(
    server: ServerProcess,
) -> None:
    """balance.proto credits_available: "a request of a known customer denied before it is priced (NO_ACTIVE_CONTRACT,
    NO_APPLICABLE_RATE, INVALID_REQUEST for a bad value) [is] answered the customer's whole available credit",
    whatever the grants apply to, on the streams, with a hold too (AuthorizeBatches); ingesting the same event is
    rejected for the same reason and moves nothing. Customer nr1 (BLOCK): 4 for every product, 6 for `gr` only. `nr`
    has no rate; a negative value is refused for `m` (which feeds `ma` and `mb`) and for the event type `ma`, which
    feeds no product (its value is checked all the same, §5 step 3)."""
    with server.client() as client:
        customer(client, "nr1", block=True)
        grant(client, "nr1", "all", "4")
        grant(client, "nr1", "g", "6", products=("gr",))
        for event_type, values, reason, rejected in (
            ("nr", {"n": 1}, "NO_APPLICABLE_RATE", usage_pb2.NO_APPLICABLE_RATE),
            ("ma", {"a": -1}, "INVALID_REQUEST", usage_pb2.INVALID_EVENT),
            ("m", {"a": -1}, "INVALID_REQUEST", usage_pb2.INVALID_EVENT),
        ):
            plain_request = ask("nr1", event_type, values, request_id="p")
            hold_request = ask("nr1", event_type, values, request_id="h", reserve=True, reservation_id="n1")
            want = (False, reason, "0", "10")
            streamed = client.balance.AuthorizeStream(iter([plain_request, hold_request]), timeout=STREAM_TIMEOUT_S)
            assert [answer_of(a) for a in streamed] == [want, want], event_type
            assert batch(client, plain_request, hold_request) == [want, want], event_type
            before = client.get_balance("nr1")
            _sent[0] += 1
            event = usage_pb2.UsageEvent(
                transaction_id=f"t{_sent[0]}",
                customer_id="nr1",
                event_type=event_type,
                timestamp_ms=now_ms(),
                values=values,
            )
            ack = client.ingest_batch([event])
            assert [r.reason for r in ack.rejected] == [rejected], event_type
            after = client.get_balance("nr1")
            assert (after.period_charges, after.credits_available) == (before.period_charges, before.credits_available)


def test_no_contract_covering_now_is_answered_the_whole_credit_and_ingestion_refuses_alike(
    server: ServerProcess,
) -> None:
    """A customer whose only contract starts next month, holding a grant of 10 usable from an hour ago: Authorize
    answers NO_ACTIVE_CONTRACT (a reason, not a status, on every form), estimated_cost 0 and the whole available
    credit, 10 (balance.proto credits_available), its message naming now; the event dated now is rejected
    NO_ACTIVE_CONTRACT and moves nothing."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="nc1", name="nc1"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="nc1-c",
                customer_id="nc1",
                rate_card_id="est",
                starting_at=stamp(month_start_ms(-1)),
                overage_policy=contracts_pb2.BLOCK,
                currency="USD",
            )
        )
        grant(client, "nc1", "g", "10", starts_at_ms=now_ms() - HOUR_MS)
        answer = client.balance.Authorize(ask("nc1", "gr", {"n": 1}))
        assert answer_of(answer) == (False, "NO_ACTIVE_CONTRACT", "0", "10")
        assert answer.message.startswith("customer 'nc1' has no contract covering now (")
        # The message names the instant each form decided at, so only the rest is compared.
        request = ask("nc1", "gr", {"n": 1})
        streamed = client.balance.AuthorizeStream(iter([request]), timeout=STREAM_TIMEOUT_S)
        assert [answer_of(a) for a in streamed] == [answer_of(answer)]
        assert batch(client, request, request) == [answer_of(answer)] * 2
        event = usage_pb2.UsageEvent(
            transaction_id="nc", customer_id="nc1", event_type="gr", timestamp_ms=now_ms(), values={"n": 1}
        )
        assert [r.reason for r in client.ingest_batch([event]).rejected] == [usage_pb2.NO_ACTIVE_CONTRACT]
        assert client.get_balance("nc1").credits_available == "10"


def test_a_hold_reserves_credit_not_usage_so_a_later_estimate_prices_the_line_without_it(
    server: ServerProcess,
) -> None:
    """A hold takes credit, not quantity: the line's quantity moves when an event is ingested (README "Credits and
    the gateway"; balance.proto reserve). BLOCK, grant 14. One AuthorizeBatches message holds `fl` 1 twice (f1, f2):
    the line has no usage yet, so each is estimated the flat fee, 7, f2 decided against the 7 f1 left: OK, 0 left.
    The event settling f1 is charged 7 (the fee); the one settling f2 is charged 0 (the fee is once a period) and
    gives its 7 back: 7 available."""
    with server.client() as client:
        customer(client, "fh1", block=True)
        grant(client, "fh1", "g", "14")
        requests = [
            ask("fh1", "fl", {"n": 1}, request_id=f"r{n}", reserve=True, reservation_id=f"f{n}") for n in (1, 2)
        ]
        assert batch(client, *requests) == [(True, "OK", "7", "7"), (True, "OK", "7", "0")]
        for n, charges, available in ((1, "7", "0"), (2, "7", "7")):
            event = usage_pb2.UsageEvent(
                transaction_id=f"fh{n}",
                customer_id="fh1",
                event_type="fl",
                timestamp_ms=now_ms(),
                values={"n": 1},
                reservation_id=f"f{n}",
            )
            ack = client.ingest_batch([event])
            assert (ack.accepted, list(ack.notices)) == (1, [])
            balance = client.get_balance("fh1")
            assert (balance.period_charges, balance.credits_available) == (charges, available), n
