"""Customers, their contracts and contract overrides: CreateCustomer, CreateContract, AddOverride, EndContract,
EndOverride."""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from engine import commands as cmd
from engine.contracts import Contract, Customer, Override
from engine.control import (
    DAY_MS,
    ControlPlane,
    check_applied_id,
    check_text_map,
    default_contract_id,
    fingerprint,
    keeping_print,
    latest_hour_across,
    new_account,
    numbered_contract_id,
    shared_int,
)
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
from engine.money import parse_decimal
from engine.ratecard import RateCard, normalize_match

# Shared by every customer created without attributes (most): an empty dict is 64 bytes, and a Customer is
# frozen, its attributes never changed in place.
NO_ATTRIBUTES: dict[str, str] = {}


class CustomerCommands(ControlPlane):
    # The hours (their first instant, Unix ms) in which the kernel holds usage of a customer (engine/billing.py sets
    # it): a class default, so the Engine dataclass keeps its fields. EndContract reads it.
    hours_recorded: Callable[[str], list[int]] | None = None
    # The same, of the customer's usage of one product (its id second): EndOverride reads it.
    product_hours_recorded: Callable[[str, str], list[int]] | None = None

    def _create_customer(self, c: cmd.CreateCustomer) -> Customer:
        check_applied_id(c.id, "id")
        check_text_map(c.attributes, "attributes")
        held = self.state.customers.get(c.id)
        print_ = self._repeat_held(f"customer/{c.id}", c, self._held_print(held), lambda: held)
        if held is not None:
            raise AlreadyExists(f"customer {c.id!r} already exists{MADE_BY_ANOTHER_REQUEST}")
        attributes = dict(c.attributes) if c.attributes else NO_ATTRIBUTES
        customer = keeping_print(Customer(c.id, c.name or c.id, attributes, shared_int(c.at_ms)), print_)
        self.state.customers[c.id] = customer
        self.state.accounts[c.id] = new_account(c.id)
        return customer

    def _create_contract(self, c: cmd.CreateContract) -> Contract:
        if c.id:
            check_applied_id(c.id, "id")
        customer = self.customer(c.customer_id)
        card = self.rate_card(c.rate_card_id)
        # Unset: the start of the current UTC day, so that usage stamped a moment before the contract was
        # created is covered and periods begin at midnight rather than at an arbitrary millisecond.
        starting_at_ms = c.starting_at_ms if c.starting_at_ms is not None else c.at_ms - c.at_ms % DAY_MS
        if c.ending_before_ms is not None and c.ending_before_ms <= starting_at_ms:
            raise InvalidArgument.field("ending_before", "must be after starting_at")
        overage_price = c.overage_price or "1"
        parse_decimal(overage_price, "overage_price")
        # Without an id, the contract is named after its customer and start: a customer's contracts never
        # overlap, so a retry of the same request finds the same id (and a retry on a later day, the overlap).
        contract_id = c.id or self._unnamed_contract_id(customer.id, starting_at_ms, c.numbered_id_keeps_start)
        held = self.state.contracts.get(contract_id)
        print_ = self._repeat_held(f"contract/{contract_id}", c, self._held_print(held), lambda: held)
        if held is not None:
            raise AlreadyExists(f"contract {contract_id!r} already exists{MADE_BY_ANOTHER_REQUEST}")
        for other in self.contracts_of(customer.id):
            if other.overlaps(starting_at_ms, c.ending_before_ms):
                raise FailedPrecondition(f"customer {customer.id!r} already has contract {other.id!r} in that time")
        if c.pricing_unit_shared:
            self._check_pricing_unit(customer.id, card)
        contract = Contract(
            contract_id,
            customer.id,
            card.id,
            shared_int(starting_at_ms),
            c.ending_before_ms,
            c.overage_policy,
            overage_price,
            c.currency or "USD",
            shared_int(c.at_ms),
        )
        contract = keeping_print(contract, print_)
        self.state.contracts[contract_id] = contract
        self._index_contract(contract)
        return contract

    def _check_pricing_unit(self, customer_id: str, card: RateCard) -> None:
        """A grant's amount is in its contract's pricing unit and pays the customer's usage under every contract:
        a contract on a card in another unit would have the grants pay its charges credit for credit (10 credits
        paying 10 EUR), so a customer's contracts all price in one unit."""
        for other in self.contracts_of(customer_id):
            unit = self.state.rate_cards[other.rate_card_id].pricing_unit
            if unit != card.pricing_unit:
                raise FailedPrecondition(
                    f"customer {customer_id!r} has contract {other.id!r} priced in {unit!r}, the unit of its grants: "
                    f"rate card {card.id!r} prices in {card.pricing_unit!r}"
                )

    def _unnamed_contract_id(self, customer_id: str, starting_at_ms: int, keeps_start: bool) -> str:
        """The id of the customer's contract from starting_at_ms requested without one: its key is the customer and
        the start, so the default id (`default_contract_id`) unless another contract (another customer's, or one of
        this customer's from another start, both named so by their requests) holds it; then that id with ".2",
        ".3", ... added, the first that is free or this key's own. Only requests refused before this rule ever met
        a taken default id, and refusals are not journaled: every stored command finds the id it found then.
        `keeps_start` (CreateContract.numbered_id_keeps_start) cuts the customer id to keep a numbered id within
        128 characters; without it the id's end is cut, as commands stored before it were. Either way a retry
        finds the contract an earlier request of its key was given under the other cut."""
        contract_id = default_contract_id(customer_id, starting_at_ms)
        base, n = contract_id, 1
        while (held := self.state.contracts.get(contract_id)) is not None:
            if self._holds_key(held, customer_id, starting_at_ms):
                return contract_id
            n += 1
            suffix = f".{n}"
            end_cut = base[: 128 - len(suffix)] + suffix
            if not keeps_start:
                contract_id = end_cut
                continue
            contract_id = numbered_contract_id(customer_id, starting_at_ms, n)
            earlier = self.state.contracts.get(end_cut)
            if earlier is not None and self._holds_key(earlier, customer_id, starting_at_ms):
                return end_cut
        return contract_id

    @staticmethod
    def _holds_key(contract: Contract, customer_id: str, starting_at_ms: int) -> bool:
        return contract.customer_id == customer_id and contract.starting_at_ms == starting_at_ms

    def _add_override(self, c: cmd.AddOverride) -> Contract:
        contract = self.contract(c.contract_id)
        o = msgspec.structs.replace(
            c.override, match=normalize_match(c.override.match), multiplier_reduced=c.multiplier_reduced
        )
        if o.product_id not in self.state.products:
            raise InvalidArgument.field("override.product_id", f"unknown product {o.product_id!r}")
        if (o.multiplier is None) == (o.price is None):
            raise InvalidArgument.field("override", "set exactly one of multiplier and price")
        if o.multiplier is not None:
            parse_decimal(o.multiplier, "override.multiplier")
        if o.price is not None:
            parse_decimal(o.price, "override.price")
        if o.ending_before_ms is not None and o.ending_before_ms <= o.starting_at_ms:
            raise InvalidArgument.field("override.ending_before", "must be after starting_at")
        if o.id:
            check_applied_id(o.id, "override.id")
        else:
            o = msgspec.structs.replace(o, id=override_id(c))
        key = f"contract/{contract.id}/override/{o.id}"
        print_ = self._repeat(key, c, lambda: contract)
        if any(existing.id == o.id for existing in contract.overrides):
            raise AlreadyExists(f"contract {contract.id!r} already has an override {o.id!r}")
        if c.overrides_bounded and len(contract.overrides) >= OVERRIDES_PER_CONTRACT_MAX:
            raise LimitReached(overrides_full(contract))
        contract.overrides = (*contract.overrides, o)
        self._remember(key, print_)
        return contract

    def _end_contract(self, c: cmd.EndContract) -> Contract:
        """Sets (or moves) the contract's end, within contracts.proto EndContract's rules, checked in its order;
        Repeated when the contract already ends there (a retry)."""
        contract = self.contract(c.contract_id)
        end_ms = c.ending_before_ms
        if end_ms <= contract.starting_at_ms:
            raise InvalidArgument.field("ending_before", "must be after starting_at")
        if contract.ending_before_ms == end_ms:
            raise Repeated(contract)
        held_ms = contract.ending_before_ms
        if held_ms is not None and held_ms <= c.at_ms:
            raise FailedPrecondition(
                f"contract {contract.id!r} has already ended, at {iso(held_ms)}: an end that has passed is not moved"
            )
        if end_ms < c.at_ms:
            raise FailedPrecondition(
                f"contract {contract.id!r} cannot end at {iso(end_ms)}, before now ({iso(c.at_ms)}): "
                "periods already billed stay as they are"
            )
        for other in self.contracts_of(contract.customer_id):
            if other.id != contract.id and other.overlaps(contract.starting_at_ms, end_ms):
                raise FailedPrecondition(
                    f"contract {contract.id!r} cannot end at {iso(end_ms)}: customer {contract.customer_id!r} "
                    f"has contract {other.id!r} in that time"
                )
        self._check_no_rolling_grant_from(contract, end_ms)
        self._check_no_usage_from(contract, end_ms)
        # A retry of the CreateContract that made it still answers it (the contract as it is now): the request it
        # restates names the old end, so the record keeps that request's fingerprint before the end moves.
        contract.request = self._held_print(contract) or b""
        contract.ending_before_ms = end_ms
        return contract

    def _end_override(self, c: cmd.EndOverride) -> Contract:
        """Sets the override's end, or moves it earlier, within contracts.proto EndOverride's rules, checked in its
        order; Repeated when the override already ends there (a retry). The override is replaced in its place: among
        equally specific overrides the one added last still wins. The AddOverride that added it keeps its
        fingerprint under its own key (`_add_override`), which this does not change: sent again, it still answers."""
        if not c.contract_id:
            raise InvalidArgument.field("contract_id", "is required: the contract holding the override")
        if not c.override_id:
            raise InvalidArgument.field("override_id", "is required: the override to end")
        contract = self.contract(c.contract_id)  # NotFound
        index = next((i for i, o in enumerate(contract.overrides) if o.id == c.override_id), None)
        if index is None:
            raise NotFound(f"contract {contract.id!r} has no override {c.override_id!r}")
        override = contract.overrides[index]
        new_ms, held_ms = c.ending_before_ms, override.ending_before_ms
        if new_ms <= override.starting_at_ms:
            raise InvalidArgument.field(
                "ending_before", f"must be after the override's starting_at {iso(override.starting_at_ms)}"
            )
        if held_ms == new_ms:
            raise Repeated(contract)
        what = f"override {override.id!r} of contract {contract.id!r}"
        if held_ms is not None and held_ms <= c.at_ms:
            raise FailedPrecondition(
                f"{what} has already ended, at {iso(held_ms)}: an end that has passed is not moved"
            )
        if new_ms < c.at_ms:
            raise FailedPrecondition(
                f"{what} cannot end at {iso(new_ms)}, before now ({iso(c.at_ms)}): usage already rated keeps its "
                "price (publish a version to re-rate it)"
            )
        if held_ms is not None and new_ms > held_ms:
            raise FailedPrecondition(
                f"{what} cannot end at {iso(new_ms)}, after its end {iso(held_ms)}: an end is only moved earlier"
            )
        self._check_no_product_usage_after(contract, override, new_ms)
        ended = msgspec.structs.replace(override, ending_before_ms=new_ms)
        contract.overrides = (*contract.overrides[:index], ended, *contract.overrides[index + 1 :])
        return contract

    def _check_no_product_usage_after(self, contract: Contract, override: Override, end_ms: int) -> None:
        """FAILED_PRECONDITION naming the latest hour holding usage of the customer in the override's product that
        ends after `end_ms` and begins before the override's current end: the override may have priced it. Usage is
        kept by the hour, so an hour holding the new end off the hour counts whole, and usage the override's match
        would not price counts too (conservative). Events dated ahead of the clock (within --future-skew-s) can be
        there."""
        assert self.product_hours_recorded is not None, "the engine reads the kernel's hours through it (billing.py)"
        recorded = self.product_hours_recorded(contract.customer_id, override.product_id)
        hour = latest_hour_across(recorded, end_ms, override.ending_before_ms)
        if hour is not None:
            raise FailedPrecondition(
                f"override {override.id!r} of contract {contract.id!r} cannot end at {iso(end_ms)}: usage of "
                f"customer {contract.customer_id!r} in product {override.product_id!r} is recorded in the hour from "
                f"{iso(hour)}, which it could have priced after that end (an hour's usage counts whole)"
            )

    def _check_no_rolling_grant_from(self, contract: Contract, end_ms: int) -> None:
        """FAILED_PRECONDITION naming a grant with a rollover fraction that starts in the contract at or after
        `end_ms`: its start would lie in no contract, so it would have no billing period to roll over at the end of
        (GrantCredits refuses such a grant for the same reason)."""
        for grant in self.state.accounts[contract.customer_id].grants:
            if grant.rollover_fraction > 0 and grant.starts_at_ms >= end_ms and contract.covers(grant.starts_at_ms):
                raise FailedPrecondition(
                    f"contract {contract.id!r} cannot end at {iso(end_ms)}: grant {grant.id!r} has a rollover "
                    f"fraction and starts at {iso(grant.starts_at_ms)}, under it; it rolls over at the end of the "
                    "billing period it starts in, and its start would lie in no contract"
                )

    def _check_no_usage_from(self, contract: Contract, end_ms: int) -> None:
        """FAILED_PRECONDITION naming the latest hour holding usage of the contract at or after `end_ms`: usage is kept
        by the hour, so an hour holding the new end off the hour counts whole (which of its units came before the end
        is not known). Events dated ahead of the clock (within --future-skew-s) can be there."""
        assert self.hours_recorded is not None, "the engine reads the kernel's hours through it (engine/billing.py)"
        recorded = self.hours_recorded(contract.customer_id)
        hour = latest_hour_across(recorded, max(end_ms, contract.starting_at_ms), contract.ending_before_ms)
        if hour is not None:
            raise FailedPrecondition(
                f"contract {contract.id!r} cannot end at {iso(end_ms)}: usage is recorded under it in the hour "
                f"from {iso(hour)}, at or after that end (an hour's usage counts whole)"
            )


# Overrides a contract holds at most: each is read where its contract's usage is priced, and GetContract and
# AddOverride answer with all of them. Checked where AddOverride requests arrive (server/services/contracts.py), and
# again when a command the server marked `overrides_bounded` is applied (requests arriving together all pass the
# first check); commands journaled before the mark replay as they were.
OVERRIDES_PER_CONTRACT_MAX = 1_000


def overrides_full(contract: Contract) -> str:
    """Why another override on `contract`, which holds OVERRIDES_PER_CONTRACT_MAX, is refused."""
    return (
        f"contract {contract.id!r} holds {len(contract.overrides)} overrides, the most a contract may hold "
        f"({OVERRIDES_PER_CONTRACT_MAX}): no more can be added"
    )


def override_id(c: cmd.AddOverride) -> str:
    """The id the override of `c` takes: its own, or when empty one named after its content, so that two overrides
    alike in everything are one and a retry finds this one."""
    return c.override.id or "override-" + fingerprint(c).hex()[:16]
