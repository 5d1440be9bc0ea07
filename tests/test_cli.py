"""The `tariff` client commands, run as a user runs them: `.venv/bin/tariff ...` subprocesses against a real
server process, TARIFF_SERVER pointing at it. Tables must hold the server's values, `--json` must parse, and a
failed call must exit 1 with the server's status code and message on stderr.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import test_server_auth as auth_tests
from tests.serverproc import REPO_ROOT, ServerFactory, ServerProcess, free_port
from tests.test_server_auth import Keys

TARIFF = Path(sys.executable).parent / "tariff"
GPT4_COMPLEX_SUMMARY = {"action": "summary", "model": "gpt-4", "complexity": "complex"}  # 5 credits in the demo


def tariff(
    server: ServerProcess | str,
    *args: str,
    stdin: str | None = None,
    check: bool | None = True,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Runs `tariff ARGS` against `server`; check=True: must exit 0, False: must not, None: either."""
    target = server if isinstance(server, str) else server.target
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": target, "COLUMNS": "200", "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    environment |= env or {}
    done = subprocess.run(
        [str(TARIFF), *args], input=stdin, capture_output=True, text=True, env=environment, cwd=REPO_ROOT, timeout=120
    )
    if check is True:
        assert done.returncode == 0, f"tariff {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    elif check is False:
        assert done.returncode != 0, f"tariff {' '.join(args)} succeeded:\n{done.stdout}"
    return done


def table_rows(output: str) -> list[list[str]]:
    """A printed table's rows, cells split on runs of 2+ spaces (cells themselves hold single spaces)."""
    import re

    return [re.split(r" {2,}", line.strip()) for line in output.splitlines() if line.strip()]


