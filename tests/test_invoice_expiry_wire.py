"""A grant that expires (no rollover) after a contract switch, drawn on by the next contract's usage before its
expiry, on the invoices of a real server: the old contract's draft and final invoice show it as GetBalance does
(drawn what that usage drew, expired what broke), and revenue recognition counts the same draw and breakage. The
expiry and the period's end are a few seconds after the test starts, so the server's own clock breaks the grant."""

from __future__ import annotations

from tariff.v1 import invoices_pb2, usage_pb2

from tests.serverproc import ServerFactory, wait_for
from tests.test_audit_invoices_wire import catalogue, close, preview, start_server
from tests.test_audit_revenue_wire import customer_lines, revenue, totals
from tests.test_invoice_rollover_wire import contract_ending_its_period_soon

DAY_MS = 24 * 3_600_000


def test_next_contracts_usage_drawn_before_the_expiry_is_drawn_not_expired(server_factory: ServerFactory) -> None:
    """`roll` switches from roll-c to roll-next a day before roll-c's period ends (that period keeps its monthly
    end). r (90 credits paid 45, 0.5 a credit, from roll-c's start, no rollover) expires at that end. 75 credits of
    roll-next's usage, dated after the switch and before the expiry, draw on r, so 15 are left when the server's
    clock passes the expiry: they break. roll-c's draft and final invoice show r as GetBalance does: drawn 75,
    expired 15 (not drawn 0 and the 90 expired); roll-next's draft alike. Revenue over both periods: r is sold in
    roll-c's (45 deferred on its line); the 75 drawn (37.5) and the 15 broken (7.5) count on roll-next's line, the
    period its usage and r's last usable instant fall in: 0 + 45 - 37.5 - 7.5 = 0 deferred at the end."""
    client = start_server(server_factory, "expiry-switch-invoice")
    catalogue(client)
    start_ms, end_ms = contract_ending_its_period_soon(client, switch_before_end_ms=DAY_MS, expiring=True)
    switch_ms = end_ms - DAY_MS
    event = usage_pb2.UsageEvent(
        transaction_id="t1",
        customer_id="roll",
        event_type="unit",
        timestamp_ms=switch_ms + 1000,
        dimensions={"k": "a"},
        values={"n": 75_000},
    )  # 75 credits at 1 per 1,000 units
    assert client.ingest_batch([event], "b1").accepted == 1
    following = preview(client, "roll", switch_ms)
    [line] = following.lines
    assert [(c.grant_id, c.credits) for c in line.credits_applied] == [("r", "75")]  # roll-next's line, paid by r
    shown = {"r": ("90", "75", "0", "15")}
    assert {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in following.grant_balances} == shown
    draft = preview(client, "roll", start_ms)
    assert draft.contract_id == "roll-c"
    assert {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in draft.grant_balances} == shown
    # The server's clock records the breakage a moment after the expiry.
    assert wait_for(lambda: revenue(client, start_ms, end_ms, "roll").reconciliation.breakage == "7.5", 30)
    final = close(client, "roll", start_ms)
    assert final.status == invoices_pb2.INVOICE_FINAL
    assert {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in final.grant_balances} == shown
    [grant] = [g for g in client.get_balance("roll").grants if g.grant_id == "r"]
    assert (grant.drawn, grant.remaining, grant.expired) == ("75", "0", "15")  # the invoice and the balance agree
    report = revenue(client, start_ms, end_ms, "roll")
    assert customer_lines(report) == [(start_ms, "0", "0", "0", "45"), (switch_ms, "37.5", "0", "7.5", "0")]
    assert totals(report) == ("0", "45", "37.5", "7.5", "0", "0", True)
