"""Leftovers of the audit of `tariff` against README's "Admin CLI": the amount tables of `ratecard simulate`,
`ratecard diff` and `invoices explain` say their unit as the other tables do; `serve --metrics-port` on the gRPC
port and `migrate` of a data directory a server holds are refused in one line saying what to do; and a backslash
in a server's text prints doubled, as Python writes it, so it never reads as an escape. Run as a user runs it,
against a real demo server on a real socket.

The demo: customer `acme` (contract `acme-2026`, USD, credits), rate card `ai-credits` in credits (a complex GPT-4
summary: 5 credits).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess, free_port
from tests.test_cli import table_rows, tariff

SUMMARY = {"action": "summary", "model": "gpt-4", "complexity": "complex"}
# A name holding a backslash then `n` (two characters), and a transaction id holding a backslash then `x1b`.
BACKSLASH_NAME = "Back\\nslash"
BACKSLASH_TRANSACTION = "clileft-\\x1b"


def catalogue(client: TariffClient, process: ServerProcess) -> None:
    """The demo's, one event of acme's (5 credits) whose transaction id holds a backslash, and customer
    `clileft-bs` named with a backslash."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="clileft-bs", name=BACKSLASH_NAME))
    event: dict[str, object] = {"transaction_id": BACKSLASH_TRANSACTION, "customer_id": "acme"}
    event |= {"event_type": "ai_action", "timestamp_ms": now_ms(), "dimensions": SUMMARY}
    tariff(process, "usage", "send", stdin=json.dumps(event) + "\n")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-clileft") / "data", demo=True)
    yield from serving(process, lambda client: catalogue(client, process))


def this_month_start() -> str:
    return datetime.now(UTC).strftime("%Y-%m-01T00:00:00Z")


def header_of(output: str, first_column: str) -> list[str]:
    """The header row of the table whose first column is `first_column`."""
    return next(row for row in table_rows(output) if row and row[0] == first_column)


def test_simulate_names_the_rate_cards_pricing_unit(server: ServerProcess) -> None:
    # SimulatedAmount: charges in the rate card's pricing unit; ai-credits prices in credits. The one event at
    # version 1's price: current 5, simulated 5, delta 0, and the same totals.
    args = ("ratecard", "simulate", "ai-credits", "1", "--from", this_month_start(), "--to", "2100-01-01")
    out = tariff(server, *args).stdout
    assert header_of(out, "customer") == [
        "customer",
        "product",
        "current (credits)",
        "simulated (credits)",
        "delta (credits)",
    ], out
    rows = table_rows(out)
    assert ["acme", "ai_action", "5", "5", "0"] in rows
    assert ["current (credits)", "5"] in rows and ["delta (credits)", "0"] in rows, out
    as_json = json.loads(tariff(server, *args, "--json").stdout)  # --json: the proto's answer, no unit added
    assert as_json["totals"] == {"current_amount": "5", "simulated_amount": "5", "delta": "0"}


def test_diff_names_the_currency_of_a_card_priced_in_one(server: ServerProcess) -> None:
    # A card in USD: its evaluated prices are USD. v1 per_call 0.002, v2 per_call 0.003.
    tariff(server, "ratecards", "create", "clileft-usd", "--unit", "USD")
    rate = '{"product_id": "ai_action", "unit": {"price": "per_call"}}'
    tariff(server, "ratecard", "draft", "clileft-usd", "--set", "per_call=0.002", "--rate", rate)
    tariff(server, "ratecard", "draft", "clileft-usd", "--base", "1", "--set", "per_call=0.003")
    out = tariff(server, "ratecard", "diff", "clileft-usd", "1", "2").stdout
    assert header_of(out, "change") == ["change", "parameter", "v1", "v2"], out  # parameters: no unit, not money
    rates = [row for row in table_rows(out) if row and row[0] == "change"][1]
    assert rates == ["change", "product", "match", "field", "unit", "v1 formula", "v1 value", "v2 formula", "v2 value"]
    assert ["REPRICED", "ai_action", "*", "unit.price", "USD", "per_call", "0.002", "per_call", "0.003"] in table_rows(
        out
    )


