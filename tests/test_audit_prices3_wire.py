"""A third audit of README "Changing prices safely" / "Cohorts" and pricing.proto / contracts.proto (PriceOverride),
over the wire, for corners tests/test_audit_pricing_wire.py and tests/test_audit_prices2_wire.py (whose catalogue
this reuses: product `units`, event type `work`, SUM of `n`, priced on model and region, card `card` in USD,
customer `c` with contract `k-c`) leave out: versions taking effect mid-period with usage on both sides, tiers with
per_units and flat fees crossing a re-rated hour, overrides during re-rating and simulation, cohorts chosen by
attribute and creation time, retries and refusals. Every amount asserted is computed by hand in the docstring.

The price curves, from pricing.proto: UNIT q x price / per_units; GRADUATED each portion of q at its tier's price
per per_units, plus the flat_price of every tier entered; VOLUME all of q at the price of the tier q reaches (up_to
inclusive) per per_units, plus that tier's flat_price; PACKAGE price x ceil(q / package_size); FLAT price once q > 0.
A bucket is charged curve(cumulative after) - curve(cumulative before), with the curve of the version in force for
its hour (the newest-effective, of two at once the later published)."""

from __future__ import annotations

from typing import Any

import grpc
from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from engine.instants import iso
from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory
from tests.test_audit_pricing_wire import (
    CARD,
    HOUR_MS,
    catalogue,
    charges,
    draft,
    expect_error,
    ingest,
    publish,
    this_hour_ms,
    unit,
    work,
)

S = grpc.StatusCode
MINUTE_MS = 60_000


def tiered(volume: bool, tiers: list[tuple[str, str, str]], per_units: str = "", **match: str) -> pricing_pb2.Rate:
    """A TIERED rate on `units`: tiers as (up_to, unit_price, flat_price)."""
    return pricing_pb2.Rate(
        product_id="units",
        match=match,
        tiered=pricing_pb2.TieredPrice(
            mode=pricing_pb2.VOLUME if volume else pricing_pb2.GRADUATED,
            tiers=[pricing_pb2.Tier(up_to=u, unit_price=p, flat_price=f) for u, p, f in tiers],
            per_units=per_units,
        ),
    )


def package(size: str, price: str, **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(
        product_id="units", match=match, package=pricing_pb2.PackagePrice(package_size=size, package_price=price)
    )


def flat(price: str, **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id="units", match=match, flat=pricing_pb2.FlatPrice(price=price))


def customer(client: TariffClient, customer_id: str, from_ms: int, **attributes: str) -> None:
    client.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id, attributes=attributes)
    )
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id=CARD, starting_at=stamp(from_ms)
        )
    )


def used(customer_id: str, transaction_id: str, at_ms: int, n: float, **dimensions: str) -> usage_pb2.UsageEvent:
    event = work(transaction_id, at_ms, n, **dimensions)
    event.customer_id = customer_id
    return event


def override(client: TariffClient, contract_id: str, **fields: Any) -> contracts_pb2.Contract:
    request = contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=contracts_pb2.PriceOverride(**fields))
    answer: contracts_pb2.Contract = client.contracts.AddOverride(request)
    return answer


def version_at(client: TariffClient, at_ms: int) -> int:
    return int(client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=stamp(at_ms))).version)


def counts(done: pricing_pb2.PublishVersionResponse) -> tuple[int, int, int, str]:
    return done.customers_rerated, done.buckets_rerated, done.events_rerated, done.rerated_amount_delta


