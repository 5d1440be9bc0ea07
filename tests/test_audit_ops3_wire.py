"""Acceptance audit 3 as a demanding operator, over the wire: README "### API keys", "### Listening and TLS",
"### Limits and backpressure (defaults)", "### Shutdown", "### The operator's log" and "### Metrics and traces",
against proto/ comments and real server processes on 127.0.0.1.

What test_server_auth.py, test_audit_security_wire.py, test_server_limits.py, test_audit_obs_wire.py,
test_audit_ops2_wire.py, test_server_telemetry.py and test_server_startup.py check is not repeated. Here: every
answer the server sends stays within its own --message-mb-max (paged lists and the audit log, whose pages used to
be cut at 4 MiB whatever the limit, or not at all; an AuthorizeBatches answer larger than its request); revoking a
key (its entry removed, the server restarted) on every kind of call, what it had acknowledged kept; holds answered
on authorize streams during a stop's grace, durable; an IPv6 loopback listen address; the concurrency limit on
every kind of stream; the operator's log's admin change lines against the audit log (a top-up policy had none).
Demo prices (server/demo.py): a simple summary on gpt-4o-mini costs 0.5 credits; acme holds 50,000.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import grpc
from google.protobuf import timestamp_pb2
from grpc_health.v1 import health_pb2
from tariff import ResourceExhausted, TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2

from tests.demo_usage import ACME, CHEAP, demo_batch
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess, free_port, wait_for, wait_for_log
from tests.test_audit_ops2_wire import Keyed, keyed, new_key, tariff  # noqa: F401  (keyed: a fixture)
from tests.test_server_auth import Bidi as Duplex
from tests.test_server_limits import Bidi
from tests.test_server_telemetry import sample, scrape

MIB = 1024 * 1024


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except TariffError as exc:
        return exc.code, exc.details
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


# ---------------------------------------------------------------------------------------------
# --message-mb-max bounds what the server sends as well as what it reads


def big_customer(client: TariffClient, customer_id: str) -> None:
    """A customer of about 34 KB (a name of 256 bytes, 64 attributes of 256-byte keys and values, the most
    contracts.proto allows), whose audit entry is about as large."""
    attributes = {f"{i:02d}".ljust(256, "k"): "v" * 256 for i in range(64)}
    request = contracts_pb2.CreateCustomerRequest(id=customer_id, name="n" * 256, attributes=attributes)
    client.contracts.CreateCustomer(request)


def all_customers(client: TariffClient) -> list[str]:
    listed: list[str] = []
    token = ""
    while True:
        page = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=1000, page_token=token))
        assert page.customers, "a page is never empty"
        listed.extend(c.id for c in page.customers)
        token = page.next_page_token
        if not token:
            return listed


def all_audit_targets(client: TariffClient) -> list[str]:
    targets: list[str] = []
    after = 0
    while True:
        page = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=after, page_size=1000))
        assert page.entries, "a page is never empty"
        targets.extend(e.target for e in page.entries)
        after = page.next_after_seq
        if not after:
            return targets


def test_pages_and_the_audit_log_fit_a_lowered_message_mb_max_page_after_page(server_factory: ServerFactory) -> None:
    """README: `--message-mb-max` may be set from 1; proto: a page holds fewer items "when that many would take more
    than 4 MiB". Under a 1 MiB limit, 40 customers of 34 KB (1.3 MB) used to make ListCustomers and GetAuditLog
    fail whole with RESOURCE_EXHAUSTED ("Sent message larger than max"), whatever page the client asked for."""
    server = server_factory(extra_args=["--message-mb-max", "1"])
    ids = [f"c{n:03d}" for n in range(40)]
    with server.client() as client:
        for customer_id in ids:
            big_customer(client, customer_id)
        assert all_customers(client) == ids, "every customer exactly once, in id order"
        assert all_audit_targets(client) == [f"customer/{c}" for c in ids]
        # The default page (100) too: fewer customers than asked for, never none, and the token to go on.
        first = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest())
        assert 0 < len(first.customers) < 40 and first.next_page_token == first.customers[-1].id
        assert first.ByteSize() <= MIB


def test_the_audit_log_answers_a_page_of_1000_within_the_default_message_limit(server_factory: ServerFactory) -> None:
    """proto GetAuditLog: page_size at most 1,000; AuditEntry.diff at most 65,536 bytes. 520 customers of 34 KB
    make a page of 1,000 entries 17.7 MB, past the default 16 MiB: it used to fail whole with RESOURCE_EXHAUSTED."""
    server = server_factory()
    ids = [f"c{n:04d}" for n in range(520)]
    with server.client() as client:
        for customer_id in ids:
            big_customer(client, customer_id)
        first = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000))
        assert 0 < len(first.entries) < 520 and first.next_after_seq == first.entries[-1].seq
        assert all_audit_targets(client) == [f"customer/{c}" for c in ids]


def test_an_authorize_batch_within_the_message_limit_is_answered_though_its_messages_would_pass_it(
    server_factory: ServerFactory,
) -> None:
    """A 700 KB AuthorizeBatch, within a 1 MiB `--message-mb-max`, of 10,000 checks for an unknown customer: each
    answer's message quotes the customer, which made the AuthorizeBatchResult 1.09 MB, and the stream died with
    RESOURCE_EXHAUSTED ("Sent message larger than max"). As an IngestAck (usage.proto EventRejection.message), the
    answer is sent with its messages cut: every request_id, allowed and reason whole; the stream goes on."""
    server = server_factory(demo=True, extra_args=["--message-mb-max", "1"])
    ghost = "ghost-" + "g" * 40
    checks = [
        balance_pb2.AuthorizeRequest(request_id=f"r{i:06d}", customer_id=ghost, event_type="ai_action")
        for i in range(10_000)
    ]
    big = balance_pb2.AuthorizeBatch(requests=checks)
    assert 0.6 * MIB < big.ByteSize() < MIB
    with server.client() as gateway:
        answers = list(gateway.balance.AuthorizeBatches(iter([big, balance_pb2.AuthorizeBatch(requests=[hold("h")])])))
    assert len(answers) == 2 and answers[0].ByteSize() <= MIB
    first = answers[0].responses
    assert [a.request_id for a in first] == [c.request_id for c in checks]
    assert {(a.allowed, a.reason) for a in first} == {(False, "UNKNOWN_CUSTOMER")}
    assert answers[1].responses[0].allowed, "the stream goes on"


def test_an_unpaged_answer_past_the_message_limit_is_refused_saying_so_and_the_log_has_no_error(
    server_factory: ServerFactory,
) -> None:
    """A revenue report of 600 customers over two years (25 periods each) is 1.3 MB, past a 1 MiB `--message-mb-max`
    (at the default 16 MiB, 10,000 customers over two years are): gRPC refused to send it ("SERVER: Sent message
    larger than max (1112581 vs. 1048576)") and the operator's log got an ERROR traceback. README "Limits": such an
    answer is RESOURCE_EXHAUSTED saying the limit and how to ask for less; one customer's report is served."""
    server = server_factory(demo=True, extra_args=["--message-mb-max", "1"])
    start = timestamp_pb2.Timestamp(seconds=now_ms() // 1000 - 2 * 365 * 86_400)
    end = timestamp_pb2.Timestamp(seconds=now_ms() // 1000)
    with server.client() as finance:
        for n in range(600):
            customer_id = f"customer-{n:04d}-" + "x" * 40
            finance.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
            contract = contracts_pb2.CreateContractRequest(
                id=f"k{n}", customer_id=customer_id, rate_card_id="ai-credits", starting_at=start
            )
            finance.contracts.CreateContract(contract)
        everyone = invoices_pb2.GetRevenueReportRequest(period_start=start, period_end=end)
        code, details = code_of(lambda: finance.invoices.GetRevenueReport(everyone))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        assert "--message-mb-max" in details and "1 MiB" in details, details
        alone = invoices_pb2.GetRevenueReportRequest(customer_id=customer_id, period_start=start, period_end=end)
        one = finance.invoices.GetRevenueReport(alone)
        assert {line.customer_id for line in one.customer_lines} == {customer_id}
    assert " ERROR " not in server.log_path.read_text(), server.log_tail(30)


# ---------------------------------------------------------------------------------------------
# Revoking a key


def remove_key_entry(key_file: Path, name: str) -> None:
    """What an operator does by hand: deletes the key's [[keys]] table from the TOML file, the rest as it was."""
    head, *tables = key_file.read_text().split("[[keys]]")
    kept = [table for table in tables if f'name = "{name}"' not in table]
    assert len(kept) == len(tables) - 1, key_file.read_text()
    key_file.write_text("[[keys]]".join([head, *kept]))


def hold(request_id: str) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id, customer_id=ACME, event_type="ai_action", dimensions=CHEAP, reserve=True
    )


def refusals_of_every_kind(client: TariffClient, reservation_id: str) -> dict[str, tuple[grpc.StatusCode, str]]:
    """One call of each kind a gateway key makes: unary, client stream, both streams, server stream."""
    batches = iter([balance_pb2.AuthorizeBatch(requests=[hold("after")])])
    calls: dict[str, Callable[[], object]] = {
        "GetBalance": lambda: client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME)),
        "IngestUsageBatch": lambda: client.usage.IngestUsageBatch(demo_batch("late", "late", 1)),
        "IngestUsage": lambda: list(client.usage.IngestUsage(iter([demo_batch("late-s", "late-s", 1)]), timeout=5)),
        "Authorize": lambda: client.balance.Authorize(hold("late-hold")),
        "AuthorizeBatches": lambda: list(client.balance.AuthorizeBatches(batches, timeout=5)),
        "WatchBalance": lambda: next(
            iter(client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=ACME), timeout=5))
        ),
        "ReleaseReservation": lambda: client.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id=reservation_id)
        ),
    }
    return {what: code_of(call) for what, call in calls.items()}


