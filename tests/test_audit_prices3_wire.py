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

import time
from collections.abc import Callable
from typing import Any

import grpc
from tariff import TariffClient, TariffError
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
    h0: `x` matches nothing there), and change nothing. A publish from the hour after h1 re-rates nothing to refuse.
    (Version 2, the same prices, is in force from h0 before the usage, so that a rollback to version 1 from h1 would
    change the version in force there, and re-rate h1, rather than be refused as already in force.)"""
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
        publish(client, draft(client, 1, [unit("1")]), h0)
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
        assert (card.latest_version, card.current_version) == (3, 2)
        assert counts(publish(client, same, hour)) == (0, 0, 0, "0")
        assert charges(client) == "7"


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, list[tuple[str, str]]]:
    """The code and the google.rpc.BadRequest violations (field, why) of a refused call."""
    try:
        call()
    except TariffError as exc:
        return exc.code, [(v.field, v.description) for v in exc.field_violations]
    raise AssertionError("expected a refusal, the call succeeded")


def test_a_cohort_by_attribute_and_creation_time_re_rates_only_customers_created_strictly_after(
    server_factory: ServerFactory,
) -> None:
    """Customers e1 and e2 (segment=ent, e2 created after e1), s1 (segment=smb) and c (no attributes), each 5 units at
    h0 priced 1: 5 each. Cohort {segment: ent, created strictly after e1's created_at} holds e2 only. Malformed
    cohorts are refused first, INVALID_ARGUMENT naming the field, each changing nothing (v2 stays a draft, no
    PublishVersion entry, charges 5 each). Then v2 (3 a unit) published from h0 to the cohort re-rates e2 only: 5 ->
    15, delta 10, 1 customer, 1 bucket, 1 event. The same request again answers the same version and re-rates
    nothing; the same version with the creation time 1 ms later is another cohort: FAILED_PRECONDITION."""
    server = server_factory()
    hour = this_hour_ms()
    h0 = hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        created = {}
        for who, segment in (("e1", "ent"), ("e2", "ent"), ("s1", "smb")):
            time.sleep(0.005)  # created_at is the server's millisecond: e2's after e1's
            customer(client, who, h0, segment=segment)
            got = client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=who))
            created[who] = got.created_at.ToMilliseconds()
        assert created["e1"] < created["e2"]
        ingest(client, *(used(who, f"{who}-1", h0 + 1, 5) for who in ("c", "e1", "e2", "s1")))
        v2 = draft(client, 1, [unit("3")])
        invalid = S.INVALID_ARGUMENT
        for cohort, violation in (
            (pricing_pb2.Cohort(attributes={"": "ent"}), ("cohort.attributes", "an attribute key must not be empty")),
            (
                pricing_pb2.Cohort(attributes={"segment": ""}),
                ("cohort.attributes[segment]", "an attribute match needs a value"),
            ),
            (pricing_pb2.Cohort(customer_ids=["e2", ""]), ("cohort.customer_ids", "an id must not be empty")),
            (
                pricing_pb2.Cohort(customer_ids=["e2", "e 1"]),
                ("cohort.customer_ids[1]", "'e 1' must be 1-128 characters of letters, digits and ._:@-"),
            ),
            (
                pricing_pb2.Cohort(customer_ids=["nope", "e2", "zz"]),
                ("cohort.customer_ids", "no such customer: 'nope', 'zz'"),
            ),
        ):
            request = pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=v2, effective_from=stamp(h0), cohort=cohort
            )
            assert refusal(lambda r=request: client.pricing.PublishVersion(r)) == (invalid, [violation])  # type: ignore[misc]
        version = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2))
        assert version.state == pricing_pb2.DRAFT and not version.HasField("cohort")
        log = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="PublishVersion")).entries
        assert [e.target for e in log] == [f"rate_card/{CARD}/version/1"]
        everyone = ("c", "e1", "e2", "s1")
        assert [client.get_balance(who).period_charges for who in everyone] == ["5", "5", "5", "5"]

        def cohort_publish(after_ms: int) -> pricing_pb2.PublishVersionResponse:
            cohort = pricing_pb2.Cohort(attributes={"segment": "ent"}, customers_created_after=stamp(after_ms))
            request = pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=v2, effective_from=stamp(h0), cohort=cohort
            )
            response: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
            return response

        done = cohort_publish(created["e1"])
        assert counts(done) == (1, 1, 1, "10")
        assert [client.get_balance(who).period_charges for who in everyone] == ["5", "5", "15", "5"]
        again = cohort_publish(created["e1"])
        assert again.version == done.version and counts(again) == (0, 0, 0, "0")
        expect_error(S.FAILED_PRECONDITION, lambda: cohort_publish(created["e1"] + 1))
        assert [client.get_balance(who).period_charges for who in everyone] == ["5", "5", "15", "5"]


def test_simulate_refusals_name_the_field_and_a_window_before_any_usage_is_empty(server_factory: ServerFactory) -> None:
    """pricing.proto SimulateVersionRequest: period_start and period_end are required, a period_end not after
    period_start is INVALID_ARGUMENT naming period_end, a customer id breaking the id rule names customer_ids[i];
    a window holding no usage gives no amounts and zero totals."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - HOUR_MS)
        ingest(client, work("s1", hour - HOUR_MS + 1, 2))
        v2 = draft(client, 1, [unit("3")])

        def simulate(**fields: Any) -> pricing_pb2.SimulateVersionResponse:
            request = pricing_pb2.SimulateVersionRequest(rate_card_id=CARD, version=v2, **fields)
            response: pricing_pb2.SimulateVersionResponse = client.pricing.SimulateVersion(request)
            return response

        start, end = stamp(hour - HOUR_MS), stamp(hour)
        invalid = S.INVALID_ARGUMENT
        assert refusal(lambda: simulate(period_start=start)) == (invalid, [("period_end", "is required")])
        assert refusal(lambda: simulate(period_end=end)) == (invalid, [("period_start", "is required")])
        assert refusal(lambda: simulate(period_start=start, period_end=start)) == (
            invalid,
            [("period_end", "must be after period_start")],
        )
        code, violations = refusal(lambda: simulate(period_start=start, period_end=end, customer_ids=["c", "c d"]))
        assert (code, [field for field, _ in violations]) == (invalid, ["customer_ids[1]"])
        early = simulate(period_start=stamp(hour - 3 * HOUR_MS), period_end=stamp(hour - HOUR_MS))
        assert list(early.amounts) == [] and (early.totals.current_amount, early.totals.delta) == ("0", "0")
        [row] = simulate(period_start=start, period_end=end).amounts
        assert (row.current_amount, row.simulated_amount, row.delta) == ("2", "6", "4")


def test_an_override_added_after_usage_is_applied_back_only_by_a_re_rating_tiers_and_flat_fee_dropped(
    server_factory: ServerFactory,
) -> None:
    """v2 from h0 (before usage): GRADUATED per 1000 units, up to 1000 at 2 with a flat fee of 1, then 1. 600 units at
    h0: 600 x 2 / 1000 + 1 = 2.2. Then an override at price 0.5 (no window: from the contract's start): per
    contracts.proto a flat 0.5 per 1000 for the whole quantity, tiers and flat fee dropped, pricing only what is
    rated after it. 900 units at h1: 0.5 x 1500 / 1000 - 0.5 x 600 / 1000 = 0.45; charges 2.65 (h0 kept). Authorize
    of 1000 more: 0.5 x 2500 / 1000 - 0.75 = 0.5.
    v3 with v2's prices published from h0 re-rates both hours "with the contract's overrides as they are then":
    h0 0.3, h1 0.45: charges 0.75, delta -1.9, 2 buckets (h0's charge changed, h1's version), 2 events."""
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        card_prices = [tiered(False, [("1000", "2", "1"), ("", "1", "")], "1000")]
        publish(client, draft(client, 1, card_prices), h0)
        ingest(client, work("t0", h0 + 1, 600))
        assert charges(client) == "2.2"
        override(client, "k-c", id="deal", product_id="units", price="0.5")
        ingest(client, work("t1", h1 + 1, 900))
        assert charges(client) == "2.65"
        assert str(client.authorize("c", "work", values={"n": 1000}).estimated_cost) == "0.5"
        done = publish(client, draft(client, 1, card_prices), h0)
        assert counts(done) == (1, 2, 2, "-1.9")
        assert charges(client) == "0.75"


def test_a_volume_price_that_drops_across_hours_is_rated_and_re_rated_alike(server_factory: ServerFactory) -> None:
    """VOLUME up to 10 at 1, then 0.5 (v2 from h0, before usage): 10 units at h0 cost v(10) = 10; 2 more at h1 bring
    the whole period to v(12) = 12 x 0.5 = 6, so h1's bucket is charged 6 - 10 = -4 and the period 6 (a bucket is
    curve(after) - curve(before)). A version with the same prices from h0 re-rates to the same amounts: delta 0,
    charges 6; one with the second tier at 0.75 makes v(12) = 9: h1 -1, charges 9, delta +3 (one bucket changed its
    charge, the other only its version: 2 buckets)."""
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        volume = [tiered(True, [("10", "1", ""), ("", "0.5", "")])]
        publish(client, draft(client, 1, volume), h0)
        ingest(client, work("v0", h0 + 1, 10))
        assert charges(client) == "10"
        ingest(client, work("v1", h1 + 1, 2))
        assert charges(client) == "6"
        assert counts(publish(client, draft(client, 1, volume), h0))[3] == "0"
        assert charges(client) == "6"
        dearer = [tiered(True, [("10", "1", ""), ("", "0.75", "")])]
        assert counts(publish(client, draft(client, 1, dearer), h0)) == (1, 2, 2, "3")
        assert charges(client) == "9"


def test_override_windows_on_the_hour_re_rate_exactly_and_an_hour_only_walked_is_not_refused(
    server_factory: ServerFactory,
) -> None:
    """Card price 1. k-c: `double` (multiplier 2, every event) from h1, on the hour; `half` (model=m, price 0.5, the
    more specific) from h1 + 30 min. At h0: 3 units: 3. At h1: 3 units: 2 x (6 - 3) = 6; 4 of model m at h1 + 10 min
    (`double`): 2 x 4 = 8; 4 of m at h1 + 40 min (`half`): 0.5 x 8 - 0.5 x 4 = 2. In the current hour h2: 2 of m
    (`half`): 0.5 x 10 - 0.5 x 8 = 1; 1 unit (`double`): 2 x 7 - 2 x 6 = 2. Charges 22.
    v2 at 2 a unit from h2 re-rates h2 only (h1, holding `half`'s start off the hour, is walked for its quantity,
    never priced): m keeps 1 (`half` replaces the card's price), the other bucket 2 x 2 x 7 - 2 x 2 x 6 = 4 (was 2):
    charges 24, delta 2, 2 buckets (one charge, one version), 2 events. v3 from h0 would price h1 again: refused,
    naming h1, changing nothing. After a kill -9 and a restart the charges are still 24."""
    server = server_factory()
    h2 = this_hour_ms()
    h0, h1 = h2 - 2 * HOUR_MS, h2 - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        override(client, "k-c", id="double", product_id="units", multiplier="2", starting_at=stamp(h1))
        half_from = stamp(h1 + 30 * MINUTE_MS)
        override(client, "k-c", id="half", product_id="units", match={"model": "m"}, price="0.5", starting_at=half_from)
        ingest(client, work("a0", h0 + 1, 3), work("a1", h1 + 1, 3))
        assert charges(client) == "9"
        ingest(client, work("m1", h1 + 10 * MINUTE_MS, 4, model="m"), work("m2", h1 + 40 * MINUTE_MS, 4, model="m"))
        assert charges(client) == "19"
        ingest(client, work("m3", h2 + 1, 2, model="m"), work("a2", h2 + 2, 1))
        assert charges(client) == "22"
        assert counts(publish(client, draft(client, 1, [unit("2")]), h2)) == (1, 2, 2, "2")
        assert charges(client) == "24"
        v3 = draft(client, 1, [unit("3")])
        message = expect_error(S.FAILED_PRECONDITION, lambda: publish(client, v3, h0))
        assert f"the hour from {iso(h1)}" in message, message
        assert charges(client) == "24"
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 2
    server.kill9()
    server.restart()
    with server.client() as client:  # the journal replays the publish (its override_hours_refused too) exactly
        assert charges(client) == "24"
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version == 3


def test_a_rollback_retried_after_another_version_took_over_is_a_new_rollback_re_rating_again(
    server_factory: ServerFactory,
) -> None:
    """v1 (1 a unit) and v2 (2 a unit) in force from h0; 1 unit at h1: 2. Rollback to 1 from h1: version 3, a copy
    of v1, re-rating it to 1 (delta -1); retried, the same copy and nothing re-rated. v4 (5 a unit) published from
    h1 takes over (same hour, published later): 5 (delta +4). The same rollback request now is a new rollback:
    version 5, rollback_from 4, re-rating to 1 (delta -4); its retry answers version 5."""
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        publish(client, draft(client, 1, [unit("2")]), h0)
        ingest(client, work("r1", h1 + 1, 1))
        assert charges(client) == "2"
        request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(h1))

        def rollback() -> tuple[int, int, str]:
            done = client.pricing.RollbackRateCard(request)
            return done.version.version, done.version.rollback_from_version, done.rerated_amount_delta

        assert rollback() == (3, 2, "-1")
        assert rollback() == (3, 2, "0")
        assert charges(client) == "1"
        assert counts(publish(client, draft(client, 1, [unit("5")]), h1))[3] == "4"
        assert charges(client) == "5"
        assert rollback() == (5, 4, "-4")
        assert charges(client) == "1"
        assert rollback() == (5, 4, "0")
        versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
        assert [(v.version, v.rollback_to_version) for v in versions] == [(1, 0), (2, 0), (3, 1), (4, 0), (5, 1)]


