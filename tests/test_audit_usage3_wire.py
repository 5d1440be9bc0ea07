"""A third acceptance audit of the usage path over the wire (README "What the server does today" (Usage,
Pricing), usage.proto, pricing.proto Aggregation and Product, docs/architecture.md §3 Products and §5), past
tests/test_audit_usage_wire.py and tests/test_audit_usage2_wire.py: MAX and LATEST across a billing period
boundary and then invoiced, UNIQUE_COUNT over two batches and a kill -9 and at a period boundary, LATEST of one
timestamp across batches and restarts, a filter combined with pricing dimensions on an event feeding two
products and per pricing-dimension line, Authorize's estimate for each aggregation (VOLUME tiers included)
against what ingesting the same event then charges, a reservation settled by a gauge reading, refused readings
in a batch of good ones, one transaction id repeated in a batch, a past period's aggregates over restarts, and
CreateProduct refusing keys and filter values no event could carry (the one defect found: they were accepted). Every amount is computed by hand from the documents (in the docstrings).

Catalogue (rate card `card`, pricing unit credits, version 1 in force from 2024-01-01):

    product    event type  aggregation   value key  filters    pricing dimensions  price a unit
    sum_n      s           SUM           n                                         0.25
    calls      c           COUNT                                                   0.5
    peak       m           MAX           g                                         1
    gauge      m           LATEST        g                                         10
    seats      u           UNIQUE_COUNT  user                                      2
    eu_tokens  tok         SUM           n          region=eu  model               1 for model=a, 3 for model=b
    tok_calls  tok         COUNT                                                   0.5

`peak` and `gauge` both feed on event type `m`: one event is a reading of both."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import charges, this_hour_ms, unit
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_audit_usage2_wire import refusal
from tests.test_audit_usage_wire import event

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
REJECT = usage_pb2.RejectReason
Outcome = tuple[int, int, list[tuple[int, str, int]]]


def catalogue(client: TariffClient) -> None:
    agg = pricing_pb2
    products = [
        pricing_pb2.Product(id="sum_n", event_type="s", aggregation=agg.SUM, value_key="n"),
        pricing_pb2.Product(id="calls", event_type="c", aggregation=agg.COUNT),
        pricing_pb2.Product(id="peak", event_type="m", aggregation=agg.MAX, value_key="g"),
        pricing_pb2.Product(id="gauge", event_type="m", aggregation=agg.LATEST, value_key="g"),
        pricing_pb2.Product(id="seats", event_type="u", aggregation=agg.UNIQUE_COUNT, value_key="user"),
        pricing_pb2.Product(
            id="eu_tokens",
            event_type="tok",
            aggregation=agg.SUM,
            value_key="n",
            filters={"region": "eu"},
            pricing_dimensions=["model"],
        ),
        pricing_pb2.Product(id="tok_calls", event_type="tok", aggregation=agg.COUNT),
    ]
    for product in products:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    rates = [
        unit("sum_n", "0.25"),
        unit("calls", "0.5"),
        unit("peak", "1"),
        unit("gauge", "10"),
        unit("seats", "2"),
        unit("eu_tokens", "1", model="a"),
        unit("eu_tokens", "3", model="b"),
        unit("tok_calls", "0.5"),
    ]
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture
def server(server_factory: ServerFactory) -> Iterator[ServerProcess]:
    server = server_factory()
    with server.client() as client:
        catalogue(client)
    yield server


def customer(client: TariffClient, customer_id: str, start_ms: int) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id="card", starting_at=stamp(start_ms)
        )
    )


def ingest(client: TariffClient, *events: usage_pb2.UsageEvent) -> usage_pb2.IngestAck:
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b", events=events))
    return ack


def outcome(ack: usage_pb2.IngestAck) -> Outcome:
    return ack.accepted, ack.duplicates, [(r.index, r.transaction_id, r.reason) for r in ack.rejected]


def lines(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, int]]:
    """line_id -> (quantity, amount, events)."""
    return {line.line_id: (line.quantity, line.amount, line.events) for line in invoice.lines}


def estimate(client: TariffClient, customer_id: str, event_type: str, **reading: float | str) -> str:
    values = {k: float(v) for k, v in reading.items() if not isinstance(v, str)}
    dimensions = {k: v for k, v in reading.items() if isinstance(v, str)}
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id, event_type=event_type, values=values, dimensions=dimensions
    )
    return str(client.balance.Authorize(request).estimated_cost)


def test_max_and_latest_are_each_periods_own_across_the_boundary_and_invoice_so(server: ServerProcess) -> None:
    """docs/architecture.md §3 and §5 step 6: the aggregate is kept per (period, product, pricing dimensions), so
    MAX is the largest reading of each period and LATEST the reading of each period's latest event (a late
    event does not move it; one later than every other of its own period does, even after the next period has
    readings). Contract from the hour 40 days ago: its first period ended 9 to 12 days ago, the second is the
    current one. E is the first period's end. One event type `m` feeds peak (MAX, 1 a unit) and gauge (LATEST,
    10 a unit).

    Batch 1, in this order: E+1h g=2, E-1h g=8, E g=3, E-2h g=5.
        period 1: MAX(8, 5) = 8; LATEST = the reading at E-1h = 8 (E-2h is older)  -> 8 + 80 = 88
        period 2: MAX(2, 3) = 3; LATEST = the reading at E+1h = 2 (E is older)     -> 3 + 20 = 23
    Batch 2: E-3h g=9 (late, older than E-1h: moves period 1's MAX only) and E-1ms g=1 (the latest of period 1).
        period 1: MAX 9; LATEST 1                                                  -> 9 + 10 = 19
        period 2 unchanged                                                          -> 23
    Closing period 1 invoices peak 9 (9 credits) and gauge 1 (10 credits), each line with the 4 events of the
    period (E-1h, E-2h, E-3h, E-1ms).
    Afterwards an event in period 1 is PERIOD_CLOSED; one at E+2h g=4 makes period 2's MAX 4 and LATEST 4:
    4 + 40 = 44, over 3 events (E, E+1h, E+2h)."""
    start_ms = this_hour_ms() - 40 * DAY_MS
    with server.client() as client:
        customer(client, "meter", start_ms)
        first = invoices_pb2.PreviewInvoiceRequest(customer_id="meter", period_start=stamp(start_ms))
        end = client.invoices.PreviewInvoice(first).period_end.ToMilliseconds()
        assert start_ms + 28 * DAY_MS <= end <= now_ms() - 8 * DAY_MS

        def m(transaction_id: str, at_ms: int, g: float) -> usage_pb2.UsageEvent:
            return event(transaction_id, "meter", "m", at_ms, {"g": g})

        ack = ingest(
            client, m("a", end + HOUR_MS, 2), m("b", end - HOUR_MS, 8), m("c", end, 3), m("d", end - 2 * HOUR_MS, 5)
        )
        assert outcome(ack) == (4, 0, [])
        assert charges(client, "meter") == "23"
        assert (client.invoices.PreviewInvoice(first).subtotal) == "88"
        assert outcome(ingest(client, m("e", end - 3 * HOUR_MS, 9), m("f", end - 1, 1))) == (2, 0, [])
        draft = client.invoices.PreviewInvoice(first)
        assert (draft.subtotal, lines(draft)) == ("19", {"peak": ("9", "9", 4), "gauge": ("1", "10", 4)})
        assert charges(client, "meter") == "23"
        invoice = client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="meter", period_start=stamp(start_ms))
        )
        assert (invoice.subtotal, lines(invoice)) == ("19", {"peak": ("9", "9", 4), "gauge": ("1", "10", 4)})
        ack = ingest(client, m("g", end - 1, 100), m("h", end + 2 * HOUR_MS, 4))
        assert outcome(ack) == (1, 0, [(0, "g", REJECT.PERIOD_CLOSED)])
        assert charges(client, "meter") == "44"
        second = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="meter"))
        assert (second.period_start.ToMilliseconds(), second.subtotal) == (end, "44")
        assert lines(second) == {"peak": ("4", "4", 3), "gauge": ("4", "40", 3)}


def test_unique_count_counts_a_value_once_over_batches_hours_and_a_kill_9(server: ServerProcess) -> None:
    """pricing.proto UNIQUE_COUNT: the number of distinct dimensions['user'] of the period (2 credits each).
    Batch 1: x, y, x -> 2 users, 4 credits. Batch 2 (on a stream, an hour earlier): x -> still 2, 4 credits;
    Authorize prices x at 0 and z at 2. After kill -9 and a restart: y -> 0 (still 4); z -> 3 users, 6 credits.
    Resending u1 as it was is a duplicate; u1 naming z instead of x is DUPLICATE_CONFLICT and changes nothing.
    The current period's line: quantity 3, 6 credits, 6 events (u1 to u6)."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "team", this_hour_ms() - 5 * HOUR_MS)

        def u(transaction_id: str, user: str, when_ms: int = at_ms) -> usage_pb2.UsageEvent:
            return event(transaction_id, "team", "u", when_ms, dimensions={"user": user})

        assert outcome(ingest(client, u("u1", "x"), u("u2", "y"), u("u3", "x"))) == (3, 0, [])
        assert charges(client, "team") == "4"
        batch = usage_pb2.UsageBatch(batch_id="s", events=[u("u4", "x", at_ms - HOUR_MS)])
        assert [outcome(a) for a in client.usage.IngestUsage(iter([batch]), timeout=10)] == [(1, 0, [])]
        assert charges(client, "team") == "4"
        assert (estimate(client, "team", "u", user="x"), estimate(client, "team", "u", user="z")) == ("0", "2")
    server.kill9()
    server.restart()
    with server.client() as client:
        assert charges(client, "team") == "4"
        assert outcome(ingest(client, u("u5", "y"))) == (1, 0, [])
        assert charges(client, "team") == "4"
        assert outcome(ingest(client, u("u6", "z"))) == (1, 0, [])
        assert charges(client, "team") == "6"
        ack = ingest(client, u("u1", "x"), u("u1", "z"))
        assert outcome(ack) == (0, 1, [(1, "u1", REJECT.DUPLICATE_CONFLICT)])
        assert charges(client, "team") == "6"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="team"))
        assert lines(draft) == {"seats": ("3", "6", 6)}


