"""A second acceptance audit of README "Credits and the gateway" over the wire, on corners the earlier audits
(test_audit_credits_wire.py, test_audit_holds_wire.py, test_audit_topups_wire.py) leave out: several grants with
priorities, expiries, start times and product lists under one event and one hold; a grant expiring between a hold
and its settlement; a hold settled by an event of another product; a hold that outlives its TTL across grants;
Authorize's estimate against what ingesting the same event charges on a graduated price; retries of every call that
changes credit; refusals naming the field. Every amount asserted is computed by hand from the docs (the arithmetic
is in each docstring), never read back from the server, and every GetBalance is checked for conservation
(balance.proto GrantBalance: amount = drawn + remaining + expired while a grant is usable, amount = drawn + expired +
held once it has expired; Balance: credits_available = credits_remaining - credits_held).

Grant ids are server-wide (README "API keys"): each is `<customer>.<name>`, and rows() shows the name.

Products: `units` (event type `work`, SUM of `n`) and `extra` (event type `other`, SUM of `n`) at 1 credit a unit;
`tiers` (event type `tiered`, SUM of `n`) GRADUATED: the first 10 units of a period at 1, the rest at 0.5. One
server for the file, each test on customers of its own, contracts from this month's start."""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import refusal, release, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_topups_wire import month_start_ms

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CARD_FROM_MS = (time.time_ns() // 1_000_000 // HOUR_MS - 60 * 24) * HOUR_MS


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing
    for product_id, event_type in (("units", "work"), ("extra", "other"), ("tiers", "tiered")):
        product = pricing_pb2.Product(id=product_id, event_type=event_type, aggregation=pricing_pb2.SUM, value_key="n")
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    tiers = pricing_pb2.TieredPrice(
        mode=pricing_pb2.GRADUATED,
        tiers=[pricing_pb2.Tier(up_to="10", unit_price="1"), pricing_pb2.Tier(unit_price="0.5")],
    )
    rates = [pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price="1")) for p in ("units", "extra")]
    rates.append(pricing_pb2.Rate(product_id="tiers", tiered=tiers))
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-credits2")
    yield from serving(ServerProcess(root / "data"), catalogue)


