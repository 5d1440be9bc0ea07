"""Runs the Tariff server: recover from the journal, serve gRPC on uvloop, shut down cleanly on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import fcntl
import functools
import gc
import importlib.metadata
import ipaddress
import logging
import os
import resource
import shlex
import signal
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tariff.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    balance_pb2,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
    usage_pb2,
)

from engine.billing import Billing, RatingChanged
from server import heap, oplog, telemetry
from server.auth import CONCURRENT_RPCS_MAX_DEFAULT, CallGate, KeyFileError, Keyring, load_keys
from server.clock import CLOCK_LOOK_EVERY_S, drive_clock
from server.closer import CLOSE_GRACE_MS_DEFAULT, close_due_periods
from server.demo import load_demo
from server.errors import UndecodableRequests, send_limit
from server.explain_index import MAP_SIZE_BYTES_DEFAULT, ExplainIndex, IndexUnopenable
from server.health import SERVING, HealthService
from server.journal import (
    SNAPSHOT_FILE,
    SNAPSHOTS_DB_NAME,
    JournalFormatError,
    JournalUnopenable,
    LmdbJournal,
    SnapshotDamaged,
)
from server.loopstall import StallSampler
from server.recovery import RECOVERY_PROGRESS_EVERY_S, Backlog, SnapshotUnreadable, recover_counting
from server.scheduling import lower_background_threads, name_os_threads, shorten_slices
from server.sequencer import Sequencer
from server.services import (
    INTAKE_BYTES_MAX_DEFAULT,
    AlertService,
    BalanceService,
    ContractService,
    IntakeBudget,
    InvoiceService,
    PricingService,
    UsageService,
    wall_ms,
)
from server.services.common import page_bytes_within
from server.snapshotting import SNAPSHOT_POLICY_DEFAULT, SnapshotPolicy
from server.watch import WatchHub

log = logging.getLogger("tariff")

MESSAGE_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
SHUTDOWN_GRACE_S = 10.0
LOCK_FILE = "LOCK"
# HTTP/2 PINGs on a connection with open calls (README "Limits and backpressure"). A client may PING as often as
# once a second: gRPC's default of once in 5 minutes took the TypeScript client's PING every 30 s on a quiet
# stream (a watch, an idle IngestUsage stream) for abuse, and closed the connection with its streams (GOAWAY
# too_many_pings) at the third. The server PINGs a connection with open calls at most once a minute, and closes
# it when no answer comes within 20 s: the calls of a peer that vanished without closing (a host gone, a
# partition) free their places among --max-concurrent-rpcs within about 80 s, not gRPC's 2 hours.
KEEPALIVE_PINGS_MIN_INTERVAL_MS = 1_000
KEEPALIVE_PING_STRIKES_MAX = 2  # PINGs too soon that are let pass: the next is GOAWAY (gRPC's default)
KEEPALIVE_TIME_MS = 60_000
KEEPALIVE_TIMEOUT_MS = 20_000
# Descriptors set aside for the server's own files (journal, LMDB, snapshots, explain index, metrics) when client
# connections are capped by the process's limit on open files.
OWN_FILES_RESERVED = 128
# A connection with no call open for this long is sent GOAWAY and closed (--connection-idle-max; README "Limits and
# backpressure"): else a crashed or leaked client's idle connection held one of connections_max() places for good,
# and enough of them refused every new client. gRPC counts only connections with no outstanding call, so a quiet
# watch or stream is never closed by it; a client handles the GOAWAY by connecting again on its next call.
# 30 minutes: far longer than a working client goes between calls, short enough that a leak is undone in the hour.
CONNECTION_IDLE_MS_DEFAULT = 30 * 60 * 1000
OPEN_FILES_WANTED = 1 << 20  # the soft limit is raised to the hard one, up to this


def connections_max() -> int | None:
    """How many client connections the server takes at once: its limit on open files, raised first to the hard
    limit (as Go's runtime does; at most OPEN_FILES_WANTED), less OWN_FILES_RESERVED; None when unlimited. Past
    it gRPC closes a new connection at once: idle connections no longer use up the descriptors the journal and
    snapshots need, nor leave a new client waiting on an accept that fails."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = OPEN_FILES_WANTED if hard == resource.RLIM_INFINITY else min(hard, OPEN_FILES_WANTED)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return None
    return max(soft - OWN_FILES_RESERVED, 1)


@dataclass(frozen=True)
class ServeConfig:
    listen: str
    data_dir: Path
    demo: bool = False
    insecure: bool = False
    map_size_bytes: int = 1 << 30
    message_bytes_max: int = MESSAGE_BYTES_MAX_DEFAULT
    batch_events_max: int = 10_000
    future_skew_ms: int = 5 * 60 * 1000
    snapshot_policy: SnapshotPolicy = SNAPSHOT_POLICY_DEFAULT
    api_keys: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None
    concurrent_rpcs_max: int = CONCURRENT_RPCS_MAX_DEFAULT
    stream_batches_in_flight_max: int = 16
    intake_bytes_max: int = INTAKE_BYTES_MAX_DEFAULT
    otel: str = "off"  # off | console | otlp
    metrics_port: int | None = None
    connection_idle_ms: int | None = CONNECTION_IDLE_MS_DEFAULT  # None: an idle connection is never closed
    log_format: str = "text"  # text | json
    log_level: str = "info"  # debug | info | warning | error
    activity_every_s: float = oplog.ACTIVITY_EVERY_S_DEFAULT
    loop_stall_sample_s: float = 0.0  # 0: no event-loop stall sampling
    clock_look_every_s: float = CLOCK_LOOK_EVERY_S  # how often the clock driver looks for due work
    close_grace_ms: int | None = CLOSE_GRACE_MS_DEFAULT  # how long after its end a period closes; None: never
    explain_index: bool = True  # keep the ExplainLineItem index (<data dir>/explain)
    explain_map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT  # its LMDB map (address space; the file is sparse)
    reservation_ttl_max_s: float = 3600.0  # the longest reservation_ttl an Authorize may ask


# Rating allocates many short-lived objects; what lives long (modules, classes, functions, the recovered state)
# holds no reference cycles worth finding. Freeze it once after recovery: a full collection then scans only what
# was created since. The young generation is collected every 2,000 allocations (the default is 700): grpc.aio's
# server leaves 5 objects in a reference cycle behind every call (its handler lookup's closure; the call's state
# and context no longer: see CallGate._admit), so under Authorize traffic the young generation is mostly such
# garbage, and a young collection's pause grows with the threshold: at 10,000, 3.5-9.5 ms for the ~8,000 objects
# each one freed in a server under the stall bench (when a call left ~11), a pause an Authorize waits out; at 2,000
# a fifth of that, for the same total.
#
# Nothing is frozen after that, and nothing is ever unfrozen. A customer's state is not tracked by the collector
# (seeding 10,000 customers adds ~1,100 tracked objects), so the objects created while serving stay few and a
# full collection of them costs well under a millisecond. Unfreezing, as an earlier release did every 5 minutes
# to find cycles among objects it had frozen while serving, makes one collection scan everything the process
# tracks: 12-16 ms at 50,000 customers in-process (`python -m server.bench.gc_pause`), 17-19 ms in a server. What
# the startup freeze can leak is bounded: cycles formed among objects that existed at recovery.
GC_THRESHOLDS = (2_000, 10, 10)


def tune_garbage_collector() -> None:
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def listen_refusal(config: ServeConfig) -> str | None:
    """Why the server must not start with this address and security set-up, or None when it may."""
    _, colon, port = config.listen.rpartition(":")
    # gRPC would bind a port past 65535 modulo 65536 and a bare host as port 443. Port 0: any free port. ASCII digits
    # only: str.isdigit() also takes other scripts' digits and superscripts, which int() or gRPC cannot read.
    if not colon or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        return f"cannot listen on {config.listen}: give host:port, the port from 0 (any free port) to 65535"
    host = config.listen[: -len(port) - 1]
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        return f"cannot listen on {config.listen}: write an IPv6 host in brackets: [{host}]:{port}"
    if (config.tls_cert is None) != (config.tls_key is None):
        return "--tls-cert and --tls-key go together"
    if config.tls_client_ca is not None and config.tls_cert is None:
        return "--tls-client-ca (mutual TLS) needs --tls-cert and --tls-key"
    if config.api_keys is None and not config.insecure and not is_loopback(config.listen):
        return (
            f"refusing to listen on {config.listen} without API keys: use --api-keys, a loopback address or --insecure"
        )
    return None


def _server_credentials(config: ServeConfig) -> grpc.ServerCredentials | None:
    if config.tls_cert is None or config.tls_key is None:
        return None
    client_ca = config.tls_client_ca.read_bytes() if config.tls_client_ca is not None else None
    return grpc.ssl_server_credentials(
        [(config.tls_key.read_bytes(), config.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


class DataDirLock:
    """An exclusive lock on a data directory, held for the server's life: `flock` on `<data-dir>/LOCK`.

    The OS drops the lock when the process dies however it dies (kill -9 included), so a lock is never stale;
    the file holds the holder's pid only to name it in the refusal.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._file: IO[str] | None = None

    def acquire(self) -> str | None:
        """Takes the lock, or returns the pid of the process holding it ("unknown" when it wrote none), without
        writing anything; each caller says what to do about it (serve and migrate differ)."""
        handle = open(self.path, "a+")  # noqa: SIM115 - held open for the server's life; creates, never truncates
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            handle.close()
            return holder
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._file = handle
        return None

    def release(self) -> None:
        if self._file is not None:
            self._file.close()  # closing the descriptor releases the flock
            self._file = None


def metrics_port_refusal(metrics_port: int) -> str | None:
    """Opens the Prometheus endpoint on 127.0.0.1:`metrics_port`, or returns why it cannot, in one line."""
    try:
        telemetry.serve_metrics(metrics_port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"--metrics-port {metrics_port}: 127.0.0.1:{metrics_port} is already in use"
        return f"--metrics-port {metrics_port}: cannot listen on 127.0.0.1:{metrics_port}: {exc.strerror or exc}"
    return None


def data_dir_refusal(data_dir: Path) -> str | None:
    """Makes the data directory (and its parents) when missing; or says, in one line, why it cannot be one."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        return f"--data-dir {data_dir}: a file, not a directory"
    except OSError as exc:
        return f"--data-dir {data_dir}: cannot create it: {exc.strerror or exc}"
    return None


def listen_failure(listen: str, *, tls: bool = False) -> str:
    """Why binding `listen` failed, in one line: the bind error a plain socket gets on that address, or, when a
    plain socket binds it and TLS is on, that gRPC could not use the TLS files."""
    host, _, port = listen.rpartition(":")
    try:
        infos = socket.getaddrinfo(host.strip("[]"), int(port), type=socket.SOCK_STREAM)
        family, kind, proto, _, address = infos[0]
        with socket.socket(family, kind, proto) as probe:
            probe.bind(address)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            return f"{listen} is already in use"
        return f"cannot listen on {listen}: {exc.strerror or exc}"
    except ValueError:
        return f"cannot listen on {listen}: not a host:port address"
    if tls:
        return (
            f"cannot listen on {listen} with TLS: gRPC could not use --tls-cert and --tls-key (a PEM certificate "
            "chain and its matching PEM private key) or --tls-client-ca (PEM certificates)"
        )
    return f"cannot listen on {listen}"


def _bind(server: grpc.aio.Server, config: ServeConfig, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is not None:
            port: int = server.add_secure_port(config.listen, credentials)
        else:
            port = server.add_insecure_port(config.listen)
        return port
    except RuntimeError:  # grpc raises on a failed bind (older versions returned 0)
        return 0


def _grpc_server(config: ServeConfig, gate: CallGate) -> grpc.aio.Server:
    """The gRPC server, its interceptors and its transport limits (message size, keepalive, connections); not
    yet bound."""
    connections = connections_max()
    return grpc.aio.server(
        # UndecodableRequests first: a request that does not parse is INVALID_ARGUMENT, whoever sends it.
        interceptors=[UndecodableRequests(), gate],
        options=[
            ("grpc.max_receive_message_length", config.message_bytes_max),
            ("grpc.max_send_message_length", config.message_bytes_max),
            # gRPC sets SO_REUSEPORT by default: a second server on a taken port would then bind too, and the
            # two would share connections (and answer from two different states).
            ("grpc.so_reuseport", 0),
            ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_PINGS_MIN_INTERVAL_MS),
            ("grpc.http2.max_ping_strikes", KEEPALIVE_PING_STRIKES_MAX),
            ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
            ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
            ("grpc.http2.ping_timeout_ms", KEEPALIVE_TIMEOUT_MS),  # else gRPC waits 60 s for a keepalive PING's ACK
            *([] if connections is None else [("grpc.max_allowed_incoming_connections", connections)]),
            *(
                []
                if config.connection_idle_ms is None
                else [("grpc.max_connection_idle_ms", config.connection_idle_ms)]
            ),
        ],
    )


async def serve(config: ServeConfig) -> int:
    started = time.monotonic()
    refusal = listen_refusal(config)
    if refusal is not None:
        log.error("%s", refusal)
        return 2
    keyring: Keyring | None = None
    try:
        if config.api_keys is not None:
            keyring = Keyring(load_keys(config.api_keys))
        credentials = _server_credentials(config)
    except KeyFileError as exc:
        log.error("%s", exc)
        return 2
    except OSError as exc:
        log.error("cannot read a TLS file: %s", exc)
        return 2

    recovered: list[Billing] = []  # the state, once recovered (before the server starts answering)

    def customer_of_contract(contract_id: str) -> str | None:
        contract = recovered[0].engine.state.contracts.get(contract_id) if recovered else None
        return contract.customer_id if contract is not None else None

    def customer_of_alert_rule(rule_id: str) -> str | None:
        book = recovered[0].engine.state.alerts if recovered else None
        rule = (book.rules.get(rule_id) or book.deleted.get(rule_id)) if book is not None else None
        return rule.customer_id if rule is not None else None

    gate = CallGate(keyring, customer_of_contract, config.concurrent_rpcs_max, customer_of_alert_rule)
    server = _grpc_server(config, gate)
    # Bind first: a taken port must refuse before anything is read, locked or written.
    bound_port = _bind(server, config, credentials)
    if bound_port == 0:
        log.error("%s", listen_failure(config.listen, tls=credentials is not None))
        await server.stop(None)
        return 2
    host, _, port = config.listen.rpartition(":")
    if int(port) == 0:  # any free port: the log and the banner name the one bound
        config = dataclasses.replace(config, listen=f"{host}:{bound_port}")
    metrics_refusal = metrics_port_refusal(config.metrics_port) if config.metrics_port is not None else None
    if metrics_refusal is not None:
        log.error("%s", metrics_refusal)
        await server.stop(None)
        return 2
    unusable = data_dir_refusal(config.data_dir)
    if unusable is not None:
        log.error("%s", unusable)
        await server.stop(None)
        return 2
    lock = DataDirLock(config.data_dir)
    holder = lock.acquire()
    if holder is not None:
        log.error(
            "the data directory %s is in use by another Tariff server (pid %s); stop it, or give this one another "
            "--data-dir",
            config.data_dir,
            holder,
        )
        await server.stop(None)
        return 2
    try:
        return await _serve_locked(config, server, keyring, credentials is not None, started, recovered)
    finally:
        lock.release()


async def _serve_locked(
    config: ServeConfig,
    server: grpc.aio.Server,
    keyring: Keyring | None,
    tls: bool,
    started: float,
    recovered: list[Billing],
) -> int:
    """Recovers, seeds the demo, serves until a signal, shuts down: with the port bound and the data dir locked."""
    if keyring is not None:
        _log_keys(config, keyring, tls)
    opened = await _recover(config, server)
    if opened is None:
        return 2
    journal, explain_index, billing, backlog = opened
    recovery_s = time.monotonic() - started
    recovered.append(billing)
    if config.close_grace_ms is not None:
        billing.engine.next_period_end_ms()  # builds the close driver's heap now, not on the loop once serving
    tune_garbage_collector()
    stop_telemetry = telemetry.configure(telemetry.OtelExporter(config.otel), config.metrics_port)
    telemetry.gauges.journal_bytes = lambda: journal.stats().used_bytes
    sequencer = Sequencer(
        billing,
        journal,
        snapshot_policy=config.snapshot_policy,
        explain_index=explain_index,
        backlog=backlog,
    )
    sequencer.start()
    lower_background_threads()
    name_os_threads()
    shorten_slices()
    # Before the banner, which tells a supervisor (and the tests) that the server is up: a SIGTERM sent at once then
    # stops it cleanly, where before the handlers were installed it killed the process (exit -15).
    stop = _stop_on_signal()
    health_servicer, watch = await _start_serving(config, server, billing, sequencer, recovery_s, backlog)
    oplog.activity.report(lambda: 0)  # the first interval starts now
    stalls = StallSampler(config.loop_stall_sample_s) if config.loop_stall_sample_s > 0 else None
    sampler = asyncio.create_task(stalls.run()) if stalls is not None else None
    reporter = asyncio.create_task(report_activity(config.activity_every_s, lambda: journal.stats().used_bytes, stalls))
    drivers = _start_drivers(config, billing, sequencer)
    await _until_stopped(stop, sequencer)
    for driver in drivers:
        driver.cancel()

    # Stop taking work, let in-flight calls finish (their batches commit and are acked), then close the journal.
    log.info("shutting down")
    health_servicer.stop()  # NOT_SERVING; its Watch streams, like the watch streams, end now
    watch.close()  # watch streams never end on their own: ended now, they do not hold the grace period
    await server.stop(SHUTDOWN_GRACE_S)
    if sequencer.failure is None:
        await sequencer.close()
    reporter.cancel()
    if sampler is not None:
        sampler.cancel()
    journal_bytes = journal.stats().used_bytes
    log_activity(journal_bytes, stalls)  # the interval the stop cut short: its counts are not lost
    stop_telemetry()  # its last export reads the journal's size: before the journal closes
    journal.close()
    if explain_index is not None:
        explain_index.close()
    oplog.line(
        f"stopped at journal seq {billing.last_seq}",
        journal_bytes=journal_bytes,
        uptime_s=round(time.monotonic() - started, 1),
        clean=sequencer.failure is None,
    )
    return 1 if sequencer.failure is not None else 0


def _log_keys(config: ServeConfig, keyring: Keyring, tls: bool) -> None:
    if not tls and not is_loopback(config.listen):
        log.warning(
            "WARNING: serving %s with API keys but WITHOUT TLS: keys and billing data cross the network in clear "
            "text; use --tls-cert/--tls-key",
            config.listen,
        )
    log.info("API keys: %d loaded from %s", len(keyring), config.api_keys)


def _start_drivers(config: ServeConfig, billing: Billing, sequencer: Sequencer) -> list[asyncio.Task[None]]:
    """The tasks that submit commands on their own: the period closer (unless turned off) and the clock."""
    # Reservation and grant expiry and rollovers, journaled.
    drivers = [asyncio.create_task(drive_clock(billing, sequencer, every_s=config.clock_look_every_s))]
    grace_ms = config.close_grace_ms
    if grace_ms is not None:
        drivers.append(asyncio.create_task(close_due_periods(billing, sequencer, grace_ms, wall_ms)))
    return drivers


async def _recover(
    config: ServeConfig, server: grpc.aio.Server
) -> tuple[LmdbJournal, ExplainIndex | None, Billing, Backlog] | None:
    """Opens the journal and recovers its state (and what the replay counts toward the next snapshot); None
    (logged, server stopped) when it cannot start."""
    try:
        journal = LmdbJournal(config.data_dir / "journal", map_size_bytes=config.map_size_bytes)
    except (JournalFormatError, JournalUnopenable) as exc:
        log.error("%s", _refusal(config, exc))
        await server.stop(None)
        return None
    try:
        explain_index = (
            ExplainIndex(config.data_dir / "explain", map_size_bytes=config.explain_map_size_bytes)
            if config.explain_index
            else None
        )
    except IndexUnopenable as exc:
        log.error("%s", exc)
        journal.close()
        await server.stop(None)
        return None
    try:
        billing, backlog = recover_counting(
            journal,
            future_skew_ms=config.future_skew_ms,
            progress_every_s=RECOVERY_PROGRESS_EVERY_S,
            explain_index=explain_index,
        )
    except (RatingChanged, SnapshotUnreadable) as exc:
        log.error("%s", _refusal(config, exc, snapshot_in_map=journal.snapshot_in_map()))
        journal.close()
        if explain_index is not None:
            explain_index.close()
        await server.stop(None)
        return None
    # Recovery's transient buffers (records, the snapshot, the tables' encoding) are freed by now.
    heap.trim_heap()
    return journal, explain_index, billing, backlog


def _refusal(config: ServeConfig, exc: Exception, *, snapshot_in_map: bool = False) -> str:
    """The line a start refused for `exc` logs: a damaged snapshot's says what the operator can do (it only shortens
    the replay, and the dedupe segments no snapshot lists are deleted at the next open). An earlier release's
    snapshot (`snapshot_in_map`) has no file to move aside: the line gives the command that drops its database,
    py-lmdb's tool run by this server's Python (lmdb is one of Tariff's dependencies); the next open makes it anew,
    empty, as the server leaves it once a newer snapshot is saved."""
    if not isinstance(exc, SnapshotDamaged | SnapshotUnreadable):
        return str(exc)
    journal = config.data_dir / "journal"
    if snapshot_in_map:
        drop = shlex.join([sys.executable, "-m", "lmdb", "drop", "-e", str(journal), SNAPSHOTS_DB_NAME])
        return (
            f"{exc}; it is an earlier release's snapshot, kept in the journal's `{SNAPSHOTS_DB_NAME}` database, not in "
            f"a file; the journal keeps every record: drop that database (`{drop}`: the next start makes it anew, "
            "empty) and the start replays all of it"
        )
    aside = journal / SNAPSHOT_FILE
    return f"{exc}; the journal keeps every record: move {aside} aside and the start replays all of it"


async def _start_serving(
    config: ServeConfig,
    server: grpc.aio.Server,
    billing: Billing,
    sequencer: Sequencer,
    recovery_s: float,
    backlog: Backlog,
) -> tuple[HealthService, WatchHub]:
    """Seeds the demo on an empty journal, adds the services, starts answering and says so (with what the
    recovery replayed after its snapshot: a start from a restored backup or after a crash shows what it cost)."""
    if config.demo and billing.last_seq == 0:
        await load_demo(sequencer, wall_ms())
        log.info("loaded the demo catalogue (rate card ai-credits, customer acme)")
    watch = _add_services(server, billing, sequencer, config)
    health_servicer = HealthService()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection([*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    await server.start()
    for name in ["", *SERVICE_NAMES]:
        health_servicer.set(name, SERVING)
    oplog.line(
        "serving",
        version=tariff_version(),
        listen=config.listen,
        data_dir=config.data_dir,
        journal_seq=billing.last_seq,
        customers=len(billing.engine.state.customers),
        recovery_s=round(recovery_s, 2),
        replayed_records=backlog.records,
        replayed_events=backlog.events,
    )
    print(_banner(config, billing.last_seq), flush=True)
    return health_servicer, watch


def _stop_on_signal() -> asyncio.Event:
    """The event SIGTERM and SIGINT set from now on, in place of their default (ending the process at once)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop


async def _until_stopped(stop: asyncio.Event, sequencer: Sequencer) -> None:
    """Until SIGTERM or SIGINT (`stop`, from `_stop_on_signal`), or the writer stopping (a broken invariant)."""
    loop = asyncio.get_running_loop()
    writer_stopped = asyncio.ensure_future(sequencer.stopped.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), writer_stopped], return_when=asyncio.FIRST_COMPLETED)
    # Stopping has begun: a second SIGTERM or SIGINT has nothing more to ask. Ignored, not left to the loop, whose
    # close sets them back to the default, so that one arriving after the clean stop, while the process exits
    # (freeing the kernel's state, ending threads), would kill it and turn exit code 0 into -15.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.remove_signal_handler(signum)
        signal.signal(signum, signal.SIG_IGN)


SERVICE_NAMES = [
    usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
    balance_pb2.DESCRIPTOR.services_by_name["BalanceService"].full_name,
    pricing_pb2.DESCRIPTOR.services_by_name["PricingService"].full_name,
    contracts_pb2.DESCRIPTOR.services_by_name["ContractService"].full_name,
    invoices_pb2.DESCRIPTOR.services_by_name["InvoiceService"].full_name,
    alerts_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name,
]


def whole_ms_within(seconds: float) -> int:
    """The longest whole number of milliseconds within `seconds` (at least 0.001, as the CLI takes it). Rounded to
    the nearest, 1.0015 s would allow a TTL of 1.002 s, beyond the maximum; the decimal the flag was written as (the
    float's repr), not the float times 1000 floored, which gives 1000 for 1.001 (1000.9999999999999)."""
    return int(Decimal(repr(seconds)) * 1000)


def _add_services(server: grpc.aio.Server, billing: Billing, sequencer: Sequencer, config: ServeConfig) -> WatchHub:
    usage = UsageService(billing, sequencer)
    usage.batch_events_max = config.batch_events_max
    usage.ack_bytes_max = config.message_bytes_max
    usage.stream_batches_in_flight_max = config.stream_batches_in_flight_max
    usage.intake = IntakeBudget(config.intake_bytes_max)
    # Raw bytes in and out: the kernel decodes the UsageBatch and encodes the IngestAck.
    server.add_generic_rpc_handlers((usage.generic_handler(),))
    # AuthorizeBatches on raw bytes too: the kernel decodes the AuthorizeBatch and encodes its answers.
    watch = WatchHub(billing, sequencer)  # WatchBalance and WatchAlerts streams, woken by the writer's commits
    balance = BalanceService(billing, sequencer, watch=watch)
    balance.reservation_ttl_max_ms = whole_ms_within(config.reservation_ttl_max_s)
    balance.result_bytes_max = config.message_bytes_max
    server.add_generic_rpc_handlers((balance.generic_handler(),))
    pricing = PricingService(billing, sequencer)
    contracts = ContractService(billing, sequencer)
    invoices = InvoiceService(billing, sequencer)
    alerts = AlertService(billing, sequencer, watch=watch)
    for paged in (pricing, contracts, invoices, alerts):  # so that gRPC can send every page under the message limit
        paged.page_bytes_max = page_bytes_within(config.message_bytes_max)
    send_limit.bytes_max = config.message_bytes_max  # and refuses a larger unpaged answer saying so
    pricing_pb2_grpc.add_PricingServiceServicer_to_server(pricing, server)
    contracts_pb2_grpc.add_ContractServiceServicer_to_server(contracts, server)
    invoices_pb2_grpc.add_InvoiceServiceServicer_to_server(invoices, server)
    alerts_pb2_grpc.add_AlertServiceServicer_to_server(alerts, server)
    return watch


async def report_activity(every_s: float, journal_bytes: Callable[[], int], stalls: StallSampler | None = None) -> None:
    """The periodic activity line, only for an interval in which something happened."""
    while True:
        await asyncio.sleep(every_s)
        # Read on a thread: LMDB's statistics read pages of the journal's map, which can wait for the disk
        # (a 45 ms and a 609 ms stall of the loop were measured in this call under the stall bench).
        log_activity(await asyncio.to_thread(journal_bytes), stalls)


def log_activity(journal_bytes: int, stalls: StallSampler | None) -> None:
    """The activity line of the interval ending now, if something happened in it; a new interval begins."""
    fields = oplog.activity.report(functools.partial(int, journal_bytes))
    stall_ms = stalls.take() if stalls is not None else None
    if fields is not None:
        if stall_ms is not None and stalls is not None:
            fields["loop_stall_max_ms"] = stall_ms
            fields["loop_stall_cpu_ms"] = stalls.cpu_ms
            if stalls.runqueue_ms is not None:
                fields["loop_stall_runqueue_ms"] = stalls.runqueue_ms
        oplog.line("activity", **fields)


def tariff_version() -> str:
    try:
        return importlib.metadata.version("tariff")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def _interpreter_command() -> str:
    """This server's Python as a shell word for the banner's example: relative to the working directory when
    inside it (`.venv/bin/python` under `make run`), else absolute (a wheel's venv elsewhere, the Docker image)."""
    if not sys.executable:  # an embedding that cannot say: whichever python3 is on PATH
        return "python3"
    executable = Path(sys.executable)
    if executable.is_relative_to(Path.cwd()):
        executable = executable.relative_to(Path.cwd())
    shown = str(executable)
    return shlex.quote(shown if os.sep in shown else f".{os.sep}{shown}")


def _banner(config: ServeConfig, seq: int) -> str:
    lines = [
        f"tariff: serving gRPC on {config.listen} (data in {config.data_dir}, journal seq {seq})",
        "  services: UsageService BalanceService PricingService ContractService InvoiceService AlertService, health, reflection",
    ]
    if config.demo:
        # The examples say what this server needs: TLS (and a CA to trust), an API key; the Python one runs on
        # this server's interpreter, where the client is installed.
        transport = f"-cacert {config.tls_cert} " if config.tls_cert is not None else "-plaintext "
        key_header = "-H 'authorization: Bearer $TARIFF_API_KEY' " if config.api_keys is not None else ""
        imports = "import os; " if config.api_keys is not None else ""
        client_args = ", api_key=os.environ['TARIFF_API_KEY']" if config.api_keys is not None else ""
        if config.tls_cert is not None:
            client_args += f", root_certificates=open('{config.tls_cert}', 'rb').read()"
        lines.append(
            f'  try:     grpcurl {transport}{key_header}-d \'{{"customer_id": "acme"}}\' '
            f"{config.listen} tariff.v1.BalanceService/GetBalance"
        )
        lines.append(
            f'  or:      {_interpreter_command()} -c "{imports}from tariff import TariffClient; '
            f"print(TariffClient('{config.listen}'{client_args}).get_balance('acme'))\""
        )
    return "\n".join(lines)


def run(config: ServeConfig) -> int:
    import uvloop

    oplog.configure(config.log_format, config.log_level)
    return uvloop.run(serve(config))