def test_a_filter_with_pricing_dimensions_on_an_event_feeding_two_products(server: ServerProcess) -> None:
    """pricing.proto Product: filters are dimension equality conditions (so `EU` is not `eu`, and a missing
    region does not meet region=eu); pricing_dimensions make one line per model. Event type `tok` feeds
    eu_tokens (SUM n, region=eu, 1 a unit for model=a, 3 for model=b) and tok_calls (COUNT, 0.5, no filter).

        t1 eu/a n=3      eu_tokens;model=a 3 + tok_calls 0.5
        t2 eu/b n=2      eu_tokens;model=b 6 + tok_calls 0.5
        t3 us/a n=100    tok_calls 0.5 (eu_tokens' filter not met)
        t4 -/a n=7       tok_calls 0.5
        t5 eu/c n=1      NO_APPLICABLE_RATE: no rate for model=c, so the whole event is refused (tok_calls too)
        t6 EU/b n=4      tok_calls 0.5
        t7 eu/a (no n)   INVALID_EVENT: eu_tokens needs values['n']
        t8 us/b (no n)   tok_calls 0.5 (the product needing n is not fed)
    Charges: 3 + 6 + 6 x 0.5 = 12. Authorize eu/b n=1 estimates 3 + 0.5 = 3.5, us/b 0.5."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "eu", this_hour_ms() - 5 * HOUR_MS)

        def tok(transaction_id: str, region: str, model: str, n: float | None) -> usage_pb2.UsageEvent:
            dimensions = {"model": model} if not region else {"region": region, "model": model}
            return event(transaction_id, "eu", "tok", at_ms, {} if n is None else {"n": n}, dimensions)

        ack = ingest(
            client,
            tok("t1", "eu", "a", 3),
            tok("t2", "eu", "b", 2),
            tok("t3", "us", "a", 100),
            tok("t4", "", "a", 7),
            tok("t5", "eu", "c", 1),
            tok("t6", "EU", "b", 4),
            tok("t7", "eu", "a", None),
            tok("t8", "us", "b", None),
        )
        assert outcome(ack) == (6, 0, [(4, "t5", REJECT.NO_APPLICABLE_RATE), (6, "t7", REJECT.INVALID_EVENT)])
        assert charges(client, "eu") == "12"
        assert estimate(client, "eu", "tok", region="eu", model="b", n=1) == "3.5"
        assert estimate(client, "eu", "tok", region="us", model="b") == "0.5"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="eu"))
        assert lines(draft) == {
            "eu_tokens;model=a": ("3", "3", 1),
            "eu_tokens;model=b": ("2", "6", 1),
            "tok_calls": ("6", "3", 6),
        }


def test_authorize_estimates_what_ingesting_the_same_event_then_charges_for_each_aggregation(
    server: ServerProcess,
) -> None:
    """README Balances: Authorize prices the described usage exactly as ingesting it now would. For each
    aggregation, with some usage already in the period, the estimate equals the rise in period_charges that
    ingesting the same event at now then makes:
        SUM 0.25:   n=4 (1), then n=6          -> 1.5,  charges 2.5
        COUNT 0.5:  one event                  -> 0.5,  charges 3
        m (MAX 1 + LATEST 10): g=5 an hour ago (5 + 50 = 55, charges 58), then g=7 -> 2 + 20 = 22, charges 80;
                    then g=3                   -> MAX 0, LATEST 10 x (3 - 7) = -40, charges 40
        UNIQUE_COUNT 2: user x (2, charges 42); then x -> 0, y -> 2, charges 44."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        customer(client, "probe", this_hour_ms() - 5 * HOUR_MS)

        def then(transaction_id: str, event_type: str, **reading: float | str) -> tuple[str, str]:
            """The estimate, then the period's charges after ingesting the same reading."""
            guess = estimate(client, "probe", event_type, **reading)
            values = {k: float(v) for k, v in reading.items() if not isinstance(v, str)}
            dims = {k: v for k, v in reading.items() if isinstance(v, str)}
            assert outcome(ingest(client, event(transaction_id, "probe", event_type, now_ms(), values, dims)))[0] == 1
            return guess, charges(client, "probe")

        ingest(client, event("s0", "probe", "s", at_ms, {"n": 4}))
        assert then("s1", "s", n=6) == ("1.5", "2.5")
        assert then("c1", "c") == ("0.5", "3")
        ingest(client, event("m0", "probe", "m", at_ms - HOUR_MS, {"g": 5}))
        assert charges(client, "probe") == "58"
        assert then("m1", "m", g=7) == ("22", "80")
        assert then("m2", "m", g=3) == ("-40", "40")
        ingest(client, event("u0", "probe", "u", at_ms, dimensions={"user": "x"}))
        assert charges(client, "probe") == "42"
        assert then("u1", "u", user="x") == ("0", "42")
        assert then("u2", "u", user="y") == ("2", "44")


