"""A data directory written by the previous release (journal format 1, tests/fixtures/datadir-v1.tar.gz, made by
tests/fixtures/make_datadir_v1.py) is refused at start with one line naming `tariff migrate`; migrated, it
serves the balances the previous release served, and a second migration changes nothing."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

from google.protobuf import json_format

from tests.serverproc import REPO_ROOT, ServerProcess

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def tariff(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )


def balances_now(server: ServerProcess, customers: list[str]) -> dict[str, Any]:
    with server.client() as client:
        return {
            cid: json.loads(json_format.MessageToJson(client.get_balance(cid), preserving_proto_field_name=True))
            for cid in customers
        }


def expected_now(recorded: dict[str, Any], now: dict[str, Any]) -> dict[str, Any]:
    """The recorded balance, except where only the passing of time changes it: acme's contract has no end, so
    once the month the fixture was made in is over, the current period is a new one, with no usage yet."""
    expected: dict[str, Any] = json.loads(json.dumps(recorded))
    for cid, balance in expected.items():
        # Balance.currency came after the fixture was recorded: every contract make_datadir_v1.py made is in USD.
        balance["currency"] = "USD"
        if "period_start" in balance and balance["period_start"] != now[cid].get("period_start"):
            balance.update(period_start=now[cid]["period_start"], period_end=now[cid]["period_end"])
            balance.update(period_charges="0", overage_amount="0", overage_due="0")
    return expected


def test_a_previous_release_data_dir_is_refused_then_migrated_and_serves_the_same_balances(tmp_path: Path) -> None:
    with tarfile.open(FIXTURES / "datadir-v1.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    data_dir = tmp_path / "data"
    recorded = json.loads((FIXTURES / "datadir-v1-balances.json").read_text())

    refused = tariff("serve", "--listen", "127.0.0.1:0", "--data-dir", str(data_dir))
    assert refused.returncode == 2, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert f"tariff migrate --data-dir {data_dir}" in lines[0]

    migrated = tariff("migrate", "--data-dir", str(data_dir))
    assert migrated.returncode == 0, migrated.stderr
    assert "migrated to journal format 2" in migrated.stdout
    assert (data_dir / "backup-v1" / "data.mdb").exists()

    again = tariff("migrate", "--data-dir", str(data_dir))
    assert again.returncode == 0 and "nothing to do" in again.stdout, again

    server = ServerProcess(data_dir)
    server.start()
    try:
        now = balances_now(server, sorted(recorded))
        assert now == expected_now(recorded, now)
    finally:
        assert server.terminate() == 0
