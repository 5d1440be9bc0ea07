"""A real server process against the hand-written oracle (tests/reference_billing.py), over the wire.

tests/test_kernel_differential.py feeds the kernel tables the control plane compiled in-process; this test goes
through the admin RPCs instead, as a client would, so that a defect in how the server reads requests and compiles
its tables shows. Each generated world is the kernel test's catalogue (every aggregation and price model, filters,
a model=m1 rate, an override per product) and events, plus: UNIT prices with 18 decimal places and formulas over
parameters; a second version based on the first (new rates, removed ones, parameters set again) effective from a
later hour; more overrides (on model=m1, replacing earlier ones, in force for a window of time); PROMOTIONAL and
PREPAID grants with 12 decimal places, expiring long ago (the server breaks them at its next AdvanceClock) or in
the future; a top-up policy; holds, some released. Requests write decimals plainly or with exponents, and leave
fields to their documented defaults or not. Usage goes over IngestUsageBatch and the IngestUsage stream
(identical resends, conflicts, invalid and extreme values, events before the contract, in the future, of an
unknown customer, naming holds); every ack (outcomes, reasons, notices), GetBalance, each billed period's
PreviewInvoice (lines, totals, grant balances) and an Authorize must equal what the oracle computes, exactly.

Half the worlds are spread over several billing periods instead (`spreads`): the contract starts 40 to 70 days
before now on a day other than the 1st (the 28th to the 31st clamp to shorter months' ends; sometimes off the
hour), the events are dated across its periods up to now (some at a boundary or a millisecond before one),
grants start at later periods and expire at period ends (past ones, so broken before any usage arrives, or the
running period's, in the future, which its draft already shows as expired) or across them, and between
batches a period that has ended is closed: ClosePeriod's invoice must equal the oracle's invoice of the period
then, its events are PERIOD_CLOSED from then on, and at the end GetInvoice, PreviewInvoice and ClosePeriod
again answer it unchanged, while ClosePeriod of the running period or of an instant inside a period is refused
as documented.

Half the worlds also end their contract (EndContract, up to 4 times, between batches): at ends drawn from now (a
retroactive one, one a moment ahead), from the coming hour boundaries (on them and off them), from the timestamps
of usage sent ahead of the clock (the server runs with --future-skew-s 3600: a millisecond before, at, after one,
its hour, the next hour) or the end the contract has (a retry), some after the end held has passed. Each answer
(taken, a retry, or INVALID_ARGUMENT / FAILED_PRECONDITION for the documented cause, the usage refusal naming the
latest hour the oracle has usage in) and the end GetContract shows must be the oracle's, for any instant between
the moments before and after the call; usage dated at or after the end is NO_ACTIVE_CONTRACT, and GetBalance has no
current period once the contract has ended. Not modelled: rollover grants, retroactive publishes.

One server for the module; every example uses ids, event types, transaction and reservation ids of its own
prefix, so that no example sees another's. Short budget by default; TARIFF_WIRE_EXAMPLES raises it (make soak).
"""

from __future__ import annotations

import calendar
import dataclasses
import decimal
import itertools
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import grpc
import pytest
from google.protobuf import timestamp_pb2
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from tariff import TariffClient, TariffError
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.contract_ends import EndStep, end_at, end_steps
from tests.engine_fixtures import EPOCH_MS, HOUR_MS
from tests.reference_billing import (
    RATING,
    Curve,
    Period,
    ReferenceCredits,
    REvent,
    ROverride,
    RRate,
    RTopUp,
    anchored_period,
    anchored_period_start_ms,
    round_pico,
)
from tests.serverproc import ServerProcess
from tests.test_kernel_differential import (
    DAY_MS,
    PICOS,
    GrantSpec,
    ProductSpec,
    curves,
    decimals,
    events,
    oracle_catalogue,
    oracle_grants,
    products,
)

EXAMPLES = int(os.environ.get("TARIFF_WIRE_EXAMPLES", "40"))
PROFILE = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
# A grant expiry long past when the test runs (the server breaks what the grant holds at its next AdvanceClock),
# and one long after it.
PAST_EXPIRY_MS = EPOCH_MS + 20 * DAY_MS
FUTURE_EXPIRY_MS = int(datetime(2099, 1, 1, tzinfo=UTC).timestamp()) * 1000
MINOR = Decimal("0.01")  # USD's minor unit
# The server's --future-skew-s: "soon" events, up to 51 minutes ahead, are taken (and may lie after an end
# requested now); "future" ones, two hours ahead, are not.
FUTURE_SKEW_MS = HOUR_MS
_EXAMPLE_NUMBERS = itertools.count()


@dataclass(frozen=True)
class WireEvent:
    """One of the kernel test's events, and when it is dated: "" as generated (January and February 2026),
    "recent" (minutes before it is sent: the current period), "soon" (1 to 51 minutes after it is sent: ahead of
    the clock, within the server's --future-skew-s, so that a contract's end can come before, at or after it) or
    "future" (two hours after: out of range)."""

    event: REvent
    when: str


@dataclass(frozen=True)
class Hold:
    """Authorize(reserve=true) of this usage at the time it is made, for an hour; released at once, or not."""

    reservation_id: str
    usage: REvent
    release: bool


@dataclass(frozen=True)
class TopUp:
    threshold: Decimal
    recharge_to: Decimal
    price_per_credit: Decimal
    max_per_period: int


@dataclass(frozen=True)
class Override:
    product_id: str
    match: tuple[tuple[str, str], ...]
    kind: str  # "price" or "multiplier"
    value: Decimal
    starting_at_ms: int | None = None
    ending_before_ms: int | None = None


@dataclass(frozen=True)
class SecondVersion:
    """Version 2, a draft based on version 1, published effective from an hour after the first's (before any
    usage is sent, so nothing is re-rated)."""

    effective_from_ms: int
    upserts: tuple[tuple[str, Curve], ...]  # new default rates
    removed: tuple[str, ...]  # products whose model=m1 rate is removed
    parameters: tuple[tuple[str, Decimal], ...]  # set again: formulas kept from version 1 evaluate with these


@dataclass(frozen=True)
class WireScenario:
    products: tuple[ProductSpec, ...]
    block: bool
    overage_price: Decimal
    # After each product's own: added in this order.
    overrides: tuple[Override, ...]
    grants: tuple[GrantSpec, ...]
    paid: tuple[Decimal | None, ...]  # per grant: PREPAID at this paid_amount, or PROMOTIONAL
    exponent: bool  # decimal strings written with an exponent ("1.25e-3") rather than plainly
    # Fields left to their documented defaults where a value equals them (per_units 1, a tier's fees 0,
    # overage_price 1, ALLOW, USD, a grant's starts_at at its contract's start and contract_id when customer_id
    # names the customer), and rate keys written with "*" entries.
    defaults: bool
    parameters: tuple[tuple[str, Decimal], ...]  # the version's
    formulas: tuple[tuple[str, str], ...]  # (product id, formula its default UNIT rate's price is written as)
    top_up: TopUp | None
    second: SecondVersion | None
    holds: tuple[Hold, ...]  # made (and some released) before any usage is sent
    # When the server is killed (-9) and restarted on its data, so that the rest is compared after a replay of
    # the journal (every example's so far): "", "setup" (before usage) or "usage" (before the reads).
    crash: str
    batches: tuple[tuple[WireEvent, ...], ...]
    streamed: tuple[bool, ...]  # per batch: sent on the IngestUsage stream rather than IngestUsageBatch
    probe: REvent
    # Where the contract starts: EPOCH_MS (calendar months, every period long past), or for a world spread over
    # the periods before now (see `spread_worlds`) a day other than the 1st, some 40 to 70 days ago.
    contract_start_ms: int = EPOCH_MS
    anchored: bool = False
    # Per batch: the start of a period that has ended, closed (ClosePeriod) right after the batch's ack, or None.
    closes: tuple[int | None, ...] = ()
    # EndContract of the contract, in order, each before the batch it names (after the last: len(batches)).
    ends: tuple[EndStep, ...] = ()


