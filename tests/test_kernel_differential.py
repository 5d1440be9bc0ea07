"""The kernel against the hand-written oracle (tests/reference_billing.py), on generated worlds.

Hypothesis generates a catalogue (every aggregation and price model, filters, a more specific rate, several
products per event type, in any creation order), a contract (ALLOW or BLOCK, overrides), grants (priorities,
expiries, start times, applicability) and batches of events (duplicates, conflicts, invalid and extreme
values, future timestamps). The world is set up through the Python control plane, compiled by engine.tables
and rated by the kernel from UsageBatch bytes; the oracle rates the same events by hand. Every ack, bucket,
grant balance and an Authorize estimate must agree exactly.

Half the worlds also end their contract (EndContract, up to 4 times, between batches; tests/contract_ends.py
draws the steps as the wire differential does), each requested at a time of its own: a moment in the 50 days the
events span, or one before an event's date, or the end held once passed. The ends are drawn from that time (before
it: refused; just after it; the coming hour boundaries, on and off them), from the dates of the events at or after
it, sent or not (a millisecond before, at and after one, an hour before, its hour, the next hour), from the
contract's start, or the end held (a retry). The control plane's answer (taken, a retry, or the refusal and the
hour of usage it names, read from the kernel's hours) must be the oracle's, and the end it holds the oracle's;
usage dated at or after the end is then NO_ACTIVE_CONTRACT, Authorize too.

Short budgets by default; TARIFF_KERNEL_EXAMPLES raises them (make soak).
"""

from __future__ import annotations

import dataclasses
import decimal
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from engine.contracts import OveragePolicy
from engine.products import Aggregation
from engine.ratecard import PriceSpec, TierMode
from tests.contract_ends import EndStep, end_at, end_steps, engine_end
from tests.engine_fixtures import EPOCH_MS, HOUR_MS, MINUTE_MS, World, flat, package, rate, tiered, unit
from tests.kernel_fixtures import KernelWorld, usage_event
from tests.reference_billing import (
    RATING,
    Curve,
    ReferenceRating,
    REvent,
    RGrant,
    ROverride,
    RProduct,
    RRate,
)

EXAMPLES = int(os.environ.get("TARIFF_KERNEL_EXAMPLES", "30"))
DAY_MS = 24 * HOUR_MS
PICOS = Decimal(10) ** 12
SCALE = Decimal(10) ** 18
REASONS = {1: "INVALID_EVENT", 2: "UNKNOWN_CUSTOMER", 3: "NO_ACTIVE_CONTRACT", 4: "TIMESTAMP_OUT_OF_RANGE"}
REASONS |= {5: "PERIOD_CLOSED", 6: "DUPLICATE_CONFLICT", 7: "NO_APPLICABLE_RATE"}
PROFILE = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)


@dataclass(frozen=True)
class ProductSpec:
    id: str
    event_type: str
    aggregation: Aggregation
    value_key: str
    filters: tuple[tuple[str, str], ...]
    dimensions: tuple[str, ...]
    curve: Curve
    specific: Curve | None  # a rate for model=m1, more specific than the default
    override: tuple[str, Decimal] | None  # ("price" | "multiplier", value)
    # False: the product has only its model=m1 rate, so other usage of it is NO_APPLICABLE_RATE.
    default_rate: bool = True
    empty_count_missing: bool = True  # as the server sets it; False: a product journaled before it was
    empty_filter_missing: bool = True  # likewise


@dataclass(frozen=True)
class GrantSpec:
    id: str
    amount: Decimal
    priority: int
    products: tuple[str, ...]
    starts_at_ms: int
    expires_at_ms: int | None


@dataclass(frozen=True)
class Scenario:
    products: tuple[ProductSpec, ...]  # in creation order
    block: bool
    grants: tuple[GrantSpec, ...]
    batches: tuple[tuple[REvent, ...], ...]
    received_ms: tuple[int, ...]
    probe: REvent
    # EndContract of the contract, in order, each before the batch it names (after the last: len(batches)), and
    # the time each is requested at (`at_ms` of its command; the oracle's `now`).
    ends: tuple[EndStep, ...] = ()
    end_clock: tuple[int, ...] = ()


