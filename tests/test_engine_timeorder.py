"""Which came first, when the recorded times disagree with journal order (engine/revenue.py).

The server's time is its wall clock, journaled with each record: set back (an NTP step, a restart with an earlier
clock), a record later in the journal carries an earlier time than one before it. A closed period's revenue is
final (README, revenue report), so whether a grant was made, or its breakage recorded, after a period was closed is
a question of journal order, not of the times the two records carry.
"""

from __future__ import annotations

import msgspec

from engine import commands as cmd
from engine import revenue
from engine.contracts import OveragePolicy
from engine.invoices import RecordedBefore
from server.closer import close_due_slice
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, basic_world, picos

DAY_MS = 86_400_000
FEB_MS = EPOCH_MS + 31 * DAY_MS
MAR_MS = FEB_MS + 28 * DAY_MS
APR_MS = MAR_MS + 31 * DAY_MS


def report(m: Ledger, start_ms: int, end_ms: int) -> revenue.Report:
    kernel = m.billing.kernel
    usage = kernel.usage("acme")
    aggregates = usage[0] if usage is not None else []
    credits = revenue.KernelCredits(kernel.made_grants("acme"), kernel.breakage("acme"))
    return revenue.report(m.billing.engine, lambda c: aggregates, start_ms, end_ms, "", lambda c: credits)


def close_january(m: Ledger, at_ms: int) -> None:
    """ClosePeriod of January as the server journals it (its server-set rules set)."""
    m.run(cmd.ClosePeriod(at_ms, ACTOR, "acme", EPOCH_MS, closed_in_journal_order=True))


def deferred_by_period(m: Ledger) -> tuple[int | None, ...]:
    return tuple(line.deferred for line in report(m, EPOCH_MS, APR_MS).by_customer)


def test_a_grant_made_after_the_close_with_the_clock_set_back_is_not_sold_in_the_closed_period() -> None:
    # January closed at Feb 11; then the clock is set back and a grant starting Jan 1 (paid 40) is made at Feb 6.
    # It was made after the close (journal order), so January's revenue, final, does not take it: it is sold in
    # February, the first period still open. Before, closed_at (Feb 11) >= created_at (Feb 6) sold it in January.
    world = basic_world()
    m = Ledger(world)
    close_january(m, FEB_MS + 10 * DAY_MS)
    january_at_close = report(m, EPOCH_MS, FEB_MS).by_customer[0]
    m.run(world.grant_command("g", "100", paid="40", starts_at_ms=EPOCH_MS, at_ms=FEB_MS + 5 * DAY_MS))
    assert report(m, EPOCH_MS, FEB_MS).by_customer[0] == january_at_close
    assert deferred_by_period(m) == (0, picos("40"), picos("40"))
    whole = report(m, EPOCH_MS, APR_MS).totals
    assert (whole.prepaid_sold, whole.deferred_end, whole.reconciles) == (picos("40"), picos("40"), True)
    assert report(m, EPOCH_MS, FEB_MS).totals.prepaid_sold == 0
    assert m.replayed().engine.state.invoices == m.billing.engine.state.invoices  # replay closes the same


def test_a_grant_made_before_the_close_with_the_clock_set_back_stays_sold_in_the_period_it_closed() -> None:
    # A grant starting Jan 1 (paid 40) made at Feb 11, January still open: sold in January. The clock is set back and
    # January closed at Feb 6: the close does not move the sale out of the line it made final. Before, closed_at
    # (Feb 6) < created_at (Feb 11) moved it to February at the close.
    world = basic_world()
    m = Ledger(world)
    m.run(world.grant_command("g", "100", paid="40", starts_at_ms=EPOCH_MS, at_ms=FEB_MS + 10 * DAY_MS))
    before_close = deferred_by_period(m)
    assert before_close == (picos("40"), picos("40"), picos("40"))
    close_january(m, FEB_MS + 5 * DAY_MS)
    assert deferred_by_period(m) == before_close


def test_a_close_recorded_before_journal_order_decided_replays_as_it_did() -> None:
    # A ClosePeriod without closed_in_journal_order (every record before it) compares the recorded times, as then.
    world = basic_world()
    m = Ledger(world)
    m.run(cmd.ClosePeriod(FEB_MS + 10 * DAY_MS, ACTOR, "acme", EPOCH_MS))
    m.run(world.grant_command("g", "100", paid="40", starts_at_ms=EPOCH_MS, at_ms=FEB_MS + 5 * DAY_MS))
    assert deferred_by_period(m) == (picos("40"), picos("40"), picos("40"))


MINUTE_MS = 60_000


