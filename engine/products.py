"""Products: the billable metrics. Which events feed a product, and how its quantity aggregates."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from decimal import Decimal

import msgspec

from engine.money import decimal_from_double


class Aggregation(enum.StrEnum):
    SUM = "SUM"
    COUNT = "COUNT"
    MAX = "MAX"
    UNIQUE_COUNT = "UNIQUE_COUNT"
    LATEST = "LATEST"


class Product(msgspec.Struct, frozen=True):
    id: str
    name: str
    event_type: str
    aggregation: Aggregation
    # Which values entry SUM/MAX/LATEST read, or which dimensions entry UNIQUE_COUNT counts.
    value_key: str
    filters: dict[str, str]
    pricing_dimensions: tuple[str, ...]
    unit: str
    created_at_ms: int

    def accepts(self, dimensions: Mapping[str, str]) -> bool:
        """Whether an event of this product's event_type meets its filters."""
        return all(dimensions.get(key) == value for key, value in self.filters.items())

    def dimension_key(self, dimensions: Mapping[str, str]) -> tuple[str, ...]:
        """The event's values of the pricing dimensions, in order; "" where the event has none."""
        return tuple([dimensions.get(key, "") for key in self.pricing_dimensions])  # a list builds faster

    def measure(self, dimensions: Mapping[str, str], values: Mapping[str, float]) -> Decimal | str | None:
        """What this event contributes: a quantity, a distinct value (UNIQUE_COUNT), or None if it lacks it."""
        if self.aggregation is Aggregation.COUNT:
            return Decimal(1)
        if self.aggregation is Aggregation.UNIQUE_COUNT:
            return dimensions.get(self.value_key)
        raw = values.get(self.value_key)
        if raw is None:
            return None
        assert math.isfinite(raw) and raw >= 0, "events are validated before they are measured"
        return decimal_from_double(raw)
