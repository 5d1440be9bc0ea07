"""Proto messages <-> engine values. No business rule lives here: only shapes, units and enum names."""

from __future__ import annotations

from collections.abc import Generator, Iterable, Mapping, Sized

from google.protobuf import duration_pb2, timestamp_pb2
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2

from engine import commands as cmd
from engine.balances import BalanceView, GrantView
from engine.billing_reads import Estimate
from engine.contracts import Contract, Customer, OveragePolicy, Override
from engine.control import (
    EVENT_MAP_ENTRIES_MAX,
    ID_CHARS_MAX,
    ID_PATTERN,
    TEXT_BYTES_MAX,
    BillingState,
    check_id,
    check_reference,
    entry_name,
)
from engine.diff import PriceFieldChange, RateChange, VersionDiff
from engine.errors import InvalidArgument
from engine.formula import keyword_name_problem, price_text_problem, read_name_as
from engine.instants import check_instant
from engine.ledger import Grant, GrantKind
from engine.money import decimal_range_problem, decimal_text_problem, format_decimal, format_picos, parse_decimal
from engine.products import Aggregation, Product
from engine.ratecard import (
    HOUR_MS,
    PARAMETERS_PER_VERSION_MAX,
    RATES_PER_VERSION_MAX,
    Cohort,
    FlatPrice,
    PackagePrice,
    PriceSpec,
    Rate,
    RateCard,
    RateKey,
    Tier,
    TieredPrice,
    TierMode,
    UnitPrice,
    Version,
    normalize_match,
    rate_key,
)
from engine.ratecard import Finding as EngineFinding
from server.shown_text import LINE_BREAKS, NOT_IN_A_LINE, NOT_IN_A_NOTE, escaped

# Proto enum fields take their value's name, which is what the engine's StrEnums hold.

NANOS_PER_SECOND = 1_000_000_000

# Ids ----------------------------------------------------------------------------------------------------------
# New requests are held to the id rule over the whole text here, where they enter (engine/control.py check_id); the
# engine checks ids as a command applies the way earlier releases did (check_applied_id: an id ending in "\n"
# passes), since it also replays journaled commands they accepted with such ids, which must apply as they did then.


def check_chosen_ids(command: cmd.AdminCommand, state: BillingState) -> None:
    """Every id a client chose in `command`, held to the whole id rule before the command is submitted: an
    INVALID_ARGUMENT naming the request's field (the field the engine's own check names) refuses it with nothing
    journaled. server/services/common.py `_Base._apply` calls it for every command a servicer submits. An id a
    command names to find a record by (CreateAlert's customer_id, DeleteAlertRule's id) is checked as
    check_reference checks one: a record stored by an earlier release answers to its id as it did."""
    match command:
        case cmd.CreateCustomer() | cmd.CreateRateCard():
            _check_whole(command.id, "id")
        case cmd.CreateProduct():
            _check_whole(command.id, "product.id")
        case cmd.CreateContract() if command.id:  # empty: the engine names it
            _check_whole(command.id, "id")
        case cmd.AddOverride() if command.override.id:  # empty: the engine names it
            _check_whole(command.override.id, "override.id")
        case cmd.GrantCredits() if command.id:  # grant.id, or request_id (checked as it was converted) when empty
            _check_whole(command.id, "grant.id")
        case cmd.CreateDraftVersion() if command.request_id:
            _check_whole(command.request_id, "request_id")
        case cmd.CreateAlert():
            if command.id:  # empty: named after the rule's content
                _check_whole(command.id, "id")
            if command.customer_id:
                check_reference(command.customer_id, "customer_id", state.customers)
        case cmd.DeleteAlertRule() if command.id not in state.alerts.deleted:  # deleted: answered as the first call
            check_reference(command.id, "id", state.alerts.rules)


def _check_whole(value: str, field_path: str) -> None:
    """check_id for an id the rule as earlier releases applied it lets through (one ending in "\n"); any other
    breach is left to the engine, which answers it as before: an id the server made for a grant (a '+' in it) is
    ALREADY_EXISTS (Billing._refuse_made_grant_id), ahead of the id rule."""
    if ID_PATTERN.match(value):
        check_id(value, field_path)


# Intake limits ------------------------------------------------------------------------------------------------
# Free texts and lists a request stores (a product's, a rate card's, a draft's, a cohort's, a grant's) are held to a
# limit where the request enters, so that no record, journal entry or answer grows without bound. Checked here, not
# in the engine: records journaled before a limit replay as they were made.

# A change note is a sentence or a few, for a person: four times a name.
NOTE_BYTES_MAX = 4 * TEXT_BYTES_MAX
# A parameter is named in formulas: a name is at most an id's length.
PARAMETER_NAME_CHARS_MAX = ID_CHARS_MAX
# A product's pricing dimensions and filters, and a rate's match, are keys of an event's dimensions, which hold at
# most EVENT_MAP_ENTRIES_MAX entries.
DIMENSIONS_MAX = EVENT_MAP_ENTRIES_MAX
# Tiers of one tiered price: each event's charge walks them.
TIERS_MAX = 1_000
# Products a grant names: as many as a version's parameters.
GRANT_PRODUCTS_MAX = 1_000
# Customer ids a request lists (SimulateVersion's, a cohort's): each is checked on the event loop, and a cohort's are
# journaled whole, so a list as long as a message takes (millions of ids) held the loop for seconds. More customers
# are named by a cohort's attributes or customers_created_after, or (SimulateVersion) an empty list: every customer.
CUSTOMER_IDS_MAX = 10_000


