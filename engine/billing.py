"""The billing machine the server runs: the control plane in Python (`Engine`: catalogue, versions,
contracts, grants, audit) and the account state in the rating kernel (usage buckets, grant balances,
dedupe), kept in step.

Usage goes to the kernel as the `UsageBatch` bytes received: one call per batch, no Python object per
event. Admin commands go to the control plane; the kernel's tables are recompiled from it in ONE place
(`refresh_tables`), lazily: an admin command notes what it changed, and the next batch or read compiles
once, so a run of admin commands compiles once. A command that changes one customer (its creation,
contracts, overrides, grants, a period's close) recompiles that customer only, and CloseDuePeriods the
customers it closed; a draft version or a new rate card
(in no table yet) recompiles nothing; a publish or rollback appends its version to the tables loaded
(Kernel.append_version: no route is compiled); any other (products) recompiles the whole tables. The writer refreshes them before it hands batches to another thread and applies no admin command until they are rated, so while a batch is rated the tables are current
and a read (balances, Authorize) compiles nothing: it touches no Python state the rating thread uses.

Sans-I/O like the rest of engine/: time comes in with each call.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    import mmap  # the server's maps of segment files; engine/ reads them as bytes-like only

from engine import alerts, balances, credits
from engine import commands as cmd
from engine._kernel import DedupeSegment, Kernel
from engine.balances import BalanceView
from engine.billing_publish import PublishSteps
from engine.billing_reads import BillingReads
from engine.contracts import Contract
from engine.control import encode_state_parts
from engine.errors import AlreadyExists
from engine.invoices import Invoice
from engine.ledger import Grant
from engine.rerate import (
    PlanInSlices,
)
from engine.state import Engine
from engine.tables import DEDUPE_WINDOW_MS_DEFAULT, FUTURE_SKEW_MS_DEFAULT, TableCompiler
from engine.tables_paced import cohort_members_steps, compile_all_steps, compile_customers_steps, run_steps

HOUR_MS = 3_600_000
SNAPSHOT_FORMAT = 2


class RatingChanged(Exception):
    """A replayed batch's digest differs from the journaled one: the kernel rates differently from the
    release that wrote the journal."""


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one usage batch did: the ack the kernel encoded, its digest, and the counts for telemetry."""

    ack: bytes
    digest: bytes
    accepted: int
    duplicates: int
    rejected: list[str]  # the reason of each rejection
    # The customers its accepted events touched: listed only while tracking is on (see `set_watching`).
    touched: tuple[str, ...] = ()
    alerts: tuple[alerts.FiredAlert, ...] = ()  # the alerts it fired (engine/alerts.py)


@dataclass(frozen=True, slots=True)
class CompiledTables:
    """The whole tables compiled by `Billing.compile_steps`, in parts, for `Billing.load_compiled`."""

    parts: list[bytes]
    compiler: TableCompiler  # whose indexes the parts follow


class Snapshot(msgspec.Struct, frozen=True):
    """A snapshot's stored form: the control plane (JSON of engine/control.py's BillingState) and the kernel's state bytes."""

    format: int
    control: bytes
    kernel: bytes


def snapshot_parts(control_parts: list[bytes], kernel_parts: list[bytes]) -> list[bytes]:
    """The stored snapshot, msgspec's msgpack of Snapshot(SNAPSHOT_FORMAT, control, kernel) byte for byte, as
    parts to concatenate: the halves are not copied here, so a caller can copy them a slice at a time."""
    control_bytes = sum(len(part) for part in control_parts)
    kernel_bytes = sum(len(part) for part in kernel_parts)
    format_, control, kernel = (_msgpack.encode(field.encode_name) for field in msgspec.structs.fields(Snapshot))
    head = _MAP3 + format_ + _msgpack.encode(SNAPSHOT_FORMAT) + control + _bin_header(control_bytes)
    return [head, *control_parts, kernel + _bin_header(kernel_bytes), *kernel_parts]


