"""The writer's own AdvanceClock (server/sequencer.py `_clock_before`) against admin commands whose changes the kernel's
tables do not hold yet, in process over the in-memory journal with a clock the test sets and no clock driver: the
driver (server/clock.py) would compile the tables and advance the clock at its next look, every 50 ms, and a command
arriving before that look must not find the state otherwise (tests/test_clock_order_wire.py covers a close after a
period's end during a re-rating, over the wire); likewise a release after a hold's TTL while a publish is planned or
re-rated, and a batch after a grant's expiry while a re-rating is pending, and the driver's own look then (its
AdvanceClock submitted as server/clock.py does). Over the wire these orderings hang on landing inside the driver's
50 ms: here they are exact.

The demo catalogue (server/demo.py): `acme`, contract acme-2026 from the month's start (periods Nov 1 - Dec 1 -
...), 50,000 prepaid credits; a simple summary on gpt-4 costs 2.5 credits."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import msgspec
import pytest

from engine import commands as cmd
from engine.billing import Billing
from engine.errors import FailedPrecondition
from engine.invoices import GrantBalance, Invoice
from engine.ledger import GrantKind
from server import sequencer as writer
from server import sequencer_publish
from server.demo import demo_commands
from server.journal import MemoryJournal
from server.records import decode_record
from server.recovery import recover
from server.sequencer import Sequencer
from server.usage_batches import UsageBatch
from tests.engine_fixtures import ACTOR, EPOCH_MS
from tests.test_engine_rerate_online import (
    RECEIVED_MS,
    batch_of,
    publish,
    writer_with_granted_customers,
)
from tests.test_rerate_hold_expiry import DUE_MS, hold
from tests.test_sequencer import DAY_MS, NOW_MS, batch, event

PICOS = 10**12
HOUR_MS = 3_600_000
MONTH_START_MS = 1_793_491_200_000  # 2026-11-01T00:00:00Z: the demo contract's start, NOW_MS's month
PERIOD_END_MS = 1_796_083_200_000  # 2026-12-01T00:00:00Z


def run(journal: MemoryJournal, clock: list[int], body: Callable[[Sequencer], Awaitable[None]]) -> Billing:
    """The demo catalogue at NOW_MS, then `body`, with the writer's clock reading `clock[0]`."""

    async def main() -> Billing:
        billing = recover(journal)
        sequencer = Sequencer(billing, journal, clock_ms=lambda: clock[0])
        sequencer.start()
        for command in demo_commands(NOW_MS):
            await sequencer.run(command)
        await body(sequencer)
        await sequencer.close()
        return billing

    return asyncio.run(main())


def grant(
    at_ms: int, grant_id: str, amount: str, *, priority: int = 0, expires_at_ms: int | None = None, rollover: str = "0"
) -> cmd.GrantCredits:
    """A promotional grant to acme from the month's start, with the fields the server sets on every one it takes."""
    return cmd.GrantCredits(
        at_ms,
        "test",
        grant_id,
        "acme",
        "acme-2026",
        GrantKind.PROMOTIONAL,
        amount,
        "0",
        priority,
        (),
        MONTH_START_MS + HOUR_MS,
        expires_at_ms,
        rollover,
        use_ends_at_rollover=True,
        paid_at_picos=True,
        made_ids_refused=True,
        rollover_start_in_contract=True,
    )


def grant_c150(at_ms: int, grant_id: str, amount: str, expires_at_ms: int | None) -> cmd.GrantCredits:
    """A promotional grant to c150 from hour 10, burning first (priority -1), as the server takes one."""
    return cmd.GrantCredits(
        at_ms,
        ACTOR,
        grant_id,
        "c150",
        "k-c150",
        GrantKind.PROMOTIONAL,
        amount,
        "0",
        -1,
        (),
        EPOCH_MS + 10 * HOUR_MS,
        expires_at_ms,
        "",
        use_ends_at_rollover=True,
        paid_at_picos=True,
        made_ids_refused=True,
        rollover_start_in_contract=True,
    )


async def rerating_beside_e(
    journal: MemoryJournal, customers: list[str], clock: list[int], expires_ms: int
) -> tuple[Billing, Sequencer, asyncio.Future[tuple[int, object]]]:
    """A writer on `customers` (its time is clock[0]) with usage (4 calls each, hours 0-1), E granted to c150 (10
    credits, expiring at `expires_ms`), and a publish re-rating them all, submitted and pending (its future)."""
    billing, sequencer = await writer_with_granted_customers(journal, customers, clock_ms=lambda: clock[0])
    usage = [(n, hour, 2) for n in range(len(customers)) for hour in range(2)]
    await sequencer.run(UsageBatch(batch_of(customers, "before", usage), 10_000))
    await sequencer.run(grant_c150(clock[0], "E", "10", expires_ms))
    published = sequencer.submit(publish(0))
    while billing.rerating is None:
        await asyncio.sleep(0.001)
    return billing, sequencer, published


