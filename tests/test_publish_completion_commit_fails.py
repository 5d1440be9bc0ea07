"""A publish whose re-rating runs after it (engine/pending.py) is journaled first; its caller is answered once the
re-rating's completion record is durable. When the group commit holding that completion record fails, the writer
rebuilds the state from the journal, where the publish is durable and its re-rating pending again: its caller is not
told the commit's "nothing was written" (the publish was written), it is answered once the completion is durable
after all. If the server stops first, it is told the truth: the publish is durable, its re-rating completes after the
restart, and a retry is answered as the committed publish."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest
from tariff.v1 import usage_pb2

import server.sequencer_publish as sequencer_publish
from engine import commands as cmd
from engine.versions import PublishResult
from server.errors import ResourceExhausted, Unavailable
from server.journal import JournalFull, MemoryJournal
from server.records import JournalRecord, RerationDone, decode_record
from server.recovery import recover
from server.sequencer import Sequencer
from server.snapshotting import SnapshotPolicy
from server.usage_batches import UsageBatch
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate, unit
from tests.kernel_fixtures import usage_event

RECEIVED_MS = EPOCH_MS + 10 * HOUR_MS
CUSTOMERS = ("acme", "beta")


class _CompletionCommitsFail(MemoryJournal):
    """Refuses the commit of a group holding a re-rating's completion record (as a full disk would) `times` times,
    or, with `times` None, for as long as `refusing` is set."""

    def __init__(self, error: Exception, times: int | None = 1) -> None:
        super().__init__()
        self.error = error
        self.times = times
        self.refusing = True
        self.refusals = 0

    def commit(self, records: Sequence[tuple[int, bytes]]) -> None:
        still = self.refusing if self.times is None else self.refusals < self.times
        if still and any(decode_record(blob).rerated is not None for _, blob in records):
            self.refusals += 1
            raise self.error
        super().commit(records)

    def completions(self) -> list[RerationDone]:
        return [done for _, blob in self.read_records(0) if (done := decode_record(blob).rerated) is not None]

    def publishes(self, version: int = 2) -> list[int]:
        """The records publishing `version` (the draft: version 1 is the world's)."""
        return [
            seq
            for seq, blob in self.read_records(0)
            if isinstance(command := decode_record(blob).command, cmd.PublishVersion) and command.version == version
        ]


def _world(customers: Sequence[str] = CUSTOMERS) -> World:
    world = World()
    world.product("calls", value_key="n", dimensions=("model",))
    world.rate_card()
    world.version([rate("calls", unit("1"))])
    for customer_id in customers:
        world.customer(customer_id)
        world.contract(f"c-{customer_id}", customer_id=customer_id)
        world.grant(f"g-{customer_id}", "10", customer_id=customer_id)
    return world


async def _a_draft_to_publish(
    sequencer: Sequencer, world: World, customers: Sequence[str] = CUSTOMERS
) -> cmd.PublishVersion:
    """The world's commands, usage of `customers` in hours 0-2, and a draft priced 1.5: its publish from hour 1
    re-rates them (a re-rating pending after its record, completed by background slices)."""
    for command in world.journal:
        await sequencer.run(command)
    events = [
        usage_event(
            f"{customer_id}-{hour}",
            EPOCH_MS + hour * HOUR_MS,
            {"n": 2.0},
            customer_id=customer_id,
            dimensions={"model": "m1"},
        )
        for customer_id in customers
        for hour in range(3)
    ]
    await sequencer.run(UsageBatch(usage_pb2.UsageBatch(batch_id="b", events=events).SerializeToString(), 100))
    _, draft = await sequencer.run(
        cmd.CreateDraftVersion(RECEIVED_MS, ACTOR, "card", 0, {}, (), (rate("calls", unit("1.5")),), (), "")
    )
    return cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", draft.number, EPOCH_MS + HOUR_MS)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    "error", [JournalFull("no room (test)"), OSError("disk gone (test)")], ids=["journal-full", "commit-failed"]
)
def test_a_publish_whose_completion_commit_fails_is_answered_once_its_rerating_completes_after_the_rebuild(
    monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    monkeypatch.setattr(sequencer_publish, "SLICE_CUSTOMERS", 1)  # the completion comes in a group of its own
    journal = _CompletionCommitsFail(error)
    world = _world()

    async def main() -> tuple[int, object]:
        sequencer = Sequencer(recover(journal), journal, clock_ms=lambda: RECEIVED_MS)
        sequencer.start()
        publish = await _a_draft_to_publish(sequencer, world)
        answer = await sequencer.run(publish)
        await sequencer.close()
        return answer

    seq, result = asyncio.run(main())
    assert journal.refusals == 1, "the completion's first commit was refused: the state was rebuilt"
    assert journal.publishes() == [seq], "the publish was written once, before the refused commit"
    completions = journal.completions()
    assert [done.publish_seq for done in completions] == [seq], "its re-rating completed once, after the rebuild"
    customers, buckets, events, delta_picos, closed_buckets, closed_events, closed_picos = completions[0].done
    assert isinstance(result, PublishResult)
    assert (result.customers_rerated, result.buckets_rerated, result.events_rerated) == (customers, buckets, events)
    assert (customers, buckets, events) == (2, 4, 4)  # hours 1 and 2 of both customers
    assert result.rerated_amount_delta_picos == delta_picos == 4 * 10**12  # 0.5 more on 2 units, 4 buckets
    assert (result.closed_buckets_left_alone, result.closed_events_left_alone) == (closed_buckets, closed_events)
    assert result.closed_amount_left_alone_picos == closed_picos
    replayed = recover(journal)
    assert replayed.rerating is None and replayed.last_seq == journal.last_seq()


def test_a_publish_whose_completion_cannot_commit_before_the_close_is_told_it_is_durable_and_a_retry_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(sequencer_publish, "SLICE_CUSTOMERS", 1)
    journal = _CompletionCommitsFail(JournalFull("no room (test)"), times=None)
    world = _world()

    async def first_run() -> tuple[int, BaseException | None]:
        sequencer = Sequencer(recover(journal), journal, clock_ms=lambda: RECEIVED_MS)
        sequencer.start()
        publish = await _a_draft_to_publish(sequencer, world)
        answer = sequencer.submit(publish)
        # The writer completes the re-rating on its own; its commit is refused, the state rebuilt, and the
        # re-rating, pending again, completed again and refused again: the first refusal has been dealt with.
        while journal.refusals < 2:
            await asyncio.sleep(0)
        assert not answer.done(), "the publish is durable: its caller waits for the re-rating, not for the failure"
        await sequencer.close()  # the close's completion is refused too
        assert answer.done()
        return journal.publishes()[0], answer.exception()

    publish_seq, error = asyncio.run(first_run())
    assert journal.completions() == []
    assert isinstance(error, Unavailable)
    message = str(error)
    assert "nothing was written" not in message
    assert f"the publish is durable (journal record {publish_seq})" in message
    assert "a retry is safe" in message

    journal.refusing = False  # restarted with room (a larger map)

    async def retry() -> tuple[int, object]:
        sequencer = Sequencer(recover(journal), journal, clock_ms=lambda: RECEIVED_MS)
        sequencer.start()
        answer = await sequencer.run(
            cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS + HOUR_MS)  # the same call again
        )
        await sequencer.close()
        return answer

    _, result = asyncio.run(retry())
    assert isinstance(result, PublishResult), "answered as the committed publish"
    assert result.version.number == 2 and result.version.state.name == "PUBLISHED"
    assert (result.customers_rerated, result.buckets_rerated, result.events_rerated) == (0, 0, 0)  # a retry's
    assert journal.publishes() == [publish_seq], "the retry published nothing again"
    assert [done.publish_seq for done in journal.completions()] == [publish_seq]
    assert journal.completions()[0].done[:3] == (2, 4, 4), "the restart completed the re-rating"


