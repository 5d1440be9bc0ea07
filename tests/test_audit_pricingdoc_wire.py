"""An acceptance audit of PricingService against its documentation (pricing.proto's comments, the top of
contracts.proto, README "Changing prices safely" and "Cohorts"), over the wire: the statements the earlier pricing
audits leave unpinned. Every expected value is worked out by hand in the test's docstring.

One server for the module (`--close-grace off`: nothing closes by itself). Products: `calls` (SUM of `n`, priced
on `model` then `region`), `flat` (SUM of `n`), `gauge` (LATEST of `n`). Customers `zc` and `ac` (no contract). Each
test makes the rate cards it needs, named after it, so that no test sees another's versions."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import (
    HOUR_MS,
    audit_count,
    charges,
    open_contract,
    refusal,
    rejected_in,
    serving,
    this_hour_ms,
    unit,
)
from tests.serverproc import ServerProcess
from tests.test_audit_invoices_wire import ms, ts

JAN = ms("2026-01-01T00:00:00")


def _catalogue(client: TariffClient) -> None:
    products = [
        pricing_pb2.Product(
            id="calls",
            event_type="calls",
            aggregation=pricing_pb2.SUM,
            value_key="n",
            pricing_dimensions=["model", "region"],
        ),
        pricing_pb2.Product(id="flat", event_type="flat", aggregation=pricing_pb2.SUM, value_key="n"),
        pricing_pb2.Product(id="gauge", event_type="gauge", aggregation=pricing_pb2.LATEST, value_key="n"),
    ]
    for product in products:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    for customer_id in ("zc", "ac"):
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-pricingdoc") / "data", extra_args=["--close-grace", "off"])
    yield from serving(process, _catalogue)


def _card(client: TariffClient, card: str, *rates: pricing_pb2.Rate, **parameters: str) -> None:
    """Card `card` (USD) with version 1 (the rates and parameters given) published from 2026-01-01."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, name=card, pricing_unit="USD"))
    draft(client, card, 0, list(rates), **parameters)
    publish(client, card, 1, JAN)


def draft(
    client: TariffClient, card: str, base: int, rates: list[pricing_pb2.Rate], **parameters: str
) -> pricing_pb2.RateCardVersion:
    request = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=card, based_on_version=base, upsert_rates=rates, set_parameters=parameters
    )
    made: pricing_pb2.RateCardVersion = client.pricing.CreateDraftVersion(request)
    return made


def publish(
    client: TariffClient, card: str, version: int, at_ms: int, cohort: pricing_pb2.Cohort | None = None
) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=version, effective_from=ts(at_ms))
    if cohort is not None:
        request.cohort.CopyFrom(cohort)
    answer: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
    return answer


def tiered(*tiers: tuple[str, str], mode: pricing_pb2.TierMode = pricing_pb2.GRADUATED) -> pricing_pb2.Rate:
    listed = [pricing_pb2.Tier(up_to=up_to, unit_price=price) for up_to, price in tiers]
    return pricing_pb2.Rate(product_id="calls", tiered=pricing_pb2.TieredPrice(mode=mode, tiers=listed))


def diff(client: TariffClient, card: str, old: int, new: int) -> pricing_pb2.DiffVersionsResponse:
    request = pricing_pb2.DiffVersionsRequest(rate_card_id=card, from_version=old, to_version=new)
    answer: pricing_pb2.DiffVersionsResponse = client.pricing.DiffVersions(request)
    return answer


def fields(change: pricing_pb2.RateChange) -> list[tuple[str, str, str, str, str, bool, bool]]:
    """Each price field's (path, old_formula, new_formula, old_price, new_price, has_old, has_new), in order."""
    return [
        (f.path, f.old_formula, f.new_formula, f.old_price, f.new_price, f.has_old, f.has_new) for f in change.fields
    ]


def test_a_request_id_a_refused_draft_left_unused_makes_the_corrected_draft_and_a_retry_answers_it_as_it_is_now(
    server: ServerProcess,
) -> None:
    """contracts.proto: a refusal changes nothing, and a retry (same key, same request) "answers with what the first
    call made, as it is now". A draft refused for its parameter "1." leaves request_id `fix` unused: the corrected
    request with it makes version 2; once version 2 is published, its retry answers version 2 PUBLISHED (not the
    DRAFT it was), and makes no version 3. The retry sends set_parameters in another order: a map has no order, so it
    is the same request."""
    with server.client() as client:
        _card(client, "rid", unit("calls", "1"))
        bad = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="rid", based_on_version=1, set_parameters={"x": "1."}, request_id="fix"
        )
        code, details = refusal(lambda: client.pricing.CreateDraftVersion(bad))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "set_parameters[x]" in details, details

        first = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="rid", based_on_version=1, set_parameters={"x": "1", "y": "2"}, request_id="fix"
        )
        made = client.pricing.CreateDraftVersion(first)
        assert (made.version, made.state) == (2, pricing_pb2.DRAFT)
        publish(client, "rid", 2, JAN + HOUR_MS)

        again = pricing_pb2.CreateDraftVersionRequest(rate_card_id="rid", based_on_version=1, request_id="fix")
        again.set_parameters["y"] = "2"
        again.set_parameters["x"] = "1"
        retried = client.pricing.CreateDraftVersion(again)
        assert (retried.version, retried.state, dict(retried.parameters)) == (
            2,
            pricing_pb2.PUBLISHED,
            {"x": "1", "y": "2"},
        )
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="rid")).latest_version == 2


