"""The kernel tables compiled a slice of customers at a time (engine/tables_paced.py) are byte for byte the tables
compiled whole, and a Billing refreshed through `compile_steps` / `load_compiled` holds exactly the kernel that
`refresh_tables` gives.

Hypothesis drives the same random catalogues and steps as tests/test_kernel_incremental.py (customers in and out
of cohorts, contracts, overrides, grants, versions published for a cohort or for everyone, usage between), with a
slice of one or two customers, so every compile crosses slice boundaries.
"""

from __future__ import annotations

import itertools
from decimal import Decimal

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine import commands as cmd
from engine import tables_paced
from engine.billing import Billing, CompiledTables, drain_compile
from engine.contracts import OveragePolicy
from engine.products import Aggregation
from engine.tables import CustomerTables, TableCompiler
from engine.tables_paced import _array_header, compile_all_steps, compile_customers_steps, drain
from tests.engine_fixtures import EPOCH_MS, HOUR_MS, rate
from tests.reference_billing import Curve
from tests.test_kernel_differential import PROFILE, ProductSpec, price_spec, products
from tests.test_kernel_incremental import (
    ACTOR,
    CUSTOMERS,
    UNIT_ONE,
    Machine,
    Step,
    catalogue_commands,
    steps,
)


class PacedMachine(Machine):
    """A Machine refreshed as the server's writer refreshes: the compile step by step, then the one load."""

    def refresh(self) -> None:
        compile_steps = self.billing.compile_steps()
        while True:
            try:
                next(compile_steps)
            except StopIteration as done:
                compiled: CompiledTables | None = done.value
                break
            self.billing.refresh_tables()  # a read between steps: it must neither compile nor load anything
        if compiled is not None:
            self.billing.load_compiled(compiled)


def _compiles_agree(billing: Billing, stale_customers: list[str]) -> None:
    """The stepped compiles give the whole compile's bytes: all tables byte for byte; customers' tables as slices
    that, joined (the first slice's first timeline, every slice's timelines and customers in order), are them."""
    state = billing.engine.state
    whole, stepped = TableCompiler(), TableCompiler()
    assert drain(compile_all_steps(stepped, state)) == whole.compile_all(state)
    if stale_customers:
        expected = whole.compile_customers(state, stale_customers, billing.engine.contracts_of)
        slices = [
            msgspec.msgpack.decode(blob, type=CustomerTables)
            for blob in compile_customers_steps(stepped, state, stale_customers, billing.engine.contracts_of)
        ]
        joined = CustomerTables(
            slices[0].first_timeline,
            [timeline for part in slices for timeline in part.timelines],
            [customer for part in slices for customer in part.customers],
        )
        for before, part in itertools.pairwise(slices):
            assert part.first_timeline == before.first_timeline + len(before.timelines)
        assert msgspec.msgpack.encode(joined) == expected


@PROFILE
@given(st.data(), st.sampled_from([1, 2]))
def test_tables_compiled_in_slices_are_the_bytes_of_a_whole_compile(data: st.DataObject, per_step: int) -> None:
    catalogue = data.draw(products())
    run = data.draw(steps(catalogue))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tables_paced, "CUSTOMERS_PER_STEP", per_step)
        paced, whole = PacedMachine(whole=False), Machine(whole=True)
        for command in catalogue_commands(catalogue):
            assert paced.apply(Step(command)) == whole.apply(Step(command)) is None
        for step in run:
            assert paced.apply(step) == whole.apply(step)
            created = [c for c in CUSTOMERS if c in paced.billing.engine.state.customers]
            _compiles_agree(paced.billing, created)
            assert paced.observed() == whole.observed()


def _billing_with_customers(count: int) -> Billing:
    billing = Billing()
    catalogue = (ProductSpec("p0", "ai", Aggregation.SUM, "a", (), ("model",), UNIT_ONE, None, None),)
    for command in catalogue_commands(catalogue):
        billing.apply(command, billing.last_seq + 1)
    for index in range(count):
        customer = f"c{index:03d}"
        billing.apply(cmd.CreateCustomer(EPOCH_MS, ACTOR, customer, customer, {}), billing.last_seq + 1)
    return billing


