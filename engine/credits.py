"""Reservations, top-up policies and the clock: the commands the rating kernel applies to account state.

The kernel holds reservations, top-up purchases and breakage (engine/kernel/src/credits.rs); this module
validates each command, calls the kernel, and shapes the answer. Every command here goes through the writer and
the journal like any admin command, and replay applies it again to the same state with the same result: time
comes in on the command (`at_ms`), never from a clock. A command that changes nothing (a denied or repeated
reservation, a repeated release, an unchanged policy, a clock with nothing due) raises Repeated, so it takes no
journal record.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import TYPE_CHECKING

from engine import commands as cmd
from engine._kernel import ReservationConflict, ReservationEnded, ReservationNotFound
from engine.contracts import Contract
from engine.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Repeated
from engine.ledger import Grant, GrantKind
from engine.money import DECIMAL_CONTEXT, parse_decimal

if TYPE_CHECKING:
    from engine._kernel import MadeGrant
    from engine.billing import Billing

PICOS_PLACES = 12
PRICE_PLACES = 18
# The kernel multiplies credits (picos) by a price (10^-18) in 128 bits: recharge_to x price_per_credit must fit.
COST_E30_MAX = 2**127 - 1


@dataclass(frozen=True, slots=True)
class Reservation:
    """Authorize(reserve=true)'s answer. `held`: credits held now under the id (0 when denied, or when an earlier
    identical request's reservation has already ended)."""

    reservation_id: str
    allowed: bool
    reason: str
    message: str
    cost: int
    available: int
    held: int
    repeated: bool
    expires_at_ms: int


@dataclass(frozen=True, slots=True)
class HeldBatch:
    """A ReserveBatch's answer: `responses`, a tariff.v1.AuthorizeBatchResult of one answer per hold request (in
    order; a request that could not hold answered in-band), the holds it placed, and their customers."""

    responses: bytes
    placed: int
    customers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Released:
    reservation_id: str
    released: int  # picos given back to grants


@dataclass(frozen=True, slots=True)
class TopUp:
    """A customer's top-up policy: amounts in picos of the pricing unit, the price in the contract's currency."""

    threshold: int
    recharge_to: int
    price_per_credit: Decimal
    max_per_period: int
    # The price's currency: that of the contract it was set through (empty: set by an earlier release, its price
    # read in the currency of the contract each purchase counts in).
    currency: str = ""


@dataclass(frozen=True, slots=True)
class Advanced:
    reservations_expired: int
    breakage_entries: int
    # The customers (sorted) of which a grant expired or rolled over: their balances changed.
    grants_ended: tuple[str, ...] = ()


def apply(billing: Billing, command: cmd.KernelCommand, seq: int) -> object:
    """Applies a kernel command as record `seq`; raises EngineError or Repeated, having changed nothing."""
    billing.refresh_tables()
    match command:
        case cmd.Reserve():
            result: object = _reserve(billing, command)
        case cmd.ReleaseReservation():
            result = _release(billing, command)
        case cmd.SetTopUpPolicy():
            result = _set_top_up(billing, command)
            billing.engine._audit(command, seq, result)  # a policy change is an admin change: audited
        case cmd.AdvanceClock():
            result = _advance(billing, command)
        case cmd.ReserveBatch():
            result = _reserve_batch(billing, command)
    billing.engine.state.last_seq = seq
    return result


def _reserve(billing: Billing, command: cmd.Reserve) -> Reservation:
    billing.engine.customer(command.customer_id)  # NotFound
    if not command.reservation_id:
        raise InvalidArgument.field("reservation_id", "is required")
    if command.ttl_ms <= 0:
        raise InvalidArgument.field("reservation_ttl", "must be positive")
    try:
        allowed, reason, message, cost, available, held, repeated, expires_at_ms = billing.kernel.reserve(
            command.customer_id,
            command.reservation_id,
            command.event_type,
            list(command.dimensions.items()),
            list(command.values.items()),
            command.at_ms,
            command.ttl_ms,
            command.ttl_defaulted,
            command.refunds_netted,
        )
    except ReservationConflict as exc:
        raise AlreadyExists(f"{exc.args[0]}; nothing was held") from None
    result = Reservation(
        command.reservation_id, allowed, reason, message, cost, available, held, repeated, expires_at_ms
    )
    if repeated or not allowed:
        raise Repeated(result)  # nothing held, nothing journaled
    return result


def _reserve_batch(billing: Billing, command: cmd.ReserveBatch) -> HeldBatch:
    """A message's holds in one kernel call; a batch that placed none (every request denied, repeated or refused)
    changed nothing and takes no journal record."""
    try:
        responses, placed, customers = billing.kernel.reserve_batch(
            command.requests, command.at_ms, command.ttl_default_ms, command.refunds_netted
        )
    except ValueError as exc:
        raise InvalidArgument.field("requests", f"not an AuthorizeBatch: {exc}") from None
    result = HeldBatch(responses, placed, tuple(customers))
    if not placed:
        raise Repeated(result)
    return result


