"""An acceptance audit of the invoice lifecycle over several billing periods, over the wire against a real server
(invoices.proto ClosePeriod, CloseDuePeriods, GetInvoice, ListInvoices, GetRevenueReport; README "Invoices and
revenue", "Revenue", "Credits and the gateway"; contracts.proto "Paged lists"), with restarts (kill -9 and SIGTERM)
between periods. Every amount asserted is computed by hand from the documented rules (the arithmetic is in each
docstring), none read back from the server.

Product `units` (event type `work`, SUM of `n`); rate card `card` (credits), version 1 from 2026-01-01 prices a unit
at 1. Customer `lc`, contract `lc` from 2026-08-01 (ALLOW, overage at 0.5 USD): periods Aug, Sep, Oct, Nov (all
ended on the server's clock) and Dec (running). The tests run in order, each going on from the state the previous
one left (one server for the module, `--close-grace off` so that nothing closes by itself)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import audit_count, open_contract, preview, refusal, rejected_in, release, serving, unit
from tests.serverproc import ServerProcess
from tests.test_audit_lifecycle_wire import catalogue


def at(text: str) -> int:
    """Unix ms of an ISO-8601 UTC instant ("2026-10-10T12:00:00")."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


AUG, SEP, OCT, NOV, DEC = (at(f"2026-{m:02d}-01T00:00:00") for m in (8, 9, 10, 11, 12))
JAN = at("2027-01-01T00:00:00")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-lifecycle2")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def event(tx: str, when_ms: int, n: float, customer_id: str = "lc", reservation_id: str = "") -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=tx,
        customer_id=customer_id,
        event_type="work",
        timestamp_ms=when_ms,
        values={"n": n},
        reservation_id=reservation_id,
    )


def accepted(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    assert rejected_in(client, *events) == []


def grant(client: TariffClient, grant_id: str, amount: str, paid: str, **fields: object) -> None:
    made = contracts_pb2.Grant(
        id=grant_id, customer_id="lc", contract_id="lc", kind=contracts_pb2.PREPAID, amount=amount, paid_amount=paid
    )
    for name, value in fields.items():
        if name in ("starts_at", "expires_at"):
            getattr(made, name).CopyFrom(stamp(int(str(value))))
        else:
            setattr(made, name, value)
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def hold(client: TariffClient, customer_id: str, reservation_id: str, n: float) -> balance_pb2.AuthorizeResponse:
    """Authorize(reserve=true) of a `work` event of n units under `reservation_id`, held for an hour."""
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id,
        event_type="work",
        values={"n": n},
        reserve=True,
        reservation_id=reservation_id,
        reservation_ttl=Duration(seconds=3600),
    )
    answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(request)
    return answer


def close(client: TariffClient, period_start_ms: int, customer_id: str = "lc") -> invoices_pb2.Invoice:
    request = invoices_pb2.ClosePeriodRequest(customer_id=customer_id, period_start=stamp(period_start_ms))
    invoice: invoices_pb2.Invoice = client.invoices.ClosePeriod(request)
    return invoice


def get(client: TariffClient, number: str) -> invoices_pb2.Invoice:
    invoice: invoices_pb2.Invoice = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=number))
    return invoice


def listed(client: TariffClient, **fields: object) -> tuple[list[str], str]:
    """(the invoice numbers of one ListInvoices page, its next_page_token)."""
    request = invoices_pb2.ListInvoicesRequest()
    for name, value in fields.items():
        if name.startswith("period_start"):
            getattr(request, name).CopyFrom(stamp(int(str(value))))
        else:
            setattr(request, name, value)
    page = client.invoices.ListInvoices(request)
    return [i.invoice_number for i in page.invoices], page.next_page_token


def every_page(client: TariffClient, **fields: object) -> list[list[str]]:
    pages, token = [], ""
    while True:
        numbers, token = listed(client, page_token=token, **fields)
        pages.append(numbers)
        if not token:
            return pages


