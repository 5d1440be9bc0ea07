"""SimulateVersion beside a publish's re-rating still running (engine/pending.py), in process and deterministic: the
re-rating is left pending (Billing.publish_deferred, no writer to run its slices) and completed by the test.

Card `card`: `calls` at 1 a call (version 1), a draft at 3 (version 2). c0..c4 each make 2 calls in each of hours
0-3 of 2026-01-01 (8 charged). Version 2 is published from hour 1, its re-rating left pending: each customer is at
the old prices (8) until re-rated, then at 2 + 3 x 6 = 20. Simulating version 2 over hours 2-3 against the state the
re-rating leaves: current 6 + 6 = 12, simulated 12 (the same prices), delta 0. Against a customer not yet re-rated
the answer was neither the old state's nor the new one's: current 2 + 2 = 4 (the old prices), simulated 12 plus
what hour 1 was charged less than version 2 charges it (6 - 2 = 4, carried into the window's first hour): 16. So
SimulateVersion waits for the card's re-rating to complete, then answers against the state it leaves
(pricing.proto SimulateVersionRequest), woken by the completion (Billing.on_rerating_end), not by looking again
every few ms."""

from __future__ import annotations

import asyncio
from typing import cast

import grpc
import pytest
from tariff.v1 import pricing_pb2

from engine.rerate import Simulation
from server.sequencer import Sequencer
from server.services import pricing as pricing_service
from server.services.common import Context
from server.services.pricing import PricingService
from tests.engine_fixtures import EPOCH_MS, HOUR_MS
from tests.test_engine_rerate_online import RECEIVED_MS, machine, publish
from tests.test_server_admin import ts

USAGE = [(customer, hour, 2) for customer in range(5) for hour in range(4)]


