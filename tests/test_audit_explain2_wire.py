"""A second acceptance audit of invoices, ExplainLineItem and revenue over the wire (README "Invoices and revenue",
"Why was I charged this?", "Revenue"; invoices.proto), looking where the earlier audits did not: tiered lines
re-rated after late events, explain's sum after a re-rating that spans two open periods, and revenue of a grant
bought at a price other than its amount that is partly drawn, partly given back and partly broken.

Every amount asserted is worked out by hand from the documents (arithmetic in each docstring). Periods are long
over (2026-01), or last month's and this month's where a grant must expire by the server's clock; the servers run
with `--close-grace off`, so nothing closes by itself."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_explain_wire import (
    TIERS,
    card,
    check_sums,
    customer,
    event,
    every_page,
    ingest,
    product,
    unit,
)
from tests.test_audit_invoices2_wire import month_start
from tests.test_audit_invoices_wire import JAN, ms, ts

CARD = "explain-card"


def preview(client: TariffClient, who: str, period_ms: int = JAN) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id=who, period_start=ts(period_ms))
    )
    return found


def graduated(product_id: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(
        product_id=product_id, tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=TIERS)
    )


def publish(client: TariffClient, rates: list[pricing_pb2.Rate], from_ms: int) -> pricing_pb2.PublishVersionResponse:
    """A version based on version 1 with `rates` upserted (none: version 1's very rates), published from `from_ms`."""
    version = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=rates)
    ).version
    found: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version, effective_from=ts(from_ms))
    )
    return found


def rerated(reply: pricing_pb2.PublishVersionResponse) -> tuple[int, int, int, int, str]:
    """The reply's version, customers, buckets and events re-rated, and the net change."""
    return (reply.version.version, reply.customers_rerated, reply.buckets_rerated, reply.events_rerated,
            reply.rerated_amount_delta)  # fmt: skip


def parts_and_adjustments(line: invoices_pb2.InvoiceLine) -> tuple[list[tuple[object, ...]], list[tuple[object, ...]]]:
    return (
        [(p.version, p.quantity, p.amount, p.unit_price, p.events) for p in line.prices],
        [(list(a.old_versions), a.new_version, a.old_amount, a.new_amount, a.delta) for a in line.adjustments],
    )


