"""PublishVersion's refusals and retries around re-rating (engine/rerate.py, engine/billing.py): what cannot be
re-rated is refused before anything changes, and a retried publish re-rates nothing again."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import TypeVar

import msgspec
import pytest
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.control import fingerprint
from engine.errors import FailedPrecondition, Repeated
from engine.pending import PendingRerating
from engine.products import Aggregation
from engine.ratecard import TierMode, VersionState
from engine.rerate import simulate
from engine.versions import PublishResult
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate, tiered, unit
from tests.kernel_fixtures import usage_event

RECEIVED_MS = EPOCH_MS + 10 * HOUR_MS


def calls_world() -> World:
    """Customer acme, no contract yet, and a card pricing `calls` (value `n`, no pricing dimensions) at 1 a unit."""
    world = World()
    world.product("calls", value_key="n", dimensions=())
    world.rate_card()
    world.version([rate("calls", unit("1"))])
    world.customer()
    return world


def machine(aggregation: Aggregation) -> Billing:
    world = World()
    world.product("calls", aggregation=aggregation, value_key="n", dimensions=("model",))
    world.rate_card()
    world.version([rate("calls", unit("1"))])
    world.customer()
    world.contract()
    billing = Billing(engine=world.engine)
    for hour in range(3):
        event = usage_event(f"t{hour}", EPOCH_MS + hour * HOUR_MS, {"n": 2.0}, dimensions={"model": "m1"})
        batch = usage_pb2.UsageBatch(events=[event]).SerializeToString()
        assert billing.ingest(batch, RECEIVED_MS).accepted == 1
    return billing


def draft(billing: Billing, rates: tuple[object, ...]) -> int:
    command = cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), rates, (), "")  # type: ignore[arg-type]
    version = billing.apply(command, billing.last_seq + 1)
    return int(version.number)  # type: ignore[attr-defined]


def publish(billing: Billing, number: int, effective_from_ms: int) -> object:
    return billing.apply(
        cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, effective_from_ms), billing.last_seq + 1
    )


def test_a_gauge_product_cannot_be_rerated_and_the_publish_changes_nothing() -> None:
    billing = machine(Aggregation.MAX)
    number = draft(billing, (rate("calls", unit("2")),))
    before = billing.kernel.snapshot()
    with pytest.raises(FailedPrecondition) as refused:
        publish(billing, number, EPOCH_MS + HOUR_MS)
    assert 'product "calls" aggregates by Max' in str(refused.value)
    assert billing.engine.rate_card("card").version(number).state is VersionState.DRAFT
    assert billing.kernel.snapshot() == before
    # Effective after the usage, nothing is re-rated: it publishes.
    result = publish(billing, number, EPOCH_MS + 5 * HOUR_MS)
    assert isinstance(result, PublishResult) and result.buckets_rerated == 0


def test_a_version_without_a_rate_for_usage_it_would_rerate_is_refused() -> None:
    billing = machine(Aggregation.SUM)
    number = draft(billing, (rate("calls", unit("2"), model="other"),))
    with pytest.raises(FailedPrecondition) as refused:
        publish(billing, number, EPOCH_MS)
    assert 'no rate for product "calls"' in str(refused.value)
    assert billing.engine.rate_card("card").version(number).state is VersionState.DRAFT


def test_a_retried_publish_rerates_nothing_again() -> None:
    billing = machine(Aggregation.SUM)
    number = draft(billing, (rate("calls", unit("3")),))
    first = publish(billing, number, EPOCH_MS + HOUR_MS)
    assert isinstance(first, PublishResult)
    # Hours 1 and 2: 2 units each, 1 -> 3 a unit: +4 each.
    assert (first.customers_rerated, first.buckets_rerated, first.events_rerated) == (1, 2, 2)
    assert first.rerated_amount_delta_picos == 8 * 10**12
    adjustments = billing.kernel.adjustments("acme")
    assert [(a[1] - EPOCH_MS // HOUR_MS, a[5], a[6], a[9], a[10]) for a in adjustments] == [
        (1, [1], number, 2 * 10**12, 6 * 10**12),
        (2, [1], number, 2 * 10**12, 6 * 10**12),
    ]
    with pytest.raises(Repeated) as again:
        publish(billing, number, EPOCH_MS + HOUR_MS)
    repeated = again.value.result
    assert isinstance(repeated, PublishResult) and repeated.events_rerated == repeated.buckets_rerated == 0
    assert len(billing.kernel.adjustments("acme")) == 2


OFF_HOUR_START_MS = EPOCH_MS + HOUR_MS // 2  # 2026-01-01T00:30:00Z: periods run 00:30 to 00:30


def off_hour_machine(before_usage: Callable[[Billing], None] | None = None) -> Billing:
    """A contract starting off the hour, with usage in its first hour (00:45, 2 units: its part from 00:30 only)
    and at 03:00 (3 units), priced 1 a unit (`before_usage` may change that before the usage is rated)."""
    world = calls_world()
    world.contract(starting_at_ms=OFF_HOUR_START_MS)
    billing = Billing(engine=world.engine)
    if before_usage is not None:
        before_usage(billing)
    for name, at_ms, n in (("first", EPOCH_MS + 45 * 60_000, 2.0), ("later", EPOCH_MS + 3 * HOUR_MS, 3.0)):
        batch = usage_pb2.UsageBatch(events=[usage_event(name, at_ms, {"n": n})]).SerializeToString()
        assert billing.ingest(batch, RECEIVED_MS).accepted == 1
    return billing


def version_2_from_the_start(billing: Billing) -> None:
    """Version 2 (calls at 2 a unit) in force from 00:00: a rollback to version 1 from then changes the prices."""
    publish(billing, draft(billing, (rate("calls", unit("2")),)), EPOCH_MS)


def server_publish(number: int, effective_from_ms: int, refused: bool) -> cmd.PublishVersion:
    return cmd.PublishVersion(
        RECEIVED_MS, ACTOR, "card", number, effective_from_ms, split_hours_refused=refused, rerate_in_contract=refused
    )


def test_the_servers_publish_rerating_an_hour_holding_a_period_boundary_off_the_hour_is_refused_whole() -> None:
    """The server sets split_hours_refused: the first hour's bucket (00:00-01:00) holds the contract's start
    (00:30), so no re-rating can price it exactly (one published effective from 00:00 left it at the old price,
    outside every period's walk): the publish is refused, naming the customer, the product and the hour, and
    changes nothing. A rollback re-rating that hour (to version 1 from 00:00, where version 2 is in force) is refused
    likewise."""
    billing = off_hour_machine()
    number = draft(billing, (rate("calls", unit("2")),))
    before = billing.kernel.snapshot()
    with pytest.raises(FailedPrecondition) as refused:
        billing.apply(server_publish(number, EPOCH_MS, refused=True), billing.last_seq + 1)
    assert (
        'cannot be priced again: customer "acme": product "calls": the hour from 2026-01-01T00:00:00Z holds a period '
        "boundary off the hour (2026-01-01T00:30:00Z)"
    ) in str(refused.value)
    assert billing.engine.rate_card("card").version(number).state is VersionState.DRAFT
    assert billing.kernel.snapshot() == before
    rolled = off_hour_machine(before_usage=version_2_from_the_start)
    before = rolled.kernel.snapshot()
    rollback = cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS, split_hours_refused=True)
    with pytest.raises(FailedPrecondition, match="holds a period boundary off the hour"):
        rolled.apply(rollback, rolled.last_seq + 1)
    assert rolled.kernel.snapshot() == before
    assert [v.number for v in rolled.engine.rate_card("card").versions] == [1, 2]


def test_a_publish_journaled_without_split_hours_refused_replays_its_rerating_as_before() -> None:
    """A PublishVersion record an earlier release journaled has no split_hours_refused: decoded, it reads False,
    and it re-rates as it did then (the 03:00 bucket, 3 units 1 -> 2; the first hour's left at the old price)."""
    stored = msgspec.json.encode(cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS))
    before = stored.replace(b',"split_hours_refused":false', b"").replace(b',"rerate_in_contract":false', b"")
    assert b"split_hours_refused" not in before and b"rerate_in_contract" not in before
    old = msgspec.json.decode(before, type=cmd.PublishVersion)
    assert (old.split_hours_refused, old.rerate_in_contract) == (False, False)
    billing = off_hour_machine()
    number = draft(billing, (rate("calls", unit("2")),))
    assert number == old.version
    result = billing.apply(old, billing.last_seq + 1)
    assert isinstance(result, PublishResult)
    assert (result.buckets_rerated, result.rerated_amount_delta_picos) == (1, 3 * 10**12)


def test_split_hours_refused_and_rerate_in_contract_are_the_servers_in_neither_audit_entry_nor_fingerprint() -> None:
    billing = off_hour_machine()
    number = draft(billing, (rate("calls", unit("2")),))
    later = EPOCH_MS + 5 * HOUR_MS  # after the usage: nothing to re-rate, so it publishes
    assert fingerprint(server_publish(number, later, refused=True)) == fingerprint(
        server_publish(number, later, refused=False)
    )
    billing.apply(server_publish(number, later, refused=True), billing.last_seq + 1)
    rollback = cmd.RollbackRateCard(
        RECEIVED_MS, ACTOR, "card", 1, later + HOUR_MS, split_hours_refused=True, rerate_in_contract=True
    )
    unasked = msgspec.structs.replace(rollback, split_hours_refused=False, rerate_in_contract=False)
    assert fingerprint(rollback) == fingerprint(unasked)
    billing.apply(rollback, billing.last_seq + 1)
    entries = [e for e in billing.engine.state.audit if e.action in ("PublishVersion", "RollbackRateCard")]
    assert [e.action for e in entries][-2:] == ["PublishVersion", "RollbackRateCard"]
    assert all("split_hours_refused" not in e.diff and "rerate_in_contract" not in e.diff for e in entries), entries


def override_off_hour_machine(before_usage: Callable[[Billing], None] | None = None) -> Billing:
    """calls at 1 a unit; the contract has an override at 0.5 a unit from 01:30. 4 units at 01:10 (before it): 4;
    4 at 01:40 (inside it): 0.5 x 8 - 0.5 x 4 = 2 (`before_usage` may change the card before the usage is rated)."""
    world = calls_world()
    world.contract()
    world.override("calls", price="0.5", starting_at_ms=EPOCH_MS + HOUR_MS + HOUR_MS // 2)
    billing = Billing(engine=world.engine)
    if before_usage is not None:
        before_usage(billing)
    for name, minutes in (("before", 70), ("inside", 100)):
        batch = usage_pb2.UsageBatch(events=[usage_event(name, EPOCH_MS + minutes * 60_000, {"n": 4.0})])
        assert billing.ingest(batch.SerializeToString(), RECEIVED_MS).accepted == 1
    return billing


def test_the_servers_publish_rerating_an_hour_holding_an_override_start_off_the_hour_is_refused() -> None:
    """The server sets override_hours_refused: the 01:00 bucket holds 8 units, 4 used before the override's 01:30
    start and 4 after, which it cannot tell apart: a publish (even of the same prices) or a rollback re-rating it is
    refused naming the customer, the product, the hour and the override's instant, and changes nothing."""
    billing = override_off_hour_machine()
    number = draft(billing, (rate("calls", unit("1")),))
    before = billing.kernel.snapshot()
    publish_command = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS, override_hours_refused=True)
    with pytest.raises(FailedPrecondition) as refused:
        billing.apply(publish_command, billing.last_seq + 1)
    assert (
        'customer "acme": product "calls": the hour from 2026-01-01T01:00:00Z holds the start or end of a price '
        "override off the hour (2026-01-01T01:30:00Z)"
    ) in str(refused.value)
    assert billing.engine.rate_card("card").version(number).state is VersionState.DRAFT
    assert billing.kernel.snapshot() == before
    # A rollback to version 1 from 01:00, where version 2 (2 a unit from 00:00) is in force, re-rates that hour.
    rolled = override_off_hour_machine(before_usage=version_2_from_the_start)
    rolled_before = rolled.kernel.snapshot()
    rollback = cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS + HOUR_MS, override_hours_refused=True)
    with pytest.raises(FailedPrecondition, match="override off the hour"):
        rolled.apply(rollback, rolled.last_seq + 1)
    assert rolled.kernel.snapshot() == rolled_before
    assert [v.number for v in rolled.engine.rate_card("card").versions] == [1, 2]
    # Effective from 02:00, after that hour: nothing to re-rate there, it publishes.
    later = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS + 2 * HOUR_MS, override_hours_refused=True)
    assert isinstance(billing.apply(later, billing.last_seq + 1), PublishResult)


