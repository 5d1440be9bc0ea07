"""An acceptance audit of README "Invoices and revenue", proto/tariff/v1/invoices.proto and the price models'
semantics (pricing.proto, PriceOverride in contracts.proto), over the wire against a real server, every amount
computed by hand from the docs (exact decimals), none read back from the server.

Everything happens in periods long over (2026-01 .. 2026-03), with `--close-grace off` so the server closes
nothing by itself while a test runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import InvalidArgument, TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess

CARD = "audit-credits"


def ms(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def ts(at_ms: int) -> Timestamp:
    stamp = Timestamp()
    stamp.FromMilliseconds(at_ms)
    return stamp


JAN = ms("2026-01-01T00:00:00")
FEB = ms("2026-02-01T00:00:00")
MAR = ms("2026-03-01T00:00:00")


def product(client: TariffClient, product_id: str, dimensions: Sequence[str] = ("k",)) -> None:
    client.pricing.CreateProduct(
        pricing_pb2.CreateProductRequest(
            product=pricing_pb2.Product(
                id=product_id,
                name=product_id,
                event_type=product_id,
                aggregation=pricing_pb2.SUM,
                value_key="n",
                pricing_dimensions=list(dimensions),
                unit="units",
            )
        )
    )


def tier(up_to: str, unit: str, flat: str) -> pricing_pb2.Tier:
    return pricing_pb2.Tier(up_to=up_to, unit_price=unit, flat_price=flat)


TIERS = [tier("100", "1", "10"), tier("200", "0.5", "5"), tier("", "0.1", "2")]


def catalogue(client: TariffClient) -> None:
    """One rate card in credits, in force from 2025: a product per price model."""
    for product_id in ("unit", "grad", "vol", "pack", "flat"):
        product(client, product_id)
    rates = [
        pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price="1", per_units="1000")),
        pricing_pb2.Rate(product_id="grad", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=TIERS)),
        pricing_pb2.Rate(product_id="vol", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME, tiers=TIERS)),
        pricing_pb2.Rate(product_id="pack", package=pricing_pb2.PackagePrice(package_size="10", package_price="3")),
        pricing_pb2.Rate(product_id="flat", flat=pricing_pb2.FlatPrice(price="7")),
    ]
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, name=CARD, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(ms("2025-01-01T00:00:00")))
    )


def customer(client: TariffClient, customer_id: str, currency: str, overage_price: str, start_ms: int = JAN) -> str:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract = client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-c",
            customer_id=customer_id,
            rate_card_id=CARD,
            starting_at=ts(start_ms),
            overage_policy=contracts_pb2.ALLOW,
            overage_price=overage_price,
            currency=currency,
        )
    )
    contract_id: str = contract.id
    return contract_id


def ingest(client: TariffClient, customer_id: str, rows: Sequence[tuple[str, str, float, int]]) -> None:
    """rows: (product, value of dimension k, n, timestamp_ms)."""
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"{customer_id}-{index}-{at_ms}",
            customer_id=customer_id,
            event_type=product_id,
            timestamp_ms=at_ms,
            dimensions={"k": k},
            values={"n": n},
        )
        for index, (product_id, k, n, at_ms) in enumerate(rows)
    ]
    ack = client.ingest_batch(events, f"{customer_id}-{rows[0][3]}-{len(rows)}")
    assert ack.accepted == len(events), ack.rejected


def preview(client: TariffClient, customer_id: str, at_ms: int = JAN) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=ts(at_ms))
    )
    return found


def close(client: TariffClient, customer_id: str, start_ms: int = JAN) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.ClosePeriod(
        invoices_pb2.ClosePeriodRequest(customer_id=customer_id, period_start=ts(start_ms))
    )
    return found


def amounts(invoice: invoices_pb2.Invoice) -> dict[str, Decimal]:
    return {line.line_id: Decimal(line.amount) for line in invoice.lines}


def but_final_fields(invoice: invoices_pb2.Invoice) -> invoices_pb2.Invoice:
    copy = invoices_pb2.Invoice()
    copy.CopyFrom(invoice)
    for name in ("invoice_number", "status", "closed_at"):
        copy.ClearField(name)
    return copy


def start_server(server_factory: ServerFactory, name: str) -> TariffClient:
    server = server_factory(name=name, extra_args=["--close-grace", "off"])
    return server.client()


# (currency, overage price, minor unit, the three lines' amount_due, overage_due, rounding_adjustment): lines of
# 0.5, 0.5 and 2.5 credits owe 0.005, 0.005 and 0.025 USD (0.5, 0.5, 2.5 JPY; 0.0005, 0.0005, 0.0025 BHD):
# each exactly half a minor unit, rounded half-even to 0, 0 and 2 minor units; their exact sum 3.5 minor units
# rounds once to 4, so the adjustment is 2 minor units.
HALVES = (
    ("USD", "0.01", 2, ["0.00", "0.00", "0.02"], "0.04", "0.02"),
    ("JPY", "1", 0, ["0", "0", "2"], "4", "2"),
    ("BHD", "0.001", 3, ["0.000", "0.000", "0.002"], "0.004", "0.002"),
    ("CLF", "0.0001", 4, ["0.0000", "0.0000", "0.0002"], "0.0004", "0.0002"),
)


def test_half_minor_units_round_half_even_per_line_and_once_per_invoice(server_factory: ServerFactory) -> None:
    with start_server(server_factory, "halves") as client:
        catalogue(client)
        for currency, price, places, line_dues, overage_due, adjustment in HALVES:
            who = f"halves-{currency}"
            customer(client, who, currency, price)
            ingest(
                client,
                who,
                [("unit", "a", 500, JAN + 1000), ("unit", "b", 500, JAN + 2000), ("unit", "c", 2500, JAN + 3000)],
            )
            draft = preview(client, who, JAN + 5 * 86_400_000)
            assert (draft.currency, draft.minor_unit, draft.pricing_unit) == (currency, places, "credits")
            assert (draft.period_start.ToMilliseconds(), draft.period_end.ToMilliseconds()) == (JAN, FEB)
            assert [line.line_id for line in draft.lines] == ["unit;k=a", "unit;k=b", "unit;k=c"]
            assert [line.amount for line in draft.lines] == ["0.5", "0.5", "2.5"]
            assert [line.overage for line in draft.lines] == ["0.5", "0.5", "2.5"]
            assert [line.amount_due for line in draft.lines] == line_dues
            assert (draft.subtotal, draft.overage_amount, draft.overage_price) == ("3.5", "3.5", price)
            assert (draft.overage_due, draft.rounding_adjustment, draft.total_due) == (
                overage_due,
                adjustment,
                overage_due,
            )
            assert draft.top_up_purchases == ("0" if places == 0 else "0." + "0" * places)
            assert (
                draft.status == invoices_pb2.INVOICE_DRAFT
                and not draft.invoice_number
                and not draft.HasField("closed_at")
            )
            final = close(client, who)
            assert final.status == invoices_pb2.INVOICE_FINAL and final.HasField("closed_at")
            assert but_final_fields(final) == but_final_fields(draft)
        numbers = [i.invoice_number for i in client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest()).invoices]
        assert numbers == ["INV-00000001", "INV-00000002", "INV-00000003", "INV-00000004"]
        # Two lines of 1.5 minor units round up to 2 each; their exact sum, 3, is one minor unit less: -1.
        for currency, price, dues, overage_due, adjustment in (
            ("EUR", "0.01", "0.02", "0.03", "-0.01"),
            ("KRW", "1", "2", "3", "-1"),
        ):
            who = f"down-{currency}"
            customer(client, who, currency, price)
            ingest(client, who, [("unit", "a", 1500, JAN + 1000), ("unit", "b", 1500, JAN + 2000)])
            draft = preview(client, who)
            assert [line.amount_due for line in draft.lines] == [dues, dues]
            assert (draft.overage_due, draft.rounding_adjustment, draft.total_due) == (
                overage_due,
                adjustment,
                overage_due,
            )


DAY_MS = 86_400_000
# (product, k, n) in January, hand-priced from pricing.proto: tiers [<=100: 1/unit + 10 flat; <=200: 0.5/unit + 5
# flat; above: 0.1/unit + 2 flat], package 3 per started 10, flat 7, unit 1 per 1000.
USAGE = [
    ("unit", "a", 1500),
    ("grad", "a", 60),
    ("grad", "a", 60),
    ("grad", "a", 130),
    ("grad", "b", 100),
    ("vol", "a", 100),
    ("vol", "b", 101),
    ("vol", "c", 250),
    ("vol", "d", 200),
    ("vol", "e", 100),
    ("vol", "e", 1),  # the whole 101 drops to the cheaper tier: this event gives 54.5 back
    ("pack", "a", 25),
    ("pack", "b", 30),
    ("pack", "c", 31),
    ("pack", "d", 0.5),
    ("flat", "a", 1),
    ("flat", "a", 2),
    ("flat", "a", 3),
]
LIST_PRICES = {
    "unit;k=a": "1.5",
    "grad;k=a": "172",  # 10 + 100 x 1 + 5 + 100 x 0.5 + 2 + 50 x 0.1
    "grad;k=b": "110",  # exactly the first tier's bound: the second tier is not entered
    "vol;k=a": "110",  # 100 reaches the first tier only: 10 + 100
    "vol;k=b": "55.5",  # 5 + 101 x 0.5
    "vol;k=c": "27",  # 2 + 250 x 0.1
    "vol;k=d": "105",  # 200 is the second tier's bound: 5 + 200 x 0.5
    "vol;k=e": "55.5",
    "pack;k=a": "9",  # 3 started packages
    "pack;k=b": "9",  # 3 whole packages
    "pack;k=c": "12",
    "pack;k=d": "3",  # half a unit starts a package
    "flat;k=a": "7",  # once in the period, whatever the events
}
# The contract's own price per model (PriceOverride.price): unit 2 per the rate's 1000; tiers replaced by a flat
# unit price 0.02 per the rate's per_units (1), flat fees dropped; package 4 per started package; flat 9.
OVERRIDE_PRICES = {"unit": "2", "grad": "0.02", "vol": "0.02", "pack": "4", "flat": "9"}
OVERRIDDEN = {
    "unit;k=a": "3",
    "grad;k=a": "5",
    "grad;k=b": "2",
    "vol;k=a": "2",
    "vol;k=b": "2.02",
    "vol;k=c": "5",
    "vol;k=d": "4",
    "vol;k=e": "2.02",
    "pack;k=a": "12",
    "pack;k=b": "12",
    "pack;k=c": "16",
    "pack;k=d": "4",
    "flat;k=a": "9",
}


def override(client: TariffClient, contract_id: str, product_id: str, *, price: str = "", multiplier: str = "") -> None:
    adjustment = contracts_pb2.PriceOverride(id=f"{contract_id}-{product_id}", product_id=product_id)
    if price:
        adjustment.price = price
    else:
        adjustment.multiplier = multiplier
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=adjustment))


def test_each_price_model_and_each_override_charges_what_the_docs_say(server_factory: ServerFactory) -> None:
    with start_server(server_factory, "models") as client:
        catalogue(client)
        contracts = {who: customer(client, who, "USD", "1") for who in ("list", "priced", "multiplied")}
        for product_id, price in OVERRIDE_PRICES.items():
            override(client, contracts["priced"], product_id, price=price)
            override(client, contracts["multiplied"], product_id, multiplier="1.5")
        rows = [(p, k, n, JAN + DAY_MS + i * 60_000) for i, (p, k, n) in enumerate(USAGE)]
        for who in contracts:
            ingest(client, who, rows)
            ingest(client, who, [("flat", "a", 5, FEB + DAY_MS)])  # the next period pays the flat fee again
        expected = {
            "list": LIST_PRICES,
            "priced": OVERRIDDEN,
            "multiplied": {line: str(Decimal(price) * Decimal("1.5")) for line, price in LIST_PRICES.items()},
        }
        for who, prices in expected.items():
            draft = preview(client, who)
            assert amounts(draft) == {line: Decimal(price) for line, price in prices.items()}, who
            assert Decimal(draft.subtotal) == sum(Decimal(p) for p in prices.values())
            assert Decimal(draft.total_due) == sum(Decimal(p) for p in prices.values())
            flat = next(line for line in draft.lines if line.line_id == "flat;k=a")
            assert (flat.quantity, flat.events) == ("6", 3)
            february = preview(client, who, FEB)
            assert [(line.line_id, line.amount) for line in february.lines] == [("flat;k=a", prices["flat;k=a"])]
            final = close(client, who)
            assert but_final_fields(final) == but_final_fields(draft)
            assert preview(client, who, JAN + DAY_MS) == final  # a closed period previews as its final invoice
        volume = next(line for line in preview(client, "list").lines if line.line_id == "vol;k=e")
        assert [p.unit_price for p in volume.prices] == ["0.549504950495"]  # 55.5 / 101 = 0.549504950495|0495...
        graduated = next(line for line in preview(client, "list").lines if line.line_id == "grad;k=a")
        assert [(p.version, p.unit_price, p.quantity, p.amount, p.events) for p in graduated.prices] == [
            (1, "0.688", "250", "172", 3)
        ]
        explain_pages(client)


def explain(
    client: TariffClient, line: str, page_size: int, token: str = "", customer_id: str = "list"
) -> invoices_pb2.ExplainLineItemResponse:
    found: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(
        invoices_pb2.ExplainLineItemRequest(
            customer_id=customer_id, period_start=ts(JAN), line_id=line, page_size=page_size, page_token=token
        )
    )
    return found


def explain_pages(client: TariffClient) -> None:
    """The graduated line's three events: 60 units cost 10 + 60 = 70; the next 60 (to 120) 100 + 10 + 5 + 20 - 70 =
    55; the last 130 (to 250) 172 - 125 = 47. unit_price = amount / quantity to 12 places, half-even."""
    first = explain(client, "grad;k=a", 2)
    assert (first.line_amount, first.line_quantity) == ("172", "250") and first.next_page_token
    rest = explain(client, "grad;k=a", 2, first.next_page_token)
    assert not rest.next_page_token
    events = [*first.events, *rest.events]
    assert [(e.quantity, e.amount, e.unit_price, e.overage, e.version) for e in events] == [
        ("60", "70", "1.166666666667", "70", 1),
        ("60", "55", "0.916666666667", "55", 1),
        ("130", "47", "0.361538461538", "47", 1),
    ]
    assert len({e.transaction_id for e in events}) == 3 and not any(e.draws for e in events)
    volume = explain(client, "vol;k=e", 0)
    assert [(e.quantity, e.amount, e.unit_price) for e in volume.events] == [
        ("100", "110", "1.1"),
        ("1", "-54.5", "-54.5"),
    ]
    assert (volume.line_amount, volume.next_page_token) == ("55.5", "")


def test_a_contract_starting_on_the_31st_has_month_end_periods(server_factory: ServerFactory) -> None:
    """Anchored on Jan 31: Jan 31 - Feb 28 (no Feb 31), Feb 28 - Mar 31, Mar 31 - Apr 30 (each from the anchor)."""
    jan31, feb28, mar31, apr30 = (ms(f"2026-{d}T00:00:00") for d in ("01-31", "02-28", "03-31", "04-30"))
    with start_server(server_factory, "day31") as client:
        catalogue(client)
        customer(client, "d31", "USD", "1", start_ms=jan31)
        ingest(client, "d31", [("unit", "a", 1000, feb28 - 1), ("unit", "a", 2000, feb28), ("unit", "a", 4000, mar31)])
        periods = [
            preview(client, "d31", at) for at in (jan31 + DAY_MS, ms("2026-03-01T00:00:00"), ms("2026-04-15T00:00:00"))
        ]
        assert [(p.period_start.ToMilliseconds(), p.period_end.ToMilliseconds()) for p in periods] == [
            (jan31, feb28),
            (feb28, mar31),
            (mar31, apr30),
        ]
        assert [p.subtotal for p in periods] == ["1", "2", "4"]
        with pytest.raises(InvalidArgument) as not_a_start:
            close(client, "d31", ms("2026-03-01T00:00:00"))
        assert "2026-02-28T00:00:00Z" in not_a_start.value.details
        with pytest.raises(InvalidArgument) as before_the_contract:
            close(client, "d31", JAN)
        assert "2026-01-31T00:00:00Z" in before_the_contract.value.details
        # "exactly at period_start": a nanosecond past February's start is no period's start (the server dropped
        # the sub-millisecond part and closed February)
        past_start = invoices_pb2.ClosePeriodRequest(
            customer_id="d31", period_start=Timestamp(seconds=feb28 // 1000, nanos=1)
        )
        with pytest.raises(InvalidArgument) as past_a_start:
            client.invoices.ClosePeriod(past_start)
        assert [v.field for v in past_a_start.value.field_violations] == ["period_start"]
        assert "2026-02-28T00:00:00Z" in past_a_start.value.details
        assert preview(client, "d31", feb28).status == invoices_pb2.INVOICE_DRAFT  # nothing closed
        closed = close(client, "d31", feb28)
        assert (closed.period_end.ToMilliseconds(), closed.total_due, closed.invoice_number) == (
            mar31,
            "2.00",
            "INV-00000001",
        )


def month_ends_before(anchor: datetime, now: datetime) -> list[int]:
    """The ends of the monthly periods anchored on `anchor` (day clamped to the month's last) that ended by now."""
    ends: list[int] = []
    months = 1
    while True:
        index = anchor.year * 12 + anchor.month - 1 + months
        year, month = divmod(index, 12)
        last_day = (datetime(year + (month + 1) // 12, (month + 1) % 12 + 1, 1) - datetime(year, month + 1, 1)).days
        end = datetime(year, month + 1, min(anchor.day, last_day), tzinfo=UTC)
        if end > now:
            return ends
        ends.append(int(end.timestamp() * 1000))
        months += 1


def test_late_usage_close_and_close_due_periods(server_factory: ServerFactory) -> None:
    jan31 = ms("2026-01-31T00:00:00")
    with start_server(server_factory, "closing") as client:
        catalogue(client)
        for who, start in (("b", JAN), ("a", JAN), ("m", jan31)):
            customer(client, who, "USD", "1", start_ms=start)
        ingest(client, "b", [("unit", "a", 1000, JAN + DAY_MS)])
        january = close(client, "b")
        assert (january.invoice_number, january.total_due) == ("INV-00000001", "1.00")
        assert close(client, "b") == january  # closing again answers the same invoice, numbers nothing
        late = [
            usage_pb2.UsageEvent(
                transaction_id=f"late-{at}", customer_id="b", event_type="unit", timestamp_ms=at, values={"n": 3000}
            )
            for at in (JAN + 2 * DAY_MS, FEB + 2 * DAY_MS)
        ]
        ack = client.ingest_batch(late, "late")
        assert ack.accepted == 1 and [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"]
        assert preview(client, "b", FEB).subtotal == "3" and preview(client, "b").subtotal == "1"

        now = datetime.now(UTC)
        monthly, day31 = month_ends_before(datetime(2026, 1, 1), now), month_ends_before(datetime(2026, 1, 31), now)
        # Every ended period but b's January (closed above), the earliest end first, then by contract id.
        due = sorted(
            [(end, "a-c") for end in monthly] + [(end, "b-c") for end in monthly[1:]] + [(end, "m-c") for end in day31]
        )
        closed = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices
        assert [(i.period_end.ToMilliseconds(), i.contract_id) for i in closed] == due
        assert [i.invoice_number for i in closed] == [f"INV-{n:08d}" for n in range(2, len(due) + 2)]
        assert list(client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices) == []
        february = next(i for i in closed if i.customer_id == "b" and i.period_start.ToMilliseconds() == FEB)
        assert (february.subtotal, february.total_due) == ("3", "3.00")
        listed = client.invoices.ListInvoices(
            invoices_pb2.ListInvoicesRequest(customer_id="m", period_start_from=ts(jan31), period_start_before=ts(MAR))
        )
        assert [i.period_start.ToMilliseconds() for i in listed.invoices] == [jan31, ms("2026-02-28T00:00:00")]


def grant(client: TariffClient, contract_id: str, grant_id: str, amount: str, paid: str) -> None:
    client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=grant_id, contract_id=contract_id, kind=contracts_pb2.PREPAID, amount=amount, paid_amount=paid
            )
        )
    )


def test_revenue_recognises_a_third_then_rounds_cumulatively(server_factory: ServerFactory) -> None:
    """1 paid for 3 credits, one drawn a month: recognised 0.333333333333, 0.333333333334, 0.333333333333 (the
    cumulative figure rounded: 0.333333333333, 0.666666666667, 1); the fourth credit in March is overage at 0.01."""
    apr = ms("2026-04-01T00:00:00")
    with start_server(server_factory, "revenue") as client:
        catalogue(client)
        contract_id = customer(client, "r", "USD", "0.01")
        grant(client, contract_id, "third", "3", "1")
        ingest(client, "r", [("unit", "a", 1000, JAN + DAY_MS), ("unit", "a", 1000, FEB + DAY_MS)])
        ingest(client, "r", [("unit", "a", 1000, MAR + DAY_MS), ("unit", "a", 1000, MAR + 2 * DAY_MS)])
        march = preview(client, "r", MAR)
        assert [(c.grant_id, c.credits) for c in march.credits_applied] == [("third", "1")]
        assert (march.overage_amount, march.overage_due, march.total_due) == ("1", "0.01", "0.01")
        assert [(g.granted, g.drawn, g.remaining, g.expired) for g in march.grant_balances] == [("3", "3", "0", "0")]
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(apr), customer_id="r")
        )
        assert report.currency == "USD"
        by_customer = [
            (line.period_start.ToMilliseconds(), line.recognized_credits, line.recognized_overage, line.deferred)
            for line in report.customer_lines
        ]
        assert [(start, Decimal(a), Decimal(b), Decimal(c)) for start, a, b, c in by_customer] == [
            (JAN, Decimal("0.333333333333"), 0, Decimal("0.666666666667")),
            (FEB, Decimal("0.333333333334"), 0, Decimal("0.333333333333")),
            (MAR, Decimal("0.333333333333"), Decimal("0.01"), 0),
        ]
        assert [Decimal(line.recognized) for line in report.lines] == [
            Decimal("0.333333333333"),
            Decimal("0.333333333334"),
            Decimal("0.343333333333"),
        ]
        r = report.reconciliation
        assert [
            Decimal(x) for x in (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end)
        ] == [
            0,
            1,
            1,
            0,
            0,
        ]
        assert (
            r.reconciles
            and Decimal(r.recognized_overage) == Decimal("0.01")
            and Decimal(r.recognized) == Decimal("1.01")
        )
        split_by_product(client)
        sold_in_february(client)
        overage_rounded_per_product(client)
        with pytest.raises(InvalidArgument):  # r bills in USD, split in EUR: one currency per report
            client.invoices.GetRevenueReport(
                invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(apr))
            )


