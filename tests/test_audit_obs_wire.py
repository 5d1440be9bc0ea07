"""Observability and operations audit over the wire: README "## Observability" and, under "## Reliability and
security", "### Listening and TLS", "### Limits and backpressure (defaults)" and "### Shutdown", against real
server processes on 127.0.0.1.

What is already checked elsewhere is not repeated here: the JSON log's start, admin, activity and stop lines and
gRPC core's silence (test_server_startup.py), the Prometheus counters (test_server_telemetry.py), the size and
concurrency limits, deadlines and backpressure (test_server_limits.py), TLS and mutual TLS (test_server_auth.py),
the watch streams' end at shutdown (test_server_watch.py), a clean and an in-flight SIGTERM (test_server_ops.py).
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from tariff import ResourceExhausted
from tariff.v1 import pricing_pb2

from tests.demo_usage import demo_batch
from tests.serverproc import HOST, REPO_ROOT, ServerFactory, free_port
from tests.test_server_limits import Bidi
from tests.test_server_startup import output_lines, run_serve

CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0)]


# ---------------------------------------------------------------------------------------------
# A server that refuses to start says why in one line and exits with status 2


def test_a_taken_metrics_port_refuses_in_one_line_with_status_2_and_writes_nothing(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind((HOST, 0))
        holder.listen()
        metrics_port = holder.getsockname()[1]
        data_dir = tmp_path / "data"
        result = run_serve(
            "--listen", f"{HOST}:{free_port()}", "--data-dir", str(data_dir), "--metrics-port", str(metrics_port)
        )
    lines = output_lines(result)
    assert result.returncode == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"--metrics-port {metrics_port}: {HOST}:{metrics_port} is already in use"), lines
    assert not data_dir.exists(), "nothing may be written by a server that did not start"


def test_a_metrics_port_outside_1_to_65535_is_a_usage_error(tmp_path: Path) -> None:
    for port in ("0", "65536"):
        result = run_serve(
            "--listen", f"{HOST}:{free_port()}", "--data-dir", str(tmp_path / "d"), "--metrics-port", port
        )
        assert result.returncode == 2, output_lines(result)
        assert "--metrics-port" in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert not (tmp_path / "d").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--batch-events-max", "0"),  # every batch refused
        ("--message-mb-max", "0"),  # not even a health check answered
        ("--message-mb-max", "2048"),  # past gRPC's largest message (2 GiB - 1 byte): a traceback
        ("--max-concurrent-rpcs", "0"),  # every call RESOURCE_EXHAUSTED
        ("--intake-mb-max", "0"),  # a traceback
        ("--stream-inflight-batches-max", "0"),  # every IngestUsage stream waits for ever
        ("--stream-inflight-batches-max", "-1"),  # every IngestUsage stream INTERNAL
        ("--log-activity-every-s", "0"),  # the reporter would spin
        ("--log-activity-every-s", "nan"),  # the reporter would die: no activity line ever
    ],
)
def test_a_limit_a_server_could_not_serve_by_is_a_usage_error(tmp_path: Path, option: str, value: str) -> None:
    result = run_serve(
        "--listen", f"{HOST}:{free_port()}", "--data-dir", str(tmp_path / "d"), option, value, timeout_s=20
    )
    assert result.returncode == 2, output_lines(result)
    assert f"Invalid value for '{option}'" in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("listen", [f"{HOST}:99999", HOST, "[::1]:-1"])
def test_a_listen_address_without_a_port_from_0_to_65535_is_refused(tmp_path: Path, listen: str) -> None:
    """gRPC would bind 127.0.0.1:99999 as port 34463 (99999 - 65536) and a bare host as port 443, while the log and
    the banner said the address given: the server must refuse it instead."""
    result = run_serve("--listen", listen, "--data-dir", str(tmp_path / "data"), timeout_s=20)
    lines = output_lines(result)
    assert result.returncode == 2, lines
    assert len(lines) == 1, lines
    assert lines[0].endswith(f"cannot listen on {listen}: give host:port, the port from 0 (any free port) to 65535")
    assert not (tmp_path / "data").exists()


def test_port_0_serves_on_a_free_port_and_the_log_names_it(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "server.cli", "serve", "--listen", f"{HOST}:0", "--data-dir", str(tmp_path / "d")]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            serving = next(line for line in proc.stdout if " INFO tariff: serving " in line)
            found = re.search(rf"listen={re.escape(HOST)}:(\d+) ", serving)
            assert found and int(found.group(1)) != 0, serving
            banner = next(proc.stdout)
            assert banner.startswith(f"tariff: serving gRPC on {HOST}:{found.group(1)} "), banner
            with grpc.insecure_channel(f"{HOST}:{found.group(1)}", options=CHANNEL_OPTIONS) as channel:
                health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
                assert health.status == health_pb2.HealthCheckResponse.SERVING
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            proc.kill()


@pytest.mark.parametrize(
    "tls_args",
    [
        ("--tls-cert", "cert.pem", "--tls-key", "key.pem"),
        ("--tls-cert", "cert.pem", "--tls-key", "key.pem", "--tls-client-ca", "ca.pem"),
    ],
    ids=["server-pair", "client-ca"],
)
def test_tls_files_grpc_cannot_use_are_named_in_the_refusal(tmp_path: Path, tls_args: tuple[str, ...]) -> None:
    """Files that exist but are no PEM certificate or key: the port is free, so the refusal must say it is TLS."""
    for name in ("cert.pem", "key.pem", "ca.pem"):
        (tmp_path / name).write_text("not a PEM file\n")
    args = [str(tmp_path / a) if a.endswith(".pem") else a for a in tls_args]
    listen = f"{HOST}:{free_port()}"
    result = run_serve("--listen", listen, "--data-dir", str(tmp_path / "data"), *args)
    lines = output_lines(result)
    assert result.returncode == 2, lines
    assert len(lines) == 1, lines
    assert f"cannot listen on {listen} with TLS" in lines[0], lines
    assert "--tls-cert" in lines[0] and "--tls-key" in lines[0] and "PEM" in lines[0], lines
    assert not (tmp_path / "data").exists()


# ---------------------------------------------------------------------------------------------
# The operator's log, as text


STAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


def test_the_text_log_start_activity_with_loop_stalls_and_stop_lines(server_factory: ServerFactory) -> None:
    """README's text lines, field for field: start, an activity line with the loop-stall fields, the stop line."""
    server = server_factory(
        demo=True, name="text-log", extra_args=["--log-activity-every-s", "0.3", "--loop-stall-sample-ms", "10"]
    )
    with server.client() as client:
        batch = demo_batch("text", "text", 3)
        batch.events[2].customer_id = "nobody"
        ack = client.usage.IngestUsageBatch(batch)
        assert (ack.accepted, len(ack.rejected)) == (2, 1)
    activity = re.compile(
        rf"^{STAMP} INFO tariff: activity events_per_s=\d+\.\d accepted=2 duplicates=0 rejected=1 "
        r"rejected_by_reason=UNKNOWN_CUSTOMER:1 admin_changes=0 commits=1 commit_p99_ms=\d+(\.\d+)? "
        r"journal_bytes=\d+ streams=0 loop_stall_max_ms=\d+(\.\d+)? loop_stall_cpu_ms=\d+(\.\d+)? "
        r"loop_stall_runqueue_ms=\d+(\.\d+)?$",
        re.MULTILINE,
    )
    deadline = time.monotonic() + 10
    while not activity.search(server.log_path.read_text()):
        assert time.monotonic() < deadline, server.log_tail(10)
        time.sleep(0.05)
    assert server.terminate() == 0
    log = server.log_path.read_text()
    data_dir = re.escape(str(server.data_dir))
    start = (
        rf"^{STAMP} INFO tariff: serving version=\d+\.\d+\.\d+ listen={re.escape(server.target)} "
        rf"data_dir={data_dir} journal_seq=7 customers=1 recovery_s=\d+(\.\d+)? replayed_records=\d+ "
        r"replayed_events=\d+$"
    )
    assert re.search(start, log, re.MULTILINE), log[-2000:]
    stop = rf"^{STAMP} INFO tariff: stopped at journal seq 8 journal_bytes=\d+ uptime_s=\d+(\.\d)? clean=True$"
    # Stopping: the writer drained, a snapshot of the last seq written, then the stop line.
    stopping = re.search(
        rf"^{STAMP} INFO tariff: shutting down\n(.*\n)*{STAMP} INFO tariff.sequencer: snapshot seq=8 .*\n",
        log,
        re.MULTILINE,
    )
    assert stopping, log[-2000:]
    assert re.search(stop, log, re.MULTILINE) and log.rstrip().endswith("clean=True"), log[-2000:]


