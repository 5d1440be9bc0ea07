"""The credits ledger: grants, and the draws that rated usage makes on them, in burn order.

Burn order for a charge: grants that apply to the product, have started and have not expired at the event's
time, by priority (lower first), then earliest expiry, then narrowest applicability, then creation order.
What no grant covers is overage. Revenue is recognised as credits are drawn, at the grant's cost basis
(paid_amount / amount); a grant's recognised revenue is computed from its cumulative draw and rounded once,
so that a fully drawn grant has recognised exactly what was paid.

Invariant, per grant and so per customer, asserted after every change:
granted = drawn + remaining, 0 <= remaining <= granted. A grant past its expiry still holds `remaining`;
views report it as expired (breakage), so granted = drawn + remaining + expired holds at every moment.
"""

from __future__ import annotations

import enum
from decimal import Decimal

import msgspec

from engine.money import PICOS_PER_UNIT, round_ratio

NEVER_MS = 2**62


class GrantKind(enum.StrEnum):
    PREPAID = "PREPAID"
    PROMOTIONAL = "PROMOTIONAL"
    ROLLOVER = "ROLLOVER"
    TOP_UP = "TOP_UP"


class Grant(msgspec.Struct, gc=False):
    id: str
    customer_id: str
    contract_id: str
    kind: GrantKind
    amount: int  # picos of the pricing unit
    paid_amount: Decimal  # in the contract's currency
    priority: int
    applicable_product_ids: tuple[str, ...]  # empty = every product
    starts_at_ms: int
    expires_at_ms: int | None
    rollover_fraction: Decimal
    created_at_ms: int
    creation_order: int
    drawn: int = 0
    remaining: int = -1  # set to amount on creation
    recognized_revenue: int = 0  # picos of the currency

    def __post_init__(self) -> None:
        if self.remaining == -1:
            self.remaining = self.amount
        self.check()

    def check(self) -> None:
        assert self.amount > 0, f"grant {self.id}: amount must be positive"
        assert self.amount == self.drawn + self.remaining, f"grant {self.id}: credits not conserved"
        assert 0 <= self.remaining <= self.amount, f"grant {self.id}: remaining out of range"

    def applies_to(self, product_id: str) -> bool:
        return not self.applicable_product_ids or product_id in self.applicable_product_ids

    def usable_at(self, ts_ms: int) -> bool:
        return self.starts_at_ms <= ts_ms and (self.expires_at_ms is None or ts_ms < self.expires_at_ms)

    def expired_at(self, ts_ms: int) -> bool:
        return self.expires_at_ms is not None and ts_ms >= self.expires_at_ms

    def burn_order(self) -> tuple[int, int, int, int]:
        narrowness = len(self.applicable_product_ids) if self.applicable_product_ids else 2**31
        expiry = self.expires_at_ms if self.expires_at_ms is not None else NEVER_MS
        return (self.priority, expiry, narrowness, self.creation_order)

    def revenue_for_drawn(self, drawn: int) -> int:
        """Revenue recognised once `drawn` picos have been drawn: drawn x paid / amount, rounded once."""
        if self.paid_amount == 0:
            return 0
        # Exactly, in integers: drawn picos x paid / amount picos, in picos of the currency.
        paid_numerator, paid_denominator = self.paid_amount.as_integer_ratio()
        return round_ratio(drawn * paid_numerator * PICOS_PER_UNIT, self.amount * paid_denominator)


class Draw(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One grant's part of a charge (negative when a charge is refunded)."""

    grant_id: str
    credits: int  # picos
    revenue: int  # picos of the currency


def in_burn_order(grants: list[Grant]) -> list[Grant]:
    return sorted(grants, key=Grant.burn_order)


def draw(grants: list[Grant], product_id: str, ts_ms: int, charge: int) -> tuple[list[Draw], int]:
    """Draws a positive charge in burn order; returns the draws and the part no grant covered (overage)."""
    return draw_in_order(in_burn_order(grants), product_id, ts_ms, charge)


def draw_in_order(ordered: list[Grant], product_id: str, ts_ms: int, charge: int) -> tuple[list[Draw], int]:
    """`draw` for grants already in burn order (the engine keeps each account's order, so it is not re-sorted
    for every charge)."""
    assert charge > 0
    draws: list[Draw] = []
    left = charge
    for grant in ordered:
        remaining = grant.remaining
        if remaining <= 0 or not grant.usable_at(ts_ms) or not grant.applies_to(product_id):
            continue
        take = left if left < remaining else remaining
        draws.append(_move(grant, take))
        left -= take
        if left == 0:
            break
    return draws, left


def refund(grants: list[Grant], drawn_by_grant: dict[str, int], amount: int) -> list[Draw]:
    """Gives back `amount` of what one aggregate drew (a LATEST gauge that fell, a volume tier that got cheaper).

    Credits go back only to the grants that aggregate drew from, in reverse burn order, at most what it drew
    from each; `drawn_by_grant` is updated. The caller takes the aggregate's own overage back first, so the
    amount is always covered.
    """
    assert 0 < amount <= sum(drawn_by_grant.values()), "a refund never exceeds what the aggregate drew"
    draws: list[Draw] = []
    left = amount
    for grant in sorted((g for g in grants if drawn_by_grant.get(g.id, 0) > 0), key=Grant.burn_order, reverse=True):
        give = min(left, drawn_by_grant[grant.id])
        draws.append(_move(grant, -give))
        drawn_by_grant[grant.id] -= give
        left -= give
        if left == 0:
            break
    assert left == 0
    return draws


def _move(grant: Grant, credits: int) -> Draw:
    revenue_before = grant.recognized_revenue
    grant.drawn += credits
    grant.remaining -= credits
    grant.recognized_revenue = grant.revenue_for_drawn(grant.drawn)
    grant.check()
    return Draw(grant.id, credits, grant.recognized_revenue - revenue_before)


def simulate_draw(ordered: list[Grant], product_ids: list[str], ts_ms: int, charges: list[int]) -> int:
    """Overage that drawing these charges would leave, without changing any grant (for Authorize).

    `ordered`: the customer's grants in burn order (see in_burn_order)."""
    remaining = {g.id: g.remaining for g in ordered}
    overage = 0
    for product_id, charge in zip(product_ids, charges, strict=True):
        left = charge
        if left <= 0:
            continue
        for grant in ordered:
            if not grant.usable_at(ts_ms) or not grant.applies_to(product_id):
                continue
            take = min(left, remaining[grant.id])
            remaining[grant.id] -= take
            left -= take
            if left == 0:
                break
        overage += left
    return overage
