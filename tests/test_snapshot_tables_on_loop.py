"""Tables compile on the event loop only. A read (GetBalance, Authorize) finishes a refresh in steps it finds
under way, so a refresh running on another thread meanwhile would be entered twice at once: CI saw GetBalance fail
with "generator already executing" while a snapshot's kernel half, encoded on the journal's thread, compiled the
tables a ClosePeriod had left stale. The writer compiles them on the loop before it encodes a snapshot."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator, Sequence

import pytest
from tariff.v1 import usage_pb2

import server.sequencer_publish as sequencer_publish
from engine import commands as cmd
from engine.billing import Billing, CompiledTables
from server.demo import demo_commands
from server.journal import JournalFull, MemoryJournal
from server.records import decode_record
from server.recovery import recover
from server.sequencer import Sequencer
from server.snapshotting import SnapshotPolicy
from server.usage_batches import UsageBatch
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate, unit
from tests.kernel_fixtures import usage_event
from tests.test_sequencer import NOW_MS, batch, event


def _record_compiles(billing: Billing, compiled_on: list[int]) -> None:
    """Notes the thread of every step of every compile that finds the tables behind: refresh_tables and the
    writer's paced compile both run Billing._compile_steps (through the instance attribute)."""
    compile_steps = billing._compile_steps

    def recording() -> Generator[None, None, CompiledTables | None]:
        behind = billing.tables_behind
        steps = compile_steps()
        while True:
            if behind:
                compiled_on.append(threading.get_ident())
            try:
                next(steps)
            except StopIteration as done:
                compiled: CompiledTables | None = done.value
                return compiled
            yield

    billing._compile_steps = recording  # type: ignore[method-assign]


def test_a_snapshot_after_a_command_that_left_the_tables_stale_compiles_them_on_the_loop() -> None:
    journal = MemoryJournal()
    compiled_on: list[int] = []

    async def main() -> tuple[int, int]:
        sequencer = Sequencer(
            recover(journal),
            journal,
            clock_ms=lambda: NOW_MS,
            snapshot_policy=SnapshotPolicy(every_records=10**9, every_events=10**9),
        )
        sequencer.start()
        for command in demo_commands(NOW_MS):
            await sequencer.run(command)
        _record_compiles(sequencer.billing, compiled_on)
        sequencer.snapshots.policy = SnapshotPolicy(every_records=1, every_events=1, journal_factor=0)
        created_seq, _ = await sequencer.run(cmd.CreateCustomer(NOW_MS, "test", "late", "Late", {}))
        await sequencer.run(batch(event("after-the-snapshot")))
        await sequencer.close()
        return threading.get_ident(), created_seq

    loop_thread, created_seq = asyncio.run(main())
    assert compiled_on, "the new customer left the tables stale: some refresh compiled them"
    assert set(compiled_on) == {loop_thread}
    stored = journal.load_snapshot()
    assert stored is not None and stored[0] > created_seq  # snapshots were taken after the stale-making command


class _CompletionCommitFails(MemoryJournal):
    """Refuses, once, the commit of the group that holds a re-rating's completion record (as a full disk would):
    the writer rebuilds the state from the journal, where the publish is durable and its re-rating pending."""

    def __init__(self) -> None:
        super().__init__()
        self.refused = False

    def commit(self, records: Sequence[tuple[int, bytes]]) -> None:
        if not self.refused and any(decode_record(blob).rerated is not None for _, blob in records):
            self.refused = True
            raise JournalFull("no room (test)")
        super().commit(records)


def test_a_rerating_completed_after_a_failed_commit_compiles_the_tables_on_the_loop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A rebuild after a failed commit leaves the tables stale (Billing.reset) and the publish's re-rating pending;
    its completion evaluates the balance rules of the plan's customers, which compiled the tables on the rating
    thread while GetBalance might have been finishing the same compile on the loop."""
    monkeypatch.setattr(sequencer_publish, "SLICE_CUSTOMERS", 1)  # the completion comes in a group of its own
    journal = _CompletionCommitFails()
    compiled_on: list[int] = []
    world = World()
    world.product("calls", value_key="n", dimensions=("model",))
    world.rate_card()
    world.version([rate("calls", unit("1"))])
    for customer_id in ("acme", "beta"):
        world.customer(customer_id)
        world.contract(f"c-{customer_id}", customer_id=customer_id)
        world.grant(f"g-{customer_id}", "10", customer_id=customer_id)
    received_ms = EPOCH_MS + 10 * HOUR_MS

    async def main() -> tuple[int, Billing]:
        billing = recover(journal)
        sequencer = Sequencer(billing, journal, clock_ms=lambda: received_ms)
        sequencer.start()
        for command in world.journal:
            await sequencer.run(command)
        await sequencer.run(cmd.CreateAlert(received_ms, ACTOR, "low", "acme", False, "LOW_BALANCE", "3"))
        events = [
            usage_event(
                f"{customer_id}-{hour}",
                EPOCH_MS + hour * HOUR_MS,
                {"n": 2.0},
                customer_id=customer_id,
                dimensions={"model": "m1"},
            )
            for customer_id in ("acme", "beta")
            for hour in range(3)
        ]
        await sequencer.run(UsageBatch(usage_pb2.UsageBatch(batch_id="b", events=events).SerializeToString(), 100))
        _, draft = await sequencer.run(
            cmd.CreateDraftVersion(received_ms, ACTOR, "card", 0, {}, (), (rate("calls", unit("1.5")),), (), "")
        )
        _record_compiles(billing, compiled_on)
        number = draft.number  # type: ignore[attr-defined]
        publish = cmd.PublishVersion(received_ms, ACTOR, "card", number, EPOCH_MS + HOUR_MS)
        # The publish is durable: after the refused commit its re-rating is pending again, and its caller is
        # answered once it completes (tests/test_publish_completion_commit_fails.py).
        await sequencer.run(publish)
        await sequencer.close()
        return threading.get_ident(), billing

    loop_thread, billing = asyncio.run(main())
    assert journal.refused, "the completion's first commit was refused: the state was rebuilt"
    assert billing.rerating is None
    completions = [decode_record(blob).rerated for _, blob in journal.read_records(0)]
    assert [done.done[0] for done in completions if done is not None] == [2]  # both customers re-rated
    assert compiled_on, "the rebuild left the tables stale: some refresh compiled them"
    assert set(compiled_on) == {loop_thread}