def test_latest_of_one_timestamp_is_the_reading_ingested_last_in_a_batch_across_batches_and_restarts(
    server: ServerProcess,
) -> None:
    """docs/architecture.md §3: LATEST is the reading of the latest event by timestamp and, of events with the
    same timestamp, the one ingested last; replay after kill -9 (journal) and after a stop (snapshot) keeps
    that order. Every reading below has one timestamp T; event type `m` feeds peak (MAX, 1) and gauge (LATEST, 10).
        batch [a g=5, b g=3]: MAX 5, LATEST 3 (b after a in the batch)   -> 5 + 30 = 35
        batch [c g=4]:        LATEST 4                                  -> 5 + 40 = 45
        c again with g=40 and T+5: DUPLICATE_CONFLICT, nothing moves    -> 45
        kill -9, restart:                                               -> 45
        [d g=2]:              LATEST 2                                  -> 5 + 20 = 25
        stop, restart:                                                  -> 25; lines peak 5 (4 events), gauge 2 (20)"""
    t = now_ms() - 10_000
    with server.client() as client:
        customer(client, "same", this_hour_ms() - 5 * HOUR_MS)

        def m(transaction_id: str, g: float, at_ms: int = t) -> usage_pb2.UsageEvent:
            return event(transaction_id, "same", "m", at_ms, {"g": g})

        assert outcome(ingest(client, m("a", 5), m("b", 3))) == (2, 0, [])
        assert charges(client, "same") == "35"
        assert outcome(ingest(client, m("c", 4))) == (1, 0, [])
        assert charges(client, "same") == "45"
        assert outcome(ingest(client, m("c", 40, t + 5))) == (0, 0, [(0, "c", REJECT.DUPLICATE_CONFLICT)])
        assert charges(client, "same") == "45"
    server.kill9()
    server.restart()
    with server.client() as client:
        assert charges(client, "same") == "45"
        assert outcome(ingest(client, m("d", 2))) == (1, 0, [])
        assert charges(client, "same") == "25"
    server.restart()
    with server.client() as client:
        assert charges(client, "same") == "25"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="same"))
        assert lines(draft) == {"peak": ("5", "5", 4), "gauge": ("2", "20", 4)}