def split_by_product(client: TariffClient) -> None:
    """30 credits paid 10; January draws 1 (unit) + 7 (flat) = 8: 10 x 8 / 30 = 2.666666666667 recognised, split 1:7
    by the largest remainder: 0.333333333333 (exactly 0.3333333333333375) and 2.333333333334 (2.3333333333333625)."""
    contract_id = customer(client, "split", "EUR", "1")
    grant(client, contract_id, "thirty", "30", "10")
    ingest(client, "split", [("unit", "a", 1000, JAN + DAY_MS), ("flat", "a", 1, JAN + DAY_MS)])
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(FEB), customer_id="split")
    )
    assert report.currency == "EUR"
    assert [(line.product_id, Decimal(line.recognized_credits)) for line in report.lines] == [
        ("flat", Decimal("2.333333333334")),
        ("unit", Decimal("0.333333333333")),
    ]
    (line,) = report.customer_lines
    assert (Decimal(line.recognized_credits), Decimal(line.deferred)) == (
        Decimal("2.666666666667"),
        Decimal("7.333333333333"),
    )


def test_corners_multi_product_events_zero_quantities_and_a_third_multiplier(server_factory: ServerFactory) -> None:
    with start_server(server_factory, "corners") as client:
        catalogue(client)
        # A second product on the unit product's events: one event, two lines.
        client.pricing.CreateProduct(
            pricing_pb2.CreateProductRequest(
                product=pricing_pb2.Product(
                    id="calls", name="calls", event_type="unit", aggregation=pricing_pb2.COUNT, unit="calls"
                )
            )
        )
        card = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD,
            based_on_version=1,
            upsert_rates=[
                pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="0.25")),
                pricing_pb2.Rate(
                    product_id="grad",
                    tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=TIERS, per_units="1000"),
                ),
            ],
        )
        client.pricing.CreateDraftVersion(card)
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=2, effective_from=ts(ms("2025-06-01T00:00:00"))
            )
        )
        plain = customer(client, "plain", "USD", "1")
        third = customer(client, "third", "USD", "1")
        override(client, third, "unit", multiplier="0.333333333333333333")
        override(client, third, "grad", price="0.02")
        for who in ("plain", "third"):
            ingest(
                client,
                who,
                [("unit", "a", 1000, JAN + 60_000 * i) for i in range(1, 4)]
                + [
                    ("unit", "zero", 0, JAN + 300_000),
                    ("flat", "zero", 0, JAN + 360_000),
                    ("grad", "a", 5000, JAN + 420_000),
                ],
            )
        plain_lines = {line.line_id: line for line in preview(client, "plain").lines}
        # Three events of 1,000 units feed `unit` (1 per 1,000) and `calls` (0.25 a call); with the 0-unit event, 4 calls.
        assert (plain_lines["unit;k=a"].amount, plain_lines["calls"].amount, plain_lines["calls"].quantity) == (
            "3",
            "1",
            "4",
        )
        zero = plain_lines["unit;k=zero"]
        assert (zero.quantity, zero.amount, zero.events) == ("0", "0", 1)
        assert [(p.unit_price, p.quantity, p.amount) for p in zero.prices] == [("0", "0", "0")]
        # Tier bounds count units, tier prices are per 1,000 units: 10 + 100 x 1/1000 + 5 + 100 x 0.5/1000 + 2 +
        # 4,800 x 0.1/1000.
        assert plain_lines["grad;k=a"].amount == "17.63"
        explained = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="plain", period_start=ts(JAN), line_id="unit;k=zero")
        )
        assert [(e.quantity, e.amount, e.unit_price) for e in explained.events] == [("0", "0", "")]
        third_lines = {line.line_id: line for line in preview(client, "third").lines}
        # The multiplier scales the cumulative price, rounded to 10^-12 once: 3 x 0.333333333333333333 = 0.999999999999999999
        # is 1 at 10^-12, whatever each event's share.
        assert third_lines["unit;k=a"].amount == "1"
        # Each event is price(after) - price(before), each side rounded to the pico: 0.333333333333 - 0,
        # 0.666666666667 - 0.333333333333, 1 - 0.666666666667.
        thirds = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="third", period_start=ts(JAN), line_id="unit;k=a")
        )
        assert [e.amount for e in thirds.events] == ["0.333333333333", "0.333333333334", "0.333333333333"]
        # PriceOverride's own example: 5,000 units at per_units 1000 and price "0.02" cost 0.1, tiers and flat fees dropped.
        assert third_lines["grad;k=a"].amount == "0.1"
        # FLAT is due once the period's quantity is above zero: an event adding 0 units charges nothing.
        assert (plain_lines["flat;k=zero"].amount, third_lines["flat;k=zero"].amount) == ("0", "0")
        finals = [close(client, who) for who in ("plain", "third")]
        listed = client.invoices.ListInvoices(
            invoices_pb2.ListInvoicesRequest(status=invoices_pb2.INVOICE_FINAL, page_size=1)
        )
        assert [i.invoice_number for i in listed.invoices] == [finals[0].invoice_number] and listed.next_page_token
        assert plain  # the contract id is not needed further


