"""InvoiceService: live drafts, closing periods, final invoices, why a line costs what it does (ExplainLineItem,
read from the explain index) and revenue reports."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec
from tariff.v1 import (
    invoices_pb2,
    invoices_pb2_grpc,
)

from engine import commands as cmd
from engine import explain, revenue
from engine.billing import Billing
from engine.control import check_reference
from engine.errors import EngineError, InvalidArgument
from engine.instants import iso
from engine.invoices import QUANTITY_SCALE, Invoice, InvoiceLine, LineAdjustment, VersionPart
from engine.money import format_picos, format_scaled
from server import convert
from server.closer import PERIODS_PER_COMMAND as CLOSE_SLICE_PERIODS
from server.closer import close_due_slice
from server.errors import Unavailable, larger_limit, send_limit, too_large, unary
from server.explain_index import IndexedEvent, IndexStopped, StaleToken
from server.scheduling import paced
from server.sequencer import Sequencer
from server.services.common import (
    PAGE_SIZE_MAX,
    Context,
    SortedKeys,
    _Base,
    _fitted,
    _page,
    _required,
    actor_of,
    wall_ms,
)

EXPLAIN_PAGE_SIZE_DEFAULT = 100
# How long ExplainLineItem waits for the index to reach what the state reflects (it trails the ack by milliseconds).
EXPLAIN_INDEX_WAIT_S = 10.0


def quantity_text(quantity_e18: int) -> str:
    return format_scaled(quantity_e18, 18)


def minor_text(amount_minor: int, places: int) -> str:
    """An amount due in minor units as a decimal with exactly the currency's places ("12.30", "1500")."""
    if not places:
        return str(amount_minor)
    whole, fraction = divmod(-amount_minor if amount_minor < 0 else amount_minor, 10**places)
    return f"{'-' if amount_minor < 0 else ''}{whole}.{fraction:0{places}d}"


def _add_price(prices: Any, part: VersionPart) -> None:
    prices.add(
        version=part.version,
        unit_price=format_picos(part.unit_price_picos),
        quantity=quantity_text(part.quantity_e18),
        amount=format_picos(part.amount_picos),
        events=part.events,
        rate_card_id=part.rate_card_id,
    )


def _adjustment_fields(adjustment: LineAdjustment) -> dict[str, Any]:
    return {
        "journal_seq": adjustment.journal_seq,
        "hour": convert.timestamp(adjustment.hour_start_ms),
        "rate_card_id": adjustment.rate_card_id,
        "old_versions": adjustment.old_versions,
        "new_version": adjustment.new_version,
        "quantity": quantity_text(adjustment.quantity_e18),
        "events": adjustment.events,
        "old_amount": format_picos(adjustment.old_amount_picos),
        "new_amount": format_picos(adjustment.new_amount_picos),
        "delta": format_picos(adjustment.new_amount_picos - adjustment.old_amount_picos),
    }


def _adjustment_pb(adjustment: LineAdjustment) -> invoices_pb2.LineAdjustment:
    return invoices_pb2.LineAdjustment(**_adjustment_fields(adjustment))


def _add_line(lines: Any, line: InvoiceLine, places: int) -> None:
    """One line, built in place in the invoice (`add`): a sub-message built apart and passed in a list is
    copied into its parent, which made up about half of PreviewInvoice's time."""
    added = lines.add(
        line_id=line.line_id,
        product_id=line.product_id,
        dimensions=line.dimensions,
        quantity=quantity_text(line.quantity_e18),
        amount=format_picos(line.amount_picos),
        events=line.events,
        overage=format_picos(line.overage_picos),
        amount_due=minor_text(line.amount_due_minor, places),
    )
    for part in line.parts:
        _add_price(added.prices, part)
    for grant_id, credits in line.credits:
        added.credits_applied.add(grant_id=grant_id, credits=format_picos(credits))
    for adjustment in line.adjustments:
        added.adjustments.add(**_adjustment_fields(adjustment))


