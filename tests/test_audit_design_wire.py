"""An audit of the design document's domain and wire contract (§3 Domain, §4 Wire contract, §5 Running it) over the
wire, as an acceptance suite working from it would drive the server: raw stubs of proto/tariff/v1, amounts computed by
hand in the docstrings. Where the project reads a design statement one particular way (BLOCK's "once available credit
is exhausted", the per-grant invariant "granted = drawn + remaining + expired (+ held)"), the test pins the reading the
proto and README now state.

One server for the file, started with `--demo` (§5: the demo catalogue on an empty data directory), each test on
products, a rate card and customers of its own beside the demo's."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import (
    balance_pb2,
    balance_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from server.convert import timestamp as stamp
from tests.audit_fixtures import serving
from tests.serverproc import REPO_ROOT, ServerProcess


def month_start_ms() -> int:
    today = datetime.now(UTC)
    return int(datetime(today.year, today.month, 1, tzinfo=UTC).timestamp() * 1000)


def product(client: TariffClient, product_id: str, aggregation: int, value_key: str = "", *dims: str) -> None:
    made = pricing_pb2.Product(
        id=product_id,
        name=product_id,
        event_type=product_id,
        aggregation=aggregation,  # type: ignore[arg-type]
        value_key=value_key,
        pricing_dimensions=list(dims),
        unit="u",
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=made))


def catalogue(client: TariffClient) -> None:
    """Beside the demo: one product per aggregation and price model, all on rate card `design` (credits), version 1 in
    force from the start of this month. `tok` (SUM of tokens by model and region) is DESIGN §1's "GPT-4 tokens in
    US-East cost 0.03 per 1K" written as `gpt4_cost_per_1k * markup` per 1,000 (0.03 x 1.5 = 0.045), GPT-4 elsewhere
    `gpt4_cost_per_1k` (0.03), anything else 0.001, each per 1,000."""
    product(client, "tok", pricing_pb2.SUM, "tokens", "model", "region")
    product(client, "calls", pricing_pb2.COUNT)
    product(client, "peak", pricing_pb2.MAX, "gb")
    product(client, "users", pricing_pb2.UNIQUE_COUNT, "user")
    product(client, "seats", pricing_pb2.LATEST, "n")
    for product_id, aggregation, value_key in (
        ("mix-gauge", pricing_pb2.LATEST, "g"),
        ("mix-sum", pricing_pb2.SUM, "s"),
    ):
        made = pricing_pb2.Product(
            id=product_id,
            name=product_id,
            event_type="mix",
            aggregation=aggregation,
            value_key=value_key,
        )
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=made))
    for name in ("pkg", "flat", "grad", "vol"):
        product(client, name, pricing_pb2.SUM, "n")
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="design", name="design", pricing_unit="credits"))
    rate = pricing_pb2.Rate
    tier = pricing_pb2.Tier
    rates = [
        rate(
            product_id="tok",
            match={"model": "gpt-4", "region": "us-east"},
            unit=pricing_pb2.UnitPrice(price="gpt4_cost_per_1k * markup", per_units="1000"),
        ),
        rate(
            product_id="tok",
            match={"model": "gpt-4"},
            unit=pricing_pb2.UnitPrice(price="gpt4_cost_per_1k", per_units="1000"),
        ),
        rate(product_id="tok", unit=pricing_pb2.UnitPrice(price="0.001", per_units="1000")),
        rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="0.5")),
        rate(product_id="peak", unit=pricing_pb2.UnitPrice(price="2")),
        rate(product_id="users", unit=pricing_pb2.UnitPrice(price="1")),
        rate(product_id="seats", unit=pricing_pb2.UnitPrice(price="3")),
        rate(product_id="mix-gauge", unit=pricing_pb2.UnitPrice(price="1")),
        rate(product_id="mix-sum", unit=pricing_pb2.UnitPrice(price="1")),
        rate(product_id="pkg", package=pricing_pb2.PackagePrice(package_size="100", package_price="2")),
        rate(product_id="flat", flat=pricing_pb2.FlatPrice(price="10")),
        rate(
            product_id="grad",
            tiered=pricing_pb2.TieredPrice(
                mode=pricing_pb2.GRADUATED,
                tiers=[
                    tier(up_to="100", unit_price="1"),
                    tier(up_to="200", unit_price="0.5", flat_price="5"),
                    tier(unit_price="0.1"),
                ],
            ),
        ),
        rate(
            product_id="vol",
            tiered=pricing_pb2.TieredPrice(
                mode=pricing_pb2.VOLUME, tiers=[tier(up_to="100", unit_price="1"), tier(unit_price="0.5")]
            ),
        ),
    ]
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="design",
            set_parameters={"gpt4_cost_per_1k": "0.03", "markup": "1.5"},
            upsert_rates=rates,
            change_note="design audit",
        )
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="design", version=1, effective_from=stamp(month_start_ms()))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-design")
    process = ServerProcess(root / "data", demo=True, extra_args=["--close-grace", "off"])
    yield from serving(process, catalogue)


class Stubs:
    """The generated stubs an acceptance suite would use, on one channel."""

    def __init__(self, channel: grpc.Channel) -> None:
        self.pricing = pricing_pb2_grpc.PricingServiceStub(channel)
        self.contracts = contracts_pb2_grpc.ContractServiceStub(channel)
        self.balance = balance_pb2_grpc.BalanceServiceStub(channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(channel)
        self.invoices = invoices_pb2_grpc.InvoiceServiceStub(channel)


@pytest.fixture
def stubs(server: ServerProcess) -> Iterator[Stubs]:
    with grpc.insecure_channel(server.target) as channel:
        yield Stubs(channel)


def customer_on_design(
    stubs: Stubs, customer_id: str, policy: int = contracts_pb2.ALLOW, overage_price: str = "1.5"
) -> None:
    stubs.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    stubs.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-k",
            customer_id=customer_id,
            rate_card_id="design",
            starting_at=stamp(month_start_ms()),
            overage_policy=policy,  # type: ignore[arg-type]
            overage_price=overage_price,
            currency="USD",
        )
    )


def grant(stubs: Stubs, customer_id: str, grant_id: str, amount: str, paid: str, **fields: object) -> None:
    made = contracts_pb2.Grant(
        id=grant_id,
        customer_id=customer_id,
        contract_id=f"{customer_id}-k",
        kind=fields.pop("kind", contracts_pb2.PREPAID),  # type: ignore[arg-type]
        amount=amount,
        paid_amount=paid,
        **fields,  # type: ignore[arg-type]
    )
    stubs.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def event(
    customer_id: str,
    transaction_id: str,
    event_type: str,
    at_ms: int,
    dims: dict[str, str] | None = None,
    **values: float,
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        dimensions=dims or {},
        values=values,
    )


def test_every_price_model_and_aggregation_prices_as_hand_computed_and_the_invoice_adds_up(stubs: Stubs) -> None:
    """§3's price models and aggregations, one event batch, grant g1 (100 credits paid 90 USD), ALLOW at 1.5 USD a
    credit. By hand, in batch order: tok 10,000 GPT-4 us-east tokens 0.45, 10,000 GPT-4 eu 0.3, 10,000 of another
    model 0.01 (the most specific rate wins); calls 2 x 0.5 = 1; peak MAX(3, 5, 4) = 5 x 2 = 10; users UNIQUE_COUNT
    {a, b} = 2 x 1 = 2; seats LATEST 4 then 2: 2 x 3 = 6; pkg 250 units in packages of 100 rounded up: 3 x 2 = 6;
    flat 10 once in the period however many events; grad GRADUATED 250: 100 x 1 + (5 + 100 x 0.5) + 50 x 0.1 = 160;
    vol VOLUME 80 then 70: price(150) = 75, charged 80 then 75 - 80 = -5. Subtotal 0.45 + 0.3 + 0.01 + 1 + 10 + 2 +
    6 + 6 + 10 + 160 + 75 = 270.76. g1 pays the first 100 (the events up to grad's, which it pays 64.24 of), the
    rest 170.76 is overage (vol's 80, less its 5 back), due 170.76 x 1.5 = 256.14 USD; revenue recognised 90."""
    customer_on_design(stubs, "d-models")
    grant(stubs, "d-models", "d-models-g1", "100", "90")
    at = now_ms() - 1_000
    c = "d-models"
    events = [
        event(c, "1", "tok", at, {"model": "gpt-4", "region": "us-east"}, tokens=10_000),
        event(c, "2", "tok", at, {"model": "gpt-4", "region": "eu"}, tokens=10_000),
        event(c, "3", "tok", at, {"model": "x"}, tokens=10_000),
        event(c, "4", "calls", at),
        event(c, "5", "calls", at),
        event(c, "6", "peak", at, gb=3),
        event(c, "7", "peak", at, gb=5),
        event(c, "8", "peak", at, gb=4),
        event(c, "9", "users", at, {"user": "a"}),
        event(c, "10", "users", at, {"user": "b"}),
        event(c, "11", "users", at, {"user": "a"}),
        event(c, "12", "seats", at, n=4),
        event(c, "13", "seats", at + 1, n=2),
        event(c, "14", "pkg", at, n=250),
        event(c, "15", "flat", at, n=1),
        event(c, "16", "flat", at, n=1),
        event(c, "17", "grad", at, n=250),
        event(c, "18", "vol", at, n=80),
        event(c, "19", "vol", at, n=70),
    ]
    ack = stubs.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b", events=events))
    assert (ack.batch_id, ack.accepted, ack.duplicates, list(ack.rejected)) == ("b", 19, 0, [])
    invoice = stubs.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=c))
    lines = {line.line_id: (line.quantity, line.amount, line.overage) for line in invoice.lines}
    assert lines == {
        "calls": ("2", "1", "0"),
        "flat": ("2", "10", "0"),
        "grad": ("250", "160", "95.76"),
        "peak": ("5", "10", "0"),
        "pkg": ("250", "6", "0"),
        "seats": ("2", "6", "0"),
        "tok;model=gpt-4;region=eu": ("10000", "0.3", "0"),
        "tok;model=gpt-4;region=us-east": ("10000", "0.45", "0"),
        "tok;model=x;region=": ("10000", "0.01", "0"),
        "users": ("2", "2", "0"),
        "vol": ("150", "75", "75"),
    }
    totals = (invoice.subtotal, invoice.overage_amount, invoice.overage_due, invoice.total_due, invoice.currency)
    assert totals == ("270.76", "170.76", "256.14", "256.14", "USD")
    assert [(a.grant_id, a.credits) for a in invoice.credits_applied] == [("d-models-g1", "100")]
    balance = stubs.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=c))
    assert (balance.period_charges, balance.overage_amount, balance.credits_available) == ("270.76", "170.76", "0")
    assert [(g.drawn, g.remaining, g.recognized_revenue) for g in balance.grants] == [("100", "0", "90")]


