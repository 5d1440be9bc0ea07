"""A data directory whose journal holds ids ending in a newline, which releases before the whole-text id rule took,
starts and serves those records as they were, and replays to the same state.

Those releases checked the id rule with a `$`-anchored re.match, which also matches before a final "\\n", as each
command applied, and journaled the command: a product, rate card, draft (its request_id), customer, contract,
override, grant and alert rule could each have such an id. The rule is now held to the whole text where a request
enters the server, before anything is journaled; the engine applies a journaled command as it applied it then, and
a record stored then answers to its id as it did.

The commands are applied here through the engine, as such a release applied them, and journaled as it journaled
them, each a record of its own.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import pytest
from tariff import InvalidArgument, TariffClient
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.contracts import OveragePolicy, Override
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import Rate, UnitPrice
from tests.serverproc import ServerFactory
from tests.test_legacy_decimal_texts import write_journal

HOUR_MS = 3_600_000
ACTOR = "earlier-release"
CUSTOMER = "probe\n"
CONTRACT = "probe-1\n"


def legacy_commands(start_ms: int) -> list[cmd.AdminCommand]:
    """What an earlier release journaled for requests whose ids end in a newline."""
    return [
        cmd.CreateProduct(start_ms, ACTOR, "meter\n", "Meter", "meter", Aggregation.COUNT, "", {}, (), "calls"),
        cmd.CreateRateCard(start_ms, ACTOR, "card\n", "Card", "credits"),
        cmd.CreateDraftVersion(
            start_ms, ACTOR, "card\n", 0, {}, (), (Rate("meter\n", {}, UnitPrice("2")),), (), "", request_id="draft\n"
        ),
        cmd.PublishVersion(start_ms, ACTOR, "card\n", 1, start_ms),
        cmd.CreateCustomer(start_ms, ACTOR, CUSTOMER, "Probe", {}),
        cmd.CreateContract(
            start_ms, ACTOR, CONTRACT, CUSTOMER, "card\n", start_ms, None, OveragePolicy.ALLOW, "1", "USD"
        ),
        cmd.AddOverride(start_ms, ACTOR, CONTRACT, Override("half\n", "meter\n", {}, "0.5", None, 0, None)),
        cmd.GrantCredits(
            start_ms, ACTOR, "grant\n", CUSTOMER, CONTRACT, GrantKind.PREPAID, "100", "90", 0, (), start_ms, None, "0"
        ),
        cmd.CreateAlert(start_ms, ACTOR, "low\n", CUSTOMER, False, "LOW_BALANCE", "5"),
    ]


class Served(NamedTuple):
    """What the server answers about every record the journal made."""

    customers: list[str]
    customer: contracts_pb2.Customer
    products: list[str]
    rate_cards: list[str]
    versions: list[int]
    contract: contracts_pb2.Contract
    alert_rules: list[str]
    balance: balance_pb2.Balance


def served(client: TariffClient) -> Served:
    balance: balance_pb2.Balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=CUSTOMER))
    balance.ClearField("as_of_seq")
    versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="card\n")).versions
    return Served(
        [c.id for c in client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest()).customers],
        client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=CUSTOMER)),
        [p.id for p in client.pricing.ListProducts(pricing_pb2.ListProductsRequest()).products],
        [c.id for c in client.pricing.ListRateCards(pricing_pb2.ListRateCardsRequest()).rate_cards],
        [v.version for v in versions],
        client.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT)),
        [r.id for r in client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules],
        balance,
    )


def test_a_journal_with_ids_ending_in_a_newline_replays_as_it_applied(server_factory: ServerFactory) -> None:
    server = server_factory(start=False)
    server.data_dir.mkdir(parents=True, exist_ok=True)
    now_ms = int(time.time() * 1000)
    start_ms = now_ms // HOUR_MS * HOUR_MS - 24 * HOUR_MS
    commands = legacy_commands(start_ms)
    billing = Billing()
    for seq, command in enumerate(commands, start=1):
        billing.apply(command, seq)  # the engine takes each as it did then (it raises to refuse one)
    write_journal(server.data_dir, commands)
    server.start()
    assert server.running, server.log_tail()
    with server.client() as client:
        started = served(client)
        assert (started.customers, started.products, started.rate_cards) == ([CUSTOMER], ["meter\n"], ["card\n"])
        assert (started.versions, started.alert_rules, started.customer.name) == ([1], ["low\n"], "Probe")
        assert [o.id for o in started.contract.overrides] == ["half\n"]
        assert [(g.grant_id, g.remaining) for g in started.balance.grants] == [("grant\n", "100")]
        # A create naming such an id again is held to today's rule: refused, nothing made.
        with pytest.raises(InvalidArgument) as again:
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=CUSTOMER, name="Probe"))
        assert [(v.field, v.description) for v in again.value.field_violations] == [
            ("id", f"{CUSTOMER!r} must be 1-128 characters of letters, digits and ._:@-")
        ]
        # Usage for the customer is rated on its contract (2 a call, the override's half), from its grant.
        events = [
            usage_pb2.UsageEvent(
                transaction_id=f"e{n}", customer_id=CUSTOMER, event_type="meter", timestamp_ms=now_ms - 60_000
            )
            for n in range(10)
        ]
        ack = client.ingest_batch(events)
        assert (ack.accepted, len(ack.rejected)) == (10, 0), ack
        deleted = client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id="low\n"))
        assert deleted.id == "low\n"
        after = served(client)
    assert [(g.grant_id, g.remaining) for g in after.balance.grants] == [("grant\n", "90")]
    assert after.alert_rules == []
    server.kill9()  # no snapshot at a stop: the next start replays the journal
    server.start()
    with server.client() as client:
        assert served(client) == after
