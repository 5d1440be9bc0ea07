"""An independent acceptance audit of aggregation and dimension matching over the wire (pricing.proto Aggregation,
Product, Rate, Tier, TieredPrice, PackagePrice, UnitPrice; usage.proto UsageEvent; balance.proto Authorize;
invoices.proto InvoiceLine and AppliedPrice; README "What the server does today" (Usage, Balances, Pricing);
docs/architecture.md §3 Products and Rate cards, §5 steps 3-7), past the earlier audits (tests/test_audit_usage*_wire.py
price MAX, LATEST and UNIQUE_COUNT at UNIT prices; tests/test_audit_pricing*_wire.py and test_audit_prices*_wire.py
price tiers over SUM): here period aggregates other than SUM are priced through GRADUATED, VOLUME and PACKAGE curves
with late events, duplicates, readings ahead of now and events in two periods, in Authorize estimates, GetBalance,
PreviewInvoice (lines and their AppliedPrice) and a closed invoice; the most specific of eight rates over three
pricing dimensions with "*" written and left out; an event feeding three products one of which has no rate or misses
its value; filters deciding which products need which values; per_units near 10^18 and at 10^-18; a MAX reading just
below 10^15; a gauge falling under a newer version, whose line's AppliedPrice for that version is negative (the
first defect found: PreviewInvoice, ClosePeriod, GetInvoice and ListInvoices failed with INTERNAL on it); a publish
over MAX and LATEST usage only in a closed period (the second: its reply counted an event feeding two products
twice among the events left alone, where events_rerated counts it once). Every amount
asserted is computed by hand below, never read back from the server. Authorize answers OK for an estimate of 0 or
less (nothing beyond the credit), OVERAGE_ALLOWED for a positive one (these customers have no credit).

Catalogue (rate card `card`, credits, version 1 in force from 2024-01-01):

    product   event  aggregation         price
    peak_g    pm     MAX g               GRADUATED: up to 10 at 1; up to 20 at 0.5, flat 3; then 0.1
                                         curve(q) = q (q <= 10); 13 + 0.5 (q - 10) (q <= 20); 18 + 0.1 (q - 20)
    gauge_v   gv     LATEST g            VOLUME: up to 10 at 2; up to 100 at 1, flat 5; then 0.5
                                         curve(q) = 2q (q <= 10); q + 5 (q <= 100); 0.5 q
    users_p   up     UNIQUE_COUNT user   PACKAGE of 3 at 10: curve(u) = 10 x ceil(u / 3)
    calls_g   cg     COUNT               GRADUATED: up to 2 at 1; then 0, flat 5: curve 1, 2, 7, 7, ...
    spec      sp     SUM n, pricing dimensions model, region, tier; a unit costs:
                         {} 1, {model=a, region="*"} 2, {region=eu} 3, {model=a, region=eu} 4,
                         {model=a, region=eu, tier=gold} 5, {tier=gold} 6, {model=a, tier=gold} 7,
                         {region=eu, tier=gold} 8
    mx_sum    mx     SUM n               1
    mx_a      mx     SUM n, by model     2 for model=a only
    mx_u      mx     UNIQUE_COUNT user   1
    ft_eu     ft     SUM n, region=eu    1
    ft_cnt    ft     COUNT, region=eu and plan=pro   1
    ft_users  ft     UNIQUE_COUNT user, region=us    1
    big_per   bp     SUM n               3 per 999999999999999999 units
    tiny_per  tp     SUM n               0.000000000000000001 per 0.000000000000000001 units (1 a unit)
    peak_per  pp     MAX g               GRADUATED per 1000 units: up to 1000 at 1; then 0.5, flat 2
                                         curve(q) = q / 1000 (q <= 1000); 1 + 2 + 0.5 (q - 1000) / 1000
    ov        ov     MAX g, by model and region    GRADUATED: up to 10 at 1; then 0.5, flat 3 (curve(20) = 18)
    blank     bl     SUM n, by region    1; 2 for {region=""}
    fblank    bl     COUNT, region=""    1

Each test makes its own customers; a contract starting on the hour 5 hours ago has every event of the last 5 hours
in its current period (GetBalance's period_charges)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import charges, preview, serving, this_hour_ms, unit
from tests.serverproc import ServerFactory, ServerProcess

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
REJECT = usage_pb2.RejectReason
p = pricing_pb2


def tiered(product_id: str, mode: int, tiers: list[tuple[str, str, str]], per_units: str = "") -> p.Rate:
    return p.Rate(
        product_id=product_id,
        tiered=p.TieredPrice(
            mode=mode,  # type: ignore[arg-type]
            tiers=[p.Tier(up_to=u, unit_price=price, flat_price=flat) for u, price, flat in tiers],
            per_units=per_units,
        ),
    )


def per(product_id: str, price: str, per_units: str) -> p.Rate:
    return p.Rate(product_id=product_id, unit=p.UnitPrice(price=price, per_units=per_units))


def catalogue(client: TariffClient) -> None:
    products = [
        p.Product(id="peak_g", event_type="pm", aggregation=p.MAX, value_key="g"),
        p.Product(id="gauge_v", event_type="gv", aggregation=p.LATEST, value_key="g"),
        p.Product(id="users_p", event_type="up", aggregation=p.UNIQUE_COUNT, value_key="user"),
        p.Product(id="calls_g", event_type="cg", aggregation=p.COUNT),
        p.Product(
            id="spec", event_type="sp", aggregation=p.SUM, value_key="n", pricing_dimensions=["model", "region", "tier"]
        ),
        p.Product(id="mx_sum", event_type="mx", aggregation=p.SUM, value_key="n"),
        p.Product(id="mx_a", event_type="mx", aggregation=p.SUM, value_key="n", pricing_dimensions=["model"]),
        p.Product(id="mx_u", event_type="mx", aggregation=p.UNIQUE_COUNT, value_key="user"),
        p.Product(id="ft_eu", event_type="ft", aggregation=p.SUM, value_key="n", filters={"region": "eu"}),
        p.Product(id="ft_cnt", event_type="ft", aggregation=p.COUNT, filters={"region": "eu", "plan": "pro"}),
        p.Product(
            id="ft_users", event_type="ft", aggregation=p.UNIQUE_COUNT, value_key="user", filters={"region": "us"}
        ),
        p.Product(id="big_per", event_type="bp", aggregation=p.SUM, value_key="n"),
        p.Product(id="tiny_per", event_type="tp", aggregation=p.SUM, value_key="n"),
        p.Product(id="peak_per", event_type="pp", aggregation=p.MAX, value_key="g"),
        p.Product(id="ov", event_type="ov", aggregation=p.MAX, value_key="g", pricing_dimensions=["model", "region"]),
        p.Product(id="blank", event_type="bl", aggregation=p.SUM, value_key="n", pricing_dimensions=["region"]),
        p.Product(id="fblank", event_type="bl", aggregation=p.COUNT, filters={"region": ""}),
    ]
    for product in products:
        client.pricing.CreateProduct(p.CreateProductRequest(product=product))
    rates = [
        tiered("peak_g", p.GRADUATED, [("10", "1", ""), ("20", "0.5", "3"), ("", "0.1", "")]),
        tiered("gauge_v", p.VOLUME, [("10", "2", ""), ("100", "1", "5"), ("", "0.5", "")]),
        p.Rate(product_id="users_p", package=p.PackagePrice(package_size="3", package_price="10")),
        tiered("calls_g", p.GRADUATED, [("2", "1", ""), ("", "0", "5")]),
        unit("spec", "1"),
        unit("spec", "2", model="a", region="*"),
        unit("spec", "3", region="eu"),
        unit("spec", "4", model="a", region="eu"),
        unit("spec", "5", model="a", region="eu", tier="gold"),
        unit("spec", "6", tier="gold"),
        unit("spec", "7", model="a", tier="gold"),
        unit("spec", "8", region="eu", tier="gold"),
        unit("mx_sum", "1"),
        unit("mx_a", "2", model="a"),
        unit("mx_u", "1"),
        unit("ft_eu", "1"),
        unit("ft_cnt", "1"),
        unit("ft_users", "1"),
        per("big_per", "3", "999999999999999999"),
        per("tiny_per", "0.000000000000000001", "0.000000000000000001"),
        tiered("peak_per", p.GRADUATED, [("1000", "1", ""), ("", "0.5", "2")], per_units="1000"),
        tiered("ov", p.GRADUATED, [("10", "1", ""), ("", "0.5", "3")]),
        unit("blank", "1"),
        unit("blank", "2", region=""),
        unit("fblank", "1"),
    ]
    client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-aggregates")
    yield from serving(ServerProcess(root / "data"), catalogue)


def customer(client: TariffClient, customer_id: str, start_ms: int | None = None) -> None:
    start = this_hour_ms() - 5 * HOUR_MS if start_ms is None else start_ms
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id="card", starting_at=stamp(start)
        )
    )


def ev(
    transaction_id: str,
    customer_id: str,
    event_type: str,
    at_ms: int,
    values: dict[str, float] | None = None,
    **dimensions: str,
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        values=values or {},
        dimensions=dimensions,
    )


def ingest(client: TariffClient, *events: usage_pb2.UsageEvent) -> tuple[int, int, list[tuple[int, int]]]:
    """(accepted, duplicates, [(index, reason)])."""
    ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b", events=events))
    return ack.accepted, ack.duplicates, [(r.index, r.reason) for r in ack.rejected]


def authorize(
    client: TariffClient, customer_id: str, event_type: str, values: dict[str, float] | None = None, **dimensions: str
) -> tuple[str, str]:
    """(reason, estimated_cost)."""
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id, event_type=event_type, values=values or {}, dimensions=dimensions
    )
    answer = client.balance.Authorize(request)
    return answer.reason, answer.estimated_cost


def lines(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, int]]:
    """line_id -> (quantity, amount, events)."""
    return {line.line_id: (line.quantity, line.amount, line.events) for line in invoice.lines}


def applied(invoice: invoices_pb2.Invoice, line_id: str) -> list[tuple[int, str, str, str, int]]:
    """The line's AppliedPrices: (version, unit_price, quantity, amount, events)."""
    (line,) = [line for line in invoice.lines if line.line_id == line_id]
    return [(a.version, a.unit_price, a.quantity, a.amount, a.events) for a in line.prices]


