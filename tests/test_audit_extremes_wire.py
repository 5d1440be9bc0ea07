"""An acceptance audit of money where amounts are summed, at the documented per-value limits, over the wire against a
real server driven only as proto/tariff/v1/*.proto, README and docs/architecture.md describe it. The earlier audits
pin single values at their limits (test_audit_boundaries_wire.py, test_audit_decimals_wire.py,
test_audit_units_wire.py); this file pins totals:

- docs/architecture.md §6: the kernel keeps a period's charges in 128-bit picos, and an event whose charge would pass
  them is INVALID_EVENT, nothing of it counted; what was counted is answered exactly by GetBalance and the invoice.
- README "Minor units", §6 "Overage due": overage at the largest overage price is printed exactly at 10^-30 on the
  balance (44 integer digits), rounded half-even once to the cent on the invoice; GetRevenueReport's customer lines
  recognise it exactly at the pico.
- pricing.proto PublishVersionResponse: `rerated_amount_delta` and `closed_amount_left_alone` are the sums over
  every customer and period re-rated or left alone, exact, also past 2^64 picos (about 18.4 million units), the
  width of a journal record's integers, and past 2^127 picos (the kernel's width for one period's charges):
  the server goes on serving, and a restart (kill -9, replay) gives the same balances.
- balance.proto / alerts.proto: two grants of the largest amount (999,999,999,999,999,999.999999999999) sum
  past 10^18 in credits_available, exactly; a SPEND_THRESHOLD at the largest threshold fires on such charges with
  its details exact, WatchBalance shows the same sums, and both survive kill -9 and a restart.
- pricing.proto SimulatedAmount/SimulatedTotals: a customer's current and simulated amounts over a window of two
  periods, each period near the 128-bit limit, are their exact sum.

Every amount is computed by hand (the arithmetic is in the docstrings). One server for the module
(`--close-grace off`, so no period closes by itself); each test has its own rate card and customers.

Product `units` (event type `work`, SUM of `n`). BIG = 999,999,999,999,999 units (below the 10^15 limit on a value)
at 100,000,000,000 a unit (10^11) is 99,999,999,999,999,900,000,000,000 = 9.99999999999999 x 10^25 units of the
pricing unit, 9.99999999999999 x 10^37 picos: one such charge fits in a period's 128 bits (at most
(2^127 - 1) picos = 170,141,183,460,469,231,731,687,303.715884105727 units), two do not."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from server.records import JournalRecord, RerationDone, decode_record, encode_record
from tests.audit_fixtures import HOUR_MS, open_contract, preview, rejected_in, serving, unit
from tests.serverproc import ServerProcess
from tests.test_cli import tariff

BIG = 999_999_999_999_999
BIG_PRICE = "100000000000"
BIG_CHARGE = "99999999999999900000000000"  # BIG x 10^11
TWO_BIG_CHARGES = "199999999999999800000000000"
TOP_OVERAGE_PRICE = "999999999999999999.999999999999999999"  # the largest decimal below 10^18, 18 places


def month_start(year: int, month: int) -> int:
    year, month = year + (month - 1) // 12, (month - 1) % 12 + 1
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def this_month_ms() -> int:
    today = datetime.fromtimestamp(now_ms() / 1000, UTC)
    return month_start(today.year, today.month)


def last_month_ms() -> int:
    today = datetime.fromtimestamp(now_ms() / 1000, UTC)
    return month_start(today.year, today.month - 1)


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))


def card(client: TariffClient, rate_card_id: str, pricing_unit: str, price: str) -> None:
    """A rate card pricing `units` at `price`, version 1 in force from 2024-01-01, and a draft version 2 at 0."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=rate_card_id, pricing_unit=pricing_unit))
    draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id=rate_card_id, upsert_rates=[unit("units", price)])
    client.pricing.CreateDraftVersion(draft)
    published = pricing_pb2.PublishVersionRequest(
        rate_card_id=rate_card_id, version=1, effective_from=stamp(month_start(2024, 1))
    )
    client.pricing.PublishVersion(published)
    free = pricing_pb2.CreateDraftVersionRequest(rate_card_id=rate_card_id, upsert_rates=[unit("units", "0")])
    client.pricing.CreateDraftVersion(free)


