"""Audit: every read of the same money agrees with every other, to the pico, and with amounts computed by hand
(README "Invoices and revenue", "Why was I charged this?", "Revenue", "Credits and the gateway"; balance.proto,
invoices.proto, pricing.proto). One scenario mixes four price models on one event type, a price override, two
grants of different burn order, an overdrawn last month, a closed period, a hold, and a retroactive publish that
re-rates the open period and leaves the closed one alone; then PreviewInvoice, ClosePeriod, GetInvoice,
ListInvoices, the CSV and JSON exports, ExplainLineItem, GetBalance and the revenue report must all say the same.

Card `agc` (credits), event type `req`, version 1 from three months back:
- `tok` (SUM of `t`, pricing dimension `model`): GRADUATED per 1,000 units: up to 10,000 at 2, beyond at 1 with a
  flat 3 on entering the tier. So price(6,000) = 12, price(13,000) = 20 + 3 + 3 = 26, price(500) = 1.
- `img` (SUM of `i`): VOLUME: up to 10 at 3 a unit, beyond at 2.5 a unit for all; the contract overrides it with
  multiplier 0.5. So price(4) = 6, price(12) = 15, price(13) = 16.25.
- `blk` (SUM of `t`): PACKAGE of 4,000 at 1.5. So price(6,000) = 3, price(13,000) = price(13,500) = 6.
- `seat` (COUNT): FLAT 7 once the period's quantity is above 0.
Contract from last month's start (L), ALLOW, overage at 0.37 USD a credit. Grants: `promo` 20 credits (free,
priority 1, burns first), `paid` 30 credits for 9 USD (priority 2, cost basis 0.3)."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import rejected_in, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_topups_wire import month_start_ms
from tests.test_cli import tariff

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CARD = "agc"


def tiered(mode: pricing_pb2.TierMode, per_units: str, *tiers: tuple[str, str, str]) -> pricing_pb2.TieredPrice:
    return pricing_pb2.TieredPrice(
        mode=mode,
        per_units=per_units,
        tiers=[pricing_pb2.Tier(up_to=u, unit_price=p, flat_price=f) for u, p, f in tiers],
    )


def rates(tok_low: str) -> list[pricing_pb2.Rate]:
    return [
        pricing_pb2.Rate(
            product_id="tok", tiered=tiered(pricing_pb2.GRADUATED, "1000", ("10000", tok_low, ""), ("", "1", "3"))
        ),
        pricing_pb2.Rate(product_id="img", tiered=tiered(pricing_pb2.VOLUME, "", ("10", "3", ""), ("", "2.5", ""))),
        pricing_pb2.Rate(product_id="blk", package=pricing_pb2.PackagePrice(package_size="4000", package_price="1.5")),
        pricing_pb2.Rate(product_id="seat", flat=pricing_pb2.FlatPrice(price="7")),
    ]


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing
    for product in (
        pricing_pb2.Product(
            id="tok", event_type="req", aggregation=pricing_pb2.SUM, value_key="t", pricing_dimensions=["model"]
        ),
        pricing_pb2.Product(id="img", event_type="req", aggregation=pricing_pb2.SUM, value_key="i"),
        pricing_pb2.Product(id="blk", event_type="req", aggregation=pricing_pb2.SUM, value_key="t"),
        pricing_pb2.Product(id="seat", event_type="req", aggregation=pricing_pb2.COUNT),
    ):
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="credits"))
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=rates("2")))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=stamp(month_start_ms(3)))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-agree")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def customer(client: TariffClient, c: str, card: str = CARD, *, grants: bool = True) -> None:
    """`c` on `card` from last month's start, ALLOW at 0.37 USD, img at half price, with `promo` and `paid`
    (unless not `grants`)."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=c, name=c))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{c}-c",
            customer_id=c,
            rate_card_id=card,
            starting_at=stamp(month_start_ms(1)),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="0.37",
            currency="USD",
        )
    )
    override = contracts_pb2.PriceOverride(id="img-half", product_id="img", multiplier="0.5")
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=f"{c}-c", override=override))
    for name, amount, paid, priority, kind in (
        ("promo", "20", "0", 1, contracts_pb2.PROMOTIONAL),
        ("paid", "30", "9", 2, contracts_pb2.PREPAID),
    )[: 2 if grants else 0]:
        made = contracts_pb2.Grant(
            id=f"{c}.{name}", contract_id=f"{c}-c", kind=kind, amount=amount, paid_amount=paid, priority=priority
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def req(tx: str, c: str, at_ms: int, model: str, t: float, i: float) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=tx,
        customer_id=c,
        event_type="req",
        timestamp_ms=at_ms,
        dimensions={"model": model},
        values={"t": t, "i": i},
    )


