"""Where the server's CPU goes during ingest, thread by thread: the split `make bench`'s "server CPU per event" does
not show.

`python -m server.bench.thread_cpu [--customers N] [--batches 800] [--runs 3] [--serve-arg ARG ...]` starts `tariff
serve` with the bench's flags on a fresh data directory, seeds it as the bench does, and drives the bench's ingest load
(one generator, 2 streams of 1,000-event batches, 4 in flight, as fast as the server acks) `--runs` times. Around each
run it reads every server thread's time on a CPU (`/proc/PID/task/*/schedstat`, in ns, so short runs still resolve)
and prints, per thread name (threads of one name added, gRPC's pollers for one; the event loop, the process's main
thread, as "event-loop", apart from the other threads the OS names "python"), µs per accepted event, with the
process's total from `/proc/PID/stat` and the bytes it wrote to disk per event (`write_bytes` of `/proc/PID/io`: the
pages it dirtied, counted when dirtied) beside it, then the server's log lines of its snapshots and dedupe
compactions. A measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

# The name the process's main thread is reported under: the server's event loop runs there. Its OS name is
# "python", as is that of gRPC's poller thread (which waits on gRPC's completion queue and wakes the loop).
EVENT_LOOP = "event-loop"


def thread_cpu_ns(pid: int) -> dict[int, tuple[str, int]]:
    """(name, ns on a CPU so far) of each live thread of `pid`, by thread id; the main thread is EVENT_LOOP. A
    thread that ends between the listing and its read is left out."""
    return _per_thread(pid, lambda task: int(Path(f"/proc/{pid}/task/{task}/schedstat").read_text().split()[0]))


def thread_minor_faults(pid: int) -> dict[int, tuple[str, int]]:
    """(name, minor page faults so far) of each live thread of `pid`, by thread id: field 10 of its `stat`, counted
    after the `)` that ends the thread's name."""
    return _per_thread(
        pid, lambda task: int(Path(f"/proc/{pid}/task/{task}/stat").read_text().rsplit(")", 1)[1].split()[7])
    )


def _per_thread(pid: int, counter: Callable[[str], int]) -> dict[int, tuple[str, int]]:
    threads: dict[int, tuple[str, int]] = {}
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            name = EVENT_LOOP if int(task) == pid else Path(f"/proc/{pid}/task/{task}/comm").read_text().strip()
            threads[int(task)] = (name, counter(task))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return threads


def written_bytes(pid: int) -> int:
    """The bytes `pid` caused to be written to disk so far (`write_bytes` of /proc/PID/io)."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


def per_1000_events_by_name(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], events: int
) -> dict[str, float]:
    """Each thread name's count between two readings per 1,000 events."""
    return {name: round(n / events * 1000, 2) for name, n in _counted_by_name(before, after).items()}


def cpu_us_per_event_by_name(
    before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]], events: int
) -> dict[str, float]:
    """µs per event each thread name spent between two readings (in ns)."""
    return {name: round(ns / events / 1000, 3) for name, ns in _counted_by_name(before, after).items()}


def _counted_by_name(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, int]:
    """Each thread name's count between two readings, largest first, zeros left out; a thread started in between
    counts from zero."""
    counted: dict[str, int] = defaultdict(int)
    for tid, (name, count) in after.items():
        counted[name] += count - before.get(tid, (name, 0))[1]
    return {name: n for name, n in sorted(counted.items(), key=lambda kv: -kv[1]) if n}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--batches", type=int, default=800, help="1,000-event batches a run (the bench's default)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--serve-arg",
        action="append",
        default=[],
        help="an extra `tariff serve` argument; one that starts with -- goes after =: --serve-arg=--no-explain-index",
    )
    return parser.parse_args()


def main() -> None:
    from server.bench.seed import build_kernel_tables, seed
    from server.bench.workloads import WARMUP_BATCHES, Bench, BenchConfig

    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="thread-cpu-"))
    bench = Bench(BenchConfig.for_trace(work, args.runs, args.customers, args.batches))
    runs: list[dict[str, Any]] = []
    try:
        server = bench.start_tariff("tariff", tuple(args.serve_arg))
        seed(server.target, args.customers)
        build_kernel_tables(server.target)
        bench.ingest(server, WARMUP_BATCHES)
        for _ in range(args.runs):
            before, process_before_s = thread_cpu_ns(server.pid), server.cpu_s()
            written_before, faults_before = written_bytes(server.pid), thread_minor_faults(server.pid)
            run = bench.ingest(server, args.batches)
            after, process_after_s = thread_cpu_ns(server.pid), server.cpu_s()
            faults_after = thread_minor_faults(server.pid)
            written = written_bytes(server.pid) - written_before
            runs.append(
                {
                    "events_s": round(run.events_s),
                    "accepted": run.accepted,
                    "process_us_per_event": round((process_after_s - process_before_s) / run.accepted * 1e6, 3),
                    "written_bytes_per_event": round(written / run.accepted, 1),
                    "threads_us_per_event": cpu_us_per_event_by_name(before, after, run.accepted),
                    "threads_minor_faults_per_1000_events": per_1000_events_by_name(
                        faults_before, faults_after, run.accepted
                    ),
                }
            )
            print(json.dumps(runs[-1]), flush=True)
        # What the snapshot's thread did meanwhile: its stores and dedupe compactions, as the server logged them.
        for line in server.log_path.read_text(errors="replace").splitlines():
            if "snapshot seq=" in line or "segments compacted" in line:
                print(line.strip(), flush=True)
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"loadavg": os.getloadavg(), "runs": runs}, indent=1))


if __name__ == "__main__":
    main()
