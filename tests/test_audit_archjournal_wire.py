"""docs/architecture.md §4 "The journal: records, group commit, snapshots, recovery" (and what §1 and §2 say a client
or an operator sees of it), audited statement by statement over real `tariff serve` processes: what the other audits
of the area (test_audit_recovery_wire.py, test_audit_reliab*_wire.py, test_audit_backup_wire.py,
test_audit_upgrade_wire.py, test_audit_replayeq_wire.py, test_audit_flagsreplay_wire.py, test_audit_longrun_wire.py,
test_audit_opsdoc_wire.py, test_snapshot_after_restart.py, test_migrate.py) leave open.

- A data directory whose snapshot or dedupe segments are damaged or missing ("a snapshot whose table is in segments
  refuses to restore without them") is refused at start in one line naming the file, with status 2, nothing written;
  the journal keeps every record, so with the snapshot moved aside the start replays all of it to the same state.
- "A server refuses a journal whose format version is not its own": a newer format, and an LMDB environment that is
  not a Tariff journal at all (another program's: no format version), are refused in one line, left as they were.
- The files no snapshot lists (a segment, a snapshot's partial file) are deleted at the next open.
- Snapshot cadence: `--snapshot-every-events` counts accepted usage events (a duplicate is not counted), each stored
  snapshot logs `snapshot seq=... bytes=...`, and one due by its counts waits until the journal took half those
  bytes; a clean stop stores one when a record came since, or when the start did not restore the dedupe table from
  segments (a whole-journal replay, `tariff migrate`'s snapshot).
- The ids a restart replayed are in the next snapshot's dedupe segment; a stop's snapshot merges no segments, the
  next start's first one merges the newest once more than 8 are listed.
- `tariff migrate` drops a usage record the kernel accepts nothing of, the seqs after it one lower.
- A snapshot the disk has no room for is logged as that (it said to grow the journal's map), the next due one stored.
- The writer's threads named in the OS, at nice 5 above the event loop's (§2).
- §1's demo catalogue, seeded on an empty data directory only; the journal's data file at most 2 MiB past its pages.

The demo catalogue (seq 1-7): each of acme's CHEAP events (tests/demo_usage.py) costs 0.5 credits.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import lmdb
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from engine import commands as cmd
from server.demo import demo_commands
from server.records import JournalRecord, encode_record
from tests.audit_fixtures import serving
from tests.demo_usage import CHEAP, demo_batch
from tests.serverproc import HOST, REPO_ROOT, ServerProcess, wait_for_log

DEMO_RECORDS = 7
NO_INDEX = "--no-explain-index"  # no explain/ (a sparse 64 GiB file) to copy; the start loads the snapshot
EVERY_RECORD = ["--snapshot-every", "1", "--snapshot-journal-factor", "0", NO_INDEX]
# The module's data directory: the demo, then acme's batches of 4, 4 and 2 new events (seq 8, 9, 10).
BATCHES = (("r1", 4), ("r2", 4), ("r3", 2))
LAST_SEQ = DEMO_RECORDS + len(BATCHES)
SNAPSHOT_LINE = re.compile(r"snapshot seq=(\d+) bytes=(\d+) encode_ms=\d+ store_ms=\d+")
AT_MS = now_ms() - 60_000  # every event's timestamp: a resend is the same event
# Instants above are taken at import: conftest.py skips the module once a calendar month has turned since.
pytestmark = pytest.mark.clock_at_import


def batch(prefix: str, count: int) -> usage_pb2.UsageBatch:
    """`count` of acme's CHEAP events at AT_MS, transaction ids `{prefix}-{i}`."""
    made = demo_batch(prefix, prefix, count)
    for event in made.events:
        event.timestamp_ms = AT_MS
    return made


def ingest(client: TariffClient) -> None:
    for seq, (prefix, count) in enumerate(BATCHES, start=DEMO_RECORDS + 1):
        ack = client.usage.IngestUsageBatch(batch(prefix, count))
        assert (ack.accepted, ack.journal_seq) == (count, seq), ack


@pytest.fixture(scope="module")
def stopped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The module's server, stopped cleanly once its usage was acknowledged: its journal/ holds seq 1-10, a snapshot
    of seq 10 and the dedupe segments it lists."""
    root = tmp_path_factory.mktemp("archjournal")
    for server in serving(ServerProcess(root / "data", demo=True, extra_args=EVERY_RECORD), ingest):
        assert server.terminate() == 0
        yield server


def copy_of(stopped: ServerProcess, tmp_path: Path) -> Path:
    """A data directory holding a copy of the module's journal/, for one test to damage."""
    data_dir = tmp_path / "data"
    shutil.copytree(stopped.data_dir / "journal", data_dir / "journal")
    return data_dir


