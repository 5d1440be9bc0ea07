"""An audit of README "Changing prices safely" (and "Cohorts") and PricingService's comments in pricing.proto, over
the wire: each scenario runs against a real server process, and every amount asserted was computed by hand from the
documents, not read back from the server. One product, `units` (event type `work`, SUM of `n`, priced on the
dimensions model and region) on the card `card` (USD); an event of n units at price p costs n x p."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from functools import partial

import grpc
from google.protobuf import timestamp_pb2
from tariff import TariffClient, TariffError
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory

HOUR_MS = 3_600_000
S = grpc.StatusCode
CARD = "card"


def this_hour_ms() -> int:
    """The start of the current hour; within 15 s of the next one, that one (after waiting for it), so a scenario
    that publishes "from now" (the current hour) runs inside the hour it computed."""
    now = time.time_ns() // 1_000_000
    if HOUR_MS - now % HOUR_MS < 15_000:
        time.sleep((HOUR_MS - now % HOUR_MS) / 1000 + 0.05)
        now = time.time_ns() // 1_000_000
    return now - now % HOUR_MS


def month_start_ms(months_back: int = 0) -> int:
    now = datetime.now(UTC)
    year, month = now.year, now.month - months_back
    while month < 1:
        year, month = year - 1, month + 12
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def expect_error(code: grpc.StatusCode, call: Callable[[], object]) -> str:
    try:
        call()
    except TariffError as exc:
        assert exc.code == code, f"expected {code.name}, got {exc}"
        return str(exc.details)
    raise AssertionError(f"expected {code.name}, the call succeeded")


def unit(price: str, match: dict[str, str] | None = None, per_units: str = "") -> pricing_pb2.Rate:
    return pricing_pb2.Rate(
        product_id="units", match=match or {}, unit=pricing_pb2.UnitPrice(price=price, per_units=per_units)
    )


def draft(
    client: TariffClient, base: int, rates: list[pricing_pb2.Rate], parameters: dict[str, str] | None = None
) -> int:
    request = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD, based_on_version=base, upsert_rates=rates, set_parameters=parameters or {}
    )
    return int(client.pricing.CreateDraftVersion(request).version)


def publish(client: TariffClient, version: int, from_ms: int | None = None) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version)
    if from_ms is not None:
        request.effective_from.CopyFrom(stamp(from_ms))
    response: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
    return response


def catalogue(client: TariffClient, v1_from_ms: int, price: str = "1", customer_from_ms: int | None = None) -> None:
    """Product `units`, card `card` whose version 1 (one catch-all rate at `price`) is in force from v1_from_ms,
    customer `c` with a contract from customer_from_ms (v1_from_ms when None)."""
    product = pricing_pb2.Product(
        id="units",
        event_type="work",
        aggregation=pricing_pb2.SUM,
        value_key="n",
        pricing_dimensions=["model", "region"],
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="USD"))
    draft(client, 0, [unit(price)])
    publish(client, 1, v1_from_ms)
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="c", name="c"))
    start = v1_from_ms if customer_from_ms is None else customer_from_ms
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(id="k-c", customer_id="c", rate_card_id=CARD, starting_at=stamp(start))
    )


def work(transaction_id: str, at_ms: int, n: float, **dimensions: str) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id="c",
        event_type="work",
        timestamp_ms=at_ms,
        values={"n": n},
        dimensions=dimensions,
    )


def ingest(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch(list(events), batch_id=f"b-{events[0].transaction_id}")
    assert ack.accepted == len(events), ack.rejected


def charges(client: TariffClient) -> str:
    return str(client.get_balance("c").period_charges)


def new_prices(client: TariffClient, version: int) -> list[tuple[str, str, str]]:
    """(path, new_price, new_problem) of every field of every rate of `version` diffed against version 1."""
    diff = client.pricing.DiffVersions(
        pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=1, to_version=version)
    )
    return [(f.path, f.new_price, f.new_problem) for r in diff.rates for f in r.fields if f.has_new]


def test_formulas_evaluate_as_documented_rounded_half_even_to_18_places(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        catalogue(client, this_hour_ms())
        cases = {
            "a": ("1 / 3", "0.333333333333333333"),
            "b": ("2 / 3", "0.666666666666666667"),  # half-even at the 18th place: ...6666|66 rounds up
            "c": ("(p + 1) * 2 - 0.5", "5.5"),  # p = 2: parentheses before *, then -
            "d": ("min(p, 3, 1.5) + max(p, 0.25)", "3.5"),
            "e": ("round(2.5)", "2"),  # half-even: 2.5 -> 2
            "f": ("round(3.5)", "4"),
            "g": ("round(0.125, 2)", "0.12"),
            "h": ("round(p / 3, 4)", "0.6667"),
            "i": ("p - 1 - 1 + 0.5", "0.5"),  # left to right
            "j": ("8 / 2 / 2", "2"),
        }
        rates = [unit(formula, {"model": name}) for name, (formula, _) in cases.items()]
        version = draft(client, 1, rates, {"p": "2"})
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=version))
        assert report.ok, report.findings
        got = {p for p in new_prices(client, version) if p[0] == "unit.price"}
        assert got == {("unit.price", price, "") for _, price in cases.values()}
        # Priced over the wire: 3 units of model a at 1/3 (rounded to 18 places once) cost 0.999999999999999999,
        # shown at picos of the charge: 1.
        publish(client, version)
        ingest(client, work("e1", this_hour_ms() + 1, 3, model="a"), work("e2", this_hour_ms() + 2, 1, model="g"))
        assert charges(client) == "1.12"


def test_a_formula_dividing_by_zero_is_a_validation_error_and_cannot_be_published(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    with server.client() as client:
        catalogue(client, this_hour_ms())
        version = draft(client, 1, [unit("1 / (p - 2)", {"model": "x"})], {"p": "2"})
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=version))
        assert not report.ok
        errors = [f for f in report.findings if f.severity == pricing_pb2.ERROR]
        assert [f.path for f in errors] == ["rates[1].unit.price"], report.findings
        [(path, price, problem)] = [p for p in new_prices(client, version) if p[0] == "unit.price"]
        assert (path, price) == ("unit.price", "") and "zero" in problem
        expect_error(S.INVALID_ARGUMENT, lambda: publish(client, version))
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 1


def test_the_most_specific_match_wins_and_equal_specificity_is_ambiguous(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour)  # catch-all at 1
        version = draft(client, 1, [unit("2", {"model": "m"}), unit("3", {"model": "m", "region": "eu"})])
        publish(client, version, hour)
        ingest(client, work("s1", hour + 1, 1, model="m", region="eu"))  # 3
        assert charges(client) == "3"
        ingest(client, work("s2", hour + 2, 1, model="m", region="us"))  # 2
        assert charges(client) == "5"
        ingest(client, work("s3", hour + 3, 1, model="z", region="eu"))  # 1
        assert charges(client) == "6"
        ambiguous = draft(client, 1, [unit("2", {"model": "m"}), unit("4", {"region": "eu"})])
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=ambiguous)
        )
        assert not report.ok and any(f.severity == pricing_pb2.ERROR for f in report.findings)
        expect_error(S.INVALID_ARGUMENT, lambda: publish(client, ambiguous))


def test_draft_request_id_and_publish_retries(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - HOUR_MS)
        request = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=1, set_parameters={"q": "1"}, request_id="r-1"
        )
        first = client.pricing.CreateDraftVersion(request)
        again = client.pricing.CreateDraftVersion(request)
        assert (first.version, again.version) == (2, 2)
        assert dict(first.parameters) == {"q": "1"} and first.based_on_version == 1
        other = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=1, set_parameters={"q": "2"}, request_id="r-1"
        )
        expect_error(S.ALREADY_EXISTS, lambda: client.pricing.CreateDraftVersion(other))
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version == 2
        # effective_from must be on an hour.
        expect_error(S.INVALID_ARGUMENT, lambda: publish(client, 2, hour + 1))
        # Unset: the current hour; a retry without effective_from answers as the first call did.
        published = publish(client, 2)
        assert published.version.effective_from.ToMilliseconds() == hour
        assert publish(client, 2).version == published.version
        assert publish(client, 2, hour).version == published.version


def test_a_version_effective_at_an_events_exact_timestamp_prices_it(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - HOUR_MS)  # 1 a unit
        ingest(client, work("before", hour - 1, 1), work("at", hour, 1))
        assert charges(client) == "2"
        v2 = draft(client, 1, [unit("10")])
        done = publish(client, v2, hour)  # takes over the event at exactly `hour`: 1 -> 10
        assert (done.customers_rerated, done.buckets_rerated, done.events_rerated) == (1, 1, 1)
        assert done.rerated_amount_delta == "9"
        assert charges(client) == "11"


def closed_month_and_a_draft(client: TariffClient) -> tuple[int, int]:
    """Last month (2 units, closed) and this month (3 units) of customer c on version 1, and a draft at 5 a unit:
    (last month's start, the draft's version)."""
    last_month, this_month = month_start_ms(1), month_start_ms(0)
    catalogue(client, last_month)
    ingest(client, work("old", this_month - HOUR_MS, 2), work("new", this_month, 3))
    client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="c", period_start=stamp(last_month)))
    return last_month, draft(client, 1, [unit("5")])


def test_a_closed_period_is_left_alone_and_the_open_one_rerated(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        last_month, v2 = closed_month_and_a_draft(client)
        done = publish(client, v2, last_month)
        # Last month's bucket (2 units, 2 USD) is in a closed period: left alone, counted; this month's re-rated.
        assert (done.closed_buckets_left_alone, done.closed_events_left_alone) == (1, 1)
        assert done.closed_amount_left_alone == "2" and done.left_alone_reason
        assert (done.buckets_rerated, done.events_rerated, done.rerated_amount_delta) == (1, 1, "12")
        assert charges(client) == "15"


def test_rollback_fields_refusals_retries_and_a_rollback_of_a_rollback(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - 4 * HOUR_MS)
        v2 = draft(client, 1, [unit("2")])
        publish(client, v2, hour - 3 * HOUR_MS)
        ingest(client, work("r1", hour - 2 * HOUR_MS + 1, 1))  # v2: 2

        def rollback(to: int, from_ms: int | None = None) -> pricing_pb2.PublishVersionResponse:
            request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=to)
            if from_ms is not None:
                request.effective_from.CopyFrom(stamp(from_ms))
            response: pricing_pb2.PublishVersionResponse = client.pricing.RollbackRateCard(request)
            return response

        v4 = draft(client, 1, [unit("7")])  # version 3 is a draft
        assert v4 == 3
        expect_error(S.FAILED_PRECONDITION, lambda: rollback(3, hour))
        expect_error(S.NOT_FOUND, lambda: rollback(9, hour))
        expect_error(S.FAILED_PRECONDITION, lambda: rollback(2, hour))  # v2 in force
        expect_error(S.FAILED_PRECONDITION, lambda: rollback(1, hour - 10 * HOUR_MS))  # nothing in force
        expect_error(S.INVALID_ARGUMENT, lambda: rollback(1, hour + 5))
        copy = rollback(1, hour - 2 * HOUR_MS)  # version 4, re-rating r1: 2 -> 1
        v = copy.version
        assert (v.version, v.state, v.based_on_version, v.rollback_to_version, v.rollback_from_version) == (
            4,
            pricing_pb2.PUBLISHED,
            1,
            1,
            2,
        )
        assert v.change_note.startswith("rollback of version 2 to version 1: ")
        assert (copy.buckets_rerated, copy.rerated_amount_delta) == (1, "-1")
        assert charges(client) == "1"
        assert rollback(1, hour - 2 * HOUR_MS).version == v  # a retry: the same copy
        expect_error(S.FAILED_PRECONDITION, lambda: rollback(1, hour - HOUR_MS))  # its copy is in force
        # A rollback of the rollback: back to version 2's prices from the same hour: version 5.
        back = rollback(2, hour - 2 * HOUR_MS).version
        assert (back.version, back.rollback_to_version, back.rollback_from_version) == (5, 2, 4)
        assert charges(client) == "2"
        entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="RollbackRateCard")).entries
        assert [e.target for e in entries] == [f"rate_card/{CARD}/version/4", f"rate_card/{CARD}/version/5"]
        diff = json.loads(entries[0].diff)
        assert (diff["version"], diff["rollback_from"], diff["rollback_to"]) == (4, 2, 1)


def test_diff_versions_fields_and_refusals(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        catalogue(client, this_hour_ms())
        assert draft(client, 1, [unit("p * 2", {"model": "m"})], {"p": "3"}) == 2
        assert draft(client, 2, [unit("1.5")], {"p": "4", "q": "1"}) == 3
        diff = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=2, to_version=3)
        )
        assert [(p.name, p.old_value, p.new_value, p.kind) for p in diff.parameters] == [
            ("p", "3", "4", pricing_pb2.CHANGED),
            ("q", "", "1", pricing_pb2.ADDED),
        ]
        # The catch-all first (CHANGED 1 -> 1.5), then {model: m} (REPRICED 6 -> 8).
        assert [(dict(r.key.match), r.kind) for r in diff.rates] == [
            ({}, pricing_pb2.CHANGED),
            ({"model": "m"}, pricing_pb2.REPRICED),
        ]
        fields = [
            (f.path, f.old_formula, f.new_formula, f.old_price, f.new_price, f.has_old, f.has_new)
            for r in diff.rates
            for f in r.fields
        ]
        assert fields == [
            ("unit.price", "1", "1.5", "1", "1.5", True, True),
            ("unit.price", "p * 2", "p * 2", "6", "8", True, True),
        ]
        same = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=3, to_version=3)
        )
        assert (list(same.parameters), list(same.rates)) == ([], [])
        for request, named in (
            (pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=1, to_version=9), "9"),
            (pricing_pb2.DiffVersionsRequest(rate_card_id="nope", from_version=1, to_version=2), "nope"),
        ):
            assert named in expect_error(S.NOT_FOUND, partial(client.pricing.DiffVersions, request))
        expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.DiffVersions(pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, to_version=2)),
        )


def test_simulate_changes_nothing(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour)
        ingest(client, work("x1", hour + 1, 4))
        v2 = draft(client, 1, [unit("0.25")])
        before_log = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest()).entries
        sim = client.pricing.SimulateVersion(
            pricing_pb2.SimulateVersionRequest(
                rate_card_id=CARD, version=v2, period_start=stamp(hour), period_end=stamp(hour + HOUR_MS)
            )
        )
        assert [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in sim.amounts] == [
            ("c", "units", "4", "1", "-3")
        ]
        assert charges(client) == "4"
        assert client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest()).entries == before_log
        assert client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=v2)).state == (
            pricing_pb2.DRAFT
        )
        bad = draft(client, 1, [unit("1 / 0", {"model": "x"})])
        expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.SimulateVersion(
                pricing_pb2.SimulateVersionRequest(
                    rate_card_id=CARD, version=bad, period_start=stamp(hour), period_end=stamp(hour + HOUR_MS)
                )
            ),
        )


def test_audit_log_time_bounds_start_included_end_excluded_and_paging(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client(actor="analyst") as client:
        catalogue(client, this_hour_ms())
        entries = list(client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest()).entries)
        assert [e.action for e in entries] == [
            "CreateProduct",
            "CreateRateCard",
            "CreateDraftVersion",
            "PublishVersion",
            "CreateCustomer",
            "CreateContract",
        ]
        assert {e.actor for e in entries} == {"analyst"}
        third = entries[2]
        at = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(start_time=third.time)).entries
        assert third.seq in [e.seq for e in at]  # start_time included
        below = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(end_time=third.time)).entries
        assert third.seq not in [e.seq for e in below]  # end_time excluded
        expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.GetAuditLog(
                pricing_pb2.GetAuditLogRequest(start_time=third.time, end_time=third.time)
            ),
        )
        page = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=4))
        assert [e.seq for e in page.entries] == [e.seq for e in entries[:4]]
        assert page.next_after_seq == entries[3].seq
        rest = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=4, after_seq=page.next_after_seq))
        assert [e.seq for e in rest.entries] == [e.seq for e in entries[4:]] and rest.next_after_seq == 0
        card = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target=f"rate_card/{CARD}")).entries
        assert [e.target for e in card] == [
            f"rate_card/{CARD}",
            f"rate_card/{CARD}/version/1",
            f"rate_card/{CARD}/version/1",
        ]


def graduated(first: str, rest: str) -> pricing_pb2.Rate:
    tiers = [pricing_pb2.Tier(up_to="10", unit_price=first), pricing_pb2.Tier(unit_price=rest)]
    return pricing_pb2.Rate(product_id="units", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers))


def test_rerating_prices_a_straddling_tier_over_the_periods_cumulative_quantity(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        v2 = draft(client, 1, [graduated("1", "0.5")])
        publish(client, v2, h0)  # from h0, nothing rated yet
        ingest(client, work("t0", h0 + 1, 6), work("t1", h1 + 1, 6))
        assert charges(client) == "11"  # 6 x 1, then 4 x 1 + 2 x 0.5
        v3 = draft(client, 1, [graduated("2", "1")])
        done = publish(client, v3, h1)
        # Hour h1 priced by v3 over the cumulative 12: price(12) - price(6) = (10 x 2 + 2 x 1) - 6 x 2 = 10.
        assert (done.buckets_rerated, done.events_rerated, done.rerated_amount_delta) == (1, 1, "5")
        assert charges(client) == "16"


def test_rerating_reaches_every_open_period_across_a_boundary(server_factory: ServerFactory) -> None:
    server = server_factory()
    last_month, this_month = month_start_ms(1), month_start_ms(0)
    with server.client() as client:
        catalogue(client, last_month)
        ingest(client, work("old", this_month - HOUR_MS, 2), work("new", this_month, 3))
        done = publish(client, draft(client, 1, [unit("5")]), last_month)
        assert (done.customers_rerated, done.buckets_rerated, done.events_rerated) == (1, 2, 2)
        assert (done.rerated_amount_delta, done.closed_buckets_left_alone, done.left_alone_reason) == ("20", 0, "")
        assert charges(client) == "15"


def test_a_cohort_publish_rerates_the_cohorts_usage_only(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - HOUR_MS)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="d", name="d"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-d", customer_id="d", rate_card_id=CARD, starting_at=stamp(hour - HOUR_MS)
            )
        )
        other = usage_pb2.UsageEvent(
            transaction_id="d1", customer_id="d", event_type="work", timestamp_ms=hour - 5, values={"n": 4}
        )
        ingest(client, work("c1", hour - 5, 4), other)
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, 1, [unit("3")]),
            effective_from=stamp(hour - HOUR_MS),
            cohort=pricing_pb2.Cohort(customer_ids=["c"]),
        )
        done = client.pricing.PublishVersion(request)
        assert (done.customers_rerated, done.buckets_rerated, done.rerated_amount_delta) == (1, 1, "8")
        assert (charges(client), client.get_balance("d").period_charges) == ("12", "4")
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 1
        unknown = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD, version=draft(client, 1, []), cohort=pricing_pb2.Cohort(customer_ids=["x1", "x2"])
        )
        message = expect_error(S.INVALID_ARGUMENT, lambda: client.pricing.PublishVersion(unknown))
        assert "x1" in message and "x2" in message


def test_audit_filters_by_actor_and_action_combined(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client(actor="builder") as client:
        catalogue(client, this_hour_ms())
    with server.client(actor="analyst") as client:
        draft(client, 1, [unit("2")])
        log = client.pricing.GetAuditLog
        mine = log(pricing_pb2.GetAuditLogRequest(actor="analyst")).entries
        assert [(e.action, e.target) for e in mine] == [("CreateDraftVersion", f"rate_card/{CARD}/version/2")]
        assert json.loads(mine[0].diff)["rate_card_id"] == CARD
        drafts = log(pricing_pb2.GetAuditLogRequest(action="CreateDraftVersion")).entries
        assert [e.actor for e in drafts] == ["builder", "analyst"]
        both = log(pricing_pb2.GetAuditLogRequest(action="CreateDraftVersion", actor="builder")).entries
        assert [e.target for e in both] == [f"rate_card/{CARD}/version/1"]
        assert list(log(pricing_pb2.GetAuditLogRequest(target="customer/", actor="analyst")).entries) == []


def test_simulate_walks_from_the_period_start_and_filters_customers(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    h0, h1 = hour - 2 * HOUR_MS, hour - HOUR_MS
    with server.client() as client:
        catalogue(client, h0)
        publish(client, draft(client, 1, [graduated("1", "0.5")]), h0)
        ingest(client, work("t0", h0 + 1, 6), work("t1", h1 + 1, 6))  # 6, then 5: 11
        v3 = draft(client, 1, [graduated("2", "1")])

        def simulate(*customers: str) -> list[tuple[str, str, str, str]]:
            request = pricing_pb2.SimulateVersionRequest(
                rate_card_id=CARD, version=v3, period_start=stamp(h1), period_end=stamp(hour), customer_ids=customers
            )
            response = client.pricing.SimulateVersion(request)
            total = response.totals
            rows = [(a.customer_id, a.current_amount, a.simulated_amount, a.delta) for a in response.amounts]
            return [*rows, ("total", total.current_amount, total.simulated_amount, total.delta)]

        # Only hour h1, but over the cumulative quantity from the period's start: v3's price(12) - price(6) = 10.
        assert simulate() == [("c", "5", "10", "5"), ("total", "5", "10", "5")]
        assert simulate("c") == [("c", "5", "10", "5"), ("total", "5", "10", "5")]
        assert charges(client) == "11"


def test_rerating_settles_draws_again_overage_first_then_reverse_burn_order(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - HOUR_MS, price="10")
        for grant_id, priority in (("first", 1), ("second", 2)):  # the lower priority number burns first
            grant = contracts_pb2.Grant(
                id=grant_id, contract_id="k-c", kind=contracts_pb2.PROMOTIONAL, amount="4", priority=priority
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        ingest(client, work("g1", hour - 5, 1))  # 10: first 4, second 4, overage 2

        def draws() -> tuple[str, str, str, str]:
            balance = client.get_balance("c")
            drawn = {g.grant_id: g.drawn for g in balance.grants}
            return balance.period_charges, drawn["first"], drawn["second"], balance.overage_amount

        assert draws() == ("10", "4", "4", "2")
        # 5: the overage 2 given back first, then 3 of the last-burnt grant.
        publish(client, draft(client, 1, [unit("5")]), hour - HOUR_MS)
        assert draws() == ("5", "4", "1", "0")
        # 12: drawn in burn order (second's 3 left), the rest (4) overage.
        publish(client, draft(client, 1, [unit("12")]), hour - HOUR_MS)
        assert draws() == ("12", "4", "4", "4")


def test_cohort_precedence_retries_and_a_rollback_around_a_cohort(server_factory: ServerFactory) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - 3 * HOUR_MS)  # 1 for everyone
        pilot = pricing_pb2.Cohort(customer_ids=["c"])

        def cohort_publish(version: int, from_ms: int, cohort: pricing_pb2.Cohort) -> pricing_pb2.RateCardVersion:
            request = pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=version, effective_from=stamp(from_ms), cohort=cohort
            )
            published: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
            return published.version

        first = cohort_publish(draft(client, 1, [unit("2")]), hour - 2 * HOUR_MS, pilot)  # version 2, c only
        assert cohort_publish(2, hour - 2 * HOUR_MS, pilot) == first  # a retry
        other = pricing_pb2.Cohort(customer_ids=["c"], attributes={"k": "v"})
        expect_error(S.FAILED_PRECONDITION, lambda: cohort_publish(2, hour - 2 * HOUR_MS, other))
        # Version 3 for everyone from the same hour, published later: it wins for c too.
        publish(client, draft(client, 1, [unit("3")]), hour - 2 * HOUR_MS)
        ingest(client, work("p1", hour - 2 * HOUR_MS + 1, 1))
        assert charges(client) == "3"
        # Version 4 for the pilot from the hour after: c pays 4 there.
        cohort_publish(draft(client, 1, [unit("4")]), hour - HOUR_MS, pilot)
        ingest(client, work("p2", hour - HOUR_MS + 1, 1))
        assert charges(client) == "7"
        # A rollback to version 1 from h-2h (outside cohorts, replacing 3): version 5; c keeps version 4 from h-1h
        # (newer-effective than the rollback's hour) and is priced by the copy (1) in h-2h: 1 + 4.
        copy = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(
                rate_card_id=CARD, to_version=1, effective_from=stamp(hour - 2 * HOUR_MS)
            )
        ).version
        assert (copy.version, copy.rollback_from_version, list(copy.cohort.customer_ids)) == (5, 3, [])
        assert charges(client) == "5"
        at = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=stamp(hour - HOUR_MS)))
        assert at.version == 5


def test_audit_time_bounds_between_milliseconds_are_compared_exactly(server_factory: ServerFactory) -> None:
    """An entry's time is a whole millisecond T. start_time T + 0.5 ms is after it (the entry is out: "at or after
    this time"), end_time T + 0.5 ms after it too (the entry is in: "before this time"); before the fix both
    bounds were truncated to T, so the first read found the entry and the second did not."""
    server = server_factory()
    with server.client() as client:
        catalogue(client, this_hour_ms())
        entry = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest()).entries[2]
        half_ms_after, later = timestamp_pb2.Timestamp(), timestamp_pb2.Timestamp()
        half_ms_after.FromNanoseconds(entry.time.ToNanoseconds() + 500_000)
        later.FromNanoseconds(entry.time.ToNanoseconds() + 700_000)
        log = client.pricing.GetAuditLog
        assert entry.seq not in [e.seq for e in log(pricing_pb2.GetAuditLogRequest(start_time=half_ms_after)).entries]
        assert entry.seq in [e.seq for e in log(pricing_pb2.GetAuditLogRequest(end_time=half_ms_after)).entries]
        # Two bounds inside one millisecond, the end after the start: a valid (empty) window, not INVALID_ARGUMENT.
        window = log(pricing_pb2.GetAuditLogRequest(start_time=half_ms_after, end_time=later))
        assert list(window.entries) == []


def test_a_price_field_out_of_its_range_is_named_with_its_value_as_a_plain_decimal(
    server_factory: ServerFactory,
) -> None:
    """The finding shows the evaluated value as the rest of the API writes decimals ("0", "-0.5"); before the fix
    it showed the 18-place quantized Decimal: "0E-18", "-0.500000000000000000"."""
    server = server_factory()
    with server.client() as client:
        catalogue(client, this_hour_ms())
        rates = [unit("1", {"model": "a"}, per_units="p - 2"), unit("p - 2.5", {"model": "b"})]
        version = draft(client, 1, rates, {"p": "2"})
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=version))
        assert [(f.path, f.message) for f in report.findings] == [
            ("rates[1].unit.per_units", "'p - 2' = 0 must be > 0"),
            ("rates[2].unit.price", "'p - 2.5' = -0.5 must be >= 0"),
        ]


def test_an_event_feeding_two_products_is_counted_once_and_a_retry_rerates_nothing(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    hour = this_hour_ms()
    with server.client() as client:
        catalogue(client, hour - 3 * HOUR_MS)
        also = pricing_pb2.Product(id="u2", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=also))
        u2 = pricing_pb2.Rate(product_id="u2", unit=pricing_pb2.UnitPrice(price="1"))
        publish(client, draft(client, 1, [u2]), hour - 3 * HOUR_MS)
        ingest(client, work("a1", hour + 1, 2), work("a2", hour + 2, 3))  # 5 units, each feeding both: 10
        assert charges(client) == "10"
        v3 = draft(client, 2, [unit("2"), pricing_pb2.Rate(product_id="u2", unit=pricing_pb2.UnitPrice(price="3"))])
        done = publish(client, v3, hour)  # 5 x 2 + 5 x 3 = 25
        counts = (done.customers_rerated, done.buckets_rerated, done.events_rerated, done.rerated_amount_delta)
        assert counts == (1, 2, 2, "15")
        again = publish(client, v3, hour)
        assert (again.customers_rerated, again.buckets_rerated, again.events_rerated) == (0, 0, 0)
        assert (again.rerated_amount_delta, charges(client)) == ("0", "25")
        # A rollback without effective_from: from the current hour, back to version 2's prices (10).
        copy = client.pricing.RollbackRateCard(pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=2))
        assert copy.version.effective_from.ToMilliseconds() == hour and copy.version.rollback_from_version == 3
        assert (copy.events_rerated, copy.rerated_amount_delta, charges(client)) == (2, "-15", "10")
