"""Revenue recognition, sans-I/O: recognised, deferred and breakage per billing period, product and customer, from
the kernel's period aggregates (credits drawn per grant, overage) and the grants' cost basis.

Rules (amounts in picos of the contract's currency):
- A grant is *sold* at the start of the billing period that contains its `starts_at`, a period of the contract in
  force then, whichever contract the grant names (so every draw on it falls in that period or later); its paid amount enters deferred revenue then. But a closed period's revenue is final:
  a grant made after that period was closed (in journal order: GrantCredits after the close; for an invoice closed
  by a record of an earlier release, and a kernel's top-up, its closed_at before the grant's created_at) is sold
  in the customer's first period still open when it was made (no draw can fall in a closed period), or, with
  none (the last contract ended and its periods all closed), at the instant it was made.
- Credits drawn are recognised at the grant's cost basis (paid / amount). Exact rationals, rounded once and
  cumulatively: without breakage, a grant's recognised value up to a period is paid x credits drawn up to it /
  amount, rounded half-even to the pico; a period's recognition is the difference of that figure at its two
  ends. Periods thus sum to the whole, a fully drawn grant recognises exactly its paid amount, and no pico
  appears or vanishes.
  Within a period, a grant's recognition is split among products in proportion to their draws by the largest
  remainder (ties to the smaller product id), so products sum to it exactly.
- Overage is recognised in the period it is charged: overage x the contract's overage price, rounded half-even
  to the pico once per (customer, period, product).
- Grants come from the control plane and from the kernel (`Kernel.made_grants`): a TOP_UP grant is prepaid
  sold at its cost (credits x price_per_credit, exactly); a ROLLOVER grant the kernel made is no sale: it carries
  credits of the grant it rolled from at that grant's cost basis, so its draws and breakage count as that
  grant's (the credits stay deferred until drawn or broken).
- Breakage (credits expired unused, `Kernel.breakage`) is recognised at the grant's cost basis in the billing
  period the kernel recorded it in (the period of the grant's last usable instant), or, when that period had been
  closed before the breakage was recorded (a grant made already expired after the close), in the customer's first
  period still open then. A grant's credits consumed
  up to a period (drawn, then broken, period by period) are valued cumulatively: paid x consumed / amount,
  rounded half-even to the pico; within a period the draws come first, so a period's recognition is the value
  after its draws minus the value before them, and its breakage the value after its breakage minus the value
  after its draws. Nothing appears or vanishes, and a grant drawn or broken to the end is worth its paid amount.
- Deferred at a time t = paid value of grants sold before t - recognised before t - breakage before t. So
  deferred at start + prepaid sold - recognised credits - breakage = deferred at end, exactly, by construction;
  `Reconciliation.reconciles` checks it on the figures reported.
All periods are attributed by their start: an instant t counts the periods starting before t. A customer line's
deferred is the figure after its period: at its start + 1 ms, counting the periods starting at or before it. That
is the figure at its end but after a contract switch, where the old contract's last period (which keeps its
monthly end) overlaps the new contract's first: the new period's draws are not the old one's, so the lines roll
forward (the previous line's deferred + sold - recognised - breakage = this line's) and the old line's deferred
is the paid value of the balances its invoice shows.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial

from engine._kernel import period_containing
from engine.contracts import Contract
from engine.errors import InvalidArgument, NotFound
from engine.instants import check_instant, iso
from engine.invoices import RecordedBefore
from engine.ledger import Grant, GrantKind
from engine.money import PICOS_PER_UNIT, round_ratio
from engine.state import Engine
from engine.tables_paced import run_steps

# A customer's aggregates as Kernel.usage gives them: (period start, product, dimension values, quantity, events,
# amount, overage, [(grant id, credits drawn)]).
Aggregate = tuple[int, str, list[str], int, int, int, int, list[tuple[str, int]]]
# Kernel.made_grants: (grant id, kind, amount, priority, starts_at_ms, expires_at_ms, cost_e30, rolled_from, at_ms).
MadeGrant = tuple[str, str, int, int, int, int | None, int, str, int]
# Kernel.breakage: (customer id, grant id, period start, credits broken, at_ms).
BreakageEntry = tuple[str, str, int, int, int]
COST_EXPONENT = 30  # a top-up's cost_e30 is in 10^-30 of the currency
PERIODS_MAX = 1200  # a report spans at most a century of monthly periods of a contract (more is refused)
# Customers a step of report_steps reads (about 16 us each here: a step of about 1 ms).
REPORT_STEP_CUSTOMERS = 64


@dataclass
class Line:
    """Revenue of one (period, product) or (period, customer) in picos of the currency."""

    period_start_ms: int
    period_end_ms: int
    product_id: str = ""
    customer_id: str = ""
    recognized_credits: int = 0
    recognized_overage: int = 0
    breakage: int = 0
    deferred: int | None = None  # customer lines only

    @property
    def recognized(self) -> int:
        return self.recognized_credits + self.recognized_overage


@dataclass
class Reconciliation:
    deferred_start: int = 0
    prepaid_sold: int = 0
    recognized_credits: int = 0
    breakage: int = 0
    deferred_end: int = 0
    recognized_overage: int = 0

    @property
    def reconciles(self) -> bool:
        left = self.deferred_start + self.prepaid_sold - self.recognized_credits - self.breakage
        return left == self.deferred_end


@dataclass(frozen=True)
class KernelCredits:
    """What the kernel made and recorded for one customer: its TOP_UP and ROLLOVER grants, and its breakage."""

    made_grants: Sequence[MadeGrant] = ()
    breakage: Sequence[BreakageEntry] = ()


# A customer's aggregates and the kernel's credits of it, read together.
CustomerRead = tuple[Sequence[Aggregate], KernelCredits]


@dataclass
class Report:
    currency: str
    by_product: list[Line] = field(default_factory=list)
    by_customer: list[Line] = field(default_factory=list)
    totals: Reconciliation = field(default_factory=Reconciliation)


def period_of(contract: Contract, ts_ms: int) -> tuple[int, int]:
    """(start, end) of the contract's billing period containing ts_ms (at its first period when before it), by the
    rating kernel's calendar."""
    return period_containing(contract.starting_at_ms, max(ts_ms, contract.starting_at_ms))


