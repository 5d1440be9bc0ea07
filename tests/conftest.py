"""Shared fixtures: real server processes (tests/serverproc.py) and the `slow` marker."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import settings

import server as _tariff_server  # noqa: F401  (first: it turns gRPC's fork handlers off before grpc is imported)

# Tests import helpers as `tests.serverproc`: pyproject's `pythonpath = ["."]` puts the repo root on sys.path.
from tests.month_turn import month_start_s, month_turn_wait_s
from tests.serverproc import ServerFactory, ServerProcess

# `make test` (TARIFF_HYPOTHESIS=derandomized) runs every property on the same examples each time, seeded from the
# test itself, so that CI's verdict on a commit is one that a rerun gives; plain `pytest` and `make soak` draw new
# examples each run, which is how the properties keep finding what the fixed ones miss. Loaded here, before any
# test module builds its own settings on this profile.
settings.register_profile("derandomized", derandomize=True, database=None, print_blob=True)
settings.load_profile(os.environ.get("TARIFF_HYPOTHESIS", "default"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: long-running; `make test-fast` deselects it")
    config.addinivalue_line(
        "markers", "clock_at_import: the module reads the clock at import; skipped once a calendar month has turned"
    )


# The suite's longest files (durations summed per file, one `make test`-style run), longest first. `--dist loadfile`
# hands files to the workers in collection order (`--no-loadscope-reorder`, in the Makefile; by default xdist would
# order them by their number of tests, which put files of few long tests, such as the soak or the online rerating,
# near the end, where one worker ran them alone while the others had finished). The order changes only when a test
# runs, never what it checks; a file missing from the list runs after these, files with more tests first.
LONGEST_FILES_FIRST = (
    "test_fuzz_server.py",
    "test_bench_smoke.py",
    "test_audit_ops2_wire.py",
    "test_soak.py",
    "test_audit_credits_combo_wire.py",
    "test_audit_reliab2_wire.py",
    "test_server_rerate_online.py",
    "test_cli.py",
    "test_audit_longrun_wire.py",
    "test_audit_ops3_wire.py",
    "test_audit_concurrency_wire.py",
    "test_audit_prechecks_wire.py",
    "test_audit_interleave_wire.py",
    "test_audit_contracts3_wire.py",
    "test_audit_credits2_wire.py",
    "test_audit_crossread_wire.py",
    "test_audit_alerts_combo_wire.py",
    "test_audit_monthend_wire.py",
    "test_audit_holdretry_wire.py",
    "test_audit_replayeq_wire.py",
    "test_audit_rerating_wire.py",
    "test_decimal_grammar_wire.py",
    "test_server_auth.py",
    "test_audit_gateway2_wire.py",
    "test_server_ops.py",
    "test_audit_cli3_wire.py",
    "test_readme.py",
    "test_crash.py",
    "test_audit_calendar_wire.py",
    "test_audit_obs_wire.py",
    "test_clock_order_wire.py",
    "test_audit_recovery_wire.py",
    "test_server_limits.py",
    "test_server_cohort_crash.py",
    "test_audit_idleconns_wire.py",
    "test_audit_revenue2_wire.py",
    "test_audit_prices4_wire.py",
    "test_audit_invoices3_wire.py",
    "test_audit_topups_wire.py",
    "test_audit_explain_wire.py",
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FILES_FIRST)}
    tests_in = Counter(item.path for item in items)
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), -tests_in[item.path], str(item.path)))


# The month the test modules were imported in (this file is imported before any of them, at collection): the
# instants a module takes at import (`H_MS = this_hour_ms()`, `AT_MS = now_ms() - 60_000`) are of that month however
# late the module runs, and a whole run (every module collected first) lasts many minutes.
IMPORTED_IN_MONTH_S = month_start_s(time.time())


@pytest.fixture(scope="module", autouse=True)
def inside_one_calendar_month(request: pytest.FixtureRequest) -> None:
    """Every module runs inside one calendar month (UTC), clear of its first and last minutes: many tests work out
    "this month" from the wall clock while the server bills by its own (tests/month_turn.py). Autouse, so it comes
    before a module's own server fixture; it waits only within minutes of a month's turn. A module marked
    `clock_at_import` is skipped when the month it runs in is not the one it was imported in: its instants taken
    at import would lie in another month than the server's now, which no wait mends."""
    wait_s = month_turn_wait_s(time.time())
    if wait_s > 0:
        print(f"waiting {wait_s:.0f} s for a calendar month's turn to pass (tests/month_turn.py)")
        time.sleep(wait_s)
    if request.node.get_closest_marker("clock_at_import") and month_start_s(time.time()) != IMPORTED_IN_MONTH_S:
        pytest.skip("imported in the month before this one: its instants taken at import are a month off the server's")


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[ServerFactory]:
    """A function creating ServerProcess objects (data under tmp_path/NAME/data), started unless
    start=False; every one is killed at teardown, and its log tail printed (shown on failure)."""
    servers: list[ServerProcess] = []

    def make(
        *,
        demo: bool = False,
        extra_args: Sequence[str] = (),
        name: str | None = None,
        start: bool = True,
        api_key: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess:
        name = name or f"server{len(servers)}"
        server = ServerProcess(tmp_path / name / "data", demo=demo, extra_args=extra_args, api_key=api_key, env=env)
        servers.append(server)
        if start:
            server.start()
        return server

    yield make
    for server in servers:
        server.stop()
        if server.starts:
            print(f"--- {server!r}: {server.log_path} (tail) ---\n{server.log_tail(40)}")


@pytest.fixture
def demo_server(server_factory: ServerFactory) -> ServerProcess:
    """A started server with the demo catalogue (`--demo`), fresh for each test."""
    return server_factory(demo=True, name="demo")


@pytest.fixture
def stopped(tmp_path: Path) -> Iterator[ServerProcess]:
    """A server that accepts connections (the kernel does, into the listen backlog) but answers nothing: SIGSTOP."""
    server = ServerProcess(tmp_path / "data", demo=True)
    server.start()
    assert server.pid is not None
    os.kill(server.pid, signal.SIGSTOP)
    try:
        yield server
    finally:
        os.kill(server.pid, signal.SIGCONT)
        server.stop()
