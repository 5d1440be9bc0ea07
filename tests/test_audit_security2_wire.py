"""Security audit over the wire, second pass: README "### API keys" and "### Listening and TLS", alerts.proto and
pricing.proto's AuditEntry.actor, against real servers started with keys (tests/test_audit_security_wire.py and
tests/test_server_auth.py cover the first pass; nothing here repeats them).

A key restricted to customer acme tries to learn about customer beta through the paths the first pass left out:
reservation ids on the streaming holds, alert rules and alerts (a rule for every customer included), alert rule
ids, page tokens of another customer's lists, request bytes that name two customers, the audit log's actor, a
client certificate of another CA, and the CLI's key handling.
"""

from __future__ import annotations

import functools
import re
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import TariffClient
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server import auth
from tests import test_server_auth
from tests.audit_fixtures import varint
from tests.demo_usage import ACME, CHEAP, COMPLEX, demo_batch
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess
from tests.test_cli import tariff
from tests.test_server_auth import BETA, CHANNEL_OPTIONS, Keys, _openssl, add_beta, code_of

KEYS: dict[str, tuple[str, list[str] | None]] = {
    "ops-admin": ("admin", None),
    "meter": ("ingest", None),
    "finance": ("read", None),
    "acme-meter": ("ingest", [ACME]),
    "acme-portal": ("read", [ACME]),
    "acme-admin": ("admin", [ACME]),
}
# The throw-away CA and certificates of tests/test_server_auth.py, as a fixture of this module too.
pki = test_server_auth.pki
BETA_HOLDS = ("beta-hold-1", "beta-hold-2")
BETA_RULE = "beta-low"
EVERYONE_RULE = "everyone-low"


class World:
    def __init__(self, server: ServerProcess, keys: Keys) -> None:
        self.server, self.keys = server, keys

    def client(self, key_name: str, **kwargs: object) -> TariffClient:
        return self.server.client(api_key=self.keys.key[key_name], **kwargs)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """The demo server with the keys above. Beta: 100 credits, 3 events, two holds (BETA_HOLDS), a LOW_BALANCE
    rule of its own (fired) and one for every customer (fired for beta, then for acme once acme used some)."""
    root: Path = tmp_path_factory.mktemp("audit-security2")
    keys = Keys(root / "keys.json", KEYS)
    server = ServerProcess(root / "data", demo=True, extra_args=keys.args, api_key=keys.key["ops-admin"])
    server.start()
    try:
        with server.client() as admin:
            add_beta(admin)
            for rule_id, scope in ((BETA_RULE, {"customer_id": BETA}), (EVERYONE_RULE, {"all": True})):
                admin.alerts.CreateAlert(
                    alerts_pb2.CreateAlertRequest(id=rule_id, type=alerts_pb2.LOW_BALANCE, threshold="60000", **scope)
                )
            assert admin.usage.IngestUsageBatch(demo_batch("beta-usage", "beta-tx", 3, customer=BETA)).accepted == 3
            for hold in BETA_HOLDS:
                held = admin.balance.Authorize(
                    balance_pb2.AuthorizeRequest(
                        customer_id=BETA, event_type="ai_action", dimensions=CHEAP, reserve=True, reservation_id=hold
                    )
                )
                assert held.allowed and held.reservation_id == hold
            assert admin.usage.IngestUsageBatch(demo_batch("acme-usage", "acme-tx", 1)).accepted == 1
        yield World(server, keys)
    finally:
        server.stop()


def beta_balance(world: World) -> balance_pb2.Balance:
    with world.server.client() as admin:
        balance: balance_pb2.Balance = admin.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=BETA))
    return balance


def _len_delimited(field: int, data: bytes) -> bytes:
    """A length-delimited field on the wire (protobuf wire type 2)."""
    return varint(field << 3 | 2) + varint(len(data)) + data


