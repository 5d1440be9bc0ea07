"""The bench's two seeding paths give one state: customers seeded through the RPCs by a real server, and the
journal server/bench/seed.py writes directly (for the memory bench's million customers) recovered by a real
server at start. Both data directories are recovered afterwards and compared whole: control plane (times of
receipt aside) and kernel state bytes.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from server.bench import seed as bench_seed
from server.bench.seed import seed, seed_journal
from server.bench.target import ServedProcess, tariff_server
from server.journal import LmdbJournal
from server.recovery import recover

CUSTOMERS = 12
# Fields holding the server's clock at receipt: they differ between any two seedings.
RECEIPT_TIMES = {"at_ms", "created_at_ms", "published_at_ms"}


def without_receipt_times(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_receipt_times(v) for k, v in value.items() if k not in RECEIPT_TIMES}
    if isinstance(value, list | tuple):  # a tuple field (an account's grants) stays a tuple in to_builtins
        return [without_receipt_times(v) for v in value]
    return value


def recovered(data_dir: Path) -> tuple[Any, bytes]:
    journal = LmdbJournal(data_dir / "journal", map_size_bytes=64 * 2**20)
    try:
        billing = recover(journal)
    finally:
        journal.close()
    state = msgspec.to_builtins(billing.engine.state)
    for entry in state["audit"]:  # array-like: [seq, at_ms, actor, action, target, diff]
        entry[1] = 0
        entry[5] = json.loads(entry[5])  # its maps' order is protobuf's, which varies from process to process
    billing.refresh_tables()
    return without_receipt_times(state), billing.kernel.snapshot()


def run_server(data_dir: Path, log_name: str) -> ServedProcess:
    server = tariff_server(data_dir, data_dir.parent / log_name)
    server.start()
    return server


@pytest.mark.slow
def test_the_journal_seeding_path_gives_the_state_the_rpcs_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One call at a time: concurrent seeding applies customers in whatever order the calls arrive (the audit
    # log's order and grants' creation_order follow it); the journal seeds them in index order.
    monkeypatch.setattr(bench_seed, "SEED_CALLS_IN_FLIGHT", 1)
    by_rpc = run_server(tmp_path / "rpc", "rpc.log")
    try:
        seed(by_rpc.target, CUSTOMERS)
    finally:
        by_rpc.stop()
    seed_journal(tmp_path / "journal", CUSTOMERS)
    by_journal = run_server(tmp_path / "journal", "journal.log")  # recovers the journal at start
    by_journal.stop()
    rpc_state, rpc_kernel = recovered(tmp_path / "rpc")
    journal_state, journal_kernel = recovered(tmp_path / "journal")
    assert len(rpc_state["customers"]) == CUSTOMERS
    assert journal_state == rpc_state
    assert journal_kernel == rpc_kernel
