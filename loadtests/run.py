"""`make loadtest`: a server on a temp data dir, the bench catalogue, locust headless for a fixed time, then stop.

Environment: LOADTEST_S (duration, default 30), LOADTEST_USERS (default 20), LOADTEST_SPAWN_RATE
(default 10/s), LOADTEST_CUSTOMERS (default 200) and the user weights read by locustfile.py. Exits
with locust's code: non-zero when any request failed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from server.bench.seed import seed  # noqa: E402  (needs the repo root on sys.path)
from server.bench.target import tariff_server  # noqa: E402


def main() -> int:
    duration_s = int(os.environ.get("LOADTEST_S", "30"))
    users = os.environ.get("LOADTEST_USERS", "20")
    spawn_rate = os.environ.get("LOADTEST_SPAWN_RATE", "10")
    customers = int(os.environ.get("LOADTEST_CUSTOMERS", "200"))
    work_dir = Path(tempfile.mkdtemp(prefix="tariff-loadtest-"))
    server = tariff_server(work_dir / "data", work_dir / "server.log")
    try:
        server.start()
        seed(server.target, customers)
        print(
            f"loadtest: server on {server.target} (data in {work_dir}), {customers} customers; {duration_s} s",
            flush=True,
        )
        locust = [
            sys.executable,
            "-m",
            "locust",
            "-f",
            str(REPO_ROOT / "loadtests" / "locustfile.py"),
            "--headless",
            "--users",
            users,
            "--spawn-rate",
            spawn_rate,
            "--run-time",
            f"{duration_s}s",
            "--host",
            server.target,
            "--only-summary",
            "--stop-timeout",
            "5",
        ]
        env = {**os.environ, "LOADTEST_CUSTOMERS": str(customers), "PYTHONPATH": str(REPO_ROOT)}
        return subprocess.run(locust, env=env, cwd=REPO_ROOT).returncode
    finally:
        server.stop()
        shutil.rmtree(work_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