def money(invoice: invoices_pb2.Invoice) -> tuple[object, ...]:
    """What an invoice bills: (customer, period start, subtotal, overage amount, overage due, top-ups, total, each
    line's (quantity, amount, version parts, credits per grant, overage, amount due, adjustments (old, new)), the
    invoice's credits per grant, and its grant balances by grant id)."""
    lines = [
        (
            line.quantity,
            line.amount,
            [(p.version, p.quantity, p.amount) for p in line.prices],
            [(c.grant_id, c.credits) for c in line.credits_applied],
            line.overage,
            line.amount_due,
            [(a.old_amount, a.new_amount) for a in line.adjustments],
        )
        for line in invoice.lines
    ]
    return (
        invoice.customer_id,
        invoice.period_start.seconds * 1000,
        invoice.subtotal,
        invoice.overage_amount,
        invoice.overage_due,
        invoice.top_up_purchases,
        invoice.total_due,
        lines,
        [(c.grant_id, c.credits) for c in invoice.credits_applied],
        balances(invoice),
    )


def balances(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, str, str]]:
    """The invoice's grant balances: grant id -> (granted, drawn, remaining, expired)."""
    return {g.grant_id: (g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances}


def revenue(client: TariffClient, customer_id: str = "lc") -> invoices_pb2.RevenueReport:
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=stamp(AUG), period_end=stamp(JAN), customer_id=customer_id
    )
    report: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(request)
    return report


def customer_lines(report: invoices_pb2.RevenueReport) -> list[tuple[str, ...]]:
    """Per period of the report's customer lines: (month, recognized_credits, recognized_overage, recognized,
    breakage, deferred)."""
    return [
        (
            datetime.fromtimestamp(line.period_start.seconds, UTC).strftime("%m"),
            line.recognized_credits,
            line.recognized_overage,
            line.recognized,
            line.breakage,
            line.deferred,
        )
        for line in report.customer_lines
    ]


def reconciliation(report: invoices_pb2.RevenueReport) -> tuple[object, ...]:
    r = report.reconciliation
    return (
        r.deferred_start,
        r.prepaid_sold,
        r.recognized_credits,
        r.breakage,
        r.deferred_end,
        r.recognized_overage,
        r.recognized,
        r.reconciles,
    )


def explained(client: TariffClient, period_start_ms: int) -> list[tuple[str, str, str]]:
    """The `units` line of lc's period, every page of ExplainLineItem (2 entries a page): (transaction id or "adj",
    quantity, amount) of each entry."""
    entries, token = [], ""
    while True:
        request = invoices_pb2.ExplainLineItemRequest(
            customer_id="lc", period_start=stamp(period_start_ms), line_id="units", page_size=2, page_token=token
        )
        page = client.invoices.ExplainLineItem(request)
        entries += [(e.transaction_id or "adj", e.quantity, e.amount) for e in page.events]
        token = page.next_page_token
        if not token:
            return entries


def snapshot_of_reads(client: TariffClient) -> tuple[object, ...]:
    """Every read this audit makes, to compare across restarts."""
    numbers = [n for page in every_page(client) for n in page]
    invoices = [get(client, n) for n in numbers]
    previews = [preview(client, "lc", month) for month in (AUG, SEP, OCT, NOV, DEC)]
    return (
        numbers,
        [i.SerializeToString(deterministic=True) for i in invoices],
        [money(p) for p in previews],
        revenue(client).SerializeToString(deterministic=True),
        [explained(client, month) for month in (AUG, SEP)],
    )


AUG_INVOICE: tuple[object, ...] = (
    "lc",
    AUG,
    "30",
    "0",
    "0.00",
    "0.00",
    "0.00",
    [("30", "30", [(1, "30", "30")], [("P", "30")], "0", "0.00", [])],
    [("P", "30")],
    {"P": ("100", "30", "70", "0"), "E": ("10", "0", "10", "0")},
)


