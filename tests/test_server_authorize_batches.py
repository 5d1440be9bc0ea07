"""AuthorizeBatches against a real demo server: many decisions per message, each the same as unary Authorize.

Demo prices (server/demo.py): a simple summary on gpt-4 is 2.5 credits, a complex one 5, an enrichment on
gpt-4o-mini 0.25; acme holds 50,000 credits.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
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
