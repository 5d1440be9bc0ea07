"""An audit of the non-SUM aggregations (pricing.proto Aggregation MAX, LATEST, UNIQUE_COUNT, COUNT) across a
version taking effect mid-period, past tests/test_audit_aggregates_wire.py (which prices them under one version, or
re-rates them only in a closed period): readings dated ahead in the new version's hours, then late readings dated
in the old version's earlier hours, a reading exactly at the version's effective_from, a LATEST reading at the same
timestamp as the latest, duplicates and conflicting resends, Authorize estimates (priced now, by the old version)
against the next ingestion's charge, ExplainLineItem's entries and the AppliedPrice parts summing to the line,
readings at a period boundary (the last millisecond of period 1 and the first of period 2), and a kill -9 replay
giving the same invoices. Every amount is computed by hand from pricing.proto Rate: an event is charged
price(line quantity after) - price(before) by the version in force at its timestamp, never giving back more than
the line was charged.

Catalogue (card `agg2`, credits; the server accepts events up to a year ahead, --future-skew-s):

    product  event  aggregation        version 1 (from 2024-01-01)            version 2 (from F = this hour + 2h)
    lx       lx     LATEST g           VOLUME up to 10 at 2, then 1:          UNIT 3
                                       v1(q) = 2q (q <= 10), q (q > 10)
    mx       mx     MAX g              GRADUATED up to 10 at 1, then 0.5:     UNIT 2
                                       v1(q) = q (q <= 10), 10 + 0.5 (q - 10)
    ux       ux     UNIQUE_COUNT user  PACKAGE 2 at 10: 10 ceil(u / 2)        PACKAGE 2 at 20
    cx       cx     COUNT              GRADUATED up to 2 at 1, then 0.5       UNIT 3

Version 2 is published before any usage exists, so nothing is re-rated. Contracts start at H - 5h (H this hour);
"now" events and Authorize fall in H or H + 1, priced by version 1."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import charges, preview, refusal, serving, this_hour_ms, unit
from tests.serverproc import ServerProcess
from tests.test_audit_aggregates_wire import ev, ingest

HOUR_MS = 3_600_000
CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
H_MS = this_hour_ms()
F_MS = H_MS + 2 * HOUR_MS
START_MS = H_MS - 5 * HOUR_MS
# Instants above are taken at import: conftest.py skips the module once a calendar month has turned since.
pytestmark = pytest.mark.clock_at_import
REJECT = usage_pb2.RejectReason
p = pricing_pb2


def tiered(product_id: str, mode: int, tiers: list[tuple[str, str]]) -> p.Rate:
    return p.Rate(
        product_id=product_id,
        tiered=p.TieredPrice(
            mode=mode,  # type: ignore[arg-type]
            tiers=[p.Tier(up_to=up_to, unit_price=price) for up_to, price in tiers],
        ),
    )


def package(product_id: str, price: str) -> p.Rate:
    return p.Rate(product_id=product_id, package=p.PackagePrice(package_size="2", package_price=price))


def catalogue(client: TariffClient) -> None:
    for product in (
        p.Product(id="lx", event_type="lx", aggregation=p.LATEST, value_key="g"),
        p.Product(id="mx", event_type="mx", aggregation=p.MAX, value_key="g"),
        p.Product(id="ux", event_type="ux", aggregation=p.UNIQUE_COUNT, value_key="user"),
        p.Product(id="cx", event_type="cx", aggregation=p.COUNT),
    ):
        client.pricing.CreateProduct(p.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(p.CreateRateCardRequest(id="agg2", pricing_unit="credits"))
    version_1 = [
        tiered("lx", p.VOLUME, [("10", "2"), ("", "1")]),
        tiered("mx", p.GRADUATED, [("10", "1"), ("", "0.5")]),
        package("ux", "10"),
        tiered("cx", p.GRADUATED, [("2", "1"), ("", "0.5")]),
    ]
    version_2 = [unit("lx", "3"), unit("mx", "2"), package("ux", "20"), unit("cx", "3")]
    for version, rates, from_ms in ((1, version_1, CARD_FROM_MS), (2, version_2, F_MS)):
        client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="agg2", upsert_rates=rates))
        client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="agg2", version=version, effective_from=stamp(from_ms))
        )
    for customer_id in ("lat", "max", "uniq", "cnt", "edge", "fall", "ib"):
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=f"k-{customer_id}", customer_id=customer_id, rate_card_id="agg2", starting_at=stamp(START_MS)
            )
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-aggregations2")
    yield from serving(ServerProcess(root / "data", extra_args=["--future-skew-s", "31536000"]), catalogue)


def estimate(
    client: TariffClient, customer_id: str, event_type: str, values: dict[str, float] | None = None, **dims: str
) -> str:
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id, event_type=event_type, values=values or {}, dimensions=dims
    )
    return str(client.balance.Authorize(request).estimated_cost)


def explain(client: TariffClient, customer_id: str, line_id: str) -> list[tuple[str, int, str, str]]:
    """(transaction_id, version, quantity, amount) of each entry, after checking the pages sum to the line."""
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=customer_id, period_start=stamp(START_MS), line_id=line_id, page_size=100
    )
    found = client.invoices.ExplainLineItem(request)
    assert found.next_page_token == ""
    return [(e.transaction_id, e.version, e.quantity, e.amount) for e in found.events]


def line_and_parts(
    client: TariffClient, customer_id: str, at_ms: int = START_MS
) -> tuple[tuple[str, str, int], list[tuple[int, str, str, str, int]]]:
    """((quantity, amount, events), [(version, unit_price, quantity, amount, events)]) of the customer's one line."""
    (line,) = preview(client, customer_id, at_ms).lines
    parts = [(a.version, a.unit_price, a.quantity, a.amount, a.events) for a in line.prices]
    return (line.quantity, line.amount, line.events), parts


