"""gRPC servicers: proto in, engine command or read, proto out. Errors leave through server/errors.py.

State changes go through the Sequencer (answered once durable); reads read the engine directly. RPCs of the
contract whose behaviour is not built yet answer UNIMPLEMENTED, naming what is missing.
"""

from __future__ import annotations

import asyncio
import bisect
import collections
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn, TypeAlias, TypeVar

import grpc
from tariff.v1 import (
    alerts_pb2_grpc,
    balance_pb2,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
)

from engine import commands as cmd
from engine._kernel import BatchTooLarge, CustomerNotAllowed, RequestIdMissing, ReservationAsked
from engine.billing import Billing, Ingested
from engine.contracts import Contract, Customer
from engine.errors import InvalidArgument, NotFound
from engine.ledger import Grant
from engine.products import Product
from engine.ratecard import RateCard, Version
from engine.versions import PublishResult
from server import auth, convert, oplog, telemetry
from server.errors import (
    DeadlineExceeded,
    PermissionDenied,
    ResourceExhausted,
    UndecodableRequest,
    Unimplemented,
    check_deadline,
    streaming,
    unary,
)
from server.sequencer import Sequencer, UsageBatch

# grpc ships no type information: a servicer context is typed as Any.
Context: TypeAlias = Any
Result = TypeVar("Result")
BATCH_EVENTS_MAX_DEFAULT = 10_000
STREAM_BATCHES_IN_FLIGHT_MAX = 16
INTAKE_BYTES_MAX_DEFAULT = 256 * 1024 * 1024
AUTHORIZE_BATCH_REQUESTS_MAX = 10_000
USAGE_SERVICE = "tariff.v1.UsageService"
BALANCE_SERVICE = "tariff.v1.BalanceService"
RESERVATIONS_NOT_BUILT = (
    "reservations are not available yet: Authorize with reserve or reservation_id; Authorize without them answers "
    "without holding credit"
)
PAGE_SIZE_MAX = 1_000
ACTOR_DEFAULT = auth.ACTOR_ANONYMOUS


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


def actor_of(context: Context) -> str:
    # server/auth.py's interceptor puts the caller in a context variable: the key's name, or anonymous without keys.
    return auth.actor()


class _Base:
    def __init__(self, billing: Billing, sequencer: Sequencer, clock_ms: Callable[[], int] = wall_ms) -> None:
        self.billing = billing
        self.engine = billing.engine  # the control plane; the same object for the server's life
        self.sequencer = sequencer
        self.clock_ms = clock_ms

    async def _apply(self, command: cmd.AdminCommand, result_type: type[Result]) -> Result:
        """Runs a command through the writer; returns its result once journaled and committed."""
        deadline = check_deadline(auth.current_call.get())
        _, result = await self.sequencer.run(command, deadline)
        assert isinstance(result, result_type), f"{type(command).__name__} gave {type(result).__name__}"
        return result


def _not_built(message: str) -> Callable[..., Awaitable[Any]]:
    """A servicer method for an RPC of the contract whose behaviour is not built yet: UNIMPLEMENTED, with a
    message that names the missing feature in a user's words, then the RPC (and what to do instead)."""

    @unary
    async def method(self: object, request: object, context: Context) -> NoReturn:
        raise Unimplemented(message)

    return method


def _not_built_stream(message: str) -> Callable[..., AsyncIterator[Any]]:
    """The same for a server-streaming RPC: an async generator, which is what interceptors wrap a stream as."""

    @streaming
    async def method(self: object, request: object, context: Context) -> AsyncIterator[Any]:
        raise Unimplemented(message)
        yield  # unreachable: makes this an async generator

    return method


def _required(**fields: object) -> None:
    """INVALID_ARGUMENT naming every empty one of these request fields (an id, a version number)."""
    missing = [(name, "is required") for name, value in fields.items() if not value]
    if missing:
        raise InvalidArgument(missing)


