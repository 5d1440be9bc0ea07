"""How long the garbage collector holds the event loop, in-process, with a seeded state and the server's modules.

`python -m server.bench.gc_pause --customers 50000` imports what `tariff serve` imports, applies server/bench/
seed.py's commands to a Billing (tables refreshed as the writer refreshes them), then times, each several times:
a full collection of everything the collector tracks (what a server that unfreezes and collects pays), a full
collection once everything is frozen (server/app.py's policy after recovery), and a young collection holding as
many live containers as the young generation's threshold lets in. A diagnostic for the loop-stall figures (the
stall bench cannot show a pause that comes every few minutes), not a reported figure.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from collections.abc import Callable

import server.app
from engine.billing import Billing
from server.bench.memory_breakdown import CATALOGUE_COMMANDS, COMMANDS_PER_CUSTOMER, REFRESH_EVERY_CUSTOMERS
from server.bench.seed import seed_commands

REPEATS = 7


def seeded(customers: int) -> Billing:
    billing = Billing()
    for seq, command in enumerate(seed_commands(customers), start=1):
        billing.apply(command, seq)
        if (seq - CATALOGUE_COMMANDS) % (REFRESH_EVERY_CUSTOMERS * COMMANDS_PER_CUSTOMER) == 0:
            billing.refresh_tables()
    billing.refresh_tables()
    return billing


def pause_ms(collect: Callable[[], object]) -> tuple[float, float]:
    """Median and longest wall time of `collect`, in ms."""
    pauses = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        collect()
        pauses.append((time.perf_counter() - started) * 1e3)
    return statistics.median(pauses), max(pauses)


class _Call:
    """Stands for what grpc.aio leaves behind each unary call: a few objects that refer to each other."""

    def __init__(self) -> None:
        self.context: dict[str, object] = {"call": self}
        self.callbacks: list[object] = [self.context]


def young_pause_ms(objects: int) -> tuple[float, float]:
    """A young collection that finds `objects` tracked objects, all of them cyclic garbage, as a server's loop
    leaves them: grpc.aio's server makes ~15 such objects a unary call (its handler lookup's closure, the call's
    state and context refer to each other), so the young generation fills with them under Authorize traffic."""
    pauses = []
    for _ in range(REPEATS):
        gc.collect(0)
        for _ in range(objects // 3):
            _Call()
        started = time.perf_counter()
        gc.collect(0)
        pauses.append((time.perf_counter() - started) * 1e3)
    return statistics.median(pauses), max(pauses)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=50_000)
    args = parser.parse_args()
    billing = seeded(args.customers)
    gc.collect()
    gc.unfreeze()
    tracked = len(gc.get_objects())
    print(f"{args.customers:,} customers, {tracked:,} objects tracked by the collector (modules and state)")
    median, longest = pause_ms(gc.collect)
    print(f"  full collection, nothing frozen:     median {median:6.2f} ms, longest {longest:6.2f} ms")
    server.app.tune_garbage_collector()
    median, longest = pause_ms(gc.collect)
    print(f"  full collection, all that is frozen: median {median:6.2f} ms, longest {longest:6.2f} ms")
    for objects in (2_000, 10_000):
        median, longest = young_pause_ms(objects)
        print(f"  young collection, {objects:,} garbage: median {median:6.2f} ms, longest {longest:6.2f} ms")
    del billing


if __name__ == "__main__":
    main()