def use(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    for one in events:
        ack = client.ingest_batch([one])
        assert ack.accepted == 1 and not ack.rejected and not ack.notices, ack


def d(x: str) -> Decimal:
    return Decimal(x or "0")


def plain(x: str) -> str:
    return format(d(x).normalize(), "f")


def line_table(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, str, str]]:
    """line id -> (quantity, amount, credits from all grants, overage)."""
    return {
        line.line_id: (
            plain(line.quantity),
            plain(line.amount),
            plain(str(sum((d(c.credits) for c in line.credits_applied), Decimal(0)))),
            plain(line.overage),
        )
        for line in invoice.lines
    }


def explained(client: TariffClient, c: str, period_ms: int, line_id: str) -> tuple[Decimal, Decimal, list[str]]:
    """Sum of the amounts and of the quantities over every page, and the transaction ids (adjustments as '#')."""
    total, quantity, seen, token = Decimal(0), Decimal(0), [], ""
    while True:
        page = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(
                customer_id=c, period_start=stamp(period_ms), line_id=line_id, page_size=2, page_token=token
            )
        )
        for event in page.events:
            total += d(event.amount)
            quantity += d(event.quantity)
            seen.append(event.transaction_id or "#")
        assert d(page.line_amount) == total or page.next_page_token, page
        if not page.next_page_token:
            assert (d(page.line_amount), d(page.line_quantity)) == (total, quantity), page
            return total, quantity, seen
        token = page.next_page_token


def draws_agree(client: TariffClient, c: str, period_ms: int, line: invoices_pb2.InvoiceLine) -> None:
    """A line no re-rating touched: its events' draws per grant and overage sum to the line's (README "Why was I
    charged this?": the credits each event drew per grant, negative when given back)."""
    page = client.invoices.ExplainLineItem(
        invoices_pb2.ExplainLineItemRequest(
            customer_id=c, period_start=stamp(period_ms), line_id=line.line_id, page_size=1000
        )
    )
    assert not page.next_page_token and not line.adjustments, page
    drawn: dict[str, Decimal] = {}
    for event in page.events:
        for draw in event.draws:
            drawn[draw.grant_id] = drawn.get(draw.grant_id, Decimal(0)) + d(draw.credits)
    on_line = {a.grant_id: d(a.credits) for a in line.credits_applied}
    assert {k: v for k, v in drawn.items() if v} == {k: v for k, v in on_line.items() if v}, (line, page)
    assert sum((d(e.overage) for e in page.events), Decimal(0)) == d(line.overage), (line, page)


def without_final(invoice: invoices_pb2.Invoice) -> bytes:
    copy = invoices_pb2.Invoice()
    copy.CopyFrom(invoice)
    copy.ClearField("invoice_number")
    copy.ClearField("status")
    copy.ClearField("closed_at")
    return copy.SerializeToString(deterministic=True)


LAST_LINES = {
    # quantity, amount, credits, overage: see the scenario test's docstring.
    "blk": ("13500", "6", None, None),
    "img": ("13", "16.25", None, None),
    "seat": ("3", "7", None, None),
    "tok;model=x": ("13000", "26", None, None),
    "tok;model=y": ("500", "1", None, None),
}