def test_an_override_of_an_earlier_contract_does_not_refuse_the_hours_of_the_next_one() -> None:
    """Contract c-a until 02:00 holds an override (0.5 a unit) whose window ends at 02:30, past the contract; c-b
    prices from 02:00 at the card's 1 a unit. 4 units at 02:10 are c-b's: 4. The 02:00 bucket is priced by c-b, which
    has no override, so nothing in it is split: a publish at 2 a unit from 00:00 re-rates it, 4 -> 8."""
    world = calls_world()
    world.contract("c-a", ending_before_ms=EPOCH_MS + 2 * HOUR_MS)
    world.contract("c-b", starting_at_ms=EPOCH_MS + 2 * HOUR_MS)
    world.override("calls", contract_id="c-a", price="0.5", ending_before_ms=EPOCH_MS + 2 * HOUR_MS + HOUR_MS // 2)
    billing = Billing(engine=world.engine)
    batch = usage_pb2.UsageBatch(events=[usage_event("b", EPOCH_MS + 130 * 60_000, {"n": 4.0})])
    assert billing.ingest(batch.SerializeToString(), RECEIVED_MS).accepted == 1
    number = draft(billing, (rate("calls", unit("2")),))
    command = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS, override_hours_refused=True)
    result = billing.apply(command, billing.last_seq + 1)
    assert isinstance(result, PublishResult)
    assert (result.buckets_rerated, result.rerated_amount_delta_picos) == (1, 4 * 10**12)