def test_a_retroactive_version_leaves_the_hours_of_a_later_effective_one_and_tiers_cross_the_change(
    server_factory: ServerFactory,
) -> None:
    """Hours h0 < h1. v2 (UNIT 3 per 1000) from h0; v3 (GRADUATED per 1000: up to 1000 at 2, then 1 with a 0.25
    flat fee) from h1, both published before any usage. 800 units at h0: v2, 800 x 3 / 1000 = 2.4. 900 at h1, by
    v3 over the cumulative 800 -> 1700: v3(1700) = 2 + 0.7 + 0.25 = 2.95, v3(800) = 1.6: 1.35. Charges 3.75.

    v4 (VOLUME per 1000: up to 1000 at 2, then 1.5 with a 0.5 flat fee) published from h0: at h1 v3 is still the
    newest-effective version, so only h0 is re-rated: v4(800) = 1.6, delta -0.8, charges 2.95, one bucket, one event.
    v5 (v4's prices) from h1 re-rates h1 across the tier change: v5(1700) - v5(800) = (2.55 + 0.5) - 1.6 = 1.45,
    delta +0.1, charges 3.05. Its retry re-rates nothing."""
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        v2 = draft(client, 1, [unit("3", per_units="1000")])
        assert counts(publish(client, v2, h0)) == (0, 0, 0, "0")
        v3 = draft(client, 1, [tiered(False, [("1000", "2", ""), ("", "1", "0.25")], "1000")])
        assert counts(publish(client, v3, h1)) == (0, 0, 0, "0")
        ingest(client, work("e0", h0 + 1, 800), work("e1", h1 + 1, 900))
        assert charges(client) == "3.75"
        volume = [tiered(True, [("1000", "2", ""), ("", "1.5", "0.5")], "1000")]
        v4 = draft(client, 1, volume)
        assert counts(publish(client, v4, h0)) == (1, 1, 1, "-0.8")
        assert charges(client) == "2.95"
        assert (version_at(client, h0), version_at(client, h1)) == (v4, v3)
        v5 = draft(client, 1, volume)
        assert counts(publish(client, v5, h1)) == (1, 1, 1, "0.1")
        assert charges(client) == "3.05"
        assert counts(publish(client, v5, h1)) == (0, 0, 0, "0")
        assert charges(client) == "3.05"


def test_package_and_flat_prices_are_due_once_across_a_version_change_and_when_re_rated(
    server_factory: ServerFactory,
) -> None:
    """model=p: PACKAGE (v2: 10 for every started 10 units; v3 from h1: 8 for every started 10), model=f: FLAT
    (v2: 7; v3: 9), both published before usage. 3 units of each at h0 (v2): p one package, 10; f 7. 3 more of each
    at h1 (v3, cumulative 3 -> 6): p v3(6) - v3(3) = 8 - 8 = 0 (the started package covers them); f 9 - 9 = 0 (due
    once a period). Charges 17. v4 (v3's prices) from h0 re-rates h0 only (v3 stays the newest-effective at h1): p
    v4(3) = 8, f 9, and h1 over the cumulative 3 -> 6 still 0: 17 -> 17, delta 8 - 10 + 9 - 7 = 0, yet both h0
    buckets changed their pricing version (2 -> 4): 1 customer, 2 buckets, 2 events."""
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        publish(client, draft(client, 1, [package("10", "10", model="p"), flat("7", model="f")]), h0)
        later = [package("10", "8", model="p"), flat("9", model="f")]
        publish(client, draft(client, 1, later), h1)
        ingest(client, work("p0", h0 + 1, 3, model="p"), work("f0", h0 + 2, 3, model="f"))
        assert charges(client) == "17"
        ingest(client, work("p1", h1 + 1, 3, model="p"), work("f1", h1 + 2, 3, model="f"))
        assert charges(client) == "17"
        v4 = draft(client, 1, later)
        assert counts(publish(client, v4, h0)) == (1, 2, 2, "0")
        assert charges(client) == "17"


