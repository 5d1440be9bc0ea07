"""The clock driver: turns the passing of time into journaled AdvanceClock commands.

The kernel never reads a clock (replay must not): reservations expire and expired grants' remainders become
breakage only when an AdvanceClock command says the time has come. This task looks at when the kernel next has
something due (`Kernel.next_due()`: exact, read from the kernel's ordered index of due times in O(log n); or an
ended reservation to forget, `Kernel.next_forget()`: Sequencer's clock_work_due_ms), and
when the server's clock has reached it, submits AdvanceClock(now) through the writer, so the change is journaled
like any other; with nothing due it submits nothing. The index knows only what the kernel's tables hold, which
compile lazily (at the next batch or read): while an admin command's changes are not compiled yet
(`Billing.tables_behind`), it also submits AdvanceClock(now), for which the writer compiles them first, so that a
grant's expiry or rollover is due on time even when nothing reads (the writer also compiles them and applies the
AdvanceClock due before a run of usage batches or a close: Sequencer._clock_before). After a restart the first look happens at
once, so a hold whose TTL ran out while the server was down expires as soon as it serves. Beside a pending
re-rating (engine/pending.py), where an AdvanceClock only expires holds, a look that finds a rollover or a grant's
expiry due makes the writer complete the re-rating first, then record them (Sequencer._advance_clock_due), so
reads after a period's end see the rolled credit without waiting for usage or the re-rating's own end.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from engine import commands as cmd
from engine.billing import Billing
from server.errors import ResourceExhausted, Unavailable
from server.scheduling import name_os_threads
from server.sequencer import CLOCK_ACTOR, Sequencer, clock_work_due_ms
from server.worker import Worker

log = logging.getLogger("tariff.clock")

# How often the driver looks when nothing is due sooner (a new hold or grant can make something due sooner).
CLOCK_LOOK_EVERY_S = 0.05
# How often it tries again while the journal is full: each failed commit rebuilds the state from the journal, and
# the map stays full until a restart with a larger --map-size-mb (reads project what is due meanwhile).
JOURNAL_FULL_RETRY_S = 5.0


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


async def drive_clock(
    billing: Billing, sequencer: Sequencer, clock_ms: Callable[[], int] = wall_ms, every_s: float = CLOCK_LOOK_EVERY_S
) -> None:
    """Runs until cancelled or the writer stops."""
    # Asked on a thread of its own: the call waits for the kernel's lock, which a batch being rated holds, and on a
    # busy machine the rating thread can lose its CPU while it holds it (20-45 ms measured): the loop would wait.
    # A Worker, not asyncio.to_thread: at 20 looks a second, to_thread's executor hand-over (a concurrent future
    # chained to an asyncio one, a context copied) cost the loop 58-75 us a look on a loaded 2-core machine, the
    # Worker's 22 us (3,000 hand-overs of a no-op, in-process on uvloop; the loop thread's CPU time).
    asker = Worker("tariff-clock")
    name_os_threads()  # started after the server named its threads: else counted as "python" with the loop's
    try:
        await _drive(billing, sequencer, asker, clock_ms, every_s)
    finally:
        asker.shutdown()  # waits for at most the look under way


async def _drive(
    billing: Billing, sequencer: Sequencer, asker: Worker, clock_ms: Callable[[], int], every_s: float
) -> None:
    full = False  # the last AdvanceClock found the journal full (said once, until one commits)
    while sequencer.failure is None:
        due_ms = await asker.run(lambda: clock_work_due_ms(billing))
        now_ms = clock_ms()
        # Tables compile lazily, at the next batch or read: a grant granted with its expiry (or rollover) already
        # past, or passing before anything reads, would otherwise wait for one, and a late event dated before the
        # expiry could draw on it long after. The writer compiles them before it applies the AdvanceClock (which
        # takes no record when, compiled, nothing is due).
        if (due_ms is not None and now_ms >= due_ms) or billing.tables_behind:
            try:
                await sequencer.run(
                    cmd.AdvanceClock(
                        now_ms,
                        CLOCK_ACTOR,
                        alerts_evaluated=True,
                        rollover_ids_distinct=True,
                        rollover_lasts_next_period=True,
                    )
                )
            except Unavailable:
                return  # shutting down
            except ResourceExhausted as exc:
                if not full:
                    log.error("the clock's work (holds, grants expiring, rollovers) waits: %s", exc)
                full = True
                await asyncio.sleep(JOURNAL_FULL_RETRY_S)
                continue
            except Exception:
                log.exception("AdvanceClock failed; retrying")
            else:
                full = False
        await asyncio.sleep(every_s)