@st.composite
def fine_prices(draw: st.DrawFn, spec: ProductSpec) -> ProductSpec:
    """Sometimes a UNIT price with all 18 decimal places the grammar allows, per a large per_units."""
    if draw(st.integers(0, 3)) != 0:
        return spec
    price = draw(decimals(0, 9, 18))
    per_units = draw(st.sampled_from([Decimal(1), Decimal(1_000_000), Decimal("0.000001")]))
    return dataclasses.replace(spec, curve=Curve("UNIT", price=price, per_units=per_units))


FORMULAS = {
    "pa * pb": lambda a, b: RATING.multiply(a, b),
    "pa / pb": lambda a, b: RATING.divide(a, b),
    "round(pa * pb, 3)": lambda a, b: RATING.multiply(a, b).quantize(
        Decimal("0.001"), rounding=decimal.ROUND_HALF_EVEN
    ),
    "max(pa, pb) - min(pa, pb) / 7": lambda a, b: RATING.subtract(max(a, b), RATING.divide(min(a, b), 7)),
}


@st.composite
def with_formulas(
    draw: st.DrawFn, catalogue: tuple[ProductSpec, ...]
) -> tuple[tuple[ProductSpec, ...], tuple[tuple[str, Decimal], ...], tuple[tuple[str, str], ...]]:
    """Some UNIT default rates priced by a formula over two parameters: the catalogue with the price the formula
    comes to (rounded half-even to 18 places, as engine/ratecard.py holds a formula's price), and the formulas."""
    pa, pb = draw(decimals(0, 10, 6)), draw(decimals(1, 1000, 3))
    specs, formulas = [], []
    for spec in catalogue:
        formula = draw(st.none() | st.sampled_from(sorted(FORMULAS))) if spec.curve.model == "UNIT" else None
        if formula is not None:
            price = FORMULAS[formula](pa, pb).quantize(Decimal(1).scaleb(-18), rounding=decimal.ROUND_HALF_EVEN)
            spec = dataclasses.replace(spec, curve=dataclasses.replace(spec.curve, price=price))
            formulas.append((spec.id, formula))
        specs.append(spec)
    return tuple(specs), (("pa", pa), ("pb", pb)), tuple(formulas)


@st.composite
def second_versions(draw: st.DrawFn, catalogue: tuple[ProductSpec, ...]) -> SecondVersion:
    upserted = draw(st.sets(st.sampled_from([p.id for p in catalogue])))
    removable = [p.id for p in catalogue if p.specific is not None]
    return SecondVersion(
        effective_from_ms=EPOCH_MS + draw(st.sampled_from([0, 1, 24 * 12, 24 * 31 + 5, 24 * 40])) * HOUR_MS,
        upserts=tuple((product_id, draw(curves())) for product_id in sorted(upserted)),
        removed=tuple(sorted(draw(st.sets(st.sampled_from(removable)))) if removable else ()),
        parameters=draw(st.sampled_from([(), (("pa", Decimal("0.5")),), (("pa", Decimal(7)), ("pb", Decimal(3)))])),
    )


@st.composite
def top_ups(draw: st.DrawFn) -> TopUp:
    threshold = draw(st.one_of(decimals(1, 500, 2), decimals(1, 5, 12)))
    recharge_to = threshold + draw(st.one_of(decimals(1, 100, 3), decimals(1, 2, 12)))
    price = draw(st.sampled_from([Decimal(1), Decimal("0.9"), Decimal("0.0125"), Decimal("1.000000000000000001")]))
    return TopUp(threshold, recharge_to, price, draw(st.integers(1, 3)))


WINDOWS = [(None, None), (None, None), (EPOCH_MS + 15 * DAY_MS, None), (None, EPOCH_MS + 15 * DAY_MS)]
WINDOWS += [(EPOCH_MS + 5 * DAY_MS + HOUR_MS, EPOCH_MS + 35 * DAY_MS + 7 * HOUR_MS)]


@st.composite
def more_overrides(draw: st.DrawFn, catalogue: tuple[ProductSpec, ...]) -> tuple[Override, ...]:
    """Overrides beyond each product's own: some on model=m1 only (more specific), some replacing an earlier,
    some in force for a window of time only."""
    made = []
    for _ in range(draw(st.integers(0, 3))):
        product = draw(st.sampled_from(catalogue))
        match = draw(st.sampled_from([(), (("model", "m1"),)])) if "model" in product.dimensions else ()
        kind = draw(st.sampled_from(["price", "multiplier"]))
        value = draw(decimals(0, 20, 3) if kind == "price" else decimals(0, 3, 6))
        made.append(Override(product.id, match, kind, value, *draw(st.sampled_from(WINDOWS))))
    return tuple(made)


# The model the kernel test's events call m2, as this example names it: line ids escape %, ;, = and what is not
# printable ASCII.
OTHER_MODELS = ["m2", "m2", "café", "a;b=c%d", "m 2", "日本"]


def renamed(usage: REvent, model: str) -> REvent:
    dimensions = tuple((k, model if (k, v) == ("model", "m2") else v) for k, v in usage.dimensions)
    return dataclasses.replace(usage, dimensions=dimensions)


@st.composite
def wire_events(draw: st.DrawFn, index: int, model: str) -> WireEvent:
    when = draw(st.sampled_from(["", "", "", "", "", "", "recent", "soon", "soon", "future"]))
    usage = renamed(draw(events(index)), model)
    # Some settle a hold (r0, r1), or name one never made (r9).
    reservation_id = draw(st.sampled_from(["", "", "", "", "", "r0", "r1", "r9"]))
    return WireEvent(dataclasses.replace(usage, reservation_id=reservation_id), when)


@st.composite
def holds(draw: st.DrawFn, model: str) -> tuple[Hold, ...]:
    made = []
    for n in range(draw(st.integers(0, 2))):
        usage = renamed(draw(events(0)), model)
        values = (("a", float(draw(st.integers(0, 500)))), ("b", draw(st.sampled_from([0.5, 12.0]))))
        usage = REvent(f"hold{n}", "acme", usage.event_type, 0, usage.dimensions, values)
        made.append(Hold(f"r{n}", usage, draw(st.integers(0, 3)) == 0))
    return tuple(made)


@dataclass(frozen=True)
class Spread:
    """A world spread over the periods before now: a contract anchored on `start_ms` (a day other than the
    1st), its period starts up to the one holding now, and now as the world was drawn."""

    start_ms: int
    starts: tuple[int, ...]
    now_ms: int

    @property
    def current_end_ms(self) -> int:
        return anchored_period_start_ms(self.start_ms, len(self.starts))

    def ended(self) -> list[int]:
        """The starts of the periods that have ended (their end is at least a minute ago)."""
        return [s for n, s in enumerate(self.starts) if anchored_period_start_ms(self.start_ms, n + 1) < self.now_ms]


