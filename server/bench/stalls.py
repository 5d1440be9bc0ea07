"""The stall workload: the server's longest event-loop stall during ingest, without and with snapshots.

Two seeded servers run with `--loop-stall-sample-ms` on and a short activity interval: one whose
snapshot thresholds are out of reach (ingest alone), one that snapshots every quarter of an ingest
run. The figure per run is the largest `loop_stall_max_ms` among the activity lines the server wrote
while that run's ingest was going on, read from the server's log file.
"""

from __future__ import annotations

import re
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from server.bench.report import Figure, WorkloadResult
from server.bench.seed import seed
from server.bench.target import ARGPARSE_USAGE_EXIT, ServedProcess, StartFailed
from server.bench.workloads import Bench, NotAvailable, progress

STALL_SAMPLE_MS = 1.0
ACTIVITY_EVERY_S = 0.25
NEVER = str(10**12)
STALL_FIELD = re.compile(r"\bloop_stall_max_ms=([0-9.]+)")
# What the longest stall of an activity line was made of (server/loopstall.py): the loop's CPU, its wait for a CPU.
SPLIT_FIELDS = re.compile(r"\bloop_stall_max_ms=([0-9.]+) loop_stall_cpu_ms=([0-9.]+) loop_stall_runqueue_ms=([0-9.]+)")
SNAPSHOT_STALL_TARGET_MS = 5.0


def _start(bench: Bench, name: str, snapshot_every_events: str, snapshot_every_records: str) -> ServedProcess:
    flags = (
        "--loop-stall-sample-ms",
        str(STALL_SAMPLE_MS),
        "--log-activity-every-s",
        str(ACTIVITY_EVERY_S),
        "--snapshot-every-events",
        snapshot_every_events,
        "--snapshot-every",
        snapshot_every_records,
        "--snapshot-journal-factor",  # the intervals above, however small the journal between snapshots
        "0",
    )
    try:
        return bench.start_tariff(name, flags)
    except StartFailed as e:
        if e.exit_code == ARGPARSE_USAGE_EXIT:
            raise NotAvailable("`tariff serve --loop-stall-sample-ms` is rejected by the CLI") from None
        raise


def longest_stall_ms(log_text: str) -> float | None:
    """The largest loop_stall_max_ms in these log lines; None when no activity line carries one."""
    stalls = [float(match.group(1)) for match in STALL_FIELD.finditer(log_text)]
    return max(stalls) if stalls else None


def longest_stall_split(log_text: str) -> tuple[float, float, float] | None:
    """(stall, loop CPU, wait for a CPU) in ms of the longest stall in these log lines that carries its split."""
    splits = [(float(m.group(1)), float(m.group(2)), float(m.group(3))) for m in SPLIT_FIELDS.finditer(log_text)]
    return max(splits, default=None)


def _stall_during_ingest(
    bench: Bench, server: ServedProcess, batches: int
) -> tuple[float, tuple[float, float, float] | None]:
    offset = server.log_path.stat().st_size
    bench.ingest(server, batches)
    time.sleep(ACTIVITY_EVERY_S * 2)  # the interval that holds the run's end is written
    with open(server.log_path, "rb") as log:
        log.seek(offset)
        text = log.read().decode(errors="replace")
    stall = longest_stall_ms(text)
    if stall is None:
        raise RuntimeError(f"no loop_stall_max_ms in the activity lines; log tail:\n{server.log_tail()}")
    return stall, longest_stall_split(text)


def stall_workload(bench: Bench) -> WorkloadResult:
    """Longest event-loop stall during ingest, and during ingest with snapshots forced every quarter run."""
    config = bench.config
    snapshot_events = max(config.batch_events, config.ingest_batches * config.batch_events // 4)
    plain = _start(bench, "tariff-stall", NEVER, NEVER)
    snapshots = _start(bench, "tariff-snapshots", str(snapshot_events), NEVER)
    try:
        progress(f"seeding {config.customers:,} customers on the 2 stall servers")
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda s: seed(s.target, config.customers), (plain, snapshots)))
        during_ingest: list[float] = []
        during_snapshots: list[float] = []
        splits: dict[str, list[tuple[float, float, float] | None]] = {"ingest": [], "snapshots": []}
        for number in range(config.runs):
            progress(f"stall run {number + 1}/{config.runs}")
            for server, stalls, split in (
                (plain, during_ingest, splits["ingest"]),
                (snapshots, during_snapshots, splits["snapshots"]),
            ):
                stall, of_longest = _stall_during_ingest(bench, server, config.ingest_batches)
                stalls.append(stall)
                split.append(of_longest)
    finally:
        plain.stop()
        snapshots.stop()
    result = WorkloadResult("stall")
    worst = max(during_snapshots)
    result.figures = [
        Figure("longest event-loop stall, ingest", "ms", during_ingest),
        Figure(
            f"longest event-loop stall, ingest + snapshot every {snapshot_events:,} events",
            "ms",
            during_snapshots,
            target=f"no stall > {SNAPSHOT_STALL_TARGET_MS:g} ms during snapshots",
            met=worst <= SNAPSHOT_STALL_TARGET_MS,
        ),
    ]
    result.details = {
        "sample_interval_ms": STALL_SAMPLE_MS,
        "activity_every_s": ACTIVITY_EVERY_S,
        "snapshot_every_events": snapshot_events,
        "customers": config.customers,
        "worst_with_snapshots_ms": worst,
        "median_with_snapshots_ms": statistics.median(during_snapshots),
        # Per run, the longest stall as (ms, of which the loop's CPU, of which waiting for a CPU); the rest is
        # sleep: the GIL or a lock.
        "longest_split_ms": splits,
    }
    result.notes.append(
        f"stall: the server samples its loop every {STALL_SAMPLE_MS:g} ms (`--loop-stall-sample-ms`); each value "
        "is the longest lateness in one ingest run, read from its activity lines; 'met' judges the worst run; "
        "details.longest_split_ms splits each run's longest stall into the loop's CPU and its wait for a CPU"
    )
    return result