def _raw_call(world: World, method: str, blob: bytes, key_name: str, streaming: bool) -> tuple[grpc.StatusCode, str]:
    """Sends request bytes as they are (no client-side parsing) and returns the call's status and message."""
    metadata = [("authorization", f"Bearer {world.keys.key[key_name]}")]
    with grpc.insecure_channel(world.server.target, options=CHANNEL_OPTIONS) as channel:
        try:
            if streaming:
                bidi = channel.stream_stream(method, request_serializer=bytes, response_deserializer=bytes)
                list(bidi(iter([blob]), metadata=metadata, timeout=10))
            else:
                unary = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
                unary(blob, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


# ---------------------------------------------------------------------------------------------
# Reservation ids on the streaming holds


def test_reservation_ids_are_per_customer_on_authorize_batches_and_authorize_stream(world: World) -> None:
    """README: reservation ids are per customer (another customer's tell a restricted key nothing). acme's key holds
    under beta's ids, with other requests than beta's, through both streams: its own holds, no conflict; beta's
    holds stay as they were."""
    held_before = beta_balance(world).credits_held
    with world.client("acme-meter") as meter:
        batch = balance_pb2.AuthorizeBatch(
            requests=[
                balance_pb2.AuthorizeRequest(
                    request_id="b",
                    customer_id=ACME,
                    event_type="ai_action",
                    dimensions=COMPLEX,
                    reserve=True,
                    reservation_id=BETA_HOLDS[0],
                )
            ]
        )
        (answered,) = list(meter.balance.AuthorizeBatches(iter([batch]), timeout=10))
        streamed = list(
            meter.balance.AuthorizeStream(
                iter(
                    [
                        balance_pb2.AuthorizeRequest(
                            request_id="s",
                            customer_id=ACME,
                            event_type="ai_action",
                            dimensions=COMPLEX,
                            reserve=True,
                            reservation_id=BETA_HOLDS[1],
                        )
                    ]
                ),
                timeout=10,
            )
        )
        got = [(r.allowed, r.reason, r.reservation_id, r.estimated_cost) for r in [*answered.responses, *streamed]]
        assert got == [(True, "OK", BETA_HOLDS[0], "5"), (True, "OK", BETA_HOLDS[1], "5")], got
        for hold in BETA_HOLDS:
            released = meter.balance.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id=hold)
            )
            assert released.released_amount == "5", (hold, released)
    assert beta_balance(world).credits_held == held_before


def test_an_event_naming_another_customers_reservation_is_told_only_unknown_whatever_became_of_it(world: World) -> None:
    """README "Settling": an event whose reservation_id is not an open reservation of its customer (another
    customer's included) is rated, with a notice. For acme's key, beta's held, released and settled reservations
    must read exactly as one never made (NOTICE_RESERVATION_UNKNOWN, same words): not ALREADY_SETTLED or RELEASED,
    which would tell that beta used the id; ReleaseReservation under acme answers NOT_FOUND alike."""
    with world.server.client() as admin:
        for hold in ("beta-held", "beta-released", "beta-settled"):
            admin.balance.Authorize(
                balance_pb2.AuthorizeRequest(
                    customer_id=BETA, event_type="ai_action", dimensions=CHEAP, reserve=True, reservation_id=hold
                )
            )
        admin.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id=BETA, reservation_id="beta-released")
        )
        settling = demo_batch("beta-settles", "beta-settles", 1, customer=BETA)
        settling.events[0].reservation_id = "beta-settled"
        assert not admin.usage.IngestUsageBatch(settling).notices, "beta's own event settles its hold"
    before = beta_balance(world)
    ids = {"held": "beta-held", "released": "beta-released", "settled": "beta-settled", "never": "never-made"}
    notices, releases = {}, {}
    with world.client("acme-meter") as meter:
        for state, reservation_id in ids.items():
            batch = demo_batch(f"acme-names-{state}", f"acme-names-{state}", 1)
            batch.events[0].reservation_id = reservation_id
            ack = meter.usage.IngestUsageBatch(batch)
            assert ack.accepted == 1, (state, ack)
            (notice,) = ack.notices
            notices[state] = (notice.reason, notice.message.replace(repr(reservation_id), "ID"))
            releases[state] = code_of(
                functools.partial(
                    meter.balance.ReleaseReservation,
                    balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id=reservation_id),
                )
            )
            releases[state] = (releases[state][0], releases[state][1].replace(reservation_id, "ID"))
    assert notices["never"][0] == usage_pb2.NOTICE_RESERVATION_UNKNOWN, notices
    assert all(notice == notices["never"] for notice in notices.values()), notices
    assert releases["never"][0] == grpc.StatusCode.NOT_FOUND, releases
    assert all(release == releases["never"] for release in releases.values()), releases
    assert beta_balance(world).credits_held == before.credits_held


