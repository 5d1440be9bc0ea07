"""README "Invoices and revenue", statement by statement, over the wire: the claims with amounts and edges that the
earlier audits (test_audit_invoices*, _revenue*, _docinvoices, _periods*, _monthend) leave unpinned. Every expected
figure is worked out by hand in the test's docstring, none read back from the server.

One server for the module (`--close-grace off`: nothing closes by itself), usage dated in January and February 2026,
long over. Products `u` and `w` (SUM of `n`, pricing dimension `k`). Rate card `cr` (credits) prices both at 1 a
unit; `usd` (pricing unit USD) prices `u` at 0.123456789012 a unit; `rr` (credits, for the re-ratings) prices `u`
at 1; `jp` (pricing unit JPY) prices `u` at 0.5 a unit. Each test has customers of its own, so the module's tests do not depend on each other's order; the module's
customers bill in many currencies, so every revenue report here names its customer."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import HOUR_MS, open_contract, preview, refusal, rejected_in, serving
from tests.serverproc import ServerProcess
from tests.test_audit_invoices2_wire import give
from tests.test_audit_invoices_wire import FEB, JAN, MAR, ms, ts
from tests.test_cli import tariff

DAY_MS = 24 * HOUR_MS
YEAR_2025 = ms("2025-01-01T00:00:00")
# README "Minor units": the codes of each number of decimal places but 2, as the README lists them.
ZERO_PLACES = [
    "BIF",
    "CLP",
    "DJF",
    "GNF",
    "ISK",
    "JPY",
    "KMF",
    "KRW",
    "PYG",
    "RWF",
    "UGX",
    "UYI",
    "VND",
    "VUV",
    "XAF",
    "XOF",
    "XPF",
]
THREE_PLACES = ["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"]
FOUR_PLACES = ["CLF", "UYW"]
TWO_PLACES = ["USD", "EUR", "GBP"]


def _product(client: TariffClient, product_id: str) -> None:
    product = pricing_pb2.Product(
        id=product_id,
        name=product_id,
        event_type=product_id,
        aggregation=pricing_pb2.SUM,
        value_key="n",
        pricing_dimensions=["k"],
        unit="units",
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))


def _unit(product_id: str, price: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=price))


def _card(client: TariffClient, card: str, pricing_unit: str, rates: list[pricing_pb2.Rate]) -> None:
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, name=card, pricing_unit=pricing_unit))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates))
    _publish(client, card, 1, YEAR_2025)


def _publish(client: TariffClient, card: str, version: int, effective_ms: int) -> None:
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card, version=version, effective_from=ts(effective_ms))
    )


def _catalogue(client: TariffClient) -> None:
    _product(client, "u")
    _product(client, "w")
    _card(client, "cr", "credits", [_unit("u", "1"), _unit("w", "1")])
    _card(client, "usd", "USD", [_unit("u", "0.123456789012")])
    _card(client, "rr", "credits", [_unit("u", "1")])
    _card(client, "jp", "JPY", [_unit("u", "0.5")])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-invoicedoc") / "data", extra_args=["--close-grace", "off"])
    yield from serving(process, _catalogue)


def _customer(
    client: TariffClient, who: str, currency: str, overage_price: str, *, card: str = "cr", start_ms: int = JAN
) -> str:
    made = open_contract(
        client, who, f"{who}-c", start_ms, rate_card_id=card, currency=currency, overage_price=overage_price
    )
    return str(made.id)


def _event(who: str, tx: str, product_id: str, k: str, n: float, at_ms: int) -> usage_pb2.UsageEvent:
    event = usage_pb2.UsageEvent(
        transaction_id=tx, customer_id=who, event_type=product_id, timestamp_ms=at_ms, dimensions={"k": k}
    )
    event.values["n"] = n
    return event


def _send(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch(list(events), f"batch-{events[0].transaction_id}")
    assert ack.accepted == len(events), ack.rejected


def _close(client: TariffClient, who: str, start_ms: int = JAN) -> invoices_pb2.Invoice:
    closed: invoices_pb2.Invoice = client.invoices.ClosePeriod(
        invoices_pb2.ClosePeriodRequest(customer_id=who, period_start=ts(start_ms))
    )
    return closed


def _report(client: TariffClient, who: str, start_ms: int, end_ms: int) -> invoices_pb2.RevenueReport:
    found: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(period_start=ts(start_ms), period_end=ts(end_ms), customer_id=who)
    )
    return found


def _due(invoice: invoices_pb2.Invoice) -> tuple[object, ...]:
    return (
        invoice.minor_unit,
        tuple(line.amount_due for line in invoice.lines),
        invoice.overage_due,
        invoice.rounding_adjustment,
        invoice.top_up_purchases,
        invoice.total_due,
    )


def _in_places(minor_units: int, places: int) -> str:
    """`minor_units` of a currency with `places` decimals, written with exactly that many ("0.012", "12")."""
    if not places:
        return str(minor_units)
    return f"{minor_units // 10**places}.{minor_units % 10**places:0{places}d}"


def test_every_code_of_the_readmes_minor_unit_lists_rounds_half_even_at_its_own_places(server: ServerProcess) -> None:
    """README "Minor units" and "Amounts", for every code the README lists with 0, 3 or 4 places (and USD, EUR, GBP
    with 2). Each customer's overage price is 2.5 minor units of its currency a credit (2.5 JPY, 0.025 USD, 0.0025
    BHD, 0.00025 CLF); lines u;k=a 1 credit, u;k=b 1, u;k=c 5, all overage. Each line's amount_due half-even: 2.5 ->
    2, 2.5 -> 2, 12.5 -> 12 minor units; overage_due is the exact sum 17.5 rounded once -> 18 (to even, up this
    time); rounding_adjustment 18 - (2 + 2 + 12) = 2; no top-ups: 0; total_due 18. All written with exactly the
    currency's places: JPY "2", "18"; USD "0.02", "0.18"; BHD "0.002", "0.018"; CLF "0.0002", "0.0018"."""
    places = {code: 0 for code in ZERO_PLACES} | {code: 3 for code in THREE_PLACES}
    places |= {code: 4 for code in FOUR_PLACES} | {code: 2 for code in TWO_PLACES}
    with server.client() as client:
        drafts = {}
        for code, decimals in places.items():
            who = f"mu-{code.lower()}"
            price = "2.5" if not decimals else "0." + "0" * (decimals - 1) + "25"
            _customer(client, who, code, price)
            _send(
                client,
                *(_event(who, f"{who}-{k}", "u", k, n, JAN + DAY_MS) for k, n in (("a", 1), ("b", 1), ("c", 5))),
            )
            drafts[code] = preview(client, who, JAN)
    assert {code: _due(draft) for code, draft in drafts.items()} == {
        code: (
            decimals,
            (_in_places(2, decimals), _in_places(2, decimals), _in_places(12, decimals)),
            _in_places(18, decimals),
            _in_places(2, decimals),
            _in_places(0, decimals),
            _in_places(18, decimals),
        )
        for code, decimals in places.items()
    }
    assert {draft.currency for draft in drafts.values()} == set(places)


