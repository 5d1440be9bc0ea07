"""The credits ledger: burn order, applicability, grant lifetimes, overage, revenue at cost basis, balance views,
GrantCredits validation and Authorize estimates (docs/architecture.md §3). Prices are one credit per token unless a test says
otherwise, so a charge of N tokens is N credits."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest

from engine.commands import GrantCredits
from engine.contracts import OveragePolicy
from engine.errors import InvalidArgument, NotFound
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import TierMode
from engine.state import Engine
from tests.engine_fixtures import (
    DAY_MS,
    EPOCH_MS,
    HOUR_MS,
    World,
    basic_world,
    drawn_by_grant,
    event,
    picos,
    rate,
    tiered,
    unit,
)

T = EPOCH_MS
NEVER = None


def ledger_world(*, overage_policy: OveragePolicy = OveragePolicy.ALLOW) -> World:
    """basic_world plus a second product "other" (event type "other", same price) for applicability."""
    return basic_world(
        [rate("tokens", unit("1")), rate("other", unit("1"))], overage_policy=overage_policy, extra_products=["other"]
    )


# Burn order ------------------------------------------------------------------------------------------------------

# (grant id, priority, expires after (days) or NEVER, applicable products); each grant is 10 credits, created in
# list order; the charge is 25 credits.
GrantRow = tuple[str, int, int | None, tuple[str, ...]]


@pytest.mark.parametrize(
    ("grants", "draws"),
    [
        pytest.param(
            [("a", 2, NEVER, ()), ("b", 1, NEVER, ()), ("c", 3, NEVER, ())],
            [("b", "10"), ("a", "10"), ("c", "5")],
            id="priority-lower-first",
        ),
        pytest.param(
            [("a", 0, 30, ()), ("b", 0, 10, ()), ("c", 0, NEVER, ())],
            [("b", "10"), ("a", "10"), ("c", "5")],
            id="then-earliest-expiry",
        ),
        pytest.param(
            [("a", 0, NEVER, ()), ("b", 0, NEVER, ("tokens", "other")), ("c", 0, NEVER, ("tokens",))],
            [("c", "10"), ("b", "10"), ("a", "5")],
            id="then-narrowest-applicability",
        ),
        pytest.param(
            [("a", 0, NEVER, ()), ("b", 0, NEVER, ()), ("c", 0, NEVER, ())],
            [("a", "10"), ("b", "10"), ("c", "5")],
            id="then-creation-order",
        ),
        pytest.param(
            [("a", 1, 1, ()), ("b", 0, NEVER, ()), ("c", 2, NEVER, ())],
            [("b", "10"), ("a", "10"), ("c", "5")],
            id="priority-beats-expiry",
        ),
        pytest.param(
            [("a", 0, NEVER, ("tokens",)), ("b", 0, 5, ()), ("c", 0, NEVER, ())],
            [("b", "10"), ("a", "10"), ("c", "5")],
            id="expiry-beats-narrowness",
        ),
        pytest.param(
            [("a", 0, NEVER, ()), ("b", 0, NEVER, ("tokens",)), ("c", 0, NEVER, ("tokens", "other"))],
            [("b", "10"), ("c", "10"), ("a", "5")],
            id="narrowness-beats-creation-order",
        ),
    ],
)
def test_burn_order(grants: list[GrantRow], draws: list[tuple[str, str]]) -> None:
    world = ledger_world()
    for grant_id, priority, expires_days, products in grants:
        expires = None if expires_days is None else T + expires_days * DAY_MS
        world.grant(grant_id, "10", priority=priority, expires_at_ms=expires, products=products)
    [entry] = world.ingest_one(event("t1", T + HOUR_MS, values={"tokens": 25}))
    assert [(d.grant_id, d.credits) for d in entry.draws] == [(g, picos(c)) for g, c in draws]
    assert entry.overage == 0


@pytest.mark.parametrize(
    ("products", "covered"),
    [
        pytest.param((), True, id="empty-means-every-product"),
        pytest.param(("tokens",), True, id="this-product"),
        pytest.param(("other",), False, id="another-product-only"),
        pytest.param(("other", "tokens"), True, id="list-including-this-product"),
    ],
)
def test_grant_applicability(products: tuple[str, ...], covered: bool) -> None:
    world = ledger_world()
    world.grant("g", "100", products=products)
    [entry] = world.ingest_one(event("t1", T + HOUR_MS, values={"tokens": 10}))
    if covered:
        assert ([(d.grant_id, d.credits) for d in entry.draws], entry.overage) == ([("g", picos("10"))], 0)
    else:
        assert (entry.draws, entry.overage) == ([], picos("10"))


@pytest.mark.parametrize(
    ("starts_at_ms", "expires_at_ms", "event_ts_ms", "received_at_ms", "covered"),
    [
        pytest.param(T + DAY_MS, None, T + HOUR_MS, T + HOUR_MS, False, id="not-yet-started"),
        pytest.param(T + HOUR_MS, None, T + HOUR_MS, T + HOUR_MS, True, id="starts-at-the-event"),
        pytest.param(T, T + HOUR_MS, T + HOUR_MS, T + HOUR_MS, False, id="expires-at-the-event"),
        pytest.param(T, T + HOUR_MS + 1, T + HOUR_MS, T + HOUR_MS, True, id="expires-after-the-event"),
        # A late event is drawn by its own timestamp: the grant had not expired then.
        pytest.param(T, T + DAY_MS, T + HOUR_MS, T + 10 * DAY_MS, True, id="late-event-before-expiry"),
        # An event received before the grant starts, but dated after: usable at the event's time.
        pytest.param(T + 2 * HOUR_MS, None, T + 2 * HOUR_MS, T + 2 * HOUR_MS - 1, True, id="dated-after-start"),
    ],
)
def test_grant_usable_by_event_timestamp(
    starts_at_ms: int, expires_at_ms: int | None, event_ts_ms: int, received_at_ms: int, covered: bool
) -> None:
    world = ledger_world()
    world.grant("g", "100", starts_at_ms=starts_at_ms, expires_at_ms=expires_at_ms)
    [entry] = world.ingest_one(event("t1", event_ts_ms, values={"tokens": 10}), received_at_ms=received_at_ms)
    assert sum(d.credits for d in entry.draws) == (picos("10") if covered else 0)
    assert entry.overage == (0 if covered else picos("10"))


def test_overage_when_grants_run_out() -> None:
    world = basic_world(overage_price="0.5")
    world.grant("g", "10")
    [entry] = world.ingest_one(event("t1", T + HOUR_MS, values={"tokens": 25}))
    assert ([(d.grant_id, d.credits) for d in entry.draws], entry.overage) == ([("g", picos("10"))], picos("15"))
    view = world.engine.balance("acme", T + 2 * HOUR_MS)
    assert view.period_charges == picos("25")  # everything charged, covered or not
    assert view.overage == picos("15")  # 25 - 10
    assert view.overage_due == Decimal("7.5")  # 15 x overage_price 0.5
    assert (view.remaining, view.available) == (0, 0)


def test_overage_accumulates_over_the_period() -> None:
    world = basic_world()
    world.grant("g", "10")
    world.ingest_one(event("t1", T + HOUR_MS, values={"tokens": 6}))  # covered
    world.ingest_one(event("t2", T + 2 * HOUR_MS, values={"tokens": 6}))  # 4 covered, 2 overage
    world.ingest_one(event("t3", T + 3 * HOUR_MS, values={"tokens": 3}))  # overage
    view = world.engine.balance("acme", T + 4 * HOUR_MS)
    assert (view.period_charges, view.overage) == (picos("15"), picos("5"))  # 6 + 6 + 3; 2 + 3


# Revenue at cost basis ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "amount", "paid", "draws", "revenues", "recognized"),
    [
        # 50,000 credits for 45,000: cost basis 0.9; 100 credits -> 90.
        pytest.param(GrantKind.PREPAID, "50000", "45000", [100], ["90"], "90", id="credit-pack"),
        # 3 credits for 1: cumulative revenue after 1, 2, 3 credits = 0.333333333333, 0.666666666667, 1
        # (each rounded once from the cumulative draw); fully drawn, it has recognised exactly what was paid.
        pytest.param(
            GrantKind.PREPAID,
            "3",
            "1",
            [1, 1, 1],
            ["0.333333333333", "0.333333333334", "0.333333333333"],
            "1",
            id="thirds-fully-drawn-recognise-exactly-paid",
        ),
        # 7 credits for 2: after 2, 4, 7 credits: 4/7 = 0.571428571429, 8/7 = 1.142857142857, 2.
        pytest.param(
            GrantKind.PREPAID,
            "7",
            "2",
            [2, 2, 3],
            ["0.571428571429", "0.571428571428", "0.857142857143"],
            "2",
            id="sevenths-fully-drawn-recognise-exactly-paid",
        ),
        pytest.param(GrantKind.PROMOTIONAL, "100", "0", [40, 60], ["0", "0"], "0", id="promotional-recognises-nothing"),
    ],
)
def test_revenue_recognised_at_cost_basis(
    kind: GrantKind, amount: str, paid: str, draws: list[int], revenues: list[str], recognized: str
) -> None:
    world = basic_world()
    world.grant("g", amount, kind=kind, paid=paid)
    got = []
    for i, tokens in enumerate(draws):
        [entry] = world.ingest_one(event(f"t{i}", T + HOUR_MS + i, values={"tokens": tokens}))
        [d] = entry.draws
        got.append(d.revenue)
    assert got == [picos(r) for r in revenues]
    assert world.grant_by_id("g").recognized_revenue == picos(recognized)


# Balance view ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now_ms", "remaining", "expired", "view_remaining"),
    [
        # "g": 10 credits, 3 drawn, expires at T + 10 days; "later": 5 credits from T + 5 days.
        pytest.param(T + 2 * DAY_MS, {"g": "7", "later": "5"}, {"g": "0", "later": "0"}, "7", id="before-later"),
        pytest.param(T + 5 * DAY_MS, {"g": "7", "later": "5"}, {"g": "0", "later": "0"}, "12", id="both-usable"),
        pytest.param(T + 10 * DAY_MS - 1, {"g": "7", "later": "5"}, {"g": "0", "later": "0"}, "12", id="last-ms"),
        pytest.param(T + 10 * DAY_MS, {"g": "0", "later": "5"}, {"g": "7", "later": "0"}, "5", id="g-expired"),
    ],
)
def test_balance_view_expired_vs_remaining(
    now_ms: int, remaining: dict[str, str], expired: dict[str, str], view_remaining: str
) -> None:
    world = basic_world()
    world.grant("g", "10", expires_at_ms=T + 10 * DAY_MS)
    world.grant("later", "5", starts_at_ms=T + 5 * DAY_MS)
    world.ingest_one(event("t1", T + DAY_MS, values={"tokens": 3}))
    view = world.engine.balance("acme", now_ms)
    assert {v.grant.id: v.remaining for v in view.grants} == {k: picos(v) for k, v in remaining.items()}
    assert {v.grant.id: v.expired for v in view.grants} == {k: picos(v) for k, v in expired.items()}
    assert (view.remaining, view.available) == (picos(view_remaining), picos(view_remaining))
    granted = sum(v.grant.amount for v in view.grants)
    drawn = sum(v.grant.drawn for v in view.grants)
    assert granted == drawn + sum(v.remaining for v in view.grants) + sum(v.expired for v in view.grants)


# GrantCredits validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(lambda w: w.grant_command("g", "0"), "grant.amount", id="amount-zero"),
        pytest.param(lambda w: w.grant_command("g", "-5"), "grant.amount", id="amount-negative"),
        pytest.param(lambda w: w.grant_command("g", "abc"), "grant.amount", id="amount-not-decimal"),
        # 4 x 10^-13 rounds half-even to 0 picos.
        pytest.param(lambda w: w.grant_command("g", "0.0000000000004"), "grant.amount", id="amount-under-a-pico"),
        pytest.param(
            lambda w: w.grant_command("g", "10", kind=GrantKind.PROMOTIONAL, paid="10"),
            "grant.paid_amount",
            id="promotional-with-paid-amount",
        ),
        pytest.param(lambda w: w.grant_command("g", "10", paid="-1"), "grant.paid_amount", id="paid-negative"),
        pytest.param(
            lambda w: w.grant_command("g", "10", products=("tokens", "nope")),
            "grant.applicable_product_ids[1]",
            id="unknown-product",
        ),
        pytest.param(lambda w: w.grant_command("g", "10", kind=None), "grant.kind", id="kind-missing"),
        pytest.param(
            lambda w: w.grant_command("g", "10", starts_at_ms=T, expires_at_ms=T),
            "grant.expires_at",
            id="expires-at-start",
        ),
        pytest.param(
            lambda w: w.grant_command("g", "10", rollover_fraction="1.5"),
            "grant.rollover_fraction",
            id="rollover-over-1",
        ),
        pytest.param(lambda w: w.grant_command("bad id!", "10"), "grant.id", id="bad-id"),
        pytest.param(lambda w: w.grant_command("g", "10", customer_id=""), "grant.customer_id", id="no-customer"),
    ],
)
def test_grant_credits_validation(build: Callable[[World], GrantCredits], field: str) -> None:
    world = basic_world()
    command = build(world)
    before = world.engine.encode_snapshot()
    with pytest.raises(InvalidArgument) as refused:
        world.apply(command)
    assert [f for f, _ in refused.value.violations] == [field]
    assert world.engine.encode_snapshot() == before  # a refused command changes nothing


def test_grant_for_unknown_customer_is_not_found() -> None:
    world = basic_world()
    with pytest.raises(NotFound):
        world.apply(world.grant_command("g", "10", customer_id="ghost"))
    assert world.engine.state.grants_created == 0


def test_grant_through_contract_belongs_to_its_customer() -> None:
    world = basic_world()
    grant = world.apply(world.grant_command("g", "10", customer_id="", contract_id="c-acme"))
    assert [g.id for g in world.engine.state.accounts["acme"].grants] == ["g"]
    assert grant is world.grant_by_id("g")


# Authorize ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("policy", "grant", "allowed", "reason"),
    [
        pytest.param(OveragePolicy.ALLOW, "100", True, "OK", id="allow-covered"),
        pytest.param(OveragePolicy.ALLOW, "10", True, "OVERAGE_ALLOWED", id="allow-beyond-credit"),
        pytest.param(OveragePolicy.ALLOW, None, True, "OVERAGE_ALLOWED", id="allow-no-grant"),
        pytest.param(OveragePolicy.BLOCK, "100", True, "OK", id="block-covered"),
        pytest.param(OveragePolicy.BLOCK, "30", True, "OK", id="block-exactly-covered"),
        pytest.param(OveragePolicy.BLOCK, "10", False, "INSUFFICIENT_CREDIT", id="block-beyond-credit"),
        pytest.param(OveragePolicy.BLOCK, None, False, "INSUFFICIENT_CREDIT", id="block-no-grant"),
    ],
)
def test_authorize_decision(policy: OveragePolicy, grant: str | None, allowed: bool, reason: str) -> None:
    world = basic_world(overage_policy=policy)
    if grant is not None:
        world.grant("g", grant)
    now = T + HOUR_MS
    before = world.engine.encode_snapshot()
    estimate = world.engine.estimate("acme", "ai", {}, {"tokens": 30}, now)
    assert (estimate.allowed, estimate.reason) == (allowed, reason)
    assert estimate.cost == picos("30")  # 30 tokens x 1
    assert estimate.available == (picos(grant) if grant is not None else 0)
    assert world.engine.encode_snapshot() == before  # a read changes nothing


@pytest.mark.parametrize(
    ("customer_id", "values", "reason"),
    [
        pytest.param("ghost", {"tokens": 1.0}, "UNKNOWN_CUSTOMER", id="unknown-customer"),
        pytest.param("acme", {"tokens": -1.0}, "INVALID_REQUEST", id="negative-value"),
        pytest.param("acme", {}, "INVALID_REQUEST", id="missing-value-key"),
    ],
)
def test_authorize_refuses_what_ingestion_would_reject(customer_id: str, values: dict[str, float], reason: str) -> None:
    world = basic_world()
    estimate = world.engine.estimate(customer_id, "ai", {}, values, T + HOUR_MS)
    assert (estimate.allowed, estimate.reason, estimate.cost) == (False, reason, 0)


def test_authorize_cost_equals_what_ingesting_the_event_charges() -> None:
    # Graduated tiers: 100 at 1, 100 at 0.5, then 0.25. 150 tokens already used this period.
    world = basic_world([rate("tokens", tiered(TierMode.GRADUATED, ("100", "1"), ("200", "0.5"), ("", "0.25")))])
    world.grant("g", "1000", paid="500")
    world.ingest_one(event("t0", T + HOUR_MS, values={"tokens": 150}))
    now = T + 2 * HOUR_MS
    estimate = world.engine.estimate("acme", "ai", {}, {"tokens": 100}, now)
    # price(250) - price(150) = (100 + 50 + 12.5) - (100 + 25) = 37.5
    assert estimate.cost == picos("37.5")
    [entry] = world.ingest_one(event("t1", now, values={"tokens": 100}))
    assert entry.charge == estimate.cost


def test_authorize_counts_only_grants_usable_now_for_the_product() -> None:
    world = ledger_world(overage_policy=OveragePolicy.BLOCK)
    world.grant("other-only", "100", products=("other",))
    world.grant("future", "100", starts_at_ms=T + DAY_MS)
    world.grant("expired", "100", expires_at_ms=T + HOUR_MS)
    world.grant("ok", "20")
    estimate = world.engine.estimate("acme", "ai", {}, {"tokens": 30}, T + 2 * HOUR_MS)
    assert (estimate.allowed, estimate.reason, estimate.available) == (False, "INSUFFICIENT_CREDIT", picos("20"))


# Refunds (a price that falls gives back credits) -------------------------------------------------------------------


def gauge_world() -> World:
    """Two LATEST gauges, "p" and "q", one credit per unit, each on its own event type."""
    world = World()
    world.product("p", event_type="p", aggregation=Aggregation.LATEST, value_key="v", dimensions=())
    world.product("q", event_type="q", aggregation=Aggregation.LATEST, value_key="v", dimensions=())
    world.rate_card()
    world.version([rate("p", unit("1")), rate("q", unit("1"))])
    world.customer()
    world.contract()
    return world


def test_falling_gauge_returns_credits_to_the_grant_it_drew() -> None:
    world = gauge_world()
    world.grant("p-only", "100", products=("p",))
    world.ingest_one(event("up", T + 1, event_type="p", values={"v": 10}))  # +10 from p-only
    [entry] = world.ingest_one(event("down", T + 2, event_type="p", values={"v": 4}))  # -6
    assert ([(d.grant_id, d.credits) for d in entry.draws], entry.overage) == ([("p-only", -picos("6"))], 0)
    assert world.grant_by_id("p-only").drawn == picos("4")


def test_falling_gauge_gives_back_overage_first() -> None:
    world = gauge_world()
    world.grant("g", "10")
    world.ingest_one(event("up", T + 1, event_type="p", values={"v": 15}))  # 10 from g, 5 overage
    [entry] = world.ingest_one(event("down", T + 2, event_type="p", values={"v": 8}))  # -7: 5 overage, then 2
    assert (drawn_by_grant([entry]), entry.overage) == ({"g": -picos("2")}, -picos("5"))
    view = world.engine.balance("acme", T + 3)
    assert (view.period_charges, view.overage, view.remaining) == (picos("8"), 0, picos("2"))


def test_gauges_falling_to_zero_return_every_credit_they_drew() -> None:
    # "q" drew from the shared grant, "p" from its own. When both gauges fall back to 0, the period's net
    # charge is 0, so no credit may stay drawn, and every refund must be covered by grants or overage.
    world = gauge_world()
    world.grant("p-only", "100", priority=0, products=("p",))
    world.grant("shared", "100", priority=1, products=("p", "q"))
    world.ingest_one(event("p-up", T + 1, event_type="p", values={"v": 10}))  # 10 from p-only
    world.ingest_one(event("q-up", T + 2, event_type="q", values={"v": 10}))  # 10 from shared
    world.ingest_one(event("p-down", T + 3, event_type="p", values={"v": 0}))  # -10
    world.ingest_one(event("q-down", T + 4, event_type="q", values={"v": 0}))  # -10
    assert world.engine.state.accounts["acme"].period_charges == {T: 0}
    assert [e.charge - sum(d.credits for d in e.draws) - e.overage for e in world.entries] == [0, 0, 0, 0]
    assert {g.id: g.drawn for g in world.engine.state.accounts["acme"].grants} == {"p-only": 0, "shared": 0}


def test_gauge_falling_under_a_new_version_refunds_no_more_than_was_charged() -> None:
    # Version 1 prices the gauge at 1 a unit, version 2 (from T + 1h) at 5. The gauge was charged 10 under
    # version 1; falling to 1 under version 2 must not credit back more than those 10.
    world = gauge_world()
    world.version([rate("p", unit("5")), rate("q", unit("5"))], effective_from_ms=T + HOUR_MS)
    world.grant("g", "100")
    world.ingest_one(event("up", T + 1, event_type="p", values={"v": 10}))  # 10 x 1
    world.ingest_one(event("down", T + HOUR_MS, event_type="p", values={"v": 1}))
    [aggregate] = world.engine.state.accounts["acme"].aggregates.values()
    assert aggregate.amount >= 0
    assert all(v >= 0 for v in world.engine.state.accounts["acme"].period_charges.values())
    assert [e.charge - sum(d.credits for d in e.draws) - e.overage for e in world.entries] == [0, 0]


def test_estimate_prices_a_falling_gauge_as_a_negative_cost() -> None:
    world = gauge_world()
    world.grant("g", "10")
    world.ingest_one(event("up", T + 1, event_type="p", values={"v": 10}))
    estimate = world.engine.estimate("acme", "p", {}, {"v": 4.0}, T + 2)
    assert (estimate.allowed, estimate.reason, estimate.cost) == (True, "OK", -picos("6"))  # (4 - 10) x 1


def test_revenue_reverses_with_refunded_credits() -> None:
    world = gauge_world()
    world.grant("g", "10", paid="5")
    world.ingest_one(event("up", T + 1, event_type="p", values={"v": 10}))  # 10 credits -> 5 revenue
    [entry] = world.ingest_one(event("down", T + 2, event_type="p", values={"v": 4}))  # -6 credits -> -3
    assert [(d.credits, d.revenue) for d in entry.draws] == [(-picos("6"), -picos("3"))]
    assert world.grant_by_id("g").recognized_revenue == picos("2")  # 4 x 0.5


# Large amounts -------------------------------------------------------------------------------------------------


def test_amounts_beyond_64_bits_of_picos_survive_a_snapshot() -> None:
    """A billion credits is 10^21 picos: more than msgpack's 64-bit integers hold. The snapshot keeps it exactly."""
    world = ledger_world()
    world.grant("big", "999999999999", paid="899999999999.1")
    world.charge_of(event("t1", T + 1, values={"tokens": 7}))
    blob = world.engine.encode_snapshot()
    restored = Engine.from_snapshot(blob)
    [grant] = restored.state.accounts["acme"].grants
    assert grant.amount == picos("999999999999")
    assert grant.remaining == picos("999999999992")
    assert restored.encode_snapshot() == blob
