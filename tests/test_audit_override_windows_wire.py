"""Price overrides (contracts.proto PriceOverride, README "Contracts" and "Changing prices safely") over every price
model, windows starting and ending inside a period, overlapping overrides, an override added after usage was rated,
and a version change inside an override's window, over the wire. Every amount was computed by hand from the docs.

Products (SUM of `n`, priced on `model`), one per price model, on card `card` (v1 from S, six hours before this
hour): `u` UNIT 2 per 10 units; `g` GRADUATED and `v` VOLUME, tiers up to 100 at 1 (flat 10) then 0.5 (flat 5);
`p` PACKAGE 3 per started 10; `f` FLAT 100. Card `card2` prices `u` only, UNIT 2 per 10 units (its own so that a
publish there moves no other customer)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, preview, refusal, serving, this_hour_ms
from tests.serverproc import ServerProcess

MINUTE_MS = 60_000
START_MS = this_hour_ms() - 6 * HOUR_MS
# A contract whose first monthly period ended days ago (32 days back: a month is at most 31 days).
CLOSED_START_MS = START_MS - 32 * 24 * HOUR_MS
# Instants above are taken at import: conftest.py skips the module once a calendar month has turned since.
pytestmark = pytest.mark.clock_at_import
TIERS = [
    pricing_pb2.Tier(up_to="100", unit_price="1", flat_price="10"),
    pricing_pb2.Tier(unit_price="0.5", flat_price="5"),
]


def _rates(products: str) -> list[pricing_pb2.Rate]:
    made = {
        "u": pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price="2", per_units="10")),
        "g": pricing_pb2.Rate(product_id="g", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=TIERS)),
        "v": pricing_pb2.Rate(product_id="v", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME, tiers=TIERS)),
        "p": pricing_pb2.Rate(product_id="p", package=pricing_pb2.PackagePrice(package_size="10", package_price="3")),
        "f": pricing_pb2.Rate(product_id="f", flat=pricing_pb2.FlatPrice(price="100")),
    }
    return [made[p] for p in products]


def _card(client: TariffClient, card_id: str, products: str) -> None:
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card_id, pricing_unit="USD"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card_id, upsert_rates=_rates(products))
    )
    _publish(client, card_id, 1, START_MS)


def _publish(client: TariffClient, card_id: str, version: int, from_ms: int) -> None:
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card_id, version=version, effective_from=stamp(from_ms))
    client.pricing.PublishVersion(request)


def _simulation(card_id: str, from_ms: int, customer_id: str) -> pricing_pb2.SimulateVersionRequest:
    """SimulateVersion of `card_id`'s version 2 from `from_ms` to the end of this hour, for `customer_id`."""
    return pricing_pb2.SimulateVersionRequest(
        rate_card_id=card_id,
        version=2,
        period_start=stamp(from_ms),
        period_end=stamp(this_hour_ms() + HOUR_MS),
        customer_ids=[customer_id],
    )


def _override(client: TariffClient, customer_id: str, override: contracts_pb2.PriceOverride) -> None:
    request = contracts_pb2.AddOverrideRequest(contract_id=f"k-{customer_id}", override=override)
    client.contracts.AddOverride(request)


def _window(override: contracts_pb2.PriceOverride, from_ms: int, until_ms: int) -> contracts_pb2.PriceOverride:
    override.starting_at.CopyFrom(stamp(from_ms))
    override.ending_before.CopyFrom(stamp(until_ms))
    return override


def _use(
    client: TariffClient, customer_id: str, tx: str, product: str, at_ms: int, n: float, model: str | None = None
) -> None:
    event = usage_pb2.UsageEvent(
        transaction_id=tx, customer_id=customer_id, event_type=product, timestamp_ms=at_ms, values={"n": n}
    )
    if model is not None:
        event.dimensions["model"] = model
    ack = client.ingest_batch([event], batch_id=f"b-{tx}")
    assert ack.accepted == 1, ack.rejected


def _lines(client: TariffClient, customer_id: str) -> dict[str, str]:
    return {line.product_id: line.amount for line in preview(client, customer_id, START_MS).lines}


def _explained(client: TariffClient, customer_id: str, product: str) -> list[tuple[str, str]]:
    line_id = f"{product};model="
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=customer_id, period_start=stamp(START_MS), line_id=line_id
    )
    return [(e.transaction_id, e.amount) for e in client.invoices.ExplainLineItem(request).events]


def _estimate(client: TariffClient, customer_id: str, product: str, n: float) -> str:
    return str(client.authorize(customer_id, product, {}, {"n": n}).estimated_cost)


