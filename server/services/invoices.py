"""InvoiceService: invoices and revenue."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from tariff.v1 import (
    invoices_pb2,
    invoices_pb2_grpc,
)

from engine import explain, revenue
from engine.errors import InvalidArgument, NotFound
from engine.money import format_decimal, format_picos
from server import convert
from server.errors import Unavailable, unary
from server.explain_index import IndexedEvent, StaleToken
from server.services.common import (
    PAGE_SIZE_MAX,
    Context,
    _Base,
    _not_built,
)

EXPLAIN_PAGE_SIZE_DEFAULT = 100
# How long ExplainLineItem waits for the index to reach what the state reflects (it trails the ack by milliseconds).
EXPLAIN_INDEX_WAIT_S = 10.0


class InvoiceService(_Base, invoices_pb2_grpc.InvoiceServiceServicer):
    """Invoices and revenue reports; the RPCs not built yet say so."""

    PreviewInvoice = _not_built(
        "invoices are not available yet: PreviewInvoice; for what a customer has used and owes, use "
        "BalanceService.GetBalance"
    )
    ClosePeriod = _not_built("closing a billing period (it makes the invoice) is not available yet: ClosePeriod")
    GetInvoice = _not_built("invoices are not available yet: GetInvoice")
    ListInvoices = _not_built("invoices are not available yet: ListInvoices")

    @unary
    async def ExplainLineItem(
        self, request: invoices_pb2.ExplainLineItemRequest, context: Context
    ) -> invoices_pb2.ExplainLineItemResponse:
        index = self.sequencer.explain_index
        if index is None:
            raise Unavailable("this server runs without the explain index (--no-explain-index)")
        period_start_ms = convert.optional_ms(request, "period_start")
        explain.check_request(self.engine, request.customer_id, period_start_ms, request.line_id)
        assert period_start_ms is not None
        if request.page_size > PAGE_SIZE_MAX:
            raise InvalidArgument.field("page_size", f"at most {PAGE_SIZE_MAX}")
        page_size = request.page_size or EXPLAIN_PAGE_SIZE_DEFAULT
        seq = self.billing.last_seq  # the page reflects at least everything acknowledged before this call
        lines = explain.period_lines(self.engine, self.billing.kernel.usage(request.customer_id), period_start_ms)
        line = lines.get(request.line_id)
        if line is None:
            raise NotFound(
                f"line {request.line_id!r} has no usage in the period of customer {request.customer_id!r} starting "
                f"{explain.iso(period_start_ms)}"
            )
        if index.covered_seq() < seq and not await asyncio.to_thread(index.wait_covered, seq, EXPLAIN_INDEX_WAIT_S):
            raise Unavailable("the explain index is still catching up with the journal; retry shortly")
        try:
            page = index.page(request.customer_id, period_start_ms, line.line_id, page_size, request.page_token)
        except StaleToken as exc:
            raise InvalidArgument.field("page_token", str(exc)) from None
        return invoices_pb2.ExplainLineItemResponse(
            events=[_explained(e) for e in page.events],
            next_page_token=page.next_token,
            line_amount=format_picos(line.amount_picos),
            line_quantity=_quantity(line.quantity_e18),
        )

    @unary
    async def GetRevenueReport(
        self, request: invoices_pb2.GetRevenueReportRequest, context: Context
    ) -> invoices_pb2.RevenueReport:
        kernel = self.billing.kernel

        def usage_of(customer_id: str) -> list[revenue.Aggregate]:
            usage = kernel.usage(customer_id)
            return usage[0] if usage is not None else []

        found = revenue.report(
            self.engine,
            usage_of,
            convert.optional_ms(request, "period_start"),
            convert.optional_ms(request, "period_end"),
            request.customer_id,
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


def _quantity(quantity_e18: int) -> str:
    return format_decimal(Decimal(quantity_e18).scaleb(-18))


def _explained(event: IndexedEvent) -> invoices_pb2.ExplainedEvent:
    unit_price = explain.unit_price_picos(event.amount_picos, event.quantity_e18)
    return invoices_pb2.ExplainedEvent(
        transaction_id=event.transaction_id,
        timestamp_ms=event.timestamp_ms,
        quantity=_quantity(event.quantity_e18),
        version=event.version,
        unit_price="" if unit_price is None else format_picos(unit_price),
        amount=format_picos(event.amount_picos),
        draws=[invoices_pb2.GrantDraw(grant_id=g, credits=format_picos(c)) for g, c in event.draws],
        overage=format_picos(event.overage_picos),
    )
