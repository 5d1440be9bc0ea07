"""`tariff audit`: who changed what, from the server's audit log (PricingService.GetAuditLog)."""

from __future__ import annotations

import click

from server.admin.output import print_json, print_table, when
from server.admin.remote import Remote, remote_command

CHANGE_CHARS_SHOWN = 100


def clip(change: str) -> str:
    """A change in one table cell: its start (the whole of it is in --json)."""
    return change if len(change) <= CHANGE_CHARS_SHOWN else change[: CHANGE_CHARS_SHOWN - 1] + "…"


@click.command()
@click.option(
    "--after", "after_seq", type=click.IntRange(0), default=0, show_default=True, help="entries after this seq"
)
@click.option("--target", default="", help='only entries about this target ("rate_card/ai-credits", "customer/acme")')
@click.option("--limit", type=click.IntRange(1, 1_000), default=100, show_default=True, help="most entries to show")
@remote_command
def audit(remote: Remote, after_seq: int, target: str, limit: int) -> None:
    """Who changed what: the audit log, oldest first (with --json, each change in full)."""
    from tariff.v1 import pricing_pb2

    request = pricing_pb2.GetAuditLogRequest(after_seq=after_seq, page_size=limit, target=target)
    with remote.client() as client:
        log = client.pricing.GetAuditLog(request)
    if remote.as_json:
        print_json(log)
        return
    rows = [(e.seq, when(e.time, e.HasField("time")), e.actor, e.action, e.target, clip(e.diff)) for e in log.entries]
    print_table(("seq", "time", "actor", "action", "target", "change"), rows)