def test_an_expired_grant_breaks_at_cost_basis_and_explain_shows_each_draw(server_factory: ServerFactory) -> None:
    """3 credits paid 1, no expiry: a 1-credit event, then a 2.5-credit one that draws the last 2 and leaves 0.5
    overage. Another grant of 3 paid 1, drawn 1, expires exactly at a period boundary a few seconds from now (so the
    server's clock records it only after the usage is rated): its last usable instant lies in the period ending
    there, which recognises 0 and breaks 2 credits: 1 - 0.333333333333 = 0.666666666667."""
    with start_server(server_factory, "breakage") as client:
        catalogue(client)
        boundary = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        anchor = boundary.replace(year=boundary.year - 1)  # periods run from here, one ending at the boundary
        anchor_ms, boundary_ms = int(anchor.timestamp() * 1000), int(boundary.timestamp() * 1000)
        last_ms = int(months_later(boundary, -1).timestamp() * 1000)  # the period ending at the boundary
        drawn = customer(client, "drawn", "USD", "1", start_ms=anchor_ms)
        broken = customer(client, "broken", "USD", "1", start_ms=anchor_ms)
        for contract_id in (drawn, broken):
            paid = contracts_pb2.Grant(
                id=f"{contract_id}-g", contract_id=contract_id, kind=contracts_pb2.PREPAID, amount="3", paid_amount="1"
            )
            if contract_id == broken:
                paid.expires_at.CopyFrom(ts(boundary_ms))
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=paid))
        ingest(client, "broken", [("unit", "a", 1000, anchor_ms + DAY_MS)])
        ingest(client, "drawn", [("unit", "a", 1000, anchor_ms + DAY_MS), ("unit", "a", 2500, anchor_ms + 2 * DAY_MS)])
        first = preview(client, "drawn", anchor_ms)
        assert [(c.grant_id, c.credits) for c in first.credits_applied] == [("drawn-c-g", "3")]
        assert (first.overage_amount, first.total_due) == ("0.5", "0.50")
        pages = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="drawn", period_start=ts(anchor_ms), line_id="unit;k=a")
        )
        assert [([(d.grant_id, d.credits) for d in e.draws], e.overage, e.amount) for e in pages.events] == [
            ([("drawn-c-g", "1")], "0", "1"),
            ([("drawn-c-g", "2")], "0.5", "2.5"),
        ]
        balances = [
            [(g.granted, g.drawn, g.remaining, g.expired) for g in preview(client, "broken", at).grant_balances]
            for at in (anchor_ms, last_ms)
        ]
        # The grant expires at the last period's end: that invoice shows it expired.
        assert balances == [[("3", "1", "2", "0")], [("3", "1", "0", "2")]]
        report = wait_for_breakage(client, "broken", anchor_ms, boundary_ms + 1000)
        by_period = {line.period_start.ToMilliseconds(): line for line in report.customer_lines}
        assert (Decimal(by_period[anchor_ms].recognized_credits), Decimal(by_period[anchor_ms].breakage)) == (
            Decimal("0.333333333333"),
            Decimal(0),
        )
        assert (Decimal(by_period[last_ms].breakage), Decimal(by_period[last_ms].deferred)) == (
            Decimal("0.666666666667"),
            Decimal(0),
        )
        assert Decimal(by_period[boundary_ms].breakage) == 0
        assert all(Decimal(line.breakage) == 0 and line.deferred == "" for line in report.lines)
        r = report.reconciliation
        assert (Decimal(r.prepaid_sold), Decimal(r.breakage), Decimal(r.deferred_end), r.reconciles) == (
            Decimal(1),
            Decimal("0.666666666667"),
            Decimal(0),
            True,
        )


