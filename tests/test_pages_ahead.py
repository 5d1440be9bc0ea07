"""server/pages_ahead.py: the journal's next pages are reserved past LMDB's used ones, up to the map and no further,
the pages far behind them are let go of, the journal reads back every record after both, and a file system that
refuses the reservation only turns it off."""

from __future__ import annotations

import errno
import itertools
import os
from pathlib import Path

import pytest

from server.journal import LmdbJournal
from server.pages_ahead import AHEAD_BYTES, BEHIND_BYTES, WILLNEED_STEP_BYTES, PagesAhead

KiB, MiB = 1024, 1024 * 1024


def test_the_pages_past_the_used_ones_are_reserved_once_half_are_used_and_never_past_the_map(tmp_path: Path) -> None:
    data_file = tmp_path / "data.mdb"
    data_file.write_bytes(b"")
    pages_ahead = PagesAhead(data_file, map_size_bytes=3 * MiB, ahead_bytes=1 * MiB)
    try:
        pages_ahead.after_commit(used_bytes=0)
        assert data_file.stat().st_size == 1 * MiB
        pages_ahead.after_commit(used_bytes=256 * KiB)  # 768 KiB still ahead: more than half
        assert data_file.stat().st_size == 1 * MiB
        pages_ahead.after_commit(used_bytes=768 * KiB)  # 256 KiB ahead: topped up to 1 MiB past the used
        assert data_file.stat().st_size == 768 * KiB + 1 * MiB
        pages_ahead.after_commit(used_bytes=2560 * KiB)
        assert data_file.stat().st_size == 3 * MiB  # the map's end, not 3.5 MiB
    finally:
        pages_ahead.close()
    assert data_file.read_bytes() == bytes(3 * MiB)  # reserved reads back as zeros: nothing was written


def test_a_journal_reserved_ahead_reads_back_every_record_after_a_reopen(tmp_path: Path) -> None:
    records = [(seq, os.urandom(100_000)) for seq in range(1, 61)]
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=64 * MiB)
    for start in range(0, len(records), 3):
        journal.commit(records[start : start + 3])
    used_bytes = journal.stats().used_bytes
    journal.close()
    assert (tmp_path / "journal" / "data.mdb").stat().st_size >= used_bytes + AHEAD_BYTES // 2
    reopened = LmdbJournal(tmp_path / "journal", map_size_bytes=64 * MiB)
    try:
        assert list(reopened.read_records(0)) == records
        reopened.commit([(61, b"after the reopen")])
        assert list(reopened.read_records(60)) == [(61, b"after the reopen")]
    finally:
        reopened.close()


def test_a_refused_reservation_turns_it_off_and_the_commits_still_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[int] = []

    def no_room(fd: int, offset: int, length: int) -> None:
        asked.append(length)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "posix_fallocate", no_room)
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=64 * MiB)
    try:
        for seq in range(1, 31):
            journal.commit([(seq, os.urandom(100_000))])
        assert len(asked) == 1  # tried once, then off
        assert journal.last_seq() == 30 and len(list(journal.read_records(0))) == 30
    finally:
        journal.close()


def test_the_pages_are_asked_in_in_steps_no_readahead_window_is_below(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Linux reads at most one readahead window (128 KiB by default) per WILLNEED call: a range asked whole would be
    read in only in part on such a device."""
    asked: list[tuple[int, int]] = []
    advise = os.posix_fadvise

    def recorded(fd: int, offset: int, length: int, advice: int) -> None:
        asked.append((offset, length))
        advise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recorded)
    data_file = tmp_path / "data.mdb"
    data_file.write_bytes(b"")
    pages_ahead = PagesAhead(data_file, map_size_bytes=64 * MiB, ahead_bytes=1 * MiB + 4 * KiB)
    try:
        pages_ahead.after_commit(used_bytes=8 * KiB)
    finally:
        pages_ahead.close()
    assert all(length <= WILLNEED_STEP_BYTES for _, length in asked)
    covered = [(offset, offset + length) for offset, length in asked]
    assert covered[0][0] == 8 * KiB and covered[-1][1] == 8 * KiB + 1 * MiB + 4 * KiB
    assert all(end == following for (_, end), (following, _) in itertools.pairwise(covered))


def test_the_pages_further_back_than_behind_bytes_are_let_go_of_once_each_in_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    let_go: list[tuple[int, int]] = []
    advise = os.posix_fadvise

    def recorded(fd: int, offset: int, length: int, advice: int) -> None:
        if advice == os.POSIX_FADV_DONTNEED:
            let_go.append((offset, offset + length))
        advise(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", recorded)
    data_file = tmp_path / "data.mdb"
    data_file.write_bytes(b"")
    pages_ahead = PagesAhead(data_file, map_size_bytes=64 * MiB, ahead_bytes=1 * MiB, behind_bytes=2 * MiB)
    try:
        for used_bytes in range(0, 2 * MiB + 1, 256 * KiB):
            pages_ahead.after_commit(used_bytes)
        assert let_go == [], "nothing is 2 MiB behind yet"
        for used_bytes in range(2 * MiB, 8 * MiB + 1, 256 * KiB):
            pages_ahead.after_commit(used_bytes)
            assert all(end <= used_bytes - 2 * MiB for _, end in let_go), "the last 2 MiB stay"
    finally:
        pages_ahead.close()
    assert let_go[0][0] == 0 and let_go[-1][1] >= 6 * MiB - 512 * KiB
    assert all(end == following for (_, end), (following, _) in itertools.pairwise(let_go)), "each page once"


def test_a_journal_whose_pages_behind_were_let_go_of_reads_back_every_record(tmp_path: Path) -> None:
    records = [(seq, os.urandom(100_000)) for seq in range(1, BEHIND_BYTES // 100_000 + 60)]
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=64 * MiB)
    try:
        for start in range(0, len(records), 10):
            journal.commit(records[start : start + 10])
        assert journal.stats().used_bytes > BEHIND_BYTES + 4 * MiB
        assert list(journal.read_records(0)) == records
    finally:
        journal.close()
