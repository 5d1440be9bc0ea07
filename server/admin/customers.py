"""`tariff customers list|show|create`: the customers a server knows (ContractService)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import click

from server.admin.output import pairs, parse_pairs, print_fields, print_json, print_table, when
from server.admin.remote import Remote, remote_command

if TYPE_CHECKING:
    from tariff import TariffClient
    from tariff.v1 import contracts_pb2


@click.group()
def customers() -> None:
    """Look at and create customers."""


def all_customers(client: TariffClient, page_size: int) -> Iterator[contracts_pb2.Customer]:
    from tariff.v1 import contracts_pb2

    token = ""
    while True:
        page = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=page_size, page_token=token))
        yield from page.customers
        token = page.next_page_token
        if not token:
            return


def _print_customer(customer: contracts_pb2.Customer) -> None:
    print_fields(
        [
            ("id", customer.id),
            ("name", customer.name),
            ("attributes", pairs(customer.attributes)),
            ("created", when(customer.created_at, customer.HasField("created_at"))),
        ]
    )


@customers.command("list")
@click.option("--page-size", type=click.IntRange(1, 1_000), default=100, show_default=True, help="customers per call")
@remote_command
def list_customers(remote: Remote, page_size: int) -> None:
    """Every customer, in id order (all pages)."""
    with remote.client() as client:
        found = list(all_customers(client, page_size))
    if remote.as_json:
        print_json({"customers": found})
        return
    rows = [(c.id, c.name, pairs(c.attributes), when(c.created_at, c.HasField("created_at"))) for c in found]
    print_table(("id", "name", "attributes", "created"), rows)


@customers.command("show")
@click.argument("customer_id")
@remote_command
def show_customer(remote: Remote, customer_id: str) -> None:
    """One customer."""
    from tariff.v1 import contracts_pb2

    with remote.client() as client:
        customer = client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=customer_id))
    if remote.as_json:
        print_json(customer)
    else:
        _print_customer(customer)


@customers.command("create")
@click.argument("customer_id")
@click.option("--name", default="", help="display name")
@click.option("--attr", "attributes", multiple=True, metavar="KEY=VALUE", help="an attribute (repeatable)")
@remote_command
def create_customer(remote: Remote, customer_id: str, name: str, attributes: tuple[str, ...]) -> None:
    """Create a customer (id: 1-128 letters, digits and ._:@-)."""
    from tariff.v1 import contracts_pb2

    request = contracts_pb2.CreateCustomerRequest(
        id=customer_id, name=name, attributes=parse_pairs(attributes, "--attr")
    )
    with remote.client() as client:
        customer = client.contracts.CreateCustomer(request)
    if remote.as_json:
        print_json(customer)
    else:
        _print_customer(customer)