def work(transaction_id: str, customer_id: str, at_ms: int, n: float, event_type: str = "work") -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        values={"n": n},
    )


def balance(client: TariffClient, customer_id: str) -> tuple[str, str, str]:
    """GetBalance's (period_charges, overage_amount, overage_due)."""
    answer = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=customer_id))
    return answer.period_charges, answer.overage_amount, answer.overage_due


def publish_free(client: TariffClient, rate_card_id: str, from_ms: int) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.PublishVersionRequest(rate_card_id=rate_card_id, version=2, effective_from=stamp(from_ms))
    answer: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
    return answer


def explained(
    client: TariffClient, customer_id: str, period_start_ms: int
) -> tuple[str, list[tuple[str, str, str, str, str]]]:
    """ExplainLineItem of line `units`: (line_amount, [(transaction id, quantity, unit price, amount, overage)])."""
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=customer_id, period_start=stamp(period_start_ms), line_id="units"
    )
    answer = client.invoices.ExplainLineItem(request)
    events = [(e.transaction_id, e.quantity, e.unit_price, e.amount, e.overage) for e in answer.events]
    return answer.line_amount, events


def authorizing(customer_id: str, n: float) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(request_id="auth", customer_id=customer_id, event_type="work", values={"n": n})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-extremes")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def test_a_period_total_past_128_bits_refuses_the_event_and_sums_print_exactly(server: ServerProcess) -> None:
    """§6: customer `sum-a` (USD card, overage 1 USD) sends BIG twice this period: the first is charged
    99,999,999,999,999,900,000,000,000 USD, the second would take the period's charges to twice that, past 2^127
    picos: INVALID_EVENT, nothing of it counted. Customer `sum-x` (credits card, overage at 999...9.999...9, 18
    nines each side) is charged BIG_CHARGE credits, all overage: due 99999999999999900000000000 x
    999999999999999999.999999999999999999 = 99999999999999899999999999999999999900000000.0000001 exactly on the
    balance, 99999999999999899999999999999999999900000000.00 on the invoice (half-even to the cent); the revenue
    report's customer lines recognise each customer's overage due exactly at the pico. After kill -9 and a restart
    the balances are the same, another BIG is refused again and one unit (10^11) is still charged:
    BIG_CHARGE + 10^11 = 10^26."""
    now = now_ms()
    with server.client() as client:
        card(client, "sum-usd", "USD", BIG_PRICE)
        card(client, "sum-cr", "credits", BIG_PRICE)
        open_contract(client, "sum-a", "sum-a-k", month_start(2025, 1), rate_card_id="sum-usd")
        open_contract(
            client, "sum-x", "sum-x-k", month_start(2025, 1), rate_card_id="sum-cr", overage_price=TOP_OVERAGE_PRICE
        )
        assert rejected_in(client, work("a1", "sum-a", now - 2000, BIG), work("a2", "sum-a", now - 1000, BIG)) == [
            ("a2", "INVALID_EVENT")
        ]
        assert rejected_in(client, work("x1", "sum-x", now - 2000, BIG)) == []
        assert balance(client, "sum-a") == (BIG_CHARGE, BIG_CHARGE, BIG_CHARGE)
        with pytest.raises(TariffError) as refused:
            client.balance.Authorize(authorizing("sum-a", BIG))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [(v.field, v.description) for v in refused.value.field_violations] == [
            ("request", "the charge for product 'units' is out of range")
        ]
        one = client.balance.Authorize(authorizing("sum-a", 1))
        assert (one.allowed, one.reason, one.estimated_cost) == (True, "OVERAGE_ALLOWED", BIG_PRICE)
        assert balance(client, "sum-a") == (BIG_CHARGE, BIG_CHARGE, BIG_CHARGE)
        x_due = "99999999999999899999999999999999999900000000.0000001"
        assert balance(client, "sum-x") == (BIG_CHARGE, BIG_CHARGE, x_due)
        invoice = preview(client, "sum-x", this_month_ms())
        cents = "99999999999999899999999999999999999900000000.00"
        assert (invoice.subtotal, invoice.overage_due, invoice.total_due) == (BIG_CHARGE, cents, cents)
        assert [(line.amount, line.amount_due) for line in invoice.lines] == [(BIG_CHARGE, cents)]
        parts = [(p.version, p.unit_price, p.quantity, p.amount, p.events) for p in invoice.lines[0].prices]
        assert parts == [(1, BIG_PRICE, str(BIG), BIG_CHARGE, 1)]
        assert explained(client, "sum-x", this_month_ms()) == (
            BIG_CHARGE,
            [("x1", str(BIG), BIG_PRICE, BIG_CHARGE, BIG_CHARGE)],
        )
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(this_month_ms()), period_end=stamp(now // HOUR_MS * HOUR_MS + HOUR_MS)
            )
        )
        mine = [c for c in report.customer_lines if c.customer_id in ("sum-a", "sum-x")]
        assert sorted((c.customer_id, c.recognized_overage) for c in mine) == [
            ("sum-a", BIG_CHARGE),
            ("sum-x", x_due),
        ]
    server.kill9()
    server.restart()
    with server.client() as client:
        assert (balance(client, "sum-a"), balance(client, "sum-x")) == (
            (BIG_CHARGE, BIG_CHARGE, BIG_CHARGE),
            (BIG_CHARGE, BIG_CHARGE, x_due),
        )
        assert rejected_in(client, work("a3", "sum-a", now_ms(), BIG), work("a4", "sum-a", now_ms(), 1)) == [
            ("a3", "INVALID_EVENT")
        ]
        more = "100000000000000000000000000"  # BIG_CHARGE + 10^11 = (999,999,999,999,999 + 1) x 10^11
        assert balance(client, "sum-a") == (more, more, more)


