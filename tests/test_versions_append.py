"""A publish appends its version to the kernel's tables (Kernel.append_version, engine/kernel/src/append.rs)
rather than loading the whole tables again, and the kernel it leaves is exactly the one a whole load gives.

Hypothesis drives random catalogues and steps (customers in and out of cohorts, contracts, overrides, grants,
usage, versions published to everyone or to a cohort by attribute or by ids, some effective before usage already
rated, rollbacks). Two machines apply the same steps: one refreshes its tables as the server does (a publish
appended), the other loads the whole tables at every refresh. Every contract's timeline as the kernel resolves
it, every ack, balance and Authorize answer and the kernel's state bytes must be the same; the appending
machine must never have loaded the whole tables after the first load; and no publish may add a timeline that no
contract names (a cohort's version goes only into the timelines its members name, in place when only they name
one).
"""

from __future__ import annotations

from typing import cast

import msgspec
import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from engine import commands as cmd
from engine._kernel import Kernel
from engine.billing import Billing
from engine.contracts import OveragePolicy
from engine.products import Aggregation
from engine.ratecard import Cohort
from engine.tables import TableCompiler, VersionAppend
from tests.engine_fixtures import EPOCH_MS
from tests.test_kernel_differential import DAY_MS, PROFILE, ProductSpec, products
from tests.test_kernel_incremental import (
    ACTOR,
    CUSTOMERS,
    UNIT_ONE,
    CountingKernel,
    Machine,
    Step,
    catalogue_commands,
    steps,
)

COHORTS = (
    None,
    Cohort(attributes={"tier": "gold"}),
    Cohort(attributes={"tier": "silver"}),
    Cohort(customer_ids=("acme", "c2")),
)


def _with_cohorts_and_rollbacks(data: st.DataObject, run: list[Step]) -> list[Step]:
    """The steps with each publish for a drawn cohort (given by the command, as the API gives it), and now and then
    a rollback to version 1 after one."""
    out: list[Step] = []
    for step in run:
        command = step.command
        if isinstance(command, cmd.PublishVersion):
            cohort = data.draw(st.sampled_from(COHORTS))
            if cohort is not None and cohort.customer_ids:
                # A cohort by ids names customers that exist (else the publish is refused: also worth a step).
                cohort = Cohort(customer_ids=tuple(sorted(c for c in cohort.customer_ids if data.draw(st.booleans()))))
            command = cmd.PublishVersion(
                command.at_ms, ACTOR, command.rate_card_id, command.version, command.effective_from_ms, cohort
            )
            out.append(Step(command))
            if data.draw(st.booleans()):
                effective = EPOCH_MS + data.draw(st.integers(0, 40)) * DAY_MS
                out.append(Step(cmd.RollbackRateCard(EPOCH_MS, ACTOR, "card", 1, effective)))
        else:
            out.append(step)
    return out


class AppendingMachine(Machine):
    """A Machine that applies a cohort as the command gives it (Machine's own way sets it on the version)."""

    def apply(self, step: Step) -> object:
        return super().apply(Step(step.command, None, step.batch))


def _timelines(machine: Machine) -> list[object]:
    return [machine.billing.kernel.contract_timelines(customer) for customer in CUSTOMERS]


@PROFILE
@given(st.data())
def test_appended_versions_give_the_kernel_a_whole_load_gives(data: st.DataObject) -> None:
    catalogue = data.draw(products())
    run = _with_cohorts_and_rollbacks(data, data.draw(steps(catalogue)))
    counting = CountingKernel()
    appending, whole = AppendingMachine(whole=False), AppendingMachine(whole=True)
    appending.billing = Billing(kernel=cast(Kernel, counting))
    for command in catalogue_commands(catalogue):
        assert appending.apply(Step(command)) == whole.apply(Step(command)) is None
    whole_loads = counting.whole_loads  # one per product created
    for step in run:
        unused = appending.billing._compiler.unused_timelines
        outcome = appending.apply(step)
        if isinstance(step.command, cmd.PublishVersion | cmd.RollbackRateCard):
            event(f"{type(step.command).__name__}: {outcome or 'applied'}")
            # A cohort's version is inserted only into timelines its members name, in place when only they do:
            # no copy of a timeline no member names, no timeline left to nobody.
            assert appending.billing._compiler.unused_timelines <= unused
        assert outcome == whole.apply(step)
        assert _timelines(appending) == _timelines(whole)
        assert appending.observed() == whole.observed()
    assert counting.whole_loads == whole_loads  # every publish since appended