def test_block_denies_usage_the_available_credit_would_not_cover_before_it_is_exhausted(stubs: Stubs) -> None:
    """§3 BLOCK: "Authorize denies once available credit is exhausted". Read (contracts.proto OveragePolicy, README)
    as: denied once the usage would exhaust it, i.e. when its estimate is more than the credit available to it. 10
    credits, 7 calls ingested (7 x 0.5 = 3.5), 6.5 left: usage estimated 6.5 (6.5 units of grad, 1 a unit up to 100)
    is allowed OK, usage estimated 7 is denied INSUFFICIENT_CREDIT though 6.5 credits are still available; under
    ALLOW the same 7 are OVERAGE_ALLOWED."""
    customer_on_design(stubs, "d-block", contracts_pb2.BLOCK)
    grant(stubs, "d-block", "d-block-g", "10", "10")
    at = now_ms() - 1_000
    stubs.usage.IngestUsageBatch(
        usage_pb2.UsageBatch(events=[event("d-block", f"c{i}", "calls", at) for i in range(7)])
    )

    def decide(customer_id: str, units: float) -> tuple[bool, str, str, str]:
        answer = stubs.balance.Authorize(
            balance_pb2.AuthorizeRequest(
                request_id="r", customer_id=customer_id, event_type="grad", values={"n": units}
            )
        )
        return answer.allowed, answer.reason, answer.estimated_cost, answer.credits_available

    assert decide("d-block", 6.5) == (True, "OK", "6.5", "6.5")
    assert decide("d-block", 7) == (False, "INSUFFICIENT_CREDIT", "7", "6.5")
    customer_on_design(stubs, "d-allow")
    grant(stubs, "d-allow", "d-allow-g", "10", "10")
    stubs.usage.IngestUsageBatch(
        usage_pb2.UsageBatch(events=[event("d-allow", f"c{i}", "calls", at) for i in range(7)])
    )
    assert decide("d-allow", 7) == (True, "OVERAGE_ALLOWED", "7", "6.5")


