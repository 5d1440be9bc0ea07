"""docs/architecture.md §3 "The data model" and its "Credits: holds, top-ups, breakage", statement by statement, over
the wire: what a client can observe of products and their aggregations, rate cards and their versions, contracts,
grants, holds and top-ups (defaults, amounts, ordering, refusals). Statements other wire audits already pin (burn
order, rollover shares, audit log filters, rollbacks, re-rating, revenue periods) are left to them.

The catalogue: products `p` (SUM of `n`, event_type `p`), `d` (SUM of `n`, event_type `d`, pricing dimensions
`region` and `tier`), `lat` (LATEST of `n`), `mx` (MAX of `n`) and `uq` (UNIQUE_COUNT of the dimension `user`), the
last three all fed by event_type `g`, and `fl` (COUNT of event_type `f` with the filter region = ""). The credit rate
card `card`, version 1 published from 2024-01-01, prices each at 1 a unit but `d`: 1 for region `us`, 10 for region
`us` and tier `gold`. Every customer is a test's own, on `card` from 2024-01-01 (calendar-month periods), ALLOW at 1
USD unless said, so no test depends on another's usage."""

from __future__ import annotations

import datetime
import re
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import msgspec
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.control import fingerprint
from engine.products import Aggregation
from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, preview, refusal, rejected_in, serving, unit
from tests.engine_fixtures import ACTOR, EPOCH_MS, World
from tests.engine_fixtures import rate as engine_rate
from tests.engine_fixtures import unit as engine_unit
from tests.kernel_fixtures import usage_event
from tests.serverproc import ServerProcess

JAN_2024_MS = 1_704_067_200_000
MAR_2024_MS = 1_709_251_200_000
DAY_MS = 86_400_000

PRODUCTS = [
    pricing_pb2.Product(id="p", event_type="p", aggregation=pricing_pb2.SUM, value_key="n"),
    pricing_pb2.Product(
        id="d", event_type="d", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["region", "tier"]
    ),
    pricing_pb2.Product(id="lat", event_type="g", aggregation=pricing_pb2.LATEST, value_key="n"),
    pricing_pb2.Product(id="mx", event_type="g", aggregation=pricing_pb2.MAX, value_key="n"),
    pricing_pb2.Product(id="uq", event_type="g", aggregation=pricing_pb2.UNIQUE_COUNT, value_key="user"),
    pricing_pb2.Product(id="fl", event_type="f", aggregation=pricing_pb2.COUNT, filters={"region": ""}),
]


def publish(client: TariffClient, card: str, rates: list[pricing_pb2.Rate], unit_name: str = "credits") -> None:
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit=unit_name))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates))
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=stamp(JAN_2024_MS))
    client.pricing.PublishVersion(request)


def catalogue(client: TariffClient) -> None:
    for product in PRODUCTS:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    rates = [unit(product_id, "1") for product_id in ("p", "lat", "mx", "uq", "fl")]
    rates += [unit("d", "1", region="us"), unit("d", "10", region="us", tier="gold")]
    publish(client, "card", rates)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("archmodel") / "data"
    # The clock driver looks once an hour: what falls due during the module stays unrecorded until a change goes
    # through the writer, so reads in that window are made deterministically (§3 "Reads in the window").
    args = ["--clock-look-every-ms", "3600000"]
    yield from serving(ServerProcess(data_dir, extra_args=args), catalogue)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TariffClient]:
    with server.client() as made:
        yield made


def customer(client: TariffClient, customer_id: str, card: str = "card") -> None:
    open_contract(client, customer_id, f"{customer_id}-k", JAN_2024_MS, rate_card_id=card)


def event(
    tx: str,
    customer_id: str,
    event_type: str = "p",
    *,
    at_ms: int = 0,
    values: dict[str, float] | None = None,
    dimensions: dict[str, str] | None = None,
    reservation_id: str = "",
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=tx,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms or now_ms(),
        values=values or {},
        dimensions=dimensions or {},
        reservation_id=reservation_id,
    )


def lines(client: TariffClient, customer_id: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], tuple[str, str]]:
    """The current period's draft lines: (product, dimensions) -> (quantity, amount)."""
    invoice = preview(client, customer_id, now_ms())
    return {
        (line.product_id, tuple(sorted(line.dimensions.items()))): (line.quantity, line.amount)
        for line in invoice.lines
    }


def grant(
    client: TariffClient,
    customer_id: str,
    grant_id: str,
    amount: str,
    paid: str = "0",
    kind: contracts_pb2.GrantKind = contracts_pb2.PREPAID,
    contract_id: str = "",
    **fields: Any,
) -> contracts_pb2.Grant:
    """GrantCredits of a grant with these fields, and any others of contracts_pb2.Grant (`fields`): the answer."""
    made = contracts_pb2.Grant(
        id=grant_id,
        customer_id=customer_id,
        contract_id=contract_id,
        kind=kind,
        amount=amount,
        paid_amount=paid,
        **fields,
    )
    answer: contracts_pb2.Grant = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
    return answer


def grants(client: TariffClient, customer_id: str) -> dict[str, tuple[str, str, str, str, str]]:
    """GetBalance's grants: id -> (amount, drawn, remaining, held, expired)."""
    return {
        g.grant_id: (g.amount, g.drawn, g.remaining, g.held, g.expired) for g in client.get_balance(customer_id).grants
    }


def totals(client: TariffClient, customer_id: str) -> tuple[str, str, str]:
    """GetBalance's (credits_remaining, credits_held, credits_available)."""
    balance = client.get_balance(customer_id)
    return balance.credits_remaining, balance.credits_held, balance.credits_available


def hold(client: TariffClient, customer_id: str, reservation_id: str, n: float) -> balance_pb2.AuthorizeResponse:
    request = balance_pb2.AuthorizeRequest(
        request_id=f"{reservation_id}-ask",
        customer_id=customer_id,
        event_type="p",
        values={"n": n},
        reserve=True,
        reservation_id=reservation_id,
    )
    answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(request)
    return answer


