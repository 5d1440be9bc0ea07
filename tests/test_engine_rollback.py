"""RollbackRateCard in the engine (engine/rollback.py): a copy of an earlier version published as a new one
through PublishVersion's path; refusals that change nothing; retries; a rollback of a rollback."""

from __future__ import annotations

import msgspec
import pytest

from engine import commands as cmd
from engine.errors import EngineError, FailedPrecondition, InvalidArgument, NotFound, Repeated
from engine.ratecard import VersionState
from engine.state import Engine
from engine.versions import PublishResult
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate, unit

T = EPOCH_MS


def card_with_two_versions() -> World:
    """Version 1 (gpt-4 at 0.03) from T, version 2 (0.024) from T + 10 h."""
    world = World()
    world.product("tokens")
    world.rate_card()
    rates = [rate("tokens", unit("gpt4_cost_per_1k", "1000"), model="gpt-4")]
    world.version(rates, parameters={"gpt4_cost_per_1k": "0.03"}, effective_from_ms=T)
    world.version(rates, parameters={"gpt4_cost_per_1k": "0.024"}, based_on=1, effective_from_ms=T + 10 * HOUR_MS)
    return world


def rollback(
    world: World, to_version: int, effective_from_ms: int | None, *, at_ms: int = T + 20 * HOUR_MS, actor: str = ACTOR
) -> PublishResult:
    result = world.apply(cmd.RollbackRateCard(at_ms, actor, "card", to_version, effective_from_ms))
    assert isinstance(result, PublishResult)
    return result


def snapshot(world: World) -> bytes:
    return msgspec.json.encode(world.engine.state)


def test_a_rollback_publishes_a_copy_as_a_new_version() -> None:
    world = card_with_two_versions()
    result = rollback(world, 1, T + 20 * HOUR_MS)
    copy = result.version
    v1 = world.engine.rate_card("card").version(1)
    assert (copy.number, copy.state, copy.based_on, copy.rollback_to, copy.rollback_from) == (
        3,
        VersionState.PUBLISHED,
        1,
        1,
        2,
    )
    assert (copy.parameters, copy.rates) == (v1.parameters, v1.rates)
    assert copy.effective_from_ms == T + 20 * HOUR_MS
    assert copy.change_note == (
        "rollback of version 2 to version 1: a copy of version 1, effective from 2026-01-01T20:00:00Z"
    )
    card = world.engine.rate_card("card")
    assert [card.version_number_at(t) for t in (T, T + 10 * HOUR_MS, T + 20 * HOUR_MS)] == [1, 2, 3]
    # History is never rewritten: versions 1 and 2 are as they were.
    assert [(v.number, v.state, v.effective_from_ms) for v in card.versions[:2]] == [
        (1, VersionState.PUBLISHED, T),
        (2, VersionState.PUBLISHED, T + 10 * HOUR_MS),
    ]


def test_without_effective_from_it_takes_effect_from_the_current_hour() -> None:
    world = card_with_two_versions()
    copy = rollback(world, 1, None, at_ms=T + 20 * HOUR_MS + 1234).version
    assert copy.effective_from_ms == T + 20 * HOUR_MS


def test_a_rollback_of_a_rollback() -> None:
    world = card_with_two_versions()
    rollback(world, 1, T + 20 * HOUR_MS)  # version 3: version 1's prices
    fourth = rollback(world, 2, T + 30 * HOUR_MS).version  # back to version 2's prices
    assert (fourth.number, fourth.rollback_to, fourth.rollback_from) == (4, 2, 3)
    assert fourth.parameters == {"gpt4_cost_per_1k": "0.024"}
    # Rolling back to the rollback itself (version 3) restores version 1's prices again.
    fifth = rollback(world, 3, T + 40 * HOUR_MS).version
    assert (fifth.number, fifth.rollback_to, fifth.rollback_from, fifth.parameters) == (
        5,
        3,
        4,
        {"gpt4_cost_per_1k": "0.03"},
    )
    assert fifth.change_note.startswith("rollback of version 4 to version 3:")


