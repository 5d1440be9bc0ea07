"""Event-loop stall sampling: how late the loop wakes a task that sleeps a short interval.

A task sleeps `interval_s` and records how much later than that it woke: any work that holds the loop
(a snapshot encoded on the loop, a long collection, a slow handler) shows up as lateness, to within
one interval. The longest lateness since the last `take()` is what the activity line reports as
`loop_stall_max_ms`. It runs off the per-event path (one wake per interval, whatever the load) and is
off unless `tariff serve --loop-stall-sample-ms` asks for it, since a wake every millisecond is a
small but steady cost.
"""

from __future__ import annotations

import asyncio
import time


class StallSampler:
    """The longest event-loop stall seen since the last `take()`, in milliseconds."""

    def __init__(self, interval_s: float) -> None:
        if interval_s <= 0:
            raise ValueError("loop stall sampling interval must be positive")
        self.interval_s = interval_s
        self.longest_s = 0.0

    async def run(self) -> None:
        interval_s = self.interval_s
        clock = time.perf_counter
        while True:
            due = clock() + interval_s
            await asyncio.sleep(interval_s)
            late_s = clock() - due
            if late_s > self.longest_s:
                self.longest_s = late_s

    def take(self) -> float:
        """The longest stall in ms since the previous call (a fresh interval starts)."""
        longest_ms = self.longest_s * 1e3
        self.longest_s = 0.0
        return round(longest_ms, 2)
