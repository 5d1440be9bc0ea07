"""Top-ups on invoices and breakage in revenue (engine/invoicing.py, engine/revenue.py) over the kernel's credits
state, driven as the server's writer drives them: a period's top-up purchases are due once, rounded half-even once
to the minor unit, equal in the draft and the final invoice; revenue counts the kernel's TOP_UP grants as prepaid
sold, recognises breakage at cost basis in its period, keeps a ROLLOVER grant on its origin's cost basis, and
reconciles to the pico."""

from __future__ import annotations

import re
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import msgspec
import pytest

from engine import commands as cmd
from engine import revenue
from engine.control import fingerprint
from engine.errors import AlreadyExists, InvalidArgument
from engine.invoices import CreditWanted, Invoice, PeriodRead
from engine.ledger import GrantKind
from engine.money import PICOS_PER_UNIT
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, basic_world, picos

DAY_MS = 86_400_000
T0 = EPOCH_MS + 3_600_000
FEB_MS = EPOCH_MS + 31 * DAY_MS
MAR_MS = FEB_MS + 28 * DAY_MS
APR_MS = MAR_MS + 31 * DAY_MS
CENT = Decimal("0.01")


def policy(threshold: str, recharge_to: str, price: str, cap: int) -> cmd.SetTopUpPolicy:
    return policy_at(EPOCH_MS, threshold, recharge_to, price, cap)


def policy_at(at_ms: int, threshold: str, recharge_to: str, price: str, cap: int) -> cmd.SetTopUpPolicy:
    return cmd.SetTopUpPolicy(at_ms, ACTOR, "c-acme", threshold, recharge_to, price, cap)


def preview(m: Ledger, at_ms: int) -> Invoice:
    return m.billing.engine.preview("acme", at_ms)


def draft_fields(invoice: Invoice) -> dict[str, Any]:
    fields: dict[str, Any] = msgspec.to_builtins(invoice)
    for name in ("number", "final", "closed_at_ms", "recorded_before"):
        fields.pop(name)
    return fields


def purchases_due(m: Ledger, period_start_ms: int, price: Decimal) -> Decimal:
    """Independently: the period's purchases' credits x price, summed exactly, rounded half-even once to cents."""
    rows = [p for p in m.billing.kernel.top_up_purchases("acme") if p[0] == period_start_ms]
    exact = sum((Decimal(credits) / PICOS_PER_UNIT * price for _, _, credits, _, _, _ in rows), Decimal(0))
    return exact.quantize(CENT, rounding=ROUND_HALF_EVEN)


def test_an_invoice_charges_the_periods_top_ups_rounded_once_and_the_final_invoice_equals_the_draft() -> None:
    world = basic_world()
    world.grant("g", "100", paid="100")
    m = Ledger(world)
    m.run(policy("50", "51", "0.0025", 2))  # each purchase: 2 credits for 0.005, half a cent
    m.ingest([event("t1", T0, 51)], T0)  # available 49: buys 2
    m.ingest([event("t2", T0 + 1, 2)], T0 + 1)  # 49 again: buys 2
    m.ingest([event("t3", T0 + 2, 2)], T0 + 2)  # the cap: no third purchase in January
    assert [(p[0], p[2], p[4]) for p in m.billing.kernel.top_up_purchases("acme")] == [
        (EPOCH_MS, picos("2"), picos("2") * 25 * 10**14),
        (EPOCH_MS, picos("2"), picos("2") * 25 * 10**14),
    ]
    january = preview(m, T0)
    # 0.005 + 0.005 = 0.01 exactly, rounded once: 1 cent (each rounded alone, half-even, would be 0 + 0).
    assert purchases_due(m, EPOCH_MS, Decimal("0.0025")) == CENT
    assert (january.top_up_purchases_minor, january.overage_due_minor, january.total_due_minor) == (1, 0, 1)
    # February (47 available after f1): one purchase of 4 credits, 0.01, on February's invoice, not January's.
    m.ingest([event("f1", FEB_MS + 10, 2)], FEB_MS + 10)
    february = preview(m, FEB_MS + 10)
    assert [(p[0], p[2]) for p in m.billing.kernel.top_up_purchases("acme")][2:] == [(FEB_MS, picos("4"))]
    assert purchases_due(m, FEB_MS, Decimal("0.0025")) == CENT
    assert (february.top_up_purchases_minor, february.total_due_minor) == (1, 1)
    assert preview(m, T0).top_up_purchases_minor == 1
    closed = m.run(cmd.ClosePeriod(FEB_MS, ACTOR, "acme", EPOCH_MS))
    assert isinstance(closed, Invoice) and closed.final
    assert draft_fields(closed) == draft_fields(january)
    assert preview(m, T0) == closed
    assert m.replayed().engine.preview("acme", T0) == closed  # replay finalises the same invoice


