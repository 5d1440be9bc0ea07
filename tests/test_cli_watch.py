"""`tariff watch balance` and `tariff alerts create|list|delete|watch` against a real demo server."""

from __future__ import annotations

import json
import os
import signal
import subprocess

from tests.serverproc import REPO_ROOT, ServerProcess
from tests.test_cli import TARIFF, table_rows, tariff, usage_lines


def test_alerts_create_list_and_watch(demo_server: ServerProcess) -> None:
    created = tariff(
        demo_server, "alerts", "create", "--customer", "acme", "--type", "LOW_BALANCE", "--threshold", "49999"
    )
    [rule] = [row for row in table_rows(created.stdout) if row[0].startswith("alert-")]
    assert rule[1:] == ["acme", "LOW_BALANCE", "49999"]
    again = json.loads(
        tariff(
            demo_server,
            "alerts",
            "create",
            "--customer",
            "acme",
            "--type",
            "LOW_BALANCE",
            "--threshold",
            "49999",
            "--json",
        ).stdout
    )
    assert again["id"] == rule[0]  # the same rule: nothing more created
    every = tariff(demo_server, "alerts", "create", "--all", "--type", "CREDITS_EXHAUSTED", "--id", "cli-exhausted")
    assert ["cli-exhausted", "(all)", "CREDITS_EXHAUSTED"] in table_rows(every.stdout)
    listed = json.loads(tariff(demo_server, "alerts", "list", "--json").stdout)["rules"]
    assert sorted(r["id"] for r in listed) == sorted([rule[0], "cli-exhausted"])

    tariff(demo_server, "usage", "send", stdin=usage_lines("cli-alert", 1))  # 49995 left: LOW_BALANCE fires
    [alert] = [
        json.loads(line)
        for line in tariff(demo_server, "alerts", "watch", "--count", "1", "--json").stdout.splitlines()
    ]
    assert (alert["seq"], alert["type"], alert["customer_id"]) == ("1", "LOW_BALANCE", "acme")
    assert alert["details"] == {"credits_available": "49995", "threshold": "49999"}
    shown = tariff(demo_server, "alerts", "watch", "--count", "1").stdout
    assert shown.startswith("1  ") and "LOW_BALANCE  acme" in shown


def test_alerts_delete(demo_server: ServerProcess) -> None:
    tariff(demo_server, "alerts", "create", "--all", "--type", "CREDITS_EXHAUSTED", "--id", "cli-gone")
    tariff(demo_server, "alerts", "create", "--customer", "acme", "--type", "CREDITS_EXHAUSTED", "--id", "cli-kept")
    deleted = tariff(demo_server, "alerts", "delete", "cli-gone")
    assert table_rows(deleted.stdout)[-1] == ["cli-gone", "(all)", "CREDITS_EXHAUSTED"]
    again = json.loads(tariff(demo_server, "alerts", "delete", "cli-gone", "--json").stdout)
    assert (again["id"], again["all"], again["type"]) == ("cli-gone", True, "CREDITS_EXHAUSTED")  # the same answer
    listed = json.loads(tariff(demo_server, "alerts", "list", "--json").stdout)["rules"]
    assert [r["id"] for r in listed] == ["cli-kept"]
    unknown = tariff(demo_server, "alerts", "delete", "no-such-rule", check=False)
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("tariff: NOT_FOUND: alert rule 'no-such-rule' does not exist"), unknown.stderr
    reused = tariff(
        demo_server, "alerts", "create", "--all", "--type", "CREDITS_EXHAUSTED", "--id", "cli-gone", check=False
    )
    assert reused.returncode == 1 and "ALREADY_EXISTS: alert rule 'cli-gone' was deleted" in reused.stderr


def test_alerts_create_refusals(demo_server: ServerProcess) -> None:
    both = tariff(demo_server, "alerts", "create", "--type", "LOW_BALANCE", "--threshold", "1", check=False)
    assert both.returncode == 2 and "exactly one of --customer ID and --all" in both.stderr
    negative = tariff(
        demo_server,
        "alerts",
        "create",
        "--customer",
        "acme",
        "--type",
        "SPEND_THRESHOLD",
        "--threshold",
        "-1",
        check=False,
    )
    assert negative.returncode == 1
    assert negative.stderr.startswith("tariff: INVALID_ARGUMENT: threshold:"), negative.stderr
    assert json.loads(tariff(demo_server, "alerts", "list", "--json").stdout) == {"rules": []}


def test_watch_balance_prints_the_balance_then_the_next_one(demo_server: ServerProcess) -> None:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": demo_server.target, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    watching = subprocess.Popen(
        [str(TARIFF), "watch", "balance", "acme", "--count", "2", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
    )
    try:
        assert watching.stdout is not None
        first = json.loads(watching.stdout.readline())
        assert first["credits_remaining"] == "50000"
        tariff(demo_server, "usage", "send", stdin=usage_lines("cli-watch", 1))
        second = json.loads(watching.stdout.readline())
        assert second["credits_remaining"] == "49995"
        assert watching.wait(timeout=30) == 0
    finally:
        watching.kill()
        watching.wait()
    line = tariff(demo_server, "watch", "balance", "acme", "--count", "1").stdout
    assert line.startswith("seq ") and "remaining 49995 credits" in line and "period charges 5" in line


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupted(demo_server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    """Runs a watch command until it prints its first line, then sends it SIGINT, as Ctrl-C does."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": demo_server.target, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    watching = subprocess.Popen(
        [str(TARIFF), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        # SIGINT at its default, as under a terminal: a suite started as a background job of a non-interactive shell
        # runs with SIGINT ignored, every process it starts inherits that, and Python then never raises
        # KeyboardInterrupt, so the watch would run on.
        preexec_fn=_sigint_default,
    )
    try:
        assert watching.stdout is not None
        first = watching.stdout.readline()
        watching.send_signal(signal.SIGINT)
        stdout, stderr = watching.communicate(timeout=30)
        return subprocess.CompletedProcess(watching.args, watching.returncode, first + stdout, stderr)
    finally:
        watching.kill()
        watching.wait()


def test_ctrl_c_ends_a_watch_quietly_with_status_0(demo_server: ServerProcess) -> None:
    # Interrupting is how a watch without --count ends (its help says so): not a failure, and no "Aborted!".
    balance = _interrupted(demo_server, "watch", "balance", "acme")
    assert (balance.returncode, balance.stderr) == (0, ""), balance
    assert balance.stdout.startswith("seq ") and "remaining 50000 credits" in balance.stdout
    tariff(demo_server, "alerts", "create", "--customer", "acme", "--type", "LOW_BALANCE", "--threshold", "49999")
    tariff(demo_server, "usage", "send", stdin=usage_lines("cli-interrupt", 1))
    alerts = _interrupted(demo_server, "alerts", "watch")
    assert (alerts.returncode, alerts.stderr) == (0, ""), alerts
    assert "LOW_BALANCE  acme" in alerts.stdout
