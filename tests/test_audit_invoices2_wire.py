"""A second acceptance audit of README "Invoices and revenue" ("Why was I charged this?", "Revenue") and
proto/tariff/v1/invoices.proto, over the wire against a real server, as a demanding billing user reads them: corners
tests/test_audit_invoices_wire.py, test_audit_explain_wire.py, test_audit_revenue_wire.py and
test_audit_periods_wire.py leave out. Every amount is computed by hand from the docs (the arithmetic is in each
test's docstring), none read back from the server.

Usage is dated in periods long over (2026-01 .. 2026-03, or the two months before the current one), with
`--close-grace off` so the server closes nothing by itself while a test runs."""

from __future__ import annotations

import csv
import io
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import grpc
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_explain_wire import expect_error
from tests.test_audit_invoices_wire import (
    DAY_MS,
    FEB,
    JAN,
    but_final_fields,
    catalogue,
    close,
    customer,
    preview,
    start_server,
    ts,
    wait_for_breakage,
)
from tests.test_cli import tariff

S = grpc.StatusCode
MINUTE_MS = 60_000


def one(client: TariffClient, tx: str, who: str, product_id: str, k: str, n: float, at_ms: int) -> None:
    """One event in its own batch (so the rating order is the order of the calls), which must be accepted."""
    event = usage_pb2.UsageEvent(
        transaction_id=tx, customer_id=who, event_type=product_id, timestamp_ms=at_ms, dimensions={"k": k}
    )
    event.values["n"] = n
    ack = client.ingest_batch([event], f"batch-{tx}")
    assert ack.accepted == 1, ack.rejected


def give(
    client: TariffClient, contract_id: str, grant_id: str, amount: str, paid: str, **fields: object
) -> contracts_pb2.Grant:
    found: contracts_pb2.Grant = client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=grant_id,
                contract_id=contract_id,
                kind=contracts_pb2.PREPAID,
                amount=amount,
                paid_amount=paid,
                **fields,  # type: ignore[arg-type]
            )
        )
    )
    return found


def explain_page(
    client: TariffClient, who: str, line_id: str, page_size: int, token: str = "", period_ms: int = JAN
) -> invoices_pb2.ExplainLineItemResponse:
    found: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(
        invoices_pb2.ExplainLineItemRequest(
            customer_id=who, period_start=ts(period_ms), line_id=line_id, page_size=page_size, page_token=token
        )
    )
    return found


def explained_rows(
    entries: Sequence[invoices_pb2.ExplainedEvent],
) -> list[tuple[str, str, str, str, str, list[tuple[str, str]]]]:
    return [
        (e.transaction_id, e.quantity, e.amount, e.unit_price, e.overage, [(d.grant_id, d.credits) for d in e.draws])
        for e in entries
    ]


def seq(client: TariffClient, who: str) -> int:
    found: int = client.get_balance(who).as_of_seq
    return found


# Events of customer `x`, in rating order: (transaction id, product, k, n). Volume tiers (pricing.proto: the whole
# quantity at the tier it reaches): <=100: 10 + 1/unit; <=200: 5 + 0.5/unit; above: 2 + 0.1/unit. unit: 1 per 1000.
# g1: 120 credits (paid 12); g2: 30 credits (paid 3), granted after x7. docs/architecture.md §5 step 7: a positive
# charge draws in burn order, the rest is overage; a negative one gives back the aggregate's own overage first, then
# credits to the grants it drew from.
#   x1 vol a 90    -> 10 + 90 = 100                       g1 -100 (20 left)
#   x2 unit a 30000 -> 30                                 g1 -20 (0 left), overage 10
#   x3 vol a 20    -> 110 units: 5 + 55 = 60, so -40      no overage of its own: g1 +40 (40 left)
#   x4 vol b 5     -> 15                                  g1 -15 (25)
#   x5 unit a 10000 -> 10                                 g1 -10 (15)
#   x6 vol a 100   -> 210 units: 2 + 21 = 23, so -37      g1 +37 (52)
#   x7 unit a 60000 -> 60                                 g1 -52 (0), overage 8
#   x8 unit b 1000 -> 1                                   overage 1
#   (g2 granted: 30)
#   x9 vol c 100   -> 110                                 g2 -30 (0), overage 80
#   x10 vol c 101  -> 201 units: 2 + 20.1 = 22.1, so -87.9: its own overage 80 back first, then g2 +7.9 (7.9 left)
X_EVENTS = [
    ("x1", "vol", "a", 90),
    ("x2", "unit", "a", 30000),
    ("x3", "vol", "a", 20),
    ("x4", "vol", "b", 5),
    ("x5", "unit", "a", 10000),
    ("x6", "vol", "a", 100),
    ("x7", "unit", "a", 60000),
    ("x8", "unit", "b", 1000),
    ("x9", "vol", "c", 100),
    ("x10", "vol", "c", 101),
]
# Per line: (quantity, amount, overage, credits per grant, amount_due at 0.015 USD a credit of overage, half-even).
X_LINES = {
    "unit;k=a": ("100000", "100", "18", {"g1": "82"}, "0.27"),  # 18 x 0.015 = 0.27
    "unit;k=b": ("1000", "1", "1", {}, "0.02"),  # 0.015: half a cent, to the even 0.02
    "vol;k=a": ("210", "23", "0", {"g1": "23"}, "0.00"),  # 100 - 40 - 37
    "vol;k=b": ("5", "15", "0", {"g1": "15"}, "0.00"),
    "vol;k=c": ("201", "22.1", "0", {"g2": "22.1"}, "0.00"),  # 110 - 87.9; overage 80 - 80
}


