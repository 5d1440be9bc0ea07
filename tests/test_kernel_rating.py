"""Rating in the kernel, case by case: which rate prices an event, how aggregates turn into charges, price
models, formulas, versions in force, ingestion rules, periods and overrides (docs/architecture.md §3, §5).
The control plane is set up through its commands, compiled by engine/tables.py and rated by engine._kernel
over UsageBatch bytes. Every amount is computed by hand in the table and compared exactly, in picos."""

from __future__ import annotations

import pytest
from tariff.v1 import usage_pb2

from engine.products import Aggregation
from engine.ratecard import PriceSpec, Rate, TierMode, validate
from tests.engine_fixtures import (
    DAY_MS,
    EPOCH_MS,
    HOUR_MS,
    MINUTE_MS,
    World,
    basic_world,
    flat,
    ms,
    package,
    picos,
    rate,
    tiered,
    unit,
)
from tests.kernel_fixtures import KernelWorld, usage_event

T = EPOCH_MS
REJECT = usage_pb2.RejectReason


def loaded(world: World) -> KernelWorld:
    kernel = KernelWorld(world)
    kernel.load()
    return kernel


def tokens(transaction_id: str, ts_ms: int, amount: float, **dimensions: str) -> usage_pb2.UsageEvent:
    return usage_event(transaction_id, ts_ms, {"tokens": amount}, dimensions=dimensions)


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
    assert loaded(world).charge_of(tokens("t1", T + 1, 10, **dimensions)) == picos(expected)


def test_star_in_a_command_match_is_a_wildcard() -> None:
    # A Rate whose match still holds "*" (not normalized by a caller) must price any model, not only one
    # literally named "*".
    world = World()
    world.product("tokens")
    world.rate_card()
    world.version([Rate("tokens", {"model": "*"}, unit("2"))])
    world.customer()
    world.contract()
    assert loaded(world).charge_of(tokens("t1", T + 1, 10, model="gpt4")) == picos("20")  # 10 x 2


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
    kernel = loaded(world)
    ack = kernel.ingest([tokens("t1", ts_ms, 1, **dimensions)], ts_ms)
    assert [(r.index, r.reason) for r in ack.rejected] == [(0, REJECT.NO_APPLICABLE_RATE)]
    assert kernel.charged() == 0


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
    kernel = loaded(basic_world([rate("tokens", unit("2"))], aggregation=aggregation, value_key=value_key))
    got = [
        kernel.charge_of(usage_event(f"t{i}", T + offset, values, dimensions=dims), T + 100)
        for i, (offset, dims, values) in enumerate(events)
    ]
    assert got == [picos(c) for c in charges]
    usage = kernel.kernel.usage("acme")
    assert usage is not None
    [(_period, _product, _dimensions, quantity_e18, event_count, amount, _overage, _drawn)] = usage[0]
    assert quantity_e18 == picos(quantity) * 10**6  # quantities are held at 10^-18
    assert event_count == len(events)
    assert amount == sum(got)


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
    kernel = loaded(basic_world([rate("tokens", price)]))
    got = [kernel.charge_of(tokens(f"t{i}", T + i + 1, float(q))) for i, q in enumerate(quantities)]
    assert got == [picos(c) for c in charges]


def test_flat_price_charges_each_aggregate_once() -> None:
    kernel = loaded(basic_world([rate("tokens", flat("20"))]))
    got = [
        kernel.charge_of(tokens("t1", T + 1, 1, model="gpt4")),
        kernel.charge_of(tokens("t2", T + 2, 1, model="claude")),
        kernel.charge_of(tokens("t3", T + 3, 1, model="gpt4")),
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
        pytest.param({"a": "0.5", "b": "4"}, "a / b", 3, "0.375", id="division"),  # 0.125 x 3
        # 1/3 is rounded half-even to 18 places once, when the version is compiled; x 3 = 0.999999999999999999,
        # rounded half-even to 10^-12: exactly 1.
        pytest.param({}, "1 / 3", 3, "1", id="division-rounded-to-18-places"),
        pytest.param({}, "1 / 3", 1, "0.333333333333", id="division-rounded-once"),
    ],
)
def test_formula_price(parameters: dict[str, str], formula: str, quantity: int, expected: str) -> None:
    kernel = loaded(basic_world([rate("tokens", unit(formula))], parameters=parameters))
    assert kernel.charge_of(tokens("t1", T + 1, float(quantity))) == picos(expected)