def _release(billing: Billing, command: cmd.ReleaseReservation) -> Released:
    if not command.customer_id:
        raise InvalidArgument.field("customer_id", "is required")
    if not command.reservation_id:
        raise InvalidArgument.field("reservation_id", "is required")
    try:
        released, repeated = billing.kernel.release(
            command.customer_id, command.reservation_id, command.at_ms, command.expired_credit_breaks
        )
    except ReservationNotFound as exc:
        raise NotFound(str(exc.args[0])) from None
    except ReservationEnded as exc:
        raise FailedPrecondition(str(exc.args[0])) from None
    result = Released(command.reservation_id, released)
    if repeated:
        raise Repeated(result)
    return result


def exact_picos(text: str, field: str) -> int:
    """A non-negative decimal text as picos, refused (naming `field`) when 12 places cannot hold it exactly."""
    value = parse_decimal(text, field)
    picos = value.scaleb(PICOS_PLACES, context=DECIMAL_CONTEXT)
    if picos != picos.to_integral_value():
        raise InvalidArgument.field(field, f"{text!r} has more than {PICOS_PLACES} decimal places")
    return int(picos)


def parse_top_up(command: cmd.SetTopUpPolicy) -> TopUp:
    """The policy, or INVALID_ARGUMENT naming the first bad field."""
    threshold = exact_picos(command.threshold, "top_up.threshold")
    recharge_to = exact_picos(command.recharge_to, "top_up.recharge_to")
    price = parse_decimal(command.price_per_credit, "top_up.price_per_credit")  # refuses a negative price
    if threshold >= recharge_to:
        raise InvalidArgument.field(
            "top_up.threshold", f"must be below recharge_to ({command.threshold} is not below {command.recharge_to})"
        )
    if command.max_per_period <= 0:
        raise InvalidArgument.field("top_up.max_per_period", "must be at least 1")
    if recharge_to * int(price.scaleb(PRICE_PLACES, context=DECIMAL_CONTEXT)) > COST_E30_MAX:
        raise InvalidArgument.field("top_up.recharge_to", "recharge_to x price_per_credit is out of range")
    return TopUp(threshold, recharge_to, price, command.max_per_period)


KernelTopUp = tuple[int, int, int, int]  # threshold, recharge_to (picos), price_e18, max_per_period


def _kernel_top_up(command: cmd.SetTopUpPolicy) -> KernelTopUp | None:
    """The policy `command` sets, as the kernel holds it (None: the command clears it); INVALID_ARGUMENT as
    parse_top_up refuses it."""
    if not command.threshold and not command.recharge_to and command.max_per_period == 0:
        return None
    top_up = parse_top_up(command)
    price_e18 = int(top_up.price_per_credit.scaleb(PRICE_PLACES, context=DECIMAL_CONTEXT))
    return (top_up.threshold, top_up.recharge_to, price_e18, top_up.max_per_period)


def _top_up_of(policy: KernelTopUp, currency: str) -> TopUp:
    """A policy the kernel holds, as clients are shown it, with the currency of its price."""
    threshold, recharge_to, price_e18, max_per_period = policy
    return TopUp(threshold, recharge_to, Decimal(f"{price_e18}E-{PRICE_PLACES}"), max_per_period, currency)


def top_up_as_set(command: cmd.SetTopUpPolicy, currency: str) -> TopUp | None:
    """The policy `command` sets through a contract in `currency`, as top_up_policy reads it back once set (None:
    the command clears it), for a service to measure its answer before applying it; INVALID_ARGUMENT as
    _set_top_up refuses it."""
    policy = _kernel_top_up(command)
    if policy is None:
        return None
    return _top_up_of(policy, currency if command.price_in_contract_currency else "")


def _set_top_up(billing: Billing, command: cmd.SetTopUpPolicy) -> Contract:
    contract = billing.engine.contract(command.contract_id)  # NotFound
    policy = _kernel_top_up(command)
    currency = contract.currency if policy is not None and command.price_in_contract_currency else ""
    currencies = billing.engine.state.top_up_currencies
    held = currencies.get(contract.customer_id, "")
    if billing.kernel.top_up_policy(contract.customer_id) == policy and held == currency:
        raise Repeated(contract)
    known = billing.kernel.set_top_up(contract.customer_id, policy)
    assert known, f"customer {contract.customer_id!r} has a contract, so the kernel knows it"
    if held != currency:
        # Which of the customer's contracts the policy buys in is in their tables (engine/tables.py).
        if currency:
            currencies[contract.customer_id] = currency
        else:
            del currencies[contract.customer_id]
        billing.customer_tables_changed(contract.customer_id)
    return contract


