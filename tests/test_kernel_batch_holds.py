"""AuthorizeBatches' holds as the server's writer applies them (engine.billing.Billing over a World's control plane):
a message's hold requests, split and completed by the kernel, become one ReserveBatch command that changes the
state exactly as the same holds made one Reserve at a time, takes no record when it places nothing, and replays
byte for byte."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from tariff.v1 import balance_pb2

from engine import commands as cmd
from engine import credits
from engine._kernel import HoldingBatch
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, picos
from tests.test_kernel_credits import T0, assert_replays, balance, conserved, ledger

TTL_MAX_MS = 3_600_000


def hold(
    request_id: str, reservation_id: str, tokens: float, customer_id: str = "acme"
) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id,
        customer_id=customer_id,
        event_type="ai",
        values={"tokens": tokens},
        reserve=True,
        reservation_id=reservation_id,
        reservation_ttl=Duration(seconds=60),
    )


def holding(machine: Ledger, requests: list[balance_pb2.AuthorizeRequest], message_number: int = 0) -> HoldingBatch:
    """The message as AuthorizeBatches splits it when it arrives: its holds, waiting for the writer."""
    message = balance_pb2.AuthorizeBatch(requests=requests).SerializeToString()
    split, decisions = machine.billing.authorize_batch(message, T0, 10_000, None, TTL_MAX_MS, b"seed", message_number)
    assert decisions == len(requests)
    assert isinstance(split, HoldingBatch)
    return split


def reserve_batch(
    machine: Ledger, requests: list[balance_pb2.AuthorizeRequest], at_ms: int = T0
) -> tuple[credits.HeldBatch, list[balance_pb2.AuthorizeResponse]]:
    split = holding(machine, requests)
    held = machine.run(cmd.ReserveBatch(at_ms, ACTOR, split.requests))
    assert isinstance(held, credits.HeldBatch)
    return held, list(balance_pb2.AuthorizeBatchResult.FromString(split.finish(held.responses)).responses)


def test_a_message_of_holds_is_one_record_and_holds_as_reserves_one_at_a_time() -> None:
    requests = [hold(f"q{n}", f"h{n}", 30) for n in range(4)] + [hold("zed", "hz", 10, customer_id="zed")]
    batched = ledger(block=True)
    held, answers = reserve_batch(batched, requests)
    single = ledger(block=True)
    for r in requests:
        one = single.run(
            cmd.Reserve(T0, ACTOR, r.customer_id, r.reservation_id, "ai", {}, {"tokens": r.values["tokens"]}, 60_000)
        )
        assert isinstance(one, credits.Reservation)
    # 100 credits hold three holds of 30; the fourth is denied under BLOCK; zed's is its own credit.
    assert [(a.request_id, a.allowed, a.reason, a.credits_available) for a in answers] == [
        ("q0", True, "OK", "70"),
        ("q1", True, "OK", "40"),
        ("q2", True, "OK", "10"),
        ("q3", False, "INSUFFICIENT_CREDIT", "10"),
        ("zed", True, "OK", "90"),
    ]
    assert (held.placed, held.customers) == (4, ("acme", "zed"))
    assert len(batched.records) == 1  # one journal record for the message
    assert len(single.records) == 4  # the denied Reserve took none
    assert batched.billing.kernel.snapshot() == single.billing.kernel.snapshot()
    assert balance(batched) == {"remaining": picos("100"), "held": picos("90"), "available": picos("10")}
    conserved(batched, T0)
    assert_replays(batched)


def test_a_message_that_places_no_hold_takes_no_record() -> None:
    m = ledger(block=True)
    reserve_batch(m, [hold("a", "h1", 60)])
    before = m.billing.kernel.snapshot()
    held, answers = reserve_batch(m, [hold("again", "h1", 60), hold("denied", "h2", 60)])
    assert held.placed == 0
    assert [(a.allowed, a.reason) for a in answers] == [(True, "OK"), (False, "INSUFFICIENT_CREDIT")]
    assert answers[0].message.startswith("already held")
    assert len(m.records) == 1
    assert m.billing.kernel.snapshot() == before


def test_batch_holds_settle_expire_and_replay() -> None:
    m = ledger()
    reserve_batch(m, [hold("a", "h1", 30), hold("b", "h2", 20)])
    ack = m.ingest([event("t1", T0, 45, reservation_id="h1")], T0 + 1)  # settled for more than it held
    assert list(ack.notices) == []
    assert balance(m, T0 + 1) == {"remaining": picos("55"), "held": picos("20"), "available": picos("35")}
    expired = m.advance(T0 + 60_000)  # h2's TTL
    assert expired.reservations_expired == 1
    assert balance(m, T0 + 60_000) == {"remaining": picos("55"), "held": 0, "available": picos("55")}
    conserved(m, T0 + 60_000)
    assert_replays(m)


def test_a_message_with_holds_still_decides_its_plain_requests_at_once() -> None:
    m = ledger(block=True)
    plain = balance_pb2.AuthorizeRequest(request_id="p", customer_id="acme", event_type="ai", values={"tokens": 80})
    split = holding(m, [plain, hold("a", "h1", 60)])
    held = m.run(cmd.ReserveBatch(T0, ACTOR, split.requests))
    assert isinstance(held, credits.HeldBatch)
    answers = balance_pb2.AuthorizeBatchResult.FromString(split.finish(held.responses)).responses
    # The plain decision saw the credit before the message's hold: 80 of 100 allowed then.
    assert [(a.request_id, a.allowed, a.credits_available) for a in answers] == [("p", True, "100"), ("a", True, "40")]