def test_the_last_interval_s_activity_is_logged_at_shutdown(server_factory: ServerFactory) -> None:
    """Summing the activity lines gives everything the server did: the interval cut short by the stop is logged
    too, before the stop line, not lost with up to a minute of counts."""
    server = server_factory(demo=True, name="last-activity", extra_args=["--log-activity-every-s", "3600"])
    with server.client() as client:
        assert client.ingest_batch(demo_batch("last", "last", 3).events).accepted == 3
    assert server.terminate() == 0
    lines = [line for line in server.log_path.read_text().splitlines() if re.match(STAMP, line)]
    activity = [line for line in lines if " INFO tariff: activity " in line]
    assert len(activity) == 1, lines[-5:]
    assert " accepted=3 duplicates=0 rejected=0 rejected_by_reason=none admin_changes=0 commits=1 " in activity[0]
    assert lines.index(activity[0]) > lines.index(next(line for line in lines if line.endswith("shutting down")))
    assert lines[-1].endswith("clean=True")


def test_log_level_debug_keeps_grpc_core_s_lines_asked_for_by_the_environment(server_factory: ServerFactory) -> None:
    env = {"GRPC_VERBOSITY": "debug", "GRPC_TRACE": "http"}
    server = server_factory(demo=True, name="debug-log", env=env, extra_args=["--log-level", "debug"])
    with server.client() as client:
        client.get_balance("acme")
    assert server.terminate() == 0
    log = server.log_path.read_text()
    assert re.search(r"^[IWE]\d{4} .*\.cc:\d+\]", log, re.MULTILINE), log[-2000:]
    assert re.search(rf"^{STAMP} DEBUG ", log, re.MULTILINE)