def check_text(text: str, field: str, bytes_max: int = TEXT_BYTES_MAX) -> str:
    """`text` once it is at most `bytes_max` bytes of UTF-8; INVALID_ARGUMENT naming `field` otherwise."""
    size = len(text.encode())
    if size > bytes_max:
        raise InvalidArgument.field(field, f"must be at most {bytes_max:,} bytes (UTF-8), not {size:,}")
    return text


# Free texts a person reads: which characters they may not hold, and why, is server/shown_text.py's.


def check_shown_text(text: str, field: str, what: str = "a name", *, lines: bool = False) -> str:
    """`text` once it holds no character that breaks or reverses how it is shown (server/shown_text.py); INVALID_ARGUMENT naming
    `field`, the first such character's position (the first character is 1) and its code point otherwise, saying
    `what` the text is ("a name", "an attribute key"). `lines`: a line feed and a tab are taken (a change note)."""
    found = (NOT_IN_A_NOTE if lines else NOT_IN_A_LINE).search(text)
    if found is None:
        return text
    char = found.group()
    if char in LINE_BREAKS:
        kind = "a line break"
    elif ord(char) <= 0x9F:
        kind = "a control character"
    else:
        kind = "a bidirectional control"
    raise InvalidArgument.field(
        field, f"character {found.start() + 1} is U+{ord(char):04X} ({kind}), which {what} may not hold"
    )


def shown_key(key: str) -> str:
    """A map entry's key as a field path names it: the characters check_shown_text refuses escaped as Python's
    repr escapes them ("re\\u202egion"), so that an answer refusing the key does not carry them either."""
    return escaped(key)


def check_shown_entries(entries: Mapping[str, str], field: str, what: str, *, path: str = "[{}]") -> None:
    """check_shown_text for each key and value of `entries` (an attribute map, a match), the entry named in `field`
    by `path` around its key ("attributes[region]"): `what` is "attribute" (an attribute key, an attribute value)."""
    for key, value in entries.items():
        named = field + path.format(entry_name(shown_key(key)))
        check_shown_text(key, named, f"{_article(what)} {what} key")
        check_shown_text(value, named, f"{_article(what)} {what} value")


def _article(noun: str) -> str:
    return "an" if noun[:1] in "aeiou" else "a"


def check_count(items: Sized, field: str, count_max: int, what: str) -> None:
    """INVALID_ARGUMENT naming `field` when it holds more than `count_max` entries."""
    if len(items) > count_max:
        raise InvalidArgument.field(field, f"holds at most {count_max:,} {what}, not {len(items):,}")


# Decimals -----------------------------------------------------------------------------------------------------
# New requests are held to the decimal grammar here, where they enter (engine/money.py DECIMAL_GRAMMAR); the
# engine reads the texts it is given leniently, as earlier releases did, since it also replays journaled texts
# they accepted (" 1", "+1", "1_000"...), which must read as they did then.


def decimal_text(text: str, field: str) -> str:
    """`text`, once it is in the decimal grammar and its value, read exactly, in range (or empty: the field's own
    rules decide then); INVALID_ARGUMENT naming `field` otherwise."""
    problem = decimal_text_problem(text) or (decimal_range_problem(text) if text else None)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return text


def written_decimal(text: str, field: str) -> str:
    """A stored decimal text (a price or threshold as its request wrote it, "1e-2", "12.50"; or as an earlier
    release journaled it, " 1") as the server writes decimals: no exponent, no trailing zeros ("0.01", "12.5").
    A stored text no decimal reading takes is answered as stored: a read never fails on what was accepted once."""
    try:
        return format_decimal(parse_decimal(text, field, allow_negative=True))
    except InvalidArgument:
        return text


def price_text(text: str, field: str) -> str:
    """A price field (a decimal or a formula, engine/formula.py price_text_problem) once its numbers are in the
    decimal grammar; INVALID_ARGUMENT naming `field` otherwise."""
    problem = price_text_problem(text)
    if problem is not None:
        raise InvalidArgument.field(field, problem)
    return text


# Times --------------------------------------------------------------------------------------------------------


def _valid_ms(timestamp: timestamp_pb2.Timestamp, field: str) -> int:
    """Unix ms (sub-millisecond nanos dropped); INVALID_ARGUMENT naming `field` when nanos are not 0-999,999,999."""
    if not 0 <= timestamp.nanos < NANOS_PER_SECOND:
        raise InvalidArgument.field(field, f"nanos must be from 0 to 999,999,999, not {timestamp.nanos}")
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


