"""The committed generated code in clients/python/tariff/v1 is exactly what proto/ generates today."""

from __future__ import annotations

import filecmp
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _generator() -> object:
    spec = importlib.util.spec_from_file_location("proto_generate", ROOT / "proto" / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["proto_generate"] = module
    spec.loader.exec_module(module)
    return module


def test_committed_generated_code_matches_the_proto_files(tmp_path: Path) -> None:
    _generator().generate(tmp_path)  # type: ignore[attr-defined]
    fresh = tmp_path / "tariff" / "v1"
    committed = ROOT / "clients" / "python" / "tariff" / "v1"
    fresh_files = sorted(p.name for p in fresh.iterdir() if p.is_file())
    committed_files = sorted(p.name for p in committed.iterdir() if p.is_file() and p.suffix in (".py", ".pyi"))
    assert fresh_files == committed_files, "run `make proto` and commit the result"
    _, mismatch, errors = filecmp.cmpfiles(fresh, committed, fresh_files, shallow=False)
    assert not mismatch and not errors, f"stale generated files {mismatch + errors}: run `make proto` and commit them"