def test_an_override_boundary_that_changes_no_price_in_its_hour_does_not_refuse() -> None:
    """`deal` (model=m, 0.5 a unit, always) is more specific than `promo` (every model, multiplier 2, from 01:30):
    usage of model m is priced by `deal` on both sides of 01:30, so its 01:00 bucket is not split and a publish at 2
    a unit from 00:00 re-rates it (8 units: 4 -> 4, version only). Usage of model z in that hour is split by `promo`
    and would be refused: it is what the check must see, not every override's boundary."""
    world = World()
    world.product("calls", value_key="n", dimensions=("model",))
    world.rate_card()
    world.version([rate("calls", unit("1"))])
    world.customer()
    world.contract()
    world.override("calls", price="0.5", match={"model": "m"}, override_id="deal")
    world.override("calls", multiplier="2", starting_at_ms=EPOCH_MS + HOUR_MS + HOUR_MS // 2, override_id="promo")
    billing = Billing(engine=world.engine)
    for name, minutes in (("before", 70), ("inside", 100)):
        event = usage_event(name, EPOCH_MS + minutes * 60_000, {"n": 4.0}, dimensions={"model": "m"})
        assert billing.ingest(usage_pb2.UsageBatch(events=[event]).SerializeToString(), RECEIVED_MS).accepted == 1
    number = draft(billing, (rate("calls", unit("2")),))
    command = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS, override_hours_refused=True)
    result = billing.apply(command, billing.last_seq + 1)
    assert isinstance(result, PublishResult)
    assert (result.buckets_rerated, result.rerated_amount_delta_picos) == (1, 0)
    event = usage_event("z", EPOCH_MS + 80 * 60_000, {"n": 1.0}, dimensions={"model": "z"})
    assert billing.ingest(usage_pb2.UsageBatch(events=[event]).SerializeToString(), RECEIVED_MS).accepted == 1
    later = draft(billing, (rate("calls", unit("3")),))
    again = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", later, EPOCH_MS, override_hours_refused=True)
    with pytest.raises(FailedPrecondition, match="override off the hour"):
        billing.apply(again, billing.last_seq + 1)


