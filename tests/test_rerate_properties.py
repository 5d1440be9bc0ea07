"""Retroactive publishing against rating from scratch, and simulation against publishing (engine/rerate.py).

Hypothesis generates a catalogue (a SUM product priced by model and a COUNT product, every price model), grants,
usage (one event an hour, in time order) and a history of versions published one after another, some effective
before usage already rated, through the real control plane and kernel (engine/billing.py). The final state must
equal what the independent oracle (tests/reference_billing.py) computes by rating every event from scratch with
the final timeline: every aggregate (quantity, amount, draws per grant, overage) and every grant's balance.
Replaying the same commands and batches into a fresh machine must give the same kernel snapshot, byte for byte.
Simulating a version over a period must give what publishing it effective from the period's start re-rates to, and
over a window from any hour what publishing it from that hour re-rates to.

One event an hour: re-rating prices an hour bucket as one step, which is the event itself then (README,
"Changing prices safely": a VOLUME price whose drop is cut inside one hour bucket is the one difference).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.products import Aggregation
from engine.ratecard import Rate
from engine.rerate import Simulation
from engine.versions import PublishResult
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate
from tests.kernel_fixtures import usage_event
from tests.reference_billing import Curve, ReferenceRating, REvent, RGrant, RProduct, RRate
from tests.test_kernel_differential import curves, decimals, oracle_usage, price_spec

EXAMPLES = int(os.environ.get("TARIFF_KERNEL_EXAMPLES", "30"))
PROFILE = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
PICOS = Decimal(10) ** 12
RECEIVED_MS = EPOCH_MS + 40 * 24 * HOUR_MS  # every event is in the past; the period stays open
PRODUCTS = [
    RProduct("calls", "ai", "COUNT", "", (), ("model",)),
    RProduct("tokens", "ai", "SUM", "tokens", (), ("model",)),
]

Prices = tuple[Curve, Curve, Curve]  # calls, tokens, tokens for model m1


@dataclass(frozen=True)
class Publish:
    after_events: int  # how many events are ingested before it
    effective_hour: int  # hours after EPOCH_MS
    prices: Prices


@dataclass(frozen=True)
class History:
    prices: Prices  # version 1, effective from EPOCH_MS
    grants: tuple[tuple[Decimal, int], ...]  # (amount, priority)
    events: tuple[REvent, ...]
    publishes: tuple[Publish, ...]


@st.composite
def prices(draw: st.DrawFn) -> Prices:
    return (draw(curves()), draw(curves()), draw(curves()))


@st.composite
def histories(draw: st.DrawFn) -> History:
    hours = sorted(draw(st.sets(st.integers(0, 60), min_size=1, max_size=12)))
    events = tuple(
        REvent(
            f"t{hour}",
            "acme",
            "ai",
            EPOCH_MS + hour * HOUR_MS + draw(st.integers(0, HOUR_MS - 1)),
            (("model", draw(st.sampled_from(["m1", "m2"]))),),
            (("tokens", float(draw(decimals(0, 40, 2)))),),
        )
        for hour in hours
    )
    publishes = tuple(
        sorted(
            (
                Publish(draw(st.integers(0, len(events))), draw(st.integers(0, 62)), draw(prices()))
                for _ in range(draw(st.integers(1, 3)))
            ),
            key=lambda p: p.after_events,
        )
    )
    grants = tuple((draw(decimals(0, 300, 2)), draw(st.integers(0, 1))) for _ in range(draw(st.integers(0, 2))))
    return History(draw(prices()), grants, events, publishes)


def rates_of(prices: Prices) -> list[Rate]:
    calls, tokens, tokens_m1 = prices
    return [
        rate("calls", price_spec(calls)),
        rate("tokens", price_spec(tokens)),
        rate("tokens", price_spec(tokens_m1), model="m1"),
    ]


def oracle_rates(prices: Prices) -> list[RRate]:
    calls, tokens, tokens_m1 = prices
    return [RRate("calls", (), calls), RRate("tokens", (), tokens), RRate("tokens", (("model", "m1"),), tokens_m1)]


def world_of(history: History) -> World:
    world = World()
    world.product("calls", aggregation=Aggregation.COUNT, value_key="", dimensions=("model",))
    world.product("tokens", aggregation=Aggregation.SUM, value_key="tokens", dimensions=("model",))
    world.rate_card()
    world.version(rates_of(history.prices))
    world.customer()
    world.contract()
    for n, (amount, priority) in enumerate(history.grants):
        if amount > 0:
            world.grant(f"g{n}", str(amount), priority=priority)
    return world


Step = tuple[str, object]  # ("command", AdminCommand) or ("batch", UsageBatch bytes)


class Machine:
    """A Billing fed commands and batches as the writer feeds them, keeping the log a replay would read."""

    def __init__(self, world: World) -> None:
        self.billing = Billing(engine=world.engine)
        self.log: list[Step] = [("command", c) for c in world.journal]

    def apply(self, command: cmd.AdminCommand) -> object:
        result = self.billing.apply(command, self.billing.last_seq + 1)
        self.log.append(("command", command))
        return result

    def ingest(self, events: tuple[REvent, ...]) -> None:
        for event in events:
            wire = usage_event(
                event.transaction_id, event.timestamp_ms, dict(event.values), dimensions=dict(event.dimensions)
            )
            batch = usage_pb2.UsageBatch(batch_id=event.transaction_id, events=[wire]).SerializeToString()
            done = self.billing.ingest(batch, RECEIVED_MS)
            assert done.accepted == 1, done.rejected
            self.log.append(("batch", batch))

    def publish(self, prices: Prices, effective_from_ms: int) -> PublishResult:
        draft = self.apply(cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), tuple(rates_of(prices)), (), ""))
        result = self.apply(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", draft.number, effective_from_ms))  # type: ignore[attr-defined]
        assert isinstance(result, PublishResult)
        return result


def replayed(log: list[Step]) -> Billing:
    fresh = Billing()
    for kind, item in log:
        if kind == "command":
            fresh.apply(item, fresh.last_seq + 1)  # type: ignore[arg-type]
        else:
            assert isinstance(item, bytes)
            fresh.ingest(item, RECEIVED_MS)
    return fresh


def oracle_of(history: History, timeline: list[tuple[int, list[RRate]]]) -> ReferenceRating:
    grants = [
        RGrant(f"g{n}", amount * PICOS, priority, (), EPOCH_MS, None, n)
        for n, (amount, priority) in enumerate(history.grants)
        if amount > 0
    ]
    oracle = ReferenceRating(
        PRODUCTS, [], [], grants, customer_id="acme", contract_start_ms=EPOCH_MS, block=False, timeline=timeline
    )
    for event in history.events:
        assert oracle.ingest(event, RECEIVED_MS) == "accepted"
    return oracle


@PROFILE
@given(histories())
def test_retroactive_publishes_end_where_rating_from_scratch_with_the_final_timeline_does(history: History) -> None:
    machine = Machine(world_of(history))
    timeline = [(EPOCH_MS, oracle_rates(history.prices))]
    ingested = 0
    for publish in history.publishes:
        machine.ingest(history.events[ingested : publish.after_events])
        ingested = max(ingested, publish.after_events)
        effective_from_ms = EPOCH_MS + publish.effective_hour * HOUR_MS
        result = machine.publish(publish.prices, effective_from_ms)
        assert result.closed_buckets_left_alone == 0
        timeline.append((effective_from_ms, oracle_rates(publish.prices)))
    machine.ingest(history.events[ingested:])
    oracle = oracle_of(history, timeline)
    kernel = machine.billing.kernel
    usage = kernel.usage("acme")
    assert usage is not None
    assert sorted((*row[:7], sorted(row[7])) for row in usage[0]) == oracle_usage(oracle)
    balance = kernel.balance("acme", EPOCH_MS)
    assert balance is not None
    assert {g[0]: g[2] for g in balance["grants"]} == {g.id: int(g.remaining) for g in oracle.grants}
    # Replay gives the same state, byte for byte.
    assert replayed(machine.log).kernel.snapshot() == kernel.snapshot()


@PROFILE
@given(histories())
def test_simulating_a_version_gives_what_publishing_it_over_the_period_rerates_to(history: History) -> None:
    machine = Machine(world_of(history))
    machine.ingest(history.events)
    before = machine.billing.kernel.snapshot()
    draft = machine.apply(
        cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), tuple(rates_of(history.publishes[0].prices)), (), "")
    )
    period = (EPOCH_MS, EPOCH_MS + 31 * 24 * HOUR_MS)
    simulation: Simulation = machine.billing.simulate("card", draft.number, *period, [])  # type: ignore[attr-defined]
    assert machine.billing.kernel.snapshot() == before, "a simulation changes nothing"
    current = {(c, p): amount for c, p, amount, _ in simulation.lines}
    machine.apply(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", draft.number, EPOCH_MS))  # type: ignore[attr-defined]
    usage = machine.billing.kernel.usage("acme")
    assert usage is not None
    after: dict[tuple[str, str], int] = {}
    for period_start, product, _dims, _q, _events, amount, _overage, _drawn in usage[0]:
        if period_start == EPOCH_MS:
            after[("acme", product)] = after.get(("acme", product), 0) + amount
    assert {(c, p): simulated for c, p, _, simulated in simulation.lines} == after
    assert sum(current.values()) == simulation.current_picos
    assert simulation.simulated_picos - simulation.current_picos == sum(after.values()) - sum(current.values())


@st.composite
def falling_volume(draw: st.DrawFn) -> Prices:
    """Prices whose VOLUME tokens price falls steeply past a bound (what makes a charge's floor matter)."""

    def curve() -> Curve:
        bound = Decimal(draw(st.integers(5, 60)))
        high, low = draw(decimals(1, 5, 2)), draw(st.integers(0, 100).map(lambda n: Decimal(n).scaleb(-3)))
        return Curve("VOLUME", tiers=((bound, high, Decimal(0)), (None, low, Decimal(0))))

    return (draw(curves()), curve(), curve())


@PROFILE
@given(histories(), st.one_of(prices(), falling_volume()), st.integers(0, 61))
def test_simulating_a_version_from_an_hour_gives_what_publishing_it_from_that_hour_rerates_to(
    history: History, simulated_prices: Prices, hour: int
) -> None:
    """From an hour inside the period too (pricing.proto SimulateVersionRequest): each line walked from the period's
    start, the hours before the window by the timeline as it is now, the window's by the draft, the first hour in
    the window carrying what the earlier ones were charged less than on time: per product, what publishing the draft
    from that hour (as the server publishes, carrying the earlier hours) adds to the period's amounts. (Before, the
    hours before the window were priced by the draft too, so under a falling VOLUME price the floor of a charge,
    what its line was charged so far, was one no publish charges.)"""
    machine = Machine(world_of(history))
    machine.ingest(history.events)
    draft = machine.apply(
        cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), tuple(rates_of(simulated_prices)), (), "")
    )
    start, number = EPOCH_MS + hour * HOUR_MS, draft.number  # type: ignore[attr-defined]
    end = EPOCH_MS + 31 * 24 * HOUR_MS
    simulation: Simulation = machine.billing.simulate("card", number, start, end, [])

    def amounts() -> dict[str, int]:
        usage = machine.billing.kernel.usage("acme")
        assert usage is not None
        found: dict[str, int] = {}
        for period_start, product, _dims, _q, _events, amount, _overage, _drawn in usage[0]:
            if period_start == EPOCH_MS:
                found[product] = found.get(product, 0) + amount
        return found

    before = amounts()
    machine.apply(
        cmd.PublishVersion(
            EPOCH_MS, ACTOR, "card", number, start, rerate_in_contract=True, rerate_carries_earlier_hours=True
        )
    )
    after = amounts()
    simulated = {p: s - c for _, p, c, s in simulation.lines}
    moved = {p: after.get(p, 0) - before.get(p, 0) for p in after}
    assert simulated == {p: moved[p] for p in simulated}
    assert all(moved[p] == 0 for p in moved if p not in simulated)


