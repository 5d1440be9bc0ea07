"""What grows over a customer's life, in process (engine.billing.Billing driven as the server's writer drives it):
ended reservations are remembered for the dedupe window only, also when nothing else ever falls due."""

from __future__ import annotations

import pytest

from engine.errors import AlreadyExists
from tests.test_kernel_credits import DAY_MS, T0, assert_replays, ledger

WINDOW_MS = 35 * DAY_MS  # README "Limits and backpressure": the dedupe window, 35 days


def test_an_ended_reservation_is_forgotten_after_the_window_though_nothing_else_falls_due() -> None:
    """README "Reservations": "A customer's ids are remembered 35 days (the dedupe window) after the reservation
    ended"; docs/architecture.md §5: "after that the id is unknown". acme (100 credits, no expiry) holds 30 under
    r1 at T0 and releases it at T0 + 1 s; the clock's tick at the hold's former TTL (T0 + 61 s, which the clock's
    lower bound still asks for) finds nothing due, and nothing else ever falls due. At T0 + 1 s + 35 days - 1 ms r1
    is still remembered: another request under it is ALREADY_EXISTS. From T0 + 1 s + 35 days the clock has the
    forgetting due: its AdvanceClock is applied (a record), and r1 for 31 is a new hold (31 held, 69 available).
    Before, forgetting alone never made the clock due: the AdvanceClock was Repeated (no record), r1 was remembered
    for good (ALREADY_EXISTS "reservation_id 'r1' is already used by a different request of this customer"), and
    a gateway whose holds all settle in time kept every id it ever used."""
    m = ledger()
    m.reserve("r1", 30, T0)
    m.release("r1", T0 + 1_000)
    m.advance(T0 + 61_000)
    forgotten_at_ms = T0 + 1_000 + WINDOW_MS
    records = len(m.records)
    m.advance(forgotten_at_ms - 1)
    assert len(m.records) == records  # nothing due yet: no record
    with pytest.raises(AlreadyExists, match="already used by a different request"):
        m.reserve("r1", 31, forgotten_at_ms - 1)
    m.advance(forgotten_at_ms)
    again = m.reserve("r1", 31, forgotten_at_ms + 1)  # before: AlreadyExists
    assert (again.allowed, again.repeated, again.held, again.available) == (True, False, 31 * 10**12, 69 * 10**12)
    assert len(m.records) == records + 2, "the AdvanceClock that forgot, then the hold"
    assert_replays(m)
