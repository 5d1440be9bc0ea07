"""server/backup.py's copy of the snapshot file and its dedupe segments while the snapshot's thread replaces them
(the rest of `tariff backup` over the wire: tests/test_backup_wire.py).

The snapshot files are written here by `_SnapshotFile`, as LmdbJournal writes them, without LMDB (LMDB must not
be opened twice in one process). Snapshot k's blob is `snapshot k` repeated; the segment saved with it holds `[k]`,
a base every BASE_EVERY snapshots; a merge concatenates. So the segments of the snapshot at seq k hold, in order,
`[b][b+1]...[k]` where b is the last base's seq."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from server.backup import BackupFailed, _copy_snapshot
from server.journal import DedupeSegmentSave, Segment, SegmentParts, _SnapshotFile, segment_file_name

BASE_EVERY = 7
COPIES = 60


def blob(seq: int) -> bytes:
    return f"snapshot {seq} ".encode() * 200


def merged(segments: list[Segment], _base: bool) -> SegmentParts:
    return [b"".join(bytes(segment) for segment in segments)]


def churn(directory: Path, stop: threading.Event, saved: list[int]) -> None:
    """Saves snapshot after snapshot, merging the newest segments once there are more than 4."""
    snapshots = _SnapshotFile(directory, sync=False)
    seq = 0
    while not stop.is_set() or seq < 3 * BASE_EVERY:
        snapshots.save(seq, blob(seq), DedupeSegmentSave([f"[{seq}]".encode()], base=seq % BASE_EVERY == 0))
        if len(snapshots.segments) > 4:
            snapshots.compact(3, merged)
        saved.append(seq)
        seq += 1


def test_a_copy_taken_while_snapshots_and_merges_replace_the_files_is_one_whole_snapshot(tmp_path: Path) -> None:
    source = tmp_path / "journal"
    source.mkdir()
    stop = threading.Event()
    saved: list[int] = []
    writer = threading.Thread(target=churn, args=(source, stop, saved), daemon=True)
    writer.start()
    try:
        while not saved:
            stop.wait(0.001)
        for copy in range(COPIES):
            target = tmp_path / f"copy-{copy}"
            target.mkdir()
            seq, segments, _ = _copy_snapshot(source, target)
            assert seq is not None
            restored = _SnapshotFile(target, sync=False)
            assert (restored.seq, len(restored.segments)) == (seq, segments)
            assert restored.load() == (seq, blob(seq))
            listed = b"".join(bytes(segment) for segment in restored.load_segments())
            base_seq = seq - seq % BASE_EVERY
            assert listed == b"".join(f"[{k}]".encode() for k in range(base_seq, seq + 1)), (seq, listed)
    finally:
        stop.set()
        writer.join(30)
    assert len(saved) > 1


def test_a_snapshot_whose_segment_stays_missing_fails_the_backup(tmp_path: Path) -> None:
    source = tmp_path / "journal"
    source.mkdir()
    _SnapshotFile(source, sync=False).save(5, blob(5), DedupeSegmentSave([b"[5]"], base=True))
    (source / segment_file_name(1)).unlink()
    target = tmp_path / "copy"
    target.mkdir()
    with pytest.raises(BackupFailed, match="was replaced 20 times"):
        _copy_snapshot(source, target)
    assert not list(target.iterdir())
