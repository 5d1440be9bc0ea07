"""An acceptance audit (4) of the `tariff` client commands as a demanding operator scripts them, against real
server processes on their own 127.0.0.1 ports:

- output piped into a reader that closes early (`tariff customers list | head -1`): the command ends quietly with
  exit status 141 (128 + SIGPIPE, what the shell reports for `yes | head -1`), nothing on stderr; it exited 1, the
  status of a failed call, so a script could not tell the two apart;
- `--timeout-s` (env TARIFF_TIMEOUT_S) bounds every unary call: a server that does not answer ends the command with
  one line naming DEADLINE_EXCEEDED and the option, and one that cannot be reached with one UNAVAILABLE line, both
  exit status 3 (distinct from 1, a call the server refused, and 2, a malformed argument); zero, negative,
  non-numeric and non-finite values are usage errors naming the option;
- `--json` prints one object whatever the command: a list under its name (`invoices list`, `close` and `export
  --format json` printed bare arrays);
- a closed stdout (`>&-`) is refused before anything is sent (it was a traceback after the call, a change made);
- Ctrl-C while a call waits exits 130 with one line (it was click's "Aborted!", status 1).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import REPO_ROOT, ServerProcess, free_port, wait_for
from tests.test_cli import TARIFF, tariff, usage_lines

EXIT_BROKEN_PIPE = 141
EXIT_NO_ANSWER = 3


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("audit-cli4") / "data", demo=True)
    server.start()
    yield server
    server.stop()


def run_into_closed_pipe(server: ServerProcess, *args: str, stdin: str | None = None) -> tuple[int, str]:
    """`tariff ARGS` with stdout a pipe whose reader has already gone (as after `| head -1` read its line): every
    write to stdout fails with EPIPE. Returns the exit status and stderr."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": server.target, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [str(TARIFF), *args],
            input=stdin,
            stdout=write_end,
            stderr=subprocess.PIPE,
            text=True,
            env=environment,
            cwd=REPO_ROOT,
            timeout=120,
        )
    finally:
        os.close(write_end)
    return done.returncode, done.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("customers", "list"),
        ("customers", "list", "--json"),
        ("balance", "acme"),
        ("ratecards", "show", "ai-credits"),
        ("invoices", "export", "--period", "2026-12"),
        ("watch", "balance", "acme", "--count", "1"),
        ("--help",),
        ("--version",),
        ("balance", "--help"),
    ],
    ids=lambda args: "-".join(a.strip("-") for a in args),
)
def test_output_into_a_closed_pipe_ends_quietly_with_status_141(demo: ServerProcess, args: tuple[str, ...]) -> None:
    status, stderr = run_into_closed_pipe(demo, *args)
    assert (status, stderr) == (EXIT_BROKEN_PIPE, "")


def test_usage_send_into_a_closed_pipe_sends_the_events_and_ends_quietly(demo: ServerProcess) -> None:
    events = usage_lines("cli4-pipe", 2)
    status, stderr = run_into_closed_pipe(demo, "usage", "send", "--json", stdin=events)
    assert (status, stderr) == (EXIT_BROKEN_PIPE, "")
    again = json.loads(tariff(demo, "usage", "send", "--json", stdin=events).stdout)
    assert (again["accepted"], again["duplicates"]) == (0, 2)


def test_a_reader_that_takes_everything_still_gets_status_0(demo: ServerProcess) -> None:
    done = tariff(demo, "customers", "list", "--json")
    assert "acme" in [c["id"] for c in json.loads(done.stdout)["customers"]]
    assert done.stderr == ""


@pytest.mark.parametrize("value", ["0", "-1", "abc", "nan", "inf", "", "86401"])
def test_a_timeout_that_is_not_a_positive_number_of_seconds_is_a_usage_error(demo: ServerProcess, value: str) -> None:
    done = tariff(demo, "balance", "acme", "--timeout-s", value, check=False)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "--timeout-s" in done.stderr


def test_the_timeout_from_the_environment_is_checked_as_the_option_is(demo: ServerProcess) -> None:
    done = tariff(demo, "balance", "acme", env={"TARIFF_TIMEOUT_S": "0"}, check=False)
    assert done.returncode == 2, done.stderr
    assert "--timeout-s" in done.stderr


def test_a_valid_timeout_answers_as_usual(demo: ServerProcess) -> None:
    done = tariff(demo, "balance", "acme", "--json", "--timeout-s", "30")
    assert json.loads(done.stdout)["customer_id"] == "acme"
    done = tariff(demo, "balance", "acme", "--json", env={"TARIFF_TIMEOUT_S": "2.5"})
    assert json.loads(done.stdout)["customer_id"] == "acme"


def test_every_client_command_documents_the_timeout_and_its_default(demo: ServerProcess) -> None:
    for args in (("balance",), ("customers", "list"), ("alerts", "create"), ("usage", "send")):
        shown = tariff(demo, *args, "--help").stdout
        assert "--timeout-s" in shown and "TARIFF_TIMEOUT_S" in shown and "default: 10" in shown, shown


