"""A third acceptance audit of README "Invoices and revenue" and proto/tariff/v1/invoices.proto, over the wire
against a real server, with a finance user's eye: what the earlier audits (test_audit_invoices_wire.py,
test_audit_invoices2_wire.py, test_invoices_server.py, test_invoices_closer.py, test_audit_periods_wire.py) leave
out. Every amount is worked out by hand (the arithmetic is in each test's docstring), none read back from the server.

Usage is dated in periods long over (2026-01 .. 2026-03), with `--close-grace off` so the server closes nothing by
itself while a test runs."""

from __future__ import annotations

import csv
import io
import itertools
import re
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_explain_wire import expect_error
from tests.test_audit_invoices2_wire import explain_page, give, one
from tests.test_audit_invoices_wire import (
    CARD,
    DAY_MS,
    FEB,
    JAN,
    MAR,
    but_final_fields,
    catalogue,
    close,
    customer,
    preview,
    product,
    start_server,
    ts,
)
from tests.test_cli import tariff

S = grpc.StatusCode


def get(client: TariffClient, number: str) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=number))
    return found


def listed(client: TariffClient, **fields: object) -> list[invoices_pb2.Invoice]:
    """Every page of ListInvoices(fields), read one invoice a page."""
    found: list[invoices_pb2.Invoice] = []
    token = ""
    while True:
        page = client.invoices.ListInvoices(
            invoices_pb2.ListInvoicesRequest(page_size=1, page_token=token, **fields)  # type: ignore[arg-type]
        )
        found.extend(page.invoices)
        token = page.next_page_token
        if not token:
            return found


def line_figures(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, str, str]]:
    """line_id -> (amount, overage, credits from all grants as listed, amount_due)."""
    return {
        line.line_id: (
            line.amount,
            line.overage,
            ",".join(f"{c.grant_id}={c.credits}" for c in line.credits_applied),
            line.amount_due,
        )
        for line in invoice.lines
    }


def test_credits_a_closed_later_period_drew_are_not_drawn_again_by_an_earlier_open_period(
    server_factory: ServerFactory,
) -> None:
    """One grant g of 10 credits (paid 10 USD), overage at 1 USD a credit. February is closed first (ClosePeriod does
    not require January closed): its 10,000 units of `unit` (1 credit per 1,000) are 10 credits, all drawn from g:
    credits 10, overage 0, due 0.00. Then a late January event of 4,000 units (4 credits) is accepted (January is
    open). The grant held 10 credits and February's final invoice already bills all 10 as covered, so no credit
    is left for January: drawn twice, the customer would get 14 credits of usage for a 10-credit grant. January's
    draft must show 4 of overage, 4.00 USD due; and February's final invoice, read back, is unchanged. Balances
    count the draws of the period and the earlier ones: January's g 10 granted, 0 drawn, 10 remaining; February's
    10 drawn, 0 remaining. CloseDuePeriods then closes January as INV-00000002 (closing order), equal to its draft
    but for the final fields, and ListInvoices(w) runs by number: February (1), January (2), March (3)."""
    with start_server(server_factory, "twice") as client:
        catalogue(client)
        contract_id = customer(client, "w", "USD", "1")
        give(client, contract_id, "g", "10", "10", starts_at=ts(JAN))
        one(client, "w1", "w", "unit", "a", 10000, FEB + DAY_MS)
        february = close(client, "w", FEB)
        assert (line_figures(february), february.overage_due, february.total_due) == (
            {"unit;k=a": ("10", "0", "g=10", "0.00")},
            "0.00",
            "0.00",
        )
        one(client, "w2", "w", "unit", "a", 4000, JAN + DAY_MS)
        january = preview(client, "w", JAN)
        credits_billed = sum(float(c.credits) for c in january.credits_applied) + 10
        assert credits_billed <= 10, f"10-credit grant billed as {credits_billed} credits: {line_figures(january)}"
        assert (line_figures(january), january.overage_due, january.total_due) == (
            {"unit;k=a": ("4", "4", "", "4.00")},
            "4.00",
            "4.00",
        )
        assert get(client, february.invoice_number) == february
        assert preview(client, "w", FEB) == february
        assert (balances(january), balances(february)) == ({"g": ("10", "0", "10", "0")}, {"g": ("10", "10", "0", "0")})
        closed = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices
        assert (closed[0].invoice_number, closed[0].period_start.ToMilliseconds()) == ("INV-00000002", JAN)
        assert but_final_fields(closed[0]) == but_final_fields(january)
        assert [i.invoice_number for i in listed(client, customer_id="w")][:3] == [
            "INV-00000001",
            "INV-00000002",
            "INV-00000003",
        ]
        assert [i.period_start.ToMilliseconds() for i in listed(client, customer_id="w")][:3] == [FEB, JAN, MAR]