def customer(client: TariffClient, customer_id: str, *, block: bool, rate_card_id: str = "card") -> str:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract = contracts_pb2.CreateContractRequest(
        id=f"k-{customer_id}",
        customer_id=customer_id,
        rate_card_id=rate_card_id,
        starting_at=stamp(month_start_ms()),
        overage_policy=contracts_pb2.BLOCK if block else contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    client.contracts.CreateContract(contract)
    return f"k-{customer_id}"


def new_grant(
    customer_id: str,
    grant_id: str,
    amount: str,
    *,
    paid: str = "0",
    priority: int = 0,
    products: tuple[str, ...] = (),
    starts_at_ms: int | None = None,
    expires_at_ms: int | None = None,
) -> contracts_pb2.Grant:
    grant = contracts_pb2.Grant(
        id=f"{customer_id}.{grant_id}" if grant_id else "",
        contract_id=f"k-{customer_id}",
        kind=contracts_pb2.PREPAID if paid != "0" else contracts_pb2.PROMOTIONAL,
        amount=amount,
        paid_amount=paid,
        priority=priority,
        applicable_product_ids=list(products),
    )
    if starts_at_ms is not None:
        grant.starts_at.CopyFrom(stamp(starts_at_ms))
    if expires_at_ms is not None:
        grant.expires_at.CopyFrom(stamp(expires_at_ms))
    return grant


def grant(client: TariffClient, customer_id: str, grant_id: str, amount: str, **fields: object) -> contracts_pb2.Grant:
    request = contracts_pb2.GrantCreditsRequest(grant=new_grant(customer_id, grant_id, amount, **fields))  # type: ignore[arg-type]
    answer: contracts_pb2.Grant = client.contracts.GrantCredits(request)
    return answer


def event(
    transaction_id: str,
    customer_id: str,
    units: float,
    *,
    event_type: str = "work",
    reservation_id: str = "",
    at_ms: int | None = None,
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=now_ms() if at_ms is None else at_ms,
        values={"n": units},
        reservation_id=reservation_id,
    )


def use(client: TariffClient, *events: usage_pb2.UsageEvent) -> usage_pb2.IngestAck:
    ack = client.ingest_batch(list(events))
    assert ack.accepted == len(events), ack
    return ack


def hold_request(
    customer_id: str,
    units: float,
    reservation_id: str,
    *,
    event_type: str = "work",
    ttl: Duration | None = None,
    request_id: str = "",
) -> balance_pb2.AuthorizeRequest:
    request = balance_pb2.AuthorizeRequest(
        request_id=request_id,
        customer_id=customer_id,
        event_type=event_type,
        values={"n": units},
        reserve=True,
        reservation_id=reservation_id,
    )
    if ttl is not None:
        request.reservation_ttl.CopyFrom(ttl)
    return request


def hold(
    client: TariffClient, customer_id: str, units: float, reservation_id: str, **fields: object
) -> tuple[bool, str, str, str, str]:
    answer = client.balance.Authorize(hold_request(customer_id, units, reservation_id, **fields))  # type: ignore[arg-type]
    return answer.allowed, answer.reason, answer.estimated_cost, answer.credits_available, answer.reservation_id


def ask(client: TariffClient, customer_id: str, units: float, event_type: str = "work") -> tuple[bool, str, str, str]:
    answer = client.authorize(customer_id, event_type, values={"n": units})
    return answer.allowed, answer.reason, answer.estimated_cost, answer.credits_available


Row = tuple[str, str, str, str]


def conserved(balance: balance_pb2.Balance, now: int) -> None:
    """balance.proto's identities, per grant and for the totals."""
    remaining_total = held_total = Decimal(0)
    for g in balance.grants:
        amount, drawn, remaining, held, expired = (
            Decimal(x) for x in (g.amount, g.drawn, g.remaining, g.held, g.expired)
        )
        ended = g.HasField("expires_at") and g.expires_at.ToMilliseconds() <= now and expired > 0
        if ended:
            assert remaining == 0 and amount == drawn + expired + held, g
            remaining_total += held
        else:
            assert amount == drawn + remaining + expired and 0 <= held <= remaining, g
            if g.starts_at.ToMilliseconds() <= now:
                remaining_total += remaining
        held_total += held
    assert Decimal(balance.credits_remaining) == remaining_total, balance
    assert Decimal(balance.credits_held) == held_total, balance
    assert Decimal(balance.credits_available) == remaining_total - held_total, balance


def rows(client: TariffClient, customer_id: str) -> dict[str, Row]:
    """grant id (without the `<customer>.` that makes it server-wide) -> (drawn, remaining, held, expired), after
    checking the balance is conserved."""
    balance = client.get_balance(customer_id)
    conserved(balance, now_ms())
    return {
        g.grant_id.removeprefix(f"{customer_id}."): (g.drawn, g.remaining, g.held, g.expired) for g in balance.grants
    }


def totals(client: TariffClient, customer_id: str) -> tuple[str, str, str]:
    """(credits_remaining, credits_held, credits_available), after checking the balance is conserved."""
    balance = client.get_balance(customer_id)
    conserved(balance, now_ms())
    return balance.credits_remaining, balance.credits_held, balance.credits_available


def charges(client: TariffClient, customer_id: str) -> tuple[str, str]:
    """(period_charges, overage_amount)."""
    balance = client.get_balance(customer_id)
    return balance.period_charges, balance.overage_amount


def mixed_grants(client: TariffClient, customer_id: str) -> None:
    """Five grants, in creation order:
    - p0-extra: 5 credits, priority 0, for `extra` only: never pays `units`;
    - p1-late: 4, priority 1, every product, no expiry;
    - p1-soon: 3, priority 1, every product, expiring in 400 days: before p1-late (earliest expiry);
    - p1-units: 2, priority 1, `units` only, no expiry: before p1-late (the narrower product list);
    - m5-future: 10, priority -5, starting tomorrow: pays nothing today, whatever its priority.
    Burn order for `units` now: p1-soon, p1-units, p1-late (9 credits); for `extra`: p0-extra, p1-soon, p1-late."""
    far_ms = now_ms() + 400 * DAY_MS
    grant(client, customer_id, "p0-extra", "5", products=("extra",))
    grant(client, customer_id, "p1-late", "4", priority=1)
    grant(client, customer_id, "p1-soon", "3", priority=1, expires_at_ms=far_ms)
    grant(client, customer_id, "p1-units", "2", priority=1, products=("units",))
    grant(client, customer_id, "m5-future", "10", priority=-5, starts_at_ms=now_ms() + DAY_MS)


def test_one_event_over_grants_of_every_priority_expiry_product_and_start_draws_in_burn_order(
    server: ServerProcess,
) -> None:
    """ALLOW. Started, unexpired grants: 5 + 4 + 3 + 2 = 14 credits remaining and available (m5-future has not
    started). Authorize of 11 units: credits_available counts only what may pay `units`: 3 + 2 + 4 = 9, so 11 is
    OVERAGE_ALLOWED at 11. Ingesting it draws p1-soon 3, p1-units 2, p1-late 4 (burn order), 2 of overage: 14 - 9 =
    5 left (p0-extra's). Then `other` 1 unit draws p0-extra (priority 0): 4 left; Authorize of `work` now has 0
    available."""
    with server.client() as client:
        customer(client, "mix", block=False)
        mixed_grants(client, "mix")
        assert totals(client, "mix") == ("14", "0", "14")
        assert ask(client, "mix", 11) == (True, "OVERAGE_ALLOWED", "11", "9")
        use(client, event("m1", "mix", 11))
        assert rows(client, "mix") == {
            "p0-extra": ("0", "5", "0", "0"),
            "p1-late": ("4", "0", "0", "0"),
            "p1-soon": ("3", "0", "0", "0"),
            "p1-units": ("2", "0", "0", "0"),
            "m5-future": ("0", "10", "0", "0"),
        }
        assert charges(client, "mix") == ("11", "2")
        assert totals(client, "mix") == ("5", "0", "5")
        use(client, event("m2", "mix", 1, event_type="other"))
        assert rows(client, "mix")["p0-extra"] == ("1", "4", "0", "0")
        assert charges(client, "mix") == ("12", "2")
        assert ask(client, "mix", 1) == (True, "OVERAGE_ALLOWED", "1", "0")
        assert ask(client, "mix", 4, "other") == (True, "OK", "4", "4")


def test_under_block_a_hold_takes_only_the_credit_its_product_may_spend(server: ServerProcess) -> None:
    """BLOCK, the same five grants: 14 available in GetBalance, but 9 to `units`. A hold of 10 units is denied
    (INSUFFICIENT_CREDIT, 9 available to it) and holds nothing; a hold of 6 takes p1-soon 3, p1-units 2, p1-late 1
    (burn order): 14 - 6 = 8 available, 3 of them to `units`; then 4 more units are denied, 3 allowed (holding
    p1-late's last 3). `extra` still has p0-extra's 5: Authorize `other` 5 is OK. Releasing the 6 gives each grant
    its share back."""
    with server.client() as client:
        customer(client, "mixb", block=True)
        mixed_grants(client, "mixb")
        assert hold(client, "mixb", 10, "big") == (False, "INSUFFICIENT_CREDIT", "10", "9", "")
        assert totals(client, "mixb") == ("14", "0", "14")
        assert hold(client, "mixb", 6, "h6") == (True, "OK", "6", "3", "h6")
        assert rows(client, "mixb") == {
            "p0-extra": ("0", "5", "0", "0"),
            "p1-late": ("0", "4", "1", "0"),
            "p1-soon": ("0", "3", "3", "0"),
            "p1-units": ("0", "2", "2", "0"),
            "m5-future": ("0", "10", "0", "0"),
        }
        assert totals(client, "mixb") == ("14", "6", "8")
        assert hold(client, "mixb", 4, "h4") == (False, "INSUFFICIENT_CREDIT", "4", "3", "")
        assert hold(client, "mixb", 3, "h3") == (True, "OK", "3", "0", "h3")
        assert ask(client, "mixb", 5, "other") == (True, "OK", "5", "5")
        assert ask(client, "mixb", 0.5) == (False, "INSUFFICIENT_CREDIT", "0.5", "0")
        assert release(client, "mixb", "h6") == "6"
        assert rows(client, "mixb")["p1-late"] == ("0", "4", "3", "0")
        assert rows(client, "mixb")["p1-soon"] == ("0", "3", "0", "0")
        assert totals(client, "mixb") == ("14", "3", "11")


@pytest.mark.parametrize(
    ("name", "units", "before_expiry", "short_row", "long_row", "revenue"),
    [
        ("more", 5, True, ("4", "0", "0", "6"), ("1", "9", "0", "0"), ("3", "3")),
        ("less", 3, True, ("3", "0", "0", "7"), ("0", "10", "0", "0"), ("1.5", "3.5")),
        ("after", 5, False, ("0", "0", "0", "10"), ("5", "5", "0", "0"), ("5", "5")),
    ],
)
def test_a_grant_expiring_between_a_hold_and_its_settlement(
    server: ServerProcess,
    name: str,
    units: int,
    before_expiry: bool,
    short_row: Row,
    long_row: Row,
    revenue: tuple[str, str],
) -> None:
    """ALLOW. `short`: 10 credits paid 5 (0.5 a credit), priority 0, expiring in 3 s; `long`: 10 paid 10,
    priority 1. A hold of 4 takes 4 of `short` (available 20 - 4 = 16). `short` expires: its 6 unheld credits break
    (expired 6), the 4 stay held (credits_remaining 10 + 4 = 14, held 4, available 10). The settling event arrives
    after that breakage was recorded; it gives the hold's 4 back to `short`, then is charged in burn order at its
    own timestamp:
    - "more": 5 units dated when the hold was made (before the expiry): `short` pays 4 (the credit held for it),
      `long` 1; nothing of the 4 breaks. Recognised 4 x 0.5 + 1 x 1 = 3, breakage 6 x 0.5 = 3.
    - "less": 3 units dated then: `short` pays 3, the 1 it does not draw breaks (expired 7). Recognised 1.5,
      breakage 3.5.
    - "after": 5 units dated now (after the expiry): `short` pays nothing, the 4 break (expired 10), `long` pays 5.
      Recognised 5, breakage 5.
    Nothing is overage in any; a retry of the settling batch is a duplicate and changes nothing."""
    customer_id = f"xs-{name}"
    with server.client() as client:
        customer(client, customer_id, block=False)
        expires_at_ms = now_ms() + 3000
        grant(client, customer_id, "short", "10", paid="5", expires_at_ms=expires_at_ms)
        grant(client, customer_id, "long", "10", paid="10", priority=1)
        held_at_ms = now_ms()
        assert hold(client, customer_id, 4, "r1", ttl=Duration(seconds=120)) == (True, "OK", "4", "16", "r1")
        assert wait_for(lambda: rows(client, customer_id)["short"] == ("0", "0", "4", "6"), 10)
        assert totals(client, customer_id) == ("14", "4", "10")
        settle = event("x1", customer_id, units, reservation_id="r1", at_ms=held_at_ms if before_expiry else None)
        assert list(use(client, settle).notices) == []
        expected = {"short": short_row, "long": long_row}
        # What the hold gave back and the event did not draw breaks at the server clock's next AdvanceClock.
        assert wait_for(lambda: revenue_of(client, customer_id) == ("15", *revenue), 10), revenue_of(
            client, customer_id
        )
        assert rows(client, customer_id) == expected
        left = long_row[1]
        assert totals(client, customer_id) == (left, "0", left)
        assert charges(client, customer_id) == (str(units), "0")
        seq = client.get_balance(customer_id).as_of_seq
        again = client.ingest_batch([settle])
        assert (again.accepted, again.duplicates, list(again.notices)) == (0, 1, [])
        assert client.get_balance(customer_id).as_of_seq == seq
        assert rows(client, customer_id) == expected
        assert revenue_of(client, customer_id) == ("15", *revenue)


def revenue_of(client: TariffClient, customer_id: str) -> tuple[str, str, str]:
    """(prepaid_sold, recognized_credits, breakage) of the customer from this month on."""
    report = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(
            period_start=stamp(month_start_ms()), period_end=stamp(now_ms() + 40 * DAY_MS), customer_id=customer_id
        )
    )
    r = report.reconciliation
    return r.prepaid_sold, r.recognized_credits, r.breakage


