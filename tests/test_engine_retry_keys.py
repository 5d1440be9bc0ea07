"""Retry keys of customers, contracts and grants live on the records themselves, not in BillingState.requests.

A retry of the same CreateCustomer, CreateContract or GrantCredits answers as the first call did and changes
nothing, also after a snapshot round trip; another request under the same id is ALREADY_EXISTS; and a state
written before (its fingerprints in `requests`, the records without one) still recognises a retry.
"""

from __future__ import annotations

import msgspec
import pytest

from engine import commands as cmd
from engine.contracts import Contract, OveragePolicy
from engine.control import BillingState, RequestMark, default_contract_id, fingerprint, restated_request
from engine.errors import AlreadyExists, Repeated
from engine.ledger import GrantKind
from engine.state import Engine
from tests.engine_fixtures import ACTOR, EPOCH_MS, World, basic_world

CUSTOMER = cmd.CreateCustomer(EPOCH_MS, ACTOR, "acme", "Acme", {"tier": "gold"})
CONTRACT = cmd.CreateContract(EPOCH_MS, ACTOR, "", "acme", "card", EPOCH_MS, None, OveragePolicy.ALLOW, "", "")


def seeded() -> tuple[World, cmd.GrantCredits]:
    world = World()
    world.rate_card()
    world.version([])
    world.apply(CUSTOMER)
    world.apply(CONTRACT)
    grant = world.grant_command("g-1", "100", customer_id="acme")
    world.apply(grant)
    return world, grant


def assert_retries_repeat(engine: Engine, grant: cmd.GrantCredits) -> None:
    seq = engine.state.last_seq
    for command, answer_id in ((CUSTOMER, "acme"), (CONTRACT, "acme-20260101"), (grant, "g-1")):
        with pytest.raises(Repeated) as repeated:
            engine.apply(msgspec.structs.replace(command, at_ms=EPOCH_MS + 1, actor="retrier"), seq + 1)
        assert getattr(repeated.value.result, "id") == answer_id  # noqa: B009 (three record types)
    assert engine.state.last_seq == seq
    with pytest.raises(AlreadyExists, match="customer 'acme' already exists"):
        engine.apply(msgspec.structs.replace(CUSTOMER, name="Other"), seq + 1)
    with pytest.raises(AlreadyExists, match="grant 'g-1' already exists"):
        engine.apply(msgspec.structs.replace(grant, amount="200"), seq + 1)


def test_retries_repeat_without_an_entry_in_requests_also_after_a_snapshot() -> None:
    world, grant = seeded()
    state = world.engine.state
    assert not any(key.startswith(("customer/", "contract/", "grant/")) for key in state.requests)
    # The customer and the contract restate their requests (defaults left out), and so keep no fingerprint; the
    # grant's request named its start, which the record cannot tell from a default: it keeps its fingerprint.
    assert (state.customers["acme"].request, state.contracts["acme-20260101"].request) == (b"", b"")
    assert fingerprint(restated_request(state.customers["acme"])) == fingerprint(CUSTOMER)
    assert state.accounts["acme"].grants[0].request == fingerprint(grant) != b""
    assert_retries_repeat(world.engine, grant)
    assert_retries_repeat(Engine.from_snapshot(world.engine.encode_snapshot()), grant)


def test_a_record_keeping_its_fingerprint_repeats_its_own_request_only() -> None:
    """A customer made without a name is named after its id: its record restates a request with that name, not
    the one made, so it keeps the made one's fingerprint and the restated request is another request."""
    world, _ = seeded()
    unnamed = cmd.CreateCustomer(EPOCH_MS, ACTOR, "initech", "", {})
    world.apply(unnamed)
    assert world.engine.state.customers["initech"].request == fingerprint(unnamed)
    with pytest.raises(Repeated):
        world.apply(msgspec.structs.replace(unnamed, at_ms=EPOCH_MS + 1))
    with pytest.raises(AlreadyExists, match="customer 'initech' already exists"):
        world.apply(msgspec.structs.replace(unnamed, name="initech"))
    # A grant restating its request (no start, no paid amount) keeps none, and is still told from another.
    plain = cmd.GrantCredits(
        EPOCH_MS, ACTOR, "g-2", "acme", "", GrantKind.PROMOTIONAL, "5.5", "", 0, (), None, None, ""
    )
    world.apply(plain)
    assert world.engine.state.accounts["acme"].grants[-1].request == b""
    with pytest.raises(Repeated):
        world.apply(msgspec.structs.replace(plain, at_ms=EPOCH_MS + 1))
    with pytest.raises(AlreadyExists, match="grant 'g-2' already exists"):
        world.apply(msgspec.structs.replace(plain, amount="5.50"))