def test_max_through_graduated_tiers_with_late_and_duplicate_readings_in_two_periods_and_closed(
    server: ServerProcess,
) -> None:
    """MAX is the largest reading of each period (a late reading raises it, a duplicate changes nothing), priced
    through peak_g's GRADUATED curve; Authorize estimates curve(max(MAX, g)) - curve(MAX). Contract from the hour
    40 days ago; E is its first period's end.
    Period 1 (batch 1): E-10h g=5 -> curve 5 = 5; E-9h g=15 -> curve 15 = 13 + 2.5 = 15.5 (+10.5);
        E-8h g=12 -> 0                                                                  period 1: 15.5, 3 events
    Batch 2: E-9h g=15 again (a duplicate), E-20h g=25 (late: curve 25 = 18 + 0.5 = 18.5, +3)   18.5, 4 events
    Period 2: E+1h g=8 -> 8 (period_charges 8). Authorize g=30: curve 30 = 19, 19 - 8 = 11; g=3: 0.
    The line: quantity 25, amount 18.5, 4 events; one AppliedPrice, version 1, unit price 18.5 / 25 = 0.74.
    ClosePeriod invoices the same; a reading for period 1 is then PERIOD_CLOSED and period 2 still 8."""
    start_ms = this_hour_ms() - 40 * DAY_MS
    with server.client() as client:
        customer(client, "maxg", start_ms)
        end = preview(client, "maxg", start_ms).period_end.ToMilliseconds()

        def m(transaction_id: str, at_ms: int, g: float) -> usage_pb2.UsageEvent:
            return ev(transaction_id, "maxg", "pm", at_ms, {"g": g})

        first = (m("a", end - 10 * HOUR_MS, 5), m("b", end - 9 * HOUR_MS, 15), m("c", end - 8 * HOUR_MS, 12))
        assert ingest(client, *first) == (3, 0, [])
        assert preview(client, "maxg", start_ms).subtotal == "15.5"
        assert ingest(client, m("b", end - 9 * HOUR_MS, 15), m("d", end - 20 * HOUR_MS, 25)) == (1, 1, [])
        draft = preview(client, "maxg", start_ms)
        assert (draft.subtotal, lines(draft)) == ("18.5", {"peak_g": ("25", "18.5", 4)})
        assert applied(draft, "peak_g") == [(1, "0.74", "25", "18.5", 4)]
        assert ingest(client, m("e", end + HOUR_MS, 8)) == (1, 0, [])
        assert charges(client, "maxg") == "8"
        assert authorize(client, "maxg", "pm", {"g": 30}) == ("OVERAGE_ALLOWED", "11")
        assert authorize(client, "maxg", "pm", {"g": 3}) == ("OK", "0")
        request = invoices_pb2.ClosePeriodRequest(customer_id="maxg", period_start=stamp(start_ms))
        invoice = client.invoices.ClosePeriod(request)
        assert (invoice.subtotal, lines(invoice)) == ("18.5", {"peak_g": ("25", "18.5", 4)})
        assert ingest(client, m("f", end - HOUR_MS, 40)) == (0, 0, [(0, REJECT.PERIOD_CLOSED)])
        assert charges(client, "maxg") == "8"
        current = preview(client, "maxg", end)
        assert lines(current) == {"peak_g": ("8", "8", 1)}


