"""Keeping a test module inside one calendar month (UTC) of the wall clock.

A billing period here is a calendar month, and the server reads the same machine clock as the tests: a test that
works out "the current month" from `datetime.now` or `now_ms()` (a period's start, a top-up's id
`top-up-<period start>-N`, usage dated a minute back in this period, "this month's" invoice) and a server that
rates, buys or reads at its own "now" agree only while both instants lie in one month. Run across a month's turn,
such a test fails though nothing is wrong. The server has no clock offset nor fixed start to pin its "now", so the
suite waits the turn out instead (conftest.py's `inside_one_calendar_month`), asserting as much as ever.
"""

from __future__ import annotations

from datetime import UTC, datetime

# A module must start at least this long before its month ends: the whole module then runs inside the month (a
# wire module runs well under 30 s; the margin is 4x that on a loaded machine). With MONTH_STARTED_S the longest
# wait is 210 s, under pytest-timeout's 300 s a test, which counts the fixture setup of a module's first test.
MONTH_ENDING_S = 120.0
# ... and at least this long after it began: usage dated up to a minute back (as the wire tests date it: 60 s
# before now at most, when they date it back at all) falls inside the month too, with 30 s to spare.
MONTH_STARTED_S = 90.0


def month_start_s(at_s: float, months_on: int = 0) -> float:
    """The start (UTC, epoch seconds) of the calendar month holding `at_s`, or of the one `months_on` after it."""
    moment = datetime.fromtimestamp(at_s, UTC)
    index = moment.year * 12 + moment.month - 1 + months_on
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()


def month_turn_wait_s(now_s: float, ending_s: float = MONTH_ENDING_S, started_s: float = MONTH_STARTED_S) -> float:
    """How long to wait at `now_s` (epoch seconds) so that [then, then + ending_s) lies inside one calendar month, at
    least `started_s` after its start: 0 outside a month's last `ending_s` and first `started_s` seconds; in its last
    ones, until `started_s` into the next month; in its first ones, until `started_s` into it."""
    next_start = month_start_s(now_s, 1)
    if next_start - now_s < ending_s:
        return next_start + started_s - now_s
    started = month_start_s(now_s) + started_s
    return max(0.0, started - now_s)