def close(at_ms: int) -> cmd.ClosePeriod:
    return cmd.ClosePeriod(
        at_ms,
        "test",
        "acme",
        MONTH_START_MS,
        rollovers_shown=True,
        adjustments_in_contract=True,
        parts_in_contract=True,
        rolled_breakage_shown=True,
        expired_breakage_shown=True,
        spent_grants_left_out=True,
        closed_in_journal_order=True,
    )


def balance_of(invoice: Invoice, grant_id: str) -> GrantBalance:
    [found] = [g for g in invoice.grant_balances if g.grant_id == grant_id]
    return found


def kinds(journal: MemoryJournal, after_seq: int) -> list[str]:
    """The journal's records after `after_seq`, by command type."""
    found = []
    for _, blob in journal.read_records(after_seq):
        record = decode_record(blob)
        found.append(type(record.command).__name__ if record.command is not None else "usage")
    return found


async def writer_with_a_hold(
    journal: MemoryJournal, customers: list[str], clock: list[int], plan_slice_customers: int
) -> tuple[Billing, Sequencer]:
    """A started writer reading `clock[0]`, on card_at_1_and_draft_at_3 and `customers` with 20 credits each, each
    with 2 calls in each of two hours, and c150 holding 1 call as h-c150 (TTL 60 s: it falls due at DUE_MS)."""
    billing, sequencer = await writer_with_granted_customers(
        journal, customers, clock_ms=lambda: clock[0], plan_slice_customers=plan_slice_customers
    )
    usage = [(n, hour, 2) for n in range(len(customers)) for hour in range(2)]
    await sequencer.run(UsageBatch(batch_of(customers, "before", usage), 10_000))
    await sequencer.run(hold("c150", "h-c150", 1))
    return billing, sequencer


def assert_replay_gives(journal: MemoryJournal, live: Billing) -> None:
    """Recovering `journal` gives `live`'s kernel and control-plane state, byte for byte."""
    replayed = recover(journal)
    assert replayed.kernel.snapshot() == live.kernel.snapshot()
    assert msgspec.json.encode(replayed.engine.state) == msgspec.json.encode(live.engine.state)


def assert_the_close_finds_r_rolled(grant_and_close: Callable[[Sequencer, int], Awaitable[Invoice]]) -> None:
    """Runs `grant_and_close` (grant R, 10 credits, rollover 0.5, then close its period, an hour after the period's
    end) on a writer: the final invoice shows R rolled (granted 10, drawn 5, remaining 0, expired 5), the journal
    holds GrantCredits, AdvanceClock, ClosePeriod in that order, and replay gives the same invoices."""
    journal = MemoryJournal()
    clock = [PERIOD_END_MS + HOUR_MS]
    closed: list[Invoice] = []
    seqs: list[int] = []

    async def body(sequencer: Sequencer) -> None:
        seqs.append(sequencer.billing.last_seq)
        closed.append(await grant_and_close(sequencer, clock[0]))

    billing = run(journal, clock, body)
    [invoice] = closed
    assert balance_of(invoice, "R") == GrantBalance("R", 10 * PICOS, 5 * PICOS, 0, 5 * PICOS)
    assert kinds(journal, seqs[0]) == ["GrantCredits", "AdvanceClock", "ClosePeriod"]
    assert recover(journal).engine.state.invoices == billing.engine.state.invoices


def test_a_close_right_after_a_grant_finds_the_rollover_its_period_end_made_due() -> None:
    """After the period's end (Dec 1 + 1 h) a grant R of 10 credits with rollover fraction 0.5, starting in the
    period, then ClosePeriod for it, each answered before the next is sent, nothing read between. R rolls over at
    Dec 1: 5 into a ROLLOVER grant, 5 break. The kernel's tables do not hold R until compiled, so the writer's
    AdvanceClock at the close's group's start did not see it due: the close must still find it rolled (R drawn 5,
    remaining 0, expired 5, as the draft shows it), its AdvanceClock journaled before it; replay gives the same."""

    async def grant_then_close(sequencer: Sequencer, at_ms: int) -> Invoice:
        await sequencer.run(grant(at_ms, "R", "10", rollover="0.5"))
        _, invoice = await sequencer.run(close(at_ms))
        assert isinstance(invoice, Invoice)
        return invoice

    assert_the_close_finds_r_rolled(grant_then_close)


