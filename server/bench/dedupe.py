"""The dedupe workload: ingest with a full dedupe window against ingest with a nearly empty one (DESIGN §6).

Every accepted transaction id stays in the dedupe window for 35 days, so a server that has taken N events holds N
ids. On the bench's main server (seeded, already measured by the other workloads), it measures `--runs` ingest runs,
fills the window with `--dedupe-ids` more accepted events (fresh ids stamped into pre-encoded batches,
seed.stamped_batches, so the generator keeps up), then measures `--runs` ingest runs again: run i after the fill
over run i before it is ratio i. It also reports the resident memory (RssAnon) and the data directory's growth per
id filled: the disk figure is the journal of the filling events themselves (their raw batches) plus the ids in
snapshots, since an id is only ever stored with its event. Beside it, the bytes the server process wrote to disk
per id filled (`write_bytes` in /proc/PID/io: the journal, the snapshots, the explain index, each LMDB page as
often as it was dirtied): how much more than its growth the data directory costs the disk.
"""

from __future__ import annotations

import statistics
from pathlib import Path

from server.bench import loadgen
from server.bench.drive import drive
from server.bench.report import Figure, WorkloadResult
from server.bench.workloads import Bench, IngestRun, progress

DEDUPE_TARGET_IDS = 100_000_000
DEDUPE_TARGET_RATIO = 0.8
# The filling stream keeps more batches in flight than the measured runs: it is throughput, not latency.
FILL_BATCHES_IN_FLIGHT = 8
FILL_TIMEOUT_S = 3 * 3600.0


def _directory_bytes(path: Path) -> int:
    return sum(entry.stat().st_size for entry in path.rglob("*") if entry.is_file())


def _written_bytes(pid: int) -> int:
    """Bytes the process caused to be written to storage so far (the page cache's dirtied pages included)."""
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("write_bytes:"):
                return int(line.split()[1])
    raise RuntimeError("no write_bytes in /proc io")


def _fill(bench: Bench, target: str, ids: int) -> IngestRun:
    config = bench.config
    spec = bench.ingest_spec(target, max(1, ids // config.batch_events))
    spec["prebuild"] = False
    spec["stamped"] = True
    spec["batches_in_flight"] = FILL_BATCHES_IN_FLIGHT
    spec["call_timeout_s"] = FILL_TIMEOUT_S
    return IngestRun.of(drive(loadgen.ingest_worker, [spec], bench.main, timeout_s=FILL_TIMEOUT_S))


def dedupe_workload(bench: Bench) -> WorkloadResult:
    """Ingest events/s with `dedupe_ids` more ids in the window over ingest before they were added, RAM and disk per id."""
    config = bench.config
    server = bench.main_server()
    data_dir = server.log_path.parent / "data"  # Bench.start_tariff's layout
    before = [bench.ingest(server, config.ingest_batches) for _ in range(config.runs)]
    ids_before = bench.events_ingested
    rss_before, disk_before = server.rss_bytes("RssAnon"), _directory_bytes(data_dir)
    written_before = _written_bytes(server.pid)
    progress(f"filling the dedupe window with {config.dedupe_ids:,} ids")
    fill = _fill(bench, server.target, config.dedupe_ids)
    if fill.accepted != fill.sent:
        raise RuntimeError(f"the fill accepted {fill.accepted:,} of {fill.sent:,} events: {fill.reject_samples}")
    rss_after, disk_after = server.rss_bytes("RssAnon"), _directory_bytes(data_dir)
    written_after = _written_bytes(server.pid)
    after = [bench.ingest(server, config.ingest_batches) for _ in range(config.runs)]
    ratios = [a.events_s / b.events_s if b.events_s else 0.0 for a, b in zip(after, before, strict=True)]
    judged = fill.accepted >= DEDUPE_TARGET_IDS
    result = WorkloadResult("dedupe")
    result.figures = [
        Figure("ingest events/s, window before the fill", "ev/s", [r.events_s for r in before]),
        Figure(
            f"ingest events/s, {fill.accepted:,} more ids in the window",
            "ev/s",
            [r.events_s for r in after],
            reference="window before the fill",
            ratios=ratios,
            target=f"≥ {DEDUPE_TARGET_RATIO:g} × before, at {DEDUPE_TARGET_IDS:,} ids",
            met=statistics.median(ratios) >= DEDUPE_TARGET_RATIO if judged else None,
        ),
        Figure("filling events/s", "ev/s", [fill.events_s]),
        Figure("anon RSS per id in the window", "bytes", [(rss_after - rss_before) / fill.accepted]),
        Figure(
            "data directory growth per id (journal + snapshots)", "bytes", [(disk_after - disk_before) / fill.accepted]
        ),
        Figure(
            "bytes the server wrote to disk per id filled", "bytes", [(written_after - written_before) / fill.accepted]
        ),
    ]
    result.details = {
        "ids_before_fill": ids_before,
        "ids_filled": fill.accepted,
        "rss_anon_before_bytes": rss_before,
        "rss_anon_after_bytes": rss_after,
        "data_dir_before_bytes": disk_before,
        "data_dir_after_bytes": disk_after,
        "server_written_before_bytes": written_before,
        "server_written_after_bytes": written_after,
    }
    if not judged:
        result.notes.append(
            f"dedupe: the window was filled with {fill.accepted:,} ids, fewer than the target's "
            f"{DEDUPE_TARGET_IDS:,} (`--full` fills {DEDUPE_TARGET_IDS:,}), so 'met' is not judged"
        )
    return result