def test_a_key_removed_from_the_file_is_refused_everywhere_after_a_restart_and_what_it_did_stays(
    tmp_path: Path,
) -> None:
    """README "API keys": the file is plain to edit, and read at start. A leaked gateway key is revoked by deleting
    its entry and restarting (SIGTERM: its open stream is served until its client ends it): from then on every call
    it makes, of every kind, is UNAUTHENTICATED and applies nothing; the batch and the hold it had acknowledged
    stay, and the other keys of the file work as before."""
    key_file = tmp_path / "keys.toml"
    admin = new_key(key_file, "--name", "billing-ops", "--role", "admin")
    leaked = new_key(key_file, "--name", "gateway-leaked", "--role", "ingest")
    fresh = new_key(key_file, "--name", "gateway-new", "--role", "ingest")
    server = ServerProcess(tmp_path / "data", demo=True, extra_args=["--api-keys", str(key_file)], api_key=admin)
    server.start()
    try:
        with server.client(api_key=leaked) as gateway:
            stream = Bidi(gateway)
            acked = demo_batch("before", "before", 2)
            assert stream.send(acked).accepted == 2
            held = gateway.balance.Authorize(hold("before-hold"))
            assert held.allowed and held.reservation_id
            remove_key_entry(key_file, "gateway-leaked")
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            wait_for_log(server, "shutting down", 10)
            # Its stream still runs through the stop: a batch sent now is committed and acknowledged.
            assert stream.send(demo_batch("during", "during", 1)).accepted == 1
            assert stream.end() == []
        assert server.proc.wait(timeout=20) == 0
        server.start()
        with server.client() as ops:
            before = ops.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME))
        assert (before.credits_remaining, before.credits_held) == ("49998.5", "0.5"), before
        with server.client(api_key=leaked) as gateway:
            refused = refusals_of_every_kind(gateway, held.reservation_id)
        assert refused == {what: (grpc.StatusCode.UNAUTHENTICATED, "invalid API key") for what in refused}, refused
        with server.client(api_key=fresh) as gateway:
            after = gateway.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME))
            assert (after.credits_remaining, after.credits_held, after.as_of_seq) == (
                before.credits_remaining,
                before.credits_held,
                before.as_of_seq,
            ), "nothing the revoked key sent was applied"
            # What it had acknowledged is durable: resent by the new key, all duplicates; its hold is still held.
            resent = gateway.usage.IngestUsageBatch(acked)
            assert (resent.accepted, resent.duplicates) == (0, 2)
            released = gateway.balance.ReleaseReservation(
                balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id=held.reservation_id)
            )
            assert released.released_amount == "0.5"
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Shutdown: holds acknowledged during the grace are durable