def test_unique_count_is_each_periods_own_at_the_boundary(server: ServerProcess) -> None:
    """UNIQUE_COUNT counts the distinct users of each period (2 credits each); E is the first period's end.
    period 1: x at its start, y at E-1h, x at E-1ms          -> 2 users, 4 credits, 3 events
    period 2: x at E, y at E+1ms                             -> 2 users, 4 credits, 2 events (the current one)"""
    start_ms = this_hour_ms() - 40 * DAY_MS
    with server.client() as client:
        customer(client, "edge", start_ms)
        first = invoices_pb2.PreviewInvoiceRequest(customer_id="edge", period_start=stamp(start_ms))
        end = client.invoices.PreviewInvoice(first).period_end.ToMilliseconds()

        def u(transaction_id: str, at_ms: int, user: str) -> usage_pb2.UsageEvent:
            return event(transaction_id, "edge", "u", at_ms, dimensions={"user": user})

        ack = ingest(
            client,
            u("1", end - 1, "x"),
            u("2", end, "x"),
            u("3", end + 1, "y"),
            u("4", end - HOUR_MS, "y"),
            u("5", start_ms, "x"),
        )
        assert outcome(ack) == (5, 0, [])
        draft = client.invoices.PreviewInvoice(first)
        assert (draft.subtotal, lines(draft)) == ("4", {"seats": ("2", "4", 3)})
        assert charges(client, "edge") == "4"
        current = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="edge"))
        assert lines(current) == {"seats": ("2", "4", 2)}


def test_a_reservation_settled_by_a_gauge_reading_charges_what_authorize_estimated(server: ServerProcess) -> None:
    """balance.proto AuthorizeRequest.reserve: the hold is the estimated cost, given back when the event with
    its reservation_id is charged what it costs. Promotional grant 100; event type `m` feeds peak (MAX, 1) and
    gauge (LATEST, 10).
        g=5 a minute ago: 5 + 50 = 55; 45 left
        reserve g=3: MAX 0, LATEST 10 x (3 - 5) = -20 -> estimate -20, nothing held (45 available)
        settle with g=3: charges 35, the 20 given back to the grant -> 65 left
        reserve g=8: MAX 8 - 5 = 3, LATEST 10 x (8 - 3) = 50 -> 53 held, 12 available
        settle with g=8: charges 88, 12 left, 12 available (no notice: each settled its reservation)"""
    with server.client() as client:
        customer(client, "hold", this_hour_ms() - 5 * HOUR_MS)
        grant = contracts_pb2.Grant(id="g-hold", contract_id="k-hold", kind=contracts_pb2.PROMOTIONAL, amount="100")
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))

        def balance() -> tuple[str, str, str]:
            b = client.get_balance("hold")
            return str(b.period_charges), str(b.credits_remaining), str(b.credits_available)

        def reserve(reservation_id: str, g: float) -> tuple[bool, str]:
            request = balance_pb2.AuthorizeRequest(
                customer_id="hold", event_type="m", values={"g": g}, reserve=True, reservation_id=reservation_id
            )
            answer = client.balance.Authorize(request)
            return answer.allowed, answer.estimated_cost

        def settle(transaction_id: str, reservation_id: str, g: float) -> usage_pb2.IngestAck:
            return ingest(client, event(transaction_id, "hold", "m", now_ms(), {"g": g}, reservation_id=reservation_id))

        assert outcome(ingest(client, event("a", "hold", "m", now_ms() - 60_000, {"g": 5}))) == (1, 0, [])
        assert balance() == ("55", "45", "45")
        assert reserve("r1", 3) == (True, "-20")
        assert balance() == ("55", "45", "45")
        ack = settle("b", "r1", 3)
        assert (outcome(ack), list(ack.notices)) == ((1, 0, []), [])
        assert balance() == ("35", "65", "65")
        assert reserve("r2", 8) == (True, "53")
        assert balance() == ("35", "65", "12")
        ack = settle("c", "r2", 8)
        assert (outcome(ack), list(ack.notices)) == ((1, 0, []), [])
        assert balance() == ("88", "12", "12")