def months_later(moment: datetime, months: int) -> datetime:
    index = moment.year * 12 + moment.month - 1 + months
    return moment.replace(year=index // 12, month=index % 12 + 1)


def wait_for_breakage(client: TariffClient, customer_id: str, start_ms: int, end_ms: int) -> invoices_pb2.RevenueReport:
    """The server's clock records an expiry a moment after it is due (its driver looks every 50 ms)."""
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=ts(start_ms), period_end=ts(end_ms), customer_id=customer_id
    )
    for _ in range(400):
        report: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(request)
        if Decimal(report.reconciliation.breakage):
            return report
        time.sleep(0.05)
    raise AssertionError(f"no breakage recorded: {report}")


def test_top_ups_bought_by_january_events_are_due_once_rounded_on_january(server_factory: ServerFactory) -> None:
    """Below 1 credit, buy up to 2 at 0.0025 each (at most twice): the first event (1 credit, no grant yet) is all
    overage and buys 2 credits for 0.005; the second (2 credits) draws them and buys 2 more for 0.005; the third
    (1 credit) draws 1 and leaves 1, not below the threshold. 0.005 + 0.005 = 0.01, rounded once (each alone: 0.00)."""
    with start_server(server_factory, "top-ups") as client:
        catalogue(client)
        contract_id = customer(client, "t", "USD", "1")
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="2", price_per_credit="0.0025", max_per_period=2)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        for n, at in ((1000, JAN + DAY_MS), (2000, JAN + 2 * DAY_MS), (1000, JAN + 3 * DAY_MS)):
            ingest(client, "t", [("unit", "a", n, at)])
        january = preview(client, "t")
        assert sorted(c.credits for c in january.credits_applied) == ["1", "2"]
        assert (january.overage_amount, january.overage_due, january.rounding_adjustment) == ("1", "1.00", "0.00")
        assert (january.top_up_purchases, january.total_due) == ("0.01", "1.01")
        assert but_final_fields(close(client, "t")) == but_final_fields(january)
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(FEB), customer_id="t")
        )
        (line,) = report.customer_lines
        assert [Decimal(x) for x in (line.recognized_credits, line.recognized_overage, line.deferred)] == [
            Decimal("0.0075"),
            1,
            Decimal("0.0025"),
        ]
        r = report.reconciliation
        assert (Decimal(r.prepaid_sold), Decimal(r.deferred_end), r.reconciles) == (
            Decimal("0.01"),
            Decimal("0.0025"),
            True,
        )


