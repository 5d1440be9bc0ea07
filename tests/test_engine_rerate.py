"""PublishVersion's refusals and retries around re-rating (engine/rerate.py, engine/billing.py): what cannot be
re-rated is refused before anything changes, and a retried publish re-rates nothing again."""

from __future__ import annotations

import pytest
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
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
