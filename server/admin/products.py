"""`tariff products list|create`: what usage is metered as (PricingService products)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from server.admin.output import pairs, parse_pairs, print_fields, print_json, print_table
from server.admin.remote import Remote, remote_command

if TYPE_CHECKING:
    from tariff.v1 import pricing_pb2

AGGREGATIONS = ("sum", "count", "max", "unique_count", "latest")


def _row(product: pricing_pb2.Product) -> tuple[str, ...]:
    from tariff.v1 import pricing_pb2

    return (
        product.id,
        product.name,
        product.event_type,
        pricing_pb2.Aggregation.Name(product.aggregation),
        product.value_key,
        pairs(product.filters),
        ", ".join(product.pricing_dimensions),
        product.unit,
    )


COLUMNS = ("id", "name", "event type", "aggregation", "value key", "filters", "pricing dimensions", "unit")


@click.group()
def products() -> None:
    """Look at and create products."""


@products.command("list")
@remote_command
def list_products(remote: Remote) -> None:
    """Every product."""
    from tariff.v1 import pricing_pb2

    with remote.client() as client:
        found = client.pricing.ListProducts(pricing_pb2.ListProductsRequest())
    if remote.as_json:
        print_json(found)
    else:
        print_table(COLUMNS, [_row(p) for p in found.products])


@products.command("create")
@click.argument("product_id")
@click.option("--event-type", required=True, help="the usage events this product counts (UsageEvent.event_type)")
@click.option(
    "--aggregation",
    type=click.Choice(AGGREGATIONS, case_sensitive=False),
    required=True,
    help="how events add up to a quantity",
)
@click.option(
    "--value-key", default="", help="the values entry sum/max/latest read, or the dimension unique_count counts"
)
@click.option("--name", default="", help="display name")
@click.option("--unit", default="", help='what the quantity counts ("tokens")')
@click.option("--filter", "filters", multiple=True, metavar="DIMENSION=VALUE", help="events must match (repeatable)")
@click.option("--dimension", "dimensions", multiple=True, help="a dimension rates may match on, in order (repeatable)")
@remote_command
def create_product(
    remote: Remote,
    product_id: str,
    event_type: str,
    aggregation: str,
    value_key: str,
    name: str,
    unit: str,
    filters: tuple[str, ...],
    dimensions: tuple[str, ...],
) -> None:
    """Create a product."""
    from tariff.v1 import pricing_pb2

    product = pricing_pb2.Product(
        id=product_id,
        name=name,
        event_type=event_type,
        aggregation=aggregation.upper(),
        value_key=value_key,
        filters=parse_pairs(filters, "--filter"),
        pricing_dimensions=dimensions,
        unit=unit,
    )
    with remote.client() as client:
        created = client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    if remote.as_json:
        print_json(created)
    else:
        print_fields(list(zip(COLUMNS, _row(created), strict=True)))