def test_latest_through_volume_tiers_with_late_same_time_duplicate_and_ahead_readings(server: ServerProcess) -> None:
    """LATEST is the reading of the latest event by timestamp (a late one does not move it; of one timestamp the one
    ingested last; a duplicate resend is not a new reading), priced through gauge_v's VOLUME curve, the charge
    curve(after) - curve(before) going negative when the gauge falls to a cheaper total. T = now - 10 s.
        T-3h g=8     -> curve 16                       16
        T-2h g=50    -> curve 55 (+39)                 55
        T-4h g=200   -> late: LATEST stays 50          55
        T-1h g=5     -> curve 10 (-45)                 10
        T-1h g=150   -> same time, ingested last: curve 75 (+65)    75
        T-1h g=5 resent (duplicate): LATEST stays 150  75
    Authorize (stamped now, later than T-1h): g=100 -> 105 - 75 = 30; g=9 -> 18 - 75 = -57.
        now+60 s g=20 -> curve 25 (-50)                25 (ahead of now, within the 5 minutes allowed)
    Authorize g=1000 is now stamped before the latest reading: LATEST does not move, estimate 0.
    Line: quantity 20, amount 25, 6 events."""
    t = now_ms() - 10_000
    with server.client() as client:
        customer(client, "latv")

        def g(transaction_id: str, at_ms: int, value: float) -> usage_pb2.UsageEvent:
            return ev(transaction_id, "latv", "gv", at_ms, {"g": value})

        steps: list[tuple[usage_pb2.UsageEvent, tuple[int, int, list[tuple[int, int]]], str]] = [
            (g("a", t - 3 * HOUR_MS, 8), (1, 0, []), "16"),
            (g("b", t - 2 * HOUR_MS, 50), (1, 0, []), "55"),
            (g("c", t - 4 * HOUR_MS, 200), (1, 0, []), "55"),
            (g("d", t - HOUR_MS, 5), (1, 0, []), "10"),
            (g("e", t - HOUR_MS, 150), (1, 0, []), "75"),
            (g("d", t - HOUR_MS, 5), (0, 1, []), "75"),
        ]
        for event, outcome, total in steps:
            assert (ingest(client, event), charges(client, "latv")) == (outcome, total), event.transaction_id
        assert authorize(client, "latv", "gv", {"g": 100}) == ("OVERAGE_ALLOWED", "30")
        assert authorize(client, "latv", "gv", {"g": 9}) == ("OK", "-57")
        assert ingest(client, g("f", now_ms() + 60_000, 20)) == (1, 0, [])
        assert charges(client, "latv") == "25"
        assert authorize(client, "latv", "gv", {"g": 1000}) == ("OK", "0")
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="latv"))
        assert lines(draft) == {"gauge_v": ("20", "25", 6)}


def test_unique_count_in_packages_across_two_periods_and_count_through_graduated_tiers(server: ServerProcess) -> None:
    """UNIQUE_COUNT counts each period's distinct users, priced 10 a started package of 3; COUNT counts events
    (duplicates not), priced through calls_g's GRADUATED tiers with a flat fee on entering the second.
    Contract from the hour 40 days ago; E is its first period's end. One batch:
        period 1: x at E-2h, y at E-1h, x at E-1ms   -> 2 users: 1 package, 10, 3 events
        period 2: x at E, y, z, w now-1h             -> 4 users: 2 packages, 20, 4 events
    Authorize (period 2): user x -> 0; v -> 5 users, still 2 packages: 0. Ingest v, u (6 users: 0); then t -> 7
    users, a third package: 10; ingesting t charges it: 30.
    calls_g, in period 2: 5 events, one of them a resend of the fourth (a duplicate): 1 + 1 + 5 + 0 = 7; charges
    30 + 7 = 37; Authorize another call: 0."""
    start_ms = this_hour_ms() - 40 * DAY_MS
    now = now_ms()
    with server.client() as client:
        customer(client, "uniq", start_ms)
        end = preview(client, "uniq", start_ms).period_end.ToMilliseconds()

        def u(transaction_id: str, at_ms: int, user: str) -> usage_pb2.UsageEvent:
            return ev(transaction_id, "uniq", "up", at_ms, user=user)

        batch = [
            u("1", end - 2 * HOUR_MS, "x"),
            u("2", end - HOUR_MS, "y"),
            u("3", end - 1, "x"),
            u("4", end, "x"),
            u("5", now - HOUR_MS, "y"),
            u("6", now - HOUR_MS, "z"),
            u("7", now - HOUR_MS, "w"),
        ]
        assert ingest(client, *batch) == (7, 0, [])
        assert lines(preview(client, "uniq", start_ms)) == {"users_p": ("2", "10", 3)}
        assert charges(client, "uniq") == "20"
        assert authorize(client, "uniq", "up", user="x") == ("OK", "0")
        assert authorize(client, "uniq", "up", user="v") == ("OK", "0")
        assert ingest(client, u("8", now, "v"), u("9", now, "u")) == (2, 0, [])
        assert charges(client, "uniq") == "20"
        assert authorize(client, "uniq", "up", user="t") == ("OVERAGE_ALLOWED", "10")
        assert ingest(client, u("10", now, "t")) == (1, 0, [])
        assert charges(client, "uniq") == "30"
        calls = [ev(f"c{i}", "uniq", "cg", now - i) for i in range(4)]
        assert ingest(client, *calls, calls[3]) == (4, 1, [])
        assert charges(client, "uniq") == "37"
        assert authorize(client, "uniq", "cg") == ("OK", "0")
        current = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="uniq"))
        assert lines(current) == {"users_p": ("7", "30", 7), "calls_g": ("4", "7", 4)}


