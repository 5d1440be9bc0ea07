"""A rebuild after a failed commit (Sequencer._rebuild) replays the journal on the event loop and writes what it
replays into the explain index, while the index's own thread may still be writing the records of the groups committed
before: two writers at once. LMDB runs their write transactions one after the other; each must then read the covered
seq the other left, or the second deletes the first's chunks as "past the covered seq" and the index says it covers
events it no longer holds."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest

import server.explain_index as explain_index
from engine._kernel import explain_block
from server.explain_index import ExplainIndex, IndexedEvent, parse_events
from tests.test_explain_index_blocks import _paged, _record

WAIT_S = 60  # a guard against a hang, never reached when the test passes or fails


class _Env:
    """The index's LMDB environment, telling when a thread other than the index's begins a write transaction."""

    def __init__(self, env: Any, began: threading.Event) -> None:
        self._env = env
        self._began = began

    def begin(self, **kwargs: Any) -> Any:
        if kwargs.get("write") and threading.current_thread().name != "tariff-explain":
            self._began.set()
        return self._env.begin(**kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._env, name)


def _events(index: ExplainIndex) -> list[IndexedEvent]:
    return _paged(index, "acme", "images", 10)


def test_a_replay_writing_while_the_index_thread_writes_loses_none_of_its_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(explain_index, "FLUSH_EVERY_S", 0.0)  # the thread writes what it is handed at once
    inside = threading.Event()  # the index's thread is inside its write transaction
    release = threading.Event()

    def blocking(*args: Any) -> Any:
        if threading.current_thread().name == "tariff-explain":
            inside.set()
            assert release.wait(WAIT_S)
        return explain_block(*args)

    monkeypatch.setattr(explain_index, "explain_block", blocking)
    index = ExplainIndex(tmp_path / "explain", map_size_bytes=1 << 24)
    began = threading.Event()
    index._env = _Env(index._env, began)  # type: ignore[assignment]
    records, expected = [], []
    for seq in range(1, 5):
        record, part = _record(seq, "acme", "images", f"t{seq}", seq * 1000)
        records.append(record)
        expected += parse_events(part)
    # The groups committed before the failure: records 1-4, handed to the index's thread.
    index.submit(records, 4)
    assert inside.wait(WAIT_S)
    # The rebuild's replay, from the covered seq it found (0), writes its first records meanwhile (1-2).
    replay = threading.Thread(target=index.write, args=(records[:2], 2))
    replay.start()
    assert began.wait(WAIT_S)
    release.set()
    replay.join(WAIT_S)
    assert not replay.is_alive()
    assert index.wait_covered(4, WAIT_S)
    assert _events(index) == expected
    index.close()
    reopened = ExplainIndex(tmp_path / "explain", map_size_bytes=1 << 24)
    try:
        assert reopened.covered_seq() == 4
        assert _events(reopened) == expected
    finally:
        reopened.close()
