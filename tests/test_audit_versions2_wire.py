"""A second audit of rate-card versions over the wire (README "Changing prices safely", "### Cohorts";
pricing.proto PublishVersionRequest, RollbackRateCardRequest, SimulateVersionRequest; docs/architecture.md §5
"Re-rating and simulation"): a publish effective in the past re-rating open periods, rollbacks, simulations and
cohorts, together with contract price overrides, GRADUATED and VOLUME tiers with per_units and flat fees, late
events, closed periods and credits. Each scenario runs against a real server process; every amount asserted is
computed by hand in the docstring from the documents, never read back from the server.

Catalogue of test_audit_pricing_wire.py (product `units`, event type `work`, SUM of `n`, priced on model and region;
card `card` in USD; customer `c`, contract `k-c`), with the tiers below. A "late" event is ingested last though its
timestamp lies before usage already rated: rated on arrival, it is charged at the top of the period's quantity.

T, GRADUATED (<=100 at 1 + flat 10, <=200 at 0.5 + flat 5, then 0.1 + flat 2): p(50) = 60, p(100) = 110,
p(150) = 110 + 25 + 5 = 140, p(200) = 165. 50 units at the period's first hour, 100 two hours later, then 50 more
in the first hour arriving last are charged 60, p(150) - p(50) = 80 and p(200) - p(150) = 25: 165 = p(200)."""

from __future__ import annotations

import grpc
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory
from tests.test_audit_prices3_wire import counts, customer, override, tiered, used, version_at
from tests.test_audit_pricing_wire import (
    CARD,
    HOUR_MS,
    catalogue,
    charges,
    draft,
    expect_error,
    ingest,
    month_start_ms,
    publish,
    this_hour_ms,
    work,
)
from tests.test_audit_pricing_wire import (
    unit as unit_rate,
)

S = grpc.StatusCode
MINUTE_MS = 60_000
T = [("100", "1", "10"), ("200", "0.5", "5"), ("", "0.1", "2")]


def graduated_t(**match: str) -> pricing_pb2.Rate:
    return tiered(False, T, **match)


def late_event_usage(client: TariffClient, customer_id: str, start_ms: int, **dimensions: str) -> None:
    """50 units at start+1 ms, 100 at start+2h, then 50 at start+30 min arriving last (ids prefixed by customer)."""
    for name, at_ms, n in (
        ("a", start_ms + 1, 50),
        ("b", start_ms + 2 * HOUR_MS, 100),
        ("late", start_ms + 30 * MINUTE_MS, 50),
    ):
        ingest(client, used(customer_id, f"{customer_id}-{name}", at_ms, n, **dimensions))


def balance_of(client: TariffClient, customer_id: str) -> str:
    return str(client.get_balance(customer_id).period_charges)


def simulate(
    client: TariffClient, version: int, start_ms: int, end_ms: int, *customers: str
) -> list[tuple[str, str, str, str, str]]:
    """(customer, product, current, simulated, delta) of every amount, then the totals as ("total", "", ...)."""
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=CARD,
        version=version,
        period_start=stamp(start_ms),
        period_end=stamp(end_ms),
        customer_ids=customers,
    )
    answer = client.pricing.SimulateVersion(request)
    rows = [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts]
    t = answer.totals
    return [*rows, ("total", "", t.current_amount, t.simulated_amount, t.delta)]


def preview(client: TariffClient, customer_id: str, at_ms: int) -> invoices_pb2.Invoice:
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=stamp(at_ms))
    invoice: invoices_pb2.Invoice = client.invoices.PreviewInvoice(request)
    return invoice


def line_rows(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, list[tuple[int, str, str]]]]:
    """line_id -> (quantity, amount, [(version, quantity, amount) of each price part])."""
    return {
        line.line_id: (line.quantity, line.amount, [(p.version, p.quantity, p.amount) for p in line.prices])
        for line in invoice.lines
    }


def adjustment_rows(invoice: invoices_pb2.Invoice, line_id: str) -> list[tuple[int, list[int], int, str, str, str]]:
    """(hour ms, old versions, new version, old amount, new amount, delta) of the line's adjustments, oldest first."""
    (line,) = [line for line in invoice.lines if line.line_id == line_id]
    return [
        (a.hour.ToMilliseconds(), list(a.old_versions), a.new_version, a.old_amount, a.new_amount, a.delta)
        for a in line.adjustments
    ]


