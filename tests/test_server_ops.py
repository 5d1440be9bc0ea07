"""Operating the server: health, reflection, graceful shutdown, the loopback rule, a full LMDB map.

Real server processes (tests/serverproc.py). Demo prices used here (server/demo.py): a simple summary on
gpt-4o-mini costs summary_base * mini_factor = 1 x 0.5 = 0.5 credits; a complex summary on gpt-4 costs
summary_base * gpt4_factor * complex_factor + crm_surcharge = 1 x 2.5 x 2 + 0 = 5. acme holds 50,000 credits.
"""

from __future__ import annotations

import queue
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tariff import ResourceExhausted, TariffClient
from tariff.v1 import balance_pb2, usage_pb2

from tests.demo_usage import ACME, CHEAP, COMPLEX, demo_batch
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess

TARIFF_SERVICES = [
    "tariff.v1.UsageService",
    "tariff.v1.BalanceService",
    "tariff.v1.PricingService",
    "tariff.v1.ContractService",
    "tariff.v1.InvoiceService",
    "tariff.v1.AlertService",
]
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


# ---------------------------------------------------------------------------------------------
# Helpers


def assert_amount(actual: str, expected: str) -> None:
    """A wire amount: numerically equal AND in the canonical text the hand computation gives."""
    assert Decimal(actual) == Decimal(expected), f"{actual!r} != {expected!r}"
    assert actual == expected, f"not canonical: {actual!r}, expected {expected!r}"


class Bidi:
    """One IngestUsage bidi call driven in lockstep: send a batch, read its ack."""

    def __init__(self, client: TariffClient) -> None:
        self._requests: queue.Queue[usage_pb2.UsageBatch | None] = queue.Queue()
        self._responses: Iterator[usage_pb2.IngestAck] = client.usage.IngestUsage(iter(self._requests.get, None))

    def send(self, batch: usage_pb2.UsageBatch) -> usage_pb2.IngestAck:
        self.write(batch)
        return self.read()

    def write(self, batch: usage_pb2.UsageBatch) -> None:
        self._requests.put(batch)

    def read(self) -> usage_pb2.IngestAck:
        return next(self._responses)

    def end_requests(self) -> None:
        self._requests.put(None)

    def close(self) -> None:
        self.end_requests()
        assert list(self._responses) == [], "no ack without a batch"


def credits_money(balance: balance_pb2.Balance) -> tuple[str, str, str, str]:
    return (balance.credits_remaining, balance.credits_available, balance.period_charges, balance.overage_amount)


# ---------------------------------------------------------------------------------------------
# Health and reflection