SPEC_CASES = [
    # (model, region, tier) sent (None: left out) -> the rate that wins, a unit's price
    (("a", "us", "silver"), "2"),  # {model=a}
    (("a", "eu", "silver"), "4"),  # {model=a, region=eu}
    (("a", "eu", "gold"), "5"),  # all three
    (("b", "eu", "gold"), "8"),  # {region=eu, tier=gold}
    (("a", "us", "gold"), "7"),  # {model=a, tier=gold}
    (("b", "us", "gold"), "6"),  # {tier=gold}
    (("b", "eu", "silver"), "3"),  # {region=eu}
    (("b", "us", "silver"), "1"),  # {}
    (("a", None, None), "2"),  # {model=a}: region and tier left out
    (("*", "*", "*"), "1"),  # "*" sent by an event is the text *, matching only the catch-all
    (("a ", "eu", "gold"), "8"),  # "a " is not "a"
]


def test_the_most_specific_of_eight_rates_over_three_dimensions_prices_each_event(server: ServerProcess) -> None:
    """pricing.proto Rate.match: a key left out (or "*") matches anything, the most specific match (most non-"*"
    entries) wins; the card's eight `spec` rates are unambiguous (every two equally specific ones that one event
    could meet have a rate for their combination). Each event below (n=10) is estimated and then charged 10 x the
    winning rate's price (SPEC_CASES): 20 + 40 + 50 + 80 + 70 + 60 + 30 + 10 + 20 + 10 + 80 = 470, one line per
    combination of values (a left-out dimension is "", its line id "region=" and "tier=")."""
    at = now_ms() - 1_000
    with server.client() as client:
        customer(client, "spec")
        events = []
        for index, ((model, region, tier), price) in enumerate(SPEC_CASES):
            sent = {k: v for k, v in (("model", model), ("region", region), ("tier", tier)) if v is not None}
            expected = str(10 * int(price))
            assert authorize(client, "spec", "sp", {"n": 10}, **sent) == ("OVERAGE_ALLOWED", expected), sent
            events.append(ev(f"s{index}", "spec", "sp", at, {"n": 10}, **sent))
        assert ingest(client, *events) == (len(SPEC_CASES), 0, [])
        assert charges(client, "spec") == "470"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="spec"))
        assert lines(draft) == {
            "spec;model=a;region=us;tier=silver": ("10", "20", 1),
            "spec;model=a;region=eu;tier=silver": ("10", "40", 1),
            "spec;model=a;region=eu;tier=gold": ("10", "50", 1),
            "spec;model=b;region=eu;tier=gold": ("10", "80", 1),
            "spec;model=a;region=us;tier=gold": ("10", "70", 1),
            "spec;model=b;region=us;tier=gold": ("10", "60", 1),
            "spec;model=b;region=eu;tier=silver": ("10", "30", 1),
            "spec;model=b;region=us;tier=silver": ("10", "10", 1),
            "spec;model=a;region=;tier=": ("10", "20", 1),
            "spec;model=*;region=*;tier=*": ("10", "10", 1),
            "spec;model=a ;region=eu;tier=gold": ("10", "80", 1),
        }


def test_an_event_one_of_whose_products_rejects_it_charges_none_of_them(server: ServerProcess) -> None:
    """README Usage and docs/architecture.md §5: an event is planned completely before anything is recorded, so a
    rejected event changes nothing; NO_APPLICABLE_RATE when no rate matches, INVALID_EVENT when a value the
    product needs, or the dimension a UNIQUE_COUNT product counts, is missing ("then no product of the event is
    charged"). Event type mx feeds mx_sum (1), mx_a (2, model=a only) and mx_u (users, 1).
        0: model=b n=3 user=x   -> NO_APPLICABLE_RATE (mx_a has no rate for b): x not counted, no n summed
        1: model=a n=3          -> INVALID_EVENT (no user)
        2: model=a user=y       -> INVALID_EVENT (no n)
        3: model=a n=3 user=x   -> 3 + 6 + 1 = 10
        4: model=a n=1 user=x   -> 1 + 2 + 0 = 3                                                 13
    Authorize model=b: NO_APPLICABLE_RATE, not allowed; in one AuthorizeBatches message, model=b NO_APPLICABLE_RATE,
    model=a without user INVALID_REQUEST (in-band), model=a n=3 user=x allowed at 3 + 6 + 1 = 10. Lines: mx_sum 4 (4), mx_a;model=a 4 (8), mx_u 1 (1),
    each with 2 events."""
    at = now_ms() - 1_000
    with server.client() as client:
        customer(client, "multi")
        reply = client.balance.Authorize(
            balance_pb2.AuthorizeRequest(
                customer_id="multi", event_type="mx", values={"n": 3}, dimensions={"model": "b", "user": "x"}
            )
        )
        assert (reply.allowed, reply.reason) == (False, "NO_APPLICABLE_RATE")
        requests = [
            balance_pb2.AuthorizeRequest(
                request_id=str(index), customer_id="multi", event_type="mx", values=values, dimensions=dimensions
            )
            for index, (values, dimensions) in enumerate(
                [
                    ({"n": 3}, {"model": "b", "user": "x"}),
                    ({"n": 3}, {"model": "a"}),
                    ({"n": 3}, {"model": "a", "user": "x"}),
                ]
            )
        ]
        results = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)])))
        assert [(a.request_id, a.allowed, a.reason) for a in results[0].responses] == [
            ("0", False, "NO_APPLICABLE_RATE"),
            ("1", False, "INVALID_REQUEST"),
            ("2", True, "OVERAGE_ALLOWED"),
        ]
        assert results[0].responses[2].estimated_cost == "10"
        batch = [
            ev("0", "multi", "mx", at, {"n": 3}, model="b", user="x"),
            ev("1", "multi", "mx", at, {"n": 3}, model="a"),
            ev("2", "multi", "mx", at, model="a", user="y"),
            ev("3", "multi", "mx", at, {"n": 3}, model="a", user="x"),
            ev("4", "multi", "mx", at, {"n": 1}, model="a", user="x"),
        ]
        assert ingest(client, *batch) == (
            2,
            0,
            [(0, REJECT.NO_APPLICABLE_RATE), (1, REJECT.INVALID_EVENT), (2, REJECT.INVALID_EVENT)],
        )
        assert charges(client, "multi") == "13"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="multi"))
        assert lines(draft) == {"mx_sum": ("4", "4", 2), "mx_a;model=a": ("4", "8", 2), "mx_u": ("1", "1", 2)}


