"""Load generators: functions that run in their own processes (multiprocessing, spawn) and drive a server.

Each one prepares its requests first (serialized once, so the timed loop only moves bytes), waits on a
barrier shared with the bench so that the server's CPU is read when the load starts, runs, and puts one
plain dict of results on a queue. The hot path uses raw multi-callables with an identity serializer
rather than the convenience client: on a 2-core machine every client microsecond is taken from the server.
RPC failures come back as {"error": [code name, details]}, so the bench can tell UNIMPLEMENTED apart.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any, NotRequired, TypedDict

import grpc
from google.protobuf.duration_pb2 import Duration
from tariff.v1 import balance_pb2, invoices_pb2, usage_pb2

from server.bench.seed import MODELS, REGIONS, batches, customer_id, stamped_batches
from server.bench.target import CHANNEL_OPTIONS

INGEST_METHOD = "/tariff.v1.UsageService/IngestUsage"
AUTHORIZE_METHOD = "/tariff.v1.BalanceService/Authorize"
GET_BALANCE_METHOD = "/tariff.v1.BalanceService/GetBalance"
AUTHORIZE_STREAM_METHOD = "/tariff.v1.BalanceService/AuthorizeStream"
AUTHORIZE_BATCHES_METHOD = "/tariff.v1.BalanceService/AuthorizeBatches"
PREVIEW_INVOICE_METHOD = "/tariff.v1.InvoiceService/PreviewInvoice"
BARRIER_TIMEOUT_S = 600.0
CALL_TIMEOUT_S = 60.0
# A reserving Authorize's hold lasts this long: short, so the bench's holds lapse soon after the run instead of
# piling up; long enough that none expires while its run measures (the kernel journals each expiry too).
RESERVATION_TTL_S = 30


class IngestSpec(TypedDict):
    target: str
    run_tag: str
    customers: int
    batch_events: int
    batch_count: int  # 0 with `stop` given: until stopped
    streams: int
    batches_in_flight: int  # per stream
    events_per_s: float  # 0: as fast as acks come back
    seed: int
    only_customer: int | None
    prebuild: bool  # serialize every batch before the barrier (throughput runs) or build as it sends
    # Stamp fresh ids into a few pre-encoded batches as it sends (seed.stamped_batches): filling the dedupe window.
    stamped: NotRequired[bool]
    # Each stream's deadline (CALL_TIMEOUT_S × 20 when absent): a dedupe fill of 100,000,000 ids runs longer.
    call_timeout_s: NotRequired[float]


class UnarySpec(TypedDict):
    target: str
    method: str
    customers: int
    calls: int
    warmup_calls: int
    seconds_max: float  # stop early when the calls take longer than this
    # Authorize only: when set, every call reserves (reserve=true) under its own id `{tag}-{call number}`.
    reservation_tag: NotRequired[str]
    callers: NotRequired[int]  # threads calling at once, each one in flight (1 when absent)


class StreamSpec(TypedDict):
    target: str
    customers: int
    decisions: int
    in_flight: int  # messages outstanding
    seconds_max: float  # stop sending early when the decisions take longer than this
    batch_requests: int  # 1: AuthorizeStream, one decision a message; more: AuthorizeBatches with this many


def _identity(payload: bytes) -> bytes:
    return payload


def _rpc_error(e: grpc.RpcError) -> list[str]:
    code = e.code()
    return [code.name if code is not None else "UNKNOWN", str(e.details())]


def _aggregate_keys(batch: usage_pb2.UsageBatch) -> set[tuple[str, str, str]]:
    return {(e.customer_id, e.dimensions["model"], e.dimensions["region"]) for e in batch.events}


class _IngestLoad:
    """One ingest worker's batches, shared by its streams, and what their acks said."""

    def __init__(self, spec: IngestSpec, stop: Event | None) -> None:
        self.spec = spec
        self.stop = stop
        until_stopped = spec["batch_count"] == 0
        self.lazy = until_stopped or not spec["prebuild"]
        self.source = batches(
            spec["run_tag"],
            spec["customers"],
            spec["batch_events"],
            spec["batch_count"] if not until_stopped else 10**12,
            seed=spec["seed"],
            only_customer=spec["only_customer"],
        )
        self.stamped = (
            stamped_batches(
                spec["run_tag"], spec["customers"], spec["batch_events"], spec["batch_count"], seed=spec["seed"]
            )
            if spec.get("stamped")
            else None
        )
        self.prepared: list[bytes] = []
        self.keys: set[tuple[str, str, str]] = set()
        if not self.lazy:
            for batch in self.source:
                self.keys |= _aggregate_keys(batch)
                self.prepared.append(batch.SerializeToString())
        self.lock = threading.Lock()
        self.next_index = itertools.count()
        self.totals: Counter[str] = Counter()
        self.reject_samples: list[str] = []
        self.latencies_s: list[float] = []
        self.errors: list[list[str]] = []
        self.interval_s = spec["batch_events"] / spec["events_per_s"] if spec["events_per_s"] > 0 else 0.0

    def take(self) -> bytes | None:
        """The next batch to send, shared by the streams; None when there is none left."""
        with self.lock:
            if self.stamped is not None:
                payload = next(self.stamped, None)
                self.totals["sent"] += self.spec["batch_events"] if payload is not None else 0
                return payload
            if self.lazy:
                if self.stop is not None and self.stop.is_set():
                    return None
                batch = next(self.source, None)
                if batch is None:
                    return None
                self.totals["sent"] += len(batch.events)
                return batch.SerializeToString()
            index = next(self.next_index)
            if index >= len(self.prepared):
                return None
            self.totals["sent"] += self.spec["batch_events"]
            return self.prepared[index]

    def wait_for_pace(self, started_at: float) -> None:
        """Paced load: batch n of this process leaves no earlier than n × interval after the start."""
        with self.lock:
            due = started_at + self.totals["paced"] * self.interval_s
            self.totals["paced"] += 1
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)

    def record_ack(self, latency_s: float, ack: usage_pb2.IngestAck) -> None:
        with self.lock:
            self.latencies_s.append(latency_s)
            self.totals["accepted"] += ack.accepted
            self.totals["duplicates"] += ack.duplicates
            self.totals["rejected"] += len(ack.rejected)
            for rejection in ack.rejected[: max(0, 5 - len(self.reject_samples))]:
                reason = usage_pb2.RejectReason.Name(rejection.reason)
                self.reject_samples.append(f"{reason}: {rejection.message}")

    def stream(self, channel: grpc.Channel, started_at: float) -> None:
        """One IngestUsage call, at most `batches_in_flight` batches unacked on it."""
        call = channel.stream_stream(
            INGEST_METHOD, request_serializer=_identity, response_deserializer=usage_pb2.IngestAck.FromString
        )
        window = threading.Semaphore(self.spec["batches_in_flight"])
        sent_at: list[float] = []
        call_over = threading.Event()

        def requests() -> Iterator[bytes]:
            while True:
                window.acquire()
                if call_over.is_set():
                    return
                payload = self.take()
                if payload is None:
                    return
                if self.interval_s:
                    self.wait_for_pace(started_at)
                sent_at.append(time.monotonic())
                yield payload

        try:
            timeout_s = self.spec.get("call_timeout_s", CALL_TIMEOUT_S * 20)
            for number, ack in enumerate(call(requests(), timeout=timeout_s)):
                latency = time.monotonic() - sent_at[number]
                window.release()
                self.record_ack(latency, ack)
        except grpc.RpcError as e:
            with self.lock:
                self.errors.append(_rpc_error(e))
            # Unblocks gRPC's request-consuming thread if it waits on the window, so the process can exit.
            call_over.set()
            window.release()

    def result(self, started: float, ended: float) -> dict[str, Any]:
        return {
            "kind": "ingest",
            "started": started,
            "ended": ended,
            "events_sent": self.totals["sent"],
            "accepted": self.totals["accepted"],
            "duplicates": self.totals["duplicates"],
            "rejected": self.totals["rejected"],
            "reject_samples": self.reject_samples,
            "latencies_s": self.latencies_s,
            "aggregate_keys": sorted(self.keys),
            "error": self.errors[0] if self.errors else None,
        }