def test_last_month_reads_agree_before_and_after_close_and_in_every_export(server: ServerProcess) -> None:
    """Last month (L), customer ag1, each event its own batch:
    - e1 at L+2d, model x, t 6,000, i 4: tok 12, img 6, blk 3, seat 7 = 28: promo 20, then paid 8.
    - e2 at L+2d+1h, model x, t 7,000, i 8: tok 26 - 12 = 14, img 15 - 6 = 9, blk 6 - 3 = 3, seat 0 = 26:
      paid's last 22, then 4 overage.
    - e3 at L+3d, model y, t 500, i 1: tok;model=y 1, img 16.25 - 15 = 1.25, blk 0, seat 0 = 2.25: all overage.
    Subtotal 56.25; credits promo 20 + paid 30 = 50; overage 6.25; overage_due 6.25 x 0.37 = 2.3125 -> 2.31;
    top-ups 0; total 2.31. Grants at the period's end: promo 20/20/0/0, paid 30/30/0/0.
    Revenue of L: recognised from credits = paid's 30 at 0.3 = 9 (promo cost nothing); from overage 2.3125;
    sold 9; deferred at L's end 0."""
    c = "ag1"
    last = month_start_ms(1)
    with server.client() as client:
        customer(client, c)
        use(
            client,
            req("ag1-e1", c, last + 2 * DAY_MS, "x", 6000, 4),
            req("ag1-e2", c, last + 2 * DAY_MS + HOUR_MS, "x", 7000, 8),
            req("ag1-e3", c, last + 3 * DAY_MS, "y", 500, 1),
        )
        draft = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=c, period_start=stamp(last))
        )
        table = line_table(draft)
        assert {k: v[:2] for k, v in table.items()} == {k: v[:2] for k, v in LAST_LINES.items()}, draft
        assert sum(d(v[2]) for v in table.values()) == 50 and sum(d(v[3]) for v in table.values()) == d("6.25")
        assert (plain(draft.subtotal), plain(draft.overage_amount)) == ("56.25", "6.25"), draft
        assert (draft.overage_due, draft.top_up_purchases, draft.total_due) == ("2.31", "0.00", "2.31"), draft
        credits = {a.grant_id: plain(a.credits) for a in draft.credits_applied}
        assert credits == {f"{c}.paid": "30", f"{c}.promo": "20"}, draft
        assert {
            g.grant_id: tuple(plain(x) for x in (g.granted, g.drawn, g.remaining, g.expired))
            for g in draft.grant_balances
        } == {f"{c}.paid": ("30", "30", "0", "0"), f"{c}.promo": ("20", "20", "0", "0")}, draft
        rounded = sum((d(line.amount_due) for line in draft.lines), Decimal(0))
        assert rounded + d(draft.rounding_adjustment) == d(draft.overage_due), draft
        for line in draft.lines:
            assert d(line.amount) == sum((d(p.amount) for p in line.prices), Decimal(0)), line
            assert d(line.amount) == d(table[line.line_id][2]) + d(line.overage), line
            total, quantity, seen = explained(client, c, last, line.line_id)
            assert (total, quantity) == (d(line.amount), d(line.quantity)), (line.line_id, seen)
            draws_agree(client, c, last, line)

        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=c, period_start=stamp(last)))
        assert final.status == invoices_pb2.INVOICE_FINAL and final.invoice_number, final
        assert without_final(final) == without_final(draft)
        got = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=final.invoice_number))
        assert got == final
        listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id=c)).invoices
        assert list(listed) == [final]
        assert (
            client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=c, period_start=stamp(last)))
            == final
        )

        month = tariff(server, "invoices", "export", "--period", _month(last), "--format", "csv").stdout
        rows = [r for r in csv.DictReader(io.StringIO(month)) if r["customer_id"] == c]
        assert [r["line_id"] for r in rows] == [line.line_id for line in final.lines], month
        for row, line in zip(rows, final.lines, strict=True):
            assert (row["quantity"], row["amount"], row["overage"], row["amount_due"]) == (
                line.quantity,
                line.amount,
                line.overage,
                line.amount_due,
            ), row
            assert d(row["credits"]) == sum((d(x.credits) for x in line.credits_applied), Decimal(0)), row
            assert (row["subtotal"], row["overage_due"], row["total_due"], row["invoice_number"]) == (
                final.subtotal,
                final.overage_due,
                final.total_due,
                final.invoice_number,
            ), row
        as_json = json.loads(tariff(server, "invoices", "export", "--period", _month(last), "--format", "json").stdout)
        mine = [i for i in _invoices_of(as_json) if i["customer_id"] == c]
        assert len(mine) == 1 and mine[0]["total_due"] == "2.31" and mine[0]["subtotal"] == final.subtotal, mine

        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(last), period_end=stamp(month_start_ms(0)), customer_id=c
            )
        )
        (line,) = report.customer_lines
        assert tuple(
            plain(x)
            for x in (line.recognized_credits, line.recognized_overage, line.recognized, line.deferred, line.breakage)
        ) == ("9", "2.3125", "11.3125", "0", "0"), report
        by_product = {p.product_id: (d(p.recognized_credits), d(p.recognized_overage)) for p in report.lines}
        assert sum(v[0] for v in by_product.values()) == 9 and sum(v[1] for v in by_product.values()) == d("2.3125")
        overage_of: dict[str, Decimal] = {}
        for il in final.lines:
            overage_of[il.product_id] = overage_of.get(il.product_id, Decimal(0)) + d(il.overage)
        assert {k: v[1] for k, v in by_product.items()} == {k: v * d("0.37") for k, v in overage_of.items()}, report
        rec = report.reconciliation
        assert (
            tuple(
                plain(x)
                for x in (rec.deferred_start, rec.prepaid_sold, rec.recognized_credits, rec.breakage, rec.deferred_end)
            )
            == ("0", "9", "9", "0", "0")
            and rec.reconciles
        ), report


