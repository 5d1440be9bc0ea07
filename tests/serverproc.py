"""Runs a real Tariff server process on a real 127.0.0.1 socket, for integration tests.

    srv = ServerProcess(tmp_path / "data", demo=True)
    srv.start()                      # free port, spawn `python -m server.cli serve ...`, wait SERVING
    with srv.client() as client:     # tariff.TariffClient on srv.target
        client.get_balance("cust-1")
    srv.kill9(); srv.restart()       # crash and recover on the same port and data directory
    srv.terminate()                  # SIGTERM; returns the exit code

The fixtures in conftest.py (`server_factory`, `demo_server`) create these and kill every one of
them at teardown. The server's stdout and stderr go to `<data_dir>.server.log` beside the data
directory (appended across restarts); `log_tail()` returns its end and every start failure
carries it.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tariff import AsyncTariffClient, TariffClient

REPO_ROOT = Path(__file__).resolve().parent.parent
HOST = "127.0.0.1"

# The health probe's channel: reconnect fast while the server is starting, and never go through
# an HTTP proxy from the environment for a loopback address.
_PROBE_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
    ("grpc.enable_http_proxy", 0),
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bind port 0, read it, close)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


# Starts on a fresh free port after our server found the last one taken ("already in use").
_PORT_ATTEMPTS = 3


class ServerStartError(RuntimeError):
    """The server exited, or did not answer SERVING in time, during start()."""


class ServerProcess:
    """One `tariff serve` process: start, kill -9, SIGTERM, restart on the same port and data.

    `port` is 0 until the first start() picks a free one (set it before start() to choose);
    restarts keep it. `api_key`, when given, is sent on health probes and by the client helpers
    (pass the server its key file through `extra_args`, e.g. `["--api-keys", str(path)]`).
    `tls_root_cert` (PEM file of the CA to trust), and `tls_client_cert`/`tls_client_key` for mutual
    TLS, make the probe and the client helpers use TLS (pass the server `--tls-cert` etc. in `extra_args`).
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        demo: bool = False,
        extra_args: Sequence[str] = (),
        port: int = 0,
        api_key: str | None = None,
        env: dict[str, str] | None = None,
        tls_root_cert: Path | None = None,
        tls_client_cert: Path | None = None,
        tls_client_key: Path | None = None,
    ) -> None:
        self.tls_root_cert = tls_root_cert
        self.tls_client_cert = tls_client_cert
        self.tls_client_key = tls_client_key
        self.data_dir = Path(data_dir)
        self.demo = demo
        self.extra_args = tuple(extra_args)
        self.port = port
        self.api_key = api_key
        self.env = dict(env or {})
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}.server.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    # -- state -----------------------------------------------------------------------

    @property
    def target(self) -> str:
        return f"{HOST}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            "-m",
            "server.cli",
            "serve",
            "--listen",
            self.target,
            "--data-dir",
            str(self.data_dir),
        ]
        if self.demo:
            cmd.append("--demo")
        if "--close-grace" not in self.extra_args:
            # Tests rate usage in long-past periods; closing those by themselves is tested where asked for.
            cmd.extend(["--close-grace", "off"])
        cmd.extend(self.extra_args)
        return cmd

    def __repr__(self) -> str:
        return f"ServerProcess({self.target}, data_dir={self.data_dir}, pid={self.pid}, running={self.running})"

    # -- lifecycle -------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> None:
        """Spawns the server and waits until Health/Check("") answers SERVING and the server's banner is logged.

        Raises ServerStartError, with the log's tail, if the process exits first or the timeout
        passes (the process is killed then).
        """
        if self.running:
            raise RuntimeError(f"{self!r} is already running")
        if self.port != 0:
            self._spawn(timeout_s)
            return
        # free_port's port is free only "a moment ago": another test's server may take it first. Ours then
        # refuses to start ("already in use", exit 2), and we try the next free port.
        for attempt in range(_PORT_ATTEMPTS):
            self.port = free_port()
            try:
                self._spawn(timeout_s)
                return
            except ServerStartError as exc:
                if attempt + 1 == _PORT_ATTEMPTS or "already in use" not in str(exc):
                    raise

    def _spawn(self, timeout_s: float) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        log_start_bytes = self.log_path.stat().st_size if self.log_path.exists() else 0
        cmd = self.command()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1", **self.env}
        with open(self.log_path, "ab") as log:
            log.write(f"\n=== start #{self.starts} at {time.strftime('%H:%M:%S')}: {' '.join(cmd)}\n".encode())
            log.flush()
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO_ROOT,
                env=env,
                start_new_session=True,  # a Ctrl-C on the test run does not reach it first
            )
        try:
            self._wait_serving(timeout_s, log_start_bytes)
        except BaseException:
            self._kill()
            raise

    def _banner_logged(self, log_start_bytes: int) -> bool:
        """Whether this start's process printed its banner (it does so once it serves on self.port).

        Any host: a test may pass its own --listen (e.g. 0.0.0.0) on the same port.
        """
        with open(self.log_path, "rb") as log:
            log.seek(log_start_bytes)
            banner = re.compile(rb"^tariff: serving gRPC on \S+:%d \(" % self.port, re.MULTILINE)
            return banner.search(log.read()) is not None

    def _wait_serving(self, timeout_s: float, log_start_bytes: int) -> None:
        """Until Health answers SERVING and this start's process says it serves.

        SERVING alone is not enough: another test's server may hold the port (it took the port between
        free_port and our bind), and it answers health probes too, while ours is about to exit.
        """
        deadline = time.monotonic() + timeout_s
        metadata = (("authorization", f"Bearer {self.api_key}"),) if self.api_key else None
        last = "no answer"
        credentials = self.channel_credentials()
        channel_of = (
            grpc.insecure_channel(self.target, options=_PROBE_OPTIONS)
            if credentials is None
            else grpc.secure_channel(self.target, credentials, options=_PROBE_OPTIONS)
        )
        with channel_of as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                code = self.returncode
                if code is not None:
                    raise ServerStartError(
                        f"server exited with code {code} before SERVING ({self.target}); log tail:\n{self.log_tail()}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ServerStartError(
                        f"server not SERVING on {self.target} after {timeout_s:g} s (last: {last}); "
                        f"log tail:\n{self.log_tail()}"
                    )
                try:
                    reply = stub.Check(
                        health_pb2.HealthCheckRequest(service=""), timeout=min(remaining, 1.0), metadata=metadata
                    )
                    if reply.status == health_pb2.HealthCheckResponse.SERVING and self._banner_logged(log_start_bytes):
                        return
                    last = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
                except grpc.RpcError as e:
                    last = f"{e.code().name}: {e.details()}"
                time.sleep(0.05)

    def kill9(self) -> None:
        """SIGKILL and wait (a crash: nothing gets to flush or say goodbye)."""
        if self.proc is None:
            raise RuntimeError("server was never started")
        self._kill()

    def _kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait()

    def terminate(self, timeout_s: float = 20.0) -> int:
        """SIGTERM, wait up to timeout_s, return the exit code.

        Raises TimeoutError (after a SIGKILL) when the server does not exit in time.
        """
        if self.proc is None:
            raise RuntimeError("server was never started")
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._kill()
            raise TimeoutError(
                f"server did not exit within {timeout_s:g} s of SIGTERM; log tail:\n{self.log_tail()}"
            ) from None

    def restart(self, timeout_s: float = 30.0) -> None:
        """Starts again on the same port and data directory.

        A server still running is terminated first (SIGTERM, SIGKILL after 20 s): the server turns
        gRPC's SO_REUSEPORT off, so a second one on a taken port would refuse to start (exit 2).
        """
        if self.running:
            with contextlib.suppress(TimeoutError):
                self.terminate()
        self.start(timeout_s)

    def stop(self) -> None:
        """Kills the process if it is running; for teardown (idempotent)."""
        self._kill()

    def log_tail(self, lines: int = 50) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # -- clients ---------------------------------------------------------------------

    def channel_credentials(self) -> grpc.ChannelCredentials | None:
        """TLS credentials from tls_root_cert (and the client pair for mTLS), or None for plaintext."""
        if self.tls_root_cert is None:
            return None
        return grpc.ssl_channel_credentials(
            self.tls_root_cert.read_bytes(),
            self.tls_client_key.read_bytes() if self.tls_client_key else None,
            self.tls_client_cert.read_bytes() if self.tls_client_cert else None,
        )

    def client(self, **kwargs: Any) -> TariffClient:
        """A synchronous TariffClient for this server (close it, or use `with`)."""
        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("channel_options", [("grpc.enable_http_proxy", 0)])
        kwargs.setdefault("credentials", self.channel_credentials())
        return TariffClient(self.target, **kwargs)

    def async_client(self, **kwargs: Any) -> AsyncTariffClient:
        """An AsyncTariffClient for this server; create it inside the event loop that uses it."""
        kwargs.setdefault("api_key", self.api_key)
        kwargs.setdefault("channel_options", [("grpc.enable_http_proxy", 0)])
        kwargs.setdefault("credentials", self.channel_credentials())
        return AsyncTariffClient(self.target, **kwargs)


class ServerFactory(Protocol):
    """The `server_factory` fixture: creates (and by default starts) a ServerProcess."""

    def __call__(
        self,
        *,
        demo: bool = False,
        extra_args: Sequence[str] = (),
        name: str | None = None,
        start: bool = True,
        api_key: str | None = None,
        env: dict[str, str] | None = None,
    ) -> ServerProcess: ...


def wait_for(condition: Callable[[], bool], timeout_s: float) -> bool:
    """Polls `condition` every 50 ms until it holds or `timeout_s` passes; whether it held at the end."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


def wait_for_log(server: ServerProcess, text: str, timeout_s: float) -> None:
    """Until `text` is in the server's log; fails with the log's tail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while text not in server.log_path.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in the log: {server.log_tail()}"
        time.sleep(0.002)