def test_explain_pages_of_one_sum_to_each_lines_quantity_amount_draws_and_overage(
    server_factory: ServerFactory,
) -> None:
    """Five lines sharing two grants, with give-backs of credits and of overage (X_EVENTS above). The invoice: subtotal
    100 + 1 + 23 + 15 + 22.1 = 161.1, overage 18 + 1 = 19, credits g1 82 + 23 + 15 = 120 and g2 22.1; overage_due =
    19 x 0.015 = 0.285 rounded half-even once = 0.28; the lines' rounded dues 0.27 + 0.02 = 0.29, so
    rounding_adjustment = 0.28 - 0.29 = -0.01; total_due 0.28. Balances: g1 120 drawn, 0 left; g2 22.1 drawn, 7.9 left.
    Each line explained a page of 1 at a time: its events' quantities sum to line_quantity, amounts to line_amount,
    draws per grant to the line's credits_applied, overages to the line's overage; a token used twice answers the same
    page; x10's unit price is -87.9 / 101 = -0.870297029702|97... = -0.870297029703."""
    with start_server(server_factory, "explain-sums") as client:
        catalogue(client)
        contract_id = customer(client, "x", "USD", "0.015")
        give(client, contract_id, "g1", "120", "12")
        for index, (tx, product_id, k, n) in enumerate(X_EVENTS):
            if tx == "x9":
                give(client, contract_id, "g2", "30", "3", priority=5)
            one(client, tx, "x", product_id, k, n, JAN + DAY_MS + index * MINUTE_MS)
        draft = preview(client, "x")
        shown = {
            line.line_id: (
                line.quantity,
                line.amount,
                line.overage,
                {c.grant_id: c.credits for c in line.credits_applied},
                line.amount_due,
            )
            for line in draft.lines
        }
        assert shown == X_LINES
        assert (draft.subtotal, draft.overage_amount, draft.overage_price) == ("161.1", "19", "0.015")
        assert (draft.overage_due, draft.rounding_adjustment, draft.top_up_purchases, draft.total_due) == (
            "0.28",
            "-0.01",
            "0.00",
            "0.28",
        )
        assert {c.grant_id: c.credits for c in draft.credits_applied} == {"g1": "120", "g2": "22.1"}
        assert {g.grant_id: (g.granted, g.drawn, g.remaining, g.expired) for g in draft.grant_balances} == {
            "g1": ("120", "120", "0", "0"),
            "g2": ("30", "22.1", "7.9", "0"),
        }
        for line_id, (quantity, amount, overage, credits, _) in X_LINES.items():
            entries = explain_one_at_a_time(client, "x", line_id, quantity, amount)
            assert sum(Decimal(e.overage) for e in entries) == Decimal(overage), line_id
            drawn: dict[str, Decimal] = {}
            for entry in entries:
                for draw in entry.draws:
                    drawn[draw.grant_id] = drawn.get(draw.grant_id, Decimal(0)) + Decimal(draw.credits)
            assert {g: c for g, c in drawn.items() if c} == {g: Decimal(c) for g, c in credits.items()}, line_id
        assert explained_rows(explain_one_at_a_time(client, "x", "vol;k=c", "201", "22.1")) == [
            ("x9", "100", "110", "1.1", "80", [("g2", "30")]),
            ("x10", "101", "-87.9", "-0.870297029703", "-80", [("g2", "-7.9")]),
        ]
        assert explained_rows(explain_one_at_a_time(client, "x", "vol;k=a", "210", "23")) == [
            ("x1", "90", "100", "1.111111111111", "0", [("g1", "100")]),
            ("x3", "20", "-40", "-2", "0", [("g1", "-40")]),
            ("x6", "100", "-37", "-0.37", "0", [("g1", "-37")]),
        ]
        final = close(client, "x")
        assert but_final_fields(final) == but_final_fields(draft)


