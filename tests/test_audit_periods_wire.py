"""An acceptance audit of contract switches, billing periods and their invoices and revenue at the edges, over the
wire against a real server (contracts.proto, invoices.proto, README "Contract switches" and "Invoices and revenue"),
every amount computed by hand from the docs, none read back from the server. tests/test_audit_invoices_wire.py
covers one contract per customer; this file covers what a switch between two contracts adds.

Everything happens in periods long over (2026-01 .. 2026-03), with `--close-grace off` so the server closes
nothing by itself while a test runs."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from tariff import FailedPrecondition, TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_invoices_wire import (
    CARD,
    DAY_MS,
    FEB,
    MAR,
    catalogue,
    close,
    month_ends_before,
    ms,
    preview,
    start_server,
    ts,
)

JAN15 = ms("2026-01-15T00:00:00")
FEB15 = ms("2026-02-15T00:00:00")


def switched_customer(client: TariffClient, customer_id: str) -> None:
    """Contract `<customer>-old` from Jan 15, ended (planned) at Feb 1: its one period keeps its monthly end, Jan 15
    - Feb 15. Contract `<customer>-new` from Feb 1: periods Feb 1 - Mar 1, Mar 1 - Apr 1, ... Overage at 1 USD."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    for suffix, start, end in (("old", JAN15, FEB), ("new", FEB, None)):
        request = contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-{suffix}",
            customer_id=customer_id,
            rate_card_id=CARD,
            starting_at=ts(start),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="1",
            currency="USD",
        )
        if end is not None:
            request.ending_before.CopyFrom(ts(end))
        client.contracts.CreateContract(request)


def graduated(customer_id: str, transaction_id: str, units: int, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="grad",
        timestamp_ms=at_ms,
        dimensions={"k": "a"},
        values={"n": units},
    )


def ingest_checked(client: TariffClient, events: list[usage_pb2.UsageEvent], key: str) -> list[str]:
    """The reasons of the rejected events (accepted ones answer nothing)."""
    ack = client.ingest_batch(events, key)
    return [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected]


