"""An acceptance audit of a contract's lifecycle in combination with usage, invoices and re-rating, over the wire
against a real server (contracts.proto PriceOverride, pricing.proto PublishVersionRequest.effective_from,
invoices.proto ClosePeriod; README "Invoices and revenue"), what the single-feature audits
(tests/test_audit_contracts*_wire.py, test_audit_periods*_wire.py, test_audit_invoices*_wire.py,
test_audit_prices3_wire.py) leave out. Every amount asserted is computed by hand from the docs (the arithmetic is in
each docstring), none read back from the server.

Product `units` (event type `work`, SUM of `n`); rate card `card` (credits), version 1 in force from 2026-01-01 prices
a unit at 1. Everything happens in periods long over (2026-09 .. 2026-10), with `--close-grace off` so the server
closes nothing by itself while a test runs."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, preview, refusal, serving, unit
from tests.serverproc import ServerProcess


def at(text: str) -> int:
    """Unix ms of an ISO-8601 UTC instant ("2026-10-10T12:00:00")."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("units", "1")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id="card", version=1, effective_from=stamp(at("2026-01-01T00:00:00"))
        )
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-lifecycle")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def ingest(client: TariffClient, customer_id: str, *events: tuple[str, str, float]) -> None:
    """Events (transaction id, ISO instant, units), each accepted."""
    batch = usage_pb2.UsageBatch(
        events=[
            usage_pb2.UsageEvent(
                transaction_id=tx, customer_id=customer_id, event_type="work", timestamp_ms=at(when), values={"n": n}
            )
            for tx, when, n in events
        ]
    )
    ack = client.usage.IngestUsageBatch(batch)
    assert (ack.accepted, list(ack.rejected)) == (len(events), [])


def summary(invoice: invoices_pb2.Invoice) -> tuple[object, ...]:
    """(status, subtotal, overage_due, each line's (quantity, amount, its parts' (version, quantity, amount)))."""
    lines = [
        (line.line_id, line.quantity, line.amount, [(p.version, p.quantity, p.amount) for p in line.prices])
        for line in invoice.lines
    ]
    return (invoice.status, invoice.subtotal, invoice.overage_due, lines)


def test_an_override_starting_off_the_hour_in_a_closed_period_no_longer_refuses_a_publish_over_it(
    server: ServerProcess,
) -> None:
    """contracts.proto PriceOverride: a starting_at off the hour splits its hour's usage between two prices the hour's
    bucket cannot tell apart, "so a publish that would re-rate that hour's matching usage ... is refused
    (FAILED_PRECONDITION ...) until the period closes"; pricing.proto: "Usage in closed periods is left alone".

    Contract `life-a` from 2026-09-01 (overage at 1 USD), override `half` (price 0.5 a unit) from Sep 10 10:30 up to
    Oct 1. Sep 10 10:10, 4 units before `half`: 4. Sep 10 10:40, 4 units inside it: 0.5 x 8 - 0.5 x 4 = 2 (the
    override prices the period's cumulative quantity). September: 6. Oct 10, 4 units after `half` ended: 4.

    Version 2 prices a unit at 2. Published from Sep 5 while September is open it would re-rate the hour from Sep 10
    10:00: refused, naming that hour, nothing changed, and so is its simulation over Sep 5 .. Nov 1
    (SimulateVersion: "an override's start ... off the hour that a publish would refuse to re-rate"). Once September
    is closed (its invoice: 6, due 6.00) the simulation prices October only (4 -> 8) and the same publish re-rates
    October only, which holds no override boundary: accepted, one customer, one bucket and one event re-rated, the
    September hour's bucket (two events, 6 credits) counted as left alone, October 4 units at 2 = 8 (one part,
    version 2), its bucket adjusted 4 -> 8; September's final invoice unchanged. The server refused both still,
    naming the closed hour. The same after kill -9."""
    with server.client() as client:
        open_contract(client, "life-a", "life-a", at("2026-09-01T00:00:00"), rate_card_id="card")
        override = contracts_pb2.PriceOverride(
            id="half",
            product_id="units",
            price="0.5",
            starting_at=stamp(at("2026-09-10T10:30:00")),
            ending_before=stamp(at("2026-10-01T00:00:00")),
        )
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="life-a", override=override))
        ingest(
            client,
            "life-a",
            ("a1", "2026-09-10T10:10:00", 4),
            ("a2", "2026-09-10T10:40:00", 4),
            ("a3", "2026-10-10T10:40:00", 4),
        )
        september, october = at("2026-09-01T00:00:00"), at("2026-10-01T00:00:00")
        assert summary(preview(client, "life-a", september))[1:] == (
            "6",
            "6.00",
            [("units", "8", "6", [(1, "8", "6")])],
        )
        assert summary(preview(client, "life-a", october))[1:] == ("4", "4.00", [("units", "4", "4", [(1, "4", "4")])])

        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="card", based_on_version=1, upsert_rates=[unit("units", "2")]
            )
        )
        publish = pricing_pb2.PublishVersionRequest(
            rate_card_id="card", version=2, effective_from=stamp(at("2026-09-05T00:00:00"))
        )
        simulate = pricing_pb2.SimulateVersionRequest(
            rate_card_id="card",
            version=2,
            period_start=publish.effective_from,
            period_end=stamp(at("2026-11-01T00:00:00")),
        )
        for refused in (
            lambda: client.pricing.PublishVersion(publish),
            lambda: client.pricing.SimulateVersion(simulate),
        ):
            code, details = refusal(refused)
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert "life-a" in details and "2026-09-10T10:00:00Z" in details and "2026-09-10T10:30:00Z" in details
        assert summary(preview(client, "life-a", october))[1] == "4"

        closed = client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="life-a", period_start=stamp(september))
        )
        expected_september = (invoices_pb2.INVOICE_FINAL, "6", "6.00", [("units", "8", "6", [(1, "8", "6")])])
        assert summary(closed) == expected_september

        simulated = client.pricing.SimulateVersion(simulate)
        assert [(a.customer_id, a.current_amount, a.simulated_amount) for a in simulated.amounts] == [
            ("life-a", "4", "8")
        ]
        published = client.pricing.PublishVersion(publish)
        rerated = (published.customers_rerated, published.buckets_rerated, published.events_rerated)
        left_alone = (
            published.closed_buckets_left_alone,
            published.closed_events_left_alone,
            published.closed_amount_left_alone,
        )
        assert (rerated, published.rerated_amount_delta, left_alone) == ((1, 1, 1), "4", (1, 2, "6"))
        expected_october = (invoices_pb2.INVOICE_DRAFT, "8", "8.00", [("units", "4", "8", [(2, "4", "8")])])
        draft = preview(client, "life-a", october)
        assert summary(draft) == expected_october
        assert [(a.new_version, a.old_amount, a.new_amount, a.delta) for a in draft.lines[0].adjustments] == [
            (2, "4", "8", "4")
        ]
        assert summary(
            client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=closed.invoice_number))
        ) == (expected_september)

    server.kill9()
    server.start()
    with server.client() as client:
        assert summary(preview(client, "life-a", october)) == expected_october
        assert summary(preview(client, "life-a", september)) == expected_september