def test_line_ids_sort_dimension_keys_and_escape_values(server_factory: ServerFactory) -> None:
    with start_server(server_factory, "line-ids") as client:
        catalogue(client)
        product(client, "two", ("z", "a"))
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                upsert_rates=[pricing_pb2.Rate(product_id="two", unit=pricing_pb2.UnitPrice(price="1"))],
            )
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=2, effective_from=ts(ms("2025-06-01T00:00:00"))
            )
        )
        customer(client, "ids", "USD", "1")
        event = usage_pb2.UsageEvent(
            transaction_id="odd",
            customer_id="ids",
            event_type="two",
            timestamp_ms=JAN + DAY_MS,
            dimensions={"z": "a;b=c%", "a": "café"},
            values={"n": 2},
        )
        assert client.ingest_batch([event], "odd").accepted == 1
        (line,) = preview(client, "ids").lines
        assert (line.line_id, dict(line.dimensions), line.amount) == (
            "two;a=caf%C3%A9;z=a%3Bb%3Dc%25",
            {"z": "a;b=c%", "a": "café"},
            "2",
        )
        explained = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="ids", period_start=ts(JAN), line_id=line.line_id)
        )
        assert [e.transaction_id for e in explained.events] == ["odd"]
        with pytest.raises(InvalidArgument) as too_big:
            client.invoices.ExplainLineItem(
                invoices_pb2.ExplainLineItemRequest(
                    customer_id="ids", period_start=ts(JAN), line_id=line.line_id, page_size=1001
                )
            )
        assert "page_size" in too_big.value.details


