"""Acceptance as an operator and a finance user, over the wire: README "## Admin CLI", "### API keys", "## Observability",
"### Listening and TLS", "### Limits and backpressure (defaults)" and "### Shutdown", against real server processes
and the `tariff` command run as a subprocess.

What tests/test_cli.py, test_server_auth.py, test_audit_security_wire.py, test_server_telemetry.py,
test_server_limits.py and test_audit_obs_wire.py check is not repeated: here the key file is made with the README's own
`tariff keys new` commands and used from the CLI by a finance user restricted to one customer; the CLI's refusals
and tables as printed; the gauges and spans the Prometheus test leaves out; a message of exactly --message-mb-max and
an ack that would pass it; an ingest stream its client never ends, and `tariff usage send` from a pipe, across a stop
and a restart; start refusals (data directory, journal, explain index, settings) in one line with status 2; the CLI
against a mutual-TLS server.
Demo prices (server/demo.py): a simple summary on gpt-4o-mini costs 0.5 credits; acme holds 50,000.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from tariff import ResourceExhausted, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, usage_pb2

from tests.audit_fixtures import varint
from tests.demo_usage import ACME, CHEAP, demo_batch
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess, free_port, wait_for, wait_for_log
from tests.test_server_auth import BETA, Keys, add_beta, pki  # noqa: F401  (pki: a fixture)
from tests.test_server_limits import Bidi
from tests.test_server_startup import output_lines, run_serve
from tests.test_server_telemetry import sample, scrape

TARIFF = Path(sys.executable).parent / "tariff"
BETA_NAME = "Beta Ltd"  # add_beta's customer: 100 prepaid credits bought for 90


def tariff(target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`tariff ARGS` as a user runs it, TARIFF_SERVER=target and no other TARIFF_ variable from the test's own
    environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": target, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **(env or {})}
    return subprocess.run(
        [str(TARIFF), *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def new_key(key_file: Path, *args: str) -> str:
    """README's `tariff keys new ... --file keys.toml`: the key printed once on stdout."""
    done = tariff("127.0.0.1:1", "keys", "new", *args, "--file", str(key_file))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# ---------------------------------------------------------------------------------------------
# The admin CLI, with the keys README's "### API keys" makes


@dataclass
class Keyed:
    server: ServerProcess
    admin: str  # billing-ops: admin, every customer
    portal: str  # acme-portal: read, customers acme and acme-eu
    meter: str  # acme-gateway: ingest, customer acme


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    """The demo server with README's key file (made by `tariff keys new`, TOML), plus customer beta."""
    root: Path = tmp_path_factory.mktemp("audit-ops2-keys")
    key_file = root / "keys.toml"
    admin = new_key(key_file, "--name", "billing-ops", "--role", "admin")
    new_key(key_file, "--name", "gateway-eu", "--role", "ingest")
    portal = new_key(key_file, "--name", "acme-portal", "--role", "read", "--customers", "acme,acme-eu")
    meter = new_key(key_file, "--name", "acme-gateway", "--role", "ingest", "--customers", "acme")
    server = ServerProcess(root / "data", demo=True, extra_args=["--api-keys", str(key_file)], api_key=admin)
    server.start()
    try:
        with server.client() as client:
            add_beta(client)
        yield Keyed(server, admin, portal, meter)
    finally:
        server.stop()


def test_a_refusal_prints_the_servers_message_once(keyed: Keyed) -> None:
    """README: a failed call prints the status code and the server's message (`tariff: NOT_FOUND: customer 'nobody'
    does not exist`). The field violation that message already states was printed a second time in brackets."""
    done = tariff(keyed.server.target, "customers", "create", "bad id", "--api-key", keyed.admin)
    assert done.returncode == 1, done
    assert (
        done.stderr == "tariff: INVALID_ARGUMENT: id: 'bad id' must be 1-128 characters of letters, digits and ._:@-\n"
    )
    threshold = tariff(
        keyed.server.target, "topup", "set", "acme-2026", "--threshold", "1000", "--recharge-to", "100",
        "--price-per-credit", "0.9", "--max-per-period", "3", "--api-key", keyed.admin,
    )  # fmt: skip
    assert threshold.returncode == 1, threshold
    assert threshold.stderr.count("must be below recharge_to") == 1, threshold.stderr