def test_periods_rate_by_hand_and_closing_refuses_a_running_period_and_a_start_off_the_period(
    server: ServerProcess,
) -> None:
    """Grants: P (PREPAID, 100 credits paid 40 USD: 0.4 a credit, from the contract's start, no expiry), E (PREPAID,
    10 paid 5, expires Sep 15: granted with its expiry past, so it breaks at once, before any usage, drawing
    nothing). Usage: Aug 10 30 units, Sep 10 50, Oct 10 40, Nov 10 7, each at 1 a unit.
    Aug: P 30 (70 left), due 0.00. Sep: P 50 (20 left). Oct: P 20, overage 20: due 20 x 0.5 = 10.00. Nov: overage 7:
    3.50. Aug's draft lists P (100 granted, 30 drawn, 70 remaining) and E (10 remaining: E expires after Aug's end).
    ClosePeriod of Dec (running) is FAILED_PRECONDITION naming its end, 2027-01-01; of Aug 15 INVALID_ARGUMENT
    naming period_start and the nearest period start, 2026-08-01; nothing is closed by either."""
    with server.client() as client:
        open_contract(client, "lc", "lc", AUG, rate_card_id="card", overage_price="0.5")
        grant(client, "P", "100", "40")
        grant(client, "E", "10", "5", expires_at=at("2026-09-15T00:00:00"))
        accepted(
            client,
            event("a1", at("2026-08-10T10:00:00"), 30),
            event("s1", at("2026-09-10T10:00:00"), 50),
            event("o1", at("2026-10-10T10:00:00"), 40),
            event("n1", at("2026-11-10T10:00:00"), 7),
        )
        assert money(preview(client, "lc", AUG)) == AUG_INVOICE
        sep, octo, nov = (money(preview(client, "lc", m)) for m in (SEP, OCT, NOV))
        assert sep[2:8] == (
            "50",
            "0",
            "0.00",
            "0.00",
            "0.00",
            [("50", "50", [(1, "50", "50")], [("P", "50")], "0", "0.00", [])],
        )
        assert octo[2:7] == ("40", "20", "10.00", "0.00", "10.00")
        assert nov[2:7] == ("7", "7", "3.50", "0.00", "3.50")

        code, message = refusal(lambda: close(client, DEC))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "2027-01-01" in message, message
        code, message = refusal(lambda: close(client, at("2026-08-15T00:00:00")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "period_start" in message, message
        assert "2026-08-01" in message, message
        assert listed(client) == ([], "")


def test_closing_twice_answers_the_same_invoice_and_survives_kill_9(server: ServerProcess) -> None:
    """ClosePeriod(Aug) makes INV-00000001, equal to the draft but for number, status and closed_at; again, it
    answers the same invoice (same number and closed_at), makes none and journals nothing (no record, no audit
    entry); the invoice reads the same after kill -9."""
    with server.client() as client:
        draft = preview(client, "lc", AUG)
        first = close(client, AUG)
        assert first.invoice_number == "INV-00000001" and first.status == invoices_pb2.INVOICE_FINAL
        assert money(first) == AUG_INVOICE
        expected = invoices_pb2.Invoice()
        expected.CopyFrom(draft)
        expected.invoice_number, expected.status = first.invoice_number, first.status
        expected.closed_at.CopyFrom(first.closed_at)
        assert first == expected
        seq, entries = (
            client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="lc")).as_of_seq,
            audit_count(client),
        )
        assert close(client, AUG) == first
        assert client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="lc")).as_of_seq == seq
        assert audit_count(client) == entries
        assert listed(client) == (["INV-00000001"], "")
        assert get(client, "INV-00000001") == first
        before = snapshot_of_reads(client)
    server.kill9()
    server.start()
    with server.client() as client:
        assert close(client, AUG) == first
        assert snapshot_of_reads(client) == before