def explain_one_at_a_time(
    client: TariffClient, who: str, line_id: str, quantity: str, amount: str
) -> list[invoices_pb2.ExplainedEvent]:
    """Pages of one event: each token, used twice, answers the same page; the sums are the line's own."""
    entries: list[invoices_pb2.ExplainedEvent] = []
    page = explain_page(client, who, line_id, 1)
    while True:
        assert (page.line_quantity, page.line_amount) == (quantity, amount), line_id
        assert len(page.events) == 1, page
        entries.extend(page.events)
        if not page.next_page_token:
            break
        following = explain_page(client, who, line_id, 1, page.next_page_token)
        assert explain_page(client, who, line_id, 1, page.next_page_token) == following  # a token reused
        page = following
    assert len({e.transaction_id for e in entries}) == len(entries)
    assert sum(Decimal(e.quantity) for e in entries) == Decimal(quantity)
    assert sum(Decimal(e.amount) for e in entries) == Decimal(amount)
    for entry in entries:
        assert sum(Decimal(d.credits) for d in entry.draws) + Decimal(entry.overage) == Decimal(entry.amount), entry
    return entries


def test_close_retried_answers_once_and_refusals_name_the_field_and_change_nothing(
    server_factory: ServerFactory,
) -> None:
    """January: 1,500 units of `unit` (1.5 credits, no grant) at 1 KWD a credit: 1.500 KWD due (3 decimals). Closing
    takes one journal record and number INV-00000001; closing again answers the same invoice, moves no seq, writes no
    audit entry and takes no number (February's close is INV-00000002). A January event sent after the close is
    PERIOD_CLOSED and, the batch accepting nothing, moves no seq (its ack carries the current one). Refusals, each
    changing nothing: no period_start (INVALID_ARGUMENT naming period_start), a period_start inside January (naming
    the nearest start, 2026-01-01T00:00:00Z), no customer_id (INVALID_ARGUMENT naming customer_id), an unknown
    customer (NOT_FOUND), the current period, not ended (FAILED_PRECONDITION saying when it ends). After a kill -9
    and a restart, closing January again still answers the same invoice and moves nothing."""
    server = server_factory(name="closing-twice", extra_args=["--close-grace", "off"])
    with server.client() as client:
        catalogue(client)
        customer(client, "k", "KWD", "1")
        one(client, "k1", "k", "unit", "a", 1500, JAN + DAY_MS)
        one(client, "k2", "k", "unit", "a", 2500, FEB + DAY_MS)
        before = seq(client, "k")
        january = close(client, "k")
        assert (january.invoice_number, january.minor_unit, january.total_due, january.overage_due) == (
            "INV-00000001",
            3,
            "1.500",
            "1.500",
        )
        after = seq(client, "k")
        assert after == before + 1
        closes = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="ClosePeriod")).entries
        assert len(closes) == 1
        assert close(client, "k") == january
        assert seq(client, "k") == after
        assert len(client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="ClosePeriod")).entries) == 1

        late = usage_pb2.UsageEvent(
            transaction_id="k-late", customer_id="k", event_type="unit", timestamp_ms=JAN + 2 * DAY_MS, values={"n": 1}
        )
        ack = client.ingest_batch([late], "k-late")
        assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"]
        assert (ack.accepted, ack.journal_seq, seq(client, "k")) == (0, after, after)

        def close_request(**fields: object) -> invoices_pb2.Invoice:
            found: invoices_pb2.Invoice = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(**fields))  # type: ignore[arg-type]
            return found

        expect_error(S.INVALID_ARGUMENT, lambda: close_request(customer_id="k"), "period_start")
        inside = expect_error(
            S.INVALID_ARGUMENT, lambda: close_request(customer_id="k", period_start=ts(JAN + DAY_MS)), "period_start"
        )
        assert "2026-01-01T00:00:00Z" in inside
        expect_error(S.INVALID_ARGUMENT, lambda: close_request(period_start=ts(FEB)), "customer_id")
        assert "ghost" in expect_error(S.NOT_FOUND, lambda: close_request(customer_id="ghost", period_start=ts(FEB)))
        now = datetime.now(UTC)
        current = datetime(now.year, now.month, 1, tzinfo=UTC)
        following = datetime(now.year + now.month // 12, now.month % 12 + 1, 1, tzinfo=UTC)
        not_ended = expect_error(
            S.FAILED_PRECONDITION,
            lambda: close_request(customer_id="k", period_start=ts(int(current.timestamp() * 1000))),
        )
        assert following.strftime("%Y-%m-%dT%H:%M:%SZ") in not_ended, not_ended
        assert seq(client, "k") == after
        assert [
            i.invoice_number for i in client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest()).invoices
        ] == ["INV-00000001"]
        assert preview(client, "k", JAN) == january
        february = close(client, "k", FEB)
        assert (february.invoice_number, february.total_due) == ("INV-00000002", "2.500")
        closed_seq = seq(client, "k")
    server.kill9()
    server.start()
    with server.client() as client:
        assert (close(client, "k"), close(client, "k", FEB)) == (january, february)
        ack = client.ingest_batch([late], "k-late-again")
        assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"]
        assert seq(client, "k") == closed_seq
        assert len(client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="ClosePeriod")).entries) == 2


