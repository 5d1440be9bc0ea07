"""The journal: Tariff's durable store, behind the small `Journal` protocol.

The sequencer appends every state-changing command (with its results) as an opaque record. A
reply is sent only after `commit` returns, so anything acknowledged survives `kill -9`; recovery
loads the newest snapshot and replays the records after it. Dedupe entries are part of the rating
kernel's state (in its snapshots), not of the journal.

Two implementations with the same observable semantics:

- `LmdbJournal`, the default: one LMDB environment (a directory) with three named databases,
  "records" (seq as 8-byte big-endian -> record), "snapshots" and "meta" (format version), and
  the newest snapshot in a file of its own beside them, `snapshot` (see `_SnapshotFile`). A store
  written by an earlier release may hold its snapshot in "snapshots" instead (read, and emptied once
  a newer one is saved) and a "transactions" database (a dedupe index), neither read nor written.
- `MemoryJournal`, in RAM, for engine and server unit tests; `capacity_bytes` simulates a full
  map so the `JournalFull` path can be tested without a disk.

A cluster backend (NATS JetStream) is meant to be a third implementation.

Threads: the server calls the write methods (`commit`, `save_snapshot`) from ONE dedicated writer thread, and the read methods from the event-loop
thread. LMDB supports exactly that: the environment is opened with `lock=True`, write
transactions are serialised by LMDB, py-lmdb uses MDB_NOTLS so a read transaction is not tied to
a thread slot, and every transaction here begins and ends inside one method call, so no
transaction is ever shared between threads. `MemoryJournal` takes a lock for the same guarantee.
`close()` must not race with calls in flight; the server closes after stopping both threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import mmap
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, Protocol

import lmdb
import msgspec

from server.pages_ahead import PagesAhead

__all__ = [
    "FORMAT_VERSION",
    "SNAPSHOTS_DB_NAME",
    "SNAPSHOT_FILE",
    "DedupeSegmentSave",
    "Journal",
    "JournalFormatError",
    "JournalFull",
    "JournalStats",
    "JournalUnopenable",
    "LmdbJournal",
    "MemoryJournal",
    "Segment",
    "SegmentParts",
    "SegmentWriter",
    "SnapshotDamaged",
    "segment_file_name",
    "snapshot_header",
]

# Bumped whenever the on-disk layout changes, so that an older server refuses a newer store
# instead of misreading it. 2: usage records hold the batch bytes as received (server/records.py).
FORMAT_VERSION = 2
# Stores of these versions are turned into the current one by `tariff migrate` (server/migrate.py).
MIGRATABLE_FORMAT_VERSIONS = (b"1",)

_RECORDS_DB = b"records"
# Where an earlier release kept its snapshot (read until a newer one is saved; a refusal names it, to drop it).
SNAPSHOTS_DB_NAME = "snapshots"
_SNAPSHOTS_DB = SNAPSHOTS_DB_NAME.encode("ascii")
_META_DB = b"meta"
_FORMAT_VERSION_KEY = b"format_version"

# The event-loop thread and short-lived tooling readers need a handful of slots; 126 is LMDB's
# default and leaves ample headroom.
_MAX_READERS = 126

# read_records releases its read transaction after this much, so a replay of a huge journal
# neither pins old pages (which would stop LMDB reusing them) nor buffers unbounded memory.
_READ_CHUNK_RECORDS = 1024
_READ_CHUNK_BYTES = 8 * 1024 * 1024

_SEQ_KEY_BYTES = 8

# The snapshot file: magic, seq and blob length (8-byte big-endian each), then the blob. TARIFFS2 adds, before the
# blob, the count of the dedupe segments the snapshot lists and each one's number and length (8 bytes each): its
# file is `segment.<number>` beside it. A snapshot without segments is still written as TARIFFS1.
SNAPSHOT_FILE = "snapshot"
_SNAPSHOT_MAGIC = b"TARIFFS1"
_SNAPSHOT_MAGIC_SEGMENTED = b"TARIFFS2"
_SNAPSHOT_HEADER_BYTES = 24
_SEGMENT_PREFIX = "segment."
# A snapshot is written 64 KiB at a time: on the development machine a write of more than 64 KiB into a new file
# takes about 20 times the CPU per byte (48 MB: 240-320 ms of CPU in 1 MiB or 256 MiB writes, 12-20 ms in 64 KiB
# ones; server/pages_ahead.py, `python -m server.bench.page_writes`).
_SNAPSHOT_WRITE_BYTES = 64 * 1024
_DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)

# A snapshot's bytes: one buffer, or a list of parts that make it up in order.
SnapshotBlob = bytes | mmap.mmap | list[bytes]
# A stored dedupe segment as loaded: bytes, or a read-only map of its file.
Segment = bytes | mmap.mmap
# Writes a dedupe segment through the callable it is given, a part at a time as each is made (the kernel's
# `DedupeSegment.write_to`, `merge_dedupe_segments_to`), and returns its bytes: the segment is never in memory whole.
SegmentWriter = Callable[[Callable[[bytes], object]], int]
# A dedupe segment to store: its parts in order (emptied as written), or its writer.
SegmentParts = list[bytes] | SegmentWriter
# Merges dedupe segments (oldest first; whether the oldest is a base) into one (the kernel's).
SegmentMerge = Callable[[list[Segment], bool], SegmentParts]


def segment_joined(parts: SegmentParts) -> bytes:
    """A segment's bytes in one piece: its parts joined (the list emptied), or all its writer wrote."""
    if isinstance(parts, list):
        joined = b"".join(parts)
        parts.clear()
        return joined
    written: list[bytes] = []
    parts(written.append)
    return b"".join(written)


