"""Scopes audit over the wire: README "### API keys" (a key restricted to some customers), against one real server
started with keys. The first two security passes (tests/test_audit_security_wire.py,
tests/test_audit_security2_wire.py) send one message at a time and name acme before beta; this pass pipelines the
streams, names beta before acme in one message, and asks every customer-scoped RPC about an unknown id and a
foreign one, to check that a restricted key can neither reach nor tell apart anything outside its customers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import TariffClient
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import serving, varint
from tests.demo_usage import ACME, CHEAP, demo_batch
from tests.serverproc import ServerProcess
from tests.test_server_auth import BETA, CHANNEL_OPTIONS, Keys, add_beta, code_of

KEYS: dict[str, tuple[str, list[str] | None]] = {
    "ops-admin": ("admin", None),
    "acme-meter": ("ingest", [ACME]),
    "acme-portal": ("read", [ACME]),
    "acme-admin": ("admin", [ACME]),
}
BETA_RULE, BETA_DELETED_RULE = "beta-low", "beta-gone"
UNKNOWN, UNKNOWN_DELETED = "no-such-id", "no-such-id-2"
# Each of beta's ids as quoted in a refusal -> the unknown id asked in its place.
AS_UNKNOWN = {BETA_DELETED_RULE: UNKNOWN_DELETED, BETA_RULE: UNKNOWN, "beta-2026": UNKNOWN, BETA: UNKNOWN}
DEMO_PRICE = Decimal("0.5")  # the CHEAP dimensions' price on the demo rate card, per event


class World:
    def __init__(self, server: ServerProcess, keys: Keys) -> None:
        self.server, self.keys = server, keys

    def client(self, key_name: str) -> TariffClient:
        return self.server.client(api_key=self.keys.key[key_name])

    def metadata(self, key_name: str) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.keys.key[key_name]}")]

    def available(self, customer_id: str) -> Decimal:
        with self.server.client() as admin:
            balance = admin.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=customer_id))
        return Decimal(balance.credits_available)


def _beta(admin: TariffClient) -> None:
    """Beta: 100 prepaid credits, 3 events, a rule of its own and one deleted."""
    add_beta(admin)
    for rule_id in (BETA_RULE, BETA_DELETED_RULE):
        admin.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(id=rule_id, customer_id=BETA, type=alerts_pb2.LOW_BALANCE, threshold="60000")
        )
    admin.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id=BETA_DELETED_RULE))
    assert admin.usage.IngestUsageBatch(demo_batch("beta-usage", "beta-tx", 3, customer=BETA)).accepted == 3


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("audit-scopes")
    keys = Keys(root / "keys.json", KEYS)
    process = ServerProcess(root / "data", demo=True, extra_args=keys.args, api_key=keys.key["ops-admin"])
    for server in serving(process, _beta):
        yield World(server, keys)


def _len_delimited(field: int, data: bytes) -> bytes:
    return varint(field << 3 | 2) + varint(len(data)) + data


def _hold(request_id: str, customer_id: str, reservation_id: str) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id,
        customer_id=customer_id,
        event_type="ai_action",
        dimensions=CHEAP,
        reserve=True,
        reservation_id=reservation_id,
    )


def _held(world: World, customer_id: str, reservation_id: str) -> bool:
    """Whether the customer holds the reservation (released here if it does, so the test leaves nothing held)."""
    request = balance_pb2.ReleaseReservationRequest(customer_id=customer_id, reservation_id=reservation_id)
    with world.server.client() as admin:
        code, _ = code_of(lambda: admin.balance.ReleaseReservation(request))
    assert code in (grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND), code
    return bool(code == grpc.StatusCode.OK)


# ---------------------------------------------------------------------------------------------
# Pipelined streams: nothing sent after a refused message is applied


def test_a_batch_refused_mid_stream_applies_none_of_the_batches_pipelined_after_it(world: World) -> None:
    """README: one event for another customer refuses the whole batch, "the batches before it stay acknowledged and
    the stream ends: none sent after it is applied". Sent all at once (the server reads ahead and queues batches
    behind the refused one), batch 0 is acknowledged, batch 1 refused and batches 2-9 applied nowhere."""
    batches = [demo_batch(f"pipe-{i}", f"pipe-{i}", 2) for i in range(10)]
    batches[1].events[1].customer_id = BETA
    acked: list[str] = []
    with grpc.insecure_channel(world.server.target, options=CHANNEL_OPTIONS) as channel:
        ingest = channel.stream_stream(
            "/tariff.v1.UsageService/IngestUsage",
            request_serializer=usage_pb2.UsageBatch.SerializeToString,
            response_deserializer=usage_pb2.IngestAck.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            for ack in ingest(iter(batches), metadata=world.metadata("acme-meter"), timeout=30):
                acked.append(ack.batch_id)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    assert "events[1]" in (refused.value.details() or "") and acked == ["pipe-0"]
    with world.server.client() as admin:  # resent by the admin: only batch 0's events were recorded
        resent = [admin.usage.IngestUsageBatch(b) for b in batches if b.batch_id != "pipe-1"]
    assert [(a.accepted, a.duplicates) for a in resent] == [(0, 2)] + [(2, 0)] * 8


def test_an_authorize_batches_message_refused_mid_stream_holds_nothing_pipelined_after_it(world: World) -> None:
    """README: one request for another customer refuses the whole AuthorizeBatches message, "nothing of it is
    decided or held, and the stream ends". The hold of the message before it stands; the holds pipelined after it
    (read ahead while the first waits for its commit) are not held."""
    messages = [balance_pb2.AuthorizeBatch(requests=[_hold("a", ACME, "pipe-hold-0")])]
    messages.append(balance_pb2.AuthorizeBatch(requests=[_hold("b", ACME, "pipe-hold-1"), _hold("c", BETA, "x")]))
    messages += [balance_pb2.AuthorizeBatch(requests=[_hold("d", ACME, f"pipe-hold-{i}")]) for i in range(2, 8)]
    answered: list[list[str]] = []
    with grpc.insecure_channel(world.server.target, options=CHANNEL_OPTIONS) as channel:
        authorize = channel.stream_stream(
            "/tariff.v1.BalanceService/AuthorizeBatches",
            request_serializer=balance_pb2.AuthorizeBatch.SerializeToString,
            response_deserializer=balance_pb2.AuthorizeBatchResult.FromString,
        )
        with pytest.raises(grpc.RpcError) as refused:
            for result in authorize(iter(messages), metadata=world.metadata("acme-meter"), timeout=30):
                answered.append([r.reservation_id for r in result.responses])
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, refused.value.details()
    assert "requests[1].customer_id" in (refused.value.details() or "") and answered == [["pipe-hold-0"]]
    assert [_held(world, ACME, f"pipe-hold-{i}") for i in range(8)] == [True] + [False] * 7


# ---------------------------------------------------------------------------------------------
# A customer field sent twice: protobuf takes the last, for the check and for the money alike


def test_beta_then_acme_in_one_customer_field_is_acmes_everywhere_and_charges_acme_alone(world: World) -> None:
    """Bytes naming beta, then acme, in one event's (or request's) customer_id are acme's to protobuf (the last
    wins): acme's key may send them, and the event is charged to acme, the holds held for acme: 3 x 0.50 off
    acme's available credits, nothing off beta's. (The second pass checks the other order, acme then beta.)"""
    acme_before, beta_before = world.available(ACME), world.available(BETA)
    event = demo_batch("twice", "twice-rev", 1).events[0]
    event_bytes = usage_pb2.UsageEvent(customer_id=BETA).SerializeToString() + event.SerializeToString()
    assert usage_pb2.UsageEvent.FromString(event_bytes).customer_id == ACME
    batch = _len_delimited(1, b"twice") + _len_delimited(2, event_bytes)

    def twice(reservation_id: str) -> bytes:
        named_beta = balance_pb2.AuthorizeRequest(customer_id=BETA).SerializeToString()
        return named_beta + _hold("q", ACME, reservation_id).SerializeToString()

    with grpc.insecure_channel(world.server.target, options=CHANNEL_OPTIONS) as channel:
        metadata = world.metadata("acme-meter")
        ingest = channel.unary_unary(
            "/tariff.v1.UsageService/IngestUsageBatch", request_serializer=bytes, response_deserializer=bytes
        )
        ack = usage_pb2.IngestAck.FromString(ingest(batch, metadata=metadata, timeout=10))
        authorize = channel.unary_unary(
            "/tariff.v1.BalanceService/Authorize", request_serializer=bytes, response_deserializer=bytes
        )
        held = balance_pb2.AuthorizeResponse.FromString(authorize(twice("twice-1"), metadata=metadata, timeout=10))
        batches = channel.stream_stream(
            "/tariff.v1.BalanceService/AuthorizeBatches", request_serializer=bytes, response_deserializer=bytes
        )
        message = _len_delimited(1, twice("twice-2"))
        [result] = [balance_pb2.AuthorizeBatchResult.FromString(r) for r in batches(iter([message]), metadata=metadata)]
    assert (ack.accepted, list(ack.rejected)) == (1, []), ack
    assert held.allowed and [r.reservation_id for r in result.responses] == ["twice-2"], (held, result)
    assert (world.available(ACME), world.available(BETA)) == (acme_before - 3 * DEMO_PRICE, beta_before)
    assert [_held(world, ACME, r) for r in ("twice-1", "twice-2")] == [True, True]
    assert [_held(world, BETA, r) for r in ("twice-1", "twice-2")] == [False, False]


# ---------------------------------------------------------------------------------------------
# An unknown id and a foreign one are refused alike


def _scoped_calls(client: TariffClient, customer: str, contract: str, rule: str) -> dict[str, Callable[[], object]]:
    """Every customer-scoped RPC a restricted admin key may call, about `customer` / `contract` / `rule`."""
    start, end = Timestamp(seconds=0), Timestamp(seconds=2**32)
    grant = contracts_pb2.Grant(id="scoped-grant", customer_id=customer, amount="1")
    return {
        "GetBalance": lambda: client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=customer)),
        "Authorize": lambda: client.balance.Authorize(
            balance_pb2.AuthorizeRequest(customer_id=customer, event_type="ai_action", dimensions=CHEAP)
        ),
        "ReleaseReservation": lambda: client.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id=customer, reservation_id="r")
        ),
        "PreviewInvoice": lambda: client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=customer)
        ),
        "ExplainLineItem": lambda: client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id=customer, line_id="x", period_start=start)
        ),
        "ClosePeriod": lambda: client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id=customer, period_start=start)
        ),
        "ListInvoices": lambda: client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id=customer)),
        "GetRevenueReport": lambda: client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(customer_id=customer, period_start=start, period_end=end)
        ),
        "SimulateVersion": lambda: client.pricing.SimulateVersion(
            pricing_pb2.SimulateVersionRequest(
                rate_card_id="ai-credits", version=1, customer_ids=[customer], period_start=start, period_end=end
            )
        ),
        "GetCustomer": lambda: client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=customer)),
        "CreateCustomer": lambda: client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer)),
        "CreateContract": lambda: client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id=customer, rate_card_id="ai-credits")
        ),
        "GrantCredits": lambda: client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant)),
        "CreateAlert": lambda: client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(customer_id=customer, type=alerts_pb2.CREDITS_EXHAUSTED)
        ),
        "GetContract": lambda: client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract)),
        "AddOverride": lambda: client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract)),
        "SetTopUpPolicy": lambda: client.contracts.SetTopUpPolicy(
            contracts_pb2.SetTopUpPolicyRequest(contract_id=contract)
        ),
        "GrantCredits(contract)": lambda: client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(grant=contracts_pb2.Grant(id="g", contract_id=contract, amount="1"))
        ),
        "EndContract": lambda: client.contracts.EndContract(
            contracts_pb2.EndContractRequest(contract_id=contract, ending_before=end)
        ),
        "ExpireGrant": lambda: client.contracts.ExpireGrant(
            contracts_pb2.ExpireGrantRequest(customer_id=customer, grant_id="scoped-grant", expires_at=end)
        ),
        "EndOverride": lambda: client.contracts.EndOverride(
            contracts_pb2.EndOverrideRequest(contract_id=contract, override_id="scoped-override", ending_before=end)
        ),
        "DeleteAlertRule": lambda: client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id=rule)),
        "DeleteAlertRule(deleted)": lambda: client.alerts.DeleteAlertRule(
            alerts_pb2.DeleteAlertRuleRequest(id=BETA_DELETED_RULE if rule == BETA_RULE else UNKNOWN_DELETED)
        ),
    }


def test_every_scoped_rpc_refuses_an_unknown_id_in_the_words_it_refuses_a_foreign_one(world: World) -> None:
    """README: a restricted key asking for another customer is PERMISSION_DENIED "with a message naming the key,
    its role or the customer, and no data of any other customer", and an unknown id is refused like a foreign
    one: beta's customer, contract, live and deleted rule ids get the answers an id no one has gets, word for
    word but for the id; nothing reaches beta."""
    beta_before = world.available(BETA)
    with world.client("acme-admin") as admin_acme:
        foreign = {
            name: code_of(call) for name, call in _scoped_calls(admin_acme, BETA, "beta-2026", BETA_RULE).items()
        }
        unknown = {name: code_of(call) for name, call in _scoped_calls(admin_acme, UNKNOWN, UNKNOWN, UNKNOWN).items()}
    for name, (code, details) in foreign.items():
        assert code == grpc.StatusCode.PERMISSION_DENIED, (name, code, details)
        assert "acme-admin" in details and "Beta Ltd" not in details and "100" not in details, (name, details)
        unknown_code, unknown_details = unknown[name]
        as_unknown = details
        for beta_id, unknown_id in AS_UNKNOWN.items():
            as_unknown = as_unknown.replace(repr(beta_id), repr(unknown_id))
        assert (unknown_code, unknown_details) == (code, as_unknown), (name, details, unknown_details)
    assert world.available(BETA) == beta_before


def _end_and_expire(
    client: TariffClient, customer: str, contract: str
) -> tuple[tuple[grpc.StatusCode, str], tuple[grpc.StatusCode, str]]:
    """EndContract of `contract` at 1970-01-01T00:00:01Z and ExpireGrant of `customer`'s grant `no-grant` then: each
    call's status and message."""
    at = Timestamp(seconds=1)
    end = contracts_pb2.EndContractRequest(contract_id=contract, ending_before=at)
    expire = contracts_pb2.ExpireGrantRequest(customer_id=customer, grant_id="no-grant", expires_at=at)
    return code_of(lambda: client.contracts.EndContract(end)), code_of(lambda: client.contracts.ExpireGrant(expire))