def test_top_ups_add_to_overage_in_total_due() -> None:
    world = basic_world(overage_price="0.013")
    world.grant("g", "10", paid="10")
    m = Ledger(world)
    m.run(policy("5", "10", "0.333", 1))
    m.ingest([event("t1", T0, 6)], T0)  # available 4: buys 6 credits for 1.998; then 10 available
    m.ingest([event("t2", T0 + 1, 13)], T0 + 1)  # the cap: 3 credits of overage at 0.013 = 0.039
    invoice = preview(m, T0)
    assert invoice.top_up_purchases_minor == 200  # 1.998 -> 2.00
    assert invoice.overage_due_minor == 4  # 0.039 -> 0.04
    assert invoice.total_due_minor == 204


def credits_of(m: Ledger) -> revenue.KernelCredits:
    kernel = m.billing.kernel
    return revenue.KernelCredits(kernel.made_grants("acme"), kernel.breakage("acme"))


def report(m: Ledger, start_ms: int, end_ms: int) -> revenue.Report:
    usage = m.billing.kernel.usage("acme")
    aggregates = usage[0] if usage is not None else []
    return revenue.report(m.billing.engine, lambda c: aggregates, start_ms, end_ms, "", lambda c: credits_of(m))


def test_revenue_counts_top_ups_as_sold_breakage_at_cost_basis_and_rollovers_on_their_origin() -> None:
    world = basic_world()
    world.grant("g", "100", paid="30", expires_at_ms=T0 + 10 * DAY_MS)  # 0.3 a credit, expires in January
    world.apply(world.grant_command("r", "90", paid="45", priority=1, rollover_fraction="0.5"))  # 0.5 a credit
    m = Ledger(world)
    m.run(policy("20", "50", "0.25", 3))
    m.ingest([event("jan1", T0, 60)], T0)  # g: 60 drawn
    m.advance(T0 + 10 * DAY_MS)  # g breaks: 40 credits at 0.3 = 12
    m.ingest([event("jan2", T0 + 11 * DAY_MS, 75)], T0 + 11 * DAY_MS)  # r: 75 drawn, 15 left: a top-up of 35
    m.advance(FEB_MS)  # r rolls 7.5 over, 7.5 break (at 0.5: 3.75), in January
    m.ingest([event("feb", FEB_MS + DAY_MS, 5)], FEB_MS + DAY_MS)
    m.advance(MAR_MS)  # what the rollover grant still holds breaks in February
    broken = {(b[1], b[2]): b[3] for b in m.billing.kernel.breakage("acme")}
    rolled = f"rollover-r-{FEB_MS}"
    assert broken == {("g", EPOCH_MS): picos("40"), ("r", EPOCH_MS): picos("7.5"), (rolled, FEB_MS): picos("2.5")}
    (top_up,) = m.billing.kernel.top_up_purchases("acme")
    assert (top_up[0], top_up[2]) == (EPOCH_MS, picos("35"))  # the top-up's 35 credits cost 8.75

    whole = report(m, EPOCH_MS, APR_MS)
    totals = whole.totals
    assert totals.prepaid_sold == picos("83.75")  # 30 + 45 + 8.75: the rollover is no sale
    assert totals.breakage == picos("12") + picos("3.75") + picos("1.25")
    assert totals.recognized_credits == picos("18") + picos("37.5") + picos("2.5")  # 60 x 0.3, 75 x 0.5, 5 x 0.5
    assert totals.deferred_end == picos("8.75")  # the top-up, undrawn
    assert (totals.deferred_start, totals.reconciles) == (0, True)
    jan, feb, mar = whole.by_customer
    assert (jan.breakage, jan.recognized_credits, jan.deferred) == (picos("15.75"), picos("55.5"), picos("12.5"))
    assert (feb.breakage, feb.recognized_credits, feb.deferred) == (picos("1.25"), picos("2.5"), picos("8.75"))
    assert (mar.breakage, mar.recognized_credits, mar.deferred) == (0, 0, picos("8.75"))
    assert all(line.breakage == 0 for line in whole.by_product)  # expired credit belongs to no product
    # Spans cut at each period reconcile and add up.
    for cut in (FEB_MS, MAR_MS):
        first, second = report(m, EPOCH_MS, cut), report(m, cut, APR_MS)
        assert first.totals.reconciles and second.totals.reconciles
        assert first.totals.deferred_end == second.totals.deferred_start
        assert first.totals.breakage + second.totals.breakage == totals.breakage