def _billing_with_customers() -> Billing:
    billing = Billing()
    catalogue = (ProductSpec("p0", "ai", Aggregation.SUM, "a", (), (), UNIT_ONE, None, None),)
    for command in catalogue_commands(catalogue):
        billing.apply(command, billing.last_seq + 1)
    for customer in ("acme", "c1"):
        billing.apply(cmd.CreateCustomer(EPOCH_MS, ACTOR, customer, customer, {}), billing.last_seq + 1)
        contract = cmd.CreateContract(
            EPOCH_MS, ACTOR, f"k-{customer}", customer, "card", EPOCH_MS, None, OveragePolicy.ALLOW, "1", ""
        )
        billing.apply(contract, billing.last_seq + 1)
    billing.refresh_tables()
    billing.apply(cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 1, {}, (), (), (), ""), billing.last_seq + 1)
    return billing


def test_an_append_compiled_against_other_tables_is_refused_and_changes_nothing() -> None:
    billing = _billing_with_customers()
    before = billing.kernel.snapshot()
    timelines = billing.kernel.contract_timelines("acme")
    billing.engine.apply(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 2, EPOCH_MS + DAY_MS), billing.last_seq + 1)
    compiler = TableCompiler()
    compiler.compile_all(billing.engine.state)  # after the publish: its indexes already hold version 2
    prepared = compiler.prepare_append(billing.engine.state, "card", 2)
    stale = msgspec.msgpack.decode(prepared.encoded, type=VersionAppend)
    with pytest.raises(ValueError, match="load the whole tables"):
        billing.kernel.append_version(prepared.encoded)
    for bad in (
        msgspec.structs.replace(stale, versions_held=1, timelines_held=1, in_place=[7]),
        msgspec.structs.replace(stale, versions_held=1, timelines_held=1, split=[0], members=["nobody"]),
    ):
        with pytest.raises(ValueError):
            billing.kernel.append_version(msgspec.msgpack.encode(bad))
    assert billing.kernel.snapshot() == before
    assert billing.kernel.contract_timelines("acme") == timelines


def test_a_publish_for_a_cohort_moves_its_members_only() -> None:
    billing = _billing_with_customers()
    publish = cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 2, EPOCH_MS + DAY_MS, Cohort(customer_ids=("acme",)))
    billing.apply(publish, billing.last_seq + 1)
    billing.refresh_tables()
    first = (EPOCH_MS, "card", 1)
    assert billing.kernel.contract_timelines("acme") == [[first, (EPOCH_MS + DAY_MS, "card", 2)]]
    assert billing.kernel.contract_timelines("c1") == [[first]]
    assert billing.kernel.contract_timelines("nobody") is None


def test_a_cohort_version_goes_in_place_into_a_timeline_only_its_members_name() -> None:
    billing = _billing_with_customers()
    pilot = Cohort(customer_ids=("acme",))
    billing.apply(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 2, EPOCH_MS + DAY_MS, pilot), billing.last_seq + 1)
    billing.refresh_tables()
    compiler = billing._compiler
    assert (compiler.timelines_held, compiler.unused_timelines) == (2, 0)  # acme moved to a copy, c1 stayed
    billing.apply(cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 2, {}, (), (), (), ""), billing.last_seq + 1)
    publish = cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 3, EPOCH_MS + 2 * DAY_MS, pilot)
    billing.apply(publish, billing.last_seq + 1)
    billing.refresh_tables()
    # acme alone names its timeline: version 3 goes in place, no copy, nothing left behind.
    assert (compiler.timelines_held, compiler.unused_timelines) == (2, 0)
    first = (EPOCH_MS, "card", 1)
    pilot_timeline = [first, (EPOCH_MS + DAY_MS, "card", 2), (EPOCH_MS + 2 * DAY_MS, "card", 3)]
    assert billing.kernel.contract_timelines("acme") == [pilot_timeline]
    assert billing.kernel.contract_timelines("c1") == [[first]]
    # A cohort naming nobody with a contract of the card touches no timeline.
    billing.apply(cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 3, {}, (), (), (), ""), billing.last_seq + 1)
    nobody = Cohort(attributes={"tier": "none"})
    billing.apply(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 4, EPOCH_MS, nobody), billing.last_seq + 1)
    billing.refresh_tables()
    assert (compiler.timelines_held, compiler.unused_timelines) == (2, 0)
    assert billing.kernel.contract_timelines("acme") == [pilot_timeline]
