"""Rating: what one event costs, per product it feeds, before anything is changed.

For each product an event feeds: its measure (quantity, or the distinct value UNIQUE_COUNT counts), the
per-period aggregate for its pricing dimensions, the rate in force at the event's timestamp (with the
contract's override), and charge = price(aggregate after) - price(aggregate before), each side rounded once to
10^-12. Charges telescope: a period's charges for an aggregate add up to the price of its total, whatever the
order or batching of its events. Planning is pure; `Aggregate.record` applies a plan once the whole event is
known to be acceptable, so a refused event changes nothing.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from engine.contracts import Contract
from engine.money import DECIMAL_CONTEXT
from engine.products import Aggregation, Product
from engine.ratecard import CompiledVersion, PriceCurve, ScaledCurve, UnitCurve

AggregateKey = tuple[int, str, tuple[str, ...]]  # (period start ms, product id, pricing dimension values)


class RejectReason(enum.StrEnum):
    INVALID_EVENT = "INVALID_EVENT"
    UNKNOWN_CUSTOMER = "UNKNOWN_CUSTOMER"
    NO_ACTIVE_CONTRACT = "NO_ACTIVE_CONTRACT"
    TIMESTAMP_OUT_OF_RANGE = "TIMESTAMP_OUT_OF_RANGE"
    PERIOD_CLOSED = "PERIOD_CLOSED"
    DUPLICATE_CONFLICT = "DUPLICATE_CONFLICT"
    NO_APPLICABLE_RATE = "NO_APPLICABLE_RATE"


class Refusal(Exception):
    """Why one event is not rated; it becomes an EventRejection, never a request error."""

    def __init__(self, reason: RejectReason, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


_ZERO = Decimal(0)


class Aggregate(msgspec.Struct, gc=False):
    """One invoice line's running state: a product's usage in a period, for one combination of dimensions."""

    quantity: Decimal = Decimal(0)
    events: int = 0
    amount: int = 0  # picos charged so far
    amount_by_version: dict[int, int] = {}
    quantity_by_version: dict[int, Decimal] = {}
    # UNIQUE_COUNT only. A dict, not a set: its order survives a snapshot, so snapshots are byte-identical.
    uniques: dict[str, None] | None = None
    latest_ts_ms: int = -1  # LATEST only
    # Where the charges went: credits drawn per grant and the part no grant covered. A price that falls gives
    # back from here. Invariant: amount == overage + sum(drawn_by_grant.values()).
    drawn_by_grant: dict[str, int] = {}
    overage: int = 0

    def quantity_after(self, aggregation: Aggregation, measure: Decimal | str, ts_ms: int) -> Decimal:
        match aggregation:
            case Aggregation.SUM | Aggregation.COUNT:
                assert isinstance(measure, Decimal)
                return DECIMAL_CONTEXT.add(self.quantity, measure)
            case Aggregation.MAX:
                assert isinstance(measure, Decimal)
                return measure if self.events == 0 or measure > self.quantity else self.quantity
            case Aggregation.LATEST:
                assert isinstance(measure, Decimal)
                # A late event (older than the latest seen) does not move a gauge; a tie goes to the later arrival.
                return measure if ts_ms >= self.latest_ts_ms else self.quantity
            case Aggregation.UNIQUE_COUNT:
                assert isinstance(measure, str)
                seen = self.uniques is not None and measure in self.uniques
                return self.quantity if seen else self.quantity + 1
        raise AssertionError(f"unknown aggregation {aggregation}")

    def record(self, charge: PlannedCharge) -> None:
        self.events += 1
        self.amount += charge.charge
        version = charge.version
        self.amount_by_version[version] = self.amount_by_version.get(version, 0) + charge.charge
        delta = DECIMAL_CONTEXT.subtract(charge.quantity_after, self.quantity)
        self.quantity_by_version[version] = DECIMAL_CONTEXT.add(self.quantity_by_version.get(version, _ZERO), delta)
        self.quantity = charge.quantity_after
        if charge.product.aggregation is Aggregation.UNIQUE_COUNT:
            assert isinstance(charge.measure, str)
            if self.uniques is None:
                self.uniques = {}
            self.uniques[charge.measure] = None
        elif charge.product.aggregation is Aggregation.LATEST:
            self.latest_ts_ms = max(self.latest_ts_ms, charge.ts_ms)


@dataclass(frozen=True, slots=True)
class PlannedCharge:
    product: Product
    key: AggregateKey
    measure: Decimal | str
    ts_ms: int
    quantity_after: Decimal
    rate_card_id: str
    version: int
    charge: int  # picos; negative when the price of the aggregate fell (LATEST, volume tiers)


def measure_event(product: Product, dimensions: dict[str, str], values: dict[str, float]) -> Decimal | str:
    measure = product.measure(dimensions, values)
    if measure is None:
        where = "dimensions" if product.aggregation is Aggregation.UNIQUE_COUNT else "values"
        raise Refusal(
            RejectReason.INVALID_EVENT, f"{where}[{product.value_key!r}] is required by product {product.id!r}"
        )
    return measure


def curve_for(
    product: Product, dimension_key: tuple[str, ...], version: CompiledVersion, contract: Contract, ts_ms: int
) -> PriceCurve:
    rate = version.rate_for(product.id, dimension_key)
    if rate is None:
        raise Refusal(
            RejectReason.NO_APPLICABLE_RATE,
            f"rate card {version.rate_card_id!r} version {version.number} has no rate for product {product.id!r} "
            f"with {dict(zip(product.pricing_dimensions, dimension_key, strict=True))}",
        )
    curve = rate.curve
    if contract.overrides:
        dimensions = dict(zip(product.pricing_dimensions, dimension_key, strict=True))
        applicable = [o for o in contract.overrides if o.applies(product.id, dimensions, ts_ms)]
        if applicable:
            # The most specific override wins; among equals, the one added last.
            override = max(enumerate(applicable), key=lambda pair: (len(pair[1].match), pair[0]))[1]
            if override.price is not None:
                per_units = curve.per_units if isinstance(curve, UnitCurve) else Decimal(1)
                curve = UnitCurve(Decimal(override.price), per_units)
            else:
                assert override.multiplier is not None
                curve = ScaledCurve(curve, Decimal(override.multiplier))
    return curve


def plan_charge(
    product: Product,
    key: AggregateKey,
    aggregate: Aggregate | None,
    measure: Decimal | str,
    ts_ms: int,
    curve: PriceCurve,
    rate_card_id: str,
    version: int,
) -> PlannedCharge:
    current = aggregate if aggregate is not None else _EMPTY
    after = current.quantity_after(product.aggregation, measure, ts_ms)
    charge = curve.picos(after) - curve.picos(current.quantity)
    # Under a newer, dearer version the old quantity prices higher than it was charged: never give back more
    # than the aggregate was charged in all.
    charge = max(charge, -current.amount)
    return PlannedCharge(product, key, measure, ts_ms, after, rate_card_id, version, charge)


_EMPTY = Aggregate()