def test_breakage_of_a_grant_whose_cost_basis_is_not_exact_keeps_the_whole_paid_amount() -> None:
    world = basic_world()
    world.grant("g", "3", paid="1", expires_at_ms=T0 + DAY_MS)  # a third a credit
    m = Ledger(world)
    m.ingest([event("t1", T0, 1)], T0)
    m.advance(T0 + DAY_MS)  # 2 credits break
    totals = report(m, EPOCH_MS, FEB_MS).totals
    assert (totals.recognized_credits, totals.breakage) == (333_333_333_333, 666_666_666_667)
    assert totals.recognized_credits + totals.breakage == PICOS_PER_UNIT  # nothing appears or vanishes
    assert (totals.deferred_end, totals.reconciles) == (0, True)


def _balances(invoice: Invoice) -> dict[str, tuple[int, int, int, int]]:
    return {
        b.grant_id: (b.granted_picos, b.drawn_picos, b.remaining_picos, b.expired_picos) for b in invoice.grant_balances
    }


def test_an_invoice_shows_a_grant_that_rolled_over_as_drawn_into_its_rollover_and_broken_not_remaining() -> None:
    # r: 90 granted, 75 drawn in January; at January's end 7.5 roll into rollover-r and 7.5 break. Before, every
    # invoice from January on showed r with 15 remaining, so February's listed 15 + the rollover's 7.5 of balance
    # on 90 granted. GetBalance's rule (balance.proto): drawn includes what moved into the ROLLOVER grant.
    world = basic_world()
    world.apply(world.grant_command("r", "90", paid="45", priority=1, rollover_fraction="0.5"))
    m = Ledger(world)
    m.ingest([event("jan", T0 + DAY_MS, 75)], T0 + DAY_MS)
    # Not rolled yet, but January's draft shows it as its close will (README "Draft = final"): 7.5 rolled, 7.5 broken.
    assert _balances(preview(m, T0 + 2 * DAY_MS))["r"] == (picos("90"), picos("82.5"), 0, picos("7.5"))
    m.advance(FEB_MS)
    m.ingest([event("feb", FEB_MS + DAY_MS, 5)], FEB_MS + DAY_MS)
    rolled = f"rollover-r-{FEB_MS}"
    january = _balances(preview(m, T0))
    assert january["r"] == (picos("90"), picos("82.5"), 0, picos("7.5"))
    february = _balances(preview(m, FEB_MS + DAY_MS))
    assert february["r"] == (picos("90"), picos("82.5"), 0, picos("7.5"))
    # The rollover grant expires at February's end, so February's invoice shows what it still holds as expired.
    assert february[rolled] == (picos("7.5"), picos("5"), 0, picos("2.5"))
    # The 90 bought: 75 and 5 drawn by usage, 7.5 and 2.5 broken (r's drawn holds the 7.5 rolled into the other).
    used = february["r"][1] - february[rolled][0] + february[rolled][1]
    assert used + february["r"][3] + february[rolled][3] + february["r"][2] + february[rolled][2] == picos("90")