def month_start(moment: datetime, months: int) -> datetime:
    """The first of the month `months` after moment's (negative: before), 00:00 UTC."""
    index = moment.year * 12 + moment.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def test_a_discounted_grant_drawn_over_three_periods_then_expiring_breaks_the_rest_at_its_cost_basis(
    server_factory: ServerFactory,
) -> None:
    """The contract starts on the first of the month two months back (periods P1, P2 and the current P3). g7: 7
    credits paid 2 (2/7 a credit), burning first, expiring a few seconds from now (in P3); g10: 10 credits paid 10.
    1 credit of usage in P1, 2 in P2, 1 in P3 (all from g7, sent before the expiry); the clock then breaks g7's last 3
    credits; a P3 event dated before the expiry but sent after it draws 2 from g10 (breakage is final).
    Recognised from credits, cumulatively rounded half-even to the pico: P1 2 x 1/7 = 0.285714285714|28...;
    P2 2 x 3/7 = 0.857142857142|857... -> 0.857142857143, less P1: 0.571428571429; P3 2 x 4/7 = 1.142857142857|142...
    less 0.857142857143 = 0.285714285714, plus g10's 2: 2.285714285714. Breakage in P3: 2 x (4 + 3)/7 = 2, less
    1.142857142857: 0.857142857143 (so g7 is worth exactly its 2 paid). Sold: 12 in P1 (both grants start with the
    contract). Deferred: 12 - 0.285714285714 = 11.714285714286; - 0.571428571429 = 11.142857142857; -
    2.285714285714 - 0.857142857143 = 8 (g10's 8 left at 1). Reconciliation: 0 + 12 - 3.142857142857 -
    0.857142857143 = 8."""
    now = datetime.now(UTC)
    p1, p2, p3, p4 = (month_start(now, months) for months in (-2, -1, 0, 1))
    p1_ms, p2_ms, p3_ms, p4_ms = (int(p.timestamp() * 1000) for p in (p1, p2, p3, p4))
    expiry_ms = int((now.replace(microsecond=0) + timedelta(seconds=5)).timestamp() * 1000)
    with start_server(server_factory, "discount-expiry") as client:
        catalogue(client)
        contract_id = customer(client, "d", "USD", "1", start_ms=p1_ms)
        give(client, contract_id, "g7", "7", "2", priority=1, expires_at=ts(expiry_ms))
        give(client, contract_id, "g10", "10", "10", priority=2)
        one(client, "d1", "d", "unit", "a", 1000, p1_ms + DAY_MS)
        one(client, "d2", "d", "unit", "a", 2000, p2_ms + DAY_MS)
        one(client, "d3", "d", "unit", "a", 1000, p3_ms + MINUTE_MS)
        assert int(time.time() * 1000) < expiry_ms, "the usage before the expiry took too long to send"
        report = wait_for_breakage(client, "d", p1_ms, p4_ms)
        one(client, "d4", "d", "unit", "a", 2000, p3_ms + 2 * MINUTE_MS)
        late = explain_page(client, "d", "unit;k=a", 0, period_ms=p3_ms)
        assert explained_rows(late.events) == [
            ("d3", "1000", "1", "0.001", "0", [("g7", "1")]),
            ("d4", "2000", "2", "0.001", "0", [("g10", "2")]),
        ]
        balances = [
            {g.grant_id: (g.granted, g.drawn, g.remaining, g.expired) for g in preview(client, "d", at).grant_balances}
            for at in (p1_ms, p2_ms, p3_ms)
        ]
        assert balances == [
            {"g7": ("7", "1", "6", "0"), "g10": ("10", "0", "10", "0")},
            {"g7": ("7", "3", "4", "0"), "g10": ("10", "0", "10", "0")},
            {"g7": ("7", "4", "0", "3"), "g10": ("10", "2", "8", "0")},
        ]
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(p1_ms), period_end=ts(p4_ms), customer_id="d")
        )
        assert [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.breakage, line.deferred)
            for line in report.customer_lines
        ] == [
            (p1_ms, "0.285714285714", "0", "11.714285714286"),
            (p2_ms, "0.571428571429", "0", "11.142857142857"),
            (p3_ms, "2.285714285714", "0.857142857143", "8"),
        ]
        assert [(line.product_id, line.recognized_credits, line.breakage) for line in report.lines] == [
            ("unit", "0.285714285714", "0"),
            ("unit", "0.571428571429", "0"),
            ("unit", "2.285714285714", "0"),
        ]
        r = report.reconciliation
        assert (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
            "0",
            "12",
            "3.142857142857",
            "0.857142857143",
            "8",
            True,
        )