def test_holds_acknowledged_on_open_authorize_streams_during_the_stop_are_held_after_the_restart(
    demo_server: ServerProcess,
) -> None:
    """README "Shutdown": running calls finish (their batches commit and are acknowledged), an open stream is a
    running call until its client ends it. A gateway's AuthorizeBatches and AuthorizeStream streams, open at the
    SIGTERM, still hold credit for the messages they send during the stop; each hold they were answered is held
    after the restart, and nothing is held twice."""
    with demo_server.client() as gateway:
        batches = Duplex(gateway.balance.AuthorizeBatches)
        single = Duplex(gateway.balance.AuthorizeStream)
        first = batches.send(balance_pb2.AuthorizeBatch(requests=[hold("b1"), hold("b2")]))
        assert isinstance(first, balance_pb2.AuthorizeBatchResult)
        early = single.send(hold("s1"))
        assert isinstance(early, balance_pb2.AuthorizeResponse)
        assert demo_server.proc is not None
        demo_server.proc.send_signal(signal.SIGTERM)
        wait_for_log(demo_server, "shutting down", 10)
        during = batches.send(balance_pb2.AuthorizeBatch(requests=[hold("b3")]))
        assert isinstance(during, balance_pb2.AuthorizeBatchResult)
        late = single.send(hold("s2"))
        assert isinstance(late, balance_pb2.AuthorizeResponse)
        answered = [*first.responses, early, *during.responses, late]
        assert all(a.allowed and a.reservation_id for a in answered), answered
        batches.end()
        single.end()
        assert list(batches.responses) == [] and list(single.responses) == []
    assert demo_server.proc.wait(timeout=20) == 0
    demo_server.start()
    with demo_server.client() as ops:
        balance = ops.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME))
        assert balance.credits_held == "2.5", "five holds of 0.5"
        for answer in answered:
            release = balance_pb2.ReleaseReservationRequest(customer_id=ACME, reservation_id=answer.reservation_id)
            assert ops.balance.ReleaseReservation(release).released_amount == "0.5", answer
        assert ops.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME)).credits_held == "0"


