"""grpc.health.v1.Health for the server: Check, and Watch streams that end when the server stops.

grpc's own aio HealthServicer leaves a Watch stream open until the server cancels every call at the end of its
grace period: a client doing client-side health checking would hold every shutdown for the whole grace. Here a
stop sends each watcher NOT_SERVING and then ends its stream with UNAVAILABLE, as WatchBalance and WatchAlerts end.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypeAlias

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from engine.errors import NotFound
from server.errors import bounded_message

ServingStatus: TypeAlias = int  # a health_pb2.HealthCheckResponse.ServingStatus value
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
SERVICE_UNKNOWN = health_pb2.HealthCheckResponse.SERVICE_UNKNOWN
STOPPING = "the server is shutting down: watch another server"


class HealthService(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    def __init__(self) -> None:
        self._status: dict[str, ServingStatus] = {"": SERVING}
        self._watchers: set[asyncio.Event] = set()
        self.stopping = False

    def set(self, service: str, status: ServingStatus) -> None:
        """The status of `service` ("" for the whole server); ignored once stopping."""
        if not self.stopping:
            self._status[service] = status
            self._wake()

    def stop(self) -> None:
        """Every service NOT_SERVING for good; each Watch stream is sent that, then ended with UNAVAILABLE."""
        for service in self._status:
            self._status[service] = NOT_SERVING
        self.stopping = True
        self._wake()

    def _wake(self) -> None:
        for changed in self._watchers:
            changed.set()

    async def Check(self, request: health_pb2.HealthCheckRequest, context: Any) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            unknown = NotFound(f"unknown service {request.service!r}")
            await context.abort(grpc.StatusCode.NOT_FOUND, bounded_message(unknown))  # a long name is cut
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> AsyncIterator[health_pb2.HealthCheckResponse]:
        changed = asyncio.Event()
        self._watchers.add(changed)
        try:
            sent: ServingStatus | None = None
            while True:
                status = self._status.get(request.service, SERVICE_UNKNOWN)
                if status != sent:
                    yield health_pb2.HealthCheckResponse(status=status)
                    sent = status
                if self.stopping:
                    await context.abort(grpc.StatusCode.UNAVAILABLE, STOPPING)
                await changed.wait()
                changed.clear()
        finally:
            self._watchers.discard(changed)