def _month(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m")


def _invoices_of(exported: object) -> list[dict[str, str]]:
    if isinstance(exported, dict):
        found = exported.get("invoices", [])
        assert isinstance(found, list)
        return found
    assert isinstance(exported, list)
    return exported


def balance_grants(balance: balance_pb2.Balance) -> dict[str, tuple[str, ...]]:
    return {
        g.grant_id: tuple(plain(x) for x in (g.amount, g.drawn, g.remaining, g.held, g.expired)) for g in balance.grants
    }


def last_month_of(client: TariffClient, c: str) -> invoices_pb2.Invoice:
    """The customer with last month's three events (see the first test), its period closed."""
    last = month_start_ms(1)
    customer(client, c)
    use(
        client,
        req(f"{c}-e1", c, last + 2 * DAY_MS, "x", 6000, 4),
        req(f"{c}-e2", c, last + 2 * DAY_MS + HOUR_MS, "x", 7000, 8),
        req(f"{c}-e3", c, last + 3 * DAY_MS, "y", 500, 1),
    )
    closed: invoices_pb2.Invoice = client.invoices.ClosePeriod(
        invoices_pb2.ClosePeriodRequest(customer_id=c, period_start=stamp(last))
    )
    assert (closed.subtotal, closed.total_due) == ("56.25", "2.31"), closed
    return closed


def current(client: TariffClient, c: str) -> tuple[balance_pb2.Balance, invoices_pb2.Invoice]:
    balance = client.get_balance(c)
    draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=c))
    return balance, draft


def test_a_hold_and_a_retroactive_publish_move_balance_draft_explain_and_revenue_together(
    server: ServerProcess,
) -> None:
    """ag2: last month as ag1's, closed (total 2.31). This month (C): grant `cur` 10 credits for 5 USD (priority 0,
    from C's start, cost basis 0.5). A hold `r1` (req, model x, t 1,000, i 0): tok 2 + img 0 + blk 1.5 + seat 7 =
    estimate 10.5, holding the 10 there are (OVERAGE_ALLOWED). Then e4 at C+1h (model x, t 2,000, i 2): tok 4,
    img 3 x 2 x 0.5 = 3, blk 1.5, seat 7 = 15.5, all overage (the credit is held).
    Balance: remaining 10, held 10, available 0, charges 15.5, overage 15.5, overage_due 15.5 x 0.37 = 5.735
    exact; the draft: subtotal 15.5, overage 15.5, overage_due 5.74 (half-even), total 5.74.
    Version 2 (tok's first tier 3 instead of 2) from e2's hour, last month: the closed period is left alone (e2 and
    e3: 26 + 2.25 = 28.25 a customer whose last month is closed); this month e4's tok is 6 (+2), so the subtotal is
    17.5; draws settled again put the hold after e4 (its hour is later): e4 draws cur's 10, overage 7.5, due
    2.775 exact, 2.78 on the draft; the hold shrinks to 0 and its release answers 0. Revenue of C: recognised
    from credits 10 x 0.5 = 5, overage 2.775, sold 5, deferred 0; last month's stays 9 + 2.3125."""
    c = "ag2"
    last, this = month_start_ms(1), month_start_ms(0)
    if client_now_hour_start() <= this + HOUR_MS:
        pytest.skip("the month's first two hours: e4's hour would be the hold's")
    with server.client() as client:
        closed = last_month_of(client, c)
        made = contracts_pb2.Grant(
            id=f"{c}.cur",
            contract_id=f"{c}-c",
            kind=contracts_pb2.PREPAID,
            amount="10",
            paid_amount="5",
            priority=0,
            starts_at=stamp(this),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        held = client.balance.Authorize(
            balance_pb2.AuthorizeRequest(
                customer_id=c,
                event_type="req",
                dimensions={"model": "x"},
                values={"t": 1000, "i": 0},
                reserve=True,
                reservation_id="r1",
            )
        )
        assert (held.allowed, held.reason, plain(held.estimated_cost)) == (True, "OVERAGE_ALLOWED", "10.5"), held
        use(client, req(f"{c}-e4", c, this + HOUR_MS, "x", 2000, 2))
        balance, draft = current(client, c)
        assert tuple(
            plain(x)
            for x in (
                balance.credits_remaining,
                balance.credits_held,
                balance.credits_available,
                balance.period_charges,
                balance.overage_amount,
                balance.overage_due,
            )
        ) == ("10", "10", "0", "15.5", "15.5", "5.735"), balance
        assert balance_grants(balance)[f"{c}.cur"] == ("10", "0", "10", "10", "0"), balance
        assert (plain(draft.subtotal), plain(draft.overage_amount), draft.overage_due, draft.total_due) == (
            "15.5",
            "15.5",
            "5.74",
            "5.74",
        ), draft
        assert d(draft.subtotal) == d(balance.period_charges) and d(draft.overage_amount) == d(balance.overage_amount)

        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=rates("3"))
        )
        closed_customers = {
            i.customer_id
            for i in client.invoices.ListInvoices(
                invoices_pb2.ListInvoicesRequest(period_start_from=stamp(last))
            ).invoices
            if i.customer_id in ("ag1", "ag2")
        }
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=2, effective_from=stamp(last + 2 * DAY_MS + HOUR_MS)
            )
        )
        assert plain(published.rerated_amount_delta) == "2", published
        assert published.closed_events_left_alone == 2 * len(closed_customers), published
        assert d(published.closed_amount_left_alone) == d("28.25") * len(closed_customers), published

        balance, draft = current(client, c)
        assert tuple(
            plain(x)
            for x in (
                balance.credits_remaining,
                balance.credits_held,
                balance.credits_available,
                balance.period_charges,
                balance.overage_amount,
                balance.overage_due,
            )
        ) == ("0", "0", "0", "17.5", "7.5", "2.775"), balance
        assert balance_grants(balance)[f"{c}.cur"] == ("10", "10", "0", "0", "0"), balance
        assert (plain(draft.subtotal), plain(draft.overage_amount), draft.overage_due, draft.total_due) == (
            "17.5",
            "7.5",
            "2.78",
            "2.78",
        ), draft
        assert {a.grant_id: plain(a.credits) for a in draft.credits_applied} == {f"{c}.cur": "10"}, draft
        table = line_table(draft)
        assert {k: v[:2] for k, v in table.items()} == {
            "blk": ("2000", "1.5"),
            "img": ("2", "3"),
            "seat": ("1", "7"),
            "tok;model=x": ("2000", "6"),
        }, draft
        for line in draft.lines:
            total, quantity, seen = explained(client, c, this, line.line_id)
            assert (total, quantity) == (d(line.amount), d(line.quantity)), (line.line_id, seen)
        assert explained(client, c, this, "tok;model=x")[2] == [f"{c}-e4", "#"]
        assert release_of(client, c, "r1") == "0"

        assert (
            client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=c, period_start=stamp(last)))
            == closed
        )
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(last), period_end=stamp(month_start_ms(-1)), customer_id=c
            )
        )
        assert [
            tuple(plain(x) for x in (r.recognized_credits, r.recognized_overage, r.deferred, r.breakage))
            for r in report.customer_lines
        ] == [("9", "2.3125", "0", "0"), ("5", "2.775", "0", "0")], report
        rec = report.reconciliation
        assert (
            tuple(
                plain(x)
                for x in (rec.deferred_start, rec.prepaid_sold, rec.recognized_credits, rec.breakage, rec.deferred_end)
            )
            == ("0", "14", "14", "0", "0")
            and rec.reconciles
        ), report


