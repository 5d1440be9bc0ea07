"""PublishVersion's refusals and retries around re-rating (engine/rerate.py, engine/billing.py): what cannot be
re-rated is refused before anything changes, and a retried publish re-rates nothing again."""

from __future__ import annotations

import msgspec
import pytest
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.control import fingerprint
from engine.errors import FailedPrecondition, Repeated
from engine.products import Aggregation
from engine.ratecard import VersionState
from engine.versions import PublishResult
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate, unit
from tests.kernel_fixtures import usage_event

RECEIVED_MS = EPOCH_MS + 10 * HOUR_MS


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


def off_hour_machine() -> Billing:
    """A contract starting off the hour, with usage in its first hour (00:45, 2 units: its part from 00:30 only)
    and at 03:00 (3 units), priced 1 a unit."""
    world = World()
    world.product("calls", value_key="n", dimensions=())
    world.rate_card()
    world.version([rate("calls", unit("1"))])
    world.customer()
    world.contract(starting_at_ms=OFF_HOUR_START_MS)
    billing = Billing(engine=world.engine)
    for name, at_ms, n in (("first", EPOCH_MS + 45 * 60_000, 2.0), ("later", EPOCH_MS + 3 * HOUR_MS, 3.0)):
        batch = usage_pb2.UsageBatch(events=[usage_event(name, at_ms, {"n": n})]).SerializeToString()
        assert billing.ingest(batch, RECEIVED_MS).accepted == 1
    return billing


def server_publish(number: int, effective_from_ms: int, refused: bool) -> cmd.PublishVersion:
    return cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", number, effective_from_ms, split_hours_refused=refused)


def test_the_servers_publish_rerating_an_hour_holding_a_period_boundary_off_the_hour_is_refused_whole() -> None:
    """The server sets split_hours_refused: the first hour's bucket (00:00-01:00) holds the contract's start
    (00:30), so no re-rating can price it exactly (one published effective from 00:00 left it at the old price,
    outside every period's walk): the publish is refused, naming the customer, the product and the hour, and
    changes nothing. A rollback is refused likewise."""
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
    rollback = cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, EPOCH_MS, split_hours_refused=True)
    with pytest.raises(FailedPrecondition, match="holds a period boundary off the hour"):
        billing.apply(rollback, billing.last_seq + 1)
    assert billing.kernel.snapshot() == before


def test_a_publish_journaled_without_split_hours_refused_replays_its_rerating_as_before() -> None:
    """A PublishVersion record an earlier release journaled has no split_hours_refused: decoded, it reads False,
    and it re-rates as it did then (the 03:00 bucket, 3 units 1 -> 2; the first hour's left at the old price)."""
    stored = msgspec.json.encode(cmd.PublishVersion(RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS))
    assert b"split_hours_refused" in stored
    old = msgspec.json.decode(stored.replace(b',"split_hours_refused":false', b""), type=cmd.PublishVersion)
    assert old.split_hours_refused is False
    billing = off_hour_machine()
    number = draft(billing, (rate("calls", unit("2")),))
    assert number == old.version
    result = billing.apply(old, billing.last_seq + 1)
    assert isinstance(result, PublishResult)
    assert (result.buckets_rerated, result.rerated_amount_delta_picos) == (1, 3 * 10**12)


def test_split_hours_refused_is_the_servers_in_neither_audit_entry_nor_retry_fingerprint() -> None:
    billing = off_hour_machine()
    number = draft(billing, (rate("calls", unit("2")),))
    later = EPOCH_MS + 5 * HOUR_MS  # after the usage: nothing to re-rate, so it publishes
    assert fingerprint(server_publish(number, later, refused=True)) == fingerprint(
        server_publish(number, later, refused=False)
    )
    billing.apply(server_publish(number, later, refused=True), billing.last_seq + 1)
    rollback = cmd.RollbackRateCard(RECEIVED_MS, ACTOR, "card", 1, later + HOUR_MS, split_hours_refused=True)
    assert fingerprint(rollback) == fingerprint(msgspec.structs.replace(rollback, split_hours_refused=False))
    billing.apply(rollback, billing.last_seq + 1)
    entries = [e for e in billing.engine.state.audit if e.action in ("PublishVersion", "RollbackRateCard")]
    assert [e.action for e in entries][-2:] == ["PublishVersion", "RollbackRateCard"]
    assert all("split_hours_refused" not in entry.diff for entry in entries), entries
