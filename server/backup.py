"""`tariff backup`: a consistent copy of a data directory, taken beside the server that runs on it (or of a stopped
one), which `tariff serve --data-dir DEST` starts from.

What it copies, in this order (docs/architecture.md §4, Backups):

1. the newest snapshot file (`journal/snapshot`) and the dedupe segments it lists (`journal/segment.<n>`). Every one
   is opened before any is read: the snapshot's thread replaces a snapshot by a rename and deletes the segments no
   snapshot lists any more, so a file once open stays whole; a segment deleted before it was opened (a newer
   snapshot or a merge meanwhile) makes the step start again from the newer snapshot file.
2. the LMDB journal, by LMDB's own consistent copy (`mdb_env_copy2`, compacting) inside one read transaction, whose
   last record's seq is the backup's: every record committed before that transaction began is in it, and a batch
   (one commit) is whole or absent. Taken after the snapshot, so the copied journal always reaches the copied
   snapshot's seq (a snapshot is saved only at a committed seq): the restore loads it and replays what follows.

With `explain_index` (the default; `--no-explain-index` leaves it out), between the two: the explain index (`explain/`), by the same LMDB copy.
Its covered seq is at most the journal's (the index takes only committed records), and at least the snapshot's (a
snapshot is saved only once the index covers its seq) unless the server runs with `--no-explain-index` over an old
`explain/` or its index stopped full: the restore keeps the index and its page tokens, loads the snapshot and
replays only what follows, or, behind the snapshot (said so on the line), replays the whole journal. Without it `explain/` is left out (derived from the journal): a start
rebuilds it by replaying the whole journal, the snapshot unused (server/recovery.py), and old page tokens are refused.

Always left out: `LOCK` (the server's `flock`, never taken nor waited for here). Each environment is opened read-only
WITH its lock file, so the backup's read transaction is registered like any reader's and the writer never reuses the
pages it reads; it never waits for the writer, and the writer never waits for it (LMDB's readers take no lock the
writer holds). Everything is written into a sibling `DEST.partial-<pid>`, fsynced, and renamed to DEST only when
complete.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import lmdb

from server.journal import SNAPSHOT_FILE, JournalFormatError, segment_file_name, snapshot_header

__all__ = ["BackupDone", "BackupFailed", "BackupRefused", "backup"]

JOURNAL_DIR = "journal"
EXPLAIN_DIR = "explain"
# LmdbJournal's records database (server/journal.py `_RECORDS_DB`), the explain index's meta database and its covered
# seq (server/explain_index.py), and the number of named databases both are opened with.
_RECORDS_DB = b"records"
_EXPLAIN_META_DB = b"meta"
_EXPLAIN_COVERED_KEY = b"covered_seq"
_MAX_DBS = 4
# How often the snapshot and its segments are opened again when the snapshot's thread replaced them meanwhile (a
# snapshot every --snapshot-every records at the least: a few times is already unlikely).
SNAPSHOT_OPEN_ATTEMPTS = 20
# As the server writes its snapshots (server/journal.py, _SNAPSHOT_WRITE_BYTES): a larger write into a new file cost
# about 20 times the CPU per byte on the development machine, CPU the server shares.
_COPY_CHUNK_BYTES = 64 * 1024


class BackupRefused(Exception):
    """The backup cannot be taken as asked (no journal, DEST in use, ...): nothing was written."""


class BackupFailed(Exception):
    """The backup failed while copying; its partial copy was removed and DEST left as it was."""


@dataclasses.dataclass(frozen=True, slots=True)
class BackupDone:
    """What a backup copied."""

    destination: Path
    last_seq: int  # the seq of the last journal record copied; 0 for an empty journal
    journal_bytes: int  # the copied LMDB file (compacted: free pages left out)
    snapshot_seq: int | None  # the copied snapshot's seq, None when the data directory had none
    segments: int  # dedupe segments copied with the snapshot
    snapshot_bytes: int  # the snapshot file and its segments
    explain_covered_seq: int | None = None  # the copied explain index's covered seq; None: not copied
    explain_bytes: int = 0

    def line(self) -> str:
        snapshot = (
            f"snapshot at seq {self.snapshot_seq} with {self.segments} dedupe segments ({self.snapshot_bytes:,} bytes)"
            if self.snapshot_seq is not None
            else "no snapshot"
        )
        explain = (
            f", explain index covering seq {self.explain_covered_seq} ({self.explain_bytes:,} bytes)"
            if self.explain_covered_seq is not None
            else ", no explain index (a start rebuilds it by replaying the whole journal)"
        )
        if self.explain_covered_seq is not None and self.explain_covered_seq < (self.snapshot_seq or 0):
            # An index left behind by a server run with --no-explain-index, or stopped full: the snapshot unused.
            explain += ", behind the snapshot (a start replays the whole journal into it)"

        return (
            f"backed up journal records up to seq {self.last_seq} ({self.journal_bytes:,} bytes), {snapshot}{explain} "
            f"into {self.destination}"
        )


@dataclasses.dataclass(slots=True)
class _OpenSnapshot:
    """The snapshot file and its segments, each open: renames and deletions by the server no longer touch them."""

    seq: int
    snapshot: BinaryIO
    segments: list[tuple[str, BinaryIO]]

    def close(self) -> None:
        for file in [self.snapshot, *(file for _, file in self.segments)]:
            file.close()


def backup(data_dir: Path, destination: Path, *, explain_index: bool = True) -> BackupDone:
    """Copies `data_dir`'s journal, and with `explain_index` its explain index (see the module docstring), into
    `destination`, which must not exist or be an empty directory. BackupRefused (nothing written) or BackupFailed
    (nothing left behind) when it cannot."""
    journal_dir = data_dir / JOURNAL_DIR
    _refuse_unless_usable(data_dir, journal_dir, destination)
    # Beside DEST, on its file system, so that the rename is atomic (absolute: `--to .` has no name to add to). A DEST
    # named through a symbolic link is the directory it names: a directory cannot be renamed onto the link.
    absolute = Path(os.path.abspath(destination.resolve() if destination.is_symlink() else destination))
    partial = absolute.with_name(f"{absolute.name}.partial-{os.getpid()}")
    # One of this pid is a killed backup's (no live process has this pid but this one): a container runs each backup
    # under the same pid, and its retry would fail on it.
    shutil.rmtree(partial, ignore_errors=True)
    try:
        copied_journal = partial / JOURNAL_DIR
        copied_journal.mkdir(parents=True)
        snapshot_seq, segments, snapshot_bytes = _copy_snapshot(journal_dir, copied_journal)
        explain_seq, explain_bytes = None, 0
        if explain_index and (data_dir / EXPLAIN_DIR / "data.mdb").is_file():
            (partial / EXPLAIN_DIR).mkdir()
            explain_seq, explain_bytes = _explain_copy(data_dir / EXPLAIN_DIR, partial / EXPLAIN_DIR)
        last_seq, journal_bytes = _lmdb_copy(journal_dir, copied_journal, _last_record_seq)
        for what, seq in (("snapshot", snapshot_seq), ("explain index", explain_seq)):
            if seq is not None and seq > last_seq:  # never, by the order of the copies: checked, not assumed
                raise BackupFailed(f"the {what} copied is at seq {seq}, past the journal copied (seq {last_seq})")
        _fsync_path(copied_journal)
        _fsync_path(partial)
        try:
            partial.rename(absolute)  # onto an empty directory too
        except OSError as exc:
            raise BackupFailed(f"cannot rename {partial} to {destination}: {exc.strerror or exc}") from None
        _fsync_path(absolute.parent)
    except OSError as exc:  # a full disk, say
        shutil.rmtree(partial, ignore_errors=True)
        raise BackupFailed(f"cannot write the backup into {partial}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupDone(
        destination, last_seq, journal_bytes, snapshot_seq, segments, snapshot_bytes, explain_seq, explain_bytes
    )


def _refuse_unless_usable(data_dir: Path, journal_dir: Path, destination: Path) -> None:
    try:
        if not (journal_dir / "data.mdb").is_file():
            raise BackupRefused(f"{data_dir} holds no journal ({journal_dir / 'data.mdb'} is missing)")
        if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
            raise BackupRefused(f"{destination} already exists: a backup goes into a new (or empty) directory")
        if destination.resolve().is_relative_to(data_dir.resolve()):
            raise BackupRefused(f"{destination} is inside the data directory {data_dir}")
    except OSError as exc:  # a directory the user may not search (Permission denied), a name too long: one line
        raise BackupRefused(f"cannot look at {exc.filename}: {exc.strerror or exc}") from None


def _copy_snapshot(journal_dir: Path, copied_journal: Path) -> tuple[int | None, int, int]:
    """Copies the snapshot file and its segments: (seq, segments, bytes), (None, 0, 0) when there is none."""
    opened = _open_snapshot(journal_dir)
    if opened is None:
        return None, 0, 0
    try:
        copied_bytes = _copy_file(opened.snapshot, copied_journal / SNAPSHOT_FILE)
        for name, file in opened.segments:
            copied_bytes += _copy_file(file, copied_journal / name)
    finally:
        opened.close()
    return opened.seq, len(opened.segments), copied_bytes


def _open_snapshot(journal_dir: Path) -> _OpenSnapshot | None:
    """The snapshot and every segment it lists, open (see the module docstring); None when there is no snapshot."""
    path = journal_dir / SNAPSHOT_FILE
    for _ in range(SNAPSHOT_OPEN_ATTEMPTS):
        try:
            snapshot = open(path, "rb")  # noqa: SIM115 - closed by _OpenSnapshot.close
        except FileNotFoundError:
            return None
        opened = _OpenSnapshot(0, snapshot, [])
        try:
            opened.seq, _, listed = snapshot_header(snapshot, path)
            for number, size_bytes in listed:
                name = segment_file_name(number)
                opened.segments.append((name, open(journal_dir / name, "rb")))  # noqa: SIM115
                found_bytes = os.fstat(opened.segments[-1][1].fileno()).st_size
                if found_bytes != size_bytes:
                    raise BackupFailed(f"{journal_dir / name} holds {found_bytes} of its {size_bytes} bytes")
        except FileNotFoundError:
            opened.close()
            continue  # replaced by a newer snapshot or a merge since the snapshot file was opened: open that one
        except JournalFormatError as exc:
            opened.close()
            raise BackupFailed(str(exc)) from None
        except BaseException:
            opened.close()
            raise
        return opened
    raise BackupFailed(f"the snapshot in {journal_dir} was replaced {SNAPSHOT_OPEN_ATTEMPTS} times while opening it")


def _copy_file(source: BinaryIO, path: Path) -> int:
    """Copies the whole of `source` into a new file at `path`, fsynced; its bytes."""
    source.seek(0)
    # Created as the server creates them (billing data: the owner's only), never over an existing file.
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as target:
        shutil.copyfileobj(source, target, _COPY_CHUNK_BYTES)
        target.flush()
        os.fsync(target.fileno())
        return target.tell()


def _lmdb_copy(
    source: Path, target: Path, seq_of: Callable[[lmdb.Environment, lmdb.Transaction], int]
) -> tuple[int, int]:
    """LMDB's compacting copy of the environment at `source` into the directory `target`, in one read transaction:
    (`seq_of` read in that transaction, bytes copied)."""
    try:
        # readonly with lock=True: the read transaction takes a slot in the server's reader table (lock.mdb), so the
        # writer keeps the pages it reads. map_size=0 adopts the map the server set; max_dbs as the server opens it.
        env = lmdb.open(
            str(source), readonly=True, lock=True, subdir=True, map_size=0, max_dbs=_MAX_DBS, readahead=False
        )
    except lmdb.Error as exc:
        raise BackupRefused(f"cannot open {source}: {exc}") from None
    try:
        env.reader_check()  # frees the reader slots of processes gone (a backup killed mid-copy kept old pages)
        with env.begin(buffers=False) as txn:
            seq = seq_of(env, txn)
            # Compacting: it reads through `txn` alone (py-lmdb takes a txn for a compacting copy only), where
            # LMDB's plain copy takes the writer's mutex while it starts, which would make a commit wait.
            env.copy(str(target), compact=True, txn=txn)
    except lmdb.Error as exc:  # MapResizedError, say: a server starting meanwhile with a larger --map-size-mb
        raise BackupFailed(f"LMDB could not copy {source}: {exc}") from None
    finally:
        env.close()
    copied = target / "data.mdb"
    _fsync_path(copied)
    _fsync_path(target)
    return seq, copied.stat().st_size


def _explain_copy(source: Path, target: Path) -> tuple[int, int]:
    """The explain index's copy; one it cannot read is refused saying how to leave it out (it is derived data)."""
    try:
        return _lmdb_copy(source, target, _covered_seq)
    except BackupRefused as exc:
        raise BackupRefused(f"{exc}; --no-explain-index takes the backup without it (a restore rebuilds it)") from None


def _last_record_seq(env: lmdb.Environment, txn: lmdb.Transaction) -> int:
    try:
        records = env.open_db(_RECORDS_DB, txn=txn, create=False)
    except lmdb.Error as exc:
        raise BackupRefused(f"{env.path()} is not a Tariff journal: {exc}") from None
    with txn.cursor(db=records) as cursor:
        return int.from_bytes(cursor.key(), "big") if cursor.last() else 0


def _covered_seq(env: lmdb.Environment, txn: lmdb.Transaction) -> int:
    try:
        meta = env.open_db(_EXPLAIN_META_DB, txn=txn, create=False)
    except lmdb.Error as exc:
        raise BackupRefused(f"{env.path()} is not a Tariff explain index: {exc}") from None
    covered = txn.get(_EXPLAIN_COVERED_KEY, db=meta)
    return int(covered) if covered is not None else 0


def _fsync_path(path: Path) -> None:
    """fsync of a file or a directory (a directory's entries: the files created in it, a rename into it)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if path.is_dir() else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
