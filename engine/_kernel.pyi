"""Types of the rating kernel's Python binding (engine/kernel/src/bindings.rs); amounts are ints in picos."""

import mmap
from collections.abc import Callable, Sequence
from typing import Literal, NotRequired, TypedDict, final

class Balance(TypedDict):
    remaining: int  # credits usable now
    grants: list[tuple[str, int, int, int, int]]  # (id, amount, remaining, expired, drawn), in burn order
    period: tuple[int, int] | None  # (start_ms, end_ms) of the contract period containing now
    period_charges: int
    overage: int
    overage_due_e30: int  # overage x overage price, exactly, in 10^-30 of the currency
    held: int  # held by open reservations (not in `remaining`)
    grants_held: list[int]  # per grant of `grants`, in the same order: held by open reservations
    # balance(projected=True) only: the grants the kernel made, as made_grants lists them, of the same account
    made: NotRequired[list[MadeGrant]]

class EncodedBalance(TypedDict):
    remaining: int
    # In burn order: a row (id, amount, remaining, expired, drawn, held), or the bytes of a run of top-up grants
    # encoded as tariff.v1.Balance `grants` entries.
    grants: list[tuple[str, int, int, int, int, int] | bytes]
    # A run's each, in the order of the runs in `grants`: where its spent entries (remaining and held both 0) lie,
    # each packed as struct "<QIq" (offset in the run, length with tag and length, the grant's starts_at_ms).
    top_ups_spent: list[bytes]
    top_ups_count: int  # the entries of every run
    period: tuple[int, int] | None
    period_charges: int
    overage: int
    overage_due_e30: int
    held: int  # on every grant, top-ups included
    made: list[MadeGrant]  # the ROLLOVER grants the kernel made only
    # The next instant a top-up's row changes with nothing recorded (a start, or an expiry while holds keep its whole
    # remainder), as WatchBalance looks for one.
    top_ups_next_change_ms: int | None

# made_grants' rows: (grant_id, kind, amount_picos, priority, starts_at_ms, expires_at_ms, cost_e30, rolled_from,
# made_at_ms).
MadeGrant = tuple[str, Literal["TOP_UP", "ROLLOVER"], int, int, int, int | None, int, str, int]

# What drain_notices() returns, oldest first: (kind, customer_id, details).
# kind "TOP_UP_EXECUTED": details {grant_id: str, credits_picos: int, period_start_ms: int (the billing period the
#   purchase counts in), at_ms: int (the received time of the batch, or the Authorize, that crossed the threshold)}
# kind "RESERVATION_EXPIRED": details {reservation_id: str, released_picos: int, period_start_ms: int (the billing
#   period containing its expiry; 0: no contract covered it), at_ms: int (the AdvanceClock that expired it)}
Notice = tuple[Literal["TOP_UP_EXECUTED", "RESERVATION_EXPIRED"], str, dict[str, str | int]]

class BatchTooLarge(ValueError): ...  # args: (events,)
class BatchIdTooLong(ValueError): ...  # args: (bytes,)
class BatchNotDecodable(ValueError): ...  # args: (field, message) - field as "events[3].customer_id"; "": the framing
class CustomerNotAllowed(ValueError): ...  # args: (index, customer_id)
class RequestIdMissing(ValueError): ...  # args: (index,)
class RequestIdTooLong(ValueError): ...  # args: (index,): over 256 bytes
class ReservationConflict(ValueError): ...  # args: (message,) - the id is known with another request
class ReservationNotFound(ValueError): ...  # args: (message,) - never made, or another customer's (worded alike)
class ReservationEnded(ValueError): ...  # args: (message,) - settled or expired

