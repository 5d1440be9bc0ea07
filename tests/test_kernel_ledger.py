"""Grants in the kernel: burn order, applicability, grant lifetimes, overage, balances, Authorize estimates
and refunds of a falling price (docs/architecture.md §3, §5). Prices are one credit per token unless a test
says otherwise, so a charge of N tokens is N credits. Amounts are compared exactly, in picos."""

from __future__ import annotations

import pytest

from engine.contracts import OveragePolicy
from engine.products import Aggregation
from engine.ratecard import TierMode
from tests.engine_fixtures import DAY_MS, EPOCH_MS, HOUR_MS, World, basic_world, picos, rate, tiered, unit
from tests.kernel_fixtures import KernelWorld, usage_event

T = EPOCH_MS
NEVER = None


def loaded(world: World) -> KernelWorld:
    kernel = KernelWorld(world)
    kernel.load()
    return kernel


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
            {"b": "10", "a": "10", "c": "5"},
            id="priority-lower-first",
        ),
        pytest.param(
            [("a", 0, 30, ()), ("b", 0, 10, ()), ("c", 0, NEVER, ())],
            {"b": "10", "a": "10", "c": "5"},
            id="then-earliest-expiry",
        ),
        pytest.param(
            [("a", 0, NEVER, ()), ("b", 0, NEVER, ("tokens", "other")), ("c", 0, NEVER, ("tokens",))],
            {"c": "10", "b": "10", "a": "5"},
            id="then-narrowest-applicability",
        ),
        pytest.param(
            [("a", 0, NEVER, ()), ("b", 0, NEVER, ()), ("c", 0, NEVER, ())],
            {"a": "10", "b": "10", "c": "5"},
            id="then-creation-order",
        ),
        pytest.param(
            [("a", 1, 1, ()), ("b", 0, NEVER, ()), ("c", 2, NEVER, ())],
            {"b": "10", "a": "10", "c": "5"},
            id="priority-beats-expiry",
        ),
        pytest.param(
            [("a", 0, NEVER, ("tokens",)), ("b", 0, 5, ()), ("c", 0, NEVER, ())],
            {"b": "10", "a": "10", "c": "5"},
            id="expiry-beats-narrowness",
        ),
        pytest.param(
            [("a", 0, NEVER, ()), ("b", 0, NEVER, ("tokens",)), ("c", 0, NEVER, ("tokens", "other"))],
            {"b": "10", "c": "10", "a": "5"},
            id="narrowness-beats-creation-order",
        ),
    ],
)
def test_burn_order(grants: list[GrantRow], draws: dict[str, str]) -> None:
    world = ledger_world()
    for grant_id, priority, expires_days, products in grants:
        expires = None if expires_days is None else T + expires_days * DAY_MS
        world.grant(grant_id, "10", priority=priority, expires_at_ms=expires, products=products)
    kernel = loaded(world)
    kernel.charge_of(usage_event("t1", T + HOUR_MS, {"tokens": 25}))
    assert kernel.drawn_by_grant(T + HOUR_MS) == {g: picos(c) for g, c in draws.items()}
    assert kernel.balance(T + HOUR_MS)["overage"] == 0


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
    kernel = loaded(world)
    kernel.charge_of(usage_event("t1", T + HOUR_MS, {"tokens": 10}))
    balance = kernel.balance(T + HOUR_MS)
    assert (kernel.drawn_by_grant(T + HOUR_MS)["g"], balance["overage"]) == (
        (picos("10"), 0) if covered else (0, picos("10"))
    )


@pytest.mark.parametrize(
    ("starts_at_ms", "expires_at_ms", "event_ts_ms", "received_ms", "covered"),
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
    starts_at_ms: int, expires_at_ms: int | None, event_ts_ms: int, received_ms: int, covered: bool
) -> None:
    world = ledger_world()
    world.grant("g", "100", starts_at_ms=starts_at_ms, expires_at_ms=expires_at_ms)
    kernel = loaded(world)
    kernel.charge_of(usage_event("t1", event_ts_ms, {"tokens": 10}), received_ms)
    assert kernel.drawn_by_grant(event_ts_ms)["g"] == (picos("10") if covered else 0)
    assert kernel.balance(event_ts_ms)["overage"] == (0 if covered else picos("10"))


