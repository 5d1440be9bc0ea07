"""An audit of README "What the server does today" (Usage, Balances, Pricing aggregation, Contracts) and the
usage.proto / balance.proto comments over the wire: each scenario runs against a real server process and every
amount asserted was computed by hand from the documents, not read back from the server.

Catalogue (rate card `card`, pricing unit credits, version 1 in force from 60 days ago):

    product   event type  aggregation        value key  filters      price a unit
    sum_n     s           SUM                n                       1
    max_g     m           MAX                g                       1
    latest_g  l           LATEST             g                       1
    users     u           UNIQUE_COUNT       user                    1
    eu_only   f           SUM                n          region=eu    1
    part_a    two         SUM                a                       1
    part_b    two         SUM                b                       10
    micro     p           SUM                n                       1,000,000
    unrated   nr          SUM                n                       (no rate)

Each customer's contract starts on the hour 5 hours ago, so every event of the last 5 hours is in its current
period (GetBalance's period_charges)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import charges, this_hour_ms
from tests.serverproc import ServerFactory, ServerProcess

HOUR_MS = 3_600_000
CARD_FROM_MS = (time.time_ns() // 1_000_000 // HOUR_MS - 60 * 24) * HOUR_MS
REJECT = usage_pb2.RejectReason

# id, event type, aggregation, value key, filters, price a unit (empty: no rate)
PRODUCTS: tuple[tuple[str, str, pricing_pb2.Aggregation, str, dict[str, str], str], ...] = (
    ("sum_n", "s", pricing_pb2.SUM, "n", {}, "1"),
    ("max_g", "m", pricing_pb2.MAX, "g", {}, "1"),
    ("latest_g", "l", pricing_pb2.LATEST, "g", {}, "1"),
    ("users", "u", pricing_pb2.UNIQUE_COUNT, "user", {}, "1"),
    ("eu_only", "f", pricing_pb2.SUM, "n", {"region": "eu"}, "1"),
    ("part_a", "two", pricing_pb2.SUM, "a", {}, "1"),
    ("part_b", "two", pricing_pb2.SUM, "b", {}, "10"),
    ("micro", "p", pricing_pb2.SUM, "n", {}, "1000000"),
    ("unrated", "nr", pricing_pb2.SUM, "n", {}, ""),
)


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing
    rates = []
    for product_id, event_type, aggregation, value_key, filters, price in PRODUCTS:
        product = pricing_pb2.Product(
            id=product_id, event_type=event_type, aggregation=aggregation, value_key=value_key, filters=filters
        )
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        if price:
            rates.append(pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=price)))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


def customer(
    client: TariffClient,
    customer_id: str,
    *,
    starting_at_ms: int | None = None,
    ending_before_ms: int | None = None,
    block: bool = False,
    overage_price: str = "",
) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    request = contracts_pb2.CreateContractRequest(
        id=f"k-{customer_id}",
        customer_id=customer_id,
        rate_card_id="card",
        starting_at=stamp(this_hour_ms() - 5 * HOUR_MS if starting_at_ms is None else starting_at_ms),
        overage_policy=contracts_pb2.BLOCK if block else contracts_pb2.ALLOW,
        overage_price=overage_price,
    )
    if ending_before_ms is not None:
        request.ending_before.CopyFrom(stamp(ending_before_ms))
    client.contracts.CreateContract(request)


def grant(client: TariffClient, customer_id: str, amount: str) -> None:
    new = contracts_pb2.Grant(
        id=f"g-{customer_id}", contract_id=f"k-{customer_id}", kind=contracts_pb2.PROMOTIONAL, amount=amount
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))


def event(
    transaction_id: str,
    customer_id: str,
    event_type: str,
    at_ms: int,
    values: dict[str, float] | None = None,
    dimensions: dict[str, str] | None = None,
    reservation_id: str = "",
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        values=values or {},
        dimensions=dimensions or {},
        reservation_id=reservation_id,
    )


def ingest(client: TariffClient, *events: usage_pb2.UsageEvent) -> usage_pb2.IngestAck:
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b", events=list(events)))
    return ack


def rejections(ack: usage_pb2.IngestAck) -> list[tuple[int, str, int]]:
    return [(r.index, r.transaction_id, r.reason) for r in ack.rejected]


def authorize(
    client: TariffClient,
    customer_id: str,
    event_type: str,
    values: dict[str, float],
    dimensions: dict[str, str] | None = None,
) -> tuple[bool, str, str, str]:
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id, event_type=event_type, values=values, dimensions=dimensions or {}
    )
    answer = client.balance.Authorize(request)
    return answer.allowed, answer.reason, answer.estimated_cost, answer.credits_available


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    server = server_factory()
    with server.client() as client:
        catalogue(client)
    return server


def test_max_latest_and_unique_count_over_hours_of_one_period_and_authorize_prices_the_same(
    server: ServerProcess,
) -> None:
    hour = this_hour_ms()
    with server.client() as client:
        for customer_id in ("gauge", "last", "seen"):
            customer(client, customer_id)
        # MAX: 5, 3 and 7 in three hours, then 6 in an earlier hour: the period's largest is 7, charged 5+0+2+0.
        peaks = [(5.0, -3), (3.0, -2), (7.0, -1), (6.0, -4)]
        ack = ingest(
            client, *(event(f"m{i}", "gauge", "m", hour + h * HOUR_MS + 5, {"g": g}) for i, (g, h) in enumerate(peaks))
        )
        assert (ack.accepted, charges(client, "gauge")) == (4, "7")
        # Authorize at now: 9 raises the maximum by 2, 3 does not raise it; ingesting 9 then charges exactly 2.
        assert authorize(client, "gauge", "m", {"g": 9})[2] == "2"
        assert authorize(client, "gauge", "m", {"g": 3})[2] == "0"
        ingest(client, event("m9", "gauge", "m", now_ms() - 1_000, {"g": 9}))
        assert charges(client, "gauge") == "9"
        # LATEST: 10 two hours ago, then 4 an hour ago (charge -6); 100 three hours ago is older, so it moves nothing.
        ingest(client, event("l1", "last", "l", hour - 2 * HOUR_MS, {"g": 10}))
        ingest(client, event("l2", "last", "l", hour - HOUR_MS, {"g": 4}))
        assert charges(client, "last") == "4"
        assert ingest(client, event("l3", "last", "l", hour - 3 * HOUR_MS, {"g": 100})).accepted == 1
        assert charges(client, "last") == "4"
        # The same timestamp as the latest: the event ingested last counts (docs/architecture.md §3).
        ingest(client, event("l4", "last", "l", hour - HOUR_MS, {"g": 6}))
        assert charges(client, "last") == "6"
        assert authorize(client, "last", "l", {"g": 1})[2] == "-5"
        # UNIQUE_COUNT of dimensions['user']: x, y, x over three hours is 2 users.
        users = [("x", 0), ("y", -1), ("x", -2)]
        ingest(
            client,
            *(
                event(f"u{i}", "seen", "u", now_ms() + h * HOUR_MS - 1_000, dimensions={"user": u})
                for i, (u, h) in enumerate(users)
            ),
        )
        assert charges(client, "seen") == "2"
        assert authorize(client, "seen", "u", {}, {"user": "x"})[2] == "0"
        assert authorize(client, "seen", "u", {}, {"user": "z"})[2] == "1"
        # The dimension UNIQUE_COUNT reads is required: missing (or sent as a value) is INVALID_EVENT.
        ack = ingest(client, event("u8", "seen", "u", now_ms() - 1_000, {"user": 3.0}, {"other": "z"}))
        assert rejections(ack) == [(0, "u8", REJECT.INVALID_EVENT)]
        assert charges(client, "seen") == "2"


def test_filters_and_one_event_feeding_two_products(server: ServerProcess) -> None:
    at_ms = now_ms() - 1_000
    with server.client() as client:
        customer(client, "feeds")
        # eu_only feeds on region=eu only: a US event (even without its value) and one with no region charge nothing.
        ack = ingest(
            client,
            event("f1", "feeds", "f", at_ms, {"n": 2}, {"region": "us"}),
            event("f2", "feeds", "f", at_ms, {"n": 3}, {"region": "eu"}),
            event("f3", "feeds", "f", at_ms, {"n": 5}),
            event("f4", "feeds", "f", at_ms, {}, {"region": "us"}),
        )
        assert (ack.accepted, rejections(ack), charges(client, "feeds")) == (4, [], "3")
        # Event type `two` feeds part_a (a at 1) and part_b (b at 10): 2 and 3 cost 2 + 30.
        assert authorize(client, "feeds", "two", {"a": 2, "b": 3})[2] == "32"
        ingest(client, event("t1", "feeds", "two", at_ms, {"a": 2, "b": 3}))
        assert charges(client, "feeds") == "35"
        # b missing: part_b needs it, so the whole event is INVALID_EVENT and part_a is not charged either.
        ack = ingest(client, event("t2", "feeds", "two", at_ms, {"a": 1}))
        assert (rejections(ack), charges(client, "feeds")) == ([(0, "t2", REJECT.INVALID_EVENT)], "35")
        assert "values['b']" in ack.rejected[0].message
        # A rejected event was never accepted: resent complete under the same id, it is accepted, not a conflict.
        ack = ingest(client, event("t2", "feeds", "two", at_ms, {"a": 1, "b": 1}))
        assert (ack.accepted, charges(client, "feeds")) == (1, "46")


def reordered_batch(transaction_id: str, customer_id: str, at_ms: int) -> bytes:
    """A UsageBatch's bytes holding one `s` event with dimensions k3, k1, k2 and values m, n in that wire order
    (protobuf merges repeated map entries), so the resend differs from the original only in map order."""
    head = usage_pb2.UsageEvent(
        transaction_id=transaction_id, customer_id=customer_id, event_type="s", timestamp_ms=at_ms
    )
    parts = [head.SerializeToString()]
    parts += [
        usage_pb2.UsageEvent(dimensions={k: v}).SerializeToString() for k, v in (("k3", "c"), ("k1", "a"), ("k2", "b"))
    ]
    parts += [usage_pb2.UsageEvent(values={k: v}).SerializeToString() for k, v in (("m", 2.0), ("n", 1.0))]
    event_bytes = b"".join(parts)
    return b"\x12" + bytes([len(event_bytes)]) + event_bytes  # field 2 (events), length-delimited, < 128 bytes


def test_dedupe_is_by_customer_and_transaction_id_on_content_not_wire_order(server: ServerProcess) -> None:
    at_ms = now_ms() - 1_000
    with server.client() as client, grpc.insecure_channel(server.target) as channel:
        customer(client, "once")
        customer(client, "other")
        original = event("o1", "once", "s", at_ms, {"n": 1, "m": 2}, {"k1": "a", "k2": "b", "k3": "c"})
        assert ingest(client, original).accepted == 1
        raw = channel.unary_unary(
            "/tariff.v1.UsageService/IngestUsageBatch", response_deserializer=usage_pb2.IngestAck.FromString
        )
        resend = raw(reordered_batch("o1", "once", at_ms), timeout=10)
        assert (resend.accepted, resend.duplicates, rejections(resend)) == (0, 1, [])
        # An extra (empty) dimension is different content.
        changed = event("o1", "once", "s", at_ms, {"n": 1, "m": 2}, {"k1": "a", "k2": "b", "k3": "c", "k4": ""})
        assert rejections(ingest(client, changed)) == [(0, "o1", REJECT.DUPLICATE_CONFLICT)]
        # The same id for another customer is another transaction.
        assert ingest(client, event("o1", "other", "s", at_ms, {"n": 4})).accepted == 1
        # Within one batch: the second copy is a duplicate of the first, the third (other value) a conflict.
        copies = [event("o2", "once", "s", at_ms, {"n": n}) for n in (1.0, 1.0, 2.0)]
        ack = ingest(client, *copies)
        assert (ack.accepted, ack.duplicates, rejections(ack)) == (1, 1, [(2, "o2", REJECT.DUPLICATE_CONFLICT)])
        assert (charges(client, "once"), charges(client, "other")) == ("2", "4")
        # Six batches on one stream, written before any ack is read, all naming o4 with n alternating 1 and 2:
        # the first is accepted, the identical ones are duplicates, the others conflicts; one unit charged.
        customer(client, "piped")
        batches = [
            usage_pb2.UsageBatch(batch_id=f"x{i}", events=[event("o4", "piped", "s", at_ms, {"n": 1 + i % 2})])
            for i in range(6)
        ]
        acks = list(client.usage.IngestUsage(iter(batches), timeout=10))
        answers = [(a.batch_id, a.accepted, a.duplicates, [r.reason for r in a.rejected]) for a in acks]
        conflict = [REJECT.DUPLICATE_CONFLICT]
        assert answers == [
            (f"x{i}", 1 if i == 0 else 0, 1 if i in (2, 4) else 0, conflict if i % 2 else []) for i in range(6)
        ]
        assert charges(client, "piped") == "1"
        # The window runs from receipt: an event stamped 40 days ago, resent at once, is a duplicate.
        customer(client, "old", starting_at_ms=CARD_FROM_MS)
        old = event("o3", "old", "s", now_ms() - 40 * 24 * HOUR_MS, {"n": 1})
        assert ingest(client, old).accepted == 1
        again = ingest(client, old)
        # A batch that accepts nothing is not journaled: its journal_seq is the balance's as_of_seq, unmoved.
        assert (again.duplicates, again.journal_seq) == (1, client.get_balance("old").as_of_seq)


def test_quantities_are_exact_decimals_of_their_shortest_text(server: ServerProcess) -> None:
    at_ms = now_ms() - 1_000
    with server.client() as client:
        for customer_id in ("tenth", "tiny", "huge", "half"):
            customer(client, customer_id)
        # 0.1 + 0.2 is the double 0.30000000000000004, priced at 1,000,000 a unit: exact, not 300000.
        ingest(client, event("p1", "tenth", "p", at_ms, {"n": 0.1 + 0.2}))
        assert charges(client, "tenth") == "300000.00000000004"
        # 1e-18 is the smallest quantity (18 places): 10^-12 at 1,000,000 a unit; 1e-19 is refused, not rounded.
        ack = ingest(
            client, event("p2", "tiny", "p", at_ms, {"n": 1e-18}), event("p3", "tiny", "p", at_ms, {"n": 1e-19})
        )
        assert (ack.accepted, rejections(ack), charges(client, "tiny")) == (
            1,
            [(1, "p3", REJECT.INVALID_EVENT)],
            "0.000000000001",
        )
        # Below 10^15 holds: 999999999999999.9 twice sums exactly; 10^15 itself is refused.
        big = [event(f"p{i}", "huge", "s", at_ms, {"n": 999999999999999.9}) for i in (4, 5)]
        ack = ingest(client, *big, event("p6", "huge", "s", at_ms, {"n": 1e15}))
        assert (ack.accepted, rejections(ack), charges(client, "huge")) == (
            2,
            [(2, "p6", REJECT.INVALID_EVENT)],
            "1999999999999999.8",
        )
        # Half a pico at 1 a unit: each side of price(after) - price(before) is rounded half-even to picos, so
        # the charges are 0, 10^-12, 10^-12 (0.5 -> 0, 1, 1.5 -> 2) and Authorize estimates each the same.
        costs = []
        for i in range(3):
            costs.append(authorize(client, "half", "s", {"n": 5e-13})[2])
            ingest(client, event(f"h{i}", "half", "s", at_ms, {"n": 5e-13}))
        assert costs == ["0", "0.000000000001", "0.000000000001"]
        assert charges(client, "half") == "0.000000000002"


def test_contract_edges_and_pricing_coverage(server: ServerProcess) -> None:
    hour = this_hour_ms()
    end_ms = hour - HOUR_MS + 123
    with server.client() as client:
        start_ms = hour - 5 * HOUR_MS
        customer(client, "ended", starting_at_ms=start_ms, ending_before_ms=end_ms)
        ack = ingest(
            client,
            event("e1", "ended", "s", end_ms, {"n": 1}),
            event("e2", "ended", "s", end_ms - 1, {"n": 2}),
            event("e3", "ended", "s", start_ms - 1, {"n": 4}),
            event("e4", "ended", "s", start_ms, {"n": 8}),
            event("e5", "nobody", "s", end_ms - 1, {"n": 1}),
            event("e6", "ended", "feeds-nothing", end_ms - 1, {"n": 1}),
        )
        expected = [
            (0, "e1", REJECT.NO_ACTIVE_CONTRACT),
            (2, "e3", REJECT.NO_ACTIVE_CONTRACT),
            (4, "e5", REJECT.UNKNOWN_CUSTOMER),
        ]
        assert (ack.accepted, ack.duplicates, rejections(ack)) == (3, 0, expected)
        # No version in force before CARD_FROM_MS, and no rate for `unrated`: NO_APPLICABLE_RATE both.
        customer(client, "early", starting_at_ms=CARD_FROM_MS - 2 * HOUR_MS)
        ack = ingest(
            client,
            event("r1", "early", "s", CARD_FROM_MS - HOUR_MS, {"n": 1}),
            event("r2", "early", "nr", now_ms() - 1_000, {"n": 1}),
            event("r3", "early", "s", CARD_FROM_MS, {"n": 1}),
        )
        assert rejections(ack) == [(0, "r1", REJECT.NO_APPLICABLE_RATE), (1, "r2", REJECT.NO_APPLICABLE_RATE)]
        at = datetime.fromtimestamp((CARD_FROM_MS - HOUR_MS) / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert ack.rejected[0].message.endswith(f"no version in force at {at} (timestamp_ms {CARD_FROM_MS - HOUR_MS})")
        assert authorize(client, "early", "nr", {"n": 1})[:2] == (False, "NO_APPLICABLE_RATE")


def test_block_authorize_at_exactly_the_remaining_credit_and_batches_of_mixed_customers(server: ServerProcess) -> None:
    at_ms = now_ms() - 1_000
    with server.client() as client:
        customer(client, "capped", block=True)
        customer(client, "open", overage_price="0.5")
        grant(client, "capped", "10")
        grant(client, "open", "3")
        ingest(client, event("b1", "capped", "s", at_ms, {"n": 4}))
        # 6 credits left: 6 is covered; one pico more is not; 6.0000000000005 rounds half-even to 6.
        assert authorize(client, "capped", "s", {"n": 6}) == (True, "OK", "6", "6")
        assert authorize(client, "capped", "s", {"n": 6.000000000001}) == (
            False,
            "INSUFFICIENT_CREDIT",
            "6.000000000001",
            "6",
        )
        assert authorize(client, "capped", "s", {"n": 6.0000000000005}) == (True, "OK", "6", "6")
        ingest(client, event("b2", "capped", "s", at_ms, {"n": 6}))
        # No credit left at all: a BLOCK contract denies even usage that would cost nothing (README "Balances").
        assert authorize(client, "capped", "s", {"n": 0}) == (False, "INSUFFICIENT_CREDIT", "0", "0")
        assert authorize(client, "capped", "feeds-nothing", {}) == (False, "INSUFFICIENT_CREDIT", "0", "0")
        # Ingestion is not blocked: the event is charged, the part beyond credit is overage.
        ingest(client, event("o1", "open", "s", at_ms, {"n": 5}))
        balance = client.get_balance("open")
        fields = (balance.period_charges, balance.overage_amount, balance.overage_due, balance.credits_remaining)
        assert fields == ("5", "2", "1", "0")  # overage 5 - 3 = 2, due 2 x 0.5
        # AuthorizeBatches: one message, several customers, answered in order like unary Authorize.
        requests = [
            balance_pb2.AuthorizeRequest(request_id="1", customer_id="capped", event_type="s", values={"n": 1}),
            balance_pb2.AuthorizeRequest(request_id="2", customer_id="open", event_type="two", values={"a": 1, "b": 1}),
            balance_pb2.AuthorizeRequest(request_id="3", customer_id="nobody", event_type="s", values={"n": 1}),
            balance_pb2.AuthorizeRequest(request_id="4", customer_id="open", event_type="two", values={"a": 1}),
        ]
        results = list(
            client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)]), timeout=10)
        )
        answers = [(a.request_id, a.allowed, a.reason, a.estimated_cost) for a in results[0].responses]
        assert answers == [
            ("1", False, "INSUFFICIENT_CREDIT", "1"),
            ("2", True, "OVERAGE_ALLOWED", "11"),
            ("3", False, "UNKNOWN_CUSTOMER", "0"),
            ("4", False, "INVALID_REQUEST", "0"),
        ]
