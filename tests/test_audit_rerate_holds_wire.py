"""An audit of re-rating (a retroactive PublishVersion) meeting open credit holds over the wire: a hold taken
before its grant rolled over at a period's end, or beside a grant that has expired, then a publish re-rating the
period the hold was made in. Every amount is computed by hand from README "Credits and the gateway" (Rollover, Held
credit at a rollover, Expiry and breakage) and "Changing prices safely" (open holds take their place in time: the
hold shrinks to the credit left, never grows; breakage once recorded stays final).

Product `u` (event type `u`, SUM of `n`); each test's customer has its own rate card in credits (named after it),
u at 1 credit a unit in version 1, and its own contract; `--close-grace off`, so nothing closes by itself."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, release, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_invoices2_wire import give
from tests.test_audit_invoices_wire import ms, product
from tests.test_audit_revenue_wire import customer_lines, revenue


def rates(price: str) -> list[pricing_pb2.Rate]:
    return [pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price=price))]


def catalogue(client: TariffClient) -> None:
    product(client, "u")


def card(client: TariffClient, card_id: str) -> str:
    """A test's own rate card (its publishes re-rate no other test's customer): u at 1 credit since 2025."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card_id, name=card_id, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card_id, upsert_rates=rates("1"))
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id=card_id, version=1, effective_from=stamp(ms("2025-01-01T00:00:00"))
        )
    )
    return card_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-rerate-holds")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def publish(client: TariffClient, card_id: str, price: str, from_ms: int) -> pricing_pb2.PublishVersionResponse:
    made = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card_id, based_on_version=1, upsert_rates=rates(price))
    )
    done: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card_id, version=made.version, effective_from=stamp(from_ms))
    )
    return done


def use(client: TariffClient, customer_id: str, key: str, n: int, at_ms: int) -> None:
    event = usage_pb2.UsageEvent(
        transaction_id=f"{customer_id}-{key}",
        customer_id=customer_id,
        event_type="u",
        timestamp_ms=at_ms,
        values={"n": n},
    )
    ack = client.ingest_batch([event], f"{customer_id}-{key}")
    assert ack.accepted == 1, ack.rejected


def hold(client: TariffClient, customer_id: str, reservation_id: str, n: int) -> None:
    answer = client.authorize(
        customer_id, "u", values={"n": n}, reserve=True, reservation_ttl_s=3000, reservation_id=reservation_id
    )
    assert answer.allowed, answer.message


def rows(client: TariffClient, customer_id: str) -> dict[str, tuple[str, str, str, str, str]]:
    """grant id -> (amount, drawn, remaining, held, expired), each checked for conservation."""
    found = {}
    for g in client.get_balance(customer_id).grants:
        parts = [g.amount, g.drawn, g.remaining, g.held, g.expired]
        found[g.grant_id] = (g.amount, g.drawn, g.remaining, g.held, g.expired)
        # held is counted in remaining while the grant is usable, beside it once expired (balance.proto)
        amount, drawn, remaining, held, expired = (Decimal(p) for p in parts)
        assert amount in (drawn + remaining + expired, drawn + remaining + held + expired), (g.grant_id, parts)
    return found


def totals(client: TariffClient, customer_id: str) -> tuple[str, str, str]:
    balance = client.get_balance(customer_id)
    return balance.credits_remaining, balance.credits_held, balance.credits_available


def month_before(at_ms: int) -> int:
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    year, month = (at.year, at.month - 1) if at.month > 1 else (at.year - 1, 12)
    return int(at.replace(year=year, month=month).timestamp() * 1000)


