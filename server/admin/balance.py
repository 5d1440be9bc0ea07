"""`tariff balance` and `tariff authorize`: a customer's credit now, and what a usage would cost (BalanceService)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from server.admin.output import (
    left_out_note,
    parse_numbers,
    parse_pairs,
    print_fields,
    print_json,
    print_table,
    unit_suffix,
    when,
)
from server.admin.remote import Remote, remote_command

if TYPE_CHECKING:
    from tariff import TariffClient
    from tariff.v1 import balance_pb2


@click.command()
@click.argument("customer_id")
@remote_command
def balance(remote: Remote, customer_id: str) -> None:
    """A customer's credit balance: remaining, held, available, this period's charges, and each grant."""
    from tariff.v1 import contracts_pb2

    with remote.client() as client:
        found = client.get_balance(customer_id)
    if remote.as_json:
        print_json(found)
        return
    unit = unit_suffix(found.pricing_unit)  # none before the customer's first contract
    due_unit = unit_suffix(found.currency)
    has_period = found.HasField("period_start")
    period = f"{when(found.period_start)} .. {when(found.period_end, found.HasField('period_end'))}"
    print_fields(
        [
            ("customer", found.customer_id),
            (f"credits remaining{unit}", found.credits_remaining),
            (f"credits held{unit}", found.credits_held),
            (f"credits available{unit}", found.credits_available),
            (f"period charges{unit}", found.period_charges),
            (f"overage{unit}", found.overage_amount),
            (f"overage due{due_unit}", found.overage_due),
            ("period", period if has_period else ""),
            ("as of journal seq", found.as_of_seq),
        ]
    )
    rows = [
        (
            g.grant_id,
            contracts_pb2.GrantKind.Name(g.kind),
            g.amount,
            g.drawn,
            g.remaining,
            g.held,
            g.expired,
            g.priority,
            when(g.expires_at, g.HasField("expires_at")),
        )
        for g in found.grants
    ]
    columns = ("grant", "kind", "amount", "drawn", "remaining", "held", "expired", "priority", "expires")
    print_table(columns, rows, title=f"grants{unit}{left_out_note(found.grants_left_out)}")


@click.command()
@click.argument("customer_id")
@click.argument("event_type")
@click.argument("dimensions", nargs=-1, metavar="[DIMENSION=VALUE]...")
@click.option("--value", "values", multiple=True, metavar="NAME=NUMBER", help="a measured quantity (repeatable)")
@remote_command
def authorize(
    remote: Remote, customer_id: str, event_type: str, dimensions: tuple[str, ...], values: tuple[str, ...]
) -> None:
    """Would this usage be allowed now, and what would it cost? Changes nothing.

    DIMENSION=VALUE arguments are the event's dimensions (`model=gpt-4`); `--value tokens=1200` its
    measured quantities. A denial is an answer (allowed: no, with the reason), not an error: exit status 0.
    """
    with remote.client() as client:
        decision = client.authorize(
            customer_id,
            event_type,
            parse_pairs(dimensions, "DIMENSION=VALUE"),
            parse_numbers(values, "--value"),
        )
        unit = pricing_unit_for_people(remote, client, customer_id)
    print_decision(remote, decision, unit=unit)


def pricing_unit_for_people(remote: Remote, client: TariffClient, customer_id: str) -> str:
    """The unit the customer's amounts are in (its balance's pricing_unit), for a table's labels: answers such as
    Authorize's and ReleaseReservation's carry none. One more read, and none for --json, which prints the answer."""
    return "" if remote.as_json else client.get_balance(customer_id).pricing_unit


def print_decision(
    remote: Remote, decision: balance_pb2.AuthorizeResponse, *, held: bool = False, unit: str = ""
) -> None:
    """An authorize's answer (`tariff authorize`, `tariff reserve`): as JSON, or its fields, with the reservation
    its hold is under when the call asked for one (`held`), its amounts labelled with the customer's pricing `unit`."""
    if remote.as_json:
        print_json(decision)
        return
    label = unit_suffix(unit)
    print_fields(
        [
            ("allowed", "yes" if decision.allowed else "no"),
            ("reason", decision.reason),
            *([("reservation", decision.reservation_id)] if held else []),
            (f"estimated cost{label}", decision.estimated_cost),
            (f"credits available{label}", decision.credits_available),
            ("message", decision.message),
        ]
    )
