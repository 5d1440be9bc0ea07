"""Where an Authorize call's time goes under ingest: one call at a time, each split into its parts.

`python -m server.bench.authorize_trace [--customers N] [--fraction 0.8] [--calls 2000]` seeds a Tariff
server started through this module (`serve`, which wraps the Authorize handler and the kernel call with
timers before it runs `tariff serve`), measures its maximum ingest rate, then sends Authorize calls one at a
time while a background ingest runs at `--fraction` of that maximum. Each request carries its send time
(CLOCK_MONOTONIC, the same clock in both processes) in its request_id, so each call splits into:

- `queued`: sent to the handler running (gRPC's C core, the event loop waking, the GIL, the loop's other work);
- `handler_pre`: the handler's Python before the kernel call (checks, the request's maps);
- `kernel`: `Kernel.authorize` (the kernel lock's read side waited for, then the decision);
- `handler_post`: the response built; `write`: the handler's return to the answer received.

For each part: p50/p99/max over all calls, and its mean over the slowest 1 % of calls (what the p99 is made of).
The event loop thread's CPU time and its wait for a CPU (/proc/thread-self/schedstat) between the previous
call's end and this call's handler are reported the same way (`gap_loop_cpu`, `gap_loop_runqueue`).
While the call is in the kernel, the loop thread's wait for a CPU is `handler_loop_runqueue`. A probe thread
in the server sleeps 1 ms at a time: its lateness less its wait for a CPU is its wait for the GIL
(`gil_probe_ms`). The generator's own CPU use is read from /proc, to tell whether it starves the server of the
machine's cores. Policies can be tried before they are made the server's own: TRACE_SWITCH_INTERVAL_S,
TRACE_WORKER_NICE, TRACE_RATING_NICE_OFF, TRACE_FIFO, TRACE_NEG_NICE (see `_experiments`); TRACE_CLIENT_SLICES
gives this module's calling thread and its gRPC I/O threads the shortest slice, to tell the client's own waits
for a CPU from the server's.
"""

from __future__ import annotations

import argparse
import atexit
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

RECORDS_ENV = "TARIFF_AUTHORIZE_TRACE"
SECONDS_MAX = 8.0  # the longest one run of calls may take


def _install_tracing(path: str) -> None:
    """In the server process: timers around Authorize's handler and its kernel call, written out at exit."""
    from engine.billing import Billing
    from engine.billing_reads import Estimate
    from server.services.balance import BalanceService

    records: list[tuple[int, ...]] = []
    current: dict[str, int] = {}
    schedstat = {"fd": -1}
    decide = BalanceService._decide

    def loop_sched() -> tuple[int, int]:
        if schedstat["fd"] < 0:
            schedstat["fd"] = os.open("/proc/thread-self/schedstat", os.O_RDONLY)  # the loop's thread
        run_ns, wait_ns, _ = os.pread(schedstat["fd"], 64, 0).split()
        return int(run_ns), int(wait_ns)

    def traced_estimate(
        self: Billing,
        customer_id: str,
        event_type: str,
        dimensions: dict[str, str],
        values: dict[str, float],
        now_ms: int,
    ) -> Estimate:
        self.refresh_tables()
        current["kernel_start"] = time.monotonic_ns()
        dimension_items, value_items = list(dimensions.items()), list(values.items())
        answer = self.kernel.authorize(customer_id, event_type, dimension_items, value_items, now_ms)
        current["kernel_end"] = time.monotonic_ns()
        return Estimate(*answer)

    def traced_decide(self: BalanceService, request: Any) -> Any:
        entered = time.monotonic_ns()
        cpu, waited = loop_sched()
        response = decide(self, request)
        ended = time.monotonic_ns()
        cpu_end, waited_end = loop_sched()
        sent = request.request_id
        if sent.startswith("t"):
            kernel_start, kernel_end = current["kernel_start"], current["kernel_end"]
            records.append((int(sent[1:]), entered, kernel_start, kernel_end, ended, cpu, waited, cpu_end, waited_end))
        return response

    gil_waits_ms = _start_gil_probe()

    def dump() -> None:
        Path(path).write_text(json.dumps({"calls": records, "gil_waits_ms": gil_waits_ms}))

    Billing.estimate = traced_estimate  # type: ignore[method-assign,assignment]
    BalanceService._decide = traced_decide  # type: ignore[method-assign]
    atexit.register(dump)