def test_a_cohort_publish_retried_with_its_cohort_written_otherwise_is_the_same_publish(server: ServerProcess) -> None:
    """pricing.proto RateCardVersion.cohort: stored with customer_ids sorted and without repeats, and
    customers_created_after to the millisecond; PublishVersionRequest.cohort: the same version, effective_from and
    cohort again is a retry (the same answer), another cohort FAILED_PRECONDITION; a cohort with no criterion is
    everyone (published without a cohort).

    Version 2 published for ids ["zc", "ac", "zc"] created after 100.001234567 s: stored as ["ac", "zc"] and
    100.001 s. Retried with ["ac", "zc"] and 100.001 s: the same answer. Retried without a cohort: everyone is
    another cohort, FAILED_PRECONDITION. Version 1 (published without a cohort) retried with an empty Cohort: the
    same (no criterion is everyone)."""
    with server.client() as client:
        _card(client, "coh", unit("calls", "1"))
        draft(client, "coh", 1, [unit("calls", "2")])
        sent = pricing_pb2.Cohort(
            customer_ids=["zc", "ac", "zc"], customers_created_after=Timestamp(seconds=100, nanos=1_234_567)
        )
        first = publish(client, "coh", 2, JAN + HOUR_MS, sent)
        assert list(first.version.cohort.customer_ids) == ["ac", "zc"]
        assert first.version.cohort.customers_created_after == Timestamp(seconds=100, nanos=1_000_000)

        stored = pricing_pb2.Cohort(
            customer_ids=["ac", "zc"], customers_created_after=Timestamp(seconds=100, nanos=1_000_000)
        )
        assert publish(client, "coh", 2, JAN + HOUR_MS, stored) == first

        before = audit_count(client)
        code, details = refusal(lambda: publish(client, "coh", 2, JAN + HOUR_MS))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "cohort" in details, details
        retried = publish(client, "coh", 1, JAN, pricing_pb2.Cohort())
        assert (retried.version.version, retried.version.HasField("cohort")) == (1, False)
        assert audit_count(client) == before


def test_the_audit_diff_of_a_cohort_publish_holds_the_cohort_as_the_request_wrote_it(server: ServerProcess) -> None:
    """pricing.proto AuditEntry.diff: a PublishVersion's "cohort" is the cohort as the request wrote it, to the
    millisecond (its customer_ids in the request's order with their repeats, a cohort of no criterion as an empty
    one, not null), while RateCardVersion.cohort shows it as stored. Version 2 published for ["zc", "ac", "zc"]
    created after 100.001234567 s: the diff holds ["zc", "ac", "zc"] and 100001 ms, GetVersion ["ac", "zc"];
    version 3 published with an empty Cohort: the diff holds the empty cohort, the version none; version 1,
    published without one: null."""
    with server.client() as client:
        _card(client, "cohaudit", unit("calls", "1"))
        draft(client, "cohaudit", 1, [unit("calls", "2")])
        draft(client, "cohaudit", 1, [unit("calls", "3")])
        sent = pricing_pb2.Cohort(
            customer_ids=["zc", "ac", "zc"], customers_created_after=Timestamp(seconds=100, nanos=1_234_567)
        )
        publish(client, "cohaudit", 2, JAN + HOUR_MS, sent)
        third = publish(client, "cohaudit", 3, JAN + 2 * HOUR_MS, pricing_pb2.Cohort())
        shown = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="cohaudit", version=2))
        assert list(shown.cohort.customer_ids) == ["ac", "zc"] and not third.version.HasField("cohort")

        # By target only: a page read by action looks through at most 8,192 entries (GetAuditLogRequest).
        request = pricing_pb2.GetAuditLogRequest(target="rate_card/cohaudit/")
        found = client.pricing.GetAuditLog(request).entries
        diffs = {e.target: json.loads(e.diff) for e in found if e.action == "PublishVersion"}
        assert diffs["rate_card/cohaudit/version/1"]["cohort"] is None
        assert diffs["rate_card/cohaudit/version/2"]["cohort"] == {
            "customer_ids": ["zc", "ac", "zc"],
            "attributes": {},
            "customers_created_after_ms": 100_001,
        }
        assert diffs["rate_card/cohaudit/version/3"]["cohort"] == {
            "customer_ids": [],
            "attributes": {},
            "customers_created_after_ms": None,
        }


