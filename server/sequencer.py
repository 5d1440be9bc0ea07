"""The one writer: every state change passes through here, in journal order, and is durable before it is answered.

Callers `submit` a command and await its result. The writer task takes everything queued (a group), applies
each command to the engine in order, appends one journal record per applied command, and commits the whole
group in ONE LMDB write transaction on a dedicated thread (group commit: concurrent streams share an fsync).
Only then are the callers' futures resolved. If the commit fails, no caller is answered with success and
the engine is rebuilt from what the journal holds, so nothing unacknowledged stays applied. A broken
invariant (AssertionError) stops the writer before it commits: the server then shuts down.

Two things keep the writer from stalling everything else. Usage is rated a slice of events at a time, with a
yield to the event loop between slices, so reads wait for one slice, not a group. And commits are pipelined:
while one group's commit is in flight (mostly fsync, which releases the GIL), the next group is applied; at
most one commit is in flight, answers leave in journal order, and if a commit fails the group applied after
it fails too (the state is rebuilt from the journal, which holds neither).

The dedupe entries of accepted events are not written with their records: they are kept in memory (at most
UNINDEXED_ENTRIES_MAX) and written to the journal's index in bulk, between groups and always before a snapshot.
After a crash, `recover_for_writing` re-derives the entries of the records the index does not cover yet by
replaying them, so a resend is a duplicate whether or not its first acceptance had been indexed.

A command that changes nothing gets no journal record and no seq: a usage batch that accepts no event (empty,
or every event a duplicate or refused), and a retried admin request the state already reflects (the engine
answers it as the first call was answered). Such a batch is acked with the journal's current seq.

Reads (balances, previews) read the engine's in-memory state directly, between the writer's steps; they may
see a group (or part of a batch) that is applied but whose commit is still in flight.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgspec

from engine import commands as cmd
from engine.errors import EngineError, Repeated
from engine.state import FUTURE_SKEW_MS_DEFAULT, Engine, IngestResult, audit_target
from server import oplog, telemetry
from server.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from server.journal import DedupeEntry, Journal, JournalFull

log = logging.getLogger("tariff.sequencer")

GROUP_COMMANDS_MAX = 256
GROUP_EVENTS_MAX = 50_000
DEDUPE_WINDOW_MS_DEFAULT = 35 * 24 * 3600 * 1000
SNAPSHOT_EVERY_RECORDS_DEFAULT = 5_000
# A snapshot also after this many events: recovery replays at most about this many (~30 µs each). A snapshot of
# 10,000 busy customers takes ~1.5 s to encode on the event loop, so it is not taken much more often.
SNAPSHOT_EVERY_EVENTS_DEFAULT = 1_000_000
PRUNE_EVERY_COMMITS = 1_000
PRUNE_ENTRIES_MAX = 10_000
# Events rated between two yields to the event loop: at 30-60 µs an event, 1-2 ms that reads wait at most.
SLICE_EVENTS = 32
# Dedupe entries held in memory before they are written to the index in one transaction (~150 bytes each).
UNINDEXED_ENTRIES_MAX = 100_000
# A recovery that takes longer than this says how far it got, every this often.
RECOVERY_PROGRESS_EVERY_S = 2.0


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    """An ingest command's result as journaled, checked again on replay (same input, same output)."""

    accepted: int
    duplicates: int
    rejected: int


class JournalRecord(msgspec.Struct, frozen=True, array_like=True):
    command: cmd.Command
    outcome: Outcome | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JournalRecord)


