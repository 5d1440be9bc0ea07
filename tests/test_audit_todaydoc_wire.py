"""README "What the server does today" (Usage, Pricing, Decimal strings) audited statement by statement over the
wire, for the claims no other tests/test_audit_*_wire.py module pins with amounts: tier edges exactly, a tier's
flat fee, PACKAGE remainders, per_units, FLAT once per line, most specific match, 18-decimal prices rounded to
10^-12 on each side of a charge, the per-event value limit (< 1e15) and the money limit ((2^127 - 1) picos) exactly
and one step past, dedupe keyed by (customer_id, transaction_id), and an event's refund netted against its charge
before grants and overage (README's two examples). Every amount is computed by hand in the test's docstring.

Card `doc` (pricing unit credits, version 1 in force since the hour before last), every product a SUM of `n` but
where said:
- `grad` GRADUATED: up to 100 at 1, beyond at 0.5 plus a flat 10 when entered;
- `vol` VOLUME: up to 100 at 1, beyond at 0.5 (every unit at the tier the quantity reaches);
- `pack` PACKAGE: packages of 10 at 3 each;
- `tok` UNIT 0.03 per 1,000;
- `fee` FLAT 7;
- `gradk` GRADUATED per 1,000: up to 1,000 units at 2 a thousand, beyond at 1 a thousand;
- `dim` priced by `model` and `region`: 1 by default, 2 for model=x, 3 for model=x and region=eu, 4 for model "";
- `big` priced by `lane`: 10^11 by default, 31731687303.715884105727 for lane=c, 100 less for lane=d;
- `tiny` UNIT 0.000000000000000001 (18 places);
- `uniq` UNIQUE_COUNT of dimension `user`, 1 each;
- `na` (SUM of `a`) at 1 and `nb` (VOLUME of `b`, as `vol`), both of event type `mp1`;
- `la` (SUM of `a`) at 1 and `ll` (LATEST of `level`) at 1, both of event type `mp2`;
- `unpriced` (event type `unpriced`): no rate, so NO_APPLICABLE_RATE;
- `edge` GRADUATED: up to 1,701,411,834,604,692 at 10^11, beyond at 10^-12 plus a flat 31731687303.715884105727;
- `half-priced` (at 1) and `half-unpriced` (no rate), both of event type `half`;
- `volf` VOLUME and `gradf` GRADUATED, both up to 10 at 1 with a flat 5, beyond at 0.5 with a flat 20;
- `pack3` PACKAGE: packages of 0.3 at 1;
- `peak` (MAX of `n`) at 1, `calls` (COUNT) at 0.5, `gauge` (LATEST of `level`) at 1.
Each test uses its own customers (contracts ALLOW from the hour before last, overage 1 USD), so none depends on
another's order."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import (
    HOUR_MS,
    charges,
    open_contract,
    preview,
    refusal,
    rejected_in,
    serving,
    this_hour_ms,
)
from tests.serverproc import ServerProcess

CARD = "doc"
LIMIT = "170141183460469231731687303.715884105727"  # (2^127 - 1) picos
assert int(LIMIT.replace(".", "")) == 2**127 - 1


def tiered(mode: int, *tiers: tuple[str, str, str]) -> pricing_pb2.TieredPrice:
    return pricing_pb2.TieredPrice(
        mode=mode,  # type: ignore[arg-type]
        tiers=[pricing_pb2.Tier(up_to=up_to, unit_price=price, flat_price=flat) for up_to, price, flat in tiers],
    )


def unit_rate(product_id: str, price: str, per_units: str = "", **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(
        product_id=product_id, match=match, unit=pricing_pb2.UnitPrice(price=price, per_units=per_units)
    )


PRODUCTS: tuple[tuple[str, str, int, str, list[str]], ...] = (
    ("grad", "grad", pricing_pb2.SUM, "n", []),
    ("vol", "vol", pricing_pb2.SUM, "n", []),
    ("pack", "pack", pricing_pb2.SUM, "n", []),
    ("tok", "tok", pricing_pb2.SUM, "n", []),
    ("gradk", "gradk", pricing_pb2.SUM, "n", []),
    ("fee", "fee", pricing_pb2.SUM, "n", []),
    ("dim", "dim", pricing_pb2.SUM, "n", ["model", "region"]),
    ("big", "big", pricing_pb2.SUM, "n", ["lane"]),
    ("tiny", "tiny", pricing_pb2.SUM, "n", []),
    ("uniq", "uniq", pricing_pb2.UNIQUE_COUNT, "user", []),
    ("na", "mp1", pricing_pb2.SUM, "a", []),
    ("nb", "mp1", pricing_pb2.SUM, "b", []),
    ("la", "mp2", pricing_pb2.SUM, "a", []),
    ("ll", "mp2", pricing_pb2.LATEST, "level", []),
    ("unpriced", "unpriced", pricing_pb2.SUM, "n", []),
    ("half-priced", "half", pricing_pb2.SUM, "n", []),
    ("edge", "edge", pricing_pb2.SUM, "n", []),
    ("half-unpriced", "half", pricing_pb2.SUM, "n", []),
    ("peak", "peak", pricing_pb2.MAX, "n", []),
    ("volf", "volf", pricing_pb2.SUM, "n", []),
    ("gradf", "gradf", pricing_pb2.SUM, "n", []),
    ("pack3", "pack3", pricing_pb2.SUM, "n", []),
    ("calls", "calls", pricing_pb2.COUNT, "", []),
    ("gauge", "gauge", pricing_pb2.LATEST, "level", []),
)


def rates() -> list[pricing_pb2.Rate]:
    volume = tiered(pricing_pb2.VOLUME, ("100", "1", ""), ("", "0.5", ""))
    per_thousand = tiered(pricing_pb2.GRADUATED, ("1000", "2", ""), ("", "1", ""))
    per_thousand.per_units = "1000"
    return [
        pricing_pb2.Rate(product_id="grad", tiered=tiered(pricing_pb2.GRADUATED, ("100", "1", ""), ("", "0.5", "10"))),
        pricing_pb2.Rate(product_id="vol", tiered=volume),
        pricing_pb2.Rate(product_id="pack", package=pricing_pb2.PackagePrice(package_size="10", package_price="3")),
        unit_rate("tok", "0.03", "1000"),
        pricing_pb2.Rate(product_id="gradk", tiered=per_thousand),
        pricing_pb2.Rate(product_id="fee", flat=pricing_pb2.FlatPrice(price="7")),
        unit_rate("dim", "1"),
        unit_rate("dim", "2", model="x"),
        unit_rate("dim", "3", model="x", region="eu"),
        unit_rate("dim", "4", model=""),
        unit_rate("big", "100000000000"),
        unit_rate("big", "31731687303.715884105727", lane="c"),
        unit_rate("big", "31731687203.715884105727", lane="d"),
        unit_rate("tiny", "0.000000000000000001"),
        unit_rate("uniq", "1"),
        unit_rate("na", "1"),
        pricing_pb2.Rate(product_id="nb", tiered=volume),
        unit_rate("la", "1"),
        unit_rate("ll", "1"),
        unit_rate("peak", "1"),
        unit_rate("half-priced", "1"),
        pricing_pb2.Rate(
            product_id="edge",
            tiered=tiered(
                pricing_pb2.GRADUATED,
                ("1701411834604692", "100000000000", ""),
                ("", "0.000000000001", "31731687303.715884105727"),
            ),
        ),
        pricing_pb2.Rate(product_id="volf", tiered=tiered(pricing_pb2.VOLUME, ("10", "1", "5"), ("", "0.5", "20"))),
        pricing_pb2.Rate(product_id="gradf", tiered=tiered(pricing_pb2.GRADUATED, ("10", "1", "5"), ("", "0.5", "20"))),
        pricing_pb2.Rate(product_id="pack3", package=pricing_pb2.PackagePrice(package_size="0.3", package_price="1")),
        unit_rate("calls", "0.5"),
        unit_rate("gauge", "1"),
    ]


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing
    for product_id, event_type, aggregation, key, dimensions in PRODUCTS:
        product = pricing_pb2.Product(
            id=product_id,
            event_type=event_type,
            aggregation=aggregation,  # type: ignore[arg-type]
            value_key=key,
            pricing_dimensions=dimensions,
        )
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="credits"))
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=rates()))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD, version=1, effective_from=stamp(this_hour_ms() - 2 * HOUR_MS)
        )
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audit-todaydoc")
    yield from serving(ServerProcess(root / "data"), catalogue)


def customer(client: TariffClient, customer_id: str) -> None:
    open_contract(client, customer_id, f"{customer_id}-c", this_hour_ms() - 2 * HOUR_MS, rate_card_id=CARD)


def event(
    transaction_id: str,
    customer_id: str,
    event_type: str,
    values: dict[str, float] | None = None,
    at_ms: int | None = None,
    **dimensions: str,
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=now_ms() - 1_000 if at_ms is None else at_ms,
        values=values or {},
        dimensions=dimensions,
    )


def charged_by(client: TariffClient, customer_id: str, *events: usage_pb2.UsageEvent) -> list[str]:
    """Sends each event as its own batch (all accepted): the period's charges after each."""
    after = []
    for one in events:
        assert rejected_in(client, one) == [], one
        after.append(charges(client, customer_id))
    return after