def invoice_pb(invoice: Invoice) -> invoices_pb2.Invoice:
    places = invoice.minor_unit
    message = invoices_pb2.Invoice(
        customer_id=invoice.customer_id,
        invoice_number=invoice.number,
        status=invoices_pb2.INVOICE_FINAL if invoice.final else invoices_pb2.INVOICE_DRAFT,
        period_start=convert.timestamp(invoice.period_start_ms),
        period_end=convert.timestamp(invoice.period_end_ms),
        pricing_unit=invoice.pricing_unit,
        currency=invoice.currency,
        overage_amount=format_picos(invoice.overage_picos),
        overage_due=minor_text(invoice.overage_due_minor, places),
        top_up_purchases=minor_text(invoice.top_up_purchases_minor, places),
        total_due=minor_text(invoice.total_due_minor, places),
        subtotal=format_picos(invoice.subtotal_picos),
        minor_unit=places,
        rounding_adjustment=minor_text(invoice.rounding_adjustment_minor, places),
        overage_price=convert.written_decimal(invoice.overage_price, "overage_price"),
        contract_id=invoice.contract_id,
    )
    for line in invoice.lines:
        _add_line(message.lines, line, places)
    for grant_id, credits in invoice.credits_applied:
        message.credits_applied.add(grant_id=grant_id, credits=format_picos(credits))
    for g in invoice.grant_balances:
        message.grant_balances.add(
            grant_id=g.grant_id,
            granted=format_picos(g.granted_picos),
            drawn=format_picos(g.drawn_picos),
            remaining=format_picos(g.remaining_picos),
            expired=format_picos(g.expired_picos),
        )
    if invoice.final:
        message.closed_at.CopyFrom(convert.timestamp(invoice.closed_at_ms))
    return message


assert QUANTITY_SCALE == 10**18  # quantity_text's scale


def _described(invoice: Invoice) -> str:
    """An invoice as an error names it: its number (or draft), customer, period and how many lines it has."""
    which = f"invoice {invoice.number}" if invoice.final else "the draft invoice"
    return (
        f"{which} of customer {invoice.customer_id!r} for the period from {iso(invoice.period_start_ms)} "
        f"({len(invoice.lines):,} lines)"
    )


def _sent_invoice(invoice: Invoice, message: invoices_pb2.Invoice | None = None) -> invoices_pb2.Invoice:
    """The invoice's message when gRPC can send it; otherwise RESOURCE_EXHAUSTED naming the invoice and the limit
    that would send it (an invoice is not paged: its lines grow with the usage's dimension values)."""
    message = invoice_pb(invoice) if message is None else message
    size = message.ByteSize()
    if size > send_limit.bytes_max:
        raise too_large(_described(invoice), size)
    return message


class _Checked(NamedTuple):
    """What ClosePeriod's check saw: the period's draft, or its final invoice when it was closed already, and the
    answer closing it would send (a draft's: as final, numbered INV-00000000, closed at the close's instant)."""

    invoice: Invoice
    message: invoices_pb2.Invoice


def _closing_check(invoice: Invoice, closed_at_ms: int) -> _Checked:
    message = invoice_pb(invoice)
    if not invoice.final:
        message.invoice_number = "INV-00000000"
        message.status = invoices_pb2.INVOICE_FINAL
        message.closed_at.CopyFrom(convert.timestamp(closed_at_ms))
    return _Checked(invoice, message)


def _closed_answer(invoice: Invoice, checked: _Checked | None) -> invoices_pb2.Invoice:
    """invoice_pb(invoice) for the final invoice a ClosePeriod answers, taken from the message its check made when
    that is provably the same: the very invoice (a closed period's, which never changes), or a draft equal to it
    but for its number and close time (no command changed the period in between), numbered so. An invoice
    listing 11,000 grants takes 10-40 ms to make into a message on the event loop."""
    if checked is not None and invoice.final:
        seen, message = checked
        if seen is invoice:
            return message
        numbered = msgspec.structs.replace(
            seen,
            number=invoice.number,
            final=True,
            closed_at_ms=invoice.closed_at_ms,
            recorded_before=invoice.recorded_before,
        )
        if not seen.final and numbered == invoice:
            message.invoice_number = invoice.number
            message.closed_at.CopyFrom(convert.timestamp(invoice.closed_at_ms))
            return message
    return invoice_pb(invoice)


