"""Acceptance of how Tariff is operated, against README "### Server flags", "### The operator's log" and "### Metrics
and traces", over real `tariff serve` processes: what the other operations audits (test_audit_ops*_wire.py,
test_audit_readmeops_wire.py, test_audit_obs_wire.py, test_server_startup.py, test_server_telemetry.py) leave out.

- A flag's value that passes its documented range but that the machine cannot serve by (a map larger than the
  address space or the file system's largest file) is one line naming the flag, exit 2, the journal left as it was;
  a float flag given `nan` or `inf` is a usage error, as any value outside its range.
- Every metric README lists is on the Prometheus endpoint once the server serves, a counter at 0 before its first
  count, and the millisecond histograms tell apart the sub-millisecond times they measure.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import queue
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tariff.v1 import balance_pb2

from engine import commands as cmd
from server import oplog
from server.journal import LmdbJournal, MemoryJournal
from server.records import JournalRecord, encode_record
from server.recovery import recover
from tests import test_audit_longrun_wire as longrun
from tests.audit_fixtures import serving
from tests.demo_usage import demo_batch
from tests.serverproc import HOST, REPO_ROOT, ServerProcess, free_port
from tests.test_server_limits import Bidi

README = REPO_ROOT / "README.md"
# 2^47 B: 128 TiB, the whole user address space of x86-64 and arm64 Linux (a map must fit in it) and 8 times the
# largest file ext4 takes (16 TiB); in MiB.
UNMAPPABLE_MB = str(2**27)


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`tariff serve ARGS` to completion: each case here is refused before it serves."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--listen", f"{HOST}:0", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=15,
        stdin=subprocess.DEVNULL,
    )


def refusal_line(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a refused start prints (README "The operator's log"), its exit status 2."""
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, lines)
    assert len(lines) == 1, lines
    return lines[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# A map the machine cannot give


def test_a_journal_map_larger_than_the_address_space_refuses_a_first_start_in_one_line_naming_the_flag(
    tmp_path: Path,
) -> None:
    """README "Server flags": `--map-size-mb` is at least 1, with no upper bound written. 2^27 MiB (128 TiB) is more
    than a process can map: the start said `Cannot allocate memory` without saying which setting asked for it."""
    data_dir = tmp_path / "data"
    line = refusal_line(run_serve("--data-dir", str(data_dir), "--map-size-mb", UNMAPPABLE_MB))
    assert f"--map-size-mb {UNMAPPABLE_MB}" in line, line
    assert "Cannot allocate memory" in line, line


def test_a_first_start_refused_its_map_leaves_no_journal_holding_that_map_so_the_next_start_serves(
    tmp_path: Path,
) -> None:
    """A typo in the first start's `--map-size-mb` made LMDB write a new journal's first page, with the map size asked
    for, before the map failed; every later start adopts a journal's stored map (README: "`--map-size-mb` never
    shrinks the journal's map"), so each was refused alike, `--map-size-mb 1024` included, until the operator removed
    the journal by hand. A refused first start leaves no journal: the next start, with a map the machine can give,
    opens it empty."""
    data_dir = tmp_path / "data"
    refusal_line(run_serve("--data-dir", str(data_dir), "--map-size-mb", UNMAPPABLE_MB))
    journal = LmdbJournal(data_dir / "journal", map_size_bytes=2**20)  # what `tariff serve --map-size-mb 1` opens
    try:
        assert journal.last_seq() == 0
    finally:
        journal.close()


def test_growing_a_journal_to_a_map_larger_than_the_address_space_is_one_line_and_leaves_it_as_it_was(
    tmp_path: Path,
) -> None:
    """README "Server flags": a larger `--map-size-mb` grows the journal's map at the next start. Grown past what the
    machine can map, the start ended in a traceback and exit 1: it must say so in one line, exit 2, naming the flag,
    and leave the journal as it was, so that the next start with the old value serves it."""
    data_dir = tmp_path / "data"
    LmdbJournal(data_dir / "journal", map_size_bytes=2**20).close()  # a journal an earlier start made
    before = digest(data_dir / "journal" / "data.mdb")
    line = refusal_line(run_serve("--data-dir", str(data_dir), "--map-size-mb", UNMAPPABLE_MB))
    assert f"--map-size-mb {UNMAPPABLE_MB}" in line, line
    assert digest(data_dir / "journal" / "data.mdb") == before


def file_system_refuses_a_file_of(directory: Path, size: int) -> bool:
    """Whether the file system under `directory` refuses a (sparse) file of `size` bytes: EFBIG on ext4 past 16 TiB."""
    probe = directory / "probe"
    try:
        with open(probe, "wb") as file:
            os.truncate(file.fileno(), size)
    except OSError as exc:
        return exc.errno == errno.EFBIG
    finally:
        probe.unlink(missing_ok=True)
    return False


def test_an_explain_map_past_the_file_systems_largest_file_names_the_flag_and_does_not_say_to_remove_the_index(
    tmp_path: Path,
) -> None:
    """README "Server flags": `--explain-map-mb` is 1 to 67,108,864 (64 TiB, "address space: the file is sparse").
    The index's file is its map (LMDB writemap), so on a file system whose largest file is smaller (ext4: 16 TiB) the
    start was refused with `File too large; it is rebuilt from the journal: remove .../explain and start again`:
    advice that cannot help (a new index is refused alike) and makes the next start replay the whole journal."""
    top_mb = 64 * 1024 * 1024
    if not file_system_refuses_a_file_of(tmp_path, top_mb * 2**20):
        pytest.skip("this file system takes a file of 64 TiB")
    data_dir = tmp_path / "data"
    line = refusal_line(run_serve("--data-dir", str(data_dir), "--explain-map-mb", str(top_mb)))
    assert f"--explain-map-mb {top_mb}" in line, line
    assert "remove" not in line, line


# ---------------------------------------------------------------------------------------------
# Float flags: a number, not NaN or infinity


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("--loop-stall-sample-ms", "nan"),  # served with sampling silently off
        ("--loop-stall-sample-ms", "inf"),  # a sampler that never wakes: loop_stall_max_ms=0 whatever the loop did
        ("--log-activity-every-s", "inf"),  # no activity line until the stop
        ("--log-activity-every-s", "1e400"),  # the same infinity, from a typo
        ("--snapshot-journal-factor", "inf"),  # no snapshot but at a clean stop: a crash replays the whole journal
    ],
)
def test_a_float_flag_given_no_finite_number_is_a_usage_error_writing_nothing(
    tmp_path: Path, option: str, value: str
) -> None:
    """README "Server flags": a value outside the range given is a usage error, `Error: Invalid value for '--FLAG':
    ...`, exit 2, before the data directory is touched. NaN is in no range and infinity is not seconds, milliseconds
    or a factor a server can run by."""
    data_dir = tmp_path / "data"
    result = run_serve("--data-dir", str(data_dir), option, value)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert f"Error: Invalid value for '{option}': " in result.stderr, result.stderr
    assert not data_dir.exists(), "the data directory was touched"