def _setup(client: TariffClient) -> None:
    for product in "ugvpf":
        created = pricing_pb2.Product(
            id=product, event_type=product, aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["model"]
        )
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=created))
    _card(client, "card", "ugvpf")
    _card(client, "card2", "u")
    for customer_id in ("prices", "win", "winp", "overlap", "late"):
        open_contract(client, customer_id, f"k-{customer_id}", START_MS, rate_card_id="card")
    open_contract(client, "ver", "k-ver", START_MS, rate_card_id="card2")
    _card(client, "card3", "g")
    open_contract(client, "doc", "k-doc", START_MS, rate_card_id="card3")
    _card(client, "card4", "u")
    for customer_id in ("pkgw", "volw", "cur", "clamp", "third", "lateg", "mult", "empty", "ab", "ba"):
        open_contract(client, customer_id, f"k-{customer_id}", START_MS, rate_card_id="card")
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card5", pricing_unit="USD"))
    tiers = [pricing_pb2.Tier(up_to="1000", unit_price="9", flat_price="1"), pricing_pb2.Tier(unit_price="8")]
    tiered = pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers, per_units="1000")
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="card5", upsert_rates=[pricing_pb2.Rate(product_id="g", tiered=tiered)]
        )
    )
    _publish(client, "card5", 1, START_MS)
    open_contract(client, "k1000", "k-k1000", START_MS, rate_card_id="card5")
    _card(client, "card6", "u")
    _card(client, "card7", "g")
    open_contract(client, "nc", "k-nc", START_MS, rate_card_id="card7")
    _card(client, "card8", "up")
    open_contract(client, "per", "k-per", START_MS, rate_card_id="card8")
    _card(client, "card9", "u")
    open_contract(client, "sw", "k-sw", START_MS, START_MS + 3 * HOUR_MS, rate_card_id="card")
    open_contract(client, "sw", "k-sw2", START_MS + 3 * HOUR_MS, rate_card_id="card")
    _card(client, "card15", "u")
    open_contract(client, "offend", "k-offend", START_MS, rate_card_id="card15")
    _card(client, "card14", "u")
    open_contract(client, "rb", "k-rb", START_MS, rate_card_id="card14")
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card13", pricing_unit="USD"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="card13", upsert_rates=_rates("u"))
    )
    _publish(client, "card13", 1, CLOSED_START_MS)
    open_contract(client, "closed", "k-closed", CLOSED_START_MS, rate_card_id="card13")
    _card(client, "card12", "g")
    open_contract(client, "cw", "k-cw", START_MS, rate_card_id="card12")
    open_contract(client, "hold", "k-hold", START_MS, rate_card_id="card")
    grant = contracts_pb2.Grant(
        id="g", contract_id="k-hold", kind=contracts_pb2.PREPAID, amount="100", paid_amount="100"
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    for card_id, customer_id in (("card10", "rr1"), ("card11", "rr2")):
        _card(client, card_id, "g")
        open_contract(client, customer_id, f"k-{customer_id}", START_MS, rate_card_id=card_id)
    open_contract(client, "ns", "k-ns", START_MS, rate_card_id="card9")
    for customer_id in ("late2", "both"):
        open_contract(client, customer_id, f"k-{customer_id}", START_MS, rate_card_id="card6")
    open_contract(client, "off", "k-off", START_MS, rate_card_id="card4")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serving(ServerProcess(tmp_path_factory.mktemp("audit-override-windows") / "data"), _setup)


def test_an_override_price_means_what_the_proto_says_for_every_price_model(server: ServerProcess) -> None:
    """u: 30 units at 5 per 10 = 15 (not 6); g and v: 150 units at a flat 0.3 = 45, tiers and flat fees dropped (not
    140 and 80); p: 25 units are 3 packages at 7 = 21 (not 9); f: 40 once (not 100), the second event nothing."""
    with server.client() as client:
        for product, price in (("u", "5"), ("g", "0.3"), ("v", "0.3"), ("p", "7"), ("f", "40")):
            _override(client, "prices", contracts_pb2.PriceOverride(id=f"o-{product}", product_id=product, price=price))
        at_ms = START_MS + HOUR_MS + MINUTE_MS
        for product, n in (("u", 30), ("g", 150), ("v", 150), ("p", 25), ("f", 5)):
            _use(client, "prices", f"prices-{product}", product, at_ms, n)
        _use(client, "prices", "prices-f2", "f", at_ms, 3)
        assert sorted(_lines(client, "prices").values()) == sorted(["15", "45", "45", "21", "40"])
        assert str(client.get_balance("prices").period_charges) == "166"
        # 10 more: u 5, g and v 0.3 x 10 = 3, p 25 -> 35 units is still 4 packages: 7, f nothing.
        estimates = [_estimate(client, "prices", p, 10) for p in "ugvpf"]
        assert estimates == ["5", "3", "3", "7", "0"]


def test_a_window_inside_the_period_prices_its_hours_and_the_tiers_carry_across(server: ServerProcess) -> None:
    """g with a multiplier 2 from S+2h to S+3h: 80 units at S+1h are p(80) = 90; 40 at S+2h are 2 x p(120) -
    2 x p(80) = 250 - 180 = 70; 10 at S+3h are p(130) - p(120) = 130 - 125 = 5: 165. With a price of 3 instead
    (`winp`): 90, 3 x 120 - 3 x 80 = 120, 5: 215."""
    with server.client() as client:
        window = (START_MS + 2 * HOUR_MS, START_MS + 3 * HOUR_MS)
        _override(client, "win", _window(contracts_pb2.PriceOverride(id="w", product_id="g", multiplier="2"), *window))
        _override(client, "winp", _window(contracts_pb2.PriceOverride(id="w", product_id="g", price="3"), *window))
        for customer_id in ("win", "winp"):
            for i, (hours, n) in enumerate(((1, 80), (2, 40), (3, 10))):
                _use(client, customer_id, f"{customer_id}-{i}", "g", START_MS + hours * HOUR_MS + MINUTE_MS, n)
        assert _explained(client, "win", "g") == [("win-0", "90"), ("win-1", "70"), ("win-2", "5")]
        assert _explained(client, "winp", "g") == [("winp-0", "90"), ("winp-1", "120"), ("winp-2", "5")]
        assert _lines(client, "win") == {"g": "165"} and _lines(client, "winp") == {"g": "215"}
        assert [str(client.get_balance(c).period_charges) for c in ("win", "winp")] == ["165", "215"]
        assert [_estimate(client, c, "g", 10) for c in ("win", "winp")] == ["5", "5"]  # now is past the window


def test_the_most_specific_override_wins_then_the_one_added_last(server: ServerProcess) -> None:
    """u (2 per 10): B {model: a} price 6 added first, A {} price 4, C {model: "*"} multiplier 3 last. 20 units of
    model a: B, 12; 10 of model b: A and C equally specific, C added last: 3 x 2 = 6."""
    with server.client() as client:
        _override(
            client, "overlap", contracts_pb2.PriceOverride(id="B", product_id="u", match={"model": "a"}, price="6")
        )
        _override(client, "overlap", contracts_pb2.PriceOverride(id="A", product_id="u", price="4"))
        _override(
            client, "overlap", contracts_pb2.PriceOverride(id="C", product_id="u", match={"model": "*"}, multiplier="3")
        )
        _use(client, "overlap", "ov-a", "u", START_MS + HOUR_MS, 20, model="a")
        _use(client, "overlap", "ov-b", "u", START_MS + HOUR_MS, 10, model="b")
        lines = preview(client, "overlap", START_MS).lines
        assert sorted((line.line_id, line.amount) for line in lines) == [("u;model=a", "12"), ("u;model=b", "6")]
        assert str(client.get_balance("overlap").period_charges) == "18"


def test_an_override_added_after_usage_keeps_that_usage_and_prices_what_follows(server: ServerProcess) -> None:
    """10 units of u at S+1h are 2; then a price of 5 from S: they keep 2, 10 more dated S+1h are 5: 7."""
    with server.client() as client:
        _use(client, "late", "late-1", "u", START_MS + HOUR_MS + MINUTE_MS, 10)
        _override(
            client,
            "late",
            _window(contracts_pb2.PriceOverride(id="o", product_id="u", price="5"), START_MS, START_MS + 5 * HOUR_MS),
        )
        _use(client, "late", "late-2", "u", START_MS + HOUR_MS + MINUTE_MS, 10)
        assert _explained(client, "late", "u") == [("late-1", "2"), ("late-2", "5")]
        assert str(client.get_balance("late").period_charges) == "7"
        assert _estimate(client, "late", "u", 10) == "2"  # now is past the window


def test_a_version_inside_the_window_is_multiplied_and_re_rated_with_it(server: ServerProcess) -> None:
    """card2, u: multiplier 0.5 from S+1h to S+4h. 10 units at S+1h: 1, at S+2h: 1, at S+4h: 2 (current 4).
    v2 at 4 per 10: SimulateVersion over [S+2h, now+1h) gives 0.5 x 4 + 4 = 6 against 3; published from S+2h it
    re-rates S+2h to 2 (+1) and S+4h to 4 (+2): 7."""
    with server.client() as client:
        _override(
            client,
            "ver",
            _window(
                contracts_pb2.PriceOverride(id="h", product_id="u", multiplier="0.5"),
                START_MS + HOUR_MS,
                START_MS + 4 * HOUR_MS,
            ),
        )
        for i, hours in enumerate((1, 2, 4)):
            _use(client, "ver", f"ver-{i}", "u", START_MS + hours * HOUR_MS + MINUTE_MS, 10)
        assert str(client.get_balance("ver").period_charges) == "4"
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="card2",
                based_on_version=1,
                upsert_rates=[pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price="4", per_units="10"))],
            )
        )
        request = _simulation("card2", START_MS + 2 * HOUR_MS, "ver")
        totals = client.pricing.SimulateVersion(request).totals
        assert (totals.current_amount, totals.simulated_amount, totals.delta) == ("3", "6", "3")
        _publish(client, "card2", 2, START_MS + 2 * HOUR_MS)
        assert _lines(client, "ver") == {"u": "7"}
        assert str(client.get_balance("ver").period_charges) == "7"
        explained = _explained(client, "ver", "u")
        assert sorted(a for _, a in explained) == sorted(["1", "1", "2", "1", "2"])


