"""Closing periods (ClosePeriod, CloseDuePeriods: the invoice becomes final, numbered and immutable) and reading
drafts and invoices. What an invoice holds and how its amounts are computed and rounded: engine/invoices.py.

Sans-I/O: the kernel's lines come in through a callable (engine/billing.py sets it), time on the command.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator

from engine import commands as cmd
from engine._kernel import period_containing
from engine.contracts import Contract
from engine.control import ControlPlane
from engine.errors import FailedPrecondition, InvalidArgument, NotFound, Repeated
from engine.instants import iso
from engine.invoices import (
    DUE_EXPONENT,
    NO_ROLLOVER_MS,
    AdjustmentsReader,
    GrantCredit,
    Invoice,
    KernelAdjustment,
    KernelLines,
    KernelPurchase,
    PeriodReader,
    RecordedBefore,
    build_invoice,
    invoice_number,
    minor_unit,
    round_due,
)
from engine.money import DECIMAL_CONTEXT


def top_up_purchases_minor(period_start_ms: int, currency: str, purchases: list[KernelPurchase]) -> int:
    """Currency the customer paid for the top-up grants bought in the period starting at period_start_ms, in
    minor units: the exact sum of the purchases' costs (credits x price_per_credit, at 10^-30), rounded half-even
    once to the currency's minor unit. `purchases`: the kernel's, read with the lines."""
    cost_e30 = sum(row[4] for row in purchases if row[0] == period_start_ms)
    return round_due(cost_e30, 10 ** (DUE_EXPONENT - minor_unit(currency)))


def bought_in(period_start_ms: int, purchases: list[KernelPurchase]) -> set[str]:
    """The ids of the top-up grants bought in the period starting at period_start_ms (the kernel counts a purchase
    in the billing period of the event or hold that triggered it): an invoice lists each of them."""
    return {row[1] for row in purchases if row[0] == period_start_ms}


class InvoiceCommands(ControlPlane):
    """ClosePeriod, CloseDuePeriods, and the reads of drafts and invoices (see engine/state.py's Engine)."""

    period_adjustments: AdjustmentsReader | None
    # The lines, adjustments, top-up purchases and grant credit of a customer in one kernel call (engine/billing.py
    # sets it): a class default, so the Engine dataclass keeps its fields. Drafts and closes read through it alike.
    period_read: PeriodReader | None = None
    # How many top-ups the kernel has bought and breakage entries it has recorded for a customer (engine/billing.py
    # sets it): a close records them.
    kernel_recorded: Callable[[str], tuple[int, int]] | None = None
    _due_heap: list[tuple[int, str]] | None

    # Reads -------------------------------------------------------------------------------------------------

    def preview(self, customer_id: str, at_ms: int, read_ms: int | None = None) -> Invoice:
        """The invoice of the customer's period containing at_ms: the final one when the period is closed.
        `read_ms` (PreviewInvoice's time): the kernel's grants as the clock's record of what fell due by then will
        leave them, so that a ROLLOVER grant made by a rollover due but not yet recorded is listed, as its close
        (which the writer applies after recording it) lists it (README "Draft = final")."""
        contract = self._contract_or_refuse(customer_id, at_ms)
        rollovers = self._rollovers(customer_id)
        # The final invoice of a closed period reads no grant credit (the period as the contract in force says).
        closed = self._period_of(contract, at_ms)[0] in self.state.accounts[customer_id].invoices
        wanted = None if closed else (min((at for at, _ in rollovers.values()), default=NO_ROLLOVER_MS), True)
        # The lines, adjustments, purchases and grant credit from one kernel call: the writer's thread may rate a
        # batch (drawing on a grant, buying a top-up) or re-rate the customer between two, and the invoice would
        # list new adjustments beside old lines, or a grant's credit after a batch beside the lines before it.
        assert self.period_read is not None, "the engine reads invoice lines through the kernel (engine/billing.py)"
        found, adjustments, purchases, credit = self.period_read(customer_id, at_ms, True, read_ms, wanted)
        assert found is not None, f"the kernel's tables name customer {customer_id!r}"
        period = found
        number = self.state.accounts[customer_id].invoices.get(period[0])
        if number is not None:
            return self.state.invoices[number]
        top_ups = top_up_purchases_minor(period[0], contract.currency, purchases)
        due = {grant_id: roll for grant_id, roll in rollovers.items() if roll[0] <= period[1]}
        return self._build(
            contract,
            period,
            top_ups,
            adjustments,
            rollovers_due=due,
            grant_credit=credit or {},
            expired_credit=credit or {},
            bought=bought_in(period[0], purchases),
        )

    def invoice(self, number: str) -> Invoice:
        found = self.state.invoices.get(number)
        if found is None:
            raise NotFound(f"invoice {number!r} does not exist")
        return found

    def invoices_of(self, customer_id: str) -> list[Invoice]:
        """A customer's final invoices, oldest period first."""
        account = self.state.accounts.get(customer_id)
        if account is None:
            raise NotFound(f"customer {customer_id!r} does not exist")
        return [self.state.invoices[n] for _, n in sorted(account.invoices.items())]

    def _contract_or_refuse(self, customer_id: str, at_ms: int) -> Contract:
        self.customer(customer_id)
        contract = self._contract_at(customer_id, at_ms)
        if contract is None:
            # A contract switched away from keeps its last period's monthly end: name that period, if one holds at_ms.
            ended = [k for k in self.contracts_of(customer_id) if k.starting_at_ms <= at_ms]
            last_periods = [(k, self._period_of(k, at_ms)[0]) for k in ended]
            hint = "".join(
                f"; the period from {iso(start)} of contract {k.id!r} holds it"
                for k, start in last_periods
                if k.ending_before_ms is not None and start < k.ending_before_ms
            )
            raise FailedPrecondition(
                f"no contract of customer {customer_id!r} is in force at {iso(at_ms)}: a period is read at an "
                f"instant its own contract is in force at (its start, say){hint}"
            )
        return contract

    def _rollovers(self, customer_id: str) -> dict[str, tuple[int, int]]:
        """The customer's grants that roll over (at the end of the billing period each starts in, unless it expires
        before then and simply breaks, or, granted before GrantCredits' `expiring_at_rollover_rolls`, expires
        exactly then: as the kernel's rollover_at), by id: (when, rollover fraction at 10^-18). A draft shows those
        due by its period's end as the clock will roll them (those already rolled keep what they rolled)."""
        due: dict[str, tuple[int, int]] = {}
        for grant in self.state.accounts[customer_id].grants:
            rolls_at_ms = self._rolls_over_at(grant)
            if rolls_at_ms is not None:
                due[grant.id] = (rolls_at_ms, int(grant.rollover_fraction.scaleb(18, context=DECIMAL_CONTEXT)))
        return due

    # Commands ----------------------------------------------------------------------------------------------

    def _close_period(self, c: cmd.ClosePeriod) -> Invoice:
        contract, number = self.closable(c.customer_id, c.period_start_ms, c.at_ms)
        if number is not None:
            raise Repeated(self.state.invoices[number])
        return self._finalise(contract, c.period_start_ms, c.at_ms, c)

    def closable(self, customer_id: str, period_start_ms: int, at_ms: int) -> tuple[Contract, str | None]:
        """The contract of the customer's period starting at period_start_ms, and the number of its invoice when it
        is closed; else ClosePeriod's refusals that need no invoice built (no such customer, no such period start, a
        period not ended by at_ms). The service asks before it builds the draft its size check needs (a refused
        close built a whole draft for nothing), the command again on the writer: commands queued ahead of it may
        have changed the state since."""
        if not customer_id:
            raise InvalidArgument.field("customer_id", "is required")
        self.customer(customer_id)
        contract = self._contract_at(customer_id, period_start_ms)
        start_ms, end_ms = self._period_of(contract, period_start_ms) if contract else (None, None)
        if contract is None or start_ms != period_start_ms:
            nearest = self._nearest_period_start(customer_id, period_start_ms)
            hint = f"; the nearest period start is {iso(nearest)}" if nearest is not None else "; it has no contract"
            raise InvalidArgument.field(
                "period_start", f"{iso(period_start_ms)} is no period start of customer {customer_id!r}{hint}"
            )
        assert end_ms is not None
        number = self.state.accounts[customer_id].invoices.get(start_ms)
        if number is None and end_ms > at_ms:
            raise FailedPrecondition(
                f"the period from {iso(start_ms)} has not ended: it ends at {iso(end_ms)}, and can be closed from then on"
            )
        return contract, number

    def _close_due_periods(self, c: cmd.CloseDuePeriods) -> list[Invoice]:
        """Closes every period that ended at least grace_ms before at_ms (at most periods_max of them), the
        earliest period end first, then by contract id."""
        ended_by_ms = c.at_ms - c.grace_ms
        closed: list[Invoice] = []
        # Each customer's grant credit, read once: closing a period changes the control plane only (invoice numbers,
        # closed periods), never the kernel's grants, so a second read in this command would answer the same.
        read: dict[str, GrantCredit] = {}
        while not c.periods_max or len(closed) < c.periods_max:
            earliest = self._earliest_open()
            if earliest is None or earliest[1] > ended_by_ms:
                break
            contract = earliest[0]
            period = self._first_open(contract)
            assert period is not None, "the heap's top has an open period"
            closed.append(self._finalise(contract, period[0], c.at_ms, c, read))
        if not closed:
            raise Repeated([])  # nothing to close: nothing changes, nothing is journaled
        return closed

    def next_period_end_ms(self) -> int:
        """The earliest end of a period not closed yet (2^62 when there is none): a driver closing periods by
        itself asks this each time it wakes, and it costs a look at the top of a heap, not a scan."""
        earliest = self._earliest_open()
        return earliest[1] if earliest is not None else 2**62

    def _earliest_open(self) -> tuple[Contract, int] | None:
        """The contract whose first unclosed period ends first, and that end (ties: the smaller contract id).

        A heap of (first open period end, contract id), built on first use: closing a period only moves a
        contract's first open end later, so an entry is checked when it reaches the top and pushed down again
        when it is stale; a new contract pushes its own. What it answers depends on the state only."""
        heap = self._due_heap
        if heap is None:
            heap = [(end, c.id) for c in self.state.contracts.values() if (end := self._first_open_end(c)) is not None]
            heapq.heapify(heap)
            self._due_heap = heap
        while heap:
            end_ms, contract_id = heap[0]
            contract = self.state.contracts[contract_id]
            actual = self._first_open_end(contract)
            if actual is None:
                heapq.heappop(heap)
            elif actual != end_ms:
                heapq.heapreplace(heap, (actual, contract_id))
            else:
                return contract, end_ms
        return None

    def _note_contract(self, contract: Contract) -> None:
        """A new contract's first period end may come before every other."""
        if self._due_heap is not None and (end := self._first_open_end(contract)) is not None:
            heapq.heappush(self._due_heap, (end, contract.id))

    def _first_open(self, contract: Contract) -> tuple[int, int] | None:
        """(start, end) of the contract's first period not closed (None once an ended contract's are all closed)."""
        invoices = self.state.accounts[contract.customer_id].invoices
        for period in self._periods(contract):
            if period[0] not in invoices:
                return period
        return None

    def _first_open_end(self, contract: Contract) -> int | None:
        period = self._first_open(contract)
        return period[1] if period is not None else None

    def _finalise(
        self,
        contract: Contract,
        start_ms: int,
        at_ms: int,
        close: cmd.ClosePeriod | cmd.CloseDuePeriods,
        read: dict[str, GrantCredit] | None = None,
    ) -> Invoice:
        """The final invoice of the contract's period starting at start_ms, built by the rules `close` (the
        record) carries: a close of an earlier release replays as it closed. `read`: the grant credit earlier closes
        of the same command read, by customer (a read is the customer's whole balance, tens of ms at 11,000 grants),
        kept there: closing a period changes the control plane only, never the kernel's grants."""
        customer_id = contract.customer_id
        rolled, expired = close.rolled_breakage_shown, close.expired_breakage_shown
        kept = read.get(customer_id) if read is not None else None
        # A close reads no grant about to roll over (the clock recorded what was due before the writer applies it).
        wanted = (NO_ROLLOVER_MS, expired) if (rolled or expired) and kept is None else None
        assert self.period_read is not None, "the engine reads invoice lines through the kernel (engine/billing.py)"
        found, adjustments, purchases, credit = self.period_read(
            customer_id, start_ms, close.parts_in_contract, None, wanted
        )
        assert found is not None, f"the kernel's tables name customer {customer_id!r}"
        period = found
        if credit is not None and read is not None:
            read[customer_id] = credit
        # The credit kept from an earlier close stands for one not read: where this period's grants would not have
        # wanted it, no grant of the period rolled over or expires by its end, and no grant balance looks it up.
        shown = (kept if kept is not None else credit or {}) if rolled or expired else None
        invoice = self._build(
            contract,
            period,
            top_up_purchases_minor(period[0], contract.currency, purchases),
            adjustments,
            close.rollovers_shown,
            close.adjustments_in_contract,
            grant_credit=shown if rolled else None,
            expired_credit=shown if expired else None,
            bought=bought_in(period[0], purchases) if close.spent_grants_left_out else None,
        )
        self.state.invoices_created += 1
        invoice.number = invoice_number(self.state.invoices_created)
        invoice.final = True
        invoice.closed_at_ms = at_ms
        if close.closed_in_journal_order:
            assert self.kernel_recorded is not None, "the engine counts the kernel's records through it (billing.py)"
            top_ups, breakage = self.kernel_recorded(contract.customer_id)
            contracts = len(self.contracts_of(contract.customer_id))
            invoice.recorded_before = RecordedBefore(self.state.grants_created, top_ups, breakage, contracts)
        self.state.invoices[invoice.number] = invoice
        account = self.state.accounts[contract.customer_id]
        # New dicts, not changed in place: an account without closed periods holds the shared empty ones
        # (engine/control.py new_account). A customer closes a period a month: the copies stay small.
        account.invoices = {**account.invoices, start_ms: invoice.number}
        account.closed_periods = {**account.closed_periods, start_ms: None}
        return invoice

    def _build(
        self,
        contract: Contract,
        period: KernelLines,
        top_ups_minor: int,
        adjustments: list[KernelAdjustment],
        rollovers_shown: bool = True,
        adjustments_in_contract: bool = True,
        rollovers_due: dict[str, tuple[int, int]] | None = None,
        grant_credit: GrantCredit | None = None,
        expired_credit: GrantCredit | None = None,
        bought: set[str] | None = None,
    ) -> Invoice:
        pricing_unit = self.state.rate_cards[contract.rate_card_id].pricing_unit
        dimensions = {r[0]: self.state.products[r[0]].pricing_dimensions for r in period[4]}
        return build_invoice(
            contract,
            pricing_unit,
            dimensions,
            period,
            top_ups_minor,
            adjustments,
            rollovers_shown=rollovers_shown,
            adjustments_in_contract=adjustments_in_contract,
            rollovers_due=rollovers_due,
            grant_credit=grant_credit,
            expired_credit=expired_credit,
            bought=bought,
        )

    # The period calendar ------------------------------------------------------------------------------------

    def _period_of(self, contract: Contract, ts_ms: int) -> tuple[int, int]:
        return period_containing(contract.starting_at_ms, ts_ms)

    def _periods(self, contract: Contract) -> Iterator[tuple[int, int]]:
        """The contract's periods, in order (endless for a contract without an end)."""
        start_ms = contract.starting_at_ms
        while contract.ending_before_ms is None or start_ms < contract.ending_before_ms:
            period = self._period_of(contract, start_ms)
            yield period
            start_ms = period[1]

    def _nearest_period_start(self, customer_id: str, ts_ms: int) -> int | None:
        """The start of any of the customer's periods nearest ts_ms (the earlier of two as near). Per contract: its
        start when ts_ms precedes it; else the start of the calendar period holding ts_ms and the next one, each
        when it starts before the contract's end, or, past its last period, that last period's start."""
        candidates = []
        for contract in self.contracts_of(customer_id):
            end_ms = contract.ending_before_ms
            if ts_ms < contract.starting_at_ms:
                candidates.append(contract.starting_at_ms)
                continue
            start, following = self._period_of(contract, ts_ms)
            if end_ms is not None and start >= end_ms:
                candidates.append(self._period_of(contract, end_ms - 1)[0])
                continue
            candidates += [start] + ([following] if end_ms is None or following < end_ms else [])
        return min(candidates, key=lambda s: (abs(s - ts_ms), s), default=None)
