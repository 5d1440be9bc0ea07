"""A snapshot's file is written while the writer goes on: once both halves are encoded they are the state at the
snapshot's seq, so batches are rated, committed and acknowledged while the file is written (at 10,000,000 ids the
store took as long as the encode). One store at a time, in seq order; close() waits for the one in flight and
stores the last state; a store that fails for another reason than a full disk stops the writer (at its next
housekeeping, after the work it has in hand is committed)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from server.demo import demo_commands
from server.errors import Unavailable
from server.journal import DedupeSegmentSave, MemoryJournal, SnapshotBlob
from server.recovery import recover
from server.sequencer import Sequencer
from server.snapshotting import SnapshotPolicy
from tests.test_sequencer import NOW_MS, batch, event

ACK_TIMEOUT_S = 10.0


class HeldJournal(MemoryJournal):
    """Its snapshot stores wait for `release` (set by default), and each records its seq once stored."""

    def __init__(self) -> None:
        super().__init__()
        self.release = threading.Event()
        self.release.set()
        self.entered: list[int] = []
        self.stored: list[int] = []
        self.refusal: BaseException | None = None

    def save_snapshot(self, seq: int, blob: SnapshotBlob, segment: DedupeSegmentSave | None = None) -> None:
        self.entered.append(seq)
        self.release.wait()
        if self.refusal is not None:
            raise self.refusal
        super().save_snapshot(seq, blob, segment)
        self.stored.append(seq)


async def _started(journal: HeldJournal) -> Sequencer:
    """A writer on the demo catalogue that snapshots after every commit from now on (none during the demo)."""
    seldom = SnapshotPolicy(every_records=10**9, every_events=10**9)
    sequencer = Sequencer(recover(journal), journal, clock_ms=lambda: NOW_MS, snapshot_policy=seldom)
    sequencer.start()
    for command in demo_commands(NOW_MS):
        await sequencer.run(command)
    sequencer.snapshots.policy = SnapshotPolicy(every_records=1, every_events=1, journal_factor=0)
    return sequencer


async def _entered(journal: HeldJournal, count: int) -> None:
    while len(journal.entered) < count:
        await asyncio.sleep(0.001)


def test_batches_are_acknowledged_while_a_snapshot_is_stored_and_close_stores_the_last_state() -> None:
    journal = HeldJournal()

    async def main() -> None:
        sequencer = await _started(journal)
        journal.release.clear()
        first_seq, _ = await sequencer.run(batch(event("held-1")))
        await _entered(journal, 1)
        assert journal.entered == [first_seq] and journal.stored == []
        # The store of first_seq waits; the writer does not: these are rated, committed and answered meanwhile.
        answered = [
            await asyncio.wait_for(sequencer.run(batch(event(f"meanwhile-{k}"))), ACK_TIMEOUT_S) for k in range(3)
        ]
        assert journal.entered == [first_seq] and journal.stored == []  # one store at a time, none behind it
        asyncio.get_running_loop().call_later(0.05, journal.release.set)
        await sequencer.close()
        last_seq = answered[-1][0]
        assert journal.stored[0] == first_seq and journal.stored[-1] == last_seq  # close() waited, then stored
        stored = journal.load_snapshot()
        assert stored is not None and stored[0] == last_seq == sequencer.billing.last_seq
        assert recover(journal).encode_snapshot() == sequencer.billing.encode_snapshot()

    asyncio.run(main())


def test_a_store_that_fails_for_another_reason_than_a_full_disk_stops_the_writer() -> None:
    journal = HeldJournal()

    async def main() -> None:
        sequencer = await _started(journal)
        journal.refusal = RuntimeError("the snapshot's file cannot be written")
        await sequencer.run(batch(event("before-the-failure")))  # its commit starts the store that fails

        async def store_failed() -> None:
            # Housekeeping follows the answer, so the store may not have begun yet: wait for its failure itself.
            while sequencer.snapshots._store_failure is None:
                await asyncio.sleep(0.001)

        await asyncio.wait_for(store_failed(), ACK_TIMEOUT_S)
        assert not sequencer.stopped.is_set()  # the writer hears of it at its next housekeeping: after this batch
        await asyncio.wait_for(sequencer.run(batch(event("committed-then-stopped"))), ACK_TIMEOUT_S)
        await asyncio.wait_for(sequencer.stopped.wait(), ACK_TIMEOUT_S)
        assert isinstance(sequencer.failure, RuntimeError)
        with pytest.raises(Unavailable):
            await sequencer.run(batch(event("after-the-failure")))
        with pytest.raises(RuntimeError):  # the writer's task ended with it
            await sequencer.close()

    asyncio.run(main())
