"""The admin surface (PricingService, ContractService) end to end against a real server without the demo.

Every test builds the same catalogue through the wire (`build_catalogue`):

- products `input_tokens` and `output_tokens`, both SUM, both fed by event type `llm_call` (values
  `input_tokens` / `output_tokens`), priced on dimensions (model, region);
- rate card `llm-usd` (pricing unit USD), version 1 with parameters
      gpt4_in_per_1k 0.03, gpt4_out_per_1k 0.06, eu_uplift_per_1k 0.01, markup 1.2, default_per_1k 0.002
  and rates, each per 1000 tokens:
      input_tokens  {model: gpt-4}             gpt4_in_per_1k * markup                      = 0.03 x 1.2        = 0.036
      input_tokens  {model: gpt-4, region: eu} (gpt4_in_per_1k + eu_uplift_per_1k) * markup = (0.03+0.01) x 1.2 = 0.048
      input_tokens  {model: "*"}               default_per_1k                               =                     0.002
      output_tokens {model: gpt-4}             gpt4_out_per_1k * markup                     = 0.06 x 1.2        = 0.072
      output_tokens {region: "*"}              default_per_1k * 2                           = 0.002 x 2         = 0.004
  published effective from H0 = the start of the hour two hours ago;
- customer `globex` (and `initech`), contract `globex-c1` from H0 (ALLOW overage at 1.5 USD per USD of overage),
  grants `globex-prepaid` (PREPAID 10 USD of credit paid 9, priority 10, created first) and `globex-promo`
  (PROMOTIONAL 1, priority 1: burns first although created second), both starting at H0.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from decimal import Decimal

import grpc
import pytest
from google.protobuf import timestamp_pb2
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory

HOUR_MS = 3_600_000
MINUTE_MS = 60_000
CARD = "llm-usd"
CUSTOMER = "globex"
CONTRACT = "globex-c1"
PREPAID = "globex-prepaid"
PROMO = "globex-promo"
V1_PARAMETERS = {
    "gpt4_in_per_1k": "0.03",
    "gpt4_out_per_1k": "0.06",
    "eu_uplift_per_1k": "0.01",
    "markup": "1.2",
    "default_per_1k": "0.002",
}
S = grpc.StatusCode


# ---------------------------------------------------------------------------------------------
# Helpers


def assert_amount(actual: str, expected: str) -> None:
    """A wire amount: numerically equal AND in the canonical text the hand computation gives."""
    assert Decimal(actual) == Decimal(expected), f"{actual!r} != {expected!r}"
    assert actual == expected, f"not canonical: {actual!r}, expected {expected!r}"


def ts(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def ms_of(stamp: timestamp_pb2.Timestamp) -> int:
    return int(stamp.seconds * 1000 + stamp.nanos // 1_000_000)


def expect_error(code: grpc.StatusCode, call: Callable[[], object]) -> TariffError:
    """Runs a call that must fail with `code` (never UNKNOWN) and a message; returns the typed error."""
    try:
        call()
    except TariffError as exc:  # the client's stubs raise its typed errors
        error = exc
    else:
        raise AssertionError(f"expected {code.name}, the call succeeded")
    assert error.code != S.UNKNOWN, f"a client mistake answered UNKNOWN: {error}"
    assert error.code == code, f"expected {code.name}, got {error}"
    assert error.details, f"{code.name} without a message"
    return error


def violation_fields(error: TariffError) -> list[str]:
    return [v.field for v in error.field_violations]


def unit_rate(product: str, match: dict[str, str], price: str, per_units: str = "1000") -> pricing_pb2.Rate:
    return pricing_pb2.Rate(
        product_id=product, match=match, unit=pricing_pb2.UnitPrice(price=price, per_units=per_units)
    )


V1_RATES = [
    unit_rate("input_tokens", {"model": "gpt-4"}, "gpt4_in_per_1k * markup"),
    unit_rate("input_tokens", {"model": "gpt-4", "region": "eu"}, "(gpt4_in_per_1k + eu_uplift_per_1k) * markup"),
    unit_rate("input_tokens", {"model": "*"}, "default_per_1k"),
    unit_rate("output_tokens", {"model": "gpt-4"}, "gpt4_out_per_1k * markup"),
    unit_rate("output_tokens", {"region": "*"}, "default_per_1k * 2"),
]


def llm(
    txn: str, at_ms: int, model: str, region: str, input_tokens: float, output_tokens: float
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=txn,
        customer_id=CUSTOMER,
        event_type="llm_call",
        timestamp_ms=at_ms,
        dimensions={"model": model, "region": region},
        values={"input_tokens": input_tokens, "output_tokens": output_tokens},
    )


def ingest_one(client: TariffClient, event: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch([event], batch_id=event.transaction_id)
    assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (1, 0, []), ack


def grants_by_id(balance: balance_pb2.Balance) -> dict[str, balance_pb2.GrantBalance]:
    return {g.grant_id: g for g in balance.grants}


def assert_grant(grant: balance_pb2.GrantBalance, drawn: str, remaining: str, revenue: str) -> None:
    assert_amount(grant.drawn, drawn)
    assert_amount(grant.remaining, remaining)
    assert_amount(grant.expired, "0")
    assert_amount(grant.recognized_revenue, revenue)


@dataclasses.dataclass
class Catalogue:
    h0: int
    products: list[pricing_pb2.Product]
    card: pricing_pb2.RateCard
    draft: pricing_pb2.RateCardVersion
    report: pricing_pb2.ValidationReport
    published: pricing_pb2.PublishVersionResponse
    customer: contracts_pb2.Customer
    contract: contracts_pb2.Contract
    prepaid: contracts_pb2.Grant
    promo: contracts_pb2.Grant


def build_catalogue(client: TariffClient) -> Catalogue:
    now = now_ms()
    h0 = now - now % HOUR_MS - 2 * HOUR_MS
    products = [
        client.pricing.CreateProduct(
            pricing_pb2.CreateProductRequest(
                product=pricing_pb2.Product(
                    id=name,
                    name=name.replace("_", " "),
                    event_type="llm_call",
                    aggregation=pricing_pb2.SUM,
                    value_key=name,
                    pricing_dimensions=["model", "region"],
                    unit="tokens",
                )
            )
        )
        for name in ("input_tokens", "output_tokens")
    ]
    card = client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, name="LLM", pricing_unit="USD"))
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, set_parameters=V1_PARAMETERS, upsert_rates=V1_RATES, change_note="launch prices"
        )
    )
    report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=1))
    published = client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(h0))
    )
    customer = client.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(id=CUSTOMER, name="Globex", attributes={"segment": "smb"})
    )
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="initech", name="Initech"))
    contract = client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=CONTRACT,
            customer_id=CUSTOMER,
            rate_card_id=CARD,
            starting_at=ts(h0),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="1.5",
            currency="USD",
        )
    )
    prepaid = client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=PREPAID,
                contract_id=CONTRACT,
                kind=contracts_pb2.PREPAID,
                amount="10",
                paid_amount="9",
                priority=10,
                starts_at=ts(h0),
            )
        )
    )
    promo = client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=PROMO, contract_id=CONTRACT, kind=contracts_pb2.PROMOTIONAL, amount="1", priority=1, starts_at=ts(h0)
            )
        )
    )
    return Catalogue(h0, products, card, draft, report, published, customer, contract, prepaid, promo)


# ---------------------------------------------------------------------------------------------
# The catalogue


def test_catalogue_is_created_and_read_back_through_the_wire(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        h0 = cat.h0

        # What each create answered.
        assert [(p.id, p.event_type, p.aggregation, p.value_key, list(p.pricing_dimensions)) for p in cat.products] == [
            ("input_tokens", "llm_call", pricing_pb2.SUM, "input_tokens", ["model", "region"]),
            ("output_tokens", "llm_call", pricing_pb2.SUM, "output_tokens", ["model", "region"]),
        ]
        assert (cat.card.id, cat.card.pricing_unit, cat.card.current_version) == (CARD, "USD", 0)
        assert (cat.draft.version, cat.draft.state, cat.draft.based_on_version) == (1, pricing_pb2.DRAFT, 0)
        assert dict(cat.draft.parameters) == V1_PARAMETERS
        assert cat.report.ok
        assert [f for f in cat.report.findings if f.severity == pricing_pb2.ERROR] == []
        assert cat.published.version.state == pricing_pb2.PUBLISHED
        assert ms_of(cat.published.version.effective_from) == h0
        assert cat.published.validation.ok
        assert (cat.customer.id, cat.customer.name, dict(cat.customer.attributes)) == (
            CUSTOMER,
            "Globex",
            {"segment": "smb"},
        )
        assert (cat.contract.id, cat.contract.customer_id, cat.contract.rate_card_id) == (CONTRACT, CUSTOMER, CARD)
        assert ms_of(cat.contract.starting_at) == h0
        assert cat.contract.overage_policy == contracts_pb2.ALLOW
        assert_amount(cat.contract.overage_price, "1.5")
        assert (cat.prepaid.id, cat.prepaid.kind, cat.prepaid.customer_id) == (PREPAID, contracts_pb2.PREPAID, CUSTOMER)
        assert_amount(cat.prepaid.amount, "10")
        assert_amount(cat.prepaid.paid_amount, "9")
        assert (cat.promo.id, cat.promo.kind, cat.promo.priority) == (PROMO, contracts_pb2.PROMOTIONAL, 1)
        assert_amount(cat.promo.amount, "1")
        assert_amount(cat.promo.paid_amount, "0")

        # Reads.
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT))
        assert {g.id: (g.kind, g.amount, g.paid_amount, g.priority) for g in contract.grants} == {
            PREPAID: (contracts_pb2.PREPAID, "10", "9", 10),
            PROMO: (contracts_pb2.PROMOTIONAL, "1", "0", 1),
        }
        assert all(ms_of(g.starts_at) == h0 for g in contract.grants)

        customer = client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=CUSTOMER))
        assert (customer.id, customer.name, dict(customer.attributes)) == (CUSTOMER, "Globex", {"segment": "smb"})
        assert customer.created_at.seconds > 0

        listed = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest())
        assert [c.id for c in listed.customers] == [CUSTOMER, "initech"]
        first_page = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=1))
        assert [c.id for c in first_page.customers] == [CUSTOMER]
        assert first_page.next_page_token
        second_page = client.contracts.ListCustomers(
            contracts_pb2.ListCustomersRequest(page_size=1, page_token=first_page.next_page_token)
        )
        assert [c.id for c in second_page.customers] == ["initech"]
        assert second_page.next_page_token == ""

        products = client.pricing.ListProducts(pricing_pb2.ListProductsRequest()).products
        assert {p.id: (p.event_type, p.aggregation, p.value_key, p.unit) for p in products} == {
            "input_tokens": ("llm_call", pricing_pb2.SUM, "input_tokens", "tokens"),
            "output_tokens": ("llm_call", pricing_pb2.SUM, "output_tokens", "tokens"),
        }

        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert (card.pricing_unit, card.latest_version, card.current_version) == ("USD", 1, 1)

        versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
        assert [(v.version, v.state) for v in versions] == [(1, pricing_pb2.PUBLISHED)]

        v1 = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=1))
        assert dict(v1.parameters) == V1_PARAMETERS
        assert v1.change_note == "launch prices"
        assert len(v1.rates) == len(V1_RATES)
        gpt4_in = next(r for r in v1.rates if r.product_id == "input_tokens" and dict(r.match) == {"model": "gpt-4"})
        assert (gpt4_in.unit.price, gpt4_in.unit.per_units) == ("gpt4_in_per_1k * markup", "1000")
        assert ms_of(v1.effective_from) == h0
        at = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=ts(h0 + 30 * MINUTE_MS)))
        assert at.version == 1
        expect_error(
            S.NOT_FOUND,
            lambda: client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=ts(h0 - 1))),
        )

        # Every change is audited: who, what, on what, in order.
        entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest()).entries
        assert [(e.action, e.target) for e in entries] == [
            ("CreateProduct", "product/input_tokens"),
            ("CreateProduct", "product/output_tokens"),
            ("CreateRateCard", f"rate_card/{CARD}"),
            ("CreateDraftVersion", f"rate_card/{CARD}/version/1"),
            ("PublishVersion", f"rate_card/{CARD}/version/1"),
            ("CreateCustomer", f"customer/{CUSTOMER}"),
            ("CreateCustomer", "customer/initech"),
            ("CreateContract", f"contract/{CONTRACT}"),
            ("GrantCredits", f"grant/{PREPAID}"),
            ("GrantCredits", f"grant/{PROMO}"),
        ]
        assert all(e.actor for e in entries)
        assert all(e.time.seconds > 0 and e.diff for e in entries)
        assert [e.seq for e in entries] == sorted({e.seq for e in entries}), "seq strictly increasing"
        assert "gpt4_in_per_1k * markup" in entries[3].diff
        on_card = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target=f"rate_card/{CARD}")).entries
        assert [e.action for e in on_card] == ["CreateRateCard", "CreateDraftVersion", "PublishVersion"]
        later = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=entries[7].seq)).entries
        assert [e.target for e in later] == [f"grant/{PREPAID}", f"grant/{PROMO}"]

        def everything(client: TariffClient) -> list[object]:
            return [
                client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest()),
                client.pricing.ListProducts(pricing_pb2.ListProductsRequest()),
                client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)),
                client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)),
                client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest()),
                client.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT)),
                client.get_balance(CUSTOMER),
            ]

        before_crash = everything(client)

    # The catalogue is rebuilt from the journal alone after a crash (no snapshot was written).
    server.kill9()
    server.start()
    with server.client() as client:
        assert everything(client) == before_crash


# ---------------------------------------------------------------------------------------------
# Usage through the catalogue


def test_two_products_from_one_event_burn_promotional_first_then_prepaid_then_overage(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        at = cat.h0 + 10 * MINUTE_MS  # v1 is in force

        # e1 gpt-4/us: input 100,000 x 0.036/1000 = 3.6; output 50,000 x 0.072/1000 = 3.6; charge 7.2.
        # The input charge draws the promo's 1 first (priority 1), then 2.6 from prepaid; output draws 3.6 prepaid.
        ingest_one(client, llm("e1", at, "gpt-4", "us", 100_000, 50_000))
        balance = client.get_balance(CUSTOMER)
        assert balance.pricing_unit == "USD"
        assert [g.grant_id for g in balance.grants] == [PROMO, PREPAID], "listed in burn order"
        grants = grants_by_id(balance)
        assert_grant(grants[PROMO], drawn="1", remaining="0", revenue="0")  # promotional: no revenue
        # prepaid drawn 2.6 + 3.6 = 6.2, remaining 10 - 6.2 = 3.8, revenue 6.2 x 9/10 = 5.58
        assert_grant(grants[PREPAID], drawn="6.2", remaining="3.8", revenue="5.58")
        assert_amount(balance.credits_remaining, "3.8")
        assert_amount(balance.credits_available, "3.8")
        assert_amount(balance.period_charges, "7.2")
        assert_amount(balance.overage_amount, "0")
        assert ms_of(balance.period_start) == cat.h0

        # e2 gpt-4/eu (the more specific rate): input 10,000 x 0.048/1000 = 0.48; output 0 -> 0.
        ingest_one(client, llm("e2", at, "gpt-4", "eu", 10_000, 0))
        # e3 llama/us (wildcards): input 500,000 x 0.002/1000 = 1; output 250,000 x 0.004/1000 = 1; charge 2.
        ingest_one(client, llm("e3", at, "llama-3", "us", 500_000, 250_000))
        balance = client.get_balance(CUSTOMER)
        # charges 7.2 + 0.48 + 2 = 9.68; prepaid drawn 6.2 + 0.48 + 2 = 8.68, remaining 1.32, revenue 8.68 x 0.9 = 7.812
        assert_grant(grants_by_id(balance)[PREPAID], drawn="8.68", remaining="1.32", revenue="7.812")
        assert_amount(balance.period_charges, "9.68")
        assert_amount(balance.credits_remaining, "1.32")
        assert_amount(balance.overage_amount, "0")

        # e4 gpt-4/us input 50,000 more: price(150,000) - price(100,000) = 5.4 - 3.6 = 1.8 (output 0 -> 0).
        # Prepaid covers its last 1.32; 1.8 - 1.32 = 0.48 is overage.
        ingest_one(client, llm("e4", at, "gpt-4", "us", 50_000, 0))
        balance = client.get_balance(CUSTOMER)
        grants = grants_by_id(balance)
        assert_grant(grants[PROMO], drawn="1", remaining="0", revenue="0")
        # fully drawn: revenue is exactly what was paid, 9
        assert_grant(grants[PREPAID], drawn="10", remaining="0", revenue="9")
        assert_amount(balance.credits_remaining, "0")
        assert_amount(balance.credits_available, "0")
        assert_amount(balance.period_charges, "11.48")  # 9.68 + 1.8
        assert_amount(balance.overage_amount, "0.48")  # 11.48 - (1 + 10) granted
        assert_amount(balance.overage_due, "0.72")  # 0.48 x overage_price 1.5

        # Authorize now prices at v1 and says it would be overage:
        # input 1,000 x 0.036/1000 = 0.036 + output 1,000 x 0.072/1000 = 0.072 -> 0.108.
        decision = client.authorize(
            CUSTOMER, "llm_call", {"model": "gpt-4", "region": "us"}, {"input_tokens": 1000, "output_tokens": 1000}
        )
        assert (decision.allowed, decision.reason) == (True, "OVERAGE_ALLOWED")
        assert_amount(decision.estimated_cost, "0.108")
        assert_amount(decision.credits_available, "0")


def test_second_version_prices_events_from_its_effective_hour_on(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        h1 = cat.h0 + HOUR_MS

        # f1 at H0+10min, v1: input 10,000 x 0.036/1000 = 0.36 + output 10,000 x 0.072/1000 = 0.72 -> 1.08
        ingest_one(client, llm("f1", cat.h0 + 10 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "1.08")

        # v2 = v1 with markup 1.5, effective one hour after v1:
        #   gpt-4 input 0.03 x 1.5 = 0.045, gpt-4/eu input (0.03 + 0.01) x 1.5 = 0.06, gpt-4 output 0.06 x 1.5 = 0.09
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, set_parameters={"markup": "1.5"}, change_note="markup up"
            )
        )
        assert (draft.version, draft.state, draft.based_on_version) == (2, pricing_pb2.DRAFT, 1)
        assert dict(draft.parameters) == {**V1_PARAMETERS, "markup": "1.5"}
        assert len(draft.rates) == len(V1_RATES)
        assert client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=2)).ok
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(h1))
        )
        assert (published.version.version, published.version.state) == (2, pricing_pb2.PUBLISHED)
        assert ms_of(published.version.effective_from) == h1

        # f2 at H0+30min, ingested after v2's publication: still v1, 1.08 -> charges 1.08 + 1.08 = 2.16
        ingest_one(client, llm("f2", cat.h0 + 30 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "2.16")
        # f3 exactly at H0+1h: v2, input 10 x 0.045 = 0.45 + output 10 x 0.09 = 0.9 -> 1.35; charges 3.51
        ingest_one(client, llm("f3", h1, "gpt-4", "us", 10_000, 10_000))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "3.51")
        # f4 a second ago, gpt-4/eu: v2, input 10 x 0.06 = 0.6, output 0 -> 0.6; charges 4.11
        ingest_one(client, llm("f4", now_ms() - 1_000, "gpt-4", "eu", 10_000, 0))
        balance = client.get_balance(CUSTOMER)
        assert_amount(balance.period_charges, "4.11")
        grants = grants_by_id(balance)
        # promo 1 first, then prepaid 4.11 - 1 = 3.11, remaining 10 - 3.11 = 6.89, revenue 3.11 x 0.9 = 2.799
        assert_grant(grants[PROMO], drawn="1", remaining="0", revenue="0")
        assert_grant(grants[PREPAID], drawn="3.11", remaining="6.89", revenue="2.799")
        assert_amount(balance.credits_remaining, "6.89")
        assert_amount(balance.overage_amount, "0")

        # Authorize prices at v2 now: input 1 x 0.045 + output 1 x 0.09 = 0.135.
        decision = client.authorize(
            CUSTOMER, "llm_call", {"model": "gpt-4", "region": "us"}, {"input_tokens": 1000, "output_tokens": 1000}
        )
        assert (decision.allowed, decision.reason) == (True, "OK")
        assert_amount(decision.estimated_cost, "0.135")

        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert (card.latest_version, card.current_version) == (2, 2)
        versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
        assert [(v.version, v.state, ms_of(v.effective_from)) for v in versions] == [
            (1, pricing_pb2.PUBLISHED, cat.h0),
            (2, pricing_pb2.PUBLISHED, h1),
        ]
        for moment, number in [(cat.h0, 1), (h1 - 1, 1), (h1, 2), (now_ms(), 2)]:
            found = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=ts(moment)))
            assert found.version == number, (moment - cat.h0, found.version)
        v2 = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=2))
        assert v2.parameters["markup"] == "1.5"
        assert v2.based_on_version == 1
        audit = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target=f"rate_card/{CARD}/version/2"))
        assert [e.action for e in audit.entries] == ["CreateDraftVersion", "PublishVersion"]


def test_events_the_catalogue_cannot_price_are_rejected_with_their_reason(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        # initech's contract starts an hour before any version is in force (v1: from H0).
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="initech-c1", customer_id="initech", rate_card_id=CARD, starting_at=ts(cat.h0 - HOUR_MS)
            )
        )

        def initech(txn: str, at_ms: int) -> usage_pb2.UsageEvent:
            event = llm(txn, at_ms, "llama-3", "us", 1_000, 1_000)
            event.customer_id = "initech"
            return event

        early = initech("early", cat.h0 - 30 * MINUTE_MS)
        no_output = llm("no-output", cat.h0 + 10 * MINUTE_MS, "gpt-4", "us", 1_000, 0)
        del no_output.values["output_tokens"]
        ack = client.ingest_batch(
            [early, no_output, initech("priced", cat.h0 + 10 * MINUTE_MS)],
            batch_id="unpriceable",
        )
        assert [(r.index, r.transaction_id, r.reason) for r in ack.rejected] == [
            (0, "early", usage_pb2.NO_APPLICABLE_RATE),
            (1, "no-output", usage_pb2.INVALID_EVENT),
        ]
        assert "output_tokens" in ack.rejected[1].message
        assert (ack.accepted, ack.duplicates) == (1, 0)
        # globex: nothing charged, not even the input_tokens half of the event missing output_tokens.
        assert_amount(client.get_balance(CUSTOMER).period_charges, "0")
        # initech has no grants: llama-3 input 1,000 x 0.002/1000 + output 1,000 x 0.004/1000 = 0.006, all overage
        balance = client.get_balance("initech")
        assert_amount(balance.period_charges, "0.006")
        assert_amount(balance.overage_amount, "0.006")
        assert_amount(balance.overage_due, "0.006")  # overage_price defaults to 1
        assert_amount(balance.credits_remaining, "0")

        # Once pricing covers it, the refused event can be sent again under the same id.
        client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1))
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(cat.h0 - HOUR_MS))
        )
        ingest_one(client, early)
        # 0.006 + 0.006 (v2 = v1's prices) = 0.012
        balance = client.get_balance("initech")
        assert_amount(balance.period_charges, "0.012")
        assert_amount(balance.overage_amount, "0.012")


def test_publishing_over_already_rated_usage_rerates_it(server_factory: ServerFactory) -> None:
    """A version effective before usage already rated re-rates the usage it covers (docs/architecture.md §5,
    "Re-rating and simulation"); silently keeping the old price would be wrong."""
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        h1 = cat.h0 + HOUR_MS
        # g1 at H0+70min, rated under v1: 10 x 0.036 + 10 x 0.072 = 0.36 + 0.72 = 1.08
        ingest_one(client, llm("g1", h1 + 10 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "1.08")
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, set_parameters={"markup": "1.5"}
            )
        )
        request = pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(h1))
        response = client.pricing.PublishVersion(request)
        # re-rated at v2: 10 x 0.045 + 10 x 0.09 = 0.45 + 0.9 = 1.35
        assert response.events_rerated == 1
        assert_amount(client.get_balance(CUSTOMER).period_charges, "1.35")


# ---------------------------------------------------------------------------------------------
# Errors: the right status, the field, never UNKNOWN


def test_invalid_arguments_name_the_field_in_bad_request_violations(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.CreateProduct(
                pricing_pb2.CreateProductRequest(
                    product=pricing_pb2.Product(id="no_type", aggregation=pricing_pb2.COUNT)
                )
            ),
        )
        assert violation_fields(error) == ["product.event_type"]

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.CreateProduct(
                pricing_pb2.CreateProductRequest(
                    product=pricing_pb2.Product(id="sum_no_key", event_type="x", aggregation=pricing_pb2.SUM)
                )
            ),
        )
        assert violation_fields(error) == ["product.value_key"]

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(
                    grant=contracts_pb2.Grant(contract_id=CONTRACT, kind=contracts_pb2.PREPAID, amount="abc")
                )
            ),
        )
        assert violation_fields(error) == ["grant.amount"]

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(
                    grant=contracts_pb2.Grant(
                        contract_id=CONTRACT, kind=contracts_pb2.PROMOTIONAL, amount="5", paid_amount="5"
                    )
                )
            ),
        )
        assert violation_fields(error) == ["grant.paid_amount"]

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="bad id!")),
        )
        assert violation_fields(error) == ["id"]

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.contracts.CreateContract(contracts_pb2.CreateContractRequest(customer_id="initech")),
        )
        assert violation_fields(error) == ["rate_card_id"]

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(
                    rate_card_id=CARD, based_on_version=1, set_parameters={"markup": "lots"}
                )
            ),
        )
        assert violation_fields(error) == ["set_parameters[markup]"]

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(
                    rate_card_id=CARD, upsert_rates=[pricing_pb2.Rate(product_id="input_tokens")]
                )
            ),
        )
        assert violation_fields(error) == ["upsert_rates[0].price"]

        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.balance.Authorize(
                balance_pb2.AuthorizeRequest(
                    customer_id=CUSTOMER,
                    event_type="llm_call",
                    dimensions={"model": "gpt-4"},
                    values={"input_tokens": float("nan"), "output_tokens": 1.0},
                )
            ),
        )
        assert violation_fields(error) == ["values"]

        error = expect_error(
            S.INVALID_ARGUMENT, lambda: client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=""))
        )
        assert violation_fields(error) == ["customer_id"]

        # A version that cannot price unambiguously: output_tokens {region: us} is as specific as
        # {model: gpt-4}, and no rate decides an event with both.
        ambiguous = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                upsert_rates=[unit_rate("output_tokens", {"region": "us"}, "0.05")],
            )
        )
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=ambiguous.version)
        )
        assert not report.ok
        errors = [f for f in report.findings if f.severity == pricing_pb2.ERROR]
        assert len(errors) == 1
        assert errors[0].path.startswith("rates[") and errors[0].path.endswith("].match"), errors[0].path
        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(
                    rate_card_id=CARD, version=ambiguous.version, effective_from=ts(cat.h0 + HOUR_MS)
                )
            ),
        )
        assert violation_fields(error) == [f"version.{errors[0].path}"]

        # A version pricing a product that does not exist.
        unknown = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, upsert_rates=[unit_rate("no_such_product", {}, "1")]
            )
        )
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=unknown.version)
        )
        assert not report.ok
        assert [(f.severity, f.path) for f in report.findings if f.severity == pricing_pb2.ERROR] == [
            (pricing_pb2.ERROR, "rates[0].product_id")
        ]
        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(
                    rate_card_id=CARD, version=unknown.version, effective_from=ts(cat.h0 + HOUR_MS)
                )
            ),
        )
        assert violation_fields(error) == ["version.rates[0].product_id"]

        # A valid draft published off the hour is refused for that alone, and accepted on the hour.
        valid = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, set_parameters={"markup": "2"})
        )

        def publish_valid_at(at_ms: int) -> object:
            request = pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=valid.version, effective_from=ts(at_ms)
            )
            return client.pricing.PublishVersion(request)

        for off_hour in (cat.h0 + HOUR_MS + 1_000, cat.h0 + HOUR_MS + 1):
            error = expect_error(S.INVALID_ARGUMENT, lambda: publish_valid_at(off_hour))  # noqa: B023
            assert violation_fields(error) == ["effective_from"]
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=valid.version, effective_from=ts(cat.h0 + HOUR_MS)
            )
        )
        assert published.version.state == pricing_pb2.PUBLISHED


def test_not_found_already_exists_and_failed_precondition(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)

        expect_error(S.NOT_FOUND, lambda: client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="nobody")))
        expect_error(S.NOT_FOUND, lambda: client.contracts.GetContract(contracts_pb2.GetContractRequest(id="nope")))
        expect_error(S.NOT_FOUND, lambda: client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="nope")))
        expect_error(
            S.NOT_FOUND,
            lambda: client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, version=99)),
        )
        expect_error(
            S.NOT_FOUND,
            lambda: client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=99)),
        )
        expect_error(
            S.NOT_FOUND,
            lambda: client.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(customer_id="nobody", rate_card_id=CARD)
            ),
        )
        expect_error(
            S.NOT_FOUND,
            lambda: client.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(
                    grant=contracts_pb2.Grant(contract_id="nope", kind=contracts_pb2.PREPAID, amount="1")
                )
            ),
        )
        expect_error(
            S.NOT_FOUND, lambda: client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="nobody"))
        )

        error = expect_error(
            S.ALREADY_EXISTS,
            lambda: client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=CUSTOMER, name="again")),
        )
        assert CUSTOMER in error.details
        # The same id with other fields is a clash (the same request again is a retry: tests/test_idempotency.py).
        renamed = pricing_pb2.Product()
        renamed.CopyFrom(cat.products[0])
        renamed.name = "another name"
        expect_error(
            S.ALREADY_EXISTS,
            lambda: client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=renamed)),
        )
        expect_error(
            S.ALREADY_EXISTS,
            lambda: client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="USD")),
        )

        error = expect_error(
            S.FAILED_PRECONDITION,
            lambda: client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(cat.h0 + HOUR_MS))
            ),
        )
        assert "published" in error.details
        error = expect_error(
            S.FAILED_PRECONDITION,
            lambda: client.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    id="globex-c2", customer_id=CUSTOMER, rate_card_id=CARD, starting_at=ts(cat.h0 + HOUR_MS)
                )
            ),
        )
        assert CONTRACT in error.details

        # None of the refusals changed anything: the audit log still holds the catalogue's 10 entries.
        assert len(client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest()).entries) == 10

        # Contracts that only touch (one ends where the next starts) do not overlap.
        def contract(contract_id: str, start_ms: int, end_ms: int | None) -> contracts_pb2.CreateContractRequest:
            request = contracts_pb2.CreateContractRequest(
                id=contract_id, customer_id="initech", rate_card_id=CARD, starting_at=ts(start_ms)
            )
            if end_ms is not None:
                request.ending_before.CopyFrom(ts(end_ms))
            return request

        client.contracts.CreateContract(contract("initech-1", cat.h0, cat.h0 + HOUR_MS))
        client.contracts.CreateContract(contract("initech-2", cat.h0 + HOUR_MS, None))
        expect_error(
            S.FAILED_PRECONDITION,
            lambda: client.contracts.CreateContract(contract("initech-3", cat.h0 + 30 * MINUTE_MS, cat.h0 + HOUR_MS)),
        )
        expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.contracts.CreateContract(contract("initech-4", cat.h0 - HOUR_MS, cat.h0 - HOUR_MS)),
        )


@pytest.mark.parametrize("amount", ["abc", "-1", "0", "NaN", "1e50", "1e400000"])
def test_grant_amount_that_is_not_a_representable_positive_decimal_is_invalid_argument(
    server_factory: ServerFactory, amount: str
) -> None:
    server = server_factory()
    with server.client() as client:
        build_catalogue(client)
        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(
                    grant=contracts_pb2.Grant(contract_id=CONTRACT, kind=contracts_pb2.PREPAID, amount=amount)
                )
            ),
        )
        assert violation_fields(error) == ["grant.amount"]


@pytest.mark.parametrize("amount", ["1.0000000000015", "0.0000000000004", "100.0000000000001"])
def test_grant_amount_with_more_than_12_decimal_places_is_invalid_argument_not_rounded(
    server_factory: ServerFactory, amount: str
) -> None:
    # Credits are held at 10^-12 exactly: "1.0000000000015" was once stored as 1.000000000002.
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        before = client.get_balance(CUSTOMER)
        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(
                    grant=contracts_pb2.Grant(
                        id="g-fine",
                        contract_id=CONTRACT,
                        kind=contracts_pb2.PREPAID,
                        amount=amount,
                        starts_at=ts(cat.h0),
                    )
                )
            ),
        )
        assert violation_fields(error) == ["grant.amount"]
        assert "more than 12 decimal places" in error.details
        assert client.get_balance(CUSTOMER).credits_remaining == before.credits_remaining
        # Twelve places, trailing zeros beyond them included, are held exactly.
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(
                    id="g-fine",
                    contract_id=CONTRACT,
                    kind=contracts_pb2.PREPAID,
                    amount="1.000000000001000",
                    starts_at=ts(cat.h0),
                )
            )
        )
        after = client.get_balance(CUSTOMER)
        assert Decimal(after.credits_remaining) - Decimal(before.credits_remaining) == Decimal("1.000000000001")


@pytest.mark.parametrize("price", ["0.0000000000000000004", "0.0300000000000000001"])
def test_literal_price_with_more_than_18_decimal_places_is_a_validation_error_not_rounded(
    server_factory: ServerFactory, price: str
) -> None:
    # "0.0000000000000000004" was once rounded to a price of 0 in silence.
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                upsert_rates=[unit_rate("input_tokens", {"model": "gpt-4"}, price, "1")],  # replaces V1_RATES[0]
            )
        )
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=draft.version)
        )
        assert not report.ok
        [finding] = [f for f in report.findings if f.severity == pricing_pb2.ERROR]
        assert finding.path == "rates[0].unit.price"
        assert "more than 18 decimal places" in finding.message
        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(
                    rate_card_id=CARD, version=draft.version, effective_from=ts(cat.h0 + HOUR_MS)
                )
            ),
        )
        assert violation_fields(error) == ["version.rates[0].unit.price"]


# ---------------------------------------------------------------------------------------------
# Amounts too large to represent: refused as the client's mistake, never fatal to the server


def test_huge_usage_value_is_rejected_as_invalid_event_and_the_server_keeps_running(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    with server.client() as client:
        build_catalogue(client)
        at = now_ms() - 1_000
        events = [
            llm("ok-1", at, "gpt-4", "us", 1_000, 0),  # 1 x 0.036 = 0.036
            llm("huge", at, "gpt-4", "us", 1e300, 0),  # 1e300 tokens: no ledger can hold its price
            llm("ok-2", at, "gpt-4", "us", 1_000, 0),  # 0.036
        ]
        ack = client.ingest_batch(events, batch_id="with-huge")
        assert [(r.index, r.transaction_id, r.reason) for r in ack.rejected] == [(1, "huge", usage_pb2.INVALID_EVENT)]
        assert (ack.accepted, ack.duplicates) == (2, 0)
        assert server.running
        # 0.036 + 0.036 = 0.072, all from the promo grant (priority 1): 11 - 0.072 = 10.928 remaining
        balance = client.get_balance(CUSTOMER)
        assert_amount(balance.period_charges, "0.072")
        assert_amount(balance.credits_remaining, "10.928")
        ingest_one(client, llm("ok-3", at, "gpt-4", "us", 1_000, 0))


def test_authorize_with_huge_value_is_invalid_argument(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        build_catalogue(client)
        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.balance.Authorize(
                balance_pb2.AuthorizeRequest(
                    customer_id=CUSTOMER,
                    event_type="llm_call",
                    dimensions={"model": "gpt-4", "region": "us"},
                    values={"input_tokens": 1e300, "output_tokens": 0},
                )
            ),
        )
        assert violation_fields(error) == ["values"]


def test_version_with_a_price_too_large_to_rate_is_refused_and_the_server_keeps_running(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                upsert_rates=[unit_rate("input_tokens", {"model": "gpt-4"}, "1e60", "1")],  # replaces V1_RATES[0]
            )
        )
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=draft.version)
        )
        assert not report.ok
        assert [f.path for f in report.findings if f.severity == pricing_pb2.ERROR] == ["rates[0].unit.price"]
        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(
                    rate_card_id=CARD, version=draft.version, effective_from=ts(cat.h0 + HOUR_MS)
                )
            ),
        )
        assert violation_fields(error) == ["version.rates[0].unit.price"]
        ingest_one(client, llm("after", now_ms() - 1_000, "gpt-4", "us", 1_000, 0))
        assert server.running


def test_grant_paid_amount_too_large_to_recognise_is_invalid_argument(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        error = expect_error(
            S.INVALID_ARGUMENT,
            lambda: client.contracts.GrantCredits(
                contracts_pb2.GrantCreditsRequest(
                    grant=contracts_pb2.Grant(
                        id="g-huge",
                        contract_id=CONTRACT,
                        kind=contracts_pb2.PREPAID,
                        amount="100",
                        paid_amount="1e60",
                        priority=0,
                        starts_at=ts(cat.h0),
                    )
                )
            ),
        )
        assert violation_fields(error) == ["grant.paid_amount"]
        ingest_one(client, llm("after", now_ms() - 1_000, "gpt-4", "us", 1_000, 0))
        assert server.running
