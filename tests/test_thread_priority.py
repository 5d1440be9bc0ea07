"""The writer's threads run at a lower priority than the event loop's, and the loop and gRPC's I/O threads ask for
the shortest slice (server/scheduling.py, Linux)."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from server.scheduling import (
    BACKGROUND_NICE,
    WOKEN_THREAD_SLICE_US,
    lower_background_threads,
    name_os_threads,
    shorten_slices,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux only")


@contextlib.contextmanager
def waiting_threads(*names: str) -> Iterator[list[threading.Thread]]:
    """Threads of these Python names, started and waiting until the block ends."""
    release = threading.Event()
    threads = [threading.Thread(target=release.wait, name=name, daemon=True) for name in names]
    for thread in threads:
        thread.start()
    try:
        yield threads
    finally:
        release.set()
        for thread in threads:
            thread.join()


def test_the_writers_threads_are_lowered_and_no_other_thread_is() -> None:
    with waiting_threads("tariff-rating", "not-a-writer") as (rating, other):
        nice_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert "tariff-rating" in lower_background_threads()
        assert rating.native_id is not None and other.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, rating.native_id) == min(nice_before + BACKGROUND_NICE, 19)
        assert os.getpriority(os.PRIO_PROCESS, other.native_id) == nice_before
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == nice_before


def test_the_servers_threads_get_their_names_in_the_os_and_no_other_thread_does() -> None:
    with waiting_threads("tariff-journal", "not-a-writer") as (journal, other):
        assert journal.native_id is not None and other.native_id is not None
        comm_before = Path(f"/proc/self/task/{other.native_id}/comm").read_text().strip()
        assert "tariff-journal" in name_os_threads()
        assert Path(f"/proc/self/task/{journal.native_id}/comm").read_text().strip() == "tariff-journal"
        assert Path(f"/proc/self/task/{other.native_id}/comm").read_text().strip() == comm_before != "not-a-writer"


def slice_ns(thread_id: int) -> int | None:
    """The thread's EEVDF slice from /proc (None on a kernel that does not show one)."""
    for line in Path(f"/proc/self/task/{thread_id}/sched").read_text().splitlines():
        if line.startswith("se.slice"):
            return int(line.split(":")[1])
    return None


def test_the_calling_thread_and_grpcs_io_threads_get_the_shortest_slice_and_no_other_thread_does() -> None:
    if slice_ns(threading.get_native_id()) is None:
        pytest.skip("this kernel shows no EEVDF slice (before Linux 6.6)")
    release = threading.Event()
    io = threading.Thread(target=release.wait, daemon=True)
    other = threading.Thread(target=release.wait, name="event_engine", daemon=True)  # a Python name is not comm
    io.start()
    other.start()
    assert io.native_id is not None and other.native_id is not None
    Path(f"/proc/self/task/{io.native_id}/comm").write_text("event_engine")
    default_ns = slice_ns(other.native_id)
    shortened: list[str] = []
    caller = threading.Thread(target=lambda: shortened.extend(shorten_slices()), name="loop")
    try:
        caller.start()
        caller.join()
        # gRPC's own I/O threads are set too when another test of this process started them.
        assert "loop" in shortened and set(shortened) <= {"loop", "event_engine", "grpc_global_tim"}
        assert slice_ns(io.native_id) == WOKEN_THREAD_SLICE_US * 1_000
        assert slice_ns(other.native_id) == default_ns != WOKEN_THREAD_SLICE_US * 1_000
    finally:
        release.set()
        io.join()
        other.join()
