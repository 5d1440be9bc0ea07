"""README "## Reliability and security", audited statement by statement over the wire against one real server started
with keys (tests/serverproc.py), plus a few restarts of servers of their own. What the other audit files of the area
pin (tests/test_audit_reliability_wire.py, _reliab2_, _security_, _security2_, _scopes_, _keys3_, _limits_,
_bounded_, _backup_, tests/test_server_ops.py, tests/test_server_startup.py) is not repeated here: this file takes the
statements they leave open, as a client reads them.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from tariff import TariffClient, TariffError
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import audit_count, refusal, release, serving, this_hour_ms, varint
from tests.demo_usage import ACME, CHEAP, demo_batch
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess
from tests.test_server_auth import BETA, Keys, add_beta, code_of

BATCH_MAX = 5
KEYS: dict[str, tuple[str, list[str] | None]] = {
    "ops-admin": ("admin", None),
    "meter": ("ingest", None),
    "finance": ("read", None),
    "acme-portal": ("read", [ACME]),
    "acme-admin": ("admin", [ACME]),
}


class World:
    def __init__(self, server: ServerProcess, keys: Keys) -> None:
        self.server, self.keys = server, keys

    def client(self, key_name: str = "ops-admin") -> TariffClient:
        return self.server.client(api_key=self.keys.key[key_name])


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("audit-reliabdoc")
    keys = Keys(root / "keys.json", KEYS)
    args = [*keys.args, "--batch-events-max", str(BATCH_MAX)]
    process = ServerProcess(root / "data", demo=True, extra_args=args, api_key=keys.key["ops-admin"])
    for server in serving(process, add_beta):
        yield World(server, keys)


def _month_start_ms() -> int:
    today = dt.datetime.now(dt.UTC)
    return int(dt.datetime(today.year, today.month, 1, tzinfo=dt.UTC).timestamp() * 1000)


def seq(client: TariffClient) -> int:
    """The journal's seq as a read sees it (acme's balance carries it)."""
    return int(client.get_balance(ACME).as_of_seq)


def refused_journaling_nothing(client: TariffClient, call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    """`refusal`'s (code, message) for `call`, which must change nothing: the journal's last seq, read through
    `client`, is the same after it."""
    before = seq(client)
    refused = refusal(call)
    assert seq(client) == before, refused
    return refused


def grant(
    grant_id: str, amount: str, *, customer_id: str = ACME, request_id: str = ""
) -> contracts_pb2.GrantCreditsRequest:
    return contracts_pb2.GrantCreditsRequest(
        grant=contracts_pb2.Grant(id=grant_id, customer_id=customer_id, kind=contracts_pb2.PREPAID, amount=amount),
        request_id=request_id,
    )


def buying_top_ups(admin: TariffClient, customer_id: str, start_ms: int) -> None:
    """Customer `customer_id` (named without its `rd-`) on ai-credits from `start_ms` (contract `<id>-c`), 1 credit
    granted (`<id>-g`) and a top-up policy below 5 up to 10 at 1 a credit, at most 3 a period: its first rated event
    buys one (`top-up-<start_ms>-1`)."""
    admin.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id.removeprefix("rd-"))
    )
    admin.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-c", customer_id=customer_id, rate_card_id="ai-credits", starting_at=stamp(start_ms)
        )
    )
    admin.contracts.GrantCredits(grant(f"{customer_id}-g", "1", customer_id=customer_id))
    top_up = contracts_pb2.TopUpPolicy(threshold="5", recharge_to="10", price_per_credit="1", max_per_period=3)
    admin.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{customer_id}-c", top_up=top_up))


def held(customer_id: str, reservation_id: str, **fields: object) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=f"req-{reservation_id}",
        customer_id=customer_id,
        event_type="ai_action",
        dimensions=CHEAP,
        reserve=True,
        reservation_id=reservation_id,
        **fields,  # type: ignore[arg-type]
    )


# ---------------------------------------------------------------------------------------------
# "Every state-changing call is safe to retry": the keys of the table, as a client sends them


def test_a_grant_naming_neither_an_id_nor_a_request_id_is_refused_on_grant_id_and_changes_nothing(world: World) -> None:
    """README table, GrantCredits: "one of them is required (INVALID_ARGUMENT on grant.id otherwise)"."""
    with world.client() as admin:
        before, entries = seq(admin), audit_count(admin)
        code, message = refusal(lambda: admin.contracts.GrantCredits(grant("", "10")))
        assert (code, "grant.id" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True), message
        assert (seq(admin), audit_count(admin)) == (before, entries)


def test_a_grant_keyed_by_its_request_id_retried_answers_it_again_and_another_body_is_already_exists(
    world: World,
) -> None:
    """README table, GrantCredits: `request_id` when `grant.id` is empty is the key; the same request again answers
    with what the first call made and changes nothing (no journal record, no audit entry); the same key with a
    different request is ALREADY_EXISTS."""
    with world.client() as admin:
        first = admin.contracts.GrantCredits(grant("", "7", request_id="rd-grant-key"))
        before, entries = seq(admin), audit_count(admin)
        again = admin.contracts.GrantCredits(grant("", "7", request_id="rd-grant-key"))
        assert again == first
        assert (seq(admin), audit_count(admin)) == (before, entries)
        code, _ = refusal(lambda: admin.contracts.GrantCredits(grant("", "8", request_id="rd-grant-key")))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert (seq(admin), audit_count(admin)) == (before, entries)


@pytest.mark.parametrize("spelling", ["1e3", "1000.0"])
def test_a_grants_amount_is_compared_as_written_so_1000_then_another_spelling_is_already_exists(
    world: World, spelling: str
) -> None:
    """README: "a grant of 1000, one of 1e3 and one of 1000.0 under one id are three requests"."""
    grant_id = f"rd-spelt-{spelling}"
    with world.client() as admin:
        admin.contracts.GrantCredits(grant(grant_id, "1000"))
        code, message = refused_journaling_nothing(
            admin, lambda: admin.contracts.GrantCredits(grant(grant_id, spelling))
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS, message


def test_a_contract_without_an_id_is_keyed_by_customer_and_start_and_without_currency_differs_from_usd(
    world: World,
) -> None:
    """README table, CreateContract: an empty id becomes `<customer>-<yyyymmdd>` of the start and the retry answers
    the same contract; "a field left empty differs from its default written out (a contract without currency and
    one with USD)": the same id with `USD` written out is ALREADY_EXISTS."""
    today = dt.datetime.now(dt.UTC)
    month_start = dt.datetime(today.year, today.month, 1, tzinfo=dt.UTC)
    start = int(month_start.timestamp() * 1000)
    with world.client() as admin:
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rd-noid", name="No id"))
        request = contracts_pb2.CreateContractRequest(
            customer_id="rd-noid", rate_card_id="ai-credits", starting_at=stamp(start)
        )
        first = admin.contracts.CreateContract(request)
        assert first.id == f"rd-noid-{month_start:%Y%m%d}"
        before, entries = seq(admin), audit_count(admin)
        assert admin.contracts.CreateContract(request) == first
        assert (seq(admin), audit_count(admin)) == (before, entries)
        named = contracts_pb2.CreateContractRequest()
        named.CopyFrom(request)
        named.id, named.currency = first.id, "USD"
        code, _ = refusal(lambda: admin.contracts.CreateContract(named))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert seq(admin) == before


