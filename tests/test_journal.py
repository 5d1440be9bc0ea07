"""Tests for server/journal.py: the shared Journal semantics run against both implementations."""

from __future__ import annotations

import errno
import mmap
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.journal import (
    DedupeSegmentSave,
    Journal,
    JournalFormatError,
    JournalFull,
    LmdbJournal,
    MemoryJournal,
)
from tests.disk import disk_with_room

MiB = 1024 * 1024
TINY_BYTES = 64 * 1024  # LMDB opens with this, but a 1 MiB record cannot fit


@pytest.fixture(params=["lmdb", "memory"])
def journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    journal: Journal = (
        LmdbJournal(tmp_path / "journal", map_size_bytes=16 * MiB) if request.param == "lmdb" else MemoryJournal()
    )
    yield journal
    journal.close()


@pytest.fixture(params=["lmdb", "memory"])
def tiny_journal(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Journal]:
    journal: Journal = (
        LmdbJournal(tmp_path / "tiny", map_size_bytes=TINY_BYTES)
        if request.param == "lmdb"
        else MemoryJournal(capacity_bytes=TINY_BYTES)
    )
    yield journal
    journal.close()


def all_records(journal: Journal) -> list[tuple[int, bytes]]:
    return list(journal.read_records(0))


def test_empty_journal_has_no_records_or_snapshot(journal: Journal) -> None:
    assert journal.last_seq() == 0
    assert all_records(journal) == []
    assert journal.load_snapshot() is None
    stats = journal.stats()
    assert (stats.last_seq, stats.records) == (0, 0)


def test_commit_then_read_records_returns_them_in_seq_order(journal: Journal) -> None:
    journal.commit([(1, b"one"), (2, b"two")])
    journal.commit([(3, b""), (4, b"four")])

    assert journal.last_seq() == 4
    assert all_records(journal) == [(1, b"one"), (2, b"two"), (3, b""), (4, b"four")]
    assert list(journal.read_records(2)) == [(3, b""), (4, b"four")]
    assert list(journal.read_records(4)) == []
    assert list(journal.read_records(-5)) == all_records(journal)


def test_read_records_returns_every_record_across_read_chunks(journal: Journal) -> None:
    records = [(seq, seq.to_bytes(4, "big")) for seq in range(1, 2_501)]
    journal.commit(records)

    assert all_records(journal) == records
    assert list(journal.read_records(1_500)) == records[1_500:]


def test_read_records_sees_a_commit_made_while_iterating(journal: Journal) -> None:
    journal.commit([(seq, b"x") for seq in range(1, 1_501)])
    reader = journal.read_records(0)
    first = [next(reader) for _ in range(1_200)]

    journal.commit([(1_501, b"late")])

    rest = list(reader)
    assert [seq for seq, _ in first + rest] == list(range(1, 1_502))


def test_lmdb_read_records_holds_no_read_transaction_between_yields(tmp_path: Path) -> None:
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=16 * MiB)
    journal.commit([(seq, b"x") for seq in range(1, 11)])
    reader = journal.read_records(0)
    next(reader)

    assert journal._env is not None
    assert "no active readers" in journal._env.readers()
    journal.close()


@pytest.mark.parametrize(
    "records",
    [
        [(2, b"gap")],
        [(0, b"zero")],
        [(1, b"a"), (3, b"gap")],
        [(2, b"b"), (1, b"a")],
        [(1, b"a"), (1, b"again")],
        [],
    ],
    ids=["gap", "zero", "gap-inside", "out-of-order", "repeated", "empty"],
)
def test_commit_refuses_non_contiguous_or_empty_records_and_writes_nothing(
    journal: Journal, records: list[tuple[int, bytes]]
) -> None:
    with pytest.raises(ValueError):
        journal.commit(records)

    assert journal.last_seq() == 0
    assert all_records(journal) == []


def test_commit_refuses_seq_that_does_not_continue_last_seq(journal: Journal) -> None:
    journal.commit([(1, b"a")])

    with pytest.raises(ValueError):
        journal.commit([(1, b"again")])

    assert all_records(journal) == [(1, b"a")]


def test_lmdb_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=16 * MiB)
    journal.commit([(1, b"one"), (2, b"two")])
    journal.save_snapshot(2, b"state@2")
    journal.close()

    reopened = LmdbJournal(path, map_size_bytes=16 * MiB)
    try:
        assert reopened.last_seq() == 2
        assert all_records(reopened) == [(1, b"one"), (2, b"two")]
        assert reopened.load_snapshot() == (2, b"state@2")
        reopened.commit([(3, b"three")])
        assert reopened.last_seq() == 3
    finally:
        reopened.close()


