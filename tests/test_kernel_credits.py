"""Reservations, top-ups, expiry and breakage in the rating kernel, driven as the server's writer drives them
(engine.billing.Billing over a World's control plane), each scenario replayed from its record at the end."""

from __future__ import annotations

import msgspec
import pytest
from tariff.v1 import usage_pb2

from engine import commands as cmd
from engine import credits
from engine.billing import Billing
from engine.contracts import OveragePolicy
from engine.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from engine.products import Aggregation
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, basic_world, picos, rate, unit

T0 = EPOCH_MS + 3_600_000  # an hour into the contract
DAY_MS = 86_400_000


def ledger(credit: str = "100", *, block: bool = False, expires_at_ms: int | None = None) -> Ledger:
    """acme: 1 credit per token, one PREPAID grant "g" of `credit` (paid 1 per credit)."""
    world = basic_world(overage_policy=OveragePolicy.BLOCK if block else OveragePolicy.ALLOW)
    world.grant("g", credit, paid=credit, expires_at_ms=expires_at_ms)
    world.customer("zed")
    world.contract("c-zed", customer_id="zed")
    world.grant("gz", "100", customer_id="zed")
    return Ledger(world)


def balance(machine: Ledger | Billing, now_ms: int = T0, customer_id: str = "acme") -> dict[str, int]:
    billing = machine.billing if isinstance(machine, Ledger) else machine
    view = billing.balance(customer_id, now_ms)
    return {"remaining": view.remaining, "held": view.held, "available": view.available}


def assert_replays(machine: Ledger) -> None:
    """Replaying the record gives the same kernel state, byte for byte."""
    assert machine.replayed().kernel.snapshot() == machine.billing.kernel.snapshot()


def conserved(machine: Ledger, now_ms: int, customer_id: str = "acme") -> None:
    """granted = drawn + remaining + held + expired, for every grant, and nothing negative."""
    view = machine.billing.kernel.balance(customer_id, now_ms)
    assert view is not None
    for (grant_id, amount, remaining, expired, drawn), held in zip(view["grants"], view["grants_held"], strict=True):
        assert amount == drawn + remaining + held + expired, grant_id
        assert min(remaining, held, expired, drawn) >= 0, grant_id


def test_a_reservation_holds_credit_and_the_same_id_holds_once() -> None:
    m = ledger()
    first = m.reserve("r1", 30, T0)
    assert (first.allowed, first.reason, first.cost, first.held, first.repeated) == (
        True,
        "OK",
        picos("30"),
        picos("30"),
        False,
    )
    assert first.available == picos("70")
    assert balance(m) == {"remaining": picos("100"), "held": picos("30"), "available": picos("70")}
    again = m.reserve("r1", 30, T0 + 5)
    assert (again.repeated, again.held) == (True, picos("30"))
    assert balance(m)["held"] == picos("30")
    assert len(m.records) == 1  # the repeat took no journal record
    with pytest.raises(AlreadyExists, match="'r1' is already used by a different request"):
        m.reserve("r1", 31, T0 + 6)
    assert balance(m)["held"] == picos("30")
    conserved(m, T0)
    assert_replays(m)


@pytest.mark.parametrize(("used", "left"), [(10, "90"), (45, "55")])
def test_an_event_settles_its_reservation_and_is_charged_what_it_costs(used: int, left: str) -> None:
    m = ledger()
    m.reserve("r1", 30, T0)
    ack = m.ingest([event("t1", T0, used, reservation_id="r1")], T0 + 1)
    assert (ack.accepted, list(ack.notices)) == (1, [])
    assert balance(m) == {"remaining": picos(left), "held": 0, "available": picos(left)}
    assert m.billing.kernel.reservations("acme") == []
    conserved(m, T0)
    assert_replays(m)


def test_a_second_event_on_a_settled_reservation_and_an_unknown_id_are_rated_and_noticed() -> None:
    m = ledger()
    m.reserve("r1", 30, T0)
    m.ingest([event("t1", T0, 10, reservation_id="r1")], T0 + 1)
    ack = m.ingest([event("t2", T0, 5, reservation_id="r1"), event("t3", T0, 5, reservation_id="nope")], T0 + 2)
    assert ack.accepted == 2
    reasons = [(n.index, n.transaction_id, n.reservation_id, n.reason) for n in ack.notices]
    assert reasons == [
        (0, "t2", "r1", usage_pb2.NOTICE_RESERVATION_ALREADY_SETTLED),
        (1, "t3", "nope", usage_pb2.NOTICE_RESERVATION_UNKNOWN),
    ]
    assert "was already settled" in ack.notices[0].message
    assert balance(m)["remaining"] == picos("80")
    assert_replays(m)