def test_a_state_with_its_retry_keys_in_requests_still_recognises_a_retry() -> None:
    world, grant = seeded()
    state = world.engine.state
    earlier = BillingState(
        last_seq=state.last_seq,
        customers={k: msgspec.structs.replace(c, request=b"") for k, c in state.customers.items()},
        products=state.products,
        rate_cards=state.rate_cards,
        contracts={k: msgspec.structs.replace(c, request=b"") for k, c in state.contracts.items()},
        accounts={
            k: msgspec.structs.replace(a, grants=[msgspec.structs.replace(g, request=b"") for g in a.grants])
            for k, a in state.accounts.items()
        },
        audit=state.audit,
        grants_created=state.grants_created,
        requests={
            **state.requests,
            "customer/acme": RequestMark(fingerprint(CUSTOMER)),
            "contract/acme-20260101": RequestMark(fingerprint(CONTRACT)),
            "grant/g-1": RequestMark(fingerprint(grant)),
        },
    )
    assert_retries_repeat(Engine(earlier), grant)


def test_an_unnamed_contract_whose_default_id_is_taken_gets_a_numbered_one_within_the_id_rule() -> None:
    """A customer id of 120 characters: its default contract id is cut to 128 characters with the start's date
    (engine/control.py default_contract_id). Another customer's contract holding that id, the unnamed request takes
    it with ".2" added, still 128 characters, and a third with ".3"; a retry of each finds its own, also after a
    snapshot. This command, stored before `numbered_id_keeps_start`, cuts the id's end (the date's last digits),
    as then."""
    world = basic_world()
    long_id = "x" * 120
    world.customer(long_id)
    world.customer("other")
    taken = default_contract_id(long_id, EPOCH_MS)
    assert len(taken) == 128
    world.contract(taken, customer_id="other", ending_before_ms=EPOCH_MS + 1)
    world.contract(taken[:126] + ".2", customer_id="other", starting_at_ms=EPOCH_MS + 1, ending_before_ms=EPOCH_MS + 2)
    request = cmd.CreateContract(EPOCH_MS, ACTOR, "", long_id, "card", EPOCH_MS, None, OveragePolicy.ALLOW, "1", "")
    made = world.apply(request)
    assert isinstance(made, Contract)
    assert (made.id, len(made.id), made.customer_id) == (taken[:126] + ".3", 128, long_id)
    restored = Engine.from_snapshot(world.engine.encode_snapshot())
    for engine in (world.engine, restored):
        with pytest.raises(Repeated) as repeated:
            engine.apply(request, world.seq + 1)
        assert repeated.value.result is engine.state.contracts[made.id]


def test_a_numbered_contract_id_keeps_the_start_and_a_retry_finds_the_id_an_earlier_release_gave() -> None:
    """With `numbered_id_keeps_start` (every new request) the numbered id cuts the customer id and keeps the start's
    date whole: 120 'x's starting at EPOCH_MS (2026-01-01), default id taken by another customer, is 117 'x's +
    "-20260101.2". A retry (the server marks every request so) finds it, and so does a retry of a request an
    earlier release numbered by cutting the id's end (119 'x's + "-202601.2"): that contract."""
    long_id = "x" * 120
    request = cmd.CreateContract(EPOCH_MS, ACTOR, "", long_id, "card", EPOCH_MS, None, OveragePolicy.ALLOW, "1", "")
    flagged = msgspec.structs.replace(request, numbered_id_keeps_start=True)
    for made_by, expected in ((flagged, "x" * 117 + "-20260101.2"), (request, "x" * 119 + "-202601.2")):
        world = basic_world()
        world.customer(long_id)
        world.customer("other")
        world.contract(default_contract_id(long_id, EPOCH_MS), customer_id="other", ending_before_ms=EPOCH_MS + 1)
        made = world.apply(made_by)
        assert isinstance(made, Contract)
        assert (made.id, len(made.id)) == (expected, 128)
        with pytest.raises(Repeated) as repeated:
            world.engine.apply(msgspec.structs.replace(flagged, at_ms=EPOCH_MS + 5), world.seq + 1)
        assert repeated.value.result is world.engine.state.contracts[expected]