def test_a_hold_settled_by_an_event_of_another_product_gives_every_grant_its_share_back(
    server: ServerProcess,
) -> None:
    """BLOCK. `u-only`: 3 credits for `units`, priority 0; `any`: 10, priority 1. A hold of 5 `work` units takes
    u-only 3 and any 2 (available 13 - 5 = 8). The event settling it is 4 units of `other` (README: the event
    carrying the reservation_id gives the hold back, then is charged what it costs): u-only and any get their 3 and
    2 back, then `extra` draws 4 from `any` (u-only may not pay it): u-only 3 left, any 6, 9 available. A second
    event naming the same hold in the same batch is rated like any event (1 unit from u-only) and noticed as
    ALREADY_SETTLED."""
    with server.client() as client:
        customer(client, "hp", block=True)
        grant(client, "hp", "u-only", "3", products=("units",))
        grant(client, "hp", "any", "10", priority=1)
        assert hold(client, "hp", 5, "h") == (True, "OK", "5", "8", "h")
        assert rows(client, "hp") == {"u-only": ("0", "3", "3", "0"), "any": ("0", "10", "2", "0")}
        ack = use(
            client,
            event("o1", "hp", 4, event_type="other", reservation_id="h"),
            event("o2", "hp", 1, reservation_id="h"),
        )
        assert [(n.index, n.reservation_id, n.reason) for n in ack.notices] == [
            (1, "h", usage_pb2.NOTICE_RESERVATION_ALREADY_SETTLED)
        ]
        assert rows(client, "hp") == {"u-only": ("1", "2", "0", "0"), "any": ("4", "6", "0", "0")}
        assert totals(client, "hp") == ("8", "0", "8")
        assert charges(client, "hp") == ("5", "0")
        code, details = refusal(lambda: release(client, "hp", "h"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details


def test_a_hold_across_grants_that_outlives_its_ttl_gives_each_grant_back_and_a_retry_says_expired(
    server: ServerProcess,
) -> None:
    """BLOCK. `a` 2 credits priority 0, `b` 5 priority 1. A hold of 6 for 2 s takes a 2 and b 4 (1 available).
    Meanwhile 1 unit of usage draws b's last free credit (0 available, nothing overage). At the TTL the 6 come back
    (a 2, b 4: 6 available). The same hold request retried answers allowed with the same estimate and its id, says
    the reservation expired and holds nothing; a release is FAILED_PRECONDITION; an event naming it is charged (1
    unit from a) with NOTICE_RESERVATION_EXPIRED."""
    with server.client() as client:
        customer(client, "tt", block=True)
        grant(client, "tt", "a", "2")
        grant(client, "tt", "b", "5", priority=1)
        ttl = Duration(seconds=2)
        assert hold(client, "tt", 6, "r", ttl=ttl) == (True, "OK", "6", "1", "r")
        use(client, event("t1", "tt", 1))
        assert rows(client, "tt") == {"a": ("0", "2", "2", "0"), "b": ("1", "4", "4", "0")}
        assert totals(client, "tt") == ("6", "6", "0")
        assert wait_for(lambda: totals(client, "tt") == ("6", "0", "6"), 10)
        assert rows(client, "tt") == {"a": ("0", "2", "0", "0"), "b": ("1", "4", "0", "0")}
        retried = client.balance.Authorize(hold_request("tt", 6, "r", ttl=ttl))
        assert (retried.allowed, retried.estimated_cost, retried.reservation_id, retried.credits_available) == (
            True,
            "6",
            "r",
            "6",
        )
        assert retried.message.startswith("this reservation was already expired at "), retried.message
        assert retried.message.endswith("; nothing is held"), retried.message
        assert totals(client, "tt") == ("6", "0", "6")
        code, details = refusal(lambda: release(client, "tt", "r"))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and details.startswith("reservation 'r' was already expired")
        ack = use(client, event("t2", "tt", 1, reservation_id="r"))
        assert [n.reason for n in ack.notices] == [usage_pb2.NOTICE_RESERVATION_EXPIRED]
        assert rows(client, "tt") == {"a": ("1", "1", "0", "0"), "b": ("1", "4", "0", "0")}


def test_authorize_estimates_what_ingesting_charges_on_a_graduated_price_held_and_settled(
    server: ServerProcess,
) -> None:
    """GRADUATED: the first 10 units of the period at 1, the rest at 0.5. 100 credits. 8 units used: 8 charged.
    Authorize of 6 more: 2 x 1 + 4 x 0.5 = 4 (cumulative 8 -> 14). Held (4 held, 100 - 8 - 4 = 88 available); the
    settling 6-unit event is charged exactly the estimate: period_charges 12, drawn 12, 88 available, nothing held.
    The next 6 units are all in the second tier: 3, on every Authorize form alike (unary, stream, batches)."""
    with server.client() as client:
        customer(client, "est", block=False)
        grant(client, "est", "g", "100")
        use(client, event("e1", "est", 8, event_type="tiered"))
        assert ask(client, "est", 6, "tiered") == (True, "OK", "4", "92")
        assert hold(client, "est", 6, "h", event_type="tiered") == (True, "OK", "4", "88", "h")
        assert totals(client, "est") == ("92", "4", "88")
        assert list(use(client, event("e2", "est", 6, event_type="tiered", reservation_id="h")).notices) == []
        assert charges(client, "est") == ("12", "0")
        assert rows(client, "est") == {"g": ("12", "88", "0", "0")}
        plain = balance_pb2.AuthorizeRequest(customer_id="est", event_type="tiered", values={"n": 6}, request_id="q")
        streamed = list(client.balance.AuthorizeStream(iter([plain])))
        (batched,) = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[plain])])))
        unary = client.balance.Authorize(plain)
        for answer in (unary, *streamed, *batched.responses):
            assert (answer.request_id, answer.allowed, answer.reason, answer.estimated_cost) == ("q", True, "OK", "3")
            assert answer.credits_available == "88"
        use(client, event("e3", "est", 6, event_type="tiered"))
        assert charges(client, "est") == ("15", "0")