def test_an_override_without_an_id_is_keyed_by_its_text_so_0_5_and_0_50_are_two_overrides(world: World) -> None:
    """README table, AddOverride: an empty id becomes `override-<hash>` of the content as written; the same text
    again answers the same override; "a multiplier 0.50 and one 0.5 are two keys"."""

    def override(multiplier: str) -> contracts_pb2.AddOverrideRequest:
        return contracts_pb2.AddOverrideRequest(
            contract_id="beta-2026",
            override=contracts_pb2.PriceOverride(
                product_id="ai_action", match={"model": "gpt-4"}, multiplier=multiplier
            ),
        )

    def ids(contract: contracts_pb2.Contract) -> set[str]:
        return {o.id for o in contract.overrides}

    with world.client() as admin:
        held_before = ids(admin.contracts.GetContract(contracts_pb2.GetContractRequest(id="beta-2026")))
        first = admin.contracts.AddOverride(override("0.5"))
        before = seq(admin)
        assert admin.contracts.AddOverride(override("0.5")) == first
        assert seq(admin) == before
        made = ids(first) - held_before
        assert len(made) == 1 and next(iter(made)).startswith("override-"), made
        second = admin.contracts.AddOverride(override("0.50"))
        assert len(ids(second) - held_before) == 2 and ids(second) > ids(first)


def test_an_alert_without_an_id_is_keyed_by_its_rule_with_the_threshold_compared_as_a_value(world: World) -> None:
    """README table, CreateAlert: an empty id becomes `alert-<hash>` of the rule's content; "only SetTopUpPolicy and
    CreateAlert compare values (a threshold 10.50 and one 1.05e1 are the same)": the second spelling answers the
    first rule and changes nothing."""

    def rule(threshold: str) -> alerts_pb2.CreateAlertRequest:
        return alerts_pb2.CreateAlertRequest(customer_id=BETA, type=alerts_pb2.LOW_BALANCE, threshold=threshold)

    with world.client() as admin:
        first = admin.alerts.CreateAlert(rule("10.50"))
        assert first.id.startswith("alert-"), first.id
        before = seq(admin)
        again = admin.alerts.CreateAlert(rule("1.05e1"))
        assert again.id == first.id
        assert seq(admin) == before


def test_a_deleted_rule_deleted_again_answers_it_and_its_id_is_never_taken_again(world: World) -> None:
    """README table, DeleteAlertRule: "deleting a deleted rule answers it again" (nothing journaled); CreateAlert:
    "a deleted rule's id is ALREADY_EXISTS (ids are not used again)", even for the very same rule."""
    request = alerts_pb2.CreateAlertRequest(id="rd-gone", customer_id=BETA, type=alerts_pb2.LOW_BALANCE, threshold="5")
    with world.client() as admin:
        admin.alerts.CreateAlert(request)
        first = admin.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id="rd-gone"))
        before = seq(admin)
        assert admin.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id="rd-gone")) == first
        assert seq(admin) == before
        code, message = refusal(lambda: admin.alerts.CreateAlert(request))
        assert code == grpc.StatusCode.ALREADY_EXISTS and "rd-gone" in message, message
        assert seq(admin) == before


def test_a_draft_keyed_by_request_id_retried_is_the_same_draft_and_another_body_is_already_exists(
    world: World,
) -> None:
    """README table, CreateDraftVersion: `rate_card_id` and `request_id` are the key."""

    def draft(note: str) -> pricing_pb2.CreateDraftVersionRequest:
        return pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="ai-credits", set_parameters={"rd_param": "1"}, change_note=note, request_id="rd-draft"
        )

    with world.client() as admin:
        first = admin.pricing.CreateDraftVersion(draft("one"))
        before = seq(admin)
        assert admin.pricing.CreateDraftVersion(draft("one")).version == first.version
        assert seq(admin) == before
        code, _ = refusal(lambda: admin.pricing.CreateDraftVersion(draft("two")))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert seq(admin) == before


def test_a_publish_retried_answers_its_version_and_with_another_effective_from_is_failed_precondition(
    world: World,
) -> None:
    """README table, PublishVersion: publishing a published version again with the same `effective_from`, or none,
    answers as the first call; with another `effective_from` it is FAILED_PRECONDITION. A card of its own, in force
    from the next hour, so that nothing is re-rated."""
    at = this_hour_ms() + 3_600_000
    with world.client() as admin:
        admin.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="rd-card", name="rd", pricing_unit="credits"))
        draft = admin.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="rd-card", set_parameters={"p": "1"}, request_id="v1")
        )

        def publish(at_ms: int | None) -> pricing_pb2.PublishVersionResponse:
            request = pricing_pb2.PublishVersionRequest(rate_card_id="rd-card", version=draft.version)
            if at_ms is not None:
                request.effective_from.CopyFrom(stamp(at_ms))
            published: pricing_pb2.PublishVersionResponse = admin.pricing.PublishVersion(request)
            return published

        first = publish(at)
        before = seq(admin)
        assert publish(at) == first and publish(None) == first
        assert seq(admin) == before
        code, _ = refusal(lambda: publish(at + 3_600_000))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert seq(admin) == before


def test_a_hold_retried_answers_it_another_request_under_its_id_is_already_exists_and_a_release_twice_alike(
    world: World,
) -> None:
    """README table, Authorize with `reserve`: the same request again answers with the same hold (the message
    "already held: ..."); "another request
    under it is ALREADY_EXISTS"; ReleaseReservation: "releasing again answers the same amount"."""
    with world.client() as admin:
        first = admin.balance.Authorize(held(BETA, "rd-hold"))
        assert first.allowed, first.reason
        before = seq(admin)
        again = admin.balance.Authorize(held(BETA, "rd-hold"))
        assert again.message.startswith("already held: "), again.message
        again.ClearField("message")
        assert again == first
        assert seq(admin) == before
        other = held(BETA, "rd-hold", reservation_ttl=Duration(seconds=61))
        code, _ = refusal(lambda: admin.balance.Authorize(other))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        release = balance_pb2.ReleaseReservationRequest(customer_id=BETA, reservation_id="rd-hold")
        released = admin.balance.ReleaseReservation(release).released_amount
        assert released == first.estimated_cost == "0.5"
        after = seq(admin)
        assert admin.balance.ReleaseReservation(release).released_amount == released
        assert seq(admin) == after


