"""A fourth audit of README "Changing prices safely" / "### Cohorts" and pricing.proto, over the wire, for corners the
earlier audits (tests/test_audit_pricing_wire.py, test_audit_prices2_wire.py, test_audit_prices3_wire.py,
test_server_cohorts.py, test_audit_rerate_credits_wire.py) leave out: bounds a nanosecond or half a millisecond off
an hour, a version scheduled in the past before the one in force, two versions effective at the same hour and the
retries around them, cohorts combined with a contract's price overrides, a publish over several products, and a
retry whose body changed. Catalogue of test_audit_pricing_wire.py: product `units` (event type `work`, SUM of `n`,
priced on model and region), card `card` in USD, customer `c` with contract `k-c`. Every amount asserted is
computed by hand in the docstring, never read back from the server."""

from __future__ import annotations

import json

import grpc
from google.protobuf import timestamp_pb2
from tariff import TariffClient, TariffError
from tariff.v1 import invoices_pb2, pricing_pb2

from engine.instants import iso
from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory
from tests.test_audit_prices3_wire import customer, override, used, version_at
from tests.test_audit_pricing_wire import (
    CARD,
    HOUR_MS,
    catalogue,
    charges,
    draft,
    expect_error,
    graduated,
    ingest,
    month_start_ms,
    publish,
    this_hour_ms,
    unit,
    work,
)

S = grpc.StatusCode
NANOS_PER_MS = 1_000_000
# A RateChange as compared: its match, kind, and (path, old_formula, new_formula, old_price, new_price) of each field.
RateRow = tuple[dict[str, str], int, list[tuple[str, str, str, str, str]]]


def at_nanos(ms: int, extra_nanos: int) -> timestamp_pb2.Timestamp:
    """The instant `extra_nanos` nanoseconds after (or before, negative) the millisecond `ms`."""
    instant = timestamp_pb2.Timestamp()
    instant.FromNanoseconds(ms * NANOS_PER_MS + extra_nanos)
    return instant


def simulated(
    client: TariffClient,
    version: int,
    start: timestamp_pb2.Timestamp,
    end: timestamp_pb2.Timestamp,
    *customers: str,
) -> list[tuple[str, str, str, str]]:
    """(customer, current, simulated, delta) of every amount, then ("total", ...)."""
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=CARD, version=version, period_start=start, period_end=end, customer_ids=customers
    )
    response = client.pricing.SimulateVersion(request)
    rows = [(a.customer_id, a.current_amount, a.simulated_amount, a.delta) for a in response.amounts]
    t = response.totals
    return [*rows, ("total", t.current_amount, t.simulated_amount, t.delta)]


def audit_actions(client: TariffClient, action: str) -> list[str]:
    entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action=action, page_size=1000)).entries
    return [e.target for e in entries]


def test_simulate_takes_in_the_hour_a_period_end_half_a_millisecond_past_it_reaches(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto SimulateVersionRequest: "a bound off an hour takes in that whole hour: period_start is rounded
    down to its hour and period_end up", and "a period_end not after period_start is INVALID_ARGUMENT".

    Version 1 prices a unit at 1 from h-2h; c uses 2 units at h-2h+1 ms and 3 units at h-1h+1 ms (charges 5).
    Version 2 prices a unit at 10.
    - Window [h-2h, h-1h + 0.5 ms): the end is off the hour, so hour h-1h is in: current 2 + 3 = 5, simulated
      20 + 30 = 50, delta 45.
    - Window [h-1h, h-1h + 0.5 ms): the end is after the start (by half a millisecond), so not refused; it takes
      in hour h-1h: current 3, simulated 30, delta 27.
    - Window [h-1h, h-1h) is refused, naming period_end.
    - A start a nanosecond before h-1h takes in hour h-2h: [h-1h - 1 ns, h-1h) is current 2, simulated 20."""
    server = server_factory()
    hour = this_hour_ms()
    h2, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h2)
        ingest(client, work("a", h2 + 1, 2), work("b", h1 + 1, 3))
        assert charges(client) == "5"
        v2 = draft(client, 1, [unit("10")])
        half_ms_past = at_nanos(h1, 500_000)
        assert simulated(client, v2, stamp(h2), half_ms_past) == [("c", "5", "50", "45"), ("total", "5", "50", "45")]
        assert simulated(client, v2, stamp(h1), half_ms_past) == [("c", "3", "30", "27"), ("total", "3", "30", "27")]
        message = expect_error(S.INVALID_ARGUMENT, lambda: simulated(client, v2, stamp(h1), stamp(h1)))
        assert "period_end" in message
        before = at_nanos(h1, -1)
        assert simulated(client, v2, before, stamp(h1)) == [("c", "2", "20", "18"), ("total", "2", "20", "18")]
        assert charges(client) == "5"  # simulate changes nothing


def test_a_version_scheduled_in_the_past_before_the_one_in_force_prices_only_the_hours_up_to_it(
    server_factory: ServerFactory,
) -> None:
    """README: "At time t a customer's price comes from the newest-effective published version"; effective_from is
    "past, now or future". Version 1 (unit 1) is in force from h-1h; c's contract starts at h-4h.

    Version 2 (unit 2) is then published effective from h-3h, before version 1's hour: it is in force in
    [h-3h, h-1h) only (version 1 is the newer-effective from h-1h on). So:
    - the card's current_version stays 1; GetVersion at h-1h - 1 ns is version 2, at h-1h version 1, at h-3h - 1 ms
      nothing (NOT_FOUND);
    - usage at h-1h+1 ms (5 units, rated at 1: 5) is not re-rated: the reply's counts are 0 and the delta "0";
    - usage at h-2h (4 units) is then priced by version 2: 8; charges 5 + 8 = 13.
    A rollback to version 2 from h-1h replaces version 1 there (rollback_from 1): version 3, a copy of version 2,
    re-rates the 5 units at h-1h+1 ms to 2 each: delta +5, charges 10 + 8 = 18, and current_version is then 3."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - HOUR_MS, customer_from_ms=hour - 4 * HOUR_MS)
        ingest(client, work("late", hour - HOUR_MS + 1, 5))
        assert charges(client) == "5"
        done = publish(client, draft(client, 1, [unit("2")]), hour - 3 * HOUR_MS)
        assert (done.customers_rerated, done.buckets_rerated, done.events_rerated) == (0, 0, 0)
        assert done.rerated_amount_delta == "0"
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert card.current_version == 1
        get = client.pricing.GetVersion
        assert get(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=at_nanos(hour - HOUR_MS, -1))).version == 2
        assert version_at(client, hour - HOUR_MS) == 1
        expect_error(S.NOT_FOUND, lambda: version_at(client, hour - 3 * HOUR_MS - 1))
        ingest(client, work("early", hour - 2 * HOUR_MS, 4))
        assert charges(client) == "13"
        request = pricing_pb2.RollbackRateCardRequest(
            rate_card_id=CARD, to_version=2, effective_from=stamp(hour - HOUR_MS)
        )
        copy = client.pricing.RollbackRateCard(request)
        v = copy.version
        assert (v.version, v.rollback_to_version, v.rollback_from_version, v.based_on_version) == (3, 2, 1, 2)
        assert (copy.customers_rerated, copy.buckets_rerated, copy.rerated_amount_delta) == (1, 1, "5")
        assert charges(client) == "18"
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 3