def test_retried_grants_and_holds_change_nothing_twice_and_changed_ones_are_already_exists(
    server: ServerProcess,
) -> None:
    """contracts.proto: GrantCredits' key is grant.id (or request_id): the same request answers the same grant and
    grants once; a different amount under the same id is ALREADY_EXISTS and grants nothing. A grant made with
    request_id only takes it as its id. A hold retried through AuthorizeBatches after Authorize is the same hold."""
    with server.client() as client:
        customer(client, "rt", block=True)
        first = grant(client, "rt", "g", "10", paid="4")
        seq = client.get_balance("rt").as_of_seq
        again = grant(client, "rt", "g", "10", paid="4")
        assert (again.id, again.amount, again.paid_amount) == ("rt.g", "10", "4")
        assert again.created_at == first.created_at
        assert client.get_balance("rt").as_of_seq == seq
        code, _ = refusal(lambda: grant(client, "rt", "g", "11", paid="4"))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        keyed = contracts_pb2.GrantCreditsRequest(grant=new_grant("rt", "", "2"), request_id="rt.req-7")
        assert client.contracts.GrantCredits(keyed).id == "rt.req-7"
        assert client.contracts.GrantCredits(keyed).id == "rt.req-7"
        assert totals(client, "rt") == ("12", "0", "12")
        assert hold(client, "rt", 5, "r1") == (True, "OK", "5", "7", "r1")
        (batched,) = list(
            client.balance.AuthorizeBatches(
                iter([balance_pb2.AuthorizeBatch(requests=[hold_request("rt", 5, "r1", request_id="b")])])
            )
        )
        (answer,) = batched.responses
        assert (answer.allowed, answer.reason, answer.estimated_cost, answer.reservation_id) == (True, "OK", "5", "r1")
        assert totals(client, "rt") == ("12", "5", "7")
        assert release(client, "rt", "r1") == "5"
        assert release(client, "rt", "r1") == "5"
        assert totals(client, "rt") == ("12", "0", "12")