def _ingest_worker(spec: IngestSpec, barrier: Barrier, results: Queue[dict[str, Any]], stop: Event | None) -> None:
    """Streams batches over `streams` IngestUsage calls, at most `batches_in_flight` unacked on each."""
    load = _IngestLoad(spec, stop)
    with grpc.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        barrier.wait(BARRIER_TIMEOUT_S)
        started = time.monotonic()
        threads = [threading.Thread(target=load.stream, args=(channel, started)) for _ in range(spec["streams"])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        ended = time.monotonic()
    results.put(load.result(started, ended))


def authorize_request(number: int, customers: int, reservation_tag: str = "") -> balance_pb2.AuthorizeRequest:
    """Request `number`, round-robin over the seeded customers; with a tag, a hold under its own id."""
    request = balance_pb2.AuthorizeRequest(
        request_id=f"r{number}",
        customer_id=customer_id(number % customers),
        event_type="llm_call",
        dimensions={"model": MODELS[number % len(MODELS)], "region": REGIONS[number % len(REGIONS)]},
        values={"input_tokens": 1200.0, "output_tokens": 350.0},
    )
    if reservation_tag:
        request.reserve = True
        request.reservation_id = f"{reservation_tag}-{number}"
        request.reservation_ttl.CopyFrom(Duration(seconds=RESERVATION_TTL_S))
    return request


def _unary_payloads(spec: UnarySpec) -> tuple[list[bytes], Callable[[bytes], Any]]:
    count = spec["calls"] + spec["warmup_calls"]
    if spec["method"] == GET_BALANCE_METHOD:
        payloads = [
            balance_pb2.GetBalanceRequest(customer_id=customer_id(n % spec["customers"])).SerializeToString()
            for n in range(count)
        ]
        return payloads, balance_pb2.Balance.FromString
    if spec["method"] == PREVIEW_INVOICE_METHOD:
        payloads = [
            invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id(n % spec["customers"])).SerializeToString()
            for n in range(count)
        ]
        return payloads, invoices_pb2.Invoice.FromString
    if spec["method"] != AUTHORIZE_METHOD:
        raise ValueError(f"no requests for {spec['method']}")
    tag = spec.get("reservation_tag", "")
    payloads = [authorize_request(n, spec["customers"], tag).SerializeToString() for n in range(count)]
    return payloads, balance_pb2.AuthorizeResponse.FromString