def test_latest_ahead_in_a_new_version_then_late_same_time_and_authorized_readings(server: ServerProcess) -> None:
    """LATEST: a reading in version 2's hours, then a late one in version 1's hours does not move it (0), one at
    the same timestamp as the latest replaces it (ingested last), and Authorize now (before the latest reading)
    estimates 0, as the ingestion then charges.
        l1 H-2h g=8  (v1): 2 x 8 = 16                                line 16
        l2 F+1s g=12 (v2): 3 x 12 - 3 x 8 = 12                       line 28
        l3 H-1h g=50 (v1): dated before the latest rated: 0          line 28
        l4 F+1s g=4  (v2, same timestamp, last): 12 - 36 = -24       line 4
        l1 again: duplicate; l2 with g=99: DUPLICATE_CONFLICT
        Authorize g=20 now: 0; l5 now g=20: 0                       line 4, quantity 4, 5 events
    Parts: version 1 (l1, l3, l5): +8 for 16, unit 2; version 2 (l2, l4): -4 for -12, unit 3."""
    with server.client() as client:
        assert ingest(client, ev("l1", "lat", "lx", H_MS - 2 * HOUR_MS, {"g": 8})) == (1, 0, [])
        assert ingest(client, ev("l2", "lat", "lx", F_MS + 1000, {"g": 12})) == (1, 0, [])
        assert ingest(client, ev("l3", "lat", "lx", H_MS - HOUR_MS, {"g": 50})) == (1, 0, [])
        assert ingest(client, ev("l4", "lat", "lx", F_MS + 1000, {"g": 4})) == (1, 0, [])
        assert charges(client, "lat") == "4"
        resend = ingest(
            client, ev("l1", "lat", "lx", H_MS - 2 * HOUR_MS, {"g": 8}), ev("l2", "lat", "lx", F_MS + 1000, {"g": 99})
        )
        assert resend == (0, 1, [(1, REJECT.DUPLICATE_CONFLICT)])
        assert estimate(client, "lat", "lx", {"g": 20}) == "0"
        assert ingest(client, ev("l5", "lat", "lx", now_ms(), {"g": 20})) == (1, 0, [])
        assert charges(client, "lat") == "4"
        assert line_and_parts(client, "lat") == (("4", "4", 5), [(1, "2", "8", "16", 3), (2, "3", "-4", "-12", 2)])
        assert explain(client, "lat", "lx") == [
            ("l1", 1, "8", "16"),
            ("l2", 2, "4", "12"),
            ("l3", 1, "0", "0"),
            ("l4", 2, "-8", "-24"),
            ("l5", 1, "0", "0"),
        ]