def test_a_publish_re_rating_past_64_bit_picos_answers_exactly_and_the_server_goes_on(server: ServerProcess) -> None:
    """pricing.proto PublishVersionResponse: customer `r64-a` (USD card at 1 USD a unit) is charged 20,000,000 USD
    this month (2 x 10^19 picos, past 2^64 = 1.8446744073709551616 x 10^19) and 30,000,000 USD last month, whose
    period `ClosePeriod` closes. Publishing version 2 (price 0) from last month's start re-rates this month's
    usage: rerated_amount_delta "-20000000"; last month's is left alone, closed_amount_left_alone "30000000".
    The balance shows 0 charged, and so it does after kill -9 and a restart; the server goes on taking usage."""
    now, last_month = now_ms(), last_month_ms()
    with server.client() as client:
        card(client, "r64", "USD", "1")
        open_contract(client, "r64-a", "r64-a-k", month_start(2025, 1), rate_card_id="r64")
        events = work("r1", "r64-a", now - 1000, 20_000_000), work("r0", "r64-a", last_month + HOUR_MS, 30_000_000)
        assert rejected_in(client, *events) == []
        client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="r64-a", period_start=stamp(last_month))
        )
        published = publish_free(client, "r64", last_month)
        assert (published.rerated_amount_delta, published.closed_amount_left_alone) == ("-20000000", "30000000")
        assert (published.customers_rerated, published.closed_events_left_alone) == (1, 1)
        assert balance(client, "r64-a") == ("0", "0", "0")
    server.kill9()
    server.restart()
    with server.client() as client:
        assert balance(client, "r64-a") == ("0", "0", "0")
        assert rejected_in(client, work("r2", "r64-a", now_ms(), 5)) == []
        assert balance(client, "r64-a") == ("0", "0", "0")


def test_a_publish_re_rating_two_customers_past_128_bits_answers_their_exact_sum(server: ServerProcess) -> None:
    """Customers `r128-a` and `r128-b` are each charged BIG_CHARGE USD this month (each fits 128 bits of picos);
    version 2 (price 0) from this month's start gives back both: rerated_amount_delta = -2 x BIG_CHARGE =
    -199999999999999800000000000 USD (-1.999999999999998 x 10^38 picos, past -2^127), never a wrapped value.
    After kill -9 and a restart both balances are still 0."""
    now = now_ms()
    with server.client() as client:
        card(client, "r128", "USD", BIG_PRICE)
        for customer in ("r128-a", "r128-b"):
            open_contract(client, customer, f"{customer}-k", month_start(2025, 1), rate_card_id="r128")
            assert rejected_in(client, work(f"{customer}-1", customer, now - 1000, BIG)) == []
        published = publish_free(client, "r128", this_month_ms())
        assert (published.rerated_amount_delta, published.customers_rerated) == (f"-{TWO_BIG_CHARGES}", 2)
    server.kill9()
    server.restart()
    with server.client() as client:
        assert [balance(client, c) for c in ("r128-a", "r128-b")] == [("0", "0", "0")] * 2


