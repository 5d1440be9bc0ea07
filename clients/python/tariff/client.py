"""The Tariff Python client: what a product backend or gateway imports.

Four layers, thinnest first:

- Raw generated stubs for every service (``client.usage``, ``client.balance``, ``client.pricing``,
  ``client.contracts``, ``client.invoices``, ``client.alerts``, ``client.health``), so nothing in
  the contract (``proto/tariff/v1``) is out of reach. They go through a small channel proxy that
  adds the ``authorization: Bearer KEY`` metadata when an API key is given and a default deadline
  to every unary call that does not pass its own ``timeout``, and raises the typed errors below
  (``error_from_rpc``) instead of ``grpc.RpcError``, on the call and while reading a stream.
- Convenience methods (``get_balance``, ``authorize``, ``ingest_batch``, ``wait_ready``, ``list_rate_cards``)
  with a deadline on every call; they raise the same typed errors.
- ``UsageStream``: batches over the bidi ``IngestUsage`` RPC with a bounded number of batches in
  flight, acks matched to sends by order, and reconnect-and-resend of every unacknowledged batch
  (same transaction ids: the server dedupes them) when the stream breaks.
- ``UsageBatcher``: buffers single events into batches on a ``UsageStream`` (by size or age).

``AsyncTariffClient`` is built on ``grpc.aio``; ``TariffClient`` is the synchronous equivalent of
the stubs and convenience methods (no streaming helpers).

Errors: ``TariffError`` (``.code``, ``.details``, ``.field_violations`` parsed from a
``google.rpc.BadRequest`` in the rich status) with one subclass per status code the server uses,
e.g. ``InvalidArgument``, ``NotFound``, ``Unavailable``. Per-event outcomes are not errors: they
are ``IngestAck.rejected`` entries.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import ipaddress
import itertools
import logging
import random
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping, Sequence
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, Final, Generic, Self, TypeVar

import grpc
import grpc.aio
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status

from tariff.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    balance_pb2,
    balance_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

if TYPE_CHECKING:
    from tariff.gateway import AuthorizeBatcher

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

_log = logging.getLogger("tariff.client")

Metadata = tuple[tuple[str, str], ...]
# The channel a client makes its calls on: grpc.aio's (AsyncTariffClient) or plain grpc's (TariffClient).
_ChannelT = TypeVar("_ChannelT", grpc.Channel, grpc.aio.Channel)

# Channel defaults; `channel_options` given to a client override them key by key.
DEFAULT_CHANNEL_OPTIONS: Final[Mapping[str, int | str]] = MappingProxyType(
    {
        # Replies such as ListInvoices or ExplainLineItem pages can exceed gRPC's 4 MiB default.
        "grpc.max_receive_message_length": 64 * 1024 * 1024,
        # Reconnect soon after a server restart (gRPC's defaults start at 1 s and grow to 120 s).
        "grpc.initial_reconnect_backoff_ms": 200,
        "grpc.max_reconnect_backoff_ms": 5_000,
        "grpc.primary_user_agent": "tariff-python/0.1",
    }
)


def now_ms() -> int:
    """The current time as Unix milliseconds (UTC), the unit of ``Usage.timestamp_ms``."""
    return time.time_ns() // 1_000_000


# --------------------------------------------------------------------------------------------
# Errors


@dataclasses.dataclass(frozen=True, slots=True)
class FieldViolation:
    """One entry of a ``google.rpc.BadRequest``: which request field is wrong, and why."""

    field: str
    description: str
    reason: str = ""


class TariffError(Exception):
    """A request-level failure reported by the server (or by the client on its behalf).

    ``code`` is the ``grpc.StatusCode``, ``details`` the status message, ``field_violations``
    the ``google.rpc.BadRequest`` violations of the rich status (empty when there are none) and
    ``status`` the whole ``google.rpc.Status`` when the server sent one, ``retry_after_s`` the
    server's ``google.rpc.RetryInfo`` delay when it sent one (an overloaded server does).
    ``reservation_id``: on an ``authorize`` with ``reserve``, the id its request carried (the caller's, or the one
    the client chose), so that a retry holds once; empty otherwise.
    """

    default_code: Any = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        details: str = "",
        *,
        code: Any = None,
        field_violations: Sequence[FieldViolation] = (),
        status: status_pb2.Status | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        self.code: Any = code if code is not None else type(self).default_code
        self.retry_after_s = retry_after_s
        self.details = details
        self.field_violations: tuple[FieldViolation, ...] = tuple(field_violations)
        self.status = status
        self.reservation_id = ""
        super().__init__(self._message())

    def _message(self) -> str:
        text = f"{self.code.name}: {self.details}" if self.details else str(self.code.name)
        # The server's message states its violations already (the first ones, when there are many): add the others.
        stated = (f"{v.field}: {v.description}" for v in self.field_violations)
        unstated = [violation for violation in stated if violation not in self.details]
        if unstated:
            text += " [" + "; ".join(unstated) + "]"
        return text


class InvalidArgument(TariffError):
    default_code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(TariffError):
    default_code = grpc.StatusCode.NOT_FOUND


class AlreadyExists(TariffError):
    default_code = grpc.StatusCode.ALREADY_EXISTS


class FailedPrecondition(TariffError):
    default_code = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(TariffError):
    default_code = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unauthenticated(TariffError):
    default_code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TariffError):
    default_code = grpc.StatusCode.PERMISSION_DENIED


class Unavailable(TariffError):
    default_code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(TariffError):
    default_code = grpc.StatusCode.UNIMPLEMENTED


class DeadlineExceeded(TariffError):
    default_code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(TariffError):
    default_code = grpc.StatusCode.CANCELLED


class Aborted(TariffError):
    default_code = grpc.StatusCode.ABORTED


class Internal(TariffError):
    default_code = grpc.StatusCode.INTERNAL


class OutOfRange(TariffError):
    default_code = grpc.StatusCode.OUT_OF_RANGE


_ERROR_BY_CODE: Final[Mapping[Any, type[TariffError]]] = {
    cls.default_code: cls
    for cls in (
        InvalidArgument,
        NotFound,
        AlreadyExists,
        FailedPrecondition,
        ResourceExhausted,
        Unauthenticated,
        PermissionDenied,
        Unavailable,
        Unimplemented,
        DeadlineExceeded,
        Cancelled,
        Aborted,
        Internal,
        OutOfRange,
    )
}


def _error_for_code(
    code: Any,
    details: str,
    field_violations: Sequence[FieldViolation] = (),
    status: status_pb2.Status | None = None,
    retry_after_s: float | None = None,
) -> TariffError:
    cls = _ERROR_BY_CODE.get(code, TariffError)
    return cls(details, code=code, field_violations=field_violations, status=status, retry_after_s=retry_after_s)


def error_from_rpc(error: grpc.RpcError) -> TariffError:
    """The typed error for a failed call (``grpc.RpcError`` or ``grpc.aio.AioRpcError``).

    Field violations come from a ``google.rpc.BadRequest`` packed in the rich status
    (``grpc-status-details-bin`` trailer), when the server sent one.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or ""
    status: status_pb2.Status | None = None
    violations: list[FieldViolation] = []
    retry_after_s: float | None = None
    with contextlib.suppress(Exception):  # no trailers, or a status that contradicts the call's
        status = rpc_status.from_call(error)
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad_request = error_details_pb2.BadRequest()
                detail.Unpack(bad_request)
                violations.extend(
                    FieldViolation(v.field, v.description, v.reason) for v in bad_request.field_violations
                )
            elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
                retry = error_details_pb2.RetryInfo()
                detail.Unpack(retry)
                retry_after_s = retry.retry_delay.ToMilliseconds() / 1000
    return _error_for_code(code, str(details), violations, status, retry_after_s)


# --------------------------------------------------------------------------------------------
# Usage events


