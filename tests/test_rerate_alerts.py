"""A re-rating is a change like any other for balance rules and watchers: a retroactive publish that moves a
customer's balance across a LOW_BALANCE threshold fires the alert once, in the record that completes the re-rating
(the one after the publish's: the writer journals a publish first and re-rates after, engine/pending.py), reports
the customer as touched (a rollback that re-rates back too, clearing the condition), and a replay of the journal
fires exactly the same."""

from __future__ import annotations

import asyncio

from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.alerts import AlertType
from engine.billing import Billing
from engine.versions import PublishResult
from server.journal import MemoryJournal
from server.records import decode_record
from server.recovery import recover
from server.sequencer import Sequencer
from server.usage_batches import UsageBatch
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate, unit
from tests.kernel_fixtures import usage_event

RECEIVED_MS = EPOCH_MS + 10 * HOUR_MS


def setup_commands() -> list[cmd.AdminCommand]:
    """A card at 1 credit a call and a customer with 10 credits."""
    world = World()
    world.product("calls", value_key="n", dimensions=("model",))
    world.rate_card()
    world.version([rate("calls", unit("1"))])
    world.customer()
    world.contract()
    world.grant("g-1", "10")
    return world.journal


def batch(hour: int) -> UsageBatch:
    event = usage_event(f"t{hour}", EPOCH_MS + hour * HOUR_MS, {"n": 2.0}, dimensions={"model": "m1"})
    return UsageBatch(usage_pb2.UsageBatch(batch_id=f"b{hour}", events=[event]).SerializeToString(), 100)


def test_a_retroactive_price_increase_crossing_low_balance_fires_once_in_the_rerating_completion_record() -> None:
    journal = MemoryJournal()
    touched: list[set[str]] = []

    async def main() -> tuple[Billing, int]:
        billing = recover(journal)
        sequencer = Sequencer(billing, journal, clock_ms=lambda: RECEIVED_MS)
        sequencer.committed = lambda customers, _upto: touched.append(set(customers or ()))
        sequencer.start()
        for command in setup_commands():
            await sequencer.run(command)
        await sequencer.run(cmd.CreateAlert(RECEIVED_MS, ACTOR, "low", "acme", False, "LOW_BALANCE", "3"))
        for hour in range(3):  # 6 credits used: 4 available, not below 3
            await sequencer.run(batch(hour))
        assert billing.engine.state.alerts.log == []
        _, draft = await sequencer.run(
            cmd.CreateDraftVersion(RECEIVED_MS, ACTOR, "card", 0, {}, (), (rate("calls", unit("1.5")),), (), "")
        )
        touched.clear()
        # From hour 1: 2 buckets of 2 calls go from 1 to 1.5 a call, so 2 more credits are used: 2 available.
        publish = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", draft.number, EPOCH_MS + HOUR_MS)  # type: ignore[attr-defined]
        seq, published = await sequencer.run(publish)
        assert isinstance(published, PublishResult)
        assert (published.customers_rerated, published.buckets_rerated) == (1, 2)
        assert billing.balance("acme", RECEIVED_MS).available == 2 * 10**12
        assert touched == [{"acme"}]
        # Re-publishing (a retry) re-rates nothing and fires nothing again.
        await sequencer.run(publish)
        # A rollback to version 1 from hour 1 re-rates back: 4 available clears the condition, firing nothing,
        # and the customer is touched again.
        touched.clear()
        await sequencer.run(cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS + HOUR_MS))
        assert billing.balance("acme", RECEIVED_MS).available == 4 * 10**12
        assert touched == [{"acme"}]
        assert billing.engine.state.alerts.fired == {}
        await sequencer.close()
        return billing, seq

    live, publish_seq = asyncio.run(main())
    [alert] = live.engine.state.alerts.log
    assert (alert.seq, alert.rule_id, alert.customer_id, alert.type) == (1, "low", "acme", AlertType.LOW_BALANCE)
    assert (alert.journal_seq, alert.at_ms) == (publish_seq + 1, RECEIVED_MS)
    assert alert.details == {"credits_available": "2", "threshold": "3"}
    records = {seq: decode_record(blob) for seq, blob in journal.read_records(0)}
    assert {seq: record.alerts for seq, record in records.items() if record.alerts} == {publish_seq + 1: [alert]}
    assert isinstance(records[publish_seq].command, cmd.PublishVersion) and records[publish_seq].deferred
    completion = records[publish_seq + 1].rerated
    assert completion is not None and completion.publish_seq == publish_seq
    # Replay leaves the publish's re-rating pending and completes it at the completion record, and must fire the
    # same (recover compares each record's alerts and raises RatingChanged otherwise).
    replayed = recover(journal)
    assert replayed.engine.state.alerts == live.engine.state.alerts
    assert replayed.balance("acme", RECEIVED_MS).available == 4 * 10**12  # the rollback replayed too
