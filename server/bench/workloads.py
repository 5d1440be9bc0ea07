"""The bench workloads: ingest (with its references), telemetry overhead, authorize, preview, recovery, memory.

Each workload returns a WorkloadResult. A figure compared with a reference is measured pair by pair: in
run i the reference and Tariff are driven back to back with the same load, and ratio i is taken from
that pair. An RPC answering UNIMPLEMENTED (or a serve flag the CLI rejects) makes its part "not available
yet" at run time; nothing here assumes what the server implements.
"""

from __future__ import annotations

import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
from tariff.v1 import invoices_pb2, invoices_pb2_grpc

from server.bench import hold_load, loadgen
from server.bench.drive import Background, Driven, drive
from server.bench.postgres import PostgresLedger
from server.bench.report import Figure, WorkloadResult, percentile
from server.bench.seed import (
    PRODUCTS,
    RPC_SEED_CUSTOMERS_MAX,
    build_kernel_tables,
    customer_id,
    seed,
    seed_journal,
)
from server.bench.target import (
    ARGPARSE_USAGE_EXIT,
    CHANNEL_OPTIONS,
    ServedProcess,
    StartFailed,
    journal_reference_server,
    reference_server,
    tariff_server,
)

JOURNAL_SEED_RECOVERY_TIMEOUT_S = 3600.0
WORKLOADS = ("ingest", "telemetry", "authorize", "preview", "recovery", "memory", "stall", "dedupe")
WARMUP_BATCHES = 5
RECOVERY_CUSTOMERS = 100
# Decisions per AuthorizeBatches message: what a gateway gathers in about a millisecond at 50,000 checks a second.
AUTHORIZE_BATCH_REQUESTS = 50
# What a gateway gathers in about a millisecond at the target's 250,000 checks a second: the decisions/s target is
# judged at this size. At 50 a message one generator's stream is the limit (the no-op server answers no faster).
AUTHORIZE_BATCH_REQUESTS_AT_TARGET = 250
# Decision-only AuthorizeBatches runs send this many times the AuthorizeStream run's decisions: at 100,000
# decisions/s and more, its 30,000 would last a third of a second.
AUTHORIZE_BATCH_DECISIONS_FACTOR = 10
AUTHORIZE_BATCHES_TARGET_S = 250_000
# Gateways reserving at once in the concurrent Authorize(reserve=true) part: RESERVE_PROCESSES load-generator
# processes, each with RESERVE_CALLERS_PER_PROCESS threads of unary calls, one in flight apiece.
RESERVE_PROCESSES = 2
RESERVE_CALLERS_PER_PROCESS = 4
RESERVE_NOTE = (
    "Authorize(reserve=true): each call holds credit under its own client-chosen reservation_id "
    f"(ttl {loadgen.RESERVATION_TTL_S} s), round-robin over the seeded customers, whose grants dwarf the holds; "
    "the hold is journaled before the answer, so these rows measure a durable write path, not a read"
)
BATCH_RESERVE_NOTE = (
    f"AuthorizeBatches(reserve=true): every request of every message holds ({AUTHORIZE_BATCH_REQUESTS} a message, "
    f"up to {max(256 // AUTHORIZE_BATCH_REQUESTS, 4)} messages in flight on one stream, client-chosen ids, ttl "
    f"{loadgen.RESERVATION_TTL_S} s); the message's holds are one journaled command, answered once durable; the "
    "generator settles each granted hold with its usage event on an IngestUsage stream of its own as the answers "
    "come back, so holds/s is measured while that usage is rated; latency is per message, sent to answered"
)


def progress(message: str) -> None:
    print(f"tariff bench:   {message}", file=sys.stderr, flush=True)


class NotAvailable(Exception):
    """A part of the server this workload needs is not built yet (UNIMPLEMENTED, or a flag rejected)."""


@dataclass(frozen=True)
class BenchConfig:
    runs: int
    customers: int
    batch_events: int
    ingest_batches: int
    generators: int
    streams: int
    batches_in_flight: int
    ingest_fraction: float
    authorize_calls: int
    stream_decisions: int
    preview_events: int
    preview_calls: int
    recovery_events: int
    # Ids added to the main server's dedupe window before ingest is measured again (server/bench/dedupe.py).
    dedupe_ids: int
    # Caps on one latency or AuthorizeStream measurement, so a slow server cannot stretch the bench.
    measure_seconds_max: float
    only: tuple[str, ...]
    postgres: bool
    work_dir: Path
    # `tariff serve` flags given to every Tariff server the bench starts (e.g. --no-explain-index).
    serve_args: tuple[str, ...] = ()

    @classmethod
    def for_trace(
        cls,
        work_dir: Path,
        runs: int,
        customers: int,
        ingest_batches: int,
        ingest_fraction: float = 0.8,
        authorize_calls: int = 0,
        measure_seconds_max: float = 8.0,
    ) -> BenchConfig:
        """The shape the diagnostic traces (server/bench/*_trace.py) drive: the bench's ingest load (one generator,
        2 streams of 1,000-event batches, 4 in flight) and Authorize calls if asked, nothing else."""
        return cls(
            runs=runs, customers=customers, batch_events=1_000, ingest_batches=ingest_batches, generators=1,
            streams=2, batches_in_flight=4, ingest_fraction=ingest_fraction, authorize_calls=authorize_calls,
            stream_decisions=0, preview_events=0, preview_calls=0, recovery_events=0, dedupe_ids=0,
            measure_seconds_max=measure_seconds_max, only=(), postgres=False, work_dir=work_dir,
        )  # fmt: skip