def charged_for_units(
    server: ServerProcess, customer_id: str, event_type: str, prefix: str, *units: float, first: int = 1
) -> list[str]:
    """A new customer (`customer`) sending `event_type` events of n = each of `units` in turn, transaction ids
    `prefix` numbered from `first`: the period's charges after each (`charged_by`)."""
    events = [event(f"{prefix}{i}", customer_id, event_type, {"n": n}) for i, n in enumerate(units, first)]
    with server.client() as client:
        customer(client, customer_id)
        return charged_by(client, customer_id, *events)


def charges_and_overage(client: TariffClient, customer_id: str) -> tuple[str, str]:
    """GetBalance's (period_charges, overage_amount)."""
    balance = client.get_balance(customer_id)
    return balance.period_charges, balance.overage_amount


def grant(client: TariffClient, grant_id: str, customer_id: str, amount: str, *products: str) -> None:
    promo = contracts_pb2.Grant(
        id=grant_id,
        customer_id=customer_id,
        kind=contracts_pb2.PROMOTIONAL,
        amount=amount,
        applicable_product_ids=list(products),
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=promo))


def remaining(client: TariffClient, customer_id: str) -> dict[str, str]:
    return {g.grant_id: g.remaining for g in client.get_balance(customer_id).grants}


# ---------------------------------------------------------------------------------------------------------------
# Price models at their edges


def test_graduated_tier_edge_is_inclusive_and_the_next_tier_adds_its_flat_fee_once(server: ServerProcess) -> None:
    """up_to is inclusive: 100 units are 100 x 1 = 100, tier 2 not entered. The 101st enters tier 2: + 10 flat
    + 0.5 = 110.5. One more: 0.5 (the flat fee once): 111."""
    assert charged_for_units(server, "grad-c", "grad", "g", 100, 1, 1) == ["100", "110.5", "111"]


def test_volume_tier_edge_prices_every_unit_at_the_tier_reached_and_gives_back(server: ServerProcess) -> None:
    """VOLUME: 100 units all at 1 = 100 (the edge belongs to tier 1); 101 all at 0.5 = 50.5, so the 101st unit
    charges 50.5 - 100 = -49.5; 200 = 100 again."""
    assert charged_for_units(server, "vol-c", "vol", "v", 100, 1, 99) == ["100", "50.5", "100"]


def test_package_rounds_up_to_started_packages_over_the_line(server: ServerProcess) -> None:
    """Packages of 10 at 3: 0.5 units start one package (3); 10 fill it (still 3); 11 start a second (6); 20 fill
    it (6); 20.000001 a third (9)."""
    assert charged_for_units(server, "pack-c", "pack", "p", 0.5, 9.5, 1, 9, 0.000001) == ["3", "3", "6", "6", "9"]


def test_tier_flat_fees_graduated_adds_each_entered_volume_only_the_reached(server: ServerProcess) -> None:
    """An event adding 0 enters no tier: 0 for both. GRADUATED: 10 units are 5 + 10 = 15; the 11th enters tier 2:
    15 + 20 + 0.5 = 35.5. VOLUME: 10 units are 5 + 10 = 15; 11 are priced by tier 2 alone, its flat and every
    unit: 20 + 5.5 = 25.5 (tier 1's flat is not added)."""
    with server.client() as client:
        for product_id, expected in (("gradf", ["0", "15", "35.5"]), ("volf", ["0", "15", "25.5"])):
            customer_id = f"{product_id}-c"
            customer(client, customer_id)
            assert (
                charged_by(
                    client,
                    customer_id,
                    *(event(f"{product_id}{i}", customer_id, product_id, {"n": n}) for i, n in enumerate((0, 10, 1))),
                )
                == expected
            ), product_id


def test_package_sizes_are_exact_decimals(server: ServerProcess) -> None:
    """Packages of 0.3 at 1: 0 units start none (0); 0.9 are exactly 3 packages (3: in binary, three packages of
    0.3 hold 0.8999999999999999, less than 0.9); 0.1 more make 1.0, a fourth started (4); 0.2 more make 1.2, four
    exactly (4)."""
    assert charged_for_units(server, "pk3-c", "pack3", "z", 0, 0.9, 0.1, 0.2, first=0) == ["0", "3", "4", "4"]