def decimals(low: int, high: int, places: int) -> st.SearchStrategy[Decimal]:
    return st.integers(low * 10**places, high * 10**places).map(lambda n: Decimal(n).scaleb(-places))


# Prices near the limits: with quantities near 10^15 a line's price, or a period's charges, pass 128-bit picos.
HUGE_PRICES = st.sampled_from(
    [Decimal("123456789.123456789"), Decimal("99999999999.999999999"), Decimal("999999999999999999.999999999999999999")]
)


@st.composite
def curves(draw: st.DrawFn, *, huge: bool = False) -> Curve:
    model = draw(st.sampled_from(["UNIT", "GRADUATED", "VOLUME", "PACKAGE", "FLAT"]))
    price = draw(decimals(0, 50, 4) if not huge or draw(st.integers(0, 4)) else HUGE_PRICES)
    if model == "UNIT":
        return Curve("UNIT", price=price, per_units=draw(st.sampled_from([Decimal(1), Decimal(1000), Decimal(3)])))
    if model == "PACKAGE":
        return Curve("PACKAGE", price=price, size=draw(st.sampled_from([Decimal(1), Decimal(10), Decimal("2.5")])))
    if model == "FLAT":
        return Curve("FLAT", price=price)
    bounds = sorted(draw(st.sets(st.integers(1, 200), min_size=1, max_size=3)))
    tiers: list[tuple[Decimal | None, Decimal, Decimal]] = [
        (Decimal(b), draw(decimals(0, 5, 3)), draw(decimals(0, 3, 2))) for b in bounds
    ]
    tiers.append((None, draw(decimals(0, 5, 3)), draw(decimals(0, 3, 2))))
    per_units = draw(st.sampled_from([Decimal(1), Decimal(100)]))
    return Curve(model, per_units=per_units, tiers=tuple(tiers))


@st.composite
def products(draw: st.DrawFn, *, unpriced: bool = False) -> tuple[ProductSpec, ...]:
    """unpriced: some products with a model=m1 rate have no default rate (the wire test's versions need one)."""
    count = draw(st.integers(1, 4))
    specs = []
    for index in range(count):
        aggregation = draw(st.sampled_from(list(Aggregation)))
        value_key = {Aggregation.COUNT: "", Aggregation.UNIQUE_COUNT: "user"}.get(
            aggregation, draw(st.sampled_from("ab"))
        )
        dimensions = draw(st.sampled_from([(), ("model",), ("model", "region")]))
        override = draw(
            st.one_of(
                st.none(),
                st.tuples(st.just("price"), decimals(0, 20, 3)),
                st.tuples(st.just("multiplier"), decimals(0, 3, 6)),
                st.tuples(st.just("multiplier"), st.sampled_from([Decimal(1), Decimal("0.999999999999999999")])),
            )
        )
        specific = draw(st.none() | curves()) if "model" in dimensions else None
        specs.append(
            ProductSpec(
                id=f"p{index}",
                event_type=draw(st.sampled_from(["ai", "ai", "io"])),
                aggregation=aggregation,
                value_key=value_key,
                filters=draw(st.sampled_from([(), (("region", "eu"),), (("region", ""),)])),
                dimensions=dimensions,
                curve=draw(curves(huge=unpriced)),
                specific=specific,
                override=override,
                empty_count_missing=draw(st.booleans()) if unpriced else True,
                empty_filter_missing=draw(st.booleans()) if unpriced else True,
                default_rate=not (unpriced and specific is not None and draw(st.integers(0, 3)) == 0),
            )
        )
    return tuple(draw(st.permutations(specs)))


VALUES = st.one_of(
    st.integers(0, 1000).map(float),
    st.integers(0, 1000).map(float),
    decimals(0, 100, 3).map(float),
    decimals(0, 100, 3).map(float),
    st.sampled_from([0.0, 1e-18, 999999999999999.9, 1e15, -1.0, float("nan"), 1e-19, 0.1, 2.5]),
)


