"""Limits and backpressure, deadlines and graceful shutdown under load, against real server processes.

Batch and message size limits, the concurrent-call limit (RESOURCE_EXHAUSTED with RetryInfo), an expired
deadline (not applied, not acknowledged), a client that never reads its acks (the server stops reading instead
of buffering: bounded RSS, other clients still served) and SIGTERM while several streams send (every acked
batch present exactly once after a restart, none half-applied, new calls UNAVAILABLE while draining).
Demo prices (server/demo.py): a simple summary on gpt-4o-mini costs 0.5 credits; acme holds 50,000.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import grpc.aio
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2
from tariff import ResourceExhausted, TariffClient, TariffError
from tariff.v1 import alerts_pb2, balance_pb2, balance_pb2_grpc, usage_pb2, usage_pb2_grpc

from tests.demo_usage import ACME, demo_batch
from tests.serverproc import ServerFactory, ServerProcess

CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    try:
        call()
    except TariffError as e:  # the client's stubs raise its typed errors
        code: grpc.StatusCode = e.code
        return code
    return grpc.StatusCode.OK


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


class Bidi:
    """A sync bidi IngestUsage call fed from a queue: send a batch, read its ack; end() half-closes."""

    def __init__(self, client: TariffClient) -> None:
        self._requests: queue.Queue[usage_pb2.UsageBatch | None] = queue.Queue()
        self.responses: Iterator[usage_pb2.IngestAck] = client.usage.IngestUsage(iter(self._requests.get, None))

    def send(self, batch: usage_pb2.UsageBatch) -> usage_pb2.IngestAck:
        self._requests.put(batch)
        return next(self.responses)

    def end(self) -> list[usage_pb2.IngestAck]:
        self._requests.put(None)
        return list(self.responses)

    def abandon(self) -> None:
        """After the call failed: lets the request-iterator thread finish."""
        self._requests.put(None)


# ---------------------------------------------------------------------------------------------
# Size limits


def test_configured_batch_and_message_limits_are_resource_exhausted_and_apply_nothing(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, extra_args=["--batch-events-max", "100", "--message-mb-max", "1"])
    with server.client() as client:
        before = client.get_balance(ACME)
        too_many = demo_batch("101", "many", 101)
        with pytest.raises(ResourceExhausted) as caught:
            client.ingest_batch(too_many.events, batch_id="101")
        assert "at most 100 events" in caught.value.details
        stream = Bidi(client)
        with pytest.raises(ResourceExhausted):
            stream.send(too_many)
        stream.abandon()

        # 100 events of ~12 KB each: under the event limit, over the 1 MiB message limit.
        too_big = demo_batch("big", "big", 100)
        for event in too_big.events:
            event.dimensions["note"] = "x" * 12_000
        assert too_big.ByteSize() > 1024 * 1024
        assert code_of(lambda: client.usage.IngestUsageBatch(too_big)) == grpc.StatusCode.RESOURCE_EXHAUSTED

        after = client.get_balance(ACME)
        assert (after.credits_remaining, after.as_of_seq) == (before.credits_remaining, before.as_of_seq)
        # None of those events was recorded: sent within the limits they are all new.
        assert client.ingest_batch(too_many.events[:100]).accepted == 100
        assert client.ingest_batch(demo_batch("small", "big", 100).events).accepted == 100


# ---------------------------------------------------------------------------------------------
# Concurrent calls


def test_calls_beyond_the_concurrency_limit_get_resource_exhausted_with_retry_info(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, extra_args=["--max-concurrent-rpcs", "2"])
    with server.client() as client:
        streams = [Bidi(client), Bidi(client)]
        for n, stream in enumerate(streams):
            assert stream.send(demo_batch(f"open-{n}", f"open-{n}", 1)).accepted == 1  # both calls are running
        with pytest.raises(ResourceExhausted) as caught:
            client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME))
        status = caught.value.status
        assert status is not None
        retry = [d for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)]
        assert len(retry) == 1
        info = error_details_pb2.RetryInfo()
        retry[0].Unpack(info)
        assert 0 < info.retry_delay.ToMilliseconds() <= 1_000
        with pytest.raises(ResourceExhausted) as typed:  # the client's typed error carries the delay
            client.get_balance(ACME)
        assert typed.value.retry_after_s == info.retry_delay.ToMilliseconds() / 1000
        # Health checks are not counted: a load balancer still sees the server up.
        serving = client.health.Check(health_pb2.HealthCheckRequest())
        assert serving.status == health_pb2.HealthCheckResponse.SERVING
        # A call ending frees its place.
        assert streams[0].end() == []
        assert client.get_balance(ACME).credits_remaining == "49999"
        assert streams[1].end() == []

        # However calls end (an error, a refused stream, cancelled by the client), their places come back.
        for n in range(10):
            nobody = balance_pb2.GetBalanceRequest(customer_id="nobody")
            assert code_of(lambda r=nobody: client.balance.GetBalance(r)) == grpc.StatusCode.NOT_FOUND  # type: ignore[misc]
            past = alerts_pb2.WatchAlertsRequest(after_seq=1_000_000)  # a stream refused: no such alert yet
            code = code_of(lambda r=past: list(client.alerts.WatchAlerts(r)))  # type: ignore[misc]
            assert code == grpc.StatusCode.OUT_OF_RANGE
            cancelled = Bidi(client)
            assert cancelled.send(demo_batch(f"c-{n}", f"c-{n}", 1)).accepted == 1
            cancelled.responses.cancel()  # type: ignore[attr-defined]
            cancelled.abandon()
        time.sleep(0.2)  # the server learns of the client's cancellations asynchronously
        again = [Bidi(client), Bidi(client)]
        for n, stream in enumerate(again):
            assert stream.send(demo_batch(f"again-{n}", f"again-{n}", 1)).accepted == 1
        acme = balance_pb2.GetBalanceRequest(customer_id=ACME)
        assert code_of(lambda: client.balance.GetBalance(acme)) == grpc.StatusCode.RESOURCE_EXHAUSTED
        for stream in again:
            assert stream.end() == []


# ---------------------------------------------------------------------------------------------
# Deadlines


def test_a_batch_whose_deadline_expired_is_neither_applied_nor_acknowledged(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        before = client.get_balance(ACME)
        # 10,000 events with a dozen dimensions each (about 2 MB) take longer than these deadlines to cross the
        # socket and reach the servicer, so each deadline passes before the command would reach the writer. (A
        # deadline passing later, during the commit, cannot undo the commit: the call is then not acknowledged,
        # but its batch is applied; that case is not what this test makes. The kernel rates such a batch in a
        # few milliseconds, so deadlines of 5-15 ms no longer expire before the writer has it.)
        timeouts_ms = (1, 2, 3)
        batches = [demo_batch(f"late-{ms}", f"late-{ms}", 10_000) for ms in timeouts_ms]
        for batch in batches:
            for event in batch.events:
                event.dimensions.update({f"tag{k}": f"value-{k}" for k in range(8)})
        for ms, batch in zip(timeouts_ms, batches, strict=True):
            code = code_of(lambda b=batch, t=ms / 1000: client.usage.IngestUsageBatch(b, timeout=t))  # type: ignore[misc]
            assert code == grpc.StatusCode.DEADLINE_EXCEEDED, (ms, code)
        time.sleep(1.0)  # had the server gone on with them, their commits would land meanwhile
        after = client.get_balance(ACME)
        assert (after.credits_remaining, after.as_of_seq) == (before.credits_remaining, before.as_of_seq)
        for batch in batches:
            ack = client.usage.IngestUsageBatch(batch, timeout=30)
            assert (ack.accepted, ack.duplicates) == (10_000, 0), "no event of an expired call was recorded"


# ---------------------------------------------------------------------------------------------
# A client that never reads its acks


def test_a_client_that_never_reads_acks_makes_the_server_stop_reading_not_buffer(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, extra_args=["--stream-inflight-batches-max", "4"])
    assert server.pid is not None
    rss_before = rss_bytes(server.pid)
    # Events for an unknown customer: each is rejected with a reason, so each ack is as big as its batch.
    batches_max = 3_000
    template = demo_batch("ghost", "ghost", 1_000, customer="ghost")
    batch_bytes = template.ByteSize()
    sent = 0
    stop = threading.Event()

    def requests() -> Iterator[usage_pb2.UsageBatch]:
        nonlocal sent
        for n in range(batches_max):
            if stop.is_set():
                return
            template.batch_id = f"ghost-{n}"
            sent += 1
            yield template

    with server.client() as hostile, server.client() as polite:
        call = hostile.usage.IngestUsage(requests())  # its acks are never read
        try:
            last, stable_since = -1, time.monotonic()
            while time.monotonic() - stable_since < 2.0:
                time.sleep(0.25)
                if sent != last:
                    last, stable_since = sent, time.monotonic()
                assert sent < batches_max, f"the server read all {sent} batches the client sent"
            # Everything it took in is the stream's in-flight batches plus a few transport windows (HTTP/2 flow
            # control lets those grow with the link), far from the 3,000 batches (~350 MiB) offered.
            assert sent * batch_bytes < 128 * 1024 * 1024, f"took in {sent} batches of {batch_bytes} bytes"
            growth = rss_bytes(server.pid) - rss_before
            print(f"taken in: {sent} batches of {batch_bytes} bytes; server RSS growth {growth / 2**20:.1f} MiB")
            assert growth < 200 * 1024 * 1024, f"server RSS grew {growth / 2**20:.0f} MiB"
            # The server still serves everyone else.
            assert polite.get_balance(ACME).credits_remaining == "50000"
            ack = polite.ingest_batch(demo_batch("polite", "polite", 10).events)
            assert ack.accepted == 10
        finally:
            stop.set()
            call.cancel()


# ---------------------------------------------------------------------------------------------
# SIGTERM under load


class Sender:
    """One IngestUsage stream (grpc.aio) sending batches of 100 cheap events with a few in flight."""

    def __init__(self, name: str, channel: grpc.aio.Channel, pause_s: float) -> None:
        self.name = name
        self.stub = usage_pb2_grpc.UsageServiceStub(channel)
        self.pause_s = pause_s
        self.sent: dict[str, usage_pb2.UsageBatch] = {}
        self.acked: list[str] = []
        self.ending = asyncio.Event()
        self.outcome: grpc.StatusCode | None = None

    async def _requests(self) -> AsyncIterator[usage_pb2.UsageBatch]:
        n = 0
        while not self.ending.is_set():
            while len(self.sent) - len(self.acked) >= 4 and not self.ending.is_set():
                await asyncio.sleep(0.002)
            if self.ending.is_set():
                break
            batch = demo_batch(f"{self.name}-{n}", f"{self.name}-{n}", 100)
            self.sent[batch.batch_id] = batch
            yield batch
            n += 1
            await asyncio.sleep(self.pause_s)

    async def run(self) -> None:
        call = self.stub.IngestUsage(self._requests())
        try:
            async for ack in call:
                assert ack.accepted == 100 and ack.duplicates == 0, ack
                self.acked.append(ack.batch_id)
            self.outcome = grpc.StatusCode.OK
        except grpc.RpcError as e:
            self.outcome = e.code()


@pytest.mark.slow
def test_sigterm_under_load_commits_and_acks_or_applies_nothing_and_refuses_new_calls(
    demo_server: ServerProcess,
) -> None:
    server = demo_server
    assert server.proc is not None and server.pid is not None

    async def load() -> tuple[list[Sender], grpc.StatusCode, grpc.StatusCode, bool]:
        async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            # Three streams send as fast as acks allow; a fourth keeps sending through the whole grace period.
            senders = [Sender(f"s{i}", channel, pause_s=0.0) for i in range(3)]
            stubborn = Sender("stubborn", channel, pause_s=0.05)
            tasks = [asyncio.create_task(s.run()) for s in [*senders, stubborn]]
            await asyncio.sleep(1.5)
            assert all(s.acked for s in senders), "the load is running"
            os.kill(server.pid or 0, signal.SIGTERM)
            await asyncio.sleep(0.5)
            # New calls while the server drains: on the streams' channel and on a fresh one.
            balance = balance_pb2_grpc.BalanceServiceStub(channel)
            request = balance_pb2.GetBalanceRequest(customer_id=ACME)
            on_old: grpc.StatusCode = grpc.StatusCode.OK
            on_new: grpc.StatusCode = grpc.StatusCode.OK
            try:
                await balance.GetBalance(request, timeout=3)
            except grpc.RpcError as e:
                on_old = e.code()
            async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as fresh:
                try:
                    await balance_pb2_grpc.BalanceServiceStub(fresh).GetBalance(request, timeout=3)
                except grpc.RpcError as e:
                    on_new = e.code()
            still_draining = server.running
            for s in senders:  # the polite streams finish: every batch they sent must be acked
                s.ending.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
            return [*senders, stubborn], on_old, on_new, still_draining

    senders, on_old, on_new, still_draining = asyncio.run(load())
    assert still_draining, "the server was still draining its streams when the new calls were made"
    assert on_old == grpc.StatusCode.UNAVAILABLE
    assert on_new == grpc.StatusCode.UNAVAILABLE
    assert server.proc.wait(timeout=30) == 0
    assert "stopped at journal seq" in server.log_tail()
    polite, stubborn = senders[:3], senders[3]
    for s in polite:
        assert s.outcome == grpc.StatusCode.OK, (s.name, s.outcome)
        assert sorted(s.acked) == sorted(s.sent), f"{s.name}: every batch sent before half-close is acked"
    assert stubborn.outcome != grpc.StatusCode.OK, "the stream that never ended was cut at the end of the grace"
    assert stubborn.acked

    server.restart()
    total_events = 0
    unacked_committed = 0
    with server.client() as client:
        for s in senders:
            acked = set(s.acked)
            for batch_id, batch in s.sent.items():
                ack = client.usage.IngestUsageBatch(batch, timeout=30)
                total_events += len(batch.events)
                if batch_id in acked:
                    assert (ack.duplicates, ack.accepted) == (100, 0), f"acked {batch_id} is present exactly once"
                else:
                    # Unacknowledged: all of it committed, or none of it.
                    assert (ack.duplicates, ack.accepted) in ((100, 0), (0, 100)), f"{batch_id} half-applied: {ack}"
                    unacked_committed += ack.duplicates == 100
        balance = client.get_balance(ACME)
    print(
        "sent/acked per stream:",
        {s.name: (len(s.sent), len(s.acked)) for s in senders},
        f"stubborn ended {stubborn.outcome}; unacked batches found committed: {unacked_committed}",
    )
    # Every event sent is now applied exactly once: 0.5 credits each.
    drawn = Decimal(total_events) * Decimal("0.5")
    assert Decimal(balance.credits_remaining) == max(Decimal(50_000) - drawn, Decimal(0)), (total_events, balance)
    with contextlib.suppress(Exception):
        server.terminate()
