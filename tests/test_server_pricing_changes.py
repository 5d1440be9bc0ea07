"""Changing prices safely, against a real server process: DiffVersions, RollbackRateCard (refusals, retries, a
rollback of a rollback, the publish path's refusal over rated usage) and GetAuditLog's filters, with the actor
taken from the API key or from x-actor."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf import timestamp_pb2
from tariff import TariffClient, TariffError
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess
from tests.test_server_auth import Keys

S = grpc.StatusCode
HOUR_MS = 3_600_000
CARD = "ai-credits"
GPT4_COMPLEX_SUMMARY = {"action": "summary", "model": "gpt-4", "complexity": "complex"}


def expect_error(code: grpc.StatusCode, call: Callable[[], object]) -> TariffError:
    with pytest.raises(TariffError) as raised:
        call()
    assert raised.value.code == code, raised.value
    assert raised.value.details
    return raised.value


def ts(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def hour_now() -> int:
    now_ms = time.time_ns() // 1_000_000
    return now_ms - now_ms % HOUR_MS


def draft_gpt4_cut(client: TariffClient) -> pricing_pb2.RateCardVersion:
    """Version 2 of the demo card: gpt4_factor 2.5 -> 2 (a complex GPT-4 summary: 5 credits -> 4)."""
    draft: pricing_pb2.RateCardVersion = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=1, set_parameters={"gpt4_factor": "2"}, change_note="GPT-4 cut"
        )
    )
    return draft


def versions(client: TariffClient) -> list[pricing_pb2.RateCardVersion]:
    return list(client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions)


def rollback(
    client: TariffClient, to_version: int, effective_from_ms: int | None, **kwargs: object
) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=to_version)
    if effective_from_ms is not None:
        request.effective_from.CopyFrom(ts(effective_from_ms))
    answer: pricing_pb2.PublishVersionResponse = client.pricing.RollbackRateCard(request, **kwargs)
    return answer


def test_diff_versions_shows_the_parameter_and_every_repriced_rate(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        draft_gpt4_cut(client)
        diff = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=1, to_version=2)
        )
        assert [(p.name, p.kind, p.old_value, p.new_value) for p in diff.parameters] == [
            ("gpt4_factor", pricing_pb2.CHANGED, "2.5", "2")
        ]
        # The four GPT-4 rates, by product then match; each written the same, priced lower.
        assert [(dict(c.key.match), c.kind) for c in diff.rates] == [
            ({"action": "enrichment", "data_source": "web", "model": "gpt-4"}, pricing_pb2.REPRICED),
            ({"action": "enrichment", "model": "gpt-4"}, pricing_pb2.REPRICED),
            ({"action": "summary", "complexity": "complex", "model": "gpt-4"}, pricing_pb2.REPRICED),
            ({"action": "summary", "complexity": "simple", "model": "gpt-4"}, pricing_pb2.REPRICED),
        ]
        complex_summary = diff.rates[2]
        assert complex_summary.old_rate == complex_summary.new_rate
        (field,) = complex_summary.fields
        formula = "summary_base * gpt4_factor * complex_factor + crm_surcharge"
        assert (field.path, field.old_formula, field.old_price, field.new_formula, field.new_price) == (
            "unit.price",
            formula,
            "5",
            formula,
            "4",
        )
        assert (field.has_old, field.has_new, field.old_problem, field.new_problem) == (True, True, "", "")
        # Diffing the other way round swaps the sides; a version with itself is empty.
        back = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=2, to_version=1)
        )
        assert (back.parameters[0].old_value, back.rates[2].fields[0].new_price) == ("2", "5")
        same = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=2, to_version=2)
        )
        assert (list(same.parameters), list(same.rates)) == ([], [])

        unknown = expect_error(
            S.NOT_FOUND,
            lambda: client.pricing.DiffVersions(
                pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=1, to_version=9)
            ),
        )
        assert "has no version 9" in unknown.details
        no_card = expect_error(
            S.NOT_FOUND,
            lambda: client.pricing.DiffVersions(
                pricing_pb2.DiffVersionsRequest(rate_card_id="nope", from_version=1, to_version=1)
            ),
        )
        assert "'nope'" in no_card.details
        missing = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.DiffVersions(pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, to_version=1)),
        )
        assert "from_version" in missing.details


def test_rollback_publishes_a_copy_refuses_precisely_and_a_retry_changes_nothing(demo_server: ServerProcess) -> None:
    h1 = hour_now() + HOUR_MS
    with demo_server.client() as client:
        draft_gpt4_cut(client)
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(h1))
        )
        third = rollback(client, 1, h1 + HOUR_MS, metadata=(("x-actor", "analyst@example.com"),)).version
        assert (third.version, third.state, third.based_on_version) == (3, pricing_pb2.PUBLISHED, 1)
        assert (third.rollback_to_version, third.rollback_from_version) == (1, 2)
        assert third.effective_from == ts(h1 + HOUR_MS)
        assert third.change_note.startswith("rollback of version 2 to version 1: a copy of version 1")
        assert dict(third.parameters) == dict(versions(client)[0].parameters)
        assert third.created_by == "analyst@example.com"  # a server without keys takes x-actor as the actor
        at = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=ts(h1 + HOUR_MS)))
        assert at.version == 3

        audit_before = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries
        retried = rollback(client, 1, h1 + HOUR_MS).version
        assert retried == third
        assert len(versions(client)) == 3
        assert client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries == audit_before
    # The same after a crash: the rollback was durable, and its retry is still answered with it.
    demo_server.kill9()
    demo_server.restart()
    with demo_server.client() as client:
        assert rollback(client, 1, h1 + HOUR_MS).version == third
        assert len(versions(client)) == 3
        assert client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries == audit_before

        client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1))
        cases = [
            (S.FAILED_PRECONDITION, 4, h1 + 2 * HOUR_MS, "version 4 of rate card 'ai-credits' is a draft"),
            (S.NOT_FOUND, 9, h1 + 2 * HOUR_MS, "rate card 'ai-credits' has no version 9"),
            (S.FAILED_PRECONDITION, 2, h1, "version 2 is already in force at"),
            (S.FAILED_PRECONDITION, 1, h1 + 5 * HOUR_MS, "version 3 (a copy of version 1, the prices of version 1)"),
            (S.INVALID_ARGUMENT, 1, h1 + 1, "effective_from"),
        ]
        for code, to_version, effective_from_ms, message in cases:
            with pytest.raises(TariffError) as refused:
                rollback(client, to_version, effective_from_ms)
            assert refused.value.code == code and message in refused.value.details, (message, refused.value)
        assert len(versions(client)) == 4
        expect_error(S.INVALID_ARGUMENT, lambda: rollback(client, 0, None))

        # A rollback of the rollback: back to version 2's prices, then to the rollback itself.
        fifth = rollback(client, 2, h1 + 2 * HOUR_MS).version
        assert (fifth.version, fifth.rollback_to_version, fifth.rollback_from_version) == (5, 2, 3)
        assert dict(fifth.parameters)["gpt4_factor"] == "2"
        sixth = rollback(client, 3, h1 + 3 * HOUR_MS).version
        assert (sixth.version, sixth.rollback_to_version, sixth.rollback_from_version) == (6, 3, 5)
        assert dict(sixth.parameters)["gpt4_factor"] == "2.5"

        rollbacks = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(action="RollbackRateCard")).entries
        assert [
            (e.target, json.loads(e.diff)["rollback_from"], json.loads(e.diff)["rollback_to"]) for e in rollbacks
        ] == [
            (f"rate_card/{CARD}/version/3", 2, 1),
            (f"rate_card/{CARD}/version/5", 3, 2),
            (f"rate_card/{CARD}/version/6", 5, 3),
        ]
        assert rollbacks[0].actor == "analyst@example.com"
        assert rollbacks[1].actor == "anonymous"


def test_a_rollback_over_rated_usage_re_rates_it_like_a_retroactive_publish(demo_server: ServerProcess) -> None:
    hour_ms = hour_now()
    with demo_server.client() as client:
        draft_gpt4_cut(client)
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(hour_ms + HOUR_MS))
        )
        event = usage_pb2.UsageEvent(
            transaction_id="rated-1",
            customer_id="acme",
            event_type="ai_action",
            timestamp_ms=hour_ms + 1,
            dimensions=GPT4_COMPLEX_SUMMARY,
        )
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b-1", events=[event]))
        assert ack.accepted == 1
        charged = Decimal(client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="acme")).period_charges)
        # Version 1 priced the event (5 credits) in this hour; rolling back to version 2's prices (4 credits) from
        # this hour publishes a copy of version 2 and re-rates the event with it, as a retroactive publish would.
        reply = rollback(client, 2, hour_ms)
        assert (reply.version.version, reply.version.rollback_to_version) == (3, 2)
        assert (reply.customers_rerated, reply.events_rerated, reply.rerated_amount_delta) == (1, 1, "-1")
        after = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="acme"))
        assert Decimal(after.period_charges) == charged - 1


@pytest.fixture
def keyed(server_factory: ServerFactory, tmp_path: Path) -> tuple[ServerProcess, Keys]:
    keys = Keys(
        tmp_path / "keys.json",
        {"ops-admin": ("admin", None), "finance": ("read", None), "acme-admin": ("admin", ["acme"])},
    )
    server = server_factory(demo=True, extra_args=keys.args, api_key=keys.key["ops-admin"])
    return server, keys


def test_the_audit_actor_comes_from_the_key_or_x_actor_and_filters_find_it(keyed: tuple[ServerProcess, Keys]) -> None:
    server, keys = keyed
    start_ms = time.time_ns() // 1_000_000 - 1
    with (
        TariffClient(server.target, api_key=keys.key["ops-admin"]) as ops,
        TariffClient(server.target, api_key=keys.key["ops-admin"], actor="alice") as alice,
        TariffClient(server.target, api_key=keys.key["acme-admin"], actor="mallory") as restricted,
        TariffClient(server.target, api_key=keys.key["finance"]) as finance,
    ):
        ops.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="by-key"))
        alice.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="by-alice"))
        draft_gpt4_cut(alice)
        # A key restricted to some customers may not name an actor; nothing is created.
        denied = expect_error(
            S.PERMISSION_DENIED,
            lambda: restricted.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="acme")),
        )
        assert "x-actor" in denied.details
        bad = expect_error(
            S.INVALID_ARGUMENT,
            lambda: ops.contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(id="bad-actor"), metadata=(("x-actor", "two words"),)
            ),
        )
        assert "x-actor" in bad.details
        # The key's own name as x-actor is just the key.
        ops.contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(id="by-key-2"), metadata=(("x-actor", "ops-admin"),)
        )

        def read(**filters: object) -> list[tuple[str, str, str]]:
            request = pricing_pb2.GetAuditLogRequest(start_time=ts(start_ms), **filters)  # type: ignore[arg-type]
            return [(e.actor, e.action, e.target) for e in finance.pricing.GetAuditLog(request).entries]

        everything = read()
        assert everything == [
            ("ops-admin", "CreateCustomer", "customer/by-key"),
            ("alice via ops-admin", "CreateCustomer", "customer/by-alice"),
            ("alice via ops-admin", "CreateDraftVersion", f"rate_card/{CARD}/version/2"),
            ("ops-admin", "CreateCustomer", "customer/by-key-2"),
        ]
        assert read(actor="alice") == everything[1:3]
        assert read(actor="ops-admin") == everything
        assert read(actor="alice via ops-admin") == everything[1:3]
        assert read(actor="mallory") == []
        assert read(action="CreateDraftVersion") == [everything[2]]
        assert read(actor="alice", action="CreateCustomer", target="customer/") == [everything[1]]
        # The time range: the demo's own entries are before start_ms; end_time excludes.
        demo_entries = finance.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(end_time=ts(start_ms))).entries
        assert {e.actor for e in demo_entries} == {"demo"}
        later = time.time_ns() // 1_000_000 + 60_000
        assert read(end_time=ts(later)) == everything
        assert finance.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(start_time=ts(later))).entries == []
        inverted = expect_error(
            S.INVALID_ARGUMENT,
            lambda: finance.pricing.GetAuditLog(
                pricing_pb2.GetAuditLogRequest(start_time=ts(later), end_time=ts(start_ms))
            ),
        )
        assert "end_time" in inverted.details
        # Paging: next_after_seq goes on where a page stopped, 0 at the end.
        first = finance.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(actor="ops-admin", page_size=3))
        assert [(e.actor, e.action, e.target) for e in first.entries] == everything[:3]
        assert first.next_after_seq == first.entries[-1].seq
        rest = finance.pricing.GetAuditLog(
            pricing_pb2.GetAuditLogRequest(actor="ops-admin", page_size=3, after_seq=first.next_after_seq)
        )
        assert [(e.actor, e.action, e.target) for e in rest.entries] == everything[3:]
        assert rest.next_after_seq == 0


def test_a_huge_change_is_audited_as_valid_json(demo_server: ServerProcess) -> None:
    rates = [
        pricing_pb2.Rate(
            product_id="ai_action", match={"action": f"action-{index:04d}"}, unit=pricing_pb2.UnitPrice(price="1")
        )
        for index in range(3_000)
    ]
    with demo_server.client() as client:
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=rates)
        )
        (entry,) = client.pricing.GetAuditLog(
            pricing_pb2.GetAuditLogRequest(action="CreateDraftVersion", actor="anonymous")
        ).entries
        assert len(entry.diff.encode()) <= 65_536
        diff = json.loads(entry.diff)
        assert diff["truncated"]["fields"]["upsert_rates"]["of"] == 3_000
        kept = diff["truncated"]["fields"]["upsert_rates"]["kept"]
        assert [r["match"]["action"] for r in diff["upsert_rates"]] == [f"action-{index:04d}" for index in range(kept)]