def test_a_close_recorded_by_an_earlier_release_builds_its_invoice_as_that_release_did() -> None:
    # ClosePeriod and CloseDuePeriods records without rollovers_shown (every record before it) replay to the
    # final invoice they made then: the rolled grant's remainder as remaining. The server's new ones show it.
    def closed(rollovers_shown: bool) -> dict[str, tuple[int, int, int, int]]:
        world = basic_world()
        world.apply(world.grant_command("r", "90", paid="45", priority=1, rollover_fraction="0.5"))
        m = Ledger(world)
        m.ingest([event("jan", T0 + DAY_MS, 75)], T0 + DAY_MS)
        m.advance(FEB_MS)
        invoice = m.run(cmd.ClosePeriod(FEB_MS, ACTOR, "acme", EPOCH_MS, rollovers_shown=rollovers_shown))
        assert isinstance(invoice, Invoice) and invoice.final
        closed_due = m.run(cmd.CloseDuePeriods(MAR_MS + DAY_MS, ACTOR, DAY_MS, rollovers_shown=rollovers_shown))
        assert isinstance(closed_due, list) and len(closed_due) == 1
        due = closed_due[0]
        assert isinstance(due, Invoice) and due.period_start_ms == FEB_MS
        return _balances(invoice) | {f"feb/{k}": v for k, v in _balances(due).items()}

    assert closed(rollovers_shown=False) == {
        "r": (picos("90"), picos("75"), picos("15"), 0),
        "feb/r": (picos("90"), picos("75"), picos("15"), 0),
        f"feb/rollover-r-{FEB_MS}": (picos("7.5"), 0, 0, picos("7.5")),
    }
    assert closed(rollovers_shown=True) == {
        "r": (picos("90"), picos("82.5"), 0, picos("7.5")),
        "feb/r": (picos("90"), picos("82.5"), 0, picos("7.5")),
        f"feb/rollover-r-{FEB_MS}": (picos("7.5"), 0, 0, picos("7.5")),
    }


def test_the_server_set_invoice_rule_is_not_in_the_audit_log() -> None:
    # rollovers_shown is the server's, not the caller's: were it in the audit entry, replaying a close recorded by
    # an earlier release would write `"rollovers_shown":false` where that release wrote nothing, so the audit log
    # would depend on whether a snapshot covered the record. Nor does a new close show it.
    world = basic_world()
    m = Ledger(world)
    m.advance(FEB_MS)
    m.run(cmd.ClosePeriod(FEB_MS, ACTOR, "acme", EPOCH_MS))
    m.run(cmd.CloseDuePeriods(MAR_MS + DAY_MS, ACTOR, DAY_MS, rollovers_shown=True))
    closes = [e for e in m.billing.engine.state.audit if e.action in ("ClosePeriod", "CloseDuePeriods")]
    assert [e.action for e in closes] == ["ClosePeriod", "CloseDuePeriods"]
    assert all("rollovers_shown" not in entry.diff for entry in closes), closes


def test_a_paid_amount_finer_than_the_pico_is_refused_for_the_server_and_replays_as_recorded_before() -> None:
    # paid_at_picos is the server's (server/convert.py sets it): a grant recorded by an earlier release, without
    # it, replays as it was taken then, even paid 10^-13; a new one is refused, changing nothing. The flag is in
    # neither the audit entry nor the retry fingerprint.
    world = basic_world()
    earlier = world.grant_command("earlier", "1", paid="0.0000000000001")
    world.apply(earlier)
    refused = msgspec.structs.replace(world.grant_command("new", "1", paid="0.0000000000001"), paid_at_picos=True)
    with pytest.raises(InvalidArgument, match=r"grant\.paid_amount"):
        world.apply(refused)
    world.apply(msgspec.structs.replace(world.grant_command("new", "1", paid="0.000000000001"), paid_at_picos=True))
    assert [g.id for g in world.engine.state.accounts["acme"].grants] == ["earlier", "new"]
    grants = [e for e in world.engine.state.audit if e.action == "GrantCredits"]
    assert len(grants) == 2 and all("paid_at_picos" not in entry.diff for entry in grants), grants
    assert fingerprint(msgspec.structs.replace(earlier, paid_at_picos=True)) == fingerprint(earlier)