def test_max_ahead_late_at_the_effective_instant_and_authorized(server: ServerProcess) -> None:
    """MAX across the version change; a reading exactly at F is version 2's.
        m1 H-2h g=6  (v1): 6                                         line 6
        m2 F+1s g=9  (v2): 18 - 12 = 6                               line 12
        m3 H-1h g=14 (v1): v1(14) - v1(9) = 12 - 9 = 3               line 15
        m2 again: duplicate
        Authorize g=20 now: v1(20) - v1(14) = 15 - 12 = 3; m4 now g=20: 3    line 18
        m5 at F g=21 (v2): 42 - 40 = 2                               line 20, quantity 21, 5 events
    Parts: version 1 (m1, m3, m4): +17 for 12, unit 12/17 = 0.705882352941; version 2 (m2, m5): +4 for 8, unit 2."""
    with server.client() as client:
        assert ingest(client, ev("m1", "max", "mx", H_MS - 2 * HOUR_MS, {"g": 6})) == (1, 0, [])
        assert ingest(client, ev("m2", "max", "mx", F_MS + 1000, {"g": 9})) == (1, 0, [])
        assert ingest(client, ev("m3", "max", "mx", H_MS - HOUR_MS, {"g": 14})) == (1, 0, [])
        assert ingest(client, ev("m2", "max", "mx", F_MS + 1000, {"g": 9})) == (0, 1, [])
        assert charges(client, "max") == "15"
        assert estimate(client, "max", "mx", {"g": 20}) == "3"
        assert ingest(client, ev("m4", "max", "mx", now_ms(), {"g": 20})) == (1, 0, [])
        assert charges(client, "max") == "18"
        assert ingest(client, ev("m5", "max", "mx", F_MS, {"g": 21})) == (1, 0, [])
        assert line_and_parts(client, "max") == (
            ("21", "20", 5),
            [(1, "0.705882352941", "17", "12", 3), (2, "2", "4", "8", 2)],
        )
        assert explain(client, "max", "mx") == [
            ("m1", 1, "6", "6"),
            ("m2", 2, "3", "6"),
            ("m3", 1, "5", "3"),
            ("m4", 1, "6", "3"),
            ("m5", 2, "1", "2"),
        ]


def test_unique_count_and_count_ahead_late_and_authorized(server: ServerProcess) -> None:
    """UNIQUE_COUNT (packages of 2 at 10, then 20) and COUNT across the version change.
        u1 H-2h a (v1): 10; u2 F+1s b (v2): 20 - 20 = 0; u3 H-1h c (v1): v1(3) - v1(2) = 10;
        u4 F+2s a (v2): 0; u6 F+3s e (v2): v2(4) - v2(3) = 0                line 20
        Authorize d now: v1(5) - v1(4) = 30 - 20 = 10; u5 now d: 10         line 30, quantity 5, 6 events
    Parts: version 1 (u1, u3, u5): +3 for 30, unit 10; version 2 (u2, u4, u6): +2 for 0, unit 0.
        c1 F+1s (v2): 3; c2 H-2h (v1): v1(2) - v1(1) = 1; Authorize now: v1(3) - v1(2) = 0.5; c3 now: 0.5
    COUNT line 3, 4.5; parts version 1 +2 for 1.5 (unit 0.75), version 2 +1 for 3 (unit 3)."""
    with server.client() as client:
        assert ingest(client, ev("u1", "uniq", "ux", H_MS - 2 * HOUR_MS, user="a")) == (1, 0, [])
        assert ingest(client, ev("u2", "uniq", "ux", F_MS + 1000, user="b")) == (1, 0, [])
        assert ingest(client, ev("u3", "uniq", "ux", H_MS - HOUR_MS, user="c")) == (1, 0, [])
        assert ingest(client, ev("u4", "uniq", "ux", F_MS + 2000, user="a")) == (1, 0, [])
        assert ingest(client, ev("u6", "uniq", "ux", F_MS + 3000, user="e")) == (1, 0, [])
        assert charges(client, "uniq") == "20"
        assert estimate(client, "uniq", "ux", user="d") == "10"
        assert ingest(client, ev("u5", "uniq", "ux", now_ms(), user="d")) == (1, 0, [])
        assert charges(client, "uniq") == "30"
        assert line_and_parts(client, "uniq") == (("5", "30", 6), [(1, "10", "3", "30", 3), (2, "0", "2", "0", 3)])
        assert ingest(client, ev("c1", "cnt", "cx", F_MS + 1000)) == (1, 0, [])
        assert ingest(client, ev("c2", "cnt", "cx", H_MS - 2 * HOUR_MS)) == (1, 0, [])
        assert estimate(client, "cnt", "cx") == "0.5"
        assert ingest(client, ev("c3", "cnt", "cx", now_ms())) == (1, 0, [])
        assert line_and_parts(client, "cnt") == (("3", "4.5", 3), [(1, "0.75", "2", "1.5", 2), (2, "3", "1", "3", 1)])