def test_diff_of_a_credits_card_names_credits(server: ServerProcess) -> None:
    tariff(server, "ratecard", "draft", "ai-credits", "--base", "1", "--set", "gpt4_factor=3")
    versions = json.loads(tariff(server, "ratecard", "versions", "ai-credits", "--json").stdout)["versions"]
    latest = str(max(v["version"] for v in versions))
    out = tariff(server, "ratecard", "diff", "ai-credits", "1", latest).stdout
    repriced = [row for row in table_rows(out) if row and row[0] == "REPRICED"]
    assert repriced and all(row[3:5] == ["unit.price", "credits"] for row in repriced), out


def test_explain_names_the_lines_pricing_unit(server: ServerProcess) -> None:
    # ExplainedEvent: amount, unit price, draws and overage in the pricing unit of the invoice (credits); the
    # line's amount too. The one event: 1 summary at 5 credits, drawn from acme-prepaid-50k.
    preview = json.loads(tariff(server, "invoices", "preview", "acme", "--json").stdout)
    (line_id,) = [line["line_id"] for line in preview["lines"]]
    out = tariff(server, "invoices", "explain", "acme", line_id).stdout
    assert header_of(out, "transaction") == [
        "transaction",
        "time",
        "quantity",
        "version",
        "unit price (credits)",
        "amount (credits)",
        "credits drawn (credits)",
        "overage (credits)",
    ], out
    assert ["line amount (credits)", "5"] in table_rows(out), out
    # --period-start: the period is not read to find it; the unit is read from its invoice alike.
    by_start = ("invoices", "explain", "acme", line_id, "--period-start", preview["period_start"])
    assert ["line amount (credits)", "5"] in table_rows(tariff(server, *by_start).stdout)
    as_json = json.loads(tariff(server, "invoices", "explain", "acme", line_id, "--json").stdout)
    assert as_json["line_amount"] == "5"


def test_a_metrics_port_equal_to_the_listen_port_is_one_usage_line_naming_both(tmp_path: Path) -> None:
    # README "Operating": a refused start is one line, exit 2. The same port for both was refused as
    # "127.0.0.1:P is already in use", by the server's own listener, which reads as another process holding it.
    port = free_port()
    data_dir = str(tmp_path / "data")
    args = ("serve", "--listen", f"127.0.0.1:{port}", "--metrics-port", str(port), "--data-dir", data_dir)
    done = tariff("127.0.0.1:1", *args, check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "--metrics-port" in errors[0] and "--listen" in errors[0], done.stderr
    assert str(port) in errors[0] and "already in use" not in done.stderr, done.stderr
    assert not (tmp_path / "data").exists()  # refused before the data directory is made


def test_migrate_of_a_directory_a_server_holds_says_so_and_to_stop_it(server: ServerProcess) -> None:
    done = tariff(server, "migrate", "--data-dir", str(server.data_dir), check=False)
    assert done.returncode == 2, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("tariff migrate: ") and str(server.data_dir) in line, line
    assert "a Tariff server" in line and "is running on" in line and "stop it first" in line, line
    assert "another --data-dir" not in line, line  # serve's advice; migrate is of this directory
    assert done.stdout == ""


def test_a_backslash_in_a_name_prints_doubled(server: ServerProcess) -> None:
    # README "Admin CLI": texts shown as Python writes them: a backslash as `\\`, so `Back\nslash` (a backslash
    # and n) never reads as a name holding a line break (shown `Back\nslash`).
    out = tariff(server, "customers", "show", "clileft-bs").stdout
    assert ["name", "Back\\\\nslash"] in table_rows(out), out
    shown = json.loads(tariff(server, "customers", "show", "clileft-bs", "--json").stdout)
    assert shown["name"] == BACKSLASH_NAME  # --json: the text exactly


def test_a_backslash_in_a_transaction_id_prints_doubled_in_explain(server: ServerProcess) -> None:
    preview = json.loads(tariff(server, "invoices", "preview", "acme", "--json").stdout)
    (line_id,) = [line["line_id"] for line in preview["lines"]]
    rows = table_rows(tariff(server, "invoices", "explain", "acme", line_id).stdout)
    assert any(row[0] == "clileft-\\\\x1b" for row in rows), rows


def test_a_backslash_in_an_error_line_prints_doubled(server: ServerProcess) -> None:
    # The failure line is escaped alike: the server quotes the id as Python does ('a\\b'); each backslash doubled.
    done = tariff(server, "balance", "a\\b", check=False)
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith("tariff: INVALID_ARGUMENT: customer_id: 'a\\\\\\\\b' must be"), done.stderr
