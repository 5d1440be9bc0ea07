"""`tariff invoices preview|close|list|export`: a customer's live draft, closing periods, and final invoices for
the ERP as CSV or JSON (InvoiceService). `--period YYYY-MM` names the billing period that starts in that
calendar month (UTC), the earlier one when two contracts' periods start in it; `--period-start` names one by its
exact start.

The CSV has one row per invoice line, the invoice's own fields repeated on each (an invoice without lines has
one row with the line columns empty); its columns, in this order, are `CSV_COLUMNS` and only ever gain new
columns at the end.
"""

from __future__ import annotations

import csv
import re
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Context, Decimal, Inexact
from typing import TYPE_CHECKING, Any

import click

from server.admin.output import print_fields, print_json, print_table, when
from server.admin.remote import Remote, fail, remote_command
from server.admin.versions import UtcTime

if TYPE_CHECKING:
    from tariff import TariffClient
    from tariff.v1 import invoices_pb2

CSV_COLUMNS = (
    "invoice_number",
    "status",
    "customer_id",
    "contract_id",
    "period_start",
    "period_end",
    "pricing_unit",
    "currency",
    "line_id",
    "product_id",
    "quantity",
    "events",
    "amount",
    "credits",
    "overage",
    "amount_due",
    "subtotal",
    "overage_due",
    "top_up_purchases",
    "rounding_adjustment",
    "total_due",
    "closed_at",
)

LAST_YEAR = 8999  # the server takes instants to 8999-12-31 (engine/instants.py)


def month_range(period: str, option: str = "--period") -> tuple[datetime, datetime]:
    """[first instant, first instant of the next month) of `YYYY-MM`, UTC; a month from 1970-01 to 8999-12, the
    server's range of instants (past 9999-12 the next month is no datetime at all)."""
    try:
        start = datetime.strptime(period, "%Y-%m").replace(tzinfo=UTC)
    except ValueError:
        fail(f"{option} {period!r} is not YYYY-MM", 2)
    if not 1970 <= start.year <= LAST_YEAR:
        fail(f"{option} {period!r}: the server takes months from 1970-01 to {LAST_YEAR}-12", 2)
    end = start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1)
    return start, end


def _timestamp(moment: datetime) -> Any:
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def period_starting_in(client: TariffClient, customer_id: str, period: str) -> invoices_pb2.Invoice:
    """The draft (or final invoice) of the customer's period that starts in the month `period`: the period holding
    the month's first instant when it starts then; else the one right after it (at its end, or at its contract's
    end when that is sooner: the next contract's first period); else the one holding the month's
    last millisecond, since a period that starts in a month holds its last millisecond (a period lasts at least 28
    days); else, when no contract is in force then (those periods' contracts ended within the month), the earliest
    of the periods PreviewInvoice's refusal names as holding that millisecond, read at its start."""
    from tariff import FailedPrecondition
    from tariff.v1 import contracts_pb2, invoices_pb2

    start, end = month_range(period)
    named: list[datetime] = []  # starts of ended contracts' periods that refusals named as holding an instant

    def preview_at(moment: datetime) -> invoices_pb2.Invoice | None:
        """The period holding `moment`; None when no contract of the customer covers it."""
        try:
            found: invoices_pb2.Invoice = client.invoices.PreviewInvoice(
                invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=_timestamp(moment))
            )
        except FailedPrecondition as refused:
            named.extend(datetime.fromisoformat(t) for t in HOLDING_PERIOD.findall(refused.details))
            return None
        return found

    def starts_in_month(found: invoices_pb2.Invoice | None) -> bool:
        return found is not None and start <= found.period_start.ToDatetime(tzinfo=UTC) < end

    found = preview_at(start)
    if found is not None and found.period_start.ToDatetime(tzinfo=UTC) < start:  # anchored mid-month
        # The next period starts at this one's end, or where its contract ends when that is sooner (the next
        # contract, if one starts right then, has its first period there).
        following = found.period_end.ToDatetime(tzinfo=UTC)
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=found.contract_id))
        if contract.HasField("ending_before"):
            following = min(following, contract.ending_before.ToDatetime(tzinfo=UTC))
        found = preview_at(following)
    if not starts_in_month(found):
        found = preview_at(end - timedelta(milliseconds=1))
    for moment in sorted(t for t in named if start <= t < end):
        if starts_in_month(found):
            break
        found = preview_at(moment)
    if found is None or not starts_in_month(found):
        # The CLI finds this out itself, over several previews; said as every exit-1 line is, with its status code.
        fail(f"NOT_FOUND: customer {customer_id!r} has no period starting in {period}")
    return found


# How PreviewInvoice's FAILED_PRECONDITION names an ended contract's period holding the instant asked about
# (engine/invoicing.py `_contract_or_refuse`): "the period from 2026-01-05T00:00:00Z of contract 'trial-1' holds it".
HOLDING_PERIOD = re.compile(r"the period from (\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z) of contract ")