def test_amounts_due_keep_their_trailing_zeros_and_a_zero_place_currency_has_no_point(server: ServerProcess) -> None:
    """README "Minor units": amounts due are written with exactly the currency's places ("12.30", "1500"). USD at
    4.1 a credit, 3 credits of overage: 12.3 -> "12.30" (not "12.3"); JPY at 1 a credit, 1,500 credits: "1500" (not
    "1500.0" or "1.5E+3"), with its rounding_adjustment "0" and top_up_purchases "0"; USD's "0.00"."""
    with server.client() as client:
        _customer(client, "tz-usd", "USD", "4.1")
        _customer(client, "tz-jpy", "JPY", "1")
        _send(client, _event("tz-usd", "tz-usd-1", "u", "a", 3, JAN + DAY_MS))
        _send(client, _event("tz-jpy", "tz-jpy-1", "u", "a", 1500, JAN + DAY_MS))
        usd, jpy = preview(client, "tz-usd", JAN), preview(client, "tz-jpy", JAN)
    assert _due(usd) == (2, ("12.30",), "12.30", "0.00", "0.00", "12.30")
    assert _due(jpy) == (0, ("1500",), "1500", "0", "0", "1500")


def test_a_card_priced_in_usd_bills_its_lines_exact_at_12_places_and_rounds_only_what_is_due(
    server: ServerProcess,
) -> None:
    """README "Amounts": line amounts, subtotal and overage_amount are in the rate card's pricing unit, exact at 12
    places and never rounded, where the pricing unit is a currency too. Card `usd` prices u at 0.123456789012 USD:
    u;k=a 3 units = 0.370370367036, u;k=b 1 unit = 0.123456789012; subtotal and overage 0.493827156048 (no grant).
    Contract in USD at 1 a unit of overage: the lines owe 0.37 and 0.12 (half-even to the cent), overage_due the
    exact 0.493827156048 rounded once, 0.49; adjustment 0.49 - 0.49 = 0.00."""
    with server.client() as client:
        _customer(client, "pu", "USD", "1", card="usd")
        _send(client, _event("pu", "pu-1", "u", "a", 3, JAN + DAY_MS), _event("pu", "pu-2", "u", "b", 1, JAN + DAY_MS))
        draft = preview(client, "pu", JAN)
    assert (draft.pricing_unit, draft.currency) == ("USD", "USD")
    assert [(line.line_id, line.amount, line.overage, line.amount_due) for line in draft.lines] == [
        ("u;k=a", "0.370370367036", "0.370370367036", "0.37"),
        ("u;k=b", "0.123456789012", "0.123456789012", "0.12"),
    ]
    assert (draft.subtotal, draft.overage_amount, draft.overage_due, draft.rounding_adjustment, draft.total_due) == (
        "0.493827156048",
        "0.493827156048",
        "0.49",
        "0.00",
        "0.49",
    )


def test_a_card_priced_in_a_zero_place_currency_keeps_its_line_amounts_finer_than_that_currencys_minor_unit(
    server: ServerProcess,
) -> None:
    """README "Amounts" and "Minor units": only amounts due are rounded to the minor unit; a pricing unit is not,
    though it be a currency without minor units. Card `jp` prices u at 0.5 JPY: 3 units are a line of 1.5 JPY
    (not 2), subtotal and overage 1.5; the contract, in JPY at 1 a unit of overage, owes 1.5 -> 2 (half-even);
    revenue recognises the 1.5 from overage, at the pico."""
    with server.client() as client:
        _customer(client, "pj", "JPY", "1", card="jp")
        _send(client, _event("pj", "pj-1", "u", "a", 3, JAN + DAY_MS))
        draft = preview(client, "pj", JAN)
        report = _report(client, "pj", JAN, FEB)
    assert [(line.amount, line.overage) for line in draft.lines] == [("1.5", "1.5")]
    assert (draft.pricing_unit, draft.subtotal, draft.overage_amount) == ("JPY", "1.5", "1.5")
    assert _due(draft) == (0, ("2",), "2", "0", "0", "2")
    assert [line.recognized_overage for line in report.customer_lines] == ["1.5"]


def test_two_top_up_purchases_of_half_a_cent_are_due_as_one_cent_and_sold_at_their_exact_cost(
    server: ServerProcess,
) -> None:
    """README "Amounts": top_up_purchases sums the purchases exactly and rounds once ("two purchases of 0.005 are
    0.01, not 0.00 + 0.00"); total_due = overage_due + top_up_purchases. Policy: below 0.5 credit, buy up to 1 at
    0.005 USD a credit, at most 2 a period; overage at 0.004 USD a credit. tp-1 (1 credit) finds no credit: 1 of
    overage, then the balance (0) buys 1 credit for 0.005; tp-2 (1 credit) draws it, and the empty balance buys
    another for 0.005. Line u;k=a: amount 2, overage 1, due 0.004 -> 0.00; overage_due 0.00; top_up_purchases 0.01;
    total_due 0.01. Revenue ("Top-ups"): sold at their cost 0.005 + 0.005 = 0.01, 1 credit drawn at 0.005 a credit
    recognised 0.005, 0.004 recognised from overage (recognized = the two, 0.009: invoices.proto RevenueLine), 0.005
    deferred at the end."""
    with server.client() as client:
        contract_id = _customer(client, "tp", "USD", "0.004")
        policy = contracts_pb2.TopUpPolicy(threshold="0.5", recharge_to="1", price_per_credit="0.005", max_per_period=2)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        _send(client, _event("tp", "tp-1", "u", "a", 1, JAN + DAY_MS))
        _send(client, _event("tp", "tp-2", "u", "a", 1, JAN + 2 * DAY_MS))
        draft = preview(client, "tp", JAN)
        report = _report(client, "tp", JAN, FEB)
    assert [(line.amount, line.overage) for line in draft.lines] == [("2", "1")]
    assert _due(draft) == (2, ("0.00",), "0.00", "0.00", "0.01", "0.01")
    (line,) = report.customer_lines
    assert (line.recognized_credits, line.recognized_overage, line.recognized) == ("0.005", "0.004", "0.009")
    rec = report.reconciliation
    assert (rec.prepaid_sold, rec.recognized_credits, rec.recognized_overage, rec.deferred_end, rec.reconciles) == (
        "0.01",
        "0.005",
        "0.004",
        "0.005",
        True,
    )