def _page(ids: list[str], page_size: int, page_token: str) -> tuple[list[str], str]:
    """One page of sorted ids after `page_token` (the last id of the previous page), and the next token."""
    size = min(page_size or 100, PAGE_SIZE_MAX)
    start = bisect.bisect_right(ids, page_token) if page_token else 0
    page = ids[start : start + size]
    return page, (page[-1] if page and start + size < len(ids) else "")


def _undecodable(message_type: Any, data: bytes, kernel_error: ValueError) -> UndecodableRequest:
    """The refusal of request bytes the kernel could not decode, in protobuf's words as clients always got it."""
    try:
        message_type.FromString(data)
    except Exception as exc:  # protobuf's DecodeError
        return UndecodableRequest(str(exc))
    return UndecodableRequest(str(kernel_error))  # protobuf takes what the kernel refuses: say the kernel's why


class IntakeBudget:
    """Bytes of usage batches read but not yet answered, across every stream and call of the process.

    Each stream already stops reading past its own in-flight limit; this bounds the sum over all streams, so
    memory stays bounded however many clients send. Past the budget, every ingest waits before reading on
    (gRPC flow control then pushes back on the senders). A batch larger than the whole budget still passes,
    alone.
    """

    def __init__(self, bytes_max: int) -> None:
        assert bytes_max > 0
        self.bytes_max = bytes_max
        self.bytes_used = 0
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    async def acquire(self, size_bytes: int) -> int:
        """Waits for room; returns what was taken, to hand back to release()."""
        taken = min(size_bytes, self.bytes_max)
        while self.bytes_used + taken > self.bytes_max:
            waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            await waiter
        self.bytes_used += taken
        return taken

    def release(self, taken: int) -> None:
        """Synchronous, so that it also runs in the cleanup of a cancelled call."""
        self.bytes_used -= taken
        assert self.bytes_used >= 0
        while self._waiters:  # every waiter re-checks the room
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)