def _start_gil_probe() -> list[float]:
    """A thread that sleeps 1 ms at a time: how late it wakes, less the time it waited for a CPU, is how long it
    waited for the GIL (time.sleep gives the GIL up; waking takes it back). One value per wake, in ms."""
    waits_ms: list[float] = []

    def probe() -> None:
        fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        while True:
            waited_before = int(os.pread(fd, 64, 0).split()[1])
            due = time.monotonic_ns() + 1_000_000
            time.sleep(0.001)
            late = time.monotonic_ns() - due
            runqueue = int(os.pread(fd, 64, 0).split()[1]) - waited_before
            waits_ms.append(max(0, late - runqueue) / 1e6)

    threading.Thread(target=probe, name="gil-probe", daemon=True).start()
    return waits_ms


def _experiments() -> None:
    """Policies tried before they are made the server's own: TRACE_SWITCH_INTERVAL_S sets the GIL's switch
    interval; TRACE_WORKER_NICE the nice value of the writer's threads (rating, journal; Linux: per thread);
    TRACE_RATING_NICE_OFF leaves the rating thread (the kernel lock's writer) at the loop's nice. TRACE_FIFO puts
    the threads on the Authorize path (the loop, gRPC's I/O threads and grpc.aio's poller) in SCHED_FIFO, and
    TRACE_NEG_NICE at nice -10 instead: both need CAP_SYS_NICE."""
    from server import app, scheduling, worker

    if os.environ.get("TRACE_SWITCH_INTERVAL_S"):
        sys.setswitchinterval(float(os.environ["TRACE_SWITCH_INTERVAL_S"]))
    nice = int(os.environ.get("TRACE_WORKER_NICE", "0"))
    if nice:
        serve_calls = worker.Worker._serve

        def niced(self: worker.Worker) -> None:
            os.setpriority(os.PRIO_PROCESS, 0, nice)  # who=0 on Linux: the calling thread only
            serve_calls(self)

        worker.Worker._serve = niced  # type: ignore[method-assign]
    if os.environ.get("TRACE_RATING_NICE_OFF"):
        lowered = tuple(t for t in scheduling.BACKGROUND_THREADS if t != "tariff-rating")
        scheduling.__dict__["BACKGROUND_THREADS"] = lowered
    if os.environ.get("TRACE_FIFO") or os.environ.get("TRACE_NEG_NICE"):
        shorten = scheduling.shorten_slices

        def raised(slice_us: int = 100) -> list[str]:
            names = shorten(slice_us)
            for task in Path("/proc/self/task").iterdir():
                tid = int(task.name)
                named = (task / "comm").read_text().strip() in ("event_engine", "grpc_global_tim")
                poller = any(t.native_id == tid and t.name.endswith("(_poll_wrapper)") for t in threading.enumerate())
                if not (named or poller or tid == threading.get_native_id()):
                    continue
                if os.environ.get("TRACE_FIFO"):
                    os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(1))
                else:
                    os.setpriority(os.PRIO_PROCESS, tid, -10)
            return names

        app.__dict__["shorten_slices"] = raised  # app.py calls the name it imported


def serve(argv: list[str]) -> None:
    """`tariff serve` with the tracing installed (the path to write the records to in RECORDS_ENV)."""
    from server.cli import main

    _install_tracing(os.environ[RECORDS_ENV])
    _experiments()
    main(["serve", *argv])  # the server stops on SIGTERM and click exits: the records are written at exit


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _call(target: str, calls: int, customers: int, received: dict[int, int], seconds_max: float) -> None:
    import grpc
    from tariff.v1 import balance_pb2

    from server.bench import loadgen
    from server.bench.target import CHANNEL_OPTIONS

    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        call = channel.unary_unary(
            loadgen.AUTHORIZE_METHOD,
            request_serializer=balance_pb2.AuthorizeRequest.SerializeToString,
            response_deserializer=balance_pb2.AuthorizeResponse.FromString,
        )
        deadline = time.monotonic() + seconds_max
        for number in range(calls + 200):
            if number == 1 and os.environ.get("TRACE_CLIENT_SLICES"):
                from server.scheduling import shorten_slices

                shorten_slices()
            request = loadgen.authorize_request(number, customers)
            sent = time.monotonic_ns()
            request.request_id = f"t{sent}" if number >= 200 else "warmup"
            call(request, timeout=10)
            if number >= 200:
                received[sent] = time.monotonic_ns()
            if time.monotonic() > deadline:
                return


