"""A deliberately simple recomputation of what the server exposes, from its LMDB journal, for the soak.

It shares no code with engine/ beyond the journal's record types (to decode what the server wrote): the
rules are rewritten here, by hand, for the small catalogue the soak builds (tests/soak.py), and anything
outside that catalogue raises `Unsupported` instead of being guessed at:

- products: COUNT, or SUM of one `values` entry, no filters; rates: UNIT prices with literal decimals, one
  rate per product and exact pricing-dimension values (or none), one published version effective before
  every event;
- contracts starting at 00:00 UTC on the 1st of a month (so a period is a calendar month), no overrides;
- grants applicable to every product, started before every event, expiring after the soak ends: burn order
  is (priority, expiry, creation order).

Usage is rated as the design says: per (period, product, dimension values) the aggregate's price is
price x quantity / per_units rounded half-even to 10^-12 once; an event is charged price(after) -
price(before) and that charge is drawn from the grants in burn order, the rest is overage. Dedupe is by
transaction id over the whole journal (an identical resend is a duplicate, other content a conflict).

All arithmetic is exact (`Decimal` with 60 digits); amounts are compared as the server's canonical text.
"""

from __future__ import annotations

import dataclasses
import decimal
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import lmdb

from engine import commands as cmd
from server.sequencer import decode_record

CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN)
PICO = Decimal(1).scaleb(-12)
NEVER_MS = 2**62


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
        if isinstance(command, cmd.IngestBatch):
            result = self._ingest(seq, command)
            if record.outcome is None:
                raise Mismatch(f"record {seq}: an ingest record without its outcome")
            journaled = (record.outcome.accepted, record.outcome.duplicates, record.outcome.rejected)
            recomputed = (result.accepted, result.duplicates, result.conflicts)
            if journaled != recomputed:
                raise Mismatch(
                    f"record {seq} (batch {command.batch_id!r}): the server journaled accepted/duplicates/rejected"
                    f" {journaled}, the reference recomputes {recomputed}"
                )
        else:
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
                self.customers[contract.customer_id].grants.append(grant)
            case _:
                raise Unsupported(f"record {seq}: {type(command).__name__}")

    @dataclasses.dataclass
    class _Counts:
        accepted: int = 0
        duplicates: int = 0
        conflicts: int = 0

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
            )
        )
        return counts

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
                if not grant.starts_at_ms <= event.timestamp_ms < (grant.expires_at_ms or NEVER_MS):
                    raise Unsupported(f"record {seq}: grant {grant.id!r} not in force at the event")
                take = min(left, grant.remaining)
                grant.drawn += take
                left -= take
            customer.overage[period] = customer.overage.get(period, Decimal(0)) + left

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
        overage = customer.overage.get(period, Decimal(0))
        return {
            "customer_id": customer_id,
            "credits_remaining": wire(remaining),
            "credits_held": "0",
            "credits_available": wire(remaining),
            "period_charges": wire(customer.charges.get(period, Decimal(0))),
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