def test_log_level_warning_writes_no_info_line(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True, name="quiet-log", extra_args=["--log-level", "warning"])
    with server.client() as client:
        assert client.ingest_batch(demo_batch("q", "q", 1).events).accepted == 1
    assert server.terminate() == 0
    log = server.log_path.read_text()
    assert re.search(rf"^{STAMP} ", log, re.MULTILINE) is None, log  # no line of the operator's log at all
    assert "tariff: serving gRPC on" in log  # the banner on stdout is not the log


# ---------------------------------------------------------------------------------------------
# Metrics and traces


def test_otel_console_exports_spans_and_metrics_and_stops_without_an_error(server_factory: ServerFactory) -> None:
    """`--otel console`: the last export, at shutdown, still reads the journal's size (the journal is closed after
    it), and nothing is logged at ERROR; a control-plane call has a span, usage has none."""
    server = server_factory(demo=True, name="console", extra_args=["--otel", "console"])
    with server.client() as client:
        client.pricing.ListRateCards(pricing_pb2.ListRateCardsRequest())
        assert client.ingest_batch(demo_batch("otel", "otel", 2).events).accepted == 2
    assert server.terminate() == 0
    log = server.log_path.read_text()
    assert " ERROR " not in log and "Traceback" not in log, log[-3000:]
    assert '"name": "tariff.v1.PricingService.ListRateCards"' in log
    assert '"name": "tariff.v1.UsageService' not in log  # no span on the usage hot path
    for metric in ("tariff.events.ingested", "tariff.batch.commit.duration", "tariff.journal.size"):
        assert f'"name": "{metric}"' in log, metric
    assert "clean=True" in log.splitlines()[-1]


