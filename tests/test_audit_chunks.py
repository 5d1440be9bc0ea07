"""The audit log sealed in compressed chunks: a page read through the chunks is exactly what a scan of the
whole log as objects gives (across chunk boundaries, with and without a target), a snapshot written before
chunks loads into the chunks its replay makes, and a snapshot and a replay hold the same bytes."""

from __future__ import annotations

import msgspec
import pytest
from tariff.v1 import contracts_pb2, pricing_pb2

from engine import audit as audit_module
from engine.control import AuditEntry
from engine.state import Engine
from tests.engine_fixtures import World, basic_world
from tests.serverproc import ServerFactory

CHUNK_ENTRIES = 4  # small chunks: a few dozen commands cross many chunk boundaries


def chunked_world(customers: int) -> World:
    """basic_world plus customers with contracts and grants: targets of several kinds, some sharing a prefix
    ("customer/c-1" and "customer/c-10")."""
    world = basic_world()
    for index in range(customers):
        customer_id = f"c-{index}"
        world.customer(customer_id)
        world.contract(f"contract-{index}", customer_id=customer_id)
        world.grant(f"grant-{index}", "10", customer_id=customer_id)
    return world


def whole_log(engine: Engine) -> list[AuditEntry]:
    """The log as objects, every chunk unsealed: what the reads are compared with."""
    entries = [entry for chunk in engine.state.audit_chunks for entry in audit_module.unseal_chunk(chunk)]
    return entries + list(engine.state.audit)


def expected_page(log: list[AuditEntry], after_seq: int, target: str, limit: int) -> list[AuditEntry]:
    return [e for e in log if e.seq > after_seq and e.target.startswith(target)][:limit]


@pytest.fixture
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "AUDIT_CHUNK_ENTRIES", CHUNK_ENTRIES)


@pytest.mark.usefixtures("small_chunks")
def test_entries_are_sealed_a_chunk_at_a_time_and_read_back_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    world = chunked_world(12)
    state = world.engine.state
    log = whole_log(world.engine)
    monkeypatch.setattr(audit_module, "AUDIT_CHUNK_ENTRIES", 10**9)
    never_sealed = chunked_world(12).engine.state
    assert not never_sealed.audit_chunks
    assert log == never_sealed.audit  # unsealed, each entry is the one that was sealed
    assert len(log) == len(world.journal)  # one entry per applied command
    assert [e.seq for e in log] == list(range(1, len(world.journal) + 1))
    assert len(state.audit_chunks) == len(log) // CHUNK_ENTRIES
    assert len(state.audit) == len(log) % CHUNK_ENTRIES
    assert [(c.first_seq, c.last_seq) for c in state.audit_chunks] == [
        (start + 1, start + CHUNK_ENTRIES) for start in range(0, len(state.audit_chunks) * CHUNK_ENTRIES, CHUNK_ENTRIES)
    ]
    assert world.engine.audit_entries() == log
    assert {e.target for e in log} >= {"customer/c-1", "customer/c-10", "grant/grant-3", "contract/contract-11"}


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("target", ["", "customer/", "customer/c-1", "grant/grant-3", "rate_card/", "nothing/"])
@pytest.mark.parametrize("page_size", [1, 3, 4, 5, 100])
def test_paging_by_after_seq_crosses_chunk_boundaries_as_a_scan_does(target: str, page_size: int) -> None:
    """A client pages by passing the last seq it received as after_seq: every page, and the pages together,
    are what a scan of the whole log gives."""
    world = chunked_world(12)
    log = whole_log(world.engine)
    pages: list[list[AuditEntry]] = []
    after_seq = 0
    while page := world.engine.audit_entries(after_seq, target, page_size):
        assert page == expected_page(log, after_seq, target, page_size)
        pages.append(page)
        after_seq = page[-1].seq
    assert [e for page in pages for e in page] == expected_page(log, 0, target, len(log))
    if target == "customer/c-1":  # c-1 and c-10, c-11: a prefix, as today
        assert {e.target for e in log if e.target.startswith(target)} == {
            "customer/c-1",
            "customer/c-10",
            "customer/c-11",
        }


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("after_seq", [0, 1, CHUNK_ENTRIES - 1, CHUNK_ENTRIES, CHUNK_ENTRIES + 1, 30, 47, 1000])
def test_a_page_starts_after_any_seq_inside_or_between_chunks(after_seq: int) -> None:
    world = chunked_world(12)
    log = whole_log(world.engine)
    for target in ("", "contract/"):
        assert world.engine.audit_entries(after_seq, target, 7) == expected_page(log, after_seq, target, 7)