def test_a_switch_bills_each_event_once_and_its_revenue_rolls_forward(server_factory: ServerFactory) -> None:
    """50,000 credits bought for 45,000 USD under the old contract (0.9 USD a credit). Graduated tiers (1 a unit up
    to 100 plus a flat 10, then 0.5 plus 5): 50 + 60 units dated in the old contract's time, 50 + 60 dated in the
    new one's, sent interleaved. Each period prices its own cumulative 110 units: 10 + 100 + 5 + 10 x 0.5 = 120
    credits, 108 USD recognised. The old contract's period (Jan 15 - Feb 15) overlaps the new one's first (Feb 1 -
    Mar 1): each invoice counts only its contract's events, the grant's balance on each counts this period's and
    the earlier ones' draws, and revenue rolls forward line by line: deferred 45,000 - 108 = 44,892 after the old
    period (49,880 credits x 0.9, the old invoice's balance), 44,892 - 108 = 44,784 after the new one."""
    with start_server(server_factory, "switch") as client:
        catalogue(client)
        switched_customer(client, "sw")
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(
                    id="prepaid-50k",
                    contract_id="sw-old",
                    kind=contracts_pb2.PREPAID,
                    amount="50000",
                    paid_amount="45000",
                )
            )
        )
        jan20, jan25, feb5, feb6 = JAN15 + 5 * DAY_MS, JAN15 + 10 * DAY_MS, FEB + 4 * DAY_MS, FEB + 5 * DAY_MS
        assert ingest_checked(client, [graduated("sw", "e1", 50, jan20), graduated("sw", "e2", 50, feb5)], "b1") == []
        assert ingest_checked(client, [graduated("sw", "e3", 60, feb6), graduated("sw", "e4", 60, jan25)], "b2") == []

        old, new = preview(client, "sw", JAN15), preview(client, "sw", FEB)
        # An instant inside both periods reads the period of the contract in force then.
        assert preview(client, "sw", FEB + 9 * DAY_MS) == new
        shown = [
            (
                i.contract_id,
                i.period_start.ToMilliseconds(),
                i.period_end.ToMilliseconds(),
                [(line.quantity, line.amount, line.events) for line in i.lines],
                [(c.grant_id, c.credits) for c in i.credits_applied],
                [(g.grant_id, g.drawn, g.remaining) for g in i.grant_balances],
                i.total_due,
            )
            for i in (old, new)
        ]
        assert shown == [
            (
                "sw-old",
                JAN15,
                FEB15,
                [("110", "120", 2)],
                [("prepaid-50k", "120")],
                [("prepaid-50k", "120", "49880")],
                "0.00",
            ),
            (
                "sw-new",
                FEB,
                MAR,
                [("110", "120", 2)],
                [("prepaid-50k", "120")],
                [("prepaid-50k", "240", "49760")],
                "0.00",
            ),
        ]

        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN15), period_end=ts(MAR), customer_id="sw")
        )
        lines = [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.deferred)
            for line in report.customer_lines
        ]
        assert lines == [(JAN15, "108", "44892"), (FEB, "108", "44784")]
        r = report.reconciliation
        assert [Decimal(x) for x in (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.deferred_end)] == [
            0,
            45000,
            216,
            44784,
        ]
        # A span holding only the old contract's period ends where its line does.
        january = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN15), period_end=ts(FEB), customer_id="sw")
        )
        assert [line.deferred for line in january.customer_lines] == ["44892"]
        assert (january.reconciliation.deferred_end, january.reconciliation.reconciles) == ("44892", True)

        # Closing: each period once, by its own start; a retry answers the same invoice.
        closed_old, closed_new = close(client, "sw", JAN15), close(client, "sw", FEB)
        assert (closed_old.invoice_number, closed_new.invoice_number) == ("INV-00000001", "INV-00000002")
        assert close(client, "sw", JAN15) == closed_old and close(client, "sw", FEB) == closed_new
        assert (closed_old.subtotal, closed_new.subtotal) == ("120", "120")
        # Late events: the old contract's closed period refuses its own; the new contract's still open March takes its.
        late = [graduated("sw", "late-old", 1, jan25 + 1), graduated("sw", "late-new", 1, MAR + DAY_MS)]
        assert ingest_checked(client, late, "late") == ["PERIOD_CLOSED"]
        listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="sw"))
        assert [(i.invoice_number, i.contract_id, i.period_start.ToMilliseconds()) for i in listed.invoices] == [
            ("INV-00000001", "sw-old", JAN15),
            ("INV-00000002", "sw-new", FEB),
        ]
        # CloseDuePeriods closes the new contract's ended periods from March on, each once, and none of the old's.
        ends = month_ends_before(datetime(2026, 2, 1), datetime.now(UTC))[1:]
        due = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices
        assert [(i.contract_id, i.period_end.ToMilliseconds()) for i in due] == [("sw-new", end) for end in ends]
        # March holds the late event: 1 unit, 10 + 1 credits drawn from the grant, nothing due.
        assert (due[0].subtotal, due[0].total_due, [(c.grant_id, c.credits) for c in due[0].credits_applied]) == (
            "11",
            "0.00",
            [("prepaid-50k", "11")],
        )
        assert list(client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices) == []


