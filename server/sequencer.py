"""The one writer: every state change passes through here, in journal order, and is durable before it is answered.

Callers `submit` a command and await its result. The writer task takes everything queued (a group), applies
each command to the engine in order, appends one journal record per applied command, and commits the whole
group in ONE LMDB write transaction on a dedicated thread (group commit: concurrent streams share an fsync).
Only then are the callers' futures resolved. If the commit fails, no caller is answered with success and
the engine is rebuilt from what the journal holds, so nothing unacknowledged stays applied. A broken
invariant (AssertionError) stops the writer before it commits: the server then shuts down.

Reads (balances, previews) read the engine's in-memory state directly, between the writer's steps; they may
see a group that is applied but whose commit is still in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import msgspec

from engine import commands as cmd
from engine.errors import EngineError
from engine.state import FUTURE_SKEW_MS_DEFAULT, Engine, IngestResult
from server.errors import ResourceExhausted, Unavailable
from server.journal import DedupeEntry, Journal, JournalFull

log = logging.getLogger("tariff.sequencer")

GROUP_COMMANDS_MAX = 256
GROUP_EVENTS_MAX = 50_000
DEDUPE_WINDOW_MS_DEFAULT = 35 * 24 * 3600 * 1000
SNAPSHOT_EVERY_RECORDS_DEFAULT = 5_000
PRUNE_EVERY_COMMITS = 1_000
PRUNE_ENTRIES_MAX = 10_000


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
    skew_ms = FUTURE_SKEW_MS_DEFAULT if future_skew_ms is None else future_skew_ms
    snapshot = journal.load_snapshot()
    engine = Engine.from_snapshot(snapshot[1], future_skew_ms=skew_ms) if snapshot else Engine(future_skew_ms=skew_ms)
    assert engine.state.last_seq == (snapshot[0] if snapshot else 0), "snapshot seq and state disagree"
    for seq, blob in journal.read_records(engine.state.last_seq):
        record = decode_record(blob)
        result = engine.apply(record.command, seq)
        if record.outcome is not None:
            assert isinstance(result, IngestResult)
            replayed = Outcome(result.accepted, result.duplicates, len(result.rejections))
            assert replayed == record.outcome, f"replay of record {seq} diverged: {replayed} != {record.outcome}"
    return engine


@dataclasses.dataclass(slots=True)
class _Submission:
    command: cmd.Command | None  # None: the marker close() queues behind the last real command
    future: asyncio.Future[tuple[int, object]]


class Sequencer:
    def __init__(
        self,
        engine: Engine,
        journal: Journal,
        *,
        clock_ms: Callable[[], int] | None = None,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
        snapshot_every_records: int = SNAPSHOT_EVERY_RECORDS_DEFAULT,
    ) -> None:
        self.engine = engine
        self.journal = journal
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self.dedupe_window_ms = dedupe_window_ms
        self.snapshot_every_records = snapshot_every_records
        self._queue: asyncio.Queue[_Submission] = asyncio.Queue()
        self._writer_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tariff-journal")
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._records_since_snapshot = 0
        self.stopped = asyncio.Event()
        self.failure: BaseException | None = None
        self.commits = 0

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tariff-writer")

    def submit(self, command: cmd.Command) -> asyncio.Future[tuple[int, object]]:
        """Queues a command in arrival order; the future resolves to (journal seq, result) once durable."""
        future: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        if self._closing or self.failure is not None:
            future.set_exception(Unavailable("the server is shutting down"))
        else:
            self._queue.put_nowait(_Submission(command, future))
        return future

    async def run(self, command: cmd.Command) -> tuple[int, object]:
        return await self.submit(command)

    async def close(self) -> None:
        """Stops taking work, commits what is queued, writes a snapshot. A second call does nothing."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(_Submission(None, asyncio.get_running_loop().create_future()))
            await self._task
        if self.failure is None:
            await self._snapshot()
        self._writer_thread.shutdown(wait=True)

    async def _run(self) -> None:
        group: list[_Submission] = []
        try:
            while True:
                group = [await self._queue.get()]
                events = _events(group[0].command)
                while not self._queue.empty() and len(group) < GROUP_COMMANDS_MAX and events < GROUP_EVENTS_MAX:
                    group.append(self._queue.get_nowait())
                    events += _events(group[-1].command)
                await self._process(group)
                if self._closing and self._queue.empty():
                    return
        except BaseException as exc:  # a broken invariant: stop before anything else commits
            self.failure = exc
            log.critical("the writer stopped: %r", exc, exc_info=exc)
            while not self._queue.empty():
                group.append(self._queue.get_nowait())
            for submission in group:
                if not submission.future.done():
                    submission.future.set_exception(Unavailable("the writer stopped; nothing more was committed"))
            raise
        finally:
            self.stopped.set()

    async def _process(self, group: list[_Submission]) -> None:
        records: list[tuple[int, bytes]] = []
        new_transactions: dict[str, DedupeEntry] = {}
        answered: list[tuple[_Submission, int, object]] = []
        now_ms = self.clock_ms()
        for submission in group:
            if submission.future.cancelled():
                continue
            command = submission.command
            if command is None:
                submission.future.set_result((self.engine.state.last_seq, None))
                continue
            if isinstance(command, cmd.IngestBatch):
                command = self._with_known(command, new_transactions, now_ms)
            seq = self.engine.state.last_seq + 1
            try:
                result = self.engine.apply(command, seq)
            except EngineError as exc:
                submission.future.set_exception(exc)
                continue
            outcome = None
            if isinstance(result, IngestResult):
                outcome = Outcome(result.accepted, result.duplicates, len(result.rejections))
                for transaction_id, digest in result.accepted_transactions.items():
                    new_transactions[transaction_id] = DedupeEntry(digest, now_ms)
            records.append((seq, encode_record(JournalRecord(command, outcome))))
            answered.append((submission, seq, result))
        if not records:
            return
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._writer_thread, self.journal.commit, records, new_transactions
            )
        except JournalFull as exc:
            self._rebuild()
            for submission, _, _ in answered:
                if not submission.future.done():
                    submission.future.set_exception(
                        ResourceExhausted(f"the journal is full, nothing was written: {exc}")
                    )
            return
        except Exception as exc:
            log.exception("journal commit failed")
            self._rebuild()
            for submission, _, _ in answered:
                if not submission.future.done():
                    submission.future.set_exception(
                        Unavailable(f"the journal commit failed, nothing was written: {exc}")
                    )
            return
        self.commits += 1
        for submission, seq, result in answered:
            if not submission.future.done():
                submission.future.set_result((seq, result))
        self._records_since_snapshot += len(records)
        if self._records_since_snapshot >= self.snapshot_every_records:
            await self._snapshot()
        if self.commits % PRUNE_EVERY_COMMITS == 0:
            # Entries older than the window no longer decide anything (lookups ignore them): reclaim their space
            # a bounded slice at a time, on the writer thread, between groups.
            try:
                await asyncio.get_running_loop().run_in_executor(
                    self._writer_thread,
                    self.journal.prune_transactions,
                    now_ms - self.dedupe_window_ms,
                    PRUNE_ENTRIES_MAX,
                )
            except JournalFull:
                log.warning("the journal is too full even to prune the dedupe index: grow --map-size-mb")

    def _with_known(self, batch: cmd.IngestBatch, pending: dict[str, DedupeEntry], now_ms: int) -> cmd.IngestBatch:
        """The batch with the dedupe hits for its transaction ids: this group's, then the index's (in window)."""
        ids = {event.transaction_id for event in batch.events if event.transaction_id}
        known = {tid: pending[tid].content_hash for tid in ids if tid in pending}
        oldest_ms = now_ms - self.dedupe_window_ms
        for tid, entry in self.journal.find_transactions(ids - known.keys()).items():
            if entry.accepted_at_ms >= oldest_ms:
                known[tid] = entry.content_hash
        return msgspec.structs.replace(batch, received_at_ms=now_ms, known=known)

    def _rebuild(self) -> None:
        """Drops what was applied but not committed by recovering the engine from the journal."""
        self.engine.reset(recover(self.journal, future_skew_ms=self.engine.future_skew_ms).state)

    async def _snapshot(self) -> None:
        seq = self.engine.state.last_seq
        if seq == 0:
            return
        blob = self.engine.encode_snapshot()
        try:
            await asyncio.get_running_loop().run_in_executor(self._writer_thread, self.journal.save_snapshot, seq, blob)
        except JournalFull:
            # The journal alone still recovers everything; only restart time suffers.
            log.warning("no room for a snapshot at seq %d: grow --map-size-mb", seq)
            return
        self._records_since_snapshot = 0


def _events(command: cmd.Command | None) -> int:
    return len(command.events) if isinstance(command, cmd.IngestBatch) else 1
