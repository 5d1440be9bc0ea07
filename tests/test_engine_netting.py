"""An event's refunds and charges netted (docs/architecture.md §5 "Draw"), and batches journaled before that rule.

The server rates every batch with `refunds_netted` and journals it (server/records.py UsageRecord); a record of an
earlier release has none and replays by the rule of then: its charges drew in burn order, not first what its
refunds gave back. Products gauge (LATEST of g) and sum (SUM of s), 1 credit a unit; grant g of 10 credits pays sum
only. e1: g = 5 (5 of overage). e2: g = 2 and s = 3, net 0.
"""

from __future__ import annotations

import pytest
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine import credits
from engine.billing import Billing, RatingChanged
from engine.products import Aggregation
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate, unit

NOW_MS = EPOCH_MS + 3 * HOUR_MS


def gauge_and_sum() -> World:
    world = World()
    world.product("gauge", aggregation=Aggregation.LATEST, value_key="g", dimensions=())
    world.product("sum", value_key="s", dimensions=())
    world.rate_card()
    world.version([rate("gauge", unit("1")), rate("sum", unit("1"))])
    world.customer()
    world.contract()
    world.grant("g", "10", products=("sum",))
    return world


def batch(transaction_id: str, at_ms: int, g: float, s: float) -> bytes:
    event = usage_pb2.UsageEvent(
        transaction_id=transaction_id, customer_id="acme", event_type="ai", timestamp_ms=at_ms, values={"g": g, "s": s}
    )
    return usage_pb2.UsageBatch(batch_id=transaction_id, events=[event]).SerializeToString()


BATCHES = (batch("e1", EPOCH_MS + HOUR_MS, 5, 0), batch("e2", EPOCH_MS + 2 * HOUR_MS, 2, 3))


def settled(billing: Billing) -> tuple[int, int]:
    """(overage, grant g's remaining), in picos."""
    balance = billing.kernel.balance("acme", NOW_MS)
    assert balance is not None
    return balance["overage"], {grant[0]: grant[2] for grant in balance["grants"]}["g"]


def fresh(world: World) -> Billing:
    billing = Billing()
    for command in world.journal:
        billing.apply(command, billing.last_seq + 1)
    return billing


@pytest.mark.parametrize("netted", [False, True], ids=["journaled-before", "netted"])
def test_a_batch_replays_by_the_settlement_it_was_rated_by(netted: bool) -> None:
    world = gauge_and_sum()
    billing = Billing(world.engine)
    digests = [billing.ingest(data, NOW_MS, refunds_netted=netted).digest for data in BATCHES]
    # Netted, e2 touches nothing: sum takes back the 3 of overage the gauge gave back. Before, sum drew 3 from g.
    expected = (5 * 10**12, 10 * 10**12) if netted else (2 * 10**12, 7 * 10**12)
    assert settled(billing) == expected
    replayed = fresh(world)
    for data, digest in zip(BATCHES, digests, strict=True):
        replayed.replay(replayed.last_seq + 1, data, NOW_MS, digest, refunds_netted=netted)
    assert settled(replayed) == expected
    # Replayed by the other rule, e2 gives another result than the journal holds.
    other = fresh(world)
    other.replay(other.last_seq + 1, BATCHES[0], NOW_MS, digests[0], refunds_netted=not netted)
    with pytest.raises(RatingChanged):
        other.replay(other.last_seq + 1, BATCHES[1], NOW_MS, digests[1], refunds_netted=not netted)


@pytest.mark.parametrize("netted", [False, True], ids=["journaled-before", "netted"])
def test_a_hold_replays_by_the_settlement_it_was_decided_by(netted: bool) -> None:
    """After e1, a hold for g = 2 and s = 3: netted it holds nothing (sum takes back the gauge's 3 of overage); a
    Reserve journaled before the rule (refunds_netted False) held the 3 sum drew from g, and replays so."""
    world = gauge_and_sum()
    billing = Billing(world.engine)
    billing.ingest(BATCHES[0], NOW_MS, refunds_netted=netted)
    values = {"g": 2.0, "s": 3.0}
    command = cmd.Reserve(NOW_MS, ACTOR, "acme", "r1", "ai", {}, values, 60_000, refunds_netted=netted)
    result = billing.apply(command, billing.last_seq + 1)
    assert isinstance(result, credits.Reservation)
    assert (result.allowed, result.reason, result.cost, result.held) == (True, "OK", 0, 0 if netted else 3 * 10**12)