# ---------------------------------------------------------------------------------------------
# Listening: an IPv6 host in brackets


def test_an_ipv6_loopback_in_brackets_serves_there_and_the_start_line_names_the_port(tmp_path: Path) -> None:
    """README "Listening and TLS": `--listen` takes an IPv6 host in brackets (`[::1]:50051`), port 0 for any free
    one, named by the start line and the banner; loopback needs no keys. A client reaches it on [::1]."""
    command = [sys.executable, "-m", "server.cli", "serve", "--listen", "[::1]:0", "--data-dir", str(tmp_path / "d")]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            serving = next(line for line in proc.stdout if " INFO tariff: serving " in line)
            found = re.search(r"listen=\[::1\]:(\d+) ", serving)
            assert found and int(found.group(1)) != 0, serving
            target = f"[::1]:{found.group(1)}"
            assert next(proc.stdout).startswith(f"tariff: serving gRPC on {target} ")
            with TariffClient(target, channel_options=[("grpc.enable_http_proxy", 0)]) as client:
                client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="v6", name="Six"))
                assert all_customers(client) == ["v6"]
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()


# ---------------------------------------------------------------------------------------------
# --max-concurrent-rpcs: streams count, and are refused alike


def test_at_the_concurrency_limit_every_kind_of_call_is_refused_with_retry_after_100_ms_and_applies_nothing(
    server_factory: ServerFactory,
) -> None:
    """README: over `--max-concurrent-rpcs`, RESOURCE_EXHAUSTED with a RetryInfo of 100 ms; health not counted. A
    WatchBalance stream is a running call; at the limit, streams of every kind (IngestUsage, AuthorizeBatches,
    AuthorizeStream, WatchBalance) are refused as unary calls are, nothing of what they carry applied; an open
    health Watch takes no place; once the watcher leaves, a call is served."""
    server = server_factory(demo=True, extra_args=["--max-concurrent-rpcs", "1"])
    with server.client() as client:
        before = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME))
        health = client.health.Watch(health_pb2.HealthCheckRequest())
        assert next(health).status == health_pb2.HealthCheckResponse.SERVING
        watch = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=ACME))
        assert next(watch).credits_remaining == before.credits_remaining
        batch = demo_batch("over", "over", 1)
        calls: dict[str, Callable[[], object]] = {
            "GetBalance": lambda: client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME)),
            "IngestUsage": lambda: list(client.usage.IngestUsage(iter([batch]), timeout=5)),
            "IngestUsageBatch": lambda: client.usage.IngestUsageBatch(batch),
            "AuthorizeBatches": lambda: list(
                client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[hold("h")])]), timeout=5)
            ),
            "AuthorizeStream": lambda: list(client.balance.AuthorizeStream(iter([hold("h")]), timeout=5)),
            "WatchBalance": lambda: next(
                iter(client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=ACME), timeout=5))
            ),
        }
        for what, call in calls.items():
            try:
                call()
            except ResourceExhausted as refused:
                assert refused.retry_after_s == 0.1, (what, refused)
                assert "maximum of 1 calls" in refused.details, (what, refused.details)
            else:
                raise AssertionError(f"{what} was served past the limit")
        watch.cancel()

        def served() -> bool:
            try:
                client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME))
            except ResourceExhausted:
                return False
            return True

        assert wait_for(served, 5), "the watcher's place comes back; the open health Watch takes none"
        after = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=ACME))
        assert (after.credits_remaining, after.credits_held, after.as_of_seq) == (
            before.credits_remaining,
            before.credits_held,
            before.as_of_seq,
        )
        assert client.usage.IngestUsageBatch(batch).accepted == 1, "nothing of the refused batch was recorded"
        health.cancel()


