"""A fifth audit of exact money in the price models (pricing.proto, PriceOverride in contracts.proto, README
"What the server does today": Pricing and Decimal strings), over the wire, for corners the earlier audits
(tests/test_audit_pricing_wire.py, test_audit_prices2/3/4_wire.py, test_decimal_grammar_wire.py) leave out: the
rounding of a charge to picos (half-even, once per side of price(after) - price(before)), partial packages of a
fractional size, a VOLUME bound reached exactly, an override's `price` and `multiplier` on every price model,
formulas rounding to tens, the per-event value limits, and Authorize's estimate against what ingesting the same
event then charges. The catalogue is test_audit_pricing_wire's (product `units`, SUM of `n`, priced on model and
region, card `card` in USD, customer `c` with contract `k-c`). Every amount asserted is worked out by hand in the
docstring."""

from __future__ import annotations

import time

from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_prices3_wire import flat, override, package, tiered
from tests.test_audit_pricing_wire import (
    catalogue,
    charges,
    draft,
    ingest,
    new_prices,
    publish,
    this_hour_ms,
    unit,
    work,
)


def one_by_one(client: TariffClient, prefix: str, at_ms: int, amounts: list[float], **dimensions: str) -> None:
    """Each amount its own event in its own batch, in order."""
    for index, n in enumerate(amounts):
        ingest(client, work(f"{prefix}{index}", at_ms + index, n, **dimensions))


def rejected(client: TariffClient, event: usage_pb2.UsageEvent) -> list[tuple[int, str]]:
    ack = client.ingest_batch([event], batch_id=f"b-{event.transaction_id}")
    return [(r.reason, r.message) for r in ack.rejected]


def test_a_charge_is_rounded_half_even_to_picos_once_per_side_so_charges_telescope(
    server_factory: ServerFactory,
) -> None:
    """A UNIT price of 0.0000000000005 (5 x 10^-13, 13 places: the price scale holds it) over five events of 1:
    price(q) = q x 0.5 picos, each side rounded half-even: p(1) = 0.5 -> 0, p(2) = 1, p(3) = 1.5 -> 2, p(4) = 2,
    p(5) = 2.5 -> 2. The charges are 0, 1, 1, 0, 0 picos: 0.000000000002 in all, the price of the total. Rounding
    half up would give p(5) = 3 (0.000000000003); rounding each event's own 0.5 pico half-even would give 0."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        publish(client, draft(client, 1, [unit("0.0000000000005")]), h)
        one_by_one(client, "p", h + 1, [1, 1, 1, 1])
        assert charges(client) == "0.000000000002"
        one_by_one(client, "q", h + 10, [1])
        assert charges(client) == "0.000000000002"


def test_a_started_package_of_a_fractional_size_is_charged_whole(server_factory: ServerFactory) -> None:
    """PACKAGE size 0.5 at 3: 0.2 units start package 1 (3); 0.3 more fill it (q = 0.5, ceil(0.5 / 0.5) = 1,
    charge 0); 0.01 more start package 2 (q = 0.51, ceil(1.02) = 2, charge 3). Charges 6: rounding q / size to the
    nearest package would charge 3, flooring it 0 for the first event. A formula size (p / 4 with p = 2, 0.5)
    prices alike on model f: 0.51 units in one event are 2 packages at p x 1.5 = 3, 6. In all 12."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        rates = [package("0.5", "3"), package("p / 4", "p * 1.5", model="f")]
        publish(client, draft(client, 1, rates, {"p": "2"}), h)
        one_by_one(client, "k", h + 1, [0.2, 0.3])
        assert charges(client) == "3"
        one_by_one(client, "m", h + 10, [0.01])
        assert charges(client) == "6"
        ingest(client, work("f", h + 20, 0.51, model="f"))
        assert charges(client) == "12"