def test_a_diff_across_tier_counts_says_which_side_has_each_field_and_an_unbounded_bound_has_no_price(
    server: ServerProcess,
) -> None:
    """pricing.proto PriceFieldChange: has_old/has_new say whether each side's rate has the field (false where it
    has fewer tiers); a price is empty when the field is unbounded (the last tier's up_to); an empty tier price
    reads "0". RateChange.fields: only the fields that differ, in to_version's order.

    v1: GRADUATED up to 10 at 1, then 2. v2: up to 10 at 2, up to 20 at 3, then 4. Differing: tiers[0].unit_price
    (1 -> 2); tiers[1].up_to (unbounded -> 20: both sides have it, the old one without a price); tiers[1].unit_price
    (2 -> 3); tiers[2]'s up_to, unit_price and flat_price (only v2: has_old false; up_to unbounded, flat "0").
    tiers[0].up_to and both tiers' flat prices are the same and left out. Diffed the other way round, the sides
    swap."""
    with server.client() as client:
        _card(client, "tiers", tiered(("10", "1"), ("", "2")))
        draft(client, "tiers", 1, [tiered(("10", "2"), ("20", "3"), ("", "4"))])
        forward = [
            ("tiered.tiers[0].unit_price", "1", "2", "1", "2", True, True),
            ("tiered.tiers[1].up_to", "", "20", "", "20", True, True),
            ("tiered.tiers[1].unit_price", "2", "3", "2", "3", True, True),
            ("tiered.tiers[2].up_to", "", "", "", "", False, True),
            ("tiered.tiers[2].unit_price", "", "4", "", "4", False, True),
            ("tiered.tiers[2].flat_price", "", "", "", "0", False, True),
        ]
        [change] = diff(client, "tiers", 1, 2).rates
        assert change.kind == pricing_pb2.CHANGED and fields(change) == forward
        [back] = diff(client, "tiers", 2, 1).rates
        swapped = [(p, nf, of, np, op, hn, ho) for p, of, nf, op, np, ho, hn in forward]
        assert back.kind == pricing_pb2.CHANGED and fields(back) == swapped


def test_an_added_tiered_rate_lists_every_field_with_each_empty_ones_default(server: ServerProcess) -> None:
    """pricing.proto RateChange.fields: "every field of an ADDED or REMOVED rate", each price with "the default
    when the field is left empty ("1" for per_units, "0" for a tier's prices)". v1 prices only `flat`; v2 adds a
    GRADUATED `calls` rate (up to 10 at 1, then 2): ADDED, old_rate unset, and its seven fields: each tier's
    up_to, unit_price, flat_price, then tiered.per_units ("1"); the last tier's up_to unbounded, without a price."""
    with server.client() as client:
        _card(client, "added", unit("flat", "1"))
        draft(client, "added", 1, [tiered(("10", "1"), ("", "2"))])
        [change] = diff(client, "added", 1, 2).rates
        assert (change.kind, change.HasField("old_rate"), change.key.product_id) == (pricing_pb2.ADDED, False, "calls")
        assert fields(change) == [
            ("tiered.tiers[0].up_to", "", "10", "", "10", False, True),
            ("tiered.tiers[0].unit_price", "", "1", "", "1", False, True),
            ("tiered.tiers[0].flat_price", "", "", "", "0", False, True),
            ("tiered.tiers[1].up_to", "", "", "", "", False, True),
            ("tiered.tiers[1].unit_price", "", "2", "", "2", False, True),
            ("tiered.tiers[1].flat_price", "", "", "", "0", False, True),
            ("tiered.per_units", "", "", "", "1", False, True),
        ]


def test_a_rate_written_the_same_whose_parameter_is_removed_is_repriced_with_why_it_has_no_price(
    server: ServerProcess,
) -> None:
    """pricing.proto ChangeKind and PriceFieldChange: REPRICED is a rate written the same whose evaluated price
    differs because a parameter changed; new_problem says why a formula has no price; CHANGED is anything of a rate
    written differently, its prices shown even when equal.

    v1: k = 2; `calls` catch-all at "k", model=a at "1", model=b at "2" (per_units empty). v2 removes k, writes
    model=a "1.0" and model=b per_units "1". Diff: k REMOVED (old "2"); the catch-all REPRICED (old price 2, no new
    price: unknown parameter 'k'); model=a CHANGED (unit.price "1" -> "1.0", both priced 1); model=b CHANGED
    (unit.per_units "" -> "1", both 1)."""
    with server.client() as client:
        _card(
            client,
            "repriced",
            unit("calls", "k"),
            unit("calls", "1", model="a"),
            unit("calls", "2", model="b"),
            k="2",
        )
        request = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="repriced",
            based_on_version=1,
            remove_parameters=["k"],
            upsert_rates=[
                unit("calls", "1.0", model="a"),
                pricing_pb2.Rate(
                    product_id="calls", match={"model": "b"}, unit=pricing_pb2.UnitPrice(price="2", per_units="1")
                ),
            ],
        )
        client.pricing.CreateDraftVersion(request)
        answer = diff(client, "repriced", 1, 2)
        assert [(p.name, p.old_value, p.new_value, p.kind) for p in answer.parameters] == [
            ("k", "2", "", pricing_pb2.REMOVED)
        ]
        catch_all, model_a, model_b = answer.rates
        assert catch_all.kind == pricing_pb2.REPRICED and not catch_all.key.match
        [price] = catch_all.fields
        assert (price.path, price.old_price, price.new_price) == ("unit.price", "2", "")
        assert "unknown parameter 'k'" in price.new_problem and not price.old_problem
        assert (model_a.kind, fields(model_a)) == (
            pricing_pb2.CHANGED,
            [("unit.price", "1", "1.0", "1", "1", True, True)],
        )
        assert (model_b.kind, fields(model_b)) == (
            pricing_pb2.CHANGED,
            [("unit.per_units", "", "1", "1", "1", True, True)],
        )


