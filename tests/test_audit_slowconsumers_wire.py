"""Audit over the wire of what slow, quiet and misbehaving stream clients cost the server and the other callers
(README "Limits and backpressure", "Watching balances and alerts"; balance.proto WatchBalance, AuthorizeStream,
AuthorizeBatches; alerts.proto WatchAlerts; usage.proto IngestUsage). What earlier tests cover is not repeated here:
a watcher that never reads gets the newest balance, coalesced (test_server_watch), an IngestUsage client that never
reads its acks (test_server_limits), open watches against --max-concurrent-rpcs (test_audit_watch2_wire).

Covered here: a quiet stream whose client sends HTTP/2 keepalive PINGs (the TypeScript client's every 30 s on a
connection with open streams that received nothing) is kept open, PINGs faster than the server's minimum close the
connection with GOAWAY too_many_pings; AuthorizeStream and AuthorizeBatches clients that never read their answers
make the server stop reading them, not queue answers. The pricing is test_audit_gateway2_wire's catalogue (`work`
events price n units at 1 credit each)."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import alerts_pb2, balance_pb2, pricing_pb2

from tests.audit_fixtures import refusal, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits2_wire import customer, grant
from tests.test_audit_gateway2_wire import catalogue
from tests.test_audit_watch2_wire import shown, watch

# The server's documented minimum between a client's PINGs on a connection with open calls (README "Limits and
# backpressure", server/app.py KEEPALIVE_PINGS_MIN_INTERVAL_MS).
PINGS_MIN_INTERVAL_S = 1.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-slowconsumers")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def pinging(interval_ms: int) -> list[tuple[str, int]]:
    """Channel options of a client that PINGs every `interval_ms` whatever it sends (as the TypeScript client's
    HTTP/2 session does on a connection with open streams that received nothing)."""
    return [
        ("grpc.enable_http_proxy", 0),
        ("grpc.keepalive_time_ms", interval_ms),
        ("grpc.keepalive_timeout_ms", 20_000),
        ("grpc.http2.max_pings_without_data", 0),  # gRPC's clients stop after 2 PINGs without data by default
    ]


def test_a_quiet_watch_whose_client_pings_at_the_minimum_interval_stays_open(server: ServerProcess) -> None:
    """README: watch streams "never end on their own". BLOCK customer `qp`, grant 10: (10, 0, 10). Its watcher's
    client PINGs every 2 s (twice the documented minimum of 1 s) while nothing changes for 9 s, about 4 PINGs; then
    a grant of 5 arrives on the same stream as (15, 0, 15). Before the fix the server took every PING sooner than
    gRPC's default 5 minutes after the previous one as abuse and after the third closed the connection (GOAWAY
    ENHANCE_YOUR_CALM too_many_pings): the stream ended UNAVAILABLE "Too many pings", and so would a TypeScript
    client's quiet watch or IngestUsage stream after about two minutes."""
    with (
        server.client() as client,
        server.client(channel_options=pinging(int(2_000 * PINGS_MIN_INTERVAL_S))) as watcher,
    ):
        customer(client, "qp", block=True)
        grant(client, "qp", "g", "10")
        stream, balances = watch(watcher, "qp")
        assert shown(balances) == ("10", "0", "10")
        time.sleep(9.0)  # quiet: only the client's PINGs cross the connection
        grant(client, "qp", "more", "5")
        assert shown(balances) == ("15", "0", "15")
        stream.cancel()


# HTTP/2 written by hand: a PING flood cannot be sent through gRPC's client, which PINGs at most once a second.

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
DATA, HEADERS, SETTINGS, PING, GOAWAY = 0, 1, 4, 6, 7
END_STREAM, ACK, END_HEADERS = 0x1, 0x1, 0x4
ENHANCE_YOUR_CALM = 11


def frame(kind: int, flags: int, stream_id: int, payload: bytes) -> bytes:
    return len(payload).to_bytes(3, "big") + bytes([kind, flags]) + stream_id.to_bytes(4, "big") + payload


def header(name: str, value: str) -> bytes:
    """An HPACK literal header field without indexing, new name, no Huffman coding (names and values < 127)."""
    encoded_name, encoded_value = name.encode(), value.encode()
    return bytes([0, len(encoded_name)]) + encoded_name + bytes([len(encoded_value)]) + encoded_value


def read_frame(sock: socket.socket) -> tuple[int, int, int, bytes]:
    head = read_exactly(sock, 9)
    size = int.from_bytes(head[:3], "big")
    return head[3], head[4], int.from_bytes(head[5:9], "big") & 0x7FFF_FFFF, read_exactly(sock, size)


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "the server closed the connection without GOAWAY"
        data += chunk
    return data


