"""ExplainLineItem on a re-rated line, against a real server: after the line's events come its re-rating
adjustments (one per InvoiceLine.adjustments entry, amount = new - old), so that the pages sum to the line's amount
from PreviewInvoice exactly, whatever the page size, with page tokens running on across the boundary, and after kill -9 alike."""

from __future__ import annotations

import time
from decimal import Decimal

from tariff import TariffClient
from tariff.v1 import invoices_pb2, pricing_pb2

from engine.lines import line_id
from tests.serverproc import ServerFactory
from tests.test_cli import tariff
from tests.test_server_admin import (
    CARD,
    CUSTOMER,
    HOUR_MS,
    MINUTE_MS,
    S,
    build_catalogue,
    expect_error,
    ingest_one,
    llm,
)
from tests.test_server_explain import stamp
from tests.test_server_rerate import markup_draft

INPUT_LINE = line_id("input_tokens", {"model": "gpt-4", "region": "us"})
OUTPUT_LINE = line_id("output_tokens", {"model": "gpt-4", "region": "us"})


def explain(
    client: TariffClient, period_ms: int, line: str, page_size: int, token: str = ""
) -> invoices_pb2.ExplainLineItemResponse:
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=CUSTOMER, period_start=stamp(period_ms), line_id=line, page_size=page_size, page_token=token
    )
    response: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(request)
    return response


def drill(client: TariffClient, period_ms: int, line: str, page_size: int) -> list[list[invoices_pb2.ExplainedEvent]]:
    """Every page of the line, page by page."""
    pages: list[list[invoices_pb2.ExplainedEvent]] = []
    token = ""
    while True:
        page = explain(client, period_ms, line, page_size, token)
        assert 0 < len(page.events) <= page_size
        pages.append(list(page.events))
        token = page.next_page_token
        if not token:
            return pages


