"""README "Rollover" and "Expiry and breakage" together, over the wire: credit a late refund (a lower LATEST reading
dated before a grant's rollover, arriving after it) gives back to the rolled-over grant breaks with the event, as it
does for an expired grant; GetBalance, the invoice and the revenue report agree, also after kill -9. Catalogue and
helpers: tests/test_audit_credits_combo_wire.py."""

from __future__ import annotations

import pytest
from tariff import now_ms
from tariff.v1 import invoices_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory, wait_for
from tests.test_audit_credits_combo_wire import (
    balances,
    customer,
    gauge,
    grant,
    grants,
    lines,
    money,
    month_before,
    preview,
    revenue,
    start,
    use,
)


@pytest.mark.parametrize("snapshot_every", ["5000", "1"])
def test_credit_a_late_refund_gives_back_to_a_grant_that_rolled_over_breaks_with_it(
    server_factory: ServerFactory, snapshot_every: str
) -> None:
    """README "Rollover": the rollover "is final: the original grant then holds nothing"; "Expiry and breakage":
    credit an event gives back to a grant whose breakage is recorded (a lower LATEST reading refunding what it paid)
    breaks with that event. A contract anchored so that P1 ends at T, a few seconds from now. gR 10 paid 5 (0.5 a
    credit), priority 1, rolling over half; gB 10 paid 10, priority 2.

    Before T: gauge 6: lvl 6 from gR (4 left). At T: floor(0.5 x 4) = 2 into the ROLLOVER grant, 2 broken.
    After T, a late reading dated T - 1 ms (P1, still open): gauge 2, lvl -4, no overage to give back, so 4 back to
    gR, which rolled over: they break with the event. gR: drawn 6 - 4 + 2 rolled = 4, remaining 0,
    expired 6; nothing usable grew (12: the ROLLOVER grant's 2 and gB's 10).
    P1's invoice: lvl 2 = gR 2; gR (10, 4, 0, 6). Revenue P1: sold 5 + 10 = 15, recognised 2 x 0.5 = 1, breakage
    6 x 0.5 = 3, deferred 15 - 1 - 3 = 11 (gB 10, the rolled 2 x 0.5); the same after kill -9 (with a snapshot
    after every record too), and the P1 invoice closed equals its draft. (Before the fix the 4 stayed in gR as remaining credit that nothing could use or break,
    its 2 USD deferred for ever.)"""
    server = start(server_factory, f"rolled-refund-{snapshot_every}", "--snapshot-every", snapshot_every)
    c = "late"
    with server.client() as client:
        end_ms = now_ms() + 5_000
        p1 = month_before(end_ms)
        customer(client, c, starting_ms=p1)
        grant(client, c, "gR", "10", "5", 1, rollover_fraction="0.5")
        grant(client, c, "gB", "10", "10", 2)
        use(client, gauge(f"{c}-g1", c, 6, now_ms()))
        assert now_ms() < end_ms - 1, "the setup took longer than the period: nothing here was tested"
        roll = f"rollover-{c}.gR-{end_ms}"
        assert wait_for(lambda: roll in grants(client.get_balance(c), c), 30), client.get_balance(c)
        use(client, gauge(f"{c}-g2", c, 2, end_ms - 1))
    for restarted in (False, True):
        if restarted:
            server.kill9()
            server.restart()
        with server.client() as client:
            balance = client.get_balance(c)
            assert grants(balance, c) == {
                "gR": ("10", "4", "0", "0", "6"),
                "gB": ("10", "0", "10", "0", "0"),
                roll: ("2", "0", "2", "0", "0"),
            }, balance
            assert money(balance.credits_remaining, balance.credits_available) == money("12", "12")
            draft = preview(client, c, p1)
            assert lines(draft, c) == {"lvl": ("2", "2", "0", {"gR": "2"}, "0.00")}
            assert balances(draft, c) == {"gR": ("10", "4", "0", "6"), "gB": ("10", "0", "10", "0")}
            report = revenue(client, c, p1, end_ms)
            assert [
                (line.period_start.ToMilliseconds(), *money(line.recognized_credits, line.breakage, line.deferred))
                for line in report.customer_lines
            ] == [(p1, *money("1", "3", "11"))]
            assert report.reconciliation.reconciles
    with server.client() as client:
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=c, period_start=stamp(p1)))
        for name in ("invoice_number", "status", "closed_at"):
            final.ClearField(name)
            draft.ClearField(name)
        assert final == draft
