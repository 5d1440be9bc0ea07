"""Re-rating and simulation speed, measured in-process: `python -m server.bench.rerate [--customers N] [--hours H]`.

Builds the machine the server runs (engine/billing.py: control plane and kernel, no journal, no gRPC) with N
customers on one rate card, ingests one event per customer and hour for H hours (each event feeds two SUM
products, so two hour buckets), then times, with the same code paths the writer runs:

- SimulateVersion of a draft over the period, for every customer (slices of customers, read-only);
- a PublishVersion of that draft effective from the first hour: the plan and its check, then the re-rating in
  slices (events and buckets re-rated per second of re-rating).

Prints one line per figure. The clock is read here only; nothing in engine/ reads one.
"""

from __future__ import annotations

import argparse
import time

from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.contracts import OveragePolicy
from engine.products import Aggregation
from engine.ratecard import Rate, UnitPrice
from engine.rerate import Rerated, with_rerated

HOUR_MS = 3_600_000
START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
ACTOR = "bench"
BATCH_EVENTS = 10_000


def rates(price: str) -> tuple[Rate, ...]:
    return tuple(
        Rate(product, {}, UnitPrice(price=price, per_units="1000")) for product in ("input_tokens", "output_tokens")
    )


def build(customers: int) -> Billing:
    billing = Billing()

    def apply(command: cmd.AdminCommand) -> object:
        return billing.apply(command, billing.last_seq + 1)

    for product in ("input_tokens", "output_tokens"):
        apply(
            cmd.CreateProduct(
                START_MS, ACTOR, product, product, "llm_call", Aggregation.SUM, product, {}, ("model",), "tokens"
            )
        )
    apply(cmd.CreateRateCard(START_MS, ACTOR, "card", "card", "USD"))
    apply(cmd.CreateDraftVersion(START_MS, ACTOR, "card", 0, {}, (), rates("0.03"), (), ""))
    apply(cmd.PublishVersion(START_MS, ACTOR, "card", 1, START_MS))
    apply(cmd.CreateDraftVersion(START_MS, ACTOR, "card", 0, {}, (), rates("0.024"), (), ""))
    for n in range(customers):
        apply(cmd.CreateCustomer(START_MS, ACTOR, f"c{n:06d}", f"c{n:06d}", {}))
        apply(
            cmd.CreateContract(
                START_MS, ACTOR, f"k{n:06d}", f"c{n:06d}", "card", START_MS, None, OveragePolicy.ALLOW, "1", "USD"
            )
        )
    return billing


def ingest(billing: Billing, customers: int, hours: int) -> int:
    events = (
        usage_pb2.UsageEvent(
            transaction_id=f"t{n}-{hour}",
            customer_id=f"c{n:06d}",
            event_type="llm_call",
            timestamp_ms=START_MS + hour * HOUR_MS + 1_000,
            dimensions={"model": "gpt-4"},
            values={"input_tokens": 1000.0, "output_tokens": 500.0},
        )
        for hour in range(hours)
        for n in range(customers)
    )
    batch: list[usage_pb2.UsageEvent] = []
    accepted = 0
    received_ms = START_MS + (hours + 1) * HOUR_MS
    for event in events:
        batch.append(event)
        if len(batch) == BATCH_EVENTS:
            accepted += billing.ingest(usage_pb2.UsageBatch(events=batch).SerializeToString(), received_ms).accepted
            batch = []
    if batch:
        accepted += billing.ingest(usage_pb2.UsageBatch(events=batch).SerializeToString(), received_ms).accepted
    return accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--customers", type=int, default=10_000)
    parser.add_argument("--hours", type=int, default=24)
    args = parser.parse_args()
    billing = build(args.customers)
    events = ingest(billing, args.customers, args.hours)
    print(f"set up: {args.customers} customers, {events} events, {2 * events} hour buckets")

    started = time.perf_counter()
    simulation = billing.simulate("card", 2, START_MS, START_MS + args.hours * HOUR_MS, [])
    simulated_s = time.perf_counter() - started
    print(f"simulate: {len(simulation.lines)} lines for {args.customers} customers in {simulated_s * 1000:.1f} ms")

    publish = cmd.PublishVersion(START_MS, ACTOR, "card", 2, START_MS)
    seq = billing.last_seq + 1
    started = time.perf_counter()
    plan = billing.rerate_plan(publish)
    planned = time.perf_counter()
    published = billing.publish(publish, seq)
    billing.refresh_tables()
    applied = time.perf_counter()
    done = Rerated()
    assert plan is not None
    for customers in plan.slices():
        done.merge(billing.rerate_slice(plan, customers, seq))
    finished = time.perf_counter()
    result = with_rerated(published, done)
    rerate_s = finished - applied
    print(
        f"publish: plan and check {1000 * (planned - started):.1f} ms, control plane and tables "
        f"{1000 * (applied - planned):.1f} ms"
    )
    print(
        f"re-rating: {result.customers_rerated} customers, {result.buckets_rerated} buckets, "
        f"{result.events_rerated} events in {rerate_s * 1000:.1f} ms: {result.events_rerated / rerate_s:,.0f} events/s, "
        f"{result.buckets_rerated / rerate_s:,.0f} buckets/s"
    )


if __name__ == "__main__":
    main()
