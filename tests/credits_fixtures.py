"""A billing machine (engine.billing.Billing) over a World's control plane that records what it journals, so a
test can drive reservations, top-ups and the clock as the server's writer would, then replay the record."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine import credits
from engine.billing import Billing
from engine.errors import Repeated
from tests.engine_fixtures import ACTOR, World

# A batch: data, received_ms, digest, its top-up rule, its rule for credit a settled hold gives back to an expired grant,
# its rule for credit a refund gives back to a grant that rolled over.
Record = cmd.AdminCommand | tuple[bytes, int, bytes, bool, bool, bool]


@dataclass
class Ledger:
    world: World
    billing: Billing = field(init=False)
    # What the writer would journal after the world's own commands: kernel commands and usage batches.
    records: list[Record] = field(default_factory=list)
    batches: int = 0

    def __post_init__(self) -> None:
        self.billing = Billing(self.world.engine)

    def run(self, command: cmd.AdminCommand) -> object:
        """Applies a command as the writer does: a Repeated answer takes no record."""
        try:
            result = self.billing.apply(command, self.billing.last_seq + 1)
        except Repeated as repeat:
            return repeat.result
        self.records.append(command)
        return result

    def reserve(
        self,
        reservation_id: str,
        tokens: float,
        at_ms: int,
        *,
        ttl_ms: int = 60_000,
        customer_id: str = "acme",
        dimensions: Mapping[str, str] | None = None,
    ) -> credits.Reservation:
        command = cmd.Reserve(
            at_ms, ACTOR, customer_id, reservation_id, "ai", dict(dimensions or {}), {"tokens": tokens}, ttl_ms
        )
        result = self.run(command)
        assert isinstance(result, credits.Reservation)
        return result

    def release(
        self, reservation_id: str, at_ms: int, customer_id: str = "acme", *, expired_credit_breaks: bool = False
    ) -> int:
        """ReleaseReservation without the field the server sets, or with `expired_credit_breaks` as it sets it."""
        command = cmd.ReleaseReservation(
            at_ms, ACTOR, customer_id, reservation_id, expired_credit_breaks=expired_credit_breaks
        )
        result = self.run(command)
        assert isinstance(result, credits.Released)
        return result.released

    def advance(self, at_ms: int, *, rollover_ids_distinct: bool = False) -> credits.Advanced:
        """AdvanceClock without the fields the server sets, or with `rollover_ids_distinct` as the server sets it."""
        result = self.run(cmd.AdvanceClock(at_ms, "clock", rollover_ids_distinct=rollover_ids_distinct))
        assert isinstance(result, credits.Advanced)
        return result

    def ingest(
        self,
        events: Sequence[usage_pb2.UsageEvent],
        received_ms: int,
        *,
        top_ups_in_billed_period: bool = False,
        returned_expired_credit_breaks: bool = False,
        returned_rolled_credit_breaks: bool = False,
    ) -> usage_pb2.IngestAck:
        """Rates a batch as the writer does; `top_ups_in_billed_period`, `returned_expired_credit_breaks` and
        `returned_rolled_credit_breaks` as the server sets them (Billing.ingest)."""
        self.batches += 1
        data = usage_pb2.UsageBatch(batch_id=f"b{self.batches}", events=list(events)).SerializeToString()
        rules = (top_ups_in_billed_period, returned_expired_credit_breaks, returned_rolled_credit_breaks)
        done = self.billing.ingest(
            data,
            received_ms,
            top_ups_in_billed_period=top_ups_in_billed_period,
            returned_expired_credit_breaks=returned_expired_credit_breaks,
            returned_rolled_credit_breaks=returned_rolled_credit_breaks,
        )
        if done.accepted:
            self.records.append((data, received_ms, done.digest, *rules))
        return usage_pb2.IngestAck.FromString(done.ack)

    def replayed(self) -> Billing:
        """A fresh machine fed the world's commands and then every record, asserting each batch's digest."""
        fresh = Billing()
        for command in self.world.journal:
            fresh.apply(command, fresh.last_seq + 1)
        for record in self.records:
            if isinstance(record, tuple):
                data, received_ms, digest, in_billed_period, settled_breaks, rolled_breaks = record
                fresh.replay(
                    fresh.last_seq + 1,
                    data,
                    received_ms,
                    digest,
                    top_ups_in_billed_period=in_billed_period,
                    returned_expired_credit_breaks=settled_breaks,
                    returned_rolled_credit_breaks=rolled_breaks,
                )
            else:
                fresh.apply(record, fresh.last_seq + 1)
        return fresh


def event(
    transaction_id: str,
    ts_ms: int,
    tokens: float,
    *,
    reservation_id: str = "",
    customer_id: str = "acme",
    dimensions: Mapping[str, str] | None = None,
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="ai",
        timestamp_ms=ts_ms,
        dimensions=dict(dimensions or {}),
        values={"tokens": tokens},
        reservation_id=reservation_id,
    )
