"""ExplainLineItem's rules, sans-I/O: which periods exist, which lines a period has, and each event's figures.

A customer's billing periods are the monthly calendar of its contracts (engine/contracts.py, computed the same
way as the rating kernel: its `period_containing`); a line is one product and combination of pricing-dimension values with
usage in the period (engine/lines.py names it). The events behind a line come from the explain index
(server/explain_index.py); here they become the figures the wire shows.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from engine._kernel import period_containing
from engine.contracts import Contract
from engine.errors import InvalidArgument, NotFound
from engine.instants import check_instant, iso
from engine.invoices import HOUR_MS, KernelAdjustment, LineAdjustment, contract_hours_end
from engine.lines import line_id
from engine.money import round_ratio
from engine.state import Engine

QUANTITY_SCALE = 10**18
PICOS_PER_UNIT = 10**12


def period_starting(engine: Engine, customer_id: str, start_ms: int) -> tuple[int, int] | None:
    """(start, end) of the customer's billing period starting at start_ms (the kernel's calendar), None when no
    contract of the customer has a period starting then."""
    found = contract_period_starting(engine, customer_id, start_ms)
    return None if found is None else found[1]


def contract_period_starting(
    engine: Engine, customer_id: str, start_ms: int
) -> tuple[Contract, tuple[int, int]] | None:
    """The contract with a billing period starting at start_ms, and that period's (start, end); None if none."""
    for contract in engine.contracts_of(customer_id):  # the state's index: a scan of every contract was a page's cost
        if not contract.covers(start_ms):
            continue
        period = period_containing(contract.starting_at_ms, start_ms)
        if period[0] == start_ms:
            return contract, period
    return None


def is_period_start(engine: Engine, customer_id: str, start_ms: int) -> bool:
    """Whether one of the customer's contracts has a billing period starting at start_ms."""
    return period_starting(engine, customer_id, start_ms) is not None


@dataclass(frozen=True, slots=True)
class Line:
    """A line's figures from the kernel's period aggregate."""

    line_id: str
    product_id: str
    dimensions: dict[str, str]
    quantity_e18: int
    events: int
    amount_picos: int


def period_lines(engine: Engine, usage: object, period_start_ms: int) -> dict[str, Line]:
    """The lines of one period from `Kernel.usage(customer)`'s aggregates, by line id."""
    lines: dict[str, Line] = {}
    if usage is None:
        return lines
    aggregates = usage[0]  # type: ignore[index]
    products = engine.state.products
    for start, product_id, values, quantity, events, amount, _overage, _drawn in aggregates:
        if start != period_start_ms:
            continue
        product = products.get(product_id)
        keys = product.pricing_dimensions if product is not None else []
        dimensions = dict(zip(keys, values, strict=False))
        line = line_id(product_id, dimensions)
        lines[line] = Line(line, product_id, dimensions, quantity, events, amount)
    return lines


def line_adjustments(
    engine: Engine,
    customer_id: str,
    period_start_ms: int,
    line: Line,
    adjustments: Sequence[KernelAdjustment] | None = None,
) -> list[LineAdjustment]:
    """One line's re-rating adjustments as the period's invoice shows them (the final invoice's once the period is
    closed), without building the invoice: the kernel's adjustments of the line's buckets whose hour starts in
    the period and before the contract's end, in the kernel's order (engine/invoices.py's build_invoice gives
    each line the same). `adjustments`: the kernel's of the customer, read with the line (Kernel.usage_adjusted);
    None reads them now."""
    number = engine.state.accounts[customer_id].invoices.get(period_start_ms)
    if number is not None:
        final = engine.state.invoices[number].lines
        return next((found.adjustments for found in final if found.line_id == line.line_id), [])
    located = contract_period_starting(engine, customer_id, period_start_ms)
    reader = engine.period_adjustments
    if located is None or reader is None:
        return []
    contract, (start_ms, period_end_ms) = located
    end_ms = contract_hours_end(contract, period_end_ms)  # as the invoice lists them (engine/invoices.py)
    product = engine.state.products.get(line.product_id)
    keys = product.pricing_dimensions if product is not None else ()
    found: list[LineAdjustment] = []
    kernel_adjustments = reader(customer_id) if adjustments is None else adjustments
    for (
        seq,
        hour,
        product_id,
        values,
        card,
        old_versions,
        new_version,
        quantity,
        events,
        old,
        new,
    ) in kernel_adjustments:
        hour_start_ms = hour * HOUR_MS
        if (
            product_id == line.product_id
            and start_ms <= hour_start_ms < end_ms
            and line_id(product_id, dict(zip(keys, values, strict=False))) == line.line_id
        ):
            found.append(
                LineAdjustment(seq, hour_start_ms, card, list(old_versions), new_version, quantity, events, old, new)
            )
    return found


def check_request(engine: Engine, customer_id: str, period_start_ms: int | None, line: str) -> None:
    """INVALID_ARGUMENT or NOT_FOUND for a request that cannot name a line (before any line is looked up)."""
    if not customer_id:
        raise InvalidArgument.field("customer_id", "is required")
    if customer_id not in engine.state.customers:
        raise NotFound(f"customer {customer_id!r} does not exist")
    if not line:
        raise InvalidArgument.field("line_id", "is required")
    if period_start_ms is None:
        raise InvalidArgument.field("period_start", "is required: the start of the billing period of the line")
    check_instant(period_start_ms, "period_start")
    if not is_period_start(engine, customer_id, period_start_ms):
        raise InvalidArgument.field(
            "period_start",
            f"{iso(period_start_ms)} is not the start of a billing period of customer {customer_id!r}",
        )


def unit_price_picos(amount_picos: int, quantity_e18: int) -> int | None:
    """The event's effective unit price (amount / quantity, per unit of the product), rounded half-even to the
    pico; None when the event added no quantity (a MAX or UNIQUE_COUNT event that moved nothing)."""
    if quantity_e18 == 0:
        return None
    sign = -1 if quantity_e18 < 0 else 1
    return round_ratio(sign * amount_picos * QUANTITY_SCALE, abs(quantity_e18))