def _same_prices(client: TariffClient, card_id: str, products: str) -> None:
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card_id, based_on_version=1, upsert_rates=_rates(products))
    )


def test_the_readme_example_of_an_override_added_between_rated_hours(server: ServerProcess) -> None:
    """README "Changing prices safely": g 50 units at S+1h are 60; a multiplier 0.5 added; 100 at S+3h are 0.5 x
    p(150) - 0.5 x p(50) = 70 - 30 = 40; the same prices from S+2h make S+3h 40 - 30 = 10, the line 70."""
    with server.client() as client:
        _use(client, "doc", "doc-1", "g", START_MS + HOUR_MS, 50)
        _override(client, "doc", contracts_pb2.PriceOverride(id="half", product_id="g", multiplier="0.5"))
        _use(client, "doc", "doc-2", "g", START_MS + 3 * HOUR_MS, 100)
        assert _lines(client, "doc") == {"g": "100"}
        _same_prices(client, "card3", "g")
        request = _simulation("card3", START_MS + 2 * HOUR_MS, "doc")
        totals = client.pricing.SimulateVersion(request).totals
        assert (totals.current_amount, totals.simulated_amount, totals.delta) == ("40", "10", "-30")
        _publish(client, "card3", 2, START_MS + 2 * HOUR_MS)
        assert _lines(client, "doc") == {"g": "70"}
        assert str(client.get_balance("doc").period_charges) == "70"
        assert _explained(client, "doc", "g") == [("doc-1", "60"), ("doc-2", "40"), ("", "-30")]


def test_a_window_starting_off_the_hour_refuses_a_publish_re_rating_its_hour(server: ServerProcess) -> None:
    """card4, u 2 per 10, price 4 from S+2h30m: 10 units at S+2h15m are 2, at S+2h45m 4. A publish from S+2h would
    re-rate that hour: FAILED_PRECONDITION; from S+3h nothing in the hour moves: taken, 6 stays."""
    with server.client() as client:
        override = contracts_pb2.PriceOverride(id="o", product_id="u", price="4")
        override.starting_at.CopyFrom(stamp(START_MS + 2 * HOUR_MS + 30 * MINUTE_MS))
        _override(client, "off", override)
        _use(client, "off", "off-1", "u", START_MS + 2 * HOUR_MS + 15 * MINUTE_MS, 10)
        _use(client, "off", "off-2", "u", START_MS + 2 * HOUR_MS + 45 * MINUTE_MS, 10)
        assert _lines(client, "off") == {"u": "6"}
        _same_prices(client, "card4", "u")
        code, _ = refusal(lambda: _publish(client, "card4", 2, START_MS + 2 * HOUR_MS))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        _publish(client, "card4", 2, START_MS + 3 * HOUR_MS)
        assert _lines(client, "off") == {"u": "6"}
        assert _estimate(client, "off", "u", 10) == "4"