@st.composite
def spreads(draw: st.DrawFn) -> Spread:
    now = now_ms()
    day = draw(st.sampled_from([2, 15, 28, 29, 30, 31]))
    hour = draw(st.sampled_from([0, 9, 23]))
    # Mostly on the hour; else off it (its boundary hours then count in the earlier period's version parts only,
    # which this test does not read: the lines themselves are rated event by event, exactly).
    minute, millisecond = draw(st.sampled_from([(0, 0), (0, 0), (0, 0), (30, 0), (59, 999)]))
    latest = datetime.fromtimestamp((now - draw(st.sampled_from([40, 55, 70])) * DAY_MS) / 1000, tz=UTC)
    index = latest.year * 12 + latest.month - 1
    while True:  # the latest such instant of a month that has the day, at or before `latest`
        year, month = index // 12, index % 12 + 1
        if day <= calendar.monthrange(year, month)[1]:
            start = datetime(year, month, day, hour, minute, 59 if millisecond else 0, tzinfo=UTC)
            if start <= latest:
                break
        index -= 1
    start_ms = int(start.timestamp()) * 1000 + millisecond
    starts: list[int] = []
    while anchored_period_start_ms(start_ms, len(starts)) <= now:
        starts.append(anchored_period_start_ms(start_ms, len(starts)))
    return Spread(start_ms, tuple(starts), now)


def spread_event(draw: st.DrawFn, spread: Spread, wire: WireEvent) -> WireEvent:
    """A kernel test's event (dated from an hour before EPOCH_MS to 45 days after) dated as far into the spread
    (from its contract's start to ten minutes ago), or at a period boundary or a millisecond before one; one
    dated before EPOCH_MS as far before the contract."""
    if wire.when:
        return wire
    offset = wire.event.timestamp_ms - EPOCH_MS
    last_ms = spread.now_ms - 10 * 60_000
    if offset < 0:
        at_ms = spread.start_ms + offset
    elif draw(st.integers(0, 4)) == 0 and len(spread.starts) > 1:
        at_ms = draw(st.sampled_from(spread.starts[1:])) - draw(st.sampled_from([0, 1]))
    else:
        at_ms = spread.start_ms + offset * (last_ms - spread.start_ms) // (45 * DAY_MS)
    return WireEvent(dataclasses.replace(wire.event, timestamp_ms=at_ms), "")


def spread_grant(draw: st.DrawFn, spread: Spread, grant: GrantSpec) -> GrantSpec:
    """Starting at the contract's start or a later period's (or days into it), expiring at a period end (past:
    broken before any usage arrives; the current period's: in the future), across one, or never."""
    starts = [spread.start_ms, *spread.starts[1:]]
    starts_at = draw(st.sampled_from(starts)) + draw(st.sampled_from([0, 0, 3 * DAY_MS]))
    ends = [*spread.starts[1:], spread.current_end_ms]
    expires_at = draw(st.sampled_from([None, FUTURE_EXPIRY_MS, *ends, ends[-1], spread.current_end_ms + 5 * DAY_MS]))
    if expires_at is not None and expires_at <= starts_at:
        expires_at = None
    return dataclasses.replace(grant, starts_at_ms=min(starts_at, spread.now_ms), expires_at_ms=expires_at)


@st.composite
def wire_scenarios(draw: st.DrawFn) -> WireScenario:
    scenario = draw(calendar_scenarios())
    if draw(st.booleans()):
        return scenario
    spread = draw(spreads())
    batches = tuple(tuple(spread_event(draw, spread, e) for e in batch) for batch in scenario.batches)
    grants = tuple(spread_grant(draw, spread, g) for g in scenario.grants)
    second = scenario.second
    if second is not None:
        hours = (second.effective_from_ms - EPOCH_MS) // HOUR_MS
        effective_from_ms = (spread.start_ms + hours * HOUR_MS) // HOUR_MS * HOUR_MS  # on the hour, as it must be
        second = dataclasses.replace(second, effective_from_ms=effective_from_ms)
    closes = tuple(
        draw(st.none() | st.none() | st.sampled_from(ends)) if ends else None for ends in closable(spread, batches)
    )
    return dataclasses.replace(
        scenario,
        grants=grants,
        batches=batches,
        second=second,
        contract_start_ms=spread.start_ms,
        anchored=True,
        closes=closes,
    )


def closable(spread: Spread, batches: tuple[tuple[WireEvent, ...], ...]) -> list[list[int]]:
    """Per batch, the ended periods that may be closed after it: those later batches have events in, mostly (so
    that they are PERIOD_CLOSED), and any."""
    ended = spread.ended()
    made = []
    for n in range(len(batches)):
        later = [e.event.timestamp_ms for batch in batches[n + 1 :] for e in batch if not e.when]
        starts = {anchored_period(spread.start_ms, ts)[1] for ts in later if ts >= spread.start_ms}
        made.append([*sorted(starts & set(ended)) * 3, *ended])
    return made


@st.composite
def calendar_scenarios(draw: st.DrawFn) -> WireScenario:
    catalogue, parameters, formulas = draw(with_formulas(tuple(draw(fine_prices(p)) for p in draw(products()))))
    ids = [p.id for p in catalogue]
    amounts = st.one_of(decimals(1, 300, 2), decimals(0, 40, 12).filter(lambda d: d > 0))
    grants = tuple(
        GrantSpec(
            id=f"g{n}",
            amount=draw(amounts),
            priority=draw(st.integers(0, 2)),
            products=tuple(sorted(draw(st.sets(st.sampled_from(ids), max_size=2)))),
            starts_at_ms=EPOCH_MS + draw(st.sampled_from([0, 0, 10 * DAY_MS])),
            expires_at_ms=draw(st.sampled_from([None, None, PAST_EXPIRY_MS, FUTURE_EXPIRY_MS])),
        )
        for n in range(draw(st.integers(0, 3)))
    )
    model = draw(st.sampled_from(OTHER_MODELS))
    all_events = [draw(wire_events(i, model)) for i in range(draw(st.integers(1, 25)))]
    for _ in range(draw(st.integers(0, 3))):  # resends: identical, or naming another reservation (a conflict)
        resent = all_events[draw(st.integers(0, len(all_events) - 1))]
        if draw(st.integers(0, 3)) == 0:
            other = "r1" if resent.event.reservation_id != "r1" else ""
            resent = WireEvent(dataclasses.replace(resent.event, reservation_id=other), resent.when)
        all_events.append(resent)
    cuts = sorted(draw(st.sets(st.integers(1, max(1, len(all_events) - 1)), max_size=3)))
    batches = tuple(tuple(all_events[a:b]) for a, b in zip([0, *cuts], [*cuts, len(all_events)], strict=True) if a < b)
    probe = renamed(draw(events(0)), model)
    probe = REvent("probe", "acme", probe.event_type, 0, probe.dimensions, (("a", 3.0), ("b", 7.5)))
    return WireScenario(
        products=catalogue,
        block=draw(st.booleans()),
        overage_price=draw(st.sampled_from([Decimal(1), Decimal("0.5"), Decimal("1.25"), Decimal("0.003")])),
        overrides=draw(more_overrides(catalogue)),
        grants=grants,
        paid=tuple(draw(st.none() | decimals(0, 500, 2) | decimals(0, 9, 12)) for _ in grants),
        exponent=draw(st.booleans()),
        defaults=draw(st.booleans()),
        parameters=parameters,
        formulas=formulas,
        top_up=draw(st.none() | top_ups()),
        second=draw(st.none() | second_versions(catalogue)),
        holds=draw(holds(model)),
        crash=draw(st.sampled_from([""] * 10 + ["setup", "usage"])),
        batches=batches,
        ends=draw(end_steps(len(batches))),
        streamed=tuple(draw(st.booleans()) for _ in batches),
        probe=probe,
    )