def test_a_grant_under_a_made_grants_id_is_refused_for_the_server_and_replays_as_recorded_before() -> None:
    # made_ids_refused is the server's (server/convert.py sets it): a GrantCredits under the id of a top-up the kernel
    # bought is refused, changing nothing (before, the kernel's tables took it for the top-up and replaced it); one
    # recorded by an earlier release, without the flag, replays as it applied then. The flag is in neither the
    # audit entry nor the retry fingerprint.
    world = basic_world()
    world.grant("g", "10", paid="10")
    m = Ledger(world)
    m.run(policy("5", "20", "1", 3))
    m.ingest([event("t1", T0, 6)], T0)  # available 4: buys 16
    bought = f"top-up-{EPOCH_MS}-1"
    assert [p[1] for p in m.billing.kernel.top_up_purchases("acme")] == [bought]
    clash = msgspec.structs.replace(world.grant_command(bought, "16", at_ms=T0 + 1), made_ids_refused=True)
    with pytest.raises(AlreadyExists, match=bought):
        m.run(clash)
    assert [g.id for g in world.engine.state.accounts["acme"].grants] == ["g"]
    assert not [e for e in world.engine.state.audit if e.action == "GrantCredits" and e.target == f"grant/{bought}"]
    earlier = world.grant_command(bought, "16", at_ms=T0 + 1)
    m.run(earlier)
    assert [g.id for g in world.engine.state.accounts["acme"].grants] == ["g", bought]
    entries = [e for e in world.engine.state.audit if e.action == "GrantCredits"]
    assert entries and all("made_ids_refused" not in entry.diff for entry in entries), entries
    assert fingerprint(clash) == fingerprint(earlier)
    assert m.replayed().engine.state.accounts["acme"].grants == world.engine.state.accounts["acme"].grants


def _purchases(m: Ledger) -> list[tuple[int, str, int, int]]:
    """(period start, grant id, credits, bought at) of each purchase, oldest first."""
    return [(p[0], p[1], p[2], p[5]) for p in m.billing.kernel.top_up_purchases("acme")]


def _replays_to_the_same_state(m: Ledger) -> bool:
    return m.replayed().encode_snapshot() == m.billing.encode_snapshot()


def test_a_top_up_an_event_of_the_next_period_buys_starts_there_for_the_server_and_replays_as_recorded_before() -> None:
    # top_ups_in_billed_period is the server's (server/sequencer.py sets it on every batch and journals it): an event
    # dated 10 s into February, received a minute before February, draws 6 of 10. The top-up of 16 counts in
    # February and starts there, so revenue sells it in February as its invoice bills it; a second February event
    # finds 3 + 16 available there and buys nothing (cap 2). A batch recorded by an earlier release, without the
    # rule, starts the grant at the purchase, in January, as then; each replays to the state it made.
    def ledger(in_billed_period: bool) -> Ledger:
        world = basic_world()
        world.grant("g", "10", paid="10")
        m = Ledger(world)
        m.run(policy("5", "20", "1", 2))
        for key, at_ms, units in (("f1", FEB_MS + 10_000, 6), ("f2", FEB_MS + 20_000, 1)):
            m.ingest([event(key, at_ms, units)], FEB_MS - 60_000, top_ups_in_billed_period=in_billed_period)
        return m

    bought = f"top-up-{FEB_MS}-1"
    now = ledger(in_billed_period=True)
    assert _purchases(now) == [(FEB_MS, bought, picos("16"), FEB_MS - 60_000)]
    assert [(g[0], g[4]) for g in now.billing.kernel.made_grants("acme")] == [(bought, FEB_MS)]
    assert (preview(now, T0).top_up_purchases_minor, preview(now, FEB_MS).top_up_purchases_minor) == (0, 1600)
    sold = [report(now, start, end).totals.prepaid_sold for start, end in ((EPOCH_MS, FEB_MS), (FEB_MS, MAR_MS))]
    assert sold == [picos("10"), picos("16")]
    earlier = ledger(in_billed_period=False)
    assert _purchases(earlier) == _purchases(now)
    assert [(g[0], g[4]) for g in earlier.billing.kernel.made_grants("acme")] == [(bought, FEB_MS - 60_000)]
    assert _replays_to_the_same_state(now) and _replays_to_the_same_state(earlier)


