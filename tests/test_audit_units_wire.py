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

Event type `noise` feeds no product."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2

from engine import commands as cmd
from engine.contracts import OveragePolicy
from server.convert import timestamp as stamp
from server.journal import LmdbJournal
from server.sequencer import JournalRecord, encode_record
from tests.audit_fixtures import preview, refusal, serving, unit
from tests.serverproc import ServerFactory, ServerProcess

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
JOURNAL_MAP_BYTES = 64 * 2**20


def catalogue(client: TariffClient) -> None:
    for product_id in ("work", "chat"):
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