def serve_refused(data_dir: Path, *args: str) -> tuple[int, list[str]]:
    """`tariff serve` on `data_dir` with `args`, to completion: its exit status and the lines it wrote to stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--listen", f"{HOST}:0", "--data-dir", str(data_dir), *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    return done.returncode, [line for line in done.stderr.splitlines() if line.strip()]


def journal_files(data_dir: Path) -> dict[str, bytes]:
    """The files of `data_dir`'s journal/ by name, but LMDB's lock file (rewritten by every open)."""
    return {
        path.name: path.read_bytes() for path in sorted((data_dir / "journal").iterdir()) if path.name != "lock.mdb"
    }


def listed_segments(journal: Path) -> list[Path]:
    """The dedupe segments the snapshot file lists (server/journal.py: TARIFFS2, a count, then number and length)."""
    header = (journal / "snapshot").read_bytes()
    assert header[:8] == b"TARIFFS2", header[:8]
    count = int.from_bytes(header[24:32], "big")
    numbers = [int.from_bytes(header[32 + 16 * i : 40 + 16 * i], "big") for i in range(count)]
    return [journal / f"segment.{number:020d}" for number in numbers]


def start_line(server: ServerProcess) -> str:
    lines: list[str] = re.findall(r"^.* INFO tariff: serving version=.*$", server.log_path.read_text(), re.MULTILINE)
    return lines[-1]


# ---------------------------------------------------------------------------------------------
# A damaged snapshot


def drop_a_segment(journal: Path) -> Path:
    segment = listed_segments(journal)[0]
    segment.unlink()
    return segment


def cut_a_segment(journal: Path) -> Path:
    segment = max(listed_segments(journal), key=lambda path: path.stat().st_size)
    segment.write_bytes(segment.read_bytes()[:-1])
    return segment


def cut_the_snapshot(journal: Path) -> Path:
    snapshot = journal / "snapshot"
    snapshot.write_bytes(snapshot.read_bytes()[:-10])
    return snapshot


def zero_the_snapshots_state(journal: Path) -> Path:
    """The header and its list of segments kept, the state's bytes after them zeroed."""
    snapshot = journal / "snapshot"
    stored = snapshot.read_bytes()
    header_bytes = 32 + 16 * int.from_bytes(stored[24:32], "big")
    snapshot.write_bytes(stored[:header_bytes] + bytes(len(stored) - header_bytes))
    return snapshot


def garble_the_snapshots_header(journal: Path) -> Path:
    snapshot = journal / "snapshot"
    snapshot.write_bytes(b"TARIFFSX" + snapshot.read_bytes()[8:])
    return snapshot


@pytest.mark.parametrize(
    "damage", [drop_a_segment, cut_a_segment, cut_the_snapshot, zero_the_snapshots_state, garble_the_snapshots_header]
)
def test_a_damaged_snapshot_or_segment_is_refused_in_one_line_naming_the_file_and_nothing_is_written(
    stopped: ServerProcess, tmp_path: Path, damage: Callable[[Path], Path]
) -> None:
    """§4 Snapshots: "A snapshot whose table is in segments refuses to restore without them"; README "The operator's
    log": a server that refuses to start says why in one line, status 2. A listed segment deleted or cut short, the
    snapshot file cut short or its state unreadable each stopped the start with a traceback and status 1 (a header
    not a snapshot's was one line, saying nothing of what to do). Now: one line naming the damaged file and how to
    start without the snapshot (the journal keeps every record), status 2, and the data directory byte for byte as
    it was."""
    data_dir = copy_of(stopped, tmp_path)
    journal = data_dir / "journal"
    damaged = damage(journal)
    before = journal_files(data_dir)
    status, lines = serve_refused(data_dir, NO_INDEX)
    assert status == 2, lines
    assert len(lines) == 1, lines
    assert damaged.name in lines[0], lines[0]
    assert f"move {journal / 'snapshot'} aside" in lines[0], lines[0]
    assert journal_files(data_dir) == before