MINUTE_MS = 60_000


# Writing the world over the wire ----------------------------------------------------------------------------------


# How requests are written (see WireScenario.exponent and .defaults): set per example (hypothesis runs one
# example at a time).
SPELLING = {"exponent": False, "defaults": False}


def text(value: Decimal) -> str:
    """A decimal string as the grammar allows it, trailing zeros kept: "12.5000", or with an exponent (alternately
    'e' and 'E'), "1.25000e1", when the example says so."""
    if not SPELLING["exponent"]:
        return format(value, "f")
    sign, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    power = exponent + len(digits) - 1
    return f"{'-' if sign else ''}{mantissa}{'E' if power % 2 else 'e'}{power}"


def field(value: Decimal, default: int) -> str:
    """The field's text, or "" (its documented default) when the example leaves defaults out and it equals it."""
    return "" if SPELLING["defaults"] and value == default else text(value)


def key(product: ProductSpec, match: dict[str, str]) -> dict[str, str]:
    """A rate key's match, with "*" for every other pricing dimension when the example writes them."""
    if not SPELLING["defaults"]:
        return match
    return {d: match.get(d, "*") for d in product.dimensions if d in ("model", "region")}


def stamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=ms % 1000 * 1_000_000)


def wire_rate(product_id: str, curve: Curve, match: dict[str, str]) -> pricing_pb2.Rate:
    rate = pricing_pb2.Rate(product_id=product_id, match=match)
    match curve.model:
        case "UNIT":
            rate.unit.CopyFrom(pricing_pb2.UnitPrice(price=text(curve.price), per_units=field(curve.per_units, 1)))
        case "PACKAGE":
            rate.package.CopyFrom(
                pricing_pb2.PackagePrice(package_size=text(curve.size), package_price=text(curve.price))
            )
        case "FLAT":
            rate.flat.CopyFrom(pricing_pb2.FlatPrice(price=text(curve.price)))
        case _:
            tiers = [
                pricing_pb2.Tier(
                    up_to="" if up is None else text(up), unit_price=field(price, 0), flat_price=field(fee, 0)
                )
                for up, price, fee in curve.tiers
            ]
            mode = pricing_pb2.VOLUME if curve.model == "VOLUME" else pricing_pb2.GRADUATED
            tiered = pricing_pb2.TieredPrice(mode=mode, tiers=tiers, per_units=field(curve.per_units, 1))
            rate.tiered.CopyFrom(tiered)
    return rate


@dataclass(frozen=True)
class Names:
    """The example's own ids: the oracle's names, prefixed."""

    prefix: str

    def __call__(self, name: str) -> str:
        return f"{self.prefix}{name}"

    def strip(self, name: str) -> str:
        """The oracle's name for an id of the example; one the server made (a top-up grant's) as it is."""
        return name[len(self.prefix) :] if name.startswith(self.prefix) else name


def create_catalogue(client: TariffClient, scenario: WireScenario, names: Names) -> None:
    for p in scenario.products:
        product = pricing_pb2.Product(
            id=names(p.id),
            event_type=names(p.event_type),
            aggregation=p.aggregation.value,
            value_key=p.value_key,
            filters=dict(p.filters),
            pricing_dimensions=list(p.dimensions),
        )
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    card = names("card")
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
    rates = [wire_rate(names(p.id), p.curve, key(p, {})) for p in scenario.products]
    for rate, p in zip(rates, scenario.products, strict=True):
        if p.id in dict(scenario.formulas):
            rate.unit.price = dict(scenario.formulas)[p.id]
    rates += [wire_rate(names(p.id), p.specific, key(p, {"model": "m1"})) for p in scenario.products if p.specific]
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=card, upsert_rates=rates, set_parameters={k: text(v) for k, v in scenario.parameters}
        )
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card, version=draft.version, effective_from=stamp(EPOCH_MS))
    )
    if scenario.second is not None:
        publish_second(client, scenario, names)


def publish_second(client: TariffClient, scenario: WireScenario, names: Names) -> None:
    card = names("card")
    second = scenario.second
    assert second is not None
    product = {p.id: p for p in scenario.products}
    request = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=card,
        based_on_version=1,
        upsert_rates=[wire_rate(names(p), curve, key(product[p], {})) for p, curve in second.upserts],
        remove_rates=[
            pricing_pb2.RateKey(product_id=names(p), match=key(product[p], {"model": "m1"})) for p in second.removed
        ],
        set_parameters={k: text(v) for k, v in second.parameters},
    )
    draft = client.pricing.CreateDraftVersion(request)
    assert draft.version == 2
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card, version=2, effective_from=stamp(second.effective_from_ms))
    )


def all_overrides(scenario: WireScenario) -> list[Override]:
    """Each product's own override (the kernel test's), then the scenario's others, in the order they are added."""
    own = [Override(p.id, (), p.override[0], p.override[1]) for p in scenario.products if p.override is not None]
    return [*own, *scenario.overrides]


def create_contract(client: TariffClient, scenario: WireScenario, names: Names) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=names("acme"), name="acme"))
    allow = contracts_pb2.OVERAGE_POLICY_UNSPECIFIED if scenario.defaults else contracts_pb2.ALLOW
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=names("k"),
            customer_id=names("acme"),
            rate_card_id=names("card"),
            starting_at=stamp(scenario.contract_start_ms),
            overage_policy=contracts_pb2.BLOCK if scenario.block else allow,
            overage_price=field(scenario.overage_price, 1),
            currency="" if scenario.defaults else "USD",
        )
    )
    for n, o in enumerate(all_overrides(scenario)):
        override = contracts_pb2.PriceOverride(id=names(f"o{n}"), product_id=names(o.product_id), match=dict(o.match))
        if o.kind == "price":
            override.price = text(o.value)
        else:
            override.multiplier = text(o.value)
        if o.starting_at_ms is not None:
            override.starting_at.CopyFrom(stamp(o.starting_at_ms))
        if o.ending_before_ms is not None:
            override.ending_before.CopyFrom(stamp(o.ending_before_ms))
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=names("k"), override=override))
    for g, paid in zip(scenario.grants, scenario.paid, strict=True):
        grant = contracts_pb2.Grant(
            id=names(g.id),
            kind=contracts_pb2.PROMOTIONAL if paid is None else contracts_pb2.PREPAID,
            amount=text(g.amount),
            paid_amount="" if paid is None else text(paid),
            priority=g.priority,
            applicable_product_ids=[names(p) for p in g.products],
        )
        if scenario.defaults:
            grant.customer_id = names("acme")  # the contract in force now: the customer's only one
        else:
            grant.contract_id = names("k")
        if not scenario.defaults or g.starts_at_ms != scenario.contract_start_ms:
            grant.starts_at.CopyFrom(stamp(g.starts_at_ms))
        if g.expires_at_ms is not None:
            grant.expires_at.CopyFrom(stamp(g.expires_at_ms))
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    if scenario.top_up is not None:
        t = scenario.top_up
        top_up = contracts_pb2.TopUpPolicy(
            threshold=text(t.threshold),
            recharge_to=text(t.recharge_to),
            price_per_credit=text(t.price_per_credit),
            max_per_period=t.max_per_period,
        )
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=names("k"), top_up=top_up))


