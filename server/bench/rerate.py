"""Re-rating and simulation speed, measured in-process: `python -m server.bench.rerate [--customers N] [--hours H]`.

Builds the machine the server runs (engine/billing.py: control plane and kernel, no journal, no gRPC) with N
customers on one rate card, ingests one event per customer and hour for H hours (each event feeds two SUM
products, so two hour buckets), then times, with the same code paths the writer runs:

- SimulateVersion of a draft over the period, for every customer (slices of customers, read-only);
- a PublishVersion of that draft effective from the first hour: the plan and its check, then the re-rating in
  slices (events and buckets re-rated per second of re-rating);
- the server's online path: a second draft planned in slices with a usage batch between some of them
  (engine/rerate.py PlanInSlices: the slices' times, and what is left when the publish applies), published with
  its re-rating left pending (engine/pending.py), then
  re-rated by background slices with a usage batch between two slices (each naming customers still pending,
  re-rated on touch), and the completion: the re-rating's rate, the longest slice (what a batch waits for at
  most behind it) and the batches' times.

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
from engine.rerate import PLAN_SLICE_CUSTOMERS, SLICE_CUSTOMERS, Rerated, RerationPlan, with_rerated

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
    apply(cmd.CreateDraftVersion(START_MS, ACTOR, "card", 0, {}, (), rates("0.018"), (), ""))
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
        f"{1000 * (applied - planned):.1f} ms (the version appended to the kernel's tables)"
    )
    print(
        f"re-rating: {result.customers_rerated} customers, {result.buckets_rerated} buckets, "
        f"{result.events_rerated} events in {rerate_s * 1000:.1f} ms: {result.events_rerated / rerate_s:,.0f} events/s, "
        f"{result.buckets_rerated / rerate_s:,.0f} buckets/s"
    )
    online(billing, args.customers, args.hours)
    at = time.perf_counter()
    billing.refresh_tables(whole=True)
    print(
        f"whole tables, for comparison (what a publish compiled and loaded before appends): "
        f"{1000 * (time.perf_counter() - at):.1f} ms"
    )


def late_batch(customers: list[str], round_: int) -> bytes:
    """Late events (hour 0) for some customers: what a batch arriving during the re-rating holds."""
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"late-{round_}-{customer}",
            customer_id=customer,
            event_type="llm_call",
            timestamp_ms=START_MS + 2_000,
            dimensions={"model": "gpt-4"},
            values={"input_tokens": 100.0, "output_tokens": 50.0},
        )
        for customer in customers
    ]
    return usage_pb2.UsageBatch(events=events).SerializeToString()


def plan_online(billing: Billing, publish: cmd.PublishVersion, received_ms: int) -> RerationPlan:
    """Plans the publish as the writer does (engine/rerate.py PlanInSlices): slices with a usage batch between
    two (naming customers looked at already, so looked at again), the rest when it applies. Prints the slices'
    times and the applying part's (what usage waits for of it); returns the plan."""
    started = time.perf_counter()
    assert billing.begin_plan(publish)
    began = time.perf_counter()
    slices_s: list[float] = []
    round_ = 0
    more = True
    while more:
        at = time.perf_counter()
        more = billing.plan_step(PLAN_SLICE_CUSTOMERS)
        slices_s.append(time.perf_counter() - at)
        if round_ % 10 == 0:  # 100 late events of customers looked at already, every tenth slice
            looked_at = sorted(billing.engine.state.customers)[: (len(slices_s) * PLAN_SLICE_CUSTOMERS)][-100:]
            billing.ingest(late_batch(looked_at, 1_000_000 + round_), received_ms)
        round_ += 1
    at = time.perf_counter()
    plan = billing.finish_plan()
    finished = time.perf_counter()
    assert plan is not None
    print(
        f"online plan: begun in {1000 * (began - started):.1f} ms, {len(slices_s)} slices of "
        f"{PLAN_SLICE_CUSTOMERS} customers (longest {1000 * max(slices_s):.1f} ms, "
        f"{1000 * sum(slices_s):.1f} ms in all) with {(round_ + 9) // 10} batches between them, "
        f"the rest when it applies {1000 * (finished - at):.1f} ms ({len(plan.customers)} customers)"
    )
    return plan


def online(billing: Billing, customers: int, hours: int) -> None:
    """Version 3 published as the writer publishes now: planned in slices with usage between them, journaled
    first, re-rated after, usage meanwhile."""
    publish = cmd.PublishVersion(START_MS, ACTOR, "card", 3, START_MS)
    received_ms = START_MS + (hours + 1) * HOUR_MS
    plan = plan_online(billing, publish, received_ms)
    started = time.perf_counter()
    seq = billing.last_seq + 1
    billing.publish(publish, seq)
    billing.defer_rerating(plan, seq)  # the tables refreshed first
    published = time.perf_counter()
    slices_s: list[float] = []
    batches_s: list[float] = []
    round_ = 0
    while (rerating := billing.rerating) is not None and rerating.pending:
        at = time.perf_counter()
        billing.rerate_next(SLICE_CUSTOMERS)
        slices_s.append(time.perf_counter() - at)
        # 100 events for customers still pending, from the end of the plan: each is re-rated on touch first.
        named = list(rerating.pending)[-100:]
        if named:
            at = time.perf_counter()
            billing.ingest(late_batch(named, round_), received_ms)
            batches_s.append(time.perf_counter() - at)
            round_ += 1
    done = billing.finish_rerating(billing.last_seq + 1, received_ms)
    finished = time.perf_counter()
    rerate_s = finished - published
    print(f"online publish: control plane and tables {1000 * (published - started):.1f} ms")
    print(
        f"online re-rating: {done.customers} customers, {done.buckets} buckets, {done.events} events in "
        f"{rerate_s * 1000:.1f} ms with {len(batches_s)} batches of 100 events between slices: "
        f"{done.events / rerate_s:,.0f} events/s, {done.buckets / rerate_s:,.0f} buckets/s; longest slice "
        f"{1000 * max(slices_s):.1f} ms, batches {1000 * sum(batches_s) / max(len(batches_s), 1):.1f} ms on average "
        f"({1000 * max(batches_s, default=0):.1f} ms at most, re-rating their customers included)"
    )


if __name__ == "__main__":
    main()