_msgpack = msgspec.msgpack.Encoder()
# One part's copy holds the GIL: 1 MiB is about a third of a millisecond here, pages faulted in included.
KERNEL_SNAPSHOT_PART_BYTES = 1 << 20
_MAP3 = b"\x83"  # msgpack fixmap of 3 entries: Snapshot's fields


def _bin_header(size: int) -> bytes:
    """msgpack's bin header in its shortest form, as msgspec writes it."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


class Billing(PublishSteps, BillingReads):
    def __init__(
        self,
        engine: Engine | None = None,
        kernel: Kernel | None = None,
        *,
        future_skew_ms: int = FUTURE_SKEW_MS_DEFAULT,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
    ) -> None:
        self.engine = engine if engine is not None else Engine()
        self.kernel = kernel if kernel is not None else Kernel()
        self.future_skew_ms = future_skew_ms
        self.dedupe_window_ms = dedupe_window_ms
        self._compiler = TableCompiler(future_skew_ms=future_skew_ms, dedupe_window_ms=dedupe_window_ms)
        self._tables_stale = True  # the whole tables
        self._customers_stale: set[str] = set()  # only these customers' (when the whole tables are current)
        # Versions published since (rate card, number), appended to the tables loaded before the customers above
        # compile (when the whole tables are current): see TableCompiler.prepare_append.
        self._appends: list[tuple[str, int]] = []
        # A refresh in steps (compile_steps): under way until its tables are loaded, and the steps themselves
        # with whether they compile an unacknowledged command's tables, until they are exhausted.
        self._refreshing = False
        self._in_flight: tuple[Generator[None, None, CompiledTables | None], bool] | None = None
        # The kernel lists the customers each batch touches while someone watches a balance or an alert rule
        # exists; otherwise ingestion does not even compare (see Kernel.track_touched).
        self._watching = False
        self._tracking = False
        self._fired: list[alerts.FiredAlert] = []  # alerts fired by admin commands, until take_fired()
        self._rule_index = (
            alerts.RuleIndex()
        )  # the alert rules by the customers they watch (derived, grown as rules are added, rebuilt after a deletion)
        self._kernel_touched: tuple[str, ...] = ()  # the customers the last kernel command touched
        self._rerate_changed: set[str] = set()  # the customers a publish's re-rating changed so far
        self.planning: PlanInSlices | None = None  # a publish being planned a slice at a time (begin_plan)
        self._rerating_end_listeners: list[Callable[[], None]] = []  # see on_rerating_end
        # The seq of the stored snapshot whose dedupe segments the kernel's logged changes follow (the kernel
        # restored from them, or the server's last snapshot); None: the next snapshot's segment is a base.
        self.dedupe_segments_seq: int | None = None
        self._sync_tracking()
        self.engine.period_adjustments = self._adjustments
        self.engine.period_read = self._period_read
        self.engine.kernel_recorded = self._kernel_recorded
        self.engine.hours_recorded = self._hours_recorded
        self.engine.product_hours_recorded = self._hours_recorded
        self.engine.made_grant = self._made_grant
        self.engine.grant_expiry_moved = self._grant_expiry_moved

    @property
    def last_seq(self) -> int:
        return self.engine.state.last_seq

    def reset(self, other: Billing) -> None:
        """Takes over another machine's state (recovery after a failed commit); the engine object stays the
        same, since readers hold it."""
        self.engine.reset(other.engine.state)
        self.kernel = other.kernel
        self._tables_stale = True
        self._appends.clear()
        self._refreshing = False
        self._in_flight = None
        self._fired.clear()
        self.planning = None
        self._tracking = other._tracking
        self.dedupe_segments_seq = other.dedupe_segments_seq
        self._sync_tracking()
        self._rerating_ended()  # a re-rating pending before went with the state (the new one's may hold it again)

    # Commands ------------------------------------------------------------------------------------------

    def apply(self, command: cmd.AdminCommand, seq: int) -> object:
        """Applies a control-plane command as record `seq`; raises EngineError (nothing changed) to refuse it."""
        self._rerate_named(command)
        if isinstance(command, cmd.KERNEL_COMMANDS):
            return self._apply_kernel_command(command, seq)
        if isinstance(command, cmd.PublishVersion | cmd.RollbackRateCard):
            return self._publish_and_rerate(command, seq)
        if isinstance(command, cmd.GrantCredits):
            self._refuse_made_grant_id(command)
        if isinstance(command, cmd.ExpireGrant):
            self.refresh_tables()  # the kernel holds every grant GrantCredits gave, to move its expiry
        result = self.engine.apply(command, seq)
        if isinstance(command, cmd.DeleteAlertRule):
            self._sync_tracking()  # changes no table; the rule index starts over (a new dict of rules)
            return result
        if isinstance(command, cmd.CreateAlert):
            self._sync_tracking()  # changes no table
            # Rules evaluate the customers each batch from here on touched, and only those: a customer listed
            # before (tracked for a watcher, not yet taken) must not be evaluated, or replay would differ. No
            # batch is being rated while an admin command applies.
            self.kernel.take_touched()
            return result
        if isinstance(command, cmd.CreateDraftVersion | cmd.CreateRateCard):
            return result  # no table holds a draft, nor a rate card until it has a published version
        if isinstance(command, cmd.CloseDuePeriods):
            return self._closed_due(command, result, seq)
        customer_id = _changed_customer(command, result)
        if customer_id is None:
            self._tables_stale = True
        else:
            self._customers_stale.add(customer_id)
            self._fired.extend(self._evaluate_alerts([customer_id], command.at_ms, seq))
        return result

    def _made_grant(self, customer_id: str, grant_id: str) -> Grant | None:
        """The grant the kernel made for the customer under `grant_id` (a top-up's, a rollover's), as the control
        plane's records would show it (credits.made_grants), or None: ExpireGrant moves its expiry too."""
        if customer_id not in self.engine.state.accounts:
            return None
        rows = self.kernel.made_grants(customer_id)
        row = next((made for made in rows if made[0] == grant_id), None)
        if row is None:
            return None
        contract = self.engine._contract_at(customer_id, row[4])  # the contract its start is in, if any
        return credits.made_grants(self, customer_id, contract.id if contract else "", rows)[grant_id]

    def _grant_expiry_moved(self, customer_id: str, grant_id: str, expires_at_ms: int) -> bool:
        """ExpireGrant's change in the kernel: the grant's expiry moved and what falls due rescheduled (False: the
        kernel holds no such grant)."""
        return self.kernel.set_grant_expiry(customer_id, grant_id, expires_at_ms)

    def _refuse_made_grant_id(self, command: cmd.GrantCredits) -> None:
        """AlreadyExists when the server set `made_ids_refused` and the grant's id is one the kernel gave a grant it
        made for the customer (top-up-<period start ms>-<n>, rollover-<grant>-<period end ms>): the control plane
        does not hold those, and the kernel's tables would take the new grant for the one it made, replacing what
        was bought or rolled over (and, were more drawn from it than granted, refusing every later compile)."""
        if not command.made_ids_refused or not command.id:
            return
        contract = self.engine.state.contracts.get(command.contract_id)
        customer_id = command.customer_id or (contract.customer_id if contract is not None else "")
        if customer_id and any(made[0] == command.id for made in self.kernel.made_grants(customer_id)):
            raise AlreadyExists(f"grant {command.id!r} already exists: the server made it for customer {customer_id!r}")

    def _closed_due(self, command: cmd.CloseDuePeriods, result: object, seq: int) -> object:
        """The customers whose periods a CloseDuePeriods closed: their tables only are recompiled, as a ClosePeriod's
        one's (a month's end closes every customer's period in commands of a few hundred, and recompiling every
        customer's tables after each made it cost the square of the customers), and, when the server set
        `alerts_evaluated`, their balance rules evaluated, first closed first, each once, as ClosePeriod evaluates
        its one's (a close recorded by an earlier release replays firing nothing, as it did)."""
        assert isinstance(result, list)
        customers = list(dict.fromkeys(invoice.customer_id for invoice in result))
        self._customers_stale.update(customers)
        if command.alerts_evaluated:
            self._fired.extend(self._evaluate_alerts(customers, command.at_ms, seq))
        return result

    def customer_tables_changed(self, customer_id: str) -> None:
        """A kernel command changed what the customer's tables hold (the currency its top-up policy buys in): they
        are compiled again before the next batch is rated."""
        self._customers_stale.add(customer_id)

    def _apply_kernel_command(self, command: cmd.KernelCommand, seq: int) -> object:
        """Reservations, top-up policies and the clock (engine/credits.py), then the alerts they fire: the
        kernel's notices (a top-up executed, a reservation expired) and the balance rules of the customers the
        command touched, as for any record (replay fires the same)."""
        result = credits.apply(self, command, seq)
        if self.planning is not None and isinstance(result, credits.Advanced):
            self.planning.touch(result.grants_ended)
        customers = dict.fromkeys(_credit_customers(command, result))
        for customer_id in self._notice_alerts(command.at_ms, seq):
            customers[customer_id] = None
        self._fired.extend(self._evaluate_alerts(list(customers), command.at_ms, seq))
        self._kernel_touched = tuple(customers)
        return result

    def _notice_alerts(self, at_ms: int, seq: int) -> list[str]:
        """Fires the alerts of the notices the kernel reported while applying record `seq` (kept for
        take_fired()); returns the customers they name."""
        notices, _ = self.kernel.drain_notices()
        customers: list[str] = []
        for kind, customer_id, details in notices:
            self.notice(kind, customer_id, {key: str(value) for key, value in details.items()}, at_ms, seq)
            customers.append(customer_id)
        return customers

    def ingest(
        self,
        batch: bytes,
        received_ms: int,
        *,
        events_max: int = 2**31,
        allowed: list[str] | None = None,
        top_ups_in_billed_period: bool = False,
        returned_expired_credit_breaks: bool = False,
        reservation_ids_bounded: bool = False,
        returned_rolled_credit_breaks: bool = False,
        duplicates_before_skew: bool = False,
        batch_ids_bounded: bool = False,
        refunds_netted: bool = False,
    ) -> Ingested:
        """Rates a batch as record last_seq + 1, which it becomes only if it accepts an event.

        `top_ups_in_billed_period`: set by the server for every batch it takes, and journaled with it, so that a
        top-up an event dated in a later billing period buys (within the future skew) starts in that period, the
        one that bills it, and revenue sells it there; False (batches journaled before it) starts it at the
        purchase, in the period before, as then. `returned_expired_credit_breaks`: likewise set and journaled, so that
        what an event's settled hold or refund gives back to a grant already broken at its expiry, and the event
        does not draw, breaks at once, where no other event can draw it; False (batches journaled before it) leaves it to the
        next AdvanceClock, as then. `reservation_ids_bounded`: likewise set and journaled, so that an event whose
        reservation_id is over 256 bytes (no hold has one) is INVALID_EVENT; False (batches journaled before it)
        rates it, as then. `returned_rolled_credit_breaks`: likewise set and journaled, so that what an event's refund
        (a late event dated before a grant's rollover) gives back to a grant that has rolled over already breaks at
        once, the rollover being final; False (batches journaled before it) leaves it in the grant, as then.
        `duplicates_before_skew`: likewise set and journaled, so that an identical resend of an accepted event is a
        duplicate whatever the future skew is now (a start with a smaller --future-skew-s); False (batches
        journaled before it) refuses it as TIMESTAMP_OUT_OF_RANGE past the skew, as then. `batch_ids_bounded`: set by
        the server for every batch it receives (not journaled: a batch it refuses is not), so that a batch_id over
        256 bytes refuses the batch whole (BatchIdTooLong); False (replay) takes it, as earlier releases did.
        `refunds_netted`: set and journaled like `top_ups_in_billed_period`, so that an event's charges take back
        first what its refunds gave back (credit of grants usable for them, then overage: its refunds and charges
        netted, draw.rs `settle`); False (batches journaled before it) draws its charges in burn order, as then.

        Raises ValueError (not a UsageBatch), BatchTooLarge, BatchIdTooLong or CustomerNotAllowed, having changed
        nothing."""
        self.refresh_tables()
        self._rerate_touched(batch)
        seq = self.last_seq + 1
        ack, digest, accepted, duplicates, rejected = self.kernel.ingest_checked(
            batch,
            received_ms,
            seq,
            events_max,
            allowed,
            top_ups_in_billed_period,
            returned_expired_credit_breaks,
            reservation_ids_bounded,
            returned_rolled_credit_breaks,
            duplicates_before_skew,
            batch_ids_bounded,
            refunds_netted,
        )
        if not accepted:
            return Ingested(ack, digest, accepted, duplicates, rejected)
        self.engine.state.last_seq = seq
        touched = tuple(self.kernel.take_touched()) if self._tracking else ()
        fired = self._evaluate_alerts(touched, received_ms, seq) if touched else []
        # Top-ups the batch executed: their alerts belong to its record. The notices go through the same list as
        # an admin command's, taken back here so the batch's record holds them.
        self._notice_alerts(received_ms, seq)
        fired += self.take_fired()
        return Ingested(ack, digest, accepted, duplicates, rejected, touched, tuple(fired))

    def use_future_skew(self, future_skew_ms: int) -> None:
        """Rates the batches that follow with this skew (how far ahead of its receive time an event may be): the
        whole tables, which hold it, compile again before the next batch or read. Replay switches to the skew each
        journaled batch was received under, so that changing --future-skew-s between starts replays the same."""
        if future_skew_ms == self.future_skew_ms:
            return
        self.future_skew_ms = future_skew_ms
        self._compiler = TableCompiler(future_skew_ms=future_skew_ms, dedupe_window_ms=self.dedupe_window_ms)
        self._tables_stale = True

    def replay(
        self,
        seq: int,
        batch: bytes,
        received_ms: int,
        digest: bytes,
        fired: list[alerts.FiredAlert] | None = None,
        *,
        top_ups_in_billed_period: bool = False,
        returned_expired_credit_breaks: bool = False,
        reservation_ids_bounded: bool = False,
        returned_rolled_credit_breaks: bool = False,
        duplicates_before_skew: bool = False,
        refunds_netted: bool = False,
    ) -> int:
        """Re-applies a journaled batch (with the rule it was rated by, see `ingest`) and asserts it did what the
        journal says (and fired the alerts it holds, when `fired` is given). Returns the events it accepted."""
        assert seq == self.last_seq + 1, f"records replay in order: {seq} after {self.last_seq}"
        done = self.ingest(
            batch,
            received_ms,
            top_ups_in_billed_period=top_ups_in_billed_period,
            returned_expired_credit_breaks=returned_expired_credit_breaks,
            reservation_ids_bounded=reservation_ids_bounded,
            returned_rolled_credit_breaks=returned_rolled_credit_breaks,
            duplicates_before_skew=duplicates_before_skew,
            refunds_netted=refunds_netted,
        )
        if done.digest != digest or not done.accepted or (fired is not None and list(done.alerts) != fired):
            raise RatingChanged(
                f"journal record {seq}: rating changed between releases (replaying the batch gives another "
                "result than the journal holds); run the release that wrote this journal"
            )
        return done.accepted

    # Watching and alerts -------------------------------------------------------------------------------

    def set_watching(self, on: bool) -> None:
        """The server has balance watchers (or no longer has): the kernel lists the customers batches touch."""
        self._watching = on
        self._sync_tracking()

    def _sync_tracking(self) -> None:
        on = self._watching or bool(self.engine.state.alerts.rules)
        if on != self._tracking:
            self.kernel.track_touched(on)
            self._tracking = on

    def take_fired(self) -> list[alerts.FiredAlert]:
        """The alerts the admin commands applied since the last call fired (their journal records hold them)."""
        fired, self._fired = self._fired, []
        return fired

    def notice(
        self, kind: str, customer_id: str, details: dict[str, str], at_ms: int, seq: int
    ) -> list[alerts.FiredAlert]:
        """An event the kernel reported while applying record `seq` (a top-up executed, a reservation expired):
        the alerts it fires, also kept for take_fired()."""
        fired = alerts.notice(self.engine.state.alerts, kind, customer_id, details, at_ms, seq, self._rule_index)
        self._fired.extend(fired)
        return fired

    def _evaluate_alerts(self, touched: tuple[str, ...] | list[str], at_ms: int, seq: int) -> list[alerts.FiredAlert]:
        """The balance rules' alerts for the customers record `seq` touched, from the kernel's balances at its
        time. Tables are current: the writer refreshed them before the batch, and an admin command's
        customer is compiled here first."""
        book = self.engine.state.alerts
        customers = alerts.customers_to_evaluate(book, touched, self._rule_index)
        if not customers:
            return []
        self.refresh_tables()
        fired: list[alerts.FiredAlert] = []
        for customer_id in customers:
            view = self.kernel.balance(customer_id, at_ms)
            if view is None:
                continue
            period = view["period"]
            standing = alerts.Standing(
                available_picos=view["remaining"],
                period_charges_picos=view["period_charges"],
                period_start_ms=period[0] if period is not None else None,
                has_grants=bool(view["grants"]),
            )
            fired.extend(alerts.evaluate(book, customer_id, standing, at_ms, seq, self._rule_index))
        return fired

    def touched_customers(self, command: cmd.AdminCommand, result: object) -> tuple[str, ...]:
        """The customers whose balances the admin command just applied may have changed."""
        if isinstance(command, (*cmd.KERNEL_COMMANDS, cmd.PublishVersion, cmd.RollbackRateCard)):
            return self._kernel_touched  # a publish's: the customers it re-rated (see rerated)
        if isinstance(command, cmd.CreateAlert | cmd.DeleteAlertRule):
            return ()
        customer_id = _changed_customer(command, result)
        return () if customer_id is None else (customer_id,)

    def refresh_tables(self, *, whole: bool = False) -> None:
        """Compiles what an admin command changed since: the whole tables, or only the customers touched (a
        no-op when nothing changed, so a read calling it while a batch is rated elsewhere does nothing: the
        writer refreshed them first). `whole` recompiles everything regardless. A refresh in steps under way
        (compile_steps) is finished here at once, unless it compiles an unacknowledged command's tables: those a
        read does not wait for."""
        if not (
            whole or self._tables_stale or self._customers_stale or self._appends or self._refreshing or self._in_flight
        ):
            return  # nothing changed since: every read asks, so this answer costs no generator (about 10 us)
        if self._in_flight is not None:
            steps, unacknowledged = self._in_flight
            if unacknowledged:
                return
            compiled = drain_compile(steps)  # its driver finds it exhausted
            if compiled is not None:
                self.load_compiled(compiled)
        elif self._refreshing:
            return  # compiled, being loaded by the writer
        if whole:
            self._tables_stale = True
        compiled = drain_compile(self.compile_steps())
        if compiled is not None:
            self.load_compiled(compiled)

    @property
    def tables_behind(self) -> bool:
        """Whether an admin command changed what the kernel's tables hold since they were compiled: until they are,
        the kernel's index of due times misses what it changed (a grant's expiry or rollover)."""
        return bool(self._tables_stale or self._customers_stale or self._appends)

    def compile_steps(self, *, unacknowledged: bool = False) -> Generator[None, None, CompiledTables | None]:
        """refresh_tables a slice of customers per step (engine/tables_paced.py), for a caller that pauses between
        steps. Touched customers load a slice at a time as they compile (each slice alone is consistent); the whole
        tables are returned compiled, for `load_compiled` (one atomic load), or None when there is nothing to load.
        The caller applies no command until then. A read meanwhile (refresh_tables) finishes the refresh itself,
        unless `unacknowledged`: the tables of a command not yet acknowledged (a publish being applied), which a
        read need not see, so it reads the tables loaded before."""
        steps = self._compile_steps()
        self._in_flight = (steps, unacknowledged)
        try:
            return (yield from steps)
        finally:
            if self._in_flight is not None and self._in_flight[0] is steps:
                self._in_flight = None

    def _compile_steps(self) -> Generator[None, None, CompiledTables | None]:
        if not self._tables_stale and not self._customers_stale and not self._appends:
            return None
        self._refreshing = True
        try:
            if self._appends and not self._tables_stale:
                yield from self._append_steps()
            if self._tables_stale:
                # A compiler of its own: the current one's indexes stay those of the tables loaded.
                compiler = TableCompiler(future_skew_ms=self.future_skew_ms, dedupe_window_ms=self.dedupe_window_ms)
                parts = yield from compile_all_steps(compiler, self.engine.state)
                return CompiledTables(parts, compiler)
            # Failing half way (a value the kernel refuses), the compiler's indexes and the kernel's may part:
            # the next refresh compiles the whole tables again.
            self._tables_stale = True
            for blob in compile_customers_steps(
                self._compiler, self.engine.state, self._customers_stale, self.engine.contracts_of
            ):
                self.kernel.load_customers(blob)
                yield
            self._tables_stale = False
            self._customers_stale.clear()
            self._refreshing = False
            return None
        except BaseException:
            self._refreshing = False
            raise

    def _append_steps(self) -> Generator[None, None, None]:
        """The versions published since, appended to the kernel's tables in publish order (before the customers
        touched since compile, as a whole compile interns versions before routes). A value the kernel refuses
        leaves the whole tables stale: their compile then refuses it as it did before appends."""
        appends, self._appends = self._appends, []
        self._tables_stale = True
        for rate_card_id, number in appends:
            cohort = self.engine.state.rate_cards[rate_card_id].version(number).cohort
            members = yield from cohort_members_steps(cohort, self.engine.state, self._customers_stale)
            try:
                prepared = self._compiler.prepare_append(self.engine.state, rate_card_id, number, members)
                self.kernel.append_version(prepared.encoded)
            except ValueError:  # TablesError among them
                return
            self._compiler.commit_append(prepared)
        self._tables_stale = False

    def load_compiled(self, compiled: CompiledTables) -> None:
        """Loads the whole tables compile_steps compiled (a join and one kernel call, both with the GIL released: a
        server may make them on another thread while nothing else changes the state)."""
        try:
            self.kernel.load_tables(b"".join(compiled.parts))
            self._compiler = compiled.compiler
            self._tables_stale = False
            self._customers_stale.clear()
            self._appends.clear()
        finally:
            self._refreshing = False

    # Reads ---------------------------------------------------------------------------------------------

    def balance(self, customer_id: str, now_ms: int) -> BalanceView:
        """The customer's balance at now_ms (engine/balances.py)."""
        return balances.balance(self, customer_id, now_ms)

    def balance_encoded(self, customer_id: str, now_ms: int) -> BalanceView:
        """`balance`, its top-up grants encoded by the kernel (engine/balances.py): GetBalance's and WatchBalance's."""
        return balances.balance_encoded(self, customer_id, now_ms)

    # Snapshots -----------------------------------------------------------------------------------------

    def encode_snapshot(self) -> bytes:
        """Both halves at once (tools and tests; the server encodes them apart: see snapshot_parts)."""
        return b"".join(snapshot_parts(list(self.control_snapshot_parts()), self.kernel_snapshot()))

    def control_snapshot_parts(self) -> Iterator[bytes]:
        """The control plane's half (JSON of engine/control.py's BillingState) in parts, each a short encode, so
        that the caller may pause between them; it must apply no command until it has them all."""
        return encode_state_parts(self.engine.state)

    def kernel_snapshot(self) -> list[bytes]:
        """The kernel's half, in parts of at most KERNEL_SNAPSHOT_PART_BYTES: encoded with the GIL released and the
        kernel's lock shared (reads go on), then copied into Python a part at a time (see Kernel.snapshot_parts)."""
        self.refresh_tables()
        return self.kernel.snapshot_parts(KERNEL_SNAPSHOT_PART_BYTES)

    def kernel_snapshot_segmented(self, base: bool) -> tuple[list[bytes], DedupeSegment]:
        """The kernel's half without its dedupe table, which goes in a segment beside the snapshot: the table's
        changes since the last one (to encode off the writer), or with `base` the whole table (and from then on
        the kernel logs its changes). See Kernel.snapshot_segmented. The caller compiles the tables first, on the
        thread reads run on: a read finishes a refresh it finds under way, so one run here, on another thread,
        would be entered by two threads at once."""
        assert not self.tables_behind and self._in_flight is None, "tables compiled before the snapshot"
        return self.kernel.snapshot_segmented(KERNEL_SNAPSHOT_PART_BYTES, base)

    @classmethod
    def from_snapshot(
        cls,
        blob: bytes,
        *,
        future_skew_ms: int = FUTURE_SKEW_MS_DEFAULT,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
        segments: Sequence[bytes | mmap.mmap] | None = None,
    ) -> Billing:
        """`segments`: the dedupe segments stored beside a snapshot the server wrote in segments, oldest first."""
        stored = msgspec.msgpack.decode(blob, type=Snapshot)
        assert stored.format == SNAPSHOT_FORMAT, f"snapshot format {stored.format}"
        engine = Engine.from_snapshot(stored.control)
        kernel = Kernel.restore(stored.kernel, segments or None)
        billing = cls(engine, kernel, future_skew_ms=future_skew_ms, dedupe_window_ms=dedupe_window_ms)
        if billing.rerating is not None:
            # A publish's re-rating was pending: its customers are re-rated (on touch, by a background slice, by the
            # completion record replayed next) at the timeline the publish made, which the machine that took the
            # snapshot compiled at the publish (defer_rerating) and a restored kernel has not: re-rated without it,
            # they kept their old prices and left the pending set as if re-rated.
            billing.refresh_tables()
        return billing