@st.composite
def events(draw: st.DrawFn, index: int) -> REvent:
    dimensions: dict[str, str] = {"model": draw(st.sampled_from(["m1", "m2"]))}
    if draw(st.booleans()):
        dimensions["region"] = draw(st.sampled_from(["eu", "us", ""]))
    if draw(st.integers(0, 5)):
        dimensions["user"] = draw(st.sampled_from(["u1", "u2", "u3", ""]))
    values = {key: draw(VALUES) for key in draw(st.sets(st.sampled_from("ab"), max_size=2))}
    return REvent(
        transaction_id=f"t{draw(st.integers(0, index))}",  # reuse ids: duplicates and conflicts
        customer_id=draw(st.sampled_from(["acme"] * 9 + ["ghost"])),
        event_type=draw(st.sampled_from(["ai", "ai", "io"])),
        timestamp_ms=EPOCH_MS + draw(st.sampled_from([-1] + [0] * 9)) * HOUR_MS + draw(st.integers(0, 45 * DAY_MS)),
        dimensions=tuple(sorted(dimensions.items())),
        values=tuple(sorted(values.items())),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    catalogue = draw(products(unpriced=True))
    ids = [p.id for p in catalogue]
    grants = tuple(
        GrantSpec(
            id=f"g{n}",
            amount=draw(decimals(1, 300, 2)),
            priority=draw(st.integers(0, 2)),
            products=tuple(sorted(draw(st.sets(st.sampled_from(ids), max_size=2)))),
            starts_at_ms=EPOCH_MS + draw(st.sampled_from([0, 0, 10 * DAY_MS])),
            expires_at_ms=draw(st.sampled_from([None, None, EPOCH_MS + 20 * DAY_MS, EPOCH_MS + 60 * DAY_MS])),
        )
        for n in range(draw(st.integers(0, 3)))
    )
    all_events = [draw(events(i)) for i in range(draw(st.integers(1, 25)))]
    for _ in range(draw(st.integers(0, 3))):  # identical resends
        all_events.append(all_events[draw(st.integers(0, len(all_events) - 1))])
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(all_events) - 1)), max_size=3)))
    batches = tuple(tuple(all_events[a:b]) for a, b in zip([0, *cuts], [*cuts, len(all_events)], strict=True) if a < b)
    latest = max(e.timestamp_ms for e in all_events)
    received = tuple(draw(st.sampled_from([latest, latest - 10 * 60 * 1000, EPOCH_MS + 50 * DAY_MS])) for _ in batches)
    probe = draw(events(0))
    probe = REvent(
        "probe", "acme", probe.event_type, EPOCH_MS + 50 * DAY_MS, probe.dimensions, (("a", 3.0), ("b", 7.5))
    )
    ends = draw(end_steps(len(batches)))
    # When each end is requested: any moment of the events' span, or shortly before the date of an event sent
    # before it (so that ends drawn from "now" fall among the dates of usage recorded, and of usage still to come).
    end_clock = tuple(draw(end_times(batches, step)) for step in ends)
    return Scenario(catalogue, draw(st.booleans()), grants, batches, received, probe, ends, end_clock)


def end_times(batches: Sequence[Sequence[REvent]], step: EndStep) -> st.SearchStrategy[int]:
    sent = [e.timestamp_ms for batch in batches[: step.before_batch] for e in batch]
    dates = sorted(set(sent or [e.timestamp_ms for batch in batches for e in batch]))
    before = st.sampled_from([0, 1, 10 * MINUTE_MS, HOUR_MS, DAY_MS])
    return st.one_of(
        st.integers(EPOCH_MS, EPOCH_MS + 50 * DAY_MS),
        st.tuples(st.sampled_from(dates), before).map(lambda dated: dated[0] - dated[1]),
    )


def price_spec(curve: Curve) -> PriceSpec:
    text = str
    match curve.model:
        case "UNIT":
            return unit(text(curve.price), text(curve.per_units))
        case "PACKAGE":
            return package(text(curve.size), text(curve.price))
        case "FLAT":
            return flat(text(curve.price))
    mode = TierMode.VOLUME if curve.model == "VOLUME" else TierMode.GRADUATED
    tiers = [("" if up is None else text(up), text(unit_price), text(fee)) for up, unit_price, fee in curve.tiers]
    return tiered(mode, *tiers, per_units=text(curve.per_units))