def test_unit_per_units_prices_per_thousand(server: ServerProcess) -> None:
    """0.03 per 1,000: 1,500 tokens are 0.045; 1 more token 0.00003: 0.04503."""
    assert charged_for_units(server, "tok-c", "tok", "t", 1500, 1) == ["0.045", "0.04503"]


def test_graduated_per_units_prices_tiers_per_thousand_with_bounds_in_units(server: ServerProcess) -> None:
    """Tiers per 1,000 with up_to in units: 1,000 units are 2 (the edge in tier 1); 500 more at 1 a thousand: 0.5,
    the line 2.5."""
    assert charged_for_units(server, "gk-c", "gradk", "k", 1000, 500) == ["2", "2.5"]


def test_flat_is_charged_once_a_line_is_above_zero(server: ServerProcess) -> None:
    """FLAT 7: an event adding 0 charges nothing; the first above zero 7; later ones nothing more."""
    assert charged_for_units(server, "fee-c", "fee", "f", 0, 2, 5) == ["0", "7", "7"]


def test_most_specific_match_wins(server: ServerProcess) -> None:
    """dim: default 1, model=x 2, model=x+region=eu 3, model "" 4. 1 unit each: model=y region=eu -> 1 (the
    default: a rate for region alone there is none); model=x region=us -> 2; model=x region=eu -> 3; no dimensions
    -> 4 (a dimension left out is matched as sent empty, and "" is a value, not a wildcard); model "" -> 4.
    1 + 2 + 3 + 4 + 4 = 14."""
    with server.client() as client:
        customer(client, "dim-c")
        assert charged_by(
            client,
            "dim-c",
            event("d1", "dim-c", "dim", {"n": 1}, model="y", region="eu"),
            event("d2", "dim-c", "dim", {"n": 1}, model="x", region="us"),
            event("d3", "dim-c", "dim", {"n": 1}, model="x", region="eu"),
            event("d4", "dim-c", "dim", {"n": 1}),
            event("d5", "dim-c", "dim", {"n": 1}, model=""),
        ) == ["1", "3", "6", "10", "14"]


def test_an_18_place_price_is_charged_rounded_half_even_on_each_side(server: ServerProcess) -> None:
    """tiny at 10^-18: 500,000 units price 5 x 10^-13, rounded half-even to 12 places 0: charged 0. 500,000 more:
    the line's 10^-12 less 0, charged 0.000000000001. 1,500,000 more make 2,500,000: 2.5 x 10^-12 rounds half-even
    to 2 x 10^-12, the charge 0.000000000001."""
    assert charged_for_units(server, "tiny-c", "tiny", "y", 500_000, 500_000, 1_500_000) == [
        "0",
        "0.000000000001",
        "0.000000000002",
    ]


# ---------------------------------------------------------------------------------------------------------------
# Values and money at their limits


def test_event_values_hold_below_1e15_and_to_18_places(server: ServerProcess) -> None:
    """values: finite, >= 0, < 1e15, at most 18 places. 999,999,999,999,999.875 (the largest double below 1e15)
    is accepted, read from its shortest round-trip form 999999999999999.9 (usage.proto): 0.03 per 1,000 of it is
    29,999,999,999.999997. 1e15 itself, 1e-19 and -1 are INVALID_EVENT,
    charging nothing. 1e-18 is accepted: 1e-18 x 0.00003 = 3 x 10^-23, rounded to 12 places 0."""
    with server.client() as client:
        customer(client, "val-c")
        assert rejected_in(
            client,
            event("x1", "val-c", "tok", {"n": 999_999_999_999_999.875}),
            event("x2", "val-c", "tok", {"n": 1e15}),
            event("x3", "val-c", "tok", {"n": 1e-19}),
            event("x4", "val-c", "tok", {"n": -1.0}),
            event("x5", "val-c", "tok", {"n": 1e-18}),
        ) == [("x2", "INVALID_EVENT"), ("x3", "INVALID_EVENT"), ("x4", "INVALID_EVENT")]
        assert charges(client, "val-c") == "29999999999.999997"


def test_period_charges_reach_the_money_limit_exactly_and_refuse_one_pico_more(server: ServerProcess) -> None:
    """big at 10^11: 999,999,999,999,999 units on lane a are 99,999,999,999,999,900,000,000,000 and
    701,411,834,604,693 on lane b 70,141,183,460,469,300,000,000,000: 170,141,183,460,469,200,000,000,000. 1 unit
    on lane c at 31,731,687,303.715884105727 makes 170,141,183,460,469,231,731,687,303.715884105727, (2^127 - 1)
    picos exactly: accepted, and GetBalance answers it whole (no grant: all of it overage). One pico more (tiny,
    10^6 units at 10^-18) is INVALID_EVENT and changes nothing."""
    with server.client() as client:
        customer(client, "lim-c")
        assert (
            rejected_in(
                client,
                event("l1", "lim-c", "big", {"n": 999_999_999_999_999}, lane="a"),
                event("l2", "lim-c", "big", {"n": 701_411_834_604_693}, lane="b"),
                event("l3", "lim-c", "big", {"n": 1}, lane="c"),
            )
            == []
        )
        assert charges_and_overage(client, "lim-c") == (LIMIT, LIMIT)
        assert rejected_in(client, event("l4", "lim-c", "tiny", {"n": 1_000_000})) == [("l4", "INVALID_EVENT")]
        assert charges_and_overage(client, "lim-c") == (LIMIT, LIMIT)


# ---------------------------------------------------------------------------------------------------------------
# Acceptance, dedupe and rejection reasons


def test_dedupe_is_keyed_by_customer_and_transaction_id(server: ServerProcess) -> None:
    """The same transaction id under two customers is two events (1,500 tokens each: 0.045 each); an identical
    resend is a duplicate; the same id with another value DUPLICATE_CONFLICT, changing nothing."""
    with server.client() as client:
        customer(client, "dd-a")
        customer(client, "dd-b")
        at = now_ms() - 1_000
        first = client.ingest_batch(
            [event("same", "dd-a", "tok", {"n": 1500}, at), event("same", "dd-b", "tok", {"n": 1500}, at)]
        )
        assert (first.accepted, first.duplicates, len(first.rejected)) == (2, 0, 0)
        again = client.ingest_batch(
            [event("same", "dd-a", "tok", {"n": 1500}, at), event("same", "dd-b", "tok", {"n": 1501}, at)]
        )
        assert (again.accepted, again.duplicates) == (0, 1)
        assert [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in again.rejected] == [(1, "DUPLICATE_CONFLICT")]
        assert (charges(client, "dd-a"), charges(client, "dd-b")) == ("0.045", "0.045")