def test_a_publish_after_a_late_event_charges_a_graduated_line_what_rating_on_time_would(
    server_factory: ServerFactory,
) -> None:
    """GRADUATED (pricing.proto; <=100: 1 a unit + flat 10, <=200: 0.5 + flat 5, above: 0.1 + flat 2) prices the
    period's quantity: p(50) = 60, p(100) = 110, p(150) = 110 + 25 + 5 = 140, p(200) = 165. Events, rated as they
    arrive over the cumulative quantity: a (Jan 5 10:00, 50) 60; b (Jan 7 10:00, 100) p(150) - p(50) = 80; then
    late (Jan 5 10:30, 50, in a's hour) p(200) - p(150) = 25. The line: 200 units, 165 = p(200).

    v2, version 1's very rates, from Jan 6: every hour's price is what it was, so the line still charges 165.
    Rated on time Jan 5 would be p(100) = 110 and Jan 7 p(200) - p(100) = 55. Jan 5, before effective_from, keeps
    its 85 (60 + 25), so Jan 7 is p(200) - p(100) = 55 plus what Jan 5 was charged less than on time (110 - 85 =
    25): 80, as before (before the fix it was 55: the line 140, 25 less for the same usage at the same prices).
    Adjustment [1] -> 2, 80 -> 80, delta 0; the reply: 1 customer, 1 bucket, 1 event (b) re-rated, net change 0.
    v3 from Jan 6 doubles every price: p3(100) = 220, p3(200) = 220 + 100 + 10 = 330. Jan 7: 330 - 220 + 25 = 135
    (delta +55, the reply's net change); the line 85 + 135 = 220, what rating on time would charge (110 at v1 on
    Jan 5, 110 at v3 on Jan 7). Parts: v1 100 units of 2 events 85 (0.85), v3 100 units of 1 event 135 (1.35).
    Explain: a 60, b 80, late 25 (each as charged), then the adjustments 0 and +55: 220. ClosePeriod's final
    invoice is the draft (but number, status and closed_at); a kill -9 and a restart replay the journal to the
    same line and the same explain pages."""
    doubled = [pricing_pb2.Tier(up_to=t.up_to, unit_price=str(2 * Decimal(t.unit_price)),
                                flat_price=str(2 * Decimal(t.flat_price))) for t in TIERS]  # fmt: skip
    server = server_factory()
    with server.client() as client:
        product(client, "grad")
        card(client, [graduated("grad")])
        customer(client, "late")
        ingest(client, "late-1", event("a", "late", "grad", "2026-01-05T10:00:00", 50, k="x"))
        ingest(client, "late-2", event("b", "late", "grad", "2026-01-07T10:00:00", 100, k="x"))
        ingest(client, "late-3", event("late", "late", "grad", "2026-01-05T10:30:00", 50, k="x"))
        [line] = preview(client, "late").lines
        assert (line.quantity, line.amount) == ("200", "165")
        assert rerated(publish(client, [], ms("2026-01-06T00:00:00"))) == (2, 1, 1, 1, "0")
        [line] = preview(client, "late").lines
        assert (line.quantity, line.amount) == ("200", "165"), line
        assert parts_and_adjustments(line) == (
            [(1, "100", "85", "0.85", 2), (2, "100", "80", "0.8", 1)], [([1], 2, "80", "80", "0")]
        )  # fmt: skip
        doubled_rate = pricing_pb2.Rate(
            product_id="grad", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=doubled)
        )
        assert rerated(publish(client, [doubled_rate], ms("2026-01-06T00:00:00"))) == (3, 1, 1, 1, "55")
        [line] = preview(client, "late").lines
        assert (line.quantity, line.amount, line.overage, line.amount_due) == ("200", "220", "220", "220.00")
        assert parts_and_adjustments(line) == (
            [(1, "100", "85", "0.85", 2), (3, "100", "135", "1.35", 1)],
            [([1], 2, "80", "80", "0"), ([2], 3, "80", "135", "55")],
        )
        entries, last = every_page(client, "late", "grad;k=x", 2)
        assert [(e.transaction_id, e.version, e.amount) for e in entries] == [
            ("a", 1, "60"), ("b", 1, "80"), ("late", 1, "25"), ("", 2, "0"), ("", 3, "55")
        ]  # fmt: skip
        assert (last.line_amount, last.line_quantity) == ("220", "200")
        check_sums(entries, last)
        draft = preview(client, "late")
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="late", period_start=ts(JAN)))
        assert (final.status, final.total_due) == (invoices_pb2.INVOICE_FINAL, "220.00")
        for field in ("invoice_number", "status", "closed_at"):
            final.ClearField(field)
            draft.ClearField(field)
        assert final == draft  # draft = final, the carried adjustment included
    server.kill9()
    server.start()
    with server.client() as client:
        assert [(line.amount, *parts_and_adjustments(line)) for line in preview(client, "late").lines] == [
            ("220", [(1, "100", "85", "0.85", 2), (3, "100", "135", "1.35", 1)],
             [([1], 2, "80", "80", "0"), ([2], 3, "80", "135", "55")])
        ]  # fmt: skip
        assert every_page(client, "late", "grad;k=x", 0)[0] == entries


def used(tx: str, who: str, at_ms: int, n: float) -> usage_pb2.UsageEvent:
    """An event of `use` (no dimension) at `at_ms`."""
    return usage_pb2.UsageEvent(
        transaction_id=tx, customer_id=who, event_type="use", timestamp_ms=at_ms, values={"n": n}
    )


def revenue(client: TariffClient, who: str, start_ms: int, end_ms: int) -> invoices_pb2.RevenueReport:
    found: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(period_start=ts(start_ms), period_end=ts(end_ms), customer_id=who)
    )
    return found


def wait_for_breakage(client: TariffClient, who: str, span: tuple[int, int], breakage: str) -> None:
    """The server's clock records an expiry a moment after it is due (its driver looks every 50 ms)."""
    shown = ""
    for _ in range(400):
        shown = revenue(client, who, *span).reconciliation.breakage
        if shown == breakage:
            return
        time.sleep(0.05)
    raise AssertionError(f"breakage {shown}, not {breakage}")


