"""Which grants an invoice lists (invoices.proto Invoice.grant_balances), in process: a customer's spent TOP_UP
grants of earlier periods are left out of a later period's invoice, so the list does not grow with the customer's
life; drafts and final invoices list alike, the totals are those of the full list, and a close journaled before
the rule (without ClosePeriod's `spent_grants_left_out`) replays listing every grant, as it closed."""

from __future__ import annotations

import msgspec

from engine import commands as cmd
from engine.invoices import GrantBalance, Invoice
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, DAY_MS, EPOCH_MS, HOUR_MS, basic_world
from tests.test_invoice_properties import as_server as server
from tests.test_invoices_engine import BillingWorld, tokens, world

FEB_1_MS = EPOCH_MS + 31 * DAY_MS
MAR_1_MS = FEB_1_MS + 28 * DAY_MS
APR_1_MS = MAR_1_MS + 31 * DAY_MS
CREDIT = 10**12


def topping_up() -> BillingWorld:
    """acme (gpt4 tokens at 1 credit, overage allowed) whose top-up policy buys 2 credits whenever less than 1 is
    available (0.5 a credit, at most 1,000 a period), and 3 events of 2 tokens on the 2nd of January, February and
    March each. January's first event finds nothing (2 of overage) and buys t1; each later event draws the 2 the one
    before bought and buys 2 more: January buys t1-t3 (t1, t2 spent in January, t3 whole), February t4-t6 (its
    first event spends t3), March t7-t9 (its first event spends t6, t9 left whole)."""
    w = world([(EPOCH_MS, "1", "1")])
    w.apply(server(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", "1", "2", "0.5", 1000)))
    for month, start_ms in enumerate((EPOCH_MS, FEB_1_MS, MAR_1_MS)):
        at_ms = start_ms + DAY_MS
        events = [tokens(f"m{month}-{n}", at_ms + n, 2) for n in range(3)]
        assert w.usage(events, received_ms=at_ms + HOUR_MS).accepted == 3
    return w


def listed(invoice: Invoice) -> dict[str, tuple[int, int, int, int]]:
    """The invoice's grant balances by the position of the grant's purchase (t1 the first top-up bought)."""
    return {
        b.grant_id: (b.granted_picos, b.drawn_picos, b.remaining_picos, b.expired_picos) for b in invoice.grant_balances
    }


def totals(balances: list[GrantBalance]) -> tuple[int, int, int]:
    """What the list sums to that does not depend on which grants spent whole it holds: remaining, expired and
    granted - drawn (a spent grant has granted = drawn, remaining 0, expired 0)."""
    remaining = sum(b.remaining_picos for b in balances)
    expired = sum(b.expired_picos for b in balances)
    return remaining, expired, sum(b.granted_picos - b.drawn_picos for b in balances)


def assert_same_but_the_spent(short: Invoice, full: Invoice) -> None:
    """`short` is `full` with spent grants of earlier periods left out: every other field equal, each listed grant
    as the full list shows it, in the same order, and the list's totals equal."""
    assert msgspec.structs.replace(short, grant_balances=[]) == msgspec.structs.replace(full, grant_balances=[])
    by_id = {b.grant_id: b for b in full.grant_balances}
    assert [by_id[b.grant_id] for b in short.grant_balances] == short.grant_balances
    order = [b.grant_id for b in full.grant_balances]
    assert [b.grant_id for b in short.grant_balances] == [g for g in order if g in set(listed(short))]
    assert totals(short.grant_balances) == totals(full.grant_balances)
    left_out = [b for b in full.grant_balances if b.grant_id not in listed(short)]
    assert all(b.drawn_picos == b.granted_picos and not b.remaining_picos and not b.expired_picos for b in left_out)


def test_a_later_invoice_leaves_out_the_top_ups_spent_before_its_period() -> None:
    """invoices.proto Invoice.grant_balances: the grants that matter to the period. March's invoice lists t6 (its
    first event drew it) and t7-t9 (bought in March): t6 drawn 2, t7 and t8 drawn 2, t9 2 remaining. t1-t5 were
    spent before March and nothing in March touched them: left out (before, all 9 were listed, and a customer
    buying 1,000 top-ups a period passed 1 MiB in about 2 years). February's lists t3-t6, January's t1-t3. The
    draft equals the final invoice, and the totals (2 remaining, 0 expired) are those of the full list."""
    w = topping_up()
    drafts = [w.engine.preview("acme", start_ms) for start_ms in (EPOCH_MS, FEB_1_MS, MAR_1_MS)]
    assert [len(d.grant_balances) for d in drafts] == [3, 4, 4]
    march = drafts[2]
    ids = [b.grant_id for b in march.grant_balances]
    two = 2 * CREDIT
    assert [listed(march)[g] for g in ids] == [(two, two, 0, 0)] * 3 + [(two, 0, two, 0)]
    feb_ids = [b.grant_id for b in drafts[1].grant_balances]
    assert feb_ids[-1] == ids[0], "t6, bought in February, drawn in March"
    assert drafts[0].grant_balances[-1].grant_id == feb_ids[0], "t3, bought in January, drawn in February"

    closed = w.apply(server(cmd.CloseDuePeriods(APR_1_MS, ACTOR, 0)))
    assert isinstance(closed, list) and len(closed) == 3
    for draft, final in zip(drafts, closed, strict=True):
        assert msgspec.structs.replace(final, number="", final=False, closed_at_ms=0, recorded_before=None) == draft
        assert w.engine.preview("acme", final.period_start_ms) == final


def test_the_totals_are_those_of_the_full_list_and_an_earlier_close_replays_it() -> None:
    """The same customer closed by ClosePeriod records without `spent_grants_left_out` (a release before the rule):
    March's invoice lists all 9 grants, as it closed then; the new rule's invoice is that one with t1-t5 (granted
    2, drawn 2, remaining 0, expired 0 each) left out, its every other field and its totals (remaining 2, expired 0,
    granted - drawn 2) equal."""
    new, old = topping_up(), topping_up()
    for start_ms, end_ms in ((EPOCH_MS, FEB_1_MS), (FEB_1_MS, MAR_1_MS), (MAR_1_MS, APR_1_MS)):
        close = server(cmd.ClosePeriod(APR_1_MS, ACTOR, "acme", start_ms))
        short = new.apply(close)
        full = old.apply(msgspec.structs.replace(close, spent_grants_left_out=False))
        assert isinstance(short, Invoice) and isinstance(full, Invoice)
        assert (short.period_end_ms, full.period_end_ms) == (end_ms, end_ms)
        assert_same_but_the_spent(short, full)
    assert [len(i.grant_balances) for i in old.engine.invoices_of("acme")] == [3, 6, 9]
    assert [len(i.grant_balances) for i in new.engine.invoices_of("acme")] == [3, 4, 4]
    march = old.engine.invoices_of("acme")[-1]
    assert totals(march.grant_balances) == (2 * CREDIT, 0, 2 * CREDIT)


def test_closes_with_and_without_the_rule_replay_as_they_closed() -> None:
    """A journal holding a CloseDuePeriods of an earlier release (no `spent_grants_left_out`) closing January and
    February, then a ClosePeriod of this one closing March: February's invoice lists its 6 grants (t1, t2 spent in
    January among them), March's its 4. Replaying the journal into a fresh machine makes the very same invoices."""
    m = Ledger(basic_world())
    m.run(server(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", "1", "2", "0.5", 1000)))
    for month, start_ms in enumerate((EPOCH_MS, FEB_1_MS, MAR_1_MS)):
        at_ms = start_ms + DAY_MS
        events = [event(f"m{month}-{n}", at_ms + n, 2) for n in range(3)]
        flags = dict.fromkeys(("top_ups_in_billed_period", "returned_expired_credit_breaks"), True)
        ack = m.ingest(events, at_ms + HOUR_MS, returned_rolled_credit_breaks=True, **flags)
        assert ack.accepted == 3
    earlier = msgspec.structs.replace(server(cmd.CloseDuePeriods(APR_1_MS, ACTOR, 0, 2)), spent_grants_left_out=False)
    closed = m.run(earlier)
    assert isinstance(closed, list) and [len(i.grant_balances) for i in closed] == [3, 6]
    march = m.run(server(cmd.ClosePeriod(APR_1_MS, ACTOR, "acme", MAR_1_MS)))
    assert isinstance(march, Invoice) and len(march.grant_balances) == 4
    invoices = m.billing.engine.invoices_of("acme")
    assert m.replayed().engine.invoices_of("acme") == invoices
