"""ExplainLineItem reads one line's re-rating adjustments without building the period's invoice
(engine/explain.py, `line_adjustments`): for every line of a re-rated January and February, the same adjustments
in the same order as the preview's line, and once January is closed, as its final invoice's line; periods are
recognised by the kernel's calendar (`is_period_start`)."""

from __future__ import annotations

from engine import explain
from tests.engine_fixtures import DAY_MS, EPOCH_MS, HOUR_MS, rate, unit
from tests.test_invoices_engine import FEB_1_MS, BillingWorld, tokens, world


def _rerated_world() -> BillingWorld:
    w = world([(EPOCH_MS, "2", "1")])
    w.grant("prepaid", "100")
    january = [tokens("t1", EPOCH_MS + HOUR_MS, 2), tokens("t2", EPOCH_MS + 6 * HOUR_MS, 2)]
    assert w.usage([*january, tokens("t3", EPOCH_MS + 7 * HOUR_MS, 1.5, "claude")]).accepted == 3
    assert w.usage([tokens("t4", FEB_1_MS + HOUR_MS, 1)], received_ms=FEB_1_MS + 2 * HOUR_MS).accepted == 1
    for effective_from_ms, gpt4 in ((EPOCH_MS + 5 * HOUR_MS, "3"), (EPOCH_MS, "2.5")):
        draft = w.draft([rate("tokens", unit(gpt4), model="gpt4"), rate("tokens", unit("1"), model="claude")])
        w.publish(draft.number, effective_from_ms=effective_from_ms, at_ms=FEB_1_MS + 3 * HOUR_MS)
    return w


def _by_line(w: BillingWorld, period_start_ms: int) -> dict[str, list[object]]:
    lines = explain.period_lines(w.engine, w.billing.kernel.usage("acme"), period_start_ms)
    return {
        line_id: list(explain.line_adjustments(w.engine, "acme", period_start_ms, line))
        for line_id, line in lines.items()
    }


def test_one_lines_adjustments_are_the_invoice_lines_draft_and_final() -> None:
    w = _rerated_world()
    for period_start_ms in (EPOCH_MS, FEB_1_MS):
        preview = w.engine.preview("acme", period_start_ms)
        assert _by_line(w, period_start_ms) == {line.line_id: list(line.adjustments) for line in preview.lines}
    assert sum(len(adjustments) for adjustments in _by_line(w, EPOCH_MS).values()) == 3  # not all empty
    final = w.close(at_ms=FEB_1_MS + DAY_MS)
    assert _by_line(w, EPOCH_MS) == {line.line_id: list(line.adjustments) for line in final.lines}
    assert explain.is_period_start(w.engine, "acme", FEB_1_MS)
    assert not explain.is_period_start(w.engine, "acme", FEB_1_MS + HOUR_MS)
    assert explain.period_starting(w.engine, "acme", EPOCH_MS) == (EPOCH_MS, FEB_1_MS)
