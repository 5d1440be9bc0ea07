"""AddOverride's match entries written "*" over the wire (contracts.proto PriceOverride.match, README "Contracts"):
a key left out means "*", so an entry whose value is "*" is left out, whatever its key, a pricing dimension of the
product or not, of any length; the override holds and answers its match without it, across a crash and restart.
The earlier audits refuse another key with a value (test_audit_contracts_wire.py) and read {"model": "*"} on a
dimension as the catch-all; none sends "*" on a key that is no pricing dimension.

Catalogue: product `tok` (event type `llm`, SUM of `n`, pricing dimension `model`) on rate card `card` (credits,
1 a unit), in force from 2024-01-01; each test makes its own customer and contract from then."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, refusal, serving, unit
from tests.serverproc import ServerProcess

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(
        id="tok", event_type="llm", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["model"]
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("tok", "1")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-errors3")
    yield from serving(ServerProcess(root / "data"), catalogue)


def add(client: TariffClient, contract_id: str, override_id: str, match: dict[str, str]) -> contracts_pb2.Contract:
    override = contracts_pb2.PriceOverride(id=override_id, product_id="tok", multiplier="2", match=match)
    answer: contracts_pb2.Contract = client.contracts.AddOverride(
        contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=override)
    )
    return answer


def matches(contract: contracts_pb2.Contract) -> dict[str, dict[str, str]]:
    return {o.id: dict(o.match) for o in contract.overrides}


def test_a_star_entry_on_any_key_is_left_out_of_the_match(server: ServerProcess) -> None:
    """{"model": "a", "region": "*"} is {"model": "a"} (region is no pricing dimension of tok), and a "*" entry on a
    300-byte key, longer than any event's key, is left out too: {} is every event of the product. A value on a key
    that is no dimension is still refused, naming it."""
    long_key = "k" * 300
    with server.client() as client:
        open_contract(client, "star-cust", "star-k", CARD_FROM_MS, rate_card_id="card")
        add(client, "star-k", "one", {"model": "a", "region": "*"})
        answer = add(client, "star-k", "all", {long_key: "*"})
        expected = {"one": {"model": "a"}, "all": {}}
        assert matches(answer) == expected
        code, details = refusal(lambda: add(client, "star-k", "bad", {"region": "eu"}))
        assert code.name == "INVALID_ARGUMENT"
        assert "override.match.region" in details
        # A retry of each answers the contract as it is, changing nothing.
        assert matches(add(client, "star-k", "one", {"model": "a", "region": "*"})) == expected
    server.kill9()
    server.restart()
    with server.client() as client:
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="star-k"))
        assert matches(contract) == expected