def period_start_ms() -> int:
    """The start of the current calendar month (UTC): the current period of a contract anchored on a 1st."""
    today = datetime.datetime.now(datetime.UTC)
    return int(datetime.datetime(today.year, today.month, 1, tzinfo=datetime.UTC).timestamp() * 1000)


# §3 Products: aggregations, filters, an event type feeding nothing -------------------------------------------------


def test_latest_max_and_unique_count_read_as_the_aggregation_table_says(client: TariffClient) -> None:
    """One event feeds every product of its type (lat, mx, uq). At T: 5 (user x) then 3 (user y), ingested in that
    order; then, late, 9 (user x) at T - 1 s. LATEST: 3 (of one timestamp the one ingested last; the late 9 does not
    move it); MAX: 9; UNIQUE_COUNT of dimensions[user]: x and y, 2. Each at 1 a unit."""
    customer(client, "agg")
    at = now_ms() - 60_000
    first = event("agg-1", "agg", "g", at_ms=at, values={"n": 5}, dimensions={"user": "x"})
    second = event("agg-2", "agg", "g", at_ms=at, values={"n": 3}, dimensions={"user": "y"})
    assert rejected_in(client, first, second) == []
    late = event("agg-3", "agg", "g", at_ms=at - 1000, values={"n": 9}, dimensions={"user": "x"})
    assert rejected_in(client, late) == []
    assert lines(client, "agg") == {
        ("lat", ()): ("3", "3"),
        ("mx", ()): ("9", "9"),
        ("uq", ()): ("2", "2"),
    }


def test_a_filter_on_an_empty_value_is_met_by_an_event_sending_it_empty_or_leaving_it_out(client: TariffClient) -> None:
    """A filter is equality on the event's dimension, one left out read as empty, as a pricing dimension left out is
    (the event shows on the same invoice line as one sending it empty, and a rate for "" prices both). `fl` filters
    region = "": an event carrying region "" and one leaving region out both feed it (COUNT 2 at 1 = 2); one with
    region "eu" does not (fed nothing: accepted, charging nothing)."""
    customer(client, "filt")
    carried = event("filt-1", "filt", "f", dimensions={"region": ""})
    left_out = event("filt-2", "filt", "f")
    other = event("filt-3", "filt", "f", dimensions={"region": "eu"})
    assert rejected_in(client, carried, left_out, other) == []
    assert lines(client, "filt") == {("fl", ()): ("2", "2")}  # a line's dimensions are its pricing dimensions


def test_an_event_type_feeding_no_product_is_accepted_and_charges_nothing(client: TariffClient) -> None:
    customer(client, "none")
    assert rejected_in(client, event("none-1", "none", "nothing", values={"n": 4})) == []
    assert client.get_balance("none").period_charges == "0"
    assert lines(client, "none") == {}


# §3 Rate cards: pricing unit, matching, formulas, publishing -----------------------------------------------------


@pytest.mark.parametrize(
    ("pricing_unit", "taken"),
    [("credits", True), ("USD", True), ("JPY", True), ("usd", False), ("XAU", False), ("tokens", False)],
)
def test_a_pricing_unit_is_credits_or_a_currency_with_a_minor_unit(
    client: TariffClient, pricing_unit: str, taken: bool
) -> None:
    request = pricing_pb2.CreateRateCardRequest(id=f"unit-{pricing_unit}", pricing_unit=pricing_unit)
    if taken:
        assert client.pricing.CreateRateCard(request).pricing_unit == pricing_unit
    else:
        code, details = refusal(lambda: client.pricing.CreateRateCard(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("pricing_unit"), details


def test_the_most_specific_matching_rate_prices_an_event(client: TariffClient) -> None:
    """`d`: region us, tier gold: 2 units at 10 = 20 (the two-key rate beats the one-key rate it also matches);
    region us, tier silver: 3 at 1 = 3 (only the one-key rate matches); region eu: no rate matches."""
    customer(client, "spec")
    gold = event("spec-1", "spec", "d", values={"n": 2}, dimensions={"region": "us", "tier": "gold"})
    silver = event("spec-2", "spec", "d", values={"n": 3}, dimensions={"region": "us", "tier": "silver"})
    eu = event("spec-3", "spec", "d", values={"n": 4}, dimensions={"region": "eu"})
    assert rejected_in(client, gold, silver, eu) == [("spec-3", "NO_APPLICABLE_RATE")]
    assert lines(client, "spec") == {
        ("d", (("region", "us"), ("tier", "gold"))): ("2", "20"),
        ("d", (("region", "us"), ("tier", "silver"))): ("3", "3"),
    }


def test_a_star_in_a_match_is_a_left_out_key_so_both_are_one_rate(client: TariffClient) -> None:
    """A left-out key and "*" both match anything: {} and {region: "*"} are the same rate, refused as a duplicate."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="star", pricing_unit="credits"))
    request = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="star", upsert_rates=[unit("d", "1"), unit("d", "2", region="*")]
    )
    code, details = refusal(lambda: client.pricing.CreateDraftVersion(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("upsert_rates[1]"), details


def test_equally_specific_rates_one_event_could_match_make_the_version_invalid(client: TariffClient) -> None:
    """{region: us} and {tier: gold} (one key each, different dimensions): an event of us and gold matches both, and
    so {region: eu} and {tier: gold}; {region: us} and {region: eu} name the same dimension: never both, not listed."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="amb", pricing_unit="credits"))
    rates = [unit("d", "1", region="us"), unit("d", "1", region="eu"), unit("d", "2", tier="gold")]
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="amb", upsert_rates=rates))
    report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="amb", version=1))
    errors = [(f.path, f.message) for f in report.findings if f.severity == pricing_pb2.ERROR]
    assert not report.ok
    assert [path for path, _ in errors] == ["rates[2].match", "rates[2].match"], errors
    us, eu = errors[0][1], errors[1][1]
    assert "as specific as rates[0]" in us and "{'region': 'us', 'tier': 'gold'}" in us, us
    assert "as specific as rates[1]" in eu and "{'region': 'eu', 'tier': 'gold'}" in eu, eu


