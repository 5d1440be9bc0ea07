"""The money defects an independent audit found in the Python engine, each as a regression test of the kernel.

Numbers are the audit's. Amounts are picos (10^-12 of the pricing unit).
"""

from __future__ import annotations

import pytest

from engine.contracts import OveragePolicy
from engine.errors import InvalidArgument
from engine.ratecard import Severity, TierMode, validate
from engine.tables import compile_tables
from tests.engine_fixtures import EPOCH_MS, HOUR_MS, World, flat, package, picos, rate, tiered, unit
from tests.kernel_fixtures import KernelWorld, usage_event

NOW = EPOCH_MS + HOUR_MS


def two_products(
    *, policy: OveragePolicy, grant_products: tuple[str, ...], grant: str, b_first: bool = False
) -> KernelWorld:
    """pA: SUM of `a` at 1 a unit; pB: SUM of `b`, VOLUME up to 100 at 1, beyond at 0.5; one grant."""
    world = World()
    order = ["pB", "pA"] if b_first else ["pA", "pB"]
    for product_id in order:
        world.product(product_id, value_key=product_id[1].lower(), dimensions=())
    world.rate_card()
    world.version([rate("pA", unit("1")), rate("pB", tiered(TierMode.VOLUME, ("100", "1"), ("", "0.5")))])
    world.customer()
    world.contract(overage_policy=policy)
    world.grant("g", grant, paid=grant, products=grant_products)
    kernel = KernelWorld(world)
    kernel.load()
    ack = kernel.ingest([usage_event("t1", EPOCH_MS + 1, {"a": 0, "b": 100})], NOW)
    assert ack.accepted == 1
    return kernel


def test_authorize_denies_a_positive_charge_that_no_usable_credit_covers_even_when_the_net_cost_is_negative() -> None:
    kernel = two_products(policy=OveragePolicy.BLOCK, grant_products=("pB",), grant="200")
    allowed, reason, _, cost, _ = kernel.authorize({"a": 40, "b": 1}, NOW)
    assert (allowed, reason) == (False, "INSUFFICIENT_CREDIT")
    assert cost == picos("-9.5")  # +40 for pA, -49.5 for pB
    # Ingesting it anyway (usage that happened is recorded): pA's 40 is overage, pB's refund returns to its grant.
    kernel.ingest([usage_event("t2", EPOCH_MS + 2, {"a": 40, "b": 1})], NOW)
    assert kernel.balance(NOW)["overage"] == picos("40")
    assert kernel.remaining_by_grant(NOW) == {"g": picos("149.5")}


def test_authorize_on_an_allow_contract_reports_the_overage_a_positive_charge_would_cause() -> None:
    kernel = two_products(policy=OveragePolicy.ALLOW, grant_products=("pB",), grant="200")
    allowed, reason, _, _, _ = kernel.authorize({"a": 40, "b": 1}, NOW)
    assert (allowed, reason) == (True, "OVERAGE_ALLOWED")


@pytest.mark.parametrize("b_first", [False, True], ids=["A-then-B", "B-then-A"])
def test_an_events_refunds_and_charges_are_netted_whatever_the_product_creation_order(b_first: bool) -> None:
    kernel = two_products(policy=OveragePolicy.ALLOW, grant_products=(), grant="100", b_first=b_first)
    assert kernel.remaining_by_grant(NOW) == {"g": 0}
    kernel.ingest([usage_event("t2", EPOCH_MS + 2, {"a": 40, "b": 1})], NOW)
    # 100 + 40 - 49.5 = 90.5 charged against 100 credits.
    balance = kernel.balance(NOW)
    assert balance["overage"] == 0
    assert kernel.remaining_by_grant(NOW) == {"g": picos("9.5")}
    assert balance["period_charges"] == picos("90.5")


def override_world(price_spec: object, override_price: str) -> KernelWorld:
    world = World()
    world.product("p", dimensions=())
    world.rate_card()
    world.version([rate("p", price_spec)])  # type: ignore[arg-type]
    world.customer()
    world.contract()
    world.override("p", price=override_price)
    kernel = KernelWorld(world)
    kernel.load()
    return kernel


