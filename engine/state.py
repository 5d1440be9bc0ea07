"""The billing state machine: Command -> (State', Result), deterministic and free of I/O.

`Engine.apply(command, seq)` validates a command completely before changing anything, so a command that
raises an EngineError has changed nothing and is not journaled. Usage batches never raise for a bad event:
each event is accepted, a duplicate, or refused with a reason. `BillingState` is everything that must
survive a restart (a msgspec Struct, so a snapshot is one encode); `Engine` adds indexes and compiled rate
card versions that are rebuilt from it.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal

import msgspec

from engine import commands as cmd
from engine.contracts import Contract, Customer, OveragePolicy, Period, period_containing
from engine.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Repeated, Unimplemented
from engine.ledger import Draw, Grant, GrantKind, draw_in_order, in_burn_order, refund, simulate_draw
from engine.money import parse_decimal, to_picos
from engine.products import Aggregation, Product
from engine.ratecard import (
    HOUR_MS,
    CompiledVersion,
    Finding,
    PriceCurve,
    RateCard,
    Severity,
    Version,
    VersionState,
    check_publishable,
    compile_version,
    make_draft,
    normalize_match,
    rate_key,
    validate,
)
from engine.rating import (
    Aggregate,
    AggregateKey,
    PlannedCharge,
    Refusal,
    RejectReason,
    curve_for,
    measure_event,
    plan_charge,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
TEXT_BYTES_MAX = 256
TEXT_CHARS_SAFE = TEXT_BYTES_MAX // 4  # UTF-8 takes at most 4 bytes a character
CURVES_CACHED_MAX = 100_000  # distinct (version, product, dimension values) priced without re-looking up
EVENT_MAP_ENTRIES_MAX = 64
FUTURE_SKEW_MS_DEFAULT = 5 * 60 * 1000
DAY_MS = 24 * 3_600_000
USAGE_VALUE_MAX = 1e15  # per event; aggregates of many such still fit the 60-digit arithmetic
AUDIT_DIFF_BYTES_MAX = 64 * 1024


class AuditEntry(msgspec.Struct, frozen=True, array_like=True):
    seq: int
    at_ms: int
    actor: str
    action: str
    target: str
    diff: str  # JSON of the command's fields


class Account(msgspec.Struct, gc=False):
    """One customer's money: grants, per-period aggregates and charges. No command touches two accounts."""

    customer_id: str
    grants: list[Grant] = []
    aggregates: dict[AggregateKey, Aggregate] = {}
    period_charges: dict[int, int] = {}  # period start ms -> picos charged
    period_overage: dict[int, int] = {}  # period start ms -> picos no grant covered
    closed_periods: dict[int, None] = {}  # a dict, not a set: snapshot bytes keep one order


class RequestMark(msgspec.Struct, frozen=True, array_like=True):
    """What made an idempotency key's first call: its fingerprint, and the draft version it created (if any)."""

    fingerprint: bytes
    version: int = 0


class BillingState(msgspec.Struct):
    last_seq: int = 0
    customers: dict[str, Customer] = {}
    products: dict[str, Product] = {}
    rate_cards: dict[str, RateCard] = {}
    contracts: dict[str, Contract] = {}
    accounts: dict[str, Account] = {}
    audit: list[AuditEntry] = []
    grants_created: int = 0
    # Idempotency key ("grant/g-1", "rate_card/gpt/draft/<request_id>", ...) -> the request that used it first:
    # a retry of that same request is answered as the first call was, and changes nothing.
    requests: dict[str, RequestMark] = {}


class StoredAccount(Account):
    """An Account as a snapshot stores it: JSON object keys are strings, so aggregates are (key, value) pairs."""

    aggregates: list[tuple[AggregateKey, Aggregate]] = []  # type: ignore[assignment]


class StoredState(BillingState):
    """BillingState as a snapshot stores it (see StoredAccount)."""

    accounts: dict[str, StoredAccount] = {}  # type: ignore[assignment]


class Rejection(msgspec.Struct, frozen=True, array_like=True, gc=False):
    index: int
    transaction_id: str
    reason: RejectReason
    message: str


