"""Reservations, top-ups and breakage in the kernel against the hand-written oracle (tests/reference_billing.py's
ReferenceCredits), on generated runs of operations.

Hypothesis generates grants (priorities, expiries), ALLOW or BLOCK, an optional top-up policy, and a run of
operations at an advancing time: reservations (ids reused, so repeats and conflicts happen), usage events (some
settling a reservation, some naming an unknown or ended one, some dated in the past), releases, and clock ticks.
Every decision, ack notice and release must agree with the oracle, credits are conserved after every step
(granted = drawn + remaining + held + expired, nothing negative), and replaying the journal, or restoring a
snapshot, gives the same kernel state byte for byte.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.contracts import OveragePolicy
from engine.errors import AlreadyExists, FailedPrecondition, NotFound
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, basic_world
from tests.reference_billing import Curve, ReferenceCredits, REvent, RGrant, RProduct, RRate, RTopUp

EXAMPLES = int(os.environ.get("TARIFF_KERNEL_EXAMPLES", "30"))
PICOS = 10**12
T0 = EPOCH_MS + 3_600_000
IDS = ["r0", "r1", "r2"]
NOTICES = {
    usage_pb2.NOTICE_RESERVATION_UNKNOWN: "unknown",
    usage_pb2.NOTICE_RESERVATION_ALREADY_SETTLED: "settled",
    usage_pb2.NOTICE_RESERVATION_RELEASED: "released",
    usage_pb2.NOTICE_RESERVATION_EXPIRED: "expired",
}


@dataclass(frozen=True)
class GrantSpec:
    amount: int  # credits
    priority: int
    expires_in_ms: int | None


@dataclass(frozen=True)
class Op:
    kind: str  # reserve | event | release | tick
    after_ms: int  # time passing before it
    reservation_id: str = ""
    tokens: int = 0
    ttl_ms: int = 0
    lag_ms: int = 0  # an event dated this much before now


@dataclass(frozen=True)
class Run:
    block: bool
    grants: tuple[GrantSpec, ...]
    top_up: tuple[int, int, int] | None  # threshold, recharge_to (credits), cap
    ops: tuple[Op, ...]


ops = st.one_of(
    st.builds(
        Op,
        st.just("reserve"),
        st.integers(0, 20_000),
        st.sampled_from(IDS),
        st.integers(0, 30),
        st.integers(1, 60_000),
    ),
    st.builds(
        Op,
        st.just("event"),
        st.integers(0, 20_000),
        st.sampled_from(["", "", *IDS, "nope"]),
        st.integers(0, 30),
        lag_ms=st.integers(0, 120_000),
    ),
    st.builds(Op, st.just("release"), st.integers(0, 20_000), st.sampled_from(IDS)),
    st.builds(Op, st.just("tick"), st.integers(0, 60_000)),
)


@st.composite
def runs(draw: st.DrawFn) -> Run:
    grants = draw(
        st.lists(
            st.builds(GrantSpec, st.integers(1, 60), st.integers(0, 1), st.one_of(st.none(), st.integers(1, 300_000))),
            min_size=1,
            max_size=3,
        )
    )
    top_up = None
    if draw(st.booleans()):
        threshold = draw(st.integers(0, 20))
        top_up = (threshold, draw(st.integers(threshold + 1, 60)), draw(st.integers(1, 3)))
    return Run(draw(st.booleans()), tuple(grants), top_up, tuple(draw(st.lists(ops, max_size=25))))


def setup(run: Run) -> tuple[Ledger, ReferenceCredits]:
    world = basic_world(overage_policy=OveragePolicy.BLOCK if run.block else OveragePolicy.ALLOW)
    ref_grants = []
    for index, spec in enumerate(run.grants):
        expires = T0 + spec.expires_in_ms if spec.expires_in_ms is not None else None
        world.grant(f"g{index}", str(spec.amount), priority=spec.priority, expires_at_ms=expires)
        ref_grants.append(
            RGrant(f"g{index}", Decimal(spec.amount * PICOS), spec.priority, (), EPOCH_MS, expires, index)
        )
    ledger = Ledger(world)
    policy = None
    if run.top_up is not None:
        threshold, recharge_to, cap = run.top_up
        ledger.run(cmd.SetTopUpPolicy(T0, ACTOR, "c-acme", str(threshold), str(recharge_to), "0.5", cap))
        policy = RTopUp(Decimal(threshold * PICOS), Decimal(recharge_to * PICOS), cap)
    product = RProduct("tokens", "ai", "SUM", "tokens", (), ("model", "region"))
    oracle = ReferenceCredits(
        [product],
        [RRate("tokens", (), Curve("UNIT", price=Decimal(1), per_units=Decimal(1)))],
        [],
        ref_grants,
        customer_id="acme",
        contract_start_ms=EPOCH_MS,
        block=run.block,
        top_up=policy,
    )
    return ledger, oracle


def ref_event(transaction_id: str, ts_ms: int, tokens: int, reservation_id: str = "") -> REvent:
    return REvent(transaction_id, "acme", "ai", ts_ms, (), (("tokens", float(tokens)),), reservation_id)


def step(ledger: Ledger, oracle: ReferenceCredits, op: Op, now_ms: int, index: int) -> None:
    if op.kind == "reserve":
        expected = oracle.reserve(op.reservation_id, ref_event("", now_ms, op.tokens), op.ttl_ms)
        try:
            got = ledger.reserve(op.reservation_id, op.tokens, now_ms, ttl_ms=op.ttl_ms)
        except AlreadyExists:
            assert expected == "conflict"
            return
        if got.repeated:
            assert expected == "repeated"
        else:
            assert expected == (got.allowed, got.reason, got.cost)
    elif op.kind == "event":
        ts = max(EPOCH_MS, now_ms - op.lag_ms)
        outcome, notice = oracle.ingest_reserving(ref_event(f"t{index}", ts, op.tokens, op.reservation_id), now_ms)
        ack = ledger.ingest([event(f"t{index}", ts, op.tokens, reservation_id=op.reservation_id)], now_ms)
        assert (ack.accepted == 1) == (outcome == "accepted"), (outcome, ack)
        assert [NOTICES[n.reason] for n in ack.notices] == ([notice] if notice else [])
    elif op.kind == "release":
        expected_release = oracle.release(op.reservation_id)
        try:
            released: Decimal | str = Decimal(ledger.release(op.reservation_id, now_ms))
        except NotFound:
            released = "not found"
        except FailedPrecondition as exc:
            released = "settled" if "settled" in str(exc) else "expired"
        assert released == expected_release
    else:
        oracle.advance(now_ms)
        ledger.advance(now_ms)


def agree(ledger: Ledger, oracle: ReferenceCredits, now_ms: int) -> None:
    """Per grant: remaining (raw), held and breakage agree; credits are conserved on both sides; the kernel's
    index of due times holds what a walk of every account finds."""
    oracle.credits_conserved()
    ledger.billing.kernel.check_due_index()
    view = ledger.billing.kernel.balance("acme", now_ms)
    assert view is not None
    breakage: dict[str, int] = {}
    for _, grant_id, _, credits_picos, _ in ledger.billing.kernel.breakage("acme"):
        breakage[grant_id] = breakage.get(grant_id, 0) + credits_picos
    got = {}
    for (grant_id, amount, remaining, expired, drawn), held in zip(view["grants"], view["grants_held"], strict=True):
        assert amount == drawn + remaining + held + expired and min(remaining, held, expired, drawn) >= 0
        got[grant_id] = (remaining + expired - breakage.get(grant_id, 0), held, breakage.get(grant_id, 0))
    expected = {
        g.id: (int(g.remaining), int(oracle.held(g.id)), int(oracle.breakage.get(g.id, Decimal(0))))
        for g in oracle.grants
    }
    assert got == expected


@given(runs())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_holds_top_ups_and_breakage_agree_with_the_oracle_and_replay_identically(run: Run) -> None:
    ledger, oracle = setup(run)
    now = T0
    for index, op in enumerate(run.ops):
        now += op.after_ms
        step(ledger, oracle, op, now, index)
        agree(ledger, oracle, now)
    purchases = [
        (grant_id, credits_picos) for _, grant_id, credits_picos, *_ in ledger.billing.kernel.top_up_purchases("acme")
    ]
    assert purchases == [(grant_id, int(credits)) for _, grant_id, credits in oracle.purchases]
    snapshot = state(ledger.billing)
    assert state(ledger.replayed()) == snapshot
    assert state(Billing.from_snapshot(ledger.billing.encode_snapshot())) == snapshot


def state(billing: Billing) -> bytes:
    """The kernel's state bytes once its tables are loaded (loading them interns the catalogue's names)."""
    billing.refresh_tables()
    return billing.kernel.snapshot()