def test_windows_over_package_and_volume_and_per_units(server: ServerProcess) -> None:
    """p: 5 units at S+1h are 3; price 7 from S+2h: 10 at S+2h are 7 x 2 - 7 x 1 = 7: 10. v: 80 at S+1h are
    10 + 80 = 90; price 0.3 from S+2h: 40 at S+2h are 0.3 x 120 - 0.3 x 80 = 12: 102. card5 g (GRADUATED per 1000,
    9 up to 1000 with flat 1, then 8) with price 0.02: 5,000 units are 0.1 (contracts.proto's example)."""
    with server.client() as client:
        for customer_id, product, price in (("pkgw", "p", "7"), ("volw", "v", "0.3")):
            override = contracts_pb2.PriceOverride(id="o", product_id=product, price=price)
            override.starting_at.CopyFrom(stamp(START_MS + 2 * HOUR_MS))
            _override(client, customer_id, override)
        _use(client, "pkgw", "pkgw-1", "p", START_MS + HOUR_MS, 5)
        _use(client, "pkgw", "pkgw-2", "p", START_MS + 2 * HOUR_MS, 10)
        _use(client, "volw", "volw-1", "v", START_MS + HOUR_MS, 80)
        _use(client, "volw", "volw-2", "v", START_MS + 2 * HOUR_MS, 40)
        assert _explained(client, "pkgw", "p") == [("pkgw-1", "3"), ("pkgw-2", "7")]
        assert _explained(client, "volw", "v") == [("volw-1", "90"), ("volw-2", "12")]
        _override(client, "k1000", contracts_pb2.PriceOverride(id="o", product_id="g", price="0.02"))
        _use(client, "k1000", "k1000-1", "g", START_MS + HOUR_MS, 5000)
        assert _lines(client, "k1000") == {"g": "0.1"}


def test_authorize_prices_with_the_override_in_force_now(server: ServerProcess) -> None:
    """u 2 per 10: price 5 from this hour for two hours, then price 9 (added last, equally specific) from two hours
    on: 10 units now are 5, not 9 nor 2; f multiplier 3 from the next hour: 100 now."""
    with server.client() as client:
        now_hour = this_hour_ms()
        _override(
            client,
            "cur",
            _window(contracts_pb2.PriceOverride(id="now", product_id="u", price="5"), now_hour, now_hour + 2 * HOUR_MS),
        )
        later = contracts_pb2.PriceOverride(id="later", product_id="u", price="9")
        later.starting_at.CopyFrom(stamp(now_hour + 2 * HOUR_MS))
        _override(client, "cur", later)
        future = contracts_pb2.PriceOverride(id="f", product_id="f", multiplier="3")
        future.starting_at.CopyFrom(stamp(now_hour + HOUR_MS))
        _override(client, "cur", future)
        assert _estimate(client, "cur", "u", 10) == "5"
        assert _estimate(client, "cur", "f", 1) == "100"


def test_a_publish_re_rates_with_the_overrides_as_they_are_now(server: ServerProcess) -> None:
    """card6, u 2 per 10. late2: 10 units at S+1h are 2, then a price 5 from S: the same prices published from S
    re-rate S+1h with it: 5 (+3). both: A {} price 4 from S+2h30m (off the hour), B {model: a} price 6 always;
    10 units of model a at S+2h15m are 6, and B prices them on both sides of 2h30m, so the publish is taken."""
    with server.client() as client:
        _use(client, "late2", "late2-1", "u", START_MS + HOUR_MS, 10)
        _override(client, "late2", contracts_pb2.PriceOverride(id="o", product_id="u", price="5"))
        off = contracts_pb2.PriceOverride(id="A", product_id="u", price="4")
        off.starting_at.CopyFrom(stamp(START_MS + 2 * HOUR_MS + 30 * MINUTE_MS))
        _override(client, "both", off)
        _override(client, "both", contracts_pb2.PriceOverride(id="B", product_id="u", match={"model": "a"}, price="6"))
        _use(client, "both", "both-1", "u", START_MS + 2 * HOUR_MS + 15 * MINUTE_MS, 10, model="a")
        assert _lines(client, "late2") == {"u": "2"} and _lines(client, "both") == {"u": "6"}
        _same_prices(client, "card6", "u")
        _publish(client, "card6", 2, START_MS)
        assert _lines(client, "late2") == {"u": "5"} and _lines(client, "both") == {"u": "6"}
        (line,) = preview(client, "late2", START_MS).lines
        adjustment = line.adjustments[0]
        assert (adjustment.old_amount, adjustment.new_amount, adjustment.delta) == ("2", "5", "3")
        assert [(p.version, p.quantity, p.amount, p.unit_price) for p in line.prices] == [(2, "10", "5", "0.5")]
        assert str(client.get_balance("late2").period_charges) == "5"


def test_a_multiplier_on_a_falling_volume_price_stops_at_zero_then_charges_on(server: ServerProcess) -> None:
    """v: 100 units at S+1h are 10 + 100 = 110; multiplier 10 from S+2h: 1 unit at S+2h would be 10 x p(101) -
    10 x p(100) = 555 - 1,100 = -545: it gives back 110, the line 0; 1 more at S+3h is 10 x (56 - 55.5) = 5."""
    with server.client() as client:
        override = contracts_pb2.PriceOverride(id="o", product_id="v", multiplier="10")
        override.starting_at.CopyFrom(stamp(START_MS + 2 * HOUR_MS))
        _override(client, "clamp", override)
        for i, (hours, n) in enumerate(((1, 100), (2, 1), (3, 1))):
            _use(client, "clamp", f"clamp-{i}", "v", START_MS + hours * HOUR_MS, n)
        assert _explained(client, "clamp", "v") == [("clamp-0", "110"), ("clamp-1", "-110"), ("clamp-2", "5")]
        assert str(client.get_balance("clamp").period_charges) == "5"


def test_a_multiplier_rounds_each_side_once(server: ServerProcess) -> None:
    """u 2 per 10, multiplier 0.333333333333333333: 10 units are round(0.666666666666666666) = 0.666666666667;
    10 more round(1.333333333333333332) - 0.666666666667 = 0.666666666666: 1.333333333333."""
    with server.client() as client:
        override = contracts_pb2.PriceOverride(id="o", product_id="u", multiplier="0.333333333333333333")
        _override(client, "third", override)
        _use(client, "third", "third-1", "u", START_MS + HOUR_MS, 10)
        _use(client, "third", "third-2", "u", START_MS + HOUR_MS, 10)
        assert _explained(client, "third", "u") == [("third-1", "0.666666666667"), ("third-2", "0.666666666666")]
        assert _lines(client, "third") == {"u": "1.333333333333"}


