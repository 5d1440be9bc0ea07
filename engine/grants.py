"""Credit grants: GrantCredits, validated and recorded (the kernel holds their balances); ExpireGrant, ending one
early."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal

import msgspec

from engine import commands as cmd
from engine.control import ControlPlane, check_applied_id, keeping_print, latest_hour_across, shared_int
from engine.errors import (
    MADE_BY_ANOTHER_REQUEST,
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    LimitReached,
    NotFound,
    Repeated,
)
from engine.instants import iso
from engine.ledger import Grant, GrantKind
from engine.money import DECIMAL_CONTEXT, parse_decimal, to_picos

# Grants GrantCredits gives one customer at most: each is listed in its balance (GetBalance, WatchBalance) and its
# contracts, one message each, never paged, and read where its usage draws. Checked when a command the server
# marked `grants_bounded` applies; commands journaled before the mark replay as they were.
GRANTS_PER_CUSTOMER_MAX = 1_000


class GrantCommands(ControlPlane):
    # The kernel's side of ExpireGrant, set by engine/billing.py (class defaults, so the Engine dataclass keeps its
    # fields): the grant the kernel made for a customer under an id (top-up-..., rollover-...; the control plane
    # holds no record of it), as a record; and the kernel's move of a grant's expiry (False: it knows no such grant).
    made_grant: Callable[[str, str], Grant | None] | None = None
    grant_expiry_moved: Callable[[str, str, int], bool] | None = None
    # The hours in which the kernel holds usage of a customer (engine/customers.py declares and documents it).
    hours_recorded: Callable[[str], list[int]] | None

    def _grant_credits(self, c: cmd.GrantCredits) -> Grant:
        if c.id:
            check_applied_id(c.id, "grant.id")
        customer_id = self._grant_owner(c)
        if c.kind is None:
            raise InvalidArgument.field("grant.kind", "is required: PREPAID, PROMOTIONAL, ROLLOVER or TOP_UP")
        amount = _grant_amount_picos(c.amount)
        paid = _shared_decimal(c.paid_amount or "0", "grant.paid_amount")
        if c.paid_at_picos and not _exact_picos(paid):
            raise InvalidArgument.field(
                "grant.paid_amount",
                f"{c.paid_amount!r} has more than 12 decimal places: revenue is kept at 10^-12 of the currency "
                "exactly, so it would be rounded",
            )
        if c.kind is GrantKind.PROMOTIONAL and paid != 0:
            raise InvalidArgument.field("grant.paid_amount", "a promotional grant is not paid for: must be 0")
        rollover = _shared_decimal(c.rollover_fraction or "0", "grant.rollover_fraction")
        if rollover > 1:
            raise InvalidArgument.field("grant.rollover_fraction", "must be between 0 and 1")
        starts_at_ms = c.starts_at_ms
        if starts_at_ms is None:
            # Unset: from the start of the contract it pays for, so credit bought mid-period also pays for the
            # period's usage that arrives late; with no contract in force, from now.
            paid_for = self.contract(c.contract_id) if c.contract_id else self._contract_at(customer_id, c.at_ms)
            starts_at_ms = paid_for.starting_at_ms if paid_for is not None else c.at_ms
        if c.expires_at_ms is not None and c.expires_at_ms <= starts_at_ms:
            raise InvalidArgument.field("grant.expires_at", "must be after starts_at")
        for index, product_id in enumerate(c.applicable_product_ids):
            if product_id not in self.state.products:
                raise InvalidArgument.field(f"grant.applicable_product_ids[{index}]", f"unknown product {product_id!r}")
        if not c.id:
            # Minting one here would make a retried call grant twice.
            raise InvalidArgument.field(
                "grant.id", "is required (or request_id): the key that makes a retried GrantCredits grant once"
            )
        account = self.state.accounts[customer_id]
        held = next((g for g in account.grants if g.id == c.id), None) if c.id in self._grant_ids else None
        print_ = self._repeat_held(f"grant/{c.id}", c, self._held_print(held), lambda: held)
        if c.id in self._grant_ids:
            raise AlreadyExists(f"grant {c.id!r} already exists{MADE_BY_ANOTHER_REQUEST}")
        if c.grants_bounded and len(account.grants) >= GRANTS_PER_CUSTOMER_MAX:
            raise LimitReached(
                f"customer {customer_id!r} holds {len(account.grants):,} grants given by GrantCredits, the most a "
                f"customer may hold ({GRANTS_PER_CUSTOMER_MAX:,}): no more can be granted"
            )
        if c.rollover_start_in_contract and rollover > 0 and self._contract_at(customer_id, starts_at_ms) is None:
            raise FailedPrecondition(
                f"grant.rollover_fraction: a grant with a rollover fraction rolls over at the end of the billing "
                f"period it starts in, and no contract of customer {customer_id!r} is in force at its start "
                f"{iso(starts_at_ms)}: start it in a contract's time (naming the contract, it starts with it)"
            )
        self.state.grants_created += 1
        grant = Grant(
            id=c.id,
            customer_id=customer_id,
            # The contract's own id object, not the command's copy of the text: one string fewer per grant.
            contract_id=self.contract(c.contract_id).id if c.contract_id else "",
            kind=c.kind,
            amount=shared_int(amount),
            paid_amount=paid,
            priority=c.priority,
            applicable_product_ids=tuple(c.applicable_product_ids),
            starts_at_ms=shared_int(starts_at_ms),
            expires_at_ms=c.expires_at_ms,
            rollover_fraction=rollover,
            use_ends_at_rollover=c.use_ends_at_rollover,
            expiring_at_rollover_rolls=c.expiring_at_rollover_rolls,
            created_at_ms=shared_int(c.at_ms),
            creation_order=self.state.grants_created,
        )
        grant = keeping_print(grant, print_)
        account.grants = (*account.grants, grant)
        self._grant_ids.add(grant.id)
        return grant

    def _expire_grant(self, c: cmd.ExpireGrant) -> Grant:
        """Moves the grant's expiry earlier (or sets one), within contracts.proto ExpireGrant's rules, checked in its
        order; Repeated when the grant already expires there (a retry). The grant then expires as one granted with
        that expiry: the kernel breaks what it holds then, and a rollover after it is not made."""
        if not c.customer_id:
            raise InvalidArgument.field("customer_id", "is required: the customer whose grant expires")
        if not c.grant_id:
            raise InvalidArgument.field("grant_id", "is required: the grant to expire")
        self.customer(c.customer_id)  # NotFound
        record = next((g for g in self.state.accounts[c.customer_id].grants if g.id == c.grant_id), None)
        assert self.made_grant is not None and self.grant_expiry_moved is not None, "set by engine/billing.py"
        grant = record or self.made_grant(c.customer_id, c.grant_id)
        if grant is None:
            raise NotFound(f"customer {c.customer_id!r} has no grant {c.grant_id!r}")
        new_ms, held_ms = c.expires_at_ms, grant.expires_at_ms
        if new_ms <= grant.starts_at_ms:
            raise InvalidArgument.field("expires_at", f"must be after the grant's starts_at {iso(grant.starts_at_ms)}")
        if held_ms == new_ms:
            raise Repeated(grant)
        if held_ms is not None and held_ms <= c.at_ms:
            raise FailedPrecondition(
                f"grant {grant.id!r} has already expired, at {iso(held_ms)}: an expiry that has passed is not moved"
            )
        rolls_at_ms = self._rolls_over_at(grant)
        if rolls_at_ms is not None and rolls_at_ms <= c.at_ms:
            # Its remainder has moved into a ROLLOVER grant (or broken): it pays for nothing more, as if expired.
            raise FailedPrecondition(
                f"grant {grant.id!r} has already ended: rolled over at {iso(rolls_at_ms)}; an end that has passed "
                "is not moved"
            )
        if new_ms < c.at_ms:
            raise FailedPrecondition(
                f"grant {grant.id!r} cannot expire at {iso(new_ms)}, before now ({iso(c.at_ms)}): what it paid "
                "for stays paid"
            )
        if held_ms is not None and new_ms > held_ms:
            raise FailedPrecondition(
                f"grant {grant.id!r} cannot expire at {iso(new_ms)}, after its expiry {iso(held_ms)}: an expiry is "
                "only moved earlier"
            )
        self._check_no_usage_after(grant, new_ms)
        moved = self.grant_expiry_moved(c.customer_id, grant.id, new_ms)
        if record is None:
            assert moved, f"the kernel made grant {grant.id!r}, so it holds it"
            return msgspec.structs.replace(grant, expires_at_ms=new_ms)
        # A retry of the GrantCredits that made it still answers it: the request it restates names the old expiry.
        record.request = self._held_print(record) or b""
        record.expires_at_ms = new_ms
        # As GrantCredits sets it now: a rolling grant expiring exactly at its period's end rolls over there.
        record.expiring_at_rollover_rolls = True
        return record

    def _check_no_usage_after(self, grant: Grant, expires_at_ms: int) -> None:
        """FAILED_PRECONDITION naming the latest hour holding usage of the customer that ends after `expires_at_ms`
        and in which the grant could pay (after its start, before its current expiry): it may have drawn on the
        grant. Usage is kept by the hour, so an hour holding the new expiry off the hour counts whole, and usage of
        any product counts (conservative: the kernel keeps no draws by hour). Events dated ahead of the clock
        (within --future-skew-s) can be there."""
        assert self.hours_recorded is not None, "the engine reads the kernel's hours through it (engine/billing.py)"
        recorded = self.hours_recorded(grant.customer_id)
        hour = latest_hour_across(recorded, max(expires_at_ms, grant.starts_at_ms), grant.expires_at_ms)
        if hour is not None:
            raise FailedPrecondition(
                f"grant {grant.id!r} cannot expire at {iso(expires_at_ms)}: usage of customer {grant.customer_id!r} "
                f"is recorded in the hour from {iso(hour)}, which could have drawn on it after that expiry "
                "(an hour's usage counts whole)"
            )

    def _grant_owner(self, c: cmd.GrantCredits) -> str:
        """The customer the grant is for: named directly, or through its contract (both must agree)."""
        if c.contract_id:
            contract = self.contract(c.contract_id)
            if c.customer_id and c.customer_id != contract.customer_id:
                raise InvalidArgument.field(
                    "grant.customer_id", f"contract {contract.id!r} belongs to {contract.customer_id!r}"
                )
            return contract.customer_id
        if c.customer_id:
            return self.customer(c.customer_id).id
        raise InvalidArgument.field("grant.customer_id", "customer_id or contract_id is required")


# Grants repeat a few paid amounts and rollover fractions, and a Decimal is 104 bytes: one object per distinct
# text (a Decimal is immutable), for the first few distinct texts.
SHARED_DECIMALS_MAX = 1024
_shared_decimals: dict[str, Decimal] = {}


def _shared_decimal(text: str, field: str) -> Decimal:
    """parse_decimal(text, field), the same object for the same text."""
    value = _shared_decimals.get(text)
    if value is None:
        value = parse_decimal(text, field)
        if len(_shared_decimals) < SHARED_DECIMALS_MAX:
            _shared_decimals[text] = value
    return value


def _exact_picos(value: Decimal) -> bool:
    """Whether value is a whole number of picos (10^-12)."""
    return to_picos(value) == value.scaleb(12, context=DECIMAL_CONTEXT)  # exact, where `* 10**12` rounds at 28 digits


def _grant_amount_picos(text: str) -> int:
    """A grant amount in picos: positive and exact at 12 decimal places (never rounded)."""
    amount_units = parse_decimal(text, "grant.amount")
    amount = to_picos(amount_units)
    if not _exact_picos(amount_units):
        raise InvalidArgument.field(
            "grant.amount", f"{text!r} has more than 12 decimal places: credits are held at 10^-12 exactly"
        )
    if amount <= 0:
        raise InvalidArgument.field("grant.amount", "must be greater than 0")
    return amount
