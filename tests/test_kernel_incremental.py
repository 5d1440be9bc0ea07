"""Incremental kernel tables: loading only the customers a command touched gives exactly the kernel a whole
recompile gives.

Hypothesis generates a catalogue and then a run of steps: customers (in and out of a cohort), contracts,
overrides, grants, newly published versions (some for a cohort only, so a customer compiled later needs a
timeline the kernel does not hold yet) and usage batches between them. Two machines apply the same steps;
one refreshes its tables as the server does (a customer's command recompiles that customer only), the other
recompiles the whole tables every time. Every ack, balance, Authorize answer and the kernel's state bytes must
be the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import cast

import msgspec
import pytest
from hypothesis import event, given
from hypothesis import strategies as st
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine._kernel import Kernel
from engine.billing import Billing
from engine.contracts import OveragePolicy, Override
from engine.errors import EngineError, Repeated
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import Cohort
from engine.tables import CustomerTable, CustomerTables, GrantTable
from tests.engine_fixtures import EPOCH_MS, HOUR_MS, rate
from tests.reference_billing import Curve
from tests.test_kernel_differential import (
    DAY_MS,
    PROFILE,
    ProductSpec,
    curves,
    decimals,
    events,
    price_spec,
    products,
    wire_event,
)

CUSTOMERS = ("acme", "c1", "c2", "c3")
ACTOR = "test"
PROBE_MS = EPOCH_MS + 50 * DAY_MS
UNIT_ONE = Curve("UNIT", price=Decimal(1), per_units=Decimal(1))


@dataclass(frozen=True)
class Step:
    command: cmd.AdminCommand | None  # None: a usage batch
    cohort: str | None = None  # for a PublishVersion: the tier its version is for
    batch: tuple[usage_pb2.UsageEvent, ...] = ()


@st.composite
def steps(draw: st.DrawFn, catalogue: tuple[ProductSpec, ...]) -> list[Step]:
    """Mostly commands that apply (a contract for a customer that exists, ...), now and then one refused."""
    ids = [p.id for p in catalogue]
    created: list[str] = []
    contracted: list[str] = []
    out: list[Step] = []
    versions = 1
    for n in range(draw(st.integers(1, 16))):
        kinds = ["customer"] if len(created) < len(CUSTOMERS) else []
        kinds += ["contract", "grant", "batch", "batch"] if created else []
        kinds += ["override", "override", "grant", "version"] if contracted else []
        kind = draw(st.sampled_from(kinds))
        pool = {"customer": [c for c in CUSTOMERS if c not in created], "override": contracted}.get(kind, created)
        customer = draw(st.sampled_from(pool) | st.sampled_from(CUSTOMERS)) if kind != "batch" else ""
        if kind == "customer":
            created.append(customer)
            tier = draw(st.sampled_from(["gold", "silver"]))
            out.append(Step(cmd.CreateCustomer(EPOCH_MS, ACTOR, customer, customer, {"tier": tier})))
        elif kind == "contract":
            contracted.append(customer)
            policy = draw(st.sampled_from(list(OveragePolicy)))
            start = EPOCH_MS + draw(st.sampled_from([0, 0, 5 * DAY_MS]))
            out.append(
                Step(
                    cmd.CreateContract(
                        EPOCH_MS, ACTOR, f"k-{customer}", customer, "card", start, None, policy, "1.5", "USD"
                    )
                )
            )
        elif kind == "grant":
            amount = str(draw(decimals(1, 300, 2)))
            applicable = tuple(sorted(draw(st.sets(st.sampled_from(ids), max_size=2))))
            grant = cmd.GrantCredits(
                EPOCH_MS, ACTOR, f"g{n}", customer, "", GrantKind.PREPAID, amount, "0",
                draw(st.integers(0, 2)), applicable, EPOCH_MS, None, "",
            )  # fmt: skip
            out.append(Step(grant))
        elif kind == "override":
            product = draw(st.sampled_from(ids))
            value = str(draw(decimals(0, 3, 4)))
            override = Override(f"o{n}", product, {}, value, None, EPOCH_MS + draw(st.sampled_from([0, DAY_MS])), None)
            out.append(Step(cmd.AddOverride(EPOCH_MS, ACTOR, f"k-{customer}", override)))
        elif kind == "version":
            versions += 1
            rates = tuple(rate(p.id, price_spec(draw(curves()))) for p in catalogue)
            draft = cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), rates, (), "")
            out.append(Step(draft))
            effective = EPOCH_MS + draw(st.integers(1, 40)) * DAY_MS
            cohort = draw(st.sampled_from([None, "gold", "silver"]))
            out.append(Step(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", versions, effective), cohort=cohort))
        else:
            raw = [draw(events(i)) for i in range(draw(st.integers(1, 6)))]
            batch = [wire_event(e) for e in raw]
            for event_ in batch:
                event_.customer_id = draw(st.sampled_from(contracted or CUSTOMERS) | st.sampled_from(CUSTOMERS))  # type: ignore[attr-defined]
            out.append(Step(None, batch=tuple(cast(list[usage_pb2.UsageEvent], batch))))
    return out


def catalogue_commands(catalogue: tuple[ProductSpec, ...]) -> list[cmd.AdminCommand]:
    commands: list[cmd.AdminCommand] = [
        cmd.CreateProduct(
            EPOCH_MS, ACTOR, p.id, p.id, p.event_type, p.aggregation, p.value_key, dict(p.filters), p.dimensions, "u"
        )
        for p in catalogue
    ]
    commands.append(cmd.CreateRateCard(EPOCH_MS, ACTOR, "card", "card", "credits"))
    rates = tuple(rate(p.id, price_spec(p.curve)) for p in catalogue)
    commands.append(cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), rates, (), ""))
    commands.append(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 1, EPOCH_MS))
    return commands


class Machine:
    """A Billing driven step by step; `whole` recompiles the whole tables at every refresh."""

    def __init__(self, *, whole: bool) -> None:
        self.billing = Billing()
        self.whole = whole
        self.batches = 0

    def refresh(self) -> None:
        self.billing.refresh_tables(whole=self.whole)

    def apply(self, step: Step) -> object:
        if step.command is None:
            self.refresh()
            self.batches += 1
            batch = usage_pb2.UsageBatch(batch_id=f"b{self.batches}", events=list(step.batch))
            received_ms = max(event.timestamp_ms for event in step.batch)
            done = self.billing.ingest(batch.SerializeToString(), received_ms)
            return (done.ack, done.digest)
        if isinstance(step.command, cmd.PublishVersion) and step.cohort is not None:
            card = self.billing.engine.state.rate_cards["card"]
            card.version(step.command.version).cohort = Cohort(attributes={"tier": step.cohort})
        try:
            self.billing.apply(step.command, self.billing.last_seq + 1)
        except (EngineError, Repeated) as refused:
            return type(refused).__name__
        self.refresh()
        return None

    def observed(self) -> list[object]:
        kernel = self.billing.kernel
        seen: list[object] = [kernel.snapshot()]
        for customer in CUSTOMERS:
            seen.append(kernel.balance(customer, PROBE_MS))
            for model in ("m1", "m2"):
                for event_type in ("ai", "io"):
                    values = [("a", 3.0), ("b", 7.5)]
                    seen.append(kernel.authorize(customer, event_type, [("model", model)], values, PROBE_MS))
        return seen


@PROFILE
@given(st.data())
def test_incremental_tables_give_the_kernel_a_whole_compile_gives(data: st.DataObject) -> None:
    catalogue = data.draw(products())
    run = data.draw(steps(catalogue))
    incremental, whole = Machine(whole=False), Machine(whole=True)
    for command in catalogue_commands(catalogue):
        assert incremental.apply(Step(command)) == whole.apply(Step(command)) is None
    for step in run:
        outcome = incremental.apply(step)
        if isinstance(outcome, tuple):
            event(f"batch: {'some' if usage_pb2.IngestAck.FromString(outcome[0]).accepted else 'no'} events accepted")
        else:
            event(f"{type(step.command).__name__}: {outcome or 'applied'}")
        assert outcome == whole.apply(step)
        assert incremental.observed() == whole.observed()


class CountingKernel:
    """A Kernel that counts how its tables are loaded."""

    def __init__(self) -> None:
        self.kernel = Kernel()
        self.whole_loads = 0
        self.customer_loads: list[list[str]] = []

    def __getattr__(self, name: str) -> object:
        return getattr(self.kernel, name)

    def load_tables(self, tables: bytes) -> None:
        self.whole_loads += 1
        self.kernel.load_tables(tables)

    def load_customers(self, customers: bytes) -> None:
        self.customer_loads.append([c.id for c in msgspec.msgpack.decode(customers, type=CustomerTables).customers])
        self.kernel.load_customers(customers)


def test_a_customer_command_recompiles_that_customer_a_publish_appends_its_version_a_draft_nothing() -> None:
    counting = CountingKernel()
    billing = Billing(kernel=cast(Kernel, counting))
    catalogue = (ProductSpec("p0", "ai", Aggregation.SUM, "a", (), ("model",), UNIT_ONE, None, None),)
    for command in catalogue_commands(catalogue):
        billing.apply(command, billing.last_seq + 1)
    billing.refresh_tables()
    assert counting.whole_loads == 1
    for customer in ("acme", "c1"):
        billing.apply(cmd.CreateCustomer(EPOCH_MS, ACTOR, customer, customer, {}), billing.last_seq + 1)
    contract = cmd.CreateContract(
        EPOCH_MS, ACTOR, "k-acme", "acme", "card", EPOCH_MS, None, OveragePolicy.ALLOW, "1", ""
    )
    billing.apply(contract, billing.last_seq + 1)
    billing.refresh_tables()
    billing.refresh_tables()  # nothing changed since: nothing loaded
    assert (counting.whole_loads, counting.customer_loads) == (1, [["acme", "c1"]])
    billing.apply(cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 1, {}, (), (), (), ""), billing.last_seq + 1)
    billing.refresh_tables()  # a draft is in no table: nothing loaded
    assert (counting.whole_loads, len(counting.customer_loads)) == (1, 1)
    billing.apply(cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 2, EPOCH_MS + HOUR_MS), billing.last_seq + 1)
    billing.refresh_tables()  # appended (Kernel.append_version): no whole load, no customer compiled
    assert (counting.whole_loads, len(counting.customer_loads)) == (1, 1)
    assert billing.kernel.contract_timelines("acme") == [[(EPOCH_MS, "card", 1), (EPOCH_MS + HOUR_MS, "card", 2)]]


def test_customer_tables_compiled_against_other_tables_are_refused_and_change_nothing() -> None:
    billing = Billing()
    catalogue = (ProductSpec("p0", "ai", Aggregation.SUM, "a", (), (), UNIT_ONE, None, None),)
    for command in catalogue_commands(catalogue):
        billing.apply(command, billing.last_seq + 1)
    billing.apply(cmd.CreateCustomer(EPOCH_MS, ACTOR, "acme", "acme", {}), billing.last_seq + 1)
    contract = cmd.CreateContract(
        EPOCH_MS, ACTOR, "k-acme", "acme", "card", EPOCH_MS, None, OveragePolicy.ALLOW, "1", ""
    )
    billing.apply(contract, billing.last_seq + 1)
    billing.refresh_tables()
    before = billing.kernel.snapshot()
    # acme with a new grant, which the kernel would hold had it taken the tables.
    grant = GrantTable("g-new", "1000000000000", 0, [], EPOCH_MS, None, 1)
    stale = CustomerTables(first_timeline=5, timelines=[], customers=[CustomerTable("acme", [], [grant], [])])
    with pytest.raises(ValueError, match="follow 5 timelines, the kernel holds 1"):
        billing.kernel.load_customers(msgspec.msgpack.encode(stale))
    assert billing.kernel.snapshot() == before
    balance = billing.kernel.balance("acme", EPOCH_MS + HOUR_MS)
    assert balance is not None and balance["grants"] == [] and balance["period"] is not None  # its contract kept