@dataclasses.dataclass(frozen=True, slots=True)
class DedupeSegmentSave:
    """A snapshot's dedupe segment (engine/kernel/src/snapshot.rs, `segment`), in parts emptied as written or as its
    writer. A base holds the whole table and replaces the segments listed before; otherwise it holds the changes
    since the stored snapshot and is listed after its segments."""

    parts: SegmentParts
    base: bool


class JournalStats(msgspec.Struct, frozen=True):
    """Sizes for metrics and for the operator deciding when to grow the map."""

    last_seq: int
    records: int
    map_size_bytes: int  # LMDB map size; MemoryJournal: capacity_bytes, 0 when unbounded
    used_bytes: int  # LMDB: high-water mark of pages in the map (freed pages are reused, not returned)


class JournalFormatError(Exception):
    """The store was written in another format version: nothing was read or written."""


class SnapshotDamaged(JournalFormatError):
    """The snapshot file, or a dedupe segment it lists, is cut short, missing or not a snapshot: nothing was read or
    written. The journal keeps every record: without the snapshot a start replays all of it."""


class JournalUnopenable(Exception):
    """LMDB could not open the store (not an LMDB file, unreadable, ...): nothing was read or written."""


def why_not_a_directory(exc: OSError) -> str:
    """Why a directory of the data directory cannot be made, in the operator's words."""
    return "a file is in the way, not a directory" if isinstance(exc, FileExistsError) else str(exc.strerror)


def map_size_refused(exc: lmdb.Error) -> bool:
    """Whether LMDB refused a map for its size: more address space than the process has (ENOMEM), or, a map written
    in place, a file larger than the file system takes (EFBIG: ext4's largest is 16 TiB). py-lmdb gives no errno,
    only MemoryError for the first and the message's strerror for both."""
    reasons = (os.strerror(errno.ENOMEM), os.strerror(errno.EFBIG))
    return isinstance(exc, lmdb.MemoryError) or str(exc).endswith(reasons)


def _map_advice(exc: lmdb.Error, map_size_bytes: int) -> str:
    """What the start's refusal adds when the map's size is the cause: the flag that set it, to set smaller."""
    if not map_size_refused(exc):
        return ""
    return f": --map-size-mb {map_size_bytes // 2**20} is more than this machine can map; start with a smaller one"


class JournalFull(Exception):
    """The LMDB map is full: the commit wrote nothing. Grow --map-size-mb and restart."""


class Journal(Protocol):
    """The durable store the sequencer codes against. See the module docstring for threads."""

    def last_seq(self) -> int:
        """Seq of the newest record; 0 when the journal is empty."""
        ...

    def read_records(self, after_seq: int) -> Iterator[tuple[int, bytes]]:
        """(seq, record) for every seq > after_seq, ascending."""
        ...

    def commit(self, records: Sequence[tuple[int, bytes]]) -> None:
        """Append records (seqs last_seq()+1, +2, ...), atomically and durably.

        Raises ValueError (nothing written) for no records or non-contiguous seqs; raises JournalFull
        (nothing written, journal still usable) when the store has no room.
        """
        ...

    def load_snapshot(self) -> tuple[int, bytes] | None:
        """(seq, blob) of the newest snapshot, or None."""
        ...

    def load_segmented_snapshot(self) -> tuple[int, bytes, list[Segment]] | None:
        """(seq, blob, its dedupe segments oldest first, [] for none) of the newest snapshot, or None."""
        ...

    def snapshot_seq(self) -> int | None:
        """The newest snapshot's seq as read at open (the snapshot file's header; an earlier release's key in the map),
        none of its state read; None when there is none, or it was disregarded."""
        ...

    def disregard_if_damaged(self) -> str | None:
        """Why the newest snapshot's file, or a dedupe segment it lists, is missing or cut short (their sizes tell:
        none of the state is read), or None. A damaged snapshot is disregarded from then on: loads answer None, so
        a later recovery (the writer's rebuild) replays the whole journal too, until a save replaces it (and deletes
        the segments it listed, as it does a replaced snapshot's)."""
        ...

    def save_snapshot(self, seq: int, blob: SnapshotBlob, segment: DedupeSegmentSave | None = None) -> None:
        """Replace the snapshot. ValueError if seq > last_seq() or older than the current one, or for a segment that
        is no base when the current snapshot lists none. A list is the blob in parts, concatenated; each part leaves
        the list once stored (see `_SnapshotFile.save`). Without a segment the snapshot lists none. Raises
        JournalFull (the stored snapshot and its segments kept) when there is no room."""
        ...

    def dedupe_segment_bytes(self) -> list[int]:
        """The sizes of the current snapshot's dedupe segments, oldest first."""
        ...

    def compact_dedupe_segments(self, count: int, merge: SegmentMerge) -> None:
        """Replaces the current snapshot's `count` newest segments (at least 2) by their merge, as one change:
        a crash leaves the snapshot listing either the old segments or the merged one. JournalFull (nothing
        changed) when there is no room. On the thread that saves snapshots, never beside a save."""
        ...

    def stats(self) -> JournalStats: ...

    def close(self) -> None:
        """Idempotent; any other call afterwards raises RuntimeError."""
        ...