def test_a_late_event_inside_a_window_is_charged_at_the_top_with_its_override(server: ServerProcess) -> None:
    """g, multiplier 2 from S+2h to S+3h: 80 at S+1h are 90, 10 at S+3h are p(90) - p(80) = 10, then 40 dated
    S+2h arriving last are 2 x p(130) - 2 x p(90) = 260 - 200 = 60: 160."""
    with server.client() as client:
        window = (START_MS + 2 * HOUR_MS, START_MS + 3 * HOUR_MS)
        _override(
            client, "lateg", _window(contracts_pb2.PriceOverride(id="w", product_id="g", multiplier="2"), *window)
        )
        for i, (hours, n) in enumerate(((1, 80), (3, 10), (2, 40))):
            _use(client, "lateg", f"lateg-{i}", "g", START_MS + hours * HOUR_MS, n)
        assert _explained(client, "lateg", "g") == [("lateg-0", "90"), ("lateg-1", "10"), ("lateg-2", "60")]
        assert _lines(client, "lateg") == {"g": "160"}


def test_an_hour_holding_an_override_start_off_the_hour_is_not_carried_nor_re_rated(server: ServerProcess) -> None:
    """card7 g, multiplier 2 from S+1h30m: 50 units at S+1h15m are p(50) = 60; 100 at S+3h are 2 x p(150) -
    2 x p(50) = 280 - 120 = 160; 10 dated S+1h45m arriving last are 2 x p(160) - 2 x p(150) = 10: 230. Simulating
    or publishing from S+1h would price S+1h again: FAILED_PRECONDITION naming the instant. The same prices from
    S+2h re-rate S+3h over the 60 units before it, S+1h not carried: 2 x p(160) - 2 x p(60) = 290 - 140 = 150."""
    with server.client() as client:
        override = contracts_pb2.PriceOverride(id="o", product_id="g", multiplier="2")
        override.starting_at.CopyFrom(stamp(START_MS + HOUR_MS + 30 * MINUTE_MS))
        _override(client, "nc", override)
        for i, (at_ms, n) in enumerate(
            ((HOUR_MS + 15 * MINUTE_MS, 50), (3 * HOUR_MS, 100), (HOUR_MS + 45 * MINUTE_MS, 10))
        ):
            _use(client, "nc", f"nc-{i}", "g", START_MS + at_ms, n)
        assert _lines(client, "nc") == {"g": "230"}
        _same_prices(client, "card7", "g")
        request = _simulation("card7", START_MS + HOUR_MS, "nc")
        code, message = refusal(lambda: client.pricing.SimulateVersion(request))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "nc" in message, message
        code, message = refusal(lambda: _publish(client, "card7", 2, START_MS + HOUR_MS))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "nc" in message, message
        request.period_start.CopyFrom(stamp(START_MS + 2 * HOUR_MS))
        totals = client.pricing.SimulateVersion(request).totals
        assert (totals.current_amount, totals.simulated_amount, totals.delta) == ("160", "150", "-10")
        _publish(client, "card7", 2, START_MS + 2 * HOUR_MS)
        assert _lines(client, "nc") == {"g": "220"}
        assert str(client.get_balance("nc").period_charges) == "220"


def test_an_override_price_keeps_the_per_units_and_package_size_of_the_version_in_force(server: ServerProcess) -> None:
    """card8: u 2 per 10, p 3 per 10; price 5 on u and 7 on p. 10 units of each at S+1h: 5 and 7. v2 from S+2h: u 2
    per 100, p 3 per 100: 100 more of each at S+3h: u 5 x 110/100 - 5 x 10/100 = 5; p 7 x 2 - 7 x 1 = 7: 10, 14."""
    with server.client() as client:
        _override(client, "per", contracts_pb2.PriceOverride(id="ou", product_id="u", price="5"))
        _override(client, "per", contracts_pb2.PriceOverride(id="op", product_id="p", price="7"))
        _use(client, "per", "per-u1", "u", START_MS + HOUR_MS, 10)
        _use(client, "per", "per-p1", "p", START_MS + HOUR_MS, 10)
        rates = [
            pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price="2", per_units="100")),
            pricing_pb2.Rate(product_id="p", package=pricing_pb2.PackagePrice(package_size="100", package_price="3")),
        ]
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="card8", based_on_version=1, upsert_rates=rates)
        )
        _publish(client, "card8", 2, START_MS + 2 * HOUR_MS)
        _use(client, "per", "per-u2", "u", START_MS + 3 * HOUR_MS, 100)
        _use(client, "per", "per-p2", "p", START_MS + 3 * HOUR_MS, 100)
        assert _lines(client, "per") == {"u": "10", "p": "14"}