def test_a_target_with_a_newline_matches_no_entry() -> None:
    """Targets are joined by newlines inside a chunk: a filter holding one must not match across two."""
    world = chunked_world(200)  # past one chunk of the real size
    assert world.engine.state.audit_chunks
    assert world.engine.audit_entries(0, "customer/c-1\ncontract/", 100) == []


@pytest.mark.usefixtures("small_chunks")
def test_a_snapshot_and_a_replay_hold_the_same_chunks() -> None:
    world = chunked_world(9)
    replayed = Engine()
    for seq, command in enumerate(world.journal, start=1):
        replayed.apply(command, seq)
    snapshot = world.engine.encode_snapshot()
    assert replayed.encode_snapshot() == snapshot
    restored = Engine.from_snapshot(snapshot)
    assert restored.encode_snapshot() == snapshot
    assert restored.audit_entries() == world.engine.audit_entries()


@pytest.mark.usefixtures("small_chunks")
@pytest.mark.parametrize("customers", [0, 1, 9])
def test_a_snapshot_written_before_chunks_loads_into_the_chunks_its_replay_makes(customers: int) -> None:
    """Today's format keeps the whole log as entries under "audit" and has no "audit_chunks": loading it seals
    the entries as applying them would have, and the log reads the same."""
    world = chunked_world(customers)
    log = whole_log(world.engine)
    old = msgspec.to_builtins(world.engine.state)
    del old["audit_chunks"]
    old["audit"] = msgspec.to_builtins(log)
    old_blob = msgspec.json.encode(old)
    restored = Engine.from_snapshot(old_blob)
    assert restored.encode_snapshot() == world.engine.encode_snapshot()
    assert restored.audit_entries() == log
    # and the log goes on as the original's does
    world.customer("after-restore")
    restored.apply(world.journal[-1], restored.state.last_seq + 1)
    assert restored.encode_snapshot() == world.engine.encode_snapshot()


def test_over_the_wire_pages_cross_chunks_and_survive_a_restart(server_factory: ServerFactory) -> None:
    """A real server past two chunks of the real size: GetAuditLog pages by after_seq, with and without a
    target, read the same before a restart (log in memory) and after it (log from the snapshot)."""
    customers = 2 * audit_module.AUDIT_CHUNK_ENTRIES + 40
    server = server_factory()
    with server.client() as client:
        for index in range(customers):
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=f"cust-{index}"))

    def read_all(target: str, page_size: int) -> list[tuple[int, str, str]]:
        read: list[tuple[int, str, str]] = []
        with server.client() as client:
            while True:
                request = pricing_pb2.GetAuditLogRequest(
                    after_seq=read[-1][0] if read else 0, page_size=page_size, target=target
                )
                page = client.pricing.GetAuditLog(request).entries
                if not page:
                    return read
                assert len(page) <= page_size
                read.extend((e.seq, e.target, e.diff) for e in page)

    before = {(target, size): read_all(target, size) for target in ("", "customer/cust-7") for size in (100, 333)}
    everything = before[("", 100)]
    assert [target for _, target, _ in everything] == [f"customer/cust-{index}" for index in range(customers)]
    assert [seq for seq, _, _ in everything] == sorted(seq for seq, _, _ in everything)
    assert before[("", 333)] == everything
    assert [t for _, t, _ in before[("customer/cust-7", 100)]] == [
        f"customer/cust-{index}" for index in range(customers) if str(index).startswith("7")
    ]
    assert '"id":"cust-1000"' in everything[1000][2]
    server.restart()
    after = {(target, size): read_all(target, size) for target in ("", "customer/cust-7") for size in (100, 333)}
    assert after == before
