"""EndContract in the control plane (engine/customers.py `_end_contract`; contracts.proto EndContract): the end set or
moved, each refusal in its order changing nothing, a retry answered as Repeated, the command replayed alike, and the
audit entry. The kernel's recorded hours come in through `Engine.hours_recorded`, here a dict of the test's own."""

from __future__ import annotations

import msgspec
import pytest

from engine import commands as cmd
from engine.contracts import Contract, OveragePolicy
from engine.errors import AlreadyExists, EngineError, FailedPrecondition, InvalidArgument, NotFound, Repeated
from engine.state import Engine
from tests.engine_fixtures import ACTOR, EPOCH_MS, World

HOUR_MS = 3_600_000
NOW_MS = EPOCH_MS + 10 * 24 * HOUR_MS  # the commands' time: ten days into the contract


def world(hours: dict[str, list[int]] | None = None) -> World:
    """Customer `acme` with contract `c` from EPOCH_MS, open-ended; `hours`: the kernel's recorded hours by customer."""
    made = World()
    made.rate_card("card")
    made.customer("acme")
    made.contract("c", customer_id="acme")
    recorded = hours or {}
    made.engine.hours_recorded = lambda customer_id: recorded.get(customer_id, [])
    return made


def end(at_ms: int, contract_id: str = "c") -> cmd.EndContract:
    return cmd.EndContract(NOW_MS, ACTOR, contract_id, at_ms)


def refused(made: World, command: cmd.EndContract, error: type[EngineError]) -> str:
    """The refusal's message, checking nothing changed: the contract's end and the audit log as they were."""
    contract = made.engine.state.contracts.get(command.contract_id)
    held = None if contract is None else contract.ending_before_ms
    audited = len(made.engine.state.audit)
    with pytest.raises(error) as failed:
        made.apply(command)
    if contract is not None:
        assert made.engine.state.contracts[command.contract_id].ending_before_ms == held
    assert len(made.engine.state.audit) == audited
    return str(failed.value)


def test_an_end_is_set_audited_and_replayed_alike() -> None:
    made = world()
    ended = made.apply(end(NOW_MS + HOUR_MS))
    assert isinstance(ended, Contract) and ended.ending_before_ms == NOW_MS + HOUR_MS
    entry = made.engine.state.audit[-1]
    assert (entry.action, entry.target, entry.at_ms) == ("EndContract", "contract/c", NOW_MS)
    replayed = Engine()
    replayed.hours_recorded = lambda _customer_id: []
    for seq, command in enumerate(made.journal, start=1):
        replayed.apply(command, seq)
    assert replayed.state.contracts["c"].ending_before_ms == NOW_MS + HOUR_MS
    assert msgspec.json.decode(msgspec.json.encode(end(1)), type=cmd.Command) == end(1)  # a record kind of its own


def test_the_same_end_again_is_repeated_and_another_moves_it() -> None:
    made = world()
    made.apply(end(NOW_MS + 2 * HOUR_MS))
    with pytest.raises(Repeated) as again:
        made.apply(end(NOW_MS + 2 * HOUR_MS))
    assert isinstance(again.value.result, Contract) and again.value.result.ending_before_ms == NOW_MS + 2 * HOUR_MS
    moved = made.apply(end(NOW_MS + HOUR_MS))
    assert isinstance(moved, Contract) and moved.ending_before_ms == NOW_MS + HOUR_MS


def test_each_refusal_in_its_order_changes_nothing() -> None:
    made = world({"acme": [NOW_MS // HOUR_MS * HOUR_MS + 2 * HOUR_MS]})
    assert "'nobody'" in refused(made, end(NOW_MS + HOUR_MS, "nobody"), NotFound)
    assert "ending_before" in refused(made, end(EPOCH_MS), InvalidArgument)  # at the start, before now too
    assert "before now" in refused(made, end(NOW_MS - 1), FailedPrecondition)
    usage_hour = NOW_MS // HOUR_MS * HOUR_MS + 2 * HOUR_MS
    for at_ms in (usage_hour, usage_hour + 1, NOW_MS):
        assert "2026-01-11T02:00:00Z" in refused(made, end(at_ms), FailedPrecondition)
    made.apply(end(usage_hour + HOUR_MS))  # after the recorded hour: taken
    made.contract("next", customer_id="acme", starting_at_ms=usage_hour + 2 * HOUR_MS)
    assert "'next'" in refused(made, end(usage_hour + 3 * HOUR_MS), FailedPrecondition)


def test_an_ended_contract_is_not_moved_but_its_end_sent_again_answers() -> None:
    made = world()
    made.customer("acme-old")
    made.contract("old", customer_id="acme-old", starting_at_ms=EPOCH_MS - 30 * 24 * HOUR_MS, ending_before_ms=EPOCH_MS)
    assert "already ended" in refused(made, end(NOW_MS + HOUR_MS, "old"), FailedPrecondition)
    with pytest.raises(Repeated):
        made.apply(end(EPOCH_MS, "old"))


def test_the_create_contract_sent_again_after_its_end_moved_is_repeated_with_the_contract_as_it_is_now() -> None:
    """`k` created as a client leaves the defaults (no overage_price, no currency: the record keeps no fingerprint of
    its own, its request is the one rebuilt from it, engine/control.py), open-ended, then ended at NOW + 1 h. The same
    CreateContract again is Repeated with k ending at NOW + 1 h, nothing journaled; one naming that end is another
    request, ALREADY_EXISTS. Alike on a machine replaying the journal and on one restored from a snapshot."""
    made = world()
    made.customer("beta")
    create = cmd.CreateContract(EPOCH_MS, ACTOR, "k", "beta", "card", EPOCH_MS, None, OveragePolicy.ALLOW, "", "")
    made.apply(create)
    assert made.engine.state.contracts["k"].request == b""
    made.apply(end(NOW_MS + HOUR_MS, "k"))
    other = msgspec.structs.replace(create, ending_before_ms=NOW_MS + HOUR_MS)
    replayed = Engine()
    replayed.hours_recorded = lambda _customer_id: []
    for seq, command in enumerate(made.journal, start=1):
        replayed.apply(command, seq)
    restored = Engine.from_snapshot(made.engine.encode_snapshot())
    for engine in (made.engine, replayed, restored):
        with pytest.raises(Repeated) as again:
            engine.apply(create, len(made.journal) + 1)
        assert isinstance(again.value.result, Contract) and again.value.result.ending_before_ms == NOW_MS + HOUR_MS
        with pytest.raises(AlreadyExists):
            engine.apply(other, len(made.journal) + 1)
