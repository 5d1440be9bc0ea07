"""The explain index's blocks (server/explain_index.py, engine/kernel/src/explain_block.rs): explain records written
over several writes, with chunks small enough that a line's events span chunks and blocks, page back as each line's
events in journal order whatever the page size; records written again (a recovery's overlap) are not indexed twice;
an index in the layout before blocks is dropped at open (to be rebuilt by the recovery's replay), and a page token
of that layout is refused."""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

import lmdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import server.explain_index as explain_index
from engine._kernel import Kernel
from server.explain_index import ExplainIndex, IndexedEvent, StaleToken, parse_events

PERIOD_MS = 1_700_000_000_000
LINES = ("tokens;model=a", "tokens;model=b", "images")


def _text(value: str) -> bytes:
    raw = value.encode()
    return struct.pack("<I", len(raw)) + raw


def _record(seq: int, customer: str, line: str, tx: str, amount: int) -> tuple[bytes, bytes]:
    """One explain record in the kernel's layout (engine/kernel/src/explain.rs), and its event part."""
    part = (
        _text(tx)
        + struct.pack("<qI", PERIOD_MS + seq, 2)
        + (3 * 10**18).to_bytes(16, "little", signed=True)
        + amount.to_bytes(16, "little", signed=True)
        + (-amount).to_bytes(16, "little", signed=True)
        + struct.pack("<I", 1)
        + _text("grant-1")
        + amount.to_bytes(16, "little", signed=True)
    )
    return struct.pack("<Q", seq) + _text(customer) + struct.pack("<q", PERIOD_MS) + _text(line) + part, part


Writes = list[list[tuple[str, str]]]  # per write, per event: (customer, line)

writes_strategy = st.lists(
    st.lists(st.tuples(st.sampled_from(["acme", "zeta"]), st.sampled_from(LINES)), max_size=12),
    min_size=1,
    max_size=5,
)


def _write_all(index: ExplainIndex, writes: Writes) -> dict[tuple[str, str], list[IndexedEvent]]:
    """Writes each write's events as one batch per event (seq after seq), returning every line's events."""
    expected: dict[tuple[str, str], list[IndexedEvent]] = defaultdict(list)
    seq = 0
    for events in writes:
        records = []
        for customer, line in events:
            seq += 1
            record, part = _record(seq, customer, line, f"t{seq}", seq * 1000)
            records.append(record)
            expected[customer, line].extend(parse_events(part))
        index.write(records, seq)
    return expected


def _paged(index: ExplainIndex, customer: str, line: str, page_size: int) -> list[IndexedEvent]:
    found: list[IndexedEvent] = []
    token = ""
    while True:
        page = index.page(customer, PERIOD_MS, line, page_size, token)
        assert len(page.events) <= page_size
        found.extend(page.events)
        if not page.next_token:
            return found
        assert len(page.events) == page_size
        token = page.next_token


@settings(max_examples=40, deadline=None)
@given(writes=writes_strategy, page_size=st.integers(min_value=1, max_value=5), chunk_bytes=st.sampled_from([1, 300]))
def test_pages_give_each_lines_events_in_journal_order_across_chunks_and_blocks(
    tmp_path_factory: pytest.TempPathFactory, writes: Writes, page_size: int, chunk_bytes: int
) -> None:
    patch = pytest.MonkeyPatch()
    patch.setattr(explain_index, "CHUNK_BYTES", chunk_bytes)  # 1: a chunk per event; 300: a few events each
    index = ExplainIndex(tmp_path_factory.mktemp("explain"), map_size_bytes=1 << 24)
    try:
        expected = _write_all(index, writes)
        for customer in ("acme", "zeta"):
            for line in LINES:
                assert _paged(index, customer, line, page_size) == expected.get((customer, line), [])
    finally:
        index.close()
        patch.undo()


def test_records_written_again_are_not_indexed_twice(tmp_path: Path) -> None:
    index = ExplainIndex(tmp_path / "explain", map_size_bytes=1 << 22)
    try:
        first = [_record(seq, "acme", "images", f"t{seq}", seq)[0] for seq in (1, 2)]
        index.write(first, 2)
        # A recovery's replay hands the index seq 2 again, with seq 3 after it: only seq 3 is new.
        index.write([first[1], _record(3, "acme", "images", "t3", 3)[0]], 3)
        assert [e.transaction_id for e in _paged(index, "acme", "images", 10)] == ["t1", "t2", "t3"]
        assert index.covered_seq() == 3
    finally:
        index.close()


def test_an_index_in_the_layout_before_blocks_is_dropped_and_its_tokens_refused(tmp_path: Path) -> None:
    path = tmp_path / "explain"
    path.mkdir()
    env = lmdb.open(str(path), map_size=1 << 22, max_dbs=2)
    with env.begin(write=True) as txn:
        older = env.open_db(b"entries", txn=txn)
        meta = env.open_db(b"meta", txn=txn)
        txn.put(b"k" * 24, b"v", db=older)
        txn.put(b"covered_seq", b"41", db=meta)
        txn.put(b"token_secret", b"s" * 32, db=meta)
    env.close()
    index = ExplainIndex(path, map_size_bytes=1 << 22)
    try:
        assert index.covered_seq() == 0  # the recovery replays the journal from its first record
        index.write([_record(1, "acme", "images", "t1", 1)[0], _record(2, "acme", "images", "t2", 2)[0]], 2)
        # A token of the older layout's kind (1: seq and index of an entry), MACed with the kept secret: refused.
        older_token = index._token(Kernel.explain_line_key("acme", PERIOD_MS, "images"), 1, 1, 0)
        with pytest.raises(StaleToken):
            index.page("acme", PERIOD_MS, "images", 1, older_token)
        assert [e.transaction_id for e in _paged(index, "acme", "images", 1)] == ["t1", "t2"]
    finally:
        index.close()
    reopened = ExplainIndex(path, map_size_bytes=1 << 22)
    try:  # the new layout is kept across restarts
        assert reopened.covered_seq() == 2
        assert [e.transaction_id for e in _paged(reopened, "acme", "images", 1)] == ["t1", "t2"]
    finally:
        reopened.close()


def test_an_index_whose_map_filled_stops_and_queues_no_more_records(tmp_path: Path) -> None:
    index = ExplainIndex(tmp_path / "explain", map_size_bytes=1 << 20)
    try:
        records = [_record(seq, "acme", "images", f"t{seq}" * 40, seq)[0] for seq in range(1, 20_001)]
        index.submit(records, len(records))
        index.flush(len(records))  # returns once the writer stopped: the records cannot fit in 1 MiB
        with pytest.raises(RuntimeError, match="stopped"):
            index.wait_covered(len(records), timeout_s=1.0)

        index.submit(records, 2 * len(records))

        queued = []
        while not index._work.empty():
            queued.append(index._work.get())
        # No records held that no writer would ever take (flush requests, a few bytes each, may wait there).
        assert [item[0] for item in queued if item is not None and item[0] == "records"] == []
    finally:
        index.close()