def test_a_window_finer_than_a_millisecond_is_dropped_to_it(server: ServerProcess) -> None:
    """card9, u 2 per 10: a price 5 starting S+2h and 500 microseconds starts at S+2h (answered so): 10 units dated
    S+2h are 5, and the same prices published from S+2h find no override start off the hour: 5 stays. A window
    ending 900 microseconds after that start ends where it starts: INVALID_ARGUMENT naming override.ending_before."""
    with server.client() as client:
        override = contracts_pb2.PriceOverride(id="o", product_id="u", price="5")
        override.starting_at.CopyFrom(stamp(START_MS + 2 * HOUR_MS))
        override.starting_at.nanos += 500_000
        bad = contracts_pb2.PriceOverride()
        bad.CopyFrom(override)
        bad.id = "bad"
        bad.ending_before.CopyFrom(override.starting_at)
        bad.ending_before.nanos += 400_000
        code, message = refusal(lambda: _override(client, "ns", bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "override.ending_before" in message, message
        request = contracts_pb2.AddOverrideRequest(contract_id="k-ns", override=override)
        (answered,) = client.contracts.AddOverride(request).overrides
        assert answered.starting_at == stamp(START_MS + 2 * HOUR_MS)
        _use(client, "ns", "ns-1", "u", START_MS + 2 * HOUR_MS, 10)
        _same_prices(client, "card9", "u")
        _publish(client, "card9", 2, START_MS + 2 * HOUR_MS)
        assert _lines(client, "ns") == {"u": "5"}


def test_reads_of_overrides_and_their_unit_prices(server: ServerProcess) -> None:
    """overlap's C {model: "*"} is answered without its match; a second AddOverride of the same content without an
    id is a retry (one override); win's line g: 130 units for 165, unit price 1.269230769231 (half-even to 12);
    prices' u event: 30 units for 15, 0.5 a unit."""
    with server.client() as client:
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-overlap"))
        assert {o.id: dict(o.match) for o in contract.overrides} == {"B": {"model": "a"}, "A": {}, "C": {}}
        anonymous = contracts_pb2.PriceOverride(product_id="f", multiplier="2")
        request = contracts_pb2.AddOverrideRequest(contract_id="k-overlap", override=anonymous)
        first = client.contracts.AddOverride(request)
        again = client.contracts.AddOverride(request)
        assert len(first.overrides) == len(again.overrides) == 4
        (line,) = preview(client, "win", START_MS).lines
        assert [(p.version, p.quantity, p.amount, p.unit_price) for p in line.prices] == [
            (1, "130", "165", "1.269230769231")
        ]
        explain = invoices_pb2.ExplainLineItemRequest(
            customer_id="prices", period_start=stamp(START_MS), line_id="u;model="
        )
        assert [(e.quantity, e.unit_price) for e in client.invoices.ExplainLineItem(explain).events] == [("30", "0.5")]


def test_an_override_with_a_negative_or_no_adjustment_is_refused(server: ServerProcess) -> None:
    """contracts.proto PriceOverride: a multiplier or price not negative, exactly one of them set; else
    INVALID_ARGUMENT naming override.multiplier, override.price or override, and nothing added. "0" is taken."""
    with server.client() as client:
        for override, field in (
            (contracts_pb2.PriceOverride(id="neg-m", product_id="u", multiplier="-1"), "override.multiplier"),
            (contracts_pb2.PriceOverride(id="neg-p", product_id="u", price="-0.5"), "override.price"),
            (contracts_pb2.PriceOverride(id="none", product_id="u"), "override"),
        ):
            code, message = refusal(lambda o=override: _override(client, "third", o))  # type: ignore[misc]
            assert code == grpc.StatusCode.INVALID_ARGUMENT and field in message, message
        zero = contracts_pb2.PriceOverride(id="zero", product_id="p", multiplier="0")
        request = contracts_pb2.AddOverrideRequest(contract_id="k-third", override=zero)
        assert [o.id for o in client.contracts.AddOverride(request).overrides] == ["o", "zero"]


def test_a_same_price_publish_re_rates_a_late_event_in_a_window_to_its_place_in_time(server: ServerProcess) -> None:
    """g, multiplier 2 from S+2h to S+3h: 80 at S+1h are 90, 10 at S+3h are 10, 40 dated S+2h arriving last are
    2 x p(130) - 2 x p(90) = 60: 160. On time they are 90, 70 and 5: 165. The same prices from S+1h (rr1) re-rate
    every hour to that; from S+3h (rr2) its first hour carries what the hours before were charged less: 10 + 5."""
    with server.client() as client:
        window = (START_MS + 2 * HOUR_MS, START_MS + 3 * HOUR_MS)
        for card_id, customer_id, from_hours, current, simulated in (
            ("card10", "rr1", 1, "160", "165"),
            ("card11", "rr2", 3, "10", "15"),
        ):
            override = _window(contracts_pb2.PriceOverride(id="w", product_id="g", multiplier="2"), *window)
            _override(client, customer_id, override)
            for i, (hours, n) in enumerate(((1, 80), (3, 10), (2, 40))):
                _use(client, customer_id, f"{customer_id}-{i}", "g", START_MS + hours * HOUR_MS, n)
            assert _lines(client, customer_id) == {"g": "160"}
            _same_prices(client, card_id, "g")
            request = _simulation(card_id, START_MS + from_hours * HOUR_MS, customer_id)
            totals = client.pricing.SimulateVersion(request).totals
            assert (totals.current_amount, totals.simulated_amount) == (current, simulated)
            _publish(client, card_id, 2, START_MS + from_hours * HOUR_MS)
            assert _lines(client, customer_id) == {"g": "165"}
            assert str(client.get_balance(customer_id).period_charges) == "165"


def test_a_hold_and_its_settling_event_price_with_the_override(server: ServerProcess) -> None:
    """hold, 100 prepaid credits, u 2 per 10: {model: a} price 5, {} multiplier 3. A reserve for 10 units of model a
    holds 5 (95 available); 10 of model b are estimated 6 (unary and stream alike); the settling event is charged 5:
    95 remaining, nothing held."""
    with server.client() as client:
        _override(client, "hold", contracts_pb2.PriceOverride(id="a", product_id="u", match={"model": "a"}, price="5"))
        _override(client, "hold", contracts_pb2.PriceOverride(id="all", product_id="u", multiplier="3"))
        reserve = balance_pb2.AuthorizeRequest(
            customer_id="hold",
            event_type="u",
            dimensions={"model": "a"},
            values={"n": 10},
            reserve=True,
            reservation_id="r1",
        )
        held = client.balance.Authorize(reserve)
        assert (held.allowed, held.estimated_cost, held.credits_available) == (True, "5", "95")
        other = balance_pb2.AuthorizeRequest(
            request_id="q", customer_id="hold", event_type="u", dimensions={"model": "b"}, values={"n": 10}
        )
        assert client.balance.Authorize(other).estimated_cost == "6"
        assert [r.estimated_cost for r in client.balance.AuthorizeStream(iter([other]))] == ["6"]
        event = usage_pb2.UsageEvent(
            transaction_id="hold-1",
            customer_id="hold",
            event_type="u",
            timestamp_ms=now_ms(),
            values={"n": 10},
            dimensions={"model": "a"},
            reservation_id="r1",
        )
        assert client.ingest_batch([event], batch_id="b-hold-1").accepted == 1
        balance = client.get_balance("hold")
        assert (balance.period_charges, balance.credits_remaining, balance.credits_held) == ("5", "95", "0")


def test_an_override_added_late_whose_window_ended_is_carried_into_the_first_re_rated_hour(
    server: ServerProcess,
) -> None:
    """card12 g: 50 at S+1h are p(50) = 60; then a multiplier 0.5 from S to S+2h; 100 at S+3h (after the window) are
    p(150) - p(50) = 80: 140. On time with the override as now: 0.5 x 60 = 30, then 80: 110. The same prices from
    S+2h make S+3h carry the 30 that S+1h was charged more: 50, the line 110 (as a publish from S would)."""
    with server.client() as client:
        _use(client, "cw", "cw-1", "g", START_MS + HOUR_MS, 50)
        override = _window(
            contracts_pb2.PriceOverride(id="w", product_id="g", multiplier="0.5"), START_MS, START_MS + 2 * HOUR_MS
        )
        _override(client, "cw", override)
        _use(client, "cw", "cw-2", "g", START_MS + 3 * HOUR_MS, 100)
        assert _lines(client, "cw") == {"g": "140"}
        _same_prices(client, "card12", "g")
        _publish(client, "card12", 2, START_MS + 2 * HOUR_MS)
        assert _lines(client, "cw") == {"g": "110"}


def test_a_multiplier_scales_every_price_model_flat_fees_included(server: ServerProcess) -> None:
    """Multiplier 0.5 on each product: u 30 units 3; g 150 units 0.5 x 140 = 70; v 0.5 x 80 = 40; p 25 units
    0.5 x 9 = 4.5; f 0.5 x 100 = 50: 167.5. The overrides answered as written, decimals as the server writes them."""
    with server.client() as client:
        for product in "ugvpf":
            _override(
                client, "mult", contracts_pb2.PriceOverride(id=f"m-{product}", product_id=product, multiplier="0.50")
            )
        for product, n in (("u", 30), ("g", 150), ("v", 150), ("p", 25), ("f", 5)):
            _use(client, "mult", f"mult-{product}", product, START_MS + HOUR_MS, n)
        assert _lines(client, "mult") == {"u": "3", "g": "70", "v": "40", "p": "4.5", "f": "50"}
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-mult"))
        assert {o.multiplier for o in contract.overrides} == {"0.5"}


def test_an_override_matching_an_empty_value_matches_an_event_leaving_the_dimension_out(server: ServerProcess) -> None:
    """As a rate's (pricing.proto Rate.match): {model: ""} price 5 over {} price 4 on u: 10 units without model and
    10 with model "" are one line ("u;model="), 5 + 5 = 10; 10 of model b take {}: 4."""
    with server.client() as client:
        _override(client, "empty", contracts_pb2.PriceOverride(id="e", product_id="u", match={"model": ""}, price="5"))
        _override(client, "empty", contracts_pb2.PriceOverride(id="all", product_id="u", price="4"))
        _use(client, "empty", "empty-1", "u", START_MS + HOUR_MS, 10)
        _use(client, "empty", "empty-2", "u", START_MS + HOUR_MS, 10, model="")
        _use(client, "empty", "empty-3", "u", START_MS + HOUR_MS, 10, model="b")
        lines = preview(client, "empty", START_MS).lines
        assert sorted((line.line_id, line.amount) for line in lines) == [("u;model=", "10"), ("u;model=b", "4")]
        assert _estimate(client, "empty", "u", 10) == "5"


def test_a_publish_leaves_a_closed_period_alone_and_re_rates_the_open_one_with_the_override(
    server: ServerProcess,
) -> None:
    """card13 (v1 from the contract's start, 32 days before S): u 2 per 10. 10 units in the closed first period
    are 2 (closed, invoiced 2); 10 at S+1h are 2; then a price 5 from the contract's start: the same prices
    published from the contract's start leave the closed 2 alone (one bucket, 2) and re-rate S+1h to 5."""
    with server.client() as client:
        _use(client, "closed", "closed-1", "u", CLOSED_START_MS + HOUR_MS, 10)
        _use(client, "closed", "closed-2", "u", START_MS + HOUR_MS, 10)
        invoice = client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="closed", period_start=stamp(CLOSED_START_MS))
        )
        assert invoice.subtotal == "2"
        _override(client, "closed", contracts_pb2.PriceOverride(id="o", product_id="u", price="5"))
        _same_prices(client, "card13", "u")
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id="card13", version=2, effective_from=stamp(CLOSED_START_MS)
        )
        reply = client.pricing.PublishVersion(request)
        assert (reply.closed_buckets_left_alone, reply.closed_amount_left_alone, reply.rerated_amount_delta) == (
            1,
            "2",
            "3",
        )
        assert str(client.get_balance("closed").period_charges) == "5"
        closed = preview(client, "closed", CLOSED_START_MS)
        assert [line.amount for line in closed.lines] == ["2"]


