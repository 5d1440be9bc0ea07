"""The audit log: one entry per applied admin command, and the target each command names.

Entries are sealed AUDIT_CHUNK_ENTRIES at a time into compressed chunks (`AuditChunk`), leaving only the open
tail as objects: a million customers leave three million entries, 1.2 KiB of heap each as objects and a few
dozen bytes sealed. A chunk is sealed when the tail fills, whether its entries arrive by command or by replay,
so a state rebuilt from the journal holds the same chunks as the snapshot. A read decompresses only the chunks
its page reaches (found by seq), and a read by target skips the chunks whose targets do not match.
"""

from __future__ import annotations

import bisect
import zlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import msgspec

from engine import commands as cmd
from engine.alerts import THRESHOLD_TYPES, AlertRule
from engine.contracts import Contract, Customer
from engine.control import AuditChunk, AuditEntry, ControlPlane
from engine.ledger import Grant
from engine.money import format_picos
from engine.ratecard import RateCard, Version
from engine.versions import PublishResult

# An entry's diff is at most this many bytes of JSON (a bigger one is summarised, still valid JSON: capped_diff).
AUDIT_DIFF_BYTES_MAX = 64 * 1024
# A GetAuditLog page opens at most this many sealed chunks (8,192 entries), so a filtered read of a long log holds
# the event loop a few milliseconds at most (about 0.25 ms a chunk whose rows are decoded, 0.07 ms one skipped by
# its bytes, here) and says where to go on.
AUDIT_PAGE_CHUNKS_MAX = 16
# How an actor reads when an API key acted for a person its x-actor header named (server/auth.py).
ACTOR_VIA = " via "
# 512 seeding entries seal in about a millisecond; more per chunk compresses little better, and a page read
# decompresses a whole chunk.
AUDIT_CHUNK_ENTRIES = 512
# A chunk's bytes must be the same wherever it is sealed (replay compares states): a fixed level.
AUDIT_ZLIB_LEVEL = 6
_TARGET_SEPARATOR = "\n"

_Row = tuple[int, int, str, str, str]  # seq, at_ms, actor, action, diff
_rows_encoder = msgspec.msgpack.Encoder()
_json = msgspec.json.Encoder()
_rows_decoder = msgspec.msgpack.Decoder(list[_Row])


class AuditLog(ControlPlane):
    def _audit(self, command: cmd.AdminCommand, seq: int, result: object) -> None:
        fields = msgspec.to_builtins(command)
        for name in ("at_ms", "actor", *cmd.SERVER_SET_FIELDS):
            fields.pop(name, None)
        fields.update(_result_fields(command, result))
        diff = capped_diff(fields)
        action = type(command).__name__
        target = _audit_target(command, result)
        self.state.audit.append(AuditEntry(seq, command.at_ms, command.actor, action, target, diff))
        if len(self.state.audit) >= AUDIT_CHUNK_ENTRIES:
            self._seal_audit()

    def _seal_audit(self) -> None:
        """Seals the tail's full chunks: after each command, and on loading a snapshot written before chunks
        (its whole log in the tail), which then holds the chunks its replay would have."""
        tail = self.state.audit
        sealed = 0
        while len(tail) - sealed >= AUDIT_CHUNK_ENTRIES:
            self.state.audit_chunks.append(seal_chunk(tail[sealed : sealed + AUDIT_CHUNK_ENTRIES]))
            sealed += AUDIT_CHUNK_ENTRIES
        del tail[:sealed]

    def audit_entries(
        self, after_seq: int = 0, target: str = "", limit: int | None = None, where: AuditFilter | None = None
    ) -> list[AuditEntry]:
        """The first `limit` entries (all if None) with seq > `after_seq` about `target` (see `about`) that
        `where` keeps, oldest first, decompressing only the chunks the page reaches."""
        return self.audit_page(after_seq, target, limit, where)[0]

    def audit_page(
        self,
        after_seq: int = 0,
        target: str = "",
        limit: int | None = None,
        where: AuditFilter | None = None,
        chunks_max: int | None = None,
    ) -> tuple[list[AuditEntry], int]:
        """`audit_entries`, and where the next page starts: the seq to pass as `after_seq` (0 when nothing is
        left). At most `chunks_max` sealed chunks are decompressed (a read on the event loop stays short): a page
        that stops there may hold fewer than `limit` entries, and the next seq says where to go on."""
        found: list[AuditEntry] = []
        want = None if limit is None else limit + 1  # one more than the page: is there a next page?
        chunks = self.state.audit_chunks
        start = bisect.bisect_right(chunks, after_seq, key=_last_seq)
        for opened, index in enumerate(range(start, len(chunks))):
            if want is not None and len(found) >= want:
                break
            if chunks_max is not None and opened >= chunks_max:
                return found, chunks[index - 1].last_seq  # go on after the last chunk this page opened
            _select(found, _chunk_entries(chunks[index], target, where), after_seq, target, want, where)
        else:
            _select(found, self.state.audit, after_seq, target, want, where)
        if limit is not None and len(found) > limit:
            del found[limit:]
            return found, found[-1].seq
        return found, 0