@dataclass
class IngestRun:
    events_s: float
    server_cpu_us_per_event: float
    ack_p50_ms: float
    ack_p99_ms: float
    sent: int
    accepted: int
    rejected: int
    reject_samples: list[str]

    @classmethod
    def of(cls, driven: Driven) -> IngestRun:
        error = driven.error
        if error is not None:
            if error[0] == "UNIMPLEMENTED":
                raise NotAvailable(f"IngestUsage answers UNIMPLEMENTED: {error[1]}")
            raise RuntimeError(f"IngestUsage failed: {error[0]}: {error[1]}")
        latencies = [s for r in driven.results for s in r["latencies_s"]]
        accepted = sum(r["accepted"] for r in driven.results)
        return cls(
            events_s=accepted / driven.elapsed_s if driven.elapsed_s > 0 else 0.0,
            server_cpu_us_per_event=driven.server_cpu_s / accepted * 1e6 if accepted else 0.0,
            ack_p50_ms=percentile(latencies, 0.50) * 1e3,
            ack_p99_ms=percentile(latencies, 0.99) * 1e3,
            sent=sum(r["events_sent"] for r in driven.results),
            accepted=accepted,
            rejected=sum(r["rejected"] for r in driven.results),
            reject_samples=[s for r in driven.results for s in r["reject_samples"]][:5],
        )


