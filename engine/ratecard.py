"""Rate cards: versioned, dimensional prices stored once, validated before they take effect.

A version is a set of named parameters and rates. A rate prices one product for the events whose pricing
dimensions match its `match` ("*" or a left-out key matches anything); the most specific matching rate wins.
Price fields hold decimals or formulas over the parameters; `compile_version` evaluates every formula once
and turns each rate into a price curve, which engine/tables.py compiles into the rating kernel's tables.
"""

from __future__ import annotations

import bisect
import decimal
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from engine.errors import FailedPrecondition, InvalidArgument, NotFound
from engine.formula import FormulaError, evaluate
from engine.instants import iso
from engine.money import DECIMAL_CONTEXT, MAGNITUDE_LIMIT, PLACES_MAX, format_decimal
from engine.products import Product

HOUR_MS = 3_600_000
WILDCARD = "*"
RATES_PER_VERSION_MAX = 10_000
PARAMETERS_PER_VERSION_MAX = 1_000
# Drafts a rate card holds unpublished: each is kept in memory and in every snapshot for ever (there is no deleting
# one), up to 16 MiB each, and a client retrying without request_id leaves one more each time. Checked when a
# command the server marked `drafts_bounded` is applied; commands journaled before the mark replay as they were.
DRAFTS_PER_RATE_CARD_MAX = 1_000
# Validation lists at most this many pairs of equally specific rates of a product that an event could match both
# (engine/ratecard.py _ambiguities), then says there are more: a version of 10,000 rates can hold 25,000,000.
AMBIGUITIES_MAX = 100
PRICE_QUANTUM = Decimal(1).scaleb(-PLACES_MAX)


class VersionState(enum.StrEnum):
    DRAFT = "DRAFT"
    PUBLISHED = "PUBLISHED"


class TierMode(enum.StrEnum):
    GRADUATED = "GRADUATED"
    VOLUME = "VOLUME"


class Tier(msgspec.Struct, frozen=True):
    up_to: str  # "" on the last, unbounded tier
    unit_price: str
    flat_price: str = ""


class UnitPrice(msgspec.Struct, frozen=True, tag="unit"):
    price: str
    per_units: str = ""


class TieredPrice(msgspec.Struct, frozen=True, tag="tiered"):
    mode: TierMode
    tiers: tuple[Tier, ...]
    per_units: str = ""


class PackagePrice(msgspec.Struct, frozen=True, tag="package"):
    package_size: str
    package_price: str


class FlatPrice(msgspec.Struct, frozen=True, tag="flat"):
    price: str


PriceSpec = UnitPrice | TieredPrice | PackagePrice | FlatPrice
RateKey = tuple[str, tuple[tuple[str, str], ...]]


def normalize_match(match: Mapping[str, str]) -> dict[str, str]:
    """Drops "*" entries: a left-out key and "*" mean the same."""
    return {key: value for key, value in sorted(match.items()) if value != WILDCARD}


class Rate(msgspec.Struct, frozen=True):
    product_id: str
    match: dict[str, str]  # normalized: no "*" values, keys sorted
    price: PriceSpec

    @property
    def key(self) -> RateKey:
        return rate_key(self.product_id, self.match)


def rate_key(product_id: str, match: Mapping[str, str]) -> RateKey:
    return (product_id, tuple(sorted(normalize_match(match).items())))


class Cohort(msgspec.Struct, frozen=True):
    customer_ids: tuple[str, ...] = ()
    attributes: dict[str, str] = {}
    customers_created_after_ms: int | None = None


class Version(msgspec.Struct):
    rate_card_id: str
    number: int
    state: VersionState
    based_on: int
    parameters: dict[str, str]
    rates: list[Rate]
    change_note: str
    created_at_ms: int
    created_by: str
    effective_from_ms: int | None = None
    published_at_ms: int | None = None
    cohort: Cohort | None = None
    # A copy made by RollbackRateCard: the version it copies (0: not a rollback), and the version in force at its
    # effective_from that it replaced.
    rollback_to: int = 0
    rollback_from: int = 0


