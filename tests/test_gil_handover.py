"""Long work off the event loop lets the loop take the GIL: a GilHandover pause hands it to a waiting thread
(server/scheduling.py), the explain index's block builder calls the pause it is given while it makes the block's
objects, and the kernel's bytes copied with the GIL released (snapshot parts, explain blocks) are the bytes asked for."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator

import pytest

from engine._kernel import explain_block
from engine.billing import Billing
from server.scheduling import GilHandover
from tests.test_explain_index_blocks import LINES, _record
from tests.test_snapshot_parts import many_customers_world

NEVER_S = 3600.0


@pytest.fixture
def no_forced_switch() -> Iterator[None]:
    """A switch interval no test outlasts: a thread running Python keeps the GIL until it gives it up itself."""
    interval_s = sys.getswitchinterval()
    sys.setswitchinterval(NEVER_S)
    try:
        yield
    finally:
        sys.setswitchinterval(interval_s)


def _waiter() -> tuple[threading.Thread, threading.Lock, threading.Event]:
    """A thread blocked on a lock: once the lock is released it needs the GIL to note that it ran."""
    gate = threading.Lock()
    gate.acquire()
    ran = threading.Event()

    def wait() -> None:
        with gate:
            ran.set()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    return thread, gate, ran


@pytest.mark.usefixtures("no_forced_switch")
def test_a_due_pause_hands_the_gil_to_a_waiting_thread() -> None:
    thread, gate, ran = _waiter()
    pause = GilHandover(every_s=0.0)
    gate.release()  # the waiter is runnable now, and waits for the GIL this thread holds
    pauses = 0
    while not ran.is_set() and pauses < 10_000:
        pause()  # no other call in this loop gives the GIL up
        pauses += 1
    assert ran.is_set()
    assert pause.pauses == pauses
    thread.join()


@pytest.mark.usefixtures("no_forced_switch")
def test_a_pause_not_due_keeps_the_gil() -> None:
    thread, gate, ran = _waiter()
    pause = GilHandover(every_s=NEVER_S)
    gate.release()
    for _ in range(10_000):
        pause()
    assert not ran.is_set()
    assert pause.pauses == 0
    time.sleep(0.001)  # gives the GIL up: the waiter runs
    thread.join()
    assert ran.is_set()


def _explain_records(events: int) -> list[bytes]:
    return [
        b"".join(_record(seq, f"customer-{seq % 97}", LINES[seq % len(LINES)], f"t{seq}", seq)[0] for seq in seqs)
        for seqs in (range(1, events // 2), range(events // 2, events + 1))
    ]


def test_explain_block_calls_the_pause_and_builds_the_same_block() -> None:
    records = _explain_records(3_000)
    calls = 0

    def pause() -> None:
        nonlocal calls
        calls += 1

    paused = explain_block(records, 0, 1024, pause)
    assert calls > 0
    assert paused == explain_block(records, 0, 1024)
    block, chunks, periods = paused
    assert block == 1 and len(chunks) > 1 and periods


def test_explain_block_raises_what_the_pause_raises() -> None:
    def pause() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        explain_block(_explain_records(3_000), 0, 1024, pause)


@pytest.mark.parametrize("part_bytes", [1, 7, 1000, 10**9])
def test_kernel_snapshot_parts_join_to_the_snapshot(part_bytes: int) -> None:
    billing = Billing(many_customers_world(20).engine)
    billing.refresh_tables()
    whole = billing.kernel.snapshot()
    parts = billing.kernel.snapshot_parts(part_bytes)
    assert b"".join(parts) == whole
    assert all(0 < len(part) <= part_bytes for part in parts)
    assert len(parts) == -(-len(whole) // part_bytes)
