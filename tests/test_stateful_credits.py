"""Credits under freely interleaved operations: a hypothesis RuleBasedStateMachine drives engine.billing.Billing (in
process, as the server's writer does, with every server-set field as the server sets it now) and one
tests/reference_billing.py ReferenceCredits per customer side by side.

Three customers (ALLOW, ALLOW at an overage price of 1.5, BLOCK) on a catalogue of four products: `tokens` (SUM, UNIT
1 per 3 units, by model), `calls` (COUNT, PACKAGE of 10 at 2) and `level` (LATEST of tokens, UNIT 0.5), all on event
type "ai" (so one event's refund and charges are netted), and `seats` (LATEST of n, GRADUATED 2 up to 5 then 1) on
"seats": a falling gauge refunds. The rules interleave: batches of events (identical
resends, conflicting ones, invalid values, unknown customers, future and late timestamps, events naming holds);
grants (for every product or for one, from the month's start or later, with and without an expiry, at the month's
end too, some with a rollover fraction); holds (Reserve, and ReserveBatch as AuthorizeBatches places them), their
release and their expiry; Authorize without a hold; the top-up policy set and cleared; a new version published
effective from a later hour; January closed once February has begun; and time passing (seconds to weeks, to just
before, at and after January's end), either recorded at once by an AdvanceClock (the server's clock) or not yet,
when reads answer as that AdvanceClock will leave the state and the next write is preceded by it (the writer's).

After every rule: every GetBalance field (Billing.balance, revenue recognised included) and every period aggregate
equal the oracle's exactly; per grant granted = drawn + remaining + held + expired (docs/architecture.md "Credits:
holds, top-ups, breakage"), nothing negative, and the kernel's due index matches a walk; the top-up purchases agree;
and every fifth step a snapshot's encode -> restore gives the same kernel state bytes and balances. At the end,
replaying the records from scratch gives those bytes too.

Contracts end too (EndContract, at ends drawn from now, from the latest usage sent, which may be minutes ahead, from
an hour boundary or February's start, on and off them): each answer is the oracle's (taken, a retry, or the refusal
and the hour it names), usage dated at or after the end is NO_ACTIVE_CONTRACT, and a balance read once the contract
has ended has no current period. Grants end early too (ExpireGrant, of any grant of the customer, the kernel's
included, at expiries drawn from now, the latest usage sent, an hour boundary, February's start, the grant's start,
the expiry it has and a day after it): each answer is the oracle's, and the grant then expires as one granted so.

Not modelled (the oracle has no rules for them, so no rule does them): invoices' contents, a version effective before
usage already rated (re-rating), overrides, a second contract, and ids the kernel forgets after the 35-day dedupe
window (the run stays within it).

TARIFF_STATEFUL_EXAMPLES raises the budget (e.g. 2000 for a hunt).
"""

from __future__ import annotations

import copy
import dataclasses
import decimal
import math
import os
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import event as statistic
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from tariff.v1 import balance_pb2, usage_pb2

from engine import commands as cmd
from engine import credits
from engine.billing import Billing, Ingested
from engine.contracts import OveragePolicy
from engine.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Repeated
from engine.ledger import GrantKind
from engine.products import Aggregation
from engine.ratecard import TierMode
from tests.engine_fixtures import EPOCH_MS, package, rate, tiered, unit
from tests.reference_billing import (
    RATING,
    Curve,
    Period,
    ReferenceCredits,
    REvent,
    RGrant,
    RProduct,
    RRate,
    RTopUp,
)

EXAMPLES = int(os.environ.get("TARIFF_STATEFUL_EXAMPLES", "100"))
STEPS = int(os.environ.get("TARIFF_STATEFUL_STEPS", "30"))
ACTOR = "test"
PICOS = 10**12
SCALE = 10**18
MINUTE_MS = 60_000
HOUR_MS = 60 * MINUTE_MS
DAY_MS = 24 * HOUR_MS
FEB_MS = EPOCH_MS + 31 * DAY_MS
# The run stays inside the dedupe window (35 days): the oracle does not model when the kernel forgets ended
# reservations' ids.
HORIZON_MS = 34 * DAY_MS
CUSTOMERS = ("acme", "beta", "gamma")
POLICIES = {"acme": (False, "1"), "beta": (False, "1.5"), "gamma": (True, "1")}  # (BLOCK, overage price)
HOLD_IDS = ("r0", "r1", "r2")
TOP_UP_PRICE = Decimal("0.5")  # per credit
REASONS = {1: "INVALID_EVENT", 2: "UNKNOWN_CUSTOMER", 3: "NO_ACTIVE_CONTRACT", 4: "TIMESTAMP_OUT_OF_RANGE"}
REASONS |= {5: "PERIOD_CLOSED", 6: "DUPLICATE_CONFLICT", 7: "NO_APPLICABLE_RATE"}
NOTICES = {
    usage_pb2.NOTICE_RESERVATION_UNKNOWN: "unknown",
    usage_pb2.NOTICE_RESERVATION_ALREADY_SETTLED: "settled",
    usage_pb2.NOTICE_RESERVATION_RELEASED: "released",
    usage_pb2.NOTICE_RESERVATION_EXPIRED: "expired",
}

