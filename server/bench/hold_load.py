"""A load generator for AuthorizeBatches with holds: a gateway that reserves before it serves, then reports usage.

Every request of every message asks for a hold (reserve=true, a client-chosen id, the bench's TTL), round-robin
over the seeded customers. As each answer comes back, the holds it granted are settled by their usage events,
sent as one UsageBatch per answer on an IngestUsage stream of the same process (the gateway's usage reporting),
so credit is given back as fast as it is held and never runs out. Runs in its own process like the generators
of server/bench/loadgen.py, and reports holds/s and the latency of each message (sent to answered, the hold
journaled in between).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Iterator
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any, TypedDict

import grpc
from tariff.v1 import balance_pb2, usage_pb2

from server.bench.loadgen import (
    AUTHORIZE_BATCHES_METHOD,
    BARRIER_TIMEOUT_S,
    CALL_TIMEOUT_S,
    INGEST_METHOD,
    _identity,
    _rpc_error,
    authorize_request,
)
from server.bench.target import CHANNEL_OPTIONS


class HoldSpec(TypedDict):
    target: str
    customers: int
    decisions: int
    in_flight: int  # messages outstanding
    seconds_max: float  # stop sending early when the decisions take longer than this
    batch_requests: int  # holds per AuthorizeBatch
    reservation_tag: str  # new per run: the ids `{tag}-{n}` are never reused


def settling(tag: str, requests: list[balance_pb2.AuthorizeRequest], now_ms: int) -> bytes:
    """A UsageBatch whose events settle the holds of these (granted) requests: the usage each one described."""
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"{r.reservation_id}-used",
            customer_id=r.customer_id,
            event_type=r.event_type,
            timestamp_ms=now_ms,
            dimensions=r.dimensions,
            values=r.values,
            reservation_id=r.reservation_id,
        )
        for r in requests
    ]
    return usage_pb2.UsageBatch(batch_id=f"{tag}-settle-{requests[0].request_id}", events=events).SerializeToString()


class _Settler:
    """The gateway's usage stream: settles granted holds as their answers arrive, and counts the acks."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.batches: queue.SimpleQueue[bytes | None] = queue.SimpleQueue()
        self.totals: Counter[str] = Counter()
        self.error: list[str] | None = None
        self._call = channel.stream_stream(
            INGEST_METHOD, request_serializer=_identity, response_deserializer=usage_pb2.IngestAck.FromString
        )
        self._thread = threading.Thread(target=self._run)
        self._thread.start()

    def _requests(self) -> Iterator[bytes]:
        while (batch := self.batches.get()) is not None:
            yield batch

    def _run(self) -> None:
        try:
            for ack in self._call(self._requests(), timeout=CALL_TIMEOUT_S * 10):
                self.totals["settled"] += ack.accepted
                self.totals["notices"] += len(ack.notices)
                self.totals["rejected"] += len(ack.rejected)
        except grpc.RpcError as e:
            self.error = _rpc_error(e)

    def close(self) -> None:
        self.batches.put(None)
        self._thread.join()


def _hold_batches_worker(spec: HoldSpec, barrier: Barrier, results: Queue[dict[str, Any]], stop: Event | None) -> None:
    per_message = spec["batch_requests"]
    tag = spec["reservation_tag"]
    requests = [authorize_request(n, spec["customers"], tag) for n in range(spec["decisions"])]
    groups = [requests[i : i + per_message] for i in range(0, len(requests), per_message)]
    payloads = [balance_pb2.AuthorizeBatch(requests=g).SerializeToString() for g in groups]
    window = threading.Semaphore(spec["in_flight"])
    reasons: Counter[str] = Counter()
    sent_at: list[float] = []
    latencies_s: list[float] = []
    denied: list[str] = []
    deadline = [float("inf")]
    error: list[str] | None = None

    def messages() -> Iterator[bytes]:
        for payload in payloads:
            window.acquire()
            if time.monotonic() > deadline[0]:
                return
            sent_at.append(time.monotonic())
            yield payload

    with grpc.insecure_channel(spec["target"], options=CHANNEL_OPTIONS) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        call = channel.stream_stream(
            AUTHORIZE_BATCHES_METHOD,
            request_serializer=_identity,
            response_deserializer=balance_pb2.AuthorizeBatchResult.FromString,
        )
        settler = _Settler(channel)
        barrier.wait(BARRIER_TIMEOUT_S)
        started = time.monotonic()
        deadline[0] = started + spec["seconds_max"]
        try:
            for number, result in enumerate(call(messages(), timeout=CALL_TIMEOUT_S * 10)):
                latencies_s.append(time.monotonic() - sent_at[number])
                window.release()
                granted = []
                for request, answer in zip(groups[number], result.responses, strict=True):
                    reasons[answer.reason] += 1
                    if answer.allowed:
                        granted.append(request)
                    elif len(denied) < 5:
                        denied.append(f"{answer.reason}: {answer.message}")
                if granted:
                    settler.batches.put(settling(tag, granted, time.time_ns() // 1_000_000))
        except grpc.RpcError as e:
            error = _rpc_error(e)
        ended = time.monotonic()
        settler.close()
    results.put(
        {
            "kind": "holds",
            "started": started,
            "ended": ended,
            "decisions": sum(reasons.values()),
            "reasons": dict(reasons),
            "denied_samples": denied,
            "latencies_s": latencies_s,
            "settled": settler.totals["settled"],
            "notices": settler.totals["notices"],
            "rejected": settler.totals["rejected"],
            "error": error or settler.error,
        }
    )


def hold_batches_worker(spec: HoldSpec, barrier: Barrier, results: Queue[dict[str, Any]], stop: Event | None) -> None:
    try:
        _hold_batches_worker(spec, barrier, results, stop)
    except Exception as e:
        barrier.abort()
        results.put(
            {"kind": "failed", "started": 0.0, "ended": 0.0, "error": ["CLIENT_ERROR", f"{type(e).__name__}: {e}"]}
        )
