"""Billing's half that publishes a version and re-rates what it changes: whole (tests, tools, the replay of a
publish record an earlier release wrote), planned a slice of customers at a time (engine/rerate.py PlanInSlices), and
left pending (engine/pending.py), re-rated on touch by the usage batches and holds that name a pending customer and a
slice at a time in the background until its completion record.

A base of `engine.billing.Billing`, which holds the state these methods share (the engine, the kernel, the tables'
staleness, the alerts fired); apart only so that each file reads in one sitting. Sans-I/O like the rest of engine/.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from engine import alerts, pending
from engine import commands as cmd
from engine.errors import EngineError
from engine.rerate import PlanInSlices, Rerated, RerationPlan, plan_rerating, rerate_slice, with_rerated
from engine.versions import PublishResult

if TYPE_CHECKING:
    from engine._kernel import Kernel
    from engine.state import Engine


class PublishSteps:
    # Billing's state these steps read and change (set in Billing.__init__).
    engine: Engine
    kernel: Kernel
    planning: PlanInSlices | None
    _kernel_touched: tuple[str, ...]
    _rerate_changed: set[str]
    _rerating_end_listeners: list[Callable[[], None]]
    _fired: list[alerts.FiredAlert]
    _tables_stale: bool
    _refreshing: bool
    _appends: list[tuple[str, int]]

    if TYPE_CHECKING:  # Billing's own

        def refresh_tables(self, *, whole: bool = False) -> None: ...

        def _evaluate_alerts(
            self, touched: tuple[str, ...] | list[str], at_ms: int, seq: int
        ) -> list[alerts.FiredAlert]: ...

    def _publish_and_rerate(self, command: cmd.PublishVersion | cmd.RollbackRateCard, seq: int) -> PublishResult:
        """PublishVersion whole, its re-rating included, everyone at once (tests, tools, and the replay of a publish
        record an earlier release wrote). The server now defers the re-rating (publish_deferred, engine/pending.py),
        which gives each customer the same state. Deterministic: replaying the command re-rates the same."""
        plan = self.rerate_plan(command)
        published = self.publish(command, seq)
        done = Rerated()
        self.start_rerating()
        if plan is not None:
            self.refresh_tables()  # the new timeline, which the re-rating prices with
            for customers in plan.slices():
                done.merge(self.rerate_slice(plan, customers, seq))
                self.rerated(customers, command.at_ms, seq)
        return with_rerated(published, done)

    def rerate_plan(self, command: cmd.PublishVersion | cmd.RollbackRateCard) -> RerationPlan | None:
        """What publishing would re-rate, checked (FailedPrecondition otherwise); changes nothing."""
        return plan_rerating(self.engine.state, self.kernel, command, self.refresh_tables)

    def publish(self, command: cmd.PublishVersion | cmd.RollbackRateCard, seq: int) -> PublishResult:
        """The control plane's half of PublishVersion; the kernel's tables are then stale (refresh them before
        re-rating)."""
        result = self.engine.apply(command, seq)
        assert isinstance(result, PublishResult)
        self._note_published(command.rate_card_id, result.version.number)
        return result

    def _note_published(self, rate_card_id: str, number: int) -> None:
        """A version was published: appended to the tables loaded at the next refresh (its cost the version's, not
        the customers'), or compiled with the whole tables when they are stale anyway."""
        if self._tables_stale or self._refreshing:
            self._tables_stale = True
        else:
            self._appends.append((rate_card_id, number))

    def rerate_slice(self, plan: RerationPlan, customers: list[str], seq: int) -> Rerated:
        """Re-rates some of a publish's customers (the kernel's lock held a customer at a time, GIL released)."""
        done = rerate_slice(self.kernel, plan, customers, seq)
        self._rerate_changed.update(done.amounts_changed)
        return done

    def start_rerating(self) -> None:
        """A publish's re-rating begins: no customer counts as touched by it yet."""
        self._kernel_touched = ()
        self._rerate_changed = set()

    def rerated(self, customers: list[str], at_ms: int, seq: int) -> None:
        """After a slice of record `seq`'s re-rating (rerate_slice): those of its customers whose charges or draws
        it changed count as touched (balance watchers wake, see touched_customers; a customer whose buckets only
        changed version does not), and the balance rules are evaluated for every customer of the slice at the
        publish's time, in the plan's order, as for any record (the fired alerts are kept for take_fired();
        replay re-rates the same slices and so fires the same)."""
        self._kernel_touched += tuple(c for c in customers if c in self._rerate_changed)
        self._fired.extend(self._evaluate_alerts(customers, at_ms, seq))

    # A publish planned a slice at a time (engine/rerate.py PlanInSlices) --------------------------------

    def begin_plan(self, command: cmd.PublishVersion | cmd.RollbackRateCard) -> bool:
        """Starts planning the publish a slice of customers at a time (the tables must be current); False when
        it has nothing to plan (the engine refuses it anyway). Until `finish_plan`, only usage, holds and the
        clock may apply: they record the customers they change, whom the plan looks at again."""
        assert self.planning is None, "a publish is being planned already"
        self.planning = PlanInSlices.begin(self.engine.state, command)
        return self.planning is not None

    def plan_step(self, limit: int) -> bool:
        """The next slice of the plan (the kernel's lock shared, the GIL released); whether more remain.
        FailedPrecondition, ending the planning, when the usage it covers cannot be priced again."""
        planning = self.planning
        assert planning is not None, "no publish is being planned"
        try:
            return planning.step(self.kernel, limit)
        except EngineError:
            self.planning = None
            raise

    def finish_plan(self) -> RerationPlan | None:
        """The plan on the state now, which is what `rerate_plan` gives here; ends the planning."""
        planning, self.planning = self.planning, None
        assert planning is not None, "no publish is being planned"
        return planning.finish(self.kernel)

    # A re-rating online (engine/pending.py) ------------------------------------------------------------

    def publish_deferred(self, command: cmd.PublishVersion | cmd.RollbackRateCard, seq: int) -> PublishResult:
        """PublishVersion as the server journals it (replay): checked and published, its re-rating left pending
        (the writer's steps, in one call)."""
        plan = self.rerate_plan(command)
        published = self.publish(command, seq)
        self.defer_rerating(plan, seq)
        return published

    def defer_rerating(self, plan: RerationPlan | None, seq: int) -> None:
        """After record `seq` published: its re-rating, if any, is pending (a usage batch, Reserve or release
        re-rates the pending customers it names first; finish_rerating re-rates the rest)."""
        self.start_rerating()
        if plan is not None:
            self.refresh_tables()  # the new timeline, which the re-rating prices with
            self.engine.state.rerating = pending.start(plan, seq)

    @property
    def rerating(self) -> pending.PendingRerating | None:
        """The publish's re-rating still pending, if any."""
        return self.engine.state.rerating

    def rerate_next(self, limit: int) -> int:
        """A background slice of the pending re-rating: up to `limit` customers, next in plan order (the kernel's
        lock held a customer at a time, GIL released); returns how many. No record: see engine/pending.py."""
        rerating = self.engine.state.rerating
        return 0 if rerating is None else pending.rerate_next(self.kernel, rerating, limit)

    def finish_rerating(self, seq: int, at_ms: int) -> Rerated:
        """The pending re-rating's completion as record `seq`: whoever is still pending is re-rated, and the
        balance rules evaluated at `at_ms` for every customer of the plan, in plan order (the fired alerts are
        kept for take_fired()). Returns what the whole re-rating did."""
        rerating = self.engine.state.rerating
        assert rerating is not None, "no re-rating is pending"
        pending.rerate_all(self.kernel, rerating)
        self.engine.state.rerating = None
        self.engine.state.last_seq = seq
        changed = set(rerating.changed)
        self._kernel_touched = tuple(customer for customer in rerating.customers if customer in changed)
        self._fired.extend(self._evaluate_alerts(rerating.customers, at_ms, seq))
        done = Rerated(amounts_changed=list(self._kernel_touched))
        done.add(rerating.done)
        self._rerating_ended()
        return done

    def on_rerating_end(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Has `listener` called each time a pending re-rating ends: completed (`finish_rerating`, on the thread
        that runs it: the server's rating thread) or dropped with the state (`reset`, whose state may hold it
        pending again). Returns the call that stops it. SimulateVersion waits so for its card's re-rating."""
        self._rerating_end_listeners.append(listener)
        return lambda: self._rerating_end_listeners.remove(listener)

    def _rerating_ended(self) -> None:
        for listener in tuple(self._rerating_end_listeners):  # a copy: the loop's thread may remove one meanwhile
            listener()

    def _rerate_named(self, command: cmd.AdminCommand) -> None:
        """Re-rate on touch for the commands that may apply while a re-rating is pending (Reserve and
        ReleaseReservation name one customer, a ReserveBatch its holds' customers, an AdvanceClock those whose
        holds it expires: engine/credits.py); the writer completes a re-rating before any other. While a publish is
        planned, the same commands record the customers they change for the plan to look at again."""
        rerating = self.engine.state.rerating
        if rerating is None and self.planning is None:
            return
        if isinstance(command, cmd.AdvanceClock):
            if self.planning is not None:
                # Beside a publish being planned it applies whole (nothing is pending: replay applies it so, the
                # publish not being journaled yet): the accounts whose holds expire, and those of which a grant
                # ends (`_apply_kernel_command`), are looked at again.
                self.planning.touch(self.kernel.holds_due_by(command.at_ms))
                return
            assert rerating is not None
            pending.rerate(self.kernel, rerating, self.kernel.holds_due_by(command.at_ms))
            return
        assert isinstance(command, cmd.Reserve | cmd.ReleaseReservation | cmd.ReserveBatch), (
            f"{type(command).__name__} applied while a publish is planned or its re-rating pending"
        )
        if isinstance(command, cmd.ReserveBatch):
            named = self.kernel.hold_customers(command.requests)
        else:
            named = [command.customer_id]
        if self.planning is not None:
            self.planning.touch(named)
        if rerating is not None:
            pending.rerate(self.kernel, rerating, named)

    def _rerate_touched(self, batch: bytes) -> None:
        """Re-rate on touch for a usage batch: the pending customers it names, before it is rated."""
        rerating = self.engine.state.rerating
        if rerating is None and self.planning is None:
            return
        try:
            named = self.kernel.batch_customers(batch)
        except ValueError:
            return  # not a UsageBatch: ingestion refuses it, changing nothing
        if self.planning is not None:
            self.planning.touch(named)  # before it is rated: a refused batch touches no more than it names
        if rerating is not None:
            pending.rerate(self.kernel, rerating, named)
