"""`tariff ratecard simulate`: what a version (a draft too) would have charged for recorded usage."""

from __future__ import annotations

from datetime import datetime

import click

from server.admin.output import VERSION_NUMBER, print_fields, print_json, print_table, unit_suffix
from server.admin.remote import Remote, remote_command
from server.admin.versions import UtcTime, timestamp, utc_text


@click.command()
@click.argument("rate_card_id")
@click.argument("version", type=VERSION_NUMBER)
@click.option("--from", "period_start", type=UtcTime(), required=True, help="start of the usage to re-price")
@click.option("--to", "period_end", type=UtcTime(), required=True, help="end of the usage to re-price (excluded)")
@click.option("--customer", "customer_ids", multiple=True, help="only this customer (repeatable) [default: all]")
@remote_command
def simulate(
    remote: Remote,
    rate_card_id: str,
    version: int,
    period_start: datetime,
    period_end: datetime,
    customer_ids: tuple[str, ...],
) -> None:
    """What VERSION (a draft too) would have charged for the usage recorded between --from and --to, per
    customer and product, and in all, in the rate card's pricing unit; changes nothing."""
    from tariff.v1 import pricing_pb2

    if period_end <= period_start:
        raise click.UsageError(f"--to {utc_text(period_end)} is not after --from {utc_text(period_start)}")
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=rate_card_id,
        version=version,
        period_start=timestamp(period_start),
        period_end=timestamp(period_end),
        customer_ids=customer_ids,
    )
    with remote.client() as client:
        result = client.pricing.SimulateVersion(request)
        if remote.as_json:
            print_json(result)
            return
        # The amounts are in the card's pricing unit, which the answer does not name: one more read for the labels.
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=rate_card_id))
    unit = unit_suffix(card.pricing_unit)
    rows = [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in result.amounts]
    print_table(("customer", "product", f"current{unit}", f"simulated{unit}", f"delta{unit}"), rows)
    totals = result.totals
    print_fields(
        [
            (f"current{unit}", totals.current_amount),
            (f"simulated{unit}", totals.simulated_amount),
            (f"delta{unit}", totals.delta),
        ]
    )
