"""The second audit of README "Clients", as a Python developer meets it: each scenario runs against a real server
process on 127.0.0.1 and checks what the README and the client's docstrings promise, where no other test does.

- "Errors are typed after the status codes": every status the server sends has its subclass of `TariffError`,
  OUT_OF_RANGE (WatchAlerts past the newest alert) included, on the sync and the async stubs.
- A typed error's text states each field violation once: the server's status message already names the field,
  and the client adds only the violations the message does not state.
- The Java section names the coordinates a Maven user writes in a pom (`mvn install` puts that version in the
  local repository): groupId, artifactId and clients/java/pom.xml's version.
- A developer whose environment names an HTTP proxy (`http_proxy`, `https_proxy`, `grpc_proxy`: common behind a
  company's firewall) still reaches a server on 127.0.0.1, as the Go and TypeScript clients do: gRPC's C core
  would send even a loopback connection through the proxy, and the README's example failed with UNAVAILABLE.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator

import grpc
import pytest
import tariff
from tariff import InvalidArgument, TariffClient, TariffError
from tariff.client import _channel_options
from tariff.v1 import alerts_pb2

from server.errors import _CODES as SERVER_STATUS_CODES
from tests.serverproc import REPO_ROOT, ServerProcess, free_port

FAR_PAST_THE_NEWEST_ALERT = 1_000_000


def test_every_status_the_server_sends_has_its_typed_error() -> None:
    for _, code in SERVER_STATUS_CODES:
        error = tariff.error_from_rpc(_FailedCall(code))
        assert type(error) is not TariffError and error.code == code, f"{code.name} has no typed error"


class _FailedCall:
    """What a failed call raises, as error_from_rpc reads it: a code and details, no trailers."""

    def __init__(self, code: grpc.StatusCode) -> None:
        self._code = code

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return "refused"


def test_watching_alerts_past_the_newest_raises_out_of_range_on_both_clients(demo_server: ServerProcess) -> None:
    request = alerts_pb2.WatchAlertsRequest(after_seq=FAR_PAST_THE_NEWEST_ALERT)
    with demo_server.client() as client, pytest.raises(TariffError) as sync_refusal:
        next(iter(client.alerts.WatchAlerts(request)))

    async def watch() -> None:
        async with demo_server.async_client() as client:
            await client.alerts.WatchAlerts(request).read()

    with pytest.raises(TariffError) as async_refusal:
        asyncio.run(watch())
    for refusal in (sync_refusal, async_refusal):
        assert refusal.value.code == grpc.StatusCode.OUT_OF_RANGE
        assert type(refusal.value).__name__ == "OutOfRange", type(refusal.value)
        assert isinstance(refusal.value, tariff.OutOfRange)
        assert "after_seq" in refusal.value.details


def test_a_typed_error_states_each_field_violation_once(demo_server: ServerProcess) -> None:
    with demo_server.client() as client, pytest.raises(InvalidArgument) as refused:
        client.authorize("acme", "ai_action", reserve=True, reservation_ttl_s=-1)
    error = refused.value
    assert [v.field for v in error.field_violations] == ["reservation_ttl"]
    assert str(error).count("must be positive") == 1, str(error)
    assert str(error).startswith("INVALID_ARGUMENT: ") and "reservation_ttl" in str(error)


def test_the_readme_names_the_java_clients_maven_coordinates_with_the_poms_version() -> None:
    pom = ET.parse(REPO_ROOT / "clients" / "java" / "pom.xml").getroot()
    namespace = {"m": "http://maven.apache.org/POM/4.0.0"}
    coordinates = ":".join(pom.findtext(f"m:{name}", "", namespace) for name in ("groupId", "artifactId", "version"))
    readme = (REPO_ROOT / "README.md").read_text()
    java = readme[readme.index("\n### Java\n") : readme.index("\n### Other languages\n")]
    assert f"`{coordinates}`" in java, f"README's Java section does not name {coordinates}"


def test_a_loopback_server_is_reached_with_an_http_proxy_in_the_environment(demo_server: ServerProcess) -> None:
    nowhere = f"http://127.0.0.1:{free_port()}"  # a proxy that refuses every connection
    env = {key: value for key, value in os.environ.items() if "proxy" not in key.lower()}
    env.update({"http_proxy": nowhere, "https_proxy": nowhere, "grpc_proxy": nowhere})
    script = (
        "import asyncio, sys\n"
        "from tariff import AsyncTariffClient, TariffClient\n"
        "with TariffClient(sys.argv[1], default_timeout_s=5) as client:\n"
        "    print(client.get_balance('acme').credits_remaining)\n"
        "async def main():\n"
        "    async with AsyncTariffClient(sys.argv[1], default_timeout_s=5) as client:\n"
        "        print((await client.get_balance('acme')).credits_remaining)\n"
        "asyncio.run(main())\n"
    )
    for target in (demo_server.target, demo_server.target.replace("127.0.0.1", "localhost")):
        done = subprocess.run(
            [sys.executable, "-c", script, target], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        assert done.returncode == 0 and done.stdout.split() == ["50000", "50000"], (target, done.stdout, done.stderr)


@pytest.mark.parametrize(
    ("target", "direct"),
    [
        ("127.0.0.1:50051", True),
        ("127.0.0.2:50051", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("dns:///localhost:50051", True),
        ("ipv4:127.0.0.1:50051", True),
        ("billing.example.com:443", False),
        ("10.0.0.7:50051", False),
        ("[2001:db8::1]:50051", False),
    ],
)
def test_only_a_loopback_target_is_kept_from_the_environments_proxy(target: str, direct: bool) -> None:
    options = dict(_channel_options(target, ()))
    assert (options.get("grpc.enable_http_proxy") == 0) is direct, options
    # The caller's channel_options still win.
    assert dict(_channel_options(target, [("grpc.enable_http_proxy", 1)]))["grpc.enable_http_proxy"] == 1


GPT4_COMPLEX_SUMMARY = {"action": "summary", "data_source": "crm", "model": "gpt-4", "complexity": "complex"}


def test_a_python_reserve_without_an_id_gets_one_chosen_by_the_client(demo_server: ServerProcess) -> None:
    """README "Clients": an authorize with `reserve` and no `reservation_id` gets an id the client chose before the
    call (`py-r-` and 32 hex digits, as Go's `go-r-`), and the answer carries it: two such calls are two holds of 5
    (the demo's summary costs 5), each settled by its own id."""
    with demo_server.client() as client:
        first = client.authorize("acme", "ai_action", GPT4_COMPLEX_SUMMARY, reserve=True)
        second = client.authorize("acme", "ai_action", GPT4_COMPLEX_SUMMARY, reserve=True)
        assert first.allowed and second.allowed
        ids = (first.reservation_id, second.reservation_id)
        assert all(re.fullmatch(r"py-r-[0-9a-f]{32}", i) for i in ids) and ids[0] != ids[1], ids
        assert client.get_balance("acme").credits_held == "10"


def test_a_python_reserve_whose_call_fails_carries_its_id_and_a_retry_holds_once(demo_server: ServerProcess) -> None:
    """README "Clients": the server may make the hold before the deadline runs out, so the error of a failed reserve
    carries the id its request held under, and a retry with it holds once. A listener that accepts the connection and
    never answers fails the call (DEADLINE_EXCEEDED), as a server that held and then went quiet would; the retry under
    the error's id, made twice against the demo server, holds 5 (the demo's summary) once. Before, the Python client
    left the id to the server: the error carried none, and each retry held again."""
    with silent_listener() as target, TariffClient(target) as offline, pytest.raises(tariff.DeadlineExceeded) as failed:
        offline.authorize("acme", "ai_action", GPT4_COMPLEX_SUMMARY, reserve=True, timeout_s=0.3)
    reservation_id = failed.value.reservation_id
    assert re.fullmatch(r"py-r-[0-9a-f]{32}", reservation_id), reservation_id
    with demo_server.client() as client:
        for _ in range(2):
            retried = client.authorize(
                "acme", "ai_action", GPT4_COMPLEX_SUMMARY, reserve=True, reservation_id=reservation_id
            )
            assert (retried.allowed, retried.reservation_id) == (True, reservation_id)
        assert client.get_balance("acme").credits_held == "5"


def test_an_async_reserve_whose_call_fails_carries_its_id() -> None:
    """The async client alike: the error of a failed reserve carries the id the client chose."""

    async def reserve(target: str) -> str:
        async with tariff.AsyncTariffClient(target) as client:
            with pytest.raises(tariff.DeadlineExceeded) as failed:
                await client.authorize("acme", "ai_action", GPT4_COMPLEX_SUMMARY, reserve=True, timeout_s=0.3)
            return failed.value.reservation_id

    with silent_listener() as target:
        assert re.fullmatch(r"py-r-[0-9a-f]{32}", asyncio.run(reserve(target)))


@contextlib.contextmanager
def silent_listener() -> Iterator[str]:
    """A 127.0.0.1 port that accepts connections and never answers: every call to it runs out of time."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"127.0.0.1:{listener.getsockname()[1]}"
