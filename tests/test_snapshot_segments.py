"""Snapshots in dedupe segments: each snapshot stores the dedupe table's changes since the one before as a segment
file beside it (the first one, and one after a store that failed, the whole table), so a snapshot's cost on the
writer follows what changed, not the window. Recovery merges the segments into exactly the table snapshotted; a
kill -9 at any step of a store or a compaction recovers a whole snapshot with durable segments; a full disk keeps
the stored snapshot; a data directory whose snapshot predates segments (TARIFFS1, kernel format 4) recovers."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import tarfile
from collections.abc import Callable, Sequence
from pathlib import Path

import lmdb
import pytest

from engine._kernel import Kernel
from engine.billing import Billing, Ingested
from server import segment_compaction, snapshotting
from server.journal import (
    DedupeSegmentSave,
    JournalFull,
    LmdbJournal,
    MemoryJournal,
    SegmentParts,
    SegmentWriter,
    SnapshotBlob,
)
from server.recovery import recover
from server.segment_compaction import segments_to_compact
from server.sequencer import Sequencer
from tests.disk import disk_with_room
from tests.test_sequencer import DAY_MS, NOW_MS, batch, event, run_with

MiB = 1 << 20
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def _loaded(journal: LmdbJournal | MemoryJournal) -> tuple[int, bytes, list[bytes]] | None:
    """load_segmented_snapshot, its segments (maps of their files, for LmdbJournal) read as bytes."""
    loaded = journal.load_segmented_snapshot()
    return None if loaded is None else (loaded[0], loaded[1], [bytes(segment) for segment in loaded[2]])


def _segment_files(path: Path) -> list[str]:
    return sorted(entry.name for entry in path.iterdir() if entry.name.startswith("segment."))


async def _ingested(sequencer: Sequencer, *transaction_ids: str) -> Ingested:
    _, result = await sequencer.run(batch(*(event(t) for t in transaction_ids)))
    assert isinstance(result, Ingested)
    return result


def test_a_data_directory_with_a_single_file_snapshot_of_the_release_before_recovers_and_moves_to_segments(
    tmp_path: Path,
) -> None:
    """tests/fixtures/datadir-snapshot-v4.tar.gz (made by make_datadir_snapshot_v4.py with the release before
    segments): its snapshot's dedupe table is inside the file. Recovered, every id it accepted is a resend; the next
    snapshot stores a base segment, and recovering from that gives the same."""
    with tarfile.open(FIXTURES / "datadir-snapshot-v4.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    expected = json.loads((FIXTURES / "datadir-snapshot-v4.json").read_text())["acme_remaining"]
    path = tmp_path / "journal"
    assert (path / "snapshot").read_bytes()[:8] == b"TARIFFS1"
    journal = LmdbJournal(path, map_size_bytes=64 * MiB)
    assert journal.dedupe_segment_bytes() == []
    assert recover(journal).balance("acme", NOW_MS).remaining == expected
    ids = [f"a{i}" for i in range(10)] + [f"b{i}" for i in range(5)]

    async def resend(sequencer: Sequencer) -> None:
        result = await _ingested(sequencer, *ids)
        assert (result.accepted, result.duplicates) == (0, len(ids))

    for _ in range(2):
        billing = run_with(journal, resend)  # type: ignore[arg-type]
        assert billing.balance("acme", NOW_MS).remaining == expected
        assert (path / "snapshot").read_bytes()[:8] == b"TARIFFS2"
        assert len(journal.dedupe_segment_bytes()) >= 1
        assert recover(journal).encode_snapshot() == billing.encode_snapshot()
    journal.close()


def test_each_snapshot_stores_only_the_changes_and_recovery_gives_the_state_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base first, then segments of about 40 bytes an id accepted since the snapshot before; recovering from any
    of them (replaying the journal after it) gives the live state's bytes, and so does a compaction's merge."""
    monkeypatch.setattr(segment_compaction, "DEDUPE_COMPACT_FACTOR", 1000.0)  # no compaction between the snapshots
    monkeypatch.setattr(snapshotting, "SEGMENT_PART_BYTES", 64)  # segments and the merge made in many parts
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=64 * MiB)
    sizes: list[list[int]] = []
    states: list[bytes] = []

    async def body(sequencer: Sequencer) -> None:
        await _ingested(sequencer, *(f"t{i}" for i in range(100)))
        await sequencer.snapshots.take()
        for round_ in range(3):
            result = await _ingested(sequencer, f"t{round_}", f"u{round_}")  # one resend, one new id
            assert (result.accepted, result.duplicates) == (1, 1)
            await sequencer.snapshots.take()
            sizes.append(journal.dedupe_segment_bytes())
            states.append(sequencer.billing.encode_snapshot())
            assert recover(journal).encode_snapshot() == states[-1]

    billing = run_with(journal, body)  # type: ignore[arg-type]
    base = sizes[0][0]
    assert base > 100 * 40
    assert [len(s) for s in sizes] == [2, 3, 4]
    assert all(40 <= s[-1] < 60 for s in sizes), sizes  # one entry each
    assert recover(journal).encode_snapshot() == billing.encode_snapshot()
    # The base and three segments: close() stored nothing more, the last snapshot being of the last record.
    assert _segment_files(tmp_path / "journal") == [f"segment.{n:020d}" for n in range(1, 5)]
    journal.compact_dedupe_segments(len(journal.dedupe_segment_bytes()), snapshotting._merge_segments)
    assert _segment_files(tmp_path / "journal") == [f"segment.{5:020d}"]
    assert journal.dedupe_segment_bytes()[0] == base + 3 * 40
    assert recover(journal).encode_snapshot() == billing.encode_snapshot()
    journal.close()