def test_readings_at_a_period_boundary_fall_each_in_their_period(server: ServerProcess) -> None:
    """The last millisecond of period 1 and the first of period 2 (its end), both in version 2's hours:
    LATEST g=7 then g=3: period 1 lx 7 for 21, period 2 lx 3 for 9 (a fresh line); MAX g=5 then g=2: period 1
    10, period 2 4 (not 0: period 2's MAX starts from nothing)."""
    with server.client() as client:
        end_ms = preview(client, "edge", START_MS).period_end.ToMilliseconds()
        batch = [
            ev("e1", "edge", "lx", end_ms - 1, {"g": 7}),
            ev("e2", "edge", "lx", end_ms, {"g": 3}),
            ev("e3", "edge", "mx", end_ms - 1, {"g": 5}),
            ev("e4", "edge", "mx", end_ms, {"g": 2}),
        ]
        assert ingest(client, *batch) == (4, 0, [])
        first = preview(client, "edge", START_MS)
        second = preview(client, "edge", end_ms)
        assert {line.line_id: (line.quantity, line.amount) for line in first.lines} == {
            "lx": ("7", "21"),
            "mx": ("5", "10"),
        }
        assert {line.line_id: (line.quantity, line.amount) for line in second.lines} == {
            "lx": ("3", "9"),
            "mx": ("2", "4"),
        }


def test_a_falling_latest_is_estimated_and_charged_alike_and_a_conflicting_twin_in_one_batch_is_refused(
    server: ServerProcess,
) -> None:
    """LATEST g=20 at H-1h (v1): 20. Authorize g=5 now: v1(5) - v1(20) = 10 - 20 = -10, and ingesting it charges
    -10 (line 10). One batch with f3 g=30 and f3 again g=9: the second is DUPLICATE_CONFLICT, the first charged
    v1(30) - v1(5) = 30 - 10 = 20 (line 30). Authorize mx g=12 for a line never used: v1(12) = 10 + 1 = 11."""
    with server.client() as client:
        assert ingest(client, ev("f1", "fall", "lx", H_MS - HOUR_MS, {"g": 20})) == (1, 0, [])
        assert estimate(client, "fall", "lx", {"g": 5}) == "-10"
        assert ingest(client, ev("f2", "fall", "lx", now_ms(), {"g": 5})) == (1, 0, [])
        assert charges(client, "fall") == "10"
        at_ms = now_ms()
        twins = ingest(client, ev("f3", "fall", "lx", at_ms, {"g": 30}), ev("f3", "fall", "lx", at_ms, {"g": 9}))
        assert twins == (1, 0, [(1, REJECT.DUPLICATE_CONFLICT)])
        assert charges(client, "fall") == "30"
        assert estimate(client, "fall", "mx", {"g": 12}) == "11"