def test_a_final_invoice_stays_as_closed_through_late_events_grants_and_a_retroactive_price(
    server_factory: ServerFactory,
) -> None:
    """January: 5,000 units of `unit` (1 credit per 1,000: 5 credits), grant g of 3 credits: 3 credits, 2 of
    overage at 0.5 USD = 1.00 due. January is closed. Then, in turn: a late January event (PERIOD_CLOSED, 0
    accepted); grant g2 of 5 credits starting on January 1 (made after the close: it serves open periods only);
    version 2 of the rate card at 3 credits per 1,000 effective January 1, retroactive: January's bucket is left
    alone (1 bucket, 1 event) and February's 2,000 units are re-rated from 2 to 3 x 2 = 6 credits. February's draft:
    g is spent by January, so g2 pays 5 and 1 is overage, 0.50 USD. January's final invoice, by GetInvoice,
    ListInvoices and PreviewInvoice, is the one ClosePeriod answered, field by field; its line explains as f1 alone,
    5 credits, no re-rating adjustment (the publish left January alone)."""
    with start_server(server_factory, "immutable") as client:
        catalogue(client)
        contract_id = customer(client, "f", "USD", "0.5")
        give(client, contract_id, "g", "3", "3", starts_at=ts(JAN))
        one(client, "f1", "f", "unit", "a", 5000, JAN + DAY_MS)
        one(client, "f2", "f", "unit", "a", 2000, FEB + DAY_MS)
        january = close(client, "f", JAN)
        assert (line_figures(january), january.overage_due, january.total_due) == (
            {"unit;k=a": ("5", "2", "g=3", "1.00")},
            "1.00",
            "1.00",
        )
        late = usage_pb2.UsageEvent(
            transaction_id="f3",
            customer_id="f",
            event_type="unit",
            timestamp_ms=JAN + 2 * DAY_MS,
            dimensions={"k": "a"},
            values={"n": 1000},
        )
        ack = client.ingest_batch([late], "late-f3")
        assert ack.accepted == 0 and [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"]
        give(client, contract_id, "g2", "5", "5", starts_at=ts(JAN))
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                upsert_rates=[
                    pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="3", per_units="1000"))
                ],
            )
        )
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(JAN))
        )
        assert (
            published.closed_buckets_left_alone,
            published.closed_events_left_alone,
            published.events_rerated,
        ) == (1, 1, 1)
        february = preview(client, "f", FEB)
        assert (line_figures(february), february.overage_due, february.total_due) == (
            {"unit;k=a": ("6", "1", "g2=5", "0.50")},
            "0.50",
            "0.50",
        )
        assert get(client, january.invoice_number) == january
        explained = explain_page(client, "f", "unit;k=a", 10)
        assert (explained.line_amount, explained.line_quantity, explained.next_page_token) == ("5", "5000", "")
        assert [(e.transaction_id, e.amount, e.HasField("adjustment")) for e in explained.events] == [
            ("f1", "5", False)
        ]
        assert listed(client, customer_id="f") == [january]
        assert preview(client, "f", JAN) == january
        assert close(client, "f", JAN) == january