def test_rejected_gauge_readings_in_a_batch_of_good_ones_move_neither_max_nor_latest(server: ServerProcess) -> None:
    """README Usage: one bad event never sinks its batch, and (docs/architecture.md §5 step 8) a rejected event
    changes nothing, so a refused reading neither raises MAX nor becomes LATEST's latest timestamp. Event type
    `m` feeds peak (MAX, 1) and gauge (LATEST, 10); N is now.
        a  g=5 at N-10s                                  accepted
        b  g=100 at N+10min                              TIMESTAMP_OUT_OF_RANGE (more than 300 s ahead)
        c  g=nan at N-5s                                 INVALID_EVENT
        d  g=2 at N-1h                                   accepted, late: MAX stays 5, LATEST stays 5
        e  g=1e15 at N-8s                                INVALID_EVENT (not below 1e15)
        -> MAX 5, LATEST 5: 5 + 50 = 55
    Authorize g=1 estimates MAX 0 + LATEST 10 x (1 - 5) = -40; f g=1 at now is then the latest reading (b,
    refused, never counted), so LATEST 1: 5 + 10 = 15."""
    n = now_ms()
    with server.client() as client:
        customer(client, "bad", this_hour_ms() - 5 * HOUR_MS)

        def m(transaction_id: str, at_ms: int, g: float) -> usage_pb2.UsageEvent:
            return event(transaction_id, "bad", "m", at_ms, {"g": g})

        ack = ingest(
            client,
            m("a", n - 10_000, 5),
            m("b", n + 600_000, 100),
            m("c", n - 5_000, float("nan")),
            m("d", n - HOUR_MS, 2),
            m("e", n - 8_000, 1e15),
        )
        assert outcome(ack) == (
            2,
            0,
            [(1, "b", REJECT.TIMESTAMP_OUT_OF_RANGE), (2, "c", REJECT.INVALID_EVENT), (4, "e", REJECT.INVALID_EVENT)],
        )
        assert charges(client, "bad") == "55"
        assert estimate(client, "bad", "m", g=1) == "-40"
        assert outcome(ingest(client, m("f", now_ms(), 1))) == (1, 0, [])
        assert charges(client, "bad") == "15"


def test_each_pricing_dimension_line_keeps_its_own_unique_count_max_and_latest(server_factory: ServerFactory) -> None:
    """pricing.proto Product: invoice lines are product x pricing dimensions, and docs/architecture.md §5 step 6
    keeps the aggregate per (period, product, pricing dimension values), so each line counts, peaks and reads
    its gauge on its own; a filter key may be a pricing dimension too; line ids list dimensions in key order.
    Its own catalogue (version 1 from 2024-01-01):
        seats_r  u  UNIQUE_COUNT user, by region           2 a user
        eu_peak  m  MAX g, region=eu, by region and model   1
        lat      m  LATEST g, by model                      10
    Users x/eu, x/us, y/eu, x/eu: eu {x, y} 2 users (4), us {x} 1 (2)                           -> 6
    Readings (T = now - 10 s): eu/a g=5 at T, us/a g=7 at T+1, eu/b g=9 at T-1
        eu_peak eu/a 5, eu/b 9 (us not fed); lat a: 5 then 7 (later) -> 70, b 9 -> 90            -> 174
    Charges 180. Authorize eu/a g=1: eu_peak 0, lat a 10 x (1 - 7) = -60; eu/b g=8: 0 + 10 x (8 - 9) = -10."""
    server = server_factory()
    p = pricing_pb2
    with server.client() as client:
        products = [
            p.Product(
                id="seats_r",
                event_type="u",
                aggregation=p.UNIQUE_COUNT,
                value_key="user",
                pricing_dimensions=["region"],
            ),
            p.Product(
                id="eu_peak",
                event_type="m",
                aggregation=p.MAX,
                value_key="g",
                filters={"region": "eu"},
                pricing_dimensions=["region", "model"],
            ),
            p.Product(id="lat", event_type="m", aggregation=p.LATEST, value_key="g", pricing_dimensions=["model"]),
        ]
        for product in products:
            client.pricing.CreateProduct(p.CreateProductRequest(product=product))
        rates = [unit("seats_r", "2"), unit("eu_peak", "1"), unit("lat", "10")]
        client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", pricing_unit="credits"))
        client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
        client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        customer(client, "lines", this_hour_ms() - 5 * HOUR_MS)
        t = now_ms() - 10_000

        def u(transaction_id: str, user: str, region: str) -> usage_pb2.UsageEvent:
            return event(transaction_id, "lines", "u", t, dimensions={"user": user, "region": region})

        def m(transaction_id: str, at_ms: int, g: float, region: str, model: str) -> usage_pb2.UsageEvent:
            return event(transaction_id, "lines", "m", at_ms, {"g": g}, {"region": region, "model": model})

        assert outcome(ingest(client, u("1", "x", "eu"), u("2", "x", "us"), u("3", "y", "eu"), u("4", "x", "eu"))) == (
            4,
            0,
            [],
        )
        assert charges(client, "lines") == "6"
        ack = ingest(client, m("5", t, 5, "eu", "a"), m("6", t + 1, 7, "us", "a"), m("7", t - 1, 9, "eu", "b"))
        assert outcome(ack) == (3, 0, [])
        assert charges(client, "lines") == "180"
        assert estimate(client, "lines", "m", g=1, region="eu", model="a") == "-60"
        assert estimate(client, "lines", "m", g=8, region="eu", model="b") == "-10"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="lines"))
        assert lines(draft) == {
            "seats_r;region=eu": ("2", "4", 3),
            "seats_r;region=us": ("1", "2", 1),
            "eu_peak;model=a;region=eu": ("5", "5", 1),
            "eu_peak;model=b;region=eu": ("9", "9", 1),
            "lat;model=a": ("7", "70", 2),
            "lat;model=b": ("9", "90", 1),
        }


