"""AlertService: alert rules and the alert stream."""

from __future__ import annotations

from tariff.v1 import (
    alerts_pb2_grpc,
)

from server.services.common import (
    _not_built,
    _not_built_stream,
)


class AlertService(alerts_pb2_grpc.AlertServiceServicer):
    CreateAlert = _not_built("alerts are not available yet: CreateAlert")
    WatchAlerts = _not_built_stream("alerts are not available yet: WatchAlerts")