def test_another_customers_ended_reservation_ids_are_free_for_a_new_hold_on_every_path(world: World) -> None:
    """Beta's released and settled reservation ids, held anew by acme's key (Authorize, AuthorizeStream,
    AuthorizeBatches): each is a fresh hold of acme's, not "already released" or "already settled" (which would tell
    acme's key what beta did with the id)."""
    with world.server.client() as admin:
        for ended in ("beta-ended-1", "beta-ended-2", "beta-ended-3"):
            admin.balance.Authorize(
                balance_pb2.AuthorizeRequest(
                    customer_id=BETA, event_type="ai_action", dimensions=CHEAP, reserve=True, reservation_id=ended
                )
            )
        admin.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id=BETA, reservation_id="beta-ended-1")
        )
        settling = demo_batch("beta-ends", "beta-ends", 2, customer=BETA)
        settling.events[0].reservation_id, settling.events[1].reservation_id = "beta-ended-2", "beta-ended-3"
        assert not admin.usage.IngestUsageBatch(settling).notices

    def hold(reservation_id: str) -> balance_pb2.AuthorizeRequest:
        return balance_pb2.AuthorizeRequest(
            request_id=reservation_id,
            customer_id=ACME,
            event_type="ai_action",
            dimensions=COMPLEX,
            reserve=True,
            reservation_id=reservation_id,
        )

    with world.client("acme-meter") as meter:
        answers = [
            meter.balance.Authorize(hold("beta-ended-1")),
            *meter.balance.AuthorizeStream(iter([hold("beta-ended-2")]), timeout=10),
            *next(
                iter(
                    meter.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[hold("beta-ended-3")])]))
                )
            ).responses,
        ]
        got = [(a.reservation_id, a.allowed, a.reason, a.estimated_cost, a.message) for a in answers]
        assert got == [(f"beta-ended-{i}", True, "OK", "5", "") for i in (1, 2, 3)], got
        for i in (1, 2, 3):
            released = meter.balance.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id=f"beta-ended-{i}")
            )
            assert released.released_amount == "5", (i, released)


def test_an_unknown_customer_on_the_streams_is_refused_to_a_restricted_key_like_beta_not_answered_in_band(
    world: World,
) -> None:
    """README: a restricted key's every request of AuthorizeStream and AuthorizeBatches must name its customers, and
    any other id, an unknown one too, is PERMISSION_DENIED (WatchBalance alike): an unknown id answered in-band as
    UNKNOWN_CUSTOMER would tell the key which ids are customers. The wording differs only by the id sent."""

    def request(customer: str) -> balance_pb2.AuthorizeRequest:
        return balance_pb2.AuthorizeRequest(request_id="r", customer_id=customer, event_type="ai_action")

    def refusals(meter: TariffClient, customer: str) -> list[tuple[grpc.StatusCode, str]]:
        stream = functools.partial(meter.balance.AuthorizeStream, iter([request(customer)]), timeout=10)
        batch = balance_pb2.AuthorizeBatch(requests=[request(ACME), request(customer)])
        batches = functools.partial(meter.balance.AuthorizeBatches, iter([batch]), timeout=10)
        watch = functools.partial(
            meter.balance.WatchBalance, balance_pb2.WatchBalanceRequest(customer_id=customer), timeout=10
        )
        return [
            code_of(lambda: list(stream())),
            code_of(lambda: list(batches())),
            code_of(lambda: next(iter(watch()))),
        ]

    with world.client("acme-meter") as meter:
        answers = {customer: refusals(meter, customer) for customer in (BETA, "ghost")}
    assert {c: [code for code, _ in a] for c, a in answers.items()} == {
        c: [grpc.StatusCode.PERMISSION_DENIED] * 3 for c in (BETA, "ghost")
    }, answers
    assert [d.replace("'ghost'", "'beta'") for _, d in answers["ghost"]] == [d for _, d in answers[BETA]], answers


