"""An acceptance audit of a contract switch combined with automatic top-ups over the wire against a real server
(contracts.proto TopUpPolicy and Contract.ending_before; README "Automatic top-up", "Contract switches", "Invoices
and revenue"). Fixtures as tests/test_audit_topups_wire.py's: one product at 1 credit a unit."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import preview, serving
from tests.serverproc import ServerProcess
from tests.test_audit_topups_wire import (
    DAY_MS,
    HOUR_MS,
    catalogue,
    month_start_ms,
    policy,
    set_policy,
    top_ups_of,
    use,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-switch-topup")
    yield from serving(ServerProcess(root / "data"), catalogue)


def switched(client: TariffClient, customer_id: str, first: str, then: str) -> tuple[str, str, int]:
    """Contract <c>-1 in `first` from two months back until two days into the previous month, then <c>-2 in
    `then`; a PREPAID grant of 10 credits (paid 10) under the first. Returns the two contract ids and the switch."""
    start, switch = month_start_ms(2), month_start_ms(1) + 2 * DAY_MS
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    old, new = f"{customer_id}-1", f"{customer_id}-2"
    for contract_id, begin, end, currency in ((old, start, switch, first), (new, switch, None, then)):
        request = contracts_pb2.CreateContractRequest(
            id=contract_id, customer_id=customer_id, rate_card_id="card", starting_at=stamp(begin), currency=currency
        )
        if end is not None:
            request.ending_before.CopyFrom(stamp(end))
        client.contracts.CreateContract(request)
    grant = contracts_pb2.Grant(
        id=f"{customer_id}-g", contract_id=old, kind=contracts_pb2.PREPAID, amount="10", paid_amount="10"
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return old, new, switch


def test_a_policy_buys_only_in_periods_of_a_contract_in_the_currency_it_was_set_in(server: ServerProcess) -> None:
    """x-1 (USD) then x-2 (JPY). The policy, set through x-1 (below 5 back to 10 at 0.9 USD a credit, 2 a
    period): 6 used on the previous month's first day (x-1's last period) leaves 4: it buys 6 there, 6 x 0.9 =
    5.40 USD on x-1's invoice. 6 used now (x-2's period: 4 from the grant, 2 from that top-up, 4 left) would buy 6
    at 0.9 JPY (5 JPY, about 150 times too cheap): a price set in USD is no price in JPY, so nothing is bought,
    x-2's invoice has no purchase. Set again through x-2 at 135 JPY: 1 used now (3 left) buys 7 credits, 945 JPY;
    6 used now (3 from the first top-up, 3 from the second: 4 left) buys 6, 810 JPY, x-2's cap: 1,755 JPY; 7 used
    now (4, then 3: 3 left) buys nothing (the cap). A late event of x-1's last period (1, dated an hour before the
    switch: no grant usable then holds credit, 1 of overage) leaves 3 available, below 5, x-1's period having
    bought once of 2: a JPY price is no USD price either, so nothing is bought (7 x 135 = 945 "USD" otherwise):
    x-1's invoice has 5.40 of purchases and 1.00 of overage (at 1 USD), 6.40 due."""
    prev = month_start_ms(1)
    with server.client() as client:
        old, new, switch = switched(client, "x", "USD", "JPY")
        set_policy(client, old, policy("5", "10", "0.9", 2))
        use(client, "x", "x1", 6, prev + DAY_MS)
        use(client, "x", "x2", 6)
        current = preview(client, "x", now_ms())
        assert (current.contract_id, current.currency) == (new, "JPY")
        period = current.period_start.ToMilliseconds()
        assert top_ups_of(client, "x") == {f"top-up-{prev}-1": "6"}
        assert current.top_up_purchases == "0"
        set_policy(client, new, policy("5", "10", "135", 2))
        for key, units in (("x3", 1), ("x5", 6), ("x6", 7)):
            use(client, "x", key, units)
        use(client, "x", "x4", 1, switch - HOUR_MS)
        made = {f"top-up-{prev}-1": "6", f"top-up-{period}-1": "7", f"top-up-{period}-2": "6"}
        assert top_ups_of(client, "x") == made
        assert client.get_balance("x").credits_available == "3"
        assert preview(client, "x", now_ms()).top_up_purchases == "1755"
        previous = preview(client, "x", prev)
        assert (previous.contract_id, previous.currency) == (old, "USD")
        assert (previous.top_up_purchases, previous.overage_due, previous.total_due) == ("5.40", "1.00", "6.40")


def test_after_a_kill_9_restart_the_policy_still_buys_only_in_its_currency(server: ServerProcess) -> None:
    """x as the test before left it (run after it). After kill -9 and a restart (the journal replayed): the same
    three top-ups, 3 credits available, 1,755 JPY on x-2's invoice; another late event of x-1's last period (1,
    two hours before the switch: overage, 3 available, x-1's period having bought once of 2) still buys nothing:
    x-1's invoice has 5.40 of purchases and 2.00 of overage, 7.40 due."""
    prev = month_start_ms(1)
    with server.client() as client:
        made = top_ups_of(client, "x")
        assert len(made) == 3, (
            "runs after test_a_policy_buys_only_in_periods_of_a_contract_in_the_currency_it_was_set_in"
        )
        switch = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="x-2")).starting_at.ToMilliseconds()
    server.kill9()
    server.restart()
    with server.client() as client:
        assert top_ups_of(client, "x") == made
        assert client.get_balance("x").credits_available == "3"
        assert preview(client, "x", now_ms()).top_up_purchases == "1755"
        use(client, "x", "x7", 1, switch - 2 * HOUR_MS)
        assert top_ups_of(client, "x") == made
        previous = preview(client, "x", prev)
        assert (previous.top_up_purchases, previous.overage_due, previous.total_due) == ("5.40", "2.00", "7.40")