def test_diff_orders_a_products_rates_by_their_sorted_match_pairs_a_prefix_first(server: ServerProcess) -> None:
    """pricing.proto DiffVersionsResponse.rates: by product_id, then by match, "its (dimension, value) pairs sorted
    by dimension and compared pair by pair, a match that begins another coming first". Written in v1 in the order
    {model b, region x}, {model b}, {}, {region a}, {model a} (each at 1; no two equally specific could meet the
    same event but {model b}/{region a} and {model a}/{region a}, which the draft need not resolve to be diffed),
    all repriced to 2 in v2: the diff lists {}, {model a}, {model b}, {model b, region x}, {region a}."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="order", pricing_unit="USD"))
        matches = [{"model": "b", "region": "x"}, {"model": "b"}, {}, {"region": "a"}, {"model": "a"}]
        draft(client, "order", 0, [unit("calls", "1", **m) for m in matches])
        draft(client, "order", 0, [unit("calls", "2", **m) for m in matches])
        listed = [dict(c.key.match) for c in diff(client, "order", 1, 2).rates]
        assert listed == [{}, {"model": "a"}, {"model": "b"}, {"model": "b", "region": "x"}, {"region": "a"}]


@pytest.mark.parametrize(
    ("formula", "price"),
    [
        ("max(1)", "1"),
        ("min(3, 1, 2)", "1"),
        ("max(1, 4, 2)", "4"),
        ("2 / 3", "0.666666666666666667"),
        ("0.1 + 0.2", "0.3"),
    ],
)
def test_min_and_max_take_one_or_more_arguments_and_a_price_is_its_value_rounded_to_18_places(
    server: ServerProcess, formula: str, price: str
) -> None:
    """pricing.proto, price fields: formulas use + - * / parentheses, unary minus, min, max, round; evaluated to 60
    digits and rounded half-even to 18 places: 2/3 prices 0.666666666666666667, 0.1 + 0.2 exactly 0.3. min and max
    are not limited to two arguments. The diff from a version without the rate shows that price."""
    card = "fn-" + "".join(c if c.isalnum() else "_" for c in formula)
    with server.client() as client:
        _card(client, card, unit("flat", "1"))
        made = draft(client, card, 1, [unit("calls", formula)])
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id=card, version=made.version)
        )
        assert report.ok and not report.findings
        [change] = diff(client, card, 1, made.version).rates
        assert [(f.path, f.new_price) for f in change.fields] == [("unit.price", price), ("unit.per_units", "1")]


@pytest.mark.parametrize("formula", ["MIN(1, 2)", "abs(1)", "max()", "round(1, 2, 3)", "2 ** 3"])
def test_a_function_or_operator_the_grammar_does_not_have_is_a_finding_naming_the_field(
    server: ServerProcess, formula: str
) -> None:
    """pricing.proto: only + - * /, parentheses, unary minus, min, max and round (one or two arguments); anything
    else is a ValidateVersion error naming the field (rates[0].unit.price), and PublishVersion refuses it with
    INVALID_ARGUMENT, publishing nothing."""
    card = "nofn-" + "".join(c if c.isalnum() else "_" for c in formula)
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="USD"))
        draft(client, card, 0, [unit("calls", formula)])
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=card, version=1))
        assert not report.ok
        assert [(f.severity, f.path) for f in report.findings] == [(pricing_pb2.ERROR, "rates[0].unit.price")]
        code, details = refusal(lambda: publish(client, card, 1, JAN))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "rates[0].unit.price" in details, details
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=card)).current_version == 0


def test_validation_names_each_malformed_tier_package_and_per_units_field(server: ServerProcess) -> None:
    """pricing.proto Tier: each tier covers quantities up to its bound, only the last is unbounded; TieredPrice
    needs tiers; per_units and package_size price "per this many units" / "packages of this size", so 0 cannot
    be one. Each is a ValidateVersion ERROR naming the field."""
    cases: list[tuple[pricing_pb2.Rate, list[str]]] = [
        (tiered(("10", "1"), ("5", "2"), ("", "3")), ["rates[0].tiered.tiers[1].up_to"]),
        (tiered(("", "1"), ("10", "2")), ["rates[0].tiered.tiers[0].up_to", "rates[0].tiered.tiers"]),
        (
            pricing_pb2.Rate(product_id="calls", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME)),
            ["rates[0].tiered.tiers"],
        ),
        (
            pricing_pb2.Rate(product_id="calls", package=pricing_pb2.PackagePrice(package_size="0", package_price="1")),
            ["rates[0].package.package_size"],
        ),
        (
            pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="1", per_units="0")),
            ["rates[0].unit.per_units"],
        ),
    ]
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="malformed", pricing_unit="USD"))
        for rate, paths in cases:
            made = draft(client, "malformed", 0, [rate])
            request = pricing_pb2.ValidateVersionRequest(rate_card_id="malformed", version=made.version)
            report = client.pricing.ValidateVersion(request)
            assert not report.ok
            assert [(f.severity, f.path) for f in report.findings] == [(pricing_pb2.ERROR, p) for p in paths], report


def test_list_versions_pages_100_when_page_size_is_0_and_the_token_is_the_last_version_number(
    server: ServerProcess,
) -> None:
    """pricing.proto ListVersionsRequest: page_size "100 when 0"; the token is "the version number of the page's
    last version, in decimal"; ListVersionsResponse: by version number, empty token on the last page. 101 drafts:
    a first page of versions 1-100 with token "100", then version 101 with an empty token."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="hundred", pricing_unit="USD"))
        pending = [
            client.pricing.CreateDraftVersion.future(pricing_pb2.CreateDraftVersionRequest(rate_card_id="hundred"))
            for _ in range(101)
        ]
        assert sorted(p.result().version for p in pending) == list(range(1, 102))
        first = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="hundred"))
        assert [v.version for v in first.versions] == list(range(1, 101)) and first.next_page_token == "100"
        request = pricing_pb2.ListVersionsRequest(rate_card_id="hundred", page_token=first.next_page_token)
        last = client.pricing.ListVersions(request)
        assert [v.version for v in last.versions] == [101] and last.next_page_token == ""


