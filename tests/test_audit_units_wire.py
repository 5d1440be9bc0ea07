"""A conformance audit over the wire of the units money is counted in (pricing.proto RateCard.pricing_unit,
contracts.proto Contract.currency, invoices.proto minor_unit, README "Invoices and revenue" (Minor units)) and of
what Authorize answers as `credits_available` (balance.proto AuthorizeResponse.credits_available).

Defect found: CreateRateCard took any `pricing_unit` text ("usd", "xyz", 300 bytes) and CreateContract any three
capital letters as `currency` ("XYZ", "XXX"), which invoices then rounded to a guessed 2 minor-unit places. Now a
pricing unit is "credits" or an ISO 4217 code of the server's currency table (engine/invoices.py CURRENCIES, the
codes with a minor unit), and a currency one of those codes; anything else is INVALID_ARGUMENT naming the field,
checked where the request enters, so journals written before the check replay as they were.

Catalogue (rate card `card`, pricing unit credits, version 1 in force from 2024-01-01):

    product  event type  aggregation  value key  price a unit
    work     work        SUM          n          1
    chat     chat        SUM          n          2
    orphan   orphan      SUM          n          (no rate)

Event type `noise` feeds no product."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from engine import commands as cmd
from engine.contracts import OveragePolicy
from server.convert import timestamp as stamp
from server.journal import LmdbJournal
from server.records import JournalRecord, encode_record
from tests.audit_fixtures import preview, refusal, serving, unit
from tests.serverproc import ServerFactory, ServerProcess

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
JOURNAL_MAP_BYTES = 64 * 2**20


def catalogue(client: TariffClient) -> None:
    for product_id in ("work", "chat", "orphan"):
        product = pricing_pb2.Product(id=product_id, event_type=product_id, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rates = [unit("work", "1"), unit("chat", "2")]
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-units")
    yield from serving(ServerProcess(root / "data"), catalogue)


def customer(client: TariffClient, customer_id: str, *, currency: str = "", block: bool = False) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}",
            customer_id=customer_id,
            rate_card_id="card",
            starting_at=stamp(CARD_FROM_MS),
            currency=currency,
            overage_policy=contracts_pb2.BLOCK if block else contracts_pb2.ALLOW,
        )
    )


def grant(client: TariffClient, customer_id: str, grant_id: str, amount: str, *products: str) -> None:
    new = contracts_pb2.Grant(
        id=grant_id,
        contract_id=f"k-{customer_id}",
        kind=contracts_pb2.PROMOTIONAL,
        amount=amount,
        applicable_product_ids=list(products),
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))


# -- 1. pricing units and currencies ------------------------------------------------------------------------------


@pytest.mark.parametrize("pricing_unit", ["usd", "xyz", "XYZ", "Credits", "CREDITS", "US Dollar", "XXX", "u" * 300])
def test_create_rate_card_refuses_a_pricing_unit_neither_credits_nor_a_currency(
    server: ServerProcess, pricing_unit: str
) -> None:
    """pricing.proto RateCard.pricing_unit: "credits" or an ISO 4217 code of the server's table (a currency with a
    minor unit: XXX, "no currency", has none). Before: each was created with that unit (OK). Now INVALID_ARGUMENT
    naming pricing_unit, and no card made."""
    card_id = f"bad-{len(pricing_unit)}-{pricing_unit[:8].replace(' ', '_')}"
    with server.client() as client:
        request = pricing_pb2.CreateRateCardRequest(id=card_id, pricing_unit=pricing_unit)
        code, details = refusal(lambda: client.pricing.CreateRateCard(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("pricing_unit: "), details
        code, _ = refusal(lambda: client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=card_id)))
        assert code == grpc.StatusCode.NOT_FOUND


def test_create_rate_card_refuses_an_empty_pricing_unit(server: ServerProcess) -> None:
    """An empty pricing unit stays refused, naming pricing_unit."""
    with server.client() as client:
        request = pricing_pb2.CreateRateCardRequest(id="empty-unit", pricing_unit="")
        code, details = refusal(lambda: client.pricing.CreateRateCard(request))
        assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "pricing_unit")


@pytest.mark.parametrize("pricing_unit", ["credits", "USD", "EUR", "JPY", "KWD", "CLF"])
def test_create_rate_card_takes_credits_and_iso_codes(server: ServerProcess, pricing_unit: str) -> None:
    with server.client() as client:
        card_id = f"ok-{pricing_unit}"
        request = pricing_pb2.CreateRateCardRequest(id=card_id, pricing_unit=pricing_unit)
        assert client.pricing.CreateRateCard(request).pricing_unit == pricing_unit
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=card_id)).pricing_unit == pricing_unit


@pytest.mark.parametrize("currency", ["XYZ", "ABC", "XXX", "XTS", "XAU", "usd"])
def test_create_contract_refuses_a_currency_outside_the_table(server: ServerProcess, currency: str) -> None:
    """contracts.proto Contract.currency: an ISO 4217 code with a minor unit. Before: XYZ, ABC, XXX (no currency),
    XTS (testing) and XAU (gold, no minor unit) were taken, and their invoices rounded to a guessed 2 places; usd was
    refused already. Now all INVALID_ARGUMENT naming currency, and no contract made."""
    customer_id = f"cur-{currency}"
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
        request = contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}",
            customer_id=customer_id,
            rate_card_id="card",
            starting_at=stamp(CARD_FROM_MS),
            currency=currency,
        )
        code, details = refusal(lambda: client.contracts.CreateContract(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert details.startswith("currency: "), details
        code, _ = refusal(lambda: client.contracts.GetContract(contracts_pb2.GetContractRequest(id=f"k-{customer_id}")))
        assert code == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize(("currency", "places"), [("", 2), ("USD", 2), ("JPY", 0), ("KWD", 3), ("CLF", 4), ("CHF", 2)])
def test_a_table_currency_reaches_the_invoice_with_its_minor_unit(
    server: ServerProcess, currency: str, places: int
) -> None:
    customer_id = f"inv-{currency or 'none'}"
    with server.client() as client:
        customer(client, customer_id, currency=currency)
        invoice = preview(client, customer_id, CARD_FROM_MS)
        assert (invoice.currency, invoice.minor_unit) == (currency or "USD", places)


def test_a_journal_holding_units_now_refused_replays_as_written(server_factory: ServerFactory) -> None:
    """Replay stays exact: a journal an earlier release wrote, holding a rate card in "xyz" and a contract in "XYZ",
    starts with both as they were (the checks are where a request enters, not in the commands), the invoice of
    XYZ rounded to 2 places as then."""
    server = server_factory(start=False)
    journal = LmdbJournal(server.data_dir / "journal", map_size_bytes=JOURNAL_MAP_BYTES)
    at, actor = CARD_FROM_MS, "anonymous"
    commands: list[cmd.AdminCommand] = [
        cmd.CreateRateCard(at, actor, "old", "old", "xyz"),
        cmd.CreateCustomer(at, actor, "olga", "olga", {}),
        cmd.CreateContract(at, actor, "k-olga", "olga", "old", at, None, OveragePolicy.ALLOW, "", "XYZ"),
    ]
    try:
        journal.commit([(seq, encode_record(JournalRecord(c))) for seq, c in enumerate(commands, start=1)])
    finally:
        journal.close()
    server.start()
    with server.client() as client:
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="old")).pricing_unit == "xyz"
        assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-olga")).currency == "XYZ"
        invoice = preview(client, "olga", CARD_FROM_MS)
        assert (invoice.pricing_unit, invoice.currency, invoice.minor_unit) == ("xyz", "XYZ", 2)


# -- 2. credits_available for usage feeding no product -------------------------------------------------------------


def ask(event_type: str, customer_id: str, n: float = 1) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=f"{customer_id}-{event_type}", customer_id=customer_id, event_type=event_type, values={"n": n}
    )


Answer = tuple[bool, str, str, str]


def answers(client: TariffClient, *requests: balance_pb2.AuthorizeRequest) -> list[tuple[Answer, Answer]]:
    """(Authorize's, AuthorizeBatches') (allowed, reason, estimated_cost, credits_available) for each request."""
    unary = [client.balance.Authorize(r) for r in requests]
    (batched,) = client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)]))
    read = [(a.allowed, a.reason, a.estimated_cost, a.credits_available) for a in (*unary, *batched.responses)]
    return list(zip(read[: len(requests)], read[len(requests) :], strict=True))


def test_usage_feeding_no_product_is_offered_the_whole_available_credit(server: ServerProcess) -> None:
    """balance.proto credits_available: the credit the usage's products could draw (grants applying to one of
    them); usage feeding no product draws nothing and is offered the customer's whole available credit, as
    GetBalance's credits_available. `rita` (ALLOW) holds `any` 5 (every product) and `only` 7 (chat only):
    work 1 -> OK, 1, 5; chat 1 -> OK, 2, 12; noise -> OK, 0, 12 (= GetBalance's 12); orphan (no rate: denied
    before it is priced) -> NO_APPLICABLE_RATE, 0, 12; Authorize and AuthorizeBatches alike. Ingesting the noise
    event is accepted and changes nothing (available 12, no charge)."""
    with server.client() as client:
        customer(client, "rita")
        grant(client, "rita", "any", "5")
        grant(client, "rita", "only", "7", "chat")
        asked = [ask("work", "rita"), ask("chat", "rita"), ask("noise", "rita"), ask("orphan", "rita")]
        assert answers(client, *asked) == [
            ((True, "OK", "1", "5"),) * 2,
            ((True, "OK", "2", "12"),) * 2,
            ((True, "OK", "0", "12"),) * 2,
            ((False, "NO_APPLICABLE_RATE", "0", "12"),) * 2,
        ]
        assert client.get_balance("rita").credits_available == "12"
        noise = usage_pb2.UsageEvent(
            transaction_id="n1", customer_id="rita", event_type="noise", timestamp_ms=now_ms(), values={"n": 1}
        )
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="noise", events=[noise]))
        assert (ack.accepted, len(ack.rejected)) == (1, 0)
        balance = client.get_balance("rita")
        assert (balance.credits_available, balance.period_charges) == ("12", "0")


def test_block_usage_feeding_no_product_is_decided_on_the_whole_credit(server: ServerProcess) -> None:
    """README Balances: under BLOCK, "while no credit is available to the usage's products at all even usage that
    would cost nothing is" denied. `bea` (BLOCK) holds only `chat_only` 3 (chat): work 1 -> denied
    INSUFFICIENT_CREDIT, 1, 0; noise -> OK, 0, 3 (the whole credit: not 0, which would deny every such event of a
    BLOCK customer). `nil` (BLOCK, no grant): noise -> INSUFFICIENT_CREDIT, 0, 0."""
    with server.client() as client:
        customer(client, "bea", block=True)
        grant(client, "bea", "chat_only", "3", "chat")
        customer(client, "nil", block=True)
        assert answers(client, ask("work", "bea"), ask("noise", "bea"), ask("noise", "nil")) == [
            ((False, "INSUFFICIENT_CREDIT", "1", "0"),) * 2,
            ((True, "OK", "0", "3"),) * 2,
            ((False, "INSUFFICIENT_CREDIT", "0", "0"),) * 2,
        ]


def test_credits_available_of_requests_denied_before_pricing_and_of_holds(server: ServerProcess) -> None:
    """balance.proto credits_available, on AuthorizeBatches (which answers these in-band). `hana` (ALLOW) holds
    `h_any` 5 and `h_chat` 7 (chat only): an unknown customer -> UNKNOWN_CUSTOMER, 0; no event_type ->
    INVALID_REQUEST, 0; a negative value -> INVALID_REQUEST, 12 (the whole credit); holds in order: noise (feeds no
    product) holds nothing -> OK, 0, 12; work 1 holds 1 of `h_any` -> OK, 1, 4; orphan (no rate) ->
    NO_APPLICABLE_RATE, 0, 11 (the whole credit after that hold), as GetBalance's 11 available, 1 held."""
    with server.client() as client:
        customer(client, "hana")
        grant(client, "hana", "h_any", "5")
        grant(client, "hana", "h_chat", "7", "chat")

        def hold(event_type: str) -> balance_pb2.AuthorizeRequest:
            request = ask(event_type, "hana")
            request.reserve, request.reservation_id = True, f"hold-{event_type}"
            return request

        requests = [
            ask("noise", "nobody"),
            balance_pb2.AuthorizeRequest(request_id="no-type", customer_id="hana"),
            ask("work", "hana", -1),
            hold("noise"),
            hold("work"),
            hold("orphan"),
        ]
        (result,) = client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)]))
        assert [(a.allowed, a.reason, a.estimated_cost, a.credits_available) for a in result.responses] == [
            (False, "UNKNOWN_CUSTOMER", "0", "0"),
            (False, "INVALID_REQUEST", "0", "0"),
            (False, "INVALID_REQUEST", "0", "12"),
            (True, "OK", "0", "12"),
            (True, "OK", "1", "4"),
            (False, "NO_APPLICABLE_RATE", "0", "11"),
        ]
        balance = client.get_balance("hana")
        assert (balance.credits_available, balance.credits_held) == ("11", "1")
