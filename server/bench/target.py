"""Processes under test: a `tariff serve` (or a reference server) on loopback, its CPU and memory from /proc.

The bench never measures a server inside its own process: each one is a child process on a free
127.0.0.1 port, started on a fresh data directory, probed through the gRPC health service, and read
from the outside (/proc/PID/stat for CPU, /proc/PID/status for resident memory).
"""

from __future__ import annotations

import ctypes
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parent.parent.parent
# Large enough for 10 M journaled events; LMDB maps it sparsely, so it costs nothing up front.
BENCH_MAP_SIZE_MB = 32_768
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")
# Never route a loopback call through a proxy from the environment.
CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]
ARGPARSE_USAGE_EXIT = 2
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
# Resolved in the parent: the child between fork and exec must not import or load anything.
_LIBC_PRCTL: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl


def _stop_with_bench(bench_pid: int) -> Callable[[], None]:
    """A pre-exec hook: the server gets SIGTERM when the bench dies, even by SIGKILL, so that a killed bench
    leaves no server behind (they run in their own sessions, out of reach of the terminal's signals)."""

    def hook() -> None:
        _LIBC_PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != bench_pid:  # the bench died before the request took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return hook


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


class StartFailed(RuntimeError):
    """The process exited, or was not SERVING in time; `exit_code` is None on a timeout."""

    def __init__(self, message: str, exit_code: int | None) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class ServedProcess:
    """One server process: `command` gets `--listen HOST:PORT` appended; restarts keep the port."""

    def __init__(self, command: Sequence[str], log_path: Path) -> None:
        self.base_command = list(command)
        self.log_path = log_path
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise RuntimeError("not started")
        return self.proc.pid

    def start(self, timeout_s: float = 120.0) -> float:
        """Spawns the process and returns the seconds from spawn to a SERVING health answer."""
        command = [*self.base_command, "--listen", self.target]
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # The death signal follows the thread that forked: only the main thread's end is the bench's end.
        on_main_thread = threading.current_thread() is threading.main_thread()
        stop_with_bench = _stop_with_bench(os.getpid()) if on_main_thread else None
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== {' '.join(command)}\n".encode())
            log.flush()
            started = time.perf_counter()
            self.proc = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,  # a Ctrl-C on the bench does not reach it before the bench stops it
                preexec_fn=stop_with_bench,
            )
        try:
            self._wait_serving(started + timeout_s)
        except BaseException:
            self.kill9()
            raise
        return time.perf_counter() - started

    def _wait_serving(self, deadline: float) -> None:
        assert self.proc is not None
        last = "no answer"
        with grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                code = self.proc.poll()
                if code is not None:
                    raise StartFailed(f"exited with code {code} before SERVING; log tail:\n{self.log_tail()}", code)
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    raise StartFailed(f"not SERVING in time (last: {last}); log tail:\n{self.log_tail()}", None)
                try:
                    reply = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=min(remaining, 1.0))
                    if reply.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as e:
                    last = f"{e.code().name}: {e.details()}"
                # Short: the recovery workload times this loop, and 10 ms is its resolution.
                time.sleep(0.01)

    def cpu_s(self) -> float:
        """User + system CPU seconds of the process so far, all its threads included."""
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        # After the ")" closing the command name: state is field 3, utime 14 and stime 15 (1-based).
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS_PER_S

    def rss_bytes(self, field: str = "VmRSS") -> int:
        """Resident memory from /proc/PID/status: VmRSS (all of it) or RssAnon (heap, without the LMDB map's
        file pages, which the kernel can drop and which grow with the journal, not with the state)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"no {field} in /proc status")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time; idempotent."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.kill9()

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])


def tariff_server(data_dir: Path, log_path: Path, extra_args: Sequence[str] = ()) -> ServedProcess:
    """`python -m server.cli serve` on a data directory (created fresh by the caller)."""
    command = [
        sys.executable,
        "-m",
        "server.cli",
        "serve",
        "--data-dir",
        str(data_dir),
        "--map-size-mb",
        str(BENCH_MAP_SIZE_MB),
        *extra_args,
    ]
    return ServedProcess(command, log_path)


def reference_server(mode: str, log_path: Path) -> ServedProcess:
    """A no-op server from server/bench/references.py (`mode`: noop or read)."""
    return ServedProcess([sys.executable, "-m", "server.bench.references", "--mode", mode], log_path)


def journal_reference_server(data_dir: Path, log_path: Path, batch_events: int) -> ServedProcess:
    """The raw-bytes journal reference from server/bench/journal_reference.py."""
    command = [
        sys.executable,
        "-m",
        "server.bench.journal_reference",
        "--data-dir",
        str(data_dir),
        "--batch-events",
        str(batch_events),
    ]
    return ServedProcess(command, log_path)
