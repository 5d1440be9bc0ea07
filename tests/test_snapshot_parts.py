"""Snapshots in parts: the control plane's JSON and the stored frame built a part at a time are byte for byte
what one msgspec call writes (so data directories of either kind recover alike), and the writer lets other
tasks run between the parts instead of holding the event loop for the whole encode."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from engine import billing as billing_module
from engine.billing import SNAPSHOT_FORMAT, Billing, Snapshot, snapshot_parts
from engine.control import encode_state_parts
from engine.state import Engine
from server import sequencer as sequencer_module
from server import snapshotting
from server.journal import DedupeSegmentSave, JournalFull, LmdbJournal, MemoryJournal, SnapshotBlob
from server.recovery import recover
from server.sequencer import Sequencer
from tests.engine_fixtures import EPOCH_MS, World, basic_world
from tests.test_sequencer import NOW_MS, batch, event, run_with


def many_customers_world(customers: int) -> World:
    """basic_world plus `customers` customers, each with a contract and two grants: every dict and list of the
    state (customers, contracts, accounts, audit, retry keys) holds several entries."""
    world = basic_world()
    for index in range(customers):
        customer_id = f"cust-{index}"
        world.customer(customer_id)
        world.contract(f"contract-{index}", customer_id=customer_id)
        world.grant(f"grant-{index}-a", "10", customer_id=customer_id)
        world.grant(f"grant-{index}-b", "999999999999.5", customer_id=customer_id, paid="1")  # > 2^64 picos
    return world


@pytest.mark.parametrize("entries_per_part", [1, 2, 3, 7, 256])
def test_the_control_plane_in_parts_is_byte_for_byte_its_json(entries_per_part: int) -> None:
    world = many_customers_world(9)
    state = world.engine.state
    parts = list(encode_state_parts(state, entries_per_part))
    joined = b"".join(parts)
    assert joined == msgspec.json.encode(state)
    assert Engine.from_snapshot(joined).encode_snapshot() == joined
    # Split as asked: the audit log's 40-odd entries take at least 40 / entries_per_part parts.
    assert len(parts) >= len(state.audit) // entries_per_part


def test_an_empty_control_plane_in_parts_is_its_json() -> None:
    empty = Engine().state
    assert b"".join(encode_state_parts(empty, 1)) == msgspec.json.encode(empty)


@pytest.mark.parametrize("control_bytes", [0, 1, 255, 256, 65_535, 65_536, 70_000])
@pytest.mark.parametrize("kernel_bytes", [0, 255, 256, 65_536])
def test_snapshot_parts_frame_the_halves_as_msgspec_does(control_bytes: int, kernel_bytes: int) -> None:
    """Each msgpack bin header length (8, 16 and 32-bit) on both halves, each half in several parts."""
    control = bytes(index % 251 for index in range(control_bytes))
    kernel = bytes(index % 241 for index in range(kernel_bytes))
    control_parts = [control[start : start + 1000] for start in range(0, len(control), 1000)]
    kernel_parts = [kernel[start : start + 300] for start in range(0, len(kernel), 300)]
    framed = b"".join(snapshot_parts(control_parts, kernel_parts))
    assert framed == msgspec.msgpack.encode(Snapshot(SNAPSHOT_FORMAT, control, kernel))
    assert msgspec.msgpack.decode(framed, type=Snapshot) == Snapshot(SNAPSHOT_FORMAT, control, kernel)


def test_billing_encode_snapshot_restores_the_same_state() -> None:
    world = many_customers_world(3)
    billing = Billing(world.engine)
    blob = billing.encode_snapshot()
    restored = Billing.from_snapshot(blob)
    assert restored.encode_snapshot() == blob
    assert restored.balance("cust-1", EPOCH_MS).remaining == billing.balance("cust-1", EPOCH_MS).remaining


def test_the_writer_encodes_the_control_plane_off_the_event_loop_and_stores_the_one_shot_bytes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The control plane's parts are encoded on another thread than the event loop's, handing the GIL over between
    parts (with no time budget: after every part) at a shorter switch interval, restored afterwards; the stored
    snapshot is the one-shot encoding's bytes, and recovery through it gives the same state."""
    monkeypatch.setattr(snapshotting, "PAUSE_EVERY_S", 0.0)
    monkeypatch.setattr(sequencer_module, "PAUSE_EVERY_S", 0.0)  # the writer's paced compile, as before the split
    journal = MemoryJournal()
    encoded_on: set[int] = set()
    expected: list[bytes] = []
    loop_thread: list[int] = []
    handovers: list[float] = []
    switch_intervals: set[float] = set()
    default_switch_interval = sys.getswitchinterval()
    sleep = time.sleep

    def counted_sleep(seconds: float) -> None:
        handovers.append(seconds)
        sleep(seconds)

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(*(event(f"t{i}") for i in range(5))))
        expected.append(sequencer.billing.encode_snapshot())
        loop_thread.append(threading.get_ident())
        parts_of = sequencer.billing.control_snapshot_parts

        def counted_parts() -> Iterator[bytes]:
            for part in parts_of():
                encoded_on.add(threading.get_ident())
                switch_intervals.add(sys.getswitchinterval())
                yield part

        monkeypatch.setattr(sequencer.billing, "control_snapshot_parts", counted_parts)
        monkeypatch.setattr(time, "sleep", counted_sleep)
        await sequencer.snapshots.take()
        monkeypatch.setattr(time, "sleep", sleep)

    billing = run_with(journal, body)
    assert encoded_on and loop_thread[0] not in encoded_on
    assert len(handovers) > 10 and set(handovers) == {snapshotting.GIL_HANDOVER_S}
    assert switch_intervals == {snapshotting.SNAPSHOT_SWITCH_INTERVAL_S}
    assert sys.getswitchinterval() == default_switch_interval
    stored = journal.load_segmented_snapshot()
    assert stored is not None
    _, blob, segments = stored
    # close() wrote the last snapshot, at the same state: the paced path stored the one-shot control plane, and the
    # kernel's head with its dedupe segments restores the state the one-shot encoding holds.
    assert msgspec.msgpack.decode(blob, type=Snapshot).control == msgspec.json.encode(billing.engine.state)
    assert Billing.from_snapshot(blob, segments=segments).encode_snapshot() == expected[0] == billing.encode_snapshot()
    assert recover(journal).encode_snapshot() == expected[0]
    assert recover(journal).balance("acme", NOW_MS).remaining == billing.balance("acme", NOW_MS).remaining


