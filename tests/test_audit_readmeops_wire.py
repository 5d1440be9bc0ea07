"""An audit of README's operational parts against `tariff serve`: its flags (README, "Server flags": every option of
`tariff serve --help` in the table, with its default), and what a bad value answers: a usage error or one line, exit
status 2, no Python traceback, and nothing written to the data directory ("A server that refuses to start says why in
one line and exits with status 2"; "any other address is refused (exit 2)").

Refusals exit before a server starts, so these tests start no server that stays up: fast, no timing.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from server.cli import serve
from tests.serverproc import REPO_ROOT

README = REPO_ROOT / "README.md"


def run_serve(*args: str) -> subprocess.CompletedProcess[str]:
    """`tariff serve ARGS` to completion: each case here is refused before it serves."""
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def assert_refused(result: subprocess.CompletedProcess[str], data_dir: Path, says: str) -> None:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr}"
    assert says in result.stderr, result.stderr
    assert not data_dir.exists(), "the data directory was touched"


@pytest.mark.parametrize("port", ["²", "١٢٣٤٥", "５００５１"])
def test_a_listen_port_of_other_digits_than_ascii_is_refused_in_one_line(tmp_path: Path, port: str) -> None:
    """README, "Listening and TLS": a port from 0 to 65535, any other address refused with exit 2. Python's
    str.isdigit() takes superscripts and other scripts' digits, which int() then refuses (a traceback) or gRPC
    cannot bind (a line without the reason)."""
    data_dir = tmp_path / "data"
    result = run_serve("--listen", f"127.0.0.1:{port}", "--data-dir", str(data_dir))
    assert_refused(result, data_dir, "give host:port, the port from 0 (any free port) to 65535")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines


@pytest.mark.parametrize("ttl", ["nan", "inf", "-inf", "1e400"])
def test_a_reservation_ttl_max_that_is_not_a_finite_number_is_a_usage_error(tmp_path: Path, ttl: str) -> None:
    """`--reservation-ttl-max-s` is seconds, at least 0.001: NaN and infinity are not such a number, and used to
    stop the server with a traceback (exit 1) after it had opened the data directory and loaded the demo."""
    data_dir = tmp_path / "data"
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--demo", "--reservation-ttl-max-s", ttl)
    assert_refused(result, data_dir, "Invalid value for '--reservation-ttl-max-s'")


@pytest.mark.parametrize("grace", ["5x", "24", "1 day", "-1h", "\uff12\uff14h", "\u0662h"])
def test_a_close_grace_that_is_not_a_duration_is_a_usage_error_worded_as_readme_says(
    tmp_path: Path, grace: str
) -> None:
    """README "Server flags": a bad value is `Error: Invalid value for '--FLAG': ...`, the flag in quotes as click
    words every other option's; --close-grace is a whole number and ms, s, m, h or d, or off. Its refusal named the
    flag without them (`Invalid value for --close-grace:`)."""
    data_dir = tmp_path / "data"
    result = run_serve("--listen", "127.0.0.1:0", "--data-dir", str(data_dir), "--close-grace", grace)
    assert_refused(
        result,
        data_dir,
        f"Error: Invalid value for '--close-grace': {grace!r} is not a duration such as 24h, 30m, 90s or 2d",
    )


def readme_flag_table() -> dict[str, str]:
    """README's "Server flags" table: flag name -> its default column, as written."""
    text = README.read_text(encoding="utf-8")
    section = text.split("### Server flags", 1)[1].split("\n#", 1)[0]
    rows: dict[str, str] = {}
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].startswith("`--"):
            for flag in re.findall(r"--[a-z0-9-]+", cells[0]):
                rows[flag] = cells[1]
    return rows


def serve_options() -> list[click.Option]:
    return [param for param in serve.params if isinstance(param, click.Option) and "--help" not in param.opts]


def test_every_serve_flag_is_in_the_readme_table() -> None:
    documented = readme_flag_table()
    flags = [flag for option in serve_options() for flag in option.opts + option.secondary_opts]
    assert sorted(set(flags) - set(documented)) == [], "flags of `tariff serve` missing from README's table"
    assert sorted(set(documented) - set(flags)) == [], "README's table names flags `tariff serve` does not have"


def shown_default(option: click.Option) -> str:
    """The default as README's table writes it: digits grouped by commas, a float's .0 dropped, a flag off/on."""
    value = option.get_default(click.Context(serve), call=True)  # click's own reading (a flag's unset default: off)
    if option.is_flag:
        return "on" if value else "off"
    if not isinstance(value, str | int | float):  # None, or click's sentinel for an option without a default
        return "none"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"{value:,}" if isinstance(value, int) else str(value)


def test_the_readme_table_gives_each_flag_its_default() -> None:
    documented = readme_flag_table()
    for option in serve_options():
        if option.name == "loop_stall_sample_ms":  # 0 means off
            assert documented["--loop-stall-sample-ms"].startswith("off"), documented["--loop-stall-sample-ms"]
            continue
        cell = documented[option.opts[0]]
        shown = shown_default(option)
        assert re.match(re.escape(shown) + r"(?![\w,.])", cell.strip("`")), (option.opts[0], cell, shown)


def test_usage_send_retry_s_nan_is_a_usage_error(tmp_path: Path) -> None:
    """README, Admin CLI: a malformed argument is exit 2 and nothing is sent. `usage send --retry-s nan` passed
    click.FloatRange(0), then reconnected with no backoff in a busy loop until the backoff overflowed: a traceback and
    exit 1 (`INTERNAL: UsageStream failed: OverflowError`). No server is needed: the refusal comes first."""
    events = tmp_path / "usage.jsonl"
    events.write_text(
        '{"transaction_id": "t-1", "customer_id": "acme", "event_type": "ai_action", "timestamp_ms": 1}\n'
    )
    send = ["usage", "send", str(events), "--server", "127.0.0.1:1", "--retry-s", "nan"]
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", *send],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr[-2000:]}"
    assert "Invalid value for '--retry-s'" in result.stderr, result.stderr[-2000:]


def test_migrate_of_a_journal_lmdb_cannot_open_says_why_in_one_line(tmp_path: Path) -> None:
    """README: `tariff migrate --data-dir DIR` converts the previous release's data directory; `tariff serve` on a
    journal LMDB cannot open says so in one line, exit 2, the file left as it is. `tariff migrate` on the same
    directory stopped in an `lmdb.InvalidError` traceback, exit 1."""
    journal = tmp_path / "data" / "journal"
    journal.mkdir(parents=True)
    (journal / "data.mdb").write_bytes(b"not an LMDB file")
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "migrate", "--data-dir", str(tmp_path / "data")],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert result.returncode == 2, f"exit {result.returncode}:\n{result.stderr}"
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "cannot open the journal" in lines[0], lines
    assert (journal / "data.mdb").read_bytes() == b"not an LMDB file"
    assert not (tmp_path / "data" / "backup-v1").exists()