def test_release_frees_the_hold_once_and_never_reveals_another_customers_reservation() -> None:
    m = ledger()
    m.reserve("r1", 30, T0)
    assert m.release("r1", T0 + 1) == picos("30")
    assert balance(m) == {"remaining": picos("100"), "held": 0, "available": picos("100")}
    assert m.release("r1", T0 + 2) == picos("30")  # a retry: the same answer, nothing more given back
    assert balance(m)["available"] == picos("100")
    m.reserve("zr", 5, T0, customer_id="zed")
    with pytest.raises(NotFound) as other:
        m.release("zr", T0 + 3)  # zed's reservation, released as acme
    with pytest.raises(NotFound) as never:
        m.release("never", T0 + 3)
    assert str(other.value).replace("zr", "X") == str(never.value).replace("never", "X")
    m.reserve("r2", 10, T0)
    m.ingest([event("t1", T0, 10, reservation_id="r2")], T0 + 4)
    with pytest.raises(FailedPrecondition, match="already settled"):
        m.release("r2", T0 + 5)
    assert_replays(m)


def test_a_reservation_expires_at_its_ttl_through_the_clock_and_says_so() -> None:
    m = ledger()
    m.run(cmd.CreateAlert(EPOCH_MS, ACTOR, "expiries", "", True, "RESERVATION_EXPIRED", ""))
    m.reserve("r1", 30, T0, ttl_ms=10_000)
    assert m.billing.kernel.clock()[1] == T0 + 10_000
    assert m.advance(T0 + 9_999) == credits.Advanced(0, 0)  # not due: nothing changes, nothing journaled
    records = len(m.records)
    assert m.advance(T0 + 10_000) == credits.Advanced(1, 0)
    assert len(m.records) == records + 1
    assert balance(m) == {"remaining": picos("100"), "held": 0, "available": picos("100")}
    # The expiry's notice fires the RESERVATION_EXPIRED rule, in the AdvanceClock's record.
    [expired] = m.billing.take_fired()
    assert (expired.type, expired.customer_id, expired.journal_seq) == (
        "RESERVATION_EXPIRED",
        "acme",
        m.billing.last_seq,
    )
    details = expired.details
    assert (details["reservation_id"], details["released_picos"], details["at_ms"]) == (
        "r1",
        str(picos("30")),
        str(T0 + 10_000),
    )
    ack = m.ingest([event("t1", T0, 5, reservation_id="r1")], T0 + 20_000)
    assert [n.reason for n in ack.notices] == [usage_pb2.NOTICE_RESERVATION_EXPIRED]
    # What is due now is only r1's forgetting, as the dedupe window after it expired ends.
    assert m.billing.kernel.clock()[1] == T0 + 10_000 + 35 * DAY_MS
    assert_replays(m)


def test_with_block_holds_together_never_exceed_the_credit() -> None:
    m = ledger("100", block=True)
    assert m.reserve("a", 60, T0).allowed
    denied = m.reserve("b", 60, T0)
    assert (denied.allowed, denied.reason, denied.held) == (False, "INSUFFICIENT_CREDIT", 0)
    assert m.billing.kernel.reservations("acme")[0][0] == "a"
    assert m.reserve("c", 40, T0).allowed
    assert not m.reserve("d", 1, T0).allowed
    assert balance(m) == {"remaining": picos("100"), "held": picos("100"), "available": 0}
    # A plain Authorize sees the holds too.
    assert m.billing.estimate("acme", "ai", {}, {"tokens": 1}, T0).reason == "INSUFFICIENT_CREDIT"
    conserved(m, T0)
    assert_replays(m)


def top_up_policy(
    contract_id: str = "c-acme", *, threshold: str = "20", recharge_to: str = "100", cap: int = 3
) -> cmd.SetTopUpPolicy:
    return cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, contract_id, threshold, recharge_to, "0.5", cap)


