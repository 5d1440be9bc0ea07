"""`tariff usage send`: usage events from a JSON-lines file (or stdin) to the server, batched and streamed.

One event per line, a JSON object with the fields of the wire's UsageEvent (proto field names, or their
lowerCamel JSON names), for example:

    {"transaction_id": "t-1", "customer_id": "acme", "event_type": "ai_action", "timestamp_ms": 1764547200000,
     "dimensions": {"model": "gpt-4"}, "values": {"tokens": 1200}}

(on one line; blank lines are skipped). Events go through the Python client's UsageBatcher over one
IngestUsage stream, which reconnects and resends unacknowledged batches with the same transaction ids, so the
server counts a resent event as a duplicate, never twice; sending the same file again is safe for the same
reason. A line that is not such an object (one naming a field twice included) stops the reading: the events before it are sent and summed up,
the line is named, and the exit status is 2.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections import Counter, deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, TYPE_CHECKING, Any

import click

from server.admin.output import print_fields, print_json, print_table
from server.admin.remote import Remote, as_tariff_error, fail, remote_command

if TYPE_CHECKING:
    from tariff.v1 import usage_pb2

LINES_PER_READ = 1_000
EXAMPLES_KEPT = 100  # rejections kept for the summary, and the first of every reason besides
EXIT_BAD_INPUT = 2


class BadLine(Exception):
    def __init__(self, number: int, why: str) -> None:
        super().__init__(f"line {number}: {why}")


@dataclass
class Tally:
    """What the acks said, summed over the run."""

    read: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    batches: int = 0
    resent_batches: int = 0
    by_reason: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    on_progress: Callable[[int], None] | None = None
    # The input line of each event read and not yet acknowledged, oldest first (at most the batches in flight).
    unacked_lines: deque[int] = field(default_factory=deque)

    def add(self, ack: usage_pb2.IngestAck) -> None:
        from tariff.v1 import usage_pb2

        for _ in range(ack.accepted + ack.duplicates + len(ack.rejected)):
            self.unacked_lines.popleft()
        self.batches += 1
        self.accepted += ack.accepted
        self.duplicates += ack.duplicates
        self.rejected += len(ack.rejected)
        for rejection in ack.rejected:
            reason = usage_pb2.RejectReason.Name(rejection.reason)
            self.by_reason[reason] += 1
            # The first of each reason is kept even past EXAMPLES_KEPT: the summary names it.
            if len(self.examples) < EXAMPLES_KEPT or self.by_reason[reason] == 1:
                self.examples.append(
                    {"transaction_id": rejection.transaction_id, "reason": reason, "message": rejection.message}
                )
        if self.on_progress is not None:
            self.on_progress(ack.accepted + ack.duplicates + len(ack.rejected))


class FieldTwice(Exception):
    def __init__(self, name: str) -> None:
        super().__init__(f"names {name!r} twice")


def unique_fields(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object whose every name is given once: with two transaction ids (or customers, or values of one
    dimension) in a line, the event it means is not known, so it is no event rather than a guess at one."""
    document: dict[str, Any] = {}
    for name, value in pairs:
        if name in document:
            raise FieldTwice(name)
        document[name] = value
    return document


def parse_line(number: int, raw: bytes) -> usage_pb2.UsageEvent | None:
    """One input line (its bytes: one that is no UTF-8 is named, as any line that is no event) as a UsageEvent;
    None for a blank line."""
    from google.protobuf import json_format
    from tariff.v1 import usage_pb2

    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(number, f"not UTF-8 text ({exc.reason} at byte {exc.start + 1})") from None
    if not line.strip():
        return None
    try:
        document = json.loads(line, object_pairs_hook=unique_fields)
    except FieldTwice as exc:
        raise BadLine(number, str(exc)) from None
    except ValueError as exc:
        raise BadLine(number, f"not JSON ({exc})") from None
    if not isinstance(document, dict):
        raise BadLine(number, "not a JSON object")
    try:
        return json_format.ParseDict(document, usage_pb2.UsageEvent())
    except json_format.ParseError as exc:
        raise BadLine(number, str(exc)) from None


