"""What a month's end costs the writer's table refreshes, in process: `python -m server.bench.month_end --customers N`.

Seeds N customers as server/bench/seed.py does (contracts from the start of this month), then closes every period
as the close driver would once the month is over (`CloseDuePeriods`, server/closer.py's 256 periods a command),
refreshing the kernel's tables after each command as the writer does before the next batch, and prints the
refreshes' total, median and longest time. A diagnostic for docs/architecture.md §2, not a reported figure.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime

from engine.errors import Repeated
from server.bench.gc_pause import seeded
from server.bench.seed import month_start
from server.closer import close_due_slice


def next_month_start_ms() -> int:
    start = month_start()
    following = datetime(start.year + start.month // 12, start.month % 12 + 1, 1, tzinfo=UTC)
    return int(following.timestamp() * 1000)


def refreshes_ms(customers: int) -> list[float]:
    """The wall time of the table refresh after each close command of the month's end."""
    billing = seeded(customers)
    at_ms = next_month_start_ms() + 1_000
    timings: list[float] = []
    while True:
        try:
            close = close_due_slice(at_ms, "bench", 0)
            billing.apply(close, billing.last_seq + 1)
        except Repeated:  # nothing left to close
            return timings
        started = time.perf_counter()
        billing.refresh_tables()
        timings.append((time.perf_counter() - started) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=10_000)
    args = parser.parse_args()
    timings = refreshes_ms(args.customers)
    print(
        f"{args.customers:,} customers, {len(timings)} close commands: table refreshes {sum(timings):,.0f} ms in all, "
        f"median {statistics.median(timings):.1f} ms, longest {max(timings):.1f} ms"
    )


if __name__ == "__main__":
    main()