def test_one_transaction_id_in_one_batch_is_decided_against_its_first_accepted_event_per_customer(
    server: ServerProcess,
) -> None:
    """usage.proto UsageEvent.transaction_id and docs/architecture.md §5 step 4: dedupe is on (customer id,
    transaction id); a second event with the same id inside one batch is decided against the first accepted
    one; a rejected event was never accepted, so it holds no id. sum_n is 0.25 a unit.
        0  x/a n=nan       INVALID_EVENT
        1  x/a n=4         accepted (the nan one held nothing): 1
        2  x/a n=4         duplicate of 1
        3  x/a n=8         DUPLICATE_CONFLICT
        4  x/b n=8         accepted: another customer's x: b is charged 2
        5  y/a n=1 15 min ahead   TIMESTAMP_OUT_OF_RANGE
        6  y/a n=1         accepted: 0.25                         -> a 1.25, b 2
    Then on one stream, batches B0, B1, B2 each of z/a n=4 and a new w<i>/a n=4: z is accepted in B0 and a
    duplicate in B1 and B2; each w is new: 4 x 1 more                 -> a 5.25"""
    t = now_ms() - 10_000
    with server.client() as client:
        customer(client, "a", this_hour_ms() - 5 * HOUR_MS)
        customer(client, "b", this_hour_ms() - 5 * HOUR_MS)

        def s(transaction_id: str, customer_id: str, n: float, at_ms: int = t) -> usage_pb2.UsageEvent:
            return event(transaction_id, customer_id, "s", at_ms, {"n": n})

        ack = ingest(
            client,
            s("x", "a", float("nan")),
            s("x", "a", 4),
            s("x", "a", 4),
            s("x", "a", 8),
            s("x", "b", 8),
            s("y", "a", 1, now_ms() + 900_000),
            s("y", "a", 1),
        )
        assert outcome(ack) == (
            3,
            1,
            [
                (0, "x", REJECT.INVALID_EVENT),
                (3, "x", REJECT.DUPLICATE_CONFLICT),
                (5, "y", REJECT.TIMESTAMP_OUT_OF_RANGE),
            ],
        )
        assert (charges(client, "a"), charges(client, "b")) == ("1.25", "2")
        batches = [
            usage_pb2.UsageBatch(batch_id=f"B{i}", events=[s("z", "a", 4), s(f"w{i}", "a", 4)]) for i in range(3)
        ]
        acks = [(a.batch_id, outcome(a)) for a in client.usage.IngestUsage(iter(batches), timeout=10)]
        assert acks == [("B0", (2, 0, [])), ("B1", (1, 1, [])), ("B2", (1, 1, []))]
        assert charges(client, "a") == "5.25"


