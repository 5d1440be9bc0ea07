"""Compiles the control plane into the rating kernel's tables (read by engine/kernel/src/tables.rs).

The kernel prices with integers only, so every price, per_units, package size, tier bound, override and
overage price is converted here to an integer count of 10^-18 and every grant amount is already in picos
(10^-12). A value the scale cannot hold exactly is refused with TablesError, never rounded. Values wider
than 64 bits travel as decimal integer text, since msgpack integers stop at 64 bits.

What the tables hold: products (event type, aggregation, filters, pricing dimensions), every published
rate card version with its rates most specific first, version timelines (one per distinct list of versions
a customer sees, so a cohort gets its own), and per customer its contracts (period anchor, overage policy,
overrides, timeline), grants (burn-order fields) and closed periods.

`TableCompiler` compiles them whole (`compile_all`, for Kernel.load_tables) or, after a command that touched
only some customers, just those customers (`compile_customers`, for Kernel.load_customers): it remembers the
version and timeline indexes of the last whole compile, so a customer's tables name the same shared entries
and a new timeline (a cohort not seen yet) is appended after those the kernel holds. After a publish it compiles
the published version alone (`prepare_append`, for Kernel.append_version): the version is appended and inserted
into its card's timelines, which is what the whole tables compiled after the publish hold, in other indexes. For
that a timeline belongs to one rate card: timelines are indexed by (card, entries), so a card's empty timeline
is its own. A cohort's version touches only the timelines its members' contracts name: one that only members use
takes the version in place, one that others use too is copied for the members (the compiler counts each
timeline's contracts, so a cohort publish neither copies a timeline no member uses nor leaves one nobody uses).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Sequence
from decimal import Decimal

import msgspec

from engine import cohorts
from engine.contracts import Contract, Customer, OveragePolicy
from engine.control import BillingState
from engine.money import DECIMAL_CONTEXT
from engine.ratecard import (
    Cohort,
    CompiledVersion,
    FlatCurve,
    PackageCurve,
    PriceCurve,
    RateCard,
    TieredCurve,
    TierMode,
    UnitCurve,
    compile_version,
)

SCALE_PLACES = 18
DEDUPE_WINDOW_MS_DEFAULT = 35 * 24 * 3600 * 1000
FUTURE_SKEW_MS_DEFAULT = 5 * 60 * 1000


class TablesError(ValueError):
    """A control-plane value the kernel's fixed scale cannot hold exactly."""


class CurveTable(msgspec.Struct):
    kind: str
    price: str = "0"
    per_units: str = "0"
    package_size: str = "0"
    tiers: list[tuple[str, str, str]] = []


class RateTable(msgspec.Struct):
    product_id: str
    required: list[tuple[int, str]]
    curve: CurveTable


class VersionTable(msgspec.Struct):
    rate_card_id: str
    number: int
    rates: list[RateTable]


class ProductTable(msgspec.Struct):
    id: str
    event_type: str
    aggregation: str
    value_key: str
    filters: list[tuple[str, str]]
    pricing_dimensions: list[str]
    empty_count_missing: bool
    empty_filter_missing: bool


class OverrideTable(msgspec.Struct):
    product_id: str
    matches: list[tuple[str, str]]
    starting_at_ms: int
    ending_before_ms: int | None
    price: str | None
    multiplier: str | None
    multiplier_reduced: bool


class ContractTable(msgspec.Struct):
    id: str
    rate_card_id: str
    starting_at_ms: int
    ending_before_ms: int | None
    block: bool
    overage_price: str
    timeline: int
    overrides: list[OverrideTable]
    # The customer's top-up policy buys nothing in this contract's periods: it was set in another currency.
    top_up_refused: bool = False


class GrantTable(msgspec.Struct):
    id: str
    amount_picos: str
    priority: int
    applicable_product_ids: list[str]
    starts_at_ms: int
    expires_at_ms: int | None
    creation_order: int
    rollover_fraction_e18: str = "0"  # at 10^-18, in [0, 10^18]: the share of the remainder that rolls over
    use_ends_at_rollover: bool = False  # usable only for usage dated before its rollover (engine/ledger.py)
    expiring_at_rollover_rolls: bool = False  # expiring exactly at its rollover, rolls over there (engine/ledger.py)