def test_a_grant_bought_below_face_drawn_cut_back_and_broken_recognises_exactly_what_was_paid(
    server_factory: ServerFactory,
) -> None:
    """Periods P1 (last month) and P2 (this one); `use` at 1 a unit. g: 9 credits paid 7 (7/9 a credit), expiring
    a few seconds from now (in P2). 3 units in P1 and 2 in P2 draw 3 and 2; the clock then breaks the 4 left in P2.
    Revenue, cumulative and rounded half-even to the pico: P1 7 x 3/9 = 2.333333333333; P2 7 x 5/9 =
    3.888888888888|9 -> 3.888888888889, less P1: 1.555555555556; breakage 7 x 9/9 - 3.888888888889 =
    3.111111111111. Then a price cut to 0.5 published from P1's start re-rates both open periods: P1's bucket 3 ->
    1.5 (adjustment -1.5), P2's 2 -> 1 (-1); 1.5 and 1 credits go back to g, already broken, so they break too (in
    P2, the period of its expiry): drawn 1.5 in P1, 2.5 by P2's end, 6.5 broken.
    Now: P1 7 x 1.5/9 = 1.166666666666|67 -> 1.166666666667; P2 7 x 2.5/9 = 1.944444444444|4 -> 1.944444444444,
    less P1: 0.777777777777; breakage 7 - 1.944444444444 = 5.055555555556. Sum 1.166666666667 + 0.777777777777 +
    5.055555555556 = 7, exactly what was paid. Deferred: sold 7 in P1; P1 7 - 1.166666666667 = 5.833333333333; P2
    5.833333333333 - 0.777777777777 - 5.055555555556 = 0. Reconciliation over P1..P3: 0 + 7 - 1.944444444444 -
    5.055555555556 = 0. Invoices: P1 g drawn 1.5, remaining 7.5; P2 drawn 2.5, remaining 0, expired 6.5. Explain
    of each period's line: its event at v1, then its own adjustment, summing to the line (1.5, then 1)."""
    now = datetime.now(UTC)
    p1, p2, p3 = (int(month_start(now, months).timestamp() * 1000) for months in (-1, 0, 1))
    expiry_ms = int((now.replace(microsecond=0) + timedelta(seconds=5)).timestamp() * 1000)
    server = server_factory()
    with server.client() as client:
        product(client, "use", dimensions=())
        card(client, [unit("use", "1")])
        contract_id = customer(client, "fin", p1)
        grant = contracts_pb2.Grant(
            id="g", customer_id="fin", contract_id=contract_id, kind=contracts_pb2.PREPAID, amount="9",
            paid_amount="7", expires_at=ts(expiry_ms),
        )  # fmt: skip
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        ingest(client, "fin-1", used("f1", "fin", p1 + 86_400_000, 3), used("f2", "fin", p2 + 60_000, 2))
        assert int(time.time() * 1000) < expiry_ms, "the usage before the expiry took too long to send"
        wait_for_breakage(client, "fin", (p1, p3), "3.111111111111")
        lines = [
            (line.recognized_credits, line.breakage, line.deferred)
            for line in revenue(client, "fin", p1, p3).customer_lines
        ]
        assert lines == [("2.333333333333", "0", "4.666666666667"), ("1.555555555556", "3.111111111111", "0")]

        cut = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, upsert_rates=[unit("use", "0.5")]
            )
        ).version
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=cut, effective_from=ts(p1))
        )
        wait_for_breakage(client, "fin", (p1, p3), "5.055555555556")
        report = revenue(client, "fin", p1, p3)
        assert [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.recognized_overage, line.breakage,
             line.deferred)
            for line in report.customer_lines
        ] == [
            (p1, "1.166666666667", "0", "0", "5.833333333333"),
            (p2, "0.777777777777", "0", "5.055555555556", "0"),
        ]  # fmt: skip
        assert [(line.product_id, line.recognized_credits, line.breakage, line.deferred) for line in report.lines] == [
            ("use", "1.166666666667", "0", ""),
            ("use", "0.777777777777", "0", ""),
        ]
        r = report.reconciliation
        assert (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
            "0", "7", "1.944444444444", "5.055555555556", "0", True
        )  # fmt: skip
        balances = [
            [
                (g.grant_id, g.granted, g.drawn, g.remaining, g.expired)
                for g in preview(client, "fin", at).grant_balances
            ]
            for at in (p1, p2)
        ]
        assert balances == [[("g", "9", "1.5", "7.5", "0")], [("g", "9", "2.5", "0", "6.5")]]
        for period_ms, (amount, charged, delta) in ((p1, ("1.5", "3", "-1.5")), (p2, ("1", "2", "-1"))):
            [line] = preview(client, "fin", period_ms).lines
            assert (line.amount, line.overage, [(c.grant_id, c.credits) for c in line.credits_applied]) == (
                amount, "0", [("g", amount)]
            )  # fmt: skip
            entries, last = every_page(client, "fin", "use", 1, period_ms)
            assert [(e.version, e.amount, e.HasField("adjustment")) for e in entries] == [
                (1, charged, False), (cut, delta, True)
            ]  # fmt: skip
            assert [e.adjustment for e in entries[1:]] == list(line.adjustments)
            check_sums(entries, last)


