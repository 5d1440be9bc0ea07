"""The bench's flags and its run: sizes from the flags, workloads in order, the table and the JSON.

Default sizes fit `make bench` in under 10 minutes on the 2-core machine; `--quick` shrinks every
size for a smoke test (its figures mean nothing); `--full` raises recovery to 10 M journaled events and the dedupe
window's fill to 100 M ids.
"""

from __future__ import annotations

import argparse
import functools
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.bench.report import WorkloadResult
    from server.bench.workloads import Bench, BenchConfig

WORKLOAD_NAMES = ("ingest", "telemetry", "authorize", "preview", "recovery", "memory", "stall", "dedupe")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Measure a real server process against reference runs in the same invocation and report each figure "
        "against its target (docs/architecture.md §9)."
    )
    parser.add_argument("--out", type=Path, default=Path("bench.json"), help="JSON file to write (default bench.json)")
    parser.add_argument("--runs", type=int, default=3, help="runs per figure; the table shows their median (default 3)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test, not a measurement")
    parser.add_argument(
        "--full",
        action="store_true",
        help="recovery after 10,000,000 journaled events, dedupe with 100,000,000 ids in the window (slow)",
    )
    parser.add_argument(
        "--only",
        default=",".join(WORKLOAD_NAMES),
        help=f"comma-separated workloads (default: all of {','.join(WORKLOAD_NAMES)})",
    )
    parser.add_argument("--customers", type=int, help="customers seeded (default 10,000)")
    parser.add_argument("--batch-events", type=int, help="events per UsageBatch (default 1,000)")
    parser.add_argument("--batches", type=int, help="batches per ingest run (default 200)")
    parser.add_argument(
        "--events", type=int, help="events journaled before the recovery restart (default 300,000; --full: 10,000,000)"
    )
    parser.add_argument(
        "--dedupe-ids",
        type=int,
        help="ids added to the dedupe window before ingest is measured again (default 10,000,000; --full: 100,000,000)",
    )
    parser.add_argument(
        "--preview-events", type=int, help="events in the previewed customer's period (default 1,000,000)"
    )
    parser.add_argument(
        "--ingest-fraction", type=float, default=0.8, help="ingest load while Authorize is measured (default 0.8)"
    )
    parser.add_argument("--generators", type=int, default=1, help="load-generator processes per ingest run (default 1)")
    parser.add_argument("--streams", type=int, default=2, help="IngestUsage streams per generator (default 2)")
    parser.add_argument("--in-flight", type=int, default=4, help="unacked batches per stream (default 4)")
    parser.add_argument("--no-postgres", action="store_true", help="skip the PostgreSQL reference")
    parser.add_argument(
        "--no-explain-index",
        action="store_true",
        help="serve every Tariff server with --no-explain-index (the ingest path without the explain index's cost)",
    )
    parser.add_argument(
        "--work-dir", type=Path, help="where data directories go (default: a fresh temp dir, removed after)"
    )


def _config(args: argparse.Namespace, work_dir: Path) -> BenchConfig:
    from server.bench.workloads import BenchConfig

    only = tuple(name.strip() for name in args.only.split(",") if name.strip())
    unknown = sorted(set(only) - set(WORKLOAD_NAMES))
    if unknown:
        raise SystemExit(
            f"tariff bench: unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOAD_NAMES)}"
        )
    quick = args.quick
    return BenchConfig(
        runs=args.runs,
        customers=args.customers or (50 if quick else 10_000),
        batch_events=args.batch_events or (100 if quick else 1_000),
        ingest_batches=args.batches or (10 if quick else 200),
        generators=args.generators,
        streams=args.streams,
        batches_in_flight=args.in_flight,
        ingest_fraction=args.ingest_fraction,
        authorize_calls=200 if quick else 2_000,
        stream_decisions=1_000 if quick else 30_000,
        preview_events=args.preview_events or (2_000 if quick else 1_000_000),
        preview_calls=20 if quick else 200,
        recovery_events=args.events or (10_000_000 if args.full else 2_000 if quick else 300_000),
        dedupe_ids=args.dedupe_ids or (100_000_000 if args.full else 20_000 if quick else 10_000_000),
        measure_seconds_max=1.0 if quick else 4.0,
        only=only,
        postgres=not args.no_postgres,
        work_dir=work_dir,
        serve_args=("--no-explain-index",) if args.no_explain_index else (),
    )