def test_a_past_periods_users_and_gauge_survive_a_snapshot_and_a_kill_9(server: ServerProcess) -> None:
    """The aggregates of a past, still open period are state like any other: after a stop (snapshot) and a
    kill -9 (journal replay) a late event finds its period's users and its gauge's latest timestamp as they
    were. Contract from the hour 40 days ago, S its start; period 1 is [S, E), still open; N is now.
        before the stop: users x at S+1d and x at N-10s (the current period); readings g=5 at S+1d, g=3 at S+2d
        after the stop:  users x at S+3d, x at N-10s-1ms, y at S+3d; readings g=9 at S+1d-1ms, g=1 at S+2d-1ms
            period 1: users {x, y} 2 (4 credits, 3 events); MAX 9 (4 events); LATEST the S+2d reading 3 (30)
            the current period: users {x} 1 -> period charges 2
        after kill -9: the same; then y at S+4d (no new user) and g=4 at S+2d (the latest's own timestamp,
        ingested last): LATEST 4 (40), MAX 9, 5 events each; users still 2 (4 events)."""
    start_ms = this_hour_ms() - 40 * DAY_MS
    t = now_ms() - 10_000
    first = invoices_pb2.PreviewInvoiceRequest(customer_id="past", period_start=stamp(start_ms))

    def u(transaction_id: str, at_ms: int, user: str) -> usage_pb2.UsageEvent:
        return event(transaction_id, "past", "u", at_ms, dimensions={"user": user})

    def m(transaction_id: str, at_ms: int, g: float) -> usage_pb2.UsageEvent:
        return event(transaction_id, "past", "m", at_ms, {"g": g})

    day = start_ms + DAY_MS
    with server.client() as client:
        customer(client, "past", start_ms)
        ack = ingest(client, u("1", day, "x"), u("2", t, "x"), m("3", day, 5), m("4", day + DAY_MS, 3))
        assert outcome(ack) == (4, 0, [])
    server.restart()
    with server.client() as client:
        ack = ingest(
            client,
            u("5", day + 2 * DAY_MS, "x"),
            u("6", t - 1, "x"),
            u("7", day + 2 * DAY_MS, "y"),
            m("8", day - 1, 9),
            m("9", day + DAY_MS - 1, 1),
        )
        assert outcome(ack) == (5, 0, [])
        expected = {"seats": ("2", "4", 3), "peak": ("9", "9", 4), "gauge": ("3", "30", 4)}
        assert (lines(client.invoices.PreviewInvoice(first)), charges(client, "past")) == (expected, "2")
    server.kill9()
    server.restart()
    with server.client() as client:
        assert (lines(client.invoices.PreviewInvoice(first)), charges(client, "past")) == (expected, "2")
        assert outcome(ingest(client, u("10", day + 3 * DAY_MS, "y"), m("11", day + DAY_MS, 4))) == (2, 0, [])
        expected = {"seats": ("2", "4", 4), "peak": ("9", "9", 5), "gauge": ("4", "40", 5)}
        assert (lines(client.invoices.PreviewInvoice(first)), charges(client, "past")) == (expected, "2")


def test_a_product_no_event_could_feed_or_match_is_refused_naming_the_field(server: ServerProcess) -> None:
    """An event's dimension keys and values and its values' keys are at most 256 bytes (usage.proto UsageEvent;
    longer is INVALID_EVENT), so a product whose filter key or value, value_key or pricing dimension is longer
    could never be met: a filter value of 257 bytes used to make a product every event of its type silently
    missed (accepted, charging nothing), a value_key of 257 bytes one that refused every event of its type. As an
    override's match value is (README Contracts), such a product is INVALID_ARGUMENT naming the field, and is
    not created; 256 bytes (128 two-byte characters) is the bound and is accepted."""
    p = pricing_pb2
    long_text, bound = "é" * 128 + "x", "é" * 128
    cases = [
        (p.Product(id="w1", event_type="w", aggregation=p.SUM, value_key=long_text), "product.value_key:"),
        (p.Product(id="w2", event_type="w", aggregation=p.UNIQUE_COUNT, value_key=long_text), "product.value_key:"),
        (
            p.Product(id="w3", event_type="w", aggregation=p.COUNT, filters={"region": long_text}),
            "product.filters.region:",
        ),
        (p.Product(id="w4", event_type="w", aggregation=p.COUNT, filters={long_text: "eu"}), "product.filters.éééé"),
        (
            p.Product(id="w5", event_type="w", aggregation=p.COUNT, pricing_dimensions=["model", long_text]),
            "product.pricing_dimensions[1]:",
        ),
    ]
    with server.client() as client:
        for product, field in cases:
            request = p.CreateProductRequest(product=product)
            code, message = refusal(lambda r=request: client.pricing.CreateProduct(r))
            assert (code, message.startswith(field)) == (grpc.StatusCode.INVALID_ARGUMENT, True), message
            assert "at most 256 bytes" in message, message
        assert [q.id for q in client.pricing.ListProducts(p.ListProductsRequest()).products if q.id[0] == "w"] == []
        fits = p.Product(
            id="w6",
            event_type="w",
            aggregation=p.SUM,
            value_key=bound,
            filters={bound: bound},
            pricing_dimensions=[bound],
        )
        assert client.pricing.CreateProduct(p.CreateProductRequest(product=fits)).value_key == bound