def print_invoice(invoice: invoices_pb2.Invoice) -> None:
    from tariff.v1 import invoices_pb2

    currency, unit = invoice.currency, invoice.pricing_unit
    print_fields(
        [
            ("customer", invoice.customer_id),
            ("invoice", invoice.invoice_number or "(draft)"),
            ("status", invoices_pb2.InvoiceStatus.Name(invoice.status)),
            ("period", f"{when(invoice.period_start)} .. {when(invoice.period_end)}"),
            (f"subtotal ({unit})", invoice.subtotal),
            (f"overage ({unit})", invoice.overage_amount),
            (f"overage due ({currency})", invoice.overage_due),
            (f"top-up purchases ({currency})", invoice.top_up_purchases),
            (f"rounding adjustment ({currency})", invoice.rounding_adjustment),
            (f"total due ({currency})", invoice.total_due),
            ("closed at", when(invoice.closed_at, invoice.HasField("closed_at"))),
        ]
    )
    rows = [
        (
            line.line_id,
            line.quantity,
            "; ".join(f"v{p.version}: {p.quantity} x {p.unit_price} = {p.amount}" for p in line.prices),
            line.amount,
            ", ".join(f"{c.grant_id} {c.credits}" for c in line.credits_applied),
            line.overage,
            line.amount_due,
        )
        for line in invoice.lines
    ]
    columns = ("line", "quantity", "prices", f"amount ({unit})", "credits", f"overage ({unit})", f"due ({currency})")
    print_table(columns, rows, title="lines")


@click.group()
def invoices() -> None:
    """Invoices: the live draft, closing periods, final invoices and their export."""


PERIOD_START_HELP = (
    "the exact start of the billing period (overrides --period; the one to name when two start in a month)"
)


@invoices.command()
@click.argument("customer_id")
@click.option("--period", metavar="YYYY-MM", help="the period starting in that month  [default: the current period]")
@click.option("--period-start", type=UtcTime(), metavar="ISO-8601", help=PERIOD_START_HELP)
@remote_command
def preview(remote: Remote, customer_id: str, period: str | None, period_start: datetime | None) -> None:
    """A customer's invoice as it stands: the live draft (or the final invoice of a closed period)."""
    from tariff.v1 import invoices_pb2

    with remote.client() as client:
        if period_start is not None:
            request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=_timestamp(period_start))
            found = client.invoices.PreviewInvoice(request)
        elif period is None:
            found = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id))
        else:
            found = period_starting_in(client, customer_id, period)
    print_json(found) if remote.as_json else print_invoice(found)


@invoices.command()
@click.argument("customer_id", required=False)
@click.option("--period", metavar="YYYY-MM", help="the period starting in that month (with CUSTOMER_ID)")
@click.option("--period-start", type=UtcTime(), metavar="ISO-8601", help=PERIOD_START_HELP)
@click.option("--all", "close_all", is_flag=True, help="every customer's periods that have ended")
@remote_command
def close(
    remote: Remote, customer_id: str | None, period: str | None, period_start: datetime | None, close_all: bool
) -> None:
    """Finalise invoices: one customer's period (CUSTOMER_ID --period YYYY-MM or --period-start), or every ended
    period (--all)."""
    from tariff.v1 import invoices_pb2

    if close_all == bool(customer_id or period or period_start):
        fail("give CUSTOMER_ID --period YYYY-MM (or --period-start), or --all", 2)
    with remote.client() as client:
        if close_all:
            answer = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
            made = list(answer.invoices) + closed_beyond_answer(client, answer)
        else:
            if customer_id is None or (period is None and period_start is None):
                fail("closing one customer's period needs CUSTOMER_ID and --period YYYY-MM or --period-start", 2)
            if period_start is not None:
                start = _timestamp(period_start)
            else:
                start = period_starting_in(client, customer_id, period or "").period_start
            request = invoices_pb2.ClosePeriodRequest(customer_id=customer_id, period_start=start)
            made = [client.invoices.ClosePeriod(request)]
    if remote.as_json:
        print_json({"invoices": made})  # CloseDuePeriodsResponse's shape, one customer's close too
        return
    rows = [(i.invoice_number, i.customer_id, when(i.period_start), i.total_due, i.currency) for i in made]
    print_table(("invoice", "customer", "period start", "total due", "currency"), rows, title="closed")


def closed_beyond_answer(client: TariffClient, answer: invoices_pb2.CloseDuePeriodsResponse) -> list[Any]:
    """The invoices a CloseDuePeriods made beyond those its answer could show (a backlog larger than one answer),
    listed from its next_page_token on: numbered right after the last shown, the call's invoices being consecutive."""
    from tariff.v1 import invoices_pb2

    missing = answer.invoices_made - len(answer.invoices)
    rest: list[Any] = []
    token = answer.next_page_token
    while token and len(rest) < missing:
        page = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(page_size=1000, page_token=token))
        rest += page.invoices
        token = page.next_page_token
    return rest[:missing]