def test_simulating_a_window_of_two_periods_past_128_bits_sums_them_exactly(server: ServerProcess) -> None:
    """pricing.proto SimulatedAmount: customer `sim-a` is charged BIG_CHARGE USD last month and again this month
    (each period within its 128 bits). SimulateVersion of the draft version 2 (price 0) over [last month's start,
    the next hour): current_amount 2 x BIG_CHARGE = 199999999999999800000000000, simulated 0, delta
    -199999999999999800000000000, and the totals alike; nothing changes (the balance still shows BIG_CHARGE)."""
    now, last_month = now_ms(), last_month_ms()
    with server.client() as client:
        card(client, "sim", "USD", BIG_PRICE)
        open_contract(client, "sim-a", "sim-a-k", month_start(2025, 1), rate_card_id="sim")
        assert (
            rejected_in(client, work("s0", "sim-a", last_month + HOUR_MS, BIG), work("s1", "sim-a", now - 1000, BIG))
            == []
        )
        simulated = client.pricing.SimulateVersion(
            pricing_pb2.SimulateVersionRequest(
                rate_card_id="sim",
                version=2,
                period_start=stamp(last_month),
                period_end=stamp(now // HOUR_MS * HOUR_MS + HOUR_MS),
            )
        )
        assert [(a.customer_id, a.current_amount, a.simulated_amount, a.delta) for a in simulated.amounts] == [
            ("sim-a", TWO_BIG_CHARGES, "0", f"-{TWO_BIG_CHARGES}")
        ]
        totals = simulated.totals
        assert (totals.current_amount, totals.simulated_amount, totals.delta) == (
            TWO_BIG_CHARGES,
            "0",
            f"-{TWO_BIG_CHARGES}",
        )
        assert balance(client, "sim-a")[0] == BIG_CHARGE


def test_a_completion_record_holds_amounts_past_msgpacks_integers_as_text() -> None:
    """server/records.py: a re-rating's amounts outside msgpack's integers travel as decimal text, and read back as
    the same integers; amounts inside them are written as before (no `amounts`)."""
    small = RerationDone.of(7, 1, (1, 2, 3, -(2**63), 4, 5, 2**64 - 1))
    assert small.amounts is None and decode_record(encode_record(JournalRecord(rerated=small))).rerated == small
    big = RerationDone.of(7, 1, (1, 2, 3, -(2**63) - 1, 4, 5, 2**130))
    assert big.done == (1, 2, 3, 0, 4, 5, 0)
    read = decode_record(encode_record(JournalRecord(rerated=big))).rerated
    assert read is not None and read.totals == (1, 2, 3, -(2**63) - 1, 4, 5, 2**130)


def test_grants_charges_and_a_spend_alert_at_their_largest_sum_exactly_and_survive_a_restart(
    server: ServerProcess,
) -> None:
    """Customer `al-a` (USD card at 10^11 a unit) holds two promotional grants of G = 999999999999999999.999999999999
    USD (the largest amount exact at 12 places below 10^18): credits_available 2G = 1999999999999999999.999999999998.
    A SPEND_THRESHOLD rule at G. BIG units are charged BIG_CHARGE: the grants pay 2G, the overage is BIG_CHARGE - 2G
    = 99999997999999900000000000.000000000002 (due at 1 USD the same), and the rule fires with
    period_charges BIG_CHARGE and threshold G. WatchBalance's first balance shows the same; after kill -9 and a
    restart the balance and the alert (replayed) are the same."""
    g, two_g = "999999999999999999.999999999999", "1999999999999999999.999999999998"
    overage = "99999997999999900000000000.000000000002"
    now = now_ms()
    with server.client() as client:
        card(client, "al", "USD", BIG_PRICE)
        open_contract(client, "al-a", "al-a-k", month_start(2025, 1), rate_card_id="al")
        for grant_id in ("g1", "g2"):
            grant = contracts_pb2.Grant(
                id=grant_id, customer_id="al-a", kind=contracts_pb2.PROMOTIONAL, amount=g, paid_amount="0"
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        answer = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="al-a"))
        assert (answer.credits_remaining, answer.credits_available) == (two_g, two_g)
        rule = alerts_pb2.CreateAlertRequest(customer_id="al-a", type=alerts_pb2.SPEND_THRESHOLD, threshold=g)
        rule_id = client.alerts.CreateAlert(rule).id
        assert rejected_in(client, work("al-1", "al-a", now - 1000, BIG)) == []
        expected = (BIG_CHARGE, overage, overage)
        assert balance(client, "al-a") == expected
        watched = next(iter(client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="al-a"))))
        assert (watched.period_charges, watched.overage_amount, watched.credits_available) == (BIG_CHARGE, overage, "0")
        details = {"period_charges": BIG_CHARGE, "threshold": g, "period_start_ms": str(this_month_ms())}
        assert first_alert(client, rule_id) == details
    server.kill9()
    server.restart()
    with server.client() as client:
        assert balance(client, "al-a") == expected
        assert first_alert(client, rule_id) == details