class CustomerTable(msgspec.Struct):
    id: str
    contracts: list[ContractTable]
    grants: list[GrantTable]
    closed_periods: list[int]


class CustomerTables(msgspec.Struct):
    first_timeline: int  # how many timelines the kernel holds; `timelines` come after them
    timelines: list[list[tuple[int, int]]]
    customers: list[CustomerTable]


class VersionAppend(msgspec.Struct):
    """A published version for Kernel.append_version (engine/kernel/src/tables.rs VersionAppend)."""

    versions_held: int
    timelines_held: int
    version: VersionTable
    effective_from_ms: int
    in_place: list[int]  # the card's timelines the version is inserted into (a publish to everyone)
    split: list[int]  # the card's timelines copied with it inserted, the copies appended in order (a cohort)
    members: list[str]  # whose contracts of the card move to the copies


# A timeline's index key: its rate card and its (effective_from_ms, version index) entries.
TimelineKey = tuple[str, tuple[tuple[int, int], ...]]


class PreparedAppend(msgspec.Struct):
    """`TableCompiler.prepare_append`'s answer: the kernel's bytes, and the compiler's indexes once it took them."""

    encoded: bytes
    version_key: tuple[str, int]
    version_index: int
    rekeyed: list[tuple[TimelineKey, TimelineKey]]  # (old key, new key) of timelines changed in place
    added: list[TimelineKey]  # the copies' keys, in index order after those held
    split: list[int]  # the timelines copied, in the copies' order
    members: list[str]  # whose contracts of the card on a `split` timeline move to its copy


class Tables(msgspec.Struct):
    future_skew_ms: int
    dedupe_window_ms: int
    products: list[ProductTable]
    versions: list[VersionTable]
    timelines: list[list[tuple[int, int]]]
    customers: list[CustomerTable]


def fixed(value: Decimal | str, what: str) -> str:
    """The exact count of 10^-18 in `value`, as text; TablesError if it has more than 18 decimal places."""
    decimal_value = Decimal(value)
    # In DECIMAL_CONTEXT: the default context's 28 digits would round a price of 10^10 or more with 18 places.
    scaled = decimal_value.scaleb(SCALE_PLACES, context=DECIMAL_CONTEXT)
    if not decimal_value.is_finite() or scaled != scaled.to_integral_value():
        raise TablesError(f"{what}: {value} cannot be held exactly at {SCALE_PLACES} decimal places")
    return str(int(scaled))


def compile_tables(
    state: BillingState,
    *,
    future_skew_ms: int = FUTURE_SKEW_MS_DEFAULT,
    dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
) -> bytes:
    """The kernel tables for this control-plane state, msgpack-encoded for Kernel.load_tables."""
    return TableCompiler(future_skew_ms=future_skew_ms, dedupe_window_ms=dedupe_window_ms).compile_all(state)