class RateCard(msgspec.Struct):
    id: str
    name: str
    pricing_unit: str
    created_at_ms: int
    versions: list[Version] = []
    # (effective_from_ms, version number) of published versions, ascending: the timeline of prices.
    timeline: list[tuple[int, int]] = []
    # Hours (Unix ms // HOUR_MS) in which this card has priced usage: a version taking over one of them would
    # have to re-rate it. Versions start on hours, so hour buckets decide exactly.
    rated_hours: dict[int, None] = {}  # a dict, not a set: snapshot bytes keep one order

    def version(self, number: int) -> Version:
        if not 1 <= number <= len(self.versions):
            raise NotFound(f"rate card {self.id!r} has no version {number}")
        found = self.versions[number - 1]
        assert found.number == number
        return found

    def rated_hours_taken_over(self, effective_from_ms: int) -> list[int]:
        """Hours with rated usage that a version published now with this effective_from would price."""
        later = [start for start, _ in self.timeline if start > effective_from_ms]
        until_hour = min(later) // HOUR_MS if later else 2**62
        return sorted(h for h in self.rated_hours if effective_from_ms // HOUR_MS <= h < until_hour)

    def version_number_at(self, ts_ms: int) -> int | None:
        """The newest-effective published version in force at ts_ms for customers outside cohorts: versions
        published for a cohort are passed over (later publication wins a tie)."""
        index = bisect.bisect_right(self.timeline, ts_ms, key=lambda entry: entry[0])
        for _, number in reversed(self.timeline[:index]):
            if self.versions[number - 1].cohort is None:
                return number
        return None


# Findings -------------------------------------------------------------------------------------------------


class Severity(enum.StrEnum):
    ERROR = "ERROR"
    WARNING = "WARNING"


class Finding(msgspec.Struct, frozen=True):
    severity: Severity
    path: str
    message: str


# Price curves: every formula already evaluated; engine/tables.py compiles them into the kernel's integers ----


@dataclass(frozen=True, slots=True)
class UnitCurve:
    price: Decimal
    per_units: Decimal


@dataclass(frozen=True, slots=True)
class CurveTier:
    up_to: Decimal | None
    unit_price: Decimal
    flat_price: Decimal


@dataclass(frozen=True, slots=True)
class TieredCurve:
    mode: TierMode
    tiers: tuple[CurveTier, ...]
    per_units: Decimal


@dataclass(frozen=True, slots=True)
class PackageCurve:
    package_size: Decimal
    package_price: Decimal


@dataclass(frozen=True, slots=True)
class FlatCurve:
    price: Decimal


PriceCurve = UnitCurve | TieredCurve | PackageCurve | FlatCurve


@dataclass(frozen=True, slots=True)
class CompiledRate:
    rate_index: int
    product_id: str
    # (position in the product's pricing_dimensions, required value) for each non-"*" entry.
    required: tuple[tuple[int, str], ...]
    curve: PriceCurve


@dataclass(slots=True)
class CompiledVersion:
    rate_card_id: str
    number: int
    # product id -> its rates, most specific first.
    rates_by_product: dict[str, list[CompiledRate]]


# Drafts, validation, compilation ---------------------------------------------------------------------------


def make_draft(
    card: RateCard,
    *,
    based_on: int,
    set_parameters: Mapping[str, str],
    remove_parameters: Iterable[str],
    upsert_rates: Iterable[Rate],
    remove_rates: Iterable[RateKey],
    change_note: str,
    at_ms: int,
    actor: str,
) -> Version:
    """A new DRAFT: its base (or nothing) plus the changes. Raises InvalidArgument for a change that cannot apply."""
    parameters: dict[str, str] = {}
    rates: dict[RateKey, Rate] = {}
    if based_on:
        base = card.version(based_on)
        parameters = dict(base.parameters)
        rates = {rate.key: rate for rate in base.rates}
    violations: list[tuple[str, str]] = []
    for name in remove_parameters:
        if parameters.pop(name, None) is None:
            violations.append((f"remove_parameters[{name}]", "no such parameter in the base version"))
    for name, value in set_parameters.items():
        parameters[name] = value
    for index, key in enumerate(remove_rates):
        if rates.pop(key, None) is None:
            violations.append((f"remove_rates[{index}]", f"no rate for product {key[0]!r} with match {dict(key[1])}"))
    for rate in upsert_rates:
        normalized = Rate(rate.product_id, normalize_match(rate.match), rate.price)
        rates[normalized.key] = normalized
    if len(rates) > RATES_PER_VERSION_MAX:
        violations.append(("upsert_rates", f"a version holds at most {RATES_PER_VERSION_MAX} rates"))
    if len(parameters) > PARAMETERS_PER_VERSION_MAX:
        violations.append(("set_parameters", f"a version holds at most {PARAMETERS_PER_VERSION_MAX} parameters"))
    if violations:
        raise InvalidArgument(violations)
    return Version(
        rate_card_id=card.id,
        number=len(card.versions) + 1,
        state=VersionState.DRAFT,
        based_on=based_on,
        parameters=parameters,
        rates=list(rates.values()),
        change_note=change_note,
        created_at_ms=at_ms,
        created_by=actor,
    )


def validate(version: Version, products: Mapping[str, Product], *, rounded_in_range: bool = True) -> list[Finding]:
    """Every reason this version cannot price events, as findings with paths; empty when it can. `rounded_in_range`:
    a price field's value rounded to 18 places is held below 10^18 too (a value just below it can round up to it);
    False checks the value before rounding only, as publishes journaled before PublishVersion.prices_rounded_in_range
    were checked."""
    _, findings = _compile(version, products, rounded_in_range=rounded_in_range)
    if not version.rates:
        findings.append(Finding(Severity.WARNING, "rates", "the version has no rates: it prices nothing"))
    return findings


def compile_version(version: Version, products: Mapping[str, Product]) -> CompiledVersion:
    # The older check: a version published under it compiles as it did.
    compiled, findings = _compile(version, products, rounded_in_range=False)
    errors = [f for f in findings if f.severity is Severity.ERROR]
    assert not errors, f"only validated versions are compiled: {errors}"
    return compiled


def _compile(
    version: Version, products: Mapping[str, Product], *, rounded_in_range: bool
) -> tuple[CompiledVersion, list[Finding]]:
    findings: list[Finding] = []
    parameters: dict[str, Decimal] = {}
    for name, text in sorted(version.parameters.items()):
        if not name.isidentifier():
            findings.append(Finding(Severity.ERROR, f"parameters.{name}", "a parameter name must be an identifier"))
            continue
        try:
            parameters[name] = Decimal(text)
        except decimal.InvalidOperation:
            findings.append(Finding(Severity.ERROR, f"parameters.{name}", f"{text!r} is not a decimal"))
            continue
        if not parameters[name].is_finite():
            findings.append(Finding(Severity.ERROR, f"parameters.{name}", f"{text!r} is not finite"))
    by_product: dict[str, list[CompiledRate]] = {}
    seen: set[RateKey] = set()
    for index, rate in enumerate(version.rates):
        path = f"rates[{index}]"
        product = products.get(rate.product_id)
        if product is None:
            findings.append(Finding(Severity.ERROR, f"{path}.product_id", f"unknown product {rate.product_id!r}"))
            continue
        if rate.key in seen:
            findings.append(Finding(Severity.ERROR, path, "a second rate with the same product and match"))
            continue
        seen.add(rate.key)
        required: list[tuple[int, str]] = []
        for key, value in rate.match.items():
            if key not in product.pricing_dimensions:
                findings.append(
                    Finding(
                        Severity.ERROR,
                        f"{path}.match.{key}",
                        f"{key!r} is not a pricing dimension of {product.id!r} ({list(product.pricing_dimensions)})",
                    )
                )
            else:
                required.append((product.pricing_dimensions.index(key), value))
        curve = _curve(rate.price, parameters, path, findings, rounded_in_range=rounded_in_range)
        if curve is not None and len(required) == len(rate.match):
            by_product.setdefault(rate.product_id, []).append(
                CompiledRate(index, rate.product_id, tuple(required), curve)
            )
    for product_id, rates in by_product.items():
        rates.sort(key=lambda r: (-len(r.required), r.rate_index))
        findings.extend(_ambiguities(product_id, rates, version.rates))
    return CompiledVersion(version.rate_card_id, version.number, by_product), findings


def _ambiguities(product_id: str, rates: list[CompiledRate], source: list[Rate]) -> list[Finding]:
    """Two equally specific rates that one possible event matches, with no more specific rate to decide: the pairs
    in the order of `rates` (each rate with those after it), at most AMBIGUITIES_MAX of them, then one finding
    saying there are more.

    Every pair was compared, and every ambiguous one listed: a version of 10,000 rates (RATES_PER_VERSION_MAX)
    took 72 s to validate on the event loop, at each ValidateVersion and twice at a publish, and one with 5,000
    rates on one dimension and 5,000 on another lists 25,000,000 pairs (gigabytes). Two rates naming the same
    dimensions differ in a value (equal ones are one rate: a second is refused before this), so no event matches
    both: only rates naming other dimensions are compared, found through an index of each group of rates naming
    the same dimensions by their values of the dimensions the two name both."""
    findings: list[Finding] = []
    exact = {tuple(sorted(r.required)) for r in rates}
    groups: dict[frozenset[int], list[int]] = {}
    for at, rate in enumerate(rates):
        groups.setdefault(frozenset(position for position, _ in rate.required), []).append(at)
    indexes: dict[tuple[frozenset[int], tuple[int, ...]], dict[tuple[str, ...], list[int]]] = {}
    for at, a in enumerate(rates):
        named = frozenset(position for position, _ in a.required)
        values = dict(a.required)
        later: list[int] = []
        for other, members in groups.items():
            if other == named or len(other) != len(named) or members[-1] <= at:
                continue
            shared = tuple(sorted(named & other))
            index = indexes.get((other, shared))
            if index is None:
                index = {}
                for member in members:
                    member_values = dict(rates[member].required)
                    index.setdefault(tuple(member_values[position] for position in shared), []).append(member)
                indexes[(other, shared)] = index
            later.extend(member for member in index.get(tuple(values[p] for p in shared), ()) if member > at)
        for b in (rates[member] for member in sorted(later)):
            merged = {**values, **dict(b.required)}
            if tuple(sorted(merged.items())) in exact:
                continue
            if len(findings) == AMBIGUITIES_MAX:
                findings.append(_more_ambiguities(product_id, b.rate_index))
                return findings
            findings.append(
                Finding(
                    Severity.ERROR,
                    f"rates[{b.rate_index}].match",
                    f"as specific as rates[{a.rate_index}] for product {product_id!r}: an event matching "
                    f"{ {**source[a.rate_index].match, **source[b.rate_index].match} } would match both; "
                    "add a rate for that combination or make one of them more specific",
                )
            )
    return findings


def _more_ambiguities(product_id: str, rate_index: int) -> Finding:
    return Finding(
        Severity.ERROR,
        f"rates[{rate_index}].match",
        f"more rates of product {product_id!r} are as specific as others an event could match too: the first "
        f"{AMBIGUITIES_MAX} such pairs are listed",
    )


def _is_literal(text: str) -> bool:
    """Whether a price field is a plain decimal rather than a formula."""
    try:
        Decimal(text.strip())
    except decimal.InvalidOperation:
        return False
    return True


def _price_field(
    text: str,
    field_path: str,
    parameters: Mapping[str, Decimal],
    findings: list[Finding],
    *,
    default: str | None = None,
    positive: bool = False,
    rounded_in_range: bool = True,
) -> Decimal:
    """One price field's value, evaluated and checked (at most 18 places, below 10^18); problems go to `findings`."""
    if not text.strip() and default is not None:
        text = default
    try:
        value = evaluate(text, parameters)
    except FormulaError as exc:
        findings.append(Finding(Severity.ERROR, field_path, f"{text!r} {exc}"))
        return Decimal(1)
    if value.copy_abs() >= MAGNITUDE_LIMIT:  # exact: abs() would round to the thread's context (28 digits)
        findings.append(
            Finding(Severity.ERROR, field_path, f"{text!r} = {value} is out of range (must be below 10^18)")
        )
        return Decimal(1)
    rounded = value.quantize(PRICE_QUANTUM, rounding=decimal.ROUND_HALF_EVEN, context=DECIMAL_CONTEXT)
    if rounded != value and _is_literal(text):
        findings.append(
            Finding(
                Severity.ERROR,
                field_path,
                f"{text!r} has more than {PLACES_MAX} decimal places: prices are held at 10^-{PLACES_MAX} exactly",
            )
        )
        return Decimal(1)
    if rounded_in_range and rounded.copy_abs() >= MAGNITUDE_LIMIT:
        findings.append(
            Finding(
                Severity.ERROR,
                field_path,
                f"{text!r} = {value} rounds to {format_decimal(rounded)} at {PLACES_MAX} places: out of range (must be"
                " below 10^18)",
            )
        )
        return Decimal(1)
    # A division need not terminate (1 / 3): a formula's price is rounded half-even to 18 places, once, here.
    value = rounded
    if value < 0 or (positive and value == 0):
        findings.append(
            Finding(
                Severity.ERROR,
                field_path,
                f"{text!r} = {format_decimal(value)} must be {'> 0' if positive else '>= 0'}",
            )
        )
    return value


def _curve(
    price: PriceSpec, parameters: Mapping[str, Decimal], path: str, findings: list[Finding], *, rounded_in_range: bool
) -> PriceCurve | None:
    errors_before = len(findings)

    def amount(text: str, field_path: str, *, default: str | None = None, positive: bool = False) -> Decimal:
        return _price_field(
            text,
            field_path,
            parameters,
            findings,
            default=default,
            positive=positive,
            rounded_in_range=rounded_in_range,
        )

    curve: PriceCurve
    match price:
        case UnitPrice():
            curve = UnitCurve(
                amount(price.price, f"{path}.unit.price"),
                amount(price.per_units, f"{path}.unit.per_units", default="1", positive=True),
            )
        case TieredPrice():
            tiers: list[CurveTier] = []
            if not price.tiers:
                findings.append(Finding(Severity.ERROR, f"{path}.tiered.tiers", "at least one tier is required"))
            for position, tier in enumerate(price.tiers):
                tier_path = f"{path}.tiered.tiers[{position}]"
                last = position == len(price.tiers) - 1
                up_to: Decimal | None = None
                if tier.up_to.strip():
                    up_to = amount(tier.up_to, f"{tier_path}.up_to", positive=True)
                    if tiers and tiers[-1].up_to is not None and up_to <= tiers[-1].up_to:
                        findings.append(Finding(Severity.ERROR, f"{tier_path}.up_to", "tiers must ascend"))
                elif not last:
                    findings.append(Finding(Severity.ERROR, f"{tier_path}.up_to", "only the last tier is unbounded"))
                tiers.append(
                    CurveTier(
                        up_to,
                        amount(tier.unit_price, f"{tier_path}.unit_price", default="0"),
                        amount(tier.flat_price, f"{tier_path}.flat_price", default="0"),
                    )
                )
            if tiers and tiers[-1].up_to is not None:
                findings.append(Finding(Severity.ERROR, f"{path}.tiered.tiers", "the last tier must be unbounded"))
            mode = price.mode
            curve = TieredCurve(
                mode, tuple(tiers), amount(price.per_units, f"{path}.tiered.per_units", default="1", positive=True)
            )
        case PackagePrice():
            curve = PackageCurve(
                amount(price.package_size, f"{path}.package.package_size", positive=True),
                amount(price.package_price, f"{path}.package.package_price"),
            )
        case FlatPrice():
            curve = FlatCurve(amount(price.price, f"{path}.flat.price"))
    return curve if len(findings) == errors_before else None


def check_publishable(version: Version, effective_from_ms: int) -> None:
    if version.state is not VersionState.DRAFT:
        assert version.effective_from_ms is not None, "a published version has the hour it took effect"
        raise FailedPrecondition(
            f"version {version.number} of {version.rate_card_id!r} is already published, effective from "
            f"{iso(version.effective_from_ms)}: publishing it again must ask for that effective_from, or none"
        )
    if effective_from_ms % HOUR_MS:
        raise InvalidArgument.field("effective_from", "must be on an hour boundary (UTC)")


def price_field_value(
    text: str, parameters: Mapping[str, Decimal], *, default: str | None = None, positive: bool = False
) -> tuple[Decimal | None, str]:
    """One price field's value as validation computes it (DiffVersions shows it), or None and why it has none."""
    findings: list[Finding] = []
    value = _price_field(text, "", parameters, findings, default=default, positive=positive)
    if findings:
        return None, findings[0].message
    return value, ""