def test_with_the_damaged_snapshot_moved_aside_the_start_replays_the_whole_journal_to_the_same_state(
    stopped: ServerProcess, tmp_path: Path
) -> None:
    """§4: "The journal keeps every record, snapshots or not" (README); a start without a snapshot replays every
    record. A listed segment deleted, the snapshot moved aside as the refusal says: the start replays seq 1-10 (10
    records, 4 + 4 + 2 events), acme's period charges are 10 x 0.5 = 5 credits, the segments no snapshot lists are
    deleted, and every batch sent again is all duplicates."""
    data_dir = copy_of(stopped, tmp_path)
    journal = data_dir / "journal"
    drop_a_segment(journal)
    (journal / "snapshot").rename(tmp_path / "snapshot.damaged")
    server = ServerProcess(data_dir, extra_args=[NO_INDEX])
    server.start()
    try:
        line = start_line(server)
        assert f" journal_seq={LAST_SEQ} " in line and line.endswith(" replayed_records=10 replayed_events=10"), line
        assert sorted(journal_files(data_dir)) == ["data.mdb"]
        with server.client() as client:
            assert str(client.get_balance("acme").period_charges) == "5"
            for prefix, count in BATCHES:
                ack = client.usage.IngestUsageBatch(batch(prefix, count))
                assert (ack.accepted, ack.duplicates, ack.journal_seq) == (0, count, LAST_SEQ), ack
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# A journal of another format, or not a Tariff journal


def test_a_journal_of_a_newer_format_is_refused_in_one_line_naming_both_versions_and_left_as_it_was(
    stopped: ServerProcess, tmp_path: Path
) -> None:
    """§4: "a server refuses a journal whose format version is not its own" (the meta database holds it, now 2). The
    module's journal stamped format 3: one line naming 3 and 2, status 2, its files byte for byte as they were."""
    data_dir = copy_of(stopped, tmp_path)
    journal = data_dir / "journal"
    env = lmdb.open(str(journal), max_dbs=4, map_size=0)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"format_version", b"3", db=env.open_db(b"meta", txn=txn))
    finally:
        env.close()
    before = journal_files(data_dir)
    status, lines = serve_refused(data_dir, NO_INDEX)
    assert status == 2 and len(lines) == 1, lines
    assert f"journal at {journal} has format version '3'; this Tariff reads only version 2" in lines[0], lines[0]
    assert journal_files(data_dir) == before


def test_another_programs_lmdb_environment_where_the_journal_goes_is_refused_in_one_line_and_left_as_it_was(
    tmp_path: Path,
) -> None:
    """§4: "a server refuses a journal whose format version is not its own". An LMDB environment of another program
    in `journal/` (one key, no format version) was taken for a new journal: Tariff's databases and format version
    were written into it and the server served an empty state, journal seq 0. Now: one line saying it is not a
    Tariff journal, status 2, data.mdb byte for byte as it was."""
    journal = tmp_path / "data" / "journal"
    journal.mkdir(parents=True)
    env = lmdb.open(str(journal), map_size=2**20)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"invoice-42", b"another program's")
    finally:
        env.close()
    before = (journal / "data.mdb").read_bytes()
    status, lines = serve_refused(tmp_path / "data", NO_INDEX)
    assert status == 2 and len(lines) == 1, lines
    assert f"{journal} is not a Tariff journal" in lines[0], lines[0]
    assert (journal / "data.mdb").read_bytes() == before


# ---------------------------------------------------------------------------------------------
# Files no snapshot lists


def test_a_segment_and_a_partial_snapshot_no_snapshot_lists_are_deleted_at_the_next_open(
    stopped: ServerProcess, tmp_path: Path
) -> None:
    """§4: "the files no snapshot lists (a store or compaction cut short, or segments replaced) are deleted at the
    next open". A `segment.<number>` past the listed ones and a `snapshot.partial` put in the copy: the start deletes
    both, keeps the snapshot and its segments, replays nothing (the snapshot is of seq 10) and charges acme 5; a
    clean stop with nothing recorded since leaves the snapshot and its segments byte for byte as they were."""
    data_dir = copy_of(stopped, tmp_path)
    journal = data_dir / "journal"
    kept = journal_files(data_dir)
    (journal / f"segment.{999:020d}").write_bytes(b"cut short")
    (journal / "snapshot.partial").write_bytes(b"cut short")
    server = ServerProcess(data_dir, extra_args=[NO_INDEX])
    server.start()
    try:
        line = start_line(server)
        assert f" journal_seq={LAST_SEQ} " in line and line.endswith(" replayed_records=0 replayed_events=0"), line
        assert sorted(journal_files(data_dir)) == sorted(kept)
        with server.client() as client:
            assert str(client.get_balance("acme").period_charges) == "5"
        assert server.terminate() == 0
    finally:
        server.stop()
    del kept["data.mdb"]
    assert {name: stored for name, stored in journal_files(data_dir).items() if name != "data.mdb"} == kept


# ---------------------------------------------------------------------------------------------
# Snapshot cadence


