"""Drives the rating kernel (engine._kernel) from a World's control plane, over real UsageBatch bytes.

The control plane is set up with tests.engine_fixtures.World (the control plane's commands), compiled by
engine.tables, and loaded into a Kernel; usage goes in as tariff.v1 UsageBatch bytes built by the public
generated code, and acks come back as tariff.v1 IngestAck bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from tariff.v1 import usage_pb2

from engine._kernel import Kernel
from engine.tables import compile_tables
from tests.engine_fixtures import HOUR_MS, World

if TYPE_CHECKING:
    from engine._kernel import Balance  # a TypedDict of the stub only

Values = Mapping[str, float]


def usage_event(
    transaction_id: str,
    ts_ms: int,
    values: Values,
    *,
    customer_id: str = "acme",
    event_type: str = "ai",
    dimensions: Mapping[str, str] | None = None,
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=ts_ms,
        dimensions=dict(dimensions or {}),
        values=dict(values),
    )


@dataclass
class KernelWorld:
    """A kernel whose tables follow a World's control plane."""

    world: World
    kernel: Kernel = field(default_factory=Kernel)
    seq: int = 0
    # Batches rated with an event's refunds and charges netted, as the server rates them (Billing.ingest's
    # `refunds_netted`); False rates them as batches journaled before that rule.
    refunds_netted: bool = False

    def load(self) -> None:
        self.kernel.load_tables(compile_tables(self.world.engine.state))

    def ingest(self, events: Sequence[usage_pb2.UsageEvent], received_ms: int) -> usage_pb2.IngestAck:
        self.seq += 1
        batch = usage_pb2.UsageBatch(batch_id=f"b{self.seq}", events=list(events))
        ack_bytes, digest = self.kernel.ingest(batch.SerializeToString(), received_ms, self.seq, self.refunds_netted)
        assert len(digest) == 16
        ack = usage_pb2.IngestAck.FromString(ack_bytes)
        assert ack.accepted + ack.duplicates + len(ack.rejected) == len(events)
        return ack

    def hours_recorded(self, customer_id: str) -> list[int]:
        """The first instants of the hours the kernel holds usage of the customer in (what EndContract reads, as
        engine/billing_reads.py's `_hours_recorded` gives it to the control plane)."""
        usage = self.kernel.usage(customer_id)
        if usage is None:
            return []
        return sorted({hour * HOUR_MS for hour, _product, _dimensions, _usages in usage[1]})

    def balance(self, now_ms: int, customer_id: str = "acme") -> Balance:
        balance = self.kernel.balance(customer_id, now_ms)
        assert balance is not None
        return balance

    def charged(self, customer_id: str = "acme") -> int:
        """Everything charged to the customer so far, in picos (net of refunds), over all periods."""
        usage = self.kernel.usage(customer_id)
        assert usage is not None
        return sum(aggregate[5] for aggregate in usage[0])

    def charge_of(self, event: usage_pb2.UsageEvent, received_ms: int | None = None) -> int:
        """Ingests one event that must be accepted (received at its own time unless given); returns its net charge."""
        before = self.charged(event.customer_id)
        ack = self.ingest([event], event.timestamp_ms if received_ms is None else received_ms)
        assert ack.accepted == 1, ack.rejected
        return self.charged(event.customer_id) - before

    def charged_by_version(self, customer_id: str = "acme") -> dict[int, int]:
        """Amount charged under each rate-card version, from the hour buckets."""
        usage = self.kernel.usage(customer_id)
        assert usage is not None
        out: dict[int, int] = {}
        for _hour, _product, _dimensions, usages in usage[1]:
            for _card, version, _quantity, _events, amount in usages:
                out[version] = out.get(version, 0) + amount
        return out

    def remaining_by_grant(self, now_ms: int, customer_id: str = "acme") -> dict[str, int]:
        return {grant[0]: grant[2] for grant in self.balance(now_ms, customer_id)["grants"]}

    def drawn_by_grant(self, now_ms: int, customer_id: str = "acme") -> dict[str, int]:
        return {grant[0]: grant[4] for grant in self.balance(now_ms, customer_id)["grants"]}

    def authorize(
        self,
        values: Values,
        now_ms: int,
        *,
        customer_id: str = "acme",
        event_type: str = "ai",
        dimensions: Mapping[str, str] | None = None,
    ) -> tuple[bool, str, str, int, int]:
        dimension_items = sorted((dimensions or {}).items())
        return self.kernel.authorize(customer_id, event_type, dimension_items, sorted(values.items()), now_ms)
