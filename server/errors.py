"""Request errors -> gRPC status codes, in one place.

Engine errors (engine/errors.py) and the server's own (limits, shutdown, unimplemented RPCs) are mapped here
to a status code, a message and, for INVALID_ARGUMENT, `google.rpc.BadRequest` field violations in the rich
status details. Anything else is a bug: it is logged and answered INTERNAL, never UNKNOWN.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from engine.errors import (
    AlreadyExists,
    EngineError,
    FailedPrecondition,
    InvalidArgument,
    LimitReached,
    NotFound,
    Unimplemented,
)
from server import telemetry

log = logging.getLogger("tariff.errors")

__all__ = [
    "DETAILS_BYTES_MAX",
    "MESSAGE_BYTES_MAX",
    "DeadlineExceeded",
    "OutOfRange",
    "PermissionDenied",
    "ResourceExhausted",
    "Unauthenticated",
    "Unavailable",
    "Unimplemented",
    "abort",
    "bounded_message",
    "check_deadline",
    "streaming",
    "to_status",
    "unary",
]

# grpc ships no type information: a servicer context is typed as Any.
Context: TypeAlias = Any


class ResourceExhausted(EngineError):
    """A limit was hit (batch too large, journal full, overload); `retry_after_ms` when waiting helps."""

    def __init__(self, message: str, retry_after_ms: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_ms = retry_after_ms


class Unavailable(EngineError):
    """The server is shutting down or its writer stopped: retry elsewhere or later."""


class Unauthenticated(EngineError):
    """No API key, or one the server does not know (server/auth.py)."""


class PermissionDenied(EngineError):
    """A known key asked for what its role or its customers do not allow (server/auth.py)."""


class OutOfRange(EngineError):
    """A position past the end of what exists (WatchAlerts after an alert seq not fired yet)."""


class DeadlineExceeded(EngineError):
    """The call's deadline passed before its command was submitted: nothing was applied."""


def check_deadline(context: Context | None) -> float | None:
    """Refuses to start a state change for a call whose deadline has already passed (it would never be acked).

    Returns the deadline as a time.monotonic() value (None: the call has none) for Sequencer.submit, which
    drops the command if the deadline passes while it is queued.
    """
    remaining: float | None = context.time_remaining() if context is not None else None
    if remaining is None:
        return None
    if remaining <= 0:
        raise DeadlineExceeded("the call's deadline passed before its command was applied; nothing was applied")
    return time.monotonic() + remaining


