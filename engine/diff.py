"""What changed between two versions of a rate card (DiffVersions): parameters and rates added, removed and
changed, and for every price field that differs, its formula and its evaluated price on both sides.

The order is stable, so that a CLI and a dashboard show the same list: parameters by name; rates by product,
then by match (its (dimension, value) pairs sorted by dimension and compared pair by pair, so the catch-all
rate comes first). A rate written the same way in both versions is still listed (as REPRICED) when a
parameter its formulas use changed its evaluated price. Prices are evaluated exactly as validation evaluates
them (engine/ratecard.py): once, rounded half-even to 18 places, the field's default when it is left empty.
"""

from __future__ import annotations

import decimal
import enum
from collections.abc import Generator
from dataclasses import dataclass
from decimal import Decimal

from engine.money import format_decimal
from engine.ratecard import (
    FlatPrice,
    PackagePrice,
    PriceSpec,
    Rate,
    RateKey,
    TieredPrice,
    UnitPrice,
    Version,
    price_field_value,
)
from engine.tables_paced import run_steps

# Rates compared a step (diff_versions_steps): about 20 us a rate of three tiers here, so a step is about a
# millisecond of Python and the caller's pause costs nothing next to it.
RATES_PER_STEP = 64


class ChangeKind(enum.StrEnum):
    ADDED = "ADDED"  # only in the newer (to) version
    REMOVED = "REMOVED"  # only in the older (from) version
    CHANGED = "CHANGED"  # in both, written differently
    REPRICED = "REPRICED"  # a rate written the same in both whose evaluated price differs


@dataclass(frozen=True, slots=True)
class ParameterChange:
    name: str
    kind: ChangeKind
    old_value: str | None
    new_value: str | None


@dataclass(frozen=True, slots=True)
class FieldSide:
    """One price field in one version: as written, its evaluated price, or why it has none."""

    formula: str
    price: str | None  # canonical decimal; None when unbounded (a last tier's up_to) or not evaluable
    problem: str = ""


@dataclass(frozen=True, slots=True)
class PriceFieldChange:
    path: str  # "unit.price", "tiered.tiers[1].unit_price", ...
    old: FieldSide | None  # None: the older rate has no such field
    new: FieldSide | None


@dataclass(frozen=True, slots=True)
class RateChange:
    key: RateKey
    kind: ChangeKind
    old_rate: Rate | None
    new_rate: Rate | None
    fields: tuple[PriceFieldChange, ...]


@dataclass(frozen=True, slots=True)
class VersionDiff:
    parameters: tuple[ParameterChange, ...]
    rates: tuple[RateChange, ...]

    @property
    def empty(self) -> bool:
        return not self.parameters and not self.rates


def diff_versions(old: Version, new: Version) -> VersionDiff:
    """The differences from `old` to `new` (two versions of one card, drafts included); empty when they hold the
    same parameters and rates."""
    return run_steps(diff_versions_steps(old, new))


def diff_versions_steps(old: Version, new: Version) -> Generator[None, None, VersionDiff]:
    """`diff_versions`, RATES_PER_STEP rates a step, for a caller on an event loop that pauses between steps: two
    versions of 10,000 rates take seconds. What a diff reads of a version (its parameters and rates) is fixed
    when the version is made (a publish sets only its state, times and cohort), so commands applied between
    steps change nothing of the answer."""
    parameters = _parameter_changes(old.parameters, new.parameters)
    rates = yield from _rate_changes(old, new)
    return VersionDiff(parameters, rates)


def _parameter_changes(old: dict[str, str], new: dict[str, str]) -> tuple[ParameterChange, ...]:
    changes = []
    for name in sorted(old.keys() | new.keys()):
        before, after = old.get(name), new.get(name)
        if before == after:
            continue
        kind = ChangeKind.ADDED if before is None else ChangeKind.REMOVED if after is None else ChangeKind.CHANGED
        changes.append(ParameterChange(name, kind, before, after))
    return tuple(changes)


def _rate_changes(old: Version, new: Version) -> Generator[None, None, tuple[RateChange, ...]]:
    old_rates = {rate.key: rate for rate in old.rates}
    new_rates = {rate.key: rate for rate in new.rates}
    old_parameters, new_parameters = parameter_values(old), parameter_values(new)
    changes = []
    for done, key in enumerate(sorted(old_rates.keys() | new_rates.keys())):
        if done and not done % RATES_PER_STEP:
            yield
        before, after = old_rates.get(key), new_rates.get(key)
        old_fields = price_fields(before.price, old_parameters) if before is not None else {}
        new_fields = price_fields(after.price, new_parameters) if after is not None else {}
        fields = tuple(
            PriceFieldChange(path, old_fields.get(path), new_fields.get(path))
            for path in _union_in_order(old_fields, new_fields)
            if old_fields.get(path) != new_fields.get(path)
        )
        if before is None:
            kind = ChangeKind.ADDED
        elif after is None:
            kind = ChangeKind.REMOVED
        elif before != after:
            kind = ChangeKind.CHANGED
        elif fields:
            kind = ChangeKind.REPRICED
        else:
            continue
        changes.append(RateChange(key, kind, before, after, fields))
    return tuple(changes)


def _union_in_order(first: dict[str, FieldSide], second: dict[str, FieldSide]) -> list[str]:
    """The paths of both, each once: the newer rate's order, then what only the older one has."""
    return [*second, *(path for path in first if path not in second)]


def parameter_values(version: Version) -> dict[str, Decimal]:
    """The version's parameters that are decimals (validation reports the others; a formula naming one fails)."""
    values = {}
    for name, text in version.parameters.items():
        try:
            value = Decimal(text)
        except decimal.InvalidOperation:
            continue
        if name.isidentifier() and value.is_finite():
            values[name] = value
    return values


def price_fields(price: PriceSpec, parameters: dict[str, Decimal]) -> dict[str, FieldSide]:
    """Every price field of a rate's price, by path, in the price's own order, evaluated with `parameters`."""
    fields: dict[str, FieldSide] = {}

    def field(path: str, formula: str, *, default: str | None = None, positive: bool = False) -> None:
        value, problem = price_field_value(formula, parameters, default=default, positive=positive)
        fields[path] = FieldSide(formula, None if value is None else format_decimal(value), problem)

    match price:
        case UnitPrice():
            field("unit.price", price.price)
            field("unit.per_units", price.per_units, default="1", positive=True)
        case TieredPrice():
            for index, tier in enumerate(price.tiers):
                path = f"tiered.tiers[{index}]"
                if tier.up_to.strip():
                    field(f"{path}.up_to", tier.up_to, positive=True)
                else:
                    fields[f"{path}.up_to"] = FieldSide(tier.up_to, None)  # unbounded: the last tier
                field(f"{path}.unit_price", tier.unit_price, default="0")
                field(f"{path}.flat_price", tier.flat_price, default="0")
            field("tiered.per_units", price.per_units, default="1", positive=True)
        case PackagePrice():
            field("package.package_size", price.package_size, positive=True)
            field("package.package_price", price.package_price)
        case FlatPrice():
            field("flat.price", price.price)
    return fields
