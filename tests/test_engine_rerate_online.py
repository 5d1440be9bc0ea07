"""A re-rating run online (engine/pending.py) against the same publish re-rating everyone at once.

Hypothesis draws usage for a few customers (with grants, so draws, refunds and overage move), a publish effective
from some hour, and what follows it: usage batches interleaved in any order with background slices of the pending
re-rating (re-rate on touch for the batches). The machine that re-rated online, once its re-rating is completed,
must hold the same kernel state, byte for byte, as the one that re-rated at the publish and then rated the same
batches (the order replay of an earlier release's journal, and Billing.apply, use). Then through the writer
(server/sequencer.py) with a journal in memory: usage submitted while the re-rating runs is acked before it
completes, and recovering the journal gives the live state exactly, alerts included.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable

import msgspec
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tariff.v1 import balance_pb2, usage_pb2

from engine import commands as cmd
from engine import credits
from engine.billing import Billing, Ingested
from engine.control import encode_state_parts
from engine.versions import PublishResult
from server.journal import MemoryJournal
from server.records import decode_record
from server.recovery import recover
from server.sequencer import Sequencer
from server.usage_batches import UsageBatch
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, World, rate, unit
from tests.kernel_fixtures import usage_event

EXAMPLES = int(os.environ.get("TARIFF_KERNEL_EXAMPLES", "30"))
PROFILE = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CUSTOMERS = [f"c{n}" for n in range(5)]
HOURS = 8
RECEIVED_MS = EPOCH_MS + 20 * HOUR_MS

Event = tuple[int, int, int]  # (customer index, hour, calls)
events = st.lists(st.tuples(st.integers(0, len(CUSTOMERS) - 1), st.integers(0, HOURS - 1), st.integers(1, 4)))
# After the publish: a batch of events, or a background slice of this many customers.
steps = st.lists(
    st.one_of(st.tuples(st.just("batch"), events.filter(bool)), st.tuples(st.just("slice"), st.integers(1, 3)))
)


def card_at_1_and_draft_at_3() -> World:
    """A card at 1 credit a call, and a draft at 3 that will be its version 2."""
    built = World()
    built.product("calls", value_key="n", dimensions=("model",))
    built.rate_card()
    built.version([rate("calls", unit("1"))])
    built.draft([rate("calls", unit("3"))])
    return built


def with_granted_customers(built: World, customers: list[str], credits: str) -> World:
    """Each customer with a contract on the card and a grant of `credits`."""
    for customer_id in customers:
        built.customer(customer_id)
        built.contract(f"k-{customer_id}", customer_id=customer_id)
        built.grant(f"g-{customer_id}", credits, customer_id=customer_id)
    return built


async def writer_with_granted_customers(
    journal: MemoryJournal,
    customers: list[str],
    *,
    clock_ms: Callable[[], int] = lambda: RECEIVED_MS,
    plan_slice_customers: int | None = None,
) -> tuple[Billing, Sequencer]:
    """A started writer on `journal`, its clock `clock_ms`: card_at_1_and_draft_at_3 and `customers`, each with 20
    credits. Its publish plan is one slice unless `plan_slice_customers` says otherwise, so a publish applies before
    what is submitted after it (which it re-rates on touch); a plan of several slices lets such usage apply first
    (tests/test_rerate_plan_slices.py)."""
    built = with_granted_customers(card_at_1_and_draft_at_3(), customers, "20")
    billing = recover(journal)
    slice_customers = len(customers) if plan_slice_customers is None else plan_slice_customers
    sequencer = Sequencer(billing, journal, clock_ms=clock_ms, plan_slice_customers=slice_customers)
    sequencer.start()
    for command in built.journal:
        await sequencer.run(command)
    return billing, sequencer


def world(grants: list[int]) -> World:
    """A card at 1 credit a call (a draft at 3 as version 2) and the customers, some with credits."""
    built = card_at_1_and_draft_at_3()
    for index, customer_id in enumerate(CUSTOMERS):
        built.customer(customer_id)
        built.contract(f"k-{customer_id}", customer_id=customer_id)
        if grants[index]:
            built.grant(f"g-{customer_id}", str(grants[index]), customer_id=customer_id)
    return built


def batch(name: str, drawn: list[Event]) -> bytes:
    usage = [
        usage_event(
            f"{name}-{n}",
            EPOCH_MS + hour * HOUR_MS + n,
            {"n": float(calls)},
            customer_id=CUSTOMERS[customer],
            dimensions={"model": "m1"},
        )
        for n, (customer, hour, calls) in enumerate(drawn)
    ]
    return usage_pb2.UsageBatch(batch_id=name, events=usage).SerializeToString()


def machine(grants: list[int], before: list[Event]) -> Billing:
    billing = Billing(engine=world(grants).engine)
    if before:
        assert billing.ingest(batch("before", before), RECEIVED_MS).accepted == len(before)
    return billing


def publish(effective_hour: int) -> cmd.PublishVersion:
    """As the server makes it: open holds are taken again at their place in time (rerate_holds_in_time)."""
    return cmd.PublishVersion(
        RECEIVED_MS, ACTOR, "card", 2, EPOCH_MS + effective_hour * HOUR_MS, rerate_holds_in_time=True
    )


@PROFILE
@given(
    grants=st.lists(st.sampled_from([0, 5, 20]), min_size=len(CUSTOMERS), max_size=len(CUSTOMERS)),
    before=events,
    effective_hour=st.integers(0, HOURS),
    after=steps,
)
def test_rerating_online_interleaved_with_usage_equals_rerating_at_once_then_the_usage(
    grants: list[int], before: list[Event], effective_hour: int, after: list[tuple[str, object]]
) -> None:
    at_once, online = machine(grants, before), machine(grants, before)
    seq = at_once.last_seq + 1
    done = at_once.apply(publish(effective_hour), seq)
    assert isinstance(done, PublishResult)
    online.publish_deferred(publish(effective_hour), seq)
    # Pending: the customers with usage the publish covers, none re-rated yet.
    covered = sorted({CUSTOMERS[customer] for customer, hour, _ in before if hour >= effective_hour})
    pending = online.rerating
    assert (list(pending.pending) if pending is not None else []) == covered
    for index, (kind, what) in enumerate(after):
        if kind == "slice":
            assert isinstance(what, int)
            online.rerate_next(what)
            continue
        assert isinstance(what, list)
        data = batch(f"after-{index}", what)
        assert at_once.ingest(data, RECEIVED_MS).accepted == online.ingest(data, RECEIVED_MS).accepted
        assert online.last_seq == at_once.last_seq
    if online.rerating is not None:
        rerated = online.finish_rerating(online.last_seq + 1, RECEIVED_MS)
        # What the re-rating did, summed however it was split, is what re-rating at once did.
        assert (rerated.customers, rerated.buckets, rerated.events, rerated.amount_delta_picos) == (
            done.customers_rerated,
            done.buckets_rerated,
            done.events_rerated,
            done.rerated_amount_delta_picos,
        )
    else:
        assert done.buckets_rerated == 0
    assert online.rerating is None
    assert online.kernel.snapshot() == at_once.kernel.snapshot()
    for customer_id in CUSTOMERS:
        assert online.kernel.adjustments(customer_id) == at_once.kernel.adjustments(customer_id)


def test_a_batch_rerates_the_pending_customers_it_names_before_it_is_rated() -> None:
    billing = machine([0] * len(CUSTOMERS), [(n, hour, 2) for n in range(len(CUSTOMERS)) for hour in range(3)])
    billing.publish_deferred(publish(1), billing.last_seq + 1)
    rerating = billing.rerating
    assert rerating is not None and list(rerating.pending) == CUSTOMERS
    charges = {c: billing.balance(c, RECEIVED_MS).period_charges for c in CUSTOMERS}
    assert set(charges.values()) == {6 * 10**12}  # nobody re-rated yet: 3 hours x 2 calls at 1
    # A batch for c3 (hour 2, already re-rated hours in it): c3 is re-rated first, then its event priced at 3.
    assert billing.ingest(batch("touch", [(3, 2, 1)]), RECEIVED_MS).accepted == 1
    assert list(rerating.pending) == ["c0", "c1", "c2", "c4"]
    assert billing.balance("c3", RECEIVED_MS).period_charges == (2 + 2 * 2 * 3 + 3) * 10**12
    assert billing.balance("c4", RECEIVED_MS).period_charges == 6 * 10**12
    # A background slice takes the next pending in plan order, skipping c3.
    assert billing.rerate_next(3) == 3
    assert list(rerating.pending) == ["c4"]
    done = billing.finish_rerating(billing.last_seq + 1, RECEIVED_MS)
    assert (done.customers, done.buckets) == (5, 10)
    assert billing.rerating is None
    assert {billing.balance(c, RECEIVED_MS).period_charges for c in CUSTOMERS if c != "c3"} == {14 * 10**12}


def test_usage_is_acked_while_the_writer_rerates_and_replay_gives_the_live_state() -> None:
    """Through the writer: a publish of a re-rating longer than one slice, usage submitted right after it, and an
    alert rule the re-rating trips. The usage is answered before the publish (whose answer waits for the
    completion record); recovering the journal reproduces the live state, byte for byte."""
    customers = [f"c{n:03d}" for n in range(200)]
    journal = MemoryJournal()

    async def main() -> tuple[Billing, list[str]]:
        billing, sequencer = await writer_with_granted_customers(journal, customers)
        await sequencer.run(cmd.CreateAlert(RECEIVED_MS, ACTOR, "low", "", True, "LOW_BALANCE", "10"))
        usage = [(n, hour, 2) for n in range(len(customers)) for hour in range(3)]
        await sequencer.run(UsageBatch(batch_of(customers, "before", usage), 10_000))
        order: list[str] = []
        published = sequencer.submit(publish(0))
        published.add_done_callback(lambda _: order.append("publish"))
        # Usage for the last customer in plan order (re-rated on touch) and the first (re-rated by then or not).
        acks = [
            sequencer.submit(UsageBatch(batch_of(customers, f"during-{n}", [(c, 1, 1)]), 10))
            for n, c in enumerate([len(customers) - 1, 0, 100])
        ]
        for ack in acks:
            ack.add_done_callback(lambda _: order.append("usage"))
        _, result = await published
        for ack in acks:
            _, ingested = await ack
            assert isinstance(ingested, Ingested) and ingested.accepted == 1
        assert order[0] == "usage", order
        assert isinstance(result, PublishResult)
        assert (result.customers_rerated, result.buckets_rerated, result.events_rerated) == (200, 600, 600)
        await sequencer.close()
        return billing, customers

    live, _ = asyncio.run(main())
    records = [decode_record(blob) for _, blob in journal.read_records(0)]
    [publish_index] = [i for i, r in enumerate(records) if r.deferred]
    [done_index] = [i for i, r in enumerate(records) if r.rerated is not None]
    assert [r.usage is not None for r in records[publish_index + 1 : done_index]] == [True] * 3
    # 6 calls at 3 instead of 1: 18 of 20 credits used, 2 available, below 10 for everyone. The three customers
    # the usage named were re-rated on touch and crossed in their batch's record; the others at the completion.
    touched = ["c199", "c000", "c100"]
    during = records[publish_index + 1 : done_index]
    assert [[a.customer_id for a in r.alerts] for r in during] == [[c] for c in touched]
    fired = [a.customer_id for a in records[done_index].alerts]
    assert fired == [c for c in customers if c not in touched]
    completion = records[done_index].rerated
    assert completion is not None and completion.publish_seq == publish_index + 1  # seqs count from 1
    assert {a.journal_seq for a in records[done_index].alerts} == {completion.publish_seq + 4}
    for customer_id in customers:
        expected = (18 + (3 if customer_id in ("c000", "c100", "c199") else 0)) * 10**12
        assert live.balance(customer_id, RECEIVED_MS).period_charges == expected
    replayed = recover(journal)
    assert replayed.kernel.snapshot() == live.kernel.snapshot()
    assert msgspec.json.encode(replayed.engine.state) == msgspec.json.encode(live.engine.state)


def batch_of(customers: list[str], name: str, drawn: list[Event]) -> bytes:
    usage = [
        usage_event(
            f"{name}-{n}",
            EPOCH_MS + hour * HOUR_MS + n,
            {"n": float(calls)},
            customer_id=customers[customer],
            dimensions={"model": "m1"},
        )
        for n, (customer, hour, calls) in enumerate(drawn)
    ]
    return usage_pb2.UsageBatch(batch_id=name, events=usage).SerializeToString()


def test_a_snapshot_taken_while_a_rerating_is_pending_holds_the_pending_customers() -> None:
    """The server may snapshot mid re-rating: the snapshot holds who is still pending (in the control plane's
    half, encoded in parts byte for byte as a whole), and a machine restored from it completes the re-rating to
    the same state as the one that went on."""
    went_on = machine([5, 0, 20, 0, 5], [(n, hour, 2) for n in range(len(CUSTOMERS)) for hour in range(4)])
    went_on.publish_deferred(publish(2), went_on.last_seq + 1)
    assert went_on.ingest(batch("touch", [(4, 3, 1)]), RECEIVED_MS).accepted == 1
    went_on.rerate_next(2)
    assert went_on.rerating is not None and list(went_on.rerating.pending) == ["c2", "c3"]
    parts = list(encode_state_parts(went_on.engine.state, entries_per_part=1))
    assert b"".join(parts) == msgspec.json.encode(went_on.engine.state)
    restored = Billing.from_snapshot(went_on.encode_snapshot())
    assert restored.rerating == went_on.rerating
    for billing in (went_on, restored):
        assert billing.ingest(batch("after", [(3, 1, 2), (0, 3, 1)]), RECEIVED_MS).accepted == 2
        billing.finish_rerating(billing.last_seq + 1, RECEIVED_MS)
    assert restored.kernel.snapshot() == went_on.kernel.snapshot()
    assert msgspec.json.encode(restored.engine.state) == msgspec.json.encode(went_on.engine.state)


def test_another_admin_command_queues_behind_a_pending_rerating() -> None:
    """Submitted together: a publish, usage, a new customer, usage. The new customer waits, queued, for the
    re-rating to complete (its completion record comes before it); the usage before it and the usage after it do
    not wait for it. Replay gives the live state."""
    journal = MemoryJournal()

    async def main() -> Billing:
        billing = recover(journal)
        sequencer = Sequencer(billing, journal, clock_ms=lambda: RECEIVED_MS)
        sequencer.start()
        for command in world([5] * len(CUSTOMERS)).journal:
            await sequencer.run(command)
        before = [(n, hour, 1) for n in range(len(CUSTOMERS)) for hour in range(3)]
        await sequencer.run(UsageBatch(batch("before", before), 100))
        submitted = [
            sequencer.submit(publish(0)),
            sequencer.submit(UsageBatch(batch("during", [(4, 1, 1)]), 10)),
            sequencer.submit(cmd.CreateCustomer(RECEIVED_MS, ACTOR, "late", "late", {})),
            sequencer.submit(UsageBatch(batch("after", [(3, 2, 1)]), 10)),
        ]
        for future in submitted:
            await future
        await sequencer.close()
        return billing

    live = asyncio.run(main())
    records = [decode_record(blob) for _, blob in journal.read_records(0)][-5:]
    kinds = [
        "publish" if r.deferred else "completion" if r.rerated else "usage" if r.usage else type(r.command).__name__
        for r in records
    ]
    assert kinds == ["publish", "usage", "usage", "completion", "CreateCustomer"]
    # 3 calls at 3 each, plus the later call at 3: the usage after the completion found everyone re-rated.
    assert live.balance("c3", RECEIVED_MS).period_charges == 12 * 10**12
    assert live.balance("c0", RECEIVED_MS).period_charges == 9 * 10**12
    replayed = recover(journal)
    assert replayed.kernel.snapshot() == live.kernel.snapshot()
    assert msgspec.json.encode(replayed.engine.state) == msgspec.json.encode(live.engine.state)


def test_a_message_of_holds_rerates_the_pending_customers_it_names_and_leaves_the_rest_pending() -> None:
    billing = machine([0, 20, 0, 20, 0], [(n, hour, 2) for n in range(len(CUSTOMERS)) for hour in range(3)])
    billing.publish_deferred(publish(1), billing.last_seq + 1)
    rerating = billing.rerating
    assert rerating is not None and list(rerating.pending) == CUSTOMERS
    holds = [
        balance_pb2.AuthorizeRequest(
            request_id=f"q{n}",
            customer_id=customer_id,
            event_type="ai",
            dimensions={"model": "m1"},
            values={"n": 1.0},
            reserve=True,
            reservation_id=f"h{n}",
            reservation_ttl=Duration(seconds=60),
        )
        for n, customer_id in enumerate(["c3", "c1", "c3"])
    ]
    message = balance_pb2.AuthorizeBatch(requests=holds).SerializeToString()
    held = billing.apply(cmd.ReserveBatch(RECEIVED_MS, ACTOR, message), billing.last_seq + 1)
    assert isinstance(held, credits.HeldBatch) and (held.placed, held.customers) == (3, ("c3", "c1"))
    # c3 and c1 were re-rated before their holds (hours 1 and 2 at 3 a call), the others are still pending.
    assert list(rerating.pending) == ["c0", "c2", "c4"]
    assert billing.balance("c3", RECEIVED_MS).period_charges == (2 + 2 * 2 * 3) * 10**12
    assert billing.balance("c0", RECEIVED_MS).period_charges == 6 * 10**12
    # Each hold priced at the new rate: one call at 3 (two for c3), held from the grant the re-rating drew down.
    assert (billing.balance("c3", RECEIVED_MS).held, billing.balance("c1", RECEIVED_MS).held) == (
        6 * 10**12,
        3 * 10**12,
    )


def test_a_machine_restored_mid_rerating_completes_it_at_the_published_prices() -> None:
    """Restored from a snapshot taken while a re-rating is pending, with no batch applied since (a batch compiles
    the tables first): its completion (the record replayed after the snapshot, or the writer's) re-rates the
    customers still pending at the publish's prices, as the machine that went on does, and says so in its totals."""
    went_on = machine([5, 0, 20, 0, 5], [(n, hour, 2) for n in range(len(CUSTOMERS)) for hour in range(4)])
    went_on.publish_deferred(publish(2), went_on.last_seq + 1)
    went_on.rerate_next(2)
    restored = Billing.from_snapshot(went_on.encode_snapshot())
    seq = went_on.last_seq + 1
    live, replayed = (billing.finish_rerating(seq, RECEIVED_MS) for billing in (went_on, restored))
    assert (replayed.customers, replayed.amount_delta_picos) == (live.customers, live.amount_delta_picos)
    assert restored.kernel.snapshot() == went_on.kernel.snapshot()


def test_a_hold_replayed_on_a_machine_restored_mid_rerating_rerates_its_customer_at_the_published_prices() -> None:
    """Re-rate on touch after a restore: a Reserve journaled after the snapshot names a pending customer, who is
    re-rated before the hold at the publish's prices (hours 1 to 3 at 3 a call, hour 0 at 1: 2 + 3 x 2 x 3 = 20),
    as on the machine that went on; restored without the publish's timeline, the customer kept 8 and left the
    pending set, and the completion's totals agreed, so nothing ever said so."""
    went_on = machine([0, 20, 0, 20, 0], [(n, hour, 2) for n in range(len(CUSTOMERS)) for hour in range(4)])
    went_on.publish_deferred(publish(1), went_on.last_seq + 1)
    restored = Billing.from_snapshot(went_on.encode_snapshot())
    reserve = cmd.Reserve(RECEIVED_MS, ACTOR, "c3", "h", "ai", {"model": "m1"}, {"n": 1.0}, 60_000)
    for billing in (went_on, restored):
        billing.apply(reserve, billing.last_seq + 1)
        assert billing.rerating is not None and "c3" not in billing.rerating.pending
        assert billing.balance("c3", RECEIVED_MS).period_charges == 20 * 10**12