def test_of_two_versions_effective_at_one_hour_the_later_published_wins_and_retries_change_nothing(
    server_factory: ServerFactory,
) -> None:
    """README Cohorts: "of two effective at the same moment the later published wins"; pricing.proto PublishVersion:
    "publishing a published version again, with the same effective_from or none, answers as the first call did"
    and "A retry of a publish already committed ... re-rates nothing again: its counts are zero"; a retry changes
    nothing, so it adds no audit entry either (the log holds "every change").

    Version 1 (unit 1) from h-2h; c uses 3 units at h-1h+1 ms: 3.
    - Version 2 (unit 2) from h-1h re-rates them: 6 (delta +3). Version 3 (unit 4) from h-1h too, published
      later, wins: 12 (delta +6).
    - Publishing version 2 again from h-1h (a retry) answers version 2 with zero counts and delta "0"; version 3
      still prices the hour: charges 12, GetVersion at h-1h is 3.
    - A rollback to version 2 from h-1h replaces version 3 (rollback_from 3): version 4, re-rating 12 -> 6
      (delta -6). Retried, it answers version 4 again with zero counts; charges 6.
    The audit log holds three PublishVersion entries (versions 1, 2, 3) and one RollbackRateCard entry."""
    server = server_factory()
    hour = this_hour_ms()
    h1 = hour - HOUR_MS
    with server.client() as client:
        catalogue(client, hour - 2 * HOUR_MS)
        ingest(client, work("u", h1 + 1, 3))
        v2, v3 = draft(client, 1, [unit("2")]), draft(client, 1, [unit("4")])
        assert (publish(client, v2, h1).rerated_amount_delta, charges(client)) == ("3", "6")
        assert (publish(client, v3, h1).rerated_amount_delta, charges(client)) == ("6", "12")
        again = publish(client, v2, h1)
        assert (again.version.version, again.version.effective_from.ToMilliseconds()) == (2, h1)
        assert (again.customers_rerated, again.buckets_rerated, again.events_rerated) == (0, 0, 0)
        assert again.rerated_amount_delta == "0"
        assert (charges(client), version_at(client, h1)) == ("12", 3)
        request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=2, effective_from=stamp(h1))
        copy = client.pricing.RollbackRateCard(request)
        assert (copy.version.version, copy.version.rollback_from_version, copy.rerated_amount_delta) == (4, 3, "-6")
        retried = client.pricing.RollbackRateCard(request)
        assert retried.version == copy.version
        assert (retried.customers_rerated, retried.buckets_rerated, retried.rerated_amount_delta) == (0, 0, "0")
        assert charges(client) == "6"
        published = [f"rate_card/{CARD}/version/{n}" for n in (1, 2, 3)]
        assert audit_actions(client, "PublishVersion") == published
        assert audit_actions(client, "RollbackRateCard") == [f"rate_card/{CARD}/version/4"]