def test_a_finance_user_restricted_to_acme_sees_acme_only_and_nothing_of_beta_from_the_cli(keyed: Keyed) -> None:
    """README "### API keys": acme-portal (read, acme and acme-eu) through `TARIFF_API_KEY`: what is about acme or
    acme-eu answers; beta, an unknown customer and every all-customer view are PERMISSION_DENIED naming the key,
    alike for beta and a customer that does not exist, and carrying none of beta's data."""
    target = keyed.server.target
    created = tariff(target, "customers", "create", "acme-eu", "--name", "Acme EU", "--api-key", keyed.admin)
    assert created.returncode == 0, created.stderr
    portal = {"TARIFF_API_KEY": keyed.portal}

    listed = tariff(target, "customers", "list", "--json", env=portal)
    assert listed.returncode == 0, listed.stderr
    assert [c["id"] for c in json.loads(listed.stdout)["customers"]] == ["acme", "acme-eu"]
    balance = tariff(target, "balance", "acme", "--json", env=portal)
    assert balance.returncode == 0, balance.stderr
    assert json.loads(balance.stdout)["credits_remaining"] == "50000"

    for customer in (BETA, "ghost"):
        for command in (["balance"], ["grants"], ["customers", "show"], ["invoices", "preview"]):
            done = tariff(target, *command, customer, env=portal)
            assert (done.returncode, done.stdout) == (1, ""), (command, customer, done)
            field = "id" if command == ["customers", "show"] else "customer_id"
            assert done.stderr == (
                f"tariff: PERMISSION_DENIED: {field}: key 'acme-portal' may not touch customer '{customer}'\n"
            ), (command, done.stderr)
    for command in (["audit"], ["invoices", "list"], ["revenue", "--from", "2026-01"], ["ratecards", "list"]):
        done = tariff(target, *command, env=portal)
        assert (done.returncode, done.stdout) == (1, ""), (command, done)
        assert done.stderr.startswith("tariff: PERMISSION_DENIED: key 'acme-portal' is restricted"), done.stderr
        assert BETA not in done.stderr and BETA_NAME not in done.stderr, done.stderr


def test_own_revenue_from_the_cli_holds_no_other_customers_money(keyed: Keyed) -> None:
    """`tariff revenue --from M --customer acme` with acme's key: acme's line and acme's 45,000 USD prepaid only;
    the admin's all-customer report adds beta's 90."""
    target = keyed.server.target
    month = time.strftime("%Y-%m", time.gmtime())
    own = tariff(target, "revenue", "--from", month, "--customer", "acme", "--json", "--api-key", keyed.portal)
    assert own.returncode == 0, own.stderr
    everyone = tariff(target, "revenue", "--from", month, "--json", "--api-key", keyed.admin)
    assert everyone.returncode == 0, everyone.stderr
    own_report, all_report = json.loads(own.stdout), json.loads(everyone.stdout)
    assert {line["customer_id"] for line in own_report["customer_lines"]} <= {"acme"}, own_report
    assert own_report["reconciliation"]["prepaid_sold"] == "45000", own_report
    assert all_report["reconciliation"]["prepaid_sold"] == "45090", all_report


def test_actor_from_the_environment_is_recorded_as_person_via_key_in_the_audit_and_the_operators_log(
    keyed: Keyed,
) -> None:
    """README: `--actor` / TARIFF_ACTOR is sent as x-actor; the audit log records `PERSON via KEY`, and the operator's
    log has its one `admin change` line with that actor (quoted: it holds spaces)."""
    target = keyed.server.target
    named = tariff(
        target, "customers", "create", "ops2-actor", "--api-key", keyed.admin, env={"TARIFF_ACTOR": "alice@finance"}
    )
    assert named.returncode == 0, named.stderr
    audit = tariff(target, "audit", "--target", "customer/ops2-actor", "--json", "--api-key", keyed.admin)
    assert audit.returncode == 0, audit.stderr
    assert [(e["actor"], e["action"]) for e in json.loads(audit.stdout)["entries"]] == [
        ("alice@finance via billing-ops", "CreateCustomer")
    ]
    log = keyed.server.log_path.read_text()
    assert 'admin change actor="alice@finance via billing-ops" action=CreateCustomer target=customer/ops2-actor' in log