class InvoiceService(_Base, invoices_pb2_grpc.InvoiceServiceServicer):
    def __init__(self, billing: Billing, sequencer: Sequencer, clock_ms: Callable[[], int] = wall_ms) -> None:
        super().__init__(billing, sequencer, clock_ms)
        self._invoice_numbers = SortedKeys()  # ListInvoices' pages of every customer's

    @unary
    async def PreviewInvoice(
        self, request: invoices_pb2.PreviewInvoiceRequest, context: Context
    ) -> invoices_pb2.Invoice:
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        at_ms = convert.optional_ms(request, "period_start")
        now_ms = self.read_ms()
        # Read at now_ms: what fell due by then counts as the clock will record it (engine/invoicing.py preview).
        return _sent_invoice(self.engine.preview(request.customer_id, now_ms if at_ms is None else at_ms, now_ms))

    @unary
    async def ClosePeriod(self, request: invoices_pb2.ClosePeriodRequest, context: Context) -> invoices_pb2.Invoice:
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        period_start_ms = convert.optional_period_start_ms(request)
        if period_start_ms is None:
            raise InvalidArgument.field("period_start", "is required: the start of the period to close")
        at_ms = self.clock_ms()
        # The period's invoice is built twice, and both are needed. The check builds the draft here, on the loop,
        # before the command is queued (once the period is known closable: a close refused anyway builds none): its
        # refusal must come before anything changes. The command builds the final
        # on the writer (engine/invoicing.py _finalise), after the clock's work due by then is recorded (the
        # rollovers and expiries the draft only foresees, Sequencer._clock_before) and after the commands queued
        # ahead, and replay builds it again from the record alone: the record cannot carry the draft, and the draft
        # is known equal to the final only once the final is built. _closed_answer keeps only the message from
        # being made twice.
        checked = self._check_closable(request.customer_id, period_start_ms, at_ms)
        command = cmd.ClosePeriod(
            at_ms,
            actor_of(context),
            request.customer_id,
            period_start_ms,
            rollovers_shown=True,
            adjustments_in_contract=True,
            parts_in_contract=True,
            rolled_breakage_shown=True,
            expired_breakage_shown=True,
            closed_in_journal_order=True,
            spent_grants_left_out=True,
        )
        invoice = await self._apply(command, Invoice)
        message = _closed_answer(invoice, checked)
        if message.ByteSize() > send_limit.bytes_max:  # usage came in since the check: say what was done
            raise too_large(f"the period is closed as {_described(invoice)}, whose answer", message.ByteSize())
        return message

    def _check_closable(self, customer_id: str, period_start_ms: int, at_ms: int) -> _Checked | None:
        """RESOURCE_EXHAUSTED, before anything changes, when closing the period would answer an invoice larger
        than gRPC sends (the period stays open), or when the period is already closed as such an invoice. The
        refusals that need no invoice (no period's start, a period not ended) come first, as the command makes
        them, and build no draft; the command makes them again on the writer. What it checked, for the answer to
        reuse."""
        number = self.engine.closable(customer_id, period_start_ms, at_ms)[1]
        try:
            if number is not None:  # the invoice stored, as preview answers a closed period, without its kernel read
                invoice = self.engine.invoice(number)
            else:
                invoice = self.engine.preview(customer_id, period_start_ms, at_ms)
        except EngineError:
            return None
        if invoice.period_start_ms != period_start_ms or invoice.period_end_ms > at_ms:
            return None
        checked = _closing_check(invoice, at_ms)
        if invoice.final:
            _sent_invoice(invoice, checked.message)
            return checked
        size = checked.message.ByteSize()
        if size > send_limit.bytes_max:
            what = f"the period of customer {customer_id!r} from {iso(period_start_ms)} was not closed: its invoice"
            raise too_large(
                f"{what} ({len(invoice.lines):,} lines)", size, f"{larger_limit(size)} to close it", "would be"
            )
        return checked

    @unary
    async def CloseDuePeriods(
        self, request: invoices_pb2.CloseDuePeriodsRequest, context: Context
    ) -> invoices_pb2.CloseDuePeriodsResponse:
        closed = await self._close_due(actor_of(context))
        # Answered as a page of ListInvoices is: the invoices that fit, and the token to list the rest with (every
        # period due is closed before the answer, so a backlog larger than an answer is never closed but unshown).
        # Only the invoices shown are made into messages: a backlog of thousands is not converted on the loop.
        made: list[invoices_pb2.Invoice] = []
        total_bytes = 0
        for invoice in closed:
            message = invoice_pb(invoice)
            total_bytes += message.ByteSize() + 8  # the field's tag and length prefix take at most 8 more
            if total_bytes > self.page_bytes_max and made:
                break
            made.append(message)
        token = closed[len(made) - 1].number if len(made) < len(closed) else ""
        answer = invoices_pb2.CloseDuePeriodsResponse(invoices=made, invoices_made=len(closed), next_page_token=token)
        if answer.ByteSize() > send_limit.bytes_max:  # the first invoice alone is too large: say what was done
            first, last = closed[0].number, closed[-1].number
            raise too_large(
                f"closed {len(closed)} periods as invoices {first} to {last}, but the first, {_described(closed[0])}",
                made[0].ByteSize(),
                f"ListInvoices lists the others from page_token {first!r}; {larger_limit(answer.ByteSize())} to "
                f"read {first}",
            )
        return answer

    async def _close_due(self, actor: str) -> list[Invoice]:
        """Every period that ended by now, closed in journaled commands of CLOSE_SLICE_PERIODS periods each, as the
        close driver closes them (server/closer.py): one command closing a backlog of thousands held the writer, and
        every usage batch and read behind it, for as long as they all took. Each slice carries its own time and a
        grace that keeps the cut at the call's start, so a period ending while the slices run waits for the next
        call or the driver, as it would have."""
        started_ms = self.clock_ms()
        closed: list[Invoice] = []
        while True:
            at_ms = max(self.clock_ms(), started_ms)
            made = await self._apply(close_due_slice(at_ms, actor, at_ms - started_ms), list)
            closed.extend(made)
            if len(made) < CLOSE_SLICE_PERIODS:
                return closed

    @unary
    async def GetInvoice(self, request: invoices_pb2.GetInvoiceRequest, context: Context) -> invoices_pb2.Invoice:
        _required(invoice_number=request.invoice_number)
        return _sent_invoice(self.engine.invoice(request.invoice_number))

    @unary
    async def ListInvoices(
        self, request: invoices_pb2.ListInvoicesRequest, context: Context
    ) -> invoices_pb2.ListInvoicesResponse:
        if request.status not in invoices_pb2.InvoiceStatus.values():
            raise InvalidArgument.field("status", f"unknown invoice status {request.status}")
        if request.status == invoices_pb2.INVOICE_DRAFT:
            _page([], request.page_size, request.page_token)  # no token names a draft: any is refused
            return invoices_pb2.ListInvoicesResponse()  # drafts are not stored: PreviewInvoice shows one
        if request.customer_id:
            check_reference(request.customer_id, "customer_id", self.engine.state.customers)
            numbers = sorted(i.number for i in self.engine.invoices_of(request.customer_id))
        else:
            numbers = self._invoice_numbers.of(self.engine.state.invoices)  # every customer's: kept between pages
        start = convert.optional_filter_ms(request, "period_start_from")
        before = convert.optional_filter_ms(request, "period_start_before")
        invoices_by_number = self.engine.state.invoices

        def in_window(number: str) -> bool:
            period_start_ms = invoices_by_number[number].period_start_ms
            return (start is None or period_start_ms >= start) and (before is None or period_start_ms < before)

        keep = None if start is None and before is None else in_window
        page, token = _page(numbers, request.page_size, request.page_token, keep)
        invoices, token = _fitted([invoice_pb(self.engine.invoice(n)) for n in page], page, token, self.page_bytes_max)
        answer = invoices_pb2.ListInvoicesResponse(invoices=invoices, next_page_token=token)
        if answer.ByteSize() > send_limit.bytes_max:  # a page holds at least one: the first alone is too large
            size = answer.ByteSize()
            then = f"{larger_limit(size)}, or page on past it with page_token {page[0]!r}"
            raise too_large(f"{_described(self.engine.invoice(page[0]))}, alone on a page,", size, then)
        return answer

    @unary
    async def ExplainLineItem(
        self, request: invoices_pb2.ExplainLineItemRequest, context: Context
    ) -> invoices_pb2.ExplainLineItemResponse:
        index = self.sequencer.explain_index
        if index is None:
            raise Unavailable("this server runs without the explain index (--no-explain-index)")
        check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        period_start_ms = convert.optional_period_start_ms(request)
        explain.check_request(self.engine, request.customer_id, period_start_ms, request.line_id)
        assert period_start_ms is not None
        if request.page_size > PAGE_SIZE_MAX:
            raise InvalidArgument.field("page_size", f"at most {PAGE_SIZE_MAX}")
        page_size = request.page_size or EXPLAIN_PAGE_SIZE_DEFAULT
        seq = self.billing.last_seq  # the page reflects at least everything acknowledged before this call
        # Read with the line, before the index is awaited: the writer may re-rate the customer meanwhile (a pending
        # re-rating's slice, engine/pending.py), and the new adjustments beside the old line amount would not be
        # what the pages sum to. The index then covers at least the line's events.
        line, adjustments = self.billing.explain_line(request.customer_id, period_start_ms, request.line_id)
        try:
            covered = index.covered_seq() >= seq or await asyncio.to_thread(
                index.wait_covered, seq, EXPLAIN_INDEX_WAIT_S
            )
        except IndexStopped:
            # Its writer stopped (the log said why, once): a retry cannot help before a restart.
            raise Unavailable("the explain index stopped: the server's log says why") from None
        if not covered:
            raise Unavailable("the explain index is still catching up with the journal; retry shortly")
        try:
            page = index.page(
                request.customer_id, period_start_ms, line.line_id, page_size, request.page_token, len(adjustments)
            )
        except StaleToken as exc:
            raise InvalidArgument.field("page_token", str(exc)) from None
        return invoices_pb2.ExplainLineItemResponse(
            events=[_explained(e) for e in page.events]
            + [_explained_adjustment(adjustments[ordinal]) for ordinal in page.adjustments],
            next_page_token=page.next_token,
            line_amount=format_picos(line.amount_picos),
            line_quantity=quantity_text(line.quantity_e18),
        )

    @unary
    async def GetRevenueReport(
        self, request: invoices_pb2.GetRevenueReportRequest, context: Context
    ) -> invoices_pb2.RevenueReport:
        if request.customer_id:
            check_reference(request.customer_id, "customer_id", self.engine.state.customers)
        # The grants made and the breakage as at the report's time (Billing.revenue_report_steps).
        at_ms = self.read_ms()
        found = await paced(
            self.billing.revenue_report_steps(
                convert.optional_ms_up(request, "period_start"),
                convert.optional_end_ms_up(request, "period_end"),
                request.customer_id,
                at_ms,
            )
        )
        totals = found.totals
        return invoices_pb2.RevenueReport(
            currency=found.currency,
            lines=[_revenue_line(line) for line in found.by_product],
            customer_lines=[_revenue_line(line) for line in found.by_customer],
            reconciliation=invoices_pb2.RevenueReconciliation(
                deferred_start=format_picos(totals.deferred_start),
                prepaid_sold=format_picos(totals.prepaid_sold),
                recognized_credits=format_picos(totals.recognized_credits),
                breakage=format_picos(totals.breakage),
                deferred_end=format_picos(totals.deferred_end),
                reconciles=totals.reconciles,
                recognized_overage=format_picos(totals.recognized_overage),
                recognized=format_picos(totals.recognized_credits + totals.recognized_overage),
            ),
        )


