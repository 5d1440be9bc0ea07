"""Locust load test: product backends streaming usage and gateways doing Authorize + settle, over gRPC.

Run it through `make loadtest` (loadtests/run.py starts a server on a temp data dir, seeds the bench
catalogue, runs this headless for LOADTEST_S seconds and stops the server), or by hand against a seeded
server: `locust -f loadtests/locustfile.py --headless -u 20 -r 10 -t 30s --host 127.0.0.1:50051`.

Environment: LOADTEST_CUSTOMERS (seeded customers, default 200), LOADTEST_BACKEND_WEIGHT and
LOADTEST_GATEWAY_WEIGHT (user mix, default 1 and 3), LOADTEST_BATCH_EVENTS (events per streamed batch,
default 100). Every RPC is reported to locust as a request (type "grpc"), so its summary gives latency
percentiles and failures; an ack that rejects any event counts as a failure.
"""

from __future__ import annotations

import itertools
import os
import queue
import time
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import grpc.experimental.gevent as grpc_gevent

# Locust runs users as greenlets: gRPC's C core must cooperate with gevent before any channel exists.
grpc_gevent.init_gevent()

from locust import User, between, events, task  # noqa: E402  (after init_gevent, on purpose)
from tariff.v1 import balance_pb2, balance_pb2_grpc, usage_pb2, usage_pb2_grpc  # noqa: E402

from server.bench.seed import MODELS, REGIONS, customer_id, event_templates  # noqa: E402

CUSTOMERS = int(os.environ.get("LOADTEST_CUSTOMERS", "200"))
BATCH_EVENTS = int(os.environ.get("LOADTEST_BATCH_EVENTS", "100"))
CALL_TIMEOUT_S = 30.0
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]
_serial = itertools.count()


def _report(name: str, started: float, response_length: int, exception: BaseException | None) -> None:
    events.request.fire(  # type: ignore[no-untyped-call]  # locust leaves it unannotated
        request_type="grpc",
        name=name,
        response_time=(time.perf_counter() - started) * 1000,
        response_length=response_length,
        exception=exception,
        context={},
    )


class RejectedEvents(Exception):
    """An ack that refused events: the load test's events are all valid, so this is a failure."""


def _event(customer: int) -> usage_pb2.UsageEvent:
    number = next(_serial)
    event = usage_pb2.UsageEvent()
    event.CopyFrom(event_templates()[number % (len(MODELS) * len(REGIONS))])
    event.transaction_id = f"lt-{uuid.uuid4().hex}"
    event.customer_id = customer_id(customer)
    event.timestamp_ms = time.time_ns() // 1_000_000
    return event


class GrpcUser(User):
    abstract = True

    def on_start(self) -> None:
        self.channel = grpc.insecure_channel(self.host, options=CHANNEL_OPTIONS)
        self.usage = usage_pb2_grpc.UsageServiceStub(self.channel)  # type: ignore[no-untyped-call]
        self.balance = balance_pb2_grpc.BalanceServiceStub(self.channel)  # type: ignore[no-untyped-call]

    def on_stop(self) -> None:
        self.channel.close()


class ProductBackend(GrpcUser):
    """Streams batches of usage over one IngestUsage call, one batch in flight, each ack timed."""

    weight = int(os.environ.get("LOADTEST_BACKEND_WEIGHT", "1"))
    wait_time = between(0.05, 0.2)

    def on_start(self) -> None:
        super().on_start()
        self.requests: queue.Queue[usage_pb2.UsageBatch | None] = queue.Queue()
        self.acks: Iterator[usage_pb2.IngestAck] = self.usage.IngestUsage(iter(self.requests.get, None))

    def on_stop(self) -> None:
        self.requests.put(None)
        super().on_stop()

    @task
    def stream_batch(self) -> None:
        batch = usage_pb2.UsageBatch(batch_id=uuid.uuid4().hex)
        for _ in range(BATCH_EVENTS):
            batch.events.append(_event(next(_serial) % CUSTOMERS))
        started = time.perf_counter()
        try:
            self.requests.put(batch)
            ack = next(self.acks)
            error: BaseException | None = None
            if ack.rejected:
                first = ack.rejected[0]
                error = RejectedEvents(
                    f"{len(ack.rejected)} rejected, first {usage_pb2.RejectReason.Name(first.reason)}"
                )
            _report("IngestUsage batch", started, ack.ByteSize(), error)
        except grpc.RpcError as e:
            _report("IngestUsage batch", started, 0, e)
            # The call is over: open a new stream for the next batch.
            self.on_start()


class Gateway(GrpcUser):
    """Checks credit before serving a request, then settles the usage it served as one event."""

    weight = int(os.environ.get("LOADTEST_GATEWAY_WEIGHT", "3"))
    wait_time = between(0.01, 0.05)

    @task
    def authorize_and_settle(self) -> None:
        customer = next(_serial) % CUSTOMERS
        event = _event(customer)
        request = balance_pb2.AuthorizeRequest(
            request_id=uuid.uuid4().hex,
            customer_id=event.customer_id,
            event_type=event.event_type,
            dimensions=event.dimensions,
            values=event.values,
        )
        started = time.perf_counter()
        try:
            decision: Any = self.balance.Authorize(request, timeout=CALL_TIMEOUT_S)
            _report("Authorize", started, decision.ByteSize(), None)
        except grpc.RpcError as e:
            _report("Authorize", started, 0, e)
            return
        if not decision.allowed:
            return
        started = time.perf_counter()
        try:
            ack = self.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[event]), timeout=CALL_TIMEOUT_S)
            error = RejectedEvents(str(ack.rejected[0])) if ack.rejected else None
            _report("IngestUsageBatch settle", started, ack.ByteSize(), error)
        except grpc.RpcError as e:
            _report("IngestUsageBatch settle", started, 0, e)
