"""What the one-line refusal of a damaged snapshot (tests/test_audit_archjournal_wire.py) left open, over real `tariff
serve` processes (docs/architecture.md §4 Snapshots and Recovery, README "The data directory, snapshots and
backups"):

- A start whose explain index is behind the snapshot does not use the snapshot (it replays the whole journal to
  index it): a damaged one no longer refuses such a start. The start logs one warning naming the damaged file, and
  the next snapshot (at the latest the clean stop's) replaces it and its segments; the refusal stays for a damaged
  snapshot the start would use (an index covering it, one that caught up before a kill -9 among them), and for a
  snapshot file whose header does not read (its seq unknown). A later recovery (the writer's rebuild) does not
  restore it either.
- An earlier release's snapshot, in the journal's `snapshots` database rather than a file, that does not restore is
  refused with advice that fits it: there is no `journal/snapshot` to move aside, the line gives the command that
  drops that database, and with it run the start replays the whole journal.

The module's data directory is test_audit_archjournal_wire.py's: the demo (seq 1-7), then acme's batches of 4, 4 and
2 new events (seq 8, 9, 10), each of acme's events 0.5 credits; a snapshot after every record, none of them with an
explain index, and a clean stop: journal/ holds a snapshot of seq 10 and the dedupe segments it lists.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from server.explain_index import ExplainIndex
from server.journal import LmdbJournal
from server.recovery import recover_counting
from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess
from tests.test_audit_archjournal_wire import (
    BATCHES,
    EVERY_RECORD,
    LAST_SEQ,
    NO_INDEX,
    SNAPSHOT_LINE,
    batch,
    copy_of,
    cut_a_segment,
    cut_the_snapshot,
    drop_a_segment,
    garble_the_snapshots_header,
    ingest,
    journal_files,
    listed_segments,
    serve_refused,
    start_line,
)

WARNING = re.compile(r"^.* WARNING .*$", re.MULTILINE)


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The module's server, stopped cleanly once its usage was acknowledged (journal/: seq 1-10, a snapshot of seq
    10 and its dedupe segments; no explain/)."""
    root = tmp_path_factory.mktemp("leftsnap")
    for server in serving(ServerProcess(root / "data", demo=True, extra_args=EVERY_RECORD), ingest):
        assert server.terminate() == 0
        yield server


def assert_all_duplicates_and_acme_charged_5(server: ServerProcess) -> None:
    """The module's batches sent again are all duplicates, and acme's period charges are 10 x 0.5 = 5 credits."""
    with server.client() as client:
        assert str(client.get_balance("acme").period_charges) == "5"
        for prefix, count in BATCHES:
            ack = client.usage.IngestUsageBatch(batch(prefix, count))
            assert (ack.accepted, ack.duplicates, ack.journal_seq) == (0, count, LAST_SEQ), ack


# ---------------------------------------------------------------------------------------------
# A damaged snapshot the start does not use


@pytest.mark.parametrize("damage", [drop_a_segment, cut_a_segment, cut_the_snapshot])
def test_a_damaged_snapshot_an_index_behind_it_leaves_unused_is_logged_and_replaced_by_the_stops_snapshot(
    stopped: ServerProcess, tmp_path: Path, damage: Callable[[Path], Path]
) -> None:
    """§4 Recovery: an explain index behind the snapshot makes the start replay from the journal's first record,
    the snapshot unused. The copy has no explain/, so a start with the index (new: it covers nothing) does not use
    the snapshot of seq 10: damaged, it was refused all the same (status 2). Now the start serves, having replayed
    the 10 records (4 + 4 + 2 events), with one warning naming the damaged file, saying it is not used and that the
    next snapshot replaces it. The clean stop stores a snapshot of seq 10 whose one segment is a base (the start
    restored no segments): the damaged snapshot and its segments are gone, and a start from it without the index
    replays nothing, acme charged 5 and every batch a duplicate."""
    data_dir = copy_of(stopped, tmp_path)
    journal = data_dir / "journal"
    damaged = damage(journal)
    old_segments = {path.name for path in journal.glob("segment.*")}
    server = ServerProcess(data_dir)
    server.start()
    try:
        line = start_line(server)
        assert f" journal_seq={LAST_SEQ} " in line and line.endswith(" replayed_records=10 replayed_events=10"), line
        (warning,) = WARNING.findall(server.log_path.read_text())
        assert f"the snapshot of seq {LAST_SEQ} is damaged and not used" in warning, warning
        assert damaged.name in warning and "the next snapshot replaces it" in warning, warning
        assert_all_duplicates_and_acme_charged_5(server)
        assert server.terminate() == 0
        assert [int(seq) for seq, _ in SNAPSHOT_LINE.findall(server.log_path.read_text())] == [LAST_SEQ]
        (segment,) = listed_segments(journal)
        assert sorted(journal_files(data_dir)) == ["data.mdb", segment.name, "snapshot"]
        assert segment.name not in old_segments
        server.extra_args = (NO_INDEX,)
        server.start()
        assert start_line(server).endswith(" replayed_records=0 replayed_events=0"), start_line(server)
        assert_all_duplicates_and_acme_charged_5(server)
    finally:
        server.stop()


