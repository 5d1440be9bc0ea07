"""An audit of one AI customer's month over the wire, end to end: five products priced by five models (UNIT per
1M tokens over model x region, GRADUATED with a flat fee, VOLUME, PACKAGE, FLAT), a contract override, prepaid
grants of three cost bases, priorities and product lists (one expiring inside the period, one rolling over at its
end), a promotional grant starting mid-period, an automatic top-up, a retroactive publish re-rating the open
period (a cut, and a VOLUME refund), a hold settled by usage and one expiring by its TTL, events in the last
millisecond of the period and the first of the next, then the close: the invoice, the revenue report, the
balances before and after, the ROLLOVER grant of the next period, and every read again after a restart.

Every amount asserted was computed by hand from pricing.proto (Rate, PublishVersion), contracts.proto (Grant,
PriceOverride), balance.proto (GrantBalance), invoices.proto (Invoice, InvoiceGrantBalance), README "Credits and
the gateway" and "Invoices and revenue", and docs/architecture.md §3; the arithmetic is written beside it.

The server's clock is real, so the month is placed to end a few seconds after the module starts: E (the period's
end) = now + 26 s, S (the contract's start, the period's start) = E - 1 calendar month, off the hour. Grant G1
expires at X = now + 20 s, inside the period. Everything dated in the past of the period is sent at once; what
must be rated before X is (the whole setup takes well under a second), and the module then waits for X and for E
(no assertion depends on how fast anything ran: phases are ordered by waiting for the instants they need).

Catalogue (rate card `month`, pricing unit credits), version 1 in force since 2026-01-01:
  tokens  SUM of `tokens` (event `llm`), dims [model, region]: UNIT {model=gpt-4} 30 per 1,000,000;
          {model=gpt-4, region=eu} 36 per 1,000,000 (the more specific match wins)
  images  COUNT (event `image`), dims [model]: GRADUATED tiers [up to 10: 1 a unit + flat 5], [beyond: 0.5]
  storage SUM of `gb` (event `store`), dims [region]: VOLUME [up to 100: 0.1], [beyond: 0.05]
  calls   COUNT (event `call`): PACKAGE of 100 at 2
  seat    COUNT (event `seat`): FLAT 25
Version 2 (based on 1), published mid-period from H = the hour after S + 15 days' hour: tokens gpt-4 24, gpt-4/eu
30, images' second tier 0.4; the rest as in version 1.
Contract `ai-c` from S, ALLOW, overage 0.4 USD a credit; override: tokens {region=eu} multiplier 0.5.
Grants (burn order: priority, then earliest expiry, then narrowest product list):
  G1 PREPAID 100 credits paid 50 USD (0.5 a credit), priority 1, [calls, images, storage], from S, expires X
  G2 PREPAID 200 credits paid 160 USD (0.8 a credit), priority 0, [tokens], from S, rollover_fraction 0.5
  G3 PROMOTIONAL 20 credits, priority 3, every product, from S + 20 days
Top-up policy: threshold 100, recharge_to 150, 0.9 USD a credit, at most 2 a period."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess, wait_for

CARD = "month"
CUSTOMER = "ai"
CONTRACT = "ai-c"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
MILLION = 1_000_000
CARD_FROM_MS = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)


def tier(up_to: str, unit_price: str, flat: str = "") -> pricing_pb2.Tier:
    return pricing_pb2.Tier(up_to=up_to, unit_price=unit_price, flat_price=flat)


def version_rates(gpt4: str, gpt4_eu: str, images_beyond: str) -> list[pricing_pb2.Rate]:
    r = pricing_pb2
    return [
        r.Rate(product_id="tokens", match={"model": "gpt-4"}, unit=r.UnitPrice(price=gpt4, per_units="1000000")),
        r.Rate(
            product_id="tokens",
            match={"model": "gpt-4", "region": "eu"},
            unit=r.UnitPrice(price=gpt4_eu, per_units="1000000"),
        ),
        r.Rate(
            product_id="images",
            tiered=r.TieredPrice(mode=r.GRADUATED, tiers=[tier("10", "1", "5"), tier("", images_beyond)]),
        ),
        r.Rate(product_id="storage", tiered=r.TieredPrice(mode=r.VOLUME, tiers=[tier("100", "0.1"), tier("", "0.05")])),
        r.Rate(product_id="calls", package=r.PackagePrice(package_size="100", package_price="2")),
        r.Rate(product_id="seat", flat=r.FlatPrice(price="25")),
    ]


def catalogue(client: TariffClient) -> None:
    p = pricing_pb2
    products = [
        p.Product(
            id="tokens", event_type="llm", aggregation=p.SUM, value_key="tokens", pricing_dimensions=["model", "region"]
        ),
        p.Product(id="images", event_type="image", aggregation=p.COUNT, pricing_dimensions=["model"]),
        p.Product(id="storage", event_type="store", aggregation=p.SUM, value_key="gb", pricing_dimensions=["region"]),
        p.Product(id="calls", event_type="call", aggregation=p.COUNT),
        p.Product(id="seat", event_type="seat", aggregation=p.COUNT),
    ]
    for product in products:
        client.pricing.CreateProduct(p.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(p.CreateRateCardRequest(id=CARD, name=CARD, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        p.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=version_rates("30", "36", "0.5"))
    )
    client.pricing.PublishVersion(
        p.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=stamp(CARD_FROM_MS))
    )


def event(key: str, event_type: str, at_ms: int, dims: dict[str, str], **values: float) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=key,
        customer_id=CUSTOMER,
        event_type=event_type,
        timestamp_ms=at_ms,
        dimensions=dims,
        values=values,
    )


def send(client: TariffClient, batch_id: str, *events: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch(list(events), batch_id)
    assert (ack.accepted, list(ack.rejected)) == (len(events), []), ack


def counted(key: str, event_type: str, count: int, at_ms: int, dims: dict[str, str]) -> list[usage_pb2.UsageEvent]:
    """`count` events of a COUNT product, a millisecond apart from at_ms."""
    return [event(f"{key}-{i}", event_type, at_ms + i, dims) for i in range(count)]


def grant(client: TariffClient, grant_id: str, amount: str, paid: str, priority: int, **fields: Any) -> None:
    kind = contracts_pb2.PREPAID if paid != "0" else contracts_pb2.PROMOTIONAL
    made = contracts_pb2.Grant(
        id=grant_id, contract_id=CONTRACT, kind=kind, amount=amount, paid_amount=paid, priority=priority, **fields
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def hold(
    client: TariffClient, reservation_id: str, event_type: str, dims: dict[str, str], ttl_ms: int, **values: float
) -> balance_pb2.AuthorizeResponse:
    request = balance_pb2.AuthorizeRequest(
        customer_id=CUSTOMER,
        event_type=event_type,
        dimensions=dims,
        values=values,
        reserve=True,
        reservation_id=reservation_id,
        reservation_ttl=Duration(seconds=ttl_ms // 1000, nanos=ttl_ms % 1000 * 1_000_000),
    )
    answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(request)
    return answer


def grant_rows(balance: balance_pb2.Balance) -> dict[str, tuple[str, str, str, str, str]]:
    """grant id -> (amount, drawn, remaining, expired, held)."""
    return {g.grant_id: (g.amount, g.drawn, g.remaining, g.expired, g.held) for g in balance.grants}


def totals(balance: balance_pb2.Balance) -> tuple[str, str, str, str, str]:
    return (
        balance.credits_remaining,
        balance.credits_held,
        balance.credits_available,
        balance.period_charges,
        balance.overage_amount,
    )


def preview(client: TariffClient, at_ms: int) -> invoices_pb2.Invoice:
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=CUSTOMER, period_start=stamp(at_ms))
    invoice: invoices_pb2.Invoice = client.invoices.PreviewInvoice(request)
    return invoice


def revenue(client: TariffClient, from_ms: int, to_ms: int) -> invoices_pb2.RevenueReport:
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=stamp(from_ms), period_end=stamp(to_ms), customer_id=CUSTOMER
    )
    report: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(request)
    return report


def sleep_until(at_ms: int) -> None:
    while now_ms() < at_ms:
        time.sleep(min(0.05, max(0.001, (at_ms - now_ms()) / 1000)))


class Month:
    """The scenario's instants and what the server answered at each step (read once, asserted by the tests)."""

    def __init__(self) -> None:
        n0 = now_ms() // 1000 * 1000
        self.period_end = n0 + 26_000
        end = datetime.fromtimestamp(self.period_end / 1000, UTC)
        try:
            start = end.replace(month=end.month - 1) if end.month > 1 else end.replace(year=end.year - 1, month=12)
        except ValueError:
            pytest.skip(f"no contract start has its first period end at {end:%Y-%m-%d} (the month before is shorter)")
        self.period_start = int(start.timestamp() * 1000)
        self.expiry = n0 + 20_000
        self.effective = (self.period_start + 15 * DAY_MS) // HOUR_MS * HOUR_MS + HOUR_MS
        self.next_end = int(
            (
                end.replace(month=end.month + 1) if end.month < 12 else end.replace(year=end.year + 1, month=1)
            ).timestamp()
            * 1000
        )
        self.seen: dict[str, Any] = {}

    def day(self, days: int) -> int:
        """S + `days` days + 1 minute (never on the period's boundary hour)."""
        return self.period_start + days * DAY_MS + 60_000