def test_a_publish_over_readings_dated_ahead_is_refused_and_one_after_all_usage_is_not(server: ServerProcess) -> None:
    """PublishVersionRequest.effective_from: affected usage is every open-period bucket at or after it, readings
    dated ahead of now included: a version 3 effective from F (MAX, LATEST, UNIQUE_COUNT usage there) is
    FAILED_PRECONDITION and changes nothing; effective a day after period 2's first hour (no usage there) it
    publishes, and no charge moves."""
    with server.client() as client:
        before = [charges(client, c) for c in ("lat", "max", "uniq", "cnt")]
        end_ms = preview(client, "edge", START_MS).period_end.ToMilliseconds()
        client.pricing.CreateDraftVersion(
            p.CreateDraftVersionRequest(rate_card_id="agg2", upsert_rates=[unit("lx", "5"), unit("mx", "5")])
        )
        request = p.PublishVersionRequest(rate_card_id="agg2", version=3, effective_from=stamp(F_MS))
        code, message = refusal(lambda: client.pricing.PublishVersion(request))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, message
        assert [charges(client, c) for c in ("lat", "max", "uniq", "cnt")] == before
        client.pricing.PublishVersion(
            p.PublishVersionRequest(
                rate_card_id="agg2", version=3, effective_from=stamp(end_ms - end_ms % HOUR_MS + 24 * HOUR_MS)
            )
        )
        assert [charges(client, c) for c in ("lat", "max", "uniq", "cnt")] == before


def test_a_retroactive_volume_publish_over_a_count_line_gives_back_no_more_than_it_was_charged(
    server: ServerProcess,
) -> None:
    """COUNT can be priced again from hour buckets. Card `cnt2`, product cy (COUNT): version 1 VOLUME up to 2 at 5,
    then 1 (v1(q) = 5q, q beyond 2); events at H-3h, H-2h, H-1h: 5, 5, 3 - 10 = -7, line 3. Version 2 effective
    H-2h: VOLUME up to 2 at 10, then 0.1 (v2(q) = 10q, 0.1q beyond 2). Re-rated: H-3h stays 5 (version 1);
    H-2h v2(2) - v2(1) = 10; H-1h v2(3) - v2(2) = 0.3 - 20 = -19.7, more than the line's 15 so far: -15. Line 0.
    Authorize now: v2(4) - v2(3) = 0.1, and the event now is charged 0.1: line 0.1, its ExplainLineItem entries
    and its AppliedPrice parts summing to it."""
    with server.client() as client:
        client.pricing.CreateProduct(
            p.CreateProductRequest(product=p.Product(id="cy", event_type="cy", aggregation=p.COUNT))
        )
        client.pricing.CreateRateCard(p.CreateRateCardRequest(id="cnt2", pricing_unit="credits"))
        for version, rates, from_ms in (
            (1, [tiered("cy", p.VOLUME, [("2", "5"), ("", "1")])], CARD_FROM_MS),
            (2, [tiered("cy", p.VOLUME, [("2", "10"), ("", "0.1")])], H_MS - 2 * HOUR_MS),
        ):
            client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="cnt2", upsert_rates=rates))
            if version == 1:
                client.pricing.PublishVersion(
                    p.PublishVersionRequest(rate_card_id="cnt2", version=1, effective_from=stamp(from_ms))
                )
                client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rr", name="rr"))
                client.contracts.CreateContract(
                    contracts_pb2.CreateContractRequest(
                        id="k-rr", customer_id="rr", rate_card_id="cnt2", starting_at=stamp(START_MS)
                    )
                )
                for hours in (3, 2, 1):
                    assert ingest(client, ev(f"y{hours}", "rr", "cy", H_MS - hours * HOUR_MS)) == (1, 0, [])
                assert charges(client, "rr") == "3"
            else:
                client.pricing.PublishVersion(
                    p.PublishVersionRequest(rate_card_id="cnt2", version=2, effective_from=stamp(from_ms))
                )
        assert charges(client, "rr") == "0"
        assert estimate(client, "rr", "cy") == "0.1"
        assert ingest(client, ev("y0", "rr", "cy", now_ms())) == (1, 0, [])
        assert charges(client, "rr") == "0.1"
        (line,) = preview(client, "rr", START_MS).lines
        assert (line.quantity, line.amount) == ("4", "0.1")
        assert sum(Decimal(a.amount) for a in line.prices) == Decimal("0.1")
        request = invoices_pb2.ExplainLineItemRequest(customer_id="rr", period_start=stamp(START_MS), line_id="cy")
        found = client.invoices.ExplainLineItem(request)
        assert found.line_amount == "0.1"
        assert sum(Decimal(e.amount) for e in found.events) == Decimal("0.1")


