"""The control plane's state machine: admin command -> (State', Result), deterministic and free of I/O.

`Engine.apply(command, seq)` validates a command completely before changing anything, so a command that
raises an EngineError has changed nothing and is not journaled. `BillingState` is the control plane that
must survive a restart (a msgspec Struct, so a snapshot is one encode): catalogue, rate cards and versions,
contracts, grants as granted, audit log and retry keys. Usage, grant balances and dedupe live in the rating
kernel (engine/billing.py keeps the two in step); `Engine` adds indexes rebuilt from the state.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import msgspec

from engine import commands as cmd
from engine.contracts import Contract, Customer
from engine.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Repeated, Unimplemented
from engine.ledger import Grant, GrantKind
from engine.money import PICOS_PER_UNIT, parse_decimal, to_picos
from engine.products import Aggregation, Product
from engine.ratecard import (
    HOUR_MS,
    Finding,
    RateCard,
    Severity,
    Version,
    VersionState,
    check_publishable,
    make_draft,
    normalize_match,
    rate_key,
    validate,
)

ID_PATTERN = re.compile(r"^[A-Za-z0-9._:@-]{1,128}$")
TEXT_BYTES_MAX = 256
TEXT_CHARS_SAFE = TEXT_BYTES_MAX // 4  # UTF-8 takes at most 4 bytes a character
EVENT_MAP_ENTRIES_MAX = 64
DAY_MS = 24 * 3_600_000
AUDIT_DIFF_BYTES_MAX = 64 * 1024


class AuditEntry(msgspec.Struct, frozen=True, array_like=True):
    seq: int
    at_ms: int
    actor: str
    action: str
    target: str
    diff: str  # JSON of the command's fields


class Account(msgspec.Struct, gc=False):
    """One customer's grants as granted (their balances are the kernel's) and its closed periods."""

    customer_id: str
    grants: list[Grant] = []
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


class PublishResult(msgspec.Struct, frozen=True):
    version: Version
    events_rerated: int
    findings: list[Finding]


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
    _contracts_by_customer: dict[str, list[Contract]] = field(default_factory=dict)
    _grant_ids: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._reindex()

    def reset(self, state: BillingState) -> None:
        """Replaces the whole state (recovery after a failed commit) and rebuilds what derives from it."""
        self.state = state
        self._reindex()

    # Snapshots ---------------------------------------------------------------------------------------------

    def encode_snapshot(self) -> bytes:
        # JSON, not msgpack: amounts in picos pass 2^64 (a grant of 20 million credits is 2 x 10^19 picos),
        # and msgpack integers stop at 64 bits. Fields of older snapshots that this state no longer holds
        # (accounts' usage aggregates and period totals, from before the kernel) are ignored on decoding.
        return msgspec.json.encode(self.state)

    @classmethod
    def from_snapshot(cls, blob: bytes) -> Engine:
        if blob[:1] != b"{":  # written before snapshots were JSON: a msgpack map
            return cls(msgspec.msgpack.decode(blob, type=BillingState))
        return cls(msgspec.json.decode(blob, type=BillingState))

    def _reindex(self) -> None:
        self._contracts_by_customer.clear()
        for contract in self.state.contracts.values():
            self._contracts_by_customer.setdefault(contract.customer_id, []).append(contract)
        self._grant_ids = {grant.id for account in self.state.accounts.values() for grant in account.grants}

    # Applying commands -------------------------------------------------------------------------------------

    def apply(self, command: cmd.AdminCommand, seq: int) -> object:
        """Applies one command as journal record `seq`; raises EngineError (having changed nothing) to refuse it."""
        assert seq == self.state.last_seq + 1, f"commands apply in journal order: {seq} after {self.state.last_seq}"
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
        # Re-rating usage already rated under an earlier version is not done yet: such usage keeps its price.
        return PublishResult(version, 0, findings)

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
        amount_units = parse_decimal(c.amount, "grant.amount")
        amount = to_picos(amount_units)
        if amount != amount_units * PICOS_PER_UNIT:
            raise InvalidArgument.field(
                "grant.amount", f"{c.amount!r} has more than 12 decimal places: credits are held at 10^-12 exactly"
            )
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
        self._remember(key, print_)
        return grant

    def _contract_at(self, customer_id: str, ts_ms: int) -> Contract | None:
        return next((c for c in self._contracts_by_customer.get(customer_id, ()) if c.covers(ts_ms)), None)


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