def test_another_customers_contract_is_refused_in_the_words_of_a_contract_that_does_not_exist(world: World) -> None:
    """The gate refuses a restricted key a contract it may not touch, and an unknown contract alike, on every RPC that
    names one (reads and changes): the wording differs only by the id sent, so contract ids are not probed."""

    def refusals(client: TariffClient, contract_id: str) -> list[tuple[grpc.StatusCode, str]]:
        grant = contracts_pb2.Grant(id="g-probe", contract_id=contract_id, kind=contracts_pb2.PREPAID, amount="1")
        calls = [
            functools.partial(client.contracts.GetContract, contracts_pb2.GetContractRequest(id=contract_id)),
            functools.partial(client.contracts.AddOverride, contracts_pb2.AddOverrideRequest(contract_id=contract_id)),
            functools.partial(
                client.contracts.SetTopUpPolicy, contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id)
            ),
            functools.partial(client.contracts.GrantCredits, contracts_pb2.GrantCreditsRequest(grant=grant)),
        ]
        return [code_of(call) for call in calls]

    with world.client("acme-admin") as admin_acme:
        foreign, unknown = refusals(admin_acme, "beta-2026"), refusals(admin_acme, "no-such-contract")
    assert [code for code, _ in foreign] == [grpc.StatusCode.PERMISSION_DENIED] * 4, foreign
    assert [d.replace("no-such-contract", "beta-2026") for _, d in unknown] == [d for _, d in foreign], unknown
    assert all("acme-admin" in d and "Beta Ltd" not in d for _, d in foreign), foreign


def test_ones_own_revenue_reports_product_lines_hold_no_other_customers_revenue(world: World) -> None:
    """GetRevenueReport(customer_id=acme) for acme's key: its by-product lines (customer_id empty) sum acme's
    recognised revenue only. Beta's recognised revenue shows in the all-customer report alone, exactly."""
    start, end = Timestamp(seconds=0), Timestamp(seconds=2**32)
    with world.client("acme-portal") as portal:
        own = portal.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(customer_id=ACME, period_start=start, period_end=end)
        )
    with world.server.client() as admin:
        everyone = admin.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=start, period_end=end)
        )

    def recognized(lines: Iterable[invoices_pb2.RevenueLine], customer: str = "") -> Decimal:
        return sum((Decimal(line.recognized) for line in lines if line.customer_id == customer), Decimal(0))

    assert own.lines and {line.customer_id for line in own.lines} == {""}, own
    beta_recognized = recognized(everyone.customer_lines, BETA)
    assert beta_recognized > 0, everyone
    assert recognized(own.lines) == recognized(own.customer_lines, ACME) == recognized(everyone.customer_lines, ACME)
    assert recognized(everyone.lines) - recognized(own.lines) == beta_recognized, (own, everyone)


# ---------------------------------------------------------------------------------------------
# Alerts and alert rules


def test_a_restricted_key_lists_only_the_rules_watching_its_customers(world: World) -> None:
    with world.client("acme-portal") as portal:
        listed = portal.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest())
    assert [(r.id, r.all, r.customer_id) for r in listed.rules] == [(EVERYONE_RULE, True, "")], listed
    with world.server.client() as admin:
        everything = admin.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest())
    assert {r.id for r in everything.rules} >= {BETA_RULE, EVERYONE_RULE}


def test_a_restricted_keys_alert_stream_skips_other_customers_alerts_even_from_a_rule_for_everyone(
    world: World,
) -> None:
    """alerts.proto: a key restricted to some customers gets only their alerts (seqs are server-wide). Beta's
    alerts, from its own rule and from the rule for every customer, are not sent to acme's key; acme's is."""
    with world.server.client() as admin:
        every = list(_first_alerts(admin, 3))
    assert sorted((a.customer_id, a.rule_id) for a in every) == [
        (ACME, EVERYONE_RULE),
        (BETA, BETA_RULE),
        (BETA, EVERYONE_RULE),
    ], every
    with world.client("acme-portal") as portal:
        (seen,) = _first_alerts(portal, 1)
    mine = next(a for a in every if a.customer_id == ACME)
    assert seen == mine
    assert BETA not in seen.message and "beta" not in str(seen.details)


