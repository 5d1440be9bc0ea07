"""Tests for server/journal.py: the shared Journal semantics run against both implementations."""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from server.journal import (
    MAX_TRANSACTION_ID_BYTES,
    DedupeEntry,
    Journal,
    JournalFormatError,
    JournalFull,
    LmdbJournal,
    MemoryJournal,
)

MiB = 1024 * 1024
TINY_BYTES = 64 * 1024  # LMDB opens with this, but a 1 MiB record cannot fit


def entry(accepted_at_ms: int, content: bytes = b"payload") -> DedupeEntry:
    return DedupeEntry(content_hash=content.ljust(32, b"\0"), accepted_at_ms=accepted_at_ms)


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


def test_empty_journal_has_no_records_transactions_or_snapshot(journal: Journal) -> None:
    assert journal.last_seq() == 0
    assert all_records(journal) == []
    assert journal.find_transactions(["t1"]) == {}
    assert journal.load_snapshot() is None
    stats = journal.stats()
    assert (stats.last_seq, stats.records, stats.transactions) == (0, 0, 0)


def test_commit_then_read_records_returns_them_in_seq_order(journal: Journal) -> None:
    journal.commit([(1, b"one"), (2, b"two")], {})
    journal.commit([(3, b""), (4, b"four")], {})

    assert journal.last_seq() == 4
    assert all_records(journal) == [(1, b"one"), (2, b"two"), (3, b""), (4, b"four")]
    assert list(journal.read_records(2)) == [(3, b""), (4, b"four")]
    assert list(journal.read_records(4)) == []
    assert list(journal.read_records(-5)) == all_records(journal)


def test_read_records_returns_every_record_across_read_chunks(journal: Journal) -> None:
    records = [(seq, seq.to_bytes(4, "big")) for seq in range(1, 2_501)]
    journal.commit(records, {})

    assert all_records(journal) == records
    assert list(journal.read_records(1_500)) == records[1_500:]


def test_read_records_sees_a_commit_made_while_iterating(journal: Journal) -> None:
    journal.commit([(seq, b"x") for seq in range(1, 1_501)], {})
    reader = journal.read_records(0)
    first = [next(reader) for _ in range(1_200)]

    journal.commit([(1_501, b"late")], {})

    rest = list(reader)
    assert [seq for seq, _ in first + rest] == list(range(1, 1_502))


def test_lmdb_read_records_holds_no_read_transaction_between_yields(tmp_path: Path) -> None:
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=16 * MiB)
    journal.commit([(seq, b"x") for seq in range(1, 11)], {})
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
        journal.commit(records, {"t1": entry(1)})

    assert journal.last_seq() == 0
    assert all_records(journal) == []
    assert journal.find_transactions(["t1"]) == {}


def test_commit_refuses_seq_that_does_not_continue_last_seq(journal: Journal) -> None:
    journal.commit([(1, b"a")], {})

    with pytest.raises(ValueError):
        journal.commit([(1, b"again")], {"t1": entry(1)})

    assert all_records(journal) == [(1, b"a")]
    assert journal.find_transactions(["t1"]) == {}


def test_dedupe_entries_are_found_after_commit_and_absent_otherwise(journal: Journal) -> None:
    assert journal.find_transactions(["t1", "t2"]) == {}

    journal.commit([(1, b"batch")], {"t1": entry(100, b"a"), "t2": entry(200, b"b")})

    assert journal.find_transactions(["t1", "t2", "t3"]) == {"t1": entry(100, b"a"), "t2": entry(200, b"b")}
    assert journal.find_transactions(iter(["t2"])) == {"t2": entry(200, b"b")}
    assert journal.find_transactions([]) == {}


def test_find_transactions_handles_a_batch_of_ten_thousand_ids(journal: Journal) -> None:
    ids = [f"evt-{n}" for n in range(10_000)]
    journal.commit([(1, b"batch")], {tid: entry(n) for n, tid in enumerate(ids[::2])})

    found = journal.find_transactions(ids)

    assert set(found) == set(ids[::2])
    assert found["evt-4"] == entry(2)


def test_commit_replaces_a_transaction_id_accepted_again_after_its_window(journal: Journal) -> None:
    journal.commit([(1, b"a")], {"t1": entry(100)})

    journal.commit([(2, b"b")], {"t2": entry(200), "t1": entry(300)})

    assert journal.last_seq() == 2
    assert journal.find_transactions(["t1", "t2"]) == {"t1": entry(300), "t2": entry(200)}