def test_an_override_price_on_graduated_tiers_is_a_unit_price_per_the_rates_per_units() -> None:
    graduated = tiered(TierMode.GRADUATED, ("1000000", "0.03"), ("", "0.01"), per_units="1000")
    kernel = override_world(graduated, "0.02")
    assert kernel.authorize({"tokens": 5000}, NOW)[3] == picos("0.1")
    kernel.ingest([usage_event("t1", EPOCH_MS + 1, {"tokens": 5000})], NOW)
    assert kernel.balance(NOW)["period_charges"] == picos("0.1")  # 5 x 0.02, not 5000 x 0.02


def test_an_override_price_on_a_flat_rate_is_the_flat_fee() -> None:
    kernel = override_world(flat("10"), "8")
    assert kernel.authorize({"tokens": 5}, NOW)[3] == picos("8")
    kernel.ingest([usage_event("t1", EPOCH_MS + 1, {"tokens": 5}), usage_event("t2", EPOCH_MS + 2, {"tokens": 5})], NOW)
    assert kernel.balance(NOW)["period_charges"] == picos("8")


def test_an_override_price_on_packages_is_the_package_price() -> None:
    kernel = override_world(package("10", "3"), "2")
    kernel.ingest([usage_event("t1", EPOCH_MS + 1, {"tokens": 11})], NOW)
    assert kernel.balance(NOW)["period_charges"] == picos("4")  # 2 started packages of 10, at 2 each


def test_overage_due_is_exact_beyond_28_digits() -> None:
    world = World()
    world.product("p", dimensions=())
    world.rate_card()
    world.version([rate("p", unit("1"))])
    world.customer()
    world.contract(overage_price="1.000000000001")
    kernel = KernelWorld(world)
    kernel.load()
    kernel.ingest(
        [
            usage_event("t1", EPOCH_MS + 1, {"tokens": 123456789012345}),
            usage_event("t2", EPOCH_MS + 2, {"tokens": 0.67}),
        ],
        NOW,
    )
    balance = kernel.balance(NOW)
    assert balance["overage"] == picos("123456789012345.67")
    assert balance["overage_due_e30"] == 123456789012469_12678901234567 * 10**16


def test_a_usage_value_finer_than_18_decimal_places_is_refused_not_rounded() -> None:
    world = World()
    world.product("p", dimensions=())
    world.rate_card()
    world.version([rate("p", package("1", "1"))])
    world.customer()
    world.contract()
    kernel = KernelWorld(world)
    kernel.load()
    ack = kernel.ingest([usage_event("t1", EPOCH_MS + 1, {"tokens": 1e-50})], NOW)
    assert [(r.reason, r.message) for r in ack.rejected] == [
        (1, "values['tokens'] is 1e-50: more than 18 decimal places cannot be held exactly")
    ]
    kernel.ingest([usage_event("t2", EPOCH_MS + 2, {"tokens": 1e14})], NOW)
    assert kernel.balance(NOW)["period_charges"] == picos("100000000000000")


def test_a_literal_price_finer_than_18_decimal_places_is_refused_not_rounded() -> None:
    world = World()
    world.product("p", dimensions=())
    world.rate_card()
    draft = world.draft([rate("p", unit("0.0000000000000000004"))])
    [finding] = validate(draft, world.engine.state.products)
    assert (finding.severity, finding.path) == (Severity.ERROR, "rates[0].unit.price")
    assert "more than 18 decimal places" in finding.message
    with pytest.raises(InvalidArgument) as refused:
        world.publish(draft.number)
    assert [field for field, _ in refused.value.violations] == ["version.rates[0].unit.price"]
    compile_tables(world.engine.state)  # nothing published: nothing for the tables to refuse


def test_the_per_event_value_limit_is_enforced() -> None:
    world = World()
    world.product("p", dimensions=())
    world.rate_card()
    world.version([rate("p", unit("1"))])
    world.customer()
    world.contract()
    kernel = KernelWorld(world)
    kernel.load()
    ack = kernel.ingest([usage_event("t1", EPOCH_MS + 1, {"tokens": 1e15})], NOW)
    assert [r.message for r in ack.rejected] == ["values['tokens'] is 1000000000000000.0: must be below 1e+15"]
    assert kernel.ingest([usage_event("t2", EPOCH_MS + 1, {"tokens": 999999999999999.9})], NOW).accepted == 1
    assert kernel.balance(NOW)["period_charges"] == picos("999999999999999.9")