def encode_record(record: JournalRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(blob: bytes) -> JournalRecord:
    return _decoder.decode(blob)


def recover(journal: Journal, *, future_skew_ms: int | None = None) -> Engine:
    """State = snapshot + replay of every record after it; asserts each replayed outcome matches the journal."""
    return recover_for_writing(journal, future_skew_ms=future_skew_ms)[0]


def recover_for_writing(
    journal: Journal, *, future_skew_ms: int | None = None, progress_every_s: float | None = None
) -> tuple[Engine, dict[str, DedupeEntry]]:
    """`recover`, plus the dedupe entries of replayed records that the index does not hold yet (the records
    after journal.transactions_indexed_through()): what a Sequencer over this journal must start with.

    With `progress_every_s`, a replay that lasts longer logs a progress line that often (the operator's log)."""
    skew_ms = FUTURE_SKEW_MS_DEFAULT if future_skew_ms is None else future_skew_ms
    snapshot = journal.load_snapshot()
    engine = Engine.from_snapshot(snapshot[1], future_skew_ms=skew_ms) if snapshot else Engine(future_skew_ms=skew_ms)
    assert engine.state.last_seq == (snapshot[0] if snapshot else 0), "snapshot seq and state disagree"
    indexed_through = journal.transactions_indexed_through()
    # The writer indexes before every snapshot, so every record whose ids are missing is replayed here.
    assert engine.state.last_seq <= indexed_through, "a snapshot is newer than the dedupe index"
    unindexed: dict[str, DedupeEntry] = {}
    progress = _RecoveryProgress(engine.state.last_seq, journal.last_seq(), progress_every_s)
    for seq, blob in journal.read_records(engine.state.last_seq):
        progress.at(seq)
        record = decode_record(blob)
        result = engine.apply(record.command, seq)
        if record.outcome is not None:
            assert isinstance(result, IngestResult) and isinstance(record.command, cmd.IngestBatch)
            replayed = Outcome(result.accepted, result.duplicates, len(result.rejections))
            assert replayed == record.outcome, f"replay of record {seq} diverged: {replayed} != {record.outcome}"
            if seq > indexed_through:
                accepted_at_ms = record.command.received_at_ms
                for transaction_id, digest in result.accepted_transactions.items():
                    unindexed[transaction_id] = DedupeEntry(digest, accepted_at_ms)
    return engine, unindexed


class _RecoveryProgress:
    """Logs `recovery: replayed N of M records` every `every_s` of a long replay; costs a clock read per 1,024."""

    def __init__(self, from_seq: int, to_seq: int, every_s: float | None) -> None:
        self.from_seq = from_seq
        self.to_seq = to_seq
        self.every_s = every_s
        self.started = time.monotonic()
        self.next_at = self.started + every_s if every_s is not None else float("inf")

    def at(self, seq: int) -> None:
        if self.every_s is None or seq % 1024:
            return
        now = time.monotonic()
        if now >= self.next_at:
            self.next_at = now + self.every_s
            oplog.line(
                "recovery in progress",
                replayed=seq - self.from_seq,
                of=self.to_seq - self.from_seq,
                seq=seq,
                last_seq=self.to_seq,
                elapsed_s=round(now - self.started, 1),
            )


@dataclasses.dataclass(slots=True)
class _Submission:
    command: cmd.Command | None  # None: the marker close() queues behind the last real command
    future: asyncio.Future[tuple[int, object]]
    # time.monotonic() after which the caller no longer waits: the command is then not applied at all.
    deadline_monotonic: float | None = None


@dataclasses.dataclass
class _Group:
    """One group commit: the records a group of commands produced, their dedupe entries, and who to answer."""

    now_ms: int
    records: list[tuple[int, bytes]] = dataclasses.field(default_factory=list)
    transactions: dict[str, DedupeEntry] = dataclasses.field(default_factory=dict)
    # (caller, seq, result); a result that is an EngineError is that caller's refusal (nothing was applied).
    answers: list[tuple[_Submission, int, object]] = dataclasses.field(default_factory=list)
    commit: asyncio.Future[None] | None = None
    commit_ms: float = 0.0
    events: int = 0  # usage events in its records
    changes: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)  # (actor, action, target)

    def start(self, writer_thread: ThreadPoolExecutor, journal: Journal) -> None:
        if not self.records:
            return
        started_ns = time.perf_counter_ns()

        def commit() -> None:
            journal.commit(self.records, {})  # the ids are indexed later, in bulk: Sequencer._index
            self.commit_ms = (time.perf_counter_ns() - started_ns) / 1e6

        self.commit = asyncio.get_running_loop().run_in_executor(writer_thread, commit)

    async def wait(self) -> None:
        if self.commit is not None:
            await self.commit

    def answer(self) -> None:
        for submission, seq, result in self.answers:
            if submission.future.done():
                continue
            if isinstance(result, EngineError):
                submission.future.set_exception(result)
            else:
                submission.future.set_result((seq, result))

    def fail(self, error: Exception) -> None:
        for submission, _, _ in self.answers:
            if not submission.future.done():
                submission.future.set_exception(error)