def test_a_version_published_ahead_prices_the_hours_from_its_effective_hour_and_a_rollback_undoes_it_there(
    server_factory: ServerFactory,
) -> None:
    """README step 4: publish from the next hour, usage before it keeps the old price. With events taken up to two
    hours ahead (--future-skew-s 7200): v2 (GRADUATED up to 5 at 2, then 1) from the next hour h+1; v1 prices 1 a
    unit. 4 units now (h): 4, and Authorize now estimates 4 more at v1: 4. 4 units at h+1 priced by v2 over the
    cumulative 4 -> 8: (5 x 2 + 3 x 1) - 4 x 2 = 5; charges 9. GetVersion at h is 1, at h+1 is 2; the card's
    current version is still 1. A rollback to 1 from h+1 (version 3, replacing 2) re-rates that hour: 8 - 4 = 4,
    delta -1, charges 8."""
    server = server_factory(extra_args=["--future-skew-s", "7200"])
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h - HOUR_MS)
        v2 = draft(client, 1, [tiered(False, [("5", "2", ""), ("", "1", "")])])
        assert counts(publish(client, v2, h + HOUR_MS)) == (0, 0, 0, "0")
        ingest(client, work("now", h + 1, 4))
        assert charges(client) == "4"
        assert str(client.authorize("c", "work", values={"n": 4}).estimated_cost) == "4"
        ingest(client, work("ahead", h + HOUR_MS + 1, 4))
        assert charges(client) == "9"
        assert (version_at(client, h), version_at(client, h + HOUR_MS)) == (1, v2)
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 1
        rollback = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(h + HOUR_MS))
        )
        assert (rollback.version.version, rollback.version.rollback_from_version) == (3, v2)
        assert counts(rollback) == (1, 1, 1, "-1")
        assert charges(client) == "8"