def test_a_publish_journaled_without_override_hours_refused_replays_its_rerating_as_before() -> None:
    """A PublishVersion record an earlier release journaled has no override_hours_refused: decoded, it reads False,
    and re-rates as it did then: the 01:00 bucket priced at its hour's start, before the override: 8 units at 1,
    6 -> 8. The field is the server's: in neither the retry fingerprint nor the audit entry."""
    stored = msgspec.json.encode(cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS))
    before = stored.replace(b',"override_hours_refused":false', b"")
    assert b"override_hours_refused" not in before
    old = msgspec.json.decode(before, type=cmd.PublishVersion)
    assert old.override_hours_refused is False
    asked = msgspec.structs.replace(old, override_hours_refused=True)
    assert fingerprint(old) == fingerprint(asked)
    billing = override_off_hour_machine()
    assert draft(billing, (rate("calls", unit("1")),)) == old.version
    result = billing.apply(old, billing.last_seq + 1)
    assert isinstance(result, PublishResult)
    assert (result.buckets_rerated, result.rerated_amount_delta_picos) == (1, 2 * 10**12)
    entries = [e for e in billing.engine.state.audit if e.action == "PublishVersion"]
    assert entries and all("override_hours_refused" not in e.diff for e in entries)


SWITCH_MS = EPOCH_MS + 19 * 24 * HOUR_MS + 12 * HOUR_MS  # 2026-01-20T12:00:00Z, on the hour
JAN_26_MS = EPOCH_MS + 25 * 24 * HOUR_MS


def switched_machine() -> Billing:
    """Contract c-old from Jan 1 to the switch, c-new from it (same card, 1 a unit); usage on Jan 10 (2 units, the
    old contract's last period, Jan 1 - Feb 1) and Jan 25 (3 units, the new one's first)."""
    world = calls_world()
    world.contract("c-old", ending_before_ms=SWITCH_MS)
    world.contract("c-new", starting_at_ms=SWITCH_MS)
    billing = Billing(engine=world.engine)
    for name, day, n in (("a", 9, 2.0), ("b", 24, 3.0)):
        event = usage_event(name, EPOCH_MS + day * 24 * HOUR_MS + 10 * HOUR_MS, {"n": n})
        assert billing.ingest(usage_pb2.UsageBatch(events=[event]).SerializeToString(), JAN_26_MS).accepted == 1
    return billing


def test_the_servers_publish_after_a_switch_rerates_each_hour_bucket_once() -> None:
    """rerate_in_contract (the server's): the old contract's last period's run ends at the contract's end, so the
    new contract's bucket (Jan 25) is priced and recorded once: two buckets re-rated, +2 and +3. A publish
    journaled without it re-rates as then: the Jan 25 bucket a second time in the old period's run (three
    buckets, +8, two adjustments for it)."""
    jan_25 = (EPOCH_MS + 24 * 24 * HOUR_MS + 10 * HOUR_MS) // HOUR_MS
    for in_contract, buckets, delta, jan_25_adjustments in ((True, 2, 5, 1), (False, 3, 8, 2)):
        billing = switched_machine()
        number = draft(billing, (rate("calls", unit("2")),))
        command = cmd.PublishVersion(
            JAN_26_MS, ACTOR, "card", number, EPOCH_MS + 4 * 24 * HOUR_MS, rerate_in_contract=in_contract
        )
        result = billing.apply(command, billing.last_seq + 1)
        assert isinstance(result, PublishResult)
        assert (result.buckets_rerated, result.rerated_amount_delta_picos) == (buckets, delta * 10**12), in_contract
        hours = [adjustment[1] for adjustment in billing.kernel.adjustments("acme")]
        assert hours.count(jan_25) == jan_25_adjustments, (in_contract, hours)


