"""The event-loop stall sampler: a task that holds the loop shows up as the sampler's lateness, once."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable

import pytest

from server.bench.stalls import longest_stall_ms, longest_stall_split
from server.loopstall import StallSampler

BLOCK_S = 0.05
INTERVAL_S = 0.001


def test_a_blocked_loop_is_reported_as_a_stall_and_the_reading_resets() -> None:
    async def scenario() -> tuple[float, float]:
        sampler = StallSampler(INTERVAL_S)
        task = asyncio.create_task(sampler.run())
        await asyncio.sleep(0.01)  # the sampler is asleep on its interval
        sampler.take()
        time.sleep(BLOCK_S)  # holds the loop, as a snapshot encoded on it would
        await asyncio.sleep(0.01)  # the sampler wakes late and records it
        first = sampler.take()
        task.cancel()
        return first, sampler.longest_s

    first_ms, after_take_s = asyncio.run(scenario())
    # Lateness is the block less at most one interval (the sampler may have been mid-sleep).
    assert first_ms >= (BLOCK_S - INTERVAL_S) * 1e3
    assert after_take_s == 0.0


def _stall_of(block: Callable[[], None]) -> StallSampler:
    """A sampler that saw the loop held by `block` once, after take() closed that interval."""

    async def scenario() -> StallSampler:
        sampler = StallSampler(INTERVAL_S)
        task = asyncio.create_task(sampler.run())
        await asyncio.sleep(0.01)
        sampler.take()
        block()
        await asyncio.sleep(0.01)
        sampler.take()
        task.cancel()
        return sampler

    return asyncio.run(scenario())


def _spin_cpu() -> None:
    """Holds the loop running: until this thread has used BLOCK_S of CPU, however long that takes."""
    started = time.thread_time()
    while time.thread_time() - started < BLOCK_S:
        pass


def test_a_stall_the_loop_spent_running_is_told_from_one_it_spent_asleep() -> None:
    running = _stall_of(_spin_cpu)
    asleep = _stall_of(lambda: time.sleep(BLOCK_S))
    assert running.cpu_ms >= BLOCK_S * 1e3
    assert asleep.cpu_ms < BLOCK_S * 1e3 / 2  # sleeping (as on the GIL or a lock) takes no CPU
    if sys.platform == "linux":  # the wait for a CPU is read from /proc
        assert running.runqueue_ms is not None and running.runqueue_ms >= 0
    else:
        assert running.runqueue_ms is None


def test_a_sampler_needs_a_positive_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        StallSampler(0)


def test_the_bench_reads_the_largest_stall_from_activity_lines() -> None:
    log = (
        "2026-12-01T22:10:00.123Z INFO tariff: activity events_per_s=10.0 streams=1 loop_stall_max_ms=1.25\n"
        "2026-12-01T22:10:00.373Z INFO tariff: activity events_per_s=12.0 streams=1 loop_stall_max_ms=7.5\n"
        "2026-12-01T22:10:00.623Z INFO tariff: admin change actor=anonymous action=CreateCustomer\n"
    )
    assert longest_stall_ms(log) == 7.5
    assert longest_stall_ms("2026-12-01T22:10:00.123Z INFO tariff: activity events_per_s=1.0\n") is None


def test_the_bench_reads_what_the_longest_stall_was_made_of() -> None:
    log = (
        "... activity events_per_s=10.0 loop_stall_max_ms=3.5 loop_stall_cpu_ms=3.1 loop_stall_runqueue_ms=0.2\n"
        "... activity events_per_s=12.0 loop_stall_max_ms=9.25 loop_stall_cpu_ms=0.5 loop_stall_runqueue_ms=8.5\n"
    )
    assert longest_stall_split(log) == (9.25, 0.5, 8.5)
    assert longest_stall_split("... activity events_per_s=12.0 loop_stall_max_ms=9.25\n") is None
