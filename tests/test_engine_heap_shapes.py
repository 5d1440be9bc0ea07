"""The compact shapes of the control plane's per-customer records (engine/control.py): a customer's one contract
indexed as itself and its contracts as a tuple once it has more, and equal times and amounts held as one object.
What each saves is measured by server/bench/memory_breakdown.py, not here."""

from __future__ import annotations

import pytest

from engine.control import shared_int
from engine.errors import FailedPrecondition
from engine.state import Engine
from tests.engine_fixtures import DAY_MS, EPOCH_MS, World


def test_a_customers_contracts_are_found_whether_it_has_none_one_or_several() -> None:
    w = World()
    w.rate_card()
    w.version([])
    w.customer()
    assert w.engine.contracts_of("acme") == ()
    first = w.contract("c-1", ending_before_ms=EPOCH_MS + 10 * DAY_MS)
    assert w.engine.contracts_of("acme") == (first,)
    second = w.contract("c-2", starting_at_ms=EPOCH_MS + 10 * DAY_MS)
    assert w.engine.contracts_of("acme") == (first, second)
    with pytest.raises(FailedPrecondition, match="already has contract 'c-2'"):
        w.contract("c-3", starting_at_ms=EPOCH_MS + 20 * DAY_MS)
    restored = Engine.from_snapshot(w.engine.encode_snapshot())
    assert [c.id for c in restored.contracts_of("acme")] == ["c-1", "c-2"]


def test_records_hold_one_object_for_equal_times_and_amounts() -> None:
    w = World()
    w.rate_card()
    w.version([])
    for customer_id in ("acme", "globex"):
        w.customer(customer_id, at_ms=EPOCH_MS + 1)
        w.contract(f"c-{customer_id}", customer_id=customer_id, at_ms=EPOCH_MS + 1)
        w.grant(f"g-{customer_id}", "1000000", customer_id=customer_id)
    state = w.engine.state
    acme, globex = state.accounts["acme"].grants[0], state.accounts["globex"].grants[0]
    assert acme.amount == 10**18 and acme.amount is globex.amount
    assert state.customers["acme"].created_at_ms is state.contracts["c-globex"].created_at_ms
    assert state.contracts["c-acme"].starting_at_ms is state.contracts["c-globex"].starting_at_ms
    big = 10**20
    assert shared_int(big + 1 - 1) is shared_int(big + 2 - 2) == big