def test_a_restricted_admin_key_ends_its_own_customers_contract_and_grant_but_no_other(world: World) -> None:
    """EndContract and ExpireGrant are scoped as GrantCredits and AddOverride are: acme-admin naming beta's contract
    or beta's customer is PERMISSION_DENIED naming the key (the foreign and unknown ids are checked alike above);
    naming acme's own it passes the key's check and reaches the call's rules: an end at 1970 on acme-2026 is
    INVALID_ARGUMENT naming ending_before (not after its start), an unknown grant of acme NOT_FOUND naming it. Nothing
    changes: acme-2026 stays open-ended, beta's balance as it was."""
    beta_before = world.available(BETA)
    with world.client("acme-admin") as admin_acme:
        ended, expired = _end_and_expire(admin_acme, BETA, "beta-2026")
        assert ended[0] == expired[0] == grpc.StatusCode.PERMISSION_DENIED, (ended, expired)
        assert "acme-admin" in ended[1] and "acme-admin" in expired[1], (ended, expired)
        ended, expired = _end_and_expire(admin_acme, ACME, "acme-2026")
        assert ended[0] == grpc.StatusCode.INVALID_ARGUMENT and "ending_before" in ended[1], ended
        assert expired[0] == grpc.StatusCode.NOT_FOUND and "no-grant" in expired[1], expired
        acme = admin_acme.contracts.GetContract(contracts_pb2.GetContractRequest(id="acme-2026"))
    assert not acme.HasField("ending_before")
    assert world.available(BETA) == beta_before


