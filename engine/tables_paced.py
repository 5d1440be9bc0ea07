"""The kernel's tables compiled a slice of customers at a time, so that a caller on an event loop can pause
between slices (at 10,000 customers a whole compile is 100-200 ms of Python holding the GIL).

`compile_all_steps` yields after every CUSTOMERS_PER_STEP customers and returns the bytes of
TableCompiler.compile_all (the customers are encoded a slice at a time and spliced behind the rest, so no single
msgspec call encodes them all); `compile_customers_steps` yields compile_customers' tables as one CustomerTables
per slice, which the kernel loads in turn (tests/test_tables_paced.py holds both to the whole compile);
`cohort_members_steps` finds a cohort's members for a published version's append. Between
steps the caller must apply no command (the server's writer awaits the whole refresh).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Generator, Iterable, Iterator, Sequence
from typing import TypeVar

import msgspec

from engine import cohorts
from engine.contracts import Contract
from engine.control import BillingState
from engine.ratecard import Cohort
from engine.tables import CustomerTable, CustomerTables, TableCompiler, Tables

# Well under 1 ms of Python per step here (about 7 µs a customer at 10,000 customers, more on a busy machine):
# the caller pauses once a millisecond has passed, so a small step costs nothing.
CUSTOMERS_PER_STEP = 32
CONTRACTS_PER_STEP = 4096
MEMBERS_PER_STEP = 1024  # a cohort's membership, about 1 µs a customer

# Returns the tables' bytes in parts, to join where the join may take its time (bytes.join releases the GIL
# past a megabyte, but not the thread that runs it).
Steps = Generator[None, None, list[bytes]]
Result = TypeVar("Result")

_encoder = msgspec.msgpack.Encoder()
_EMPTY_ARRAY = b"\x90"


def compile_all_steps(compiler: TableCompiler, state: BillingState) -> Steps:
    """`compiler.compile_all(state)`, a slice of customers per step, in parts."""
    products, versions = compiler.shared_tables(state)
    contracts_by_customer: dict[str, list[Contract]] = {}
    contracts = list(state.contracts.values())
    for start in range(0, len(contracts), CONTRACTS_PER_STEP):  # grouped once, as compile_all does
        for contract in contracts[start : start + CONTRACTS_PER_STEP]:
            contracts_by_customer.setdefault(contract.customer_id, []).append(contract)
        yield
    timelines: list[list[tuple[int, int]]] = []
    encoded: list[bytes] = []
    customers = list(state.customers.values())
    for start in range(0, len(customers), CUSTOMERS_PER_STEP):
        yield
        for customer in customers[start : start + CUSTOMERS_PER_STEP]:
            table = compiler.customer_table(state, customer, contracts_by_customer.get(customer.id, ()), timelines)
            encoded.append(_encoder.encode(table))
    head = Tables(compiler.future_skew_ms, compiler.dedupe_window_ms, products, versions, timelines, [])
    return _with_customers(_encoder.encode(head), encoded)


def compile_customers_steps(
    compiler: TableCompiler,
    state: BillingState,
    customer_ids: Iterable[str],
    contracts_of: Callable[[str], Sequence[Contract]],
) -> Iterator[bytes]:
    """`compiler.compile_customers(state, customer_ids, contracts_of)` as one CustomerTables per slice, for
    Kernel.load_customers in turn: each slice follows the timelines of those before it, so loading them in order
    gives the kernel loading the whole gives."""
    ordered = sorted(customer_ids)
    for start in range(0, len(ordered), CUSTOMERS_PER_STEP):
        first_timeline = compiler.timelines_held
        timelines: list[list[tuple[int, int]]] = []
        customers: list[CustomerTable] = [
            compiler.customer_table(state, state.customers[customer_id], contracts_of(customer_id), timelines)
            for customer_id in ordered[start : start + CUSTOMERS_PER_STEP]
        ]
        yield _encoder.encode(CustomerTables(first_timeline, timelines, customers))


def cohort_members_steps(
    cohort: Cohort | None, state: BillingState, leave_out: Collection[str]
) -> Generator[None, None, list[str]]:
    """The customers of `state` (but `leave_out`) the cohort holds, a slice at a time (those a cohort's version
    moves to new timelines, TableCompiler.prepare_append): its ids when it names some (a member must be one), else
    every customer looked at."""
    if cohort is None:
        return []
    candidates = list(cohort.customer_ids) if cohort.customer_ids else list(state.customers)
    found: list[str] = []
    for start in range(0, len(candidates), MEMBERS_PER_STEP):
        yield
        for customer_id in candidates[start : start + MEMBERS_PER_STEP]:
            customer = state.customers.get(customer_id)
            if customer is not None and customer_id not in leave_out and cohorts.contains(cohort, customer):
                found.append(customer_id)
    return found


def _with_customers(head: bytes, customers: list[bytes]) -> list[bytes]:
    """`head` (a struct whose last field, `customers`, was encoded empty) with those customers in that field, in
    parts. msgspec encodes a struct's fields in their declared order, so the empty array is the last byte."""
    assert head.endswith(_EMPTY_ARRAY), "customers must be the tables' last field"
    return [head[:-1], _array_header(len(customers)), *customers]


def _array_header(length: int) -> bytes:
    if length < 16:
        return bytes([0x90 | length])
    if length < 1 << 16:
        return b"\xdc" + length.to_bytes(2, "big")
    return b"\xdd" + length.to_bytes(4, "big")


def drain(steps: Steps) -> bytes:
    """Runs the steps without pausing: their bytes, joined."""
    return b"".join(run_steps(steps))


def run_steps(steps: Generator[None, None, Result]) -> Result:
    """Runs work made of steps (for a caller that pauses between them) without pausing: what it returns."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: Result = done.value
            return result