def test_a_pending_rerating_in_a_snapshot_of_an_earlier_release_rerates_as_then() -> None:
    """PendingRerating.in_contract (the publish's rerate_in_contract) is missing from the snapshots of earlier
    releases: such a pending re-rating reads False, the rule its publish was journaled under."""
    pending = PendingRerating(7, "card", 3, ["acme"], {"acme": None}, in_contract=True)
    stored = msgspec.msgpack.encode(msgspec.structs.replace(pending, in_contract=False))
    fields = msgspec.msgpack.decode(stored)
    assert fields.pop("in_contract") is False
    earlier = msgspec.msgpack.decode(msgspec.msgpack.encode(fields), type=PendingRerating)
    assert earlier == msgspec.structs.replace(pending, in_contract=False)


def test_an_hour_holding_a_boundary_between_closed_periods_only_is_left_alone_not_refused() -> None:
    """Once the period the first hour's usage is of (Jan 1 00:30 - Feb 1 00:30) is closed, nothing would price that
    hour again: the server's publish effective from 00:00 is accepted, leaving the closed usage alone."""
    billing = off_hour_machine()
    number = draft(billing, (rate("calls", unit("2")),))
    close_ms = EPOCH_MS + 32 * 24 * HOUR_MS
    billing.apply(cmd.ClosePeriod(close_ms, ACTOR, "acme", OFF_HOUR_START_MS), billing.last_seq + 1)
    command = msgspec.structs.replace(server_publish(number, EPOCH_MS, refused=True), at_ms=close_ms)
    result = billing.apply(command, billing.last_seq + 1)
    assert isinstance(result, PublishResult)
    assert (result.buckets_rerated, result.closed_buckets_left_alone) == (0, 1)


def test_simulating_over_a_switch_counts_each_hour_bucket_once() -> None:
    """SimulateVersion over January for the switched customer: the old contract's last period (Jan 1 - Feb 1)
    walks its own hours only, so the new contract's bucket (Jan 25, 3 units) is counted once: current 2 + 3,
    simulated at 2 a unit 4 + 6 (it was counted in both periods: 8 and 16)."""
    billing = switched_machine()
    number = draft(billing, (rate("calls", unit("2")),))
    feb_1 = EPOCH_MS + 31 * 24 * HOUR_MS
    simulation = simulate(billing.engine.state, billing.kernel, "card", number, EPOCH_MS, feb_1, [])
    assert simulation.lines == [("acme", "calls", 5 * 10**12, 10 * 10**12)]


def held_machine() -> Billing:
    """A card at 1 a unit; 10 credits; 4 units used in the first hour (4 drawn), then a hold of 6 at RECEIVED_MS
    (an hour's TTL)."""
    world = calls_world()
    world.contract()
    world.grant("g", "10")
    billing = Billing(engine=world.engine)
    event = usage_event("used", EPOCH_MS + 60_000, {"n": 4.0})
    assert billing.ingest(usage_pb2.UsageBatch(events=[event]).SerializeToString(), RECEIVED_MS).accepted == 1
    billing.apply(cmd.Reserve(RECEIVED_MS, ACTOR, "acme", "h", "ai", {}, {"n": 6.0}, HOUR_MS), billing.last_seq + 1)
    return billing


def test_the_servers_publish_shrinks_a_hold_to_the_credit_a_rise_before_it_leaves_and_an_older_record_does_not() -> (
    None
):
    """rerate_holds_in_time (the server's): the hold is taken again after the usage before it, which a rise to 2 makes
    cost 8: 8 drawn, the hold keeps the 2 left, no overage. A publish journaled without it re-rates as then: the hold
    keeps 6, the usage draws the 4 it leaves and 4 is overage."""
    for in_time, held, overage in ((True, 2, 0), (False, 6, 4)):
        billing = held_machine()
        assert billing.balance("acme", RECEIVED_MS).held == 6 * 10**12
        number = draft(billing, (rate("calls", unit("2")),))
        command = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS, rerate_holds_in_time=in_time)
        billing.apply(command, billing.last_seq + 1)
        balance = billing.balance("acme", RECEIVED_MS)
        assert (balance.period_charges, balance.held, balance.overage) == (8 * 10**12, held * 10**12, overage * 10**12)
        assert balance.remaining - balance.held == 0, in_time


def test_rerate_holds_in_time_is_the_servers_in_neither_audit_entry_nor_fingerprint_and_old_snapshots_lack_it() -> None:
    """A PublishVersion or RollbackRateCard record of an earlier release has no rerate_holds_in_time (it reads False),
    no audit entry holds it, a retry's fingerprint ignores it; a pending re-rating in a snapshot of an earlier
    release reads holds_in_time False, the rule its publish was journaled under."""
    assert_a_server_set_rerate_rule(
        "rerate_holds_in_time",
        "holds_in_time",
        cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS),
        cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS, rerate_holds_in_time=True),
        held_machine(),
    )