def test_volume_prices_a_quantity_on_a_bound_by_that_tier_with_per_units_and_flat_fee(
    server_factory: ServerFactory,
) -> None:
    """VOLUME per 1000 units: up to 1500 at 2 (flat 0.5), then 1 (flat 3). 1500 units reach the first tier
    exactly (up_to is inclusive): 1500 x 2 / 1000 + 0.5 = 3.5. One more unit moves all 1501 to the second tier:
    1501 x 1 / 1000 + 3 = 4.501, a charge of 1.001. GRADUATED on model g with the same tiers, 2000 units:
    1500 x 2 / 1000 + 0.5 + 500 x 1 / 1000 + 3 = 3 + 0.5 + 0.5 + 3 = 7 (dividing by per_units only once, or
    forgetting it, would show: 3,000,500 x ...). In all 11.501."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        tiers = [("1500", "2", "0.5"), ("", "1", "3")]
        rates = [tiered(True, tiers, "1000"), tiered(False, tiers, "1000", model="g")]
        publish(client, draft(client, 1, rates), h)
        ingest(client, work("v1", h + 1, 1500))
        assert charges(client) == "3.5"
        ingest(client, work("v2", h + 2, 1))
        assert charges(client) == "4.501"
        ingest(client, work("g1", h + 3, 2000, model="g"))
        assert charges(client) == "11.501"


def test_an_override_price_replaces_each_models_price_as_the_proto_says(server_factory: ServerFactory) -> None:
    """PriceOverride.price by model, each rate on its own model value, each overridden at its own match:
    - UNIT 0.07 per 1000, override 0.5: per_units kept, 3000 units cost 3000 x 0.5 / 1000 = 1.5 (not 1500).
    - GRADUATED (up to 10 at 1 flat 2, then 0.5 flat 1) per 1000, override 0.02: the tiers and flat fees dropped,
      5000 units cost 5000 x 0.02 / 1000 = 0.1 (the proto's example).
    - VOLUME, same tiers, per 1, override 0.25: 12 units cost 3 (no flat fee).
    - PACKAGE size 10 at 7, override 2: size kept, 25 units are 3 started packages, 6.
    - FLAT 9, override 4: due once, 4; a second event charges nothing.
    In all 1.5 + 0.1 + 3 + 6 + 4 = 14.6."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        tiers = [("10", "1", "2"), ("", "0.5", "1")]
        rates = [
            unit("0.07", {"model": "u"}, per_units="1000"),
            tiered(False, tiers, "1000", model="g"),
            tiered(True, tiers, model="v"),
            package("10", "7", model="k"),
            flat("9", model="f"),
        ]
        publish(client, draft(client, 1, rates), h)
        for model, price in {"u": "0.5", "g": "0.02", "v": "0.25", "k": "2", "f": "4"}.items():
            override(client, "k-c", id=f"o-{model}", product_id="units", match={"model": model}, price=price)
        ingest(
            client,
            work("u", h + 1, 3000, model="u"),
            work("g", h + 2, 5000, model="g"),
            work("v", h + 3, 12, model="v"),
            work("k", h + 4, 25, model="k"),
            work("f", h + 5, 1, model="f"),
        )
        assert charges(client) == "14.6"
        ingest(client, work("f2", h + 6, 5, model="f"))
        assert charges(client) == "14.6"


def test_an_override_multiplier_scales_each_models_curve_rounded_to_picos_once(server_factory: ServerFactory) -> None:
    """PriceOverride.multiplier m = 0.333333333333333333 (18 places) on every model; the amount the card gives
    for the cumulative quantity times m, rounded half-even to 10^-12 once per side:
    - FLAT 10: 3.33333333333333333 -> 3.333333333333.
    - PACKAGE size 10 at 7, 25 units: 3 x 7 = 21, x m = 6.999999999999999993 -> 7.
    - GRADUATED up to 10 at 1 flat 2, then 0.5 flat 1; events of 10 then 2: p(10) = 12, x m =
      3.999999999999999996 -> 4; p(12) = 10 + 2 + 1 + 1 = 14, x m = 4.666666666666666662 -> 4.666666666667;
      charges 4 and 0.666666666667.
    - UNIT 3 per 7, 7 units: 3 x m = 0.999999999999999999 -> 1.
    In all 3.333333333333 + 7 + 4.666666666667 + 1 = 16. Rounding m to 12 places first (0.333333333333 x 10 =
    3.33333333333, x 14 = 4.666666666662) or truncating instead of rounding (4.666666666666) would show."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        rates = [
            flat("10", model="f"),
            package("10", "7", model="k"),
            tiered(False, [("10", "1", "2"), ("", "0.5", "1")], model="g"),
            unit("3", {"model": "u"}, per_units="7"),
        ]
        publish(client, draft(client, 1, rates), h)
        override(client, "k-c", id="third", product_id="units", multiplier="0.333333333333333333")
        ingest(client, work("f", h + 1, 1, model="f"), work("k", h + 2, 25, model="k"))
        assert charges(client) == "10.333333333333"
        one_by_one(client, "g", h + 3, [10], model="g")
        assert charges(client) == "14.333333333333"
        one_by_one(client, "g2", h + 4, [2], model="g")
        assert charges(client) == "15"
        ingest(client, work("u", h + 5, 7, model="u"))
        assert charges(client) == "16"


def test_formulas_round_to_tens_half_even_and_take_unary_minus(server_factory: ServerFactory) -> None:
    """round(x, places) with a negative count rounds to tens, half to even: round(15, -1) = 20 (the proto's
    example), round(25, -1) = 20, round(35, -1) = 40, round(1250, -2) = 1200; unary minus: -(1 - 3) = 2;
    min/max nest: max(min(p, 0.5), round(p / 7, 3)) with p = 2 is max(0.5, 0.286) = 0.5; a division rounded to
    18 places once: 2 / 7 = 0.285714285714285714|28... -> 0.285714285714285714. Priced: 7 units at 2 / 7 cost
    1.999999999999999998, charged at picos: 2."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        cases = {
            "a": ("round(15, -1)", "20"),
            "b": ("round(25, -1)", "20"),
            "c": ("round(35, -1)", "40"),
            "d": ("round(1250, -2)", "1200"),
            "e": ("-(1 - 3)", "2"),
            "f": ("max(min(p, 0.5), round(p / 7, 3))", "0.5"),
            "g": ("p / 7", "0.285714285714285714"),
        }
        rates = [unit(formula, {"model": name}) for name, (formula, _) in cases.items()]
        version = draft(client, 1, rates, {"p": "2"})
        got = {p for p in new_prices(client, version) if p[0] == "unit.price"}
        assert got == {("unit.price", price, "") for _, price in cases.values()}
        publish(client, version, h)
        ingest(client, work("g", h + 1, 7, model="g"))
        assert charges(client) == "2"


