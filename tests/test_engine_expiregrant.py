"""ExpireGrant over the billing machine (engine/grants.py `_expire_grant`, the kernel's `set_grant_expiry`;
contracts.proto ExpireGrant): a grant's expiry moved earlier breaks what it holds then, as a grant created with that
expiry would; each refusal in its order changing nothing; a retry Repeated; the rollover rule (before the period's
end no rollover, exactly at it a rollover); a TOP_UP grant the kernel made; a hold on the grant; the records
replayed alike. Every balance keeps granted = drawn + remaining + held + expired.

basic_world: 1 credit a token, customer `acme` on contract `c-acme` from EPOCH (2026-01-01), ALLOW overage."""

from __future__ import annotations

import msgspec
import pytest

from engine import commands as cmd
from engine.balances import GrantView
from engine.billing import Billing
from engine.errors import EngineError, FailedPrecondition, InvalidArgument, NotFound, Repeated
from engine.ledger import Grant, GrantKind
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, basic_world, picos

DAY_MS = 24 * HOUR_MS
T0 = EPOCH_MS + 10 * DAY_MS  # the commands' time: ten days into January
FEB_MS = EPOCH_MS + 31 * DAY_MS


def expire(grant_id: str, expires_at_ms: int, *, at_ms: int = T0, customer_id: str = "acme") -> cmd.ExpireGrant:
    """As the server sends it (server-set fields on)."""
    return cmd.ExpireGrant(at_ms, ACTOR, customer_id, grant_id, expires_at_ms)


