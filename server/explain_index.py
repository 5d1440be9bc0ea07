"""The ExplainLineItem index: what each accepted event did, per (customer, period, invoice line), off the ack path.

The journal holds each usage batch as received and a digest, not per-event amounts. When asked
(`Kernel.set_explain`), the rating kernel appends a compact record per product an accepted event charged; the
sequencer takes them once per run of rated batches and, once the group's journal commit has succeeded, hands
them here. A thread of this module's own gathers them for up to FLUSH_EVERY_S (less while a reader waits) and
writes them as one block (`explain_block`, built by the kernel with the GIL released; layout in
engine/kernel/src/explain_block.rs): the events sorted by line in chunks of at most CHUNK_BYTES appended under
increasing keys (blocks are numbered in journal order, so older pages are never rewritten), and one small entry
per (customer, period) the block touched, naming the lines it holds and the grant ids its events drew on (chunk
layout 2; blocks an index wrote before it stay in layout 1 and read as they were: `_PERIODS2_DB`). A write costs a few puts per chunk and
per customer, whatever the number of events; the ack never waits for any of it. A page reads the blocks of the
line's customer and period in order and, in those that name the line, the chunks that hold it.

The index lives in its own LMDB environment (`<data dir>/explain`), written without fsync: it is derived data.
Recovery replays the journal after the snapshot with recording on from `covered_seq() + 1`, so whatever was
committed but not indexed (a kill -9 between the two) is indexed again; an index behind the snapshot (deleted,
from before this module existed, or in an older layout, which is dropped at open) is rebuilt by a replay from
the journal's first record. Snapshots are saved only once the index covers their seq (`flush`), so that replay
from the snapshot is always enough.

Page tokens are opaque: (block, ordinal among the line's events in it) of the next event, and a MAC over it and the (customer,
period, line) it pages, keyed by a secret stored in the index. A token that does not verify (altered, for
another line, or from an index since rebuilt) is refused.

After a line's last event its pages go on with the line's re-rating adjustments (the caller passes how many the
line has in the period; they are append-only): a page may hold the last events and the first adjustments, and a
token past the events names the ordinal of the next adjustment instead (a token kind of its own, MACed alike).
An adjustment token whose ordinal the line does not have is refused as stale.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import queue
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import lmdb

from engine._kernel import Kernel, explain_block, explain_chunk_line, explain_period_key
from server.journal import map_size_refused, why_not_a_directory
from server.scheduling import GilHandover

log = logging.getLogger("tariff.explain")

__all__ = ["ExplainIndex", "IndexedEvent", "Page", "StaleToken", "parse_events"]

_CHUNKS_DB = b"chunks"
# Per (customer, period) and block; the layout before blocks kept one entry per line per write here (dropped).
_ENTRIES_DB = b"entries"
_META_DB = b"meta"
_COVERED_KEY = b"covered_seq"
_SECRET_KEY = b"token_secret"
_FORMAT_KEY = b"format"
_FORMAT = b"blocks-1"
# The (customer, period) entries of blocks in chunk layout 2 (engine/kernel/src/explain_chunk.rs: a line's key once
# per run of its parts, grant ids by index into the entry, which holds them, keyed by the first 8 bytes of the
# period key): a table of their own, so that an index written before them keeps its blocks, in layout 1, with their
# entries in _ENTRIES_DB, read as they were. Every block there precedes every block here.
_PERIODS2_DB = b"periods-2"
_TOKEN_ADJUSTMENT = 2  # a token past the events: (kind, 0, ordinal of the next adjustment)
_TOKEN_BLOCK = 3  # (kind, block, ordinal of the next event among the line's in that block); kind 1 was per entry
_TOKEN = struct.Struct(">BQI")  # kind, block, ordinal
# A chunk of a block: one LMDB value, read whole by a page that needs one of its events. At most this long, so that
# it fills four 4 KiB pages (an LMDB value longer than a page takes whole pages after a 16-byte header): chunks cut
# once past 16 KiB took a fifth page, a quarter of the index's file.
CHUNK_BYTES = 4 * 4096 - 16
_MAC_BYTES = 16
# The writer gathers records this long (or this many bytes) before it writes them as one block. A block costs about
# one (customer, period) entry per customer it touches, whatever its number of events (each put, and LMDB copying
# the entries' pages), so a block of fewer events pays more per event: at the bench's load (about 100 MB of records
# a second) a cap of 32 MiB cut blocks every third of a second, and the index's thread took a fifth to a quarter
# more CPU per event than in blocks of a second (docs/architecture.md, the explain index).
FLUSH_EVERY_S = 1.0
FLUSH_BYTES = 128 * 1024 * 1024
# A write puts this many chunks (or (customer, period) entries) between two chances to hand the GIL over.
PUT_SLICE_CHUNKS = 32
PUT_SLICE_ENTRIES = 1024
# Address space (a sparse file). The dedupe fill's events (one line each) took about 235 bytes an event: 16 GiB
# filled at about 67,000,000 (README, Dedupe at scale); 64 GiB holds about 270,000,000.
MAP_SIZE_BYTES_DEFAULT = 64 * 1024**3

_HEAD = struct.Struct("<qI")  # timestamp_ms, version
_I128 = 16


class IndexUnopenable(Exception):
    """LMDB could not open the index (not an LMDB file, ...): nothing was read or written. It is derived data: removed,
    it is rebuilt from the journal."""


class IndexStopped(RuntimeError):
    """The index's writer stopped (its map full, say): it covers nothing more until a restart."""