def _advance(billing: Billing, command: cmd.AdvanceClock) -> Advanced:
    if billing.rerating is not None:
        return _expire_holds(billing, command)
    now_ms, due_ms = billing.kernel.clock()
    if due_ms is None or command.at_ms < due_ms:
        raise Repeated(Advanced(0, 0))
    if command.at_ms <= now_ms:
        # The server's wall clock is behind the kernel's (stepped back, across a restart too): a hold made since
        # runs out before the kernel's clock, so only its expiry can be due, and it expires on time rather than
        # once the wall clock passes the kernel's again. No journal before held such a record (Repeated: none).
        return _expire_holds(billing, command)
    expired, broken, grants_ended = billing.kernel.advance_clock(
        command.at_ms, command.rollover_ids_distinct, command.rollover_lasts_next_period
    )
    return Advanced(expired, broken, tuple(grants_ended))


def _expire_holds(billing: Billing, command: cmd.AdvanceClock) -> Advanced:
    """AdvanceClock while a publish's re-rating is pending (engine/pending.py): the holds whose TTL ran out expire
    on time, each customer re-rated first (Billing re-rates on touch those Kernel.holds_due_by names), and nothing
    else moves. The breakage and rollovers due wait for the completion record, after which the next AdvanceClock
    records them: they depend on grant balances the re-rating changes customer by customer in background slices
    that no record lists, so applied now they would differ between the server and its replay. (Once one is due, the
    writer completes the re-rating at once, then journals that AdvanceClock, first in the next group of commands,
    the clock driver's look among them, and before it rates usage: Sequencer._clock_before.) The re-rating never
    creates or ends a reservation nor moves its TTL, so which holds expire is the same in both (what one holds it
    may shrink, but its customer is re-rated before it expires). Repeated (no record) when none expires."""
    expired = billing.kernel.expire_holds(command.at_ms)
    if not expired:
        raise Repeated(Advanced(0, 0))
    return Advanced(expired, 0)


def top_up_policy(billing: Billing, customer_id: str) -> TopUp | None:
    policy = billing.kernel.top_up_policy(customer_id)
    if policy is None:
        return None
    return _top_up_of(policy, billing.engine.state.top_up_currencies.get(customer_id, ""))


def made_grants(
    billing: Billing, customer_id: str, contract_id: str, rows: list[MadeGrant] | None = None
) -> dict[str, Grant]:
    """The grants the kernel made for the customer, as the control plane's records would show them: TOP_UP with
    paid_amount = credits x price_per_credit, exactly; ROLLOVER with the cost basis of the grant it rolled from
    (paid_amount = credits x its paid_amount / its amount, to 60 significant digits). `rows`: the kernel's rows
    to read (a projected balance's `made`), else its made_grants now."""
    origins = {g.id: g for g in billing.engine.state.accounts[customer_id].grants}
    grants: dict[str, Grant] = {}
    for row in rows if rows is not None else billing.kernel.made_grants(customer_id):
        grant_id, kind, amount, priority, starts_at_ms, expires_at_ms, cost_e30, rolled_from, made_at_ms = row
        applicable: tuple[str, ...] = ()
        if kind == "TOP_UP":
            paid = Decimal(f"{cost_e30}E-30")
        else:
            origin = origins.get(rolled_from) or grants[rolled_from]
            paid = DECIMAL_CONTEXT.divide(DECIMAL_CONTEXT.multiply(origin.paid_amount, amount), origin.amount)
            applicable = origin.applicable_product_ids
        grants[grant_id] = Grant(
            id=grant_id,
            customer_id=customer_id,
            contract_id=contract_id,
            kind=GrantKind(kind),
            amount=amount,
            paid_amount=paid,
            priority=priority,
            applicable_product_ids=applicable,
            starts_at_ms=starts_at_ms,
            expires_at_ms=expires_at_ms,
            rollover_fraction=Decimal(0),
            created_at_ms=made_at_ms,
            creation_order=-1,
        )
    return grants


def rolled_out(billing: Billing, customer_id: str, rows: list[MadeGrant] | None = None) -> dict[str, int]:
    """Picos each of the customer's grants moved into ROLLOVER grants at its period's end (kernel-made grants;
    `rows` as for made_grants)."""
    moved: dict[str, int] = {}
    made = rows if rows is not None else billing.kernel.made_grants(customer_id)
    for grant_id, kind, amount, *_, rolled_from, _made_at_ms in made:
        if kind == "ROLLOVER":
            assert rolled_from, f"ROLLOVER grant {grant_id!r} names the grant it rolled from"
            moved[rolled_from] = moved.get(rolled_from, 0) + amount
    return moved
