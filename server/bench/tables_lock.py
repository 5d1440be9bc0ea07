"""How long a read waits while the kernel's tables are installed, measured in-process:
`python -m server.bench.tables_lock [--customers N] [--loads L]`.

Builds the re-rating bench's machine (server/bench/rerate.py: N customers on one rate card, a day of usage), then
one thread reads balances (Kernel.balance, what GetBalance and Authorize read on the event loop) in a loop while
another loads the whole tables L times (Kernel.load_tables: compiled under a shared lock, installed under the
exclusive one), as a publish did, then publishes L versions, each appended to the tables (Kernel.append_version),
as a publish does now. Prints the reads' latency with no load going on and during the loads, with the
five longest: a read arriving as an install starts waits for all of it, so with L loads the L longest reads are
about what each install holds the lock alone for (on a busy machine, compare with the longest reads alone). The
clock is read here only.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time

from engine import commands as cmd
from engine._kernel import Kernel
from engine.billing import Billing
from engine.tables import TableCompiler
from engine.tables_paced import compile_all_steps, drain
from server.bench.rerate import ACTOR, HOUR_MS, START_MS, build, ingest, rates


def reads(
    kernel: Kernel, customer_ids: list[str], stop: threading.Event, out: list[float], at_ms: int = START_MS
) -> None:
    """Reads the customers' balances at at_ms in turn until `stop`, each read's wall time appended to `out`."""
    clock = time.perf_counter
    n = 0
    while not stop.is_set():
        at = clock()
        kernel.balance(customer_ids[n % len(customer_ids)], at_ms)
        out.append(clock() - at)
        n += 1


def figures(name: str, latencies: list[float]) -> str:
    ordered = sorted(latencies)
    p99 = ordered[int(len(ordered) * 0.99)] if ordered else 0.0
    return (
        f"{name}: {len(ordered)} reads, median {1e6 * statistics.median(ordered):.1f} µs, "
        f"p99 {1e6 * p99:.1f} µs, longest {', '.join(f'{1e3 * t:.1f}' for t in ordered[:-6:-1])} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--hours", type=int, default=24)
    parser.add_argument("--loads", type=int, default=5)
    args = parser.parse_args()
    billing = build(args.customers)
    ingest(billing, args.customers, args.hours)
    billing.refresh_tables()
    compiler = TableCompiler(future_skew_ms=billing.future_skew_ms, dedupe_window_ms=billing.dedupe_window_ms)
    tables = drain(compile_all_steps(compiler, billing.engine.state))
    kernel = billing.kernel
    customer_ids = sorted(billing.engine.state.customers)
    print(f"set up: {args.customers} customers, tables {len(tables):,} bytes")

    for name, loading in (("reads alone", False), ("reads during loads", True)):
        stop = threading.Event()
        latencies: list[float] = []
        reader = threading.Thread(target=reads, args=(kernel, customer_ids, stop, latencies))
        reader.start()
        load_s: list[float] = []
        for _ in range(args.loads):
            if loading:
                at = time.perf_counter()
                kernel.load_tables(tables)
                load_s.append(time.perf_counter() - at)
            else:
                time.sleep(0.05)
        stop.set()
        reader.join()
        print(figures(name, latencies))
        if load_s:
            print(f"loads: {len(load_s)}, {1e3 * statistics.median(load_s):.1f} ms median each")
    appends(billing, customer_ids, args.hours, args.loads)


def appends(billing: Billing, customer_ids: list[str], hours: int, count: int) -> None:
    """Reads while `count` versions are published (effective after the usage: nothing to re-rate) and each is
    appended to the kernel's tables (Billing.refresh_tables: Kernel.append_version), as a publish does now."""
    stop = threading.Event()
    latencies: list[float] = []
    reader = threading.Thread(target=reads, args=(billing.kernel, customer_ids, stop, latencies))
    reader.start()
    append_s: list[float] = []
    for n in range(count):
        effective_ms = START_MS + (hours + 1 + n) * HOUR_MS
        billing.apply(
            cmd.CreateDraftVersion(START_MS, ACTOR, "card", 0, {}, (), rates("0.02"), (), ""), billing.last_seq + 1
        )
        number = max(v.number for v in billing.engine.state.rate_cards["card"].versions)
        billing.apply(cmd.PublishVersion(START_MS, ACTOR, "card", number, effective_ms), billing.last_seq + 1)
        at = time.perf_counter()
        billing.refresh_tables()
        append_s.append(time.perf_counter() - at)
        time.sleep(0.05)
    stop.set()
    reader.join()
    print(figures("reads during appends", latencies))
    print(f"appends: {len(append_s)}, {1e3 * statistics.median(append_s):.2f} ms median each (refresh_tables)")


if __name__ == "__main__":
    main()
