"""GetBalance and WatchBalance read a balance with its top-up grants encoded by the kernel
(engine/kernel/src/balance_wire.rs, `Billing.balance_encoded`, server/services/balance.py `_sent_balance_bytes`):
the bytes must be those of the balance built grant by grant in Python (`Billing.balance`, `convert.balance_pb`,
`_sent_balance`), kept here as the reference, for a customer holding grants of every kind."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tariff.v1 import balance_pb2

from engine import commands as cmd
from engine.billing import Billing
from engine.ledger import GrantKind
from server import convert
from server.errors import send_limit
from server.services.balance import _next_grant_start_ms, _sent_balance, _sent_balance_bytes
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import ACTOR, DAY_MS, EPOCH_MS, basic_world

T0_MS = EPOCH_MS + 3_600_000
FEB_MS = EPOCH_MS + 31 * DAY_MS


def reference(billing: Billing, at_ms: int) -> bytes:
    """The balance as it was built before: every grant's row, record and message in Python."""
    return _sent_balance(convert.balance_pb(billing.balance("acme", at_ms))).SerializeToString()


@pytest.fixture(scope="module")
def ledger() -> Ledger:
    """Customer "acme" with grants of every kind: PREPAID ones (one expiring in January, one paid a third a credit so its
    revenue rounds, one of negative priority), PROMOTIONAL, two rolling half over at January's end (ROLLOVER
    grants in February), restricted ones, one starting in March; a top-up policy at 0.333333333333333333 a
    credit that buys a few hundred top-ups (drawn in fractions by events of 3.3), and holds open on them."""
    world = basic_world(extra_products=("other",))
    world.apply(world.grant_command("expiring", "100", paid="30", expires_at_ms=T0_MS + 10 * DAY_MS))
    world.apply(world.grant_command("rolls", "90", paid="45", priority=1, rollover_fraction="0.5"))
    world.apply(world.grant_command("thirds", "3", paid="1", priority=-3))
    ledger = Ledger(world)
    ledger.run(cmd.SetTopUpPolicy(T0_MS, ACTOR, "c-acme", "20", "25", "0.333333333333333333", 1_000))
    for n in range(4):
        at_ms = T0_MS + n * DAY_MS
        ledger.ingest([event(f"jan{n}-{i}", at_ms, 3.3) for i in range(100)], at_ms)
    # Granted after the purchases (credit usage cannot draw would keep the policy from buying): rolls over whole.
    other = world.grant_command("other", "8", products=("other",), rollover_fraction="0.5", paid="3", at_ms=at_ms)
    ledger.run(other)
    ledger.advance(T0_MS + 11 * DAY_MS)  # "expiring" breaks
    ledger.advance(FEB_MS + 1)  # "rolls" rolls over
    ledger.ingest([event(f"feb-{i}", FEB_MS + DAY_MS, 3.3) for i in range(100)], FEB_MS + DAY_MS)
    at_ms = FEB_MS + 2 * DAY_MS
    for grant in (
        world.grant_command("promo", "4", kind=GrantKind.PROMOTIONAL, at_ms=at_ms),
        world.grant_command("restricted", "5", products=("other",), priority=2, at_ms=at_ms),
        world.grant_command("later", "7", starts_at_ms=FEB_MS + 40 * DAY_MS, at_ms=at_ms),
    ):
        ledger.run(grant)
    ledger.reserve("open-1", 12.5, at_ms, ttl_ms=DAY_MS)
    ledger.reserve("open-2", 40, at_ms, ttl_ms=DAY_MS)
    return ledger


@pytest.fixture
def small_send_limit() -> Iterator[None]:
    before = send_limit.bytes_max
    yield
    send_limit.bytes_max = before


@pytest.mark.parametrize("at_ms", [T0_MS + 5 * DAY_MS, FEB_MS + 2 * DAY_MS + 1, FEB_MS + 3 * DAY_MS])
def test_the_encoded_balance_is_the_one_built_grant_by_grant(ledger: Ledger, at_ms: int) -> None:
    """Byte for byte, at an instant before the expiry, with the holds open, and after their TTL (projected)."""
    billing = ledger.billing
    view = billing.balance_encoded("acme", at_ms)
    assert view.grant_parts is not None and any(isinstance(part, bytes) for part in view.grant_parts)
    expected = reference(billing, at_ms)
    assert _sent_balance_bytes(view) == expected
    balance = balance_pb2.Balance.FromString(expected)
    kinds = {g.kind for g in balance.grants}
    assert kinds >= {1, 4} and len(balance.grants) > 100, kinds  # PREPAID and TOP_UP, hundreds of top-ups
    if at_ms > FEB_MS:
        assert 3 in kinds  # ROLLOVER grants
    held = {g.kind for g in balance.grants if g.held != "0"}
    # The holds, open until their TTL, on a top-up among others.
    assert (4 in held) if at_ms < FEB_MS + 3 * DAY_MS else not held, held
    slow = billing.balance("acme", at_ms)
    assert _next_grant_start_ms(view, at_ms) == _next_grant_start_ms(slow, at_ms)


def test_a_balance_past_the_message_limit_leaves_out_the_same_spent_grants(
    ledger: Ledger, small_send_limit: None
) -> None:
    """Too large to send whole, the encoded balance leaves out the spent grants the reference leaves out."""
    at_ms = FEB_MS + 2 * DAY_MS + 1
    whole = len(reference(ledger.billing, at_ms))
    send_limit.bytes_max = whole * 2 // 3
    expected = reference(ledger.billing, at_ms)
    assert balance_pb2.Balance.FromString(expected).grants_left_out > 0
    assert _sent_balance_bytes(ledger.billing.balance_encoded("acme", at_ms)) == expected