@final
class Kernel:
    def __init__(self) -> None: ...
    def load_tables(self, tables: bytes) -> None: ...
    def load_customers(self, customers: bytes) -> None: ...
    # A publish appended to the tables loaded (engine/kernel/src/append.rs)
    def append_version(self, append: bytes) -> None: ...
    def contract_timelines(self, customer_id: str) -> list[list[tuple[int, str, int]]] | None: ...
    def ingest(
        self, batch: bytes, received_ms: int, journal_seq: int, refunds_netted: bool = False
    ) -> tuple[bytes, bytes]: ...
    def ingest_checked(
        self,
        batch: bytes,
        received_ms: int,
        next_seq: int,
        events_max: int,
        allowed: list[str] | None,
        top_ups_in_billed_period: bool = False,
        returned_expired_credit_breaks: bool = False,
        reservation_ids_bounded: bool = False,
        returned_rolled_credit_breaks: bool = False,
        duplicates_before_skew: bool = False,
        batch_ids_bounded: bool = False,
        refunds_netted: bool = False,
    ) -> tuple[bytes, bytes, int, int, list[str]]:
        """top_ups_in_billed_period: a top-up an event dated in a later billing period buys starts in that period
        (False: at the purchase, as batches journaled before it). returned_expired_credit_breaks: what an event's
        settled hold or refund gives back to a grant already broken at its expiry, and the event does not draw, breaks
        at once (False: at
        the next AdvanceClock, as batches journaled before it). reservation_ids_bounded: an event whose reservation_id
        is over 256 bytes is INVALID_EVENT (False: rated, as batches journaled before it).
        returned_rolled_credit_breaks: what an event's refund gives back to a grant that has rolled over already breaks
        at once (False: it stays in the grant, as batches journaled before it). duplicates_before_skew: an identical
        resend of an accepted event is a duplicate whatever the future skew is now (False: TIMESTAMP_OUT_OF_RANGE past
        it, as batches journaled before it). batch_ids_bounded: BatchIdTooLong for a batch_id over 256 bytes (False:
        taken, as on replay). refunds_netted: an event's charges take back first what its refunds gave back (False:
        they draw in burn order, as batches journaled before it). Bytes that are not a UsageBatch raise
        BatchNotDecodable(field, message), field naming what prost refused ("events[3].customer_id")."""
    def rated_hours(self, rate_card_id: str, from_hour: int) -> list[int]: ...
    def authorize(
        self,
        customer_id: str,
        event_type: str,
        dimensions: list[tuple[str, str]],
        values: list[tuple[str, float]],
        now_ms: int,
    ) -> tuple[bool, str, str, int, int]: ...
    def balance(self, customer_id: str, now_ms: int, projected: bool = False) -> Balance | None:
        """`projected` (reads: GetBalance, WatchBalance): the account as the clock's AdvanceClock at now_ms will leave
        it when something of it fell due after the clock's last one (holds expired, grants rolled over or expired),
        with `made`; without, the kernel's own state (what journaled changes read)."""
    def balance_encoded(self, customer_id: str, now_ms: int) -> EncodedBalance | Literal[False] | None:
        """balance(projected=True) with the top-ups encoded (engine/kernel/src/balance_wire.rs); False where every row
        must be read from `balance` instead."""
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
    # The state without the dedupe table (in parts), and this snapshot's dedupe segment (the changes since the
    # last call, or with base the whole table), to encode off the writer.
    def snapshot_segmented(self, part_bytes_max: int, base: bool) -> tuple[list[bytes], DedupeSegment]: ...
    def record_dedupe_changes(self, on: bool) -> None: ...
    # Takes back the log of changes an encoded segment was made from: the next changes are logged in its room.
    def give_back_dedupe_log(self, segment: DedupeSegment) -> None: ...
    @staticmethod
    def restore(snapshot: bytes, segments: Sequence[bytes | mmap.mmap] | None = None) -> Kernel: ...
    def rerate_customers(self, rate_card_id: str, from_hour: int) -> list[str]: ...
    def rerate_check(
        self,
        customers: list[str],
        version: bytes,
        from_hour: int,
        split_hours_refused: bool,
        override_hours_refused: bool,
        in_contract: bool,
    ) -> None: ...
    def rerate_plan_slice(
        self,
        customers: list[str],
        version: bytes,
        from_hour: int,
        split_hours_refused: bool,
        override_hours_refused: bool,
        in_contract: bool,
    ) -> list[str]: ...
    def rerate(
        self,
        customers: list[str],
        rate_card_id: str,
        from_hour: int,
        seq: int,
        in_contract: bool,
        holds_in_time: bool,
        top_ups_in_time: bool,
        earlier_hours_carried: bool,
        closed_events_once: bool,
        rolled_credit_breaks: bool = False,
        holds_final_at_ms: int | None = None,
        unchanged_draws_kept: bool = False,
    ) -> tuple[
        int, int, int, int, int, int, int, list[str]
    ]: ...  # customers, buckets, events, delta, closed b/e/amount, the customers whose charges or draws changed
    def simulate(
        self, version: bytes, start_ms: int, end_ms: int, customers: list[str] | None
    ) -> list[tuple[str, str, int, int]]: ...  # (customer_id, product_id, current_picos, simulated_picos)
    def adjustments(
        self, customer_id: str
    ) -> list[tuple[int, int, str, list[str], str, list[int], int, int, int, int, int]]: ...
    def usage_adjusted(
        self, customer_id: str
    ) -> tuple[
        tuple[
            list[tuple[int, str, list[str], int, int, int, int, list[tuple[str, int]]]],
            list[tuple[int, str, list[str], list[tuple[str, int, int, int, int]]]],
        ]
        | None,
        list[tuple[int, int, str, list[str], str, list[int], int, int, int, int, int]],
    ]:
        """(usage, adjustments) of one customer under one lock, so that a re-rating slice applied meanwhile shows
        in both or in neither (ExplainLineItem's read of a line and its adjustments)."""
    def track_touched(self, on: bool) -> None: ...
    def take_touched(self) -> list[str]: ...
    def invoice_read(
        self,
        customer_id: str,
        at_ms: int,
        in_contract: bool,
        read_ms: int | None = None,
        grant_credit: tuple[int, bool] | None = None,
    ) -> tuple[
        tuple[
            int,
            int,
            int,
            bool,
            list[
                tuple[str, list[str], int, int, int, int, list[tuple[str, int]], list[tuple[str, int, int, int, int]]]
            ],
            list[tuple[str, int, int, int | None, tuple[int, int] | None]],
        ]
        | None,
        list[tuple[int, int, str, list[str], str, list[int], int, int, int, int, int]],
        list[tuple[int, str, int, int, int, int]],
        list[tuple[str, int, int]] | None,
    ]:
        """(the period's lines, adjustments, top_up_purchases, grant credit) of one customer under one lock (an
        invoice's read, a draft's or a close's). `grant_credit` (first_rollover_ms, expiring): the grants' [(grant_id, credit_picos, breakage_picos)]
        in burn order when the period's grants want them (invoice::CreditWanted), else None."""
    def set_explain(self, from_seq: int | None) -> None: ...
    def take_explain(self) -> bytes: ...
    @staticmethod
    def explain_entries(records: bytes, after_seq: int = 0) -> list[tuple[bytes, bytes]]: ...
    @staticmethod
    def explain_line_key(customer_id: str, period_start_ms: int, line_id: str) -> bytes: ...
    # Credits (engine/kernel/src/credits.rs). Changes (reserve, release, set_top_up, advance_clock) are journaled
    # commands: call them only from the writer (engine/credits.py).
    def reserve(
        self,
        customer_id: str,
        reservation_id: str,
        event_type: str,
        dimensions: list[tuple[str, str]],
        values: list[tuple[str, float]],
        now_ms: int,
        ttl_ms: int,
        ttl_defaulted: bool = False,
        refunds_netted: bool = False,
    ) -> tuple[bool, str, str, int, int, int, bool, int]:
        """(allowed, reason, message, estimated_cost, available, held, repeated, expires_at_ms). ttl_defaulted: as
        Reserve's (False: ttl_ms as named, as Reserves stored before it). refunds_netted: as Reserve's (False: the
        usage's charges draw in burn order, as Reserves stored before it)."""
    def release(
        self, customer_id: str, reservation_id: str, now_ms: int, expired_credit_breaks: bool = False
    ) -> tuple[int, bool]:
        """(credits given back, repeated). expired_credit_breaks: what it gives back to a grant already broken at its
        expiry breaks at once (False: at the next AdvanceClock, as releases stored before it)."""
    def set_top_up(self, customer_id: str, policy: tuple[int, int, int, int] | None) -> bool:
        """policy: (threshold_picos, recharge_to_picos, price_per_credit_e18, max_per_period); None clears."""
    def set_grant_expiry(self, customer_id: str, grant_id: str, expires_at_ms: int) -> bool:
        """Moves one grant's expiry and reschedules what is due; False for an unknown customer or grant."""
    def top_up_policy(self, customer_id: str) -> tuple[int, int, int, int] | None: ...
    def top_up_purchases(self, customer_id: str) -> list[tuple[int, str, int, int, int, int]]:
        """[(period_start_ms, grant_id, credits_picos, price_per_credit_e18, cost_e30, at_ms)], oldest first."""
    def made_grants(
        self, customer_id: str
    ) -> list[tuple[str, Literal["TOP_UP", "ROLLOVER"], int, int, int, int | None, int, str, int]]:
        """Grants the kernel made: [(grant_id, kind, amount_picos, priority, starts_at_ms, expires_at_ms, cost_e30,
        rolled_from, made_at_ms)]: a TOP_UP's cost (rolled_from ""), or the grant a ROLLOVER came from (cost 0:
        its cost basis is that grant's)."""
    def credits_read(
        self, customer_id: str, now_ms: int
    ) -> tuple[list[MadeGrant], list[tuple[str, str, int, int, int]]]:
        """(made_grants, breakage) of one customer as a read at now_ms sees them: the rollovers and expiries due by
        then that the clock has not recorded yet included, as its AdvanceClock will record them."""
    def revenue_read(
        self, customer_id: str, now_ms: int
    ) -> tuple[
        list[tuple[int, str, list[str], int, int, int, int, list[tuple[str, int]]]],
        list[MadeGrant],
        list[tuple[str, str, int, int, int]],
    ]:
        """(usage's aggregates, then credits_read's made_grants and breakage) of one customer under one lock, so that
        a batch rated meanwhile shows in all three or in none (GetRevenueReport's read of a customer)."""
    def breakage(self, customer_id: str | None) -> list[tuple[str, str, int, int, int]]:
        """[(customer_id, grant_id, period_start_ms, breakage_picos, at_ms)]: what expired grants still held when
        an AdvanceClock found them expired, recorded at that command's time; period_start_ms is the billing
        period of the grant's last usable instant (0: no contract covered it). Customers sorted; None: all."""
    def reservations(self, customer_id: str) -> list[tuple[str, int, int, int, int]]:
        """Open reservations: [(reservation_id, estimated_cost, held, made_at_ms, expires_at_ms)], by id."""
    def advance_clock(
        self, now_ms: int, rollover_ids_distinct: bool, rollover_lasts_next_period: bool
    ) -> tuple[int, int, list[str]]:
        """(reservations expired, breakage entries, the customers, sorted, of which a grant expired or rolled over);
        changes nothing unless something is due by now_ms. Offers the kernel's lock to a waiting read every 64
        accounts. `rollover_ids_distinct`: the AdvanceClock record's; False names a ROLLOVER grant
        rollover-<grant>-<period end ms> even when a grant of the customer holds that id (records of earlier
        releases), True adds a '+' while one does. `rollover_lasts_next_period`: the record's; True makes a ROLLOVER
        grant usable until the end of the period after the one that ended, on the schedule of the contract the
        grant rolled over in; False until the end of the period of the contract in force at the rollover (never
        expiring when none is), as records of earlier releases did."""
    def clock(self) -> tuple[int, int | None]:
        """(the latest AdvanceClock's time, from when an AdvanceClock is applied or None): a lower bound of
        next_due(), kept so that journals written before the index of due times replay alike."""
    def drain_notices(self) -> tuple[list[Notice], int]:
        """Top-ups executed and reservations expired since the last call (replay produces them too), and how
        many were dropped past 100,000 waiting."""
    def next_due(self) -> int | None:
        """The earliest time something is due, exactly (the index of due times, O(log n)), or None."""
    def next_forget(self) -> int | None:
        """The earliest time an ended reservation leaves the dedupe window, exactly (O(log n)), or None: an
        AdvanceClock then forgets it (clock() counts it)."""
    def next_clock_work(self, forget: bool) -> int | None:
        """The earlier of next_due() and, when `forget`, next_forget(), read in one call."""
    def holds_due_by(self, now_ms: int) -> list[str]:
        """The customers (sorted) holding an open reservation whose TTL ran out by now_ms (expire_holds changes
        those, and re-rating never creates or ends a reservation nor moves its TTL)."""
    def expire_holds(self, now_ms: int) -> int:
        """AdvanceClock while a publish's re-rating is pending: expires the reservations whose TTL ran out by
        now_ms and nothing else (no breakage, no rollover, the clock stays); how many expired."""
    def check_due_index(self) -> None:
        """Raises ValueError when the index of due times differs from a walk of every account (tests)."""
    def batch_customers(self, batch: bytes) -> list[str]:
        """The distinct customer ids a UsageBatch names, first named first; ValueError if not a UsageBatch."""
    # AuthorizeBatches with holds (engine/kernel/src/holds.rs).
    def authorize_batch_holding(
        self,
        batch: bytes,
        now_ms: int,
        requests_max: int,
        allowed: list[str] | None,
        ttl_max_ms: int,
        id_seed: bytes,
        message_number: int,
    ) -> tuple[bytes | HoldingBatch, int]:
        """AuthorizeBatches on raw bytes, one decision per request, priced as `authorize`: the result bytes when no
        request asks for a hold, else a HoldingBatch (the other requests decided, the holds to journal); and the
        message's decisions. Refuses the whole message, deciding nothing: BatchNotDecodable(field, message), field
        naming what prost refused ("requests[2].customer_id"; "": the framing), CustomerNotAllowed, BatchTooLarge,
        RequestIdMissing, RequestIdTooLong."""
    def hold_customers(self, requests: bytes) -> list[str]:
        """The distinct customer ids of a ReserveBatch's requests, first named first; ValueError if not an
        AuthorizeBatch."""
    def reserve_batch(
        self, requests: bytes, now_ms: int, ttl_default_ms: int = 0, refunds_netted: bool = False
    ) -> tuple[bytes, int, list[str]]:
        """A HoldingBatch's requests applied (a journaled change): (the holds' AuthorizeBatchResult bytes, holds
        placed, their customers in first-appearance order). ttl_default_ms: the HoldingBatch's (0: every request
        names its TTL, as ReserveBatches stored before it)."""