def read_chunks(source: IO[bytes]) -> Iterator[list[tuple[int, bytes]]]:
    numbered = enumerate(source, start=1)
    while chunk := list(itertools.islice(numbered, LINES_PER_READ)):
        yield chunk


@dataclass(frozen=True)
class Sending:
    batch_events: int
    in_flight: int
    retry_s: float


async def stream_events(remote: Remote, source: IO[bytes], tally: Tally, sending: Sending) -> None:
    """Reads, batches and streams every event; returns once every batch is acknowledged."""
    import asyncio

    from tariff import RetryPolicy

    chunks = read_chunks(source)
    async with remote.async_client() as client:
        batcher = client.usage_batcher(
            batch_events_max=sending.batch_events,
            max_in_flight_batches=sending.in_flight,
            # Bounded by time (--retry-s), not by a count of attempts.
            retry=RetryPolicy(max_attempts=1_000_000, max_elapsed_s=sending.retry_s),
            on_ack=tally.add,
        )
        try:
            # Read in a thread: a slow producer on stdin must not stall the acks the stream is waiting for.
            while chunk := await asyncio.to_thread(next, chunks, None):
                for number, line in chunk:
                    event = parse_line(number, line)
                    if event is not None:
                        tally.unacked_lines.append(number)  # before add(): its ack may come back within it
                        await batcher.add(event)
                        tally.read += 1
        except BadLine:
            # What came before the bad line is still sent, so the summary says exactly what the server holds.
            await batcher.close()
            raise
        except BaseException:
            await batcher.abort()
            raise
        else:
            await batcher.close()
        finally:
            tally.resent_batches = batcher.stream.resent_batches


def print_summary(tally: Tally) -> None:
    print_fields(
        [
            ("events read", tally.read),
            ("accepted", tally.accepted),
            ("duplicates", tally.duplicates),
            ("rejected", tally.rejected),
            ("batches", tally.batches),
            ("batches resent", tally.resent_batches),
        ]
    )
    if tally.rejected:
        firsts: dict[str, dict[str, Any]] = {}
        for example in tally.examples:
            firsts.setdefault(example["reason"], example)
        rows = [
            (reason, count, firsts.get(reason, {}).get("transaction_id"), firsts.get(reason, {}).get("message"))
            for reason, count in tally.by_reason.most_common()
        ]
        print_table(("reason", "events", "first transaction id", "message"), rows, title="rejected")


def summary_json(tally: Tally) -> dict[str, Any]:
    return {
        "events_read": tally.read,
        "accepted": tally.accepted,
        "duplicates": tally.duplicates,
        "rejected": tally.rejected,
        "rejected_by_reason": dict(tally.by_reason),
        "rejections": tally.examples,
        "batches": tally.batches,
        "batches_resent": tally.resent_batches,
    }


def _a_number(_ctx: click.Context, _param: click.Parameter, value: float) -> float:
    """NaN, which click.FloatRange lets through, as a usage error: a NaN --retry-s reconnected with no backoff until
    the backoff overflowed (`inf` stays: retry for ever, until Ctrl-C)."""
    if value != value:
        raise click.BadParameter(f"{value} is not a number of seconds")
    return value


@click.group()
def usage() -> None:
    """Send usage events."""