def test_one_batch_crossing_the_threshold_twice_buys_twice() -> None:
    m = ledger("100")
    m.run(top_up_policy())
    m.run(cmd.CreateAlert(EPOCH_MS, ACTOR, "top-ups", "acme", False, "TOP_UP_EXECUTED", ""))
    ack = m.ingest([event(f"t{i}", T0, 45) for i in range(4)], T0 + 1)
    assert ack.accepted == 4
    # 100 -45 -45 = 10 < 20: top up to 100; -45 -45 = 10 < 20: top up again.
    purchases = m.billing.kernel.top_up_purchases("acme")
    assert [(p[1], p[2]) for p in purchases] == [
        (purchases[0][1], picos("90")),
        (purchases[1][1], picos("90")),
    ]
    assert purchases[0][4] == picos("90") * 5 * 10**17  # 90 credits x 0.5: cost at 10^-30
    assert balance(m)["available"] == picos("100")
    view = m.billing.balance("acme", T0 + 2)
    top_ups = [g for g in view.grants if g.grant.kind == "TOP_UP"]
    assert [str(g.grant.paid_amount) for g in top_ups] == ["45.000000000000000000000000000000"] * 2
    # Each top-up fires the TOP_UP_EXECUTED rule once, in the batch's record.
    fired = m.billing.engine.state.alerts.log
    assert [(a.type, a.customer_id, a.details["grant_id"]) for a in fired] == [
        ("TOP_UP_EXECUTED", "acme", purchases[0][1]),
        ("TOP_UP_EXECUTED", "acme", purchases[1][1]),
    ]
    assert {a.journal_seq for a in fired} == {m.billing.last_seq}
    assert_replays(m)


def test_a_burst_of_batches_buys_once_and_the_cap_holds_per_period() -> None:
    m = ledger("100")
    m.run(top_up_policy(cap=2))
    for i in range(9):  # 85 drawn by the first five, then more
        m.ingest([event(f"t{i}", T0, 17)], T0 + i)
    # 100 - 5x17 = 15: one top-up to 100; then 4 more x17 = 32 left, no second.
    assert len(m.billing.kernel.top_up_purchases("acme")) == 1
    for i in range(9, 40):
        m.ingest([event(f"t{i}", T0, 17)], T0 + i)
    assert len(m.billing.kernel.top_up_purchases("acme")) == 2  # the cap
    next_period = EPOCH_MS + 31 * DAY_MS + 3_600_000  # February
    m.ingest([event("feb", next_period, 1)], next_period)
    purchases = m.billing.kernel.top_up_purchases("acme")
    assert len(purchases) == 3 and purchases[2][0] == EPOCH_MS + 31 * DAY_MS
    assert_replays(m)