def test_a_formula_is_evaluated_once_with_round_min_and_max_and_a_19_place_decimal_is_an_error(
    client: TariffClient,
) -> None:
    """round(2.5) is 2 (half-even), min(1, 2) / max(3, 4) is 1 / 4: the price 2.25, charged 4 units: 9. A literal
    of 19 decimal places is an error naming the price field (refused, never rounded)."""
    rates = [unit("p", "round(2.5) + min(1, 2) / max(3, 4)")]
    publish(client, "formula", rates)
    customer(client, "form", card="formula")
    assert rejected_in(client, event("form-1", "form", values={"n": 4})) == []
    assert lines(client, "form") == {("p", ()): ("4", "9")}
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="places19", pricing_unit="credits"))
    draft = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="places19", upsert_rates=[unit("p", "0.0000000000000000001")]
    )
    client.pricing.CreateDraftVersion(draft)
    report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="places19", version=1))
    assert [(f.severity, f.path) for f in report.findings] == [(pricing_pb2.ERROR, "rates[0].unit.price")]


def test_effective_from_is_on_an_hour_and_by_default_the_start_of_the_current_hour(client: TariffClient) -> None:
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="hour", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="hour", upsert_rates=[unit("p", "1")])
    )
    off = pricing_pb2.PublishVersionRequest(rate_card_id="hour", version=1, effective_from=stamp(JAN_2024_MS + 1))
    code, details = refusal(lambda: client.pricing.PublishVersion(off))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("effective_from"), details
    before = now_ms() // HOUR_MS * HOUR_MS
    published = client.pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id="hour", version=1))
    after = now_ms() // HOUR_MS * HOUR_MS
    assert published.version.effective_from.ToMilliseconds() in {before, after}