def _first_of_month(at_ms: int, months_on: int = 0) -> int:
    moment = datetime.fromtimestamp(at_ms / 1000, UTC)
    index = moment.year * 12 + moment.month - 1 + months_on
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp() * 1000)


def test_a_preview_without_period_start_is_the_current_period(server: ServerProcess) -> None:
    """README "Draft = final": PreviewInvoice(customer_id) with period_start unset is the current period's draft.
    A contract from 2026-01-01 has calendar-month periods, so the current one runs from the first of this month
    (UTC) to the first of the next; a January event is not on it (its subtotal is 0), and the draft is a DRAFT with
    no number and no closed_at."""
    with server.client() as client:
        _customer(client, "cur", "USD", "1")
        _send(client, _event("cur", "cur-1", "u", "a", 3, JAN + DAY_MS))
        before = int(datetime.now(UTC).timestamp() * 1000)
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="cur"))
        after = int(datetime.now(UTC).timestamp() * 1000)
    starts = {_first_of_month(before), _first_of_month(after)}
    assert draft.period_start.ToMilliseconds() in starts
    assert draft.period_end.ToMilliseconds() == _first_of_month(draft.period_start.ToMilliseconds(), 1)
    assert (draft.status, draft.invoice_number, draft.HasField("closed_at"), draft.subtotal, list(draft.lines)) == (
        invoices_pb2.INVOICE_DRAFT,
        "",
        False,
        "0",
        [],
    )


def test_an_instant_in_both_overlapping_periods_previews_the_new_contracts(server: ServerProcess) -> None:
    """README "Draft = final": after a switch, an instant in both the old contract's last period (which keeps its
    monthly end) and the new one's first reads the new one's. sw-a runs from Jan 1 to Jan 15 12:00, sw-b from
    then (periods from the 15th at 12:00). 1 credit on Jan 2 (sw-a), 2 on Jan 20 (sw-b). Jan 2 previews sw-a's
    [Jan 1, Feb 1): 1 credit; Jan 20, inside both, previews sw-b's [Jan 15 12:00, Feb 15 12:00): 2 credits; and
    sw-a's period, named by its start, still ends on Feb 1 and holds only its 1 credit. The switch's last
    millisecond before (12:00 less 1 ms) reads sw-a's period, the switch instant itself sw-b's."""
    switch_ms = JAN + 14 * DAY_MS + 12 * HOUR_MS
    with server.client() as client:
        open_contract(client, "sw", "sw-a", JAN, switch_ms, rate_card_id="cr")
        open_contract(client, "sw", "sw-b", switch_ms, rate_card_id="cr")
        _send(
            client,
            _event("sw", "sw-1", "u", "a", 1, JAN + DAY_MS),
            _event("sw", "sw-2", "u", "a", 2, JAN + 19 * DAY_MS),
        )
        instants = (JAN + DAY_MS, JAN + 19 * DAY_MS, JAN, switch_ms - 1, switch_ms)
        read = [preview(client, "sw", at_ms) for at_ms in instants]
    assert [
        (d.contract_id, d.period_start.ToMilliseconds(), d.period_end.ToMilliseconds(), d.subtotal) for d in read
    ] == [
        ("sw-a", JAN, FEB, "1"),
        ("sw-b", switch_ms, FEB + 14 * DAY_MS + 12 * HOUR_MS, "2"),
        ("sw-a", JAN, FEB, "1"),
        ("sw-a", JAN, FEB, "1"),
        ("sw-b", switch_ms, FEB + 14 * DAY_MS + 12 * HOUR_MS, "2"),
    ]


def test_a_closed_period_previews_as_its_final_invoice(server: ServerProcess) -> None:
    """README "Draft = final": "A closed period previews as its final invoice." cl: 2 credits of overage at 1 USD;
    January closed: its preview, read at any instant of January, is the final invoice ClosePeriod answered (status
    FINAL, its number, its closed_at) and GetInvoice's, field by field; the draft read before the close differs
    from it only in invoice_number, status and closed_at."""
    with server.client() as client:
        _customer(client, "cl", "USD", "1")
        _send(client, _event("cl", "cl-1", "u", "a", 2, JAN + DAY_MS))
        draft = preview(client, "cl", JAN)
        final = _close(client, "cl")
        again = preview(client, "cl", JAN + 20 * DAY_MS)
        got = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=final.invoice_number))
    assert (again.status, again.invoice_number) == (invoices_pb2.INVOICE_FINAL, final.invoice_number)
    assert again == final == got
    stripped = invoices_pb2.Invoice()
    stripped.CopyFrom(final)
    stripped.ClearField("invoice_number")
    stripped.ClearField("closed_at")
    stripped.status = invoices_pb2.INVOICE_DRAFT
    assert stripped == draft
    assert re.fullmatch(r"INV-\d{8}", final.invoice_number)


def test_list_invoices_as_drafts_lists_nothing_and_an_undefined_status_is_refused(server: ServerProcess) -> None:
    """README "Reads": ListInvoices' status FINAL lists final invoices; DRAFT lists nothing, since drafts are not
    stored (li has a final January invoice and a running draft); a value the proto does not define (9) is
    INVALID_ARGUMENT naming `status`; page_size 1,000 is taken."""
    with server.client() as client:
        _customer(client, "li", "USD", "1")
        _send(client, _event("li", "li-1", "u", "a", 1, JAN + DAY_MS), _event("li", "li-2", "u", "a", 1, FEB + DAY_MS))
        final = _close(client, "li")

        def listed(status: int, page_size: int = 0) -> list[str]:
            request = invoices_pb2.ListInvoicesRequest(customer_id="li", status=status, page_size=page_size)  # type: ignore[arg-type]
            return [invoice.invoice_number for invoice in client.invoices.ListInvoices(request).invoices]

        assert listed(invoices_pb2.INVOICE_FINAL) == [final.invoice_number]
        assert listed(invoices_pb2.INVOICE_STATUS_UNSPECIFIED, 1000) == [final.invoice_number]
        assert listed(invoices_pb2.INVOICE_DRAFT) == []
        code, details = refusal(lambda: listed(9))
    assert (code, details.split(":")[0]) == (grpc.StatusCode.INVALID_ARGUMENT, "status")