class LedgerEntry(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """What one event did to one product's money: the charge, the grants it drew, what was left as overage."""

    transaction_id: str
    product_id: str
    version: int
    charge: int
    draws: list[Draw]
    overage: int


class IngestResult(msgspec.Struct, frozen=True, gc=False):
    accepted: int
    duplicates: int
    rejections: list[Rejection]
    # transaction id -> content hash of each newly accepted event: what the dedupe index gains.
    accepted_transactions: dict[str, bytes]
    entries: list[LedgerEntry] = []


class PublishResult(msgspec.Struct, frozen=True):
    version: Version
    events_rerated: int
    findings: list[Finding]


@dataclass(frozen=True, slots=True)
class GrantView:
    grant: Grant
    remaining: int
    expired: int


@dataclass(frozen=True, slots=True)
class BalanceView:
    customer_id: str
    remaining: int
    held: int
    available: int
    grants: list[GrantView]
    period: Period | None
    period_charges: int
    overage: int
    overage_due: Decimal
    pricing_unit: str
    as_of_seq: int


@dataclass(frozen=True, slots=True)
class Estimate:
    allowed: bool
    reason: str
    message: str
    cost: int
    available: int


def content_hash(event: cmd.UsageEvent) -> bytes:
    """Identity of an event's content apart from its transaction id; map order does not matter."""
    canonical = msgspec.msgpack.encode(
        (
            event.customer_id,
            event.event_type,
            event.timestamp_ms,
            sorted(event.dimensions.items()),
            sorted(event.values.items()),
            event.reservation_id,
        )
    )
    return hashlib.blake2b(canonical, digest_size=16).digest()


def check_id(value: str, field_path: str) -> None:
    """The one rule for every id a client chooses (documented in the proto comments): 1-128 characters of
    ASCII letters, digits and . _ : @ -"""
    if not ID_PATTERN.match(value):
        raise InvalidArgument.field(field_path, f"{value!r} must be 1-128 characters of letters, digits and ._:@-")


_fingerprint_encoder = msgspec.msgpack.Encoder(order="deterministic")


def fingerprint(command: cmd.AdminCommand) -> bytes:
    """What a retry must repeat to be the same request: every field but the time and the caller."""
    canonical = _fingerprint_encoder.encode(msgspec.structs.replace(command, at_ms=0, actor=""))
    return hashlib.blake2b(canonical, digest_size=16).digest()


@dataclass
class Engine:
    state: BillingState = field(default_factory=BillingState)
    future_skew_ms: int = FUTURE_SKEW_MS_DEFAULT
    _compiled: dict[tuple[str, int], CompiledVersion] = field(default_factory=dict)
    _products_by_event_type: dict[str, list[Product]] = field(default_factory=dict)
    _contracts_by_customer: dict[str, list[Contract]] = field(default_factory=dict)
    _grant_ids: set[str] = field(default_factory=set)
    # Caches for the per-event path, each rebuilt on demand from the state and dropped where it could go stale.
    # customer id -> (contract, period) of its last event: consecutive events almost always share both.
    _routes: dict[str, tuple[Contract, Period]] = field(default_factory=dict)
    # (rate card id, hour) -> version number in force (versions take effect on hour boundaries).
    _versions_by_hour: dict[tuple[str, int], int | None] = field(default_factory=dict)
    # (rate card id, version, product id, dimension key) -> price curve, for contracts without overrides.
    _curves: dict[tuple[str, int, str, tuple[str, ...]], PriceCurve] = field(default_factory=dict)
    # customer id -> its grants in burn order.
    _burn_orders: dict[str, list[Grant]] = field(default_factory=dict)
    _ingesting: IngestRun | None = None  # the batch being rated a slice at a time, if any

    def __post_init__(self) -> None:
        self._reindex()

    def reset(self, state: BillingState) -> None:
        """Replaces the whole state (recovery after a failed commit) and rebuilds what derives from it."""
        self.state = state
        self._ingesting = None
        self._compiled.clear()
        self._reindex()

    # Snapshots ---------------------------------------------------------------------------------------------

    def encode_snapshot(self) -> bytes:
        # JSON, not msgpack: amounts in picos pass 2^64 (a grant of 20 million credits is 2 x 10^19 picos),
        # and msgpack integers stop at 64 bits. JSON keys are strings, so aggregates go as (key, value) pairs.
        state = self.state
        fields = msgspec.structs.asdict(state)
        fields["accounts"] = {
            customer_id: StoredAccount(
                **{**msgspec.structs.asdict(account), "aggregates": list(account.aggregates.items())}
            )
            for customer_id, account in state.accounts.items()
        }
        return msgspec.json.encode(StoredState(**fields))

    @classmethod
    def from_snapshot(cls, blob: bytes, *, future_skew_ms: int = FUTURE_SKEW_MS_DEFAULT) -> Engine:
        if blob[:1] != b"{":  # written before snapshots were JSON: a msgpack map
            return cls(msgspec.msgpack.decode(blob, type=BillingState), future_skew_ms=future_skew_ms)
        stored = msgspec.json.decode(blob, type=StoredState)
        fields = msgspec.structs.asdict(stored)
        fields["accounts"] = {
            customer_id: Account(**{**msgspec.structs.asdict(account), "aggregates": dict(account.aggregates)})
            for customer_id, account in stored.accounts.items()
        }
        return cls(BillingState(**fields), future_skew_ms=future_skew_ms)

    def _reindex(self) -> None:
        self._routes.clear()
        self._versions_by_hour.clear()
        self._curves.clear()
        self._burn_orders.clear()
        self._products_by_event_type.clear()
        for product in self.state.products.values():
            self._products_by_event_type.setdefault(product.event_type, []).append(product)
        self._contracts_by_customer.clear()
        for contract in self.state.contracts.values():
            self._contracts_by_customer.setdefault(contract.customer_id, []).append(contract)
        self._grant_ids = {grant.id for account in self.state.accounts.values() for grant in account.grants}

    # Applying commands -------------------------------------------------------------------------------------

    def apply(self, command: cmd.Command, seq: int) -> object:
        """Applies one command as journal record `seq`; raises EngineError (having changed nothing) to refuse it."""
        assert seq == self.state.last_seq + 1, f"commands apply in journal order: {seq} after {self.state.last_seq}"
        assert self._ingesting is None, "a batch is being rated in slices: finish it first"
        if isinstance(command, cmd.IngestBatch):
            result: object = self.ingest(command)
        else:
            result = self._apply_admin(command)
            self._audit(command, seq, result)
        self.state.last_seq = seq
        return result

    def _apply_admin(self, command: cmd.AdminCommand) -> object:
        match command:
            case cmd.CreateCustomer():
                return self._create_customer(command)
            case cmd.CreateProduct():
                return self._create_product(command)
            case cmd.CreateRateCard():
                return self._create_rate_card(command)
            case cmd.CreateDraftVersion():
                return self._create_draft(command)
            case cmd.PublishVersion():
                return self._publish(command)
            case cmd.CreateContract():
                return self._create_contract(command)
            case cmd.AddOverride():
                return self._add_override(command)
            case cmd.GrantCredits():
                return self._grant_credits(command)
        raise AssertionError(f"unknown command {type(command).__name__}")

    def _audit(self, command: cmd.AdminCommand, seq: int, result: object) -> None:
        fields = msgspec.to_builtins(command)
        fields.pop("at_ms", None)
        fields.pop("actor", None)
        diff = msgspec.json.encode(fields).decode()[:AUDIT_DIFF_BYTES_MAX]
        action = type(command).__name__
        target = _audit_target(command, result)
        self.state.audit.append(AuditEntry(seq, command.at_ms, command.actor, action, target, diff))

    def _repeat(self, key: str, command: cmd.AdminCommand, answer: Callable[[], object]) -> bytes:
        """Raises Repeated, with the first call's answer, when this same request already used `key`; else
        returns the request's fingerprint, to `_remember` once the command has succeeded. The same key from a
        different request falls through to the caller's own ALREADY_EXISTS."""
        print_ = fingerprint(command)
        mark = self.state.requests.get(key)
        if mark is not None and mark.fingerprint == print_:
            raise Repeated(answer())
        return print_

    def _remember(self, key: str, print_: bytes, version: int = 0) -> None:
        self.state.requests[key] = RequestMark(print_, version)

    def _create_customer(self, c: cmd.CreateCustomer) -> Customer:
        check_id(c.id, "id")
        _check_text_map(c.attributes, "attributes")
        key = f"customer/{c.id}"
        print_ = self._repeat(key, c, lambda: self.state.customers[c.id])
        if c.id in self.state.customers:
            raise AlreadyExists(f"customer {c.id!r} already exists")
        customer = Customer(c.id, c.name or c.id, dict(c.attributes), c.at_ms)
        self.state.customers[c.id] = customer
        self.state.accounts[c.id] = Account(c.id)
        self._remember(key, print_)
        return customer

    def _create_product(self, c: cmd.CreateProduct) -> Product:
        check_id(c.id, "product.id")
        violations = []
        if not c.event_type:
            violations.append(("product.event_type", "is required"))
        if c.aggregation is None:
            violations.append(("product.aggregation", "is required: SUM, COUNT, MAX, UNIQUE_COUNT or LATEST"))
        elif c.aggregation is not Aggregation.COUNT and not c.value_key:
            violations.append(("product.value_key", f"is required for {c.aggregation} (which entry to read)"))
        if len(set(c.pricing_dimensions)) != len(c.pricing_dimensions) or "" in c.pricing_dimensions:
            violations.append(("product.pricing_dimensions", "must be distinct, non-empty keys"))
        if violations:
            raise InvalidArgument(violations)
        assert c.aggregation is not None
        key = f"product/{c.id}"
        print_ = self._repeat(key, c, lambda: self.state.products[c.id])
        if c.id in self.state.products:
            raise AlreadyExists(f"product {c.id!r} already exists")
        product = Product(
            c.id,
            c.name or c.id,
            c.event_type,
            c.aggregation,
            c.value_key,
            dict(c.filters),
            tuple(c.pricing_dimensions),
            c.unit,
            c.at_ms,
        )
        self.state.products[c.id] = product
        self._products_by_event_type.setdefault(product.event_type, []).append(product)
        self._remember(key, print_)
        return product

    def _create_rate_card(self, c: cmd.CreateRateCard) -> RateCard:
        check_id(c.id, "id")
        if not c.pricing_unit:
            raise InvalidArgument.field("pricing_unit", 'is required: "credits" or an ISO currency such as "USD"')
        key = f"rate_card/{c.id}"
        print_ = self._repeat(key, c, lambda: self.state.rate_cards[c.id])
        if c.id in self.state.rate_cards:
            raise AlreadyExists(f"rate card {c.id!r} already exists")
        card = RateCard(c.id, c.name or c.id, c.pricing_unit, c.at_ms)
        self.state.rate_cards[c.id] = card
        self._remember(key, print_)
        return card

    def rate_card(self, rate_card_id: str) -> RateCard:
        card = self.state.rate_cards.get(rate_card_id)
        if card is None:
            raise NotFound(f"rate card {rate_card_id!r} does not exist")
        return card

    def _create_draft(self, c: cmd.CreateDraftVersion) -> Version:
        card = self.rate_card(c.rate_card_id)
        key = f"rate_card/{card.id}/draft/{c.request_id}"
        print_ = b""
        if c.request_id:
            check_id(c.request_id, "request_id")
            mark = self.state.requests.get(key)
            if mark is not None:
                if mark.fingerprint != fingerprint(c):
                    raise AlreadyExists(
                        f"request_id {c.request_id!r} already made version {mark.version} of rate card {card.id!r} "
                        "from a different request: use a new request_id for a new draft"
                    )
                raise Repeated(card.version(mark.version))
            print_ = fingerprint(c)
        if c.based_on_version:
            card.version(c.based_on_version)
        violations = []
        for name, value in c.set_parameters.items():
            if not name.isidentifier():
                violations.append((f"set_parameters[{name}]", "a parameter name must be an identifier"))
            try:
                parse_decimal(value, f"set_parameters[{name}]", allow_negative=True)
            except InvalidArgument as exc:
                violations.extend(exc.violations)
        for index, rate in enumerate(c.upsert_rates):
            if not rate.product_id:
                violations.append((f"upsert_rates[{index}].product_id", "is required"))
        if violations:
            raise InvalidArgument(violations)
        version = make_draft(
            card,
            based_on=c.based_on_version,
            set_parameters=c.set_parameters,
            remove_parameters=c.remove_parameters,
            upsert_rates=c.upsert_rates,
            remove_rates=[rate_key(r.product_id, r.match) for r in c.remove_rates],
            change_note=c.change_note,
            at_ms=c.at_ms,
            actor=c.actor,
        )
        card.versions.append(version)
        if c.request_id:
            self._remember(key, print_, version.number)
        return version

    def validate_version(self, rate_card_id: str, number: int) -> list[Finding]:
        return validate(self.rate_card(rate_card_id).version(number), self.state.products)

    def _publish(self, c: cmd.PublishVersion) -> PublishResult:
        card = self.rate_card(c.rate_card_id)
        version = card.version(c.version)
        if version.state is VersionState.PUBLISHED and c.effective_from_ms in (None, version.effective_from_ms):
            # Publishing what is published, from the same time: a retry. Answered as the first call was.
            raise Repeated(PublishResult(version, 0, validate(version, self.state.products)))
        effective_from_ms = c.effective_from_ms if c.effective_from_ms is not None else c.at_ms - c.at_ms % HOUR_MS
        check_publishable(version, effective_from_ms)
        taken_over = card.rated_hours_taken_over(effective_from_ms)
        if taken_over:
            raise Unimplemented(
                "re-rating usage already rated is not available yet: PublishVersion of a version effective before "
                f"it; rate card {card.id!r} has rated usage in {len(taken_over)} hour(s) this version would price, "
                f"the first from {taken_over[0] * HOUR_MS} (Unix ms); publish with an effective_from after that usage"
            )
        findings = validate(version, self.state.products)
        errors = [f for f in findings if f.severity is Severity.ERROR]
        if errors:
            raise InvalidArgument([(f"version.{f.path}", f.message) for f in errors])
        version.state = VersionState.PUBLISHED
        version.effective_from_ms = effective_from_ms
        version.published_at_ms = c.at_ms
        # After any entry with the same effective_from: of two versions effective at once, the later published wins.
        bisect.insort_right(card.timeline, (effective_from_ms, version.number), key=lambda entry: entry[0])
        self._versions_by_hour.clear()
        # Re-rating usage already rated under an earlier version is not done yet: such usage keeps its price.
        return PublishResult(version, 0, findings)

    def compiled(self, card: RateCard, number: int) -> CompiledVersion:
        key = (card.id, number)
        found = self._compiled.get(key)
        if found is None:
            found = self._compiled[key] = compile_version(card.version(number), self.state.products)
        return found

    def _create_contract(self, c: cmd.CreateContract) -> Contract:
        if c.id:
            check_id(c.id, "id")
        customer = self.customer(c.customer_id)
        card = self.rate_card(c.rate_card_id)
        # Unset: the start of the current UTC day, so that usage stamped a moment before the contract was
        # created is covered and periods begin at midnight rather than at an arbitrary millisecond.
        starting_at_ms = c.starting_at_ms if c.starting_at_ms is not None else c.at_ms - c.at_ms % DAY_MS
        if c.ending_before_ms is not None and c.ending_before_ms <= starting_at_ms:
            raise InvalidArgument.field("ending_before", "must be after starting_at")
        overage_price = c.overage_price or "1"
        parse_decimal(overage_price, "overage_price")
        # Without an id, the contract is named after its customer and start: a customer's contracts never
        # overlap, so a retry of the same request finds the same id (and a retry on a later day, the overlap).
        contract_id = c.id or _contract_id(customer.id, starting_at_ms)
        key = f"contract/{contract_id}"
        print_ = self._repeat(key, c, lambda: self.state.contracts[contract_id])
        if contract_id in self.state.contracts:
            raise AlreadyExists(f"contract {contract_id!r} already exists")
        for other in self._contracts_by_customer.get(customer.id, []):
            if other.overlaps(starting_at_ms, c.ending_before_ms):
                raise FailedPrecondition(f"customer {customer.id!r} already has contract {other.id!r} in that time")
        contract = Contract(
            contract_id,
            customer.id,
            card.id,
            starting_at_ms,
            c.ending_before_ms,
            c.overage_policy,
            overage_price,
            c.currency or "USD",
            c.at_ms,
        )
        self.state.contracts[contract_id] = contract
        self._contracts_by_customer.setdefault(customer.id, []).append(contract)
        self._routes.pop(customer.id, None)
        self._remember(key, print_)
        return contract

    def contract(self, contract_id: str) -> Contract:
        contract = self.state.contracts.get(contract_id)
        if contract is None:
            raise NotFound(f"contract {contract_id!r} does not exist")
        return contract

    def customer(self, customer_id: str) -> Customer:
        customer = self.state.customers.get(customer_id)
        if customer is None:
            raise NotFound(f"customer {customer_id!r} does not exist")
        return customer

    def _add_override(self, c: cmd.AddOverride) -> Contract:
        contract = self.contract(c.contract_id)
        o = msgspec.structs.replace(c.override, match=normalize_match(c.override.match))
        if o.product_id not in self.state.products:
            raise InvalidArgument.field("override.product_id", f"unknown product {o.product_id!r}")
        if (o.multiplier is None) == (o.price is None):
            raise InvalidArgument.field("override", "set exactly one of multiplier and price")
        if o.multiplier is not None:
            parse_decimal(o.multiplier, "override.multiplier")
        if o.price is not None:
            parse_decimal(o.price, "override.price")
        if o.ending_before_ms is not None and o.ending_before_ms <= o.starting_at_ms:
            raise InvalidArgument.field("override.ending_before", "must be after starting_at")
        if o.id:
            check_id(o.id, "override.id")
        else:
            # Named after its content: two overrides alike in everything are one, so a retry finds this one.
            o = msgspec.structs.replace(o, id="override-" + fingerprint(c).hex()[:16])
        key = f"contract/{contract.id}/override/{o.id}"
        print_ = self._repeat(key, c, lambda: contract)
        if any(existing.id == o.id for existing in contract.overrides):
            raise AlreadyExists(f"contract {contract.id!r} already has an override {o.id!r}")
        contract.overrides.append(o)
        self._remember(key, print_)
        return contract

    def _grant_credits(self, c: cmd.GrantCredits) -> Grant:
        if c.id:
            check_id(c.id, "grant.id")
        if c.contract_id:
            contract = self.contract(c.contract_id)
            if c.customer_id and c.customer_id != contract.customer_id:
                raise InvalidArgument.field(
                    "grant.customer_id", f"contract {contract.id!r} belongs to {contract.customer_id!r}"
                )
            customer_id = contract.customer_id
        elif c.customer_id:
            customer_id = self.customer(c.customer_id).id
        else:
            raise InvalidArgument.field("grant.customer_id", "customer_id or contract_id is required")
        if c.kind is None:
            raise InvalidArgument.field("grant.kind", "is required: PREPAID, PROMOTIONAL, ROLLOVER or TOP_UP")
        amount = to_picos(parse_decimal(c.amount, "grant.amount"))
        if amount <= 0:
            raise InvalidArgument.field("grant.amount", "must be greater than 0")
        paid = parse_decimal(c.paid_amount or "0", "grant.paid_amount")
        if c.kind is GrantKind.PROMOTIONAL and paid != 0:
            raise InvalidArgument.field("grant.paid_amount", "a promotional grant is not paid for: must be 0")
        rollover = parse_decimal(c.rollover_fraction or "0", "grant.rollover_fraction")
        if rollover > 1:
            raise InvalidArgument.field("grant.rollover_fraction", "must be between 0 and 1")
        starts_at_ms = c.starts_at_ms
        if starts_at_ms is None:
            # Unset: from the start of the contract it pays for, so credit bought mid-period also pays for the
            # period's usage that arrives late; with no contract in force, from now.
            paid_for = self.contract(c.contract_id) if c.contract_id else self._contract_at(customer_id, c.at_ms)
            starts_at_ms = paid_for.starting_at_ms if paid_for is not None else c.at_ms
        if c.expires_at_ms is not None and c.expires_at_ms <= starts_at_ms:
            raise InvalidArgument.field("grant.expires_at", "must be after starts_at")
        for index, product_id in enumerate(c.applicable_product_ids):
            if product_id not in self.state.products:
                raise InvalidArgument.field(f"grant.applicable_product_ids[{index}]", f"unknown product {product_id!r}")
        if not c.id:
            # Minting one here would make a retried call grant twice.
            raise InvalidArgument.field(
                "grant.id", "is required (or request_id): the key that makes a retried GrantCredits grant once"
            )
        account = self.state.accounts[customer_id]
        key = f"grant/{c.id}"
        print_ = self._repeat(key, c, lambda: next(g for g in account.grants if g.id == c.id))
        if c.id in self._grant_ids:
            raise AlreadyExists(f"grant {c.id!r} already exists")
        self.state.grants_created += 1
        grant = Grant(
            id=c.id,
            customer_id=customer_id,
            contract_id=c.contract_id,
            kind=c.kind,
            amount=amount,
            paid_amount=paid,
            priority=c.priority,
            applicable_product_ids=tuple(c.applicable_product_ids),
            starts_at_ms=starts_at_ms,
            expires_at_ms=c.expires_at_ms,
            rollover_fraction=rollover,
            created_at_ms=c.at_ms,
            creation_order=self.state.grants_created,
        )
        account.grants.append(grant)
        self._grant_ids.add(grant.id)
        self._burn_orders.pop(customer_id, None)
        self._remember(key, print_)
        return grant

    # Usage -------------------------------------------------------------------------------------------------

    def ingest(self, batch: cmd.IngestBatch, *, collect_entries: bool = False) -> IngestResult:
        """Rates a whole batch at once (does not advance last_seq: `apply` does, or `IngestRun.finish`)."""
        run = IngestRun(self, batch, collect_entries=collect_entries)
        run.step(len(batch.events))
        return run.result()

    def start_ingest(self, batch: cmd.IngestBatch, seq: int) -> IngestRun:
        """Begins applying a batch as journal record `seq`, to be stepped a slice of events at a time.

        The result is the same as `apply(batch, seq)`, whatever the slices: slicing only decides where a caller
        may pause (a server answers balance checks in between). No other command may be applied until the run's
        `finish()`.
        """
        assert seq == self.state.last_seq + 1, f"commands apply in journal order: {seq} after {self.state.last_seq}"
        return IngestRun(self, batch, seq=seq)

    def _check_event(self, event: cmd.UsageEvent, now_ms: int) -> None:
        # Cheap tests first: this runs for every event. A text of at most TEXT_BYTES_MAX / 4 characters
        # cannot exceed TEXT_BYTES_MAX bytes in UTF-8, so only longer ones are encoded to count.
        def invalid(message: str) -> Refusal:
            return Refusal(RejectReason.INVALID_EVENT, message)

        def too_long(text: str) -> bool:
            return len(text) > TEXT_CHARS_SAFE and len(text.encode()) > TEXT_BYTES_MAX

        if not event.transaction_id:
            raise invalid("transaction_id is required")
        if too_long(event.transaction_id):
            raise invalid(f"transaction_id is longer than {TEXT_BYTES_MAX} bytes")
        if not event.customer_id:
            raise invalid("customer_id is required")
        if not event.event_type:
            raise invalid("event_type is required")
        if event.timestamp_ms <= 0:
            if event.timestamp_ms == 0:
                raise invalid("timestamp_ms is required (Unix milliseconds, UTC)")
            raise invalid(f"timestamp_ms {event.timestamp_ms} must be positive (Unix milliseconds, UTC)")
        if len(event.dimensions) > EVENT_MAP_ENTRIES_MAX or len(event.values) > EVENT_MAP_ENTRIES_MAX:
            raise invalid(f"dimensions and values hold at most {EVENT_MAP_ENTRIES_MAX} entries each")
        for key, text in event.dimensions.items():
            if too_long(key) or too_long(text):
                raise invalid(f"dimensions[{key[:32]!r}]: keys and values are at most {TEXT_BYTES_MAX} bytes")
        for key, value in event.values.items():
            if too_long(key):
                raise invalid(f"values keys are at most {TEXT_BYTES_MAX} bytes")
            if not 0 <= value < USAGE_VALUE_MAX:  # also false for NaN
                if not math.isfinite(value):
                    raise invalid(f"values[{key!r}] is {value}: must be a finite number")
                if value < 0:
                    raise invalid(f"values[{key!r}] is {value}: must not be negative")
                raise invalid(f"values[{key!r}] is {value}: must be below {USAGE_VALUE_MAX:.0e}")
        if event.timestamp_ms > now_ms + self.future_skew_ms:
            raise Refusal(
                RejectReason.TIMESTAMP_OUT_OF_RANGE,
                f"timestamp_ms {event.timestamp_ms} is more than {self.future_skew_ms // 1000} s in the future",
            )

    def _contract_at(self, customer_id: str, ts_ms: int) -> Contract | None:
        return next((c for c in self._contracts_by_customer.get(customer_id, ()) if c.covers(ts_ms)), None)

    def _plan(self, event: cmd.UsageEvent) -> tuple[Account, Period, list[PlannedCharge]]:
        """Everything this event would charge, or a Refusal; changes nothing (but the lookup caches)."""
        customer_id = event.customer_id
        account = self.state.accounts.get(customer_id)
        if account is None:
            raise Refusal(RejectReason.UNKNOWN_CUSTOMER, f"customer {customer_id!r} does not exist")
        ts = event.timestamp_ms
        route = self._routes.get(customer_id)
        if route is not None and route[1].start_ms <= ts < route[1].end_ms and route[0].covers(ts):
            contract, period = route
        else:
            found = self._contract_at(customer_id, ts)
            if found is None:
                raise Refusal(
                    RejectReason.NO_ACTIVE_CONTRACT, f"customer {customer_id!r} has no contract covering {ts}"
                )
            contract, period = found, period_containing(found.starting_at_ms, ts)
            self._routes[customer_id] = (contract, period)
        if period.start_ms in account.closed_periods:
            raise Refusal(RejectReason.PERIOD_CLOSED, f"the period starting {period.start_ms} is closed")
        dimensions = event.dimensions
        feeding = [
            p for p in self._products_by_event_type.get(event.event_type, ()) if not p.filters or p.accepts(dimensions)
        ]
        plans: list[PlannedCharge] = []
        if feeding:
            card_id = contract.rate_card_id
            number = self._version_number_at(card_id, ts)
            if number is None:
                raise Refusal(RejectReason.NO_APPLICABLE_RATE, f"rate card {card_id!r} has no version in force at {ts}")
            cacheable = not contract.overrides  # an override's window makes the curve depend on the timestamp
            for product in feeding:
                measure = measure_event(product, dimensions, event.values)
                dimension_key = product.dimension_key(dimensions)
                curve_key = (card_id, number, product.id, dimension_key)
                curve = self._curves.get(curve_key) if cacheable else None
                if curve is None:
                    version = self.compiled(self.state.rate_cards[card_id], number)
                    curve = curve_for(product, dimension_key, version, contract, ts)
                    if cacheable:
                        if len(self._curves) >= CURVES_CACHED_MAX:
                            self._curves.clear()
                        self._curves[curve_key] = curve
                key = (period.start_ms, product.id, dimension_key)
                try:
                    plans.append(
                        plan_charge(product, key, account.aggregates.get(key), measure, ts, curve, card_id, number)
                    )
                except ArithmeticError:
                    # Inputs are bounded (engine.money), so only an aggregate grown beyond all reason gets here.
                    raise Refusal(
                        RejectReason.INVALID_EVENT, f"the charge for product {product.id!r} is out of range"
                    ) from None
        return account, period, plans

    def _version_number_at(self, rate_card_id: str, ts_ms: int) -> int | None:
        hour_key = (rate_card_id, ts_ms // HOUR_MS)
        if hour_key in self._versions_by_hour:
            return self._versions_by_hour[hour_key]
        if len(self._versions_by_hour) >= CURVES_CACHED_MAX:
            self._versions_by_hour.clear()
        number = self._versions_by_hour[hour_key] = self.state.rate_cards[rate_card_id].version_number_at(ts_ms)
        return number

    def _burn_order(self, account: Account) -> list[Grant]:
        ordered = self._burn_orders.get(account.customer_id)
        if ordered is None:
            ordered = self._burn_orders[account.customer_id] = in_burn_order(account.grants)
        return ordered

    def _record(
        self,
        account: Account,
        period: Period,
        plans: list[PlannedCharge],
        event: cmd.UsageEvent,
        entries: list[LedgerEntry] | None,
    ) -> None:
        for plan in plans:
            aggregate = account.aggregates.get(plan.key)
            if aggregate is None:
                aggregate = account.aggregates[plan.key] = Aggregate()
            aggregate.record(plan)
            charge, overage = plan.charge, 0
            draws: list[Draw] = []
            if charge > 0:
                draws, overage = draw_in_order(self._burn_order(account), plan.product.id, plan.ts_ms, charge)
                for grant_draw in draws:
                    aggregate.drawn_by_grant[grant_draw.grant_id] = (
                        aggregate.drawn_by_grant.get(grant_draw.grant_id, 0) + grant_draw.credits
                    )
            elif charge < 0:
                # A price that fell gives back what this aggregate was charged last: its overage first, then credits.
                overage = -min(-charge, aggregate.overage)
                if -charge + overage > 0:
                    draws = refund(account.grants, aggregate.drawn_by_grant, -charge + overage)
            aggregate.overage += overage
            assert aggregate.amount == aggregate.overage + sum(aggregate.drawn_by_grant.values()), (
                "charges not accounted"
            )
            account.period_charges[period.start_ms] = account.period_charges.get(period.start_ms, 0) + charge
            account.period_overage[period.start_ms] = account.period_overage.get(period.start_ms, 0) + overage
            assert account.period_overage[period.start_ms] >= 0
            if entries is not None:
                entries.append(LedgerEntry(event.transaction_id, plan.product.id, plan.version, charge, draws, overage))

    # Reads -------------------------------------------------------------------------------------------------

    def balance(self, customer_id: str, now_ms: int) -> BalanceView:
        customer = self.customer(customer_id)
        account = self.state.accounts[customer.id]
        views = []
        remaining = 0
        for grant in sorted(account.grants, key=Grant.burn_order):
            expired = grant.remaining if grant.expired_at(now_ms) else 0
            usable = grant.remaining if grant.usable_at(now_ms) else 0
            views.append(GrantView(grant, grant.remaining - expired, expired))
            remaining += usable
        contract = self._contract_at(customer.id, now_ms) or self._latest_contract(customer.id)
        period = None
        charges = overage = 0
        overage_due = Decimal(0)
        pricing_unit = ""
        if contract is not None:
            pricing_unit = self.state.rate_cards[contract.rate_card_id].pricing_unit
            if contract.covers(now_ms):
                period = period_containing(contract.starting_at_ms, now_ms)
                charges = account.period_charges.get(period.start_ms, 0)
                overage = account.period_overage.get(period.start_ms, 0)
                overage_due = Decimal(overage).scaleb(-12) * contract.overage_price_decimal
        return BalanceView(
            customer.id,
            remaining,
            0,
            remaining,
            views,
            period,
            charges,
            overage,
            overage_due,
            pricing_unit,
            self.state.last_seq,
        )

    def _latest_contract(self, customer_id: str) -> Contract | None:
        contracts = self._contracts_by_customer.get(customer_id)
        return max(contracts, key=lambda c: c.starting_at_ms) if contracts else None

    def estimate(
        self, customer_id: str, event_type: str, dimensions: dict[str, str], values: dict[str, float], now_ms: int
    ) -> Estimate:
        """Authorize: prices the described usage exactly as ingesting it now would, and decides."""
        probe = cmd.UsageEvent("authorize", customer_id, event_type, now_ms, dimensions, values)
        try:
            self._check_event(probe, now_ms)
            account, _, plans = self._plan(probe)
        except Refusal as refusal:
            reason = "INVALID_REQUEST" if refusal.reason is RejectReason.INVALID_EVENT else refusal.reason.value
            available = self._available(customer_id, None, now_ms)
            return Estimate(False, reason, refusal.message, 0, available)
        product_ids = [plan.product.id for plan in plans]
        charges = [plan.charge for plan in plans]
        cost = sum(charges)
        available = self._available(customer_id, product_ids or None, now_ms)
        overage = simulate_draw(self._burn_order(account), product_ids, now_ms, charges) if cost > 0 else 0
        contract = self._routes[customer_id][0]  # the contract _plan priced the probe with
        if contract.overage_policy is OveragePolicy.BLOCK and (overage > 0 or available <= 0):
            return Estimate(False, "INSUFFICIENT_CREDIT", "available credit does not cover this usage", cost, available)
        if overage > 0:
            return Estimate(True, "OVERAGE_ALLOWED", "beyond available credit: billed as overage", cost, available)
        return Estimate(True, "OK", "", cost, available)

    def _available(self, customer_id: str, product_ids: list[str] | None, now_ms: int) -> int:
        account = self.state.accounts.get(customer_id)
        if account is None:
            return 0
        return sum(
            g.remaining
            for g in account.grants
            if g.usable_at(now_ms) and (product_ids is None or any(g.applies_to(p) for p in product_ids))
        )

    def check_invariants(self) -> None:
        """Credits conserved and no grant negative, for every account (asserted; cheap enough for tests)."""
        for account in self.state.accounts.values():
            for grant in account.grants:
                grant.check()
            assert all(v >= 0 for v in account.period_overage.values())


class IngestRun:
    """One usage batch being rated, in slices: each event is accepted, a duplicate, or refused with a reason."""

    def __init__(
        self, engine: Engine, batch: cmd.IngestBatch, *, seq: int | None = None, collect_entries: bool = False
    ) -> None:
        assert engine._ingesting is None, "one ingest run at a time"
        engine._ingesting = self
        self._engine = engine
        self._batch = batch
        self._seq = seq
        self._next_index = 0
        self._accepted = 0
        self._duplicates = 0
        self._rejections: list[Rejection] = []
        self._new: dict[str, bytes] = {}
        self._entries: list[LedgerEntry] | None = [] if collect_entries else None

    @property
    def done(self) -> bool:
        return self._next_index >= len(self._batch.events)

    def step(self, events_max: int) -> bool:
        """Rates up to events_max more events; True once every event of the batch is rated."""
        assert events_max > 0
        engine, batch, new, entries = self._engine, self._batch, self._new, self._entries
        known, now_ms, rate_cards = batch.known, batch.received_at_ms, engine.state.rate_cards
        stop = min(self._next_index + events_max, len(batch.events))
        for index in range(self._next_index, stop):
            event = batch.events[index]
            try:
                engine._check_event(event, now_ms)
                digest = content_hash(event)
                prior = new.get(event.transaction_id) or known.get(event.transaction_id)
                if prior is not None:
                    if prior != digest:
                        raise Refusal(
                            RejectReason.DUPLICATE_CONFLICT,
                            f"transaction_id {event.transaction_id!r} was already accepted with different content",
                        )
                    self._duplicates += 1
                    continue
                account, period, plans = engine._plan(event)
                engine._record(account, period, plans, event, entries)
                if plans:
                    rate_cards[plans[0].rate_card_id].rated_hours[event.timestamp_ms // HOUR_MS] = None
                new[event.transaction_id] = digest
                self._accepted += 1
            except Refusal as refusal:
                self._rejections.append(Rejection(index, event.transaction_id, refusal.reason, refusal.message))
        self._next_index = stop
        return self.done

    def result(self) -> IngestResult:
        assert self.done, "step() until done first"
        assert self._accepted + self._duplicates + len(self._rejections) == len(self._batch.events)
        self._engine._ingesting = None
        return IngestResult(self._accepted, self._duplicates, self._rejections, self._new, self._entries or [])

    def finish(self) -> IngestResult:
        """The batch's result, once every event is rated; the batch is now journal record `seq`."""
        assert self._seq is not None, "a run from start_ingest"
        result = self.result()
        self._engine.state.last_seq = self._seq
        return result

    @property
    def accepts_any(self) -> bool:
        return self._accepted > 0

    def finish_unjournaled(self) -> IngestResult:
        """The result of a batch that accepted nothing, which therefore changed no state: it takes no journal
        record, and `seq` stays free for the next command."""
        assert self._seq is not None and not self._accepted, "only a batch that accepted nothing"
        return self.result()


def _check_text_map(entries: dict[str, str], field_path: str) -> None:
    if len(entries) > EVENT_MAP_ENTRIES_MAX:
        raise InvalidArgument.field(field_path, f"at most {EVENT_MAP_ENTRIES_MAX} entries")
    for key, value in entries.items():
        if not key or len(key.encode()) > TEXT_BYTES_MAX or len(value.encode()) > TEXT_BYTES_MAX:
            raise InvalidArgument.field(
                f"{field_path}[{key[:32]}]", f"keys (non-empty) and values are at most {TEXT_BYTES_MAX} bytes"
            )


def _contract_id(customer_id: str, starting_at_ms: int) -> str:
    """`acme-20261201` (a contract starting at midnight UTC) or `acme-1764590400000`, at most 128 characters."""
    if starting_at_ms % DAY_MS == 0:
        suffix = datetime.fromtimestamp(starting_at_ms / 1000, UTC).strftime("%Y%m%d")
    else:
        suffix = str(starting_at_ms)
    return f"{customer_id[: 127 - len(suffix)]}-{suffix}"


def audit_target(command: cmd.AdminCommand, result: object) -> str:
    """What an admin command changed, as the audit log and the operator's log name it ("grant/g-1")."""
    return _audit_target(command, result)


def _audit_target(command: cmd.AdminCommand, result: object) -> str:
    match command:
        case cmd.CreateCustomer(id=ident):
            return f"customer/{ident}"
        case cmd.CreateProduct(id=ident):
            return f"product/{ident}"
        case cmd.CreateRateCard(id=ident):
            return f"rate_card/{ident}"
        case cmd.CreateDraftVersion(rate_card_id=card_id):
            assert isinstance(result, Version)
            return f"rate_card/{card_id}/version/{result.number}"
        case cmd.PublishVersion(rate_card_id=card_id, version=number):
            return f"rate_card/{card_id}/version/{number}"
        case cmd.CreateContract():
            assert isinstance(result, Contract)
            return f"contract/{result.id}"
        case cmd.AddOverride(contract_id=ident):
            return f"contract/{ident}"
        case cmd.GrantCredits(id=ident):
            return f"grant/{ident}"
    return ""
