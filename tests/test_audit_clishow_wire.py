"""An audit of what the CLI's tables show of texts the server never checked (README "Admin CLI"): a usage event's
transaction id reaches ExplainLineItem and `tariff usage send`'s rejections as sent, and may hold ESC sequences, a
right-to-left override and CR/LF. The tables show each such character escaped as Python writes it (`\\x1b`,
`\\u202e`, `\\r`, `\\n`), so a row stays one line, drives no terminal and reads in its order; an ordinary
non-ASCII letter (the `ø` below) shows as it is; `--json` carries the texts exactly, the event's dimension value
too (the invoice line's id, which the table shows, is percent-escaped by the server). Run as a user runs it,
against a real server on a real socket.

The catalogue: product `calls` (the sum of `n`, priced by `region`) at 0.5 USD a call from 2025, customer `c`
with a contract from 2026-01-01 (periods from the 1st, overage allowed at 1), and one event of 3 calls in January
whose region and transaction id hold the hostile characters: 3 x 0.5 = 1.5 USD, all overage, 1.50 due.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, usage_pb2

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess
from tests.test_audit_cli_success_wire import calls, contract, product
from tests.test_audit_invoices_wire import ms
from tests.test_cli import tariff

REGION = "\x1b[31mrød\u202e\r\nx"  # a colour escape, a non-ASCII letter, a right-to-left override, CR/LF
# The invoice line's id: the server percent-escapes every character outside printable ASCII (proto InvoiceLine).
LINE_ID = "calls;region=%1B[31mr%C3%B8d%E2%80%AE%0D%0Ax"
TRANSACTION = "t-\x1b[31mø\u202e\u2066\r\n1"  # a colour escape, ø, an override, an isolate, CR/LF
TRANSACTION_SHOWN = "t-\\x1b[31mø\\u202e\\u2066\\r\\n1"
RAW = ("\x1b", "\u202e", "\u2066", "\r")  # none is ever printed by the tables; LF only ends their lines


def catalogue(client: TariffClient) -> None:
    product(client)
    calls(client, "usd-card", "0.5")
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="c", name="c"))
    contract(client, "c-1", "c", "2026-01-01T00:00:00")
    event = usage_pb2.UsageEvent(
        transaction_id=TRANSACTION,
        customer_id="c",
        event_type="calls",
        timestamp_ms=ms("2026-01-10T00:00:00"),
        dimensions={"region": REGION},
        values={"n": 3},
    )
    ack = client.ingest_batch([event], "b-1")
    assert ack.accepted == 1, ack.rejected


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serving(ServerProcess(tmp_path_factory.mktemp("audit-clishow") / "data"), catalogue)


def line_holding(output: str, text: str) -> str:
    """The one printed line holding `text`."""
    found = [line for line in output.splitlines() if text in line]
    assert len(found) == 1, output
    return found[0]


def assert_no_raw_character(output: str) -> None:
    for char in RAW:
        assert char not in output, f"U+{ord(char):04X} printed as it is:\n{output!r}"


def test_explain_shows_the_transaction_id_escaped_on_one_line(server: ServerProcess) -> None:
    shown = tariff(server, "invoices", "explain", "c", LINE_ID, "--period", "2026-01").stdout
    assert_no_raw_character(shown)
    assert line_holding(shown, LINE_ID).strip() == LINE_ID  # the table's title, as the server escaped it
    row = line_holding(shown, TRANSACTION_SHOWN)
    assert row.split() == [TRANSACTION_SHOWN, "2026-01-10", "00:00:00.000Z", "3", "1", "0.5", "1.5", "1.5"]


def test_the_json_output_carries_the_texts_exactly(server: ServerProcess) -> None:
    preview = json.loads(tariff(server, "invoices", "preview", "c", "--period", "2026-01", "--json").stdout)
    assert [(line["line_id"], line["dimensions"], line["amount_due"]) for line in preview["lines"]] == [
        (LINE_ID, {"region": REGION}, "1.50")
    ]
    explained = json.loads(tariff(server, "invoices", "explain", "c", LINE_ID, "--period", "2026-01", "--json").stdout)
    assert [event["transaction_id"] for event in explained["events"]] == [TRANSACTION]


def test_usage_send_shows_a_rejected_transaction_id_escaped_and_its_json_exactly(server: ServerProcess) -> None:
    event = {"transaction_id": TRANSACTION, "customer_id": "nobody", "event_type": "calls", "timestamp_ms": 1}
    line = json.dumps(event) + "\n"
    shown = tariff(server, "usage", "send", "--no-progress", stdin=line, check=False)
    assert shown.returncode == 1, shown.stderr
    assert_no_raw_character(shown.stdout)
    assert line_holding(shown.stdout, TRANSACTION_SHOWN).split()[:3] == ["UNKNOWN_CUSTOMER", "1", TRANSACTION_SHOWN]
    as_json = tariff(server, "usage", "send", "--no-progress", "--json", stdin=line, check=False)
    assert [example["transaction_id"] for example in json.loads(as_json.stdout)["rejections"]] == [TRANSACTION]


# A name the intake takes (brackets and colons are ordinary characters) that rich would read as markup and emoji
# codes: shown as rich's markup it would print "Acme" in red and a smiling face, and its stray closing tag made the
# command fail with a traceback.
MARKUP_NAME = "[red]Acme[/red] :smile: [/x] [link=http://e]"


@pytest.mark.parametrize("rows", [1, 250])  # rich's own layout, and the line-by-line path of long tables
def test_a_name_rich_would_read_as_markup_is_shown_as_it_is(server: ServerProcess, rows: int) -> None:
    with server.client() as client:
        for n in range(rows):
            customer_id = f"markup-{rows}-{n:03}"
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=MARKUP_NAME))
    shown = tariff(server, "customers", "list")
    assert shown.returncode == 0, shown.stderr
    named = [line.split(None, 1) for line in shown.stdout.splitlines() if line.startswith(f"markup-{rows}-")]
    assert len(named) == rows, shown.stdout
    assert {rest.strip().startswith(MARKUP_NAME) for _, rest in named} == {True}, shown.stdout