def future_rollover_world(rollover_ids_distinct: bool) -> tuple[Ledger, str]:
    """10 credits of g rolling half over at February, 2 drawn in January; a grant of 1 named rollover-g-<February>
    made in January; then the AdvanceClock past February: (the machine, that name)."""
    world = basic_world()
    m = Ledger(world)
    m.run(world.grant_command("g", "10", paid="10", rollover_fraction="0.5"))
    named = f"rollover-g-{FEB_MS}"
    m.run(msgspec.structs.replace(world.grant_command(named, "1", at_ms=T0), made_ids_refused=True))
    m.ingest([event("t1", T0 + 1, 2)], T0 + 1)
    m.advance(FEB_MS + 1, rollover_ids_distinct=rollover_ids_distinct)
    return m, named


def test_a_grant_named_as_a_future_rollover_does_not_share_its_id_with_the_rollover() -> None:
    # At February the kernel rolls (10 - 2) / 2 = 4 credits over into a grant that must not take the id of the grant
    # of 1 the control plane made under rollover-g-<February> in advance: it gets a '+', as a top-up's id does. The
    # balance, the kernel's made grants and a later GrantCredits tell the two apart; replay gives the same grants.
    m, named = future_rollover_world(rollover_ids_distinct=True)
    rolled = f"{named}+"
    views = m.billing.balance("acme", FEB_MS + 2).grants
    ids = [view.grant.id for view in views]
    assert len(ids) == len(set(ids)) == 3, ids
    amounts = {view.grant.id: (view.grant.kind, view.grant.amount, view.remaining) for view in views}
    assert amounts[named] == (GrantKind.PREPAID, picos("1"), picos("1"))
    assert amounts[rolled] == (GrantKind.ROLLOVER, picos("4"), picos("4"))
    assert amounts["g"][2] == 0
    made = m.billing.kernel.made_grants("acme")
    assert [(row[0], row[1], row[2], row[7]) for row in made] == [(rolled, "ROLLOVER", picos("4"), "g")]
    clash = msgspec.structs.replace(m.world.grant_command(rolled, "1", at_ms=FEB_MS + 3), made_ids_refused=True)
    with pytest.raises(AlreadyExists, match=re.escape(rolled)):
        m.run(clash)
    replayed = m.replayed().balance("acme", FEB_MS + 2).grants
    assert [(v.grant, v.remaining) for v in replayed] == [(v.grant, v.remaining) for v in views]


def test_an_advance_clock_recorded_before_distinct_rollover_ids_replays_as_it_did() -> None:
    # rollover_ids_distinct is the server's (server/clock.py and server/sequencer.py set it): an AdvanceClock of an
    # earlier release, without it, names the ROLLOVER grant as that release did, sharing the id, so that its journal
    # replays to the same state.
    m, named = future_rollover_world(rollover_ids_distinct=False)
    ids = [view.grant.id for view in m.billing.balance("acme", FEB_MS + 2).grants]
    assert sorted(ids) == sorted(["g", named, named]), ids
    replayed = m.replayed().balance("acme", FEB_MS + 2).grants
    assert [v.grant.id for v in replayed] == ids


