"""Which of the server's threads the operating system runs first when they compete for a CPU, and how long work on
the event loop holds it."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import platform
import sys
import threading
import time
from collections.abc import Generator
from pathlib import Path
from typing import TypeVar

log = logging.getLogger("tariff")
Result = TypeVar("Result")


# The event loop answers every read and every ack; the writer's threads (rating, the journal's commits, the explain
# index, the snapshot's file) work behind it. On a machine with more runnable threads than cores (a 2-core machine
# shared with load generators), a thread that wakes waits for a CPU, and a woken loop waits for these threads'
# timeslices too. At nice 5 (a third of the loop's CPU weight under Linux's scheduler) the loop is run first when both are runnable; with a
# core free nothing changes. Authorize p99 under ingest at 80 %, one call at a time (`python -m
# server.bench.authorize_trace`, load 10-11): 56-61 ms at nice 0, 33 ms at nice 5, ingest achieved the same.
BACKGROUND_THREADS = ("tariff-rating", "tariff-journal", "tariff-explain", "tariff-snapshot")
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


def name_os_threads(prefix: str = "tariff-") -> list[str]:
    """Gives the server's own threads (Python names starting with `prefix`) the same name in the operating system
    (Linux's comm, at most 15 bytes), where they are all "python" otherwise: `top -H`, `perf` and
    `python -m server.bench.thread_cpu` then tell the rating thread from the journal's. Returns the names set."""
    if not sys.platform.startswith("linux"):
        return []
    named = []
    for thread in threading.enumerate():
        if thread.name.startswith(prefix) and thread.native_id is not None:
            try:
                Path(f"/proc/self/task/{thread.native_id}/comm").write_text(thread.name[:15])
            except OSError as exc:  # the thread ended meanwhile, or /proc is not mounted
                log.warning("could not name thread %s: %s", thread.name, exc)
                continue
            named.append(thread.name)
    return named


# Nice sets a thread's share of a CPU, not how soon it runs once woken. Linux's EEVDF scheduler (6.6+) runs first
# the eligible thread whose virtual deadline is earliest, a deadline one slice after it becomes eligible, and since
# 6.12 a thread may ask for a shorter slice (sched_setattr's sched_runtime, 0.1 to 100 ms, no privilege needed) and
# a woken thread with a shorter slice preempts the running one. The event loop and gRPC's I/O threads (which read
# the sockets and wake the loop) each do a little work per call, then sleep: with the shortest slice they run soon
# after they wake instead of after the running thread's 1.4 ms default slice (2 CPUs), with the same CPU share.
# `tariff bench --only authorize --runs 2 --no-postgres`, 4 invocations each, interleaved, load 2-8 (other work on
# the machine): Authorize p99 under ingest at 80 %: 17.7-38.5 ms (median 24.8) by default, 13.0-24.8 ms (median
# 17.8) with these slices. Older kernels ignore sched_runtime for these threads.
WOKEN_THREAD_SLICE_US = 100  # the kernel's lower bound
GRPC_IO_THREADS = ("event_engine", "grpc_global_tim")  # the names gRPC's C core gives its I/O threads
SYS_SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}


class _SchedAttr(ctypes.Structure):
    """struct sched_attr as of its first version (linux/sched/types.h, SCHED_ATTR_SIZE_VER0)."""

    _fields_ = [
        ("size", ctypes.c_uint32),
        ("sched_policy", ctypes.c_uint32),
        ("sched_flags", ctypes.c_uint64),
        ("sched_nice", ctypes.c_int32),
        ("sched_priority", ctypes.c_uint32),
        ("sched_runtime", ctypes.c_uint64),
        ("sched_deadline", ctypes.c_uint64),
        ("sched_period", ctypes.c_uint64),
    ]


def shorten_slices(slice_us: int = WOKEN_THREAD_SLICE_US) -> list[str]:
    """Asks the scheduler for a `slice_us` slice for the calling thread (the event loop's) and gRPC's I/O threads
    running now (Linux only). Keeps each thread's policy (SCHED_OTHER) and nice. Returns the names of the threads
    it set."""
    syscall = SYS_SCHED_SETATTR.get(platform.machine())
    if not sys.platform.startswith("linux") or syscall is None:
        return []
    libc = ctypes.CDLL(None, use_errno=True)
    threads = [(threading.get_native_id(), threading.current_thread().name)]
    for task in Path("/proc/self/task").iterdir():
        name = (task / "comm").read_text().strip()
        if name in GRPC_IO_THREADS:
            threads.append((int(task.name), name))
    shortened = []
    for thread_id, name in threads:
        try:
            nice = os.getpriority(os.PRIO_PROCESS, thread_id)
        except OSError:
            continue  # the thread ended meanwhile
        attr = _SchedAttr(ctypes.sizeof(_SchedAttr), os.SCHED_OTHER, 0, nice, 0, slice_us * 1_000, 0, 0)
        if libc.syscall(syscall, thread_id, ctypes.byref(attr), 0) != 0:
            log.warning("could not shorten the slice of thread %s: %s", name, os.strerror(ctypes.get_errno()))
            continue
        shortened.append(name)
    return shortened


# A thread that gives the GIL up for a moment and takes it back at once (a C call between Py_BEGIN_ALLOW_THREADS and
# Py_END_ALLOW_THREADS, as each LMDB put is) keeps it: a waiting thread is woken, but takes tens of microseconds to
# run, and by then the GIL is taken again, which also resets the switch interval's count of its wait. So a thread
# making thousands of objects in C, or putting thousands of entries, holds the event loop for as long as it takes
# (and longer when it loses its CPU meanwhile: the writer's threads run at a lower priority). Sleeping hands the GIL
# over: the waiter runs while the sleeper cannot take it back.
HANDOVER_EVERY_S = 0.0005
HANDOVER_SLEEP_S = 0.00005


class GilHandover:
    """Called now and then by a thread doing long work with the GIL held or given up only for moments: once
    `every_s` has passed since the work started or last paused, sleeps `sleep_s` so that a thread waiting for the GIL
    (the event loop) takes it. Costs a clock read otherwise."""

    def __init__(self, every_s: float = HANDOVER_EVERY_S, sleep_s: float = HANDOVER_SLEEP_S) -> None:
        self.every_s = every_s
        self.sleep_s = sleep_s
        self.pauses = 0
        self._resumed = time.perf_counter()

    def __call__(self) -> None:
        if time.perf_counter() - self._resumed >= self.every_s:
            time.sleep(self.sleep_s)
            self.pauses += 1
            self._resumed = time.perf_counter()


# How long work run in steps on the event loop holds it before it lets other work run (a revenue report of every
# customer, the writer's table compiles).
LOOP_PAUSE_EVERY_S = 0.001


async def paced(steps: Generator[None, None, Result], every_s: float = LOOP_PAUSE_EVERY_S) -> Result:
    """Runs the steps on the event loop, giving it back once `every_s` has passed, so work over every customer
    holds it about a millisecond at a time; returns what the steps return."""
    clock = time.perf_counter
    resumed = clock()
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: Result = done.value
            return result
        if clock() - resumed >= every_s:
            await asyncio.sleep(0)
            resumed = clock()