def usage_lines(prefix: str, count: int, customer: str = "acme") -> str:
    now_ms = time.time_ns() // 1_000_000
    events = [
        {
            "transaction_id": f"{prefix}-{i}",
            "customer_id": customer,
            "event_type": "ai_action",
            "timestamp_ms": now_ms - i,
            "dimensions": GPT4_COMPLEX_SUMMARY,
        }
        for i in range(count)
    ]
    return "".join(json.dumps(e) + "\n" for e in events)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One demo server for the tests that only read, or write ids of their own."""
    server = ServerProcess(tmp_path_factory.mktemp("cli") / "data", demo=True)
    server.start()
    yield server
    server.stop()


# -- the command itself ----------------------------------------------------------------------------------------


def test_version_is_the_package_version() -> None:
    done = tariff("unused:1", "--version")
    assert done.stdout.strip() == f"tariff, version {importlib.metadata.version('tariff')}"


def test_serve_help_shows_every_default() -> None:
    text = " ".join(tariff("unused:1", "serve", "--help").stdout.split())
    for option, default in [
        ("--listen", "127.0.0.1:50051"),
        ("--data-dir", "./data"),
        ("--map-size-mb", "1024"),
        ("--batch-events-max", "10000"),
        ("--message-mb-max", "16"),
        ("--future-skew-s", "300"),
        ("--snapshot-every", "5000"),
        ("--snapshot-every-events", "1000000"),
        ("--snapshot-journal-factor", "0.5"),
        ("--max-concurrent-rpcs", "1000"),
        ("--connection-idle-max", "30m"),
        ("--intake-mb-max", "256"),
        ("--stream-inflight-batches-max", "16"),
        ("--otel", "off"),
        ("--log-format", "text"),
        ("--log-level", "info"),
        ("--metrics-port", "none"),
    ]:
        assert option in text
        start = text.index(option + " ")
        assert f"[default: {default}]" in text[start : text.index("--", start + len(option) + 1)], option


def test_loading_the_command_line_imports_no_grpc_protobuf_or_rich() -> None:
    # What keeps `tariff --help` fast: the heavy libraries load inside the commands that use them.
    code = "import sys, server.cli; print(sorted({m.split('.')[0] for m in sys.modules} & {'grpc', 'google', 'rich'}))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, check=True)
    assert done.stdout.strip() == "[]"


def test_an_unreachable_server_is_an_error_naming_unavailable() -> None:
    done = tariff(f"127.0.0.1:{free_port()}", "customers", "list", check=False)
    assert done.returncode == 3  # README "Admin CLI": the server was not reached
    assert done.stderr.startswith("tariff: UNAVAILABLE"), done.stderr


# -- customers, balance, authorize -------------------------------------------------------------------------------


def test_customers_list_show_and_create(shared: ServerProcess) -> None:
    created = tariff(shared, "customers", "create", "cli-globex", "--name", "Globex", "--attr", "region=eu")
    assert ["name", "Globex"] in table_rows(created.stdout)
    listed = table_rows(tariff(shared, "customers", "list").stdout)
    assert listed[2][:3] == ["acme", "Acme Corp", "region=us-east, segment=enterprise"]
    assert listed[3][:3] == ["cli-globex", "Globex", "region=eu"]
    shown = json.loads(tariff(shared, "customers", "show", "cli-globex", "--json").stdout)
    assert (shown["id"], shown["name"], shown["attributes"]) == ("cli-globex", "Globex", {"region": "eu"})
    one_call = [c["id"] for c in json.loads(tariff(shared, "customers", "list", "--json").stdout)["customers"]]
    paged = json.loads(tariff(shared, "customers", "list", "--page-size", "1", "--json").stdout)["customers"]
    assert [c["id"] for c in paged] == one_call == sorted(one_call)  # every page, in id order
    assert {"acme", "cli-globex"} <= set(one_call)


def test_an_unknown_customer_exits_1_with_the_servers_message(shared: ServerProcess) -> None:
    for command in (["customers", "show", "nobody"], ["balance", "nobody"]):
        done = tariff(shared, *command, check=False)
        assert done.returncode == 1
        assert done.stderr == "tariff: NOT_FOUND: customer 'nobody' does not exist\n"
        assert done.stdout == ""


def test_a_refused_create_shows_the_field_and_why(shared: ServerProcess) -> None:
    done = tariff(shared, "customers", "create", "bad id!", check=False)
    assert done.returncode == 1
    assert done.stderr.startswith("tariff: INVALID_ARGUMENT:"), done.stderr
    assert "id" in done.stderr


def test_authorize_prices_without_drawing(shared: ServerProcess) -> None:
    args = ["authorize", "acme", "ai_action", *(f"{k}={v}" for k, v in GPT4_COMPLEX_SUMMARY.items())]
    rows = table_rows(tariff(shared, *args).stdout)
    assert ["allowed", "yes"] in rows
    assert ["estimated cost (credits)", "5"] in rows
    decision = json.loads(tariff(shared, *args, "--value", "tokens=1200", "--json").stdout)
    assert (decision["allowed"], decision["reason"], decision["estimated_cost"]) == (True, "OK", "5")
    tariff(shared, "customers", "create", "cli-no-contract")
    denied = tariff(shared, "authorize", "cli-no-contract", "ai_action")  # a denial is an answer: exit 0
    assert ["allowed", "no"] in table_rows(denied.stdout)
    assert ["reason", "NO_ACTIVE_CONTRACT"] in table_rows(denied.stdout)
    unknown = tariff(shared, "authorize", "nobody", "ai_action", check=False)
    assert (unknown.returncode, unknown.stderr) == (1, "tariff: NOT_FOUND: customer 'nobody' does not exist\n")


def test_authorize_refuses_a_value_that_is_not_a_number(shared: ServerProcess) -> None:
    done = tariff(shared, "authorize", "acme", "ai_action", "--value", "tokens=many", check=False)
    assert done.returncode == 2
    assert "tokens='many': the value is not a number" in done.stderr


# -- usage send, then balance ---------------------------------------------------------------------------------


def test_usage_send_draws_exact_credits_and_a_resend_counts_duplicates(
    demo_server: ServerProcess, tmp_path: Path
) -> None:
    events = tmp_path / "events.jsonl"
    events.write_text(usage_lines("cli-send", 7) + "\n")  # a blank line is skipped
    first = tariff(demo_server, "usage", "send", str(events), "--batch-events", "3")
    rows = table_rows(first.stdout)
    assert ["events read", "7"] in rows
    assert ["accepted", "7"] in rows
    assert ["duplicates", "0"] in rows
    assert ["batches", "3"] in rows
    balance = json.loads(tariff(demo_server, "balance", "acme", "--json").stdout)
    assert balance["credits_remaining"] == "49965"  # 50,000 - 7 x 5
    assert [(g["grant_id"], g["drawn"]) for g in balance["grants"]] == [("acme-prepaid-50k", "35")]
    assert ["credits remaining (credits)", "49965"] in table_rows(tariff(demo_server, "balance", "acme").stdout)

    again = json.loads(tariff(demo_server, "usage", "send", "--json", stdin=events.read_text()).stdout)
    assert (again["events_read"], again["accepted"], again["duplicates"], again["rejected"]) == (7, 0, 7, 0)
    assert json.loads(tariff(demo_server, "balance", "acme", "--json").stdout)["credits_remaining"] == "49965"


def test_usage_send_reports_rejections_by_reason_and_exits_1(demo_server: ServerProcess) -> None:
    lines = usage_lines("cli-mixed", 2) + usage_lines("cli-stranger", 1, customer="nobody")
    done = tariff(demo_server, "usage", "send", "--json", stdin=lines, check=False)
    assert done.returncode == 1
    summary = json.loads(done.stdout)
    assert (summary["accepted"], summary["rejected"], summary["rejected_by_reason"]) == (2, 1, {"UNKNOWN_CUSTOMER": 1})
    assert summary["rejections"] == [
        {
            "transaction_id": "cli-stranger-0",
            "reason": "UNKNOWN_CUSTOMER",
            "message": "customer 'nobody' does not exist",
        }
    ]
    assert done.stderr == "tariff: 1 of 3 events rejected\n"
    table = tariff(demo_server, "usage", "send", stdin=lines, check=False)
    assert ["UNKNOWN_CUSTOMER", "1", "cli-stranger-0", "customer 'nobody' does not exist"] in table_rows(table.stdout)


def test_usage_send_stops_at_a_line_that_is_not_an_event(demo_server: ServerProcess) -> None:
    lines = usage_lines("cli-before", 2) + '{"transaction_id": "x", "colour": "red"}\n' + usage_lines("cli-after", 2)
    done = tariff(demo_server, "usage", "send", "--json", stdin=lines, check=False)
    assert done.returncode == 2
    assert done.stderr.startswith("tariff: line 3: "), done.stderr
    assert "colour" in done.stderr
    assert json.loads(done.stdout)["accepted"] == 2  # what came before the bad line, and nothing after
    assert json.loads(tariff(demo_server, "balance", "acme", "--json").stdout)["credits_remaining"] == "49990"


# -- products, rate cards, versions, audit --------------------------------------------------------------------


def test_products_list_and_create(shared: ServerProcess) -> None:
    args = ["--event-type", "api_call", "--aggregation", "count", "--unit", "calls", "--dimension", "region"]
    created = tariff(shared, "products", "create", "cli-calls", *args)
    assert ["aggregation", "COUNT"] in table_rows(created.stdout)
    assert ["cli-calls", "cli-calls", "api_call", "COUNT", "region", "calls"] in table_rows(
        tariff(shared, "products", "list").stdout
    )
    products = json.loads(tariff(shared, "products", "list", "--json").stdout)["products"]
    assert {p["id"] for p in products} == {"ai_action", "cli-calls"}
    retried = tariff(shared, "products", "create", "cli-calls", *args)  # the same request: a retry, answered alike
    assert table_rows(retried.stdout) == table_rows(created.stdout)
    clash = tariff(shared, "products", "create", "cli-calls", *args[:-2], "--dimension", "model", check=False)
    assert clash.returncode == 1
    assert clash.stderr.startswith("tariff: ALREADY_EXISTS:"), clash.stderr


def test_ratecards_show_the_demo_card_and_its_rates(shared: ServerProcess) -> None:
    rows = table_rows(tariff(shared, "ratecards", "show", "ai-credits").stdout)
    assert ["current version", "1"] in rows
    assert ["gpt4_factor", "2.5"] in rows
    assert [
        "ai_action",
        "action=summary, complexity=complex, model=gpt-4",
        "summary_base * gpt4_factor * complex_factor + crm_surcharge",
    ] in rows
    shown = json.loads(tariff(shared, "ratecards", "show", "ai-credits", "--json").stdout)
    assert (shown["rate_card"]["pricing_unit"], shown["version"]["state"]) == ("credits", "PUBLISHED")
    missing = tariff(shared, "ratecards", "show", "no-such-card", check=False)
    assert missing.returncode == 1
    assert missing.stderr.startswith("tariff: NOT_FOUND:"), missing.stderr


def test_ratecards_list_pages_through_list_rate_cards(shared: ServerProcess) -> None:
    tariff(shared, "ratecards", "create", "cli-listed", "--name", "Listed", "--unit", "USD")
    done = tariff(shared, "ratecards", "list", "--page-size", "1")
    rows = table_rows(done.stdout)
    assert ["ai-credits", "AI credits", "credits", "1", "1"] in rows
    assert [r[0] for r in rows if r and r[0] in ("ai-credits", "cli-listed")] == ["ai-credits", "cli-listed"]


def test_a_rate_card_drafted_validated_published_and_audited(shared: ServerProcess) -> None:
    tariff(shared, "ratecards", "create", "cli-api", "--name", "API", "--unit", "USD")
    rate = json.dumps({"product_id": "ai_action", "match": {"model": "gpt-4"}, "unit": {"price": "per_call * 2"}})
    drafted = tariff(
        shared, "ratecard", "draft", "cli-api", "--set", "per_call=0.002", "--rate", rate, "--note", "launch"
    )
    assert ["state", "DRAFT"] in table_rows(drafted.stdout)
    assert ["ai_action", "model=gpt-4", "per_call * 2"] in table_rows(drafted.stdout)
    assert json.loads(tariff(shared, "ratecard", "validate", "cli-api", "1", "--json").stdout)["ok"] is True

    published = tariff(shared, "ratecard", "publish", "cli-api", "1", "--effective-from", "2026-01-01T00:00:00Z")
    assert ["effective from", "2026-01-01 00:00:00Z"] in table_rows(published.stdout)
    versions = json.loads(tariff(shared, "ratecard", "versions", "cli-api", "--json").stdout)["versions"]
    assert [(v["version"], v["state"], v["change_note"]) for v in versions] == [(1, "PUBLISHED", "launch")]

    audit = json.loads(tariff(shared, "audit", "--target", "rate_card/cli-api", "--json").stdout)["entries"]
    assert [(e["action"], e["target"]) for e in audit] == [
        ("CreateRateCard", "rate_card/cli-api"),
        ("CreateDraftVersion", "rate_card/cli-api/version/1"),
        ("PublishVersion", "rate_card/cli-api/version/1"),
    ]
    table = table_rows(tariff(shared, "audit", "--target", "rate_card/cli-api").stdout)
    assert [row[3:5] for row in table[2:]] == [[e["action"], e["target"]] for e in audit]


def test_an_invalid_draft_fails_validation_with_its_findings(shared: ServerProcess) -> None:
    tariff(shared, "ratecards", "create", "cli-broken", "--unit", "credits")
    rate = json.dumps({"product_id": "ai_action", "unit": {"price": "no_such_parameter * 2"}})
    tariff(shared, "ratecard", "draft", "cli-broken", "--rate", rate)
    done = tariff(shared, "ratecard", "validate", "cli-broken", "1", check=False)
    assert done.returncode == 1
    assert "no_such_parameter" in done.stdout
    assert done.stderr == "tariff: rate card 'cli-broken' version 1 is not valid\n"


def test_a_malformed_rate_is_a_usage_error_before_any_call(shared: ServerProcess) -> None:
    done = tariff(shared, "ratecard", "draft", "ai-credits", "--rate", '{"product_id": "x", "colour": 1}', check=False)
    assert done.returncode == 2
    assert "colour" in done.stderr
    versions = json.loads(tariff(shared, "ratecard", "versions", "ai-credits", "--json").stdout)["versions"]
    assert len(versions) == 1


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (("revenue", "--from", "9999-12"), "--from"),
        (("revenue", "--from", "2026-01", "--to", "9999-12"), "--to"),
        (("revenue", "--from", "1969-12"), "--from"),
        (("invoices", "list", "--customer", "acme", "--period", "9999-12"), "--period"),
    ],
)
def test_a_month_outside_the_servers_range_is_a_usage_error_before_any_call(args: tuple[str, ...], option: str) -> None:
    """The month after 9999-12 is no datetime: `tariff revenue --from 9999-12` used to end in a traceback."""
    done = tariff("127.0.0.1:1", *args, check=False)  # nothing listens there: the command must not get that far
    assert done.returncode == 2, done.stderr
    assert f"tariff: {option} '{args[-1]}': the server takes months from 1970-01 to 8999-12" in done.stderr
    assert "Traceback" not in done.stderr


# -- API keys and TLS -------------------------------------------------------------------------------------------


@pytest.fixture
def secured(server_factory: ServerFactory, tmp_path: Path) -> tuple[ServerProcess, Keys, Path]:
    """A demo server that wants API keys and speaks only TLS; returns it, its keys, and the CA to trust."""
    pki = tmp_path / "pki"
    pki.mkdir()
    openssl = functools.partial(auth_tests._openssl, cwd=pki)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=tariff test CA")  # fmt: skip
    (pki / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=tariff server")  # fmt: skip
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "server.ext")  # fmt: skip
    keys = Keys(tmp_path / "keys.json", {"ops": ("admin", None), "viewer": ("read", None)})
    tls = ["--tls-cert", str(pki / "server.pem"), "--tls-key", str(pki / "server.key")]
    server = server_factory(demo=True, extra_args=[*keys.args, *tls], api_key=keys.key["ops"], start=False)
    server.tls_root_cert = pki / "ca.pem"
    server.start()
    return server, keys, pki / "ca.pem"


def test_api_key_and_tls_from_options_or_environment(secured: tuple[ServerProcess, Keys, Path]) -> None:
    server, keys, ca = secured
    ops = ["--api-key", keys.key["ops"], "--tls-ca", str(ca)]
    assert ["credits remaining (credits)", "50000"] in table_rows(tariff(server, "balance", "acme", *ops).stdout)
    sent = tariff(server, "usage", "send", *ops, "--json", stdin=usage_lines("cli-tls", 3))
    assert json.loads(sent.stdout)["accepted"] == 3
    tariff(server, "customers", "create", "cli-keyed", *ops)
    audit = json.loads(tariff(server, "audit", "--target", "customer/cli-keyed", "--json", *ops).stdout)["entries"]
    assert [(e["actor"], e["action"]) for e in audit] == [("ops", "CreateCustomer")]

    env = {"TARIFF_API_KEY": keys.key["viewer"], "TARIFF_TLS_CA": str(ca)}
    assert json.loads(tariff(server, "balance", "acme", "--json", env=env).stdout)["credits_remaining"] == "49985"
    refused = tariff(server, "customers", "create", "cli-viewer", env=env, check=False)
    assert refused.returncode == 1
    assert refused.stderr.startswith("tariff: PERMISSION_DENIED:"), refused.stderr
    keyless = tariff(server, "balance", "acme", "--tls-ca", str(ca), check=False)
    assert keyless.returncode == 1
    assert keyless.stderr.startswith("tariff: UNAUTHENTICATED:"), keyless.stderr


def test_usage_send_waits_for_a_server_that_comes_up_and_shows_progress(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    server = server_factory(demo=True, start=False)
    server.port = free_port()
    events = tmp_path / "events.jsonl"
    events.write_text(usage_lines("cli-late", 4))
    env = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")} | {"TARIFF_SERVER": server.target}
    command = [str(TARIFF), "usage", "send", str(events), "--retry-s", "60", "--progress", "--json"]
    sender = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        server.start()  # the sender is already reconnecting to the port, or about to
        out, err = sender.communicate(timeout=120)
    finally:
        sender.kill()
    assert sender.returncode == 0, err
    assert json.loads(out)["accepted"] == 4
    assert "4 events acknowledged" in err
    assert tariff(server, "balance", "acme", "--json", check=True).stdout.count('"credits_remaining": "49980"') == 1
