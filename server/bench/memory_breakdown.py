"""Where a seeded customer's heap goes: the bench's seeding commands applied in-process, with and without the kernel.

`python -m server.bench.memory_breakdown --customers 100000` applies server/bench/seed.py's commands (those the
seeding RPCs become) to a Billing, refreshing the kernel's tables every 1,000 customers as a server's writer
would, and prints RssAnon per customer with the kernel loaded and with the control plane alone (each run in
a process of its own, so none inherits another's heap); with --trace, the largest Python allocation sites
(tracemalloc: it misses objects reused from CPython's free lists, so its total is below RssAnon's).
A diagnostic for `make bench-memory`'s figure, not a reported one.
"""

from __future__ import annotations

import argparse
import gc
import subprocess
import sys
import tracemalloc

from engine.billing import Billing
from server.bench.seed import seed_commands

CATALOGUE_COMMANDS = 5  # two products, the rate card, its draft, its publication
REFRESH_EVERY_CUSTOMERS = 1_000
COMMANDS_PER_CUSTOMER = 3


def rss_anon_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no RssAnon in /proc/self/status")


def seeded_bytes_per_customer(customers: int, *, kernel: bool, trace: bool) -> float:
    billing = Billing()
    commands = seed_commands(customers)
    for seq in range(1, CATALOGUE_COMMANDS + 1):
        billing.apply(next(commands), seq)
    billing.refresh_tables()
    gc.collect()
    empty = rss_anon_bytes()
    if trace:
        tracemalloc.start()
    # Without the kernel, straight to the control plane: through Billing, the customers would also wait in its
    # set of customers whose tables are stale (a set the size of the customers), which no refresh ever empties.
    apply = billing.apply if kernel else billing.engine.apply
    for seq, command in enumerate(commands, start=CATALOGUE_COMMANDS + 1):
        apply(command, seq)
        if kernel and (seq - CATALOGUE_COMMANDS) % (REFRESH_EVERY_CUSTOMERS * COMMANDS_PER_CUSTOMER) == 0:
            billing.refresh_tables()
    if kernel:
        billing.refresh_tables()
    gc.collect()
    per_customer = (rss_anon_bytes() - empty) / customers
    if trace:
        snapshot = tracemalloc.take_snapshot()
        tracemalloc.stop()
        stats = snapshot.statistics("lineno")
        print(f"  traced Python allocations: {sum(s.size for s in stats) / customers:,.0f} B per customer")
        for stat in stats[:15]:
            print(f"  {stat.size / customers:8,.0f} B  {stat.traceback}")
    return per_customer


def _in_a_process_of_its_own(customers: int, mode: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "server.bench.memory_breakdown", "--customers", str(customers), "--mode", mode],
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--trace", action="store_true", help="also list the largest Python allocation sites")
    parser.add_argument("--mode", choices=("whole", "control-plane", "trace"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode is not None:
        per_customer = seeded_bytes_per_customer(
            args.customers, kernel=args.mode != "control-plane", trace=args.mode == "trace"
        )
        print(per_customer if args.mode != "trace" else "", end="")
        return
    whole = float(_in_a_process_of_its_own(args.customers, "whole"))
    control_plane = float(_in_a_process_of_its_own(args.customers, "control-plane"))
    print(f"{args.customers:,} customers: RssAnon {whole:,.0f} B per customer")
    print(f"  Python control plane: {control_plane:,.0f} B; kernel (the difference): {whole - control_plane:,.0f} B")
    if args.trace:
        print(_in_a_process_of_its_own(args.customers, "trace"), end="")


if __name__ == "__main__":
    main()
