"""A contract's periods close in order, over the wire (invoices.proto ClosePeriodRequest).

A final invoice's grant balances count the draws of its period and of every period before it. While an earlier
period is still open it takes late events, whose draws then change what a later, already final invoice says the
grant held at its end: that invoice would stay wrong for good (and be numbered before the earlier one). So
ClosePeriod refuses a period while one of the customer's periods starting before it is open, naming that period,
as CloseDuePeriods (which closes the earliest period end first) never does.

Periods long over (2026-01 .. 2026-03), with `--close-grace off` so the server closes nothing by itself."""

from __future__ import annotations

import pytest
from tariff import FailedPrecondition
from tariff.v1 import contracts_pb2, invoices_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_invoices_wire import (
    FEB,
    JAN,
    MAR,
    catalogue,
    close,
    customer,
    ingest,
    ms,
    start_server,
)

APR = ms("2026-04-01T00:00:00")


def grant_drawn(invoice: invoices_pb2.Invoice) -> str:
    (balance,) = invoice.grant_balances
    drawn: str = balance.drawn
    return drawn


def test_a_later_period_is_not_closed_while_an_earlier_one_is_open(server_factory: ServerFactory) -> None:
    with start_server(server_factory, "close-order") as client:
        catalogue(client)
        customer(client, "o", "USD", "1")
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(id="prepaid", contract_id="o-c", kind=contracts_pb2.PREPAID, amount="100")
            )
        )
        ingest(client, "o", [("unit", "a", 10_000, FEB + 3_600_000), ("unit", "a", 20_000, MAR + 3_600_000)])
        for later in (MAR, FEB):
            with pytest.raises(FailedPrecondition) as refused:
                close(client, "o", later)
            assert "2026-01-01T00:00:00Z" in refused.value.details, refused.value.details
            assert "o-c" in refused.value.details, refused.value.details
        listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="o"))
        assert list(listed.invoices) == [], "nothing was closed"
        # A late February event is still February's: no closed invoice after it can miss its draw.
        ingest(client, "o", [("unit", "a", 5_000, FEB + 7_200_000)])
        finals = [close(client, "o", start) for start in (JAN, FEB, MAR)]
        assert [f.invoice_number for f in finals] == ["INV-00000001", "INV-00000002", "INV-00000003"]
        assert [grant_drawn(f) for f in finals] == ["0", "15", "35"], "each counts the draws before its end"
        late = usage_pb2.UsageEvent(
            transaction_id="late",
            customer_id="o",
            event_type="unit",
            timestamp_ms=FEB + 9_000_000,
            dimensions={"k": "a"},
            values={"n": 1000},
        )
        ack = client.ingest_batch([late], "late")
        assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"]
        assert close(client, "o", MAR) == finals[2], "closing again answers its invoice"