def test_a_hold_stays_in_remaining_and_is_taken_from_available(stubs: Stubs) -> None:
    """§3's invariant "granted = drawn + remaining + expired (+ held, for reservations)" on the wire: a usable grant's
    remaining holds its held credit (balance.proto GrantBalance.remaining), so granted = drawn + remaining + expired,
    and available = remaining - held. 100 credits, 20 drawn (40 calls x 0.5), a hold of 15 (15 units of grad at 1): remaining 80, held 15, expired 0; credits_remaining 80, credits_held 15,
    credits_available 65."""
    customer_on_design(stubs, "d-hold")
    grant(stubs, "d-hold", "d-hold-g", "100", "100")
    at = now_ms() - 1_000
    stubs.usage.IngestUsageBatch(
        usage_pb2.UsageBatch(events=[event("d-hold", f"c{i}", "calls", at) for i in range(40)])
    )
    held = stubs.balance.Authorize(
        balance_pb2.AuthorizeRequest(
            request_id="r", customer_id="d-hold", event_type="grad", values={"n": 15}, reserve=True, reservation_id="h"
        )
    )
    assert (held.allowed, held.reason, held.estimated_cost, held.credits_available, held.reservation_id) == (
        True,
        "OK",
        "15",
        "65",
        "h",
    )
    balance = stubs.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="d-hold"))
    assert [(g.amount, g.drawn, g.remaining, g.expired, g.held) for g in balance.grants] == [
        ("100", "20", "80", "0", "15")
    ]
    assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("80", "15", "65")