def test_a_latest_falling_under_a_dearer_version_is_estimated_with_the_clamp_it_is_charged_with(
    server: ServerProcess,
) -> None:
    """pricing.proto Rate: a charge never gives back more than its line was charged so far, and Authorize's
    estimate is what the usage would be charged now. Card `lat3`, product lz (LATEST g): version 1 UNIT 1 from
    2024; z1 H-3h g=10: 10. Version 2 UNIT 10 from H-1h (no usage there yet: nothing re-rated). Authorize g=5
    now: 10 x 5 - 10 x 10 = -50, but the line holds 10: -10, and z2 now g=5 is charged -10 (line 0). Authorize
    g=6: 60 - 50 = 10, as z3 is charged: line 10. Explain: z1 +10 for 10 (v1), z2 -5 for -10, z3 +1 for 10 (v2)."""
    with server.client() as client:
        product = p.Product(id="lz", event_type="lz", aggregation=p.LATEST, value_key="g")
        client.pricing.CreateProduct(p.CreateProductRequest(product=product))
        client.pricing.CreateRateCard(p.CreateRateCardRequest(id="lat3", pricing_unit="credits"))
        client.pricing.CreateDraftVersion(
            p.CreateDraftVersionRequest(rate_card_id="lat3", upsert_rates=[unit("lz", "1")])
        )
        client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="lat3", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="cl", name="cl"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-cl", customer_id="cl", rate_card_id="lat3", starting_at=stamp(START_MS)
            )
        )
        assert ingest(client, ev("z1", "cl", "lz", H_MS - 3 * HOUR_MS, {"g": 10})) == (1, 0, [])
        client.pricing.CreateDraftVersion(
            p.CreateDraftVersionRequest(rate_card_id="lat3", upsert_rates=[unit("lz", "10")])
        )
        client.pricing.PublishVersion(
            p.PublishVersionRequest(rate_card_id="lat3", version=2, effective_from=stamp(H_MS - HOUR_MS))
        )
        assert charges(client, "cl") == "10"
        assert estimate(client, "cl", "lz", {"g": 5}) == "-10"
        assert ingest(client, ev("z2", "cl", "lz", now_ms(), {"g": 5})) == (1, 0, [])
        assert charges(client, "cl") == "0"
        assert estimate(client, "cl", "lz", {"g": 6}) == "10"
        assert ingest(client, ev("z3", "cl", "lz", now_ms(), {"g": 6})) == (1, 0, [])
        assert charges(client, "cl") == "10"
        assert explain(client, "cl", "lz") == [("z1", 1, "10", "10"), ("z2", 2, "-5", "-10"), ("z3", 2, "1", "10")]