def _seq_key(seq: int) -> bytes:
    # Big-endian so that LMDB's bytewise key order is seq order, which makes append=True valid.
    return seq.to_bytes(_SEQ_KEY_BYTES, "big")


def _seq_from_key(key: bytes) -> int:
    return int.from_bytes(key, "big")


def _check_records(last_seq: int, records: Sequence[tuple[int, bytes]]) -> None:
    if not records:
        raise ValueError("a commit needs at least one record")
    expected = last_seq + 1
    for seq, _ in records:
        if seq != expected:
            raise ValueError(f"record seq {seq} where {expected} was expected: seqs must continue last_seq() by 1")
        expected += 1


def _check_snapshot_seq(seq: int, last_seq: int, current_seq: int | None) -> None:
    # A snapshot past last_seq would make recovery skip records committed later under those seqs.
    if not 0 <= seq <= last_seq:
        raise ValueError(f"snapshot seq {seq} is outside 0..last_seq ({last_seq})")
    if current_seq is not None and seq < current_seq:
        raise ValueError(f"snapshot seq {seq} is older than the stored snapshot's seq {current_seq}")


def _closed_error(what: str) -> RuntimeError:
    return RuntimeError(f"{what} is closed")


def snapshot_header(file: BinaryIO, path: Path) -> tuple[int, int, list[tuple[int, int]]]:
    """(seq, blob length, the dedupe segments it lists as (number, bytes)) of the snapshot file open in `file` (read
    from `path`, named in errors), the file left at the blob. Also read by `tariff backup` (server/backup.py)."""
    header = file.read(_SNAPSHOT_HEADER_BYTES)
    magic = header[:8]
    if len(header) != _SNAPSHOT_HEADER_BYTES or magic not in (_SNAPSHOT_MAGIC, _SNAPSHOT_MAGIC_SEGMENTED):
        raise SnapshotDamaged(f"{path} is not a Tariff snapshot (header {magic!r})")
    seq, length = int.from_bytes(header[8:16], "big"), int.from_bytes(header[16:24], "big")
    segments: list[tuple[int, int]] = []
    if magic == _SNAPSHOT_MAGIC_SEGMENTED:
        listed = file.read(8)
        count = int.from_bytes(listed, "big")
        entries = file.read(16 * count)
        if len(listed) != 8 or len(entries) != 16 * count:
            raise SnapshotDamaged(f"{path} is cut short in its list of dedupe segments")
        for at in range(0, len(entries), 16):
            segments.append(
                (int.from_bytes(entries[at : at + 8], "big"), int.from_bytes(entries[at + 8 : at + 16], "big"))
            )
    return seq, length, segments


def segment_file_name(number: int) -> str:
    """The file of the dedupe segment `number`, beside the snapshot file that lists it."""
    return f"{_SEGMENT_PREFIX}{number:020d}"


