"""The one writer, over the in-memory journal: group commit, acknowledgement only after commit, rollback of
what a failed commit had applied, dedupe across a group and across the window, and recovery by replay (usage
batches go in as the bytes a client sends)."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable, Sequence

import msgspec
import pytest
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing, Ingested, RatingChanged
from engine.errors import AlreadyExists
from engine.tables import FUTURE_SKEW_MS_DEFAULT
from server.demo import demo_commands, load_demo
from server.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from server.journal import JournalFull, MemoryJournal
from server.records import JournalRecord, decode_record, encode_record
from server.recovery import _replay_record, recover
from server.sequencer import Sequencer
from server.snapshotting import SnapshotPolicy
from server.usage_batches import UsageBatch

NOW_MS = 1_795_000_000_000  # 2026-11-18T... UTC, inside the demo contract's first month
DAY_MS = 24 * 3600 * 1000


def event(transaction_id: str, model: str = "gpt-4") -> usage_pb2.UsageEvent:
    # A simple summary on gpt-4 costs 1 x 2.5 = 2.5 credits in the demo rate card; on gpt-4o-mini 1 x 0.5.
    dimensions = {"action": "summary", "data_source": "crm", "model": model, "complexity": "simple"}
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id="acme",
        event_type="ai_action",
        timestamp_ms=NOW_MS,
        dimensions=dimensions,
    )


def batch(*events: usage_pb2.UsageEvent) -> UsageBatch:
    return UsageBatch(usage_pb2.UsageBatch(batch_id="b", events=events).SerializeToString(), 10_000)


def run_with(
    journal: MemoryJournal,
    body: Callable[[Sequencer], Awaitable[None]],
    clock: Callable[[], int] = lambda: NOW_MS,
    dedupe_window_ms: int | None = None,
) -> Billing:
    async def main() -> Billing:
        billing = recover(journal) if dedupe_window_ms is None else recover(journal, dedupe_window_ms=dedupe_window_ms)
        sequencer = Sequencer(billing, journal, clock_ms=clock)
        sequencer.start()
        if billing.last_seq == 0:
            for command in demo_commands(NOW_MS):
                await sequencer.run(command)
        await body(sequencer)
        await sequencer.close()
        return billing

    return asyncio.run(main())


def test_the_demo_is_loaded_in_one_commit_so_a_kill_leaves_all_of_it_or_none() -> None:
    """`tariff serve --demo` seeds only an empty journal: loaded a command a commit, a start killed between two
    commits left a part of the demo (a rate card with no customer) that no later start completed."""
    journal = MemoryJournal()

    async def main() -> tuple[int, int]:
        sequencer = Sequencer(recover(journal), journal, clock_ms=lambda: NOW_MS)
        sequencer.start()
        await load_demo(sequencer, NOW_MS)
        commits = sequencer.commits
        await sequencer.close()
        return commits, sequencer.billing.last_seq

    commits, last_seq = asyncio.run(main())
    assert (commits, last_seq) == (1, len(demo_commands(NOW_MS)))
    assert remaining(recover(journal)) == 50_000 * 10**12


def remaining(billing: Billing) -> int:
    return billing.balance("acme", NOW_MS).remaining


def test_concurrent_submissions_share_one_commit_and_get_consecutive_seqs() -> None:
    journal = MemoryJournal()
    seqs: list[int] = []

    async def body(sequencer: Sequencer) -> None:
        commits_before = sequencer.commits
        futures = [sequencer.submit(batch(event(f"t{i}"))) for i in range(10)]
        for seq, _ in await asyncio.gather(*futures):
            seqs.append(seq)
        assert sequencer.commits == commits_before + 1

    billing = run_with(journal, body)
    assert seqs == list(range(seqs[0], seqs[0] + 10))
    assert journal.last_seq() == seqs[-1]
    # 10 events x 2.5 credits = 25 credits drawn from 50,000.
    assert billing.balance("acme", NOW_MS).remaining == (50_000 - 25) * 10**12


def test_a_full_journal_answers_resource_exhausted_and_leaves_no_trace_in_state() -> None:
    journal = MemoryJournal()
    state_before: list[bytes] = []

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("small")))
        state_before.append(sequencer.billing.encode_snapshot())
        journal._capacity_bytes = journal.stats().used_bytes + 200  # room for a small record, not a large one
        huge = batch(*(event(f"h{i}") for i in range(50)))
        with pytest.raises(ResourceExhausted):
            await sequencer.run(huge)
        assert sequencer.billing.encode_snapshot() == state_before[0]
        journal._capacity_bytes = None
        _, result = await sequencer.run(huge)
        assert isinstance(result, Ingested) and result.accepted == 50

    billing = run_with(journal, body)
    # 1 + 50 events x 2.5 credits = 127.5 credits.
    assert billing.balance("acme", NOW_MS).remaining == 50_000 * 10**12 - 1275 * 10**11


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
    results: list[Ingested] = []

    async def body(sequencer: Sequencer) -> None:
        futures = [
            sequencer.submit(batch(event("same"))),
            sequencer.submit(batch(event("same"))),
            sequencer.submit(batch(event("same", model="gpt-4o-mini"))),
        ]
        for _, result in await asyncio.gather(*futures):
            assert isinstance(result, Ingested)
            results.append(result)

    billing = run_with(journal, body)
    assert [(r.accepted, r.duplicates, len(r.rejected)) for r in results] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert results[2].rejected == ["DUPLICATE_CONFLICT"]
    assert billing.balance("acme", NOW_MS).remaining == (50_000 * 10**12) - 25 * 10**11


def test_an_id_accepted_longer_ago_than_the_window_is_accepted_again() -> None:
    journal = MemoryJournal()
    clock = [NOW_MS]

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("old")))
        clock[0] = NOW_MS + DAY_MS - 1
        _, inside = await sequencer.run(batch(event("old")))
        clock[0] = NOW_MS + DAY_MS + 1
        _, outside = await sequencer.run(batch(event("old")))
        assert isinstance(inside, Ingested) and isinstance(outside, Ingested)
        assert (inside.accepted, inside.duplicates) == (0, 1)
        assert (outside.accepted, outside.duplicates) == (1, 0)

    run_with(journal, body, clock=lambda: clock[0], dedupe_window_ms=DAY_MS)


def test_the_default_dedupe_window_ends_35_days_after_acceptance_to_the_millisecond() -> None:
    """usage.proto UsageEvent.transaction_id: unique "across the dedupe window (35 days from the receive time of
    the batch that accepted it, fixed: received 35 days later or more, it is accepted as new)". No wire test can
    move the server's clock 35 days, so the boundary is read here, under the default window: a resend received
    35 days less 1 ms after its acceptance is a duplicate, one received exactly 35 days after, new."""
    journal = MemoryJournal()
    clock = [NOW_MS]
    window_ms = 35 * DAY_MS

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("kept")))
        clock[0] = NOW_MS + window_ms - 1
        _, inside = await sequencer.run(batch(event("kept")))
        clock[0] = NOW_MS + window_ms
        _, at_the_end = await sequencer.run(batch(event("kept")))
        assert isinstance(inside, Ingested) and isinstance(at_the_end, Ingested)
        assert (inside.accepted, inside.duplicates) == (0, 1)
        assert (at_the_end.accepted, at_the_end.duplicates) == (1, 0)

    run_with(journal, body, clock=lambda: clock[0])


def test_an_event_exactly_the_future_skew_ahead_is_taken_and_one_millisecond_more_is_not() -> None:
    """usage.proto UsageEvent.timestamp_ms: "at most 5 minutes (--future-skew-s) past the server's clock when the
    batch is rated, that instant included (later is TIMESTAMP_OUT_OF_RANGE)". The wire cannot pin the server's
    clock to the millisecond; the sequencer's clock can."""
    journal = MemoryJournal()

    async def body(sequencer: Sequencer) -> None:
        at_the_limit, past_it = event("at"), event("past")
        at_the_limit.timestamp_ms = NOW_MS + 300_000
        past_it.timestamp_ms = NOW_MS + 300_001
        _, ingested = await sequencer.run(batch(at_the_limit, past_it))
        assert isinstance(ingested, Ingested)
        ack = usage_pb2.IngestAck.FromString(ingested.ack)
        assert (ack.accepted, [(r.index, r.reason) for r in ack.rejected]) == (
            1,
            [(1, usage_pb2.TIMESTAMP_OUT_OF_RANGE)],
        )

    run_with(journal, body)


