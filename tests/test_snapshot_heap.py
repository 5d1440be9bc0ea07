"""After a snapshot is stored, the server hands the heap its freed parts occupied back to the system
(glibc's malloc_trim, on the journal's thread): without it, each snapshot left the resident heap larger."""

from __future__ import annotations

import platform

import pytest

from server import heap
from server.journal import MemoryJournal
from server.sequencer import Sequencer
from tests.test_sequencer import batch, event, run_with


def test_the_heap_is_trimmed_once_the_snapshot_is_stored(monkeypatch: pytest.MonkeyPatch) -> None:
    journal = MemoryJournal()
    trims: list[tuple[int, bool]] = []

    def recording_trim(pad: int) -> int:
        trims.append((pad, journal.load_snapshot() is not None))
        return 1

    monkeypatch.setattr(heap, "_malloc_trim", recording_trim)

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("t1")))
        await sequencer.snapshots.take()
        assert trims == [(0, True)]  # all of the free heap, after the snapshot was stored

    run_with(journal, body)


def test_malloc_trim_is_found_on_glibc() -> None:
    """The server's platform (Linux with glibc, as in the Dockerfile) has malloc_trim; elsewhere the server
    runs without trimming."""
    if platform.libc_ver()[0] != "glibc":
        pytest.skip("not glibc")
    assert heap._malloc_trim is not None
    assert heap._malloc_trim(0) in (0, 1)