def test_a_close_in_the_same_group_as_the_grant_finds_the_rollover_recorded() -> None:
    """As above, the grant and the close submitted together (one group: the group's first AdvanceClock came before
    the grant was applied)."""

    async def grant_and_close_together(sequencer: Sequencer, at_ms: int) -> Invoice:
        granted = sequencer.submit(grant(at_ms, "R", "10", rollover="0.5"))
        closing = sequencer.submit(close(at_ms))
        await granted
        _, invoice = await closing
        assert isinstance(invoice, Invoice)
        return invoice

    assert_the_close_finds_r_rolled(grant_and_close_together)


def test_a_batch_right_after_a_grant_that_expired_finds_it_broken() -> None:
    """A grant E of 10 credits burning first (priority -1) whose expiry (an hour ago) passed before it was granted,
    then a batch with one simple gpt-4 summary (2.5 credits) dated two hours ago, before E's expiry. Expired
    credit breaks at the AdvanceClock that reaches the expiry and is final (docs/architecture.md §3 "Time"): the
    writer applies it before the batch, so the event draws nothing from E (all 10 break) and 2.5 from the prepaid
    grant, as when the clock driver has looked first; not 2.5 from E, decided by whether it had."""
    journal = MemoryJournal()
    clock = [NOW_MS]
    seqs: list[int] = []

    async def body(sequencer: Sequencer) -> None:
        seqs.append(sequencer.billing.last_seq)
        await sequencer.run(grant(NOW_MS, "E", "10", priority=-1, expires_at_ms=NOW_MS - HOUR_MS))
        late = event("late")
        late.timestamp_ms = NOW_MS - 2 * HOUR_MS
        _, ingested = await sequencer.run(batch(late))
        assert ingested.accepted == 1  # type: ignore[attr-defined]

    billing = run(journal, clock, body)
    grants = {view.grant.id: view for view in billing.balance("acme", NOW_MS).grants}
    assert (grants["E"].remaining, grants["E"].expired) == (0, 10 * PICOS)
    assert grants["acme-prepaid-50k"].remaining == 50_000 * PICOS - 5 * PICOS // 2
    assert kinds(journal, seqs[0]) == ["GrantCredits", "AdvanceClock", "usage"]
    replayed = {view.grant.id: view for view in recover(journal).balance("acme", NOW_MS + DAY_MS).grants}
    assert (replayed["E"].remaining, replayed["E"].expired) == (0, 10 * PICOS)