def test_overage_revenue_is_rounded_to_the_pico_once_per_product_not_per_line(server: ServerProcess) -> None:
    """README "Recognised from overage": overage x the contract's overage price, rounded half-even to the pico
    once per customer, period and product. Overage at half a pico of USD a credit: u;k=a 1 credit and u;k=b 1
    credit are 0.5 + 0.5 = 1 pico for product u (rounded per line they would be 0 + 0); w;k=a 3 credits are 1.5
    picos -> 2. The customer line's recognized_overage is 3 picos; each invoice line owes 0.00."""
    with server.client() as client:
        _customer(client, "po", "USD", "0.0000000000005")
        _send(
            client,
            _event("po", "po-1", "u", "a", 1, JAN + DAY_MS),
            _event("po", "po-2", "u", "b", 1, JAN + DAY_MS),
            _event("po", "po-3", "w", "a", 3, JAN + DAY_MS),
        )
        draft = preview(client, "po", JAN)
        report = _report(client, "po", JAN, FEB)
    assert [line.amount_due for line in draft.lines] == ["0.00", "0.00", "0.00"]
    assert [(line.product_id, line.recognized_overage) for line in report.lines] == [
        ("u", "0.000000000001"),
        ("w", "0.000000000002"),
    ]
    assert [line.recognized_overage for line in report.customer_lines] == ["0.000000000003"]
    assert report.reconciliation.recognized_overage == "0.000000000003"  # not 2.5 picos rounded to 2


def test_deferred_revenue_is_the_paid_value_of_each_invoices_remaining_credit_rounded_cumulatively(
    server: ServerProcess,
) -> None:
    """README "Recognised from credits" and "Deferred": 1 USD paid for 3 credits (bk-g, from Jan 1, no expiry), 1
    credit drawn in January, 1 in February. January recognises 1 x 1/3 = 0.333333333333 and defers the paid value
    of the 2 credits its invoice shows remaining, 1 x 2/3 = 0.666666666667; February recognises 1 x 2/3 - 1 x 1/3,
    each rounded first: 0.666666666667 - 0.333333333333 = 0.333333333334 (not 0.333333333333 again) and defers
    0.333333333333 (its invoice: 1 remaining). Product u's lines recognise the same and leave deferred empty. Over
    [Jan, Mar): 0 + 1 sold - 0.666666666667 recognised - 0 broken = 0.333333333333 deferred, reconciling."""
    with server.client() as client:
        contract_id = _customer(client, "bk", "USD", "1")
        give(client, contract_id, "bk-g", "3", "1", starts_at=ts(JAN))
        _send(client, _event("bk", "bk-1", "u", "a", 1, JAN + DAY_MS), _event("bk", "bk-2", "u", "a", 1, FEB + DAY_MS))
        drafts = [preview(client, "bk", at_ms) for at_ms in (JAN, FEB)]
        report = _report(client, "bk", JAN, MAR)
    assert [[(b.drawn, b.remaining, b.expired) for b in d.grant_balances] for d in drafts] == [
        [("1", "2", "0")],
        [("2", "1", "0")],
    ]
    assert [(line.recognized_credits, line.deferred) for line in report.customer_lines] == [
        ("0.333333333333", "0.666666666667"),
        ("0.333333333334", "0.333333333333"),
    ]
    assert [(p.product_id, p.recognized_credits, p.deferred) for p in report.lines] == [
        ("u", "0.333333333333", ""),
        ("u", "0.333333333334", ""),
    ]
    rec = report.reconciliation
    assert (rec.prepaid_sold, rec.recognized_credits, rec.breakage, rec.deferred_end, rec.reconciles) == (
        "1",
        "0.666666666667",
        "0",
        "0.333333333333",
        True,
    )


def test_revenue_attributes_a_period_to_the_span_its_start_falls_in(server: ServerProcess) -> None:
    """README "Reconciliation": a period belongs to the span its start falls in. an's contract starts Jan 15, so
    its periods run from the 15th; overage at 1 USD: 1 credit on Jan 20 and 2 on Feb 10 (both in the period from
    Jan 15), 4 on Feb 20 (the period from Feb 15). The span [Jan 1, Feb 1) holds the Jan 15 period alone (3, ending
    Feb 15); [Feb 1, Mar 1) the Feb 15 period alone (4), not the Jan 15 period's February days."""
    jan15, feb15, mar15 = JAN + 14 * DAY_MS, FEB + 14 * DAY_MS, MAR + 14 * DAY_MS
    with server.client() as client:
        _customer(client, "an", "USD", "1", start_ms=jan15)
        _send(
            client,
            _event("an", "an-1", "u", "a", 1, JAN + 19 * DAY_MS),
            _event("an", "an-2", "u", "a", 2, FEB + 9 * DAY_MS),
            _event("an", "an-3", "u", "a", 4, FEB + 19 * DAY_MS),
        )
        spans = [_report(client, "an", JAN, FEB), _report(client, "an", FEB, MAR)]
    assert [
        [
            (line.period_start.ToMilliseconds(), line.period_end.ToMilliseconds(), line.recognized)
            for line in s.customer_lines
        ]
        for s in spans
    ] == [[(jan15, feb15, "3")], [(feb15, mar15, "4")]]