def test_snapshot_every_events_counts_accepted_events_and_the_stored_snapshot_logs_its_seq_and_bytes(
    tmp_path: Path,
) -> None:
    """§4 Snapshots: a snapshot "after every 5,000 records or 1,000,000 usage events, whichever comes first
    (`--snapshot-every`, `--snapshot-every-events`)"; each stored one logs `snapshot seq=... bytes=...` (bytes: the
    snapshot's and its segment's). With `--snapshot-every 1000 --snapshot-every-events 10` and no wait on the
    journal's bytes: batch a (4 new, seq 8: 4 events), batch b (2 new and a's 4 again, seq 9: 2 accepted, 6 in
    all), batch c (4 new, seq 10: 10). Counting every event sent, b would reach 10 and be snapshotted; counting those
    accepted, c is: one snapshot, of seq 10. A clean stop then stores none (nothing recorded since), and the log's
    bytes are the snapshot file's and its newest segment's, less the file's header (24 bytes, 8 more and 16 a
    listed segment)."""
    args = ["--snapshot-every", "1000", "--snapshot-every-events", "10", "--snapshot-journal-factor", "0", NO_INDEX]
    server = ServerProcess(tmp_path / "data", demo=True, extra_args=args)
    server.start()
    try:
        with server.client() as client:
            assert client.usage.IngestUsageBatch(batch("a", 4)).journal_seq == 8
            b = batch("b", 2)
            b.events.extend(batch("a", 4).events)
            ack = client.usage.IngestUsageBatch(b)
            assert (ack.accepted, ack.duplicates, ack.journal_seq) == (2, 4, 9), ack
            assert client.usage.IngestUsageBatch(batch("c", 4)).journal_seq == 10
        wait_for_log(server, "snapshot seq=10 ", 15)
        assert server.terminate() == 0
        snapshots = SNAPSHOT_LINE.findall(server.log_path.read_text())
        assert [int(seq) for seq, _ in snapshots] == [10], snapshots
        journal = server.data_dir / "journal"
        segments = listed_segments(journal)
        header_bytes = 24 + 8 + 16 * len(segments)
        stored_bytes = (journal / "snapshot").stat().st_size - header_bytes + segments[-1].stat().st_size
        assert int(snapshots[0][1]) == stored_bytes
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# §1: the demo catalogue


def test_the_demo_on_an_empty_data_directory_is_section_1s_catalogue_and_a_restart_with_demo_seeds_nothing(
    tmp_path: Path,
) -> None:
    """§1: `--demo` on an empty data directory loads a product `ai_action` (COUNT, priced by `action`, `data_source`,
    `model`, `complexity`), a rate card `ai-credits` in credits whose version 1 is in force from the start of the
    current month (UTC), and acme's contract `acme-2026` on it from the start of the month, overage policy ALLOW
    (test_audit_design_wire.py checks the grant and the prices). The demo is 7 records (seq 1-7); started again with
    `--demo` after kill -9 on the data directory it wrote, nothing is seeded again: journal seq 7, one version, one
    contract, one demo line in the log."""
    server = ServerProcess(tmp_path / "data", demo=True, extra_args=[NO_INDEX])
    server.start()
    try:
        now = datetime.now(UTC)
        month_start_ms = int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp()) * 1000
        for start in range(2):
            with server.client() as client:
                products = client.pricing.ListProducts(pricing_pb2.ListProductsRequest()).products
                assert [(p.id, p.aggregation, list(p.pricing_dimensions)) for p in products] == [
                    ("ai_action", pricing_pb2.COUNT, ["action", "data_source", "model", "complexity"])
                ]
                card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="ai-credits"))
                assert card.pricing_unit == "credits"
                versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="ai-credits"))
                assert [(v.version, v.effective_from.ToMilliseconds()) for v in versions.versions] == [
                    (1, month_start_ms)
                ]
                contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="acme-2026"))
                assert (contract.customer_id, contract.rate_card_id, contract.starting_at.ToMilliseconds()) == (
                    "acme",
                    "ai-credits",
                    month_start_ms,
                )
                assert contract.overage_policy == contracts_pb2.ALLOW
                assert client.get_balance("acme").as_of_seq == DEMO_RECORDS
            if start == 0:
                server.kill9()
                server.start()
        assert server.log_path.read_text().count("loaded the demo catalogue") == 1
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# The snapshot at a clean stop


def snapshots_after_each_stop(server: ServerProcess) -> list[list[int]]:
    """For each `shutting down` in the log, the seqs of the snapshots logged after it, before the next start."""
    runs = server.log_path.read_text().split("INFO tariff: shutting down")[1:]
    return [[int(seq) for seq, _ in SNAPSHOT_LINE.findall(run.split("=== start")[0])] for run in runs]