SWITCH = JAN + 19 * DAY_MS + 12 * 3_600_000  # 2026-01-20T12:00:00Z
SWITCH_END = FEB + 19 * DAY_MS + 12 * 3_600_000  # 2026-02-20T12:00:00Z
# (transaction id, product, k, n, at): sent interleaved, old contract's and new contract's events alternating.
M_EVENTS = [
    ("m1", "unit", "a", 1500, JAN + 4 * DAY_MS),
    ("m2", "unit", "a", 2500, SWITCH + 5 * DAY_MS),
    ("m3", "unit", "b", 500, JAN + 9 * DAY_MS),
    ("m4", "grad", "a", 50, SWITCH + DAY_MS),
    ("m5", "grad", "a", 150, SWITCH - 1),
    ("m6", "unit", "c", 1000, FEB + 9 * DAY_MS),
    ("m7", "unit", "a", 9000, SWITCH_END),  # the new contract's second period
]


def test_a_mid_period_switch_prices_and_rounds_each_dimension_line_under_its_own_contract(
    server_factory: ServerFactory,
) -> None:
    """Contract m-old from Jan 1 ends before 2026-01-20T12:00Z (its last period keeps its monthly end, Jan 1 - Feb 1),
    overage at 0.003 USD; m-new from then (periods from Jan 20 12:00 - Feb 20 12:00), overage at 0.02 USD, `unit` at
    twice the list price. Graduated tiers: <=100: 10 + 1/unit; <=200: 5 + 0.5/unit. Each event is its own
    contract's, by its timestamp (m5 a millisecond before the switch is the old one's):
    old period: unit;k=a 1.5, unit;k=b 0.5, grad;k=a (150) 10 + 100 + 5 + 25 = 140; subtotal 142. Dues at 0.003:
    0.0045 -> 0.00, 0.0015 -> 0.00, 0.42; overage_due 142 x 0.003 = 0.426 -> 0.43; rounding_adjustment +0.01.
    new period: unit;k=a 2500 x 2/1000 = 5, unit;k=c 2, grad;k=a (a fresh aggregate: 50) 10 + 50 = 60; subtotal 67.
    Dues at 0.02: 0.10, 0.04, 1.20; overage_due 1.34, adjustment 0.00. The new contract's second period: unit;k=a
    9000 x 2/1000 = 18, due 0.36. The same line id explains only its own period's events in each. The CSV export of
    January's periods (both start in it): per invoice, the rows' amount_due + rounding_adjustment +
    top_up_purchases = total_due."""
    server = server_factory(name="switch-lines", extra_args=["--close-grace", "off"])
    with server.client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="m", name="m"))
        for suffix, start, end, price in (("old", JAN, SWITCH, "0.003"), ("new", SWITCH, None, "0.02")):
            request = contracts_pb2.CreateContractRequest(
                id=f"m-{suffix}",
                customer_id="m",
                rate_card_id="audit-credits",
                starting_at=ts(start),
                overage_policy=contracts_pb2.ALLOW,
                overage_price=price,
                currency="USD",
            )
            if end is not None:
                request.ending_before.CopyFrom(ts(end))
            client.contracts.CreateContract(request)
        client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id="m-new", override=contracts_pb2.PriceOverride(id="twice", product_id="unit", multiplier="2")
            )
        )
        for tx, product_id, k, n, at_ms in M_EVENTS:
            one(client, tx, "m", product_id, k, n, at_ms)
        old, new, second = preview(client, "m", JAN), preview(client, "m", SWITCH), preview(client, "m", SWITCH_END)
        assert [
            (i.contract_id, i.period_start.ToMilliseconds(), i.period_end.ToMilliseconds()) for i in (old, new, second)
        ] == [("m-old", JAN, FEB), ("m-new", SWITCH, SWITCH_END), ("m-new", SWITCH_END, ms_months(SWITCH_END, 1))]
        assert [(line.line_id, line.amount, line.amount_due) for line in old.lines] == [
            ("grad;k=a", "140", "0.42"),
            ("unit;k=a", "1.5", "0.00"),
            ("unit;k=b", "0.5", "0.00"),
        ]
        assert (old.subtotal, old.overage_due, old.rounding_adjustment, old.total_due) == (
            "142",
            "0.43",
            "0.01",
            "0.43",
        )
        assert [(line.line_id, line.amount, line.amount_due) for line in new.lines] == [
            ("grad;k=a", "60", "1.20"),
            ("unit;k=a", "5", "0.10"),
            ("unit;k=c", "2", "0.04"),
        ]
        assert (new.subtotal, new.overage_due, new.rounding_adjustment, new.total_due) == ("67", "1.34", "0.00", "1.34")
        assert [(line.line_id, line.amount, line.amount_due) for line in second.lines] == [("unit;k=a", "18", "0.36")]
        for period_ms, line_id, expected in (
            (JAN, "unit;k=a", [("m1", "1.5")]),
            (SWITCH, "unit;k=a", [("m2", "5")]),
            (JAN, "grad;k=a", [("m5", "140")]),
            (SWITCH, "grad;k=a", [("m4", "60")]),
        ):
            page = explain_page(client, "m", line_id, 0, period_ms=period_ms)
            assert [(e.transaction_id, e.amount) for e in page.events] == expected, (period_ms, line_id)
        finals = [close(client, "m", JAN), close(client, "m", SWITCH)]
        assert [but_final_fields(f) for f in finals] == [but_final_fields(old), but_final_fields(new)]
        exported = tariff(server, "invoices", "export", "--period", "2026-01", "--format", "csv").stdout
        rows = list(csv.DictReader(io.StringIO(exported)))
        by_invoice: dict[str, list[dict[str, str]]] = {}
        for row in rows:
            by_invoice.setdefault(row["invoice_number"], []).append(row)
        assert sorted(by_invoice) == ["INV-00000001", "INV-00000002"]
        for number, invoice_rows in by_invoice.items():
            first = invoice_rows[0]
            due = sum(Decimal(r["amount_due"]) for r in invoice_rows)
            assert due + Decimal(first["rounding_adjustment"]) + Decimal(first["top_up_purchases"]) == Decimal(
                first["total_due"]
            ), number
        assert [(r["line_id"], r["amount_due"], r["total_due"]) for r in by_invoice["INV-00000001"]] == [
            ("grad;k=a", "0.42", "0.43"),
            ("unit;k=a", "0.00", "0.43"),
            ("unit;k=b", "0.00", "0.43"),
        ]