def test_a_same_price_publish_after_a_late_event_keeps_a_tiered_line_under_a_multiplier_override(
    server_factory: ServerFactory,
) -> None:
    """README: "a version with the very same prices leaves a tiered line as it was"; a same-price publish must not
    change what a customer owes, also when the contract overrides the product's price.

    c's contract (from s = h-5h) has a multiplier override 0.5 on `units` (contracts.proto: it "multiplies the
    amount the rate card's price gives for the period's cumulative quantity"). Version 2 = T from s, before usage.
    Usage as in the module docstring, rated with the override: 0.5 x 60 = 30, 0.5 x 80 = 40, 0.5 x 25 = 12.5;
    charges 82.5 = 0.5 x p(200).
    SimulateVersion of version 3 (T again) over [s+1h, h+1h): the line's first hour in the window (s+2h) priced
    0.5 x (p(200) - p(100)) = 27.5, "also carrying what the hours before were charged less than on time"
    (hour s: 0.5 x p(100) = 55 in time order, charged 30 + 12.5 = 42.5: 12.5): 40; current 40, delta 0.
    Publishing version 3 from s+1h: bucket s+2h is 40 again under version 3 (its version changed, its amount not):
    1 customer, 1 bucket, 1 event re-rated, delta "0"; charges 82.5. The open invoice's line: quantity 200, amount
    82.5, version 2's part 100 units 42.5, version 3's part 100 units 40; one adjustment (s+2h, [2] -> 3, 40 -> 40,
    delta 0)."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    with server.client() as client:
        catalogue(client, s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        override(client, "k-c", id="half", product_id="units", multiplier="0.5")
        late_event_usage(client, "c", s)
        assert charges(client) == "82.5"
        v3 = draft(client, 2, [graduated_t()])
        assert simulate(client, v3, s + HOUR_MS, hour + HOUR_MS) == [
            ("c", "units", "40", "40", "0"),
            ("total", "", "40", "40", "0"),
        ]
        done = publish(client, v3, s + HOUR_MS)
        assert counts(done) == (1, 1, 1, "0")
        assert charges(client) == "82.5"
        invoice = preview(client, "c", s)
        line_id = "units;model=;region="
        assert line_rows(invoice) == {line_id: ("200", "82.5", [(2, "100", "42.5"), (3, "100", "40")])}
        assert adjustment_rows(invoice, line_id) == [(s + 2 * HOUR_MS, [2], 3, "40", "40", "0")]


def test_an_override_of_other_dimension_values_does_not_stop_a_volume_line_from_keeping_its_charge(
    server_factory: ServerFactory,
) -> None:
    """The same promise for a VOLUME price with per_units and flat fees, on a line the contract's override does not
    even match (it overrides `units` for model=b only).

    Version 2 from s = h-5h, before usage: VOLUME per 10 units, <=100 at 2 + flat 10, then 1 + flat 50 (the tier
    the whole quantity reaches prices all of it, with its flat fee): p(Q) = 0.2 Q + 10 up to 100, 0.1 Q + 50 above;
    p(50) = 20, p(100) = 30, p(150) = 65, p(200) = 70. Override: multiplier 3 on `units` with match model=b.
    Line model=a (as the module docstring, model=a): 20, p(150) - p(50) = 45, p(200) - p(150) = 5: 70 = p(200).
    Line model=b: 10 units at s+3h, 3 x p(10) = 3 x (0.2 x 10 + 10) = 36. Charges 106.
    Version 3, the same prices, from s+1h: line a's bucket s+2h is priced p(200) - p(100) = 40 in time order, plus
    what hour s was charged less than that (p(100) = 30, charged 25: 5): 45, unchanged; line b's bucket s+3h is
    3 x p(10) = 36, unchanged. Both change version only: 1 customer, 2 buckets, 2 events, delta "0"; charges 106."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    volume = tiered(True, [("100", "2", "10"), ("", "1", "50")], "10")
    with server.client() as client:
        catalogue(client, s)
        publish(client, draft(client, 1, [volume]), s)
        override(client, "k-c", id="b-triple", product_id="units", match={"model": "b"}, multiplier="3")
        late_event_usage(client, "c", s, model="a")
        ingest(client, work("b-1", s + 3 * HOUR_MS, 10, model="b"))
        assert charges(client) == "106"
        done = publish(client, draft(client, 2, [volume]), s + HOUR_MS)
        assert counts(done) == (1, 2, 2, "0")
        assert charges(client) == "106"
        lines = line_rows(preview(client, "c", s))
        assert lines["units;model=a;region="] == ("200", "70", [(2, "100", "25"), (3, "100", "45")])
        assert lines["units;model=b;region="] == ("10", "36", [(3, "10", "36")])


