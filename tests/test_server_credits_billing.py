"""Top-ups on the invoice and breakage in revenue against a real server process: a top-up bought and a grant
expired by the server's own clock show on PreviewInvoice (the purchase, rounded once to cents) and in
GetRevenueReport (the top-up sold, the expired credit as breakage at its cost basis, reconciled), the same after
kill -9 and a restart."""

from __future__ import annotations

import time
from decimal import Decimal

from tariff.v1 import contracts_pb2, invoices_pb2

from tests.serverproc import ServerProcess, wait_for
from tests.test_server_credits import GPT4_COMPLEX, usage
from tests.test_server_explain import month_start_ms, stamp
from tests.test_server_revenue import next_month_start_ms


def set_up(server: ServerProcess, expires_in_s: float) -> None:
    """Customer "tu" on the demo card (5 credits a use): "keep" (100 credits for 100) burns first, "exp" (10
    credits for 4, priority 5) is never drawn and expires soon; below 20 available, a top-up back to 100 at
    0.3701 a credit."""
    with server.client() as client:
        contracts = client.contracts
        contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="tu", name="tu"))
        contract = contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="c-tu", customer_id="tu", rate_card_id="ai-credits", starting_at=stamp(month_start_ms())
            )
        )
        for grant_id, amount, paid, priority in (("keep", "100", "100", 0), ("exp", "10", "4", 5)):
            grant = contracts_pb2.Grant(id=grant_id, contract_id=contract.id, kind=contracts_pb2.PREPAID)
            grant.amount, grant.paid_amount, grant.priority = amount, paid, priority
            if grant_id == "exp":
                grant.expires_at.FromMilliseconds(int((time.time() + expires_in_s) * 1000))
            contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        policy = contracts_pb2.TopUpPolicy(
            threshold="20", recharge_to="100", price_per_credit="0.3701", max_per_period=2
        )
        contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract.id, top_up=policy))


def invoice_and_report(server: ServerProcess) -> tuple[invoices_pb2.Invoice, invoices_pb2.RevenueReport]:
    with server.client() as client:
        invoice = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="tu"))
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(month_start_ms()), period_end=stamp(next_month_start_ms()), customer_id="tu"
            )
        )
    return invoice, report


def test_a_top_up_is_on_the_invoice_and_an_expired_grant_is_breakage_in_revenue(demo_server: ServerProcess) -> None:
    set_up(demo_server, expires_in_s=3)
    with demo_server.client() as client:
        # 19 uses draw 95 from "keep": 5 + 10 = 15 available, below 20: one top-up of 85 credits.
        for i in range(19):
            assert client.ingest_batch([usage(f"u{i}", "tu", "")]).accepted == 1
        assert client.authorize("tu", "ai_action", GPT4_COMPLEX).allowed
        top_ups = [g for g in client.get_balance("tu").grants if g.kind == contracts_pb2.TOP_UP]
        assert [(g.amount, g.drawn) for g in top_ups] == [("85", "0")]

    # The balance shows "exp" expired as soon as its time has passed; the breakage is recorded when the server's
    # clock driver journals the AdvanceClock that reaches it.
    assert wait_for(lambda: Decimal(invoice_and_report(demo_server)[1].reconciliation.breakage) != 0, 15)
    invoice, report = invoice_and_report(demo_server)
    # 85 x 0.3701 = 31.4585, rounded half-even once to cents.
    assert (invoice.top_up_purchases, invoice.overage_due, invoice.total_due) == ("31.46", "0.00", "31.46")
    r = report.reconciliation
    assert Decimal(r.prepaid_sold) == Decimal("100") + Decimal("4") + Decimal("31.4585")
    assert (Decimal(r.recognized_credits), Decimal(r.breakage)) == (Decimal(95), Decimal(4))  # 10 x 0.4
    assert Decimal(r.deferred_end) == Decimal(5) + Decimal("31.4585")  # "keep"'s 5 left, the top-up's 85
    assert Decimal(r.deferred_start) == 0 and r.reconciles
    (line,) = report.customer_lines
    assert (Decimal(line.breakage), Decimal(line.deferred)) == (Decimal(4), Decimal(r.deferred_end))

    demo_server.kill9()
    demo_server.restart()
    assert invoice_and_report(demo_server) == (invoice, report)
