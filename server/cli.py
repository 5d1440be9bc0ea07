"""The `tariff` command: `tariff serve` runs the server; `tariff bench` will measure it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="tariff", description="Tariff: a billing runtime for usage-priced products.")
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="run the gRPC server")
    serve.add_argument("--listen", default="127.0.0.1:50051", help="address to listen on (default 127.0.0.1:50051)")
    serve.add_argument(
        "--data-dir", type=Path, default=Path("./data"), help="where the LMDB journal lives (default ./data)"
    )
    serve.add_argument("--demo", action="store_true", help="load the demo catalogue when the data directory is empty")
    serve.add_argument("--insecure", action="store_true", help="allow a non-loopback listen address without API keys")
    serve.add_argument("--map-size-mb", type=int, default=1024, help="LMDB map size in MiB; grows the map when raised")
    serve.add_argument("--batch-events-max", type=int, default=10_000, help="most events one UsageBatch may hold")
    serve.add_argument("--message-mb-max", type=int, default=16, help="largest gRPC message in MiB")
    serve.add_argument("--future-skew-s", type=int, default=300, help="how far in the future an event timestamp may be")
    serve.add_argument("--snapshot-every", type=int, default=5_000, help="journal records between snapshots")
    commands.add_parser("bench", help="measure the server against reference runs (not built yet)")
    args = parser.parse_args(argv)

    if args.command == "bench":
        print("tariff bench is not built yet (see the performance issue)", file=sys.stderr)
        sys.exit(2)
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
    )
    sys.exit(run(config))


if __name__ == "__main__":
    main()