def test_a_server_that_does_not_answer_is_one_deadline_line_and_status_3(stopped: ServerProcess) -> None:
    done = tariff(stopped, "balance", "acme", "--timeout-s", "0.5", check=False)
    assert done.returncode == EXIT_NO_ANSWER, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("tariff: DEADLINE_EXCEEDED: ") and "--timeout-s 0.5" in lines[0], lines


def test_a_server_that_cannot_be_reached_is_one_unavailable_line_and_status_3() -> None:
    nobody = f"127.0.0.1:{free_port()}"
    for args in (("balance", "acme"), ("customers", "list", "--json"), ("alerts", "list")):
        done = tariff(nobody, *args, check=False)
        assert done.returncode == EXIT_NO_ANSWER, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("tariff: UNAVAILABLE: "), done.stderr
        assert done.stdout == ""


def test_usage_send_that_cannot_reach_the_server_says_how_far_it_got_and_exits_3() -> None:
    done = tariff(
        f"127.0.0.1:{free_port()}", "usage", "send", "--retry-s", "0", stdin=usage_lines("cli4-gone", 1), check=False
    )
    assert done.returncode == EXIT_NO_ANSWER, done.stderr
    lines = done.stderr.strip().splitlines()
    assert "the first event not acknowledged is line 1" in lines[-2], done.stderr
    assert lines[-1].startswith("tariff: UNAVAILABLE: "), done.stderr


def test_a_refused_call_still_exits_1(demo: ServerProcess) -> None:
    done = tariff(demo, "balance", "nobody", check=False)
    assert done.returncode == 1
    assert done.stderr.strip() == "tariff: NOT_FOUND: customer 'nobody' does not exist"


# Every client command's --json is one JSON object: a list comes under its name, as the wire's List*Response
# has it (`{"customers": [...]}`, `{"rules": [...]}`), so a script reads every command alike and a field can
# be added beside the list. The invoices commands printed a bare array.
@pytest.mark.parametrize(
    ("args", "name"),
    [
        (("customers", "list"), "customers"),
        (("products", "list"), "products"),
        (("ratecards", "list"), "rate_cards"),
        (("ratecard", "versions", "ai-credits"), "versions"),
        (("alerts", "list"), "rules"),
        (("audit", "--limit", "2"), "entries"),
        (("grants", "acme"), "grants"),
        (("invoices", "list"), "invoices"),
        (("invoices", "export", "--period", "2026-12", "--format", "json"), "invoices"),
        (("invoices", "close", "--all"), "invoices"),
    ],
    ids=lambda a: "-".join(a) if isinstance(a, tuple) else a,
)
def test_a_list_in_json_is_an_object_naming_it(demo: ServerProcess, args: tuple[str, ...], name: str) -> None:
    printed = json.loads(tariff(demo, *args, "--json").stdout)
    assert isinstance(printed, dict), printed
    assert isinstance(printed[name], list), printed


@pytest.mark.parametrize(
    "args",
    [("balance", "acme"), ("invoices", "export", "--period", "2026-12"), ("customers", "create", "cli4-closed")],
    ids=["table", "csv", "a-change"],
)
def test_a_closed_stdout_is_refused_before_anything_is_sent(demo: ServerProcess, args: tuple[str, ...]) -> None:
    """`tariff ... >&-`: there is nowhere to print the answer; it was a Python traceback (exit 1), after the call
    had been sent. Now one line, exit 2, nothing sent (`>/dev/null` is how to drop the output)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": demo.target, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    done = subprocess.run(
        ["sh", "-c", 'exec "$0" "$@" >&-', str(TARIFF), *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == "tariff: stdout is closed: nothing was sent (>/dev/null discards the output)"
    missing = tariff(demo, "customers", "show", "cli4-closed", check=False)
    assert missing.stderr.strip() == "tariff: NOT_FOUND: customer 'cli4-closed' does not exist"


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _connected(pid: int, port: int) -> bool:
    """Whether process `pid` holds an established TCP connection to 127.0.0.1:`port` (it is inside its call)."""
    sockets = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:[") : -1])
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):  # gRPC may use an IPv6 socket, 127.0.0.1 mapped into it
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            remote, state, inode = fields[2], fields[3], fields[9]
            if remote.endswith(f"0100007F:{port:04X}") and state == "01" and inode in sockets:
                return True
    return False


def test_ctrl_c_during_a_call_exits_130_with_one_line(stopped: ServerProcess) -> None:
    """Ctrl-C while a call waits for the server: exit 130 (128 + SIGINT) and one line, not click's "Aborted!" with
    status 1, a failed call's (the watch commands, for which Ctrl-C is how they end, still exit 0)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": stopped.target, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1"}
    waiting = subprocess.Popen(
        [str(TARIFF), "balance", "acme", "--timeout-s", "600"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        preexec_fn=_sigint_default,  # as under a terminal (see tests/test_cli_watch.py)
    )
    try:
        port = int(stopped.target.rsplit(":", 1)[1])
        assert wait_for(lambda: _connected(waiting.pid, port), 60), "the command never connected"
        waiting.send_signal(signal.SIGINT)
        stdout, stderr = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
        waiting.wait()
    assert (waiting.returncode, stdout, stderr) == (130, "", "tariff: interrupted\n")