def test_each_rejection_reason_and_an_unfed_event_type(server: ServerProcess) -> None:
    """One batch: an unknown customer, an event before the contract, one 10 minutes ahead, one feeding a product
    the card does not price, a timestamp of 0, an empty transaction id, an event type feeding no product
    (accepted, charging nothing), and a good one (1,500 tokens: 0.045): the bad ones never sink the batch."""
    with server.client() as client:
        customer(client, "rj-c")
        start = this_hour_ms() - 2 * HOUR_MS
        ack = client.ingest_batch(
            [
                event("r1", "nobody", "tok", {"n": 1}),
                event("r2", "rj-c", "tok", {"n": 1}, start - 1),
                event("r3", "rj-c", "tok", {"n": 1}, now_ms() + 600_000),
                event("r4", "rj-c", "unpriced", {"n": 1}),
                event("r5", "rj-c", "tok", {"n": 1}, 0),
                event("", "rj-c", "tok", {"n": 1}),
                event("r7", "rj-c", "nothing-feeds-this", {"n": 1}),
                event("r8", "rj-c", "tok", {"n": 1500}),
            ]
        )
        assert [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected] == [
            (0, "UNKNOWN_CUSTOMER"),
            (1, "NO_ACTIVE_CONTRACT"),
            (2, "TIMESTAMP_OUT_OF_RANGE"),
            (3, "NO_APPLICABLE_RATE"),
            (4, "INVALID_EVENT"),
            (5, "INVALID_EVENT"),
        ]
        assert (ack.accepted, ack.duplicates) == (2, 0)
        assert charges(client, "rj-c") == "0.045"


def test_a_missing_value_charges_no_product_of_the_event(server: ServerProcess) -> None:
    """mp1 feeds na (a) and nb (b): an event with a=5 and no b is INVALID_EVENT, and na is not charged either."""
    with server.client() as client:
        customer(client, "mv-c")
        assert rejected_in(client, event("m1", "mv-c", "mp1", {"a": 5})) == [("m1", "INVALID_EVENT")]
        assert charges(client, "mv-c") == "0"


def test_unique_count_refuses_a_missing_or_empty_dimension(server: ServerProcess) -> None:
    """uniq counts distinct `user`s at 1: u1, u2, u1 again cost 2; "" and a missing user are INVALID_EVENT."""
    with server.client() as client:
        customer(client, "uq-c")
        assert rejected_in(
            client,
            event("q1", "uq-c", "uniq", user="u1"),
            event("q2", "uq-c", "uniq", user="u2"),
            event("q3", "uq-c", "uniq", user="u1"),
            event("q4", "uq-c", "uniq", user=""),
            event("q5", "uq-c", "uniq"),
        ) == [("q4", "INVALID_EVENT"), ("q5", "INVALID_EVENT")]
        assert charges(client, "uq-c") == "2"


def test_a_batch_id_over_256_bytes_is_refused_whole_naming_it(server: ServerProcess) -> None:
    with server.client() as client:
        customer(client, "bid-c")
        batch = usage_pb2.UsageBatch(batch_id="b" * 257, events=[event("b1", "bid-c", "tok", {"n": 1500})])
        code, details = refusal(lambda: client.usage.IngestUsageBatch(batch))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "batch_id" in details, details
        assert charges(client, "bid-c") == "0"
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b" * 256, events=batch.events))
        assert (ack.batch_id, ack.accepted) == ("b" * 256, 1)


# ---------------------------------------------------------------------------------------------------------------
# One event's refunds and charges netted before grants and overage (README's examples)


def test_a_refund_credited_to_a_grant_for_its_product_only_does_not_pay_another(server: ServerProcess) -> None:
    """Grant `only-nb.g` 100 for nb only. Event 1: b=100 costs 100 (VOLUME), drawn from it. Event 2: a=40, b=1:
    nb gives back 100 - 50.5 = 49.5 to the grant, na's 40 cannot take it (the grant does not pay na): 40 of
    overage. Grant 49.5, overage 40, charges 100 - 49.5 + 40 = 90.5."""
    with server.client() as client:
        customer(client, "only-nb")
        grant(client, "only-nb.g", "only-nb", "100", "nb")
        assert rejected_in(client, event("o1", "only-nb", "mp1", {"a": 0, "b": 100})) == []
        assert rejected_in(client, event("o2", "only-nb", "mp1", {"a": 40, "b": 1})) == []
        assert charges_and_overage(client, "only-nb") == ("90.5", "40")
        assert remaining(client, "only-nb") == {"only-nb.g": "49.5"}


def test_where_the_grant_pays_both_products_the_event_settles_as_its_net(server: ServerProcess) -> None:
    """Same events with a grant of 100 for every product: event 2 nets -49.5 + 40 = -9.5, so the grant gets 9.5
    back and nothing is overage. Charges 90.5."""
    with server.client() as client:
        customer(client, "any-nb")
        grant(client, "any-nb.g", "any-nb", "100")
        assert rejected_in(client, event("o1", "any-nb", "mp1", {"a": 0, "b": 100})) == []
        assert rejected_in(client, event("o2", "any-nb", "mp1", {"a": 40, "b": 1})) == []
        assert charges_and_overage(client, "any-nb") == ("90.5", "0")
        assert remaining(client, "any-nb") == {"any-nb.g": "9.5"}


def test_a_net_refund_gives_back_overage_first_then_credit(server: ServerProcess) -> None:
    """README: a refund giving back 5 of overage and 7 credits while another product costs 5 is a net refund of 7:
    it gives back the 5 of overage and 2 credits. Grant 7; event 1: level 12 costs 12, 7 drawn, 5 overage. Event
    2: level 0 (gives back 12) and a=5 (costs 5): overage 0, grant 2, charges 5."""
    with server.client() as client:
        customer(client, "net-c")
        grant(client, "net-c.g", "net-c", "7")
        assert rejected_in(client, event("n1", "net-c", "mp2", {"a": 0, "level": 12})) == []
        assert charges_and_overage(client, "net-c") == ("12", "5")
        assert rejected_in(client, event("n2", "net-c", "mp2", {"a": 5, "level": 0})) == []
        assert charges_and_overage(client, "net-c") == ("5", "0")
        assert remaining(client, "net-c") == {"net-c.g": "2"}


