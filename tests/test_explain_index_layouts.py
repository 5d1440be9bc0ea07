"""An explain index written in chunk layout 1 (tests/fixtures/explain-blocks1.tar.gz, made by
tests/fixtures/make_explain_blocks1.py with that release's code) still reads: each line pages the events that release
paged (tests/fixtures/explain-blocks1.json), and blocks written afterwards, in layout 2, page on after them in
journal order, whatever the page size (a page and its token may span the two layouts)."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import lmdb
import pytest

import server.explain_index as explain_index
from engine._kernel import explain_period_key
from server.explain_index import ExplainIndex, IndexedEvent, parse_events
from tests.fixtures.make_explain_blocks1 import CUSTOMERS, LINES, PERIOD_MS, record

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FIXTURE_LAST_SEQ = 34  # the fixture's three writes: 14, 9 and 11 events


def _fixture_events() -> dict[tuple[str, str], list[IndexedEvent]]:
    paged = json.loads((FIXTURES / "explain-blocks1.json").read_text())
    return {
        (customer, line): [
            IndexedEvent(tx, ts, version, int(q), int(a), int(o), [(g, int(c)) for g, c in draws])
            for tx, ts, version, q, a, o, draws in paged[f"{customer} {line}"]
        ]
        for customer in CUSTOMERS
        for line in LINES
    }


def _paged(index: ExplainIndex, customer: str, line: str, page_size: int) -> list[IndexedEvent]:
    found: list[IndexedEvent] = []
    token = ""
    while True:
        page = index.page(customer, PERIOD_MS, line, page_size, token)
        found.extend(page.events)
        if not page.next_token:
            return found
        assert len(page.events) == page_size
        token = page.next_token


def _opened_fixture(tmp_path: Path) -> ExplainIndex:
    with tarfile.open(FIXTURES / "explain-blocks1.tar.gz") as tar:
        tar.extractall(tmp_path, filter="data")
    return ExplainIndex(tmp_path / "explain", map_size_bytes=1 << 24)


@pytest.mark.parametrize("page_size", [1, 2, 5])
def test_an_index_in_chunk_layout_1_pages_as_before_and_on_into_layout_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, page_size: int
) -> None:
    expected = _fixture_events()
    assert sum(len(events) for events in expected.values()) == FIXTURE_LAST_SEQ
    index = _opened_fixture(tmp_path)
    try:
        assert index.covered_seq() == FIXTURE_LAST_SEQ
        for (customer, line), events in expected.items():
            assert _paged(index, customer, line, page_size) == events
        # Two more writes, in layout 2: the events of seqs past the fixture's, with the fixture's mix of values.
        monkeypatch.setattr(explain_index, "CHUNK_BYTES", 300)
        seq = FIXTURE_LAST_SEQ
        for count in (10, 13):
            records = []
            for _ in range(count):
                seq += 1
                customer, line = CUSTOMERS[seq % 2], LINES[(seq * 7) % 3]
                records.append(record(seq, customer, line))
                part = records[-1][8 + 4 + len(customer) + 8 + 4 + len(line.encode()) :]
                expected[customer, line].extend(parse_events(part))
            index.write(records, seq)
        for (customer, line), events in expected.items():
            assert _paged(index, customer, line, page_size) == events
    finally:
        index.close()


def test_layout_2_blocks_have_their_entries_apart_and_layout_1_entries_stay(tmp_path: Path) -> None:
    def entries(table: bytes) -> list[bytes]:
        env = lmdb.open(str(tmp_path / "explain"), max_dbs=4, readonly=True, lock=False)
        try:
            with env.begin() as txn:
                return [key for key, _ in txn.cursor(db=env.open_db(table, txn=txn, create=False))]
        finally:
            env.close()

    _opened_fixture(tmp_path).close()
    layout1 = entries(b"entries")
    assert len(layout1) == 2 * 3  # two customers' period in each of the fixture's three blocks
    index = ExplainIndex(tmp_path / "explain", map_size_bytes=1 << 24)
    try:
        index.write([record(FIXTURE_LAST_SEQ + 1, "acme", LINES[0])], FIXTURE_LAST_SEQ + 1)
    finally:
        index.close()
    assert entries(b"entries") == layout1
    (key,) = entries(b"periods-2")
    assert key == explain_period_key("acme", PERIOD_MS)[:8] + (FIXTURE_LAST_SEQ + 1).to_bytes(8, "big")
