"""A hold falls due on time while a publish's re-rating is pending (engine/credits.py, engine/pending.py).

An AdvanceClock then expires the holds whose TTL ran out, re-rating their customers first (re-rate on touch), and
nothing else: the breakage and rollovers due wait for the re-rating's completion, since they depend on grant
balances the re-rating changes in background slices no record lists. So the state equals re-rating everyone at the
publish and then applying the same commands, wherever the background slices fell, and replay of the journal gives
the live state.
"""

from __future__ import annotations

import asyncio

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import commands as cmd
from engine import credits
from engine.billing import Billing
from engine.errors import Repeated
from server.journal import MemoryJournal
from server.records import decode_record
from server.recovery import recover
from server.usage_batches import UsageBatch
from tests.engine_fixtures import ACTOR, World
from tests.test_engine_rerate_online import (
    CUSTOMERS,
    PROFILE,
    RECEIVED_MS,
    batch,
    batch_of,
    card_at_1_and_draft_at_3,
    publish,
    writer_with_granted_customers,
)

TTL_MS = 60_000
DUE_MS = RECEIVED_MS + TTL_MS  # when the holds placed at RECEIVED_MS fall due
EXPIRES_MS = DUE_MS + 30_000  # c4's grant expires after the holds fall due, before LATER_MS
LATER_MS = DUE_MS + 60_000


def world() -> World:
    """A card at 1 credit a call (a draft at 3 as version 2) and the customers with 20 credits each, c4's expiring
    at EXPIRES_MS."""
    built = card_at_1_and_draft_at_3()
    for customer_id in CUSTOMERS:
        built.customer(customer_id)
        built.contract(f"k-{customer_id}", customer_id=customer_id)
        expires = EXPIRES_MS if customer_id == "c4" else None
        built.grant(f"g-{customer_id}", "20", customer_id=customer_id, expires_at_ms=expires)
    return built


def hold(customer_id: str, name: str, calls: float) -> cmd.Reserve:
    return cmd.Reserve(RECEIVED_MS, ACTOR, customer_id, name, "ai", {"model": "m1"}, {"n": calls}, TTL_MS)


def machine() -> Billing:
    """Two hours of usage for everyone, and holds for c1 and c2 placed before the publish."""
    billing = Billing(engine=world().engine)
    usage = [(n, hour, 2) for n in range(len(CUSTOMERS)) for hour in range(2)]
    assert billing.ingest(batch("before", usage), RECEIVED_MS).accepted == len(usage)
    for customer_id in ("c1", "c2"):
        billing.apply(hold(customer_id, f"h-{customer_id}", 1), billing.last_seq + 1)
    return billing


def test_a_hold_expires_while_the_rerating_is_pending_and_its_customer_is_rerated_first() -> None:
    billing = machine()
    billing.publish_deferred(publish(0), billing.last_seq + 1)
    rerating = billing.rerating
    assert rerating is not None and list(rerating.pending) == CUSTOMERS
    # c2's hold was placed before the publish, at the old price: 1 credit held.
    assert billing.balance("c2", RECEIVED_MS).held == 1 * 10**12
    advanced = billing.apply(cmd.AdvanceClock(DUE_MS, ACTOR), billing.last_seq + 1)
    assert advanced == credits.Advanced(2, 0)
    # The holds' customers were re-rated first (4 calls at 3: 12 charged), nobody else, and nothing is held.
    assert list(rerating.pending) == ["c0", "c3", "c4"]
    for customer_id, charged in (("c1", 12), ("c2", 12), ("c0", 4)):
        view = billing.balance(customer_id, DUE_MS)
        assert (view.period_charges, view.held) == (charged * 10**12, 0), customer_id
    # Nothing else moved: the kernel's clock stays, and an AdvanceClock with no hold due (c4's grant has expired)
    # changes nothing and gets no record.
    assert billing.kernel.clock()[0] < RECEIVED_MS
    before = billing.kernel.snapshot()
    with pytest.raises(Repeated):
        billing.apply(cmd.AdvanceClock(LATER_MS, ACTOR), billing.last_seq + 1)
    assert billing.kernel.snapshot() == before
    # c4's grant expired meanwhile: its breakage waits for the completion, then the next AdvanceClock records it.
    billing.finish_rerating(billing.last_seq + 1, DUE_MS)
    assert billing.apply(cmd.AdvanceClock(LATER_MS, ACTOR), billing.last_seq + 1) == credits.Advanced(0, 1, ("c4",))


