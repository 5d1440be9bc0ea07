"""Helpers the wire audit tests (tests/test_audit_*_wire.py) share: calls through a TariffClient to a real server,
and what their answers are read as."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

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


def open_contract(
    client: TariffClient,
    customer_id: str,
    contract_id: str,
    start_ms: int,
    end_ms: int | None = None,
    *,
    rate_card_id: str,
    **fields: Any,
) -> contracts_pb2.Contract:
    """A contract on `rate_card_id` (ALLOW, overage at 1 USD unless given), creating the customer on its first one."""
    try:
        client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=customer_id))
    except TariffError:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    request = contracts_pb2.CreateContractRequest(
        id=contract_id,
        customer_id=customer_id,
        rate_card_id=rate_card_id,
        starting_at=stamp(start_ms),
        overage_policy=contracts_pb2.ALLOW,
        overage_price=fields.pop("overage_price", "1"),
        currency=fields.pop("currency", "USD"),
        **fields,
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(stamp(end_ms))
    made: contracts_pb2.Contract = client.contracts.CreateContract(request)
    return made


def usage(transaction_id: str, customer_id: str, n: float, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id, customer_id=customer_id, event_type="work", timestamp_ms=at_ms, values={"n": n}
    )


def rejected(client: TariffClient, *events: usage_pb2.UsageEvent) -> list[tuple[str, int]]:
    ack = client.ingest_batch(list(events))
    return [(r.transaction_id, r.reason) for r in ack.rejected]


def rejected_in(client: TariffClient, *events: usage_pb2.UsageEvent) -> list[tuple[str, str]]:
    """Sends `events` as one batch: (transaction id, reason) of each rejected event, in order; accepted ones answer
    nothing."""
    ack = client.ingest_batch(list(events))
    return [(events[r.index].transaction_id, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected]


def varint(value: int) -> bytes:
    """A protobuf base-128 varint, for messages written by hand."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def month_start(ms: int, months: int = 0) -> int:
    """Unix ms of the first instant of the UTC month holding `ms`, moved by `months`."""
    day = datetime.fromtimestamp(ms / 1000, UTC)
    index = day.year * 12 + day.month - 1 + months
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp() * 1000)


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def catalogue(client: TariffClient) -> None:
    """One product, `units` (SUM of `n`), on `card` (credits) at a UNIT price of 1, in force from 2025-01-01."""
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate]))
    start = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(start))
    )
