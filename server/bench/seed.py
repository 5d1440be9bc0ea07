"""The bench catalogue and its customers, loaded through the control-plane RPCs, plus the events that feed it.

One event type, `llm_call`, feeds two products (`input_tokens` and `output_tokens`, both SUM), each
priced per 1,000 tokens by model × region with formulas over parameters (an EU markup on every model),
and a wildcard rate for anything else. Every customer has a contract from the start of the month and a
PREPAID grant far larger than any bench run can burn, so no event ever falls into overage.

Up to RPC_SEED_CUSTOMERS_MAX customers are seeded through the RPCs (three per customer). Beyond that (the memory
bench's million) `seed_journal` writes, into a fresh data directory, the journal those RPCs would leave (the same
requests, turned into commands as server/services/ turns them), and the server recovers it at start: the same
commands applied in the same order, so the same state, in minutes instead of the hour the RPCs take.
tests/test_bench_seed.py checks that both paths give the same state.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp
from tariff.v1 import (
    balance_pb2,
    balance_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
    usage_pb2,
)

from engine import commands as cmd
from engine.control import default_contract_id
from server import convert
from server.auth import ACTOR_ANONYMOUS
from server.bench.target import BENCH_MAP_SIZE_MB, CHANNEL_OPTIONS
from server.journal import LmdbJournal
from server.records import JournalRecord, encode_record

EVENT_TYPE = "llm_call"
RATE_CARD_ID = "bench-llm"
PRODUCTS = ("input_tokens", "output_tokens")
MODELS = ("gpt-4", "gpt-4o-mini", "claude-sonnet")
REGIONS = ("us-east", "eu-west")
GRANT_CREDITS = "1000000000000"
SEED_CALLS_IN_FLIGHT = 64
RPC_SEED_CUSTOMERS_MAX = 100_000
JOURNAL_SEED_CHUNK_RECORDS = 30_000
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


def _product_requests() -> list[pricing_pb2.CreateProductRequest]:
    return [
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
        for product in PRODUCTS
    ]


RATE_CARD_REQUEST = pricing_pb2.CreateRateCardRequest(id=RATE_CARD_ID, name="Bench LLM", pricing_unit="credits")


def _draft_request() -> pricing_pb2.CreateDraftVersionRequest:
    return pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=RATE_CARD_ID, set_parameters=PARAMETERS, upsert_rates=_rates(), change_note="bench prices"
    )


def _publish_request(version: int) -> pricing_pb2.PublishVersionRequest:
    return pricing_pb2.PublishVersionRequest(
        rate_card_id=RATE_CARD_ID, version=version, effective_from=_timestamp(month_start())
    )


def _customer_request(index: int) -> contracts_pb2.CreateCustomerRequest:
    return contracts_pb2.CreateCustomerRequest(id=customer_id(index), name=f"Bench customer {index}")


def _contract_request(index: int, start: Timestamp) -> contracts_pb2.CreateContractRequest:
    return contracts_pb2.CreateContractRequest(
        customer_id=customer_id(index), rate_card_id=RATE_CARD_ID, starting_at=start
    )


def _grant_request(index: int, contract_id: str) -> contracts_pb2.GrantCreditsRequest:
    customer = customer_id(index)
    return contracts_pb2.GrantCreditsRequest(
        grant=contracts_pb2.Grant(
            id=f"{customer}-prepaid",  # the key that makes a retried grant grant once
            customer_id=customer,
            contract_id=contract_id,
            kind=contracts_pb2.PREPAID,
            amount=GRANT_CREDITS,
            paid_amount="900000000000",
        )
    )


async def seed_catalogue(channel: grpc.aio.Channel) -> None:
    pricing = pricing_pb2_grpc.PricingServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
    for request in _product_requests():
        await pricing.CreateProduct(request)
    await pricing.CreateRateCard(RATE_CARD_REQUEST)
    draft = await pricing.CreateDraftVersion(_draft_request())
    await pricing.PublishVersion(_publish_request(draft.version))


async def _seed_customer(contracts: contracts_pb2_grpc.ContractServiceStub, index: int, start: Timestamp) -> None:
    await contracts.CreateCustomer(_customer_request(index))
    contract = await contracts.CreateContract(_contract_request(index, start))
    await contracts.GrantCredits(_grant_request(index, contract.id))


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


# The first read after seeding compiles the kernel's tables for every customer seeded since the last compile.
TABLES_BUILT_TIMEOUT_S = 600.0


def build_kernel_tables(target: str) -> None:
    """Asks for one balance, so that the server compiles its kernel's tables (routes, grants) for every
    customer: until its first read, usage batch or snapshot it has not, and its heap would not count them."""
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = balance_pb2_grpc.BalanceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
        stub.GetBalance(balance_pb2.GetBalanceRequest(customer_id=customer_id(0)), timeout=TABLES_BUILT_TIMEOUT_S)


def _clock_ms() -> int:
    return time.time_ns() // 1_000_000


def seed_commands(customers: int) -> Iterator[cmd.AdminCommand]:
    """The commands the seeding RPCs become, in their order, stamped as the server stamps them (its clock, the
    caller's actor: "anonymous" without API keys)."""
    actor = ACTOR_ANONYMOUS
    for product in _product_requests():
        yield convert.create_product(product, _clock_ms(), actor)
    card = RATE_CARD_REQUEST
    yield cmd.CreateRateCard(_clock_ms(), actor, card.id, card.name, card.pricing_unit, applied_audited=True)
    yield convert.create_draft(_draft_request(), _clock_ms(), actor)
    publish = _publish_request(1)  # the card's first draft
    yield cmd.PublishVersion(
        _clock_ms(), actor, publish.rate_card_id, publish.version, convert.optional_ms(publish, "effective_from")
    )
    start = _timestamp(month_start())
    for index in range(customers):
        request = _customer_request(index)
        yield cmd.CreateCustomer(
            _clock_ms(), actor, request.id, request.name, dict(request.attributes), applied_audited=True
        )
        contract = _contract_request(index, start)
        starting_at_ms = convert.optional_ms(contract, "starting_at")
        yield cmd.CreateContract(
            _clock_ms(),
            actor,
            contract.id,
            contract.customer_id,
            contract.rate_card_id,
            starting_at_ms,
            convert.optional_ms(contract, "ending_before"),
            convert.overage_policy(contract.overage_policy),
            contract.overage_price,
            contract.currency,
            applied_audited=True,  # as the server sets it (server/services/contracts.py)
        )
        assert starting_at_ms is not None
        contract_id = default_contract_id(contract.customer_id, starting_at_ms)  # what the server names it
        yield convert.grant_credits(_grant_request(index, contract_id), _clock_ms(), actor)


def seed_journal(data_dir: Path, customers: int) -> float:
    """Writes the journal that seeding `customers` customers through the RPCs leaves, into a data directory no
    server has used; a server started on it recovers that state. Returns the seconds it took."""
    started = time.perf_counter()
    journal = LmdbJournal(data_dir / "journal", map_size_bytes=BENCH_MAP_SIZE_MB * 2**20, sync=False)
    try:
        assert journal.last_seq() == 0, f"{data_dir} already holds a journal"
        chunk: list[tuple[int, bytes]] = []
        for seq, command in enumerate(seed_commands(customers), start=1):
            chunk.append((seq, encode_record(JournalRecord(command))))
            if len(chunk) == JOURNAL_SEED_CHUNK_RECORDS:
                journal.commit(chunk)
                chunk = []
        if chunk:
            journal.commit(chunk)
    finally:
        journal.close()
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


# Digits of a stamped transaction id's serial: 10^12 ids per run tag, more than any bench fills.
STAMP_DIGITS = 12
STAMP_TEMPLATES = 16


def stamped_batches(run_tag: str, customers: int, batch_events: int, batch_count: int, *, seed: int) -> Iterator[bytes]:
    """Serialized batches like `batches` (one time stamp, random customers and templates), made for filling the
    dedupe window fast: a few batches are encoded once, then each copy gets fresh ids by overwriting their
    fixed-width serials in the bytes (no protobuf object per event), so the generator keeps up with the server."""
    zeros = "0" * STAMP_DIGITS
    templates: list[tuple[bytes, list[int]]] = []
    for number, batch in enumerate(batches(run_tag, customers, batch_events, STAMP_TEMPLATES, seed=seed)):
        batch.batch_id = f"{run_tag}-b{zeros}"
        for position, event in enumerate(batch.events):
            event.transaction_id = f"{run_tag}-{number:02d}{position:06d}{zeros}"
        payload = batch.SerializeToString()
        offsets = [payload.index(f"{run_tag}-b{zeros}".encode()) + len(run_tag) + 2]
        for event in batch.events:
            offsets.append(payload.index(event.transaction_id.encode()) + len(event.transaction_id) - STAMP_DIGITS)
        templates.append((payload, offsets))
    for number in range(batch_count):
        payload, offsets = templates[number % STAMP_TEMPLATES]
        stamped = bytearray(payload)
        serial = f"{number:0{STAMP_DIGITS}d}".encode()
        for offset in offsets:
            stamped[offset : offset + STAMP_DIGITS] = serial
        yield bytes(stamped)