def build_kernel(scenario: Scenario) -> KernelWorld:
    world = World()
    for p in scenario.products:
        world.product(
            p.id,
            event_type=p.event_type,
            aggregation=p.aggregation,
            value_key=p.value_key,
            dimensions=p.dimensions,
            filters=dict(p.filters),
            empty_count_missing=p.empty_count_missing,
            empty_filter_missing=p.empty_filter_missing,
        )
    world.rate_card()
    rates = [rate(p.id, price_spec(p.curve)) for p in scenario.products if p.default_rate]
    rates += [rate(p.id, price_spec(p.specific), model="m1") for p in scenario.products if p.specific is not None]
    world.version(rates)
    world.customer()
    world.contract(overage_policy=OveragePolicy.BLOCK if scenario.block else OveragePolicy.ALLOW)
    for n, p in enumerate(scenario.products):
        if p.override is not None:
            kind, value = p.override
            price, multiplier = (str(value), None) if kind == "price" else (None, str(value))
            world.override(p.id, override_id=f"o{n}", price=price, multiplier=multiplier, multiplier_reduced=True)
    for g in scenario.grants:
        world.grant(
            g.id,
            str(g.amount),
            priority=g.priority,
            products=g.products,
            starts_at_ms=g.starts_at_ms,
            expires_at_ms=g.expires_at_ms,
        )
    kernel = KernelWorld(world, refunds_netted=True)  # as the server rates batches
    kernel.load()
    return kernel


def oracle_catalogue(specs: Sequence[ProductSpec]) -> tuple[list[RProduct], list[RRate]]:
    """The oracle's products and version 1's rates (each product's default rate, and its model=m1 one if any)."""
    products = [
        RProduct(
            p.id,
            p.event_type,
            p.aggregation.value,
            p.value_key,
            p.filters,
            p.dimensions,
            p.empty_count_missing,
            p.empty_filter_missing,
        )
        for p in specs
    ]
    rates = [RRate(p.id, (), p.curve) for p in specs if p.default_rate]
    rates += [RRate(p.id, (("model", "m1"),), p.specific) for p in specs if p.specific is not None]
    return products, rates


def oracle_grants(specs: Sequence[GrantSpec]) -> list[RGrant]:
    """The oracle's grants, burn ties broken by creation order."""
    return [
        RGrant(g.id, g.amount * PICOS, g.priority, g.products, g.starts_at_ms, g.expires_at_ms, n)
        for n, g in enumerate(specs)
    ]


def build_oracle(scenario: Scenario) -> ReferenceRating:
    products, rates = oracle_catalogue(scenario.products)
    overrides = [
        ROverride(
            p.id,
            p.override[1] if p.override[0] == "price" else None,
            p.override[1] if p.override[0] == "multiplier" else None,
        )
        for p in scenario.products
        if p.override is not None
    ]
    return ReferenceRating(
        products,
        rates,
        overrides,
        oracle_grants(scenario.grants),
        customer_id="acme",
        contract_start_ms=EPOCH_MS,
        block=scenario.block,
    )


def wire_event(event: REvent) -> object:
    return usage_event(
        event.transaction_id,
        event.timestamp_ms,
        dict(event.values),
        customer_id=event.customer_id,
        event_type=event.event_type,
        dimensions=dict(event.dimensions),
    )


def period_start_ms(period: tuple[int, int]) -> int:
    return int(datetime(period[0], period[1], 1, tzinfo=UTC).timestamp()) * 1000


def oracle_usage(oracle: ReferenceRating) -> list[tuple[object, ...]]:
    rows = []
    for (period, product_id, dimensions), a in oracle.aggregates.items():
        drawn = sorted((grant_id, int(credits)) for grant_id, credits in a.drawn.items())
        quantity = RATING.multiply(a.quantity, SCALE)  # exact: up to 34 digits, past the default context's 28
        assert quantity == int(quantity)
        rows.append(
            (
                period_start_ms(period),
                product_id,
                list(dimensions),
                int(quantity),
                a.events,
                int(a.amount),
                int(a.overage),
                drawn,
            )
        )
    return sorted(rows)


def kernel_usage(kernel: KernelWorld) -> list[tuple[object, ...]]:
    usage = kernel.kernel.usage("acme")
    assert usage is not None
    aggregates, _ = usage
    return sorted((*row[:7], sorted(row[7])) for row in aggregates)


def huge_event(transaction_id: str, model: str) -> REvent:
    return REvent(transaction_id, "acme", "ai", EPOCH_MS + HOUR_MS, (("model", model),), (("a", 999999999999999.9),))


