"""Helpers the wire audit tests (tests/test_audit_*_wire.py) share: calls through a TariffClient to a real server,
and what their answers are read as."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, invoices_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerProcess

HOUR_MS = 3_600_000


def serving(process: ServerProcess, catalogue: Callable[[TariffClient], None]) -> Iterator[ServerProcess]:
    """A module fixture's server: `process` started, with the module's `catalogue` made through it, until the
    module's tests are done (``yield from serving(...)``)."""
    process.start()
    try:
        with process.client() as client:
            catalogue(client)
        yield process
    finally:
        process.stop()


def this_hour_ms() -> int:
    return now_ms() // HOUR_MS * HOUR_MS


def unit(product_id: str, price: str, **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, match=match, unit=pricing_pb2.UnitPrice(price=price))


def charges(client: TariffClient, customer_id: str) -> str:
    return str(client.get_balance(customer_id).period_charges)


def release(client: TariffClient, customer_id: str, reservation_id: str) -> str:
    request = balance_pb2.ReleaseReservationRequest(customer_id=customer_id, reservation_id=reservation_id)
    return str(client.balance.ReleaseReservation(request).released_amount)


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(TariffError) as failed:
        call()
    return failed.value.code, failed.value.details


def preview(client: TariffClient, customer_id: str, at_ms: int) -> invoices_pb2.Invoice:
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=stamp(at_ms))
    invoice: invoices_pb2.Invoice = client.invoices.PreviewInvoice(request)
    return invoice


def audit_count(client: TariffClient) -> int:
    return len(client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries)
