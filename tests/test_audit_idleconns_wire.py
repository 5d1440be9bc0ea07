"""Audit over the wire of idle client connections (README "Limits and backpressure": a connection with no call open
for `--connection-idle-max` is sent GOAWAY and closed; a connection with an open stream is not). The server here
closes idle connections after 2 s, so that each test waits a few seconds, not the default 30 minutes.

Before `--connection-idle-max` an idle connection was kept for good: those of crashed or leaked clients added up
to the server's cap on connections (its open-files limit less 128), and then every new client was refused."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits2_wire import customer, grant
from tests.test_audit_gateway2_wire import catalogue
from tests.test_audit_readmeops_wire import assert_refused, run_serve
from tests.test_audit_slowconsumers_wire import ACK, GOAWAY, PREFACE, SETTINGS, frame, read_frame
from tests.test_audit_watch2_wire import shown, watch

IDLE_S = 2.0
INTERNAL_ERROR = 2  # the HTTP/2 error code gRPC's idle GOAWAY carries, with debug data "connection idle"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-idleconns")
    args = ["--close-grace", "off", "--connection-idle-max", f"{int(IDLE_S * 1000)}ms"]
    yield from serving(ServerProcess(root / "data", extra_args=args), catalogue)


def test_a_connection_with_no_call_is_sent_goaway_after_the_idle_time(server: ServerProcess) -> None:
    """A raw HTTP/2 connection that completes the handshake and then sends nothing: after --connection-idle-max
        (2 s here; not sooner) the server sends GOAWAY (last stream 0: no call of it is lost; gRPC's error code
    INTERNAL_ERROR, debug data "connection idle") and closes it. Before the flag it was kept for
        good (the read below timed out after 30 s)."""
    host, _, port = server.target.rpartition(":")
    opened = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(PREFACE + frame(SETTINGS, 0, 0, b""))
        while (received := read_frame(sock))[0] != GOAWAY:
            if received[0] == SETTINGS and not received[1] & ACK:
                sock.sendall(frame(SETTINGS, ACK, 0, b""))
        waited_s = time.monotonic() - opened
        last_stream_id, error_code = int.from_bytes(received[3][:4], "big"), int.from_bytes(received[3][4:8], "big")
        assert (last_stream_id, error_code, received[3][8:]) == (0, INTERNAL_ERROR, b"connection idle"), received
        while sock.recv(4096):  # then the server closes it (the read times out after 30 s if not)
            pass
    assert waited_s >= IDLE_S * 0.9, f"GOAWAY after {waited_s:.2f} s, before the idle time"


def test_a_python_client_idle_past_the_limit_calls_again_as_usual(server: ServerProcess) -> None:
    """The Python client gets customer `ip`'s balance (grant 10: remaining 10), then makes no call past the idle
    time: its connection is closed (the channel goes from READY to IDLE), and its next call connects again and is
    answered as usual, remaining 10, no error."""
    with server.client() as client:
        customer(client, "ip", block=True)
        grant(client, "ip", "g", "10")
        states: list[grpc.ChannelConnectivity] = []

        def changed(state: grpc.ChannelConnectivity) -> None:
            states.append(state)  # from gRPC's thread: list.append is atomic

        client.channel.subscribe(changed)
        try:
            assert client.get_balance("ip").credits_remaining == "10"
            assert wait_for(lambda: grpc.ChannelConnectivity.READY in states, 10)
            ready_at = states.index(grpc.ChannelConnectivity.READY)
            closed = wait_for(lambda: grpc.ChannelConnectivity.IDLE in states[ready_at:], 30)
            assert closed, f"the idle connection was not closed: {states}"
            assert client.get_balance("ip").credits_remaining == "10"
        finally:
            client.channel.unsubscribe(changed)


def test_a_quiet_watch_outlives_the_idle_time(server: ServerProcess) -> None:
    """A connection with an open call is not idle: customer `iw` (BLOCK, grant 10) is watched, (10, 0, 10), on a
    connection that carries nothing else; nothing changes for twice the idle time; then a grant of 5 arrives on the
    same stream as (15, 0, 15) (a closed connection would have ended it UNAVAILABLE)."""
    with server.client() as client, server.client() as watcher:
        customer(client, "iw", block=True)
        grant(client, "iw", "g", "10")
        stream, balances = watch(watcher, "iw")
        assert shown(balances) == ("10", "0", "10")
        time.sleep(2 * IDLE_S)
        grant(client, "iw", "more", "5")
        assert shown(balances) == ("15", "0", "15")
        stream.cancel()


@pytest.mark.parametrize("idle", ["0s", "25d", "30", "-1s", "forever"])
def test_an_idle_time_gRPC_cannot_take_is_a_usage_error(tmp_path: Path, idle: str) -> None:
    """README "Server flags": --connection-idle-max is 1 ms to 2,147,483,647 ms (gRPC's 32-bit milliseconds) or
    off; 0 would close every connection at once, 25 days overflows gRPC's value, others are not durations: each is
    a usage error (exit 2) before the data directory is touched."""
    data_dir = tmp_path / "data"
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--connection-idle-max", idle)
    assert_refused(result, data_dir, "Invalid value for '--connection-idle-max'")
