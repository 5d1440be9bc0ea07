"""Cohort rollouts against a real server process (README, "Changing prices safely", "Cohorts"): a version published
to a pilot cohort prices the pilot's usage while everyone else keeps the old price, with exact amounts; a bad
cohort is refused naming the field and changes nothing; a retry is answered as before; a retroactive cohort
publish re-rates the cohort's usage only; the CLI publishes to a cohort and shows it."""

from __future__ import annotations

from datetime import UTC, datetime

from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_cli import table_rows, tariff
from tests.test_server_admin import (
    CARD,
    CUSTOMER,
    HOUR_MS,
    MINUTE_MS,
    S,
    assert_amount,
    build_catalogue,
    expect_error,
    ingest_one,
    llm,
    ts,
)
from tests.test_server_rerate import markup_draft

OTHER = "initech"  # build_catalogue's second customer, given a contract here


def other_llm(txn: str, at_ms: int) -> usage_pb2.UsageEvent:
    """An event like llm()'s gpt-4 us one of 10k input and 10k output tokens, for the other customer."""
    event = llm(txn, at_ms, "gpt-4", "us", 10_000, 10_000)
    event.customer_id = OTHER
    return event


def test_a_pilot_cohort_gets_the_new_price_and_everyone_else_the_old(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)  # v1 from h0: an event of 10k in + 10k out gpt-4 us tokens costs 1.08
        h0, h1 = cat.h0, cat.h0 + HOUR_MS
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="initech-c1",
                customer_id=OTHER,
                rate_card_id=CARD,
                starting_at=ts(h0),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="1.5",
                currency="USD",
            )
        )
        ingest_one(client, llm("g0", h0 + 10 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        ingest_one(client, other_llm("i0", h0 + 10 * MINUTE_MS))

        # markup 1.5: 1.35 an event. An unknown customer in the cohort is refused, naming it; nothing changes.
        v2 = markup_draft(client, "1.5")
        pilot = pricing_pb2.Cohort(customer_ids=[CUSTOMER])
        bad = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD, version=v2, effective_from=ts(h1), cohort=pricing_pb2.Cohort(customer_ids=["nobody"])
        )
        error = expect_error(S.INVALID_ARGUMENT, lambda: client.pricing.PublishVersion(bad))
        assert "no such customer: 'nobody'" in error.details, error.details
        version = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2))
        assert version.state == pricing_pb2.DRAFT and not version.HasField("cohort")

        request = pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v2, effective_from=ts(h1), cohort=pilot)
        published = client.pricing.PublishVersion(request)
        assert list(published.version.cohort.customer_ids) == [CUSTOMER]
        assert published.events_rerated == 0
        again = client.pricing.PublishVersion(request)  # a retry: the same answer, nothing changes
        assert again.version == published.version

        # After h1 the pilot pays the new rate, the other customer the old one.
        ingest_one(client, llm("g1", h1 + 10 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        ingest_one(client, other_llm("i1", h1 + 10 * MINUTE_MS))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "2.43")  # 1.08 + 1.35
        assert_amount(client.get_balance(OTHER).period_charges, "2.16")  # 1.08 + 1.08

        # GetVersion(at) answers outside cohorts: still version 1; ListVersions shows the cohort.
        at = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=ts(h1 + MINUTE_MS)))
        assert at.version == 1
        listed = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
        assert [(v.version, list(v.cohort.customer_ids)) for v in listed] == [(1, []), (v2, [CUSTOMER])]

        # Finance: the smb segment (the pilot) should have had markup 0.8 (0.72 an event) from h0. Only the pilot's
        # hour-h0 bucket of each product is re-rated (hour h1 stays with v2, effective later); the other
        # customer's usage is not touched.
        v3 = markup_draft(client, "0.8")
        corrected = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD,
                version=v3,
                effective_from=ts(h0),
                cohort=pricing_pb2.Cohort(attributes={"segment": "smb"}),
            )
        )
        assert (corrected.customers_rerated, corrected.buckets_rerated, corrected.events_rerated) == (1, 2, 1)
        assert_amount(corrected.rerated_amount_delta, "-0.36")
        assert_amount(client.get_balance(CUSTOMER).period_charges, "2.07")  # 0.72 + 1.35
        assert_amount(client.get_balance(OTHER).period_charges, "2.16")

    # The state survives a restart (the journal replays the cohort publishes).
    server.restart()
    with server.client() as client:
        assert_amount(client.get_balance(CUSTOMER).period_charges, "2.07")
        assert_amount(client.get_balance(OTHER).period_charges, "2.16")
        ingest_one(client, llm("g2", h1 + 20 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "3.42")  # + 1.35 (v2)


def test_the_cli_publishes_to_a_cohort_and_shows_it(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        v2 = markup_draft(client, "1.5")
    after_ms = cat.h0 - HOUR_MS
    published = tariff(server, "ratecard", "publish", CARD, str(v2), "--effective-from", iso(cat.h0 + HOUR_MS),
                       "--cohort-customer", CUSTOMER, "--cohort-customer", OTHER, "--cohort-attribute", "segment=smb",
                       "--cohort-created-after", iso(after_ms))  # fmt: skip
    shown = datetime.fromtimestamp(after_ms // 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    assert ["cohort", f"customers {CUSTOMER}, {OTHER}; attributes segment=smb; created after {shown}"] in table_rows(
        published.stdout
    )
    with server.client() as client:
        cohort = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2)).cohort
    assert (list(cohort.customer_ids), dict(cohort.attributes)) == ([CUSTOMER, OTHER], {"segment": "smb"})
    assert cohort.customers_created_after.seconds * 1000 == after_ms
    # A malformed attribute is a usage error (exit 2), sent nowhere; an unknown customer the server's refusal.
    malformed = tariff(server, "ratecard", "publish", CARD, "3", "--cohort-attribute", "segment", check=False)
    assert malformed.returncode == 2, malformed.stderr
    v3 = tariff(server, "ratecard", "draft", CARD, "--base", "1", "--set", "markup=2")
    assert ["version", "3"] in table_rows(v3.stdout)
    unknown = tariff(server, "ratecard", "publish", CARD, "3", "--cohort-customer", "nobody", check=False)
    assert "no such customer: 'nobody'" in unknown.stderr, unknown.stderr


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms // 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def test_the_readme_pilot_story_prices_the_pilot_at_the_cut_and_others_at_the_old_price(
    server_factory: ServerFactory,
) -> None:
    """The README's "Cohorts" commands on a demo server, with what they print: acme (the pilot) is quoted 4 credits
    for a complex GPT-4 summary, a customer outside the cohort 5; outside cohorts version 1 stays in force."""
    server = server_factory(demo=True)
    summary = ["ai_action", "action=summary", "model=gpt-4", "complexity=complex"]
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="outsider", name="Outsider"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="outsider-c", customer_id="outsider", rate_card_id="ai-credits", overage_policy=contracts_pb2.ALLOW,
                overage_price="1", currency="USD",
            )
        )  # fmt: skip
    tariff(server, "ratecard", "draft", "ai-credits", "--base", "1", "--set", "gpt4_factor=2")
    published = table_rows(tariff(server, "ratecard", "publish", "ai-credits", "2", "--cohort-customer", "acme").stdout)
    assert ["cohort", "customers acme"] in published
    assert ["estimated cost (credits)", "4"] in table_rows(tariff(server, "authorize", "acme", *summary).stdout)
    assert ["estimated cost (credits)", "5"] in table_rows(tariff(server, "authorize", "outsider", *summary).stdout)
    now_ms = datetime.now(UTC).timestamp() * 1000
    shown = table_rows(tariff(server, "ratecard", "show", "ai-credits", "--at", iso(int(now_ms))).stdout)
    assert ["version", "1"] in shown