# Two lines of one period each priced just below 2^127 picos (99999999999.999999999 x 999999999999999.9 =
# 9.99... x 10^37 picos): the second event takes the period's charges past 128 bits, INVALID_EVENT; the probe too.
TOTALS_PAST_128_BITS = Scenario(
    (
        ProductSpec(
            "p0",
            "ai",
            Aggregation.SUM,
            "a",
            (),
            ("model",),
            Curve("UNIT", price=Decimal("99999999999.999999999")),
            None,
            None,
        ),
    ),
    False,
    (),
    ((huge_event("t0", "m1"), huge_event("t1", "m2")),),
    (EPOCH_MS + 2 * HOUR_MS,),
    huge_event("probe", "m3"),
)


# 999999999999999.9 units at 123456789.123456789 under a multiplier of 0.999999999999999999: 1.2 x 10^35 picos,
# in range (the kernel once multiplied all three at 10^-18 in 256 bits first, and refused it).
MULTIPLIED_IN_RANGE = dataclasses.replace(
    TOTALS_PAST_128_BITS,
    products=(
        dataclasses.replace(
            TOTALS_PAST_128_BITS.products[0],
            curve=Curve("UNIT", price=Decimal("123456789.123456789")),
            override=("multiplier", Decimal("0.999999999999999999")),
        ),
    ),
)


def gauge_and_sum_event(transaction_id: str, day: int, gauge: float, used: float) -> REvent:
    values = (("a", gauge), ("b", used))
    return REvent(transaction_id, "acme", "ai", EPOCH_MS + day * DAY_MS + HOUR_MS, (), values)


def gauge_and_sum(grants: tuple[GrantSpec, ...], *events: REvent) -> Scenario:
    """`gauge` (LATEST of a) and `sum` (SUM of b), each 1 a unit, BLOCK; the events one a batch, the last the probe."""
    products = tuple(
        ProductSpec(name, "ai", aggregation, key, (), (), Curve("UNIT", price=Decimal(1)), None, None)
        for name, aggregation, key in (("gauge", Aggregation.LATEST, "a"), ("sum", Aggregation.SUM, "b"))
    )
    batches = tuple((e,) for e in events[:-1])
    received = tuple(e.timestamp_ms for e in events[:-1])
    return Scenario(products, True, grants, batches, received, events[-1])


# An event's refund and charge netted (docs/architecture.md §5 "Draw"). The gauge's 5, all overage (the grant pays
# `sum` only), falls to 2 while `sum` costs 3: the charge takes back the 3 of overage given back, the grant keeps its
# 10 (drawn in burn order, as before netting, it paid 3 and left 2 of overage). The probe nets alike (gauge -2, sum 2).
NETTED_OVERAGE = gauge_and_sum(
    (GrantSpec("g", Decimal(10), 0, ("sum",), EPOCH_MS, None),),
    gauge_and_sum_event("t0", 1, 5, 0),
    gauge_and_sum_event("t1", 2, 2, 3),
    gauge_and_sum_event("probe", 3, 0, 2),
)
# The gauge's 12 drawn from h (g starts on day 10); on day 11 it falls to 9 while `sum` costs 3: the charge takes
# back the 3 given back to h, g keeps its 10 (drawn in burn order, g would pay the 3).
NETTED_CREDIT = gauge_and_sum(
    (
        GrantSpec("h", Decimal(20), 1, (), EPOCH_MS, None),
        GrantSpec("g", Decimal(10), 0, (), EPOCH_MS + 10 * DAY_MS, None),
    ),
    gauge_and_sum_event("t0", 1, 12, 0),
    gauge_and_sum_event("t1", 11, 9, 3),
    gauge_and_sum_event("probe", 12, 0, 1),
)