# ---------------------------------------------------------------------------------------------
# Metrics and traces: the gauges and the alert metrics; spans for the alert calls, none for their stream


def test_balances_watched_and_alerts_fired_are_exported_and_alert_calls_are_traced_but_not_their_stream(
    server_factory: ServerFactory,
) -> None:
    """README "### Metrics and traces": `tariff.balances.watched` counts open WatchBalance streams (down again when
    one ends), `tariff.alerts.fired` counts alerts journaled; one span per unary control-plane call, alerts included
    (CreateAlert, ListAlertRules), none for a WatchAlerts stream and none on the balance hot path."""
    port = free_port()
    server = server_factory(demo=True, name="gauges", extra_args=["--metrics-port", str(port), "--otel", "console"])
    with server.client() as client:
        watch = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=ACME))
        assert next(watch).customer_id == ACME  # the stream is open on the server
        assert sample(scrape(port), "tariff_balances_watched") == 1
        rule = alerts_pb2.CreateAlertRequest(customer_id=ACME, type=alerts_pb2.LOW_BALANCE, threshold="49999.9")
        client.alerts.CreateAlert(rule)
        assert client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules[0].threshold == "49999.9"
        alerts = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest())
        assert client.usage.IngestUsageBatch(demo_batch("fire", "fire", 1)).accepted == 1  # 49,999.5 left
        assert next(alerts).type == alerts_pb2.LOW_BALANCE
        assert client.balance.Authorize(
            balance_pb2.AuthorizeRequest(customer_id=ACME, event_type="ai_action", dimensions=CHEAP)
        ).allowed
        assert sample(scrape(port), "tariff_alerts_fired_total") == 1
        watch.cancel()
        alerts.cancel()
        assert wait_for(lambda: sample(scrape(port), "tariff_balances_watched") == 0, 10), scrape(port)
    assert server.terminate() == 0
    spans = set(re.findall(r'"name": "(tariff\.v1\.[A-Za-z]+\.[A-Za-z]+)"', server.log_path.read_text()))
    assert {"tariff.v1.AlertService.CreateAlert", "tariff.v1.AlertService.ListAlertRules"} <= spans, spans
    assert not {s for s in spans if s.endswith("WatchAlerts") or ".BalanceService." in s or ".UsageService." in s}


# ---------------------------------------------------------------------------------------------
# --message-mb-max: at the limit accepted, one byte over refused; an ack that would pass it still sent

MIB = 1024 * 1024


def batch_of_size(size_bytes: int, batch: usage_pb2.UsageBatch) -> usage_pb2.UsageBatch:
    """`batch` padded with an unknown field (15, bytes: the server skips it) so that the whole message is exactly
    `size_bytes`; not its batch_id, which is at most 256 bytes (usage.proto)."""
    base = batch.SerializeToString()
    for pad in range(size_bytes - len(base) - 6, size_bytes - len(base)):
        padding = b"\x7a" + varint(pad) + b"p" * pad  # field 15, wire type 2
        if len(base) + len(padding) == size_bytes:
            padded = usage_pb2.UsageBatch.FromString(base + padding)
            assert padded.ByteSize() == size_bytes, padded.ByteSize()
            return padded
    raise AssertionError(f"no padding makes {size_bytes} bytes")


def test_a_message_of_exactly_message_mb_max_is_served_and_one_byte_more_refused_applying_nothing(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, name="one-mib", extra_args=["--message-mb-max", "1"])
    with server.client() as client:
        over = batch_of_size(MIB + 1, demo_batch("over", "over", 1))
        before = client.get_balance(ACME)
        with pytest.raises(ResourceExhausted) as refused:
            client.usage.IngestUsageBatch(over)
        assert "larger than max" in refused.value.details, refused.value.details
        after = client.get_balance(ACME)
        assert (after.as_of_seq, after.credits_remaining) == (before.as_of_seq, before.credits_remaining)
        at = batch_of_size(MIB, demo_batch("at", "over", 1))  # the same event: it was not recorded
        ack = client.usage.IngestUsageBatch(at)
        assert (ack.accepted, ack.duplicates, ack.batch_id) == (1, 0, at.batch_id)
        assert client.get_balance(ACME).credits_remaining == "49999.5"


