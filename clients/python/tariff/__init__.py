"""Tariff Python client.

``from tariff import AsyncTariffClient, Usage`` (see ``tariff.client``); the generated protobuf
and gRPC modules are ``tariff.v1.*_pb2`` / ``*_pb2_grpc``. The client is imported lazily, on
first use of one of its names, so that importing ``tariff.v1`` alone (message types only) does
not load grpc.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tariff.client import (
        Aborted,
        AlreadyExists,
        AsyncTariffClient,
        Cancelled,
        DeadlineExceeded,
        FailedPrecondition,
        FieldViolation,
        Internal,
        InvalidArgument,
        NotFound,
        OutOfRange,
        PermissionDenied,
        ResourceExhausted,
        RetryPolicy,
        TariffClient,
        TariffError,
        Unauthenticated,
        Unavailable,
        Unimplemented,
        Usage,
        UsageBatcher,
        UsageStream,
        error_from_rpc,
        new_reservation_id,
        now_ms,
    )

__all__ = [
    "Aborted",
    "AlreadyExists",
    "AsyncTariffClient",
    "Cancelled",
    "DeadlineExceeded",
    "FailedPrecondition",
    "FieldViolation",
    "Internal",
    "InvalidArgument",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "RetryPolicy",
    "TariffClient",
    "TariffError",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "Usage",
    "UsageBatcher",
    "UsageStream",
    "error_from_rpc",
    "new_reservation_id",
    "now_ms",
]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("tariff.client"), name)
    raise AttributeError(f"module 'tariff' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