def assert_a_server_set_rerate_rule(
    field: str,
    pending_field: str,
    stored: cmd.PublishVersion | cmd.RollbackRateCard,
    retried: cmd.PublishVersion | cmd.RollbackRateCard,
    billing: Billing,
) -> None:
    """`field`, a re-rating rule the server sets on publishes and rollbacks: `stored` (made without it) written and
    read back without it reads False; `retried` (made with it) has the fingerprint it has without it; it is a server
    field; a publish with it applied to `billing` leaves it out of the audit entry; a pending re-rating whose
    `pending_field` an earlier release did not write reads False."""
    encoded = msgspec.json.encode(stored)
    old = msgspec.json.decode(encoded.replace(f',"{field}":false'.encode(), b""), type=type(stored))
    assert field.encode() in encoded and getattr(old, field) is False
    assert fingerprint(retried) == fingerprint(msgspec.structs.replace(retried, **{field: False}))
    assert field in cmd.SERVER_SET_FIELDS
    number = draft(billing, (rate("calls", unit("2")),))
    command = msgspec.structs.replace(cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS), **{field: True})
    billing.apply(command, billing.last_seq + 1)
    entries = [e for e in billing.engine.state.audit if e.action == "PublishVersion"]
    assert entries and all(field not in e.diff for e in entries), entries
    pending = msgspec.structs.replace(PendingRerating(7, "card", 3, ["acme"], {"acme": None}), **{pending_field: True})
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(pending))
    assert fields.pop(pending_field) is True
    earlier = msgspec.msgpack.decode(msgspec.msgpack.encode(fields), type=PendingRerating)
    assert earlier == msgspec.structs.replace(pending, **{pending_field: False})


def topped_up_machine() -> Billing:
    """A card at 1 a unit, no grant; below 1 credit, recharge to 10 at 0.5 a credit. 4 units in the first hour (all
    overage: they buy 10 credits, with the period charged 4), then 2 in the second (drawn from them, 8 left)."""
    world = calls_world()
    world.contract()
    billing = Billing(engine=world.engine)
    billing.apply(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", "1", "10", "0.5", 3), billing.last_seq + 1)
    for n, (transaction_id, at_ms) in enumerate((("first", EPOCH_MS + 60_000), ("second", EPOCH_MS + HOUR_MS))):
        event = usage_event(transaction_id, at_ms, {"n": 4.0 if n == 0 else 2.0})
        assert billing.ingest(usage_pb2.UsageBatch(events=[event]).SerializeToString(), RECEIVED_MS).accepted == 1
    return billing


def test_the_servers_publish_leaves_usage_before_a_top_up_as_overage_and_an_older_record_does_not() -> None:
    """rerate_top_ups_in_time (the server's): a version with the same prices from the first hour settles the period
    again, and the top-up pays only the charges after the 4 that bought it: overage 4, 8 credits left, as rated. A
    publish journaled without it re-rates as then: the top-up pays from the period's start, no overage, 4 left."""
    for in_time, overage, remaining in ((True, 4, 8), (False, 0, 4)):
        billing = topped_up_machine()
        balance = billing.balance("acme", RECEIVED_MS)
        assert (balance.period_charges, balance.overage, balance.remaining) == (6 * 10**12, 4 * 10**12, 8 * 10**12)
        number = draft(billing, (rate("calls", unit("1")),))
        command = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS, rerate_top_ups_in_time=in_time)
        billing.apply(command, billing.last_seq + 1)
        balance = billing.balance("acme", RECEIVED_MS)
        assert (balance.period_charges, balance.overage, balance.remaining) == (
            6 * 10**12,
            overage * 10**12,
            remaining * 10**12,
        ), in_time


def test_rerate_top_ups_in_time_is_the_servers_in_neither_audit_entry_nor_fingerprint_and_old_snapshots_lack_it() -> (
    None
):
    """As rerate_holds_in_time: a record of an earlier release reads False, no audit entry holds it, a retry's
    fingerprint ignores it; a pending re-rating in a snapshot of an earlier release reads top_ups_in_time False."""
    assert_a_server_set_rerate_rule(
        "rerate_top_ups_in_time",
        "top_ups_in_time",
        cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS),
        cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS, rerate_top_ups_in_time=True),
        topped_up_machine(),
    )


def late_event_machine(multiplier: str | None = None) -> tuple[Billing, tuple[object, ...]]:
    """`calls` GRADUATED (<=100 at 1 + flat 10, <=200 at 0.5 + flat 5, then 0.1 + flat 2): p(50) = 60, p(150) =
    140, p(200) = 165. 50 units at 00:01, 100 at 02:00, then 50 more at 00:30 arriving last: charged 60, 80 and 25
    as they arrive (165 = p(200)). With `multiplier`, the contract overrides `calls` by it first (m x those)."""
    graduated = rate("calls", tiered(TierMode.GRADUATED, ("100", "1", "10"), ("200", "0.5", "5"), ("", "0.1", "2")))
    world = World()
    world.product("calls", value_key="n", dimensions=())
    world.rate_card()
    world.version([graduated])
    world.customer()
    world.contract()
    if multiplier is not None:
        world.override("calls", multiplier=multiplier)
    billing = Billing(engine=world.engine)
    for transaction_id, at_ms, n in (("a", 60_000, 50.0), ("b", 2 * HOUR_MS, 100.0), ("late", 1_800_000, 50.0)):
        event = usage_event(transaction_id, EPOCH_MS + at_ms, {"n": n})
        assert billing.ingest(usage_pb2.UsageBatch(events=[event]).SerializeToString(), RECEIVED_MS).accepted == 1
    factor = Decimal(multiplier or "1")
    assert billing.balance("acme", RECEIVED_MS).period_charges == int(165 * factor * 10**12)
    return billing, (graduated,)


