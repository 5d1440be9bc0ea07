"""The audit log's filters (actor, action, time range) with paging across sealed chunks, the diff of a rollback,
and a diff too big for an entry: still valid JSON, capped, saying what it left out."""

from __future__ import annotations

import json

import pytest

from engine import audit as audit_module
from engine import commands as cmd
from engine.audit import AUDIT_DIFF_BYTES_MAX, AuditFilter, acted_by, capped_diff
from engine.control import AuditEntry
from engine.state import Engine
from tests.engine_fixtures import EPOCH_MS, HOUR_MS, World, rate, unit

T = EPOCH_MS


def world_of_actors(customers: int) -> World:
    """Customers created an hour apart by three actors in turn, then a rate card and a published version."""
    world = World()
    actors = ("alice", "alice via ops-key", "ops-key")
    for index in range(customers):
        world.apply(cmd.CreateCustomer(T + index * HOUR_MS, actors[index % 3], f"c-{index}", "", {}))
    world.product("tokens")
    world.rate_card()
    world.version([rate("tokens", unit("1"))])
    return world


def whole_log(engine: Engine) -> list[AuditEntry]:
    return [e for chunk in engine.state.audit_chunks for e in audit_module.unseal_chunk(chunk)] + engine.state.audit


@pytest.mark.parametrize(
    ("entry_actor", "actor", "expected"),
    [
        ("alice", "alice", True),
        ("alice via ops-key", "alice", True),
        ("alice via ops-key", "ops-key", True),
        ("alice via ops-key", "alice via ops-key", True),
        ("alice via ops-key", "ali", False),
        ("alicia via ops-key", "alice", False),
        ("ops-key", "ops", False),
        ("anonymous", "alice", False),
    ],
)
def test_an_actor_filter_matches_the_whole_actor_or_either_side_of_via(
    entry_actor: str, actor: str, expected: bool
) -> None:
    assert acted_by(entry_actor, actor) is expected


@pytest.mark.parametrize(
    "where",
    [
        AuditFilter(actor="alice"),
        AuditFilter(actor="ops-key"),
        AuditFilter(action="CreateCustomer"),
        AuditFilter(action="PublishVersion"),
        AuditFilter(action="NoSuchAction"),
        AuditFilter(start_ms=T + 5 * HOUR_MS),
        AuditFilter(end_ms=T + 5 * HOUR_MS),
        AuditFilter(actor="alice", start_ms=T + 3 * HOUR_MS, end_ms=T + 30 * HOUR_MS),
    ],
)
@pytest.mark.parametrize("page_size", [1, 4, 100])
def test_filtered_pages_cross_chunks_as_a_scan_does(
    monkeypatch: pytest.MonkeyPatch, where: AuditFilter, page_size: int
) -> None:
    monkeypatch.setattr(audit_module, "AUDIT_CHUNK_ENTRIES", 4)
    world = world_of_actors(40)
    log = whole_log(world.engine)
    expected = [e for e in log if where.keeps(e)]
    read: list[AuditEntry] = []
    after_seq = 0
    while True:
        page, next_after_seq = world.engine.audit_page(after_seq, "", page_size, where, chunks_max=3)
        assert len(page) <= page_size
        read.extend(page)
        if not next_after_seq:
            break
        assert next_after_seq > after_seq
        after_seq = next_after_seq
    assert read == expected


def test_the_filters_keep_what_they_name() -> None:
    world = world_of_actors(6)
    log = whole_log(world.engine)
    by_alice = world.engine.audit_entries(where=AuditFilter(actor="alice"))
    assert [e.target for e in by_alice] == ["customer/c-0", "customer/c-1", "customer/c-3", "customer/c-4"]
    by_key = world.engine.audit_entries(where=AuditFilter(actor="ops-key"))
    assert [e.target for e in by_key] == ["customer/c-1", "customer/c-2", "customer/c-4", "customer/c-5"]
    published = world.engine.audit_entries(where=AuditFilter(action="PublishVersion"))
    assert [(e.action, e.target) for e in published] == [("PublishVersion", "rate_card/card/version/1")]
    window = world.engine.audit_entries(where=AuditFilter(start_ms=T + 2 * HOUR_MS, end_ms=T + 4 * HOUR_MS))
    assert [e.target for e in window] == ["customer/c-2", "customer/c-3"]  # start included, end excluded
    assert len(log) == 6 + 4