def test_segments_are_compacted_on_the_snapshot_thread_once_due_but_not_at_shutdown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(segment_compaction, "DEDUPE_SEGMENTS_MAX", 3)
    monkeypatch.setattr(segment_compaction, "DEDUPE_COMPACT_FACTOR", 1000.0)  # only the count compacts
    journal = MemoryJournal()
    counts: list[int] = []
    base_bytes: set[int] = set()

    async def body(sequencer: Sequencer) -> None:
        await _ingested(sequencer, *(f"t{i}" for i in range(100)))
        for round_ in range(6):
            await _ingested(sequencer, f"u{round_}")
            await sequencer.snapshots.take()
            counts.append(len(journal.dedupe_segment_bytes()))
            base_bytes.add(journal.dedupe_segment_bytes()[0])
        await _ingested(sequencer, "v")  # a record after the last snapshot: close() stores one

    billing = run_with(journal, body)
    assert counts == [1, 2, 3, 2, 3, 3], "a fourth merged the newest from the oldest the ones after it add up to"
    assert len(base_bytes) == 1, "the base is not rewritten to merge the changes after it"
    assert len(journal.dedupe_segment_bytes()) == 4, "close() stores a fourth and does not wait for a compaction"
    assert recover(journal).encode_snapshot() == billing.encode_snapshot()


def test_when_segments_are_compacted() -> None:
    most = segment_compaction.DEDUPE_SEGMENTS_MAX

    def due(sizes_mib: Sequence[float], table_mib: float) -> int:
        return segments_to_compact([round(size * MiB) for size in sizes_mib], round(table_mib * MiB))

    assert due([], 0) == due([1], 1) == 0
    # A window filling: the segments add up to the table, so they are merged only when too many, never the base.
    assert due([100, 100, 100], 300) == 0, "no waste and few: nothing merges"
    assert due([1] + [100] * (most - 1), 1 + 100 * (most - 1)) == 0
    assert due([1] + [100] * most, 1 + 100 * most) == most, "too many: all after the base merge"
    assert due([1, 2000, 700] + [100] * (most - 2), 3301) == most - 2, (
        "from the oldest after the base that the newer ones add up to"
    )
    falling = [3**k for k in range(most, -1, -1)]  # each more than twice all after it
    assert len(falling) == most + 1
    assert due(falling, sum(falling)) == most, "none reached by the ones after it: all but the base"
    # A window sliding: ids removed since the base (and their removals) are waste a restore would read.
    assert due([100, 20, 30], 100) == 0, "the segments hold 1.5 times the table: not yet"
    assert due([100, 20, 31], 100) == 3, "more than 1.5 times the table: all merge, the base too"
    assert due([100, 60], 100) == 2
    assert due([0.01, 0.01, 0.01], 0.01) == 0, "waste under DEDUPE_WASTE_BYTES_MIN is left"
    assert due([0.01, 0.1], 0.01) == 2