def _first_alerts(client: TariffClient, count: int) -> list[alerts_pb2.Alert]:
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=10)
    found = [alert for _, alert in zip(range(count), stream, strict=False)]
    stream.cancel()
    assert len(found) == count, found
    return found


def test_another_customers_rule_id_as_a_page_token_is_refused_like_a_made_up_one(world: World) -> None:
    """A restricted key learns nothing of which rule ids exist from ListAlertRules' page tokens."""
    with world.client("acme-portal") as portal:
        answers = [
            code_of(
                functools.partial(
                    portal.alerts.ListAlertRules, alerts_pb2.ListAlertRulesRequest(page_size=1, page_token=token)
                )
            )
            for token in (BETA_RULE, "no-such-rule")
        ]
    assert answers[0] == answers[1], answers
    assert answers[0][0] == grpc.StatusCode.INVALID_ARGUMENT and BETA_RULE not in answers[0][1], answers


def test_alert_rule_ids_are_server_wide_a_taken_id_says_only_that(world: World) -> None:
    """Like contract and grant ids (README "API keys"): a restricted admin key creating a rule for its customer under
    beta's rule id gets ALREADY_EXISTS naming only the id: not beta, not its threshold; nothing is created."""
    with world.client("acme-admin") as admin_acme:
        code, details = code_of(
            lambda: admin_acme.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(
                    id=BETA_RULE, customer_id=ACME, type=alerts_pb2.SPEND_THRESHOLD, threshold="7"
                )
            )
        )
    assert code == grpc.StatusCode.ALREADY_EXISTS, (code, details)
    assert f"{BETA_RULE!r}" in details and BETA not in details.replace(BETA_RULE, "") and "60000" not in details
    with world.server.client() as admin:
        rules = {r.id: r for r in admin.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules}
    assert (rules[BETA_RULE].customer_id, rules[BETA_RULE].threshold) == (BETA, "60000")


# ---------------------------------------------------------------------------------------------
# Page tokens and request bytes


def test_another_customers_explain_page_token_is_refused_for_ones_own_line(world: World) -> None:
    """ExplainLineItem's tokens are bound to the customer, period and line they page: beta's token, sent by acme's
    key with acme's line, is INVALID_ARGUMENT worded as for a made-up token, and shows no event of beta's."""
    with world.server.client() as admin:
        period = admin.get_balance(BETA).period_start
        (line,) = admin.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=BETA)).lines
        line_id = line.line_id
        first = admin.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id=BETA, period_start=period, line_id=line_id, page_size=1)
        )
    assert first.next_page_token, "beta has three events: a page of one leaves a token"
    with world.client("acme-portal") as portal:
        answers = [
            code_of(
                functools.partial(
                    portal.invoices.ExplainLineItem,
                    invoices_pb2.ExplainLineItemRequest(
                        customer_id=ACME, period_start=period, line_id=line_id, page_size=1, page_token=token
                    ),
                )
            )
            for token in (first.next_page_token, "bm90LWEtdG9rZW4")
        ]
    assert [code for code, _ in answers] == [grpc.StatusCode.INVALID_ARGUMENT] * 2, answers
    assert "beta" not in answers[0][1] and first.next_page_token not in answers[0][1], answers


def test_a_customer_field_sent_twice_is_read_as_protobuf_reads_it_the_last_one(world: World) -> None:
    """Request bytes naming acme then beta in one message's customer_id (protobuf: the last wins) are refused to
    acme's key on every path that checks customers (the gate's and the kernel's parse), and nothing reaches beta."""
    before = beta_balance(world)
    event = demo_batch("twice", "twice", 1).events[0]
    event_bytes = event.SerializeToString() + usage_pb2.UsageEvent(customer_id=BETA).SerializeToString()
    batch = _len_delimited(1, b"twice") + _len_delimited(2, event_bytes)
    assert usage_pb2.UsageBatch.FromString(batch).events[0].customer_id == BETA
    request = (
        balance_pb2.AuthorizeRequest(
            request_id="q", customer_id=ACME, event_type="ai_action", dimensions=CHEAP, reserve=True
        ).SerializeToString()
        + balance_pb2.AuthorizeRequest(customer_id=BETA).SerializeToString()
    )
    calls = {
        "IngestUsageBatch": ("/tariff.v1.UsageService/IngestUsageBatch", batch, False),
        "IngestUsage": ("/tariff.v1.UsageService/IngestUsage", batch, True),
        "Authorize": ("/tariff.v1.BalanceService/Authorize", request, False),
        "AuthorizeStream": ("/tariff.v1.BalanceService/AuthorizeStream", request, True),
        "AuthorizeBatches": ("/tariff.v1.BalanceService/AuthorizeBatches", _len_delimited(1, request), True),
    }
    for what, (method, blob, streaming) in calls.items():
        code, details = _raw_call(world, method, blob, "acme-meter", streaming)
        assert code == grpc.StatusCode.PERMISSION_DENIED, (what, code, details)
        assert "'beta'" in details and "acme-meter" in details, (what, details)
    assert beta_balance(world) == before