def _simulation(answer: pricing_pb2.SimulateVersionResponse) -> list[tuple[str, str, str, str]]:
    return [(a.customer_id, a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts]


def simulate_request() -> pricing_pb2.SimulateVersionRequest:
    """Version 2 of `card` over hours 2-4 for c0 (re-rated) and c1 (pending, unless the re-rating is gone)."""
    return pricing_pb2.SimulateVersionRequest(
        rate_card_id="card",
        version=2,
        period_start=ts(EPOCH_MS + 2 * HOUR_MS),
        period_end=ts(EPOCH_MS + 4 * HOUR_MS),
        customer_ids=["c0", "c1"],
    )


def test_simulate_waits_for_the_cards_pending_rerating_and_answers_against_the_state_it_leaves() -> None:
    billing = machine([0] * 5, USAGE)
    billing.publish_deferred(publish(1), billing.last_seq + 1)
    billing.rerate_next(1)  # c0 re-rated by a background slice; c1..c4 still pending
    rerating = billing.rerating
    assert rerating is not None and list(rerating.pending) == ["c1", "c2", "c3", "c4"]
    request = simulate_request()
    service = PricingService(billing, cast(Sequencer, None), clock_ms=lambda: RECEIVED_MS)
    looks: list[bool] = []  # each look whether the card's re-rating is pending, and what it found
    simulating: list[int] = []  # the looks made when the simulation began
    look, simulate = service._rerating_pending, service._simulation

    def counted_look(rate_card_id: str) -> bool:
        looks.append(look(rate_card_id))
        return looks[-1]

    async def counted_simulation(request: pricing_pb2.SimulateVersionRequest, start_ms: int, end_ms: int) -> Simulation:
        simulating.append(len(looks))
        return await simulate(request, start_ms, end_ms)

    service._rerating_pending = counted_look  # type: ignore[method-assign]
    service._simulation = counted_simulation  # type: ignore[method-assign]

    async def main() -> tuple[bool, pricing_pb2.SimulateVersionResponse]:
        task = asyncio.ensure_future(service.SimulateVersion(request, cast(Context, None)))
        # Nothing but the test completes the re-rating: an answer now is one given beside it.
        done, _ = await asyncio.wait({task}, timeout=0.5)
        answered_beside_it = bool(done)
        if answered_beside_it:
            return True, task.result()
        # Waiting, it looked once, not every few ms: it is woken by the end of the re-rating, ...
        assert looks == [True] and not simulating
        billing.finish_rerating(billing.last_seq + 1, RECEIVED_MS)
        # ... and simulates at once when it ends (a few turns of the loop, however long it waited). The simulation
        # runs off the loop and may already be back, with its one look after it (is the state it read still
        # current?), by the time these turns are over.
        for _ in range(10):
            await asyncio.sleep(0)
        assert simulating == [2] and looks[:2] == [True, False] and looks[2:] in ([], [False])
        answer = await asyncio.wait_for(task, timeout=30)
        assert looks == [True, False, False]  # one look before the simulation, one after it: no polling
        return False, answer

    answered_beside_it, answer = asyncio.run(main())
    assert not answered_beside_it, _simulation(answer)
    assert _simulation(answer) == [("c0", "12", "12", "0"), ("c1", "12", "12", "0")]
    assert (answer.totals.current_amount, answer.totals.simulated_amount) == ("24", "24")


def test_simulate_waiting_is_woken_when_the_rerating_goes_with_the_state() -> None:
    """The state rebuilt from the journal after a failed commit (Billing.reset) holds no pending re-rating (here
    that of the same publish applied whole): a SimulateVersion waiting for one is woken by the rebuild and answers
    against it, as in the test above (c0 and c1: 12 current, 12 simulated)."""
    billing = machine([0] * 5, USAGE)
    billing.publish_deferred(publish(1), billing.last_seq + 1)
    rebuilt = machine([0] * 5, USAGE)
    rebuilt.apply(publish(1), rebuilt.last_seq + 1)
    assert rebuilt.rerating is None
    request = simulate_request()
    service = PricingService(billing, cast(Sequencer, None), clock_ms=lambda: RECEIVED_MS)

    async def main() -> pricing_pb2.SimulateVersionResponse:
        task = asyncio.ensure_future(service.SimulateVersion(request, cast(Context, None)))
        done, _ = await asyncio.wait({task}, timeout=0.2)
        assert not done, "answered beside the pending re-rating"
        billing.reset(rebuilt)
        return await asyncio.wait_for(task, timeout=30)

    answer = asyncio.run(main())
    assert _simulation(answer) == [("c0", "12", "12", "0"), ("c1", "12", "12", "0")]


def test_simulate_gives_up_with_unavailable_when_the_rerating_it_waits_for_does_not_complete(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A call without a deadline is not held open for good behind a re-rating that stalls: after
    SIMULATE_RERATING_WAIT_S_MAX (shortened here) the answer is UNAVAILABLE, saying how many customers are left."""
    monkeypatch.setattr(pricing_service, "SIMULATE_RERATING_WAIT_S_MAX", 0.05)
    billing = machine([0] * 5, USAGE)
    billing.publish_deferred(publish(1), billing.last_seq + 1)
    service = PricingService(billing, cast(Sequencer, None), clock_ms=lambda: RECEIVED_MS)
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id="card", version=2, period_start=ts(EPOCH_MS), period_end=ts(EPOCH_MS + 4 * HOUR_MS)
    )
    aborted = _AbortingContext()

    async def simulate() -> None:
        await service.SimulateVersion(request, cast(Context, aborted))

    with pytest.raises(_Aborted):
        asyncio.run(simulate())
    assert aborted.status is not None and aborted.status.code == grpc.StatusCode.UNAVAILABLE, aborted.status
    assert "'card' is still being re-rated after a publish (5 customers to go)" in aborted.status.details
    rerating = billing.rerating
    assert rerating is not None and len(rerating.pending) == 5  # nothing completed it meanwhile


class _Aborted(Exception):
    pass


class _AbortingContext:
    """What the status mapping needs of a call's context: abort_with_status, which records the status and ends the
    call as gRPC's does (by raising)."""

    def __init__(self) -> None:
        self.status: grpc.Status | None = None

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.status = status
        raise _Aborted()
