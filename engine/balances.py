"""A customer's balance as GetBalance and WatchBalance read it (and tests and tools, through `balance`): the
kernel's totals and grant rows joined with the control plane's grant records, contracts and rate cards.

Kept apart from engine/billing.py, which holds the machine itself (commands, usage, tables, snapshots), because
it is one read with its own views: GrantView and BalanceView, built from a Billing's engine and kernel and
changing neither. `Billing.balance` and `Billing.balance_encoded` call these.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING

import msgspec

from engine import credits
from engine.contracts import Contract, Period
from engine.errors import NotFound
from engine.ledger import Grant

if TYPE_CHECKING:
    from engine._kernel import Balance as KernelBalance
    from engine._kernel import EncodedBalance, MadeGrant
    from engine.billing import Billing


@dataclass(frozen=True, slots=True)
class GrantView:
    grant: Grant
    remaining: int  # usable now, held credits included
    expired: int
    held: int = 0


@dataclass(frozen=True, slots=True)
class BalanceView:
    customer_id: str
    remaining: int
    held: int
    available: int
    grants: list[GrantView]
    period: Period | None
    period_charges: int
    overage: int
    overage_due: Decimal
    pricing_unit: str
    as_of_seq: int
    currency: str  # overage_due's: that of the contract pricing_unit is the card's, "" with none
    # `Billing.balance_encoded`'s: every grant in burn order, a GrantView (one of `grants`) or the bytes of a run
    # of top-ups encoded by the kernel as tariff.v1.Balance `grants` entries (which `grants` leaves out); None
    # when `grants` lists every grant.
    grant_parts: list[GrantView | bytes] | None = None
    # With grant_parts: a run's each, in order, where its spent top-ups lie (`Kernel.balance_encoded`'s
    # "top_ups_spent"), and how many top-ups the runs hold.
    top_ups_spent: list[bytes] | None = None
    top_ups_count: int = 0
    # With grant_parts: the next instant an encoded top-up's row changes with nothing recorded.
    top_ups_next_change_ms: int | None = None


def balance(billing: Billing, customer_id: str, now_ms: int) -> BalanceView:
    """The customer's balance at now_ms, a GrantView for every grant (`balance_encoded` for the server's)."""
    customer = billing.engine.customer(customer_id)  # NotFound for an unknown customer
    billing.refresh_tables()
    # Read before the kernel: a batch rated meanwhile on the writer's thread may raise it, so the view
    # holds at least the records up to as_of_seq.
    as_of_seq = billing.last_seq
    # Projected: as the clock's AdvanceClock at now_ms will leave it, when something fell due since its last one
    # (a period's end rolling a grant over, a grant's expiry, a hold's TTL), so that a balance read before the
    # clock records it is consistent, its grants summing to its totals, and is what usage received now finds.
    view = billing.kernel.balance(customer.id, now_ms, projected=True)
    if view is None:
        raise NotFound(f"customer {customer_id!r} not found")
    rows = [(*row, held) for row, held in zip(view["grants"], view["grants_held"], strict=True)]
    views = _grant_views(billing, customer.id, rows, view.get("made"), now_ms)
    return _balance_view(billing, customer.id, view, views, as_of_seq, now_ms)


def balance_encoded(billing: Billing, customer_id: str, now_ms: int) -> BalanceView:
    """`balance`, its top-up grants encoded by the kernel as tariff.v1.Balance `grants` entries
    (BalanceView.grant_parts): GetBalance's and WatchBalance's read. A customer's top-ups are unbounded over
    its life, and a GrantView and a message of each cost the event loop about 8 µs a grant (docs/architecture.md
    §2, "Reads")."""
    customer = billing.engine.customer(customer_id)  # NotFound for an unknown customer
    billing.refresh_tables()
    as_of_seq = billing.last_seq  # before the kernel, as in `balance`
    view = billing.kernel.balance_encoded(customer.id, now_ms)
    if view is None:
        raise NotFound(f"customer {customer_id!r} not found")
    if view is False:  # the kernel cannot tell its top-ups apart by id: every grant read as `balance` reads it
        return billing.balance(customer_id, now_ms)
    rows = [part for part in view["grants"] if not isinstance(part, bytes)]
    views = iter(_grant_views(billing, customer.id, rows, view["made"], now_ms))
    parts = [part if isinstance(part, bytes) else next(views) for part in view["grants"]]
    grants = [part for part in parts if not isinstance(part, bytes)]
    balance = _balance_view(billing, customer.id, view, grants, as_of_seq, now_ms)
    return replace(
        balance,
        grant_parts=parts,
        top_ups_spent=view["top_ups_spent"],
        top_ups_count=view["top_ups_count"],
        top_ups_next_change_ms=view["top_ups_next_change_ms"],
    )


def _grant_views(
    billing: Billing,
    customer_id: str,
    rows: list[tuple[str, int, int, int, int, int]],
    made: list[MadeGrant] | None,
    now_ms: int,
) -> list[GrantView]:
    """A GrantView of each kernel row (id, amount, remaining, expired, drawn, held), the grant's record from the
    control plane, or from the kernel's `made` rows for a grant it made."""
    grants = {g.id: g for g in billing.engine.state.accounts[customer_id].grants}
    rolled_out: dict[str, int] = {}
    if made:  # the kernel bought top-ups or rolled grants over
        contract = _contract_for_balance(billing, customer_id, now_ms)
        grants.update(credits.made_grants(billing, customer_id, contract.id if contract else "", made))
        rolled_out = credits.rolled_out(billing, customer_id, made)
    views = []
    for grant_id, _amount, remaining, expired, drawn, held in rows:
        grant = grants[grant_id]
        # The kernel counts what rolled out of a grant as drawn; that credit is its ROLLOVER grant's, recognised
        # when usage draws it there, so the original's revenue is that of usage's draws alone.
        recognized = grant.revenue_for_drawn(drawn - rolled_out.get(grant_id, 0))
        current = msgspec.structs.replace(
            grant, drawn=drawn, remaining=grant.amount - drawn, recognized_revenue=recognized
        )
        usable = grant.expires_at_ms is None or now_ms < grant.expires_at_ms
        views.append(GrantView(current, remaining + held if usable else remaining, expired, held))
    return views


def _balance_view(
    billing: Billing,
    customer_id: str,
    view: KernelBalance | EncodedBalance,
    grants: list[GrantView],
    as_of_seq: int,
    now_ms: int,
) -> BalanceView:
    contract = _contract_for_balance(billing, customer_id, now_ms)
    pricing_unit = billing.engine.state.rate_cards[contract.rate_card_id].pricing_unit if contract else ""
    period = Period(*view["period"]) if view["period"] is not None else None
    overage_due = Decimal(f"{view['overage_due_e30']}E-30")
    return BalanceView(
        customer_id,
        view["remaining"] + view["held"],
        view["held"],
        view["remaining"],
        grants,
        period,
        view["period_charges"],
        view["overage"],
        overage_due,
        pricing_unit,
        as_of_seq,
        contract.currency if contract else "",
    )


def _contract_for_balance(billing: Billing, customer_id: str, now_ms: int) -> Contract | None:
    """The contract in force now, else the latest one (it names the pricing unit)."""
    contracts = billing.engine.contracts_of(customer_id)
    for contract in contracts:
        if contract.covers(now_ms):
            return contract
    return max(contracts, key=lambda c: c.starting_at_ms) if contracts else None