def test_a_grant_is_sold_in_the_period_holding_its_starts_at_the_boundary_instant_in_the_next(
    server: ServerProcess,
) -> None:
    """README "Deferred": a grant is sold, and enters deferred revenue, at the start of the billing period
    containing its starts_at. gs-jan (10 credits, 6 USD paid) starts Jan 20: sold in January; gs-feb (10 credits, 4
    paid) starts at Feb 1 00:00 exactly, the first instant of February's period: sold in February, not January.
    Nothing is drawn. [Jan, Feb): deferred 0 + sold 6 = 6 at the end, January's line deferred 6; [Feb, Mar): 6 at
    the start + 4 sold = 10, February's line deferred 10; both reconcile."""
    with server.client() as client:
        contract_id = _customer(client, "gs", "USD", "1")
        give(client, contract_id, "gs-jan", "10", "6", starts_at=ts(JAN + 19 * DAY_MS))
        give(client, contract_id, "gs-feb", "10", "4", starts_at=ts(FEB))
        spans = [_report(client, "gs", JAN, FEB), _report(client, "gs", FEB, MAR)]
    assert [
        (
            s.reconciliation.deferred_start,
            s.reconciliation.prepaid_sold,
            s.reconciliation.deferred_end,
            s.reconciliation.reconciles,
            [line.deferred for line in s.customer_lines],
        )
        for s in spans
    ] == [("0", "6", "6", True, ["6"]), ("6", "4", "10", True, ["10"])]


def test_a_report_over_customers_in_two_currencies_is_refused_and_one_customers_is_at_the_pico(
    server: ServerProcess,
) -> None:
    """README "Revenue": one currency per report, mixed currencies are INVALID_ARGUMENT (ask per customer); every
    amount is in the currency at 10^-12, not rounded to its minor unit. This module bills customers in USD, JPY
    and more, so the report over everyone for January is refused (naming customer_id, saying to ask per customer); mx (JPY at 2.5 a credit, 1 credit of overage)
    reports currency JPY and recognises 2.5 yen (its invoice owes 2, half-even to the yen)."""
    with server.client() as client:
        _customer(client, "mx", "JPY", "2.5")
        _customer(client, "mx-usd", "USD", "1")
        _send(client, _event("mx", "mx-1", "u", "a", 1, JAN + DAY_MS))
        code, details = refusal(
            lambda: client.invoices.GetRevenueReport(
                invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(FEB))
            )
        )
        report = _report(client, "mx", JAN, FEB)
        draft = preview(client, "mx", JAN)
    assert (code, details.split(":")[0], "ask per customer" in details) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "customer_id",
        True,
    ), details
    assert (report.currency, [line.recognized for line in report.customer_lines]) == ("JPY", ["2.5"])
    assert draft.total_due == "2"


def _rerated_customer(client: TariffClient) -> None:
    """ex-r on card rr (u at 1), a 3-credit grant; 2 units of u;k=a at Jan 1 05:00 (2 credits). Then two
    retroactive publishes: v2 (u at 3) from Jan 1 01:00 and v3 (u at 2) from Jan 1 02:00, each pricing the 05:00
    bucket again: 2 -> 6 (delta 4), then 6 -> 4 (delta -2)."""
    contract_id = _customer(client, "ex-r", "USD", "1", card="rr")
    give(client, contract_id, "ex-g", "3", "3", starts_at=ts(JAN))
    _send(client, _event("ex-r", "ex-r-1", "u", "a", 2, JAN + 5 * HOUR_MS))
    for version, price, effective_ms in ((2, "3", JAN + HOUR_MS), (3, "2", JAN + 2 * HOUR_MS)):
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="rr", based_on_version=1, upsert_rates=[_unit("u", price)]
            )
        )
        _publish(client, "rr", version, effective_ms)


@pytest.fixture(scope="module")
def rerated(server: ServerProcess) -> ServerProcess:
    """The server once ex-r (above) is made and re-rated."""
    with server.client() as client:
        _rerated_customer(client)
    return server


def test_a_bucket_re_rated_twice_lists_two_adjustments_oldest_first_that_explain_the_line(
    rerated: ServerProcess,
) -> None:
    """README "Adjustments": a bucket re-rated twice has two adjustments, oldest first (the publishes' journal seqs
    ascending), each with the old versions, the new one, quantity, events, old and new amounts and delta; they do
    not add to the line, whose amount (4) and prices (v3: 2 units for 4) already hold the re-rated bucket. Line
    u;k=a of ex-r: amount 4, credits ex-g 3, overage 1, due 1.00."""
    with rerated.client() as client:
        draft = preview(client, "ex-r", JAN)
    (line,) = draft.lines
    assert (line.amount, [(c.grant_id, c.credits) for c in line.credits_applied], line.overage, line.amount_due) == (
        "4",
        [("ex-g", "3")],
        "1",
        "1.00",
    )
    assert [(p.version, p.quantity, p.amount) for p in line.prices] == [(3, "2", "4")]
    adjustments = [
        (
            a.hour.ToMilliseconds(),
            a.rate_card_id,
            list(a.old_versions),
            a.new_version,
            a.quantity,
            a.events,
            a.old_amount,
            a.new_amount,
            a.delta,
        )
        for a in line.adjustments
    ]
    assert adjustments == [
        (JAN + 5 * HOUR_MS, "rr", [1], 2, "2", 1, "2", "6", "4"),
        (JAN + 5 * HOUR_MS, "rr", [2], 3, "2", 1, "6", "4", "-2"),
    ]
    assert line.adjustments[0].journal_seq < line.adjustments[1].journal_seq


CSV_COLUMNS = [
    "invoice_number",
    "status",
    "customer_id",
    "contract_id",
    "period_start",
    "period_end",
    "pricing_unit",
    "currency",
    "line_id",
    "product_id",
    "quantity",
    "events",
    "amount",
    "credits",
    "overage",
    "amount_due",
    "subtotal",
    "overage_due",
    "top_up_purchases",
    "rounding_adjustment",
    "total_due",
    "closed_at",
]
LINE_COLUMNS = ("line_id", "product_id", "quantity", "events", "amount", "credits", "overage", "amount_due")


