"""A second audit of README "Changing prices safely" / "Cohorts" and PricingService's comments in pricing.proto,
over the wire, for what tests/test_audit_pricing_wire.py (whose helpers and catalogue this reuses: product `units`
on card `card`, customer `c`) does not cover: the refusals a demanding finance user meets when a request is
slightly wrong, and the demo card's figures the README quotes (a complex GPT-4 summary: 5 credits, 4 after the
20% cut), each computed by hand from the README."""

from __future__ import annotations

import grpc
from google.protobuf import timestamp_pb2
from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from engine.instants import iso
from engine.rerate import LEFT_ALONE_REASON
from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory
from tests.test_audit_pricing_wire import (
    CARD,
    HOUR_MS,
    catalogue,
    closed_month_and_a_draft,
    draft,
    expect_error,
    ingest,
    publish,
    this_hour_ms,
    unit,
    work,
)
from tests.test_cli import table_rows, tariff

S = grpc.StatusCode
DEMO_CARD = "ai-credits"
COMPLEX_GPT4_SUMMARY = {"action": "summary", "model": "gpt-4", "complexity": "complex"}


def test_publishing_a_published_version_from_another_hour_is_refused_naming_its_hour_in_utc(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto: a published version published again with the same effective_from (or none) is a retry; with
    another one it is FAILED_PRECONDITION, changing nothing, and the message names the hour it is in force from as
    every other message names a time (2026-12-04T16:00:00Z), not as Unix milliseconds."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - 2 * HOUR_MS)
        v2 = draft(client, 1, [unit("2")])
        first = publish(client, v2, hour - HOUR_MS)
        message = expect_error(S.FAILED_PRECONDITION, lambda: publish(client, v2, hour))
        assert iso(hour - HOUR_MS) in message, message
        assert str(hour - HOUR_MS) not in message, message
        assert publish(client, v2).version == first.version  # none: a retry
        shown = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2))
        assert shown.effective_from.ToMilliseconds() == hour - HOUR_MS


def test_simulate_refuses_customers_that_do_not_exist_naming_every_one(server_factory: ServerFactory) -> None:
    """A misspelt customer in SimulateVersion.customer_ids answered an empty simulation (delta 0): the analyst read
    "no change" for a customer the server had never heard of. It is NOT_FOUND naming every unknown id, as a cohort
    names them; a customer that exists but has no usage of the card still gives no amounts."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - HOUR_MS)
        ingest(client, work("s1", hour - HOUR_MS + 1, 2))
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="idle", name="idle"))
        v2 = draft(client, 1, [unit("3")])

        def simulate(*customers: str) -> pricing_pb2.SimulateVersionResponse:
            request = pricing_pb2.SimulateVersionRequest(
                rate_card_id=CARD,
                version=v2,
                period_start=stamp(hour - HOUR_MS),
                period_end=stamp(hour),
                customer_ids=customers,
            )
            response: pricing_pb2.SimulateVersionResponse = client.pricing.SimulateVersion(request)
            return response

        message = expect_error(S.NOT_FOUND, lambda: simulate("c", "ghost", "gh0st"))
        assert "'ghost'" in message and "'gh0st'" in message and "'c'" not in message, message
        idle = simulate("idle")
        assert list(idle.amounts) == [] and idle.totals.delta == "0"
        both = simulate("c", "idle")
        assert [(a.customer_id, a.current_amount, a.simulated_amount, a.delta) for a in both.amounts] == [
            ("c", "2", "6", "4")
        ]


def test_get_version_without_a_version_or_a_time_is_invalid_argument(server_factory: ServerFactory) -> None:
    """GetVersion selects by version or by `at`; naming neither (or version 0, which no version has) is a malformed
    request, INVALID_ARGUMENT as ValidateVersion's, not NOT_FOUND "has no version 0" as if it were looked for."""
    server = server_factory()
    with server.client() as client:
        catalogue(client, this_hour_ms())
        get = client.pricing.GetVersion
        for request in (
            pricing_pb2.GetVersionRequest(rate_card_id=CARD),
            pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=0),
        ):
            message = expect_error(S.INVALID_ARGUMENT, lambda r=request: get(r))  # type: ignore[misc]
            assert "version" in message and "at" in message, message
        expect_error(S.NOT_FOUND, lambda: get(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=7)))
        assert get(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=1)).version == 1


def demo_cost(client: TariffClient, customer_id: str) -> str:
    return str(client.authorize(customer_id, "ai_action", dimensions=COMPLEX_GPT4_SUMMARY).estimated_cost)


def demo_customer(client: TariffClient, customer_id: str, attributes: dict[str, str], from_ms: int) -> None:
    client.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id, attributes=attributes)
    )
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id=DEMO_CARD, starting_at=stamp(from_ms)
        )
    )