def wait_for_breakage(client: TariffClient, scenario: WireScenario, names: Names) -> None:
    """Until the server's clock has broken every grant that expired before it was made (within 10 s)."""
    now = now_ms()
    expired = {names(g.id) for g in scenario.grants if g.expires_at_ms is not None and g.expires_at_ms <= now}
    deadline = time.monotonic() + 10
    while expired:
        balance = client.get_balance(names("acme"))
        if all(read(g.remaining) == 0 for g in balance.grants if g.grant_id in expired):
            return
        assert time.monotonic() < deadline, f"grants {sorted(expired)} not broken: {balance}"
        time.sleep(0.02)


# The oracle -------------------------------------------------------------------------------------------------------


def build_oracle(scenario: WireScenario) -> ReferenceCredits:
    products, rates = oracle_catalogue(scenario.products)
    overrides = [
        ROverride(
            o.product_id,
            o.value if o.kind == "price" else None,
            o.value if o.kind == "multiplier" else None,
            o.match,
            o.starting_at_ms,
            o.ending_before_ms,
        )
        for o in all_overrides(scenario)
    ]
    t = scenario.top_up
    return ReferenceCredits(
        products,
        rates,
        overrides,
        oracle_grants(scenario.grants),
        customer_id="acme",
        contract_start_ms=scenario.contract_start_ms,
        block=scenario.block,
        top_up=None if t is None else RTopUp(t.threshold * PICOS, t.recharge_to * PICOS, t.max_per_period),
        timeline=None if scenario.second is None else [(EPOCH_MS, rates), second_timeline_entry(scenario)],
        period_anchor_ms=scenario.contract_start_ms if scenario.anchored else None,
        future_skew_ms=FUTURE_SKEW_MS,
    )


def second_timeline_entry(scenario: WireScenario) -> tuple[int, list[RRate]]:
    """Version 2's rates: version 1's with the upserts and removals, its formulas evaluated with the parameters
    as version 2 sets them."""
    second = scenario.second
    assert second is not None
    parameters = {**dict(scenario.parameters), **dict(second.parameters)}
    formulas, upserts = dict(scenario.formulas), dict(second.upserts)
    rates = []
    for p in scenario.products:
        curve = upserts.get(p.id, p.curve)
        if p.id in formulas and p.id not in upserts:
            price = FORMULAS[formulas[p.id]](parameters["pa"], parameters["pb"])
            curve = dataclasses.replace(curve, price=price.quantize(Decimal(1).scaleb(-18), decimal.ROUND_HALF_EVEN))
        rates.append(RRate(p.id, (), curve))
        if p.specific is not None and p.id not in second.removed:
            rates.append(RRate(p.id, (("model", "m1"),), p.specific))
    return second.effective_from_ms, rates


def paid_amounts(scenario: WireScenario, oracle: ReferenceCredits) -> dict[str, Decimal]:
    """Each grant's paid_amount: as granted (0 for PROMOTIONAL), credits x price_per_credit for a top-up."""
    paid = {g.id: amount or Decimal(0) for g, amount in zip(scenario.grants, scenario.paid, strict=True)}
    if scenario.top_up is not None:
        for _, grant_id, picos in oracle.purchases:
            paid[grant_id] = credits(picos) * scenario.top_up.price_per_credit
    return paid


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def dated(wire: WireEvent, sent_ms: int) -> REvent:
    """The event with its timestamp as sent: "recent" minutes before sent_ms, "soon" minutes after (within the
    skew), "future" two hours after."""
    offset = int(wire.event.timestamp_ms - EPOCH_MS) % (50 * 60_000)
    at_ms = {
        "": wire.event.timestamp_ms,
        "recent": sent_ms - offset,
        "soon": sent_ms + MINUTE_MS + offset,
        "future": sent_ms + 2 * HOUR_MS,
    }[wire.when]
    return dataclasses.replace(wire.event, timestamp_ms=at_ms)


def to_wire(event: REvent, names: Names) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=names(event.transaction_id),
        customer_id=names(event.customer_id),
        event_type=names(event.event_type),
        timestamp_ms=event.timestamp_ms,
        dimensions=dict(event.dimensions),
        values=dict(event.values),
        reservation_id=names(event.reservation_id) if event.reservation_id else "",
    )


CANONICAL = re.compile(r"-?(0|[1-9][0-9]*)(\.[0-9]*[1-9])?")


def read(text: str) -> Decimal:
    """An amount the server wrote: in the decimal grammar without an exponent or trailing zeros (contracts.proto)."""
    assert CANONICAL.fullmatch(text) and text != "-0", f"{text!r} is not an amount as the server writes them"
    return Decimal(text)


DUE = re.compile(r"-?(0|[1-9][0-9]*)\.[0-9]{2}")


def read_due(text: str) -> Decimal:
    """An amount due in USD: written with exactly its minor unit's 2 places ("12.30"; README "Minor units")."""
    assert DUE.fullmatch(text) and text != "-0.00", f"{text!r} is not an amount due as the server writes them"
    return Decimal(text)


def credits(picos: Decimal) -> Decimal:
    return picos / PICOS


def to_minor(value: Decimal) -> Decimal:
    return value.quantize(MINOR, rounding=decimal.ROUND_HALF_EVEN)


# Comparing ----------------------------------------------------------------------------------------------------


Outcome = tuple[str, str]  # as ingest answers it, and the notice ("" or how the named reservation stands)


def ingest(
    client: TariffClient, scenario: WireScenario, oracle: ReferenceCredits, names: Names, closed: Closed
) -> Iterator[tuple[usage_pb2.IngestAck, list[REvent], list[Outcome]]]:
    """Sends the batches (a run of streamed ones on one IngestUsage call, up to a batch after which a period is
    closed), yielding each ack with the events as sent and the oracle's outcomes for them; closes the periods
    the scenario closes once the acks before are checked."""
    index = 0
    closes = [*scenario.closes, *[None] * len(scenario.batches)]
    soon: list[int] = []  # the timestamps of the "soon" events sent so far, for the ends drawn from them
    ending = {step.before_batch for step in scenario.ends}
    while index < len(scenario.batches):
        run = 1
        while (
            scenario.streamed[index]
            and index + run < len(scenario.batches)
            and scenario.streamed[index + run]
            and closes[index + run - 1] is None
            and index + run not in ending
        ):
            run += 1
        end_contract_before(client, scenario, oracle, names, index, soon)
        sent_ms = now_ms()
        batches = [[dated(e, sent_ms) for e in batch] for batch in scenario.batches[index : index + run]]
        for batch, drawn in zip(batches, scenario.batches[index : index + run], strict=True):
            soon += [e.timestamp_ms for e, wire in zip(batch, drawn, strict=True) if wire.when == "soon"]
        requests = [
            usage_pb2.UsageBatch(batch_id=names(f"b{index + n}"), events=[to_wire(e, names) for e in batch])
            for n, batch in enumerate(batches)
        ]
        if scenario.streamed[index]:
            acks = list(client.usage.IngestUsage(iter(requests)))
        else:
            acks = [client.usage.IngestUsageBatch(requests[0])]
        assert len(acks) == len(batches)
        for ack, batch in zip(acks, batches, strict=True):
            answers = [oracle.ingest_reserving(e, sent_ms) for e in batch]
            for e, (outcome, _) in zip(batch, answers, strict=True):
                if e.timestamp_ms > sent_ms and outcome in ("accepted", "NO_ACTIVE_CONTRACT"):
                    ended = oracle.contract_end_ms is not None and e.timestamp_ms >= oracle.contract_end_ms
                    event(f"usage ahead of the clock {outcome}" + (", after the end" if ended else ""))
            yield ack, batch, answers
        close_after(client, scenario, oracle, names, closed, index + run - 1)
        index += run
    end_contract_before(client, scenario, oracle, names, len(scenario.batches), soon)


