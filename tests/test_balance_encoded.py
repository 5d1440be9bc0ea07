"""GetBalance and WatchBalance read a balance with its top-up grants encoded by the kernel
(engine/kernel/src/balance_wire.rs, `Billing.balance_encoded`, server/services/balance.py `_sent_balance_bytes`):
the bytes must be those of the balance built grant by grant in Python (`Billing.balance`, `convert.balance_pb`,
tests/balance_reference.py `_sent_balance`), kept as the reference, for a customer holding grants of every kind,
whole or past the message limit (spent grants left out: cut from the kernel's bytes where it noted them)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tariff.v1 import balance_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.ledger import GrantKind
from server import convert
from server.errors import ResourceExhausted, send_limit
from server.services.balance import _next_grant_start_ms, _sent_balance_bytes
from tests.balance_reference import _sent_balance
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, DAY_MS, EPOCH_MS, basic_world

T0_MS = EPOCH_MS + 3_600_000
FEB_MS = EPOCH_MS + 31 * DAY_MS


def reference(billing: Billing, at_ms: int) -> bytes:
    """The balance as it was built before: every grant's row, record and message in Python."""
    return _sent_balance(convert.balance_pb(billing.balance("acme", at_ms))).SerializeToString()


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    """Customer "acme" with grants of every kind: PREPAID ones (one expiring in January, one paid a third a credit so its
    revenue rounds, one of negative priority), PROMOTIONAL, two rolling half over at January's end (ROLLOVER
    grants in February), restricted ones, one starting in March; a top-up policy at 0.333333333333333333 a
    credit that buys a few hundred top-ups (drawn in fractions by events of 3.3), and holds open on them."""
    world = basic_world(extra_products=("other",))
    world.apply(world.grant_command("expiring", "100", paid="30", expires_at_ms=T0_MS + 10 * DAY_MS))
    world.apply(world.grant_command("rolls", "90", paid="45", priority=1, rollover_fraction="0.5"))
    world.apply(world.grant_command("thirds", "3", paid="1", priority=-3))
    ledger = Ledger(world)
    ledger.run(cmd.SetTopUpPolicy(T0_MS, ACTOR, "c-acme", "20", "25", "0.333333333333333333", 1_000))
    for n in range(4):
        at_ms = T0_MS + n * DAY_MS
        ledger.ingest([event(f"jan{n}-{i}", at_ms, 3.3) for i in range(100)], at_ms)
    # Granted after the purchases (credit usage cannot draw would keep the policy from buying): rolls over whole.
    other = world.grant_command("other", "8", products=("other",), rollover_fraction="0.5", paid="3", at_ms=at_ms)
    ledger.run(other)
    ledger.advance(T0_MS + 11 * DAY_MS)  # "expiring" breaks
    ledger.advance(FEB_MS + 1)  # "rolls" rolls over
    ledger.ingest([event(f"feb-{i}", FEB_MS + DAY_MS, 3.3) for i in range(100)], FEB_MS + DAY_MS)
    at_ms = FEB_MS + 2 * DAY_MS
    for grant in (
        world.grant_command("promo", "4", kind=GrantKind.PROMOTIONAL, at_ms=at_ms),
        world.grant_command("restricted", "5", products=("other",), priority=2, at_ms=at_ms),
        world.grant_command("later", "7", starts_at_ms=FEB_MS + 40 * DAY_MS, at_ms=at_ms),
    ):
        ledger.run(grant)
    ledger.reserve("open-1", 12.5, at_ms, ttl_ms=DAY_MS)
    ledger.reserve("open-2", 40, at_ms, ttl_ms=DAY_MS)
    return ledger


@pytest.fixture
def small_send_limit() -> Iterator[None]:
    before = send_limit.bytes_max
    yield
    send_limit.bytes_max = before


@pytest.mark.parametrize("at_ms", [T0_MS + 5 * DAY_MS, FEB_MS + 2 * DAY_MS + 1, FEB_MS + 3 * DAY_MS])
def test_the_encoded_balance_is_the_one_built_grant_by_grant(ledger: Ledger, at_ms: int) -> None:
    """Byte for byte, at an instant before the expiry, with the holds open, and after their TTL (projected)."""
    billing = ledger.billing
    view = billing.balance_encoded("acme", at_ms)
    assert view.grant_parts is not None and any(isinstance(part, bytes) for part in view.grant_parts)
    expected = reference(billing, at_ms)
    assert _sent_balance_bytes(view) == expected
    balance = balance_pb2.Balance.FromString(expected)
    kinds = {g.kind for g in balance.grants}
    assert kinds >= {1, 4} and len(balance.grants) > 100, kinds  # PREPAID and TOP_UP, hundreds of top-ups
    if at_ms > FEB_MS:
        assert 3 in kinds  # ROLLOVER grants
    held = {g.kind for g in balance.grants if g.held != "0"}
    # The holds, open until their TTL, on a top-up among others.
    assert (4 in held) if at_ms < FEB_MS + 3 * DAY_MS else not held, held
    slow = billing.balance("acme", at_ms)
    assert _next_grant_start_ms(view, at_ms) == _next_grant_start_ms(slow, at_ms)