def test_invoice_numbers_have_no_gaps_from_refused_or_retried_closes_and_lists_filter_and_page(
    server_factory: ServerFactory,
) -> None:
    """Numbers go 1, 2, 3 in closing order over all customers, and a refused close (a period not yet ended:
    FAILED_PRECONDITION; a period_start that is no period's start: INVALID_ARGUMENT) or a retried one numbers
    nothing: a January -> INV-00000001; a's running period refused; b at January 15 refused; b January ->
    INV-00000002; a January again -> INV-00000001; a February -> INV-00000003. GetInvoice of a number never issued
    is NOT_FOUND. ListInvoices one a page: everyone's [1, 2, 3]; a's [1, 3]; from February [3]; before February
    [1, 2]; b's from February none; DRAFT none; status 7 INVALID_ARGUMENT naming status."""
    with start_server(server_factory, "numbers") as client:
        catalogue(client)
        customer(client, "a", "USD", "1")
        customer(client, "b", "USD", "1")
        one(client, "a1", "a", "unit", "a", 1000, JAN + DAY_MS)
        one(client, "b1", "b", "unit", "a", 2000, JAN + DAY_MS)
        a_jan = close(client, "a", JAN)
        assert (a_jan.invoice_number, a_jan.status, a_jan.total_due) == (
            "INV-00000001",
            invoices_pb2.INVOICE_FINAL,
            "1.00",
        )
        running = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="a")).period_start
        assert running.ToMilliseconds() > MAR
        expect_error(
            S.FAILED_PRECONDITION,
            lambda: client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="a", period_start=running)),
        )
        expect_error(S.INVALID_ARGUMENT, lambda: close(client, "b", JAN + 14 * DAY_MS), "period_start")
        b_jan = close(client, "b", JAN)
        assert (b_jan.invoice_number, b_jan.total_due) == ("INV-00000002", "2.00")
        assert close(client, "a", JAN) == a_jan
        a_feb = close(client, "a", FEB)
        assert (a_feb.invoice_number, a_feb.total_due, len(a_feb.lines)) == ("INV-00000003", "0.00", 0)
        expect_error(S.NOT_FOUND, lambda: get(client, "INV-00000004"))
        assert but_final_fields(a_jan) == but_final_fields(preview(client, "a", JAN))
        assert listed(client) == [a_jan, b_jan, a_feb]
        assert listed(client, customer_id="a") == [a_jan, a_feb]
        assert listed(client, period_start_from=ts(FEB)) == [a_feb]
        assert listed(client, period_start_before=ts(FEB)) == [a_jan, b_jan]
        assert listed(client, customer_id="b", period_start_from=ts(FEB), period_start_before=ts(MAR)) == []
        assert listed(client, status=invoices_pb2.INVOICE_DRAFT) == []
        assert listed(client, status=invoices_pb2.INVOICE_FINAL) == [a_jan, b_jan, a_feb]
        expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(status=7)),  # type: ignore[arg-type]
            "status",
        )


