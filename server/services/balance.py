"""BalanceService: balances and credit checks, read from the kernel."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import itertools
import os
import struct
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from tariff.v1 import (
    balance_pb2,
)

from engine import commands as cmd
from engine import credits
from engine._kernel import (
    BatchNotDecodable,
    BatchTooLarge,
    CustomerNotAllowed,
    HoldingBatch,
    RequestIdMissing,
    RequestIdTooLong,
)
from engine.balances import BalanceView, GrantView
from engine.billing import Billing
from engine.control import TEXT_BYTES_MAX, check_reference, quoted_id
from engine.errors import EngineError, InvalidArgument, NotFound
from engine.money import format_picos
from server import auth, convert, telemetry
from server.errors import (
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    check_deadline,
    larger_limit,
    send_limit,
    streaming,
    too_large,
    unary,
)
from server.sequencer import Sequencer
from server.services.common import (
    AUTHORIZE_BATCH_REQUESTS_MAX,
    BALANCE_SERVICE,
    Context,
    _Base,
    _undecodable,
    actor_of,
    wall_ms,
)
from server.services.usage import fitted_answer
from server.watch import SHUTTING_DOWN, SharedBalance, Watcher, WatchHub

# A reservation's TTL when the request gives none (the most a request may ask instead, when that is shorter),
# and that most (`tariff serve --reservation-ttl-max-s`).
RESERVATION_TTL_DEFAULT_MS = 60_000
RESERVATION_TTL_MAX_MS_DEFAULT = 3_600_000
# AuthorizeBatches messages of one stream waiting for their holds' commit before the stream stops reading more.
HOLDING_MESSAGES_MAX = 64
# With a message's number and a request's index, names the holds AuthorizeBatches requests leave unnamed: random
# per process, so that names made before a restart are not made again after it.
_RESERVATION_ID_SEED = os.urandom(16)


def check_text_bytes(text: str, field_path: str) -> None:
    """A client-chosen text the server echoes or journals (request_id, reservation_id): at most TEXT_BYTES_MAX
    bytes, INVALID_ARGUMENT naming the field otherwise."""
    if len(text.encode()) > TEXT_BYTES_MAX:
        raise InvalidArgument.field(field_path, f"must be at most {TEXT_BYTES_MAX} bytes")


def check_request_id(request: balance_pb2.AuthorizeRequest) -> None:
    """A request_id is echoed in the answer (and a hold's journaled with it)."""
    check_text_bytes(request.request_id, "request_id")


def seconds_text(ms: int) -> str:
    """Milliseconds as seconds with the decimals needed ("3600", "1.5"), as the kernel words a hold's TTL limit."""
    return f"{ms // 1000}.{ms % 1000:03d}".rstrip("0").rstrip(".")


def _fewer(size: int) -> str:
    """What to do about an AuthorizeBatch whose answer of `size` bytes would not fit a gRPC message (`too_large`'s
    `then`): its request_ids cannot be cut, being how the caller matches answers."""
    return "send fewer requests a message (nothing of this one was held or answered), or " + larger_limit(size)


def fitted_result(result: bytes, bytes_max: int) -> bytes:
    """The AuthorizeBatchResult the kernel encoded, so that gRPC can send it (`bytes_max`, --message-mb-max), as
    server/services/usage.py fits an IngestAck: as it is when it fits (almost always); else with each answer's
    message cut to ACK_MESSAGE_BYTES_MAX bytes, then, if that is still too large, left out. An answer's messages
    can make it larger than its request (each may quote the customer_id): request ids, decisions and amounts stay
    whole, so that the gateway gets every decision, and the holds of the message (committed) their ids. An answer
    too large even so is never sent: `_answer_or_hold` refuses its message instead (one with holds, before they are
    submitted)."""
    return fitted_answer(result, bytes_max, balance_pb2.AuthorizeBatchResult.FromString, lambda r: r.responses)


class _Holding:
    """An AuthorizeBatches message waiting for its holds: the writer's future, then the message's answer."""

    __slots__ = ("future", "holding", "result_bytes_max")

    def __init__(
        self, holding: HoldingBatch, future: asyncio.Future[tuple[int, object]], result_bytes_max: int
    ) -> None:
        self.holding = holding
        self.future = future
        self.result_bytes_max = result_bytes_max

    def done(self) -> bool:
        return self.future.done()

    def result(self) -> bytes:
        _, held = self.future.result()
        assert isinstance(held, credits.HeldBatch)
        return fitted_result(self.holding.finish(held.responses), self.result_bytes_max)

    async def wait(self) -> bytes:
        await asyncio.wait([self.future])
        return self.result()


def _in_band(request_id: str, reason: str, message: str) -> balance_pb2.AuthorizeResponse:
    """A stream's answer to a request it cannot decide: not allowed, `reason` and `message` saying why."""
    return balance_pb2.AuthorizeResponse(
        request_id=request_id, allowed=False, reason=reason, estimated_cost="0", credits_available="0", message=message
    )


def _invalid_field(message: str) -> str:
    """The field the kernel's INVALID_REQUEST message about the described usage is about: dimensions or values
    (the message starts with it: "values['n'] is ...", "dimensions: at most 64 entries"), else the request as a
    whole."""
    for field in ("dimensions", "values"):
        if message.startswith((f"{field}[", f"{field}:")):
            return field
    return "request"


def _invalid_usage(message: str) -> InvalidArgument:
    """Unary Authorize's refusal of a request the kernel answered INVALID_REQUEST: INVALID_ARGUMENT naming the field
    the message is about, its reason the message less that field's name when it starts with it ("dimensions: at
    most 64 entries" is "dimensions" and "at most 64 entries", not "dimensions: dimensions: at most 64 entries")."""
    field = _invalid_field(message)
    return InvalidArgument.field(field, message.removeprefix(f"{field}: "))


class BalanceService(_Base):
    """Balances and credit checks. AuthorizeBatches runs on raw bytes: a generic handler hands the servicer each
    AuthorizeBatch as received, and the kernel decodes it, decides every request and encodes the
    AuthorizeBatchResult in one call: no Python object per decision. The other RPCs take protobuf objects."""

    def __init__(
        self,
        billing: Billing,
        sequencer: Sequencer,
        clock_ms: Callable[[], int] = wall_ms,
        watch: WatchHub | None = None,
    ) -> None:
        super().__init__(billing, sequencer, clock_ms)
        self.watch = watch if watch is not None else WatchHub(billing, sequencer)
        self._messages = itertools.count()  # AuthorizeBatches messages decided, for the names of their holds

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(BALANCE_SERVICE, self.method_handlers())

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The service's handlers: those of the generated code, but AuthorizeBatches with no (de)serializer."""
        pb = balance_pb2
        return {
            # Balances leave as the bytes `_sent_balance_bytes` made (most of a long-lived customer's grants encoded
            # by the kernel): no serializer.
            "GetBalance": grpc.unary_unary_rpc_method_handler(self.GetBalance, pb.GetBalanceRequest.FromString),
            "Authorize": grpc.unary_unary_rpc_method_handler(
                self.Authorize, pb.AuthorizeRequest.FromString, pb.AuthorizeResponse.SerializeToString
            ),
            "AuthorizeStream": grpc.stream_stream_rpc_method_handler(
                self.AuthorizeStream, pb.AuthorizeRequest.FromString, pb.AuthorizeResponse.SerializeToString
            ),
            "AuthorizeBatches": grpc.stream_stream_rpc_method_handler(self.AuthorizeBatches),
            "ReleaseReservation": grpc.unary_unary_rpc_method_handler(
                self.ReleaseReservation,
                pb.ReleaseReservationRequest.FromString,
                pb.ReleaseReservationResponse.SerializeToString,
            ),
            "WatchBalance": grpc.unary_stream_rpc_method_handler(self.WatchBalance, pb.WatchBalanceRequest.FromString),
        }

    @unary
    async def GetBalance(self, request: balance_pb2.GetBalanceRequest, context: Context) -> bytes:
        """The Balance's bytes."""
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        return _sent_balance_bytes(self.billing.balance_encoded(request.customer_id, self.read_ms()))

    reservation_ttl_max_ms = RESERVATION_TTL_MAX_MS_DEFAULT
    # gRPC sends no larger AuthorizeBatchResult: set from --message-mb-max (server/app.py).
    result_bytes_max = 16 * 1024 * 1024

    def _decide(self, request: balance_pb2.AuthorizeRequest) -> balance_pb2.AuthorizeResponse:
        if request.reservation_id and not request.reserve:
            raise InvalidArgument.field("reservation_id", "is only read with reserve=true")
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        if not request.event_type:
            raise InvalidArgument.field("event_type", "is required")
        started_ns = time.perf_counter_ns()
        dimensions, values = request.dimensions, request.values
        estimate = self.billing.estimate(
            request.customer_id,
            request.event_type,
            {key: dimensions[key] for key in dimensions},  # twice as fast as dict(map) for a protobuf map
            {key: values[key] for key in values},
            self.read_ms(),
        )
        response = convert.authorize_response(request.request_id, estimate)
        telemetry.authorize_ms.record((time.perf_counter_ns() - started_ns) / 1e6)
        return response

    def _ttl_ms(self, request: balance_pb2.AuthorizeRequest) -> int:
        if not request.HasField("reservation_ttl"):
            # A request naming no TTL asked for none: the default, or the server's maximum when that is shorter.
            return min(RESERVATION_TTL_DEFAULT_MS, self.reservation_ttl_max_ms)
        ttl_ms = convert.duration_ms(request.reservation_ttl, "reservation_ttl")
        if ttl_ms <= 0:
            raise InvalidArgument.field("reservation_ttl", "must be positive")
        if ttl_ms > self.reservation_ttl_max_ms:
            raise InvalidArgument.field(
                "reservation_ttl",
                f"must be at most {seconds_text(self.reservation_ttl_max_ms)} s (the server's --reservation-ttl-max-s)",
            )
        return ttl_ms

    async def _reserve(self, request: balance_pb2.AuthorizeRequest, context: Context) -> balance_pb2.AuthorizeResponse:
        """Authorize with a hold: a journaled command, answered once durable."""
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        if not request.event_type:
            raise InvalidArgument.field("event_type", "is required")
        ttl_ms = self._ttl_ms(request)
        # Checked here, not in the command: a Reserve journaled before the limit replays as it applied.
        check_text_bytes(request.reservation_id, "reservation_id")
        reservation_id = request.reservation_id or f"r-{uuid.uuid4().hex}"
        dimensions, values = request.dimensions, request.values
        command = cmd.Reserve(
            self.clock_ms(),
            actor_of(context),
            request.customer_id,
            reservation_id,
            request.event_type,
            {key: dimensions[key] for key in dimensions},
            {key: values[key] for key in values},
            ttl_ms,
            ttl_defaulted=not request.HasField("reservation_ttl"),
            refunds_netted=True,
        )
        _, result = await self.sequencer.run(command, check_deadline(auth.current_call.get()))
        assert isinstance(result, credits.Reservation)
        return balance_pb2.AuthorizeResponse(
            request_id=request.request_id,
            allowed=result.allowed,
            reason=result.reason,
            estimated_cost=format_picos(result.cost),
            credits_available=format_picos(result.available),
            reservation_id=reservation_id if result.allowed else "",
            message=result.message,
        )

    @unary
    async def Authorize(self, request: balance_pb2.AuthorizeRequest, context: Context) -> balance_pb2.AuthorizeResponse:
        check_request_id(request)
        response = await self._reserve(request, context) if request.reserve else self._decide(request)
        # A unary caller made a mistake it can fix: say so with a status. The stream answers in-band instead.
        if response.reason == "UNKNOWN_CUSTOMER":
            raise NotFound(response.message)
        if response.reason == "INVALID_REQUEST":
            raise _invalid_usage(response.message)
        return response

    @streaming
    async def AuthorizeStream(
        self, request_iterator: AsyncIterator[balance_pb2.AuthorizeRequest], context: Context
    ) -> AsyncIterator[balance_pb2.AuthorizeResponse]:
        async for request in request_iterator:
            if not request.request_id:
                raise InvalidArgument.field("request_id", "is required on AuthorizeStream to correlate answers")
            check_request_id(request)  # like a missing one, it ends the stream: its answer could not be sent back
            yield await self._reserve_in_band(request, context) if request.reserve else self._decide_in_band(request)

    def _decide_in_band(self, request: balance_pb2.AuthorizeRequest) -> balance_pb2.AuthorizeResponse:
        """_decide for a stream: a malformed request (an empty or malformed customer_id, no event_type) is
        answered INVALID_REQUEST in-band, its message naming the field, and the stream goes on (balance.proto)."""
        try:
            return self._decide(request)
        except InvalidArgument as exc:
            return _in_band(request.request_id, "INVALID_REQUEST", exc.message)

    async def _reserve_in_band(
        self, request: balance_pb2.AuthorizeRequest, context: Context
    ) -> balance_pb2.AuthorizeResponse:
        """_reserve for a stream: a hold request that cannot hold is answered in-band (INVALID_REQUEST,
        UNKNOWN_CUSTOMER), as AuthorizeBatches answers it, and the stream goes on. A reservation_id taken by a
        different request ends the call with ALREADY_EXISTS, as on unary Authorize (balance.proto, reason)."""
        try:
            return await self._reserve(request, context)
        except InvalidArgument as exc:
            return _in_band(request.request_id, "INVALID_REQUEST", exc.message)
        except NotFound as exc:
            return _in_band(request.request_id, "UNKNOWN_CUSTOMER", exc.message)

    @streaming
    async def AuthorizeBatches(self, request_iterator: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        """Answers in message order. A message whose requests hold waits for its journal commit; meanwhile the
        stream goes on reading and deciding the next messages (up to HOLDING_MESSAGES_MAX waiting), so the
        messages a gateway keeps in flight share group commits. With nothing waiting, a message is answered
        as soon as it is decided."""
        waiting: collections.deque[bytes | _Holding] = collections.deque()
        messages = aiter(request_iterator)
        arriving: asyncio.Future[bytes | None] | None = None
        try:
            while True:
                while waiting and (isinstance(waiting[0], bytes) or waiting[0].done()):
                    head = waiting.popleft()
                    yield head if isinstance(head, bytes) else head.result()
                if not waiting:
                    # A read already under way (started while a message waited) is the one to finish.
                    batch = await (arriving if arriving is not None else anext(messages, None))
                    arriving = None
                else:
                    if arriving is None and len(waiting) < HOLDING_MESSAGES_MAX:
                        arriving = asyncio.ensure_future(anext(messages, None))
                    head = waiting[0]
                    assert isinstance(head, _Holding)
                    waits: list[asyncio.Future[Any]] = [head.future] if arriving is None else [head.future, arriving]
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    if arriving is None or not arriving.done():
                        continue
                    batch, arriving = arriving.result(), None
                if batch is None:
                    break
                try:
                    answer = self._decide_batch(batch, context)
                except EngineError:
                    # The answers to the messages before it leave first, then the stream ends with its status.
                    for earlier in waiting:
                        yield earlier if isinstance(earlier, bytes) else await earlier.wait()
                    waiting.clear()
                    raise
                waiting.append(answer)
            while waiting:
                head = waiting.popleft()
                yield head if isinstance(head, bytes) else await head.wait()
        finally:
            if arriving is not None:
                arriving.cancel()
            for left in waiting:  # the stream ended early: holds the writer has not applied yet are dropped
                if isinstance(left, _Holding):
                    left.future.cancel()

    def _decide_batch(self, batch: bytes, context: Context) -> bytes | _Holding:
        """One AuthorizeBatch's answer, or its holds submitted to the writer, or the refusal of the whole message
        (the stream ends with its status). A malformed request inside is answered INVALID_REQUEST in-band and
        does not sink the batch."""
        identity = auth.caller.get()
        # A restricted key's customers: the kernel checks every request's before it decides any.
        allowed = sorted(identity.customers) if identity is not None and identity.customers is not None else None
        started_ns = time.perf_counter_ns()
        now_ms = self.clock_ms()
        try:
            result, decisions = self.billing.authorize_batch(
                batch,
                self.sequencer.read_ms(now_ms),  # its decisions are reads; its holds apply at now_ms
                AUTHORIZE_BATCH_REQUESTS_MAX,
                allowed,
                self.reservation_ttl_max_ms,
                _RESERVATION_ID_SEED,
                next(self._messages),
            )
        except CustomerNotAllowed as exc:
            # Worded as server/auth.py words its check for every other RPC.
            index, customer_id = exc.args
            assert identity is not None
            field = f"requests[{index}].customer_id"
            if not customer_id:
                raise PermissionDenied(
                    f"key {identity.name!r} is restricted to some customers: {field} is required"
                ) from None
            raise PermissionDenied(
                f"{field}: key {identity.name!r} may not touch customer {quoted_id(customer_id)}"
            ) from None
        except BatchTooLarge as exc:
            raise ResourceExhausted(
                f"an AuthorizeBatch holds at most {AUTHORIZE_BATCH_REQUESTS_MAX} requests, this one {exc.args[0]}"
            ) from None
        except RequestIdMissing as exc:
            raise InvalidArgument.field(
                f"requests[{exc.args[0]}].request_id", "is required on AuthorizeBatches to correlate answers"
            ) from None
        except RequestIdTooLong as exc:
            # Refused whole, as a missing one is (an answer goes back by it), before any hold is submitted.
            raise InvalidArgument.field(
                f"requests[{exc.args[0]}].request_id", f"must be at most {TEXT_BYTES_MAX} bytes"
            ) from None
        except BatchNotDecodable as exc:
            # The request and field prost refused ("requests[2].customer_id"), so a gateway that gathered thousands of
            # checks knows which to fix; the message's own framing broken (nothing placed), protobuf's words as ever.
            field, message = exc.args
            if not field:
                raise _undecodable(balance_pb2.AuthorizeBatch, batch, ValueError(message)) from None
            raise InvalidArgument.field(field, f"not an AuthorizeBatch: {message}") from None
        if decisions:
            # One sample per message (its mean per decision): a sample per decision would cost more than one.
            telemetry.authorize_ms.record((time.perf_counter_ns() - started_ns) / 1e6 / decisions)
        return self._answer_or_hold(result, now_ms, context)

    def _answer_or_hold(self, result: bytes | HoldingBatch, now_ms: int, context: Context) -> bytes | _Holding:
        """A decided message's answer, fitted to the gRPC message limit, or its holds submitted to the writer. An
        answer that cannot fit with every message left out (its request_ids and reservation_ids cannot be cut:
        they are how the caller matches answers) is RESOURCE_EXHAUSTED instead; so is one whose holds might make it
        so, before they are submitted: nothing of the message is held or answered, and smaller ones may follow."""
        if isinstance(result, bytes):
            fitted = fitted_result(result, self.result_bytes_max)
            if len(fitted) > self.result_bytes_max:
                size = len(fitted)
                raise too_large("the answer to this AuthorizeBatch, every message left out,", size, _fewer(size))
            return fitted
        if result.result_bytes_most > self.result_bytes_max:
            # Its holds' answers are decided only when their command applies: refused now, nothing is held.
            most = result.result_bytes_most
            what = "the answer to this AuthorizeBatch, each hold request counted at its largest answer,"
            raise too_large(what, most, _fewer(most), verb="may take up to")
        command = cmd.ReserveBatch(
            now_ms, actor_of(context), result.requests, result.ttl_default_ms, refunds_netted=True
        )
        future = self.sequencer.submit(command, check_deadline(auth.current_call.get()))
        return _Holding(result, future, self.result_bytes_max)

    @unary
    async def ReleaseReservation(
        self, request: balance_pb2.ReleaseReservationRequest, context: Context
    ) -> balance_pb2.ReleaseReservationResponse:
        """Frees a hold. Another customer's reservation is NOT_FOUND, worded as for one never made."""
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        if not request.reservation_id:
            raise InvalidArgument.field("reservation_id", "is required")
        # No hold has a longer id (Authorize refuses one): malformed, not unknown.
        check_text_bytes(request.reservation_id, "reservation_id")
        self.engine.customer(request.customer_id)  # NotFound
        command = cmd.ReleaseReservation(
            self.clock_ms(), actor_of(context), request.customer_id, request.reservation_id, expired_credit_breaks=True
        )
        released = await self._apply(command, credits.Released)
        return balance_pb2.ReleaseReservationResponse(released_amount=format_picos(released.released))

    @streaming
    async def WatchBalance(self, request: balance_pb2.WatchBalanceRequest, context: Context) -> AsyncIterator[bytes]:
        """The balance now, then the newest balance after each committed group of changes that touched the
        customer; a balance equal to the last one sent is not sent again (the same bytes: a message's are those of
        its fields, in field order). Registered before the first read, so no change between that read and the
        next wake-up is missed."""
        customer_id = request.customer_id
        check_reference(customer_id, "customer_id", self.engine.state.customers)
        self.engine.customer(customer_id)  # NotFound
        watched_balance = functools.partial(self._watched_balance, customer_id)
        with self.watch.watch_balance(customer_id) as watcher:
            sent = None
            while True:
                now_ms = self.read_ms()
                # The first balance is read now; after a change, the customer's watchers share one read.
                balance = watcher.customer.balance(now_ms, watched_balance, fresh=sent is None)
                if balance.data != sent:
                    yield balance.data
                    sent = balance.data
                await _changed_or_started(watcher, balance.next_change_ms, self.read_ms)
                if self.watch.closing:
                    raise Unavailable(SHUTTING_DOWN)

    def _watched_balance(self, customer_id: str, now_ms: int) -> SharedBalance:
        view = self.billing.balance_encoded(customer_id, now_ms)
        return SharedBalance(_sent_balance_bytes(view), _next_grant_start_ms(view, now_ms))


# A spent top-up where the kernel encoded it (balance_wire.rs `EncodedRun::spent`): its offset in its run, its
# entry's length and its starts_at_ms.
SPENT_TOP_UP = struct.Struct("<QIq")


def _sent_balance_bytes(view: BalanceView) -> bytes:
    """The view's Balance as its bytes when gRPC can send it, its spent grants left out as balance.proto `grants`
    says where listing them all would not fit; otherwise RESOURCE_EXHAUSTED naming the customer and the limit that
    would. The server keeps every grant for the customer's life and a top-up policy adds up to 1,000 a period, so
    without leaving the spent ones out a long-lived customer's balance became unreadable for good. BalanceService
    is not wrapped by `unary`'s size check (the hot path): without this, gRPC refused the answer in its own words
    ("Sent message larger than max"). The kernel's encoded top-ups (`grant_parts`) are joined as they are
    (`convert.balance_bytes`) and, where spent ones are left out, cut where the kernel says they lie: never parsed
    back into a message."""
    parts: list[GrantView | bytes] = list(view.grants) if view.grant_parts is None else view.grant_parts
    data = convert.balance_bytes(view, parts)
    if len(data) <= send_limit.bytes_max:
        return data
    fitted = _without_spent_grant_parts(view, parts, len(data), send_limit.bytes_max)
    if fitted is None:
        grants = len(view.grants) + view.top_ups_count
        raise too_large(f"the balance of customer {view.customer_id!r} ({grants:,} grants)", len(data))
    return fitted


def _without_spent_grant_parts(
    view: BalanceView, parts: list[GrantView | bytes], size: int, bytes_max: int
) -> bytes | None:
    """The bytes of the view's Balance (`size` bytes with `parts`, its grants) with its spent grants (nothing
    remaining or held) left out, those starting earliest first (at a tie, the earlier in burn order), until it is
    at most `bytes_max` bytes; None when leaving out every one is not enough. A spent top-up is cut from its run
    where the kernel noted it (`BalanceView.top_ups_spent`)."""
    spent_runs = iter(view.top_ups_spent or ())
    spent: list[tuple[int, int, int, int]] = []  # (starts_at_ms, part index, offset in the part, entry bytes)
    for index, part in enumerate(parts):
        if isinstance(part, bytes):
            entries = SPENT_TOP_UP.iter_unpack(next(spent_runs))
            spent.extend((at_ms, index, at, length) for at, length, at_ms in entries)
        elif part.remaining == 0 and part.held == 0:
            spent.append((part.grant.starts_at_ms, index, 0, convert.grant_entry_bytes(part)))
    spent.sort()  # by start, then burn order: the parts are in burn order, a run's entries in order
    left_out: dict[int, list[tuple[int, int]]] = {}  # part index: (offset, entry bytes) of each entry left out
    count = 0
    for _starts_at_ms, index, offset, length in spent:
        if size + _count_field_bytes(count) <= bytes_max:
            break
        size -= length
        left_out.setdefault(index, []).append((offset, length))
        count += 1
    if size + _count_field_bytes(count) > bytes_max:
        return None
    kept: list[GrantView | bytes] = []
    for index, part in enumerate(parts):
        cut = left_out.get(index)
        if cut is None:
            kept.append(part)
        elif isinstance(part, bytes):
            kept.append(_cut(part, cut))
    return convert.balance_bytes(view, kept, grants_left_out=count)


def _cut(run: bytes, entries: list[tuple[int, int]]) -> bytes:
    """`run` without the entries at (offset, length)."""
    data = memoryview(run)
    pieces = []
    at = 0
    for offset, length in sorted(entries):
        pieces.append(data[at:offset])
        at = offset + length
    pieces.append(data[at:])
    return b"".join(pieces)


def _count_field_bytes(count: int) -> int:
    """What Balance.grants_left_out takes on the wire holding `count` (nothing when 0)."""
    return 1 + _varint_bytes(count) if count else 0


def _varint_bytes(value: int) -> int:
    """The length of `value` (>= 0) as a protobuf varint."""
    return max(1, (value.bit_length() + 6) // 7)


def _next_grant_start_ms(view: BalanceView, now_ms: int) -> int | None:
    """When the customer's balance next changes with no record: the next start of a grant not started yet (its
    credit joins the balance then: nothing is due in the kernel), or the next expiry of a grant whose remainder
    open reservations hold whole (nothing breaks until they end, so the clock records nothing, but the grant shows
    its remaining 0 from then on: balance.proto GrantBalance.remaining; the expiry of a grant with credit left to
    break is recorded, which wakes the watcher). The watcher looks again at that instant."""
    starts = [gv.grant.starts_at_ms for gv in view.grants if gv.grant.starts_at_ms > now_ms]
    expiries = [
        gv.grant.expires_at_ms
        for gv in view.grants
        if 0 < gv.held == gv.remaining and gv.grant.expires_at_ms is not None and gv.grant.expires_at_ms > now_ms
    ]
    if view.top_ups_next_change_ms is not None:  # the top-ups the kernel encoded, not among view.grants
        starts.append(view.top_ups_next_change_ms)
    return min(starts + expiries, default=None)


async def _changed_or_started(watcher: Watcher, start_ms: int | None, clock_ms: Callable[[], int]) -> None:
    """Returns once the watcher is woken, or once `start_ms` (a grant's start or expiry) has passed."""
    if start_ms is None:
        await watcher.changed()
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(watcher.changed(), max(start_ms + 1 - clock_ms(), 0) / 1000)
