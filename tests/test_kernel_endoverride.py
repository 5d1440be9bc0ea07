"""EndOverride against the oracle (tests/reference_billing.py ReferenceRating.end_override), through the kernel: the
control plane's answer to each end (the usage it refuses for read from the kernel's hours of the override's product,
as the server reads them) is the oracle's, the end it holds too, and once taken and compiled into the kernel's
tables, usage before and after it is charged as the oracle charges it.

Product `tokens` (event type `ai`, SUM of `tokens`) at 1 credit a unit, contract `c-acme` from EPOCH, override `o1`
multiplying it by 0.5 from the contract's start, open-ended. The commands' time is NOW, ten days in."""

from __future__ import annotations

import re
from decimal import Decimal

from engine import commands as cmd
from engine.errors import FailedPrecondition, InvalidArgument, Repeated
from tests.contract_ends import EndOutcome, iso_ms
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, MINUTE_MS, World, basic_world
from tests.kernel_fixtures import KernelWorld, usage_event
from tests.reference_billing import Curve, ReferenceRating, REvent, ROverride, RProduct, RRate

NOW_MS = EPOCH_MS + 10 * 24 * HOUR_MS


def engine_end_override(world: World, end_ms: int, at_ms: int) -> EndOutcome:
    """EndOverride of `o1` applied to the control plane at `at_ms`, its answer in the oracle's terms (a refusal's
    kind read from its message, as a client reads it from the status's)."""
    try:
        world.apply(cmd.EndOverride(at_ms, ACTOR, "c-acme", "o1", end_ms))
    except Repeated:
        return "repeated", None
    except InvalidArgument as exc:
        assert "ending_before" in str(exc), exc
        return "after starting_at", None
    except FailedPrecondition as exc:
        details = str(exc)
        hour = re.search(r"in the hour from (\S+), which it could have priced", details)
        if hour:
            return "usage", iso_ms(hour.group(1))
        for kind, says in (("already ended", "has already ended"), ("before now", "before now"), ("later", "only")):
            if says in details:
                return kind, None
        raise AssertionError(f"EndOverride refused for no documented reason: {details}") from exc
    return "ended", None


def test_each_end_is_answered_and_priced_as_the_oracle_says() -> None:
    world = basic_world()
    world.override("tokens", contract_id="c-acme", multiplier="0.5", starting_at_ms=0)
    kernel = KernelWorld(world)
    kernel.load()

    def product_hours(customer_id: str, product_id: str) -> list[int]:
        found = kernel.kernel.usage(customer_id)
        return [] if found is None else sorted({h * HOUR_MS for h, p, _d, _u in found[1] if p == product_id})

    world.engine.product_hours_recorded = product_hours
    product = RProduct("tokens", "ai", "SUM", "tokens", (), ("model", "region"))
    oracle = ReferenceRating(
        [product],
        [RRate("tokens", (), Curve("UNIT", Decimal(1)))],
        [ROverride("tokens", None, Decimal("0.5"))],
        [],
        customer_id="acme",
        contract_start_ms=EPOCH_MS,
        block=False,
    )

    def charge(transaction_id: str, at_ms: int, tokens: float) -> int:
        """The event's charge in picos, the kernel's, checked against the oracle's."""
        before = sum(oracle.charges.values(), Decimal(0))
        assert (
            oracle.ingest(REvent(transaction_id, "acme", "ai", at_ms, (), (("tokens", tokens),)), at_ms) == "accepted"
        )
        charged = kernel.charge_of(usage_event(transaction_id, at_ms, {"tokens": tokens}))
        assert charged == sum(oracle.charges.values(), Decimal(0)) - before, transaction_id
        return charged

    assert charge("e1", NOW_MS, 10) == 5 * 10**12
    charge("e2", NOW_MS + 2 * HOUR_MS + 30 * MINUTE_MS, 1)  # dated ahead of the requests below
    steps = [
        (0, NOW_MS, "after starting_at"),
        (NOW_MS - 1, NOW_MS, "before now"),
        (NOW_MS + 2 * HOUR_MS, NOW_MS, "usage"),
        (NOW_MS + 2 * HOUR_MS + 45 * MINUTE_MS, NOW_MS, "usage"),
        (NOW_MS + 3 * HOUR_MS, NOW_MS, "ended"),
        (NOW_MS + 3 * HOUR_MS, NOW_MS, "repeated"),
        (NOW_MS + 4 * HOUR_MS, NOW_MS, "later"),
        (NOW_MS + 4 * HOUR_MS, NOW_MS + 5 * HOUR_MS, "already ended"),
    ]
    for end_ms, at_ms, kind in steps:
        got = engine_end_override(world, end_ms, at_ms)
        assert got == oracle.end_override(0, end_ms, at_ms), (end_ms, at_ms, got)
        assert got[0] == kind and (kind != "usage" or got[1] == NOW_MS + 2 * HOUR_MS), (end_ms, got)
        if kind == "ended":
            kernel.load()  # as the server compiles the customer's tables after it
        held = world.engine.state.contracts["c-acme"].overrides[0].ending_before_ms
        assert held == oracle.overrides[0].ending_before_ms
    assert charge("e3", NOW_MS + 3 * HOUR_MS + MINUTE_MS, 10) == 10 * 10**12  # after the end: the card's price
    assert charge("e4", NOW_MS + 3 * HOUR_MS - MINUTE_MS, 4) == 2 * 10**12  # late, before it: the override's