def test_an_ack_that_would_pass_message_mb_max_is_sent_with_every_rejection_whole_but_its_message(
    server_factory: ServerFactory,
) -> None:
    """usage.proto EventRejection.message: in an ack that would exceed --message-mb-max with them, messages are cut
    or left out so that the ack is always sent; index, transaction_id and reason stay whole. 10,000 events of an
    unknown customer `g` (each rejection longer than its event) in a batch of just under 1 MiB."""
    server = server_factory(demo=True, name="big-ack", extra_args=["--message-mb-max", "1"])
    at = now_ms()
    events = [
        usage_pb2.UsageEvent(transaction_id=f"t{i}", customer_id="g", event_type="e", timestamp_ms=at)
        for i in range(10_000)
    ]
    batch = batch_of_size(MIB - 16, usage_pb2.UsageBatch(events=events))
    with server.client() as client:
        acks = [client.usage.IngestUsageBatch(batch), *client.usage.IngestUsage(iter([batch]))]
    for ack in acks:
        assert ack.ByteSize() <= MIB and (ack.accepted, ack.duplicates, ack.batch_id) == (0, 0, batch.batch_id)
        assert [(r.index, r.transaction_id, r.reason) for r in ack.rejected] == [
            (i, f"t{i}", usage_pb2.UNKNOWN_CUSTOMER) for i in range(10_000)
        ]
        assert all(len(r.message.encode()) <= 512 for r in ack.rejected)


# ---------------------------------------------------------------------------------------------
# Shutdown: a stream its client never ends


def test_a_stream_never_ended_by_its_client_is_served_through_the_grace_then_cut_unavailable_losing_nothing(
    server_factory: ServerFactory,
) -> None:
    """README "### Shutdown": an open IngestUsage stream is a running call until its client ends it; the server lets it
    run for up to 10 s (a batch sent meanwhile commits and is acknowledged; a SIGINT and a SIGTERM sent meanwhile are
    ignored), then cancels it with UNAVAILABLE and still exits 0. After a restart both acknowledged batches are there exactly once."""
    server = server_factory(demo=True, name="grace-cut")
    assert server.proc is not None
    before, during = demo_batch("before", "before", 2), demo_batch("during", "during", 3)
    with server.client() as client:
        stream = Bidi(client)
        assert stream.send(before).accepted == 2
        server.proc.send_signal(signal.SIGTERM)
        wait_for_log(server, "shutting down", 10)
        for again in (signal.SIGINT, signal.SIGTERM):  # a supervisor signalling again does not cut the stop short
            server.proc.send_signal(again)
        assert stream.send(during).accepted == 3, "a running call's batch commits and is acknowledged"
        with pytest.raises(TariffError) as cut:
            next(stream.responses)  # the client never ends it: the server does, at the end of the grace
        stream.abandon()
        assert cut.value.code == grpc.StatusCode.UNAVAILABLE, cut.value
    assert server.proc.wait(timeout=30) == 0
    assert "clean=True" in server.log_tail(1)
    server.restart()
    with server.client() as client:
        for batch in (before, during):
            ack = client.usage.IngestUsageBatch(batch)
            assert (ack.accepted, ack.duplicates) == (0, len(batch.events)), (batch.batch_id, ack)
        assert client.get_balance(ACME).credits_remaining == "49997.5"  # 5 events of 0.5, once


# ---------------------------------------------------------------------------------------------
# Listening


@pytest.mark.parametrize("listen", ["::1:0", "::1:50051", "fe80::1:0"])
def test_an_ipv6_host_without_brackets_is_refused_saying_how_to_write_it(tmp_path: Path, listen: str) -> None:
    """README "### Listening and TLS": `--listen` takes host:port; a server that refuses to start says why in one line
    (exit 2, nothing written). `::1:0` was refused with `cannot listen on ::1:0` and no reason."""
    host, _, port = listen.rpartition(":")
    data_dir = tmp_path / "data"
    result = run_serve("--listen", listen, "--data-dir", str(data_dir))
    lines = output_lines(result)
    assert (result.returncode, len(lines)) == (2, 1), lines
    assert lines[0].endswith(f"cannot listen on {listen}: write an IPv6 host in brackets: [{host}]:{port}"), lines
    assert not data_dir.exists()