def volume(product_id: str, tiers: list[pricing_pb2.Tier]) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME, tiers=tiers))


def test_a_volume_line_cut_to_nothing_by_a_dearer_version_then_rolled_back_explains_to_the_cent(
    server_factory: ServerFactory,
) -> None:
    """VOLUME (pricing.proto: the tier the quantity reaches prices all of it, its flat fee once). v1: <=100 at 1 +
    flat 10, <=200 at 0.5 + flat 5, then 0.1 + flat 2: v1(90) = 100, v1(110) = 60. v2 from Jan 10: <=100 at 10,
    then 0.01 (no flat fees): v2(90) = 900, v2(110) = 1.1.
    a (Jan 5, 90 units, v1): 100. b (Jan 15, 20, v2): v2(110) - v2(90) = -898.9, but an event never gives back more
    than its line was charged so far (README "Why was I charged this?": negative when a cheaper tier or version
    gave some back): -100, unit_price -100 / 20 = -5. The line: 110 units for 0; parts v1 (90, 100, 1.111111111111)
    and v2 (20, -100, -5). No grant: overage 100 then -100.
    A rollback to v1 from Jan 10 (v3) re-rates b's hour over the cumulative quantity: v1(110) - v1(90) = -40, so the
    bucket goes -100 -> -40 (delta +60) and the line is 60 = v1(110), overage 60, amount_due 60.00 at 1 USD a
    credit. Explain: a 100, b -100 (each keeps what it was charged), then the adjustment +60: 60, the line's amount;
    the parts are now v1 (90, 100) and v3 (20, -40, -2)."""
    dear = [pricing_pb2.Tier(up_to="100", unit_price="10"), pricing_pb2.Tier(unit_price="0.01")]
    server = server_factory()
    with server.client() as client:
        product(client, "vol", dimensions=())
        card(client, [volume("vol", TIERS)])
        customer(client, "vc")
        v2 = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, upsert_rates=[volume("vol", dear)]
            )
        ).version
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=v2, effective_from=ts(ms("2026-01-10T00:00:00"))
            )
        )
        ingest(client, "vc-1", event("a", "vc", "vol", "2026-01-05T10:00:00", 90))
        ingest(client, "vc-2", event("b", "vc", "vol", "2026-01-15T10:00:00", 20))
        [line] = preview(client, "vc").lines
        assert (line.quantity, line.amount, line.overage) == ("110", "0", "0")
        assert [(p.version, p.quantity, p.amount, p.unit_price) for p in line.prices] == [
            (1, "90", "100", "1.111111111111"), (2, "20", "-100", "-5")
        ]  # fmt: skip
        entries, last = every_page(client, "vc", "vol", 1)
        assert [(e.transaction_id, e.version, e.amount, e.unit_price, e.overage) for e in entries] == [
            ("a", 1, "100", "1.111111111111", "100"), ("b", 2, "-100", "-5", "-100")
        ]  # fmt: skip
        check_sums(entries, last)

        rollback = pricing_pb2.RollbackRateCardRequest(
            rate_card_id=CARD, to_version=1, effective_from=ts(ms("2026-01-10T00:00:00"))
        )
        assert client.pricing.RollbackRateCard(rollback).version.version == 3
        invoice = preview(client, "vc")
        [line] = invoice.lines
        assert (line.quantity, line.amount, line.overage, line.amount_due) == ("110", "60", "60", "60.00")
        assert (invoice.subtotal, invoice.overage_amount, invoice.overage_due, invoice.total_due) == (
            "60", "60", "60.00", "60.00"
        )  # fmt: skip
        assert [(p.version, p.quantity, p.amount, p.unit_price) for p in line.prices] == [
            (1, "90", "100", "1.111111111111"), (3, "20", "-40", "-2")
        ]  # fmt: skip
        assert [
            (list(a.old_versions), a.new_version, a.old_amount, a.new_amount, a.delta) for a in line.adjustments
        ] == [([2], 3, "-100", "-40", "60")]
        entries, last = every_page(client, "vc", "vol", 2)
        assert [(e.transaction_id, e.version, e.amount) for e in entries] == [
            ("a", 1, "100"),
            ("b", 2, "-100"),
            ("", 3, "60"),
        ]
        assert (last.line_amount, last.line_quantity) == ("60", "110")
        check_sums(entries, last)