def run_month(client: TariffClient, month: Month) -> None:
    """Drives the whole month; every read it keeps is asserted by a test below."""
    seen, s = month.seen, month.period_start
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=CUSTOMER, name=CUSTOMER))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=CONTRACT,
            customer_id=CUSTOMER,
            rate_card_id=CARD,
            starting_at=stamp(s),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="0.4",
            currency="USD",
        )
    )
    override = contracts_pb2.PriceOverride(id="eu-half", product_id="tokens", match={"region": "eu"}, multiplier="0.5")
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=CONTRACT, override=override))
    grant(
        client,
        "G1",
        "100",
        "50",
        1,
        applicable_product_ids=["calls", "images", "storage"],
        expires_at=stamp(month.expiry),
    )
    grant(client, "G2", "200", "160", 0, applicable_product_ids=["tokens"], rollover_fraction="0.5")
    grant(client, "G3", "20", "0", 3, starts_at=stamp(month.day(20)))
    policy = contracts_pb2.TopUpPolicy(threshold="100", recharge_to="150", price_per_credit="0.9", max_per_period=2)
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=CONTRACT, top_up=policy))
    gpt4_us, gpt4_eu, sd = {"model": "gpt-4", "region": "us"}, {"model": "gpt-4", "region": "eu"}, {"model": "sd"}
    # Usage of the past days of the period, rated by version 1.
    send(client, "b1", event("e1", "llm", month.day(2), gpt4_us, tokens=MILLION))
    send(client, "b2", event("e2", "llm", month.day(3), gpt4_eu, tokens=2 * MILLION))
    send(client, "b3", *counted("e3", "image", 12, month.day(4), sd))
    send(client, "b4", event("e4", "store", month.day(5), {"region": "us"}, gb=80))
    send(client, "b5", *counted("e5", "call", 101, month.day(6), {}))
    send(client, "b6", event("e6", "seat", month.day(7), {}))
    send(client, "b7", event("e7", "llm", month.day(16), gpt4_us, tokens=MILLION // 2))
    send(client, "b8", *counted("e8", "image", 3, month.day(17), sd))
    send(client, "b9", event("e9", "store", month.day(18), {"region": "us"}, gb=40))
    seen["before publish"] = client.get_balance(CUSTOMER)
    # Version 2, published from H (mid-period): re-rates e7, e8, e9.
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=1, upsert_rates=version_rates("24", "30", "0.4")
        )
    )
    seen["publish"] = client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=stamp(month.effective))
    )
    seen["after publish"] = client.get_balance(CUSTOMER)
    second_customer(client, month)
    third_customer(client, month)
    # h1 holds 1M gpt-4 tokens, settled by an event of 0.5M; h2 holds an image for 1 s and expires.
    seen["h1"] = hold(client, "h1", "llm", gpt4_us, 60_000, tokens=MILLION)
    seen["h1 held"] = client.get_balance(CUSTOMER)
    settle = event("s1", "llm", now_ms(), gpt4_us, tokens=MILLION // 2)
    settle.reservation_id = "h1"
    ack = client.ingest_batch([settle], "s1")
    seen["s1 ack"] = ack
    seen["h2"] = hold(client, "h2", "image", sd, 1_000)
    seen["h2 held"] = client.get_balance(CUSTOMER)
    # e10 in the last millisecond G1 pays, e11 at its expiry (G3 pays): both rated before X.
    send(client, "b10", event("e10", "image", month.expiry - 1, sd), event("e11", "image", month.expiry, sd))
    seen["rated before expiry at"] = now_ms()
    assert wait_for(lambda: client.get_balance(CUSTOMER).credits_held == "0", 10), "h2 never expired"
    seen["h2 expired"] = client.get_balance(CUSTOMER)
    sleep_until(month.expiry + 1)
    seen["after expiry"] = client.get_balance(CUSTOMER)
    # f1 (dated before X, received after it), e12 in the period's last millisecond, e13 in the next's first.
    send(
        client,
        "b11",
        event("f1", "image", month.expiry - 1000, sd),
        event("e12", "llm", month.period_end - 1, gpt4_us, tokens=4 * MILLION),
        event("e13", "llm", month.period_end, gpt4_us, tokens=MILLION),
    )
    seen["rated before the end at"] = now_ms()
    seen["before end"] = client.get_balance(CUSTOMER)
    seen["draft before end"] = preview(client, s)
    sleep_until(month.period_end + 1)
    rolled = f"rollover-G2-{month.period_end}"
    assert wait_for(lambda: rolled in grant_rows(client.get_balance(CUSTOMER)), 10), "G2 never rolled over"
    seen["after end"] = client.get_balance(CUSTOMER)
    seen["draft after end"] = preview(client, s)
    seen["closed"] = client.invoices.ClosePeriod(
        invoices_pb2.ClosePeriodRequest(customer_id=CUSTOMER, period_start=stamp(s))
    )
    seen["after close"] = client.get_balance(CUSTOMER)
    seen["next draft"] = preview(client, month.period_end)
    seen["revenue"] = revenue(client, s, month.period_end + 1)
    second_customer_after_the_end(client, month)
    third_customer_after_the_end(client, month)


def second_customer(client: TariffClient, month: Month) -> None:
    """Customer `ai2` (contract `ai2-c` from S, the same card), three prepaid grants rolling half over, priority 0,
    every product: R1 10 credits paid 5 expiring at X (before the period's end: it only breaks), R2 10 paid 20
    expiring exactly at E (a tie: it rolls over), R3 10 paid 3 expiring an hour after E (it rolls over at E).
    i1: 3 images on day 2 (version 1: 3 + flat 5 = 8); i2: 5 images dated X + 1 ms (sent now)."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="ai2", name="ai2"))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id="ai2-c",
            customer_id="ai2",
            rate_card_id=CARD,
            starting_at=stamp(month.period_start),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="0.4",
            currency="USD",
        )
    )
    for grant_id, paid, expiry in (
        ("R1", "5", month.expiry),
        ("R2", "20", month.period_end),
        ("R3", "3", month.period_end + HOUR_MS),
    ):
        made = contracts_pb2.Grant(
            id=grant_id,
            contract_id="ai2-c",
            kind=contracts_pb2.PREPAID,
            amount="10",
            paid_amount=paid,
            rollover_fraction="0.5",
            expires_at=stamp(expiry),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
    images = [
        *counted("i1", "image", 3, month.day(2), {"model": "sd"}),
        *counted("i2", "image", 5, month.expiry + 1, {"model": "sd"}),
    ]
    for one in images:
        one.customer_id = "ai2"
    send(client, "ai2-b1", *images)


def second_customer_after_the_end(client: TariffClient, month: Month) -> None:
    """ai2's period closed, then i3: 2 images dated E + 2 s, sent once both ROLLOVER grants exist."""
    rolled = {f"rollover-R2-{month.period_end}", f"rollover-R3-{month.period_end}"}
    assert wait_for(lambda: rolled <= set(grant_rows(client.get_balance("ai2"))), 10), "R2 or R3 never rolled over"
    seen, s = month.seen, month.period_start
    seen["ai2 after end"] = client.get_balance("ai2")
    seen["ai2 closed"] = client.invoices.ClosePeriod(
        invoices_pb2.ClosePeriodRequest(customer_id="ai2", period_start=stamp(s))
    )
    images = counted("i3", "image", 2, month.period_end + 2000, {"model": "sd"})
    for one in images:
        one.customer_id = "ai2"
    send(client, "ai2-b2", *images)
    seen["ai2 after i3"] = client.get_balance("ai2")
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=stamp(s), period_end=stamp(month.period_end + 1), customer_id="ai2"
    )
    seen["ai2 revenue"] = client.invoices.GetRevenueReport(request)