PRODUCTS = [
    RProduct("calls", "ai", "COUNT", "", (), ()),
    RProduct("level", "ai", "LATEST", "tokens", (), ()),
    RProduct("seats", "seats", "LATEST", "n", (), ()),
    RProduct("tokens", "ai", "SUM", "tokens", (), ("model",)),
]
V1 = [
    RRate("calls", (), Curve("PACKAGE", price=Decimal(2), size=Decimal(10))),
    RRate("level", (), Curve("UNIT", price=Decimal("0.5"))),
    RRate(
        "seats", (), Curve("GRADUATED", tiers=((Decimal(5), Decimal(2), Decimal(0)), (None, Decimal(1), Decimal(0))))
    ),
    RRate("tokens", (), Curve("UNIT", price=Decimal(1), per_units=Decimal(3))),
]
V2 = [
    RRate("calls", (), Curve("PACKAGE", price=Decimal(1), size=Decimal(5))),
    RRate("level", (), Curve("UNIT", price=Decimal("0.25"))),
    RRate(
        "seats",
        (),
        Curve("GRADUATED", tiers=((Decimal(2), Decimal(3), Decimal(0)), (None, Decimal("0.5"), Decimal(0)))),
    ),
    RRate("tokens", (), Curve("UNIT", price=Decimal(2), per_units=Decimal(3))),
]


def wire_rates(rates: list[RRate]) -> tuple[object, ...]:
    out = []
    for r in rates:
        c = r.curve
        if c.model == "UNIT":
            out.append(rate(r.product_id, unit(str(c.price), str(c.per_units))))
        elif c.model == "PACKAGE":
            out.append(rate(r.product_id, package(str(c.size), str(c.price))))
        else:
            tiers = [("" if up is None else str(up), str(p), str(fee)) for up, p, fee in c.tiers]
            out.append(rate(r.product_id, tiered(TierMode.GRADUATED, *tiers)))
    return tuple(out)


def month_start_ms(ts_ms: int, *, months_later: int = 0) -> int:
    """The start of the calendar month holding ts_ms (or of one `months_later`): the contracts' billing periods."""
    moment = datetime.fromtimestamp(ts_ms / 1000, tz=UTC)
    index = moment.year * 12 + moment.month - 1 + months_later
    return int(datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) * 1000


@dataclass
class Sent:
    event: REvent
    wire: usage_pb2.UsageEvent


def to_wire(event: REvent) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=event.transaction_id,
        customer_id=event.customer_id,
        event_type=event.event_type,
        timestamp_ms=event.timestamp_ms,
        dimensions=dict(event.dimensions),
        values=dict(event.values),
        reservation_id=event.reservation_id,
    )


def server_ingest(billing: Billing, data: bytes, received_ms: int) -> Ingested:
    """Rates a batch under the rules its record carries as the server sets them (server/usage_batches.py)."""
    return billing.ingest(
        data,
        received_ms,
        top_ups_in_billed_period=True,
        returned_expired_credit_breaks=True,
        reservation_ids_bounded=True,
        returned_rolled_credit_breaks=True,
        duplicates_before_skew=True,
        refunds_netted=True,
    )


def server_replay(billing: Billing, data: bytes, received_ms: int, digest: bytes) -> None:
    """Replays a record `server_ingest` made, asserting its digest."""
    billing.replay(
        billing.last_seq + 1,
        data,
        received_ms,
        digest,
        top_ups_in_billed_period=True,
        returned_expired_credit_breaks=True,
        reservation_ids_bounded=True,
        returned_rolled_credit_breaks=True,
        duplicates_before_skew=True,
        refunds_netted=True,
    )


Record = cmd.AdminCommand | tuple[bytes, int, bytes]


@st.composite
def new_events(draw: st.DrawFn, machine: Credits) -> REvent:
    customer = draw(st.sampled_from([*CUSTOMERS, *CUSTOMERS, "ghost"]))
    lag = draw(
        st.sampled_from([0, 0, 0, 30_000, 2 * HOUR_MS, 3 * DAY_MS, -2 * MINUTE_MS, -4 * MINUTE_MS, -10 * MINUTE_MS])
    )
    if draw(st.booleans()):
        values: dict[str, float] = {"tokens": float(draw(st.integers(0, 40)))}
        dimensions = {"model": draw(st.sampled_from(["m1", "m2"]))}
        event_type = "ai"
    else:
        values, dimensions, event_type = {"n": float(draw(st.integers(0, 9)))}, {}, "seats"
    if draw(st.integers(0, 9)) == 0:
        key = next(iter(values))
        values[key] = draw(st.sampled_from([-1.0, math.nan, 0.5, 1e-19]))
    if draw(st.integers(0, 12)) == 0:
        values = {}  # the measure missing: INVALID_EVENT (calls alone would count it)
    reservation = draw(st.sampled_from(["", "", "", *HOLD_IDS, "nope"]))
    machine.counter += 1
    return REvent(
        f"t{machine.counter}",
        customer,
        event_type,
        max(EPOCH_MS - HOUR_MS, machine.now - lag),
        tuple(sorted(dimensions.items())),
        tuple(sorted(values.items())),
        reservation,
    )


def break_returned(oracles: dict[str, ReferenceCredits], clock_ms: int) -> None:
    """What a release, a settled hold or a refund gives back to a grant already broken at its expiry, or already
    rolled over, breaks at once (the server-set `expired_credit_breaks`, `returned_expired_credit_breaks`,
    `returned_rolled_credit_breaks`; docs/architecture.md "Time"): nothing can draw it any more."""
    for oracle in oracles.values():
        for grant in oracle.grants:
            ended = grant.expires_at_ms is not None and grant.expires_at_ms <= clock_ms
            if (ended or grant.id in oracle.rolled_out) and grant.remaining > 0:
                oracle.breakage[grant.id] = oracle.breakage.get(grant.id, Decimal(0)) + grant.remaining
                grant.remaining = Decimal(0)


