"""tests/month_turn.py on a fake clock: the wait that keeps a module inside one calendar month (UTC)."""

from __future__ import annotations

from datetime import UTC, datetime

from tests.month_turn import MONTH_ENDING_S, MONTH_STARTED_S, month_start_s, month_turn_wait_s


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_mid_month_nothing_is_waited() -> None:
    assert month_turn_wait_s(at("2026-12-15 12:00:00")) == 0


def test_in_a_months_last_seconds_it_waits_until_the_next_is_under_way() -> None:
    # 23:59:30 on 31 December: 30 s left of the month (< 120): until 00:01:30 on 1 January, 120 s.
    assert month_turn_wait_s(at("2026-12-31 23:59:30")) == 30 + MONTH_STARTED_S
    assert month_turn_wait_s(at("2027-02-28 23:58:01")) == 119 + MONTH_STARTED_S  # February, a year on
    assert month_turn_wait_s(at("2026-12-31 23:58:00")) == 0  # exactly 120 s left: the module has its 120 s


def test_in_a_months_first_seconds_it_waits_until_they_are_past() -> None:
    assert month_turn_wait_s(at("2027-01-01 00:00:00")) == MONTH_STARTED_S
    assert month_turn_wait_s(at("2027-01-01 00:01:00")) == 30
    assert month_turn_wait_s(at("2027-01-01 00:01:30")) == 0


def test_after_any_wait_the_module_has_its_margin_inside_one_month() -> None:
    # Every 10 s across a turn: where the wait ends, the month began at least MONTH_STARTED_S before and ends at
    # least MONTH_ENDING_S after, so a test's "this month" and the server's are the same month throughout.
    for step in range(-60, 60):
        now = at("2027-01-01 00:00:00") + 10 * step
        then = now + month_turn_wait_s(now)
        assert then - month_start_s(then) >= MONTH_STARTED_S
        assert month_start_s(then, 1) - then >= MONTH_ENDING_S
