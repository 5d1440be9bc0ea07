"""An audit of the success paths of `tariff invoices preview|close|list|export|explain`, `tariff revenue` and
`tariff watch balance` against README ("Admin CLI", "Invoices and revenue"), run as a user runs them against a
real server on a real socket. Every amount is computed by hand from the docs (exact decimals), none read back
from the server. Hostile arguments and exit codes of failures are tests/test_audit_cli.py's.

The catalogue: product `calls` (the sum of `n`, priced by `region`) at 0.123456789012 USD a call, in force from
2025. Customer `mid`: a contract anchored on 2026-01-15 (periods from the 15th), overage at 1.005 USD, a
PREPAID grant of 1 USD bought for 0.9. Customer `gap`: a contract from 2026-01-15 that ends before 2026-03-05,
then a second one from 2026-03-25. Customer `two`: contracts from 2026-05-01 (ending before 2026-05-10) and
from 2026-05-20, so two of its periods start in May. The server closes nothing by itself (`--close-grace off`).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from server.admin.invoices import CSV_COLUMNS
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_audit_invoices_wire import ms, ts
from tests.test_cli import table_rows, tariff

CARD = "usd-card"
EU, US = "calls;region=eu", "calls;region=us"


def calls(client: TariffClient, card: str, price: str) -> None:
    """Product `calls` (if new) and rate card `card` pricing it at `price` a call from 2025-01-01."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, name=card, pricing_unit="USD"))
    rate = pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price=price))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=[rate]))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=ts(ms("2025-01-01T00:00:00")))
    )


def product(client: TariffClient) -> None:
    client.pricing.CreateProduct(
        pricing_pb2.CreateProductRequest(
            product=pricing_pb2.Product(
                id="calls",
                name="calls",
                event_type="calls",
                aggregation=pricing_pb2.SUM,
                value_key="n",
                pricing_dimensions=["region"],
                unit="calls",
            )
        )
    )


def contract(
    client: TariffClient, contract_id: str, customer_id: str, start: str, *, card: str = CARD, **fields: object
) -> None:
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=contract_id,
            customer_id=customer_id,
            rate_card_id=card,
            starting_at=ts(ms(start)),
            overage_policy=contracts_pb2.ALLOW,
            currency="USD",
            **fields,  # type: ignore[arg-type]
        )
    )


def send(client: TariffClient, rows: list[tuple[str, str, str, int, str]]) -> None:
    """rows: (transaction id, customer, region, n, ISO time)."""
    events = [
        usage_pb2.UsageEvent(
            transaction_id=tx,
            customer_id=customer,
            event_type="calls",
            timestamp_ms=ms(at),
            dimensions={"region": region},
            values={"n": n},
        )
        for tx, customer, region, n, at in rows
    ]
    ack = client.ingest_batch(events, rows[0][0])
    assert ack.accepted == len(events), ack.rejected


