"""`tariff migrate`: turns a data directory written by an earlier release (journal format 1, usage rated by
the Python engine) into the current format (2: usage records hold the batch bytes the kernel rates).

Every old record is replayed in order into a new journal: admin commands as they are; each usage record
re-encoded as the `UsageBatch` bytes of its events, with its receive time, and fed to the kernel, whose digest
is journaled with it. A usage record whose batch the kernel accepts nothing of gets no record (as the server
does), so sequence numbers after it move down by one. The old journal is kept in DIR/backup-v1/ (copied
before anything is written), the new one replaces it only once complete, and a second run finds format 2 and
does nothing: the command is idempotent and safe to rerun after an interruption.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import lmdb
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from server.app import DataDirLock
from server.journal import FORMAT_VERSION, LmdbJournal
from server.records import JournalRecord, UsageRecord, decode_record, encode_record

BACKUP_DIR = "backup-v1"
COMMIT_EVERY_RECORDS = 1_000


class MigrationError(Exception):
    """Why a data directory cannot be migrated (nothing was changed)."""


def stored_format(journal_dir: Path) -> bytes | None:
    """The journal's format version as stored, or None when there is no journal."""
    if not (journal_dir / "data.mdb").exists():
        return None
    try:
        env = lmdb.open(str(journal_dir), readonly=True, lock=False, max_dbs=4, subdir=True)
    except lmdb.Error as exc:  # not an LMDB file, say: left as it is, as `tariff serve` leaves it
        raise MigrationError(f"cannot open the journal at {journal_dir}: {exc}") from None
    try:
        meta = env.open_db(b"meta", create=False)
        with env.begin() as txn:
            value: bytes | None = txn.get(b"format_version", db=meta)
            return value
    except lmdb.Error as exc:
        raise MigrationError(f"cannot read the journal's format at {journal_dir}: {exc}") from None
    finally:
        env.close()


def migrate(data_dir: Path, *, map_size_bytes: int = 1024 * 1024 * 1024) -> str:
    """Migrates `data_dir`; returns what was done, in one line. MigrationError if it cannot."""
    lock = DataDirLock(data_dir)
    if not data_dir.is_dir():
        raise MigrationError(f"{data_dir} is not a directory")
    holder = lock.acquire()
    if holder is not None:
        raise MigrationError(
            f"a Tariff server (pid {holder}) is running on the data directory {data_dir} (it holds its LOCK): "
            "stop it first, then migrate"
        )
    try:
        return _migrate_locked(data_dir, map_size_bytes)
    finally:
        lock.release()


def _migrate_locked(data_dir: Path, map_size_bytes: int) -> str:
    journal_dir, backup, fresh = data_dir / "journal", data_dir / BACKUP_DIR, data_dir / "journal.migrating"
    found = stored_format(journal_dir)
    if found is None:
        raise MigrationError(f"{data_dir} holds no journal")
    if found == str(FORMAT_VERSION).encode():
        return f"{data_dir}: already in journal format {FORMAT_VERSION}; nothing to do"
    if found != b"1":
        raise MigrationError(f"{data_dir}: journal format {found!r} is not one this release migrates")
    if not backup.exists():
        shutil.copytree(journal_dir, backup.with_name(BACKUP_DIR + ".partial"))
        backup.with_name(BACKUP_DIR + ".partial").rename(backup)
    shutil.rmtree(fresh, ignore_errors=True)  # an interrupted earlier run
    records, batches = _replay_into(backup, fresh, map_size_bytes)
    shutil.rmtree(journal_dir)
    fresh.rename(journal_dir)
    return (
        f"{data_dir}: migrated to journal format {FORMAT_VERSION} ({records} records, {batches} usage batches "
        f"re-rated by the kernel); the old journal is kept in {backup}"
    )


def _replay_into(old_dir: Path, new_dir: Path, map_size_bytes: int) -> tuple[int, int]:
    billing = Billing()
    journal = LmdbJournal(new_dir, map_size_bytes=map_size_bytes)
    pending: list[tuple[int, bytes]] = []
    batches = 0
    try:
        for blob in _old_records(old_dir):
            command = decode_record(blob).command
            assert command is not None, "a format-1 record always holds a command"
            seq = billing.last_seq + 1
            if isinstance(command, cmd.IngestBatch):
                data = _batch_bytes(command)
                done = billing.ingest(data, command.received_at_ms)
                if not done.accepted:
                    continue
                usage = UsageRecord(
                    data, command.received_at_ms, done.digest, done.accepted, done.duplicates, len(done.rejected)
                )
                pending.append((seq, encode_record(JournalRecord(usage=usage))))
                batches += 1
            else:
                billing.apply(command, seq)
                pending.append((seq, encode_record(JournalRecord(command))))
            if len(pending) >= COMMIT_EVERY_RECORDS:
                journal.commit(pending)
                pending = []
        if pending:
            journal.commit(pending)
        if billing.last_seq:
            journal.save_snapshot(billing.last_seq, billing.encode_snapshot())
        return billing.last_seq, batches
    finally:
        journal.close()


def _old_records(journal_dir: Path) -> list[bytes]:
    env = lmdb.open(str(journal_dir), readonly=True, lock=False, max_dbs=4, subdir=True)
    try:
        records = env.open_db(b"records", create=False)
        with env.begin(buffers=False) as txn, txn.cursor(db=records) as cursor:
            return [value for _, value in cursor]
    finally:
        env.close()


def _batch_bytes(batch: cmd.IngestBatch) -> bytes:
    """The UsageBatch a client would have sent for this journaled batch."""
    return usage_pb2.UsageBatch(
        batch_id=batch.batch_id,
        events=[
            usage_pb2.UsageEvent(
                transaction_id=e.transaction_id,
                customer_id=e.customer_id,
                event_type=e.event_type,
                timestamp_ms=e.timestamp_ms,
                dimensions=e.dimensions,
                values=e.values,
                reservation_id=e.reservation_id,
            )
            for e in batch.events
        ],
    ).SerializeToString()
