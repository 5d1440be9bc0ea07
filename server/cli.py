"""The `tariff` command: `serve` runs the server, `migrate` converts an earlier release's data directory, `backup`
copies a data directory beside the server using it, `keys` manages API keys, `bench` measures the server, and the
client commands (server/admin/) look at and change a running server over gRPC.

This module imports click and the command modules only: grpc, protobuf and rich load inside the command
that needs them, so `tariff --help` starts fast.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import click

from server import oplog
from server.admin import add_commands
from server.admin.output import exit_on_broken_pipe

if TYPE_CHECKING:
    from _typeshed import SupportsWrite


class Tariff(click.Group):
    """The `tariff` group: output into a pipe whose reader has gone (`tariff customers list | head -1`) ends the
    command quietly with status 141 (click's own handling exits 1, a failed call's status). Parsing covers `--help`
    and `--version`; invoking covers every command, a subcommand's `--help` included, and the last flush of what
    stdout still buffers (a CSV export, say)."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except BrokenPipeError:
            exit_on_broken_pipe()

    def invoke(self, ctx: click.Context) -> object:
        try:
            try:
                result = super().invoke(ctx)
            finally:  # a command that exits (a failed call, `usage send` with rejections) has printed too
                if sys.stdout is not None:  # None: fd 1 was closed (`>&-`)
                    sys.stdout.flush()
        except BrokenPipeError:
            exit_on_broken_pipe()
        return result


@click.group(cls=Tariff, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 120})
@click.version_option(package_name="tariff", prog_name="tariff")
def main() -> None:
    """Tariff: a billing runtime for usage-priced products.

    Client commands reach the server at --server (env TARIFF_SERVER, default 127.0.0.1:50051) with --api-key
    (env TARIFF_API_KEY) and wait --timeout-s (env TARIFF_TIMEOUT_S, default 10) for each answer; they print
    tables, or JSON with --json, and exit 1 with the server's status code and message when a call fails, 2 for a
    malformed argument (before anything is sent) or a closed stdout (`>&-`), 3 when the server was not reached (UNAVAILABLE) or did not answer
    in time (DEADLINE_EXCEEDED), 130 when interrupted (Ctrl-C; a watch exits 0), 141 when stdout's reader stopped
    reading (`| head -1`).
    """


def _mib(value: int) -> int:
    return value * 1024 * 1024


# What one refused event's rejection takes in an IngestAck with every id and message left out (server/services/usage.py
# ids_left_out): an index (its tag and up to 5 bytes of varint), a reason (2), the entry's tag and length (2). An
# empty event takes 2 bytes of its batch, so an ack may be 5 times its batch: the events a batch may hold are bounded
# by what one ack can answer, its batch_id and counts (under 300 bytes) within a 1 KiB allowance.
ACK_BYTES_AN_EVENT = 10
ACK_BYTES_BESIDE_EVENTS = 1024


def _events_one_ack_answers(message_mb_max: int) -> int:
    return (_mib(message_mb_max) - ACK_BYTES_BESIDE_EVENTS) // ACK_BYTES_AN_EVENT


def _check_batch_events_max(batch_events_max: int, message_mb_max: int) -> None:
    """A usage error when a batch may hold more events than one ack can answer within --message-mb-max: gRPC
    would refuse to send the ack of such a batch of refused events, committed or not, and of every resend."""
    most = _events_one_ack_answers(message_mb_max)
    if batch_events_max > most:
        raise click.BadParameter(
            f"{batch_events_max} is more events than one ack can answer within --message-mb-max {message_mb_max}"
            f" ({ACK_BYTES_AN_EVENT} bytes an event): at most {most}",
            param_hint="'--batch-events-max'",
        )


# --listen hosts whose port the metrics endpoint on 127.0.0.1 cannot take too: it, localhost and the wildcards.
HOSTS_HOLDING_LOOPBACK = frozenset({"127.0.0.1", "localhost", "0.0.0.0", "::", ""})


def _check_metrics_port(metrics_port: int | None, listen: str) -> None:
    """A usage error when --metrics-port is the port gRPC listens on at 127.0.0.1: the server itself would hold it,
    and the start's refusal said only that 127.0.0.1:PORT is already in use, as if another process held it."""
    host, _, port = listen.rpartition(":")
    if metrics_port is not None and port == str(metrics_port) and host.strip("[]") in HOSTS_HOLDING_LOOPBACK:
        raise click.BadParameter(
            f"{metrics_port} is the port of --listen {listen}: give the metrics endpoint a port of its own",
            param_hint="'--metrics-port'",
        )