@pytest.fixture(scope="module")
def billed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    server = ServerProcess(tmp_path_factory.mktemp("audit-cli-success") / "data")
    server.start()
    with server.client() as client:
        product(client)
        calls(client, CARD, "0.123456789012")
        for customer_id in ("mid", "gap", "two"):
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
        contract(client, "mid-c", "mid", "2026-01-15T00:00:00", overage_price="1.005")
        grant = contracts_pb2.Grant(
            id="mid-g",
            contract_id="mid-c",
            kind=contracts_pb2.PREPAID,
            amount="1",
            paid_amount="0.9",
            starts_at=ts(ms("2026-01-15T00:00:00")),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        contract(client, "gap-a", "gap", "2026-01-15T00:00:00", ending_before=ts(ms("2026-03-05T00:00:00")))
        contract(client, "gap-b", "gap", "2026-03-25T00:00:00")
        contract(client, "two-a", "two", "2026-05-01T00:00:00", ending_before=ts(ms("2026-05-10T00:00:00")))
        contract(client, "two-b", "two", "2026-05-20T00:00:00")
        send(
            client,
            [
                ("t0", "mid", "eu", 3, "2026-01-20T10:00:00.123"),
                ("t1", "mid", "eu", 7, "2026-01-21T11:00:00"),
                ("t2", "mid", "us", 2, "2026-02-01T00:00:00"),
                ("t3", "mid", "eu", 5, "2026-02-16T00:00:00"),
                ("g0", "gap", "eu", 2, "2026-03-26T00:00:00"),
                ("w0", "two", "eu", 1, "2026-05-02T00:00:00"),
                ("w1", "two", "us", 3, "2026-05-25T00:00:00"),
            ],
        )
    yield server
    server.stop()


def fields_of(output: str) -> dict[str, str]:
    """The field/value table a command prints first, as a dict."""
    return {row[0]: row[1] if len(row) > 1 else "" for row in table_rows(output)[2:] if len(row) <= 2}


def test_preview_prints_exact_amounts_and_rounds_only_what_is_due(billed: ServerProcess) -> None:
    # Jan 15 .. Feb 15: eu 10 calls = 1.23456789012 (the grant pays 1, 0.23456789012 overage), us 2 calls =
    # 0.246913578024 overage. Due at 1.005: 0.2357407295706 -> 0.24 and 0.24814814591412 -> 0.25; the exact sum
    # 0.48388887548472 rounds once to 0.48, so the adjustment is -0.01.
    shown = tariff(billed, "invoices", "preview", "mid", "--period", "2026-01").stdout
    fields = fields_of(shown)
    assert fields["period"] == "2026-01-15 00:00:00Z .. 2026-02-15 00:00:00Z"
    assert (fields["subtotal (USD)"], fields["overage (USD)"]) == ("1.481481468144", "0.481481468144")
    assert (fields["overage due (USD)"], fields["rounding adjustment (USD)"]) == ("0.48", "-0.01")
    assert (fields["top-up purchases (USD)"], fields["total due (USD)"]) == ("0.00", "0.48")
    lines = {row[0]: row for row in table_rows(shown) if row[0] in (EU, US)}
    eu_prices, us_prices = "v1: 10 x 0.123456789012 = 1.23456789012", "v1: 2 x 0.123456789012 = 0.246913578024"
    assert lines[EU][1:] == ["10", eu_prices, "1.23456789012", "mid-g 1", "0.23456789012", "0.24"]
    assert lines[US][1:] == ["2", us_prices, "0.246913578024", "0.246913578024", "0.25"]
    february = json.loads(tariff(billed, "invoices", "preview", "mid", "--period", "2026-02", "--json").stdout)
    assert (february["period_start"], february["period_end"]) == ("2026-02-15T00:00:00Z", "2026-03-15T00:00:00Z")
    assert [(x["line_id"], x["amount"], x["amount_due"]) for x in february["lines"]] == [(EU, "0.61728394506", "0.62")]
    assert (february["overage_due"], february["rounding_adjustment"], february["total_due"]) == ("0.62", "0.00", "0.62")


def test_a_period_after_a_gap_between_contracts_is_the_one_starting_in_that_month(billed: ServerProcess) -> None:
    """README: `--period YYYY-MM` is the period that starts in that month. gap-a's last period (Feb 15 .. Mar 15)
    ends in the gap before gap-b, whose first period starts on Mar 25: `--period 2026-03` used to fail with
    FAILED_PRECONDITION ("no contract ... covers 2026-03-15") in preview, close and explain alike."""
    march = json.loads(tariff(billed, "invoices", "preview", "gap", "--period", "2026-03", "--json").stdout)
    assert (march["contract_id"], march["period_start"]) == ("gap-b", "2026-03-25T00:00:00Z")
    # 2 calls, all overage at the default price 1: 0.246913578024 -> 0.25 USD.
    assert [(x["line_id"], x["amount"]) for x in march["lines"]] == [(EU, "0.246913578024")]
    assert march["total_due"] == "0.25"
    explained = json.loads(tariff(billed, "invoices", "explain", "gap", EU, "--period", "2026-03", "--json").stdout)
    assert [e["transaction_id"] for e in explained["events"]] == ["g0"]
    closed = json.loads(tariff(billed, "invoices", "close", "gap", "--period", "2026-03", "--json").stdout)
    assert [(i["period_start"], i["total_due"], i["status"]) for i in closed["invoices"]] == [
        ("2026-03-25T00:00:00Z", "0.25", "INVOICE_FINAL")
    ]


def test_period_start_names_the_second_period_starting_in_a_month(billed: ServerProcess) -> None:
    """`--period 2026-05` is two-a's period (May 1 .. Jun 1); two-b's first period (May 20 .. Jun 20) could be
    neither previewed nor closed from the command line, which had no `--period-start` for preview and close."""
    first = json.loads(tariff(billed, "invoices", "preview", "two", "--period", "2026-05", "--json").stdout)
    assert (first["contract_id"], first["period_start"], first["total_due"]) == (
        "two-a",
        "2026-05-01T00:00:00Z",
        "0.12",
    )
    second = json.loads(
        tariff(billed, "invoices", "preview", "two", "--period-start", "2026-05-20T00:00:00Z", "--json").stdout
    )
    # 3 calls = 0.370370367036, all overage at 1: 0.37 USD.
    assert (second["contract_id"], second["period_end"]) == ("two-b", "2026-06-20T00:00:00Z")
    assert [(x["line_id"], x["amount"], x["amount_due"]) for x in second["lines"]] == [(US, "0.370370367036", "0.37")]
    closed = table_rows(tariff(billed, "invoices", "close", "two", "--period-start", "2026-05-20 02:00+02:00").stdout)
    assert closed[-1][1:] == ["two", "2026-05-20 00:00:00Z", "0.37", "USD"]
    assert tariff(billed, "invoices", "list", "--customer", "two").stdout.count("2026-05-20 00:00:00Z") == 1


def test_explain_json_is_the_servers_answer_with_the_line_quantity(billed: ServerProcess) -> None:
    """README: `--json` prints the server's answer in protobuf's JSON mapping, and each ExplainLineItem answer
    carries `line_amount` and `line_quantity`; the JSON used to leave `line_quantity` out."""
    shown = json.loads(tariff(billed, "invoices", "explain", "mid", EU, "--period", "2026-01", "--json").stdout)
    assert set(shown) == {"events", "next_page_token", "line_amount", "line_quantity"}
    assert (shown["line_amount"], shown["line_quantity"], shown["next_page_token"]) == ("1.23456789012", "10", "")
    # 3 x 0.123456789012 all from the grant; 7 x it = 0.864197523084, of which the grant's last 0.629629632964.
    assert [
        (e["transaction_id"], e["timestamp_ms"], e["quantity"], e["amount"], e["draws"], e["overage"])
        for e in shown["events"]
    ] == [
        ("t0", str(ms("2026-01-20T10:00:00.123")), "3", "0.370370367036", [mid_g("0.370370367036")], "0"),
        ("t1", str(ms("2026-01-21T11:00:00")), "7", "0.864197523084", [mid_g("0.629629632964")], "0.23456789012"),
    ]
    assert sum(Decimal(e["amount"]) for e in shown["events"]) == Decimal(shown["line_amount"])


def mid_g(credits: str) -> dict[str, str]:
    return {"grant_id": "mid-g", "credits": credits}


def test_explain_pages_by_page_token_each_event_once(billed: ServerProcess) -> None:
    first = json.loads(
        tariff(billed, "invoices", "explain", "mid", EU, "--period", "2026-01", "--page-size", "1", "--json").stdout
    )
    assert [e["transaction_id"] for e in first["events"]] == ["t0"] and first["next_page_token"]
    rest = json.loads(
        tariff(
            billed, "invoices", "explain", "mid", EU, "--period-start", "2026-01-15T01:00:00+01:00", "--page-token",
            first["next_page_token"], "--json",
        ).stdout
    )  # fmt: skip
    assert ([e["transaction_id"] for e in rest["events"]], rest["next_page_token"]) == (["t1"], "")


def test_close_list_and_export_show_the_final_invoice(billed: ServerProcess) -> None:
    closed = table_rows(tariff(billed, "invoices", "close", "mid", "--period", "2026-01").stdout)
    number = closed[-1][0]
    assert closed[-1] == [number, "mid", "2026-01-15 00:00:00Z", "0.48", "USD"]
    listed = table_rows(tariff(billed, "invoices", "list", "--customer", "mid", "--period", "2026-01").stdout)
    assert listed[2:] == [[number, "mid", "2026-01-15 00:00:00Z", "2026-02-15 00:00:00Z", "0.48", "USD"]]
    exported = tariff(billed, "invoices", "export", "--period", "2026-01", "--customer", "mid").stdout
    reader = csv.DictReader(io.StringIO(exported))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    line_columns = ("line_id", "quantity", "events", "amount", "credits", "overage", "amount_due")
    rows = [{k: row[k] for k in line_columns} for row in reader]
    assert rows == [
        {
            "line_id": EU,
            "quantity": "10",
            "events": "2",
            "amount": "1.23456789012",
            "credits": "1",
            "overage": "0.23456789012",
            "amount_due": "0.24",
        },
        {
            "line_id": US,
            "quantity": "2",
            "events": "1",
            "amount": "0.246913578024",
            "credits": "0",
            "overage": "0.246913578024",
            "amount_due": "0.25",
        },
    ]
    head = next(csv.DictReader(io.StringIO(exported)))
    assert (head["invoice_number"], head["status"], head["period_start"], head["period_end"]) == (
        number,
        "INVOICE_FINAL",
        "2026-01-15 00:00:00Z",
        "2026-02-15 00:00:00Z",
    )
    assert (head["overage_due"], head["rounding_adjustment"], head["top_up_purchases"], head["total_due"]) == (
        "0.48",
        "-0.01",
        "0.00",
        "0.48",
    )


def test_revenue_recognises_credits_at_cost_and_overage_to_the_pico(billed: ServerProcess) -> None:
    # Jan 15 period: the grant's 1 USD of credit drawn whole at 0.9 paid; overage 0.481481468144 x 1.005 =
    # 0.48388887548472 -> 0.483888875485. Feb 15 period: 0.61728394506 x 1.005 = 0.6203703647853 -> 0.620370364785.
    report = json.loads(
        tariff(billed, "revenue", "--from", "2026-01", "--to", "2026-02", "--customer", "mid", "--json").stdout
    )
    assert report["currency"] == "USD"
    assert [
        (x["period_start"], x["customer_id"], x["recognized_credits"], x["recognized_overage"], x["deferred"])
        for x in report["customer_lines"]
    ] == [
        ("2026-01-15T00:00:00Z", "mid", "0.9", "0.483888875485", "0"),
        ("2026-02-15T00:00:00Z", "mid", "0", "0.620370364785", "0"),
    ]
    assert [(x["product_id"], x["recognized"]) for x in report["lines"]] == [
        ("calls", "1.383888875485"),
        ("calls", "0.620370364785"),
    ]
    r = report["reconciliation"]
    assert (r["deferred_start"], r["prepaid_sold"], r["recognized_credits"], r["deferred_end"]) == (
        "0",
        "0.9",
        "0.9",
        "0",
    )
    assert (r["recognized_overage"], r["recognized"], r["reconciles"]) == ("1.10425924027", "2.00425924027", True)
    one_month = tariff(billed, "revenue", "--from", "2026-02", "--customer", "mid").stdout
    by_customer = [row for row in table_rows(one_month) if row[0].startswith("2026-")]
    assert by_customer == [
        ["2026-02-15 00:00:00Z", "calls", "0.620370364785", "0", "0.620370364785", "0"],
        ["2026-02-15 00:00:00Z", "mid", "0.620370364785", "0", "0.620370364785", "0", "0"],
    ]
    assert fields_of(one_month.split("reconciliation", 1)[1])["reconciles"] == "yes"


def test_watch_balance_prints_the_balance_exactly(billed: ServerProcess) -> None:
    line = tariff(billed, "watch", "balance", "mid", "--count", "1").stdout
    assert line.startswith("seq ") and "  remaining 0 USD  held 0  available 0  " in line, line
    balance = json.loads(tariff(billed, "watch", "balance", "mid", "--count", "1", "--json").stdout)
    assert [(g["grant_id"], g["drawn"], g["remaining"]) for g in balance["grants"]] == [("mid-g", "1", "0")]


def test_a_rerated_line_shows_its_events_and_adjustments_apart_to_the_millisecond(
    server_factory: ServerFactory,
) -> None:
    """The explain table's times are the wire's milliseconds (it printed microseconds, `.123000Z`), and its
    summary counts the line's events apart from its re-rating adjustments (it counted both as events)."""
    server = server_factory(name="rerated")
    with server.client() as client:
        product(client)
        calls(client, "rerate-card", "1")
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rr", name="rr"))
        contract(client, "rr-c", "rr", "2026-06-01T00:00:00", card="rerate-card")
        send(client, [("r0", "rr", "eu", 2, "2026-06-10T08:30:00.045")])
        raised = pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="1.5"))
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="rerate-card", based_on_version=1, upsert_rates=[raised])
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="rerate-card", version=2, effective_from=ts(ms("2026-06-01T00:00:00"))
            )
        )
    shown = tariff(server, "invoices", "explain", "rr", EU, "--period", "2026-06").stdout
    rows = table_rows(shown)
    event = next(row for row in rows if row[0] == "r0")
    assert event[1:6] == ["2026-06-10 08:30:00.045Z", "2", "1", "1", "2"]
    adjustment = next(row for row in rows if row[0].startswith("re-rated"))
    # The bucket of 08:00 priced again at 1.5: 2 calls, 2 -> 3, delta 1.
    assert re.fullmatch(r"re-rated #\d+ v1->v2", adjustment[0]), adjustment
    assert adjustment[1:5] == ["2026-06-10 08:00:00.000Z", "0", "2", "1"]
    totals = dict(row for row in rows if len(row) == 2)
    assert (totals["events"], totals["re-rating adjustments"], totals["line amount (USD)"]) == ("1", "1", "3")


