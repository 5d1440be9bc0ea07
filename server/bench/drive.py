"""Runs load-generator processes against a server and reads the server's CPU around the load.

The bench process only orchestrates: it spawns the generators (multiprocessing, spawn), waits on a
barrier they pass once their requests are prepared, reads the server's CPU, collects one result
dict per generator, and reads the CPU again.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event
from typing import Any

from server.bench.target import ServedProcess

PREPARE_TIMEOUT_S = 300.0
RESULT_TIMEOUT_S = 1800.0
_spawn = multiprocessing.get_context("spawn")


class GeneratorFailed(RuntimeError):
    """A load generator died without a result."""


@dataclass
class Driven:
    results: list[dict[str, Any]]
    server_cpu_s: float
    # From the first generator's start to the last one's end (monotonic clock, shared by processes).
    elapsed_s: float

    @property
    def error(self) -> list[str] | None:
        for result in self.results:
            if result.get("error"):
                error: list[str] = result["error"]
                return error
        return None


def _collect(results: Any, processes: Sequence[SpawnProcess], count: int, timeout_s: float) -> list[dict[str, Any]]:
    collected: list[dict[str, Any]] = []
    waited_s = 0.0
    while len(collected) < count:
        try:
            collected.append(results.get(timeout=1.0))
        except queue.Empty:
            waited_s += 1.0
            if waited_s > timeout_s or all(not p.is_alive() for p in processes):
                # A last look: a generator may have put its result just before exiting.
                try:
                    collected.append(results.get(timeout=1.0))
                    continue
                except queue.Empty:
                    raise GeneratorFailed(
                        f"{count - len(collected)} load generator(s) ended without a result"
                    ) from None
    return collected


def drive(
    worker: Callable[..., None], specs: Sequence[Any], server: ServedProcess | None, timeout_s: float = RESULT_TIMEOUT_S
) -> Driven:
    """Runs `worker(spec, barrier, results, None)` in one process per spec and waits for all of them."""
    barrier = _spawn.Barrier(len(specs) + 1)
    results = _spawn.Queue()
    processes = [_spawn.Process(target=worker, args=(spec, barrier, results, None), daemon=True) for spec in specs]
    for process in processes:
        process.start()
    try:
        with contextlib.suppress(threading.BrokenBarrierError):  # a generator failed: its result says why
            barrier.wait(PREPARE_TIMEOUT_S)
        cpu_before = server.cpu_s() if server is not None else 0.0
        collected = _collect(results, processes, len(specs), timeout_s)
        cpu_after = server.cpu_s() if server is not None else 0.0
    finally:
        for process in processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
    finished = [r for r in collected if r.get("error") is None] or collected
    elapsed_s = max(r["ended"] for r in finished) - min(r["started"] for r in finished)
    return Driven(collected, cpu_after - cpu_before, elapsed_s)


class Background:
    """One generator running until stopped (the ingest load under which Authorize is measured)."""

    def __init__(self, worker: Callable[..., None], spec: Any) -> None:
        self._barrier = _spawn.Barrier(2)
        self._results = _spawn.Queue()
        self._stop: Event = _spawn.Event()
        self._process = _spawn.Process(
            target=worker, args=(spec, self._barrier, self._results, self._stop), daemon=True
        )

    def start(self) -> None:
        self._process.start()
        with contextlib.suppress(threading.BrokenBarrierError):  # stop() returns the generator's error
            self._barrier.wait(PREPARE_TIMEOUT_S)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        try:
            [result] = _collect(self._results, [self._process], 1, RESULT_TIMEOUT_S)
        finally:
            self._process.join(timeout=10)
            if self._process.is_alive():
                self._process.kill()
        return result