def storage(customer_id: str, key: str, at_ms: int, gb: float) -> usage_pb2.UsageEvent:
    made = event(key, "store", at_ms, {"region": "us"}, gb=gb)
    made.customer_id = customer_id
    return made


def open_contract(client: TariffClient, customer_id: str, month: Month) -> str:
    """`<customer>-c` from S on the month's card, ALLOW, overage 0.4 USD, the customer created first."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    request = contracts_pb2.CreateContractRequest(
        id=f"{customer_id}-c",
        customer_id=customer_id,
        rate_card_id=CARD,
        starting_at=stamp(month.period_start),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="0.4",
        currency="USD",
    )
    client.contracts.CreateContract(request)
    return request.id


def third_customer(client: TariffClient, month: Month) -> None:
    """Customer `ai3`: grant T3, 3 credits paid 1 USD (a third of a dollar a credit, no whole number of picos),
    rolling half over; 10 GB of storage on day 1 (VOLUME 10 x 0.1 = 1 credit)."""
    contract_id = open_contract(client, "ai3", month)
    made = contracts_pb2.Grant(
        id="T3",
        contract_id=contract_id,
        kind=contracts_pb2.PREPAID,
        amount="3",
        paid_amount="1",
        rollover_fraction="0.5",
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
    send(client, "ai3-b1", storage("ai3", "t1", month.day(1), 10))


def third_customer_after_the_end(client: TariffClient, month: Month) -> None:
    """Once T3 rolled over: 5 GB dated E + 1 s (the next period's line: 5 x 0.1 = 0.5 credit)."""
    rolled = f"rollover-T3-{month.period_end}"
    assert wait_for(lambda: rolled in grant_rows(client.get_balance("ai3")), 10), "T3 never rolled over"
    send(client, "ai3-b2", storage("ai3", "t2", month.period_end + 1000, 5))
    month.seen["ai3 balance"] = client.get_balance("ai3")
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=stamp(month.period_start), period_end=stamp(month.period_end + 1), customer_id="ai3"
    )
    month.seen["ai3 revenue"] = client.invoices.GetRevenueReport(request)
    everyone = invoices_pb2.GetRevenueReportRequest(
        period_start=stamp(month.period_start), period_end=stamp(month.period_end + 1)
    )
    month.seen["all revenue"] = client.invoices.GetRevenueReport(everyone)


def reads(client: TariffClient, month: Month) -> tuple[Any, ...]:
    """Every read the restart test compares, as bytes."""
    invoice = client.invoices.GetInvoice(
        invoices_pb2.GetInvoiceRequest(invoice_number=month.seen["closed"].invoice_number)
    )
    listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id=CUSTOMER))
    balance = client.get_balance(CUSTOMER)
    second = client.get_balance("ai2")
    second_invoice = client.invoices.GetInvoice(
        invoices_pb2.GetInvoiceRequest(invoice_number=month.seen["ai2 closed"].invoice_number)
    )
    return (
        totals(second),
        grant_rows(second),
        second_invoice.SerializeToString(deterministic=True),
        invoice.SerializeToString(deterministic=True),
        listed.SerializeToString(deterministic=True),
        totals(balance),
        grant_rows(balance),
        [(g.grant_id, g.recognized_revenue) for g in balance.grants],
        preview(client, month.period_end).SerializeToString(deterministic=True),
        client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=stamp(month.period_start), period_end=stamp(month.period_end + 1)
            )
        ).SerializeToString(deterministic=True),
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-monthend")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


