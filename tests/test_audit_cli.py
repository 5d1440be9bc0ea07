"""An audit of README's "Admin CLI" against what `tariff` does with a real demo server: hostile arguments (numbers
out of the wire's range, times outside a protobuf Timestamp, NaN and infinite seconds) are usage errors, exit 2,
one line on stderr and no Python traceback, as README promises for a malformed argument.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.serverproc import ServerProcess
from tests.test_cli import tariff

UINT32_PAST_MAX = str(2**32)  # rate card versions and max_per_period are uint32 on the wire
UINT64_PAST_MAX = str(2**64)  # audit and alert seqs are uint64
BEFORE_YEAR_1 = "0001-01-01T00:00:00+01:00"  # 0000-12-31T23:00Z: before the first protobuf Timestamp


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("audit-cli") / "data", demo=True)
    server.start()
    yield server
    server.stop()


def assert_usage_error(server: ServerProcess, *args: str) -> None:
    done = tariff(server, *args, check=False)
    assert "Traceback" not in done.stderr, done.stderr
    assert done.returncode == 2, f"exit {done.returncode}:\n{done.stderr}"
    assert done.stderr.strip(), "no message on stderr"


@pytest.mark.parametrize(
    "args",
    [
        ("ratecard", "validate", "ai-credits", UINT32_PAST_MAX),
        ("ratecard", "show", "ai-credits", UINT32_PAST_MAX),
        ("ratecard", "diff", "ai-credits", "1", UINT32_PAST_MAX),
        ("ratecard", "publish", "ai-credits", UINT32_PAST_MAX),
        ("ratecard", "rollback", "ai-credits", UINT32_PAST_MAX),
        ("ratecard", "draft", "ai-credits", "--base", UINT32_PAST_MAX),
        ("ratecards", "show", "ai-credits", "--version", UINT32_PAST_MAX),
        ("audit", "--after", UINT64_PAST_MAX),
        ("alerts", "watch", "--after", UINT64_PAST_MAX, "--count", "1"),
        (
            "topup",
            "set",
            "acme-2026",
            "--threshold",
            "1000",
            "--recharge-to",
            "5000",
            "--price-per-credit",
            "0.9",
            "--max-per-period",
            UINT32_PAST_MAX,
        ),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_number_past_the_wire_range_is_a_usage_error(demo: ServerProcess, args: tuple[str, ...]) -> None:
    assert_usage_error(demo, *args)


@pytest.mark.parametrize(
    "args",
    [
        ("audit", "--since", BEFORE_YEAR_1),
        ("audit", "--until", BEFORE_YEAR_1),
        ("ratecard", "show", "ai-credits", "--at", BEFORE_YEAR_1),
        ("ratecard", "publish", "ai-credits", "1", "--effective-from", BEFORE_YEAR_1),
        ("ratecard", "rollback", "ai-credits", "1", "--effective-from", BEFORE_YEAR_1),
        ("ratecard", "simulate", "ai-credits", "1", "--from", BEFORE_YEAR_1, "--to", "2026-12-01T00:00:00Z"),
        ("invoices", "explain", "acme", "line-1", "--period-start", BEFORE_YEAR_1),
    ],
    ids=lambda args: " ".join(args[:2]),
)
def test_a_time_before_year_one_is_a_usage_error(demo: ServerProcess, args: tuple[str, ...]) -> None:
    assert_usage_error(demo, *args)


@pytest.mark.parametrize("ttl_s", ["nan", "inf", "-inf", "1e30"])
def test_reserve_a_ttl_that_is_no_number_of_seconds_is_a_usage_error(demo: ServerProcess, ttl_s: str) -> None:
    assert_usage_error(demo, "reserve", "acme", "ai_action", "model=gpt-4", "--ttl-s", ttl_s)


def test_a_ca_file_that_is_no_pem_fails_with_one_line(demo: ServerProcess, tmp_path: Path) -> None:
    # README: a failed call prints the status code and the server's message; gRPC core's own log lines must not
    # come before it.
    not_pem = tmp_path / "ca.pem"
    not_pem.write_text("not a certificate\n")
    done = tariff(demo, "balance", "acme", "--tls-ca", str(not_pem), check=False)
    assert done.returncode == 3  # README "Admin CLI": no TLS connection, so the server was not reached
    assert done.stderr.startswith("tariff: UNAVAILABLE"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
