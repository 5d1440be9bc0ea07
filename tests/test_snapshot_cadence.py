"""Snapshot cadence, over the in-memory journal: besides the record and event counts, a snapshot waits until the
journal has taken `SnapshotPolicy.journal_factor` times the last snapshot's bytes, so that the bytes snapshots write stay
a bounded share of the journal's however large the state (the dedupe window) grows."""

from __future__ import annotations

import asyncio

from tariff.v1 import usage_pb2

from engine.billing import Billing
from server.demo import demo_commands
from server.journal import MemoryJournal
from server.sequencer import Sequencer
from server.snapshotting import SnapshotPolicy
from server.usage_batches import UsageBatch

NOW_MS = 1_795_000_000_000  # inside the demo contract's first month
NEVER = 10**12
BATCHES_MAX = 2_000


def _batch(prefix: str, events: int) -> UsageBatch:
    dimensions = {"action": "summary", "data_source": "crm", "model": "gpt-4", "complexity": "simple"}
    message = usage_pb2.UsageBatch(
        batch_id=prefix,
        events=[
            usage_pb2.UsageEvent(
                transaction_id=f"{prefix}-{i}",
                customer_id="acme",
                event_type="ai_action",
                timestamp_ms=NOW_MS,
                dimensions=dimensions,
            )
            for i in range(events)
        ],
    )
    return UsageBatch(message.SerializeToString(), 10_000)


class _StoringInTurn(Sequencer):
    """Waits for each snapshot's store before the next command. The server's writer goes on while a snapshot is
    stored, and skips a snapshot that falls due meanwhile (tests/test_snapshot_store.py); this file checks when one
    falls due, which a store still running (a compaction of dedupe segments makes it longer) would hide."""

    async def _housekeeping(self) -> None:
        await super()._housekeeping()
        await self.snapshots.stored()


def _snapshot_seq(journal: MemoryJournal) -> int:
    snapshot = journal.load_snapshot()
    return 0 if snapshot is None else snapshot[0]


def _journal_bytes(journal: MemoryJournal, after_seq: int, upto_seq: int) -> int:
    return sum(len(record) for seq, record in journal.read_records(after_seq) if seq <= upto_seq)


async def _first_snapshot(journal: MemoryJournal) -> tuple[int, bytes]:
    # Housekeeping follows the answer: give the writer a moment.
    for _ in range(500):
        snapshot = journal.load_snapshot()
        if snapshot is not None:
            return snapshot
        await asyncio.sleep(0.01)
    raise AssertionError("no snapshot after the demo's records")


async def _ingest_until_the_next_snapshot(sequencer: Sequencer, journal: MemoryJournal, after_seq: int) -> int:
    """Sends one batch at a time; returns the seq of the first snapshot newer than after_seq. A batch is applied only
    once a snapshot the previous one made due is stored, so each answer shows every earlier decision."""
    for number in range(BATCHES_MAX):
        await sequencer.run(_batch(f"b{number}", 20))
        if _snapshot_seq(journal) > after_seq:
            return _snapshot_seq(journal)
    raise AssertionError(f"no new snapshot in {BATCHES_MAX} batches")


def _run(journal: MemoryJournal, factor: float) -> tuple[int, int, int]:
    """(size of the first snapshot, its seq, the next snapshot's seq), snapshots due after every record by count."""

    async def main() -> tuple[int, int, int]:
        sequencer = _StoringInTurn(
            Billing(),
            journal,
            clock_ms=lambda: NOW_MS,
            snapshot_policy=SnapshotPolicy(every_records=1, every_events=NEVER, journal_factor=factor),
        )
        sequencer.start()
        for command in demo_commands(NOW_MS):
            await sequencer.run(command)
        await sequencer.run(_batch("settle", 1))
        first_seq, first_blob = await _first_snapshot(journal)
        next_seq = await _ingest_until_the_next_snapshot(sequencer, journal, first_seq)
        await sequencer.close()
        return len(first_blob), first_seq, next_seq

    return asyncio.run(main())


def test_a_snapshot_waits_until_the_journal_has_taken_the_last_snapshots_bytes() -> None:
    journal = MemoryJournal()
    first_bytes, first_seq, next_seq = _run(journal, 1.0)

    assert next_seq > first_seq + 1, "the bound must have held back at least one snapshot the count made due"
    assert _journal_bytes(journal, first_seq, next_seq) >= first_bytes
    # ... and no longer than that: the record that reached the bound was snapshotted.
    assert _journal_bytes(journal, first_seq, next_seq - 1) < first_bytes


def test_a_factor_of_two_waits_for_twice_the_last_snapshots_bytes() -> None:
    journal = MemoryJournal()
    first_bytes, first_seq, next_seq = _run(journal, 2.0)

    assert _journal_bytes(journal, first_seq, next_seq) >= 2 * first_bytes
    assert _journal_bytes(journal, first_seq, next_seq - 1) < 2 * first_bytes


def test_a_factor_of_zero_leaves_the_counts_alone_to_decide() -> None:
    journal = MemoryJournal()
    _, first_seq, next_seq = _run(journal, 0.0)

    assert next_seq == first_seq + 1  # every record is due by count
