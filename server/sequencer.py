"""The one writer: every state change passes through here, in journal order, and is durable before it is answered.

Callers `submit` a command (an admin command, or a usage batch as the bytes received) and await its result.
The writer task takes everything queued (a group), applies each to the billing machine (engine/billing.py) in
order, appends one journal record per command that changed state, and commits the whole group in ONE LMDB
write transaction on a dedicated thread (group commit: concurrent streams share an fsync). Only then are the
callers' futures resolved. If the commit fails, no caller is answered with success and the state is rebuilt
from what the journal holds, so nothing unacknowledged stays applied. A broken invariant (AssertionError)
stops the writer before it commits: the server then shuts down.

A usage batch is one call into the rating kernel (which releases the GIL); its record is the batch's bytes as
received, the receive time and the kernel's digest of what it did. A group's consecutive usage batches are rated
in one hop on a rating thread of their own, the writer awaiting them before it applies the next command, so
the event loop goes on serving reads meanwhile and commands still apply one at a time, in order. Commits are
pipelined: while one group's commit is in flight on the journal's thread (mostly fsync, which releases the
GIL), the next group is applied; at most one commit is
in flight, answers leave in journal order, and if a commit fails the group applied after it fails too (the
state is rebuilt from the journal, which holds neither). Dedupe lives in the kernel's state (per customer and
transaction id), in snapshots and rebuilt by replay: nothing on the ack path writes a second index.

A publish is planned and checked a slice of customers at a time (engine/rerate.py PlanInSlices), after each
group, usage, holds and the clock (AdvanceClock) applying between slices (any other command queues behind it, see
below; the close first completes the plan and applies the publish); a plan of one slice applies at once. A publish that re-rates usage already rated
(engine/pending.py) is then journaled at once, its re-rating left pending;
the writer re-rates a slice of pending customers after each group (also with nothing queued), a usage batch
re-rates the pending customers it names before it is rated, an AdvanceClock only expires holds (engine/credits.py),
and any other admin command queues behind the
publish (in arrival order) until the re-rating completes with a record of its own, usage going on meanwhile
(the close completes it at once, and so does the clock, once a rollover or a grant's expiry is due: below). The
publish's caller is answered once that record is durable;
usage is answered meanwhile as usual.

The clock's work (AdvanceClock: holds and grants expiring, rollovers) is journaled by the clock driver
(server/clock.py) and by the writer itself, at the group's time: first in a group, and again before each run of
usage batches and each ClosePeriod or CloseDuePeriods (the tables compiled first when an admin command changed them,
also for one that waited behind a publish), so that a command applied after something fell due finds it done
(`_clock_before`). Beside a pending re-rating a rollover or grant expiry that fell due is not recorded (above), so
the writer's clock, first in a group of commands (the clock driver's look among them) and before a run of usage
batches, then first completes the re-rating at once, then applies the clock's work and the commands queued behind
the publish: reads and holds after a period's end see the ROLLOVER grant it made, and usage dated after it draws
on it.

A command that changes nothing gets no journal record and no seq: a usage batch that accepts no event (empty,
or every event a duplicate or refused), and a retried admin request the state already reflects (the engine
answers it as the first call was answered). Such a batch is acked with the journal's current seq.

Reads (balances, previews) read the in-memory state directly, on the event loop, also while a batch is rated
(the kernel's lock makes them wait for at most that one batch); they may see a group that is applied but whose
commit is still in flight. While a batch is rated they compile nothing: the writer refreshed the kernel's tables
before handing batches over, and applies no admin command until they are rated.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable

from engine import commands as cmd
from engine.audit import audit_target
from engine.billing import Billing, Ingested
from engine.errors import EngineError, Repeated
from engine.rerate import PLAN_SLICE_CUSTOMERS
from server import oplog, telemetry
from server.errors import DeadlineExceeded, ResourceExhausted, Unavailable
from server.explain_index import ExplainIndex
from server.journal import Journal, JournalFull
from server.records import JournalRecord, encode_record
from server.recovery import Backlog, recover_counting
from server.scheduling import paced
from server.sequencer_publish import PublishWriting
from server.snapshotting import PAUSE_EVERY_S, SNAPSHOT_POLICY_DEFAULT, SnapshotPolicy, Snapshots
from server.usage_batches import UsageBatch, rate_batches_explained
from server.worker import Worker
from server.write_group import Group, HeldPublish, Submission, Submitted, past_deadline

log = logging.getLogger("tariff.sequencer")

# The actor of the AdvanceClock commands the clock driver (server/clock.py) and the writer itself submit.
CLOCK_ACTOR = "clock"


def clock_work_due_ms(billing: Billing) -> int | None:
    """When an AdvanceClock next has work (None: never, until something changes): the kernel's next due instant (a
    hold's TTL, a grant's expiry or rollover) or the next instant an ended reservation leaves the dedupe window,
    which that AdvanceClock forgets, so that an id is remembered for the window only, also where nothing else falls
    due. Beside a pending re-rating an AdvanceClock forgets nothing (engine/credits.py: it only expires holds), so
    the forgetting waits for its completion rather than hurrying it."""
    return billing.kernel.next_clock_work(forget=billing.rerating is None)


GROUP_COMMANDS_MAX = 256
# A group also closes past this many bytes of usage batches (about 50,000 events of a typical batch).
GROUP_USAGE_BYTES_MAX = 8 * 1024 * 1024


# Commands the audit log does not record, so not admin changes for the operator's log either: reservations and the
# clock. A top-up policy (SetTopUpPolicy, applied by the kernel too) is audited (engine/credits.py): it is one.
_NOT_ADMIN_CHANGES = (cmd.Reserve, cmd.ReleaseReservation, cmd.AdvanceClock, cmd.ReserveBatch)


class Sequencer(PublishWriting):
    def __init__(
        self,
        billing: Billing,
        journal: Journal,
        *,
        clock_ms: Callable[[], int] | None = None,
        snapshot_policy: SnapshotPolicy = SNAPSHOT_POLICY_DEFAULT,
        explain_index: ExplainIndex | None = None,
        plan_slice_customers: int = PLAN_SLICE_CUSTOMERS,
        backlog: Backlog | None = None,
    ) -> None:
        """`backlog`: what the recovery of `billing` replayed, counted toward the first snapshot."""
        self.billing = billing
        self.plan_slice_customers = plan_slice_customers  # a publish's plan looks at this many per slice
        self.explain_index = explain_index
        self.journal = journal
        self.clock_ms = clock_ms or (lambda: time.time_ns() // 1_000_000)
        self._queue: asyncio.Queue[Submission] = asyncio.Queue()
        self._writer_thread = Worker("tariff-journal")
        # Usage batches are rated here, not on the journal's thread, so one group's commit (fsync) overlaps the
        # next group's rating; the writer awaits each run, so it stays the one writer.
        self._rating_thread = Worker("tariff-rating", hands_over_gil=True)
        self.snapshots = Snapshots(
            billing,
            journal,
            writer_thread=self._writer_thread,
            rating_thread=self._rating_thread,
            refresh_tables=self._refresh_tables,
            policy=snapshot_policy,
            explain_index=explain_index,
            backlog=backlog or Backlog(),
        )
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.stopped = asyncio.Event()
        self.failure: BaseException | None = None
        self.commits = 0
        self._arrived = asyncio.Event()  # set by submit(): the writer may be waiting on a commit
        # Told after each durable group which customers it touched and the alert seq it reached, and with
        # (None, seq) after the state was rebuilt from the journal (server/watch.py).
        self.committed: Callable[[set[str] | None, int], None] | None = None
        self._held: HeldPublish | None = None  # a publish whose re-rating is pending: answered on completion
        self._planning: Submission | None = None  # a publish being planned (Billing.planning), not applied yet
        # Admin commands that came while a publish was planned or its re-rating pending, in arrival order: they
        # apply once it completes (`_apply_deferred`), usage and holds applying meanwhile.
        self._deferred: collections.deque[Submission] = collections.deque()
        # The time of the group being applied (`_prepare`), None between groups: see `read_ms`.
        self._applying_ms: int | None = None

    def read_ms(self, now_ms: int) -> int:
        """The instant a read at `now_ms` counts what fell due by (a rollover, a grant's expiry, a hold's TTL: as the
        clock will record it). While a group's commands and batches apply, what they change is readable as it goes
        (a batch's events as they are rated), and they see the clock's work due by the group's time only, taken
        when it began: a batch received before a grant's expiry and rated after it draws on the grant. A read then
        counting the expiry would show breakage the clock never records (10 expired, then 4 drawn and 6 expired).
        So until they are applied a read counts what fell due by the group's time, as they do."""
        return now_ms if self._applying_ms is None else min(now_ms, self._applying_ms)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="tariff-writer")

    def submit(self, command: Submitted, deadline_monotonic: float | None = None) -> asyncio.Future[tuple[int, object]]:
        """Queues a command in arrival order; the future resolves to (journal seq, result) once durable.

        A command still queued when `deadline_monotonic` (time.monotonic()) passes is not applied: its future
        fails with DeadlineExceeded. One whose rating has begun is committed and answered as usual.
        """
        future: asyncio.Future[tuple[int, object]] = asyncio.get_running_loop().create_future()
        if self._closing or self.failure is not None:
            future.set_exception(Unavailable("the server is shutting down"))
        else:
            self._queue.put_nowait(Submission(command, future, deadline_monotonic))
            self._arrived.set()
        return future

    async def run(self, command: Submitted, deadline_monotonic: float | None = None) -> tuple[int, object]:
        return await self.submit(command, deadline_monotonic)

    async def close(self) -> None:
        """Stops taking work, commits what is queued, writes a snapshot. A second call does nothing."""
        if self._closing:
            return
        self._closing = True
        if self._task is not None:
            self._queue.put_nowait(Submission(None, asyncio.get_running_loop().create_future()))
            self._arrived.set()
            await self._task
        if self.failure is None:
            self._answer_held_at_close()
            # No compaction: a shutdown should not wait for one (seconds at 10,000,000 ids); the next start's
            # first store does it. None at all when the stored snapshot is of the last record: it would add a dedupe
            # segment of no change, one more at every start and stop with no record between, none ever compacted.
            await self.snapshots.stored()
            if self.billing.dedupe_segments_seq != self.billing.last_seq:
                await self.snapshots.take(compact=False)
        self.snapshots.shutdown()
        self._writer_thread.shutdown()
        self._rating_thread.shutdown()

    async def _run(self) -> None:
        # Pipelined: while one group's commit is in flight on the journal's thread (mostly fsync, which releases
        # the GIL), the next group is applied (its batches rated on the rating thread). At most one commit is in flight, answers
        # leave in journal order, and a snapshot is only taken when no uncommitted group is applied.
        in_flight: Group | None = None
        prepared: Group | None = None
        taken: list[Submission] = []
        try:
            while True:
                # Else: work, or a publish to plan, or re-rating to do.
                idle = (
                    self._queue.empty()
                    and self.billing.rerating is None
                    and self._planning is None
                    and not self._deferred
                )
                if in_flight is not None and (idle or self.snapshots.due()):
                    if await self._work_arrived_during(in_flight):
                        continue  # prepare it while the commit goes on
                    await self._finish(in_flight)
                    in_flight = None
                    await self._housekeeping()
                    if self._closing and self._queue.empty():
                        return
                    continue
                if self._queue.empty() and (
                    self.billing.rerating is not None or self._planning is not None or self._deferred
                ):
                    taken = []  # a group of no command: a slice of the plan or of the re-rating (`_prepare`)
                    await asyncio.sleep(0)  # reads are served between slices even with nothing queued
                else:
                    taken = [await self._queue.get()]
                size = _size(taken[0].command) if taken else 0
                while not self._queue.empty() and len(taken) < GROUP_COMMANDS_MAX and size < GROUP_USAGE_BYTES_MAX:
                    taken.append(self._queue.get_nowait())
                    size += _size(taken[-1].command)
                try:
                    prepared = await self._prepare(taken)
                finally:
                    self._applying_ms = None
                taken = []
                if in_flight is not None:
                    failure = await self._finish(in_flight)
                    in_flight = None
                    if failure is not None:
                        # The state was rebuilt from the journal: what `prepared` applied on top is gone. Its
                        # callers hear the same kind of answer (a full journal is RESOURCE_EXHAUSTED for them too).
                        self._fail_group(
                            prepared, type(failure)(f"{failure} (an earlier batch's commit; nothing of this one)")
                        )
                        prepared = None
                if prepared is not None:
                    prepared.start(self._writer_thread, self.journal, self.explain_index)
                    in_flight, prepared = prepared, None
                if in_flight is None:
                    await self._housekeeping()
                    if self._closing and self._queue.empty():
                        return
        except BaseException as exc:  # a broken invariant: stop before anything else commits
            self._stop_on(exc, (in_flight, prepared), taken)
            raise
        finally:
            self.stopped.set()

    def _stop_on(self, exc: BaseException, groups: tuple[Group | None, ...], taken: list[Submission]) -> None:
        """The writer stops at a broken invariant: every caller still waiting is told nothing more was committed."""
        self.failure = exc
        log.critical("the writer stopped: %r", exc, exc_info=exc)
        stopped = Unavailable("the writer stopped; nothing more was committed")
        for group in groups:
            if group is not None:
                # A commit already started may still land; its callers are told it did not, which is safe
                # (a resend with the same ids is answered as duplicates after the restart).
                group.fail(stopped)
        if self._held is not None and not self._held.submission.future.done():
            self._held.submission.future.set_exception(stopped)  # a retry of the publish is answered as done
        if self._planning is not None and not self._planning.future.done():
            self._planning.future.set_exception(stopped)  # not applied: a retry publishes
        while not self._queue.empty():
            taken.append(self._queue.get_nowait())
        taken += self._deferred  # queued behind a publish, applied nowhere
        self._deferred.clear()
        for submission in taken:
            if not submission.future.done():
                submission.future.set_exception(stopped)

    async def _work_arrived_during(self, in_flight: Group) -> bool:
        """Waits for the commit in flight or for new work, whichever comes first; True if work came first."""
        commit = in_flight.commit
        if commit is None or commit.done() or self.snapshots.due():
            return False
        self._arrived.clear()
        if self._queue.empty():
            arrival: asyncio.Future[object] = asyncio.ensure_future(self._arrived.wait())
            waits: list[asyncio.Future[object]] = [commit, arrival]  # type: ignore[list-item]
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            arrival.cancel()
        return not self._queue.empty() and not commit.done()

    async def _prepare(self, taken: list[Submission]) -> Group:
        """Applies a group and encodes its records; answers nobody yet. Admin commands apply on the event loop;
        each run of consecutive usage batches is rated on the rating thread in one hop, awaited before the next
        command applies, so commands still apply strictly in order and never beside a batch."""
        group = Group(now_ms=self.clock_ms())
        self._applying_ms = group.now_ms  # reads count due work by it while `taken` applies (`read_ms`)
        await self._advance_clock_due(group, bool(taken))
        run: list[tuple[Submission, UsageBatch]] = []
        for submission in taken:
            if submission.future.cancelled():
                continue
            command = submission.command
            if isinstance(command, UsageBatch) and not past_deadline(submission):
                run.append((submission, command))
                continue
            if run:
                await self._rate(group, run)
                run = []
            if command is None:
                # The close: a publish being planned applies first, a pending re-rating completes, and the commands
                # queued behind them apply (each publish among them planned and re-rated whole in turn).
                await self._complete_planning(group)
                await self._complete_rerating(group)
                while self._deferred:
                    await self._apply_deferred(group)
                    await self._complete_planning(group)
                    await self._complete_rerating(group)
                group.answers.append((submission, self.billing.last_seq, None))
            elif past_deadline(submission):
                expired = DeadlineExceeded("the call's deadline passed while its command waited; nothing was applied")
                group.answers.append((submission, 0, expired))
            elif not self._deferred_behind_publish(submission):
                assert not isinstance(command, UsageBatch)
                await self._apply_command(group, submission, command)
        if run:
            await self._rate(group, run)
        # The group's own commands and batches are applied: what follows (slices of a plan or a re-rating, which
        # apply no clock work, and the commands that waited behind a publish) leaves reads at the wall clock.
        self._applying_ms = None
        await self._plan_slice(group)
        await self._rerate_slice(group)
        await self._apply_deferred(group)
        group.alerts_upto = self.billing.engine.state.alerts.last_seq
        return group

    async def _advance_clock_due(self, group: Group, commands: bool) -> None:
        """Applies the AdvanceClock the clock driver (server/clock.py) would, first in the group, when something is
        due by the group's time: so that a hold whose TTL ran out is expired for every command and batch applied
        after it (a release is FAILED_PRECONDITION, a settling event NOTICE_RESERVATION_EXPIRED), however long the
        driver takes to look (every 50 ms). Journaled as the driver's is, so replay gives the same. Also beside a
        publish being planned (which looks again at the customers it changes: Billing.begin_plan), not while other
        commands wait behind a publish otherwise (the driver's would wait too). Beside a pending re-rating, where an
        AdvanceClock only expires holds (engine/credits.py), only when the group has `commands` (not for a background
        slice: nothing would see it meanwhile), as `_clock_before` does before a run of usage batches: the holds
        whose TTL ran out expire, and once a rollover or a grant's expiry is due the re-rating completes at once,
        then the clock's work and the commands queued behind the publish apply. So the clock driver's look, whose
        group is its AdvanceClock, completes the re-rating when a rollover or expiry falls due (its own
        AdvanceClock then changes nothing more), and a read after it (a balance, Authorize) or a hold sees the rolled
        or broken credit, as without a re-rating."""
        if self.billing.rerating is not None:
            if commands:
                await self._clock_before(group)
        elif self._planning is not None or not self._deferred:
            await self._advance_clock_to(group)

    async def _expire_holds_due(self, group: Group) -> None:
        """Beside a pending re-rating: the AdvanceClock that expires the holds whose TTL ran out by the group's time,
        if any (Kernel.holds_due_by: the accounts due by then; looked at only once something is due)."""
        due_ms = self.billing.kernel.next_due()
        if due_ms is None or group.now_ms < due_ms or not self.billing.kernel.holds_due_by(group.now_ms):
            return
        await self._advance_clock_to(group)

    async def _clock_before(self, group: Group) -> None:
        """Before a run of usage batches or a close (ClosePeriod, CloseDuePeriods), also one applied from the
        commands that waited behind a publish: the AdvanceClock due by the group's time, the kernel's tables compiled
        first when an admin command changed them (`Billing.tables_behind`). The group's first AdvanceClock saw
        neither what the commands before in the group changed nor, for commands that waited behind a publish, what
        fell due while they waited (the clock records no rollover or grant expiry beside a pending re-rating), and
        the kernel's index of due times knows a grant's expiry or rollover only once its tables are compiled (the
        driver's look, every 50 ms, compiles them too, but a command may come first): so a close finds the rollovers
        and expiries due by its period's end recorded, as its draft showed them, and a batch the grants that expired
        broken.

        Beside a pending re-rating (only the first AdvanceClock of a group of commands, `_advance_clock_due`, and a
        run of usage batches get here then: a close waits behind the publish), the holds whose TTL ran out expire
        first (`_expire_holds_due`); if the kernel then still has something due by
        the group's time, a grant's expiry or a rollover, which an AdvanceClock beside a pending re-rating does not
        record (engine/credits.py), the re-rating completes at once (its remaining slices, then its completion
        record, as a close completes it), then the clock's work is applied, then the commands that waited behind the
        publish (they came before the batches, or before the group's commands), then the clock's work again for what
        they changed: so usage dated after a period's end draws on the ROLLOVER grant it made, and usage received
        after a grant's expiry finds its breakage recorded (drawing nothing from it), not paid by other grants or
        overage, or by the expired grant, while the clock's work waits for the completion; and a read or hold after
        the clock driver's look sees them. The batches (or the group's commands) wait for the rest of the re-rating
        that once. The journal holds the completion record, the AdvanceClock, those commands and the batches (or the
        group's commands) in that order, all records of existing forms, so replay applies them as they applied
        here."""
        if self.billing.rerating is not None:
            await self._expire_holds_due(group)
            due_ms = self.billing.kernel.next_due()
            if due_ms is None or group.now_ms < due_ms:
                return
            await self._complete_rerating(group)
            await self._clock_before(group)
            await self._apply_deferred(group)  # a publish among them may leave a re-rating pending again
            await self._clock_before(group)
            return
        if self.billing.tables_behind:
            await self._refresh_tables()
        await self._advance_clock_to(group)

    async def _advance_clock_to(self, group: Group) -> None:
        """Applies AdvanceClock(group time) when the kernel has something due by then, journaled as the driver's."""
        due_ms = clock_work_due_ms(self.billing)
        if due_ms is None or group.now_ms < due_ms:
            return
        command = cmd.AdvanceClock(
            group.now_ms,
            CLOCK_ACTOR,
            alerts_evaluated=True,
            rollover_ids_distinct=True,
            rollover_lasts_next_period=True,
        )
        submission = Submission(command, asyncio.get_running_loop().create_future())
        submission.future.add_done_callback(_nobody_waits)
        await self._apply_command(group, submission, command)

    async def _apply_command(self, group: Group, submission: Submission, command: cmd.AdminCommand) -> None:
        """An admin command, with no publish planned or re-rating pending but for holds (which apply beside one)."""
        if isinstance(command, cmd.PublishVersion | cmd.RollbackRateCard):
            await self._start_publish(group, submission, command)
        elif isinstance(command, cmd.AdvanceClock):
            await self._refresh_tables()  # paced here, rather than at once inside the command (server/clock.py)
            await self._apply_clock(group, submission, command)
        elif isinstance(command, cmd.ClosePeriod | cmd.CloseDuePeriods):
            await self._clock_before(group)
            self._apply_admin(group, submission, command)
        else:
            self._apply_admin(group, submission, command)

    async def _apply_clock(self, group: Group, submission: Submission, command: cmd.AdvanceClock) -> None:
        """An AdvanceClock, applied on the rating thread as a batch is rated, so the loop goes on serving reads: a
        month's end can expire or roll over every customer's grant in one command, a few microseconds each (40,000
        customers: 50-130 ms here), and the kernel offers its lock to a waiting read every 64 accounts. The tables
        are compiled first, on the loop, so a read meanwhile compiles nothing."""
        seq = self.billing.last_seq + 1
        outcome = await self._rating_thread.run(_applied, self.billing, command, seq)
        self._answer_applied(group, submission, command, seq, outcome)

    def _apply_admin(self, group: Group, submission: Submission, command: cmd.AdminCommand) -> None:
        seq = self.billing.last_seq + 1
        self._answer_applied(group, submission, command, seq, _applied(self.billing, command, seq))

    def _answer_applied(
        self, group: Group, submission: Submission, command: cmd.AdminCommand, seq: int, outcome: object
    ) -> None:
        """Answers a command `_applied` applied as record `seq`, or refused (no record)."""
        if isinstance(outcome, Repeated):
            group.answers.append((submission, seq - 1, outcome.result))
        elif isinstance(outcome, EngineError):
            group.answers.append((submission, 0, outcome))
        else:
            self._record_applied(group, submission, command, seq, outcome)

    def _record_applied(
        self, group: Group, submission: Submission, command: cmd.AdminCommand, seq: int, result: object
    ) -> None:
        """An applied command's record (with the alerts it fired), audit line, touched customers and answer."""
        if not isinstance(command, _NOT_ADMIN_CHANGES):
            group.changes.append((command.actor, type(command).__name__, audit_target(command, result)))
        group.records.append((seq, encode_record(JournalRecord(command, alerts=self.billing.take_fired()))))
        group.touched.update(self.billing.touched_customers(command, result))
        group.answers.append((submission, seq, result))

    async def _rate(self, group: Group, run: list[tuple[Submission, UsageBatch]]) -> None:
        """Rates a run of usage batches on the rating thread while the event loop goes on serving reads (each
        batch is one kernel call that holds the kernel's lock, so a read waits for at most one batch). The
        tables are compiled here first, on the loop, and no admin command applies until the run is rated, so a
        read meanwhile compiles nothing and touches no Python state the thread uses. The clock's work due by the
        group's time is applied first (`_clock_before`)."""
        await self._clock_before(group)
        await self._refresh_tables()
        now_ms = group.now_ms
        batches = [batch for _, batch in run]
        explained = self.explain_index is not None
        rated, explain = await self._rating_thread.run(rate_batches_explained, self.billing, batches, now_ms, explained)
        if explain is not None:
            group.explain.append(explain)
        for (submission, _), (seq, outcome, record) in zip(run, rated, strict=True):
            if isinstance(outcome, EngineError):
                group.answers.append((submission, 0, outcome))
            elif record is None:
                # Nothing changed: no record, no seq (a resend gets the same answer, as nothing was kept).
                group.answers.append((submission, seq - 1, outcome))
            else:
                group.records.append((seq, record))
                group.events += outcome.accepted
                group.touched.update(outcome.touched)
                group.answers.append((submission, seq, outcome))

    async def _refresh_tables(self, *, unacknowledged: bool = False) -> None:
        """Billing.refresh_tables without holding the event loop long: compiled on the loop a slice of customers
        at a time (touched customers loaded slice by slice), pausing every PAUSE_EVERY_S. The writer is here, so
        no command changes the state meanwhile; a read meanwhile finishes the refresh itself (see
        Billing.compile_steps). Whole tables load in one kernel call: for `unacknowledged` tables (a publish being
        applied, which reads need not see) on the rating thread with the GIL released, else here, so that no read
        sees the tables of an acknowledged command missing."""
        compiled = await paced(self.billing.compile_steps(unacknowledged=unacknowledged), PAUSE_EVERY_S)
        if compiled is None:
            return
        if unacknowledged:
            await self._rating_thread.run(self.billing.load_compiled, compiled)
        else:
            self.billing.load_compiled(compiled)

    async def _finish(self, group: Group) -> ResourceExhausted | Unavailable | None:
        """Waits for the group's commit and answers its callers; if the commit failed, the state is rebuilt
        from the journal and the error the callers got is returned."""
        failure: ResourceExhausted | Unavailable | None = None
        try:
            await group.wait()
        except JournalFull as exc:
            failure = ResourceExhausted(f"the journal is full, nothing was written: {exc}")
        except Exception as exc:
            log.exception("journal commit failed")
            failure = Unavailable(f"the journal commit failed, nothing was written: {exc}")
        if failure is not None:
            await self.snapshots.stored()  # the rebuild reads the snapshot: not while one is written
            self._rebuild()
            self._fail_held(failure)
            self._fail_group(group, failure)
            if self.committed is not None:
                self.committed(None, self.billing.engine.state.alerts.last_seq)
            return failure
        if group.records:
            self.commits += 1
            self.snapshots.counted(len(group.records), group.events, sum(len(record) for _, record in group.records))
            telemetry.batch_commit_ms.record(group.commit_ms)
            telemetry.commit_commands.record(len(group.records))
            oplog.activity.committed(group.commit_ms)
        for actor, action, target in group.changes:
            oplog.line("admin change", actor=actor, action=action, target=target)
        oplog.activity.admin_changes += len(group.changes)
        _count_events(group.answers)
        if self.committed is not None and (group.touched or group.alerts_upto):
            self.committed(group.touched, group.alerts_upto)
        group.answer()
        return None

    async def _housekeeping(self) -> None:
        """The snapshot, taken only when every applied group is committed; the writer goes on while it is stored."""
        await self.snapshots.take_if_due()

    def _rebuild(self) -> None:
        """Drops what was applied but not committed by recovering the state from the journal."""
        billing = self.billing
        recovered, backlog = recover_counting(
            self.journal,
            future_skew_ms=billing.future_skew_ms,
            dedupe_window_ms=billing.dedupe_window_ms,
            explain_index=self.explain_index,
        )
        self.billing.reset(recovered)
        self.snapshots.count_backlog(backlog)


