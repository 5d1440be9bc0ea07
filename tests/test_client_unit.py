"""Unit tests of the Python client (clients/python/tariff/client.py), with no Tariff server.

A fake UsageService (grpc.aio, in-process, on 127.0.0.1 port 0) commits batches into a dict
keyed by transaction id and acks them in order; knobs make it abort a connection after N
batches (optionally after committing the batch, i.e. the ack is lost), hold acks, never ack, or
be replaced by a fresh server on the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeVar

import grpc
import grpc.aio
import pytest
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tariff import (
    AsyncTariffClient,
    DeadlineExceeded,
    FieldViolation,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RetryPolicy,
    TariffClient,
    TariffError,
    Unauthenticated,
    Unavailable,
    Usage,
    UsageBatcher,
)
from tariff.v1 import usage_pb2, usage_pb2_grpc

T = TypeVar("T")

FAST_RETRY = RetryPolicy(max_attempts=20, max_elapsed_s=10.0, initial_backoff_s=0.01, max_backoff_s=0.05)
CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 20),
    ("grpc.min_reconnect_backoff_ms", 20),
    ("grpc.max_reconnect_backoff_ms", 100),
]


# ---------------------------------------------------------------------------------------------
# The fake server


@dataclasses.dataclass
class Store:
    """What the fake has made durable; shared by the servers of a simulated restart."""

    committed: dict[str, usage_pb2.UsageEvent] = dataclasses.field(default_factory=dict)
    seq: int = 0

    def commit(self, batch: usage_pb2.UsageBatch) -> usage_pb2.IngestAck:
        accepted = duplicates = 0
        for event in batch.events:
            if event.transaction_id in self.committed:
                duplicates += 1
            else:
                self.committed[event.transaction_id] = event
                accepted += 1
        self.seq += 1
        return usage_pb2.IngestAck(
            batch_id=batch.batch_id, accepted=accepted, duplicates=duplicates, journal_seq=self.seq
        )


@dataclasses.dataclass
class Abort:
    code: Any
    details: str = ""
    commit_first: bool = False  # commit the batch, then fail before acking it (a lost ack)
    rich_status: status_pb2.Status | None = None


class FakeUsage(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, store: Store | None = None) -> None:
        self.store = store if store is not None else Store()
        self.connections: list[list[usage_pb2.UsageBatch]] = []  # batches received, per call
        self.metadata: list[dict[str, str]] = []  # invocation metadata, per call
        self.unary_time_remaining: list[float | None] = []
        self.abort_at: dict[tuple[int, int], Abort] = {}  # (call index, batch index in call)
        self.abort_every_call: Abort | None = None  # abort at the first batch of every call
        self.unary_abort: Abort | None = None
        self.ack_gate: asyncio.Event | None = None  # acks wait for it (batches are committed first)
        self.silent_calls: set[int] = set()  # calls that receive and commit but never ack
        self.acked = 0
        self.max_unacked = 0

    @property
    def received(self) -> int:
        return sum(len(c) for c in self.connections)

    async def _abort(self, context: grpc.aio.ServicerContext, abort: Abort) -> NoReturn:
        trailers: tuple[tuple[str, bytes], ...] = ()
        if abort.rich_status is not None:
            trailers = (("grpc-status-details-bin", abort.rich_status.SerializeToString()),)
        await context.abort(abort.code, abort.details, trailing_metadata=trailers)
        raise AssertionError("context.abort() returned")

    async def IngestUsage(
        self, request_iterator: AsyncIterator[usage_pb2.UsageBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[usage_pb2.IngestAck]:
        # Like the real server: reads (and commits) ahead while earlier acks are still pending.
        call = len(self.connections)
        self.connections.append([])
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        outbox: asyncio.Queue[usage_pb2.IngestAck | Abort | None] = asyncio.Queue()
        acked_here = 0

        async def read() -> None:
            try:
                async for batch in request_iterator:
                    index = len(self.connections[call])
                    self.connections[call].append(batch)
                    self.max_unacked = max(self.max_unacked, len(self.connections[call]) - acked_here)
                    abort = self.abort_at.get((call, index)) or self.abort_every_call
                    if abort is not None:
                        if abort.commit_first:
                            self.store.commit(batch)
                        await outbox.put(abort)
                        return
                    ack = self.store.commit(batch)
                    if call not in self.silent_calls:
                        await outbox.put(ack)
                if call in self.silent_calls:
                    await asyncio.Event().wait()
            finally:
                await outbox.put(None)

        reader = asyncio.create_task(read())
        try:
            while (item := await outbox.get()) is not None:
                if isinstance(item, Abort):
                    await self._abort(context, item)
                if self.ack_gate is not None:
                    await self.ack_gate.wait()
                acked_here += 1
                self.acked += 1
                yield item
        finally:
            reader.cancel()

    async def IngestUsageBatch(
        self, request: usage_pb2.UsageBatch, context: grpc.aio.ServicerContext
    ) -> usage_pb2.IngestAck:
        self.metadata.append({k: v for k, v in context.invocation_metadata() if isinstance(v, str)})
        self.unary_time_remaining.append(context.time_remaining())
        if self.unary_abort is not None:
            await self._abort(context, self.unary_abort)
        return self.store.commit(request)


@dataclasses.dataclass
class Running:
    server: grpc.aio.Server
    port: int
    health: Any

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"


async def start_server(servicer: FakeUsage, port: int = 0) -> Running:
    server = grpc.aio.server()
    usage_pb2_grpc.add_UsageServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    bound = server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    return Running(server, bound, health_servicer)


@contextlib.asynccontextmanager
async def running(servicer: FakeUsage) -> AsyncIterator[Running]:
    srv = await start_server(servicer)
    try:
        yield srv
    finally:
        await srv.server.stop(None)


def make_client(target: str, **kwargs: Any) -> AsyncTariffClient:
    return AsyncTariffClient(target, channel_options=CHANNEL_OPTIONS, **kwargs)


def events(batch: int, n: int) -> list[Usage]:
    return [
        Usage(
            transaction_id=f"b{batch}-e{i}",
            customer_id=f"cust-{i % 3}",
            event_type="ai_action",
            timestamp_ms=1_700_000_000_000 + i,
            dimensions={"model": "gpt-4", "region": "us-east"},
            values={"input_tokens": float(100 + i), "output_tokens": 7.5},
        )
        for i in range(n)
    ]


def txids(batch: usage_pb2.UsageBatch) -> list[str]:
    return [e.transaction_id for e in batch.events]


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await asyncio.wait_for(coro, 20)

    return asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Usage


def test_usage_to_proto_keeps_every_field() -> None:
    usage = Usage(
        transaction_id="tx-1",
        customer_id="cust-1",
        event_type="ai_action",
        timestamp_ms=1_700_000_123_456,
        dimensions={"model": "gpt-4", "region": "eu-west"},
        values={"input_tokens": 1234.0, "output_tokens": 0.25},
        reservation_id="res-9",
    )
    event = usage.to_proto()
    assert event.transaction_id == "tx-1"
    assert event.customer_id == "cust-1"
    assert event.event_type == "ai_action"
    assert event.timestamp_ms == 1_700_000_123_456
    assert dict(event.dimensions) == {"model": "gpt-4", "region": "eu-west"}
    assert dict(event.values) == {"input_tokens": 1234.0, "output_tokens": 0.25}
    assert event.reservation_id == "res-9"
    # Every wire field has a Usage field of the same name, and the round trip is lossless.
    assert {f.name for f in usage_pb2.UsageEvent.DESCRIPTOR.fields} == {f.name for f in dataclasses.fields(Usage)}
    assert len(event.ListFields()) == len(usage_pb2.UsageEvent.DESCRIPTOR.fields)
    assert Usage.from_proto(event) == usage


# ---------------------------------------------------------------------------------------------
# UsageStream


def test_each_send_gets_its_own_ack_in_order() -> None:
    fake = FakeUsage()
    sizes = [1, 5, 2, 9, 3, 7, 4, 8, 6, 10, 2, 1]

    async def main() -> None:
        completed: list[int] = []
        async with (
            running(fake) as srv,
            make_client(srv.target) as client,
            client.usage_stream(max_in_flight_batches=4) as stream,
        ):

            async def send(i: int) -> usage_pb2.IngestAck:
                ack = await stream.send(events(i, sizes[i]), batch_id=f"batch-{i}")
                completed.append(i)
                return ack

            acks = await asyncio.gather(*(send(i) for i in range(len(sizes))))
            unnamed = await stream.send(events(99, 3))
        assert [a.batch_id for a in acks] == [f"batch-{i}" for i in range(len(sizes))]
        assert [a.accepted for a in acks] == sizes
        assert [a.journal_seq for a in acks] == sorted(a.journal_seq for a in acks)
        assert completed == list(range(len(sizes)))  # acks resolved sends in send order
        assert len(fake.connections) == 1
        assert [b.batch_id for b in fake.connections[0][:-1]] == [f"batch-{i}" for i in range(len(sizes))]
        # A send without batch_id gets a generated one, echoed in its ack.
        assert unnamed.batch_id and unnamed.batch_id == fake.connections[0][-1].batch_id
        assert unnamed.accepted == 3

    run(main())


def test_resends_unacked_batches_with_identical_ids_after_unavailable() -> None:
    fake = FakeUsage()
    # The server commits the third batch of the first call, then fails before acking it.
    fake.abort_at[(0, 2)] = Abort(grpc.StatusCode.UNAVAILABLE, "going away", commit_first=True)
    sizes = [3, 4, 5, 6, 7]
    sent = [events(i, n) for i, n in enumerate(sizes)]

    async def main() -> None:
        async with (
            running(fake) as srv,
            make_client(srv.target) as client,
            client.usage_stream(retry=FAST_RETRY) as stream,
        ):
            acks = await asyncio.gather(*(stream.send(sent[i], batch_id=f"b{i}") for i in range(5)))
            assert stream.reconnects == 1
        first, second = fake.connections
        assert [b.batch_id for b in first] == ["b0", "b1", "b2"]
        # Every unacknowledged batch was resent, in order, with the same transaction ids and content.
        assert [b.batch_id for b in second] == ["b2", "b3", "b4"]
        for batch, i in zip(second, [2, 3, 4], strict=True):
            assert txids(batch) == [u.transaction_id for u in sent[i]]
            assert list(batch.events) == [u.to_proto() for u in sent[i]]
        assert [a.batch_id for a in acks] == ["b0", "b1", "b2", "b3", "b4"]
        # b2 was committed before the break: its resend comes back as duplicates.
        assert (acks[2].accepted, acks[2].duplicates) == (0, 5)
        assert [(a.accepted, a.duplicates) for a in acks[3:]] == [(6, 0), (7, 0)]
        assert [(a.accepted, a.duplicates) for a in acks[:2]] == [(3, 0), (4, 0)]
        assert len(fake.store.committed) == sum(sizes)

    run(main())


def test_reconnects_and_resends_after_server_restart() -> None:
    store = Store()
    first = FakeUsage(store)
    first.ack_gate = asyncio.Event()  # commits but never acks: the acks die with the server
    sent = [events(i, 4) for i in range(3)]

    async def main() -> None:
        srv = await start_server(first)
        port = srv.port
        second = FakeUsage(store)
        try:
            async with make_client(srv.target) as client, client.usage_stream(retry=FAST_RETRY) as stream:
                sends = [asyncio.create_task(stream.send(sent[i], batch_id=f"b{i}")) for i in range(3)]
                await wait_until(lambda: first.received == 3)
                await srv.server.stop(None)  # the process "dies": connection gone
                await asyncio.sleep(0.2)  # reconnect attempts fail meanwhile
                srv = await start_server(second, port=port)  # back on the same port, same store
                acks = await asyncio.gather(*sends)
                assert stream.reconnects >= 1
        finally:
            await srv.server.stop(None)
        assert [txids(b) for b in second.connections[-1]] == [[u.transaction_id for u in s] for s in sent]
        assert [(a.batch_id, a.accepted, a.duplicates) for a in acks] == [("b0", 0, 4), ("b1", 0, 4), ("b2", 0, 4)]
        assert len(store.committed) == 12

    run(main())


def test_ack_timeout_breaks_a_silent_stream_and_resends() -> None:
    fake = FakeUsage()
    fake.silent_calls = {0}  # the first call swallows batches without acking

    async def main() -> None:
        async with (
            running(fake) as srv,
            make_client(srv.target) as client,
            client.usage_stream(retry=FAST_RETRY, ack_timeout_s=0.3) as stream,
        ):
            ack = await stream.send(events(0, 2), batch_id="b0")
        assert len(fake.connections) == 2
        assert [b.batch_id for b in fake.connections[1]] == ["b0"]
        assert (ack.accepted, ack.duplicates) == (0, 2)

    run(main())


def _bad_request_status(code: int, message: str) -> status_pb2.Status:
    bad = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="events[0].timestamp_ms", description="not a timestamp", reason="BAD_TS"
            )
        ]
    )
    status = status_pb2.Status(code=code, message=message)
    status.details.add().Pack(bad)
    return status


@pytest.mark.parametrize(
    ("code", "error_type"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgument),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhausted),
        (grpc.StatusCode.UNAUTHENTICATED, Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDenied),
    ],
)
def test_non_retryable_status_raises_typed_error(code: Any, error_type: type[TariffError]) -> None:
    fake = FakeUsage()
    rich = _bad_request_status(code.value[0], "nope") if code == grpc.StatusCode.INVALID_ARGUMENT else None
    fake.abort_at[(0, 1)] = Abort(code, "nope", rich_status=rich)

    async def main() -> None:
        async with running(fake) as srv, make_client(srv.target) as client:
            stream = client.usage_stream(retry=FAST_RETRY)
            # Both in flight at once: the server acks b0, then fails the call on b1. The ack sent
            # before the failing status still reaches b0's sender; b1's sender gets the error.
            results = await asyncio.gather(
                stream.send(events(0, 1), batch_id="b0"),
                stream.send(events(1, 1), batch_id="b1"),
                return_exceptions=True,
            )
            ack0, error = results
            assert isinstance(ack0, usage_pb2.IngestAck)
            assert isinstance(error, error_type)
            # The stream stays failed: the next send raises the same error without a new call.
            with pytest.raises(error_type):
                await stream.send(events(2, 1))
            await stream.close()  # the failure was already raised to a sender
        assert ack0.accepted == 1
        assert error.code == code
        assert error.details == "nope"
        if rich is not None:
            assert error.field_violations == (FieldViolation("events[0].timestamp_ms", "not a timestamp", "BAD_TS"),)
        assert len(fake.connections) == 1  # never retried

    run(main())


def test_max_in_flight_batches_bounds_unacknowledged_sends() -> None:
    fake = FakeUsage()
    fake.ack_gate = asyncio.Event()

    async def main() -> None:
        async with (
            running(fake) as srv,
            make_client(srv.target) as client,
            client.usage_stream(max_in_flight_batches=3) as stream,
        ):
            sends = [asyncio.create_task(stream.send(events(i, 2), batch_id=f"b{i}")) for i in range(7)]
            await wait_until(lambda: fake.received == 3)
            await asyncio.sleep(0.2)
            # Three batches out, none acked: the other four sends wait for a slot.
            assert fake.received == 3
            assert stream.in_flight == 3
            assert not any(t.done() for t in sends)
            assert fake.ack_gate is not None
            fake.ack_gate.set()
            acks = await asyncio.gather(*sends)
        assert [a.batch_id for a in acks] == [f"b{i}" for i in range(7)]
        assert fake.max_unacked <= 3

    run(main())


def test_gives_up_after_bounded_reconnect_attempts() -> None:
    fake = FakeUsage()
    fake.abort_every_call = Abort(grpc.StatusCode.UNAVAILABLE, "still down")
    policy = RetryPolicy(max_attempts=3, max_elapsed_s=10.0, initial_backoff_s=0.01, max_backoff_s=0.02)

    async def main() -> None:
        async with running(fake) as srv, make_client(srv.target) as client, client.usage_stream(retry=policy) as stream:
            started = time.monotonic()
            with pytest.raises(Unavailable) as raised:
                await stream.send(events(0, 1), batch_id="b0")
            assert time.monotonic() - started < 5
        assert len(fake.connections) == 4  # the first call and three reconnects
        assert any("gave up after 3 reconnect" in note for note in raised.value.__notes__)

    run(main())


def test_stream_fails_instead_of_hanging_when_the_client_is_closed() -> None:
    fake = FakeUsage()

    async def main() -> None:
        async with running(fake) as srv:
            client = make_client(srv.target)
            stream = client.usage_stream(retry=FAST_RETRY)
            await stream.send(events(0, 1))  # the call is open, idle
            await client.close()
            with pytest.raises(TariffError):
                await asyncio.wait_for(stream.send(events(1, 1)), 5)

    run(main())


# ---------------------------------------------------------------------------------------------
# UsageBatcher


def test_batcher_flushes_when_batch_is_full() -> None:
    fake = FakeUsage()

    async def main() -> None:
        async with running(fake) as srv, make_client(srv.target) as client:
            batcher = client.usage_batcher(batch_events_max=5, flush_interval_ms=10_000, buffer_events_max=50)
            async with batcher:
                await batcher.add_many(events(0, 12))
                await wait_until(lambda: fake.received == 2)
                await asyncio.sleep(0.1)
                # Two full batches went at once; the 2-event remainder waits for the (long) interval.
                assert [len(b.events) for b in fake.connections[0]] == [5, 5]
                assert batcher.buffered == 2
            assert [len(b.events) for b in fake.connections[0]] == [5, 5, 2]  # close() flushed it
            assert batcher.accepted == 12
        assert [t for b in fake.connections[0] for t in txids(b)] == [u.transaction_id for u in events(0, 12)]

    run(main())


def test_batcher_flushes_on_interval() -> None:
    fake = FakeUsage()

    async def main() -> None:
        async with (
            running(fake) as srv,
            make_client(srv.target) as client,
            client.usage_batcher(batch_events_max=1_000, flush_interval_ms=150) as batcher,
        ):
            started = time.monotonic()
            await batcher.add_many(events(0, 3))
            await asyncio.sleep(0.05)
            assert fake.received == 0  # not full, not old enough
            await wait_until(lambda: fake.received == 1, timeout_s=2.0)
            assert time.monotonic() - started >= 0.14
            assert [len(b.events) for b in fake.connections[0]] == [3]

    run(main())


def test_batcher_add_waits_when_buffer_is_full() -> None:
    fake = FakeUsage()
    fake.ack_gate = asyncio.Event()

    async def main() -> None:
        async with running(fake) as srv, make_client(srv.target) as client:
            stream = client.usage_stream(max_in_flight_batches=1)
            batcher = UsageBatcher(stream, batch_events_max=2, flush_interval_ms=10, buffer_events_max=4)
            added = 0

            async def produce() -> None:
                nonlocal added
                for usage in events(0, 10):
                    await batcher.add(usage)
                    added += 1

            producer = asyncio.create_task(produce())
            await asyncio.sleep(0.3)
            # One batch (2 events) in flight and unacked, 4 buffered: the 7th add waits.
            assert added == 6
            assert batcher.buffered == 4
            assert not producer.done()
            assert fake.ack_gate is not None
            fake.ack_gate.set()
            await producer
            await batcher.close()
            await stream.close()
        assert sum(len(b.events) for b in fake.connections[0]) == 10
        assert batcher.accepted == 10

    run(main())


# ---------------------------------------------------------------------------------------------
# Client plumbing: metadata, deadlines, typed errors, health, sync client


def test_api_key_metadata_and_default_deadline_on_every_path() -> None:
    fake = FakeUsage()

    async def main() -> None:
        async with running(fake) as srv, make_client(srv.target, api_key="k-123", default_timeout_s=7.0) as client:
            await client.ingest_batch(events(0, 1), batch_id="convenience")
            await client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="raw"))  # raw stub
            async with client.usage_stream() as stream:
                await stream.send(events(1, 1))
        assert [m.get("authorization") for m in fake.metadata] == ["Bearer k-123"] * 3
        for remaining in fake.unary_time_remaining:
            assert remaining is not None and 5.0 < remaining <= 7.1

    run(main())


def test_unary_errors_are_typed() -> None:
    fake = FakeUsage()
    fake.unary_abort = Abort(grpc.StatusCode.NOT_FOUND, "no such customer")

    async def main() -> None:
        async with running(fake) as srv, make_client(srv.target) as client:
            with pytest.raises(NotFound) as raised:
                await client.ingest_batch(events(0, 1))
        assert isinstance(raised.value, TariffError)
        assert raised.value.code == grpc.StatusCode.NOT_FOUND
        assert raised.value.details == "no such customer"
        assert raised.value.field_violations == ()

    run(main())


def test_wait_ready_waits_for_serving() -> None:
    fake = FakeUsage()

    async def main() -> None:
        async with running(fake) as srv, make_client(srv.target) as client:
            await srv.health.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
            with pytest.raises(DeadlineExceeded):
                await client.wait_ready(timeout_s=0.3)
            asyncio.get_running_loop().call_later(0.2, lambda: asyncio.ensure_future(srv.health.set("", 1)))
            started = time.monotonic()
            await client.wait_ready(timeout_s=5.0)
            assert time.monotonic() - started >= 0.15

    run(main())


def test_sync_client_convenience_methods() -> None:
    fake = FakeUsage()

    def use_sync_client(target: str) -> list[Any]:
        with TariffClient(target, api_key="k-sync", channel_options=CHANNEL_OPTIONS) as client:
            client.wait_ready(timeout_s=5.0)
            ack = client.ingest_batch(events(0, 2), batch_id="sync")
            fake.unary_abort = Abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "bad",
                rich_status=_bad_request_status(code_pb2.INVALID_ARGUMENT, "bad"),
            )
            try:
                client.ingest_batch(events(1, 1))
            except InvalidArgument as e:
                return [ack, e]
            raise AssertionError("no error raised")

    async def main() -> list[Any]:
        async with running(fake) as srv:
            return await asyncio.to_thread(use_sync_client, srv.target)

    ack, error = run(main())
    assert (ack.batch_id, ack.accepted) == ("sync", 2)
    assert error.field_violations[0].field == "events[0].timestamp_ms"
    assert fake.metadata[0]["authorization"] == "Bearer k-sync"