@pytest.mark.parametrize(
    "transaction_id",
    ["x" * (MAX_TRANSACTION_ID_BYTES + 1), "é" * 256, "", "\ud800"],
    ids=["512-ascii", "512-utf8", "empty", "lone-surrogate"],
)
def test_commit_refuses_unstorable_transaction_id_and_writes_nothing(journal: Journal, transaction_id: str) -> None:
    with pytest.raises(ValueError):
        journal.commit([(1, b"a")], {"ok": entry(1), transaction_id: entry(2)})

    assert journal.last_seq() == 0
    assert journal.find_transactions(["ok", transaction_id]) == {}


def test_transaction_id_of_exactly_the_maximum_bytes_is_stored(journal: Journal) -> None:
    longest = "é" * (MAX_TRANSACTION_ID_BYTES // 2) + "x"
    assert len(longest.encode()) == MAX_TRANSACTION_ID_BYTES

    journal.commit([(1, b"a")], {longest: entry(1)})

    assert journal.find_transactions([longest]) == {longest: entry(1)}


def test_lmdb_data_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=16 * MiB)
    journal.commit([(1, b"one"), (2, b"two")], {"t1": entry(100)})
    journal.save_snapshot(2, b"state@2")
    journal.close()

    reopened = LmdbJournal(path, map_size_bytes=16 * MiB)
    try:
        assert reopened.last_seq() == 2
        assert all_records(reopened) == [(1, b"one"), (2, b"two")]
        assert reopened.find_transactions(["t1"]) == {"t1": entry(100)}
        assert reopened.load_snapshot() == (2, b"state@2")
        reopened.commit([(3, b"three")], {})
        assert reopened.last_seq() == 3
    finally:
        reopened.close()


def test_commit_that_does_not_fit_raises_journal_full_writes_nothing_and_a_smaller_commit_succeeds(
    tiny_journal: Journal,
) -> None:
    tiny_journal.commit([(1, b"first")], {"t0": entry(1)})

    with pytest.raises(JournalFull):
        tiny_journal.commit([(2, b"x" * MiB)], {"t1": entry(2)})

    assert tiny_journal.last_seq() == 1
    assert all_records(tiny_journal) == [(1, b"first")]
    assert tiny_journal.find_transactions(["t0", "t1"]) == {"t0": entry(1)}

    tiny_journal.commit([(2, b"small")], {"t1": entry(2)})

    assert all_records(tiny_journal) == [(1, b"first"), (2, b"small")]
    assert tiny_journal.find_transactions(["t1"]) == {"t1": entry(2)}


def test_snapshot_that_does_not_fit_raises_journal_full_and_keeps_the_old_one(tiny_journal: Journal) -> None:
    tiny_journal.commit([(1, b"a"), (2, b"b")], {})
    tiny_journal.save_snapshot(1, b"state@1")

    with pytest.raises(JournalFull):
        tiny_journal.save_snapshot(2, b"x" * MiB)

    assert tiny_journal.load_snapshot() == (1, b"state@1")


def test_snapshot_save_then_load_keeps_only_the_newest(journal: Journal) -> None:
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")], {})

    journal.save_snapshot(1, b"state@1")
    journal.save_snapshot(3, b"state@3")
    assert journal.load_snapshot() == (3, b"state@3")

    journal.save_snapshot(3, b"state@3 re-encoded")
    assert journal.load_snapshot() == (3, b"state@3 re-encoded")


@pytest.mark.parametrize("seq", [-1, 2, 4], ids=["negative", "older-than-stored", "past-last-seq"])
def test_snapshot_refuses_seq_outside_stored_snapshot_to_last_seq(journal: Journal, seq: int) -> None:
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")], {})
    journal.save_snapshot(3, b"state@3")

    with pytest.raises(ValueError):
        journal.save_snapshot(seq, b"bad")

    assert journal.load_snapshot() == (3, b"state@3")


def test_prune_deletes_only_entries_accepted_before_the_cutoff(journal: Journal) -> None:
    journal.commit([(1, b"a")], {"old1": entry(10), "old2": entry(99), "edge": entry(100), "new": entry(500)})

    assert journal.prune_transactions(accepted_before_ms=100, limit=1_000) == 2

    assert journal.find_transactions(["old1", "old2", "edge", "new"]) == {"edge": entry(100), "new": entry(500)}
    assert journal.prune_transactions(accepted_before_ms=100, limit=1_000) == 0


def test_prune_deletes_at_most_limit_per_call(journal: Journal) -> None:
    old = {f"old-{n:03}": entry(n) for n in range(25)}
    journal.commit([(1, b"a")], {**old, "new-a": entry(1_000), "new-z": entry(2_000)})

    counts = [journal.prune_transactions(accepted_before_ms=1_000, limit=10) for _ in range(4)]

    assert counts == [10, 10, 5, 0]
    assert journal.find_transactions([*old, "new-a", "new-z"]) == {"new-a": entry(1_000), "new-z": entry(2_000)}
    assert journal.stats().transactions == 2