def run(args: argparse.Namespace) -> int:
    from server.bench import workloads

    owned_work_dir = args.work_dir is None
    work_dir = Path(tempfile.mkdtemp(prefix="tariff-bench-")) if owned_work_dir else args.work_dir
    work_dir.mkdir(parents=True, exist_ok=True)
    config = _config(args, work_dir)
    bench = workloads.Bench(config)
    started = time.perf_counter()
    print(
        f"tariff bench: runs={config.runs} customers={config.customers} batch={config.batch_events} events, "
        f"work dir {work_dir}",
        file=sys.stderr,
    )
    try:
        results = _run_workloads(bench, config, started)
    finally:
        bench.stop_all()
        if owned_work_dir:
            shutil.rmtree(work_dir, ignore_errors=True)

    machine = workloads.describe_machine()
    _print_results(results, config, machine)
    _write_results_json(args, config, machine, results, started)
    return 0


def _run_workloads(bench: Bench, config: BenchConfig, started: float) -> list[WorkloadResult]:
    """Every workload in `config.only`, in a fixed order; one that fails or is not available is reported as such."""
    from server.bench import dedupe, report, stalls, workloads

    results: list[report.WorkloadResult] = []

    def attempt(name: str, body: Callable[[], report.WorkloadResult | list[report.WorkloadResult]]) -> None:
        print(f"tariff bench: {name} ... ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
        try:
            produced = body()
            results.extend(produced if isinstance(produced, list) else [produced])
        except workloads.NotAvailable as e:
            results.append(report.WorkloadResult(name, "not available", f"not available yet: {e}"))
        except Exception as e:  # one broken workload must not cost the others their figures
            results.append(report.WorkloadResult(name, "failed", f"{type(e).__name__}: {e}"))

    if "ingest" in config.only or "telemetry" in config.only:
        attempt("ingest", lambda: workloads.ingest_workload(bench))
        if "ingest" not in config.only:
            results[:] = [r for r in results if r.name not in ("ingest", "references")]
        if "telemetry" in config.only:
            results.append(
                bench.telemetry_figures or report.WorkloadResult("telemetry", "failed", "ingest did not run")
            )
    after_ingest: list[tuple[str, Callable[[Bench], report.WorkloadResult | list[report.WorkloadResult]]]] = [
        ("authorize", workloads.authorize_workload),
        ("memory", workloads.memory_workload),
        ("preview", workloads.preview_workload),
        ("recovery", workloads.recovery_workload),
        ("stall", stalls.stall_workload),
        ("dedupe", dedupe.dedupe_workload),
    ]
    for name, workload in after_ingest:
        if name in config.only:
            attempt(name, functools.partial(workload, bench))
    return results


def _print_results(results: list[WorkloadResult], config: BenchConfig, machine: dict[str, Any]) -> None:
    """The table of figures on stdout, then the notes: each workload's, and why any did not finish."""
    from server.bench import report

    table = report.table(results)
    print()
    print(
        f"Tariff bench — {machine['cpus']} CPUs ({machine['cpu_model']}), Python {machine['python']}, "
        f"grpcio {machine['grpcio']}; medians of {config.runs} runs (min–max); ratios taken pair by pair per run."
    )
    print("Server and load generators share this machine's cores: the generators take CPU the server would use.")
    print(table)
    notes = [note for r in results for note in r.notes]
    if config.serve_args:
        notes.append(f"every Tariff server ran with {' '.join(config.serve_args)}")
    for r in results:
        if r.status != "ok":
            notes.append(f"{r.name}: {r.reason}")
    if notes:
        print("\nNotes:")
        for note in notes:
            print(f"  - {note}")


def _write_results_json(
    args: argparse.Namespace,
    config: BenchConfig,
    machine: dict[str, Any],
    results: list[WorkloadResult],
    started: float,
) -> None:
    from server.bench import report

    config_json = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(config).items()}
    config_json["quick"] = args.quick
    config_json["full"] = args.full
    config_json["elapsed_s"] = round(time.perf_counter() - started, 1)
    report.write_json(args.out, machine, config_json, results)
    print(f"\nJSON written to {args.out} ({config_json['elapsed_s']} s in all)")
