"""Decimal strings over a real server.

An amount of more than 28 significant digits below 10^18 (a grant of 999999999999999999.999999999999 credits, an
alert threshold as long) is read exactly: Decimal's default 28-digit context rounded it in the range check and
in the exactness check, refusing it as out of range or as having more than 12 decimal places.
"""

from __future__ import annotations

from tariff import TariffClient
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2

from tests.serverproc import ServerFactory
from tests.test_server_instants import CONTRACT


def balance(client: TariffClient) -> balance_pb2.Balance:
    """acme's balance, less the journal position it was read at."""
    read: balance_pb2.Balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="acme"))
    read.ClearField("as_of_seq")
    return read


# Below 10^18 at 12 places: 30 digits, past the 28 of Decimal's default context, which rounded 10^18 - 10^-12 to
# 10^18 in the range check and the amount times 10^12 in the exactness check, refusing both as out of range or
# as having more than 12 places.
LONGEST = "999999999999999999.999999999999"


def test_an_amount_longer_than_28_digits_is_read_exactly(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    with server.client() as client:
        new = contracts_pb2.Grant(id="g-long", contract_id=CONTRACT, kind=contracts_pb2.PROMOTIONAL, amount=LONGEST)
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))
        [grant] = [g for g in balance(client).grants if g.grant_id == "g-long"]
        assert grant.amount == LONGEST
        request = alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.LOW_BALANCE, threshold=LONGEST)
        assert client.alerts.CreateAlert(request).threshold == LONGEST
