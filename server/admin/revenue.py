"""`tariff revenue`: recognised, deferred and breakage revenue per billing period, by product and by customer,
and whether it reconciles (InvoiceService.GetRevenueReport)."""

from __future__ import annotations

import click

from server.admin.invoices import month_range
from server.admin.output import print_fields, print_json, print_table, unit_suffix, when
from server.admin.remote import Remote, fail, remote_command


def month_start_ms(month: str, option: str, *, after: bool = False) -> int:
    start, end = month_range(month, option)
    return int((end if after else start).timestamp()) * 1000


@click.command()
@click.option("--from", "first", required=True, metavar="YYYY-MM", help="the first month (periods starting in it)")
@click.option("--to", "last", metavar="YYYY-MM", help="the last month, included  [default: --from]")
@click.option("--customer", "customer_id", default="", help="one customer  [default: every customer]")
@remote_command
def revenue(remote: Remote, first: str, last: str | None, customer_id: str) -> None:
    """Revenue of the billing periods starting from --from to --to: credits recognised at cost basis, overage,
    breakage, deferred; and the reconciliation deferred at start + prepaid sold - recognised - breakage =
    deferred at end."""
    from google.protobuf.timestamp_pb2 import Timestamp
    from tariff.v1 import invoices_pb2

    start, end = Timestamp(), Timestamp()
    start.FromMilliseconds(month_start_ms(first, "--from"))
    end.FromMilliseconds(month_start_ms(last or first, "--to" if last else "--from", after=True))
    if end.ToMilliseconds() <= start.ToMilliseconds():
        fail(f"--to {last} is before --from {first}: give the first month, then the last", 2)
    request = invoices_pb2.GetRevenueReportRequest(period_start=start, period_end=end, customer_id=customer_id)
    with remote.client() as client:
        found = client.invoices.GetRevenueReport(request)
    if remote.as_json:
        print_json(found)
        return
    columns = ("period", "product", "recognised", "from credits", "from overage", "breakage")
    rows = [
        (when(x.period_start), x.product_id, x.recognized, x.recognized_credits, x.recognized_overage, x.breakage)
        for x in found.lines
    ]
    unit = unit_suffix(found.currency)  # none in a report of no contract
    print_table(columns, rows, title=f"by product{unit}")
    customer_rows = [
        (
            when(x.period_start),
            x.customer_id,
            x.recognized,
            x.recognized_credits,
            x.recognized_overage,
            x.breakage,
            x.deferred,
        )
        for x in found.customer_lines
    ]
    print_table(("period", "customer", *columns[2:], "deferred at end"), customer_rows, title=f"by customer{unit}")
    r = found.reconciliation
    print_fields(
        [
            ("deferred at start", r.deferred_start),
            ("prepaid sold", r.prepaid_sold),
            ("recognised from credits", r.recognized_credits),
            ("breakage", r.breakage),
            ("deferred at end", r.deferred_end),
            ("recognised from overage", r.recognized_overage),
            ("recognised in all", r.recognized),
            ("reconciles", "yes" if r.reconciles else "NO"),
        ],
        title=f"reconciliation{unit}",
    )