def _count_events(answered: list[tuple[Submission, int, object]]) -> None:
    """Telemetry and the operator's log counters for a committed group: summed over the group's batches, so a
    group of any size costs one call per counter (never one per event, nor one per batch)."""
    accepted = duplicates = 0
    by_reason: collections.Counter[str] = collections.Counter()
    for _, _, result in answered:
        if isinstance(result, Ingested):
            accepted += result.accepted
            duplicates += result.duplicates
            if result.rejected:
                by_reason.update(result.rejected)
    if accepted:
        telemetry.events_ingested.add(accepted)
    if duplicates:
        telemetry.events_duplicated.add(duplicates)
    for reason, count in by_reason.items():
        telemetry.events_rejected.add(count, {"reason": reason})
    if accepted or duplicates or by_reason:
        oplog.activity.batch(accepted, duplicates, by_reason)


def _applied(billing: Billing, command: cmd.AdminCommand, seq: int) -> object:
    """What applying the command as record `seq` gave, or the refusal (Repeated, EngineError) it raised, having
    changed nothing: a value, so that the rating thread can hand it back like any other."""
    try:
        return billing.apply(command, seq)
    except (Repeated, EngineError) as refused:
        return refused


def _nobody_waits(future: asyncio.Future[tuple[int, object]]) -> None:
    """The writer's own commands have no caller: their outcome is read here, so a refusal is not logged as an
    exception nobody retrieved (the group's failure is logged where it happens)."""
    if not future.cancelled():
        future.exception()


def _size(command: Submitted | None) -> int:
    return len(command.data) if isinstance(command, UsageBatch) else 1