def test_a_filling_window_never_rewrites_its_base_and_a_sliding_one_is_merged_back_to_its_table() -> None:
    """Ids only added: each snapshot stores one more segment, and none is merged while they are few. Then every
    one of them expires and a sweep of each key range (one range per accepted batch) removes them: the removals
    make the segments more than 1.5 times the table, so all merge into one base of the table, and recovering from
    it gives the live state."""
    journal = MemoryJournal()
    clock = [NOW_MS]
    sizes: list[list[int]] = []
    ranges = 1 << 12  # dedupe.rs PRUNE_RANGE_BITS: a batch sweeps one range

    async def body(sequencer: Sequencer) -> None:
        for round_ in range(4):
            await _ingested(sequencer, *(f"r{round_}-{i}" for i in range(2_000)))
            await sequencer.snapshots.take()
            sizes.append(journal.dedupe_segment_bytes())
        clock[0] = NOW_MS + 2 * DAY_MS + 1  # every id above is past the window and the day pruning waits more
        await asyncio.gather(*(sequencer.submit(batch(event(f"late-{i}"))) for i in range(ranges)))
        await sequencer.snapshots.take()
        sizes.append(journal.dedupe_segment_bytes())

    billing = run_with(journal, body, clock=lambda: clock[0], dedupe_window_ms=DAY_MS)
    assert [len(s) for s in sizes] == [1, 2, 3, 4, 1], sizes
    assert len({s[0] for s in sizes[:4]}) == 1, "the base is not rewritten while the window fills"
    live_base_bytes = billing.kernel.snapshot_segmented(MiB, True)[1].table_base_bytes
    assert sizes[4] == [live_base_bytes] and live_base_bytes < sum(sizes[3]), "the new base is the live table alone"
    assert recover(journal, dedupe_window_ms=DAY_MS).encode_snapshot() == billing.encode_snapshot()


class _RefusingJournal(MemoryJournal):
    """Refuses its second snapshot with a full disk, and records each save's segment kind."""

    def __init__(self) -> None:
        super().__init__()
        self.saves: list[bool | None] = []

    def save_snapshot(self, seq: int, blob: SnapshotBlob, segment: DedupeSegmentSave | None = None) -> None:
        self.saves.append(None if segment is None else segment.base)
        if len(self.saves) == 2:
            raise JournalFull("no room")
        super().save_snapshot(seq, blob, segment)


def test_after_a_snapshot_the_disk_had_no_room_for_the_next_one_stores_the_whole_table() -> None:
    """The refused snapshot's changes are in no file: the one after is a base, and recovery gives the state."""
    journal = _RefusingJournal()

    async def body(sequencer: Sequencer) -> None:
        for round_ in range(3):
            await _ingested(sequencer, f"t{round_}")
            await sequencer.snapshots.take()

    billing = run_with(journal, body)
    assert journal.saves == [True, False, True]  # close() stores none: the last snapshot is of the last record
    assert recover(journal).encode_snapshot() == billing.encode_snapshot()


def _stored_with_segments(path: Path) -> LmdbJournal:
    """A journal whose snapshot at seq 2 lists a base and one segment of changes (bytes the journal does not read)."""
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")])
    journal.save_snapshot(1, [b"state@1"], DedupeSegmentSave([b"base"], base=True))
    journal.save_snapshot(2, [b"state@2"], DedupeSegmentSave([b"delta"], base=False))
    return journal


