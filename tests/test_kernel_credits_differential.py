"""Reservations, top-ups and breakage in the kernel against the hand-written oracle (tests/reference_billing.py's
ReferenceCredits), on generated runs of operations.

Hypothesis generates grants (priorities, expiries, rollover fractions, whether their GrantCredits ends their use at
the rollover, as the server's do, or is of the form stored before that), ALLOW or BLOCK, an optional top-up policy,
a start an hour into January or minutes before its end (so rollovers happen with holds open across them), and a
run of operations at an advancing time: reservations (ids reused, so repeats and conflicts happen), usage events
(some settling a reservation, some naming an unknown or ended one, some dated in the past), releases, clock ticks
and jumps of days (past the ROLLOVER grants' own expiry).
Every decision, ack notice and release must agree with the oracle, credits are conserved after every step
(granted = drawn + remaining + held + expired, nothing negative), and replaying the journal, or restoring a
snapshot, gives the same kernel state byte for byte.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from decimal import Decimal

import msgspec
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
DAY_MS = 86_400_000
FEB_MS = EPOCH_MS + 31 * DAY_MS
# A run stays within the dedupe window (35 days; a jump that would pass this is not taken): the oracle does not
# model when the kernel forgets ended reservation ids.
HORIZON_MS = 34 * DAY_MS
# Rollover fractions: none, round ones, and one whose shares round down to the pico.
FRACTIONS = ["", "0.5", "1", "0.3", "0.333333333333333333"]
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
    rollover_fraction: str = ""
    use_ends_at_rollover: bool = False
    expiring_at_rollover_rolls: bool = False


@dataclass(frozen=True)
class Op:
    kind: str  # reserve | event | release | tick (a jump is a tick after days)
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
    start_ms: int = T0


# Time passing before an operation: often little, so that holds and ticks meet a period's end.
steps = st.one_of(st.integers(0, 2_000), st.integers(0, 20_000))
ops = st.one_of(
    st.builds(
        Op,
        st.just("reserve"),
        steps,
        st.sampled_from(IDS),
        st.integers(0, 30),
        st.integers(1, 60_000),
    ),
    st.builds(
        Op,
        st.just("event"),
        steps,
        st.sampled_from(["", "", *IDS, "nope"]),
        st.integers(0, 30),
        lag_ms=st.integers(0, 120_000),
    ),
    st.builds(Op, st.just("release"), steps, st.sampled_from(IDS)),
    st.builds(Op, st.just("tick"), st.one_of(st.integers(0, 5_000), st.integers(0, 60_000))),
    st.builds(Op, st.just("tick"), st.sampled_from([DAY_MS, 28 * DAY_MS])),
)


@st.composite
def runs(draw: st.DrawFn) -> Run:
    grants = draw(
        st.lists(
            st.builds(
                GrantSpec,
                st.integers(1, 60),
                st.integers(0, 1),
                st.one_of(st.none(), st.integers(1, 300_000)),
                st.sampled_from(FRACTIONS),
                st.booleans(),
                st.booleans(),
            ),
            min_size=1,
            max_size=3,
        )
    )
    top_up = None
    if draw(st.booleans()):
        threshold = draw(st.integers(0, 20))
        top_up = (threshold, draw(st.integers(threshold + 1, 60)), draw(st.integers(1, 3)))
    start_ms = draw(st.sampled_from([T0, FEB_MS - 120_000, FEB_MS - 10_000]))
    return Run(draw(st.booleans()), tuple(grants), top_up, tuple(draw(st.lists(ops, max_size=25))), start_ms)


def setup(run: Run) -> tuple[Ledger, ReferenceCredits]:
    world = basic_world(overage_policy=OveragePolicy.BLOCK if run.block else OveragePolicy.ALLOW)
    ref_grants, rollover, ends_at_rollover, tie_rolls = [], {}, set(), set()
    for index, spec in enumerate(run.grants):
        expires = run.start_ms + spec.expires_in_ms if spec.expires_in_ms is not None else None
        fraction = spec.rollover_fraction
        command = world.grant_command(
            f"g{index}", str(spec.amount), priority=spec.priority, expires_at_ms=expires, rollover_fraction=fraction
        )
        if spec.use_ends_at_rollover:
            command = msgspec.structs.replace(command, use_ends_at_rollover=True)
            ends_at_rollover.add(f"g{index}")
        if spec.expiring_at_rollover_rolls:
            command = msgspec.structs.replace(command, expiring_at_rollover_rolls=True)
            tie_rolls.add(f"g{index}")
        world.apply(command)
        ref_grants.append(
            RGrant(f"g{index}", Decimal(spec.amount * PICOS), spec.priority, (), EPOCH_MS, expires, index)
        )
        if fraction:
            rollover[f"g{index}"] = Decimal(fraction)
    ledger = Ledger(world)
    policy = None
    if run.top_up is not None:
        threshold, recharge_to, cap = run.top_up
        ledger.run(cmd.SetTopUpPolicy(run.start_ms, ACTOR, "c-acme", str(threshold), str(recharge_to), "0.5", cap))
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
        rollover=rollover,
        use_ends_at_rollover=ends_at_rollover,
        expiring_at_rollover_rolls=tie_rolls,
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


@st.composite
def runs_holding_across_a_period_end(draw: st.DrawFn) -> Run:
    """Runs whose holds are open when the clock passes January's end: reservations in its last seconds (TTLs
    long enough to outlive it), a tick just past it, then any operations."""
    run = draw(runs())
    holds = draw(
        st.lists(
            st.builds(Op, st.just("reserve"), st.integers(0, 1_000), st.sampled_from(IDS), st.integers(1, 30)),
            min_size=1,
            max_size=3,
        )
    )
    holds = [dataclasses.replace(op, ttl_ms=draw(st.integers(10_000, 60_000))) for op in holds]
    cross = Op("tick", draw(st.integers(3_000, 8_000)))
    return dataclasses.replace(run, start_ms=FEB_MS - 5_000, ops=(*holds, cross, *run.ops))


@st.composite
def runs_using_credit_dated_after_a_period_end(draw: st.DrawFn) -> Run:
    """Runs whose first grant rolls over at January's end and was granted as the server grants now (its use ends at
    the rollover), with usage dated just after that end arriving before any clock tick reaches it (the rollover is
    due, not done), then any operations: that usage is not paid from the grant."""
    run = draw(runs())
    first = dataclasses.replace(
        run.grants[0], rollover_fraction=draw(st.sampled_from(FRACTIONS[1:])), use_ends_at_rollover=True
    )
    late = draw(
        st.lists(
            st.builds(Op, st.just("event"), st.integers(0, 2_000), st.sampled_from(["", *IDS]), st.integers(1, 30)),
            min_size=1,
            max_size=3,
        )
    )
    ops = (Op("reserve", 0, "r0", draw(st.integers(1, 30)), 60_000), Op("event", 2_000, tokens=5), *late, *run.ops)
    return dataclasses.replace(run, grants=(first, *run.grants[1:]), start_ms=FEB_MS - 1_000, ops=ops)


@st.composite
def runs_with_a_grant_expiring_at_its_rollover(draw: st.DrawFn) -> Run:
    """Runs whose first grant has a rollover fraction and expires exactly at January's end, its rollover: granted as
    the server grants now (it rolls over there) or as before `expiring_at_rollover_rolls` (it just expires), with
    holds open across that end and a tick past it, then any operations."""
    run = draw(runs_holding_across_a_period_end())
    first = dataclasses.replace(
        run.grants[0],
        expires_in_ms=FEB_MS - run.start_ms,
        rollover_fraction=draw(st.sampled_from(FRACTIONS[1:])),
        expiring_at_rollover_rolls=draw(st.booleans()),
    )
    return dataclasses.replace(run, grants=(first, *run.grants[1:]))


@given(runs())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_holds_top_ups_and_breakage_agree_with_the_oracle_and_replay_identically(run: Run) -> None:
    check(run)


@given(runs_holding_across_a_period_end())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_credit_held_across_a_rollover_agrees_with_the_oracle_and_replays_identically(run: Run) -> None:
    check(run)


@given(runs_using_credit_dated_after_a_period_end())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_credit_whose_use_ends_at_its_rollover_agrees_with_the_oracle_and_replays_identically(run: Run) -> None:
    check(run)


def check(run: Run) -> None:
    """Runs the operations on the kernel and the oracle, comparing after each; then the top-up purchases, and the
    state replayed from the journal and restored from a snapshot."""
    ledger, oracle = setup(run)
    now = run.start_ms
    for index, op in enumerate(run.ops):
        now += op.after_ms if now + op.after_ms - run.start_ms < HORIZON_MS else 0
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
    """The kernel's state bytes once its tables are loaded (loading them interns the catalogue's names); its index
    of due times, rebuilt on a restore, holds what a walk of every account finds."""
    billing.refresh_tables()
    billing.kernel.check_due_index()
    return billing.kernel.snapshot()


@given(runs_with_a_grant_expiring_at_its_rollover())
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_grant_expiring_at_its_rollover_agrees_with_the_oracle_and_replays_identically(run: Run) -> None:
    check(run)