def test_replaying_the_journal_rebuilds_the_identical_state() -> None:
    journal = MemoryJournal()

    async def body(sequencer: Sequencer) -> None:
        for k in range(5):
            await asyncio.gather(*(sequencer.submit(batch(event(f"r{k}-{i}"), event(f"r{k}-{i}"))) for i in range(4)))

    live = run_with(journal, body)
    replayed = Billing()
    for seq, blob in journal.read_records(0):
        _replay_record(replayed, seq, decode_record(blob), FUTURE_SKEW_MS_DEFAULT)
    assert replayed.encode_snapshot() == live.encode_snapshot()
    # close() wrote a snapshot at the last seq: recovery through it gives the same state again.
    snapshot = journal.load_snapshot()
    assert snapshot is not None and snapshot[0] == live.last_seq
    assert recover(journal).encode_snapshot() == live.encode_snapshot()
    assert remaining(live) == remaining(replayed)


def test_a_journaled_digest_the_kernel_does_not_reproduce_stops_recovery_naming_the_record() -> None:
    journal = MemoryJournal()

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("r1")))

    run_with(journal, body)
    seq = journal.last_seq()
    record = decode_record(next(iter(journal.read_records(seq - 1)))[1])
    assert record.usage is not None
    tampered = JournalRecord(usage=msgspec.structs.replace(record.usage, digest=bytes(16)))
    doctored = MemoryJournal()
    for at, blob in journal.read_records(0):
        doctored.commit([(at, encode_record(tampered) if at == seq else blob)])
    with pytest.raises(RatingChanged, match=f"journal record {seq}: rating changed between releases"):
        recover(doctored)


