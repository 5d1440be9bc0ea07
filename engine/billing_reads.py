"""Billing's reads beside the writer: Authorize's estimate and AuthorizeBatches, the period reads invoices draw on,
GetRevenueReport, ExplainLineItem and SimulateVersion. Each reads the kernel in one call (one lock), so a batch rated
or a customer re-rated on the writer's thread between two calls cannot mix two states.

A base of `engine.billing.Billing`, which holds the engine, the kernel and the tables these read; apart only so
that each file reads in one sitting. Sans-I/O like the rest of engine/.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from engine import explain, revenue
from engine.errors import NotFound
from engine.explain import Line
from engine.instants import iso
from engine.invoices import CreditWanted, KernelAdjustment, LineAdjustment, PeriodRead
from engine.ledger import GrantKind
from engine.ratecard import HOUR_MS
from engine.rerate import Simulation, simulate

if TYPE_CHECKING:
    from engine._kernel import HoldingBatch, Kernel
    from engine.state import Engine


@dataclass(frozen=True, slots=True)
class Estimate:
    allowed: bool
    reason: str
    message: str
    cost: int
    available: int


class BillingReads:
    # Billing's state these read (set in Billing.__init__).
    engine: Engine
    kernel: Kernel

    if TYPE_CHECKING:  # Billing's own

        def refresh_tables(self, *, whole: bool = False) -> None: ...

    def _period_read(
        self, customer_id: str, at_ms: int, in_contract: bool, read_ms: int | None, credit: CreditWanted | None
    ) -> PeriodRead:
        """The kernel's invoice lines of a period (engine/invoicing.py reads them through this), the customer's
        re-rating adjustments and top-up purchases and, when `credit` wants it for the period's grants, its grant
        credit, in one kernel call (one lock): a draft's read, off the writer, which may rate a batch or re-rate the
        customer between two calls, and a close's alike. `in_contract`: the version parts count the hours before
        the contract's end only; `read_ms`: a draft read then sees what fell due by then as the clock's record
        will leave it (Kernel.account_read). The credit by grant id: (what the grant still has, its remainder
        and what open reservations hold on it; the breakage recorded from it), as the lines' account holds them
        (`read_ms`: as the clock's record of what fell due by then will leave them). Invoices show a rolled-over or
        expired grant's breakage so (engine/invoices.py)."""
        self.refresh_tables()
        period, adjustments, purchases, rows = self.kernel.invoice_read(
            customer_id, at_ms, in_contract, read_ms, credit
        )
        # A grant id held twice keeps its last grant's, as a dict built in burn order does.
        by_id = None if rows is None else {grant_id: (has, broken) for grant_id, has, broken in rows}
        return period, adjustments, purchases, by_id

    def _kernel_recorded(self, customer_id: str) -> tuple[int, int]:
        """How many TOP_UP grants the kernel has made for a customer and breakage entries it has recorded (each list
        in the order recorded): a close keeps them, so revenue tells what came after it in journal order."""
        top_ups = sum(1 for made in self.kernel.made_grants(customer_id) if made[1] == GrantKind.TOP_UP)
        return top_ups, len(self.kernel.breakage(customer_id))

    def _hours_recorded(self, customer_id: str, product_id: str | None = None) -> list[int]:
        """The first instants (Unix ms) of the hours in which the kernel holds usage of the customer (its hour
        buckets), of one product if given: EndContract and ExpireGrant refuse a change before usage already
        recorded, EndOverride before usage of its product."""
        found = self.kernel.usage(customer_id)
        if found is None:
            return []
        buckets = found[1]
        return sorted({hour * HOUR_MS for hour, product, _d, _u in buckets if product_id in (None, product)})

    def _adjustments(self, customer_id: str) -> list[KernelAdjustment]:
        """The kernel's re-rating adjustments of a customer, oldest first (invoice lines show them)."""
        return self.kernel.adjustments(customer_id)

    def estimate(
        self, customer_id: str, event_type: str, dimensions: dict[str, str], values: dict[str, float], now_ms: int
    ) -> Estimate:
        """Authorize: the kernel prices the usage exactly as ingesting it now would, and decides."""
        self.refresh_tables()
        allowed, reason, message, cost, available = self.kernel.authorize(
            customer_id, event_type, list(dimensions.items()), list(values.items()), now_ms
        )
        return Estimate(allowed, reason, message, cost, available)

    def authorize_batch(
        self,
        batch: bytes,
        now_ms: int,
        requests_max: int,
        allowed: list[str] | None,
        ttl_max_ms: int,
        id_seed: bytes,
        message_number: int,
    ) -> tuple[bytes | HoldingBatch, int]:
        """AuthorizeBatches on raw bytes, and how many decisions the message holds: the AuthorizeBatchResult bytes
        the kernel encodes for an AuthorizeBatch's bytes, each request priced as `estimate` prices it; or, when
        requests ask for holds, a HoldingBatch whose `requests` the writer applies as one ReserveBatch command
        (engine/credits.py) and whose `finish` then gives the result. Raises the kernel's refusals of a whole
        message (BatchNotDecodable naming the request and field prost refused, CustomerNotAllowed, BatchTooLarge,
        RequestIdMissing, RequestIdTooLong), having decided nothing."""
        self.refresh_tables()
        return self.kernel.authorize_batch_holding(
            batch, now_ms, requests_max, allowed, ttl_max_ms, id_seed, message_number
        )

    def revenue_report_steps(
        self, start_ms: int | None, end_ms: int | None, customer_id: str, at_ms: int
    ) -> Generator[None, None, revenue.Report]:
        """GetRevenueReport's steps (engine/revenue.py report_steps) over the kernel's usage and credits: the grants
        made and the breakage as at at_ms, a rollover or expiry that fell due and that the clock has not recorded
        yet counting as it will be recorded, as GetBalance shows it."""
        kernel = self.kernel

        def read_of(customer_id: str) -> revenue.CustomerRead:
            # One kernel call (one lock): the writer's thread may rate a batch of the customer between two.
            aggregates, made, breakage = kernel.revenue_read(customer_id, at_ms)
            return aggregates, revenue.KernelCredits(made, breakage)

        return revenue.report_steps(self.engine, read_of, start_ms, end_ms, customer_id)

    def explain_line(self, customer_id: str, period_start_ms: int, line_id: str) -> tuple[Line, list[LineAdjustment]]:
        """ExplainLineItem's line of a period and its re-rating adjustments (engine/explain.py); NotFound when the
        line has no usage in the period. One kernel call (one lock): a re-rating slice applied between a read of the
        line and one of the adjustments would set the new adjustments beside the old amount, which the pages (the
        line's events and the adjustments' deltas) do not sum to."""
        usage, adjustments = self.kernel.usage_adjusted(customer_id)
        lines = explain.period_lines(self.engine, usage, period_start_ms)
        line = lines.get(line_id)
        if line is None:
            raise NotFound(
                f"line {line_id!r} has no usage in the period of customer {customer_id!r} starting "
                f"{iso(period_start_ms)}"
            )
        return line, explain.line_adjustments(self.engine, customer_id, period_start_ms, line, adjustments)

    def simulate(
        self, rate_card_id: str, version: int, start_ms: int, end_ms: int, customer_ids: list[str]
    ) -> Simulation:
        """SimulateVersion: the recorded usage priced again with one version; changes nothing."""
        self.refresh_tables()
        return simulate(self.engine.state, self.kernel, rate_card_id, version, start_ms, end_ms, customer_ids)