def test_late_usage_grants_and_a_retroactive_publish_leave_the_closed_invoice_alone(server: ServerProcess) -> None:
    """After Aug is closed: an Aug 20 event is PERIOD_CLOSED (nothing rated); a Sep 20 event (5 units, Sep open) is
    rated: P is empty, so 5 of overage. Grant G (PREPAID, 20 paid 10, starts at the contract's start, Aug 1) pays
    nothing already rated. Version 2 (2 a unit) published effective Aug 1: Aug's 30 units are left alone (1 bucket,
    1 event, 30 credits); Sep, Oct and Nov are re-rated and settled again in time order, in burn order (P, 70 left
    after Aug, then G by creation order): Sep 10 50 -> 100: P 70, G 20, overage 10; Sep 20 5 -> 10: overage 10; Oct
    40 -> 80: overage 80; Nov 7 -> 14: overage 14. So Sep 110 (P 70, G 20, overage 20, due 10.00), Oct 80 (40.00),
    Nov 14 (7.00). Aug's invoice is the one closed (its draft too, read at any instant of it), its line explained by
    its one event; Sep's line by its events at the prices they were rated at (50, 5) and the re-rating's
    adjustments (+50, +5), summing to 110; all the same after a graceful restart."""
    with server.client() as client:
        closed = get(client, "INV-00000001")
        assert rejected_in(client, event("late-a", at("2026-08-20T10:00:00"), 9)) == [("late-a", "PERIOD_CLOSED")]
        accepted(client, event("s2", at("2026-09-20T10:00:00"), 5))
        grant(client, "G", "20", "10")
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("units", "2")])
        )
        reply = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="card", version=2, effective_from=stamp(AUG))
        )
        assert (reply.closed_buckets_left_alone, reply.closed_events_left_alone, reply.closed_amount_left_alone) == (
            1,
            1,
            "30",
        )
        assert get(client, "INV-00000001") == closed
        assert preview(client, "lc", AUG) == closed == preview(client, "lc", at("2026-08-20T10:00:00"))
        assert explained(client, AUG) == [("a1", "30", "30")]
        assert explained(client, SEP) == [("s1", "50", "50"), ("s2", "5", "5"), ("adj", "0", "50"), ("adj", "0", "5")]
        sep = money(preview(client, "lc", SEP))
        assert sep[2:9] == (
            "110",
            "20",
            "10.00",
            "0.00",
            "10.00",
            [
                (
                    "55",
                    "110",
                    [(2, "55", "110")],
                    [("P", "70"), ("G", "20")],
                    "20",
                    "10.00",
                    [("50", "100"), ("5", "10")],
                )
            ],
            [("G", "20"), ("P", "70")],
        )
        assert sep[9] == {"P": ("100", "100", "0", "0"), "E": ("10", "0", "0", "10"), "G": ("20", "20", "0", "0")}
        assert money(preview(client, "lc", OCT))[2:7] == ("80", "80", "40.00", "0.00", "40.00")
        assert money(preview(client, "lc", NOV))[2:7] == ("14", "14", "7.00", "0.00", "7.00")
        before = snapshot_of_reads(client)
    assert server.terminate() == 0
    server.start()
    with server.client() as client:
        assert snapshot_of_reads(client) == before


def test_close_due_periods_closes_in_order_with_a_hold_open_and_a_retry_closes_nothing(server: ServerProcess) -> None:
    """Customer `lb`, contract `lb` from Oct 15 (overage at 1 USD), 3 units on Oct 20 at version 2: 6 of overage,
    6.00; its periods Oct 15 - Nov 15 (ended) and Nov 15 - Dec 15 (running). Grant H to `lc` (PREPAID 10 paid 10,
    from Nov 1): Nov's invoice lists it. Holds now (Dec, version 2): r1 4 units = 8 credits, r2 1 unit = 2 credits,
    both on H. CloseDuePeriods closes lc Sep (ends Oct 1), lc Oct (Nov 1), lb Oct 15 (Nov 15), lc Nov (Dec 1), in
    that order: INV-00000002 .. 5. Nov's invoice: H granted 10, drawn 0, remaining 10 (what holds hold is not drawn).
    A retry makes nothing; ClosePeriod of a period it closed answers that invoice. Then: an event settling r2 dated
    Nov 20 is PERIOD_CLOSED, so r2 is still held (released: 2); one settling r1 dated now (Dec) with 3 units draws 6
    from H (Dec's draft). AddOverride (0.1 a unit over Aug .. Dec) and a top-up policy change no closed invoice."""
    with server.client() as client:
        open_contract(client, "lb", "lb", at("2026-10-15T00:00:00"), rate_card_id="card")
        accepted(client, event("b1", at("2026-10-20T10:00:00"), 3, customer_id="lb"))
        grant(client, "H", "10", "10", starts_at=NOV)
        for reservation_id, n in (("r1", 4), ("r2", 1)):
            answer = hold(client, "lc", reservation_id, n)
            assert (answer.allowed, answer.estimated_cost) == (True, str(2 * n))
        drafts = [
            preview(client, c, m) for c, m in (("lc", SEP), ("lc", OCT), ("lb", at("2026-10-15T00:00:00")), ("lc", NOV))
        ]

        made = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
        numbers = [i.invoice_number for i in made.invoices]
        assert (numbers, made.invoices_made, made.next_page_token) == (
            ["INV-00000002", "INV-00000003", "INV-00000004", "INV-00000005"],
            4,
            "",
        )
        for invoice, draft in zip(made.invoices, drafts, strict=True):
            assert money(invoice) == money(draft)
        assert money(made.invoices[2])[2:7] == ("6", "6", "6.00", "0.00", "6.00")
        assert balances(made.invoices[3])["H"] == ("10", "0", "10", "0")
        again = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
        assert (list(again.invoices), again.invoices_made, again.next_page_token) == ([], 0, "")
        assert close(client, NOV) == made.invoices[3]

        now = datetime.now(UTC)
        assert rejected_in(client, event("late-n", at("2026-11-20T10:00:00"), 1, reservation_id="r2")) == [
            ("late-n", "PERIOD_CLOSED")
        ]
        assert release(client, "lc", "r2") == "2"
        accepted(client, event("d1", int(now.timestamp() * 1000), 3, reservation_id="r1"))
        dec = money(preview(client, "lc", DEC))
        assert dec[2:9] == (
            "6",
            "0",
            "0.00",
            "0.00",
            "0.00",
            [("3", "6", [(2, "3", "6")], [("H", "6")], "0", "0.00", [])],
            [("H", "6")],
        )

        override = contracts_pb2.PriceOverride(
            id="cheap", product_id="units", price="0.1", starting_at=stamp(AUG), ending_before=stamp(DEC)
        )
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="lc", override=override))
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="5", price_per_credit="1", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="lc", top_up=policy))
        for invoice in made.invoices:
            assert get(client, invoice.invoice_number) == invoice
            assert preview(client, invoice.customer_id, invoice.period_start.seconds * 1000) == invoice