def test_event_values_below_1e15_and_at_18_places_are_priced_exactly_others_refused(
    server_factory: ServerFactory,
) -> None:
    """usage.proto: a value is finite, >= 0 and < 1e15, read from its shortest round-trip text, and one needing
    more than 18 decimal places is INVALID_EVENT, never rounded. At UNIT 1: 999999999999999.9 (the largest
    double below 1e15 written in one decimal) costs that; 1e15 is refused; 1e-18 is held (18 places) and costs
    10^-18, which rounds half-even to 0 picos; 1.5e-18 (19 places) is refused; 0.1 costs exactly 0.1 (not
    0.1000000000000000055...). Charges 999999999999999.9 + 0.1 = 1000000000000000."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        invalid = usage_pb2.INVALID_EVENT
        assert [r for r, _ in rejected(client, work("big", h + 1, 1e15))] == [invalid]
        assert [r for r, _ in rejected(client, work("tiny19", h + 2, 1.5e-18))] == [invalid]
        assert rejected(client, work("tiny18", h + 3, 1e-18)) == []
        assert charges(client) == "0"
        assert rejected(client, work("top", h + 4, 999999999999999.9)) == []
        assert charges(client) == "999999999999999.9"
        assert rejected(client, work("tenth", h + 5, 0.1)) == []
        assert charges(client) == "1000000000000000"


def test_authorize_estimates_what_ingesting_the_same_event_then_charges(server_factory: ServerFactory) -> None:
    """Authorize's estimated_cost is what the described usage would be charged now. On GRADUATED per 1000 (up to
    1500 at 2 flat 0.5, then 1 flat 3) after 1000 units: 700 more cost p(1700) - p(1000) = (3 + 0.5 + 0.2 + 3) -
    (2 + 0.5) = 4.2. On PACKAGE size 0.5 at 3 (model k) after 0.2: 0.31 more reach 0.51, 2 packages: 3. Under an
    override multiplier 0.333333333333333333 on model f (FLAT 10): 3.333333333333. Each estimate, then the
    event ingested, charges what was estimated: 5.5 + 4.2 + 3 + 3.333333333333 = 16.033333333333."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        rates = [
            tiered(False, [("1500", "2", "0.5"), ("", "1", "3")], "1000"),
            package("0.5", "3", model="k"),
            flat("10", model="f"),
        ]
        publish(client, draft(client, 1, rates), h)
        override(client, "k-c", id="third", product_id="units", match={"model": "f"}, multiplier="0.333333333333333333")
        now = time.time_ns() // 1_000_000
        ingest(client, work("g0", now, 1000), work("k0", now, 0.2, model="k"))
        assert charges(client) == "5.5"
        expected = {"": ("700", 700.0, "4.2"), "k": ("k1", 0.31, "3"), "f": ("f1", 1.0, "3.333333333333")}
        for model, (transaction_id, n, cost) in expected.items():
            dimensions = {"model": model} if model else {}
            estimate = client.authorize("c", "work", dimensions, {"n": n})
            assert estimate.estimated_cost == cost
            ingest(client, work(f"t{transaction_id}", time.time_ns() // 1_000_000, n, **dimensions))
        assert charges(client) == "16.033333333333"


def test_an_override_multiplier_multiplies_the_cards_exact_amount_not_its_charge_in_picos(
    server_factory: ServerFactory,
) -> None:
    """A UNIT price "1 / 3" is 0.333333333333333333 (18 places, once). Under multiplier 3 one unit costs
    0.333333333333333333 x 3 = 0.999999999999999999, rounded to picos once: 1. Multiplying the card's amount
    already rounded to picos (0.333333333333 x 3) would give 0.999999999999. A second unit: p(2) =
    0.666666666666666666 x 3 = 1.999999999999999998 -> 2, a charge of 1; three units at multiplier 1 on model b
    (no override there): 0.999999999999999999 -> 1. Charges 3."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        publish(client, draft(client, 1, [unit("1 / 3")]), h)
        override(client, "k-c", id="thrice", product_id="units", match={"model": "a"}, multiplier="3")
        ingest(client, work("a1", h + 1, 1, model="a"))
        assert charges(client) == "1"
        ingest(client, work("a2", h + 2, 1, model="a"))
        assert charges(client) == "2"
        ingest(client, work("b", h + 3, 3, model="b"))
        assert charges(client) == "3"


def test_thirds_reach_a_grant_at_picos_and_draw_it_to_the_end_exactly(server_factory: ServerFactory) -> None:
    """UNIT "1 / 3" (0.333333333333333333), a grant of 1: events of one unit are charged p(1) = 0.333333333333,
    p(2) - p(1) = 0.666666666667 - 0.333333333333 = 0.333333333334 (0.666666666666666666 rounds half-even up at
    the 12th place), p(3) - p(2) = 1 - 0.666666666667 = 0.333333333333: the grant is drawn to 0 exactly, no
    overage. A fourth unit: p(4) = 1.333333333333333332 -> 1.333333333333, charge 0.333333333333, all overage.
    Authorize estimates the second unit at 0.333333333334 (rounded per side, as charged), and the fourth at
    0.333333333333 with 0 credits available."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        publish(client, draft(client, 1, [unit("1 / 3")]), h)
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(id="g", contract_id="k-c", kind=contracts_pb2.PROMOTIONAL, amount="1")
            )
        )
        now = time.time_ns() // 1_000_000
        ingest(client, work("t1", now, 1))
        balance = client.get_balance("c")
        assert (balance.period_charges, balance.credits_remaining) == ("0.333333333333", "0.666666666667")
        assert client.authorize("c", "work", {}, {"n": 1}).estimated_cost == "0.333333333334"
        ingest(client, work("t2", now, 1))
        balance = client.get_balance("c")
        assert (balance.period_charges, balance.credits_remaining) == ("0.666666666667", "0.333333333333")
        ingest(client, work("t3", now, 1))
        balance = client.get_balance("c")
        assert (balance.period_charges, balance.credits_remaining, balance.overage_amount) == ("1", "0", "0")
        estimate = client.authorize("c", "work", {}, {"n": 1})
        assert (estimate.estimated_cost, estimate.credits_available) == ("0.333333333333", "0")
        ingest(client, work("t4", now, 1))
        balance = client.get_balance("c")
        assert (balance.period_charges, balance.overage_amount) == ("1.333333333333", "0.333333333333")