BAD_GRANTS: dict[str, tuple[dict[str, object], str]] = {
    "amount zero": ({"amount": "0"}, "grant.amount"),
    "amount 13 places": ({"amount": "1.0000000000001"}, "grant.amount"),
    "negative paid": ({"paid_amount": "-1", "kind": contracts_pb2.PREPAID}, "grant.paid_amount"),
    "promotional paid": ({"paid_amount": "3", "kind": contracts_pb2.PROMOTIONAL}, "grant.paid_amount"),
    "fraction above 1": ({"rollover_fraction": "1.5"}, "grant.rollover_fraction"),
    "unknown product": ({"applicable_product_ids": ["nope"]}, "grant.applicable_product_ids[0]"),
    "bad product id": ({"applicable_product_ids": ["no pe"]}, "grant.applicable_product_ids[0]"),
}


def test_grant_refusals_name_the_field_and_grant_nothing(server: ServerProcess) -> None:
    """contracts.proto Grant: amount > 0 with at most 12 decimal places; paid_amount not negative, 0 for a
    promotional grant; rollover_fraction in [0, 1]; applicable_product_ids known products under the id rule. Each
    refusal is INVALID_ARGUMENT naming the field, and the customer's balance is what it was (5 credits)."""
    with server.client() as client:
        customer(client, "bad", block=True)
        grant(client, "bad", "ok", "5")
        for name, (fields, field) in BAD_GRANTS.items():
            candidate = new_grant("bad", f"g-{name.replace(' ', '-')}", "1")
            for key, value in fields.items():
                if isinstance(value, list):
                    getattr(candidate, key).extend(value)
                else:
                    setattr(candidate, key, value)
            request = contracts_pb2.GrantCreditsRequest(grant=candidate)
            code, details = refusal(functools.partial(client.contracts.GrantCredits, request))
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, details)
            assert details.startswith(f"{field}: "), (name, details)
        late = new_grant("bad", "g-backwards", "1", starts_at_ms=now_ms(), expires_at_ms=now_ms() - HOUR_MS)
        code, details = refusal(
            functools.partial(client.contracts.GrantCredits, contracts_pb2.GrantCreditsRequest(grant=late))
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("grant.expires_at: "), details
        assert rows(client, "bad") == {"ok": ("0", "5", "0", "0")}


def test_under_allow_a_hold_beyond_its_products_credit_holds_that_credit_and_settles_smaller(
    server: ServerProcess,
) -> None:
    """ALLOW, the five grants of `mixed_grants` (9 credits may pay `units`). A hold of 12 units is OVERAGE_ALLOWED
    at 12 and holds the 9 (p1-soon 3, p1-units 2, p1-late 4), not p0-extra's 5: 14 - 9 = 5 available. A grant
    `m1-new` of 2 at priority -1 comes after the hold (7 available). The settling event is 7 units: the 9 come back,
    then 7 draw in burn order: m1-new 2, p1-soon 3, p1-units 2; p1-late keeps its 4; nothing is overage (period
    charges 7): 16 - 7 = 9 left."""
    with server.client() as client:
        customer(client, "ovh", block=False)
        mixed_grants(client, "ovh")
        assert hold(client, "ovh", 12, "h") == (True, "OVERAGE_ALLOWED", "12", "0", "h")
        assert totals(client, "ovh") == ("14", "9", "5")
        assert [rows(client, "ovh")[g][2] for g in ("p0-extra", "p1-soon", "p1-units", "p1-late")] == [
            "0",
            "3",
            "2",
            "4",
        ]
        grant(client, "ovh", "m1-new", "2", priority=-1)
        assert totals(client, "ovh") == ("16", "9", "7")
        assert list(use(client, event("v1", "ovh", 7, reservation_id="h")).notices) == []
        assert rows(client, "ovh") == {
            "p0-extra": ("0", "5", "0", "0"),
            "p1-late": ("0", "4", "0", "0"),
            "p1-soon": ("3", "0", "0", "0"),
            "p1-units": ("2", "0", "0", "0"),
            "m5-future": ("0", "10", "0", "0"),
            "m1-new": ("2", "0", "0", "0"),
        }
        assert charges(client, "ovh") == ("7", "0")
        assert totals(client, "ovh") == ("9", "0", "9")


def test_tenths_held_one_by_one_fill_the_credit_exactly(server: ServerProcess) -> None:
    """Money is never binary float: values are read from their shortest representation, so 0.1 is one tenth. BLOCK,
    0.3 credits: three holds of 0.1 are allowed (0.2, 0.1, 0 available), a fourth is denied with 0 available; the
    three settled by events of 0.1 leave 0 remaining and 0.3 charged, nothing overage."""
    with server.client() as client:
        customer(client, "tenth", block=True)
        grant(client, "tenth", "g", "0.3")
        for i, left in enumerate(("0.2", "0.1", "0")):
            assert hold(client, "tenth", 0.1, f"t{i}") == (True, "OK", "0.1", left, f"t{i}")
        assert hold(client, "tenth", 0.1, "t3") == (False, "INSUFFICIENT_CREDIT", "0.1", "0", "")
        use(client, *(event(f"e{i}", "tenth", 0.1, reservation_id=f"t{i}") for i in range(3)))
        assert rows(client, "tenth") == {"g": ("0.3", "0", "0", "0")}
        assert charges(client, "tenth") == ("0.3", "0")


def test_a_top_up_reads_the_customers_available_credit_not_one_products(server: ServerProcess) -> None:
    """README "Automatic top-up": a purchase when an event leaves the customer's available credit (GetBalance's
    credits_available) below the threshold. `e-only` 100 for `extra`, `g` 5 for every product; policy below 3 back
    to 10. 4 units of `work` draw g's 4: the customer has 101 available (1 to `units`), not below 3: nothing bought.
    Then 98 units of `other` draw e-only's 98 (3 available, not below 3), 1 more draws e-only: 2 available < 3:
    one TOP_UP of 10 - 2 = 8."""
    with server.client() as client:
        contract_id = customer(client, "tp", block=False)
        grant(client, "tp", "e-only", "100", products=("extra",))
        grant(client, "tp", "g", "5")
        top_up = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="1", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=top_up))
        use(client, event("w1", "tp", 4))
        assert totals(client, "tp") == ("101", "0", "101")
        assert ask(client, "tp", 1) == (True, "OK", "1", "1")
        use(client, event("o1", "tp", 98, event_type="other"))
        assert totals(client, "tp") == ("3", "0", "3")
        use(client, event("o2", "tp", 1, event_type="other"))
        top = f"top-up-{month_start_ms()}-1"
        assert rows(client, "tp")[top] == ("0", "8", "0", "0")
        assert totals(client, "tp") == ("10", "0", "10")