def test_a_cohort_version_is_priced_through_the_members_overrides_and_others_keep_theirs(
    server_factory: ServerFactory,
) -> None:
    """README Cohorts (a cohort publish re-rates the cohort's usage only) with contracts.proto PriceOverride: a
    multiplier multiplies the rate card's amount, a price replaces the UNIT price "per the rate's per_units
    (per_units is kept)", and the most specific override wins.

    Version 1: unit price 1 per 1 unit, from h-2h. Contract k-c has two overrides: multiplier 0.5 on every event,
    and price 0.1 on model=small (more specific). d has none. At h-1h+1 ms: c uses 4 units of model=big and 10 of
    model=small, d 4 of model=big.
    Under version 1: c big 4 x 1 x 0.5 = 2, c small 10 x 0.1 = 1 (c: 3); d 4 x 1 = 4.
    Version 2: unit price 3 per 2 units. Under it: c big 4 / 2 x 3 x 0.5 = 3, c small 10 / 2 x 0.1 = 0.5 (c: 3.5);
    d 4 / 2 x 3 = 6.
    - Simulating version 2 over [h-1h, h) for everyone: c 3 -> 3.5 (+0.5), d 4 -> 6 (+2); totals 7 -> 9.5 (+2.5).
    - Publishing it to the cohort {c} from h-1h re-rates c's two buckets (1 customer, 2 buckets, 2 events, +0.5):
      c pays 3.5, d still 4; current_version stays 1."""
    server = server_factory()
    hour = this_hour_ms()
    h1 = hour - HOUR_MS
    with server.client() as client:
        catalogue(client, hour - 2 * HOUR_MS)
        customer(client, "d", hour - 2 * HOUR_MS)
        override(client, "k-c", id="half", product_id="units", multiplier="0.5")
        override(client, "k-c", id="small", product_id="units", match={"model": "small"}, price="0.1")
        ingest(
            client,
            work("c-big", h1 + 1, 4, model="big"),
            work("c-small", h1 + 1, 10, model="small"),
            used("d", "d-big", h1 + 1, 4, model="big"),
        )
        assert (charges(client), client.get_balance("d").period_charges) == ("3", "4")
        v2 = draft(client, 1, [unit("3", per_units="2")])
        assert simulated(client, v2, stamp(h1), stamp(hour)) == [
            ("c", "3", "3.5", "0.5"),
            ("d", "4", "6", "2"),
            ("total", "7", "9.5", "2.5"),
        ]
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD, version=v2, effective_from=stamp(h1), cohort=pricing_pb2.Cohort(customer_ids=["c"])
        )
        done = client.pricing.PublishVersion(request)
        assert (done.customers_rerated, done.buckets_rerated, done.events_rerated) == (1, 2, 2)
        assert done.rerated_amount_delta == "0.5"
        assert (charges(client), client.get_balance("d").period_charges) == ("3.5", "4")
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 1


