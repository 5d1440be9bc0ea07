"""A new user's first steps (README "Two commands", "Admin CLI", `make wheel`): what `tariff serve --demo`
prints to try it must work as printed, also where no `.venv` sits next to the server (a wheel installed
elsewhere, the Docker image).

Real server processes on 127.0.0.1, a free port each, started from a working directory outside the repository.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.serverproc import HOST, free_port, wait_for

START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 20.0


def demo_hint(log_path: Path) -> str | None:
    """The banner's `or:` line: the Python one-liner it suggests, as printed (None until it is printed)."""
    for line in log_path.read_text(errors="replace").splitlines():
        if line.lstrip().startswith("or:"):
            return line.split("or:", 1)[1].strip()
    return None


def test_the_demo_banners_python_hint_runs_as_printed_from_the_servers_directory(tmp_path: Path) -> None:
    listen = f"{HOST}:{free_port()}"
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "server.cli", "serve", "--listen", listen, "--data-dir", "data", "--demo"],
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        assert wait_for(lambda: demo_hint(log_path) is not None, START_TIMEOUT_S), log_path.read_text()
        hint = demo_hint(log_path)
        assert hint is not None
        done = subprocess.run(
            ["bash", "-c", hint],
            cwd=tmp_path,
            env={**os.environ, "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, f"`{hint}` exited {done.returncode}: {done.stderr}"
        assert 'customer_id: "acme"' in done.stdout and 'credits_remaining: "50000"' in done.stdout, done.stdout
    finally:
        server.send_signal(signal.SIGINT)
        returncode = server.wait(STOP_TIMEOUT_S)
    assert returncode == 0, log_path.read_text()