EndOutcome = tuple[str, int | None]  # as ReferenceRating.end_contract answers


def end_outcome(client: TariffClient, request: contracts_pb2.EndContractRequest, held: int | None) -> EndOutcome:
    """What the server answered EndContract, in the oracle's terms (a refusal's kind read from its message)."""
    try:
        answer = client.contracts.EndContract(request)
    except TariffError as exc:
        code, details = exc.code, exc.details
        if code == grpc.StatusCode.INVALID_ARGUMENT and "ending_before" in details:
            return "after starting_at", None
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, details)
        hour = re.search(r"in the hour from (\S+), at or after that end", details)
        if hour:
            return "usage", iso_ms(hour.group(1))
        for kind, says in (("already ended", "has already ended"), ("before now", "before now")):
            if says in details:
                return kind, None
        raise AssertionError(f"EndContract refused for no documented reason: {details}") from exc
    end_ms = ms_of(request.ending_before)
    assert answer.HasField("ending_before") and ms_of(answer.ending_before) == end_ms, answer
    return ("repeated" if end_ms == held else "ended"), None


def end_contract_before(
    client: TariffClient, scenario: WireScenario, oracle: ReferenceCredits, names: Names, index: int, soon: list[int]
) -> None:
    """The EndContract steps before batch `index`: each answer (taken, a retry, or the refusal and the hour it
    names) is the oracle's for the request's time, which lies between the instants before and after the call (when
    the two would answer differently, either is taken, and the oracle follows the server); GetContract then shows
    the end the oracle holds."""
    for step in (s for s in scenario.ends if s.before_batch == index):
        held = oracle.contract_end_ms
        if step.wait and held is not None and 0 <= held - now_ms() <= 2_000:
            time.sleep((held - now_ms() + 20) / 1000)
            event("end: waited for the end held to pass")
        before = now_ms()
        end_ms = end_at(step, oracle, before, soon)
        request = contracts_pb2.EndContractRequest(contract_id=names("k"), ending_before=stamp(end_ms))
        got = end_outcome(client, request, held)
        after = now_ms()
        expected = set()
        for at_ms in (before, after):
            expected.add(oracle.end_contract(end_ms, at_ms))
            oracle.contract_end_ms = held  # end_contract takes an end it allows: taken below, as the server did
        assert got in expected, (step, end_ms, got, expected)
        event(f"end {step.kind}: {got[0]}" + (" (either)" if len(expected) > 1 else ""))
        if got[0] == "ended":
            oracle.contract_end_ms = end_ms
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=names("k")))
        shown = ms_of(contract.ending_before) if contract.HasField("ending_before") else None
        assert shown == oracle.contract_end_ms, (step, shown, oracle.contract_end_ms)


def settled_now(oracle: ReferenceCredits) -> int:
    """Now, once the contract's end is not within the next few seconds: a read made then is on one side of it."""
    now = now_ms()
    end_ms = oracle.contract_end_ms
    if end_ms is not None and now - 50 <= end_ms <= now + 5_000:
        time.sleep((end_ms - now + 50) / 1000)
        now = now_ms()
    return now


NOTICES = {
    "unknown": "NOTICE_RESERVATION_UNKNOWN",
    "settled": "NOTICE_RESERVATION_ALREADY_SETTLED",
    "released": "NOTICE_RESERVATION_RELEASED",
    "expired": "NOTICE_RESERVATION_EXPIRED",
}


