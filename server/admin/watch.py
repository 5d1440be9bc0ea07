"""`tariff watch balance CUSTOMER`: a customer's balance now, then again after every change to it (WatchBalance)."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import click

from server.admin.output import echo_line, message_dict
from server.admin.remote import Remote, remote_command, until_interrupted

if TYPE_CHECKING:
    from tariff.v1 import balance_pb2


@click.group()
def watch() -> None:
    """Follow live state as it changes (runs until interrupted, or until --count answers)."""


def balance_line(balance: balance_pb2.Balance) -> str:
    unit = f" {balance.pricing_unit}" if balance.pricing_unit else ""  # none before the customer's first contract
    return (
        f"seq {balance.as_of_seq}  remaining {balance.credits_remaining}{unit}  held {balance.credits_held}  "
        f"available {balance.credits_available}  period charges {balance.period_charges}  "
        f"overage {balance.overage_amount}"
    )


@watch.command("balance")
@click.argument("customer_id")
@click.option("--count", type=click.IntRange(1), help="stop after this many balances  [default: never]")
@remote_command
@until_interrupted
def watch_balance(remote: Remote, customer_id: str, count: int | None) -> None:
    """The balance now, then the newest one after each committed change that touches the customer (several
    changes in quick succession may show as one). One line each; with --json, one JSON object a line."""
    from tariff.v1 import balance_pb2

    with remote.client() as client:
        stream = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=customer_id))
        for seen, balance in enumerate(stream, start=1):
            if remote.as_json:
                click.echo(json.dumps(message_dict(balance)))
            else:
                echo_line(balance_line(balance))
            if count is not None and seen >= count:
                stream.cancel()
                return