class TableCompiler:
    """Compiles the tables whole, or some customers against the last whole compile."""

    def __init__(
        self, *, future_skew_ms: int = FUTURE_SKEW_MS_DEFAULT, dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT
    ) -> None:
        self.future_skew_ms = future_skew_ms
        self.dedupe_window_ms = dedupe_window_ms
        self._version_index: dict[tuple[str, int], int] = {}
        self._timeline_index: dict[TimelineKey, int] = {}
        # What the kernel's routes name, as compiled: each customer's contracts' timeline indexes in order, and per
        # timeline index its rate card and how many contracts name it, so that a cohort's version knows which
        # timelines only its members use (prepare_append). A tuple of ints: about 100 bytes a customer.
        self._customer_timelines: dict[str, tuple[int, ...]] = {}
        self._timeline_cards: list[str] = []
        self._timeline_users: list[int] = []

    def compile_all(self, state: BillingState) -> bytes:
        """Every table, msgpack-encoded for Kernel.load_tables; the indexes later customer compiles follow."""
        products, versions = self.shared_tables(state)
        timelines: list[list[tuple[int, int]]] = []
        contracts_by_customer: dict[str, list[Contract]] = {}
        for contract in state.contracts.values():  # grouped once: a scan per customer would be quadratic
            contracts_by_customer.setdefault(contract.customer_id, []).append(contract)
        customers = [
            self.customer_table(state, customer, contracts_by_customer.get(customer.id, ()), timelines)
            for customer in state.customers.values()
        ]
        tables = Tables(self.future_skew_ms, self.dedupe_window_ms, products, versions, timelines, customers)
        return msgspec.msgpack.encode(tables)

    def shared_tables(self, state: BillingState) -> tuple[list[ProductTable], list[VersionTable]]:
        """The products and versions of a whole compile: indexes the versions afresh and forgets the timelines, which
        the customers' tables compiled next index again."""
        products = [
            ProductTable(
                p.id,
                p.event_type,
                p.aggregation.value,
                p.value_key,
                sorted(p.filters.items()),
                list(p.pricing_dimensions),
                p.empty_count_missing,
                p.empty_filter_missing,
            )
            for p in state.products.values()
        ]
        versions: list[VersionTable] = []
        self._version_index = {}
        for card in state.rate_cards.values():
            for _, number in card.timeline:
                if (card.id, number) not in self._version_index:
                    self._version_index[(card.id, number)] = len(versions)
                    versions.append(_version_table(card, number, state))
        self._timeline_index = {}
        self._customer_timelines = {}
        self._timeline_cards = []
        self._timeline_users = []
        return products, versions

    @property
    def timelines_held(self) -> int:
        """How many timelines the compiled customers name so far (those the kernel holds once loaded)."""
        return len(self._timeline_index)

    @property
    def unused_timelines(self) -> int:
        """How many of the timelines the compiled customers name so far no contract names any more (a customer
        compiled again moved off it; a cohort publish leaves none)."""
        return self._timeline_users.count(0)

    def prepare_append(
        self, state: BillingState, rate_card_id: str, number: int, members: Iterable[str] = ()
    ) -> PreparedAppend:
        """The published version `number` of the card for Kernel.append_version, against the last whole compile
        (and the appends and customers loaded since): inserted in place into every timeline of the card for a
        publish to everyone. For a cohort, `members` (the cohort's customers the kernel holds tables for) decide:
        a timeline of the card only members' contracts name takes it in place, one others name too is copied with
        it and the members move to the copy, one no member names is left alone. Changes no index until
        `commit_append`."""
        card = state.rate_cards[rate_card_id]
        version = card.version(number)
        assert version.effective_from_ms is not None, "a published version has an effective time"
        version_index = len(self._version_index)
        entry = (version.effective_from_ms, version_index)
        everyone = version.cohort is None
        member_ids = [] if everyone else list(dict.fromkeys(members))  # a member counted twice would look alone
        own = [(key, index) for key, index in self._timeline_index.items() if key[0] == rate_card_id]
        in_place: list[int]
        split: list[int]
        if everyone:
            in_place, split = [index for _, index in own], []
        else:
            in_place, split = self._cohort_timelines(rate_card_id, member_ids)
        key_of = {index: key for key, index in own}
        append = VersionAppend(
            versions_held=len(self._version_index),
            timelines_held=len(self._timeline_index),
            version=_version_table(card, number, state),
            effective_from_ms=version.effective_from_ms,
            in_place=in_place,
            split=split,
            members=member_ids,
        )
        return PreparedAppend(
            msgspec.msgpack.encode(append),
            (rate_card_id, number),
            version_index,
            [(key_of[index], (rate_card_id, _inserted(key_of[index][1], entry))) for index in in_place],
            [(rate_card_id, _inserted(key_of[index][1], entry)) for index in split],
            split,
            member_ids,
        )

    def _cohort_timelines(self, rate_card_id: str, member_ids: Iterable[str]) -> tuple[list[int], list[int]]:
        """(in place, split): the card's timelines the members' contracts name, in the order first named, those
        that only members' contracts name apart from those that others' name too."""
        named: dict[int, int] = {}  # timeline index -> how many members' contracts name it
        for customer_id in member_ids:
            for index in self._customer_timelines.get(customer_id, ()):
                if self._timeline_cards[index] == rate_card_id:
                    named[index] = named.get(index, 0) + 1
        in_place = [index for index, count in named.items() if count == self._timeline_users[index]]
        split = [index for index, count in named.items() if count != self._timeline_users[index]]
        return in_place, split

    def commit_append(self, prepared: PreparedAppend) -> None:
        """The indexes after the kernel took `prepared` (Kernel.append_version)."""
        self._version_index[prepared.version_key] = prepared.version_index
        for old, new in prepared.rekeyed:
            self._timeline_index[new] = self._timeline_index.pop(old)
        copies: dict[int, int] = {}
        for source, key in zip(prepared.split, prepared.added, strict=True):
            copies[source] = self._timeline_index[key] = len(self._timeline_index)
            self._timeline_cards.append(key[0])
            self._timeline_users.append(0)
        if not copies:
            return
        for customer_id in prepared.members:
            named = self._customer_timelines.get(customer_id, ())
            for index in named:
                if index in copies:
                    self._timeline_users[index] -= 1
                    self._timeline_users[copies[index]] += 1
            if any(index in copies for index in named):
                self._customer_timelines[customer_id] = tuple(copies.get(index, index) for index in named)

    def compile_customers(
        self, state: BillingState, customer_ids: Iterable[str], contracts_of: Callable[[str], Sequence[Contract]]
    ) -> bytes:
        """These customers' tables, msgpack-encoded for Kernel.load_customers, against the last `compile_all`
        (which must have seen every product, version and rate card they name)."""
        first_timeline = self.timelines_held
        timelines: list[list[tuple[int, int]]] = []
        customers = [
            self.customer_table(state, state.customers[customer_id], contracts_of(customer_id), timelines)
            for customer_id in sorted(customer_ids)
        ]
        return msgspec.msgpack.encode(CustomerTables(first_timeline, timelines, customers))

    def customer_table(
        self,
        state: BillingState,
        customer: Customer,
        contracts: Iterable[Contract],
        timelines: list[list[tuple[int, int]]],
    ) -> CustomerTable:
        """One customer's tables; a timeline not indexed yet gets the next index and is added to `timelines`."""
        account = state.accounts[customer.id]
        contract_tables = []
        for held in self._customer_timelines.pop(customer.id, ()):  # the tables it had: replaced by these
            self._timeline_users[held] -= 1
        named: list[int] = []
        for contract in contracts:
            card = state.rate_cards[contract.rate_card_id]
            timeline = _timeline_for(card, customer, self._version_index)
            key = (card.id, timeline)
            index = self._timeline_index.get(key)
            if index is None:
                index = self._timeline_index[key] = len(self._timeline_index)
                timelines.append(list(timeline))
                self._timeline_cards.append(card.id)
                self._timeline_users.append(0)
            self._timeline_users[index] += 1
            named.append(index)
            refused = state.top_up_currencies.get(customer.id, contract.currency) != contract.currency
            contract_tables.append(_contract_table(contract, index, top_up_refused=refused))
        if named:
            self._customer_timelines[customer.id] = tuple(named)
        grants = [
            GrantTable(
                g.id,
                str(g.amount),
                g.priority,
                list(g.applicable_product_ids),
                g.starts_at_ms,
                g.expires_at_ms,
                g.creation_order,
                str(int(g.rollover_fraction.scaleb(18, context=DECIMAL_CONTEXT))),
                g.use_ends_at_rollover,
                g.expiring_at_rollover_rolls,
            )
            for g in account.grants
        ]
        return CustomerTable(customer.id, contract_tables, grants, sorted(account.closed_periods))


