"""A publish planned a slice of customers at a time while usage goes on (engine/rerate.py PlanInSlices, the
writer's path): the plan it finishes with is the one `rerate_plan` gives on the state of that moment, also when
usage between slices named customers already looked at (new usage to re-rate, or usage the version cannot price),
and a slice that meets usage the version cannot price refuses the publish as the whole check does.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest

from engine import commands as cmd
from engine.billing import Billing
from engine.errors import FailedPrecondition
from engine.ratecard import Rate, VersionState
from engine.versions import PublishResult
from server.journal import MemoryJournal
from server.records import decode_record
from server.recovery import recover
from server.sequencer import Sequencer
from server.usage_batches import UsageBatch
from tests import test_engine_rerate_online as online
from tests.engine_fixtures import ACTOR, HOUR_MS, rate, unit
from tests.test_engine_rerate_online import CUSTOMERS as ONLINE_CUSTOMERS
from tests.test_engine_rerate_online import RECEIVED_MS, world
from tests.test_rerate_cases import NOW_MS, Machine, T, card_world

CUSTOMERS = tuple(f"c{n}" for n in range(7))


def gpt4_only(m: Machine, price: str) -> int:
    """A draft pricing gpt-4 only: usage of llama cannot be priced by it."""
    rates: tuple[Rate, ...] = (rate("tokens", unit(price), model="gpt-4"),)
    draft = m.apply(cmd.CreateDraftVersion(NOW_MS, ACTOR, "card", 0, {}, (), rates, (), ""))
    return int(draft.number)  # type: ignore[attr-defined]


def machine() -> Machine:
    """Seven customers; c0, c2, c4 and c6 with gpt-4 usage at T + 1h, the others none yet."""
    m = Machine(card_world(CUSTOMERS))
    for n in (0, 2, 4, 6):
        m.ingest(f"c{n}", 1, T + HOUR_MS + 60_000, 10.0)
    return m


def test_usage_between_slices_ends_in_the_plan_of_the_moment_the_publish_applies() -> None:
    m = machine()
    publish = cmd.PublishVersion(NOW_MS, ACTOR, "card", m.draft("0.5"), T)
    assert m.billing.begin_plan(publish)
    assert m.billing.plan_step(3)  # c0, c1, c2 looked at
    m.ingest("c1", 2, T + 2 * HOUR_MS, 4.0)  # looked at with no usage: now it has some to re-rate
    m.ingest("c5", 3, T + 2 * HOUR_MS, 4.0)  # not looked at yet
    n = 4
    while m.billing.plan_step(3):
        m.ingest("c3", n, T + 3 * HOUR_MS, 1.0)  # touched again after each slice, looked at again
        n += 1
    plan = m.billing.finish_plan()
    whole = m.billing.rerate_plan(publish)
    assert plan is not None and whole is not None
    assert plan == whole
    assert plan.customers == ["c0", "c1", "c2", "c3", "c4", "c5", "c6"]
    assert m.billing.planning is None


def test_usage_the_version_cannot_price_after_its_slice_refuses_the_publish_as_the_whole_check() -> None:
    m = machine()
    publish = cmd.PublishVersion(NOW_MS, ACTOR, "card", gpt4_only(m, "0.5"), T)
    assert m.billing.begin_plan(publish)
    assert m.billing.plan_step(4)  # c0..c3 pass: gpt-4 only
    m.ingest("c0", 2, T + 2 * HOUR_MS, 1.0, model="llama")
    with pytest.raises(FailedPrecondition) as whole:
        m.billing.rerate_plan(publish)
    with pytest.raises(FailedPrecondition) as sliced:
        while m.billing.plan_step(4):
            pass
        m.billing.finish_plan()
    assert str(sliced.value) == str(whole.value)
    assert "llama" in str(sliced.value)
    assert m.billing.planning is None


def test_a_slice_meeting_usage_the_version_cannot_price_refuses_at_once_changing_nothing() -> None:
    m = machine()
    m.ingest("c4", 2, T + 2 * HOUR_MS, 1.0, model="llama")
    publish = cmd.PublishVersion(NOW_MS, ACTOR, "card", gpt4_only(m, "0.5"), T)
    last_seq = m.billing.last_seq
    assert m.billing.begin_plan(publish)
    assert m.billing.plan_step(4)  # c0..c3
    with pytest.raises(FailedPrecondition, match="llama"):
        m.billing.plan_step(4)  # c4..c6
    assert m.billing.planning is None
    assert m.billing.last_seq == last_seq
    assert m.billing.engine.state.rate_cards["card"].version(publish.version).state is VersionState.DRAFT


def test_a_publish_the_engine_refuses_anyway_has_nothing_to_plan() -> None:
    m = machine()
    unknown = cmd.PublishVersion(NOW_MS, ACTOR, "card", 99, T)
    assert not m.billing.begin_plan(unknown)
    assert m.billing.planning is None


def test_through_the_writer_usage_submitted_after_a_publish_applies_during_its_plan_and_replay_agrees() -> None:
    """A publish planned in three slices, usage submitted right after it: the usage is journaled before the
    publish (it applied between slices), which then re-rates it with the rest; the result is what publishing
    after that usage gives, and recovering the journal reproduces the live state byte for byte."""
    journal = MemoryJournal()

    async def main() -> tuple[Billing, PublishResult]:
        billing = recover(journal)
        sequencer = Sequencer(billing, journal, clock_ms=lambda: RECEIVED_MS, plan_slice_customers=2)
        sequencer.start()
        for command in world([5] * len(ONLINE_CUSTOMERS)).journal:
            await sequencer.run(command)
        before = [(n, hour, 1) for n in range(len(ONLINE_CUSTOMERS)) for hour in range(3)]
        await sequencer.run(UsageBatch(online.batch("before", before), 100))
        published = sequencer.submit(online.publish(0))
        during = [sequencer.submit(UsageBatch(online.batch(f"during-{n}", [(n, 1, 1)]), 10)) for n in (4, 0)]
        for future in during:
            await future
        _, result = await published
        assert isinstance(result, PublishResult)
        await sequencer.close()
        return billing, result

    live, result = asyncio.run(main())
    records = [decode_record(blob) for _, blob in journal.read_records(0)][-4:]
    kinds = ["publish" if r.deferred else "completion" if r.rerated else "usage" if r.usage else "?" for r in records]
    assert kinds == ["usage", "usage", "publish", "completion"]
    # 3 calls each, 4 for c0 and c4, all at 3 once published: what publishing after the usage gives.
    assert (result.customers_rerated, result.events_rerated) == (5, 17)
    assert [live.balance(c, RECEIVED_MS).period_charges for c in ONLINE_CUSTOMERS] == [
        units * 10**12 for units in (12, 9, 9, 9, 12)
    ]
    replayed = recover(journal)
    assert replayed.kernel.snapshot() == live.kernel.snapshot()
    assert msgspec.json.encode(replayed.engine.state) == msgspec.json.encode(live.engine.state)