def test_the_readme_gives_the_range_of_the_clock_look_interval_the_server_holds_it_to(tmp_path: Path) -> None:
    """README "Server flags": "A value outside the range given here is a usage error"; `--clock-look-every-ms` had no
    range in its row while the server refuses 0."""
    section = README.read_text(encoding="utf-8").split("### Server flags", 1)[1].split("\n### ", 1)[0]
    row = next(line for line in section.splitlines() if line.startswith("| `--clock-look-every-ms`"))
    assert "at least 1" in row, row
    data_dir = tmp_path / "data"
    result = run_serve("--data-dir", str(data_dir), "--clock-look-every-ms", "0")
    assert result.returncode == 2 and "Error: Invalid value for '--clock-look-every-ms': " in result.stderr
    assert not data_dir.exists()


# ---------------------------------------------------------------------------------------------
# Metrics, on the module's server


@pytest.fixture(scope="module")
def metrics_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def metered_server(tmp_path_factory: pytest.TempPathFactory, metrics_port: int) -> Iterator[ServerProcess]:
    process = ServerProcess(
        tmp_path_factory.mktemp("opsdoc") / "data", demo=True, extra_args=["--metrics-port", str(metrics_port)]
    )
    yield from serving(process, lambda client: None)


@pytest.fixture
def metered(metered_server: ServerProcess, metrics_port: int) -> tuple[ServerProcess, int]:
    return metered_server, metrics_port


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://{HOST}:{port}/metrics", timeout=5) as response:
        text: str = response.read().decode()
        return text