def test_demo_pilot_cohort_prices_members_at_4_and_everyone_else_at_5_including_later_customers(
    server_factory: ServerFactory,
) -> None:
    """README "Cohorts" on the demo card: gpt4_factor 2.5 -> 2 takes a complex GPT-4 summary (1 x factor x 2) from
    5 to 4 credits for the cohort only. A cohort by attribute and creation time also takes in a customer created
    after the publish that meets it, and not one that does not."""
    server = server_factory(demo=True)
    hour = this_hour_ms()
    with server.client() as client:
        request = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=DEMO_CARD, based_on_version=1, set_parameters={"gpt4_factor": "2"}
        )
        v2 = client.pricing.CreateDraftVersion(request).version
        cohort = pricing_pb2.Cohort(attributes={"segment": "pilot"}, customers_created_after=stamp(hour - HOUR_MS))
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=DEMO_CARD, version=v2, cohort=cohort)
        )
        demo_customer(client, "pilot-late", {"segment": "pilot"}, hour)
        demo_customer(client, "other-late", {"segment": "enterprise"}, hour)
        assert [demo_cost(client, who) for who in ("acme", "pilot-late", "other-late")] == ["5", "4", "5"]
        events = [
            usage_pb2.UsageEvent(
                transaction_id=f"d-{who}",
                customer_id=who,
                event_type="ai_action",
                timestamp_ms=hour + 1,
                dimensions=COMPLEX_GPT4_SUMMARY,
            )
            for who in ("acme", "pilot-late")
        ]
        assert client.ingest_batch(events, batch_id="demo-1").accepted == 2
        assert [client.get_balance(who).period_charges for who in ("acme", "pilot-late")] == ["5", "4"]
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=DEMO_CARD)).current_version == 1