def test_a_rollback_re_rates_with_the_override_added_since(server: ServerProcess) -> None:
    """card14 u: v1 2 per 10; v2 4 per 10 from S+2h. 10 units at S+1h are 2, at S+3h 4; then a multiplier 3.
    Rolling back to v1 from S+2h re-rates S+3h to 3 x 2 = 6 carrying the 3 x 2 - 2 = 4 that S+1h was charged
    less than with the override: 10, the line 3 x p(20) = 12."""
    with server.client() as client:
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="card14",
                based_on_version=1,
                upsert_rates=[pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price="4", per_units="10"))],
            )
        )
        _publish(client, "card14", 2, START_MS + 2 * HOUR_MS)
        _use(client, "rb", "rb-1", "u", START_MS + HOUR_MS, 10)
        _use(client, "rb", "rb-2", "u", START_MS + 3 * HOUR_MS, 10)
        assert _lines(client, "rb") == {"u": "6"}
        _override(client, "rb", contracts_pb2.PriceOverride(id="m", product_id="u", multiplier="3"))
        rollback = pricing_pb2.RollbackRateCardRequest(
            rate_card_id="card14", to_version=1, effective_from=stamp(START_MS + 2 * HOUR_MS)
        )
        assert client.pricing.RollbackRateCard(rollback).rerated_amount_delta == "6"
        assert _lines(client, "rb") == {"u": "12"}
        assert _explained(client, "rb", "u") == [("rb-1", "2"), ("rb-2", "4"), ("", "6")]