def seal_chunk(entries: list[AuditEntry]) -> AuditChunk:
    targets = _TARGET_SEPARATOR.join(entry.target for entry in entries).encode()
    rows = _rows_encoder.encode([(e.seq, e.at_ms, e.actor, e.action, e.diff) for e in entries])
    return AuditChunk(
        entries[0].seq,
        entries[-1].seq,
        zlib.compress(targets, AUDIT_ZLIB_LEVEL),
        zlib.compress(rows, AUDIT_ZLIB_LEVEL),
    )


def unseal_chunk(chunk: AuditChunk, target: str = "") -> list[AuditEntry]:
    """The chunk's entries; none when `target` is given and no entry's target can start with it."""
    targets = zlib.decompress(chunk.targets).decode()
    if target and _TARGET_SEPARATOR + target not in _TARGET_SEPARATOR + targets:
        return []
    rows = _rows_decoder.decode(zlib.decompress(chunk.rows))
    return [
        AuditEntry(seq, at_ms, actor, action, entry_target, diff)
        for (seq, at_ms, actor, action, diff), entry_target in zip(rows, targets.split(_TARGET_SEPARATOR), strict=True)
    ]


def _chunk_entries(chunk: AuditChunk, target: str, where: AuditFilter | None) -> list[AuditEntry]:
    """The chunk's entries a filtered read may keep, built as objects only for the rows that match: a chunk
    whose bytes cannot hold the actor or action asked for is skipped before its rows are decoded."""
    if where is None:
        return unseal_chunk(chunk, target)
    targets = zlib.decompress(chunk.targets).decode()
    if target and _TARGET_SEPARATOR + target not in _TARGET_SEPARATOR + targets:
        return []
    rows = zlib.decompress(chunk.rows)
    # msgpack holds a text's UTF-8 bytes as they are: a chunk without them has no entry by that actor or action.
    if (where.actor and where.actor.encode() not in rows) or (where.action and where.action.encode() not in rows):
        return []
    return [
        AuditEntry(seq, at_ms, actor, action, entry_target, diff)
        for (seq, at_ms, actor, action, diff), entry_target in zip(
            _rows_decoder.decode(rows), targets.split(_TARGET_SEPARATOR), strict=True
        )
        if entry_target.startswith(target) and where.keeps_row(actor, action, at_ms)
    ]


def _last_seq(chunk: AuditChunk) -> int:
    return chunk.last_seq


def _select(
    found: list[AuditEntry],
    entries: Iterable[AuditEntry],
    after_seq: int,
    target: str,
    limit: int | None,
    where: AuditFilter | None,
) -> None:
    for entry in entries:
        if limit is not None and len(found) >= limit:
            return
        if entry.seq > after_seq and about(entry.target, target) and (where is None or where.keeps(entry)):
            found.append(entry)


def about(entry_target: str, target: str) -> bool:
    """Whether an entry is about `target`: its target starts with it ("customer/" holds every customer,
    "rate_card/gpt" holds "rate_card/gpt/version/2" and "rate_card/gpt4" too); an empty `target` holds all."""
    return entry_target.startswith(target)


@dataclass(frozen=True, slots=True)
class AuditFilter:
    """GetAuditLog's filters beyond the target; an empty or None field keeps every entry."""

    actor: str = ""
    action: str = ""
    start_ms: int | None = None  # at or after
    end_ms: int | None = None  # before

    def keeps(self, entry: AuditEntry) -> bool:
        return self.keeps_row(entry.actor, entry.action, entry.at_ms)

    def keeps_row(self, actor: str, action: str, at_ms: int) -> bool:
        if self.action and action != self.action:
            return False
        if self.start_ms is not None and at_ms < self.start_ms:
            return False
        if self.end_ms is not None and at_ms >= self.end_ms:
            return False
        return not self.actor or acted_by(actor, self.actor)


def acted_by(entry_actor: str, actor: str) -> bool:
    """An entry made by `actor`: its whole actor, or one side of "PERSON via KEY" (the person an x-actor header
    named, or the API key that sent it)."""
    return entry_actor == actor or entry_actor.startswith(actor + ACTOR_VIA) or entry_actor.endswith(ACTOR_VIA + actor)