def test_a_contract_starting_off_the_hour(server_factory: ServerFactory) -> None:
    """Periods from 00:30: the hour 00:00-01:00 on Feb 1 holds the boundary. The line amounts are exact on both
    sides; the version parts of that hour count in the earlier period only."""
    start = JAN + 30 * 60_000
    with start_server(server_factory, "off-hour") as client:
        catalogue(client)
        customer(client, "half", "USD", "1", start_ms=start)
        ingest(client, "half", [("unit", "a", 1000, FEB + 10 * 60_000), ("unit", "a", 2000, FEB + 50 * 60_000)])
        first, second = preview(client, "half", start), preview(client, "half", FEB + 30 * 60_000)
        assert (first.period_start.ToMilliseconds(), first.period_end.ToMilliseconds()) == (start, FEB + 30 * 60_000)
        assert [(line.amount, line.quantity) for line in first.lines] == [("1", "1000")]
        assert [(line.amount, line.quantity) for line in second.lines] == [("2", "2000")]
        assert [(p.amount, p.quantity) for p in first.lines[0].prices] == [("3", "3000")]
        assert [(p.amount, p.quantity) for p in second.lines[0].prices] == []
        assert (first.total_due, second.total_due) == ("1.00", "2.00")
        now = datetime.now(UTC)
        current = preview(client, "half", int(now.timestamp() * 1000))
        unset = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="half"))
        assert unset == current and current.period_start.ToMilliseconds() <= now.timestamp() * 1000