def test_overage_when_grants_run_out() -> None:
    world = basic_world(overage_price="0.5")
    world.grant("g", "10")
    kernel = loaded(world)
    kernel.charge_of(usage_event("t1", T + HOUR_MS, {"tokens": 25}))
    balance = kernel.balance(T + 2 * HOUR_MS)
    assert kernel.drawn_by_grant(T + 2 * HOUR_MS) == {"g": picos("10")}
    assert balance["period_charges"] == picos("25")  # everything charged, covered or not
    assert balance["overage"] == picos("15")  # 25 - 10
    assert balance["overage_due_e30"] == 75 * 10**29  # 15 x overage_price 0.5 = 7.5
    assert balance["remaining"] == 0


def test_overage_accumulates_over_the_period() -> None:
    world = basic_world()
    world.grant("g", "10")
    kernel = loaded(world)
    kernel.charge_of(usage_event("t1", T + HOUR_MS, {"tokens": 6}))  # covered
    kernel.charge_of(usage_event("t2", T + 2 * HOUR_MS, {"tokens": 6}))  # 4 covered, 2 overage
    kernel.charge_of(usage_event("t3", T + 3 * HOUR_MS, {"tokens": 3}))  # overage
    balance = kernel.balance(T + 4 * HOUR_MS)
    assert (balance["period_charges"], balance["overage"]) == (picos("15"), picos("5"))  # 6 + 6 + 3; 2 + 3


# Balances ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("now_ms", "remaining", "expired", "usable"),
    [
        # "g": 10 credits, 3 drawn, expires at T + 10 days; "later": 5 credits from T + 5 days.
        pytest.param(T + 2 * DAY_MS, {"g": "7", "later": "5"}, {"g": "0", "later": "0"}, "7", id="before-later"),
        pytest.param(T + 5 * DAY_MS, {"g": "7", "later": "5"}, {"g": "0", "later": "0"}, "12", id="both-usable"),
        pytest.param(T + 10 * DAY_MS - 1, {"g": "7", "later": "5"}, {"g": "0", "later": "0"}, "12", id="last-ms"),
        pytest.param(T + 10 * DAY_MS, {"g": "0", "later": "5"}, {"g": "7", "later": "0"}, "5", id="g-expired"),
    ],
)
def test_balance_expired_vs_remaining(
    now_ms: int, remaining: dict[str, str], expired: dict[str, str], usable: str
) -> None:
    world = basic_world()
    world.grant("g", "10", expires_at_ms=T + 10 * DAY_MS)
    world.grant("later", "5", starts_at_ms=T + 5 * DAY_MS)
    kernel = loaded(world)
    kernel.charge_of(usage_event("t1", T + DAY_MS, {"tokens": 3}))
    balance = kernel.balance(now_ms)
    assert {g[0]: g[2] for g in balance["grants"]} == {k: picos(v) for k, v in remaining.items()}
    assert {g[0]: g[3] for g in balance["grants"]} == {k: picos(v) for k, v in expired.items()}
    assert balance["remaining"] == picos(usable)
    for _grant_id, granted, grant_remaining, grant_expired, drawn in balance["grants"]:
        assert granted == drawn + grant_remaining + grant_expired


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
    kernel = loaded(world)
    before = kernel.kernel.snapshot()
    got_allowed, got_reason, _message, cost, available = kernel.authorize({"tokens": 30}, T + HOUR_MS)
    assert (got_allowed, got_reason) == (allowed, reason)
    assert cost == picos("30")  # 30 tokens x 1
    assert available == (picos(grant) if grant is not None else 0)
    assert kernel.kernel.snapshot() == before  # a read changes nothing


@pytest.mark.parametrize(
    ("customer_id", "values", "reason"),
    [
        pytest.param("ghost", {"tokens": 1.0}, "UNKNOWN_CUSTOMER", id="unknown-customer"),
        pytest.param("acme", {"tokens": -1.0}, "INVALID_REQUEST", id="negative-value"),
        pytest.param("acme", {}, "INVALID_REQUEST", id="missing-value-key"),
    ],
)
def test_authorize_refuses_what_ingestion_would_reject(customer_id: str, values: dict[str, float], reason: str) -> None:
    kernel = loaded(basic_world())
    allowed, got_reason, _message, cost, _available = kernel.authorize(values, T + HOUR_MS, customer_id=customer_id)
    assert (allowed, got_reason, cost) == (False, reason, 0)


def test_authorize_cost_equals_what_ingesting_the_event_charges() -> None:
    # Graduated tiers: 100 at 1, 100 at 0.5, then 0.25. 150 tokens already used this period.
    world = basic_world([rate("tokens", tiered(TierMode.GRADUATED, ("100", "1"), ("200", "0.5"), ("", "0.25")))])
    world.grant("g", "1000", paid="500")
    kernel = loaded(world)
    kernel.charge_of(usage_event("t0", T + HOUR_MS, {"tokens": 150}))
    now = T + 2 * HOUR_MS
    cost = kernel.authorize({"tokens": 100}, now)[3]
    # price(250) - price(150) = (100 + 50 + 12.5) - (100 + 25) = 37.5
    assert cost == picos("37.5")
    assert kernel.charge_of(usage_event("t1", now, {"tokens": 100})) == cost