def test_killed_before_the_next_snapshot_a_start_whose_index_caught_up_refuses_the_damaged_snapshot_again(
    stopped: ServerProcess, tmp_path: Path
) -> None:
    """§4: the damaged snapshot stays until the next snapshot replaces it. A listed segment deleted, a start with a
    new index goes on (replaying seq 1-10 into it); killed (-9) before any snapshot is stored, the next start finds
    the index covering seq 10, so it would use the snapshot: refused in one line naming the segment and saying to
    move journal/snapshot aside, status 2."""
    data_dir = copy_of(stopped, tmp_path)
    journal = data_dir / "journal"
    dropped = drop_a_segment(journal)
    server = ServerProcess(data_dir)
    server.start()
    try:
        assert start_line(server).endswith(" replayed_records=10 replayed_events=10"), start_line(server)
        server.kill9()
    finally:
        server.stop()
    assert SNAPSHOT_LINE.findall(server.log_path.read_text()) == []
    status, lines = serve_refused(data_dir)
    assert status == 2 and len(lines) == 1, lines
    assert dropped.name in lines[0] and f"move {journal / 'snapshot'} aside" in lines[0], lines[0]


def test_a_damaged_snapshot_the_index_would_let_the_start_use_is_still_refused(tmp_path: Path) -> None:
    """§4: a start whose snapshot it would use, damaged, stops with one line, status 2, nothing written. The demo
    with its explain index, stopped cleanly: a snapshot of seq 7, the index covering seq 7. A listed segment deleted:
    a start with the index is refused, naming the segment and saying to move journal/snapshot aside."""
    server = ServerProcess(tmp_path / "data", demo=True)
    server.start()
    try:
        assert server.terminate() == 0
    finally:
        server.stop()
    journal = server.data_dir / "journal"
    dropped = drop_a_segment(journal)
    before = journal_files(server.data_dir)
    status, lines = serve_refused(server.data_dir)
    assert status == 2 and len(lines) == 1, lines
    assert dropped.name in lines[0] and f"move {journal / 'snapshot'} aside" in lines[0], lines[0]
    assert journal_files(server.data_dir) == before


def test_a_snapshot_file_whose_header_does_not_read_is_refused_even_with_the_index_behind(
    stopped: ServerProcess, tmp_path: Path
) -> None:
    """§4: a snapshot file that is not a Tariff snapshot's gives no seq, so the start cannot tell whether the index
    leaves it unused: refused in one line naming it, status 2, as without the index, the journal's files as they
    were."""
    data_dir = copy_of(stopped, tmp_path)
    journal = data_dir / "journal"
    garble_the_snapshots_header(journal)
    before = journal_files(data_dir)
    status, lines = serve_refused(data_dir)
    assert status == 2 and len(lines) == 1, lines
    assert f"{journal / 'snapshot'} is not a Tariff snapshot" in lines[0], lines[0]
    assert f"move {journal / 'snapshot'} aside" in lines[0], lines[0]
    assert journal_files(data_dir) == before


# ---------------------------------------------------------------------------------------------
# An earlier release's snapshot, in the journal's map