def test_close_due_periods_with_nothing_due_answers_no_invoices_and_writes_nothing(world: World) -> None:
    """README table, CloseDuePeriods: "a retry finds nothing left to close, answers no invoices and writes
    nothing" (every contract here is in its first, open period)."""
    with world.client() as admin:
        before = seq(admin)
        for _ in range(2):
            answer = admin.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
            assert (len(answer.invoices), answer.invoices_made) == (0, 0)
        assert seq(admin) == before


# ---------------------------------------------------------------------------------------------
# "A batch that accepts nothing changes nothing"


def test_an_empty_batch_takes_no_record_and_its_ack_carries_the_current_journal_seq(world: World) -> None:
    with world.client("meter") as meter:
        before = seq(meter)
        acks = [meter.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="rd-empty")) for _ in range(2)]
        assert acks[0] == acks[1]
        assert (acks[0].accepted, acks[0].duplicates, acks[0].journal_seq) == (0, 0, before)
        assert seq(meter) == before


def test_a_batch_of_only_duplicates_takes_no_record_and_a_resend_gets_the_same_answer(world: World) -> None:
    with world.client("meter") as meter:
        batch = demo_batch("rd-dups", "rd-dups", 3, customer=BETA)  # stamped once: a resend is the same content
        first = meter.usage.IngestUsageBatch(batch)
        assert (first.accepted, first.journal_seq) == (3, seq(meter))
        before = seq(meter)
        resends = [meter.usage.IngestUsageBatch(batch) for _ in range(2)]
        assert resends[0] == resends[1]
        assert (resends[0].accepted, resends[0].duplicates, resends[0].journal_seq) == (0, 3, before)
        assert seq(meter) == before


# ---------------------------------------------------------------------------------------------
# Limits: one past is refused where the request enters, naming the field; one at it is taken


def test_a_batch_past_batch_events_max_is_resource_exhausted_whole_and_one_at_it_is_accepted(world: World) -> None:
    with world.client("meter") as meter:
        code, message = refused_journaling_nothing(
            meter, lambda: meter.usage.IngestUsageBatch(demo_batch("rd-big", "rd-big", BATCH_MAX + 1))
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, message
        ack = meter.usage.IngestUsageBatch(demo_batch("rd-big", "rd-big", BATCH_MAX))
        assert (ack.accepted, ack.duplicates) == (BATCH_MAX, 0)


def test_a_customer_id_of_129_characters_is_refused_naming_id_and_one_of_128_is_kept(world: World) -> None:
    with world.client() as admin:
        before = seq(admin)
        long = contracts_pb2.CreateCustomerRequest(id="c" * 129, name="long")
        code, message = refusal(lambda: admin.contracts.CreateCustomer(long))
        assert (code, message.startswith("id")) == (grpc.StatusCode.INVALID_ARGUMENT, True), message
        assert seq(admin) == before
        kept = admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="c" * 128, name="long"))
        assert kept.id == "c" * 128


def test_a_customer_name_past_256_bytes_or_65_attributes_is_refused_naming_the_field(world: World) -> None:
    with world.client() as admin:
        before = seq(admin)
        name = contracts_pb2.CreateCustomerRequest(id="rd-name", name="é" * 128 + "x")  # 257 bytes
        code, message = refusal(lambda: admin.contracts.CreateCustomer(name))
        assert (code, "name" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True), message
        many = contracts_pb2.CreateCustomerRequest(id="rd-name", name="n", attributes={f"k{i}": "v" for i in range(65)})
        code, message = refusal(lambda: admin.contracts.CreateCustomer(many))
        assert (code, "attributes" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True), message
        assert seq(admin) == before
        kept = contracts_pb2.CreateCustomerRequest(
            id="rd-name", name="é" * 128, attributes={f"k{i}": "v" for i in range(64)}
        )
        assert admin.contracts.CreateCustomer(kept).name == "é" * 128


def test_a_decimal_of_65_characters_is_refused_naming_the_field(world: World) -> None:
    amount = "1." + "0" * 63  # 65 characters, a value (1) well within range
    with world.client() as admin:
        code, message = refused_journaling_nothing(
            admin, lambda: admin.contracts.GrantCredits(grant("rd-long-amount", amount))
        )
        assert (code, "amount" in message) == (grpc.StatusCode.INVALID_ARGUMENT, True), message


def test_authorize_ids_past_256_bytes_are_refused_naming_them_and_ids_of_256_are_held(world: World) -> None:
    with world.client("meter") as meter:
        before = seq(meter)
        for field in ("reservation_id", "request_id"):
            request = held(BETA, "r" * 256)
            request.request_id = "q" * 256
            setattr(request, field, "r" * 257)
            code, message = refusal(functools.partial(meter.balance.Authorize, request))
            assert (code, field in message) == (grpc.StatusCode.INVALID_ARGUMENT, True), message
        assert seq(meter) == before
        request = held(BETA, "r" * 256)
        request.request_id = "q" * 256
        assert meter.balance.Authorize(request).allowed
        release = balance_pb2.ReleaseReservationRequest(customer_id=BETA, reservation_id="r" * 256)
        assert meter.balance.ReleaseReservation(release).released_amount == "0.5"


def test_a_transaction_id_past_256_bytes_is_an_invalid_event_and_one_of_256_is_accepted(world: World) -> None:
    batch = demo_batch("rd-txn", "x", 2, customer=BETA)
    batch.events[0].transaction_id = "t" * 257
    batch.events[1].transaction_id = "t" * 256
    with world.client("meter") as meter:
        ack = meter.usage.IngestUsageBatch(batch)
    assert ack.accepted == 1
    assert [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected] == [(0, "INVALID_EVENT")]


# ---------------------------------------------------------------------------------------------
# API keys: what a restricted key may do, and how a refusal reads


def test_a_restricted_read_key_reads_its_customer_and_the_shared_catalogue(world: World) -> None:
    """README "API keys": a key with `customers` may touch those customers; "the product catalogue (ListProducts) is
    shared"."""
    with world.client("acme-portal") as portal:
        assert portal.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=ACME)).id == ACME
        assert portal.get_balance(ACME).customer_id == ACME
        products = portal.pricing.ListProducts(pricing_pb2.ListProductsRequest()).products
        assert "ai_action" in {p.id for p in products}
        listed = portal.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=100)).customers
        assert [c.id for c in listed] == [ACME]


def test_a_restricted_admin_key_may_not_make_a_rule_for_every_customer_and_nothing_is_made(world: World) -> None:
    """README "API keys": "alert rules for every customer" are refused to a restricted key (PERMISSION_DENIED naming
    the key); its own customer's rule is made."""
    everyone = alerts_pb2.CreateAlertRequest(id="rd-all", all=True, type=alerts_pb2.LOW_BALANCE, threshold="1")
    with world.client("acme-admin") as acme_admin, world.client() as admin:
        code, message = refused_journaling_nothing(admin, lambda: acme_admin.alerts.CreateAlert(everyone))
        assert (code, "acme-admin" in message) == (grpc.StatusCode.PERMISSION_DENIED, True), message
        own = alerts_pb2.CreateAlertRequest(id="rd-acme", customer_id=ACME, type=alerts_pb2.LOW_BALANCE, threshold="1")
        assert acme_admin.alerts.CreateAlert(own).id == "rd-acme"


