"""The writer's half that applies a publish (server/sequencer.py): planned a slice of customers at a time after each
group, journaled with its re-rating pending, re-rated a slice at a time, and answered once the re-rating's completion
record is durable; the admin commands that come meanwhile wait behind it, in arrival order.

A base of `server.sequencer.Sequencer`, which holds the state these steps share (the billing machine, the rating
thread, the publish planned or held, the commands deferred); apart only so that each file reads in one sitting.
"""

from __future__ import annotations

import asyncio
import collections
import os
from typing import TYPE_CHECKING

from engine import commands as cmd
from engine.audit import audit_target
from engine.billing import Billing
from engine.errors import EngineError, Repeated
from engine.rerate import SLICE_CUSTOMERS, Rerated, RerationPlan, with_rerated
from server import oplog
from server.errors import DeadlineExceeded, Unavailable
from server.records import JournalRecord, RerationDone, encode_record
from server.usage_batches import UsageBatch
from server.worker import Worker
from server.write_group import Group, HeldPublish, Submission, past_deadline

# Test-only pacing: a pause after each background slice of a re-rating, so that a test can make a re-rating provably
# long (tests/test_server_rerate_online.py). Unset (0) in any real use.
RERATE_SLICE_PAUSE_S = float(os.environ.get("TARIFF_TEST_RERATE_SLICE_PAUSE_MS", "0")) / 1000