def test_of_two_versions_effective_at_one_moment_the_one_published_later_prices(client: TariffClient) -> None:
    """Version 1 at 2 a unit, version 2 at 3, both from 2024-01-01: 2 published first, then 1: 1 prices (5 units:
    10), and is the card's current version."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="twin", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="twin", upsert_rates=[unit("p", "2")])
    )
    second = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="twin", based_on_version=1, upsert_rates=[unit("p", "3")]
    )
    client.pricing.CreateDraftVersion(second)
    for version in (2, 1):
        publish = pricing_pb2.PublishVersionRequest(
            rate_card_id="twin", version=version, effective_from=stamp(JAN_2024_MS)
        )
        client.pricing.PublishVersion(publish)
    assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="twin")).current_version == 1
    customer(client, "twin", card="twin")
    assert rejected_in(client, event("twin-1", "twin", values={"n": 5})) == []
    assert lines(client, "twin") == {("p", ()): ("5", "10")}


# §3 Contracts: defaults, overlap, units, currency, overrides ---------------------------------------------------


def test_a_contract_starts_by_default_at_the_start_of_the_current_utc_day_allow_at_1_usd(client: TariffClient) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="dflt"))
    before = now_ms() // DAY_MS * DAY_MS
    made = client.contracts.CreateContract(contracts_pb2.CreateContractRequest(customer_id="dflt", rate_card_id="card"))
    after = now_ms() // DAY_MS * DAY_MS
    assert made.starting_at.ToMilliseconds() in {before, after}
    assert (made.overage_policy, made.overage_price, made.currency) == (contracts_pb2.ALLOW, "1", "USD")
    assert not made.HasField("ending_before")


def test_contracts_of_one_customer_may_not_overlap_nor_price_in_two_units(client: TariffClient) -> None:
    """`ovl` on `card` (credits) for January 2024: another from Jan 15 overlaps it (FAILED_PRECONDITION naming it);
    one from Feb 1 on a USD card prices in another unit than its grants (FAILED_PRECONDITION naming both units);
    nothing is created by either."""
    publish(client, "usd-card", [unit("p", "1")], "USD")
    open_contract(client, "ovl", "ovl-jan", JAN_2024_MS, JAN_2024_MS + 31 * DAY_MS, rate_card_id="card")
    overlap = contracts_pb2.CreateContractRequest(
        id="ovl-mid", customer_id="ovl", rate_card_id="card", starting_at=stamp(JAN_2024_MS + 14 * DAY_MS)
    )
    code, details = refusal(lambda: client.contracts.CreateContract(overlap))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "'ovl-jan'" in details, details
    other_unit = contracts_pb2.CreateContractRequest(
        id="ovl-usd", customer_id="ovl", rate_card_id="usd-card", starting_at=stamp(JAN_2024_MS + 31 * DAY_MS)
    )
    code, details = refusal(lambda: client.contracts.CreateContract(other_unit))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "'credits'" in details and "'USD'" in details, details
    for contract_id in ("ovl-mid", "ovl-usd"):
        asked = contracts_pb2.GetContractRequest(id=contract_id)
        code, _ = refusal(partial(client.contracts.GetContract, asked))
        assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("currency", ["XAU", "XXX", "usd"])
def test_a_contract_currency_without_a_minor_unit_is_refused_naming_it(client: TariffClient, currency: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="cur"))
    request = contracts_pb2.CreateContractRequest(customer_id="cur", rate_card_id="card", currency=currency)
    code, details = refusal(lambda: client.contracts.CreateContract(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("currency"), details


def test_an_override_matches_pricing_dimensions_only_and_adds_no_rate_where_the_card_has_none(
    client: TariffClient,
) -> None:
    """On `d` (pricing dimensions region, tier): a match on `zone` is refused naming override.match.zone, a region
    of 257 bytes naming override.match.region. On `x` (a product `card` does not price) an override at 5 is taken,
    but its usage stays NO_APPLICABLE_RATE."""
    customer(client, "ovr")
    for match, field in (({"zone": "a"}, "override.match.zone"), ({"region": "r" * 257}, "override.match.region")):
        request = contracts_pb2.AddOverrideRequest(
            contract_id="ovr-k", override=contracts_pb2.PriceOverride(product_id="d", match=match, multiplier="2")
        )
        code, details = refusal(partial(client.contracts.AddOverride, request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    product = pricing_pb2.Product(id="x", event_type="x", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    request = contracts_pb2.AddOverrideRequest(
        contract_id="ovr-k", override=contracts_pb2.PriceOverride(product_id="x", price="5")
    )
    assert len(client.contracts.AddOverride(request).overrides) == 1
    assert rejected_in(client, event("ovr-1", "ovr", "x", values={"n": 1})) == [("ovr-1", "NO_APPLICABLE_RATE")]
    assert client.get_balance("ovr").period_charges == "0"


# §3 Grants: kinds, starts_at, revenue at cost basis, expiry ------------------------------------------------------


def test_a_grant_starts_with_the_contract_it_names_else_the_one_in_force_else_at_its_grant(
    client: TariffClient,
) -> None:
    """`gs` has `gs-a` (Jan 1 - Mar 1 2024) and `gs-b` (from Mar 1 2024, in force now): a grant naming gs-a starts
    Jan 1, one naming only the customer starts with gs-b, Mar 1. `gn` has only a contract that ended: its grant starts
    when granted."""
    open_contract(client, "gs", "gs-a", JAN_2024_MS, MAR_2024_MS, rate_card_id="card")
    open_contract(client, "gs", "gs-b", MAR_2024_MS, rate_card_id="card")
    assert grant(client, "gs", "gs-1", "1", contract_id="gs-a").starts_at.ToMilliseconds() == JAN_2024_MS
    assert grant(client, "gs", "gs-2", "1").starts_at.ToMilliseconds() == MAR_2024_MS
    open_contract(client, "gn", "gn-a", JAN_2024_MS, MAR_2024_MS, rate_card_id="card")
    before = now_ms()
    starts = grant(client, "gn", "gn-1", "1").starts_at.ToMilliseconds()
    assert before <= starts <= now_ms()


def test_a_promotional_grant_is_free_and_top_up_and_rollover_grants_can_be_granted_by_hand(
    client: TariffClient,
) -> None:
    customer(client, "kinds")
    code, details = refusal(lambda: grant(client, "kinds", "kinds-promo", "1", "1", contracts_pb2.PROMOTIONAL))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("grant.paid_amount"), details
    assert grant(client, "kinds", "kinds-promo", "1", "0", contracts_pb2.PROMOTIONAL).kind == contracts_pb2.PROMOTIONAL
    assert grant(client, "kinds", "kinds-top", "1", "2", contracts_pb2.TOP_UP).kind == contracts_pb2.TOP_UP
    assert grant(client, "kinds", "kinds-roll", "1", "2", contracts_pb2.ROLLOVER).kind == contracts_pb2.ROLLOVER


def test_revenue_is_recognised_from_the_cumulative_draw_so_a_fully_drawn_grant_recognises_its_paid_amount(
    client: TariffClient,
) -> None:
    """3 credits bought for 1: each credit drawn recognises 1/3, from the cumulative draw rounded once:
    0.333333333333, 0.666666666667, then exactly 1 (not 3 x 0.333333333333)."""
    customer(client, "rev")
    grant(client, "rev", "rev-g", "3", "1")
    recognised = []
    for n in range(3):
        assert rejected_in(client, event(f"rev-{n}", "rev", values={"n": 1})) == []
        recognised.append(client.get_balance("rev").grants[0].recognized_revenue)
    assert recognised == ["0.333333333333", "0.666666666667", "1"]


def test_credit_left_in_an_expired_grant_is_reported_as_expired(client: TariffClient) -> None:
    """7 credits usable for the first hour of 2024, never drawn: past its expiry at once, all 7 expired, nothing
    remaining or available. granted = drawn + remaining + held + expired: 7 = 0 + 0 + 0 + 7."""
    customer(client, "exp")
    grant(client, "exp", "exp-g", "7", "7", starts_at=stamp(JAN_2024_MS), expires_at=stamp(JAN_2024_MS + HOUR_MS))
    assert grants(client, "exp") == {"exp-g": ("7", "0", "0", "0", "7")}
    assert totals(client, "exp") == ("0", "0", "0")


# §3 Credits: holds ------------------------------------------------------------------------------------------------


def test_a_hold_shows_inside_its_grants_remaining_and_leaves_the_rest_available(client: TariffClient) -> None:
    """100 granted, 20 drawn, a hold of 15: the grant's remaining 80 with its held 15 in it, 65 available; the hold's
    answer says so too. 100 = 20 drawn + 80 remaining (15 of it held) + 0 expired."""
    customer(client, "hold")
    grant(client, "hold", "hold-g", "100", "10")
    assert rejected_in(client, event("hold-1", "hold", values={"n": 20})) == []
    answer = hold(client, "hold", "hold-r", 15)
    assert (answer.allowed, answer.reason, answer.credits_available) == (True, "OK", "65")
    assert grants(client, "hold") == {"hold-g": ("100", "20", "80", "15", "0")}
    assert totals(client, "hold") == ("80", "15", "65")


def test_an_event_naming_an_open_hold_gives_it_back_before_its_charges_draw(client: TariffClient) -> None:
    """20 granted, a hold of 15 (5 available): an event of 12 naming it gives the 15 back first, then draws 12:
    drawn 12, remaining 8, nothing held; without the give-back it could draw only 5 and leave 7 overage."""
    customer(client, "settle")
    grant(client, "settle", "settle-g", "20", "20")
    assert hold(client, "settle", "settle-r", 15).credits_available == "5"
    assert rejected_in(client, event("settle-1", "settle", values={"n": 12}, reservation_id="settle-r")) == []
    assert grants(client, "settle") == {"settle-g": ("20", "12", "8", "0", "0")}
    assert client.get_balance("settle").overage_amount == "0"


def test_an_event_naming_another_customers_hold_leaves_that_hold_alone(client: TariffClient) -> None:
    """Holds are a customer's own ("an event naming an open reservation of its customer"; nothing moves between two
    accounts): `mine` holds 6 of 10 as `shared`; `yours` sends 2 units naming `shared`: rated as any event, its own
    overage, and `mine` still holds 6 (4 available)."""
    customer(client, "mine")
    customer(client, "yours")
    grant(client, "mine", "mine-g", "10", "10")
    assert hold(client, "mine", "shared", 6).credits_available == "4"
    assert rejected_in(client, event("yours-1", "yours", values={"n": 2}, reservation_id="shared")) == []
    assert totals(client, "mine") == ("10", "6", "4")
    assert grants(client, "mine") == {"mine-g": ("10", "0", "10", "6", "0")}
    assert client.get_balance("yours").overage_amount == "2"


def blocked_customer(client: TariffClient, customer_id: str, credits: str) -> None:
    """`customer_id` on `card` from 2024-01-01 under BLOCK, with `credits` bought at 1 USD each."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
    request = contracts_pb2.CreateContractRequest(
        id=f"{customer_id}-k",
        customer_id=customer_id,
        rate_card_id="card",
        starting_at=stamp(JAN_2024_MS),
        overage_policy=contracts_pb2.BLOCK,
    )
    client.contracts.CreateContract(request)
    grant(client, customer_id, f"{customer_id}-g", credits, credits)


