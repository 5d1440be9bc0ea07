"""Audit of `tariff backup` (README "The data directory, snapshots and backups"; docs/architecture.md §4, Backups)
against a real server.

Catalogue (tests/test_backup_wire.py's): the demo's rate card `ai-credits`, customers c0, c1, c2, each event 1
credit of period_charges. The server snapshots every 10 records, without waiting for the journal to grow
(`--snapshot-journal-factor 0`), so that a few dozen batches make a few snapshots."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from server.backup import backup
from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_backup_wire import balances, batch, catalogue, replayed_records, tariff_backup

SNAPSHOT_ARGS = ["--snapshot-every", "10", "--snapshot-journal-factor", "0"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("backupaudit")
    yield from serving(ServerProcess(root / "data", demo=True, extra_args=SNAPSHOT_ARGS), catalogue)


def ingest(server: ServerProcess, prefix: str, count: int) -> None:
    with server.client() as client:
        for index in range(count):
            ack = client.usage.IngestUsageBatch(batch(index, prefix))
            assert ack.accepted == 3, ack


def reader_pids(environment: Path) -> set[int]:
    """The pids in the reader table of the LMDB environment at `environment` (opened as `tariff backup` opens it,
    no transaction taken here)."""
    env = lmdb.open(str(environment), readonly=True, lock=True, map_size=0, max_dbs=4)
    try:
        table = env.readers()
    finally:
        env.close()
    return {int(row.split()[0]) for row in table.splitlines()[1:] if row.split() and row.split()[0].isdigit()}


# A backup's copy, as server/backup.py takes it: each environment opened read-only with its lock file, a read
# transaction begun in each; then it waits to be killed, as a backup killed (-9, the OOM killer, a timeout) mid-copy.
_HOLDER = """
import sys, time, lmdb
envs = [lmdb.open(p, readonly=True, lock=True, map_size=0, max_dbs=4) for p in sys.argv[1:]]
txns = [env.begin() for env in envs]
print("reading", flush=True)
time.sleep(600)
"""


def test_a_backup_killed_in_its_read_transactions_frees_its_reader_slots_by_the_next_snapshot(
    server: ServerProcess,
) -> None:
    """README: while a backup runs the journal grows by what is written meanwhile, none freed being reused. Its
    reader slot must not outlive it: a killed reader's slot kept every page freed after it from reuse, so 200
    batches took ~940 pages instead of ~10 until the next backup or a restart, and the map fills."""
    environments = [server.data_dir / "journal", server.data_dir / "explain"]
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, *map(str, environments)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "reading\n"
        assert all(holder.pid in reader_pids(env) for env in environments)
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    ingest(server, "killed-", 30)  # three snapshots at least
    freed = wait_for(lambda: not any(holder.pid in reader_pids(env) for env in environments), 30)
    assert freed, {str(env): reader_pids(env) for env in environments}


def test_a_backup_run_again_under_the_pid_of_a_killed_one_takes_the_place_of_its_partial_copy(
    server: ServerProcess,
) -> None:
    """README: a backup killed leaves DEST.partial-<pid> behind, never a DEST. A backup run again under the same pid
    (a container's entrypoint: pid 1 each run) found that partial copy, failed ("File exists", exit 1) and removed
    it: the retry after a killed backup failed once. Taken in this process, whose pid the leftover carries."""
    destination = server.data_dir.parent / "again"
    leftover = destination.with_name(f"again.partial-{os.getpid()}")
    (leftover / "journal").mkdir(parents=True)
    (leftover / "journal" / "data.mdb").write_bytes(b"cut short by a kill")
    done = backup(server.data_dir, destination)
    assert done.last_seq > 0 and (destination / "journal" / "data.mdb").is_file() and not leftover.exists()


def test_a_path_that_cannot_be_looked_at_is_a_one_line_usage_error(server: ServerProcess) -> None:
    """README: a DEST that is not an empty directory, or a DIR without a journal, is a usage error (exit 2, one line,
    nothing written). A path the system refuses to look at (a name too long here; a DIR not searchable by the user
    running the backup alike: Permission denied) ended the command in a traceback (exit 1)."""
    too_long = "x" * 300
    for data_dir, destination in ((server.data_dir, server.data_dir.parent / too_long), (Path(too_long), Path("y"))):
        done = tariff_backup(data_dir, destination)
        assert (done.returncode, done.stdout) == (2, ""), done
        assert done.stderr.startswith("tariff backup: ") and done.stderr.count("\n") == 1, done.stderr
        assert "File name too long" in done.stderr, done.stderr


def test_an_explain_index_behind_the_snapshot_is_said_so_and_the_restore_replays_the_whole_journal(
    server: ServerProcess,
) -> None:
    """A server run with --no-explain-index keeps its old explain/ as it was, behind the snapshots it saves since.
    The backup copies it (the default); its line says the index is behind the snapshot, and the restore replays
    every record (README: a start's replay begins at the journal's first record whenever the index is behind the
    snapshot), not only those after the snapshot."""
    assert server.terminate() == 0
    server.extra_args = (*SNAPSHOT_ARGS, "--no-explain-index")
    server.start()
    ingest(server, "no-index-", 25)
    with server.client() as client:
        before = balances(client)
    destination = server.data_dir.parent / "behind"
    done = tariff_backup(server.data_dir, destination)
    assert done.returncode == 0, done.stderr
    found = re.search(
        r"records up to seq (\d+) .*snapshot at seq (\d+) .*explain index covering seq (\d+)", done.stdout
    )
    assert found is not None, done.stdout
    last_seq, snapshot_seq, covered_seq = map(int, found.groups())
    assert covered_seq < snapshot_seq <= last_seq, done.stdout
    assert "behind the snapshot" in done.stdout, done.stdout
    restored = ServerProcess(destination)
    restored.start()
    try:
        assert replayed_records(restored) == last_seq, restored.log_tail(5)
        with restored.client() as client:
            assert balances(client) == before
    finally:
        restored.stop()


def test_a_destination_that_is_a_link_to_an_empty_directory_receives_the_backup(server: ServerProcess) -> None:
    """README: DEST is a new or empty directory. One named through a symbolic link (a mount point's alias, say) made
    the final rename fail ("Not a directory", exit 1): the backup goes into the directory the link names."""
    target = server.data_dir.parent / "linked-target"
    target.mkdir()
    link = server.data_dir.parent / "linked"
    link.symlink_to(target)
    done = tariff_backup(server.data_dir, link)
    assert done.returncode == 0, done
    assert link.is_symlink() and (target / "journal" / "data.mdb").is_file()


def test_an_explain_index_the_backup_cannot_read_is_refused_naming_the_flag_that_leaves_it_out(
    tmp_path: Path, server: ServerProcess
) -> None:
    """The explain index is derived data: one that is damaged (here, not an LMDB file) refuses the backup (exit 2),
    and the line says how to take the backup without it."""
    copy = tmp_path / "damaged"
    assert backup(server.data_dir, copy).last_seq > 0
    (copy / "explain" / "data.mdb").write_bytes(b"not an LMDB file" * 512)
    done = tariff_backup(copy, tmp_path / "from-damaged")
    assert (done.returncode, done.stdout) == (2, ""), done
    assert "--no-explain-index" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert tariff_backup(copy, tmp_path / "from-damaged", "--no-explain-index").returncode == 0
