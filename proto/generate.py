"""Generates the Python code for proto/ into clients/python/tariff/v1 (make proto).

The generated folder is committed so that `pip install -e .` needs no build step;
tests/test_generated_fresh.py regenerates into a temporary folder and fails when
the committed copy differs from what the .proto files give.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE_DIR = ROOT / "clients" / "python"
GENERATED_INIT = '"""Generated from proto/tariff/v1 by `make proto`: never edit by hand."""\n'


def generate(out_dir: Path) -> None:
    """Writes tariff/v1/*_pb2.py, *_pb2.pyi and *_pb2_grpc.py below out_dir."""
    sources = sorted(str(p.relative_to(PROTO_DIR)) for p in (PROTO_DIR / "tariff" / "v1").glob("*.proto"))
    target = out_dir / "tariff" / "v1"
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    include = str(Path(protoc.__file__).parent / "_proto")
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *sources,
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    (target / "__init__.py").write_text(GENERATED_INIT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=PACKAGE_DIR)
    generate(parser.parse_args().out)
    print(f"generated {PACKAGE_DIR / 'tariff' / 'v1'}", file=sys.stderr)


if __name__ == "__main__":
    main()