def test_lines_rounded_up_owe_more_than_the_invoice_so_the_rounding_adjustment_is_negative(
    server_factory: ServerFactory,
) -> None:
    """Three lines (k = a, b, c) of 10 units of `unit` each: 0.01 credit each, no grant, all overage. USD at 0.6 a
    credit: each line owes 0.006, rounded half-even to 0.01; the exact sum 0.018 rounds once to overage_due 0.02;
    rounding_adjustment = 0.02 - 0.03 = -0.01; total_due 0.02. JPY at 60 a credit: each line 0.6 -> 1; the sum 1.8
    -> 2; adjustment 2 - 3 = -1; total_due 2. The CSV export repeats the invoice on each line row, and per invoice
    its rows' amount_due plus rounding_adjustment plus top_up_purchases is total_due: 0.03 - 0.01 + 0.00 = 0.02 and
    3 - 1 + 0 = 2."""
    server = server_factory(name="negative", extra_args=["--close-grace", "off"])
    with server.client() as client:
        catalogue(client)
        for who, currency, price in (("u", "USD", "0.6"), ("j", "JPY", "60")):
            customer(client, who, currency, price)
            for k in ("a", "b", "c"):
                one(client, f"{who}-{k}", who, "unit", k, 10, JAN + DAY_MS)
        usd, jpy = close(client, "u"), close(client, "j")
    expected = {
        "u": (usd, "0.01", "0.02", "-0.01", "0.02", "0.00"),
        "j": (jpy, "1", "2", "-1", "2", "0"),
    }
    for who, (invoice, line_due, overage_due, adjustment, total, top_ups) in expected.items():
        assert [(line.line_id, line.overage, line.amount_due) for line in invoice.lines] == [
            (f"unit;k={k}", "0.01", line_due) for k in ("a", "b", "c")
        ], who
        assert (
            invoice.subtotal,
            invoice.overage_amount,
            invoice.overage_due,
            invoice.rounding_adjustment,
            invoice.top_up_purchases,
            invoice.total_due,
        ) == ("0.03", "0.03", overage_due, adjustment, top_ups, total), who
    exported = tariff(server, "invoices", "export", "--period", "2026-01", "--format", "csv").stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    for who, (invoice, *_rest) in expected.items():
        mine = [row for row in rows if row["customer_id"] == who]
        assert [row["amount_due"] for row in mine] == [line.amount_due for line in invoice.lines], who
        assert {(row["invoice_number"], row["rounding_adjustment"], row["total_due"]) for row in mine} == {
            (invoice.invoice_number, invoice.rounding_adjustment, invoice.total_due)
        }, who
        summed = sum(Decimal(row["amount_due"]) for row in mine) + Decimal(mine[0]["rounding_adjustment"])
        assert summed + Decimal(mine[0]["top_up_purchases"]) == Decimal(invoice.total_due), who


def balances(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, str, str]]:
    return {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in invoice.grant_balances}


def test_invoice_credits_sum_the_lines_per_grant_and_balances_list_grants_started_by_the_periods_end(
    server_factory: ServerFactory,
) -> None:
    """g1: 5 credits from January 1; g2: 10 credits from February 15 (no use before). Overage at 0.25 USD a credit.
    January: unit;k=a 3,000 units (3 credits: g1 3), unit;k=b 4,000 (4: g1's last 2, 2 of overage, 0.50 due). The
    invoice's credits_applied: g1 = 3 + 2 = 5; overage 2, overage_due 0.50; balances g1 only (g2 starts after
    January's end): 5 granted, 5 drawn, 0 left. February: unit;k=a 1,000 on the 2nd (g1 spent, g2 not started: 1
    of overage), 6,000 on the 20th (g2 6): line amount 7, overage 1, g2 6, due 0.25; balances g2 10/6/4/0 only (g1,
    spent in January and touched by nothing in February, is left out: invoices.proto Invoice.grant_balances);
    overage_price echoes the contract's 0.25."""
    with start_server(server_factory, "grants") as client:
        catalogue(client)
        contract_id = customer(client, "c", "USD", "0.25")
        give(client, contract_id, "g1", "5", "5", starts_at=ts(JAN))
        give(client, contract_id, "g2", "10", "10", starts_at=ts(FEB + 14 * DAY_MS))
        one(client, "c1", "c", "unit", "a", 3000, JAN + DAY_MS)
        one(client, "c2", "c", "unit", "b", 4000, JAN + 2 * DAY_MS)
        one(client, "c3", "c", "unit", "a", 1000, FEB + DAY_MS)
        one(client, "c4", "c", "unit", "a", 6000, FEB + 19 * DAY_MS)
        january, february = close(client, "c", JAN), close(client, "c", FEB)
    assert line_figures(january) == {
        "unit;k=a": ("3", "0", "g1=3", "0.00"),
        "unit;k=b": ("4", "2", "g1=2", "0.50"),
    }
    assert {c.grant_id: c.credits for c in january.credits_applied} == {"g1": "5"}
    assert (january.overage_amount, january.overage_due, january.total_due, january.overage_price) == (
        "2",
        "0.50",
        "0.50",
        "0.25",
    )
    assert balances(january) == {"g1": ("5", "5", "0", "0")}
    assert line_figures(february) == {"unit;k=a": ("7", "1", "g2=6", "0.25")}
    assert {c.grant_id: c.credits for c in february.credits_applied} == {"g2": "6"}
    assert (february.overage_amount, february.overage_due, february.total_due) == ("1", "0.25", "0.25")
    assert balances(february) == {"g2": ("10", "6", "4", "0")}