def block_customer(client: TariffClient, customer_id: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    request = contracts_pb2.CreateContractRequest(
        id=f"{customer_id}-c",
        customer_id=customer_id,
        rate_card_id=CARD,
        starting_at=stamp(this_hour_ms() - 2 * HOUR_MS),
        overage_policy=contracts_pb2.BLOCK,
        overage_price="1",
        currency="USD",
    )
    client.contracts.CreateContract(request)


def authorize(client: TariffClient, customer_id: str, event_type: str, values: dict[str, float]) -> tuple[str, str]:
    request = balance_pb2.AuthorizeRequest(customer_id=customer_id, event_type=event_type, values=values)
    answer = client.balance.Authorize(request)
    return answer.reason, answer.estimated_cost


def test_block_denies_a_charge_only_a_refund_to_another_products_grant_would_pay(server: ServerProcess) -> None:
    """BLOCK, grant 100 for nb only, b=100 drew it all (0 left). Authorize a=40, b=1: nb would give back 49.5 to
    the grant, which cannot pay na's 40: estimated -9.5, denied INSUFFICIENT_CREDIT. With no a, b=1 alone (a
    refund of 49.5, estimated -49.5) is denied too: no credit is available to its products."""
    with server.client() as client:
        block_customer(client, "blk-nb")
        grant(client, "blk-nb.g", "blk-nb", "100", "nb")
        assert rejected_in(client, event("o1", "blk-nb", "mp1", {"a": 0, "b": 100})) == []
        assert authorize(client, "blk-nb", "mp1", {"a": 40, "b": 1}) == ("INSUFFICIENT_CREDIT", "-9.5")
        assert authorize(client, "blk-nb", "mp1", {"a": 0, "b": 1}) == ("INSUFFICIENT_CREDIT", "-49.5")


def test_a_falling_gauge_beside_an_equal_charge_touches_nothing(server: ServerProcess) -> None:
    """README: a LATEST line of 5, all overage, falling to 2 in an event whose SUM product costs 3, with 10
    credits granted since: the lines net 0, overage stays 5 and the 10 credits whole; Authorize estimates 0, OK."""
    with server.client() as client:
        customer(client, "gauge-c")
        assert rejected_in(client, event("g1", "gauge-c", "mp2", {"a": 0, "level": 5})) == []
        grant(client, "gauge-c.g", "gauge-c", "10")
        assert authorize(client, "gauge-c", "mp2", {"a": 3, "level": 2}) == ("OK", "0")
        assert rejected_in(client, event("g2", "gauge-c", "mp2", {"a": 3, "level": 2})) == []
        assert charges_and_overage(client, "gauge-c") == ("5", "5")
        assert remaining(client, "gauge-c") == {"gauge-c.g": "10"}


def test_a_grant_without_starts_at_pays_usage_dated_before_it_was_given(server: ServerProcess) -> None:
    """Grant 10 given now, with no starts_at: it pays from the contract's start, so a fee (7) dated an hour and a
    half ago draws 7 of it: 3 left, no overage."""
    with server.client() as client:
        customer(client, "late-c")
        grant(client, "late-c.g", "late-c", "10")
        late = this_hour_ms() - 2 * HOUR_MS + 30 * 60_000
        assert rejected_in(client, event("f1", "late-c", "fee", {"n": 1}, late)) == []
        assert charges_and_overage(client, "late-c") == ("7", "0")
        assert remaining(client, "late-c") == {"late-c.g": "3"}


def test_ids_and_texts_at_256_bytes_are_taken_and_one_more_is_invalid_event(server: ServerProcess) -> None:
    """transaction_id, reservation_id and a dimension value: 256 bytes taken (é is 2 bytes: 128 of them fit), 257
    INVALID_EVENT. The accepted ones each cost 1,500 tokens: 0.045, three of them 0.135."""
    with server.client() as client:
        customer(client, "len-c")
        held = event("t" * 256, "len-c", "tok", {"n": 1500})
        reserved = event("res-256", "len-c", "tok", {"n": 1500})
        reserved.reservation_id = "r" * 256
        accents = event("dim-256", "len-c", "tok", {"n": 1500}, model="é" * 128)
        too_long = event("t" * 257, "len-c", "tok", {"n": 1500})
        bad_hold = event("res-257", "len-c", "tok", {"n": 1500})
        bad_hold.reservation_id = "r" * 257
        bad_dim = event("dim-257", "len-c", "tok", {"n": 1500}, model="é" * 128 + "x")
        ack = client.ingest_batch([held, reserved, accents, too_long, bad_hold, bad_dim])
        assert [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected] == [
            (3, "INVALID_EVENT"),
            (4, "INVALID_EVENT"),
            (5, "INVALID_EVENT"),
        ]
        assert charges(client, "len-c") == "0.135"


def test_timestamps_a_minute_ahead_are_taken_and_negative_ones_refused(server: ServerProcess) -> None:
    """Within the 5-minute skew: a minute ahead is accepted (0.045); -1 is INVALID_EVENT."""
    with server.client() as client:
        customer(client, "ts-c")
        assert rejected_in(
            client,
            event("a1", "ts-c", "tok", {"n": 1500}, now_ms() + 60_000),
            event("a2", "ts-c", "tok", {"n": 1500}, -1),
        ) == [("a2", "INVALID_EVENT")]
        assert charges(client, "ts-c") == "0.045"


def test_authorize_refuses_a_value_ingesting_would_refuse(server: ServerProcess) -> None:
    """Authorize prices usage as ingesting it would: 1e15 (INVALID_EVENT when ingested) is INVALID_ARGUMENT naming
    values; 999,999,999,999,999 of tok is estimated 29,999,999,999.99997."""
    with server.client() as client:
        customer(client, "az-c")
        code, details = refusal(lambda: authorize(client, "az-c", "tok", {"n": 1e15}))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "values" in details, details
        assert authorize(client, "az-c", "tok", {"n": 999_999_999_999_999}) == ("OVERAGE_ALLOWED", "29999999999.99997")


# ---------------------------------------------------------------------------------------------------------------
# Aggregations, windows, lines and the overage due


def test_max_count_and_latest_aggregate_over_the_period(server: ServerProcess) -> None:
    """MAX at 1: 5 -> 5, 3 -> still 5, 8 -> 8. COUNT at 0.5: three events (values unread) -> 1.5. LATEST at 1:
    10 at t2 -> 10; 4 dated t1 before t2 does not move it (0); 6 at t3 -> 6. All: 8 + 1.5 + 6 = 15.5."""
    with server.client() as client:
        customer(client, "agg-c")
        t = now_ms() - 60_000
        assert charged_by(
            client,
            "agg-c",
            event("m1", "agg-c", "peak", {"n": 5}),
            event("m2", "agg-c", "peak", {"n": 3}),
            event("m3", "agg-c", "peak", {"n": 8}),
            event("c1", "agg-c", "calls"),
            event("c2", "agg-c", "calls", {"n": 7}),
            event("c3", "agg-c", "calls"),
            event("g1", "agg-c", "gauge", {"level": 10}, t + 2),
            event("g2", "agg-c", "gauge", {"level": 4}, t + 1),
            event("g3", "agg-c", "gauge", {"level": 6}, t + 3),
        ) == ["5", "5", "8", "8.5", "9", "9.5", "19.5", "19.5", "15.5"]


def test_a_contract_window_holds_its_start_and_not_its_end(server: ServerProcess) -> None:
    """Contract from S to E (an hour later, past): events at S and E - 1 are accepted (1,500 tokens: 0.045 each),
    at S - 1 and at E NO_ACTIVE_CONTRACT: the period's one line holds 3,000 tokens, 0.09, two events."""
    with server.client() as client:
        start = this_hour_ms() - 2 * HOUR_MS
        end = start + HOUR_MS
        open_contract(client, "win-c", "win-c-c", start, end, rate_card_id=CARD)
        assert rejected_in(
            client,
            event("w1", "win-c", "tok", {"n": 1500}, start),
            event("w2", "win-c", "tok", {"n": 1500}, end - 1),
            event("w3", "win-c", "tok", {"n": 1500}, start - 1),
            event("w4", "win-c", "tok", {"n": 1500}, end),
        ) == [("w3", "NO_ACTIVE_CONTRACT"), ("w4", "NO_ACTIVE_CONTRACT")]
        lines = [(ln.product_id, ln.quantity, ln.amount, ln.events) for ln in preview(client, "win-c", start).lines]
        assert lines == [("tok", "3000", "0.09", 2)], lines


def test_a_grant_window_holds_its_start(server: ServerProcess) -> None:
    """Grant 10 starting at T (the last hour), given before the events are sent: a fee (7) dated T - 1 is
    overage; 1,500 tokens (0.045) dated T draw from it: grant 9.955, overage 7."""
    with server.client() as client:
        customer(client, "gw-c")
        starts = this_hour_ms() - HOUR_MS
        promo = contracts_pb2.Grant(
            id="gw-c.g", customer_id="gw-c", kind=contracts_pb2.PROMOTIONAL, amount="10", starts_at=stamp(starts)
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=promo))
        assert rejected_in(client, event("e1", "gw-c", "fee", {"n": 1}, starts - 1)) == []
        assert rejected_in(client, event("e2", "gw-c", "tok", {"n": 1500}, starts)) == []
        assert charges_and_overage(client, "gw-c") == ("7.045", "7")
        assert remaining(client, "gw-c") == {"gw-c.g": "9.955"}