def test_filters_decide_which_products_an_event_feeds_and_so_which_values_it_needs(server: ServerProcess) -> None:
    """docs/architecture.md §3: an event feeds every product of its event type whose filters it meets (equality,
    case and all), and only the products it feeds need their value (§5 step 6). Event type ft:
        0: region=eu plan=pro n=2        -> ft_eu 2, ft_cnt 1 (ft_users not fed: needs no user)     3
        1: region=eu n=5                 -> ft_eu 5 (no plan: ft_cnt not fed)                       5
        2: region=us user=x              -> ft_users 1 (ft_eu not fed: needs no n)                  1
        3: region=us                     -> INVALID_EVENT (ft_users counts user)
        4: region=eu plan=pro user=x     -> INVALID_EVENT (ft_eu needs n): ft_cnt not charged either
        5: region=EU plan=pro n=7        -> feeds nothing: accepted, 0
        6: plan=pro n=1                  -> feeds nothing: accepted, 0
    Charges 9; lines ft_eu 7 (2 events), ft_cnt 1, ft_users 1."""
    at = now_ms() - 1_000
    with server.client() as client:
        customer(client, "filt")
        batch = [
            ev("0", "filt", "ft", at, {"n": 2}, region="eu", plan="pro"),
            ev("1", "filt", "ft", at, {"n": 5}, region="eu"),
            ev("2", "filt", "ft", at, region="us", user="x"),
            ev("3", "filt", "ft", at, region="us"),
            ev("4", "filt", "ft", at, region="eu", plan="pro", user="x"),
            ev("5", "filt", "ft", at, {"n": 7}, region="EU", plan="pro"),
            ev("6", "filt", "ft", at, {"n": 1}, plan="pro"),
        ]
        assert ingest(client, *batch) == (5, 0, [(3, REJECT.INVALID_EVENT), (4, REJECT.INVALID_EVENT)])
        assert charges(client, "filt") == "9"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="filt"))
        assert lines(draft) == {"ft_eu": ("7", "7", 2), "ft_cnt": ("1", "1", 1), "ft_users": ("1", "1", 1)}


def test_per_units_near_10_to_18_and_at_10_to_minus_18_and_a_max_at_the_value_limit(server: ServerProcess) -> None:
    """UnitPrice.per_units and TieredPrice.per_units: price per that many units, each side of a charge rounded
    half-even to 10^-12 once (docs/architecture.md §5 step 6).
    big_per, 3 per 999999999999999999: n=999999999999999 -> 2999999999999997 / 999999999999999999
        = 0.002999999999999997003..., to picos 0.003; another n=1 -> 3 x 10^15 / (10^18 - 1)
        = 0.003000000000000000003... -> 0.003: charge 0.                                        0.003
    tiny_per, 10^-18 per 10^-18 (1 a unit): n=123456.789 -> 123456.789; n=5e-13 -> 123456.7890000000005, half a
        pico, to the even 123456.789: charge 0; n=5e-13 again -> 123456.789000000001: charge 0.000000000001.
    peak_per (MAX, per 1000, GRADUATED up to 1000 at 1, then 0.5 with flat 2): g=800 -> 0.8; g=1500 ->
        1 + 2 + 0.25 = 3.25 (+2.45); Authorize g=3000 -> 1 + 2 + 1 = 4: 0.75.
    peak_g (MAX) at g=999999999999999.9, the largest double below 10^15 (its shortest text):
        18 + 0.1 x 999999999999979.9 = 100000000000015.99; Authorize the same reading: 0.
    Total 0.003 + 123456.789000000001 + 3.25 + 100000000000015.99 = 100000000123476.032000000001."""
    at = now_ms() - 1_000
    with server.client() as client:
        customer(client, "perunits")
        assert ingest(client, ev("b1", "perunits", "bp", at, {"n": 999999999999999})) == (1, 0, [])
        assert charges(client, "perunits") == "0.003"
        assert ingest(client, ev("b2", "perunits", "bp", at, {"n": 1})) == (1, 0, [])
        assert charges(client, "perunits") == "0.003"
        assert ingest(client, ev("t1", "perunits", "tp", at, {"n": 123456.789})) == (1, 0, [])
        assert charges(client, "perunits") == "123456.792"
        assert ingest(client, ev("t2", "perunits", "tp", at, {"n": 5e-13})) == (1, 0, [])
        assert charges(client, "perunits") == "123456.792"
        assert ingest(client, ev("t3", "perunits", "tp", at, {"n": 5e-13})) == (1, 0, [])
        assert charges(client, "perunits") == "123456.792000000001"
        assert ingest(client, ev("p1", "perunits", "pp", at, {"g": 800})) == (1, 0, [])
        assert ingest(client, ev("p2", "perunits", "pp", at, {"g": 1500})) == (1, 0, [])
        assert charges(client, "perunits") == "123460.042000000001"
        assert authorize(client, "perunits", "pp", {"g": 3000}) == ("OVERAGE_ALLOWED", "0.75")
        assert ingest(client, ev("g1", "perunits", "pm", at, {"g": 999999999999999.9})) == (1, 0, [])
        assert authorize(client, "perunits", "pm", {"g": 999999999999999.9}) == ("OK", "0")
        assert charges(client, "perunits") == "100000000123476.032000000001"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="perunits"))
        assert lines(draft) == {
            "big_per": ("1000000000000000", "0.003", 2),
            "tiny_per": ("123456.789000000001", "123456.789000000001", 3),
            "peak_per": ("1500", "3.25", 2),
            "peak_g": ("999999999999999.9", "100000000000015.99", 1),
        }