def store_the_snapshot_in_the_map_as_an_earlier_release_did(journal: Path, seq: int, blob: bytes) -> None:
    """journal/ as an earlier release left it: its snapshot in the `snapshots` database (key: seq, 8 bytes
    big-endian), no snapshot file nor segments."""
    for path in [journal / "snapshot", *journal.glob("segment.*")]:
        path.unlink()
    env = lmdb.open(str(journal), max_dbs=4, map_size=0)
    try:
        with env.begin(write=True) as txn:
            txn.put(seq.to_bytes(8, "big"), blob, db=env.open_db(b"snapshots", txn=txn))
    finally:
        env.close()


def test_an_earlier_releases_snapshot_in_the_map_that_does_not_restore_is_refused_with_the_command_that_drops_it(
    stopped: ServerProcess, tmp_path: Path
) -> None:
    """README: a start refused for its snapshot says what to do. An earlier release kept its snapshot in the
    journal's `snapshots` database, not in journal/snapshot; one of seq 10 that does not decode was refused with
    "move .../journal/snapshot aside", a file there is not. Now the line says the snapshot is in that database and
    gives the command that drops it (py-lmdb's tool, with the server's Python), not the file's advice; run as
    given, the next start replays the 10 records, acme charged 5 and every batch a duplicate."""
    data_dir = copy_of(stopped, tmp_path)
    journal = data_dir / "journal"
    store_the_snapshot_in_the_map_as_an_earlier_release_did(journal, LAST_SEQ, b"\x00" * 64)
    status, lines = serve_refused(data_dir, NO_INDEX)
    assert status == 2 and len(lines) == 1, lines
    assert f"the snapshot of seq {LAST_SEQ} does not restore: " in lines[0], lines[0]
    assert "it is an earlier release's snapshot, kept in the journal's `snapshots` database" in lines[0], lines[0]
    assert "aside" not in lines[0], lines[0]
    command = re.search(r"drop that database \(`(.+?)`: ", lines[0])
    assert command is not None, lines[0]
    assert shlex.split(command[1]) == [sys.executable, "-m", "lmdb", "drop", "-e", str(journal), "snapshots"]
    subprocess.run(shlex.split(command[1]), check=True, capture_output=True, timeout=30)
    server = ServerProcess(data_dir, extra_args=[NO_INDEX])
    server.start()
    try:
        line = start_line(server)
        assert f" journal_seq={LAST_SEQ} " in line and line.endswith(" replayed_records=10 replayed_events=10"), line
        assert_all_duplicates_and_acme_charged_5(server)
    finally:
        server.stop()


def test_once_the_index_caught_up_a_rebuild_does_not_restore_the_damaged_snapshot_the_start_left_unused(
    stopped: ServerProcess, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """In process, as the writer's rebuild after a failed commit recovers (Sequencer._rebuild, the same journal and
    index): the start's replay leaves the new index covering seq 10, so a second recovery would have restored the
    damaged snapshot of seq 10 and raised. The journal disregards it instead: the rebuild too replays the 10
    records, no second warning, and a save replaces it, its missing segment no longer listed."""
    data_dir = copy_of(stopped, tmp_path)
    drop_a_segment(data_dir / "journal")
    journal = LmdbJournal(data_dir / "journal", map_size_bytes=2**26, sync=False)
    index = ExplainIndex(data_dir / "explain", map_size_bytes=2**26)
    try:
        started, backlog = recover_counting(journal, explain_index=index)
        assert (backlog.records, backlog.events, index.covered_seq()) == (10, 10, LAST_SEQ)
        assert journal.snapshot_seq() is None and journal.load_segmented_snapshot() is None
        rebuilt, backlog = recover_counting(journal, explain_index=index)
        assert (backlog.records, backlog.events) == (10, 10)
        assert rebuilt.encode_snapshot() == started.encode_snapshot()
        assert len([record for record in caplog.records if record.levelname == "WARNING"]) == 1
        journal.save_snapshot(LAST_SEQ, b"state@10")
        assert journal.snapshot_seq() == LAST_SEQ and journal.load_segmented_snapshot() == (LAST_SEQ, b"state@10", [])
        assert journal.dedupe_segment_bytes() == [] and not list((data_dir / "journal").glob("segment.*"))
    finally:
        index.close()
        journal.close()