def ledger(*grants: tuple[str, str, int | None]) -> Ledger:
    """basic_world with PREPAID grants (id, amount, expires_at_ms) from EPOCH, each paid half its amount."""
    world = basic_world()
    for grant_id, amount, expires_at_ms in grants:
        world.grant(grant_id, amount, paid=str(int(amount) // 2), expires_at_ms=expires_at_ms)
    return Ledger(world)


def view(billing: Billing, grant_id: str, now_ms: int) -> GrantView:
    return next(v for v in billing.balance("acme", now_ms).grants if v.grant.id == grant_id)


def conserved(v: GrantView, now_ms: int) -> bool:
    """granted = drawn + remaining + held + expired (a usable grant's remaining has its held in it)."""
    usable = v.grant.expires_at_ms is None or now_ms < v.grant.expires_at_ms
    remaining = v.remaining - v.held if usable else v.remaining
    return v.grant.amount == v.grant.drawn + remaining + v.held + v.expired


def test_an_expiry_moved_earlier_breaks_the_rest_then_is_audited_and_replays_alike() -> None:
    """g: 100 paid 50, no expiry; 30 tokens at T0 draw 30. ExpireGrant at T0 + 1 h (from T0): the record moved, one
    ExpireGrant audit entry (grant/g). Nothing breaks at T0 + 1 h - 1 ms; at T0 + 1 h the clock breaks 70. A fresh
    machine fed the same records shows the same balance."""
    m = ledger(("g", "100", None))
    m.ingest([event("t1", T0 - HOUR_MS, 30)], T0 - HOUR_MS)
    moved = m.run(expire("g", T0 + HOUR_MS))
    assert isinstance(moved, Grant) and moved.expires_at_ms == T0 + HOUR_MS
    entry = m.billing.engine.state.audit[-1]
    assert (entry.action, entry.target, entry.at_ms) == ("ExpireGrant", "grant/g", T0)
    assert m.advance(T0 + HOUR_MS - 1).breakage_entries == 0
    assert m.advance(T0 + HOUR_MS).breakage_entries == 1
    after = view(m.billing, "g", T0 + HOUR_MS)
    assert (after.grant.drawn, after.remaining, after.held, after.expired) == (picos("30"), 0, 0, picos("70"))
    assert conserved(after, T0 + HOUR_MS)
    replayed = m.replayed()
    assert replayed.balance("acme", T0 + HOUR_MS) == m.billing.balance("acme", T0 + HOUR_MS)
    assert msgspec.json.decode(msgspec.json.encode(expire("g", 1)), type=cmd.Command) == expire("g", 1)


def refused(m: Ledger, command: cmd.ExpireGrant, error: type[EngineError]) -> str:
    """The refusal's message, checking nothing changed: every grant's expiry, the audit log and the records."""
    state = m.billing.engine.state
    expiries = {g.id: g.expires_at_ms for a in state.accounts.values() for g in a.grants}
    audited, records = len(state.audit), len(m.records)
    with pytest.raises(error) as failed:
        m.run(command)
    assert {g.id: g.expires_at_ms for a in state.accounts.values() for g in a.grants} == expiries
    assert (len(state.audit), len(m.records)) == (audited, records)
    return str(failed.value)


def test_each_refusal_in_its_order_changes_nothing() -> None:
    """g expires at T0 + 2 h, gone at T0 - 1 min (before the command's time); T0 is on the hour. In the order of
    contracts.proto ExpireGrant: the fields, NOT_FOUND, expires_at not after the start, already expired, before now,
    later than the expiry; then 1 token at T0 + 2 min (ahead of the clock): an expiry at T0 + 1 min is refused
    naming the hour from T0."""
    m = ledger(("g", "100", T0 + 2 * HOUR_MS), ("gone", "10", T0 - 60_000))
    assert "customer_id" in refused(m, expire("g", T0 + HOUR_MS, customer_id=""), InvalidArgument)
    assert "grant_id" in refused(m, expire("", T0 + HOUR_MS), InvalidArgument)
    assert "nobody" in refused(m, expire("g", T0 + HOUR_MS, customer_id="nobody"), NotFound)
    assert "nope" in refused(m, expire("nope", T0 + HOUR_MS), NotFound)
    assert "expires_at" in refused(m, expire("g", EPOCH_MS), InvalidArgument)  # at its start
    assert "already expired" in refused(m, expire("gone", T0 + HOUR_MS), FailedPrecondition)
    assert "before now" in refused(m, expire("g", T0 - 1), FailedPrecondition)
    assert "only moved earlier" in refused(m, expire("g", T0 + 3 * HOUR_MS), FailedPrecondition)
    assert not m.ingest([event("t1", T0 + 2 * 60_000, 1)], T0).rejected  # 2 min ahead: within the future skew
    message = refused(m, expire("g", T0 + 60_000), FailedPrecondition)
    assert "2026-01-11T00:00:00" in message, message  # the hour holding the usage, counted whole


def test_a_retry_is_repeated_and_the_grants_own_request_still_answers_it() -> None:
    """ExpireGrant at T0 + 1 h twice: the second Repeated, no record. GrantCredits of g sent again answers g (as it is
    now), not ALREADY_EXISTS."""
    world = basic_world()
    # starts_at left to the server, as a client leaves it: the record keeps no fingerprint of its own, and its
    # retry is recognised by the request it restates, which names its expiry (engine/control.py).
    again = world.grant_command("g", "100", paid="50", starts_at_ms=None)
    world.apply(again)
    assert world.grant_by_id("g").request == b""
    m = Ledger(world)
    m.run(expire("g", T0 + HOUR_MS))
    records = len(m.records)
    with pytest.raises(Repeated):
        m.billing.apply(expire("g", T0 + HOUR_MS, at_ms=T0 + 5), m.billing.last_seq + 1)
    assert len(m.records) == records
    with pytest.raises(Repeated) as repeat:
        m.billing.apply(again, m.billing.last_seq + 1)
    assert isinstance(repeat.value.result, Grant) and repeat.value.result.expires_at_ms == T0 + HOUR_MS


def rolling_ledger(expires_at_ms: int | None) -> Ledger:
    """r: 10 credits paid 10 from EPOCH, rollover_fraction 0.5 (January's period ends at FEB_MS), expiring as given."""
    world = basic_world()
    world.apply(world.grant_command("r", "10", paid="10", rollover_fraction="0.5", expires_at_ms=expires_at_ms))
    return Ledger(world)


def test_a_rolling_grant_expired_before_its_periods_end_breaks_whole_and_exactly_at_it_rolls_over() -> None:
    """r expired at FEB_MS - 1 day: at FEB_MS the clock has broken all 10, no ROLLOVER grant made. Expired exactly at
    FEB_MS (a grant granted before `expiring_at_rollover_rolls`: ExpireGrant sets it, as GrantCredits does now): 5
    roll over into a ROLLOVER grant, 5 break."""
    early = rolling_ledger(None)
    early.run(expire("r", FEB_MS - DAY_MS))
    early.advance(FEB_MS)
    assert early.billing.kernel.made_grants("acme") == []
    assert view(early.billing, "r", FEB_MS).expired == picos("10")
    at_end = rolling_ledger(FEB_MS + DAY_MS)
    at_end.run(expire("r", FEB_MS))
    at_end.advance(FEB_MS)
    made = at_end.billing.kernel.made_grants("acme")
    assert [(row[1], row[2]) for row in made] == [("ROLLOVER", picos("5"))]
    assert view(at_end.billing, "r", FEB_MS).expired == picos("5")
    assert at_end.replayed().kernel.made_grants("acme") == made


def test_a_top_up_grant_the_kernel_made_expires_too() -> None:
    """A policy buying up to 10 credits below 5 (at 0.1 each); 1 token at T0 - 1 h with no grant is overage and
    buys top-up-<Jan>-1 (10 credits), which the next token draws 1 of. ExpireGrant of it at T0 + 1 h: answered as a
    TOP_UP grant expiring then; at T0 + 1 h its 9 left break."""
    m = Ledger(basic_world())
    m.run(cmd.SetTopUpPolicy(EPOCH_MS, ACTOR, "c-acme", "5", "10", "0.1", 3))
    m.ingest([event("t1", T0 - HOUR_MS, 1)], T0 - HOUR_MS)
    m.ingest([event("t2", T0 - HOUR_MS + 1, 1)], T0 - HOUR_MS + 1)
    (top_up_id,) = [row[0] for row in m.billing.kernel.made_grants("acme")]
    moved = m.run(expire(top_up_id, T0 + HOUR_MS))
    assert isinstance(moved, Grant) and (moved.kind, moved.expires_at_ms) == (GrantKind.TOP_UP, T0 + HOUR_MS)
    m.advance(T0 + HOUR_MS)
    after = view(m.billing, top_up_id, T0 + HOUR_MS)
    assert (after.grant.amount, after.grant.drawn, after.expired) == (picos("10"), picos("1"), picos("9"))
    assert conserved(after, T0 + HOUR_MS)
    assert m.replayed().balance("acme", T0 + HOUR_MS) == m.billing.balance("acme", T0 + HOUR_MS)


def test_a_hold_on_the_grant_keeps_what_it_holds_which_breaks_when_released() -> None:
    """g: 100. A hold of 20 at T0 (TTL 2 h); ExpireGrant at T0 + 1 h. At T0 + 1 h the 80 not held break, the 20 held
    stay held; released at T0 + 1 h 30 min (as the server releases) they break too: expired 100."""
    m = ledger(("g", "100", None))
    m.reserve("h1", 20, T0, ttl_ms=2 * HOUR_MS)
    m.run(expire("g", T0 + HOUR_MS))
    m.advance(T0 + HOUR_MS)
    held = view(m.billing, "g", T0 + HOUR_MS)
    assert (held.held, held.expired) == (picos("20"), picos("80")) and conserved(held, T0 + HOUR_MS)
    m.release("h1", T0 + HOUR_MS + 30 * 60_000, expired_credit_breaks=True)
    ended = view(m.billing, "g", T0 + 2 * HOUR_MS)
    assert (ended.held, ended.expired) == (0, picos("100")) and conserved(ended, T0 + 2 * HOUR_MS)


def test_a_grant_rolled_over_is_refused_as_ended() -> None:
    """r (rollover 0.5, no expiry) rolls over at FEB_MS, the end of January's period. ExpireGrant at FEB_MS (the
    instant it rolls, before the clock has rolled it) and at FEB_MS + 1 day (after, 5 rolled into a ROLLOVER grant):
    FAILED_PRECONDITION naming the rollover, nothing changed. A grant rolling over exactly at its expiry (FEB_MS) has
    expired by then: that refusal first."""
    m = rolling_ledger(None)
    message = refused(m, expire("r", FEB_MS + 2 * DAY_MS, at_ms=FEB_MS), FailedPrecondition)
    assert "grant 'r' has already ended: rolled over at 2026-02-01T00:00:00Z" in message, message
    m.advance(FEB_MS)
    assert [(row[1], row[2]) for row in m.billing.kernel.made_grants("acme")] == [("ROLLOVER", picos("5"))]
    message = refused(m, expire("r", FEB_MS + 2 * DAY_MS, at_ms=FEB_MS + DAY_MS), FailedPrecondition)
    assert "rolled over at 2026-02-01T00:00:00Z" in message, message
    tie = rolling_ledger(FEB_MS)
    assert "has already expired" in refused(tie, expire("r", FEB_MS + DAY_MS, at_ms=FEB_MS), FailedPrecondition)