def test_a_read_keys_ingest_is_permission_denied_naming_key_and_role_and_applies_nothing(world: World) -> None:
    with world.client("finance") as finance, world.client() as admin:
        before = admin.get_balance(BETA)
        code, message = refusal(lambda: finance.usage.IngestUsageBatch(demo_batch("rd-ro", "rd-ro", 1, customer=BETA)))
        assert code == grpc.StatusCode.PERMISSION_DENIED, message
        assert "finance" in message and "read" in message, message
        assert admin.get_balance(BETA) == before


def test_a_restricted_keys_refusal_about_another_customer_tells_nothing_of_it(world: World) -> None:
    """README "API keys": PERMISSION_DENIED "with a message naming the key, its role or the customer, and no data of
    any other customer": beta's name, contract, grant and amounts are absent."""
    with world.client("acme-portal") as portal:
        for call in (
            lambda: portal.get_balance(BETA),
            lambda: portal.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=BETA)),
            lambda: portal.contracts.GetContract(contracts_pb2.GetContractRequest(id="beta-2026")),
        ):
            code, message = refusal(call)
            assert code in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND), message
            for secret in ("Beta Ltd", "beta-prepaid", "100", "90"):
                assert secret not in message, message


def test_health_answers_without_a_key_where_a_tariff_call_is_unauthenticated(world: World) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(world.server.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING
        get_balance = channel.unary_unary(
            "/tariff.v1.BalanceService/GetBalance",
            request_serializer=balance_pb2.GetBalanceRequest.SerializeToString,
            response_deserializer=balance_pb2.Balance.FromString,
        )
        code, _ = code_of(lambda: get_balance(balance_pb2.GetBalanceRequest(customer_id=ACME), timeout=10))
        assert code == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------------------------------------
# Restarts: the keys the server derives (an empty id) are the same after kill -9 and after a clean stop


def _derived(admin: TariffClient, month_start_ms: int) -> list[bytes]:
    """Calls whose key the server derives or takes from `request_id`; each answer, serialized."""
    contract = admin.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            customer_id="rd-r", rate_card_id="ai-credits", starting_at=stamp(month_start_ms)
        )
    )
    override = admin.contracts.AddOverride(
        contracts_pb2.AddOverrideRequest(
            contract_id=contract.id,
            override=contracts_pb2.PriceOverride(product_id="ai_action", match={"model": "gpt-4"}, multiplier="0.5"),
        )
    )
    rule = admin.alerts.CreateAlert(
        alerts_pb2.CreateAlertRequest(customer_id="rd-r", type=alerts_pb2.LOW_BALANCE, threshold="2.50")
    )
    granted = admin.contracts.GrantCredits(grant("", "30", customer_id="rd-r", request_id="rd-r-grant"))
    return [m.SerializeToString(deterministic=True) for m in (contract, override, rule, granted)]


def test_keys_the_server_derives_answer_alike_after_kill_9_and_a_clean_stop_and_change_nothing(
    server_factory: ServerFactory,
) -> None:
    """README: the same key with the same request "is answered with what the first call made ... and changes nothing
    (no journal record, no audit entry), also after a restart". The keys here are the ones a client does not send:
    a contract's customer and start (its id suffixed ".2", another customer holding the plain one), an override's and
    a rule's content, a grant's `request_id`."""
    today = dt.datetime.now(dt.UTC)
    month_start_ms = int(dt.datetime(today.year, today.month, 1, tzinfo=dt.UTC).timestamp() * 1000)
    server = server_factory(demo=True)
    with server.client() as admin:
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rd-r", name="R"))
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rd-r-other", name="Other"))
        day = dt.datetime.fromtimestamp(month_start_ms / 1000, dt.UTC).strftime("%Y%m%d")
        admin.contracts.CreateContract(  # holds the id rd-r's contract would get: it becomes ".2"
            contracts_pb2.CreateContractRequest(
                id=f"rd-r-{day}", customer_id="rd-r-other", rate_card_id="ai-credits", starting_at=stamp(month_start_ms)
            )
        )
        _derived(admin, month_start_ms)
        first = _derived(admin, month_start_ms)  # "as it is now": the contract's answer holds its override and grant
        assert contracts_pb2.Contract.FromString(first[0]).id == f"rd-r-{day}.2"
        ack = admin.usage.IngestUsageBatch(demo_batch("rd-r-usage", "rd-r-usage", 3, customer="rd-r"))
        assert ack.accepted == 3
        balance, entries = admin.get_balance("rd-r"), audit_count(admin)
    for how in ("kill -9", "clean stop"):
        if how == "kill -9":
            server.kill9()
        else:
            assert server.terminate() == 0
        server.restart()
        with server.client() as admin:
            assert admin.get_balance("rd-r") == balance, how
            assert _derived(admin, month_start_ms) == first, how
            assert (admin.get_balance("rd-r"), audit_count(admin)) == (balance, entries), how


# ---------------------------------------------------------------------------------------------
# More of the retry table: what "the same request" is


def test_a_grants_expiry_is_compared_in_whole_milliseconds_so_a_finer_retry_is_the_same_request(world: World) -> None:
    """README: "an instant is compared as kept, in whole milliseconds (... a grant expiring at 10:00:00.000500 and one
    expiring at 10:00:00.000 under one id are one request)"."""
    expiry_ms = this_hour_ms() + 48 * 3_600_000
    with world.client() as admin:
        finer = grant("rd-expiry", "3")
        finer.grant.expires_at.CopyFrom(stamp(expiry_ms))
        finer.grant.expires_at.nanos += 500_000  # 0.5 ms past the millisecond
        first = admin.contracts.GrantCredits(finer)
        before = seq(admin)
        whole = grant("rd-expiry", "3")
        whole.grant.expires_at.CopyFrom(stamp(expiry_ms))
        assert admin.contracts.GrantCredits(whole) == first
        assert seq(admin) == before


def test_a_contract_without_overage_price_differs_from_one_with_1_written_out(world: World) -> None:
    """README: "a field left empty differs from its default written out (... without overage_price and with 1)"."""
    with world.client() as admin:
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rd-ovg", name="O"))
        request = contracts_pb2.CreateContractRequest(
            id="rd-ovg-c", customer_id="rd-ovg", rate_card_id="ai-credits", starting_at=stamp(this_hour_ms())
        )
        admin.contracts.CreateContract(request)
        before = seq(admin)
        request.overage_price = "1"
        code, _ = refusal(lambda: admin.contracts.CreateContract(request))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert seq(admin) == before