STORED = (2, b"state@2", [b"base", b"delta"])


def _written(*parts: bytes) -> SegmentWriter:
    """A segment's writer, as the kernel's: each part handed over in turn; the bytes."""

    def write_to(write: Callable[[bytes], object]) -> int:
        for part in parts:
            write(part)
        return sum(len(part) for part in parts)

    return write_to


@pytest.mark.parametrize("room_bytes", [0, 3, 30])
@pytest.mark.parametrize("by_writer", [False, True])
def test_a_full_disk_during_a_store_keeps_the_stored_snapshot_and_its_segments(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, room_bytes: int, by_writer: bool
) -> None:
    """In the segment (0, 3 bytes of room) or in the snapshot file after it (30): JournalFull, nothing changed; with
    the segment in parts or made part by part as it is written."""
    path = tmp_path / "journal"
    journal = _stored_with_segments(path)
    files = _segment_files(path)
    changes: SegmentParts = _written(b"chan", b"ges") if by_writer else [b"changes"]
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk_with_room(room_bytes))
        with pytest.raises(JournalFull):
            journal.save_snapshot(3, [b"state@3"], DedupeSegmentSave(changes, base=False))
    assert _loaded(journal) == STORED
    assert _segment_files(path) == files
    assert sorted(p.name for p in path.iterdir() if not p.name.startswith("segment.")) == [
        "data.mdb",
        "lock.mdb",
        "snapshot",
    ]
    with monkeypatch.context() as patch:
        patch.setattr(os, "write", disk_with_room(room_bytes))
        with pytest.raises(JournalFull):
            journal.compact_dedupe_segments(
                2,
                lambda segments, base: (
                    _written(*[bytes(s) for s in segments] * 8) if by_writer else [b"".join(segments) * 8]
                ),
            )
    assert _loaded(journal) == STORED
    assert _segment_files(path) == files
    journal.close()


