"""Snapshots of the billing state, taken by the one writer (server/sequencer.py) at a command boundary.

The writer owns a `Snapshots` and asks it, between groups, whether one is due and to take it; this module holds
the rest: when one falls due (records, events and journal bytes since the last), encoding both halves off the
event loop, storing them on a thread of its own while the writer goes on, and compacting the dedupe segments
after a store. Kept apart from the writer's loop so that each reads in one sitting; it changes no state the
writer applies, only `Billing.dedupe_segments_seq` and the kernel's dedupe log, as the writer's snapshot did.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import sys
import time
from collections.abc import Awaitable, Callable, Iterator

from engine._kernel import DedupeSegment, merge_dedupe_segments_to
from engine.billing import Billing, snapshot_parts
from server import heap
from server.explain_index import ExplainIndex
from server.journal import DedupeSegmentSave, Journal, JournalFull, Segment, SegmentWriter
from server.recovery import Backlog
from server.scheduling import GilHandover
from server.segment_compaction import segments_to_compact
from server.worker import Worker

# The writer's logger: the operator's log names snapshots as it did when the writer took them itself.
log = logging.getLogger("tariff.sequencer")

# A snapshot's encoding gives the GIL over this often (the target: no stall over 5 ms).
PAUSE_EVERY_S = 0.001
# How long a thread encoding a snapshot sleeps, every PAUSE_EVERY_S, so that the event loop can take the GIL;
# and the interpreter's switch interval while both halves encode (a snapshot encoded beside a loop measured a p99
# lateness of the loop of 9 ms at the default 5 ms, 2.4-4 ms at this).
GIL_HANDOVER_S = 0.00005
SNAPSHOT_SWITCH_INTERVAL_S = 0.0005
# A dedupe segment (a snapshot's changes to the table, or a compaction's merge) is made and written a part of this
# many bytes at a time, the one part's room reused (server/journal.py writes it 64 KiB at a time).
SEGMENT_PART_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class SnapshotPolicy:
    """When a snapshot falls due (Snapshots.due): once `every_records` records or `every_events` usage events were
    journaled since the last, and the journal has taken `journal_factor` times the last snapshot's bytes since it
    (0: that is not waited for). Set where the server is configured (server/cli.py's flags, server/app.py's
    ServeConfig), handed to the writer, which hands it to its Snapshots."""

    every_records: int = 5_000
    every_events: int = 1_000_000
    # A snapshot holds the whole dedupe window (40 B an id), so at a fixed event interval the bytes snapshots write
    # grow with the window and, summed over a fill, with its square (README, Dedupe at scale); with this, they stay
    # at most about 1 / factor of the journal's, and a restart replays at most about factor snapshots' size of
    # journal. Replaying a journal byte took about 5 times the CPU of restoring a snapshot byte (10,000,000 events:
    # 20 s against 1.2 s for 400 MB), so 0.5 keeps a restart at 10,000,000 ids within about 1,500,000 events of
    # replay.
    journal_factor: float = 0.5


SNAPSHOT_POLICY_DEFAULT = SnapshotPolicy()


@dataclasses.dataclass(frozen=True, slots=True)
class _Store:
    """A snapshot encoded and being written to its file."""

    seq: int
    snapshot_bytes: int  # without its dedupe segment, which the future gives (encoded on the snapshot's thread)
    started_s: float
    encoded_s: float
    switch_interval_s: float  # the interpreter's, restored once stored
    future: asyncio.Future[int]


class Snapshots:
    """The writer's snapshots: the counts toward the next, the one being stored (at most one) and the thread that
    stores it. Called by the writer only (server/sequencer.py), at a command boundary, on the event loop."""

    def __init__(
        self,
        billing: Billing,
        journal: Journal,
        *,
        writer_thread: Worker,
        rating_thread: Worker,
        refresh_tables: Callable[[], Awaitable[None]],
        policy: SnapshotPolicy,
        explain_index: ExplainIndex | None,
        backlog: Backlog,
    ) -> None:
        """`writer_thread`, `rating_thread`: the writer's, on which the two halves are encoded (it waits here
        meanwhile); `refresh_tables`: the writer's paced compile, run before the encode."""
        self.billing = billing
        self.journal = journal
        self.explain_index = explain_index
        self.policy = policy
        self._writer_thread = writer_thread
        self._rating_thread = rating_thread
        self._refresh_tables = refresh_tables
        # A snapshot's file is written here while the writer goes on: once encoded, the state it holds is fixed.
        self._snapshot_thread = Worker("tariff-snapshot")
        self._storing: _Store | None = None  # the snapshot being written, at most one
        self._store_failure: BaseException | None = None
        self.count_backlog(backlog)

    def count_backlog(self, backlog: Backlog) -> None:
        """The counts toward the next snapshot start at what the journal holds past the stored one; a snapshot
        bytes 0 (none stored) makes the first due on the counts alone."""
        self._records_since_snapshot = backlog.records
        self._events_since_snapshot = backlog.events
        self._journal_bytes_since_snapshot = backlog.journal_bytes
        self._last_snapshot_bytes = backlog.snapshot_bytes

    def due(self) -> bool:
        return (
            self._storing is None
            and (
                self._records_since_snapshot >= self.policy.every_records
                or self._events_since_snapshot >= self.policy.every_events
            )
            and self._journal_bytes_since_snapshot >= self.policy.journal_factor * self._last_snapshot_bytes
        )

    async def take(self, *, wait_for_store: bool = True, compact: bool = True) -> None:
        """Writes a snapshot without holding the event loop more than about PAUSE_EVERY_S at a time. Both halves
        are encoded off the loop, at once: the kernel's on the journal's thread with the GIL released, the control
        plane's on the rating thread (idle: the writer is here) a part at a time, handing the GIL over between
        parts (see _encode_handing_over); the snapshot's thread then writes both to the file as they are.
        One msgspec encode or bytes join of the whole holds the GIL throughout: at 10,000 customers the control
        plane is 20 MB of JSON, 40 ms and more in one call. The writer is here, so no command changes the state
        meanwhile (reads do not change it): the state at this command boundary is what both threads encode.
        Once encoded the parts are that state whatever follows, so with `wait_for_store` False the writer goes on
        while they are written (the store took as long as the encode at 10,000,000 ids); the next snapshot waits
        for this one's store. The counts toward the next start at the encode: after a store the disk had no room
        for, the next is tried once they are reached again. With `compact`, the store compacts the dedupe segments
        when due."""
        await self.stored()  # one store at a time, in seq order
        seq = self.billing.last_seq
        if seq == 0:
            return
        switch_interval_s = sys.getswitchinterval()
        # Threads hold the GIL in turn meanwhile (the kernel's part copies, the control plane's encode, then the
        # explain index's thread catching up to the snapshot's seq while it is stored): a loop waiting for it asks
        # for it after this long instead of the default 5 ms, until the snapshot is stored.
        sys.setswitchinterval(SNAPSHOT_SWITCH_INTERVAL_S)
        started_s = time.perf_counter()
        # The changes since the stored snapshot whose segments they follow; a base when there is none (a first
        # snapshot, one after a store that failed, or after a recovery from a snapshot without segments).
        base = self.billing.dedupe_segments_seq is None
        try:
            # On the loop, as every compile (see Billing.kernel_snapshot_segmented): the last command may have
            # left the tables stale (a ClosePeriod, a new customer).
            await self._refresh_tables()
            parts, segment = await self._encode(base)
        except BaseException:
            sys.setswitchinterval(switch_interval_s)
            raise
        self.billing.dedupe_segments_seq = seq
        self._records_since_snapshot = 0
        self._events_since_snapshot = 0
        self._journal_bytes_since_snapshot = 0
        storing = _Store(
            seq=seq,
            snapshot_bytes=sum(len(part) for part in parts),
            started_s=started_s,
            encoded_s=time.perf_counter(),
            switch_interval_s=switch_interval_s,
            # The snapshot's thread writes the parts to the file one after the other with the GIL released, and
            # drops each once written: no copy of the whole is made (nor faulted in, nor unmapped).
            future=self._snapshot_thread.run(self._save_snapshot, seq, parts, segment, base, compact),
        )
        del parts, segment
        self._storing = storing
        storing.future.add_done_callback(lambda _: self._finish_store(storing))
        if wait_for_store:
            await self.stored()

    async def _encode(self, base: bool) -> tuple[list[bytes], DedupeSegment]:
        """The snapshot's parts, both halves encoded at once off the loop (see take), and its dedupe segment
        (encoded on the snapshot's thread)."""
        kernel_half = self._writer_thread.run(self.billing.kernel_snapshot_segmented, base)
        try:
            control_parts = await self._rating_thread.run(_encode_handing_over, self.billing.control_snapshot_parts())
        finally:
            kernel_parts, segment = await kernel_half
        # The future holds the kernel's half too: all of it must be freed before the heap is trimmed.
        return snapshot_parts(control_parts, kernel_parts), segment

    async def stored(self) -> None:
        """Waits for the snapshot being stored, if any; raises what stopped a store other than a full disk."""
        storing = self._storing
        if storing is not None:
            await asyncio.wait([storing.future])
            self._finish_store(storing)
        if self._store_failure is not None:
            raise self._store_failure

    def counted(self, records: int, events: int, journal_bytes: int) -> None:
        """Counts a committed group's records, events and journal bytes toward the next snapshot."""
        self._records_since_snapshot += records
        self._events_since_snapshot += events
        self._journal_bytes_since_snapshot += journal_bytes

    async def take_if_due(self) -> None:
        """Takes a snapshot when one is due, the writer going on while it is stored; raises what stopped the last
        store other than a full disk."""
        if self._store_failure is not None:
            raise self._store_failure
        if self.due():
            await self.take(wait_for_store=False)

    def shutdown(self) -> None:
        """Ends the snapshot's thread, once the last store is done."""
        self._snapshot_thread.shutdown()

    def _finish_store(self, storing: _Store) -> None:
        """On the loop once a store ended, by its future's callback or the writer that waited for it, whichever
        comes first. Logs how long the snapshot held the writer (its encode) and took to store: at 100,000,000
        ids in the dedupe window a snapshot is gigabytes."""
        if self._storing is not storing:
            return
        self._storing = None
        sys.setswitchinterval(storing.switch_interval_s)
        error = None if storing.future.cancelled() else storing.future.exception()
        if error is not None:
            # Its segment's changes are in no file: the next snapshot's segment holds the whole table.
            self.billing.dedupe_segments_seq = None
        if isinstance(error, JournalFull):
            # The journal alone still recovers everything; only restart time suffers. A snapshot is a file beside the
            # journal's map, so it is the disk that has no room: the error says so, and where.
            log.warning(
                "no snapshot at seq %d: %s; the journal keeps every record, and the next snapshot is tried once due",
                storing.seq,
                error,
            )
        elif error is not None:
            self._store_failure = error  # the writer stops at its next housekeeping, as if it had stored it
        else:
            snapshot_bytes = storing.snapshot_bytes + storing.future.result()
            self._last_snapshot_bytes = snapshot_bytes
            log.info(
                "snapshot seq=%d bytes=%d encode_ms=%.0f store_ms=%.0f",
                storing.seq,
                snapshot_bytes,
                (storing.encoded_s - storing.started_s) * 1000,
                (time.perf_counter() - storing.encoded_s) * 1000,
            )

    def _save_snapshot(
        self, seq: int, parts: list[bytes], segment: DedupeSegment, base: bool, compact: bool = True
    ) -> int:
        """On the snapshot's thread: encodes the dedupe segment, stores it and the snapshot's parts (the journal
        empties the lists as it writes), compacts the segments when due (and `compact`), then hands the heap the
        snapshot's parts freed back to the system. Returns the segment's bytes."""
        try:
            if self.explain_index is not None:
                self.explain_index.flush(seq)  # a restart replays from the snapshot: the index must reach it
            # The segment is made and written a part at a time, as the journal asks for it.
            writer = DedupeSegmentSave(lambda write: segment.write_to(write, SEGMENT_PART_BYTES), base)
            self.journal.save_snapshot(seq, parts, writer)
            segment_bytes = self.journal.dedupe_segment_bytes()[-1]
            # The log's room, already in memory, takes the next changes (pages new to the process cost the writer).
            self.billing.kernel.give_back_dedupe_log(segment)
            if compact:
                self._compact_segments(segment.table_base_bytes)
            return segment_bytes
        finally:
            parts.clear()  # what a refused save left unwritten is freed before the trim too
            heap.trim_heap()

    def _compact_segments(self, table_base_bytes: int) -> None:
        """On the snapshot's thread, after a store: merges the stored snapshot's dedupe segments when due
        (`segments_to_compact`; `table_base_bytes`, a base of the table they add up to), from their files, off the
        writer. A disk with no room for the merge keeps them."""
        count = segments_to_compact(self.journal.dedupe_segment_bytes(), table_base_bytes)
        if count == 0:
            return
        started_s = time.perf_counter()
        try:
            self.journal.compact_dedupe_segments(count, _merge_segments)
        except JournalFull:
            log.warning("no room to compact %d dedupe segments: kept as they are", count)
            return
        log.info(
            "dedupe segments compacted count=%d bytes=%d ms=%.0f",
            count,
            sum(self.journal.dedupe_segment_bytes()),
            (time.perf_counter() - started_s) * 1000,
        )


def _merge_segments(segments: list[Segment], base: bool) -> SegmentWriter:
    return lambda write: merge_dedupe_segments_to(segments, base, SEGMENT_PART_BYTES, write)


def _encode_handing_over(parts: Iterator[bytes]) -> list[bytes]:
    """Runs the iterator on a worker thread, sleeping GIL_HANDOVER_S every PAUSE_EVERY_S. A thread running Python
    keeps the GIL until another has waited the whole switch interval (5 ms) for it, and a msgspec call does not
    give it up at all: the sleep releases it, so an event loop waiting for it runs at once."""
    done: list[bytes] = []
    pause = GilHandover(every_s=PAUSE_EVERY_S, sleep_s=GIL_HANDOVER_S)
    for part in parts:
        done.append(part)
        pause()
    return done