class UsageService(_Base):
    """IngestUsage and IngestUsageBatch on raw bytes: a generic handler hands the servicer each UsageBatch as
    received and sends the IngestAck bytes the kernel encoded. No protobuf object, no Python object per event."""

    batch_events_max = BATCH_EVENTS_MAX_DEFAULT
    stream_batches_in_flight_max = STREAM_BATCHES_IN_FLIGHT_MAX

    def __init__(self, billing: Billing, sequencer: Sequencer, clock_ms: Callable[[], int] = wall_ms) -> None:
        super().__init__(billing, sequencer, clock_ms)
        self.intake = IntakeBudget(INTAKE_BYTES_MAX_DEFAULT)

    def generic_handler(self) -> grpc.GenericRpcHandler:
        # No (de)serializer: request and response are the bytes on the wire.
        return grpc.method_handlers_generic_handler(
            USAGE_SERVICE,
            {
                "IngestUsage": grpc.stream_stream_rpc_method_handler(self.IngestUsage),
                "IngestUsageBatch": grpc.unary_unary_rpc_method_handler(self.IngestUsageBatch),
            },
        )

    def _batch(self, data: bytes) -> UsageBatch:
        """The writer's command for these bytes, with the customers the caller's key may touch."""
        identity = auth.caller.get()
        if identity is None or identity.customers is None:
            return UsageBatch(data, self.batch_events_max)
        return UsageBatch(data, self.batch_events_max, sorted(identity.customers), identity.name)

    @unary
    async def IngestUsageBatch(self, request: bytes, context: Context) -> bytes:
        taken = await self.intake.acquire(len(request))
        try:
            deadline = check_deadline(context)
            _, result = await self.sequencer.run(self._batch(request), deadline)
        finally:
            self.intake.release(taken)
        assert isinstance(result, Ingested)
        return result.ack

    @streaming
    async def IngestUsage(self, request_iterator: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        # Batches are submitted as they arrive (so concurrent streams share group commits) and acked in order.
        # At most STREAM_BATCHES_IN_FLIGHT_MAX await their commit: past that the server stops reading the stream.
        slots = asyncio.Semaphore(self.stream_batches_in_flight_max)
        # Never holds more than the slots allow (plus the end marker), so putting never has to wait.
        in_flight: asyncio.Queue[tuple[int, asyncio.Future[tuple[int, object]]] | None] = asyncio.Queue()
        held_bytes = [0]  # taken from the process-wide intake budget and not yet given back

        async def read() -> None:
            try:
                async for data in request_iterator:
                    await slots.acquire()
                    taken = await self.intake.acquire(len(data))
                    held_bytes[0] += taken
                    try:
                        future = self.sequencer.submit(self._batch(data), check_deadline(context))
                    except DeadlineExceeded as exc:
                        future = asyncio.get_running_loop().create_future()
                        future.set_exception(exc)
                        in_flight.put_nowait((taken, future))
                        return  # the stream ends with this error: read no further batch
                    in_flight.put_nowait((taken, future))
            finally:
                in_flight.put_nowait(None)

        reader = asyncio.create_task(read())
        oplog.activity.streams_open += 1
        try:
            while (item := await in_flight.get()) is not None:
                taken, future = item
                try:
                    _, result = await future
                finally:
                    held_bytes[0] -= taken
                    self.intake.release(taken)
                slots.release()
                assert isinstance(result, Ingested)
                yield result.ack
            await reader  # a broken request stream surfaces here
        finally:
            oplog.activity.streams_open -= 1
            reader.cancel()
            if held_bytes[0]:
                # Batches read but never answered (the stream broke): give their room back.
                self.intake.release(held_bytes[0])
                held_bytes[0] = 0


class BalanceService(_Base):
    """Balances and credit checks. AuthorizeBatches runs on raw bytes: a generic handler hands the servicer each
    AuthorizeBatch as received, and the kernel decodes it, decides every request and encodes the
    AuthorizeBatchResult in one call: no Python object per decision. The other RPCs take protobuf objects."""

    def generic_handler(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(BALANCE_SERVICE, self.method_handlers())

    def method_handlers(self) -> dict[str, grpc.RpcMethodHandler]:
        """The service's handlers: those of the generated code, but AuthorizeBatches with no (de)serializer."""
        pb = balance_pb2
        return {
            "GetBalance": grpc.unary_unary_rpc_method_handler(
                self.GetBalance, pb.GetBalanceRequest.FromString, pb.Balance.SerializeToString
            ),
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
            "WatchBalance": grpc.unary_stream_rpc_method_handler(
                self.WatchBalance, pb.WatchBalanceRequest.FromString, pb.Balance.SerializeToString
            ),
        }

    @unary
    async def GetBalance(self, request: balance_pb2.GetBalanceRequest, context: Context) -> balance_pb2.Balance:
        if not request.customer_id:
            raise InvalidArgument.field("customer_id", "is required")
        return convert.balance_pb(self.billing.balance(request.customer_id, self.clock_ms()))

    def _decide(self, request: balance_pb2.AuthorizeRequest) -> balance_pb2.AuthorizeResponse:
        if request.reserve or request.reservation_id:
            raise Unimplemented(RESERVATIONS_NOT_BUILT)
        if not request.customer_id:
            raise InvalidArgument.field("customer_id", "is required")
        if not request.event_type:
            raise InvalidArgument.field("event_type", "is required")
        started_ns = time.perf_counter_ns()
        dimensions, values = request.dimensions, request.values
        estimate = self.billing.estimate(
            request.customer_id,
            request.event_type,
            {key: dimensions[key] for key in dimensions},  # twice as fast as dict(map) for a protobuf map
            {key: values[key] for key in values},
            self.clock_ms(),
        )
        response = convert.authorize_response(request.request_id, estimate)
        telemetry.authorize_ms.record((time.perf_counter_ns() - started_ns) / 1e6)
        return response

    @unary
    async def Authorize(self, request: balance_pb2.AuthorizeRequest, context: Context) -> balance_pb2.AuthorizeResponse:
        response = self._decide(request)
        # A unary caller made a mistake it can fix: say so with a status. The stream answers in-band instead.
        if response.reason == "UNKNOWN_CUSTOMER":
            raise NotFound(response.message)
        if response.reason == "INVALID_REQUEST":
            raise InvalidArgument.field("values" if "values[" in response.message else "request", response.message)
        return response

    @streaming
    async def AuthorizeStream(
        self, request_iterator: AsyncIterator[balance_pb2.AuthorizeRequest], context: Context
    ) -> AsyncIterator[balance_pb2.AuthorizeResponse]:
        async for request in request_iterator:
            if not request.request_id:
                raise InvalidArgument.field("request_id", "is required on AuthorizeStream to correlate answers")
            yield self._decide(request)

    @streaming
    async def AuthorizeBatches(self, request_iterator: AsyncIterator[bytes], context: Context) -> AsyncIterator[bytes]:
        async for batch in request_iterator:
            yield self._decide_batch(batch)

    def _decide_batch(self, batch: bytes) -> bytes:
        """One AuthorizeBatch's answer, or the refusal of the whole message (the stream ends with its status). A
        malformed request inside is answered INVALID_REQUEST in-band and does not sink the batch."""
        identity = auth.caller.get()
        # A restricted key's customers: the kernel checks every request's before it decides any.
        allowed = sorted(identity.customers) if identity is not None and identity.customers is not None else None
        started_ns = time.perf_counter_ns()
        try:
            result, decisions = self.billing.authorize_batch(
                batch, self.clock_ms(), AUTHORIZE_BATCH_REQUESTS_MAX, allowed
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
            raise PermissionDenied(f"{field}: key {identity.name!r} may not touch customer {customer_id!r}") from None
        except BatchTooLarge as exc:
            raise ResourceExhausted(
                f"an AuthorizeBatch holds at most {AUTHORIZE_BATCH_REQUESTS_MAX} requests, this one {exc.args[0]}"
            ) from None
        except RequestIdMissing as exc:
            raise InvalidArgument.field(
                f"requests[{exc.args[0]}].request_id", "is required on AuthorizeBatches to correlate answers"
            ) from None
        except ReservationAsked:
            raise Unimplemented(RESERVATIONS_NOT_BUILT) from None
        except ValueError as exc:
            raise _undecodable(balance_pb2.AuthorizeBatch, batch, exc) from None
        if decisions:
            # One sample per message (its mean per decision): a sample per decision would cost more than one.
            telemetry.authorize_ms.record((time.perf_counter_ns() - started_ns) / 1e6 / decisions)
        return result

    ReleaseReservation = _not_built(
        "reservations are not available yet: ReleaseReservation has nothing to release (Authorize answers without "
        "holding credit)"
    )
    WatchBalance = _not_built_stream("watching a balance is not available yet: WatchBalance; poll GetBalance instead")


class PricingService(_Base, pricing_pb2_grpc.PricingServiceServicer):
    @unary
    async def CreateProduct(self, request: pricing_pb2.CreateProductRequest, context: Context) -> pricing_pb2.Product:
        product = await self._apply(convert.create_product(request, self.clock_ms(), actor_of(context)), Product)
        return convert.product_pb(product)

    @unary
    async def ListProducts(
        self, request: pricing_pb2.ListProductsRequest, context: Context
    ) -> pricing_pb2.ListProductsResponse:
        return pricing_pb2.ListProductsResponse(
            products=[convert.product_pb(p) for p in self.engine.state.products.values()]
        )

    @unary
    async def CreateRateCard(
        self, request: pricing_pb2.CreateRateCardRequest, context: Context
    ) -> pricing_pb2.RateCard:
        command = cmd.CreateRateCard(self.clock_ms(), actor_of(context), request.id, request.name, request.pricing_unit)
        card = await self._apply(command, RateCard)
        return convert.rate_card_pb(card, self.clock_ms())

    @unary
    async def GetRateCard(self, request: pricing_pb2.GetRateCardRequest, context: Context) -> pricing_pb2.RateCard:
        _required(id=request.id)
        return convert.rate_card_pb(self.engine.rate_card(request.id), self.clock_ms())

    @unary
    async def ListRateCards(
        self, request: pricing_pb2.ListRateCardsRequest, context: Context
    ) -> pricing_pb2.ListRateCardsResponse:
        cards = self.engine.state.rate_cards
        page, next_token = _page(sorted(cards), request.page_size, request.page_token)
        now_ms = self.clock_ms()
        return pricing_pb2.ListRateCardsResponse(
            rate_cards=[convert.rate_card_pb(cards[i], now_ms) for i in page], next_page_token=next_token
        )

    @unary
    async def CreateDraftVersion(
        self, request: pricing_pb2.CreateDraftVersionRequest, context: Context
    ) -> pricing_pb2.RateCardVersion:
        _required(rate_card_id=request.rate_card_id)
        version = await self._apply(convert.create_draft(request, self.clock_ms(), actor_of(context)), Version)
        return convert.version_pb(version)

    @unary
    async def ValidateVersion(
        self, request: pricing_pb2.ValidateVersionRequest, context: Context
    ) -> pricing_pb2.ValidationReport:
        _required(rate_card_id=request.rate_card_id, version=request.version)
        return convert.findings_pb(self.engine.validate_version(request.rate_card_id, request.version))

    @unary
    async def PublishVersion(
        self, request: pricing_pb2.PublishVersionRequest, context: Context
    ) -> pricing_pb2.PublishVersionResponse:
        if request.HasField("cohort") and request.cohort.ByteSize():
            raise Unimplemented(
                "cohort rollouts are not available yet: PublishVersion with a cohort; publish to every customer"
            )
        _required(rate_card_id=request.rate_card_id, version=request.version)
        command = cmd.PublishVersion(
            self.clock_ms(),
            actor_of(context),
            request.rate_card_id,
            request.version,
            convert.optional_ms(request, "effective_from"),
        )
        result = await self._apply(command, PublishResult)
        return pricing_pb2.PublishVersionResponse(
            version=convert.version_pb(result.version),
            events_rerated=result.events_rerated,
            validation=convert.findings_pb(result.findings),
        )

    @unary
    async def ListVersions(
        self, request: pricing_pb2.ListVersionsRequest, context: Context
    ) -> pricing_pb2.ListVersionsResponse:
        _required(rate_card_id=request.rate_card_id)
        card = self.engine.rate_card(request.rate_card_id)
        return pricing_pb2.ListVersionsResponse(versions=[convert.version_pb(v) for v in card.versions])

    @unary
    async def GetVersion(self, request: pricing_pb2.GetVersionRequest, context: Context) -> pricing_pb2.RateCardVersion:
        _required(rate_card_id=request.rate_card_id)
        card = self.engine.rate_card(request.rate_card_id)
        if request.WhichOneof("selector") == "at":
            number = card.version_number_at(convert.ms_of(request.at))
            if number is None:
                raise NotFound(f"rate card {card.id!r} has no version in force at that time")
        else:
            number = request.version
        return convert.version_pb(card.version(number))

    @unary
    async def GetAuditLog(
        self, request: pricing_pb2.GetAuditLogRequest, context: Context
    ) -> pricing_pb2.GetAuditLogResponse:
        page_size = min(request.page_size or 100, PAGE_SIZE_MAX)
        entries = [
            pricing_pb2.AuditEntry(
                seq=entry.seq,
                time=convert.timestamp(entry.at_ms),
                actor=entry.actor,
                action=entry.action,
                target=entry.target,
                diff=entry.diff,
            )
            for entry in self.engine.audit_entries(request.after_seq, request.target, page_size)
        ]
        return pricing_pb2.GetAuditLogResponse(entries=entries)

    RollbackRateCard = _not_built(
        "rolling a rate card back is not available yet: RollbackRateCard; create a draft based on the earlier "
        "version (CreateDraftVersion based_on_version) and publish it"
    )
    DiffVersions = _not_built(
        "comparing two rate card versions is not available yet: DiffVersions; read both with GetVersion"
    )
    SimulateVersion = _not_built(
        "simulating a rate card version on recorded usage is not available yet: SimulateVersion"
    )


class ContractService(_Base, contracts_pb2_grpc.ContractServiceServicer):
    @unary
    async def CreateCustomer(
        self, request: contracts_pb2.CreateCustomerRequest, context: Context
    ) -> contracts_pb2.Customer:
        command = cmd.CreateCustomer(
            self.clock_ms(), actor_of(context), request.id, request.name, dict(request.attributes)
        )
        customer = await self._apply(command, Customer)
        return convert.customer_pb(customer)

    @unary
    async def GetCustomer(self, request: contracts_pb2.GetCustomerRequest, context: Context) -> contracts_pb2.Customer:
        _required(id=request.id)
        return convert.customer_pb(self.engine.customer(request.id))

    @unary
    async def ListCustomers(
        self, request: contracts_pb2.ListCustomersRequest, context: Context
    ) -> contracts_pb2.ListCustomersResponse:
        ids = sorted(auth.visible_customers(self.engine.state.customers))  # a restricted key sees its own only
        page, next_token = _page(ids, request.page_size, request.page_token)
        return contracts_pb2.ListCustomersResponse(
            customers=[convert.customer_pb(self.engine.state.customers[i]) for i in page], next_page_token=next_token
        )

    @unary
    async def CreateContract(
        self, request: contracts_pb2.CreateContractRequest, context: Context
    ) -> contracts_pb2.Contract:
        if not request.customer_id:
            raise InvalidArgument.field("customer_id", "is required")
        if not request.rate_card_id:
            raise InvalidArgument.field("rate_card_id", "is required")
        command = cmd.CreateContract(
            self.clock_ms(),
            actor_of(context),
            request.id,  # empty: the engine names it after the customer and the start (see the proto)
            request.customer_id,
            request.rate_card_id,
            convert.optional_ms(request, "starting_at"),
            convert.optional_ms(request, "ending_before"),
            convert.overage_policy(request.overage_policy),
            request.overage_price,
            request.currency,
        )
        contract = await self._apply(command, Contract)
        return self._contract_pb(contract.id)

    def _contract_pb(self, contract_id: str) -> contracts_pb2.Contract:
        contract = self.engine.contract(contract_id)
        account = self.engine.state.accounts[contract.customer_id]
        return convert.contract_pb(contract, [g for g in account.grants if g.contract_id in ("", contract.id)])

    @unary
    async def GetContract(self, request: contracts_pb2.GetContractRequest, context: Context) -> contracts_pb2.Contract:
        _required(id=request.id)
        return self._contract_pb(request.id)

    @unary
    async def AddOverride(self, request: contracts_pb2.AddOverrideRequest, context: Context) -> contracts_pb2.Contract:
        _required(contract_id=request.contract_id)
        at_ms = self.clock_ms()
        override = convert.override(request.override)
        contract = await self._apply(cmd.AddOverride(at_ms, actor_of(context), request.contract_id, override), Contract)
        return self._contract_pb(contract.id)

    @unary
    async def GrantCredits(self, request: contracts_pb2.GrantCreditsRequest, context: Context) -> contracts_pb2.Grant:
        command = convert.grant_credits(request, self.clock_ms(), actor_of(context))
        grant = await self._apply(command, Grant)
        return convert.grant_pb(grant)

    SetTopUpPolicy = _not_built(
        "automatic top-ups are not available yet: SetTopUpPolicy; grant credit with GrantCredits instead"
    )


class InvoiceService(invoices_pb2_grpc.InvoiceServiceServicer):
    """Invoices and revenue reports come with the invoicing issue; every RPC says so."""

    PreviewInvoice = _not_built(
        "invoices are not available yet: PreviewInvoice; for what a customer has used and owes, use "
        "BalanceService.GetBalance"
    )
    ExplainLineItem = _not_built("invoices are not available yet: ExplainLineItem has no invoice line to explain")
    ClosePeriod = _not_built("closing a billing period (it makes the invoice) is not available yet: ClosePeriod")
    GetInvoice = _not_built("invoices are not available yet: GetInvoice")
    ListInvoices = _not_built("invoices are not available yet: ListInvoices")
    GetRevenueReport = _not_built("revenue reports are not available yet: GetRevenueReport")


class AlertService(alerts_pb2_grpc.AlertServiceServicer):
    CreateAlert = _not_built("alerts are not available yet: CreateAlert")
    WatchAlerts = _not_built_stream("alerts are not available yet: WatchAlerts")
