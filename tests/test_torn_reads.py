"""Reads that see one customer through the kernel while the writer changes it between kernel calls (the kernel
locks per call; the writer's thread rates batches between any two calls of a read on the event loop). Each test
applies the change deterministically between the read's kernel calls of that customer, then checks that the
answer is internally consistent: all of it from before the change, or all of it from after."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

from engine import commands as cmd
from engine import revenue
from engine._kernel import Kernel
from engine.invoices import Invoice
from engine.lines import line_id
from engine.tables_paced import run_steps
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, basic_world, rate, unit
from tests.test_invoices_engine import FEB_1_MS, tokens, world

DAY_MS = 86_400_000
T0 = EPOCH_MS + 3_600_000
FEB_MS = EPOCH_MS + 31 * DAY_MS


class Interleaved:
    """The kernel, but the first call of one of `reads` for `customer_id` runs `between` right after it answers:
    the writer's change landing between that call and the read's next one."""

    def __init__(self, kernel: Kernel, reads: set[str], customer_id: str, between: Callable[[], object]) -> None:
        self._kernel, self._reads, self._customer_id, self._between = kernel, reads, customer_id, between
        self.fired = False

    def __getattr__(self, name: str) -> Any:
        found = getattr(self._kernel, name)
        if name not in self._reads:
            return found

        def read(*args: Any, **kwargs: Any) -> Any:
            answer = found(*args, **kwargs)
            if not self.fired and args and args[0] == self._customer_id:
                self.fired = True
                self._between()
            return answer

        return read


def topping_up() -> Ledger:
    """acme: grant g of 100 credits paid 100; a top-up policy buying up to 60 at 1 each (once a period) when
    available falls under 50; 30 credits used in January."""
    world = basic_world()
    world.grant("g", "100", paid="100")
    m = Ledger(world)
    m.run(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", "50", "60", "1", 1))
    m.ingest([event("t1", T0, 30)], T0)
    return m


def report(m: Ledger, at_ms: int) -> revenue.Report:
    return run_steps(m.billing.revenue_report_steps(EPOCH_MS, FEB_MS, "acme", at_ms))


def test_a_revenue_report_reads_a_customers_usage_and_credits_as_of_one_instant() -> None:
    # The batch rated between the report's reads: 30 more (g 70 -> 40, under 50: a top-up of 20 credits for 20),
    # then 45 (g 40 -> 0, the top-up 20 -> 15). Before it: recognised 30 of g; after: 100 of g and 5 of the top-up.
    m = topping_up()
    at_ms = T0 + 10
    before = report(m, at_ms)
    assert (before.totals.recognized_credits, before.totals.prepaid_sold) == (30 * 10**12, 100 * 10**12)

    def batch() -> None:
        m.billing.kernel = kernel
        m.ingest([event("t2", T0 + 1, 30), event("t3", T0 + 2, 45)], T0 + 2)
        m.billing.kernel = cast(Kernel, interleaved)

    kernel = m.billing.kernel
    interleaved = Interleaved(kernel, {"usage", "credits_read", "revenue_read"}, "acme", batch)
    m.billing.kernel = cast(Kernel, interleaved)
    torn = report(m, at_ms)
    m.billing.kernel = kernel
    assert interleaved.fired
    after = report(m, at_ms)
    assert (after.totals.recognized_credits, after.totals.prepaid_sold) == (105 * 10**12, 120 * 10**12)
    assert torn.totals.reconciles
    assert torn in (before, after), f"{torn.totals} is neither {before.totals} nor {after.totals}"


def test_an_explained_line_and_its_adjustments_are_read_as_of_one_instant() -> None:
    # gpt4 at 2 a token: 2 tokens in hour 1, a line of 4. The publish landing between the reads prices gpt4 at 3
    # from the epoch: the line is 6, with one adjustment 4 -> 6. Torn, the old line of 4 came beside the new
    # adjustment, and the pages (events of 4 and a delta of 2) summed to 6, not to the line amount they name.
    w = world([(EPOCH_MS, "2", "1")])
    w.grant("prepaid", "100")
    assert w.usage([tokens("t1", EPOCH_MS + HOUR_MS, 2)]).accepted == 1
    gpt4 = line_id("tokens", {"model": "gpt4"})
    before = w.billing.explain_line("acme", EPOCH_MS, gpt4)
    assert (before[0].amount_picos, before[1]) == (4 * 10**12, [])
    v2 = w.draft([rate("tokens", unit("3"), model="gpt4"), rate("tokens", unit("1"), model="claude")])

    def publish() -> None:
        w.billing.kernel = kernel
        w.publish(v2.number, effective_from_ms=EPOCH_MS, at_ms=FEB_1_MS)
        w.billing.kernel = cast(Kernel, interleaved)

    kernel = w.billing.kernel
    interleaved = Interleaved(kernel, {"usage", "adjustments", "usage_adjusted"}, "acme", publish)
    w.billing.kernel = cast(Kernel, interleaved)
    torn = w.billing.explain_line("acme", EPOCH_MS, gpt4)
    w.billing.kernel = kernel
    assert interleaved.fired
    after = w.billing.explain_line("acme", EPOCH_MS, gpt4)
    assert (after[0].amount_picos, [a.new_amount_picos for a in after[1]]) == (6 * 10**12, [6 * 10**12])
    assert torn in (before, after), f"line {torn[0].amount_picos} beside adjustments {torn[1]}"


def test_a_preview_reads_its_lines_and_adjustments_as_of_one_instant() -> None:
    # As above, on the invoice: the line of 4 re-rated to 6 by the publish landing between the preview's reads.
    # Torn, the line of 4 listed the adjustment 4 -> 6 (its amount less its adjustments' deltas: 2, the line before
    # it was re-rated being 4).
    w = world([(EPOCH_MS, "2", "1")])
    w.grant("prepaid", "100")
    assert w.usage([tokens("t1", EPOCH_MS + HOUR_MS, 2)]).accepted == 1
    before = w.engine.preview("acme", EPOCH_MS, EPOCH_MS + 2 * HOUR_MS)
    assert [(line.amount_picos, line.adjustments) for line in before.lines] == [(4 * 10**12, [])]
    v2 = w.draft([rate("tokens", unit("3"), model="gpt4"), rate("tokens", unit("1"), model="claude")])

    def publish() -> None:
        w.billing.kernel = kernel
        w.publish(v2.number, effective_from_ms=EPOCH_MS, at_ms=FEB_1_MS)
        w.billing.kernel = cast(Kernel, interleaved)

    kernel = w.billing.kernel
    interleaved = Interleaved(kernel, {"adjustments", "invoice_read"}, "acme", publish)
    w.billing.kernel = cast(Kernel, interleaved)
    torn = w.engine.preview("acme", EPOCH_MS, EPOCH_MS + 2 * HOUR_MS)
    w.billing.kernel = kernel
    assert interleaved.fired
    after = w.engine.preview("acme", EPOCH_MS, EPOCH_MS + 2 * HOUR_MS)
    assert [line.amount_picos for line in after.lines] == [6 * 10**12]
    assert torn in (before, after), f"lines {[(line.amount_picos, line.adjustments) for line in torn.lines]}"


def test_a_preview_reads_its_lines_and_grant_credit_as_of_one_instant() -> None:
    # gpt4 at 1 a token; grant e of 100 expires at the period's end (February 1), so the draft reads its credit.
    # 30 tokens on January 2: e shows drawn 30, expired 70 (what it still has breaks at its expiry). The batch
    # landing between the preview's reads draws 20 more: drawn 50, expired 50, one line of 50. Torn, the line of 30
    # came beside e's credit after the batch (50 left): drawn 50 by a line of 30.
    w = world([(EPOCH_MS, "1", "1")])
    w.grant("e", "100", expires_at_ms=FEB_1_MS)
    sent_ms = EPOCH_MS + 10 * DAY_MS
    assert w.usage([tokens("t1", EPOCH_MS + DAY_MS, 30)], received_ms=sent_ms).accepted == 1
    read_ms = sent_ms + 1
    credits = 10**12

    def shown(invoice: Invoice) -> tuple[list[int], list[tuple[int, int]]]:
        return (
            [line.amount_picos for line in invoice.lines],
            [(g.drawn_picos, g.expired_picos) for g in invoice.grant_balances],
        )

    before = w.engine.preview("acme", EPOCH_MS, read_ms)
    assert shown(before) == ([30 * credits], [(30 * credits, 70 * credits)])

    def batch() -> None:
        w.billing.kernel = kernel
        assert w.usage([tokens("t2", EPOCH_MS + DAY_MS + 1, 20)], received_ms=sent_ms).accepted == 1
        w.billing.kernel = cast(Kernel, interleaved)

    kernel = w.billing.kernel
    interleaved = Interleaved(kernel, {"invoice_read", "credits_read", "balance", "breakage"}, "acme", batch)
    w.billing.kernel = cast(Kernel, interleaved)
    torn = w.engine.preview("acme", EPOCH_MS, read_ms)
    w.billing.kernel = kernel
    assert interleaved.fired
    after = w.engine.preview("acme", EPOCH_MS, read_ms)
    assert shown(after) == ([50 * credits], [(50 * credits, 50 * credits)])
    assert torn in (before, after), f"lines and grants (drawn, expired) {shown(torn)}"
