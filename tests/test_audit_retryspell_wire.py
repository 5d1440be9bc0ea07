"""What "the same request" means for a retry (README, "Every state-changing call is safe to retry"): the fields as
sent, a decimal compared as written and a default left empty unlike the default written out, but for
SetTopUpPolicy and CreateAlert, which compare values.

Product `units` (event type `work`, SUM of `n`) at 1 credit a unit on rate card `card` (credits), in force from
2026-01-01. One server for the file, each test on customers of its own."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import alerts_pb2, contracts_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import refusal, serving
from tests.serverproc import ServerProcess

JAN_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def unit_rate(price: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price=price))


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit_rate("1")])
    client.pricing.CreateDraftVersion(draft)
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-retryspell")
    yield from serving(ServerProcess(root / "data"), catalogue)


def contract_request(
    customer_id: str, currency: str = "", overage_price: str = ""
) -> contracts_pb2.CreateContractRequest:
    return contracts_pb2.CreateContractRequest(
        id=f"{customer_id}-k",
        customer_id=customer_id,
        rate_card_id="card",
        starting_at=stamp(JAN_MS),
        currency=currency,
        overage_price=overage_price,
    )


def customer_with_contract(client: TariffClient, customer_id: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
    client.contracts.CreateContract(contract_request(customer_id))


def as_of_seq(client: TariffClient, customer_id: str) -> int:
    return client.get_balance(customer_id).as_of_seq


def test_a_grant_retried_with_its_amount_written_otherwise_is_another_request(server: ServerProcess) -> None:
    """Grant g1 of 1000 credits; the same request again answers it; 1e3 and 1000.0 under g1 are ALREADY_EXISTS, and
    the customer still holds 1000 credits."""
    with server.client() as client:
        customer_with_contract(client, "g")

        def grant(amount: str) -> contracts_pb2.GrantCreditsRequest:
            made = contracts_pb2.Grant(
                id="g1", customer_id="g", amount=amount, paid_amount="0", kind=contracts_pb2.PREPAID
            )
            return contracts_pb2.GrantCreditsRequest(grant=made)

        first = client.contracts.GrantCredits(grant("1000"))
        assert client.contracts.GrantCredits(grant("1000")) == first
        for written in ("1e3", "1000.0"):
            code, _ = refusal(partial(client.contracts.GrantCredits, grant(written)))
            assert code == grpc.StatusCode.ALREADY_EXISTS, written
        assert client.get_balance("g").credits_available == "1000"


def test_a_contract_retried_with_a_default_written_out_is_another_request(server: ServerProcess) -> None:
    """A contract made without currency and overage_price (USD and 1 by default): retried as sent it answers the
    contract; with currency "USD" or overage_price "1" written out it is ALREADY_EXISTS."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="c"))
        first = client.contracts.CreateContract(contract_request("c"))
        assert (first.currency, first.overage_price) == ("USD", "1")
        assert client.contracts.CreateContract(contract_request("c")).id == first.id
        for written_out in (contract_request("c", currency="USD"), contract_request("c", overage_price="1")):
            code, _ = refusal(partial(client.contracts.CreateContract, written_out))
            assert code == grpc.StatusCode.ALREADY_EXISTS, written_out


def test_an_override_or_a_draft_retried_with_a_price_written_otherwise_is_another_request(
    server: ServerProcess,
) -> None:
    """Override o1 with multiplier 0.50 and draft r1 with price 0.50: the same text again answers them, 0.5 is
    ALREADY_EXISTS, and the card keeps one draft."""
    with server.client() as client:
        customer_with_contract(client, "o")

        def override(multiplier: str) -> contracts_pb2.AddOverrideRequest:
            made = contracts_pb2.PriceOverride(id="o1", product_id="units", multiplier=multiplier)
            return contracts_pb2.AddOverrideRequest(contract_id="o-k", override=made)

        def draft(price: str) -> pricing_pb2.CreateDraftVersionRequest:
            return pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="card", request_id="r1", upsert_rates=[unit_rate(price)]
            )

        client.contracts.AddOverride(override("0.50"))
        assert [o.id for o in client.contracts.AddOverride(override("0.50")).overrides] == ["o1"]
        assert refusal(lambda: client.contracts.AddOverride(override("0.5")))[0] == grpc.StatusCode.ALREADY_EXISTS
        made = client.pricing.CreateDraftVersion(draft("0.50"))
        assert client.pricing.CreateDraftVersion(draft("0.50")).version == made.version
        assert refusal(lambda: client.pricing.CreateDraftVersion(draft("0.5")))[0] == grpc.StatusCode.ALREADY_EXISTS
        versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="card")).versions
        assert [v.version for v in versions].count(made.version) == 1
        assert max(v.version for v in versions) == made.version


def test_a_top_up_policy_and_an_alert_rule_compare_values(server: ServerProcess) -> None:
    """SetTopUpPolicy with threshold 4, recharge_to 20, price 0.5, then 4.0, 2e1, 0.50: the same policy, no journal
    record (as_of_seq stays). CreateAlert without an id, LOW_BALANCE below 10.50 and then 1.05e1: the same rule."""
    with server.client() as client:
        customer_with_contract(client, "t")

        def policy(threshold: str, recharge_to: str, price: str) -> contracts_pb2.SetTopUpPolicyRequest:
            top_up = contracts_pb2.TopUpPolicy(
                threshold=threshold, recharge_to=recharge_to, price_per_credit=price, max_per_period=1
            )
            return contracts_pb2.SetTopUpPolicyRequest(contract_id="t-k", top_up=top_up)

        client.contracts.SetTopUpPolicy(policy("4", "20", "0.5"))
        seq = as_of_seq(client, "t")
        client.contracts.SetTopUpPolicy(policy("4.0", "2e1", "0.50"))
        assert as_of_seq(client, "t") == seq

        def rule(threshold: str) -> alerts_pb2.CreateAlertRequest:
            return alerts_pb2.CreateAlertRequest(customer_id="t", type=alerts_pb2.LOW_BALANCE, threshold=threshold)

        first = client.alerts.CreateAlert(rule("10.50"))
        assert client.alerts.CreateAlert(rule("1.05e1")).id == first.id