def test_health_reports_serving_for_the_server_and_every_service(demo_server: ServerProcess) -> None:
    with grpc.insecure_channel(demo_server.target, options=CHANNEL_OPTIONS) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ["", *TARIFF_SERVICES]:
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, service
        with pytest.raises(grpc.RpcError) as caught:
            health.Check(health_pb2.HealthCheckRequest(service="tariff.v1.NoSuchService"), timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services_and_serves_their_descriptors(demo_server: ServerProcess) -> None:
    with grpc.insecure_channel(demo_server.target, options=CHANNEL_OPTIONS) as channel:
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        requests = [
            reflection_pb2.ServerReflectionRequest(list_services=""),
            reflection_pb2.ServerReflectionRequest(file_containing_symbol="tariff.v1.UsageService"),
        ]
        listed, described = list(reflection.ServerReflectionInfo(iter(requests), timeout=10))
        names = {service.name for service in listed.list_services_response.service}
        assert set(TARIFF_SERVICES) <= names
        assert "grpc.health.v1.Health" in names
        assert "grpc.reflection.v1alpha.ServerReflection" in names
        files = [
            descriptor_pb2.FileDescriptorProto.FromString(blob)
            for blob in described.file_descriptor_response.file_descriptor_proto
        ]
        usage_file = next(f for f in files if f.name == "tariff/v1/usage.proto")
        assert usage_file.package == "tariff.v1"
        assert [m.name for m in usage_file.service[0].method] == ["IngestUsage", "IngestUsageBatch"]


# ---------------------------------------------------------------------------------------------
# Graceful shutdown


def test_sigterm_stops_cleanly_and_restart_has_everything_acknowledged(demo_server: ServerProcess) -> None:
    first = demo_batch("t-1", "term-a", 3, dimensions=COMPLEX)  # 3 x 5 = 15
    last = demo_batch("t-2", "term-b", 4, dimensions=CHEAP)  # 4 x 0.5 = 2
    with demo_server.client() as client:
        stream = Bidi(client)
        assert stream.send(first).accepted == 3
        last_ack = stream.send(last)
        assert (last_ack.batch_id, last_ack.accepted) == ("t-2", 4)
        stream.close()
        before = client.get_balance(ACME)
    # 15 + 2 = 17 drawn; 50000 - 17 = 49983
    assert_amount(before.credits_remaining, "49983")
    assert before.as_of_seq == last_ack.journal_seq

    assert demo_server.terminate() == 0
    assert not demo_server.running
    log = demo_server.log_tail(20)
    assert "shutting down" in log
    assert f"stopped at journal seq {last_ack.journal_seq}" in log

    demo_server.start()
    with demo_server.client() as client:
        after = client.get_balance(ACME)
        assert after.as_of_seq == last_ack.journal_seq
        assert credits_money(after) == credits_money(before)
        assert_amount(after.credits_remaining, "49983")
        assert_amount(after.grants[0].recognized_revenue, "15.3")  # 17 x 45000/50000 = 15.3
        # The last acknowledged batch is known: resent, it is all duplicates.
        again = client.ingest_batch(last.events, batch_id="t-2-again")
        assert (again.accepted, again.duplicates, list(again.rejected)) == (0, 4, [])


def test_sigterms_after_the_first_do_not_kill_a_stopping_server(demo_server: ServerProcess) -> None:
    """A supervisor may signal again while the server stops, or just after its clean stop while the process exits:
    the stop stays clean, exit code 0, not killed by the signal (-15)."""
    proc = demo_server.proc
    assert proc is not None
    proc.send_signal(signal.SIGTERM)
    deadline_s = time.monotonic() + 20
    while proc.poll() is None:
        assert time.monotonic() < deadline_s, "the server did not exit"
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.001)
    assert proc.returncode == 0
    assert "clean=True" in demo_server.log_tail(5)


def test_sigterm_lets_an_in_flight_batch_commit_and_be_acknowledged(demo_server: ServerProcess) -> None:
    opening = demo_batch("open", "inflight-a", 2, dimensions=COMPLEX)  # 2 x 5 = 10
    in_flight = demo_batch("in-flight", "inflight-b", 10_000, dimensions=CHEAP)  # 10,000 x 0.5 = 5,000
    with demo_server.client() as client:
        stream = Bidi(client)
        assert stream.send(opening).accepted == 2  # the call is established
        assert demo_server.proc is not None
        stream.write(in_flight)
        demo_server.proc.send_signal(signal.SIGTERM)  # while the server reads, rates or commits the batch
        ack = stream.read()
        assert (ack.batch_id, ack.accepted, ack.duplicates, list(ack.rejected)) == ("in-flight", 10_000, 0, [])
        stream.close()
    assert demo_server.terminate() == 0
    assert f"stopped at journal seq {ack.journal_seq}" in demo_server.log_tail(20)

    demo_server.start()
    with demo_server.client() as client:
        balance = client.get_balance(ACME)
        assert balance.as_of_seq == ack.journal_seq
        # 10 + 5000 = 5010 drawn; 50000 - 5010 = 44990
        assert_amount(balance.credits_remaining, "44990")