@pytest.fixture(scope="module")
def month(server: ServerProcess) -> Month:
    made = Month()
    with server.client() as client:
        run_month(client, made)
    return made


def top_up_id(balance: balance_pb2.Balance) -> str:
    (made,) = [g.grant_id for g in balance.grants if g.kind == contracts_pb2.TOP_UP]
    return made


def test_the_retroactive_publish_re_rates_the_cut_and_the_volume_refund_and_settles_the_draws_again(
    month: Month,
) -> None:
    """Rated by version 1 (G2 pays tokens first, priority 0; G1 the rest it applies to; G3 has not started on the
    days the usage is dated; seat no grant pays):
      e1 tokens us 1M x 30/1M = 30 (G2); e2 tokens eu 2M x 36/1M = 72, x 0.5 override = 36 (G2);
      e3 12 images: 10 x 1 + flat 5 + 2 x 0.5 = 16 (G1); e4 storage 80 GB VOLUME 80 x 0.1 = 8 (G1);
      e5 101 calls: 2 packages x 2 = 4 (G1); e6 seat FLAT 25, all overage;
      e7 tokens us 0.5M = 15 (G2); e8 3 images 3 x 0.5 = 1.5 (G1);
      e9 storage 40 GB: VOLUME price(120) = 120 x 0.05 = 6 less price(80) = 8: -2, given back to G1.
    G2 drawn 30 + 36 + 15 = 81 (119 left); G1 16 + 8 + 4 + 1.5 - 2 = 27.5 (72.5 left); G3 20 (started by now).
    Charges 30 + 36 + 16 + 8 + 4 + 25 + 15 + 1.5 - 2 = 133.5, overage 25.
    Version 2 from H re-rates the buckets of e7 (15 -> 0.5M x 24/1M = 12), e8 (1.5 -> v2 price(15) - price(12) =
    (15 + 5 x 0.4) - (15 + 2 x 0.4) = 1.2) and e9 (-2 -> -2, only its version changes): 3 buckets, 1 + 3 + 1 = 5
    events, delta -3 - 0.3 = -3.3. Settled again: G2 drawn 78 (122 left), G1 27.2 (72.8 left), charges 130.2.
    Recognised: G2 78 x 0.8 = 62.4, G1 27.2 x 0.5 = 13.6."""
    before = month.seen["before publish"]
    assert totals(before) == ("211.5", "0", "211.5", "133.5", "25")
    assert grant_rows(before) == {
        "G1": ("100", "27.5", "72.5", "0", "0"),
        "G2": ("200", "81", "119", "0", "0"),
        "G3": ("20", "0", "20", "0", "0"),
    }
    done = month.seen["publish"]
    assert (done.customers_rerated, done.buckets_rerated, done.events_rerated, done.rerated_amount_delta) == (
        1,
        3,
        5,
        "-3.3",
    )
    assert (done.closed_buckets_left_alone, done.closed_events_left_alone, done.closed_amount_left_alone) == (0, 0, "0")
    after = month.seen["after publish"]
    assert totals(after) == ("214.8", "0", "214.8", "130.2", "25")
    assert grant_rows(after) == {
        "G1": ("100", "27.2", "72.8", "0", "0"),
        "G2": ("200", "78", "122", "0", "0"),
        "G3": ("20", "0", "20", "0", "0"),
    }
    assert {g.grant_id: g.recognized_revenue for g in after.grants} == {"G1": "13.6", "G2": "62.4", "G3": "0"}


def test_a_hold_settled_by_smaller_usage_and_one_expiring_by_its_ttl(month: Month) -> None:
    """h1: 1M gpt-4 us tokens at version 2 = 24, held on G2 (122 -> 98 available); the answer's credits_available
    is what the grants paying tokens hold beyond the holds: G2 98 + G3 20 = 118. The balance: held 24, available
    214.8 - 24 = 190.8. s1 settles it with 0.5M tokens = 12: G2 drawn 90 (110 left), nothing held.
    h2: one image, quantity 15 -> 16 in tier 2 at 0.4: held on G1 (72.8 -> 72.4 available); credits for images
    beyond holds: G1 72.4 + G3 20 = 92.4. e10 (X - 1 ms) 0.4 from G1 (drawn 27.6); e11 (at X) 0.4 from G3, G1 not
    usable at X. h2 then expires: held 0, G1 72.4 left. Remaining 72.4 + 110 + 19.6 = 202; charges 130.2 + 12 +
    0.4 + 0.4 = 143. Available never fell below 100: no top-up."""
    h1 = month.seen["h1"]
    assert (h1.allowed, h1.estimated_cost, h1.credits_available, h1.reservation_id) == (True, "24", "118", "h1")
    held = month.seen["h1 held"]
    assert totals(held) == ("214.8", "24", "190.8", "130.2", "25")
    assert grant_rows(held)["G2"] == ("200", "78", "122", "0", "24")
    ack = month.seen["s1 ack"]
    assert (ack.accepted, list(ack.rejected), list(ack.notices)) == (1, [], [])
    h2 = month.seen["h2"]
    assert (h2.allowed, h2.estimated_cost, h2.credits_available) == (True, "0.4", "92.4")
    assert grant_rows(month.seen["h2 held"])["G1"] == ("100", "27.2", "72.8", "0", "0.4")
    assert month.seen["rated before expiry at"] < month.expiry, "the machine took the whole setup window"
    expired = month.seen["h2 expired"]
    assert totals(expired) == ("202", "0", "202", "143", "25")
    assert grant_rows(expired) == {
        "G1": ("100", "27.6", "72.4", "0", "0"),
        "G2": ("200", "90", "110", "0", "0"),
        "G3": ("20", "0.4", "19.6", "0", "0"),
    }


