"""The server's own Python on the event loop during ingest, without gRPC: what `thread_cpu`'s event-loop figure
holds besides grpc.aio's per-message work.

`python -m server.bench.loop_inprocess [--batches 600] [--runs 3]` seeds 10,000 customers into a journal on a fresh
data directory (as the bench's journal seeding does), recovers it, and runs UsageService.IngestUsage and the writer
(Sequencer, LMDB journal synced, rating and journal threads) in this process on uvloop: two streams of `--batches`
1,000-event batches each, 4 in flight each (the bench's shape), fed by async generators instead of gRPC. Around each
run it reads this process's threads' time on a CPU and prints µs per batch: the loop's thread ("event-loop": the
servicer, the writer, and the fake client's few µs) and the writer's threads. A measurement, not a test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

from server.bench.seed import seed_journal, stamped_batches
from server.bench.target import BENCH_MAP_SIZE_MB
from server.bench.thread_cpu import thread_cpu_ns
from server.journal import LmdbJournal
from server.recovery import recover
from server.scheduling import name_os_threads
from server.sequencer import Sequencer
from server.services.usage import UsageService

CUSTOMERS = 10_000
BATCH_EVENTS = 1_000
STREAMS = 2
IN_FLIGHT = 4


class _NoDeadline:
    """The servicer context of a call with no deadline and no metadata."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return ()


async def _stream(service: UsageService, payloads: list[bytes]) -> int:
    """One IngestUsage stream: at most IN_FLIGHT batches sent and not acked, as the bench's generator does."""
    unacked = asyncio.Semaphore(IN_FLIGHT)

    async def requests() -> AsyncIterator[bytes]:
        for payload in payloads:
            await unacked.acquire()
            yield payload

    acks = 0
    async for _ in service.IngestUsage(requests(), _NoDeadline()):
        unacked.release()
        acks += 1
    return acks


def _us_per_batch(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], batches: int
) -> dict[str, float]:
    spent: dict[str, int] = {}
    for tid, (name, ns) in after.items():
        spent[name] = spent.get(name, 0) + ns - before.get(tid, (name, 0))[1]
    return {name: round(ns / batches / 1000, 1) for name, ns in sorted(spent.items(), key=lambda kv: -kv[1]) if ns}


async def _measure(work: Path, batches: int, runs: int) -> None:
    journal = LmdbJournal(work / "journal", map_size_bytes=BENCH_MAP_SIZE_MB * 2**20)
    sequencer = Sequencer(recover(journal), journal)
    sequencer.start()
    name_os_threads()  # the rating, journal and snapshot threads apart
    service = UsageService(sequencer.billing, sequencer)
    try:
        for run in range(runs + 1):  # the first warms up
            payloads = [
                list(stamped_batches(f"r{run}s{s}", CUSTOMERS, BATCH_EVENTS, batches, seed=run * STREAMS + s))
                for s in range(STREAMS)
            ]
            before = thread_cpu_ns(os.getpid())
            acked = sum(await asyncio.gather(*(_stream(service, p) for p in payloads)))
            after = thread_cpu_ns(os.getpid())
            if run:
                print(json.dumps({"batches": acked, "us_per_batch": _us_per_batch(before, after, acked)}), flush=True)
    finally:
        await sequencer.close()
        journal.close()


def main() -> None:
    import uvloop

    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batches", type=int, default=600, help="1,000-event batches a stream, each run")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="loop-inprocess-"))
    try:
        seed_journal(work, CUSTOMERS)
        uvloop.run(_measure(work, args.batches, args.runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