class StaleToken(Exception):
    """A page token this index did not issue for this customer, period and line."""


@dataclass(frozen=True, slots=True)
class IndexedEvent:
    """One event's charge to one line, as the kernel recorded it (amounts in picos, quantity at 10^-18)."""

    transaction_id: str
    timestamp_ms: int
    version: int
    quantity_e18: int
    amount_picos: int
    overage_picos: int
    draws: list[tuple[str, int]]  # (grant id, credits in picos; negative: given back)


@dataclass(frozen=True, slots=True)
class Page:
    events: list[IndexedEvent]
    next_token: str  # empty: no more events nor adjustments
    adjustments: range = range(0)  # ordinals of the line's adjustments on this page, after its events


def _i128(data: bytes, at: int) -> int:
    return int.from_bytes(data[at : at + _I128], "little", signed=True)


def _text(data: bytes, at: int) -> tuple[str, int]:
    size = int.from_bytes(data[at : at + 4], "little")
    return data[at + 4 : at + 4 + size].decode("utf-8"), at + 4 + size


def parse_events(value: bytes) -> list[IndexedEvent]:
    """The events of one index entry (the layout is in engine/kernel/src/explain.rs)."""
    events: list[IndexedEvent] = []
    at = 0
    while at < len(value):
        transaction_id, at = _text(value, at)
        timestamp_ms, version = _HEAD.unpack_from(value, at)
        at += _HEAD.size
        quantity, amount, overage = (_i128(value, at + i * _I128) for i in range(3))
        at += 3 * _I128
        draws_count = int.from_bytes(value[at : at + 4], "little")
        at += 4
        draws: list[tuple[str, int]] = []
        for _ in range(draws_count):
            grant_id, at = _text(value, at)
            draws.append((grant_id, _i128(value, at)))
            at += _I128
        events.append(IndexedEvent(transaction_id, timestamp_ms, version, quantity, amount, overage, draws))
    return events


def _names(value: bytes, line_key: bytes, layout2: bool) -> bool:
    """Whether a block's (customer, period) entry names a line's key prefix: in layout 1 the value is the sorted
    4-byte prefixes; in layout 2 a varint count of sorted 2-byte prefixes, then the prefixes (then grant ids)."""
    if not layout2:
        return any(value[at : at + 4] == line_key[:4] for at in range(0, len(value), 4))
    count, at = 0, 0
    for shift in range(0, 64, 7):
        count |= (value[at] & 0x7F) << shift
        at += 1
        if value[at - 1] < 0x80:
            break
    prefix = line_key[:2]
    return any(value[start : start + 2] == prefix for start in range(at, at + 2 * count, 2))


