"""The compact shapes of the control plane's per-customer records (engine/control.py): a customer's one contract
indexed as itself and its contracts as a tuple once it has more, equal times and amounts held as one object, and a
snapshot restored with its objects shared as replay shares them (engine/restore.py).
What each saves is measured by server/bench/memory_breakdown.py, not here."""

from __future__ import annotations

import msgspec
import pytest

from engine.control import BillingState, shared_int
from engine.customers import NO_ATTRIBUTES
from engine.errors import FailedPrecondition
from engine.restore import decode_state
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


def test_a_snapshot_restores_the_same_state_sharing_what_replay_shares() -> None:
    w = World()
    w.rate_card()
    w.version([])
    w.customer("acme", attributes={"tier": "gold"})
    w.customer("globex")
    w.contract("c-1", ending_before_ms=EPOCH_MS + 10 * DAY_MS)
    w.contract("c-2", starting_at_ms=EPOCH_MS + 10 * DAY_MS)
    w.contract("c-globex", customer_id="globex")
    w.grant("g-1", "100", paid="0.0")  # equal to 0, written otherwise: kept as written
    w.grant("g-2", "100", paid="0", customer_id="globex")
    blob = w.engine.encode_snapshot()
    state = decode_state(blob)
    assert state == msgspec.json.decode(blob, type=BillingState) == w.engine.state
    assert msgspec.json.encode(state) == blob
    acme_key = next(key for key in state.accounts if key == "acme")
    customer, account = state.customers["acme"], state.accounts["acme"]
    assert customer.id is acme_key is account.customer_id is account.grants[0].customer_id
    assert state.contracts["c-2"].customer_id is customer.id
    assert state.contracts["c-1"].starting_at_ms is state.contracts["c-globex"].starting_at_ms
    assert state.contracts["c-1"].currency is state.contracts["c-globex"].currency
    assert state.customers["globex"].attributes is NO_ATTRIBUTES and customer.attributes == {"tier": "gold"}
    assert str(account.grants[0].paid_amount) == "0.0" and str(state.accounts["globex"].grants[0].paid_amount) == "0"