class Sequencer:
    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        *,
        clock_ms: Callable[[], int] | None = None,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
        snapshot_every_records: int = SNAPSHOT_EVERY_RECORDS_DEFAULT,
        snapshot_every_events: int = SNAPSHOT_EVERY_EVENTS_DEFAULT,
        unindexed: dict[str, DedupeEntry] | None = None,
    ) -> None:
        """`unindexed`: from recover_for_writing; required when the journal's index is behind its records."""
        if unindexed is None and journal.transactions_indexed_through() < journal.last_seq():
            raise ValueError("the journal has records whose ids are not indexed: start from recover_for_writing")
        self.engine = engine
        self.journal = journal
        # Dedupe entries of committed records not yet in the journal's index (written in bulk, off the ack path).
        self._unindexed: dict[str, DedupeEntry] = unindexed if unindexed is not None else {}
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.dedupe_window_ms = dedupe_window_ms
        self.snapshot_every_records = snapshot_every_records
        self.snapshot_every_events = snapshot_every_events
        self._queue: asyncio.Queue[_Submission] = asyncio.Queue()
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tariff-journal")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._records_since_snapshot = 0
        self._events_since_snapshot = 0
        self.stopped = asyncio.Event()
        self.failure: BaseException | None = None
        self.commits = 0
        self._pruned_at_commit = 0
        self._arrived = asyncio.Event()  # set by submit(): the writer may be waiting on a commit

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tariff-writer")

    def submit(
        self, command: cmd.Command, deadline_monotonic: float | None = None
    ) -> asyncio.Future[tuple[int, object]]:
        """Queues a command in arrival order; the future resolves to (journal seq, result) once durable.

        A command still queued when `deadline_monotonic` (time.monotonic()) passes is not applied: its future
        fails with DeadlineExceeded. One whose rating has begun is committed and answered as usual.
        """
        future: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        if self._closing or self.failure is not None:
            future.set_exception(Unavailable("the server is shutting down"))
        else:
            self._queue.put_nowait(_Submission(command, future, deadline_monotonic))
            self._arrived.set()
        return future

    async def run(self, command: cmd.Command, deadline_monotonic: float | None = None) -> tuple[int, object]:
        return await self.submit(command, deadline_monotonic)

    async def close(self) -> None:
        """Stops taking work, commits what is queued, writes a snapshot. A second call does nothing."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(_Submission(None, asyncio.get_running_loop().create_future()))
            self._arrived.set()
            await self._task
        if self.failure is None:
            await self._snapshot()
        self._writer_thread.shutdown(wait=True)

    async def _run(self) -> None:
        # Pipelined: while one group's commit is in flight on the writer thread (mostly fsync, which releases
        # the GIL), the next group is applied on the event loop. At most one commit is in flight, answers
        # leave in journal order, and a snapshot is only taken when no uncommitted group is applied.
        in_flight: _Group | None = None
        prepared: _Group | None = None
        taken: list[_Submission] = []
        try:
            while True:
                if in_flight is not None and (self._queue.empty() or self._housekeeping_due()):
                    if await self._work_arrived_during(in_flight):
                        continue  # prepare it while the commit goes on
                    await self._finish(in_flight)
                    in_flight = None
                    await self._housekeeping()
                    if self._closing and self._queue.empty():
                        return
                    continue
                taken = [await self._queue.get()]
                events = _events(taken[0].command)
                while not self._queue.empty() and len(taken) < GROUP_COMMANDS_MAX and events < GROUP_EVENTS_MAX:
                    taken.append(self._queue.get_nowait())
                    events += _events(taken[-1].command)
                prepared = await self._prepare(taken, in_flight)
                taken = []
                if in_flight is not None:
                    failure = await self._finish(in_flight)
                    in_flight = None
                    if failure is not None:
                        # The state was rebuilt from the journal: what `prepared` applied on top is gone. Its
                        # callers hear the same kind of answer (a full journal is RESOURCE_EXHAUSTED for them too).
                        prepared.fail(type(failure)(f"{failure} (an earlier batch's commit; nothing of this one)"))
                        prepared = None
                if prepared is not None:
                    prepared.start(self._writer_thread, self.journal)
                    in_flight, prepared = prepared, None
                if in_flight is None:
                    await self._housekeeping()
                    if self._closing and self._queue.empty():
                        return
        except BaseException as exc:  # a broken invariant: stop before anything else commits
            self.failure = exc
            log.critical("the writer stopped: %r", exc, exc_info=exc)
            stopped = Unavailable("the writer stopped; nothing more was committed")
            for group in (in_flight, prepared):
                if group is not None:
                    # A commit already started may still land; its callers are told it did not, which is safe
                    # (a resend with the same ids is answered as duplicates after the restart).
                    group.fail(stopped)
            while not self._queue.empty():
                taken.append(self._queue.get_nowait())
            for submission in taken:
                if not submission.future.done():
                    submission.future.set_exception(stopped)
            raise
        finally:
            self.stopped.set()

    async def _work_arrived_during(self, in_flight: _Group) -> bool:
        """Waits for the commit in flight or for new work, whichever comes first; True if work came first."""
        commit = in_flight.commit
        if commit is None or commit.done() or self._housekeeping_due():
            return False
        self._arrived.clear()
        if self._queue.empty():
            arrival: asyncio.Future[object] = asyncio.ensure_future(self._arrived.wait())
            waits: list[asyncio.Future[object]] = [commit, arrival]  # type: ignore[list-item]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            arrival.cancel()
        return not self._queue.empty() and not commit.done()

    async def _prepare(self, taken: list[_Submission], in_flight: _Group | None) -> _Group:
        """Applies a group to the engine and encodes its records; answers nobody yet.

        Usage is rated SLICE_EVENTS events at a time, yielding to the event loop in between (docs/architecture.md §2), so a
        balance check or an Authorize waits for one slice, never for a whole group of batches.
        """
        group = _Group(now_ms=self.clock_ms())
        for submission in taken:
            if submission.future.cancelled():
                continue
            command = submission.command
            if command is None:
                group.answers.append((submission, self.engine.state.last_seq, None))
                continue
            if submission.deadline_monotonic is not None and time.monotonic() >= submission.deadline_monotonic:
                expired = DeadlineExceeded("the call's deadline passed while its command waited; nothing was applied")
                group.answers.append((submission, 0, expired))
                continue
            if isinstance(command, cmd.IngestBatch):
                # Ids accepted by the commit still in flight are not in the index yet: look there too.
                in_flight_transactions = in_flight.transactions if in_flight is not None else {}
                command = self._with_known(command, group.transactions, in_flight_transactions, group.now_ms)
            seq = self.engine.state.last_seq + 1
            if isinstance(command, cmd.IngestBatch):
                run = self.engine.start_ingest(command, seq)
                while not run.step(SLICE_EVENTS):
                    await asyncio.sleep(0)
                if not run.accepts_any:
                    # Nothing changed: no record, no seq (a resend gets the same answer, as nothing was kept).
                    group.answers.append((submission, seq - 1, run.finish_unjournaled()))
                    continue
                result: object = run.finish()
            else:
                try:
                    result = self.engine.apply(command, seq)
                except Repeated as repeat:
                    group.answers.append((submission, seq - 1, repeat.result))
                    continue
                except EngineError as exc:
                    group.answers.append((submission, 0, exc))
                    continue
                group.changes.append((command.actor, type(command).__name__, audit_target(command, result)))
            outcome = None
            if isinstance(result, IngestResult):
                outcome = Outcome(result.accepted, result.duplicates, len(result.rejections))
                for transaction_id, digest in result.accepted_transactions.items():
                    group.transactions[transaction_id] = DedupeEntry(digest, group.now_ms)
            group.records.append((seq, encode_record(JournalRecord(command, outcome))))
            if isinstance(command, cmd.IngestBatch):
                group.events += len(command.events)
            group.answers.append((submission, seq, result))
        return group

    async def _finish(self, group: _Group) -> ResourceExhausted | Unavailable | None:
        """Waits for the group's commit and answers its callers; if the commit failed, the state is rebuilt
        from the journal and the error the callers got is returned."""
        failure: ResourceExhausted | Unavailable | None = None
        try:
            await group.wait()
        except JournalFull as exc:
            failure = ResourceExhausted(f"the journal is full, nothing was written: {exc}")
        except Exception as exc:
            log.exception("journal commit failed")
            failure = Unavailable(f"the journal commit failed, nothing was written: {exc}")
        if failure is not None:
            self._rebuild()
            group.fail(failure)
            return failure
        if group.records:
            self.commits += 1
            self._records_since_snapshot += len(group.records)
            self._events_since_snapshot += group.events
            self._unindexed.update(group.transactions)
            telemetry.batch_commit_ms.record(group.commit_ms)
            telemetry.commit_commands.record(len(group.records))
            oplog.activity.committed(group.commit_ms)
        for actor, action, target in group.changes:
            oplog.line("admin change", actor=actor, action=action, target=target)
        oplog.activity.admin_changes += len(group.changes)
        _count_events(group.answers)
        group.answer()
        return None

    def _housekeeping_due(self) -> bool:
        return (
            self._snapshot_due()
            or len(self._unindexed) >= UNINDEXED_ENTRIES_MAX
            or (self.commits > 0 and self.commits % PRUNE_EVERY_COMMITS == 0 and self.commits != self._pruned_at_commit)
        )

    async def _housekeeping(self) -> None:
        """Indexing, snapshot and dedupe pruning, run only when every applied group is committed."""
        if len(self._unindexed) >= UNINDEXED_ENTRIES_MAX:
            await self._index()
        if self._snapshot_due():
            await self._snapshot()
        if self.commits > 0 and self.commits % PRUNE_EVERY_COMMITS == 0 and self.commits != self._pruned_at_commit:
            self._pruned_at_commit = self.commits
            # Entries older than the window no longer decide anything (lookups ignore them): reclaim their space
            # a bounded slice at a time, on the writer thread, between groups.
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._writer_thread,
                    self.journal.prune_transactions,
                    self.clock_ms() - self.dedupe_window_ms,
                    PRUNE_ENTRIES_MAX,
                )
            except JournalFull:
                log.warning("the journal is too full even to prune the dedupe index: grow --map-size-mb")

    def _with_known(
        self,
        batch: cmd.IngestBatch,
        pending: dict[str, DedupeEntry],
        in_flight: dict[str, DedupeEntry],
        now_ms: int,
    ) -> cmd.IngestBatch:
        """The batch with the dedupe hits for its transaction ids: this group's, the group being committed's,
        those committed but not yet indexed, then the index's (in window)."""
        ids = {event.transaction_id for event in batch.events if event.transaction_id}
        known = {tid: pending[tid].content_hash for tid in ids if tid in pending}
        if in_flight:
            known.update({tid: in_flight[tid].content_hash for tid in ids if tid in in_flight and tid not in known})
        oldest_ms = now_ms - self.dedupe_window_ms
        unindexed = self._unindexed
        for tid in ids - known.keys():
            entry = unindexed.get(tid)
            if entry is not None and entry.accepted_at_ms >= oldest_ms:
                known[tid] = entry.content_hash
        for tid, entry in self.journal.find_transactions(ids - known.keys()).items():
            if entry.accepted_at_ms >= oldest_ms:
                known[tid] = entry.content_hash
        return msgspec.structs.replace(batch, received_at_ms=now_ms, known=known)

    def _rebuild(self) -> None:
        """Drops what was applied but not committed by recovering the engine from the journal."""
        self.engine.reset(recover(self.journal, future_skew_ms=self.engine.future_skew_ms).state)

    def _snapshot_due(self) -> bool:
        return (
            self._records_since_snapshot >= self.snapshot_every_records
            or self._events_since_snapshot >= self.snapshot_every_events
        )

    async def _index(self) -> bool:
        """Writes the unindexed dedupe entries to the journal's index in one transaction; False if it is full."""
        through_seq = self.engine.state.last_seq
        if through_seq == self.journal.transactions_indexed_through():
            return True
        entries = self._unindexed
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._writer_thread, self.journal.index_transactions, entries, through_seq
            )
        except JournalFull:
            log.warning("no room to index %d transaction ids: grow --map-size-mb", len(entries))
            return False
        # Entries added meanwhile (none: the writer is here) would be lost by a plain clear, hence the check.
        assert entries is self._unindexed
        self._unindexed = {}
        return True

    async def _snapshot(self) -> None:
        seq = self.engine.state.last_seq
        if seq == 0:
            return
        # Recovery re-derives unindexed ids only from records after the snapshot: index them first.
        if not await self._index():
            log.warning("no snapshot at seq %d: the dedupe index could not be brought up to date", seq)
            return
        blob = self.engine.encode_snapshot()
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer_thread, self.journal.save_snapshot, seq, blob)
        except JournalFull:
            # The journal alone still recovers everything; only restart time suffers.
            log.warning("no room for a snapshot at seq %d: grow --map-size-mb", seq)
            return
        self._records_since_snapshot = 0
        self._events_since_snapshot = 0


def _count_events(answered: list[tuple[_Submission, int, object]]) -> None:
    """Telemetry and the operator's log counters for a committed group: per batch, never per event."""
    for _, _, result in answered:
        if isinstance(result, IngestResult):
            if result.accepted:
                telemetry.events_ingested.add(result.accepted)
            if result.duplicates:
                telemetry.events_duplicated.add(result.duplicates)
            by_reason: collections.Counter[str] = collections.Counter()
            if result.rejections:
                by_reason.update(r.reason.value for r in result.rejections)
                for reason, count in by_reason.items():
                    telemetry.events_rejected.add(count, {"reason": reason})
            oplog.activity.batch(result.accepted, result.duplicates, by_reason)


def _events(command: cmd.Command | None) -> int:
    return len(command.events) if isinstance(command, cmd.IngestBatch) else 1
