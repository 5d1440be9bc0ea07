"""Two `tariff` client defects, against real server processes on their own 127.0.0.1 ports:

- `usage send --retry-s S` against a server that accepts TCP but never answers (a stopped process) gave up only after
  gRPC's own 20 s connect timeout, plus S: the wait for a connection was not bounded by the retry budget. It gives up
  within about S now (README "usage send"), exit status 3, saying how far it got;
- the tables printed times to the second: a period starting at 00:30:00.250 showed as `00:30:00Z`. They show the
  fractional seconds when there are any, as `--json` does (README: times are RFC 3339 in UTC).
"""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path

from google.protobuf.timestamp_pb2 import Timestamp
from tariff.v1 import contracts_pb2

from tests.serverproc import ServerProcess
from tests.test_audit_cli4_wire import EXIT_NO_ANSWER
from tests.test_cli import tariff, usage_lines


def test_usage_send_to_a_server_that_never_answers_gives_up_within_about_retry_s(stopped: ServerProcess) -> None:
    started = time.monotonic()
    done = tariff(stopped, "usage", "send", "--retry-s", "2", stdin=usage_lines("sendretry-stopped", 3), check=False)
    elapsed = time.monotonic() - started
    assert done.returncode == EXIT_NO_ANSWER, done.stderr
    # A bound on a failure mode, not a speed measurement: it took gRPC's 20 s connect timeout plus --retry-s.
    assert elapsed < 10, f"gave up after {elapsed:.1f} s with --retry-s 2:\n{done.stderr}"
    assert "the first event not acknowledged is line 1" in done.stderr, done.stderr
    assert "tariff: UNAVAILABLE: " in done.stderr, done.stderr


def test_usage_send_with_no_retry_budget_still_sends_to_a_server_that_answers(tmp_path: Path) -> None:
    """--retry-s 0 gives up at the first failure, but waiting for a connection to a live server is not one."""
    with ServerProcess(tmp_path / "data", demo=True) as server:
        done = tariff(server, "usage", "send", "--retry-s", "0", "--json", stdin=usage_lines("sendretry-zero", 3))
        assert json.loads(done.stdout)["accepted"] == 3, done.stdout


def off_the_hour_customer(server: ServerProcess, customer_id: str) -> str:
    """A customer whose contract started on the first of last month at 00:30:00.250 UTC; returns that time's
    fraction and clock as a table shows them (`00:30:00.250Z`)."""
    now = datetime.now(UTC)
    year, month = (now.year, now.month - 1) if now.month > 1 else (now.year - 1, 12)
    start = datetime(year, month, 1, 0, 30, 0, 250_000, tzinfo=UTC)
    starting_at = Timestamp()
    starting_at.FromDatetime(start)
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=f"{customer_id}-c",
                customer_id=customer_id,
                rate_card_id="ai-credits",
                starting_at=starting_at,
                overage_policy=contracts_pb2.ALLOW,
                overage_price="1",
                currency="USD",
            )
        )
    return "00:30:00.250Z"


def test_a_period_starting_off_the_second_shows_its_milliseconds_in_the_table(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", demo=True) as server:
        clock = off_the_hour_customer(server, "offsec")
        shown = json.loads(tariff(server, "balance", "offsec", "--json").stdout)
        assert shown["period_start"].endswith("T" + clock), shown
        table = tariff(server, "balance", "offsec").stdout
        period = f"{shown['period_start'].replace('T', ' ')} .. {shown['period_end'].replace('T', ' ')}"
        assert period in table, table