def test_under_block_nothing_is_held_at_zero_credit_and_an_ended_ids_changed_retry_is_already_exists(
    server: ServerProcess,
) -> None:
    """README "What the server does today": BLOCK contracts are denied "while no credit is available to the usage's
    products at all even usage that would cost nothing is": with 0 available a hold of 0 units is INSUFFICIENT_CREDIT
    at 0 and holds nothing (its id stays free). An id stays taken after its hold ended (35 days): a released one
    asked again with another request is ALREADY_EXISTS and holds nothing."""
    with server.client() as client:
        customer(client, "zero", block=True)
        grant(client, "zero", "g", "2")
        assert hold(client, "zero", 2, "all") == (True, "OK", "2", "0", "all")
        assert hold(client, "zero", 0, "free") == (False, "INSUFFICIENT_CREDIT", "0", "0", "")
        assert ask(client, "zero", 0) == (False, "INSUFFICIENT_CREDIT", "0", "0")
        assert release(client, "zero", "all") == "2"
        assert hold(client, "zero", 0, "free") == (True, "OK", "0", "2", "free")
        code, details = refusal(lambda: hold(client, "zero", 1, "all"))
        assert code == grpc.StatusCode.ALREADY_EXISTS, details
        assert totals(client, "zero") == ("2", "0", "2")


def test_what_a_settling_event_leaves_on_an_expired_grant_pays_no_other_event_of_its_batch(
    server: ServerProcess,
) -> None:
    """As above, `short` (10, paid 5, expiring in 3 s) and `long` (10, paid 10, priority 1); a hold of 4 on `short`,
    which then expires (6 broken). One batch, both events dated before the expiry: the event settling the hold (1
    unit) draws 1 of the 4 it gave back; the next event (5 units, naming no hold) is a late event arriving after the
    breakage was recorded, so it draws nothing from `short` (README "Expiry and breakage") but 5 from `long`. The
    3 the settling event left break with the batch, before anything else can draw them: `short` drawn 1, expired 9;
    `long` drawn 5, 5 left. Recognised 1 x 0.5 + 5 x 1 = 5.5, breakage 9 x 0.5 = 4.5; the same after a kill -9 and a
    restart (the journal replays it). Before, the second event drew the 3 (recognised 4, breakage 3)."""
    with server.client() as client:
        customer(client, "xb", block=False)
        grant(client, "xb", "short", "10", paid="5", expires_at_ms=now_ms() + 3000)
        grant(client, "xb", "long", "10", paid="10", priority=1)
        held_at_ms = now_ms()
        assert hold(client, "xb", 4, "r1", ttl=Duration(seconds=120)) == (True, "OK", "4", "16", "r1")
        assert wait_for(lambda: rows(client, "xb")["short"] == ("0", "0", "4", "6"), 10)
        use(
            client,
            event("b1", "xb", 1, reservation_id="r1", at_ms=held_at_ms),
            event("b2", "xb", 5, at_ms=held_at_ms),
        )
        assert revenue_of(client, "xb") == ("15", "5.5", "4.5")
        assert rows(client, "xb") == {"short": ("1", "0", "0", "9"), "long": ("5", "5", "0", "0")}
        assert charges(client, "xb") == ("6", "0")
    server.kill9()
    server.restart()
    with server.client() as client:  # the journal replays to the same amounts
        assert revenue_of(client, "xb") == ("15", "5.5", "4.5")
        assert rows(client, "xb") == {"short": ("1", "0", "0", "9"), "long": ("5", "5", "0", "0")}


def test_a_release_of_credit_held_on_an_expired_grant_breaks_it_with_the_release(server: ServerProcess) -> None:
    """`short` (10, paid 5, expiring in 3 s) and `long` (10, paid 10, priority 1); a hold of 4 on `short`, which
    then expires (6 broken, 3 USD). Releasing the hold gives back 4 and breaks them in the same record (README
    "Expiry and breakage": a release breaks it all at once): right after its answer, with no clock in between,
    `short` shows 10 expired and revenue 10 x 0.5 = 5 of breakage; a late event dated before the expiry then draws
    only `long`."""
    with server.client() as client:
        customer(client, "xr", block=False)
        grant(client, "xr", "short", "10", paid="5", expires_at_ms=now_ms() + 3000)
        grant(client, "xr", "long", "10", paid="10", priority=1)
        held_at_ms = now_ms()
        assert hold(client, "xr", 4, "r1", ttl=Duration(seconds=120)) == (True, "OK", "4", "16", "r1")
        assert wait_for(lambda: revenue_of(client, "xr") == ("15", "0", "3"), 10), revenue_of(client, "xr")
        assert release(client, "xr", "r1") == "4"
        assert revenue_of(client, "xr") == ("15", "0", "5")
        use(client, event("late", "xr", 2, at_ms=held_at_ms))
        assert rows(client, "xr") == {"short": ("0", "0", "0", "10"), "long": ("2", "8", "0", "0")}
        assert revenue_of(client, "xr") == ("15", "2", "5")