# ---------------------------------------------------------------------------------------------
# The operator's log: one line per admin change


ADMIN_CHANGE = re.compile(r" INFO tariff: admin change actor=(\S+) action=(\S+) target=(\S+)$")


def test_the_operators_log_has_one_admin_change_line_per_audit_entry_and_none_for_a_retry_or_refusal(
    demo_server: ServerProcess,
) -> None:
    """README "The operator's log": one line per admin change, `admin change actor=... action=... target=...`, the
    audit log's actor, action and target; the activity line counts them (admin_changes=). A retried change (the
    same request again, answered as first made) and a refused one are no change: no line."""
    with demo_server.client(actor="ops-oncall") as ops:
        after_seq = ops.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000)).entries[-1].seq
        customer = contracts_pb2.CreateCustomerRequest(id="gamma", name="Gamma")
        contract = contracts_pb2.CreateContractRequest(id="gamma-c", customer_id="gamma", rate_card_id="ai-credits")
        grant = contracts_pb2.Grant(id="gamma-g", contract_id="gamma-c", kind=contracts_pb2.PROMOTIONAL, amount="10")
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="5", price_per_credit="0.1", max_per_period=2)
        alert = alerts_pb2.CreateAlertRequest(id="gamma-low", customer_id="gamma", type=alerts_pb2.LOW_BALANCE)
        alert.threshold = "2"
        for _ in range(2):  # the second round repeats every request: answered again, changing nothing
            ops.contracts.CreateCustomer(customer)
            ops.contracts.CreateContract(contract)
            ops.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
            ops.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="gamma-c", top_up=policy))
            ops.alerts.CreateAlert(alert)
        refused = contracts_pb2.CreateContractRequest(id="gamma-c2", customer_id="nobody", rate_card_id="ai-credits")
        assert code_of(lambda: ops.contracts.CreateContract(refused))[0] == grpc.StatusCode.NOT_FOUND
        audited = [
            (e.actor, e.action, e.target)
            for e in ops.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=after_seq)).entries
        ]
    assert [action for _, action, _ in audited] == [
        "CreateCustomer",
        "CreateContract",
        "GrantCredits",
        "SetTopUpPolicy",
        "CreateAlert",
    ], audited
    wait_for_log(demo_server, "target=alert/gamma-low", 5)
    logged = [found.groups() for line in demo_server.log_tail(400).splitlines() if (found := ADMIN_CHANGE.search(line))]
    assert logged[-len(audited) :] == audited, logged
    assert [entry for entry in logged if "gamma" in entry[2]] == audited, "one line per change, none for a retry"
    assert demo_server.terminate() == 0
    activity = [line for line in demo_server.log_tail(40).splitlines() if " INFO tariff: activity " in line]
    assert activity and " admin_changes=5 " in activity[-1], activity


# ---------------------------------------------------------------------------------------------
# A key restricted to acme, from the CLI, on what the ops2 audit did not run: holds, checks, watches, explain