def test_a_publish_over_several_products_is_refused_whole_for_a_max_products_usage_unless_its_cohort_avoids_it(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto PublishVersionRequest.effective_from: refused with FAILED_PRECONDITION, changing nothing,
    "when affected usage belongs to a MAX ... product" (README: "naming the product"); "Re-rating covers the cohort's
    customers only".

    Products: `units` (SUM of n) and `peak` (MAX of n, event type `load`). Version 1 from h-2h: units at 1, peak at
    1. At h-1h+1 ms: c uses 2 units and has a load peak of 7; d uses 3 units. Charges: c 2 + 7 = 9, d 3.
    Version 2 prices units at 5 (peak unchanged at 1).
    - Published for everyone from h-1h: refused (c's `peak` usage in that hour), naming `peak` and the hour;
      version 2 stays a draft, no PublishVersion entry is added, and nobody's charges change (d's units, which
      alone could be re-rated, stay 3).
    - Published for the cohort {d} from h-1h: d alone is re-rated, 3 -> 15 (1 customer, 1 bucket, +12); c stays 9."""
    server = server_factory()
    hour = this_hour_ms()
    h1 = hour - HOUR_MS
    with server.client() as client:
        two_products(client, hour - 2 * HOUR_MS)
        load = work("c-load", h1 + 1, 7)
        load.event_type = "load"
        ingest(client, work("c-units", h1 + 1, 2), load, used("d", "d-units", h1 + 1, 3))
        assert (charges(client), client.get_balance("d").period_charges) == ("9", "3")
        v2 = draft(client, 1, [unit("5")])
        publishes = len(audit_actions(client, "PublishVersion"))
        message = expect_error(S.FAILED_PRECONDITION, lambda: publish(client, v2, h1))
        assert '"peak"' in message and iso(h1) in message, message
        state = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2)).state
        assert state == pricing_pb2.DRAFT
        assert len(audit_actions(client, "PublishVersion")) == publishes
        assert (charges(client), client.get_balance("d").period_charges) == ("9", "3")
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD, version=v2, effective_from=stamp(h1), cohort=pricing_pb2.Cohort(customer_ids=["d"])
        )
        done = client.pricing.PublishVersion(request)
        assert (done.customers_rerated, done.buckets_rerated, done.rerated_amount_delta) == (1, 1, "12")
        assert (charges(client), client.get_balance("d").period_charges) == ("9", "15")


def two_products(client: TariffClient, v1_from_ms: int) -> None:
    """Products `units` (SUM of n on work events) and `peak` (MAX of n on load events), card `card` whose version 1
    prices each at 1 from v1_from_ms, customers c and d with contracts from then."""
    units = pricing_pb2.Product(
        id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["model"]
    )
    peak = pricing_pb2.Product(id="peak", event_type="load", aggregation=pricing_pb2.MAX, value_key="n")
    for product in (units, peak):
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="USD"))
    peak_rate = pricing_pb2.Rate(product_id="peak", unit=pricing_pb2.UnitPrice(price="1"))
    publish(client, draft(client, 0, [unit("1"), peak_rate]), v1_from_ms)
    for customer_id in ("c", "d"):
        customer(client, customer_id, v1_from_ms)


def test_a_cohort_publish_retried_with_its_ids_reordered_is_a_retry_and_with_its_cohort_left_out_is_refused(
    server_factory: ServerFactory,
) -> None:
    """README Cohorts, Retries: "publishing a published version again with the same effective_from and cohort
    answers as the first call did and changes nothing; with another cohort it is FAILED_PRECONDITION ..., and so
    is another effective_from (the message names the hour the version is in force from)". A cohort is a set of
    criteria: the same ids in another order, or one named twice, is the same cohort; no cohort at all is
    everyone, another cohort.

    Version 1 (unit 1) from h-2h; customers c and d use 1 unit each at h-1h+1 ms. Version 2 (unit 3) to the
    cohort {c, d} from h-1h re-rates both: +2 each, +4 in all (2 customers, 2 buckets); charges 3 and 3.
    - Retried with customer_ids [d, c, c]: version 2 again, zero counts, delta "0"; charges stay 3 and 3.
    - Retried without a cohort: FAILED_PRECONDITION; version 2 keeps its cohort [c, d], current_version 1.
    - Retried with the cohort but from h-2h: FAILED_PRECONDITION naming the hour h-1h in UTC.
    One PublishVersion entry for version 2 is in the audit log."""
    server = server_factory()
    hour = this_hour_ms()
    h1 = hour - HOUR_MS
    with server.client() as client:
        catalogue(client, hour - 2 * HOUR_MS)
        customer(client, "d", hour - 2 * HOUR_MS)
        ingest(client, work("c1", h1 + 1, 1), used("d", "d1", h1 + 1, 1))
        v2 = draft(client, 1, [unit("3")])

        def cohort_publish(ids: list[str] | None, from_ms: int = h1) -> pricing_pb2.PublishVersionResponse:
            request = pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v2, effective_from=stamp(from_ms))
            if ids is not None:
                request.cohort.CopyFrom(pricing_pb2.Cohort(customer_ids=ids))
            response: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
            return response

        first = cohort_publish(["c", "d"])
        assert (first.customers_rerated, first.buckets_rerated, first.rerated_amount_delta) == (2, 2, "4")
        again = cohort_publish(["d", "c", "c"])
        assert again.version == first.version
        assert (again.customers_rerated, again.buckets_rerated, again.rerated_amount_delta) == (0, 0, "0")
        expect_error(S.FAILED_PRECONDITION, lambda: cohort_publish(None))
        message = expect_error(S.FAILED_PRECONDITION, lambda: cohort_publish(["c", "d"], hour - 2 * HOUR_MS))
        assert iso(h1) in message, message
        shown = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2))
        assert list(shown.cohort.customer_ids) == ["c", "d"]
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 1
        assert (charges(client), client.get_balance("d").period_charges) == ("3", "3")
        entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="PublishVersion")).entries
        mine = [json.loads(e.diff) for e in entries if e.target == f"rate_card/{CARD}/version/{v2}"]
        assert len(mine) == 1
        assert (mine[0]["effective_from_ms"], mine[0]["cohort"]["customer_ids"]) == (h1, ["c", "d"])


def test_a_rollback_without_effective_from_is_retried_from_a_later_hour_as_the_same_copy(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto RollbackRateCard: "when the version in force at the requested hour is the copy a rollback to
    the same to_version made (from that same hour, when effective_from is given), the call is answered as the
    first one was". A retry with effective_from set to the hour the first call (without one) was applied in is
    "that same hour": answered with the copy. Its audit entry's effective_from_ms is that hour.

    Version 1 (unit 1) from h-2h, version 2 (unit 2) from h-1h; c uses 1 unit at h+1 ms (now's hour): 2.
    Rollback to 1 without effective_from: version 3 from h (the current hour), re-rating 2 -> 1 (delta -1).
    Retried with effective_from h: version 3 again, zero counts. The audit entry's diff says effective_from_ms h,
    version 3, rollback_from 2, rollback_to 1."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - 2 * HOUR_MS)
        publish(client, draft(client, 1, [unit("2")]), hour - HOUR_MS)
        ingest(client, work("now", hour + 1, 1))
        assert charges(client) == "2"
        first = client.pricing.RollbackRateCard(pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1))
        assert (first.version.version, first.version.effective_from.ToMilliseconds()) == (3, hour)
        assert first.rerated_amount_delta == "-1"
        request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(hour))
        again = client.pricing.RollbackRateCard(request)
        assert again.version == first.version
        assert (again.buckets_rerated, again.rerated_amount_delta) == (0, "0")
        assert charges(client) == "1"
        entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="RollbackRateCard")).entries
        assert len(entries) == 1
        diff = json.loads(entries[0].diff)
        assert (diff["effective_from_ms"], diff["version"], diff["rollback_from"], diff["rollback_to"]) == (
            hour,
            3,
            2,
            1,
        )


def test_a_rollback_from_the_hour_a_cohort_version_took_effect_wins_for_its_members_too(
    server_factory: ServerFactory,
) -> None:
    """README Cohorts: "A rollback publishes its copy for everyone outside cohorts: a cohort member keeps its cohort's
    version when that one is newer-effective than the rollback's hour", and "of two effective at the same moment the
    later published wins". A cohort version effective from the rollback's very hour is not newer-effective: the
    copy, published later, prices its members too.

    Version 1 (unit 1) for everyone from h-3h; version 2 (unit 5) for the cohort {c} from h-1h; version 3 (unit 2)
    for everyone from h-2h. At h-1h+1 ms c and d use 1 unit each: c 5 (version 2), d 2 (version 3).
    A rollback to version 1 from h-1h replaces version 3 (rollback_from 3): version 4 (unit 1), effective at the
    same hour as version 2 and published after it, so it prices c and d in that hour: c 5 -> 1, d 2 -> 1
    (2 customers, 2 buckets, delta -5). GetVersion at h-1h is 4.
    Re-sending c's event afterwards (same transaction id, a new batch) is a duplicate: charges stay 1."""
    server = server_factory()
    hour = this_hour_ms()
    h1 = hour - HOUR_MS
    with server.client() as client:
        catalogue(client, hour - 3 * HOUR_MS)
        customer(client, "d", hour - 3 * HOUR_MS)
        pilot = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, 1, [unit("5")]),
            effective_from=stamp(h1),
            cohort=pricing_pb2.Cohort(customer_ids=["c"]),
        )
        client.pricing.PublishVersion(pilot)
        publish(client, draft(client, 1, [unit("2")]), hour - 2 * HOUR_MS)
        ingest(client, work("c1", h1 + 1, 1), used("d", "d1", h1 + 1, 1))
        assert (charges(client), client.get_balance("d").period_charges) == ("5", "2")
        request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(h1))
        copy = client.pricing.RollbackRateCard(request)
        assert (copy.version.version, copy.version.rollback_from_version) == (4, 3)
        assert (copy.customers_rerated, copy.buckets_rerated, copy.rerated_amount_delta) == (2, 2, "-5")
        assert (charges(client), client.get_balance("d").period_charges) == ("1", "1")
        assert version_at(client, h1) == 4
        ack = client.ingest_batch([work("c1", h1 + 1, 1)], batch_id="again")
        assert (ack.accepted, ack.duplicates) == (0, 1)
        assert charges(client) == "1"