def test_pings_faster_than_once_a_second_close_the_connection_with_too_many_pings(server: ServerProcess) -> None:
    """README: a client that PINGs more often than once a second on a connection with open calls is sent GOAWAY
    ENHANCE_YOUR_CALM "too_many_pings" at its third PING too soon. A WatchBalance of `fp` (grant 10) written by
    hand: its first balance arrives (a DATA frame on stream 1); then 4 PINGs back to back. The server answers the
    first ones and then GOAWAY, error 11, debug data too_many_pings; another client is served as usual."""
    with server.client() as client:
        customer(client, "fp", block=True)
        grant(client, "fp", "g", "10")
        host, _, port = server.target.rpartition(":")
        request = balance_pb2.WatchBalanceRequest(customer_id="fp").SerializeToString()
        fields = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/tariff.v1.BalanceService/WatchBalance"),
            (":authority", server.target),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
        ]
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
            sock.sendall(frame(HEADERS, END_HEADERS, 1, b"".join(header(n, v) for n, v in fields)))
            sock.sendall(frame(DATA, END_STREAM, 1, b"\0" + len(request).to_bytes(4, "big") + request))
            while (received := read_frame(sock))[0] != DATA:
                if received[0] == SETTINGS and not received[1] & ACK:
                    sock.sendall(frame(SETTINGS, ACK, 0, b""))
            balance = balance_pb2.Balance.FromString(received[3][5:])
            assert (balance.customer_id, balance.credits_remaining) == ("fp", "10")
            # The first PING is let pass, the next three are too soon: GOAWAY at the third. One write, so that
            # the server has read them all when it closes (else the close could reset the connection).
            sock.sendall(b"".join(frame(PING, 0, 0, n.to_bytes(8, "big")) for n in range(4)))
            while (received := read_frame(sock))[0] != GOAWAY:
                pass
            error_code, debug = int.from_bytes(received[3][4:8], "big"), received[3][8:]
            assert (error_code, debug) == (ENHANCE_YOUR_CALM, b"too_many_pings")
        assert client.get_balance("fp").credits_remaining == "10"


# The answers a client never reads: the server stops reading, it does not queue answers

OFFERED = 4_000  # requests a client offers; each carries a 64 KiB event_type (only its digest is kept)
# and a request_id of 256 bytes, the most allowed, which each answer echoes: about 220 answers fill 64 KiB
EVENT_TYPE_BYTES = 64 * 1024


def never_read(server: ServerProcess, method: str, message: Callable[[int], object]) -> int:
    """How many of OFFERED messages a client that never reads its answers got the server to take, once it stops
    taking more (nothing taken for 2 s). Its channel does not probe bandwidth (no BDP), so the window for the
    server's answers stays at gRPC's 64 KiB."""
    taken = 0
    stop = threading.Event()

    def offered() -> Iterator[object]:
        nonlocal taken
        for n in range(OFFERED):
            if stop.is_set():
                return
            taken += 1
            yield message(n)

    options = [("grpc.enable_http_proxy", 0), ("grpc.http2.bdp_probe", 0)]
    with server.client(channel_options=options) as hostile:
        call = getattr(hostile.balance, method)(offered(), timeout=120)  # its answers are never read
        try:
            last, stable_since = -1, time.monotonic()
            while time.monotonic() - stable_since < 2.0:
                time.sleep(0.25)
                if taken != last:
                    last, stable_since = taken, time.monotonic()
                assert taken < OFFERED, f"the server took all {taken} messages of a client that reads no answer"
            return taken
        finally:
            stop.set()
            call.cancel()


def decision(n: int) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=f"r{n}-".ljust(256, "x"), customer_id="nr", event_type="x" * EVENT_TYPE_BYTES, values={"n": 1}
    )


def test_an_authorize_stream_whose_answers_are_never_read_is_no_longer_read(server: ServerProcess) -> None:
    """README "Limits and backpressure": an AuthorizeStream holds one request, the next read once the answer before
    it is sent. A client offers 4,000 decisions for `nr` (each 64 KiB: 250 MiB in all) and reads no answer: once
    its answers fill their window the server stops reading, and flow control stops the client well before the
    4,000th (answers echo the 256-byte request_id: about 220 fill 64 KiB, plus the requests in the server's receive
    window, some MiB: about 450 in all on loopback).
    Meanwhile another client is served."""
    with server.client() as client:
        customer(client, "nr", block=True)
        grant(client, "nr", "g", "10")
        taken = never_read(server, "AuthorizeStream", decision)
        assert client.get_balance("nr").credits_remaining == "10"
    print(f"AuthorizeStream: {taken} of {OFFERED} requests taken")