def test_a_re_rated_open_period_draws_no_credit_a_closed_later_period_already_billed(
    server_factory: ServerFactory,
) -> None:
    """g: 10 credits from January 1, overage at 1 USD a credit. January 4,000 units of `unit` (4 credits: g 4),
    February 6,000 (6: g's other 6). February is closed while January stays open: credits 6, due 0.00. Version 2 at
    2 credits per 1,000, effective January 1: January's bucket is re-rated from 4 to 8 credits, February's closed
    bucket left alone. The grant held 10, and 6 of them are billed as covered on February's final invoice: January
    may draw 4 only, so its +4 is overage: amount 8, g 4, overage 4, 4.00 USD due. Drawing 8 would bill 14 credits
    of a 10-credit grant as paid for. January's balance of g (drawn by January and the periods before it): 4 drawn,
    10 - 4 = 6 remaining. February's final invoice stays as closed."""
    with start_server(server_factory, "rerated") as client:
        catalogue(client)
        contract_id = customer(client, "r", "USD", "1")
        give(client, contract_id, "g", "10", "10", starts_at=ts(JAN))
        one(client, "r1", "r", "unit", "a", 4000, JAN + DAY_MS)
        one(client, "r2", "r", "unit", "a", 6000, FEB + DAY_MS)
        february = close(client, "r", FEB)
        assert (line_figures(february), february.total_due) == ({"unit;k=a": ("6", "0", "g=6", "0.00")}, "0.00")
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                upsert_rates=[
                    pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="2", per_units="1000"))
                ],
            )
        )
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(JAN))
        )
        assert (published.events_rerated, published.closed_events_left_alone) == (1, 1)
        january = preview(client, "r", JAN)
        assert (line_figures(january), january.overage_due, january.total_due) == (
            {"unit;k=a": ("8", "4", "g=4", "4.00")},
            "4.00",
            "4.00",
        )
        assert balances(january) == {"g": ("10", "4", "6", "0")}, balances(january)
        assert get(client, february.invoice_number) == february