@usage.command("send")
@click.argument("source", type=click.File("rb"), default="-")
@click.option(
    "--batch-events", type=click.IntRange(1, 10_000), default=1_000, show_default=True, help="events per batch"
)
@click.option(
    "--in-flight", type=click.IntRange(1, 64), default=8, show_default=True, help="batches awaiting their ack"
)
@click.option(
    "--retry-s",
    type=click.FloatRange(0),
    default=60.0,
    show_default=True,
    callback=_a_number,
    help="how long to keep reconnecting (and resending) when the stream breaks, before giving up",
)
@click.option(
    "--progress/--no-progress", default=None, help="progress bar on stderr [default: when stdout is a terminal]"
)
@remote_command
def send(
    remote: Remote, source: IO[bytes], batch_events: int, in_flight: int, retry_s: float, progress: bool | None
) -> None:
    """Send the events of SOURCE, a JSON-lines file (`-` or none: stdin), one UsageEvent per line.

    \b
    A line holds the fields of the wire's UsageEvent (timestamp_ms: Unix milliseconds, UTC), e.g.
      {"transaction_id": "t-1", "customer_id": "acme", "event_type": "ai_action", "timestamp_ms": 1764547200000,
       "dimensions": {"model": "gpt-4"}, "values": {"tokens": 1200}}

    Prints what the server answered: accepted, duplicates (already recorded: sending a file twice is
    safe), and rejected events by reason. Exit status 1 when an event was rejected, 2 for a line
    that is not an event (one naming a field twice included), 3 when the server could not be reached for
    --retry-s."""
    import asyncio
    import logging

    # The client logs each reconnect; say whose line it is.
    logging.basicConfig(format="tariff: %(message)s", level=logging.WARNING)
    tally = Tally()
    show_progress = sys.stdout.isatty() if progress is None else progress
    bad_line: BadLine | None = None
    with ProgressBar(show_progress) as advance:
        tally.on_progress = advance
        try:
            asyncio.run(stream_events(remote, source, tally, Sending(batch_events, in_flight, retry_s)))
        except BadLine as exc:
            bad_line = exc
        except Exception as exc:
            say_where_it_stopped(tally, exc)
            raise
    if remote.as_json:
        print_json(summary_json(tally))
    else:
        print_summary(tally)
    if bad_line is not None:
        fail(f"{bad_line}; the {tally.read} events before it were sent", EXIT_BAD_INPUT)
    if tally.rejected:
        fail(f"{tally.rejected} of {tally.read} events rejected")


def say_where_it_stopped(tally: Tally, exc: Exception) -> None:
    """On stderr, before the failure itself: what was acknowledged, the input line to resume from, and, when the
    server refused a batch naming one of its events (`events[3]: ...`), that event's input line."""
    unacked = tally.unacked_lines
    resume = f"the first event not acknowledged is line {unacked[0]}; " if unacked else ""
    click.echo(
        f"tariff: before the failure: {tally.accepted} events accepted, {tally.duplicates} duplicates, "
        f"{tally.rejected} rejected; {resume}sending the same events again is safe",
        err=True,
    )
    error = as_tariff_error(exc)
    named = re.match(r"events\[(\d+)\]", error.details) if error is not None else None
    if named is not None and int(named[1]) < len(unacked):
        click.echo(f"tariff: {named[0]} of the refused batch is line {unacked[int(named[1])]} of the input", err=True)


class ProgressBar:
    """A rich progress bar of acknowledged events and events/s on stderr; a no-op when not shown."""

    def __init__(self, shown: bool) -> None:
        self.shown = shown
        self._progress: Any = None
        self._task: Any = None

    def __enter__(self) -> Callable[[int], None] | None:
        if not self.shown:
            return None
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self._progress = Progress(
            TextColumn("sending"),
            BarColumn(),
            TextColumn("{task.completed:,.0f} events acknowledged"),
            TextColumn("{task.fields[rate]}"),
            TimeElapsedColumn(),
            console=Console(stderr=True),
        )
        self._task = self._progress.add_task("send", total=None, rate="")
        self._progress.start()
        return self.advance

    def advance(self, events: int) -> None:
        self._progress.update(self._task, advance=events)
        speed = self._progress.tasks[0].speed
        self._progress.update(self._task, rate=f"{speed:,.0f} events/s" if speed else "")

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.stop()