def test_one_message_retrying_a_hold_holds_once_and_unnamed_holds_are_each_their_own(server: ServerProcess) -> None:
    """balance.proto AuthorizeBatches: requests in order, each against the holds before it, the same message too.
    BLOCK, 10 credits. One message: hold `a` of 3 (7 left); the same request again (a retry: the same hold, 7 left);
    `a` with 4 units (RESERVATION_CONFLICT, nothing held); two unnamed holds of 2 (each its own `r-<32 hex>` hold: 5,
    then 3 left). GetBalance: 7 held, 3 available."""
    with server.client() as client:
        customer(client, "mm", block=True)
        grant(client, "mm", "g", "10")
        requests = [
            hold_request("mm", 3, "a", request_id="q0"),
            hold_request("mm", 3, "a", request_id="q1"),
            hold_request("mm", 4, "a", request_id="q2"),
            hold_request("mm", 2, "", request_id="q3"),
            hold_request("mm", 2, "", request_id="q4"),
        ]
        (result,) = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)])))
        answers = [(a.request_id, a.allowed, a.reason, a.credits_available) for a in result.responses]
        assert answers == [
            ("q0", True, "OK", "7"),
            ("q1", True, "OK", "7"),
            ("q2", False, "RESERVATION_CONFLICT", "0"),
            ("q3", True, "OK", "5"),
            ("q4", True, "OK", "3"),
        ]
        ids = [a.reservation_id for a in result.responses]
        assert ids[:3] == ["a", "a", ""]
        assert ids[3] != ids[4] and all(re.fullmatch(r"r-[0-9a-f]{32}", i) for i in ids[3:]), ids
        assert totals(client, "mm") == ("10", "7", "3")
        assert [release(client, "mm", i) for i in ids[3:]] == ["2", "2"]
        assert totals(client, "mm") == ("10", "3", "7")


def alerts_of(client: TariffClient, customer_id: str, count: int) -> list[tuple[str, str]]:
    """The first `count` alerts of the customer, oldest first: (type, credits_available read)."""
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=10)
    seen: list[tuple[str, str]] = []
    for alert in stream:
        if alert.customer_id == customer_id:
            seen.append((alerts_pb2.AlertType.Name(alert.type), alert.details["credits_available"]))
            if len(seen) == count:
                stream.cancel()
                return seen
    raise AssertionError(f"the stream ended after {seen}")


def test_balance_alerts_read_the_customers_available_credit_across_holds_and_products(server: ServerProcess) -> None:
    """README "Watching balances and alerts": LOW_BALANCE when credits_available falls below the threshold,
    CREDITS_EXHAUSTED when it is <= 0; each fires again only once an evaluation found it cleared. credits_available is
    the customer's (GetBalance's), held credit left out. BLOCK; `u` 5 credits for `units`, `x` 3 for `extra`; rules
    LOW_BALANCE below 4 and CREDITS_EXHAUSTED. A hold of 5 units: 8 - 5 = 3 available: LOW_BALANCE (3); not
    exhausted, `x`'s 3 are available. 3 units of `other`: 0: CREDITS_EXHAUSTED (0), LOW_BALANCE still holds (no
    second). The release: 5, both cleared. A hold of 2: 3: LOW_BALANCE again (3)."""
    with server.client() as client:
        customer(client, "al", block=True)
        grant(client, "al", "u", "5", products=("units",))
        grant(client, "al", "x", "3", products=("extra",))
        for rule_id, kind, threshold in (
            ("al-low", alerts_pb2.LOW_BALANCE, "4"),
            ("al-out", alerts_pb2.CREDITS_EXHAUSTED, ""),
        ):
            client.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(id=rule_id, customer_id="al", type=kind, threshold=threshold)
            )
        assert hold(client, "al", 5, "h1") == (True, "OK", "5", "0", "h1")
        assert totals(client, "al") == ("8", "5", "3")
        use(client, event("o1", "al", 3, event_type="other"))
        assert totals(client, "al") == ("5", "5", "0")
        assert release(client, "al", "h1") == "5"
        assert hold(client, "al", 2, "h2") == (True, "OK", "2", "3", "h2")
        assert alerts_of(client, "al", 3) == [("LOW_BALANCE", "3"), ("CREDITS_EXHAUSTED", "0"), ("LOW_BALANCE", "3")]


def gauge_card(client: TariffClient) -> None:
    """Card `gauge-card`: product `last` (event type `gauge`, LATEST of `n`) at 1 credit a unit, so an event dated
    after the period's latest one changes the charge by its value minus that one's (a lower value gives back)."""
    product = pricing_pb2.Product(id="last", event_type="gauge", aggregation=pricing_pb2.LATEST, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="gauge-card", pricing_unit="credits"))
    rates = [pricing_pb2.Rate(product_id="last", unit=pricing_pb2.UnitPrice(price="1"))]
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="gauge-card", upsert_rates=rates)
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id="gauge-card", version=draft.version, effective_from=stamp(CARD_FROM_MS)
        )
    )


def test_credit_a_lower_reading_gives_back_to_an_expired_grant_pays_no_later_event(server: ServerProcess) -> None:
    """Breakage, once recorded, is final (README "Expiry and breakage"). LATEST at 1 a unit; `short` 10 (paid 5,
    expiring in 3 s), `long` 10 (paid 10, priority 1). A reading of 5 draws 5 of `short`; `short` expires: 5 break
    (2.5 USD). One batch after it, both dated before the expiry: a reading of 2 (charge 2 - 5 = -3: `short`, which
    paid, gets 3 back, now breakage too), then a reading of 4 (+2): a late event, so `long` pays the 2, not the 3
    `short` got back. `short` drawn 2, expired 8; `long` drawn 2. Recognised 2 x 0.5 + 2 x 1 = 3, breakage 8 x 0.5
    = 4 (before: `short` paid the 2, drawn 4, recognised 2, and breakage 3); the same after a kill -9 and a restart."""
    with server.client() as client:
        gauge_card(client)
        customer(client, "rf", block=False, rate_card_id="gauge-card")
        grant(client, "rf", "short", "10", paid="5", expires_at_ms=now_ms() + 3000)
        grant(client, "rf", "long", "10", paid="10", priority=1)
        read_at_ms = now_ms()
        use(client, event("g1", "rf", 5, event_type="gauge", at_ms=read_at_ms))
        assert wait_for(lambda: revenue_of(client, "rf") == ("15", "2.5", "2.5"), 10), revenue_of(client, "rf")
        use(
            client,
            event("g2", "rf", 2, event_type="gauge", at_ms=read_at_ms + 1),
            event("g3", "rf", 4, event_type="gauge", at_ms=read_at_ms + 2),
        )
        assert revenue_of(client, "rf") == ("15", "3", "4")
        assert rows(client, "rf") == {"short": ("2", "0", "0", "8"), "long": ("2", "8", "0", "0")}
        assert charges(client, "rf") == ("4", "0")
    server.kill9()
    server.restart()
    with server.client() as client:
        assert revenue_of(client, "rf") == ("15", "3", "4")
        assert rows(client, "rf") == {"short": ("2", "0", "0", "8"), "long": ("2", "8", "0", "0")}