_CODES: list[tuple[type[EngineError], grpc.StatusCode]] = [
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (LimitReached, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (Unavailable, grpc.StatusCode.UNAVAILABLE),
    (Unimplemented, grpc.StatusCode.UNIMPLEMENTED),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
]


# A refusal travels in trailers: the message in grpc-message (percent-encoded: a byte outside printable ASCII takes
# three) and the google.rpc.Status, which repeats the message, in grpc-status-details-bin (base64: four bytes per
# three). Bounded so, they stay under 7 KiB together, within the smallest default limit on received metadata
# (8 KiB: Java's, and C-core's soft limit, past which it fails some calls and all past 16 KiB): a refusal is
# never turned into RESOURCE_EXHAUSTED by the client. README "What the server does today" documents both.
MESSAGE_BYTES_MAX = 512
DETAILS_BYTES_MAX = 4096
# One violation's field path and description, so that one quoting a long value leaves room for the others.
_FIELD_BYTES_MAX = 256
_DESCRIPTION_BYTES_MAX = 768


def cut_text(text: str, limit: int, tail: str = " …") -> str:
    """`text` when its UTF-8 is at most `limit` bytes; else its start, at a character boundary, and `tail`
    (empty when `limit` leaves no room for it)."""
    encoded = text.encode()
    if len(encoded) <= limit:
        return text
    if limit <= len(tail.encode()):
        return ""
    return encoded[: limit - len(tail.encode())].decode(errors="ignore") + tail


def bounded_message(exc: EngineError) -> str:
    """The status message: the error's, cut to MESSAGE_BYTES_MAX bytes (saying how many violations there are)."""
    if isinstance(exc, InvalidArgument) and len(exc.violations) > 1:
        listed_by = f"; {exc.listed_by} lists them all" if exc.listed_by else ""
        return cut_text(exc.message, MESSAGE_BYTES_MAX, f" … ({len(exc.violations)} violations in all{listed_by})")
    return cut_text(exc.message, MESSAGE_BYTES_MAX)


def _more(count: int, listed_by: str) -> error_details_pb2.BadRequest.FieldViolation:
    where = f"; {listed_by} lists them all" if listed_by else ""
    return error_details_pb2.BadRequest.FieldViolation(
        field="", description=f"and {count} more violations, not listed here (the status is kept small){where}"
    )


def _bad_request(exc: InvalidArgument, budget: int) -> error_details_pb2.BadRequest:
    """The first violations that fit in `budget` bytes and, when some do not, a last one (field "") counting them."""
    every = [
        error_details_pb2.BadRequest.FieldViolation(
            field=cut_text(field, _FIELD_BYTES_MAX), description=cut_text(why, _DESCRIPTION_BYTES_MAX)
        )
        for field, why in exc.violations
    ]
    reserve = error_details_pb2.BadRequest(field_violations=[_more(len(every), exc.listed_by)]).ByteSize()
    listed: list[error_details_pb2.BadRequest.FieldViolation] = []
    used = 0
    for violation in every:
        size = error_details_pb2.BadRequest(field_violations=[violation]).ByteSize()
        if used + size > budget - (0 if len(listed) + 1 == len(every) else reserve):
            break
        listed.append(violation)
        used += size
    if len(listed) < len(every):
        listed.append(_more(len(every) - len(listed), exc.listed_by))
    return error_details_pb2.BadRequest(field_violations=listed)


def _packed(detail: Any) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(detail)
    return packed


def to_status(exc: EngineError) -> grpc.Status:
    """The status `exc` is answered with: message at most MESSAGE_BYTES_MAX bytes, the google.rpc.Status (message
    and details) at most DETAILS_BYTES_MAX."""
    code = next((code for kind, code in _CODES if isinstance(exc, kind)), grpc.StatusCode.FAILED_PRECONDITION)
    status = status_pb2.Status(code=getattr(code_pb2, code.name), message=bounded_message(exc))
    if isinstance(exc, ResourceExhausted) and exc.retry_after_ms is not None:
        retry = error_details_pb2.RetryInfo()
        retry.retry_delay.FromMilliseconds(exc.retry_after_ms)
        status.details.append(_packed(retry))
    if isinstance(exc, InvalidArgument):
        # What the BadRequest adds besides its violations: the Any's type URL and the fields' tags and lengths.
        overhead = status_pb2.Status(details=[_packed(error_details_pb2.BadRequest())]).ByteSize() + 8
        bad_request = _bad_request(exc, DETAILS_BYTES_MAX - status.ByteSize() - overhead)
        status.details.insert(0, _packed(bad_request))
    assert status.ByteSize() <= DETAILS_BYTES_MAX, status.ByteSize()
    return rpc_status.to_status(status)


async def abort(context: Context, exc: EngineError) -> NoReturn:
    await context.abort_with_status(to_status(exc))
    raise AssertionError("abort_with_status returns only by raising")


Request = TypeVar("Request")
Response = TypeVar("Response")
Servicer = TypeVar("Servicer")


@dataclasses.dataclass
class SendLimit:
    """The largest message gRPC sends (--message-mb-max; server/app.py sets it)."""

    bytes_max: int = 16 * 1024 * 1024


send_limit = SendLimit()


MIB = 1024 * 1024
# How a caller asks an unpaged answer for less, by method; any other is made smaller only by a larger limit.
ASK_FOR_LESS = {
    "InvoiceService.GetRevenueReport": "ask for a shorter span or one customer, or ",
    "PricingService.SimulateVersion": "ask for a shorter span or fewer customer_ids, or ",
    # A page holds at least one version: one drafted under a larger --message-mb-max may be larger than this one.
    "PricingService.ListVersions": "page on past that version (page_token its number), or ",
}


def larger_limit(size: int) -> str:
    """What makes an answer of `size` bytes readable: a server (and a client) sending and reading that much."""
    return f"serve with --message-mb-max {size // MIB + 1} or more (and read it with a client accepting as much)"


def too_large(what: str, size: int, then: str = "", verb: str = "is") -> ResourceExhausted:
    """RESOURCE_EXHAUSTED for an answer (`what`) of `size` bytes, more than gRPC sends; `then`: what to do."""
    return ResourceExhausted(
        f"{what} {verb} {size:,} bytes, more than this server sends (--message-mb-max "
        f"{send_limit.bytes_max // MIB} MiB): {then or larger_limit(size)}"
    )


def _sendable(response: Response, method: str) -> Response:
    """A control-plane answer gRPC can send. A larger one (an unpaged answer: a revenue report of thousands of
    customers over many periods, say) is RESOURCE_EXHAUSTED saying the limit and what makes the answer fit, where
    gRPC would refuse to send it with its own words and log an error. The methods that change state check their
    answer's size first (or say what they did) so that this refusal never hides a change."""
    size = response.ByteSize() if isinstance(response, Message) else 0
    if size > send_limit.bytes_max:
        raise too_large("the answer", size, ASK_FOR_LESS.get(method, "") + larger_limit(size))
    return response


def unary(
    method: Callable[[Servicer, Request, Context], Awaitable[Response]],
) -> Callable[[Servicer, Request, Context], Awaitable[Response]]:
    """Wraps a unary servicer method so that every error leaves as the right status.

    Control-plane methods (all but usage and balances, the hot path) also get a trace span each.
    """
    span_name = f"tariff.v1.{method.__qualname__}"
    traced = not method.__qualname__.startswith(("UsageService.", "BalanceService."))

    @functools.wraps(method)
    async def wrapper(self: Servicer, request: Request, context: Context) -> Response:
        try:
            if traced:
                with telemetry.tracer.start_as_current_span(span_name):
                    return _sendable(await method(self, request, context), method.__qualname__)
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


# Requests that do not parse ------------------------------------------------------------------------------------


class UndecodableRequest(InvalidArgument):
    """The request bytes are not a valid message of the method's type (e.g. invalid UTF-8 in a string field)."""

    def __init__(self, reason: str) -> None:
        super().__init__([("request", f"could not be decoded: {reason}")])


class _Undecodable:
    """What a request that failed to parse is handed on as, so that it is refused in-band, not by grpc."""

    __slots__ = ("error",)

    def __init__(self, error: UndecodableRequest) -> None:
        self.error = error


def _tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    if deserializer is None:
        return None

    def parse(blob: bytes) -> Any:
        try:
            return deserializer(blob)
        except Exception as exc:  # protobuf's DecodeError: grpc itself would answer UNKNOWN
            return _Undecodable(UndecodableRequest(str(exc)))

    return parse


async def _decoded(requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, _Undecodable):
            raise request.error
        yield request


async def _responses(result: Any) -> AsyncIterator[Any]:
    # grpc takes a streaming behaviour as an async generator or as a coroutine that calls context.write().
    if hasattr(result, "__aiter__"):
        async for response in result:
            yield response
    else:
        await result


class UndecodableRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Answers INVALID_ARGUMENT for request bytes that do not parse, where grpc would answer UNKNOWN (unary) or
    the servicer INTERNAL (streams). First in the interceptor list, so it sees every call before anything else. A call
    the key gate refuses (no key, an unknown one, a role not allowed) reaches it with no deserializer, so its bytes
    are never parsed and the refusal is the answer (README "API keys")."""

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]], details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        deserializer = _tolerant(handler.request_deserializer)
        if not handler.request_streaming:
            if not handler.response_streaming:
                unary_behavior = handler.unary_unary

                async def unary_unary(request: Any, context: Context) -> Any:
                    if isinstance(request, _Undecodable):
                        await abort(context, request.error)
                    return await unary_behavior(request, context)

                return handler._replace(request_deserializer=deserializer, unary_unary=unary_unary)
            stream_behavior = handler.unary_stream

            async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
                if isinstance(request, _Undecodable):
                    await abort(context, request.error)
                async for response in _responses(stream_behavior(request, context)):
                    yield response

            return handler._replace(request_deserializer=deserializer, unary_stream=unary_stream)
        if not handler.response_streaming:
            gather_behavior = handler.stream_unary

            async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
                try:
                    return await gather_behavior(_decoded(requests), context)
                except UndecodableRequest as exc:  # a servicer that does not map errors itself
                    await abort(context, exc)

            return handler._replace(request_deserializer=deserializer, stream_unary=stream_unary)
        bidi_behavior = handler.stream_stream

        async def stream_stream(requests: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
            try:
                async for response in _responses(bidi_behavior(_decoded(requests), context)):
                    yield response
            except UndecodableRequest as exc:
                await abort(context, exc)

        return handler._replace(request_deserializer=deserializer, stream_stream=stream_stream)