def _changed_customer(command: cmd.AdminCommand, result: object) -> str | None:
    """The one customer whose tables an applied command changed, or None when it changed shared tables."""
    match command:
        case cmd.CreateCustomer(id=customer_id):
            return customer_id
        case (
            cmd.CreateContract()
            | cmd.AddOverride()
            | cmd.EndContract()
            | cmd.EndOverride()
            | cmd.GrantCredits()
            | cmd.ExpireGrant()
        ):
            assert isinstance(result, Contract | Grant)
            return result.customer_id
        case cmd.ClosePeriod():
            assert isinstance(result, Invoice)
            return result.customer_id
    return None


def _credit_customers(command: cmd.KernelCommand, result: object) -> list[str]:
    """The customer a reservation or top-up policy command names; for an AdvanceClock the server set
    `alerts_evaluated` on, those of which a grant expired or rolled over (a reservation's expiry names its customer
    in its notice)."""
    if isinstance(command, cmd.Reserve | cmd.ReleaseReservation):
        return [command.customer_id]
    if isinstance(command, cmd.AdvanceClock):
        return list(result.grants_ended) if command.alerts_evaluated and isinstance(result, credits.Advanced) else []
    if isinstance(result, credits.HeldBatch):
        return list(result.customers)
    customer_id = getattr(result, "customer_id", None)
    return [customer_id] if isinstance(customer_id, str) else []


def drain_compile(steps: Generator[None, None, CompiledTables | None]) -> CompiledTables | None:
    """Runs compile_steps without pausing."""
    return run_steps(steps)