# Versions -------------------------------------------------------------------------------------------------------


def test_draft_with_one_changed_parameter_prices_usage_from_its_effective_hour() -> None:
    cut = T + 2 * DAY_MS
    world = basic_world([rate("tokens", unit("cost", "1000"))], parameters={"cost": "0.03"})
    world.draft(based_on=1, parameters={"cost": "0.02"})
    world.publish(2, effective_from_ms=cut, at_ms=T + DAY_MS)
    kernel = loaded(world)
    # Ingested out of order on purpose: the version is picked by each event's timestamp, not by arrival.
    charges = [
        kernel.charge_of(tokens("after", cut + HOUR_MS, 1000), cut + HOUR_MS),
        kernel.charge_of(tokens("before", cut - 1, 1000), cut + HOUR_MS),
        kernel.charge_of(tokens("at", cut, 1000), cut + HOUR_MS),
    ]
    # 1000 tokens x 0.02 / 1000 = 0.02 from the cut on; 0.03 before it.
    assert charges == [picos("0.02"), picos("0.03"), picos("0.02")]
    assert kernel.charged_by_version() == {1: picos("0.03"), 2: picos("0.04")}


def test_version_in_force_from_its_effective_hour_prices_event() -> None:
    world = basic_world([])
    world.version([rate("tokens", unit("2"))], effective_from_ms=T + HOUR_MS)
    # rates of version 1 are empty: an event before T + 1h would have no rate; at T + 1h version 2 applies.
    kernel = loaded(world)
    assert kernel.charge_of(tokens("t1", T + HOUR_MS, 3)) == picos("6")  # 3 x 2
    assert kernel.charged_by_version() == {2: picos("6")}


def test_effective_from_in_the_past_prices_late_events_by_version_in_force_at_their_timestamp() -> None:
    now = T + 10 * HOUR_MS
    world = basic_world([rate("tokens", unit("1"))])
    world.version([rate("tokens", unit("3"))], effective_from_ms=T + 5 * HOUR_MS, at_ms=now)
    kernel = loaded(world)
    assert kernel.charge_of(tokens("late-under-v2", T + 6 * HOUR_MS, 2), now) == picos("6")  # 2 x 3
    assert kernel.charge_of(tokens("late-under-v1", T + 4 * HOUR_MS, 2), now) == picos("2")  # 2 x 1
    assert kernel.charged_by_version() == {1: picos("2"), 2: picos("6")}


def test_same_effective_from_later_publication_wins() -> None:
    # Version 2 is published first, version 1 later, both from T: of two versions effective at once, the
    # later published wins.
    world = World()
    world.product("tokens")
    world.rate_card()
    world.draft([rate("tokens", unit("1"))])
    world.draft([rate("tokens", unit("2"))])
    world.publish(2, effective_from_ms=T, at_ms=T)
    world.publish(1, effective_from_ms=T, at_ms=T + MINUTE_MS)
    world.customer()
    world.contract()
    kernel = loaded(world)
    assert kernel.charge_of(tokens("t1", T + 2 * MINUTE_MS, 1)) == picos("1")
    assert kernel.charged_by_version() == {1: picos("1")}


# Ingestion rules -------------------------------------------------------------------------------------------------

START = T + DAY_MS
END = T + 31 * DAY_MS
NOW = T + 2 * DAY_MS


def good(transaction_id: str) -> usage_pb2.UsageEvent:
    return tokens(transaction_id, NOW, 5)


def ingestion_world() -> KernelWorld:
    """Contract from START (T + 1 day) to END (T + 31 days); batches are received at NOW (T + 2 days)."""
    return loaded(basic_world(contract_start_ms=START, contract_end_ms=END))