def test_a_stop_after_a_start_that_replayed_the_whole_journal_stores_a_snapshot_of_the_same_seq_once(
    tmp_path: Path,
) -> None:
    """§4 Snapshots: a snapshot is stored "at a clean shutdown when anything was recorded since the stored
    snapshot". Also, the doc did not say, when the start did not restore the state from it: the demo (seq 1-7) and a
    batch of 4 (seq 8), a clean stop (snapshot of seq 8); the explain index deleted, so the next start replays all 8
    records (§4, the explain index: an index behind the snapshot); its stop, with nothing recorded, stores a snapshot
    of seq 8 again; the start after that loads it, replays nothing, and its stop stores none."""
    server = ServerProcess(tmp_path / "data", demo=True)
    server.start()
    try:
        with server.client() as client:
            assert client.usage.IngestUsageBatch(batch("r1", 4)).journal_seq == 8
        assert server.terminate() == 0
        shutil.rmtree(server.data_dir / "explain")
        server.start()
        assert start_line(server).endswith(" replayed_records=8 replayed_events=4"), start_line(server)
        assert server.terminate() == 0
        server.start()
        assert start_line(server).endswith(" replayed_records=0 replayed_events=0"), start_line(server)
        assert server.terminate() == 0
        assert snapshots_after_each_stop(server) == [[8], [8], []]
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# `tariff migrate`


def format_1_journal(journal: Path, commands: list[cmd.AdminCommand | cmd.IngestBatch]) -> None:
    """A journal as the previous release wrote it (format 1: each record a command, usage batches among them)."""
    journal.mkdir(parents=True)
    env = lmdb.open(str(journal), max_dbs=4, map_size=2**26)
    try:
        with env.begin(write=True) as txn:
            txn.put(b"format_version", b"1", db=env.open_db(b"meta", txn=txn))
            records = env.open_db(b"records", txn=txn)
            for seq, command in enumerate(commands, start=1):
                txn.put(seq.to_bytes(8, "big"), encode_record(JournalRecord(command)), db=records)
    finally:
        env.close()