def test_a_cards_current_version_is_the_one_in_force_now_outside_cohorts_and_latest_counts_drafts(
    server: ServerProcess,
) -> None:
    """pricing.proto RateCard: latest_version is the highest version so far, draft or published; current_version
    the version in force now for customers outside any cohort. v1 from 2026-01-01; v2 for cohort [zc] from the
    current hour; v3 for everyone from next year's hour; v4 a draft: latest 4, current 1 (v2 prices only its
    cohort, v3 is not in force yet); GetVersion at the current hour answers v1 too (outside cohorts)."""
    now = this_hour_ms()
    with server.client() as client:
        _card(client, "current", unit("calls", "1"))
        draft(client, "current", 1, [unit("calls", "2")])
        publish(client, "current", 2, now, pricing_pb2.Cohort(customer_ids=["zc"]))
        draft(client, "current", 1, [unit("calls", "3")])
        publish(client, "current", 3, now + 366 * 24 * HOUR_MS)
        draft(client, "current", 1, [unit("calls", "4")])
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="current"))
        assert (card.latest_version, card.current_version) == (4, 1)
        at = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="current", at=ts(now)))
        assert at.version == 1


def test_a_rollback_to_prices_a_copy_holds_from_an_earlier_hour_is_refused_naming_it_and_one_before_goes_through(
    server: ServerProcess,
) -> None:
    """pricing.proto RollbackRateCardRequest: refused (FAILED_PRECONDITION, naming the version in force) when the
    version in force at effective_from is to_version or a copy of the same prices by rollbacks; the retry rule
    (RollbackRateCard's key) holds only "from that same hour". rollback_from_version is the version in force at
    the copy's effective_from.

    v1 from J (2026-01-01), v2 from J+3h. Rollback to 1 from J+5h: copy v3 (from 2). Rollback to 1 from J+6h: v3,
    a copy of v1, is in force then: FAILED_PRECONDITION naming version 3, nothing made. Rollback to 1 from J+4h:
    v2 is in force then, so copy v4, rollback_from 2, effective J+4h."""
    j = JAN
    with server.client() as client:
        _card(client, "rb", unit("calls", "1"))
        draft(client, "rb", 1, [unit("calls", "2")])
        publish(client, "rb", 2, j + 3 * HOUR_MS)

        def rollback(at_ms: int) -> pricing_pb2.PublishVersionResponse:
            request = pricing_pb2.RollbackRateCardRequest(rate_card_id="rb", to_version=1, effective_from=ts(at_ms))
            answer: pricing_pb2.PublishVersionResponse = client.pricing.RollbackRateCard(request)
            return answer

        copy = rollback(j + 5 * HOUR_MS).version
        assert (copy.version, copy.rollback_to_version, copy.rollback_from_version) == (3, 1, 2)
        before = audit_count(client)
        code, details = refusal(lambda: rollback(j + 6 * HOUR_MS))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "version 3" in details, details
        assert audit_count(client) == before
        earlier = rollback(j + 4 * HOUR_MS).version
        assert (earlier.version, earlier.rollback_to_version, earlier.rollback_from_version) == (4, 1, 2)
        assert earlier.effective_from == ts(j + 4 * HOUR_MS)
        assert "effective from 2026-01-01T04:00:00Z" in earlier.change_note


