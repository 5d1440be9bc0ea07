"""InvoiceService: invoices and revenue."""

from __future__ import annotations

from tariff.v1 import (
    invoices_pb2_grpc,
)

from server.services.common import (
    _not_built,
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
