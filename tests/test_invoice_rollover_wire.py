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


def contract_ending_its_period_soon(
    client: TariffClient, switch_before_end_ms: int = 0, expiring: bool = False
) -> tuple[int, int]:
    """Customer `roll` on a contract whose current period ends in about BOUNDARY_AFTER_S: (start, end) of it.
    `switch_before_end_ms`: the contract ends that long before (its last period keeps its monthly end), and
    roll-next starts then. Its grant r (90 credits paid 45) rolls over at that end, half of it, or, `expiring`,
    expires there instead (no rollover)."""
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
            ending_before=ts(boundary_ms - switch_before_end_ms) if switch_before_end_ms else None,
            overage_policy=contracts_pb2.ALLOW,
            overage_price="1",
            currency="USD",
        )
    )
    if switch_before_end_ms:
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="roll-next",
                customer_id="roll",
                rate_card_id=CARD,
                starting_at=ts(boundary_ms - switch_before_end_ms),
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
        rollover_fraction="" if expiring else "0.5",
        expires_at=ts(boundary_ms) if expiring else None,
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return anchor_ms, boundary_ms


def wait_for_rollover(client: TariffClient) -> None:
    """Until the server's clock has rolled `roll`'s grant r over (its ROLLOVER grant listed), at most 30 s."""
    deadline = time.monotonic() + 30
    while not any(g.grant_id.startswith("rollover-r-") for g in client.get_balance("roll").grants):
        assert time.monotonic() < deadline, "the server's clock did not roll the grant over"
        time.sleep(0.2)


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
    wait_for_rollover(client)

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


def test_next_contracts_usage_drawn_before_the_rollover_is_drawn_not_broken(server_factory: ServerFactory) -> None:
    """`roll` switches from roll-c to roll-next a day before roll-c's period ends (that period keeps its monthly
    end): 75 credits of roll-next's usage, dated after the switch and before that end, draw on r (90, fraction 0.5,
    from roll-c), so 15 are left when the server's clock rolls it over: 7.5 roll, 7.5 break. roll-c's draft and
    final invoice show r as GetBalance does: drawn 82.5 (the 75 and the 7.5 rolled), expired 7.5 (its breakage),
    not the 75 as broken."""
    client = start_server(server_factory, "rollover-switch-invoice")
    catalogue(client)
    start_ms, end_ms = contract_ending_its_period_soon(client, switch_before_end_ms=24 * 3_600_000)
    switch_ms = end_ms - 24 * 3_600_000
    event = usage_pb2.UsageEvent(
        transaction_id="t1",
        customer_id="roll",
        event_type="unit",
        timestamp_ms=switch_ms + 1000,
        dimensions={"k": "a"},
        values={"n": 75_000},
    )  # 75 credits at 1 per 1,000 units
    assert client.ingest_batch([event], "b1").accepted == 1
    [line] = preview(client, "roll", switch_ms).lines
    assert [(c.grant_id, c.credits) for c in line.credits_applied] == [("r", "75")]  # roll-next's line, paid by r
    shown = {"r": ("90", "82.5", "0", "7.5")}
    draft = preview(client, "roll", start_ms)
    assert draft.contract_id == "roll-c"
    assert {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in draft.grant_balances} == shown
    wait_for_rollover(client)
    final = close(client, "roll", start_ms)
    assert final.status == invoices_pb2.INVOICE_FINAL
    assert {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in final.grant_balances} == shown
    [grant] = [g for g in client.get_balance("roll").grants if g.grant_id == "r"]
    assert (grant.drawn, grant.expired) == ("82.5", "7.5")  # the invoice and the balance agree