def test_usage_is_charged_as_the_price_models_documentation_says(server: ServerProcess) -> None:
    """pricing.proto FlatPrice: charged once per period per line whose quantity is above zero ("an event that adds
    0 to it charges nothing"); Aggregation LATEST: an event dated before the latest one rated does not move it
    (charged 0); Rate.match: an event that leaves a pricing dimension out matches as one sending it empty, and a
    match of "" is no wildcard.

    Card `models` from the period's start s (6 hours ago): flat at 7 a period; gauge at 1 a unit; calls at 2, at 1
    for model "". Events: flat 0 (0), then flat 1 (7), flat 3 (0, the fee is charged once); gauge 5 at s+2h (5), then
    gauge 9 dated s+1h (before the latest: 0); calls 1 without `model` (1, the "" rate), 1 with model "" (1), 1
    with model x (2). Charges 7 + 5 + 4 = 16."""
    s = this_hour_ms() - 6 * HOUR_MS
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="models", pricing_unit="USD"))
        rates = [
            pricing_pb2.Rate(product_id="flat", flat=pricing_pb2.FlatPrice(price="7")),
            unit("gauge", "1"),
            unit("calls", "2"),
            unit("calls", "1", model=""),
        ]
        draft(client, "models", 0, rates)
        publish(client, "models", 1, s)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="user", name="user"))
        open_contract(client, "user", "k-user", s, rate_card_id="models")

        def event(tid: str, kind: str, at_ms: int, n: int, **dims: str) -> usage_pb2.UsageEvent:
            return usage_pb2.UsageEvent(
                transaction_id=tid,
                customer_id="user",
                event_type=kind,
                timestamp_ms=at_ms,
                values={"n": n},
                dimensions=dims,
            )

        assert rejected_in(client, event("f0", "flat", s + 1, 0)) == []
        assert charges(client, "user") == "0"
        assert rejected_in(client, event("f1", "flat", s + 2, 1), event("f2", "flat", s + 3, 3)) == []
        assert charges(client, "user") == "7"
        assert rejected_in(client, event("g1", "gauge", s + 2 * HOUR_MS, 5)) == []
        assert rejected_in(client, event("g0", "gauge", s + HOUR_MS, 9)) == []
        assert charges(client, "user") == "12"
        sent = [
            event("c0", "calls", s + 4, 1),
            event("c1", "calls", s + 5, 1, model=""),
            event("c2", "calls", s + 6, 1, model="x"),
        ]
        assert rejected_in(client, *sent) == []
        assert charges(client, "user") == "16"


def test_simulate_counts_a_customer_named_twice_once(server: ServerProcess) -> None:
    """SimulateVersionRequest.customer_ids names whom to simulate: naming one twice must not count its usage twice
    (exact money). Card `twice` at 1 a unit from s; customer `tw` uses 5 calls at s; v2 at 3 a unit simulated over
    [s, now + 1h) for ["tw", "tw"]: one amount, 5 now, 15 simulated, delta 10, and the totals the same."""
    s = this_hour_ms() - 6 * HOUR_MS
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="twice", pricing_unit="USD"))
        draft(client, "twice", 0, [unit("calls", "1")])
        publish(client, "twice", 1, s)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="tw", name="tw"))
        open_contract(client, "tw", "k-tw", s, rate_card_id="twice")
        call = usage_pb2.UsageEvent(
            transaction_id="tw-1", customer_id="tw", event_type="calls", timestamp_ms=s + 1, values={"n": 5}
        )
        assert rejected_in(client, call) == []
        draft(client, "twice", 1, [unit("calls", "3")])
        request = pricing_pb2.SimulateVersionRequest(
            rate_card_id="twice",
            version=2,
            period_start=ts(s),
            period_end=ts(this_hour_ms() + HOUR_MS),
            customer_ids=["tw", "tw"],
        )
        answer = client.pricing.SimulateVersion(request)
        amounts = [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts]
        assert amounts == [("tw", "calls", "5", "15", "10")]
        totals = answer.totals
        assert (totals.current_amount, totals.simulated_amount, totals.delta) == ("5", "15", "10")


def test_the_audit_log_past_its_end_and_a_filtered_last_page_say_nothing_is_left(server: ServerProcess) -> None:
    """pricing.proto GetAuditLogResponse.next_after_seq: "0 when no entry is left". after_seq past the newest
    entry: no entries, 0. A target naming one version (two entries: its draft and its publish) read with page_size
    2: both, then 0, although later entries of other targets exist."""
    with server.client() as client:
        _card(client, "tail", unit("calls", "1"))
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="tail2", pricing_unit="USD"))
        past = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=10**12))
        assert (list(past.entries), past.next_after_seq) == ([], 0)
        request = pricing_pb2.GetAuditLogRequest(target="rate_card/tail/version/1", page_size=2)
        page = client.pricing.GetAuditLog(request)
        assert [e.action for e in page.entries] == ["CreateDraftVersion", "PublishVersion"]
        assert page.next_after_seq == 0


