"""What writing new file pages costs this host's CPU, by the size of each write, and what the journal's pages ahead
(server/pages_ahead.py) save a commit: `python -m server.bench.page_writes [--dir DIR]`.

Prints the CPU time (this thread's, so the disk's speed is left out) of: appending 32 MiB to a new file in writes of
4 KiB to 2 MiB, per 300 KB written (about one group commit of the bench's ingest); writing the same bytes again
into pages the page cache holds; and 300 LMDB commits of three 100 KB records (sync on), plain and with
`PagesAhead`, per commit, with the bytes the process wrote to disk per commit. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import lmdb

from server.pages_ahead import PagesAhead

FILE_BYTES = 32 * 1024 * 1024
GROUP_BYTES = 300_000
COMMITS = 300
RECORD_BYTES = 100_000


def append_ms_per_group(directory: Path, write_bytes: int, again: bool = False) -> float:
    """CPU ms per GROUP_BYTES appended to a new file in writes of `write_bytes` (`again`: written a second time)."""
    fd = os.open(directory / f"append-{write_bytes}-{again}", os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    chunk = b"x" * write_bytes
    try:
        for _ in range(2 if again else 1):
            started = time.thread_time()
            for offset in range(0, FILE_BYTES, write_bytes):
                os.pwrite(fd, chunk, offset)
            spent_s = time.thread_time() - started
    finally:
        os.close(fd)
    return spent_s / FILE_BYTES * GROUP_BYTES * 1e3


def commit_ms(directory: Path, ahead: bool) -> tuple[float, float]:
    """CPU ms per LMDB commit of three records, and KB the process wrote to disk per commit."""
    env = lmdb.open(str(directory), map_size=8 << 30, sync=True, metasync=True)
    pages_ahead = PagesAhead(directory / "data.mdb", env.info()["map_size"])
    record, page_bytes, spent_s = os.urandom(RECORD_BYTES), env.stat()["psize"], 0.0
    written_before = _written_bytes()
    for commit in range(COMMITS):
        started = time.thread_time()
        with env.begin(write=True) as txn:
            for index in range(3):
                txn.put((commit * 3 + index).to_bytes(8, "big"), record, append=True)
        if ahead:
            pages_ahead.after_commit((env.info()["last_pgno"] + 1) * page_bytes)
        spent_s += time.thread_time() - started
    pages_ahead.close()
    env.close()
    return spent_s / COMMITS * 1e3, (_written_bytes() - written_before) / COMMITS / 1024


def _written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", type=Path, default=None, help="where to write (a temporary directory by default)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as work:
        directory = Path(work)
        for write_bytes in (4096, 16384, 65536, 131072, 262144, 2 * 1024 * 1024):
            ms = append_ms_per_group(directory, write_bytes)
            print(f"append in writes of {write_bytes:>9,} B: {ms:.3f} ms CPU per {GROUP_BYTES:,} B")
        ms = append_ms_per_group(directory, 262144, again=True)
        print(f"the same writes of 262,144 B into cached pages: {ms:.3f} ms CPU per {GROUP_BYTES:,} B")
        for ahead in (False, True, False, True):
            environment = directory / f"lmdb-{ahead}-{time.monotonic_ns()}"
            ms, written_kb = commit_ms(environment, ahead)
            label = "with pages ahead" if ahead else "plain"
            print(f"LMDB commit of 3 x {RECORD_BYTES:,} B, {label}: {ms:.3f} ms CPU, {written_kb:.0f} KB to disk")


if __name__ == "__main__":
    main()