def test_expiry_inside_the_period_then_a_late_event_the_last_millisecond_and_the_next_periods_first(
    month: Month,
) -> None:
    """At X G1's 72.4 break (0.5 a credit: 36.2): remaining 110 + 19.6 = 129.6, the clock buys nothing.
    Batch b11: f1 (an image dated X - 1 s, received after X) draws nothing of G1 (breakage is final): G3 0.4 (19.2
    left), quantity 18. e12 (E - 1 ms, in the period): 4M tokens x 24/1M = 96 from G2 (14 left); available 14 +
    19.2 = 33.2 < 100: one top-up of 150 - 33.2 = 116.8 credits at 0.9 = 105.12 USD, counting in the period.
    e13 (E, the next period's first millisecond): 1M tokens = 24 on a new line quantity; G2 pays nothing dated
    at or after its period's end: G3 19.2, the top-up 4.8 (112 left). Remaining 14 + 112 = 126; the period's
    charges 143 + 0.4 + 96 = 239.4, its overage 25, due exactly 25 x 0.4 = 10 USD (unrounded in a balance)."""
    assert month.seen["rated before the end at"] < month.period_end, "the machine took the whole window before E"
    after_expiry = month.seen["after expiry"]
    assert totals(after_expiry) == ("129.6", "0", "129.6", "143", "25")
    assert grant_rows(after_expiry)["G1"] == ("100", "27.6", "0", "72.4", "0")
    before_end = month.seen["before end"]
    top_up = top_up_id(before_end)
    assert top_up.startswith(f"top-up-{month.period_start}-")
    assert totals(before_end) == ("126", "0", "126", "239.4", "25")
    assert (before_end.overage_due, before_end.pricing_unit) == ("10", "credits")
    assert (before_end.period_start.ToMilliseconds(), before_end.period_end.ToMilliseconds()) == (
        month.period_start,
        month.period_end,
    )
    assert grant_rows(before_end) == {
        "G1": ("100", "27.6", "0", "72.4", "0"),
        "G2": ("200", "186", "14", "0", "0"),
        "G3": ("20", "20", "0", "0", "0"),
        top_up: ("116.8", "4.8", "112", "0", "0"),
    }


def test_at_the_periods_end_g2_rolls_half_its_remainder_over_and_the_balance_conserves_every_grant(
    month: Month,
) -> None:
    """At E G2's 14 left: 0.5 x 14 = 7 roll into rollover-G2-<E> (cost basis 0.8, usable until the end of the next
    period), 7 break (5.6 USD). G2: drawn 186 + 7 = 193, expired 7. The balance is the next period's: charges 24
    (e13), no overage; remaining 112 + 7 = 119. Recognised: G1 27.6 x 0.5 = 13.8, G2 186 x 0.8 = 148.8 (the
    rolled 7 left out), G3 0 (promotional), the top-up 4.8 x 0.9 = 4.32, the ROLLOVER grant 0.
    Every grant: amount = drawn + remaining + expired (nothing held)."""
    after = month.seen["after end"]
    top_up, rolled = top_up_id(after), f"rollover-G2-{month.period_end}"
    assert totals(after) == ("119", "0", "119", "24", "0")
    assert after.overage_due == "0"
    assert (after.period_start.ToMilliseconds(), after.period_end.ToMilliseconds()) == (
        month.period_end,
        month.next_end,
    )
    assert grant_rows(after) == {
        "G1": ("100", "27.6", "0", "72.4", "0"),
        "G2": ("200", "193", "0", "7", "0"),
        "G3": ("20", "20", "0", "0", "0"),
        top_up: ("116.8", "4.8", "112", "0", "0"),
        rolled: ("7", "0", "7", "0", "0"),
    }
    recognised = {g.grant_id: g.recognized_revenue for g in after.grants}
    assert recognised == {"G1": "13.8", "G2": "148.8", "G3": "0", top_up: "4.32", rolled: "0"}
    (row,) = [g for g in after.grants if g.grant_id == rolled]
    assert (row.kind, row.priority, list(row.applicable_product_ids)) == (contracts_pb2.ROLLOVER, 0, ["tokens"])
    assert (row.starts_at.ToMilliseconds(), row.expires_at.ToMilliseconds()) == (month.period_end, month.next_end)
    for g in after.grants:
        assert Decimal(g.amount) == Decimal(g.drawn) + Decimal(g.remaining) + Decimal(g.expired), g.grant_id


def credits_of(applied: Iterable[invoices_pb2.CreditApplication]) -> list[tuple[str, str]]:
    """An invoice's or a line's credits applied: (grant, credits)."""
    return [(c.grant_id, c.credits) for c in applied]


def grant_balances_of(invoice: invoices_pb2.Invoice) -> list[tuple[str, str, str, str, str]]:
    """An invoice's grant balances: (grant, granted, drawn, remaining, expired)."""
    return [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances]


def lines_of(invoice: invoices_pb2.Invoice) -> list[tuple[Any, ...]]:
    return [
        (
            line.line_id,
            line.quantity,
            line.events,
            line.amount,
            credits_of(line.credits_applied),
            line.overage,
            line.amount_due,
        )
        for line in invoice.lines
    ]


def parts_of(invoice: invoices_pb2.Invoice) -> dict[str, list[tuple[Any, ...]]]:
    return {
        line.line_id: [(p.rate_card_id, p.version, p.quantity, p.events, p.amount, p.unit_price) for p in line.prices]
        for line in invoice.lines
    }