def test_a_rollback_refused_by_usage_it_cannot_re_rate_leaves_no_copy_behind_also_after_a_restart(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto RollbackRateCard: refused, changing nothing, for "usage it would re-rate that cannot be priced
    again, as for PublishVersion (FAILED_PRECONDITION: a MAX ... product)". Nothing changed means no copy: the card's
    latest_version and versions are as before, no RollbackRateCard entry, the next draft takes the next number,
    and a restart replays to the same.

    Products `units` (SUM) and `peak` (MAX), each at 1 in version 1 from h-2h; version 2 (units 3, peak 1) for
    everyone from h-1h. At h-1h+1 ms c uses 2 units (6) and a peak of 4 (4): charges 10.
    A rollback to 1 from h-1h would re-rate c's `peak` usage: refused naming "peak". latest_version stays 2,
    current_version 2, charges 10, and usage of 1 more unit at h-1h+2 ms is priced by version 2: 3 (charges 13).
    The next draft is version 3. After a kill -9 and restart, the same."""
    server = server_factory()
    hour = this_hour_ms()
    h1 = hour - HOUR_MS
    with server.client() as client:
        two_products(client, hour - 2 * HOUR_MS)
        publish(client, draft(client, 1, [unit("3")]), h1)
        load = work("c-load", h1 + 1, 4)
        load.event_type = "load"
        ingest(client, work("c-units", h1 + 1, 2), load)
        assert charges(client) == "10"
        request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(h1))
        message = expect_error(S.FAILED_PRECONDITION, lambda: client.pricing.RollbackRateCard(request))
        assert '"peak"' in message, message
        ingest(client, work("c-more", h1 + 2, 1))
        assert charges(client) == "13"
    server.kill9()
    server.restart()
    with server.client() as client:
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert (card.latest_version, card.current_version) == (2, 2)
        versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
        assert [v.version for v in versions] == [1, 2]
        assert audit_actions(client, "RollbackRateCard") == []
        assert charges(client) == "13"
        assert draft(client, 1, [unit("7")]) == 3


def test_a_rollback_retried_after_usage_it_could_not_re_rate_arrived_is_answered_as_the_first_call(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto RollbackRateCard: "when the version in force at the requested hour is the copy a rollback to
    the same to_version made (from that same hour, when effective_from is given), the call is answered as the first
    one was and changes nothing. So a retry never makes a second copy". A retry re-rates nothing, so usage that no
    re-rating could price again (a MAX product's) arriving between the call and its retry cannot refuse it.

    Products `units` (SUM) and `peak` (MAX), each at 1 in version 1 from h-2h; version 2 (units 3) from h-1h.
    A rollback to 1 from h-1h (no usage yet: nothing re-rated) makes version 3. Then, at h-1h+1 ms, c uses 2 units
    and a peak of 4, priced by version 3: 2 + 4 = 6. The rollback retried (its answer lost): version 3 again, zero
    counts, charges still 6, one RollbackRateCard entry; retried without effective_from (the current hour h, where
    version 3 is in force too): the same. A rollback to version 3 itself from h-1h is refused as documented,
    "naming the version in force" (version 3 is already in force there), not as a re-rating of the peak."""
    server = server_factory()
    hour = this_hour_ms()
    h1 = hour - HOUR_MS
    with server.client() as client:
        two_products(client, hour - 2 * HOUR_MS)
        publish(client, draft(client, 1, [unit("3")]), h1)
        request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(h1))
        first = client.pricing.RollbackRateCard(request)
        assert (first.version.version, first.buckets_rerated) == (3, 0)
        load = work("c-load", h1 + 1, 4)
        load.event_type = "load"
        ingest(client, work("c-units", h1 + 1, 2), load)
        assert charges(client) == "6"
        itself = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=3, effective_from=stamp(h1))
        message = expect_error(S.FAILED_PRECONDITION, lambda: client.pricing.RollbackRateCard(itself))
        assert f"version 3 is already in force at {iso(h1)}" in message, message
        again = client.pricing.RollbackRateCard(request)
        assert again.version == first.version
        assert (again.customers_rerated, again.buckets_rerated, again.rerated_amount_delta) == (0, 0, "0")
        unnamed = client.pricing.RollbackRateCard(pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1))
        assert unnamed.version == first.version
        assert charges(client) == "6"
        assert audit_actions(client, "RollbackRateCard") == [f"rate_card/{CARD}/version/3"]


