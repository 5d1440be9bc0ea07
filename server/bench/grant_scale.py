"""How rating, Authorize, holds and GetBalance scale with a customer's grants, measured in-process:
`python -m server.bench.grant_scale [--grants N] [--step S] [--live L]`.

Builds the machine the server runs (engine/billing.py: control plane and kernel, no journal, no gRPC) with one
customer "acme" holding one grant of 10 credits and a top-up policy of threshold 9, recharge_to 10 (cap high
enough never to stop it, as grants accumulate over periods with the cap), plus L live grants restricted to
another product (they cannot pay for "tokens" but are in the burn order). Each event charges 2 credits: it
exhausts the live top-up and buys a new one of 2, so every event adds one grant and all but the last are
exhausted. Every S grants it times, with the same code paths the writer and the reads run:

- a batch of S events (one thread rates every customer's batches: this is what each batch waits behind);
- Authorize of one event, 200 times; a hold and its release, 100 times;
- GetBalance: the kernel's read, and the whole of engine/billing.py's (every grant listed, documented as one
  message).

Prints one line per step. The clock is read here only; nothing in engine/ reads one.
"""

from __future__ import annotations

import argparse
import time

from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, basic_world

T0_MS = EPOCH_MS + 3_600_000
PICOS = 10**12


def setup(live: int) -> Ledger:
    world = basic_world(extra_products=("other",))
    world.apply(world.grant_command("g0", "10"))
    for index in range(live):
        world.apply(world.grant_command(f"live{index}", "1000", products=("other",)))
    ledger = Ledger(world)
    ledger.run(cmd.SetTopUpPolicy(T0_MS, ACTOR, "c-acme", "9", "10", "0.5", 4_000_000))
    return ledger


def batch(ledger: Ledger, first: int, count: int, at_ms: int) -> usage_pb2.IngestAck:
    events = [event(f"t{first + i}", at_ms, 2) for i in range(count)]
    return ledger.ingest(events, at_ms)


def timed(what: object) -> float:
    started = time.perf_counter()
    if callable(what):
        what()
    return time.perf_counter() - started


def step_line(billing: Billing, grants: int, batch_s: float, at_ms: int) -> str:
    kernel = billing.kernel
    authorize_s = timed(lambda: [kernel.authorize("acme", "ai", [], [("tokens", 2.0)], at_ms) for _ in range(200)])
    balance_s = timed(lambda: kernel.balance("acme", at_ms))
    get_balance_s = timed(lambda: billing.balance("acme", at_ms))
    return (
        f"grants {grants:>7}  batch {batch_s * 1e3:9.1f} ms  authorize {authorize_s / 200 * 1e6:9.1f} us"
        f"  kernel balance {balance_s * 1e3:7.1f} ms  GetBalance {get_balance_s * 1e3:8.1f} ms"
    )


def holds_line(ledger: Ledger, at_ms: int, round_: int) -> str:
    started = time.perf_counter()
    for i in range(100):
        ledger.reserve(f"h{round_}-{i}", 2, at_ms)
        ledger.release(f"h{round_}-{i}", at_ms)
    return f"  hold+release {(time.perf_counter() - started) / 100 * 1e6:9.1f} us"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grants", type=int, default=60_000)
    parser.add_argument("--step", type=int, default=2_000)
    parser.add_argument("--live", type=int, default=0)
    parser.add_argument("--holds", action="store_true", help="also time a hold and its release (adds grants)")
    args = parser.parse_args()
    ledger = setup(args.live)
    done = 0
    at_ms = T0_MS
    while done < args.grants:
        at_ms += 1_000
        started = time.perf_counter()
        ack = batch(ledger, done, args.step, at_ms)
        batch_s = time.perf_counter() - started
        assert ack.accepted == args.step, ack
        done += args.step
        line = step_line(
            ledger.billing, 1 + args.live + len(ledger.billing.kernel.top_up_purchases("acme")), batch_s, at_ms
        )
        if args.holds:
            line += holds_line(ledger, at_ms, done)
        print(line, flush=True)
    view = ledger.billing.kernel.balance("acme", at_ms)
    assert view is not None
    print(f"remaining {view['remaining'] / PICOS} credits over {len(view['grants'])} grants")


if __name__ == "__main__":
    main()
