"""`tariff bench --no-explain-index`: every Tariff server the bench starts serves without the explain index, and the
report says so. Runs the real bench at tiny sizes (ingest only); asserts what it started, never how fast."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.serverproc import REPO_ROOT

pytestmark = pytest.mark.slow


def _bench(tmp: Path, *flags: str) -> tuple[dict[str, object], str, Path]:
    out, work = tmp / "bench.json", tmp / "work"
    sizes = ["--quick", "--only", "ingest", "--runs", "1", "--no-postgres", "--batches", "2", "--batch-events", "20"]
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "bench", *sizes, "--out", str(out), "--work-dir", str(work), *flags],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, f"bench exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return json.loads(out.read_text()), done.stdout, work


def _tariff_data_dirs(work: Path) -> list[Path]:
    found = sorted(path / "data" for path in work.glob("tariff-*") if (path / "data").is_dir())
    assert found, f"no Tariff data directory under {work}"
    return found


def test_no_explain_index_reaches_every_tariff_server(tmp_path: Path) -> None:
    document, stdout, work = _bench(tmp_path / "off", "--no-explain-index")
    assert document["config"]["serve_args"] == ["--no-explain-index"]  # type: ignore[index]
    assert "every Tariff server ran with --no-explain-index" in stdout
    for data_dir in _tariff_data_dirs(work):
        assert not (data_dir / "explain").exists(), f"{data_dir} has an explain index"


def test_without_the_flag_the_servers_keep_the_index(tmp_path: Path) -> None:
    document, stdout, work = _bench(tmp_path / "on")
    assert document["config"]["serve_args"] == []  # type: ignore[index]
    assert "ran with --no-explain-index" not in stdout
    for data_dir in _tariff_data_dirs(work):
        assert (data_dir / "explain").exists(), f"{data_dir} has no explain index"