def test_commit_that_does_not_fit_raises_journal_full_writes_nothing_and_a_smaller_commit_succeeds(
    tiny_journal: Journal,
) -> None:
    tiny_journal.commit([(1, b"first")])

    with pytest.raises(JournalFull):
        tiny_journal.commit([(2, b"x" * MiB)])

    assert tiny_journal.last_seq() == 1
    assert all_records(tiny_journal) == [(1, b"first")]

    tiny_journal.commit([(2, b"small")])

    assert all_records(tiny_journal) == [(1, b"first"), (2, b"small")]


def test_memory_snapshot_that_does_not_fit_raises_journal_full_and_keeps_the_old_one() -> None:
    tiny_journal = MemoryJournal(capacity_bytes=TINY_BYTES)
    tiny_journal.commit([(1, b"a"), (2, b"b")])
    tiny_journal.save_snapshot(1, b"state@1")

    with pytest.raises(JournalFull):
        tiny_journal.save_snapshot(2, b"x" * MiB)

    assert tiny_journal.load_snapshot() == (1, b"state@1")


def test_lmdb_snapshot_is_stored_outside_the_map(tmp_path: Path) -> None:
    path = tmp_path / "tiny"
    journal = LmdbJournal(path, map_size_bytes=TINY_BYTES)
    journal.commit([(1, b"a"), (2, b"b")])

    journal.save_snapshot(2, b"x" * MiB)  # 16 times the map
    journal.commit([(3, b"c")])  # and the map still has its room

    assert journal.load_snapshot() == (2, b"x" * MiB)
    journal.close()
    assert (path / "snapshot").stat().st_size > MiB


def test_lmdb_snapshot_on_a_full_disk_raises_journal_full_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b")])
    journal.save_snapshot(1, b"state@1")

    def disk_full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk_full)
        with pytest.raises(JournalFull):
            journal.save_snapshot(2, b"state@2")

    assert journal.load_snapshot() == (1, b"state@1")
    assert sorted(entry.name for entry in path.iterdir()) == ["data.mdb", "lock.mdb", "snapshot"]
    journal.save_snapshot(2, b"state@2")
    assert journal.load_snapshot() == (2, b"state@2")
    journal.close()


def _mapped(blob: bytes) -> mmap.mmap:
    mapped = mmap.mmap(-1, len(blob))
    mapped[:] = blob
    return mapped


def test_lmdb_snapshot_from_a_map_leaves_the_map_closable_after_a_save_and_after_a_full_disk(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server hands the journal its snapshot as a map and closes the map right after (sequencer's
    _save_snapshot): no view of it may outlive the call, not even one a traceback keeps (a full disk's error
    holds the frames that wrote), or close() raises BufferError and stops the writer."""
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b")])
    saved = _mapped(b"s" * (3 * MiB + 5))
    journal.save_snapshot(1, saved)
    saved.close()

    refused = _mapped(b"r" * MiB)
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk_with_room(MiB // 2))
        with pytest.raises(JournalFull) as raised:
            journal.save_snapshot(2, refused)
    assert raised.value.__cause__ is not None  # the error, and the frames it holds, are still alive here
    refused.close()
    assert journal.load_snapshot() == (1, b"s" * (3 * MiB + 5))
    journal.close()


def test_snapshot_in_parts_is_stored_as_their_concatenation_and_the_list_is_emptied(journal: Journal) -> None:
    journal.commit([(1, b"a"), (2, b"b")])
    parts = [b"head", b"x" * MiB, b"", b"tail"]

    journal.save_snapshot(2, parts)

    assert parts == []
    assert journal.load_snapshot() == (2, b"head" + b"x" * MiB + b"tail")


def test_lmdb_snapshot_in_parts_drops_each_part_once_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server's parts are freed as the write goes: when a part is written, the ones before it are out of the
    list (the server holds no other reference), so the whole snapshot is never held twice."""
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=4 * MiB)
    journal.commit([(1, b"a")])
    parts = [b"1" * 10, b"2" * 20, b"3" * 30]
    write = os.write
    listed_while_written: list[tuple[int, list[int]]] = []

    def recording_write(fd: int, data: memoryview) -> int:
        listed_while_written.append((len(data), [len(part) for part in parts]))
        return write(fd, data)

    with monkeypatch.context() as patch:
        patch.setattr(os, "write", recording_write)
        journal.save_snapshot(1, parts)

    assert listed_while_written == [(24, [10, 20, 30]), (10, [10, 20, 30]), (20, [20, 30]), (30, [30])]
    assert journal.load_snapshot() == (1, b"1" * 10 + b"2" * 20 + b"3" * 30)
    journal.close()