def test_a_price_override_on_tiers_is_linear_and_a_cohort_publish_leaves_the_other_customer(
    server_factory: ServerFactory,
) -> None:
    """contracts.proto: a price override on a TIERED rate is "a flat unit price per the rate's per_units for the whole
    quantity; the tiers and their flat fees are dropped". Customer d (contract from s = h-5h) has price 0.4 on
    `units`: its usage (as the module docstring) is 20, 40, 20: 80. Customer c has no override: 60, 80, 25: 165.
    Version 2 = T from s, before usage.
    Version 3 (T again) published for the cohort {d} from s+1h: d's bucket s+2h is 0.4 x 100 = 40 (hour s
    carried nothing: 0.4 x 100 = 40 charged 20 + 20): unchanged amount, new version: 1 customer, 1 bucket, 1 event,
    delta "0". c, outside the cohort, keeps version 2 everywhere: its line's parts stay version 2's, 200 units 165.
    Version 4 = version 2 with the top tier at 0.2 (p(Q) for Q > 200 only: nothing here changes), published for
    everyone from s+1h: for c, bucket s+2h re-priced p(200) - p(100) = 55 plus the carry of hour s (p(100) = 110,
    charged 85: 25): 80, unchanged, version 4; for d, its cohort's version 3 is effective from the same hour but
    "of two effective at once, the later published" (4) wins: version 4, 40 unchanged. 2 customers, 2 buckets,
    2 events, delta "0"."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    with server.client() as client:
        catalogue(client, s)
        customer(client, "d", s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        override(client, "k-d", id="flat", product_id="units", price="0.4")
        late_event_usage(client, "c", s)
        late_event_usage(client, "d", s)
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("165", "80")
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, 2, [graduated_t()]),
            effective_from=stamp(s + HOUR_MS),
            cohort=pricing_pb2.Cohort(customer_ids=["d"]),
        )
        assert counts(client.pricing.PublishVersion(request)) == (1, 1, 1, "0")
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("165", "80")
        line_id = "units;model=;region="
        assert line_rows(preview(client, "c", s)) == {line_id: ("200", "165", [(2, "200", "165")])}
        assert line_rows(preview(client, "d", s)) == {line_id: ("200", "80", [(2, "100", "40"), (3, "100", "40")])}
        v4 = draft(client, 2, [tiered(False, [T[0], T[1], ("", "0.2", "2")])])
        assert counts(publish(client, v4, s + HOUR_MS)) == (2, 2, 2, "0")
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("165", "80")
        assert line_rows(preview(client, "c", s)) == {line_id: ("200", "165", [(2, "100", "85"), (4, "100", "80")])}
        assert line_rows(preview(client, "d", s)) == {line_id: ("200", "80", [(2, "100", "40"), (4, "100", "40")])}


def test_a_rise_and_its_rollback_after_a_late_event_move_a_line_and_its_grant_by_the_same_amount(
    server_factory: ServerFactory,
) -> None:
    """Version 2 = T from s = h-5h, before usage; c holds a PREPAID grant of 100. Usage as the module docstring:
    165, the grant drawn 100, overage 65.
    Version 3 = T with unit prices doubled (<=100 at 2 + 10, <=200 at 1 + 5, then 0.2 + 2): p3(100) = 210,
    p3(200) = 315. SimulateVersion of version 3 over [s+1h, h+1h): bucket s+2h priced p3(200) - p3(100) = 105 plus
    the carry of hour s (priced by version 2 in time order: p(100) = 110, charged 85: 25): 130; current 80, delta 50.
    Publishing version 3 from s+1h re-rates to that: 1 customer, 1 bucket, 1 event, delta "50"; charges 215 (what
    rating on time with the new timeline charges: p(100) + p3(200) - p3(100) = 110 + 105), the grant still 100,
    overage 115. Adjustment (s+2h, [2] -> 3, 80 -> 130, 50).
    RollbackRateCard to version 2 from s+1h: version 4, a copy of version 2 (rollback_from 3, rollback_to 2),
    re-rates bucket s+2h to p(200) - p(100) + 25 = 80: delta "-50", charges 165, overage 65 (a cut gives back
    overage first). The line's adjustments, oldest first: (s+2h, [2] -> 3, 80 -> 130, 50) and
    (s+2h, [3] -> 4, 130 -> 80, -50). A retry of the rollback answers version 4 with zero counts, delta "0"."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    with server.client() as client:
        catalogue(client, s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        grant = contracts_pb2.Grant(id="pre", contract_id="k-c", kind=contracts_pb2.PREPAID, amount="100", priority=1)
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        late_event_usage(client, "c", s)

        def money() -> tuple[str, str, str]:
            balance = client.get_balance("c")
            (drawn,) = [g.drawn for g in balance.grants if g.grant_id == "pre"]
            return str(balance.period_charges), str(drawn), str(balance.overage_amount)

        assert money() == ("165", "100", "65")
        v3 = draft(client, 2, [tiered(False, [("100", "2", "10"), ("200", "1", "5"), ("", "0.2", "2")])])
        assert simulate(client, v3, s + HOUR_MS, hour + HOUR_MS, "c") == [
            ("c", "units", "80", "130", "50"),
            ("total", "", "80", "130", "50"),
        ]
        assert counts(publish(client, v3, s + HOUR_MS)) == (1, 1, 1, "50")
        assert money() == ("215", "100", "115")
        rollback = pricing_pb2.RollbackRateCardRequest(
            rate_card_id=CARD, to_version=2, effective_from=stamp(s + HOUR_MS)
        )
        done = client.pricing.RollbackRateCard(rollback)
        copy = done.version
        assert (copy.version, copy.rollback_from_version, copy.rollback_to_version) == (4, 3, 2)
        assert counts(done) == (1, 1, 1, "-50")
        assert money() == ("165", "100", "65")
        adjustments = adjustment_rows(preview(client, "c", s), "units;model=;region=")
        assert adjustments == [
            (s + 2 * HOUR_MS, [2], 3, "80", "130", "50"),
            (s + 2 * HOUR_MS, [3], 4, "130", "80", "-50"),
        ]
        again = client.pricing.RollbackRateCard(rollback)
        assert (again.version.version, counts(again)) == (4, (0, 0, 0, "0"))
        assert money() == ("165", "100", "65")


def test_a_closed_period_is_left_alone_and_a_late_events_hour_re_rated_in_the_open_one_prices_it_on_time(
    server_factory: ServerFactory,
) -> None:
    """Contract from M2 (the start of the month before last); version 2 = T from M2, before usage. Period M2:
    30 units at M2+1h, p(30) = 40; closed. Period M1 (last month, open: the test server closes nothing by itself):
    the module docstring's usage from M1, 60 + 80 + 25 = 165. A late event dated in the closed period is refused
    PERIOD_CLOSED, changing nothing.
    Version 3 (T again) from M2: the closed period's bucket is left alone and counted (1 bucket, 1 event, "40", with
    a reason); in M1 both buckets are re-rated in time order, the late event's hour included: hour M1 p(100) = 110
    (was 60 + 25 = 85), hour M1+2h p(200) - p(100) = 55 (was 80): 2 buckets, 3 events, delta "0". M1's line stays
    200 units, 165, all of it version 3's; its adjustments (M1, [2] -> 3, 85 -> 110, 25) and (M1+2h, [2] -> 3,
    80 -> 55, -25). M2's invoice is final: 40 by version 2, no adjustments."""
    server = server_factory()
    m2, m1 = month_start_ms(2), month_start_ms(1)
    with server.client() as client:
        catalogue(client, m2)
        publish(client, draft(client, 1, [graduated_t()]), m2)
        ingest(client, work("old", m2 + HOUR_MS, 30))
        closed = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="c", period_start=stamp(m2)))
        late_event_usage(client, "c", m1)
        ack = client.ingest_batch([work("too-late", m2 + 2 * HOUR_MS, 5)], batch_id="b-too-late")
        assert (ack.accepted, [r.reason for r in ack.rejected]) == (0, [usage_pb2.PERIOD_CLOSED])
        done = publish(client, draft(client, 2, [graduated_t()]), m2)
        assert (done.closed_buckets_left_alone, done.closed_events_left_alone, done.closed_amount_left_alone) == (
            1,
            1,
            "40",
        )
        assert done.left_alone_reason
        assert counts(done) == (1, 2, 3, "0")
        line_id = "units;model=;region="
        open_invoice = preview(client, "c", m1)
        assert line_rows(open_invoice) == {line_id: ("200", "165", [(3, "200", "165")])}
        assert adjustment_rows(open_invoice, line_id) == [
            (m1, [2], 3, "85", "110", "25"),
            (m1 + 2 * HOUR_MS, [2], 3, "80", "55", "-25"),
        ]
        closed = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=closed.invoice_number))
        assert line_rows(closed) == {line_id: ("30", "40", [(2, "30", "40")])}
        assert adjustment_rows(closed, line_id) == []