def test_a_batch_is_journaled_with_the_servers_top_up_rule_and_an_earlier_releases_record_reads_without_it() -> None:
    # The writer rates every batch with top_ups_in_billed_period (engine/billing.py) and journals it, so recovery
    # rates the batch by the same rule; a usage record of an earlier release (six fields) reads with it False.
    journal = MemoryJournal()

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("r1")))

    run_with(journal, body)
    seq = journal.last_seq()
    record = decode_record(next(iter(journal.read_records(seq - 1)))[1])
    assert record.usage is not None and record.usage.top_ups_in_billed_period and record.usage.duplicates_before_skew
    assert record.usage.refunds_netted
    earlier = decode_record(msgspec.msgpack.encode([None, None, [b"batch", 1, bytes(16), 1, 0, 0]])).usage
    assert earlier is not None and (earlier.batch, earlier.top_ups_in_billed_period) == (b"batch", False)
    assert not earlier.duplicates_before_skew and not earlier.refunds_netted


def test_a_resend_past_a_smaller_skew_is_a_duplicate_by_the_servers_rule_and_refused_by_earlier_records() -> None:
    # An event accepted 5 minutes ahead under a 10-minute skew, resent under a skew of 0 (a start with a smaller
    # --future-skew-s): the server rates batches with duplicates_before_skew (a duplicate: it was counted), which
    # its records journal; records of earlier releases replay without it (TIMESTAMP_OUT_OF_RANGE), as they did.
    billing = Billing()
    for seq, command in enumerate(demo_commands(NOW_MS), 1):
        billing.apply(command, seq)
    ahead = event("ahead")
    ahead.timestamp_ms = NOW_MS + 300_000
    data = usage_pb2.UsageBatch(events=[ahead]).SerializeToString()
    billing.use_future_skew(600_000)
    assert billing.ingest(data, NOW_MS, duplicates_before_skew=True).accepted == 1
    billing.use_future_skew(0)
    earlier = billing.ingest(data, NOW_MS + 1_000)
    assert (earlier.duplicates, list(earlier.rejected)) == (0, ["TIMESTAMP_OUT_OF_RANGE"])
    servers = billing.ingest(data, NOW_MS + 1_000, duplicates_before_skew=True)
    assert (servers.duplicates, list(servers.rejected)) == (1, [])
    conflict = event("ahead", model="gpt-4o-mini")
    conflict.timestamp_ms = NOW_MS + 300_000
    changed = billing.ingest(
        usage_pb2.UsageBatch(events=[conflict]).SerializeToString(), NOW_MS + 1_000, duplicates_before_skew=True
    )
    assert list(changed.rejected) == ["TIMESTAMP_OUT_OF_RANGE"]  # not a resend: the skew holds, first as before


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

    billing = run_with(journal, body)
    assert all(isinstance(r, Ingested) and (r.accepted, r.duplicates, r.rejected) == (0, 0, []) for r in results)
    assert len(results) == 2
    assert billing.last_seq == journal.last_seq()