@dataclasses.dataclass(frozen=True, slots=True)
class Usage:
    """One usage event as product code writes it; ``to_proto()`` gives the wire ``UsageEvent``.

    ``transaction_id`` is the idempotency key: reuse it when resending the same event.
    ``timestamp_ms`` is Unix milliseconds, UTC (see ``now_ms()``).
    """

    transaction_id: str
    customer_id: str
    event_type: str
    timestamp_ms: int
    dimensions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    values: Mapping[str, float] = dataclasses.field(default_factory=dict)
    reservation_id: str = ""

    def to_proto(self) -> usage_pb2.UsageEvent:
        return usage_pb2.UsageEvent(
            transaction_id=self.transaction_id,
            customer_id=self.customer_id,
            event_type=self.event_type,
            timestamp_ms=self.timestamp_ms,
            dimensions=self.dimensions,
            values=self.values,
            reservation_id=self.reservation_id,
        )

    @classmethod
    def from_proto(cls, event: usage_pb2.UsageEvent) -> Usage:
        return cls(
            transaction_id=event.transaction_id,
            customer_id=event.customer_id,
            event_type=event.event_type,
            timestamp_ms=event.timestamp_ms,
            dimensions=dict(event.dimensions),
            values=dict(event.values),
            reservation_id=event.reservation_id,
        )


def _to_event(usage: Usage | usage_pb2.UsageEvent) -> usage_pb2.UsageEvent:
    return usage if isinstance(usage, usage_pb2.UsageEvent) else usage.to_proto()


def _to_batch(events: Iterable[Usage | usage_pb2.UsageEvent], batch_id: str) -> usage_pb2.UsageBatch:
    return usage_pb2.UsageBatch(batch_id=batch_id, events=[_to_event(e) for e in events])


# --------------------------------------------------------------------------------------------
# Channel proxy: metadata and default deadlines for the generated stubs


_Item = TypeVar("_Item")


def _every_page(read_page: Callable[[str], tuple[Sequence[_Item], str]]) -> list[_Item]:
    """Every item of a paged list RPC: `read_page(token)` answers one page's items and its next_page_token, read in
    turn from "" until a page answers none."""
    items: list[_Item] = []
    token = ""
    while True:
        page, token = read_page(token)
        items.extend(page)
        if not token:
            return items


async def _every_page_async(read_page: Callable[[str], Awaitable[tuple[Sequence[_Item], str]]]) -> list[_Item]:
    """`_every_page` for the async client."""
    items: list[_Item] = []
    token = ""
    while True:
        page, token = await read_page(token)
        items.extend(page)
        if not token:
            return items


class _CallableProxy:
    """Wraps a stub's multi-callable: merges the client's metadata, adds the default timeout."""

    __slots__ = ("_inner", "_metadata", "_timeout_s")

    def __init__(self, inner: Any, metadata: Metadata, timeout_s: float | None) -> None:
        self._inner = inner
        self._metadata = metadata
        self._timeout_s = timeout_s

    def _kwargs(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        if self._metadata:
            given = tuple(kwargs.get("metadata") or ())
            keys = {k for k, _ in given}
            kwargs["metadata"] = given + tuple((k, v) for k, v in self._metadata if k not in keys)
        if self._timeout_s is not None and kwargs.get("timeout") is None:
            kwargs["timeout"] = self._timeout_s
        return kwargs

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner(*args, **self._kwargs(kwargs))

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.with_call(*args, **self._kwargs(kwargs))

    def future(self, *args: Any, **kwargs: Any) -> Any:
        return self._inner.future(*args, **self._kwargs(kwargs))


class _TypedStream:
    """A streaming call (sync) whose failures, raised while iterating, are the typed errors."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> Any:
        try:
            return next(self._call)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e

    def __getattr__(self, name: str) -> Any:  # cancel(), code(), trailing_metadata(), ...
        return getattr(self._call, name)


class _TypedAioCall:
    """A ``grpc.aio`` call whose failures, when awaited, read or iterated, are the typed errors."""

    def __init__(self, call: Any) -> None:
        self._call = call

    def __await__(self) -> Any:
        try:
            return (yield from self._call.__await__())
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e

    async def _typed_iter(self) -> AsyncIterator[Any]:
        try:
            async for item in self._call:
                yield item
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._typed_iter()

    async def read(self) -> Any:
        try:
            return await self._call.read()
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e

    def __getattr__(self, name: str) -> Any:  # write(), done_writing(), cancel(), ...
        return getattr(self._call, name)


class _TypedCallable:
    """A stub's multi-callable raising the typed errors (``error_from_rpc``), as the client's own methods do."""

    __slots__ = ("_inner",)

    def __init__(self, inner: _CallableProxy) -> None:
        self._inner = inner

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            result = self._inner(*args, **kwargs)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e
        if isinstance(result, grpc.aio.Call):
            return _TypedAioCall(result)
        if isinstance(result, grpc.Call) and hasattr(result, "__next__"):
            return _TypedStream(result)
        return result

    def with_call(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._inner.with_call(*args, **kwargs)
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e

    def future(self, *args: Any, **kwargs: Any) -> Any:
        # A grpc.Future: its result() raises grpc.RpcError; error_from_rpc() turns one into the typed error.
        return self._inner.future(*args, **kwargs)


class _ChannelProxy:
    """What the generated stubs are built on: the real channel, seen through _CallableProxy (and, for the
    public stubs, _TypedCallable)."""

    def __init__(self, channel: Any, metadata: Metadata, unary_timeout_s: float | None, *, typed: bool) -> None:
        self._channel = channel
        self._metadata = metadata
        self._unary_timeout_s = unary_timeout_s
        self._typed = typed

    def _wrap(self, inner: Any, timeout_s: float | None) -> _CallableProxy | _TypedCallable:
        proxy = _CallableProxy(inner, self._metadata, timeout_s)
        return _TypedCallable(proxy) if self._typed else proxy

    def unary_unary(self, *args: Any, **kwargs: Any) -> _CallableProxy | _TypedCallable:
        return self._wrap(self._channel.unary_unary(*args, **kwargs), self._unary_timeout_s)

    def unary_stream(self, *args: Any, **kwargs: Any) -> _CallableProxy | _TypedCallable:
        return self._wrap(self._channel.unary_stream(*args, **kwargs), None)

    def stream_unary(self, *args: Any, **kwargs: Any) -> _CallableProxy | _TypedCallable:
        return self._wrap(self._channel.stream_unary(*args, **kwargs), None)

    def stream_stream(self, *args: Any, **kwargs: Any) -> _CallableProxy | _TypedCallable:
        return self._wrap(self._channel.stream_stream(*args, **kwargs), None)


_GRPC_TARGET_SCHEMES: Final = ("dns:///", "dns:", "ipv4:", "ipv6:")


def _is_loopback(target: str) -> bool:
    """Whether `target` names this machine (localhost, 127.0.0.0/8, ::1), in any of the ways gRPC spells one."""
    address = next((target[len(s) :] for s in _GRPC_TARGET_SCHEMES if target.startswith(s)), target)
    host = address.rsplit(":", 1)[0] if address.startswith("[") or address.count(":") == 1 else address
    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _channel_options(target: str, overrides: Sequence[tuple[str, Any]]) -> list[tuple[str, Any]]:
    options: dict[str, Any] = dict(DEFAULT_CHANNEL_OPTIONS)
    if _is_loopback(target):
        # gRPC's C core would send even a connection to this machine through the http_proxy, https_proxy or
        # grpc_proxy of the environment (and fail where the proxy cannot reach it); the Go and TypeScript clients
        # never proxy loopback. A remote target keeps the environment's proxy.
        options["grpc.enable_http_proxy"] = 0
    options.update(dict(overrides))
    return list(options.items())


def _auth_metadata(api_key: str | None, actor: str | None = None) -> Metadata:
    auth: Metadata = (("authorization", f"Bearer {api_key}"),) if api_key else ()
    return auth + ((("x-actor", actor),) if actor else ())


def _tls_credentials(
    tls: bool, root_certificates: bytes | None, certificate_chain: bytes | None, private_key: bytes | None
) -> grpc.ChannelCredentials | None:
    """TLS channel credentials when any TLS option is given (system roots unless `root_certificates`)."""
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("client_certificate_chain and client_private_key go together (mutual TLS)")
    if not (tls or root_certificates or certificate_chain):
        return None
    return grpc.ssl_channel_credentials(root_certificates, private_key, certificate_chain)


def new_reservation_id() -> str:
    """A reservation id chosen before the call (``py-r-`` and 128 random bits), as the Go, TypeScript and Java
    clients do: the server may make the hold before a deadline runs out, and a retry under the same id holds once,
    where a server-made id would be lost with the answer."""
    return "py-r-" + secrets.token_hex(16)


def _authorize_failed(error: grpc.RpcError, request: balance_pb2.AuthorizeRequest) -> TariffError:
    """The error of a failed authorize, carrying the reservation id its request held credit under, if any."""
    failed = error_from_rpc(error)
    failed.reservation_id = request.reservation_id
    return failed


def _authorize_request(
    customer_id: str,
    event_type: str,
    dimensions: Mapping[str, str] | None,
    values: Mapping[str, float] | None,
    request_id: str,
    reserve: bool,
    reservation_ttl_s: float | None,
    reservation_id: str,
) -> balance_pb2.AuthorizeRequest:
    if reserve and not reservation_id:
        reservation_id = new_reservation_id()
    request = balance_pb2.AuthorizeRequest(
        request_id=request_id,
        customer_id=customer_id,
        event_type=event_type,
        dimensions=dimensions or {},
        values=values or {},
        reserve=reserve,
        reservation_id=reservation_id,
    )
    if reservation_ttl_s is not None:
        ttl = duration_pb2.Duration()
        ttl.FromNanoseconds(round(reservation_ttl_s * 1e9))
        request.reservation_ttl.CopyFrom(ttl)
    return request


# Health statuses that a retrying wait_ready keeps waiting through (the server is starting).
_WAIT_READY_RETRY_CODES: Final = frozenset(
    {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}
)


class _Stubs(Generic[_ChannelT]):
    """The generated stubs of every service, sharing one channel: public ones that raise the typed errors, and
    untyped ones for the helpers here that look at grpc's own errors (stream resends, wait_ready). Its arguments
    are both clients' (see ``AsyncTariffClient``); each opens its own kind of channel (``_open_channel``)."""

    channel: _ChannelT

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        default_timeout_s: float = 10.0,
        credentials: grpc.ChannelCredentials | None = None,
        channel_options: Sequence[tuple[str, Any]] = (),
        tls: bool = False,
        root_certificates: bytes | None = None,
        client_certificate_chain: bytes | None = None,
        client_private_key: bytes | None = None,
        actor: str | None = None,
    ) -> None:
        self.target = target
        self.default_timeout_s = default_timeout_s
        self.metadata: Metadata = _auth_metadata(api_key, actor)
        options = _channel_options(target, channel_options)
        credentials = credentials or _tls_credentials(
            tls, root_certificates, client_certificate_chain, client_private_key
        )
        self.channel = self._open_channel(target, options, credentials)
        self._init_stubs(self.channel, self.metadata, default_timeout_s)

    def _open_channel(
        self, target: str, options: list[tuple[str, Any]], credentials: grpc.ChannelCredentials | None
    ) -> _ChannelT:
        raise NotImplementedError

    def _init_stubs(self, channel: Any, metadata: Metadata, unary_timeout_s: float | None) -> None:
        typed = _ChannelProxy(channel, metadata, unary_timeout_s, typed=True)
        raw = _ChannelProxy(channel, metadata, unary_timeout_s, typed=False)
        self.usage = usage_pb2_grpc.UsageServiceStub(typed)  # type: ignore[no-untyped-call]
        self.balance = balance_pb2_grpc.BalanceServiceStub(typed)  # type: ignore[no-untyped-call]
        self.pricing = pricing_pb2_grpc.PricingServiceStub(typed)  # type: ignore[no-untyped-call]
        self.contracts = contracts_pb2_grpc.ContractServiceStub(typed)  # type: ignore[no-untyped-call]
        self.invoices = invoices_pb2_grpc.InvoiceServiceStub(typed)  # type: ignore[no-untyped-call]
        self.alerts = alerts_pb2_grpc.AlertServiceStub(typed)  # type: ignore[no-untyped-call]
        self.health = health_pb2_grpc.HealthStub(typed)
        self._raw_usage = usage_pb2_grpc.UsageServiceStub(raw)  # type: ignore[no-untyped-call]
        self._raw_balance = balance_pb2_grpc.BalanceServiceStub(raw)  # type: ignore[no-untyped-call]
        self._raw_health = health_pb2_grpc.HealthStub(raw)