def test_tier_bounds_package_sizes_and_per_units_may_be_formulas_priced_as_evaluated(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto: every price field holds a decimal or a formula over the version's parameters (DiffVersions
    lists tiers[N].up_to and package.package_size among them). With p = 2: model=t GRADUATED up to p x 5 = 10 at
    1, then 0.5: 12 units cost 10 + 1 = 11; model=k PACKAGE size p = 2 at p x 1.5 = 3: 3 units are 2 packages, 6;
    model=u UNIT p per p x 1000 = 2000 units: 3000 units cost 3. Charges 20. Changing only p to 4 (a draft based on
    it) reprices all three, published from h: t up to 20 at 1: 12; k size 4 at 6: one package, 6; u 4 per 4000:
    3. Charges 21, delta 1."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        rates = [
            tiered(False, [("p * 5", "1", ""), ("", "0.5", "")], model="t"),
            package("p", "p * 1.5", model="k"),
            unit("p", {"model": "u"}, per_units="p * 1000"),
        ]
        v2 = draft(client, 1, rates, {"p": "2"})
        publish(client, v2, h)
        ingest(
            client, work("t", h + 1, 12, model="t"), work("k", h + 2, 3, model="k"), work("u", h + 3, 3000, model="u")
        )
        assert charges(client) == "20"
        v3 = draft(client, v2, [], {"p": "4"})
        assert counts(publish(client, v3, h)) == (1, 3, 3, "1")
        assert charges(client) == "21"