@final
class DedupeSegment:
    table_base_bytes: int  # a base of the whole table at this snapshot would take this many bytes
    # Hands `write` the segment a part at a time as each is made; its bytes. RuntimeError on a second call.
    def write_to(self, write: Callable[[bytes], object], part_bytes_max: int) -> int: ...

# Dedupe segments (oldest first) merged into one, handed to `write` a part at a time; with base (the oldest is a
# base) removals are dropped. The merged segment's bytes.
def merge_dedupe_segments_to(
    segments: Sequence[bytes | mmap.mmap], base: bool, part_bytes_max: int, write: Callable[[bytes], object]
) -> int: ...

@final
class HoldingBatch:
    """An AuthorizeBatch whose holds wait for the writer."""

    @property
    def requests(self) -> bytes:
        """A tariff.v1.AuthorizeBatch of the hold requests, ids filled in, TTLs as named: what ReserveBatch journals."""
    @property
    def ttl_default_ms(self) -> int:
        """The TTL of the hold requests naming none (the default, or ttl_max_ms when shorter): ReserveBatch's."""
    @property
    def result_bytes_most(self) -> int:
        """The most bytes `finish`'s result can take with every answer's message left out: the answers decided
        now as they are, each hold at its largest answer (engine/kernel/src/holds.rs result_bytes_most)."""
    def finish(self, held: bytes) -> bytes:
        """The message's AuthorizeBatchResult bytes, reserve_batch's answers in their places; once only."""

def period_containing(anchor_ms: int, ts_ms: int) -> tuple[int, int]: ...
def explain_block(
    records: list[bytes], after_seq: int, chunk_bytes: int, pause: Callable[[], object] | None = None
) -> tuple[int, list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]]: ...
def explain_period_key(customer_id: str, period_start_ms: int) -> bytes: ...
def explain_chunk_line(chunk: bytes, line_key: bytes, period: bytes | None = None) -> tuple[bytes, int, bool]: ...
