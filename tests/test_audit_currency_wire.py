"""Balance.currency over the wire: the currency overage_due is in, that of the contract pricing_unit names (in force
now, else the latest-starting one), empty with no contract; on GetBalance, on a watch's first balance, and in the
CLI's `tariff balance` (its "overage due" row labelled with it). Before it, a client reading overage_due had to find
out for itself which contract was in force to know what "7.5" was in.

The catalogue is test_audit_gateway2_wire's (`work` events price `n` units at 1 credit each), one server for the
file, each test on customers of its own. Amounts are worked out by hand in each docstring."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tariff import TariffClient
from tariff.v1 import balance_pb2, contracts_pb2

from tests.audit_fixtures import open_contract, serving
from tests.serverproc import ServerProcess
from tests.test_audit_credits2_wire import CARD_FROM_MS, event
from tests.test_audit_gateway2_wire import catalogue
from tests.test_audit_topups_wire import month_start_ms
from tests.test_cli import tariff

HOUR_MS = 3_600_000
STREAM_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-currency")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def use(client: TariffClient, customer_id: str, units: float) -> None:
    ack = client.ingest_batch([event(f"{customer_id}-1", customer_id, units)])
    assert (ack.accepted, list(ack.rejected)) == (1, []), ack


def new_customer(client: TariffClient, customer_id: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))


def watched_first(client: TariffClient, customer_id: str) -> balance_pb2.Balance:
    stream = client.balance.WatchBalance(
        balance_pb2.WatchBalanceRequest(customer_id=customer_id), timeout=STREAM_TIMEOUT_S
    )
    try:
        first: balance_pb2.Balance = next(stream)
    finally:
        stream.cancel()
    return first


def test_overage_due_comes_with_the_currency_of_the_contract_in_force(server: ServerProcess) -> None:
    """`jp`: an ALLOW contract in JPY at overage_price 2.5 from the month's start, no grant; 3 units used: overage 3
    credits, overage_due 3 x 2.5 = "7.5", currency "JPY", on GetBalance and on a watch's first balance alike."""
    with server.client() as client:
        open_contract(client, "jp", "k-jp", month_start_ms(), rate_card_id="card", overage_price="2.5", currency="JPY")
        use(client, "jp", 3)
        balance = client.get_balance("jp")
        assert (balance.overage_amount, balance.overage_due, balance.currency) == ("3", "7.5", "JPY")
        assert balance.pricing_unit == "credits"
        assert watched_first(client, "jp").currency == "JPY"


def test_the_currency_follows_the_contract_pricing_unit_names(server: ServerProcess) -> None:
    """No contract: currency "" (as pricing_unit). One contract, in EUR, ended long ago: "EUR" (its card names
    pricing_unit; overage_due "0", no period). An EUR contract that ended at the month's start and a USD one from
    then: "USD", the one in force."""
    with server.client() as client:
        new_customer(client, "none")
        assert (client.get_balance("none").currency, client.get_balance("none").pricing_unit) == ("", "")
        open_contract(client, "old", "k-old", CARD_FROM_MS, CARD_FROM_MS + HOUR_MS, rate_card_id="card", currency="EUR")
        ended = client.get_balance("old")
        assert (ended.currency, ended.overage_due, ended.HasField("period_start")) == ("EUR", "0", False)
        open_contract(client, "moved", "k-moved-1", CARD_FROM_MS, month_start_ms(), rate_card_id="card", currency="EUR")
        open_contract(client, "moved", "k-moved-2", month_start_ms(), rate_card_id="card", currency="USD")
        assert client.get_balance("moved").currency == "USD"


def test_the_cli_labels_overage_due_with_its_currency(server: ServerProcess) -> None:
    """`tariff balance`: the row reads "overage due (JPY)  7.5" for `cli-jp` (2 units at 3.75 JPY = 7.5); with no
    contract the row has no label to give ("overage due  0")."""
    with server.client() as client:
        open_contract(
            client, "cli-jp", "k-cli-jp", month_start_ms(), rate_card_id="card", overage_price="3.75", currency="JPY"
        )
        use(client, "cli-jp", 2)
        new_customer(client, "cli-none")
    rows = {
        line.split("  ")[0].strip(): line.split()[-1]
        for line in tariff(server, "balance", "cli-jp").stdout.splitlines()
    }
    assert rows["overage due (JPY)"] == "7.5"
    plain = [line.split() for line in tariff(server, "balance", "cli-none").stdout.splitlines()]
    assert ["overage", "due", "0"] in plain


def test_the_cli_labels_authorize_reserve_and_release_amounts_with_the_pricing_unit(server: ServerProcess) -> None:
    """Authorize's and ReleaseReservation's answers carry no unit: `tariff authorize`, `reserve` and `release` label
    their amounts with the customer's pricing unit ("credits" on the card). `cli-unit`: ALLOW, a grant of 10 credits;
    authorizing 4 units costs 4 of 10 available; holding 4 and releasing them gives back 4; --json unchanged."""
    with server.client() as client:
        open_contract(client, "cli-unit", "k-cli-unit", month_start_ms(), rate_card_id="card")
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(
                    id="cli-unit-g", contract_id="k-cli-unit", kind=contracts_pb2.PROMOTIONAL, amount="10"
                )
            )
        )

    def fields(*args: str) -> dict[str, str]:
        lines = tariff(server, *args).stdout.splitlines()
        return {line.split("  ")[0].strip(): line.split()[-1] for line in lines if "  " in line}

    decided = fields("authorize", "cli-unit", "work", "--value", "n=4")
    assert (decided["estimated cost (credits)"], decided["credits available (credits)"]) == ("4", "10")
    held = fields("reserve", "cli-unit", "work", "--value", "n=4", "--id", "cli-unit-h")
    assert held["estimated cost (credits)"] == "4"
    assert fields("release", "cli-unit", "cli-unit-h")["released (credits)"] == "4"
    as_json = tariff(server, "authorize", "cli-unit", "work", "--value", "n=4", "--json").stdout
    assert '"estimated_cost": "4"' in as_json and "(credits)" not in as_json