@PROFILE
@given(slices=st.lists(st.tuples(st.sampled_from(["before", "after"]), st.integers(1, 3)), max_size=4))
def test_hold_expiry_during_a_rerating_equals_rerating_at_once_then_the_expiry(
    slices: list[tuple[str, int]],
) -> None:
    """Background slices (which no record lists) before or after the expiry change nothing in the end."""
    at_once, online = machine(), machine()
    seq = at_once.last_seq + 1
    at_once.apply(publish(0), seq)
    online.publish_deferred(publish(0), seq)
    for when, size in slices:
        if when == "before":
            online.rerate_next(size)
    expiry = cmd.AdvanceClock(DUE_MS, ACTOR)
    assert online.apply(expiry, seq + 1) == at_once.apply(expiry, seq + 1) == credits.Advanced(2, 0)
    for when, size in slices:
        if when == "after":
            online.rerate_next(size)
    if online.rerating is not None:
        online.finish_rerating(seq + 2, DUE_MS)
    later = cmd.AdvanceClock(LATER_MS, ACTOR)
    assert online.apply(later, seq + 3) == at_once.apply(later, seq + 3) == credits.Advanced(0, 1, ("c4",))
    assert online.kernel.snapshot() == at_once.kernel.snapshot()
    for customer_id in CUSTOMERS:
        assert online.kernel.adjustments(customer_id) == at_once.kernel.adjustments(customer_id)


def test_through_the_writer_a_hold_expires_before_the_rerating_completes_and_replay_gives_the_live_state() -> None:
    """A publish and an AdvanceClock submitted together (one group): the AdvanceClock is not queued behind the
    pending re-rating but journaled between the publish's record and the completion record; recovering the
    journal reproduces the live state byte for byte."""
    journal = MemoryJournal()
    customers = [f"c{n:03d}" for n in range(200)]

    async def main() -> Billing:
        billing, sequencer = await writer_with_granted_customers(journal, customers)
        usage = [(n, hour, 2) for n in range(len(customers)) for hour in range(2)]
        await sequencer.run(UsageBatch(batch_of(customers, "before", usage), 10_000))
        await sequencer.run(hold("c150", "h-c150", 1))
        published = sequencer.submit(publish(0))
        expired = sequencer.submit(cmd.AdvanceClock(DUE_MS, ACTOR))
        _, advanced = await expired
        assert advanced == credits.Advanced(1, 0)
        assert not published.done()  # answered once the re-rating completes
        await published
        await sequencer.close()
        return billing

    live = asyncio.run(main())
    records = [decode_record(blob) for _, blob in journal.read_records(0)]
    [publish_index] = [i for i, r in enumerate(records) if r.deferred]
    [done_index] = [i for i, r in enumerate(records) if r.rerated is not None]
    assert isinstance(records[publish_index + 1].command, cmd.AdvanceClock)
    assert publish_index + 1 < done_index
    # c150 was re-rated before its hold expired: 4 calls at 3, nothing held.
    view = live.balance("c150", DUE_MS)
    assert (view.period_charges, view.held) == (12 * 10**12, 0)
    replayed = recover(journal)
    assert replayed.kernel.snapshot() == live.kernel.snapshot()
    assert msgspec.json.encode(replayed.engine.state) == msgspec.json.encode(live.engine.state)