def check_ack(ack: usage_pb2.IngestAck, batch: list[REvent], answers: list[Outcome], names: Names) -> None:
    outcomes = [outcome for outcome, _ in answers]
    rejected = [(r.index, names.strip(r.transaction_id), usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected]
    expected = [(i, batch[i].transaction_id, o) for i, o in enumerate(outcomes) if o not in ("accepted", "duplicate")]
    notices = [(n.index, names.strip(n.reservation_id), usage_pb2.NoticeReason.Name(n.reason)) for n in ack.notices]
    expected_notices = [
        (i, batch[i].reservation_id, NOTICES[notice]) for i, (_, notice) in enumerate(answers) if notice
    ]
    assert (ack.accepted, ack.duplicates, rejected, notices) == (
        outcomes.count("accepted"),
        outcomes.count("duplicate"),
        expected,
        expected_notices,
    ), [dataclasses.astuple(e) for e in batch]


def check_balance(client: TariffClient, scenario: WireScenario, oracle: ReferenceCredits, names: Names) -> None:
    now = settled_now(oracle)
    balance = client.get_balance(names("acme"))
    period = oracle.period(now)[0]
    # With no contract in force now (it has ended), there is no current period: its totals are "0", unset bounds.
    in_force = oracle.in_force(now)
    assert balance.HasField("period_start") == balance.HasField("period_end") == in_force, balance
    got = {
        names.strip(g.grant_id): (
            read(g.amount),
            read(g.drawn),
            read(g.remaining),
            read(g.expired),
            read(g.recognized_revenue),
            read(g.held),
        )
        for g in balance.grants
    }
    expected = {}
    paid = paid_amounts(scenario, oracle)
    for g in oracle.grants:
        # The oracle's remaining is what new usage may draw; the server's includes what holds keep (balance.proto).
        broken, held = oracle.breakage.get(g.id, Decimal(0)), oracle.held(g.id)
        drawn = credits(g.amount - g.remaining - held - broken)
        recognized = round_pico(RATING.divide(RATING.multiply(drawn, paid[g.id]), credits(g.amount)))
        expected[g.id] = (
            credits(g.amount),
            drawn,
            credits(g.remaining + held),
            credits(broken),
            recognized,
            credits(held),
        )
    assert got == expected
    overage = credits(oracle.overage.get(period, Decimal(0))) if in_force else Decimal(0)
    available = sum((g.remaining for g in oracle.grants), start=Decimal(0))
    held = sum((oracle.held(g.id) for g in oracle.grants), start=Decimal(0))
    assert (
        read(balance.credits_remaining),
        read(balance.credits_held),
        read(balance.credits_available),
        read(balance.period_charges),
        read(balance.overage_amount),
        read(balance.overage_due),
    ) == (
        credits(available + held),
        credits(held),
        credits(available),
        credits(oracle.charges.get(period, Decimal(0))) if in_force else Decimal(0),
        overage,
        overage * scenario.overage_price,
    )


LineKey = tuple[str, tuple[str, ...]]  # product id, its pricing dimensions' values ("" for one not given)
Line = tuple[Decimal, int, Decimal, Decimal, dict[str, Decimal], Decimal]  # ... overage, credits, amount due
# An invoice as compared: its bounds, lines, credits_applied and rounding_adjustment, totals, grant balances.
InvoiceView = dict[str, object]


def expected_lines(oracle: ReferenceCredits, period: Period, overage_price: Decimal) -> dict[LineKey, Line]:
    lines: dict[LineKey, Line] = {}
    for (at, product_id, dimensions), a in oracle.aggregates.items():
        if at != period or a.events == 0:
            continue
        drawn = {g: credits(c) for g, c in a.drawn.items() if c}
        due = to_minor(credits(a.overage) * overage_price)
        lines[(product_id, dimensions)] = (a.quantity, a.events, credits(a.amount), credits(a.overage), drawn, due)
    return lines


def expected_invoice(scenario: WireScenario, oracle: ReferenceCredits, period: Period, start_ms: int) -> InvoiceView:
    """The oracle's invoice of the period starting at start_ms, as `invoice_view` reads the server's."""
    _, period_start, period_end = oracle.period(start_ms)
    lines = expected_lines(oracle, period, scenario.overage_price)
    applied: dict[str, Decimal] = {}
    for line in lines.values():
        for grant_id, amount in line[4].items():
            applied[grant_id] = applied.get(grant_id, Decimal(0)) + amount
    overage = sum((credits(a.overage) for k, a in oracle.aggregates.items() if k[0] == period), start=Decimal(0))
    subtotal = sum((credits(a.amount) for k, a in oracle.aggregates.items() if k[0] == period), start=Decimal(0))
    due = to_minor(overage * scenario.overage_price)
    paid = paid_amounts(scenario, oracle)
    top_ups = to_minor(sum((paid[grant_id] for at, grant_id, _ in oracle.purchases if at == period), Decimal(0)))
    adjustment = due - sum((line[5] for line in lines.values()), start=Decimal(0))
    return {
        "bounds": (period_start, period_end),
        "lines": lines,
        "credits": ({g: c for g, c in applied.items() if c}, adjustment),
        "totals": (subtotal, overage, due, top_ups, due + top_ups),
        "balances": grant_balances(oracle, period, (period_start, period_end)),
    }


def invoice_view(invoice: invoices_pb2.Invoice, scenario: WireScenario, names: Names) -> InvoiceView:
    dimensions_of = {p.id: p.dimensions for p in scenario.products}
    lines: dict[LineKey, Line] = {}
    for line in invoice.lines:
        product_id = names.strip(line.product_id)
        key = (product_id, tuple(line.dimensions.get(d, "") for d in dimensions_of[product_id]))
        # Every pricing dimension, one the events lacked as "" (line_id: "per pricing dimension").
        assert sorted(line.dimensions) == sorted(dimensions_of[product_id]), line.line_id
        drawn = {names.strip(c.grant_id): read(c.credits) for c in line.credits_applied}
        assert line.line_id == expected_line_id(line.product_id, dict(line.dimensions)), line.line_id
        amounts = (read(line.amount), read(line.overage))
        lines[key] = (read(line.quantity), line.events, *amounts, drawn, read_due(line.amount_due))
    return {
        "bounds": (ms_of(invoice.period_start), ms_of(invoice.period_end)),
        "lines": lines,
        "credits": (
            {names.strip(c.grant_id): read(c.credits) for c in invoice.credits_applied},
            read_due(invoice.rounding_adjustment),
        ),
        "totals": (
            read(invoice.subtotal),
            read(invoice.overage_amount),
            read_due(invoice.overage_due),
            read_due(invoice.top_up_purchases),
            read_due(invoice.total_due),
        ),
        "balances": {
            names.strip(b.grant_id): (read(b.granted), read(b.drawn), read(b.remaining), read(b.expired))
            for b in invoice.grant_balances
        },
    }


def ms_of(stamp: timestamp_pb2.Timestamp) -> int:
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


def compare_invoice(got: InvoiceView, expected: InvoiceView, period: Period) -> None:
    for part in ("bounds", "lines", "credits", "totals", "balances"):
        assert got[part] == expected[part], (part, period)


def check_invoice(
    client: TariffClient, scenario: WireScenario, oracle: ReferenceCredits, names: Names, closed: Closed
) -> None:
    """Each billed period's draft equals the oracle's invoice; a closed one previews as its final invoice, which
    has not changed since it was closed (closing it again answers it again)."""
    starts = {key[0]: oracle.period(period_instant(oracle, key[0]))[1] for key in oracle.aggregates}
    starts.update({period: ms_of(final.period_start) for period, (final, _) in closed.items()})
    event(f"{'anchored' if scenario.anchored else 'calendar'} periods billed {len(starts)}")
    for period in sorted(starts):
        request = invoices_pb2.PreviewInvoiceRequest(customer_id=names("acme"), period_start=stamp(starts[period]))
        invoice = client.invoices.PreviewInvoice(request)
        if period in closed:
            final, expected = closed[period]
            again = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=final.invoice_number))
            close = invoices_pb2.ClosePeriodRequest(customer_id=names("acme"), period_start=final.period_start)
            assert (invoice, again, client.invoices.ClosePeriod(close)) == (final, final, final), period
            compare_invoice(invoice_view(again, scenario, names), expected, period)
            continue
        expected = expected_invoice(scenario, oracle, period, starts[period])
        event(f"invoice lines {min(len(expected['lines']), 3)}+")  # type: ignore[arg-type]
        compare_invoice(invoice_view(invoice, scenario, names), expected, period)


def period_instant(oracle: ReferenceCredits, period: Period) -> int:
    """An instant in the period the oracle names so: a calendar month's start, or the last millisecond of the
    month an anchored period starts in (it runs from its day to past that month's end)."""
    if oracle.period_anchor_ms is None:
        return int(datetime(period[0], period[1], 1, tzinfo=UTC).timestamp()) * 1000
    index = period[0] * 12 + period[1]
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) * 1000 - 1


Closed = dict[Period, tuple[invoices_pb2.Invoice, InvoiceView]]  # the final invoice, and the oracle's then


def close_after(
    client: TariffClient, scenario: WireScenario, oracle: ReferenceCredits, names: Names, closed: Closed, index: int
) -> None:
    """Closes the period the scenario closes after batch `index` (a past one): its final invoice must be the
    oracle's invoice of it now; its events are rejected PERIOD_CLOSED from then on."""
    start_ms = scenario.closes[index] if index < len(scenario.closes) else None
    if start_ms is None:
        return
    period = oracle.period(start_ms)[0]
    request = invoices_pb2.ClosePeriodRequest(customer_id=names("acme"), period_start=stamp(start_ms))
    invoice = client.invoices.ClosePeriod(request)
    event("closed again" if period in closed else "closed")
    if period in closed:
        assert invoice == closed[period][0], period
        return
    expected = expected_invoice(scenario, oracle, period, start_ms)
    assert invoice.status == invoices_pb2.INVOICE_FINAL and re.fullmatch(r"INV-[0-9]{8}", invoice.invoice_number)
    compare_invoice(invoice_view(invoice, scenario, names), expected, period)
    oracle.closed.add(period)
    closed[period] = (invoice, expected)


def check_close_refusals(client: TariffClient, scenario: WireScenario, oracle: ReferenceCredits, names: Names) -> None:
    """ClosePeriod of the running period is FAILED_PRECONDITION saying when it ends (its monthly end, the contract
    ended within it or not; no period runs once the contract has ended before the current one would start); of an
    instant a third or two thirds into the first period, INVALID_ARGUMENT naming period_start and the nearest
    period start (its own, or the next one's); nothing closed."""
    _, start_ms, end_ms = oracle.period(settled_now(oracle))
    if oracle.contract_end_ms is None or oracle.contract_end_ms > start_ms:
        request = invoices_pb2.ClosePeriodRequest(customer_id=names("acme"), period_start=stamp(start_ms))
        with pytest.raises(TariffError) as running:
            client.invoices.ClosePeriod(request)
        ends = re.search(r"ends at (\S+?),", running.value.details)
        assert running.value.code == grpc.StatusCode.FAILED_PRECONDITION and ends, running.value.details
        assert iso_ms(ends.group(1)) == end_ms, running.value.details
    _, first_ms, first_end_ms = oracle.period(scenario.contract_start_ms)
    for third, nearest_ms in ((1, first_ms), (2, first_end_ms)):
        at_ms = first_ms + (first_end_ms - first_ms) * third // 3
        request = invoices_pb2.ClosePeriodRequest(customer_id=names("acme"), period_start=stamp(at_ms))
        with pytest.raises(TariffError) as off:
            client.invoices.ClosePeriod(request)
        nearest = re.search(r"nearest period start is (\S+)$", off.value.details)
        assert off.value.code == grpc.StatusCode.INVALID_ARGUMENT and nearest, off.value.details
        assert iso_ms(nearest.group(1)) == nearest_ms, off.value.details