def test_a_page_says_where_the_next_starts_and_the_last_says_zero() -> None:
    world = world_of_actors(6)
    page, next_after_seq = world.engine.audit_page(0, "customer/", 4)
    assert [e.seq for e in page] == [1, 2, 3, 4] and next_after_seq == 4
    page, next_after_seq = world.engine.audit_page(4, "customer/", 4)
    assert [e.seq for e in page] == [5, 6] and next_after_seq == 0


def test_a_rollback_is_audited_citing_both_versions() -> None:
    world = world_of_actors(0)
    world.version([rate("tokens", unit("2"))], effective_from_ms=T + HOUR_MS)
    world.apply(cmd.RollbackRateCard(T + 5 * HOUR_MS, "alice", "card", 1, T + 5 * HOUR_MS))
    (entry,) = world.engine.audit_entries(where=AuditFilter(action="RollbackRateCard"))
    assert (entry.actor, entry.target, entry.at_ms) == ("alice", "rate_card/card/version/3", T + 5 * HOUR_MS)
    assert json.loads(entry.diff) == {
        "type": "rollback_rate_card",
        "rate_card_id": "card",
        "to_version": 1,
        "effective_from_ms": T + 5 * HOUR_MS,
        "version": 3,
        "rollback_from": 2,
        "rollback_to": 1,
    }


def test_a_huge_diff_is_valid_json_capped_and_says_what_it_left_out() -> None:
    world = World()
    world.product("tokens", dimensions=("model",))
    world.rate_card()
    rates = [rate("tokens", unit(f"{index}.5"), model=f"model-{index:05d}") for index in range(5_000)]
    note = "n" * 200_000
    world.apply(cmd.CreateDraftVersion(T, "alice", "card", 0, {"p": "1"}, (), tuple(rates), (), note, "request-1"))
    (entry,) = world.engine.audit_entries(where=AuditFilter(action="CreateDraftVersion"))
    assert len(entry.diff.encode()) <= AUDIT_DIFF_BYTES_MAX
    diff = json.loads(entry.diff)  # valid JSON, however big the command
    assert (diff["rate_card_id"], diff["set_parameters"], diff["request_id"]) == ("card", {"p": "1"}, "request-1")
    truncated = diff["truncated"]
    assert truncated["bytes"] > 400_000
    kept_rates = truncated["fields"]["upsert_rates"]
    assert kept_rates["of"] == 5_000 and 0 < kept_rates["kept"] < 5_000
    assert [r["match"]["model"] for r in diff["upsert_rates"]] == [
        f"model-{index:05d}" for index in range(kept_rates["kept"])
    ]
    assert truncated["fields"]["change_note"] == {"of": 200_000, "kept": len(diff["change_note"])}
    assert set(diff["change_note"]) <= {"n"}


def test_a_diff_that_fits_is_stored_whole() -> None:
    fields = {"id": "x", "attributes": {"a": "é" * 1000}}
    assert json.loads(capped_diff(fields)) == fields


def test_a_diff_of_one_huge_text_is_cut_on_characters_and_stays_valid_json() -> None:
    fields = {"id": "x", "note": "é€😀" * 50_000}
    capped = capped_diff(fields)
    assert len(capped.encode()) <= AUDIT_DIFF_BYTES_MAX
    decoded = json.loads(capped)
    assert fields["note"].startswith(decoded["note"])
    assert decoded["truncated"]["fields"]["note"]["of"] == 150_000