def test_authorize_estimates_every_product_an_event_feeds_as_ingesting_charges_them(
    server_factory: ServerFactory,
) -> None:
    """An event of type `work` feeds `units` (UNIT 0.07 per 1000 on n) and `calls` (COUNT, PACKAGE size 3 at
    0.5). After two events (n = 1000 each: 0.14; 2 calls: one package, 0.5; 0.64 in all), Authorize of n = 500
    estimates 500 x 0.07 / 1000 = 0.035 for units and 0 for calls (the third call fills the first package);
    a fourth call starts package 2: n = 500 again estimates 0.035 + 0.5 = 0.535. Ingesting each charges its
    estimate: 0.64 + 0.035 + 0.535 = 1.21."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        calls = pricing_pb2.Product(id="calls", event_type="work", aggregation=pricing_pb2.COUNT)
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=calls))
        size = pricing_pb2.PackagePrice(package_size="3", package_price="0.5")
        rates = [unit("0.07", per_units="1000"), pricing_pb2.Rate(product_id="calls", package=size)]
        publish(client, draft(client, 1, rates), h)
        now = time.time_ns() // 1_000_000
        ingest(client, work("w1", now, 1000), work("w2", now, 1000))
        assert charges(client) == "0.64"
        for index, cost in enumerate(["0.035", "0.535"]):
            assert client.authorize("c", "work", {}, {"n": 500}).estimated_cost == cost
            ingest(client, work(f"w{index + 3}", time.time_ns() // 1_000_000, 500))
        assert charges(client) == "1.21"


def test_the_value_limits_hold_a_formulas_value_not_the_numbers_written_in_it(server_factory: ServerFactory) -> None:
    """pricing.proto: a number in a formula follows the decimal grammar's form; the limits on a value (below
    10^18, at most 18 places) apply to the formula's value, rounded half-even to 18 places once, while a plain
    decimal price past them is refused, never rounded. "1e-19 * 1e3" is 10^-16; "100000000000000000000 / 1e21"
    is 0.1; "round(0.0000000000000000015, 18)" is 0.000000000000000002 (half-even: 1.5 -> 2). The literal
    "0.0000000000000000001" (19 places) is a validation error. 10 units of model b cost 1."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        cases = {
            "a": ("1e-19 * 1e3", "0.0000000000000001"),
            "b": ("100000000000000000000 / 1e21", "0.1"),
            "c": ("round(0.0000000000000000015, 18)", "0.000000000000000002"),
        }
        rates = [unit(formula, {"model": name}) for name, (formula, _) in cases.items()]
        version = draft(client, 1, rates)
        got = {p for p in new_prices(client, version) if p[0] == "unit.price"}
        assert got == {("unit.price", price, "") for _, price in cases.values()}
        literal = draft(client, 1, [unit("0.0000000000000000001", {"model": "d"})])
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id="card", version=literal)
        )
        assert not report.ok
        assert [f.path for f in report.findings] == ["rates[1].unit.price"]
        publish(client, version, h)
        ingest(client, work("b", h + 1, 10, model="b"))
        assert charges(client) == "1"