def first_alert(client: TariffClient, rule_id: str) -> dict[str, str]:
    """The details of the first alert `rule_id` fired (WatchAlerts from the oldest kept)."""
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=60)
    try:
        return next(dict(alert.details) for alert in stream if alert.rule_id == rule_id)
    finally:
        stream.cancel()


def test_top_ups_whose_costs_sum_past_128_bits_at_10e_30_are_invoiced_exactly(server: ServerProcess) -> None:
    """README "Top-ups": a policy recharging to R = 170,000,000 credits at 1 USD (R x price within the documented
    170141183.460469231731687303715884105727) buys at most 3 times a period. Customer `tu-a` (credits card at 1 a
    unit, overage at 1 USD, no grant) sends three events of R units in turn: the first is overage (nothing
    available) and buys top-up 1; the second draws it whole and buys top-up 2; the third likewise buys top-up 3.
    The invoice: overage_due 170000000.00, top_up_purchases 3 x 170,000,000 = 510000000.00 (5.1 x 10^38 at 10^-30,
    past 2^127), total_due 680000000.00; the balance keeps R credits (top-up 3)."""
    now = now_ms()
    r = 170_000_000
    with server.client() as client:
        card(client, "tu", "credits", "1")
        open_contract(client, "tu-a", "tu-a-k", month_start(2025, 1), rate_card_id="tu")
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to=str(r), price_per_credit="1", max_per_period=3)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="tu-a-k", top_up=policy))
        for i in range(3):
            assert rejected_in(client, work(f"tu-{i}", "tu-a", now - 3000 + i, r)) == []
        invoice = preview(client, "tu-a", this_month_ms())
        assert (invoice.overage_due, invoice.top_up_purchases, invoice.total_due) == (
            "170000000.00",
            "510000000.00",
            "680000000.00",
        )
        answer = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="tu-a"))
        assert (answer.period_charges, answer.overage_amount, answer.credits_available) == (str(3 * r), str(r), str(r))