def test_a_release_after_the_ttl_finds_the_hold_expired_also_beside_a_pending_rerating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 customers with usage, c150 holding 1 call (TTL 60 s); a publish re-rates them all, a slice of 64 after
    each group, the writer pausing 0.5 s after each (the test-only pacing): the re-rating stays pending for at least
    1.5 s. The clock then passes the hold's TTL and c150's release comes: a release after the TTL finds the hold
    expired (FAILED_PRECONDITION, README "Authorize"), also while the re-rating is pending, where the writer's
    AdvanceClock only expires holds (engine/credits.py); the release must not wait for the driver's look to lose.
    The expiry is journaled between the publish and the completion record, the release not at all; replay gives
    the live state."""
    monkeypatch.setattr(sequencer_publish, "RERATE_SLICE_PAUSE_S", 0.5)
    journal = MemoryJournal()
    customers = [f"c{n:03d}" for n in range(200)]
    clock = [RECEIVED_MS]

    async def main() -> Billing:
        billing, sequencer = await writer_with_a_hold(journal, customers, clock, len(customers))
        published = sequencer.submit(publish(0))
        while billing.rerating is None:
            await asyncio.sleep(0.001)
        clock[0] = DUE_MS + 1
        with pytest.raises(FailedPrecondition):
            await sequencer.run(cmd.ReleaseReservation(DUE_MS + 1, ACTOR, "c150", "h-c150", expired_credit_breaks=True))
        assert not published.done(), "the scenario needs the re-rating pending when the release applied"
        await published
        await sequencer.close()
        return billing

    live = asyncio.run(main())
    records = [decode_record(blob) for _, blob in journal.read_records(0)]
    [publish_index] = [i for i, r in enumerate(records) if r.deferred]
    [done_index] = [i for i, r in enumerate(records) if r.rerated is not None]
    assert isinstance(records[publish_index + 1].command, cmd.AdvanceClock)
    assert publish_index + 1 < done_index
    assert not [r for r in records if isinstance(r.command, cmd.ReleaseReservation)]
    assert_replay_gives(journal, live)


def test_a_release_after_the_ttl_finds_the_hold_expired_also_while_a_publish_is_planned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As above, but the release comes while the publish is still being planned (a slice of 50 customers after
    each group, each slice made to take 0.3 s here): the clock's AdvanceClock applies beside the plan too, so the
    release finds the hold expired (FAILED_PRECONDITION). The expiry is journaled before the publish, which plans
    on the state after it (the plan looks again at the customers it changed): the publish re-rates every customer
    and replay, which plans it whole at its record, gives the live state."""
    plan_step = Billing.plan_step

    def slow_plan_step(billing: Billing, limit: int) -> bool:
        time.sleep(0.3)
        return plan_step(billing, limit)

    monkeypatch.setattr(Billing, "plan_step", slow_plan_step)
    journal = MemoryJournal()
    customers = [f"c{n:03d}" for n in range(200)]
    clock = [RECEIVED_MS]
    answers: list[object] = []

    async def main() -> Billing:
        billing, sequencer = await writer_with_a_hold(journal, customers, clock, 50)
        published = sequencer.submit(publish(0))
        while billing.planning is None:
            await asyncio.sleep(0.001)
        clock[0] = DUE_MS + 1
        with pytest.raises(FailedPrecondition):
            await sequencer.run(cmd.ReleaseReservation(DUE_MS + 1, ACTOR, "c150", "h-c150", expired_credit_breaks=True))
        answers.append((await published)[1])
        await sequencer.close()
        return billing

    live = asyncio.run(main())
    [published] = answers
    assert published.customers_rerated == len(customers)  # type: ignore[attr-defined]
    records = [decode_record(blob) for _, blob in journal.read_records(0)]
    [publish_index] = [i for i, r in enumerate(records) if r.deferred]
    assert isinstance(records[publish_index - 1].command, cmd.AdvanceClock)  # the hold expired before it applied
    assert not [r for r in records if isinstance(r.command, cmd.ReleaseReservation)]
    assert_replay_gives(journal, live)