def test_a_draft_retried_with_a_price_written_0_50_instead_of_0_5_is_another_request(world: World) -> None:
    """README: "prices or multipliers 0.50 and 0.5" are two requests under one key."""

    def draft(price: str) -> pricing_pb2.CreateDraftVersionRequest:
        rate = pricing_pb2.Rate(product_id="ai_action", unit=pricing_pb2.UnitPrice(price=price))
        return pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="ai-credits", upsert_rates=[rate], request_id="rd-price-draft"
        )

    with world.client() as admin:
        admin.pricing.CreateDraftVersion(draft("0.5"))
        code, _ = refused_journaling_nothing(admin, lambda: admin.pricing.CreateDraftVersion(draft("0.50")))
        assert code == grpc.StatusCode.ALREADY_EXISTS


def test_a_contract_id_the_server_derives_is_suffixed_when_taken_and_retried_answers_the_suffixed_one(
    world: World,
) -> None:
    """README table, CreateContract: the id becomes `<customer>-<yyyymmdd>`, "or `acme-20261201.2`, `.3`, ... when
    another contract already holds that id"; the retry answers that contract, not a `.3`."""
    start = _month_start_ms()  # at midnight UTC: the id is named after the day
    day = dt.datetime.fromtimestamp(start / 1000, dt.UTC).strftime("%Y%m%d")
    with world.client() as admin:
        for customer in ("rd-sfx", "rd-sfx-other"):
            admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer, name=customer))
        taken = contracts_pb2.CreateContractRequest(
            id=f"rd-sfx-{day}", customer_id="rd-sfx-other", rate_card_id="ai-credits", starting_at=stamp(start)
        )
        admin.contracts.CreateContract(taken)
        request = contracts_pb2.CreateContractRequest(
            customer_id="rd-sfx", rate_card_id="ai-credits", starting_at=stamp(start)
        )
        first = admin.contracts.CreateContract(request)
        assert first.id == f"rd-sfx-{day}.2"
        before = seq(admin)
        assert admin.contracts.CreateContract(request) == first
        assert seq(admin) == before


def test_a_derived_contract_id_off_midnight_names_the_starts_unix_ms_and_a_long_customer_id_is_cut_to_128(
    world: World,
) -> None:
    """README table, CreateContract (and contracts.proto CreateContractRequest.id): the id is the customer and the
    start's UTC date, "or its Unix ms when the start is not at midnight", "a long customer id cut shorter to keep 128
    characters with the start whole"."""
    customer = "L" * 128
    start = _month_start_ms() + 3_600_000  # 01:00 UTC
    with world.client() as admin:
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer, name="long"))
        request = contracts_pb2.CreateContractRequest(
            customer_id=customer, rate_card_id="ai-credits", starting_at=stamp(start)
        )
        made = admin.contracts.CreateContract(request)
    assert made.id == "L" * (127 - len(str(start))) + f"-{start}", made.id


def test_a_contract_overlapping_one_the_customer_holds_is_failed_precondition_naming_it(world: World) -> None:
    """README table, CreateContract: "a customer's contracts never overlap, so a retry on a later day is refused as
    overlapping, FAILED_PRECONDITION naming the contract in that time" (the later day sent as a later start)."""
    start = this_hour_ms()
    with world.client() as admin:
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rd-ovl", name="ovl"))
        request = contracts_pb2.CreateContractRequest(
            customer_id="rd-ovl", rate_card_id="ai-credits", starting_at=stamp(start)
        )
        first = admin.contracts.CreateContract(request)
        before = seq(admin)
        request.starting_at.CopyFrom(stamp(start + 24 * 3_600_000))
        code, message = refusal(lambda: admin.contracts.CreateContract(request))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and first.id in message, message
        assert seq(admin) == before


def test_setting_the_top_up_policy_in_force_again_answers_the_contract_and_changes_nothing(world: World) -> None:
    """README table, SetTopUpPolicy: "setting the policy already in force through a contract in its currency answers
    with the contract and changes nothing"; values are compared (a threshold 10.50 and one 1.05e1 are the same)."""

    def policy(threshold: str) -> contracts_pb2.SetTopUpPolicyRequest:
        top_up = contracts_pb2.TopUpPolicy(
            threshold=threshold, recharge_to="20", price_per_credit="0.01", max_per_period=2
        )
        return contracts_pb2.SetTopUpPolicyRequest(contract_id="rd-tu-c", top_up=top_up)

    with world.client() as admin:
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rd-tu", name="tu"))
        admin.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="rd-tu-c",
                customer_id="rd-tu",
                rate_card_id="ai-credits",
                currency="USD",
                starting_at=stamp(this_hour_ms()),
            )
        )
        first = admin.contracts.SetTopUpPolicy(policy("10.50"))
        before, entries = seq(admin), audit_count(admin)
        assert admin.contracts.SetTopUpPolicy(policy("1.05e1")) == first
        assert (seq(admin), audit_count(admin)) == (before, entries)


# ---------------------------------------------------------------------------------------------
# More limits of what a request holds