def test_the_servers_same_price_publish_after_a_late_event_keeps_the_line_and_an_older_record_does_not() -> None:
    """rerate_carries_earlier_hours (the server's): a version with the same prices from 01:00 prices 02:00 in time
    order, p(200) - p(100) = 55, plus what 00:00 was charged less than in time order (p(100) - 85 = 25): 80, charges
    still 165. A publish journaled without it re-rates as then: 02:00 at 55, charges 140."""
    for carried, charges in ((True, 165), (False, 140)):
        billing, rates = late_event_machine()
        number = draft(billing, rates)
        command = cmd.PublishVersion(
            RECEIVED_MS, ACTOR, "card", number, EPOCH_MS + HOUR_MS, rerate_carries_earlier_hours=carried
        )
        billing.apply(command, billing.last_seq + 1)
        assert billing.balance("acme", RECEIVED_MS).period_charges == charges * 10**12, carried


def test_the_servers_same_price_publish_after_a_late_event_keeps_the_line_under_a_multiplier_override() -> None:
    """rerate_carries_earlier_hours takes in the contract's price overrides: with a multiplier override of 0.5 the
    usage is charged 30, 40 and 12.5 (82.5); the same prices from 01:00 price 02:00 at 0.5 x (p(200) - p(100)) =
    27.5 plus what 00:00 was charged less than in time order (0.5 x p(100) - 42.5 = 12.5): 40, charges 82.5 (the
    carry left out, as before, 70)."""
    billing, rates = late_event_machine("0.5")
    number = draft(billing, rates)
    command = cmd.PublishVersion(
        RECEIVED_MS, ACTOR, "card", number, EPOCH_MS + HOUR_MS, rerate_carries_earlier_hours=True
    )
    billing.apply(command, billing.last_seq + 1)
    assert billing.balance("acme", RECEIVED_MS).period_charges == 82_500_000_000_000


def test_rerate_carries_earlier_hours_is_the_servers_in_neither_audit_entry_nor_fingerprint_and_old_snapshots_lack_it() -> (
    None
):
    """As rerate_top_ups_in_time: a record of an earlier release reads False, no audit entry holds it, a retry's
    fingerprint ignores it; a pending re-rating in a snapshot of an earlier release reads earlier_hours_carried
    False."""
    assert_a_server_set_rerate_rule(
        "rerate_carries_earlier_hours",
        "earlier_hours_carried",
        cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS),
        cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS, rerate_carries_earlier_hours=True),
        late_event_machine()[0],
    )


def test_rerate_counts_closed_events_once_is_the_servers_in_neither_audit_entry_nor_fingerprint_and_old_snapshots_lack_it() -> (
    None
):
    """As rerate_top_ups_in_time: a record of an earlier release reads False (its reply and completion record counted
    a closed-period event once per product it fed), no audit entry holds it, a retry's fingerprint ignores it; a
    pending re-rating in a snapshot of an earlier release reads closed_events_once False."""
    assert_a_server_set_rerate_rule(
        "rerate_counts_closed_events_once",
        "closed_events_once",
        cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS),
        cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS, rerate_counts_closed_events_once=True),
        late_event_machine()[0],
    )


def test_rerate_holds_off_final_grants_is_the_servers_in_neither_audit_entry_nor_fingerprint_and_old_snapshots_lack_it() -> (
    None
):
    """As rerate_holds_in_time: a record of an earlier release has no rerate_holds_off_final_grants (it reads False),
    no audit entry holds it, a retry's fingerprint ignores it; a pending re-rating of an earlier release's snapshot
    reads holds_off_final_grants False."""
    assert_a_server_set_rerate_rule(
        "rerate_holds_off_final_grants",
        "holds_off_final_grants",
        cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS),
        cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS, rerate_holds_off_final_grants=True),
        held_machine(),
    )


def product_order_machine() -> Billing:
    """`calls` (event type `ai`, value `n`) and `zz` (event type `zz`, value `m`), each 1 a unit, no pricing dimensions. Grants: `g1` 5 credits for
    every product (priority 1), `g2` 5 for `zz` only (priority 2). In the first hour, on time: zz 5 at 00:01 drawn
    from g1 (5 -> 0), then calls 5 at 00:02, which g2 cannot pay: 5 overage. Settled again by buckets (product id
    order: calls, then zz), g1 would pay calls and g2 zz: no overage."""
    world = calls_world()
    world.product("zz", event_type="zz", value_key="m", dimensions=())
    world.version([rate("calls", unit("1")), rate("zz", unit("1"))])
    world.contract()
    world.grant("g1", "5", priority=1)
    world.grant("g2", "5", priority=2, products=("zz",))
    billing = Billing(engine=world.engine)
    for transaction_id, at_ms, event_type, values in (
        ("z", EPOCH_MS + 60_000, "zz", {"m": 5.0}),
        ("c", EPOCH_MS + 120_000, "ai", {"n": 5.0}),
    ):
        event = usage_event(transaction_id, at_ms, values, event_type=event_type)
        assert billing.ingest(usage_pb2.UsageBatch(events=[event]).SerializeToString(), RECEIVED_MS).accepted == 1
    return billing


