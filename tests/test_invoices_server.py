"""Invoices against a real server process: a month of usage for a few customers, previews, closing the period
(and what closing refuses), a late event for the closed period rejected with PERIOD_CLOSED, the CLI's CSV export
parsed back and matched to the invoices, and all of it the same after kill -9 and a restart."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import FailedPrecondition, InvalidArgument, TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.admin.invoices import CSV_COLUMNS
from tests.serverproc import ServerFactory, ServerProcess

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CUSTOMERS = ("alpha", "beta", "gamma")


def month_start(moment: datetime, months_back: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 - months_back
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


NOW = datetime.now(UTC)
START = month_start(NOW, 2)  # a whole month, long over
END = month_start(NOW, 1)
START_MS = int(START.timestamp() * 1000)
END_MS = int(END.timestamp() * 1000)
MIDDLE_MS = START_MS + 14 * DAY_MS  # version 2 prices gpt4 from here on
# Instants above are taken at import: conftest.py skips the module once a calendar month has turned since.
pytestmark = pytest.mark.clock_at_import


def ts(ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(ms)
    return stamp


def set_up(client: TariffClient) -> None:
    product = pricing_pb2.Product(
        id="tokens",
        name="tokens",
        event_type="llm",
        aggregation=pricing_pb2.SUM,
        value_key="tokens",
        pricing_dimensions=["model"],
        unit="tokens",
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="usd", name="USD", pricing_unit="USD"))
    for number, gpt4, effective_ms in ((1, "0.003", START_MS), (2, "0.002", MIDDLE_MS)):
        rates = [
            pricing_pb2.Rate(product_id="tokens", match={"model": "gpt4"}, unit=pricing_pb2.UnitPrice(price=gpt4)),
            pricing_pb2.Rate(
                product_id="tokens", match={"model": "claude"}, unit=pricing_pb2.UnitPrice(price="0.0015")
            ),
        ]
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="usd", based_on_version=number - 1, upsert_rates=rates)
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="usd", version=number, effective_from=ts(effective_ms))
        )
    for customer in CUSTOMERS:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer, name=customer))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=f"{customer}-c",
                customer_id=customer,
                rate_card_id="usd",
                starting_at=ts(START_MS),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="1",
                currency="USD",
            )
        )
    grant = contracts_pb2.Grant(
        id="alpha-prepaid", contract_id="alpha-c", kind=contracts_pb2.PREPAID, amount="5", paid_amount="4.5"
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def event(customer: str, tx: str, ts_ms: int, model: str, tokens: float) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=tx,
        customer_id=customer,
        event_type="llm",
        timestamp_ms=ts_ms,
        dimensions={"model": model},
        values={"tokens": tokens},
    )


def a_month_of_usage(client: TariffClient) -> None:
    for index, customer in enumerate(CUSTOMERS):
        events = [
            event(
                customer,
                f"{customer}-{day}-{n}",
                START_MS + day * DAY_MS + n * 5 * HOUR_MS + 7,
                model,
                101 + day * (index + 1) + n,
            )
            for day in range((END_MS - START_MS) // DAY_MS)
            for n, model in enumerate(("gpt4", "claude", "gpt4", "gpt4"))
        ]
        ack = client.ingest_batch(events, f"{customer}-month")
        assert ack.accepted == len(events), ack.rejected


def preview(client: TariffClient, customer: str, at_ms: int = START_MS) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id=customer, period_start=ts(at_ms))
    )
    return found


def close(client: TariffClient, customer: str, start_ms: int = START_MS) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.ClosePeriod(
        invoices_pb2.ClosePeriodRequest(customer_id=customer, period_start=ts(start_ms))
    )
    return found


def without_final_fields(invoice: invoices_pb2.Invoice) -> invoices_pb2.Invoice:
    copy = invoices_pb2.Invoice()
    copy.CopyFrom(invoice)
    copy.ClearField("invoice_number")
    copy.ClearField("status")
    copy.ClearField("closed_at")
    return copy


def export_csv(server: ServerProcess) -> list[dict[str, str]]:
    period = START.strftime("%Y-%m")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "server.cli",
            "invoices",
            "export",
            "--period",
            period,
            "--format",
            "csv",
            "--server",
            server.target,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    reader = csv.DictReader(io.StringIO(done.stdout))
    assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
    return list(reader)


def check_export_matches(server: ServerProcess, client: TariffClient, numbers: dict[str, str]) -> None:
    rows = export_csv(server)
    assert {r["invoice_number"] for r in rows} == set(numbers.values())
    for customer, number in numbers.items():
        invoice = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=number))
        mine = [r for r in rows if r["invoice_number"] == number]
        assert [r["line_id"] for r in mine] == [line.line_id for line in invoice.lines]
        for row, line in zip(mine, invoice.lines, strict=True):
            assert (row["customer_id"], row["quantity"], row["amount"], row["amount_due"]) == (
                customer,
                line.quantity,
                line.amount,
                line.amount_due,
            )
            assert Decimal(row["credits"]) + Decimal(row["overage"]) == Decimal(row["amount"])
        due = sum(Decimal(r["amount_due"]) for r in mine) + Decimal(mine[0]["rounding_adjustment"])
        assert due + Decimal(mine[0]["top_up_purchases"]) == Decimal(mine[0]["total_due"]) == Decimal(invoice.total_due)


def late_event_is_refused(client: TariffClient, tx: str) -> None:
    ack = client.ingest_batch([event("beta", tx, START_MS + 3 * DAY_MS, "gpt4", 1)], tx)
    assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"]


def test_a_month_previewed_closed_exported_and_the_same_after_kill_9(server_factory: ServerFactory) -> None:
    server = server_factory(name="invoices")
    with server.client() as client:
        set_up(client)
        a_month_of_usage(client)
        drafts = {c: preview(client, c) for c in CUSTOMERS}
        alpha = drafts["alpha"]
        assert alpha.status == invoices_pb2.INVOICE_DRAFT and not alpha.invoice_number
        assert [line.line_id for line in alpha.lines] == ["tokens;model=claude", "tokens;model=gpt4"]
        gpt4 = alpha.lines[1]
        assert [p.version for p in gpt4.prices] == [1, 2] and [p.unit_price for p in gpt4.prices] == ["0.003", "0.002"]
        assert sum(Decimal(p.amount) for p in gpt4.prices) == Decimal(gpt4.amount)
        assert [c.grant_id for c in alpha.credits_applied] == ["alpha-prepaid"] and alpha.credits_applied[
            0
        ].credits == "5"
        for draft in drafts.values():
            assert sum(Decimal(line.amount) for line in draft.lines) == Decimal(draft.subtotal)
            due = sum(Decimal(line.amount_due) for line in draft.lines) + Decimal(draft.rounding_adjustment)
            assert due == Decimal(draft.overage_due) == Decimal(draft.total_due)
        assert Decimal(drafts["beta"].total_due) == Decimal(drafts["beta"].subtotal).quantize(Decimal("0.01"))

        # What closing refuses, changing nothing.
        current = int(month_start(NOW, 0).timestamp() * 1000)
        with pytest.raises(FailedPrecondition) as not_ended:
            client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="alpha", period_start=ts(current)))
        assert "ends at" in not_ended.value.details
        with pytest.raises(InvalidArgument) as not_a_start:
            close(client, "alpha", START_MS + 2 * DAY_MS)
        assert START.strftime("%Y-%m-%dT00:00:00Z") in not_a_start.value.details

        finals = {c: close(client, c) for c in CUSTOMERS}
        numbers = {c: finals[c].invoice_number for c in CUSTOMERS}
        assert list(numbers.values()) == ["INV-00000001", "INV-00000002", "INV-00000003"]
        for customer in CUSTOMERS:
            assert finals[customer].status == invoices_pb2.INVOICE_FINAL
            assert without_final_fields(finals[customer]) == without_final_fields(drafts[customer])
        assert close(client, "alpha") == finals["alpha"]  # closing twice: the same invoice, nothing new
        listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest())
        assert [i.invoice_number for i in listed.invoices] == list(numbers.values())
        late_event_is_refused(client, "late-1")
        check_export_matches(server, client, numbers)

    server.kill9()
    server.restart()
    with server.client() as client:
        for customer in CUSTOMERS:
            again = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=numbers[customer]))
            assert again == finals[customer]
            assert preview(client, customer) == finals[customer]  # a closed period previews as its invoice
        assert close(client, "beta") == finals["beta"]
        late_event_is_refused(client, "late-2")
        check_export_matches(server, client, numbers)
        assert client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="gamma")).invoices == [
            finals["gamma"]
        ]
        later = invoices_pb2.ListInvoicesRequest(period_start_from=ts(END_MS))
        assert list(client.invoices.ListInvoices(later).invoices) == []
        drafts_only = invoices_pb2.ListInvoicesRequest(status=invoices_pb2.INVOICE_DRAFT)
        assert list(client.invoices.ListInvoices(drafts_only).invoices) == []
        paged = client.invoices.ListInvoices(
            invoices_pb2.ListInvoicesRequest(
                period_start_from=ts(START_MS), period_start_before=ts(END_MS), page_size=2
            )
        )
        assert [i.invoice_number for i in paged.invoices] == ["INV-00000001", "INV-00000002"]
        rest = client.invoices.ListInvoices(
            invoices_pb2.ListInvoicesRequest(page_size=2, page_token=paged.next_page_token)
        )
        assert [i.invoice_number for i in rest.invoices] == ["INV-00000003"] and not rest.next_page_token


def tariff_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "invoices", *args, "--server", server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_invoices_cli_previews_closes_and_lists(server_factory: ServerFactory) -> None:
    server = server_factory(name="invoices-cli")
    with server.client() as client:
        set_up(client)
        a_month_of_usage(client)
        draft = preview(client, "beta")
    month = START.strftime("%Y-%m")
    shown = tariff_cli(server, "preview", "beta", "--period", month, "--json")
    assert shown.returncode == 0, shown.stderr
    as_json = json.loads(shown.stdout)
    assert (as_json["status"], as_json["total_due"], len(as_json["lines"])) == ("INVOICE_DRAFT", draft.total_due, 2)
    assert "tokens;model=gpt4" in tariff_cli(server, "preview", "beta", "--period", month).stdout
    closed = tariff_cli(server, "close", "beta", "--period", month, "--json")
    assert closed.returncode == 0, closed.stderr
    assert [i["invoice_number"] for i in json.loads(closed.stdout)["invoices"]] == ["INV-00000001"]
    # Every ended period: alpha's and gamma's month, then everyone's next month (the current one has not ended).
    rest = tariff_cli(server, "close", "--all", "--json")
    assert [(i["customer_id"], i["invoice_number"]) for i in json.loads(rest.stdout)["invoices"]] == [
        ("alpha", "INV-00000002"),
        ("gamma", "INV-00000003"),
        ("alpha", "INV-00000004"),
        ("beta", "INV-00000005"),
        ("gamma", "INV-00000006"),
    ]
    assert json.loads(tariff_cli(server, "close", "--all", "--json").stdout) == {"invoices": []}  # nothing new
    listed = tariff_cli(server, "list", "--period", month)
    assert listed.returncode == 0 and all(f"INV-0000000{n}" in listed.stdout for n in (1, 2, 3)), listed.stdout
    betas = json.loads(tariff_cli(server, "list", "--customer", "beta", "--json").stdout)["invoices"]
    assert [i["invoice_number"] for i in betas] == ["INV-00000001", "INV-00000005"]
    bad = tariff_cli(server, "export", "--period", "2026-13")
    assert bad.returncode == 2 and "is not YYYY-MM" in bad.stderr
    not_ended = tariff_cli(server, "close", "beta", "--period", NOW.strftime("%Y-%m"))
    assert not_ended.returncode == 1 and "FAILED_PRECONDITION" in not_ended.stderr and "ends at" in not_ended.stderr