def client_now_hour_start() -> int:
    return now_ms() // HOUR_MS * HOUR_MS


def release_of(client: TariffClient, c: str, reservation_id: str) -> str:
    released = client.balance.ReleaseReservation(
        balance_pb2.ReleaseReservationRequest(customer_id=c, reservation_id=reservation_id)
    )
    return plain(released.released_amount)


def grant(client: TariffClient, c: str, name: str, amount: str, paid: str, priority: int, **fields: Any) -> None:
    made = contracts_pb2.Grant(
        id=f"{c}.{name}",
        contract_id=f"{c}-c",
        kind=contracts_pb2.PREPAID,
        amount=amount,
        paid_amount=paid,
        priority=priority,
        **fields,
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def test_a_retroactive_publish_over_two_open_periods_and_an_expired_grant_agrees_everywhere(
    server: ServerProcess,
) -> None:
    """ag3 on its own card `agc3` (agc's prices): grants `exp` 50 credits for 10 USD (0.2 each, priority 1,
    expiring 3 s from now) and `late` 20 for 10 (0.5 each, priority 2). e1 last month (L) at L+2d as ag1's
    (28): exp 28. e4 this month (C) at C+1h as ag2's (15.5): exp 15.5. At the expiry exp breaks 50 - 43.5 = 6.5
    (worth 1.3, in C, the period of its last usable instant).
    Then version 2 of agc3 (tok's first tier 3) from L's start re-rates both open periods: e1's tok 12 -> 18 (e1
    34), e4's tok 4 -> 6 (e4 17.5). Settled again in time order: exp draws again up to the 43.5 it drew (34 for
    e1, 9.5 for e4), late pays e4's other 8; nothing is overage; the breakage stays 6.5.
    Drafts: L subtotal 34 (exp 34), C subtotal 17.5 (exp 9.5, late 8), overage 0, total due 0.00 both.
    Balance: remaining 12 (late), charges 17.5, overage 0; exp 50/43.5/0/0/6.5, late 20/8/12/0/0.
    Revenue: L recognised 34 x 0.2 = 6.8, deferred 20 - 6.8 = 13.2 (both grants sold in L, from the contract's
    start); C recognised 9.5 x 0.2 + 8 x 0.5 = 5.9, breakage 1.3, deferred 13.2 - 5.9 - 1.3 = 6 (late's 12 x
    0.5). Closing L then answers its draft."""
    c, card = "ag3", "agc3"
    last, this = month_start_ms(1), month_start_ms(0)
    if client_now_hour_start() <= this + HOUR_MS:
        pytest.skip("the month's first two hours")
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates("2"))
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=stamp(month_start_ms(3)))
        )
        customer(client, c, card, grants=False)
        expiry_ms = client_now_ms() + 3000
        grant(client, c, "exp", "50", "10", 1, expires_at=stamp(expiry_ms))
        grant(client, c, "late", "20", "10", 2)
        use(client, req(f"{c}-e1", c, last + 2 * DAY_MS, "x", 6000, 4), req(f"{c}-e4", c, this + HOUR_MS, "x", 2000, 2))
        assert wait_for(lambda: balance_grants(client.get_balance(c))[f"{c}.exp"][4] == "6.5", 30)
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, based_on_version=1, upsert_rates=rates("3"))
        )
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=card, version=2, effective_from=stamp(last))
        )
        assert (plain(published.rerated_amount_delta), published.customers_rerated) == ("8", 1), published

        balance = client.get_balance(c)
        assert tuple(
            plain(x)
            for x in (
                balance.credits_remaining,
                balance.credits_held,
                balance.credits_available,
                balance.period_charges,
                balance.overage_amount,
                balance.overage_due,
            )
        ) == ("12", "0", "12", "17.5", "0", "0"), balance
        assert balance_grants(balance) == {
            f"{c}.exp": ("50", "43.5", "0", "0", "6.5"),
            f"{c}.late": ("20", "8", "12", "0", "0"),
        }, balance
        drafts = [
            client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=c, period_start=stamp(p)))
            for p in (last, this)
        ]
        assert [(plain(i.subtotal), plain(i.overage_amount), i.total_due) for i in drafts] == [
            ("34", "0", "0.00"),
            ("17.5", "0", "0.00"),
        ], drafts
        assert [{a.grant_id: plain(a.credits) for a in i.credits_applied} for i in drafts] == [
            {f"{c}.exp": "34"},
            {f"{c}.exp": "9.5", f"{c}.late": "8"},
        ], drafts
        for period_ms, draft in zip((last, this), drafts, strict=True):
            for line in draft.lines:
                credits = sum((d(a.credits) for a in line.credits_applied), Decimal(0))
                assert d(line.amount) == credits + d(line.overage), line
                total, quantity, seen = explained(client, c, period_ms, line.line_id)
                assert (total, quantity) == (d(line.amount), d(line.quantity)), (line.line_id, seen)
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(last), period_end=stamp(month_start_ms(-1)), customer_id=c
            )
        )
        assert [
            tuple(plain(x) for x in (r.recognized_credits, r.recognized_overage, r.breakage, r.deferred))
            for r in report.customer_lines
        ] == [("6.8", "0", "0", "13.2"), ("5.9", "0", "1.3", "6")], report
        by_grant_recognised = sum((d(g.recognized_revenue) for g in balance.grants), Decimal(0))
        assert by_grant_recognised == d("6.8") + d("5.9"), balance
        rec = report.reconciliation
        assert (
            tuple(
                plain(x)
                for x in (rec.deferred_start, rec.prepaid_sold, rec.recognized_credits, rec.breakage, rec.deferred_end)
            )
            == ("0", "20", "12.7", "1.3", "6")
            and rec.reconciles
        ), report
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=c, period_start=stamp(last)))
        assert without_final(final) == without_final(drafts[0])