def test_publish_and_simulate_refuse_a_version_without_a_rate_naming_the_product_and_change_nothing(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto: a publish is refused with FAILED_PRECONDITION, changing nothing, when affected usage "has no
    rate in this version"; SimulateVersion refuses the same usage, "naming the customer, the product and the hour"
    (it named the product and the hour only). Version 2 =
    T for model=a only, published from s = h-5h before usage; 10 units of model=a at s+1h: p(10) = 20. Version 3
    prices only model=b (version 2's rate removed): from s it is refused, charges stay 20, the card's
    current_version stays 2; from h+1h (after all usage) it publishes, re-rating nothing."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    with server.client() as client:
        catalogue(client, s)
        remove_catch_all = pricing_pb2.RateKey(product_id="units")
        request = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD,
            based_on_version=1,
            upsert_rates=[graduated_t(model="a")],
            remove_rates=[remove_catch_all],
        )
        v2 = client.pricing.CreateDraftVersion(request).version
        publish(client, v2, s)
        ingest(client, work("a-1", s + HOUR_MS, 10, model="a"))
        assert charges(client) == "20"
        request = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD,
            based_on_version=v2,
            upsert_rates=[graduated_t(model="b")],
            remove_rates=[pricing_pb2.RateKey(product_id="units", match={"model": "a"})],
        )
        v3 = client.pricing.CreateDraftVersion(request).version
        message = expect_error(S.FAILED_PRECONDITION, lambda: publish(client, v3, s))
        assert "units" in message
        message = expect_error(S.FAILED_PRECONDITION, lambda: simulate(client, v3, s, hour))
        assert "units" in message and 'customer "c"' in message and str(s + HOUR_MS) in message
        assert charges(client) == "20"
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).current_version == 2
        assert counts(publish(client, v3, hour + HOUR_MS)) == (0, 0, 0, "0")
        assert charges(client) == "20"


