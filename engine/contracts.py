"""Customers and their contracts: which rate card prices them, when, and in which monthly periods.

Billing periods are calendar months anchored on the contract's `starting_at` (UTC): period k runs from the
anchor plus k months to the anchor plus k+1 months, a day past a month's end clamped to its last day
(anchored on Jan 31: Feb 28, Mar 31, ...). Each boundary is computed from the anchor, never chained, so
clamping does not drift. The rating kernel computes them (engine/kernel/src/route.rs); `Period` is how a
balance names one.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import msgspec


class OveragePolicy(enum.StrEnum):
    ALLOW = "ALLOW"
    BLOCK = "BLOCK"


class Customer(msgspec.Struct, frozen=True, gc=False):
    id: str
    name: str
    attributes: dict[str, str]
    created_at_ms: int
    # The fingerprint of the CreateCustomer that made it: its retry key, held here rather than as an entry of
    # BillingState.requests (one per customer, contract and grant: most of the control plane's memory). Empty
    # when the request is the one the record restates (engine/control.py restated_request), as most are.
    request: bytes = b""


class Override(msgspec.Struct, frozen=True, omit_defaults=True):
    """A contract's own price for a product (and match): a multiplier on the rate card's price, or a unit price.
    `multiplier_reduced`: its AddOverride's (engine/commands.py), kept with it for the kernel's tables; left out
    when stored while False, so snapshots of overrides added before it are as they were."""

    id: str
    product_id: str
    match: dict[str, str]  # normalized: no "*" values
    multiplier: str | None
    price: str | None
    starting_at_ms: int
    ending_before_ms: int | None
    multiplier_reduced: bool = False


class TopUpPolicy(msgspec.Struct, frozen=True):
    threshold: str
    recharge_to: str
    price_per_credit: str
    max_per_period: int


class Contract(msgspec.Struct, gc=False):
    id: str
    customer_id: str
    rate_card_id: str
    starting_at_ms: int
    ending_before_ms: int | None
    overage_policy: OveragePolicy
    overage_price: str
    currency: str
    created_at_ms: int
    # A tuple, not a list: most contracts have none, and the empty tuple is one shared object where an empty list
    # is 56 bytes per contract. Encoded the same (an array).
    overrides: tuple[Override, ...] = ()
    top_up: TopUpPolicy | None = None
    request: bytes = b""  # the CreateContract's fingerprint (its retry key, as Customer.request)

    def covers(self, ts_ms: int) -> bool:
        return self.starting_at_ms <= ts_ms and (self.ending_before_ms is None or ts_ms < self.ending_before_ms)

    def overlaps(self, starting_at_ms: int, ending_before_ms: int | None) -> bool:
        self_end = self.ending_before_ms if self.ending_before_ms is not None else 2**63
        other_end = ending_before_ms if ending_before_ms is not None else 2**63
        return self.starting_at_ms < other_end and starting_at_ms < self_end


@dataclass(frozen=True, slots=True)
class Period:
    start_ms: int
    end_ms: int
