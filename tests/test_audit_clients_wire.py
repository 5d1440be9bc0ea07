"""An audit of README "Clients" (the Python client's claims) over the wire: each scenario runs against a real
server process on 127.0.0.1 and checks what the README says a call does, where no other test does.

- An overloaded server (`--max-concurrent-rpcs`) answers RESOURCE_EXHAUSTED with a `google.rpc.RetryInfo`
  ("retry after 100 ms"): the usage batcher, which "reconnects and resends every unacknowledged batch",
  waits that long and resends, instead of dropping its events.
- A RESOURCE_EXHAUSTED without a RetryInfo (a batch over `--batch-events-max`) is not retried: waiting
  cannot fix it, so the send fails at once with the typed error.
"""

from __future__ import annotations

import asyncio

import pytest
from tariff import ResourceExhausted, Usage, UsageBatcher, now_ms
from tariff.v1 import balance_pb2

from tests.serverproc import ServerFactory

GPT4_COMPLEX_SUMMARY = {"action": "summary", "data_source": "crm", "model": "gpt-4", "complexity": "complex"}
SAFETY_S = 20.0  # a bound on waiting for the batcher's stream to be refused, never a timing assertion


def summary(transaction_id: str) -> Usage:
    return Usage(transaction_id, "acme", "ai_action", now_ms(), GPT4_COMPLEX_SUMMARY)


async def refused_at_least_once(batcher: UsageBatcher) -> None:
    """Until the batcher's stream was refused and reconnected, or failed (what it did before the fix)."""
    stream = batcher.stream
    async with asyncio.timeout(SAFETY_S):
        while stream.reconnects < 1 and stream.failure is None:
            await asyncio.sleep(0.01)


def test_usage_batcher_waits_out_an_overloaded_server_and_delivers_every_event(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, name="busy", extra_args=["--max-concurrent-rpcs", "1"])

    async def scenario() -> tuple[int, int, str]:
        async with server.async_client() as holder, server.async_client() as client:
            # The one call the server runs: every other call is refused with RetryInfo while it lasts.
            watch = holder.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="acme"))
            await watch.read()
            batcher = client.usage_batcher(batch_events_max=1)
            await batcher.add(summary("busy-1"))
            await refused_at_least_once(batcher)
            assert batcher.stream.failure is None, f"the batcher gave up on a busy server: {batcher.stream.failure}"
            watch.cancel()  # the server has room again
            await batcher.close()
            balance = await client.get_balance("acme")
            return batcher.accepted, batcher.stream.reconnects, balance.credits_remaining

    accepted, reconnects, credits = asyncio.run(scenario())
    assert accepted == 1 and reconnects >= 1
    assert credits == "49995"  # 50,000 - 5: the summary counted once


def test_a_resource_exhausted_without_retry_info_fails_the_send_at_once(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True, name="small", extra_args=["--batch-events-max", "2"])

    async def scenario() -> tuple[ResourceExhausted, int]:
        async with server.async_client() as client:
            stream = client.usage_stream()
            with pytest.raises(ResourceExhausted) as refused:
                await stream.send([summary(f"big-{n}") for n in range(3)])
            await stream.abort()
            return refused.value, stream.reconnects

    error, reconnects = asyncio.run(scenario())
    assert error.retry_after_s is None and reconnects == 0