def client_now_ms() -> int:
    return now_ms()


def drawn_in_event_order(client: TariffClient, c: str, card: str) -> int:
    """`c` on its own card `card` (agc's prices, no img override), ALLOW at 0.37 USD, from last month's start (L).
    Grants: `g1` 20 credits for 10 USD (priority 1, every product) and `g2` 10 for 1 USD (priority 2, tok only).
    In one hour of L, on time:
    - e1 (model x, t 5,000, i 0): blk 3, seat 7, tok 10 = 20, drawn in product order from g1 (20 -> 0).
    - e2 a minute later (i 2): img 2 x 3 = 6; g1 is spent and g2 pays tok only: 6 overage, 6 x 0.37 = 2.22 due.
    - e3 five hours later (t 1,000): tok 12 - 10 = 2 (blk stays at 2 packages), from g2.
    Returns e1's time."""
    last = month_start_ms(1)
    hour_ms = last + 2 * DAY_MS
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates("2")))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=stamp(month_start_ms(3)))
    )
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=c, name=c))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{c}-c",
            customer_id=c,
            rate_card_id=card,
            starting_at=stamp(last),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="0.37",
            currency="USD",
        )
    )
    grant(client, c, "g1", "20", "10", 1)
    grant(client, c, "g2", "10", "1", 2, applicable_product_ids=["tok"])
    use(
        client,
        req(f"{c}-e1", c, hour_ms, "x", 5000, 0),
        req(f"{c}-e2", c, hour_ms + 60_000, "x", 0, 2),
        req(f"{c}-e3", c, hour_ms + 5 * HOUR_MS, "x", 1000, 0),
    )
    return hour_ms