def test_a_snapshot_holding_sums_past_64_and_128_bits_restarts_to_the_same_balances(tmp_path: Path) -> None:
    """The same sums through snapshots (one every 2 journal records) rather than a replay alone: customer `snap-a`
    (USD card at 10^11 a unit) is charged BIG_CHARGE last month, whose period ClosePeriod closes (its invoice:
    BIG_CHARGE.00 due at 1 USD), and BIG_CHARGE this month. Version 2 (price 0) from last month's start re-rates
    this month: rerated_amount_delta -BIG_CHARGE, closed_amount_left_alone BIG_CHARGE. After kill -9 and a restart
    the balance is 0 and last month's invoice still BIG_CHARGE.00."""
    now, last_month = now_ms(), last_month_ms()
    process = ServerProcess(
        tmp_path / "data",
        extra_args=["--close-grace", "off", "--snapshot-every", "2", "--snapshot-journal-factor", "0"],
    )
    for _ in serving(process, catalogue):
        with process.client() as client:
            card(client, "snap", "USD", BIG_PRICE)
            open_contract(client, "snap-a", "snap-a-k", month_start(2025, 1), rate_card_id="snap")
            events = work("n0", "snap-a", last_month + HOUR_MS, BIG), work("n1", "snap-a", now - 1000, BIG)
            assert rejected_in(client, *events) == []
            close = invoices_pb2.ClosePeriodRequest(customer_id="snap-a", period_start=stamp(last_month))
            assert client.invoices.ClosePeriod(close).total_due == f"{BIG_CHARGE}.00"
            published = publish_free(client, "snap", last_month)
            assert (published.rerated_amount_delta, published.closed_amount_left_alone) == (
                f"-{BIG_CHARGE}",
                BIG_CHARGE,
            )
        process.kill9()
        process.restart()
        with process.client() as client:
            assert balance(client, "snap-a") == ("0", "0", "0")
            assert preview(client, "snap-a", last_month).total_due == f"{BIG_CHARGE}.00"
            listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="snap-a"))
            finals = [i for i in listed.invoices if i.status == invoices_pb2.INVOICE_FINAL]
            assert [(i.subtotal, i.total_due) for i in finals] == [(BIG_CHARGE, f"{BIG_CHARGE}.00")]
            number = invoices_pb2.GetInvoiceRequest(invoice_number=finals[0].invoice_number)
            assert client.invoices.GetInvoice(number).total_due == f"{BIG_CHARGE}.00"
            assert explained(client, "snap-a", last_month) == (
                BIG_CHARGE,
                [("n0", str(BIG), BIG_PRICE, BIG_CHARGE, BIG_CHARGE)],
            )


def test_a_re_rating_in_slices_past_64_bits_completes_and_restarts(tmp_path: Path) -> None:
    """A re-rating of more customers than one slice (64) runs after its publish record is committed, its completion
    record later: 65 customers on a USD card at 1 USD a unit, `sl-000` charged 20,000,000 USD (2 x 10^19 picos,
    past 2^64), the others 1 USD each. Version 2 (price 0) from 2025-01-01 re-rates them all:
    rerated_amount_delta = -(20,000,000 + 64) = "-20000064", 65 customers. (Before, the completion record could
    not be written: the writer stopped, and every restart, completing the committed publish again, stopped it
    again.) After kill -9 and a restart every balance is 0."""
    process = ServerProcess(
        tmp_path / "data", extra_args=["--close-grace", "off"], env={"TARIFF_TEST_RERATE_SLICE_PAUSE_MS": "20"}
    )
    customers = [f"sl-{i:03d}" for i in range(65)]
    for _ in serving(process, catalogue):
        now = now_ms()
        with process.client() as client:
            card(client, "sl", "USD", "1")
            for customer in customers:
                open_contract(client, customer, f"{customer}-k", month_start(2025, 1), rate_card_id="sl")
            units = [20_000_000 if customer == "sl-000" else 1 for customer in customers]
            events = [work(f"{c}-1", c, now - 1000, n) for c, n in zip(customers, units, strict=True)]
            assert rejected_in(client, *events) == []
            published = publish_free(client, "sl", month_start(2025, 1))
            assert (published.rerated_amount_delta, published.customers_rerated) == ("-20000064", 65)
        process.kill9()
        process.restart()
        with process.client() as client:
            assert {balance(client, c) for c in customers} == {("0", "0", "0")}


