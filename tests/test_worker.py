"""server/worker.py: calls run on the worker's own thread, in order, their outcomes delivered to the caller's loop;
a worker that hands the GIL over sleeps right after queueing a call, so the woken thread can start it then."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from server.scheduling import HANDOVER_SLEEP_S
from server.worker import Worker


def test_calls_run_in_order_on_the_workers_thread_and_their_outcomes_reach_the_caller() -> None:
    worker = Worker("tariff-test")
    ran_on: list[str] = []

    def record(value: int) -> int:
        ran_on.append(threading.current_thread().name)
        return value * 2

    def fail() -> None:
        raise ValueError("refused")

    async def hand_over() -> tuple[list[int], str]:
        doubled = [worker.run(record, value) for value in range(5)]
        results = list(await asyncio.gather(*doubled))
        with pytest.raises(ValueError) as refused:
            await worker.run(fail)
        return results, str(refused.value)

    try:
        results, refusal = asyncio.run(hand_over())
    finally:
        worker.shutdown()
    assert results == [0, 2, 4, 6, 8]
    assert refusal == "refused"
    assert ran_on == ["tariff-test"] * 5


def test_a_worker_that_hands_the_gil_over_sleeps_after_queueing_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    started = threading.Event()
    slept: list[tuple[float, bool]] = []

    def sleep_until_started(seconds: float) -> None:
        # Waiting here gives the GIL up as the real sleep does; the call was queued before, so the worker starts it.
        slept.append((seconds, started.wait(timeout=10)))

    monkeypatch.setattr(time, "sleep", sleep_until_started)
    worker = Worker("tariff-test", hands_over_gil=True)

    def rate() -> str:
        started.set()
        return "rated"

    async def hand_over() -> str:
        return await worker.run(rate)

    try:
        answer = asyncio.run(hand_over())
    finally:
        worker.shutdown()
    assert answer == "rated"
    assert slept == [(HANDOVER_SLEEP_S, True)]


def test_a_worker_that_does_not_hand_the_gil_over_never_sleeps(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    worker = Worker("tariff-test")

    async def hand_over() -> str:
        return await worker.run(lambda: "rated")

    try:
        assert asyncio.run(hand_over()) == "rated"
    finally:
        worker.shutdown()
    assert slept == []