# Pipelining: the next group is applied while the previous one's commit is in flight -------------------------


class GatedJournal(MemoryJournal):
    """A MemoryJournal whose commits wait for the test to open a gate, and can be told to fail."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()
        self.fail_next: Exception | None = None

    def commit(self, records: Sequence[tuple[int, bytes]]) -> None:
        self.entered.set()
        assert self.gate.wait(timeout=10), "the test never opened the gate"
        if self.fail_next is not None:
            failure, self.fail_next = self.fail_next, None
            raise failure
        super().commit(records)


async def until_commit_in_flight(journal: GatedJournal) -> None:
    while not journal.entered.is_set():
        await asyncio.sleep(0.001)


def test_an_id_in_the_commit_still_in_flight_is_a_duplicate_of_the_next_group() -> None:
    journal = GatedJournal()
    results: list[Ingested] = []

    async def body(sequencer: Sequencer) -> None:
        journal.gate.clear()
        journal.entered.clear()
        first = sequencer.submit(batch(event("p1")))
        await until_commit_in_flight(journal)  # group 1 is committing
        resend = sequencer.submit(batch(event("p1")))
        changed = sequencer.submit(batch(event("p1", model="gpt-4o-mini")))
        await asyncio.sleep(0.05)  # the writer prepares the next group meanwhile
        assert not first.done(), "answered before its commit"
        journal.gate.set()
        for future in (first, resend, changed):
            _, result = await future
            assert isinstance(result, Ingested)
            results.append(result)

    billing = run_with(journal, body)
    assert [(r.accepted, r.duplicates, len(r.rejected)) for r in results] == [(1, 0, 0), (0, 1, 0), (0, 0, 1)]
    assert billing.balance("acme", NOW_MS).remaining == 50_000 * 10**12 - 25 * 10**11  # p1 drawn once: 2.5 credits


def test_a_failed_commit_also_fails_the_group_applied_after_it_and_leaves_no_trace() -> None:
    journal = GatedJournal()
    committed_state: list[bytes] = []

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("ok")))
        committed_state.append(sequencer.billing.encode_snapshot())
        journal.gate.clear()
        journal.entered.clear()
        journal.fail_next = OSError("disk went away")
        doomed = sequencer.submit(batch(event("d1")))
        await until_commit_in_flight(journal)
        riding = sequencer.submit(batch(event("d2")))  # applied on top of d1 while d1 commits
        await asyncio.sleep(0.05)
        journal.gate.set()
        with pytest.raises(Unavailable):
            await doomed
        with pytest.raises(Unavailable):
            await riding
        assert sequencer.billing.encode_snapshot() == committed_state[0]
        _, result = await sequencer.run(batch(event("d1"), event("d2")))  # the client's resend
        assert isinstance(result, Ingested) and result.accepted == 2

    billing = run_with(journal, body)
    # ok, d1, d2: three simple summaries on gpt-4, 2.5 credits each.
    assert billing.balance("acme", NOW_MS).remaining == 50_000 * 10**12 - 75 * 10**11
    assert recover(journal).encode_snapshot() == billing.encode_snapshot()


# Dedupe lives in the kernel's state: rebuilt by replay after a crash ---------------------------------------


def test_ids_accepted_before_a_crash_are_duplicates_after_recovery_by_replay() -> None:
    journal = MemoryJournal()

    async def crash_after_ingest() -> None:
        sequencer = Sequencer(recover(journal), journal, clock_ms=lambda: NOW_MS)
        sequencer.start()
        for command in demo_commands(NOW_MS):
            await sequencer.run(command)
        await sequencer.run(batch(event("x1"), event("x2")))
        # No close(): as after kill -9, no snapshot is written; recovery replays every record.
        assert sequencer._task is not None
        sequencer._task.cancel()

    asyncio.run(crash_after_ingest())
    assert journal.load_snapshot() is None
    results: list[Ingested] = []

    async def resend(sequencer: Sequencer) -> None:
        _, result = await sequencer.run(batch(event("x1"), event("x2", model="gpt-4o-mini")))
        assert isinstance(result, Ingested)
        results.append(result)

    billing = run_with(journal, resend)
    assert [(r.accepted, r.duplicates, r.rejected) for r in results] == [(0, 1, ["DUPLICATE_CONFLICT"])]
    assert billing.balance("acme", NOW_MS).remaining == 50_000 * 10**12 - 5 * 10**12  # x1 and x2 once: 2 x 2.5


def test_a_snapshot_is_taken_after_enough_events_even_when_few_records() -> None:
    journal = MemoryJournal()

    async def main() -> None:
        sequencer = Sequencer(
            Billing(), journal, clock_ms=lambda: NOW_MS, snapshot_policy=SnapshotPolicy(every_events=5)
        )
        sequencer.start()
        for command in demo_commands(NOW_MS):
            await sequencer.run(command)
        await sequencer.run(batch(*(event(f"s{i}") for i in range(3))))
        assert journal.load_snapshot() is None  # 7 admin records and 3 events: neither budget spent
        seq, _ = await sequencer.run(batch(*(event(f"s{i}") for i in range(3, 6))))
        # The snapshot is housekeeping after the answer: give the writer a moment.
        for _ in range(200):
            if journal.load_snapshot() is not None:
                break
            await asyncio.sleep(0.01)
        snapshot = journal.load_snapshot()
        assert snapshot is not None and snapshot[0] == seq
        await sequencer.close()

    asyncio.run(main())


def test_a_command_whose_deadline_passed_while_queued_is_not_applied() -> None:
    journal = MemoryJournal()
    state: list[bytes] = []

    async def body(sequencer: Sequencer) -> None:
        state.append(sequencer.billing.encode_snapshot())
        with pytest.raises(DeadlineExceeded):
            await sequencer.run(batch(event("late")), deadline_monotonic=time.monotonic() - 0.001)
        assert sequencer.billing.encode_snapshot() == state[0]
        _, result = await sequencer.run(batch(event("late")), deadline_monotonic=time.monotonic() + 30)
        assert isinstance(result, Ingested) and result.accepted == 1  # not a duplicate: never applied before

    run_with(journal, body)


def test_a_full_journal_answers_resource_exhausted_to_the_group_applied_after_it_too() -> None:
    journal = GatedJournal()

    async def body(sequencer: Sequencer) -> None:
        journal.gate.clear()
        journal.entered.clear()
        journal.fail_next = JournalFull("no room")
        doomed = sequencer.submit(batch(event("f1")))
        await until_commit_in_flight(journal)
        riding = sequencer.submit(batch(event("f2")))
        await asyncio.sleep(0.05)
        journal.gate.set()
        for future in (doomed, riding):
            with pytest.raises(ResourceExhausted):
                await future

    billing = run_with(journal, body)
    assert billing.balance("acme", NOW_MS).remaining == 50_000 * 10**12  # neither batch left a trace


def test_batches_are_rated_off_the_event_loop_which_serves_reads_meanwhile() -> None:
    journal = MemoryJournal()
    rated_on: list[int] = []
    rating, read_while_rating = threading.Event(), threading.Event()
    loop_thread: list[int] = []

    async def body(sequencer: Sequencer) -> None:
        loop_thread.append(threading.get_ident())
        billing = sequencer.billing
        ingest = billing.ingest

        def held_ingest(
            data: bytes,
            received_ms: int,
            *,
            events_max: int = 2**31,
            allowed: list[str] | None = None,
            top_ups_in_billed_period: bool = False,
            returned_expired_credit_breaks: bool = False,
            reservation_ids_bounded: bool = False,
            returned_rolled_credit_breaks: bool = False,
            duplicates_before_skew: bool = False,
            batch_ids_bounded: bool = False,
            refunds_netted: bool = False,
        ) -> Ingested:
            rated_on.append(threading.get_ident())
            rating.set()
            # Rating on the loop would never see the read below: the wait would run out and the test fail.
            assert read_while_rating.wait(timeout=30), "the event loop was blocked while a batch was rated"
            return ingest(
                data,
                received_ms,
                events_max=events_max,
                allowed=allowed,
                top_ups_in_billed_period=top_ups_in_billed_period,
                returned_expired_credit_breaks=returned_expired_credit_breaks,
                reservation_ids_bounded=reservation_ids_bounded,
                returned_rolled_credit_breaks=returned_rolled_credit_breaks,
                duplicates_before_skew=duplicates_before_skew,
                batch_ids_bounded=batch_ids_bounded,
                refunds_netted=refunds_netted,
            )

        billing.ingest = held_ingest  # type: ignore[method-assign,assignment]
        answer = sequencer.submit(batch(event("off-loop")))
        while not rating.is_set():  # the writer hands the batch over
            await asyncio.sleep(0.001)
        assert billing.balance("acme", NOW_MS).remaining == 50_000 * 10**12  # not yet drawn
        read_while_rating.set()
        _, result = await answer
        assert isinstance(result, Ingested) and result.accepted == 1

    billing = run_with(journal, body)
    assert rated_on and all(ident != loop_thread[0] for ident in rated_on)
    assert billing.balance("acme", NOW_MS).remaining == 50_000 * 10**12 - 25 * 10**11


def test_commands_interleaved_with_batches_in_one_group_keep_submission_order_in_the_journal() -> None:
    journal = MemoryJournal()
    seqs: list[int] = []

    async def body(sequencer: Sequencer) -> None:
        submitted: list[UsageBatch | cmd.AdminCommand] = [
            batch(event("i1")),
            batch(event("i2"), event("i3")),
            cmd.CreateCustomer(NOW_MS, "test", "c1", "one", {}),
            batch(event("i4")),
            cmd.CreateCustomer(NOW_MS, "test", "c2", "two", {}),
            batch(event("i5")),
        ]
        commits_before = sequencer.commits
        futures = [sequencer.submit(command) for command in submitted]
        seqs.extend(seq for seq, _ in await asyncio.gather(*futures))
        assert sequencer.commits == commits_before + 1  # one group

    billing = run_with(journal, body)
    assert seqs == list(range(seqs[0], seqs[0] + 6))
    kinds = []
    for _, blob in journal.read_records(seqs[0] - 1):
        record = decode_record(blob)
        kinds.append(record.command.id if isinstance(record.command, cmd.CreateCustomer) else "usage")
    assert kinds == ["usage", "usage", "c1", "usage", "c2", "usage"]
    assert billing.balance("acme", NOW_MS).remaining == 50_000 * 10**12 - 5 * 25 * 10**11
    assert recover(journal).encode_snapshot() == billing.encode_snapshot()