def test_simulate_with_overrides_tiers_packages_and_flat_fees_is_what_the_publish_then_charges(
    server_factory: ServerFactory,
) -> None:
    """Version 1 prices every unit at 1. Contract k-c has two overrides added before any usage: o-all (no match,
    multiplier 0.5) and o-p (model=p, price 4, the more specific for model p). The draft v2: catch-all GRADUATED up to
    10 at 1, then 0.5; model=p PACKAGE 6 per started 10; model=f FLAT 7. Customer d has no override.

    Usage: c at h0 6 units model=a, 3 model=p, 2 model=f; at h1 8 model=a, 9 model=p, 1 model=f. d at h0 6 model=a,
    at h1 8 model=a and 3 model=p.
    Now (v1): c a 14 x 1 x 0.5 = 7, p 12 x 4 = 48 (o-p's price per unit on a UNIT rate), f 3 x 0.5 = 1.5: 56.5.
    d: 14 + 3 = 17.
    v2, walked from the period's start (the contract's start h0): c a (10 + 4 x 0.5) x 0.5 = 6, p 4 per started
    package of 10 (o-p on a PACKAGE rate): 2 packages, 8, f 7 x 0.5 = 3.5: 17.5, delta -39. d: a 12, p one package 6:
    18, delta +1. Totals 73.5 -> 35.5, delta -38. Publishing v2 from h0 then charges exactly those amounts."""
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        customer(client, "d", h0)
        override(client, "k-c", id="o-all", product_id="units", multiplier="0.5")
        override(client, "k-c", id="o-p", product_id="units", match={"model": "p"}, price="4")
        ingest(
            client,
            work("c1", h0 + 1, 6, model="a"),
            work("c2", h0 + 2, 3, model="p"),
            work("c3", h0 + 3, 2, model="f"),
            work("c4", h1 + 1, 8, model="a"),
            work("c5", h1 + 2, 9, model="p"),
            work("c6", h1 + 3, 1, model="f"),
            used("d", "d1", h0 + 1, 6, model="a"),
            used("d", "d2", h1 + 1, 8, model="a"),
            used("d", "d3", h1 + 2, 3, model="p"),
        )
        assert (charges(client), client.get_balance("d").period_charges) == ("56.5", "17")
        v2 = draft(
            client,
            1,
            [tiered(False, [("10", "1", ""), ("", "0.5", "")]), package("10", "6", model="p"), flat("7", model="f")],
        )
        simulated = client.pricing.SimulateVersion(
            pricing_pb2.SimulateVersionRequest(
                rate_card_id=CARD, version=v2, period_start=stamp(h0), period_end=stamp(hour)
            )
        )
        assert [
            (a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in simulated.amounts
        ] == [
            ("c", "units", "56.5", "17.5", "-39"),
            ("d", "units", "17", "18", "1"),
        ]
        totals = simulated.totals
        assert (totals.current_amount, totals.simulated_amount, totals.delta) == ("73.5", "35.5", "-38")
        done = publish(client, v2, h0)
        assert (done.customers_rerated, done.rerated_amount_delta) == (2, "-38")
        assert (charges(client), client.get_balance("d").period_charges) == ("17.5", "18")


def test_a_re_rating_that_cannot_read_an_override_window_off_the_hour_is_refused_changing_nothing(
    server_factory: ServerFactory,
) -> None:
    """contracts.proto PriceOverride: the window is read against each event's own timestamp. Version 1 prices a unit
    at 1; k-c has `half` (price 0.5 a unit) from h1 + 30 min, and `x` (model=x, price 9) from h0 + 30 min, which no
    usage below matches. 1 unit at h0 + 5 min: 1. 4 units at h1 + 10 min, before `half`: 4; 4 at h1 + 40 min, inside
    it: 0.5 x 8 - 0.5 x 4 = 2. Charges 7.

    A version with the very same prices published from h0 re-rated the hour h1 as one bucket priced at its hour's
    start, before `half`: 8 units at 1, charges 7 -> 9, the customer billed 2 more for prices that did not change (and
    an override ending off the hour would have been applied to the whole hour). The bucket cannot tell the units used
    before 30 past from those after, so, as for a period boundary off the hour, the publish, its simulation and a
    rollback covering h1 are refused with FAILED_PRECONDITION naming the customer, the product and the hour h1 (not
    h0: `x` matches nothing there), and change nothing. A publish from the hour after h1 re-rates nothing to refuse."""
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        override(client, "k-c", id="half", product_id="units", price="0.5", starting_at=stamp(h1 + 30 * MINUTE_MS))
        override(
            client,
            "k-c",
            id="x",
            product_id="units",
            match={"model": "x"},
            price="9",
            starting_at=stamp(h0 + 30 * MINUTE_MS),
        )
        ingest(client, work("e0", h0 + 5 * MINUTE_MS, 1))
        ingest(client, work("e1", h1 + 10 * MINUTE_MS, 4), work("e2", h1 + 40 * MINUTE_MS, 4))
        assert charges(client) == "7"
        same = draft(client, 1, [unit("1")])
        for refused in (
            lambda: publish(client, same, h0),
            lambda: client.pricing.SimulateVersion(
                pricing_pb2.SimulateVersionRequest(
                    rate_card_id=CARD, version=same, period_start=stamp(h0), period_end=stamp(hour)
                )
            ),
            lambda: client.pricing.RollbackRateCard(
                pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(h1))
            ),
        ):
            message = expect_error(S.FAILED_PRECONDITION, refused)
            assert "'c'" in message or '"c"' in message, message
            assert "units" in message and f"the hour from {iso(h1)}" in message, message
            assert f"the hour from {iso(h0)}" not in message, message
        assert charges(client) == "7"
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert (card.latest_version, card.current_version) == (2, 1)
        assert counts(publish(client, same, hour)) == (0, 0, 0, "0")
        assert charges(client) == "7"
