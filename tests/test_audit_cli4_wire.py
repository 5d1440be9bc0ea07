"""An acceptance audit (4) of the `tariff` client commands as a demanding operator scripts them, against real
server processes on their own 127.0.0.1 ports:

- output piped into a reader that closes early (`tariff customers list | head -1`): the command ends quietly with
  exit status 141 (128 + SIGPIPE, what the shell reports for `yes | head -1`), nothing on stderr; it exited 1, the
  status of a failed call, so a script could not tell the two apart;
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator

import pytest

from tests.serverproc import REPO_ROOT, ServerProcess
from tests.test_cli import TARIFF, tariff, usage_lines

EXIT_BROKEN_PIPE = 141


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