def test_list_invoices_pages_filters_and_limits(server: ServerProcess) -> None:
    """Five invoices: 1 lc Aug, 2 lc Sep, 3 lc Oct, 4 lb Oct 15, 5 lc Nov. In number order, page_size 2: [1, 2],
    [3, 4], [5]; customer lb: [4]; period_start_from Oct 1: [3, 4, 5]; period_start_before Oct 1: [1, 2]; from Oct 15
    before Nov 1: [4]; from Oct 1 + 0.5 ms (filters compare to the nanosecond): [4, 5]; page_size 5000 reads as
    1,000: all five; DRAFT: none; a status InvoiceStatus does not define is INVALID_ARGUMENT naming status."""
    n = [f"INV-0000000{i}" for i in range(1, 6)]
    with server.client() as client:
        assert every_page(client, page_size=2) == [n[0:2], n[2:4], n[4:5]]
        assert every_page(client, customer_id="lb") == [[n[3]]]
        assert every_page(client, customer_id="lc", page_size=2) == [[n[0], n[1]], [n[2], n[4]]]
        assert every_page(client, period_start_from=OCT) == [n[2:5]]
        assert every_page(client, period_start_before=OCT) == [n[0:2]]
        assert every_page(client, period_start_from=at("2026-10-15T00:00:00"), period_start_before=NOV) == [[n[3]]]
        request = invoices_pb2.ListInvoicesRequest(period_start_from=stamp(OCT))
        request.period_start_from.nanos += 500_000
        assert [i.invoice_number for i in client.invoices.ListInvoices(request).invoices] == n[3:5]
        assert listed(client, page_size=5000) == (n, "")
        assert listed(client, status=invoices_pb2.INVOICE_DRAFT) == ([], "")
        assert listed(client, status=invoices_pb2.INVOICE_FINAL) == (n, "")
        code, message = refusal(lambda: listed(client, status=7))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "status" in message, message


