"""OpenTelemetry for the server: metrics for the hot path, traces for the control plane. Off by default.

Instruments are created once, at import, from the global meter; until `configure` installs a provider they
are the API's no-op instruments, so the hot path calls them unconditionally and pays almost nothing when
telemetry is off. Recording happens per batch, per group commit and per Authorize call, never per event.

Exporters: `--otel console` (periodic dump to stdout), `--otel otlp` (OTLP/gRPC to the collector named by the
standard OTEL_EXPORTER_OTLP_ENDPOINT variable, default localhost:4317) and `--metrics-port N` (a Prometheus
scrape endpoint on 127.0.0.1:N). Traces cover control-plane RPCs (pricing, contracts, invoices), not usage.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from opentelemetry import metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation

log = logging.getLogger("tariff.telemetry")

SERVICE_NAME = "tariff"
EXPORT_INTERVAL_MS = 10_000


class OtelExporter(enum.StrEnum):
    OFF = "off"
    CONSOLE = "console"
    OTLP = "otlp"


_meter = metrics.get_meter("tariff.server")
tracer = trace.get_tracer("tariff.server")

events_ingested = _meter.create_counter("tariff.events.ingested", unit="{event}", description="events accepted")
events_rejected = _meter.create_counter(
    "tariff.events.rejected", unit="{event}", description="events refused with a reason (per reason)"
)
events_duplicated = _meter.create_counter(
    "tariff.events.duplicated", unit="{event}", description="identical resends of accepted events"
)
# The buckets of the millisecond histograms, 10 us to 10 s: a group commit takes about a millisecond and a check
# answered from memory tens of microseconds, which OpenTelemetry's default buckets (0, 5, 10, 25, ... ms) put all in
# the first, leaving no quantile below 5 ms to compute from a scrape.
MS_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000)

batch_commit_ms = _meter.create_histogram(
    "tariff.batch.commit.duration",
    unit="ms",
    description="one group commit: LMDB write transaction, synced",
    explicit_bucket_boundaries_advisory=MS_BUCKETS,
)
commit_commands = _meter.create_histogram(
    "tariff.batch.commit.commands", unit="{command}", description="commands per group commit"
)
authorize_ms = _meter.create_histogram(
    "tariff.authorize.duration",
    unit="ms",
    description="server time of one Authorize decision",
    explicit_bucket_boundaries_advisory=MS_BUCKETS,
)
alerts_fired = _meter.create_counter("tariff.alerts.fired", unit="{alert}", description="alerts journaled")


@dataclass
class Gauges:
    """Readings taken when an exporter collects: the journal's size and how many balances are watched."""

    journal_bytes: Callable[[], int] = lambda: 0
    balances_watched: Callable[[], int] = lambda: 0


gauges = Gauges()


def _journal_bytes(options: CallbackOptions) -> Iterable[Observation]:
    yield Observation(gauges.journal_bytes())


def _balances_watched(options: CallbackOptions) -> Iterable[Observation]:
    yield Observation(gauges.balances_watched())


_meter.create_observable_gauge(
    "tariff.journal.size", callbacks=[_journal_bytes], unit="By", description="bytes used in the LMDB map"
)
_meter.create_observable_gauge(
    "tariff.balances.watched", callbacks=[_balances_watched], unit="{stream}", description="open WatchBalance streams"
)


def _count_from_zero() -> None:
    """Every counter's series, each rejection reason's included, exported at 0 from the start: a series that appears
    only at its first count reads as no data, not 0, to a dashboard's rate() and to an alert on it."""
    from tariff.v1 import usage_pb2

    for counter in (events_ingested, events_duplicated, alerts_fired):
        counter.add(0)
    for reason, number in usage_pb2.RejectReason.items():
        if number != usage_pb2.REJECT_REASON_UNSPECIFIED:
            events_rejected.add(0, {"reason": reason})


def serve_metrics(metrics_port: int) -> None:
    """Opens the Prometheus scrape endpoint on 127.0.0.1:PORT, before anything is read or written, so that a taken
    port refuses the start; it serves the metrics once `configure` has installed its reader. Loopback only: the
    endpoint has no authentication. Raises OSError when the port cannot be bound."""
    from prometheus_client import start_http_server

    start_http_server(metrics_port, addr="127.0.0.1")


def configure(exporter: OtelExporter, metrics_port: int | None) -> Callable[[], None]:
    """Installs the SDK providers for the chosen exporters (the scrape endpoint of `metrics_port` was opened by
    `serve_metrics`); returns the function that flushes and stops them."""
    if exporter is OtelExporter.OFF and metrics_port is None:
        return lambda: None
    # Imported here so that a server with telemetry off never loads the SDK or the exporters.
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import ConsoleMetricExporter, MetricReader, PeriodicExportingMetricReader
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter

    resource = Resource.create({"service.name": SERVICE_NAME})
    readers: list[MetricReader] = []
    span_exporter: SpanExporter | None = None
    if exporter is OtelExporter.CONSOLE:
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(), EXPORT_INTERVAL_MS))
        span_exporter = ConsoleSpanExporter()
    elif exporter is OtelExporter.OTLP:
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        readers.append(PeriodicExportingMetricReader(OTLPMetricExporter(), EXPORT_INTERVAL_MS))
        span_exporter = OTLPSpanExporter()
    if metrics_port is not None:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader

        readers.append(PrometheusMetricReader())  # what serve_metrics' endpoint serves from now on
        log.info("Prometheus metrics on http://127.0.0.1:%d/metrics", metrics_port)
    meter_provider = MeterProvider(resource=resource, metric_readers=readers)
    metrics.set_meter_provider(meter_provider)
    _count_from_zero()
    tracer_provider: TracerProvider | None = None
    if span_exporter is not None:
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
        trace.set_tracer_provider(tracer_provider)

    def shutdown() -> None:
        meter_provider.shutdown()
        if tracer_provider is not None:
            tracer_provider.shutdown()

    return shutdown