def test_the_cli_with_keys_restricted_to_acme_refuses_every_holding_checking_watching_or_explaining_of_beta(
    keyed: Keyed,  # noqa: F811
) -> None:
    """README "### API keys": acme-gateway (ingest, acme) and acme-portal (read, acme and acme-eu) through the CLI:
    a hold, a check, a release or a watch of beta's balance, beta's line explained, is PERMISSION_DENIED naming the
    key, exit 1, nothing on stdout, nothing of beta said, nothing held; a watch refused ends at once."""
    target = keyed.server.target
    with keyed.server.client() as ops:
        held_before = ops.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="beta")).credits_held
    gateway = {"TARIFF_API_KEY": keyed.meter}
    portal = {"TARIFF_API_KEY": keyed.portal}
    usage = ["ai_action", *(f"{k}={v}" for k, v in CHEAP.items())]
    runs = {
        "reserve": (tariff(target, "reserve", "beta", *usage, env=gateway), "acme-gateway"),
        "authorize": (tariff(target, "authorize", "beta", *usage, env=gateway), "acme-gateway"),
        "release": (tariff(target, "release", "beta", "r-1", env=gateway), "acme-gateway"),
        "watch balance": (tariff(target, "watch", "balance", "beta", env=gateway), "acme-gateway"),
        "invoices explain": (tariff(target, "invoices", "explain", "beta", "ai_action", env=portal), "acme-portal"),
        "watch balance (read)": (tariff(target, "watch", "balance", "beta", env=portal), "acme-portal"),
    }
    for what, (done, key) in runs.items():
        assert (done.returncode, done.stdout) == (1, ""), (what, done)
        assert done.stderr == (
            f"tariff: PERMISSION_DENIED: customer_id: key {key!r} may not touch customer 'beta'\n"
        ), (what, done.stderr)
    with keyed.server.client() as ops:
        held_after = ops.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="beta")).credits_held
    assert held_after == held_before
    # Its own customer is served: a hold on acme, released again.
    reserved = tariff(target, "reserve", "acme", *usage, "--json", env=gateway)
    assert reserved.returncode == 0, reserved.stderr
    reservation_id = json.loads(reserved.stdout)["reservation_id"]
    released = tariff(target, "release", "acme", reservation_id, "--json", env=gateway)
    assert released.returncode == 0 and json.loads(released.stdout)["released_amount"] == "0.5", released


# ---------------------------------------------------------------------------------------------
# Metrics: what one sample of the authorize and commit histograms is


def check(request_id: str) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id, customer_id=ACME, event_type="ai_action", dimensions=CHEAP
    )


def test_authorize_duration_has_a_sample_per_check_and_per_authorize_batches_message_and_none_for_a_hold(
    server_factory: ServerFactory,
) -> None:
    """README "Metrics and traces": `tariff.authorize.duration` (ms) is one sample per check decided as it arrives
    (Authorize, each AuthorizeStream request) and one per AuthorizeBatches message (the mean of its decisions);
    a hold on Authorize or AuthorizeStream is decided by the writer and timed with its commit
    (`tariff.batch.commit.duration` and `.commands`, one sample per group commit)."""
    port = free_port()
    server = server_factory(demo=True, extra_args=["--metrics-port", str(port)])
    before = scrape(port)
    commits_before = sample(before, "tariff_batch_commit_commands_count")
    with server.client() as gateway:
        assert gateway.balance.Authorize(check("one")).allowed
        assert len(list(gateway.balance.AuthorizeStream(iter([check("s1"), check("s2"), check("s3")])))) == 3
        message = balance_pb2.AuthorizeBatch(requests=[check(f"b{i}") for i in range(5)])
        assert len(list(gateway.balance.AuthorizeBatches(iter([message, message])))) == 2
        assert gateway.balance.Authorize(hold("held")).allowed
        assert len(list(gateway.balance.AuthorizeStream(iter([hold("held-s")])))) == 1
    text = scrape(port)
    assert sample(text, "tariff_authorize_duration_milliseconds_count") == 1 + 3 + 2
    # The two holds are two commands, committed in one or two group commits.
    commands = sample(text, "tariff_batch_commit_commands_sum") - sample(before, "tariff_batch_commit_commands_sum")
    commits = sample(text, "tariff_batch_commit_commands_count") - commits_before
    assert commands == 2 and commits in (1, 2), (commands, commits)
    assert sample(text, "tariff_batch_commit_duration_milliseconds_count") == sample(
        text, "tariff_batch_commit_commands_count"
    )