def test_dimensions_outside_the_pricing_dimensions_split_no_line(server: ServerProcess) -> None:
    """dim is priced by model and region only: model=x with color red, then blue, is one line (model x, region
    "") of quantity 2, priced 2 a unit: 4, two events."""
    with server.client() as client:
        customer(client, "color-c")
        assert charged_by(
            client,
            "color-c",
            event("k1", "color-c", "dim", {"n": 1}, model="x", color="red"),
            event("k2", "color-c", "dim", {"n": 1}, model="x", color="blue"),
        ) == ["2", "4"]
        lines = [
            (ln.product_id, dict(ln.dimensions), ln.quantity, ln.amount, ln.events)
            for ln in preview(client, "color-c", now_ms()).lines
        ]
        assert lines == [("dim", {"model": "x", "region": ""}, "2", "4", 2)], lines


def test_overage_due_is_overage_at_the_contracts_price_in_its_currency(server: ServerProcess) -> None:
    """Overage price 0.5 USD a credit: a fee of 7 with no grant is 7 of overage, 3.5 USD due (written without
    trailing zeros)."""
    with server.client() as client:
        open_contract(client, "due-c", "due-c-c", this_hour_ms() - 2 * HOUR_MS, rate_card_id=CARD, overage_price="0.5")
        assert rejected_in(client, event("f1", "due-c", "fee", {"n": 1})) == []
        balance = client.get_balance("due-c")
        assert (balance.overage_amount, balance.overage_due, balance.pricing_unit) == ("7", "3.5", "credits")