def test_a_rerated_line_explains_its_events_then_its_adjustments_summing_to_the_line(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    with server.client() as client:
        h0 = build_catalogue(client).h0  # v1: markup 1.2, gpt-4 us input 0.036 per 1k tokens: 0.36 an event
        for n, at_ms in enumerate([h0 + 5 * MINUTE_MS] * 3 + [h0 + HOUR_MS + 5 * MINUTE_MS] * 2, start=1):
            ingest_one(client, llm(f"e{n}", at_ms + n, "gpt-4", "us", 10_000, 10_000))
        # v2 (markup 1.5: 0.045 per 1k) effective from h0 re-rates both hours: h0 1.08 -> 1.35, h0+1h 0.72 -> 0.9.
        v2 = markup_draft(client, "1.5")
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v2, effective_from=stamp(h0))
        )
        assert (published.buckets_rerated, published.events_rerated) == (4, 5)
        [audit] = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="PublishVersion")).entries[-1:]
        # A late event in hour h0, rated at v2's price after the re-rating: 0.45.
        ingest_one(client, llm("e6", h0 + 30 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))

        preview = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=CUSTOMER, period_start=stamp(h0))
        )
        line = next(found for found in preview.lines if found.line_id == INPUT_LINE)
        assert line.amount == "2.7"  # 1.35 + 0.45 (e6) + 0.9
        assert [(a.journal_seq, a.hour.ToMilliseconds(), a.old_amount, a.new_amount) for a in line.adjustments] == [
            (audit.seq, h0, "1.08", "1.35"),
            (audit.seq, h0 + HOUR_MS, "0.72", "0.9"),
        ]

        whole = [entry for page in drill(client, h0, INPUT_LINE, 100) for entry in page]
        assert [e.transaction_id for e in whole] == ["e1", "e2", "e3", "e4", "e5", "e6", "", ""]
        events, adjustments = whole[:6], whole[6:]
        # Each event keeps what it was charged when rated: 0.36 under v1, e6 0.45 under v2.
        assert [(e.amount, e.version, e.HasField("adjustment")) for e in events] == [("0.36", 1, False)] * 5 + [
            ("0.45", v2, False)
        ]
        # The adjustment entries: amount new - old, the bucket's hour, the publish's seq and both versions; no
        # per-adjustment draws (the re-rating settled the period's draws as a whole).
        assert [
            (e.amount, e.timestamp_ms, e.version, e.quantity, e.unit_price, list(e.draws), e.overage)
            for e in adjustments
        ] == [("0.27", h0, v2, "0", "", [], ""), ("0.18", h0 + HOUR_MS, v2, "0", "", [], "")]
        assert [e.adjustment for e in adjustments] == list(line.adjustments)
        first = adjustments[0].adjustment
        assert (first.journal_seq, list(first.old_versions), first.new_version) == (audit.seq, [1], v2)
        assert (first.quantity, first.events, first.delta) == ("30000", 3, "0.27")
        assert sum(Decimal(e.amount) for e in whole) == Decimal(line.amount)

        # Small pages: the same entries in the same order, pages ending on, before and across the boundary.
        for page_size in range(1, 9):
            pages = drill(client, h0, INPUT_LINE, page_size)
            assert [len(p) for p in pages[:-1]] == [page_size] * (len(pages) - 1)
            assert [e for page in pages for e in page] == whole, page_size
        mixed = explain(client, h0, INPUT_LINE, 4, explain(client, h0, INPUT_LINE, 4).next_page_token)
        assert [e.transaction_id or e.adjustment.new_amount for e in mixed.events] == ["e5", "e6", "1.35", "0.9"]
        assert (mixed.next_page_token, mixed.line_amount) == ("", "2.7")

        # A token past the events is bound to its line like any other: for another line it is stale.
        into_adjustments = explain(client, h0, INPUT_LINE, 7).next_page_token
        assert into_adjustments
        expect_error(S.INVALID_ARGUMENT, lambda: explain(client, h0, OUTPUT_LINE, 7, into_adjustments))
        # The output line was re-rated too and sums to its own amount.
        output = next(found for found in preview.lines if found.line_id == OUTPUT_LINE)
        output_entries = [e for page in drill(client, h0, OUTPUT_LINE, 3) for e in page]
        assert len(output_entries) == 6 + len(output.adjustments) == 8
        assert sum(Decimal(e.amount) for e in output_entries) == Decimal(output.amount)

        # The CLI names each adjustment by the publish that made it and the versions it moved between.
        period = time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(h0 / 1000))
        table = tariff(server, "invoices", "explain", CUSTOMER, INPUT_LINE, "--period-start", period).stdout
        assert table.count(f"re-rated #{audit.seq} v1->v{v2}") == 2

    # After kill -9: the same pages (adjustments come back with the kernel's state), and a token issued before
    # the crash, past the events, still pages the adjustments.
    server.kill9()
    server.restart()
    with server.client() as client:
        assert [e for page in drill(client, h0, INPUT_LINE, 3) for e in page] == whole
        resumed = explain(client, h0, INPUT_LINE, 7, into_adjustments)
        assert (list(resumed.events), resumed.next_page_token) == (whole[7:], "")


def test_a_bucket_rerated_twice_by_a_publish_and_a_rollback_still_sums_exactly(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        h0 = build_catalogue(client).h0
        for n in range(1, 4):  # 0.36 each under v1
            ingest_one(client, llm(f"e{n}", h0 + n * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        v2 = markup_draft(client, "1.5")  # 0.45 an event
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v2, effective_from=stamp(h0))
        )
        # The rollback publishes a copy of v1 as v3 from h0: the bucket goes 1.08 -> 1.35 -> 1.08.
        rolled = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(h0))
        )
        assert rolled.buckets_rerated == 2
        preview = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=CUSTOMER, period_start=stamp(h0))
        )
        line = next(found for found in preview.lines if found.line_id == INPUT_LINE)
        assert line.amount == "1.08"
        entries = [e for page in drill(client, h0, INPUT_LINE, 2) for e in page]
        assert [(e.transaction_id, e.amount) for e in entries] == [
            ("e1", "0.36"),
            ("e2", "0.36"),
            ("e3", "0.36"),
            ("", "0.27"),
            ("", "-0.27"),
        ]
        moves = [(list(e.adjustment.old_versions), e.adjustment.new_version, e.version) for e in entries[3:]]
        assert moves == [([1], v2, v2), ([v2], v2 + 1, v2 + 1)]
        assert entries[3].adjustment.journal_seq < entries[4].adjustment.journal_seq
        assert sum(Decimal(e.amount) for e in entries) == Decimal(line.amount)