def test_a_version_whose_re_rating_passes_a_periods_128_bits_is_refused_and_changes_nothing(
    server: ServerProcess,
) -> None:
    """§6: a publish whose re-rating would overflow a period's totals is FAILED_PRECONDITION naming the product,
    nothing changed, and SimulateVersion of it likewise. Card `ov` prices `ov-units` at 10^11 and `ov-units-b` (both
    SUM of `n` of event type `ov-work`, fed by the same events) at 0: customer `ov-a` sends BIG, charged BIG_CHARGE. Version 2 prices both at 10^11: each line fits,
    their period does not (2 x BIG_CHARGE); version 3 prices `ov-units` at 2 x 10^11: its line does not fit. Both
    are refused naming the product, the balance stays BIG_CHARGE, and usage goes on: one more unit is charged
    10^11, BIG_CHARGE + 10^11 = 10^26."""
    now = now_ms()
    with server.client() as client:
        for product_id in ("ov-units", "ov-units-b"):
            product = pricing_pb2.Product(
                id=product_id, event_type="ov-work", aggregation=pricing_pb2.SUM, value_key="n"
            )
            client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="ov", pricing_unit="USD"))
        for rates in (
            [unit("ov-units", BIG_PRICE), unit("ov-units-b", "0")],
            [unit("ov-units", BIG_PRICE), unit("ov-units-b", BIG_PRICE)],
            [unit("ov-units", "200000000000"), unit("ov-units-b", "0")],
        ):
            client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id="ov", upsert_rates=rates)
            )
        first = pricing_pb2.PublishVersionRequest(
            rate_card_id="ov", version=1, effective_from=stamp(month_start(2024, 1))
        )
        client.pricing.PublishVersion(first)
        open_contract(client, "ov-a", "ov-a-k", month_start(2025, 1), rate_card_id="ov")
        assert rejected_in(client, work("ov-1", "ov-a", now - 1000, BIG, "ov-work")) == []
        window_start, window_end = stamp(this_month_ms()), stamp(now // HOUR_MS * HOUR_MS + HOUR_MS)
        for version, product_id in ((2, "ov-units-b"), (3, "ov-units")):
            out_of_range = f'customer "ov-a": the charge for product "{product_id}" is out of range'
            with pytest.raises(TariffError) as simulated:
                client.pricing.SimulateVersion(
                    pricing_pb2.SimulateVersionRequest(
                        rate_card_id="ov", version=version, period_start=window_start, period_end=window_end
                    )
                )
            assert simulated.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert simulated.value.details.endswith(out_of_range)
            with pytest.raises(TariffError) as published:
                publish = pricing_pb2.PublishVersionRequest(
                    rate_card_id="ov", version=version, effective_from=stamp(this_month_ms())
                )
                client.pricing.PublishVersion(publish)
            assert published.value.code == grpc.StatusCode.FAILED_PRECONDITION
            assert published.value.details.endswith(out_of_range)
            assert balance(client, "ov-a") == (BIG_CHARGE, BIG_CHARGE, BIG_CHARGE)
        assert rejected_in(client, work("ov-2", "ov-a", now - 500, 1, "ov-work")) == []
        ten_to_26 = "100000000000000000000000000"
        assert balance(client, "ov-a") == (ten_to_26, ten_to_26, ten_to_26)


def test_revenue_sums_prepaid_credit_and_overage_at_their_largest_over_customers_and_months(tmp_path: Path) -> None:
    """README "Invoices and revenue": customers `rv-1` and `rv-2` (credits card at 10^11 a unit, overage at
    P = 999999999999999999.999999999999999999 USD) each hold a PREPAID grant of G = 999999999999999999.999999999999
    credits paid G USD, from last month. Each sends 5,000,000 units last month (5 x 10^17 credits, drawn from the
    grant), then 10,000,000 units (10^18 credits: the grant's last G - 5 x 10^17 = 499999999999999999.999999999999,
    the rest 500000000000000000.000000000001 overage) and BIG units (BIG_CHARGE credits of overage) this month:
    charges 100000000999999900000000000, overage O = 100000000499999900000000000.000000000001, due O x P =
    100000000499999899999999999999999999900999999.500000099999999999999999999999 on the balance, exactly.
    Revenue (own server: the report spans every customer): last month each recognises 5 x 10^17 of credits, deferred
    499999999999999999.999999999999; this month each recognises the rest of its grant and O x P rounded half-even
    to the pico, 100000000499999899999999999999999999900999999.5000001; the month's product line is twice each, and
    the reconciliation sells 2G, recognises 2G of credits, defers nothing at the end and reconciles."""
    g = "999999999999999999.999999999999"
    half, rest = "500000000000000000", "499999999999999999.999999999999"
    overage_due = "100000000499999899999999999999999999900999999.500000099999999999999999999999"
    recognized_overage = "100000000499999899999999999999999999900999999.5000001"
    recognized = "100000000499999900000000000499999999900999999.500000099999"
    process = ServerProcess(tmp_path / "data", extra_args=["--close-grace", "off"])
    for _ in serving(process, catalogue):
        now, last_month = now_ms(), last_month_ms()
        with process.client() as client:
            card(client, "rv", "credits", BIG_PRICE)
            for c in ("rv-1", "rv-2"):
                open_contract(
                    client, c, f"{c}-k", month_start(2025, 1), rate_card_id="rv", overage_price=TOP_OVERAGE_PRICE
                )
                grant = contracts_pb2.Grant(
                    id=f"{c}-g",
                    customer_id=c,
                    kind=contracts_pb2.PREPAID,
                    amount=g,
                    paid_amount=g,
                    starts_at=stamp(last_month),
                )
                client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
                events = (
                    work(f"{c}-0", c, last_month + HOUR_MS, 5_000_000),
                    work(f"{c}-1", c, now - 1000, 10_000_000),
                    work(f"{c}-2", c, now - 900, BIG),
                )
                assert rejected_in(client, *events) == []
                assert balance(client, c) == (
                    "100000000999999900000000000",
                    "100000000499999900000000000.000000000001",
                    overage_due,
                )
            report = client.invoices.GetRevenueReport(
                invoices_pb2.GetRevenueReportRequest(
                    period_start=stamp(last_month), period_end=stamp(now // HOUR_MS * HOUR_MS + HOUR_MS)
                )
            )
            this_month = this_month_ms() // 1000
            assert [
                (r.customer_id, r.period_start.seconds == this_month, r.recognized_credits, r.recognized_overage)
                for r in report.customer_lines
            ] == [
                ("rv-1", False, half, "0"),
                ("rv-1", True, rest, recognized_overage),
                ("rv-2", False, half, "0"),
                ("rv-2", True, rest, recognized_overage),
            ]
            assert [(r.recognized, r.deferred) for r in report.customer_lines] == [
                (half, rest),
                (recognized, "0"),
            ] * 2
            month = [r for r in report.lines if r.period_start.seconds == this_month]
            assert [(r.recognized_credits, r.recognized_overage, r.recognized) for r in month] == [
                (
                    "999999999999999999.999999999998",
                    "200000000999999799999999999999999999801999999.0000002",
                    "200000000999999800000000000999999999801999999.000000199998",
                )
            ]
            total = report.reconciliation
            assert (total.prepaid_sold, total.recognized_credits, total.deferred_end, total.reconciles) == (
                "1999999999999999999.999999999998",
                "1999999999999999999.999999999998",
                "0",
                True,
            )


def test_the_csv_export_sums_a_lines_credits_exactly(server: ServerProcess) -> None:
    """README "Invoices" (CLI): the CSV export's `credits` is the line's credits from all grants, "decimal text as
    on the wire". Customer `csv-a` (credits card at 10^11 a unit) holds grants of 12345678901234567.123456789012
    and 1 credit from last month, and sends 1,000,000 units then (10^17 credits): both grants are drawn whole, the
    line's credits 12345678901234568.123456789012 (29 significant digits), and its final invoice (ClosePeriod)
    exported for last month says exactly that."""
    last_month = last_month_ms()
    with server.client() as client:
        card(client, "csv", "credits", BIG_PRICE)
        open_contract(client, "csv-a", "csv-a-k", month_start(2025, 1), rate_card_id="csv")
        for grant_id, amount in (("csv-g1", "12345678901234567.123456789012"), ("csv-g2", "1")):
            grant = contracts_pb2.Grant(
                id=grant_id,
                customer_id="csv-a",
                kind=contracts_pb2.PROMOTIONAL,
                amount=amount,
                paid_amount="0",
                starts_at=stamp(last_month),
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        assert rejected_in(client, work("csv-1", "csv-a", last_month + HOUR_MS, 1_000_000)) == []
        close = invoices_pb2.ClosePeriodRequest(customer_id="csv-a", period_start=stamp(last_month))
        closed = client.invoices.ClosePeriod(close)
        credits = "12345678901234568.123456789012"
        assert [sorted((c.grant_id, c.credits) for c in line.credits_applied) for line in closed.lines] == [
            [("csv-g1", "12345678901234567.123456789012"), ("csv-g2", "1")]
        ]
    month = datetime.fromtimestamp(last_month / 1000, UTC).strftime("%Y-%m")
    exported = tariff(server, "invoices", "export", "--period", month, "--customer", "csv-a").stdout
    rows = list(csv.DictReader(io.StringIO(exported)))
    assert [(row["line_id"], row["amount"], row["credits"]) for row in rows] == [
        ("units", "100000000000000000", credits)
    ]