# --------------------------------------------------------------------------------------------
# Async client


class AsyncTariffClient(_Stubs[grpc.aio.Channel]):
    """A ``grpc.aio`` client for one Tariff server.

    Use as ``async with AsyncTariffClient("127.0.0.1:50051") as client: ...`` or call ``close()``.
    ``default_timeout_s`` is the deadline of every unary call that does not set its own, through
    the convenience methods and the raw stubs alike; streams have none. ``api_key`` is sent as
    ``authorization: Bearer KEY`` on every call, streams included; ``actor`` as ``x-actor`` (the person the
    audit log records for the changes this client makes; with an API key, as "PERSON via KEY"). TLS: ``tls=True`` (system roots),
    ``root_certificates`` (PEM of the CA to trust), plus ``client_certificate_chain`` and
    ``client_private_key`` for mutual TLS; or ready-made ``credentials``. ``channel_options``
    override ``DEFAULT_CHANNEL_OPTIONS``. A target on this machine (localhost, 127.0.0.0/8, ::1) is reached
    directly, never through the environment's ``http_proxy`` / ``https_proxy`` / ``grpc_proxy``.
    """

    def _open_channel(
        self, target: str, options: list[tuple[str, Any]], credentials: grpc.ChannelCredentials | None
    ) -> grpc.aio.Channel:
        if credentials is None:
            return grpc.aio.insecure_channel(target, options=options)
        return grpc.aio.secure_channel(target, credentials, options=options)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self, grace_s: float | None = None) -> None:
        """Closes the channel; calls still running after ``grace_s`` are cancelled."""
        await self.channel.close(grace_s)

    def _timeout(self, timeout_s: float | None) -> float:
        return self.default_timeout_s if timeout_s is None else timeout_s

    async def get_balance(self, customer_id: str, *, timeout_s: float | None = None) -> balance_pb2.Balance:
        """The customer's credit balance now (``BalanceService.GetBalance``)."""
        try:
            balance: balance_pb2.Balance = await self._raw_balance.GetBalance(
                balance_pb2.GetBalanceRequest(customer_id=customer_id), timeout=self._timeout(timeout_s)
            )
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e
        return balance

    async def authorize(
        self,
        customer_id: str,
        event_type: str,
        dimensions: Mapping[str, str] | None = None,
        values: Mapping[str, float] | None = None,
        request_id: str = "",
        *,
        reserve: bool = False,
        reservation_ttl_s: float | None = None,
        reservation_id: str = "",
        timeout_s: float | None = None,
    ) -> balance_pb2.AuthorizeResponse:
        """Would this usage be allowed now, and what would it cost (``BalanceService.Authorize``)?

        A denial is ``allowed=False`` with a ``reason``, not an exception. With ``reserve`` and no
        ``reservation_id`` the client chooses one (``new_reservation_id``): the answer carries it, and so does the
        ``TariffError`` of a failed call (``reservation_id``), since the server may have held credit under it; retry
        with that id and the server holds once.
        """
        request = _authorize_request(
            customer_id, event_type, dimensions, values, request_id, reserve, reservation_ttl_s, reservation_id
        )
        try:
            response: balance_pb2.AuthorizeResponse = await self._raw_balance.Authorize(
                request, timeout=self._timeout(timeout_s)
            )
        except grpc.RpcError as e:
            raise _authorize_failed(e, request) from e
        return response

    async def ingest_batch(
        self,
        events: Iterable[Usage | usage_pb2.UsageEvent],
        batch_id: str = "",
        *,
        timeout_s: float | None = None,
    ) -> usage_pb2.IngestAck:
        """Sends one batch with the unary ``IngestUsageBatch`` and returns its ack once durable.

        Safe to call again with the same events after an error: the server dedupes by
        ``transaction_id`` (already-accepted events come back as ``duplicates``).
        """
        batch = _to_batch(events, batch_id)
        try:
            ack: usage_pb2.IngestAck = await self._raw_usage.IngestUsageBatch(batch, timeout=self._timeout(timeout_s))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e
        return ack

    async def list_rate_cards(
        self, *, page_size: int = 0, timeout_s: float | None = None
    ) -> list[pricing_pb2.RateCard]:
        """Every rate card, in id order (``PricingService.ListRateCards``, read a page at a time)."""

        async def read_page(token: str) -> tuple[Sequence[pricing_pb2.RateCard], str]:
            page: pricing_pb2.ListRateCardsResponse = await self.pricing.ListRateCards(
                pricing_pb2.ListRateCardsRequest(page_size=page_size, page_token=token),
                timeout=self._timeout(timeout_s),
            )
            return page.rate_cards, page.next_page_token

        return await _every_page_async(read_page)

    async def list_versions(
        self, rate_card_id: str, *, page_size: int = 0, timeout_s: float | None = None
    ) -> list[pricing_pb2.RateCardVersion]:
        """Every version of the card, drafts included, by number (``PricingService.ListVersions``, read a page at a
        time: one call answers at most ``page_size`` versions, 100 when 0). An unknown card raises ``NotFound``."""

        async def read_page(token: str) -> tuple[Sequence[pricing_pb2.RateCardVersion], str]:
            page: pricing_pb2.ListVersionsResponse = await self.pricing.ListVersions(
                pricing_pb2.ListVersionsRequest(rate_card_id=rate_card_id, page_size=page_size, page_token=token),
                timeout=self._timeout(timeout_s),
            )
            return page.versions, page.next_page_token

        return await _every_page_async(read_page)

    async def list_customers(
        self, *, page_size: int = 0, timeout_s: float | None = None
    ) -> list[contracts_pb2.Customer]:
        """Every customer, in id order (``ContractService.ListCustomers``, read a page at a time: one call answers
        at most ``page_size`` customers, 100 when 0)."""

        async def read_page(token: str) -> tuple[Sequence[contracts_pb2.Customer], str]:
            page: contracts_pb2.ListCustomersResponse = await self.contracts.ListCustomers(
                contracts_pb2.ListCustomersRequest(page_size=page_size, page_token=token),
                timeout=self._timeout(timeout_s),
            )
            return page.customers, page.next_page_token

        return await _every_page_async(read_page)

    async def list_alert_rules(
        self, *, page_size: int = 0, timeout_s: float | None = None
    ) -> list[alerts_pb2.AlertRule]:
        """Every alert rule, in id order (``AlertService.ListAlertRules``, read a page at a time: one call answers
        at most ``page_size`` rules, 100 when 0)."""

        async def read_page(token: str) -> tuple[Sequence[alerts_pb2.AlertRule], str]:
            page: alerts_pb2.ListAlertRulesResponse = await self.alerts.ListAlertRules(
                alerts_pb2.ListAlertRulesRequest(page_size=page_size, page_token=token),
                timeout=self._timeout(timeout_s),
            )
            return page.rules, page.next_page_token

        return await _every_page_async(read_page)

    async def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Waits until ``grpc.health.v1.Health/Check("")`` answers SERVING.

        Raises ``DeadlineExceeded`` when it does not within ``timeout_s``, or the typed error of a
        status that waiting cannot fix (``Unauthenticated``, ``Unimplemented``, ...).
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        last = "no answer"
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self.target} not SERVING after {timeout_s:g} s (last: {last})")
            try:
                reply = await self._raw_health.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=min(remaining, 2.0), wait_for_ready=True
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as e:
                if e.code() not in _WAIT_READY_RETRY_CODES:
                    raise error_from_rpc(e) from e
                last = f"{e.code().name}: {e.details()}"
            await asyncio.sleep(min(0.1, max(0.0, deadline - loop.time())))

    def usage_stream(
        self,
        *,
        max_in_flight_batches: int = 8,
        retry: RetryPolicy | None = None,
        ack_timeout_s: float | None = 60.0,
    ) -> UsageStream:
        """A ``UsageStream`` over this client's channel (use it with ``async with``)."""
        return UsageStream(
            self._raw_usage,
            max_in_flight_batches=max_in_flight_batches,
            retry=retry,
            ack_timeout_s=ack_timeout_s,
        )

    def usage_batcher(
        self,
        *,
        batch_events_max: int = 1_000,
        flush_interval_ms: float = 200.0,
        buffer_events_max: int = 10_000,
        on_ack: Callable[[usage_pb2.IngestAck], None] | None = None,
        max_in_flight_batches: int = 8,
        retry: RetryPolicy | None = None,
        ack_timeout_s: float | None = 60.0,
    ) -> UsageBatcher:
        """A ``UsageBatcher`` on a ``UsageStream`` of its own, which it closes when it closes."""
        stream = self.usage_stream(
            max_in_flight_batches=max_in_flight_batches, retry=retry, ack_timeout_s=ack_timeout_s
        )
        return UsageBatcher(
            stream,
            batch_events_max=batch_events_max,
            flush_interval_ms=flush_interval_ms,
            buffer_events_max=buffer_events_max,
            on_ack=on_ack,
            owns_stream=True,
        )

    def authorize_batcher(
        self,
        *,
        max_delay_ms: float = 1.0,
        batch_requests_max: int = 500,
        batches_in_flight_max: int = 8,
        timeout_s: float = 5.0,
    ) -> AuthorizeBatcher:
        """For gateways at high rates: ``authorize()`` calls gathered into ``AuthorizeBatches`` messages over
        one stream (see ``tariff.gateway``). Use it with ``async with``."""
        from tariff.gateway import AuthorizeBatcher

        return AuthorizeBatcher(
            self._raw_balance,
            max_delay_ms=max_delay_ms,
            batch_requests_max=batch_requests_max,
            batches_in_flight_max=batches_in_flight_max,
            timeout_s=timeout_s,
        )


