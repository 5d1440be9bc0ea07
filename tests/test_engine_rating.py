"""Rating: which rate prices an event, how aggregates turn into charges, versions, ingestion rules, periods and
overrides (docs/architecture.md §3, §5). Every amount is computed by hand in the table and compared exactly, in picos."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import msgspec
import pytest

from engine import commands as cmd
from engine.contracts import Period, period_containing
from engine.errors import FailedPrecondition, InvalidArgument
from engine.products import Aggregation
from engine.ratecard import (
    PriceSpec,
    Rate,
    Severity,
    TierMode,
    VersionState,
    validate,
)
from engine.rating import RejectReason
from tests.engine_fixtures import (
    DAY_MS,
    EPOCH_MS,
    HOUR_MS,
    MINUTE_MS,
    World,
    basic_world,
    event,
    flat,
    ms,
    package,
    picos,
    rate,
    tiered,
    unit,
)

T = EPOCH_MS


def reasons(world: World, events: Sequence[cmd.UsageEvent], received_at_ms: int) -> list[tuple[int, RejectReason]]:
    result = world.ingest(events, received_at_ms=received_at_ms)
    return [(r.index, r.reason) for r in result.rejections]


# Rate matching -----------------------------------------------------------------------------------------------

MATCHING_RATES = [
    rate("tokens", unit("1")),  # rates[0]: catch-all
    rate("tokens", unit("2"), model="gpt4"),  # rates[1]: region left out
    rate("tokens", unit("3"), model="gpt4", region="us"),  # rates[2]: exact
    rate("tokens", unit("4"), model="*", region="eu"),  # rates[3]: "*" for model
    rate("tokens", unit("5"), model="gpt4", region="eu"),  # rates[4]: decides between rates[1] and rates[3]
]


@pytest.mark.parametrize(
    ("dimensions", "expected"),
    [
        # 10 tokens x the unit price of the rate that should win.
        pytest.param({"model": "gpt4", "region": "us"}, "30", id="exact-match-most-specific-wins"),  # 10 x 3
        pytest.param({"model": "gpt4", "region": "ap"}, "20", id="left-out-key-matches-anything"),  # 10 x 2
        pytest.param({"model": "claude", "region": "eu"}, "40", id="star-matches-anything"),  # 10 x 4
        pytest.param({"model": "claude", "region": "us"}, "10", id="catch-all"),  # 10 x 1
        pytest.param({"region": "us"}, "10", id="missing-dimension-matches-only-wildcards"),  # 10 x 1
        pytest.param({"model": "gpt4", "region": "us", "tier": "x"}, "30", id="unpriced-dimension-ignored"),  # 10 x 3
        pytest.param({"model": "gpt4", "region": "eu"}, "50", id="tie-resolved-by-more-specific-rate"),  # 10 x 5
    ],
)
def test_rate_matching_picks_most_specific_rate(dimensions: dict[str, str], expected: str) -> None:
    world = basic_world(MATCHING_RATES)
    assert validate(world.engine.state.rate_cards["card"].version(1), world.engine.state.products) == []
    assert world.charge_of(event("t1", T + 1, dimensions=dimensions, values={"tokens": 10})) == picos(expected)


def test_star_in_a_command_match_is_a_wildcard() -> None:
    # The rate card module promises '"*" or a left-out key matches anything'; a Rate whose match still holds
    # "*" (not normalized by a caller) must price any model, not only one literally named "*".
    world = World()
    world.product("tokens")
    world.rate_card()
    world.version([Rate("tokens", {"model": "*"}, unit("2"))])
    world.customer()
    world.contract()
    result = world.ingest([event("t1", T + 1, dimensions={"model": "gpt4"}, values={"tokens": 10})])
    assert result.rejections == []
    assert [e.charge for e in result.entries] == [picos("20")]  # 10 x 2


@pytest.mark.parametrize(
    ("rates", "parameters", "expected"),
    [
        pytest.param(
            [rate("tokens", unit("1"), model="gpt4"), rate("tokens", unit("2"), region="eu")],
            {},
            [(Severity.ERROR, "rates[1].match")],
            id="ambiguous-pair",
        ),
        pytest.param(
            [rate("tokens", unit("1"), model="gpt4"), rate("tokens", unit("2"), model="claude")],
            {},
            [],
            id="equally-specific-but-disjoint",
        ),
        pytest.param(
            [
                rate("tokens", unit("1"), model="gpt4"),
                rate("tokens", unit("2"), region="eu"),
                rate("tokens", unit("3"), model="gpt4", region="eu"),
            ],
            {},
            [],
            id="pair-decided-by-more-specific-rate",
        ),
        pytest.param(
            [rate("tokens", unit("cost * markup"))],
            {"cost": "1"},
            [(Severity.ERROR, "rates[0].unit.price")],
            id="unknown-parameter",
        ),
        pytest.param([rate("nope", unit("1"))], {}, [(Severity.ERROR, "rates[0].product_id")], id="unknown-product"),
        pytest.param(
            [rate("tokens", unit("1"), color="red")], {}, [(Severity.ERROR, "rates[0].match.color")], id="unpriced-key"
        ),
        pytest.param(
            [rate("tokens", unit("1", "0"))], {}, [(Severity.ERROR, "rates[0].unit.per_units")], id="per-units-zero"
        ),
        pytest.param([rate("tokens", unit("-1"))], {}, [(Severity.ERROR, "rates[0].unit.price")], id="negative-price"),
        pytest.param(
            [rate("tokens", unit("a / b"))],
            {"a": "1", "b": "0"},
            [(Severity.ERROR, "rates[0].unit.price")],
            id="formula-divides-by-zero",
        ),
        pytest.param(
            [rate("tokens", unit("2 ** 3"))], {}, [(Severity.ERROR, "rates[0].unit.price")], id="formula-power"
        ),
        pytest.param(
            [rate("tokens", tiered(TierMode.GRADUATED, ("100", "1"), ("50", "1"), ("", "1")))],
            {},
            [(Severity.ERROR, "rates[0].tiered.tiers[1].up_to")],
            id="tiers-not-ascending",
        ),
        pytest.param(
            [rate("tokens", tiered(TierMode.VOLUME, ("100", "1")))],
            {},
            [(Severity.ERROR, "rates[0].tiered.tiers")],
            id="last-tier-bounded",
        ),
        pytest.param(
            [rate("tokens", package("0", "1"))], {}, [(Severity.ERROR, "rates[0].package.package_size")], id="pkg-0"
        ),
        pytest.param([], {}, [(Severity.WARNING, "rates")], id="no-rates-warns"),
    ],
)
def test_validate_reports_findings_with_paths(
    rates: list[Rate], parameters: dict[str, str], expected: list[tuple[Severity, str]]
) -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    draft = world.draft(rates, parameters=parameters)
    findings = validate(draft, world.engine.state.products)
    assert [(f.severity, f.path) for f in findings] == expected


def test_publish_refuses_an_ambiguous_version_with_its_findings() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    draft = world.draft([rate("tokens", unit("1"), model="gpt4"), rate("tokens", unit("2"), region="eu")])
    seq = world.seq
    with pytest.raises(InvalidArgument) as refused:
        world.publish(draft.number)
    assert [field for field, _ in refused.value.violations] == ["version.rates[1].match"]
    assert world.seq == seq
    assert world.engine.state.rate_cards["card"].version(1).state is VersionState.DRAFT


def test_unknown_parameter_finding_names_the_parameter() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    draft = world.draft([rate("tokens", unit("cost * markup"))], parameters={"cost": "1"})
    [finding] = validate(draft, world.engine.state.products)
    assert "unknown parameter 'markup'" in finding.message


@pytest.mark.parametrize(
    ("rates", "effective_from_ms", "ts_ms", "dimensions"),
    [
        pytest.param(
            [rate("tokens", unit("1"), model="gpt4")], T, T + 1, {"model": "claude"}, id="no-rate-matches-dimensions"
        ),
        pytest.param(
            [rate("tokens", unit("1"))], T + HOUR_MS, T + 30 * MINUTE_MS, {}, id="no-version-in-force-at-timestamp"
        ),
    ],
)
def test_unpriceable_event_is_rejected_no_applicable_rate(
    rates: list[Rate], effective_from_ms: int, ts_ms: int, dimensions: dict[str, str]
) -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    world.version(rates, effective_from_ms=effective_from_ms)
    world.customer()
    world.contract()
    ev = event("t1", ts_ms, dimensions=dimensions, values={"tokens": 1})
    assert reasons(world, [ev], ts_ms) == [(0, RejectReason.NO_APPLICABLE_RATE)]
    assert world.engine.state.accounts["acme"].aggregates == {}


def test_version_in_force_from_its_effective_hour_prices_event() -> None:
    world = basic_world([])
    world.version([rate("tokens", unit("2"))], effective_from_ms=T + HOUR_MS)
    # rates of version 1 are empty: an event before T + 1h would have no rate; at T + 1h version 2 applies.
    entries = world.ingest_one(event("t1", T + HOUR_MS, values={"tokens": 3}))
    assert [(e.version, e.charge) for e in entries] == [(2, picos("6"))]  # 3 x 2


# Aggregations: charge = price(after) - price(before), unit price 2 -----------------------------------------------


@pytest.mark.parametrize(
    ("aggregation", "value_key", "events", "charges", "quantity"),
    [
        pytest.param(
            Aggregation.SUM,
            "tokens",
            [(1, {}, {"tokens": 3.0}), (2, {}, {"tokens": 4.5})],
            ["6", "9"],  # 3 x 2; (7.5 - 3) x 2
            "7.5",
            id="sum",
        ),
        pytest.param(
            Aggregation.COUNT,
            "",
            [(1, {}, {"tokens": 3.0}), (2, {}, {"tokens": 100.0}), (3, {}, {})],
            ["2", "2", "2"],  # one event each, whatever its values: 1 x 2
            "3",
            id="count-ignores-values",
        ),
        pytest.param(
            Aggregation.MAX,
            "tokens",
            [(1, {}, {"tokens": 5.0}), (2, {}, {"tokens": 3.0}), (3, {}, {"tokens": 8.0})],
            ["10", "0", "6"],  # 5 x 2; max stays 5; (8 - 5) x 2
            "8",
            id="max-charges-only-increases",
        ),
        pytest.param(
            Aggregation.UNIQUE_COUNT,
            "user",
            [(1, {"user": "u1"}, {}), (2, {"user": "u2"}, {}), (3, {"user": "u1"}, {})],
            ["2", "2", "0"],  # new, new, seen
            "2",
            id="unique-count-charges-only-new-values",
        ),
        pytest.param(
            Aggregation.LATEST,
            "tokens",
            [
                (10, {}, {"tokens": 5.0}),
                (20, {}, {"tokens": 8.0}),
                (15, {}, {"tokens": 100.0}),  # older than the latest seen: does not move the gauge
                (30, {}, {"tokens": 2.0}),
            ],
            ["10", "6", "0", "-12"],  # 5 x 2; (8 - 5) x 2; 0; (2 - 8) x 2
            "2",
            id="latest-follows-latest-timestamp",
        ),
        pytest.param(
            Aggregation.LATEST,
            "tokens",
            [(10, {}, {"tokens": 5.0}), (10, {}, {"tokens": 7.0})],
            ["10", "4"],  # a tie in timestamp goes to the later arrival: (7 - 5) x 2
            "7",
            id="latest-tie-goes-to-later-arrival",
        ),
    ],
)
def test_aggregation_charges_price_after_minus_price_before(
    aggregation: Aggregation,
    value_key: str,
    events: list[tuple[int, dict[str, str], dict[str, float]]],
    charges: list[str],
    quantity: str,
) -> None:
    world = basic_world([rate("tokens", unit("2"))], aggregation=aggregation, value_key=value_key)
    got = [
        world.charge_of(event(f"t{i}", T + offset, dimensions=dims, values=values))
        for i, (offset, dims, values) in enumerate(events)
    ]
    assert got == [picos(c) for c in charges]
    [aggregate] = world.engine.state.accounts["acme"].aggregates.values()
    assert aggregate.quantity == Decimal(quantity)
    assert aggregate.events == len(events)
    assert aggregate.amount == sum(got)


# Price kinds: each row feeds SUM quantities into one aggregate -------------------------------------------------

GRADUATED = tiered(TierMode.GRADUATED, ("100", "1"), ("200", "0.5"), ("", "0.25"))
VOLUME = tiered(TierMode.VOLUME, ("100", "1"), ("200", "0.5"), ("", "0.25"))


@pytest.mark.parametrize(
    ("price", "quantities", "charges"),
    [
        pytest.param(unit("0.03", "1000"), [1500, 500], ["0.045", "0.015"], id="unit-per-1000"),  # 1500 x 0.03 / 1000
        pytest.param(
            unit("1", "3"),
            [1, 1, 1],
            # price(1) = 0.333333333333; price(2) = 0.666666666667 (half-even at 10^-12); price(3) = 1
            ["0.333333333333", "0.333333333334", "0.333333333333"],
            id="unit-rounding-telescopes",
        ),
        pytest.param(
            GRADUATED,
            [150, 100],
            # price(150) = 100 x 1 + 50 x 0.5 = 125; price(250) = 100 + 100 x 0.5 + 50 x 0.25 = 162.5
            ["125", "37.5"],
            id="tiered-graduated",
        ),
        pytest.param(
            tiered(TierMode.GRADUATED, ("10", "0", "5"), ("", "1", "2")),
            [4, 10],
            # price(4) = 0 + flat 5 = 5; price(14) = 5 + (4 x 1 + flat 2) = 11
            ["5", "6"],
            id="tiered-graduated-flat-fees",
        ),
        pytest.param(
            VOLUME,
            [50, 50, 50, 100],
            # price(50) = 50 x 1; price(100) = 100 x 1 (up_to is inclusive); price(150) = 150 x 0.5 = 75;
            # price(250) = 250 x 0.25 = 62.5
            ["50", "50", "-25", "-12.5"],
            id="tiered-volume",
        ),
        pytest.param(
            tiered(TierMode.VOLUME, ("1000", "2"), ("", "1", "3"), per_units="1000"),
            [500, 1000],
            # price(500) = 500 x 2 / 1000 = 1; price(1500) = 1500 x 1 / 1000 + flat 3 = 4.5
            ["1", "3.5"],
            id="tiered-volume-per-units-flat",
        ),
        pytest.param(
            package("1000", "2"),
            [1, 999, 1, 2500],
            # ceil(1/1000) x 2 = 2; ceil(1000/1000) x 2 = 2; ceil(1001/1000) x 2 = 4; ceil(3501/1000) x 2 = 8
            ["2", "0", "2", "4"],
            id="package-rounded-up",
        ),
        pytest.param(flat("20"), [1, 5, 100], ["20", "0", "0"], id="flat-once-per-aggregate"),
    ],
)
def test_price_kind_charges(price: PriceSpec, quantities: list[int], charges: list[str]) -> None:
    world = basic_world([rate("tokens", price)])
    got = [world.charge_of(event(f"t{i}", T + i + 1, values={"tokens": float(q)})) for i, q in enumerate(quantities)]
    assert got == [picos(c) for c in charges]


def test_flat_price_charges_each_aggregate_once() -> None:
    world = basic_world([rate("tokens", flat("20"))])
    got = [
        world.charge_of(event("t1", T + 1, dimensions={"model": "gpt4"}, values={"tokens": 1})),
        world.charge_of(event("t2", T + 2, dimensions={"model": "claude"}, values={"tokens": 1})),
        world.charge_of(event("t3", T + 3, dimensions={"model": "gpt4"}, values={"tokens": 1})),
    ]
    assert got == [picos("20"), picos("20"), 0]  # two aggregates (gpt4, claude), each charged once


# Formulas ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("parameters", "formula", "quantity", "expected"),
    [
        pytest.param(
            {"gpt4_cost_per_1k": "0.03", "markup": "1.5"},
            "gpt4_cost_per_1k * markup / 1000",
            2000,
            "0.09",  # 0.03 x 1.5 / 1000 = 0.000045 per token; x 2000
            id="parameters",
        ),
        pytest.param({"a": "1", "b": "0.25"}, "(a - b) * 2", 2, "3", id="parentheses"),  # 1.5 x 2
        pytest.param({"a": "0.5", "b": "0.2"}, "min(a, b)", 10, "2", id="min"),  # 0.2 x 10
        pytest.param({"a": "0.5", "b": "0.2"}, "max(a, b, 0.7)", 10, "7", id="max"),  # 0.7 x 10
        pytest.param({"a": "0.125"}, "round(a, 2)", 100, "12", id="round-half-even"),  # 0.12 x 100
        pytest.param({}, "round(2.5)", 3, "6", id="round-to-integer"),  # 2 x 3
        pytest.param({"a": "0.25"}, "-a + 1", 4, "3", id="unary-minus"),  # 0.75 x 4
        # 1/3 at 60 digits, x 3 = 0.99...9 (60 digits), rounded half-even to 10^-12: exactly 1.
        pytest.param({}, "1 / 3", 3, "1", id="division"),
        pytest.param({}, "1 / 3", 1, "0.333333333333", id="division-rounded-once"),
    ],
)
def test_formula_price(parameters: dict[str, str], formula: str, quantity: int, expected: str) -> None:
    world = basic_world([rate("tokens", unit(formula))], parameters=parameters)
    assert world.charge_of(event("t1", T + 1, values={"tokens": float(quantity)})) == picos(expected)


def test_draft_with_one_changed_parameter_prices_usage_from_its_effective_hour() -> None:
    cut = T + 2 * DAY_MS
    world = basic_world([rate("tokens", unit("cost", "1000"))], parameters={"cost": "0.03"})
    world.draft(based_on=1, parameters={"cost": "0.02"})
    world.publish(2, effective_from_ms=cut, at_ms=T + DAY_MS)
    # Ingested out of order on purpose: the version is picked by each event's timestamp, not by arrival.
    priced = [
        (e.version, e.charge)
        for ev in [
            event("after", cut + HOUR_MS, values={"tokens": 1000}),
            event("before", cut - 1, values={"tokens": 1000}),
            event("at", cut, values={"tokens": 1000}),
        ]
        for e in world.ingest_one(ev, received_at_ms=cut + HOUR_MS)
    ]
    # 1000 tokens x 0.02 / 1000 = 0.02 from the cut on; 0.03 before it.
    assert priced == [(2, picos("0.02")), (1, picos("0.03")), (2, picos("0.02"))]
    version2 = world.engine.state.rate_cards["card"].version(2)
    assert version2.parameters == {"cost": "0.02"}
    assert version2.rates == world.engine.state.rate_cards["card"].version(1).rates


# Versions -------------------------------------------------------------------------------------------------------


def test_publish_off_the_hour_is_invalid_argument() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    world.draft([rate("tokens", unit("1"))])
    seq = world.seq
    with pytest.raises(InvalidArgument) as refused:
        world.publish(1, effective_from_ms=T + 30 * MINUTE_MS)
    assert [field for field, _ in refused.value.violations] == ["effective_from"]
    assert world.seq == seq
    assert world.engine.state.rate_cards["card"].version(1).state is VersionState.DRAFT


def test_publishing_twice_is_failed_precondition() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    world.version([rate("tokens", unit("1"))])
    with pytest.raises(FailedPrecondition):
        world.publish(1, effective_from_ms=T + HOUR_MS)
    assert world.engine.state.rate_cards["card"].timeline == [(T, 1)]


def test_publish_without_effective_from_starts_at_the_current_hour() -> None:
    world = World()
    world.product("tokens")
    world.rate_card()
    world.draft([rate("tokens", unit("1"))])
    result = world.publish(1, effective_from_ms=None, at_ms=T + 90 * MINUTE_MS)
    assert result.version.effective_from_ms == T + HOUR_MS  # 01:30 -> 01:00


def test_effective_from_in_the_past_prices_late_events_by_version_in_force_at_their_timestamp() -> None:
    now = T + 10 * HOUR_MS
    world = basic_world([rate("tokens", unit("1"))])
    world.version([rate("tokens", unit("3"))], effective_from_ms=T + 5 * HOUR_MS, at_ms=now)
    priced = [
        (e.transaction_id, e.version, e.charge)
        for ev in [
            event("late-under-v2", T + 6 * HOUR_MS, values={"tokens": 2}),
            event("late-under-v1", T + 4 * HOUR_MS, values={"tokens": 2}),
        ]
        for e in world.ingest_one(ev, received_at_ms=now)
    ]
    assert priced == [("late-under-v2", 2, picos("6")), ("late-under-v1", 1, picos("2"))]  # 2 x 3; 2 x 1


def test_same_effective_from_later_publication_wins() -> None:
    # RateCard.version_number_at: "The newest-effective published version in force at ts_ms (later
    # publication wins a tie)". Version 2 is published first, version 1 later, both from T.
    world = World()
    world.product("tokens")
    world.rate_card()
    world.draft([rate("tokens", unit("1"))])
    world.draft([rate("tokens", unit("2"))])
    world.publish(2, effective_from_ms=T, at_ms=T)
    world.publish(1, effective_from_ms=T, at_ms=T + MINUTE_MS)
    world.customer()
    world.contract()
    [entry] = world.ingest_one(event("t1", T + 2 * MINUTE_MS, values={"tokens": 1}))
    assert (entry.version, entry.charge) == (1, picos("1"))


# Ingestion rules -------------------------------------------------------------------------------------------------

START = T + DAY_MS
END = T + 31 * DAY_MS
NOW = T + 2 * DAY_MS


def good(transaction_id: str) -> cmd.UsageEvent:
    return event(transaction_id, NOW, values={"tokens": 5})


def ingestion_world() -> World:
    """Contract from START (T + 1 day) to END (T + 31 days); batches are received at NOW (T + 2 days)."""
    return basic_world(contract_start_ms=START, contract_end_ms=END)


@pytest.mark.parametrize(
    ("bad", "reason", "received_at_ms"),
    [
        pytest.param(
            event("", NOW, values={"tokens": 1}), RejectReason.INVALID_EVENT, NOW, id="missing-transaction-id"
        ),
        pytest.param(
            event("x", NOW, customer_id="", values={"tokens": 1}),
            RejectReason.INVALID_EVENT,
            NOW,
            id="missing-customer",
        ),
        pytest.param(
            event("x", NOW, event_type="", values={"tokens": 1}),
            RejectReason.INVALID_EVENT,
            NOW,
            id="missing-event-type",
        ),
        pytest.param(event("x", 0, values={"tokens": 1}), RejectReason.INVALID_EVENT, NOW, id="missing-timestamp"),
        pytest.param(event("x", NOW, values={"tokens": float("nan")}), RejectReason.INVALID_EVENT, NOW, id="nan"),
        pytest.param(event("x", NOW, values={"tokens": float("inf")}), RejectReason.INVALID_EVENT, NOW, id="inf"),
        pytest.param(
            event("x", NOW, values={"tokens": float("-inf")}), RejectReason.INVALID_EVENT, NOW, id="minus-inf"
        ),
        pytest.param(event("x", NOW, values={"tokens": -1.0}), RejectReason.INVALID_EVENT, NOW, id="negative-value"),
        pytest.param(event("x", NOW, values={"other": 1.0}), RejectReason.INVALID_EVENT, NOW, id="missing-value-key"),
        pytest.param(
            event("x", NOW, customer_id="ghost", values={"tokens": 1}),
            RejectReason.UNKNOWN_CUSTOMER,
            NOW,
            id="unknown-customer",
        ),
        pytest.param(
            event("x", START - 1, values={"tokens": 1}),
            RejectReason.NO_ACTIVE_CONTRACT,
            NOW,
            id="before-contract-start",
        ),
        pytest.param(
            event("x", END, values={"tokens": 1}), RejectReason.NO_ACTIVE_CONTRACT, END, id="at-contract-ending-before"
        ),
        pytest.param(
            event("x", NOW + 5 * MINUTE_MS + 1, values={"tokens": 1}),
            RejectReason.TIMESTAMP_OUT_OF_RANGE,
            NOW,
            id="more-than-5-min-future",
        ),
    ],
)
def test_bad_event_is_rejected_without_sinking_its_batch(
    bad: cmd.UsageEvent, reason: RejectReason, received_at_ms: int
) -> None:
    world = ingestion_world()
    result = world.ingest([good("g1"), bad, good("g2")], received_at_ms=received_at_ms)
    assert (result.accepted, result.duplicates) == (2, 0)
    assert [(r.index, r.transaction_id, r.reason) for r in result.rejections] == [(1, bad.transaction_id, reason)]
    assert [e.transaction_id for e in result.entries] == ["g1", "g2"]
    assert world.engine.state.accounts["acme"].period_charges == {START: picos("10")}  # 2 events x 5 x 1


def test_timestamp_exactly_5_min_in_the_future_is_accepted() -> None:
    world = ingestion_world()
    result = world.ingest([event("x", NOW + 5 * MINUTE_MS, values={"tokens": 1})], received_at_ms=NOW)
    assert (result.accepted, result.rejections) == (1, [])


def test_identical_resend_in_one_batch_is_a_duplicate_changing_nothing() -> None:
    world = ingestion_world()
    result = world.ingest([good("g1"), good("g1")], received_at_ms=NOW)
    assert (result.accepted, result.duplicates, result.rejections) == (1, 1, [])
    assert [e.transaction_id for e in result.entries] == ["g1"]
    assert world.engine.state.accounts["acme"].period_charges == {START: picos("5")}


def test_identical_resend_in_a_later_batch_is_a_duplicate_changing_nothing() -> None:
    world = ingestion_world()
    world.ingest([good("g1")], received_at_ms=NOW)
    accounts_before = msgspec.msgpack.encode(world.engine.state.accounts)
    resend = event("g1", NOW, values={"tokens": 5}, dimensions={})
    result = world.ingest([resend], received_at_ms=NOW + HOUR_MS)  # `known` comes from the dedupe index
    assert (result.accepted, result.duplicates, result.rejections, result.entries) == (0, 1, [], [])
    assert result.accepted_transactions == {}
    assert msgspec.msgpack.encode(world.engine.state.accounts) == accounts_before


def test_resend_with_maps_in_another_order_is_a_duplicate() -> None:
    world = ingestion_world()
    first = event("g1", NOW, dimensions={"model": "gpt4", "region": "us"}, values={"tokens": 5, "x": 1})
    again = event("g1", NOW, dimensions={"region": "us", "model": "gpt4"}, values={"x": 1, "tokens": 5})
    result = world.ingest([first, again], received_at_ms=NOW)
    assert (result.accepted, result.duplicates, result.rejections) == (1, 1, [])


def test_same_id_with_different_content_in_one_batch_is_duplicate_conflict() -> None:
    world = ingestion_world()
    other = event("g1", NOW, values={"tokens": 6})
    result = world.ingest([good("g1"), other], received_at_ms=NOW)
    assert (result.accepted, result.duplicates) == (1, 0)
    assert [(r.index, r.reason) for r in result.rejections] == [(1, RejectReason.DUPLICATE_CONFLICT)]
    assert world.engine.state.accounts["acme"].period_charges == {START: picos("5")}


def test_same_id_with_different_content_via_known_is_duplicate_conflict() -> None:
    world = ingestion_world()
    world.ingest([good("g1")], received_at_ms=NOW)
    result = world.ingest([event("g1", NOW, values={"tokens": 6})], received_at_ms=NOW)
    assert [(r.index, r.reason) for r in result.rejections] == [(0, RejectReason.DUPLICATE_CONFLICT)]
    assert world.engine.state.accounts["acme"].period_charges == {START: picos("5")}


def test_explicit_known_hash_decides_duplicates() -> None:
    world = ingestion_world()
    # The content hash of "g1" as an earlier batch (here: another engine) accepted it.
    digest = ingestion_world().ingest([good("g1")], received_at_ms=NOW).accepted_transactions["g1"]
    result = world.ingest([good("g1"), good("g2")], received_at_ms=NOW, known={"g1": digest})
    assert (result.accepted, result.duplicates, result.rejections) == (1, 1, [])
    result = world.ingest([event("g3", NOW, values={"tokens": 1})], received_at_ms=NOW, known={"g3": digest})
    assert [r.reason for r in result.rejections] == [RejectReason.DUPLICATE_CONFLICT]


def test_rejected_event_does_not_reserve_its_transaction_id() -> None:
    world = ingestion_world()
    result = world.ingest([event("g1", NOW, customer_id="ghost", values={"tokens": 5}), good("g1")], received_at_ms=NOW)
    assert (result.accepted, result.duplicates) == (1, 0)
    assert [(r.index, r.reason) for r in result.rejections] == [(0, RejectReason.UNKNOWN_CUSTOMER)]


def test_mixed_batch_counts_every_event_once() -> None:
    world = ingestion_world()
    world.ingest([good("old")], received_at_ms=NOW)
    batch = [
        good("a"),
        good("a"),  # duplicate in batch
        good("old"),  # duplicate via known
        event("a", NOW, values={"tokens": 9}),  # conflict
        event("b", NOW, values={"tokens": -1}),  # invalid
        event("c", START - 1, values={"tokens": 1}),  # no contract
        good("d"),
    ]
    result = world.ingest(batch, received_at_ms=NOW)
    assert (result.accepted, result.duplicates, len(result.rejections)) == (2, 2, 3)
    assert result.accepted + result.duplicates + len(result.rejections) == len(batch)
    assert sorted(result.accepted_transactions) == ["a", "d"]


# Periods -----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("anchor", "ts", "start", "end"),
    [
        pytest.param(ms(2026, 1, 31), ms(2026, 1, 31), ms(2026, 1, 31), ms(2026, 2, 28), id="first-period"),
        pytest.param(ms(2026, 1, 31), ms(2026, 2, 27, 23, 59), ms(2026, 1, 31), ms(2026, 2, 28), id="end-of-first"),
        pytest.param(ms(2026, 1, 31), ms(2026, 2, 28), ms(2026, 2, 28), ms(2026, 3, 31), id="feb-28-clamped"),
        pytest.param(ms(2026, 1, 31), ms(2026, 3, 30), ms(2026, 2, 28), ms(2026, 3, 31), id="back-to-31"),
        pytest.param(ms(2026, 1, 31), ms(2026, 3, 31), ms(2026, 3, 31), ms(2026, 4, 30), id="mar-31"),
        pytest.param(ms(2026, 1, 31), ms(2027, 1, 31), ms(2027, 1, 31), ms(2027, 2, 28), id="a-year-on"),
        pytest.param(ms(2028, 1, 31), ms(2028, 2, 28), ms(2028, 1, 31), ms(2028, 2, 29), id="leap-year-feb-28"),
        pytest.param(ms(2028, 1, 31), ms(2028, 2, 29), ms(2028, 2, 29), ms(2028, 3, 31), id="leap-year-feb-29"),
        pytest.param(
            ms(2026, 1, 15, 12), ms(2026, 2, 15, 11, 59), ms(2026, 1, 15, 12), ms(2026, 2, 15, 12), id="time-of-day"
        ),
    ],
)
def test_period_containing_anchored_monthly(anchor: int, ts: int, start: int, end: int) -> None:
    assert period_containing(anchor, ts) == Period(start, end)


def test_events_in_different_periods_aggregate_separately() -> None:
    anchor = ms(2026, 1, 31)
    world = basic_world([rate("tokens", flat("20"))], contract_start_ms=anchor)
    got = [
        world.charge_of(event("jan", ms(2026, 2, 27), values={"tokens": 1})),
        world.charge_of(event("feb", ms(2026, 2, 28), values={"tokens": 1})),
        world.charge_of(event("feb2", ms(2026, 3, 1), values={"tokens": 1})),
    ]
    assert got == [picos("20"), picos("20"), 0]  # flat once per period per aggregate
    account = world.engine.state.accounts["acme"]
    assert sorted(key[0] for key in account.aggregates) == [anchor, ms(2026, 2, 28)]
    assert account.period_charges == {anchor: picos("20"), ms(2026, 2, 28): picos("20")}
    view = world.engine.balance("acme", ms(2026, 3, 5))
    assert view.period == Period(ms(2026, 2, 28), ms(2026, 3, 31))
    assert view.period_charges == picos("20")


# Overrides ---------------------------------------------------------------------------------------------------------

GPT4 = {"model": "gpt4"}
CLAUDE = {"model": "claude"}


@pytest.mark.parametrize(
    ("price", "multiplier", "override_price", "window", "usage"),
    [
        pytest.param(
            unit("1"),
            "0.5",
            None,
            (T + DAY_MS, T + 2 * DAY_MS),
            [
                (T + DAY_MS - 1, GPT4, "10"),  # before the window: 10 x 1
                (T + DAY_MS, GPT4, "5"),  # inside: 10 x 1 x 0.5
                (T + DAY_MS + 1, CLAUDE, "10"),  # inside, but the override matches gpt4 only
                (T + 2 * DAY_MS, GPT4, "10"),  # the window has ended
            ],
            id="multiplier-in-window",
        ),
        pytest.param(
            unit("1"),
            None,
            "0.25",
            (T, None),
            [(T + 1, GPT4, "2.5"), (T + 2, GPT4, "2.5")],  # 10 x 0.25
            id="price",
        ),
        pytest.param(
            unit("30", "1000"),
            None,
            "0.02",
            (T, None),
            [(T + 1, GPT4, "0.0002")],  # keeps the rate's per_units: 10 x 0.02 / 1000
            id="price-keeps-per-units",
        ),
        pytest.param(
            GRADUATED,
            "2",
            None,
            (T, None),
            [(T + 1, GPT4, "20"), (T + 2, GPT4, "20")],  # first tier at 1, x 2, for 10 tokens; twice
            id="multiplier-on-tiered",
        ),
    ],
)
def test_override_changes_the_price_inside_its_window(
    price: PriceSpec,
    multiplier: str | None,
    override_price: str | None,
    window: tuple[int, int | None],
    usage: list[tuple[int, dict[str, str], str]],
) -> None:
    world = basic_world([rate("tokens", price)])
    world.override(
        "tokens",
        multiplier=multiplier,
        price=override_price,
        match=GPT4,
        starting_at_ms=window[0],
        ending_before_ms=window[1],
    )
    got = [
        world.charge_of(event(f"t{i}", ts, dimensions=dims, values={"tokens": 10}))
        for i, (ts, dims, _) in enumerate(usage)
    ]
    assert got == [picos(expected) for _, _, expected in usage]


def test_most_specific_override_wins() -> None:
    world = basic_world([rate("tokens", unit("1"))])
    world.override("tokens", multiplier="2", override_id="all")
    world.override("tokens", price="0.1", match=GPT4, override_id="gpt4")
    got = [
        world.charge_of(event("t1", T + 1, dimensions=GPT4, values={"tokens": 10})),
        world.charge_of(event("t2", T + 2, dimensions=CLAUDE, values={"tokens": 10})),
    ]
    assert got == [picos("1"), picos("20")]  # 10 x 0.1; 10 x 1 x 2