def test_an_override_added_after_earlier_hours_were_rated_is_carried_into_the_line_by_a_later_publish(
    server_factory: ServerFactory,
) -> None:
    """README: a line's first re-rated hour carries what the hours before effective_from were charged less than
    rating its events on time "with the new timeline and the contract's price overrides as they are now" charges;
    an override added after those hours were rated is carried in too, as a publish from the period's start would
    apply it to them.

    Version 2 = T from s = h-5h, before usage. 50 units at s+1 ms: p(50) = 60. Then a multiplier override 0.5 on
    `units` (no window: from the contract's start; it prices only the usage rated after it). 100 units at s+2h:
    0.5 x (p(150) - p(50)) = 40. Charges 100.
    Version 3 (T again) from s+1h: bucket s+2h is 0.5 x (p(150) - p(50)) = 40 in time order, plus what hour s
    was charged less than it prices at now (0.5 x p(50) = 30, charged 60: -30): 10. The line is 0.5 x p(150) = 70:
    1 customer, 1 bucket, 1 event, delta "-30"; hour s keeps its 60 (no adjustment for it)."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    with server.client() as client:
        catalogue(client, s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        ingest(client, work("a", s + 1, 50))
        override(client, "k-c", id="half", product_id="units", multiplier="0.5")
        ingest(client, work("b", s + 2 * HOUR_MS, 100))
        assert charges(client) == "100"
        assert counts(publish(client, draft(client, 2, [graduated_t()]), s + HOUR_MS)) == (1, 1, 1, "-30")
        assert charges(client) == "70"
        invoice = preview(client, "c", s)
        line_id = "units;model=;region="
        assert line_rows(invoice) == {line_id: ("150", "70", [(2, "50", "60"), (3, "100", "10")])}
        assert adjustment_rows(invoice, line_id) == [(s + 2 * HOUR_MS, [2], 3, "40", "10", "-30")]


def test_an_hour_before_effective_from_split_by_an_override_off_the_hour_is_not_carried(
    server_factory: ServerFactory,
) -> None:
    """README: the earlier hours are not carried where one of them holds, off the hour, the start or end of a
    matching price override (its bucket cannot tell which units the override priced); only re-rating such an hour
    is refused. Version 2 = T from s = h-5h, before usage; a multiplier override 0.5 on `units` from s+30 min.
    50 units at s+1 ms (before it): p(50) = 60; 100 at s+2h: 0.5 x (p(150) - p(50)) = 40; 50 at s+40 min arriving
    last: 0.5 x (p(200) - p(150)) = 12.5. Charges 112.5.
    Version 3 (T again) from s+1h is not refused (hour s is only walked) and carries nothing: bucket s+2h is
    0.5 x (p(200) - p(100)) = 27.5: delta "-12.5", charges 100. From s it is refused (FAILED_PRECONDITION naming
    the product), changing nothing."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    with server.client() as client:
        catalogue(client, s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        override(client, "k-c", id="half", product_id="units", multiplier="0.5", starting_at=stamp(s + 30 * MINUTE_MS))
        ingest(client, work("a", s + 1, 50))
        ingest(client, work("b", s + 2 * HOUR_MS, 100))
        ingest(client, work("late", s + 40 * MINUTE_MS, 50))
        assert charges(client) == "112.5"
        v3 = draft(client, 2, [graduated_t()])
        message = expect_error(S.FAILED_PRECONDITION, lambda: publish(client, v3, s))
        assert "units" in message
        assert charges(client) == "112.5"
        assert counts(publish(client, v3, s + HOUR_MS)) == (1, 1, 1, "-12.5")
        assert charges(client) == "100"


def test_a_cohort_version_a_later_publish_for_everyone_and_a_rollback_at_the_same_hour_after_late_events(
    server_factory: ServerFactory,
) -> None:
    """Customers c and d (contracts from s = h-5h), version 2 = T from s, before usage; each has the module
    docstring's usage: 165 each. T2 = T with unit prices doubled: p2(100) = 210, p2(200) = 315.
    - SimulateVersion of version 3 (T2) over [s+1h, h+1h), no customer named: "every customer with usage", each
      bucket s+2h p2(200) - p2(100) = 105 plus the carry of hour s (p(100) = 110, charged 85: 25): 130, current 80,
      delta 50; totals 160, 260, 100.
    - Version 3 published for the cohort {d} from s+1h re-rates d only: 1 customer, 1 bucket, 1 event, "50";
      c 165, d 215.
    - RollbackRateCard to version 2 from s+1h is refused: version 2 is in force there outside cohorts
      (FAILED_PRECONDITION naming version 2), changing nothing.
    - Version 4 (T2) for everyone from s+1h: c's bucket 80 -> 130; d's, whose cohort version 3 is effective from
      the same hour, goes to version 4 ("of two effective at once, the later published") at the same 130: 2
      customers, 2 buckets, 2 events, "50"; c 215, d 215.
    - RollbackRateCard to version 2 from s+1h: version 5, a copy of version 2 for everyone outside cohorts,
      rollback_from 4; it is the later published of the three versions effective at s+1h, so it prices d too:
      both buckets back to p(200) - p(100) + 25 = 80: 2 customers, 2 buckets, 2 events, "-100"; 165 each. d's line:
      version 2's part 100 units 85, version 5's 100 units 80; its adjustments (s+2h, [2] -> 3, 80 -> 130),
      ([3] -> 4, 130 -> 130), ([4] -> 5, 130 -> 80). GetVersion at s+1h is version 5."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    t2 = [("100", "2", "10"), ("200", "1", "5"), ("", "0.2", "2")]
    with server.client() as client:
        catalogue(client, s)
        customer(client, "d", s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        late_event_usage(client, "c", s)
        late_event_usage(client, "d", s)
        v3 = draft(client, 2, [tiered(False, t2)])
        assert simulate(client, v3, s + HOUR_MS, hour + HOUR_MS) == [
            ("c", "units", "80", "130", "50"),
            ("d", "units", "80", "130", "50"),
            ("total", "", "160", "260", "100"),
        ]
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=v3,
            effective_from=stamp(s + HOUR_MS),
            cohort=pricing_pb2.Cohort(customer_ids=["d"]),
        )
        assert counts(client.pricing.PublishVersion(request)) == (1, 1, 1, "50")
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("165", "215")
        rollback = pricing_pb2.RollbackRateCardRequest(
            rate_card_id=CARD, to_version=2, effective_from=stamp(s + HOUR_MS)
        )
        message = expect_error(S.FAILED_PRECONDITION, lambda: client.pricing.RollbackRateCard(rollback))
        assert "version 2" in message
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("165", "215")
        assert counts(publish(client, draft(client, 2, [tiered(False, t2)]), s + HOUR_MS)) == (2, 2, 2, "50")
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("215", "215")
        done = client.pricing.RollbackRateCard(rollback)
        assert (done.version.version, done.version.rollback_from_version, done.version.rollback_to_version) == (5, 4, 2)
        assert counts(done) == (2, 2, 2, "-100")
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("165", "165")
        line_id = "units;model=;region="
        invoice = preview(client, "d", s)
        assert line_rows(invoice) == {line_id: ("200", "165", [(2, "100", "85"), (5, "100", "80")])}
        at = s + 2 * HOUR_MS
        assert adjustment_rows(invoice, line_id) == [
            (at, [2], 3, "80", "130", "50"),
            (at, [3], 4, "130", "130", "0"),
            (at, [4], 5, "130", "80", "-50"),
        ]
        assert version_at(client, s + HOUR_MS) == 5


def test_a_late_event_rated_across_a_version_change_is_brought_to_the_on_time_amount_by_a_same_price_publish(
    server_factory: ServerFactory,
) -> None:
    """docs/architecture.md §5: an event is charged price(aggregate after) - price(aggregate before) with the curve of
    the version in force at its own timestamp, so a late event dated before a version change is charged by the old
    curve at the top of a quantity the new one priced; README: a publish's first re-rated hour carries what the
    hours before were charged less than on time, "so the line is what rating its events on time with the new
    timeline ... charges". T2 = T with unit prices doubled: p2(50) = 110, p2(100) = 210, p2(150) = 265,
    p2(200) = 315.
    Version 2 = T from s = h-5h, before usage. 50 units at s+1 ms: 60; 100 at s+2h: p(150) - p(50) = 80; 140.
    Version 3 = T2 from s+1h: bucket s+2h is p2(150) - p2(50) = 155 (hour s walked at p(50) = 60, as charged: no
    carry): 1 customer, 1 bucket, 1 event, "75"; 215.
    50 units at s+30 min arrive last: version 2 prices them, p(200) - p(150) = 25; 240.
    SimulateVersion of version 4 (T2 again) over [s+1h, h+1h): p2(200) - p2(100) = 105 plus hour s's shortfall
    (p(100) = 110, charged 85: 25): 130 against 155, delta -25. Publishing it from s+1h does so: "-25", 215 =
    p(100) + p2(200) - p2(100), what rating the events on time with this timeline charges."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    t2 = [("100", "2", "10"), ("200", "1", "5"), ("", "0.2", "2")]
    with server.client() as client:
        catalogue(client, s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        ingest(client, work("a", s + 1, 50))
        ingest(client, work("b", s + 2 * HOUR_MS, 100))
        assert charges(client) == "140"
        assert counts(publish(client, draft(client, 2, [tiered(False, t2)]), s + HOUR_MS)) == (1, 1, 1, "75")
        assert charges(client) == "215"
        ingest(client, work("late", s + 30 * MINUTE_MS, 50))
        assert charges(client) == "240"
        v4 = draft(client, 3, [])
        assert simulate(client, v4, s + HOUR_MS, hour + HOUR_MS) == [
            ("c", "units", "155", "130", "-25"),
            ("total", "", "155", "130", "-25"),
        ]
        assert counts(publish(client, v4, s + HOUR_MS)) == (1, 1, 1, "-25")
        assert charges(client) == "215"


def test_the_carry_under_a_multiplier_that_rounds_keeps_the_line_to_the_last_pico(
    server_factory: ServerFactory,
) -> None:
    """contracts.proto: a multiplier's product "is rounded to 10^-12 once" (each side of a charge: docs/architecture.md
    §5 step 6), so a line's charges telescope to round(m x p(Q)). m = 0.333333333333333333 on `units`; version 2 = T
    from s = h-5h, before usage; the module docstring's usage: round(60 m) = 20, round(140 m) - 20 =
    46.666666666667 - 20 = 26.666666666667, round(165 m) - 46.666666666667 = 55 - 46.666666666667 = 8.333333333333:
    55. Version 3 (T again) from s+1h: bucket s+2h is round(165 m) - round(110 m) = 55 - 36.666666666667 =
    18.333333333333, plus hour s's shortfall 36.666666666667 - (20 + 8.333333333333) = 8.333333333334:
    26.666666666667, unchanged: 1 customer, 1 bucket, 1 event, "0"; charges 55."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    with server.client() as client:
        catalogue(client, s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        override(client, "k-c", id="third", product_id="units", multiplier="0.333333333333333333")
        late_event_usage(client, "c", s)
        assert charges(client) == "55"
        assert counts(publish(client, draft(client, 2, [graduated_t()]), s + HOUR_MS)) == (1, 1, 1, "0")
        assert charges(client) == "55"
        invoice = preview(client, "c", s)
        line_id = "units;model=;region="
        assert adjustment_rows(invoice, line_id) == [
            (s + 2 * HOUR_MS, [2], 3, "26.666666666667", "26.666666666667", "0")
        ]


def test_a_publish_over_a_closed_period_between_two_open_ones_leaves_its_draws_and_settles_the_others_again(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto: "Usage in closed periods is left alone"; the customer's draws "in those periods" (the open ones
    re-rated) "are settled again ... a higher one draws in burn order, the rest overage"; a closed period's invoice
    is final. Contract from M3 (three month starts back), version 1 at 1 a unit; a PREPAID grant of 10 (from the
    contract's start, no expiry). M3: 3 units (3 drawn); M2: 4 units (4 drawn), then M2 closed (M3 left open);
    M1: 5 units (3 drawn, 2 overage).
    Version 2 at 2 a unit from M3: M2's bucket is left alone (1 bucket, 1 event, "4"); M3's and M1's are re-rated
    (2 buckets, 2 events, delta 6 + 10 - 3 - 5 = "8"). Settled again in time order: M3's 6 drawn from the grant,
    M2 keeps its 4, so the grant is spent (10 drawn, 0 left) and M1's 10 is all overage. M2's final invoice still
    shows 4, drawn 4, nothing overage."""
    server = server_factory()
    m3, m2, m1 = month_start_ms(3), month_start_ms(2), month_start_ms(1)
    with server.client() as client:
        catalogue(client, m3)
        grant = contracts_pb2.Grant(id="pre", contract_id="k-c", kind=contracts_pb2.PREPAID, amount="10", priority=1)
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        ingest(client, work("p3", m3 + HOUR_MS, 3))
        ingest(client, work("p2", m2 + HOUR_MS, 4))
        ingest(client, work("p1", m1 + HOUR_MS, 5))
        closed = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="c", period_start=stamp(m2)))
        assert (closed.subtotal, closed.overage_amount) == ("4", "0")

        def period(at_ms: int) -> tuple[str, str]:
            invoice = preview(client, "c", at_ms)
            return invoice.subtotal, invoice.overage_amount

        assert (period(m3), period(m1)) == (("3", "0"), ("5", "2"))
        done = publish(client, draft(client, 1, [unit_rate("2")]), m3)
        assert (done.closed_buckets_left_alone, done.closed_events_left_alone, done.closed_amount_left_alone) == (
            1,
            1,
            "4",
        )
        assert counts(done) == (1, 2, 2, "8")
        assert (period(m3), period(m1)) == (("6", "0"), ("10", "10"))
        balance = client.get_balance("c")
        (pre,) = [g for g in balance.grants if g.grant_id == "pre"]
        assert (pre.drawn, pre.remaining) == ("10", "0")
        final = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=closed.invoice_number))
        assert (final.subtotal, final.overage_amount) == ("4", "0")
        assert [(g.grant_id, g.drawn) for g in final.grant_balances] == [("pre", "7")]


