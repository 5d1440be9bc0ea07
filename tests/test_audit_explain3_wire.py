"""A third acceptance audit of ExplainLineItem over the wire (README "Why was I charged this?", invoices.proto's
InvoiceLine.adjustments and ExplainLineItemRequest), on what a re-rated line shows once usage arrives after its
re-rating. Every amount asserted is worked out by hand from the documents (arithmetic in each docstring); the
periods are long over (2026-01), the server runs with `--close-grace off`."""

from __future__ import annotations

from tariff.v1 import invoices_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_explain_wire import (
    adjustment_fields,
    card,
    check_sums,
    customer,
    every_page,
    ingest,
    product,
    publish_price,
    unit,
    use,
)
from tests.test_audit_invoices_wire import JAN, ms, ts

CARD = "explain-card"


def test_usage_rated_into_a_re_rated_hour_adds_to_the_bucket_after_its_adjustment(
    server_factory: ServerFactory,
) -> None:
    """`use` at 1 (v1). e1 (Jan 15 10:00, 1 unit) is charged 1. v2 at 2 from that hour re-rates its bucket 1 -> 2
    (+1, 1 unit, 1 event). e2 (10:30, 3 units) then lands in the re-rated hour: 3 x 2 = 6 at v2. The bucket now
    holds 4 units and 8 (v2's part: 4 units, 8, 2 events), while its adjustment keeps what the re-rating did (new
    amount 2, quantity 1, 1 event): a bucket's latest new_amount is its amount as of that re-rating, usage rated
    into it since adds to it. The pages: e1 1 (v1), e2 6 (v2), then the adjustment +1: 8, the line's amount."""
    server = server_factory()
    hour = ms("2026-01-15T10:00:00")
    with server.client() as client:
        product(client, "use", dimensions=())
        card(client, [unit("use", "1")])
        customer(client, "v")
        assert ingest(client, "r-1", use("e1", "2026-01-15T10:00:00", 1)).accepted == 1
        assert publish_price(client, 1, "2", hour) == 2
        assert ingest(client, "r-2", use("e2", "2026-01-15T10:30:00", 3)).accepted == 1
        invoice = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="v", period_start=ts(JAN))
        )
        [line] = invoice.lines
        assert (line.quantity, line.amount, line.events) == ("4", "8", 2)
        assert [(p.version, p.quantity, p.amount, p.events) for p in line.prices] == [(2, "4", "8", 2)]
        [adjustment] = line.adjustments
        assert (adjustment.new_version, adjustment.quantity, adjustment.events) == (2, "1", 1)
        assert (adjustment.old_amount, adjustment.new_amount, adjustment.delta) == ("1", "2", "1")
        for page_size in (1, 2, 3):
            entries, last = every_page(client, "v", "use", page_size)
            assert [(e.transaction_id, e.version, e.amount) for e in entries] == [
                ("e1", 1, "1"), ("e2", 2, "6"), ("", 2, "1")
            ]  # fmt: skip
            assert adjustment_fields(entries[2]) == (hour, CARD, [1], 2, "1", 1, "1", "2", "1")
            assert (last.line_amount, last.line_quantity) == ("8", "4")
            check_sums(entries, last)