def test_a_balance_past_the_message_limit_leaves_out_the_same_spent_grants(
    ledger: Ledger, small_send_limit: None
) -> None:
    """Too large to send whole, the encoded balance leaves out the spent grants the reference leaves out."""
    at_ms = FEB_MS + 2 * DAY_MS + 1
    whole = len(reference(ledger.billing, at_ms))
    send_limit.bytes_max = whole * 2 // 3
    expected = reference(ledger.billing, at_ms)
    assert balance_pb2.Balance.FromString(expected).grants_left_out > 0
    assert _sent_balance_bytes(ledger.billing.balance_encoded("acme", at_ms)) == expected


# Grants of every kind and state, drawn by hypothesis: PREPAID and PROMOTIONAL ones (paid or free, any priority,
# restricted or not, started or not, expiring or not, rolling over or not), TOP_UP ones a policy buys, ROLLOVER
# ones at January's end, holds open on them, read at any instant, sent whole or past a message limit.
GRANT_SPECS = st.lists(
    st.tuples(
        st.sampled_from([GrantKind.PREPAID, GrantKind.PROMOTIONAL]),
        st.integers(1, 40),  # amount
        st.sampled_from(["0", "1", "3", "0.7"]),  # paid (a PROMOTIONAL grant's 0)
        st.integers(-2, 2),  # priority
        st.sampled_from([(), ("other",), ("tokens",), ("other", "tokens")]),
        st.integers(0, 45),  # start, days from January 1st
        st.none() | st.integers(1, 40),  # days from the start to the expiry
        st.sampled_from(["", "0.5", "1"]),  # rollover fraction
    ),
    max_size=5,
)


@dataclass(frozen=True)
class Scenario:
    grants: list[tuple[GrantKind, int, str, int, tuple[str, ...], int, int | None, str]]
    top_up: tuple[int, int] | None  # (threshold, recharge to)
    usage: list[tuple[int, float]]  # (day, tokens)
    holds: list[float]  # tokens held at the read
    read_day: int
    # The message limit: the whole balance's size less this share of what its spent grants take (past 1: too large
    # even without them).
    limit: float | None


SCENARIOS = st.builds(
    Scenario,
    GRANT_SPECS,
    st.none() | st.tuples(st.integers(1, 10), st.integers(11, 20)) | st.tuples(st.integers(1, 5), st.integers(6, 9)),
    st.lists(st.tuples(st.integers(0, 60), st.sampled_from([0.5, 3.3, 7.0, 25.0, 60.0])), min_size=3, max_size=30),
    st.lists(st.sampled_from([0.25, 2.0, 9.0]), max_size=3),
    st.integers(0, 70),
    st.none() | st.integers(0, 110).map(lambda percent: percent / 100) | st.integers(5, 95).map(lambda p: p / 100),
)