def test_lmdb_snapshot_in_parts_on_a_disk_full_halfway_raises_journal_full_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b")])
    journal.save_snapshot(1, [b"state", b"@1"])
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk_with_room(MiB + MiB // 2))  # the disk fills in the second part
        with pytest.raises(JournalFull):
            journal.save_snapshot(2, [b"r" * MiB, b"s" * MiB, b"t" * MiB])

    assert journal.load_snapshot() == (1, b"state@1")
    assert sorted(entry.name for entry in path.iterdir()) == ["data.mdb", "lock.mdb", "snapshot"]
    journal.close()
    reopened = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert reopened.load_snapshot() == (1, b"state@1")
    reopened.save_snapshot(2, [b"state", b"@2"])
    assert reopened.load_snapshot() == (2, b"state@2")
    reopened.close()


def _store_snapshot_as_an_earlier_release_did(path: Path, seq: int, blob: bytes) -> None:
    with lmdb.open(str(path), max_dbs=4) as env:
        snapshots = env.open_db(b"snapshots")
        with env.begin(write=True) as txn:
            txn.put(seq.to_bytes(8, "big"), blob, db=snapshots)


def test_lmdb_reads_the_snapshot_an_earlier_release_stored_in_the_map_until_a_newer_one_is_saved(
    tmp_path: Path,
) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")])
    journal.close()
    _store_snapshot_as_an_earlier_release_did(path, 2, b"state@2, in the map")

    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert journal.load_snapshot() == (2, b"state@2, in the map")
    with pytest.raises(ValueError, match="older than the stored snapshot"):
        journal.save_snapshot(1, b"state@1")
    journal.save_snapshot(3, b"state@3")
    assert journal.load_snapshot() == (3, b"state@3")
    journal.close()

    with lmdb.open(str(path), max_dbs=4, readonly=True) as env:
        snapshots = env.open_db(b"snapshots", create=False)
        with env.begin() as txn:
            assert list(txn.cursor(db=snapshots)) == []  # the earlier release's copy went with the save
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert journal.load_snapshot() == (3, b"state@3")
    journal.close()


def test_an_earlier_releases_snapshot_in_the_map_gives_its_seq_is_never_found_damaged_and_is_said_to_be_there(
    tmp_path: Path,
) -> None:
    """Its seq is the map's key, read at open; it has no file to be cut short; `snapshot_in_map` (the refusal's
    advice: drop the database, not move a file aside) until a newer snapshot, a file, is saved."""
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")])
    journal.close()
    _store_snapshot_as_an_earlier_release_did(path, 2, b"state@2, in the map")
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert (journal.snapshot_seq(), journal.disregard_if_damaged(), journal.snapshot_in_map()) == (2, None, True)
    assert journal.load_snapshot() == (2, b"state@2, in the map")
    journal.save_snapshot(3, b"state@3")
    assert (journal.snapshot_seq(), journal.snapshot_in_map()) == (3, False)
    journal.close()


def test_snapshot_seq_is_the_stored_snapshots_and_a_whole_snapshot_is_not_disregarded(journal: Journal) -> None:
    assert journal.snapshot_seq() is None and journal.disregard_if_damaged() is None
    journal.commit([(1, b"a"), (2, b"b")])
    journal.save_snapshot(2, b"state@2", DedupeSegmentSave([b"base"], base=True))
    assert journal.disregard_if_damaged() is None
    assert journal.snapshot_seq() == 2
    loaded = journal.load_segmented_snapshot()
    assert loaded is not None and (loaded[0], loaded[1], [bytes(segment) for segment in loaded[2]]) == (
        2,
        b"state@2",
        [b"base"],
    )


def _cut_the_file(path: Path) -> str:
    (path / "snapshot").write_bytes((path / "snapshot").read_bytes()[:-1])
    return "snapshot holds "


def _drop_the_segment(path: Path) -> str:
    next(path.glob("segment.*")).unlink()
    return "which is missing"


def _lengthen_the_segment(path: Path) -> str:
    segment = next(path.glob("segment.*"))
    segment.write_bytes(segment.read_bytes() + b"!")
    return f"{segment.name} holds 5 of its 4 bytes"


@pytest.mark.parametrize("damage", [_cut_the_file, _drop_the_segment, _lengthen_the_segment])
def test_lmdb_disregards_a_snapshot_its_files_sizes_find_damaged_until_a_save_replaces_it(
    tmp_path: Path, damage: Callable[[Path], str]
) -> None:
    """Found by sizes alone (the state is not read): why, and from then on no snapshot (seq None, loads None) though
    the file stays; a save replaces it and deletes the segment it listed."""
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")])
    journal.save_snapshot(2, b"state@2", DedupeSegmentSave([b"base"], base=True))
    journal.close()
    why = damage(path)
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert journal.snapshot_seq() == 2
    damaged = journal.disregard_if_damaged()
    assert damaged is not None and why in damaged, damaged
    assert journal.snapshot_seq() is None and journal.load_segmented_snapshot() is None
    assert journal.disregard_if_damaged() is None  # disregarded already
    with pytest.raises(ValueError, match="older than the stored snapshot"):
        journal.save_snapshot(1, b"state@1")
    journal.save_snapshot(3, b"state@3", DedupeSegmentSave([b"base@3"], base=True))
    assert journal.snapshot_seq() == 3
    loaded = journal.load_segmented_snapshot()
    assert loaded is not None and [bytes(segment) for segment in loaded[2]] == [b"base@3"]
    assert len(list(path.glob("segment.*"))) == 1
    journal.close()


def test_lmdb_a_snapshot_file_longer_than_its_header_says_is_not_found_damaged(tmp_path: Path) -> None:
    """As a load reads it: the blob's length from the header, what follows unread."""
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a")])
    journal.save_snapshot(1, b"state@1")
    journal.close()
    with open(path / "snapshot", "ab") as file:
        file.write(b"past the blob")
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert journal.disregard_if_damaged() is None and journal.load_snapshot() == (1, b"state@1")
    journal.close()


def test_lmdb_start_drops_a_snapshot_file_whose_save_was_cut_short(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b")])
    journal.save_snapshot(1, b"state@1")
    journal.close()
    (path / "snapshot.partial").write_bytes(b"TARIFFS1 and no more")

    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert journal.load_snapshot() == (1, b"state@1")
    assert not (path / "snapshot.partial").exists()
    journal.close()


def test_snapshot_save_then_load_keeps_only_the_newest(journal: Journal) -> None:
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")])

    journal.save_snapshot(1, b"state@1")
    journal.save_snapshot(3, b"state@3")
    assert journal.load_snapshot() == (3, b"state@3")

    journal.save_snapshot(3, b"state@3 re-encoded")
    assert journal.load_snapshot() == (3, b"state@3 re-encoded")


@pytest.mark.parametrize("seq", [-1, 2, 4], ids=["negative", "older-than-stored", "past-last-seq"])
def test_snapshot_refuses_seq_outside_stored_snapshot_to_last_seq(journal: Journal, seq: int) -> None:
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")])
    journal.save_snapshot(3, b"state@3")

    with pytest.raises(ValueError):
        journal.save_snapshot(seq, b"bad")

    assert journal.load_snapshot() == (3, b"state@3")


def test_stats_count_records(journal: Journal) -> None:
    journal.commit([(1, b"a"), (2, b"b")])

    stats = journal.stats()

    assert (stats.last_seq, stats.records) == (2, 2)
    assert stats.used_bytes > 0


def test_lmdb_reopening_with_a_larger_map_size_grows_the_map(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    LmdbJournal(path, map_size_bytes=4 * MiB).close()

    journal = LmdbJournal(path, map_size_bytes=32 * MiB)
    assert journal.stats().map_size_bytes == 32 * MiB
    journal.commit([(1, b"x" * (8 * MiB))])
    journal.close()

    reopened = LmdbJournal(path, map_size_bytes=32 * MiB)
    assert reopened.stats().map_size_bytes == 32 * MiB
    reopened.close()


def test_lmdb_reopening_with_a_smaller_map_size_keeps_the_larger_map(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=32 * MiB)
    journal.commit([(1, b"a")])
    journal.close()

    reopened = LmdbJournal(path, map_size_bytes=4 * MiB)
    try:
        assert reopened.stats().map_size_bytes == 32 * MiB
        reopened.commit([(2, b"x" * (8 * MiB))])
    finally:
        reopened.close()


def test_lmdb_refuses_to_open_a_newer_format_version(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    LmdbJournal(path, map_size_bytes=4 * MiB).close()
    with lmdb.open(str(path), max_dbs=4) as env:
        meta = env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"format_version", b"3", db=meta)

    with pytest.raises(JournalFormatError, match="format version '3'"):
        LmdbJournal(path, map_size_bytes=4 * MiB)

    # The failed open released the environment: it can be opened again in this process.
    lmdb.open(str(path), max_dbs=4).close()


def test_lmdb_opens_a_store_with_the_dedupe_index_of_an_earlier_release_and_leaves_it_alone(tmp_path: Path) -> None:
    # Stores written before the kernel held dedupe entries also have a "transactions" database and an
    # indexed-through mark in "meta"; this release neither needs nor touches them.
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"one")])
    journal.close()
    with lmdb.open(str(path), max_dbs=4) as env:
        transactions, meta = env.open_db(b"transactions"), env.open_db(b"meta")
        with env.begin(write=True) as txn:
            txn.put(b"t1", b"old entry", db=transactions)
            txn.put(b"transactions_indexed_through", (1).to_bytes(8, "big"), db=meta)

    reopened = LmdbJournal(path, map_size_bytes=4 * MiB)
    try:
        reopened.commit([(2, b"two")])
        assert all_records(reopened) == [(1, b"one"), (2, b"two")]
    finally:
        reopened.close()
    with lmdb.open(str(path), max_dbs=4, readonly=True) as env:
        transactions = env.open_db(b"transactions", create=False)
        with env.begin() as txn:
            assert list(txn.cursor(db=transactions)) == [(b"t1", b"old entry")]


