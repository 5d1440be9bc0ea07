"""Starting safely and the operator's log: one server per port and per data directory, bind before touching
the data, one clear line on a refusal, and a log an operator can read (issue 9, findings 1, 2, 3 and 5).

Real server processes (tests/serverproc.py) on real 127.0.0.1 sockets.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

from tariff.v1 import contracts_pb2

from tests.demo_usage import demo_batch
from tests.serverproc import HOST, REPO_ROOT, ServerFactory, ServerProcess, wait_for


def run_serve(*args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """`tariff serve ARGS` to completion (a server that refuses to start exits at once)."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout_s,
        stdin=subprocess.DEVNULL,
    )


def output_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def test_a_second_server_on_a_taken_port_refuses_and_writes_nothing(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    first = server_factory(demo=True, name="first")
    other_dir = tmp_path / "second" / "data"
    result = run_serve("--listen", first.target, "--data-dir", str(other_dir), "--demo")
    assert result.returncode == 2, output_lines(result)
    assert output_lines(result)[-1].endswith(f"{first.target} is already in use"), output_lines(result)
    assert not other_dir.exists(), "nothing may be written by a server that did not start"
    # The first server alone answers, with its own state.
    with first.client() as client:
        for _ in range(4):
            assert client.get_balance("acme").credits_remaining == "50000"


def test_a_port_held_by_another_program_gives_one_line_and_status_2(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        holder.listen()
        listen = f"{HOST}:{holder.getsockname()[1]}"
        data_dir = tmp_path / "data"
        result = run_serve("--listen", listen, "--data-dir", str(data_dir), "--demo")
    assert result.returncode == 2
    lines = output_lines(result)
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"{listen} is already in use"), lines
    assert not data_dir.exists(), "bind first: nothing (no demo catalogue) may reach the data directory"


def test_a_second_server_on_a_locked_data_dir_refuses_naming_it_and_the_holder(
    server_factory: ServerFactory,
) -> None:
    first = server_factory(demo=True, name="first")
    with first.client() as client:
        ack = client.ingest_batch(demo_batch("b1", "lock", 3).events, "b1")
    journal = first.data_dir / "journal"
    before = {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in journal.iterdir()}

    result = run_serve("--data-dir", str(first.data_dir), "--listen", f"{HOST}:0")
    lines = output_lines(result)
    assert result.returncode == 2, lines
    assert len(lines) == 1, lines
    assert str(first.data_dir) in lines[0] and f"pid {first.pid}" in lines[0], lines
    assert {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in journal.iterdir()} == before
    with first.client() as client:
        assert client.get_balance("acme").as_of_seq == ack.journal_seq


def test_the_lock_dies_with_its_holder_so_a_restart_after_kill_9_starts(server_factory: ServerFactory) -> None:
    first = server_factory(demo=True, name="first")
    with first.client() as client:
        ack = client.ingest_batch(demo_batch("b1", "k9", 2).events, "b1")
    first.kill9()
    second = ServerProcess(first.data_dir, port=0)  # another process, another port, the same data directory
    try:
        second.start()
        with second.client() as client:
            assert client.get_balance("acme").as_of_seq == ack.journal_seq
    finally:
        second.stop()


def log_records(server: ServerProcess) -> list[dict[str, object]]:
    """The JSON lines of the server's log (its banner and anything else are not JSON)."""
    records = []
    for line in server.log_path.read_text().splitlines():
        if line.startswith("{"):
            records.append(json.loads(line))
    return records


def test_the_operators_log_in_json_start_admin_activity_and_stop(server_factory: ServerFactory) -> None:
    server = server_factory(
        demo=True, name="logged", extra_args=["--log-format", "json", "--log-activity-every-s", "0.5"]
    )
    start = next(r for r in log_records(server) if r["msg"] == "serving")
    assert start["listen"] == server.target and start["data_dir"] == str(server.data_dir)
    assert start["journal_seq"] == 7 and start["customers"] == 1
    assert {"version", "recovery_s"} <= start.keys()
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="initech"))
        batch = demo_batch("b1", "act", 4)
        batch.events[3].customer_id = "nobody"
        client.ingest_batch(batch.events, "b1")
        client.ingest_batch(batch.events, "b1-again")  # 3 duplicates, the same refusal
    assert wait_for(lambda: any(r["msg"] == "activity" for r in log_records(server)), 10)
    changes = [r for r in log_records(server) if r["msg"] == "admin change"]
    assert {"actor": "anonymous", "action": "CreateCustomer", "target": "customer/initech"}.items() <= changes[
        -1
    ].items()
    activity = [r for r in log_records(server) if r["msg"] == "activity"]
    totals = {key: sum(int(r[key]) for r in activity) for key in ("accepted", "duplicates", "rejected")}  # type: ignore[call-overload]
    assert totals == {"accepted": 3, "duplicates": 3, "rejected": 2}
    assert "UNKNOWN_CUSTOMER:" in "".join(str(r["rejected_by_reason"]) for r in activity)
    assert {"events_per_s", "commit_p99_ms", "journal_bytes", "streams"} <= activity[0].keys()
    # Idle: no further activity line.
    seen = len(activity)
    time.sleep(1.2)
    assert len([r for r in log_records(server) if r["msg"] == "activity"]) == seen
    assert server.terminate() == 0
    stop = log_records(server)[-1]
    assert str(stop["msg"]).startswith("stopped at journal seq 9"), stop


def test_grpc_core_lines_do_not_leak_into_the_log(server_factory: ServerFactory) -> None:
    """gRPC core writes `E... chttp2_transport.cc:...] ... Got goaway` and the like straight to stderr, as much
    as GRPC_VERBOSITY / GRPC_TRACE in the environment ask for: none of it reaches the operator's log."""
    server = server_factory(demo=True, name="quiet", env={"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "http"})
    for _ in range(3):
        with server.client() as client:
            client.get_balance("acme")
    with server.client() as client:  # a connection still open at shutdown gets a GOAWAY
        client.get_balance("acme")
        assert server.terminate() == 0
    log = server.log_path.read_text()
    core_lines = [line for line in log.splitlines() if re.match(r"[IWE]\d{4} ", line) or ".cc:" in line]
    assert core_lines == [], core_lines[:5]
    assert "stopped at journal seq" in log