def test_an_override_on_a_product_the_card_does_not_price_adds_no_rate(server: ServerProcess) -> None:
    """card9 prices u only: an override on g is kept, but g's usage stays NO_APPLICABLE_RATE (Authorize and ingest)."""
    with server.client() as client:
        _override(client, "ns", contracts_pb2.PriceOverride(id="g", product_id="g", price="1"))
        answer = client.authorize("ns", "g", {}, {"n": 1})
        assert (answer.allowed, answer.reason) == (False, "NO_APPLICABLE_RATE")
        event = usage_pb2.UsageEvent(
            transaction_id="ns-g", customer_id="ns", event_type="g", timestamp_ms=START_MS + HOUR_MS, values={"n": 1}
        )
        (rejected,) = client.ingest_batch([event], batch_id="b-ns-g").rejected
        assert rejected.reason == usage_pb2.NO_APPLICABLE_RATE


def test_a_window_ending_off_the_hour_refuses_a_publish_re_rating_its_hour(server: ServerProcess) -> None:
    """card15 u 2 per 10, price 4 until S+2h30m: 10 units at S+2h10m are 4, at S+2h50m 2. A publish (or simulation)
    from S+2h is FAILED_PRECONDITION naming the customer and the instant; nothing changes."""
    with server.client() as client:
        override = contracts_pb2.PriceOverride(id="o", product_id="u", price="4")
        override.ending_before.CopyFrom(stamp(START_MS + 2 * HOUR_MS + 30 * MINUTE_MS))
        _override(client, "offend", override)
        _use(client, "offend", "offend-1", "u", START_MS + 2 * HOUR_MS + 10 * MINUTE_MS, 10)
        _use(client, "offend", "offend-2", "u", START_MS + 2 * HOUR_MS + 50 * MINUTE_MS, 10)
        _same_prices(client, "card15", "u")
        code, message = refusal(lambda: _publish(client, "card15", 2, START_MS + 2 * HOUR_MS))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "offend" in message and ":30:00Z" in message, message
        assert _lines(client, "offend") == {"u": "6"}


def test_an_override_stays_with_its_contract_across_a_switch(server: ServerProcess) -> None:
    """sw: k-sw [S, S+3h) with a price 5 on u, k-sw2 from S+3h without one. 10 units at S+2h are 5 (k-sw's period),
    10 at S+4h are 2 (k-sw2's, the card's price): the override is the contract's, not the customer's."""
    with server.client() as client:
        _override(client, "sw", contracts_pb2.PriceOverride(id="o", product_id="u", price="5"))
        _use(client, "sw", "sw-1", "u", START_MS + 2 * HOUR_MS, 10)
        _use(client, "sw", "sw-2", "u", START_MS + 4 * HOUR_MS, 10)
        assert _lines(client, "sw") == {"u": "5"}
        later = preview(client, "sw", START_MS + 3 * HOUR_MS)
        assert [line.amount for line in later.lines] == ["2"]
        assert _estimate(client, "sw", "u", 10) == "2"


def test_of_two_overlapping_windows_the_one_added_last_wins_where_both_hold(server: ServerProcess) -> None:
    """u 2 per 10, 10 units at S+1h, S+2h and S+3h. ab: A price 4 [S, S+4h) then B price 6 [S+2h, S+3h): 4, 6, 4 =
    14. ba: B first, then A: A wins where both hold: 4, 4, 4 = 12."""
    with server.client() as client:
        a = _window(contracts_pb2.PriceOverride(id="A", product_id="u", price="4"), START_MS, START_MS + 4 * HOUR_MS)
        b = _window(
            contracts_pb2.PriceOverride(id="B", product_id="u", price="6"),
            START_MS + 2 * HOUR_MS,
            START_MS + 3 * HOUR_MS,
        )
        for customer_id, order in (("ab", (a, b)), ("ba", (b, a))):
            for override in order:
                _override(client, customer_id, override)
            for hours in (1, 2, 3):
                _use(client, customer_id, f"{customer_id}-{hours}", "u", START_MS + hours * HOUR_MS, 10)
        assert _explained(client, "ab", "u") == [("ab-1", "4"), ("ab-2", "6"), ("ab-3", "4")]
        assert _explained(client, "ba", "u") == [("ba-1", "4"), ("ba-2", "4"), ("ba-3", "4")]


EXPECTED = {
    "prices": "166",
    "win": "165",
    "winp": "215",
    "overlap": "18",
    "late": "7",
    "ver": "7",
    "doc": "70",
    "off": "6",
    "pkgw": "10",
    "volw": "102",
    "k1000": "0.1",
    "late2": "5",
    "both": "6",
    "clamp": "5",
    "third": "1.333333333333",
    "lateg": "160",
    "nc": "220",
    "per": "24",
    "ns": "5",
    "ab": "14",
    "ba": "12",
    "offend": "6",
    "rb": "12",
    "closed": "5",
    "empty": "14",
    "mult": "167.5",
    "cw": "110",
    "hold": "5",
    "rr1": "165",
    "rr2": "165",
}


def test_a_kill_9_restart_keeps_every_amount(server: ServerProcess) -> None:
    """Runs last: every customer's charges above, replayed from the journal after a crash."""
    with server.client() as client:
        before = {c: str(client.get_balance(c).period_charges) for c in EXPECTED}
        assert before == EXPECTED
    server.kill9()
    server.restart()
    with server.client() as client:
        assert {c: str(client.get_balance(c).period_charges) for c in EXPECTED} == EXPECTED
        assert sum(Decimal(line.amount) for line in preview(client, "prices", START_MS).lines) == 166
        assert _explained(client, "nc", "g")[-1] == ("", "-10")
        assert _estimate(client, "ver", "u", 10) == "4" and _estimate(client, "per", "u", 100) == "5"
