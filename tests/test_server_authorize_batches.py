"""AuthorizeBatches against a real demo server: many decisions per message, each the same as unary Authorize;
and the Python client's AuthorizeBatcher, which gathers a gateway's concurrent checks into such messages.

Demo prices (server/demo.py): a simple summary on gpt-4 is 2.5 credits, a complex one 5, an enrichment on
gpt-4o-mini 0.25; acme holds 50,000 credits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffError
from tariff.v1 import balance_pb2, balance_pb2_grpc

from tests.serverproc import ServerProcess


def request(request_id: str, customer_id: str = "acme", **dimensions: str) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id, customer_id=customer_id, event_type="ai_action", dimensions=dimensions
    )


def batches(*groups: list[balance_pb2.AuthorizeRequest]) -> Iterator[balance_pb2.AuthorizeBatch]:
    for group in groups:
        yield balance_pb2.AuthorizeBatch(requests=group)


def stub(server: ServerProcess) -> tuple[grpc.Channel, balance_pb2_grpc.BalanceServiceStub]:
    channel = grpc.insecure_channel(server.target)
    return channel, balance_pb2_grpc.BalanceServiceStub(channel)


def test_answers_come_in_request_order_priced_as_unary_authorize(demo_server: ServerProcess) -> None:
    first = [
        request("r1", action="summary", model="gpt-4", complexity="simple"),
        request("r2", action="summary", model="gpt-4", complexity="complex"),
        request("r3", "nobody", action="summary"),
        request("r4", action="enrichment", model="gpt-4o-mini"),
    ]
    second = [request("r5", customer_id="", action="summary")]  # malformed: answered in-band
    channel, balance = stub(demo_server)
    with channel:
        results = list(balance.AuthorizeBatches(batches(first, second), timeout=10))
        unary = [balance.Authorize(r, timeout=10) for r in (first[0], first[1], first[3])]

    assert [len(result.responses) for result in results] == [4, 1]
    answers = [response for result in results for response in result.responses]
    assert [(a.request_id, a.allowed, a.reason, a.estimated_cost) for a in answers] == [
        ("r1", True, "OK", "2.5"),
        ("r2", True, "OK", "5"),
        ("r3", False, "UNKNOWN_CUSTOMER", "0"),
        ("r4", True, "OK", "0.25"),
        ("r5", False, "INVALID_REQUEST", "0"),
    ]
    assert "customer_id" in answers[4].message
    assert [(u.allowed, u.reason, u.estimated_cost, u.credits_available) for u in unary] == [
        (a.allowed, a.reason, a.estimated_cost, a.credits_available) for a in (answers[0], answers[1], answers[3])
    ]


def test_a_request_without_request_id_ends_the_stream_with_invalid_argument(demo_server: ServerProcess) -> None:
    channel, balance = stub(demo_server)
    with channel, pytest.raises(grpc.RpcError) as raised:
        list(balance.AuthorizeBatches(batches([request("ok", action="summary"), request("")]), timeout=10))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[1].request_id" in (raised.value.details() or "")


def test_a_batch_of_more_than_ten_thousand_requests_is_resource_exhausted(demo_server: ServerProcess) -> None:
    channel, balance = stub(demo_server)
    too_many = [request(f"r{i}", action="summary") for i in range(10_001)]
    with channel, pytest.raises(grpc.RpcError) as raised:
        list(balance.AuthorizeBatches(batches(too_many), timeout=30))
    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


# The Python client's AuthorizeBatcher ----------------------------------------------------------------------


def test_authorize_batcher_gathers_concurrent_checks_and_answers_each_caller(demo_server: ServerProcess) -> None:
    simple = {"action": "summary", "model": "gpt-4", "complexity": "simple"}
    complex_ = {"action": "summary", "model": "gpt-4", "complexity": "complex"}

    async def main() -> None:
        async with demo_server.async_client() as client:
            async with client.authorize_batcher(max_delay_ms=5, batch_requests_max=64) as batcher:
                checks = [
                    batcher.authorize("acme" if i % 7 else "nobody", "ai_action", simple if i % 2 else complex_)
                    for i in range(300)
                ]
                answers = await asyncio.gather(*checks)
            unary_simple = await client.authorize("acme", "ai_action", simple)
        for i, answer in enumerate(answers):
            if i % 7 == 0:
                assert (answer.allowed, answer.reason) == (False, "UNKNOWN_CUSTOMER"), i
            else:
                assert (answer.allowed, answer.reason) == (True, "OK"), i
                assert answer.estimated_cost == ("2.5" if i % 2 else "5"), i
        assert answers[1].credits_available == unary_simple.credits_available == "50000"

    asyncio.run(main())


def test_authorize_batcher_fails_checks_in_flight_when_the_server_dies_then_reconnects(
    demo_server: ServerProcess,
) -> None:
    async def main() -> None:
        async with demo_server.async_client() as client:
            batcher = client.authorize_batcher(max_delay_ms=1, timeout_s=10)
            first = await batcher.authorize("acme", "ai_action", {"action": "summary"})
            assert first.allowed
            await asyncio.to_thread(demo_server.kill9)
            with pytest.raises(TariffError):
                await batcher.authorize("acme", "ai_action", {"action": "summary"})
            await asyncio.to_thread(demo_server.restart)
            # Checks fail fast while the channel reconnects (a gateway decides what that means); a later check
            # opens a new stream on its own.
            for _ in range(100):
                try:
                    again = await batcher.authorize("acme", "ai_action", {"action": "summary"})
                    break
                except TariffError:
                    await asyncio.sleep(0.1)
            assert (again.allowed, again.reason) == (True, "OK")
            await batcher.close()

    asyncio.run(main())
