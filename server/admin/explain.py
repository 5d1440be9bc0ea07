"""`tariff invoices explain`: the events behind one invoice line (InvoiceService.ExplainLineItem), page by page.

It joins the `invoices` group of server/admin/invoices.py (server/admin/__init__.py adds it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING

import click

from server.admin.invoices import period_starting_in
from server.admin.output import print_fields, print_json, print_table, unit_suffix
from server.admin.remote import Remote, remote_command
from server.admin.versions import UtcTime

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp
    from tariff import TariffClient
    from tariff.v1 import invoices_pb2

PAGE_SIZE = 1_000


def period_of(
    client: TariffClient, customer_id: str, period: str | None, period_start: datetime | None
) -> tuple[Timestamp, invoices_pb2.Invoice | None]:
    """The period's start: --period-start as given; --period YYYY-MM, the customer's period that starts in that month
    (as `invoices preview` and `close` read it: a contract anchored mid-month has no period starting on the 1st); else
    the customer's current period. With the draft (or final invoice) of the period when finding it read that."""
    from google.protobuf.timestamp_pb2 import Timestamp
    from tariff.v1 import invoices_pb2

    if period_start is not None:
        start = Timestamp()
        start.FromDatetime(period_start)
        return start, None
    if period:
        found = period_starting_in(client, customer_id, period)
    else:
        found = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id))
    return found.period_start, found


def pricing_unit_of(
    client: TariffClient, customer_id: str, start: Timestamp, invoice: invoices_pb2.Invoice | None
) -> str:
    """The pricing unit the line's amounts are in: its invoice's, which ExplainLineItem's answer does not name (one
    more read when finding the period did not read the invoice)."""
    from tariff.v1 import invoices_pb2

    if invoice is None:
        invoice = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=start)
        )
    return invoice.pricing_unit


@click.command()
@click.argument("customer_id")
@click.argument("line_id")
@click.option(
    "--period", metavar="YYYY-MM", help="the billing period starting in that month  [default: the current period]"
)
@click.option(
    "--period-start",
    type=UtcTime(),
    metavar="ISO-8601",
    help="the exact start of the billing period (overrides --period)",
)
@click.option("--page-size", type=click.IntRange(1, PAGE_SIZE), help="one page of this many events, not every page")
@click.option("--page-token", default="", help="the page to start at (a next_page_token)")
@remote_command
def explain(
    remote: Remote,
    customer_id: str,
    line_id: str,
    period: str | None,
    period_start: datetime | None,
    page_size: int | None,
    page_token: str,
) -> None:
    """Why was CUSTOMER_ID charged LINE_ID? Every event behind the line: quantity, version, unit price, amount and
    the credits it drew per grant, in the invoice's pricing unit; the amounts sum to the line's amount."""
    from tariff.v1 import invoices_pb2

    events: list[invoices_pb2.ExplainedEvent] = []
    token = page_token
    with remote.client() as client:
        start, invoice = period_of(client, customer_id, period, period_start)
        while True:
            request = invoices_pb2.ExplainLineItemRequest(
                customer_id=customer_id,
                period_start=start,
                line_id=line_id,
                page_size=page_size or PAGE_SIZE,
                page_token=token,
            )
            page = client.invoices.ExplainLineItem(request)
            events.extend(page.events)
            token = page.next_page_token
            if not token or page_size:
                break
        if remote.as_json:
            # The server's answer, its pages joined: ExplainLineItemResponse in protobuf's JSON mapping.
            print_json(
                invoices_pb2.ExplainLineItemResponse(
                    events=events, next_page_token=token, line_amount=page.line_amount, line_quantity=page.line_quantity
                )
            )
            return
        pricing_unit = pricing_unit_of(client, customer_id, start, invoice)
    unit = unit_suffix(pricing_unit)
    rows = [
        (
            e.transaction_id or adjustment_label(e),
            event_time(e.timestamp_ms),
            e.quantity,
            e.version,
            e.unit_price,
            e.amount,
            ", ".join(f"{d.grant_id}: {d.credits}" for d in e.draws),
            e.overage,
        )
        for e in events
    ]
    prices = (f"unit price{unit}", f"amount{unit}", f"credits drawn{unit}", f"overage{unit}")
    print_table(("transaction", "time", "quantity", "version", *prices), rows, title=line_id)
    print_fields(
        [
            ("events", sum(1 for e in events if not e.HasField("adjustment"))),
            ("re-rating adjustments", sum(1 for e in events if e.HasField("adjustment"))),
            (f"line amount{unit}", page.line_amount),
            ("line quantity", page.line_quantity),
            ("next page token", token),
        ]
    )


def event_time(timestamp_ms: int) -> str:
    """An entry's time to the wire's millisecond: `2026-01-20 10:00:00.123Z`."""
    moment = datetime.fromtimestamp(timestamp_ms // 1000, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{timestamp_ms % 1000:03d}Z"


def adjustment_label(entry: invoices_pb2.ExplainedEvent) -> str:
    """The transaction column of a re-rating adjustment entry: which publish re-rated the bucket, from which
    versions to which ("re-rated #12 v1->v3")."""
    if not entry.HasField("adjustment"):
        return ""
    adjustment = entry.adjustment
    old = ",".join(f"v{v}" for v in adjustment.old_versions)
    return f"re-rated #{adjustment.journal_seq} {old}->v{adjustment.new_version}"