@pytest.mark.parametrize(
    ("bad", "reason", "received_ms"),
    [
        pytest.param(tokens("", NOW, 1), REJECT.INVALID_EVENT, NOW, id="missing-transaction-id"),
        pytest.param(
            usage_event("x", NOW, {"tokens": 1}, customer_id=""), REJECT.INVALID_EVENT, NOW, id="missing-customer"
        ),
        pytest.param(
            usage_event("x", NOW, {"tokens": 1}, event_type=""), REJECT.INVALID_EVENT, NOW, id="missing-event-type"
        ),
        pytest.param(tokens("x", 0, 1), REJECT.INVALID_EVENT, NOW, id="missing-timestamp"),
        pytest.param(tokens("x", NOW, float("nan")), REJECT.INVALID_EVENT, NOW, id="nan"),
        pytest.param(tokens("x", NOW, float("inf")), REJECT.INVALID_EVENT, NOW, id="inf"),
        pytest.param(tokens("x", NOW, float("-inf")), REJECT.INVALID_EVENT, NOW, id="minus-inf"),
        pytest.param(tokens("x", NOW, -1.0), REJECT.INVALID_EVENT, NOW, id="negative-value"),
        pytest.param(usage_event("x", NOW, {"other": 1.0}), REJECT.INVALID_EVENT, NOW, id="missing-value-key"),
        pytest.param(
            usage_event("x", NOW, {"tokens": 1}, customer_id="ghost"), REJECT.UNKNOWN_CUSTOMER, NOW, id="unknown"
        ),
        pytest.param(tokens("x", START - 1, 1), REJECT.NO_ACTIVE_CONTRACT, NOW, id="before-contract-start"),
        pytest.param(tokens("x", END, 1), REJECT.NO_ACTIVE_CONTRACT, END, id="at-contract-ending-before"),
        pytest.param(
            tokens("x", NOW + 5 * MINUTE_MS + 1, 1), REJECT.TIMESTAMP_OUT_OF_RANGE, NOW, id="more-than-5-min-future"
        ),
    ],
)
def test_bad_event_is_rejected_without_sinking_its_batch(
    bad: usage_pb2.UsageEvent, reason: int, received_ms: int
) -> None:
    kernel = ingestion_world()
    ack = kernel.ingest([good("g1"), bad, good("g2")], received_ms)
    assert (ack.accepted, ack.duplicates) == (2, 0)
    assert [(r.index, r.transaction_id, r.reason) for r in ack.rejected] == [(1, bad.transaction_id, reason)]
    assert kernel.charged() == picos("10")  # 2 events x 5 x 1


def test_timestamp_exactly_5_min_in_the_future_is_accepted() -> None:
    kernel = ingestion_world()
    ack = kernel.ingest([tokens("x", NOW + 5 * MINUTE_MS, 1)], NOW)
    assert (ack.accepted, list(ack.rejected)) == (1, [])


def test_identical_resend_in_one_batch_is_a_duplicate_changing_nothing() -> None:
    kernel = ingestion_world()
    ack = kernel.ingest([good("g1"), good("g1")], NOW)
    assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (1, 1, [])
    assert kernel.charged() == picos("5")


def test_identical_resend_in_a_later_batch_is_a_duplicate_changing_nothing() -> None:
    kernel = ingestion_world()
    kernel.ingest([good("g1")], NOW)
    before = kernel.kernel.snapshot()
    ack = kernel.ingest([good("g1")], NOW + HOUR_MS)
    assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (0, 1, [])
    assert kernel.kernel.snapshot() == before


def test_resend_with_maps_in_another_order_is_a_duplicate() -> None:
    kernel = ingestion_world()
    first = usage_event("g1", NOW, {"tokens": 5, "x": 1}, dimensions={"model": "gpt4", "region": "us"})
    again = usage_event("g1", NOW, {"x": 1, "tokens": 5}, dimensions={"region": "us", "model": "gpt4"})
    ack = kernel.ingest([first, again], NOW)
    assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (1, 1, [])