def test_prune_refuses_a_limit_below_one(journal: Journal) -> None:
    with pytest.raises(ValueError):
        journal.prune_transactions(accepted_before_ms=1, limit=0)


def test_lmdb_prune_resumes_and_wraps_around_the_id_space(tmp_path: Path) -> None:
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=16 * MiB)
    # Ids sort as id-00 < ... < id-19; the first ten are younger than the first cutoff.
    journal.commit([(1, b"a")], {f"id-{n:02}": entry(50 if n < 10 else 5) for n in range(20)})
    assert journal.prune_transactions(accepted_before_ms=10, limit=3) == 3  # id-10..id-12
    # Resuming after id-12 must still reach id-00..id-09 (now old) by wrapping around.
    assert journal.prune_transactions(accepted_before_ms=100, limit=100) == 17
    assert journal.stats().transactions == 0
    journal.close()


def test_stats_count_records_and_transactions(journal: Journal) -> None:
    journal.commit([(1, b"a"), (2, b"b")], {"t1": entry(1), "t2": entry(2), "t3": entry(3)})

    stats = journal.stats()

    assert (stats.last_seq, stats.records, stats.transactions) == (2, 2, 3)
    assert stats.used_bytes > 0


def test_lmdb_reopening_with_a_larger_map_size_grows_the_map(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    LmdbJournal(path, map_size_bytes=4 * MiB).close()

    journal = LmdbJournal(path, map_size_bytes=32 * MiB)
    assert journal.stats().map_size_bytes == 32 * MiB
    journal.commit([(1, b"x" * (8 * MiB))], {})
    journal.close()

    reopened = LmdbJournal(path, map_size_bytes=32 * MiB)
    assert reopened.stats().map_size_bytes == 32 * MiB
    reopened.close()


def test_lmdb_reopening_with_a_smaller_map_size_keeps_the_larger_map(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=32 * MiB)
    journal.commit([(1, b"a")], {})
    journal.close()

    reopened = LmdbJournal(path, map_size_bytes=4 * MiB)
    try:
        assert reopened.stats().map_size_bytes == 32 * MiB
        reopened.commit([(2, b"x" * (8 * MiB))], {})
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


def test_lmdb_map_size_is_rounded_up_to_whole_pages(tmp_path: Path) -> None:
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=TINY_BYTES + 1)
    assert journal.stats().map_size_bytes % 4096 == 0
    assert journal.stats().map_size_bytes > TINY_BYTES
    journal.close()


USE_AFTER_CLOSE: dict[str, Callable[[Journal], object]] = {
    "last_seq": lambda j: j.last_seq(),
    "read_records": lambda j: j.read_records(0),
    "find_transactions": lambda j: j.find_transactions(["t1"]),
    "commit": lambda j: j.commit([(1, b"a")], {}),
    "load_snapshot": lambda j: j.load_snapshot(),
    "save_snapshot": lambda j: j.save_snapshot(0, b""),
    "prune_transactions": lambda j: j.prune_transactions(1, 1),
    "stats": lambda j: j.stats(),
}


@pytest.mark.parametrize("method", list(USE_AFTER_CLOSE))
def test_use_after_close_raises_runtime_error(journal: Journal, method: str) -> None:
    journal.close()
    journal.close()  # idempotent

    with pytest.raises(RuntimeError, match="closed"):
        USE_AFTER_CLOSE[method](journal)


def test_closing_mid_iteration_makes_the_next_read_chunk_raise(journal: Journal) -> None:
    journal.commit([(seq, b"x") for seq in range(1, 1_501)], {})
    reader = journal.read_records(0)
    next(reader)
    journal.close()

    with pytest.raises(RuntimeError, match="closed"):
        list(reader)


# --- property: LmdbJournal and MemoryJournal are observably the same ---------------------------

# A small alphabet makes repeated ids (refused commits) and shared ids across commits common.
ID_ALPHABET = "abc"
EVERY_ID = ["".join(chars) for size in (1, 2, 3) for chars in itertools.product(ID_ALPHABET, repeat=size)]