def list_invoices(
    client: TariffClient, customer_id: str, period: str | None, status: str = "final"
) -> Iterator[invoices_pb2.Invoice]:
    """Every page of ListInvoices."""
    from tariff.v1 import invoices_pb2

    request = invoices_pb2.ListInvoicesRequest(
        customer_id=customer_id, status=invoices_pb2.INVOICE_DRAFT if status == "draft" else invoices_pb2.INVOICE_FINAL
    )
    if period is not None:
        start, end = month_range(period)
        request.period_start_from.CopyFrom(_timestamp(start))
        request.period_start_before.CopyFrom(_timestamp(end))
    while True:
        page = client.invoices.ListInvoices(request)
        yield from page.invoices
        if not page.next_page_token:
            return
        request.page_token = page.next_page_token


@invoices.command("list")
@click.option("--customer", "customer_id", default="", help="one customer's  [default: every customer's]")
@click.option("--period", metavar="YYYY-MM", help="periods starting in that month")
@click.option(
    "--status",
    type=click.Choice(["final", "draft"], case_sensitive=False),
    default="final",
    show_default=True,
    help="draft lists nothing: drafts are not stored",
)
@remote_command
def list_command(remote: Remote, customer_id: str, period: str | None, status: str) -> None:
    """Final invoices, by number (drafts are not stored: `tariff invoices preview` shows one)."""
    with remote.client() as client:
        found = list(list_invoices(client, customer_id, period, status))
    if remote.as_json:
        print_json({"invoices": found})  # ListInvoicesResponse's shape, its pages joined
        return
    rows = [
        (i.invoice_number, i.customer_id, when(i.period_start), when(i.period_end), i.total_due, i.currency)
        for i in found
    ]
    print_table(("invoice", "customer", "period start", "period end", "total due", "currency"), rows)


# Sums of the server's amounts, exact: an amount is at most 39 digits (10^-12 of a unit below 2^127 picos), so 100
# digits hold any sum of them; the default context's 28 rounded a line's credits (12345678901234568.123456789012 was
# 12345678901234568.12345678901), and Inexact would say so rather than round.
_EXACT = Context(prec=100, traps=[Inexact])


def _exact_sum(texts: Iterable[str]) -> Decimal:
    total = Decimal(0)
    for text in texts:
        total = _EXACT.add(total, Decimal(text))
    return total


def csv_rows(invoice: invoices_pb2.Invoice) -> Iterator[dict[str, str]]:
    """The CSV rows of one invoice (see the module's docstring)."""
    from tariff.v1 import invoices_pb2

    head = {
        "invoice_number": invoice.invoice_number,
        "status": invoices_pb2.InvoiceStatus.Name(invoice.status),
        "customer_id": invoice.customer_id,
        "contract_id": invoice.contract_id,
        "period_start": when(invoice.period_start),
        "period_end": when(invoice.period_end),
        "pricing_unit": invoice.pricing_unit,
        "currency": invoice.currency,
        "subtotal": invoice.subtotal,
        "overage_due": invoice.overage_due,
        "top_up_purchases": invoice.top_up_purchases,
        "rounding_adjustment": invoice.rounding_adjustment,
        "total_due": invoice.total_due,
        "closed_at": when(invoice.closed_at, invoice.HasField("closed_at")),
    }
    empty = dict.fromkeys(
        ("line_id", "product_id", "quantity", "events", "amount", "credits", "overage", "amount_due"), ""
    )
    if not invoice.lines:
        yield {**head, **empty}
    for line in invoice.lines:
        credits = _exact_sum(c.credits for c in line.credits_applied)
        yield {
            **head,
            "line_id": line.line_id,
            "product_id": line.product_id,
            "quantity": line.quantity,
            "events": str(line.events),
            "amount": line.amount,
            "credits": format(credits.normalize(_EXACT), "f") if credits else "0",
            "overage": line.overage,
            "amount_due": line.amount_due,
        }


@invoices.command()
@click.option("--period", required=True, metavar="YYYY-MM", help="final invoices of periods starting in that month")
@click.option(
    "--format",
    "output_format",
    type=click.Choice(["csv", "json"], case_sensitive=False),
    default="csv",
    show_default=True,
    help="CSV, its columns in README's order, or JSON (as --json)",
)
@click.option("--customer", "customer_id", default="", help="one customer's  [default: every customer's]")
@remote_command
def export(remote: Remote, period: str, output_format: str, customer_id: str) -> None:
    """Final invoices of a period for the ERP, on stdout: CSV (one row per line) or JSON ({"invoices": [...]}, as
    `invoices list --json`)."""
    with remote.client() as client:
        found = list(list_invoices(client, customer_id, period))
    if output_format == "json" or remote.as_json:
        print_json({"invoices": found})
        return
    writer = csv.DictWriter(sys.stdout, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for invoice in found:
        writer.writerows(csv_rows(invoice))
