"""The journal's record formats (what one journal record holds, and the stored formats of earlier releases it
still reads), and their msgpack encoding."""

from __future__ import annotations

import msgspec

from engine import commands as cmd
from engine.alerts import FiredAlert


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    """An ingest command's result as journaled by the previous release (journal format 1; read by migrate)."""

    accepted: int
    duplicates: int
    rejected: int


class UsageRecord(msgspec.Struct, frozen=True, array_like=True):
    """A usage batch as journaled: the bytes as received, the writer's receive time, the kernel's digest (which
    replay asserts), and the ack's counts (for tools that read the journal without the kernel).
    `top_ups_in_billed_period`: the rule the batch was rated by (Billing.ingest), True for every batch the server
    rates; absent (False) from the records of earlier releases, which replay by the rule of then.
    `returned_expired_credit_breaks`, `reservation_ids_bounded`, `returned_rolled_credit_breaks`,
    `duplicates_before_skew` and `refunds_netted` likewise (Billing.ingest): True for every batch the server rates."""

    batch: bytes
    received_ms: int
    digest: bytes
    accepted: int
    duplicates: int
    rejected: int
    top_ups_in_billed_period: bool = False
    # The --future-skew-s (in ms) the batch was rated under, which replay rates it under again, so that a start
    # with another skew replays the journal as it was written. None in records of earlier releases: replayed
    # under the skew the server starts with, as they always were.
    future_skew_ms: int | None = None
    returned_expired_credit_breaks: bool = False
    reservation_ids_bounded: bool = False
    returned_rolled_credit_breaks: bool = False
    duplicates_before_skew: bool = False
    refunds_netted: bool = False


_MSGPACK_INT_MIN = -(2**63)
_MSGPACK_INT_MAX = 2**64 - 1


class RerationDone(msgspec.Struct, frozen=True, array_like=True):
    """A deferred re-rating's completion (engine/pending.py): the publish it completes, the time its balance rules
    were evaluated, and what the whole re-rating did (customers, buckets, events, amount delta, closed buckets,
    events and amount), which replay asserts."""

    publish_seq: int
    at_ms: int
    done: tuple[int, int, int, int, int, int, int]
    # (amount delta, closed amount) in picos as decimal text, when either is outside msgpack's integers (-2^63 to
    # 2^64 - 1: a re-rating of some 9.2 million units down, or 18.4 million up): `done` then holds 0 for both.
    # None (every other record, and those of earlier releases): `done` holds them.
    amounts: tuple[str, str] | None = None

    @classmethod
    def of(cls, publish_seq: int, at_ms: int, done: tuple[int, int, int, int, int, int, int]) -> RerationDone:
        """The record of these totals, amounts that msgpack cannot hold as decimal text."""
        delta, closed = done[3], done[6]
        if all(_MSGPACK_INT_MIN <= amount <= _MSGPACK_INT_MAX for amount in (delta, closed)):
            return cls(publish_seq, at_ms, done)
        return cls(publish_seq, at_ms, (*done[:3], 0, *done[4:6], 0), (str(delta), str(closed)))

    @property
    def totals(self) -> tuple[int, int, int, int, int, int, int]:
        """What the whole re-rating did: `done` with the amounts of `amounts` when it holds them."""
        if self.amounts is None:
            return self.done
        delta, closed = (int(text) for text in self.amounts)
        return (*self.done[:3], delta, *self.done[4:6], closed)


class JournalRecord(msgspec.Struct, frozen=True, array_like=True):
    """One record: an admin command, or (since journal format 2) a usage batch. Stored formats only gain fields."""

    command: cmd.Command | None = None
    outcome: Outcome | None = None  # format 1 usage records only
    usage: UsageRecord | None = None
    # The alerts this record's change fired (engine/alerts.py), in seq order: replay must fire the same.
    alerts: list[FiredAlert] = []
    # A publish whose re-rating runs after it, interleaved with usage (engine/pending.py); a later `rerated`
    # record completes it. False: the record holds the re-rating whole (earlier releases, or nothing to re-rate).
    deferred: bool = False
    rerated: RerationDone | None = None


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(JournalRecord)


def encode_record(record: JournalRecord) -> bytes:
    return _encoder.encode(record)


def decode_record(blob: bytes) -> JournalRecord:
    return _decoder.decode(blob)