@pytest.mark.parametrize(
    ("threshold", "recharge_to", "price", "cap", "field"),
    [
        ("100", "100", "1", 1, "top_up.threshold"),
        ("10", "100", "-1", 1, "top_up.price_per_credit"),
        ("10", "100", "1", 0, "top_up.max_per_period"),
        ("10", "100.0000000000001", "1", 1, "top_up.recharge_to"),
    ],
)
def test_a_bad_top_up_policy_is_refused_naming_the_field(
    threshold: str, recharge_to: str, price: str, cap: int, field: str
) -> None:
    m = ledger()
    with pytest.raises(InvalidArgument) as refused:
        m.run(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", threshold, recharge_to, price, cap))
    assert refused.value.violations[0][0] == field
    assert m.billing.kernel.top_up_policy("acme") is None


def test_an_expired_grant_becomes_breakage_and_a_late_event_cannot_draw_on_it() -> None:
    expiry = T0 + DAY_MS
    m = ledger("100", expires_at_ms=expiry)
    m.ingest([event("t1", T0, 30)], T0)
    assert m.billing.kernel.clock()[1] == expiry
    assert m.advance(expiry) == credits.Advanced(0, 1, ("acme",))
    assert m.billing.kernel.breakage("acme") == [("acme", "g", EPOCH_MS, picos("70"), expiry)]
    assert m.billing.kernel.breakage(None) == m.billing.kernel.breakage("acme")
    # Dated before the expiry, arriving after the breakage was recorded: rated, but drawn from nothing.
    m.ingest([event("late", T0 + 5, 10)], expiry + 1)
    view = m.billing.balance("acme", expiry + 2)
    grant = view.grants[0]
    assert (grant.grant.drawn, grant.remaining, grant.expired) == (picos("30"), 0, picos("70"))
    assert view.overage == picos("10")
    conserved(m, expiry + 2)
    assert_replays(m)


def test_a_hold_on_an_expiring_grant_becomes_breakage_when_it_is_given_back() -> None:
    expiry = T0 + 60_000
    m = ledger("100", expires_at_ms=expiry)
    m.reserve("r1", 30, T0, ttl_ms=120_000)
    assert m.advance(expiry) == credits.Advanced(0, 1, ("acme",))  # 70 unheld broken, 30 still held
    conserved(m, expiry)
    assert m.advance(T0 + 120_000) == credits.Advanced(1, 1, ("acme",))  # the hold expires, then its 30 break
    assert [b[3] for b in m.billing.kernel.breakage("acme")] == [picos("70"), picos("30")]
    conserved(m, T0 + 120_000)
    assert_replays(m)


@pytest.mark.parametrize(("breaks", "drawn", "broken"), [(True, "1", ["70", "29"]), (False, "30", ["70"])])
def test_what_a_settling_event_leaves_on_an_expired_grant_breaks_with_its_batch(
    breaks: bool, drawn: str, broken: list[str]
) -> None:
    """A hold of 30 on "g" (100, expiring at T0 + 1 min), whose 70 unheld break at the expiry. One batch after it: the
    event settling the hold (1 token, dated before the expiry) draws 1 of the 30 given back, then a late event (29,
    dated before the expiry too). With the rule the server sets, the 29 left break with the batch (at its time) and
    the late event draws nothing (drawn 1, 29 of overage); a batch journaled without it replays as before: the late event
    draws the 29 (drawn 1 + 29 = 30), nothing more breaks. Either way the record replays to the same state."""
    expiry = T0 + 60_000
    m = ledger("100", expires_at_ms=expiry)
    m.reserve("r1", 30, T0, ttl_ms=120_000)
    assert m.advance(expiry) == credits.Advanced(0, 1, ("acme",))
    events = [event("s", T0 + 1, 1, reservation_id="r1"), event("late", T0 + 2, 29)]
    m.ingest(events, expiry + 10, returned_expired_credit_breaks=breaks)
    view = m.billing.balance("acme", expiry + 10)
    assert view.grants[0].grant.drawn == picos(drawn)
    assert view.overage == (picos("29") if breaks else 0)
    breakage = m.billing.kernel.breakage("acme")
    assert [b[3] for b in breakage] == [picos(c) for c in broken]
    assert [b[4] for b in breakage] == [expiry, expiry + 10][: len(broken)]
    conserved(m, expiry + 10)
    assert_replays(m)


@pytest.mark.parametrize(("breaks", "drawn", "broken"), [(True, "0", ["70", "30"]), (False, "29", ["70"])])
def test_what_a_release_gives_back_to_an_expired_grant_breaks_at_once(
    breaks: bool, drawn: str, broken: list[str]
) -> None:
    """A hold of 30 on "g" (100, expiring at T0 + 1 min), whose 70 unheld break at the expiry; the hold is released
    after it, then a late event (29 tokens, dated before the expiry) arrives before any AdvanceClock (the writer
    may apply both in one group). With the rule the server sets on its releases, the 30 break with the release (at
    its time) and the late event draws nothing (29 of overage); a release stored without it replays as before: the
    30 wait for the clock and the late event draws 29 of them. Either way the record replays to the same state."""
    expiry = T0 + 60_000
    m = ledger("100", expires_at_ms=expiry)
    m.reserve("r1", 30, T0, ttl_ms=120_000)
    assert m.advance(expiry) == credits.Advanced(0, 1, ("acme",))
    assert m.release("r1", expiry + 5, expired_credit_breaks=breaks) == picos("30")
    m.ingest([event("late", T0 + 2, 29)], expiry + 10, returned_expired_credit_breaks=True)
    view = m.billing.balance("acme", expiry + 10)
    assert view.grants[0].grant.drawn == picos(drawn)
    assert view.overage == (picos("29") if breaks else 0)
    breakage = m.billing.kernel.breakage("acme")
    assert [b[3] for b in breakage] == [picos(c) for c in broken]
    assert [b[4] for b in breakage] == [expiry, expiry + 5][: len(broken)]
    conserved(m, expiry + 10)
    assert_replays(m)


def test_the_snapshot_keeps_holds_policies_and_breakage_and_restores_them() -> None:
    m = ledger("100", expires_at_ms=T0 + DAY_MS)
    m.run(top_up_policy())
    m.reserve("r1", 30, T0, ttl_ms=50_000)
    blob = m.billing.encode_snapshot()
    restored = Billing.from_snapshot(blob)
    assert restored.kernel.snapshot() == m.billing.kernel.snapshot()
    assert restored.kernel.reservations("acme") == m.billing.kernel.reservations("acme")
    assert restored.kernel.clock() == m.billing.kernel.clock()  # the hold is due at its time after a restart
    assert restored.kernel.top_up_policy("acme") == m.billing.kernel.top_up_policy("acme")


FEB_MS = EPOCH_MS + 31 * DAY_MS
MAR_MS = FEB_MS + 28 * DAY_MS


def test_at_the_periods_end_a_fraction_rolls_over_and_the_rest_breaks() -> None:
    world = basic_world()
    world.apply(world.grant_command("g", "100", paid="50", rollover_fraction="0.5"))
    m = Ledger(world)
    m.ingest([event("jan", T0, 40)], T0)
    assert m.billing.kernel.clock()[1] == FEB_MS  # the end of the period in which "g" starts
    assert m.advance(FEB_MS) == credits.Advanced(0, 1, ("acme",))
    rolled_id = f"rollover-g-{FEB_MS}"
    assert m.billing.kernel.breakage("acme") == [("acme", "g", EPOCH_MS, picos("30"), FEB_MS)]
    view = m.billing.balance("acme", FEB_MS + 1)
    by_id = {g.grant.id: g for g in view.grants}
    rolled = by_id[rolled_id]
    assert (rolled.grant.kind, rolled.grant.amount, rolled.remaining) == ("ROLLOVER", picos("30"), picos("30"))
    assert rolled.grant.paid_amount == 15  # the cost basis carried over: 0.5 per credit
    assert (rolled.grant.starts_at_ms, rolled.grant.expires_at_ms) == (FEB_MS, MAR_MS)
    assert (by_id["g"].remaining, by_id["g"].expired) == (0, picos("30"))
    # A late January event finds nothing left in "g" (the rollover grant starts in February): overage.
    m.ingest([event("late-jan", T0 + 5, 10)], FEB_MS + 2)
    m.ingest([event("feb", FEB_MS + 10, 10)], FEB_MS + 10)
    assert m.billing.balance("acme", FEB_MS + 20).remaining == picos("20")
    assert m.advance(MAR_MS) == credits.Advanced(0, 1, ("acme",))  # the rolled grant expires: its rest breaks
    assert m.billing.kernel.breakage("acme")[-1] == ("acme", rolled_id, FEB_MS, picos("20"), MAR_MS)
    conserved(m, MAR_MS)
    assert_replays(m)


def half_price_from_epoch(m: Ledger, at_ms: int, **flags: bool) -> cmd.PublishVersion:
    """Drafts version 2 of "card" (tokens at 0.5) at `at_ms` + 5 and returns its publish from the epoch at `at_ms` +
    6 with the re-rating `flags` (to run): a cut re-rating every hour rated so far."""
    m.run(
        cmd.CreateDraftVersion(
            at_ms=at_ms + 5,
            actor=ACTOR,
            rate_card_id="card",
            based_on_version=1,
            set_parameters={},
            remove_parameters=(),
            upsert_rates=(rate("tokens", unit("0.5")),),
            remove_rates=(),
            change_note="",
        )
    )
    publish = cmd.PublishVersion(
        at_ms=at_ms + 6, actor=ACTOR, rate_card_id="card", version=2, effective_from_ms=EPOCH_MS
    )
    return msgspec.structs.replace(publish, **flags)


@pytest.mark.parametrize(("breaks", "remaining", "broken"), [(True, "0", ["30", "40"]), (False, "40", ["30"])])
def test_what_a_late_refund_gives_back_to_a_grant_that_rolled_over_breaks_with_its_batch(
    breaks: bool, remaining: str, broken: list[str]
) -> None:
    """A LATEST gauge (1 credit a unit) reads 40 in January: "g" (100 paid 50, half rolling over) pays it. At February
    30 of its 60 roll over, 30 break. A late reading dated in January (still open) falls to 0: the 40 "g" paid go back
    to it. With the rule the server sets, they break with the batch, in January's period, at its time: the rollover was
    final. A batch journaled without it replays as before: the 40 stay in "g" as remaining credit. Either way the
    record replays to the same state."""
    world = basic_world(aggregation=Aggregation.LATEST)
    world.apply(world.grant_command("g", "100", paid="50", rollover_fraction="0.5"))
    m = Ledger(world)
    m.ingest([event("jan", T0, 40)], T0)
    assert m.advance(FEB_MS) == credits.Advanced(0, 1, ("acme",))
    m.ingest(
        [event("late-jan", T0 + 5, 0)],
        FEB_MS + 2,
        returned_expired_credit_breaks=True,
        returned_rolled_credit_breaks=breaks,
    )
    by_id = {g.grant.id: g for g in m.billing.balance("acme", FEB_MS + 3).grants}
    assert by_id["g"].remaining == picos(remaining)
    assert by_id[f"rollover-g-{FEB_MS}"].remaining == picos("30")
    breakage = m.billing.kernel.breakage("acme")
    assert [(b[1], b[2], b[3]) for b in breakage] == [("g", EPOCH_MS, picos(c)) for c in broken]
    assert [b[4] for b in breakage] == [FEB_MS, FEB_MS + 2][: len(broken)]
    conserved(m, FEB_MS + 3)
    assert_replays(m)


@pytest.mark.parametrize(("breaks", "remaining", "broken"), [(True, "0", ["30", "20"]), (False, "20", ["30"])])
def test_what_a_cut_gives_back_to_a_grant_that_rolled_over_breaks_with_the_re_rating(
    breaks: bool, remaining: str, broken: list[str]
) -> None:
    """40 tokens in January at 1 credit: "g" (100 paid 50, half rolling over) pays them. At February 30 of its 60
    roll over, 30 break. A version at 0.5 a token published from January (still open): January's 40 tokens cost 20
    now, so settling again gives 20 back to "g", which rolled over. With the field the server sets on its publishes
    they break with the re-rating, in January's period, at the latest AdvanceClock's time (February's start): the
    rollover was final. A publish journaled without it replays as before: the 20 stay in "g" as remaining credit,
    which nothing can use and no clock breaks. Either way the record replays to the same state."""
    world = basic_world()
    world.apply(world.grant_command("g", "100", paid="50", rollover_fraction="0.5"))
    m = Ledger(world)
    m.ingest([event("jan", T0, 40)], T0)
    assert m.advance(FEB_MS) == credits.Advanced(0, 1, ("acme",))
    publish = half_price_from_epoch(
        m,
        FEB_MS,
        rerate_breaks_rolled_credit=breaks,
    )
    assert m.run(publish).events_rerated == 1  # type: ignore[attr-defined]
    by_id = {g.grant.id: g for g in m.billing.balance("acme", FEB_MS + 10).grants}
    assert by_id["g"].remaining == picos(remaining)
    assert by_id[f"rollover-g-{FEB_MS}"].remaining == picos("30")
    breakage = m.billing.kernel.breakage("acme")
    assert [(b[1], b[2], b[3], b[4]) for b in breakage] == [("g", EPOCH_MS, picos(c), FEB_MS) for c in broken]
    conserved(m, FEB_MS + 10)
    assert_replays(m)


def test_credit_held_at_the_periods_end_rolls_over_as_if_released_just_before_it() -> None:
    """Holds on a rollover grant at its period's end: (remainder + held) x fraction rolls over in all, each hold
    keeping its share on the ROLLOVER grant (given back there when it ends), the rest breaking at the period's
    end, in the period that ended."""
    world = basic_world()
    world.apply(world.grant_command("g", "100", paid="50", rollover_fraction="0.5"))
    m = Ledger(world)
    m.ingest([event("jan", T0, 40)], T0)
    m.reserve("r1", 20, FEB_MS - 1_000, ttl_ms=60_000)
    m.reserve("r2", 6, FEB_MS - 500, ttl_ms=60_000)
    assert m.advance(FEB_MS) == credits.Advanced(0, 1, ("acme",))
    rolled_id = f"rollover-g-{FEB_MS}"
    # 34 left + 20 + 6 held = 60: 30 roll over (17 of the remainder, 10 and 3 of the holds), 30 break now.
    assert m.billing.kernel.breakage("acme") == [("acme", "g", EPOCH_MS, picos("30"), FEB_MS)]
    assert [(r[0], r[2]) for r in m.billing.kernel.reservations("acme")] == [("r1", picos("10")), ("r2", picos("3"))]
    by_id = {g.grant.id: g for g in m.billing.balance("acme", FEB_MS + 1).grants}
    rolled = by_id[rolled_id]
    assert (rolled.grant.amount, rolled.remaining, rolled.held) == (picos("30"), picos("30"), picos("13"))
    assert rolled.grant.paid_amount == 15  # the cost basis carried over: 0.5 per credit
    assert (by_id["g"].remaining, by_id["g"].held, by_id["g"].expired) == (0, 0, picos("30"))
    conserved(m, FEB_MS + 1)
    # Released after the period's end: the hold's share comes back to the ROLLOVER grant, not to "g".
    assert m.release("r1", FEB_MS + 1_000) == picos("10")
    # Settled by a February event of 5: its 3 come back to the ROLLOVER grant, then the event draws 5 there.
    ack = m.ingest([event("feb", FEB_MS + 2_000, 5, reservation_id="r2")], FEB_MS + 2_000)
    assert list(ack.notices) == []
    by_id = {g.grant.id: g for g in m.billing.balance("acme", FEB_MS + 3_000).grants}
    assert (by_id[rolled_id].remaining, by_id[rolled_id].held) == (picos("25"), 0)
    assert (by_id["g"].remaining, by_id["g"].held) == (0, 0)
    conserved(m, FEB_MS + 3_000)
    m.billing.kernel.check_due_index()
    # The same history with both holds released just before the period's end rolls over and breaks the same.
    world = basic_world()
    world.apply(world.grant_command("g", "100", paid="50", rollover_fraction="0.5"))
    early = Ledger(world)
    early.ingest([event("jan", T0, 40)], T0)
    early.reserve("r1", 20, FEB_MS - 1_000, ttl_ms=60_000)
    early.reserve("r2", 6, FEB_MS - 500, ttl_ms=60_000)
    early.release("r1", FEB_MS - 2)
    early.release("r2", FEB_MS - 1)
    early.advance(FEB_MS)
    assert early.billing.kernel.breakage("acme") == m.billing.kernel.breakage("acme")
    assert early.billing.kernel.made_grants("acme") == m.billing.kernel.made_grants("acme")
    assert_replays(m)


def test_a_hold_expiring_after_the_period_end_gives_its_share_to_the_rollover_grant() -> None:
    world = basic_world()
    world.apply(world.grant_command("g", "10", paid="10", rollover_fraction="0.25"))
    m = Ledger(world)
    m.reserve("r1", 10, FEB_MS - 100, ttl_ms=1_000)  # the whole grant held across the period's end
    assert m.advance(FEB_MS) == credits.Advanced(0, 1, ("acme",))
    rolled_id = f"rollover-g-{FEB_MS}"
    assert m.billing.kernel.breakage("acme") == [("acme", "g", EPOCH_MS, picos("7.5"), FEB_MS)]
    assert m.billing.kernel.next_due() == FEB_MS + 900  # the hold's TTL
    assert m.advance(FEB_MS + 900) == credits.Advanced(1, 0)
    by_id = {g.grant.id: g for g in m.billing.balance("acme", FEB_MS + 1_000).grants}
    assert (by_id[rolled_id].grant.amount, by_id[rolled_id].remaining) == (picos("2.5"), picos("2.5"))
    assert m.billing.kernel.next_due() == MAR_MS  # the ROLLOVER grant's own expiry
    conserved(m, FEB_MS + 1_000)
    assert_replays(m)


def test_the_next_due_time_is_exact_and_a_settled_hold_is_not_due() -> None:
    """`next_due()` (what the server's clock driver waits for) reads the kernel's index of due times: a settled
    hold is no longer due. `clock()` keeps the lower bound from before the index, so an AdvanceClock at the
    settled hold's TTL, as journals written before the index hold, is still applied."""
    m = ledger()
    m.reserve("r1", 30, T0, ttl_ms=10_000)
    assert m.billing.kernel.next_due() == T0 + 10_000
    m.ingest([event("t1", T0, 30, reservation_id="r1")], T0 + 1)
    assert m.billing.kernel.next_due() is None
    assert m.billing.kernel.clock()[1] == T0 + 10_000
    records = len(m.records)
    assert m.advance(T0 + 10_000) == credits.Advanced(0, 0)
    assert len(m.records) == records + 1
    # Left due: only r1's forgetting, as the dedupe window after it was settled ends (next_forget, not next_due).
    forget_ms = T0 + 1 + 35 * DAY_MS
    assert (m.billing.kernel.clock(), m.billing.kernel.next_forget()) == ((T0 + 10_000, forget_ms), forget_ms)
    m.billing.kernel.check_due_index()
    assert_replays(m)


@pytest.mark.parametrize(
    ("keep", "held_on", "broken", "after_release"),
    [(True, "rolled", ["30", "20"], ("0", "30")), (False, "g", ["30", "10"], ("10", "30"))],
)
def test_a_hold_that_rolled_over_keeps_its_share_on_the_rollover_grant_when_a_cut_re_rates_its_period(
    keep: bool, held_on: str, broken: list[str], after_release: tuple[str, str]
) -> None:
    """40 tokens in January at 1 credit drawn from "g" (100 paid 50, half rolling over); r1 holds 20 in January's
    last hour. At February (40 + 20) x 0.5 = 30 roll over (20 of the remainder, r1's 10), 30 break. A version at 0.5
    published from January: the 40 tokens cost 20, and the 20 given back to "g" break with the re-rating (it rolled
    over). With the field the server sets on its publishes r1 stays on the ROLLOVER grant with its 10 (README "Held
    credit at a rollover": never back to the original), and its release gives them back there. A publish journaled
    without it replays as before: r1 was taken again from "g" (usable when it was made), 10 of the 20 then
    broke, the ROLLOVER grant's 10 were freed, and the release left its 10 in "g", usable by nothing. Either way
    the record replays to the same state."""
    world = basic_world()
    world.apply(world.grant_command("g", "100", paid="50", rollover_fraction="0.5"))
    m = Ledger(world)
    m.ingest([event("jan", T0, 40)], T0)
    m.reserve("r1", 20, FEB_MS - 1_000, ttl_ms=60_000)
    assert m.advance(FEB_MS) == credits.Advanced(0, 1, ("acme",))
    rolled_id = f"rollover-g-{FEB_MS}"
    publish = half_price_from_epoch(
        m,
        FEB_MS,
        rerate_holds_in_time=True,
        rerate_breaks_rolled_credit=True,
        rerate_holds_off_final_grants=keep,
    )
    m.run(publish)
    ids = {"g": "g", "rolled": rolled_id}
    by_id = {g.grant.id: g for g in m.billing.balance("acme", FEB_MS + 10).grants}
    assert (by_id[ids[held_on]].held, by_id[rolled_id].remaining) == (picos("10"), picos("30"))
    breakage = m.billing.kernel.breakage("acme")
    assert [(b[1], b[3]) for b in breakage] == [("g", picos(c)) for c in broken]
    conserved(m, FEB_MS + 10)
    assert m.release("r1", FEB_MS + 1_000) == picos("10")
    by_id = {g.grant.id: g for g in m.billing.balance("acme", FEB_MS + 2_000).grants}
    assert (by_id["g"].remaining, by_id[rolled_id].remaining) == tuple(picos(c) for c in after_release)
    conserved(m, FEB_MS + 2_000)
    assert_replays(m)


@pytest.mark.parametrize(("keep", "e_held", "x_held", "broken"), [(True, "0", "20", ["5"]), (False, "5", "15", [])])
def test_a_cut_re_rating_before_an_expiry_breaks_what_it_gives_back_rather_than_moving_a_hold_onto_it(
    keep: bool, e_held: str, x_held: str, broken: list[str]
) -> None:
    """ "e" (10, priority 1, expiring at T0 + 2 h) pays January's 10 tokens; r1 then holds 20 on "x" (100, priority 2)
    at T0 + 1 h. "e" expires with nothing left. A version at 0.5 published from January after that: the tokens cost 5
    and 5 go back to "e". With the field the server sets on its publishes they break (the expiry is final) and r1
    keeps its 20 on "x". A publish journaled without it replays as before: r1 was taken again from "e" first (usable
    when it was made, first in burn order), holding those 5, and 15 on "x". Either way the record replays alike."""
    world = basic_world()
    world.apply(world.grant_command("e", "10", paid="10", priority=1, expires_at_ms=T0 + 2 * HOUR_MS))
    world.apply(world.grant_command("x", "100", paid="100", priority=2))
    m = Ledger(world)
    m.ingest([event("jan", T0, 10)], T0)
    m.reserve("r1", 20, T0 + HOUR_MS, ttl_ms=10 * HOUR_MS)
    m.advance(T0 + 3 * HOUR_MS)
    publish = half_price_from_epoch(
        m,
        T0 + 3 * HOUR_MS,
        rerate_holds_in_time=True,
        rerate_breaks_rolled_credit=True,
        rerate_holds_off_final_grants=keep,
    )
    m.run(publish)
    m.advance(T0 + 3 * HOUR_MS + 10)
    by_id = {g.grant.id: g for g in m.billing.balance("acme", T0 + 3 * HOUR_MS + 20).grants}
    assert (by_id["e"].held, by_id["x"].held) == (picos(e_held), picos(x_held))
    assert [b[3] for b in m.billing.kernel.breakage("acme")] == [picos(c) for c in broken]
    conserved(m, T0 + 3 * HOUR_MS + 20)
    assert_replays(m)