def test_a_cohort_publish_retried_after_a_restart_answers_the_same_and_later_members_stay_members(
    server_factory: ServerFactory,
) -> None:
    """v2 (4 a unit) published from h to the cohort of customers created strictly after c's creation; v1 prices 1.
    n1, created after the publish, joins it: 2 units cost 8; c stays outside: 2 units cost 2. After a kill -9 and a
    restart the same publish request answers the same version (nothing re-rated), a customer created now (n2) still
    joins (4 for 1 unit), and the charges are as before."""
    server = server_factory()
    h = this_hour_ms()
    with server.client() as client:
        catalogue(client, h)
        c_created = client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="c")).created_at
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, 1, [unit("4")]),
            effective_from=stamp(h),
            cohort=pricing_pb2.Cohort(customers_created_after=c_created),
        )
        first = client.pricing.PublishVersion(request)
        time.sleep(0.005)
        customer(client, "n1", h)
        ingest(client, work("c1", h + 1, 2), used("n1", "n1-1", h + 1, 2))
        assert (charges(client), client.get_balance("n1").period_charges) == ("2", "8")
    server.kill9()
    server.restart()
    with server.client() as client:
        again = client.pricing.PublishVersion(request)
        assert again.version == first.version and counts(again) == (0, 0, 0, "0")
        customer(client, "n2", h)
        ingest(client, used("n2", "n2-1", h + 2, 1))
        assert [client.get_balance(who).period_charges for who in ("c", "n1", "n2")] == ["2", "8", "4"]


