"""PricingService: products, rate cards, versions and the audit log."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from typing import Final, TypedDict

from google.protobuf import timestamp_pb2
from tariff.v1 import (
    pricing_pb2,
    pricing_pb2_grpc,
)

from engine import commands as cmd
from engine.audit import AUDIT_PAGE_CHUNKS_MAX, AuditFilter
from engine.control import check_reference, quoted_id
from engine.diff import diff_versions_steps
from engine.errors import EngineError, InvalidArgument, NotFound
from engine.invoices import CURRENCIES
from engine.money import format_picos
from engine.products import Product
from engine.ratecard import RateCard, Version
from engine.rerate import (
    LEFT_ALONE_REASON,
    SIMULATE_SLICE_CUSTOMERS,
    Simulation,
    check_simulated_customers,
    check_simulated_period,
    simulate_slice,
    simulation_customers,
    simulation_table,
)
from engine.versions import PublishResult
from server import convert
from server.errors import (
    ResourceExhausted,
    Unavailable,
    larger_limit,
    send_limit,
    too_large,
    unary,
)
from server.scheduling import paced
from server.services.common import (
    PAGE_SIZE_MAX,
    PAGE_TOKEN_NOT_ISSUED,
    Context,
    _Base,
    _fitted,
    _fitting,
    _page,
    _required,
    actor_of,
)


class _PublishRerateFlags(TypedDict):
    """The server-set fields a publish carries, PublishVersion's and RollbackRateCard's alike (a rollback publishes
    through PublishVersion's path): what each means is in engine/commands.py PublishVersion."""

    split_hours_refused: bool
    rerate_in_contract: bool
    rerate_holds_in_time: bool
    rerate_top_ups_in_time: bool
    override_hours_refused: bool
    rerate_carries_earlier_hours: bool
    rerate_counts_closed_events_once: bool
    rerate_breaks_rolled_credit: bool
    rerate_holds_off_final_grants: bool
    rerate_keeps_unchanged_draws: bool


# Every publish and rollback this server takes sets them all.
_PUBLISH_RERATE_FLAGS: Final[_PublishRerateFlags] = {
    "split_hours_refused": True,
    "rerate_in_contract": True,
    "rerate_holds_in_time": True,
    "rerate_top_ups_in_time": True,
    "override_hours_refused": True,
    "rerate_carries_earlier_hours": True,
    "rerate_counts_closed_events_once": True,
    "rerate_breaks_rolled_credit": True,
    "rerate_holds_off_final_grants": True,
    "rerate_keeps_unchanged_draws": True,
}


class PricingService(_Base, pricing_pb2_grpc.PricingServiceServicer):
    # ListProducts' answer's size and the products it counts (_catalogue_bytes), of the products dict `_of`.
    _catalogue_counted: tuple[int, int] = (0, 0)
    _catalogue_of: object = None

    def _card_named(self, rate_card_id: str) -> RateCard:
        """The rate card a request's rate_card_id names: INVALID_ARGUMENT when it is empty or not an id, NOT_FOUND
        when no card has it."""
        check_reference(rate_card_id, "rate_card_id", self.engine.state.rate_cards)
        return self.engine.rate_card(rate_card_id)

    @unary
    async def CreateProduct(self, request: pricing_pb2.CreateProductRequest, context: Context) -> pricing_pb2.Product:
        command = convert.create_product(request, self.clock_ms(), actor_of(context))
        if request.product.id not in self.engine.state.products:  # a retry answers the product held
            self._check_catalogue_room(request.product)
        product = await self._apply(command, Product)
        return convert.product_pb(product)

    def _check_catalogue_room(self, product: pricing_pb2.Product) -> None:
        """RESOURCE_EXHAUSTED, before anything changes, when the catalogue with `product` would take more than a
        list page (page_bytes_max: what a gRPC client reads by default, 4 MiB, less under a lower --message-mb-max):
        ListProducts answers every product in one message, and no product is ever deleted, so one past it would
        make that answer unreadable for good."""
        size = self._catalogue_bytes() + pricing_pb2.ListProductsResponse(products=[product]).ByteSize()
        if size > self.page_bytes_max:
            raise ResourceExhausted(
                f"the product was not created: the catalogue (ListProducts' answer, one message) would take {size:,} "
                f"bytes, more than {self.page_bytes_max:,} (what a gRPC client reads by default, as a list page)"
            )

    def _catalogue_bytes(self) -> int:
        """ListProducts' answer's size, kept as products are added (they never change or go)."""
        products = self.engine.state.products
        counted, size = self._catalogue_counted
        if counted > len(products) or self._catalogue_of is not products:  # a rebuilt state: count afresh
            counted, size, self._catalogue_of = 0, 0, products
        for product in itertools.islice(products.values(), counted, None):
            size += pricing_pb2.ListProductsResponse(products=[convert.product_pb(product)]).ByteSize()
        self._catalogue_counted = (len(products), size)
        return size

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
        pricing_unit = _pricing_unit(request.pricing_unit)
        name = convert.check_shown_text(convert.check_text(request.name, "name"), "name", "a name")
        command = cmd.CreateRateCard(
            self.clock_ms(), actor_of(context), request.id, name, pricing_unit, applied_audited=True
        )
        card = await self._apply(command, RateCard)
        return convert.rate_card_pb(card, self.clock_ms())

    @unary
    async def GetRateCard(self, request: pricing_pb2.GetRateCardRequest, context: Context) -> pricing_pb2.RateCard:
        check_reference(request.id, "id", self.engine.state.rate_cards)
        return convert.rate_card_pb(self.engine.rate_card(request.id), self.clock_ms())

    @unary
    async def ListRateCards(
        self, request: pricing_pb2.ListRateCardsRequest, context: Context
    ) -> pricing_pb2.ListRateCardsResponse:
        cards = self.engine.state.rate_cards
        page, next_token = _page(sorted(cards), request.page_size, request.page_token)
        now_ms = self.clock_ms()
        listed, next_token = _fitted(
            [convert.rate_card_pb(cards[i], now_ms) for i in page], page, next_token, self.page_bytes_max
        )
        return pricing_pb2.ListRateCardsResponse(rate_cards=listed, next_page_token=next_token)

    @unary
    async def CreateDraftVersion(
        self, request: pricing_pb2.CreateDraftVersionRequest, context: Context
    ) -> pricing_pb2.RateCardVersion:
        self._card_named(request.rate_card_id)
        convert.check_draft_counts(request)  # before any entry is looked at
        for index, rate in enumerate(request.upsert_rates):
            if rate.product_id:  # empty: the engine's "is required"; unknown: a finding of ValidateVersion
                check_reference(rate.product_id, f"upsert_rates[{index}].product_id", self.engine.state.products)
        self._check_draft_room(request)
        version = await self._apply(convert.create_draft(request, self.clock_ms(), actor_of(context)), Version)
        message = convert.version_pb(version)
        if message.ByteSize() > send_limit.bytes_max:  # the estimate fell short: say what was made
            done = f"draft version {version.number} of rate card {request.rate_card_id!r} was made, but it"
            raise too_large(done, message.ByteSize())
        return message

    def _check_draft_room(self, request: pricing_pb2.CreateDraftVersionRequest) -> None:
        """RESOURCE_EXHAUSTED, before anything changes, when the draft (its base's rates and parameters and the
        request's) would be larger than gRPC sends: the answer, GetVersion and a publish's answer show it whole."""
        base_bytes = 0
        if request.based_on_version:
            try:
                base = self._card_named(request.rate_card_id).version(request.based_on_version)
                base_bytes = convert.version_pb(base).ByteSize()
            except EngineError:  # the engine's refusal, as before
                return
        size = base_bytes + request.ByteSize() + DRAFT_SLACK_BYTES
        if size > send_limit.bytes_max:
            raise too_large("the draft was not made: it", size, larger_limit(size), "would be about")

    @unary
    async def ValidateVersion(
        self, request: pricing_pb2.ValidateVersionRequest, context: Context
    ) -> pricing_pb2.ValidationReport:
        _required(rate_card_id=request.rate_card_id, version=request.version)
        self._card_named(request.rate_card_id)
        return convert.findings_pb(self.engine.validate_version(request.rate_card_id, request.version))

    @unary
    async def PublishVersion(
        self, request: pricing_pb2.PublishVersionRequest, context: Context
    ) -> pricing_pb2.PublishVersionResponse:
        _required(rate_card_id=request.rate_card_id, version=request.version)
        effective_from_ms = convert.optional_hour_ms(request, "effective_from")  # before the state is looked at
        self._card_named(request.rate_card_id)
        convert.check_count(
            request.cohort.customer_ids,
            "cohort.customer_ids",
            convert.CUSTOMER_IDS_MAX,
            "customer ids (attributes or customers_created_after name more)",
        )
        for index, customer_id in enumerate(request.cohort.customer_ids):
            if customer_id:  # empty: the engine's "an id must not be empty", with the cohort's other findings
                check_reference(customer_id, f"cohort.customer_ids[{index}]", self.engine.state.customers)
        command = cmd.PublishVersion(
            self.clock_ms(),
            actor_of(context),
            request.rate_card_id,
            request.version,
            effective_from_ms,
            convert.cohort_of(request.cohort) if request.HasField("cohort") else None,
            **_PUBLISH_RERATE_FLAGS,
            prices_rounded_in_range=True,
        )
        return _sent_publish(await self._apply(command, PublishResult))

    @unary
    async def ListVersions(
        self, request: pricing_pb2.ListVersionsRequest, context: Context
    ) -> pricing_pb2.ListVersionsResponse:
        """A page of versions by number. A version holds up to 10,000 rates (about 75 ms to make into a message
        here), so a card of many was once answered whole: made into messages on the loop (62 of 10,000 rates held it
        4.5 s) only to be more than gRPC sends. A page is made a version at a time, the loop given back between
        them, and ends once past the page's bytes."""
        card = self._card_named(request.rate_card_id)
        size = min(request.page_size or 100, PAGE_SIZE_MAX)
        start = _version_after(request.page_token, len(card.versions))
        page = card.versions[start : start + size]
        listed: list[pricing_pb2.RateCardVersion] = []
        total_bytes = 0
        for version in page:
            message = convert.version_pb(version)
            total_bytes += message.ByteSize() + 8  # the field's tag and length prefix take at most 8 more
            if total_bytes > self.page_bytes_max and listed:
                break
            listed.append(message)
            await asyncio.sleep(0)  # reads and ingestion go on between versions
        more = len(listed) < len(page) or start + size < len(card.versions)
        return pricing_pb2.ListVersionsResponse(
            versions=listed, next_page_token=str(listed[-1].version) if listed and more else ""
        )

    @unary
    async def GetVersion(self, request: pricing_pb2.GetVersionRequest, context: Context) -> pricing_pb2.RateCardVersion:
        # What is wrong with the request whatever the state first, then what the state lacks (NOT_FOUND).
        check_reference(request.rate_card_id, "rate_card_id", self.engine.state.rate_cards)
        at_ms = convert.ms_of(request.at, "at") if request.WhichOneof("selector") == "at" else None
        if at_ms is None and not request.version:
            raise InvalidArgument.field("version", "is required: a version number, or at (the version in force then)")
        card = self.engine.rate_card(request.rate_card_id)
        number = request.version if at_ms is None else card.version_number_at(at_ms)
        if number is None:
            raise NotFound(f"rate card {card.id!r} has no version in force at that time")
        return convert.version_pb(card.version(number))

    @unary
    async def GetAuditLog(
        self, request: pricing_pb2.GetAuditLogRequest, context: Context
    ) -> pricing_pb2.GetAuditLogResponse:
        page_size = min(request.page_size or 100, PAGE_SIZE_MAX)
        start_ms, end_ms = (
            convert.optional_filter_ms(request, "start_time"),
            convert.optional_filter_ms(request, "end_time"),
        )
        # Compared exactly: two bounds inside one millisecond round up to the same one, yet end after start is valid.
        if start_ms is not None and end_ms is not None and _nanos(request.end_time) <= _nanos(request.start_time):
            raise InvalidArgument.field("end_time", "must be after start_time")
        where = AuditFilter(request.actor, request.action, start_ms, end_ms)
        # Only the newer filters bound the chunks a page opens: a page by after_seq and target alone is whole, as
        # clients paging until an empty page have always had it.
        filtered = where != AuditFilter()
        found, next_after_seq = self.engine.audit_page(
            request.after_seq,
            request.target,
            page_size,
            where if filtered else None,
            AUDIT_PAGE_CHUNKS_MAX if filtered else None,
        )
        entries = [
            pricing_pb2.AuditEntry(
                seq=entry.seq,
                time=convert.timestamp(entry.at_ms),
                actor=entry.actor,
                action=entry.action,
                target=entry.target,
                diff=entry.diff,
            )
            for entry in found
        ]
        kept = _fitting(entries, self.page_bytes_max)  # a diff reaches 64 KiB: 1,000 of them would not send
        if kept < len(entries):
            entries, next_after_seq = entries[:kept], entries[kept - 1].seq
        return pricing_pb2.GetAuditLogResponse(entries=entries, next_after_seq=next_after_seq)

    @unary
    async def RollbackRateCard(
        self, request: pricing_pb2.RollbackRateCardRequest, context: Context
    ) -> pricing_pb2.PublishVersionResponse:
        _required(rate_card_id=request.rate_card_id, to_version=request.to_version)
        effective_from_ms = convert.optional_hour_ms(request, "effective_from")  # before the state is looked at
        self._card_named(request.rate_card_id)
        command = cmd.RollbackRateCard(
            self.clock_ms(),
            actor_of(context),
            request.rate_card_id,
            request.to_version,
            effective_from_ms,
            **_PUBLISH_RERATE_FLAGS,
        )
        return _sent_publish(await self._apply(command, PublishResult))

    @unary
    async def DiffVersions(
        self, request: pricing_pb2.DiffVersionsRequest, context: Context
    ) -> pricing_pb2.DiffVersionsResponse:
        _required(rate_card_id=request.rate_card_id, from_version=request.from_version, to_version=request.to_version)
        card = self._card_named(request.rate_card_id)
        old, new = card.version(request.from_version), card.version(request.to_version)
        # Paced: two versions of 10,000 rates of three tiers held the loop 1.85 s in one go. What a diff reads of
        # the two versions never changes once they are made, so commands applied between steps change nothing.
        diff = await paced(diff_versions_steps(old, new))
        return await paced(convert.version_diff_pb_steps(diff))

    @unary
    async def SimulateVersion(
        self, request: pricing_pb2.SimulateVersionRequest, context: Context
    ) -> pricing_pb2.SimulateVersionResponse:
        """Prices on the loop only what is cheap (one version's validation); the kernel's work runs off the loop,
        a slice of customers at a time under its shared lock, so reads and ingestion are not held up. Waits while a
        publish's re-rating of the card has customers pending, so the answer is of the state it leaves (a read:
        replay is unaffected)."""
        _required(rate_card_id=request.rate_card_id, version=request.version)
        _required(period_start=request.HasField("period_start"), period_end=request.HasField("period_end"))
        check_reference(request.rate_card_id, "rate_card_id", self.engine.state.rate_cards)
        convert.check_count(
            request.customer_ids, "customer_ids", convert.CUSTOMER_IDS_MAX, "customer ids (none: every customer)"
        )
        for index, customer_id in enumerate(request.customer_ids):
            check_reference(customer_id, f"customer_ids[{index}]", self.engine.state.customers)
        start_ms, end_ms = (
            convert.ms_of(request.period_start, "period_start"),
            # Rounded up: an end half a millisecond past an hour reaches into that hour, and is after a start on it.
            convert.ms_up_of(request.period_end, "period_end"),
        )
        check_simulated_period(start_ms, end_ms)
        # The request is well formed: now what the state lacks (NOT_FOUND), the card first.
        self.engine.rate_card(request.rate_card_id)
        check_simulated_customers(self.engine.state.customers, request.customer_ids)  # NotFound naming each
        loop = asyncio.get_running_loop()
        give_up_at = loop.time() + SIMULATE_RERATING_WAIT_S_MAX
        while True:
            # Against the state a publish's re-rating of the card leaves, never beside it: a customer not yet
            # re-rated holds the old prices' charges, which the walk would mix with the new timeline.
            await self._rerating_done(request.rate_card_id, give_up_at)
            publishes = self._publishes(request.rate_card_id)
            simulation = await self._simulation(request, start_ms, end_ms)
            # A publish of the card applied between slices: its customers may be in either state; simulate again.
            if not self._rerating_pending(request.rate_card_id) and self._publishes(request.rate_card_id) == publishes:
                break
            if loop.time() >= give_up_at:
                raise self._still_rerating(request.rate_card_id)
        current, simulated = simulation.current_picos, simulation.simulated_picos
        return pricing_pb2.SimulateVersionResponse(
            amounts=[
                pricing_pb2.SimulatedAmount(
                    customer_id=customer_id,
                    product_id=product_id,
                    current_amount=format_picos(now),
                    simulated_amount=format_picos(then),
                    delta=format_picos(then - now),
                )
                for customer_id, product_id, now, then in simulation.lines
            ],
            totals=pricing_pb2.SimulatedTotals(
                current_amount=format_picos(current),
                simulated_amount=format_picos(simulated),
                delta=format_picos(simulated - current),
            ),
        )

    async def _rerating_done(self, rate_card_id: str, give_up_at: float) -> None:
        """Returns once no re-rating of the card has customers pending, woken as one ends (completed, or dropped
        with the state after a failed commit: Billing.on_rerating_end); UNAVAILABLE at `give_up_at` (loop time)."""
        loop = asyncio.get_running_loop()
        ended = asyncio.Event()

        def wake() -> None:  # on the thread that ends the re-rating
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(ended.set)

        stop = self.billing.on_rerating_end(wake)  # before the first look, so that no end is missed
        try:
            while self._rerating_pending(rate_card_id):
                try:
                    async with asyncio.timeout_at(give_up_at):
                        await ended.wait()
                except TimeoutError:
                    raise self._still_rerating(rate_card_id) from None
                ended.clear()  # another publish of the card may have left a re-rating pending since: look again
        finally:
            stop()

    def _still_rerating(self, rate_card_id: str) -> Unavailable:
        """SimulateVersion's answer once it has waited SIMULATE_RERATING_WAIT_S_MAX for the card's re-rating."""
        rerating = self.billing.rerating
        pending = len(rerating.pending) if rerating is not None else 0
        return Unavailable(
            f"rate card {rate_card_id!r} is still being re-rated after a publish ({pending:,} customers to go) after"
            f" {SIMULATE_RERATING_WAIT_S_MAX:g} s: SimulateVersion answers once that completes; retry"
        )

    def _rerating_pending(self, rate_card_id: str) -> bool:
        """Whether a publish's (or rollback's) re-rating of this card has customers still to re-rate."""
        rerating = self.billing.rerating
        return rerating is not None and rerating.rate_card_id == rate_card_id and bool(rerating.pending)

    def _publishes(self, rate_card_id: str) -> int:
        """How many publishes (rollbacks included) the card's timeline holds: one more changes what is simulated."""
        return len(self.engine.rate_card(rate_card_id).timeline)

    async def _simulation(self, request: pricing_pb2.SimulateVersionRequest, start_ms: int, end_ms: int) -> Simulation:
        """The kernel's work off the loop, a slice of customers at a time under its shared lock."""
        self.billing.refresh_tables()
        table = simulation_table(self.engine.state, request.rate_card_id, request.version, start_ms, end_ms)
        loop = asyncio.get_running_loop()
        kernel = self.billing.kernel
        customers = await loop.run_in_executor(
            None, simulation_customers, kernel, request.rate_card_id, start_ms, list(request.customer_ids)
        )
        lines: list[tuple[str, str, int, int]] = []
        for at in range(0, len(customers), SIMULATE_SLICE_CUSTOMERS):
            chunk = customers[at : at + SIMULATE_SLICE_CUSTOMERS]
            lines += await loop.run_in_executor(None, simulate_slice, kernel, table, start_ms, end_ms, chunk)
        return Simulation(lines)


# The longest SimulateVersion waits for that re-rating, whatever the call's deadline (none, often): then UNAVAILABLE,
# which a client retries, rather than a call held open without limit behind a re-rating that stalled (the writer
# rebuilding its state after a failed commit, say).
SIMULATE_RERATING_WAIT_S_MAX = 60.0

# What a draft's answer holds beyond its base and the request: its number, status, times, the actor.
DRAFT_SLACK_BYTES = 1024


def _sent_publish(result: PublishResult) -> pricing_pb2.PublishVersionResponse:
    """The publish's answer, or RESOURCE_EXHAUSTED saying the version was published (a draft made under a larger
    --message-mb-max): a retry answers the same, so the error must say what was done."""
    message = publish_response(result)
    if message.ByteSize() > send_limit.bytes_max:
        version = result.version
        done = f"version {version.number} of rate card {version.rate_card_id!r} is published, but the answer"
        raise too_large(done, message.ByteSize())
    return message


def publish_response(result: PublishResult) -> pricing_pb2.PublishVersionResponse:
    """PublishVersion's and RollbackRateCard's reply: the version published and what its re-rating did."""
    return pricing_pb2.PublishVersionResponse(
        version=convert.version_pb(result.version),
        events_rerated=result.events_rerated,
        validation=convert.findings_pb(result.findings),
        customers_rerated=result.customers_rerated,
        buckets_rerated=result.buckets_rerated,
        rerated_amount_delta=format_picos(result.rerated_amount_delta_picos),
        closed_buckets_left_alone=result.closed_buckets_left_alone,
        closed_events_left_alone=result.closed_events_left_alone,
        closed_amount_left_alone=format_picos(result.closed_amount_left_alone_picos),
        left_alone_reason=LEFT_ALONE_REASON if result.closed_buckets_left_alone else "",
    )


def _nanos(timestamp: timestamp_pb2.Timestamp) -> int:
    return int(timestamp.seconds) * 1_000_000_000 + int(timestamp.nanos)


def _pricing_unit(unit: str) -> str:
    """A rate card's pricing unit once it is "credits" or an ISO 4217 code of the server's currency table
    (engine/invoices.py CURRENCIES), or empty (the engine refuses that as required). INVALID_ARGUMENT naming
    `pricing_unit` otherwise: "usd", "xyz" or a paragraph of text named no unit anyone could be billed in. Checked
    here, not in the engine, so that rate cards journaled before the check replay as they were."""
    if unit and unit != "credits" and unit not in CURRENCIES:
        raise InvalidArgument.field(
            "pricing_unit",
            f'{quoted_id(unit)} must be "credits" or an ISO 4217 currency code that has a minor unit ("USD", "JPY"; '
            'not "usd", "XXX")',
        )
    return unit


def _version_after(page_token: str, versions: int) -> int:
    """The index of the first version a ListVersions page lists: 0 for no token, else the version after the one
    the token names (a version number in decimal, as a page ends on). Anything else is INVALID_ARGUMENT naming
    page_token, as the other paged lists refuse a token they did not issue."""
    if not page_token:
        return 0
    # At most 10 digits before int(): a version number is a uint32, and a longer run of digits is no token.
    if len(page_token) > 10 or not (page_token.isascii() and page_token.isdigit()) or page_token[0] == "0":
        raise InvalidArgument.field("page_token", PAGE_TOKEN_NOT_ISSUED)
    number = int(page_token)
    if not 1 <= number <= versions:
        raise InvalidArgument.field("page_token", PAGE_TOKEN_NOT_ISSUED)
    return number
