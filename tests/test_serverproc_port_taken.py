"""The test harness's ServerProcess starts its own server even when another one takes its port first.

CI once failed a test at set-up with UNAUTHENTICATED: free_port's port had been taken by another test's
server (one with API keys) between free_port and our server's bind. Ours exited ("already in use"), but
the other one answered the health probe SERVING, so the test talked to the wrong server.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests import serverproc
from tests.serverproc import HOST, ServerProcess


@pytest.fixture
def impostor() -> Iterator[int]:
    """Another gRPC server answering health SERVING on a port of its own; yields that port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{HOST}:0")
    server.start()
    try:
        yield port
    finally:
        server.stop(None)


def test_a_port_taken_before_our_bind_moves_our_server_to_another_port(
    impostor: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ports = iter([impostor])
    real_free_port = serverproc.free_port
    monkeypatch.setattr(serverproc, "free_port", lambda: next(ports, None) or real_free_port())
    srv = ServerProcess(tmp_path / "data", demo=True)
    try:
        srv.start()
        assert srv.port != impostor
        assert "already in use" in srv.log_path.read_text()  # our first try saw the port taken
        with srv.client() as client:
            assert client.get_balance("acme").customer_id == "acme"  # the demo customer: our server
    finally:
        srv.stop()


def test_a_restart_on_a_taken_port_fails_instead_of_reaching_the_other_server(impostor: int, tmp_path: Path) -> None:
    srv = ServerProcess(tmp_path / "data", port=impostor)
    try:
        with pytest.raises(serverproc.ServerStartError, match="already in use"):
            srv.start(timeout_s=20)
        assert srv.port == impostor  # a chosen port is kept: nothing to move to
    finally:
        srv.stop()