def test_the_closed_invoice_bills_every_line_credit_and_overage_and_the_top_up(month: Month) -> None:
    """Lines by product id, then dimension values (tokens: eu before us):
      calls 101, 4 (G1), unit price 4/101 = 0.039603960396
      images;model=sd 18 events: version 1 part 12 units 16 (1.333333333333); version 2 part 6 units (e8 3,
        e10, e11, f1) 6 x 0.4 = 2.4; 18.4 in all, G1 16 + 1.2 + 0.4 = 17.6 then G3 0.4 + 0.4 = 0.8
      seat 1, 25, all overage: 25 x 0.4 = 10.00 USD due
      storage;region=us 120 GB, 8 - 2 = 6 (G1 6): version 1 part 80 GB 8 (0.1), version 2 part 40 GB -2 (-0.05)
      tokens;model=gpt-4;region=eu 2M, 36 (G2), 0.000018 a token
      tokens;model=gpt-4;region=us 6M (e1 1M, e7 0.5M, s1 0.5M, e12 4M), 30 + 12 + 12 + 96 = 150 (G2); version 1
        part 1M 30; version 2 part: e7, s1, e12, and e13 of the next period too, since the hour holding the off-the-
        hour boundary E is counted in the earlier period's parts only (README "Lines"): 6M, 144 (0.000024)
    Subtotal 4 + 18.4 + 25 + 6 + 36 + 150 = 239.4; credits G1 4 + 17.6 + 6 = 27.6, G2 186, G3 0.8; overage 25,
    due 10.00; top-ups 105.12; total 115.12. Grant balances at E, in the order made: G1 100 = 27.6 + 0 + 72.4; G2
    200 = 193 + 0 + 7 (the rolled 7 as drawn); G3 20 = 0.8 + 19.2 (the period's draws only); the top-up 116.8 =
    0 + 116.8 (e13 is the next period's). The draft read before E already equals it but for the closing fields."""
    closed = month.seen["closed"]
    top_up = top_up_id(month.seen["after end"])
    assert (closed.status, closed.invoice_number[:4]) == (invoices_pb2.INVOICE_FINAL, "INV-")
    assert (closed.period_start.ToMilliseconds(), closed.period_end.ToMilliseconds()) == (
        month.period_start,
        month.period_end,
    )
    assert lines_of(closed) == [
        ("calls", "101", 101, "4", [("G1", "4")], "0", "0.00"),
        ("images;model=sd", "18", 18, "18.4", [("G1", "17.6"), ("G3", "0.8")], "0", "0.00"),
        ("seat", "1", 1, "25", [], "25", "10.00"),
        ("storage;region=us", "120", 2, "6", [("G1", "6")], "0", "0.00"),
        ("tokens;model=gpt-4;region=eu", "2000000", 1, "36", [("G2", "36")], "0", "0.00"),
        ("tokens;model=gpt-4;region=us", "6000000", 4, "150", [("G2", "150")], "0", "0.00"),
    ]
    boundary_hour_in_period = month.period_end % HOUR_MS != 0
    us_v2 = ("6000000", 4, "144") if boundary_hour_in_period else ("5000000", 3, "120")
    assert parts_of(closed) == {
        "calls": [(CARD, 1, "101", 101, "4", "0.039603960396")],
        "images;model=sd": [(CARD, 1, "12", 12, "16", "1.333333333333"), (CARD, 2, "6", 6, "2.4", "0.4")],
        "seat": [(CARD, 1, "1", 1, "25", "25")],
        "storage;region=us": [(CARD, 1, "80", 1, "8", "0.1"), (CARD, 2, "40", 1, "-2", "-0.05")],
        "tokens;model=gpt-4;region=eu": [(CARD, 1, "2000000", 1, "36", "0.000018")],
        "tokens;model=gpt-4;region=us": [(CARD, 1, "1000000", 1, "30", "0.00003"), (CARD, 2, *us_v2, "0.000024")],
    }
    assert credits_of(closed.credits_applied) == [("G1", "27.6"), ("G2", "186"), ("G3", "0.8")]
    assert (closed.subtotal, closed.overage_amount, closed.overage_due, closed.top_up_purchases) == (
        "239.4",
        "25",
        "10.00",
        "105.12",
    )
    assert (closed.total_due, closed.rounding_adjustment, closed.minor_unit, closed.overage_price) == (
        "115.12",
        "0.00",
        2,
        "0.4",
    )
    assert grant_balances_of(closed) == [
        ("G1", "100", "27.6", "0", "72.4"),
        ("G2", "200", "193", "0", "7"),
        ("G3", "20", "0.8", "19.2", "0"),
        (top_up, "116.8", "0", "116.8", "0"),
    ]
    for draft in (month.seen["draft before end"], month.seen["draft after end"]):
        draft.invoice_number, draft.status = closed.invoice_number, closed.status
        draft.closed_at.CopyFrom(closed.closed_at)
        assert draft == closed


