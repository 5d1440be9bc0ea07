"""A grant with a rollover fraction whose expires_at is exactly the end of the billing period it starts in (its
rollover) rolls over there, as one with no expiry does: its credits are usable up to, not at, that end, as the
period's are (README "Rollover"; contracts.proto, Grant.rollover_fraction). That is the rule of grants granted by a
GrantCredits that says so (`expiring_at_rollover_rolls`, set by the server for every request it takes). A journal
stored before the field existed has commands without it and must replay exactly as it did: such a grant simply
expires at the tie, its whole remainder breakage, nothing rolling over.

The scenario: January's period (contract from 2026-01-01) ends at FEB_MS; grant T of 10 credits (paid 10) with
fraction 0.5 starts at the contract's start and expires at FEB_MS exactly; nothing draws on it. At FEB_MS:
  - new rule: 0.5 x 10 = 5 roll into `rollover-T-<FEB_MS>` (usable from FEB_MS to the end of February's period),
    5 break; T shows 5 drawn (the rolled credits) and 5 expired;
  - old rule: T's 10 break, no ROLLOVER grant.
January's draft shows the same before the clock reaches FEB_MS as after (engine/invoicing.py `_rollovers`)."""

from __future__ import annotations

import msgspec

from engine import commands as cmd
from engine.billing import Billing
from engine.control import fingerprint
from tests.credits_fixtures import Ledger
from tests.engine_fixtures import EPOCH_MS, basic_world

PICOS = 10**12
FEB_MS = EPOCH_MS + 31 * 86_400_000
ROLLED = f"rollover-T-{FEB_MS}"


def scenario(*, new_rule: bool) -> tuple[Ledger, cmd.GrantCredits]:
    world = basic_world()
    command = world.grant_command(
        "T", "10", paid="10", rollover_fraction="0.5", starts_at_ms=EPOCH_MS, expires_at_ms=FEB_MS
    )
    # As the server sets the flags before this one (server/convert.py), so only the tie rule differs.
    command = msgspec.structs.replace(
        command,
        use_ends_at_rollover=True,
        paid_at_picos=True,
        made_ids_refused=True,
        rollover_start_in_contract=True,
        expiring_at_rollover_rolls=new_rule,
    )
    world.apply(command)
    return Ledger(world), command


def grant_rows(billing: Billing, now_ms: int) -> dict[str, tuple[int, int, int]]:
    """grant id -> (remaining, expired, drawn) in credits."""
    view = billing.kernel.balance("acme", now_ms)
    assert view is not None
    return {
        g: (remaining // PICOS, expired // PICOS, drawn // PICOS) for g, _, remaining, expired, drawn in view["grants"]
    }


def breakage(billing: Billing) -> list[tuple[str, int]]:
    return [(g, c // PICOS) for _, g, _, c, _ in billing.kernel.breakage("acme")]


def january_balances(billing: Billing) -> list[tuple[str, int, int, int, int]]:
    """January's draft: (grant, granted, drawn, remaining, expired) in credits."""
    invoice = billing.engine.preview("acme", EPOCH_MS)
    return [
        (
            b.grant_id,
            b.granted_picos // PICOS,
            b.drawn_picos // PICOS,
            b.remaining_picos // PICOS,
            b.expired_picos // PICOS,
        )
        for b in invoice.grant_balances
    ]


def test_a_grant_expiring_exactly_at_its_rollover_rolls_over_there() -> None:
    ledger, _ = scenario(new_rule=True)
    billing = ledger.billing
    before = january_balances(billing)
    assert before == [("T", 10, 5, 0, 5)]  # the draft shows what the close will do
    advanced = ledger.advance(FEB_MS)
    assert advanced.breakage_entries == 1
    rows = grant_rows(billing, FEB_MS)
    assert rows == {"T": (0, 5, 5), ROLLED: (5, 0, 0)}
    assert breakage(billing) == [("T", 5)]
    made = {g[0]: (g[1], g[2] // PICOS, g[4], g[5], g[7]) for g in billing.kernel.made_grants("acme")}
    feb_end = EPOCH_MS + (31 + 28) * 86_400_000  # the end of February's period: the next one
    assert made == {ROLLED: ("ROLLOVER", 5, FEB_MS, feb_end, "T")}
    assert january_balances(billing) == before


def test_a_journal_stored_before_the_flag_replays_to_the_old_result() -> None:
    """The command as stored before the field existed (no key for it): T simply expires at the tie, all 10 break and
    nothing rolls over; replaying the journal gives the same state."""
    ledger, command = scenario(new_rule=False)
    assert "expiring_at_rollover_rolls" not in msgspec.msgpack.decode(msgspec.msgpack.encode(command))
    billing = ledger.billing
    before = january_balances(billing)
    assert before == [("T", 10, 0, 0, 10)]
    ledger.advance(FEB_MS)
    assert grant_rows(billing, FEB_MS) == {"T": (0, 10, 0)}
    assert breakage(billing) == [("T", 10)]
    assert billing.kernel.made_grants("acme") == []
    assert january_balances(billing) == before
    replayed = ledger.replayed()
    replayed.refresh_tables()
    billing.refresh_tables()
    assert replayed.kernel.snapshot() == billing.kernel.snapshot()


def test_the_new_rule_survives_replay_and_a_snapshot_restore() -> None:
    """The flag is taken from the tables when they are installed, not stored in the kernel's snapshot: a machine
    restored from a snapshot taken before the tie, and a replayed one, roll T over as the original does."""
    ledger, _ = scenario(new_rule=True)
    restored = Billing.from_snapshot(ledger.billing.encode_snapshot())
    restored.refresh_tables()
    ledger.advance(FEB_MS)
    restored.apply(cmd.AdvanceClock(FEB_MS, "clock"), restored.last_seq + 1)
    replayed = ledger.replayed()
    for billing in (restored, replayed):
        billing.refresh_tables()
        assert grant_rows(billing, FEB_MS) == {"T": (0, 5, 5), ROLLED: (5, 0, 0)}
        assert breakage(billing) == [("T", 5)]
    ledger.billing.refresh_tables()
    assert replayed.kernel.snapshot() == ledger.billing.kernel.snapshot()


def test_a_grant_expiring_before_its_rollover_still_simply_expires() -> None:
    """Only the tie changed: expiring one millisecond before the period's end, T breaks whole under the new rule."""
    world = basic_world()
    command = world.grant_command(
        "T", "10", paid="10", rollover_fraction="0.5", starts_at_ms=EPOCH_MS, expires_at_ms=FEB_MS - 1
    )
    world.apply(msgspec.structs.replace(command, use_ends_at_rollover=True, expiring_at_rollover_rolls=True))
    ledger = Ledger(world)
    assert january_balances(ledger.billing) == [("T", 10, 0, 0, 10)]
    ledger.advance(FEB_MS)
    assert grant_rows(ledger.billing, FEB_MS) == {"T": (0, 10, 0)}
    assert breakage(ledger.billing) == [("T", 10)]


def test_the_flag_is_not_part_of_a_retry_fingerprint() -> None:
    """A retry of a grant stored before the field existed (its fingerprint taken without it) is the same request."""
    _, command = scenario(new_rule=False)
    assert fingerprint(msgspec.structs.replace(command, expiring_at_rollover_rolls=True)) == fingerprint(command)
