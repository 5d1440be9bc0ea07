"""The money defects an independent audit found in the Python usage path (items 1-4), as regression tests over
the wire against a real server, which now rates with the kernel. The numbers are the audit's."""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf import timestamp_pb2
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory

HOUR_MS = 3_600_000


def ts(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def world(
    client: TariffClient,
    products: Sequence[tuple[str, str]],
    rates: Sequence[pricing_pb2.Rate],
    *,
    policy: contracts_pb2.OveragePolicy = contracts_pb2.ALLOW,
    overage_price: str = "1",
    grant: tuple[str, Sequence[str]] | None = None,
    overrides: Sequence[contracts_pb2.PriceOverride] = (),
) -> int:
    """Products (id, value key) on event type `call`, one rate card version, customer `c` on contract `k` from
    two hours ago; returns that start (Unix ms)."""
    now = now_ms()  # read once: two reads straddling an hour gave a start off the hour
    start = now - now % HOUR_MS - 2 * HOUR_MS
    for product_id, value_key in products:
        client.pricing.CreateProduct(
            pricing_pb2.CreateProductRequest(
                product=pricing_pb2.Product(
                    id=product_id, name=product_id, event_type="call", aggregation=pricing_pb2.SUM, value_key=value_key
                )
            )
        )
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", name="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=ts(start))
    )
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="c", name="c"))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id="k",
            customer_id="c",
            rate_card_id="card",
            starting_at=ts(start),
            overage_policy=policy,
            overage_price=overage_price,
            currency="USD",
        )
    )
    for override in overrides:
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k", override=override))
    if grant is not None:
        amount, applicable = grant
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(
                    id="g",
                    contract_id="k",
                    kind=contracts_pb2.PREPAID,
                    amount=amount,
                    paid_amount=amount,
                    applicable_product_ids=applicable,
                )
            )
        )
    return start


def ingest(client: TariffClient, txn: str, at_ms: int, **values: float) -> None:
    event = usage_pb2.UsageEvent(
        transaction_id=txn, customer_id="c", event_type="call", timestamp_ms=at_ms, values=values
    )
    ack = client.ingest_batch([event], batch_id=txn)
    assert (ack.accepted, list(ack.rejected)) == (1, []), ack


def two_products(client: TariffClient, *, b_first: bool = False, **options: object) -> int:
    """pA: SUM of `a` at 1 a unit; pB: SUM of `b`, VOLUME up to 100 at 1, beyond at 0.5; {a: 0, b: 100} ingested."""
    products = [("pA", "a"), ("pB", "b")]
    rates = [
        pricing_pb2.Rate(product_id="pA", unit=pricing_pb2.UnitPrice(price="1")),
        pricing_pb2.Rate(
            product_id="pB",
            tiered=pricing_pb2.TieredPrice(
                mode=pricing_pb2.VOLUME,
                tiers=[pricing_pb2.Tier(up_to="100", unit_price="1"), pricing_pb2.Tier(unit_price="0.5")],
            ),
        ),
    ]
    start = world(client, products[::-1] if b_first else products, rates, **options)  # type: ignore[arg-type]
    ingest(client, "t1", start + 1, a=0, b=100)
    return start


def test_audit_1_authorize_denies_a_positive_charge_no_credit_covers_though_the_net_cost_is_negative(
    server_factory: ServerFactory,
) -> None:
    with server_factory().client() as client:
        two_products(client, policy=contracts_pb2.BLOCK, grant=("200", ["pB"]))
        answer = client.authorize("c", "call", values={"a": 40, "b": 1})
        assert (answer.allowed, answer.reason, answer.estimated_cost) == (False, "INSUFFICIENT_CREDIT", "-9.5")
    with server_factory(name="allow").client() as client:
        two_products(client, policy=contracts_pb2.ALLOW, grant=("200", ["pB"]))
        answer = client.authorize("c", "call", values={"a": 40, "b": 1})
        assert (answer.allowed, answer.reason) == (True, "OVERAGE_ALLOWED")


def test_audit_2_an_events_charges_and_refunds_are_netted_whatever_the_product_creation_order(
    server_factory: ServerFactory,
) -> None:
    for b_first in (False, True):
        with server_factory(name=f"b-first-{b_first}").client() as client:
            start = two_products(client, b_first=b_first, grant=("100", []))
            ingest(client, "t2", start + 2, a=40, b=1)  # +40 and -49.5 against 100 charged before: 90.5 in all
            balance = client.get_balance("c")
            assert (balance.overage_amount, balance.credits_remaining, balance.period_charges) == ("0", "9.5", "90.5")


def test_audit_3_an_override_price_keeps_per_units_and_a_flat_fee_stays_a_fee(server_factory: ServerFactory) -> None:
    tiers = pricing_pb2.TieredPrice(
        mode=pricing_pb2.GRADUATED,
        per_units="1000",
        tiers=[pricing_pb2.Tier(up_to="1000000", unit_price="0.03"), pricing_pb2.Tier(unit_price="0.01")],
    )
    with server_factory(name="tiers").client() as client:
        start = world(
            client,
            [("tokens", "n")],
            [pricing_pb2.Rate(product_id="tokens", tiered=tiers)],
            overrides=[contracts_pb2.PriceOverride(id="o", product_id="tokens", price="0.02")],
        )
        ingest(client, "t1", start + 1, n=5000)
        assert client.get_balance("c").period_charges == "0.1"
    with server_factory(name="flat").client() as client:
        start = world(
            client,
            [("seats", "n")],
            [pricing_pb2.Rate(product_id="seats", flat=pricing_pb2.FlatPrice(price="10"))],
            overrides=[contracts_pb2.PriceOverride(id="o", product_id="seats", price="8")],
        )
        assert client.authorize("c", "call", values={"n": 5}).estimated_cost == "8"
        ingest(client, "t1", start + 1, n=5)
        ingest(client, "t2", start + 2, n=5)
        assert client.get_balance("c").period_charges == "8"


def test_audit_4_overage_due_is_exact(server_factory: ServerFactory) -> None:
    with server_factory().client() as client:
        start = world(
            client,
            [("units", "n")],
            [pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1"))],
            overage_price="1.000000000001",
        )
        ingest(client, "t1", start + 1, n=123456789012345.67)
        balance = client.get_balance("c")
        assert balance.overage_amount == "123456789012345.67"
        assert balance.overage_due == "123456789012469.12678901234567"