class _SnapshotFile:
    """The newest snapshot as a file beside the LMDB environment, replaced by write, fsync, rename; and the dedupe
    segments it lists, each a file of its own (`segment.<number>`), written and fsynced before the snapshot file
    that lists it is renamed into place, and deleted once no snapshot file lists it: a crash at any step leaves
    the snapshot file listing only durable segments, and the files no snapshot lists are deleted at the next open.

    Not in the LMDB map: a snapshot there (hundreds of MB once the dedupe window holds millions of ids) is freed
    by the next one, and LMDB hands its pages to the journal's later commits a few at a time. Those pages sit in
    the page cache in the large folios the snapshot's write made (2 MB here, kernel 6.18, ext4), so each small
    commit dirtied whole folios: at 5,000,000 filled ids the journal's commits wrote 4 bytes per byte of record
    (README, Dedupe at scale). A file is written once, in order, and its predecessor is unlinked, not reused.
    """

    def __init__(self, directory: Path, *, sync: bool) -> None:
        self._directory = directory
        self._path = directory / SNAPSHOT_FILE
        self._partial_path = directory / f"{SNAPSHOT_FILE}.partial"
        self._sync = sync
        with contextlib.suppress(FileNotFoundError):
            self._partial_path.unlink()  # a save cut short: the file it was to replace is whole
        self.seq: int | None = None
        # (number, bytes) of the segments the snapshot file lists, oldest first.
        self.segments: list[tuple[int, int]] = []
        # The snapshot file's bytes as its header gives them: the header, its list of segments and the blob.
        self._file_bytes = 0
        with contextlib.suppress(FileNotFoundError), open(self._path, "rb") as file:
            self.seq, length, self.segments = snapshot_header(file, self._path)
            self._file_bytes = file.tell() + length
        listed = {number for number, _ in self.segments}
        for path in directory.glob(f"{_SEGMENT_PREFIX}*"):
            if _segment_number(path) not in listed:
                path.unlink()  # written by a save or compaction cut short, or replaced: no snapshot lists it
        self._next_number = max(listed, default=0) + 1

    def _segment_path(self, number: int) -> Path:
        return self._directory / segment_file_name(number)

    def load(self) -> tuple[int, bytes] | None:
        try:
            with open(self._path, "rb") as file:
                seq, length, _ = snapshot_header(file, self._path)
                blob = file.read(length)
        except FileNotFoundError:
            return None
        if len(blob) != length:
            raise SnapshotDamaged(f"{self._path} holds {len(blob)} of its {length} snapshot bytes")
        return seq, blob

    def damage(self) -> str | None:
        """Why the snapshot file or a segment it lists is cut short or missing, by their sizes; None when whole (or
        when there is no snapshot file, as `load` finds)."""
        try:
            size = self._path.stat().st_size
        except FileNotFoundError:
            return None
        if size < self._file_bytes:
            return f"{self._path} holds {size} of its {self._file_bytes} bytes"
        for number, length in self.segments:
            path = self._segment_path(number)
            try:
                size = path.stat().st_size
            except FileNotFoundError:
                return f"{self._path} lists the dedupe segment {path.name}, which is missing"
            if size != length:
                return f"{path} holds {size} of its {length} bytes"
        return None

    def load_segments(self) -> list[Segment]:
        """The segments, each a read-only map of its file: read through the page cache, never copied onto the heap
        (a base at 100,000,000 ids is 4 GB)."""
        segments: list[Segment] = []
        for number, length in self.segments:
            path = self._segment_path(number)
            try:
                with open(path, "rb") as file:
                    size = os.fstat(file.fileno()).st_size
                    if size != length:
                        raise SnapshotDamaged(f"{path} holds {size} of its {length} bytes")
                    segments.append(mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) if size else b"")
            except FileNotFoundError:
                raise SnapshotDamaged(f"{self._path} lists the dedupe segment {path.name}, which is missing") from None
        return segments

    def save(self, seq: int, blob: SnapshotBlob, segment: DedupeSegmentSave | None = None) -> None:
        """Raises JournalFull (the stored snapshot kept) when the disk has no room. A list of parts is written part
        after part, each removed from the list once written, so that the caller's last reference to it goes and it
        is freed meanwhile: the server hands its snapshot over in parts, and no copy of the whole is ever made."""
        if segment is not None and not segment.base and not self.segments:
            raise ValueError("a dedupe segment of changes needs a stored snapshot with segments to follow")
        listed: list[tuple[int, int]] = []
        if segment is not None:
            written = self._write_segment(segment.parts)
            listed = [*(() if segment.base else self.segments), written]
        self._replace(seq, blob, listed, listed[-1][0] if listed else None)
        self.seq = seq

    def compact(self, count: int, merge: SegmentMerge) -> None:
        if not 2 <= count <= len(self.segments) or self.seq is None:
            raise ValueError(f"{count} of {len(self.segments)} dedupe segments cannot be compacted")
        kept = self.segments[:-count]
        parts = merge(self.load_segments()[-count:], not kept)
        written = self._write_segment(parts)
        loaded = self.load()
        assert loaded is not None and loaded[0] == self.seq, "the snapshot compacted is the one stored"
        self._replace(self.seq, loaded[1], [*kept, written], written[0])

    def _write_segment(self, parts: SegmentParts) -> tuple[int, int]:
        """Writes and fsyncs a new segment file (its directory entry too); (number, bytes)."""
        number, self._next_number = self._next_number, self._next_number + 1
        return number, self._write_file(self._segment_path(number), parts)

    def _replace(self, seq: int, blob: SnapshotBlob, segments: list[tuple[int, int]], new: int | None) -> None:
        """Writes the snapshot file listing `segments` and renames it into place, then deletes the segment files it
        no longer lists. Until the rename, a failure deletes the segment just written (`new`), which nothing lists."""
        length = sum(len(part) for part in blob) if isinstance(blob, list) else len(blob)
        header = (_SNAPSHOT_MAGIC_SEGMENTED if segments else _SNAPSHOT_MAGIC) + seq.to_bytes(8, "big")
        header += length.to_bytes(8, "big")
        if segments:
            header += len(segments).to_bytes(8, "big")
            header += b"".join(number.to_bytes(8, "big") + size.to_bytes(8, "big") for number, size in segments)
        try:
            self._write_file(self._partial_path, blob, header)
            os.replace(self._partial_path, self._path)
        except BaseException:
            for path in [self._partial_path, *([] if new is None else [self._segment_path(new)])]:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            raise
        if self._sync:
            _fsync_directory(self._path.parent)  # the rename itself must survive a crash
        self._file_bytes = len(header) + length
        replaced = {number for number, _ in self.segments} - {number for number, _ in segments}
        self.segments = segments
        for number in sorted(replaced):
            with contextlib.suppress(FileNotFoundError):
                self._segment_path(number).unlink()

    def _write_file(self, path: Path, blob: SnapshotBlob | SegmentWriter, header: bytes = b"") -> int:
        """Writes `header` then `blob` to a new file at `path` and fsyncs it (and, for a segment, its directory
        entry), a list's parts dropped from it once written, a writer's written as they come; the blob's bytes.
        JournalFull, the file removed, when the disk has no room."""
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                _write_all(fd, memoryview(header))
                if isinstance(blob, list):
                    written = 0
                    while blob:
                        written += _write_blob(fd, blob[0])
                        del blob[0]
                elif callable(blob):
                    written = blob(lambda part: _write_blob(fd, part))
                else:
                    written = _write_blob(fd, blob)
                if self._sync:
                    os.fsync(fd)
            finally:
                os.close(fd)
            if self._sync and path != self._partial_path:
                _fsync_directory(self._directory)  # durable before any snapshot file lists it
            return written
        except OSError as exc:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            if exc.errno in _DISK_FULL_ERRNOS:
                raise JournalFull(f"no room on disk for a snapshot at {path}: nothing was written ({exc})") from exc
            raise


