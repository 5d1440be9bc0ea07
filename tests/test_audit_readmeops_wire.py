"""An audit of README's operational parts against `tariff serve`: its flags (README, "Server flags": every option of
`tariff serve --help` in the table, with its default), and what a bad value answers: a usage error or one line, exit
status 2, no Python traceback, and nothing written to the data directory ("A server that refuses to start says why in
one line and exits with status 2"; "any other address is refused (exit 2)").

Refusals exit before a server starts, so these tests start no server that stays up: fast, no timing.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import REPO_ROOT


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`tariff serve ARGS` to completion: each case here is refused before it serves."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_refused(result: subprocess.CompletedProcess[str], data_dir: Path, says: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr}"
    assert says in result.stderr, result.stderr
    assert not data_dir.exists(), "the data directory was touched"


@pytest.mark.parametrize("port", ["²", "١٢٣٤٥", "５００５１"])
def test_a_listen_port_of_other_digits_than_ascii_is_refused_in_one_line(tmp_path: Path, port: str) -> None:
    """README, "Listening and TLS": a port from 0 to 65535, any other address refused with exit 2. Python's
    str.isdigit() takes superscripts and other scripts' digits, which int() then refuses (a traceback) or gRPC
    cannot bind (a line without the reason)."""
    data_dir = tmp_path / "data"
    result = run_serve("--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir))
    assert_refused(result, data_dir, "give host:port, the port from 0 (any free port) to 65535")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines


@pytest.mark.parametrize("ttl", ["nan", "inf", "-inf", "1e400"])
def test_a_reservation_ttl_max_that_is_not_a_finite_number_is_a_usage_error(tmp_path: Path, ttl: str) -> None:
    """`--reservation-ttl-max-s` is seconds, at least 0.001: NaN and infinity are not such a number, and used to
    stop the server with a traceback (exit 1) after it had opened the data directory and loaded the demo."""
    data_dir = tmp_path / "data"
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--demo", "--reservation-ttl-max-s", ttl)
    assert_refused(result, data_dir, "Invalid value for '--reservation-ttl-max-s'")