def value_picos(grant: Grant, credits_picos: int) -> int:
    """credits x the grant's cost basis (paid / amount), in picos of the currency, rounded half-even once."""
    numerator, denominator = grant.paid_amount.as_integer_ratio()
    return round_ratio(credits_picos * numerator * PICOS_PER_UNIT, grant.amount * denominator)


def split_largest_remainder(total: int, weights: dict[str, int]) -> dict[str, int]:
    """total split in proportion to non-negative weights, exactly (the parts sum to total)."""
    whole = sum(weights.values())
    if whole == 0:
        return dict.fromkeys(weights, 0)
    parts = {key: total * weight // whole for key, weight in weights.items()}
    by_remainder = sorted(weights, key=lambda key: (-(total * weights[key] % whole), key))
    for key in by_remainder[: total - sum(parts.values())]:
        parts[key] += 1
    return parts


@dataclass
class _GrantLedger:
    """One grant's draws (by period start and product) and breakage (by period start), and the figures derived
    from them; a ROLLOVER grant the kernel made shares the ledger of the grant it rolled from."""

    grant: Grant
    sold_at_ms: int
    drawn_by_period: dict[int, dict[str, int]] = field(default_factory=lambda: defaultdict(dict))
    broken_by_period: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    _by_period: dict[int, tuple[int, int]] | None = None

    def by_period(self) -> dict[int, tuple[int, int]]:
        """(recognised, breakage) per period start: the cumulative value of the credits consumed, draws first."""
        if self._by_period is None:
            self._by_period, consumed, value = {}, 0, 0
            for start in sorted(self.drawn_by_period.keys() | self.broken_by_period.keys()):
                consumed += sum(self.drawn_by_period.get(start, {}).values())
                after_draws = value_picos(self.grant, consumed)
                consumed += self.broken_by_period.get(start, 0)
                after_breakage = value_picos(self.grant, consumed)
                self._by_period[start] = (after_draws - value, after_breakage - after_draws)
                value = after_breakage
        return self._by_period

    def recognized_before(self, t_ms: int) -> int:
        return sum(recognized for start, (recognized, _) in self.by_period().items() if start < t_ms)

    def breakage_before(self, t_ms: int) -> int:
        return sum(broken for start, (_, broken) in self.by_period().items() if start < t_ms)

    def deferred_before(self, t_ms: int) -> int:
        if self.sold_at_ms >= t_ms:
            return 0
        consumed = self.recognized_before(t_ms) + self.breakage_before(t_ms)
        return value_picos(self.grant, self.grant.amount) - consumed


def report(
    engine: Engine,
    usage_of: Callable[[str], Sequence[Aggregate]],
    start_ms: int | None,
    end_ms: int | None,
    customer_id: str = "",
    credits_of: Callable[[str], KernelCredits] | None = None,
) -> Report:
    """The revenue report for billing periods starting in [start_ms, end_ms); see the module docstring.
    `credits_of`: the kernel's made grants and breakage of a customer (none when not given)."""

    def read_of(customer: str) -> CustomerRead:
        return usage_of(customer), credits_of(customer) if credits_of is not None else KernelCredits()

    return run_steps(report_steps(engine, read_of, start_ms, end_ms, customer_id))


def report_steps(
    engine: Engine,
    read_of: Callable[[str], CustomerRead],
    start_ms: int | None,
    end_ms: int | None,
    customer_id: str = "",
) -> Generator[None, None, Report]:
    """`report` a few customers a step (REPORT_STEP_CUSTOMERS), for a caller that pauses between steps: a report of
    every customer costs about 16 us a customer here, seconds at a million. Refusals come at the first step,
    before any customer. The customers are those of the first step; each customer's figures, its contracts
    included, are read whole within a step, so a change applied between steps shows in a customer's figures
    entirely or not at all, and each customer's reconciliation holds. `read_of`: a customer's aggregates and the
    kernel's credits of it, from one state of it (one kernel call: a batch rated between two reads could show
    draws on a top-up grant it bought beside made grants without it)."""
    if start_ms is None:
        raise InvalidArgument.field("period_start", "is required")
    if end_ms is None:
        raise InvalidArgument.field("period_end", "is required")
    check_instant(start_ms, "period_start")
    # An exclusive end: the first instant past the range is one (every period starting before it is in range).
    check_instant(end_ms - 1, "period_end")
    if end_ms <= start_ms:
        raise InvalidArgument.field("period_end", "must be after period_start")
    state = engine.state
    if customer_id and customer_id not in state.customers:
        raise NotFound(f"customer {customer_id!r} does not exist")
    customers = [customer_id] if customer_id else sorted(state.customers)
    # The state's index of each customer's contracts (in the state's order), read again at the customer's step: a
    # contract made meanwhile counts, and one in a second currency refuses the report.
    currencies = {k.currency for c in customers for k in engine.contracts_of(c)}
    result = Report(currency=_currency(currencies, customer_id))
    products: dict[tuple[int, str], Line] = {}
    for index, customer in enumerate(customers):
        if index and index % REPORT_STEP_CUSTOMERS == 0:
            yield
        contracts = list(engine.contracts_of(customer))
        currency = _currency({result.currency, *(k.currency for k in contracts)} - {""}, customer_id)
        result.currency = result.currency or currency
        aggregates, kernel_credits = read_of(customer)
        ledgers = _ledgers(engine, customer, contracts, aggregates, kernel_credits)
        _customer_revenue(customer, contracts, ledgers, start_ms, end_ms, result, products)
    result.by_product = [products[key] for key in sorted(products)]
    return result


def _currency(currencies: set[str], customer_id: str) -> str:
    """The one currency of these contracts' ("" with none); refuses several."""
    if len(currencies) > 1 and customer_id:
        raise InvalidArgument.field(
            "customer_id",
            f"customer {customer_id!r} has contracts in {sorted(currencies)}: a report is in one currency, and its "
            "grants' deferred revenue carries from one contract to the next, so it cannot be reported",
        )
    if len(currencies) > 1:
        raise InvalidArgument.field("customer_id", f"contracts bill in {sorted(currencies)}: ask per customer")
    return next(iter(currencies), "")


def _contract_at(contracts: list[Contract], ts_ms: int) -> Contract | None:
    return next((k for k in contracts if k.covers(ts_ms)), contracts[0] if contracts else None)


def _sold_under(engine: Engine, contracts: list[Contract], grant: Grant) -> Contract | None:
    """The contract whose billing period containing the grant's starts_at sells it (`period_of`, clamped to its first
    period): the one in force then, whichever contract the grant was granted under (its contract_id only sets when it
    starts paying, and it pays every contract of the customer); with none, the customer's first contract starting
    after it; else its own contract, else the customer's first. So a grant is sold no later than its first draw can
    be recognised. Before, the grant's own contract was read: a grant of the next contract starting before the switch
    (or before every contract) was sold at that contract's first period, after the draws of the one before were
    recognised (a span that did not reconcile), and one of the previous contract starting after the switch in a
    period that contract never had."""
    starts_at_ms = grant.starts_at_ms
    in_force = next((k for k in contracts if k.covers(starts_at_ms)), None)
    later = [k for k in contracts if k.starting_at_ms > starts_at_ms]
    first_later = min(later, key=lambda k: k.starting_at_ms) if later else None
    return (
        in_force
        or first_later
        or engine.state.contracts.get(grant.contract_id)
        or _contract_at(contracts, starts_at_ms)
    )


def _sold_at(engine: Engine, contracts: list[Contract], grant: Grant) -> int:
    """Where a grant is sold, closed periods aside: the start of the billing period `_sold_under` names, when that
    contract has such a period; else (a grant starting after every contract ended, and after the last one's last
    period) its starts_at itself, in a span's reconciliation and on no line. Before, that contract's period holding
    starts_at was read even when the contract never had it."""
    contract = _sold_under(engine, contracts, grant)
    if contract is None:
        return grant.starts_at_ms
    start = period_of(contract, grant.starts_at_ms)[0]
    if contract.ending_before_ms is not None and start >= contract.ending_before_ms:
        return grant.starts_at_ms
    return start


def _ledgers(
    engine: Engine, customer: str, contracts: list[Contract], aggregates: Sequence[Aggregate], credits: KernelCredits
) -> tuple[dict[str, _GrantLedger], dict[tuple[int, str], int]]:
    """The customer's grant ledgers (control-plane grants and the kernel's top-ups; rollovers join their origin's)
    with their draws and breakage, and the overage per (period start, product)."""
    account = engine.state.accounts.get(customer)
    closed = _closed_at(engine, customer)
    ledgers: dict[str, _GrantLedger] = {}
    owner: dict[str, str] = {}  # a kernel-made ROLLOVER grant -> the ledger it shares
    expiries: dict[str, int | None] = {}  # grant id -> expires_at, the kernel's ROLLOVER grants' too
    # Each grant with its place in journal order: GrantCredits's creation order, a top-up's among the kernel's.
    granted = [(g, _Recorded(g.created_at_ms, grant_order=g.creation_order)) for g in account.grants] if account else []
    top_ups = _top_ups(customer, credits.made_grants)
    bought = [(g, _Recorded(g.created_at_ms, top_up_index=index)) for index, g in enumerate(top_ups)]
    for grant, made in [*granted, *bought]:
        expiries[grant.id] = grant.expires_at_ms
        sold = _final_period(contracts, closed, made, partial(_sold_at, engine, grant=grant))
        ledgers[grant.id] = _GrantLedger(grant, sold)
    for grant_id, kind, _amount, _priority, _starts, expires_at_ms, _cost, rolled_from, _at_ms in credits.made_grants:
        if kind == GrantKind.ROLLOVER:
            owner[grant_id] = owner.get(rolled_from, rolled_from)
            expiries[grant_id] = expires_at_ms
    overage: dict[tuple[int, str], int] = defaultdict(int)
    for period_start, product_id, _values, _q, _n, _amount, overage_picos, drawn in aggregates:
        overage[(period_start, product_id)] += overage_picos
        for grant_id, credits_drawn in drawn:
            by_product = ledgers[owner.get(grant_id, grant_id)].drawn_by_period[period_start]
            by_product[product_id] = by_product.get(product_id, 0) + credits_drawn
    for index, (_customer, grant_id, kernel_period, broken, at_ms) in enumerate(credits.breakage):
        # The kernel's 0 says no contract covered the grant's last usable instant; a period that starts at the epoch
        # (Unix ms 0) is a period all the same: a rollover's is found from the contracts, an expiry's again below.
        named = _rolled_over_in(contracts, ledgers.get(grant_id), kernel_period or None)
        recorded = _Recorded(at_ms, breakage_index=index)
        if named is not None:
            period_start = _open_period(contracts, closed, named, recorded)
        else:  # none named: the period holding the grant's last usable instant, else its recording (or at_ms)
            expiring = partial(_breakage_period, expires_at_ms=expiries.get(grant_id), at_ms=at_ms)
            period_start = _final_period(contracts, closed, recorded, expiring)
        ledgers[owner.get(grant_id, grant_id)].broken_by_period[period_start] += broken
    return ledgers, overage


def _final_period(
    contracts: list[Contract],
    closed_at: dict[int, _Closed],
    recorded: _Recorded,
    attribute: Callable[[list[Contract]], int],
) -> int:
    """The period a sale or a breakage `recorded` counts in: `attribute` of the customer's contracts, moved
    past a period closed before then (`_open_period`). A closed period's revenue is final, so a contract created after
    the period found was closed does not move it: contracts are taken in as they were created, each while the period
    found without it was still open when it came: otherwise a contract created after a switched contract's last period
    closed, in force at the instant that had named that period (a grant's last usable one, its start), would take its
    breakage or sale out of the closed period's line. Whether the period was closed before a contract came is told by
    journal order where the close counted the customer's contracts (`_Closed.before_contract`): a clock set back
    between the two records reorders their times. With no such close, the times, as before."""
    if not any(closed.counted_contracts for closed in closed_at.values()):
        return _final_period_by_times(contracts, closed_at, recorded, attribute)
    taken = _known_at(contracts, closed_at, recorded)
    known = [k for k in contracts if k.id in taken]
    period = _open_period(known, closed_at, attribute(known), recorded)
    for index, contract in enumerate(contracts):  # in the order created (Engine.contracts_of)
        if contract.id in taken:
            continue
        closed = closed_at.get(period)
        if closed is not None and closed.before_contract(index, contract.created_at_ms):
            break
        taken.add(contract.id)
        known = [k for k in contracts if k.id in taken]
        period = _open_period(known, closed_at, attribute(known), recorded)
    return period


def _known_at(contracts: list[Contract], closed_at: dict[int, _Closed], recorded: _Recorded) -> set[str]:
    """The ids of the customer's contracts created before `recorded`. A close that counted the customer's contracts
    orders the two in the journal when it lies between them: a contract it counted came before a record after it, one
    it did not count after a record before it. Otherwise their times tell, as before."""
    known = {k.id for k in contracts if k.created_at_ms <= recorded.at_ms}
    # Only a close that did not count every contract can put one known by its time after the record: without such a
    # close, or a contract unknown by its time, the times stand (a grant's made after every contract, most of them),
    # and the closes are not walked for each of a customer's thousands of grants.
    everything = len(known) < len(contracts)
    counts = [
        (count, closed.before(recorded))
        for closed in closed_at.values()
        if closed.recorded_before is not None
        for count in (closed.recorded_before.contracts,)
        if count is not None and (everything or count < len(contracts))
    ]
    for index, contract in enumerate(contracts) if counts else ():  # in the order created (Engine.contracts_of)
        if any(closed_first and index < count for count, closed_first in counts):
            known.add(contract.id)
        elif any(not closed_first and index >= count for count, closed_first in counts):
            known.discard(contract.id)
    return known


def _final_period_by_times(
    contracts: list[Contract],
    closed_at: dict[int, _Closed],
    recorded: _Recorded,
    attribute: Callable[[list[Contract]], int],
) -> int:
    """`_final_period` for a customer none of whose closes counted its contracts: contracts taken in by their
    created_at, a period closed before one when its closed_at is earlier (as every report did before the count)."""

    def created_by(t_ms: int) -> list[Contract]:
        return [k for k in contracts if k.created_at_ms <= t_ms]

    recorded_ms = recorded.at_ms
    known = created_by(recorded_ms)
    period = _open_period(known, closed_at, attribute(known), recorded)
    for created_ms in sorted({k.created_at_ms for k in contracts if k.created_at_ms > recorded_ms}):
        closed = closed_at.get(period)
        if closed is not None and closed.at_ms < created_ms:
            break
        known = created_by(created_ms)
        period = _open_period(known, closed_at, attribute(known), recorded)
    return period


def _existing_period(contracts: list[Contract], t_ms: int) -> int | None:
    """The start of the customer's billing period holding t_ms: the contract in force's, else the last period of a
    contract ended before t_ms that still holds it (a period keeps its monthly end); None when no period does."""
    in_force = next((k for k in contracts if k.covers(t_ms)), None)
    if in_force is not None:
        return period_of(in_force, t_ms)[0]
    starts = [
        start
        for k in contracts
        if k.starting_at_ms <= t_ms
        for start in (period_of(k, t_ms)[0],)
        if k.ending_before_ms is None or start < k.ending_before_ms
    ]
    return max(starts, default=None)


def _breakage_period(contracts: list[Contract], expires_at_ms: int | None, at_ms: int) -> int:
    """Where breakage the kernel names no period for (no contract was in force at the grant's last usable instant)
    counts: the period holding that instant (an ended contract's last period, which keeps its monthly end); else
    the period holding the instant it was recorded; else the first period of the customer's first contract starting
    after it; else, every contract having ended, at_ms itself: in a span's reconciliation, on no line, as a sale with
    no open period left. Before, the first contract's period containing at_ms was read, a period an ended contract
    never had: a span ending before the recording, after that period's start, counted it."""
    for t_ms in (*(() if expires_at_ms is None else (expires_at_ms - 1,)), at_ms):
        start = _existing_period(contracts, t_ms)
        if start is not None:
            return start
    later = [k.starting_at_ms for k in contracts if k.starting_at_ms > at_ms]
    return min(later, default=at_ms)


def _rolled_over_in(contracts: list[Contract], ledger: _GrantLedger | None, period_start: int | None) -> int | None:
    """The period a breakage entry of this grant counts in. A grant with a rollover fraction breaks (what does not
    roll over) at the end of the billing period in which it starts, "in the period that ended": that period, of the
    contract in force at its start, as the rating kernel reads it (`rollover_at`). The kernel records the period in
    force just before that end, which after a switch is the next contract's (its first period overlaps the old
    contract's last, which keeps its monthly end), so that period's line broke credits the old period's invoice lists
    as expired. Any other entry (a grant that simply expired instead, `Grant.expires_before_rollover`, included): the
    kernel's `period_start` (None: it named none)."""
    if ledger is None or not ledger.grant.rollover_fraction:
        return period_start
    grant = ledger.grant
    started = next((k for k in contracts if k.covers(grant.starts_at_ms)), None)
    if started is None:
        return period_start
    start, end = period_of(started, grant.starts_at_ms)
    return period_start if grant.expires_before_rollover(end) else start


@dataclass(frozen=True)
class _Recorded:
    """When a sale or a breakage was recorded: its time, and its place in journal order where known: a grant
    GrantCredits made, its creation_order; a breakage entry, its index in the customer's breakage (Kernel.breakage
    lists them in the order recorded, those a read projects last); a top-up the kernel bought, its index among the
    customer's (Kernel.made_grants lists them in the order bought)."""

    at_ms: int
    grant_order: int | None = None
    breakage_index: int | None = None
    top_up_index: int | None = None


@dataclass(frozen=True)
class _Closed:
    """When a period's invoice was made final: its closed_at, and how many grants GrantCredits had made, breakage
    entries the kernel had recorded and top-ups it had bought for the customer by then (None for a close recorded by
    an earlier release)."""

    at_ms: int
    recorded_before: RecordedBefore | None

    def before(self, recorded: _Recorded) -> bool:
        """Whether the period was closed before `recorded`. A clock set back between two records makes a later one
        carry an earlier time, so journal order decides where both records tell it (a close recorded with
        `closed_in_journal_order`, and a grant or a breakage entry); elsewhere the times, as before."""
        before = self.recorded_before
        if before is not None and recorded.grant_order is not None:
            return before.grants < recorded.grant_order
        if before is not None and recorded.breakage_index is not None:
            return before.breakage <= recorded.breakage_index
        if before is not None and recorded.top_up_index is not None:
            return before.top_ups <= recorded.top_up_index
        return self.at_ms < recorded.at_ms

    @property
    def counted_contracts(self) -> bool:
        return self.recorded_before is not None and self.recorded_before.contracts is not None

    def before_contract(self, index: int, created_at_ms: int) -> bool:
        """Whether the period was closed before the customer's contract at `index` (Engine.contracts_of, in the
        order created) was created: by journal order where the close counted the customer's contracts, else by the
        times (a contract created in the close's millisecond counting as after it was not)."""
        before = self.recorded_before
        if before is not None and before.contracts is not None:
            return before.contracts <= index
        return self.at_ms < created_at_ms


def _closed_at(engine: Engine, customer: str) -> dict[int, _Closed]:
    """The customer's closed periods: period start -> when its invoice was made final."""
    account = engine.state.accounts.get(customer)
    invoices = account.invoices if account is not None else {}
    return {
        start: _Closed(invoice.closed_at_ms, invoice.recorded_before)
        for start, number in invoices.items()
        for invoice in (engine.state.invoices[number],)
    }


def _open_period(
    contracts: list[Contract], closed_at: dict[int, _Closed], period_start: int, recorded: _Recorded
) -> int:
    """The period a sale or a breakage `recorded` counts in: period_start, unless that period had been closed before
    then (a grant made, or its expiry recorded, after the close), whose revenue is final: then the customer's first
    period after it that was still open when it was recorded, or its time itself when there is none (every later
    period closed, or none: the instant counts in a span's reconciliation, in no period's line)."""
    start: int | None = period_start
    for _ in range(PERIODS_MAX):
        if start is None:
            break
        closed = closed_at.get(start)
        if closed is None or not closed.before(recorded):
            return start
        start = _next_period_start(contracts, start)
    return recorded.at_ms


def _next_period_start(contracts: list[Contract], start_ms: int) -> int | None:
    """The start of the customer's first billing period (of any of its contracts) that starts after start_ms."""
    starts = []
    for contract in contracts:
        begin, finish = period_of(contract, start_ms)
        following = begin if begin > start_ms else finish
        if contract.ending_before_ms is None or following < contract.ending_before_ms:
            starts.append(following)
    return min(starts, default=None)


def _top_ups(customer: str, made: Sequence[MadeGrant]) -> list[Grant]:
    """The kernel's TOP_UP grants as grants sold at their exact cost (credits x price_per_credit)."""
    return [
        Grant(
            id=grant_id,
            customer_id=customer,
            contract_id="",
            kind=GrantKind.TOP_UP,
            amount=amount,
            paid_amount=Decimal(f"{cost_e30}E-{COST_EXPONENT}"),
            priority=priority,
            applicable_product_ids=(),
            starts_at_ms=starts_at_ms,
            expires_at_ms=expires_at_ms,
            rollover_fraction=Decimal(0),
            created_at_ms=at_ms,
            creation_order=-1,
        )
        for grant_id, kind, amount, priority, starts_at_ms, expires_at_ms, cost_e30, _, at_ms in made
        if kind == GrantKind.TOP_UP
    ]


def _customer_revenue(
    customer: str,
    contracts: list[Contract],
    grants: tuple[dict[str, _GrantLedger], dict[tuple[int, str], int]],
    start_ms: int,
    end_ms: int,
    result: Report,
    products: dict[tuple[int, str], Line],
) -> None:
    ledgers, overage = grants
    totals = result.totals
    for ledger in ledgers.values():
        totals.deferred_start += ledger.deferred_before(start_ms)
        totals.deferred_end += ledger.deferred_before(end_ms)
        if start_ms <= ledger.sold_at_ms < end_ms:
            totals.prepaid_sold += value_picos(ledger.grant, ledger.grant.amount)
        totals.recognized_credits += ledger.recognized_before(end_ms) - ledger.recognized_before(start_ms)
        totals.breakage += ledger.breakage_before(end_ms) - ledger.breakage_before(start_ms)
    for period_start, period_end in _periods(contracts, start_ms, end_ms):
        line = Line(period_start, period_end, customer_id=customer, deferred=0)
        for ledger in ledgers.values():
            recognized, broken = ledger.by_period().get(period_start, (0, 0))
            line.breakage += broken
            parts = split_largest_remainder(recognized, ledger.drawn_by_period.get(period_start, {}))
            for product_id, part in parts.items():
                _product_line(products, period_start, period_end, product_id).recognized_credits += part
            line.recognized_credits += recognized
            line.deferred = (line.deferred or 0) + ledger.deferred_before(period_start + 1)
        contract = _contract_at(contracts, period_start)
        for (start, product_id), overage_picos in sorted(overage.items()):
            if start != period_start or contract is None or not overage_picos:
                continue
            numerator, denominator = Decimal(contract.overage_price).as_integer_ratio()
            due = round_ratio(overage_picos * numerator, denominator)
            _product_line(products, period_start, period_end, product_id).recognized_overage += due
            line.recognized_overage += due
        totals.recognized_overage += line.recognized_overage
        result.by_customer.append(line)


def _product_line(products: dict[tuple[int, str], Line], start: int, end: int, product_id: str) -> Line:
    return products.setdefault((start, product_id), Line(start, end, product_id=product_id))


def _periods(contracts: list[Contract], start_ms: int, end_ms: int) -> list[tuple[int, int]]:
    """The billing periods of the customer's contracts that start in [start_ms, end_ms). A span holding more than
    PERIODS_MAX periods of one contract is refused, naming period_end, rather than cut short (its lines would stop
    while the reconciliation counts the whole span)."""
    periods: set[tuple[int, int]] = set()
    for contract in contracts:
        begin, finish = period_of(contract, start_ms)
        walked = 0
        while begin < end_ms and (contract.ending_before_ms is None or begin < contract.ending_before_ms):
            if begin >= start_ms:
                if walked == PERIODS_MAX:
                    raise InvalidArgument.field(
                        "period_end",
                        f"the span holds more than {PERIODS_MAX} billing periods of contract {contract.id!r} (a "
                        f"report walks at most {PERIODS_MAX} of a contract): end it by {iso(begin)}, or ask for "
                        "the rest apart",
                    )
                walked += 1
                periods.add((begin, finish))
            begin, finish = finish, period_containing(contract.starting_at_ms, finish)[1]
    return sorted(periods)