class PublishWriting:
    # The Sequencer's state these steps read and change (set in Sequencer.__init__).
    billing: Billing
    plan_slice_customers: int
    _rating_thread: Worker
    _held: HeldPublish | None
    _planning: Submission | None
    _deferred: collections.deque[Submission]

    if TYPE_CHECKING:  # the Sequencer's own

        async def _refresh_tables(self, *, unacknowledged: bool = False) -> None: ...

        async def _apply_command(self, group: Group, submission: Submission, command: cmd.AdminCommand) -> None: ...

        def _record_applied(
            self, group: Group, submission: Submission, command: cmd.AdminCommand, seq: int, result: object
        ) -> None: ...

    def _deferred_behind_publish(self, submission: Submission) -> bool:
        """Whether the admin command waits for the publish being planned or re-rated (True: queued, answered once
        it applies). Only usage, holds and releases apply beside a publish being planned (they name the customers
        the plan looks at again) or a pending re-rating (they re-rate on touch), and AdvanceClock beside both
        (beside a plan whole, the customers it changes looked at again; beside a pending re-rating it only expires
        holds, re-rating their customers first: engine/credits.py), so a hold falls due on time; any other command
        would need the whole plan or re-rating completed first, which would hold usage up behind it for as long as it takes (a re-rating of 10,000 customers is hundreds of ms). So it
        queues, and the re-rating goes on a slice per group. Replay gives the same state: the journal holds the
        commands in the order they applied."""
        command = submission.command
        if isinstance(command, cmd.Reserve | cmd.ReleaseReservation | cmd.ReserveBatch):
            return False
        if isinstance(command, cmd.AdvanceClock) and (self._planning is not None or self.billing.rerating is not None):
            return False
        if self._planning is None and self.billing.rerating is None and not self._deferred:
            return False
        self._deferred.append(submission)
        return True

    async def _apply_deferred(self, group: Group) -> None:
        """The commands queued behind a publish, in arrival order, once none is planned or re-rated (a deferred
        publish starts planning: those after it wait for it in turn)."""
        while self._deferred and self._planning is None and self.billing.rerating is None:
            submission = self._deferred.popleft()
            command = submission.command
            assert command is not None and not isinstance(command, UsageBatch)
            if submission.future.cancelled():
                continue
            if past_deadline(submission):
                expired = DeadlineExceeded("the call's deadline passed while its command waited; nothing was applied")
                group.answers.append((submission, 0, expired))
                continue
            await self._apply_command(group, submission, command)

    async def _start_publish(
        self, group: Group, submission: Submission, command: cmd.PublishVersion | cmd.RollbackRateCard
    ) -> None:
        """PublishVersion (engine/rerate.py, engine/pending.py): planned and checked a slice of customers at a
        time after each group, usage (and holds) applying between slices (PlanInSlices says why the plan is still
        the one of the moment the publish applies); then `_apply_publish`. A publish the engine refuses anyway
        applies (and is refused) at once."""
        await self._refresh_tables()
        # On the rating thread, as the slices are: the candidates come from the kernel with the GIL released.
        if not await self._rating_thread.run(self.billing.begin_plan, command):
            await self._apply_publish(group, submission, command, None)
            return
        self._planning = submission
        await self._plan_slice(group)  # the first slice now: a plan of one slice applies at once

    async def _plan_slice(self, group: Group) -> None:
        """The next slice of the publish being planned, on the rating thread (the GIL released inside the
        kernel); once none remains, the publish applies into `group`. A slice that finds usage the version
        cannot price refuses the publish (nothing changed)."""
        submission = self._planning
        if submission is None:
            return
        try:
            more = await self._rating_thread.run(self.billing.plan_step, self.plan_slice_customers)
        except EngineError as exc:
            self._planning = None
            group.answers.append((submission, 0, exc))
            return
        if not more:
            await self._complete_planning(group)

    async def _complete_planning(self, group: Group) -> None:
        """Completes the publish being planned, if any, and applies it into `group`: its remaining slices, then
        the plan on the state now (the customers usage touched meanwhile looked at again)."""
        submission = self._planning
        if submission is None:
            return
        try:
            while await self._rating_thread.run(self.billing.plan_step, self.plan_slice_customers):
                pass
            plan = await self._rating_thread.run(self.billing.finish_plan)
        except EngineError as exc:
            group.answers.append((submission, 0, exc))
            return
        finally:
            self._planning = None
        command = submission.command
        assert isinstance(command, cmd.PublishVersion | cmd.RollbackRateCard)
        await self._apply_publish(group, submission, command, plan)

    async def _apply_publish(
        self,
        group: Group,
        submission: Submission,
        command: cmd.PublishVersion | cmd.RollbackRateCard,
        plan: RerationPlan | None,
    ) -> None:
        """The planned publish: the control plane's half on the loop, and the command journaled at once. Its
        re-rating, if any, is then pending: it runs after, a slice of customers at a time between usage runs
        (`_rerate_slice`), and a batch re-rates the pending customers it names before it is rated; usage goes on
        meanwhile. The caller is answered, with what the re-rating did, once its completion record is durable
        (`_complete_rerating`). A crash half way loses nothing: replay of the publish record (which plans it
        whole, on the same state) leaves the same customers pending."""
        seq = self.billing.last_seq + 1
        try:
            published = self.billing.publish(command, seq)
        except Repeated as repeat:
            group.answers.append((submission, seq - 1, repeat.result))
            return
        except EngineError as exc:
            group.answers.append((submission, 0, exc))
            return
        # The new timeline, compiled a slice at a time and loaded on the rating thread: the publish is not answered
        # yet, so reads meanwhile may use the tables before it.
        await self._refresh_tables(unacknowledged=True)
        if plan is None:
            self.billing.defer_rerating(None, seq)
            self._record_applied(group, submission, command, seq, with_rerated(published, Rerated()))
            return
        self.billing.defer_rerating(plan, seq)
        oplog.line("re-rating started", rate_card=plan.rate_card_id, seq=seq, customers=len(plan.customers))
        group.changes.append((command.actor, type(command).__name__, audit_target(command, published)))
        record = JournalRecord(command, alerts=self.billing.take_fired(), deferred=True)
        group.records.append((seq, encode_record(record)))
        self._held = HeldPublish(submission, seq, published)

    async def _rerate_slice(self, group: Group) -> None:
        """Background work of a pending re-rating: the next slice of its customers on the rating thread (GIL
        released inside the kernel); once none is pending, its completion record goes into `group`."""
        if self.billing.rerating is None:
            return
        await self._rating_thread.run(self.billing.rerate_next, SLICE_CUSTOMERS)
        rerating = self.billing.rerating
        if rerating is not None and not rerating.pending:
            await self._complete_rerating(group)
        elif RERATE_SLICE_PAUSE_S:
            await asyncio.sleep(RERATE_SLICE_PAUSE_S)

    async def _complete_rerating(self, group: Group) -> None:
        """Completes the pending re-rating, if any, before another admin command (or the close) applies: its
        remaining slices, then its completion record (with the alerts the re-rating fired), and the publish's
        answer in `group`. The balance rules are evaluated on the rating thread, as a batch's are."""
        while self.billing.rerating is not None and self.billing.rerating.pending:
            await self._rating_thread.run(self.billing.rerate_next, SLICE_CUSTOMERS)
        rerating = self.billing.rerating
        if rerating is None:
            return
        seq = self.billing.last_seq + 1
        # On the loop, as every compile: the balance rules' evaluation reads the tables, which a rebuild after a
        # failed commit (Billing.reset) left stale with the re-rating pending.
        await self._refresh_tables()
        done = await self._rating_thread.run(self.billing.finish_rerating, seq, group.now_ms)
        totals = (
            done.customers,
            done.buckets,
            done.events,
            done.amount_delta_picos,
            done.closed_buckets,
            done.closed_events,
            done.closed_amount_picos,
        )
        record = JournalRecord(
            rerated=RerationDone.of(rerating.publish_seq, group.now_ms, totals), alerts=self.billing.take_fired()
        )
        group.records.append((seq, encode_record(record)))
        group.touched.update(done.amounts_changed)
        oplog.line(
            "re-rating done",
            rate_card=rerating.rate_card_id,
            seq=rerating.publish_seq,
            buckets=done.buckets,
            events=done.events,
            record=seq,
        )
        held, self._held = self._held, None
        if held is not None and held.seq == rerating.publish_seq:
            group.answers.append((held.submission, held.seq, with_rerated(held.published, done)))
            group.held = held

    def _fail_held(self, error: Exception) -> None:
        """After the state was rebuilt from the journal: a publish being planned (applied nowhere yet) and a held
        publish the journal does not hold are answered with the error (a publish it holds stays pending and is
        answered on completion)."""
        planning, self._planning = self._planning, None  # its plan went with the state (Billing.reset)
        if planning is not None and not planning.future.done():
            planning.future.set_exception(error)
        held = self._held
        rerating = self.billing.rerating
        if held is None or (rerating is not None and rerating.publish_seq == held.seq):
            return
        self._held = None
        if not held.submission.future.done():
            held.submission.future.set_exception(error)

    def _fail_group(self, group: Group, error: Exception) -> None:
        """After the state was rebuilt from the journal: nothing of `group` was committed, and its callers get
        `error`, but for a publish whose completion record it held when the journal holds the publish (its record
        was committed by an earlier group): its re-rating is pending again, and it is held again, to be answered
        once the completion is durable after all (or at the close: `_answer_held_at_close`). `error` says nothing
        was written, which is not so for that publish, and the answer a retry would get then is the committed
        publish's, whose counts are zero: the caller would lose what its re-rating did."""
        held = group.held
        rerating = self.billing.rerating
        if held is None or rerating is None or rerating.publish_seq != held.seq:
            group.fail(error)
            return
        assert self._held is None, "one re-rating pending at a time, and its publish held once"
        self._held = held
        group.fail(error, spared=held.submission)

    def _answer_held_at_close(self) -> None:
        """At the close, a publish still held: its record is durable but its re-rating's completion is not (a commit
        holding it failed, the last at the close itself). Its caller is told so, and that a retry is safe: the
        restart completes the re-rating (replay leaves it pending), and a retry is answered as the committed
        publish."""
        held, self._held = self._held, None
        if held is None or held.submission.future.done():
            return
        rerating = self.billing.rerating
        if rerating is None or rerating.publish_seq != held.seq:  # not reached: a held publish is pending
            held.submission.future.set_exception(Unavailable("the server is shutting down"))
            return
        held.submission.future.set_exception(
            Unavailable(
                f"the server is shutting down before the re-rating of the publish was journaled complete: the "
                f"publish is durable (journal record {held.seq}) and its re-rating completes when the server starts "
                "again; a retry is safe: it publishes nothing again and is answered as the committed publish"
            )
        )
