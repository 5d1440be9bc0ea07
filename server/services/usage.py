"""UsageService: usage batches as raw bytes to the kernel and its ack back, under a process-wide intake budget."""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Callable, Iterable
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message
from tariff.v1 import usage_pb2

from engine.billing import Billing, Ingested
from engine.control import TEXT_BYTES_MAX
from server import auth, oplog
from server.errors import (
    DeadlineExceeded,
    check_deadline,
    cut_text,
    streaming,
    unary,
)
from server.sequencer import Sequencer
from server.services.common import (
    BATCH_EVENTS_MAX_DEFAULT,
    INTAKE_BYTES_MAX_DEFAULT,
    STREAM_BATCHES_IN_FLIGHT_MAX,
    USAGE_SERVICE,
    Context,
    _Base,
    wall_ms,
)
from server.usage_batches import IngestStream, UsageBatch


class IntakeBudget:
    """Bytes of usage batches read but not yet answered, across every stream and call of the process.

    Each stream already stops reading past its own in-flight limit; this bounds the sum over all streams, so
    memory stays bounded however many clients send. Past the budget, every ingest waits before reading on
    (gRPC flow control then pushes back on the senders). A batch larger than the whole budget still passes,
    alone.
    """

    def __init__(self, bytes_max: int) -> None:
        assert bytes_max > 0
        self.bytes_max = bytes_max
        self.bytes_used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, size_bytes: int) -> int:
        """Waits for room; returns what was taken, to hand back to release()."""
        taken = min(size_bytes, self.bytes_max)
        while self.bytes_used + taken > self.bytes_max:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        self.bytes_used += taken
        return taken

    def release(self, taken: int) -> None:
        """Synchronous, so that it also runs in the cleanup of a cancelled call."""
        self.bytes_used -= taken
        assert self.bytes_used >= 0
        while self._waiters:  # every waiter re-checks the room
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class UsageService(_Base):
    """IngestUsage and IngestUsageBatch on raw bytes: a generic handler hands the servicer each UsageBatch as
    received and sends the IngestAck bytes the kernel encoded. No protobuf object, no Python object per event."""

    batch_events_max = BATCH_EVENTS_MAX_DEFAULT
    stream_batches_in_flight_max = STREAM_BATCHES_IN_FLIGHT_MAX
    ack_bytes_max = 16 * 1024 * 1024  # gRPC sends no larger message: set from --message-mb-max (server/app.py)

    def __init__(self, billing: Billing, sequencer: Sequencer, clock_ms: Callable[[], int] = wall_ms) -> None:
        super().__init__(billing, sequencer, clock_ms)
        self.intake = IntakeBudget(INTAKE_BYTES_MAX_DEFAULT)

    def generic_handler(self) -> grpc.GenericRpcHandler:
        # No (de)serializer: request and response are the bytes on the wire.
        return grpc.method_handlers_generic_handler(
            USAGE_SERVICE,
            {
                "IngestUsage": grpc.stream_stream_rpc_method_handler(self.IngestUsage),
                "IngestUsageBatch": grpc.unary_unary_rpc_method_handler(self.IngestUsageBatch),
            },
        )

    def _batch(self, data: bytes, stream: IngestStream | None = None) -> UsageBatch:
        """The writer's command for these bytes, with the customers the caller's key may touch and the
        IngestUsage stream they came on (None for IngestUsageBatch)."""
        identity = auth.caller.get()
        if identity is None or identity.customers is None:
            return UsageBatch(data, self.batch_events_max, stream=stream)
        return UsageBatch(data, self.batch_events_max, sorted(identity.customers), identity.name, stream)

    @staticmethod
    def _refuse_a_restricted_key_naming_an_actor(context: Context) -> None:
        """PERMISSION_DENIED when a key restricted to some customers sends x-actor, as on every other
        state-changing call (README "API keys"). Usage records no actor, so unrestricted keys skip the check."""
        identity = auth.caller.get()
        if identity is not None and identity.customers is not None:
            auth.actor(auth.actor_named(context.invocation_metadata()))

    @unary
    async def IngestUsageBatch(self, request: bytes, context: Context) -> bytes:
        self._refuse_a_restricted_key_naming_an_actor(context)
        taken = await self.intake.acquire(len(request))
        try:
            deadline = check_deadline(context)
            _, result = await self.sequencer.run(self._batch(request), deadline)
        finally:
            self.intake.release(taken)
        assert isinstance(result, Ingested)
        return fitted_ack(result.ack, self.ack_bytes_max)

    @streaming
    async def IngestUsage(self, request_iterator: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        # Batches are submitted as they arrive (so concurrent streams share group commits) and acked in order.
        # At most STREAM_BATCHES_IN_FLIGHT_MAX await their commit: past that the server stops reading the stream.
        self._refuse_a_restricted_key_naming_an_actor(context)
        # Once a batch is refused whole the stream ends with it, and the writer applies none of the later ones.
        stream = IngestStream()
        slots = asyncio.Semaphore(self.stream_batches_in_flight_max)
        # Never holds more than the slots allow (plus the end marker), so putting never has to wait.
        in_flight: asyncio.Queue[tuple[int, asyncio.Future[tuple[int, object]]] | None] = asyncio.Queue()
        held_bytes = [0]  # taken from the process-wide intake budget and not yet given back

        async def read() -> None:
            try:
                async for data in request_iterator:
                    await slots.acquire()
                    taken = await self.intake.acquire(len(data))
                    held_bytes[0] += taken
                    try:
                        future = self.sequencer.submit(self._batch(data, stream), check_deadline(context))
                    except DeadlineExceeded as exc:
                        future = asyncio.get_running_loop().create_future()
                        future.set_exception(exc)
                        in_flight.put_nowait((taken, future))
                        return  # the stream ends with this error: read no further batch
                    in_flight.put_nowait((taken, future))
            finally:
                in_flight.put_nowait(None)

        reader = asyncio.create_task(read())
        oplog.activity.streams_open += 1
        try:
            while (item := await in_flight.get()) is not None:
                taken, future = item
                try:
                    _, result = await future
                finally:
                    held_bytes[0] -= taken
                    self.intake.release(taken)
                slots.release()
                assert isinstance(result, Ingested)
                yield fitted_ack(result.ack, self.ack_bytes_max)
            await reader  # a broken request stream surfaces here
        finally:
            oplog.activity.streams_open -= 1
            reader.cancel()
            while not in_flight.empty():  # never answered (the stream ended): their outcome is nobody's to read
                if (item := in_flight.get_nowait()) is not None:
                    item[1].add_done_callback(_outcome_unread)
            if held_bytes[0]:
                # Batches read but never answered (the stream broke): give their room back.
                self.intake.release(held_bytes[0])
                held_bytes[0] = 0


def _outcome_unread(future: asyncio.Future[tuple[int, object]]) -> None:
    """Marks the exception of a batch no ack will answer as retrieved (asyncio would log it as never read)."""
    if not future.cancelled():
        future.exception()


# What a rejection's or notice's message is cut to in an ack that would not fit a gRPC message otherwise.
ACK_MESSAGE_BYTES_MAX = 512


def fitted_ack(ack: bytes, bytes_max: int) -> bytes:
    """The IngestAck the kernel encoded, so that gRPC can send it (`bytes_max`, --message-mb-max): as it is when
    it fits; else with each rejection's and notice's message cut to ACK_MESSAGE_BYTES_MAX bytes, then, if that
    is still too large, left out, and then each transaction id over TEXT_BYTES_MAX bytes (INVALID_EVENT: no event
    has one) cut to that (an ack of 10,000 such ids echoed whole is larger than the batch that sent them). Counts,
    indexes, reasons and every other id stay whole: a batch whose ack could not be sent was committed all the
    same, and every resend would fail alike, its outcome never known. A rejection echoing its event's id adds its
    index and reason to it, so a batch filling its message with refused events (possible under a lowered
    --message-mb-max) has an ack larger than itself even so: then the ids the ack echoes are left out, each
    index naming its event in the batch its sender holds (`ids_left_out`)."""
    fitted = fitted_answer(ack, bytes_max, usage_pb2.IngestAck.FromString, lambda a: [*a.rejected, *a.notices])
    if len(fitted) <= bytes_max:
        return fitted
    cut = usage_pb2.IngestAck.FromString(fitted)
    for rejection in cut.rejected:
        rejection.transaction_id = cut_text(rejection.transaction_id, TEXT_BYTES_MAX)
    encoded = cut.SerializeToString()
    if len(encoded) <= bytes_max:
        return encoded
    return ids_left_out(cut).SerializeToString()


def ids_left_out(ack: usage_pb2.IngestAck) -> usage_pb2.IngestAck:
    """`ack` without the ids its rejections and notices echo: an index and a reason each, at most 10 bytes (an
    index under 2^32: 5 bytes of varint and its tag, a reason 2, their entry's tag and length 2)."""
    for rejection in ack.rejected:
        rejection.transaction_id = ""
    for notice in ack.notices:
        notice.transaction_id = ""
        notice.reservation_id = ""
    return ack


Answer = TypeVar("Answer", bound=Message)


def fitted_answer(
    encoded: bytes, bytes_max: int, decode: Callable[[bytes], Answer], carriers: Callable[[Answer], Iterable[Any]]
) -> bytes:
    """An answer the kernel encoded, within `bytes_max`: as it is when it fits; else with the `message` of each of
    its `carriers` cut to ACK_MESSAGE_BYTES_MAX bytes, then, if that is still too large, left out."""
    if len(encoded) <= bytes_max:
        return encoded
    fitted = decode(encoded)
    for limit in (ACK_MESSAGE_BYTES_MAX, 0):
        for carrier in carriers(fitted):
            carrier.message = cut_text(carrier.message, limit)
        encoded = fitted.SerializeToString()
        if len(encoded) <= bytes_max:
            break
    return encoded
