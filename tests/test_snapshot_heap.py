"""A snapshot's parts leave no heap behind once freed: the server fixes glibc's mmap threshold at start, so each
part (1 MiB) is a map of its own, unmapped when freed. It used to trim the heap after each snapshot instead
(malloc_trim(0)), which holds each arena's lock while it walks the arena: the event loop, allocating meanwhile,
waited for it."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from server import sequencer as sequencer_module
from server.journal import MemoryJournal
from server.sequencer import Sequencer
from tests.test_sequencer import batch, event, run_with

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="not glibc")

# In a fresh interpreter: 200 parts of 1 MiB made with a small live object after each (as a snapshot's parts are
# made between the server's other allocations), then the parts freed; prints the anonymous heap's growth in MiB
# that the freed parts left behind.
_PARTS_LEFT_BEHIND = """
import sys
from server.sequencer import fix_mmap_threshold

def rss_anon_mib() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no RssAnon")

if sys.argv[1] == "fixed":
    assert fix_mmap_threshold()
freed = bytearray(8 << 20)  # a large block freed: glibc's own threshold moves up past 1 MiB
del freed
before = rss_anon_mib()
parts, pins = [], []
for _ in range(200):
    parts.append(b"p" * (1 << 20))  # written, as a snapshot part is
    pins.append(bytearray(4096))
del parts
print(rss_anon_mib() - before)
"""


def _left_behind_mib(mode: str) -> float:
    result = subprocess.run(
        [sys.executable, "-c", _PARTS_LEFT_BEHIND, mode], capture_output=True, text=True, check=True, timeout=60
    )
    return float(result.stdout)


@glibc_only
def test_with_the_threshold_fixed_freed_parts_leave_no_heap_behind() -> None:
    assert _left_behind_mib("fixed") < 20  # the pins: 200 x 4 KiB, and the interpreter's own


@glibc_only
def test_without_it_glibc_keeps_the_freed_parts_pages() -> None:
    """The case the fixed threshold exists for: glibc's moving threshold serves the parts from the heap, and
    freeing them between live objects hands nothing back."""
    assert _left_behind_mib("default") > 150


def test_a_snapshot_does_not_trim_the_heap(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = MemoryJournal()
    trims: list[int] = []

    def recording_trim(pad: int) -> int:
        trims.append(pad)
        return 1

    monkeypatch.setattr(sequencer_module, "_malloc_trim", recording_trim)

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("t1")))
        await sequencer._snapshot()
        assert journal.load_snapshot() is not None
        assert trims == []

    run_with(journal, body)


@glibc_only
def test_malloc_trim_and_mallopt_are_found_on_glibc() -> None:
    """The server's platform (Linux with glibc, as in the Dockerfile) has both; elsewhere the server runs with
    neither (recovery's trim and the threshold are then the C library's own business)."""
    assert sequencer_module._malloc_trim is not None
    assert sequencer_module._malloc_trim(0) in (0, 1)
    assert sequencer_module._mallopt is not None