def test_with_block_holds_never_exceed_the_credit(client: TariffClient) -> None:
    """BLOCK, 10 credits: a hold of 6 is taken (4 left), one of 5 denied (more than the 4 holds leave), one of 4
    taken (0 left): 10 held in all, none over. Authorize of 1 more without a hold is denied too; 2 units ingested are
    recorded (accepted), as overage: the held credit is not theirs."""
    blocked_customer(client, "blk", "10")
    answers = [hold(client, "blk", f"blk-{n}", n) for n in (6, 5, 4)]
    assert [(a.allowed, a.reason, a.credits_available) for a in answers] == [
        (True, "OK", "4"),
        (False, "INSUFFICIENT_CREDIT", "4"),
        (True, "OK", "0"),
    ]
    assert totals(client, "blk") == ("10", "10", "0")
    plain = balance_pb2.AuthorizeRequest(request_id="blk-plain", customer_id="blk", event_type="p", values={"n": 1})
    denied = client.balance.Authorize(plain)
    assert (denied.allowed, denied.reason) == (False, "INSUFFICIENT_CREDIT")
    # Usage that happened is recorded all the same: 2 units naming no hold find nothing the holds leave: overage.
    assert rejected_in(client, event("blk-1", "blk", values={"n": 2})) == []
    balance = client.get_balance("blk")
    assert (balance.period_charges, balance.overage_amount, balance.credits_held) == ("2", "2", "10")


def test_a_retried_hold_answers_the_reason_it_was_allowed_for_open_or_released(client: TariffClient) -> None:
    """ALLOW, no credit: a hold of 5 is OVERAGE_ALLOWED; its retry answers OVERAGE_ALLOWED, also once released
    (released 0: it held nothing), with a message saying it was released."""
    customer(client, "why")
    assert (hold(client, "why", "why-r", 5).reason, hold(client, "why", "why-r", 5).reason) == (
        "OVERAGE_ALLOWED",
        "OVERAGE_ALLOWED",
    )
    released = client.balance.ReleaseReservation(
        balance_pb2.ReleaseReservationRequest(customer_id="why", reservation_id="why-r")
    )
    assert released.released_amount == "0"
    retried = hold(client, "why", "why-r", 5)
    assert (retried.allowed, retried.reason) == (True, "OVERAGE_ALLOWED")
    assert retried.message.startswith("this reservation was already released at "), retried.message


def test_an_event_naming_a_reservation_id_over_256_bytes_is_invalid(client: TariffClient) -> None:
    customer(client, "rid")
    at_limit = event("rid-256", "rid", values={"n": 1}, reservation_id="r" * 256)
    over = event("rid-257", "rid", values={"n": 1}, reservation_id="r" * 257)
    assert rejected_in(client, at_limit, over) == [("rid-257", "INVALID_EVENT")]
    assert client.get_balance("rid").period_charges == "1"


# §3 Credits: top-ups ----------------------------------------------------------------------------------------------


def policy(client: TariffClient, customer_id: str, threshold: str, recharge_to: str, max_per_period: int = 1) -> None:
    top_up = contracts_pb2.TopUpPolicy(
        threshold=threshold, recharge_to=recharge_to, price_per_credit="0.5", max_per_period=max_per_period
    )
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{customer_id}-k", top_up=top_up))


def test_a_policy_set_below_its_threshold_buys_at_the_next_rated_event_one_drawing_nothing_included(
    client: TariffClient,
) -> None:
    """3 credits, then a policy below 5 up to 20: nothing bought when set; an event of a type feeding no product (it
    draws nothing) buys 20 - 3 = 17 as TOP_UP `top-up-<period start>-1`, never expiring, usable from the start of the
    billing period it counts in, so it pays that period's late usage too."""
    customer(client, "tbelow")
    grant(client, "tbelow", "tbelow-g", "3", "3")
    policy(client, "tbelow", "5", "20")
    assert totals(client, "tbelow") == ("3", "0", "3")
    assert rejected_in(client, event("tbelow-1", "tbelow", "nothing", values={"n": 1})) == []
    start = period_start_ms()
    bought = [g for g in client.get_balance("tbelow").grants if g.kind == contracts_pb2.TOP_UP]
    assert [(g.grant_id, g.amount, g.starts_at.ToMilliseconds(), g.HasField("expires_at")) for g in bought] == [
        (f"top-up-{start}-1", "17", start, False)
    ]
    assert totals(client, "tbelow") == ("20", "0", "20")
    # Usable from the period's start: 18 units dated a second into the period, before the purchase, draw the 3 of
    # tbelow-g then 15 of the top-up (2 left: below 5, but the one purchase a period is made).
    late = event("tbelow-2", "tbelow", values={"n": 18}, at_ms=start + 1000)
    assert rejected_in(client, late) == []
    assert grants(client, "tbelow") == {
        "tbelow-g": ("3", "3", "0", "0", "0"),
        f"top-up-{start}-1": ("17", "15", "2", "0", "0"),
    }