def _unopenable(path: Path, exc: lmdb.Error, map_size_bytes: int) -> str:
    """Why the index cannot open, and what to do. A map too large (the file is the map, written in place: ext4 takes
    16 TiB at most) is the flag's doing, not the index's: removing the index would not help, and would cost a replay
    of the whole journal once the flag is right."""
    if map_size_refused(exc):
        return (
            f"cannot open the explain index at {path}: {exc}: --explain-map-mb {map_size_bytes // 2**20} is more than "
            "this file system or machine can map; start with a smaller one"
        )
    return (
        f"cannot open the explain index at {path}: {exc}; it is rebuilt from the journal: remove {path} and start again"
    )


class ExplainIndex:
    """The index on its LMDB environment, and the thread that writes it (see the module docstring)."""

    def __init__(self, path: Path, *, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT) -> None:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way (FileExistsError), ...: nothing was written
            raise IndexUnopenable(
                f"cannot open the explain index at {path}: {why_not_a_directory(exc)}; it is rebuilt from the journal: remove "
                f"{path} and start again"
            ) from None
        # No fsync: the index is rebuilt from the journal, and LMDB without sync still never corrupts itself.
        # writemap: a put dirties pages of the map in place instead of copying them out at commit.
        # readahead=False (MADV_RANDOM on the map): with readahead a fault fills the page cache in large folios (2 MB
        # here, kernel 6.18, ext4), and a put then dirties, and writeback writes, the whole folio for the page it
        # changed: a fill of 20,000,000 ids wrote 44 GB into an index of 4.7 GB (README, Dedupe at scale).
        try:
            self._env = lmdb.open(
                str(path),
                map_size=map_size_bytes,
                sync=False,
                metasync=False,
                writemap=True,
                readahead=False,
                max_dbs=4,
                lock=True,
            )
        except lmdb.Error as exc:
            raise IndexUnopenable(_unopenable(path, exc, map_size_bytes)) from None
        with self._env.begin(write=True) as txn:
            self._meta = self._env.open_db(_META_DB, txn=txn)
            self._chunks = self._env.open_db(_CHUNKS_DB, txn=txn)
            self._periods = self._env.open_db(_ENTRIES_DB, txn=txn)
            self._periods2 = self._env.open_db(_PERIODS2_DB, txn=txn)
            if txn.get(_FORMAT_KEY, db=self._meta) != _FORMAT:
                self._drop_older_layout(txn)
            secret = txn.get(_SECRET_KEY, db=self._meta)
            if secret is None:
                secret = os.urandom(32)
                txn.put(_SECRET_KEY, secret, db=self._meta)
            covered = txn.get(_COVERED_KEY, db=self._meta)
        self._secret: bytes = bytes(secret)
        self._covered = int(covered) if covered is not None else 0
        self._covered_changed = threading.Condition()
        self._work: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="tariff-explain", daemon=True)
        self._thread.start()

    # Writing ------------------------------------------------------------------------------------------

    def covered_seq(self) -> int:
        """Every journal record up to this seq is indexed (records past it may be, in part)."""
        with self._covered_changed:
            return self._covered

    def submit(self, records: list[bytes], through_seq: int) -> None:
        """Queues the kernel's records of committed batches, up to journal seq `through_seq`; returns at once. An
        index that stopped takes nothing more: its writer no longer empties the queue, which would grow by every
        accepted event's records (the next start rebuilds the index from the journal anyway)."""
        if self._failure is None:
            self._work.put(("records", records, through_seq))

    def write(self, records: list[bytes], through_seq: int) -> None:
        """Writes records now, in the caller's thread (recovery, also a rebuild's while this index's thread writes).
        Records at or below the covered seq are skipped: writing the same records twice changes nothing. One block,
        numbered by the first seq it holds (so blocks follow journal order): its chunks appended, one entry per
        (customer, period) it touched."""
        # Making a block's ten thousand objects and putting them holds the GIL throughout but for moments that do
        # not hand it over (server/scheduling.py): the event loop is let in every HANDOVER_EVERY_S.
        pause = GilHandover()
        with self._env.begin(write=True) as txn:
            # The covered seq as stored, read in the transaction: a rebuild after a failed commit (Sequencer._rebuild)
            # replays on the event loop while this index's thread may still be writing, and LMDB runs their write
            # transactions one after the other, so each sees what the other wrote (read before, the second deleted
            # the first's chunks as past the covered seq).
            stored = txn.get(_COVERED_KEY, db=self._meta)
            covered = int(stored) if stored is not None else 0
            block = explain_block(records, covered, CHUNK_BYTES, pause) if any(records) else (0, [], [])
            _block, chunks, periods = block
            if chunks:
                with txn.cursor(db=self._chunks) as cursor:
                    # Chunks past the covered seq belong to a write the index does not count (an index cut back).
                    if cursor.set_range((covered + 1).to_bytes(8, "big")):
                        while cursor.delete():
                            pass
                    for start in range(0, len(chunks), PUT_SLICE_CHUNKS):
                        cursor.putmulti(chunks[start : start + PUT_SLICE_CHUNKS], append=True)
                        pause()
                with txn.cursor(db=self._periods2) as cursor:
                    for start in range(0, len(periods), PUT_SLICE_ENTRIES):
                        cursor.putmulti(periods[start : start + PUT_SLICE_ENTRIES])
                        pause()
            new_covered = max(covered, through_seq)
            txn.put(_COVERED_KEY, str(new_covered).encode("ascii"), db=self._meta)
        # Freed a slice at a time too: ten thousand entries take a millisecond or more to free.
        del block
        for entries in (chunks, periods):
            while entries:
                del entries[-PUT_SLICE_ENTRIES:]
                pause()
        with self._covered_changed:
            self._covered = max(self._covered, new_covered)
            self._covered_changed.notify_all()

    def _drop_older_layout(self, txn: lmdb.Transaction) -> None:
        """An index in an older layout (or none) starts empty at covered seq 0: the recovery's replay from the
        journal's first record rebuilds it (tokens it issued no longer verify: their kind is refused)."""
        txn.drop(self._chunks, delete=False)
        txn.drop(self._periods, delete=False)
        txn.drop(self._periods2, delete=False)
        txn.delete(_COVERED_KEY, db=self._meta)
        txn.put(_FORMAT_KEY, _FORMAT, db=self._meta)

    def _serve(self) -> None:
        """Gathers what is submitted and writes it every FLUSH_EVERY_S (or past FLUSH_BYTES, or at once while a
        reader waits): one block per write."""
        pending: list[bytes] = []
        pending_bytes = 0
        through = self.covered_seq()
        asked = 0  # a reader waits for this seq
        due: float | None = None
        stopping = False
        while not stopping:
            timeout = None if due is None else max(0.0, due - time.monotonic())
            try:
                item = self._work.get(timeout=timeout)
            except queue.Empty:
                item = ("tick",)
            if item is None:
                stopping = True
            elif item[0] == "flush":
                asked = max(asked, item[1])
            elif item[0] == "records":
                pending.extend(item[1])
                pending_bytes += sum(len(blob) for blob in item[1])
                through = max(through, item[2])
                due = due if due is not None else time.monotonic() + FLUSH_EVERY_S
            if through <= self._covered:  # nothing new to write (what is pending, recovery already wrote)
                pending, pending_bytes, due = [], 0, None
                continue
            now_due = due is not None and time.monotonic() >= due
            if stopping or now_due or pending_bytes >= FLUSH_BYTES or asked > self._covered:
                try:
                    self.write(pending, through)
                except BaseException as exc:  # kept, and reported to whoever waits for the index
                    self._stop(exc)
                    return
                pending, pending_bytes, due = [], 0, None

    def write_or_stop(self, records: list[bytes], through_seq: int) -> None:
        """`write`, for a recovery's replay: an index LMDB cannot write to (its map full: `--explain-map-mb`, by
        default MAP_SIZE_BYTES_DEFAULT, about 270,000,000 events) stops as it stops while serving, and the start goes on without it. Raised, it
        stopped every start for good: a rebuild from the journal fills the same map at the same record."""
        if self._failure is not None:
            return
        try:
            self.write(records, through_seq)
        except lmdb.Error as exc:
            self._stop(exc)

    def _stop(self, exc: BaseException) -> None:
        """The index takes nothing more (`submit`) and its readers are told so (`wait_covered`)."""
        log.error(
            "the explain index stopped (ExplainLineItem answers UNAVAILABLE until a restart; a full index fills "
            "again at every start: start with a larger --explain-map-mb, or with --no-explain-index): %r",
            exc,
        )
        self._failure = exc
        with self._covered_changed:
            self._covered_changed.notify_all()

    def wait_covered(self, seq: int, timeout_s: float) -> bool:
        """Blocks until the index covers `seq` (asking the writer to write what it gathered); False after
        `timeout_s`. Raises IndexStopped once the writer stopped."""
        if self.covered_seq() < seq:
            self._work.put(("flush", seq))
        with self._covered_changed:
            covered = self._covered_changed.wait_for(
                lambda: self._covered >= seq or self._failure is not None, timeout=timeout_s
            )
        if self._failure is not None:
            raise IndexStopped(f"the explain index stopped: {self._failure!r}") from self._failure
        return covered

    def flush(self, seq: int) -> None:
        """Waits until everything submitted up to `seq` is written (before a snapshot at `seq` is saved). An index
        that stopped is not waited for: the snapshot goes ahead, and the next start rebuilds the index by a replay
        from the journal's first record."""
        # As the journal at each snapshot: frees the reader slots of processes gone (a backup killed mid-copy), whose
        # slot would keep every page freed after its transaction, each block's rewritten entries, from reuse.
        self._env.reader_check()
        if self.covered_seq() < seq:
            self._work.put(("flush", seq))
        with self._covered_changed:
            self._covered_changed.wait_for(lambda: self._covered >= seq or self._failure is not None)

    def close(self) -> None:
        """Writes what is queued, then closes. Idempotent."""
        if self._thread.is_alive():
            self._work.put(None)
            self._thread.join()
        self._env.close()

    # Reading ------------------------------------------------------------------------------------------

    def page(
        self, customer_id: str, period_start_ms: int, line_id: str, page_size: int, token: str, adjustments: int = 0
    ) -> Page:
        """Up to page_size entries of the line from `token` ("" for the first page): its events in journal order,
        then ordinals of its `adjustments` re-rating adjustments. Raises StaleToken for a token this index did not
        issue for this line."""
        line_key = Kernel.explain_line_key(customer_id, period_start_ms, line_id)
        kind, block, skip = self._open_token(line_key, token) if token else (_TOKEN_BLOCK, 0, 0)
        if kind == _TOKEN_ADJUSTMENT:
            if skip >= adjustments:
                raise StaleToken("names an adjustment this line does not have (stale)")
            return self._adjustments_page(line_key, [], skip, page_size, adjustments)
        period_key = explain_period_key(customer_id, period_start_ms)
        events: list[IndexedEvent] = []
        with self._env.begin(buffers=False) as txn:
            # The blocks in layout 1 (keyed by the whole period key), then those in layout 2 (by its first 8 bytes).
            for periods, prefix in ((self._periods, period_key), (self._periods2, period_key[:8])):
                layout2 = periods is self._periods2
                with txn.cursor(db=periods) as blocks:
                    found = blocks.set_range(prefix + block.to_bytes(8, "big"))
                    while found and blocks.key()[: len(prefix)] == prefix:
                        at = int.from_bytes(blocks.key()[len(prefix) :], "big")
                        period = blocks.value()
                        if _names(period, line_key, layout2):
                            start = skip if at == block else 0
                            limit = page_size - len(events) + 1
                            in_block = self._block_events(txn, at, line_key, start, limit, period if layout2 else None)
                            for ordinal, event in in_block:
                                if len(events) == page_size:
                                    return Page(events, self._token(line_key, _TOKEN_BLOCK, at, ordinal))
                                events.append(event)
                        found = blocks.next()
        return self._adjustments_page(line_key, events, 0, page_size, adjustments)

    def _block_events(
        self, txn: lmdb.Transaction, block: int, line_key: bytes, start: int, limit: int, period: bytes | None
    ) -> list[tuple[int, IndexedEvent]]:
        """Up to `limit` of the line's events in one block from ordinal `start` on, each with its ordinal. `period`:
        the block's entry for the line's (customer, period) when the block is in chunk layout 2, else None."""
        prefix = block.to_bytes(8, "big")
        target = prefix + line_key + start.to_bytes(4, "big")
        with txn.cursor(db=self._chunks) as cursor:
            # The chunk holding ordinal `start` is the one keyed by it, else the one before (if in this block).
            if not cursor.set_range(target):
                positioned = cursor.last()
            elif cursor.key() == target:
                positioned = True
            elif cursor.prev():
                positioned = cursor.key()[:8] == prefix or cursor.next()
            else:
                positioned = cursor.first()
            found: list[tuple[int, IndexedEvent]] = []
            while positioned:
                key = cast(bytes, cursor.key())  # the transaction reads without buffers: bytes
                if key[:8] != prefix or key[8:24] > line_key:
                    break
                ordinal = int.from_bytes(key[24:], "big") if key[8:24] == line_key else 0
                parts, _count, past = explain_chunk_line(cast(bytes, cursor.value()), line_key, period)
                for event in parse_events(parts):
                    if ordinal >= start:
                        found.append((ordinal, event))
                        if len(found) == limit:
                            return found
                    ordinal += 1
                if past:
                    break
                positioned = cursor.next()
        return found

    def _adjustments_page(
        self, line_key: bytes, events: list[IndexedEvent], first: int, page_size: int, adjustments: int
    ) -> Page:
        """The page's events (the last of the line) topped up with adjustment ordinals from `first`."""
        last = min(adjustments, first + page_size - len(events))
        token = self._token(line_key, _TOKEN_ADJUSTMENT, 0, last) if last < adjustments else ""
        return Page(events, token, range(first, last))

    def _mac(self, line_key: bytes, head: bytes) -> bytes:
        return hmac.new(self._secret, line_key + head, hashlib.blake2b).digest()[:_MAC_BYTES]

    def _token(self, line_key: bytes, kind: int, seq: int, index: int) -> str:
        head = _TOKEN.pack(kind, seq, index)
        return base64.urlsafe_b64encode(head + self._mac(line_key, head)).decode("ascii").rstrip("=")

    def _open_token(self, line_key: bytes, token: str) -> tuple[int, int, int]:
        try:
            raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        except ValueError:
            raise StaleToken("is not a page token") from None
        head, mac = raw[: _TOKEN.size], raw[_TOKEN.size :]
        if (
            len(head) != _TOKEN.size
            or head[0] not in (_TOKEN_BLOCK, _TOKEN_ADJUSTMENT)
            or not hmac.compare_digest(mac, self._mac(line_key, head))
        ):
            raise StaleToken("was not issued by this server for this customer, period and line (altered, or stale)")
        kind, seq, index = _TOKEN.unpack(head)
        return kind, seq, index