def test_breakage_recorded_after_the_close_with_the_clock_set_back_is_not_in_the_closed_period() -> None:
    # January and February closed at Mar 5 00:10 (the clock last recorded Mar 5 00:00). The clock is set back ten
    # minutes; a grant of 100 credits paid 40, starting Jan 1 and expired on Feb 20, is made at 00:02 and the clock
    # records its expiry at 00:05: 40 of breakage in February, the period of its last usable instant, which was
    # closed before both. The grant is sold in March, the first period still open, and its breakage counts there
    # too: February's revenue, final, does not change. Before, closed_at (00:10) >= the breakage's at_ms (00:05) put
    # the breakage in February, whose line then broke 40 never sold in it.
    world = basic_world()
    m = Ledger(world)
    m.advance(MAR_MS + 4 * DAY_MS)
    close_at = MAR_MS + 4 * DAY_MS + 10 * MINUTE_MS
    close_january(m, close_at)
    m.run(cmd.ClosePeriod(close_at, ACTOR, "acme", FEB_MS, closed_in_journal_order=True))
    closed = report(m, EPOCH_MS, MAR_MS).by_customer
    expired_at = FEB_MS + 19 * DAY_MS
    made = world.grant_command("g", "100", paid="40", expires_at_ms=expired_at, at_ms=close_at - 8 * MINUTE_MS)
    m.run(made)
    m.advance(close_at - 5 * MINUTE_MS)
    assert [(b[1], b[2], b[3]) for b in m.billing.kernel.breakage("acme")] == [("g", FEB_MS, picos("100"))]
    assert report(m, EPOCH_MS, MAR_MS).by_customer == closed
    [march] = report(m, MAR_MS, APR_MS).by_customer
    assert (march.breakage, march.deferred) == (picos("40"), 0)


def test_breakage_recorded_before_the_close_with_the_clock_set_back_stays_in_the_period_it_closed() -> None:
    # A grant of 100 credits paid 40 from Jan 1, expired on Feb 20: the clock records its expiry at Mar 5 (40 of
    # breakage in February, still open). The clock is set back a day and February closed at Mar 4: its line keeps the
    # breakage. Before, closed_at (Mar 4) < the breakage's at_ms (Mar 5) moved it to March at the close.
    world = basic_world()
    m = Ledger(world)
    m.run(world.grant_command("g", "100", paid="40", expires_at_ms=FEB_MS + 19 * DAY_MS))
    m.advance(MAR_MS + 4 * DAY_MS)
    before_close = [(line.breakage, line.deferred) for line in report(m, EPOCH_MS, APR_MS).by_customer]
    assert before_close == [(0, picos("40")), (picos("40"), 0), (0, 0)]
    m.run(cmd.ClosePeriod(MAR_MS + 3 * DAY_MS, ACTOR, "acme", FEB_MS, closed_in_journal_order=True))
    assert [(line.breakage, line.deferred) for line in report(m, EPOCH_MS, APR_MS).by_customer] == before_close


def test_the_servers_periodic_close_records_its_closes_in_journal_order() -> None:
    # The driver's and the CloseDuePeriods RPC's command (the ClosePeriod RPC's is checked over the wire,
    # tests/test_audit_timeorder_wire.py); the rule is the server's, not in the audit log.
    assert close_due_slice(0, ACTOR, 0).closed_in_journal_order
    m = Ledger(basic_world())
    m.run(close_due_slice(MAR_MS, ACTOR, 0))
    closes = [e for e in m.billing.engine.state.audit if e.action == "CloseDuePeriods"]
    assert closes and all("closed_in_journal_order" not in entry.diff for entry in closes)


