"""The billing machine the server runs: the control plane in Python (`Engine`: catalogue, versions,
contracts, grants, audit) and the account state in the rating kernel (usage buckets, grant balances,
dedupe), kept in step.

Usage goes to the kernel as the `UsageBatch` bytes received: one call per batch, no Python object per
event. Admin commands go to the control plane; the kernel's tables are recompiled from it in ONE place
(`refresh_tables`), lazily: an admin command notes what it changed, and the next batch or read compiles
once, so a run of admin commands compiles once. A command that changes one customer (its creation,
contracts, overrides, grants) recompiles that customer only; any other (catalogue, rate cards, versions)
recompiles the whole tables. The writer refreshes them before it hands batches to another
thread and applies no admin command until they are rated, so while a batch is rated the tables are current
and a read (balances, Authorize) compiles nothing: it touches no Python state the rating thread uses.

Sans-I/O like the rest of engine/: time comes in with each call.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal

import msgspec

from engine import commands as cmd
from engine import credits
from engine._kernel import Kernel
from engine.contracts import Contract, Period
from engine.control import encode_state_parts
from engine.errors import NotFound
from engine.ledger import Grant
from engine.state import Engine
from engine.tables import DEDUPE_WINDOW_MS_DEFAULT, FUTURE_SKEW_MS_DEFAULT, TableCompiler

HOUR_MS = 3_600_000
SNAPSHOT_FORMAT = 2


class RatingChanged(Exception):
    """A replayed batch's digest differs from the journaled one: the kernel rates differently from the
    release that wrote the journal."""


@dataclass(frozen=True, slots=True)
class Ingested:
    """What one usage batch did: the ack the kernel encoded, its digest, and the counts for telemetry."""

    ack: bytes
    digest: bytes
    accepted: int
    duplicates: int
    rejected: list[str]  # the reason of each rejection


@dataclass(frozen=True, slots=True)
class GrantView:
    grant: Grant
    remaining: int  # usable now, held credits included
    expired: int
    held: int = 0


@dataclass(frozen=True, slots=True)
class BalanceView:
    customer_id: str
    remaining: int
    held: int
    available: int
    grants: list[GrantView]
    period: Period | None
    period_charges: int
    overage: int
    overage_due: Decimal
    pricing_unit: str
    as_of_seq: int


@dataclass(frozen=True, slots=True)
class Estimate:
    allowed: bool
    reason: str
    message: str
    cost: int
    available: int


class Snapshot(msgspec.Struct, frozen=True):
    """A snapshot's stored form: the control plane (JSON of engine/control.py's BillingState) and the kernel's state bytes."""

    format: int
    control: bytes
    kernel: bytes


def snapshot_parts(control_parts: list[bytes], kernel_parts: list[bytes]) -> list[bytes]:
    """The stored snapshot, msgspec's msgpack of Snapshot(SNAPSHOT_FORMAT, control, kernel) byte for byte, as
    parts to concatenate: the halves are not copied here, so a caller can copy them a slice at a time."""
    control_bytes = sum(len(part) for part in control_parts)
    kernel_bytes = sum(len(part) for part in kernel_parts)
    format_, control, kernel = (_msgpack.encode(field.encode_name) for field in msgspec.structs.fields(Snapshot))
    head = _MAP3 + format_ + _msgpack.encode(SNAPSHOT_FORMAT) + control + _bin_header(control_bytes)
    return [head, *control_parts, kernel + _bin_header(kernel_bytes), *kernel_parts]


_msgpack = msgspec.msgpack.Encoder()
# One part's copy holds the GIL: 1 MiB is about a third of a millisecond here, pages faulted in included.
KERNEL_SNAPSHOT_PART_BYTES = 1 << 20
_MAP3 = b"\x83"  # msgpack fixmap of 3 entries: Snapshot's fields


def _bin_header(size: int) -> bytes:
    """msgpack's bin header in its shortest form, as msgspec writes it."""
    if size < 1 << 8:
        return b"\xc4" + size.to_bytes(1, "big")
    if size < 1 << 16:
        return b"\xc5" + size.to_bytes(2, "big")
    return b"\xc6" + size.to_bytes(4, "big")