def _segment_number(path: Path) -> int | None:
    digits = path.name.removeprefix(_SEGMENT_PREFIX)
    return int(digits) if digits.isdigit() else None


def _write_blob(fd: int, blob: bytes | mmap.mmap) -> int:
    # Every view of the blob is released on the way out, an error's too (its traceback keeps the frames that
    # wrote): a caller may close the blob, a map, right after, and a live view fails that.
    with memoryview(blob) as view:
        for start in range(0, len(view), _SNAPSHOT_WRITE_BYTES):
            with view[start : start + _SNAPSHOT_WRITE_BYTES] as part:
                _write_all(fd, part)
        return len(view)


def _write_all(fd: int, view: memoryview) -> None:
    written = 0
    while written < len(view):
        with view[written:] as rest:
            written += os.write(fd, rest)


def _fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _refuse_another_programs(env: lmdb.Environment, path: Path) -> None:
    """JournalFormatError, nothing written, for an LMDB environment that is not a Tariff journal: one holding entries
    but no format version (a journal's first commit writes its format beside its databases, so a journal holds
    it from the start; an environment with nothing in it is a first start cut short, and becomes the journal)."""
    with env.begin() as txn, txn.cursor() as names:  # the unnamed database, where the named ones are entered
        if names.first() and txn.get(_META_DB) is None:
            raise JournalFormatError(
                f"{path} is not a Tariff journal (an LMDB environment of another program: no format version), left "
                "as it is: give --data-dir a Tariff data directory or a new one"
            )


def _open_environment(
    path: Path, existing: bool, requested_bytes: int, map_size_bytes: int, sync: bool
) -> lmdb.Environment:
    """The journal's LMDB environment at path, or JournalUnopenable with what to do."""
    # LMDB does not keep a bigger stored map by itself: an explicit smaller map_size shrinks
    # it (down to the used pages). map_size=0 adopts the stored size, then we grow if asked.
    try:
        return lmdb.open(
            str(path),
            map_size=0 if existing else requested_bytes,
            subdir=True,
            sync=sync,
            metasync=sync,
            readahead=False,
            max_dbs=4,
            max_readers=_MAX_READERS,
            lock=True,
        )
    except lmdb.Error as exc:
        if not existing:
            # LMDB may have written the new file's first page, the map asked for in it, before the map failed:
            # every later start would adopt that map (map_size=0 above) and fail alike. It holds nothing.
            for name in ("data.mdb", "lock.mdb"):
                (path / name).unlink(missing_ok=True)
        advice = _map_advice(exc, map_size_bytes) if not existing else ""
        raise JournalUnopenable(f"cannot open the journal at {path}: {exc}{advice}") from None


def _check_format_version(txn: lmdb.Transaction[bytes], meta_db: lmdb._Database, path: Path) -> None:
    """Writes a new journal's format version; refuses one this release does not read, naming what to run."""
    stored = txn.get(_FORMAT_VERSION_KEY, db=meta_db)
    if stored is None:
        txn.put(_FORMAT_VERSION_KEY, str(FORMAT_VERSION).encode("ascii"), db=meta_db)
    elif stored in MIGRATABLE_FORMAT_VERSIONS:
        raise JournalFormatError(
            f"journal at {path} was written by an earlier Tariff (format {stored.decode('ascii')}); "
            f"migrate it first: tariff migrate --data-dir {path.parent}"
        )
    elif stored != str(FORMAT_VERSION).encode("ascii"):
        raise JournalFormatError(
            f"journal at {path} has format version {stored.decode('ascii', 'replace')!r}; this"
            f" Tariff reads only version {FORMAT_VERSION}: run the Tariff release that wrote it"
        )