def test_top_ups_buy_up_to_the_recharge_level_at_most_max_per_period_times(client: TariffClient) -> None:
    """3 credits, policy below 5 up to 20, twice a period. 4 units: 3 drawn, 1 overage, 0 available: buys 20 (#1).
    19 units: drawn from #1, 1 left: buys 19 (#2). 19 units: #1's 1 and 18 of #2, 1 left, below 5, but two were
    bought this period: nothing. 19 more: 1 drawn, 18 overage. Charged 4 + 3 x 19 = 61, overage 1 + 18 = 19."""
    customer(client, "tcap")
    grant(client, "tcap", "tcap-g", "3", "3")
    policy(client, "tcap", "5", "20", max_per_period=2)
    for n, units in enumerate((4, 19, 19, 19)):
        assert rejected_in(client, event(f"tcap-{n}", "tcap", values={"n": units})) == []
    start = period_start_ms()
    assert grants(client, "tcap") == {
        "tcap-g": ("3", "3", "0", "0", "0"),
        f"top-up-{start}-1": ("20", "20", "0", "0", "0"),
        f"top-up-{start}-2": ("19", "19", "0", "0", "0"),
    }
    balance = client.get_balance("tcap")
    assert (balance.period_charges, balance.overage_amount) == ("61", "19")


def test_a_hold_buys_a_top_up_and_its_answer_counts_it(client: TariffClient) -> None:
    """10 credits, policy below 5 up to 20: a hold of 8 leaves 2 available, buying 18: the answer's available is
    20 (28 remaining, 8 held)."""
    customer(client, "thold")
    grant(client, "thold", "thold-g", "10", "10")
    policy(client, "thold", "5", "20")
    assert hold(client, "thold", "thold-r", 8).credits_available == "20"
    assert totals(client, "thold") == ("28", "8", "20")


def test_the_credit_a_policy_counts_is_the_accounts_whatever_products_its_grants_pay(client: TariffClient) -> None:
    """10 credits for `lat` only, policy below 5 up to 20: 4 units of `p` (no grant pays it) are overage, and the 10
    available keep the policy from buying."""
    customer(client, "twide")
    grant(client, "twide", "twide-g", "10", "10", applicable_product_ids=["lat"])
    policy(client, "twide", "5", "20")
    assert rejected_in(client, event("twide-1", "twide", values={"n": 4})) == []
    assert list(grants(client, "twide")) == ["twide-g"]
    assert client.get_balance("twide").overage_amount == "4"


@pytest.mark.parametrize(
    ("top_up", "field"),
    [
        (
            contracts_pb2.TopUpPolicy(threshold="0", recharge_to="20", price_per_credit="1", max_per_period=1),
            "top_up.threshold",
        ),
        (contracts_pb2.TopUpPolicy(recharge_to="20", price_per_credit="1", max_per_period=1), "top_up.threshold"),
        (
            contracts_pb2.TopUpPolicy(
                threshold="1", recharge_to="20", price_per_credit="1", max_per_period=1, currency="EUR"
            ),
            "top_up.currency",
        ),
    ],
)
def test_a_policy_that_could_never_buy_or_prices_in_another_currency_is_refused(
    client: TariffClient, top_up: contracts_pb2.TopUpPolicy, field: str
) -> None:
    """Threshold 0, no threshold (never read as a clearing), a currency other than the contract's USD: refused naming
    the field, the customer's policy (below 2 up to 10) kept."""
    customer(client, "tref")
    policy(client, "tref", "2", "10")
    request = contracts_pb2.SetTopUpPolicyRequest(contract_id="tref-k", top_up=top_up)
    code, details = refusal(lambda: client.contracts.SetTopUpPolicy(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(field), details
    kept = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="tref-k")).top_up
    assert (kept.threshold, kept.recharge_to, kept.currency) == ("2", "10", "USD")


def test_a_made_grants_id_taken_first_gets_a_plus_and_granting_under_a_made_id_is_already_exists(
    client: TariffClient,
) -> None:
    """A promotional grant of 1 takes `top-up-<period start>-1` before any top-up: the policy (below 5 up to 20)
    then buys 19 as `top-up-<period start>-1+`; GrantCredits under that id is ALREADY_EXISTS."""
    customer(client, "tid")
    taken = f"top-up-{period_start_ms()}-1"
    grant(client, "tid", taken, "1", "0", contracts_pb2.PROMOTIONAL)
    policy(client, "tid", "5", "20")
    assert rejected_in(client, event("tid-1", "tid", "nothing", values={"n": 1})) == []
    assert grants(client, "tid") == {taken: ("1", "0", "1", "0", "0"), f"{taken}+": ("19", "0", "19", "0", "0")}
    code, _ = refusal(lambda: grant(client, "tid", f"{taken}+", "1", "0", contracts_pb2.PROMOTIONAL))
    assert code == grpc.StatusCode.ALREADY_EXISTS


# §3 Credits: reads in the window --------------------------------------------------------------------------------