def ms_of(timestamp: timestamp_pb2.Timestamp, field: str) -> int:
    """An instant a request names (a start, an end, an expiry, a period), in Unix ms: refused with
    INVALID_ARGUMENT naming `field` outside 1970-01-01 to 8999-12-31 (engine/instants.py), which keeps the
    months computed from it within the calendar's arithmetic."""
    ms = _valid_ms(timestamp, field)
    check_instant(ms, field)
    return ms


def ms_up_of(timestamp: timestamp_pb2.Timestamp, field: str) -> int:
    """`ms_of`, rounded up to a whole millisecond: an end compared with whole-millisecond instants, so that `t < end`
    answers exactly what the Timestamp asks (t is before t + 0.5 ms, and an end 0.5 ms past an hour reaches into
    that hour). The range is checked on the instant itself."""
    return ms_of(timestamp, field) + (1 if timestamp.nanos % 1_000_000 else 0)


def optional_ms(message: object, field: str, name: str = "") -> int | None:
    """`ms_of` of an optional field (None when unset); `name` is the field's path in the request when the
    message is nested in it ("grant.starts_at")."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    return ms_of(getattr(message, field), name or field)


def optional_period_start_ms(message: object, field: str = "period_start") -> int | None:
    """`optional_ms` of a field that must be a period's exact start (ClosePeriod, ExplainLineItem): periods start on
    whole milliseconds, so a sub-millisecond part is refused here rather than dropped into the period the caller
    passed by less than a millisecond."""
    ms = optional_ms(message, field)
    if ms is not None and getattr(message, field).nanos % 1_000_000:
        start = timestamp_pb2.Timestamp()
        start.FromMilliseconds(ms)
        raise InvalidArgument.field(
            field,
            f"{getattr(message, field).ToJsonString()} is not the start of a billing period: periods start on a whole "
            f"millisecond, and this is past {start.ToJsonString()} by less than one",
        )
    return ms


def optional_ms_up(message: object, field: str) -> int | None:
    """`optional_ms`, rounded up to a whole millisecond: a bound compared with whole-millisecond instants (period
    starts), so that `t >= bound` and `t < bound` answer exactly what the Timestamp asks (t is before t + 0.5 ms).
    The range is checked on the instant itself (1969-12-31T23:59:59.9995Z is refused, not read as 1970)."""
    ms = optional_ms(message, field)
    if ms is None:
        return None
    return ms + (1 if getattr(message, field).nanos % 1_000_000 else 0)


def optional_end_ms_up(message: object, field: str) -> int | None:
    """`optional_ms_up` of an exclusive end (a span's period_end): the first instant past the range (9000-01-01) is
    one too, since every instant before it is in range; past that, refused naming `field`."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    timestamp = getattr(message, field)
    ms = _valid_ms(timestamp, field) + (1 if timestamp.nanos % 1_000_000 else 0)
    check_instant(ms - 1, field)
    return ms


def optional_hour_ms(message: object, field: str) -> int | None:
    """`optional_ms` of a time that must be on an hour (an effective_from), refused here, before the request is
    looked at against the state: a time off the hour is INVALID_ARGUMENT whatever the version's state (published,
    a draft, unknown), as gRPC gives a request wrong in any state. A sub-millisecond part is refused too, rather
    than dropped into an hour the caller did not name. (The engine refuses milliseconds past the hour as ever,
    after its state checks: replay is unchanged.)"""
    ms = optional_ms(message, field)
    if ms is not None and (ms % HOUR_MS or getattr(message, field).nanos % 1_000_000):
        raise InvalidArgument.field(field, "must be on an hour boundary (UTC)")
    return ms


def optional_filter_ms(message: object, field: str) -> int | None:
    """A filter's bound (None when unset): compared, never computed with, so any valid Timestamp will do. Rounded
    up to a whole millisecond: the instants it is compared with are whole milliseconds, so `t >= bound` ("at or
    after") and `t < bound` ("before") then answer exactly what the Timestamp asks (t is before t + 0.5 ms)."""
    if not message.HasField(field):  # type: ignore[attr-defined]
        return None
    timestamp = getattr(message, field)
    return _valid_ms(timestamp, field) + (1 if timestamp.nanos % 1_000_000 else 0)


def duration_ms(duration: duration_pb2.Duration, field: str) -> int:
    """A Duration a request names, in ms: INVALID_ARGUMENT naming `field` unless it is valid as
    google/protobuf/duration.proto defines it (nanos from -999,999,999 to 999,999,999, and not of the other sign
    than a nonzero seconds: seconds=1, nanos=-1,000,000 is not 999 ms) and a whole number of milliseconds."""
    seconds, nanos = duration.seconds, duration.nanos
    if not -NANOS_PER_SECOND < nanos < NANOS_PER_SECOND:
        raise InvalidArgument.field(field, f"nanos must be from -999,999,999 to 999,999,999, not {nanos}")
    if (seconds > 0 > nanos) or (seconds < 0 < nanos):
        raise InvalidArgument.field(field, f"seconds ({seconds}) and nanos ({nanos}) must not have different signs")
    if nanos % 1_000_000:
        raise InvalidArgument.field(field, "must be a whole number of milliseconds")
    return seconds * 1000 + nanos // 1_000_000


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def set_time(message: object, field: str, ms: int | None) -> None:
    """Sets an optional Timestamp field; None leaves it unset (which the wire tells apart from zero)."""
    if ms is not None:
        getattr(message, field).CopyFrom(timestamp(ms))


# Catalogue ----------------------------------------------------------------------------------------------------


def _enum_name(enum_type: object, number: int) -> str | None:
    """The value's name, or None for 0 (unspecified) and numbers this server does not know."""
    if number == 0:
        return None
    try:
        return str(enum_type.Name(number))  # type: ignore[attr-defined]
    except ValueError:
        return None


def aggregation(number: int) -> Aggregation | None:
    name = _enum_name(pricing_pb2.Aggregation, number)
    return Aggregation(name) if name else None


def product_pb(p: Product) -> pricing_pb2.Product:
    return pricing_pb2.Product(
        id=p.id,
        name=p.name,
        event_type=p.event_type,
        aggregation=p.aggregation.value,
        value_key=p.value_key,
        filters=p.filters,
        pricing_dimensions=p.pricing_dimensions,
        unit=p.unit,
    )


def _check_product_keys_fit_an_event(p: pricing_pb2.Product) -> None:
    """INVALID_ARGUMENT naming the field for a value_key, filter key or value, or pricing dimension longer than an
    event's keys and dimension values may be (TEXT_BYTES_MAX bytes; longer is INVALID_EVENT, kernel decode.rs):
    no event could feed such a product, or meet its filter. Checked where the request enters, not in the engine,
    so that products journaled before the check replay as they were."""

    def fits(text: str) -> bool:
        return len(text.encode()) <= TEXT_BYTES_MAX

    why = f"is at most {TEXT_BYTES_MAX} bytes (an event's keys and dimension values are): no event could meet it"
    check_count(p.filters, "product.filters", DIMENSIONS_MAX, "entries (an event holds at most as many dimensions)")
    check_count(p.pricing_dimensions, "product.pricing_dimensions", DIMENSIONS_MAX, "dimensions (as an event)")
    if not fits(p.value_key):
        raise InvalidArgument.field("product.value_key", why)
    for key, value in p.filters.items():
        if not fits(key) or not fits(value):
            raise InvalidArgument.field(f"product.filters.{key[:32]}", f"each key and value {why}")
    for i, key in enumerate(p.pricing_dimensions):
        if not fits(key):
            raise InvalidArgument.field(f"product.pricing_dimensions[{i}]", why)


def _check_product_texts_shown(p: pricing_pb2.Product) -> None:
    """check_shown_text for each text of a product a person reads (ListProducts, the CLI's product table, invoice
    lines' dimensions): its name, event type, unit, value key, filters and pricing dimensions."""
    for field, what in (("name", "a name"), ("event_type", "an event type"), ("unit", "a unit")):
        check_shown_text(getattr(p, field), f"product.{field}", what)
    check_shown_text(p.value_key, "product.value_key", "a value key")
    check_shown_entries(p.filters, "product.filters", "filter", path=".{}")
    for i, key in enumerate(p.pricing_dimensions):
        check_shown_text(key, f"product.pricing_dimensions[{i}]", "a pricing dimension")


def create_product(request: pricing_pb2.CreateProductRequest, at_ms: int, actor: str) -> cmd.CreateProduct:
    p = request.product
    if p.aggregation and aggregation(p.aggregation) is None:
        raise InvalidArgument.field("product.aggregation", f"unknown value {p.aggregation}")
    _check_product_keys_fit_an_event(p)
    for field in ("name", "event_type", "unit"):
        check_text(getattr(p, field), f"product.{field}")
    _check_product_texts_shown(p)
    return cmd.CreateProduct(
        at_ms,
        actor,
        p.id,
        p.name,
        p.event_type,
        aggregation(p.aggregation),
        p.value_key,
        dict(p.filters),
        tuple(p.pricing_dimensions),
        p.unit,
        empty_count_missing=True,
        empty_filter_missing=True,
    )


def rate_card_pb(card: RateCard, now_ms: int) -> pricing_pb2.RateCard:
    current = card.version_number_at(now_ms)
    return pricing_pb2.RateCard(
        id=card.id,
        name=card.name,
        pricing_unit=card.pricing_unit,
        created_at=timestamp(card.created_at_ms),
        latest_version=len(card.versions),
        current_version=current or 0,
    )


def price_spec(rate: pricing_pb2.Rate, path: str) -> PriceSpec:
    kind = rate.WhichOneof("price")

    def price(text: str, name: str) -> str:
        return price_text(text, f"{path}.{kind}.{name}")

    match kind:
        case "unit":
            return UnitPrice(price(rate.unit.price, "price"), price(rate.unit.per_units, "per_units"))
        case "tiered":
            mode = _enum_name(pricing_pb2.TierMode, rate.tiered.mode)
            if mode is None:
                raise InvalidArgument.field(f"{path}.tiered.mode", "is required: GRADUATED or VOLUME")
            check_count(rate.tiered.tiers, f"{path}.tiered.tiers", TIERS_MAX, "tiers")
            tiers = tuple(
                Tier(
                    price(t.up_to, f"tiers[{i}].up_to"),
                    price(t.unit_price, f"tiers[{i}].unit_price"),
                    price(t.flat_price, f"tiers[{i}].flat_price"),
                )
                for i, t in enumerate(rate.tiered.tiers)
            )
            return TieredPrice(TierMode(mode), tiers, price(rate.tiered.per_units, "per_units"))
        case "package":
            return PackagePrice(
                price(rate.package.package_size, "package_size"), price(rate.package.package_price, "package_price")
            )
        case "flat":
            return FlatPrice(price(rate.flat.price, "price"))
    raise InvalidArgument.field(f"{path}.price", "set one of unit, tiered, package or flat")


def rate(message: pricing_pb2.Rate, path: str) -> Rate:
    return Rate(message.product_id, normalize_match(message.match), price_spec(message, path))


def rate_pb(r: Rate) -> pricing_pb2.Rate:
    message = pricing_pb2.Rate(product_id=r.product_id, match=r.match)
    match r.price:
        case UnitPrice():
            message.unit.CopyFrom(pricing_pb2.UnitPrice(price=r.price.price, per_units=r.price.per_units))
        case TieredPrice():
            message.tiered.CopyFrom(
                pricing_pb2.TieredPrice(
                    mode=r.price.mode.value,
                    tiers=[
                        pricing_pb2.Tier(up_to=t.up_to, unit_price=t.unit_price, flat_price=t.flat_price)
                        for t in r.price.tiers
                    ],
                    per_units=r.price.per_units,
                )
            )
        case PackagePrice():
            message.package.CopyFrom(
                pricing_pb2.PackagePrice(package_size=r.price.package_size, package_price=r.price.package_price)
            )
        case FlatPrice():
            message.flat.CopyFrom(pricing_pb2.FlatPrice(price=r.price.price))
    return message


def check_rates_named_once(rates: Iterable[pricing_pb2.Rate]) -> None:
    """INVALID_ARGUMENT naming each upsert_rates entry with the product and match of an earlier one ("*" entries
    left out): the draft would keep only the last. Checked before the command is journaled, so stored drafts
    replay as they were made."""
    first: dict[RateKey, int] = {}
    violations = []
    for index, each in enumerate(rates):
        at = first.setdefault(rate_key(each.product_id, each.match), index)
        if at != index:
            violations.append((f"upsert_rates[{index}]", f"the same product and match as upsert_rates[{at}]"))
    if violations:
        raise InvalidArgument(violations)


def check_rates_can_match(rates: Iterable[pricing_pb2.Rate]) -> None:
    """INVALID_ARGUMENT naming the entry and key of a match key or value longer than an event's dimension keys and
    values may be (TEXT_BYTES_MAX bytes): no event could match such a rate; or holding a character check_shown_text
    refuses (a version's rates are read in GetVersion, DiffVersions and the CLI). Checked where the request enters,
    not in the engine, so that drafts journaled before the check replay as they were made."""
    why = f"keys and values are at most {TEXT_BYTES_MAX} bytes (an event's dimensions are): no event could match it"
    for index, each in enumerate(rates):
        check_count(each.match, f"upsert_rates[{index}].match", DIMENSIONS_MAX, "entries (as an event's dimensions)")
        for key, value in each.match.items():
            if len(key.encode()) > TEXT_BYTES_MAX or len(value.encode()) > TEXT_BYTES_MAX:
                raise InvalidArgument.field(f"upsert_rates[{index}].match.{key[:32]}", why)
        check_shown_entries(each.match, f"upsert_rates[{index}].match", "match", path=".{}")


def check_parameter_names(names: Iterable[str]) -> None:
    """INVALID_ARGUMENT naming the set_parameters entry whose name is longer than PARAMETER_NAME_CHARS_MAX
    characters (a formula names a parameter, and the version, its answers and its validation's findings hold the
    name whole), or not in the form formulas read names in (`read_name_as`), or a keyword of the formula grammar
    (`keyword_name_problem`): no formula could name either."""
    for name in names:
        if len(name) > PARAMETER_NAME_CHARS_MAX:
            raise InvalidArgument.field(
                f"set_parameters[{entry_name(name)}]",
                f"a parameter name is at most {PARAMETER_NAME_CHARS_MAX} characters, not {len(name):,}",
            )
        # No formula could name it: it would name another parameter (or none), or is no name to the grammar.
        problem = read_name_as(name) or keyword_name_problem(name)
        if problem is not None:
            raise InvalidArgument.field(f"set_parameters[{entry_name(name)}]", problem)


def check_draft_counts(request: pricing_pb2.CreateDraftVersionRequest) -> None:
    """No list of a draft request longer than a version holds (RATES_PER_VERSION_MAX rates, PARAMETERS_PER_VERSION_MAX
    parameters), before anything looks at its entries: each is checked one by one (a repeated removal is refused on
    its own), so 1,500,000 rate keys held the event loop 7 s and 4,000,000 parameter names the writer 14 s. Upserts
    and parameters past it were refused by the engine, after every entry was converted."""
    check_count(request.upsert_rates, "upsert_rates", RATES_PER_VERSION_MAX, "rates (a version's most)")
    check_count(request.remove_rates, "remove_rates", RATES_PER_VERSION_MAX, "rate keys (a version's rates)")
    check_count(request.set_parameters, "set_parameters", PARAMETERS_PER_VERSION_MAX, "parameters (a version's most)")
    check_count(
        request.remove_parameters, "remove_parameters", PARAMETERS_PER_VERSION_MAX, "names (a version's parameters)"
    )


def create_draft(request: pricing_pb2.CreateDraftVersionRequest, at_ms: int, actor: str) -> cmd.CreateDraftVersion:
    check_draft_counts(request)
    check_rates_named_once(request.upsert_rates)
    check_rates_can_match(request.upsert_rates)
    check_parameter_names(request.set_parameters)
    check_text(request.change_note, "change_note", NOTE_BYTES_MAX)
    check_shown_text(request.change_note, "change_note", "a change note", lines=True)
    return cmd.CreateDraftVersion(
        at_ms,
        actor,
        request.rate_card_id,
        request.based_on_version,
        {name: decimal_text(text, f"set_parameters[{name}]") for name, text in request.set_parameters.items()},
        tuple(request.remove_parameters),
        tuple(rate(r, f"upsert_rates[{i}]") for i, r in enumerate(request.upsert_rates)),
        tuple(cmd.RemoveRate(k.product_id, dict(k.match)) for k in request.remove_rates),
        request.change_note,
        request.request_id,
        drafts_bounded=True,
    )


def cohort_pb(cohort: Cohort | None) -> pricing_pb2.Cohort | None:
    if cohort is None:
        return None
    message = pricing_pb2.Cohort(customer_ids=cohort.customer_ids, attributes=cohort.attributes)
    set_time(message, "customers_created_after", cohort.customers_created_after_ms)
    return message


def cohort_of(message: pricing_pb2.Cohort) -> Cohort:
    """A PublishVersion's cohort as the engine checks it (engine/cohorts.py), once its attributes are within what
    a customer's may hold (more entries, or a longer key or value, would match no customer; a key or value holding a
    character check_shown_text refuses, none a new customer holds, is refused as a customer's is)."""
    check_count(message.attributes, "cohort.attributes", EVENT_MAP_ENTRIES_MAX, "entries (as a customer's)")
    for key, value in message.attributes.items():
        if len(key.encode()) > TEXT_BYTES_MAX or len(value.encode()) > TEXT_BYTES_MAX:
            why = f"keys and values are at most {TEXT_BYTES_MAX} bytes (as a customer's): no customer could match it"
            raise InvalidArgument.field(f"cohort.attributes[{entry_name(key)}]", why)
    check_shown_entries(message.attributes, "cohort.attributes", "attribute")
    return Cohort(
        tuple(message.customer_ids),
        dict(message.attributes),
        optional_ms(message, "customers_created_after", "cohort.customers_created_after"),
    )


def version_pb(v: Version) -> pricing_pb2.RateCardVersion:
    message = pricing_pb2.RateCardVersion(
        rate_card_id=v.rate_card_id,
        version=v.number,
        state=v.state.value,
        based_on_version=v.based_on,
        parameters=v.parameters,
        rates=[rate_pb(r) for r in v.rates],
        change_note=v.change_note,
        created_at=timestamp(v.created_at_ms),
        created_by=v.created_by,
        cohort=cohort_pb(v.cohort),
    )
    set_time(message, "effective_from", v.effective_from_ms)
    set_time(message, "published_at", v.published_at_ms)
    message.rollback_to_version = v.rollback_to
    message.rollback_from_version = v.rollback_from
    return message


def findings_pb(findings: Iterable[EngineFinding]) -> pricing_pb2.ValidationReport:
    items = [pricing_pb2.Finding(severity=f.severity.value, path=f.path, message=f.message) for f in findings]
    return pricing_pb2.ValidationReport(ok=all(f.severity != pricing_pb2.ERROR for f in items), findings=items)


# Customers, contracts, grants -------------------------------------------------------------------------------


def customer_pb(c: Customer) -> contracts_pb2.Customer:
    return contracts_pb2.Customer(id=c.id, name=c.name, attributes=c.attributes, created_at=timestamp(c.created_at_ms))


def overage_policy(number: int) -> OveragePolicy:
    name = _enum_name(contracts_pb2.OveragePolicy, number)
    if number and name is None:
        raise InvalidArgument.field("overage_policy", f"unknown value {number}")
    return OveragePolicy(name) if name else OveragePolicy.ALLOW


def override(message: contracts_pb2.PriceOverride) -> Override:
    """An empty id is named by the engine, after the override's content (so that a retry finds it)."""
    adjustment = message.WhichOneof("adjustment")
    starting_at_ms = optional_ms(message, "starting_at", "override.starting_at")
    return Override(
        id=message.id,
        product_id=message.product_id,
        match=normalize_match(message.match),
        multiplier=decimal_text(message.multiplier, "override.multiplier") if adjustment == "multiplier" else None,
        price=decimal_text(message.price, "override.price") if adjustment == "price" else None,
        starting_at_ms=starting_at_ms if starting_at_ms is not None else 0,
        ending_before_ms=optional_ms(message, "ending_before", "override.ending_before"),
    )


def override_pb(o: Override) -> contracts_pb2.PriceOverride:
    message = contracts_pb2.PriceOverride(id=o.id, product_id=o.product_id, match=o.match)
    # 0: no start was given (in force from the contract's start); left unset rather than shown as 1970-01-01.
    set_time(message, "starting_at", o.starting_at_ms or None)
    # Written as the server writes decimals (no exponent, no trailing zeros), as a contract's overage_price is.
    if o.multiplier is not None:
        message.multiplier = written_decimal(o.multiplier, "override.multiplier")
    if o.price is not None:
        message.price = written_decimal(o.price, "override.price")
    set_time(message, "ending_before", o.ending_before_ms)
    return message


def grant_pb(g: Grant) -> contracts_pb2.Grant:
    message = contracts_pb2.Grant(
        id=g.id,
        customer_id=g.customer_id,
        contract_id=g.contract_id,
        kind=g.kind.value,
        amount=format_picos(g.amount),
        paid_amount=format_decimal(g.paid_amount),
        priority=g.priority,
        applicable_product_ids=g.applicable_product_ids,
        starts_at=timestamp(g.starts_at_ms),
        rollover_fraction=format_decimal(g.rollover_fraction),
        created_at=timestamp(g.created_at_ms),
    )
    set_time(message, "expires_at", g.expires_at_ms)
    return message


def contract_pb(c: Contract, grants: Iterable[Grant]) -> contracts_pb2.Contract:
    message = contracts_pb2.Contract(
        id=c.id,
        customer_id=c.customer_id,
        rate_card_id=c.rate_card_id,
        starting_at=timestamp(c.starting_at_ms),
        overrides=[override_pb(o) for o in c.overrides],
        grants=[grant_pb(g) for g in grants],
        overage_policy=c.overage_policy.value,
        overage_price=written_decimal(c.overage_price, "overage_price"),
        currency=c.currency,
    )
    set_time(message, "ending_before", c.ending_before_ms)
    if c.top_up is not None:
        message.top_up.CopyFrom(
            contracts_pb2.TopUpPolicy(
                threshold=written_decimal(c.top_up.threshold, "top_up.threshold"),
                recharge_to=written_decimal(c.top_up.recharge_to, "top_up.recharge_to"),
                price_per_credit=written_decimal(c.top_up.price_per_credit, "top_up.price_per_credit"),
                max_per_period=c.top_up.max_per_period,
            )
        )
    return message


def grant_credits(request: contracts_pb2.GrantCreditsRequest, at_ms: int, actor: str) -> cmd.GrantCredits:
    """The grant's id is its idempotency key: grant.id, or request_id when grant.id is empty."""
    g = request.grant
    if request.request_id:
        check_id(request.request_id, "request_id")
    check_count(g.applicable_product_ids, "grant.applicable_product_ids", GRANT_PRODUCTS_MAX, "product ids")
    kind_name = _enum_name(contracts_pb2.GrantKind, g.kind)
    if g.kind and kind_name is None:
        raise InvalidArgument.field("grant.kind", f"unknown value {g.kind}")
    return cmd.GrantCredits(
        at_ms,
        actor,
        g.id or request.request_id,
        g.customer_id,
        g.contract_id,
        GrantKind(kind_name) if kind_name else None,
        decimal_text(g.amount, "grant.amount"),
        decimal_text(g.paid_amount, "grant.paid_amount"),
        g.priority,
        tuple(g.applicable_product_ids),
        optional_ms(g, "starts_at", "grant.starts_at"),
        optional_ms(g, "expires_at", "grant.expires_at"),
        decimal_text(g.rollover_fraction, "grant.rollover_fraction"),
        use_ends_at_rollover=True,
        paid_at_picos=True,
        made_ids_refused=True,
        rollover_start_in_contract=True,
        expiring_at_rollover_rolls=True,
        applied_audited=True,
        grants_bounded=True,
    )


# Balances -----------------------------------------------------------------------------------------------------


def balance_pb(view: BalanceView) -> balance_pb2.Balance:
    balance = _balance_totals_pb(view)
    balance.grants.extend(_grant_pb(gv) for gv in view.grants)
    return balance


def balance_bytes(view: BalanceView, parts: list[GrantView | bytes], grants_left_out: int = 0) -> bytes:
    """`balance_pb(view)`'s bytes with `parts` (grants in burn order) as its grants, the kernel's encoded ones as
    they are, and `grants_left_out`: a message's fields are serialized in field order, so the totals before
    `grants` (field 5), the grants, then the totals after it (`grants_left_out`, field 13, last)."""
    totals = _balance_totals_pb(view)
    totals.grants_left_out = grants_left_out
    head = balance_pb2.Balance(
        customer_id=totals.customer_id,
        credits_remaining=totals.credits_remaining,
        credits_held=totals.credits_held,
        credits_available=totals.credits_available,
    )
    totals.ClearField("customer_id")
    totals.ClearField("credits_remaining")
    totals.ClearField("credits_held")
    totals.ClearField("credits_available")
    grants: list[bytes] = []
    run = balance_pb2.Balance()  # consecutive grants the kernel left to the control plane, as `grants` entries
    for part in parts:
        if isinstance(part, bytes):
            grants.append(run.SerializeToString())
            run.Clear()
            grants.append(part)
        else:
            run.grants.append(_grant_pb(part))
    grants.append(run.SerializeToString())
    return b"".join((head.SerializeToString(), *grants, totals.SerializeToString()))


def grant_entry_bytes(gv: GrantView) -> int:
    """What the grant takes as one Balance `grants` entry: its tag, its length and its GrantBalance."""
    return balance_pb2.Balance(grants=[_grant_pb(gv)]).ByteSize()


def _grant_pb(gv: GrantView) -> balance_pb2.GrantBalance:
    g = gv.grant
    message = balance_pb2.GrantBalance(
        grant_id=g.id,
        kind=g.kind.value,
        amount=format_picos(g.amount),
        drawn=format_picos(g.drawn),
        remaining=format_picos(gv.remaining),
        expired=format_picos(gv.expired),
        priority=g.priority,
        applicable_product_ids=g.applicable_product_ids,
        starts_at=timestamp(g.starts_at_ms),
        recognized_revenue=format_picos(g.recognized_revenue),
        held=format_picos(gv.held),
    )
    set_time(message, "expires_at", g.expires_at_ms)
    return message


def _balance_totals_pb(view: BalanceView) -> balance_pb2.Balance:
    """The Balance of `view` but its grants."""
    balance = balance_pb2.Balance(
        customer_id=view.customer_id,
        credits_remaining=format_picos(view.remaining),
        credits_held=format_picos(view.held),
        credits_available=format_picos(view.available),
        period_charges=format_picos(view.period_charges),
        overage_amount=format_picos(view.overage),
        as_of_seq=view.as_of_seq,
        pricing_unit=view.pricing_unit,
        overage_due=format_decimal(view.overage_due),
        currency=view.currency,
    )
    if view.period is not None:
        balance.period_start.CopyFrom(timestamp(view.period.start_ms))
        balance.period_end.CopyFrom(timestamp(view.period.end_ms))
    return balance


def authorize_response(request_id: str, estimate: Estimate) -> balance_pb2.AuthorizeResponse:
    return balance_pb2.AuthorizeResponse(
        request_id=request_id,
        allowed=estimate.allowed,
        reason=estimate.reason,
        estimated_cost=format_picos(estimate.cost),
        credits_available=format_picos(estimate.available),
        message=estimate.message,
    )


# Version diffs ------------------------------------------------------------------------------------------------


# Rate changes made into messages a step (version_diff_pb_steps): each holds both rates and their fields.
RATE_CHANGES_PER_STEP = 64


def version_diff_pb_steps(diff: VersionDiff) -> Generator[None, None, pricing_pb2.DiffVersionsResponse]:
    """DiffVersions' answer, RATE_CHANGES_PER_STEP rate changes a step, for a caller on the event loop."""
    answer = pricing_pb2.DiffVersionsResponse(
        parameters=[
            pricing_pb2.ParameterChange(
                name=p.name, old_value=p.old_value or "", new_value=p.new_value or "", kind=p.kind.value
            )
            for p in diff.parameters
        ],
    )
    for start in range(0, len(diff.rates), RATE_CHANGES_PER_STEP):
        if start:
            yield
        answer.rates.extend(_rate_change_pb(change) for change in diff.rates[start : start + RATE_CHANGES_PER_STEP])
    return answer


def _rate_change_pb(change: RateChange) -> pricing_pb2.RateChange:
    product_id, match = change.key
    message = pricing_pb2.RateChange(
        key=pricing_pb2.RateKey(product_id=product_id, match=dict(match)),
        kind=change.kind.value,
        fields=[_field_change_pb(f) for f in change.fields],
    )
    if change.old_rate is not None:
        message.old_rate.CopyFrom(rate_pb(change.old_rate))
    if change.new_rate is not None:
        message.new_rate.CopyFrom(rate_pb(change.new_rate))
    return message


def _field_change_pb(change: PriceFieldChange) -> pricing_pb2.PriceFieldChange:
    message = pricing_pb2.PriceFieldChange(
        path=change.path, has_old=change.old is not None, has_new=change.new is not None
    )
    if change.old is not None:
        message.old_formula, message.old_price, message.old_problem = (
            change.old.formula,
            change.old.price or "",
            change.old.problem,
        )
    if change.new is not None:
        message.new_formula, message.new_price, message.new_problem = (
            change.new.formula,
            change.new.price or "",
            change.new.problem,
        )
    return message