def last_month_reads(client: TariffClient, c: str) -> tuple[object, ...]:
    """Last month's draft (lines; subtotal, overage, due), GetBalance's grants (drawn) and revenue line
    (recognised from credits, from overage, deferred)."""
    last = month_start_ms(1)
    draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=c, period_start=stamp(last)))
    (line,) = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(
            period_start=stamp(last), period_end=stamp(month_start_ms(0)), customer_id=c
        )
    ).customer_lines
    return (
        line_table(draft),
        (plain(draft.subtotal), plain(draft.overage_amount), draft.total_due),
        {g: v[1] for g, v in balance_grants(client.get_balance(c)).items()},
        tuple(plain(x) for x in (line.recognized_credits, line.recognized_overage, line.deferred)),
    )


def simulated_delta(client: TariffClient, c: str, card: str, from_ms: int) -> str:
    """SimulateVersion's total delta for draft version 2 over [from_ms, this month's start), `c` only."""
    simulated = client.pricing.SimulateVersion(
        pricing_pb2.SimulateVersionRequest(
            rate_card_id=card,
            version=2,
            period_start=stamp(from_ms),
            period_end=stamp(month_start_ms(0)),
            customer_ids=[c],
        )
    )
    return plain(simulated.totals.delta)


def test_a_same_price_publish_leaves_the_draws_as_the_events_drew_them(server: ServerProcess) -> None:
    """ag5 (`drawn_in_event_order`): version 2, the same prices, from e3's hour changes no bucket's amount (delta 0;
    the customer counts as re-rated, its buckets now cite version 2), so nothing is settled again (README "Changing
    prices safely"): every read is as rated, g1 paying blk, seat and tok's 10, e2's img 6 overage (2.22 due), g2
    drawn 2; revenue recognised from credits 20 x 0.5 + 2 x 0.1 = 10.2, from overage 2.22, deferred 0.8 (g2's 8).
    A rollback to version 2 from e1's hour (the same prices again, now pricing every bucket) leaves them so too.
    SimulateVersion of version 2 from e3's hour says so beforehand: delta 0 (it simulates charges, not draws)."""
    c, card = "ag5", "agc5"
    with server.client() as client:
        hour_ms = drawn_in_event_order(client, c, card)
        as_rated = (
            {
                "blk": ("6000", "3", "3", "0"),
                "img": ("2", "6", "0", "6"),
                "seat": ("3", "7", "7", "0"),
                "tok;model=x": ("6000", "12", "12", "0"),
            },
            ("28", "6", "2.22"),
            {f"{c}.g1": "20", f"{c}.g2": "2"},
            ("10.2", "2.22", "0.8"),
        )
        assert last_month_reads(client, c) == as_rated
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, based_on_version=1, upsert_rates=rates("2"))
        )
        assert simulated_delta(client, c, card, hour_ms + 5 * HOUR_MS) == "0"
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=card, version=2, effective_from=stamp(hour_ms + 5 * HOUR_MS))
        )
        assert (plain(published.rerated_amount_delta), published.customers_rerated) == ("0", 1), published
        assert last_month_reads(client, c) == as_rated
        page = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id=c, period_start=stamp(month_start_ms(1)), line_id="img")
        )
        assert [(e.transaction_id, plain(e.amount), plain(e.overage)) for e in page.events] == [
            (f"{c}-e1", "0", "0"),
            (f"{c}-e2", "6", "6"),
            (f"{c}-e3", "0", "0"),
            ("", "0", "0"),
        ], page
        rolled = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=card, to_version=2, effective_from=stamp(hour_ms))
        )
        assert (plain(rolled.rerated_amount_delta), rolled.customers_rerated) == ("0", 1), rolled
        assert last_month_reads(client, c) == as_rated


def test_a_publish_changing_one_bucket_settles_the_period_by_its_buckets_not_its_events(server: ServerProcess) -> None:
    """ag5b (`drawn_in_event_order`): version 2 from e3's hour prices tok at 3 a 1,000 up to 10,000: e3's bucket is
    v2(6,000) - v2(5,000) = 18 - 15 = 3 (was 2), delta 1; the other buckets keep their amounts. A bucket changed,
    so the period is settled again from its start by buckets, refunds first, then by product id (README "Changing
    prices safely"): e1's hour as blk 3, img 6, seat 7, tok 10: g1 pays blk, img, seat and 4 of tok (20 -> 0), g2
    tok's other 6; e3's hour tok 3 from g2 (drawn 9). No overage, 0.00 due, subtotal 29; revenue recognised from
    credits 20 x 0.5 + 9 x 0.1 = 10.9, deferred 0.1 (g2's 1 left). SimulateVersion of version 2 from e3's hour says
    delta 1 beforehand (charges only: how the draws move is not simulated)."""
    c, card = "ag5b", "agc5b"
    with server.client() as client:
        hour_ms = drawn_in_event_order(client, c, card)
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, based_on_version=1, upsert_rates=rates("3"))
        )
        assert simulated_delta(client, c, card, hour_ms + 5 * HOUR_MS) == "1"
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=card, version=2, effective_from=stamp(hour_ms + 5 * HOUR_MS))
        )
        assert (plain(published.rerated_amount_delta), published.customers_rerated) == ("1", 1), published
        assert last_month_reads(client, c) == (
            {
                "blk": ("6000", "3", "3", "0"),
                "img": ("2", "6", "6", "0"),
                "seat": ("3", "7", "7", "0"),
                "tok;model=x": ("6000", "13", "13", "0"),
            },
            ("29", "0", "0.00"),
            {f"{c}.g1": "20", f"{c}.g2": "9"},
            ("10.9", "0", "0.1"),
        )


