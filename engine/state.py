"""The control plane's state machine: admin command -> (State', Result), deterministic and free of I/O.

`Engine.apply(command, seq)` validates a command completely before changing anything, so a command that
raises an EngineError has changed nothing and is not journaled. The commands live by concept in
engine/catalogue.py, versions.py, customers.py, grants.py and audit.py, over the state of
engine/control.py. Usage, grant balances and dedupe live in the rating kernel (engine/billing.py keeps the
two in step); `Engine` adds indexes rebuilt from the state.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from engine import commands as cmd
from engine.alerts import AlertRule, check_rules_room, delete_rule, parse_rule
from engine.audit import AuditLog
from engine.catalogue import CatalogueCommands
from engine.contracts import Contract
from engine.control import BillingState, check_applied_id, share_empty_dicts
from engine.customers import CustomerCommands
from engine.errors import AlreadyExists, NotFound, Repeated
from engine.grants import GrantCommands
from engine.invoices import AdjustmentsReader
from engine.invoicing import InvoiceCommands
from engine.restore import decode_state
from engine.rollback import RollbackCommands
from engine.versions import VersionCommands


@dataclass
class Engine(
    CatalogueCommands, VersionCommands, CustomerCommands, GrantCommands, AuditLog, RollbackCommands, InvoiceCommands
):
    state: BillingState = field(default_factory=BillingState)
    # A customer's one contract, or a tuple of its few (engine/control.py ControlPlane.contracts_of).
    _contracts_by_customer: dict[str, Contract | tuple[Contract, ...]] = field(default_factory=dict)
    _grant_ids: set[str] = field(default_factory=set)
    period_adjustments: AdjustmentsReader | None = None  # the kernel's re-rating adjustments (engine/billing.py)
    # Contracts by their first unclosed period's end.
    _due_heap: list[tuple[int, str]] | None = None

    def __post_init__(self) -> None:
        self._reindex()

    def reset(self, state: BillingState) -> None:
        """Replaces the whole state (recovery after a failed commit) and rebuilds what derives from it."""
        self.state = state
        self._reindex()

    # Snapshots ---------------------------------------------------------------------------------------------

    def encode_snapshot(self) -> bytes:
        # JSON, not msgpack: amounts in picos pass 2^64 (a grant of 20 million credits is 2 x 10^19 picos),
        # and msgpack integers stop at 64 bits. Fields of older snapshots that this state no longer holds
        # (accounts' usage aggregates and period totals, from before the kernel) are ignored on decoding.
        return msgspec.json.encode(self.state)

    @classmethod
    def from_snapshot(cls, blob: bytes) -> Engine:
        if blob[:1] != b"{":  # written before snapshots were JSON: a msgpack map
            return cls(msgspec.msgpack.decode(blob, type=BillingState))
        return cls(decode_state(blob))

    def _reindex(self) -> None:
        self._seal_audit()  # a snapshot from before audit chunks holds its whole log as entries
        self._contracts_by_customer.clear()
        for contract in self.state.contracts.values():
            self._index_contract(contract)
        grant_ids: set[str] = set()
        for account in self.state.accounts.values():
            grant_ids.update(grant.id for grant in account.grants)
            share_empty_dicts(account)
        self._grant_ids = grant_ids
        self._due_heap = None

    # Applying commands -------------------------------------------------------------------------------------

    def apply(self, command: cmd.AdminCommand, seq: int) -> object:
        """Applies one command as journal record `seq`; raises EngineError (having changed nothing) to refuse it."""
        assert seq == self.state.last_seq + 1, f"commands apply in journal order: {seq} after {self.state.last_seq}"
        result = self._apply_admin(command)
        self._audit(command, seq, result)
        self.state.last_seq = seq
        return result

    def _apply_admin(self, command: cmd.AdminCommand) -> object:
        match command:
            case cmd.CreateCustomer():
                return self._create_customer(command)
            case cmd.CreateProduct():
                return self._create_product(command)
            case cmd.CreateRateCard():
                return self._create_rate_card(command)
            case cmd.CreateDraftVersion():
                return self._create_draft(command)
            case cmd.PublishVersion():
                return self._publish(command)
            case cmd.CreateContract():
                contract = self._create_contract(command)
                self._note_contract(contract)
                return contract
            case cmd.AddOverride():
                return self._add_override(command)
            case cmd.EndContract():
                return self._end_contract(command)
            case cmd.EndOverride():
                return self._end_override(command)
            case cmd.GrantCredits():
                return self._grant_credits(command)
            case cmd.ExpireGrant():
                return self._expire_grant(command)
            case cmd.RollbackRateCard():
                return self._rollback(command)
            case cmd.CreateAlert():
                return self._create_alert(command)
            case cmd.DeleteAlertRule():
                return self._delete_alert_rule(command)
            case cmd.ClosePeriod():
                return self._close_period(command)
            case cmd.CloseDuePeriods():
                return self._close_due_periods(command)
        raise AssertionError(f"unknown command {type(command).__name__}")

    def _create_alert(self, c: cmd.CreateAlert) -> AlertRule:
        if c.id:
            check_applied_id(c.id, "id")
        if c.customer_id and c.customer_id not in self.state.customers:
            check_applied_id(c.customer_id, "customer_id")  # not an id at all: INVALID_ARGUMENT, as for every id
            self.customer(c.customer_id)  # NotFound
        rule = parse_rule(c.id, c.customer_id, c.all_customers, c.alert_type, c.threshold, self.state.last_seq + 1)
        rules = self.state.alerts.rules
        held = rules.get(rule.id)
        if held is not None:
            if msgspec.structs.replace(held, created_seq=rule.created_seq) == rule:
                raise Repeated(held)  # the same rule again (a retry): answered as the first call was
            raise AlreadyExists(f"alert rule {rule.id!r} already exists with another scope, type or threshold")
        if rule.id in self.state.alerts.deleted:
            # Not even the same rule again: a late retry of the CreateAlert must not bring back a deleted rule.
            how = "under another id" if c.id else "with an id (without one, its content names the deleted rule)"
            raise AlreadyExists(
                f"alert rule {rule.id!r} was deleted, and a deleted rule's id is not used again: create the rule {how}"
            )
        if c.rules_bounded:
            check_rules_room(rules, rule)
        rules[rule.id] = rule
        return rule

    def _delete_alert_rule(self, c: cmd.DeleteAlertRule) -> AlertRule:
        check_applied_id(c.id, "id")
        book = self.state.alerts
        if c.id in book.rules:
            return delete_rule(book, c.id)
        deleted = book.deleted.get(c.id)
        if deleted is not None:
            raise Repeated(deleted)  # deleted already (a retry): answered as the first call was
        raise NotFound(f"alert rule {c.id!r} does not exist")
