"""Recovery: the state rebuilt from the newest snapshot and the journal records after it, each replayed record
checked against what it did when it was written."""

from __future__ import annotations

import dataclasses
import time

import msgspec

from engine import commands as cmd
from engine.alerts import FiredAlert
from engine.billing import Billing, RatingChanged
from engine.tables import FUTURE_SKEW_MS_DEFAULT
from server import oplog
from server.explain_index import ExplainIndex
from server.journal import Journal, Segment, SnapshotDamaged
from server.records import JournalRecord, RerationDone, decode_record

DEDUPE_WINDOW_MS_DEFAULT = 35 * 24 * 3600 * 1000
# A recovery that takes longer than this says how far it got, every this often.
RECOVERY_PROGRESS_EVERY_S = 2.0
# A recovery reads the clock (for its progress line) at least once per this many events replayed.
RECOVERY_PROGRESS_EVENTS = 65_536
# A replay hands the explain index what it recorded every this many records (a bounded buffer).
EXPLAIN_REPLAY_RECORDS = 256


class SnapshotUnreadable(Exception):
    """The newest snapshot, or a dedupe segment it lists, is damaged or missing: nothing was read into a state and
    nothing written. The journal keeps every record, so a start without the snapshot replays all of it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Backlog:
    """What a recovery replayed after the snapshot it started from, and that snapshot's bytes: the next snapshot is
    due counting them (Sequencer), as it would have been had the server not stopped. Counting only its own records,
    a server restarted more often than the snapshot interval never took one, and each start replayed more."""

    records: int = 0
    events: int = 0
    journal_bytes: int = 0
    snapshot_bytes: int = 0


def recover(
    journal: Journal,
    *,
    future_skew_ms: int | None = None,
    dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
    progress_every_s: float | None = None,
    explain_index: ExplainIndex | None = None,
) -> Billing:
    """State = snapshot + replay of every record after it; each replayed batch must give its journaled digest
    (RatingChanged otherwise). With `progress_every_s`, a long replay logs its progress that often. With
    `explain_index`, the replay indexes what the index does not cover yet, and the kernel records from then on
    (an index behind the snapshot makes the replay start at the journal's first record)."""
    return recover_counting(
        journal,
        future_skew_ms=future_skew_ms,
        dedupe_window_ms=dedupe_window_ms,
        progress_every_s=progress_every_s,
        explain_index=explain_index,
    )[0]


def recover_counting(
    journal: Journal,
    *,
    future_skew_ms: int | None = None,
    dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
    progress_every_s: float | None = None,
    explain_index: ExplainIndex | None = None,
) -> tuple[Billing, Backlog]:
    """`recover`, and what it replayed after the snapshot (its Backlog)."""
    skew_ms = FUTURE_SKEW_MS_DEFAULT if future_skew_ms is None else future_skew_ms
    billing, snapshot_bytes = _starting_state(journal, explain_index, skew_ms, dedupe_window_ms)
    progress = _RecoveryProgress(billing.last_seq, journal.last_seq(), progress_every_s)
    if explain_index is not None:
        billing.kernel.set_explain(explain_index.covered_seq() + 1)
    records = events = journal_bytes = 0
    for seq, blob in journal.read_records(billing.last_seq):
        progress.at(seq, events)
        records += 1
        journal_bytes += len(blob)
        if explain_index is not None and seq % EXPLAIN_REPLAY_RECORDS == 0:
            explain_index.write_or_stop([billing.kernel.take_explain()], seq - 1)
        events += _replay_record(billing, seq, decode_record(blob), skew_ms)
    billing.use_future_skew(skew_ms)  # what is received from now on
    if explain_index is not None:
        explain_index.write_or_stop([billing.kernel.take_explain()], billing.last_seq)
    # Compiled here, before the server serves: otherwise the first read or batch after a start pays for every
    # customer's tables (seconds at a million customers).
    billing.refresh_tables()
    return billing, Backlog(records, events, journal_bytes, snapshot_bytes)


def _starting_state(
    journal: Journal, explain_index: ExplainIndex | None, skew_ms: int, dedupe_window_ms: int
) -> tuple[Billing, int]:
    """The state replay starts from (the snapshot's, or empty) and the snapshot's bytes as a store counts them."""
    snapshot_seq = journal.snapshot_seq()
    if explain_index is not None and snapshot_seq is not None and explain_index.covered_seq() < snapshot_seq:
        # Decided from the seq alone: a snapshot the replay does not start from is neither read nor restored.
        _disregard_if_damaged(journal, snapshot_seq, explain_index.covered_seq())
        snapshot = None
    else:
        snapshot = _stored_snapshot(journal)
    snapshot_bytes = 0
    if snapshot is not None:
        seq, blob, segments = snapshot
        # As a store counts it: the snapshot and the segment it wrote last.
        snapshot_bytes = len(blob) + (journal.dedupe_segment_bytes() or [0])[-1]
        try:
            billing = Billing.from_snapshot(
                blob, future_skew_ms=skew_ms, dedupe_window_ms=dedupe_window_ms, segments=segments
            )
        except (msgspec.MsgspecError, ValueError) as exc:  # the control plane's JSON, the kernel's bytes
            raise SnapshotUnreadable(f"the snapshot of seq {seq} does not restore: {exc}") from exc
        if segments:
            # The next snapshot stores the changes since this one, the replay's first.
            billing.kernel.record_dedupe_changes(True)
            billing.dedupe_segments_seq = seq
    else:
        billing = Billing(future_skew_ms=skew_ms, dedupe_window_ms=dedupe_window_ms)
    assert billing.last_seq == (snapshot[0] if snapshot else 0), "snapshot seq and state disagree"
    return billing, snapshot_bytes


def _replay_record(billing: Billing, seq: int, record: JournalRecord, skew_ms: int) -> int:
    """Applies one journal record as it was applied when written; the events it replayed."""
    if record.usage is not None:
        usage = record.usage
        billing.use_future_skew(skew_ms if usage.future_skew_ms is None else usage.future_skew_ms)
        return billing.replay(
            seq,
            usage.batch,
            usage.received_ms,
            usage.digest,
            record.alerts,
            top_ups_in_billed_period=usage.top_ups_in_billed_period,
            returned_expired_credit_breaks=usage.returned_expired_credit_breaks,
            reservation_ids_bounded=usage.reservation_ids_bounded,
            returned_rolled_credit_breaks=usage.returned_rolled_credit_breaks,
            duplicates_before_skew=usage.duplicates_before_skew,
            refunds_netted=usage.refunds_netted,
        )
    if record.rerated is not None:
        _replay_rerated(billing, seq, record.rerated, record.alerts)
        return 0
    assert record.command is not None and not isinstance(record.command, cmd.IngestBatch), (
        f"record {seq}: a format-1 usage record in a format-2 journal"
    )
    if record.deferred:
        assert isinstance(record.command, cmd.PublishVersion | cmd.RollbackRateCard)
        billing.publish_deferred(record.command, seq)
    else:
        billing.apply(record.command, seq)
    if billing.take_fired() != record.alerts:
        raise RatingChanged(f"journal record {seq}: alerts changed between releases; run the release that wrote it")
    return 0


def _stored_snapshot(journal: Journal) -> tuple[int, bytes, list[Segment]] | None:
    """The newest snapshot and its dedupe segments; SnapshotUnreadable when one is cut short or missing."""
    try:
        return journal.load_segmented_snapshot()
    except SnapshotDamaged as exc:
        raise SnapshotUnreadable(str(exc)) from exc


def _disregard_if_damaged(journal: Journal, seq: int, covered_seq: int) -> None:
    """A snapshot the replay does not start from (the explain index is behind it), found damaged by its files'
    sizes: a warning, and the journal disregards it until the next snapshot replaces it, so a later recovery (the
    writer's rebuild, once the index has caught up) does not restore it either. Refusing the start for it would
    stop a start that replays the whole journal anyway."""
    damage = journal.disregard_if_damaged()
    if damage is not None:
        oplog.log.warning(
            "the snapshot of seq %d is damaged and not used: %s; the explain index covers seq %d only, so the start "
            "replays the whole journal, and the next snapshot replaces it",
            seq,
            damage,
            covered_seq,
        )


def _replay_rerated(billing: Billing, seq: int, done: RerationDone, fired: list[FiredAlert]) -> None:
    """A deferred re-rating's completion record: it must complete the pending publish and do what it did then."""
    rerating = billing.rerating
    assert rerating is not None and rerating.publish_seq == done.publish_seq, (
        f"record {seq} completes the re-rating of record {done.publish_seq}, which is not pending"
    )
    replayed = billing.finish_rerating(seq, done.at_ms)
    again = (
        replayed.customers,
        replayed.buckets,
        replayed.events,
        replayed.amount_delta_picos,
        replayed.closed_buckets,
        replayed.closed_events,
        replayed.closed_amount_picos,
    )
    if again != done.totals or billing.take_fired() != fired:
        raise RatingChanged(
            f"journal record {seq}: re-rating changed between releases (replaying it gives another result than "
            "the journal holds); run the release that wrote this journal"
        )


class _RecoveryProgress:
    """Logs `recovery in progress replayed=N of=M ...` every `every_s` of a long replay; costs a clock read per 1,024
    records or RECOVERY_PROGRESS_EVENTS events replayed, whichever comes first (a record may hold 10,000 events)."""

    def __init__(self, from_seq: int, to_seq: int, every_s: float | None) -> None:
        self.from_seq = from_seq
        self.to_seq = to_seq
        self.every_s = every_s
        self.started = time.monotonic()
        self.next_at = self.started + every_s if every_s is not None else float("inf")
        self.events_next = RECOVERY_PROGRESS_EVENTS

    def at(self, seq: int, events: int) -> None:
        """Before record `seq`, `events` events replayed so far."""
        if self.every_s is None or (seq % 1024 and events < self.events_next):
            return
        self.events_next = events + RECOVERY_PROGRESS_EVENTS
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + self.every_s
            oplog.line(
                "recovery in progress",
                replayed=seq - 1 - self.from_seq,  # record `seq` is next: those before it are done
                of=self.to_seq - self.from_seq,
                seq=seq,
                last_seq=self.to_seq,
                elapsed_s=round(now - self.started, 1),
            )