def test_the_server_closes_by_itself_only_periods_over_for_the_grace_in_end_then_contract_order(
    server_factory: ServerFactory,
) -> None:
    """`tariff serve --close-grace G`, with G = the whole hours since the current month's start + 49 hours (so just
    over 2 days more than last month's period has been over): customers b and a, contracts from January 1 2026, each
    with 1,000 units of `unit` in January (1 credit at 1 USD: 1.00 due). A period ending at E is due once
    now >= E + G, i.e. E <= the current month's start - about 2 days: every ended period but last month's (which
    ended at the current month's start); the one before ended at least 28 days earlier. The driver
    (a check every 30 s) closes them by itself in one command: the earliest period end first, then by contract id
    (a-c before b-c), numbered 1, 2, ... in that order; last month's period stays a draft, and a late event of
    last month is accepted while one of the month before is PERIOD_CLOSED."""
    now = datetime.now(UTC)
    this_month = datetime(now.year, now.month, 1, tzinfo=UTC)
    last_month = (this_month - timedelta(days=1)).replace(day=1)
    grace_hours = (now - this_month) // timedelta(hours=1) + 49
    starts = []
    month = datetime(2026, 1, 1, tzinfo=UTC)
    while month < last_month:
        starts.append(int(month.timestamp() * 1000))
        month = (month + timedelta(days=32)).replace(day=1)
    setup = server_factory(name="grace", extra_args=["--close-grace", "off"])  # both customers before any close
    with setup.client() as client:
        catalogue(client)
        for who in ("b", "a"):
            customer(client, who, "USD", "1")
            one(client, f"{who}-jan", who, "unit", "a", 1000, JAN + DAY_MS)
    assert setup.terminate() == 0
    server = server_factory(name="grace", extra_args=["--close-grace", f"{grace_hours}h"])  # the same data directory
    with server.client() as client:
        deadline = time.monotonic() + 120
        while len(listed(client)) < 2 * len(starts) and time.monotonic() < deadline:
            time.sleep(1)
        closed = listed(client)
        assert [(i.period_start.ToMilliseconds(), i.contract_id) for i in closed] == [
            (start, contract) for start in starts for contract in ("a-c", "b-c")
        ]
        assert [i.invoice_number for i in closed] == [f"INV-{n:08d}" for n in range(1, 2 * len(starts) + 1)]
        assert [i.total_due for i in closed[:2]] == ["1.00", "1.00"]
        last = preview(client, "a", int(last_month.timestamp() * 1000))
        assert (last.status, last.invoice_number) == (invoices_pb2.INVOICE_DRAFT, "")
        late = [
            usage_pb2.UsageEvent(
                transaction_id=f"late-{at}",
                customer_id="a",
                event_type="unit",
                timestamp_ms=at,
                dimensions={"k": "a"},
                values={"n": 1000},
            )
            for at in (starts[-1] + DAY_MS, int(last_month.timestamp() * 1000) + DAY_MS)
        ]
        ack = client.ingest_batch(late, "late-grace")
        assert ack.accepted == 1 and [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected] == [
            (0, "PERIOD_CLOSED")
        ]


def test_amounts_due_are_exact_at_scale_and_just_above_a_half(server_factory: ServerFactory) -> None:
    """Exact decimals, never binary floats. 900,000,000,000,000 units of `unit` = 900,000,000,000 credits of overage:
    at 123456789.987654321 USD a credit, 123456789.987654321 x 9 = 1111111109.888888889, x 10^11 =
    111111110988888888900 exactly: "111111110988888888900.00" (no exponent); at 0.5 JPY, 450000000000. 1,500 units
    (1.5 credits) at 0.003333333333333334 USD: 0.005000000000000001, just above half a cent, so 0.01 (a float
    product reads 0.005, half-even 0.00). 5,000 units (5 credits) at 0.0000001 BHD: 0.0000005 -> "0.000"."""
    cases = (
        ("big", "USD", "123456789.987654321", 9e14, "900000000000", "111111110988888888900.00", "0.00"),
        ("yen", "JPY", "0.5", 9e14, "900000000000", "450000000000", "0"),
        ("half", "USD", "0.003333333333333334", 1500, "1.5", "0.01", "0.00"),
        ("dinar", "BHD", "0.0000001", 5000, "5", "0.000", "0.000"),
    )
    with start_server(server_factory, "scale") as client:
        catalogue(client)
        for who, currency, price, n, *_figures in cases:
            customer(client, who, currency, price)
            one(client, who, who, "unit", "a", n, JAN + DAY_MS)
        for who, _currency, price, _n, overage, due, zero in cases:
            invoice = close(client, who)
            assert [(line.overage, line.amount_due) for line in invoice.lines] == [(overage, due)], who
            assert (invoice.subtotal, invoice.overage_amount, invoice.overage_price) == (overage, overage, price), who
            assert (invoice.overage_due, invoice.rounding_adjustment, invoice.total_due) == (due, zero, due), who


