"""AuthorizeBatches with reserve=true against a real server process: a message's holds are placed as
Authorize(reserve=true) places them (one journaled command per message), show in GetBalance, survive kill -9,
settle by the usage event that names them; a bad request inside answers in-band; concurrent streams never hold
more than the credit under BLOCK; the answers of one stream's messages leave in order.

A complex GPT-4 summary costs 5 credits on the demo rate card; gateway customers hold 100 (tests/test_server_credits.py).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import grpc
from google.protobuf.duration_pb2 import Duration
from tariff.v1 import balance_pb2, balance_pb2_grpc, usage_pb2

from tests.serverproc import ServerProcess
from tests.test_server_credits import CREDIT, GPT4_COMPLEX, gateway_customer, usage


def hold(
    request_id: str, reservation_id: str = "", customer_id: str = "gw", **fields: object
) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id,
        customer_id=customer_id,
        event_type="ai_action",
        dimensions=GPT4_COMPLEX,
        reserve=True,
        reservation_id=reservation_id,
        **fields,  # type: ignore[arg-type]
    )


def decide(request_id: str, customer_id: str = "gw") -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id, customer_id=customer_id, event_type="ai_action", dimensions=GPT4_COMPLEX
    )


def messages(*groups: list[balance_pb2.AuthorizeRequest]) -> Iterator[balance_pb2.AuthorizeBatch]:
    for group in groups:
        yield balance_pb2.AuthorizeBatch(requests=group)


def answered(server: ServerProcess, *groups: list[balance_pb2.AuthorizeRequest]) -> list[balance_pb2.AuthorizeResponse]:
    with grpc.insecure_channel(server.target) as channel:
        stub = balance_pb2_grpc.BalanceServiceStub(channel)
        results = list(stub.AuthorizeBatches(messages(*groups), timeout=30))
    assert [len(r.responses) for r in results] == [len(g) for g in groups]
    return [a for r in results for a in r.responses]


def held(server: ServerProcess, customer_id: str = "gw") -> tuple[str, str, str]:
    with server.client() as client:
        b = client.get_balance(customer_id)
    return b.credits_held, b.credits_available, b.credits_remaining


def test_a_message_of_holds_holds_survives_kill_9_and_settles_by_usage(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        gateway_customer(client, "gw")
    first = [
        hold("a", "h1"),
        decide("plain"),
        hold("zero-ttl", "h2", reservation_ttl=Duration(seconds=0)),
        hold("b", "h2"),
        hold("a-again", "h1"),  # the same request under the same id: held once
        hold("other-ttl", "h1", reservation_ttl=Duration(seconds=5)),  # the same id, another request
        hold("unnamed"),
        hold("stranger", "h9", customer_id="nobody"),
        balance_pb2.AuthorizeRequest(
            request_id="named-only", customer_id="gw", event_type="ai_action", reservation_id="x"
        ),
    ]
    answers = answered(demo_server, first)
    summary = [(a.request_id, a.allowed, a.reason, a.estimated_cost, a.credits_available) for a in answers]
    assert summary == [
        ("a", True, "OK", "5", "95"),
        ("plain", True, "OK", "5", "100"),  # decided when the message arrived, before its holds
        ("zero-ttl", False, "INVALID_REQUEST", "0", "0"),
        ("b", True, "OK", "5", "90"),
        ("a-again", True, "OK", "5", "90"),
        ("other-ttl", False, "RESERVATION_CONFLICT", "0", "0"),
        ("unnamed", True, "OK", "5", "85"),
        ("stranger", False, "UNKNOWN_CUSTOMER", "0", "0"),
        ("named-only", False, "INVALID_REQUEST", "0", "0"),
    ]
    assert answers[2].message == "reservation_ttl: must be positive"
    assert answers[5].message == (
        "reservation_id 'h1' is already used by a different request of this customer; nothing was held"
    )
    assert answers[8].message == "reservation_id: is only read with reserve=true"
    generated = answers[6].reservation_id
    assert [a.reservation_id for a in answers] == ["h1", "", "", "h2", "h1", "", generated, "", ""]
    assert generated.startswith("r-") and len(generated) == 34
    assert held(demo_server) == ("15", "85", "100")

    demo_server.kill9()
    demo_server.restart()
    assert held(demo_server) == ("15", "85", "100")  # every hold was durable before its answer
    with demo_server.client() as client:
        ack = client.ingest_batch([usage("t1", "gw", "h1"), usage("t2", "gw", generated)])
        assert (ack.accepted, list(ack.notices)) == (2, [])
        assert held(demo_server) == ("5", "85", "90")
        released = client.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id="gw", reservation_id="h2")
        )
        assert released.released_amount == "5"
    assert held(demo_server) == ("0", "90", "90")
    # The message again after the settlement: h1 was settled (answered, nothing held), h2 released.
    again = answered(demo_server, [hold("a", "h1"), hold("b", "h2")])
    assert [(a.allowed, a.message) for a in again] == [
        (True, again[0].message),
        (True, again[1].message),
    ]
    assert "already settled" in again[0].message and "already released" in again[1].message
    assert held(demo_server) == ("0", "90", "90")
    demo_server.kill9()
    demo_server.restart()
    assert held(demo_server) == ("0", "90", "90")


def test_concurrent_streams_of_holds_never_hold_more_than_the_credit(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        gateway_customer(client, "gw")
    stop = threading.Event()
    violations: list[str] = []

    def watch() -> None:
        with demo_server.client() as client:
            while not stop.is_set():
                b = client.get_balance("gw")
                if float(b.credits_held) > CREDIT or float(b.credits_available) < 0:
                    violations.append(f"held {b.credits_held}, available {b.credits_available}")

    def gateway(number: int) -> list[balance_pb2.AuthorizeResponse]:
        groups = [[hold(f"g{number}-{m}-{i}", f"g{number}-{m}-{i}") for i in range(5)] for m in range(4)]
        return answered(demo_server, *groups)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(6) as pool:
            outcomes = [a for answers in pool.map(gateway, range(6)) for a in answers]
    finally:
        stop.set()
        watcher.join()
    assert violations == []
    assert len(outcomes) == 120
    allowed = [a for a in outcomes if a.allowed]
    assert len(allowed) == CREDIT // 5
    assert {a.reason for a in outcomes if not a.allowed} == {"INSUFFICIENT_CREDIT"}
    assert held(demo_server) == ("100", "0", "100")
    # Every hold settled by its usage: the balance ends exact, nothing held.
    with demo_server.client() as client:
        ack = client.ingest_batch([usage(f"t-{a.reservation_id}", "gw", a.reservation_id) for a in allowed])
        assert (ack.accepted, list(ack.notices)) == (len(allowed), [])
        final = client.get_balance("gw")
    assert (final.credits_held, final.credits_remaining, final.period_charges) == ("0", "0", "100")


def test_one_streams_answers_leave_in_message_order_holds_or_not(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        gateway_customer(client, "gw")
    groups = [[hold(f"m{m}", f"m{m}")] if m % 3 == 0 else [decide(f"m{m}-a"), decide(f"m{m}-b")] for m in range(30)]
    answers = answered(demo_server, *groups)
    assert [a.request_id for a in answers] == [r.request_id for g in groups for r in g]
    assert all(a.allowed for a in answers)
    assert held(demo_server) == ("50", "50", "100")


def test_a_whole_message_refusal_after_holds_still_answers_them_first(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        gateway_customer(client, "gw")
    with grpc.insecure_channel(demo_server.target) as channel:
        stub = balance_pb2_grpc.BalanceServiceStub(channel)
        received: list[balance_pb2.AuthorizeBatchResult] = []
        try:
            for result in stub.AuthorizeBatches(messages([hold("a", "h1")], [decide("")]), timeout=30):
                received.append(result)
        except grpc.RpcError as e:
            code, details = e.code(), e.details()
    assert [(r.request_id, r.allowed) for result in received for r in result.responses] == [("a", True)]
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "requests[0].request_id" in (details or "")
    assert held(demo_server) == ("5", "95", "100")


def test_a_hold_made_through_a_batch_is_the_same_hold_for_unary_authorize(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        gateway_customer(client, "gw")
        (batched,) = answered(demo_server, [hold("a", "shared", reservation_ttl=Duration(seconds=30))])
        unary = client.authorize(
            "gw", "ai_action", GPT4_COMPLEX, reserve=True, reservation_id="shared", reservation_ttl_s=30
        )
    assert (batched.allowed, batched.reservation_id) == (True, "shared")
    assert (unary.allowed, unary.reservation_id, unary.estimated_cost) == (True, "shared", "5")
    assert unary.message.startswith("already held")
    assert held(demo_server) == ("5", "95", "100")


def test_usage_settling_a_batch_hold_acks_without_notice_and_a_second_settle_says_so(
    demo_server: ServerProcess,
) -> None:
    with demo_server.client() as client:
        gateway_customer(client, "gw")
        answered(demo_server, [hold("a", "once")])
        first = client.ingest_batch([usage("t1", "gw", "once")])
        second = client.ingest_batch([usage("t2", "gw", "once")])
    assert list(first.notices) == []
    assert [n.reason for n in second.notices] == [usage_pb2.NOTICE_RESERVATION_ALREADY_SETTLED]
    assert held(demo_server) == ("0", "90", "90")


def test_a_gateway_that_waits_for_each_answer_before_its_next_message_is_answered_in_turn(
    demo_server: ServerProcess,
) -> None:
    """Lock-step: each message is sent only once the answer before it came back, so the server is reading the
    next message while nothing waits any more, after holds and after plain decisions alike."""
    with demo_server.client() as client:
        gateway_customer(client, "gw")
    answers: queue.SimpleQueue[balance_pb2.AuthorizeBatchResult] = queue.SimpleQueue()
    groups = [[hold(f"m{m}", f"m{m}")] if m % 2 == 0 else [decide(f"m{m}")] for m in range(8)]

    def lock_step() -> Iterator[balance_pb2.AuthorizeBatch]:
        for group in groups:
            yield balance_pb2.AuthorizeBatch(requests=group)
            answers.get(timeout=10)

    with grpc.insecure_channel(demo_server.target) as channel:
        stub = balance_pb2_grpc.BalanceServiceStub(channel)
        received = []
        for result in stub.AuthorizeBatches(lock_step(), timeout=30):
            received.append(result)
            answers.put(result)
    assert [r.request_id for result in received for r in result.responses] == [f"m{m}" for m in range(8)]
    assert all(r.allowed for result in received for r in result.responses)
    assert held(demo_server) == ("20", "80", "100")
