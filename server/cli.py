"""The `tariff` command: `tariff serve` runs the server; `tariff bench` will measure it."""

from __future__ import annotations

import argparse
import importlib.metadata
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    from server import oplog

    parser = argparse.ArgumentParser(prog="tariff", description="Tariff: a billing runtime for usage-priced products.")
    parser.add_argument("--version", action="version", version=f"tariff {importlib.metadata.version('tariff')}")
    commands = parser.add_subparsers(dest="command", required=True)
    # ArgumentDefaultsHelpFormatter: `tariff serve --help` shows every default.
    serve = commands.add_parser(
        "serve", help="run the gRPC server", formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    serve.add_argument("--listen", default="127.0.0.1:50051", help="address to listen on")
    serve.add_argument("--data-dir", type=Path, default=Path("./data"), help="where the LMDB journal lives")
    serve.add_argument("--demo", action="store_true", help="load the demo catalogue when the data directory is empty")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback listen address without API keys")
    serve.add_argument("--map-size-mb", type=int, default=1024, help="LMDB map size in MiB; grows the map when raised")
    serve.add_argument("--batch-events-max", type=int, default=10_000, help="most events one UsageBatch may hold")
    serve.add_argument("--message-mb-max", type=int, default=16, help="largest gRPC message in MiB")
    serve.add_argument("--future-skew-s", type=int, default=300, help="how far in the future an event timestamp may be")
    serve.add_argument("--snapshot-every", type=int, default=5_000, help="journal records between snapshots")
    serve.add_argument(
        "--snapshot-every-events",
        type=int,
        default=1_000_000,
        help="usage events between snapshots (whichever of the two comes first)",
    )
    serve.add_argument(
        "--api-keys", type=Path, help="API key file (JSON, or TOML if it ends in .toml); see `tariff keys`"
    )
    serve.add_argument("--tls-cert", type=Path, help="PEM certificate chain of the server (TLS)")
    serve.add_argument("--tls-key", type=Path, help="PEM private key of the server (TLS)")
    serve.add_argument("--tls-client-ca", type=Path, help="PEM CA that client certificates must chain to (mutual TLS)")
    serve.add_argument(
        "--max-concurrent-rpcs", type=int, default=1_000, help="calls running at once; more: RESOURCE_EXHAUSTED"
    )
    serve.add_argument(
        "--intake-mb-max",
        type=int,
        default=256,
        help="MiB of usage batches read but not yet answered, all streams together; past it reading waits",
    )
    serve.add_argument(
        "--stream-inflight-batches-max", type=int, default=16, help="batches of one IngestUsage stream awaiting commit"
    )
    serve.add_argument(
        "--otel",
        choices=["off", "console", "otlp"],
        default="off",
        help="OpenTelemetry export: metrics and control-plane traces to stdout, or OTLP/gRPC",
    )
    serve.add_argument("--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT/metrics")
    serve.add_argument("--log-format", choices=oplog.LOG_FORMATS, default="text", help="the operator's log on stderr")
    serve.add_argument("--log-level", choices=oplog.LOG_LEVELS, default="info", help="least severe level logged")
    serve.add_argument(
        "--log-activity-every-s",
        type=float,
        default=oplog.ACTIVITY_EVERY_S_DEFAULT,
        help="seconds between activity lines (written only when there was activity)",
    )
    keys = commands.add_parser("keys", help="manage API keys").add_subparsers(dest="keys_command", required=True)
    keys_new = keys.add_parser("new", help="make a key, print it once and append its hash to the key file")
    keys_new.add_argument("--name", required=True, help="who uses the key; the audit log's actor")
    keys_new.add_argument("--role", required=True, choices=["admin", "ingest", "read"])
    keys_new.add_argument("--customers", default="", help="comma-separated customer ids the key is restricted to")
    keys_new.add_argument("--file", type=Path, required=True, help="the key file (created if missing)")
    from server.bench import add_arguments as add_bench_arguments

    add_bench_arguments(commands.add_parser("bench", help="measure the server against reference runs"))
    args = parser.parse_args(argv)

    if args.command == "bench":
        from server.bench import run as run_bench

        sys.exit(run_bench(args))
    if args.command == "keys":
        from server.auth import KeyFileError, new_key

        try:
            key = new_key(args.file, args.name, args.role, args.customers.split(","))
        except KeyFileError as exc:
            print(f"tariff keys new: {exc}", file=sys.stderr)
            sys.exit(2)
        print(key)
        print(
            f"key {args.name!r} ({args.role}) added to {args.file}; this is the only time it is shown", file=sys.stderr
        )
        return
    # Before anything imports grpc: gRPC core's own stderr lines must not leak into the operator's log.
    oplog.quiet_grpc_core(args.log_level)
    from server.app import ServeConfig, run

    config = ServeConfig(
        listen=args.listen,
        data_dir=args.data_dir,
        demo=args.demo,
        insecure=args.insecure,
        map_size_bytes=args.map_size_mb * 1024 * 1024,
        message_bytes_max=args.message_mb_max * 1024 * 1024,
        batch_events_max=args.batch_events_max,
        future_skew_ms=args.future_skew_s * 1000,
        snapshot_every_records=args.snapshot_every,
        snapshot_every_events=args.snapshot_every_events,
        api_keys=args.api_keys,
        tls_cert=args.tls_cert,
        tls_key=args.tls_key,
        tls_client_ca=args.tls_client_ca,
        concurrent_rpcs_max=args.max_concurrent_rpcs,
        stream_batches_in_flight_max=args.stream_inflight_batches_max,
        intake_bytes_max=args.intake_mb_max * 1024 * 1024,
        otel=args.otel,
        metrics_port=args.metrics_port,
        log_format=args.log_format,
        log_level=args.log_level,
        activity_every_s=args.log_activity_every_s,
    )
    sys.exit(run(config))


if __name__ == "__main__":
    main()