def test_the_csv_export_writes_the_readmes_columns_an_empty_invoices_row_and_leaves_adjustments_to_json(
    rerated: ServerProcess,
) -> None:
    """README's CSV export: its columns in the README's order; an invoice without lines has one row, its line
    columns empty; times as `YYYY-MM-DD HH:MM:SSZ` (closed_at, the close's instant, to the millisecond, its fraction
    written when it has one); amounts
    as on the wire, `credits` the line's credits from all grants; the rows' amount_due + rounding_adjustment +
    top_up_purchases = total_due. ex-e has a contract and no usage: one row, subtotal 0, total_due 0.00. ex-r's
    re-rated line (above): one row, amount 4, credits 3, overage 1, amount_due 1.00, total_due 1.00, and no
    adjustment in the CSV; the JSON export holds both adjustments (deltas 4 and -2)."""
    server = rerated
    with server.client() as client:
        _customer(client, "ex-e", "USD", "1")
        closed_ms = _close(client, "ex-e").closed_at.ToMilliseconds()
        _close(client, "ex-r")
    rows = {
        who: list(
            csv.reader(
                io.StringIO(tariff(server, "invoices", "export", "--period", "2026-01", "--customer", who).stdout)
            )
        )
        for who in ("ex-e", "ex-r")
    }
    assert {who: found[0] for who, found in rows.items()} == {"ex-e": CSV_COLUMNS, "ex-r": CSV_COLUMNS}
    (empty,) = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows["ex-e"][1:]]
    (re_rated,) = [dict(zip(CSV_COLUMNS, row, strict=True)) for row in rows["ex-r"][1:]]
    assert [empty[column] for column in LINE_COLUMNS] == [""] * len(LINE_COLUMNS)
    assert (empty["status"], empty["period_start"], empty["period_end"], empty["subtotal"], empty["total_due"]) == (
        "INVOICE_FINAL",
        "2026-01-01 00:00:00Z",
        "2026-02-01 00:00:00Z",
        "0",
        "0.00",
    )
    closed = datetime.fromtimestamp(closed_ms / 1000, UTC)
    millis = f".{closed_ms % 1000:03d}" if closed_ms % 1000 else ""
    assert empty["closed_at"] == closed.strftime("%Y-%m-%d %H:%M:%S") + millis + "Z"
    assert [re_rated[c] for c in ("line_id", "amount", "credits", "overage", "amount_due", "total_due")] == [
        "u;k=a",
        "4",
        "3",
        "1",
        "1.00",
        "1.00",
    ]
    exported = json.loads(
        tariff(server, "invoices", "export", "--period", "2026-01", "--customer", "ex-r", "--format", "json").stdout
    )
    (invoice,) = exported["invoices"]
    assert [(a["old_amount"], a["new_amount"], a["delta"]) for a in invoice["lines"][0]["adjustments"]] == [
        ("2", "6", "4"),
        ("6", "4", "-2"),
    ]


def test_list_invoices_reads_a_page_size_over_1000_as_1000(server: ServerProcess) -> None:
    """README "Reads": ListInvoices' page_size is up to 1,000 (100 by default), and README "Why was I charged
    this?" says the paged lists read a larger one as 1,000 (where ExplainLineItem refuses it): page_size 5,000
    answers pg's one final invoice, no refusal."""
    with server.client() as client:
        _customer(client, "pg", "USD", "1")
        final = _close(client, "pg")
        listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="pg", page_size=5000))
    assert ([i.invoice_number for i in listed.invoices], listed.next_page_token) == ([final.invoice_number], "")


def test_overage_at_an_18_place_price_is_due_from_the_exact_sum(server: ServerProcess) -> None:
    """README "Amounts": a line's amount_due is its overage x overage_price rounded half-even; overage_due the exact
    sum of the unrounded amounts, rounded once. Overage price 0.333333333333333333 USD (18 places); three lines of 1
    credit: each owes 0.333333333333333333 -> 0.33; their exact sum 0.999999999999999999 -> 1.00 (0.99 had each
    line been rounded first); rounding_adjustment 1.00 - 0.99 = 0.01; total_due 1.00. Revenue recognises the
    overage per product at the pico: 0.999999999999999999 -> 1."""
    with server.client() as client:
        _customer(client, "op", "USD", "0.333333333333333333")
        _send(client, *(_event("op", f"op-{k}", "u", k, 1, JAN + DAY_MS) for k in "abc"))
        draft = preview(client, "op", JAN)
        report = _report(client, "op", JAN, FEB)
    assert draft.overage_price == "0.333333333333333333"
    assert _due(draft) == (2, ("0.33", "0.33", "0.33"), "1.00", "0.01", "0.00", "1.00")
    assert [line.recognized_overage for line in report.lines] == ["1"]


def test_two_top_ups_of_half_a_ten_thousandth_of_a_clf_are_due_as_one(server: ServerProcess) -> None:
    """README "Minor units" (CLF, 4 places) with "Amounts" (top-ups summed exactly, rounded once): below 0.5
    credit buy up to 1 at 0.00005 CLF a credit, at most 2 a period; overage at 0 CLF. Two 1-credit events each
    leave the balance empty and buy 1 credit (the first after 1 credit of overage, the second after drawing the
    first purchase): 0.00005 + 0.00005 = 0.0001 due, not 0.0000 + 0.0000; total_due 0.0001."""
    with server.client() as client:
        contract_id = _customer(client, "tc4", "CLF", "0")
        policy = contracts_pb2.TopUpPolicy(
            threshold="0.5", recharge_to="1", price_per_credit="0.00005", max_per_period=2
        )
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        _send(client, _event("tc4", "tc4-1", "u", "a", 1, JAN + DAY_MS))
        _send(client, _event("tc4", "tc4-2", "u", "a", 1, JAN + 2 * DAY_MS))
        draft = preview(client, "tc4", JAN)
    assert _due(draft) == (4, ("0.0000",), "0.0000", "0.0000", "0.0001", "0.0001")


def test_a_period_starting_off_the_second_is_exported_with_its_milliseconds(server: ServerProcess) -> None:
    """README CSV export: times are `YYYY-MM-DD HH:MM:SSZ`, with the fractional seconds when there are any. fs's
    contract starts at 2026-01-01T00:00:00.250Z, so January's period runs to 2026-02-01T00:00:00.250Z: the row
    reads period_start "2026-01-01 00:00:00.250Z" and period_end "2026-02-01 00:00:00.250Z"."""
    with server.client() as client:
        _customer(client, "fs", "USD", "1", start_ms=JAN + 250)
        final = _close(client, "fs", JAN + 250)
    assert (final.period_start.ToMilliseconds(), final.period_end.ToMilliseconds()) == (JAN + 250, FEB + 250)
    rows = list(
        csv.DictReader(
            io.StringIO(tariff(server, "invoices", "export", "--period", "2026-01", "--customer", "fs").stdout)
        )
    )
    assert [(row["period_start"], row["period_end"]) for row in rows] == [
        ("2026-01-01 00:00:00.250Z", "2026-02-01 00:00:00.250Z")
    ]