def test_a_periods_recognition_splits_among_products_by_the_largest_remainder_and_overage_rounds_per_product(
    server_factory: ServerFactory,
) -> None:
    """README "Revenue". `split`: one grant of 3 credits paid 1 USD (1/3 a credit); A, B, C at 1 credit a unit.
    Jan draws 0.5 (A), 0.25 (B), 0.25 (C): 1 credit, recognised 1/3 -> 0.333333333333 (333,333,333,333 picos), split
    in proportion to the draws: A 166,666,666,666.5, B and C 83,333,333,333.25 each; floors 166,666,666,666 +
    2 x 83,333,333,333 leave 1 pico, to the largest remainder (A's .5): A 0.166666666667, B and C 0.083333333333,
    summing to the customer line. Feb: A 1 unit, 2 drawn: 2/3 -> 0.666666666667, less Jan: 0.333333333334 (all A).
    Mar: B 1 unit, 3 drawn: 1 - 0.666666666667 = 0.333333333333 (all B). Deferred: 1 sold in Jan, then
    0.666666666667, 0.333333333333, 0. Reconciliation Jan..Apr: 0 + 1 - 1 - 0 = 0.
    `tiny`: no grant, overage price 0.5 USD; A and B at 0.000000000001 a unit, 1 unit each in Jan: overage
    0.000000000001 credits each, x 0.5 = half a pico each, rounded half-even once per customer, period and
    product: 0 and 0, so the customer line's recognized_overage is 0 (rounding the customer's exact 1 pico once
    would give 0.000000000001)."""
    mar, apr = ms("2026-03-01T00:00:00"), ms("2026-04-01T00:00:00")
    server = server_factory()
    with server.client() as client:
        for name in ("a", "b", "c"):
            product(client, name, dimensions=())
        product(client, "ta", dimensions=())
        product(client, "tb", dimensions=())
        rates = [unit(name, "1") for name in ("a", "b", "c")] + [unit(n, "0.000000000001") for n in ("ta", "tb")]
        card(client, rates)
        contract_id = customer(client, "split")
        grant = contracts_pb2.Grant(
            id="third", customer_id="split", contract_id=contract_id, kind=contracts_pb2.PREPAID, amount="3",
            paid_amount="1",
        )  # fmt: skip
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        ingest(
            client,
            "split-1",
            event("s1", "split", "a", "2026-01-05T10:00:00", 0.5),
            event("s2", "split", "b", "2026-01-05T11:00:00", 0.25),
            event("s3", "split", "c", "2026-01-05T12:00:00", 0.25),
            event("s4", "split", "a", "2026-02-05T10:00:00", 1),
            event("s5", "split", "b", "2026-03-05T10:00:00", 1),
        )
        report = revenue(client, "split", JAN, apr)
        feb = ms("2026-02-01T00:00:00")
        assert [(line.period_start.ToMilliseconds(), line.recognized_credits, line.deferred) for line in report.customer_lines] == [
            (JAN, "0.333333333333", "0.666666666667"),
            (feb, "0.333333333334", "0.333333333333"),
            (mar, "0.333333333333", "0"),
        ]  # fmt: skip
        by_product = sorted(
            (line.period_start.ToMilliseconds(), line.product_id, line.recognized_credits) for line in report.lines
        )
        assert by_product == [
            (JAN, "a", "0.166666666667"), (JAN, "b", "0.083333333333"), (JAN, "c", "0.083333333333"),
            (feb, "a", "0.333333333334"), (mar, "b", "0.333333333333"),
        ]  # fmt: skip
        r = report.reconciliation
        assert (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
            "0", "1", "1", "0", "0", True
        )  # fmt: skip

        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="tiny", name="tiny"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="tiny-c", customer_id="tiny", rate_card_id=CARD, starting_at=ts(JAN),
                overage_policy=contracts_pb2.ALLOW, overage_price="0.5", currency="USD",
            )
        )  # fmt: skip
        ingest(
            client,
            "tiny-1",
            event("t1", "tiny", "ta", "2026-01-05T10:00:00", 1),
            event("t2", "tiny", "tb", "2026-01-05T10:00:00", 1),
        )
        report = revenue(client, "tiny", JAN, feb)
        assert sorted((line.product_id, line.recognized_overage, line.recognized) for line in report.lines) == [
            ("ta", "0", "0"), ("tb", "0", "0")
        ]  # fmt: skip
        [line] = report.customer_lines
        assert (line.recognized_overage, line.recognized) == ("0", "0")
        assert (report.reconciliation.recognized_overage, report.reconciliation.recognized) == ("0", "0")


