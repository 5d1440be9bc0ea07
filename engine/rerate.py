"""Re-rating and simulation in the control plane: what a PublishVersion effective before already rated usage
re-rates (its plan, checked before anything changes), the re-rating itself in slices of customers, and
SimulateVersion's answer. The pricing is the kernel's (engine/kernel/src/rerate.rs); this module decides what to
ask it. Sans-I/O like the rest of engine/.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import msgspec

from engine import commands as cmd
from engine._kernel import Kernel
from engine.cohorts import checked_cohort, contains, members
from engine.contracts import Customer
from engine.control import BillingState
from engine.errors import EngineError, FailedPrecondition, InvalidArgument, NotFound
from engine.instants import iso
from engine.ratecard import HOUR_MS, Cohort, RateCard, Severity, Version, VersionState, validate
from engine.rollback import rollback_asked
from engine.tables import _version_table
from engine.versions import PublishResult

# Customers re-rated per kernel call: the writer's thread holds the kernel's lock for one customer at a time
# (offering it to a read between customers) and gives the GIL back between slices.
SLICE_CUSTOMERS = 64
# Customers a publish's plan looks at per kernel call, usage applying between calls (about 20 µs a customer on a
# busy machine), and the passes over customers usage touched meanwhile before the rest is looked at in one go.
PLAN_SLICE_CUSTOMERS = 128
PLAN_PASSES = 2
# Customers simulated per kernel call (under the shared lock: the writer waits for at most one slice).
SIMULATE_SLICE_CUSTOMERS = 256
# Unknown customer ids a refused simulation names (then how many more), as a cohort names them.
SIMULATE_UNKNOWN_NAMED_MAX = 20
LEFT_ALONE_REASON = "in closed periods: a closed period's invoice is final, so its usage keeps its price"


@dataclass(frozen=True, slots=True)
class RerationPlan:
    """What a publish re-rates: the customers with usage of the card from `from_hour` on, in id order;
    `in_contract` the command's `rerate_in_contract` (a period's run of buckets ends at its contract's end too);
    `holds_in_time` its `rerate_holds_in_time` (open holds are taken again at their place in time); `top_ups_in_time`
    its `rerate_top_ups_in_time` (a top-up pays only its period's charges beyond those at which it was bought);
    `earlier_hours_carried` its `rerate_carries_earlier_hours` (an aggregate's first re-rated bucket carries what the
    hours before it were charged less than in time order); `closed_events_once` its
    `rerate_counts_closed_events_once` (closed_events counts an event feeding several products once);
    `rolled_credit_breaks` its `rerate_breaks_rolled_credit` (credit given back to a grant that has rolled over
    breaks); `holds_off_final_grants` its `rerate_holds_off_final_grants` (a hold taken again stays off a grant
    that has rolled over and keeps its share on the ROLLOVER grant); `unchanged_draws_kept` its
    `rerate_keeps_unchanged_draws` (a customer none of whose buckets changes amount keeps its draws as rated)."""

    rate_card_id: str
    from_hour: int
    customers: list[str]
    in_contract: bool = False
    holds_in_time: bool = False
    top_ups_in_time: bool = False
    earlier_hours_carried: bool = False
    closed_events_once: bool = False
    rolled_credit_breaks: bool = False
    holds_off_final_grants: bool = False
    at_ms: int = 0  # the publish's time: what holds_off_final_grants judges a grant's expiry final at
    unchanged_draws_kept: bool = False

    def slices(self) -> Iterator[list[str]]:
        for start in range(0, len(self.customers), SLICE_CUSTOMERS):
            yield self.customers[start : start + SLICE_CUSTOMERS]


@dataclass(slots=True)
class Rerated:
    """What a re-rating did; `closed_*` is the usage it left alone in closed periods; `amounts_changed` the
    customers whose charges or draws it changed (a customer whose buckets only changed version is not among them),
    in plan order."""

    customers: int = 0
    buckets: int = 0
    events: int = 0
    amount_delta_picos: int = 0
    closed_buckets: int = 0
    closed_events: int = 0
    closed_amount_picos: int = 0
    amounts_changed: list[str] = field(default_factory=list)

    def merge(self, other: Rerated) -> None:
        self.amounts_changed += other.amounts_changed
        self.add(
            (
                other.customers,
                other.buckets,
                other.events,
                other.amount_delta_picos,
                other.closed_buckets,
                other.closed_events,
                other.closed_amount_picos,
            )
        )

    def add(self, done: tuple[int, int, int, int, int, int, int]) -> None:
        self.customers += done[0]
        self.buckets += done[1]
        self.events += done[2]
        self.amount_delta_picos += done[3]
        self.closed_buckets += done[4]
        self.closed_events += done[5]
        self.closed_amount_picos += done[6]


@dataclass(frozen=True, slots=True)
class Simulation:
    """SimulateVersion's answer: (customer_id, product_id, current_picos, simulated_picos), sorted, and totals."""

    lines: list[tuple[str, str, int, int]] = field(default_factory=list)

    @property
    def current_picos(self) -> int:
        return sum(line[2] for line in self.lines)

    @property
    def simulated_picos(self) -> int:
        return sum(line[3] for line in self.lines)


@dataclass(frozen=True, slots=True)
class _Planned:
    """What a publish prices with and from when, once the engine would accept it: its card and version, its
    effective hour, and the customers its timeline changes for (None: every customer of the card)."""

    card: RateCard
    version: Version
    effective_from_ms: int
    members: Cohort | None
    cohort: bool
    split_hours_refused: bool  # the command's: usage in an hour holding a period boundary off the hour is refused
    override_hours_refused: bool  # the command's: usage in an hour holding an override's start or end off the hour
    in_contract: bool  # the command's rerate_in_contract
    holds_in_time: bool  # the command's rerate_holds_in_time
    top_ups_in_time: bool  # the command's rerate_top_ups_in_time
    earlier_hours_carried: bool  # the command's rerate_carries_earlier_hours
    closed_events_once: bool  # the command's rerate_counts_closed_events_once
    rolled_credit_breaks: bool  # the command's rerate_breaks_rolled_credit
    holds_off_final_grants: bool  # the command's rerate_holds_off_final_grants
    at_ms: int  # the command's time
    unchanged_draws_kept: bool  # the command's rerate_keeps_unchanged_draws
    rollback: bool = False  # a RollbackRateCard's: `version` is the one it copies, its copy is not made yet

    @property
    def from_hour(self) -> int:
        return self.effective_from_ms // HOUR_MS

    def table(self, state: BillingState) -> bytes:
        return msgspec.msgpack.encode(_version_table(self.card, self.version.number, state))

    def plan(self, customers: list[str]) -> RerationPlan:
        """The plan re-rating these customers as the command says."""
        return RerationPlan(
            self.card.id,
            self.from_hour,
            customers,
            self.in_contract,
            self.holds_in_time,
            self.top_ups_in_time,
            self.earlier_hours_carried,
            self.closed_events_once,
            self.rolled_credit_breaks,
            self.holds_off_final_grants,
            self.at_ms,
            self.unchanged_draws_kept,
        )

    def refusal(self, why: ValueError) -> FailedPrecondition:
        """The publish's refusal, naming what the caller asked for: a rollback names the version it rolls back
        to (its copy is never made, so its number would name a version that does not exist)."""
        asked = (
            f"rate card {self.card.id!r} cannot be rolled back to version {self.version.number}"
            if self.rollback
            else f"version {self.version.number} of rate card {self.card.id!r} cannot be published"
        )
        return FailedPrecondition(
            f"{asked} effective from {iso(self.effective_from_ms)}: the usage it would re-rate cannot be priced "
            f"again: {why}"
        )


def _planned(state: BillingState, command: cmd.PublishVersion | cmd.RollbackRateCard) -> _Planned | None:
    """The publish's version and hour, or None when the engine refuses the publish anyway (unknown card or
    version, already published, invalid, a bad cohort) and so nothing is to be re-rated."""
    card = state.rate_cards.get(command.rate_card_id)
    if card is None:
        return None
    # A rollback publishes a copy of a published version: its prices, and so its plan, are that version's.
    rollback = isinstance(command, cmd.RollbackRateCard)
    number = command.to_version if isinstance(command, cmd.RollbackRateCard) else command.version
    try:
        version = card.version(number)
    except NotFound:
        return None
    at_ms = command.at_ms
    effective_from_ms = command.effective_from_ms if command.effective_from_ms is not None else at_ms - at_ms % HOUR_MS
    if (version.state is VersionState.PUBLISHED) != rollback or effective_from_ms % HOUR_MS:
        return None
    if isinstance(command, cmd.RollbackRateCard) and not _rollback_publishes(card, command):
        return None  # a retry (answered as the first call, re-rating nothing) or refused by the engine anyway
    rounded_in_range = isinstance(command, cmd.PublishVersion) and command.prices_rounded_in_range
    if any(f.severity is Severity.ERROR for f in validate(version, state.products, rounded_in_range=rounded_in_range)):
        return None
    cohort: Cohort | None = None
    if isinstance(command, cmd.PublishVersion) and command.cohort is not None:
        # A cohort's version prices only its members: the others' timelines do not change, so they are neither
        # checked nor re-rated. (A rollback publishes for everyone outside cohorts.)
        try:
            cohort = checked_cohort(command.cohort, state.customers)
        except InvalidArgument:
            return None  # the publish refuses it
    is_cohort = isinstance(command, cmd.PublishVersion) and command.cohort is not None
    return _Planned(
        card,
        version,
        effective_from_ms,
        cohort,
        is_cohort,
        command.split_hours_refused,
        command.override_hours_refused,
        command.rerate_in_contract,
        command.rerate_holds_in_time,
        command.rerate_top_ups_in_time,
        command.rerate_carries_earlier_hours,
        command.rerate_counts_closed_events_once,
        command.rerate_breaks_rolled_credit,
        command.rerate_holds_off_final_grants,
        command.at_ms,
        command.rerate_keeps_unchanged_draws,
        rollback,
    )


def _rollback_publishes(card: RateCard, command: cmd.RollbackRateCard) -> bool:
    """Whether the engine would publish the rollback's copy: not when it answers the request as a retry of the
    rollback that made the copy in force, nor when it refuses it."""
    try:
        return rollback_asked(card, command).publishes
    except EngineError:
        return False


def plan_rerating(
    state: BillingState,
    kernel: Kernel,
    command: cmd.PublishVersion | cmd.RollbackRateCard,
    refresh_tables: Callable[[], None],
) -> RerationPlan | None:
    """The re-rating a publish (or a rollback, which publishes a copy) would do, checked: None when it re-rates
    nothing or when the engine refuses the publish anyway (unknown card or version, already published, invalid);
    FailedPrecondition, having changed nothing, when the usage it covers cannot be re-rated. `refresh_tables`
    brings the kernel's tables up to date before the check reads them (only when there is usage to check)."""
    planned = _planned(state, command)
    if planned is None:
        return None
    customers = kernel.rerate_customers(planned.card.id, planned.from_hour)
    if planned.cohort:
        customers = members(planned.members, customers, state.customers)
    if not customers:
        return None
    table = planned.table(state)
    refresh_tables()
    try:
        kernel.rerate_check(
            customers,
            table,
            planned.from_hour,
            planned.split_hours_refused,
            planned.override_hours_refused,
            planned.in_contract,
        )
    except ValueError as exc:
        raise planned.refusal(exc) from None
    return planned.plan(customers)


@dataclass(slots=True)
class PlanInSlices:
    """`plan_rerating` made a slice of customers at a time, with usage applied between slices (the server's
    writer: usage need not wait for the whole check). Nothing but usage, holds and the clock (AdvanceClock) may
    apply meanwhile, and those change only the accounts they name or report, which `touch` records: an untouched
    customer's part of the plan (whether it has usage to re-rate, whether that usage can be priced again) stays
    what its slice found, and a touched one is looked at again, in further passes and at the latest by `finish`. So `finish` returns exactly what
    `plan_rerating` returns on the state of that moment, where the publish then applies. A slice that finds usage
    that cannot be priced again refuses the publish at once: a refused publish changes nothing and is journaled
    nowhere, so it refuses on the state of that slice."""

    planned: _Planned
    table: bytes
    # Those the slices look at, in creation order (the plan sorts what it finds): every customer, or for a cohort
    # by ids its ids; a slice leaves out the cohort's non-members (so beginning costs no pass over the customers).
    candidates: list[str]
    customers: Mapping[str, Customer]  # the control plane's, for the cohort of a customer touched meanwhile
    cursor: int = 0  # slices have looked at candidates[:cursor]
    affected: set[str] = field(default_factory=set)  # those found with usage to re-rate, checked
    touched: set[str] = field(default_factory=set)  # candidates usage named since their slice looked at them
    again: list[str] = field(default_factory=list)  # touched ones a further pass looks at again
    passes: int = 0

    @classmethod
    def begin(cls, state: BillingState, command: cmd.PublishVersion | cmd.RollbackRateCard) -> PlanInSlices | None:
        """None when the engine refuses the publish anyway. Beginning costs the version's compile and a copy of
        the customer ids (no sort, no membership: the slices test it), so it is short at any customer count."""
        planned = _planned(state, command)
        if planned is None:
            return None
        cohort = planned.members
        candidates = list(cohort.customer_ids) if cohort is not None and cohort.customer_ids else list(state.customers)
        return cls(planned, planned.table(state), candidates, state.customers)

    def touch(self, customers: Iterable[str]) -> None:
        """Usage (or a hold) named these customers: what a slice found for them may have changed (one the plan
        prices for: a customer, of the cohort if the version has one)."""
        cohort, known = self.planned.members, self.customers
        self.touched.update(c for c in customers if c in known and (cohort is None or contains(cohort, known[c])))

    def step(self, kernel: Kernel, limit: int) -> bool:
        """Looks at the next `limit` customers (first every candidate, then in up to PLAN_PASSES further passes
        those touched meanwhile); FailedPrecondition when one's usage cannot be priced again. Returns whether
        more slices remain (`finish` looks at whoever is touched still)."""
        if self.cursor < len(self.candidates):
            chunk = self.candidates[self.cursor : self.cursor + limit]
            self.cursor += len(chunk)
        else:
            if not self.again and self.touched and self.passes < PLAN_PASSES:
                self.again, self.touched = sorted(self.touched), set()
                self.passes += 1
            chunk, self.again = self.again[:limit], self.again[limit:]
        self._look(kernel, chunk)
        return (
            self.cursor < len(self.candidates) or bool(self.again) or (bool(self.touched) and self.passes < PLAN_PASSES)
        )

    def finish(self, kernel: Kernel) -> RerationPlan | None:
        """The plan on the state now: whoever is touched still (or not looked at yet) is looked at now."""
        self._look(kernel, self.candidates[self.cursor :] + self.again + sorted(self.touched))
        self.cursor, self.again = len(self.candidates), []
        if not self.affected:
            return None
        return self.planned.plan(sorted(self.affected))

    def _look(self, kernel: Kernel, customers: list[str]) -> None:
        cohort, known = self.planned.members, self.customers
        if cohort is not None:
            customers = [c for c in customers if c in known and contains(cohort, known[c])]
        if not customers:
            return
        try:
            found = kernel.rerate_plan_slice(
                customers,
                self.table,
                self.planned.from_hour,
                self.planned.split_hours_refused,
                self.planned.override_hours_refused,
                self.planned.in_contract,
            )
        except ValueError as exc:
            raise self.planned.refusal(exc) from None
        self.affected.difference_update(customers)
        self.affected.update(found)
        self.touched.difference_update(customers)


def rerate_slice(kernel: Kernel, plan: RerationPlan, customers: list[str], seq: int) -> Rerated:
    """Re-rates some of the plan's customers as journal record `seq` (the GIL released inside)."""
    counts = kernel.rerate(
        customers,
        plan.rate_card_id,
        plan.from_hour,
        seq,
        plan.in_contract,
        plan.holds_in_time,
        plan.top_ups_in_time,
        plan.earlier_hours_carried,
        plan.closed_events_once,
        plan.rolled_credit_breaks,
        plan.at_ms if plan.holds_off_final_grants else None,
        plan.unchanged_draws_kept,
    )
    done = Rerated(amounts_changed=counts[7])
    done.add(counts[:7])
    return done


def simulation_table(state: BillingState, rate_card_id: str, number: int, start_ms: int, end_ms: int) -> bytes:
    """The version SimulateVersion prices with, compiled for the kernel: NotFound for an unknown card or version,
    InvalidArgument for a version that does not validate or an empty period. Changes nothing."""
    card = state.rate_cards.get(rate_card_id)
    if card is None:
        raise NotFound(f"rate card {rate_card_id!r} not found")
    version = card.version(number)
    check_simulated_period(start_ms, end_ms)
    errors = [f for f in validate(version, state.products) if f.severity is Severity.ERROR]
    if errors:
        raise InvalidArgument([(f"version.{f.path}", f.message) for f in errors], listed_by="ValidateVersion")
    return msgspec.msgpack.encode(_version_table(card, version.number, state))


def check_simulated_period(start_ms: int, end_ms: int) -> None:
    """InvalidArgument naming period_end unless the period is not empty: wrong whatever the state, so the server
    checks it before it looks the card up too."""
    if end_ms <= start_ms:
        raise InvalidArgument.field("period_end", "must be after period_start")


def check_simulated_customers(customers: Mapping[str, Customer], customer_ids: Iterable[str]) -> None:
    """NotFound naming the ids in SimulateVersion.customer_ids that are no customer: a misspelt one would otherwise
    simulate nothing, which reads as "no change"."""
    unknown = sorted({i for i in customer_ids if i not in customers})
    if unknown:
        named = ", ".join(repr(i) for i in unknown[:SIMULATE_UNKNOWN_NAMED_MAX])
        more = len(unknown) - SIMULATE_UNKNOWN_NAMED_MAX
        if len(unknown) == 1:
            raise NotFound(f"customer_ids: customer {named} does not exist")  # as every lookup says it
        raise NotFound(f"customer_ids: customers {named}{f' and {more} more' if more > 0 else ''} do not exist")


def simulation_customers(kernel: Kernel, rate_card_id: str, start_ms: int, customer_ids: list[str]) -> list[str]:
    """The customers a simulation looks at, sorted: those asked for, or all with usage of the card since start."""
    if customer_ids:
        return sorted(set(customer_ids))
    return kernel.rerate_customers(rate_card_id, start_ms // HOUR_MS)


def simulate_slice(
    kernel: Kernel, table: bytes, start_ms: int, end_ms: int, customers: list[str]
) -> list[tuple[str, str, int, int]]:
    """Some customers' simulated amounts (the kernel's lock shared, the GIL released); FailedPrecondition for
    usage the version cannot price."""
    try:
        return kernel.simulate(table, start_ms, end_ms, customers)
    except ValueError as exc:
        raise FailedPrecondition(f"the version cannot price the recorded usage: {exc}") from None


def simulate(
    state: BillingState,
    kernel: Kernel,
    rate_card_id: str,
    number: int,
    start_ms: int,
    end_ms: int,
    customer_ids: list[str],
) -> Simulation:
    """SimulateVersion in one go (tests, tools); the server runs the same steps a slice of customers at a time."""
    table = simulation_table(state, rate_card_id, number, start_ms, end_ms)
    check_simulated_customers(state.customers, customer_ids)
    customers = simulation_customers(kernel, rate_card_id, start_ms, customer_ids)
    lines: list[tuple[str, str, int, int]] = []
    for at in range(0, len(customers), SIMULATE_SLICE_CUSTOMERS):
        lines += simulate_slice(kernel, table, start_ms, end_ms, customers[at : at + SIMULATE_SLICE_CUSTOMERS])
    return Simulation(lines)


def with_rerated(result: PublishResult, done: Rerated) -> PublishResult:
    """The publish's answer with what its re-rating did."""
    return msgspec.structs.replace(
        result,
        events_rerated=done.events,
        customers_rerated=done.customers,
        buckets_rerated=done.buckets,
        rerated_amount_delta_picos=done.amount_delta_picos,
        closed_buckets_left_alone=done.closed_buckets,
        closed_events_left_alone=done.closed_events,
        closed_amount_left_alone_picos=done.closed_amount_picos,
    )
