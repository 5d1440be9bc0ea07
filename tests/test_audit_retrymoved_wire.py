"""An audit of the retry rule (README "Every state-changing call is safe to retry": the same key with the same
request is answered with what the first call made, as it is now) for a keyed call sent again after a later call
changed what it made: the record the retry is compared against is no longer as the first call left it. EndContract
moving a contract's end broke CreateContract's retry (ALREADY_EXISTS: tests/test_audit_endcontract_wire.py), as
ExpireGrant had GrantCredits' (tests/test_audit_expiregrant_wire.py); this file sends again every other keyed call
whose record a later call changes: AddOverride, SetTopUpPolicy, GrantCredits and CreateContract after the contract
gained an override, a policy, a grant and a new end; CreateDraftVersion after its draft was published and the card
rolled back; PublishVersion and RollbackRateCard after a later rollback or publish. Each retry answers as it is now and
writes nothing (no audit entry, no new version).

Product `units` (event type `work`, SUM of `n`) at 1 credit a unit on rate card `card` (credits), in force from
2025-01-01; rate card `rc` (credits) is made by the tests, priced in `units` too, and no contract is on it. One
server for the file, each test its own customer or card. Times are relative to the current hour H (on the hour);
each contract starts at S, the first instant of the previous UTC month."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, audit_count, month_start, serving, this_hour_ms, unit
from tests.serverproc import ServerProcess

JAN_2025_MS = int(datetime(2025, 1, 1, tzinfo=UTC).timestamp() * 1000)


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("units", "1")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_2025_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-retrymoved")
    yield from serving(ServerProcess(root / "data"), catalogue)


def get(client: TariffClient, contract_id: str) -> contracts_pb2.Contract:
    found: contracts_pb2.Contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id))
    return found


def test_a_contracts_keyed_calls_sent_again_after_it_changed_answer_it_as_it_is_now(server: ServerProcess) -> None:
    """`m1`: CreateContract `k1` from S (open-ended, defaults left out), AddOverride `o1` (units at 0.5x),
    SetTopUpPolicy (below 5 up to 10 at 0.1, 3 a period), GrantCredits `g1` (10 PROMOTIONAL naming k1), then
    EndContract at H + 1 h. Each of the first four sent again as it was answers as it is now: the three contract calls
    k1 with o1, the policy, g1 and the end H + 1 h (GetContract alike); GrantCredits g1. The audit log has no new
    entry."""
    h = this_hour_ms()
    create = contracts_pb2.CreateContractRequest(
        id="k1", customer_id="m1", rate_card_id="card", starting_at=stamp(month_start(h, -1))
    )
    override = contracts_pb2.AddOverrideRequest(
        contract_id="k1", override=contracts_pb2.PriceOverride(id="o1", product_id="units", multiplier="0.5")
    )
    policy = contracts_pb2.SetTopUpPolicyRequest(
        contract_id="k1",
        top_up=contracts_pb2.TopUpPolicy(threshold="5", recharge_to="10", price_per_credit="0.1", max_per_period=3),
    )
    grant = contracts_pb2.GrantCreditsRequest(
        grant=contracts_pb2.Grant(id="g1", contract_id="k1", kind=contracts_pb2.PROMOTIONAL, amount="10")
    )
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="m1"))
        client.contracts.CreateContract(create)
        client.contracts.AddOverride(override)
        client.contracts.SetTopUpPolicy(policy)
        granted = client.contracts.GrantCredits(grant)
        ended = client.contracts.EndContract(
            contracts_pb2.EndContractRequest(contract_id="k1", ending_before=stamp(h + HOUR_MS))
        )
        assert ([o.id for o in ended.overrides], [g.id for g in ended.grants]) == (["o1"], ["g1"])
        assert ended.top_up.recharge_to == "10" and ended.ending_before.ToMilliseconds() == h + HOUR_MS
        entries = audit_count(client)
        assert client.contracts.CreateContract(create) == ended == get(client, "k1")
        assert client.contracts.AddOverride(override) == ended
        assert client.contracts.SetTopUpPolicy(policy) == ended
        assert client.contracts.GrantCredits(grant) == granted
        assert audit_count(client) == entries and get(client, "k1") == ended


def test_a_drafts_publishes_and_rollbacks_keys_sent_again_after_later_versions_answer_as_they_are_now(
    server: ServerProcess,
) -> None:
    """Card `rc`: CreateDraftVersion request_id `d1` (units at 1) -> v1, published from 2025-01-01; `d2` (units at 2)
    -> v2, published from H - 2 h; RollbackRateCard to v1 from H - 1 h -> v3, a copy of v1. Then each sent again:
    d1 answers v1 as it is now (PUBLISHED from 2025-01-01), d2 v2 (PUBLISHED from H - 2 h), v2's PublishVersion v2
    (nothing re-rated), the rollback v3 (a copy of v1, rolled back from v2). Still three versions; no new audit
    entry."""
    h = this_hour_ms()

    def draft(request_id: str, price: str) -> pricing_pb2.CreateDraftVersionRequest:
        return pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="rc", request_id=request_id, upsert_rates=[unit("units", price)]
        )

    publish_v2 = pricing_pb2.PublishVersionRequest(rate_card_id="rc", version=2, effective_from=stamp(h - 2 * HOUR_MS))
    rollback = pricing_pb2.RollbackRateCardRequest(rate_card_id="rc", to_version=1, effective_from=stamp(h - HOUR_MS))
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="rc", pricing_unit="credits"))
        assert client.pricing.CreateDraftVersion(draft("d1", "1")).version == 1
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="rc", version=1, effective_from=stamp(JAN_2025_MS))
        )
        assert client.pricing.CreateDraftVersion(draft("d2", "2")).version == 2
        published = client.pricing.PublishVersion(publish_v2)
        rolled = client.pricing.RollbackRateCard(rollback)
        assert (rolled.version.version, rolled.version.rollback_to_version) == (3, 1)
        entries = audit_count(client)
        v1, v2 = (
            client.pricing.CreateDraftVersion(draft("d1", "1")),
            client.pricing.CreateDraftVersion(draft("d2", "2")),
        )
        assert (v1.version, v1.state, v1.effective_from.ToMilliseconds()) == (1, pricing_pb2.PUBLISHED, JAN_2025_MS)
        assert (v2.version, v2.state, v2.effective_from.ToMilliseconds()) == (2, pricing_pb2.PUBLISHED, h - 2 * HOUR_MS)
        again = client.pricing.PublishVersion(publish_v2)
        assert again.version == published.version and again.customers_rerated == 0
        rolled_again = client.pricing.RollbackRateCard(rollback)
        assert rolled_again.version == rolled.version
        assert (rolled_again.version.rollback_to_version, rolled_again.version.rollback_from_version) == (1, 2)
        listed = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="rc")).versions
        assert [v.version for v in listed] == [1, 2, 3]
        assert audit_count(client) == entries
