"""Event-loop stall sampling: how late the loop wakes a task that sleeps a short interval, and why.

A task sleeps `interval_s` and records how much later than that it woke: any work that holds the loop
(a snapshot encoded on the loop, a long collection, a slow handler) shows up as lateness, to within
one interval. The longest lateness since the last `take()` is what the activity line reports as
`loop_stall_max_ms`. It runs off the per-event path (one wake per interval, whatever the load) and is
off unless `tariff serve --loop-stall-sample-ms` asks for it, since a wake every millisecond is a
small but steady cost.

A late wake has three causes, told apart for the longest one: the loop ran (its thread's CPU time over the
interval, `loop_stall_cpu_ms`), it waited for a CPU (the time the kernel's scheduler kept the thread
runnable but off every CPU, from /proc/thread-self/schedstat: `loop_stall_runqueue_ms`; on a machine shared
with load generators, most of a stall can be this), or it slept: waiting for the GIL or a lock, the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time

SCHEDSTAT = "/proc/thread-self/schedstat"  # "<ns on a CPU> <ns runnable, waiting for one> <timeslices>"


class StallSampler:
    """The longest event-loop stall seen since the last `take()`, in milliseconds, and what it was made of."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("loop stall sampling interval must be positive")
        self.interval_s = interval_s
        self.longest_s = 0.0
        self.longest_cpu_s = 0.0
        self.longest_runqueue_s = 0.0
        # Of the longest stall in the interval `take()` closed: CPU time of the loop's thread and time it waited
        # for a CPU, in ms (None: the scheduler's statistics cannot be read here).
        self.cpu_ms = 0.0
        self.runqueue_ms: float | None = None
        self.reads_runqueue = False

    async def run(self) -> None:
        interval_s = self.interval_s
        clock = time.perf_counter
        cpu = time.thread_time
        schedstat = _open_schedstat()  # opened on the loop's thread: thread-self is the thread that opens it
        self.reads_runqueue = schedstat is not None
        try:
            while True:
                due = clock() + interval_s
                cpu_before = cpu()
                waited_before = _waited_s(schedstat)
                await asyncio.sleep(interval_s)
                late_s = clock() - due
                if late_s > self.longest_s:
                    self.longest_s = late_s
                    self.longest_cpu_s = cpu() - cpu_before
                    self.longest_runqueue_s = _waited_s(schedstat) - waited_before
        finally:
            if schedstat is not None:
                os.close(schedstat)

    def take(self) -> float:
        """The longest stall in ms since the previous call (a fresh interval starts)."""
        longest_ms = self.longest_s * 1e3
        self.cpu_ms = round(self.longest_cpu_s * 1e3, 2)
        self.runqueue_ms = round(self.longest_runqueue_s * 1e3, 2) if self.reads_runqueue else None
        self.longest_s = self.longest_cpu_s = self.longest_runqueue_s = 0.0
        return round(longest_ms, 2)


def _open_schedstat() -> int | None:
    with contextlib.suppress(OSError):
        return os.open(SCHEDSTAT, os.O_RDONLY)
    return None


def _waited_s(schedstat: int | None) -> float:
    """The loop thread's time runnable but off CPU, in s, since it started (0 when it cannot be read)."""
    if schedstat is None:
        return 0.0
    return int(os.pread(schedstat, 64, 0).split()[1]) / 1e9
