"""Products: the billable metrics. Which events feed a product, and how its quantity aggregates."""

from __future__ import annotations

import enum

import msgspec


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
    # UNIQUE_COUNT: an empty counted dimension is a missing one (CreateProduct.empty_count_missing).
    empty_count_missing: bool = False
    # A filter on "" is met by an event leaving the dimension out too (CreateProduct.empty_filter_missing).
    empty_filter_missing: bool = False
