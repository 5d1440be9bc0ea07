"""Observability and operations audit over the wire: README "## Observability" and, under "## Reliability and
security", "### Listening and TLS", "### Limits and backpressure (defaults)" and "### Shutdown", against real
server processes on 127.0.0.1.

What is already checked elsewhere is not repeated here: the JSON log's start, admin, activity and stop lines and
gRPC core's silence (test_server_startup.py), the Prometheus counters (test_server_telemetry.py), the size and
concurrency limits, deadlines and backpressure (test_server_limits.py), TLS and mutual TLS (test_server_auth.py),
the watch streams' end at shutdown (test_server_watch.py), a clean and an in-flight SIGTERM (test_server_ops.py).
"""

from __future__ import annotations

import threading

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.serverproc import ServerFactory

CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


# ---------------------------------------------------------------------------------------------
# Shutdown


def test_a_health_watch_sees_not_serving_then_ends_at_once_with_unavailable(server_factory: ServerFactory) -> None:
    """A Health/Watch stream (client-side health checking) never ends on its own, like WatchBalance: at SIGTERM
    it is sent NOT_SERVING and then ended by the server with UNAVAILABLE, not left to hold the grace period and
    be cancelled at its end ("Cancelling all calls")."""
    server = server_factory(demo=True, name="health-watch")
    statuses: list[str] = []
    ended: list[grpc.RpcError] = []
    serving = threading.Event()
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

        def read() -> None:
            try:
                for reply in watch:
                    statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                    serving.set()
            except grpc.RpcError as exc:
                ended.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        assert serving.wait(10)
        assert server.terminate() == 0
        reader.join(10)
    assert statuses == ["SERVING", "NOT_SERVING"]
    assert [e.code() for e in ended] == [grpc.StatusCode.UNAVAILABLE]
    assert "the server is shutting down" in (ended[0].details() or ""), ended[0].details()
