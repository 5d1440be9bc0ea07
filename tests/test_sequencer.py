"""The one writer, over the in-memory journal: group commit, acknowledgement only after commit, rollback of
what a failed commit had applied, dedupe across a group and across the window, and recovery by replay."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest

from engine import commands as cmd
from engine.errors import AlreadyExists
from engine.state import Engine, IngestResult
from server.demo import demo_commands
from server.errors import ResourceExhausted
from server.journal import MemoryJournal
from server.sequencer import Sequencer, decode_record, recover

NOW_MS = 1_795_000_000_000  # 2026-11-18T... UTC, inside the demo contract's first month
DAY_MS = 24 * 3600 * 1000


def event(transaction_id: str, model: str = "gpt-4") -> cmd.UsageEvent:
    # A simple summary on gpt-4 costs 1 x 2.5 = 2.5 credits in the demo rate card; on gpt-4o-mini 1 x 0.5.
    dimensions = {"action": "summary", "data_source": "crm", "model": model, "complexity": "simple"}
    return cmd.UsageEvent(transaction_id, "acme", "ai_action", NOW_MS, dimensions, {})


def batch(*events: cmd.UsageEvent) -> cmd.IngestBatch:
    return cmd.IngestBatch("b", list(events), 0, {})


def run_with(
    journal: MemoryJournal, body: Callable[[Sequencer], Awaitable[None]], clock: Callable[[], int] = lambda: NOW_MS
) -> Engine:
    async def main() -> Engine:
        engine = recover(journal)
        sequencer = Sequencer(engine, journal, clock_ms=clock)
        sequencer.start()
        if engine.state.last_seq == 0:
            for command in demo_commands(NOW_MS):
                await sequencer.run(command)
        await body(sequencer)
        await sequencer.close()
        return engine

    return asyncio.run(main())


def remaining(engine: Engine) -> str:
    return str(engine.balance("acme", NOW_MS).remaining)


def test_concurrent_submissions_share_one_commit_and_get_consecutive_seqs() -> None:
    journal = MemoryJournal()
    seqs: list[int] = []

    async def body(sequencer: Sequencer) -> None:
        commits_before = sequencer.commits
        futures = [sequencer.submit(batch(event(f"t{i}"))) for i in range(10)]
        for seq, _ in await asyncio.gather(*futures):
            seqs.append(seq)
        assert sequencer.commits == commits_before + 1

    engine = run_with(journal, body)
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    assert journal.last_seq() == seqs[-1]
    # 10 events x 2.5 credits = 25 credits drawn from 50,000.
    assert engine.balance("acme", NOW_MS).remaining == (50_000 - 25) * 10**12


def test_a_full_journal_answers_resource_exhausted_and_leaves_no_trace_in_state() -> None:
    journal = MemoryJournal()
    state_before: list[bytes] = []

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("small")))
        state_before.append(sequencer.engine.encode_snapshot())
        journal._capacity_bytes = journal.stats().used_bytes + 200  # room for a small record, not a large one
        huge = batch(*(event(f"h{i}") for i in range(50)))
        with pytest.raises(ResourceExhausted):
            await sequencer.run(huge)
        assert sequencer.engine.encode_snapshot() == state_before[0]
        journal._capacity_bytes = None
        _, result = await sequencer.run(huge)
        assert isinstance(result, IngestResult) and result.accepted == 50

    engine = run_with(journal, body)
    # 1 + 50 events x 2.5 credits = 127.5 credits.
    assert engine.balance("acme", NOW_MS).remaining == 50_000 * 10**12 - 1275 * 10**11


def test_a_refused_command_consumes_no_seq_and_does_not_disturb_its_group() -> None:
    journal = MemoryJournal()

    async def body(sequencer: Sequencer) -> None:
        duplicate = cmd.CreateCustomer(NOW_MS, "test", "acme", "again", {})
        good = sequencer.submit(batch(event("g1")))
        bad = sequencer.submit(duplicate)
        after = sequencer.submit(batch(event("g2")))
        (seq_good, _), (seq_after, _) = await good, await after
        with pytest.raises(AlreadyExists):
            await bad
        assert seq_after == seq_good + 1

    run_with(journal, body)


def test_a_resend_in_the_same_group_is_a_duplicate_and_a_changed_one_a_conflict() -> None:
    journal = MemoryJournal()
    results: list[IngestResult] = []

    async def body(sequencer: Sequencer) -> None:
        futures = [
            sequencer.submit(batch(event("same"))),
            sequencer.submit(batch(event("same"))),
            sequencer.submit(batch(event("same", model="gpt-4o-mini"))),
        ]
        for _, result in await asyncio.gather(*futures):
            assert isinstance(result, IngestResult)
            results.append(result)

    engine = run_with(journal, body)
    assert [(r.accepted, r.duplicates, len(r.rejections)) for r in results] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert results[2].rejections[0].reason == "DUPLICATE_CONFLICT"
    assert engine.balance("acme", NOW_MS).remaining == (50_000 * 10**12) - 25 * 10**11


def test_an_id_accepted_longer_ago_than_the_window_is_accepted_again() -> None:
    journal = MemoryJournal()
    clock = [NOW_MS]

    async def body(sequencer: Sequencer) -> None:
        sequencer.dedupe_window_ms = DAY_MS
        await sequencer.run(batch(event("old")))
        clock[0] = NOW_MS + DAY_MS - 1
        _, inside = await sequencer.run(batch(event("old")))
        clock[0] = NOW_MS + DAY_MS + 1
        _, outside = await sequencer.run(batch(event("old")))
        assert isinstance(inside, IngestResult) and isinstance(outside, IngestResult)
        assert (inside.accepted, inside.duplicates) == (0, 1)
        assert (outside.accepted, outside.duplicates) == (1, 0)

    run_with(journal, body, clock=lambda: clock[0])


def test_replaying_the_journal_rebuilds_the_identical_state() -> None:
    journal = MemoryJournal()

    async def body(sequencer: Sequencer) -> None:
        for k in range(5):
            await asyncio.gather(*(sequencer.submit(batch(event(f"r{k}-{i}"), event(f"r{k}-{i}"))) for i in range(4)))

    live = run_with(journal, body)
    replayed = Engine()
    for seq, blob in journal.read_records(0):
        replayed.apply(decode_record(blob).command, seq)
    assert replayed.encode_snapshot() == live.encode_snapshot()
    # close() wrote a snapshot at the last seq: recovery through it gives the same state again.
    snapshot = journal.load_snapshot()
    assert snapshot is not None and snapshot[0] == live.state.last_seq
    assert recover(journal).encode_snapshot() == live.encode_snapshot()
    assert remaining(live) == remaining(replayed)


def test_an_empty_batch_is_answered_with_an_empty_result_even_while_closing() -> None:
    journal = MemoryJournal()
    results: list[object] = []

    async def body(sequencer: Sequencer) -> None:
        _, result = await sequencer.run(batch())
        results.append(result)
        # Queued just before close(): still answered as a batch, not mistaken for close()'s own marker.
        pending = sequencer.submit(batch())
        await sequencer.close()
        _, result = await pending
        results.append(result)

    engine = run_with(journal, body)
    assert all(isinstance(r, IngestResult) and (r.accepted, r.duplicates, r.rejections) == (0, 0, []) for r in results)
    assert len(results) == 2
    assert engine.state.last_seq == journal.last_seq()
