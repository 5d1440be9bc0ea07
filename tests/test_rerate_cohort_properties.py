"""Cohorts and retroactive re-rating against rating from scratch (engine/cohorts.py, engine/rerate.py).

Hypothesis generates customers (a tier attribute; some created before any publish, some between publishes, some
after the last), each with grants and usage (one event an hour per customer, each customer's events ingested in
time order, interleaved with the publishes), drafts versions up front and publishes them in a random order, each
effective from a random hour (often before usage already rated) and for a random cohort (customer ids among the
customers existing then, a tier to match, customers created after a time) or for everyone, with rollbacks among
them. Everything goes through the real control plane and kernel (engine/billing.py). The independent oracle
(tests/reference_billing.py: ReferenceCohorts decides each customer's timeline from the documented rules, and
ReferenceRating rates its usage from scratch with it) must agree with the final state: every aggregate, every
grant, and the version that priced every hour bucket. Replaying the same log into a fresh machine gives the
same kernel snapshot, byte for byte. Simulating a version for a customer gives what publishing it to a cohort
holding that customer, effective from the period's start, re-rates its usage to, over the hours it then prices.

One event an hour per customer: re-rating prices an hour bucket as one step, which is the event itself then
(README, "Changing prices safely").
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

import pytest
from hypothesis import event as tally
from hypothesis import given
from hypothesis import strategies as st
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.contracts import OveragePolicy
from engine.errors import FailedPrecondition, Repeated
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import Cohort
from engine.versions import PublishResult
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World
from tests.kernel_fixtures import usage_event
from tests.reference_billing import RCohort, RCustomer, ReferenceCohorts, ReferenceRating, REvent, RGrant
from tests.test_kernel_differential import decimals, oracle_usage
from tests.test_rerate_properties import (
    PICOS,
    PRODUCTS,
    PROFILE,
    RECEIVED_MS,
    Machine,
    Prices,
    oracle_rates,
    prices,
    rates_of,
    replayed,
)

CLOCK_MS = EPOCH_MS + 35 * 24 * HOUR_MS  # the control plane's clock at slot 0; a slot is an hour later
TIERS = ("gold", "silver")
LAST_HOUR = 63  # usage and effective hours lie in [0, LAST_HOUR)


def slot_ms(slot: int) -> int:
    return CLOCK_MS + slot * HOUR_MS


@dataclass(frozen=True)
class Person:
    id: str
    tier: str
    slot: int  # created before the step of this index (len(steps): after the last one)
    grants: tuple[tuple[Decimal, int], ...]  # (amount, priority)
    events: tuple[REvent, ...]  # in time order
    arrivals: tuple[int, ...]  # the slot each event is ingested in, non-decreasing, from `slot` on


@dataclass(frozen=True)
class Step:
    """A publish of draft `draft` (version draft + 2), or a rollback to version `rollback_to`."""

    effective_hour: int
    draft: int = -1
    cohort: RCohort | None = None
    rollback_to: int = 0


@dataclass(frozen=True)
class CohortHistory:
    base: Prices  # version 1, for everyone from EPOCH_MS
    drafts: tuple[Prices, ...]  # versions 2.., drafted before anything is published
    people: tuple[Person, ...]
    steps: tuple[Step, ...]


@st.composite
def cohorts(draw: st.DrawFn, existing: list[str], steps: int) -> RCohort | None:
    if draw(st.integers(0, 2)) == 0:
        return None
    ids = tuple(draw(st.lists(st.sampled_from(existing), unique=True, max_size=3))) if existing else ()
    attributes = (("tier", draw(st.sampled_from(TIERS))),) if draw(st.booleans()) else ()
    created_after = draw(st.one_of(st.none(), st.none(), st.integers(-1, steps).map(slot_ms)))
    return RCohort(ids, attributes, created_after)


@st.composite
def people(draw: st.DrawFn, steps: int) -> tuple[Person, ...]:
    out = []
    for n in range(draw(st.integers(1, 4))):
        customer_id = f"c{n}"
        slot = draw(st.one_of(st.just(0), st.integers(0, steps)))
        hours = sorted(draw(st.sets(st.integers(0, LAST_HOUR - 1), max_size=8)))
        events = tuple(
            REvent(
                f"{customer_id}-t{hour}",
                customer_id,
                "ai",
                EPOCH_MS + hour * HOUR_MS + draw(st.integers(0, HOUR_MS - 1)),
                (("model", draw(st.sampled_from(["m1", "m2"]))),),
                (("tokens", float(draw(decimals(0, 40, 2)))),),
            )
            for hour in hours
        )
        arrivals = tuple(sorted(draw(st.integers(slot, steps)) for _ in events))
        grants = tuple((draw(decimals(1, 300, 2)), draw(st.integers(0, 1))) for _ in range(draw(st.integers(0, 2))))
        out.append(Person(customer_id, draw(st.sampled_from(TIERS)), slot, grants, events, arrivals))
    return tuple(out)


@st.composite
def cohort_histories(draw: st.DrawFn) -> CohortHistory:
    publishes = draw(st.integers(1, 4))
    order = draw(st.permutations(range(publishes)))  # the drafts are published in a random order
    kinds = draw(st.lists(st.booleans(), min_size=publishes, max_size=publishes + 2))
    who = draw(people(len(kinds)))
    steps: list[Step] = []
    published = [1]
    for index, rollback in enumerate(kinds):
        existing = [p.id for p in who if p.slot <= index]
        hour = draw(st.integers(0, LAST_HOUR - 1))
        if rollback or len(published) - 1 == publishes:
            # Mostly to a version some time back: rolling back to the one in force is refused.
            back = draw(st.sampled_from(published[:-1] or published))
            steps.append(Step(hour, rollback_to=back))
        else:
            draft = order[len(published) - 1]
            steps.append(Step(hour, draft=draft, cohort=draw(cohorts(existing, len(kinds)))))
            published.append(draft + 2)
    # The drafts the steps above left unpublished are published last, for everyone.
    for draft in order[len(published) - 1 :]:
        steps.append(Step(draw(st.integers(0, LAST_HOUR - 1)), draft=draft))
    return CohortHistory(draw(prices()), tuple(draw(prices()) for _ in range(publishes)), who, tuple(steps))


def world_of(history: CohortHistory) -> World:
    world = World()
    world.product("calls", aggregation=Aggregation.COUNT, value_key="", dimensions=("model",))
    world.product("tokens", aggregation=Aggregation.SUM, value_key="tokens", dimensions=("model",))
    world.rate_card()
    world.version(rates_of(history.base))
    for draft in history.drafts:
        world.draft(rates_of(draft))
    return world


def to_cohort(cohort: RCohort | None) -> Cohort | None:
    if cohort is None:
        return None
    return Cohort(cohort.customer_ids, dict(cohort.attributes), cohort.created_after_ms)


class Run:
    """The machine and the oracle's cohort book, fed the same story."""

    def __init__(self, history: CohortHistory) -> None:
        self.history = history
        self.machine = Machine(world_of(history))
        self.book = ReferenceCohorts()
        self.book.publish(1, EPOCH_MS, tuple(oracle_rates(history.base)), None)
        self.rates = {1: tuple(oracle_rates(history.base))}
        for n, draft in enumerate(history.drafts):
            self.rates[n + 2] = tuple(oracle_rates(draft))
        self.origin = {n: n for n in self.rates}  # a rollback's copy -> the version whose prices it restores

    def slot(self, slot: int) -> None:
        """The customers created in this slot, then the usage ingested in it."""
        for person in self.history.people:
            if person.slot == slot:
                self.create(person, slot_ms(slot))
        for person in self.history.people:
            for event, at in zip(person.events, person.arrivals, strict=True):
                if at == slot:
                    self.ingest(event)

    def ingest(self, event: REvent) -> None:
        wire = usage_event(
            event.transaction_id,
            event.timestamp_ms,
            dict(event.values),
            customer_id=event.customer_id,
            dimensions=dict(event.dimensions),
        )
        batch = usage_pb2.UsageBatch(batch_id=event.transaction_id, events=[wire]).SerializeToString()
        done = self.machine.billing.ingest(batch, RECEIVED_MS)
        assert done.accepted == 1, done.rejected
        self.machine.log.append(("batch", batch))

    def create(self, person: Person, at_ms: int) -> None:
        attributes = {"tier": person.tier}
        self.machine.apply(cmd.CreateCustomer(at_ms, ACTOR, person.id, person.id, attributes))
        self.machine.apply(
            cmd.CreateContract(
                at_ms, ACTOR, f"k-{person.id}", person.id, "card", EPOCH_MS, None, OveragePolicy.ALLOW, "1", "USD"
            )
        )
        for n, (amount, priority) in enumerate(person.grants):
            grant = cmd.GrantCredits(
                at_ms,
                ACTOR,
                f"{person.id}-g{n}",
                person.id,
                "",
                GrantKind.PREPAID,
                str(amount),
                "0",
                priority,
                (),
                EPOCH_MS,
                None,
                "",
            )
            self.machine.apply(grant)
        self.book.create_customer(RCustomer(person.id, tuple(attributes.items()), at_ms))

    def step(self, step: Step, at_ms: int) -> None:
        effective_from_ms = EPOCH_MS + step.effective_hour * HOUR_MS
        if step.draft >= 0:
            number = step.draft + 2
            publish = cmd.PublishVersion(at_ms, ACTOR, "card", number, effective_from_ms, to_cohort(step.cohort))
            result = self.machine.apply(publish)
            assert isinstance(result, PublishResult)
            assert result.closed_buckets_left_alone == 0
            tally(
                f"publish {'for a cohort' if step.cohort else 'for everyone'}, re-rating: {result.buckets_rerated > 0}"
            )
            self.book.publish(number, effective_from_ms, self.rates[number], step.cohort)
            return
        in_force = self.book.version_outside_cohorts_at(effective_from_ms)
        assert in_force is not None
        command = cmd.RollbackRateCard(at_ms, ACTOR, "card", step.rollback_to, effective_from_ms)
        if self.origin[in_force] == self.origin[step.rollback_to]:
            # Its prices are in force then already: refused (or answered as the rollback that put them there).
            with pytest.raises((FailedPrecondition, Repeated)):
                self.machine.billing.apply(command, self.machine.billing.last_seq + 1)
            tally("rollback refused: its prices are in force")
            return
        result = self.machine.apply(command)
        assert isinstance(result, PublishResult)
        tally(f"rollback, re-rating: {result.buckets_rerated > 0}")
        copy = result.version.number
        self.rates[copy] = self.rates[step.rollback_to]
        self.origin[copy] = self.origin[step.rollback_to]
        self.book.publish(copy, effective_from_ms, self.rates[copy], None)

    def play(self) -> None:
        for index, step in enumerate(self.history.steps):
            self.slot(index)
            self.step(step, slot_ms(index) + HOUR_MS // 2)
        self.slot(len(self.history.steps))

    def oracle(self, person: Person) -> ReferenceRating:
        grants = [
            RGrant(f"{person.id}-g{n}", amount * PICOS, priority, (), EPOCH_MS, None, n)
            for n, (amount, priority) in enumerate(person.grants)
        ]
        oracle = ReferenceRating(
            PRODUCTS,
            [],
            [],
            grants,
            customer_id=person.id,
            contract_start_ms=EPOCH_MS,
            block=False,
            timeline=self.book.timeline(person.id),
        )
        for event in person.events:
            assert oracle.ingest(event, RECEIVED_MS) == "accepted"
        return oracle

    def check_against_the_oracle(self) -> None:
        self.machine.billing.refresh_tables()  # a customer created last is in the kernel's tables once compiled
        kernel = self.machine.billing.kernel
        for person in self.history.people:
            oracle = self.oracle(person)
            usage = kernel.usage(person.id)
            aggregates, buckets = usage if usage is not None else ([], [])
            assert sorted((*row[:7], sorted(row[7])) for row in aggregates) == oracle_usage(oracle), person.id
            # Every hour bucket was priced (at ingestion or re-rated) by the version the customer's cohorts
            # put in force for its hour.
            priced = {(hour, product): [u[1] for u in usages] for hour, product, _dims, usages in buckets}
            expected = {
                (e.timestamp_ms // HOUR_MS, product.id): [self.book.version_at(person.id, e.timestamp_ms)]
                for e in person.events
                for product in PRODUCTS
            }
            assert priced == expected, person.id
            balance = kernel.balance(person.id, EPOCH_MS)
            grants = {g[0]: g[2] for g in balance["grants"]} if balance is not None else {}
            assert grants == {g.id: int(g.remaining) for g in oracle.grants}


@PROFILE
@given(cohort_histories())
def test_cohort_publishes_in_any_order_end_where_rating_from_scratch_with_each_customers_timeline_does(
    history: CohortHistory,
) -> None:
    run = Run(history)
    run.play()
    run.check_against_the_oracle()
    assert replay_snapshot(run) == run.machine.billing.kernel.snapshot()


def replay_snapshot(run: Run) -> bytes:
    """The kernel snapshot of a fresh machine fed the same log, with the tables compiled (as the check did)."""
    fresh = replayed(run.machine.log)
    fresh.refresh_tables()
    return fresh.kernel.snapshot()


def amounts_before(billing: Billing, customer_id: str, until_ms: int) -> dict[str, int]:
    """Picos per product of the customer's hour buckets before until_ms."""
    usage = billing.kernel.usage(customer_id)
    out: dict[str, int] = {}
    for hour, product, _dims, usages in usage[1] if usage is not None else []:
        if hour * HOUR_MS < until_ms:
            out[product] = out.get(product, 0) + sum(u[4] for u in usages)
    return out


@PROFILE
@given(cohort_histories(), st.data())
def test_simulating_a_version_gives_what_publishing_it_to_a_cohort_from_the_period_start_rerates_to(
    history: CohortHistory, data: st.DataObject
) -> None:
    run = Run(history)
    run.play()
    billing = run.machine.billing
    ids = [p.id for p in history.people]
    members = data.draw(st.lists(st.sampled_from(ids), min_size=1, unique=True, max_size=len(ids)), "members")
    new_prices = data.draw(prices(), "prices")
    draft = run.machine.apply(
        cmd.CreateDraftVersion(slot_ms(99), ACTOR, "card", 0, {}, (), tuple(rates_of(new_prices)), (), "")
    )
    version: int = draft.number  # type: ignore[attr-defined]
    # Published effective from the period's start, the version prices a member's usage up to the first hour a
    # version effective later takes over for it: simulate each member over exactly those hours.
    simulated: dict[str, tuple[dict[str, int], dict[str, int], int]] = {}
    for customer_id in members:
        later = [p.effective_from_ms for p in run.book.members_of[customer_id] if p.effective_from_ms > EPOCH_MS]
        until_ms = min(later, default=EPOCH_MS + LAST_HOUR * HOUR_MS)
        simulation = billing.simulate("card", version, EPOCH_MS, until_ms, [customer_id])
        assert {line[0] for line in simulation.lines} <= {customer_id}
        current = {line[1]: line[2] for line in simulation.lines}
        assert current == amounts_before(billing, customer_id, until_ms), "current: the amounts recorded now"
        simulated[customer_id] = ({line[1]: line[3] for line in simulation.lines}, current, until_ms)
    others = {p.id: billing.kernel.usage(p.id) for p in history.people if p.id not in members}
    snapshot = billing.kernel.snapshot()
    assert replay_snapshot(run) == snapshot, "simulating changed nothing"
    cohort = RCohort(customer_ids=tuple(members))
    result = run.machine.apply(cmd.PublishVersion(slot_ms(99), ACTOR, "card", version, EPOCH_MS, to_cohort(cohort)))
    assert isinstance(result, PublishResult)
    run.book.publish(version, EPOCH_MS, tuple(oracle_rates(new_prices)), cohort)
    for customer_id, (expected, _current, until_ms) in simulated.items():
        assert amounts_before(billing, customer_id, until_ms) == expected, customer_id
    for customer_id, usage in others.items():
        assert billing.kernel.usage(customer_id) == usage, f"{customer_id} is outside the cohort"
    run.check_against_the_oracle()