# ---------------------------------------------------------------------------------------------
# Statuses and the audit log's actor


def test_unauthenticated_comes_before_any_role_or_customer_check_and_says_why(world: World) -> None:
    """A missing key and an unknown one are UNAUTHENTICATED on an admin-only RPC about another customer too (the
    caller is not told what the RPC would need); a known key lacking the role is PERMISSION_DENIED naming the role
    needed, and a restricted admin key on an RPC about no one customer, naming why."""
    request = invoices_pb2.ClosePeriodRequest(customer_id=BETA)
    with TariffClient(world.server.target, channel_options=CHANNEL_OPTIONS, default_timeout_s=10) as keyless:
        missing = code_of(functools.partial(keyless.invoices.ClosePeriod, request))
    with TariffClient(
        world.server.target, api_key="not-a-key", channel_options=CHANNEL_OPTIONS, default_timeout_s=10
    ) as unknown:
        wrong = code_of(functools.partial(unknown.invoices.ClosePeriod, request))
    assert missing == (grpc.StatusCode.UNAUTHENTICATED, "missing API key: send 'authorization: Bearer KEY'")
    assert wrong == (grpc.StatusCode.UNAUTHENTICATED, "invalid API key")
    with world.client("acme-meter") as meter:
        weak = code_of(functools.partial(meter.invoices.ClosePeriod, request))
    assert weak == (grpc.StatusCode.PERMISSION_DENIED, "key 'acme-meter' has role 'ingest'; ClosePeriod needs admin")
    with world.client("acme-admin") as admin_acme:
        audit = code_of(functools.partial(admin_acme.pricing.GetAuditLog, pricing_pb2.GetAuditLogRequest()))
    assert audit == (
        grpc.StatusCode.PERMISSION_DENIED,
        "key 'acme-admin' is restricted to some customers; GetAuditLog is not about one customer",
    )


def _readme_role_row(role: str) -> set[str]:
    """The RPC names README's "API keys" table lists for a role (backticked words that are method names)."""
    (row,) = [line for line in (REPO_ROOT / "README.md").read_text().splitlines() if line.startswith(f"| {role} |")]
    return set(re.findall(r"`(\w+)`", row)) & {method for _, method, _, _ in _tariff_methods()}