def test_an_override_prices_usage_rated_after_it_is_added(server_factory: ServerFactory) -> None:
    """PriceOverride.starting_at: an override without starting_at is in force from the contract's start for usage
    rated from when it is added; usage already rated keeps its amount. 1,000 units (1 credit) on Jan 5, then a 0.5
    multiplier, then 1,000 more on Jan 6 (0.5): 1.5, not 1 nor 2. A retroactive publish (the same prices, version 2
    from Jan 1) re-rates both hours with the override then in force: 0.5 + 0.5."""
    with start_server(server_factory, "override") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="o", name="o"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="o-c", customer_id="o", rate_card_id=CARD, starting_at=ts(ms("2026-01-01T00:00:00")), currency="USD"
            )
        )

        def unit(transaction_id: str, at_ms: int) -> usage_pb2.UsageEvent:
            return usage_pb2.UsageEvent(
                transaction_id=transaction_id,
                customer_id="o",
                event_type="unit",
                timestamp_ms=at_ms,
                dimensions={"k": "a"},
                values={"n": 1000},
            )

        jan = ms("2026-01-01T00:00:00")
        assert ingest_checked(client, [unit("before", jan + 4 * DAY_MS)], "before") == []
        half = contracts_pb2.PriceOverride(id="half", product_id="unit", multiplier="0.5")
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="o-c", override=half))
        assert ingest_checked(client, [unit("after", jan + 5 * DAY_MS)], "after") == []
        (line,) = preview(client, "o", jan).lines
        assert (line.amount, line.events) == ("1.5", 2)
        explained = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="o", period_start=ts(jan), line_id="unit;k=a")
        )
        assert [(e.transaction_id, e.amount) for e in explained.events] == [("before", "1"), ("after", "0.5")]
        same_prices = pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="1", per_units="1000"))
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=[same_prices])
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(jan))
        )
        (rerated,) = preview(client, "o", jan).lines
        assert [(a.hour.ToMilliseconds(), a.old_amount, a.new_amount) for a in rerated.adjustments] == [
            (jan + 4 * DAY_MS, "1", "0.5"),
            (jan + 5 * DAY_MS, "0.5", "0.5"),
        ]
        assert rerated.amount == "1"


def test_an_instant_between_two_contracts_names_no_period(server_factory: ServerFactory) -> None:
    """The old contract ends Feb 1 (its period runs to Feb 15), the next starts Feb 10: events in the gap are
    NO_ACTIVE_CONTRACT, both sides of each boundary are billed once, and PreviewInvoice at an instant in the gap is
    FAILED_PRECONDITION saying that no contract is in force then and how to name a period, not that there is none."""
    feb10 = FEB + 9 * DAY_MS
    with start_server(server_factory, "gap") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="gap", name="gap"))
        for contract_id, start, end in (("gap-old", JAN15, FEB), ("gap-new", feb10, None)):
            request = contracts_pb2.CreateContractRequest(
                id=contract_id, customer_id="gap", rate_card_id=CARD, starting_at=ts(start), currency="USD"
            )
            if end is not None:
                request.ending_before.CopyFrom(ts(end))
            client.contracts.CreateContract(request)
        edges = [FEB - 1, FEB, feb10 - 1, feb10]
        events = [graduated("gap", f"edge-{n}", n + 1, at_ms) for n, at_ms in enumerate(edges)]
        assert ingest_checked(client, events, "edges") == ["NO_ACTIVE_CONTRACT", "NO_ACTIVE_CONTRACT"]
        # 1 unit in the old period, 4 in the new one: 1 + 10 and 4 + 10 credits.
        old, new = preview(client, "gap", FEB - 1), preview(client, "gap", feb10)
        assert [(i.contract_id, i.period_end.ToMilliseconds(), i.subtotal) for i in (old, new)] == [
            ("gap-old", FEB15, "11"),
            ("gap-new", feb10 + 28 * DAY_MS, "14"),
        ]
        with pytest.raises(FailedPrecondition) as in_the_gap:
            preview(client, "gap", FEB + 4 * DAY_MS)
        assert "no contract of customer 'gap' is in force at 2026-02-05T00:00:00Z" in in_the_gap.value.details
        assert "its start" in in_the_gap.value.details
        assert "the period from 2026-01-15T00:00:00Z of contract 'gap-old' holds it" in in_the_gap.value.details