def rolled_with_a_hold(client: TariffClient, customer_id: str) -> tuple[int, int, int]:
    """The set-up both rollover tests share (see the first): contract `<customer>-c` from a month before E = 6 s from
    now, grant `<customer>.G` of 100 credits (100 USD) with fraction 0.5, 40 credits of usage at H - 2 h + 1 min, `r1` holding 20
    now, then G rolled over at E. Returns (the contract's start, H - 2 h, E)."""
    end_ms = (now_ms() // 1000 + 6) * 1000
    if datetime.fromtimestamp(end_ms / 1000, UTC).day > 28:
        pytest.skip("a month before a 29th-31st may not exist: the period would not end at E")
    start_ms = month_before(end_ms)
    open_contract(client, customer_id, f"{customer_id}-c", start_ms, rate_card_id=card(client, customer_id))
    give(
        client, f"{customer_id}-c", f"{customer_id}.G", "100", "100", rollover_fraction="0.5", starts_at=stamp(start_ms)
    )
    from_ms = now_ms() // HOUR_MS * HOUR_MS - 2 * HOUR_MS
    use(client, customer_id, "e1", 40, from_ms + 60_000)
    hold(client, customer_id, "r1", 20)
    assert rows(client, customer_id) == {f"{customer_id}.G": ("100", "40", "60", "20", "0")}
    rolled = f"rollover-{customer_id}.G-{end_ms}"
    assert wait_for(lambda: rolled in rows(client, customer_id), 30), "G did not roll over"
    assert rows(client, customer_id) == {
        f"{customer_id}.G": ("100", "70", "0", "0", "30"),
        rolled: ("30", "0", "30", "10", "0"),
    }
    assert totals(client, customer_id) == ("30", "10", "20")
    return start_ms, from_ms, end_ms


def test_a_hold_that_rolled_over_stays_on_the_rollover_grant_when_its_period_is_re_rated(
    server: ServerProcess,
) -> None:
    """Contract `ro-c` from a month before E = 6 s from now, so its period ends at E. Grant G: 100 credits, fraction
    0.5, from the contract's start. 40 credits of usage two hours ago (hour H - 2), then `r1` holds 20 now: G 100,
    drawn 40, remaining 60, held 20, available 40. At E, "rollover_fraction x (remainder + held) rolls over in all":
    0.5 x (40 + 20) = 30 into rollover-G-<E>, remainder first: floor(0.5 x 40) = 20, then r1's share
    floor(0.5 x 60) - 20 = 10, "now held on the ROLLOVER grant"; the other 30 break. G: drawn 40 + 30 rolled = 70,
    remaining 0, expired 30. R: 30, drawn 0, remaining 30, held 10; totals remaining 30, held 10, available 20.

    A version with the very same price published from H - 2 re-rates G's period (still open): the 40 stay 40,
    so nothing changes: R still holds r1's 10 ("a release then gives back what it holds now"), available 20, and
    releasing r1 answers 10 back to R (available 30)."""
    with server.client() as client:
        _, from_ms, _ = rolled_with_a_hold(client, "ro")
        before = rows(client, "ro")
        done = publish(client, "ro", "1", from_ms)
        assert (done.customers_rerated, done.rerated_amount_delta) == (1, "0")
        assert rows(client, "ro") == before
        assert totals(client, "ro") == ("30", "10", "20")
        assert release(client, "ro", "r1") == "10"
        assert totals(client, "ro") == ("30", "0", "30")


def test_a_cut_re_rating_a_rolled_period_breaks_what_it_gives_back_and_never_moves_the_hold_back_to_the_original(
    server: ServerProcess,
) -> None:
    """As above (G rolled at E: 30 into R, r1 holding 10 of them, 30 broken), then u at 0.5 from H - 2 h: the 40
    units now cost 20, so 20 go back to G, which "has rolled over" (README "Changing prices safely"): they "break
    at once, in the period it rolled over at". The hold is not G's any more: "when it ends ... that share comes
    back to the ROLLOVER grant, never to the original" (README "Held credit at a rollover"). G: drawn 20 + 30 rolled
    = 50, remaining 0, expired 30 + 20 = 50; R unchanged (30, 0, 30, held 10); totals 30, 10, 20. Releasing r1
    answers 10 and gives them to R (available 30); G stays at remaining 0. Revenue of G's period at 1 USD a credit:
    100 sold, 20 recognised, 50 breakage, 30 deferred (the rolled credit)."""
    with server.client() as client:
        start_ms, from_ms, end_ms = rolled_with_a_hold(client, "cut")
        rolled = f"rollover-cut.G-{end_ms}"
        done = publish(client, "cut", "0.5", from_ms)
        assert (done.customers_rerated, done.rerated_amount_delta) == (1, "-20")
        assert rows(client, "cut") == {"cut.G": ("100", "50", "0", "0", "50"), rolled: ("30", "0", "30", "10", "0")}
        assert totals(client, "cut") == ("30", "10", "20")
        assert release(client, "cut", "r1") == "10"
        assert rows(client, "cut") == {"cut.G": ("100", "50", "0", "0", "50"), rolled: ("30", "0", "30", "0", "0")}
        assert totals(client, "cut") == ("30", "0", "30")
        report = revenue(client, start_ms, end_ms, "cut")
        assert customer_lines(report) == [(start_ms, "20", "0", "50", "30")]


def test_a_cut_re_rating_before_a_grants_expiry_breaks_what_it_gives_back_and_moves_no_hold_onto_it(
    server: ServerProcess,
) -> None:
    """Contract `exp-c` from two days ago. Grant `exp.E`: 10 credits, priority 1, expiring 5 s from now; `exp.X`: 100,
    priority 2. 10 credits of usage at H - 2 h draw E (first in burn order): E drawn 10, remaining 0. Then `r1` holds
    20: E has nothing, so X holds 20 (available 80). E expires with nothing left: nothing breaks. Then u at 0.5 from
    H - 2 h: the usage costs 5, so 5 go back to E, whose expiry has passed: "credit a cut gives back to it breaks too,
    in the period of its expiry" (README "Changing prices safely"; "breakage once recorded stays final"). r1 still
    holds its 20 on X. E: 10, drawn 5, remaining 0, held 0, expired 5; X: 100, drawn 0, remaining 100, held 20;
    totals remaining 100, held 20, available 80; releasing r1 answers 20 (available 100)."""
    with server.client() as client:
        hour_ms = now_ms() // HOUR_MS * HOUR_MS
        open_contract(client, "exp", "exp-c", hour_ms - 48 * HOUR_MS, rate_card_id=card(client, "exp"))
        expiry_ms = (now_ms() // 1000 + 5) * 1000
        give(client, "exp-c", "exp.E", "10", "10", priority=1, expires_at=stamp(expiry_ms))
        give(client, "exp-c", "exp.X", "100", "100", priority=2)
        use(client, "exp", "e1", 10, hour_ms - 2 * HOUR_MS + 60_000)
        hold(client, "exp", "r1", 20)
        assert rows(client, "exp") == {"exp.E": ("10", "10", "0", "0", "0"), "exp.X": ("100", "0", "100", "20", "0")}
        assert wait_for(lambda: now_ms() > expiry_ms + 200, 30)
        publish(client, "exp", "0.5", hour_ms - 2 * HOUR_MS)
        assert wait_for(lambda: rows(client, "exp")["exp.E"][4] != "0", 10), rows(client, "exp")
        assert rows(client, "exp") == {"exp.E": ("10", "5", "0", "0", "5"), "exp.X": ("100", "0", "100", "20", "0")}
        assert totals(client, "exp") == ("100", "20", "80")
        assert release(client, "exp", "r1") == "20"
        assert totals(client, "exp") == ("100", "0", "100")