def test_telemetry_off_imports_nothing_of_the_sdk_and_on_it_does(server_factory: ServerFactory) -> None:
    """PYTHONPROFILEIMPORTTIME makes the server's Python name, on stderr, every module it imports."""
    imports = {"PYTHONPROFILEIMPORTTIME": "1"}
    off = server_factory(demo=True, name="otel-off", env=imports)
    on = server_factory(demo=True, name="otel-on", env=imports, extra_args=["--metrics-port", str(free_port())])
    for server in (off, on):
        with server.client() as client:
            client.pricing.ListRateCards(pricing_pb2.ListRateCardsRequest())
        assert server.terminate() == 0
    sdk = re.compile(
        r"^import time:.*\| +(opentelemetry\.sdk|opentelemetry\.exporter|prometheus_client)\b", re.MULTILINE
    )
    assert sdk.search(off.log_path.read_text()) is None
    assert sdk.search(on.log_path.read_text()) is not None  # the check sees them when they are loaded


# ---------------------------------------------------------------------------------------------
# Limits


def test_an_overloaded_server_says_retry_after_100_ms_and_reflection_is_not_counted(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, name="busy", extra_args=["--max-concurrent-rpcs", "1"])
    with server.client() as client:
        stream = Bidi(client)
        assert stream.send(demo_batch("hold", "hold", 1)).accepted == 1  # the one place is taken
        with pytest.raises(ResourceExhausted) as caught:
            client.pricing.ListRateCards(pricing_pb2.ListRateCardsRequest())
        assert "maximum of 1 calls" in caught.value.details
        status = caught.value.status
        assert status is not None
        retry = error_details_pb2.RetryInfo()
        assert [d.Unpack(retry) for d in status.details if d.Is(error_details_pb2.RetryInfo.DESCRIPTOR)] == [True]
        assert retry.retry_delay.ToMilliseconds() == 100
        with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            answers = list(
                reflection.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
            )
            names = {s.name for s in answers[0].list_services_response.service}
            assert "tariff.v1.PricingService" in names
            health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
            assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert stream.end() == []


# ---------------------------------------------------------------------------------------------
# Shutdown


def test_a_health_watch_sees_not_serving_then_ends_at_once_with_unavailable(server_factory: ServerFactory) -> None:
    """A Health/Watch stream (client-side health checking) never ends on its own, like WatchBalance: at SIGTERM
    it is sent NOT_SERVING and then ended by the server with UNAVAILABLE, not left to hold the grace period and
    be cancelled at its end ("Cancelling all calls"). Meanwhile (an open IngestUsage stream holds the grace) a
    health Check, like any new call, gets UNAVAILABLE."""
    server = server_factory(demo=True, name="health-watch")
    statuses: list[str] = []
    ended: list[grpc.RpcError] = []
    serving = threading.Event()
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel, server.client() as client:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""))

        def read() -> None:
            try:
                for reply in watch:
                    statuses.append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                    serving.set()
            except grpc.RpcError as exc:
                ended.append(exc)

        reader = threading.Thread(target=read)
        reader.start()
        assert serving.wait(10)
        ingest = Bidi(client)
        assert ingest.send(demo_batch("grace", "grace", 1)).accepted == 1  # a running call: the grace waits for it
        assert server.proc is not None
        server.proc.send_signal(signal.SIGTERM)
        reader.join(10)
        assert not reader.is_alive(), "the health Watch stream did not end"
        with pytest.raises(grpc.RpcError) as check:
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert check.value.code() == grpc.StatusCode.UNAVAILABLE
        assert ingest.end() == []
        assert server.terminate() == 0
    assert statuses == ["SERVING", "NOT_SERVING"]
    assert [e.code() for e in ended] == [grpc.StatusCode.UNAVAILABLE]
    assert "the server is shutting down" in (ended[0].details() or ""), ended[0].details()


def test_sigint_stops_as_sigterm_does(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True, name="sigint")
    with server.client() as client:
        assert client.ingest_batch(demo_batch("int", "int", 2).events).accepted == 2
    assert server.proc is not None
    server.proc.send_signal(signal.SIGINT)
    assert server.proc.wait(timeout=20) == 0
    last = server.log_tail(1)
    assert re.search(r"INFO tariff: stopped at journal seq 8 journal_bytes=\d+ uptime_s=[\d.]+ clean=True$", last), last