def ms_months(at_ms: int, months: int) -> int:
    moment = datetime.fromtimestamp(at_ms / 1000, UTC)
    index = moment.year * 12 + moment.month - 1 + months
    return int(moment.replace(year=index // 12, month=index % 12 + 1).timestamp() * 1000)


def test_overage_and_top_ups_round_apart_and_total_due_adds_the_rounded_figures(server_factory: ServerFactory) -> None:
    """BHD (3 decimals). Top-up policy: below 1 credit, buy up to 3 at 0.0005 BHD a credit, once a period. Overage at
    0.00025 BHD a credit. y1 (unit;k=a, 2 credits) finds no credit: 2 of overage, then buys 3 (0.0015 BHD); y2
    (unit;k=b, 5 credits) draws the 3 and leaves 2 of overage (no second purchase: at most once). Lines owe 2 x
    0.00025 = 0.0005 each, half a minor unit, half-even to 0.000; overage_due 4 x 0.00025 = 0.001 exactly, so
    rounding_adjustment 0.001; top_up_purchases 0.0015 half-even to 0.002; total_due = overage_due + top_up_purchases
    = 0.003 (the docs add the rounded figures: not 0.0025 rounded). Revenue: 0.0015 sold and recognised from
    credits (3 at 0.0005), 0.001 recognised from overage, nothing deferred."""
    with start_server(server_factory, "overage-and-top-ups") as client:
        catalogue(client)
        contract_id = customer(client, "y", "BHD", "0.00025")
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="3", price_per_credit="0.0005", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        one(client, "y1", "y", "unit", "a", 2000, JAN + DAY_MS)
        one(client, "y2", "y", "unit", "b", 5000, JAN + 2 * DAY_MS)
        draft = preview(client, "y")
        top_up = f"top-up-{JAN}-1"
        assert [
            (line.line_id, line.amount, line.overage, [(c.grant_id, c.credits) for c in line.credits_applied])
            for line in draft.lines
        ] == [("unit;k=a", "2", "2", []), ("unit;k=b", "5", "2", [(top_up, "3")])]
        assert [line.amount_due for line in draft.lines] == ["0.000", "0.000"]
        assert (draft.minor_unit, draft.overage_amount, draft.overage_due, draft.rounding_adjustment) == (
            3,
            "4",
            "0.001",
            "0.001",
        )
        assert (draft.top_up_purchases, draft.total_due) == ("0.002", "0.003")
        final = close(client, "y")
        assert but_final_fields(final) == but_final_fields(draft)
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(FEB), customer_id="y")
        )
        (line,) = report.customer_lines
        assert (line.recognized_credits, line.recognized_overage, line.recognized, line.deferred) == (
            "0.0015",
            "0.001",
            "0.0025",
            "0",
        )
        r = report.reconciliation
        assert (r.prepaid_sold, r.recognized_credits, r.deferred_end, r.reconciles) == ("0.0015", "0.0015", "0", True)


