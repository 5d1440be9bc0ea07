"""Closes billing periods by itself: once a period has been over for the close grace (`tariff serve --close-grace`),
the driver submits one journaled `CloseDuePeriods(now, grace)` command through the writer. The command carries
its time, so replay never reads a clock; the driver only decides when to submit one, and does so only when the
engine says a period is due (its earliest unclosed period end, cached), never by scanning every customer.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable

from engine import commands as cmd
from engine.billing import Billing
from engine.errors import EngineError
from server.sequencer import Sequencer

CLOSE_GRACE_MS_DEFAULT = 24 * 3_600_000
CHECK_EVERY_S = 30.0
# Periods one command closes: each reads a customer's buckets and builds its invoice on the event loop, so a
# backlog (a server started long after periods ended) is closed a slice at a time, other work served between.
PERIODS_PER_COMMAND = 256
ACTOR = "tariff/close-grace"
# ASCII digits only: `\d` alone would also take other scripts' digits (`２４h`), which README's "whole number" is not.
_DURATION = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_UNIT_MS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}

log = logging.getLogger("tariff")


def parse_duration_ms(text: str) -> int | None:
    """`24h`, `30m`, `90s`, `2d`, `0s` -> milliseconds; `off` -> None (never close by itself); ValueError else."""
    if text.strip() == "off":
        return None
    match = _DURATION.match(text.strip())
    if match is None:
        raise ValueError(f"{text!r} is not a duration such as 24h, 30m, 90s or 2d")
    return int(match.group(1)) * _UNIT_MS[match.group(2)]


def close_due_slice(at_ms: int, actor: str, grace_ms: int) -> cmd.CloseDuePeriods:
    """One slice of closing due periods (at most PERIODS_PER_COMMAND), as the server journals it now: every rule a
    close follows today set, so the driver, the CloseDuePeriods RPC and the bench close alike."""
    return cmd.CloseDuePeriods(
        at_ms,
        actor,
        grace_ms,
        PERIODS_PER_COMMAND,
        rollovers_shown=True,
        alerts_evaluated=True,
        adjustments_in_contract=True,
        parts_in_contract=True,
        rolled_breakage_shown=True,
        expired_breakage_shown=True,
        closed_in_journal_order=True,
        spent_grants_left_out=True,
    )


async def close_due_periods(
    billing: Billing, sequencer: Sequencer, grace_ms: int, clock_ms: Callable[[], int], every_s: float = CHECK_EVERY_S
) -> None:
    """Forever: when a period ended at least grace_ms ago, close every such period (one command)."""
    while True:
        now_ms = clock_ms()
        if billing.engine.next_period_end_ms() + grace_ms <= now_ms:
            try:
                _, closed = await sequencer.run(close_due_slice(now_ms, ACTOR, grace_ms))
            except EngineError as exc:  # refused (nothing changed): try again at the next check
                log.warning("closing due periods: %s", exc)
            else:
                assert isinstance(closed, list)
                if closed:
                    log.info("closed %d billing periods past their grace", len(closed))
                if len(closed) == PERIODS_PER_COMMAND:
                    await asyncio.sleep(0)  # more are due: the next slice, after whatever waits
                    continue
        await asyncio.sleep(every_s)
