"""`tariff audit`: who changed what, from the server's audit log (PricingService.GetAuditLog), filtered."""

from __future__ import annotations

from datetime import datetime

import click

from server.admin.output import JOURNAL_SEQ, print_json, print_table, when
from server.admin.remote import Remote, remote_command
from server.admin.versions import UtcTime, timestamp, utc_text

CHANGE_CHARS_SHOWN = 100


def clip(change: str) -> str:
    """A change in one table cell: its start (the whole of it is in --json)."""
    return change if len(change) <= CHANGE_CHARS_SHOWN else change[: CHANGE_CHARS_SHOWN - 1] + "…"


@click.command()
@click.option("--after", "after_seq", type=JOURNAL_SEQ, default=0, show_default=True, help="entries after this seq")
@click.option("--target", default="", help='only targets starting with this ("rate_card/ai-credits", "customer/")')
@click.option("--by", default="", metavar="ACTOR", help="only changes by this actor: a key's name or a person")
@click.option("--action", default="", help='only this action, the RPC\'s name ("PublishVersion", "RollbackRateCard")')
@click.option("--since", type=UtcTime(), help="only changes at or after this time")
@click.option("--until", type=UtcTime(), help="only changes before this time")
@click.option("--limit", type=click.IntRange(1, 1_000), default=100, show_default=True, help="most entries to show")
@remote_command
def audit(
    remote: Remote,
    after_seq: int,
    target: str,
    by: str,
    action: str,
    since: datetime | None,
    until: datetime | None,
    limit: int,
) -> None:
    """Who changed what: the audit log, oldest first (with --json, each change in full).

    The filters combine. It reads page after page until it has --limit entries or the log ends; when entries are
    left, it says which --after shows the next ones (in --json: next_after_seq)."""
    from tariff.v1 import pricing_pb2

    if since is not None and until is not None and until <= since:
        raise click.UsageError(f"--until {utc_text(until)} is not after --since {utc_text(since)}")
    request = pricing_pb2.GetAuditLogRequest(after_seq=after_seq, target=target, actor=by, action=action)
    if since is not None:
        request.start_time.CopyFrom(timestamp(since))
    if until is not None:
        request.end_time.CopyFrom(timestamp(until))
    entries: list[pricing_pb2.AuditEntry] = []
    with remote.client() as client:
        while True:
            request.page_size = limit - len(entries)
            page = client.pricing.GetAuditLog(request)
            entries.extend(page.entries)
            request.after_seq = page.next_after_seq
            if not page.next_after_seq or len(entries) >= limit:
                break
    if remote.as_json:
        print_json({"entries": entries, "next_after_seq": str(request.after_seq)})
        return
    rows = [(e.seq, when(e.time, e.HasField("time")), e.actor, e.action, e.target, clip(e.diff)) for e in entries]
    print_table(("seq", "time", "actor", "action", "target", "change"), rows)
    if request.after_seq:
        click.echo(f"more entries: tariff audit --after {request.after_seq} (with the same filters)")
