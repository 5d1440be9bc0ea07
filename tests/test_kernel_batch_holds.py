"""AuthorizeBatches' holds as the server's writer applies them (engine.billing.Billing over a World's control plane):
a message's hold requests, split and completed by the kernel, become one ReserveBatch command that changes the
state exactly as the same holds made one Reserve at a time, takes no record when it places nothing, and replays
byte for byte."""

from __future__ import annotations

import msgspec
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


def test_holds_naming_no_ttl_are_journaled_naming_none_and_hold_as_reserves_naming_none() -> None:
    """A message's holds naming no TTL are journaled naming none, with the TTL such a request is given beside them
    (ReserveBatch.ttl_default_ms), and hold exactly as Reserves with ttl_defaulted; a retry of either through the
    other naming none is the same hold, whatever TTL it is given by then (a later start with a shorter
    --reservation-ttl-max-s)."""
    requests = [hold("q0", "h0", 30), hold("q1", "h1", 20)]
    for r in requests:
        r.ClearField("reservation_ttl")
    batched = ledger(block=True)
    split = holding(batched, requests)
    journaled = balance_pb2.AuthorizeBatch.FromString(split.requests).requests
    assert [r.HasField("reservation_ttl") for r in journaled] == [False, False]
    assert split.ttl_default_ms == 60_000
    held = batched.run(cmd.ReserveBatch(T0, ACTOR, split.requests, split.ttl_default_ms))
    assert isinstance(held, credits.HeldBatch) and held.placed == 2
    single = ledger(block=True)
    for r in requests:
        values = {"tokens": r.values["tokens"]}
        single.run(cmd.Reserve(T0, ACTOR, "acme", r.reservation_id, "ai", {}, values, 60_000, ttl_defaulted=True))
    assert batched.billing.kernel.snapshot() == single.billing.kernel.snapshot()
    assert_replays(batched)
    # Retried through the other path, given 30 s now: the same holds, nothing more held.
    again = single.run(cmd.Reserve(T0 + 5, ACTOR, "acme", "h0", "ai", {}, {"tokens": 30}, 30_000, ttl_defaulted=True))
    assert isinstance(again, credits.Reservation) and again.repeated
    retry = balance_pb2.AuthorizeBatch(requests=requests[1:]).SerializeToString()
    split_again, _ = batched.billing.authorize_batch(retry, T0 + 5, 10_000, None, 30_000, b"seed", 1)
    assert isinstance(split_again, HoldingBatch) and split_again.ttl_default_ms == 30_000
    repeated = batched.run(cmd.ReserveBatch(T0 + 5, ACTOR, split_again.requests, split_again.ttl_default_ms))
    assert isinstance(repeated, credits.HeldBatch) and repeated.placed == 0
    assert (
        balance(batched)
        == balance(single)
        == {"remaining": picos("100"), "held": picos("50"), "available": picos("50")}
    )


def test_records_of_holds_journaled_before_ttl_defaults_were_kept_read_and_hold_as_then() -> None:
    """A Reserve and a ReserveBatch journaled before `ttl_defaulted` / `ttl_default_ms` (their requests' TTLs as
    resolved, 60 s) read with the fields unset, and hold as a request naming its 60 s: the same state."""
    old_reserve = msgspec.msgpack.encode(
        {
            "type": "reserve",
            "at_ms": T0,
            "actor": ACTOR,
            "customer_id": "acme",
            "reservation_id": "h0",
            "event_type": "ai",
            "dimensions": {},
            "values": {"tokens": 30.0},
            "ttl_ms": 60_000,
        }
    )
    reserve = msgspec.msgpack.decode(old_reserve, type=cmd.Reserve)
    assert reserve.ttl_defaulted is False
    batch = balance_pb2.AuthorizeBatch(requests=[hold("q0", "h0", 30)]).SerializeToString()  # TTL filled in
    old_batch = msgspec.msgpack.encode({"type": "reserve_batch", "at_ms": T0, "actor": ACTOR, "requests": batch})
    reserve_batch = msgspec.msgpack.decode(old_batch, type=cmd.ReserveBatch)
    assert reserve_batch.ttl_default_ms == 0
    by_one, by_message, named = ledger(block=True), ledger(block=True), ledger(block=True)
    by_one.run(reserve)
    by_message.run(reserve_batch)
    named.run(cmd.ReserveBatch(T0, ACTOR, batch, 60_000))  # today's record of a message naming 60 s
    assert by_one.billing.kernel.snapshot() == by_message.billing.kernel.snapshot() == named.billing.kernel.snapshot()
    assert_replays(by_message)