def test_a_rollback_leaves_a_cohort_member_to_its_newer_effective_cohort_version(server_factory: ServerFactory) -> None:
    """README "Cohorts": "A rollback publishes its copy for everyone outside cohorts: a cohort member keeps its
    cohort's version when that one is newer-effective than the rollback's hour." T2 = T with unit prices doubled
    (p2(100) = 210, p2(200) = 315). Customers c and d (from s = h-5h), version 2 = T from s, before usage; each has
    the module docstring's usage: 165 each.
    - Version 3 = T2 for everyone from s+1h: each bucket s+2h p2(200) - p2(100) + 25 (hour s's shortfall: p(100) =
      110, charged 85) = 130, was 80: 2 customers, 2 buckets, 2 events, "100"; 215 each.
    - Version 4 = T for the cohort {d} from s+2h: d's bucket s+2h p(200) - p(100) + 25 = 80: 1, 1, 1, "-50"; d 165.
    - RollbackRateCard to version 2 from s+1h: version 5 (rollback_from 3) prices c's bucket s+2h at 80 again; d
      keeps version 4, newer-effective (s+2h) than the rollback's hour: 1 customer, 1 bucket, 1 event, "-50";
      165 each. d's line: version 2's part 100 units 85, version 4's 100 units 80; c's: version 2's 85, version 5's
      80."""
    server = server_factory()
    hour = this_hour_ms()
    s = hour - 5 * HOUR_MS
    t2 = [("100", "2", "10"), ("200", "1", "5"), ("", "0.2", "2")]
    with server.client() as client:
        catalogue(client, s)
        customer(client, "d", s)
        publish(client, draft(client, 1, [graduated_t()]), s)
        late_event_usage(client, "c", s)
        late_event_usage(client, "d", s)
        assert counts(publish(client, draft(client, 2, [tiered(False, t2)]), s + HOUR_MS)) == (2, 2, 2, "100")
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("215", "215")
        request = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, 2, []),
            effective_from=stamp(s + 2 * HOUR_MS),
            cohort=pricing_pb2.Cohort(customer_ids=["d"]),
        )
        assert counts(client.pricing.PublishVersion(request)) == (1, 1, 1, "-50")
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("215", "165")
        rollback = pricing_pb2.RollbackRateCardRequest(
            rate_card_id=CARD, to_version=2, effective_from=stamp(s + HOUR_MS)
        )
        done = client.pricing.RollbackRateCard(rollback)
        assert (done.version.version, done.version.rollback_from_version, done.version.rollback_to_version) == (5, 3, 2)
        assert counts(done) == (1, 1, 1, "-50")
        assert (balance_of(client, "c"), balance_of(client, "d")) == ("165", "165")
        line_id = "units;model=;region="
        assert line_rows(preview(client, "d", s)) == {line_id: ("200", "165", [(2, "100", "85"), (4, "100", "80")])}
        assert line_rows(preview(client, "c", s)) == {line_id: ("200", "165", [(2, "100", "85"), (5, "100", "80")])}
