"""Which of the server's threads the operating system runs first when they compete for a CPU."""

from __future__ import annotations

import logging
import os
import sys
import threading

log = logging.getLogger("tariff")


# The event loop answers every read and every ack; the writer's threads (rating, the journal's commits, the explain
# index) work behind it. On a machine with more runnable threads than cores (a 2-core machine shared with load
# generators), a thread that wakes waits for a CPU, and a woken loop waits for these threads' timeslices too. At nice
# 5 (a third of the loop's CPU weight under Linux's scheduler) the loop is run first when both are runnable; with a
# core free nothing changes. Authorize p99 under ingest at 80 %, one call at a time (`python -m
# server.bench.authorize_trace`, load 10-11): 56-61 ms at nice 0, 33 ms at nice 5, ingest achieved the same.
BACKGROUND_THREADS = ("tariff-rating", "tariff-journal", "tariff-explain")
BACKGROUND_NICE = 5  # added to the thread's own nice: a server started under `nice` keeps the same gap


def lower_background_threads(nice: int = BACKGROUND_NICE) -> list[str]:
    """Gives the writer's threads a lower priority than the event loop's (Linux, where nice is per thread; raising
    nice needs no privilege). Returns the names of the threads it lowered."""
    if not sys.platform.startswith("linux"):
        return []  # elsewhere PRIO_PROCESS with a thread's id would lower the whole process
    lowered = []
    for thread in threading.enumerate():
        if thread.name in BACKGROUND_THREADS and thread.native_id is not None:
            try:
                own_nice = os.getpriority(os.PRIO_PROCESS, thread.native_id)
                os.setpriority(os.PRIO_PROCESS, thread.native_id, own_nice + nice)
            except OSError as exc:
                log.warning("could not lower the priority of thread %s: %s", thread.name, exc)
                continue
            lowered.append(thread.name)
    return lowered