def test_migrate_drops_a_usage_record_the_kernel_accepts_nothing_of_and_the_seqs_after_it_move_down_by_one(
    tmp_path: Path,
) -> None:
    """§4: `tariff migrate` replays a format-1 journal into format 2, each usage record rated by the kernel, "one of
    which the kernel accepts nothing gets no record, as the server does, so the sequence numbers after it move down
    by one"; the old journal is kept in `DIR/backup-v1/`. Format 1: the demo (seq 1-7), acme's batch of 4 CHEAP
    events (seq 8), 2 of them again (seq 9: all duplicates), 2 new ones (seq 10). Migrated: 9 records, 2 usage
    batches, its snapshot (of seq 9) without dedupe segments, `TARIFFS1`; backup-v1 still holds 10 records. Served:
    acme charged 6 x 0.5 = 3 credits as of seq 9, and the last batch sent again is all duplicates at seq 9. Nothing
    recorded, the clean stop still stores a snapshot of seq 9 (§4 Snapshots: the start did not restore the table from
    segments), in segments, `TARIFFS2`."""
    now = now_ms()
    data_dir = tmp_path / "data"

    def ingest_batch(batch_id: str, ids: list[str]) -> cmd.IngestBatch:
        events = [cmd.UsageEvent(t, "acme", "ai_action", AT_MS, dict(CHEAP), {}) for t in ids]
        return cmd.IngestBatch(batch_id, events, now - 30_000, {})

    usage = [ingest_batch("m1", ["m-0", "m-1", "m-2", "m-3"]), ingest_batch("m2", ["m-0", "m-1"])]
    format_1_journal(data_dir / "journal", [*demo_commands(now - 60_000), *usage, ingest_batch("m3", ["m-4", "m-5"])])
    done = subprocess.run(
        [sys.executable, "-m", "server.cli", "migrate", "--data-dir", str(data_dir)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "migrated to journal format 2 (9 records, 2 usage batches re-rated by the kernel)" in done.stdout
    assert (data_dir / "journal" / "snapshot").read_bytes()[:8] == b"TARIFFS1"
    env = lmdb.open(str(data_dir / "backup-v1"), readonly=True, lock=False, max_dbs=4)
    try:
        with env.begin() as txn:
            assert txn.stat(env.open_db(b"records", txn=txn, create=False))["entries"] == 10
    finally:
        env.close()
    server = ServerProcess(data_dir, extra_args=[NO_INDEX])
    server.start()
    try:
        with server.client() as client:
            balance = client.get_balance("acme")
            assert (str(balance.period_charges), balance.as_of_seq) == ("3", 9)
            last = usage_pb2.UsageBatch(batch_id="m3")
            for transaction_id in ("m-4", "m-5"):
                last.events.add(
                    transaction_id=transaction_id,
                    customer_id="acme",
                    event_type="ai_action",
                    timestamp_ms=AT_MS,
                    dimensions=CHEAP,
                )
            ack = client.usage.IngestUsageBatch(last)
            assert (ack.accepted, ack.duplicates, ack.journal_seq) == (0, 2, 9), ack
        assert server.terminate() == 0
        assert snapshots_after_each_stop(server) == [[9]]
        assert (data_dir / "journal" / "snapshot").read_bytes()[:8] == b"TARIFFS2"
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# The journal's data file


def test_the_journals_data_file_runs_past_the_used_bytes_the_stop_line_gives_by_at_most_2_mib(
    stopped: ServerProcess,
) -> None:
    """§4: "LMDB's data file runs up to 2 MiB past its used pages: after each commit the journal reserves and reads
    in the next pages". The module's server stopped at seq 10: its stop line's `journal_bytes` (README "The
    operator's log": the pages LMDB uses) is less than data.mdb's size, by at most 2 MiB."""
    stop = re.search(r"stopped at journal seq (\d+) journal_bytes=(\d+) ", stopped.log_path.read_text())
    assert stop is not None and int(stop[1]) == LAST_SEQ, stopped.log_tail()
    used_bytes = int(stop[2])
    file_bytes = (stopped.data_dir / "journal" / "data.mdb").stat().st_size
    assert used_bytes < file_bytes <= used_bytes + 2 * 2**20, (used_bytes, file_bytes)


def test_with_a_snapshot_after_every_record_each_waits_until_the_journal_took_half_the_last_snapshots_bytes(
    tmp_path: Path,
) -> None:
    """§4 Snapshots: due by its counts, a snapshot is stored "only once the journal has taken at least half as many
    bytes since the last snapshot as that snapshot held (`--snapshot-journal-factor`, 0.5)", that snapshot's bytes
    being the ones its log line gives (and, after a start, the loaded snapshot's). The demo's clean stop stores a
    snapshot of seq 7; started again with `--snapshot-every 1` (every record due by count), batches of 1 to 20 events
    are sent one at a time. After each ack the journal's records since the last snapshot are read (LMDB, as `tariff
    backup` reads it): a snapshot of that seq is expected exactly when their bytes reach half the last snapshot's,
    and waited for before the next batch, so no store is under way when a record is committed; the clean stop stores
    the last record's."""
    server = ServerProcess(tmp_path / "data", demo=True, extra_args=[NO_INDEX])
    server.start()
    try:
        assert server.terminate() == 0
        (stop_snapshot,) = SNAPSHOT_LINE.findall(server.log_path.read_text())
        assert int(stop_snapshot[0]) == DEMO_RECORDS
        server.extra_args = (*server.extra_args, "--snapshot-every", "1")
        server.start()
        last_seq, last_bytes = DEMO_RECORDS, int(stop_snapshot[1])
        expected: list[int] = []
        env = lmdb.open(str(server.data_dir / "journal"), readonly=True, lock=True, map_size=0, max_dbs=4)
        try:
            records = env.open_db(b"records", create=False)
            with server.client() as client:
                for number in range(40):
                    seq = client.usage.IngestUsageBatch(batch(f"f{number}", 1 + number * 7 % 20)).journal_seq
                    with env.begin(buffers=False) as txn, txn.cursor(db=records) as cursor:
                        assert cursor.set_key((last_seq + 1).to_bytes(8, "big"))
                        since = sum(len(record) for _, record in cursor.iternext())
                    if since >= last_bytes / 2:
                        wait_for_log(server, f"snapshot seq={seq} ", 15)
                        expected.append(seq)
                        last_seq = seq
                        last_bytes = int(dict(SNAPSHOT_LINE.findall(server.log_path.read_text()))[str(seq)])
        finally:
            env.close()
        assert server.terminate() == 0
        taken = [int(seq) for seq, _ in SNAPSHOT_LINE.findall(server.log_path.read_text())]
        stop = [] if expected[-1] == DEMO_RECORDS + 40 else [DEMO_RECORDS + 40]  # the clean stop's, of the last record
        assert taken[1:] == expected + stop, (taken, expected)
        assert 2 <= len(expected) < 20, expected
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# Dedupe segments across restarts


def restart_with(server: ServerProcess, *args: str) -> None:
    """Starts `server` again (it must be stopped) with `args` after the module's --no-explain-index."""
    server.extra_args = (NO_INDEX, *args)
    server.start()


def assert_a_restart_replays_nothing_and_every_id_stays_a_duplicate(server: ServerProcess) -> None:
    """After a kill -9 once seq 9 (batches a of 4 events, b of 2) is in a snapshot: the restart replays nothing, both
    batches sent again are all duplicates at seq 9, and acme's period charges stay 3."""
    server.kill9()
    restart_with(server)
    assert start_line(server).endswith(" replayed_records=0 replayed_events=0"), start_line(server)
    with server.client() as client:
        for prefix, count in (("a", 4), ("b", 2)):
            ack = client.usage.IngestUsageBatch(batch(prefix, count))
            assert (ack.accepted, ack.duplicates, ack.journal_seq) == (0, count, 9), ack
        assert str(client.get_balance("acme").period_charges) == "3"


def test_ids_a_restart_replayed_are_in_the_next_snapshots_segment_so_a_start_from_it_keeps_them_duplicates(
    tmp_path: Path,
) -> None:
    """§4 Recovery: "restored from segments, the kernel logs the replay's changes for the next snapshot's segment".
    The demo stopped cleanly (a snapshot of seq 7, its table a base); batch a (4 new ids, seq 8) and kill -9; started
    with a snapshot after every record, the start replays seq 8, and batch b (2 new ids, seq 9) is snapshotted: a
    segment of the changes since seq 7, a's ids among them though a's record was replayed, not rated. kill -9 again:
    the next start loads that snapshot, replays nothing, and a and b sent again are all duplicates: acme is charged
    6 x 0.5 = 3 credits, once."""
    server = ServerProcess(tmp_path / "data", demo=True, extra_args=[NO_INDEX])
    server.start()
    try:
        assert server.terminate() == 0
        restart_with(server)
        with server.client() as client:
            assert client.usage.IngestUsageBatch(batch("a", 4)).journal_seq == 8
        server.kill9()
        restart_with(server, "--snapshot-every", "1", "--snapshot-journal-factor", "0")
        assert start_line(server).endswith(" replayed_records=1 replayed_events=4"), start_line(server)
        with server.client() as client:
            assert client.usage.IngestUsageBatch(batch("b", 2)).journal_seq == 9
        wait_for_log(server, "snapshot seq=9 ", 15)
        assert_a_restart_replays_nothing_and_every_id_stays_a_duplicate(server)
    finally:
        server.stop()


def test_the_stop_adds_a_ninth_segment_without_merging_and_the_next_starts_first_snapshot_merges_the_newest(
    tmp_path: Path,
) -> None:
    """§4 Snapshots: "The snapshot at shutdown does not compact (... the next start's first store does it)"; Count:
    "once there are more than 8, the newest merge, never the base: from the oldest segment after it whose newer ones
    add up to its size". The demo's clean stop lists one segment, a base (seq 7); then a snapshot after every record
    and batches of 2 new ids, each snapshot waited for, until 8 are listed (the base and 7 of 2 ids each); a start
    with the default cadence, one more batch and a clean stop: its snapshot lists 9 and merges nothing. The next
    start, a snapshot after every record, one more batch: 10 listed, the oldest after the base (2 ids) has 8 newer
    ones of 2 ids each after it, so all 9 after the base merge (`dedupe segments compacted count=9`), leaving 2 listed.
    kill -9 and a start from that snapshot: the 9 batches sent again are all duplicates, acme charged 18 x 0.5 = 9."""
    server = ServerProcess(tmp_path / "data", demo=True, extra_args=[NO_INDEX])
    server.start()
    journal = server.data_dir / "journal"
    sent: list[str] = []

    def send(client: TariffClient) -> int:
        sent.append(f"s{len(sent)}")
        seq: int = client.usage.IngestUsageBatch(batch(sent[-1], 2)).journal_seq
        return seq

    try:
        assert server.terminate() == 0
        assert len(listed_segments(journal)) == 1
        restart_with(server, "--snapshot-every", "1", "--snapshot-journal-factor", "0")
        with server.client() as client:
            for _ in range(7):
                wait_for_log(server, f"snapshot seq={send(client)} ", 15)
        assert server.terminate() == 0
        assert len(listed_segments(journal)) == 8
        restart_with(server)
        with server.client() as client:
            send(client)
        assert server.terminate() == 0
        assert len(listed_segments(journal)) == 9
        assert "dedupe segments compacted" not in server.log_path.read_text()
        restart_with(server, "--snapshot-every", "1", "--snapshot-journal-factor", "0")
        with server.client() as client:
            wait_for_log(server, f"snapshot seq={send(client)} ", 15)
        compacted = re.findall(r"dedupe segments compacted count=(\d+) bytes=(\d+) ", server.log_path.read_text())
        listed = listed_segments(journal)
        assert compacted == [("9", str(sum(path.stat().st_size for path in listed)))]
        assert len(listed) == 2
        server.kill9()
        restart_with(server)
        with server.client() as client:
            for prefix in sent:
                ack = client.usage.IngestUsageBatch(batch(prefix, 2))
                assert (ack.accepted, ack.duplicates) == (0, 2), ack
            assert str(client.get_balance("acme").period_charges) == "9"
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# §2: the writer's threads, as `top -H` shows them


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="threads' names and nice are Linux's /proc")
def test_the_writers_threads_are_named_in_the_os_and_run_at_nice_5_above_the_event_loops(tmp_path: Path) -> None:
    """§2: "The writer's threads (rating, the journal's commits, the explain index, the snapshot's store) run at nice
    5 (Linux, where nice is per thread ...)", and "the server names its threads in the OS (`name_os_threads`), so
    `top -H` and `perf` tell them apart". A serving process: `tariff-rating`, `tariff-journal`, `tariff-explain` and
    `tariff-snapshot` are in /proc with a nice 5 above the main thread's (where the event loop runs), and no other
    thread has it."""
    server = ServerProcess(tmp_path / "data", demo=True)
    server.start()
    try:
        tasks = Path(f"/proc/{server.pid}/task")
        nice = {}
        for task in tasks.iterdir():
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
            nice[(task / "comm").read_text().strip(), task.name == str(server.pid)] = int(fields[16])
        loop_nice = nice.pop(("python", True))
        writers = {name: value for (name, _), value in nice.items() if value != loop_nice}
        assert writers == {
            name: loop_nice + 5 for name in ("tariff-rating", "tariff-journal", "tariff-explain", "tariff-snapshot")
        }
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# A snapshot the disk has no room for

# The server's process only: its snapshot and dedupe segment files take no byte while the file the environment names
# exists (os.write answers ENOSPC for the descriptors os.open gave for them), as on a full disk.
DISK_SHIM = """
import os

_open, _write = os.open, os.write
_full_while = os.environ["TARIFF_TEST_DISK_FULL_WHILE"]
_snapshot_fds = set()


def _tracking_open(path, flags, mode=0o777, *, dir_fd=None):
    fd = _open(path, flags, mode, dir_fd=dir_fd)
    name = os.path.basename(os.fsdecode(path))
    if name == "snapshot.partial" or name.startswith("segment."):
        _snapshot_fds.add(fd)
    else:
        _snapshot_fds.discard(fd)
    return fd


def _filling_write(fd, data):
    if fd in _snapshot_fds and os.path.exists(_full_while):
        raise OSError(28, "No space left on device")
    return _write(fd, data)


os.open = _tracking_open
os.write = _filling_write
"""


def test_a_snapshot_the_disk_has_no_room_for_is_logged_as_such_and_the_next_due_one_is_stored(tmp_path: Path) -> None:
    """§4 Snapshots: a store the disk has no room for keeps the stored snapshot, and the next snapshot is tried once
    due again. The demo stopped cleanly (a snapshot of seq 7); started with a snapshot after every record and no room
    for snapshot files: batch a (seq 8) is acknowledged, its snapshot is not stored, and the warning says so as it is:
    no room on disk (it said to grow --map-size-mb, the journal's map, which holds no snapshot). Room again, batch b
    (seq 9) is snapshotted; after kill -9 the start loads it and replays nothing, a and b are duplicates and acme is
    charged 6 x 0.5 = 3 credits."""
    shim = tmp_path / "diskshim"
    shim.mkdir()
    (shim / "sitecustomize.py").write_text(DISK_SHIM)
    full_while = tmp_path / "disk-full"
    env = {"PYTHONPATH": str(shim), "TARIFF_TEST_DISK_FULL_WHILE": str(full_while)}
    server = ServerProcess(tmp_path / "data", demo=True, extra_args=[NO_INDEX], env=env)
    server.start()
    try:
        assert server.terminate() == 0
        full_while.touch()
        restart_with(server, "--snapshot-every", "1", "--snapshot-journal-factor", "0")
        with server.client() as client:
            assert client.usage.IngestUsageBatch(batch("a", 4)).journal_seq == 8
            wait_for_log(server, "no snapshot at seq 8: ", 15)
            warning = re.search(r"WARNING .*no snapshot at seq 8: .*", server.log_path.read_text())
            assert warning is not None and "no room on disk for a snapshot at " in warning[0], warning
            assert "--map-size-mb" not in warning[0], warning[0]
            full_while.unlink()
            assert client.usage.IngestUsageBatch(batch("b", 2)).journal_seq == 9
            wait_for_log(server, "snapshot seq=9 ", 15)
        assert_a_restart_replays_nothing_and_every_id_stays_a_duplicate(server)
    finally:
        server.stop()
