"""The bench's server processes end with the bench: a bench killed by SIGKILL, which runs no cleanup, still
leaves no server behind (they run in their own sessions, so no terminal signal reaches them)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.serverproc import REPO_ROOT

# A stand-in bench: starts the no-op reference server as the bench does, reports its pid, then waits to be killed.
BENCH_STAND_IN = """
import sys, time
from pathlib import Path
from server.bench.target import reference_server
server = reference_server("noop", Path(sys.argv[1]))
server.start()
print(server.pid, flush=True)
time.sleep(120)
"""


def _running(pid: int) -> bool:
    """True while the process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_bench_killed_by_sigkill_leaves_no_server_running(tmp_path: Path) -> None:
    bench = subprocess.Popen(
        [sys.executable, "-c", BENCH_STAND_IN, str(tmp_path / "server.log")],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    server_pid = 0
    try:
        assert bench.stdout is not None
        server_pid = int(bench.stdout.readline())
        assert _running(server_pid), "the server was not running while the bench was"
        bench.send_signal(signal.SIGKILL)
        bench.wait(timeout=10)
        deadline = time.monotonic() + 20
        while _running(server_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(server_pid), "the server outlived the bench that started it"
    finally:
        bench.kill()
        if server_pid and _running(server_pid):
            os.kill(server_pid, signal.SIGKILL)
