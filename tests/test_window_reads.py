"""Reads between the instant something falls due and the AdvanceClock that records it (README "Rollover"): they
answer as the record will leave the customer, deterministically here by reading at an instant past the due one
before advancing the clock. Journaled changes read the kernel's own state, so a journal replays as it did.

README's example ("Held credit at a rollover"): grant R of 100 credits (paid 100) with fraction 0.5 from Jan 1, 40
drawn in January, holds r1 of 20 and r2 of 6 open at the period's end (Feb 1). At Feb 1: 0.5 x 60 = 30 roll into
rollover-R-<Feb 1> (13 of them held: 10 for r1, 3 for r2; 17 available), 30 break; R: 70 drawn, 30 expired."""

from __future__ import annotations

import msgspec

from engine import commands as cmd
from engine.balances import BalanceView
from engine.invoices import Invoice
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, basic_world

PICOS = 10**12
FEB_MS = EPOCH_MS + 31 * 86_400_000
WINDOW_MS = FEB_MS + 1_000  # after the period's end, before any AdvanceClock reaches it
ROLLED = f"rollover-R-{FEB_MS}"


def server_set(command: cmd.AdminCommand) -> cmd.AdminCommand:
    """The command with every rule field the server sets for the commands it takes."""
    fields = {f: True for f in cmd.SERVER_SET_FIELDS if getattr(command, f, None) is False}
    return msgspec.structs.replace(command, **fields)


def held_at_the_period_end() -> Ledger:
    world = basic_world()
    world.apply(server_set(world.grant_command("R", "100", paid="100", rollover_fraction="0.5")))
    ledger = Ledger(world)
    assert ledger.ingest([event("u1", EPOCH_MS + 1_000, 40)], EPOCH_MS + 2_000).accepted == 1
    for reservation_id, tokens in (("r1", 20.0), ("r2", 6.0)):
        hold = cmd.Reserve(FEB_MS - 5_000, ACTOR, "acme", reservation_id, "ai", {}, {"tokens": tokens}, 3_600_000)
        ledger.run(server_set(hold))
    return ledger


def shown(view: BalanceView) -> tuple[tuple[int, int, int], dict[str, tuple[int, int, int, int]]]:
    """((remaining, held, available), {grant: (drawn, remaining, expired, held)}) in whole credits."""
    totals = (view.remaining // PICOS, view.held // PICOS, view.available // PICOS)
    grants = {
        g.grant.id: (g.grant.drawn // PICOS, g.remaining // PICOS, g.expired // PICOS, g.held // PICOS)
        for g in view.grants
    }
    return totals, grants


ROLLED_BALANCE = ((30, 13, 17), {"R": (70, 0, 30, 0), ROLLED: (0, 30, 0, 13)})


def test_a_balance_read_before_the_rollover_is_recorded_shows_it_rolled_its_lines_summing_to_its_totals() -> None:
    ledger = held_at_the_period_end()
    billing = ledger.billing
    assert shown(billing.balance("acme", FEB_MS - 1)) == ((60, 26, 34), {"R": (40, 60, 0, 26)})
    in_window = billing.balance("acme", WINDOW_MS)
    assert shown(in_window) == ROLLED_BALANCE
    assert sum(g.remaining for g in in_window.grants) == in_window.remaining
    assert sum(g.held for g in in_window.grants) == in_window.held
    # Authorize decides on the ROLLOVER grant's 17 available, as usage received then would find them.
    assert billing.estimate("acme", "ai", {}, {"tokens": 17.0}, WINDOW_MS).reason == "OK"
    assert billing.estimate("acme", "ai", {}, {"tokens": 18.0}, WINDOW_MS).reason == "OVERAGE_ALLOWED"
    draft = billing.engine.preview("acme", EPOCH_MS)
    # Journaled changes read the kernel's own state: nothing rolled yet there (alerts evaluate it).
    own = billing.kernel.balance("acme", WINDOW_MS)
    assert own is not None and (own["remaining"], own["held"]) == (0, 26 * PICOS)
    ledger.run(server_set(cmd.AdvanceClock(WINDOW_MS + 50, "clock")))
    assert shown(billing.balance("acme", WINDOW_MS + 50)) == ROLLED_BALANCE
    final = ledger.run(server_set(cmd.ClosePeriod(WINDOW_MS + 60, ACTOR, "acme", EPOCH_MS)))
    assert isinstance(final, Invoice)
    unclosed = {"number": "", "final": False, "closed_at_ms": 0, "recorded_before": None}
    assert msgspec.structs.replace(final, **unclosed) == draft
    own = billing.kernel.balance("acme", WINDOW_MS + 50)
    assert own is not None and (own["remaining"], own["held"]) == (17 * PICOS, 13 * PICOS)


def test_a_hold_past_its_ttl_reads_as_expired_before_the_clock_records_it() -> None:
    """r3 holds 10 of R's 60 for 1 s from Jan 10: a read 1 ms after its TTL shows the 10 given back."""
    world = basic_world()
    world.apply(server_set(world.grant_command("R", "60", paid="60")))
    ledger = Ledger(world)
    made_ms = EPOCH_MS + 9 * 86_400_000
    ledger.run(server_set(cmd.Reserve(made_ms, ACTOR, "acme", "r3", "ai", {}, {"tokens": 10.0}, 1_000)))
    billing = ledger.billing
    assert shown(billing.balance("acme", made_ms + 999))[0] == (60, 10, 50)
    assert shown(billing.balance("acme", made_ms + 1_001))[0] == (60, 0, 60)
    assert billing.estimate("acme", "ai", {}, {"tokens": 60.0}, made_ms + 1_001).reason == "OK"
    assert billing.kernel.balance("acme", made_ms + 1_001)["held"] == 10 * PICOS  # type: ignore[index]


def test_the_journal_replays_to_the_same_state_and_reads() -> None:
    ledger = held_at_the_period_end()
    ledger.run(server_set(cmd.AdvanceClock(WINDOW_MS + 50, "clock")))
    replayed = ledger.replayed()
    assert replayed.kernel.snapshot() == ledger.billing.kernel.snapshot()
    assert shown(replayed.balance("acme", WINDOW_MS + 50)) == ROLLED_BALANCE