# --------------------------------------------------------------------------------------------
# UsageStream


@dataclasses.dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How ``UsageStream`` reconnects after the stream breaks.

    It gives up (and fails every unacknowledged send with the last error) when ``max_attempts``
    reconnects in a row have failed too (``max_attempts + 1`` failed connections), or
    ``max_elapsed_s`` after the first failure, whichever comes first; an ack received resets both. A connection
    that never came up (the server accepts TCP but does not answer, or cannot be reached), and on a reconnect a
    server that never answered (the connection is up but the server sends nothing: one left open by a server that
    has since stopped), failed from the moment the call was opened, so its wait counts in ``max_elapsed_s``; and
    each call waits for its connection, a reconnect for the server's answer too (its first ack, which carries its
    response headers), at most what remains of ``max_elapsed_s`` (the first: all of it), but at least
    ``min_connect_s``, not gRPC's own 20 s connect timeout nor ``ack_timeout_s``. Against a server that never
    answers (accepts TCP and says nothing, or refuses), the stream thus gives up at most ``max_elapsed_s +
    min_connect_s`` after it first opened a call in vain; a call that came up and then fell silent is noticed after
    ``ack_timeout_s`` instead (``UsageStream``), and the reconnects after it follow this policy. A reconnect's
    first ack slower than that wait ends it too (its batches are resent, as after any failure). Delays grow from
    ``initial_backoff_s`` by ``multiplier`` up to ``max_backoff_s``, each randomised by ±``jitter``. A status carrying a
    ``google.rpc.RetryInfo`` (an overloaded server's RESOURCE_EXHAUSTED: "retry after 100 ms") is
    retried too, no sooner than the delay it names. Other statuses outside ``retryable_codes``
    (INVALID_ARGUMENT, RESOURCE_EXHAUSTED without RetryInfo, UNAUTHENTICATED, PERMISSION_DENIED, ...)
    are never retried.
    """

    max_attempts: int = 10
    max_elapsed_s: float = 60.0
    min_connect_s: float = 1.0
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2
    retryable_codes: frozenset[Any] = frozenset(
        {
            grpc.StatusCode.UNAVAILABLE,  # connection refused or reset, server shutting down
            grpc.StatusCode.ABORTED,
            grpc.StatusCode.CANCELLED,  # server-side cancellation (ours never reaches the retry loop)
            grpc.StatusCode.INTERNAL,  # e.g. RST_STREAM when a connection dies mid-message
        }
    )

    def backoff_s(self, failures: int) -> float:
        """The delay before reconnect attempt number ``failures`` (1-based)."""
        delay = min(self.max_backoff_s, self.initial_backoff_s * self.multiplier ** max(0, failures - 1))
        return max(0.0, delay * (1.0 + random.uniform(-self.jitter, self.jitter)))


async def _next_response(responses: AsyncIterator[Any]) -> Any:
    try:
        return await anext(responses)
    except StopAsyncIteration:
        return grpc.aio.EOF


# The status grpc.aio gives a call, over whatever status it had, when a write on it fails in its C core (the call
# ended under the write, e.g. because the server has just refused an earlier message with its own status).
_LOCAL_WRITE_FAILURE_DETAILS: Final = "Internal error from Core"


def _is_local_write_failure(error: BaseException) -> bool:
    return (
        isinstance(error, grpc.RpcError)
        and error.code() == grpc.StatusCode.INTERNAL
        and error.details() == _LOCAL_WRITE_FAILURE_DETAILS
    )


def _ready_result(coroutine: Any) -> Any:
    """The result of a coroutine that finishes without waiting (a done call's status accessors), else None."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        return finished.value
    coroutine.close()
    return None


class _ServerStatus:
    """The status the server ended a ``grpc.aio`` stream call with, kept from grpc.aio's own INTERNAL.

    A write that fails because the call has ended makes grpc.aio replace the call's status with INTERNAL ("Internal
    error from Core"), and a reader looking after that sees INTERNAL instead of, say, the RESOURCE_EXHAUSTED of a
    message past the server's size limit: a permanent refusal read as a retryable one. The status is noted here the
    moment it is set (a done callback, which grpc.aio runs as it sets it), and ``outcome`` gives it back in place of
    that INTERNAL.
    """

    def __init__(self, call: Any) -> None:
        self.error: grpc.aio.AioRpcError | None = None
        call.add_done_callback(self._on_done)

    def _on_done(self, call: Any) -> None:
        if self.error is not None:
            return
        code = _ready_result(call.code())
        if code is None or code == grpc.StatusCode.OK:
            return
        error = grpc.aio.AioRpcError(
            code,
            _ready_result(call.initial_metadata()) or grpc.aio.Metadata(),
            _ready_result(call.trailing_metadata()) or grpc.aio.Metadata(),
            _ready_result(call.details()),
            _ready_result(call.debug_error_string()),
        )
        if not _is_local_write_failure(error):
            self.error = error

    def outcome(self, error: grpc.RpcError) -> grpc.RpcError:
        """`error`, or the server's status when `error` is grpc.aio's INTERNAL for a write on the ended call."""
        if _is_local_write_failure(error) and self.error is not None:
            return self.error
        return error


class _AckTimeout(Exception):
    """No ack arrived within ack_timeout_s while batches were outstanding (retryable)."""


class _StreamEnded(Exception):
    """The server ended the stream with OK while batches were unacknowledged (retryable)."""


class _NotConnected(Exception):
    """The call's connection did not come up within what remained of the retry budget (retryable)."""


@dataclasses.dataclass(slots=True, eq=False)
class _Pending:
    batch: usage_pb2.UsageBatch
    future: asyncio.Future[usage_pb2.IngestAck]
    generation: int = 0  # the connection this batch was last written on (0: not yet written)
    written_at: float = 0.0


def _retrieve(future: asyncio.Future[Any]) -> None:
    # Marks a failed future's exception as seen, so asyncio does not log it when the sender
    # was cancelled; the failure is still delivered to whoever awaits the future.
    if not future.cancelled():
        future.exception()


class _DrainsOnExit:
    """`async with`: a clean exit drains (close), an exception abandons what is unacknowledged (abort)."""

    async def close(self) -> None:
        raise NotImplementedError

    async def abort(self) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is None:
            await self.close()
        else:
            await self.abort()


class UsageStream(_DrainsOnExit):
    """Streams usage batches over one bidi ``IngestUsage`` call, reconnecting when it breaks.

    ::

        async with client.usage_stream(max_in_flight_batches=8) as stream:
            ack = await stream.send(events, batch_id="b-42")

    ``send`` returns the batch's ``IngestAck`` once the server has made the batch durable. Acks
    come in order, one per batch, and are matched to sends by order (and checked by
    ``batch_id``; an empty ``batch_id`` is replaced by a generated unique one). Up to
    ``max_in_flight_batches`` batches may be unacknowledged; further sends wait (backpressure),
    so run several senders concurrently (tasks) to pipeline, or use ``UsageBatcher``.

    When the stream breaks (UNAVAILABLE, connection reset, server restart, no ack for
    ``ack_timeout_s``, an overloaded server's RESOURCE_EXHAUSTED with a RetryInfo delay), it
    reconnects per ``retry`` and resends every unacknowledged batch, in
    order, byte for byte (same transaction ids): a batch that was committed but whose ack was lost
    is acked again with its events counted as ``duplicates``. A status that retrying cannot fix
    (INVALID_ARGUMENT, RESOURCE_EXHAUSTED without RetryInfo, UNAUTHENTICATED, PERMISSION_DENIED, or
    retries exhausted) fails every unacknowledged send with the typed ``TariffError`` and the stream stays
    failed: later sends raise the same error. A failed send's batch may or may not have been
    committed; sending the same events again (on a new stream) is safe. When the server refused a
    batch whole (INVALID_ARGUMENT, RESOURCE_EXHAUSTED past the events limit, PERMISSION_DENIED), that
    batch and every one sent after it on the stream were not applied (usage.proto).

    The call is opened lazily, on the first send, and re-opened only when there is something to
    send. ``close()`` waits for every outstanding ack; leaving ``async with`` by an exception
    aborts instead (outstanding sends raise ``Cancelled``).
    """

    def __init__(
        self,
        stub: usage_pb2_grpc.UsageServiceStub,
        *,
        max_in_flight_batches: int = 8,
        retry: RetryPolicy | None = None,
        ack_timeout_s: float | None = 60.0,
        metadata: Metadata = (),
    ) -> None:
        if max_in_flight_batches < 1:
            raise ValueError("max_in_flight_batches must be >= 1")
        self._stub = stub
        self._metadata = metadata
        self.max_in_flight_batches = max_in_flight_batches
        self.retry = retry if retry is not None else RetryPolicy()
        self.ack_timeout_s = ack_timeout_s
        self._slots = asyncio.Semaphore(max_in_flight_batches)
        self._pending: collections.deque[_Pending] = collections.deque()
        self._work = asyncio.Event()
        self._pump_task: asyncio.Task[None] | None = None
        self._generation = 0
        self._progressed = False
        self._connected = False  # the current call's connection came up (a reconnect's: and the server answered)
        self._last_ack_at = 0.0
        self._closing = False
        self._closed = False
        self._failure: TariffError | None = None
        self._failure_raised = False
        self._id_prefix = uuid.uuid4().hex[:12]
        self._ids = itertools.count(1)
        #: Connections opened after the first one.
        self.reconnects = 0
        #: Batches written again on a new connection because their ack had not come.
        self.resent_batches = 0
        #: Acks received.
        self.acked_batches = 0

    @property
    def in_flight(self) -> int:
        """Batches sent (or queued to send) and not yet acknowledged."""
        return len(self._pending)

    @property
    def failure(self) -> TariffError | None:
        """The error that failed the stream, if it failed."""
        return self._failure

    async def send(self, events: Iterable[Usage | usage_pb2.UsageEvent], batch_id: str = "") -> usage_pb2.IngestAck:
        """Sends one batch and returns its ack (after reconnects and resends, if needed)."""
        future = await self._submit(_to_batch(events, batch_id))
        try:
            return await asyncio.shield(future)
        except TariffError as e:
            if e is self._failure:
                self._failure_raised = True
            raise

    async def close(self, timeout_s: float | None = None) -> None:
        """Waits until every sent batch is acknowledged, then ends the call.

        Raises the stream's failure if it failed and no ``send`` has raised it yet, and
        ``DeadlineExceeded`` (after aborting) when draining takes longer than ``timeout_s``.
        """
        if self._closed:
            return
        self._closing = True
        self._work.set()
        if self._pump_task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._pump_task), timeout_s)
            except TimeoutError:
                await self.abort()
                raise DeadlineExceeded(f"UsageStream did not drain within {timeout_s:g} s") from None
        self._closed = True
        if self._failure is not None and not self._failure_raised:
            self._failure_raised = True
            raise self._failure

    async def abort(self) -> None:
        """Cancels the call at once; unacknowledged sends raise ``Cancelled``."""
        self._closing = True
        self._closed = True
        task = self._pump_task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._fail(Cancelled("UsageStream aborted"), record=False)

    # -- internals shared with UsageBatcher ----------------------------------------------

    def _check_usable(self) -> None:
        if self._failure is not None:
            self._failure_raised = True
            raise self._failure
        if self._closing:
            raise RuntimeError("UsageStream is closed")

    async def _acquire_slot(self) -> None:
        self._check_usable()
        await self._slots.acquire()
        try:
            self._check_usable()
        except BaseException:
            self._slots.release()
            raise

    def _enqueue(self, batch: usage_pb2.UsageBatch) -> asyncio.Future[usage_pb2.IngestAck]:
        """Queues a batch; the caller holds a slot from _acquire_slot()."""
        if not batch.batch_id:
            batch.batch_id = f"{self._id_prefix}-{next(self._ids)}"
        future: asyncio.Future[usage_pb2.IngestAck] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieve)
        self._pending.append(_Pending(batch, future))
        if self._pump_task is None:
            self._pump_task = asyncio.get_running_loop().create_task(self._pump(), name="tariff-usage-stream")
        self._work.set()
        return future

    async def _submit(self, batch: usage_pb2.UsageBatch) -> asyncio.Future[usage_pb2.IngestAck]:
        await self._acquire_slot()
        return self._enqueue(batch)

    def _fail(self, error: TariffError, *, record: bool = True) -> None:
        """Fails every unacknowledged send with error; record=False for our own abort."""
        if record and self._failure is None:
            self._failure = error
        while self._pending:
            item = self._pending.popleft()
            if not item.future.done():
                item.future.set_exception(error)
            self._slots.release()
        self._work.set()

    # -- the pump: one task owning the call ------------------------------------------------

    async def _pump(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        first_failure_at = 0.0
        try:
            while True:
                while not self._pending:
                    if self._closing:
                        return
                    self._work.clear()
                    await self._work.wait()
                if self._failure is not None:
                    return
                self._progressed = False
                self._connected = False
                opened_at = loop.time()
                budget_left = self.retry.max_elapsed_s - (opened_at - first_failure_at if failures else 0.0)
                # A reconnect waits for the server's answer too: a connection to a server that fell silent on the
                # call before (stopped) stays open, and each call on it would wait a whole ack_timeout_s.
                outcome = await self._run_connection(max(budget_left, self.retry.min_connect_s), failures > 0)
                if self._progressed:
                    failures = 0
                if outcome is None:
                    continue
                if isinstance(outcome, TariffError):  # a protocol violation: not retryable
                    self._fail(outcome)
                    return
                if not self._retryable(outcome):
                    self._fail(self._translate(outcome))
                    return
                if not self._pending:
                    continue  # broke while idle: reconnect when there is something to send
                failures += 1
                now = loop.time()
                if failures == 1:
                    # A connection that never came up failed when it was opened: its wait counts.
                    first_failure_at = now if self._connected else opened_at
                elapsed = now - first_failure_at
                if failures > self.retry.max_attempts or elapsed >= self.retry.max_elapsed_s:
                    error = self._translate(outcome)
                    error.add_note(
                        f"UsageStream gave up after {failures - 1} reconnect attempt(s) over {elapsed:.1f} s "
                        f"with {len(self._pending)} batch(es) unacknowledged"
                    )
                    self._fail(error)
                    return
                backoff_s = max(self.retry.backoff_s(failures), self._server_retry_after_s(outcome) or 0.0)
                delay = min(backoff_s, max(0.0, self.retry.max_elapsed_s - elapsed))
                _log.warning(
                    "usage stream broke (%s); reconnecting in %.2f s with %d batch(es) to resend",
                    self._describe(outcome),
                    delay,
                    len(self._pending),
                )
                await asyncio.sleep(delay)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():  # abort(), or the loop shutting down
                self._fail(Cancelled("UsageStream aborted"), record=not self._closed)
                raise
            # The call was cancelled under us: the client's channel was closed.
            self._fail(Cancelled("UsageStream's call was cancelled locally (was the client closed?)"))
        except Exception as e:  # a bug here must not leave senders waiting forever
            _log.exception("usage stream pump failed")
            error = Internal(f"UsageStream failed: {e!r}")
            error.__cause__ = e
            self._fail(error)

    def _retryable(self, outcome: BaseException) -> bool:
        if isinstance(outcome, _AckTimeout | _StreamEnded | _NotConnected):
            return True
        if isinstance(outcome, grpc.RpcError):
            return outcome.code() in self.retry.retryable_codes or self._server_retry_after_s(outcome) is not None
        return False

    @staticmethod
    def _server_retry_after_s(outcome: BaseException) -> float | None:
        """The delay of the status's ``google.rpc.RetryInfo``: the server says waiting that long helps."""
        return error_from_rpc(outcome).retry_after_s if isinstance(outcome, grpc.RpcError) else None

    @staticmethod
    def _translate(outcome: BaseException) -> TariffError:
        if isinstance(outcome, TariffError):
            return outcome
        if isinstance(outcome, grpc.RpcError):
            return error_from_rpc(outcome)
        if isinstance(outcome, _AckTimeout):
            return DeadlineExceeded(str(outcome))
        if isinstance(outcome, _StreamEnded | _NotConnected):
            return Unavailable(str(outcome))
        error = Internal(f"UsageStream failed: {outcome!r}")
        error.__cause__ = outcome
        return error

    @staticmethod
    def _describe(outcome: BaseException) -> str:
        if isinstance(outcome, grpc.RpcError):
            return f"{outcome.code().name}: {outcome.details()}"
        return str(outcome) or type(outcome).__name__

    def _watch_timeout(self, generation: int, now: float) -> float | None:
        """How long to wait for the next ack before checking the ack deadline again."""
        if self.ack_timeout_s is None:
            return None
        if self._pending and self._pending[0].generation == generation:
            since = max(self._pending[0].written_at, self._last_ack_at)
            return max(0.0, since + self.ack_timeout_s - now) + 0.001
        return self.ack_timeout_s

    async def _run_connection(self, connect_within_s: float, await_answer: bool) -> BaseException | None:
        """Runs one call until it ends: None when it ended cleanly with nothing unacknowledged,
        else what broke it (an RpcError, _AckTimeout, _StreamEnded, _NotConnected when the call's
        connection did not come up within connect_within_s, or, with await_answer, the server did not answer
        within it either, or a TariffError for a protocol violation)."""
        loop = asyncio.get_running_loop()
        self._generation += 1
        generation = self._generation
        if generation > 1:
            self.reconnects += 1
        call = self._stub.IngestUsage(metadata=self._metadata) if self._metadata else self._stub.IngestUsage()
        server_status = _ServerStatus(call)
        writer: asyncio.Task[None] | None = None
        read: asyncio.Future[Any] | None = None
        answer_by = loop.time() + connect_within_s
        try:
            not_connected = await self._wait_for_connection(call, connect_within_s)
            if not_connected is not None:
                return not_connected
            self._connected = not await_answer  # else once the server answers
            self._last_ack_at = loop.time()
            writer = loop.create_task(self._write_loop(call, generation), name="tariff-usage-stream-writer")
            # Iterating (rather than call.read(), which reports the status as soon as the call is
            # done) returns every ack that arrived before a failing status: none are dropped.
            responses: AsyncIterator[Any] = call.__aiter__()
            while True:
                if read is None:
                    read = asyncio.ensure_future(_next_response(responses))
                waiting: set[asyncio.Future[Any]] = {read} if writer.done() else {read, writer}
                timeout = self._read_timeout(generation, answer_by, loop)
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if writer in done and not writer.cancelled():
                    write_error: BaseException | None = writer.exception()
                    if write_error is not None:
                        return write_error
                if read in done:
                    self._connected = True  # the server answered: an ack, its status, or the end
                    try:
                        message = read.result()
                    except grpc.RpcError as e:
                        rpc_error: BaseException = server_status.outcome(e)
                        return rpc_error
                    read = None
                    if message is grpc.aio.EOF:
                        return self._end_of_stream()
                    violation = self._on_ack(message, loop.time())
                    if violation is not None:
                        return violation
                    continue
                if not done:
                    silence = self._silence_outcome(generation, connect_within_s, answer_by, loop)
                    if silence is not None:
                        return silence
        finally:
            for task in (read, writer):
                if task is not None and not task.done():
                    task.cancel()
            call.cancel()
            await asyncio.gather(*(t for t in (read, writer) if t is not None), return_exceptions=True)

    @staticmethod
    async def _wait_for_connection(call: Any, connect_within_s: float) -> BaseException | None:
        """None once the call's connection is up, else why it is not (_NotConnected past connect_within_s)."""
        # Without this bound a server that accepts TCP but never answers holds the call for gRPC's 20 s.
        try:
            await asyncio.wait_for(call.wait_for_connection(), connect_within_s)
        except TimeoutError:
            return _NotConnected(f"no connection to the server within {connect_within_s:.1f} s")
        except grpc.RpcError as e:
            not_connected: BaseException = e
            return not_connected
        return None

    def _read_timeout(self, generation: int, answer_by: float, loop: asyncio.AbstractEventLoop) -> float | None:
        """How long to wait for the next read: the ack deadline's check, and the server's answer's while unanswered."""
        timeout = self._watch_timeout(generation, loop.time())
        if not self._connected:
            # A connection that is up says nothing of the server: one that fell silent on an earlier call
            # (stopped) stays open. The server's answer (its first ack, which carries its response headers)
            # is waited for as the connection is.
            answer_in = max(0.0, answer_by - loop.time())
            timeout = answer_in if timeout is None else min(timeout, answer_in)
        return timeout

    def _end_of_stream(self) -> BaseException | None:
        """The server ended the stream: cleanly when every batch was acknowledged."""
        if self._pending:
            return _StreamEnded(f"server ended the stream with {len(self._pending)} batch(es) unacknowledged")
        return None

    def _silence_outcome(
        self, generation: int, connect_within_s: float, answer_by: float, loop: asyncio.AbstractEventLoop
    ) -> BaseException | None:
        """After a wait that nothing ended: what broke the call, if the server's answer or an ack is overdue."""
        if not self._connected and loop.time() >= answer_by:
            return _NotConnected(f"no answer from the server within {connect_within_s:.1f} s")
        if self.ack_timeout_s is not None:
            head = self._pending[0] if self._pending else None
            if head is not None and head.generation == generation:
                since = max(head.written_at, self._last_ack_at)
                if loop.time() - since >= self.ack_timeout_s:
                    return _AckTimeout(f"no ack within {self.ack_timeout_s:g} s")
        return None

    async def _write_loop(self, call: Any, generation: int) -> None:
        """Writes every batch not yet written on this call, in order; half-closes when closing."""
        try:
            while True:
                item = next((p for p in self._pending if p.generation != generation), None)
                if item is not None:
                    if item.generation != 0:
                        self.resent_batches += 1
                    item.generation = generation
                    item.written_at = asyncio.get_running_loop().time()
                    await call.write(item.batch)
                    continue
                if self._closing:
                    await call.done_writing()
                    return
                self._work.clear()
                await self._work.wait()
        except (grpc.RpcError, asyncio.InvalidStateError):
            return  # the call has ended; the reader sees its status

    def _on_ack(self, ack: usage_pb2.IngestAck, now: float) -> TariffError | None:
        if not self._pending:
            return Internal(f"server sent an ack for batch {ack.batch_id!r} with no batch outstanding")
        head = self._pending[0]
        if ack.batch_id and ack.batch_id != head.batch.batch_id:
            return Internal(f"acks out of order: expected batch {head.batch.batch_id!r}, server acked {ack.batch_id!r}")
        self._pending.popleft()
        self._slots.release()
        self._progressed = True
        self._last_ack_at = now
        self.acked_batches += 1
        if not head.future.done():
            head.future.set_result(ack)
        return None


# --------------------------------------------------------------------------------------------
# UsageBatcher


class UsageBatcher(_DrainsOnExit):
    """Buffers events one at a time and sends them as batches on a ``UsageStream``.

    A batch goes when ``batch_events_max`` events are buffered or ``flush_interval_ms`` after the
    oldest buffered event arrived, whichever is first. ``add`` waits while ``buffer_events_max``
    events are buffered and not yet handed to the stream (the stream in turn holds at most
    ``max_in_flight_batches``), so memory stays bounded when the server is slow or away.
    ``flush()`` sends what is buffered and waits for every outstanding ack; ``close()`` flushes
    and stops. ``on_ack`` is called with every ack (per-event rejections are in
    ``ack.rejected``); without it, rejections are logged. A stream failure is raised by the
    next ``add``/``flush``/``close``.
    """

    def __init__(
        self,
        stream: UsageStream,
        *,
        batch_events_max: int = 1_000,
        flush_interval_ms: float = 200.0,
        buffer_events_max: int = 10_000,
        on_ack: Callable[[usage_pb2.IngestAck], None] | None = None,
        owns_stream: bool = False,
    ) -> None:
        if batch_events_max < 1:
            raise ValueError("batch_events_max must be >= 1")
        if buffer_events_max < batch_events_max:
            raise ValueError("buffer_events_max must be >= batch_events_max")
        self.stream = stream
        self.batch_events_max = batch_events_max
        self.flush_interval_s = flush_interval_ms / 1000.0
        self.buffer_events_max = buffer_events_max
        self._on_ack = on_ack
        self._owns_stream = owns_stream
        self._buffer: list[usage_pb2.UsageEvent] = []
        self._oldest_at: float | None = None
        self._kick = asyncio.Event()  # a full batch is buffered, or a flush is due
        self._space = asyncio.Event()  # the buffer shrank
        self._lock = asyncio.Lock()  # one batch cut-and-enqueue at a time: keeps event order
        self._outstanding: set[asyncio.Future[usage_pb2.IngestAck]] = set()
        self._task: asyncio.Task[None] | None = None
        self._failure: BaseException | None = None
        self._closing = False  # close() has begun: add() refuses, so no event joins a buffer that is not sent
        self._closed = False
        #: Batches handed to the stream, and acks totals.
        self.batches_sent = 0
        self.events_sent = 0
        self.accepted = 0
        self.duplicates = 0
        self.rejected = 0

    @property
    def buffered(self) -> int:
        """Events added and not yet handed to the stream."""
        return len(self._buffer)

    async def add(self, usage: Usage | usage_pb2.UsageEvent) -> None:
        """Buffers one event; waits while the buffer is full. Refused (RuntimeError) once ``close()`` has begun."""
        self._check_addable()
        while len(self._buffer) >= self.buffer_events_max:
            self._space.clear()
            self._kick.set()
            await self._space.wait()
            self._check_addable()
        self._buffer.append(_to_event(usage))
        if len(self._buffer) == 1:
            self._oldest_at = asyncio.get_running_loop().time()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="tariff-usage-batcher")
        self._kick.set()

    async def add_many(self, usages: Iterable[Usage | usage_pb2.UsageEvent]) -> None:
        for usage in usages:
            await self.add(usage)

    async def flush(self) -> None:
        """Sends every buffered event and waits until all sent batches are acknowledged."""
        self._check_usable()
        async with self._lock:
            remaining = len(self._buffer)
            while remaining > 0 and self._buffer:
                remaining -= await self._send_one()
        outstanding = list(self._outstanding)
        if outstanding:
            await asyncio.wait(outstanding)
        self._check_usable()

    async def close(self) -> None:
        """Flushes, stops the background flusher, and closes the stream if this batcher owns it."""
        if self._closed:
            return
        self._closing = True
        try:
            await self.flush()
        except BaseException:
            await self.abort()
            raise
        self._closed = True
        await self._stop_task()
        if self._owns_stream:
            await self.stream.close()

    async def abort(self) -> None:
        """Drops buffered events and stops; aborts the stream if this batcher owns it."""
        self._closed = True
        self._buffer.clear()
        self._space.set()
        await self._stop_task()
        if self._owns_stream:
            await self.stream.abort()

    async def _stop_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _check_usable(self) -> None:
        if self._failure is not None:
            if self._failure is self.stream.failure:
                self.stream._failure_raised = True
            raise self._failure
        if self._closed:
            raise RuntimeError("UsageBatcher is closed")

    def _check_addable(self) -> None:
        self._check_usable()
        if self._closing:
            raise RuntimeError("UsageBatcher is closed")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                if not self._buffer:
                    self._kick.clear()
                    await self._kick.wait()
                    continue
                if len(self._buffer) < self.batch_events_max:
                    oldest = self._oldest_at if self._oldest_at is not None else loop.time()
                    delay = oldest + self.flush_interval_s - loop.time()
                    if delay > 0:
                        self._kick.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._kick.wait(), delay)
                        continue
                async with self._lock:
                    if self._buffer:
                        await self._send_one()
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            self._set_failure(e)

    async def _send_one(self) -> int:
        """Cuts one batch from the buffer and hands it to the stream; the caller holds _lock."""
        try:
            await self.stream._acquire_slot()
        except BaseException as e:
            if not isinstance(e, asyncio.CancelledError):
                self._set_failure(e)
            raise
        n = min(len(self._buffer), self.batch_events_max)
        events = self._buffer[:n]
        del self._buffer[:n]
        if not self._buffer:
            self._oldest_at = None
        self._space.set()
        future = self.stream._enqueue(usage_pb2.UsageBatch(events=events))
        self._outstanding.add(future)
        future.add_done_callback(self._on_done)
        self.batches_sent += 1
        self.events_sent += n
        return n

    def _set_failure(self, error: BaseException) -> None:
        if self._failure is None:
            self._failure = error
        self._space.set()

    def _on_done(self, future: asyncio.Future[usage_pb2.IngestAck]) -> None:
        self._outstanding.discard(future)
        if future.cancelled():
            self._set_failure(Cancelled("UsageStream aborted"))
            return
        error = future.exception()
        if error is not None:
            self._set_failure(error)
            return
        ack = future.result()
        self.accepted += ack.accepted
        self.duplicates += ack.duplicates
        self.rejected += len(ack.rejected)
        if self._on_ack is not None:
            try:
                self._on_ack(ack)
            except Exception:
                _log.exception("UsageBatcher on_ack callback failed")
        elif ack.rejected:
            first = ack.rejected[0]
            _log.warning(
                "batch %s: %d event(s) rejected, first: %s %s (%s)",
                ack.batch_id,
                len(ack.rejected),
                first.transaction_id,
                usage_pb2.RejectReason.Name(first.reason),
                first.message,
            )