def test_non_loopback_listen_without_insecure_exits_nonzero_with_a_message(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--listen", f"0.0.0.0:{port}", "--data-dir", str(tmp_path / "d")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    output = result.stdout + result.stderr
    assert result.returncode != 0, output
    assert "--insecure" in output, output
    assert "0.0.0.0" in output, output


# ---------------------------------------------------------------------------------------------
# A full LMDB map


def test_full_map_answers_resource_exhausted_commits_nothing_and_a_bigger_map_takes_the_batch(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, extra_args=["--map-size-mb", "1"], name="small-map")
    size = 500  # events per batch, 0.5 credits each: 250 credits a batch
    sent: list[usage_pb2.UsageBatch] = []
    acked: list[usage_pb2.IngestAck] = []
    failed: usage_pb2.UsageBatch | None = None
    with server.client() as client:
        stream = Bidi(client)
        for n in range(200):
            batch = demo_batch(f"fill-{n}", f"fill-{n}", size, dimensions=CHEAP)
            try:
                acked.append(stream.send(batch))
                sent.append(batch)
            except ResourceExhausted:
                stream.end_requests()
                failed = batch
                break
        assert failed is not None, "a 1 MiB map never filled up"
        assert len(acked) >= 1, "the map was full before the first batch"
        assert all(ack.accepted == size for ack in acked)
        k = len(acked)
        # k acknowledged batches x 500 events x 0.5 credits = 250k credits; nothing from the failed one.
        expected_remaining = str(50_000 - 250 * k)
        balance = client.get_balance(ACME)
        assert_amount(balance.credits_remaining, expected_remaining)
        assert_amount(balance.period_charges, str(250 * k))
        assert balance.as_of_seq == acked[-1].journal_seq, "the failed batch left no journal record"
        assert server.running

    server.terminate()
    server.extra_args = ("--map-size-mb", "64")
    server.start()
    with server.client() as client:
        balance = client.get_balance(ACME)
        assert_amount(balance.credits_remaining, expected_remaining)
        assert balance.as_of_seq == acked[-1].journal_seq
        stream = Bidi(client)
        resent = stream.send(failed)
        assert (resent.batch_id, resent.accepted, resent.duplicates, list(resent.rejected)) == (
            failed.batch_id,
            size,
            0,
            [],
        )
        # An acknowledged batch is still known after the restart: resent as is, it is all duplicates.
        again = stream.send(sent[0])
        assert (again.batch_id, again.accepted, again.duplicates, list(again.rejected)) == (
            sent[0].batch_id,
            0,
            size,
            [],
        )
        stream.close()
        # (k + 1) batches x 250 credits.
        assert_amount(client.get_balance(ACME).credits_remaining, str(50_000 - 250 * (k + 1)))


def test_a_batch_whose_commit_fails_ends_its_stream_and_none_sent_after_it_is_applied(
    server_factory: ServerFactory,
) -> None:
    # A batch larger than the whole 1 MiB map cannot commit (RESOURCE_EXHAUSTED, the journal is full); the
    # one-event batches sent behind it on the same stream would fit. They arrive while its 100,000 events are
    # rated, up to 2,048 may await their commit, and a group takes at most 256: when its commit fails, some
    # still wait in the writer's queue, behind the group prepared meanwhile (which fails with it).
    server = server_factory(
        demo=True,
        extra_args=["--map-size-mb", "1", "--batch-events-max", "100000", "--stream-inflight-batches-max", "2048"],
        name="stream-commit-fails",
    )
    too_big = demo_batch("too-big", "too-big", 100_000)
    assert too_big.ByteSize() > 2 * 1024 * 1024
    behind = [demo_batch(f"behind-{n}", f"behind-{n}", 1) for n in range(1000)]
    with server.client() as client:
        before = client.get_balance(ACME)
        acks = client.usage.IngestUsage(iter([too_big, *behind]))
        with pytest.raises(ResourceExhausted) as refused:
            next(acks)
        assert "full" in refused.value.details, refused.value.details
        after = client.get_balance(ACME)
        assert credits_money(after) == credits_money(before), "no batch of the stream was applied"
        assert after.as_of_seq == before.as_of_seq, "nothing of the stream reached the journal"
        stream = Bidi(client)
        for batch in behind:
            resent = stream.send(batch)
            assert (resent.accepted, resent.duplicates) == (1, 0), f"{batch.batch_id} was applied before: {resent}"
        stream.close()
        assert_amount(client.get_balance(ACME).period_charges, "500")
