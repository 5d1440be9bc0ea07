"""Defaults for times a request leaves unset: a contract starts at the start of its UTC day, a grant at the
start of the contract it pays for, so usage stamped a moment before either was created is still covered."""

from __future__ import annotations

from engine.ledger import Grant
from tests.engine_fixtures import DAY_MS, EPOCH_MS, HOUR_MS, MINUTE_MS, World, picos, rate, unit
from tests.kernel_fixtures import KernelWorld, usage_event


def world_created_mid_day(created_at_ms: int) -> World:
    world = World()
    world.product("tokens", value_key="tokens")
    world.rate_card("card")
    world.version([rate("tokens", unit("1"))])  # effective from EPOCH: 1 credit per token
    world.customer("acme")
    world.contract("c-acme", starting_at_ms=None, at_ms=created_at_ms)
    return world


def test_a_contract_without_starting_at_starts_at_the_start_of_its_utc_day() -> None:
    created = EPOCH_MS + 3 * DAY_MS + 14 * HOUR_MS + 7 * MINUTE_MS + 123
    world = world_created_mid_day(created)

    assert world.engine.contract("c-acme").starting_at_ms == EPOCH_MS + 3 * DAY_MS
    # Usage stamped a second before the contract was created is covered by it.
    kernel = KernelWorld(world)
    kernel.load()
    ack = kernel.ingest([usage_event("early", created - 1_000, {"tokens": 4})], created)
    assert (ack.accepted, list(ack.rejected)) == (1, [])


def test_a_grant_without_starts_at_pays_for_its_contracts_usage_from_the_contract_start() -> None:
    created = EPOCH_MS + 3 * DAY_MS + 14 * HOUR_MS
    world = world_created_mid_day(created)
    granted_at = created + HOUR_MS
    result = world.apply(world.grant_command("g1", "100", contract_id="c-acme", starts_at_ms=None, at_ms=granted_at))
    assert isinstance(result, Grant)
    assert result.starts_at_ms == EPOCH_MS + 3 * DAY_MS

    # An event from before the grant was bought draws on it: 4 tokens x 1 credit = 4 credits, no overage.
    kernel = KernelWorld(world)
    kernel.load()
    late = usage_event("late", created + 5 * MINUTE_MS, {"tokens": 4})
    assert kernel.charge_of(late, granted_at) == picos("4")
    assert kernel.drawn_by_grant(granted_at) == {"g1": picos("4")}
    assert kernel.balance(granted_at)["overage"] == 0


def test_a_grant_without_starts_at_or_contract_in_force_starts_when_it_is_granted() -> None:
    world = World()
    world.customer("acme")
    granted_at = EPOCH_MS + 5 * HOUR_MS
    result = world.apply(world.grant_command("g1", "10", starts_at_ms=None, at_ms=granted_at))
    assert isinstance(result, Grant)
    assert result.starts_at_ms == granted_at