def test_the_carry_applies_also_where_the_contract_overrides_the_lines_product(
    server_factory: ServerFactory,
) -> None:
    """README "Changing prices safely": the line's first re-rated hour carries what the earlier hours were charged
    less than on time "with the new timeline and the contract's price overrides as they are now". Two customers with
    the late-event usage of the first test (a 50 at Jan 5 10:00, b 100 at Jan 7 10:00, a late 50 at Jan 5 10:30: 60,
    80, 25 = 165), then version 1's very rates published from Jan 6.
    `other` has an override of another product (`unit` at half price): its `grad` line is carried, 85 + 80 = 165.
    `own` has an override of `grad` itself (multiplier 1, so the same prices): carried too, Jan 7 is p(200) -
    p(100) = 55 plus 110 - 85 = 25, and the line 85 + 80 = 165 (it was left at 85 + 55 = 140 before the carry took
    in overrides)."""
    server = server_factory()
    with server.client() as client:
        product(client, "grad")
        product(client, "unit")
        card(client, [graduated("grad"), unit("unit", "1")])
        for who, overridden, price, multiplier in (("other", "unit", "0.5", ""), ("own", "grad", "", "1")):
            contract_id = customer(client, who)
            found = contracts_pb2.PriceOverride(id=f"{who}-deal", product_id=overridden)
            if price:
                found.price = price
            else:
                found.multiplier = multiplier
            client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=found))
            ingest(client, f"{who}-1", event(f"{who}-a", who, "grad", "2026-01-05T10:00:00", 50, k="x"))
            ingest(client, f"{who}-2", event(f"{who}-b", who, "grad", "2026-01-07T10:00:00", 100, k="x"))
            ingest(client, f"{who}-3", event(f"{who}-late", who, "grad", "2026-01-05T10:30:00", 50, k="x"))
            assert [line.amount for line in preview(client, who).lines] == ["165"]
        publish(client, [], ms("2026-01-06T00:00:00"))
        assert [line.amount for line in preview(client, "other").lines] == ["165"]
        assert [line.amount for line in preview(client, "own").lines] == ["165"]


