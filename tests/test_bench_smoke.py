"""`tariff bench --quick` end to end: every workload reports figures or says why it cannot, and ingest loses nothing.

It runs the real bench (its own server processes, reference servers, load-generator processes and, where
PostgreSQL is installed, a throwaway cluster) at tiny sizes. It asserts what the bench reports and that
the ingest accounting adds up, never how fast anything is: speed belongs to `make bench`, not to a test.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import REPO_ROOT

WORKLOADS = ("references", "ingest", "telemetry", "authorize", "memory", "preview", "recovery", "stall", "dedupe")
QUICK_DEDUPE_IDS = 20_000
RUNS = 2
BATCHES = 4
BATCH_EVENTS = 50
# Generous: a guard against a hung bench, not a speed check (pytest runs three files at once).
BENCH_TIMEOUT_S = 420
BENCH_STOP_TIMEOUT_S = 60


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    tmp = tmp_path_factory.mktemp("bench")
    out = tmp / "bench.json"
    bench = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "server.cli",
            "bench",
            "--quick",
            "--runs",
            str(RUNS),
            "--batches",
            str(BATCHES),
            "--batch-events",
            str(BATCH_EVENTS),
            "--out",
            str(out),
            "--work-dir",
            str(tmp / "work"),
        ],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=BENCH_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        # SIGINT, not SIGKILL: the bench's finally stops the servers and load generators it started in their
        # own sessions, which a kill would leave running for the rest of the suite.
        bench.send_signal(signal.SIGINT)
        try:
            stdout, stderr = bench.communicate(timeout=BENCH_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            bench.kill()
            stdout, stderr = bench.communicate()
        pytest.fail(f"bench did not finish in {BENCH_TIMEOUT_S} s:\n{stdout}\n{stderr}")
    done = subprocess.CompletedProcess(bench.args, bench.returncode, stdout, stderr)
    assert done.returncode == 0, f"bench exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    document: dict[str, Any] = json.loads(Path(out).read_text())
    return document, done.stdout


pytestmark = pytest.mark.slow


def test_every_workload_has_figures_or_says_it_is_not_available(bench_run: tuple[dict[str, Any], str]) -> None:
    document, _ = bench_run
    assert set(document["workloads"]) == set(WORKLOADS)
    for name, workload in document["workloads"].items():
        if workload["status"] == "ok":
            assert workload["figures"], f"{name}: ok but no figures"
            for figure in workload["figures"]:
                assert all(math.isfinite(v) for v in figure["values"]), (name, figure)
                assert figure["min"] <= figure["median"] <= figure["max"], (name, figure)
        else:
            assert workload["status"] == "not available", f"{name}: {workload['status']}: {workload['reason']}"
            assert workload["reason"].startswith("not available yet"), (name, workload["reason"])
        failed_parts = [note for note in workload["notes"] if ": failed:" in note]
        assert failed_parts == [], (name, failed_parts)


def test_ingest_accepts_every_event_it_sent(bench_run: tuple[dict[str, Any], str]) -> None:
    document, _ = bench_run
    ingest = document["workloads"]["ingest"]
    assert ingest["status"] == "ok", ingest["reason"]
    details = ingest["details"]
    assert details["events_sent"] == RUNS * BATCHES * BATCH_EVENTS
    assert details["events_accepted"] == details["events_sent"]
    assert details["events_rejected"] == 0
    events_per_s = next(f for f in ingest["figures"] if f["metric"] == "events/s (durable)")
    assert len(events_per_s["values"]) == RUNS
    assert len(events_per_s["ratios"]) == RUNS, "one ratio per run, pair by pair"


def test_the_table_lists_every_workload(bench_run: tuple[dict[str, Any], str]) -> None:
    _, table = bench_run
    for name in WORKLOADS:
        assert any(line.startswith(name) for line in table.splitlines()), name
    assert "median" in table and "min–max" in table


def _figure(workload: dict[str, Any], prefix: str) -> dict[str, Any]:
    figures = [f for f in workload["figures"] if f["metric"].startswith(prefix)]
    assert len(figures) == 1, (prefix, [f["metric"] for f in workload["figures"]])
    figure: dict[str, Any] = figures[0]
    return figure


def test_ingest_is_compared_with_the_raw_bytes_journal(bench_run: tuple[dict[str, Any], str]) -> None:
    document, _ = bench_run
    references = document["workloads"]["references"]
    journal = _figure(references, "raw-bytes journal events/s")
    assert len(journal["values"]) == RUNS and all(v > 0 for v in journal["values"])
    assert len(_figure(references, "raw-bytes journal CPU per event")["values"]) == RUNS
    ratio = _figure(document["workloads"]["ingest"], "events/s vs raw-bytes journal")
    assert ratio["reference"] == "raw-bytes journal"
    assert len(ratio["ratios"]) == RUNS, "one ratio per run, pair by pair"


def test_the_stall_workload_reads_the_servers_longest_stall(bench_run: tuple[dict[str, Any], str]) -> None:
    document, _ = bench_run
    stall = document["workloads"]["stall"]
    assert stall["status"] == "ok", stall["reason"]
    metrics = [f["metric"] for f in stall["figures"]]
    assert metrics[0] == "longest event-loop stall, ingest"
    assert metrics[1].startswith("longest event-loop stall, ingest + snapshot every")
    for figure in stall["figures"]:
        assert len(figure["values"]) == RUNS and all(v >= 0 for v in figure["values"]), figure
    assert stall["details"]["snapshot_every_events"] <= BATCHES * BATCH_EVENTS


def test_memory_reports_heap_per_customer_and_the_seeding_time(bench_run: tuple[dict[str, Any], str]) -> None:
    document, _ = bench_run
    memory = document["workloads"]["memory"]
    heap = _figure(memory, "heap per customer, seeded")
    assert heap["values"][0] > 0
    assert heap["met"] is None, "the 2 KiB target is judged only at 1,000,000 customers"
    assert _figure(memory, "seeding ")["values"][0] > 0


def test_authorize_reports_journaled_holds_after_its_other_rows(bench_run: tuple[dict[str, Any], str]) -> None:
    document, _ = bench_run
    authorize = document["workloads"]["authorize"]
    assert authorize["status"] == "ok", authorize["reason"]
    metrics = [f["metric"] for f in authorize["figures"]]
    reserving = [i for i, metric in enumerate(metrics) if metric.startswith("Authorize(reserve=true")]
    batched = [i for i, metric in enumerate(metrics) if metric.startswith("AuthorizeBatches(reserve=true")]
    assert (len(reserving), len(batched)) == (6, 3), metrics
    assert reserving + batched == list(range(len(metrics) - 9, len(metrics))), "the reserve rows come last"
    [latency] = [
        f for f in authorize["figures"] if f["metric"] == "Authorize(reserve=true, journaled hold) unloaded p99"
    ]
    assert latency["target"] == "" and latency["met"] is None, "no target in docs/architecture.md §9"
    holds = _figure(authorize, "Authorize(reserve=true) journaled holds/s (8 callers)")
    assert len(holds["values"]) == RUNS and all(v > 0 for v in holds["values"])
    # Every batch hold was granted and settled by its usage (the workload fails the row otherwise).
    batch_holds = _figure(authorize, "AuthorizeBatches(reserve=true) journaled holds/s (50 a message)")
    assert len(batch_holds["values"]) == RUNS and all(v > 0 for v in batch_holds["values"])
    assert any("settles each granted hold with its usage event" in note for note in authorize["notes"])


def test_the_dedupe_workload_fills_the_window_and_compares_runs_pair_by_pair(
    bench_run: tuple[dict[str, Any], str],
) -> None:
    document, _ = bench_run
    dedupe = document["workloads"]["dedupe"]
    assert dedupe["status"] == "ok", dedupe["reason"]
    assert dedupe["details"]["ids_filled"] == QUICK_DEDUPE_IDS, "every filling event is accepted: no id repeats"
    assert dedupe["details"]["ids_before_fill"] > 0
    after = _figure(dedupe, f"ingest events/s, {QUICK_DEDUPE_IDS:,} more ids")
    assert after["reference"] == "window before the fill"
    assert len(after["ratios"]) == RUNS, "one ratio per run, pair by pair"
    assert after["met"] is None, "not judged below 100,000,000 ids"
    assert _figure(dedupe, "anon RSS per id")["values"][0] > 0
    assert _figure(dedupe, "data directory growth per id")["values"][0] > 0
