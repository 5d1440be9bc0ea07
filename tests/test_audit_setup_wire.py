"""A new user's first steps (README "Two commands", "Admin CLI", `make wheel`): what `tariff serve --demo`
prints to try it must work as printed, also where no `.venv` sits next to the server (a wheel installed
elsewhere, the Docker image).

Real server processes on 127.0.0.1, a free port each, started from a working directory outside the repository.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

from engine import commands as cmd
from engine.ratecard import UnitPrice
from server.demo import demo_commands
from tests.serverproc import HOST, REPO_ROOT, free_port, wait_for

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


# What the README's quick start says, against what the code and the Makefile do -------------------------------

README = REPO_ROOT / "README.md"
MAKEFILE = REPO_ROOT / "Makefile"


def quick_start() -> str:
    text = README.read_text()
    start = text.index("## Two commands\n")
    return " ".join(text[start : text.index("\n## ", start + 1)].split())  # one space for every line break


def test_the_quick_start_shows_the_demos_gpt4_complex_summary_formula_as_the_demo_prices_it() -> None:
    demo_rates = [
        rate
        for command in demo_commands(0)
        if isinstance(command, cmd.CreateDraftVersion)
        for rate in command.upsert_rates
    ]
    complex_summary = {"action": "summary", "model": "gpt-4", "complexity": "complex"}
    (formula,) = [
        rate.price.price for rate in demo_rates if isinstance(rate.price, UnitPrice) and rate.match == complex_summary
    ]
    assert f"`{formula}` =" in quick_start(), f"the quick start should show the demo's formula `{formula}`"


def test_the_quick_start_names_what_make_install_needs() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    minimum = pyproject["project"]["requires-python"].removeprefix(">=")
    section = quick_start()
    assert f"Python {minimum}" in section, f"the quick start should say `make run` needs Python {minimum}"
    assert "Rust toolchain" in section, "the quick start should say `make run` builds the kernel with Rust"
    assert "PYTHON=" in section, "the quick start should say how to choose the interpreter (make's PYTHON)"


def test_the_quick_start_names_every_check_make_test_runs_before_the_suite() -> None:
    makefile = MAKEFILE.read_text()
    prerequisites = re.search(r"^test: (.*)$", makefile, re.M)
    assert prerequisites is not None
    checks = [target for target in prerequisites[1].split() if target != "install"]
    assert checks, "make test runs checks before the suite"
    section = quick_start()
    assert [target for target in checks if f"`make {target}`" not in section] == []


def test_the_docker_section_says_how_the_images_user_reads_a_mounted_key_file() -> None:
    uid = re.search(r"useradd [^\n]*--uid (\d+)", (REPO_ROOT / "Dockerfile").read_text())
    assert uid is not None, "the Dockerfile makes a system user with a fixed uid"
    text = README.read_text()
    start = text.index("## Docker\n")
    section = " ".join(text[start:].split("\n## ", 1)[0].split())
    assert f"uid {uid[1]}" in section and f"chown {uid[1]} keys.toml" in section, section
    assert "--api-keys /keys.toml" in section and "/keys.toml:ro" in section, section


# `make wheel`: "a wheel with the compiled kernel inside: it installs without Rust" ------------------------------


def packaged_sources() -> set[str]:
    """The wheel paths of the tracked .py files of every package pyproject.toml lists (each package's own
    directory, not its subdirectories: those are packages of their own, or not packaged)."""
    tool = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    files = set(tracked.stdout.split())
    expected = set()
    for package in tool["packages"]:
        source = tool["package-dir"].get(package, package.replace(".", "/"))
        for path in files:
            name = path.removeprefix(f"{source}/")
            if name != path and "/" not in name and name.endswith(".py"):
                expected.add(f"{package.replace('.', '/')}/{name}")
    return expected


def test_make_wheel_holds_the_sources_the_generated_client_and_the_kernel_and_nothing_left_over(
    tmp_path: Path,
) -> None:
    # A module a previous build left in setuptools' build/ (one since removed from the sources) must not ship.
    left_over = REPO_ROOT / "build" / f"lib.{sysconfig.get_platform()}-{sys.implementation.cache_tag}" / "server"
    left_over.mkdir(parents=True, exist_ok=True)
    (left_over / "removed_since_the_last_wheel.py").write_text("REMOVED = True\n")
    try:
        done = subprocess.run(
            ["make", "--no-print-directory", "wheel", f"WHEEL_DIR={tmp_path}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        (left_over / "removed_since_the_last_wheel.py").unlink(missing_ok=True)
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = tmp_path.glob("tariff-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
        scripts = archive.read(entry_points).decode()
    assert {name for name in names if name.endswith(".py")} == packaged_sources()
    assert {"tariff/v1/usage_pb2.py", "tariff/v1/usage_pb2_grpc.py", "tariff/v1/usage_pb2.pyi"} <= names
    assert "tariff/py.typed" in names and "engine/_kernel.pyi" in names
    assert [name for name in names if name.startswith("engine/_kernel.") and name.endswith(".so")], sorted(names)
    assert "tariff = server.cli:main" in scripts, scripts


def test_the_docker_section_gives_docker_stop_more_time_than_the_servers_grace() -> None:
    from server.app import SHUTDOWN_GRACE_S

    text = README.read_text()
    start = text.index("## Docker\n")
    section = " ".join(text[start:].split("\n## ", 1)[0].split())
    stop_timeout = re.search(r"--stop-timeout (\d+)", section)
    assert stop_timeout is not None, "docker stop kills after 10 s by default: the section should say how long to wait"
    assert int(stop_timeout[1]) > SHUTDOWN_GRACE_S, section
