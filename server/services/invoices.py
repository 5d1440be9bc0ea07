"""InvoiceService: live drafts, closing periods, final invoices (ExplainLineItem and revenue reports come apart)."""

from __future__ import annotations

import bisect
from decimal import Decimal

from tariff.v1 import (
    invoices_pb2,
    invoices_pb2_grpc,
)

from engine import commands as cmd
from engine.errors import InvalidArgument
from engine.invoices import QUANTITY_SCALE, Invoice, VersionPart
from engine.money import format_decimal, format_picos
from server import convert
from server.errors import (
    unary,
)
from server.services.common import (
    PAGE_SIZE_MAX,
    Context,
    _Base,
    _not_built,
    _required,
    actor_of,
)


def quantity_text(quantity_e18: int) -> str:
    return format_decimal(Decimal(quantity_e18).scaleb(-18))


def minor_text(amount_minor: int, places: int) -> str:
    """An amount due in minor units as a decimal with exactly the currency's places ("12.30", "1500")."""
    return f"{Decimal(amount_minor).scaleb(-places):.{places}f}"


def _price_pb(part: VersionPart) -> invoices_pb2.AppliedPrice:
    return invoices_pb2.AppliedPrice(
        version=part.version,
        unit_price=format_picos(part.unit_price_picos),
        quantity=quantity_text(part.quantity_e18),
        amount=format_picos(part.amount_picos),
        events=part.events,
        rate_card_id=part.rate_card_id,
    )


def invoice_pb(invoice: Invoice) -> invoices_pb2.Invoice:
    places = invoice.minor_unit
    lines = [
        invoices_pb2.InvoiceLine(
            line_id=line.line_id,
            product_id=line.product_id,
            dimensions=line.dimensions,
            quantity=quantity_text(line.quantity_e18),
            prices=[_price_pb(part) for part in line.parts],
            amount=format_picos(line.amount_picos),
            events=line.events,
            overage=format_picos(line.overage_picos),
            credits_applied=[
                invoices_pb2.CreditApplication(grant_id=g, credits=format_picos(c)) for g, c in line.credits
            ],
            amount_due=minor_text(line.amount_due_minor, places),
        )
        for line in invoice.lines
    ]
    message = invoices_pb2.Invoice(
        customer_id=invoice.customer_id,
        invoice_number=invoice.number,
        status=invoices_pb2.INVOICE_FINAL if invoice.final else invoices_pb2.INVOICE_DRAFT,
        period_start=convert.timestamp(invoice.period_start_ms),
        period_end=convert.timestamp(invoice.period_end_ms),
        pricing_unit=invoice.pricing_unit,
        currency=invoice.currency,
        lines=lines,
        credits_applied=[
            invoices_pb2.CreditApplication(grant_id=g, credits=format_picos(c)) for g, c in invoice.credits_applied
        ],
        overage_amount=format_picos(invoice.overage_picos),
        overage_due=minor_text(invoice.overage_due_minor, places),
        top_up_purchases=minor_text(invoice.top_up_purchases_minor, places),
        total_due=minor_text(invoice.total_due_minor, places),
        subtotal=format_picos(invoice.subtotal_picos),
        minor_unit=places,
        rounding_adjustment=minor_text(invoice.rounding_adjustment_minor, places),
        overage_price=invoice.overage_price,
        contract_id=invoice.contract_id,
        grant_balances=[
            invoices_pb2.InvoiceGrantBalance(
                grant_id=g.grant_id,
                granted=format_picos(g.granted_picos),
                drawn=format_picos(g.drawn_picos),
                remaining=format_picos(g.remaining_picos),
                expired=format_picos(g.expired_picos),
            )
            for g in invoice.grant_balances
        ],
    )
    if invoice.final:
        message.closed_at.CopyFrom(convert.timestamp(invoice.closed_at_ms))
    return message


assert QUANTITY_SCALE == 10**18  # quantity_text's scale


class InvoiceService(_Base, invoices_pb2_grpc.InvoiceServiceServicer):
    @unary
    async def PreviewInvoice(
        self, request: invoices_pb2.PreviewInvoiceRequest, context: Context
    ) -> invoices_pb2.Invoice:
        _required(customer_id=request.customer_id)
        at_ms = convert.optional_ms(request, "period_start")
        return invoice_pb(self.engine.preview(request.customer_id, self.clock_ms() if at_ms is None else at_ms))

    @unary
    async def ClosePeriod(self, request: invoices_pb2.ClosePeriodRequest, context: Context) -> invoices_pb2.Invoice:
        _required(customer_id=request.customer_id)
        period_start_ms = convert.optional_ms(request, "period_start")
        if period_start_ms is None:
            raise InvalidArgument.field("period_start", "is required: the start of the period to close")
        command = cmd.ClosePeriod(self.clock_ms(), actor_of(context), request.customer_id, period_start_ms)
        return invoice_pb(await self._apply(command, Invoice))

    @unary
    async def CloseDuePeriods(
        self, request: invoices_pb2.CloseDuePeriodsRequest, context: Context
    ) -> invoices_pb2.CloseDuePeriodsResponse:
        closed = await self._apply(cmd.CloseDuePeriods(self.clock_ms(), actor_of(context), 0), list)
        return invoices_pb2.CloseDuePeriodsResponse(invoices=[invoice_pb(i) for i in closed])

    @unary
    async def GetInvoice(self, request: invoices_pb2.GetInvoiceRequest, context: Context) -> invoices_pb2.Invoice:
        _required(invoice_number=request.invoice_number)
        return invoice_pb(self.engine.invoice(request.invoice_number))

    @unary
    async def ListInvoices(
        self, request: invoices_pb2.ListInvoicesRequest, context: Context
    ) -> invoices_pb2.ListInvoicesResponse:
        if request.status == invoices_pb2.INVOICE_DRAFT:
            return invoices_pb2.ListInvoicesResponse()  # drafts are not stored: PreviewInvoice shows one
        if request.customer_id:
            found = self.engine.invoices_of(request.customer_id)
        else:
            found = list(self.engine.state.invoices.values())
        start = convert.optional_ms(request, "period_start_from")
        before = convert.optional_ms(request, "period_start_before")
        numbers = sorted(
            i.number
            for i in found
            if (start is None or i.period_start_ms >= start) and (before is None or i.period_start_ms < before)
        )
        size = min(request.page_size or 100, PAGE_SIZE_MAX)
        first = bisect.bisect_right(numbers, request.page_token) if request.page_token else 0
        page = numbers[first : first + size]
        token = page[-1] if page and first + size < len(numbers) else ""
        invoices = [invoice_pb(self.engine.invoice(n)) for n in page]
        return invoices_pb2.ListInvoicesResponse(invoices=invoices, next_page_token=token)

    ExplainLineItem = _not_built("invoices are not available yet: ExplainLineItem has no invoice line to explain")
    GetRevenueReport = _not_built("revenue reports are not available yet: GetRevenueReport")
