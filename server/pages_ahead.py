"""Keeps the pages just past an LMDB environment's last page in the page cache, so that its commits overwrite cached
pages instead of making the page cache allocate new ones.

A journal commit appends pages: LMDB writes them with one pwrite(2) per run of contiguous pages, up to 256 KiB. On
the development machine (a Firecracker VM, Linux 6.18, ext4), a write of more than 64 KiB into pages the page cache
does not hold yet takes about 20 times the CPU per byte of a write of 64 KiB or less, and about 60 times that of a
write into cached pages (1.2-1.7 ms for 300 KB against 0.06 and 0.02; `python -m server.bench.page_writes`).
So after each commit the journal's thread reserves the next `ahead_bytes` of the data file (fallocate: blocks
reserved, read back as zeros) and asks for them to be read in (POSIX_FADV_WILLNEED: clean pages, nothing written).
LMDB reads no page past its last committed one and writes every page it allocates before any meta page names it, so
the zeros are never read as data; the file is only longer than LMDB's pages, as it is with LMDB's own `writemap`.

Best effort: speed is all it changes. The first OSError (no room for the reservation, a file system without
fallocate) turns it off, and LMDB then allocates its pages as it always did.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

AHEAD_BYTES = 2 * 1024 * 1024  # about 5 commits of the bench's ingest: a few ms of journal at 400,000 events/s
# Linux reads at most one readahead window per WILLNEED call and drops the rest of the range; the window is the
# device's (8 MiB here, 128 KiB by default), so the range is asked for in steps no device's window is below.
WILLNEED_STEP_BYTES = 128 * 1024


class PagesAhead:
    """The next `ahead_bytes` past an environment's used pages, reserved and in the page cache."""

    def __init__(self, data_file: Path, map_size_bytes: int, ahead_bytes: int = AHEAD_BYTES) -> None:
        assert ahead_bytes > 0, ahead_bytes
        self._data_file = data_file
        self._map_size_bytes = map_size_bytes
        self._ahead_bytes = ahead_bytes
        self._ready_until_bytes = 0  # the file's bytes [.., ready_until) are reserved and were asked in
        self._fd: int | None = None
        self._on = hasattr(os, "posix_fallocate") and hasattr(os, "posix_fadvise")

    def after_commit(self, used_bytes: int) -> None:
        """Called after a commit, on the thread that commits, with the bytes of the pages LMDB now uses: tops the
        pages ready past them up to `ahead_bytes` once half of them are used, never past the map."""
        if not self._on or self._ready_until_bytes - used_bytes >= self._ahead_bytes // 2:
            return
        start = max(used_bytes, self._ready_until_bytes)
        end = min(used_bytes + self._ahead_bytes, self._map_size_bytes)
        if end <= start:
            return
        try:
            if self._fd is None:
                self._fd = os.open(self._data_file, os.O_RDWR)
            os.posix_fallocate(self._fd, start, end - start)
            for step in range(start, end, WILLNEED_STEP_BYTES):
                os.posix_fadvise(self._fd, step, min(WILLNEED_STEP_BYTES, end - step), os.POSIX_FADV_WILLNEED)
        except OSError as exc:
            log.warning("journal pages ahead turned off (%s): commits allocate their pages as they go", exc)
            self._on = False
            return
        self._ready_until_bytes = end

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
