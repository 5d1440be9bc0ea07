"""Customers and their contracts: which rate card prices them, when, and in which monthly periods.

Billing periods are calendar months anchored on the contract's `starting_at` (UTC): period k runs from the
anchor plus k months to the anchor plus k+1 months, a day past a month's end clamped to its last day
(anchored on Jan 31: Feb 28, Mar 31, ...). Each boundary is computed from the anchor, never chained, so
clamping does not drift.
"""

from __future__ import annotations

import calendar
import enum
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import msgspec

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class OveragePolicy(enum.StrEnum):
    ALLOW = "ALLOW"
    BLOCK = "BLOCK"


class Customer(msgspec.Struct, frozen=True, gc=False):
    id: str
    name: str
    attributes: dict[str, str]
    created_at_ms: int


class Override(msgspec.Struct, frozen=True):
    """A contract's own price for a product (and match): a multiplier on the rate card's price, or a unit price."""

    id: str
    product_id: str
    match: dict[str, str]  # normalized: no "*" values
    multiplier: str | None
    price: str | None
    starting_at_ms: int
    ending_before_ms: int | None

    def applies(self, product_id: str, match: dict[str, str], ts_ms: int) -> bool:
        return (
            self.product_id == product_id
            and all(match.get(key) == value for key, value in self.match.items())
            and self.starting_at_ms <= ts_ms
            and (self.ending_before_ms is None or ts_ms < self.ending_before_ms)
        )


class TopUpPolicy(msgspec.Struct, frozen=True):
    threshold: str
    recharge_to: str
    price_per_credit: str
    max_per_period: int


class Contract(msgspec.Struct, gc=False):
    id: str
    customer_id: str
    rate_card_id: str
    starting_at_ms: int
    ending_before_ms: int | None
    overage_policy: OveragePolicy
    overage_price: str
    currency: str
    created_at_ms: int
    overrides: list[Override] = []
    top_up: TopUpPolicy | None = None

    def covers(self, ts_ms: int) -> bool:
        return self.starting_at_ms <= ts_ms and (self.ending_before_ms is None or ts_ms < self.ending_before_ms)

    def overlaps(self, starting_at_ms: int, ending_before_ms: int | None) -> bool:
        self_end = self.ending_before_ms if self.ending_before_ms is not None else 2**63
        other_end = ending_before_ms if ending_before_ms is not None else 2**63
        return self.starting_at_ms < other_end and starting_at_ms < self_end

    @property
    def overage_price_decimal(self) -> Decimal:
        return Decimal(self.overage_price)


@dataclass(frozen=True, slots=True)
class Period:
    start_ms: int
    end_ms: int

    def contains(self, ts_ms: int) -> bool:
        return self.start_ms <= ts_ms < self.end_ms


def _from_ms(ms: int) -> datetime:
    return _EPOCH + timedelta(milliseconds=ms)


def _to_ms(moment: datetime) -> int:
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _add_months(anchor: datetime, months: int) -> datetime:
    month_index = anchor.month - 1 + months
    year, month = anchor.year + month_index // 12, month_index % 12 + 1
    day = min(anchor.day, calendar.monthrange(year, month)[1])
    return anchor.replace(year=year, month=month, day=day)


def period_containing(anchor_ms: int, ts_ms: int) -> Period:
    """The monthly period anchored on anchor_ms that contains ts_ms (ts_ms >= anchor_ms)."""
    assert ts_ms >= anchor_ms, "a contract's periods start at its start"
    anchor, moment = _from_ms(anchor_ms), _from_ms(ts_ms)
    months = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
    # The estimate is off by at most one: a month boundary clamps or the time of day is before the anchor's.
    months = max(months, 0)
    while _to_ms(_add_months(anchor, months)) > ts_ms:
        months -= 1
    while _to_ms(_add_months(anchor, months + 1)) <= ts_ms:
        months += 1
    return Period(_to_ms(_add_months(anchor, months)), _to_ms(_add_months(anchor, months + 1)))