def test_the_demo_catalogue_is_the_credit_pack_example(stubs: Stubs) -> None:
    """§5: `--demo` on an empty data directory loads §1's AI credit-pack example: customer acme holding 50,000 prepaid
    credits bought for 45,000 USD (1 credit = 0.9 USD) on rate card ai-credits (credits), product ai_action. A
    complex GPT-4 summary costs summary_base x gpt4_factor x complex_factor + crm_surcharge = 1 x 2.5 x 2 + 0 = 5
    credits (README); a region dimension, which the demo does not price by (README "The demo catalogue"), is accepted
    and changes nothing."""
    balance = stubs.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="acme"))
    demo_grant = [(g.grant_id, g.kind, g.amount) for g in balance.grants]
    assert demo_grant == [("acme-prepaid-50k", contracts_pb2.PREPAID, "50000")]
    assert balance.pricing_unit == "credits"
    contract = stubs.contracts.GetContract(contracts_pb2.GetContractRequest(id="acme-2026"))
    assert [(g.amount, g.paid_amount) for g in contract.grants] == [("50000", "45000")]
    summary = {"action": "summary", "model": "gpt-4", "complexity": "complex"}
    for dims in (summary, {**summary, "region": "us-east"}):
        answer = stubs.balance.Authorize(
            balance_pb2.AuthorizeRequest(request_id="r", customer_id="acme", event_type="ai_action", dimensions=dims)
        )
        assert (answer.allowed, answer.reason, answer.estimated_cost) == (True, "OK", "5")


def test_the_dedupe_window_has_no_flag(tmp_path: Path) -> None:
    """README "Limits and backpressure": the dedupe window is fixed at 35 days, the one ingestion limit without a flag
    (a window that could change between starts would have to be journaled with each batch to replay alike), so
    `--dedupe-window` is an unknown option: a usage error, exit 2, before the data directory is made."""
    data_dir = tmp_path / "data"
    started = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data_dir), "--dedupe-window", "7d"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 2
    assert "--dedupe-window" in started.stderr
    assert not data_dir.exists()


def test_an_events_refunds_and_charges_are_netted_before_they_touch_grants_or_overage(stubs: Stubs) -> None:
    """§3 "an event's refunds and charges are netted before they touch grants or overage" (README "Pricing",
    docs/architecture.md §5 "Draw"): refunds first, then each charge takes back what they gave back that can pay it.
    Products mix-gauge (LATEST of g) and mix-sum (SUM of s), 1 credit a unit, both fed by event type mix. No credit:
    g = 5 is 5 of overage. Then 10 credits granted, and one event g = 2, s = 3: the gauge gives back 3 of overage, the
    sum charges 3, net 0 (Authorize estimates 0, OK). Netted, the sum's 3 takes back that overage: overage stays 5
    (2 on the gauge's line, 3 on the sum's), the grant whole; period charges 2 + 3 = 5. (Releases before drew the
    sum's 3 from the grant, leaving overage 2: their journals replay so.)"""
    customer_on_design(stubs, "d-net", overage_price="1")
    at = now_ms() - 2_000
    first = usage_pb2.UsageBatch(events=[event("d-net", "e1", "mix", at, g=5, s=0)])
    assert stubs.usage.IngestUsageBatch(first).accepted == 1
    grant(stubs, "d-net", "d-net-g", "10", "10")
    estimate = stubs.balance.Authorize(
        balance_pb2.AuthorizeRequest(request_id="r", customer_id="d-net", event_type="mix", values={"g": 2, "s": 3})
    )
    assert (estimate.allowed, estimate.reason, estimate.estimated_cost) == (True, "OK", "0")
    second = usage_pb2.UsageBatch(events=[event("d-net", "e2", "mix", at + 1_000, g=2, s=3)])
    assert stubs.usage.IngestUsageBatch(second).accepted == 1
    balance = stubs.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="d-net"))
    assert (balance.period_charges, balance.overage_amount) == ("5", "5")
    assert [(g.drawn, g.remaining) for g in balance.grants] == [("0", "10")]
    invoice = stubs.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="d-net"))
    lines = {
        line.line_id: (line.amount, line.overage, [(c.grant_id, c.credits) for c in line.credits_applied])
        for line in invoice.lines
    }
    assert lines == {"mix-gauge": ("2", "2", []), "mix-sum": ("3", "3", [])}
