"""A grant with a rollover fraction is usable only for usage dated before its rollover (contracts.proto,
Grant.rollover_fraction: it "lasts until the end of the billing period in which it starts"), for grants granted by
a GrantCredits that says so (`use_ends_at_rollover`, set by the server for every request it takes). A journal
stored before the field existed has commands without it and must replay exactly as it did: such grants keep the
older rule, paying whatever they hold until the clock rolls them over.

The scenario: January's period (contract from 2026-01-01) ends at FEB_MS; grant R of 10 credits with fraction 0.5
is the only grant (ALLOW, overage at 1); 4 tokens (4 credits) dated FEB_MS + 1 s arrive before any AdvanceClock
reaches FEB_MS."""

from __future__ import annotations

import msgspec
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.control import fingerprint
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import EPOCH_MS, basic_world

PICOS = 10**12
FEB_MS = EPOCH_MS + 31 * 86_400_000
LATE_MS = FEB_MS + 1_000  # the late usage's date, in February's period
BEFORE_MS = FEB_MS - 10_000  # when it arrives


def scenario(*, new_rule: bool) -> tuple[Ledger, cmd.GrantCredits]:
    world = basic_world()
    command = world.grant_command("R", "10", rollover_fraction="0.5", starts_at_ms=EPOCH_MS)
    if new_rule:
        command = msgspec.structs.replace(command, use_ends_at_rollover=True)
    world.apply(command)
    ledger = Ledger(world)
    ack = ledger.ingest([event("late", LATE_MS, 4)], BEFORE_MS)
    assert ack.accepted == 1
    return ledger, command


def grant_rows(billing: Billing, now_ms: int) -> dict[str, tuple[int, int, int]]:
    """grant id -> (remaining, expired, drawn) in credits."""
    view = billing.kernel.balance("acme", now_ms)
    assert view is not None
    return {
        g: (remaining // PICOS, expired // PICOS, drawn // PICOS) for g, _, remaining, expired, drawn in view["grants"]
    }


def overage(billing: Billing, now_ms: int) -> int:
    view = billing.kernel.balance("acme", now_ms)
    assert view is not None
    return view["overage"] // PICOS


def test_usage_dated_after_the_rollover_is_overage_and_the_whole_remainder_rolls_over() -> None:
    ledger, _ = scenario(new_rule=True)
    billing = ledger.billing
    assert grant_rows(billing, BEFORE_MS)["R"] == (10, 0, 0)
    assert overage(billing, LATE_MS) == 4
    # Authorize at an instant past the period's end, before the clock has rolled R over: R does not pay it, the
    # ROLLOVER grant the clock will make of it (5) does, as usage received then would find it (the writer records
    # the rollover first); the kernel's own state, which journaled changes read, still has R unrolled.
    decision = billing.kernel.authorize("acme", "ai", [], [("tokens", 4.0)], LATE_MS)
    assert decision[:2] == (True, "OK") and decision[4] == 5 * PICOS
    assert billing.kernel.authorize("acme", "ai", [], [("tokens", 6.0)], LATE_MS)[:2] == (True, "OVERAGE_ALLOWED")
    assert billing.kernel.balance("acme", LATE_MS)["remaining"] == 0  # type: ignore[index]
    assert billing.kernel.balance("acme", LATE_MS, projected=True)["remaining"] == 5 * PICOS  # type: ignore[index]
    # At the same instant before the end, R's 10 pay it.
    assert billing.kernel.authorize("acme", "ai", [], [("tokens", 4.0)], BEFORE_MS)[:2] == (True, "OK")
    ledger.advance(FEB_MS + 2_000)
    rows = grant_rows(billing, FEB_MS + 2_000)
    rolled = f"rollover-R-{FEB_MS}"
    assert rows[rolled] == (5, 0, 0)
    assert rows["R"] == (0, 5, 5)  # 5 broke; the 5 that moved to the ROLLOVER grant count as drawn from R
    assert [(g, c // PICOS) for _, g, _, c, _ in billing.kernel.breakage("acme")] == [("R", 5)]


def test_a_journal_stored_before_the_flag_replays_to_the_old_result() -> None:
    """The command as stored before the field existed (no key for it): R pays the late 4 and only 3 roll over; the
    stored bytes of that command are unchanged, and replaying the journal gives the same state."""
    ledger, command = scenario(new_rule=False)
    assert "use_ends_at_rollover" not in msgspec.msgpack.decode(msgspec.msgpack.encode(command))
    billing = ledger.billing
    assert overage(billing, LATE_MS) == 0
    assert grant_rows(billing, BEFORE_MS)["R"] == (6, 0, 4)
    ledger.advance(FEB_MS + 2_000)
    rows = grant_rows(billing, FEB_MS + 2_000)
    assert rows[f"rollover-R-{FEB_MS}"] == (3, 0, 0)
    assert rows["R"] == (0, 3, 7)
    replayed = ledger.replayed()
    replayed.refresh_tables()
    billing.refresh_tables()
    assert replayed.kernel.snapshot() == billing.kernel.snapshot()


def test_the_new_rule_survives_replay_and_a_snapshot_restore() -> None:
    """The bound is derived when tables are installed, not stored in the kernel's snapshot: a replayed machine and
    one restored from a snapshot both refuse R for a second late event."""
    ledger, _ = scenario(new_rule=True)
    restored = Billing.from_snapshot(ledger.billing.encode_snapshot())
    for billing in (ledger.replayed(), restored):
        billing.refresh_tables()
        batch = usage_pb2.UsageBatch(batch_id="b-late2", events=[event("late2", LATE_MS, 2)]).SerializeToString()
        assert billing.ingest(batch, BEFORE_MS + 1).accepted == 1
        assert overage(billing, LATE_MS) == 6
        assert grant_rows(billing, BEFORE_MS)["R"] == (10, 0, 0)


def test_the_flag_is_not_part_of_a_retry_fingerprint() -> None:
    """A retry of a grant stored before the field existed (its fingerprint taken without it) is the same request."""
    _, command = scenario(new_rule=False)
    assert fingerprint(msgspec.structs.replace(command, use_ends_at_rollover=True)) == fingerprint(command)
