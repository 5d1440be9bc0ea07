"""A grant that rolled over, on the invoices of a real server: its period's final invoice and the next period's
preview show what moved into the ROLLOVER grant as drawn and the rest as expired (as GetBalance does), not the
whole remainder as still remaining. The period boundary is a few seconds after the test starts, so the server's
own clock rolls the grant over."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, usage_pb2

from engine._kernel import period_containing
from tests.serverproc import ServerFactory
from tests.test_audit_invoices_wire import CARD, catalogue, close, preview, start_server, ts

BOUNDARY_AFTER_S = 4


def contract_ending_its_period_soon(client: TariffClient) -> tuple[int, int]:
    """Customer `roll` on a contract whose current period ends in about BOUNDARY_AFTER_S: (start, end) of it."""
    boundary = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=BOUNDARY_AFTER_S)
    month_before = (boundary.replace(day=1) - timedelta(days=1)).replace(day=1)
    if boundary.day > 28:
        pytest.skip("the month before has no such day: the period would not end at the boundary")
    anchor = month_before.replace(day=boundary.day)
    anchor_ms, boundary_ms = int(anchor.timestamp() * 1000), int(boundary.timestamp() * 1000)
    assert period_containing(anchor_ms, boundary_ms - 1) == (anchor_ms, boundary_ms)
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="roll", name="roll"))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id="roll-c",
            customer_id="roll",
            rate_card_id=CARD,
            starting_at=ts(anchor_ms),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="1",
            currency="USD",
        )
    )
    grant = contracts_pb2.Grant(
        id="r",
        contract_id="roll-c",
        kind=contracts_pb2.PREPAID,
        amount="90",
        paid_amount="45",
        rollover_fraction="0.5",
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return anchor_ms, boundary_ms


def test_a_rolled_grant_is_drawn_into_its_rollover_and_broken_on_the_invoices(server_factory: ServerFactory) -> None:
    client = start_server(server_factory, "rollover-invoice")
    catalogue(client)
    start_ms, end_ms = contract_ending_its_period_soon(client)
    event = usage_pb2.UsageEvent(
        transaction_id="t1",
        customer_id="roll",
        event_type="unit",
        timestamp_ms=start_ms + 1000,
        dimensions={"k": "a"},
        values={"n": 75_000},
    )  # 75 credits at 1 per 1,000 units
    assert client.ingest_batch([event], "b1").accepted == 1
    # Before the clock rolls it, the draft already shows the grant as the close will (README "Draft = final").
    open_period = {b.grant_id: b for b in preview(client, "roll", start_ms).grant_balances}
    assert (open_period["r"].drawn, open_period["r"].remaining, open_period["r"].expired) == ("82.5", "0", "7.5")
    deadline = time.monotonic() + 30
    while not any(g.grant_id.startswith("rollover-r-") for g in client.get_balance("roll").grants):
        assert time.monotonic() < deadline, "the server's clock did not roll the grant over"
        time.sleep(0.2)

    final = close(client, "roll", start_ms)
    assert final.status == invoices_pb2.INVOICE_FINAL
    balances = {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in final.grant_balances}
    # 15 left at the period's end: 7.5 moved into rollover-r (drawn, as GetBalance counts it), 7.5 broke.
    assert balances == {"r": ("90", "82.5", "0", "7.5")}
    following = preview(client, "roll", end_ms).grant_balances
    assert {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in following} == {
        "r": ("90", "82.5", "0", "7.5"),
        f"rollover-r-{end_ms}": ("7.5", "0", "0", "7.5"),  # it expires at this period's end, unused
    }
    [grant] = [g for g in client.get_balance("roll").grants if g.grant_id == "r"]
    assert (grant.drawn, grant.expired) == ("82.5", "7.5")  # the invoice and the balance agree
