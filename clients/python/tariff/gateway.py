"""AuthorizeBatcher: a gateway's credit checks, gathered into AuthorizeBatches messages over one stream.

Each gRPC message costs the server tens of microseconds of its own, so a gateway that checks credit per
request at high rates sends its checks in batches. `authorize()` looks like a single call; the
batcher puts every check made within `max_delay_ms` (or until `batch_requests_max` are waiting) into one
`AuthorizeBatch`, keeps several batches in flight on one long-lived `AuthorizeBatches` stream, and hands
each caller its own answer (the server answers in request order).

If the stream breaks, every check in flight fails with the typed error of the server's status (Authorize changes
nothing, so the caller may simply retry; a RESOURCE_EXHAUSTED without RetryInfo, a message past the server's
--message-mb-max, fails again) and the next check opens a new stream. Each `authorize()` answers or raises
`DeadlineExceeded` within `timeout_s`. A stream whose oldest batch in flight has had no answer for `timeout_s` (a
server or connection that stopped answering without ending the stream) is given up the same way: its checks fail
with `DeadlineExceeded`, it is cancelled, and the next check opens a new stream.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
from collections.abc import Mapping
from typing import Any

import grpc

from tariff.client import (
    DeadlineExceeded,
    TariffError,
    Unavailable,
    _authorize_request,
    _ServerStatus,
    error_from_rpc,
)
from tariff.v1 import balance_pb2

_Waiting = tuple[balance_pb2.AuthorizeRequest, "asyncio.Future[balance_pb2.AuthorizeResponse]"]
_InFlight = tuple[list[_Waiting], float]  # a batch written on the stream, and the loop's time when it was written


class AuthorizeBatcher:
    """See the module docstring. Use with ``async with`` (or call ``close()``)."""

    def __init__(
        self,
        balance_stub: Any,
        *,
        max_delay_ms: float = 1.0,
        batch_requests_max: int = 500,
        batches_in_flight_max: int = 8,
        timeout_s: float = 5.0,
    ) -> None:
        # Raised, not asserted: `python -O` strips asserts, and a bad bound must never reach the server (more than
        # 10,000 sinks every batch) or the semaphore (0 leaves every check waiting out its timeout_s).
        if not 0 < batch_requests_max <= 10_000:
            raise ValueError(f"batch_requests_max must be 1 to 10,000 (the server's limit), not {batch_requests_max}")
        if batches_in_flight_max < 1:
            raise ValueError(f"batches_in_flight_max must be >= 1, not {batches_in_flight_max}")
        self._stub = balance_stub
        self.max_delay_ms = max_delay_ms
        self.batch_requests_max = batch_requests_max
        self.timeout_s = timeout_s
        self._waiting: list[_Waiting] = []
        self._in_flight: collections.deque[_InFlight] = collections.deque()
        self._slots = asyncio.Semaphore(batches_in_flight_max)
        self._writing = asyncio.Lock()
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._flusher: asyncio.Task[None] | None = None
        self._senders: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)
        self._closed = False

    async def __aenter__(self) -> AuthorizeBatcher:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def authorize(
        self,
        customer_id: str,
        event_type: str,
        dimensions: Mapping[str, str] | None = None,
        values: Mapping[str, float] | None = None,
    ) -> balance_pb2.AuthorizeResponse:
        """Would this usage be allowed now, and what would it cost? A denial is ``allowed=False``, not an error."""
        if self._closed:
            raise Unavailable("the AuthorizeBatcher is closed")
        request = _authorize_request(
            customer_id, event_type, dimensions, values, f"b{next(self._ids)}", False, None, ""
        )
        answer: asyncio.Future[balance_pb2.AuthorizeResponse] = asyncio.get_running_loop().create_future()
        self._waiting.append((request, answer))
        if len(self._waiting) >= self.batch_requests_max:
            # Sent by a task of its own: the caller waits for its answer only, at most timeout_s, even while
            # the send waits for a slot or for the write before it.
            sender = asyncio.create_task(self._send())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        elif self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush_after_delay())
        try:
            return await asyncio.wait_for(asyncio.shield(answer), self.timeout_s)
        except TimeoutError:
            answer.cancel()  # no one waits for it now: a late answer or failure is dropped, not logged as unread
            self._give_up_a_silent_stream()
            raise DeadlineExceeded(f"no answer to an authorize check within {self.timeout_s:g} s") from None

    def _give_up_a_silent_stream(self) -> None:
        """Answers come in request order, so a stream that has not answered its oldest batch for timeout_s has
        answered nothing since: without this every later check would queue behind it and time out too, for ever
        (batches_in_flight_max batches wait there, and nothing ends the stream)."""
        if self._call is None or not self._in_flight:
            return
        _, written_at_s = self._in_flight[0]
        if asyncio.get_running_loop().time() - written_at_s >= self.timeout_s:
            silent_s = f"{self.timeout_s:g} s"
            self._fail(self._call, DeadlineExceeded(f"the AuthorizeBatches stream answered nothing for {silent_s}"))

    async def _flush_after_delay(self) -> None:
        await asyncio.sleep(self.max_delay_ms / 1000)
        if self._waiting:
            await self._send()

    async def _send(self) -> None:
        batch, self._waiting = self._waiting, []
        if not batch:
            return
        await self._slots.acquire()
        # One write at a time, in the order the batches join the in-flight queue: answers come back in it.
        async with self._writing:
            try:
                if self._call is None:
                    self._call = self._stub.AuthorizeBatches()
                    self._reader = asyncio.create_task(self._read(self._call, _ServerStatus(self._call)))
                call = self._call
                self._in_flight.append((batch, asyncio.get_running_loop().time()))
                await call.write(balance_pb2.AuthorizeBatch(requests=[request for request, _ in batch]))
            except (grpc.RpcError, asyncio.InvalidStateError):
                # The call has ended (the write's own error is grpc.aio's, not the server's status): its reader
                # fails every check in flight on it with the server's status.
                pass
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise
                # Else grpc.aio's word for a write on a call its reader has failed (cancelled) meanwhile.

    async def _read(self, call: Any, server_status: _ServerStatus) -> None:
        try:
            while True:
                result = await call.read()
                if result is grpc.aio.EOF:
                    self._fail(call, Unavailable("the server ended the AuthorizeBatches stream"))
                    return
                batch, _ = self._in_flight.popleft()
                self._slots.release()
                if len(result.responses) != len(batch):
                    self._fail(call, TariffError(f"{len(result.responses)} answers for {len(batch)} checks"))
                    return
                for (request, answer), response in zip(batch, result.responses, strict=True):
                    if response.request_id != request.request_id:
                        self._fail(call, TariffError(f"answer {response.request_id!r} for {request.request_id!r}"))
                        return
                    if not answer.done():
                        answer.set_result(response)
        except grpc.RpcError as e:
            self._fail(call, error_from_rpc(server_status.outcome(e)))

    def _fail(self, call: Any, error: TariffError) -> None:
        """Fails every check in flight on `call`, the current stream; the next check opens a new stream. A call
        already failed is not the current one: the checks in flight are the new stream's, left alone."""
        if call is not self._call:
            return
        call.cancel()
        self._call = None
        while self._in_flight:
            for _, answer in self._in_flight.popleft()[0]:
                if not answer.done():
                    answer.set_exception(error)
            self._slots.release()

    async def close(self) -> None:
        """Sends what is waiting, waits for the answers in flight, and ends the stream."""
        if self._closed:
            return
        if self._waiting:
            await self._send()
        self._closed = True
        if self._senders:
            await asyncio.wait(set(self._senders), timeout=self.timeout_s)
        pending = [answer for batch, _ in self._in_flight for _, answer in batch]
        if pending:
            await asyncio.wait(pending, timeout=self.timeout_s)
        if self._call is not None:
            await self._call.done_writing()
        if self._reader is not None:
            await asyncio.wait([self._reader], timeout=self.timeout_s)
            self._reader.cancel()
        if self._call is not None:
            self._call.cancel()
            self._call = None
