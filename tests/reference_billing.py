"""A deliberately simple recomputation of what the server exposes, from its LMDB journal, for the soak.

It shares no code with engine/ beyond the journal's record types (to decode what the server wrote): the
rules are rewritten here, by hand, for the small catalogue the soak builds (tests/soak.py), and anything
outside that catalogue raises `Unsupported` instead of being guessed at:

- products: COUNT, or SUM of one `values` entry, no filters; rates: UNIT prices with literal decimals, one
  rate per product and exact pricing-dimension values (or none), one published version effective before
  every event;
- contracts starting at 00:00 UTC on the 1st of a month (so a period is a calendar month), no overrides; an end set
  or moved by EndContract (each journaled end checked against contracts.proto's rules, usage recorded by the hour):
  usage dated at or after it is NO_ACTIVE_CONTRACT, and once it has passed GetBalance has no current period;
- grants applicable to every product, started before every event, expiring after the soak ends: burn order
  is (priority, expiry, creation order).

Usage is rated as the design says: per (period, product, dimension values) the aggregate's price is
price x quantity / per_units rounded half-even to 10^-12 once; an event is charged price(after) -
price(before) and that charge is drawn from the grants in burn order, the rest is overage. Dedupe is by
transaction id over the whole journal (an identical resend is a duplicate, other content a conflict).

All arithmetic is exact (`Decimal` with 60 digits); amounts are compared as the server's canonical text.
"""

from __future__ import annotations

import calendar
import dataclasses
import decimal
from collections.abc import Collection, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import lmdb
from tariff.v1 import usage_pb2

from engine import commands as cmd
from server.records import decode_record

CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
PICO = Decimal(1).scaleb(-12)
NEVER_MS = 2**62
HOUR_MS = 3_600_000


class Unsupported(Exception):
    """The journal holds something outside the catalogue this reference knows how to recompute."""


class Mismatch(AssertionError):
    """The journal (or the server) disagrees with the recomputation."""