def test_a_gauge_falling_under_a_newer_version_previews_closes_and_lists_its_line_with_a_negative_part(
    server_factory: ServerFactory,
) -> None:
    """invoices.proto AppliedPrice: one rate card version's part of a line, the usage of the hours it priced, with
    unit_price amount / quantity. For LATEST a version's hours can lower the quantity: its part is then negative
    (the parts add up to the line). Its own server: lat (LATEST g) and mx (MAX g), event type `r` feeding both,
    1 a unit in version 1 (from 2024-01-01), 2 a unit in version 2, effective from E-5h (E the first period's end
    of a contract from the hour 40 days ago).
        E-10h g=50 (version 1): lat 50, mx 50                                                             100
        E-2h g=5 (version 2):   lat 2 x 5 - 2 x 50 = -90, never more negative than the line was charged: -50;
                                mx stays 50: 0                                                            50
    Lines: lat 5, 0 (2 events): version 1 (unit 1, 50 units, 50, 1 event), version 2 (-45 units for -50: unit
    -50 / -45 = 1.111111111111, 1 event); mx 50, 50: version 1 (1, 50, 50, 1), version 2 ("0" for no quantity,
    0, 0, 1). The preview, ClosePeriod, GetInvoice and ListInvoices all answer so (each failed with INTERNAL on the
    negative part: the unit price's division took a positive divisor for granted)."""
    server = server_factory()
    start_ms = this_hour_ms() - 40 * DAY_MS
    with server.client() as client:
        for product in (
            p.Product(id="lat", event_type="r", aggregation=p.LATEST, value_key="g"),
            p.Product(id="mx", event_type="r", aggregation=p.MAX, value_key="g"),
        ):
            client.pricing.CreateProduct(p.CreateProductRequest(product=product))
        client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", pricing_unit="credits"))
        for version, price in ((1, "1"), (2, "2")):
            client.pricing.CreateDraftVersion(
                p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("lat", price), unit("mx", price)])
            )
            if version == 1:
                client.pricing.PublishVersion(
                    p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
                )
        customer(client, "fall", start_ms)
        end = preview(client, "fall", start_ms).period_end.ToMilliseconds()
        assert ingest(client, ev("1", "fall", "r", end - 10 * HOUR_MS, {"g": 50})) == (1, 0, [])
        client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="card", version=2, effective_from=stamp(end - 5 * HOUR_MS))
        )
        assert ingest(client, ev("2", "fall", "r", end - 2 * HOUR_MS, {"g": 5})) == (1, 0, [])
        draft = preview(client, "fall", start_ms)
        assert (draft.subtotal, lines(draft)) == ("50", {"lat": ("5", "0", 2), "mx": ("50", "50", 2)})
        assert applied(draft, "lat") == [(1, "1", "50", "50", 1), (2, "1.111111111111", "-45", "-50", 1)]
        assert applied(draft, "mx") == [(1, "1", "50", "50", 1), (2, "0", "0", "0", 1)]
        request = invoices_pb2.ClosePeriodRequest(customer_id="fall", period_start=stamp(start_ms))
        closed = client.invoices.ClosePeriod(request)
        assert (closed.subtotal, lines(closed)) == ("50", lines(draft))
        assert [applied(closed, line) for line in ("lat", "mx")] == [applied(draft, line) for line in ("lat", "mx")]
        got = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=closed.invoice_number))
        assert (got.subtotal, applied(got, "lat")) == ("50", applied(draft, "lat"))
        listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id="fall")).invoices
        assert [(i.invoice_number, i.subtotal) for i in listed] == [(closed.invoice_number, "50")]


OVERRIDES = [
    # (id, match, multiplier, price), added in this order
    ("o1", {"model": "a", "region": "*"}, "2", ""),
    ("o2", {"region": "eu"}, "", "0.1"),
    ("o3", {"model": "a", "region": "eu"}, "0.5", ""),
    ("o4", {"model": "b"}, "", "7"),
    ("o5", {"region": "us"}, "3", ""),
]
OVERRIDE_CASES = [
    # (model, region) -> the override that wins, and the charge for a MAX of 20 (curve(20) = 10 + 3 + 5 = 18)
    (("a", "eu"), "9"),  # o3, the most specific: 0.5 x 18
    (("a", "us"), "54"),  # o1 and o5 equally specific, o5 added last: 3 x 18
    (("a", "xx"), "36"),  # o1 ("*" written): 2 x 18
    (("b", "eu"), "140"),  # o2 and o4 equally specific, o4 added last: 7 a unit, the tiers dropped: 7 x 20
    (("c", "eu"), "2"),  # o2: 0.1 x 20
    (("c", "xx"), "18"),  # none: the card's curve
    (("b", "xx"), "140"),  # o4
]