@st.composite
def late_arrivals(draw: st.DrawFn) -> tuple[History, list[int], int]:
    """A history without publishes or grants whose events (several an hour allowed) arrive in a random order, and
    the hour a version with the very same prices is published from."""
    count = draw(st.integers(1, 10))
    events = tuple(
        REvent(
            f"t{n}",
            "acme",
            "ai",
            EPOCH_MS + draw(st.integers(0, 12)) * HOUR_MS + draw(st.integers(0, HOUR_MS - 1)),
            (("model", draw(st.sampled_from(["m1", "m2"]))),),
            (("tokens", float(draw(decimals(0, 40, 2)))),),
        )
        for n in range(count)
    )
    order = draw(st.permutations(range(count)))
    return History(draw(prices()), (), events, ()), list(order), draw(st.integers(0, 13))


@PROFILE
@given(late_arrivals())
def test_a_same_price_publish_leaves_every_line_where_events_arriving_in_any_order_put_it(
    case: tuple[History, list[int], int],
) -> None:
    """Rated as they arrive, one version's events charge a line its curve's price of its quantity, in any order
    (each event is curve(after) - curve(before)). A version with the same prices published from any hour, as the
    server publishes it (rerate_carries_earlier_hours), re-rates the hours from then in time order and carries what
    the earlier hours were charged less than in time order into the first re-rated one: every line keeps its amount
    (before the carry a late event in an earlier hour moved a tiered line), and replay gives the same state.
    Simulating that version over the window from that hour shows the same amounts, as the publish charges."""
    history, order, hour = case
    machine = Machine(world_of(history))
    machine.ingest(tuple(history.events[n] for n in order))
    kernel = machine.billing.kernel

    def lines() -> dict[tuple[int, str, str], tuple[int, int]]:
        usage = kernel.usage("acme")
        assert usage is not None
        found = {(row[0], row[1], repr(row[2])): (row[3], row[5]) for row in usage[0]}
        assert len(found) == len(usage[0])
        return found

    before = lines()
    draft = machine.apply(
        cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), tuple(rates_of(history.prices)), (), "")
    )
    window = (EPOCH_MS + hour * HOUR_MS, EPOCH_MS + 31 * 24 * HOUR_MS)
    simulation: Simulation = machine.billing.simulate("card", draft.number, *window, [])  # type: ignore[attr-defined]
    assert all(current == simulated for _, _, current, simulated in simulation.lines), simulation.lines
    command = cmd.PublishVersion(
        EPOCH_MS,
        ACTOR,
        "card",
        draft.number,  # type: ignore[attr-defined]
        EPOCH_MS + hour * HOUR_MS,
        rerate_carries_earlier_hours=True,
    )
    machine.apply(command)
    assert lines() == before
    assert replayed(machine.log).kernel.snapshot() == kernel.snapshot()