class LmdbJournal:
    """The Journal on one LMDB environment (a directory). See the module docstring."""

    def __init__(self, path: Path, *, map_size_bytes: int, sync: bool = True) -> None:
        """Open or create the store at path.

        map_size_bytes is rounded up to the OS page size. An existing store whose map is already
        bigger keeps its size: restarting with a smaller default must not make a nearly full
        store instantly full. sync=False trades durability for speed (tests, benchmarks only).
        """
        if map_size_bytes <= 0:
            raise ValueError(f"map_size_bytes must be positive, got {map_size_bytes}")
        self._path = path
        requested_bytes = -(-map_size_bytes // mmap.PAGESIZE) * mmap.PAGESIZE
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way (FileExistsError), ...: nothing was written
            raise JournalUnopenable(f"cannot open the journal at {path}: {why_not_a_directory(exc)}") from None
        existing = (path / "data.mdb").exists()
        env = _open_environment(path, existing, requested_bytes, map_size_bytes, sync)
        try:
            _refuse_another_programs(env, path)
            if env.info()["map_size"] < requested_bytes:
                # Safe only here: set_mapsize invalidates every open transaction in the process.
                try:
                    env.set_mapsize(requested_bytes)
                except lmdb.Error as exc:  # the file is as it was: a smaller map, or the old one, serves it
                    raise JournalUnopenable(
                        f"cannot grow the journal's map at {path}: {exc}{_map_advice(exc, map_size_bytes)}"
                    ) from None
            with env.begin(write=True) as txn:
                self._records_db = env.open_db(_RECORDS_DB, txn=txn)
                self._snapshots_db = env.open_db(_SNAPSHOTS_DB, txn=txn)
                meta_db = env.open_db(_META_DB, txn=txn)
                _check_format_version(txn, meta_db, path)
                with txn.cursor(db=self._records_db) as cursor:
                    # Cached because the sequencer asks on every batch; only this object writes.
                    self._last_seq = _seq_from_key(cursor.key()) if cursor.last() else 0
                with txn.cursor(db=self._snapshots_db) as cursor:
                    # An earlier release's snapshot, in the map: read until a newer one is saved.
                    self._stored_snapshot_seq = _seq_from_key(cursor.key()) if cursor.last() else None
            self._snapshot_file = _SnapshotFile(path, sync=sync)
            self._snapshot_disregarded = False
        except BaseException:
            env.close()
            raise
        self._env: lmdb.Environment | None = env
        self._page_bytes: int = env.stat()["psize"]
        self._pages_ahead = PagesAhead(path / "data.mdb", env.info()["map_size"])

    def _require_env(self) -> lmdb.Environment:
        env = self._env
        if env is None:
            raise _closed_error(f"journal at {self._path}")
        return env

    def _journal_full(self, env: lmdb.Environment, exc: lmdb.MapFullError) -> JournalFull:
        map_size_bytes = env.info()["map_size"]
        return JournalFull(
            f"LMDB map at {self._path} is full ({map_size_bytes} bytes): nothing was written."
            f" Grow --map-size-mb and restart. ({exc})"
        )

    def last_seq(self) -> int:
        self._require_env()
        return self._last_seq

    def read_records(self, after_seq: int) -> Iterator[tuple[int, bytes]]:
        # Not a generator itself, so that a closed journal fails at the call, not at first next().
        self._require_env()
        return self._iter_records(max(after_seq, 0) + 1)

    def _iter_records(self, next_seq: int) -> Iterator[tuple[int, bytes]]:
        while True:
            chunk = self._read_chunk(next_seq)
            if not chunk:
                return
            yield from chunk
            next_seq = chunk[-1][0] + 1

    def _read_chunk(self, first_seq: int) -> list[tuple[int, bytes]]:
        env = self._require_env()
        chunk: list[tuple[int, bytes]] = []
        chunk_bytes = 0
        with env.begin(buffers=False) as txn, txn.cursor(db=self._records_db) as cursor:
            if not cursor.set_range(_seq_key(first_seq)):
                return chunk
            for key, value in cursor.iternext():
                chunk.append((_seq_from_key(key), value))
                chunk_bytes += len(value)
                if len(chunk) >= _READ_CHUNK_RECORDS or chunk_bytes >= _READ_CHUNK_BYTES:
                    break
        return chunk

    def commit(self, records: Sequence[tuple[int, bytes]]) -> None:
        env = self._require_env()
        # Everything that can be refused is refused before the write transaction begins.
        _check_records(self._last_seq, records)
        try:
            with env.begin(write=True) as txn:
                with txn.cursor(db=self._records_db) as cursor:
                    stored_last_seq = _seq_from_key(cursor.key()) if cursor.last() else 0
                if stored_last_seq != self._last_seq:
                    # Another writer (a second process on the same directory) or a bug in the
                    # cache: either way committing would corrupt the journal's order.
                    raise AssertionError(
                        f"journal at {self._path}: stored last seq {stored_last_seq} != cached {self._last_seq}"
                    )
                for seq, record in records:
                    txn.put(_seq_key(seq), record, append=True, db=self._records_db)
        except lmdb.MapFullError as exc:
            raise self._journal_full(env, exc) from exc
        self._last_seq = records[-1][0]
        self._pages_ahead.after_commit((env.info()["last_pgno"] + 1) * self._page_bytes)

    def load_snapshot(self) -> tuple[int, bytes] | None:
        env = self._require_env()
        if self._snapshot_disregarded:
            return None
        if self._file_is_newest():
            return self._snapshot_file.load()
        with env.begin(buffers=False) as txn, txn.cursor(db=self._snapshots_db) as cursor:
            if not cursor.last():
                return None
            return _seq_from_key(cursor.key()), cursor.value()

    def _file_is_newest(self) -> bool:
        file_seq, stored_seq = self._snapshot_file.seq, self._stored_snapshot_seq
        return file_seq is not None and (stored_seq is None or file_seq >= stored_seq)

    def load_segmented_snapshot(self) -> tuple[int, bytes, list[Segment]] | None:
        loaded = self.load_snapshot()
        if loaded is None:
            return None
        return loaded[0], loaded[1], self._snapshot_file.load_segments() if self._file_is_newest() else []

    def snapshot_seq(self) -> int | None:
        self._require_env()
        if self._snapshot_disregarded:
            return None
        return self._snapshot_file.seq if self._file_is_newest() else self._stored_snapshot_seq

    def disregard_if_damaged(self) -> str | None:
        self._require_env()
        # An earlier release's snapshot, in the map, has no file to be cut short.
        damage = self._snapshot_file.damage() if self._file_is_newest() and not self._snapshot_disregarded else None
        self._snapshot_disregarded = self._snapshot_disregarded or damage is not None
        return damage

    def snapshot_in_map(self) -> bool:
        """Whether the snapshot loads answer is an earlier release's, in the map's `snapshots` database: dropping
        that database, not moving the snapshot file aside, starts without it."""
        self._require_env()
        return not self._snapshot_disregarded and not self._file_is_newest() and self._stored_snapshot_seq is not None

    def save_snapshot(self, seq: int, blob: SnapshotBlob, segment: DedupeSegmentSave | None = None) -> None:
        env = self._require_env()
        seqs = [s for s in (self._snapshot_file.seq, self._stored_snapshot_seq) if s is not None]
        _check_snapshot_seq(seq, self._last_seq, max(seqs, default=None))
        self._snapshot_file.save(seq, blob, segment)
        self._snapshot_disregarded = False
        # Frees the reader slots of processes gone (a `tariff backup` killed in its read transaction): a slot kept
        # keeps every page freed after its transaction from reuse, and the map fills about 100 times faster.
        env.reader_check()
        if self._stored_snapshot_seq is not None:
            # Once, after an earlier release's store: the file now holds the newer snapshot.
            with env.begin(write=True) as txn:
                txn.drop(self._snapshots_db, delete=False)
            self._stored_snapshot_seq = None

    def dedupe_segment_bytes(self) -> list[int]:
        self._require_env()
        return [size for _, size in self._snapshot_file.segments]

    def compact_dedupe_segments(self, count: int, merge: SegmentMerge) -> None:
        self._require_env()
        self._snapshot_file.compact(count, merge)

    def stats(self) -> JournalStats:
        env = self._require_env()
        with env.begin(buffers=False) as txn:
            records = txn.stat(self._records_db)["entries"]
        info = env.info()
        page_bytes = env.stat()["psize"]
        return JournalStats(
            last_seq=self._last_seq,
            records=records,
            map_size_bytes=info["map_size"],
            used_bytes=(info["last_pgno"] + 1) * page_bytes,
        )

    def close(self) -> None:
        env, self._env = self._env, None
        if env is not None:
            self._pages_ahead.close()
            env.close()


class MemoryJournal:
    """The Journal in RAM, with LmdbJournal's semantics, for engine and server unit tests.

    capacity_bytes simulates LMDB's map size (and, for a snapshot, a full disk): a commit (or snapshot) that would
    take the stored bytes (8 + len(record) per record, 8 + len(blob) for the snapshot) beyond it raises JournalFull
    and writes nothing. None means unbounded.
    """

    def __init__(self, *, capacity_bytes: int | None = None) -> None:
        if capacity_bytes is not None and capacity_bytes < 0:
            raise ValueError(f"capacity_bytes must not be negative, got {capacity_bytes}")
        self._capacity_bytes = capacity_bytes
        # The writer thread and the event-loop thread both come in, as with LmdbJournal.
        self._lock = threading.Lock()
        self._records: list[bytes] = []  # index i holds seq i + 1
        self._snapshot: tuple[int, bytes] | None = None
        self._segments: list[bytes] = []  # the snapshot's dedupe segments, oldest first
        self._used_bytes = 0
        self._closed = False

    def _require_open(self) -> None:
        if self._closed:
            raise _closed_error("in-memory journal")

    def _reserve(self, extra_bytes: int) -> None:
        used_after = self._used_bytes + extra_bytes
        if self._capacity_bytes is not None and used_after > self._capacity_bytes:
            raise JournalFull(
                f"in-memory journal is full ({used_after} of {self._capacity_bytes} capacity bytes):"
                " nothing was written. Grow --map-size-mb and restart."
            )

    def last_seq(self) -> int:
        with self._lock:
            self._require_open()
            return len(self._records)

    def read_records(self, after_seq: int) -> Iterator[tuple[int, bytes]]:
        self._require_open()
        return self._iter_records(max(after_seq, 0))

    def _iter_records(self, after_seq: int) -> Iterator[tuple[int, bytes]]:
        # Chunked like LmdbJournal, so that a commit can land between chunks here too.
        while True:
            with self._lock:
                self._require_open()
                chunk = self._records[after_seq : after_seq + _READ_CHUNK_RECORDS]
            if not chunk:
                return
            for offset, record in enumerate(chunk):
                yield after_seq + offset + 1, record
            after_seq += len(chunk)

    def commit(self, records: Sequence[tuple[int, bytes]]) -> None:
        with self._lock:
            self._require_open()
            _check_records(len(self._records), records)
            record_bytes = sum(_SEQ_KEY_BYTES + len(record) for _, record in records)
            self._reserve(record_bytes)
            # bytes() so that a caller's bytearray mutated later cannot change the journal.
            self._records.extend(bytes(record) for _, record in records)
            self._used_bytes += record_bytes
            if len(self._records) != records[-1][0]:
                raise AssertionError(f"in-memory journal: {len(self._records)} records after seq {records[-1][0]}")

    def load_snapshot(self) -> tuple[int, bytes] | None:
        with self._lock:
            self._require_open()
            return self._snapshot

    def load_segmented_snapshot(self) -> tuple[int, bytes, list[Segment]] | None:
        with self._lock:
            self._require_open()
            return None if self._snapshot is None else (*self._snapshot, list(self._segments))

    def snapshot_seq(self) -> int | None:
        with self._lock:
            self._require_open()
            return None if self._snapshot is None else self._snapshot[0]

    def disregard_if_damaged(self) -> str | None:
        self._require_open()
        return None  # held in memory: nothing is cut short or missing

    def save_snapshot(self, seq: int, blob: SnapshotBlob, segment: DedupeSegmentSave | None = None) -> None:
        with self._lock:
            self._require_open()
            _check_snapshot_seq(seq, len(self._records), None if self._snapshot is None else self._snapshot[0])
            if segment is not None and not segment.base and not self._segments:
                raise ValueError("a dedupe segment of changes needs a stored snapshot with segments to follow")
            joined = b"".join(blob) if isinstance(blob, list) else bytes(blob)
            segments = (
                [] if segment is None else [*([] if segment.base else self._segments), segment_joined(segment.parts)]
            )
            self._replace((seq, joined), segments)
            if isinstance(blob, list):
                blob.clear()  # as LmdbJournal leaves it: every part stored

    def _replace(self, snapshot: tuple[int, bytes], segments: list[bytes]) -> None:
        """JournalFull, nothing changed, when the snapshot and its segments would not fit."""
        old_bytes = 0 if self._snapshot is None else _SEQ_KEY_BYTES + len(self._snapshot[1])
        old_bytes += sum(len(segment) for segment in self._segments)
        new_bytes = _SEQ_KEY_BYTES + len(snapshot[1]) + sum(len(segment) for segment in segments)
        self._reserve(new_bytes - old_bytes)
        self._snapshot, self._segments = snapshot, segments
        self._used_bytes += new_bytes - old_bytes

    def dedupe_segment_bytes(self) -> list[int]:
        with self._lock:
            self._require_open()
            return [len(segment) for segment in self._segments]

    def compact_dedupe_segments(self, count: int, merge: SegmentMerge) -> None:
        with self._lock:
            self._require_open()
            segments, snapshot = self._segments, self._snapshot
        if not 2 <= count <= len(segments) or snapshot is None:
            raise ValueError(f"{count} of {len(segments)} dedupe segments cannot be compacted")
        merged = segment_joined(merge(list(segments[-count:]), count == len(segments)))
        with self._lock:
            self._require_open()
            assert self._snapshot is snapshot, "a snapshot was saved beside a compaction"
            self._replace(snapshot, [*segments[:-count], merged])

    def stats(self) -> JournalStats:
        with self._lock:
            self._require_open()
            return JournalStats(
                last_seq=len(self._records),
                records=len(self._records),
                map_size_bytes=self._capacity_bytes or 0,
                used_bytes=self._used_bytes,
            )

    def close(self) -> None:
        with self._lock:
            self._closed = True
