"""The `tariff` client commands: look at and change a running server over gRPC, one module per noun.

Each module imports only click at load; grpc, protobuf, rich and the client library load when a command
runs, so `tariff --help` stays fast. `remote.py` holds the connection options and the one place a failed
call becomes exit status 1 (3 when the server did not answer); `output.py` the tables and JSON, and the quiet
exit (141) when stdout's reader has gone.
"""

from __future__ import annotations

import click

from server.admin.alerts import alerts
from server.admin.audit import audit
from server.admin.balance import authorize, balance
from server.admin.contracts import contracts
from server.admin.credits import grant, grants, release, reserve, topup
from server.admin.customers import customers
from server.admin.explain import explain
from server.admin.invoices import invoices
from server.admin.products import products
from server.admin.ratecards import ratecards
from server.admin.revenue import revenue
from server.admin.simulate import simulate
from server.admin.usage import usage
from server.admin.versions import ratecard
from server.admin.watch import watch

COMMANDS: tuple[click.Command, ...] = (
    customers,
    balance,
    authorize,
    usage,
    products,
    ratecards,
    ratecard,
    audit,
    watch,
    alerts,
    invoices,
    revenue,
    grants,
    grant,
    topup,
    contracts,
    reserve,
    release,
)


def add_commands(group: click.Group) -> None:
    for command in COMMANDS:
        group.add_command(command)
    ratecard.add_command(simulate)
    invoices.add_command(explain)