class Billing:
    def __init__(
        self,
        engine: Engine | None = None,
        kernel: Kernel | None = None,
        *,
        future_skew_ms: int = FUTURE_SKEW_MS_DEFAULT,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
    ) -> None:
        self.engine = engine if engine is not None else Engine()
        self.kernel = kernel if kernel is not None else Kernel()
        self.future_skew_ms = future_skew_ms
        self.dedupe_window_ms = dedupe_window_ms
        self._compiler = TableCompiler(future_skew_ms=future_skew_ms, dedupe_window_ms=dedupe_window_ms)
        self._tables_stale = True  # the whole tables
        self._customers_stale: set[str] = set()  # only these customers' (when the whole tables are current)

    @property
    def last_seq(self) -> int:
        return self.engine.state.last_seq

    def reset(self, other: Billing) -> None:
        """Takes over another machine's state (recovery after a failed commit); the engine object stays the
        same, since readers hold it."""
        self.engine.reset(other.engine.state)
        self.kernel = other.kernel
        self._tables_stale = True

    # Commands ------------------------------------------------------------------------------------------

    def apply(self, command: cmd.AdminCommand, seq: int) -> object:
        """Applies a control-plane command as record `seq`; raises EngineError (nothing changed) to refuse it."""
        if isinstance(command, cmd.KERNEL_COMMANDS):
            return credits.apply(self, command, seq)  # reservations, top-up policies, the clock
        if isinstance(command, cmd.PublishVersion):
            self._note_rated_hours(command.rate_card_id)
        result = self.engine.apply(command, seq)
        customer_id = _changed_customer(command, result)
        if customer_id is None:
            self._tables_stale = True
        else:
            self._customers_stale.add(customer_id)
        return result

    def ingest(
        self, batch: bytes, received_ms: int, *, events_max: int = 2**31, allowed: list[str] | None = None
    ) -> Ingested:
        """Rates a batch as record last_seq + 1, which it becomes only if it accepts an event.

        Raises ValueError (not a UsageBatch), BatchTooLarge or CustomerNotAllowed, having changed nothing."""
        self.refresh_tables()
        seq = self.last_seq + 1
        ack, digest, accepted, duplicates, rejected = self.kernel.ingest_checked(
            batch, received_ms, seq, events_max, allowed
        )
        if accepted:
            self.engine.state.last_seq = seq
        return Ingested(ack, digest, accepted, duplicates, rejected)

    def replay(self, seq: int, batch: bytes, received_ms: int, digest: bytes) -> None:
        """Re-applies a journaled batch and asserts it did what the journal says."""
        assert seq == self.last_seq + 1, f"records replay in order: {seq} after {self.last_seq}"
        done = self.ingest(batch, received_ms)
        if done.digest != digest or not done.accepted:
            raise RatingChanged(
                f"journal record {seq}: rating changed between releases (replaying the batch gives another "
                "result than the journal holds); run the release that wrote this journal"
            )

    def _note_rated_hours(self, rate_card_id: str) -> None:
        """PublishVersion refuses to take over hours already priced (no re-rating yet): those hours are in the
        kernel's buckets, so the card's record of them is refreshed from there first."""
        card = self.engine.state.rate_cards.get(rate_card_id)
        if card is not None:
            card.rated_hours = dict.fromkeys(self.kernel.rated_hours(rate_card_id, 0))

    def refresh_tables(self, *, whole: bool = False) -> None:
        """Compiles what an admin command changed since: the whole tables, or only the customers touched (a
        no-op when nothing changed, so a read calling it while a batch is rated elsewhere does nothing: the
        writer refreshed them first). `whole` recompiles everything regardless."""
        if self._tables_stale or whole:
            self.kernel.load_tables(self._compiler.compile_all(self.engine.state))
            self._tables_stale = False
            self._customers_stale.clear()
        elif self._customers_stale:
            # Failing half way (a value the kernel refuses), the compiler's indexes and the kernel's may part:
            # the next refresh compiles the whole tables again.
            self._tables_stale = True
            self.kernel.load_customers(
                self._compiler.compile_customers(self.engine.state, self._customers_stale, self.engine.contracts_of)
            )
            self._tables_stale = False
            self._customers_stale.clear()

    # Reads ---------------------------------------------------------------------------------------------

    def balance(self, customer_id: str, now_ms: int) -> BalanceView:
        customer = self.engine.customer(customer_id)  # NotFound for an unknown customer
        self.refresh_tables()
        # Read before the kernel: a batch rated meanwhile on the writer's thread may raise it, so the view
        # holds at least the records up to as_of_seq.
        as_of_seq = self.last_seq
        view = self.kernel.balance(customer.id, now_ms)
        if view is None:
            raise NotFound(f"customer {customer_id!r} not found")
        grants = {g.id: g for g in self.engine.state.accounts[customer.id].grants}
        contract = self._contract_for_balance(customer.id, now_ms)
        if len(grants) < len(view["grants"]):  # the kernel bought top-ups
            grants.update(credits.made_grants(self, customer.id, contract.id if contract else ""))
        views = []
        for (grant_id, _amount, remaining, expired, drawn), held in zip(
            view["grants"], view["grants_held"], strict=True
        ):
            grant = grants[grant_id]
            current = msgspec.structs.replace(
                grant, drawn=drawn, remaining=grant.amount - drawn, recognized_revenue=grant.revenue_for_drawn(drawn)
            )
            usable = grant.expires_at_ms is None or now_ms < grant.expires_at_ms
            views.append(GrantView(current, remaining + held if usable else remaining, expired, held))
        pricing_unit = self.engine.state.rate_cards[contract.rate_card_id].pricing_unit if contract else ""
        period = Period(*view["period"]) if view["period"] is not None else None
        overage_due = Decimal(f"{view['overage_due_e30']}E-30")
        return BalanceView(
            customer.id,
            view["remaining"] + view["held"],
            view["held"],
            view["remaining"],
            views,
            period,
            view["period_charges"],
            view["overage"],
            overage_due,
            pricing_unit,
            as_of_seq,
        )

    def _contract_for_balance(self, customer_id: str, now_ms: int) -> Contract | None:
        """The contract in force now, else the latest one (it names the pricing unit)."""
        contracts = self.engine.contracts_of(customer_id)
        for contract in contracts:
            if contract.covers(now_ms):
                return contract
        return max(contracts, key=lambda c: c.starting_at_ms) if contracts else None

    def estimate(
        self, customer_id: str, event_type: str, dimensions: dict[str, str], values: dict[str, float], now_ms: int
    ) -> Estimate:
        """Authorize: the kernel prices the usage exactly as ingesting it now would, and decides."""
        self.refresh_tables()
        allowed, reason, message, cost, available = self.kernel.authorize(
            customer_id, event_type, list(dimensions.items()), list(values.items()), now_ms
        )
        return Estimate(allowed, reason, message, cost, available)

    def authorize_batch(
        self, batch: bytes, now_ms: int, requests_max: int, allowed: list[str] | None
    ) -> tuple[bytes, int]:
        """AuthorizeBatches on raw bytes: the AuthorizeBatchResult bytes the kernel encodes for an AuthorizeBatch's
        bytes, and how many decisions it holds; each request priced as `estimate` prices it. Raises the kernel's refusals of a whole message
        (ValueError, CustomerNotAllowed, BatchTooLarge, RequestIdMissing, ReservationAsked), having decided
        nothing."""
        self.refresh_tables()
        return self.kernel.authorize_batch(batch, now_ms, requests_max, allowed)

    # Snapshots -----------------------------------------------------------------------------------------

    def encode_snapshot(self) -> bytes:
        """Both halves at once (tools and tests; the server encodes them apart: see snapshot_parts)."""
        return b"".join(snapshot_parts(list(self.control_snapshot_parts()), self.kernel_snapshot()))

    def control_snapshot_parts(self) -> Iterator[bytes]:
        """The control plane's half (JSON of engine/control.py's BillingState) in parts, each a short encode, so
        that the caller may pause between them; it must apply no command until it has them all."""
        return encode_state_parts(self.engine.state)

    def kernel_snapshot(self) -> list[bytes]:
        """The kernel's half, in parts of at most KERNEL_SNAPSHOT_PART_BYTES: encoded with the GIL released and the
        kernel's lock shared (reads go on), then copied into Python a part at a time (see Kernel.snapshot_parts)."""
        self.refresh_tables()
        return self.kernel.snapshot_parts(KERNEL_SNAPSHOT_PART_BYTES)

    @classmethod
    def from_snapshot(
        cls,
        blob: bytes,
        *,
        future_skew_ms: int = FUTURE_SKEW_MS_DEFAULT,
        dedupe_window_ms: int = DEDUPE_WINDOW_MS_DEFAULT,
    ) -> Billing:
        stored = msgspec.msgpack.decode(blob, type=Snapshot)
        assert stored.format == SNAPSHOT_FORMAT, f"snapshot format {stored.format}"
        engine = Engine.from_snapshot(stored.control)
        kernel = Kernel.restore(stored.kernel)
        return cls(engine, kernel, future_skew_ms=future_skew_ms, dedupe_window_ms=dedupe_window_ms)


def _changed_customer(command: cmd.AdminCommand, result: object) -> str | None:
    """The one customer whose tables an applied command changed, or None when it changed shared tables."""
    match command:
        case cmd.CreateCustomer(id=customer_id):
            return customer_id
        case cmd.CreateContract() | cmd.AddOverride() | cmd.GrantCredits():
            assert isinstance(result, Contract | Grant)
            return result.customer_id
    return None