def test_a_hold_outstanding_when_its_period_closes_is_settled_in_the_next_period_and_every_read_agrees(
    server: ServerProcess,
) -> None:
    """ag6 on its own card `agc6` (agc's prices, no override): a contract whose first period ends 4 s from now
    (P1, then P2), ALLOW at 0.37 USD; grant `g` 10 credits for 5 USD. A hold `r1` (model x, t 1,000, i 0:
    tok 2 + blk 1.5 + seat 7 = 10.5) holds all 10. An event an hour ago (t 500: tok 1, blk 1.5, seat 7 = 9.5) is
    all overage. P1 closed with the hold out: subtotal 9.5, overage 9.5, 3.515 -> 3.52 due, equal to its draft;
    g 10/0/10/0 on it (the held credit is neither drawn nor expired). An event settling r1 dated in P1 is
    PERIOD_CLOSED and r1 stays held; one dated now (P2, t 1,000: 10.5) gives the hold back and draws it: 10 from g,
    0.5 overage (0.185 -> 0.18). Revenue: P1 from overage 3.515, deferred 5; P2 from credits 5, from overage
    0.185, deferred 0. P1's invoice is unchanged."""
    c, card = "ag6", "agc6"
    end_ms = client_now_ms() + 4000
    end = datetime.fromtimestamp(end_ms / 1000, UTC)
    if end.day > 28:
        pytest.skip("a month back from the 29th to the 31st is no calendar day")
    month = end.year * 12 + end.month - 2
    start_ms = int(end.replace(year=month // 12, month=month % 12 + 1).timestamp() * 1000)
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates("2"))
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=stamp(month_start_ms(3)))
        )
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=c, name=c))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=f"{c}-c",
                customer_id=c,
                rate_card_id=card,
                starting_at=stamp(start_ms),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="0.37",
                currency="USD",
            )
        )
        grant(client, c, "g", "10", "5", 1)
        held = client.balance.Authorize(
            balance_pb2.AuthorizeRequest(
                customer_id=c,
                event_type="req",
                dimensions={"model": "x"},
                values={"t": 1000, "i": 0},
                reserve=True,
                reservation_id="r1",
                reservation_ttl=Duration(seconds=600),
            )
        )
        assert (held.allowed, plain(held.estimated_cost)) == (True, "10.5"), held
        use(client, req(f"{c}-a", c, client_now_ms() - HOUR_MS, "x", 500, 0))
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=c))
        assert wait_for(lambda: client_now_ms() > end_ms + 50, 30)
        final = client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id=c, period_start=stamp(start_ms))
        )
        assert without_final(final) == without_final(draft)
        assert (plain(final.subtotal), plain(final.overage_amount), final.total_due) == ("9.5", "9.5", "3.52"), final
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in final.grant_balances] == [
            (f"{c}.g", "10", "0", "10", "0")
        ], final

        def settling(transaction_id: str, at_ms: int) -> usage_pb2.UsageEvent:
            event = req(transaction_id, c, at_ms, "x", 1000, 0)
            event.reservation_id = "r1"
            return event

        assert rejected_in(client, settling(f"{c}-late", end_ms - 10)) == [(f"{c}-late", "PERIOD_CLOSED")]
        assert balance_grants(client.get_balance(c))[f"{c}.g"] == ("10", "0", "10", "10", "0")
        now_event = settling(f"{c}-s", client_now_ms())
        use(client, now_event)
        balance, second = current(client, c)
        assert tuple(
            plain(x)
            for x in (balance.credits_held, balance.period_charges, balance.overage_amount, balance.overage_due)
        ) == ("0", "10.5", "0.5", "0.185"), balance
        assert (plain(second.subtotal), plain(second.overage_amount), second.total_due) == ("10.5", "0.5", "0.18")
        assert {a.grant_id: plain(a.credits) for a in second.credits_applied} == {f"{c}.g": "10"}, second
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(start_ms), period_end=stamp(end_ms + 1), customer_id=c
            )
        )
        assert [
            tuple(plain(x) for x in (r.recognized_credits, r.recognized_overage, r.deferred, r.breakage))
            for r in report.customer_lines
        ] == [("0", "3.515", "5", "0"), ("5", "0.185", "0", "0")], report
        assert client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=final.invoice_number)) == final