def snapshot_seqs_at_least(log: str, seq: int) -> bool:
    """Whether the server logged a snapshot at journal seq `seq` or later."""
    return any(int(found) >= seq for found in re.findall(r"snapshot seq=(\d+)", log))


def test_numbering_goes_on_without_gap_or_repeat_after_a_snapshot_and_kill_9(server_factory: ServerFactory) -> None:
    """`--snapshot-every 1` (a snapshot after each journal record): a's January closes as INV-00000001 (1,000 units:
    1.00 USD at 1 USD a credit), and once a snapshot covers the close, kill -9 and a restart from it. b's January (2,000 units: 2.00)
    is INV-00000002, neither a repeat of 1 nor a gap; a's January read back is the invoice closed before the crash,
    and its late event is still PERIOD_CLOSED."""
    server = server_factory(
        name="snapshot", extra_args=["--close-grace", "off", "--snapshot-every", "1", "--snapshot-journal-factor", "0"]
    )
    with server.client() as client:
        catalogue(client)
        customer(client, "a", "USD", "1")
        customer(client, "b", "USD", "1")
        one(client, "a1", "a", "unit", "a", 1000, JAN + DAY_MS)
        one(client, "b1", "b", "unit", "a", 2000, JAN + DAY_MS)
        a_jan = close(client, "a")
        assert (a_jan.invoice_number, a_jan.total_due) == ("INV-00000001", "1.00")
        closed_seq = client.get_balance("a").as_of_seq
        # A snapshot is started after a commit when none is running: one running while the close committed is
        # followed by another only at a later commit, so records after the close (February's, which change neither
        # January's numbering nor its amounts) go on until a snapshot covers the close.
        deadline = time.monotonic() + 30
        for extra in itertools.count(2):
            one(client, f"b{extra}", "b", "unit", "a", 1, FEB + DAY_MS)
            time.sleep(0.1)
            if snapshot_seqs_at_least(server.log_tail(), closed_seq) or time.monotonic() > deadline:
                break
    assert snapshot_seqs_at_least(server.log_tail(), closed_seq), server.log_tail()
    server.kill9()
    server.restart()
    with server.client() as client:
        b_jan = close(client, "b")
        assert (b_jan.invoice_number, b_jan.total_due) == ("INV-00000002", "2.00")
        assert get(client, "INV-00000001") == a_jan
        assert listed(client) == [a_jan, b_jan]
        late = usage_pb2.UsageEvent(
            transaction_id="a2",
            customer_id="a",
            event_type="unit",
            timestamp_ms=JAN + 2 * DAY_MS,
            dimensions={"k": "a"},
            values={"n": 1000},
        )
        ack = client.ingest_batch([late], "late-a2")
        assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"]


def test_prices_the_invoice_and_contract_write_back_have_no_exponent_or_trailing_zeros(
    server_factory: ServerFactory,
) -> None:
    """contracts.proto: amounts the server writes follow the decimal grammar without an exponent or trailing
    zeros (amounts due aside, which keep the minor unit's places). A contract's overage_price written "1e-2" is
    0.01: 1,500 units (1.5 credits) owe 0.015, half-even to 0.02; the invoice shows overage_price "0.01", and
    GetContract too. "12.50" reads back "12.5" and "0.000" reads back "0" (1.5 x 0 = 0.00 due). A top-up policy
    written threshold "1e1", recharge_to "2.50e1", price_per_credit "9E-1" reads back "10", "25", "0.9"."""
    with start_server(server_factory, "canonical") as client:
        catalogue(client)
        for who, price, written, due in (
            ("e", "1e-2", "0.01", "0.02"),
            ("t", "12.50", "12.5", "18.75"),
            ("z", "0.000", "0", "0.00"),
        ):
            customer(client, who, "USD", price)
            one(client, who, who, "unit", "a", 1500, JAN + DAY_MS)
            invoice = close(client, who)
            assert (invoice.overage_price, invoice.overage_due) == (written, due), who
            contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=f"{who}-c"))
            assert contract.overage_price == written, who
        client.contracts.SetTopUpPolicy(
            contracts_pb2.SetTopUpPolicyRequest(
                contract_id="e-c",
                top_up=contracts_pb2.TopUpPolicy(
                    threshold="1e1", recharge_to="2.50e1", price_per_credit="9E-1", max_per_period=1
                ),
            )
        )
        top_up = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="e-c")).top_up
        assert (top_up.threshold, top_up.recharge_to, top_up.price_per_credit) == ("10", "25", "0.9")