def _unary_worker(spec: UnarySpec, barrier: Barrier, results: Queue[dict[str, Any]], stop: Event | None) -> None:
    """Unary calls, one in flight per caller thread: the latency a gateway sees per credit check."""
    payloads, decode = _unary_payloads(spec)
    callers = spec.get("callers", 1)
    latencies_s: list[float] = []
    denied: list[str] = []
    errors: list[list[str]] = []
    lock = threading.Lock()
    with grpc.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(spec["method"], request_serializer=_identity, response_deserializer=decode)
        try:
            for payload in payloads[: spec["warmup_calls"]]:
                call(payload, timeout=CALL_TIMEOUT_S)
        except grpc.RpcError as e:
            errors.append(_rpc_error(e))
        barrier.wait(BARRIER_TIMEOUT_S)
        started = time.monotonic()
        deadline = started + spec["seconds_max"]

        def caller(share: list[bytes]) -> None:
            try:
                for payload in share:
                    sent = time.monotonic()
                    if sent > deadline:
                        return
                    answer = call(payload, timeout=CALL_TIMEOUT_S)
                    latency = time.monotonic() - sent
                    with lock:
                        latencies_s.append(latency)
                        if isinstance(answer, balance_pb2.AuthorizeResponse) and not answer.allowed:
                            denied.append(f"{answer.reason}: {answer.message}")
            except grpc.RpcError as e:
                with lock:
                    errors.append(_rpc_error(e))

        if not errors:
            measured = payloads[spec["warmup_calls"] :]
            threads = [threading.Thread(target=caller, args=(measured[i::callers],)) for i in range(callers)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        ended = time.monotonic()
    results.put(
        {
            "kind": "unary",
            "started": started,
            "ended": ended,
            "latencies_s": latencies_s,
            "denied": len(denied),
            "denied_samples": denied[:5],
            "error": errors[0] if errors else None,
        }
    )


def _stream_worker(spec: StreamSpec, barrier: Barrier, results: Queue[dict[str, Any]], stop: Event | None) -> None:
    """AuthorizeStream (or AuthorizeBatches) with `in_flight` messages outstanding: decisions/s over one stream."""
    per_message = spec["batch_requests"]
    requests = [authorize_request(n, spec["customers"]) for n in range(spec["decisions"])]
    if per_message > 1:
        payloads = [
            balance_pb2.AuthorizeBatch(requests=requests[i : i + per_message]).SerializeToString()
            for i in range(0, len(requests), per_message)
        ]
    else:
        payloads = [request.SerializeToString() for request in requests]
    window = threading.Semaphore(spec["in_flight"])
    reasons: Counter[str] = Counter()
    error: list[str] | None = None

    deadline = [float("inf")]

    def messages() -> Iterator[bytes]:
        for payload in payloads:
            window.acquire()
            if time.monotonic() > deadline[0]:
                return
            yield payload

    with grpc.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        call = (
            channel.stream_stream(
                AUTHORIZE_BATCHES_METHOD,
                request_serializer=_identity,
                response_deserializer=balance_pb2.AuthorizeBatchResult.FromString,
            )
            if per_message > 1
            else channel.stream_stream(
                AUTHORIZE_STREAM_METHOD,
                request_serializer=_identity,
                response_deserializer=balance_pb2.AuthorizeResponse.FromString,
            )
        )
        barrier.wait(BARRIER_TIMEOUT_S)
        started = time.monotonic()
        deadline[0] = started + spec["seconds_max"]
        try:
            for response in call(messages(), timeout=CALL_TIMEOUT_S * 10):
                window.release()
                for answer in response.responses if per_message > 1 else [response]:
                    reasons[answer.reason] += 1
        except grpc.RpcError as e:
            error = _rpc_error(e)
        ended = time.monotonic()
    results.put(
        {
            "kind": "stream",
            "started": started,
            "ended": ended,
            "decisions": sum(reasons.values()),
            "reasons": dict(reasons),
            "error": error,
        }
    )


def _guarded(
    body: Callable[[Any, Barrier, Queue[dict[str, Any]], Event | None], None],
    spec: Any,
    barrier: Barrier,
    results: Queue[dict[str, Any]],
    stop: Event | None,
) -> None:
    """Runs a generator; a client-side failure breaks the barrier and comes back as a result, never a hang."""
    try:
        body(spec, barrier, results, stop)
    except Exception as e:
        barrier.abort()
        results.put(
            {"kind": "failed", "started": 0.0, "ended": 0.0, "error": ["CLIENT_ERROR", f"{type(e).__name__}: {e}"]}
        )


def ingest_worker(spec: IngestSpec, barrier: Barrier, results: Queue[dict[str, Any]], stop: Event | None) -> None:
    _guarded(_ingest_worker, spec, barrier, results, stop)


def unary_worker(spec: UnarySpec, barrier: Barrier, results: Queue[dict[str, Any]], stop: Event | None) -> None:
    _guarded(_unary_worker, spec, barrier, results, stop)


def stream_worker(spec: StreamSpec, barrier: Barrier, results: Queue[dict[str, Any]], stop: Event | None) -> None:
    _guarded(_stream_worker, spec, barrier, results, stop)
