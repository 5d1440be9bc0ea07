"""gRPC's fork handlers are off in every Tariff process (server/__init__.py): Tariff forks only to exec, and
those handlers deadlocked a `tariff bench` in fork() against gRPC's shutdown of a closed channel."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.serverproc import REPO_ROOT


def _setting_after_importing_server(environment: dict[str, str]) -> str:
    code = "import server, os; print(os.environ['GRPC_ENABLE_FORK_SUPPORT'])"
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=environment, capture_output=True, text=True, check=True
    )
    return result.stdout.strip()


def test_importing_the_server_turns_grpc_fork_support_off() -> None:
    environment = {key: value for key, value in os.environ.items() if key != "GRPC_ENABLE_FORK_SUPPORT"}
    assert _setting_after_importing_server(environment) == "false"


def test_an_explicit_setting_is_kept() -> None:
    assert _setting_after_importing_server(os.environ | {"GRPC_ENABLE_FORK_SUPPORT": "true"}) == "true"


def test_this_test_process_has_it_off_before_grpc_was_imported() -> None:
    assert os.environ["GRPC_ENABLE_FORK_SUPPORT"] == "false"