def test_the_most_specific_override_then_the_last_added_prices_a_max_through_graduated_tiers(
    server: ServerProcess,
) -> None:
    """contracts.proto PriceOverride: of several overrides matching an event the most specific wins (the most
    entries, "*" being none), among equally specific ones the one added last; a multiplier scales the amount the
    card's curve gives for the period's quantity (tiers and flat fees included), a price replaces a TIERED rate by
    one unit price for the whole quantity. Product ov (MAX g by model and region, GRADUATED up to 10 at 1, then 0.5
    with a flat 3: curve(20) = 18). For each (model, region) in OVERRIDE_CASES a reading g=20 is estimated and
    charged as listed: 9 + 54 + 36 + 140 + 2 + 18 + 140 = 399; a second reading g=12 of (a, eu) moves nothing."""
    at = now_ms() - 1_000
    with server.client() as client:
        customer(client, "over")
        for override_id, match, multiplier, price in OVERRIDES:
            override = contracts_pb2.PriceOverride(id=override_id, product_id="ov", match=match)
            if multiplier:
                override.multiplier = multiplier
            else:
                override.price = price
            client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k-over", override=override))
        events = []
        for index, ((model, region), charge) in enumerate(OVERRIDE_CASES):
            assert authorize(client, "over", "ov", {"g": 20}, model=model, region=region) == (
                "OVERAGE_ALLOWED",
                charge,
            ), (model, region)
            events.append(ev(f"o{index}", "over", "ov", at, {"g": 20}, model=model, region=region))
        assert ingest(client, *events) == (len(OVERRIDE_CASES), 0, [])
        assert charges(client, "over") == "399"
        assert ingest(client, ev("again", "over", "ov", at, {"g": 12}, model="a", region="eu")) == (1, 0, [])
        assert charges(client, "over") == "399"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="over"))
        assert {line_id: amount for line_id, (_, amount, _) in lines(draft).items()} == {
            f"ov;model={model};region={region}": charge for (model, region), charge in OVERRIDE_CASES
        }


AMBIGUITY_CASES: list[tuple[list[dict[str, str]], list[str]]] = [
    # (the matches of spec rates at 1 beside the catch-all, the paths of the findings validation gives)
    ([{"model": "a"}, {"region": "eu"}], ["rates[2].match"]),  # (a, eu, *) meets both
    ([{"model": "a", "region": "*"}, {"model": "*", "region": "eu"}], ["rates[2].match"]),  # the same, "*" written
    ([{"model": "a"}, {"region": "eu"}, {"model": "a", "region": "eu"}], []),  # their combination decides
    ([{"model": "a"}, {"region": "eu"}, {"model": "a", "region": "eu", "tier": "gold"}], ["rates[2].match"]),
    ([{"model": "a", "region": "eu"}, {"region": "eu", "tier": "gold"}], ["rates[2].match"]),  # (a, eu, gold)
    (
        [
            {"model": "a", "region": "eu"},
            {"region": "eu", "tier": "gold"},
            {"model": "a", "region": "eu", "tier": "gold"},
        ],
        [],
    ),
    ([{"model": "a"}, {"model": "b"}], []),  # no event is both a and b
    ([{"model": "a", "region": "eu"}, {"model": "b", "tier": "gold"}], []),
]


@pytest.mark.parametrize(("matches", "paths"), AMBIGUITY_CASES)
def test_two_equally_specific_rates_one_event_could_meet_are_invalid_unless_a_rate_for_their_combination_exists(
    server: ServerProcess, matches: list[dict[str, str]], paths: list[str]
) -> None:
    """docs/architecture.md §3 Rate cards: two equally specific rates that one event could match make the version
    invalid, as no most specific one would win for that event; a rate for exactly their combination is the most
    specific for every such event and decides it; rates disagreeing on a dimension's value never meet one event.
    Each case is a draft of `spec`'s catch-all (rates[0]) and the rates listed (rates[1], rates[2], ...), all at 1:
    ValidateVersion's ERROR findings are the paths listed, naming the later of the two rates."""
    with server.client() as client:
        rates = [unit("spec", "1")] + [unit("spec", "1", **match) for match in matches]
        version = client.pricing.CreateDraftVersion(
            p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates)
        )
        report = client.pricing.ValidateVersion(p.ValidateVersionRequest(rate_card_id="card", version=version.version))
        errors = [finding.path for finding in report.findings if finding.severity == p.ERROR]
        assert (report.ok, errors) == (not paths, paths)


def test_a_publish_over_max_and_latest_usage_only_in_a_closed_period_leaves_it_alone_and_prices_the_next(
    server_factory: ServerFactory,
) -> None:
    """pricing.proto PublishVersionRequest.effective_from: usage of a MAX, LATEST or UNIQUE_COUNT product refuses a
    publish only when it is affected, that is in an open period at or after effective_from; usage in closed periods
    is left alone and counted in the reply (PublishVersionResponse: hour buckets, their events, an event feeding
    several products counted once per hour and event type, and their amount). Its own server: mx (MAX g) and sm
    (SUM g) fed by event type r, lat (LATEST g) by event type l; 1 a unit in version 1 (from 2024-01-01), 2 in
    version 2. Contract from the hour 40 days ago, E its first period's end.
        E-3h r g=5: mx 5, sm 5; E-2h r g=3: mx 0, sm 3; E-3h l g=7: lat 7           period 1: 20, then closed
    Version 2 published from E-10h: accepted, nothing re-rated; left alone 5 buckets (mx and sm at E-3h and E-2h,
    lat at E-3h), 3 events (one an hour and event type, as events_rerated counts them: the reply said 5, each r
    event once per product it fed), 20. Period 1's invoice stays 20; a reading r g=4 now
    (period 2) is priced by version 2: mx 8 + sm 8 = 16, and l g=1 now: 2."""
    server = server_factory()
    start_ms = this_hour_ms() - 40 * DAY_MS
    with server.client() as client:
        for product in (
            p.Product(id="mx", event_type="r", aggregation=p.MAX, value_key="g"),
            p.Product(id="sm", event_type="r", aggregation=p.SUM, value_key="g"),
            p.Product(id="lat", event_type="l", aggregation=p.LATEST, value_key="g"),
        ):
            client.pricing.CreateProduct(p.CreateProductRequest(product=product))
        client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", pricing_unit="credits"))
        for price in ("1", "2"):
            rates = [unit("mx", price), unit("sm", price), unit("lat", price)]
            client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
        client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        customer(client, "shut", start_ms)
        end = preview(client, "shut", start_ms).period_end.ToMilliseconds()
        batch = [
            ev("1", "shut", "r", end - 3 * HOUR_MS, {"g": 5}),
            ev("2", "shut", "r", end - 2 * HOUR_MS, {"g": 3}),
            ev("3", "shut", "l", end - 3 * HOUR_MS, {"g": 7}),
        ]
        assert ingest(client, *batch) == (3, 0, [])
        request = invoices_pb2.ClosePeriodRequest(customer_id="shut", period_start=stamp(start_ms))
        closed = client.invoices.ClosePeriod(request)
        assert (closed.subtotal, lines(closed)) == (
            "20",
            {"mx": ("5", "5", 2), "sm": ("8", "8", 2), "lat": ("7", "7", 1)},
        )
        reply = client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="card", version=2, effective_from=stamp(end - 10 * HOUR_MS))
        )
        assert (reply.events_rerated, reply.buckets_rerated, reply.rerated_amount_delta) == (0, 0, "0")
        assert (
            reply.closed_buckets_left_alone,
            reply.closed_events_left_alone,
            reply.closed_amount_left_alone,
        ) == (5, 3, "20")
        assert reply.left_alone_reason
        assert (
            client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=closed.invoice_number)).subtotal
            == "20"
        )
        at = now_ms() - 1_000
        assert ingest(client, ev("4", "shut", "r", at, {"g": 4}), ev("5", "shut", "l", at, {"g": 1})) == (2, 0, [])
        assert charges(client, "shut") == "18"


