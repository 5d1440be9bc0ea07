"""Leftovers of earlier audits, over the wire where the server is involved.

- The Python client's `AuthorizeBatcher` refuses a bad `batch_requests_max` (the server takes 1 to 10,000
  requests a batch) or `batches_in_flight_max` (at least 1: none would leave every check waiting out its
  `timeout_s`) with a ValueError naming the parameter, also under `python -O`, which strips `assert`s.
- A usage event's `event_type` has no limit of its own (usage.proto, README "Limits"): a product's is at most
  256 bytes, so a longer one feeds no product and is accepted, charging nothing (README: "An event type that
  feeds no product is accepted and charges nothing"); the ack echoes none of it, and no balance or invoice line
  changes; an Authorize of it is allowed, estimated at 0. Products and rate card as in tests/test_audit_gateway2_wire.py: `units` (event type `work`, SUM of
  `n`) at 1 credit a unit.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, usage_pb2

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess
from tests.test_audit_credits2_wire import customer
from tests.test_audit_gateway2_wire import catalogue

CONSTRUCT = """
import sys
from tariff.gateway import AuthorizeBatcher
name, value = sys.argv[1], int(sys.argv[2])
try:
    AuthorizeBatcher(None, **{name: value})
except ValueError as e:
    print("ValueError:", e)
else:
    print("accepted")
"""


@pytest.mark.parametrize(
    ("name", "value"),
    [("batch_requests_max", 0), ("batch_requests_max", 10_001), ("batches_in_flight_max", 0)],
)
@pytest.mark.parametrize("optimize", [[], ["-O"]])
def test_a_bad_authorize_batcher_parameter_is_a_value_error_naming_it(
    name: str, value: int, optimize: list[str]
) -> None:
    run = subprocess.run(
        [sys.executable, *optimize, "-c", CONSTRUCT, name, str(value)], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("ValueError:") and name in run.stdout, run.stdout + run.stderr


def test_the_authorize_batcher_takes_its_bounds() -> None:
    for name, value in (("batch_requests_max", 1), ("batch_requests_max", 10_000), ("batches_in_flight_max", 1)):
        run = subprocess.run(
            [sys.executable, "-O", "-c", CONSTRUCT, name, str(value)], capture_output=True, text=True, check=False
        )
        assert run.stdout.strip() == "accepted", (name, value, run.stdout + run.stderr)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-leftovers2")
    yield from serving(ServerProcess(root / "data"), catalogue)


def test_a_10000_byte_event_type_feeds_no_product_and_is_accepted_charging_nothing(server: ServerProcess) -> None:
    """One `work` event of n=3 charges 3 credits; the long-typed event beside it (n=5) charges nothing: 3 in all."""
    long_type = "w" * 10_000
    with server.client() as client:
        customer(client, "lo2-long-type", block=False)
        ts = now_ms()
        events = [
            usage_pb2.UsageEvent(
                transaction_id=f"lo2-{i}", customer_id="lo2-long-type", event_type=t, timestamp_ms=ts, values={"n": n}
            )
            for i, (t, n) in enumerate((("work", 3.0), (long_type, 5.0)))
        ]
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="lo2", events=events), timeout=30)
        assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (2, 0, [])
        assert long_type not in str(ack) and ack.ByteSize() < 1_000
        again = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="lo2", events=events[1:]), timeout=30)
        assert (again.accepted, again.duplicates, list(again.rejected)) == (0, 1, [])
        assert _charges(client, "lo2-long-type") == "3"
        probe = balance_pb2.AuthorizeRequest(customer_id="lo2-long-type", event_type=long_type, values={"n": 5.0})
        answer = client.balance.Authorize(probe, timeout=30)
        assert (answer.allowed, Decimal(answer.estimated_cost)) == (True, Decimal(0))
        assert long_type not in str(answer)


def _charges(client: TariffClient, customer_id: str) -> str:
    return str(client.get_balance(customer_id).period_charges)