def test_ambiguous_rates_list_the_first_100_pairs_of_a_product_then_one_finding_saying_there_are_more(
    server: ServerProcess,
) -> None:
    """README "What the server does today", Pricing: ambiguity is a validation error, "listing at most 100 ambiguous
    pairs of rates of a product, then one error saying there are more"; PublishVersion refuses with the first
    findings, its status kept within 512 bytes and saying how many there are in all (contracts.proto).

    `calls` rated at {model i} for i in 0-10 and {region j} for j in 0-10: each of the 11 x 11 = 121 pairs could
    meet one event ({model i, region j}); `flat` has no dimension to be ambiguous on. ValidateVersion: 100 pair
    findings, then the one saying there are more: 101 ERRORs. The publish: INVALID_ARGUMENT, a message of at most
    512 bytes ending "(101 violations in all; ValidateVersion lists them all)"; nothing published."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="ambiguous", pricing_unit="USD"))
        rates = [unit("calls", "1", model=str(i)) for i in range(11)] + [
            unit("calls", "1", region=str(j)) for j in range(11)
        ]
        draft(client, "ambiguous", 0, rates)
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="ambiguous", version=1))
        assert not report.ok and len(report.findings) == 101
        assert {f.severity for f in report.findings} == {pricing_pb2.ERROR}
        assert sum("would match both" in f.message for f in report.findings) == 100
        assert "the first 100 such pairs are listed" in report.findings[-1].message, report.findings[-1]
        code, details = refusal(lambda: publish(client, "ambiguous", 1, JAN))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and len(details.encode()) <= 512, details
        assert details.endswith("(101 violations in all; ValidateVersion lists them all)"), details
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="ambiguous")).current_version == 0


def test_an_x_actor_sent_twice_is_invalid_argument_and_changes_nothing(server: ServerProcess) -> None:
    """pricing.proto AuditEntry.actor: an x-actor value is "sent once" (INVALID_ARGUMENT otherwise), even twice the
    same: the audit log names one actor. CreateRateCard sent with x-actor ann and bob, then with ann twice: both
    INVALID_ARGUMENT naming x-actor, no card made, no entry; with ann once: made, actor ann."""
    request = pricing_pb2.CreateRateCardRequest(id="actors", pricing_unit="USD")
    with server.client() as client:
        before = audit_count(client)
        for sent in ([("x-actor", "ann"), ("x-actor", "bob")], [("x-actor", "ann"), ("x-actor", "ann")]):
            code, details = refusal(lambda: client.pricing.CreateRateCard(request, metadata=sent))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("x-actor"), details
        assert audit_count(client) == before
        code, _ = refusal(lambda: client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="actors")))
        assert code == grpc.StatusCode.NOT_FOUND
        client.pricing.CreateRateCard(request, metadata=[("x-actor", "ann")])
        [entry] = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target="rate_card/actors")).entries
        assert (entry.actor, entry.action) == ("ann", "CreateRateCard")


def test_removals_apply_before_upserts_and_sets_so_what_is_both_removed_and_written_anew_is_replaced(
    server: ServerProcess,
) -> None:
    """pricing.proto CreateDraftVersionRequest: "remove_rates apply first, so a rate both removed and upserted is
    replaced" (a "*" entry is a key left out: {model "*"} is the catch-all); remove_parameters apply before
    set_parameters alike. v1: k = 1, b = 2; `calls` at "k". v2 based on it removes the catch-all (written {model
    "*"}) and upserts it at "k * 3", removes k and sets it to 5: v2 holds k = 5, b = 2 and the one catch-all rate
    at "k * 3", which validates and diffs as 15 (was 1)."""
    with server.client() as client:
        _card(client, "removals", unit("calls", "k"), k="1", b="2")
        request = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="removals",
            based_on_version=1,
            remove_rates=[pricing_pb2.RateKey(product_id="calls", match={"model": "*"})],
            upsert_rates=[unit("calls", "k * 3")],
            remove_parameters=["k"],
            set_parameters={"k": "5"},
        )
        made = client.pricing.CreateDraftVersion(request)
        assert dict(made.parameters) == {"k": "5", "b": "2"}
        assert [(r.product_id, dict(r.match), r.unit.price) for r in made.rates] == [("calls", {}, "k * 3")]
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="removals", version=2))
        assert report.ok and not report.findings
        answer = diff(client, "removals", 1, 2)
        assert [(p.name, p.old_value, p.new_value, p.kind) for p in answer.parameters] == [
            ("k", "1", "5", pricing_pb2.CHANGED)
        ]
        [change] = answer.rates
        assert change.kind == pricing_pb2.CHANGED
        assert fields(change) == [("unit.price", "k", "k * 3", "1", "15", True, True)]


def test_a_versions_created_by_is_whoever_made_it_not_whoever_published_it(server: ServerProcess) -> None:
    """pricing.proto RateCardVersion.created_by: the actor of the CreateDraftVersion that made the version, or of
    the RollbackRateCard that made a rollback's copy; publishing does not change it (the PublishVersion audit entry
    names who published). ann drafts v1 and v2, bob publishes both, cat rolls back to v1 (copy v3): created_by ann,
    ann, cat; the publishes' entries name bob."""
    with server.client(actor="ann") as ann, server.client(actor="bob") as bob, server.client(actor="cat") as cat:
        ann.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="makers", pricing_unit="USD"))
        draft(ann, "makers", 0, [unit("calls", "1")])
        publish(bob, "makers", 1, JAN)
        draft(ann, "makers", 1, [unit("calls", "2")])
        publish(bob, "makers", 2, JAN + HOUR_MS)
        request = pricing_pb2.RollbackRateCardRequest(
            rate_card_id="makers", to_version=1, effective_from=ts(JAN + 2 * HOUR_MS)
        )
        cat.pricing.RollbackRateCard(request)
        listed = ann.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="makers")).versions
        assert [(v.version, v.created_by) for v in listed] == [(1, "ann"), (2, "ann"), (3, "cat")]
        # By target only: a page read by action looks through at most 8,192 entries (GetAuditLogRequest).
        found = ann.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target="rate_card/makers/")).entries
        assert [e.actor for e in found if e.action == "PublishVersion"] == ["bob", "bob"]


