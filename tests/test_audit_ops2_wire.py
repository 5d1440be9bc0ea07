"""Acceptance as an operator and a finance user, over the wire: README "## Admin CLI", "### API keys", "## Observability"
("### Metrics and traces"), "### Limits and backpressure (defaults)" and "### Shutdown", against real server processes
and the `tariff` command run as a subprocess.

What tests/test_cli.py, test_server_auth.py, test_audit_security_wire.py, test_server_telemetry.py,
test_server_limits.py and test_audit_obs_wire.py check is not repeated: here the key file is made with the README's own
`tariff keys new` commands and used from the CLI by a finance user restricted to one customer; the gauges and spans the
Prometheus test leaves out; a message of exactly --message-mb-max; an ack that would pass that limit; and an ingest
stream its client never ends, cut at the end of the shutdown grace.
Demo prices (server/demo.py): a simple summary on gpt-4o-mini costs 0.5 credits; acme holds 50,000.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.serverproc import REPO_ROOT, ServerProcess
from tests.test_server_auth import add_beta

TARIFF = Path(sys.executable).parent / "tariff"
BETA_NAME = "Beta Ltd"  # add_beta's customer: 100 prepaid credits bought for 90


def tariff(target: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`tariff ARGS` as a user runs it, TARIFF_SERVER=target and no other TARIFF_ variable from the test's own
    environment."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TARIFF_")}
    environment |= {"TARIFF_SERVER": target, "NO_PROXY": "127.0.0.1", "no_proxy": "127.0.0.1", **(env or {})}
    return subprocess.run(
        [str(TARIFF), *args],
        capture_output=True,
        text=True,
        env=environment,
        cwd=REPO_ROOT,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )


def new_key(key_file: Path, *args: str) -> str:
    """README's `tariff keys new ... --file keys.toml`: the key printed once on stdout."""
    done = tariff("127.0.0.1:1", "keys", "new", *args, "--file", str(key_file))
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# ---------------------------------------------------------------------------------------------
# The admin CLI, with the keys README's "### API keys" makes


@dataclass
class Keyed:
    server: ServerProcess
    admin: str  # billing-ops: admin, every customer
    portal: str  # acme-portal: read, customers acme and acme-eu


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Keyed]:
    """The demo server with README's key file (made by `tariff keys new`, TOML), plus customer beta."""
    root: Path = tmp_path_factory.mktemp("audit-ops2-keys")
    key_file = root / "keys.toml"
    admin = new_key(key_file, "--name", "billing-ops", "--role", "admin")
    new_key(key_file, "--name", "gateway-eu", "--role", "ingest")
    portal = new_key(key_file, "--name", "acme-portal", "--role", "read", "--customers", "acme,acme-eu")
    server = ServerProcess(root / "data", demo=True, extra_args=["--api-keys", str(key_file)], api_key=admin)
    server.start()
    try:
        with server.client() as client:
            add_beta(client)
        yield Keyed(server, admin, portal)
    finally:
        server.stop()


def test_a_refusal_prints_the_servers_message_once(keyed: Keyed) -> None:
    """README: a failed call prints the status code and the server's message (`tariff: NOT_FOUND: customer 'nobody'
    does not exist`). The field violation that message already states was printed a second time in brackets."""
    done = tariff(keyed.server.target, "customers", "create", "bad id", "--api-key", keyed.admin)
    assert done.returncode == 1, done
    assert (
        done.stderr == "tariff: INVALID_ARGUMENT: id: 'bad id' must be 1-128 characters of letters, digits and ._:@-\n"
    )
    threshold = tariff(
        keyed.server.target, "topup", "set", "acme-2026", "--threshold", "1000", "--recharge-to", "100",
        "--price-per-credit", "0.9", "--max-per-period", "3", "--api-key", keyed.admin,
    )  # fmt: skip
    assert threshold.returncode == 1, threshold
    assert threshold.stderr.count("must be below recharge_to") == 1, threshold.stderr