def test_a_grant_starting_before_every_contract_is_sold_in_the_customers_first_period(server: ServerProcess) -> None:
    """README "Deferred": a grant starting before every contract is sold in the customer's first period. gb's
    contract starts Feb 1; grant gb-g (5 credits, 2 USD paid) starts Jan 10: nothing is sold in a span of January
    (no period of gb starts there), and [Feb, Mar) sells the 2 on February's line (deferred 2), reconciling."""
    with server.client() as client:
        contract_id = _customer(client, "gb", "USD", "1", start_ms=FEB)
        give(client, contract_id, "gb-g", "5", "2", starts_at=ts(JAN + 9 * DAY_MS))
        january, february = _report(client, "gb", JAN, FEB), _report(client, "gb", FEB, MAR)
    assert (january.reconciliation.prepaid_sold, list(january.customer_lines)) == ("0", [])
    rec = february.reconciliation
    assert (rec.deferred_start, rec.prepaid_sold, rec.deferred_end, rec.reconciles) == ("0", "2", "2", True)
    assert [(line.period_start.ToMilliseconds(), line.deferred) for line in february.customer_lines] == [(FEB, "2")]


def test_a_grant_starting_after_its_contract_ended_inside_its_last_period_is_sold_in_that_period(
    server: ServerProcess,
) -> None:
    """README "Deferred": a grant starting at or after the last contract's ending_before but before its last
    period's monthly end is sold in that period. ge's only contract runs Jan 1 to Jan 15; grant ge-g (5 credits, 3
    USD paid) starts Jan 20: January's line (the period keeps its monthly end, Feb 1) sells it and defers 3;
    nothing is sold in February."""
    with server.client() as client:
        made = open_contract(client, "ge", "ge-c", JAN, JAN + 14 * DAY_MS, rate_card_id="cr")
        give(client, str(made.id), "ge-g", "5", "3", starts_at=ts(JAN + 19 * DAY_MS))
        report = _report(client, "ge", JAN, MAR)
    assert [
        (line.period_start.ToMilliseconds(), line.period_end.ToMilliseconds(), line.deferred)
        for line in report.customer_lines
    ] == [(JAN, FEB, "3")]
    rec = report.reconciliation
    assert (rec.prepaid_sold, rec.deferred_end, rec.reconciles) == ("3", "3", True)


def test_a_preview_at_an_instant_without_contract_names_the_ended_contracts_period_holding_it_if_any(
    server: ServerProcess,
) -> None:
    """README "Draft = final": an instant no contract is in force at is FAILED_PRECONDITION, naming the ended
    contract's period that holds it, if one does. nc-a runs Jan 1 to Jan 15 (its last period keeps its monthly end,
    Feb 1); nc-b's contract starts Feb 1. Jan 20 (nc-a ended, its period still running) is refused naming the
    period from 2026-01-01T00:00:00Z of contract nc-a-c; Feb 2 (after that period) and, for nc-b, Jan 10 (before its
    first contract) are refused naming no period."""
    with server.client() as client:
        open_contract(client, "nc-a", "nc-a-c", JAN, JAN + 14 * DAY_MS, rate_card_id="cr")
        _customer(client, "nc-b", "USD", "1", start_ms=FEB)
        refused = [
            refusal(partial(preview, client, who, at_ms))
            for who, at_ms in (("nc-a", JAN + 19 * DAY_MS), ("nc-a", FEB + DAY_MS), ("nc-b", JAN + 9 * DAY_MS))
        ]
    assert [code for code, _details in refused] == [grpc.StatusCode.FAILED_PRECONDITION] * 3
    named = "the period from 2026-01-01T00:00:00Z of contract 'nc-a-c'"
    assert [named in details for _code, details in refused] == [True, False, False], refused
    assert ["period from" in details for _code, details in refused] == [True, False, False], refused


def test_lines_and_credits_applied_run_by_the_bytes_of_their_ids_and_values(server: ServerProcess) -> None:
    """invoices.proto Invoice.lines (by product_id, then dimension values as UTF-8 bytes) and credits_applied (by
    grant_id), with README "Lines": products B, a, a10, a9 (card `ord`, 1 credit a unit), each with one unit on k =
    b, A, é, Z. Byte order, not case-folded nor numeric: B before a, a10 before a9; A (0x41) before Z (0x5A) before
    b (0x62) before é (0xC3 0xA9). Grants g9, g10, Z, a (1 credit each, made in that order) pay the first four
    events (a9's, one grant each, in the order they were made: b g9, A g10, é Z, Z a); the invoice's credits_applied
    runs Z, a, g10, g9, its grant_balances in the order the grants were made."""
    products = ("B", "a", "a10", "a9")
    with server.client() as client:
        for product_id in products:
            _product(client, product_id)
        _card(client, "ord", "credits", [_unit(product_id, "1") for product_id in products])
        contract_id = _customer(client, "by", "USD", "1", card="ord")
        for grant_id in ("g9", "g10", "Z", "a"):
            give(client, contract_id, grant_id, "1", "1", starts_at=ts(JAN))
        _send(
            client,
            *(
                _event("by", f"by-{p}-{k}", p, k, 1, JAN + DAY_MS)
                for p in ("a9", "a10", "a", "B")
                for k in ("b", "A", "é", "Z")
            ),
        )
        draft = preview(client, "by", JAN)
    values = ("A", "Z", "b", "%C3%A9")
    assert [line.line_id for line in draft.lines] == [f"{p};k={v}" for p in products for v in values]
    assert {
        line.line_id: [c.grant_id for c in line.credits_applied] for line in draft.lines if line.credits_applied
    } == {
        "a9;k=b": ["g9"],
        "a9;k=A": ["g10"],
        "a9;k=%C3%A9": ["Z"],
        "a9;k=Z": ["a"],
    }
    assert [(c.grant_id, c.credits) for c in draft.credits_applied] == [
        ("Z", "1"),
        ("a", "1"),
        ("g10", "1"),
        ("g9", "1"),
    ]
    assert [b.grant_id for b in draft.grant_balances] == ["g9", "g10", "Z", "a"]


