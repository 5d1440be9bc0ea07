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

Behind the used pages it lets go of the file's pages more than `behind_bytes` back (POSIX_FADV_DONTNEED): once
committed (and synced) they are read again only by a recovery, and a page cache that keeps every page of a journal
that only grows takes a new page for every page written. On the development machine, whose host takes back the
memory its guest frees, a page new to the guest cost 14-21 µs at times (touching 2 GB of new memory a page at a
time). The journal's thread, `python -m server.bench.thread_cpu` (runs of 1,500,000 events, two invocations each,
alternating): while new pages were slow, 0.27-0.44 µs of CPU an event with the pages behind let go against
0.31-0.93 without; while they were not, 0.37-0.49 against 0.26-0.43 (letting go costs a little). Linux keeps the
pages a mapping has touched (LMDB reads its meta and branch pages through its map), so those stay cached.

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
BEHIND_BYTES = 16 * 1024 * 1024  # the pages the last commits wrote (their branch pages, rewritten each commit) stay


class PagesAhead:
    """The next `ahead_bytes` past an environment's used pages, reserved and in the page cache; the pages more
    than `behind_bytes` before them let go of."""

    def __init__(
        self, data_file: Path, map_size_bytes: int, ahead_bytes: int = AHEAD_BYTES, behind_bytes: int = BEHIND_BYTES
    ) -> None:
        assert ahead_bytes > 0 and behind_bytes >= 0, (ahead_bytes, behind_bytes)
        self._data_file = data_file
        self._map_size_bytes = map_size_bytes
        self._ahead_bytes = ahead_bytes
        self._ready_until_bytes = 0  # the file's bytes [.., ready_until) are reserved and were asked in
        self._behind_bytes = behind_bytes
        self._let_go_until_bytes = 0  # the file's bytes [.., let_go_until) were let go of
        self._fd: int | None = None
        self._on = hasattr(os, "posix_fallocate") and hasattr(os, "posix_fadvise")

    def after_commit(self, used_bytes: int) -> None:
        """Called after a commit, on the thread that commits, with the bytes of the pages LMDB now uses: tops the
        pages ready past them up to `ahead_bytes` once half of them are used, never past the map, and then lets go
        of the pages more than `behind_bytes` before them."""
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
            let_go_until = used_bytes - self._behind_bytes
            if let_go_until > self._let_go_until_bytes:
                let_go = let_go_until - self._let_go_until_bytes
                os.posix_fadvise(self._fd, self._let_go_until_bytes, let_go, os.POSIX_FADV_DONTNEED)
                self._let_go_until_bytes = let_go_until
        except OSError as exc:
            log.warning("journal pages ahead turned off (%s): commits allocate their pages as they go", exc)
            self._on = False
            return
        self._ready_until_bytes = end

    def close(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