def every_server_rerate_rule(keeps_unchanged_draws: bool) -> dict[str, bool]:
    """The re-rating rules the server sets on a publish (server/services/pricing.py), the newest as given."""
    rules = (
        "split_hours_refused",
        "rerate_in_contract",
        "rerate_holds_in_time",
        "rerate_top_ups_in_time",
        "override_hours_refused",
        "rerate_carries_earlier_hours",
        "rerate_counts_closed_events_once",
        "rerate_breaks_rolled_credit",
        "rerate_holds_off_final_grants",
    )
    return {**dict.fromkeys(rules, True), "rerate_keeps_unchanged_draws": keeps_unchanged_draws}


Publish = TypeVar("Publish", cmd.PublishVersion, cmd.RollbackRateCard)


def stored_before_keeps_unchanged_draws(command: Publish) -> Publish:
    """`command` as an earlier release stored it: written without rerate_keeps_unchanged_draws, read back."""
    fields = msgspec.msgpack.decode(msgspec.msgpack.encode(command))
    del fields["rerate_keeps_unchanged_draws"]
    return msgspec.msgpack.decode(msgspec.msgpack.encode(fields), type=type(command))


def test_the_servers_same_price_publish_keeps_the_draws_as_rated_and_an_older_record_settles_by_buckets() -> None:
    """rerate_keeps_unchanged_draws (the server's): a version with the same prices from the first hour changes no
    bucket's amount, so the draws stay as rated: overage 5, g2's 5 left. A publish (or rollback) record of an earlier
    release, without the field, replays as then, settling the hour by its buckets: g1 pays calls, g2 zz, no
    overage, nothing left. Either way
    the customer counts as re-rated (its buckets now cite the new version) and the delta is 0."""
    for keeps, overage, remaining in ((True, 5, 5), (False, 0, 0)):
        billing = product_order_machine()
        balance = billing.balance("acme", RECEIVED_MS)
        assert (balance.period_charges, balance.overage, balance.remaining) == (10 * 10**12, 5 * 10**12, 5 * 10**12)
        number = draft(billing, (rate("calls", unit("1")), rate("zz", unit("1"))))
        rules = every_server_rerate_rule(keeps)
        command = msgspec.structs.replace(cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS), **rules)
        published = billing.apply(
            command if keeps else stored_before_keeps_unchanged_draws(command), billing.last_seq + 1
        )
        assert isinstance(published, PublishResult)
        assert (published.customers_rerated, published.rerated_amount_delta_picos) == (1, 0), published
        balance = billing.balance("acme", RECEIVED_MS)
        assert (balance.period_charges, balance.overage, balance.remaining) == (
            10 * 10**12,
            overage * 10**12,
            remaining * 10**12,
        ), keeps
        rollback = msgspec.structs.replace(cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS), **rules)
        billing.apply(rollback if keeps else stored_before_keeps_unchanged_draws(rollback), billing.last_seq + 1)
        balance = billing.balance("acme", RECEIVED_MS)
        assert (balance.overage, balance.remaining) == (overage * 10**12, remaining * 10**12), keeps


def test_the_servers_publish_changing_one_bucket_still_settles_the_period_by_buckets() -> None:
    """A version pricing `zz` at 1 and `calls` at 1 from the first hour, but `zz` at 0.8: zz's bucket changes (5 ->
    4), so the period is settled again by buckets: calls 5 from g1 (5 -> 0), zz 4 from g2 (5 -> 1), no overage."""
    billing = product_order_machine()
    number = draft(billing, (rate("calls", unit("1")), rate("zz", unit("0.8"))))
    asked = cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, EPOCH_MS)
    command = msgspec.structs.replace(asked, **every_server_rerate_rule(True))
    published = billing.apply(command, billing.last_seq + 1)
    assert isinstance(published, PublishResult)
    assert (published.customers_rerated, published.rerated_amount_delta_picos) == (1, -(10**12)), published
    balance = billing.balance("acme", RECEIVED_MS)
    assert (balance.period_charges, balance.overage, balance.remaining) == (9 * 10**12, 0, 10**12)


def test_rerate_keeps_unchanged_draws_is_the_servers_in_neither_audit_entry_nor_fingerprint_and_old_snapshots_lack_it() -> (
    None
):
    """As rerate_holds_in_time: a record of an earlier release reads False (its re-rating settled by buckets), no
    audit entry holds it, a retry's fingerprint ignores it; a pending re-rating of an earlier release's snapshot
    reads unchanged_draws_kept False."""
    assert_a_server_set_rerate_rule(
        "rerate_keeps_unchanged_draws",
        "unchanged_draws_kept",
        cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS),
        cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS, rerate_keeps_unchanged_draws=True),
        held_machine(),
    )