def _tariff_methods() -> list[tuple[str, str, bool, bool]]:
    """(service full name, method, client streaming, server streaming) of every Tariff RPC."""
    return [
        (service.full_name, method.name, method.client_streaming, method.server_streaming)
        for module in (alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2)
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


def _refused_for_role(world: World, key_name: str, path: str, client_streaming: bool, server_streaming: bool) -> bool:
    """Whether an empty request on `path` with the key is PERMISSION_DENIED for the key's role (anything else, an
    answer or another refusal of the empty request, is admitted by the gate)."""
    metadata = [("authorization", f"Bearer {world.keys.key[key_name]}")]
    with grpc.insecure_channel(world.server.target, options=CHANNEL_OPTIONS) as channel:
        kind = ("stream_" if client_streaming else "unary_") + ("stream" if server_streaming else "unary")
        call = getattr(channel, kind)(path, request_serializer=bytes, response_deserializer=bytes)
        request: object = iter([b""]) if client_streaming else b""
        try:
            answer = call(request, metadata=metadata, timeout=10)
            if server_streaming:
                next(iter(answer), None)
                answer.cancel()
        except grpc.RpcError as e:
            return bool(e.code() == grpc.StatusCode.PERMISSION_DENIED and "has role" in (e.details() or ""))
    return False


@pytest.mark.parametrize(("key_name", "role"), [("finance", "read"), ("meter", "ingest")])
def test_each_role_may_call_exactly_the_rpcs_readme_lists_for_it(world: World, key_name: str, role: str) -> None:
    """README's role table against the wire: every Tariff RPC called with an empty request by an unrestricted key of
    the role is refused for the role (PERMISSION_DENIED "has role") exactly when README does not list it."""
    admitted = {
        method
        for service, method, client_streaming, server_streaming in _tariff_methods()
        if not _refused_for_role(world, key_name, f"/{service}/{method}", client_streaming, server_streaming)
    }
    assert admitted == _readme_role_row(role), (
        sorted(admitted - _readme_role_row(role)),
        sorted(_readme_role_row(role) - admitted),
    )


def test_the_audit_log_names_the_key_and_the_person_it_acts_for_and_a_restricted_key_only(world: World) -> None:
    """AuditEntry.actor: a restricted admin key's change is recorded under its name; an unrestricted key naming a
    person is `PERSON via KEY`, also when the person's name is another key's (the key can never be hidden)."""
    with world.client("acme-admin") as admin_acme:
        admin_acme.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(id="acme-own", customer_id=ACME, type=alerts_pb2.CREDITS_EXHAUSTED)
        )
    with world.client("ops-admin", actor="acme-admin") as posing:
        posing.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(id="acme-posed", customer_id=ACME, type=alerts_pb2.CREDITS_EXHAUSTED)
        )
    with world.client("ops-admin", actor="alice") as alice:
        alice.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(id="acme-alice", customer_id=ACME, type=alerts_pb2.CREDITS_EXHAUSTED)
        )
    with world.server.client() as admin:
        entries = admin.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target="alert/acme-", page_size=100))
        by_key = admin.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(actor="acme-admin", page_size=100))
    assert [(e.target, e.actor) for e in entries.entries] == [
        ("alert/acme-own", "acme-admin"),
        ("alert/acme-posed", "acme-admin via ops-admin"),
        ("alert/acme-alice", "alice via ops-admin"),
    ], entries
    # Filtering by a key's name finds what that key did and what was done in that name: the `via` still tells.
    assert [(e.target, e.actor) for e in by_key.entries if e.target.startswith("alert/")] == [
        ("alert/acme-own", "acme-admin"),
        ("alert/acme-posed", "acme-admin via ops-admin"),
    ], by_key


# ---------------------------------------------------------------------------------------------
# TLS


def test_mutual_tls_refuses_a_certificate_of_another_ca_and_a_certificate_grants_no_customer(
    server_factory: ServerFactory, pki: Path, tmp_path: Path
) -> None:
    """README "Listening and TLS": clients must present a certificate signed by --tls-client-ca (one of another CA
    is refused at the handshake, a valid key or not), and a certificate is not a key: a restricted key with a valid
    certificate is as restricted as without TLS."""
    other = tmp_path / "other"
    other.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=another CA", cwd=other)  # fmt: skip
    (other / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "client.key", "-out", "client.csr",
             "-subj", "/CN=tariff client", cwd=other)  # fmt: skip
    _openssl("x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "client.pem", "-days", "2", "-extfile", "client.ext", cwd=other)  # fmt: skip
    keys = Keys(tmp_path / "keys.json", {"ops": ("admin", None), "acme-portal": ("read", [ACME])})
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    server = server_factory(
        demo=True,
        extra_args=[*tls, "--tls-client-ca", str(pki / "ca.pem"), *keys.args],
        name="mtls2",
        start=False,
        api_key=keys.key["ops"],
    )
    server.tls_root_cert = pki / "ca.pem"
    server.tls_client_cert = pki / "client.pem"
    server.tls_client_key = pki / "client.key"
    server.start()
    with server.client() as admin:
        add_beta(admin)

    def client(key: str, cert_dir: Path) -> TariffClient:
        return TariffClient(
            server.target,
            api_key=keys.key[key],
            root_certificates=(pki / "ca.pem").read_bytes(),
            client_certificate_chain=(cert_dir / "client.pem").read_bytes(),
            client_private_key=(cert_dir / "client.key").read_bytes(),
            channel_options=CHANNEL_OPTIONS,
            default_timeout_s=5,
        )

    with client("ops", other) as foreign:
        code, _ = code_of(lambda: foreign.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME)))
        assert code == grpc.StatusCode.UNAVAILABLE, code
    with client("acme-portal", pki) as portal:
        assert portal.get_balance(ACME).customer_id == ACME
        code, details = code_of(lambda: portal.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=BETA)))
        assert (code, details) == (
            grpc.StatusCode.PERMISSION_DENIED,
            "customer_id: key 'acme-portal' may not touch customer 'beta'",
        )


