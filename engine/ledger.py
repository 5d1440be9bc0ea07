"""Credit grants as the control plane holds them: what was granted, to whom, for which products, when.

The kernel holds each grant's balance and draws on grants in burn order (engine/kernel/src/draw.rs); this
module is the grant's record and the rule for the revenue its draws recognise. Revenue is recognised as
credits are drawn, at the grant's cost basis (paid_amount / amount), computed from the cumulative draw and
rounded once, so that a fully drawn grant has recognised exactly what was paid.
"""

from __future__ import annotations

import enum
from decimal import Decimal

import msgspec

from engine.money import PICOS_PER_UNIT, round_ratio


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
    request: bytes = b""  # the GrantCredits' fingerprint (its retry key, as Customer.request)
    # With a rollover fraction: usable only for usage dated before its rollover (GrantCredits.use_ends_at_rollover).
    use_ends_at_rollover: bool = False
    # With a rollover fraction and expires_at exactly at its rollover: rolls over there instead of simply expiring
    # (GrantCredits.expiring_at_rollover_rolls).
    expiring_at_rollover_rolls: bool = False

    def __post_init__(self) -> None:
        if self.remaining == -1:
            self.remaining = self.amount
        self.check()

    def check(self) -> None:
        assert self.amount > 0, f"grant {self.id}: amount must be positive"
        assert self.amount == self.drawn + self.remaining, f"grant {self.id}: credits not conserved"
        assert 0 <= self.remaining <= self.amount, f"grant {self.id}: remaining out of range"

    def revenue_for_drawn(self, drawn: int) -> int:
        """Revenue recognised once `drawn` picos have been drawn: drawn x paid / amount, rounded once."""
        if self.paid_amount == 0:
            return 0
        # Exactly, in integers: drawn picos x paid / amount picos, in picos of the currency.
        paid_numerator, paid_denominator = self.paid_amount.as_integer_ratio()
        return round_ratio(drawn * paid_numerator * PICOS_PER_UNIT, self.amount * paid_denominator)

    def expires_before_rollover(self, rolls_at_ms: int) -> bool:
        """Whether the grant, with a rollover at rolls_at_ms (the end of the billing period it starts in), simply
        expires instead (as the kernel's `rollover_at`): it expires before then, or exactly then and was granted
        before GrantCredits' `expiring_at_rollover_rolls` (its credits usable up to that end, it rolls over)."""
        if self.expires_at_ms is None:
            return False
        return self.expires_at_ms < rolls_at_ms or (
            self.expires_at_ms == rolls_at_ms and not self.expiring_at_rollover_rolls
        )