def test_a_batch_after_a_grant_expired_during_a_rerating_completes_it_then_the_clock_then_the_queued_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 customers with usage (4 calls each, hours 0-1); c150 also has E, 10 credits burning first (priority -1)
    from hour 10, expiring at EXPIRES_MS. A publish re-rates them all at 3 a call from hour 0, paced (0.5 s after
    each slice of 64: pending for at least 1.5 s). While it is pending the clock passes EXPIRES_MS and, in one
    group, a GrantCredits of G2 for c150 (5 credits, priority -1, no expiry: after E, before c150's 20 of
    g-c150) and a batch of 1 call for c150 dated hour 19, before E's expiry, arrive. E's expiry breaks it
    whole before the batch (docs/architecture.md §3 "Time": a late event dated before the expiry draws nothing
    from it once the breakage is recorded), so the writer completes the re-rating at once, then records the
    clock's AdvanceClock (which waits beside a pending re-rating), then applies G2, which arrived before the
    batch and queued behind the publish, then rates the batch: it costs 3 and draws them from G2 (2 left), not
    from E (still 10 unexpired before the fix), nor from g-c150 (G2 applied after the batch). g-c150 keeps
    20 - 4 x 3 = 8. The journal holds them in that order and replay gives the live state byte for byte."""
    monkeypatch.setattr(sequencer_publish, "RERATE_SLICE_PAUSE_S", 0.5)
    journal = MemoryJournal()
    customers = [f"c{n:03d}" for n in range(200)]
    clock = [RECEIVED_MS]
    expires_ms = RECEIVED_MS + 60_000
    answers: list[object] = []

    async def main() -> Billing:
        billing, sequencer, published = await rerating_beside_e(journal, customers, clock, expires_ms)
        clock[0] = expires_ms + 1
        rerating = billing.rerating
        assert not published.done() and rerating is not None and rerating.pending, (
            "the scenario needs the re-rating pending"
        )
        granted = sequencer.submit(grant_c150(clock[0], "G2", "5", None))
        rated = sequencer.submit(UsageBatch(batch_of(customers, "late", [(150, 19, 1)]), 10_000))
        answers.append((await rated)[1])
        await granted
        answers.append((await published)[1])
        await sequencer.close()
        return billing

    live = asyncio.run(main())
    ingested, published = answers
    assert ingested.accepted == 1  # type: ignore[attr-defined]
    assert published.customers_rerated == len(customers)  # type: ignore[attr-defined]
    grants = {view.grant.id: (view.remaining, view.expired) for view in live.balance("c150", clock[0]).grants}
    assert grants == {"E": (0, 10 * PICOS), "G2": (2 * PICOS, 0), "g-c150": (8 * PICOS, 0)}
    records = [decode_record(blob) for _, blob in journal.read_records(0)]
    [publish_index] = [i for i, r in enumerate(records) if r.deferred]
    after = [
        "rerated" if r.rerated is not None else type(r.command).__name__ if r.command is not None else "usage"
        for r in records[publish_index + 1 :]
    ]
    assert after == ["rerated", "AdvanceClock", "GrantCredits", "usage"]
    assert_replay_gives(journal, live)


def test_the_clock_drivers_look_after_a_grant_expired_during_a_rerating_completes_it_then_the_clock_then_the_queued(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """200 customers with usage (4 calls each, hours 0-1); c150 also has E, 10 credits burning first (priority -1)
    from hour 10, expiring at EXPIRES_MS. A publish re-rates them all at 3 a call from hour 0, paced (0.2 s after
    each slice of 16 here: 13 slices, pending for at least 2.4 s). While it is pending, before EXPIRES_MS, a
    GrantCredits of G2 for
    c150 (5 credits, no expiry) arrives and queues behind the publish. Then the clock passes EXPIRES_MS and the
    clock driver's look (server/clock.py) finds E's expiry due and submits its AdvanceClock, with no usage arriving:
    the writer completes the re-rating at once, then records the clock's AdvanceClock (beside a pending re-rating it
    records no breakage), then applies G2, as it does before a run of usage batches (§5), all answered with the
    driver's command: a read right after shows E broken (0 remaining, 10 expired), G2 whole and g-c150 at
    20 - 4 x 3 = 8 (before the fix: the driver's AdvanceClock changed nothing, E stayed unexpired until the paced
    re-rating completed on its own, and G2 then applied before the breakage). The journal holds them in that order
    and replay gives the live state byte for byte."""
    monkeypatch.setattr(sequencer_publish, "RERATE_SLICE_PAUSE_S", 0.2)
    # The writer goes on with the slices after the hold's group: many left, so the driver's look comes first.
    monkeypatch.setattr(sequencer_publish, "SLICE_CUSTOMERS", 16)
    journal = MemoryJournal()
    customers = [f"c{n:03d}" for n in range(200)]
    clock = [RECEIVED_MS]
    expires_ms = RECEIVED_MS + 30_000  # before the hold on c000 falls due (DUE_MS)
    seen: list[object] = []

    async def main() -> Billing:
        billing, sequencer, published = await rerating_beside_e(journal, customers, clock, expires_ms)
        granted = sequencer.submit(grant_c150(clock[0], "G2", "5", None))
        await sequencer.run(hold("c000", "h-c000", 1))  # applies beside the re-rating: G2 is queued behind it by now
        assert not granted.done() and not published.done(), "the scenario needs G2 queued behind a pending re-rating"
        clock[0] = expires_ms + 1
        # The driver's look (server/clock.py): E's expiry is due by now, so it submits AdvanceClock(now).
        assert billing.kernel.next_due() == expires_ms
        await sequencer.run(
            cmd.AdvanceClock(
                clock[0],
                writer.CLOCK_ACTOR,
                alerts_evaluated=True,
                rollover_ids_distinct=True,
                rollover_lasts_next_period=True,
            )
        )
        assert published.done() and granted.done(), "answered with the driver's AdvanceClock, in its group"
        seen.append(published.result()[1])
        seen.append(
            {view.grant.id: (view.remaining, view.expired) for view in billing.balance("c150", clock[0]).grants}
        )
        await sequencer.close()
        return billing

    live = asyncio.run(main())
    published, grants = seen
    assert published.customers_rerated == len(customers)  # type: ignore[attr-defined]
    assert grants == {"E": (0, 10 * PICOS), "G2": (5 * PICOS, 0), "g-c150": (8 * PICOS, 0)}
    records = [decode_record(blob) for _, blob in journal.read_records(0)]
    [publish_index] = [i for i, r in enumerate(records) if r.deferred]
    after = [
        "rerated" if r.rerated is not None else type(r.command).__name__ if r.command is not None else "usage"
        for r in records[publish_index + 1 :]
    ]
    assert after == ["Reserve", "rerated", "AdvanceClock", "GrantCredits"]
    [clock_record] = [r.command for r in records[publish_index + 1 :] if isinstance(r.command, cmd.AdvanceClock)]
    assert clock_record.actor == writer.CLOCK_ACTOR
    assert_replay_gives(journal, live)