@pytest.mark.parametrize(
    ("to_version", "effective_from_ms", "error", "message"),
    [
        pytest.param(9, T + 20 * HOUR_MS, NotFound, "rate card 'card' has no version 9", id="unknown-version"),
        pytest.param(3, T + 20 * HOUR_MS, FailedPrecondition, "version 3 of rate card 'card' is a draft", id="draft"),
        pytest.param(
            2,
            T + 20 * HOUR_MS,
            FailedPrecondition,
            "version 2 is already in force at 2026-01-01T20:00:00Z",
            id="already-in-force",
        ),
        pytest.param(
            1,
            T + 5 * HOUR_MS,
            FailedPrecondition,
            "version 1 is already in force at 2026-01-01T05:00:00Z",
            id="v1-then",
        ),
        pytest.param(1, T - HOUR_MS, FailedPrecondition, "has no version in force at 2025-12-31T23:00:00Z", id="none"),
        pytest.param(1, T + 20 * HOUR_MS + 1, InvalidArgument, "effective_from: must be on an hour", id="not-hour"),
    ],
)
def test_a_refused_rollback_changes_nothing(
    to_version: int, effective_from_ms: int, error: type[EngineError], message: str
) -> None:
    world = card_with_two_versions()
    world.draft([rate("tokens", unit("1"))])  # version 3, a draft
    before, seq = snapshot(world), world.seq
    with pytest.raises(error, match=message):
        rollback(world, to_version, effective_from_ms)
    assert snapshot(world) == before and world.seq == seq


def test_a_rollback_to_the_prices_in_force_by_an_earlier_rollback_is_refused() -> None:
    world = card_with_two_versions()
    rollback(world, 1, T + 20 * HOUR_MS)  # version 3 = version 1's prices
    before = snapshot(world)
    with pytest.raises(FailedPrecondition, match=r"version 3 \(a copy of version 1, the prices of version 1\)"):
        rollback(world, 1, T + 25 * HOUR_MS)
    rollback(world, 2, T + 30 * HOUR_MS)  # version 4 = version 2's prices
    with pytest.raises(FailedPrecondition, match=r"version 4 \(a copy of version 2, the prices of version 2\)"):
        rollback(world, 2, T + 31 * HOUR_MS)
    assert snapshot(world) != before  # only version 4 was added


def test_a_retry_is_answered_as_the_first_call_and_changes_nothing() -> None:
    world = card_with_two_versions()
    first = rollback(world, 1, T + 20 * HOUR_MS)
    state, seq = snapshot(world), world.seq
    for effective_from_ms in (T + 20 * HOUR_MS, None):  # the same hour, or none (a retry a few hours later)
        with pytest.raises(Repeated) as repeated:
            world.engine.apply(cmd.RollbackRateCard(T + 23 * HOUR_MS, ACTOR, "card", 1, effective_from_ms), seq + 1)
        assert isinstance(repeated.value.result, PublishResult)
        assert repeated.value.result.version is first.version
    assert snapshot(world) == state
    # Once another version has taken over, the same request is a new rollback.
    world.version([rate("tokens", unit("9"))], effective_from_ms=T + 22 * HOUR_MS)  # version 4
    again = rollback(world, 1, None, at_ms=T + 23 * HOUR_MS)
    assert (again.version.number, again.version.rollback_from) == (5, 4)


def test_a_rollback_goes_through_the_publish_path_and_is_withdrawn_when_that_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    world = card_with_two_versions()
    card = world.engine.rate_card("card")
    before, seq = snapshot(world), world.seq
    published: list[cmd.PublishVersion] = []

    def refuse(c: cmd.PublishVersion) -> PublishResult:
        published.append(c)
        raise FailedPrecondition("the publish path refused")

    monkeypatch.setattr(world.engine, "_publish", refuse)
    with pytest.raises(FailedPrecondition, match="the publish path refused"):
        rollback(world, 1, T + 12 * HOUR_MS)
    assert [(c.rate_card_id, c.version, c.effective_from_ms) for c in published] == [("card", 3, T + 12 * HOUR_MS)]
    assert snapshot(world) == before and world.seq == seq
    assert len(card.versions) == 2


def test_replaying_the_journal_gives_the_same_state() -> None:
    world = card_with_two_versions()
    rollback(world, 1, T + 20 * HOUR_MS)
    rollback(world, 2, T + 30 * HOUR_MS)
    replayed = Engine()
    for seq, command in enumerate(world.journal, start=1):
        replayed.apply(command, seq)
    assert msgspec.json.encode(replayed.state) == snapshot(world)