def _version_table(card: RateCard, number: int, state: BillingState) -> VersionTable:
    version = card.version(number)
    compiled: CompiledVersion = compile_version(version, state.products)
    for index, rate in enumerate(version.rates):
        _check_literals(msgspec.to_builtins(rate.price), f"rate card {card.id!r} version {number} rates[{index}]")
    rates = [
        RateTable(rate.product_id, [(position, value) for position, value in rate.required], _curve_table(rate.curve))
        for product_rates in compiled.rates_by_product.values()
        for rate in product_rates  # most specific first, as compile_version orders them
    ]
    return VersionTable(card.id, number, rates)


def _check_literals(spec: object, where: str) -> None:
    """A price field written as a literal decimal must be exact at 18 places (a formula is evaluated and rounded
    to 18 places once, at validation, by design; a literal is what the user meant, so it is never rounded)."""
    if isinstance(spec, dict):
        for key, value in spec.items():
            _check_literals(value, f"{where}.{key}")
    elif isinstance(spec, list):
        for position, value in enumerate(spec):
            _check_literals(value, f"{where}[{position}]")
    elif isinstance(spec, str) and spec.strip():
        try:
            literal = Decimal(spec.strip())
        except ArithmeticError:
            return  # a formula or a name, not a literal
        if literal.is_finite():
            fixed(spec.strip(), where)