# ---------------------------------------------------------------------------------------------
# tariff keys new


@pytest.mark.parametrize("customers", ["", ",", " ", "acme,bad id!"])
def test_keys_new_with_customers_naming_no_valid_customer_is_a_usage_error_not_an_unrestricted_key(
    tmp_path: Path, customers: str
) -> None:
    """README: `--customers acme,acme-eu` restricts the key to those customers; leaving the option out is what makes a
    key for every customer. `--customers ""` (an empty shell variable, say) made an unrestricted key, silently: the
    opposite of what was asked. An id no customer can have (`bad id!`) could never be touched: a typo, refused too."""
    key_file = tmp_path / "keys.toml"
    done = tariff("127.0.0.1:1", "keys", "new", "--name", "portal", "--role", "read", "--customers", customers,
                  "--file", str(key_file))  # fmt: skip
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "--customers" in done.stderr, done.stderr
    assert not key_file.exists(), "no key may be added"


# ---------------------------------------------------------------------------------------------
# A server that refuses to start says why in one line and exits with status 2


@pytest.mark.parametrize("where", ["a-file", "a-file/data"])
def test_a_data_dir_that_cannot_be_a_directory_is_refused_in_one_line_with_status_2(tmp_path: Path, where: str) -> None:
    """README "### The operator's log": a server that refuses to start says why in one line and exits with status 2.
    A --data-dir that is a file (or lies under one) ended the start in a Python traceback and status 1."""
    (tmp_path / "a-file").write_text("not a directory\n")
    data_dir = tmp_path / where
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(data_dir))
    lines = output_lines(result)
    assert (result.returncode, len(lines)) == (2, 1), lines
    why = "a file, not a directory" if where == "a-file" else "cannot create it: Not a directory"
    assert lines[0].endswith(f"--data-dir {data_dir}: {why}"), lines
    assert (tmp_path / "a-file").read_text() == "not a directory\n"


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--map-size-mb", "0"),
        ("--map-size-mb", "-5"),
        ("--snapshot-every", "0"),
        ("--snapshot-every-events", "-1"),
        ("--snapshot-journal-factor", "-1"),
        ("--snapshot-journal-factor", "nan"),
    ],
)
def test_a_journal_setting_no_server_can_run_by_is_a_usage_error(tmp_path: Path, option: str, value: str) -> None:
    """Like the limits (README "### Limits and backpressure": another value is a usage error, exit 2): `--map-size-mb
    0` ended the start in a traceback and status 1, and a snapshot every 0 or -1 records served as if it were 1."""
    data_dir = tmp_path / "data"
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(data_dir), option, value)
    assert result.returncode == 2, output_lines(result)
    assert f"Invalid value for '{option}'" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not data_dir.exists()


def test_a_journal_that_is_no_lmdb_file_is_refused_in_one_line_with_status_2_and_left_alone(tmp_path: Path) -> None:
    """A data directory whose journal/data.mdb is not an LMDB file (a bad restore, say): the start said so only at the
    end of a Python traceback, with status 1."""
    journal = tmp_path / "data" / "journal"
    journal.mkdir(parents=True)
    garbage = bytes(range(256)) * 400
    (journal / "data.mdb").write_bytes(garbage)
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(tmp_path / "data"))
    lines = output_lines(result)
    assert (result.returncode, len(lines)) == (2, 1), lines
    assert f"cannot open the journal at {journal}: " in lines[0] and "MDB_INVALID" in lines[0], lines
    assert (journal / "data.mdb").read_bytes() == garbage


# ---------------------------------------------------------------------------------------------
# Shutdown under `tariff usage send`: nothing acknowledged lost, nothing charged twice