def test_latest_order_inside_one_batch_and_the_three_authorize_calls_estimating_alike(server: ServerProcess) -> None:
    """One batch, t a second ago: a t g=20: 20; b t g=3 (same timestamp, later in the batch, so counts):
    6 - 20 = -14; c t-5s g=50 (late): 0; d t+1ms g=12: 12 - 6 = 6; e t g=40 (before d): 0. Line 12.
    Explain: unit_price -14 / -17 = 0.823529411765 for b, empty for the late readings' 0 quantity.
    Authorize, AuthorizeStream and AuthorizeBatches estimate alike: lx g=2: 4 - 12 = -8 (OK); mx g=12 on a new
    line: 11; ux user u: 10; cx: 1; lx g=200: 200 - 12 = 188 (these OVERAGE_ALLOWED)."""
    with server.client() as client:
        at_ms = now_ms() - 1000
        batch = [
            ev("a", "ib", "lx", at_ms, {"g": 20}),
            ev("b", "ib", "lx", at_ms, {"g": 3}),
            ev("c", "ib", "lx", at_ms - 5000, {"g": 50}),
            ev("d", "ib", "lx", at_ms + 1, {"g": 12}),
            ev("e", "ib", "lx", at_ms, {"g": 40}),
        ]
        assert ingest(client, *batch) == (5, 0, [])
        assert charges(client, "ib") == "12"
        request = invoices_pb2.ExplainLineItemRequest(customer_id="ib", period_start=stamp(START_MS), line_id="lx")
        found = client.invoices.ExplainLineItem(request)
        assert [(e.transaction_id, e.quantity, e.amount, e.unit_price) for e in found.events] == [
            ("a", "20", "20", "1"),
            ("b", "-17", "-14", "0.823529411765"),
            ("c", "0", "0", ""),
            ("d", "9", "6", "0.666666666667"),
            ("e", "0", "0", ""),
        ]
        asks = [
            ("lx", {"g": 2.0}, {}),
            ("mx", {"g": 12.0}, {}),
            ("ux", {}, {"user": "u"}),
            ("cx", {}, {}),
            ("lx", {"g": 200.0}, {}),
        ]
        requests = [
            balance_pb2.AuthorizeRequest(request_id=f"q{i}", customer_id="ib", event_type=t, values=v, dimensions=d)
            for i, (t, v, d) in enumerate(asks)
        ]
        expected = [
            ("OK", "-8"),
            ("OVERAGE_ALLOWED", "11"),
            ("OVERAGE_ALLOWED", "10"),
            ("OVERAGE_ALLOWED", "1"),
            ("OVERAGE_ALLOWED", "188"),
        ]
        (result,) = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)])))
        assert [(r.reason, r.estimated_cost) for r in result.responses] == expected
        assert [(r.reason, r.estimated_cost) for r in client.balance.AuthorizeStream(iter(requests))] == expected
        assert [(r.reason, r.estimated_cost) for r in map(client.balance.Authorize, requests)] == expected


def test_a_kill_9_replays_the_same_lines_parts_and_explanations(server: ServerProcess) -> None:
    """After kill -9 and a restart the journal replays to the same previews, parts and ExplainLineItem entries
    (runs after the tests above, in file order), and the state it rebuilt rates on as before: l4 and l2 resent are
    a duplicate and DUPLICATE_CONFLICT; l6 at F+1s, l4's timestamp, g=7 is ingested last so counts:
    3 x 7 - 3 x 4 = 9 (lat 13); l7 at H-1h g=99 is late: 0; Authorize mx g=22 now: v1(22) - v1(21) = 16 - 15.5 =
    0.5, as m6 is then charged (max 20.5); UNIQUE_COUNT user a again now: 0."""
    customers = ("lat", "max", "uniq", "cnt")
    with server.client() as client:
        before = [line_and_parts(client, c) for c in customers]
        explained = [explain(client, c, line) for c, line in (("lat", "lx"), ("max", "mx"), ("uniq", "ux"))]
        balances = [charges(client, c) for c in customers]
    server.kill9()
    server.restart()
    with server.client() as client:
        assert [line_and_parts(client, c) for c in customers] == before
        assert [explain(client, c, line) for c, line in (("lat", "lx"), ("max", "mx"), ("uniq", "ux"))] == explained
        assert [charges(client, c) for c in customers] == balances
        assert balances == ["4", "20", "30", "4.5"]
        assert charges(client, "rr") == "0.1"
        resend = ingest(
            client, ev("l4", "lat", "lx", F_MS + 1000, {"g": 4}), ev("l2", "lat", "lx", F_MS + 1000, {"g": 99})
        )
        assert resend == (0, 1, [(1, REJECT.DUPLICATE_CONFLICT)])
        assert ingest(client, ev("l6", "lat", "lx", F_MS + 1000, {"g": 7})) == (1, 0, [])
        assert ingest(client, ev("l7", "lat", "lx", H_MS - HOUR_MS, {"g": 99})) == (1, 0, [])
        assert charges(client, "lat") == "13"
        assert estimate(client, "max", "mx", {"g": 22}) == "0.5"
        assert ingest(client, ev("m6", "max", "mx", now_ms(), {"g": 22})) == (1, 0, [])
        assert charges(client, "max") == "20.5"
        assert estimate(client, "uniq", "ux", user="a") == "0"
        assert ingest(client, ev("u7", "uniq", "ux", now_ms(), user="a")) == (1, 0, [])
        assert charges(client, "uniq") == "30"