def test_the_server_hands_the_journal_its_parts_and_the_file_holds_the_one_shot_bytes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer stores its snapshot as the parts it encoded, written to the file one after the other (no copy of
    the whole is made), and the file holds them, from which (with its dedupe segment) recovery gives the state the
    one-shot encoding holds: with the kernel's half cut into parts of 64 bytes, so that there are many."""
    monkeypatch.setattr(billing_module, "KERNEL_SNAPSHOT_PART_BYTES", 64)
    journal = LmdbJournal(tmp_path / "journal", map_size_bytes=16 << 20)
    saved: list[tuple[str, int]] = []
    save_snapshot = journal.save_snapshot

    def recording_save(seq: int, blob: SnapshotBlob, segment: DedupeSegmentSave | None = None) -> None:
        saved.append((type(blob).__name__, len(blob)))
        save_snapshot(seq, blob, segment)

    monkeypatch.setattr(journal, "save_snapshot", recording_save)
    expected: list[bytes] = []

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(*(event(f"t{i}") for i in range(20))))
        expected.append(sequencer.billing.encode_snapshot())
        await sequencer.snapshots.take()
        stored = journal.load_segmented_snapshot()
        assert (
            stored is not None and Billing.from_snapshot(stored[1], segments=stored[2]).encode_snapshot() == expected[0]
        )

    run_with(journal, body)  # type: ignore[arg-type]
    assert saved and all(kind == "list" for kind, _ in saved)
    assert saved[0][1] > 10  # the kernel's half alone is dozens of parts
    stored = journal.load_snapshot()
    assert stored is not None
    with open(tmp_path / "journal" / "snapshot", "rb") as stored_file:
        assert stored_file.read().endswith(stored[1])
    recovered = recover(journal)
    assert recovered.encode_snapshot() == expected[0]
    journal.close()


@pytest.mark.parametrize("disk_full", [False, True])
def test_the_switch_interval_stays_short_while_the_snapshot_is_stored_and_is_restored_after(
    monkeypatch: pytest.MonkeyPatch, disk_full: bool
) -> None:
    """While the journal's thread stores the snapshot, the explain index's thread catches up to its seq, running
    Python: a loop waiting for the GIL asks for it after the snapshot's short switch interval, not the default
    5 ms. The default is back afterwards, after a full disk too."""
    journal = MemoryJournal()
    save_snapshot = journal.save_snapshot
    intervals_while_stored: list[float] = []
    default_switch_interval = sys.getswitchinterval()

    def recording_save(seq: int, blob: SnapshotBlob, segment: DedupeSegmentSave | None = None) -> None:
        intervals_while_stored.append(sys.getswitchinterval())
        if disk_full:
            raise JournalFull("no room")
        save_snapshot(seq, blob, segment)

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(event("t1")))
        monkeypatch.setattr(journal, "save_snapshot", recording_save)
        await sequencer.snapshots.take()
        assert sys.getswitchinterval() == default_switch_interval
        monkeypatch.setattr(journal, "save_snapshot", save_snapshot)

    run_with(journal, body)
    assert intervals_while_stored == [snapshotting.SNAPSHOT_SWITCH_INTERVAL_S]


def test_a_stored_snapshot_logs_its_seq_size_and_how_long_it_held_the_writer(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An operator sees each snapshot's seq, bytes, the milliseconds its encode held the writer (no batch rated
    meanwhile) and the milliseconds its store took: at 100,000,000 ids in the dedupe window a snapshot is
    gigabytes."""
    journal = MemoryJournal()
    logged: list[str] = []

    async def body(sequencer: Sequencer) -> None:
        await sequencer.run(batch(*(event(f"t{i}") for i in range(5))))
        with caplog.at_level("INFO", logger="tariff.sequencer"):
            await sequencer.snapshots.take()
        logged.extend(record.getMessage() for record in caplog.records if record.name == "tariff.sequencer")

    billing = run_with(journal, body)
    stored = journal.load_snapshot()
    assert stored is not None
    [line] = [message for message in logged if message.startswith("snapshot ")]
    fields = dict(field.split("=") for field in line.split()[1:])
    assert set(fields) == {"seq", "bytes", "encode_ms", "store_ms"}
    assert int(fields["seq"]) == billing.last_seq
    # close() stored nothing more: the stored snapshot is of the last record (the logged one, its base alone).
    assert len(journal.dedupe_segment_bytes()) == 1
    assert int(fields["bytes"]) == len(stored[1]) + journal.dedupe_segment_bytes()[0]
    assert int(fields["encode_ms"]) >= 0 and int(fields["store_ms"]) >= 0