def test_the_re_rating_adjustments_of_the_closed_invoice(month: Month) -> None:
    """One adjustment per re-rated bucket, on its line: e7's (0.5M tokens, 15 -> 12, -3), e8's (3 images, 1.5 ->
    1.2, -0.3), e9's (40 GB, -2 -> -2, 0: only its version changed), each from version 1 to 2 at its hour."""
    closed = month.seen["closed"]
    found = {
        line.line_id: [
            (
                a.hour.ToMilliseconds(),
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
        for line in closed.lines
        if line.adjustments
    }

    def hour(at_ms: int) -> int:
        return at_ms // HOUR_MS * HOUR_MS

    assert found == {
        "images;model=sd": [(hour(month.day(17)), [1], 2, "3", 3, "1.5", "1.2", "-0.3")],
        "storage;region=us": [(hour(month.day(18)), [1], 2, "40", 1, "-2", "-2", "0")],
        "tokens;model=gpt-4;region=us": [(hour(month.day(16)), [1], 2, "500000", 1, "15", "12", "-3")],
    }


def test_the_next_periods_draft_bills_the_first_millisecond_and_lists_the_rollover_grant(month: Month) -> None:
    """The next period: e13's line, 1M tokens, 24: G3 19.2, the top-up 4.8, no overage; its version part is in
    the period before (the boundary hour's), so the line has none. Nothing due. Grant balances at its end: G1 and
    G2 still listed (credit broke in an earlier period), G3 spent by this period's draw (20 drawn), the top-up 4.8
    drawn 112 left, and the ROLLOVER grant, which expires at the period's end: its 7 expired (as closing will)."""
    draft = month.seen["next draft"]
    top_up, rolled = top_up_id(month.seen["after end"]), f"rollover-G2-{month.period_end}"
    assert (draft.period_start.ToMilliseconds(), draft.period_end.ToMilliseconds()) == (
        month.period_end,
        month.next_end,
    )
    assert lines_of(draft) == [
        ("tokens;model=gpt-4;region=us", "1000000", 1, "24", [("G3", "19.2"), (top_up, "4.8")], "0", "0.00")
    ]
    if month.period_end % HOUR_MS != 0:
        assert parts_of(draft) == {"tokens;model=gpt-4;region=us": []}
    assert credits_of(draft.credits_applied) == [("G3", "19.2"), (top_up, "4.8")]
    assert (draft.subtotal, draft.overage_due, draft.top_up_purchases, draft.total_due) == (
        "24",
        "0.00",
        "0.00",
        "0.00",
    )
    assert grant_balances_of(draft) == [
        ("G1", "100", "27.6", "0", "72.4"),
        ("G2", "200", "193", "0", "7"),
        ("G3", "20", "20", "0", "0"),
        (top_up, "116.8", "4.8", "112", "0"),
        (rolled, "7", "0", "0", "7"),
    ]


def test_revenue_of_the_month_and_the_next_recognises_each_grant_at_its_cost_and_reconciles(month: Month) -> None:
    """The month: sold G1 50 + G2 160 + G3 0 + the top-up 105.12 (sold in the period its purchase counts in) =
    315.12. Recognised from credits: G1 27.6 x 0.5 = 13.8, G2 186 x 0.8 = 148.8, G3 0: 162.6; by product: calls 4 x
    0.5 = 2, images 17.6 x 0.5 = 8.8, storage 6 x 0.5 = 3, tokens 148.8, seat 0. From overage: seat 25 x 0.4 = 10.
    Breakage: G1 72.4 x 0.5 = 36.2 + G2 7 x 0.8 = 5.6 = 41.8. Deferred: 315.12 - 162.6 - 41.8 = 110.72 (G2's rolled
    7 x 0.8 = 5.6 and the unused top-up 105.12).
    The next period (open): nothing sold (a ROLLOVER grant is no sale); the top-up's 4.8 x 0.9 = 4.32 recognised
    (tokens), G3's 19.2 free; deferred 110.72 - 4.32 = 106.4. Reconciliation: 0 + 315.12 - 166.92 - 41.8 = 106.4."""
    report = month.seen["revenue"]
    s, e = month.period_start, month.period_end
    assert report.currency == "USD"
    customer = [
        (
            x.period_start.ToMilliseconds(),
            x.recognized_credits,
            x.recognized_overage,
            x.recognized,
            x.breakage,
            x.deferred,
        )
        for x in report.customer_lines
    ]
    assert customer == [(s, "162.6", "10", "172.6", "41.8", "110.72"), (e, "4.32", "0", "4.32", "0", "106.4")]
    products = {
        (x.period_start.ToMilliseconds(), x.product_id): (x.recognized_credits, x.recognized_overage, x.breakage)
        for x in report.lines
    }
    assert {k: v for k, v in products.items() if v != ("0", "0", "0")} == {
        (s, "calls"): ("2", "0", "0"),
        (s, "images"): ("8.8", "0", "0"),
        (s, "seat"): ("0", "10", "0"),
        (s, "storage"): ("3", "0", "0"),
        (s, "tokens"): ("148.8", "0", "0"),
        (e, "tokens"): ("4.32", "0", "0"),
    }
    r = report.reconciliation
    assert (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.recognized_overage) == (
        "0",
        "315.12",
        "166.92",
        "10",
    )
    assert (r.breakage, r.deferred_end, r.reconciles) == ("41.8", "106.4", True)


def test_every_balance_read_over_the_month_conserves_each_grant(month: Month) -> None:
    """balance.proto GrantBalance: granted = drawn + remaining + expired, held counted inside remaining while the
    grant is usable (0 <= held <= remaining), in every balance the month read."""
    balances = [v for v in month.seen.values() if isinstance(v, balance_pb2.Balance)]
    assert len(balances) >= 10
    for balance in balances:
        for g in balance.grants:
            amount, drawn, remaining, expired, held = map(Decimal, (g.amount, g.drawn, g.remaining, g.expired, g.held))
            assert amount == drawn + remaining + expired, (balance.customer_id, g)
            assert Decimal(0) <= held <= remaining or (remaining == 0 and expired > 0), g
        usable = sum((Decimal(g.remaining) for g in balance.grants), Decimal(0))
        assert Decimal(balance.credits_remaining) <= usable
        assert Decimal(balance.credits_available) == Decimal(balance.credits_remaining) - Decimal(balance.credits_held)


def test_a_rolling_grant_expiring_mid_period_breaks_one_expiring_at_the_end_rolls_and_rolled_grants_burn_in_order(
    month: Month,
) -> None:
    """ai2. i1 (3 images, day 2): 3 x 1 + flat 5 = 8, burn order by earliest expiry: R1 8 (2 left). i2 (5 images
    dated X + 1 ms, version 2: tier 1 unchanged, 5 x 1 = 5): R1 no longer pays, R2 5 (5 left).
    At X R1's 2 break (nothing rolls: it expires before its period's end); at E R2 (expiring exactly at E) rolls
    0.5 x 5 = 2.5 and breaks 2.5; R3 (expiring after E) rolls 5 and breaks 5. ROLLOVER grants of 2.5 and 5, until
    the next period's end. The invoice: images;model=sd 8 units, 13 (version 1 part 3 units 8, 2.666666666667;
    version 2 part 5 units 5), credits R1 8, R2 5; grant balances R1 10 = 8 + 0 + 2, R2 10 = 7.5 + 0 + 2.5, R3 10
    = 5 + 0 + 5. i3 (2 images dated E + 2 s, the next period's first: 2 + flat 5 = 7): R2's ROLLOVER grant first
    (same priority, expiry and products: the original grants' creation order) 2.5, then R3's 4.5 (0.5 left).
    Revenue: sold 5 + 20 + 3 = 28; the month recognises R1 8 x 0.5 = 4 + R2 5 x 2 = 10 = 14, breaks R1 2 x 0.5 =
    1 + R2 2.5 x 2 = 5 + R3 5 x 0.3 = 1.5 = 7.5, defers 28 - 14 - 7.5 = 6.5 (2.5 x 2 + 5 x 0.3); the next period
    recognises 2.5 x 2 + 4.5 x 0.3 = 6.35 and defers 0.15."""
    e = month.period_end
    r2, r3 = f"rollover-R2-{e}", f"rollover-R3-{e}"
    rows = {
        "R1": ("10", "8", "0", "2", "0"),
        "R2": ("10", "7.5", "0", "2.5", "0"),
        "R3": ("10", "5", "0", "5", "0"),
    }
    assert grant_rows(month.seen["ai2 after end"]) == {
        **rows,
        r2: ("2.5", "0", "2.5", "0", "0"),
        r3: ("5", "0", "5", "0", "0"),
    }
    after = month.seen["ai2 after i3"]
    assert grant_rows(after) == {**rows, r2: ("2.5", "2.5", "0", "0", "0"), r3: ("5", "4.5", "0.5", "0", "0")}
    assert totals(after) == ("0.5", "0", "0.5", "7", "0")
    assert {g.grant_id: g.expires_at.ToMilliseconds() for g in after.grants if g.kind == contracts_pb2.ROLLOVER} == {
        r2: month.next_end,
        r3: month.next_end,
    }
    closed = month.seen["ai2 closed"]
    assert lines_of(closed) == [("images;model=sd", "8", 8, "13", [("R1", "8"), ("R2", "5")], "0", "0.00")]
    assert parts_of(closed) == {
        "images;model=sd": [(CARD, 1, "3", 3, "8", "2.666666666667"), (CARD, 2, "5", 5, "5", "1")]
    }
    assert grant_balances_of(closed) == [
        ("R1", "10", "8", "0", "2"),
        ("R2", "10", "7.5", "0", "2.5"),
        ("R3", "10", "5", "0", "5"),
    ]
    assert (closed.subtotal, closed.overage_due, closed.total_due) == ("13", "0.00", "0.00")
    report = month.seen["ai2 revenue"]
    customer = [
        (x.period_start.ToMilliseconds(), x.recognized_credits, x.recognized_overage, x.breakage, x.deferred)
        for x in report.customer_lines
    ]
    assert customer == [(month.period_start, "14", "0", "7.5", "6.5"), (e, "6.35", "0", "0", "0.15")]
    r = report.reconciliation
    assert (r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
        "28",
        "20.35",
        "7.5",
        "0.15",
        True,
    )


def test_closing_changes_no_balance_and_the_report_of_every_customer_sums_both(month: Month) -> None:
    """The close moves no credit: the balance after it is the one before (but for its journal position, as_of_seq).
    The report of every customer over the same span holds ai's, ai2's and ai3's customer lines (customer id, then
    period order) and sums them: sold 315.12 + 28 + 1 = 344.12, recognised from credits 166.92 + 20.35 +
    0.499999999999 = 187.769999999999, from overage 10, breakage 41.8 + 7.5 + 0.333333333334 = 49.633333333334,
    deferred 106.4 + 0.15 + 0.166666666667 = 106.716666666667; images in the month 8.8 + 14 = 22.8, in the next
    6.35."""
    before, after = balance_pb2.Balance(), balance_pb2.Balance()
    before.CopyFrom(month.seen["after end"])
    after.CopyFrom(month.seen["after close"])
    assert after.as_of_seq > before.as_of_seq
    before.ClearField("as_of_seq")
    after.ClearField("as_of_seq")
    assert after == before
    report = month.seen["all revenue"]
    customer = [
        (x.customer_id, x.period_start.ToMilliseconds(), x.recognized, x.deferred) for x in report.customer_lines
    ]
    s, e = month.period_start, month.period_end
    assert customer == [
        ("ai", s, "172.6", "110.72"),
        ("ai", e, "4.32", "106.4"),
        ("ai2", s, "14", "6.5"),
        ("ai2", e, "6.35", "0.15"),
        ("ai3", s, "0.333333333333", "0.333333333333"),
        ("ai3", e, "0.166666666666", "0.166666666667"),
    ]
    images = {x.period_start.ToMilliseconds(): x.recognized_credits for x in report.lines if x.product_id == "images"}
    assert images == {s: "22.8", e: "6.35"}
    r = report.reconciliation
    assert (r.prepaid_sold, r.recognized_credits, r.recognized_overage, r.breakage, r.deferred_end, r.reconciles) == (
        "344.12",
        "187.769999999999",
        "10",
        "49.633333333334",
        "106.716666666667",
        True,
    )


def test_credit_drawn_from_a_rollover_grant_is_valued_after_the_breakage_of_the_rollover_on_one_ledger(
    month: Month,
) -> None:
    """README "Revenue": a ROLLOVER grant's draws and breakage count as its original grant's, whose consumed credits
    are valued cumulatively, period by period, each period's draws before its breakage, at paid / amount = 1/3 USD a
    credit, each value rounded half-even to the pico once. T3: 1 drawn in the month, then at E 0.5 x 2 = 1 rolls
    and 1 breaks; 0.5 drawn from the ROLLOVER grant in the next period.
      the month:  draws 1 x 1/3 = 0.333333333333; breakage (1 + 1) / 3 = 0.666666666667 - 0.333333333333 =
                  0.333333333334; deferred 1 - 0.333333333333 - 0.333333333334 = 0.333333333333
      the next:   (2 + 0.5) / 3 = 0.833333333333 - 0.666666666667 = 0.166666666666 recognised (not 1.5 / 3 - 1 / 3
                  = 0.5 - 0.333333333333 = 0.166666666667, what valuing the draws alone would give: the two would
                  no longer telescope to the 1 paid once the last 0.5 breaks); deferred 0.166666666667
    GetBalance's recognized_revenue values each grant's own draws (balance.proto): T3 1 / 3 = 0.333333333333, its
    ROLLOVER grant 0.5 / 3 = 0.166666666667 (its cost basis exact: 1 credit for 1/3 USD), a pico above the
    report's cumulative 0.499999999999."""
    e = month.period_end
    rolled = f"rollover-T3-{e}"
    balance = month.seen["ai3 balance"]
    assert grant_rows(balance) == {"T3": ("3", "2", "0", "1", "0"), rolled: ("1", "0.5", "0.5", "0", "0")}
    assert {g.grant_id: g.recognized_revenue for g in balance.grants} == {
        "T3": "0.333333333333",
        rolled: "0.166666666667",
    }
    report = month.seen["ai3 revenue"]
    customer = [
        (x.period_start.ToMilliseconds(), x.recognized_credits, x.breakage, x.deferred) for x in report.customer_lines
    ]
    assert customer == [
        (month.period_start, "0.333333333333", "0.333333333334", "0.333333333333"),
        (e, "0.166666666666", "0", "0.166666666667"),
    ]
    assert [(x.product_id, x.recognized_credits) for x in report.lines] == [
        ("storage", "0.333333333333"),
        ("storage", "0.166666666666"),
    ]
    r = report.reconciliation
    assert (r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
        "1",
        "0.499999999999",
        "0.333333333334",
        "0.166666666667",
        True,
    )


def explained(client: TariffClient, month: Month, page_token: str) -> invoices_pb2.ExplainLineItemResponse:
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=CUSTOMER,
        period_start=stamp(month.period_start),
        line_id="tokens;model=gpt-4;region=us",
        page_size=2,
        page_token=page_token,
    )
    page: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(request)
    return page


def test_the_closed_lines_events_and_adjustment_explain_it_and_a_page_token_outlives_a_restart(
    server: ServerProcess, month: Month
) -> None:
    """ExplainLineItem of the closed tokens;model=gpt-4;region=us line: its events in rating order, each at the
    amount it was charged (e1 30 and e7 15 by version 1, s1 12 and e12 96 by version 2), then the re-rating's
    adjustment of e7's bucket, -3: 30 + 15 + 12 + 96 - 3 = 150, the line's amount; e13 (dated E, the boundary hour)
    is the next period's and not here. Pages of 2; the first page's token reads the same second page after a
    kill -9 and a restart (README: tokens stay valid across restarts), and every page then reads as before."""
    with server.client() as client:
        pages = [explained(client, month, "")]
        while pages[-1].next_page_token:
            pages.append(explained(client, month, pages[-1].next_page_token))
    rows = [
        (e.transaction_id, e.quantity, e.version, e.amount, [(d.grant_id, d.credits) for d in e.draws])
        for page in pages
        for e in page.events
    ]
    assert rows == [
        ("e1", "1000000", 1, "30", [("G2", "30")]),
        ("e7", "500000", 1, "15", [("G2", "15")]),
        ("s1", "500000", 2, "12", [("G2", "12")]),
        ("e12", "4000000", 2, "96", [("G2", "96")]),
        ("", "0", 2, "-3", []),
    ]
    assert {(p.line_amount, p.line_quantity) for p in pages} == {("150", "6000000")}
    server.kill9()
    server.restart()
    with server.client() as client:
        assert explained(client, month, pages[0].next_page_token) == pages[1]
        again = [explained(client, month, "")]
        while again[-1].next_page_token:
            again.append(explained(client, month, again[-1].next_page_token))
        assert again == pages


def test_every_read_is_the_same_after_a_kill_9_and_a_restart(server: ServerProcess, month: Month) -> None:
    with server.client() as client:
        before = reads(client, month)
    server.kill9()
    server.restart()
    with server.client() as client:
        assert reads(client, month) == before