def test_a_top_up_bought_before_the_close_with_the_clock_set_back_stays_sold_in_the_period_it_closed() -> None:
    # Grant g: 10 credits paid 10 from Jan 1 (1 a credit); a top-up policy recharging to 10 below 5, at 0.5 a credit.
    # An event of Feb 28 (6 units) received at Mar 1 00:05 leaves 4: the server buys 6 credits for 3, in February
    # (the period whose invoice bills it). February's line: 6 recognised, 3 sold, deferred 10 - 6 + 3 = 7. The clock is
    # set back and February closed at Mar 1 00:02: its line keeps the sale. Before, closed_at (00:02) < the
    # purchase's at_ms (00:05) moved the sale to March at the close, while February's invoice bills it.
    world = basic_world()
    world.grant("g", "10", paid="10")
    m = Ledger(world)
    m.run(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", "5", "10", "0.5", 1))
    m.ingest([event("t1", MAR_MS - DAY_MS, 6)], MAR_MS + 5 * MINUTE_MS, top_ups_in_billed_period=True)
    assert [(p[0], p[2]) for p in m.billing.kernel.top_up_purchases("acme")] == [(FEB_MS, picos("6"))]
    before_close = deferred_by_period(m)
    assert before_close == (picos("10"), picos("7"), picos("7"))
    m.run(cmd.ClosePeriod(MAR_MS + 2 * MINUTE_MS, ACTOR, "acme", FEB_MS, closed_in_journal_order=True))
    assert deferred_by_period(m) == before_close


def test_a_grant_made_right_after_the_close_in_the_same_millisecond_is_not_sold_in_the_closed_period() -> None:
    # No clock set back: January closed at Feb 11 00:00, and a grant starting Jan 1 (paid 40) made next in the same
    # millisecond (two commands of one group carry its time). It came after the close: sold in February. Before,
    # closed_at == created_at counted as "not closed before it": sold in January, after its revenue was final.
    world = basic_world()
    m = Ledger(world)
    close_january(m, FEB_MS + 10 * DAY_MS)
    m.run(world.grant_command("g", "100", paid="40", starts_at_ms=EPOCH_MS, at_ms=FEB_MS + 10 * DAY_MS))
    assert deferred_by_period(m) == (0, picos("40"), picos("40"))


SWITCH_MS = EPOCH_MS + 19 * DAY_MS  # Jan 20: contract c-acme ends, c-next starts


def switched_world_with_grant(made_at_ms: int) -> tuple[Ledger, cmd.CreateContract]:
    """c-acme from Jan 1, ended on Jan 20 (its last period, Jan 1 - Feb 1, keeps its monthly end); a grant of
    c-acme starting Jan 25 (paid 40), made at made_at_ms: with no contract in force then, it is sold in c-acme's
    last period (Jan 1). And the CreateContract of c-next from Jan 20, in force on Jan 25, which would sell the grant
    in c-next's first period (Jan 20) instead."""
    world = basic_world(contract_end_ms=SWITCH_MS)
    m = Ledger(world)
    starts_ms = SWITCH_MS + 5 * DAY_MS
    m.run(world.grant_command("g", "100", contract_id="c-acme", paid="40", starts_at_ms=starts_ms, at_ms=made_at_ms))
    next_contract = cmd.CreateContract(
        0, ACTOR, "c-next", "acme", "card", SWITCH_MS, None, OveragePolicy.ALLOW, "1", "USD"
    )
    return m, next_contract


def sold_by_period(m: Ledger) -> dict[int, int]:
    whole = report(m, EPOCH_MS, APR_MS).by_customer
    return {line.period_start_ms: line.deferred or 0 for line in whole}


def test_a_contract_created_after_the_close_with_the_clock_set_back_does_not_move_a_sale_out_of_it() -> None:
    # The grant (made Feb 1) is sold in January (c-acme's last period, deferred 40), closed at Feb 11. The clock is
    # set back and c-next created at Feb 6: it came after the close (journal order), so January's line, final, keeps
    # the sale. Before, c-next's created_at (Feb 6) before closed_at (Feb 11) let it move the sale to Jan 20.
    m, create_next = switched_world_with_grant(FEB_MS)
    close_january(m, FEB_MS + 10 * DAY_MS)
    closed = report(m, EPOCH_MS, FEB_MS).by_customer
    assert [(line.period_start_ms, line.deferred) for line in closed] == [(EPOCH_MS, picos("40"))]
    m.run(msgspec.structs.replace(create_next, at_ms=FEB_MS + 5 * DAY_MS))
    assert report(m, EPOCH_MS, SWITCH_MS).by_customer == closed
    assert sold_by_period(m)[SWITCH_MS] == picos("40")  # carried from January, sold there
    assert report(m, SWITCH_MS, APR_MS).totals.prepaid_sold == 0
    assert m.replayed().engine.state.invoices == m.billing.engine.state.invoices  # replay counts the same


def test_a_contract_created_before_the_close_with_the_clock_set_back_still_moves_the_sale() -> None:
    # The grant (made Feb 1), then c-next created at Feb 11: the sale is in c-next's first period (Jan 20), January's
    # line has none. The clock is set back and January closed at Feb 6: the close does not take the sale back into
    # the line it made final. Before, c-next's created_at (Feb 11) after closed_at (Feb 6) dropped c-next, and the
    # close moved the sale into January.
    m, create_next = switched_world_with_grant(FEB_MS)
    m.run(msgspec.structs.replace(create_next, at_ms=FEB_MS + 10 * DAY_MS))
    before_close = sold_by_period(m)
    assert (before_close[EPOCH_MS], before_close[SWITCH_MS]) == (0, picos("40"))
    close_january(m, FEB_MS + 5 * DAY_MS)
    assert sold_by_period(m) == before_close


def test_a_close_recorded_before_contracts_were_counted_compares_the_times_as_it_did() -> None:
    # A ClosePeriod without closed_in_journal_order keeps no count: c-next created at Feb 6, before its closed_at
    # (Feb 11), moves the sale out of January, as before.
    m, create_next = switched_world_with_grant(FEB_MS)
    m.run(cmd.ClosePeriod(FEB_MS + 10 * DAY_MS, ACTOR, "acme", EPOCH_MS))
    m.run(msgspec.structs.replace(create_next, at_ms=FEB_MS + 5 * DAY_MS))
    sold = sold_by_period(m)
    assert (sold[EPOCH_MS], sold[SWITCH_MS]) == (0, picos("40"))


def test_a_contract_created_after_the_close_at_a_time_before_the_grants_does_not_move_the_sale() -> None:
    # The grant made at Feb 5 is sold in January, closed at Feb 11. The clock is set back further and c-next created
    # at Feb 3, a time before the grant's: it still came after the close, and after the grant (journal order), so
    # January's line keeps the sale. Before, c-next's created_at (Feb 3) before the grant's (Feb 5) counted c-next as
    # known when the grant was made, and the sale moved to Jan 20.
    m, create_next = switched_world_with_grant(FEB_MS + 4 * DAY_MS)
    close_january(m, FEB_MS + 10 * DAY_MS)
    closed = report(m, EPOCH_MS, FEB_MS).by_customer
    m.run(msgspec.structs.replace(create_next, at_ms=FEB_MS + 2 * DAY_MS))
    assert report(m, EPOCH_MS, SWITCH_MS).by_customer == closed
    assert report(m, SWITCH_MS, APR_MS).totals.prepaid_sold == 0


def test_an_invoice_closed_before_contracts_were_counted_decodes_without_a_count() -> None:
    # A snapshot's invoice closed in journal order before the count was kept: None, so the report compares the times.
    old = msgspec.json.decode(b'{"grants": 1, "top_ups": 0, "breakage": 2}', type=RecordedBefore)
    assert old == RecordedBefore(1, 0, 2, None)


def test_a_contract_created_in_the_closes_millisecond_after_it_does_not_move_a_sale_out_of_it() -> None:
    # No clock set back: January closed at Feb 11 00:00, and c-next created next in the same millisecond (two
    # commands of one group carry its time). It came after the close: January's line keeps the sale. Before,
    # closed_at == created_at counted as "not closed before it": the sale moved to Jan 20.
    m, create_next = switched_world_with_grant(FEB_MS)
    close_january(m, FEB_MS + 10 * DAY_MS)
    closed = report(m, EPOCH_MS, FEB_MS).by_customer
    m.run(msgspec.structs.replace(create_next, at_ms=FEB_MS + 10 * DAY_MS))
    assert report(m, EPOCH_MS, SWITCH_MS).by_customer == closed


def test_breakage_of_no_contracts_period_stays_in_the_closed_period_a_later_contract_would_name() -> None:
    # A grant of 100 credits paid 40 from Jan 1, expiring Jan 25, after c-acme ended (Jan 20): its expiry, recorded
    # at Feb 1, names no contract's period, so it counts in c-acme's last (Jan 1): 40 of breakage there. January
    # closed at Feb 11; the clock is set back and c-next (from Jan 20, in force at the last usable instant) created at
    # Feb 6, after the close: January's line keeps the breakage. Before, c-next's created_at (Feb 6) before closed_at
    # (Feb 11) moved it to Jan 20.
    world = basic_world(contract_end_ms=SWITCH_MS)
    m = Ledger(world)
    m.run(world.grant_command("g", "100", contract_id="c-acme", paid="40", expires_at_ms=SWITCH_MS + 5 * DAY_MS))
    m.advance(FEB_MS)
    assert [(b[1], b[3]) for b in m.billing.kernel.breakage("acme")] == [("g", picos("100"))]
    close_january(m, FEB_MS + 10 * DAY_MS)
    closed = report(m, EPOCH_MS, FEB_MS).by_customer
    assert [(line.breakage, line.deferred) for line in closed] == [(picos("40"), 0)]
    create_next = cmd.CreateContract(
        FEB_MS + 5 * DAY_MS, ACTOR, "c-next", "acme", "card", SWITCH_MS, None, OveragePolicy.ALLOW, "1", "USD"
    )
    m.run(create_next)
    assert report(m, EPOCH_MS, SWITCH_MS).by_customer == closed
    assert report(m, SWITCH_MS, APR_MS).totals.breakage == 0
