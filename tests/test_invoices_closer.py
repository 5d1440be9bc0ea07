"""The server's close driver (server/closer.py): it submits one journaled CloseDuePeriods only once a period has
been over for the grace, and a replay of the journal makes the same invoices without reading a clock."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from engine.billing import Billing
from server.closer import close_due_periods, parse_duration_ms
from server.demo import demo_commands
from server.journal import MemoryJournal
from server.recovery import recover
from server.sequencer import Sequencer

NOW_MS = int(datetime(2026, 11, 10, tzinfo=UTC).timestamp() * 1000)  # the demo contract starts on Nov 1
DEC_1_MS = int(datetime(2026, 12, 1, tzinfo=UTC).timestamp() * 1000)
HOUR_MS = 3_600_000


def drive(journal: MemoryJournal, clock_ms: int, grace_ms: int) -> Billing:
    """Loads the demo (first time), then lets the driver wake a few times with the clock at clock_ms."""

    async def main() -> Billing:
        billing = recover(journal)
        sequencer = Sequencer(billing, journal, clock_ms=lambda: clock_ms)
        sequencer.start()
        if billing.last_seq == 0:
            for command in demo_commands(NOW_MS):
                await sequencer.run(command)
        driver = asyncio.create_task(close_due_periods(billing, sequencer, grace_ms, lambda: clock_ms, every_s=0.01))
        await asyncio.sleep(0.1)
        driver.cancel()
        await sequencer.close()
        return billing

    return asyncio.run(main())


def test_periods_close_only_after_the_grace_and_replay_makes_the_same_invoice() -> None:
    journal = MemoryJournal()
    billing = drive(journal, DEC_1_MS + 23 * HOUR_MS, 24 * HOUR_MS)  # November is over, its grace is not
    assert billing.engine.state.invoices == {}
    records = journal.last_seq()
    billing = drive(journal, DEC_1_MS + 24 * HOUR_MS, 24 * HOUR_MS)
    assert journal.last_seq() == records + 1  # one CloseDuePeriods, however often the driver woke
    invoice = billing.engine.invoice("INV-00000001")
    assert (invoice.customer_id, invoice.closed_at_ms, invoice.period_end_ms) == (
        "acme",
        DEC_1_MS + 24 * HOUR_MS,
        DEC_1_MS,
    )
    assert billing.engine.state.accounts["acme"].closed_periods == {invoice.period_start_ms: None}
    replayed = recover(journal)
    assert replayed.engine.state.invoices == billing.engine.state.invoices


def test_close_grace_durations() -> None:
    assert [parse_duration_ms(t) for t in ("24h", "30m", "90s", "2d", "0s", "off")] == [
        86_400_000,
        1_800_000,
        90_000,
        172_800_000,
        0,
        None,
    ]
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration_ms("1 day")