def samples(text: str, name: str) -> dict[str, float]:
    """Each sample of metric `name` (no suffix added): its labels but otel's scope labels -> its value."""
    found: dict[str, float] = {}
    for match in re.finditer(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", text, re.MULTILINE):
        labels = ",".join(part for part in (match.group(1) or "").split(",") if part and not part.startswith("otel_"))
        found[labels] = float(match.group(2))
    return found


def test_every_metric_the_readme_lists_is_exported_with_its_unit_and_a_counter_at_0_before_its_first_count(
    metered: tuple[ServerProcess, int],
) -> None:
    """README "Metrics and traces": the metrics listed, each under Prometheus's name for it (the unit a suffix,
    `_total` on a counter). After a batch of 2 accepted events and no duplicate, rejection or alert, a counter that
    has counted nothing yet was missing from the scrape: a dashboard's `rate()` or an alert on it had no series to
    read (no data, not 0). It is exported at 0."""
    server, port = metered
    with server.client() as client:
        ack = client.usage.IngestUsageBatch(demo_batch("metrics", "metrics", 2))
        assert (ack.accepted, ack.duplicates, len(ack.rejected)) == (2, 0, 0)
        assert client.authorize("acme", "ai_action", {"action": "summary", "model": "gpt-4"}).allowed
    text = scrape(port)
    assert samples(text, "tariff_events_ingested_total") == {"": 2.0}
    assert samples(text, "tariff_events_duplicated_total") == {"": 0.0}
    assert samples(text, "tariff_alerts_fired_total") == {"": 0.0}
    rejected = samples(text, "tariff_events_rejected_total")
    assert rejected.get('reason="UNKNOWN_CUSTOMER"') == 0.0, rejected
    assert set(rejected.values()) == {0.0}, rejected
    assert samples(text, "tariff_batch_commit_duration_milliseconds_count")[""] >= 2  # the demo's commit, the batch
    assert samples(text, "tariff_batch_commit_commands_count")[""] >= 2
    assert samples(text, "tariff_authorize_duration_milliseconds_count") == {"": 1.0}
    assert samples(text, "tariff_journal_size_bytes")[""] > 0
    assert samples(text, "tariff_balances_watched") == {"": 0.0}


def bucket_bounds(text: str, histogram: str) -> list[float]:
    bounds = re.findall(rf'^{re.escape(histogram)}_bucket\{{[^}}]*le="([^"]+)"', text, re.MULTILINE)
    return sorted(float(bound) for bound in bounds)


@pytest.mark.parametrize(
    "histogram", ["tariff_batch_commit_duration_milliseconds", "tariff_authorize_duration_milliseconds"]
)
def test_the_millisecond_histograms_tell_sub_millisecond_times_apart(
    metered: tuple[ServerProcess, int], histogram: str
) -> None:
    """README: an Authorize is answered from memory (tens of microseconds) and a group commit takes about a
    millisecond, but the histograms had OpenTelemetry's default buckets (0, 5, 10, 25, ... ms): every sample fell in
    the first, and no quantile an operator computes from the scrape could be below 5 ms or tell 0.05 ms from 4 ms.
    Their buckets reach down to 0.01 ms, at least two in every decade up to 10 s."""
    server, port = metered
    with server.client() as client:
        assert client.authorize("acme", "ai_action", {"action": "summary", "model": "gpt-4"}).allowed
    bounds = [bound for bound in bucket_bounds(scrape(port), histogram) if bound != float("inf")]
    assert bounds and bounds[0] <= 0.01, bounds
    assert bounds[-1] >= 10_000, bounds
    for decade in (0.01, 0.1, 1, 10, 100, 1_000):
        inside = [bound for bound in bounds if decade < bound <= decade * 10]
        assert len(inside) >= 2, (decade, bounds)


# ---------------------------------------------------------------------------------------------
# The recovery's progress line


def test_a_recovery_progress_line_counts_the_records_replayed_so_far_not_the_one_about_to_be(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """README "The operator's log": a long recovery says how far its replay got, `recovery in progress replayed=...
    of=... seq=... last_seq=...`. The line is written before record `seq` is replayed, yet said `replayed=seq`: one
    record more than done, and `replayed=N of=N` while the last record (up to 10,000 events) was still to replay.
    In-process (a recovery of more than 2 s is too slow for a test): 2,100 records, no snapshot, a line at every
    check (one per 1,024 records)."""
    journal = MemoryJournal()
    records = [
        (seq, encode_record(JournalRecord(cmd.CreateCustomer(1_800_000_000_000, "ops", f"c-{seq}", "", {}))))
        for seq in range(1, 2_101)
    ]
    journal.commit(records)
    with caplog.at_level(logging.INFO, logger="tariff"):
        recover(journal, progress_every_s=0.0)
    progress = [
        record.fields  # type: ignore[attr-defined]
        for record in caplog.records
        if record.getMessage() == "recovery in progress"
    ]
    assert [(line["seq"], line["replayed"], line["of"]) for line in progress] == [
        (1_024, 1_023, 2_100),
        (2_048, 2_047, 2_100),
    ]


# ---------------------------------------------------------------------------------------------
# `tariff serve --help` against README's table

# Each numeric flag's range, as README's "Server flags" table writes it.
RANGES = {
    "--map-size-mb": "at least 1",
    "--batch-events-max": "at least 1",
    "--message-mb-max": "1 to 2047",
    "--stream-inflight-batches-max": "at least 1",
    "--intake-mb-max": "at least 1",
    "--max-concurrent-rpcs": "at least 1",
    "--connection-idle-max": "1 ms to 2,147,483,647 ms",
    "--future-skew-s": "0 to 31,622,400",
    "--reservation-ttl-max-s": "0.001 to 315,576,000,000",
    "--clock-look-every-ms": "at least 1",
    "--explain-map-mb": "1 to 67,108,864",
    "--snapshot-every": "at least 1",
    "--snapshot-every-events": "at least 1",
    "--snapshot-journal-factor": "0 or more",
    "--metrics-port": "1 to 65535",
    "--log-activity-every-s": "at least 0.001",
    "--loop-stall-sample-ms": "0 or more",
}


def test_serve_help_gives_each_numeric_flag_the_range_readme_gives_it() -> None:
    """README "Server flags": "`tariff serve --help` lists them too. A value outside the range given here is a usage
    error". The help gave the range of 4 of the 17 numeric flags, in 3 spellings (`x>=1`, `1<=x<=65535`, `0 to a
    year`): an operator reading it could not tell that `--message-mb-max 4096` or `--explain-map-mb 0` is refused."""
    from server.cli import serve

    section = README.read_text(encoding="utf-8").split("### Server flags", 1)[1].split("\n### ", 1)[0]
    rows = {line.split("`")[1]: line for line in section.splitlines() if line.startswith("| `--")}
    helps = {option.opts[0]: option.help or "" for option in serve.params if option.opts[0] in RANGES}
    for flag, range_text in RANGES.items():
        assert range_text in rows[flag], (flag, rows[flag])
        assert range_text in " ".join(helps[flag].split()), (flag, helps[flag])


# ---------------------------------------------------------------------------------------------
# Health at the stop

SERVICES = [
    f"tariff.v1.{name}"
    for name in (
        "UsageService",
        "BalanceService",
        "PricingService",
        "ContractService",
        "InvoiceService",
        "AlertService",
    )
]


def test_at_sigterm_every_services_health_watch_sees_not_serving_then_ends_unavailable_and_the_exit_is_0(
    tmp_path: Path,
) -> None:
    """README "Shutdown": SIGTERM sends NOT_SERVING to every health `Watch` stream and ends it at once with
    UNAVAILABLE. A load balancer may watch one service (`tariff.v1.UsageService`, say) rather than the server's "":
    each is told, not only the server's."""
    server = ServerProcess(tmp_path / "data", demo=True)
    server.start()
    statuses: dict[str, list[str]] = {service: [] for service in ["", *SERVICES]}
    ends: dict[str, grpc.StatusCode] = {}
    try:
        with grpc.insecure_channel(server.target, options=[("grpc.enable_http_proxy", 0)]) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            watches = {service: stub.Watch(health_pb2.HealthCheckRequest(service=service)) for service in statuses}
            for service, watch in watches.items():
                statuses[service].append(health_pb2.HealthCheckResponse.ServingStatus.Name(next(watch).status))
            assert server.proc is not None
            server.proc.send_signal(signal.SIGTERM)
            for service, watch in watches.items():
                try:
                    for reply in watch:
                        statuses[service].append(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))
                except grpc.RpcError as exc:
                    ends[service] = exc.code()
        assert server.proc.wait(timeout=30) == 0
    finally:
        server.stop()
    assert statuses == {service: ["SERVING", "NOT_SERVING"] for service in statuses}
    assert ends == {service: grpc.StatusCode.UNAVAILABLE for service in statuses}


# ---------------------------------------------------------------------------------------------
# The activity line's counts


def test_the_activity_line_counts_every_commit_of_an_interval_past_the_commit_times_it_keeps() -> None:
    """README "The operator's log": `activity ... commits=... commit_p99_ms=...`, counted per committed group. The
    interval keeps at most COMMIT_SAMPLES_MAX commit times for its p99 (memory stays bounded), and `commits=` was the
    number kept: a minute of more group commits than that (1,700 a second) said 100,000 however many there were.
    In-process (Activity is what the writer feeds): 100,001 commits, the last one the slowest."""
    activity = oplog.Activity()
    for _ in range(oplog.COMMIT_SAMPLES_MAX):
        activity.committed(1.0)
    activity.committed(2.0)
    fields = activity.report(lambda: 0)
    assert fields is not None
    assert fields["commits"] == oplog.COMMIT_SAMPLES_MAX + 1


def test_the_activity_line_s_commit_p99_reads_the_whole_interval_not_only_its_first_commits() -> None:
    """README: `commit_p99_ms=...`, the interval's. Past COMMIT_SAMPLES_MAX commits the times after were dropped, so a
    slow disk in the last part of a busy minute never showed: 100,000 commits of 1 ms, then 10,000 of 50 ms (9% of
    the interval's commits, so its p99 is 50 ms), said commit_p99_ms=1.0."""
    activity = oplog.Activity()
    for _ in range(oplog.COMMIT_SAMPLES_MAX):
        activity.committed(1.0)
    for _ in range(10_000):
        activity.committed(50.0)
    fields = activity.report(lambda: 0)
    assert fields is not None
    assert (fields["commits"], fields["commit_p99_ms"]) == (oplog.COMMIT_SAMPLES_MAX + 10_000, 50.0)


# ---------------------------------------------------------------------------------------------
# The start line after a crash and after a clean stop


def start_line(server: ServerProcess) -> str:
    lines: list[str] = re.findall(r"^.* INFO tariff: serving version=.*$", server.log_path.read_text(), re.MULTILINE)
    return lines[-1]


def test_the_start_line_counts_the_records_and_events_replayed_after_a_kill_9_and_none_after_a_clean_stop(
    tmp_path: Path,
) -> None:
    """README "The operator's log": `replayed_records=... replayed_events=...`, the journal records and the usage
    events in them the recovery replayed after the snapshot it loaded, all of them when it loaded none. The demo is
    7 records (seq 1-7, no snapshot: 5,000 records make one), then batches of 3 and 2 events (seq 8, 9); kill -9
    leaves no snapshot, so the restart replays 9 records holding 5 events. A clean stop stores a snapshot of seq 9:
    the next start replays nothing."""
    server = ServerProcess(tmp_path / "data", demo=True)
    server.start()
    try:
        with server.client() as client:
            assert client.usage.IngestUsageBatch(demo_batch("r1", "r1", 3)).journal_seq == 8
            assert client.usage.IngestUsageBatch(demo_batch("r2", "r2", 2)).journal_seq == 9
        server.kill9()
        server.start()
        line = start_line(server)
        assert " journal_seq=9 customers=1 " in line and line.endswith(" replayed_records=9 replayed_events=5"), line
        assert server.terminate() == 0
        server.start()
        line = start_line(server)
        assert " journal_seq=9 " in line and line.endswith(" replayed_records=0 replayed_events=0"), line
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# `tariff keys new`


KEYS_NEW = [sys.executable, "-m", "server.cli", "keys", "new"]


@pytest.mark.parametrize("customers", ["", ",", "acme,bad id"])
def test_keys_new_names_customers_in_a_refusal_as_every_other_option_is_named(tmp_path: Path, customers: str) -> None:
    """README "API keys": a `--customers` naming no customer, or one breaking the id rule, is a usage error (exit 2),
    nothing written. Click names an option in quotes (`Error: Invalid value for '--name': ...`, as `tariff serve`'s
    flags and `--name` are); `--customers` was named without them (`Invalid value for --customers:`)."""
    key_file = tmp_path / "keys.toml"
    result = subprocess.run(
        [*KEYS_NEW, "--name", "portal", "--role", "read", "--customers", customers, "--file", str(key_file)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=15,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 2, result.stderr
    assert "Error: Invalid value for '--customers': " in result.stderr, result.stderr
    assert result.stdout == "" and not key_file.exists()


# ---------------------------------------------------------------------------------------------
# The activity line's streams=


def test_the_activity_line_s_streams_counts_the_open_ingest_streams_and_no_other_kind(tmp_path: Path) -> None:
    """README "The operator's log": `activity ... streams=...`. What it counts is the `IngestUsage` streams open (the
    producers connected), not the watches, `AuthorizeStream`s or other streams: with one of each open, it is 1."""
    server = ServerProcess(tmp_path / "data", demo=True, extra_args=["--log-activity-every-s", "0.2"])
    server.start()
    try:
        with server.client() as client:
            watch = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="acme"))
            assert next(watch).customer_id == "acme"
            checks: queue.Queue[balance_pb2.AuthorizeRequest | None] = queue.Queue()
            authorize = client.balance.AuthorizeStream(iter(checks.get, None))
            checks.put(balance_pb2.AuthorizeRequest(customer_id="acme", event_type="ai_action", request_id="s-1"))
            assert next(authorize).allowed
            ingest = Bidi(client)
            assert ingest.send(demo_batch("streams", "streams", 2)).accepted == 2
            pattern = re.compile(r" INFO tariff: activity .*accepted=2 .* streams=(\d+)")
            deadline = time.monotonic() + 15
            while not (found := pattern.search(server.log_path.read_text())):
                assert time.monotonic() < deadline, server.log_tail(10)
                time.sleep(0.05)
            assert found.group(1) == "1", found.group(0)
            assert ingest.end() == []
            checks.put(None)
            assert list(authorize) == []
            watch.cancel()
    finally:
        server.stop()


# ---------------------------------------------------------------------------------------------
# A file in the way inside the data directory


@pytest.mark.parametrize("inside", ["journal", "explain"])
def test_a_file_where_the_journal_or_the_explain_index_goes_is_refused_in_one_line(tmp_path: Path, inside: str) -> None:
    """README "The operator's log": a `--data-dir` that cannot be a directory (a file is in the way) is refused in one
    line, exit 2. A file where `journal/` or `explain/` goes (a restore gone wrong) ended the start in a traceback,
    exit 1; the file is left as it was."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / inside).write_bytes(b"not a directory")
    line = refusal_line(run_serve("--data-dir", str(data_dir)))
    assert str(data_dir / inside) in line, line
    assert (data_dir / inside).read_bytes() == b"not a directory"


# ---------------------------------------------------------------------------------------------
# A smaller --explain-map-mb


def test_a_smaller_explain_map_than_the_index_holds_keeps_it_and_the_index_stops_at_its_next_write(
    tmp_path: Path,
) -> None:
    """README "Flags and restarts" sends `--explain-map-mb` below for what a smaller value does, and below said only
    that a larger one grows the map. LMDB takes a smaller map down to what the index holds (no smaller): the start
    serves, every event taken before is explained, and the next write that needs room past the file finds the index
    full (it stops alone, as a full one does: usage goes on). 100,000 events of 1 unit hold more than 1 MiB of index (as in
    test_audit_longrun_wire.py), taken under the default map; then a start with `--explain-map-mb 1` and one more."""
    server = ServerProcess(tmp_path / "data")
    server.start()
    at_ms = time.time_ns() // 1_000_000 - 1000
    try:
        with server.client() as client:
            longrun.catalogue(client, ("x", False))
            for b in range(10):
                batch = [longrun.work(f"x{b}-{i}", "x", 1, at_ms) for i in range(10_000)]
                assert client.ingest_batch(batch).accepted == 10_000
            assert longrun.until(lambda: longrun.explain_code(client, "x", at_ms) == grpc.StatusCode.OK)
        assert server.terminate() == 0
        server.extra_args = ("--explain-map-mb", "1")
        server.start()
        with server.client() as client:
            assert longrun.explain_code(client, "x", at_ms) == grpc.StatusCode.OK
            # A write that fits in pages the index freed within its file goes in (how many it freed depends on how
            # its earlier writes were grouped, which the machine's load decides), and the start's own write may be
            # the one that stops it: batches of 10,000 more events, each a write of 100 KiB or more, at least one
            # (the call below asks for it, so it is answered UNAVAILABLE, not from what the index held), until one
            # needs room past the file; 50,000 are far past any freed pages.
            sent = 0
            while sent == 0 or (sent < 5 and "the explain index stopped" not in server.log_path.read_text()):
                after = [longrun.work(f"after{sent}-{i}", "x", 1, at_ms) for i in range(10_000)]
                assert client.ingest_batch(after).accepted == 10_000
                sent += 1
                longrun.until(lambda: "the explain index stopped" in server.log_path.read_text(), timeout_s=5.0)
            assert "the explain index stopped" in server.log_path.read_text(), sent
            assert longrun.explain_code(client, "x", at_ms) == grpc.StatusCode.UNAVAILABLE
            assert str(client.get_balance("x").period_charges) == str(100_000 + 10_000 * sent)
    finally:
        server.stop()