def test_a_version_holds_at_most_10000_rates_and_1000_parameters_its_base_included(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto CreateDraftVersionRequest: "A version holds at most 10,000 rates and 1,000 parameters, its base's
    included: a draft that would hold more is INVALID_ARGUMENT naming upsert_rates or set_parameters, changing
    nothing."

    Version 1 holds the catch-all rate. Draft 2 (based on 1) adds 9,999 rates (model m0 .. m9998) and 1,000
    parameters: 10,000 rates, 1,000 parameters, accepted. Based on 2, one more rate (model m9999) would make
    10,001, and one more parameter 1,001: each refused naming its field, latest_version staying 2. Replacing a rate
    and a parameter (same keys) keeps the counts: version 3. Removing one rate and adding another: version 4.
    Draft 2's audit entry (about 1 MB of fields) is shortened to 64 KiB in its largest field, upsert_rates."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour)
        many = [unit("1", {"model": f"m{i}"}) for i in range(9_999)]
        parameters = {f"p{i}": "1" for i in range(1_000)}
        assert draft(client, 1, many, parameters) == 2
        shown = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=2))
        assert (len(shown.rates), len(shown.parameters)) == (10_000, 1_000)
        # Its audit entry (README Audit): valid JSON of at most 64 KiB, the largest field shortened and said so.
        entry = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="CreateDraftVersion")).entries[-1]
        assert entry.target == f"rate_card/{CARD}/version/2" and len(entry.diff.encode()) <= 65_536
        logged = json.loads(entry.diff)
        kept = logged["truncated"]["fields"]["upsert_rates"]
        assert kept["of"] == 9_999 and kept["kept"] == len(logged["upsert_rates"]) < 9_999
        assert len(logged["set_parameters"]) == 1_000 and "set_parameters" not in logged["truncated"]["fields"]

        def refused(rates: list[pricing_pb2.Rate], extra: dict[str, str]) -> list[str]:
            request = pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=2, upsert_rates=rates, set_parameters=extra
            )
            try:
                client.pricing.CreateDraftVersion(request)
            except TariffError as exc:
                assert exc.code == S.INVALID_ARGUMENT, exc
                return [v.field for v in exc.field_violations]
            raise AssertionError("the draft was accepted")

        assert refused([unit("1", {"model": "m9999"})], {}) == ["upsert_rates"]
        assert refused([], {"p1000": "1"}) == ["set_parameters"]
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version == 2
        assert draft(client, 2, [unit("2", {"model": "m5"})], {"p5": "2"}) == 3
        swap = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD,
            based_on_version=2,
            remove_rates=[pricing_pb2.RateKey(product_id="units", match={"model": "m0"})],
            upsert_rates=[unit("1", {"model": "m9999"})],
        )
        assert client.pricing.CreateDraftVersion(swap).version == 4


def test_many_unknown_cohort_or_simulated_customers_are_named_the_first_20_in_id_order_then_counted(
    server_factory: ServerFactory,
) -> None:
    """README Cohorts / pricing.proto Cohort: an id in customer_ids that is no customer is INVALID_ARGUMENT naming the
    unknown ones; SimulateVersion's is NOT_FOUND naming them. A refusal's message is at most 512 bytes
    (contracts.proto), so past 20 they are counted: the first 20 in id order, then "and N more".

    customer_ids: c (a customer) then x24, x23, ..., x00 (25 unknown ones, given in reverse). The publish's
    violation is on cohort.customer_ids, naming 'x00' .. 'x19' in that order and "and 5 more", not c; nothing is
    published (version 2 stays a draft). SimulateVersion with the same ids names the same 20, "and 5 more"."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - HOUR_MS)
        v2 = draft(client, 1, [unit("2")])
        ids = ["c", *[f"x{i:02d}" for i in reversed(range(25))]]
        named = ", ".join(f"'x{i:02d}'" for i in range(20)) + " and 5 more"
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD, version=v2, cohort=pricing_pb2.Cohort(customer_ids=ids)
        )
        try:
            client.pricing.PublishVersion(request)
            raise AssertionError("the publish was accepted")
        except TariffError as exc:
            assert exc.code == S.INVALID_ARGUMENT, exc
            violations = [(v.field, v.description) for v in exc.field_violations]
        assert violations == [("cohort.customer_ids", f"no such customer: {named}")]
        state = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2)).state
        assert state == pricing_pb2.DRAFT
        message = expect_error(S.NOT_FOUND, lambda: simulated(client, v2, stamp(hour - HOUR_MS), stamp(hour), *ids))
        assert f"customers {named} do not exist" in message, message


def test_simulate_and_re_rating_walk_each_period_from_its_own_start_across_a_month_boundary(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto SimulateVersionRequest: "Each (customer, period, product, dimension values) is walked in hour
    order from its billing period's start ... over the cumulative quantity"; re-rating prices "every open period's
    hour buckets ... over the period's cumulative quantity". At a period boundary the cumulative quantity starts
    again: the tiers are entered anew.

    c's contract and version 1 start at last month's start L; monthly periods, so one ends at this month's start M.
    Version 2, from L before any usage: GRADUATED, up to 10 at 1, the rest at 0.5. c uses 12 units at M-1h+1 ms (last
    month, still open) and 12 at M+1 ms: 10 + 2 x 0.5 = 11 in each period.
    Version 3: up to 10 at 2, the rest at 1: 20 + 2 = 22 in each period (a walk not starting again at M would give
    the second hour 34 - 22 = 12).
    - Simulate version 3 over [M-1h, M+1h): c 22 -> 44 (+22); over [M, M+1h): 11 -> 22; over [M-1h, M): 11 -> 22.
    - Publish version 3 from L: both buckets re-rated (1 customer, 2 buckets, +22); this period's charges 22; the
      same simulation then shows 44 -> 44."""
    server = server_factory()
    last, this = month_start_ms(1), month_start_ms(0)
    with server.client() as client:
        catalogue(client, last)
        publish(client, draft(client, 1, [graduated("1", "0.5")]), last)
        ingest(client, work("before", this - HOUR_MS + 1, 12), work("after", this + 1, 12))
        assert charges(client) == "11"
        v3 = draft(client, 1, [graduated("2", "1")])
        both = (stamp(this - HOUR_MS), stamp(this + HOUR_MS))
        assert simulated(client, v3, *both) == [("c", "22", "44", "22"), ("total", "22", "44", "22")]
        assert simulated(client, v3, stamp(this), stamp(this + HOUR_MS))[0] == ("c", "11", "22", "11")
        assert simulated(client, v3, stamp(this - HOUR_MS), stamp(this))[0] == ("c", "11", "22", "11")
        done = publish(client, v3, last)
        assert (done.customers_rerated, done.buckets_rerated, done.rerated_amount_delta) == (1, 2, "22")
        assert charges(client) == "22"
        assert simulated(client, v3, *both)[0] == ("c", "44", "44", "0")