def test_a_grant_under_the_id_of_a_rollover_that_moved_nothing_is_not_taken_for_its_rollover() -> None:
    # g (10 credits paid 10, half rolling over) is all drawn in January: at February nothing rolls over and no
    # ROLLOVER grant is made, so rollover-g-<February> is free and a grant of 4 paid 2 takes it. The kernel's made
    # grants must not name it (revenue would count its draws on g's ledger, at g's cost basis: 14 recognised of 12
    # sold, -2 deferred), and another grant under it is ALREADY_EXISTS, as under any taken id.
    world = basic_world()
    m = Ledger(world)
    m.run(world.grant_command("g", "10", paid="10", rollover_fraction="0.5"))
    m.ingest([event("t1", T0 + 1, 10)], T0 + 1)
    m.advance(FEB_MS + 1, rollover_ids_distinct=True)
    named = f"rollover-g-{FEB_MS}"
    m.run(msgspec.structs.replace(world.grant_command(named, "4", paid="2", at_ms=FEB_MS + 2), made_ids_refused=True))
    m.ingest([event("t2", FEB_MS + DAY_MS, 4)], FEB_MS + DAY_MS)
    assert m.billing.kernel.made_grants("acme") == []
    totals = report(m, EPOCH_MS, APR_MS).totals
    assert (totals.prepaid_sold, totals.recognized_credits) == (picos("12"), picos("12"))  # 10 x 1 + 4 x 0.5
    assert (totals.deferred_end, totals.breakage, totals.reconciles) == (0, 0, True)
    again = msgspec.structs.replace(world.grant_command(named, "5", paid="2", at_ms=FEB_MS + 3), made_ids_refused=True)
    with pytest.raises(AlreadyExists, match=re.escape(named)):
        m.run(again)


def test_close_due_periods_reads_a_customers_grant_credit_once_and_builds_what_closing_each_period_builds() -> None:
    """acme: `r` 90 (rollover 0.5) and `e` 20 expiring on March 15, 75 units drawn in January; the clock past
    April's end (r rolled 17.5 into rollover-r at January's end, which expired at February's). Every period from
    January to April lists a grant rolled over or expiring by its end, so each invoice reads the customer's grant
    credit from the kernel with its lines (Kernel.invoice_read: the whole balance, 14-70 ms a read at 11,000 grants).

    One CloseDuePeriods closing the four reads it once: closing a period changes the control plane only (invoice
    numbers, closed periods), nothing of the kernel's grants, so each further read would answer the same. The
    invoices are those four ClosePeriod commands at the same instant make, each reading for itself.

    Before the fix it read the credit once a period: 4 reads."""
    rules = {
        "rollovers_shown": True,
        "adjustments_in_contract": True,
        "parts_in_contract": True,
        "rolled_breakage_shown": True,
        "expired_breakage_shown": True,
        "spent_grants_left_out": True,
        "closed_in_journal_order": True,
    }
    may_ms = APR_MS + 30 * DAY_MS
    at_ms = may_ms + DAY_MS

    def ledger() -> tuple[Ledger, list[str]]:
        world = basic_world()
        world.apply(world.grant_command("r", "90", paid="45", priority=1, rollover_fraction="0.5"))
        world.apply(world.grant_command("e", "20", expires_at_ms=MAR_MS + 14 * DAY_MS))
        m = Ledger(world)
        m.ingest([event("jan", T0 + DAY_MS, 75)], T0 + DAY_MS)
        m.advance(may_ms)
        reads: list[str] = []
        reader = world.engine.period_read
        assert reader is not None

        def counted(
            customer_id: str, at_ms: int, in_contract: bool, read_ms: int | None, credit: CreditWanted | None
        ) -> PeriodRead:
            answer = reader(customer_id, at_ms, in_contract, read_ms, credit)
            if answer[3] is not None:  # the grant credit read with the lines
                reads.append(customer_id)
            return answer

        world.engine.period_read = counted
        return m, reads

    due, due_reads = ledger()
    closed = due.run(cmd.CloseDuePeriods(at_ms, ACTOR, 0, **rules))
    assert isinstance(closed, list)
    assert [i.period_start_ms for i in closed] == [EPOCH_MS, FEB_MS, MAR_MS, APR_MS]
    assert due_reads == ["acme"]

    each, each_reads = ledger()
    one_by_one = [
        each.run(cmd.ClosePeriod(at_ms, ACTOR, "acme", start, **rules)) for start in (EPOCH_MS, FEB_MS, MAR_MS, APR_MS)
    ]
    assert each_reads == ["acme"] * 4
    assert one_by_one == closed
    # By hand: e (priority 0) pays 20 of the 75, r 55; r's 35 left at January's end: 17.5 rolled, 17.5 broken.
    # April leaves e out (spent in January, its March expiry broke nothing: invoices.proto Invoice.grant_balances);
    # March, the period of its expiry, lists it.
    assert _balances(closed[3]) == {
        "r": (picos("90"), picos("72.5"), 0, picos("17.5")),
        f"rollover-r-{FEB_MS}": (picos("17.5"), 0, 0, picos("17.5")),
    }
    assert _balances(closed[2])["e"] == (picos("20"), picos("20"), 0, 0)


