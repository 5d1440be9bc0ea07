"""What a balance read costs the event loop for a customer with many grants, in process, stage by stage:
`python -m server.bench.balance_read [--grants 1000 10000 50000] [--repeat R] [--profile]`.

Builds the machine the server runs (engine/billing.py, no journal, no gRPC) with one customer "acme" whose top-up
policy buys a grant of 2 credits with every event of 2 (as server/bench/grant_scale.py), so N events leave N TOP_UP
grants, all but the last spent, beside a few GrantCredits grants (restricted, expiring). Then times, the best of
R runs each, what GetBalance runs on the loop: the kernel's read alone, `Billing.balance` (kernel and control
plane), the Balance message (`convert.balance_pb`), the size check of `_sent_balance` (tests/balance_reference.py),
gRPC's serialization, and all of it together ("GetBalance before": each grant's row, record and message built in Python), then the read GetBalance
and WatchBalance (a read per change) now make, the kernel encoding the top-ups (`Billing.balance_encoded`,
`_sent_balance_bytes`), checking that it answers the same bytes, and that read with the message limit at half the
balance ("past the limit": spent grants left out, cut from the kernel's bytes). `--profile` prints
cProfile's top functions for one whole read at the largest size. The clock is read here only.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

from engine import commands as cmd
from engine.billing import Billing
from server import convert
from server.errors import send_limit
from server.services.balance import _sent_balance_bytes
from tests.balance_reference import _sent_balance
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, basic_world

T0_MS = EPOCH_MS + 3_600_000
BATCH_EVENTS = 5_000


def setup(grants: int) -> tuple[Billing, int]:
    """The machine with `grants` TOP_UP grants on "acme", and the instant to read at."""
    world = basic_world(extra_products=("other",))
    world.apply(world.grant_command("g0", "10"))
    ledger = Ledger(world)
    ledger.run(cmd.SetTopUpPolicy(T0_MS, ACTOR, "c-acme", "9", "10", "0.5", 4_000_000))
    done = 0
    at_ms = T0_MS
    while done < grants:
        at_ms += 1_000
        count = min(BATCH_EVENTS, grants - done)
        ledger.ingest([event(f"t{done + i}", at_ms, 2) for i in range(count)], at_ms)
        done += count
    # Granted after the purchases: a grant other usage cannot draw would keep the policy from buying.
    ledger.run(world.grant_command("restricted", "1000", products=("other",), priority=2, at_ms=at_ms))
    ledger.run(world.grant_command("expiring", "5", expires_at_ms=at_ms + 10**9, paid="1", at_ms=at_ms))
    return ledger.billing, at_ms + 1_000


def best_ms(what: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        what()
        best = min(best, time.perf_counter() - started)
    return best * 1e3


def line(billing: Billing, at_ms: int, repeat: int) -> str:
    view = billing.balance("acme", at_ms)
    message = convert.balance_pb(view)
    sent = _sent_balance(message)
    stages = {
        "kernel": lambda: billing.kernel.balance("acme", at_ms, projected=True),
        "Billing.balance": lambda: billing.balance("acme", at_ms),
        "balance_pb": lambda: convert.balance_pb(view),
        "_sent_balance": lambda: _sent_balance(message),
        "serialize": lambda: sent.SerializeToString(),
        "GetBalance before": lambda: _sent_balance(
            convert.balance_pb(billing.balance("acme", at_ms))
        ).SerializeToString(),
        "balance_encoded": lambda: billing.balance_encoded("acme", at_ms),
        "GetBalance": lambda: _sent_balance_bytes(billing.balance_encoded("acme", at_ms)),
    }
    fast = _sent_balance_bytes(billing.balance_encoded("acme", at_ms))
    assert fast == sent.SerializeToString(), "the encoded balance differs from the one built grant by grant"
    timed = "  ".join(f"{name} {best_ms(what, repeat):8.2f}" for name, what in stages.items())
    return f"grants {len(view.grants):>6}  (ms) {timed}  past the limit {past_limit_ms(billing, at_ms, repeat):8.2f}"


def past_limit_ms(billing: Billing, at_ms: int, repeat: int) -> float:
    """GetBalance's read with the message limit at half the balance: spent grants left out until it fits (most
    of them top-ups, cut from the kernel's bytes), checked against the message built and fitted grant by grant."""
    before = send_limit.bytes_max
    send_limit.bytes_max = len(_sent_balance_bytes(billing.balance_encoded("acme", at_ms))) // 2
    try:
        expected = _sent_balance(convert.balance_pb(billing.balance("acme", at_ms))).SerializeToString()
        fitted = _sent_balance_bytes(billing.balance_encoded("acme", at_ms))
        assert fitted == expected, "the fitted balance differs from the one built grant by grant"
        return best_ms(lambda: _sent_balance_bytes(billing.balance_encoded("acme", at_ms)), repeat)
    finally:
        send_limit.bytes_max = before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--grants", type=int, nargs="+", default=[1_000, 10_000, 50_000])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    for grants in args.grants:
        billing, at_ms = setup(grants)
        print(line(billing, at_ms, args.repeat), flush=True)
    if args.profile:
        profile = cProfile.Profile()
        profile.runcall(lambda: _sent_balance_bytes(billing.balance_encoded("acme", at_ms)))
        pstats.Stats(profile).sort_stats("tottime").print_stats(14)


if __name__ == "__main__":
    main()