def test_usage_send_from_a_pipe_rides_out_a_server_stop_and_restart_charging_every_event_once(
    server_factory: ServerFactory,
) -> None:
    """README "### Shutdown" with "## Admin CLI": a producer pipes events into `tariff usage send` while the server
    is stopped (SIGTERM: the open stream is served through the grace, then cut) and started again on the same port.
    The CLI reconnects and resends what was not acknowledged (--retry-s); in the end it exits 0, every event read is
    accepted or a duplicate, and the balance has each drawn exactly once."""
    server = server_factory(demo=True, name="send-restart")
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": server.target, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    sender = subprocess.Popen(
        [str(TARIFF), "usage", "send", "--batch-events", "50", "--retry-s", "120", "--json", "--no-progress"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
    )
    assert sender.stdin is not None
    written = [0]
    stop = threading.Event()

    def produce() -> None:
        at = now_ms()
        while not stop.is_set():
            for _ in range(25):
                event = {"transaction_id": f"pipe-{written[0]}", "customer_id": ACME, "event_type": "ai_action",
                         "timestamp_ms": at, "dimensions": CHEAP}  # fmt: skip
                sender.stdin.write(json.dumps(event) + "\n")  # type: ignore[union-attr]
                written[0] += 1
            sender.stdin.flush()  # type: ignore[union-attr]
            stop.wait(0.02)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        with server.client() as client:
            assert wait_for(lambda: client.get_balance(ACME).credits_remaining != "50000", 30), "events are flowing"
        assert server.terminate() == 0
        stopped_at = written[0]
        server.start()
        with server.client() as client:
            # Events written while the server was down, and after, reach the restarted server.
            assert wait_for(lambda: Decimal(client.get_balance(ACME).credits_remaining) < 50_000 - stopped_at / 2, 60)
    finally:
        stop.set()
        producer.join()
    out, err = sender.communicate(timeout=120)  # closes stdin: the end of the events
    assert sender.returncode == 0, err
    summary = json.loads(out)
    assert (summary["events_read"], summary["rejected"]) == (written[0], 0), (summary, err)
    assert summary["accepted"] + summary["duplicates"] == written[0], summary
    with server.client() as client:
        remaining = Decimal(client.get_balance(ACME).credits_remaining)
    assert remaining == 50_000 - Decimal(written[0]) / 2, (remaining, written[0], summary)


def test_an_explain_index_that_is_no_lmdb_file_is_refused_in_one_line_saying_how_to_rebuild_it(
    server_factory: ServerFactory,
) -> None:
    """The explain index is derived data (rebuilt from the journal when removed): one that LMDB cannot open stopped
    the start in a traceback with status 1. Now one line naming it and the way out, status 2; after removing it the
    server starts with everything, and the index is rebuilt."""
    server = server_factory(demo=True, name="bad-index")
    with server.client() as client:
        assert client.usage.IngestUsageBatch(demo_batch("kept", "kept", 2)).accepted == 2
    assert server.terminate() == 0
    index = server.data_dir / "explain"
    (index / "data.mdb").write_bytes(bytes(range(256)) * 400)
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(server.data_dir))
    lines = output_lines(result)
    assert (result.returncode, len(lines)) == (2, 1), lines
    assert f"cannot open the explain index at {index}: " in lines[0] and "MDB_INVALID" in lines[0], lines
    assert lines[0].endswith(f"it is rebuilt from the journal: remove {index} and start again"), lines
    shutil.rmtree(index)
    server.start()
    with server.client() as client:
        assert client.get_balance(ACME).credits_remaining == "49999"


def test_balance_watch_and_grants_of_a_customer_without_a_contract_show_no_made_up_period_or_empty_unit(
    keyed: Keyed,
) -> None:
    """`tariff balance` of a customer with no contract yet: the server's answer has no period and no pricing unit
    (`--json` leaves them out / empty); the table printed `period 1970-01-01 00:00:00Z .. 1970-01-01 00:00:00Z` and
    `credits remaining ()`."""
    target = keyed.server.target
    created = tariff(target, "customers", "create", "ops2-no-contract", "--api-key", keyed.admin)
    assert created.returncode == 0, created.stderr
    answer = json.loads(tariff(target, "balance", "ops2-no-contract", "--json", "--api-key", keyed.admin).stdout)
    assert "period_start" not in answer and answer["pricing_unit"] == "", answer
    table = tariff(target, "balance", "ops2-no-contract", "--api-key", keyed.admin)
    assert table.returncode == 0, table.stderr
    rows = {line.split("  ")[0]: line.split("  ", 1)[-1].strip() for line in table.stdout.splitlines()}
    assert "1970" not in table.stdout and "()" not in table.stdout, table.stdout
    assert rows["credits remaining"] == "0" and rows["period"] == "", table.stdout
    assert "credits remaining (credits)" in tariff(target, "balance", "acme", "--api-key", keyed.admin).stdout
    watched = tariff(target, "watch", "balance", "ops2-no-contract", "--count", "1", "--api-key", keyed.admin)
    assert watched.returncode == 0 and "remaining 0  held 0" in watched.stdout, watched
    grants = tariff(target, "grants", "ops2-no-contract", "--api-key", keyed.admin)
    assert grants.returncode == 0 and grants.stdout.splitlines()[0].strip() == "grants of ops2-no-contract", grants


