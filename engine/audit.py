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

import msgspec

from engine import commands as cmd
from engine.contracts import Contract
from engine.control import AuditChunk, AuditEntry, ControlPlane
from engine.ratecard import Version

AUDIT_DIFF_BYTES_MAX = 64 * 1024
# 512 seeding entries seal in about a millisecond; more per chunk compresses little better, and a page read
# decompresses a whole chunk.
AUDIT_CHUNK_ENTRIES = 512
# A chunk's bytes must be the same wherever it is sealed (replay compares states): a fixed level.
AUDIT_ZLIB_LEVEL = 6
_TARGET_SEPARATOR = "\n"

_Row = tuple[int, int, str, str, str]  # seq, at_ms, actor, action, diff
_rows_encoder = msgspec.msgpack.Encoder()
_rows_decoder = msgspec.msgpack.Decoder(list[_Row])


class AuditLog(ControlPlane):
    def _audit(self, command: cmd.AdminCommand, seq: int, result: object) -> None:
        fields = msgspec.to_builtins(command)
        fields.pop("at_ms", None)
        fields.pop("actor", None)
        diff = msgspec.json.encode(fields).decode()[:AUDIT_DIFF_BYTES_MAX]
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

    def audit_entries(self, after_seq: int = 0, target: str = "", limit: int | None = None) -> list[AuditEntry]:
        """The first `limit` entries (all if None) with seq > `after_seq` whose target starts with `target`,
        oldest first, decompressing only the chunks the page reaches."""
        found: list[AuditEntry] = []
        chunks = self.state.audit_chunks
        start = bisect.bisect_right(chunks, after_seq, key=_last_seq)
        for index in range(start, len(chunks)):
            if limit is not None and len(found) >= limit:
                return found
            _select(found, unseal_chunk(chunks[index], target), after_seq, target, limit)
        _select(found, self.state.audit, after_seq, target, limit)
        return found


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


def _last_seq(chunk: AuditChunk) -> int:
    return chunk.last_seq


def _select(
    found: list[AuditEntry], entries: Iterable[AuditEntry], after_seq: int, target: str, limit: int | None
) -> None:
    for entry in entries:
        if limit is not None and len(found) >= limit:
            return
        if entry.seq > after_seq and entry.target.startswith(target):
            found.append(entry)


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
        case cmd.SetTopUpPolicy(contract_id=ident):
            return f"contract/{ident}/top_up"
    return ""