@dataclass
class Bench:
    """What one invocation shares between workloads: its servers, and what ingest learned."""

    config: BenchConfig
    servers: list[ServedProcess] = field(default_factory=list)
    references: dict[str, ServedProcess] = field(default_factory=dict)
    main: ServedProcess | None = None
    rss_empty_bytes: int = 0
    rss_seeded_bytes: int = 0
    aggregate_keys: set[tuple[str, str, str]] = field(default_factory=set)
    ingest_max_events_s: float = 0.0
    events_ingested: int = 0
    memory_samples: list[dict[str, float]] = field(default_factory=list)
    telemetry_figures: WorkloadResult | None = None
    # Seconds the seeding took (timed apart; not a reported figure), and how it was done.
    seed_s: float = 0.0
    seed_path: str = "admin RPCs"
    seed_split_s: dict[str, float] = field(default_factory=dict)
    _tags: int = 0

    def tag(self, name: str) -> str:
        self._tags += 1
        return f"{name}{self._tags}"

    def directory(self, name: str) -> Path:
        path = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=self.config.work_dir))
        return path

    def start_tariff(self, name: str, extra_args: tuple[str, ...] = ()) -> ServedProcess:
        directory = self.directory(name)
        server = tariff_server(directory / "data", directory / "server.log", (*self.config.serve_args, *extra_args))
        self.servers.append(server)
        server.start()
        return server

    def reference(self, mode: str) -> ServedProcess:
        if mode not in self.references:
            directory = self.directory(f"ref-{mode}")
            if mode == "journal":
                server = journal_reference_server(
                    directory / "data", directory / "server.log", self.config.batch_events
                )
            else:
                server = reference_server(mode, directory / "server.log")
            self.servers.append(server)
            server.start()
            self.references[mode] = server
        return self.references[mode]

    def main_server(self, also_seed: ServedProcess | None = None) -> ServedProcess:
        """The seeded Tariff server that ingest, authorize and memory share.

        `also_seed` (the telemetry server) is seeded at the same time: each server is one process
        mostly bound by its own core, so two seed in about the time of one.
        """
        if self.main is None and self.config.customers > RPC_SEED_CUSTOMERS_MAX:
            self.main = self._journal_seeded_server(also_seed)
        if self.main is None:
            server = self.start_tariff("tariff")
            self.rss_empty_bytes = server.rss_bytes("RssAnon")
            targets = [server] if also_seed is None else [server, also_seed]
            progress(f"seeding {self.config.customers:,} customers on {len(targets)} server(s)")
            with ThreadPoolExecutor(len(targets)) as pool:
                self.seed_s = max(pool.map(lambda s: seed(s.target, self.config.customers), targets))
            build_kernel_tables(server.target)
            self.rss_seeded_bytes = server.rss_bytes("RssAnon")
            self.main = server
        return self.main

    def _journal_seeded_server(self, also_seed: ServedProcess | None) -> ServedProcess:
        """Past RPC_SEED_CUSTOMERS_MAX customers: the journal the seeding RPCs would leave is written directly
        and the server recovers it at start (server/bench/seed.py). The empty server's memory is read from a
        server started on an empty directory first."""
        empty = self.start_tariff("tariff-empty")
        self.rss_empty_bytes = empty.rss_bytes("RssAnon")
        empty.stop()
        customers = self.config.customers
        progress(f"writing the journal of {customers:,} customers' seeding RPCs, then recovering it")
        directory = self.directory("tariff")
        written_s = seed_journal(directory / "data", customers)
        server = tariff_server(directory / "data", directory / "server.log", self.config.serve_args)
        self.servers.append(server)
        recovered_s = server.start(timeout_s=JOURNAL_SEED_RECOVERY_TIMEOUT_S)
        self.seed_s = written_s + recovered_s
        self.seed_path = "their RPCs' journal written, then recovered at start"
        self.seed_split_s = {"journal_written_s": written_s, "recovered_at_start_s": recovered_s}
        if also_seed is not None:
            self.seed_s = max(self.seed_s, seed(also_seed.target, customers))
        build_kernel_tables(server.target)
        self.rss_seeded_bytes = server.rss_bytes("RssAnon")
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()

    def ingest_spec(
        self,
        target: str,
        batch_count: int,
        *,
        events_per_s: float = 0.0,
        only_customer: int | None = None,
        customers: int | None = None,
    ) -> loadgen.IngestSpec:
        config = self.config
        return loadgen.IngestSpec(
            target=target,
            run_tag=self.tag("t"),
            customers=customers or config.customers,
            batch_events=config.batch_events,
            batch_count=batch_count,
            streams=config.streams,
            batches_in_flight=config.batches_in_flight,
            events_per_s=events_per_s,
            seed=self._tags,
            only_customer=only_customer,
            prebuild=True,
        )

    def ingest(self, server: ServedProcess, batch_count: int) -> IngestRun:
        per_generator = max(1, batch_count // self.config.generators)
        specs = [self.ingest_spec(server.target, per_generator) for _ in range(self.config.generators)]
        driven = drive(loadgen.ingest_worker, specs, server)
        run = IngestRun.of(driven)
        if server is self.main:
            self.events_ingested += run.accepted
            for result in driven.results:
                self.aggregate_keys.update(tuple(key) for key in result["aggregate_keys"])
        return run


def _ratios(values: list[float], references: list[float]) -> list[float]:
    return [v / r if r else 0.0 for v, r in zip(values, references, strict=True)]


def _start_telemetry_server(bench: Bench) -> ServedProcess:
    from server.bench.target import free_port

    try:
        server = bench.start_tariff("tariff-telemetry", ("--metrics-port", str(free_port())))
    except StartFailed as e:
        if e.exit_code == ARGPARSE_USAGE_EXIT:
            raise NotAvailable("`tariff serve --metrics-port` is rejected by the CLI (not built yet)") from None
        raise
    return server


def ingest_workload(bench: Bench) -> list[WorkloadResult]:
    """Events/s, ack latency and server CPU per event, against the no-op, read-every-field and PostgreSQL references."""
    config = bench.config
    noop = bench.reference("noop")
    read = bench.reference("read")
    journal = bench.reference("journal")
    telemetry: ServedProcess | None = None
    telemetry_result = WorkloadResult("telemetry")
    if "telemetry" in config.only and bench.main is None:
        try:
            telemetry = _start_telemetry_server(bench)
        except NotAvailable as e:
            telemetry_result.status, telemetry_result.reason = "not available", f"not available yet: {e}"
        except Exception as e:  # a telemetry failure must not cost the other workloads
            telemetry_result.status, telemetry_result.reason = "failed", str(e)
    tariff = bench.main_server(also_seed=telemetry)
    ledger, postgres_reason = _start_ledger(bench)

    targets: dict[str, ServedProcess] = {"noop": noop, "read": read, "journal": journal, "tariff": tariff}
    if telemetry is not None:
        targets["telemetry"] = telemetry
    for server in targets.values():
        bench.ingest(server, WARMUP_BATCHES)
    if ledger is not None:
        ledger.run(WARMUP_BATCHES, config.batch_events, bench.tag("pg"), config.customers)
    measured, postgres_events_s = _ingest_runs(bench, targets, ledger)
    runs = measured["tariff"]
    tariff_events_s = [r.events_s for r in runs]
    bench.ingest_max_events_s = statistics.median(tariff_events_s)

    references = _reference_figures(measured, postgres_events_s, postgres_reason)

    result = WorkloadResult("ingest")
    result.figures = _ingest_figures(runs, measured, postgres_events_s)
    if not postgres_events_s:
        result.notes.append(f"no PostgreSQL ratio: {postgres_reason}")
    sent = sum(r.sent for r in runs)
    accepted = sum(r.accepted for r in runs)
    result.details = {
        "events_sent": sent,
        "events_accepted": accepted,
        "events_rejected": sum(r.rejected for r in runs),
        "reject_samples": [s for r in runs for s in r.reject_samples][:5],
        "batch_events": config.batch_events,
        "customers": config.customers,
        "batches_per_run": config.ingest_batches,
        "generators": config.generators,
        "streams_per_generator": config.streams,
        "batches_in_flight_per_stream": config.batches_in_flight,
        "products_per_event": len(PRODUCTS),
        "seed_s": round(bench.seed_s, 1),
    }
    if accepted != sent:
        result.notes.append(
            f"accepted {accepted} of {sent} events sent; first rejections: {result.details['reject_samples']}"
        )

    if telemetry is not None:
        telemetry_result.figures = _telemetry_figures(measured["telemetry"], tariff_events_s)
    bench.telemetry_figures = telemetry_result
    return [references, result]


def _start_ledger(bench: Bench) -> tuple[PostgresLedger | None, str]:
    """The PostgreSQL reference, started; or None and why it is not run."""
    config = bench.config
    ledger = PostgresLedger(bench.directory("postgres")) if config.postgres else None
    postgres_reason = "" if ledger is not None else "skipped (--no-postgres)"
    if ledger is not None:
        postgres_reason = ledger.start(config.customers)
        if postgres_reason:
            ledger = None
    return ledger, postgres_reason


def _reference_figures(
    measured: dict[str, list[IngestRun]], postgres_events_s: list[float], postgres_reason: str
) -> WorkloadResult:
    """The references' own rows: what each did with the same load in the same runs."""
    references = WorkloadResult("references")
    references.figures = [
        Figure("no-op stream events/s", "ev/s", [r.events_s for r in measured["noop"]]),
        Figure("no-op server CPU per event", "µs", [r.server_cpu_us_per_event for r in measured["noop"]]),
        Figure("read-every-field events/s", "ev/s", [r.events_s for r in measured["read"]]),
        Figure("read-every-field CPU per event", "µs", [r.server_cpu_us_per_event for r in measured["read"]]),
        Figure("raw-bytes journal events/s (durable)", "ev/s", [r.events_s for r in measured["journal"]]),
        Figure("raw-bytes journal CPU per event", "µs", [r.server_cpu_us_per_event for r in measured["journal"]]),
    ]
    if postgres_events_s:
        references.figures.append(Figure("PostgreSQL ledger events/s", "ev/s", postgres_events_s))
    else:
        references.notes.append(f"PostgreSQL reference not run: {postgres_reason}")
    return references


def _ingest_runs(
    bench: Bench, targets: dict[str, ServedProcess], ledger: PostgresLedger | None
) -> tuple[dict[str, list[IngestRun]], list[float]]:
    """`--runs` ingest runs, each driving every target then the PostgreSQL ledger back to back; the targets in
    their order in the first run, the reverse in the second, and so on, so that whatever driving one server leaves
    for the next (the OS's caches and writeback, the load generator's state) does not always fall on the same one
    of a compared pair (Tariff after the raw-bytes journal, telemetry on after off)."""
    config = bench.config
    measured: dict[str, list[IngestRun]] = {name: [] for name in targets}
    postgres_events_s: list[float] = []
    try:
        for number in range(config.runs):
            order = list(targets) if number % 2 == 0 else list(reversed(targets))
            progress(f"ingest run {number + 1}/{config.runs}: {', '.join(order)}{', PostgreSQL' if ledger else ''}")
            for name in order:
                measured[name].append(bench.ingest(targets[name], config.ingest_batches))
            bench.memory_samples.append(_memory_sample(bench))
            if ledger is not None:
                postgres_events_s.append(
                    ledger.run(config.ingest_batches, config.batch_events, bench.tag("pg"), config.customers)
                )
    finally:
        if ledger is not None:
            ledger.stop()
    return measured, postgres_events_s


def _ingest_figures(
    runs: list[IngestRun], measured: dict[str, list[IngestRun]], postgres_events_s: list[float]
) -> list[Figure]:
    """Tariff's ingest rows, each ratio taken pair by pair against the references' runs."""
    tariff_events_s = [r.events_s for r in runs]
    noop_events_s = [r.events_s for r in measured["noop"]]
    read_events_s = [r.events_s for r in measured["read"]]
    journal_events_s = [r.events_s for r in measured["journal"]]
    ratio_read = _ratios(tariff_events_s, read_events_s)
    ratio_journal = _ratios(tariff_events_s, journal_events_s)
    figures = [
        Figure(
            "events/s (durable)",
            "ev/s",
            tariff_events_s,
            reference="read-every-field",
            ratios=ratio_read,
            target="≥ 0.5 × read-every-field",
            met=statistics.median(ratio_read) >= 0.5,
        ),
        Figure(
            "events/s vs no-op ceiling",
            "ev/s",
            tariff_events_s,
            "no-op ceiling",
            _ratios(tariff_events_s, noop_events_s),
            "moonshot 0.5 × no-op",
            None,
        ),
        Figure(
            "events/s vs raw-bytes journal",
            "ev/s",
            tariff_events_s,
            "raw-bytes journal",
            ratio_journal,
            "≥ 0.5 × raw-bytes journal",
            statistics.median(ratio_journal) >= 0.5,
        ),
        Figure("batch ack latency p50", "ms", [r.ack_p50_ms for r in runs]),
        Figure("batch ack latency p99", "ms", [r.ack_p99_ms for r in runs]),
        Figure(
            "server CPU per event",
            "µs",
            cpu_us := [r.server_cpu_us_per_event for r in runs],
            target="≤ 2 µs",
            met=statistics.median(cpu_us) <= 2,
        ),
    ]
    if postgres_events_s:
        ratio_pg = _ratios(tariff_events_s, postgres_events_s)
        figures.append(
            Figure(
                "events/s vs PostgreSQL",
                "ev/s",
                tariff_events_s,
                "PostgreSQL ledger",
                ratio_pg,
                "≥ 5 × PostgreSQL (on the way to 20 ×)",
                statistics.median(ratio_pg) >= 5,
            )
        )
    return figures


def _telemetry_figures(on_runs: list[IngestRun], tariff_events_s: list[float]) -> list[Figure]:
    """Ingest with --metrics-port on, against the same runs with telemetry off."""
    on = [r.events_s for r in on_runs]
    ratio_on = _ratios(on, tariff_events_s)
    return [
        Figure(
            "ingest events/s, --metrics-port on",
            "ev/s",
            on,
            "telemetry off",
            ratio_on,
            "≥ 0.95 × off",
            statistics.median(ratio_on) >= 0.95,
        ),
        Figure("server CPU per event, telemetry on", "µs", [r.server_cpu_us_per_event for r in on_runs]),
    ]


def _memory_sample(bench: Bench) -> dict[str, float]:
    assert bench.main is not None
    return {
        "rss_bytes": bench.main.rss_bytes("RssAnon"),
        "vm_rss_bytes": bench.main.rss_bytes(),
        "events": bench.events_ingested,
        "aggregates": len(bench.aggregate_keys) * len(PRODUCTS),
    }


def memory_workload(bench: Bench) -> WorkloadResult:
    """Resident memory per customer and per aggregate, from the ingest server's VmRSS."""
    result = WorkloadResult("memory")
    if not bench.memory_samples:
        # Memory is read around the ingest runs; without them, run a short ingest of our own.
        tariff = bench.main_server()
        for _ in range(bench.config.runs):
            bench.ingest(tariff, bench.config.ingest_batches)
            bench.memory_samples.append(_memory_sample(bench))
    customers = bench.config.customers
    samples = bench.memory_samples
    seeded_per_customer = (bench.rss_seeded_bytes - bench.rss_empty_bytes) / customers
    result.figures = [
        Figure(
            f"heap per customer, seeded ({customers:,} customers)",
            "bytes",
            [seeded_per_customer],
            target="≤ 2 KiB at 1,000,000 customers",
            met=seeded_per_customer <= 2048 if customers >= 1_000_000 else None,
        ),
        Figure(f"seeding {customers:,} customers ({bench.seed_path})", "s", [bench.seed_s]),
        Figure(
            "anon RSS per customer (after ingest)",
            "bytes",
            [(s["rss_bytes"] - bench.rss_empty_bytes) / customers for s in samples],
        ),
        Figure(
            "anon RSS per aggregate (ingest growth)",
            "bytes",
            [(s["rss_bytes"] - bench.rss_seeded_bytes) / max(1.0, s["aggregates"]) for s in samples],
        ),
    ]
    if len(samples) > 1 and samples[-1]["events"] > samples[0]["events"]:
        growth = (samples[-1]["rss_bytes"] - samples[0]["rss_bytes"]) / (samples[-1]["events"] - samples[0]["events"])
        result.figures.append(
            Figure("anon RSS growth per event after run 1", "bytes", [growth], target="independent of events (≈ 0)")
        )
    result.details = {
        "rss_empty_bytes": bench.rss_empty_bytes,
        "rss_seeded_bytes": bench.rss_seeded_bytes,
        "samples": samples,
        "customers": customers,
        "seeding": {"path": bench.seed_path, "seconds": bench.seed_s, **bench.seed_split_s},
    }
    result.notes.append(
        "memory: RssAnon of the ingest server (heap; LMDB's mapped file pages excluded, VmRSS in the JSON), "
        "one value per ingest run; aggregates = customer × product × (model, region) touched"
    )
    return result


def _unary(bench: Bench, server: ServedProcess, method: str, calls: int, customers: int | None = None) -> list[float]:
    spec = _unary_spec(bench, server, method, calls, customers)
    latencies: list[float] = _drive_unary(method, [spec], server).results[0]["latencies_s"]
    return latencies


def _unary_spec(
    bench: Bench, server: ServedProcess, method: str, calls: int, customers: int | None = None
) -> loadgen.UnarySpec:
    return loadgen.UnarySpec(
        target=server.target,
        method=method,
        customers=customers or bench.config.customers,
        calls=calls,
        warmup_calls=min(200, calls),
        seconds_max=bench.config.measure_seconds_max,
    )


def _drive_unary(method: str, specs: list[loadgen.UnarySpec], server: ServedProcess) -> Driven:
    """Drives unary generators; UNIMPLEMENTED is NotAvailable, any other error a failure."""
    driven = drive(loadgen.unary_worker, specs, server)
    error = driven.error
    rpc = method.rsplit("/", 1)[1]
    if error is not None:
        if error[0] == "UNIMPLEMENTED":
            raise NotAvailable(f"{rpc} answers UNIMPLEMENTED: {error[1]}")
        raise RuntimeError(f"{rpc} failed: {error[0]}: {error[1]}")
    return driven


def _holds(driven: Driven) -> Driven:
    """A reserving run, checked: a refused hold writes nothing, so it is not the path measured (the grants are
    meant never to run out)."""
    denied = [s for r in driven.results for s in r["denied_samples"]]
    if denied:
        raise RuntimeError(
            f"Authorize(reserve=true) refused {sum(r['denied'] for r in driven.results)}, e.g. {denied[0]}"
        )
    return driven


def _settled_holds(driven: Driven) -> Driven:
    """A run of AuthorizeBatches holds, checked: every hold granted (the grants are meant never to run out) and
    settled by its usage event, with no notice (an unknown or ended reservation) and no rejection."""
    if driven.error is not None:
        code, details = driven.error
        raise RuntimeError(f"AuthorizeBatches(reserve=true) failed: {code}: {details}")
    run = driven.results[0]
    if run["reasons"].keys() - {"OK"}:
        raise RuntimeError(f"AuthorizeBatches(reserve=true) answered {run['reasons']}, e.g. {run['denied_samples']}")
    if (run["settled"], run["notices"], run["rejected"]) != (run["decisions"], 0, 0):
        raise RuntimeError(
            f"{run['decisions']} holds, {run['settled']} settled by usage ({run['notices']} notices, "
            f"{run['rejected']} rejected)"
        )
    return driven


def _reserving_unary(bench: Bench, server: ServedProcess, calls: int) -> list[float]:
    """One caller, one Authorize(reserve=true) in flight; every id fresh (the tag is new each run)."""
    spec = _unary_spec(bench, server, loadgen.AUTHORIZE_METHOD, calls)
    spec["reservation_tag"] = bench.tag("bench-hold")
    latencies: list[float] = _holds(_drive_unary(loadgen.AUTHORIZE_METHOD, [spec], server)).results[0]["latencies_s"]
    return latencies


def _reservations_s(bench: Bench, server: ServedProcess, calls: int) -> float:
    """Holds a second with RESERVE_PROCESSES × RESERVE_CALLERS_PER_PROCESS callers reserving at once."""
    specs = []
    for _ in range(RESERVE_PROCESSES):
        spec = _unary_spec(bench, server, loadgen.AUTHORIZE_METHOD, calls)
        spec["warmup_calls"] = min(20, calls)
        spec["reservation_tag"] = bench.tag("bench-hold")
        spec["callers"] = RESERVE_CALLERS_PER_PROCESS
        specs.append(spec)
    driven = _holds(_drive_unary(loadgen.AUTHORIZE_METHOD, specs, server))
    held = sum(len(r["latencies_s"]) for r in driven.results)
    return held / driven.elapsed_s


@dataclass
class LatencyRuns:
    p50: list[float] = field(default_factory=list)
    p90: list[float] = field(default_factory=list)
    p99: list[float] = field(default_factory=list)
    p999: list[float] = field(default_factory=list)
    qps: list[float] = field(default_factory=list)

    def add(self, latencies_s: list[float]) -> None:
        self.p50.append(percentile(latencies_s, 0.5) * 1e3)
        self.p90.append(percentile(latencies_s, 0.9) * 1e3)
        self.p99.append(percentile(latencies_s, 0.99) * 1e3)
        self.p999.append(percentile(latencies_s, 0.999) * 1e3)
        self.qps.append(len(latencies_s) / sum(latencies_s))

    def figures(self, label: str) -> list[Figure]:
        return [
            Figure(f"{label} p50", "ms", self.p50),
            Figure(f"{label} p90", "ms", self.p90),
            Figure(f"{label} p99", "ms", self.p99),
            Figure(f"{label} p99.9", "ms", self.p999),
            Figure(f"{label} QPS (1 in flight)", "calls/s", self.qps),
        ]


def _guarded(name: str, part: Callable[[], list[Figure]], result: WorkloadResult) -> None:
    """Runs one part of a workload; UNIMPLEMENTED or a failure becomes a note, not a lost run."""
    progress(name)
    try:
        result.figures.extend(part())
    except NotAvailable as e:
        result.notes.append(f"{name}: not available yet: {e}")
    except Exception as e:
        result.notes.append(f"{name}: failed: {type(e).__name__}: {e}")


def authorize_workload(bench: Bench) -> WorkloadResult:
    """Authorize and GetBalance latency unloaded and under ingest load; AuthorizeStream decisions/s; then
    Authorize(reserve=true), a journaled hold per call: latency with one in flight, holds/s with several callers;
    then AuthorizeBatches with every request holding, each hold settled by its usage: holds/s, message latency."""
    config = bench.config
    tariff = bench.main_server()
    noop = bench.reference("noop")
    result = WorkloadResult("authorize")
    _guarded("Authorize", lambda: _authorize_unloaded(bench, tariff, noop), result)
    _guarded("GetBalance", lambda: _balance_unloaded(bench, tariff), result)
    _guarded("Authorize under ingest", lambda: _authorize_under_ingest(bench, tariff), result)
    _guarded("AuthorizeStream", lambda: _authorize_stream(bench, tariff, noop), result)
    _guarded("AuthorizeBatches", lambda: _authorize_batches(bench, tariff, noop), result)
    _guarded("Authorize(reserve=true)", lambda: _reserving(bench, tariff), result)
    _guarded("Authorize(reserve=true) concurrent", lambda: _reserving_concurrently(bench, tariff), result)
    _guarded("AuthorizeBatches(reserve=true)", lambda: _reserving_batches(bench, tariff), result)
    if any(f.metric.startswith("Authorize(reserve=true") for f in result.figures):
        result.notes.append(RESERVE_NOTE)
    if any(f.metric.startswith("AuthorizeBatches(reserve=true") for f in result.figures):
        result.notes.append(BATCH_RESERVE_NOTE)
    if not result.figures:
        result.status, result.reason = "not available", "; ".join(result.notes)
    result.details = {"calls_per_run": config.authorize_calls, "stream_decisions_per_run": config.stream_decisions}
    return result


def _authorize_unloaded(bench: Bench, tariff: ServedProcess, noop: ServedProcess) -> list[Figure]:
    """Authorize p50-p99.9 with one call in flight, against the no-op unary server."""
    config = bench.config
    authorize, reference = LatencyRuns(), LatencyRuns()
    for _ in range(config.runs):
        reference.add(_unary(bench, noop, loadgen.AUTHORIZE_METHOD, config.authorize_calls))
        authorize.add(_unary(bench, tariff, loadgen.AUTHORIZE_METHOD, config.authorize_calls))
    figures = authorize.figures("Authorize unloaded")
    ratio = _ratios(authorize.p99, reference.p99)
    figures[2] = Figure(
        "Authorize unloaded p99",
        "ms",
        authorize.p99,
        "no-op unary p99",
        ratio,
        "≤ 1.5 × no-op p99",
        statistics.median(ratio) <= 1.5,
    )
    figures.append(Figure("no-op unary p99", "ms", reference.p99))
    return figures


def _balance_unloaded(bench: Bench, tariff: ServedProcess) -> list[Figure]:
    """GetBalance p50-p99.9 with one call in flight."""
    config = bench.config
    runs = LatencyRuns()
    for _ in range(config.runs):
        runs.add(_unary(bench, tariff, loadgen.GET_BALANCE_METHOD, config.authorize_calls))
    return runs.figures("GetBalance unloaded")


def _authorize_under_ingest(bench: Bench, tariff: ServedProcess) -> list[Figure]:
    """Authorize and GetBalance latency while ingest runs at the configured fraction of its maximum."""
    config = bench.config
    max_events_s = bench.ingest_max_events_s
    if max_events_s <= 0:
        max_events_s = IngestRun.of(_ingest_probe(bench, tariff)).events_s
    rate = max_events_s * config.ingest_fraction
    runs, balance_runs, achieved = LatencyRuns(), LatencyRuns(), []
    for _ in range(config.runs):
        spec = bench.ingest_spec(tariff.target, 0, events_per_s=rate)
        background = Background(loadgen.ingest_worker, spec)
        background.start()
        try:
            runs.add(_unary(bench, tariff, loadgen.AUTHORIZE_METHOD, config.authorize_calls))
            balance_runs.add(_unary(bench, tariff, loadgen.GET_BALANCE_METHOD, config.authorize_calls))
        finally:
            load = background.stop()
        if load.get("error"):
            raise RuntimeError(f"background ingest failed: {load['error']}")
        achieved.append(load["accepted"] / (load["ended"] - load["started"]))
        bench.events_ingested += load["accepted"]
    pct = int(config.ingest_fraction * 100)
    return [
        Figure(f"Authorize p50 under ingest at {pct}%", "ms", runs.p50),
        Figure(
            f"Authorize p99 under ingest at {pct}%",
            "ms",
            runs.p99,
            target="≤ 5 ms",
            met=statistics.median(runs.p99) <= 5,
        ),
        Figure(f"Authorize p99.9 under ingest at {pct}%", "ms", runs.p999),
        Figure(f"GetBalance p50 under ingest at {pct}%", "ms", balance_runs.p50),
        Figure(f"GetBalance p99 under ingest at {pct}%", "ms", balance_runs.p99),
        Figure(f"ingest achieved (asked {rate:,.0f} ev/s)", "ev/s", achieved),
    ]


def _stream_rates(
    bench: Bench, tariff: ServedProcess, noop: ServedProcess, rpc: str, batch_requests: int, decisions: int
) -> tuple[list[float], list[float]]:
    """Decisions/s on one stream, Tariff and the no-op server in turn, each run."""
    config = bench.config
    tariff_rates: list[float] = []
    reference_rates: list[float] = []
    for _ in range(config.runs):
        for server, rates in ((noop, reference_rates), (tariff, tariff_rates)):
            spec = loadgen.StreamSpec(
                target=server.target,
                customers=config.customers,
                decisions=decisions,
                in_flight=max(256 // batch_requests, 4),
                seconds_max=config.measure_seconds_max,
                batch_requests=batch_requests,
            )
            driven = drive(loadgen.stream_worker, [spec], server)
            error = driven.error
            if error is not None:
                if error[0] == "UNIMPLEMENTED":
                    raise NotAvailable(f"{rpc} answers UNIMPLEMENTED: {error[1]}")
                raise RuntimeError(f"{rpc} failed: {error[0]}: {error[1]}")
            rates.append(driven.results[0]["decisions"] / driven.elapsed_s)
    return tariff_rates, reference_rates


def _authorize_stream(bench: Bench, tariff: ServedProcess, noop: ServedProcess) -> list[Figure]:
    config = bench.config
    tariff_rates, reference_rates = _stream_rates(bench, tariff, noop, "AuthorizeStream", 1, config.stream_decisions)
    return [
        Figure(
            "AuthorizeStream decisions/s",
            "dec/s",
            tariff_rates,
            "no-op stream",
            _ratios(tariff_rates, reference_rates),
        )
    ]


def _authorize_batches(bench: Bench, tariff: ServedProcess, noop: ServedProcess) -> list[Figure]:
    config = bench.config
    decisions = config.stream_decisions * AUTHORIZE_BATCH_DECISIONS_FACTOR
    figures = []
    for batch_requests in (AUTHORIZE_BATCH_REQUESTS, AUTHORIZE_BATCH_REQUESTS_AT_TARGET):
        tariff_rates, reference_rates = _stream_rates(
            bench, tariff, noop, "AuthorizeBatches", batch_requests, decisions
        )
        judged = batch_requests == AUTHORIZE_BATCH_REQUESTS_AT_TARGET
        figures.append(
            Figure(
                f"AuthorizeBatches decisions/s ({batch_requests} a message)",
                "dec/s",
                tariff_rates,
                "no-op batches",
                _ratios(tariff_rates, reference_rates),
                f"≥ {AUTHORIZE_BATCHES_TARGET_S:,} /s" if judged else "",
                statistics.median(tariff_rates) >= AUTHORIZE_BATCHES_TARGET_S if judged else None,
            )
        )
    return figures


def _reserving(bench: Bench, tariff: ServedProcess) -> list[Figure]:
    config = bench.config
    runs = LatencyRuns()
    for _ in range(config.runs):
        runs.add(_reserving_unary(bench, tariff, config.authorize_calls))
    return runs.figures("Authorize(reserve=true, journaled hold) unloaded")


def _reserving_concurrently(bench: Bench, tariff: ServedProcess) -> list[Figure]:
    config = bench.config
    callers = RESERVE_PROCESSES * RESERVE_CALLERS_PER_PROCESS
    rates = [_reservations_s(bench, tariff, config.authorize_calls) for _ in range(config.runs)]
    return [Figure(f"Authorize(reserve=true) journaled holds/s ({callers} callers)", "holds/s", rates)]


def _reserving_batches(bench: Bench, tariff: ServedProcess) -> list[Figure]:
    config = bench.config
    holds_s, runs = [], LatencyRuns()
    for _ in range(config.runs):
        spec = hold_load.HoldSpec(
            target=tariff.target,
            customers=config.customers,
            decisions=config.stream_decisions,
            in_flight=max(256 // AUTHORIZE_BATCH_REQUESTS, 4),
            seconds_max=config.measure_seconds_max,
            batch_requests=AUTHORIZE_BATCH_REQUESTS,
            reservation_tag=bench.tag("bench-batch-hold"),
        )
        held = _settled_holds(drive(hold_load.hold_batches_worker, [spec], tariff))
        holds_s.append(held.results[0]["decisions"] / held.elapsed_s)
        runs.add(held.results[0]["latencies_s"])
    label = f"AuthorizeBatches(reserve=true) message of {AUTHORIZE_BATCH_REQUESTS} holds"
    return [
        Figure(
            f"AuthorizeBatches(reserve=true) journaled holds/s ({AUTHORIZE_BATCH_REQUESTS} a message)",
            "holds/s",
            holds_s,
        ),
        Figure(f"{label} p50", "ms", runs.p50),
        Figure(f"{label} p99", "ms", runs.p99),
    ]


def _ingest_probe(bench: Bench, server: ServedProcess) -> Driven:
    return drive(loadgen.ingest_worker, [bench.ingest_spec(server.target, bench.config.ingest_batches)], server)


def _bulk_ingest(
    bench: Bench, server: ServedProcess, events: int, *, only_customer: int | None = None, customers: int | None = None
) -> IngestRun:
    batch_count = max(1, events // bench.config.batch_events)
    spec = bench.ingest_spec(server.target, batch_count, only_customer=only_customer, customers=customers)
    spec["prebuild"] = False
    return IngestRun.of(drive(loadgen.ingest_worker, [spec], server))


def preview_workload(bench: Bench) -> WorkloadResult:
    """PreviewInvoice for one customer with `preview_events` events in the period (probed first)."""
    config = bench.config
    result = WorkloadResult("preview")
    server = bench.start_tariff("tariff-preview")
    try:
        seed(server.target, 1)
        request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id(0))
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            stub = invoices_pb2_grpc.InvoiceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
            try:
                stub.PreviewInvoice(request, timeout=30)
            except grpc.RpcError as e:
                if e.code() == grpc.StatusCode.UNIMPLEMENTED:
                    result.status, result.reason = (
                        "not available",
                        f"not available yet: PreviewInvoice answers UNIMPLEMENTED ({e.details()})",
                    )
                    return result
                raise
        run = _bulk_ingest(bench, server, config.preview_events, only_customer=0)
        runs = LatencyRuns()
        for _ in range(config.runs):
            runs.add(_unary(bench, server, loadgen.PREVIEW_INVOICE_METHOD, config.preview_calls, customers=1))
        result.figures = [
            Figure("PreviewInvoice p50", "ms", runs.p50),
            Figure(
                "PreviewInvoice p99",
                "ms",
                runs.p99,
                target="≤ 5 ms at 1 M events",
                met=statistics.median(runs.p99) <= 5 if run.accepted >= 1_000_000 else None,
            ),
        ]
        result.details = {
            "events_in_period": run.accepted,
            "events_sent": run.sent,
            "calls_per_run": config.preview_calls,
        }
    finally:
        server.stop()
    return result


def recovery_workload(bench: Bench) -> WorkloadResult:
    """Seconds from process start to SERVING after `recovery_events` journaled events and a SIGKILL."""
    config = bench.config
    result = WorkloadResult("recovery")
    server = bench.start_tariff("tariff-recovery")
    try:
        empty_start_s = []
        seed(server.target, RECOVERY_CUSTOMERS)
        run = _bulk_ingest(bench, server, config.recovery_events, customers=RECOVERY_CUSTOMERS)
        restart_s: list[float] = []
        for _ in range(config.runs):
            server.kill9()
            restart_s.append(server.start(timeout_s=600))
        full = run.accepted >= 10_000_000
        result.figures = [
            Figure(
                f"start → SERVING after kill -9 ({run.accepted:,} events)",
                "s",
                restart_s,
                target="≤ 10 s at 10 M events",
                met=statistics.median(restart_s) <= 10 if full else None,
            )
        ]
        empty = bench.start_tariff("tariff-empty")
        for _ in range(config.runs):
            empty.kill9()
            empty_start_s.append(empty.start())
        empty.stop()
        result.figures.append(Figure("start → SERVING, empty data dir (baseline)", "s", empty_start_s))
        result.details = {"events_journaled": run.accepted, "events_sent": run.sent}
        if not full:
            result.notes.append(
                "recovery: fewer than 10 M events; run `tariff bench --full --only recovery` for the target"
            )
    finally:
        server.stop()
    return result


def cleanup(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def describe_machine() -> dict[str, Any]:
    import os
    import platform

    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "python": platform.python_version(),
        "grpcio": grpc.__version__,
        "platform": platform.platform(),
        "note": "server and load generators share the machine's cores; generators take CPU from the server",
    }