def test_a_draft_request_id_is_the_rate_cards_own_and_every_retry_survives_a_crash(
    server_factory: ServerFactory,
) -> None:
    """CreateDraftVersion's key is request_id within the card (engine: rate_card/<id>/draft/<key>): the same key on
    another card makes that card's own draft. After a kill -9 and a restart, retrying the draft, the publish and the
    rollback answers as the first calls did and adds no version; the key with another request is still refused."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - 2 * HOUR_MS)
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card2", pricing_unit="USD"))

        def keyed(card: str, note: str = "") -> pricing_pb2.CreateDraftVersionRequest:
            return pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=card, based_on_version=1 if card == CARD else 0, change_note=note, request_id="k-1"
            )

        first = client.pricing.CreateDraftVersion(keyed(CARD))
        assert (first.rate_card_id, first.version) == (CARD, 2)
        other_card = client.pricing.CreateDraftVersion(keyed("card2"))
        assert (other_card.rate_card_id, other_card.version) == ("card2", 1)
        published = publish(client, 2, hour - HOUR_MS).version
        rollback = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(hour))
        copy = client.pricing.RollbackRateCard(rollback).version
        assert (copy.version, copy.rollback_from_version) == (3, 2)
    server.kill9()
    server.restart()
    with server.client() as client:
        # The version the first call made, as it is now (version 2 was published since).
        assert client.pricing.CreateDraftVersion(keyed(CARD)).version == first.version
        assert client.pricing.CreateDraftVersion(keyed("card2")) == other_card
        expect_error(S.ALREADY_EXISTS, lambda: client.pricing.CreateDraftVersion(keyed(CARD, "another note")))
        assert publish(client, 2, hour - HOUR_MS).version == published
        assert publish(client, 2).version == published
        assert client.pricing.RollbackRateCard(rollback).version == copy
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert (card.latest_version, card.current_version) == (3, 3)


def test_an_effective_from_a_nanosecond_past_an_hour_is_not_on_an_hour(server_factory: ServerFactory) -> None:
    """pricing.proto: effective_from is "on an hour boundary", INVALID_ARGUMENT otherwise. 17:00:00.000000001 is not
    on one; the server dropped the sub-millisecond nanos first and published (or rolled back) from 17:00 anyway,
    changing what was asked for without saying so. Refused now, changing nothing; a whole hour still publishes."""
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - 2 * HOUR_MS)
        v2 = draft(client, 1, [unit("2")])
        for nanos in (1, 999_999):
            past_the_hour = timestamp_pb2.Timestamp()
            past_the_hour.FromNanoseconds(hour * 1_000_000 + nanos)
            request = pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v2, effective_from=past_the_hour)
            message = expect_error(S.INVALID_ARGUMENT, lambda r=request: client.pricing.PublishVersion(r))  # type: ignore[misc]
            assert "effective_from" in message and "hour" in message, message
            rollback = pricing_pb2.RollbackRateCardRequest(
                rate_card_id=CARD, to_version=1, effective_from=past_the_hour
            )
            expect_error(S.INVALID_ARGUMENT, lambda r=rollback: client.pricing.RollbackRateCard(r))  # type: ignore[misc]
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert (card.latest_version, card.current_version) == (2, 1)
        assert publish(client, v2, hour).version.effective_from.ToMilliseconds() == hour


def test_the_versions_table_says_whom_each_version_prices(server_factory: ServerFactory) -> None:
    """README "Cohorts": after publishing the GPT-4 cut to the acme pilot, `tariff ratecard versions` listed version
    2 as PUBLISHED from this hour like any other, so the table read as everyone paying 4 credits; only --json showed
    the cohort. The table says whom each published version prices: everyone (outside cohorts), or its cohort."""
    server = server_factory(demo=True)
    tariff(server, "ratecard", "draft", "ai-credits", "--base", "1", "--set", "gpt4_factor=2", "--note", "pilot")
    tariff(server, "ratecard", "publish", "ai-credits", "2", "--cohort-customer", "acme")
    tariff(server, "ratecard", "draft", "ai-credits", "--base", "2", "--note", "for everyone")
    rows = table_rows(tariff(server, "ratecard", "versions", "ai-credits").stdout)
    assert rows[0] == ["version", "state", "based on", "effective from", "prices", "created by", "change note"]
    by_version = {row[0]: row for row in rows[2:]}
    assert by_version["1"][1:2] + by_version["1"][3:4] == ["PUBLISHED", "everyone"]
    assert by_version["2"][1:2] + by_version["2"][4:5] == ["PUBLISHED", "customers acme"]
    assert "everyone" not in by_version["3"] and "customers acme" not in by_version["3"]  # a draft prices no one


def test_the_publish_table_says_what_was_left_alone_in_closed_periods_and_why(server_factory: ServerFactory) -> None:
    """README: the reply says "how much usage in closed periods was left alone". `tariff ratecard publish` printed the
    closed buckets and amount but not their events nor the reason the reply gives; it prints all of them."""
    server = server_factory()
    with server.client() as client:
        last_month, v2 = closed_month_and_a_draft(client)
    published = tariff(server, "ratecard", "publish", CARD, str(v2), "--effective-from", iso(last_month))
    rows = table_rows(published.stdout)
    # Last month's bucket (2 units at 1) left alone; this month's 3 units re-rated from 3 to 15.
    for row in (
        ["events re-rated", "1"],
        ["buckets re-rated", "1"],
        ["re-rated amount delta", "12"],
        ["closed-period buckets left alone", "1"],
        ["closed-period events left alone", "1"],
        ["closed-period amount left alone", "2"],
        ["left alone because", LEFT_ALONE_REASON],
    ):
        assert row in rows, (row, published.stdout)


def test_simulate_widens_a_window_off_the_hour_to_whole_hours(server_factory: ServerFactory) -> None:
    """Usage is kept in hour buckets, so SimulateVersion cannot cut an hour: a window [h+30 min, h+40 min) takes in
    the whole hour h (both events, at h+10 min and h+50 min, at 1 now and 5 in the draft), as pricing.proto says;
    a window from the next hour on holds none of it."""
    server = server_factory()
    hour = this_hour_ms()
    h = hour - 2 * HOUR_MS
    with server.client() as client:
        catalogue(client, h - HOUR_MS)
        ingest(client, work("w1", h + 10 * 60_000, 1), work("w2", h + 50 * 60_000, 1))
        v2 = draft(client, 1, [unit("5")])

        def totals(start_ms: int, end_ms: int) -> tuple[str, str]:
            request = pricing_pb2.SimulateVersionRequest(
                rate_card_id=CARD, version=v2, period_start=stamp(start_ms), period_end=stamp(end_ms)
            )
            done = client.pricing.SimulateVersion(request).totals
            return done.current_amount, done.simulated_amount

        assert totals(h + 30 * 60_000, h + 40 * 60_000) == ("2", "10")
        assert totals(h, h + 1) == ("2", "10")
        assert totals(h + HOUR_MS, hour) == ("0", "0")


def test_a_draft_naming_one_rate_twice_is_refused_instead_of_keeping_the_last(server_factory: ServerFactory) -> None:
    """Two upsert_rates with the same product and match ("*" entries left out, so {"model": "*"} is the catch-all)
    in one CreateDraftVersion made a draft holding only the last: a rate pasted twice with two prices lost one
    without a word. Refused, INVALID_ARGUMENT naming both, and no draft is made; removing a rate and upserting it
    in one request still replaces it (removals apply first)."""
    server = server_factory()
    with server.client() as client:
        catalogue(client, this_hour_ms())
        twice = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD,
            based_on_version=1,
            upsert_rates=[unit("3", {"model": "*"}), unit("2", {"region": "eu"}), unit("2")],
        )
        message = expect_error(S.INVALID_ARGUMENT, lambda: client.pricing.CreateDraftVersion(twice))
        assert "upsert_rates[2]" in message and "upsert_rates[0]" in message, message
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version == 1
        replaced = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD,
            based_on_version=1,
            upsert_rates=[unit("9")],
            remove_rates=[pricing_pb2.RateKey(product_id="units")],
        )
        assert [r.unit.price for r in client.pricing.CreateDraftVersion(replaced).rates] == ["9"]
