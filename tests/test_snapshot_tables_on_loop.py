"""Tables compile on the event loop only. A read (GetBalance, Authorize) finishes a refresh in steps it finds
under way, so a refresh running on another thread meanwhile would be entered twice at once: CI saw GetBalance fail
with "generator already executing" while a snapshot's kernel half, encoded on the journal's thread, compiled the
tables a ClosePeriod had left stale. The writer compiles them on the loop before it encodes a snapshot."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Generator

from engine import commands as cmd
from engine.billing import Billing, CompiledTables
from server.demo import demo_commands
from server.journal import MemoryJournal
from server.sequencer import Sequencer, recover
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
            snapshot_every_records=10**9,
            snapshot_every_events=10**9,
        )
        sequencer.start()
        for command in demo_commands(NOW_MS):
            await sequencer.run(command)
        _record_compiles(sequencer.billing, compiled_on)
        sequencer.snapshot_every_records = sequencer.snapshot_every_events = 1
        sequencer.snapshot_journal_factor = 0
        created_seq, _ = await sequencer.run(cmd.CreateCustomer(NOW_MS, "test", "late", "Late", {}))
        await sequencer.run(batch(event("after-the-snapshot")))
        await sequencer.close()
        return threading.get_ident(), created_seq

    loop_thread, created_seq = asyncio.run(main())
    assert compiled_on, "the new customer left the tables stale: some refresh compiled them"
    assert set(compiled_on) == {loop_thread}
    stored = journal.load_snapshot()
    assert stored is not None and stored[0] > created_seq  # snapshots were taken after the stale-making command
