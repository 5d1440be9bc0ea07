"""Request errors -> gRPC status codes, in one place.

Engine errors (engine/errors.py) and the server's own (limits, shutdown, unimplemented RPCs) are mapped here
to a status code, a message and, for INVALID_ARGUMENT, `google.rpc.BadRequest` field violations in the rich
status details. Anything else is a bug: it is logged and answered INTERNAL, never UNKNOWN.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine.errors import AlreadyExists, EngineError, FailedPrecondition, InvalidArgument, NotFound, Unimplemented

log = logging.getLogger("tariff.errors")

__all__ = ["ResourceExhausted", "Unavailable", "Unimplemented", "abort", "streaming", "to_status", "unary"]

# grpc ships no type information: a servicer context is typed as Any.
Context: TypeAlias = Any


class ResourceExhausted(EngineError):
    """A limit was hit (batch too large, journal full, overload); `retry_after_ms` when waiting helps."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(EngineError):
    """The server is shutting down or its writer stopped: retry elsewhere or later."""


_CODES: list[tuple[type[EngineError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
]


def to_status(exc: EngineError) -> grpc.Status:
    code = next((code for kind, code in _CODES if isinstance(exc, kind)), grpc.StatusCode.FAILED_PRECONDITION)
    details: list[any_pb2.Any] = []
    if isinstance(exc, InvalidArgument):
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(field=field, description=why)
                for field, why in exc.violations
            ]
        )
        packed = any_pb2.Any()
        packed.Pack(bad_request)
        details.append(packed)
    if isinstance(exc, ResourceExhausted) and exc.retry_after_ms is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(exc.retry_after_ms)
        packed = any_pb2.Any()
        packed.Pack(retry)
        details.append(packed)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=exc.message, details=details)
    return rpc_status.to_status(status)


async def abort(context: Context, exc: EngineError) -> NoReturn:
    await context.abort_with_status(to_status(exc))
    raise AssertionError("abort_with_status returns only by raising")


Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer")


def unary(
    method: Callable[[Servicer, Request, Context], Awaitable[Response]],
) -> Callable[[Servicer, Request, Context], Awaitable[Response]]:
    """Wraps a unary servicer method so that every error leaves as the right status."""

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Request, context: Context) -> Response:
        try:
            return await method(self, request, context)
        except EngineError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the server log")
            raise

    return wrapper


def streaming(
    method: Callable[[Servicer, Request, Context], AsyncIterator[Response]],
) -> Callable[[Servicer, Request, Context], AsyncIterator[Response]]:
    """The same for server-streaming and bidi methods (async generators)."""

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Request, context: Context) -> AsyncIterator[Response]:
        try:
            async for response in method(self, request, context):
                yield response
        except EngineError as exc:
            await abort(context, exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", method.__qualname__)
            await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method.__name__}; see the server log")

    return wrapper
