"""Runs the Tariff server: recover from the journal, serve gRPC on uvloop, shut down cleanly on a signal."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import signal
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection
from tariff.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    balance_pb2,
    balance_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from server.demo import demo_commands
from server.journal import LmdbJournal
from server.sequencer import Sequencer, recover
from server.services import (
    AlertService,
    BalanceService,
    ContractService,
    InvoiceService,
    PricingService,
    UsageService,
    wall_ms,
)

log = logging.getLogger("tariff")

MESSAGE_BYTES_MAX_DEFAULT = 16 * 1024 * 1024
SHUTDOWN_GRACE_S = 10.0


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
    snapshot_every_records: int = 5_000


def is_loopback(listen: str) -> bool:
    host = listen.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def serve(config: ServeConfig) -> int:
    if not config.insecure and not is_loopback(config.listen):
        log.error("refusing to listen on %s without API keys: use a loopback address or --insecure", config.listen)
        return 2
    config.data_dir.mkdir(parents=True, exist_ok=True)
    journal = LmdbJournal(config.data_dir / "journal", map_size_bytes=config.map_size_bytes)
    engine = recover(journal, future_skew_ms=config.future_skew_ms)
    log.info("recovered state at journal seq %d", engine.state.last_seq)
    sequencer = Sequencer(engine, journal, snapshot_every_records=config.snapshot_every_records)
    sequencer.start()
    if config.demo and engine.state.last_seq == 0:
        for command in demo_commands(wall_ms()):
            await sequencer.run(command)
        log.info("loaded the demo catalogue")

    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", config.message_bytes_max),
            ("grpc.max_send_message_length", config.message_bytes_max),
        ]
    )
    usage = UsageService(engine, sequencer)
    usage.batch_events_max = config.batch_events_max
    usage_pb2_grpc.add_UsageServiceServicer_to_server(usage, server)
    balance_pb2_grpc.add_BalanceServiceServicer_to_server(BalanceService(engine, sequencer), server)
    pricing_pb2_grpc.add_PricingServiceServicer_to_server(PricingService(engine, sequencer), server)
    contracts_pb2_grpc.add_ContractServiceServicer_to_server(ContractService(engine, sequencer), server)
    invoices_pb2_grpc.add_InvoiceServiceServicer_to_server(InvoiceService(), server)
    alerts_pb2_grpc.add_AlertServiceServicer_to_server(AlertService(), server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    service_names = [
        usage_pb2.DESCRIPTOR.services_by_name["UsageService"].full_name,
        balance_pb2.DESCRIPTOR.services_by_name["BalanceService"].full_name,
        pricing_pb2.DESCRIPTOR.services_by_name["PricingService"].full_name,
        contracts_pb2.DESCRIPTOR.services_by_name["ContractService"].full_name,
        invoices_pb2.DESCRIPTOR.services_by_name["InvoiceService"].full_name,
        alerts_pb2.DESCRIPTOR.services_by_name["AlertService"].full_name,
    ]
    reflection.enable_server_reflection([*service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], server)
    port = server.add_insecure_port(config.listen)
    if port == 0:
        log.error("could not listen on %s", config.listen)
        return 2
    await server.start()
    for name in ["", *service_names]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    print(_banner(config, engine.state.last_seq), flush=True)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    writer_stopped = asyncio.ensure_future(sequencer.stopped.wait())
    await asyncio.wait([asyncio.ensure_future(stop.wait()), writer_stopped], return_when=asyncio.FIRST_COMPLETED)

    # Stop taking work, let in-flight calls finish (their batches commit and are acked), then close the journal.
    log.info("shutting down")
    await health_servicer.enter_graceful_shutdown()
    await server.stop(SHUTDOWN_GRACE_S)
    if sequencer.failure is None:
        await sequencer.close()
    journal.close()
    log.info("stopped at journal seq %d", engine.state.last_seq)
    return 1 if sequencer.failure is not None else 0


def _banner(config: ServeConfig, seq: int) -> str:
    return "\n".join(
        [
            f"tariff: serving gRPC on {config.listen} (data in {config.data_dir}, journal seq {seq})",
            "  services: UsageService BalanceService PricingService ContractService InvoiceService AlertService, health, reflection",
            '  try:     grpcurl -plaintext -d \'{"customer_id": "acme"}\' '
            f"{config.listen} tariff.v1.BalanceService/GetBalance"
            if config.demo
            else "",
            "  or:      python -c \"from tariff import TariffClient; print(TariffClient('"
            + config.listen
            + "').get_balance('acme'))\""
            if config.demo
            else "",
        ]
    ).rstrip()


def run(config: ServeConfig) -> int:
    import uvloop

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    return uvloop.run(serve(config))
