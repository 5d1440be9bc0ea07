"""Grants in the control plane: GrantCredits validation and ownership, revenue recognised at the cost basis,
and amounts beyond 64 bits in a snapshot (docs/architecture.md §3). Drawing on grants is tested in the kernel
(tests/test_kernel_ledger.py)."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import pytest
from msgspec.structs import replace as msgspec_replace

from engine.commands import GrantCredits
from engine.errors import FailedPrecondition, InvalidArgument, NotFound
from engine.ledger import Grant, GrantKind
from engine.state import Engine
from tests.engine_fixtures import EPOCH_MS, World, basic_world, picos

T = EPOCH_MS


# Revenue at cost basis ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "amount", "paid", "draws", "revenues", "recognized"),
    [
        # 50,000 credits for 45,000: cost basis 0.9; 100 credits -> 90.
        pytest.param(GrantKind.PREPAID, "50000", "45000", [100], ["90"], "90", id="credit-pack"),
        # 3 credits for 1: cumulative revenue after 1, 2, 3 credits = 0.333333333333, 0.666666666667, 1
        # (each rounded once from the cumulative draw); fully drawn, it has recognised exactly what was paid.
        pytest.param(
            GrantKind.PREPAID,
            "3",
            "1",
            [1, 1, 1],
            ["0.333333333333", "0.333333333334", "0.333333333333"],
            "1",
            id="thirds-fully-drawn-recognise-exactly-paid",
        ),
        # 7 credits for 2: after 2, 4, 7 credits: 4/7 = 0.571428571429, 8/7 = 1.142857142857, 2.
        pytest.param(
            GrantKind.PREPAID,
            "7",
            "2",
            [2, 2, 3],
            ["0.571428571429", "0.571428571428", "0.857142857143"],
            "2",
            id="sevenths-fully-drawn-recognise-exactly-paid",
        ),
        pytest.param(GrantKind.PROMOTIONAL, "100", "0", [40, 60], ["0", "0"], "0", id="promotional-recognises-nothing"),
    ],
)
def test_revenue_recognised_at_cost_basis(
    kind: GrantKind, amount: str, paid: str, draws: list[int], revenues: list[str], recognized: str
) -> None:
    world = basic_world()
    grant: Grant = world.grant("g", amount, kind=kind, paid=paid)
    drawn = 0
    got = []
    for credits in draws:
        before = grant.revenue_for_drawn(drawn)
        drawn += picos(str(credits))
        got.append(grant.revenue_for_drawn(drawn) - before)
    assert got == [picos(r) for r in revenues]
    assert grant.revenue_for_drawn(drawn) == picos(recognized)


# GrantCredits validation -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "field"),
    [
        pytest.param(lambda w: w.grant_command("g", "0"), "grant.amount", id="amount-zero"),
        pytest.param(lambda w: w.grant_command("g", "-5"), "grant.amount", id="amount-negative"),
        pytest.param(lambda w: w.grant_command("g", "abc"), "grant.amount", id="amount-not-decimal"),
        # 4 x 10^-13 rounds half-even to 0 picos.
        pytest.param(lambda w: w.grant_command("g", "0.0000000000004"), "grant.amount", id="amount-under-a-pico"),
        pytest.param(
            lambda w: w.grant_command("g", "10", kind=GrantKind.PROMOTIONAL, paid="10"),
            "grant.paid_amount",
            id="promotional-with-paid-amount",
        ),
        pytest.param(lambda w: w.grant_command("g", "10", paid="-1"), "grant.paid_amount", id="paid-negative"),
        pytest.param(
            lambda w: w.grant_command("g", "10", products=("tokens", "nope")),
            "grant.applicable_product_ids[1]",
            id="unknown-product",
        ),
        pytest.param(lambda w: w.grant_command("g", "10", kind=None), "grant.kind", id="kind-missing"),
        pytest.param(
            lambda w: w.grant_command("g", "10", starts_at_ms=T, expires_at_ms=T),
            "grant.expires_at",
            id="expires-at-start",
        ),
        pytest.param(
            lambda w: w.grant_command("g", "10", rollover_fraction="1.5"),
            "grant.rollover_fraction",
            id="rollover-over-1",
        ),
        pytest.param(lambda w: w.grant_command("bad id!", "10"), "grant.id", id="bad-id"),
        pytest.param(lambda w: w.grant_command("g", "10", customer_id=""), "grant.customer_id", id="no-customer"),
    ],
)
def test_grant_credits_validation(build: Callable[[World], GrantCredits], field: str) -> None:
    world = basic_world()
    command = build(world)
    before = world.engine.encode_snapshot()
    with pytest.raises(InvalidArgument) as refused:
        world.apply(command)
    assert [f for f, _ in refused.value.violations] == [field]
    assert world.engine.encode_snapshot() == before  # a refused command changes nothing


def test_grant_for_unknown_customer_is_not_found() -> None:
    world = basic_world()
    with pytest.raises(NotFound):
        world.apply(world.grant_command("g", "10", customer_id="ghost"))
    assert world.engine.state.grants_created == 0


def test_grant_through_contract_belongs_to_its_customer() -> None:
    world = basic_world()
    grant = world.apply(world.grant_command("g", "10", customer_id="", contract_id="c-acme"))
    assert [g.id for g in world.engine.state.accounts["acme"].grants] == ["g"]
    assert grant is world.grant_by_id("g")


def test_a_rollover_grant_starting_outside_every_contract_is_refused_unless_stored_before_the_rule() -> None:
    """GrantCredits.rollover_start_in_contract: acme's contract starts at EPOCH; a grant with a rollover fraction
    starting a day before it has no billing period to roll over at the end of. Taken by the server now (the field
    set), it is refused and changes nothing; stored before the rule (the field left out), it replays as granted then.
    Without a fraction, or starting in the contract's time, it is granted either way."""
    world = basic_world()
    before_contract = world.grant_command("g", "10", starts_at_ms=T - 86_400_000, rollover_fraction="0.5")
    now = msgspec_replace(before_contract, rollover_start_in_contract=True)
    snapshot = world.engine.encode_snapshot()
    with pytest.raises(FailedPrecondition) as refused:
        world.apply(now)
    assert "no contract of customer 'acme' is in force at its start" in str(refused.value)
    assert world.engine.encode_snapshot() == snapshot
    assert isinstance(world.apply(before_contract), Grant)
    plain = world.grant_command("plain", "10", starts_at_ms=T - 86_400_000)
    assert isinstance(world.apply(msgspec_replace(plain, rollover_start_in_contract=True)), Grant)
    inside = world.grant_command("inside", "10", starts_at_ms=T, rollover_fraction="0.5")
    assert isinstance(world.apply(msgspec_replace(inside, rollover_start_in_contract=True)), Grant)
    assert [g.id for g in world.engine.state.accounts["acme"].grants] == ["g", "plain", "inside"]


# Large amounts -------------------------------------------------------------------------------------------------


def test_amounts_beyond_64_bits_of_picos_survive_a_snapshot() -> None:
    """A billion credits is 10^21 picos: more than msgpack's 64-bit integers hold. The snapshot keeps it exactly."""
    world = basic_world()
    world.grant("big", "999999999999", paid="899999999999.1")
    blob = world.engine.encode_snapshot()
    restored = Engine.from_snapshot(blob)
    [grant] = restored.state.accounts["acme"].grants
    assert grant.amount == picos("999999999999")
    assert grant.paid_amount == Decimal("899999999999.1")
    assert restored.encode_snapshot() == blob