def sold_in_february(client: TariffClient) -> None:
    """A grant starting on Feb 10 is sold at the start of February's period, and is on no January invoice."""
    contract_id = customer(client, "later", "USD", "1")
    client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id="feb",
                contract_id=contract_id,
                kind=contracts_pb2.PREPAID,
                amount="5",
                paid_amount="4",
                starts_at=ts(FEB + 9 * DAY_MS),
            )
        )
    )
    assert [g.grant_id for g in preview(client, "later", JAN).grant_balances] == []
    assert [(g.grant_id, g.remaining) for g in preview(client, "later", FEB).grant_balances] == [("feb", "5")]
    sold = []
    for start, end in ((JAN, FEB), (FEB, MAR)):
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=ts(start), period_end=ts(end), customer_id="later")
        )
        r = report.reconciliation
        sold.append(
            (
                Decimal(r.deferred_start),
                Decimal(r.prepaid_sold),
                Decimal(r.deferred_end),
                report.customer_lines[0].deferred,
            )
        )
    assert sold == [(Decimal(0), Decimal(0), Decimal(0), "0"), (Decimal(0), Decimal(4), Decimal(4), "4")]


def invoices_cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "server.cli", "invoices", *args, "--server", server.target],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_the_cli_period_is_the_one_starting_in_that_month_also_the_first(server_factory: ServerFactory) -> None:
    """README: `--period YYYY-MM` is the period that starts in that calendar month. A contract starting on Jan 31
    has no period at Jan 1, yet its first period starts in January."""
    server = server_factory(name="cli-period", extra_args=["--close-grace", "off"])
    jan31 = ms("2026-01-31T00:00:00")
    with server.client() as client:
        catalogue(client)
        customer(client, "d31", "USD", "1", start_ms=jan31)
        ingest(client, "d31", [("unit", "a", 1000, jan31 + DAY_MS), ("unit", "a", 2000, ms("2026-03-01T00:00:00"))])
    shown = invoices_cli(server, "preview", "d31", "--period", "2026-01", "--json")
    assert shown.returncode == 0, shown.stderr
    assert (json.loads(shown.stdout)["period_start"], json.loads(shown.stdout)["subtotal"]) == (
        "2026-01-31T00:00:00Z",
        "1",
    )
    second = json.loads(invoices_cli(server, "preview", "d31", "--period", "2026-02", "--json").stdout)
    assert (second["period_start"], second["subtotal"]) == ("2026-02-28T00:00:00Z", "2")
    # `invoices explain --period` reads the same period (it asked for the one starting on the 1st: none here).
    explained = invoices_cli(server, "explain", "d31", "unit;k=a", "--period", "2026-01", "--json")
    assert explained.returncode == 0, explained.stderr
    events = json.loads(explained.stdout)
    assert (events["line_amount"], [e["timestamp_ms"] for e in events["events"]]) == ("1", [str(jan31 + DAY_MS)])
    closed = invoices_cli(server, "close", "d31", "--period", "2026-01", "--json")
    assert closed.returncode == 0, closed.stderr
    assert [(i["invoice_number"], i["period_start"]) for i in json.loads(closed.stdout)["invoices"]] == [
        ("INV-00000001", "2026-01-31T00:00:00Z")
    ]
    nothing = invoices_cli(server, "preview", "d31", "--period", "2025-12")
    assert nothing.returncode != 0


def overage_rounded_per_product(client: TariffClient) -> None:
    """Two lines of one product, 1 credit of overage each at 0.0000000000005: half a pico each, one pico together.
    Revenue rounds once per customer, period and product (1 pico), not per line (0 + 0)."""
    customer(client, "pico", "EUR", "0.0000000000005")
    ingest(client, "pico", [("unit", "a", 1000, JAN + DAY_MS), ("unit", "b", 1000, JAN + DAY_MS)])
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(period_start=ts(JAN), period_end=ts(FEB), customer_id="pico")
    )
    assert [(line.customer_id, line.product_id, line.recognized_overage) for line in report.lines] == [
        ("", "unit", "0.000000000001")
    ]
    assert [(line.customer_id, line.product_id, line.recognized_overage) for line in report.customer_lines] == [
        ("pico", "", "0.000000000001")
    ]
    assert (preview(client, "pico").overage_due, preview(client, "pico").total_due) == ("0.00", "0.00")