def test_list_tokens_outside_the_request_are_refused_and_stay_valid_across_a_restart(server: ServerProcess) -> None:
    """contracts.proto "Paged lists": a page_token that is another customer's invoice, one outside the filters, or
    made up is INVALID_ARGUMENT naming page_token; a token stays valid across restarts: INV-00000002 with page_size 2
    gives [3, 4], after kill -9 too. GetInvoice: empty is INVALID_ARGUMENT naming invoice_number, an unknown number
    NOT_FOUND. ClosePeriod: an unknown customer is NOT_FOUND, a period_start finer than a millisecond
    INVALID_ARGUMENT naming period_start, lb's running period (Nov 15 - Dec 15) FAILED_PRECONDITION naming its end."""
    with server.client() as client:
        for fields in (
            {"customer_id": "lb", "page_token": "INV-00000002"},
            {"period_start_from": OCT, "page_token": "INV-00000001"},
            {"page_token": "INV-00000099"},
            {"page_token": "INV-2"},
            {"page_token": "garbage"},
        ):
            code, message = refusal(lambda fields=fields: listed(client, **fields))  # type: ignore[misc]
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in message, (fields, message)
        page = listed(client, page_size=2, page_token="INV-00000002")
        assert page == (["INV-00000003", "INV-00000004"], "INV-00000004")
        code, message = refusal(lambda: get(client, ""))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "invoice_number" in message, message
        code, message = refusal(lambda: get(client, "INV-00000099"))
        assert code == grpc.StatusCode.NOT_FOUND and "INV-00000099" in message, message
        code, message = refusal(lambda: close(client, AUG, customer_id="nobody"))
        assert code == grpc.StatusCode.NOT_FOUND and "nobody" in message, message
        fine = invoices_pb2.ClosePeriodRequest(customer_id="lc", period_start=stamp(SEP))
        fine.period_start.nanos = 1
        code, message = refusal(lambda: client.invoices.ClosePeriod(fine))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "period_start" in message, message
        code, message = refusal(lambda: close(client, at("2026-11-15T00:00:00"), customer_id="lb"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "2026-12-15" in message, message
    server.kill9()
    server.start()
    with server.client() as client:
        assert listed(client, page_size=2, page_token="INV-00000002") == page


def test_grants_made_after_their_periods_closed_sell_and_break_in_the_first_open_period(server: ServerProcess) -> None:
    """With Aug .. Nov closed: X (PREPAID 10 paid 3, from Aug 1, expiring Oct 20) and R (PREPAID 40 paid 20, from
    Sep 1, rollover_fraction 0.5: rolls at Oct 1, 20 into rollover-R-<Oct 1>, usable until Nov 1, and 20 broken). Both
    are made after their periods closed, so both are sold, and all their breakage (X 10 x 0.3 = 3, R 20 x 0.5 = 10,
    its ROLLOVER grant's 20 x 0.5 = 10) counted, in Dec, the first period still open: Dec sold 23, breakage 23,
    deferred 10 + 23 - 6 - 23 = 4. No closed invoice changes; Dec's draft lists X (10 expired), R (20 drawn into
    its ROLLOVER grant, 20 expired) and the ROLLOVER grant (20 expired)."""
    with server.client() as client:
        closed = [get(client, f"INV-0000000{i}") for i in range(1, 6)]
        grant(client, "X", "10", "3", expires_at=at("2026-10-20T00:00:00"))
        grant(client, "R", "40", "20", starts_at=SEP, rollover_fraction="0.5")
        # A usage batch: the writer records the expiry and rollover due before it rates it (README "Expiry and
        # breakage"), so the journal holds them once it is acknowledged (an event for lb's running period).
        accepted(client, event("b2", at("2026-11-20T10:00:00"), 0, customer_id="lb"))
        assert [get(client, f"INV-0000000{i}") for i in range(1, 6)] == closed
        rolled = f"rollover-R-{OCT}"
        dec = balances(preview(client, "lc", DEC))
        assert {k: dec[k] for k in ("X", "R", rolled)} == {
            "X": ("10", "0", "0", "10"),
            "R": ("40", "20", "0", "20"),
            rolled: ("20", "0", "0", "20"),
        }
        report = revenue(client)
        assert customer_lines(report) == [
            ("08", "12", "0", "12", "0", "33"),
            ("09", "38", "10", "48", "5", "0"),
            ("10", "0", "40", "40", "0", "0"),
            ("11", "0", "7", "7", "0", "10"),
            ("12", "6", "0", "6", "23", "4"),
        ]
        assert reconciliation(report) == ("0", "88", "56", "28", "4", "57", "113", True)


def test_revenue_over_the_periods_by_hand_and_every_read_the_same_after_kill_9(server: ServerProcess) -> None:
    """lc's customer lines (USD; P 0.4 a credit, E 0.5, G 0.5, H 1):
    Aug: sold P 40 + E 5 (from the contract's start); recognised 30 x 0.4 = 12 (closed before the publish); deferred
    45 - 12 = 33. Sep: sold G 10 (made after Aug closed: the first period open then); credits P 70 x 0.4 = 28 + G 20 x
    0.5 = 10: 38; overage 20 x 0.5 = 10; breakage E 5 (its last usable instant is in Sep, open when recorded);
    deferred 33 + 10 - 38 - 5 = 0. Oct: overage 40, deferred 0. Nov: sold H 10, overage 7, deferred 10. Dec: credits
    H 6 x 1 = 6, sold X 3 + R 20 and their breakage 23 (the test before), deferred 10 + 23 - 6 - 23 = 4.
    Reconciliation Aug 1 .. Jan 1: 0 + 88 - 56 - 28 = 4; overage 57; recognised 113. Product lines (units): each
    period's recognised credits and overage, breakage 0, deferred empty. The same after kill -9, with every invoice,
    list and draft."""
    with server.client() as client:
        report = revenue(client)
        assert customer_lines(report) == [
            ("08", "12", "0", "12", "0", "33"),
            ("09", "38", "10", "48", "5", "0"),
            ("10", "0", "40", "40", "0", "0"),
            ("11", "0", "7", "7", "0", "10"),
            ("12", "6", "0", "6", "23", "4"),
        ]
        assert reconciliation(report) == ("0", "88", "56", "28", "4", "57", "113", True)
        products = [
            (line.product_id, line.recognized_credits, line.recognized_overage, line.breakage, line.deferred)
            for line in report.lines
        ]
        assert products == [
            ("units", "12", "0", "0", ""),
            ("units", "38", "10", "0", ""),
            ("units", "0", "40", "0", ""),
            ("units", "0", "7", "0", ""),
            ("units", "6", "0", "0", ""),
        ]
        before = snapshot_of_reads(client)
    server.kill9()
    server.start()
    with server.client() as client:
        assert snapshot_of_reads(client) == before


def test_a_contract_created_after_a_switched_contracts_last_period_closed_leaves_that_periods_revenue_alone(
    server: ServerProcess,
) -> None:
    """invoices.proto RevenueLine: "A closed period's lines never change once the customer's earlier periods are
    closed too"; README "Revenue": once a period is closed, and every earlier period too, "its lines never change".

    Customer `sw`, contract `sw1` from Aug 1 ending before Sep 16: its last period Sep 1 - Oct 1 keeps its monthly
    end. Grant A (PREPAID 10 paid 10, from Aug 1, expiring Sep 20: granted with its expiry past, it breaks at once,
    10 USD; its last usable instant, Sep 19, is in no contract, so in the period holding it, sw1's Sep 1). Grant B
    (PREPAID 10 paid 4, of the customer only, from Sep 20: after sw1's ending_before, before its last period's
    monthly end, so sold in that period). Aug: sold 10, deferred 10. Sep 1: sold 4, breakage 10, deferred 10 + 4 -
    10 = 4. Both periods are closed; then contract `sw2` is created from Sep 16 (the contract in force at Sep 19 and
    Sep 20 from then on). The closed lines stay as they were: Sep 1 breakage 10, deferred 4; sw2's Sep 16 line and
    the later ones break nothing and keep deferred 4. The server moved A's breakage and B's sale onto sw2's Sep 16
    line: the closed Sep 1 line read breakage 0, deferred 10."""
    with server.client() as client:
        open_contract(client, "sw", "sw1", AUG, at("2026-09-16T00:00:00"), rate_card_id="card")
        expiring = contracts_pb2.Grant(
            id="sw-A", customer_id="sw", contract_id="sw1", kind=contracts_pb2.PREPAID, amount="10", paid_amount="10"
        )
        expiring.expires_at.CopyFrom(stamp(at("2026-09-20T00:00:00")))
        late = contracts_pb2.Grant(
            id="sw-B", customer_id="sw", kind=contracts_pb2.PREPAID, amount="10", paid_amount="4"
        )
        late.starts_at.CopyFrom(stamp(at("2026-09-20T00:00:00")))
        for made in (expiring, late):
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        # A usage batch: the writer records the expiry due before it rates it (README "Expiry and breakage").
        accepted(client, event("sw-0", at("2026-08-10T10:00:00"), 0, customer_id="sw"))

        def lines() -> list[tuple[str, ...]]:
            report = revenue(client, "sw")
            assert reconciliation(report) == ("0", "14", "0", "10", "4", "0", "0", True)
            return [
                (line.period_start.ToJsonString()[:10], line.breakage, line.deferred) for line in report.customer_lines
            ]

        closed = [("2026-08-01", "0", "10"), ("2026-09-01", "10", "4")]
        assert lines() == closed
        close(client, AUG, "sw")
        close(client, SEP, "sw")
        open_contract(client, "sw", "sw2", at("2026-09-16T00:00:00"), rate_card_id="card")
        sw2 = [(f"2026-{m}-16", "0", "4") for m in ("09", "10", "11", "12")]
        assert lines() == [*closed, *sw2]


def month_before(when_ms: int) -> int | None:
    """The same UTC day and time a month earlier, None when that month has no such day."""
    when = datetime.fromtimestamp(when_ms / 1000, UTC)
    year, month = (when.year, when.month - 1) if when.month > 1 else (when.year - 1, 12)
    try:
        return int(when.replace(year=year, month=month).timestamp() * 1000)
    except ValueError:
        return None


def close_once_ended(client: TariffClient, customer_id: str, period_start_ms: int) -> invoices_pb2.Invoice:
    """ClosePeriod, asked again while the period has not ended (FAILED_PRECONDITION) until the close is journaled."""
    while True:
        try:
            return close(client, period_start_ms, customer_id)
        except TariffError as refused:
            assert refused.code == grpc.StatusCode.FAILED_PRECONDITION, refused.details
            assert "has not ended" in refused.details, refused.details
            time.sleep(0.05)


def test_a_period_closed_at_its_end_with_holds_open_on_an_expiring_and_a_rolling_grant(server: ServerProcess) -> None:
    """A contract `lh` whose first period ends a few seconds from now (it started a month before that instant). Y
    (PREPAID 10 paid 10, expiring at the period's end), Z (PREPAID 10 paid 5, rollover_fraction 0.5, no expiry).
    2 units now at version 2 (4 credits) draw Y (the expiring grant burns first): Y 6 left. Holds: r1 2 units (4,
    all from Y), r2 4 units (8: Y 2, Z 6). At the period's end Y expires holding 6, all held: it stays deferred
    (README "Deferred"); Z rolls 0.5 x (4 remaining + 6 held) = 5 into rollover-Z-<end> (remainder 2 and r2's 3),
    5 break: 2.5 USD. The close comes at or after the period's end (not a millisecond before), its invoice as its
    draft: Y granted 10, drawn 4, remaining 0, expired 6 (held credit on a grant expired by the end shows
    expired); Z drawn 5, expired 5. Revenue of that period: recognised 4 x 1 = 4, breakage 2.5, deferred 10 + 5 -
    4 - 2.5 = 8.5 (Y's 6 held, the 5 rolled at 0.5). Releasing r1 (4) and r2 (2 broken on Y, 3 back to the
    ROLLOVER grant: 5) breaks Y's 6 in the next period, the first still open: breakage 6, deferred 8.5 - 6 = 2.5;
    the closed period's line and invoice stay as they were."""
    end_ms = (now_ms() // 1000 + 4) * 1000
    start_ms = month_before(end_ms)
    if start_ms is None:
        pytest.skip("no such day a month before now")
    with server.client() as client:
        open_contract(client, "lh", "lh", start_ms, rate_card_id="card")
        for grant_id, paid, extra in (("Y", "10", "expires"), ("Z", "5", "rolls")):
            made = contracts_pb2.Grant(
                id=grant_id,
                customer_id="lh",
                contract_id="lh",
                kind=contracts_pb2.PREPAID,
                amount="10",
                paid_amount=paid,
            )
            if extra == "expires":
                made.expires_at.CopyFrom(stamp(end_ms))
            else:
                made.rollover_fraction = "0.5"
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        accepted(client, event("h0", now_ms(), 2, customer_id="lh"))
        for reservation_id, n in (("r1", 2), ("r2", 4)):
            answer = hold(client, "lh", reservation_id, n)
        if now_ms() >= end_ms or answer.credits_available != "4":
            pytest.skip("the machine took longer than the period had left to place the holds before its end")
        draft = preview(client, "lh", start_ms)
        invoice = close_once_ended(client, "lh", start_ms)
        assert invoice.closed_at.ToMilliseconds() >= end_ms == invoice.period_end.ToMilliseconds()
        assert money(invoice) == money(draft)
        assert money(invoice)[2:] == (
            "4",
            "0",
            "0.00",
            "0.00",
            "0.00",
            [("2", "4", [(2, "2", "4")], [("Y", "4")], "0", "0.00", [])],
            [("Y", "4")],
            {"Y": ("10", "4", "0", "6"), "Z": ("10", "5", "0", "5")},
        )

        def report() -> list[tuple[str, ...]]:
            request = invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(start_ms), period_end=stamp(end_ms + 1), customer_id="lh"
            )
            return customer_lines(client.invoices.GetRevenueReport(request))  # the period and the next

        assert [line[1:] for line in report()] == [("4", "0", "4", "2.5", "8.5"), ("0", "0", "0", "0", "8.5")]
        assert (release(client, "lh", "r1"), release(client, "lh", "r2")) == ("4", "5")
        assert [line[1:] for line in report()] == [("4", "0", "4", "2.5", "8.5"), ("0", "0", "0", "6", "2.5")]
        assert get(client, invoice.invoice_number) == invoice