def test_authorize_counts_only_grants_usable_now_for_the_product() -> None:
    world = ledger_world(overage_policy=OveragePolicy.BLOCK)
    world.grant("other-only", "100", products=("other",))
    world.grant("future", "100", starts_at_ms=T + DAY_MS)
    world.grant("expired", "100", expires_at_ms=T + HOUR_MS)
    world.grant("ok", "20")
    allowed, reason, _message, _cost, available = loaded(world).authorize({"tokens": 30}, T + 2 * HOUR_MS)
    assert (allowed, reason, available) == (False, "INSUFFICIENT_CREDIT", picos("20"))


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
    kernel = loaded(world)
    kernel.charge_of(usage_event("up", T + 1, {"v": 10}, event_type="p"))  # +10 from p-only
    assert kernel.charge_of(usage_event("down", T + 2, {"v": 4}, event_type="p")) == -picos("6")
    assert kernel.drawn_by_grant(T + 3) == {"p-only": picos("4")}
    assert kernel.balance(T + 3)["overage"] == 0


def test_falling_gauge_gives_back_overage_first() -> None:
    world = gauge_world()
    world.grant("g", "10")
    kernel = loaded(world)
    kernel.charge_of(usage_event("up", T + 1, {"v": 15}, event_type="p"))  # 10 from g, 5 overage
    kernel.charge_of(usage_event("down", T + 2, {"v": 8}, event_type="p"))  # -7: 5 overage, then 2
    balance = kernel.balance(T + 3)
    assert (balance["period_charges"], balance["overage"], balance["remaining"]) == (picos("8"), 0, picos("2"))


def test_gauges_falling_to_zero_return_every_credit_they_drew() -> None:
    # "q" drew from the shared grant, "p" from its own. When both gauges fall back to 0, the period's net
    # charge is 0, so no credit may stay drawn.
    world = gauge_world()
    world.grant("p-only", "100", priority=0, products=("p",))
    world.grant("shared", "100", priority=1, products=("p", "q"))
    kernel = loaded(world)
    kernel.charge_of(usage_event("p-up", T + 1, {"v": 10}, event_type="p"))  # 10 from p-only
    kernel.charge_of(usage_event("q-up", T + 2, {"v": 10}, event_type="q"))  # 10 from shared
    kernel.charge_of(usage_event("p-down", T + 3, {"v": 0}, event_type="p"))  # -10
    kernel.charge_of(usage_event("q-down", T + 4, {"v": 0}, event_type="q"))  # -10
    balance = kernel.balance(T + 5)
    assert (balance["period_charges"], balance["overage"]) == (0, 0)
    assert kernel.drawn_by_grant(T + 5) == {"p-only": 0, "shared": 0}


def test_gauge_falling_under_a_new_version_refunds_no_more_than_was_charged() -> None:
    # Version 1 prices the gauge at 1 a unit, version 2 (from T + 1h) at 5. The gauge was charged 10 under
    # version 1; falling to 1 under version 2 must not credit back more than those 10.
    world = gauge_world()
    world.version([rate("p", unit("5")), rate("q", unit("5"))], effective_from_ms=T + HOUR_MS)
    world.grant("g", "100")
    kernel = loaded(world)
    kernel.charge_of(usage_event("up", T + 1, {"v": 10}, event_type="p"))  # 10 x 1
    kernel.charge_of(usage_event("down", T + HOUR_MS, {"v": 1}, event_type="p"))
    assert kernel.charged() >= 0
    balance = kernel.balance(T + HOUR_MS)
    assert balance["period_charges"] >= 0
    assert balance["period_charges"] == kernel.drawn_by_grant(T + HOUR_MS)["g"] + balance["overage"]


def test_estimate_prices_a_falling_gauge_as_a_negative_cost() -> None:
    world = gauge_world()
    world.grant("g", "10")
    kernel = loaded(world)
    kernel.charge_of(usage_event("up", T + 1, {"v": 10}, event_type="p"))
    allowed, reason, _message, cost, _available = kernel.authorize({"v": 4.0}, T + 2, event_type="p")
    assert (allowed, reason, cost) == (True, "OK", -picos("6"))  # (4 - 10) x 1