# (kind, number, payloads, {transaction id: accepted_at_ms}); number is the seq offset of a commit
# (0 is valid, anything else is refused) or the cutoff of a prune.
Op = tuple[str, int, list[bytes], dict[str, int]]
commit_ops: st.SearchStrategy[Op] = st.tuples(
    st.just("commit"),
    st.integers(min_value=-1, max_value=1),
    st.lists(st.binary(max_size=48), min_size=0, max_size=4),
    st.dictionaries(st.text(alphabet=ID_ALPHABET, min_size=1, max_size=3), st.integers(0, 1_000), max_size=4),
)
prune_ops: st.SearchStrategy[Op] = st.tuples(st.just("prune"), st.integers(0, 1_000), st.builds(list), st.builds(dict))


def apply(journal: Journal, op: Op) -> str:
    kind, number, payloads, accepted = op
    try:
        if kind == "commit":
            first = journal.last_seq() + 1 + number
            records = [(first + n, payload) for n, payload in enumerate(payloads)]
            journal.commit(records, {tid: entry(ms, tid.encode()) for tid, ms in accepted.items()})
        else:
            # A limit above the entry count, so which entries go is fully determined.
            journal.prune_transactions(accepted_before_ms=number, limit=1_000)
    except ValueError:
        return "refused"
    return "ok"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(st.one_of(commit_ops, commit_ops, prune_ops), max_size=12))
def test_random_commits_leave_lmdb_and_memory_journals_in_the_same_state(ops: list[Op]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        on_disk = LmdbJournal(Path(directory) / "journal", map_size_bytes=16 * MiB, sync=False)
        in_memory = MemoryJournal()
        try:
            for op in ops:
                assert apply(on_disk, op) == apply(in_memory, op)
                assert on_disk.last_seq() == in_memory.last_seq()
                assert all_records(on_disk) == all_records(in_memory)
                assert on_disk.find_transactions(EVERY_ID) == in_memory.find_transactions(EVERY_ID)
                disk_stats, memory_stats = on_disk.stats(), in_memory.stats()
                assert (disk_stats.records, disk_stats.transactions) == (
                    memory_stats.records,
                    memory_stats.transactions,
                )
        finally:
            on_disk.close()
            in_memory.close()


# Deferred indexing of transaction ids -----------------------------------------------------------------------


def test_index_transactions_adds_entries_and_moves_the_mark(journal: Journal) -> None:
    journal.commit([(1, b"one"), (2, b"two"), (3, b"three")], {})
    assert journal.transactions_indexed_through() == 0
    assert journal.find_transactions(["a", "b"]) == {}

    journal.index_transactions({"a": entry(10), "b": entry(11)}, through_seq=2)
    assert journal.transactions_indexed_through() == 2
    assert journal.find_transactions(["a", "b", "c"]) == {"a": entry(10), "b": entry(11)}
    assert journal.stats().transactions == 2

    journal.index_transactions({}, through_seq=3)  # nothing accepted in record 3: the mark still moves
    assert journal.transactions_indexed_through() == 3


@pytest.mark.parametrize("through_seq", [-1, 0, 3], ids=["negative", "behind-the-mark", "beyond-last-seq"])
def test_index_transactions_refuses_a_mark_behind_the_current_one_or_beyond_last_seq(
    journal: Journal, through_seq: int
) -> None:
    journal.commit([(1, b"one"), (2, b"two")], {})
    journal.index_transactions({"a": entry(10)}, through_seq=1)
    with pytest.raises(ValueError):
        journal.index_transactions({"b": entry(11)}, through_seq=through_seq)
    assert journal.transactions_indexed_through() == 1
    assert journal.find_transactions(["b"]) == {}


def test_lmdb_index_mark_survives_reopen_and_a_fresh_store_starts_at_zero(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=16 * MiB)
    assert journal.transactions_indexed_through() == 0
    journal.commit([(1, b"one"), (2, b"two")], {})
    journal.index_transactions({"a": entry(10)}, through_seq=1)
    journal.close()

    reopened = LmdbJournal(path, map_size_bytes=16 * MiB)
    assert reopened.transactions_indexed_through() == 1
    assert reopened.find_transactions(["a"]) == {"a": entry(10)}
    reopened.close()


def test_lmdb_store_without_a_mark_counts_every_record_as_indexed(tmp_path: Path) -> None:
    """A store written before deferred indexing committed each record's ids with it: nothing to re-derive."""
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=16 * MiB)
    journal.commit([(1, b"one"), (2, b"two")], {"a": entry(10)})
    journal.close()
    env = lmdb.open(str(path), max_dbs=4)
    with env.begin(write=True) as txn:
        assert txn.delete(b"transactions_indexed_through", db=env.open_db(b"meta", txn=txn))
    env.close()

    reopened = LmdbJournal(path, map_size_bytes=16 * MiB)
    assert reopened.transactions_indexed_through() == 2
    reopened.close()
