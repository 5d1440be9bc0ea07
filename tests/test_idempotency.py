"""Retries, batches that accept nothing, messages, ListRateCards and the client's typed stubs (issue 9, findings
4, 6, 7, 8 and 9), over the wire against real server processes (tests/serverproc.py).

Every state-changing ContractService and PricingService RPC has a key that makes a retry safe: the same key and
request answer as the first call did and change nothing (no journal record, no audit entry, as_of_seq still);
the same key with another request is ALREADY_EXISTS. The demo (server/demo.py): rate card `ai-credits`,
product `ai_action`, customer `acme` with contract `acme-2026` and 50,000 credits (grant `acme-prepaid-50k`).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import timestamp_pb2
from tariff import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    TariffClient,
    TariffError,
    now_ms,
)
from tariff.v1 import (
    balance_pb2,
    contracts_pb2,
    pricing_pb2,
)

from engine.control import ID_PATTERN
from tests.audit_fixtures import audit_count
from tests.demo_usage import ACME, demo_batch
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess


def seq_of(client: TariffClient) -> int:
    return client.get_balance(ACME).as_of_seq


def retried(client: TariffClient, call: Callable[[], object]) -> object:
    """Calls twice; the retry must answer the same and change nothing (journal seq and audit log still)."""
    first = call()
    seq, audited = seq_of(client), audit_count(client)
    assert call() == first, "a retry is answered as the first call was"
    assert (seq_of(client), audit_count(client)) == (seq, audited), "a retry changes nothing"
    return first


def prepaid(amount: str, grant_id: str = "", paid_amount: str = "") -> contracts_pb2.Grant:
    return contracts_pb2.Grant(
        id=grant_id, customer_id=ACME, kind=contracts_pb2.PREPAID, amount=amount, paid_amount=paid_amount
    )


# ---------------------------------------------------------------------------------------------
# Finding 4: every state change is safe to retry


def test_grant_credits_retried_with_a_request_id_grants_once_even_across_a_restart(
    demo_server: ServerProcess,
) -> None:
    request = contracts_pb2.GrantCreditsRequest(grant=prepaid("100"), request_id="topup-2026-12-01")
    with demo_server.client() as client:
        grant = retried(client, lambda: client.contracts.GrantCredits(request))
        assert isinstance(grant, contracts_pb2.Grant) and grant.id == "topup-2026-12-01"
        assert client.get_balance(ACME).credits_remaining == "50100"
    demo_server.kill9()
    demo_server.restart()
    with demo_server.client() as client:
        seq = seq_of(client)
        assert client.contracts.GrantCredits(request) == grant, "remembered across a restart"
        assert client.get_balance(ACME).credits_remaining == "50100"
        assert seq_of(client) == seq
        with pytest.raises(AlreadyExists) as clash:
            client.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(grant=prepaid("200"), request_id="topup-2026-12-01")
            )
        assert "topup-2026-12-01" in clash.value.details
        # Without a key the server could not tell a retry from a second grant: it refuses, naming the field.
        with pytest.raises(InvalidArgument) as keyless:
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=prepaid("100")))
        assert [v.field for v in keyless.value.field_violations] == ["grant.id"]
        assert client.get_balance(ACME).credits_remaining == "50100"


def test_grant_credits_with_its_own_id_is_safe_to_retry(demo_server: ServerProcess) -> None:
    request = contracts_pb2.GrantCreditsRequest(grant=prepaid("7", "g-7", paid_amount="7"))
    with demo_server.client() as client:
        retried(client, lambda: client.contracts.GrantCredits(request))
        assert client.get_balance(ACME).credits_remaining == "50007"


def test_every_admin_create_is_safe_to_retry_and_a_changed_request_clashes(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        c, p = client.contracts, client.pricing
        customer = contracts_pb2.CreateCustomerRequest(id="initech", name="Initech", attributes={"tier": "a"})
        retried(client, lambda: c.CreateCustomer(customer))
        with pytest.raises(AlreadyExists):
            c.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="initech", name="Initrode"))

        product = pricing_pb2.Product(id="calls", name="Calls", event_type="call", aggregation=pricing_pb2.COUNT)
        retried(client, lambda: p.CreateProduct(pricing_pb2.CreateProductRequest(product=product)))

        card = pricing_pb2.CreateRateCardRequest(id="calls-usd", name="Calls", pricing_unit="USD")
        retried(client, lambda: p.CreateRateCard(card))
        with pytest.raises(AlreadyExists):
            p.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="calls-usd", pricing_unit="EUR"))

        draft = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="calls-usd",
            upsert_rates=[pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="0.01"))],
            request_id="calls-v1",
        )
        version = retried(client, lambda: p.CreateDraftVersion(draft))
        assert isinstance(version, pricing_pb2.RateCardVersion) and version.version == 1
        other = pricing_pb2.CreateDraftVersionRequest(rate_card_id="calls-usd", request_id="calls-v1")
        with pytest.raises(AlreadyExists) as clash:
            p.CreateDraftVersion(other)
        assert "calls-v1" in clash.value.details

        start = now_ms() // 3_600_000 * 3_600_000 - 24 * 3_600_000
        publish = pricing_pb2.PublishVersionRequest(
            rate_card_id="calls-usd", version=1, effective_from=timestamp_pb2.Timestamp(seconds=start // 1000)
        )
        retried(client, lambda: p.PublishVersion(publish))
        # Again without effective_from: a retry too (it asks for nothing different).
        assert p.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id="calls-usd", version=1)).version.state
        assert [
            v.version for v in p.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="calls-usd")).versions
        ] == [1]

        # A contract without an id is named after its customer and start, so its retry finds it.
        contract_request = contracts_pb2.CreateContractRequest(customer_id="initech", rate_card_id="calls-usd")
        contract = retried(client, lambda: c.CreateContract(contract_request))
        assert isinstance(contract, contracts_pb2.Contract)
        assert re.fullmatch(r"initech-\d{8}", contract.id), contract.id

        # An override without an id is named after its content.
        override = contracts_pb2.AddOverrideRequest(
            contract_id=contract.id, override=contracts_pb2.PriceOverride(product_id="calls", multiplier="0.5")
        )
        with_override = retried(client, lambda: c.AddOverride(override))
        assert isinstance(with_override, contracts_pb2.Contract) and len(with_override.overrides) == 1
        named = contracts_pb2.AddOverrideRequest(
            contract_id=contract.id,
            override=contracts_pb2.PriceOverride(id=with_override.overrides[0].id, product_id="calls", price="2"),
        )
        with pytest.raises(AlreadyExists):
            c.AddOverride(named)
        assert len(c.GetContract(contracts_pb2.GetContractRequest(id=contract.id)).overrides) == 1


# ---------------------------------------------------------------------------------------------
# Finding 6: a batch that accepts nothing changes nothing the server exposes


def test_batches_that_accept_nothing_do_not_grow_the_journal_nor_move_as_of_seq(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        first = demo_batch("b1", "six", 2)
        accepted = client.ingest_batch(first.events, "b1")
        assert accepted.accepted == 2
        seq = seq_of(client)
        assert seq == accepted.journal_seq

        empty = client.ingest_batch([], "empty")
        duplicates = client.ingest_batch(first.events, "b1-again")
        refused = demo_batch("bad", "bad", 2, customer="nobody")
        rejected = client.ingest_batch(refused.events, "bad")
        assert (empty.accepted, duplicates.duplicates, len(rejected.rejected)) == (0, 2, 2)
        assert {a.journal_seq for a in (empty, duplicates, rejected)} == {seq}, "acked with the current seq"
        assert seq_of(client) == seq
        resent = client.ingest_batch(refused.events, "bad")
        assert list(resent.rejected) == list(rejected.rejected), "a resend gets the same refusals"
    demo_server.kill9()
    demo_server.restart()
    with demo_server.client() as client:
        assert seq_of(client) == seq, "nothing was journaled for them"
        assert client.ingest_batch(demo_batch("b2", "six-2", 1).events, "b2").journal_seq == seq + 1


# ---------------------------------------------------------------------------------------------
# Finding 7: messages


def test_a_negative_timestamp_is_said_to_be_not_positive(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        batch = demo_batch("neg", "neg", 1)
        batch.events[0].timestamp_ms = -5
        (rejection,) = client.ingest_batch(batch.events, "neg").rejected
        assert "timestamp_ms -5 must be positive" in rejection.message, rejection.message


@pytest.mark.parametrize(
    ("call", "fields"),
    [
        (lambda c: c.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest()), ["rate_card_id", "version"]),
        (lambda c: c.pricing.GetRateCard(pricing_pb2.GetRateCardRequest()), ["id"]),
        (lambda c: c.pricing.ListVersions(pricing_pb2.ListVersionsRequest()), ["rate_card_id"]),
        (lambda c: c.contracts.GetCustomer(contracts_pb2.GetCustomerRequest()), ["id"]),
        (lambda c: c.contracts.GetContract(contracts_pb2.GetContractRequest()), ["id"]),
    ],
)
def test_a_missing_id_is_invalid_argument_naming_the_field(
    demo_server: ServerProcess, call: Callable[[TariffClient], object], fields: list[str]
) -> None:
    with demo_server.client() as client, pytest.raises(InvalidArgument) as missing:
        call(client)
    assert [v.field for v in missing.value.field_violations] == fields
    assert all(v.description == "is required" for v in missing.value.field_violations)


def test_the_documented_id_characters_are_the_enforced_ones(demo_server: ServerProcess) -> None:
    documented = re.search(
        r"1 to 128 characters, each an ASCII letter, digit, or one of\n//\s*(.*)\n",
        (REPO_ROOT / "proto/tariff/v1/contracts.proto").read_text(),
    )
    assert documented is not None, "contracts.proto states the id rule"
    punctuation = documented.group(1).split()
    assert ID_PATTERN.pattern == "^[A-Za-z0-9" + "".join(punctuation) + "]{1,128}$"
    with demo_server.client() as client:
        for allowed in ("billing@acme.example", "a.b_c:d-e"):
            assert client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=allowed)).id == allowed
        for refused in ("a/b", "a b", "é", "x" * 129):
            with pytest.raises(InvalidArgument) as bad:
                client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=refused))
            assert "letters, digits and ._:@-" in bad.value.details


def test_an_override_without_a_start_leaves_the_start_unset(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        contract = client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id="acme-2026", override=contracts_pb2.PriceOverride(product_id="ai_action", multiplier="2")
            )
        )
        assert not contract.overrides[0].HasField("starting_at")


# ---------------------------------------------------------------------------------------------
# Finding 8: ListRateCards


def test_list_rate_cards_pages_in_id_order(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        for card_id in ("zeta", "alpha", "mid-1", "mid-2"):
            client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card_id, pricing_unit="credits"))
        pages: list[list[str]] = []
        token = ""
        while True:
            page = client.pricing.ListRateCards(pricing_pb2.ListRateCardsRequest(page_size=2, page_token=token))
            pages.append([card.id for card in page.rate_cards])
            token = page.next_page_token
            if not token:
                break
        assert pages == [["ai-credits", "alpha"], ["mid-1", "mid-2"], ["zeta"]]
        listed = client.list_rate_cards()
        assert [card.id for card in listed] == ["ai-credits", "alpha", "mid-1", "mid-2", "zeta"]
        assert listed[0].current_version == 1, "the demo's card, published"


def test_the_readme_names_the_demo_ids(demo_server: ServerProcess) -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    with demo_server.client() as client:
        (card,) = client.list_rate_cards()
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="acme-2026"))
    for demo_id in (card.id, contract.customer_id, contract.id, contract.grants[0].id, "ai_action"):
        assert f"`{demo_id}`" in readme, f"README.md does not name the demo's {demo_id!r}"


# ---------------------------------------------------------------------------------------------
# Finding 9: the raw stubs raise the typed errors


def test_raw_stubs_raise_the_typed_errors_sync(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        with pytest.raises(NotFound) as missing:
            client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="nobody"))
        assert missing.value.code == grpc.StatusCode.NOT_FOUND and "nobody" in missing.value.details
        with pytest.raises(InvalidArgument) as streamed:  # raised while reading a stream
            list(client.balance.AuthorizeStream(iter([balance_pb2.AuthorizeRequest(customer_id=ACME)])))
        assert "request_id" in streamed.value.details
        with pytest.raises(InvalidArgument) as bad_id:
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="a b"))
        assert bad_id.value.field_violations[0].field == "id"
        response, call = client.pricing.GetRateCard.with_call(pricing_pb2.GetRateCardRequest(id="ai-credits"))
        assert response.id == "ai-credits" and call.code() == grpc.StatusCode.OK


def test_raw_stubs_raise_the_typed_errors_async(demo_server: ServerProcess) -> None:
    async def main() -> None:
        async with demo_server.async_client() as client:
            with pytest.raises(NotFound):
                await client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="nobody"))
            call = client.balance.AuthorizeStream()
            await call.write(balance_pb2.AuthorizeRequest(customer_id=ACME))
            await call.done_writing()
            with pytest.raises(InvalidArgument):
                async for _ in call:
                    pass
            assert isinstance(
                await client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="ai-credits")), pricing_pb2.RateCard
            )
            with pytest.raises(TariffError):
                await client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="ai-credits", version=9))

    asyncio.run(main())


def test_typed_stub_errors_keep_the_field_violations(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    with server.client() as client, pytest.raises(InvalidArgument) as bad:
        client.contracts.CreateContract(contracts_pb2.CreateContractRequest(customer_id=ACME))
    assert [v.field for v in bad.value.field_violations] == ["rate_card_id"]
