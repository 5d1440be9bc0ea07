"""The audit log: one entry per applied admin command, and the target each command names."""

from __future__ import annotations

import msgspec

from engine import commands as cmd
from engine.contracts import Contract
from engine.control import AuditEntry, ControlPlane
from engine.ratecard import Version

AUDIT_DIFF_BYTES_MAX = 64 * 1024


class AuditLog(ControlPlane):
    def _audit(self, command: cmd.AdminCommand, seq: int, result: object) -> None:
        fields = msgspec.to_builtins(command)
        fields.pop("at_ms", None)
        fields.pop("actor", None)
        diff = msgspec.json.encode(fields).decode()[:AUDIT_DIFF_BYTES_MAX]
        action = type(command).__name__
        target = _audit_target(command, result)
        self.state.audit.append(AuditEntry(seq, command.at_ms, command.actor, action, target, diff))


def audit_target(command: cmd.AdminCommand, result: object) -> str:
    """What an admin command changed, as the audit log and the operator's log name it ("grant/g-1")."""
    return _audit_target(command, result)


def _audit_target(command: cmd.AdminCommand, result: object) -> str:
    match command:
        case cmd.CreateCustomer(id=ident):
            return f"customer/{ident}"
        case cmd.CreateProduct(id=ident):
            return f"product/{ident}"
        case cmd.CreateRateCard(id=ident):
            return f"rate_card/{ident}"
        case cmd.CreateDraftVersion(rate_card_id=card_id):
            assert isinstance(result, Version)
            return f"rate_card/{card_id}/version/{result.number}"
        case cmd.PublishVersion(rate_card_id=card_id, version=number):
            return f"rate_card/{card_id}/version/{number}"
        case cmd.CreateContract():
            assert isinstance(result, Contract)
            return f"contract/{result.id}"
        case cmd.AddOverride(contract_id=ident):
            return f"contract/{ident}"
        case cmd.GrantCredits(id=ident):
            return f"grant/{ident}"
    return ""