def test_a_warning_leaves_a_version_ok_and_publishable_and_the_publish_answers_the_report(
    server: ServerProcess,
) -> None:
    """pricing.proto ValidationReport.ok: no finding is an ERROR, WARNINGs may be listed, and PublishVersion
    publishes the version (its answer's validation is the report). A draft without rates: ok, one WARNING on
    "rates"; published from 2026-01-01, version 1 in force, its answer's validation that same report."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="warned", pricing_unit="USD"))
        draft(client, "warned", 0, [])
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="warned", version=1))
        assert report.ok and [(f.severity, f.path) for f in report.findings] == [(pricing_pb2.WARNING, "rates")]
        answer = publish(client, "warned", 1, JAN)
        assert answer.validation == report and answer.version.state == pricing_pb2.PUBLISHED
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="warned")).current_version == 1


def test_a_publish_is_validated_before_the_usage_it_would_re_rate_is_looked_at(server: ServerProcess) -> None:
    """pricing.proto PublishVersion: the refusals come in order, the version's state (NOT_FOUND,
    FAILED_PRECONDITION: published from another hour), then the validation's INVALID_ARGUMENT, then the
    FAILED_PRECONDITION of usage it cannot re-rate (PublishVersionRequest.effective_from): a version's own errors
    are named first, whatever usage it would meet. SimulateVersion alike.

    Card `vfirst` from s (6 hours ago): gauge (LATEST) and calls at 1; customer `vf` has a gauge reading at s+1h.
    Draft v2 prices calls at -1: published from s (over the LATEST usage), INVALID_ARGUMENT naming
    rates[1].unit.price; simulated over [s, now), the same. Draft v3 (valid, calls at 2) from s: FAILED_PRECONDITION
    naming the customer and the product gauge. Nothing published: current_version 1."""
    s = this_hour_ms() - 6 * HOUR_MS
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="vfirst", pricing_unit="USD"))
        draft(client, "vfirst", 0, [unit("gauge", "1"), unit("calls", "1")])
        publish(client, "vfirst", 1, s)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="vf", name="vf"))
        open_contract(client, "vf", "k-vf", s, rate_card_id="vfirst")
        reading = usage_pb2.UsageEvent(
            transaction_id="vf-1", customer_id="vf", event_type="gauge", timestamp_ms=s + HOUR_MS, values={"n": 5}
        )
        assert rejected_in(client, reading) == []
        draft(client, "vfirst", 1, [unit("calls", "-1")])
        code, details = refusal(lambda: publish(client, "vfirst", 2, s))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "rates[1].unit.price" in details, details
        simulate = pricing_pb2.SimulateVersionRequest(
            rate_card_id="vfirst", version=2, period_start=ts(s), period_end=ts(this_hour_ms())
        )
        code, details = refusal(lambda: client.pricing.SimulateVersion(simulate))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "rates[1].unit.price" in details, details
        draft(client, "vfirst", 1, [unit("calls", "2")])
        code, details = refusal(lambda: publish(client, "vfirst", 3, s))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and '"vf"' in details and '"gauge"' in details, details
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="vfirst")).current_version == 1


def test_a_filtered_audit_page_looks_through_at_most_8192_entries_and_says_where_to_go_on(
    server: ServerProcess,
) -> None:
    """pricing.proto GetAuditLogRequest: with an actor (action, time) filter "a page looks through at most 8,192
    entries past after_seq (16 sealed chunks of 512 ...): such a page may hold fewer than page_size entries, even
    none, while next_after_seq says where to go on"; without them (after_seq and target only) a page is whole.

    From the log's newest seq s0: 8,800 customers created anonymously, then one by actor `needle`. Read by actor
    `needle` after s0: the first page is empty, its next_after_seq past s0 and before the needle, having looked
    through at most 8,192 entries (and more than 8,192 - 512: at most the first chunk is partly before s0); the
    page after it holds the needle and ends with 0. The same read by target (customer/needle) finds it at once.
    Last in the module: the 8,800 entries it adds would pass audit_count's one page of 1,000."""
    with server.client() as client:
        s0 = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries[-1].seq
        for group in range(0, 8800, 400):
            pending = [
                client.contracts.CreateCustomer.future(contracts_pb2.CreateCustomerRequest(id=f"hay-{n}"))
                for n in range(group, group + 400)
            ]
            assert all(p.result().id for p in pending)
    with server.client(actor="needle") as named:
        needle = named.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="needle"))
    with server.client() as client:
        by_actor = pricing_pb2.GetAuditLogRequest(after_seq=s0, actor="needle")
        first = client.pricing.GetAuditLog(by_actor)
        assert list(first.entries) == [] and first.next_after_seq > s0
        looked = 0
        after = s0
        while after < first.next_after_seq:
            page = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=after, page_size=1000))
            seqs = [e.seq for e in page.entries if e.seq <= first.next_after_seq]
            looked, after = looked + len(seqs), page.entries[-1].seq
        assert 8192 - 512 < looked <= 8192, looked
        by_actor.after_seq = first.next_after_seq
        second = client.pricing.GetAuditLog(by_actor)
        assert [(e.actor, e.target) for e in second.entries] == [("needle", f"customer/{needle.id}")]
        assert second.next_after_seq == 0
        by_target = pricing_pb2.GetAuditLogRequest(after_seq=s0, target="customer/needle")
        whole = client.pricing.GetAuditLog(by_target)
        assert [e.actor for e in whole.entries] == ["needle"] and whole.next_after_seq == 0