def test_grant_amounts_are_exact_at_12_places_and_refused_past(server: ServerProcess) -> None:
    """A grant of 0.000000000001 (12 places) holds exactly that; 0.0000000000001 (13) is INVALID_ARGUMENT naming
    the amount, nothing granted."""
    with server.client() as client:
        customer(client, "pico-c")
        grant(client, "pico-c.g", "pico-c", "0.000000000001")
        code, details = refusal(lambda: grant(client, "pico-c.h", "pico-c", "0.0000000000001"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "amount" in details, details
        assert remaining(client, "pico-c") == {"pico-c.g": "0.000000000001"}


def test_overage_due_past_the_money_limit_is_exact(server: ServerProcess) -> None:
    """Charges of (2^127 - 1) picos (as above), all overage, at an overage price of 10^18 - 10^-18 USD: the amount
    due, L x (10^18 - 10^-18) = 170141183460469231731687303715884105556858816.539530768268312696284115894273
    exactly (Python's Decimal at 200 digits), far past 2^127 picos; the invoice's total due is it in cents, .54,
    and the sum of its lines' amounts due (.00 + .54 + .00: no rounding adjustment)."""
    with server.client() as client:
        price = "999999999999999999.999999999999999999"
        open_contract(
            client, "odue-c", "odue-c-c", this_hour_ms() - 2 * HOUR_MS, rate_card_id=CARD, overage_price=price
        )
        assert (
            rejected_in(
                client,
                event("l1", "odue-c", "big", {"n": 999_999_999_999_999}, lane="a"),
                event("l2", "odue-c", "big", {"n": 701_411_834_604_693}, lane="b"),
                event("l3", "odue-c", "big", {"n": 1}, lane="c"),
            )
            == []
        )
        due = "170141183460469231731687303715884105556858816.539530768268312696284115894273"
        balance = client.get_balance("odue-c")
        assert (balance.overage_amount, balance.overage_due) == (LIMIT, due)
        invoice = preview(client, "odue-c", now_ms())
        assert (invoice.total_due, invoice.rounding_adjustment) == (
            "170141183460469231731687303715884105556858816.54",
            "0.00",
        ), invoice.total_due
        assert [line.amount_due for line in invoice.lines] == [
            "99999999999999899999999999999999999900000000.00",
            "70141183460469299999999999999999999929858816.54",
            "31731687303715884105727000000.00",
        ]


def ack_summary(ack: usage_pb2.IngestAck) -> tuple[int, int, list[tuple[int, str]]]:
    return ack.accepted, ack.duplicates, [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected]


def test_dedupe_inside_one_batch_and_for_every_field(server: ServerProcess) -> None:
    """In one batch: an event, its identical copy (a duplicate) and the same id with 1,501 tokens
    (DUPLICATE_CONFLICT). Then the same id naming a reservation, and with one more value entry: both
    DUPLICATE_CONFLICT. Only the first is charged: 0.045."""
    with server.client() as client:
        customer(client, "ddb-c")
        at = now_ms() - 5_000
        first = event("i1", "ddb-c", "tok", {"n": 1500}, at)
        other = event("i1", "ddb-c", "tok", {"n": 1501}, at)
        assert ack_summary(client.ingest_batch([first, first, other])) == (1, 1, [(2, "DUPLICATE_CONFLICT")])
        reserved = event("i1", "ddb-c", "tok", {"n": 1500}, at)
        reserved.reservation_id = "h1"
        more = event("i1", "ddb-c", "tok", {"n": 1500, "m": 0}, at)
        assert ack_summary(client.ingest_batch([reserved, more])) == (
            0,
            0,
            [(0, "DUPLICATE_CONFLICT"), (1, "DUPLICATE_CONFLICT")],
        )
        assert charges(client, "ddb-c") == "0.045"


def test_a_rejected_events_id_is_free_for_its_corrected_resend(server: ServerProcess) -> None:
    """A rejected event is not kept: its id sent again with a good value (in the same batch or a later one), or
    once its customer exists, is accepted, not a duplicate nor a conflict. Two accepted: 0.09."""
    with server.client() as client:
        at = now_ms() - 5_000
        fixed = event("late", "fix-c", "tok", {"n": 1500}, at)
        assert ack_summary(client.ingest_batch([fixed])) == (0, 0, [(0, "UNKNOWN_CUSTOMER")])
        customer(client, "fix-c")
        bad = event("v1", "fix-c", "tok", {"n": 1e15}, at)
        good = event("v1", "fix-c", "tok", {"n": 1500}, at)
        assert ack_summary(client.ingest_batch([bad, good])) == (1, 0, [(0, "INVALID_EVENT")])
        assert ack_summary(client.ingest_batch([fixed])) == (1, 0, [])
        assert charges(client, "fix-c") == "0.09"


def test_a_refund_gives_back_in_reverse_burn_order_and_a_charge_takes_back_what_pays_it(
    server: ServerProcess,
) -> None:
    """Grants `r.g1` 60 for nb only and `r.g2` 50 for every product, same priority, no expiry: nb burns g1 first
    (the narrower list). Event 1, b=100: 100, g1 60 then g2 40 (g1 0, g2 10). Event 2, a=45 and b=1: nb gives back
    49.5 in reverse burn order, g2 its 40 then g1 9.5; na's 45 takes back g2's 40 (g1 cannot pay na) and draws 5
    more of g2. g1 9.5, g2 5, no overage; charges 100 - 49.5 + 45 = 95.5."""
    with server.client() as client:
        customer(client, "r")
        grant(client, "r.g1", "r", "60", "nb")
        grant(client, "r.g2", "r", "50")
        assert rejected_in(client, event("e1", "r", "mp1", {"a": 0, "b": 100})) == []
        assert remaining(client, "r") == {"r.g1": "0", "r.g2": "10"}
        assert rejected_in(client, event("e2", "r", "mp1", {"a": 45, "b": 1})) == []
        assert charges_and_overage(client, "r") == ("95.5", "0")
        assert remaining(client, "r") == {"r.g1": "9.5", "r.g2": "5"}


def test_a_charge_takes_back_overage_another_products_refund_gave_back(server: ServerProcess) -> None:
    """Grant `ov.g` 60 for nb only. Event 1, b=100: 60 drawn, 40 overage. Event 2, a=45 and b=1: nb's 49.5 gives
    back its 40 of overage first, then 9.5 to the grant; na's 45 takes back the 40 of overage (any product's
    charge may: it is overage again) and its other 5 is overage (no grant pays na). Grant 9.5, overage 45,
    charges 95.5."""
    with server.client() as client:
        customer(client, "ov")
        grant(client, "ov.g", "ov", "60", "nb")
        assert rejected_in(client, event("e1", "ov", "mp1", {"a": 0, "b": 100})) == []
        assert rejected_in(client, event("e2", "ov", "mp1", {"a": 45, "b": 1})) == []
        assert charges_and_overage(client, "ov") == ("95.5", "45")
        assert remaining(client, "ov") == {"ov.g": "9.5"}


def test_an_event_one_of_whose_products_has_no_rate_charges_none(server: ServerProcess) -> None:
    """`half` feeds half-priced (1 a unit) and half-unpriced (no rate): NO_APPLICABLE_RATE, and the event changes
    nothing, half-priced not charged either; its id stays free (not a duplicate when resent)."""
    with server.client() as client:
        customer(client, "half-c")
        half = event("h1", "half-c", "half", {"n": 3})
        assert rejected_in(client, half) == [("h1", "NO_APPLICABLE_RATE")]
        assert rejected_in(client, half) == [("h1", "NO_APPLICABLE_RATE")]
        assert charges(client, "half-c") == "0"


def test_a_value_with_18_places_is_taken_and_with_19_refused(server: ServerProcess) -> None:
    """1.5e-17 is 0.000000000000000015 (18 places): at 10^11 it costs 0.0000015. 1.5e-18 needs 19 places:
    INVALID_EVENT, never rounded to 0.000000000000000002 or 0."""
    with server.client() as client:
        customer(client, "p18-c")
        assert rejected_in(
            client,
            event("s1", "p18-c", "big", {"n": 1.5e-17}, lane="a"),
            event("s2", "p18-c", "big", {"n": 1.5e-18}, lane="a"),
        ) == [("s2", "INVALID_EVENT")]
        assert charges(client, "p18-c") == "0.0000015"


def test_empty_ids_are_invalid_event_and_a_malformed_customer_id_unknown_customer(server: ServerProcess) -> None:
    """An empty event_type or customer_id is INVALID_EVENT ("missing ids", "is required"); a customer_id breaking
    the id rule is UNKNOWN_CUSTOMER, its message naming customer_id and the rule; the good event 0.045."""
    with server.client() as client:
        customer(client, "emp-c")
        ack = client.ingest_batch(
            [
                event("e1", "emp-c", "", {"n": 1}),
                event("e2", "", "tok", {"n": 1}),
                event("e3", "not an id!", "tok", {"n": 1}),
                event("e4", "emp-c", "tok", {"n": 1500}),
            ]
        )
        assert ack_summary(ack) == (1, 0, [(0, "INVALID_EVENT"), (1, "INVALID_EVENT"), (2, "UNKNOWN_CUSTOMER")])
        assert "event_type" in ack.rejected[0].message and "customer_id" in ack.rejected[1].message
        assert "customer_id: 'not an id!' must be 1-128 characters" in ack.rejected[2].message
        assert charges(client, "emp-c") == "0.045"


def test_a_streamed_batch_refused_whole_ends_the_stream_keeping_those_before(server: ServerProcess) -> None:
    """IngestUsage: b1 (1,500 tokens) is acknowledged; b2, whose batch_id is 257 bytes, ends the stream
    INVALID_ARGUMENT naming batch_id; b3 sent after it is not applied. Charges 0.045; b3 resent alone is accepted
    (0.09)."""
    with server.client() as client:
        customer(client, "str-c")
        first = usage_pb2.UsageBatch(batch_id="b1", events=[event("s1", "str-c", "tok", {"n": 1500})])
        refused = usage_pb2.UsageBatch(batch_id="b" * 257, events=[event("s2", "str-c", "tok", {"n": 1500})])
        after = usage_pb2.UsageBatch(batch_id="b3", events=[event("s3", "str-c", "tok", {"n": 1500})])
        acks: list[usage_pb2.IngestAck] = []

        def stream() -> None:
            acks.extend(client.usage.IngestUsage(iter([first, refused, after])))

        code, details = refusal(stream)
        assert (code, [(a.batch_id, a.accepted) for a in acks]) == (grpc.StatusCode.INVALID_ARGUMENT, [("b1", 1)])
        assert "batch_id" in details, details
        assert charges(client, "str-c") == "0.045"
        assert ack_summary(client.usage.IngestUsageBatch(after)) == (1, 0, [])
        assert charges(client, "str-c") == "0.09"


def test_a_contracts_decimals_are_answered_without_exponent_or_trailing_zeros(server: ServerProcess) -> None:
    """README "Decimal strings": a decimal a request set is answered in the grammar without an exponent or
    trailing zeros, read exactly: 12.50 -> 12.5, 1e3 and 1e+3 -> 1000, 1E-7 -> 0.0000001, -0 and 0.0 -> 0,
    0.5e-17 -> 0.000000000000000005 (18 places); 1E18 (not below 10^18) and 00 (a leading zero) are INVALID_ARGUMENT
    naming overage_price."""
    with server.client() as client:
        answered = []
        for i, text in enumerate(("12.50", "1e3", "1e+3", "1E-7", "-0", "0.0", "0.5e-17")):
            made = open_contract(
                client, f"dec{i}", f"dec{i}-c", this_hour_ms() - 2 * HOUR_MS, rate_card_id=CARD, overage_price=text
            )
            answered.append(made.overage_price)
        assert answered == ["12.5", "1000", "1000", "0.0000001", "0", "0", "0.000000000000000005"]
        for text in ("1E18", "00"):
            code, details = refusal(
                lambda text=text: open_contract(  # type: ignore[misc]
                    client, "dec-bad", "dec-bad-c", this_hour_ms() - 2 * HOUR_MS, rate_card_id=CARD, overage_price=text
                )
            )
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "overage_price" in details, (text, details)


def test_one_lines_price_reaches_the_money_limit_exactly_and_refuses_one_pico_more(server: ServerProcess) -> None:
    """edge: 999,999,999,999,999 + 701,411,834,604,693 = 1,701,411,834,604,692 units at 10^11 are
    170,141,183,460,469,200,000,000,000. 10^-9 more enter tier 2: its flat 31,731,687,303.715884105727 plus
    10^-21, rounded to 12 places away: the line's price is (2^127 - 1) picos exactly, accepted. 1 unit more adds
    10^-12 (1.000000001 x 10^-12 rounded): past it, INVALID_EVENT, the line unchanged."""
    with server.client() as client:
        customer(client, "edge-c")
        assert (
            rejected_in(
                client,
                event("q1", "edge-c", "edge", {"n": 999_999_999_999_999}),
                event("q2", "edge-c", "edge", {"n": 701_411_834_604_693}),
            )
            == []
        )
        assert charges(client, "edge-c") == "170141183460469200000000000"
        assert rejected_in(client, event("q3", "edge-c", "edge", {"n": 1e-9})) == []
        assert charges(client, "edge-c") == LIMIT
        assert rejected_in(client, event("q4", "edge-c", "edge", {"n": 1})) == [("q4", "INVALID_EVENT")]
        lines = [(ln.quantity, ln.amount, ln.events) for ln in preview(client, "edge-c", now_ms()).lines]
        assert lines == [("1701411834604692.000000001", LIMIT, 3)], lines


def test_the_money_limit_is_checked_on_each_charge_before_the_event_is_netted(server: ServerProcess) -> None:
    """Lines a and b at 10^11 (170,141,183,460,469,200,000,000,000), d (31,731,687,203.715884105727) and nb (b=100
    at 1: 100), no grant: charges and overage are (2^127 - 1) picos exactly. One event with a=40 and b=1 would net
    -9.5 (na 40, nb 100 -> 50.5), but the period's totals are checked per charge in product-id order before
    netting: na's 40 first, past the limit, INVALID_EVENT naming 'na', nothing changed. The same usage in two
    events is taken: b=1 gives back 49.5 (...254.215884105727), then a=40 charges 40 (...294.215884105727)."""
    with server.client() as client:
        customer(client, "net-lim")
        assert (
            rejected_in(
                client,
                event("l1", "net-lim", "big", {"n": 999_999_999_999_999}, lane="a"),
                event("l2", "net-lim", "big", {"n": 701_411_834_604_693}, lane="b"),
                event("l3", "net-lim", "big", {"n": 1}, lane="d"),
                event("l4", "net-lim", "mp1", {"a": 0, "b": 100}),
            )
            == []
        )
        assert charges(client, "net-lim") == LIMIT
        ack = client.ingest_batch([event("l5", "net-lim", "mp1", {"a": 40, "b": 1})])
        assert ack_summary(ack) == (0, 0, [(0, "INVALID_EVENT")])
        assert "'na'" in ack.rejected[0].message, ack.rejected[0].message
        assert charges(client, "net-lim") == LIMIT
        assert rejected_in(client, event("l6", "net-lim", "mp1", {"a": 0, "b": 1})) == []
        assert charges(client, "net-lim") == "170141183460469231731687254.215884105727"
        assert rejected_in(client, event("l7", "net-lim", "mp1", {"a": 40, "b": 0})) == []
        assert charges_and_overage(client, "net-lim") == ("170141183460469231731687294.215884105727",) * 2


def test_latest_of_events_with_one_timestamp_is_the_one_ingested_last(server: ServerProcess) -> None:
    """gauge at 1, each event its own batch: 10 at t (10), then 4 at the same t: the one ingested last counts,
    the line 4 (-6); then 7 at t: 7. In one batch, 10 then 4 at one t leave the line at 4."""
    with server.client() as client:
        customer(client, "same-t")
        t = now_ms() - 10_000
        assert charged_by(
            client,
            "same-t",
            event("s1", "same-t", "gauge", {"level": 10}, t),
            event("s2", "same-t", "gauge", {"level": 4}, t),
            event("s3", "same-t", "gauge", {"level": 7}, t),
        ) == ["10", "4", "7"]
        customer(client, "same-b")
        assert (
            rejected_in(
                client,
                event("b1", "same-b", "gauge", {"level": 10}, t),
                event("b2", "same-b", "gauge", {"level": 4}, t),
            )
            == []
        )
        assert charges(client, "same-b") == "4"