def test_reads_between_a_holds_ttl_and_a_grants_expiry_and_their_record_answer_as_if_recorded(
    client: TariffClient,
) -> None:
    """`win`: w-g 10 credits, and w-e 5 credits (priority -1: burns first) expiring 1.5 s from now; a hold of 4 with
    a TTL of 1 s takes it from w-e (11 available). Once both are due, and before anything records them (the module's
    clock driver looks once an hour: as_of_seq stays), GetBalance shows the hold given back and w-e's 5 expired (10
    available), Authorize without a hold answers 10 available, the draft lists w-e's 5 as expired and the revenue
    report counts its 5 USD of breakage (15 deferred at the period's start, 10 after). The next change (a unit of usage) records them first: w-g pays it."""
    customer(client, "win")
    grant(client, "win", "w-g", "10", "10")
    expires_ms = now_ms() + 1500
    grant(client, "win", "w-e", "5", "5", priority=-1, starts_at=stamp(JAN_2024_MS), expires_at=stamp(expires_ms))
    request = balance_pb2.AuthorizeRequest(
        request_id="win-ask",
        customer_id="win",
        event_type="p",
        values={"n": 4},
        reserve=True,
        reservation_id="win-r",
        reservation_ttl=Duration(seconds=1),
    )
    assert client.balance.Authorize(request).credits_available == "11"
    assert grants(client, "win")["w-e"] == ("5", "0", "5", "4", "0")
    seq = client.get_balance("win").as_of_seq
    time.sleep(max(0.0, (expires_ms + 200 - now_ms()) / 1000))
    assert grants(client, "win") == {"w-e": ("5", "0", "0", "0", "5"), "w-g": ("10", "0", "10", "0", "0")}
    assert totals(client, "win") == ("10", "0", "10")
    plain = balance_pb2.AuthorizeRequest(request_id="win-plain", customer_id="win", event_type="p", values={"n": 1})
    assert client.balance.Authorize(plain).credits_available == "10"
    draft = preview(client, "win", now_ms())
    assert {(g.grant_id, g.remaining, g.expired) for g in draft.grant_balances} == {
        ("w-e", "0", "5"),
        ("w-g", "10", "0"),
    }
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(
            customer_id="win", period_start=stamp(period_start_ms()), period_end=stamp(now_ms() + DAY_MS)
        )
    )
    reconciled = report.reconciliation  # both grants start with the contract: sold in January 2024, deferred since
    assert (reconciled.deferred_start, reconciled.breakage, reconciled.deferred_end) == ("15", "5", "10")
    assert client.get_balance("win").as_of_seq == seq
    assert rejected_in(client, event("win-1", "win", values={"n": 1})) == []
    assert client.get_balance("win").as_of_seq > seq
    assert grants(client, "win") == {"w-e": ("5", "0", "0", "0", "5"), "w-g": ("10", "1", "9", "0", "0")}


# §3 Changing prices: DiffVersions ---------------------------------------------------------------------------------