def _curve_table(curve: PriceCurve) -> CurveTable:
    match curve:
        case UnitCurve():
            return CurveTable("UNIT", price=fixed(curve.price, "price"), per_units=fixed(curve.per_units, "per_units"))
        case TieredCurve():
            tiers = [
                (
                    "" if tier.up_to is None else fixed(tier.up_to, "up_to"),
                    fixed(tier.unit_price, "unit_price"),
                    fixed(tier.flat_price, "flat_price"),
                )
                for tier in curve.tiers
            ]
            kind = "VOLUME" if curve.mode is TierMode.VOLUME else "GRADUATED"
            return CurveTable(kind, per_units=fixed(curve.per_units, "per_units"), tiers=tiers)
        case PackageCurve():
            return CurveTable(
                "PACKAGE",
                price=fixed(curve.package_price, "package_price"),
                package_size=fixed(curve.package_size, "package_size"),
            )
        case FlatCurve():
            return CurveTable("FLAT", price=fixed(curve.price, "price"))


def _in_cohort(cohort: Cohort | None, customer: Customer) -> bool:
    return cohorts.contains(cohort, customer)


def _timeline_for(
    card: RateCard, customer: Customer, version_index: dict[tuple[str, int], int]
) -> tuple[tuple[int, int], ...]:
    """The (effective_from_ms, version index) entries this customer sees, ascending; a later entry wins a tie."""
    return tuple(
        (effective_from_ms, version_index[(card.id, number)])
        for effective_from_ms, number in card.timeline
        if _in_cohort(card.version(number).cohort, customer)
    )


def _inserted(timeline: tuple[tuple[int, int], ...], entry: tuple[int, int]) -> tuple[tuple[int, int], ...]:
    """The timeline with `entry` after every entry effective at or before it, as the card's timeline takes a
    publish (engine/versions.py) and as the kernel inserts it."""
    place = bisect.bisect_right(timeline, entry[0], key=lambda held: held[0])
    return (*timeline[:place], entry, *timeline[place:])


def _contract_table(contract: Contract, timeline: int, *, top_up_refused: bool = False) -> ContractTable:
    overrides = [
        OverrideTable(
            o.product_id,
            sorted(o.match.items()),
            o.starting_at_ms,
            o.ending_before_ms,
            None if o.price is None else fixed(o.price, f"override {o.id!r} price"),
            None if o.multiplier is None else fixed(o.multiplier, f"override {o.id!r} multiplier"),
            o.multiplier_reduced,
        )
        for o in contract.overrides
    ]
    return ContractTable(
        contract.id,
        contract.rate_card_id,
        contract.starting_at_ms,
        contract.ending_before_ms,
        contract.overage_policy is OveragePolicy.BLOCK,
        fixed(contract.overage_price, f"contract {contract.id!r} overage_price"),
        timeline,
        overrides,
        top_up_refused,
    )
