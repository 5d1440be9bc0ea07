"""Types of the rating kernel's Python binding (engine/kernel/src/bindings.rs); amounts are ints in picos."""

from typing import TypedDict, final

class Balance(TypedDict):
    remaining: int  # credits usable now
    grants: list[tuple[str, int, int, int, int]]  # (id, amount, remaining, expired, drawn), in burn order
    period: tuple[int, int] | None  # (start_ms, end_ms) of the contract period containing now
    period_charges: int
    overage: int
    overage_due_e30: int  # overage x overage price, exactly, in 10^-30 of the currency

class BatchTooLarge(ValueError): ...  # args: (events,)
class CustomerNotAllowed(ValueError): ...  # args: (index, customer_id)
class RequestIdMissing(ValueError): ...  # args: (index,)
class ReservationAsked(ValueError): ...

@final
class Kernel:
    def __init__(self) -> None: ...
    def load_tables(self, tables: bytes) -> None: ...
    def load_customers(self, customers: bytes) -> None: ...
    def ingest(self, batch: bytes, received_ms: int, journal_seq: int) -> tuple[bytes, bytes]: ...
    def ingest_checked(
        self, batch: bytes, received_ms: int, next_seq: int, events_max: int, allowed: list[str] | None
    ) -> tuple[bytes, bytes, int, int, list[str]]: ...
    def rated_hours(self, rate_card_id: str, from_hour: int) -> list[int]: ...
    def authorize(
        self,
        customer_id: str,
        event_type: str,
        dimensions: list[tuple[str, str]],
        values: list[tuple[str, float]],
        now_ms: int,
    ) -> tuple[bool, str, str, int, int]: ...
    def authorize_batch(
        self, batch: bytes, now_ms: int, requests_max: int, allowed: list[str] | None
    ) -> tuple[bytes, int]: ...
    def balance(self, customer_id: str, now_ms: int) -> Balance | None: ...
    def usage(
        self, customer_id: str
    ) -> (
        tuple[
            list[tuple[int, str, list[str], int, int, int, int, list[tuple[str, int]]]],
            list[tuple[int, str, list[str], list[tuple[str, int, int, int, int]]]],
        ]
        | None
    ): ...
    def snapshot(self) -> bytes: ...
    def snapshot_parts(self, part_bytes_max: int) -> list[bytes]: ...
    @staticmethod
    def restore(snapshot: bytes) -> Kernel: ...
    def rerate_customers(self, rate_card_id: str, from_hour: int) -> list[str]: ...
    def rerate_check(self, customers: list[str], version: bytes, from_hour: int) -> None: ...
    def rerate(
        self, customers: list[str], rate_card_id: str, from_hour: int, seq: int
    ) -> tuple[int, int, int, int, int, int, int]: ...  # customers, buckets, events, delta, closed b/e/amount
    def simulate(
        self, version: bytes, start_ms: int, end_ms: int, customers: list[str] | None
    ) -> list[tuple[str, str, int, int]]: ...  # (customer_id, product_id, current_picos, simulated_picos)
    def adjustments(
        self, customer_id: str
    ) -> list[tuple[int, int, str, list[str], str, list[int], int, int, int, int, int]]: ...
    def track_touched(self, on: bool) -> None: ...
    def take_touched(self) -> list[str]: ...
    def invoice_lines(
        self, customer_id: str, at_ms: int
    ) -> (
        tuple[
            int,
            int,
            int,
            bool,
            list[
                tuple[str, list[str], int, int, int, int, list[tuple[str, int]], list[tuple[str, int, int, int, int]]]
            ],
            list[tuple[str, int, int, int | None]],
        ]
        | None
    ): ...
    def set_explain(self, from_seq: int | None) -> None: ...
    def take_explain(self) -> bytes: ...
    @staticmethod
    def explain_entries(records: bytes, after_seq: int = 0) -> list[tuple[bytes, bytes]]: ...
    @staticmethod
    def explain_line_key(customer_id: str, period_start_ms: int, line_id: str) -> bytes: ...

def period_containing(anchor_ms: int, ts_ms: int) -> tuple[int, int]: ...