def test_an_event_without_a_pricing_dimension_bills_on_the_line_of_its_empty_value(
    server_factory: ServerFactory,
) -> None:
    """Product `two` with pricing dimensions (b, a), product `none` with none, 1 credit a unit, one unit an event,
    all in January: {a=1, b=2} and {b=2, a=1, x=9} (x is no pricing dimension) are line two;a=1;b=2 (2 units,
    2 events); {a=1} (b left out) and {a=1, b=""} are one line two;a=1;b= with dimensions {a: 1, b: ""} (2, 2);
    `none` with {x=1} and with no dimension at all is line `none` (2, 2). Subtotal 6."""
    with start_server(server_factory, "dimensions") as client:
        product(client, "two", ("b", "a"))
        product(client, "none", ())
        rates = [
            pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price="1", per_units="1"))
            for p in ("two", "none")
        ]
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, name=CARD, pricing_unit="credits"))
        client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=rates))
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(JAN - 31 * DAY_MS))
        )
        customer(client, "d", "USD", "1")
        shapes: list[tuple[str, dict[str, str]]] = [
            ("two", {"a": "1", "b": "2"}),
            ("two", {"a": "1"}),
            ("two", {"a": "1", "b": ""}),
            ("two", {"b": "2", "a": "1", "x": "9"}),
            ("none", {"x": "1"}),
            ("none", {}),
        ]
        events = [
            usage_pb2.UsageEvent(
                transaction_id=f"d{i}",
                customer_id="d",
                event_type=event_type,
                timestamp_ms=JAN + DAY_MS,
                dimensions=dimensions,
                values={"n": 1},
            )
            for i, (event_type, dimensions) in enumerate(shapes)
        ]
        assert client.ingest_batch(events, "dimensions").accepted == 6
        invoice = close(client, "d")
    assert sorted((line.line_id, dict(line.dimensions), line.quantity, line.events) for line in invoice.lines) == [
        ("none", {}, "2", 2),
        ("two;a=1;b=", {"a": "1", "b": ""}, "2", 2),
        ("two;a=1;b=2", {"a": "1", "b": "2"}, "2", 2),
    ]
    assert invoice.subtotal == "6"


def test_concurrent_closes_of_one_period_number_it_once(server_factory: ServerFactory) -> None:
    """Eight ClosePeriod calls for a's January at once, and one for b's, from nine threads: a's January is numbered
    once, every call for it answers that same invoice (1,000 units: 1.00 USD), b's takes the other number, and
    ListInvoices holds exactly INV-00000001 and INV-00000002: no number lost to a racing retry."""
    with start_server(server_factory, "racing") as client:
        catalogue(client)
        for who in ("a", "b"):
            customer(client, who, "USD", "1")
            one(client, who, who, "unit", "a", 1000, JAN + DAY_MS)
        with ThreadPoolExecutor(max_workers=9) as pool:
            answers = list(pool.map(lambda who: close(client, who), ["a"] * 4 + ["b"] + ["a"] * 4))
        assert [i.invoice_number for i in listed(client)] == ["INV-00000001", "INV-00000002"]
    mine = [answer for answer in answers if answer.customer_id == "a"]
    assert len(mine) == 8 and all(answer == mine[0] for answer in mine)
    assert mine[0].total_due == "1.00"
    assert sorted([mine[0].invoice_number, answers[4].invoice_number]) == ["INV-00000001", "INV-00000002"]
