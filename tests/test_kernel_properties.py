"""Invariants of the kernel, on the differential tests' generated worlds.

The result of a sequence of events does not depend on how it was split into batches, nor on the order the
products were created in; credits are conserved; a snapshot restores to identical state bytes and the restored
kernel goes on rating exactly as the original. TARIFF_KERNEL_EXAMPLES raises the budget (make soak).
"""

from __future__ import annotations

import dataclasses

from hypothesis import given
from tariff.v1 import usage_pb2

from engine._kernel import Kernel
from tests.engine_fixtures import EPOCH_MS
from tests.kernel_fixtures import KernelWorld
from tests.reference_billing import REvent
from tests.test_kernel_differential import (
    DAY_MS,
    PROFILE,
    Scenario,
    build_kernel,
    kernel_usage,
    scenarios,
    wire_event,
)

RECEIVED_MS = EPOCH_MS + 50 * DAY_MS


def events_of(scenario: Scenario) -> list[REvent]:
    return [event for batch in scenario.batches for event in batch]


def ingest_all(kernel: KernelWorld, batches: list[list[REvent]]) -> None:
    for batch in batches:
        kernel.ingest([wire_event(e) for e in batch], RECEIVED_MS)  # type: ignore[misc]


def state_view(kernel: KernelWorld) -> tuple[object, ...]:
    balance = kernel.balance(RECEIVED_MS)
    return (kernel_usage(kernel), sorted(balance["grants"]), balance["period_charges"], balance["overage"])


@PROFILE
@given(scenarios())
def test_the_state_does_not_depend_on_how_events_were_batched(scenario: Scenario) -> None:
    events = events_of(scenario)
    whole, singles, as_generated = build_kernel(scenario), build_kernel(scenario), build_kernel(scenario)
    ingest_all(whole, [events])
    ingest_all(singles, [[e] for e in events])
    ingest_all(as_generated, [list(b) for b in scenario.batches])
    assert whole.kernel.snapshot() == singles.kernel.snapshot() == as_generated.kernel.snapshot()


@PROFILE
@given(scenarios())
def test_the_state_does_not_depend_on_the_order_products_were_created_in(scenario: Scenario) -> None:
    reversed_scenario = dataclasses.replace(scenario, products=tuple(reversed(scenario.products)))
    created, reversed_order = build_kernel(scenario), build_kernel(reversed_scenario)
    ingest_all(created, [events_of(scenario)])
    ingest_all(reversed_order, [events_of(scenario)])
    assert state_view(created) == state_view(reversed_order)


@PROFILE
@given(scenarios())
def test_credits_are_conserved(scenario: Scenario) -> None:
    kernel = build_kernel(scenario)
    ingest_all(kernel, [list(b) for b in scenario.batches])
    usage = kernel.kernel.usage("acme")
    assert usage is not None
    drawn_by_grant: dict[str, int] = {}
    for row in usage[0]:
        amount, overage, drawn = row[5], row[6], row[7]
        assert amount == overage + sum(credits for _, credits in drawn)  # every charge went somewhere
        assert overage >= 0
        for grant_id, credits in drawn:
            drawn_by_grant[grant_id] = drawn_by_grant.get(grant_id, 0) + credits
    for grant_id, granted, remaining, expired, grant_drawn in kernel.balance(RECEIVED_MS)["grants"]:
        assert granted == grant_drawn + remaining + expired
        assert grant_drawn == drawn_by_grant.get(grant_id, 0)
        assert remaining >= 0 and expired >= 0


@PROFILE
@given(scenarios())
def test_a_restored_snapshot_has_identical_state_and_rates_on_identically(scenario: Scenario) -> None:
    events = events_of(scenario)
    half = len(events) // 2
    original = build_kernel(scenario)
    ingest_all(original, [events[:half]])
    snapshot = original.kernel.snapshot()
    restored = KernelWorld(original.world, Kernel.restore(snapshot), seq=original.seq)
    assert restored.kernel.snapshot() == snapshot
    restored.load()
    assert restored.kernel.snapshot() == snapshot  # tables carry no account state
    batch = usage_pb2.UsageBatch(batch_id="rest", events=[wire_event(e) for e in events[half:]])  # type: ignore[misc]
    answers = [k.kernel.ingest(batch.SerializeToString(), RECEIVED_MS, 9) for k in (original, restored)]
    assert answers[0] == answers[1]  # the same ack bytes and the same digest
    assert restored.kernel.snapshot() == original.kernel.snapshot()
