"""The bench catalogue and its customers, loaded through the control-plane RPCs, plus the events that feed it.

One event type, `llm_call`, feeds two products (`input_tokens` and `output_tokens`, both SUM), each
priced per 1,000 tokens by model × region with formulas over parameters (an EU markup on every model),
and a wildcard rate for anything else. Every customer has a contract from the start of the month and a
PREPAID grant far larger than any bench run can burn, so no event ever falls into overage.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from tariff.v1 import contracts_pb2, contracts_pb2_grpc, pricing_pb2, pricing_pb2_grpc, usage_pb2

from server.bench.target import CHANNEL_OPTIONS

EVENT_TYPE = "llm_call"
RATE_CARD_ID = "bench-llm"
PRODUCTS = ("input_tokens", "output_tokens")
MODELS = ("gpt-4", "gpt-4o-mini", "claude-sonnet")
REGIONS = ("us-east", "eu-west")
GRANT_CREDITS = "1000000000000"
SEED_CALLS_IN_FLIGHT = 64
PARAMETERS = {
    "gpt4_in": "0.03",
    "gpt4_out": "0.06",
    "mini_in": "0.00015",
    "mini_out": "0.0006",
    "sonnet_in": "0.003",
    "sonnet_out": "0.015",
    "eu_markup": "1.1",
}
_MODEL_PARAMETER = {"gpt-4": "gpt4", "gpt-4o-mini": "mini", "claude-sonnet": "sonnet"}


def customer_id(index: int) -> str:
    return f"bench-c{index:06d}"


def month_start() -> datetime:
    now = datetime.now(UTC)
    return datetime(now.year, now.month, 1, tzinfo=UTC)


def _timestamp(moment: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment)
    return stamp


def _rates() -> list[pricing_pb2.Rate]:
    rates: list[pricing_pb2.Rate] = []
    for product in PRODUCTS:
        side = "in" if product == "input_tokens" else "out"
        for model in MODELS:
            for region in REGIONS:
                price = f"{_MODEL_PARAMETER[model]}_{side}"
                if region == "eu-west":
                    price = f"{price} * eu_markup"
                rates.append(
                    pricing_pb2.Rate(
                        product_id=product,
                        match={"model": model, "region": region},
                        unit=pricing_pb2.UnitPrice(price=price, per_units="1000"),
                    )
                )
        rates.append(pricing_pb2.Rate(product_id=product, unit=pricing_pb2.UnitPrice(price="0.01", per_units="1000")))
    return rates


async def seed_catalogue(channel: grpc.aio.Channel) -> None:
    pricing = pricing_pb2_grpc.PricingServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
    for product in PRODUCTS:
        await pricing.CreateProduct(
            pricing_pb2.CreateProductRequest(
                product=pricing_pb2.Product(
                    id=product,
                    name=product.replace("_", " "),
                    event_type=EVENT_TYPE,
                    aggregation=pricing_pb2.SUM,
                    value_key=product,
                    pricing_dimensions=["model", "region"],
                    unit="tokens",
                )
            )
        )
    await pricing.CreateRateCard(
        pricing_pb2.CreateRateCardRequest(id=RATE_CARD_ID, name="Bench LLM", pricing_unit="credits")
    )
    draft = await pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=RATE_CARD_ID, set_parameters=PARAMETERS, upsert_rates=_rates(), change_note="bench prices"
        )
    )
    await pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id=RATE_CARD_ID, version=draft.version, effective_from=_timestamp(month_start())
        )
    )


async def _seed_customer(contracts: contracts_pb2_grpc.ContractServiceStub, index: int, start: Timestamp) -> None:
    customer = customer_id(index)
    await contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer, name=f"Bench customer {index}"))
    contract = await contracts.CreateContract(
        contracts_pb2.CreateContractRequest(customer_id=customer, rate_card_id=RATE_CARD_ID, starting_at=start)
    )
    await contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=f"{customer}-prepaid",  # the key that makes a retried grant grant once
                customer_id=customer,
                contract_id=contract.id,
                kind=contracts_pb2.PREPAID,
                amount=GRANT_CREDITS,
                paid_amount="900000000000",
            )
        )
    )


async def _seed(target: str, customers: int) -> None:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await seed_catalogue(channel)
        contracts = contracts_pb2_grpc.ContractServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
        start = _timestamp(month_start())
        in_flight = asyncio.Semaphore(SEED_CALLS_IN_FLIGHT)

        async def one(index: int) -> None:
            async with in_flight:
                await _seed_customer(contracts, index, start)

        await asyncio.gather(*(one(i) for i in range(customers)))


def seed(target: str, customers: int) -> float:
    """Loads the catalogue and `customers` customers; returns the seconds it took (not a reported figure)."""
    started = time.perf_counter()
    asyncio.run(_seed(target, customers))
    return time.perf_counter() - started


def event_templates() -> list[usage_pb2.UsageEvent]:
    """One event per model × region with realistic token counts; copies get an id, a customer and a time."""
    templates = []
    for model in MODELS:
        for region in REGIONS:
            templates.append(
                usage_pb2.UsageEvent(
                    event_type=EVENT_TYPE,
                    dimensions={"model": model, "region": region},
                    values={"input_tokens": 1200.0, "output_tokens": 350.0},
                )
            )
    return templates


def batches(
    run_tag: str, customers: int, batch_events: int, batch_count: int, *, seed: int, only_customer: int | None = None
) -> Iterator[usage_pb2.UsageBatch]:
    """`batch_count` batches of unique transaction ids (`run_tag` keeps them unique across runs)."""
    rng = random.Random(seed)
    templates = event_templates()
    stamp_ms = time.time_ns() // 1_000_000 - 1_000
    serial = 0
    for number in range(batch_count):
        batch = usage_pb2.UsageBatch(batch_id=f"{run_tag}-b{number}")
        for _ in range(batch_events):
            event = batch.events.add()
            event.CopyFrom(templates[rng.randrange(len(templates))])
            event.transaction_id = f"{run_tag}-{serial}"
            index = only_customer if only_customer is not None else rng.randrange(customers)
            event.customer_id = customer_id(index)
            event.timestamp_ms = stamp_ms
            serial += 1
        yield batch
