"""The snapshot interval bounds a restart's replay even when the server is restarted more often than the interval
(docs/architecture.md, Recovery): the records a recovery replayed count toward the next snapshot, as they would have
had the server not stopped. Over a real server process killed with SIGKILL."""

from __future__ import annotations

import re
import time

from tariff.v1 import contracts_pb2

from tests.serverproc import ServerFactory, ServerProcess

SNAPSHOT_EVERY_RECORDS = 30
RECORDS_A_LIFE = 20  # fewer than the interval: no process of this test reaches it on its own records
SNAPSHOT_WAIT_S = 15.0
_SNAPSHOT_LINE = re.compile(r"snapshot seq=(\d+) ")


def _create_customers(server: ServerProcess, prefix: str, count: int) -> None:
    """`count` journal records: one CreateCustomer each."""
    with server.client() as client:
        for number in range(count):
            request = contracts_pb2.CreateCustomerRequest(id=f"{prefix}-{number}", name=f"{prefix} {number}")
            client.contracts.CreateCustomer(request)


def _snapshot_seqs(server: ServerProcess) -> list[int]:
    return [int(seq) for seq in _SNAPSHOT_LINE.findall(server.log_path.read_text(errors="replace"))]


def _wait_for_snapshot(server: ServerProcess) -> list[int]:
    # The snapshot is taken after the record's commit and stored off the writer: give it a moment.
    deadline = time.monotonic() + SNAPSHOT_WAIT_S
    while time.monotonic() < deadline:
        seqs = _snapshot_seqs(server)
        if seqs:
            return seqs
        time.sleep(0.05)
    return _snapshot_seqs(server)


def test_records_replayed_after_a_crash_count_toward_the_next_snapshot(server_factory: ServerFactory) -> None:
    """Interval 30 records, journal factor 0 (the counts alone decide). The first process journals 20 records and is
    killed; the second replays those 20 and journals 20 more: 40 since the last snapshot (none), so it snapshots.
    Before: each process counted only its own records, so a server killed every 20 records never snapshotted and
    each start replayed the whole journal, however long."""
    server = server_factory(
        extra_args=["--snapshot-every", str(SNAPSHOT_EVERY_RECORDS), "--snapshot-journal-factor", "0"]
    )
    _create_customers(server, "first", RECORDS_A_LIFE)
    assert _snapshot_seqs(server) == []
    server.kill9()
    server.restart()
    _create_customers(server, "second", RECORDS_A_LIFE)
    seqs = _wait_for_snapshot(server)
    assert seqs, "no snapshot after 40 records since the last one (20 replayed, 20 new)"
    assert SNAPSHOT_EVERY_RECORDS <= seqs[0] <= 2 * RECORDS_A_LIFE
    server.kill9()
    server.restart()
    with server.client() as client:
        for prefix in ("first", "second"):
            for number in (0, RECORDS_A_LIFE - 1):
                found = client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=f"{prefix}-{number}"))
                assert found.id == f"{prefix}-{number}"
