"""The kernel's period calendar through its binding (engine/kernel/src/route.rs `period_containing`): months
anchored on a contract's start, clamped to month ends, found from the anchor on either side of it, and total on
every i64 (an instant outside its domain, years -5060 to 16029, is clamped into it)."""

from __future__ import annotations

from datetime import UTC, datetime

from engine._kernel import period_containing
from engine.instants import LATEST_MS


def ms(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, milli: int = 0) -> int:
    return int(datetime(year, month, day, hour, minute, second, tzinfo=UTC).timestamp()) * 1000 + milli


def test_periods_clamp_to_month_ends_on_either_side_of_the_anchor() -> None:
    jan_31 = ms(2026, 1, 31)
    assert period_containing(jan_31, ms(2026, 2, 10)) == (jan_31, ms(2026, 2, 28))
    assert period_containing(jan_31, ms(2026, 3, 5)) == (ms(2026, 2, 28), ms(2026, 3, 31))
    # Before the anchor: the same calendar extrapolated backwards.
    assert period_containing(jan_31, ms(2026, 1, 15)) == (ms(2025, 12, 31), jan_31)
    assert period_containing(jan_31, ms(2024, 2, 29, 12)) == (ms(2024, 2, 29), ms(2024, 3, 31))


def test_the_latest_anchor_finds_a_period_at_1970_without_walking_the_months_between() -> None:
    last_ms_of_day = (23, 59, 59, 999)
    assert ms(8999, 12, 31, *last_ms_of_day) == LATEST_MS
    assert period_containing(LATEST_MS, LATEST_MS) == (LATEST_MS, ms(9000, 1, 31, *last_ms_of_day))
    assert period_containing(LATEST_MS, 0) == (ms(1969, 12, 31, *last_ms_of_day), ms(1970, 1, 31, *last_ms_of_day))


def test_instants_past_the_domain_get_the_period_of_its_edge() -> None:
    for anchor in (0, LATEST_MS):
        assert period_containing(anchor, -(2**63)) == period_containing(anchor, -LATEST_MS)
        assert period_containing(anchor, 2**63 - 1) == period_containing(anchor, 2 * LATEST_MS)
        start, end = period_containing(anchor, -LATEST_MS)
        assert start <= -LATEST_MS < end
