"""Retroactive prices and simulation against a real server process (README, "Changing prices safely").

The litmus story with exact amounts: the old rate before the effective hour and the new one after, a late event
at the old rate, a simulation's delta, a retroactive correction with its re-rating numbers, the state surviving
a restart. A long re-rating with usage meanwhile, and a `kill -9` in its middle: tests/test_server_rerate_online.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from decimal import Decimal

from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess
from tests.test_server_admin import (
    CARD,
    CUSTOMER,
    HOUR_MS,
    MINUTE_MS,
    PREPAID,
    PROMO,
    S,
    assert_amount,
    build_catalogue,
    expect_error,
    grants_by_id,
    ingest_one,
    llm,
    ts,
)


def simulate(client: TariffClient, version: int, start_ms: int, end_ms: int) -> pricing_pb2.SimulateVersionResponse:
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=CARD, version=version, period_start=ts(start_ms), period_end=ts(end_ms)
    )
    response: pricing_pb2.SimulateVersionResponse = client.pricing.SimulateVersion(request)
    return response


def amounts(response: pricing_pb2.SimulateVersionResponse) -> list[tuple[str, str, str, str, str]]:
    return [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in response.amounts]


def markup_draft(client: TariffClient, markup: str) -> int:
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, set_parameters={"markup": markup})
    )
    assert client.pricing.ValidateVersion(
        pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=draft.version)
    ).ok
    return int(draft.version)


def test_prices_change_forward_and_backward_with_exact_adjustments(server_factory: ServerFactory) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)  # v1 from h0: gpt-4 us 0.036 in, 0.072 out per 1k tokens (markup 1.2)
        h0, window = cat.h0, (cat.h0, cat.h0 + 3 * HOUR_MS)
        # e1 in hour h0 under v1: 10 x 0.036 + 10 x 0.072 = 1.08
        ingest_one(client, llm("e1", h0 + 10 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "1.08")

        # A draft with markup 1.5 (0.045 and 0.09 per 1k), simulated on the recorded usage: nothing changes.
        v2 = markup_draft(client, "1.5")
        simulated = simulate(client, v2, *window)
        assert amounts(simulated) == [
            (CUSTOMER, "input_tokens", "0.36", "0.45", "0.09"),
            (CUSTOMER, "output_tokens", "0.72", "0.9", "0.18"),
        ]
        totals = simulated.totals
        assert (totals.current_amount, totals.simulated_amount, totals.delta) == ("1.08", "1.35", "0.27")
        assert_amount(client.get_balance(CUSTOMER).period_charges, "1.08")

        # Published from the next hour: nothing already rated is in its hours, nothing re-rated.
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v2, effective_from=ts(h0 + HOUR_MS))
        )
        assert (published.events_rerated, published.buckets_rerated, published.customers_rerated) == (0, 0, 0)
        # e2 after the effective hour at the new rate (1.35); e3, late, in hour h0 at the old rate (1.08).
        ingest_one(client, llm("e2", h0 + HOUR_MS + 10 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "2.43")
        ingest_one(client, llm("e3", h0 + 20 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))
        assert_amount(client.get_balance(CUSTOMER).period_charges, "3.51")

        # Finance: hour h0 should have had markup 0.8 (0.024 and 0.048 per 1k: 0.72 an event). v3 effective from h0
        # takes over hour h0 only (v2 stays in force from h0 + 1h): e1 and e3, one bucket per product.
        v3 = markup_draft(client, "0.8")
        corrected = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v3, effective_from=ts(h0))
        )
        assert (corrected.customers_rerated, corrected.buckets_rerated, corrected.events_rerated) == (1, 2, 2)
        assert_amount(corrected.rerated_amount_delta, "-0.72")  # 2 x (1.08 - 0.72)
        assert (corrected.closed_buckets_left_alone, corrected.left_alone_reason) == (0, "")
        balance = client.get_balance(CUSTOMER)
        assert_amount(balance.period_charges, "2.79")  # 0.72 + 0.72 + 1.35
        # The promotional credit (priority 1) burns first, then the prepaid one.
        grants = grants_by_id(balance)
        assert_amount(grants[PROMO].drawn, "1")
        assert_amount(grants[PREPAID].drawn, "1.79")
        assert_amount(balance.overage_amount, "0")

        # What v1 would have charged instead: 3 x 1.08 = 3.24, 0.45 more than now.
        back = simulate(client, 1, *window)
        assert amounts(back) == [
            (CUSTOMER, "input_tokens", "0.93", "1.08", "0.15"),
            (CUSTOMER, "output_tokens", "1.86", "2.16", "0.3"),
        ]
        assert (back.totals.current_amount, back.totals.simulated_amount, back.totals.delta) == ("2.79", "3.24", "0.45")

        # Edges: an empty period, an unknown version or card.
        empty = simulate(client, 1, h0 - 10 * HOUR_MS, h0 - 9 * HOUR_MS)
        assert (list(empty.amounts), empty.totals.delta) == ([], "0")
        expect_error(S.NOT_FOUND, lambda: simulate(client, 99, *window))
        unknown = pricing_pb2.SimulateVersionRequest(
            rate_card_id="nope", version=1, period_start=ts(h0), period_end=ts(h0 + HOUR_MS)
        )
        expect_error(S.NOT_FOUND, lambda: client.pricing.SimulateVersion(unknown))
        expect_error(S.INVALID_ARGUMENT, lambda: simulate(client, 1, h0, h0))

    # The journal replays the re-rating to the same state.
    server.terminate()
    server.restart()
    with server.client() as client:
        assert_amount(client.get_balance(CUSTOMER).period_charges, "2.79")
        again = simulate(client, 1, *window)
        assert again.totals.delta == "0.45"


CUSTOMERS = 1_200
HOURS = 150
PRICE_V1, PRICE_V2 = Decimal(1), Decimal(2)


def quantity_of(customer: int, hour: int) -> int:
    return 1 + (customer * 7 + hour * 3) % 5


async def set_up_many(server: ServerProcess, start_ms: int, customers: int = CUSTOMERS) -> None:
    """A product, a card, `customers` customers each with a contract from start_ms: created concurrently."""
    async with server.async_client() as client:
        await client.pricing.CreateProduct(
            pricing_pb2.CreateProductRequest(
                product=pricing_pb2.Product(
                    id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n", unit="units"
                )
            )
        )
        await client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="bulk", pricing_unit="USD"))
        rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price=str(PRICE_V1)))
        await client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="bulk", upsert_rates=[rate])
        )
        await client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="bulk", version=1, effective_from=ts(start_ms))
        )
        rate2 = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price=str(PRICE_V2)))
        await client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="bulk", upsert_rates=[rate2])
        )
        for first in range(0, customers, 200):
            ids = [f"c{n:05d}" for n in range(first, min(first + 200, customers))]
            await asyncio.gather(
                *(client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=i, name=i)) for i in ids)
            )
            contracts = (
                contracts_pb2.CreateContractRequest(
                    id=f"k-{i}", customer_id=i, rate_card_id="bulk", starting_at=ts(start_ms), currency="USD"
                )
                for i in ids
            )
            await asyncio.gather(*(client.contracts.CreateContract(c) for c in contracts))


def ingest_many(client: TariffClient, start_ms: int, customers: int = CUSTOMERS) -> None:
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"u{c}-{h}",
            customer_id=f"c{c:05d}",
            event_type="work",
            timestamp_ms=start_ms + h * HOUR_MS + 60_000,
            values={"n": float(quantity_of(c, h))},
        )
        for h in range(HOURS)
        for c in range(customers)
    ]
    for first in range(0, len(events), 10_000):
        ack = client.ingest_batch(events[first : first + 10_000], batch_id=f"bulk-{first}")
        assert ack.accepted == len(events[first : first + 10_000]), ack.rejected[:3]


def test_the_cli_simulates_a_draft_and_prints_the_totals(server_factory: ServerFactory) -> None:
    from tests.test_cli import tariff

    server = server_factory(demo=True)
    now = now_ms()
    hour = now - now % HOUR_MS
    with server.client() as client:
        summary = {"action": "summary", "model": "gpt-4", "complexity": "complex"}  # 1 x 2.5 x 2 = 5 credits
        event = usage_pb2.UsageEvent(
            transaction_id="cli-sim", customer_id="acme", event_type="ai_action", timestamp_ms=hour, dimensions=summary
        )
        assert client.ingest_batch([event], batch_id="cli-sim").accepted == 1
    tariff(server, "ratecard", "draft", "ai-credits", "--base", "1", "--set", "gpt4_factor=2")
    start, end = (time.strftime("%Y-%m-%dT%H:00:00Z", time.gmtime(ms / 1000)) for ms in (hour, hour + HOUR_MS))
    done = tariff(server, "ratecard", "simulate", "ai-credits", "2", "--from", start, "--to", end, "--json")
    answer = json.loads(done.stdout)
    assert answer["amounts"] == [
        {
            "customer_id": "acme",
            "product_id": "ai_action",
            "current_amount": "5",
            "simulated_amount": "4",
            "delta": "-1",
        }
    ]
    assert answer["totals"] == {"current_amount": "5", "simulated_amount": "4", "delta": "-1"}
    table = tariff(server, "ratecard", "simulate", "ai-credits", "2", "--from", start, "--to", end).stdout
    assert "-1" in table and "delta" in table