def _report(records: list[list[int]], received: dict[int, int]) -> dict[str, Any]:
    names = ("total", "queued", "handler_pre", "kernel", "handler_post", "write", "gap_loop_cpu", "gap_loop_runqueue")
    parts: dict[str, list[float]] = {name: [] for name in (*names, "handler_loop_runqueue")}
    previous: list[int] | None = None
    for r in sorted(records):
        sent, entered, k_start, k_end, ended, cpu, waited, _, waited_end = r
        if sent not in received:
            continue
        got = received[sent]
        for name, ns in (
            ("total", got - sent),
            ("queued", entered - sent),
            ("handler_pre", k_start - entered),
            ("kernel", k_end - k_start),
            ("handler_post", ended - k_end),
            ("write", got - ended),
            ("gap_loop_cpu", cpu - previous[7] if previous else 0),  # from the previous call's handler's end
            ("gap_loop_runqueue", waited - previous[8] if previous else 0),
            ("handler_loop_runqueue", waited_end - waited),
        ):
            parts[name].append(ns / 1e6)
        previous = r
    totals = parts["total"]
    slowest = sorted(range(len(totals)), key=totals.__getitem__)[-max(1, len(totals) // 100) :]
    return {
        name: {
            "p50_ms": round(percentile(values, 0.5), 3),
            "p99_ms": round(percentile(values, 0.99), 3),
            "max_ms": round(max(values, default=0.0), 3),
            "mean_of_slowest_1pct_ms": round(sum(values[i] for i in slowest) / len(slowest), 3) if values else 0.0,
        }
        for name, values in parts.items()
    }


def _loaded_runs(bench: Any, server: Any, rate: float, args: argparse.Namespace) -> dict[str, Any]:
    """`args.runs` runs of one-at-a-time Authorize calls under a background ingest at `rate` events/s."""
    from server.bench import loadgen
    from server.bench.drive import Background

    received: dict[int, int] = {}
    achieved, generator_cpu = [], []
    for _ in range(args.runs):
        background = Background(loadgen.ingest_worker, bench.ingest_spec(server.target, 0, events_per_s=rate))
        background.start()
        generator_pid = background._process.pid or 0
        cpu_before, wall_before, server_before = _cpu_s(generator_pid), time.monotonic(), server.cpu_s()
        _call(server.target, args.calls, args.customers, received, SECONDS_MAX)
        wall = time.monotonic() - wall_before
        generator_cpu.append((_cpu_s(generator_pid) - cpu_before) / wall)
        server_cpu = (server.cpu_s() - server_before) / wall
        load = background.stop()
        achieved.append(load["accepted"] / (load["ended"] - load["started"]))
        print(f"run: ingest generator {generator_cpu[-1]:.2f} CPUs, server {server_cpu:.2f} CPUs", flush=True)
    return {"received": received, "achieved": achieved, "generator_cpu": generator_cpu}


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--fraction", type=float, default=0.8)
    parser.add_argument("--calls", type=int, default=2_000)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--events-per-s", type=float, default=0.0, help="the ingest maximum (default: probed)")
    parser.add_argument("--serve-arg", action="append", default=[], help="an extra `tariff serve` argument")
    return parser.parse_args()


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(sys.argv[2:])
        return
    from server.bench.seed import build_kernel_tables, seed
    from server.bench.target import BENCH_MAP_SIZE_MB, ServedProcess
    from server.bench.workloads import Bench, BenchConfig, IngestRun, _ingest_probe

    args = _arguments()
    work = Path(tempfile.mkdtemp(prefix="authz-trace-"))
    config = BenchConfig.for_trace(
        work, args.runs, args.customers, 200, args.fraction, args.calls, measure_seconds_max=SECONDS_MAX
    )
    bench = Bench(config)
    records_path = work / "records.json"
    os.environ[RECORDS_ENV] = str(records_path)
    command = [sys.executable, "-m", "server.bench.authorize_trace", "serve", "--data-dir", str(work / "data")]
    server = ServedProcess([*command, "--map-size-mb", str(BENCH_MAP_SIZE_MB), *args.serve_arg], work / "server.log")
    bench.servers.append(server)
    try:
        server.start()
        seed(server.target, args.customers)
        build_kernel_tables(server.target)
        bench.main = server
        max_events_s = args.events_per_s or IngestRun.of(_ingest_probe(bench, server)).events_s
        runs = _loaded_runs(bench, server, max_events_s * args.fraction, args)
        server.stop()
        dumped = json.loads(records_path.read_text())
        gil = dumped["gil_waits_ms"]
        result = {
            "max_events_s": round(max_events_s),
            "asked_events_s": round(max_events_s * args.fraction),
            "achieved_events_s": [round(a) for a in runs["achieved"]],
            "generator_cpus": [round(c, 2) for c in runs["generator_cpu"]],
            "loadavg": os.getloadavg(),
            "calls": len(dumped["calls"]),
            "parts": _report(dumped["calls"], runs["received"]),
            "gil_probe_ms (whole server life)": {
                q: round(percentile(gil, p), 3) for q, p in (("p50", 0.5), ("p99", 0.99), ("p999", 0.999))
            }
            | {"max": round(max(gil, default=0.0), 3), "wakes": len(gil)},
        }
        print(json.dumps(result, indent=1))
    finally:
        bench.stop_all()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
