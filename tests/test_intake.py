"""The process-wide intake budget: usage bytes read but not yet answered, across every stream, stay bounded.

Unit tests of IntakeBudget, and a real server with a 1 MiB budget fed by several streams at once: every batch
is still answered (waiting for room never deadlocks), and exactly once.
"""

from __future__ import annotations

import asyncio

from tariff import Usage, now_ms

from server.services import IntakeBudget
from tests.serverproc import ServerFactory


def test_acquire_waits_for_room_and_release_wakes_it() -> None:
    async def main() -> None:
        budget = IntakeBudget(100)
        first = await budget.acquire(60)
        waiting = asyncio.ensure_future(budget.acquire(50))
        await asyncio.sleep(0.01)
        assert not waiting.done() and budget.bytes_used == 60
        budget.release(first)
        assert await asyncio.wait_for(waiting, 1) == 50
        assert budget.bytes_used == 50

    asyncio.run(main())


def test_a_batch_larger_than_the_whole_budget_passes_alone() -> None:
    async def main() -> None:
        budget = IntakeBudget(100)
        held = await budget.acquire(10)
        huge = asyncio.ensure_future(budget.acquire(5_000))
        await asyncio.sleep(0.01)
        assert not huge.done()  # it waits for everything else to be answered
        budget.release(held)
        assert await asyncio.wait_for(huge, 1) == 100
        budget.release(100)
        assert budget.bytes_used == 0

    asyncio.run(main())


def test_many_streams_through_a_one_mib_budget_are_all_answered_once(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True, extra_args=["--intake-mb-max", "1"])
    ts = now_ms()
    dimensions = {"action": "summary", "model": "gpt-4", "complexity": "simple", "data_source": "x" * 200}

    async def stream(n: int) -> int:
        accepted = 0
        async with server.async_client() as client, client.usage_stream() as usage:
            for b in range(6):
                events = [Usage(f"s{n}-{b}-{i}", "acme", "ai_action", ts, dimensions) for i in range(1_000)]
                ack = await usage.send(events)
                accepted += ack.accepted
        return accepted

    async def main() -> list[int]:
        return await asyncio.gather(*(stream(n) for n in range(4)))

    assert asyncio.run(main()) == [6_000] * 4
    with server.client() as client:
        # 24,000 simple gpt-4 summaries at 2.5 credits each: 60,000 credits, beyond the 50,000 granted.
        balance = client.get_balance("acme")
        assert balance.credits_remaining == "0"
        assert balance.overage_amount == "10000"