def test_simulating_a_version_after_a_late_event_gives_what_publishing_it_from_the_windows_start_does(
    server_factory: ServerFactory,
) -> None:
    """The late-event usage of the first test (Jan 5 hour charged 85, Jan 7 80; 165 in all). README "Changing prices
    safely": simulating over a window prices its hours by the version, the hours before walked for their quantity,
    and publishing from the window's start re-rates to the simulated amounts. Over [Jan 6, Feb 1): version 1's very
    rates give Jan 7 p(200) - p(100) = 55 plus what Jan 5 was charged less than on time (110 - 85 = 25): 80, delta
    0 (it showed 55, delta -25, while the publish changes nothing); doubled prices 330 - 220 + 25 = 135, delta +55,
    the publish's net change."""
    doubled = [pricing_pb2.Tier(up_to=t.up_to, unit_price=str(2 * Decimal(t.unit_price)),
                                flat_price=str(2 * Decimal(t.flat_price))) for t in TIERS]  # fmt: skip
    jan6, feb = ms("2026-01-06T00:00:00"), ms("2026-02-01T00:00:00")
    server = server_factory()
    with server.client() as client:
        product(client, "grad")
        card(client, [graduated("grad")])
        customer(client, "sim")
        ingest(client, "sim-1", event("a", "sim", "grad", "2026-01-05T10:00:00", 50, k="x"))
        ingest(client, "sim-2", event("b", "sim", "grad", "2026-01-07T10:00:00", 100, k="x"))
        ingest(client, "sim-3", event("late", "sim", "grad", "2026-01-05T10:30:00", 50, k="x"))
        doubled_rate = pricing_pb2.Rate(
            product_id="grad", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=doubled)
        )
        for rates, want in (([], ("80", "80", "0")), ([doubled_rate], ("80", "135", "55"))):
            version = client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=rates)
            ).version
            simulated = client.pricing.SimulateVersion(
                pricing_pb2.SimulateVersionRequest(
                    rate_card_id=CARD, version=version, period_start=ts(jan6), period_end=ts(feb)
                )
            )
            assert [(a.current_amount, a.simulated_amount, a.delta) for a in simulated.amounts] == [want]
            reply = client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version, effective_from=ts(jan6))
            )
            assert reply.rerated_amount_delta == want[2]
            [line] = preview(client, "sim").lines
            assert line.amount == str(85 + int(want[1]))


def test_a_grant_expiring_at_a_period_boundary_breaks_in_the_earlier_period_and_one_starting_mid_period_sells_in_its_own(
    server_factory: ServerFactory,
) -> None:
    """README "Revenue": breakage is counted in the period of the grant's last usable instant; a grant is sold at
    the start of the billing period containing its starts_at. `g`: 10 credits paid 5, expiring exactly at Feb 1
    00:00 (its last usable instant is in January), never drawn: once the server's clock records it, breakage 10 x
    5/10 = 5 in January's line, none in February's. `h`: 4 credits paid 2 starting Feb 15: sold in February.
    Deferred: January 0 + 5 - 5 = 0; February 0 + 2 = 2. Reconciliation Jan..Mar: 0 + 7 - 0 - 5 = 2. January's
    invoice lists g expired (10, drawn 0) and not h (it starts after January's end); February's lists both."""
    feb, mar = ms("2026-02-01T00:00:00"), ms("2026-03-01T00:00:00")
    server = server_factory()
    with server.client() as client:
        product(client, "use", dimensions=())
        card(client, [unit("use", "1")])
        contract_id = customer(client, "edge")
        for grant_id, amount, paid, window in (("g", "10", "5", {"expires_at": ts(feb)}), ("h", "4", "2", {})):
            found = contracts_pb2.Grant(
                id=grant_id, customer_id="edge", contract_id=contract_id, kind=contracts_pb2.PREPAID, amount=amount,
                paid_amount=paid,
            )  # fmt: skip
            if window:
                found.expires_at.CopyFrom(window["expires_at"])
            else:
                found.starts_at.CopyFrom(ts(ms("2026-02-15T00:00:00")))
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=found))
        wait_for_breakage(client, "edge", (JAN, mar), "5")
        report = revenue(client, "edge", JAN, mar)
        assert [
            (line.period_start.ToMilliseconds(), line.recognized, line.breakage, line.deferred)
            for line in report.customer_lines
        ] == [(JAN, "0", "5", "0"), (feb, "0", "0", "2")]
        r = report.reconciliation
        assert (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
            "0", "7", "0", "5", "2", True
        )  # fmt: skip
        balances = [
            [
                (g.grant_id, g.granted, g.drawn, g.remaining, g.expired)
                for g in preview(client, "edge", at).grant_balances
            ]
            for at in (JAN, feb)
        ]
        assert balances == [
            [("g", "10", "0", "0", "10")],
            [("g", "10", "0", "0", "10"), ("h", "4", "0", "4", "0")],
        ]