def test_get_balance_prices_overage_at_the_contracts_price_exactly(server: ServerProcess) -> None:
    """Balance.overage_due: overage_amount priced at the contract's overage_price, in its currency; amounts the
    server writes have no trailing zeros (contracts.proto), and only an invoice's amounts due are written in the
    currency's minor unit. ALLOW at 0.37 EUR a credit, 1 credit granted: 4 units leave 3 of overage, 3 x 0.37 =
    1.11; 0.001 more: 3.001 x 0.37 = 1.11037."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="od", name="od"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-od",
                customer_id="od",
                rate_card_id="card",
                starting_at=stamp(month_start_ms()),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="0.37",
                currency="EUR",
            )
        )
        grant(client, "od", "g", "1")
        use(client, event("o1", "od", 4))
        balance = client.get_balance("od")
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("4", "3", "1.11")
        use(client, event("o2", "od", 0.001))
        balance = client.get_balance("od")
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("4.001", "3.001", "1.11037")


def test_a_grant_pays_events_dated_from_its_start_up_to_but_not_at_its_expiry(server: ServerProcess) -> None:
    """docs/architecture.md §3: a grant pays from starts_at until expires_at: the window is [starts_at, expires_at).
    Events may be dated up to 5 minutes ahead. `win` (priority 0, 5 credits) starts in 1 minute and expires in 2;
    `other` (priority 1, 5 credits) always pays. One unit each, dated: a millisecond before the start (other), at
    the start (win), a millisecond before the expiry (win), at the expiry (other)."""
    with server.client() as client:
        customer(client, "wd", block=False)
        start_ms = (now_ms() // 1000 + 60) * 1000
        end_ms = start_ms + 60_000
        grant(client, "wd", "win", "5", starts_at_ms=start_ms, expires_at_ms=end_ms)
        grant(client, "wd", "other", "5", priority=1)
        for i, at_ms in enumerate((start_ms - 1, start_ms, end_ms - 1, end_ms)):
            use(client, event(f"w{i}", "wd", 1, at_ms=at_ms))
        assert rows(client, "wd") == {"win": ("2", "3", "0", "0"), "other": ("2", "3", "0", "0")}
        assert charges(client, "wd") == ("4", "0")


def publish_units(client: TariffClient, card: str, price: str, from_ms: int) -> None:
    """A version of `card` pricing `units` at `price`, in force from `from_ms` (an hour)."""
    rates = [pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price=price))]
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates)
    )
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=draft.version, effective_from=stamp(from_ms))
    client.pricing.PublishVersion(request)


def test_re_rating_a_settlement_on_an_expired_grant_keeps_its_breakage_final(server: ServerProcess) -> None:
    """`short` (10, paid 5, expiring in 3 s) and `long` (10, paid 10, priority 1) on a card at 1; a hold of 4 on
    `short`, which expires (6 broken); the settling event, 3 units dated before the expiry, draws 3 of the 4 and 1
    breaks with it (revenue: 1.5 recognised, 3.5 broken). A cut to 0.5 from that hour: the 3 units cost 1.5, and
    the 1.5 `short` gives back breaks too (README "Changing prices safely": credit a cut gives back to an expired
    grant breaks; 8.5 x 0.5 = 4.25 broken, 0.75 recognised). A rise to 2: 6, of which `short` pays again only what
    it drew before the rise (1.5) and `long` 4.5 (recognised 0.75 + 4.5 = 5.25). Conserved throughout, and the same
    after a kill -9 and a restart."""
    if now_ms() % HOUR_MS > HOUR_MS - 60_000:
        pytest.skip("the hour ends within the scenario: its events would straddle the re-rated hour")
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="cut-card", pricing_unit="credits"))
        publish_units(client, "cut-card", "1", CARD_FROM_MS)
        customer(client, "cu", block=False, rate_card_id="cut-card")
        grant(client, "cu", "short", "10", paid="5", expires_at_ms=now_ms() + 3000)
        grant(client, "cu", "long", "10", paid="10", priority=1)
        held_at_ms = now_ms()
        assert hold(client, "cu", 4, "r1", ttl=Duration(seconds=120))[0]
        assert wait_for(lambda: rows(client, "cu")["short"] == ("0", "0", "4", "6"), 10)
        use(client, event("c1", "cu", 3, reservation_id="r1", at_ms=held_at_ms))
        assert rows(client, "cu") == {"short": ("3", "0", "0", "7"), "long": ("0", "10", "0", "0")}
        assert revenue_of(client, "cu") == ("15", "1.5", "3.5")
        hour_ms = held_at_ms // HOUR_MS * HOUR_MS
        publish_units(client, "cut-card", "0.5", hour_ms)
        assert wait_for(lambda: revenue_of(client, "cu") == ("15", "0.75", "4.25"), 10), revenue_of(client, "cu")
        assert rows(client, "cu") == {"short": ("1.5", "0", "0", "8.5"), "long": ("0", "10", "0", "0")}
        assert charges(client, "cu") == ("1.5", "0")
        publish_units(client, "cut-card", "2", hour_ms)
        expected = {"short": ("1.5", "0", "0", "8.5"), "long": ("4.5", "5.5", "0", "0")}
        assert rows(client, "cu") == expected
        assert (charges(client, "cu"), revenue_of(client, "cu")) == (("6", "0"), ("15", "5.25", "4.25"))
    server.kill9()
    server.restart()
    with server.client() as client:
        assert rows(client, "cu") == expected
        assert (charges(client, "cu"), revenue_of(client, "cu")) == (("6", "0"), ("15", "5.25", "4.25"))