def test_lmdb_map_size_is_rounded_up_to_whole_pages(tmp_path: Path) -> None:
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=TINY_BYTES + 1)
    assert journal.stats().map_size_bytes % 4096 == 0
    assert journal.stats().map_size_bytes > TINY_BYTES
    journal.close()


USE_AFTER_CLOSE: dict[str, Callable[[Journal], object]] = {
    "last_seq": lambda j: j.last_seq(),
    "read_records": lambda j: j.read_records(0),
    "commit": lambda j: j.commit([(1, b"a")]),
    "load_snapshot": lambda j: j.load_snapshot(),
    "save_snapshot": lambda j: j.save_snapshot(0, b""),
    "stats": lambda j: j.stats(),
}


@pytest.mark.parametrize("method", list(USE_AFTER_CLOSE))
def test_use_after_close_raises_runtime_error(journal: Journal, method: str) -> None:
    journal.close()
    journal.close()  # idempotent

    with pytest.raises(RuntimeError, match="closed"):
        USE_AFTER_CLOSE[method](journal)


def test_closing_mid_iteration_makes_the_next_read_chunk_raise(journal: Journal) -> None:
    journal.commit([(seq, b"x") for seq in range(1, 1_501)])
    reader = journal.read_records(0)
    next(reader)
    journal.close()

    with pytest.raises(RuntimeError, match="closed"):
        list(reader)


# --- property: LmdbJournal and MemoryJournal are observably the same ---------------------------

# (seq offset of a commit: 0 is valid, anything else is refused; payloads)
Op = tuple[int, list[bytes]]
commit_ops: st.SearchStrategy[Op] = st.tuples(
    st.integers(min_value=-1, max_value=1), st.lists(st.binary(max_size=48), min_size=0, max_size=4)
)


def apply(journal: Journal, op: Op) -> str:
    offset, payloads = op
    try:
        first = journal.last_seq() + 1 + offset
        journal.commit([(first + n, payload) for n, payload in enumerate(payloads)])
    except ValueError:
        return "refused"
    return "ok"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(commit_ops, max_size=12))
def test_random_commits_leave_lmdb_and_memory_journals_in_the_same_state(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        on_disk = LmdbJournal(Path(directory) / "journal", map_size_bytes=16 * MiB, sync=False)
        in_memory = MemoryJournal()
        try:
            for op in ops:
                assert apply(on_disk, op) == apply(in_memory, op)
                assert on_disk.last_seq() == in_memory.last_seq()
                assert all_records(on_disk) == all_records(in_memory)
                assert on_disk.stats().records == in_memory.stats().records
        finally:
            on_disk.close()
            in_memory.close()
