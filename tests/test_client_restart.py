"""The Python client against a real server that is killed (-9) and restarted while usage is streaming.

A product backend feeds `UsageBatcher` (background batching over `UsageStream`); mid-way the server dies and
comes back on the same port and data directory. The client must reconnect by itself and resend every
unacknowledged batch with the same batch and transaction ids, so that each event is counted exactly once:
every event's ack says accepted or duplicate (an acked-but-lost ack resent), and the balance is exactly the
price of all events. Demo prices (server/demo.py): a simple summary on gpt-4 costs 2.5 credits.
"""

from __future__ import annotations

import asyncio
import threading
from decimal import Decimal

from tariff import RetryPolicy, Usage, now_ms
from tariff.v1 import usage_pb2

from tests.serverproc import ServerFactory

EVENTS = 6_000
SIMPLE_GPT4 = {"action": "summary", "data_source": "crm", "model": "gpt-4", "complexity": "simple"}


def test_batcher_survives_a_server_kill_and_restart_counting_each_event_once(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    acks: list[usage_pb2.IngestAck] = []
    killed = threading.Event()
    restarters: list[threading.Thread] = []
    restart_failures: list[BaseException] = []
    ts = now_ms()

    def crash_and_restart() -> None:
        try:
            server.kill9()
            server.restart()
        except BaseException as exc:  # handed to the test, which fails with it
            restart_failures.append(exc)

    def on_ack(ack: usage_pb2.IngestAck) -> None:
        acks.append(ack)
        if len(acks) == 3 and not killed.is_set():
            killed.set()
            # Kill and restart off the event loop, while the batcher keeps adding and sending.
            restarter = threading.Thread(target=crash_and_restart, daemon=True)
            restarters.append(restarter)
            restarter.start()

    async def main() -> None:
        retry = RetryPolicy(max_attempts=50, max_elapsed_s=60.0, initial_backoff_s=0.05, max_backoff_s=0.5)
        async with server.async_client() as client:
            batcher = client.usage_batcher(batch_events_max=250, flush_interval_ms=20, on_ack=on_ack, retry=retry)
            async with batcher:
                for i in range(EVENTS):
                    await batcher.add(Usage(f"restart-{i}", "acme", "ai_action", ts, SIMPLE_GPT4))
                    if i % 500 == 0:
                        await asyncio.sleep(0.01)  # let batches go out while the server is down
            balance = await client.get_balance("acme")
        assert killed.is_set(), "the server was never killed: the test proved nothing"
        counted = sum(ack.accepted + ack.duplicates for ack in acks)
        assert all(not ack.rejected for ack in acks), [a.rejected for a in acks if a.rejected][:1]
        # Every batch acked exactly once to the caller (the resends of a batch are one logical send).
        assert len({ack.batch_id for ack in acks}) == len(acks)
        assert counted == EVENTS
        assert Decimal(balance.credits_remaining) == Decimal(50_000) - Decimal("2.5") * EVENTS

    asyncio.run(main())
    # The batcher may finish on the restarted server before the restart has seen it SERVING: wait for the restart,
    # so that it is not cut short by the server's stop at the test's end (and fails this test if it failed).
    for restarter in restarters:
        restarter.join(timeout=60)
        assert not restarter.is_alive(), "the restart never finished"
    assert not restart_failures, restart_failures
