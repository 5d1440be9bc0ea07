"""Which came first when the server's wall clock was set back, over the wire: a closed period's revenue is final
(README "Revenue recognition"), and "made after the close" is in the order the server recorded the two, whatever
its clock read (tests/test_engine_timeorder.py holds the in-process cases, breakage included).

The server's clock is moved in its own process only, as tests/test_audit_longrun_wire.py moves it (`clock_env`).
"""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path

from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory
from tests.test_audit_longrun_wire import clock_env

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
NOW_MS = time.time_ns() // 1_000_000
START_MS = (NOW_MS // DAY_MS - 120) * DAY_MS  # the contract's start: its first period ended long before NOW_MS


def catalogue(client: TariffClient) -> None:
    """Customer `t` on card `card` (1 credit a unit of `units`) from START_MS, in USD, no grant."""
    pricing = client.pricing
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1"))
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate]))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(START_MS))
    )
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="t", name="t"))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id="k-t",
            customer_id="t",
            rate_card_id="card",
            starting_at=stamp(START_MS),
            overage_price="1",
            currency="USD",
        )
    )


def deferred_by_period(client: TariffClient) -> list[Decimal]:
    """The customer lines' deferred of t's first two periods."""
    first = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id="t", period_start=stamp(START_MS))
    )
    second_end = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id="t", period_start=first.period_end)
    ).period_end
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(customer_id="t", period_start=stamp(START_MS), period_end=second_end)
    )
    assert report.reconciliation.reconciles, report
    return [Decimal(line.deferred) for line in report.customer_lines]


def test_a_grant_made_after_the_close_at_a_clock_set_back_is_sold_in_the_first_open_period(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The first period closed at NOW; the server restarts with its clock an hour behind, and a grant of 100
    credits paid 40 starting at the contract's start (in the closed period) is made. It was made after the close,
    so it is sold in the second period: deferred 0 on the first line, 40 on the second. Before, the close's
    closed_at (NOW) was compared with the grant's created_at (NOW - 1 h): it was sold in the closed period, whose
    line then showed 40 deferred, changed after it was final."""
    server = server_factory(env=clock_env(tmp_path, frozen_ms=NOW_MS), extra_args=["--close-grace", "off"])
    with server.client() as client:
        catalogue(client)
        client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="t", period_start=stamp(START_MS)))
        assert deferred_by_period(client) == [0, 0]
    assert server.terminate() == 0
    server.env = clock_env(tmp_path, frozen_ms=NOW_MS - HOUR_MS)
    server.restart()
    with server.client() as client:
        grant = contracts_pb2.Grant(id="g", customer_id="t", kind=contracts_pb2.PREPAID, amount="100", paid_amount="40")
        grant.starts_at.CopyFrom(stamp(START_MS))
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        assert deferred_by_period(client) == [0, 40]