def wire(value: Decimal) -> str:
    """The canonical decimal text on the wire: no exponent, no trailing zeros, "0" for zero."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def round_pico(value: Decimal) -> Decimal:
    return value.quantize(PICO, rounding=decimal.ROUND_HALF_EVEN, context=CONTEXT)


def month_of(ts_ms: int) -> tuple[int, int]:
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    return moment.year, moment.month


EventContent = tuple[str, str, int, tuple[tuple[str, str], ...], tuple[tuple[str, float], ...], str]


def content_of(event: cmd.UsageEvent) -> EventContent:
    """What an identical resend must repeat: everything but the transaction id, maps order-free."""
    return (
        event.customer_id,
        event.event_type,
        event.timestamp_ms,
        tuple(sorted(event.dimensions.items())),
        tuple(sorted(event.values.items())),
        event.reservation_id,
    )


@dataclasses.dataclass
class RefProduct:
    id: str
    name: str
    event_type: str
    aggregation: str
    value_key: str
    pricing_dimensions: tuple[str, ...]


@dataclasses.dataclass
class RefRate:
    price: Decimal
    per_units: Decimal


@dataclasses.dataclass
class RefGrant:
    id: str
    customer_id: str
    contract_id: str
    kind: str
    amount: Decimal
    paid: Decimal
    priority: int
    starts_at_ms: int
    expires_at_ms: int | None
    order: int
    drawn: Decimal = Decimal(0)
    # Usage dated at or after this is not paid from it: the rollover of a grant with a rollover fraction whose
    # GrantCredits says use_ends_at_rollover (the end of the calendar month it starts in; contracts start on a 1st).
    usable_before_ms: int = NEVER_MS

    @property
    def remaining(self) -> Decimal:
        return self.amount - self.drawn

    def recognized(self) -> Decimal:
        return round_pico(CONTEXT.divide(CONTEXT.multiply(self.drawn, self.paid), self.amount))

    def burn_key(self) -> tuple[int, int, int]:
        return (self.priority, self.expires_at_ms if self.expires_at_ms is not None else NEVER_MS, self.order)


@dataclasses.dataclass
class RefContract:
    id: str
    customer_id: str
    rate_card_id: str
    starting_at_ms: int
    overage_price: Decimal
    currency: str
    ending_before_ms: int | None = None  # set by EndContract

    def in_force(self, ts_ms: int) -> bool:
        return self.starting_at_ms <= ts_ms and (self.ending_before_ms is None or ts_ms < self.ending_before_ms)


@dataclasses.dataclass
class RefCustomer:
    id: str
    name: str
    attributes: dict[str, str]
    created_at_ms: int
    contract_id: str = ""
    grants: list[RefGrant] = dataclasses.field(default_factory=list)
    # (period month, product id, dimension values) -> quantity; and what the period was charged.
    quantities: dict[tuple[tuple[int, int], str, tuple[str, ...]], Decimal] = dataclasses.field(default_factory=dict)
    charges: dict[tuple[int, int], Decimal] = dataclasses.field(default_factory=dict)
    overage: dict[tuple[int, int], Decimal] = dataclasses.field(default_factory=dict)
    hours: set[int] = dataclasses.field(default_factory=set)  # the first instants of the hours holding its usage


@dataclasses.dataclass(frozen=True)
class AcceptedEvent:
    seq: int
    batch_id: str
    content: EventContent


@dataclasses.dataclass(frozen=True)
class BatchRecord:
    """One journaled IngestBatch, and what this reference decided for each of its events."""

    seq: int
    batch_id: str
    transaction_ids: tuple[str, ...]
    contents: tuple[EventContent, ...]
    accepted: int
    duplicates: int
    conflicts: int
    no_contract: int = 0  # rejected NO_ACTIVE_CONTRACT: dated at or after the end of the customer's contract


class ReferenceBilling:
    """Fed journal records in order (from scratch, or more of them later); answers what the server should."""

    def __init__(self) -> None:
        self.last_seq = 0
        self.products: dict[str, RefProduct] = {}
        self.rate_cards: dict[str, str] = {}  # id -> pricing unit
        # rate card id -> version -> product id -> match (sorted items) -> rate
        self.versions: dict[str, dict[int, dict[str, dict[tuple[tuple[str, str], ...], RefRate]]]] = {}
        self.published: dict[str, tuple[int, int]] = {}  # rate card -> (version, effective_from_ms)
        self.customers: dict[str, RefCustomer] = {}
        self.contracts: dict[str, RefContract] = {}
        self.admin_seqs: list[int] = []
        self.accepted: dict[str, AcceptedEvent] = {}
        self.batches: list[BatchRecord] = []
        self.grants_created = 0
        self.ends_journaled = 0  # EndContract records

    # Reading the journal ---------------------------------------------------------------------------------

    @staticmethod
    def read_journal(journal_dir: Path, after_seq: int = 0) -> Iterator[tuple[int, bytes]]:
        """(seq, record) after after_seq, read-only; safe while the server runs (LMDB has many readers)."""
        env = lmdb.open(str(journal_dir), readonly=True, lock=True, max_dbs=4, subdir=True, readahead=False)
        try:
            records_db = env.open_db(b"records", create=False)
            with env.begin(buffers=False) as txn, txn.cursor(db=records_db) as cursor:
                if not cursor.set_range((after_seq + 1).to_bytes(8, "big")):
                    return
                for key, value in cursor.iternext():
                    yield int.from_bytes(key, "big"), value
        finally:
            env.close()

    def feed_journal(self, journal_dir: Path, *, up_to_seq: int | None = None) -> int:
        """Applies the records after last_seq (up to up_to_seq); returns how many."""
        count = 0
        for seq, blob in self.read_journal(journal_dir, self.last_seq):
            if up_to_seq is not None and seq > up_to_seq:
                break
            self.apply(seq, blob)
            count += 1
        return count

    @classmethod
    def from_journal(cls, journal_dir: Path) -> ReferenceBilling:
        reference = cls()
        reference.feed_journal(journal_dir)
        return reference

    # Applying records ------------------------------------------------------------------------------------

    def apply(self, seq: int, blob: bytes) -> None:
        if seq != self.last_seq + 1:
            raise Mismatch(f"journal seq {seq} follows {self.last_seq}: records must be contiguous")
        record = decode_record(blob)
        command = record.command
        if record.usage is not None:
            # The batch as the client sent it, parsed with the generated protobuf classes.
            usage = record.usage
            sent = usage_pb2.UsageBatch.FromString(usage.batch)
            events = [
                cmd.UsageEvent(
                    e.transaction_id, e.customer_id, e.event_type, e.timestamp_ms, dict(e.dimensions), dict(e.values)
                )
                for e in sent.events
            ]
            command = cmd.IngestBatch(sent.batch_id, events, usage.received_ms, {})
            result = self._ingest(seq, command)
            journaled = (usage.accepted, usage.duplicates, usage.rejected)
            recomputed = (result.accepted, result.duplicates, result.conflicts + result.no_contract)
            if journaled != recomputed:
                raise Mismatch(
                    f"record {seq} (batch {command.batch_id!r}): the server journaled accepted/duplicates/rejected"
                    f" {journaled}, the reference recomputes {recomputed}"
                )
        else:
            if command is None or isinstance(command, cmd.IngestBatch):
                raise Mismatch(f"record {seq}: neither an admin command nor a usage batch of journal format 2")
            self._admin(seq, command)
            self.admin_seqs.append(seq)
        self.last_seq = seq

    def _admin(self, seq: int, command: cmd.Command) -> None:
        match command:
            case cmd.CreateProduct():
                if command.filters or command.aggregation is None or command.aggregation.value not in ("SUM", "COUNT"):
                    raise Unsupported(f"record {seq}: product {command.id!r} ({command.aggregation}, filters)")
                self.products[command.id] = RefProduct(
                    command.id,
                    command.name or command.id,
                    command.event_type,
                    command.aggregation.value,
                    command.value_key,
                    tuple(command.pricing_dimensions),
                )
            case cmd.CreateRateCard():
                self.rate_cards[command.id] = command.pricing_unit
                self.versions[command.id] = {}
            case cmd.CreateDraftVersion():
                if command.based_on_version or command.remove_rates or command.remove_parameters:
                    raise Unsupported(f"record {seq}: a draft based on another version")
                rates: dict[str, dict[tuple[tuple[str, str], ...], RefRate]] = {}
                for rate in command.upsert_rates:
                    price = rate.price
                    if type(price).__name__ != "UnitPrice":
                        raise Unsupported(f"record {seq}: only UNIT prices, not {type(price).__name__}")
                    per_units = Decimal(getattr(price, "per_units", "") or "1")
                    match = tuple(sorted((k, v) for k, v in rate.match.items() if v != "*"))
                    rates.setdefault(rate.product_id, {})[match] = RefRate(Decimal(price.price), per_units)  # type: ignore[union-attr]
                versions = self.versions[command.rate_card_id]
                versions[len(versions) + 1] = rates
            case cmd.PublishVersion():
                if command.rate_card_id in self.published or command.effective_from_ms is None:
                    raise Unsupported(f"record {seq}: a second publication, or one without effective_from")
                self.published[command.rate_card_id] = (command.version, command.effective_from_ms)
            case cmd.CreateCustomer():
                self.customers[command.id] = RefCustomer(
                    command.id, command.name or command.id, dict(command.attributes), command.at_ms
                )
            case cmd.CreateContract():
                start = command.starting_at_ms
                if start is None or command.ending_before_ms is not None or start % 1000:
                    raise Unsupported(f"record {seq}: a contract without an explicit month start, or with an end")
                moment = datetime.fromtimestamp(start / 1000, tz=UTC)
                if (moment.day, moment.hour, moment.minute, moment.second) != (1, 0, 0, 0):
                    raise Unsupported(f"record {seq}: contract start {moment} is not 00:00 on the 1st")
                customer = self.customers[command.customer_id]
                if customer.contract_id:
                    raise Unsupported(f"record {seq}: a second contract for {customer.id!r}")
                customer.contract_id = command.id
                self.contracts[command.id] = RefContract(
                    command.id,
                    command.customer_id,
                    command.rate_card_id,
                    start,
                    Decimal(command.overage_price or "1"),
                    command.currency or "USD",
                )
            case cmd.GrantCredits():
                if command.applicable_product_ids or command.kind is None or not command.contract_id:
                    raise Unsupported(f"record {seq}: a grant limited to products, without kind or contract")
                contract = self.contracts[command.contract_id]
                self.grants_created += 1
                grant = RefGrant(
                    command.id,
                    contract.customer_id,
                    contract.id,
                    command.kind.value,
                    Decimal(command.amount),
                    Decimal(command.paid_amount or "0"),
                    command.priority,
                    command.starts_at_ms if command.starts_at_ms is not None else contract.starting_at_ms,
                    command.expires_at_ms,
                    self.grants_created,
                )
                if command.use_ends_at_rollover and Decimal(command.rollover_fraction or "0") > 0:
                    end_ms = _month_start_ms(*month_of(grant.starts_at_ms), months_later=1)
                    if grant.expires_at_ms is None or grant.expires_at_ms > end_ms:
                        grant.usable_before_ms = end_ms
                self.customers[contract.customer_id].grants.append(grant)
            case cmd.EndContract():
                self._end_contract(seq, command)
            case _:
                raise Unsupported(f"record {seq}: {type(command).__name__}")

    def _end_contract(self, seq: int, command: cmd.EndContract) -> None:
        """A journaled end is one contracts.proto's rules take (refusals and retries are not journaled): after the
        start, not the same end again, the end held not passed, not before now, no usage recorded in an hour
        ending after it (an hour holding it counts whole), before the end held."""
        contract = self.contracts[command.contract_id]
        end_ms, held_ms = command.ending_before_ms, contract.ending_before_ms
        hours = self.customers[contract.customer_id].hours
        refused = (
            end_ms <= contract.starting_at_ms
            or end_ms == held_ms
            or (held_ms is not None and held_ms <= command.at_ms)
            or end_ms < command.at_ms
            or any(h + HOUR_MS > end_ms and (held_ms is None or h < held_ms) for h in hours)
        )
        if refused:
            raise Mismatch(f"record {seq}: EndContract of {contract.id!r} at {end_ms}, which its rules refuse")
        contract.ending_before_ms = end_ms
        self.ends_journaled += 1

    @dataclasses.dataclass
    class _Counts:
        accepted: int = 0
        duplicates: int = 0
        conflicts: int = 0
        no_contract: int = 0

    def _ingest(self, seq: int, batch: cmd.IngestBatch) -> ReferenceBilling._Counts:
        counts = self._Counts()
        for event in batch.events:
            content = content_of(event)
            prior = self.accepted.get(event.transaction_id)
            if prior is not None:
                if prior.content == content:
                    counts.duplicates += 1
                else:
                    counts.conflicts += 1
                continue
            if not self._in_contract(seq, event):
                counts.no_contract += 1
                continue
            self._rate(seq, event)
            self.accepted[event.transaction_id] = AcceptedEvent(seq, batch.batch_id, content)
            counts.accepted += 1
        self.batches.append(
            BatchRecord(
                seq,
                batch.batch_id,
                tuple(e.transaction_id for e in batch.events),
                tuple(content_of(e) for e in batch.events),
                counts.accepted,
                counts.duplicates,
                counts.conflicts,
                counts.no_contract,
            )
        )
        return counts

    def _in_contract(self, seq: int, event: cmd.UsageEvent) -> bool:
        """Whether the event lies before the end of its customer's contract (after it: NO_ACTIVE_CONTRACT)."""
        customer = self.customers.get(event.customer_id)
        if customer is None or not customer.contract_id:
            raise Unsupported(f"record {seq}: event {event.transaction_id!r} for a customer without a contract")
        end_ms = self.contracts[customer.contract_id].ending_before_ms
        return end_ms is None or event.timestamp_ms < end_ms

    def _rate(self, seq: int, event: cmd.UsageEvent) -> None:
        customer = self.customers.get(event.customer_id)
        if customer is None or not customer.contract_id:
            raise Unsupported(f"record {seq}: event {event.transaction_id!r} for a customer without a contract")
        contract = self.contracts[customer.contract_id]
        if event.timestamp_ms < contract.starting_at_ms:
            raise Unsupported(f"record {seq}: event {event.transaction_id!r} before its contract")
        version, effective_from_ms = self.published[contract.rate_card_id]
        if event.timestamp_ms < effective_from_ms:
            raise Unsupported(f"record {seq}: event {event.transaction_id!r} before the published version")
        rates = self.versions[contract.rate_card_id][version]
        period = month_of(event.timestamp_ms)
        for product in self.products.values():
            if product.event_type != event.event_type:
                continue
            if product.aggregation == "COUNT":
                measure = Decimal(1)
            else:
                if product.value_key not in event.values:
                    raise Unsupported(f"record {seq}: event {event.transaction_id!r} lacks {product.value_key!r}")
                measure = Decimal(repr(event.values[product.value_key]))
            dims = tuple(event.dimensions.get(key, "") for key in product.pricing_dimensions)
            match = tuple(sorted((k, v) for k, v in zip(product.pricing_dimensions, dims, strict=True) if v))
            rate = rates.get(product.id, {}).get(match)
            if rate is None:
                raise Unsupported(f"record {seq}: no exact rate for {product.id!r} {match}")
            key = (period, product.id, dims)
            before = customer.quantities.get(key, Decimal(0))
            after = CONTEXT.add(before, measure)
            customer.quantities[key] = after
            charge = self._price(rate, after) - self._price(rate, before)
            customer.charges[period] = customer.charges.get(period, Decimal(0)) + charge
            left = charge
            for grant in sorted(customer.grants, key=RefGrant.burn_key):
                if left == 0:
                    break
                in_force = grant.starts_at_ms <= event.timestamp_ms < (grant.expires_at_ms or NEVER_MS)
                if not in_force or event.timestamp_ms >= grant.usable_before_ms:
                    raise Unsupported(f"record {seq}: grant {grant.id!r} not in force at the event")
                take = min(left, grant.remaining)
                grant.drawn += take
                left -= take
            customer.overage[period] = customer.overage.get(period, Decimal(0)) + left
            customer.hours.add(event.timestamp_ms // HOUR_MS * HOUR_MS)  # usage of a product: the kernel's hours

    @staticmethod
    def _price(rate: RefRate, quantity: Decimal) -> Decimal:
        return round_pico(CONTEXT.divide(CONTEXT.multiply(quantity, rate.price), rate.per_units))

    # What the server should answer -----------------------------------------------------------------------

    def balance(self, customer_id: str, now_ms: int) -> dict[str, Any]:
        """GetBalance's fields, as wire text (grants in burn order, as the server lists them)."""
        customer = self.customers[customer_id]
        contract = self.contracts[customer.contract_id]
        period = month_of(now_ms)
        grants = sorted(customer.grants, key=RefGrant.burn_key)
        remaining = sum((g.remaining for g in grants if g.starts_at_ms <= now_ms), start=Decimal(0))
        # Once the contract has ended there is no current period: its charges and overage read "0".
        in_force = contract.in_force(now_ms)
        overage = customer.overage.get(period, Decimal(0)) if in_force else Decimal(0)
        return {
            "customer_id": customer_id,
            "credits_remaining": wire(remaining),
            "credits_held": "0",
            "credits_available": wire(remaining),
            "period_charges": wire(customer.charges.get(period, Decimal(0)) if in_force else Decimal(0)),
            "overage_amount": wire(overage),
            "overage_due": wire(CONTEXT.multiply(overage, contract.overage_price)),
            "pricing_unit": self.rate_cards[contract.rate_card_id],
            "as_of_seq": self.last_seq,
            "grants": [
                {
                    "grant_id": g.id,
                    "kind": g.kind,
                    "amount": wire(g.amount),
                    "drawn": wire(g.drawn),
                    "remaining": wire(g.remaining),
                    "expired": "0",
                    "priority": g.priority,
                    "recognized_revenue": wire(g.recognized()),
                }
                for g in grants
            ],
        }

    def customer(self, customer_id: str) -> dict[str, Any]:
        c = self.customers[customer_id]
        return {"id": c.id, "name": c.name, "attributes": dict(c.attributes), "created_at_ms": c.created_at_ms}

    def contract(self, contract_id: str) -> dict[str, Any]:
        c = self.contracts[contract_id]
        return {
            "id": c.id,
            "customer_id": c.customer_id,
            "rate_card_id": c.rate_card_id,
            "starting_at_ms": c.starting_at_ms,
            "ending_before_ms": c.ending_before_ms,
            "overage_price": wire(c.overage_price),
            "currency": c.currency,
            "grants": sorted(
                (g.id, g.kind, wire(g.amount), wire(g.paid), g.priority) for g in self.customers[c.customer_id].grants
            ),
        }

    def total_charges(self) -> Decimal:
        return sum((sum(c.charges.values(), start=Decimal(0)) for c in self.customers.values()), start=Decimal(0))

    def check_conservation(self) -> None:
        """Per customer: every charge went to a grant or to overage; no grant below zero or above its amount."""
        for customer in self.customers.values():
            charged = sum(customer.charges.values(), start=Decimal(0))
            drawn = sum((g.drawn for g in customer.grants), start=Decimal(0))
            overage = sum(customer.overage.values(), start=Decimal(0))
            if charged != drawn + overage:
                raise Mismatch(f"{customer.id}: charged {charged} != drawn {drawn} + overage {overage}")
            for grant in customer.grants:
                if not 0 <= grant.drawn <= grant.amount:
                    raise Mismatch(f"grant {grant.id}: drawn {grant.drawn} outside 0..{grant.amount}")


# Rating by hand, for the kernel's differential tests ---------------------------------------------------------
#
# A second, independent statement of the rating rules (tests/test_kernel_differential.py compares the kernel
# with it): every aggregation, filters, most specific rate, every price model, contract overrides, several
# products per event with the event's refunds and charges netted, grants with priorities, expiries and
# applicability. Plain data in, exact Decimals inside, picos out. Calendar-month periods (contracts start at
# 00:00 UTC on the 1st), or monthly periods anchored on the contract's start (`period_anchor_ms`), some closed.
# The contract may end (`end_contract`, contracts.proto EndContract): usage dated at or after its end is
# NO_ACTIVE_CONTRACT, and an end is refused by the documented rules, usage being recorded by the hour. So may an
# override (`end_override`, contracts.proto EndOverride): usage dated at or after its new end is priced without it.

RATING = decimal.Context(prec=120, rounding=decimal.ROUND_HALF_EVEN)
VALUE_LIMIT = Decimal(10) ** 15
# The kernel's 128-bit picos (docs/architecture.md "Inside"): a line's price, or a period's charges or overage,
# past it rejects the event, INVALID_EVENT.
PICOS_MAX = Decimal(2**127 - 1)


Period = tuple[int, int]  # a billing period, named by the year and month it starts in


def anchored_period_start_ms(anchor_ms: int, months: int) -> int:
    """The start of the period `months` after the one starting at the contract's anchor: the anchor's day of month
    (the last day of a shorter month), at its time of day, each boundary computed from the anchor so that a
    clamped month does not move the later ones (docs/architecture.md "Contracts")."""
    anchor = datetime.fromtimestamp(anchor_ms / 1000, tz=UTC)
    index = anchor.year * 12 + anchor.month - 1 + months
    year, month = index // 12, index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    start = anchor.replace(year=year, month=month, day=day)
    return int(start.timestamp()) * 1000 + anchor_ms % 1000


def anchored_period(anchor_ms: int, ts_ms: int) -> tuple[Period, int, int]:
    """(name, start ms, end ms) of the period holding ts_ms, for a contract anchored at anchor_ms."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    anchor = datetime.fromtimestamp(anchor_ms / 1000, tz=UTC)
    months = (moment.year * 12 + moment.month) - (anchor.year * 12 + anchor.month)
    while anchored_period_start_ms(anchor_ms, months) > ts_ms:
        months -= 1
    while anchored_period_start_ms(anchor_ms, months + 1) <= ts_ms:
        months += 1
    start_ms = anchored_period_start_ms(anchor_ms, months)
    started = datetime.fromtimestamp(start_ms / 1000, tz=UTC)
    return (started.year, started.month), start_ms, anchored_period_start_ms(anchor_ms, months + 1)


@dataclasses.dataclass(frozen=True)
class Curve:
    """model: UNIT, GRADUATED, VOLUME, PACKAGE or FLAT; tiers are (up_to or None, unit price, flat fee)."""

    model: str
    price: Decimal = Decimal(0)
    per_units: Decimal = Decimal(1)
    size: Decimal = Decimal(1)
    tiers: tuple[tuple[Decimal | None, Decimal, Decimal], ...] = ()

    def amount(self, quantity: Decimal) -> Decimal:
        c = RATING
        if quantity <= 0:
            return Decimal(0)
        if self.model == "UNIT":
            return c.divide(c.multiply(quantity, self.price), self.per_units)
        if self.model == "PACKAGE":
            packages = c.divide(quantity, self.size).to_integral_value(rounding=decimal.ROUND_CEILING)
            return c.multiply(packages, self.price)
        if self.model == "FLAT":
            return self.price
        if self.model == "VOLUME":
            up_to, unit_price, flat_fee = next(
                (t for t in self.tiers if t[0] is None or quantity <= t[0]), self.tiers[-1]
            )
            return c.add(c.divide(c.multiply(quantity, unit_price), self.per_units), flat_fee)
        total, lower = Decimal(0), Decimal(0)
        for up_to, unit_price, flat_fee in self.tiers:
            upper = quantity if up_to is None else min(quantity, up_to)
            if upper <= lower:
                break
            total = c.add(total, c.add(c.divide(c.multiply(upper - lower, unit_price), self.per_units), flat_fee))
            lower = upper
        return total

    def overridden(self, price: Decimal) -> Curve:
        """An override price: per per_units for UNIT and tiers (tiers dropped), per package, or the flat fee."""
        if self.model in ("UNIT", "GRADUATED", "VOLUME"):
            return Curve("UNIT", price=price, per_units=self.per_units)
        return dataclasses.replace(self, price=price)


@dataclasses.dataclass(frozen=True)
class RProduct:
    id: str
    event_type: str
    aggregation: str  # SUM, COUNT, MAX, UNIQUE_COUNT, LATEST
    value_key: str
    filters: tuple[tuple[str, str], ...]
    dimensions: tuple[str, ...]
    # UNIQUE_COUNT: an empty counted dimension is a missing one (the server-set CreateProduct.empty_count_missing,
    # set for every product a client creates; one journaled without it counts "" as a value).
    empty_count_missing: bool = False
    # A filter on "" is met by an event leaving the dimension out too (the server-set
    # CreateProduct.empty_filter_missing, likewise; one journaled without it is met only by an event sending "").
    empty_filter_missing: bool = False

    def fed_by(self, event_type: str, dimensions: dict[str, str]) -> bool:
        """Whether an event of `event_type` with `dimensions` feeds this product: its type, and every filter met."""
        return self.event_type == event_type and all(
            dimensions[k] == v if k in dimensions else self.empty_filter_missing and v == "" for k, v in self.filters
        )


@dataclasses.dataclass(frozen=True)
class RRate:
    product_id: str
    match: tuple[tuple[str, str], ...]
    curve: Curve


@dataclasses.dataclass(frozen=True)
class ROverride:
    product_id: str
    price: Decimal | None
    multiplier: Decimal | None
    # Dimension -> value an event must have (no "*"); empty matches every event of the product.
    match: tuple[tuple[str, str], ...] = ()
    # The window the event's own timestamp must lie in (None: from the contract's start, open-ended).
    starting_at_ms: int | None = None
    ending_before_ms: int | None = None

    def covers(self, dimensions: dict[str, str], ts_ms: int) -> bool:
        if any(dimensions.get(k) != v for k, v in self.match):
            return False
        return (self.starting_at_ms is None or self.starting_at_ms <= ts_ms) and (
            self.ending_before_ms is None or ts_ms < self.ending_before_ms
        )


@dataclasses.dataclass
class RGrant:
    id: str
    amount: Decimal
    priority: int
    products: tuple[str, ...]
    starts_at_ms: int
    expires_at_ms: int | None
    order: int
    remaining: Decimal = Decimal(0)
    # Usage dated at or after this is not paid from it (ReferenceCredits' `use_ends_at_rollover`).
    usable_before_ms: int = NEVER_MS

    def usable(self, ts_ms: int) -> bool:
        in_force = self.starts_at_ms <= ts_ms and (self.expires_at_ms is None or ts_ms < self.expires_at_ms)
        return in_force and ts_ms < self.usable_before_ms

    def applies(self, product_id: str) -> bool:
        return not self.products or product_id in self.products

    def burn_key(self) -> tuple[int, int, int, int]:
        narrowness = len(self.products) if self.products else 2**31
        return (
            self.priority,
            self.expires_at_ms if self.expires_at_ms is not None else NEVER_MS,
            narrowness,
            self.order,
        )


@dataclasses.dataclass
class RAggregate:
    quantity: Decimal = Decimal(0)
    events: int = 0
    amount: Decimal = Decimal(0)  # picos, exact integers as Decimals
    uniques: set[str] = dataclasses.field(default_factory=set)
    latest_ts_ms: int = -1
    drawn: dict[str, Decimal] = dataclasses.field(default_factory=dict)
    overage: Decimal = Decimal(0)


AggregateKey = tuple[tuple[int, int], str, tuple[str, ...]]  # (period year and month, product, dimension values)


@dataclasses.dataclass(frozen=True)
class REvent:
    transaction_id: str
    customer_id: str
    event_type: str
    timestamp_ms: int
    dimensions: tuple[tuple[str, str], ...]
    values: tuple[tuple[str, float], ...]
    reservation_id: str = ""


def event_content(event: REvent) -> tuple[object, ...]:
    """What an event's transaction id stands for: a retry with the same content is a duplicate, other content a
    conflict. The reservation id is content too: the same id naming another reservation is a conflict."""
    return (
        event.event_type,
        event.timestamp_ms,
        tuple(sorted(event.dimensions)),
        tuple(sorted(event.values)),
        event.reservation_id,
    )


Plan = tuple[RProduct, AggregateKey, Decimal | str, Decimal, Decimal]  # product, key, measure, after, charge


class ReferenceRating:
    """One customer's rating by hand: fed events in order, it answers accept/duplicate/reject and the money."""

    def __init__(
        self,
        products: list[RProduct],
        rates: list[RRate],
        overrides: list[ROverride],
        grants: list[RGrant],
        *,
        customer_id: str,
        contract_start_ms: int,
        block: bool,
        future_skew_ms: int = 300_000,
        dedupe_window_ms: int = 35 * 24 * 3_600_000,
        timeline: list[tuple[int, list[RRate]]] | None = None,
        period_anchor_ms: int | None = None,
        contract_end_ms: int | None = None,
    ) -> None:
        self.products = products
        self.rates = rates
        # Rate card versions as (effective_from_ms, rates), in the order they were published: at a time, the
        # newest-effective entry prices (of two effective at once, the later published). None: `rates` always.
        self.timeline = timeline
        self.overrides = overrides
        self.grants = grants
        for grant in grants:
            grant.remaining = grant.amount
        self.customer_id = customer_id
        self.contract_start_ms = contract_start_ms
        self.block = block
        self.future_skew_ms = future_skew_ms
        self.dedupe_window_ms = dedupe_window_ms
        self.aggregates: dict[AggregateKey, RAggregate] = {}
        self.charges: dict[tuple[int, int], Decimal] = {}
        self.overage: dict[tuple[int, int], Decimal] = {}
        # transaction id -> (receive time, content)
        self.accepted: dict[str, tuple[int, tuple[object, ...]]] = {}
        # Monthly periods anchored here (None: calendar months, a contract starting at 00:00 on a 1st); and the
        # periods closed (ClosePeriod): their events are rejected PERIOD_CLOSED.
        self.period_anchor_ms = period_anchor_ms
        self.closed: set[Period] = set()
        # The contract's ending_before (None: open-ended), and the first instants of the hours holding usage of it:
        # an accepted event that feeds at least one product records its hour (EndContract reads those).
        self.contract_end_ms = contract_end_ms
        self.hours_recorded: set[int] = set()
        # The same by product (the hours holding usage of each), for EndOverride's rule.
        self.product_hours: dict[str, set[int]] = {}

    def in_force(self, ts_ms: int) -> bool:
        """Whether the contract prices usage dated ts_ms: from its start up to, not at, its end."""
        return self.contract_start_ms <= ts_ms and (self.contract_end_ms is None or ts_ms < self.contract_end_ms)

    def end_contract(self, end_ms: int, at_ms: int) -> tuple[str, int | None]:
        """EndContract of the contract at `end_ms`, requested at `at_ms`, by contracts.proto's rules in the order
        they are checked: ("ended", None) when taken, ("repeated", None) when the contract already ends there (a retry,
        nothing changed); refused, nothing changed: ("after starting_at", None) for an end at or before the start
        (INVALID_ARGUMENT), ("already ended", None) when the end held has passed, ("before now", None) for a
        retroactive end, ("rolling grant", None) when a grant with a rollover fraction starts at or after the new end,
        ("usage", hour) when usage is recorded in an hour ending after the new end, before the end
        held (`hour` the latest such hour's first instant: an hour holding the new end counts whole)."""
        if end_ms <= self.contract_start_ms:
            return "after starting_at", None
        if end_ms == self.contract_end_ms:
            return "repeated", None
        held_ms = self.contract_end_ms
        if held_ms is not None and held_ms <= at_ms:
            return "already ended", None
        if end_ms < at_ms:
            return "before now", None
        rolling = self.rolling_grant_from(end_ms)
        if rolling is not None:
            return "rolling grant", None
        held_end = NEVER_MS if held_ms is None else held_ms
        hours = [h for h in self.hours_recorded if h + HOUR_MS > end_ms and h < held_end]
        if hours:
            return "usage", max(hours)
        self.contract_end_ms = end_ms
        return "ended", None

    def end_override(self, index: int, end_ms: int, at_ms: int) -> tuple[str, int | None]:
        """EndOverride of `overrides[index]` at `end_ms`, requested at `at_ms`, by contracts.proto's rules in the
        order they are checked: ("ended", None) when taken, ("repeated", None) when the override already ends there;
        refused, nothing changed: ("after starting_at", None) for an end at or before its start (INVALID_ARGUMENT;
        unset, its start is 0, as the control plane holds it), ("already ended", None) when its end has passed,
        ("before now", None), ("later", None) for an end after the one it has, ("usage", hour) when usage of its
        product is recorded in an hour ending after the new end, before the end held (the latest such hour)."""
        override = self.overrides[index]
        held_ms = override.ending_before_ms
        if end_ms <= (override.starting_at_ms or 0):
            return "after starting_at", None
        if end_ms == held_ms:
            return "repeated", None
        if held_ms is not None and held_ms <= at_ms:
            return "already ended", None
        if end_ms < at_ms:
            return "before now", None
        if held_ms is not None and end_ms > held_ms:
            return "later", None
        held_end = NEVER_MS if held_ms is None else held_ms
        recorded = self.product_hours.get(override.product_id, set())
        hours = [h for h in recorded if h + HOUR_MS > end_ms and h < held_end]
        if hours:
            return "usage", max(hours)
        ended = dataclasses.replace(override, ending_before_ms=end_ms)
        self.overrides = [*self.overrides[:index], ended, *self.overrides[index + 1 :]]
        return "ended", None

    def rolling_grant_from(self, end_ms: int) -> str | None:
        """A grant with a rollover fraction starting in the contract at or after `end_ms` (an end
        there would leave its start in no contract): none here, where grants do not roll over (ReferenceCredits)."""
        return None

    def period(self, ts_ms: int) -> tuple[Period, int, int]:
        """(name, start ms, end ms) of the billing period holding ts_ms."""
        if self.period_anchor_ms is not None:
            return anchored_period(self.period_anchor_ms, ts_ms)
        moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
        index = moment.year * 12 + moment.month  # the next month's, counted from 1
        start = int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp()) * 1000
        end = int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) * 1000
        return (moment.year, moment.month), start, end

    def ingest(self, event: REvent, received_ms: int) -> str:
        """ "accepted", "duplicate", or the reject reason's name."""
        reason = self._invalid(event, received_ms)
        if reason:
            return reason
        content = event_content(event)
        if event.customer_id != self.customer_id:
            return "UNKNOWN_CUSTOMER"
        prior = self.accepted.get(event.transaction_id)
        if prior is not None and received_ms - prior[0] < self.dedupe_window_ms:
            return "duplicate" if prior[1] == content else "DUPLICATE_CONFLICT"
        if not self.in_force(event.timestamp_ms):
            return "NO_ACTIVE_CONTRACT"
        if self.period(event.timestamp_ms)[0] in self.closed:
            return "PERIOD_CLOSED"
        plans = self._plan(event)
        if isinstance(plans, str):
            return plans
        self._settle(event, plans)
        if plans:
            self.hours_recorded.add(event.timestamp_ms // HOUR_MS * HOUR_MS)
        for plan in plans:
            self.product_hours.setdefault(plan[0].id, set()).add(event.timestamp_ms // HOUR_MS * HOUR_MS)
        self.accepted[event.transaction_id] = (received_ms, content)
        return "accepted"

    def _invalid(self, event: REvent, received_ms: int) -> str:
        for _, value in event.values:
            if not (0 <= value < VALUE_LIMIT):  # also NaN
                return "INVALID_EVENT"
            if int(Decimal(repr(value)).as_tuple().exponent) < -18:
                return "INVALID_EVENT"  # more decimal places than the scale holds
        if event.timestamp_ms > received_ms + self.future_skew_ms:
            return "TIMESTAMP_OUT_OF_RANGE"
        return ""

    def _rates_at(self, ts_ms: int) -> list[RRate]:
        if self.timeline is None:
            return self.rates
        in_force: tuple[int, list[RRate]] | None = None
        for effective_from_ms, rates in self.timeline:
            if effective_from_ms <= ts_ms and (in_force is None or effective_from_ms >= in_force[0]):
                in_force = (effective_from_ms, rates)
        assert in_force is not None, "no version in force"
        return in_force[1]

    def _curve(self, product: RProduct, dimensions: dict[str, str], ts_ms: int) -> Curve | None:
        """The most specific matching rate's curve, the override applied; None: no rate matches."""
        matching = [
            r
            for r in self._rates_at(ts_ms)
            if r.product_id == product.id and all(dimensions.get(k) == v for k, v in r.match)
        ]
        if not matching:
            return None
        curve = max(matching, key=lambda r: len(r.match)).curve
        override = self._override(product, dimensions, ts_ms)
        if override is not None and override.price is not None:
            curve = curve.overridden(override.price)
        return curve

    def _override(self, product: RProduct, dimensions: dict[str, str], ts_ms: int) -> ROverride | None:
        """The override pricing the product's usage with these dimensions at ts_ms: of those matching whose window
        holds it, the most specific (most match entries), and of equally specific ones the one added last."""
        chosen: ROverride | None = None
        for override in self.overrides:  # in the order they were added
            if override.product_id != product.id or not override.covers(dimensions, ts_ms):
                continue
            if chosen is None or len(override.match) >= len(chosen.match):
                chosen = override
        return chosen

    def _plan(self, event: REvent) -> list[Plan] | str:
        dimensions = dict(event.dimensions)
        values = dict(event.values)
        period = self.period(event.timestamp_ms)[0]
        plans = []
        # In product-id order: the first product that refuses (its measure, then its rate) names the reason.
        for product in sorted(self.products, key=lambda p: p.id):
            if not product.fed_by(event.event_type, dimensions):
                continue
            measure: Decimal | str
            if product.aggregation == "COUNT":
                measure = Decimal(1)
            elif product.aggregation == "UNIQUE_COUNT":
                if product.value_key not in dimensions or (
                    product.empty_count_missing and dimensions[product.value_key] == ""
                ):
                    return "INVALID_EVENT"
                measure = dimensions[product.value_key]
            else:
                if product.value_key not in values:
                    return "INVALID_EVENT"
                measure = Decimal(repr(values[product.value_key]))
            key = (period, product.id, tuple(dimensions.get(d, "") for d in product.dimensions))
            aggregate = self.aggregates.get(key, RAggregate())
            after = self._after(product.aggregation, aggregate, measure, event.timestamp_ms)
            curve = self._curve(product, dimensions, event.timestamp_ms)
            if curve is None:
                return "NO_APPLICABLE_RATE"
            override = self._override(product, dimensions, event.timestamp_ms)
            multiplier = override.multiplier if override is not None and override.multiplier is not None else Decimal(1)

            def picos(quantity: Decimal, curve: Curve = curve, multiplier: Decimal = multiplier) -> Decimal:
                amount = RATING.multiply(curve.amount(quantity), multiplier)
                return round_pico(amount).scaleb(12)

            price_before, price_after = picos(aggregate.quantity), picos(after)
            if max(price_before, price_after) > PICOS_MAX:
                return "INVALID_EVENT"
            charge = max(price_after - price_before, -aggregate.amount)
            plans.append((product, key, measure, after, charge))
        return "INVALID_EVENT" if plans and self._totals_overflow(plans) else plans

    def _totals_overflow(self, plans: list[Plan]) -> bool:
        """Whether the event's charges take its period's charges, or its overage grown by each positive charge
        (a bound: what no grant covers is at most that), past 128 bits."""
        period = plans[0][1][0]
        charges, overage = self.charges.get(period, Decimal(0)), self.overage.get(period, Decimal(0))
        for *_, charge in plans:
            charges, overage = charges + charge, overage + max(charge, Decimal(0))
            if max(abs(charges), overage) > PICOS_MAX:
                return True
        return False

    @staticmethod
    def _after(aggregation: str, aggregate: RAggregate, measure: Decimal | str, ts_ms: int) -> Decimal:
        if aggregation in ("SUM", "COUNT"):
            assert isinstance(measure, Decimal)
            # Exact: a quantity holds up to 34 digits (below 10^15 at 10^-18), past the default context's 28.
            return RATING.add(aggregate.quantity, measure)
        if aggregation == "MAX":
            assert isinstance(measure, Decimal)
            return measure if aggregate.events == 0 or measure > aggregate.quantity else aggregate.quantity
        if aggregation == "LATEST":
            assert isinstance(measure, Decimal)
            return measure if ts_ms >= aggregate.latest_ts_ms else aggregate.quantity
        return aggregate.quantity if measure in aggregate.uniques else aggregate.quantity + 1

    def _settle(self, event: REvent, plans: list[Plan]) -> None:
        ts = event.timestamp_ms
        ordered = sorted(self.grants, key=RGrant.burn_key)
        outcomes: dict[str, tuple[dict[str, Decimal], Decimal]] = {}
        # The event's refunds and charges netted as far as the grants' products allow (docs/architecture.md §5,
        # "Draw"): refunds first, giving back the overage caused, then credits drawn (reverse burn order); then each
        # charge, by product id, takes back what they gave back that can pay it (credit of grants usable for its
        # product in burn order, then overage), and only the rest draws in burn order, the remainder overage.
        for product, key, _, _, charge in plans:  # refunds first: the overage caused, then credits drawn
            if charge < 0:
                aggregate = self.aggregates.get(key, RAggregate())
                back = min(-charge, aggregate.overage)
                left = -charge - back
                draws: dict[str, Decimal] = {}
                for grant in reversed(ordered):
                    give = min(left, aggregate.drawn.get(grant.id, Decimal(0)))
                    if give > 0:
                        grant.remaining += give
                        draws[grant.id] = -give
                        left -= give
                assert left == 0
                outcomes[product.id] = (draws, -back)
        # What the refunds gave back, for the charges to take back first: credit per grant, then overage.
        given = {grant_id: -credits for draws, _ in outcomes.values() for grant_id, credits in draws.items()}
        given_overage = -sum((overage for _, overage in outcomes.values()), start=Decimal(0))
        for product, _, _, _, charge in sorted(plans, key=lambda p: p[0].id):  # then charges, by product id
            if charge > 0:
                left = charge
                draws = {}
                for grant in ordered:  # credit given back to grants that can pay it, in burn order
                    back = given.get(grant.id, Decimal(0))
                    if left > 0 and back > 0 and grant.usable(ts) and grant.applies(product.id):
                        take = min(left, back)
                        grant.remaining -= take
                        given[grant.id] = back - take
                        draws[grant.id] = take
                        left -= take
                overage = min(left, given_overage)  # then overage given back: it pays any product
                given_overage -= overage
                left -= overage
                for grant in ordered:
                    if left == 0:
                        break
                    if grant.remaining > 0 and grant.usable(ts) and grant.applies(product.id):
                        take = min(left, grant.remaining)
                        grant.remaining -= take
                        draws[grant.id] = draws.get(grant.id, Decimal(0)) + take
                        left -= take
                outcomes[product.id] = (draws, overage + left)
        for product, key, measure, after, charge in plans:
            aggregate = self.aggregates.setdefault(key, RAggregate())
            draws, overage = outcomes.get(product.id, ({}, Decimal(0)))
            aggregate.quantity = after
            aggregate.events += 1
            aggregate.amount += charge
            if product.aggregation == "UNIQUE_COUNT":
                assert isinstance(measure, str)
                aggregate.uniques.add(measure)
            aggregate.latest_ts_ms = max(aggregate.latest_ts_ms, ts)
            for grant_id, credits in draws.items():
                aggregate.drawn[grant_id] = aggregate.drawn.get(grant_id, Decimal(0)) + credits
                if aggregate.drawn[grant_id] == 0:
                    del aggregate.drawn[grant_id]
            aggregate.overage += overage
            period = key[0]
            self.charges[period] = self.charges.get(period, Decimal(0)) + charge
            self.overage[period] = self.overage.get(period, Decimal(0)) + overage

    def authorize(self, event: REvent) -> tuple[bool, str, int]:
        """(allowed, reason, estimated cost in picos) for usage at the event's time; changes nothing."""
        if not self.in_force(event.timestamp_ms):
            return (False, "NO_ACTIVE_CONTRACT", 0)
        plans = self._plan(event)
        if isinstance(plans, str):
            return (False, "INVALID_REQUEST" if plans == "INVALID_EVENT" else plans, 0)
        saved = [(g, g.remaining) for g in self.grants]
        cost = sum((charge for *_, charge in plans), start=Decimal(0))
        overage_before = sum(self.overage.values(), start=Decimal(0))
        aggregates = {
            k: dataclasses.replace(a, drawn=dict(a.drawn), uniques=set(a.uniques)) for k, a in self.aggregates.items()
        }
        charges, overage = dict(self.charges), dict(self.overage)
        positive_overage = self._positive_overage(event, plans)
        for grant, remaining in saved:
            grant.remaining = remaining
        self.aggregates, self.charges, self.overage = aggregates, charges, overage
        assert sum(self.overage.values(), start=Decimal(0)) == overage_before
        products = [p[0].id for p in plans]
        available = sum(
            (
                g.remaining
                for g in self.grants
                if g.usable(event.timestamp_ms) and (not products or any(g.applies(p) for p in products))
            ),
            start=Decimal(0),
        )
        if self.block and (positive_overage > 0 or available <= 0):
            return (False, "INSUFFICIENT_CREDIT", int(cost))
        return (True, "OVERAGE_ALLOWED" if positive_overage > 0 else "OK", int(cost))

    def _positive_overage(self, event: REvent, plans: list[Plan]) -> Decimal:
        """The overage the usage would add: netted, its charges cause none before they have taken back the overage
        its refunds gave back, so what the event adds in all."""
        before = sum(self.overage.values(), start=Decimal(0))
        self._settle(event, plans)
        return max(sum(self.overage.values(), start=Decimal(0)) - before, Decimal(0))

    def conservation(self) -> None:
        """Per grant: amount = drawn by all aggregates + remaining; charges = drawn + overage."""
        for grant in self.grants:
            drawn = sum((a.drawn.get(grant.id, Decimal(0)) for a in self.aggregates.values()), start=Decimal(0))
            if grant.amount != drawn + grant.remaining or grant.remaining < 0:
                raise Mismatch(f"grant {grant.id}: {grant.amount} != {drawn} drawn + {grant.remaining} remaining")


# Cohorts: which published versions price which customer ------------------------------------------------------
#
# Rewritten from the documented rules (README "Cohorts", the Cohort and PublishVersionRequest messages in
# proto/tariff/v1/pricing.proto), for the re-rating property test (tests/test_rerate_cohort_properties.py): a
# cohort holds a customer when the customer meets every criterion given (its id is one of customer_ids, when any;
# its attributes hold every attributes entry, when any; it was created strictly after created_after_ms, when
# set); a version published without a cohort, or with one without criteria, holds everyone. Membership is
# decided when the version is published, for the customers there are then, and for a customer created later,
# when it is created. At time t a customer's price comes from the newest-effective published version whose
# cohort holds it; of two effective at once, the later published (ReferenceRating's timeline rule).


@dataclasses.dataclass(frozen=True)
class RCustomer:
    id: str
    attributes: tuple[tuple[str, str], ...]
    created_at_ms: int


@dataclasses.dataclass(frozen=True)
class RCohort:
    customer_ids: tuple[str, ...] = ()
    attributes: tuple[tuple[str, str], ...] = ()
    created_after_ms: int | None = None

    def everyone(self) -> bool:
        return not self.customer_ids and not self.attributes and self.created_after_ms is None

    def holds(self, customer: RCustomer) -> bool:
        if self.customer_ids and customer.id not in self.customer_ids:
            return False
        held = dict(customer.attributes)
        if any(held.get(key) != value for key, value in self.attributes):
            return False
        return self.created_after_ms is None or customer.created_at_ms > self.created_after_ms


@dataclasses.dataclass(frozen=True)
class RPublication:
    version: int
    effective_from_ms: int
    rates: tuple[RRate, ...]
    cohort: RCohort | None  # None: everyone (outside cohorts)


class ReferenceCohorts:
    """Customers created and versions published, fed in journal order; each customer's version timeline as
    decided then (for ReferenceRating's `timeline`), and which version prices it at a time."""

    def __init__(self) -> None:
        self.customers: dict[str, RCustomer] = {}
        self.publications: list[RPublication] = []  # in publish order
        # customer id -> the publications whose cohort holds it, in publish order
        self.members_of: dict[str, list[RPublication]] = {}

    def create_customer(self, customer: RCustomer) -> None:
        """A customer created now joins every version published so far whose cohort holds it."""
        assert customer.id not in self.customers, f"customer {customer.id!r} exists"
        self.customers[customer.id] = customer
        self.members_of[customer.id] = [p for p in self.publications if p.cohort is None or p.cohort.holds(customer)]

    def publish(self, version: int, effective_from_ms: int, rates: tuple[RRate, ...], cohort: RCohort | None) -> None:
        """Membership among the customers there are now; an id naming no customer is refused (ValueError), as
        the server refuses it (INVALID_ARGUMENT)."""
        if cohort is not None:
            unknown = [c for c in cohort.customer_ids if c not in self.customers]
            if unknown:
                raise ValueError(f"no such customer: {unknown}")
            if cohort.everyone():
                cohort = None
        publication = RPublication(version, effective_from_ms, rates, cohort)
        self.publications.append(publication)
        for customer in self.customers.values():
            if cohort is None or cohort.holds(customer):
                self.members_of[customer.id].append(publication)

    def timeline(self, customer_id: str) -> list[tuple[int, list[RRate]]]:
        return [(p.effective_from_ms, list(p.rates)) for p in self.members_of[customer_id]]

    @staticmethod
    def _newest(publications: list[RPublication], ts_ms: int) -> RPublication | None:
        in_force: RPublication | None = None
        for publication in publications:  # publish order: of two effective at once, the later wins
            if publication.effective_from_ms <= ts_ms and (
                in_force is None or publication.effective_from_ms >= in_force.effective_from_ms
            ):
                in_force = publication
        return in_force

    def version_at(self, customer_id: str, ts_ms: int) -> int | None:
        """The version pricing the customer's usage at ts_ms."""
        in_force = self._newest(self.members_of[customer_id], ts_ms)
        return None if in_force is None else in_force.version

    def version_outside_cohorts_at(self, ts_ms: int) -> int | None:
        """The version in force at ts_ms among those published without a cohort (what a rollback replaces)."""
        in_force = self._newest([p for p in self.publications if p.cohort is None], ts_ms)
        return None if in_force is None else in_force.version


# Invoices ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class RefInvoiceLine:
    model: str
    quantity: Decimal = Decimal(0)
    amount: Decimal = Decimal(0)
    overage: Decimal = Decimal(0)
    credits: dict[str, Decimal] = dataclasses.field(default_factory=dict)
    # version -> [quantity, amount]
    parts: dict[int, list[Decimal]] = dataclasses.field(default_factory=dict)


def reference_invoice(
    versions: list[tuple[int, dict[str, Decimal]]],
    grants: list[tuple[str, Decimal, int]],
    events: list[tuple[int, str, Decimal]],
    overage_price: Decimal,
    minor_places: int,
) -> dict[str, Any]:
    """One period's invoice by hand, for one SUM product priced per unit by model (`versions`: (effective from
    ms, model -> unit price), numbered from 1; `grants`: (id, amount, priority) in creation order, for every
    product, never expiring; `events`: (timestamp ms, model, quantity) in ingestion order, all in the period).

    Each event is charged round_pico(p x quantity after) - round_pico(p x quantity before), p the unit price of
    the version in force at its timestamp; the charge is drawn from the grants by (priority, creation order),
    the rest is overage. A line's amount due is its overage x overage_price rounded half-even to the minor unit;
    overage_due is the exact sum rounded once; the adjustment makes the rounded lines add up to it."""
    remaining = {grant_id: amount for grant_id, amount, _ in grants}
    order = [g[0] for g in sorted(grants, key=lambda g: (g[2], grants.index(g)))]
    lines: dict[str, RefInvoiceLine] = {}
    for ts_ms, model, quantity in events:
        number = max(i + 1 for i, (start, _) in enumerate(versions) if start <= ts_ms)
        price = versions[number - 1][1][model]
        line = lines.setdefault(model, RefInvoiceLine(model))
        after = line.quantity + quantity
        charge = round_pico(price * after) - round_pico(price * line.quantity)
        line.quantity = after
        line.amount += charge
        part = line.parts.setdefault(number, [Decimal(0), Decimal(0)])
        part[0] += quantity
        part[1] += charge
        for grant_id in order:
            take = min(remaining[grant_id], charge)
            if take > 0:
                remaining[grant_id] -= take
                line.credits[grant_id] = line.credits.get(grant_id, Decimal(0)) + take
                charge -= take
        line.overage += charge
    minor = Decimal(1).scaleb(-minor_places)

    def to_minor(value: Decimal) -> Decimal:
        return value.quantize(minor, rounding=decimal.ROUND_HALF_EVEN, context=CONTEXT)

    rows: list[dict[str, Any]] = []
    due_rounded = Decimal(0)
    for model in sorted(lines):
        line = lines[model]
        rows.append(
            {
                "model": model,
                "quantity": line.quantity,
                "amount": line.amount,
                "overage": line.overage,
                "credits": {g: c for g, c in line.credits.items() if c},
                "parts": {v: (q, a) for v, (q, a) in sorted(line.parts.items())},
                "amount_due": to_minor(line.overage * overage_price),
            }
        )
        due_rounded += to_minor(line.overage * overage_price)
    overage_due = to_minor(sum((line.overage * overage_price for line in lines.values()), Decimal(0)))
    credits: dict[str, Decimal] = {}
    for line in lines.values():
        for grant_id, amount in line.credits.items():
            credits[grant_id] = credits.get(grant_id, Decimal(0)) + amount
    return {
        "lines": rows,
        "credits": {g: c for g, c in sorted(credits.items()) if c},
        "balances": {g: (amount, amount - remaining[g], remaining[g]) for g, amount, _ in grants},
        "subtotal": sum((line.amount for line in lines.values()), Decimal(0)),
        "overage": sum((line.overage for line in lines.values()), Decimal(0)),
        "overage_due": overage_due,
        "rounding_adjustment": overage_due - due_rounded,
        "total_due": overage_due,
    }


@dataclasses.dataclass
class RReservation:
    content: tuple[object, ...]  # what was asked (event type, dimensions, values, ttl)
    amount: Decimal
    held: dict[str, Decimal]  # grant id -> picos
    expires_at_ms: int
    ended: str = ""  # "", "settled", "released", "expired"


@dataclasses.dataclass(frozen=True)
class RTopUp:
    threshold: Decimal  # picos
    recharge_to: Decimal  # picos
    max_per_period: int


class ReferenceCredits(ReferenceRating):
    """ReferenceRating with holds, top-ups and breakage, rewritten by hand from the design: a hold takes what the
    usage would draw from grants in burn order; an event naming an open reservation gives the hold back before it
    is charged; a top-up buys recharge_to - available when available credit falls below the threshold, at most
    max_per_period times per calendar month (the contracts here start on the 1st), counted and started at the event's
    period's start when that is after the purchase under `top_ups_in_billed_period` (the batch record's server-set
    field), else at the purchase; at a clock tick due holds end,
    then grants whose month has ended roll over (`rollover`: grant id -> fraction, see `_roll_over`), then what
    expired grants still hold becomes breakage. A grant of `use_ends_at_rollover` with a rollover fraction pays
    only for usage dated before the end of its month (its rollover), whenever that usage arrives. A grant of
    `expiring_at_rollover_rolls` whose expiry is exactly that end rolls over there (its credit is usable up to it);
    any other grant expiring at or before that end just expires (its GrantCredits stored before the rule)."""

    def __init__(
        self,
        *args: Any,
        top_up: RTopUp | None = None,
        rollover: dict[str, Decimal] | None = None,
        use_ends_at_rollover: Collection[str] = (),
        expiring_at_rollover_rolls: Collection[str] = (),
        top_ups_in_billed_period: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.top_up = top_up
        self.top_ups_in_billed_period = top_ups_in_billed_period
        self.reservations: dict[str, RReservation] = {}
        self.purchases: list[tuple[tuple[int, int], str, Decimal]] = []  # (period, grant id, picos)
        self.breakage: dict[str, Decimal] = {}
        # Grants still to roll over (id -> fraction in (0, 1]) and, once rolled, what each moved out.
        self.rollover = {grant_id: f for grant_id, f in (rollover or {}).items() if f > 0}
        assert not self.rollover or self.period_anchor_ms is None, "rollover is modelled for calendar months only"
        self.rolled_out: dict[str, Decimal] = {}
        # Every grant given a rollover fraction, kept once it rolled over or expired (EndContract's rule reads it).
        self.rollover_given = set(self.rollover)
        self.expiring_at_rollover_rolls = set(expiring_at_rollover_rolls)
        for grant in self.grants:
            if grant.id in use_ends_at_rollover and grant.id in self.rollover:
                end_ms = _month_start_ms(*month_of(grant.starts_at_ms), months_later=1)
                if grant.expires_at_ms is None or grant.expires_at_ms > end_ms:
                    grant.usable_before_ms = end_ms

    def rolling_grant_from(self, end_ms: int) -> str | None:
        """As GrantCredits, any grant given a rollover fraction, whether or not it will expire before it could roll."""
        return next((g.id for g in self.grants if g.id in self.rollover_given and g.starts_at_ms >= end_ms), None)

    def expire_grant(self, grant_id: str, expires_ms: int, at_ms: int) -> tuple[str, int | None]:
        """ExpireGrant of grant `grant_id` at `expires_ms`, requested at `at_ms`, by contracts.proto's rules in the
        order they are checked: ("expired", None) when taken, ("repeated", None) when the grant already expires
        there; refused, nothing changed: ("unknown", None) (NOT_FOUND), ("after starts_at", None) for an expiry at or
        before its start (INVALID_ARGUMENT), ("already expired", None) when the expiry held has passed, ("before
        now", None) for a retroactive expiry, ("only earlier", None) for one after the expiry held, ("usage", hour)
        when usage is recorded in an hour ending after the new expiry, after the grant's start and before the expiry
        held (`hour` the latest such hour's first instant: whatever its products). Taken, the grant expires there as
        one granted so: it breaks what it holds then at the next tick, and, given a rollover fraction, rolls over at
        its month's end only when the expiry is exactly that end (ExpireGrant marks it as GrantCredits does now).
        ("rolled over", None) after "already expired": a grant given a rollover fraction whose month's end, where it
        rolls over (`_roll_over`'s rule), is at or before `at_ms` has ended there."""
        grant = next((g for g in self.grants if g.id == grant_id), None)
        if grant is None:
            return "unknown", None
        held_ms = grant.expires_at_ms
        if expires_ms <= grant.starts_at_ms:
            return "after starts_at", None
        if expires_ms == held_ms:
            return "repeated", None
        if held_ms is not None and held_ms <= at_ms:
            return "already expired", None
        rolls_at_ms = self._rolls_at(grant)
        if rolls_at_ms is not None and rolls_at_ms <= at_ms:
            return "rolled over", None
        if expires_ms < at_ms:
            return "before now", None
        if held_ms is not None and expires_ms > held_ms:
            return "only earlier", None
        held_end = NEVER_MS if held_ms is None else held_ms
        floor_ms = max(expires_ms, grant.starts_at_ms)
        hours = [h for h in self.hours_recorded if h + HOUR_MS > floor_ms and h < held_end]
        if hours:
            return "usage", max(hours)
        grant.expires_at_ms = expires_ms
        self.expiring_at_rollover_rolls.add(grant.id)
        return "expired", None

    def _rolls_at(self, grant: RGrant) -> int | None:
        """When a grant given a rollover fraction rolls over (the end of the calendar month it starts in), by
        `_roll_over`'s rule; None for any other grant, or one expiring before then (it simply expires)."""
        if grant.id not in self.rollover_given:
            return None
        end_ms = _month_start_ms(*month_of(grant.starts_at_ms), months_later=1)
        tie_rolls = grant.expires_at_ms == end_ms and grant.id in self.expiring_at_rollover_rolls
        if grant.expires_at_ms is not None and grant.expires_at_ms <= end_ms and not tie_rolls:
            return None
        return end_ms

    def held(self, grant_id: str) -> Decimal:
        return sum(
            (r.held.get(grant_id, Decimal(0)) for r in self.reservations.values() if not r.ended), start=Decimal(0)
        )

    def ingest_reserving(self, event: REvent, received_ms: int) -> tuple[str, str]:
        """(outcome as ingest answers it, notice: "" or how the named reservation had ended / "unknown")."""
        notice = ""
        reservation = self.reservations.get(event.reservation_id) if event.reservation_id else None
        outcome = self._invalid(event, received_ms) or self._dedupe(event, received_ms)
        rateable = (
            event.customer_id == self.customer_id
            and self.in_force(event.timestamp_ms)
            and self.period(event.timestamp_ms)[0] not in self.closed
        )
        if outcome == "" and event.reservation_id and rateable and isinstance(self._plan(event), list):
            if reservation is None:
                notice = "unknown"
            elif reservation.ended:
                notice = reservation.ended
            else:
                self._give_back(reservation, "settled")
        outcome = self.ingest(event, received_ms)
        if outcome == "accepted":
            self._maybe_top_up(self.period(event.timestamp_ms), received_ms)
        return outcome, notice

    def _dedupe(self, event: REvent, received_ms: int) -> str:
        content = event_content(event)
        prior = self.accepted.get(event.transaction_id)
        if prior is not None and received_ms - prior[0] < self.dedupe_window_ms:
            return "duplicate" if prior[1] == content else "DUPLICATE_CONFLICT"
        return ""

    def _give_back(self, reservation: RReservation, ending: str) -> None:
        for grant in self.grants:
            grant.remaining += reservation.held.get(grant.id, Decimal(0))
        reservation.ended = ending

    def reserve(self, reservation_id: str, event: REvent, ttl_ms: int) -> tuple[bool, str, int] | str:
        """(allowed, reason, cost) for a new reservation at the event's time; "repeated" or "conflict" for a
        known id."""
        content = (event.event_type, tuple(sorted(event.dimensions)), tuple(sorted(event.values)), ttl_ms)
        known = self.reservations.get(reservation_id)
        if known is not None:
            return "repeated" if known.content == content else "conflict"
        decision = self.authorize(event)
        if not decision[0]:
            return decision
        plans = self._plan(event)
        assert isinstance(plans, list)
        before = {g.id: g.remaining for g in self.grants}
        saved = (
            {
                k: dataclasses.replace(a, drawn=dict(a.drawn), uniques=set(a.uniques))
                for k, a in self.aggregates.items()
            },
            dict(self.charges),
            dict(self.overage),
        )
        self._settle(event, plans)
        held = {g.id: before[g.id] - g.remaining for g in self.grants if before[g.id] > g.remaining}
        for grant in self.grants:
            grant.remaining = before[grant.id] - held.get(grant.id, Decimal(0))
        self.aggregates, self.charges, self.overage = saved
        self.reservations[reservation_id] = RReservation(
            content, Decimal(decision[2]), held, event.timestamp_ms + ttl_ms
        )
        self._maybe_top_up(self.period(event.timestamp_ms), event.timestamp_ms)
        return decision

    def release(self, reservation_id: str) -> Decimal | str:
        """Credits given back, or "not found" / how it had ended."""
        reservation = self.reservations.get(reservation_id)
        if reservation is None:
            return "not found"
        if reservation.ended == "released":
            return sum(reservation.held.values(), start=Decimal(0))
        if reservation.ended:
            return reservation.ended
        self._give_back(reservation, "released")
        return sum(reservation.held.values(), start=Decimal(0))

    def advance(self, now_ms: int) -> None:
        for reservation in self.reservations.values():
            if not reservation.ended and reservation.expires_at_ms <= now_ms:
                self._give_back(reservation, "expired")
        self._roll_over(now_ms)
        for grant in self.grants:
            if grant.expires_at_ms is not None and grant.expires_at_ms <= now_ms and grant.remaining > 0:
                self.breakage[grant.id] = self.breakage.get(grant.id, Decimal(0)) + grant.remaining
                grant.remaining = Decimal(0)

    def _maybe_top_up(self, in_period: tuple[Period, int, int], at_ms: int) -> None:
        policy = self.top_up
        if policy is None:
            return
        period, period_start_ms, _ = in_period
        # A purchase for an event dated in a later period than the batch's receipt (within the future skew): under
        # the batch record's server-set `top_ups_in_billed_period` counted and started at that period's start, the
        # period that bills it; before it, counted and started at the purchase (docs/architecture.md "A top-up").
        counted_at_ms, starts_at_ms = (at_ms, min(period_start_ms, at_ms))
        if self.top_ups_in_billed_period:
            counted_at_ms, starts_at_ms = max(at_ms, period_start_ms), period_start_ms
        available = sum((g.remaining for g in self.grants if g.usable(counted_at_ms)), start=Decimal(0))
        bought = [p for p in self.purchases if p[0] == period]
        if available >= policy.threshold or len(bought) >= policy.max_per_period:
            return
        grant_id = f"top-up-{period_start_ms}-{len(bought) + 1}"
        credits = policy.recharge_to - available
        self.purchases.append((period, grant_id, credits))
        grant = RGrant(grant_id, credits, 2**31 - 1, (), starts_at_ms, None, 2**48 + len(self.purchases))
        grant.remaining = credits
        self.grants.append(grant)

    def credits_conserved(self) -> None:
        """Per grant: amount = drawn + remaining + held + breakage, nothing negative."""
        for grant in self.grants:
            drawn = sum((a.drawn.get(grant.id, Decimal(0)) for a in self.aggregates.values()), start=Decimal(0))
            held, broken = self.held(grant.id), self.breakage.get(grant.id, Decimal(0))
            moved = self.rolled_out.get(grant.id, Decimal(0))  # now granted again, as a ROLLOVER grant
            if grant.amount != drawn + grant.remaining + held + broken + moved or min(grant.remaining, held, drawn) < 0:
                raise Mismatch(
                    f"grant {grant.id}: {grant.amount} != {drawn} + {grant.remaining} + {held} + {broken} + {moved}"
                )

    # Rollover ----------------------------------------------------------------------------------------------

    def _roll_over(self, now_ms: int) -> None:
        """A grant with a rollover fraction lasts until the end of the calendar month in which it starts (one that
        expires before that end just expires; one that expires exactly then rolls over if it is of
        `expiring_at_rollover_rolls`, else just expires). At the first tick at or after that end, the grant's credit
        (what it has left plus what open holds took from it) splits: fraction x credit, rounded down to the pico,
        moves into a new ROLLOVER grant (same priority and products, usable from that end until the end of the
        next month, never rolling again), the rest is breakage right away. A hold is treated as if it had ended
        just before the end: its part of the rolled credit stays held, on the ROLLOVER grant; the part that
        broke is no longer held. Rounding: the grant's own remainder comes first, then the holds by reservation
        id; each piece rolls floor(f x credit up to and including it) - floor(f x credit before it)."""
        for grant in list(self.grants):
            fraction = self.rollover.get(grant.id)
            if fraction is None:
                continue
            end_ms = _month_start_ms(*month_of(grant.starts_at_ms), months_later=1)
            tie_rolls = grant.expires_at_ms == end_ms and grant.id in self.expiring_at_rollover_rolls
            if grant.expires_at_ms is not None and grant.expires_at_ms <= end_ms and not tie_rolls:
                del self.rollover[grant.id]
                continue
            if now_ms < end_ms:
                continue
            del self.rollover[grant.id]
            pieces: list[tuple[RReservation | None, Decimal]] = [(None, grant.remaining)]
            for reservation_id in sorted(self.reservations):
                reservation = self.reservations[reservation_id]
                if not reservation.ended and reservation.held.get(grant.id, Decimal(0)) > 0:
                    pieces.append((reservation, reservation.held[grant.id]))
            credit = sum((c for _, c in pieces), start=Decimal(0))
            if credit == 0:
                continue
            new_id = f"rollover-{grant.id}-{end_ms}"
            rolled_before, seen = Decimal(0), Decimal(0)
            kept_remaining = Decimal(0)
            for holder, piece in pieces:
                seen += piece
                rolled_upto = _floor(RATING.multiply(seen, fraction))
                mine, rolled_before = rolled_upto - rolled_before, rolled_upto
                if holder is None:
                    kept_remaining = mine
                    continue
                del holder.held[grant.id]
                if mine > 0:
                    holder.held[new_id] = mine
            grant.remaining = Decimal(0)
            self.rolled_out[grant.id] = rolled_before
            if credit > rolled_before:
                self.breakage[grant.id] = self.breakage.get(grant.id, Decimal(0)) + credit - rolled_before
            if rolled_before > 0:
                next_end_ms = _month_start_ms(*month_of(end_ms), months_later=1)
                order = 2**48 + 2**40 + grant.order
                made = RGrant(new_id, rolled_before, grant.priority, grant.products, end_ms, next_end_ms, order)
                made.remaining = kept_remaining
                self.grants.append(made)


def _month_start_ms(year: int, month: int, *, months_later: int = 0) -> int:
    index = year * 12 + (month - 1) + months_later
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) * 1000


def _floor(value: Decimal) -> Decimal:
    return value.to_integral_value(rounding=decimal.ROUND_FLOOR)