def _revenue_line(line: revenue.Line) -> invoices_pb2.RevenueLine:
    return invoices_pb2.RevenueLine(
        product_id=line.product_id,
        customer_id=line.customer_id,
        period_start=convert.timestamp(line.period_start_ms),
        period_end=convert.timestamp(line.period_end_ms),
        recognized=format_picos(line.recognized),
        recognized_credits=format_picos(line.recognized_credits),
        recognized_overage=format_picos(line.recognized_overage),
        breakage=format_picos(line.breakage),
        deferred="" if line.deferred is None else format_picos(line.deferred),
    )


def _explained(event: IndexedEvent) -> invoices_pb2.ExplainedEvent:
    unit_price = explain.unit_price_picos(event.amount_picos, event.quantity_e18)
    return invoices_pb2.ExplainedEvent(
        transaction_id=event.transaction_id,
        timestamp_ms=event.timestamp_ms,
        quantity=quantity_text(event.quantity_e18),
        version=event.version,
        unit_price="" if unit_price is None else format_picos(unit_price),
        amount=format_picos(event.amount_picos),
        draws=[invoices_pb2.GrantDraw(grant_id=g, credits=format_picos(c)) for g, c in event.draws],
        overage=format_picos(event.overage_picos),
    )


def _explained_adjustment(adjustment: LineAdjustment) -> invoices_pb2.ExplainedEvent:
    """A re-rating adjustment as an explain entry: its delta is the amount; no per-adjustment draws exist (a
    re-rating settles the period's draws anew as a whole), so draws and overage stay empty."""
    return invoices_pb2.ExplainedEvent(
        timestamp_ms=adjustment.hour_start_ms,
        quantity="0",
        version=adjustment.new_version,
        amount=format_picos(adjustment.new_amount_picos - adjustment.old_amount_picos),
        adjustment=_adjustment_pb(adjustment),
    )
