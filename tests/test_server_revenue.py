"""GetRevenueReport and the `tariff revenue` / `tariff invoices explain` commands against a real server: credits
recognised at each grant's cost basis, overage at the contract's price, deferred at period end, the
reconciliation, and the same report after kill -9.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from tariff.v1 import invoices_pb2

from engine.lines import line_id
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_cli import tariff
from tests.test_server_explain import KINDS, ingest, month_start_ms, seed_customers, stamp


def next_month_start_ms() -> int:
    start = datetime.fromtimestamp(month_start_ms() / 1000, UTC)
    return int(start.replace(year=start.year + start.month // 12, month=start.month % 12 + 1).timestamp() * 1000)


def revenue_report(server: ServerProcess, customer_id: str = "") -> invoices_pb2.RevenueReport:
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=stamp(month_start_ms()), period_end=stamp(next_month_start_ms()), customer_id=customer_id
    )
    with server.client() as client:
        report: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(request)
    return report


@pytest.mark.slow
def test_revenue_report_and_commands(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    seed_customers(server)
    expected = ingest(server)
    credits = {
        c: sum((v for (cust, _), (_, v) in expected.items() if cust == c), Decimal(0))
        for c in ("acme", "beta", "gamma")
    }
    report = revenue_report(server)
    assert report.currency == "USD"
    by_customer = {line.customer_id: line for line in report.customer_lines}
    # acme: 50,000 credits bought for 45,000: 0.9 per credit; beta: 10 for 9, then overage at 1; gamma: all overage.
    assert Decimal(by_customer["acme"].recognized_credits) == credits["acme"] * Decimal("0.9")
    assert Decimal(by_customer["acme"].deferred) == (50_000 - credits["acme"]) * Decimal("0.9")
    assert (Decimal(by_customer["beta"].recognized_credits), Decimal(by_customer["beta"].deferred)) == (
        Decimal(9),
        Decimal(0),
    )
    assert Decimal(by_customer["beta"].recognized_overage) == credits["beta"] - 10
    assert Decimal(by_customer["gamma"].recognized) == credits["gamma"]
    r = report.reconciliation
    assert r.reconciles
    assert (Decimal(r.deferred_start), Decimal(r.prepaid_sold)) == (Decimal(0), Decimal(45_009))
    assert Decimal(r.prepaid_sold) - Decimal(r.recognized_credits) - Decimal(r.breakage) == Decimal(r.deferred_end)
    assert sum(Decimal(x.recognized) for x in report.lines) == sum(Decimal(x.recognized) for x in by_customer.values())

    month = datetime.fromtimestamp(month_start_ms() / 1000, UTC).strftime("%Y-%m")
    shown = json.loads(tariff(server, "revenue", "--from", month, "--json").stdout)
    assert shown["reconciliation"]["reconciles"] is True
    assert "reconciles" in tariff(server, "revenue", "--from", month, "--customer", "beta").stdout
    line = line_id("ai_action", KINDS[0][0])
    explained = json.loads(tariff(server, "invoices", "explain", "beta", line, "--period", month, "--json").stdout)
    assert {e["transaction_id"] for e in explained["events"]} == expected[("beta", line)][0]
    assert sum(Decimal(e["amount"]) for e in explained["events"]) == Decimal(explained["line_amount"])
    refused = tariff(server, "invoices", "explain", "beta", "ai_action;nothing=1", check=False)
    assert "NOT_FOUND" in refused.stderr + refused.stdout

    server.kill9()
    server.start()
    assert revenue_report(server) == report