class Credits(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.billing = Billing()
        self.records: list[Record] = []
        self.oracles: dict[str, ReferenceCredits] = {}
        self.now = EPOCH_MS
        self.start = EPOCH_MS
        self.clock = EPOCH_MS  # the last AdvanceClock's time
        self.sent: list[REvent] = []
        self.counter = 0
        self.grants = 0
        self.batches = 0
        self.published = False
        self.paid: dict[str, Decimal] = {}  # grant id -> paid_amount
        self.steps = 0

    # Plumbing --------------------------------------------------------------------------------------------

    def run(self, command: cmd.AdminCommand) -> object:
        try:
            result = self.billing.apply(command, self.billing.last_seq + 1)
        except Repeated as repeat:
            return repeat.result
        self.records.append(command)
        return result

    def tick(self) -> None:
        """The server's clock: an AdvanceClock at now, with the fields it sets (server/clock.py)."""
        self.run(
            cmd.AdvanceClock(
                self.now, "clock", alerts_evaluated=True, rollover_ids_distinct=True, rollover_lasts_next_period=True
            )
        )
        for oracle in self.oracles.values():
            oracle.advance(self.now)
        self.clock = self.now
        break_returned(self.oracles, self.clock)

    def catch_up(self) -> None:
        """The writer's AdvanceClock before a group of commands or a run of batches (Sequencer._clock_before)."""
        if self.now > self.clock:
            self.tick()

    def projected(self) -> dict[str, ReferenceCredits]:
        """What a read now answers from: the oracles as the AdvanceClock at now will leave them (docs/architecture.md
        "Reads in the window"), while the clock has not recorded it."""
        if self.now == self.clock:
            return self.oracles
        copies = copy.deepcopy(self.oracles)
        for oracle in copies.values():
            oracle.advance(self.now)
        break_returned(copies, self.now)
        return copies

    # Set-up ----------------------------------------------------------------------------------------------

    @initialize(start=st.sampled_from([EPOCH_MS + HOUR_MS, FEB_MS - 2 * HOUR_MS, FEB_MS - 3 * MINUTE_MS]))
    def setup(self, start: int) -> None:
        self.now = self.clock = self.start = start
        commands: list[cmd.AdminCommand] = [
            cmd.CreateProduct(EPOCH_MS, ACTOR, "calls", "calls", "ai", Aggregation.COUNT, "", {}, (), "u",
                              empty_count_missing=True),
            cmd.CreateProduct(EPOCH_MS, ACTOR, "level", "level", "ai", Aggregation.LATEST, "tokens", {}, (), "u",
                              empty_count_missing=True),
            cmd.CreateProduct(EPOCH_MS, ACTOR, "seats", "seats", "seats", Aggregation.LATEST, "n", {}, (), "u",
                              empty_count_missing=True),
            cmd.CreateProduct(EPOCH_MS, ACTOR, "tokens", "tokens", "ai", Aggregation.SUM, "tokens", {}, ("model",),
                              "u", empty_count_missing=True),
            cmd.CreateRateCard(EPOCH_MS, ACTOR, "card", "card", "credits"),
            cmd.CreateDraftVersion(EPOCH_MS, ACTOR, "card", 0, {}, (), wire_rates(V1), (), ""),  # type: ignore[arg-type]
            cmd.PublishVersion(EPOCH_MS, ACTOR, "card", 1, EPOCH_MS),
        ]  # fmt: skip
        for customer_id in CUSTOMERS:
            block, overage_price = POLICIES[customer_id]
            policy = OveragePolicy.BLOCK if block else OveragePolicy.ALLOW
            commands.append(cmd.CreateCustomer(EPOCH_MS, ACTOR, customer_id, customer_id, {}))
            commands.append(
                cmd.CreateContract(
                    EPOCH_MS,
                    ACTOR,
                    f"k-{customer_id}",
                    customer_id,
                    "card",
                    EPOCH_MS,
                    None,
                    policy,
                    overage_price,
                    "USD",
                )
            )
            self.oracles[customer_id] = ReferenceCredits(
                PRODUCTS,
                V1,
                [],
                [],
                customer_id=customer_id,
                contract_start_ms=EPOCH_MS,
                block=block,
                timeline=[(EPOCH_MS, V1)],
                top_ups_in_billed_period=True,
            )
        for command in commands:
            self.run(command)
        self.tick()

    # Usage -----------------------------------------------------------------------------------------------

    @rule(data=st.data(), size=st.integers(1, 4))
    def ingest(self, data: st.DataObject, size: int) -> None:
        self.catch_up()
        batch: list[REvent] = []
        for _ in range(size):
            kind = data.draw(st.sampled_from(["new"] * 6 + (["resend", "conflict"] if self.sent else [])))
            if kind == "new":
                batch.append(data.draw(new_events(self)))
            elif kind == "resend":
                batch.append(data.draw(st.sampled_from(self.sent)))
            else:
                prior = data.draw(st.sampled_from(self.sent))
                other = data.draw(new_events(self))
                batch.append(
                    dataclasses.replace(other, transaction_id=prior.transaction_id, customer_id=prior.customer_id)
                )
        self.sent.extend(batch)
        expected: list[tuple[str, str]] = []
        for event in batch:
            oracle = self.oracles.get(event.customer_id)
            if oracle is None:
                any_oracle = self.oracles[CUSTOMERS[0]]
                expected.append((any_oracle._invalid(event, self.now) or "UNKNOWN_CUSTOMER", ""))
            else:
                expected.append(oracle.ingest_reserving(event, self.now))
            break_returned(self.oracles, self.clock)  # with each event: the next one cannot draw it
        self.batches += 1
        data_bytes = usage_pb2.UsageBatch(
            batch_id=f"b{self.batches}", events=[to_wire(e) for e in batch]
        ).SerializeToString()
        done = server_ingest(self.billing, data_bytes, self.now)
        if done.accepted:
            self.records.append((data_bytes, self.now, done.digest))
        ack = usage_pb2.IngestAck.FromString(done.ack)
        outcomes = [o for o, _ in expected]
        assert ack.accepted == outcomes.count("accepted"), (ack, expected)
        assert ack.duplicates == outcomes.count("duplicate"), (ack, expected)
        rejected = [(i, o) for i, o in enumerate(outcomes) if o not in ("accepted", "duplicate")]
        assert [(r.index, REASONS[r.reason]) for r in ack.rejected] == rejected, (ack, expected)
        notices = [(i, n) for i, (_, n) in enumerate(expected) if n]
        assert [(n.index, NOTICES[n.reason]) for n in ack.notices] == notices, (ack, expected)

    # Grants ----------------------------------------------------------------------------------------------

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        amount=st.sampled_from(["1", "5", "12.5", "40", "0.000000000001"]),
        paid=st.sampled_from(["0", "3"]),
        priority=st.integers(0, 1),
        products=st.sampled_from([(), (), ("seats",), ("tokens",), ("level", "seats")]),
        expires_in=st.sampled_from([None, None, MINUTE_MS, HOUR_MS, 2 * DAY_MS, "month end"]),
        later=st.integers(0, 3),
        fraction=st.sampled_from(["", "", "0.5", "1", "0.333333333333333333"]),
    )
    def grant(
        self,
        customer: str,
        amount: str,
        paid: str,
        priority: int,
        products: tuple[str, ...],
        expires_in: int | str | None,
        fraction: str,
        later: int,
    ) -> None:
        """A grant paying from the start of the current month or, now and then, from an hour on; expiring never,
        after a while or at the month's end (its rollover, for one with a fraction)."""
        self.catch_up()
        grant_id = f"g{self.grants}"
        starts = month_start_ms(self.now) if later else self.now + HOUR_MS
        month_end_ms = month_start_ms(starts, months_later=1)
        expires = (
            month_end_ms
            if expires_in == "month end"
            else None
            if expires_in is None
            else max(self.now, starts) + int(expires_in)
        )
        command = cmd.GrantCredits(
            self.now, ACTOR, grant_id, customer, f"k-{customer}", GrantKind.PREPAID, amount, paid, priority,
            products, starts, expires, fraction,
            use_ends_at_rollover=True, paid_at_picos=True, made_ids_refused=True,
            rollover_start_in_contract=True, expiring_at_rollover_rolls=True, applied_audited=True,
            grants_bounded=True,
        )  # fmt: skip
        oracle = self.oracles[customer]
        if fraction and Decimal(fraction) > 0 and not oracle.in_force(starts):
            # contracts.proto GrantCredits: a grant that rolls over must start in a contract's time (its end).
            with pytest.raises(FailedPrecondition, match="rollover_fraction"):
                self.run(command)
            return
        self.run(command)
        made = RGrant(grant_id, Decimal(amount) * PICOS, priority, products, starts, expires, self.grants)
        made.remaining = made.amount
        self.paid[grant_id] = Decimal(paid)
        self.grants += 1
        oracle.grants.append(made)
        if fraction and Decimal(fraction) > 0:
            oracle.rollover[grant_id] = Decimal(fraction)
            oracle.rollover_given.add(grant_id)
            oracle.expiring_at_rollover_rolls.add(grant_id)
            if expires is None or expires > month_end_ms:
                made.usable_before_ms = month_end_ms

    # Holds -----------------------------------------------------------------------------------------------

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        reservation_id=st.sampled_from(HOLD_IDS),
        seats=st.booleans(),
        quantity=st.integers(0, 30),
        ttl_ms=st.sampled_from([1_000, 30_000, HOUR_MS, 3 * DAY_MS]),
    )
    def reserve(self, customer: str, reservation_id: str, seats: bool, quantity: int, ttl_ms: int) -> None:
        self.catch_up()
        event_type, key, dimensions = ("seats", "n", {}) if seats else ("ai", "tokens", {"model": "m1"})
        values = {key: float(quantity)}
        usage = REvent("", customer, event_type, self.now, tuple(dimensions.items()), tuple(values.items()))
        expected = self.oracles[customer].reserve(reservation_id, usage, ttl_ms)
        command = cmd.Reserve(
            self.now, ACTOR, customer, reservation_id, event_type, dimensions, values, ttl_ms, refunds_netted=True
        )
        try:
            got = self.run(command)
        except AlreadyExists:
            assert expected == "conflict"
            return
        assert isinstance(got, credits.Reservation)
        if got.repeated:
            assert expected == "repeated"
        else:
            assert expected == (got.allowed, got.reason, got.cost)

    @rule(
        requests=st.lists(
            st.tuples(
                st.sampled_from(CUSTOMERS),
                st.sampled_from(HOLD_IDS),
                st.booleans(),
                st.integers(0, 30),
                st.sampled_from([1_000, 30_000, HOUR_MS, 3 * DAY_MS]),
            ),
            min_size=1,
            max_size=3,
        )
    )
    def reserve_batch(self, requests: list[tuple[str, str, bool, int, int]]) -> None:
        """Holds through AuthorizeBatches: one ReserveBatch decides them as the same Reserve commands one after the
        other would (docs/architecture.md "Holds through AuthorizeBatches")."""
        self.catch_up()
        message = balance_pb2.AuthorizeBatch()
        expected: list[tuple[bool, str, int] | str] = []
        for index, (customer, reservation_id, seats, quantity, ttl_ms) in enumerate(requests):
            event_type, key, dimensions = ("seats", "n", {}) if seats else ("ai", "tokens", {"model": "m1"})
            values = {key: float(quantity)}
            request = message.requests.add(
                request_id=f"q{index}",
                customer_id=customer,
                event_type=event_type,
                dimensions=dimensions,
                values=values,
                reserve=True,
                reservation_id=reservation_id,
            )
            request.reservation_ttl.FromMilliseconds(ttl_ms)
            usage = REvent("", customer, event_type, self.now, tuple(dimensions.items()), tuple(values.items()))
            expected.append(self.oracles[customer].reserve(reservation_id, usage, ttl_ms))
        self.batches += 1
        holding, _ = self.billing.authorize_batch(
            message.SerializeToString(), self.now, 100, None, 7 * DAY_MS, bytes(16), self.batches
        )
        assert not isinstance(holding, bytes)
        command = cmd.ReserveBatch(self.now, ACTOR, holding.requests, holding.ttl_default_ms, refunds_netted=True)
        result = self.run(command)
        assert isinstance(result, credits.HeldBatch)
        answers = balance_pb2.AuthorizeBatchResult.FromString(holding.finish(result.responses)).responses
        for answer, want in zip(answers, expected, strict=True):
            if want == "conflict":
                assert (answer.allowed, answer.reason) == (False, "RESERVATION_CONFLICT"), answer
            elif want != "repeated":
                assert (answer.allowed, answer.reason, int(Decimal(answer.estimated_cost or "0") * PICOS)) == want, (
                    answer
                )

    @rule(customer=st.sampled_from(CUSTOMERS), seats=st.booleans(), quantity=st.integers(0, 30))
    def authorize(self, customer: str, seats: bool, quantity: int) -> None:
        """Authorize without a hold: the decision and the estimate, changing nothing."""
        event_type, key, dimensions = ("seats", "n", {}) if seats else ("ai", "tokens", {"model": "m2"})
        values = {key: float(quantity)}
        usage = REvent("", customer, event_type, self.now, tuple(dimensions.items()), tuple(values.items()))
        expected = self.projected()[customer].authorize(usage)
        got = self.billing.estimate(customer, event_type, dimensions, values, self.now)
        assert (got.allowed, got.reason, got.cost) == expected

    @rule(customer=st.sampled_from(CUSTOMERS), reservation_id=st.sampled_from(HOLD_IDS))
    def release(self, customer: str, reservation_id: str) -> None:
        self.catch_up()
        expected = self.oracles[customer].release(reservation_id)
        break_returned(self.oracles, self.clock)
        command = cmd.ReleaseReservation(self.now, ACTOR, customer, reservation_id, expired_credit_breaks=True)
        try:
            result = self.run(command)
            assert isinstance(result, credits.Released)
            released: Decimal | str = Decimal(result.released)
        except NotFound:
            released = "not found"
        except FailedPrecondition as exc:
            released = "settled" if "settled" in str(exc) else "expired"
        assert released == expected

    # Top-ups ---------------------------------------------------------------------------------------------

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        policy=st.one_of(st.none(), st.tuples(st.integers(1, 20), st.integers(1, 40), st.integers(1, 3))),
    )
    def top_up_policy(self, customer: str, policy: tuple[int, int, int] | None) -> None:
        self.catch_up()
        if policy is None:
            command = cmd.SetTopUpPolicy(
                self.now, ACTOR, f"k-{customer}", "", "", "", 0, price_in_contract_currency=True
            )
            self.oracles[customer].top_up = None
        else:
            threshold, extra, cap = policy
            command = cmd.SetTopUpPolicy(
                self.now, ACTOR, f"k-{customer}", str(threshold), str(threshold + extra), str(TOP_UP_PRICE), cap,
                price_in_contract_currency=True,
            )  # fmt: skip
            self.oracles[customer].top_up = RTopUp(
                Decimal(threshold * PICOS), Decimal((threshold + extra) * PICOS), cap
            )
        self.run(command)

    # Versions --------------------------------------------------------------------------------------------

    @precondition(lambda self: not self.published)
    @rule(after_ms=st.sampled_from([HOUR_MS, DAY_MS, 3 * DAY_MS]))
    def publish(self, after_ms: int) -> None:
        """Version 2, effective from a later time (past every event rated so far: no re-rating)."""
        self.catch_up()
        effective = -(-(self.now + after_ms) // HOUR_MS) * HOUR_MS  # on an hour boundary (ratecard.py)
        self.run(cmd.CreateDraftVersion(self.now, ACTOR, "card", 0, {}, (), wire_rates(V2), (), ""))  # type: ignore[arg-type]
        self.run(cmd.PublishVersion(self.now, ACTOR, "card", 2, effective))
        for oracle in self.oracles.values():
            assert oracle.timeline is not None
            oracle.timeline.append((effective, V2))
        self.published = True

    # Closing ---------------------------------------------------------------------------------------------

    @precondition(lambda self: self.now >= FEB_MS)
    @rule(customer=st.sampled_from(CUSTOMERS))
    def close_january(self, customer: str) -> None:
        """ClosePeriod of January, as the service sets it: from then on its events are PERIOD_CLOSED (holds taken in
        it stay open: a late event naming one is refused before it settles anything)."""
        oracle = self.oracles[customer]
        if (2026, 1) in oracle.closed:
            return
        self.catch_up()
        self.run(
            cmd.ClosePeriod(
                self.now, ACTOR, customer, EPOCH_MS, rollovers_shown=True, adjustments_in_contract=True,
                parts_in_contract=True, rolled_breakage_shown=True, expired_breakage_shown=True,
                spent_grants_left_out=True, closed_in_journal_order=True,
            )
        )  # fmt: skip
        oracle.closed.add((2026, 1))

    # Contract ends ---------------------------------------------------------------------------------------

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        at=st.sampled_from(["now", "sent", "hour", "hour", "feb", "start", "again"]),
        offset=st.sampled_from([0, 0, 1, -1, 2 * MINUTE_MS, 10 * MINUTE_MS, HOUR_MS, 3 * HOUR_MS]),
    )
    def end_contract(self, customer: str, at: str, offset: int) -> None:
        """EndContract of the customer's contract (contracts.proto), its end drawn from now, from the latest usage
        sent for the customer (some dated up to minutes ahead), from the next hour boundary, from February's start,
        the contract's start, or the end it has: taken, a retry, or refused, each as the oracle's rules say, nothing
        changed by a refusal."""
        self.catch_up()
        oracle = self.oracles[customer]
        sent = [e.timestamp_ms for e in self.sent if e.customer_id == customer]
        base = {
            "now": self.now,
            "sent": max(sent, default=self.now),
            "hour": -(-self.now // HOUR_MS) * HOUR_MS,
            "feb": FEB_MS,
            "start": EPOCH_MS,
            "again": oracle.contract_end_ms if oracle.contract_end_ms is not None else self.now,
        }[at]
        end_ms = base + (0 if at == "again" else offset)
        expected = oracle.end_contract(end_ms, self.now)
        command = cmd.EndContract(self.now, ACTOR, f"k-{customer}", end_ms)
        got: tuple[str, int | None]
        refusal = ""
        try:
            self.run_fresh(command)
            got = ("ended", None)
        except Repeated:
            got = ("repeated", None)
        except InvalidArgument as exc:
            assert "ending_before" in str(exc), exc
            got = ("after starting_at", None)
        except FailedPrecondition as exc:
            got = end_refusal(str(exc))
            refusal = str(exc)
        assert got == expected, (customer, at, offset, end_ms, self.now, got, expected, refusal)
        statistic(f"end {at}: {got[0]}")
        held = self.billing.engine.contract(f"k-{customer}").ending_before_ms
        assert held == oracle.contract_end_ms, (held, oracle.contract_end_ms)

    # Grants ended early -----------------------------------------------------------------------------------

    @rule(
        customer=st.sampled_from(CUSTOMERS),
        which=st.integers(0, 7),
        at=st.sampled_from(["now", "sent", "hour", "feb", "start", "again", "later"]),
        offset=st.sampled_from([0, 0, 1, -1, 2 * MINUTE_MS, HOUR_MS, DAY_MS]),
    )
    def expire_grant(self, customer: str, which: int, at: str, offset: int) -> None:
        """ExpireGrant of one of the customer's grants (its own, a top-up or a ROLLOVER grant the kernel made), its
        new expiry drawn from now, from the latest usage sent for the customer, from the next hour boundary, from
        February's start, the grant's start, the expiry it has, or a day after that: taken, a retry, or refused,
        each as the oracle's rules say, nothing changed by a refusal."""
        self.catch_up()
        oracle = self.oracles[customer]
        if not oracle.grants:
            return
        grant = oracle.grants[which % len(oracle.grants)]
        sent = [e.timestamp_ms for e in self.sent if e.customer_id == customer]
        held = grant.expires_at_ms if grant.expires_at_ms is not None else self.now + DAY_MS
        base = {
            "now": self.now,
            "sent": max(sent, default=self.now),
            "hour": -(-self.now // HOUR_MS) * HOUR_MS,
            "feb": FEB_MS,
            "start": grant.starts_at_ms,
            "again": held,
            "later": held + DAY_MS,
        }[at]
        expires_ms = base + (0 if at == "again" else offset)
        expected = oracle.expire_grant(grant.id, expires_ms, self.now)
        command = cmd.ExpireGrant(self.now, ACTOR, customer, grant.id, expires_ms)
        got: tuple[str, int | None]
        refusal = ""
        try:
            self.run_fresh(command)
            got = ("expired", None)
        except Repeated:
            got = ("repeated", None)
        except InvalidArgument as exc:
            assert "expires_at" in str(exc), exc
            got = ("after starts_at", None)
        except FailedPrecondition as exc:
            got = expire_refusal(str(exc))
            refusal = str(exc)
        assert got == expected, (customer, grant.id, at, offset, expires_ms, self.now, got, expected, refusal)
        statistic(f"expire {at}: {got[0]}")
        shown = next(g.grant for g in self.billing.balance(customer, self.now).grants if g.grant.id == grant.id)
        assert shown.expires_at_ms == grant.expires_at_ms, (shown.expires_at_ms, grant.expires_at_ms)
        if got[0] == "expired" and expires_ms == self.now and self.now + 1 - self.start < HORIZON_MS:
            # Expiring at the instant the clock last recorded: a read projects the breakage the clock's next look
            # records (the kernel's clock moves only when something is due), which `projected` models only for
            # time passed since that look. The next look, 1 ms on, records it.
            self.now += 1
            self.tick()

    def run_fresh(self, command: cmd.AdminCommand) -> None:
        """`run`, but a Repeated raised (EndContract answers one of its own)."""
        self.billing.apply(command, self.billing.last_seq + 1)
        self.records.append(command)

    # Time ------------------------------------------------------------------------------------------------

    @rule(step=st.sampled_from([500, 1_000, 30_000, HOUR_MS, DAY_MS, 9 * DAY_MS, "feb-1ms", "feb", "feb+1ms"]))
    def advance(self, step: int | str) -> None:
        target = {"feb-1ms": FEB_MS - 1, "feb": FEB_MS, "feb+1ms": FEB_MS + 1}.get(str(step))
        then = target if target is not None else self.now + int(step)
        if then <= self.now or then - self.start >= HORIZON_MS:
            return
        self.now = then
        self.tick()

    @rule(step=st.sampled_from([500, 30_000, HOUR_MS, DAY_MS, "feb"]))
    def wait(self, step: int | str) -> None:
        """Time passes and nothing records it yet: reads answer as the AdvanceClock at now will leave the state,
        and the next command or batch is preceded by that AdvanceClock."""
        then = FEB_MS if step == "feb" else self.now + int(step)
        if self.now < then and then - self.start < HORIZON_MS:
            self.now = then

    # Invariants ------------------------------------------------------------------------------------------

    @invariant()
    def balances_agree(self) -> None:
        if not self.oracles:
            return
        self.steps += 1
        projected = self.projected()
        for customer_id, oracle in self.oracles.items():
            oracle.credits_conserved()
            check_balance(self.billing, customer_id, projected[customer_id], self.now, self.paid)
            check_aggregates(self.billing, customer_id, oracle)
            purchases = [(g, c) for _, g, c, *_ in self.billing.kernel.top_up_purchases(customer_id)]
            assert purchases == [(g, int(c)) for _, g, c in oracle.purchases]

    @invariant()
    def credits_conserved(self) -> None:
        if not self.oracles:
            return
        self.billing.kernel.check_due_index()
        for customer_id in CUSTOMERS:
            view = self.billing.kernel.balance(customer_id, self.now)
            assert view is not None
            for (grant_id, amount, remaining, expired, drawn), held in zip(
                view["grants"], view["grants_held"], strict=True
            ):
                assert amount == drawn + remaining + held + expired, (grant_id, amount, drawn, remaining, held, expired)
                assert min(remaining, held, expired, drawn) >= 0, (grant_id, remaining, held, expired, drawn)

    @invariant()
    def snapshot_restores(self) -> None:
        if not self.oracles or self.steps % 5:
            return
        restored = Billing.from_snapshot(self.billing.encode_snapshot())
        assert state(restored) == state(self.billing)
        for customer_id in CUSTOMERS:  # the control plane's half too: what GetBalance answers
            assert restored.balance(customer_id, self.now) == self.billing.balance(customer_id, self.now)

    def teardown(self) -> None:
        if not self.oracles:
            return
        fresh = Billing()
        for record in self.records:
            if isinstance(record, tuple):
                server_replay(fresh, *record)
            else:
                fresh.apply(record, fresh.last_seq + 1)
        assert state(fresh) == state(self.billing)


def state(billing: Billing) -> bytes:
    billing.refresh_tables()
    billing.kernel.check_due_index()
    return billing.kernel.snapshot()


def recognized(oracle: ReferenceCredits, grant: RGrant, paid: Decimal | None) -> int:
    """Revenue recognised at the grant's cost basis on the credit usage drew from it (what rolled out is the
    ROLLOVER grant's), rounded half-even to the pico once (docs/architecture.md "Grants")."""
    assert paid is not None
    broken, held = oracle.breakage.get(grant.id, Decimal(0)), oracle.held(grant.id)
    drawn = grant.amount - grant.remaining - held - broken - oracle.rolled_out.get(grant.id, Decimal(0))
    return int(
        RATING.divide(RATING.multiply(drawn, paid) * PICOS, grant.amount).to_integral_value(decimal.ROUND_HALF_EVEN)
    )


def check_balance(
    billing: Billing, customer_id: str, oracle: ReferenceCredits, now_ms: int, paid: dict[str, Decimal]
) -> None:
    """GetBalance's fields (Billing.balance, in picos) against the oracle: a usable grant's remaining shows its held
    credit in it (balance.proto), what broke shows as expired, revenue recognised (`paid`: each grant's cost, a
    ROLLOVER's left out); the totals."""
    paid = dict(paid)
    for _, grant_id, credits_picos in oracle.purchases:
        paid[grant_id] = Decimal(int(credits_picos)) / PICOS * TOP_UP_PRICE
    view = billing.balance(customer_id, now_ms)
    got = {
        g.grant.id: (g.grant.amount, g.grant.drawn, g.remaining, g.expired, g.held, g.grant.recognized_revenue)
        for g in view.grants
    }
    expected = {}
    for g in oracle.grants:
        broken, held = oracle.breakage.get(g.id, Decimal(0)), oracle.held(g.id)
        usable = not expired(g, now_ms)
        expected[g.id] = (
            int(g.amount),
            int(g.amount - g.remaining - held - broken),
            int(g.remaining + held if usable else g.remaining),
            int(broken),
            int(held),
            recognized(oracle, g, paid.get(g.id)) if g.id in paid else got.get(g.id, (0,) * 6)[5],
        )
    assert got == expected, (customer_id, got, expected)
    period = oracle.period(now_ms)[0]
    # With no contract in force now (it has ended), there is no current period: its charges and overage are 0.
    in_force = oracle.in_force(now_ms)
    # balance.proto: credits_remaining sums started, unexpired grants' remaining (their holds in it), plus what
    # holds take from grants expired since; credits_available is that less everything held.
    held_total = sum((oracle.held(g.id) for g in oracle.grants), start=Decimal(0))
    remaining = sum(
        (g.remaining for g in oracle.grants if g.starts_at_ms <= now_ms and not expired(g, now_ms)), start=Decimal(0)
    )
    available = remaining
    overage = oracle.overage.get(period, Decimal(0)) if in_force else Decimal(0)
    _, overage_price = POLICIES[customer_id]
    assert (view.remaining, view.held, view.available, view.period_charges, view.overage, view.overage_due) == (
        int(available + held_total),
        int(held_total),
        int(available),
        int(oracle.charges.get(period, Decimal(0))) if in_force else 0,
        int(overage),
        RATING.multiply(overage, Decimal(overage_price)) / PICOS,
    ), customer_id


def end_refusal(message: str) -> tuple[str, int | None]:
    """An EndContract refusal (FAILED_PRECONDITION) in ReferenceRating.end_contract's terms, read from its message."""
    hour = re.search(r"in the hour from (\S+), at or after that end", message)
    if hour:
        return "usage", round(datetime.fromisoformat(hour.group(1).replace("Z", "+00:00")).timestamp() * 1000)
    for kind, says in (
        ("already ended", "has already ended"),
        ("before now", "before now"),
        ("rolling grant", "has a rollover fraction and starts at"),
    ):
        if says in message:
            return kind, None
    raise AssertionError(f"EndContract refused for no documented reason: {message}")


def expire_refusal(message: str) -> tuple[str, int | None]:
    """An ExpireGrant refusal (FAILED_PRECONDITION) in ReferenceCredits.expire_grant's terms, read from its message."""
    hour = re.search(r"in the hour from (\S+), which could have drawn on it", message)
    if hour:
        return "usage", round(datetime.fromisoformat(hour.group(1).replace("Z", "+00:00")).timestamp() * 1000)
    for kind, says in (
        ("already expired", "has already expired"),
        ("rolled over", "has already ended: rolled over at"),
        ("before now", "before now"),
        ("only earlier", "only moved earlier"),
    ):
        if says in message:
            return kind, None
    raise AssertionError(f"ExpireGrant refused for no documented reason: {message}")


def expired(grant: RGrant, now_ms: int) -> bool:
    return grant.expires_at_ms is not None and grant.expires_at_ms <= now_ms


def check_aggregates(billing: Billing, customer_id: str, oracle: ReferenceCredits) -> None:
    usage = billing.kernel.usage(customer_id)
    assert usage is not None
    got = sorted((*row[:7], sorted(row[7])) for row in usage[0])
    expected = []
    for (period, product_id, dimensions), a in oracle.aggregates.items():
        quantity = RATING.multiply(a.quantity, SCALE)
        drawn = sorted((grant_id, int(c)) for grant_id, c in a.drawn.items())
        start = period_start_ms(period)
        expected.append(
            (start, product_id, list(dimensions), int(quantity), a.events, int(a.amount), int(a.overage), drawn)
        )
    assert got == sorted(expected), customer_id


def period_start_ms(period: Period) -> int:
    return int(datetime(period[0], period[1], 1, tzinfo=UTC).timestamp()) * 1000


Credits.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
TestStatefulCredits = Credits.TestCase


class Draws:
    """A `data` whose draws are given in order (a plain test driving the machine's rules)."""

    def __init__(self, *values: object) -> None:
        self.values = list(values)

    def draw(self, strategy: object) -> object:
        return self.values.pop(0)


def test_a_top_up_for_usage_dated_in_the_next_period_counts_and_starts_at_that_period() -> None:
    """At 23:57 on January 31st acme has 5 credits of a grant rolling over at January's end (so usable only before
    it) and a top-up policy buying up to 13 below 3. An event dated 00:00:01 on February 1st (within the 5-minute
    skew) costs 4.5 (3 tokens at 1 per 3 units = 1, one call, a package of 10 at 2 = 2, a level of 3 at 0.5 = 1.5),
    all overage:
    the grant pays nothing dated after its rollover. The top-up counts the credit available at February's start, 0,
    and buys 13 starting there (docs/architecture.md "A top-up", `top_ups_in_billed_period`); counted at the
    purchase, in January, the grant's 5 would have bought nothing (the oracle's rule before it learnt the field)."""
    machine = Credits()
    machine.setup(FEB_MS - 3 * MINUTE_MS)
    machine.grant("acme", "5", "3", 0, (), None, "0.5", 1)
    machine.top_up_policy("acme", (3, 10, 2))
    usage = REvent("late", "acme", "ai", FEB_MS + 1_000, (("model", "m1"),), (("tokens", 3.0),))
    machine.ingest(Draws("new", usage), 1)
    purchases = machine.billing.kernel.top_up_purchases("acme")
    assert [(p[0], p[1], p[2]) for p in purchases] == [(FEB_MS, f"top-up-{FEB_MS}-1", 13 * PICOS)]
    usage_rows = machine.billing.kernel.usage("acme")
    assert usage_rows is not None
    assert sum(row[6] for row in usage_rows[0]) == 4_500_000_000_000  # overage
    machine.balances_agree()
    machine.credits_conserved()
    machine.teardown()