def test_a_rate_no_event_could_match_is_refused_naming_the_field(server: ServerProcess) -> None:
    """As for a product's keys (above): a rate whose match key or value is longer than an event's dimension keys and
    values may be (256 bytes) could never match an event, and ValidateVersion found nothing wrong with it: a draft
    holding one is INVALID_ARGUMENT naming the entry and key, and is not made; 256 bytes is accepted."""
    p = pricing_pb2
    long_text, bound = "é" * 128 + "x", "é" * 128
    with server.client() as client:
        product = p.Product(id="m1", event_type="m", aggregation=p.SUM, value_key="n", pricing_dimensions=["model"])
        client.pricing.CreateProduct(p.CreateProductRequest(product=product))
        client.pricing.CreateRateCard(p.CreateRateCardRequest(id="mcard", pricing_unit="credits"))
        for match, field in [
            ({"model": long_text}, "upsert_rates[1].match.model:"),
            ({long_text: "a"}, "upsert_rates[1].match.éééé"),
        ]:
            rates = [
                p.Rate(product_id="m1", match={"model": "a"}, unit=p.UnitPrice(price="1")),
                p.Rate(product_id="m1", match=match, unit=p.UnitPrice(price="1")),
            ]
            request = p.CreateDraftVersionRequest(rate_card_id="mcard", upsert_rates=rates)
            code, message = refusal(lambda r=request: client.pricing.CreateDraftVersion(r))
            assert (code, message.startswith(field)) == (grpc.StatusCode.INVALID_ARGUMENT, True), message
            assert "at most 256 bytes" in message, message
        assert client.pricing.GetRateCard(p.GetRateCardRequest(id="mcard")).latest_version == 0
        fits = [p.Rate(product_id="m1", match={"model": bound}, unit=p.UnitPrice(price="1"))]
        draft = client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="mcard", upsert_rates=fits))
        assert [dict(r.match) for r in draft.rates] == [{"model": bound}]


def test_a_gauge_crossing_into_a_cheaper_volume_tier_is_estimated_and_charged_alike(
    server_factory: ServerFactory,
) -> None:
    """docs/architecture.md §5 step 6: charge = price(aggregate after) - price(aggregate before); a VOLUME tier
    prices the whole quantity at the tier it falls in, so a higher gauge can cost less (a negative charge), and
    Authorize estimates exactly that. Its own catalogue: `vpeak` (MAX of g) and `vlast` (LATEST of g), both on
    event type `v`, each VOLUME: up to 10 at 2 a unit, above at 1.
        g=8:  MAX 8 -> 16, LATEST 8 -> 16                                      charges 32
        g=12: MAX 12 -> 12 (-4), LATEST 12 -> 12 (-4): estimate -8            charges 24
        g=9:  MAX stays 12 (0), LATEST 9 -> 18 (+6): estimate 6               charges 30
        g=10: MAX stays 12, LATEST 10 -> 20 (the bound is in the first tier, +2): estimate 2, charges 32"""
    server = server_factory()
    p = pricing_pb2
    tiers = [p.Tier(up_to="10", unit_price="2"), p.Tier(unit_price="1")]
    with server.client() as client:
        for product_id, aggregation in (("vpeak", p.MAX), ("vlast", p.LATEST)):
            product = p.Product(id=product_id, event_type="v", aggregation=aggregation, value_key="g")
            client.pricing.CreateProduct(p.CreateProductRequest(product=product))
        rates = [
            p.Rate(product_id=product_id, tiered=p.TieredPrice(mode=p.VOLUME, tiers=tiers))
            for product_id in ("vpeak", "vlast")
        ]
        client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", pricing_unit="credits"))
        client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
        client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        customer(client, "vol", this_hour_ms() - 5 * HOUR_MS)
        assert outcome(ingest(client, event("v0", "vol", "v", now_ms() - 60_000, {"g": 8}))) == (1, 0, [])
        assert charges(client, "vol") == "32"
        for i, (g, expected) in enumerate(((12, ("-8", "24")), (9, ("6", "30")), (10, ("2", "32"))), start=1):
            guess = estimate(client, "vol", "v", g=g)
            assert outcome(ingest(client, event(f"v{i}", "vol", "v", now_ms(), {"g": g}))) == (1, 0, [])
            assert (guess, charges(client, "vol")) == expected, g


def test_a_filter_is_equality_on_the_events_dimension_one_left_out_read_as_empty(server_factory: ServerFactory) -> None:
    """pricing.proto Product.filters: dimension equality conditions (docs/architecture.md §3: `"*"` is the text
    `*`, not a rate match's wildcard; a filter on an empty value is met by the dimension sent empty or left out, as
    a rate for "" is). Its own catalogue: `star` (COUNT, region="*", 1 a unit) and `blank` (COUNT, tier="", 10),
    both on event type e. Each event's charge (tier left out but in the fourth and fifth):
        region=eu: blank 10; region=*: star 1 + blank 10; no dimensions: blank 10; tier="": blank 10; tier=gold: 0
    cumulatively 10, 21, 31, 41, 41."""
    server = server_factory()
    p = pricing_pb2
    with server.client() as client:
        for product in (
            p.Product(id="star", event_type="e", aggregation=p.COUNT, filters={"region": "*"}),
            p.Product(id="blank", event_type="e", aggregation=p.COUNT, filters={"tier": ""}),
        ):
            client.pricing.CreateProduct(p.CreateProductRequest(product=product))
        client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", pricing_unit="credits"))
        rates = [unit("star", "1"), unit("blank", "10")]
        client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
        client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        customer(client, "f", this_hour_ms() - 5 * HOUR_MS)
        t = now_ms() - 1_000
        seen = []
        for i, dimensions in enumerate(({"region": "eu"}, {"region": "*"}, {}, {"tier": ""}, {"tier": "gold"})):
            assert outcome(ingest(client, event(f"e{i}", "f", "e", t, {}, dimensions))) == (1, 0, [])
            seen.append(charges(client, "f"))
        assert seen == ["10", "21", "31", "41", "41"]