def test_every_page_of_explain_and_of_invoices_list_once(server_factory: ServerFactory) -> None:
    """explain reads pages of 1,000 events and `invoices list` pages of 100 invoices: past both, every event and
    every invoice shows exactly once. Customer `old` has a contract from 2015-01, so `close --all` finalises one
    period a month from then to the last month that has ended."""
    server = server_factory(name="paging")
    with server.client() as client:
        product(client)
        calls(client, CARD, "0.123456789012")
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="old", name="old"))
        contract(client, "old-c", "old", "2015-01-01T00:00:00")
        send(
            client,
            [(f"o{i}", "old", "eu", 1, f"2026-01-01T00:00:{i // 1000:02d}.{i % 1000:03d}") for i in range(2_345)],
        )
    explained = json.loads(tariff(server, "invoices", "explain", "old", EU, "--period", "2026-01", "--json").stdout)
    assert sorted(e["transaction_id"] for e in explained["events"]) == sorted(f"o{i}" for i in range(2_345))
    # 2,345 x 0.123456789012
    assert (explained["line_quantity"], explained["line_amount"], explained["next_page_token"]) == (
        "2345",
        "289.50617023314",
        "",
    )
    assert sum(Decimal(e["amount"]) for e in explained["events"]) == Decimal("289.50617023314")
    now = datetime.now(UTC)
    closed = json.loads(tariff(server, "invoices", "close", "--all", "--json").stdout)
    months = (now.year - 2015) * 12 + now.month - 1
    assert len(closed["invoices"]) == months > 100
    listed = json.loads(tariff(server, "invoices", "list", "--customer", "old", "--json").stdout)["invoices"]
    assert [i["invoice_number"] for i in listed] == [f"INV-{n:08d}" for n in range(1, months + 1)]
    assert [i["period_start"][:7] for i in listed] == [f"{2015 + m // 12}-{m % 12 + 1:02d}" for m in range(months)]