def test_a_rollback_to_a_pilots_version_gives_its_prices_to_everyone_outside_cohorts(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto RollbackRateCard: the copy has "the parameters and rates of to_version, no cohort (it prices
    every customer outside cohorts)"; any earlier published version may be rolled back to, a pilot's included.
    PublishVersionResponse: customers and buckets "whose charge or pricing version re-rating changed" are counted.

    Version 1 (unit 1) for everyone from h-2h; version 2 (unit 5) for the cohort {c} from h-2h. At h-1h+1 ms c and d
    use 1 unit each: c 5, d 1. A rollback to version 2 from h-1h replaces version 1 there (rollback_from 1):
    version 3, a copy of version 2 without a cohort. In h-1h it is the newest-effective version for both: d 1 -> 5
    (+4); c stays 5 but its bucket is now priced by version 3 (its version changed): 2 customers, 2 buckets,
    delta +4. current_version is 3."""
    server = server_factory()
    hour = this_hour_ms()
    h1 = hour - HOUR_MS
    with server.client() as client:
        catalogue(client, hour - 2 * HOUR_MS)
        customer(client, "d", hour - 2 * HOUR_MS)
        pilot = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, 1, [unit("5")]),
            effective_from=stamp(hour - 2 * HOUR_MS),
            cohort=pricing_pb2.Cohort(customer_ids=["c"]),
        )
        client.pricing.PublishVersion(pilot)
        ingest(client, work("c1", h1 + 1, 1), used("d", "d1", h1 + 1, 1))
        assert (charges(client), client.get_balance("d").period_charges) == ("5", "1")
        request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=2, effective_from=stamp(h1))
        copy = client.pricing.RollbackRateCard(request)
        v = copy.version
        assert (v.version, v.rollback_to_version, v.rollback_from_version, v.HasField("cohort")) == (3, 2, 1, False)
        assert [r.unit.price for r in v.rates] == ["5"]
        assert (copy.customers_rerated, copy.buckets_rerated, copy.rerated_amount_delta) == (2, 2, "4")
        assert (charges(client), client.get_balance("d").period_charges) == ("5", "5")
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 3


def test_diff_lists_a_parameter_rewritten_but_leaves_out_a_rate_whose_price_it_does_not_change(
    server_factory: ServerFactory,
) -> None:
    """README Diff: "Parameters added, removed or changed, by name; rates added, removed, changed (written
    differently) or repriced (written the same, but a parameter their formulas use changed)"; pricing.proto: "Only
    rates that differ: a rate written the same whose prices are the same is left out", and a field's price is "the
    default when the field is left empty ("1" for per_units)".

    Version 2 (based on 1): parameter f = "2", the catch-all rate at "f * 1.5" (3), model=a at "3" with per_units
    left empty. Version 3 (based on 2): f = "2.0" (the same value written differently), model=a at "3" per "1".
    Diff 2 -> 3: parameter f CHANGED "2" -> "2.0"; the catch-all rate is written the same and still prices 3: left
    out (not REPRICED); model=a is CHANGED, its one differing field unit.per_units "" -> "1", priced 1 on both
    sides (unit.price "3" is the same text and price: not listed). Diff 3 -> 2 is the mirror image."""
    server = server_factory()
    with server.client() as client:
        catalogue(client, this_hour_ms())
        v2 = draft(client, 1, [unit("f * 1.5"), unit("3", {"model": "a"})], {"f": "2"})
        v3 = draft(client, v2, [unit("3", {"model": "a"}, per_units="1")], {"f": "2.0"})

        def diff(old: int, new: int) -> tuple[list[tuple[str, str, str, int]], list[RateRow]]:
            answer = client.pricing.DiffVersions(
                pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=old, to_version=new)
            )
            parameters = [(p.name, p.old_value, p.new_value, p.kind) for p in answer.parameters]
            rates = [
                (
                    dict(r.key.match),
                    r.kind,
                    [(f.path, f.old_formula, f.new_formula, f.old_price, f.new_price) for f in r.fields],
                )
                for r in answer.rates
            ]
            return parameters, rates

        changed = pricing_pb2.CHANGED
        assert diff(v2, v3) == (
            [("f", "2", "2.0", changed)],
            [({"model": "a"}, changed, [("unit.per_units", "", "1", "1", "1")])],
        )
        assert diff(v3, v2) == (
            [("f", "2.0", "2", changed)],
            [({"model": "a"}, changed, [("unit.per_units", "1", "", "1", "1")])],
        )


def test_a_cohort_publish_counts_only_its_members_usage_left_alone_in_closed_periods(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto: "Re-rating covers the cohort's customers only", and PublishVersionResponse counts "Usage at or
    after effective_from in closed periods, left alone": a cohort publish affects its members only, so the usage it
    leaves alone is theirs only.

    Version 1 (unit 1) from last month's start L; c and d each use 2 units at M-1h (last month, then closed for
    both) and 3 at M+1 ms (this month, M its start). Version 2 (unit 5) for the cohort {c} from L: c's last-month
    bucket (2 units, 2) is left alone and counted (1 bucket, 1 event, "2"); c's this-month bucket re-rated 3 -> 15
    (1 customer, 1 bucket, +12). d's usage is neither re-rated nor counted: d's charges stay 3."""
    server = server_factory()
    last, this = month_start_ms(1), month_start_ms(0)
    with server.client() as client:
        catalogue(client, last)
        customer(client, "d", last)
        ingest(
            client,
            work("c-old", this - HOUR_MS, 2),
            work("c-new", this + 1, 3),
            used("d", "d-old", this - HOUR_MS, 2),
            used("d", "d-new", this + 1, 3),
        )
        for who in ("c", "d"):
            client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=who, period_start=stamp(last)))
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, 1, [unit("5")]),
            effective_from=stamp(last),
            cohort=pricing_pb2.Cohort(customer_ids=["c"]),
        )
        done = client.pricing.PublishVersion(request)
        assert (done.closed_buckets_left_alone, done.closed_events_left_alone, done.closed_amount_left_alone) == (
            1,
            1,
            "2",
        )
        assert (done.customers_rerated, done.buckets_rerated, done.rerated_amount_delta) == (1, 1, "12")
        assert (charges(client), client.get_balance("d").period_charges) == ("15", "3")


