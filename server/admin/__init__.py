"""The `tariff` client commands: look at and change a running server over gRPC, one module per noun.

Each module imports only click at load; grpc, protobuf, rich and the client library load when a command
runs, so `tariff --help` stays fast. `remote.py` holds the connection options and the one place a failed
call becomes exit status 1; `output.py` the tables and JSON.
"""

from __future__ import annotations

import click

from server.admin.audit import audit
from server.admin.balance import authorize, balance
from server.admin.credits import grants, release, reserve, topup
from server.admin.customers import customers
from server.admin.products import products
from server.admin.ratecards import ratecards
from server.admin.usage import usage
from server.admin.versions import ratecard

COMMANDS: tuple[click.Command, ...] = (
    customers,
    balance,
    authorize,
    usage,
    products,
    ratecards,
    ratecard,
    audit,
    grants,
    topup,
    reserve,
    release,
)


def add_commands(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