def test_another_customers_deleted_rule_id_is_taken_and_the_refusal_names_only_the_id(world: World) -> None:
    """README: alert rule ids are server-wide, and a deleted rule's id is never used again. A restricted admin key
    creating a rule for its customer under beta's deleted rule's id gets ALREADY_EXISTS saying the id's rule was
    deleted: not whose it was, not its threshold; nothing is created."""
    with world.client("acme-admin") as admin_acme:
        code, details = code_of(
            lambda: admin_acme.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(
                    id=BETA_DELETED_RULE, customer_id=ACME, type=alerts_pb2.LOW_BALANCE, threshold="60000"
                )
            )
        )
        listed = [r.id for r in admin_acme.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules]
    assert code == grpc.StatusCode.ALREADY_EXISTS, (code, details)
    assert details == (
        f"alert rule {BETA_DELETED_RULE!r} was deleted, and a deleted rule's id is not used again: create the rule "
        "under another id"
    )
    assert BETA_DELETED_RULE not in listed and BETA_RULE not in listed


def test_a_restricted_keys_event_naming_no_customer_is_refused_as_required_not_as_customer_empty(
    world: World,
) -> None:
    """A restricted key must name one of its customers on every event, as on every request: an event with no
    customer_id refuses the batch whole (PERMISSION_DENIED, nothing applied) in the words the gate and
    AuthorizeBatches use for a missing customer ("is restricted to some customers: ... is required"). It said
    "may not touch customer ''", naming no customer."""
    batch = demo_batch("no-customer", "no-customer", 2)
    batch.events[1].customer_id = ""
    expected = (
        "events[1]: key 'acme-meter' is restricted to some customers: the event's customer_id is required; "
        "nothing in this batch was applied"
    )
    with world.client("acme-meter") as meter:
        assert code_of(lambda: meter.usage.IngestUsageBatch(batch)) == (grpc.StatusCode.PERMISSION_DENIED, expected)
        assert code_of(lambda: list(meter.usage.IngestUsage(iter([batch]), timeout=30))) == (
            grpc.StatusCode.PERMISSION_DENIED,
            expected,
        )
    with world.server.client() as admin:  # nothing of it was recorded: resent by the admin, the acme event is new
        ack = admin.usage.IngestUsageBatch(batch)
    assert (ack.accepted, ack.duplicates, len(ack.rejected)) == (1, 0, 1), ack