def test_authorize_batches_whose_answers_are_never_read_are_no_longer_read(server: ServerProcess) -> None:
    """As above for AuthorizeBatches, one decision a message (no hold: each answer is ready at once): the server
    stops reading once its answers fill their window; at most 64 messages waiting for holds would be read beyond
    them. 4,000 offered, far fewer taken; another client is served meanwhile."""
    with server.client() as client:
        customer(client, "nb", block=True)
        grant(client, "nb", "g", "10")

        def message(n: int) -> balance_pb2.AuthorizeBatch:
            request = decision(n)
            request.customer_id = "nb"
            return balance_pb2.AuthorizeBatch(requests=[request])

        taken = never_read(server, "AuthorizeBatches", message)
        assert client.get_balance("nb").credits_remaining == "10"
    print(f"AuthorizeBatches: {taken} of {OFFERED} messages taken")


# Connections: each costs the server a descriptor


class LimitedFiles(ServerProcess):
    """A server whose limit on open files is `files` (soft and hard), as a supervisor may set it."""

    def __init__(self, data_dir: Path, files: int) -> None:
        super().__init__(data_dir, extra_args=["--close-grace", "off"])
        self.files = files

    def command(self) -> list[str]:
        return ["prlimit", f"--nofile={self.files}:{self.files}", *super().command()]


def open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_connections_never_use_up_the_servers_descriptors(tmp_path: Path) -> None:
    """README "Limits and backpressure": the server takes at most its limit on open files less 128 connections at
    once (the 128 kept for its own files); past it a new connection is closed at once. Under a limit of 256, 300
    connections that complete the HTTP/2 handshake and then send nothing: the server holds fewer than 256 files
    (at most 128 of them connections), and once they close a new client is served. Before the fix the server
    accepted connections until every descriptor was taken (256 open), where a new client waited for an accept
    that failed and the server could open no file."""
    files = 256
    process = LimitedFiles(tmp_path / "data", files)
    process.start()
    idle: list[socket.socket] = []
    try:
        assert process.pid is not None
        host, _, port = process.target.rpartition(":")
        for _ in range(300):
            try:
                sock = socket.create_connection((host, int(port)), timeout=10)
                sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
            except OSError:
                continue  # closed at once by the server: fine
            idle.append(sock)
        time.sleep(1.0)  # let the server accept what it will
        held = open_files(process.pid)
        assert held < files, f"the server holds {held} of its {files} descriptors"
        for sock in idle:
            sock.close()
        idle.clear()
        with process.client() as client:
            assert wait_for(lambda: served(client), 30), "a new client is not served once the idle ones left"
    finally:
        for sock in idle:
            sock.close()
        process.stop()


def served(client: TariffClient) -> bool:
    try:
        client.pricing.ListProducts(pricing_pb2.ListProductsRequest(), timeout=5)
    except TariffError:
        return False
    return True


# Watchers: no per-key or per-customer limit, the server-wide --max-concurrent-rpcs alone


def test_watchers_past_max_concurrent_rpcs_are_refused_naming_the_flag(tmp_path: Path) -> None:
    """README "Watching balances and alerts": every open watch counts against --max-concurrent-rpcs, the one bound
    on watchers (none per key or per customer). Under a limit of 3, three WatchBalance streams of `w1` hold every
    place: a fourth watch, a WatchAlerts and a GetBalance are each RESOURCE_EXHAUSTED naming the limit, 3, and the
    flag that sets it; once one watch is cancelled a WatchAlerts is served. Before the fix the refusal named the
    number alone ("the server is running its maximum of 3 calls; retry shortly")."""
    process = ServerProcess(tmp_path / "data", extra_args=["--close-grace", "off", "--max-concurrent-rpcs", "3"])
    process.start()
    try:
        with process.client() as client:
            catalogue(client)
            customer(client, "w1", block=True)
            grant(client, "w1", "g", "10")
            watched = [watch(client, "w1") for _ in range(3)]
            assert [shown(balances) for _, balances in watched] == [("10", "0", "10")] * 3
            refusals = [
                lambda: shown(watch(client, "w1")[1]),
                lambda: next(iter(client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(), timeout=10))),
                lambda: client.get_balance("w1"),
            ]
            for call in refusals:
                code, details = refusal(call)
                assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, details
                assert "maximum of 3 calls" in details and "--max-concurrent-rpcs" in details, details
            watched[0][0].cancel()
            assert wait_for(lambda: served(client), 10)
            for stream, _ in watched[1:]:
                stream.cancel()
    finally:
        process.stop()