def _killed_at(path: Path, step: str, nth: int, action: Callable[[LmdbJournal], None]) -> None:
    """Runs `action` on the journal at `path` in a child process that kill -9s itself at the `nth` call of `step`
    (os.replace: the snapshot file's rename; unlink: deleting a segment file the renamed snapshot no longer lists)."""
    pid = os.fork()
    if pid == 0:  # the child: never returns to pytest
        try:
            journal = LmdbJournal(path, map_size_bytes=4 * MiB)
            calls = 0

            def killing(*args: object, **kwargs: object) -> None:
                nonlocal calls
                calls += 1
                if calls == nth:
                    os.kill(os.getpid(), signal.SIGKILL)
                original(*args, **kwargs)  # type: ignore[operator]

            if step == "os.replace":
                original: object = os.replace
                os.replace = killing
            else:
                original = Path.unlink
                Path.unlink = killing  # type: ignore[method-assign]
            action(journal)
        finally:
            os._exit(1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"not killed at {step}"


def _merge(segments: list[bytes], base: bool) -> list[bytes]:
    return [b"+".join(segments) + (b"!" if base else b"")]


CASES = {
    # (the step killed at, its call, what the child did, what the next open loads)
    "a segment written, the snapshot not renamed": (
        "os.replace",
        1,
        lambda j: j.save_snapshot(3, [b"state@3"], DedupeSegmentSave([b"changes"], base=False)),
        STORED,
    ),
    "a base written and listed, the segments it replaces not deleted": (
        "unlink",
        1,
        lambda j: j.save_snapshot(3, [b"state@3"], DedupeSegmentSave([b"whole"], base=True)),
        (3, b"state@3", [b"whole"]),
    ),
    "a compaction's merge written, the snapshot not renamed": (
        "os.replace",
        1,
        lambda j: j.compact_dedupe_segments(2, _merge),
        STORED,
    ),
    "a compaction renamed, one of the segments it merged deleted": (
        "unlink",
        2,
        lambda j: j.compact_dedupe_segments(2, _merge),
        (2, b"state@2", [b"base+delta!"]),
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_a_kill_at_any_step_of_a_store_or_a_compaction_recovers_a_whole_snapshot(tmp_path: Path, case: str) -> None:
    step, nth, action, expected = CASES[case]
    path = tmp_path / "journal"
    _stored_with_segments(path).close()
    _killed_at(path, step, nth, action)
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert _loaded(journal) == expected
    assert len(_segment_files(path)) == len(expected[2]), "the files no snapshot lists are deleted at open"
    assert "snapshot.partial" not in os.listdir(path)
    # And the journal goes on: a snapshot of changes follows the ones loaded.
    journal.save_snapshot(3, [b"state@3+"], DedupeSegmentSave([b"more"], base=False))
    assert _loaded(journal) == (3, b"state@3+", [*expected[2], b"more"])
    journal.close()


def test_a_segment_of_changes_needs_a_snapshot_with_segments_to_follow(tmp_path: Path) -> None:
    for journal in (MemoryJournal(), LmdbJournal(tmp_path / "journal", map_size_bytes=4 * MiB)):
        journal.commit([(1, b"a")])
        journal.save_snapshot(1, b"state@1")
        with pytest.raises(ValueError, match="needs a stored snapshot with segments"):
            journal.save_snapshot(1, b"state@1", DedupeSegmentSave([b"changes"], base=False))
        assert _loaded(journal) == (1, b"state@1", [])
        journal.close()


def _compiled() -> Billing:
    """An empty Billing with its tables compiled, as the writer compiles them before it encodes a snapshot."""
    billing = Billing()
    billing.refresh_tables()
    return billing


def test_a_snapshot_head_without_its_segments_is_refused() -> None:
    """Restoring the kernel's half alone would give an empty dedupe table: every resend accepted again."""
    billing = _compiled()
    head, segment = billing.kernel_snapshot_segmented(base=True)
    with pytest.raises(ValueError, match="in segments"):
        Kernel.restore(b"".join(head))
    parts: list[bytes] = []
    assert segment.write_to(parts.append, 1) == 3, "an empty table's base: its format and two lengths"
    assert parts == [b"\x01", b"\x00", b"\x00"], "handed over a part at a time"
    assert Kernel.restore(b"".join(head), [b"".join(parts)]).snapshot() == billing.kernel.snapshot()
    with pytest.raises(RuntimeError, match="written already"):
        segment.write_to(parts.append, 1 << 20)


def test_what_a_segments_write_raises_ends_the_segment_and_is_raised_as_it_was() -> None:
    _, segment = _compiled().kernel_snapshot_segmented(base=True)
    parts: list[bytes] = []
    full = OSError(28, "No space left on device")

    def write(part: bytes) -> None:
        if parts:
            raise full
        parts.append(part)

    with pytest.raises(OSError) as raised:
        segment.write_to(write, 1)
    assert raised.value is full
    assert parts == [b"\x01"], "nothing made after the refused part"


def test_a_segment_of_changes_is_refused_by_a_kernel_that_does_not_log_them() -> None:
    with pytest.raises(RuntimeError, match="a base is due"):
        _compiled().kernel_snapshot_segmented(base=False)


def test_a_segmented_snapshot_newer_than_an_earlier_releases_snapshot_in_the_map_loads_with_its_segments(
    tmp_path: Path,
) -> None:
    """A kill between the file's rename and the drop of the map's copy leaves both: the newer, the file, is loaded,
    with its segments."""
    path = tmp_path / "journal"
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    journal.commit([(1, b"a"), (2, b"b"), (3, b"c")])
    journal.save_snapshot(3, [b"state@3"], DedupeSegmentSave([b"base"], base=True))
    journal.close()
    with lmdb.open(str(path), max_dbs=4) as env, env.begin(write=True) as txn:
        txn.put((2).to_bytes(8, "big"), b"state@2, in the map", db=env.open_db(b"snapshots", txn=txn))
    journal = LmdbJournal(path, map_size_bytes=4 * MiB)
    assert _loaded(journal) == (3, b"state@3", [b"base"])
    journal.close()