def capped_diff(fields: dict[str, Any]) -> str:
    """The fields as JSON, whole when they fit in AUDIT_DIFF_BYTES_MAX bytes; otherwise still valid JSON of at
    most that size: the largest field shortened (a list or map to its first entries, a text to its start) until
    it fits, and a "truncated" entry saying how big the whole was and what each shortened field kept."""
    whole = _json.encode(fields)
    if len(whole) <= AUDIT_DIFF_BYTES_MAX:
        return whole.decode()
    kept = dict(fields)
    notes: dict[str, dict[str, int]] = {}
    summary: dict[str, Any] = {"bytes": len(whole), "fields": notes}
    while len(encoded := _json.encode({**kept, "truncated": summary})) > AUDIT_DIFF_BYTES_MAX:
        name = max(kept, key=lambda key: len(_json.encode(kept[key])))
        value = kept[name]
        total = notes.get(name, {}).get("of", len(value) if isinstance(value, list | tuple | dict | str) else 1)
        if isinstance(value, list | tuple) and value:  # to_builtins keeps a command's tuples as tuples
            kept[name] = list(value[: len(value) // 2])
        elif isinstance(value, dict) and value:
            kept[name] = dict(list(value.items())[: len(value) // 2])
        elif isinstance(value, str) and value:
            kept[name] = value[: len(value) // 2]
        else:
            kept[name] = None
        size = kept[name]
        notes[name] = {"of": total, "kept": len(size) if isinstance(size, list | tuple | dict | str) else 0}
    return encoded.decode()


def _result_fields(command: cmd.AdminCommand, result: object) -> dict[str, Any]:
    """What a command's own fields do not say: for a publish or rollback, the instant it took effect (the hour it
    was applied in when the request named none); for a rollback, the version it made and the one it replaced; for a
    deleted alert rule, the rule, in CreateAlert's fields; for a contract or alert rule whose request left out its id
    (or a contract its start, overage price or currency), an override its id, a grant its customer or start, or a
    customer or rate card its name, what the server gave it, once the server marks the command
    so (`applied_audited`: older records replay to the entries they had)."""
    if isinstance(command, cmd.CreateCustomer | cmd.CreateRateCard) and command.applied_audited:
        assert isinstance(result, Customer | RateCard)
        return {"name": result.name}
    if isinstance(command, cmd.CreateContract) and command.applied_audited and isinstance(result, Contract):
        return {
            "id": result.id,
            "starting_at_ms": result.starting_at_ms,
            "overage_price": result.overage_price,
            "currency": result.currency,
        }
    if isinstance(command, cmd.CreateAlert) and command.applied_audited and isinstance(result, AlertRule):
        return {"id": result.id}
    if isinstance(command, cmd.AddOverride) and command.applied_audited and isinstance(result, Contract):
        # The override just added is the contract's last; without an id in the request it was named after it.
        return {"override": {**msgspec.to_builtins(command.override), "id": result.overrides[-1].id}}
    if isinstance(command, cmd.GrantCredits) and command.applied_audited and isinstance(result, Grant):
        return {"customer_id": result.customer_id, "starts_at_ms": result.starts_at_ms}
    if isinstance(command, cmd.DeleteAlertRule) and isinstance(result, AlertRule):
        threshold = format_picos(result.threshold_picos) if result.type in THRESHOLD_TYPES else ""
        return {
            "customer_id": result.customer_id,
            "all_customers": not result.customer_id,
            "alert_type": result.type.value,
            "threshold": threshold,
        }
    if not isinstance(command, cmd.PublishVersion | cmd.RollbackRateCard) or not isinstance(result, PublishResult):
        return {}
    version = result.version
    fields: dict[str, Any] = {"effective_from_ms": version.effective_from_ms}
    if isinstance(command, cmd.RollbackRateCard):
        fields.update(version=version.number, rollback_from=version.rollback_from, rollback_to=version.rollback_to)
    return fields


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
        case (
            cmd.AddOverride(contract_id=ident) | cmd.EndContract(contract_id=ident) | cmd.EndOverride(contract_id=ident)
        ):
            return f"contract/{ident}"
        case cmd.GrantCredits(id=ident) | cmd.ExpireGrant(grant_id=ident):
            return f"grant/{ident}"
        case cmd.RollbackRateCard(rate_card_id=card_id):
            assert isinstance(result, PublishResult)
            return f"rate_card/{card_id}/version/{result.version.number}"
        case cmd.CreateAlert():
            return f"alert/{getattr(result, 'id', command.id)}"
        case cmd.DeleteAlertRule(id=ident):
            return f"alert/{ident}"
        case cmd.ClosePeriod(customer_id=ident):
            return f"customer/{ident}/invoice/{getattr(result, 'number', '')}"
        case cmd.CloseDuePeriods():
            return "invoices"
        case cmd.SetTopUpPolicy(contract_id=ident):
            return f"contract/{ident}/top_up"
    return ""
