"""How long a read waits while a month's end expires every customer's grant, in process:
`python -m server.bench.clock_lock [--customers N]`."""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from engine import commands as cmd
from engine.control import default_contract_id
from engine.credits import Advanced
from engine.ledger import GrantKind
from server.bench.gc_pause import seeded
from server.bench.month_end import next_month_start_ms
from server.bench.seed import customer_id, month_start
from server.bench.tables_lock import reads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=10_000)
    args = parser.parse_args()
    billing = seeded(args.customers)
    start_ms = int(month_start().timestamp() * 1000)
    end_ms = next_month_start_ms()
    customer_ids = [customer_id(i) for i in range(args.customers)]
    for c in customer_ids:
        grant = cmd.GrantCredits(
            start_ms,
            "bench",
            f"{c}-promo",
            c,
            default_contract_id(c, start_ms),
            GrantKind.PROMOTIONAL,
            "100",
            "0",
            0,
            (),
            None,
            end_ms,
            "",
            use_ends_at_rollover=True,
        )
        billing.apply(grant, billing.last_seq + 1)
    billing.refresh_tables()
    stop = threading.Event()
    latencies: list[float] = []
    reader = threading.Thread(target=reads, args=(billing.kernel, customer_ids, stop, latencies, end_ms))
    reader.start()
    time.sleep(0.05)
    at = time.perf_counter()
    advanced = billing.apply(cmd.AdvanceClock(end_ms + 1, "bench"), billing.last_seq + 1)
    advance_ms = (time.perf_counter() - at) * 1e3
    time.sleep(0.05)
    stop.set()
    reader.join()
    ordered = sorted(latencies)
    assert isinstance(advanced, Advanced)
    shown = f"{advanced.breakage_entries:,} breakage entries, {advanced.reservations_expired} holds expired"
    print(
        f"{args.customers:,} customers, AdvanceClock {advance_ms:.1f} ms ({shown}); reads: {len(ordered)}, "
        f"median {1e6 * statistics.median(ordered):.1f} µs, p99 {1e6 * ordered[int(len(ordered) * 0.99)]:.1f} µs, "
        f"longest {', '.join(f'{1e3 * t:.2f}' for t in ordered[:-4:-1])} ms"
    )


if __name__ == "__main__":
    main()