def test_a_diff_runs_parameters_by_name_and_rates_by_product_then_match_however_the_versions_list_them(
    client: TariffClient,
) -> None:
    """Version 1 (parameters a = 1, b = 2) lists q {} at 1, d {us, gold} at a, d {us} at b, d {} at 1. Draft 2, based
    on it, sets b = 5 and c = 7, writes d {} at 2, removes d {us, gold} and adds d {silver} at 3 (listed first). The
    diff: parameters b CHANGED (2 -> 5), c ADDED; rates d {} CHANGED (1 -> 2), d {us} REPRICED (b: 2 -> 5),
    d {us, gold} REMOVED (evaluated 1), d {silver} ADDED (3), each of these two with every price field (per_units 1
    too); q and a are the same and left out."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="diff", pricing_unit="credits"))
    first = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="diff",
        set_parameters={"a": "1", "b": "2"},
        upsert_rates=[
            unit("q", "1"),
            unit("d", "a", region="us", tier="gold"),
            unit("d", "b", region="us"),
            unit("d", "1"),
        ],
    )
    client.pricing.CreateProduct(
        pricing_pb2.CreateProductRequest(
            product=pricing_pb2.Product(id="q", event_type="q", aggregation=pricing_pb2.SUM, value_key="n")
        )
    )
    client.pricing.CreateDraftVersion(first)
    second = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="diff",
        based_on_version=1,
        set_parameters={"b": "5", "c": "7"},
        upsert_rates=[unit("d", "3", tier="silver"), unit("d", "2")],
        remove_rates=[pricing_pb2.RateKey(product_id="d", match={"region": "us", "tier": "gold"})],
    )
    client.pricing.CreateDraftVersion(second)
    diff = client.pricing.DiffVersions(
        pricing_pb2.DiffVersionsRequest(rate_card_id="diff", from_version=1, to_version=2)
    )
    assert [(c.name, c.old_value, c.new_value, c.kind) for c in diff.parameters] == [
        ("b", "2", "5", pricing_pb2.CHANGED),
        ("c", "", "7", pricing_pb2.ADDED),
    ]
    assert [
        (r.key.product_id, dict(r.key.match), r.kind, [(f.path, f.old_price, f.new_price) for f in r.fields])
        for r in diff.rates
    ] == [
        ("d", {}, pricing_pb2.CHANGED, [("unit.price", "1", "2")]),
        ("d", {"region": "us"}, pricing_pb2.REPRICED, [("unit.price", "2", "5")]),
        (
            "d",
            {"region": "us", "tier": "gold"},
            pricing_pb2.REMOVED,
            [("unit.price", "1", ""), ("unit.per_units", "1", "")],
        ),
        ("d", {"tier": "silver"}, pricing_pb2.ADDED, [("unit.price", "", "3"), ("unit.per_units", "", "1")]),
    ]


@pytest.mark.parametrize(("journaled_with_flag", "charged"), [(True, 2), (False, 1)])
def test_a_filter_product_journaled_without_empty_filter_missing_is_met_only_by_an_empty_value_sent_as_before(
    journaled_with_flag: bool, charged: int
) -> None:
    """A CreateProduct an earlier release journaled has no empty_filter_missing: decoded, it reads False, and its
    filter on "" is met only by an event sending the dimension empty, as it was (an event sending region "" and one
    leaving it out: 1 credit), so its journal replays to the same state; with the field (every product the server
    creates now) both meet it (2 credits). The field is the server's: in neither the retry fingerprint nor the audit
    entry."""
    made = cmd.CreateProduct(EPOCH_MS, ACTOR, "fl", "fl", "f", Aggregation.COUNT, "", {"region": ""}, (), "u")
    made = msgspec.structs.replace(made, empty_count_missing=True, empty_filter_missing=True)
    stored = msgspec.json.encode(made)
    assert b',"empty_filter_missing":true' in stored
    if not journaled_with_flag:
        stored = stored.replace(b',"empty_filter_missing":true', b"")
    decoded = msgspec.json.decode(stored, type=cmd.CreateProduct)
    assert decoded.empty_filter_missing is journaled_with_flag
    assert fingerprint(decoded) == fingerprint(msgspec.structs.replace(decoded, empty_filter_missing=False))
    world = World()
    world.apply(decoded)
    world.rate_card()
    world.version([engine_rate("fl", engine_unit("1"))])
    world.customer()
    world.contract()
    billing = Billing(engine=world.engine)
    events = [
        usage_event("sent", EPOCH_MS + HOUR_MS, {}, event_type="f", dimensions={"region": ""}),
        usage_event("left-out", EPOCH_MS + HOUR_MS, {}, event_type="f"),
    ]
    ack = billing.ingest(usage_pb2.UsageBatch(events=events).SerializeToString(), EPOCH_MS + 2 * HOUR_MS)
    assert (ack.accepted, list(ack.rejected)) == (2, [])
    assert billing.balance("acme", EPOCH_MS + 2 * HOUR_MS).period_charges == charged * 10**12
    entries = [e for e in world.engine.state.audit if e.action == "CreateProduct"]
    assert entries and all("empty_filter_missing" not in e.diff for e in entries)


# §3 Revenue recognition: a rollover that moved nothing ------------------------------------------------------------

FEB_2024_MS = 1_706_745_600_000


def test_a_rollover_that_moved_nothing_made_no_grant_so_its_id_can_be_granted_with_a_ledger_of_its_own(
    client: TariffClient,
) -> None:
    """`rz-g`: 0.000000000001 credits (paid 0.000000000001) with rollover fraction 0.5, from the contract's start, Jan
    1 2024: at Feb 1 2024, floor(0.5 x 10^-12) rolls over: 0, so no grant; the 10^-12 breaks (rz-g expired). The id
    the rollover would have had, `rollover-rz-g-<Feb 1>`, names none of the kernel's grants: GrantCredits takes it
    (10 credits paid 5), and 4 units drawn from it recognise 4 x 5 / 10 = 2 of its own paid amount."""
    customer(client, "rz")
    grant(client, "rz", "rz-g", "0.000000000001", "0.000000000001", rollover_fraction="0.5")
    assert grants(client, "rz") == {"rz-g": ("0.000000000001", "0", "0", "0", "0.000000000001")}
    rolled_id = f"rollover-rz-g-{FEB_2024_MS}"
    assert grant(client, "rz", rolled_id, "10", "5").id == rolled_id
    assert rejected_in(client, event("rz-1", "rz", values={"n": 4})) == []
    listed = {g.grant_id: (g.kind, g.drawn, g.recognized_revenue) for g in client.get_balance("rz").grants}
    assert listed == {
        "rz-g": (contracts_pb2.PREPAID, "0", "0"),
        rolled_id: (contracts_pb2.PREPAID, "4", "2"),
    }


def test_one_authorize_batches_message_holds_as_its_unary_holds_would_one_record_or_none(client: TariffClient) -> None:
    """BLOCK, 3 credits. One message: hold ab-1 of 2 (OK, 1 left), ab-2 of 2 (denied: more than the 1 the first
    leaves), an unnamed hold of 1 (OK, 0 left, named r-<32 hex>): one journal record (as_of_seq + 1). A message
    whose one hold is denied, and one retrying ab-1 (answered OK again, holding once), take none."""

    def message(*holds: tuple[str, float]) -> list[tuple[str, str, bool, str]]:
        requests = [
            balance_pb2.AuthorizeRequest(
                request_id=f"ab-ask-{n}-{reservation_id}",
                customer_id="ab",
                event_type="p",
                values={"n": n},
                reserve=True,
                reservation_id=reservation_id,
            )
            for reservation_id, n in holds
        ]
        answers = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)])))
        return [(a.reservation_id, a.reason, a.allowed, a.credits_available) for a in answers[0].responses]

    blocked_customer(client, "ab", "3")
    seq = client.get_balance("ab").as_of_seq
    first = message(("ab-1", 2), ("ab-2", 2), ("", 1))
    assert first[:2] == [("ab-1", "OK", True, "1"), ("", "INSUFFICIENT_CREDIT", False, "1")]  # a denial holds no id
    unnamed, reason, allowed, available = first[2]
    assert re.fullmatch(r"r-[0-9a-f]{32}", unnamed) and (reason, allowed, available) == ("OK", True, "0"), first[2]
    assert client.get_balance("ab").as_of_seq == seq + 1
    assert message(("ab-3", 1)) == [("", "INSUFFICIENT_CREDIT", False, "0")]
    assert message(("ab-1", 2)) == [("ab-1", "OK", True, "0")]
    assert client.get_balance("ab").as_of_seq == seq + 1
    assert totals(client, "ab") == ("3", "3", "0")


# §3 The audit log's actor -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("actor", "taken"),
    [("a" * 128, True), ("j.doe_2:ops@corp-1", True), ("a" * 129, False), ("ann/b", False), ("ann b", False)],
)
def test_an_x_actor_is_1_to_128_ascii_letters_digits_and_dot_underscore_colon_at_dash(
    client: TariffClient, actor: str, taken: bool
) -> None:
    """Without API keys the call's x-actor is the audit entry's actor, held to `is_actor_name`: 128 letters and
    "j.doe_2:ops@corp-1" are taken (the card made, its entry under that actor); 129 letters, a slash or a space are
    INVALID_ARGUMENT naming x-actor, nothing made."""
    card = f"actor-{len(actor)}-{actor[:5].replace(' ', '-').replace('/', '-')}"
    request = pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits")
    if taken:
        client.pricing.CreateRateCard(request, metadata=[("x-actor", actor)])
        log = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target=f"rate_card/{card}", page_size=10))
        assert [(e.action, e.actor) for e in log.entries] == [("CreateRateCard", actor)]
    else:
        code, details = refusal(lambda: client.pricing.CreateRateCard(request, metadata=[("x-actor", actor)]))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("x-actor"), details
        code, _ = refusal(lambda: client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=card)))
        assert code == grpc.StatusCode.NOT_FOUND