def test_a_running_periods_draft_shows_a_rollover_due_at_its_end_as_closing_will(
    server_factory: ServerFactory,
) -> None:
    """README "Draft = final": the draft is computed as closing would, and a final invoice shows a grant that rolled
    over by the period's end as drawn into its ROLLOVER grant and the rest expired (InvoiceGrantBalance). A grant of
    10 credits (paid 5) with rollover_fraction 0.333333333333333333, on a contract that starts this month, 4 credits
    drawn: at the period's end 0.333333333333333333 x 6 = 1.999999999999999998 rolls, rounded down to 10^-12:
    1.999999999999; so the draft shows drawn 4 + 1.999999999999 = 5.999999999999, remaining 0, expired
    4.000000000001, as the final invoice will from the same usage; so does next month's draft. GetBalance, live,
    still shows 6 remaining."""
    now = datetime.now(UTC)
    start_ms = int(month_start(now, 0).timestamp() * 1000)
    with start_server(server_factory, "draft-rollover") as client:
        catalogue(client)
        contract_id = customer(client, "f", "USD", "1", start_ms=start_ms)
        give(client, contract_id, "roll", "10", "5", rollover_fraction="0.333333333333333333")
        one(client, "f1", "f", "unit", "a", 4000, start_ms + MINUTE_MS)
        draft = preview(client, "f", start_ms)
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in draft.grant_balances] == [
            ("roll", "10", "5.999999999999", "0", "4.000000000001")
        ]
        assert [(g.grant_id, g.remaining, g.expired) for g in client.get_balance("f").grants] == [("roll", "6", "0")]
        # Next month's draft (its grant rolled over before it starts) shows the grant alike.
        following = preview(client, "f", int(month_start(now, 1).timestamp() * 1000))
        assert [(g.grant_id, g.drawn, g.remaining, g.expired) for g in following.grant_balances][:1] == [
            ("roll", "5.999999999999", "0", "4.000000000001")
        ]


def test_a_give_back_across_two_grants_returns_to_the_last_burnt_first_and_revenue_follows(
    server_factory: ServerFactory,
) -> None:
    """docs/architecture.md §5 step 7: a negative charge gives credits back to the grants the aggregate drew from, in
    reverse burn order. cheap: 50 credits paid 5 (0.1 a credit, priority 1); dear: 100 paid 50 (0.5, priority 2).
    r1 vol;k=a 90 units: 10 + 90 = 100, drawing cheap's 50 then 50 of dear; r2 20 more (110 units, second tier: 5 +
    55 = 60): -40, all given back to dear (burnt last), none to cheap; r3 unit;k=a 30,000 units: 30, from dear
    (cheap is empty). The invoice: vol;k=a 60 = cheap 50 + dear 10; unit;k=a 30 from dear; balances cheap 50 drawn,
    dear 40 drawn, 60 left. Revenue (cost basis per grant): cheap 5 x 50/50 = 5, dear 50 x 40/100 = 20: 25
    recognised, split by product in proportion to draws: vol 5 + 50 x 10/100 = 10, unit 50 x 30/100 = 15. Sold 55,
    deferred 30 (dear's 60 left at 0.5). Were the 40 given back to cheap, cheap would recognise 1 and dear 25."""
    with start_server(server_factory, "give-back-order") as client:
        catalogue(client)
        contract_id = customer(client, "v", "USD", "1")
        give(client, contract_id, "cheap", "50", "5", priority=1)
        give(client, contract_id, "dear", "100", "50", priority=2)
        for index, (tx, product_id, n) in enumerate((("r1", "vol", 90), ("r2", "vol", 20), ("r3", "unit", 30000))):
            one(client, tx, "v", product_id, "a", n, JAN + DAY_MS + index * MINUTE_MS)
        assert explained_rows(explain_page(client, "v", "vol;k=a", 0).events) == [
            ("r1", "90", "100", "1.111111111111", "0", [("cheap", "50"), ("dear", "50")]),
            ("r2", "20", "-40", "-2", "0", [("dear", "-40")]),
        ]
        draft = preview(client, "v")
        assert [
            (line.line_id, line.amount, line.overage, [(c.grant_id, c.credits) for c in line.credits_applied])
            for line in draft.lines
        ] == [
            ("unit;k=a", "30", "0", [("dear", "30")]),
            ("vol;k=a", "60", "0", [("cheap", "50"), ("dear", "10")]),
        ]
        assert [(g.grant_id, g.drawn, g.remaining) for g in draft.grant_balances] == [
            ("cheap", "50", "0"),
            ("dear", "40", "60"),
        ]
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(FEB), customer_id="v")
        )
        assert [(line.product_id, line.recognized_credits) for line in report.lines] == [("unit", "15"), ("vol", "10")]
        assert [(line.recognized_credits, line.deferred) for line in report.customer_lines] == [("25", "30")]
        r = report.reconciliation
        assert (r.prepaid_sold, r.recognized_credits, r.deferred_end, r.reconciles) == ("55", "25", "30", True)


