"""`tariff bench`: measures a real server process against reference runs in the same invocation.

`add_arguments` declares the bench flags on the CLI's `bench` subparser; `run` executes the
selected workloads (see workloads.py), prints one table and writes the JSON file. Imports of the
heavy parts happen inside `run`, so `tariff serve` does not pay for them.
"""

from __future__ import annotations

from server.bench.runner import add_arguments, run

__all__ = ["add_arguments", "run"]