# gRPC reads --connection-idle-max as a 32-bit count of milliseconds: about 24 days.
CONNECTION_IDLE_MS_MAX = 2**31 - 1


def _connection_idle_ms(text: str, parse_duration_ms: Callable[[str], int | None]) -> int | None:
    """--connection-idle-max in ms, None for `off`; 0 (every connection closed at once) or past what gRPC reads is
    a usage error (exit 2)."""
    try:
        idle_ms = parse_duration_ms(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--connection-idle-max'") from None
    if idle_ms is not None and not 1 <= idle_ms <= CONNECTION_IDLE_MS_MAX:
        raise click.BadParameter(
            f"{text} is not within 1ms..{CONNECTION_IDLE_MS_MAX:,}ms (or off)", param_hint="'--connection-idle-max'"
        )
    return idle_ms


Number = TypeVar("Number", int, float)


def _within(low: float, high: float | None = None) -> Callable[[click.Context, click.Parameter, Number], Number]:
    """An option callback refusing a value outside [low, high], or NaN or infinity, as a usage error (exit 2). Unlike
    click.IntRange it leaves the help's `[default: N]` as it is."""

    def check(_ctx: click.Context, _param: click.Parameter, value: Number) -> Number:
        if not math.isfinite(value):  # no interval or factor a server runs by; `1e400` reads as infinity
            raise click.BadParameter(f"{value} is not a finite number")
        if not low <= value or (high is not None and not value <= high):
            raise click.BadParameter(
                f"{value} is not within {_bound(low)}..{_bound(high)}"
                if high is not None
                else f"{value} is not at least {_bound(low)}"
            )
        return value

    return check


def _optional(
    check: Callable[[click.Context, click.Parameter, int], int],
) -> Callable[[click.Context, click.Parameter, int | None], int | None]:
    """`check` for an option with no default: its absence (None) passes."""

    def check_given(ctx: click.Context, param: click.Parameter, value: int | None) -> int | None:
        return None if value is None else check(ctx, param, value)

    return check_given


def _bound(bound: float) -> str:
    """A bound as written: an int's every digit (31622400, not 3.16224e+07), a float as :g writes it (0.001)."""
    return str(bound) if isinstance(bound, int) else f"{bound:g}"


# --future-skew-s at most: a year (usage further ahead means nothing: the dedupe window is 35 days; 10^17 s ended
# the start in an OverflowError).
FUTURE_SKEW_S_MAX = 366 * 86_400
# --reservation-ttl-max-s at most: the longest protobuf Duration (no request can ask longer). NaN and infinity, which
# click.FloatRange let through, stopped the start in a traceback once the data directory was open.
RESERVATION_TTL_MAX_S_MAX = 315_576_000_000


@main.command(context_settings={"show_default": True})
@click.option("--listen", default="127.0.0.1:50051", help="address to listen on")
@click.option("--data-dir", type=click.Path(path_type=Path), default="./data", help="where the LMDB journal lives")
@click.option("--demo", is_flag=True, help="load the demo catalogue when the journal is empty")
@click.option("--insecure", is_flag=True, help="allow a non-loopback listen address without API keys")
@click.option(
    "--map-size-mb",
    type=int,
    default=1024,
    callback=_within(1),
    help="LMDB map size in MiB, at least 1; grows the map when raised",
)
@click.option(
    "--batch-events-max",
    type=int,
    default=10_000,
    callback=_within(1),
    help="most events one UsageBatch may hold, at least 1",
)
# gRPC takes a message limit below 2 GiB (an int of bytes).
@click.option(
    "--message-mb-max", type=int, default=16, callback=_within(1, 2047), help="largest gRPC message in MiB, 1 to 2047"
)
@click.option(
    "--future-skew-s",
    type=int,
    default=300,
    callback=_within(0, FUTURE_SKEW_S_MAX),
    help="how far in the future an event timestamp may be, seconds, 0 to 31,622,400 (366 days)",
)
@click.option(
    "--snapshot-every",
    type=int,
    default=5_000,
    callback=_within(1),
    help="journal records between snapshots, at least 1",
)
@click.option(
    "--snapshot-every-events",
    type=int,
    default=1_000_000,
    callback=_within(1),
    help="usage events between snapshots (whichever of the two comes first), at least 1",
)
@click.option(
    "--snapshot-journal-factor",
    type=float,
    default=0.5,
    callback=_within(0.0),
    help="a snapshot also waits until the journal has taken this many times the last snapshot's bytes, 0 or more "
    "(0: no wait)",
)
@click.option(
    "--api-keys",
    type=click.Path(path_type=Path),
    help="API key file (JSON, or TOML if it ends in .toml); see `tariff keys`  [default: none: no keys]",
)
@click.option("--tls-cert", type=click.Path(path_type=Path), help="PEM certificate chain of the server (TLS)")
@click.option("--tls-key", type=click.Path(path_type=Path), help="PEM private key of the server (TLS)")
@click.option(
    "--tls-client-ca",
    type=click.Path(path_type=Path),
    help="PEM CA that client certificates must chain to (mutual TLS)",
)
@click.option(
    "--max-concurrent-rpcs",
    type=int,
    default=1_000,
    callback=_within(1),
    help="calls running at once, at least 1; more: RESOURCE_EXHAUSTED",
)
@click.option(
    "--connection-idle-max",
    default="30m",
    help="how long a client connection with no call open is kept before it is closed (GOAWAY; the client "
    "connects again on its next call), e.g. 30m, 90s, 500ms, 1 ms to 2,147,483,647 ms (about 24 days); off: kept for "
    "good",
)
@click.option(
    "--intake-mb-max",
    type=int,
    default=256,
    callback=_within(1),
    help="MiB of usage batches read but not yet answered, all streams together, at least 1; past it reading waits",
)
@click.option(
    "--stream-inflight-batches-max",
    type=int,
    default=16,
    callback=_within(1),
    help="batches of one IngestUsage stream awaiting commit, at least 1",
)
@click.option(
    "--otel",
    type=click.Choice(["off", "console", "otlp"]),
    default="off",
    help="OpenTelemetry export: metrics and control-plane traces to stdout, or OTLP/gRPC",
)
@click.option(
    "--metrics-port",
    type=int,
    callback=_optional(_within(1, 65535)),
    help="serve Prometheus metrics on 127.0.0.1:PORT/metrics, PORT 1 to 65535, not the gRPC listen port  "
    "[default: none]",
)
@click.option("--log-format", type=click.Choice(oplog.LOG_FORMATS), default="text", help="the operator's log on stderr")
@click.option(
    "--log-level",
    type=click.Choice(oplog.LOG_LEVELS, case_sensitive=False),
    default="info",
    help="the least severe log lines written",
)
@click.option(
    "--log-activity-every-s",
    type=float,
    default=oplog.ACTIVITY_EVERY_S_DEFAULT,
    callback=_within(0.001),
    help="seconds between activity lines (written only when there was activity), at least 0.001",
)
@click.option(
    "--loop-stall-sample-ms",
    type=float,
    callback=_within(0.0),
    default=0.0,
    show_default="off",
    help="sample the event loop's longest stall every this many ms, 0 or more (0: off), reported in the activity line",
)
@click.option(
    "--clock-look-every-ms",
    type=int,
    default=50,
    callback=_within(1),
    help="milliseconds, at least 1: how often the clock driver looks for due work (holds' TTLs, grants' expiries, rollovers) to journal; "
    "reads answer as if it were recorded the instant it is due, and the writer records it before any change",
)
@click.option(
    "--close-grace",
    default="24h",
    help="how long after a billing period ends it is closed by itself (its invoice made final), e.g. 24h, 30m, 0s; "
    "off: only ClosePeriod and CloseDuePeriods close periods",
)
@click.option(
    "--explain-index/--no-explain-index",
    default=True,
    help="keep the index ExplainLineItem reads (<data dir>/explain), written off the ack path",
)
# LMDB takes any size of address space up to what the machine maps; 64 TiB is a bound on a typo, not on LMDB.
@click.option(
    "--explain-map-mb",
    type=int,
    default=65_536,
    callback=_within(1, 64 * 1024 * 1024),
    help="the explain index's LMDB map size in MiB, 1 to 67,108,864 (65,536 held about 270,000,000 events); grows the "
    "map when raised",
)
@click.option(
    "--reservation-ttl-max-s",
    type=float,
    default=3600.0,
    callback=_within(0.001, RESERVATION_TTL_MAX_S_MAX),
    help="the longest reservation_ttl Authorize(reserve=true) may ask, in seconds, 0.001 to 315,576,000,000 (a Duration's range);"
    " longer is INVALID_ARGUMENT (a request naming none gets 60 s, or this when shorter)",
)
def serve(
    listen: str,
    data_dir: Path,
    demo: bool,
    insecure: bool,
    map_size_mb: int,
    batch_events_max: int,
    message_mb_max: int,
    future_skew_s: int,
    snapshot_every: int,
    snapshot_every_events: int,
    snapshot_journal_factor: float,
    api_keys: Path | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    max_concurrent_rpcs: int,
    connection_idle_max: str,
    intake_mb_max: int,
    stream_inflight_batches_max: int,
    otel: str,
    metrics_port: int | None,
    log_format: str,
    log_level: str,
    log_activity_every_s: float,
    loop_stall_sample_ms: float,
    clock_look_every_ms: int,
    close_grace: str,
    explain_index: bool,
    explain_map_mb: int,
    reservation_ttl_max_s: float,
) -> None:
    """Run the gRPC server."""
    # Before anything imports grpc: gRPC core's own stderr lines must not leak into the operator's log.
    oplog.quiet_grpc_core(log_level.lower())
    from server.app import ServeConfig, run
    from server.closer import parse_duration_ms
    from server.snapshotting import SnapshotPolicy

    _check_batch_events_max(batch_events_max, message_mb_max)
    _check_metrics_port(metrics_port, listen)
    try:
        close_grace_ms = parse_duration_ms(close_grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="'--close-grace'") from None
    connection_idle_ms = _connection_idle_ms(connection_idle_max, parse_duration_ms)
    config = ServeConfig(
        listen=listen,
        data_dir=data_dir,
        demo=demo,
        insecure=insecure,
        map_size_bytes=_mib(map_size_mb),
        message_bytes_max=_mib(message_mb_max),
        batch_events_max=batch_events_max,
        future_skew_ms=future_skew_s * 1000,
        snapshot_policy=SnapshotPolicy(
            every_records=snapshot_every, every_events=snapshot_every_events, journal_factor=snapshot_journal_factor
        ),
        api_keys=api_keys,
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        concurrent_rpcs_max=max_concurrent_rpcs,
        connection_idle_ms=connection_idle_ms,
        stream_batches_in_flight_max=stream_inflight_batches_max,
        intake_bytes_max=_mib(intake_mb_max),
        otel=otel,
        metrics_port=metrics_port,
        log_format=log_format,
        log_level=log_level.lower(),
        activity_every_s=log_activity_every_s,
        loop_stall_sample_s=loop_stall_sample_ms / 1000,
        clock_look_every_s=clock_look_every_ms / 1000,
        close_grace_ms=close_grace_ms,
        explain_index=explain_index,
        explain_map_size_bytes=_mib(explain_map_mb),
        reservation_ttl_max_s=reservation_ttl_max_s,
    )
    sys.exit(run(config))


@main.command(context_settings={"show_default": True})
@click.option("--data-dir", type=click.Path(path_type=Path), default="./data", help="the data directory to migrate")
def migrate(data_dir: Path) -> None:
    """Migrate a data directory written by an earlier release, with no server running on it (keeps the old journal
    in DIR/backup-v1/)."""
    from server.migrate import MigrationError, migrate

    try:
        click.echo(migrate(data_dir))
    except MigrationError as exc:
        click.echo(f"tariff migrate: {exc}", err=True)
        sys.exit(2)


@main.command(context_settings={"show_default": True})
@click.option("--data-dir", type=click.Path(path_type=Path), default="./data", help="the data directory to back up")
@click.option(
    "--to",
    "destination",
    type=click.Path(path_type=Path),
    required=True,
    help="the new data directory to write (must not exist, or be empty)",
)
@click.option(
    "--explain-index/--no-explain-index",
    default=True,
    help="copy explain/ too (when the data directory has one): the restore keeps the index and its page tokens and "
    "replays only what follows the snapshot; --no-explain-index leaves it out, and a restore then rebuilds it by "
    "replaying the whole journal",
)
def backup(data_dir: Path, destination: Path, explain_index: bool) -> None:
    """Copy a data directory's journal and snapshot into a new data directory, while a server runs on it or not
    (never taking its LOCK); `tariff serve --data-dir DEST` starts from the copy."""
    from server.backup import BackupFailed, BackupRefused
    from server.backup import backup as take_backup

    try:
        click.echo(take_backup(data_dir, destination, explain_index=explain_index).line())
    except BackupRefused as exc:
        click.echo(f"tariff backup: {exc}", err=True)
        sys.exit(2)
    except BackupFailed as exc:
        click.echo(f"tariff backup: {exc}; nothing was written to {destination}", err=True)
        sys.exit(1)
    except KeyboardInterrupt:  # the partial copy is removed by then
        click.echo(f"tariff backup: interrupted; nothing was written to {destination}", err=True)
        sys.exit(130)


@main.group()
def keys() -> None:
    """Manage API keys."""


def _key_name(_ctx: click.Context, _param: click.Parameter, name: str) -> str:
    """--name held to the x-actor rule (a usage error else): the name is the audit log's actor, and "PERSON via KEY"
    must read one way only (a key named "alice via ops" would pass its changes off as done in alice's name)."""
    from server.auth import is_actor_name

    if not is_actor_name(name):
        shown = name if len(name) <= 32 else name[:32] + "…"
        raise click.BadParameter(f"{shown!r} is not a key name (1-128 letters, digits and ._:@-)")
    return name


@keys.command("new")
@click.option(
    "--name",
    required=True,
    callback=_key_name,
    help="who uses the key; the audit log's actor: 1-128 letters, digits and ._:@-",
)
@click.option(
    "--role",
    required=True,
    type=click.Choice(["admin", "ingest", "read"]),
    help="what the key may call: everything; usage, balances and alerts; or reads (README, API keys)",
)
@click.option(
    "--customers",
    help="comma-separated customer ids the key is restricted to  [default: none: every customer]",
)
@click.option(
    "--file", "key_file", type=click.Path(path_type=Path), required=True, help="the key file (created if missing)"
)
def new_key(name: str, role: str, customers: str | None, key_file: Path) -> None:
    """Make a key, print it once and append its hash to the key file. A key that cannot be printed is not kept:
    with stdout closed (`>&-`) nothing is written (exit 2); printed into a pipe whose reader has gone, its entry is
    taken out again (141)."""
    from server.auth import KeyFileError, new_key, restore_key_file

    restricted_to = _restricted_to(customers)
    if sys.stdout is None:
        click.echo("tariff keys new: stdout is closed: the key would be shown nowhere; nothing was written", err=True)
        sys.exit(2)
    try:
        before = key_file.read_bytes() if key_file.exists() else None
    except OSError:
        before = None  # new_key says why it cannot be read
    try:
        key = new_key(key_file, name, role, restricted_to)
    except KeyFileError as exc:
        click.echo(f"tariff keys new: {exc}", err=True)
        sys.exit(2)
    try:
        click.echo(key)
        sys.stdout.flush()
    except BrokenPipeError:
        restore_key_file(key_file, before)
        exit_on_broken_pipe()
    click.echo(f"key {name!r} ({role}) added to {key_file}; this is the only time it is shown", err=True)


def _restricted_to(customers: str | None) -> list[str]:
    """--customers as customer ids; given, it must name at least one, each a possible customer id (usage error else):
    a key meant for some customers never comes out able to touch every one, or none."""
    if customers is None:
        return []
    from engine.control import is_id

    # Only the spaces around a comma go ("acme, beta"): str.strip() also took a newline, a no-break space or an
    # ideographic space, turning an id that breaks the rule ('acme\n', the key file's server refuses) into "acme".
    ids = [c.strip(" ") for c in customers.split(",") if c.strip(" ")]
    if not ids:
        raise click.BadParameter(
            f"{customers!r} names no customer (leave --customers out for a key that may touch every customer)",
            param_hint="'--customers'",
        )
    for customer_id in ids:
        if not is_id(customer_id):
            raise click.BadParameter(
                f"{customer_id!r} is not a customer id (1-128 letters, digits and ._:@-)", param_hint="'--customers'"
            )
    return ids


@main.command(
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True, "help_option_names": []},
    add_help_option=False,
)
@click.argument("bench_args", nargs=-1, type=click.UNPROCESSED)
def bench(bench_args: tuple[str, ...]) -> None:
    """Measure the server against reference runs (`tariff bench --help` for its options)."""
    import argparse

    from server.bench import add_arguments, run

    class Parser(argparse.ArgumentParser):
        def print_help(self, file: SupportsWrite[str] | None = None) -> None:
            # argparse's own swallows a failed write and exits 0: into a pipe whose reader has gone the help fails
            # as every command's output does (Tariff.invoke: 141). A closed stdout (`>&-`) prints nothing, as
            # click's --help.
            out = file or sys.stdout
            if out is not None:
                out.write(self.format_help())

    parser = Parser(prog="tariff bench", description="Measure the server against reference runs.")
    add_arguments(parser)
    sys.exit(run(parser.parse_args(list(bench_args))))


add_commands(main)


if __name__ == "__main__":
    main()