def test_top_ups_across_a_switch_count_in_the_period_of_the_event_that_bought_them(
    server_factory: ServerFactory,
) -> None:
    """m-old from Jan 1 (overage 0.003 USD) ends before 2026-01-20T12:00Z, m-new from then (overage 0.02 USD); the
    old contract's last period (Jan 1 - Feb 1) overlaps the new one's first (Jan 20 12:00 - Feb 20 12:00). Top-ups:
    below 1 credit, buy up to 3 at 0.01 USD a credit, once per billing period. a1 (Jan 5, old, 2 credits): no
    credit, 2 of overage, buys 3 (top-up-<Jan 1>-1, 0.03, usable from Jan 1); a2 (Jan 24 12:00, new, 5 credits):
    draws those 3, 2 of overage, buys 3 in the new period (top-up-<Jan 20 12:00>-1, 0.03, usable from then, its own
    period's one purchase); a3 (Jan 6, old, 1 credit): the new top-up is not usable before Jan 20 12:00, so 1 of
    overage, and nothing bought. Old invoice: overage 3 x 0.003 = 0.009 -> 0.01, top-ups 0.03, total 0.04, nothing
    drawn by its own usage. New invoice: overage 2 x 0.02 = 0.04, top-ups 0.03, total 0.07, 3 drawn. Revenue: the
    old line sells 0.03, recognises 0.009 of overage and defers 0.03; the new line sells 0.03, recognises 0.03 of
    credits and 0.04 of overage, and defers 0.03 (0.03 + 0.03 - 0.03)."""
    with start_server(server_factory, "top-ups-switch") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="m", name="m"))
        for suffix, start, end, price in (("old", JAN, SWITCH, "0.003"), ("new", SWITCH, None, "0.02")):
            request = contracts_pb2.CreateContractRequest(
                id=f"m-{suffix}",
                customer_id="m",
                rate_card_id="audit-credits",
                starting_at=ts(start),
                overage_policy=contracts_pb2.ALLOW,
                overage_price=price,
                currency="USD",
            )
            if end is not None:
                request.ending_before.CopyFrom(ts(end))
            client.contracts.CreateContract(request)
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="3", price_per_credit="0.01", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="m-old", top_up=policy))
        one(client, "a1", "m", "unit", "a", 2000, JAN + 4 * DAY_MS)
        one(client, "a2", "m", "unit", "a", 5000, SWITCH + 4 * DAY_MS)
        one(client, "a3", "m", "unit", "a", 1000, JAN + 5 * DAY_MS)
        bought = [f"top-up-{JAN}-1", f"top-up-{SWITCH}-1"]
        old, new = preview(client, "m", JAN), preview(client, "m", SWITCH)
        assert [
            (
                i.contract_id,
                i.overage_amount,
                i.overage_due,
                i.top_up_purchases,
                i.total_due,
                [(c.grant_id, c.credits) for c in i.credits_applied],
                [(g.grant_id, g.drawn, g.remaining) for g in i.grant_balances],
            )
            for i in (old, new)
        ] == [
            ("m-old", "3", "0.01", "0.03", "0.04", [], [(bought[0], "0", "3"), (bought[1], "0", "3")]),
            ("m-new", "2", "0.04", "0.03", "0.07", [(bought[0], "3")], [(bought[0], "3", "0"), (bought[1], "0", "3")]),
        ]
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(FEB), customer_id="m")
        )
        assert [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.recognized_overage, line.deferred)
            for line in report.customer_lines
        ] == [(JAN, "0", "0.009", "0.03"), (SWITCH, "0.03", "0.04", "0.03")]
        r = report.reconciliation
        assert (r.prepaid_sold, r.recognized_credits, r.deferred_end, r.reconciles) == ("0.06", "0.03", "0.03", True)