def test_the_grant_credit_read_with_an_invoices_lines_is_the_balance_less_its_breakage() -> None:
    """Kernel.invoice_read's grant credit (invoice::grant_credit_of: a grant's remainder and what holds keep on it;
    the breakage recorded from it) is what engine/billing.py computed from GetBalance's view and the breakage rows
    before it was read with the lines: remaining + expired - breakage + held, and the breakage, by grant. acme: `r`
    90 (rollover 0.5), `e` 20 expiring on March 15, `p` 30; 75 units drawn in January, a hold of 12 open; read
    before and after the clock records January's rollover, and projected (a draft's read) across it and e's expiry."""
    world = basic_world()
    world.apply(world.grant_command("r", "90", paid="45", priority=1, rollover_fraction="0.5"))
    world.apply(world.grant_command("e", "20", expires_at_ms=MAR_MS + 14 * DAY_MS))
    world.apply(world.grant_command("p", "30", priority=2))
    m = Ledger(world)
    m.ingest([event("jan", T0 + DAY_MS, 75)], T0 + DAY_MS)
    m.reserve("h", 12, T0 + 2 * DAY_MS, ttl_ms=200 * DAY_MS)
    kernel = m.billing.kernel

    def balance_less_breakage(read_ms: int | None) -> dict[str, tuple[int, int]]:
        rows = kernel.breakage("acme") if read_ms is None else kernel.credits_read("acme", read_ms)[1]
        broken: dict[str, int] = {}
        for _, grant_id, _, credits, _ in rows:
            broken[grant_id] = broken.get(grant_id, 0) + credits
        view = kernel.balance("acme", 0) if read_ms is None else kernel.balance("acme", read_ms, projected=True)
        assert view is not None
        return {
            grant_id: (remaining + expired - broken.get(grant_id, 0) + held, broken.get(grant_id, 0))
            for (grant_id, _, remaining, expired, _), held in zip(view["grants"], view["grants_held"], strict=True)
        }

    def read_with_lines(read_ms: int | None) -> dict[str, tuple[int, int]]:
        rows = kernel.invoice_read("acme", EPOCH_MS, True, read_ms, (EPOCH_MS, True))[3]
        assert rows is not None
        return {grant_id: (credit, breakage) for grant_id, credit, breakage in rows}

    reads = [None, T0 + 3 * DAY_MS, FEB_MS + 1, APR_MS]
    before = [read_with_lines(read_ms) for read_ms in reads]
    assert before == [balance_less_breakage(read_ms) for read_ms in reads]
    # By hand, read now: e (priority 0) paid 20 of the 75, r 55 (35 left); the hold of 12 on r.
    assert before[0] == {"r": (picos("35"), 0), "e": (0, 0), "p": (picos("30"), 0)}
    m.advance(FEB_MS + 1)
    after = [read_with_lines(read_ms) for read_ms in reads]
    assert after == [balance_less_breakage(read_ms) for read_ms in reads]
    assert after[0]["r"][1] > 0  # the rollover recorded breakage from r