def test_prices_at_every_places_limit_at_once_are_charged_exactly(server_factory: ServerFactory) -> None:
    """Every field at 18 places at once, so the exact ratio outgrows 128 bits (the kernel's 256-bit path):
    p = 0.123456789012345678, u = per_units 0.000000000000000007, q = 123456.123456789 (a double's shortest text).
    - UNIT on model a: p x q = 0.123456789012345678 x 123456.123456789 = 15241.496585886899737846763907942
      (exactly, 32 digits), / 7e-18 = 2177356655126699962549.537701134571428571...
      -> 2177356655126699962549.537701134571 at picos (the 13th place is 4: down).
    - The same under multiplier m = 0.999999999999999999 on model b: that ratio x m =
      2177356655126699962549.537701134571428571... - 0.000000000000000002177356655126699962549... =
      2177356655126699960372.181046007871466... -> 2177356655126699960372.181046007871.
      Charges 4354713310253399922921.718747142442.
    - GRADUATED per u on model t: up to 3e-18 at p, flat 1e-18, then 999999999999.999999999999999999; 0.000001
      units: 3e-18 x p / u + 1e-18 + (0.000001 - 3e-18) x 999999999999.999999999999999999 / u =
      0.052910052433862433428571... + 0.000000000000000001 + 142857142856714285714285.714285571428571428571...
      = 142857142856714285714285.767195623862433862... -> 142857142856714285714285.767195623862, after B
      147211856166967685637207.485942766304.
    - PACKAGE size u at p on model k, 0.000001 units: ceil(0.000001 / 7e-18) = ceil(142857142857.142...) =
      142857142858 packages x p = 17636684144.726631247724867724 -> 17636684144.726631247725, in all
      147211856166985322321352.212574014029."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        p, u = "0.123456789012345678", "0.000000000000000007"
        tiers = [("0.000000000000000003", p, "0.000000000000000001"), ("", "999999999999.999999999999999999", "")]
        rates = [
            unit(p, {"model": "a"}, per_units=u),
            unit(p, {"model": "b"}, per_units=u),
            tiered(False, tiers, u, model="t"),
            package(u, p, model="k"),
        ]
        publish(client, draft(client, 1, rates), h)
        override(client, "k-c", id="m", product_id="units", match={"model": "b"}, multiplier="0.999999999999999999")
        ingest(client, work("a", h + 1, 123456.123456789, model="a"))
        assert charges(client) == "2177356655126699962549.537701134571"
        ingest(client, work("b", h + 2, 123456.123456789, model="b"))
        assert charges(client) == "4354713310253399922921.718747142442"
        ingest(client, work("t", h + 3, 0.000001, model="t"))
        assert charges(client) == "147211856166967685637207.485942766304"
        ingest(client, work("k", h + 4, 0.000001, model="k"))
        assert charges(client) == "147211856166985322321352.212574014029"


def test_a_formula_is_charged_at_its_price_rounded_to_18_places_not_at_its_exact_value(
    server_factory: ServerFactory,
) -> None:
    """A formula's price is its value rounded half-even to 18 places once, and that is what is charged; 10^12
    units make the 18th place show at picos:
    - "2 / 3" is 0.666666666666666667: 10^12 units cost 666666666666.666667 (the exact 2/3 would give
      666666666666.666666666667).
    - "p / 2" with p = 0.000000000000000003 is 1.5e-18 -> 0.000000000000000002 (half-even up); with q = 5e-18,
      "q / 2" is 2.5e-18 -> 0.000000000000000002 (half-even down): 10^12 units of each cost 0.000002.
    - VOLUME up to "1 / 3" (0.333333333333333333) at "2 / 3" flat "1 / 7" (0.142857142857142857), then 1: the value
      0.333333333333333333 arrives as the double whose shortest text is 0.3333333333333333, under the bound:
      0.3333333333333333 x 0.666666666666666667 + 0.142857142857142857 = 0.365079365079365057... -> 0.365079365079.
    - PACKAGE size "1 / 3" (0.333333333333333333) at "2 / 3": 1 unit is ceil(3.000000000000000003) = 4 started
      packages, 2.666666666666666668 -> 2.666666666667.
    Running charges: 666666666666.666667, .666669, .666671, 666666666667.031750365079, 666666666669.698417031746."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        rates = [
            unit("2 / 3", {"model": "a"}),
            unit("p / 2", {"model": "b"}),
            unit("q / 2", {"model": "c"}),
            tiered(True, [("1 / 3", "2 / 3", "1 / 7"), ("", "1", "")], model="t"),
            package("1 / 3", "2 / 3", model="k"),
        ]
        publish(client, draft(client, 1, rates, {"p": "0.000000000000000003", "q": "0.000000000000000005"}), h)
        expected = {
            ("a", 1e12): "666666666666.666667",
            ("b", 1e12): "666666666666.666669",
            ("c", 1e12): "666666666666.666671",
            ("t", 0.333333333333333333): "666666666667.031750365079",
            ("k", 1.0): "666666666669.698417031746",
        }
        for index, ((model, n), total) in enumerate(expected.items()):
            ingest(client, work(f"e{index}", h + index, n, model=model))
            assert charges(client) == total, model