def _scenario_ledger(scenario: Scenario) -> tuple[Ledger, int]:
    """The ledger of `scenario`, and the instant to read at."""
    world = basic_world(extra_products=("other",))
    for n, (kind, amount, paid, priority, products, start_day, days, rollover) in enumerate(scenario.grants):
        starts_at_ms = EPOCH_MS + start_day * DAY_MS
        expires_at_ms = None if days is None else starts_at_ms + days * DAY_MS
        world.apply(
            world.grant_command(
                f"g{n}",
                str(amount),
                kind=kind,
                paid="0" if kind is GrantKind.PROMOTIONAL else paid,  # a promotional grant is not paid for
                priority=priority,
                products=products,
                starts_at_ms=starts_at_ms,
                expires_at_ms=expires_at_ms,
                rollover_fraction=rollover,
            )
        )
    ledger = Ledger(world)
    if scenario.top_up is not None:
        threshold, recharge_to = scenario.top_up
        ledger.run(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", str(threshold), str(recharge_to), "0.3", 40))
    read_ms = EPOCH_MS + scenario.read_day * DAY_MS + 1
    at_ms = EPOCH_MS
    for n, (day, tokens) in enumerate(sorted(scenario.usage)):
        at_ms = EPOCH_MS + day * DAY_MS + n
        if at_ms >= read_ms:
            break
        ledger.advance(at_ms)
        ledger.ingest([event(f"e{n}", at_ms, tokens)], at_ms)
    read_ms = max(read_ms, at_ms + 1)
    for n, tokens in enumerate(scenario.holds):
        ledger.reserve(f"hold-{n}", tokens, read_ms - 1, ttl_ms=DAY_MS)
    return ledger, read_ms


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(SCENARIOS)
def test_generated_grants_encode_as_the_reference_builds_them(scenario: Scenario) -> None:
    """Byte for byte, or the same RESOURCE_EXHAUSTED, whole or past a message limit."""
    ledger, read_ms = _scenario_ledger(scenario)
    _assert_sent_as_the_reference(ledger.billing, read_ms, scenario.limit)


@pytest.mark.parametrize("limit", [None, 0.0, 0.5, 1.0, 1.1])
def test_grants_sharing_an_id_are_built_as_the_reference_builds_them(limit: float | None) -> None:
    """A PREPAID grant under the id a ROLLOVER grant then takes (AdvanceClock without rollover_ids_distinct, as
    earlier releases recorded it): the kernel cannot tell them apart, so every grant is built in Python, and a
    balance past the limit leaves out the spent ones as the reference does."""
    world = basic_world()
    world.apply(world.grant_command("rolls", "10", paid="4", rollover_fraction="0.5"))
    world.apply(world.grant_command(f"rollover-rolls-{FEB_MS}", "100", paid="1", priority=5))
    for n in range(20):
        world.apply(world.grant_command(f"small-{n}", "1", paid="1", priority=-1, starts_at_ms=EPOCH_MS + n))
    ledger = Ledger(world)
    ledger.run(cmd.SetTopUpPolicy(T0_MS, ACTOR, "c-acme", "150", "151", "0.5", 10))  # top-ups the kernel encodes
    ledger.ingest([event(f"e{n}", T0_MS + n, 1.5) for n in range(16)], T0_MS + 16)
    ledger.advance(FEB_MS + 1)
    read_ms = FEB_MS + DAY_MS
    assert any(made[1] == "TOP_UP" for made in ledger.billing.kernel.made_grants("acme"))
    assert ledger.billing.balance_encoded("acme", read_ms).grant_parts is None
    _assert_sent_as_the_reference(ledger.billing, read_ms, limit)


def _assert_sent_as_the_reference(billing: Billing, read_ms: int, limit: float | None) -> None:
    """The balance sent is the reference's bytes, or the same RESOURCE_EXHAUSTED, under the limit `limit` says
    (`Scenario.limit`)."""
    before = send_limit.bytes_max
    try:
        if limit is not None:
            whole = reference(billing, read_ms)
            grants = balance_pb2.Balance.FromString(whole).grants
            spent = sum(2 + g.ByteSize() for g in grants if g.remaining == "0" and g.held == "0")
            send_limit.bytes_max = len(whole) - int(spent * limit)
        try:
            expected: bytes | str = reference(billing, read_ms)
        except ResourceExhausted as refused:
            expected = str(refused)
        try:
            answered: bytes | str = _sent_balance_bytes(billing.balance_encoded("acme", read_ms))
        except ResourceExhausted as refused:
            answered = str(refused)
    finally:
        send_limit.bytes_max = before
    assert answered == expected
    view = billing.balance_encoded("acme", read_ms)
    assert _next_grant_start_ms(view, read_ms) == _next_grant_start_ms(billing.balance("acme", read_ms), read_ms)


def test_a_balance_too_large_even_without_its_spent_grants_is_refused_as_the_reference_refuses_it(
    ledger: Ledger, small_send_limit: None
) -> None:
    """RESOURCE_EXHAUSTED in the same words: the grants counted (top-ups the kernel encoded among them) and the size
    of the whole balance."""
    at_ms = FEB_MS + 2 * DAY_MS + 1
    send_limit.bytes_max = 200
    with pytest.raises(ResourceExhausted) as expected:
        reference(ledger.billing, at_ms)
    with pytest.raises(ResourceExhausted) as answered:
        _sent_balance_bytes(ledger.billing.balance_encoded("acme", at_ms))
    assert str(answered.value) == str(expected.value)
    assert "acme" in str(answered.value) and " grants) is " in str(answered.value), answered.value
