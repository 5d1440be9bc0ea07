"""A customer's contracts price in one pricing unit (contracts.proto CreateContractRequest.rate_card_id): with
`pricing_unit_shared` (set by the server on every request) a contract on a card in another unit is refused; a command
stored before the rule (the field left out) is taken on replay, as then."""

from __future__ import annotations

import msgspec
import pytest

from engine import commands as cmd
from engine.contracts import Contract, OveragePolicy
from engine.errors import FailedPrecondition
from engine.state import Engine
from tests.engine_fixtures import ACTOR, EPOCH_MS, World

DAY_MS = 86_400_000


def world_with_two_units() -> World:
    world = World()
    world.rate_card("card")
    world.rate_card("card-eur", pricing_unit="EUR")
    world.customer("acme")
    world.contract("c-old", customer_id="acme", ending_before_ms=EPOCH_MS + DAY_MS)
    return world


SWITCH = cmd.CreateContract(
    EPOCH_MS, ACTOR, "c-new", "acme", "card-eur", EPOCH_MS + DAY_MS, None, OveragePolicy.ALLOW, "1", "EUR"
)


def test_a_contract_in_another_pricing_unit_is_refused_under_the_rule_and_nothing_is_created() -> None:
    world = world_with_two_units()
    with pytest.raises(FailedPrecondition, match="contract 'c-old' priced in 'credits'"):
        world.engine.apply(msgspec.structs.replace(SWITCH, pricing_unit_shared=True), world.seq + 1)
    assert "c-new" not in world.engine.state.contracts


def test_a_command_stored_before_the_rule_replays_as_taken() -> None:
    world = world_with_two_units()
    made = world.apply(SWITCH)
    assert isinstance(made, Contract) and made.rate_card_id == "card-eur"
    replayed = Engine()
    for seq, command in enumerate(world.journal, start=1):
        replayed.apply(command, seq)
    assert replayed.state.contracts["c-new"].rate_card_id == "card-eur"