def test_a_version_without_a_rate_for_usage_it_would_re_rate_is_refused_by_publish_and_simulate_alike(
    server_factory: ServerFactory,
) -> None:
    """v2 keeps only a rate for model=m (the catch-all removed). c used 3 units of model z at h0 and 1 of m: charges
    4. Publishing v2 from h0 would leave model z unpriced: FAILED_PRECONDITION naming the product, changing nothing
    (v2 a draft, charges 4); SimulateVersion over the same hours refuses it too. From h1, after the usage, it
    publishes (nothing to re-rate), and a new z event is then NO_APPLICABLE_RATE, not silently free."""
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - HOUR_MS, hour
    with server.client() as client:
        catalogue(client, h0)
        ingest(client, work("z1", h0 + 1, 3, model="z"), work("m1", h0 + 2, 1, model="m"))
        assert charges(client) == "4"
        request = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD,
            based_on_version=1,
            upsert_rates=[unit("2", {"model": "m"})],
            remove_rates=[pricing_pb2.RateKey(product_id="units")],
        )
        v2 = client.pricing.CreateDraftVersion(request).version
        message = expect_error(S.FAILED_PRECONDITION, lambda: publish(client, v2, h0))
        assert "units" in message and "no rate" in message, message
        simulate = pricing_pb2.SimulateVersionRequest(
            rate_card_id=CARD, version=v2, period_start=stamp(h0), period_end=stamp(h1)
        )
        message = expect_error(S.FAILED_PRECONDITION, lambda: client.pricing.SimulateVersion(simulate))
        assert "units" in message and "no rate" in message, message
        shown = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2))
        assert shown.state == pricing_pb2.DRAFT and charges(client) == "4"
        assert counts(publish(client, v2, h1)) == (0, 0, 0, "0")
        ack = client.ingest_batch([work("z2", h1 + 1, 1, model="z")], batch_id="b-z2")
        assert ack.accepted == 0 and [r.reason for r in ack.rejected] == [usage_pb2.NO_APPLICABLE_RATE]
        assert charges(client) == "4"