# Ends requested 10 minutes before the first event's date, once it is recorded (batch 1 next): at that date (its hour
# holds usage: refused, naming it), a second before now (refused), the hour after the second event's hour (taken),
# that end again (a retry); the third event, after it, NO_ACTIVE_CONTRACT, the probe too; at the end, the end held
# once it has passed, moved a moment later (refused).
ENDED_BETWEEN_USAGE = dataclasses.replace(
    gauge_and_sum(
        (GrantSpec("g", Decimal(10), 0, (), EPOCH_MS, None),),
        gauge_and_sum_event("t0", 1, 5, 1),
        gauge_and_sum_event("t1", 2, 2, 3),
        gauge_and_sum_event("t2", 3, 1, 1),
        gauge_and_sum_event("probe", 4, 0, 2),
    ),
    ends=(
        EndStep(1, "usage", 0, 0),
        EndStep(1, "past", 0, 1_000),
        EndStep(1, "usage-hour", 1, HOUR_MS),
        EndStep(1, "again", 0, 0),
        EndStep(3, "soon", 0, 200, wait=True),
    ),
    end_clock=(*[EPOCH_MS + DAY_MS + 50 * MINUTE_MS] * 4, EPOCH_MS + DAY_MS),
)


@PROFILE
@given(scenarios())
@example(ENDED_BETWEEN_USAGE)
@example(TOTALS_PAST_128_BITS)
@example(MULTIPLIED_IN_RANGE)
@example(NETTED_OVERAGE)
@example(NETTED_CREDIT)
def test_the_kernel_rates_as_the_oracle_does(scenario: Scenario) -> None:
    with decimal.localcontext(RATING):  # exact: amounts near the limits reach 39 digits, past the default's 28
        rate_both(scenario)


def rate_both(scenario: Scenario) -> None:
    kernel = build_kernel(scenario)
    oracle = build_oracle(scenario)
    for index, (batch, received) in enumerate(zip(scenario.batches, scenario.received_ms, strict=True)):
        end_contract_before(kernel, oracle, scenario, index)
        ack = kernel.ingest([wire_event(e) for e in batch], received)  # type: ignore[misc]
        outcomes = [oracle.ingest(e, received) for e in batch]
        assert ack.accepted == outcomes.count("accepted")
        assert ack.duplicates == outcomes.count("duplicate")
        expected = [(i, o) for i, o in enumerate(outcomes) if o not in ("accepted", "duplicate")]
        assert [(r.index, REASONS[r.reason]) for r in ack.rejected] == expected
        if oracle.contract_end_ms is not None and "NO_ACTIVE_CONTRACT" in outcomes:
            event("usage at or after the end: NO_ACTIVE_CONTRACT")
    end_contract_before(kernel, oracle, scenario, len(scenario.batches))
    assert kernel_usage(kernel) == oracle_usage(oracle)
    balance = kernel.balance(EPOCH_MS + 50 * DAY_MS)
    remaining = {grant_id: left + expired for grant_id, _, left, expired, _ in balance["grants"]}
    assert remaining == {g.id: int(g.remaining) for g in oracle.grants}
    oracle.conservation()
    probe = scenario.probe
    allowed, reason, _, cost, _ = kernel.authorize(
        dict(probe.values), probe.timestamp_ms, event_type=probe.event_type, dimensions=dict(probe.dimensions)
    )
    assert (allowed, reason, cost) == oracle.authorize(probe)


def end_contract_before(kernel: KernelWorld, oracle: ReferenceRating, scenario: Scenario, index: int) -> None:
    """The EndContract steps before batch `index`, each at its own time: the control plane's answer (the usage it
    refuses for read from the kernel's hours, as the server reads them) is the oracle's, and the end it holds too;
    an end taken is compiled into the kernel's tables, as the server compiles it."""
    world = kernel.world
    world.engine.hours_recorded = kernel.hours_recorded
    dates = [e.timestamp_ms for batch in scenario.batches for e in batch]  # in sending order: those sent first
    for step, now in zip(scenario.ends, scenario.end_clock, strict=True):
        if step.before_batch != index:
            continue
        held = oracle.contract_end_ms
        if step.wait and held is not None:
            now = max(now, held)  # the end held has passed: moving it is refused
        end_ms = end_at(step, oracle, now, [date for date in dates if date >= now])
        got = engine_end(world, "c-acme", end_ms, now)
        assert got == oracle.end_contract(end_ms, now), (step, now, end_ms, got)
        event(f"end {step.kind}: {got[0]}")
        if got[0] == "ended":
            kernel.load()
        assert world.engine.state.contracts["c-acme"].ending_before_ms == oracle.contract_end_ms