def test_a_read_during_a_refresh_in_steps_finishes_it_and_sees_every_customer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_paced, "CUSTOMERS_PER_STEP", 1)
    billing = _billing_with_customers(3)
    billing.refresh_tables()
    for customer in ("late-a", "late-b"):
        billing.apply(cmd.CreateCustomer(EPOCH_MS, ACTOR, customer, customer, {}), billing.last_seq + 1)
    compile_steps = billing.compile_steps()
    next(compile_steps)  # late-a compiled and loaded
    assert billing.kernel.balance("late-a", EPOCH_MS) is not None
    assert billing.kernel.balance("late-b", EPOCH_MS) is None
    billing.refresh_tables()  # a read: every acknowledged customer must be there
    assert billing.kernel.balance("late-b", EPOCH_MS) is not None
    assert drain_compile(compile_steps) is None  # the writer's steps find the refresh done
    assert drain_compile(billing.compile_steps()) is None  # nothing stale any more


def test_a_read_during_an_unacknowledged_refresh_prices_with_the_tables_loaded_before_until_the_load() -> None:
    billing = _billing_with_customers(3)
    contract = cmd.CreateContract(
        EPOCH_MS, ACTOR, "k-c000", "c000", "card", EPOCH_MS, None, OveragePolicy.ALLOW, "1", ""
    )
    billing.apply(contract, billing.last_seq + 1)
    now_ms = EPOCH_MS + HOUR_MS

    def cost() -> Decimal:
        return Decimal(billing.estimate("c000", "ai", {"model": "m1"}, {"a": 3.0}, now_ms).cost)

    before = cost()
    # A new product with it: the whole tables are compiled (a publish alone appends its version in one step).
    other = cmd.CreateProduct(EPOCH_MS, ACTOR, "p9", "p9", "other", Aggregation.SUM, "a", {}, (), "u")
    billing.apply(other, billing.last_seq + 1)
    doubled = (rate("p0", price_spec(Curve("UNIT", price=Decimal(2), per_units=Decimal(1)))),)
    billing.apply(cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), doubled, (), ""), billing.last_seq + 1)
    billing.apply(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 2, EPOCH_MS), billing.last_seq + 1)
    compile_steps = billing.compile_steps(unacknowledged=True)
    next(compile_steps)
    assert cost() == before  # the read neither waits for nor finishes the publish's tables
    compiled = drain_compile(compile_steps)
    assert compiled is not None
    assert cost() == before
    billing.load_compiled(compiled)
    assert before > 0 and cost() == 2 * before


def test_a_paced_refresh_abandoned_half_way_lets_the_next_refresh_compile() -> None:
    billing = _billing_with_customers(3)
    compile_steps = billing.compile_steps()
    next(compile_steps)
    compile_steps.close()  # the writer stopped: GeneratorExit inside the compile
    billing.refresh_tables()
    assert billing.kernel.balance("c002", EPOCH_MS) is not None


@pytest.mark.parametrize("count", [0, 1, 15, 16, 65_535, 65_536])
def test_the_spliced_customer_array_header_decodes_as_that_many_entries(count: int) -> None:
    assert msgspec.msgpack.decode(_array_header(count) + b"\xc0" * count) == [None] * count


def test_compiles_of_more_customers_than_a_step_holds_are_identical() -> None:
    billing = _billing_with_customers(3 * tables_paced.CUSTOMERS_PER_STEP + 5)
    state = billing.engine.state
    _compiles_agree(billing, sorted(state.customers))
    compile_steps = compile_all_steps(TableCompiler(), state)
    paused = 0
    with pytest.raises(StopIteration):
        while True:
            next(compile_steps)
            paused += 1
    assert paused == 4