def test_a_max_products_usage_refuses_a_publish_before_it_even_in_hours_a_later_version_or_a_cohorts_keeps(
    server_factory: ServerFactory,
) -> None:
    """README: a publish before usage already rated prices "every open period's hour buckets of the customers
    concerned ... again in time order, each by the version in force for its hour", and "usage of MAX, LATEST and
    UNIQUE_COUNT products cannot be priced again from hour buckets, so such a publish is refused"; pricing.proto
    says so of usage at or after effective_from of the customers the publish concerns, also in hours a later-effective
    version (a member's cohort version included) keeps pricing: those buckets are priced again too.

    Products `units` (SUM) and `peak` (MAX), each at 1 in version 1 from h-3h. Version 2 (units 2, peak 1) for the
    cohort {c} from h-1h, before usage. At h-1h+1 ms c has a peak of 4 (version 2: 4); at h-2h+1 ms d uses 3 units
    (version 1: 3). Version 3 (units 5, peak 1) for everyone from h-2h would price d's hour h-2h (3 -> 15) and leave c
    on version 2 in h-1h, yet c's peak there is usage of a customer concerned at or after h-2h: refused naming
    "peak", changing nothing (version 3 a draft, charges 4 and 3). For the cohort {d} it publishes: 3 -> 15
    (1 customer, 1 bucket, +12); c stays 4."""
    server = server_factory()
    hour = this_hour_ms()
    h1, h2 = hour - HOUR_MS, hour - 2 * HOUR_MS
    with server.client() as client:
        two_products(client, hour - 3 * HOUR_MS)
        peak_rate = pricing_pb2.Rate(product_id="peak", unit=pricing_pb2.UnitPrice(price="1"))
        pilot = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, 1, [unit("2"), peak_rate]),
            effective_from=stamp(h1),
            cohort=pricing_pb2.Cohort(customer_ids=["c"]),
        )
        client.pricing.PublishVersion(pilot)
        load = work("c-load", h1 + 1, 4)
        load.event_type = "load"
        ingest(client, load, used("d", "d-units", h2 + 1, 3))
        assert (charges(client), client.get_balance("d").period_charges) == ("4", "3")
        v3 = draft(client, 1, [unit("5"), peak_rate])
        message = expect_error(S.FAILED_PRECONDITION, lambda: publish(client, v3, h2))
        assert '"peak"' in message and iso(h2) in message, message
        state = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v3)).state
        assert state == pricing_pb2.DRAFT
        assert (charges(client), client.get_balance("d").period_charges) == ("4", "3")
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD, version=v3, effective_from=stamp(h2), cohort=pricing_pb2.Cohort(customer_ids=["d"])
        )
        done = client.pricing.PublishVersion(request)
        assert (done.customers_rerated, done.buckets_rerated, done.rerated_amount_delta) == (1, 1, "12")
        assert (charges(client), client.get_balance("d").period_charges) == ("4", "15")