# --------------------------------------------------------------------------------------------
# Sync client


class TariffClient(_Stubs[grpc.Channel]):
    """The synchronous client: raw stubs and the convenience methods, on a plain ``grpc`` channel.

    Same arguments and behaviour as ``AsyncTariffClient``, without the streaming helpers (use the
    raw ``usage.IngestUsage`` stub, or ``AsyncTariffClient.usage_stream``).
    """

    def _open_channel(
        self, target: str, options: list[tuple[str, Any]], credentials: grpc.ChannelCredentials | None
    ) -> grpc.Channel:
        if credentials is None:
            return grpc.insecure_channel(target, options=options)
        return grpc.secure_channel(target, credentials, options=options)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.channel.close()

    def _timeout(self, timeout_s: float | None) -> float:
        return self.default_timeout_s if timeout_s is None else timeout_s

    def get_balance(self, customer_id: str, *, timeout_s: float | None = None) -> balance_pb2.Balance:
        """The customer's credit balance now (``BalanceService.GetBalance``)."""
        try:
            balance: balance_pb2.Balance = self._raw_balance.GetBalance(
                balance_pb2.GetBalanceRequest(customer_id=customer_id), timeout=self._timeout(timeout_s)
            )
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e
        return balance

    def authorize(
        self,
        customer_id: str,
        event_type: str,
        dimensions: Mapping[str, str] | None = None,
        values: Mapping[str, float] | None = None,
        request_id: str = "",
        *,
        reserve: bool = False,
        reservation_ttl_s: float | None = None,
        reservation_id: str = "",
        timeout_s: float | None = None,
    ) -> balance_pb2.AuthorizeResponse:
        """Would this usage be allowed now, and what would it cost (``BalanceService.Authorize``)? As
        ``AsyncTariffClient.authorize``: a reserve without ``reservation_id`` gets one chosen here, carried by the
        answer and by the ``TariffError`` of a failed call."""
        request = _authorize_request(
            customer_id, event_type, dimensions, values, request_id, reserve, reservation_ttl_s, reservation_id
        )
        try:
            response: balance_pb2.AuthorizeResponse = self._raw_balance.Authorize(
                request, timeout=self._timeout(timeout_s)
            )
        except grpc.RpcError as e:
            raise _authorize_failed(e, request) from e
        return response

    def ingest_batch(
        self,
        events: Iterable[Usage | usage_pb2.UsageEvent],
        batch_id: str = "",
        *,
        timeout_s: float | None = None,
    ) -> usage_pb2.IngestAck:
        """Sends one batch with the unary ``IngestUsageBatch`` and returns its ack once durable."""
        batch = _to_batch(events, batch_id)
        try:
            ack: usage_pb2.IngestAck = self._raw_usage.IngestUsageBatch(batch, timeout=self._timeout(timeout_s))
        except grpc.RpcError as e:
            raise error_from_rpc(e) from e
        return ack

    def list_rate_cards(self, *, page_size: int = 0, timeout_s: float | None = None) -> list[pricing_pb2.RateCard]:
        """Every rate card, in id order (``PricingService.ListRateCards``, read a page at a time)."""

        def read_page(token: str) -> tuple[Sequence[pricing_pb2.RateCard], str]:
            page: pricing_pb2.ListRateCardsResponse = self.pricing.ListRateCards(
                pricing_pb2.ListRateCardsRequest(page_size=page_size, page_token=token),
                timeout=self._timeout(timeout_s),
            )
            return page.rate_cards, page.next_page_token

        return _every_page(read_page)

    def list_versions(
        self, rate_card_id: str, *, page_size: int = 0, timeout_s: float | None = None
    ) -> list[pricing_pb2.RateCardVersion]:
        """Every version of the card, drafts included, by number (``PricingService.ListVersions``, read a page at a
        time, as ``AsyncTariffClient.list_versions``)."""

        def read_page(token: str) -> tuple[Sequence[pricing_pb2.RateCardVersion], str]:
            page: pricing_pb2.ListVersionsResponse = self.pricing.ListVersions(
                pricing_pb2.ListVersionsRequest(rate_card_id=rate_card_id, page_size=page_size, page_token=token),
                timeout=self._timeout(timeout_s),
            )
            return page.versions, page.next_page_token

        return _every_page(read_page)

    def list_customers(self, *, page_size: int = 0, timeout_s: float | None = None) -> list[contracts_pb2.Customer]:
        """Every customer, in id order (``ContractService.ListCustomers``, read a page at a time, as ``AsyncTariffClient.list_customers``)."""

        def read_page(token: str) -> tuple[Sequence[contracts_pb2.Customer], str]:
            page: contracts_pb2.ListCustomersResponse = self.contracts.ListCustomers(
                contracts_pb2.ListCustomersRequest(page_size=page_size, page_token=token),
                timeout=self._timeout(timeout_s),
            )
            return page.customers, page.next_page_token

        return _every_page(read_page)

    def list_alert_rules(self, *, page_size: int = 0, timeout_s: float | None = None) -> list[alerts_pb2.AlertRule]:
        """Every alert rule, in id order (``AlertService.ListAlertRules``, read a page at a time, as ``AsyncTariffClient.list_alert_rules``)."""

        def read_page(token: str) -> tuple[Sequence[alerts_pb2.AlertRule], str]:
            page: alerts_pb2.ListAlertRulesResponse = self.alerts.ListAlertRules(
                alerts_pb2.ListAlertRulesRequest(page_size=page_size, page_token=token),
                timeout=self._timeout(timeout_s),
            )
            return page.rules, page.next_page_token

        return _every_page(read_page)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        """Waits until ``grpc.health.v1.Health/Check("")`` answers SERVING (see the async client)."""
        deadline = time.monotonic() + timeout_s
        last = "no answer"
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise DeadlineExceeded(f"{self.target} not SERVING after {timeout_s:g} s (last: {last})")
            try:
                reply = self._raw_health.Check(
                    health_pb2.HealthCheckRequest(service=""), timeout=min(remaining, 2.0), wait_for_ready=True
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
                last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
            except grpc.RpcError as e:
                if e.code() not in _WAIT_READY_RETRY_CODES:
                    raise error_from_rpc(e) from e
                last = f"{e.code().name}: {e.details()}"
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
