"""EndOverride in the control plane (engine/customers.py `_end_override`; contracts.proto EndOverride): an override's
end set or moved earlier, each refusal in its order changing nothing, a retry answered as Repeated, the command
replayed alike, the audit entry, and the AddOverride that made the override still a retry. The kernel's recorded
hours of a product come in through `Engine.product_hours_recorded`, here a dict of the test's own."""

from __future__ import annotations

import msgspec
import pytest

from engine import commands as cmd
from engine.contracts import Contract
from engine.errors import EngineError, FailedPrecondition, InvalidArgument, NotFound, Repeated
from engine.state import Engine
from tests.engine_fixtures import ACTOR, EPOCH_MS, World

HOUR_MS = 3_600_000
NOW_MS = EPOCH_MS + 10 * 24 * HOUR_MS  # the commands' time: ten days into the contract
NOW_HOUR_MS = NOW_MS // HOUR_MS * HOUR_MS


def world(hours: dict[tuple[str, str], list[int]] | None = None) -> World:
    """Customer `acme` with contract `c` from EPOCH_MS and override `o1` (product `tokens` x 0.5, open-ended);
    `hours`: the kernel's recorded hours by (customer, product)."""
    made = World()
    made.product("tokens")
    made.product("images")
    made.rate_card("card")
    made.customer("acme")
    made.contract("c", customer_id="acme")
    made.override("tokens", contract_id="c", multiplier="0.5")
    recorded = hours or {}
    made.engine.product_hours_recorded = lambda customer_id, product_id: recorded.get((customer_id, product_id), [])
    return made


def end(at_ms: int, override_id: str = "o1", contract_id: str = "c") -> cmd.EndOverride:
    return cmd.EndOverride(NOW_MS, ACTOR, contract_id, override_id, at_ms)


def ends(made: World, contract_id: str = "c") -> dict[str, int | None]:
    return {o.id: o.ending_before_ms for o in made.engine.state.contracts[contract_id].overrides}


def refused(made: World, command: cmd.EndOverride, error: type[EngineError]) -> str:
    """The refusal's message, checking nothing changed: the overrides' ends and the audit log as they were."""
    held = ends(made) if command.contract_id in made.engine.state.contracts else None
    audited = len(made.engine.state.audit)
    with pytest.raises(error) as failed:
        made.apply(command)
    if held is not None:
        assert ends(made) == held
    assert len(made.engine.state.audit) == audited
    return str(failed.value)


def test_an_end_is_set_audited_and_replayed_alike() -> None:
    made = world()
    made.override("images", contract_id="c", multiplier="2", override_id="o2")
    ended = made.apply(end(NOW_MS + HOUR_MS))
    assert isinstance(ended, Contract) and ends(made) == {"o1": NOW_MS + HOUR_MS, "o2": None}
    assert [o.id for o in ended.overrides] == ["o1", "o2"]  # the order kept: among equals the last added wins
    entry = made.engine.state.audit[-1]
    assert (entry.action, entry.target, entry.at_ms) == ("EndOverride", "contract/c", NOW_MS)
    replayed = Engine()
    replayed.product_hours_recorded = lambda _customer_id, _product_id: []
    for seq, command in enumerate(made.journal, start=1):
        replayed.apply(command, seq)
    assert {o.id: o.ending_before_ms for o in replayed.state.contracts["c"].overrides} == ends(made)
    assert msgspec.json.decode(msgspec.json.encode(end(1)), type=cmd.Command) == end(1)  # a record kind of its own


def test_the_same_end_again_is_repeated_and_an_earlier_one_moves_it() -> None:
    made = world()
    made.apply(end(NOW_MS + 2 * HOUR_MS))
    with pytest.raises(Repeated) as again:
        made.apply(end(NOW_MS + 2 * HOUR_MS))
    assert isinstance(again.value.result, Contract) and ends(made) == {"o1": NOW_MS + 2 * HOUR_MS}
    moved = made.apply(end(NOW_MS + HOUR_MS))
    assert isinstance(moved, Contract) and ends(made) == {"o1": NOW_MS + HOUR_MS}


def test_each_refusal_in_its_order_changes_nothing() -> None:
    usage_hour = NOW_HOUR_MS + 2 * HOUR_MS
    made = world({("acme", "tokens"): [usage_hour]})
    made.override("tokens", contract_id="c", multiplier="0.5", override_id="gone", ending_before_ms=NOW_MS - HOUR_MS)
    made.override("tokens", contract_id="c", multiplier="0.5", override_id="soon", ending_before_ms=usage_hour)
    made.override("images", contract_id="c", multiplier="2", override_id="img")
    assert "'nobody'" in refused(made, end(NOW_MS + HOUR_MS, contract_id="nobody"), NotFound)
    assert "'ghost'" in refused(made, end(NOW_MS + HOUR_MS, "ghost"), NotFound)
    assert "ending_before" in refused(made, end(EPOCH_MS), InvalidArgument)  # at the start, before now too
    assert "already ended" in refused(made, end(NOW_MS + HOUR_MS, "gone"), FailedPrecondition)
    assert "before now" in refused(made, end(NOW_MS - 1), FailedPrecondition)
    assert "only moved earlier" in refused(made, end(usage_hour + 1, "soon"), FailedPrecondition)
    for at_ms in (usage_hour, usage_hour + 1, NOW_MS):
        assert "2026-01-11T02:00:00Z" in refused(made, end(at_ms), FailedPrecondition)
    made.apply(end(NOW_MS, "img"))  # no usage of its product: taken
    made.apply(end(usage_hour + HOUR_MS))  # after the recorded hour: taken
    made.apply(end(NOW_MS, "soon"))  # the usage hour is at or after its current end: it never priced it


def test_an_ended_override_is_not_moved_but_its_end_sent_again_answers() -> None:
    made = world()
    made.override("tokens", contract_id="c", multiplier="0.5", override_id="gone", ending_before_ms=NOW_MS - HOUR_MS)
    with pytest.raises(Repeated):
        made.apply(end(NOW_MS - HOUR_MS, "gone"))
    assert "already ended" in refused(made, end(NOW_MS - 2 * HOUR_MS, "gone"), FailedPrecondition)


def test_the_add_override_that_made_it_is_still_a_retry_after_the_end() -> None:
    made = world()
    added = made.journal[-1]
    assert isinstance(added, cmd.AddOverride)
    made.apply(end(NOW_MS + HOUR_MS))
    with pytest.raises(Repeated) as again:
        made.apply(msgspec.structs.replace(added, at_ms=NOW_MS + 1))
    assert isinstance(again.value.result, Contract) and ends(made) == {"o1": NOW_MS + HOUR_MS}