# ---------------------------------------------------------------------------------------------
# Mutual TLS from the CLI


def test_the_cli_presents_a_client_certificate_to_a_mutual_tls_server(
    server_factory: ServerFactory,
    pki: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    """README "### Listening and TLS": with `--tls-client-ca` clients must present a certificate; "## Admin CLI":
    every client command reaches the server with --tls-ca, but had no way to present one, so an operator of a
    mutual-TLS server could not use `tariff` at all. `--tls-cert`/`--tls-key` (env TARIFF_TLS_CERT/TARIFF_TLS_KEY)."""
    keys = Keys(tmp_path / "keys.json", {"ops": ("admin", None)})
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    server = server_factory(
        demo=True, extra_args=[*tls, "--tls-client-ca", str(pki / "ca.pem"), *keys.args], start=False
    )
    server.api_key, server.tls_root_cert = keys.key["ops"], pki / "ca.pem"
    server.tls_client_cert, server.tls_client_key = pki / "client.pem", pki / "client.key"
    server.start()
    trust = ["--api-key", keys.key["ops"], "--tls-ca", str(pki / "ca.pem")]
    without = tariff(server.target, "balance", "acme", *trust)
    assert without.returncode == 3 and without.stderr.startswith("tariff: UNAVAILABLE"), without
    mine = ["--tls-cert", str(pki / "client.pem"), "--tls-key", str(pki / "client.key")]
    with_options = tariff(server.target, "balance", "acme", "--json", *trust, *mine)
    assert with_options.returncode == 0, with_options.stderr
    assert json.loads(with_options.stdout)["credits_remaining"] == "50000"
    env = {"TARIFF_TLS_CERT": str(pki / "client.pem"), "TARIFF_TLS_KEY": str(pki / "client.key")}
    with_env = tariff(server.target, "customers", "list", "--json", *trust, env=env)
    assert with_env.returncode == 0, with_env.stderr
    half = tariff(server.target, "balance", "acme", *trust, "--tls-cert", str(pki / "client.pem"))
    assert (half.returncode, half.stdout) == (2, ""), half
    assert "--tls-cert and --tls-key go together" in half.stderr, half.stderr


def test_usage_send_refused_whole_names_the_input_line_of_the_event_and_where_to_resume(keyed: Keyed) -> None:
    """README "### API keys": one event for another customer refuses its whole batch, naming the event's index; the
    batches before it stay acknowledged. From `tariff usage send` that index (`events[1]`) is of a batch the user never
    saw: the CLI also names the input line of that event, and the line of the first event not acknowledged."""
    at = now_ms()

    def line(n: int, customer: str) -> str:
        event = {"transaction_id": f"ops2-line-{n}", "customer_id": customer, "event_type": "ai_action",
                 "timestamp_ms": at, "dimensions": CHEAP}  # fmt: skip
        return json.dumps(event)

    text = "\n".join(["", line(2, ACME), line(3, ACME), line(4, ACME), "", line(6, BETA), line(7, ACME)]) + "\n"
    source = keyed.server.data_dir.parent / "ops2-lines.jsonl"
    source.write_text(text)
    done = tariff(keyed.server.target, "usage", "send", str(source), "--batch-events", "2", "--api-key", keyed.meter)
    assert (done.returncode, done.stdout) == (1, ""), done
    resume = "the first event not acknowledged is line 4"
    assert f"tariff: before the failure: 2 events accepted, 0 duplicates, 0 rejected; {resume}" in done.stderr, done
    assert "events[1]: key 'acme-gateway' may not touch customer 'beta'" in done.stderr, done.stderr
    assert "tariff: events[1] of the refused batch is line 6 of the input" in done.stderr, done.stderr