# ---------------------------------------------------------------------------------------------
# The CLI's keys


def test_the_cli_never_echoes_a_refused_key(world: World) -> None:
    """A wrong key on the command line or in TARIFF_API_KEY: exit 1 with UNAUTHENTICATED, and the key it sent appears
    nowhere in what it prints (logs and terminals keep stderr)."""
    sent = "wrong-key-" + "x" * 30
    for args, env in ((["--api-key", sent], None), ([], {"TARIFF_API_KEY": sent})):
        done = tariff(world.server, "balance", ACME, *args, check=False, env=env)
        assert done.returncode == 1, done
        assert done.stderr == "tariff: UNAUTHENTICATED: invalid API key\n", done.stderr
        assert sent not in done.stdout + done.stderr
    refused = tariff(world.server, "balance", BETA, "--api-key", world.keys.key["acme-portal"], check=False)
    assert refused.returncode == 1
    assert refused.stderr == "tariff: PERMISSION_DENIED: customer_id: key 'acme-portal' may not touch customer 'beta'\n"
    assert world.keys.key["acme-portal"] not in refused.stdout + refused.stderr


def test_keys_new_makes_an_existing_readable_key_file_private_again(tmp_path: Path) -> None:
    """README: the key file is created 0600; appending a key to a file someone left readable to all leaves it 0600
    too (the file guards every key), with the earlier entries kept."""
    path = tmp_path / "keys.toml"
    path.write_text('[[keys]]\nname = "ops"\nsha256 = "' + "a" * 64 + '"\nrole = "admin"\n')
    path.chmod(0o644)
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "keys", "new", "--name", "acme-portal", "--role", "read",
         "--customers", ACME, "--file", str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = auth.load_keys(path)
    assert loaded == {
        "a" * 64: auth.Identity("ops", "admin", None),
        auth.key_hash(done.stdout.strip()): auth.Identity("acme-portal", "read", frozenset({ACME})),
    }


def test_keys_new_on_a_key_file_it_cannot_read_says_so_in_one_line_and_prints_no_key(tmp_path: Path) -> None:
    """`tariff keys new --file` naming what cannot be a key file (here a directory): like the server's start with
    such a file, one line naming the file and why, exit 2, and no key printed (none is usable), not a traceback."""
    path = tmp_path / "keys.json"
    path.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "keys", "new", "--name", "ops", "--role", "admin", "--file", str(path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done
    assert done.stderr.startswith(f"tariff keys new: {path}: cannot read the key file: "), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "Traceback" not in done.stderr, done.stderr
    assert not [p for p in tmp_path.iterdir() if p != path], "nothing else written beside it"


def test_a_key_file_that_is_not_utf8_stops_the_server_with_exit_2_before_anything_is_opened(tmp_path: Path) -> None:
    """README: a key file the server cannot use stops `tariff serve` with exit code 2 and a one-line message, before
    anything is opened. A key file saved as UTF-16 (what PowerShell's `>` writes) is such a file."""
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}', encoding="utf-16")
    command = ["serve", "--listen", "127.0.0.1:1", "--data-dir", str(tmp_path / "d"), "--api-keys", str(keys)]
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", *command],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 2, done
    assert f"{keys}: cannot read the key file: not UTF-8 text" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    assert not (tmp_path / "d").exists(), "nothing is created before the keys are known good"
