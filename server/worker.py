"""Worker: a thread of its own, named, running the calls handed to it in order, each call's outcome delivered to
an asyncio future (the writer's journal, rating and snapshot threads, and the clock driver's)."""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from server.scheduling import HANDOVER_SLEEP_S

Result = TypeVar("Result")


class Worker:
    """A thread of its own running the calls handed to it one at a time, in order, each call's outcome
    delivered to an asyncio future. Lighter than run_in_executor on a one-thread pool, which chains a
    concurrent future to an asyncio one: about twenty Python calls on the event loop per hand-over, two here
    (the writer hands over twice per group commit).

    `hands_over_gil`: the caller sleeps HANDOVER_SLEEP_S after handing a call over, so that the woken thread takes the
    GIL then. Otherwise a call handed over by the event loop starts only once the loop next waits for I/O (the
    woken thread wants the GIL to start the call, and the loop keeps it for the callbacks it has ready): under the
    bench's ingest load that was 0.5 ms a hand-over at the median, 1.1-1.4 ms at the 90th percentile, with the
    rating thread on the writer's critical path idle meanwhile. For a thread whose call starts by giving the GIL up
    for long (a batch rated in the kernel), not for one that answers in microseconds."""

    def __init__(self, name: str, *, hands_over_gil: bool = False) -> None:
        self._calls: queue.SimpleQueue[
            tuple[asyncio.AbstractEventLoop, asyncio.Future[Any], Callable[..., Any], tuple[Any, ...]] | None
        ] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._closed = False
        self._hands_over_gil = hands_over_gil

    def run(self, function: Callable[..., Result], *args: Any) -> asyncio.Future[Result]:
        if self._closed:
            raise RuntimeError(f"{self._thread.name} is shut down")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._calls.put((loop, future, function, args))
        if self._hands_over_gil:
            time.sleep(HANDOVER_SLEEP_S)
        return future

    def shutdown(self) -> None:
        """Runs what was handed over before, then ends the thread."""
        self._closed = True
        self._calls.put(None)
        self._thread.join()

    def _serve(self) -> None:
        while (call := self._calls.get()) is not None:
            loop, future, function, args = call
            try:
                outcome: tuple[Any, BaseException | None] = (function(*args), None)
            except BaseException as exc:  # delivered to the caller, as run_in_executor would
                outcome = (None, exc)
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits for the outcome any more
                loop.call_soon_threadsafe(_settle, future, *outcome)
            del call, future, function, args, outcome  # a rated run's batches are freed now, not at the next call


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled: the caller stopped waiting
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