def test_a_switch_off_the_hour_counts_the_boundary_hour_in_the_old_periods_parts_only_and_refuses_re_rating_it(
    server: ServerProcess,
) -> None:
    """README "Lines": after a switch the old contract's last period keeps its monthly end, its parts counting the
    hours before the switch; the hour holding a period boundary off the hour counts in the earlier period's parts
    only, so there the parts need not add up to the line, whose own quantity and amount are exact; a retroactive
    publish that would price such an hour again, or walk a period over one, is FAILED_PRECONDITION naming the
    customer, the product and the hour, changing nothing; one effective after that period's boundary hours
    publishes as usual. Card `so` (u at 1); so-a runs from Jan 1 to Jan 15 12:30 (overage 1 USD), so-b from then
    (overage 2 USD, periods from the 15th at 12:30). u;k=a: 2 units at 12:10 (so-a), 3 at 12:40 and 4 at 14:00
    (so-b), 1 on Feb 20 (so-b's second period). so-a: line 2 units, 2, due 2.00; parts v1 5 units for 5 (the
    12:00 bucket holds 2 + 3). so-b's first: line 7 units, 7, due 14.00; parts v1 4 for 4 (only the 14:00 hour:
    12:00 starts before its period). Version 2 (u at 2) from Jan 11 would price the 12:00 hour again, and from
    Jan 15 13:00 (after that hour) it would walk so-b's first period from its start over it to re-price the 14:00
    hour: both are refused naming customer "ps", product "u" and the hour from 2026-01-15T12:00:00Z, the invoices
    unchanged. From Feb 15 13:00, after the first period's boundary hours, it publishes: the Feb 20 unit is re-rated
    1 -> 2 (so-b's second period: line 2, due 4.00, parts v2 1 for 2, one adjustment 1 -> 2, delta 1), the other
    invoices as before."""
    switch_ms = JAN + 14 * DAY_MS + 12 * HOUR_MS + 30 * 60_000
    second_ms = FEB + 14 * DAY_MS + 12 * HOUR_MS + 30 * 60_000
    with server.client() as client:
        _card(client, "so", "credits", [_unit("u", "1")])
        open_contract(client, "ps", "so-a", JAN, switch_ms, rate_card_id="so")
        open_contract(client, "ps", "so-b", switch_ms, rate_card_id="so", overage_price="2")
        _send(
            client,
            _event("ps", "ps-1", "u", "a", 2, switch_ms - 20 * 60_000),
            _event("ps", "ps-2", "u", "a", 3, switch_ms + 10 * 60_000),
            _event("ps", "ps-3", "u", "a", 4, switch_ms + 90 * 60_000),
            _event("ps", "ps-4", "u", "a", 1, FEB + 19 * DAY_MS),
        )

        def shown() -> list[tuple[object, ...]]:
            return [
                (
                    d.contract_id,
                    [(line.quantity, line.amount, line.amount_due) for line in d.lines],
                    [(p.version, p.quantity, p.amount) for line in d.lines for p in line.prices],
                    [(a.old_amount, a.new_amount, a.delta) for line in d.lines for a in line.adjustments],
                )
                for d in (preview(client, "ps", at_ms) for at_ms in (JAN, switch_ms, second_ms))
            ]

        before = shown()
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="so", based_on_version=1, upsert_rates=[_unit("u", "2")])
        )
        refused = [
            refusal(partial(_publish, client, "so", 2, effective_ms))
            for effective_ms in (JAN + 10 * DAY_MS, JAN + 14 * DAY_MS + 13 * HOUR_MS)
        ]
        refused_then = shown()
        _publish(client, "so", 2, FEB + 14 * DAY_MS + 13 * HOUR_MS)
        after = shown()
    assert before == [
        ("so-a", [("2", "2", "2.00")], [(1, "5", "5")], []),
        ("so-b", [("7", "7", "14.00")], [(1, "4", "4")], []),
        ("so-b", [("1", "1", "2.00")], [(1, "1", "1")], []),
    ]
    hour = 'customer "ps": product "u": the hour from 2026-01-15T12:00:00Z holds a period boundary off the hour'
    assert [(code, hour in details) for code, details in refused] == [(grpc.StatusCode.FAILED_PRECONDITION, True)] * 2
    assert refused_then == before
    assert after == [*before[:2], ("so-b", [("1", "2", "4.00")], [(2, "1", "2")], [("1", "2", "1")])]


def test_zz_close_due_periods_closes_in_period_end_then_contract_order_and_list_invoices_pages_by_100(
    server: ServerProcess,
) -> None:
    """README "Closing" and "Reads" (this test runs last: it closes every ended period of the module). bl's
    contract starts 2016-01-01: every month from then to the last one before this has ended (131 periods, 2016-01
    to 2026-11, in December 2026), none closed. CloseDuePeriods closes every ended period of every customer,
    answering its invoices with the earliest period end first, then by contract id, numbered consecutively in that
    order; invoices_made counts them. Then ListInvoices of bl with page_size unset answers 100 invoices (by number),
    and the next page the rest (31 in December 2026); a January event of bl is refused PERIOD_CLOSED, and a second
    CloseDuePeriods finds nothing due: it makes none."""
    now = datetime.now(UTC)
    ended = (now.year - 2016) * 12 + now.month - 1
    last_ms = _first_of_month(_first_of_month(int(now.timestamp() * 1000)), -1)
    with server.client() as client:
        _customer(client, "bl", "USD", "1", start_ms=ms("2016-01-01T00:00:00"))
        made = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
        first = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="bl"))
        second = client.invoices.ListInvoices(
            invoices_pb2.ListInvoicesRequest(customer_id="bl", page_token=first.next_page_token)
        )
        refused = rejected_in(client, _event("bl", "bl-late", "u", "a", 1, JAN + DAY_MS))
        again = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
    shown = [(i.period_end.ToMilliseconds(), i.contract_id) for i in made.invoices]
    assert (made.invoices_made, made.next_page_token) == (len(made.invoices), "")
    assert shown == sorted(shown)
    numbers = [int(i.invoice_number.removeprefix("INV-")) for i in made.invoices]
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))
    assert sum(1 for i in made.invoices if i.customer_id == "bl") == ended
    assert (len(first.invoices), len(second.invoices), second.next_page_token) == (100, ended - 100, "")
    periods = [i.period_start.ToMilliseconds() for i in [*first.invoices, *second.invoices]]
    assert (periods == sorted(periods), periods[0], periods[-1]) == (
        True,
        ms("2016-01-01T00:00:00"),
        last_ms,
    )
    assert refused == [("bl-late", "PERIOD_CLOSED")]
    assert (again.invoices_made, list(again.invoices)) == (0, [])
