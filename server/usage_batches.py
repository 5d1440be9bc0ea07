"""The usage batches handed to the writer (UsageBatch, and the IngestUsage stream they came on), and their rating
on the writer's rating thread into the journal records of what they did."""

from __future__ import annotations

import dataclasses

from engine._kernel import BatchIdTooLong, BatchNotDecodable, BatchTooLarge, CustomerNotAllowed
from engine.billing import Billing, Ingested
from engine.control import TEXT_BYTES_MAX, quoted_id
from engine.errors import EngineError, FailedPrecondition, InvalidArgument
from server.errors import PermissionDenied, ResourceExhausted
from server.records import JournalRecord, UsageRecord, encode_record


@dataclasses.dataclass(slots=True)
class IngestStream:
    """One IngestUsage stream's batches, as the writer sees them: once one of them is refused whole (too many
    events, not a UsageBatch, a customer the key may not touch) or its group's commit fails, the stream ends
    with that error, so the batches it sent after that one are not applied either (no ack reaches them; resent
    on a new stream, they are accepted). Read and set by the writer only: on the rating thread, or on the event
    loop while that thread is idle (a failed group, `Group.fail`)."""

    refused: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class UsageBatch:
    """A usage batch submitted to the writer: the bytes received, and what the caller may send."""

    data: bytes
    events_max: int
    allowed: list[str] | None = None  # customers a restricted key may touch; None: all
    key_name: str = ""
    stream: IngestStream | None = None  # the IngestUsage stream it came on; None: IngestUsageBatch


def _rate_batches(
    billing: Billing, batches: list[UsageBatch], now_ms: int
) -> list[tuple[int, Ingested | EngineError, bytes | None]]:
    """On the rating thread: each batch as record last_seq + 1, with its refusal or its encoded journal record
    (None when it accepted nothing). The event loop does not touch the state this uses until it returns."""
    rated: list[tuple[int, Ingested | EngineError, bytes | None]] = []
    for batch in batches:
        seq = billing.last_seq + 1
        if batch.stream is not None and batch.stream.refused:
            ended = FailedPrecondition(
                "an earlier batch of this stream was refused or not committed; nothing of this one was applied"
            )
            rated.append((seq, ended, None))
            continue
        done = _rated_or_refused(billing, batch, now_ms)
        if isinstance(done, EngineError):
            if batch.stream is not None:
                batch.stream.refused = True
            rated.append((seq, done, None))
            continue
        if not done.accepted:
            rated.append((seq, done, None))
            continue
        counts = (done.accepted, done.duplicates, len(done.rejected))
        usage = UsageRecord(
            batch.data,
            now_ms,
            done.digest,
            *counts,
            top_ups_in_billed_period=True,
            future_skew_ms=billing.future_skew_ms,
            returned_expired_credit_breaks=True,
            reservation_ids_bounded=True,
            returned_rolled_credit_breaks=True,
            duplicates_before_skew=True,
            refunds_netted=True,
        )
        rated.append((seq, done, encode_record(JournalRecord(usage=usage, alerts=list(done.alerts)))))
    return rated


def _rated_or_refused(billing: Billing, batch: UsageBatch, now_ms: int) -> Ingested | EngineError:
    """The batch rated, or why it is refused whole, having changed nothing."""
    try:
        return billing.ingest(
            batch.data,
            now_ms,
            events_max=batch.events_max,
            allowed=batch.allowed,
            top_ups_in_billed_period=True,
            returned_expired_credit_breaks=True,
            reservation_ids_bounded=True,
            returned_rolled_credit_breaks=True,
            duplicates_before_skew=True,
            batch_ids_bounded=True,
            refunds_netted=True,
        )
    except BatchTooLarge as exc:
        return ResourceExhausted(f"a batch holds at most {batch.events_max} events, this one {exc.args[0]}")
    except BatchIdTooLong as exc:
        return InvalidArgument.field(
            "batch_id", f"is at most {TEXT_BYTES_MAX} bytes, not {exc.args[0]:,} (the ack echoes it whole)"
        )
    except CustomerNotAllowed as exc:
        index, customer_id = exc.args
        # Worded as server/auth.py words a missing customer and a foreign one for every other RPC.
        refused = (
            f"may not touch customer {quoted_id(customer_id)}"
            if customer_id
            else "is restricted to some customers: the event's customer_id is required"
        )
        return PermissionDenied(f"events[{index}]: key {batch.key_name!r} {refused}; nothing in this batch was applied")
    except BatchNotDecodable as exc:
        # The event and field prost refused ("events[3].customer_id"), so a sender of thousands of events knows
        # which to fix; "request" when the bad bytes are the batch's own framing.
        field, message = exc.args
        return InvalidArgument.field(field or "request", f"not a UsageBatch: {message}")


def rate_batches_explained(
    billing: Billing, batches: list[UsageBatch], now_ms: int, explained: bool
) -> tuple[list[tuple[int, Ingested | EngineError, bytes | None]], bytes | None]:
    """_rate_batches, then (when the explain index is on) the kernel's explain records of the run, in the same
    hop: taking them copies every record into one bytes (about 2 products × 1,000 events a batch), which on the
    event loop held it (and the GIL) for milliseconds per run."""
    rated = _rate_batches(billing, batches, now_ms)
    return rated, billing.kernel.take_explain() if explained else None