def test_same_id_with_different_content_in_one_batch_is_duplicate_conflict() -> None:
    kernel = ingestion_world()
    ack = kernel.ingest([good("g1"), tokens("g1", NOW, 6)], NOW)
    assert (ack.accepted, ack.duplicates) == (1, 0)
    assert [(r.index, r.reason) for r in ack.rejected] == [(1, REJECT.DUPLICATE_CONFLICT)]
    assert kernel.charged() == picos("5")


def test_same_id_with_different_content_in_a_later_batch_is_duplicate_conflict() -> None:
    kernel = ingestion_world()
    kernel.ingest([good("g1")], NOW)
    ack = kernel.ingest([tokens("g1", NOW, 6)], NOW)
    assert [(r.index, r.reason) for r in ack.rejected] == [(0, REJECT.DUPLICATE_CONFLICT)]
    assert kernel.charged() == picos("5")


def test_rejected_event_does_not_reserve_its_transaction_id() -> None:
    kernel = ingestion_world()
    ghost = usage_event("g1", NOW, {"tokens": 5}, customer_id="ghost")
    ack = kernel.ingest([ghost, good("g1")], NOW)
    assert (ack.accepted, ack.duplicates) == (1, 0)
    assert [(r.index, r.reason) for r in ack.rejected] == [(0, REJECT.UNKNOWN_CUSTOMER)]


def test_mixed_batch_counts_every_event_once() -> None:
    kernel = ingestion_world()
    kernel.ingest([good("old")], NOW)
    batch = [
        good("a"),
        good("a"),  # duplicate in batch
        good("old"),  # duplicate of an earlier batch
        tokens("a", NOW, 9),  # conflict
        tokens("b", NOW, -1),  # invalid
        tokens("c", START - 1, 1),  # no contract
        good("d"),
    ]
    ack = kernel.ingest(batch, NOW)
    assert (ack.accepted, ack.duplicates, len(ack.rejected)) == (2, 2, 3)
    assert kernel.charged() == picos("15")  # old, a, d: 5 each


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
def test_periods_are_months_anchored_on_the_contract_start(anchor: int, ts: int, start: int, end: int) -> None:
    kernel = loaded(basic_world(contract_start_ms=anchor))
    assert kernel.balance(ts)["period"] == (start, end)


def test_events_in_different_periods_aggregate_separately() -> None:
    anchor = ms(2026, 1, 31)
    kernel = loaded(basic_world([rate("tokens", flat("20"))], contract_start_ms=anchor))
    got = [
        kernel.charge_of(tokens("jan", ms(2026, 2, 27), 1)),
        kernel.charge_of(tokens("feb", ms(2026, 2, 28), 1)),
        kernel.charge_of(tokens("feb2", ms(2026, 3, 1), 1)),
    ]
    assert got == [picos("20"), picos("20"), 0]  # flat once per period per aggregate
    usage = kernel.kernel.usage("acme")
    assert usage is not None
    assert sorted((a[0], a[5]) for a in usage[0]) == [(anchor, picos("20")), (ms(2026, 2, 28), picos("20"))]
    balance = kernel.balance(ms(2026, 3, 5))
    assert balance["period"] == (ms(2026, 2, 28), ms(2026, 3, 31))
    assert balance["period_charges"] == picos("20")


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
    kernel = loaded(world)
    got = [kernel.charge_of(tokens(f"t{i}", ts, 10, **dims)) for i, (ts, dims, _) in enumerate(usage)]
    assert got == [picos(expected) for _, _, expected in usage]


def test_most_specific_override_wins() -> None:
    world = basic_world([rate("tokens", unit("1"))])
    world.override("tokens", multiplier="2", override_id="all")
    world.override("tokens", price="0.1", match=GPT4, override_id="gpt4")
    kernel = loaded(world)
    got = [kernel.charge_of(tokens("t1", T + 1, 10, **GPT4)), kernel.charge_of(tokens("t2", T + 2, 10, **CLAUDE))]
    assert got == [picos("1"), picos("20")]  # 10 x 0.1; 10 x 1 x 2