def iso_ms(text: str) -> int:
    """An instant as the server writes one in a message (ISO 8601, UTC, "Z")."""
    return round(datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp() * 1000)


def escaped(text: str) -> str:
    """invoices.proto's line_id escaping: %, ;, = and every character outside printable ASCII, as UTF-8 bytes."""
    return "".join("".join(f"%{b:02X}" for b in c.encode()) if c in "%;=" or not " " <= c <= "~" else c for c in text)


def expected_line_id(product_id: str, dimensions: dict[str, str]) -> str:
    return ";".join([escaped(product_id), *(f"{escaped(k)}={escaped(dimensions[k])}" for k in sorted(dimensions))])


def grant_balances(oracle: ReferenceCredits, period: Period, bounds: tuple[int, int]) -> dict[str, tuple[Decimal, ...]]:
    """An invoice's grant_balances: each grant started before the period's end, drawn by the usage of this period
    and every earlier one (but for one spent before the period that nothing in it touched); what it had left when
    it expired, if it does by the period's end (its breakage, or
    for one expiring after now, when the draft of the current period is read, what it has not paid out: held
    credit included, which the invoice shows expired while the hold lasts, invoices.proto RevenueLine)."""
    start_ms, end_ms = bounds
    balances: dict[str, tuple[Decimal, ...]] = {}
    for g in oracle.grants:
        if g.starts_at_ms >= end_ms:
            continue
        drawn = sum((a.drawn.get(g.id, Decimal(0)) for k, a in oracle.aggregates.items() if k[0] <= period), Decimal(0))
        expired = g.expires_at_ms is not None and g.expires_at_ms <= end_ms
        broken = oracle.breakage.get(g.id, g.amount - drawn) if expired else Decimal(0)
        left = Decimal(0) if expired else g.amount - drawn
        touched = any(g.id in a.drawn for k, a in oracle.aggregates.items() if k[0] == period) or any(
            at == period and grant_id == g.id for at, grant_id, _ in oracle.purchases
        )
        ends_in_period = g.expires_at_ms is not None and start_ms < g.expires_at_ms <= end_ms
        if drawn == g.amount and not left and not broken and not touched and not ends_in_period:
            continue  # spent before the period, nothing in it touched it: left out (Invoice.grant_balances)
        balances[g.id] = (credits(g.amount), credits(drawn), credits(left), credits(broken))
    return balances


def make_holds(client: TariffClient, scenario: WireScenario, oracle: ReferenceCredits, names: Names) -> None:
    for hold in scenario.holds:
        usage = dataclasses.replace(hold.usage, timestamp_ms=now_ms())
        decision = oracle.reserve(hold.reservation_id, usage, HOUR_MS)
        assert isinstance(decision, tuple)
        allowed, reason, cost = decision
        event(f"hold {reason}")
        try:
            answer = client.authorize(
                names("acme"),
                names(usage.event_type),
                dict(usage.dimensions),
                dict(usage.values),
                reserve=True,
                reservation_ttl_s=HOUR_MS / 1000,
                reservation_id=names(hold.reservation_id),
            )
        except TariffError as exc:
            assert (exc.code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), exc
            continue
        got = (answer.allowed, answer.reason, read(answer.estimated_cost))
        assert got == (allowed, reason, credits(Decimal(cost))), hold
        if allowed and hold.release:
            released = oracle.release(hold.reservation_id)
            assert isinstance(released, Decimal)
            request = balance_pb2.ReleaseReservationRequest(
                customer_id=names("acme"), reservation_id=names(hold.reservation_id)
            )
            assert read(client.balance.ReleaseReservation(request).released_amount) == credits(released)


def check_authorize(client: TariffClient, scenario: WireScenario, oracle: ReferenceCredits, names: Names) -> None:
    probe = dataclasses.replace(scenario.probe, timestamp_ms=settled_now(oracle))
    allowed, reason, cost = oracle.authorize(probe)
    event(f"authorize {reason}")
    try:
        answer = client.authorize(names("acme"), names(probe.event_type), dict(probe.dimensions), dict(probe.values))
    except TariffError as exc:
        assert (exc.code, reason) == (grpc.StatusCode.INVALID_ARGUMENT, "INVALID_REQUEST"), exc
        return
    assert isinstance(answer, balance_pb2.AuthorizeResponse)
    assert (answer.allowed, answer.reason, read(answer.estimated_cost)) == (allowed, reason, credits(Decimal(cost)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    args = ["--close-grace", "off", "--future-skew-s", str(FUTURE_SKEW_MS // 1000)]
    process = ServerProcess(tmp_path_factory.mktemp("wire-differential") / "data", extra_args=args)
    process.start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> Iterator[TariffClient]:
    with server.client() as connected:
        yield connected


@pytest.mark.timeout(max(300, 2 * EXAMPLES))  # make soak's examples take longer than pytest's 300 s
@PROFILE
@given(scenario=wire_scenarios())
def test_the_server_bills_as_the_oracle_does(
    server: ServerProcess, client: TariffClient, scenario: WireScenario
) -> None:
    with decimal.localcontext(RATING):  # exact: sums of amounts reach 30 digits, past the default context's 28
        bill_and_compare(server, client, scenario)


def crash_and_restart(server: ServerProcess, client: TariffClient) -> None:
    server.kill9()
    server.restart()
    client.wait_ready()


def bill_and_compare(server: ServerProcess, client: TariffClient, scenario: WireScenario) -> None:
    names = Names(f"w{next(_EXAMPLE_NUMBERS)}-")
    SPELLING["exponent"] = scenario.exponent
    SPELLING["defaults"] = scenario.defaults
    create_catalogue(client, scenario, names)
    create_contract(client, scenario, names)
    oracle = build_oracle(scenario)
    wait_for_breakage(client, scenario, names)
    oracle.advance(now_ms())
    make_holds(client, scenario, oracle, names)
    if scenario.crash == "setup":
        crash_and_restart(server, client)
    closed: Closed = {}
    for g in scenario.grants if scenario.anchored else ():
        now = now_ms()
        expiring = "never" if g.expires_at_ms is None else "past" if g.expires_at_ms <= now else "future"
        event(
            f"anchored grant expiring {expiring}, starting {'late' if g.starts_at_ms > scenario.contract_start_ms else 'at start'}"
        )
    for ack, batch, answers in ingest(client, scenario, oracle, names, closed):
        check_ack(ack, batch, answers, names)
        for outcome, notice in answers:
            event(f"outcome {outcome} {notice}")
    oracle.credits_conserved()
    if scenario.crash == "usage":
        crash_and_restart(server, client)
    event(f"top-ups bought {min(len(oracle.purchases), 2)}+, in {len({p for p, _, _ in oracle.purchases})} periods")
    check_balance(client, scenario, oracle, names)
    check_invoice(client, scenario, oracle, names, closed)
    if scenario.anchored:
        check_close_refusals(client, scenario, oracle, names)
    check_authorize(client, scenario, oracle, names)