class _HeldThenRefused(MemoryJournal):
    """Holds the publish's commit until `go` is set, then refuses, once, the commit of the next group holding a usage
    batch (as a full disk would)."""

    def __init__(self) -> None:
        super().__init__()
        self.go = threading.Event()
        self.refused: list[JournalRecord] = []

    def commit(self, records: Sequence[tuple[int, bytes]]) -> None:
        decoded = [decode_record(blob) for _, blob in records]
        if any(isinstance(record.command, cmd.PublishVersion) and record.deferred for record in decoded):
            self.go.wait()
        elif not self.refused and any(record.usage is not None for record in decoded) and self.publishes():
            self.refused = decoded
            raise JournalFull("no room (test)")
        super().commit(records)

    def publishes(self) -> list[int]:
        return [seq for seq, blob in self.read_records(0) if decode_record(blob).deferred]


def test_a_publish_whose_completion_was_applied_on_a_group_whose_commit_failed_is_answered_after_the_rebuild(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The commits are pipelined: the group holding the completion record is applied while the group before it
    commits, and when that commit fails the completion's group is dropped with it ("an earlier batch's commit"),
    the publish durable all the same."""
    monkeypatch.setattr(sequencer_publish, "SLICE_CUSTOMERS", 1)
    planned = ("acme", "beta", "delta", "echo")  # re-rated a customer a group: acme beside the publish's record
    journal = _HeldThenRefused()
    world = _world((*planned, "gamma"))  # gamma has no usage before: not in the plan

    async def main() -> tuple[tuple[int, object], BaseException | None]:
        billing = recover(journal)
        sequencer = Sequencer(
            billing,
            journal,
            clock_ms=lambda: RECEIVED_MS,
            snapshot_policy=SnapshotPolicy(every_records=10**9, every_events=10**9),
        )
        sequencer.start()
        publish = await _a_draft_to_publish(sequencer, world, planned)
        answer = sequencer.submit(publish)
        # The publish's record commits (held here) while the next group re-rates beta: the batch after comes in
        # a group of its own, with delta's slice, and echo's slice and the completion in the group after it.
        while billing.rerating is None or billing.rerating.cursor < 2:
            await asyncio.sleep(0)
        event = usage_event(
            "gamma-9", EPOCH_MS + 9 * HOUR_MS, {"n": 1.0}, customer_id="gamma", dimensions={"model": "m1"}
        )
        usage = sequencer.submit(
            UsageBatch(usage_pb2.UsageBatch(batch_id="g", events=[event]).SerializeToString(), 100)
        )
        journal.go.set()
        refused = await asyncio.gather(usage, return_exceptions=True)
        published = await answer
        await sequencer.close()
        error = refused[0]
        return published, error if isinstance(error, BaseException) else None

    (seq, result), refused = asyncio.run(main())
    assert isinstance(refused, ResourceExhausted), "the batch's commit was refused: nothing of it was written"
    assert [record.usage is not None for record in journal.refused] == [True], "the batch's group: it alone"
    assert journal.publishes() == [seq]
    completions = [done for _, blob in journal.read_records(0) if (done := decode_record(blob).rerated) is not None]
    assert [done.publish_seq for done in completions] == [seq]
    assert isinstance(result, PublishResult)
    assert (result.customers_rerated, result.buckets_rerated, result.events_rerated) == completions[0].done[:3]
    assert completions[0].done[:3] == (4, 8, 8)
