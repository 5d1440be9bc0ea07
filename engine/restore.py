"""A control-plane snapshot decoded into the state that replaying its journal would have built, objects shared alike.

Decoded whole, a snapshot gives every occurrence of a customer's or contract's id its own string (the dicts' keys,
the records' ids and the references to them), and every time, amount, decimal and repeated text its own object,
where the commands that built the state share them (engine/control.py shared_int, engine/grants.py
_shared_decimal): 2,296 B of heap a customer restored against about 940 replayed, at 20,000 customers here. So
the customers, contracts and accounts are decoded a record at a time, each record made to share at once: the
objects it drops are freed before the next record is decoded, which reuses their memory (sharing after a whole
decode would leave them as holes all over the heap). Values and the order of every dict are unchanged, so the
state encodes to the same bytes.
"""

from __future__ import annotations

import typing
from decimal import Decimal
from typing import Any

import msgspec

from engine.contracts import Contract, Customer
from engine.control import Account, BillingState, share_empty_dicts, shared_int
from engine.customers import NO_ATTRIBUTES

_RECORD_DICTS = ("customers", "contracts", "accounts")


def _raw_state_type() -> type[msgspec.Struct]:
    """BillingState with its record dicts left as raw JSON per entry (decoded by `decode_state`)."""
    hints = typing.get_type_hints(BillingState)
    fields: list[tuple[str, Any, Any]] = []
    for field in msgspec.structs.fields(BillingState):
        kind = dict[str, msgspec.Raw] if field.name in _RECORD_DICTS else hints[field.name]
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        else:
            default = msgspec.field(default_factory=field.default_factory)
        fields.append((field.name, kind, default))
    return msgspec.defstruct("RawBillingState", fields)


_raw_state = msgspec.json.Decoder(_raw_state_type())
_customer = msgspec.json.Decoder(Customer)
_contract = msgspec.json.Decoder(Contract)
_account = msgspec.json.Decoder(Account)


def decode_state(blob: bytes) -> BillingState:
    """`msgspec.json.decode(blob, type=BillingState)`, equal to it, with the objects shared as replay shares them."""
    raw: Any = _raw_state.decode(blob)
    values = {field: getattr(raw, field) for field in raw.__struct_fields__ if field not in _RECORD_DICTS}
    state = BillingState(**values)
    shared = _Shared()
    state.customers = {key: shared.customer(key, _customer.decode(entry)) for key, entry in raw.customers.items()}
    raw.customers = None  # its raw entries freed before the next dict's records are decoded
    state.contracts = {
        key: shared.contract(state, key, _contract.decode(entry)) for key, entry in raw.contracts.items()
    }
    raw.contracts = None
    accounts: dict[str, Account] = {}
    for key, entry in raw.accounts.items():
        account = shared.account(state, key, _account.decode(entry))
        accounts[account.customer_id] = account
    state.accounts = accounts
    return state


class _Shared:
    """What one decoding shares: the few texts and decimals that records repeat (currencies, overage prices, paid
    amounts), and the ids, taken from the records decoded before."""

    def __init__(self) -> None:
        self.texts: dict[str, str] = {}
        # By their text, not their value: Decimal("0") and Decimal("0.0") are equal but encode differently.
        self.decimals: dict[str, Decimal] = {}

    def text(self, value: str) -> str:
        return self.texts.setdefault(value, value)

    def decimal(self, value: Decimal) -> Decimal:
        return self.decimals.setdefault(str(value), value)

    def customer(self, key: str, customer: Customer) -> Customer:
        msgspec.structs.force_setattr(customer, "id", key)  # frozen, and not yet seen by anyone
        msgspec.structs.force_setattr(customer, "created_at_ms", shared_int(customer.created_at_ms))
        if not customer.attributes:
            msgspec.structs.force_setattr(customer, "attributes", NO_ATTRIBUTES)
        return customer

    def contract(self, state: BillingState, key: str, contract: Contract) -> Contract:
        contract.id = key
        customer = state.customers.get(contract.customer_id)
        contract.customer_id = customer.id if customer is not None else contract.customer_id
        contract.rate_card_id = self.text(contract.rate_card_id)
        contract.currency = self.text(contract.currency)
        contract.overage_price = self.text(contract.overage_price)
        contract.starting_at_ms = shared_int(contract.starting_at_ms)
        contract.created_at_ms = shared_int(contract.created_at_ms)
        return contract

    def account(self, state: BillingState, key: str, account: Account) -> Account:
        customer = state.customers.get(key)
        account.customer_id = customer.id if customer is not None else key
        share_empty_dicts(account)
        for grant in account.grants:
            grant.customer_id = account.customer_id
            contract = state.contracts.get(grant.contract_id)
            grant.contract_id = contract.id if contract is not None else grant.contract_id
            grant.amount = shared_int(grant.amount)
            grant.remaining = shared_int(grant.remaining)
            grant.starts_at_ms = shared_int(grant.starts_at_ms)
            grant.created_at_ms = shared_int(grant.created_at_ms)
            grant.paid_amount = self.decimal(grant.paid_amount)
            grant.rollover_fraction = self.decimal(grant.rollover_fraction)
        return account