def test_a_usage_events_65th_dimension_or_a_257_byte_value_is_an_invalid_event_and_64_are_taken(world: World) -> None:
    batch = demo_batch("rd-dims", "rd-dims", 3, customer=BETA)
    batch.events[0].dimensions.update({f"d{i}": "v" for i in range(65 - len(CHEAP))})
    batch.events[1].dimensions["action"] = "a" * 257
    batch.events[2].dimensions.update({f"d{i}": "v" for i in range(64 - len(CHEAP))})
    with world.client("meter") as meter:
        ack = meter.usage.IngestUsageBatch(batch)
    assert ack.accepted == 1
    assert [(r.index, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected] == [
        (0, "INVALID_EVENT"),
        (1, "INVALID_EVENT"),
    ]


def test_an_event_type_longer_than_any_product_feeds_none_and_is_accepted_charging_nothing(world: World) -> None:
    """README limits table: a usage event's `event_type` has no limit "but the message's ... one longer than a
    product's 256 bytes feeds no product, accepted charging nothing (Authorize estimates it at 0)"."""
    batch = demo_batch("rd-etype", "rd-etype", 1, customer=BETA)
    batch.events[0].event_type = "e" * 300
    with world.client("meter") as meter:
        charged = meter.get_balance(BETA).period_charges
        assert meter.usage.IngestUsageBatch(batch).accepted == 1
        assert meter.get_balance(BETA).period_charges == charged
        asked = balance_pb2.AuthorizeRequest(request_id="rd-etype", customer_id=BETA, event_type="e" * 300)
        answer = meter.balance.Authorize(asked)
    assert (answer.allowed, answer.estimated_cost) == (True, "0")


def test_an_override_match_value_past_256_bytes_is_refused_naming_its_key(world: World) -> None:
    request = contracts_pb2.AddOverrideRequest(
        contract_id="beta-2026",
        override=contracts_pb2.PriceOverride(
            id="rd-long-match", product_id="ai_action", match={"model": "m" * 257}, multiplier="2"
        ),
    )
    with world.client() as admin:
        code, message = refused_journaling_nothing(admin, lambda: admin.contracts.AddOverride(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "override.match.model" in message, message


def test_a_top_up_policy_of_1001_purchases_a_period_is_refused_naming_max_per_period(world: World) -> None:
    top_up = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="2", price_per_credit="1", max_per_period=1001)
    with world.client() as admin:
        before = seq(admin)
        request = contracts_pb2.SetTopUpPolicyRequest(contract_id="beta-2026", top_up=top_up)
        code, message = refusal(lambda: admin.contracts.SetTopUpPolicy(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "top_up.max_per_period" in message, message
        assert seq(admin) == before


@pytest.mark.parametrize("amount", ["1000000000000000000", "1.0000000000000000001"])
def test_a_decimal_of_10_to_the_18_or_19_places_is_refused_naming_the_field(world: World, amount: str) -> None:
    """README limits table: a decimal string is "64 characters, below 10^18, 18 places"."""
    with world.client() as admin:
        code, message = refused_journaling_nothing(
            admin, lambda: admin.contracts.GrantCredits(grant(f"rd-dec-{len(amount)}", amount))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "amount" in message, message


def test_a_bidirectional_control_in_a_customer_name_is_refused_with_its_position_and_code_point(world: World) -> None:
    """README limits table, the exact words: `name: character 4 is U+202E (a bidirectional control), which a name
    may not hold`."""
    request = contracts_pb2.CreateCustomerRequest(id="rd-bidi", name="abc\u202edef")
    with world.client() as admin:
        code, message = refusal(lambda: admin.contracts.CreateCustomer(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert message == "name: character 4 is U+202E (a bidirectional control), which a name may not hold", message


# ---------------------------------------------------------------------------------------------
# Keys of their own, holds that take no record, the key file


def test_a_drafts_request_id_is_its_cards_own_key_so_another_card_takes_the_same_one(world: World) -> None:
    """README table, CreateDraftVersion: "a key is the card's own"."""
    with world.client() as admin:
        admin.pricing.CreateRateCard(
            pricing_pb2.CreateRateCardRequest(id="rd-card2", name="two", pricing_unit="credits")
        )
        request = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="ai-credits", set_parameters={"shared": "1"}, request_id="rd-shared-key"
        )
        admin.pricing.CreateDraftVersion(request)
        request.rate_card_id = "rd-card2"
        assert admin.pricing.CreateDraftVersion(request).version == 1


def test_a_denied_hold_and_its_repeat_take_no_journal_record(world: World) -> None:
    """README "A batch that accepts nothing changes nothing": "a denied or repeated hold and a repeated release take
    none" (a BLOCK contract with no credits denies)."""
    with world.client() as admin:
        admin.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rd-blk", name="blocked"))
        admin.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="rd-blk-c",
                customer_id="rd-blk",
                rate_card_id="ai-credits",
                overage_policy=contracts_pb2.BLOCK,
                starting_at=stamp(this_hour_ms()),
            )
        )
        before = seq(admin)
        for _ in range(2):
            denied = admin.balance.Authorize(held("rd-blk", "rd-blk-hold"))
            assert (denied.allowed, denied.reason) == (False, "INSUFFICIENT_CREDIT")
        assert seq(admin) == before


@pytest.mark.parametrize("request_id", ["k" * 129, "with space"])
def test_a_request_id_key_breaking_the_id_rule_is_refused_naming_request_id(world: World, request_id: str) -> None:
    """README limits table: "an id a client chooses or names (... `request_id` keys)" is 128 characters of
    `A-Z a-z 0-9 . _ : @ -`, refused naming the field."""
    with world.client() as admin:
        before = seq(admin)
        for call in (
            lambda: admin.contracts.GrantCredits(grant("", "5", request_id=request_id)),
            lambda: admin.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="ai-credits", request_id=request_id)
            ),
        ):
            code, message = refusal(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("request_id: "), message
        assert seq(admin) == before


def test_a_customer_attribute_with_an_empty_key_is_refused_naming_attributes(world: World) -> None:
    """README limits table: a customer's `attributes` keys are "non-empty"."""
    request = contracts_pb2.CreateCustomerRequest(id="rd-attr", name="a", attributes={"": "v"})
    with world.client() as admin:
        code, message = refusal(lambda: admin.contracts.CreateCustomer(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("attributes[]"), message
        code, _ = refusal(lambda: admin.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="rd-attr")))
        assert code == grpc.StatusCode.NOT_FOUND


def test_keys_new_writes_json_0600_with_only_the_printed_keys_hash_and_the_customers_spaces_dropped(
    tmp_path: Path,
) -> None:
    """README "API keys": `tariff keys new` prints the key once on stdout and appends its entry; the file is created
    0600, JSON when its name does not end in `.toml`, and holds only the key's SHA-256; `--customers` drops the
    spaces around each id."""
    key_file = tmp_path / "keys.conf"
    command = [sys.executable, "-m", "server.cli", "keys", "new", "--name", "portal", "--role", "read"]
    done = subprocess.run(
        [*command, "--customers", " acme , acme-eu ", "--file", str(key_file)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO_ROOT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    key = done.stdout.strip()
    assert key and done.stdout == key + "\n"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    text = key_file.read_text()
    assert key not in text
    entry = json.loads(text)["keys"][0]
    assert entry == {
        "name": "portal",
        "sha256": hashlib.sha256(key.encode()).hexdigest(),
        "role": "read",
        "customers": ["acme", "acme-eu"],
    }


def test_a_batch_past_the_events_limit_on_a_stream_ends_it_keeping_the_ack_before_and_applying_none_after(
    world: World,
) -> None:
    """README "What the server does today" and usage.proto IngestUsage: a batch refused whole (past the events limit)
    "ends an IngestUsage stream with its status: the batches before it stay acknowledged, none sent after it is
    applied"; sent again alone, the one after it is accepted."""
    batches = [
        demo_batch("rd-s-0", "rd-s-0", 1, customer=BETA),
        demo_batch("rd-s-1", "rd-s-1", BATCH_MAX + 1, customer=BETA),
        demo_batch("rd-s-2", "rd-s-2", 1, customer=BETA),
    ]
    acked: list[str] = []
    with grpc.insecure_channel(world.server.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        ingest = channel.stream_stream(
            "/tariff.v1.UsageService/IngestUsage",
            request_serializer=usage_pb2.UsageBatch.SerializeToString,
            response_deserializer=usage_pb2.IngestAck.FromString,
        )
        metadata = [("authorization", f"Bearer {world.keys.key['meter']}")]
        with pytest.raises(grpc.RpcError) as ended:
            for ack in ingest(iter(batches), metadata=metadata, timeout=30):
                acked.append(ack.batch_id)
    assert ended.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, ended.value.details()
    assert acked == ["rd-s-0"]
    with world.client("meter") as meter:
        assert (
            meter.usage.IngestUsageBatch(batches[0]).duplicates,
            meter.usage.IngestUsageBatch(batches[2]).accepted,
        ) == (
            1,
            1,
        )


def test_a_key_added_to_the_file_while_the_server_runs_is_unauthenticated_until_a_restart(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """README "API keys": "The server reads the file when it starts, and only then"."""
    key_file = tmp_path / "keys.toml"
    keys_new = [sys.executable, "-m", "server.cli", "keys", "new", "--file", str(key_file)]

    def new_key(name: str, role: str) -> str:
        done = subprocess.run(
            [*keys_new, "--name", name, "--role", role], capture_output=True, text=True, timeout=60, cwd=REPO_ROOT
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    admin_key = new_key("billing-ops", "admin")
    server = server_factory(demo=True, extra_args=["--api-keys", str(key_file)], api_key=admin_key)
    late_key = new_key("finance-late", "read")
    with server.client(api_key=late_key) as late:
        code, _ = refusal(lambda: late.get_balance(ACME))
        assert code == grpc.StatusCode.UNAUTHENTICATED
    assert server.terminate() == 0
    server.restart()
    with server.client(api_key=late_key) as late:
        assert late.get_balance(ACME).customer_id == ACME


def test_a_restricted_key_may_take_an_id_the_server_gave_another_customers_top_up_learning_nothing(
    world: World,
) -> None:
    """README "API keys": the ids of the grants the server makes (`top-up-<period start ms>-<n>`) are each customer's
    own: "a GrantCredits for one customer may take an id the server gave another's grant (only the customer's own such
    id is ALREADY_EXISTS)". So a restricted key cannot learn from a refusal that another customer bought a top-up."""
    start = this_hour_ms()  # the contract's first period starts here: its top-ups are named after it
    with world.client() as admin:
        buying_top_ups(admin, "rd-tu2", start)
        assert admin.usage.IngestUsageBatch(demo_batch("rd-tu2-b", "rd-tu2-b", 1, customer="rd-tu2")).accepted == 1
        bought = [g.grant_id for g in admin.get_balance("rd-tu2").grants if g.grant_id.startswith("top-up-")]
        assert bought == [f"top-up-{start}-1"], bought
        code, message = refusal(lambda: admin.contracts.GrantCredits(grant(bought[0], "2", customer_id="rd-tu2")))
        assert code == grpc.StatusCode.ALREADY_EXISTS and "rd-tu2" in message, message
    with world.client("acme-admin") as acme_admin:
        taken = acme_admin.contracts.GrantCredits(grant(bought[0], "2"))
        assert acme_admin.contracts.GrantCredits(grant(bought[0], "2")) == taken
        assert bought[0] in {g.grant_id for g in acme_admin.get_balance(ACME).grants}


# ---------------------------------------------------------------------------------------------
# "The same request is the same fields as sent": a map's entries in another order on the wire are the same fields
# (protobuf leaves a map's order to the writer: another language's client, or the same one again, may reorder them)


def _field(number: int, data: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(data)) + data


def _entry(number: int, key: str, value: str) -> bytes:
    return _field(number, _field(1, key.encode()) + _field(2, value.encode()))


def _raw_call(world: World, method: str, request: bytes, answer: type[Message]) -> Message:
    with grpc.insecure_channel(world.server.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
        call = channel.unary_unary(method, request_serializer=bytes, response_deserializer=answer.FromString)
        metadata = [("authorization", f"Bearer {world.keys.key['ops-admin']}")]
        made: Message = call(request, metadata=metadata, timeout=10)
        return made


def test_a_customer_retried_with_its_attributes_in_another_order_is_the_same_request(world: World) -> None:
    base = _field(1, b"rd-map") + _field(2, b"Map")
    first = _raw_call(
        world,
        "/tariff.v1.ContractService/CreateCustomer",
        base + _entry(3, "region", "eu") + _entry(3, "segment", "smb"),
        contracts_pb2.Customer,
    )
    with world.client() as admin:
        before = seq(admin)
    again = _raw_call(
        world,
        "/tariff.v1.ContractService/CreateCustomer",
        base + _entry(3, "segment", "smb") + _entry(3, "region", "eu"),
        contracts_pb2.Customer,
    )
    assert again == first
    with world.client() as admin:
        assert seq(admin) == before


def test_an_override_keyed_by_its_content_is_the_same_key_with_its_match_in_another_order(world: World) -> None:
    """README table, AddOverride: with no id the key is the override's content; the entries of its `match` map sent
    in another order are the same content, so the retry adds no second override."""

    def request(*match: tuple[str, str]) -> bytes:
        override = _field(2, b"ai_action") + b"".join(_entry(3, k, v) for k, v in match) + _field(4, b"0.7")
        return _field(1, b"beta-2026") + _field(2, override)

    method = "/tariff.v1.ContractService/AddOverride"
    first = _raw_call(world, method, request(("model", "gpt-4"), ("action", "summary")), contracts_pb2.Contract)
    with world.client() as admin:
        before = seq(admin)
    again = _raw_call(world, method, request(("action", "summary"), ("model", "gpt-4")), contracts_pb2.Contract)
    assert again == first
    with world.client() as admin:
        assert seq(admin) == before


LOOKUPS: dict[str, tuple[str, object]] = {
    "GetCustomer": ("id", contracts_pb2.GetCustomerRequest(id="c" * 129)),
    "GetContract": ("id", contracts_pb2.GetContractRequest(id="c" * 129)),
    "GetRateCard": ("id", pricing_pb2.GetRateCardRequest(id="c" * 129)),
    "DeleteAlertRule": ("id", alerts_pb2.DeleteAlertRuleRequest(id="c" * 129)),
    "GetBalance": ("customer_id", balance_pb2.GetBalanceRequest(customer_id="x y")),
    "ReleaseReservation": (
        "customer_id",
        balance_pb2.ReleaseReservationRequest(customer_id="c" * 129, reservation_id="r"),
    ),
    "ListInvoices": ("customer_id", invoices_pb2.ListInvoicesRequest(customer_id="c" * 129)),
}


@pytest.mark.parametrize("rpc", sorted(LOOKUPS))
def test_an_id_a_request_names_breaking_the_id_rule_is_invalid_argument_naming_the_field_not_not_found(
    world: World, rpc: str
) -> None:
    """README limits table: "an id a client chooses or names" is 128 characters of `A-Z a-z 0-9 . _ : @ -`, one past
    it refused naming the field: a lookup says the id is malformed rather than that nothing has it."""
    field, request = LOOKUPS[rpc]
    with world.client() as admin:
        stubs = (admin.contracts, admin.pricing, admin.alerts, admin.balance, admin.invoices)
        call = next(getattr(stub, rpc) for stub in stubs if hasattr(stub, rpc))
        code, message = refusal(functools.partial(call, request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith(f"{field}: "), message


def test_another_customers_top_up_ids_taken_by_grants_stay_apart_after_kill_9_and_a_clean_stop(
    server_factory: ServerFactory,
) -> None:
    """README "API keys": server-made grant ids are each customer's own, so acme's `GrantCredits` may take the ids of
    tu's top-ups, the one bought already and the one not yet bought. After kill -9 (replay) and a clean stop (snapshot
    load) each customer's balance is as it was (acme: the demo's 50,000 plus 2 and 3), acme's retries answer again
    and tu's own top-up ids stay ALREADY_EXISTS to a grant for tu."""
    server = server_factory(demo=True)
    start = this_hour_ms()
    first_top_up, second_top_up = f"top-up-{start}-1", f"top-up-{start}-2"
    with server.client() as admin:
        buying_top_ups(admin, "rd-tu", start)
        admin.usage.IngestUsageBatch(demo_batch("rd-tu-1", "rd-tu-1", 1, customer="rd-tu"))  # buys the first
        admin.contracts.GrantCredits(grant(first_top_up, "2"))
        admin.contracts.GrantCredits(grant(second_top_up, "3"))  # before tu's second is bought
        admin.usage.IngestUsageBatch(demo_batch("rd-tu-2", "rd-tu-2", 11, customer="rd-tu"))  # buys the second
        tu_grants = [g.grant_id for g in admin.get_balance("rd-tu").grants]
        assert tu_grants == ["rd-tu-g", first_top_up, second_top_up], tu_grants
        before = {customer: admin.get_balance(customer) for customer in ("rd-tu", ACME)}
        assert before[ACME].credits_remaining == "50005"
    for how in ("kill -9", "clean stop"):
        if how == "kill -9":
            server.kill9()
        else:
            assert server.terminate() == 0
        server.restart()
        with server.client() as admin:
            assert {customer: admin.get_balance(customer) for customer in before} == before, how
            admin.contracts.GrantCredits(grant(first_top_up, "2"))
            admin.contracts.GrantCredits(grant(second_top_up, "3"))
            for taken in (first_top_up, second_top_up):
                code, message = refusal(
                    functools.partial(admin.contracts.GrantCredits, grant(taken, "2", customer_id="rd-tu"))
                )
                assert code == grpc.StatusCode.ALREADY_EXISTS and "rd-tu" in message, (how, message)
            assert {customer: admin.get_balance(customer) for customer in before} == before, how


def test_a_batch_whose_every_event_is_refused_takes_no_record_and_a_resend_gets_the_same_answer(world: World) -> None:
    """README "A batch that accepts nothing changes nothing": "one whose every event is a duplicate or refused, takes
    no journal record: as_of_seq does not move, its ack carries the current journal_seq, and a resend gets the same
    answer" (here an event of no customer and one of an unknown customer)."""
    batch = demo_batch("rd-refused", "rd-refused", 2, customer=BETA)
    batch.events[0].customer_id = ""
    batch.events[1].customer_id = "rd-nobody"
    with world.client("meter") as meter:
        before = seq(meter)
        acks = [meter.usage.IngestUsageBatch(batch) for _ in range(2)]
        assert acks[0] == acks[1]
        assert (acks[0].accepted, acks[0].duplicates, len(acks[0].rejected), acks[0].journal_seq) == (0, 0, 2, before)
        assert seq(meter) == before


@pytest.mark.parametrize(
    ("second", "expected"),
    [
        ({"name": "ops-read", "role": "read"}, "keys[1] (ops-read): same key hash as 'ops'"),
        ({"name": "ops-read", "role": "read", "customers": []}, "keys[1] (ops-read): 'customers' must be a non-empty"),
    ],
    ids=["one-key-twice", "customers-empty"],
)
def test_a_key_file_listing_one_key_twice_or_no_customers_stops_the_start_with_exit_2_creating_nothing(
    tmp_path: Path, second: dict[str, object], expected: str
) -> None:
    """README "API keys": a file the server cannot use stops `tariff serve` with exit code 2 and a message naming the
    entry, before anything is opened. One key listed twice (an entry appended with another role instead of the first
    edited) would leave which role it has to the order of the entries: it is refused, as is a `customers` list naming
    no one (never read as a key for every customer)."""
    digest = hashlib.sha256(b"the-one-key").hexdigest()
    keys = tmp_path / "keys.json"
    # The customers case lists another key, so that only its list is wrong.
    second_digest = hashlib.sha256(b"another-key").hexdigest() if "customers" in second else digest
    entries = [{"name": "ops", "sha256": digest, "role": "admin"}, {**second, "sha256": second_digest}]
    keys.write_text(json.dumps({"keys": entries}))
    command = ["serve", "--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "d"), "--api-keys", str(keys)]
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 2, done
    assert f"{keys}: {expected}" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "d").exists(), "nothing is created before the keys are known good"


def test_a_grant_with_an_id_is_keyed_by_it_alone_and_a_request_id_naming_it_is_the_same_request(world: World) -> None:
    """README table, GrantCredits: the key is `grant.id`, or `request_id` when `grant.id` is empty, which is then the
    grant's id (contracts.proto). With `grant.id` given, a retry carrying another `request_id` (a client that makes one
    per attempt) or none is the same request, and so is one naming the grant's id as `request_id` alone."""
    with world.client() as admin:
        first = admin.contracts.GrantCredits(grant("rd-keyed", "4", request_id="attempt-1"))
        before, entries = seq(admin), audit_count(admin)
        for again in (
            grant("rd-keyed", "4", request_id="attempt-2"),
            grant("rd-keyed", "4"),
            grant("", "4", request_id="rd-keyed"),
        ):
            assert admin.contracts.GrantCredits(again) == first
        assert (seq(admin), audit_count(admin)) == (before, entries)


def test_a_conflicting_hold_on_an_authorize_stream_ends_it_after_the_answers_before_and_holds_nothing_after(
    world: World,
) -> None:
    """README table, AuthorizeStream with `reserve`: "another request under it is ALREADY_EXISTS" (in-band only on
    AuthorizeBatches): the stream ends with that status after the answers to the requests before it, and, as the
    next request is read only once the answer before it is sent (balance.proto), none sent after it is held."""
    requests = [
        held(BETA, "rd-s-first"),
        held(BETA, "rd-s-first", reservation_ttl=Duration(seconds=61)),
        held(BETA, "rd-s-after"),
    ]
    answered: list[str] = []
    with world.client() as admin:
        with pytest.raises(TariffError) as ended:
            for answer in admin.balance.AuthorizeStream(iter(requests)):
                answered.append(answer.reservation_id)
        assert ended.value.code == grpc.StatusCode.ALREADY_EXISTS, ended.value.details
        assert "rd-s-first" in ended.value.details and answered == ["rd-s-first"]
        assert release(admin, BETA, "rd-s-first") == "0.5"
        gone = balance_pb2.ReleaseReservationRequest(customer_id=BETA, reservation_id="rd-s-after")
        code, _ = refusal(lambda: admin.balance.ReleaseReservation(gone))
        assert code == grpc.StatusCode.NOT_FOUND