def test_a_dimension_left_out_matches_a_rate_and_a_filter_for_its_empty_value(server: ServerProcess) -> None:
    """invoices.proto InvoiceLine.dimensions: an event that leaves a pricing dimension out counts on the line of its
    empty value, with one that sends it empty; pricing.proto Rate.match: so a rate for the empty value ("" is not
    "*") prices both. docs/architecture.md §3: a filter is equality on the event's dimension, one left out read as
    empty, so a filter on "" is met by both too. Event type bl feeds blank (SUM n by region: 1, 2 for region="")
    and fblank (COUNT, filter region="", 1):
        n=3, region left out    -> blank 2 x 3 = 6 (line region=), fblank 1
        n=4, region=""          -> blank 2 x 4 = 8 (the same line), fblank 1
        n=5, region=eu          -> blank 1 x 5 = 5
    Charges 21; lines blank;region= 7 (14, 2 events), blank;region=eu 5 (5), fblank 2 (2, 2 events)."""
    at = now_ms() - 1_000
    with server.client() as client:
        customer(client, "blank")
        assert authorize(client, "blank", "bl", {"n": 3}) == ("OVERAGE_ALLOWED", "7")
        assert authorize(client, "blank", "bl", {"n": 4}, region="") == ("OVERAGE_ALLOWED", "9")
        batch = [
            ev("1", "blank", "bl", at, {"n": 3}),
            ev("2", "blank", "bl", at, {"n": 4}, region=""),
            ev("3", "blank", "bl", at, {"n": 5}, region="eu"),
        ]
        assert ingest(client, *batch) == (3, 0, [])
        assert charges(client, "blank") == "21"
        draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="blank"))
        assert lines(draft) == {
            "blank;region=": ("7", "14", 2),
            "blank;region=eu": ("5", "5", 1),
            "fblank": ("2", "2", 2),
        }


def test_a_gauge_rising_and_falling_draws_grants_in_burn_order_and_gives_back_overage_then_in_reverse(
    server: ServerProcess,
) -> None:
    """docs/architecture.md §5 step 7: a positive charge draws on the grants in burn order (priority, lower first),
    the rest overage; a negative one gives back the aggregate's own overage first, then credit to the grants it drew
    from in reverse burn order. gauge_v (LATEST g, VOLUME 2 a unit up to 10; 1 a unit plus 5 up to 100; then 0.5);
    grants A (priority 1, 30) and B (priority 2, 100). T = now - 10 s; (A drawn, B drawn, charges, overage):
        T-3h g=50  -> curve 55, +55: A 30, B 25                             (30, 25, 55, 0)
        T-2h g=8   -> curve 16, -39: B gives back 25, then A 14             (16, 0, 16, 0)
        T-1h g=200 -> curve 100, +84: A 14, B 70                            (30, 70, 100, 0)
        Authorize g=300: 150 - 100 = 50 beyond the 30 available: OVERAGE_ALLOWED
        T-1h+1 ms g=300 -> curve 150, +50: B 30, overage 20                 (30, 100, 150, 20)
        T g=1      -> curve 2, -148: overage 20 back, B 100, A 28           (2, 0, 2, 0)"""
    t = now_ms() - 10_000
    with server.client() as client:
        customer(client, "burn")
        for grant_id, priority, amount in (("A", 1, "30"), ("B", 2, "100")):
            grant = contracts_pb2.Grant(
                id=grant_id,
                customer_id="burn",
                kind=contracts_pb2.PROMOTIONAL,
                amount=amount,
                paid_amount="0",
                priority=priority,
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))

        def state() -> tuple[str, str, str, str]:
            balance = client.get_balance("burn")
            drawn = {g.grant_id: g.drawn for g in balance.grants}
            return drawn["A"], drawn["B"], balance.period_charges, balance.overage_amount

        readings = [
            ("1", t - 3 * HOUR_MS, 50, ("30", "25", "55", "0")),
            ("2", t - 2 * HOUR_MS, 8, ("16", "0", "16", "0")),
            ("3", t - HOUR_MS, 200, ("30", "70", "100", "0")),
        ]
        for transaction_id, at_ms, g, after in readings:
            assert ingest(client, ev(transaction_id, "burn", "gv", at_ms, {"g": g})) == (1, 0, [])
            assert state() == after, transaction_id
        assert authorize(client, "burn", "gv", {"g": 300}) == ("OVERAGE_ALLOWED", "50")
        assert ingest(client, ev("4", "burn", "gv", t - HOUR_MS + 1, {"g": 300})) == (1, 0, [])
        assert state() == ("30", "100", "150", "20")
        assert ingest(client, ev("5", "burn", "gv", t, {"g": 1})) == (1, 0, [])
        assert state() == ("2", "0", "2", "0")
