"""An audit of README "Changing prices safely" (to "Credits and the gateway") against the server on the wire, for
the statements with amounts and edges the earlier pricing audits leave unpinned: a version effective exactly at an
hour boundary, simulations over windows holding a version switch, GRADUATED and VOLUME tiers at the exact tier
edge, PACKAGE remainders across a re-rated hour and a late event, override prices per price model and per_units,
same-price publishes, the README's settling-again examples (g1/g2, the top-up bought at 71), rollbacks' copies,
chains and refusals, diffs, validation findings and the audit log. Every amount asserted is computed by hand in the
test's docstring.

One server for the module (`--close-grace off`: nothing closes by itself). Product `units` (event type `work`, SUM
of `n`, priced on `model`), and `a` and `b` (event types `ea` and `eb`, the same otherwise). Each test makes its own
rate card and customers, named after it (contracts from 2026-03-01, monthly periods, open), so no test sees
another's versions or usage, and the tests run in any order. H(n) is 2026-03-01 plus n hours."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import HOUR_MS, audit_count, open_contract, preview, refusal, serving
from tests.serverproc import ServerProcess
from tests.test_audit_invoices_wire import ms, ts

MAR = ms("2026-03-01T00:00:00")
MINUTE_MS = 60_000
S = grpc.StatusCode


def H(hours: int) -> int:
    return MAR + hours * HOUR_MS


def _catalogue(client: TariffClient) -> None:
    for product_id, event_type in (("units", "work"), ("a", "ea"), ("b", "eb")):
        product = pricing_pb2.Product(
            id=product_id,
            event_type=event_type,
            aggregation=pricing_pb2.SUM,
            value_key="n",
            pricing_dimensions=["model"],
        )
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-pricesafe") / "data", extra_args=["--close-grace", "off"])
    yield from serving(process, _catalogue)


def unit(price: str, per_units: str = "", product_id: str = "units", **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(
        product_id=product_id, match=match, unit=pricing_pb2.UnitPrice(price=price, per_units=per_units)
    )


def tiered(
    mode: pricing_pb2.TierMode, tiers: list[tuple[str, str, str]], per_units: str = "", **match: str
) -> pricing_pb2.Rate:
    """Tiers as (up_to, unit_price, flat_price)."""
    listed = [pricing_pb2.Tier(up_to=u, unit_price=p, flat_price=f) for u, p, f in tiers]
    return pricing_pb2.Rate(
        product_id="units", match=match, tiered=pricing_pb2.TieredPrice(mode=mode, tiers=listed, per_units=per_units)
    )


def package(size: str, price: str, **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(
        product_id="units", match=match, package=pricing_pb2.PackagePrice(package_size=size, package_price=price)
    )


def flat(price: str, **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id="units", match=match, flat=pricing_pb2.FlatPrice(price=price))


def override_price(client: TariffClient, contract_id: str, price: str, **match: str) -> None:
    override = contracts_pb2.PriceOverride(product_id="units", match=match, price=price)
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=override))


def draft(client: TariffClient, card: str, base: int, *rates: pricing_pb2.Rate) -> int:
    request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, based_on_version=base, upsert_rates=rates)
    return int(client.pricing.CreateDraftVersion(request).version)


def publish(
    client: TariffClient, card: str, version: int, at_ms: int, cohort: pricing_pb2.Cohort | None = None
) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=version, effective_from=ts(at_ms))
    if cohort is not None:
        request.cohort.CopyFrom(cohort)
    answer: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
    return answer


def rollback(client: TariffClient, card: str, to_version: int, at_ms: int) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.RollbackRateCardRequest(rate_card_id=card, to_version=to_version, effective_from=ts(at_ms))
    answer: pricing_pb2.PublishVersionResponse = client.pricing.RollbackRateCard(request)
    return answer


def card_with_customer(client: TariffClient, name: str, *rates: pricing_pb2.Rate, pricing_unit: str = "USD") -> None:
    """Rate card `name` whose version 1 (`rates`) is in force from 2026-03-01, and customer `name` on it (contract
    `k-name`, ALLOW, overage at 1 USD)."""
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=name, name=name, pricing_unit=pricing_unit))
    draft(client, name, 0, *rates)
    publish(client, name, 1, MAR)
    open_contract(client, name, f"k-{name}", MAR, rate_card_id=name)


def send(
    client: TariffClient,
    customer_id: str,
    transaction_id: str,
    at_ms: int,
    n: float,
    event_type: str = "work",
    **dims: str,
) -> None:
    event = usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        values={"n": n},
        dimensions=dims,
    )
    ack = client.ingest_batch([event], batch_id=f"b-{transaction_id}")
    assert ack.accepted == 1, ack.rejected


def march(client: TariffClient, customer_id: str) -> invoices_pb2.Invoice:
    return preview(client, customer_id, MAR)


def counts(done: pricing_pb2.PublishVersionResponse) -> tuple[int, int, int, str]:
    return done.customers_rerated, done.buckets_rerated, done.events_rerated, done.rerated_amount_delta


def simulate(
    client: TariffClient, card: str, version: int, start_ms: int, end_ms: int, *customers: str
) -> list[tuple[str, str, str, str]]:
    """(customer, current, simulated, delta) of every amount, then the totals as ("total", ...)."""
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=card, version=version, period_start=ts(start_ms), period_end=ts(end_ms), customer_ids=customers
    )
    answer = client.pricing.SimulateVersion(request)
    rows = [(a.customer_id, a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts]
    t = answer.totals
    return [*rows, ("total", t.current_amount, t.simulated_amount, t.delta)]


def test_a_version_effective_exactly_at_an_hour_prices_that_hours_usage_and_re_rates_only_it(
    server: ServerProcess,
) -> None:
    """README: publish "from an hour", "usage before that hour keeps the old price"; a publish before usage already
    rated re-rates "each [bucket] by the version in force for its hour". Version 1 is 1 a unit. 10 units at
    01:59:59.999 (H(2) - 1 ms) and 10 at 02:00:00.000 (H(2)) are 10 + 10 = 20. Version 2 (3 a unit) simulated over
    [H(2), H(3)) takes in the 02:00 bucket only: 10 now, 30 simulated, delta 20. Published from H(2) it re-rates the 02:00 bucket only: 1 customer, 1 bucket, 1 event, delta 30 - 10 = 20; the line is 10 + 30 =
    40, 10 units at version 1 and 10 at version 2; GetVersion at H(2) - 1 ms is version 1, at H(2) version 2."""
    with server.client() as client:
        card_with_customer(client, "edge", unit("1"))
        send(client, "edge", "edge-before", H(2) - 1, 10)
        send(client, "edge", "edge-at", H(2), 10)
        assert march(client, "edge").subtotal == "20"
        v2 = draft(client, "edge", 1, unit("3"))
        assert simulate(client, "edge", v2, H(2), H(3))[0] == ("edge", "10", "30", "20")

        done = publish(client, "edge", v2, H(2))
        assert counts(done) == (1, 1, 1, "20")
        (line,) = march(client, "edge").lines
        assert (line.amount, [(p.version, p.quantity) for p in line.prices]) == ("40", [(1, "10"), (2, "10")])

        def at(at_ms: int) -> int:
            request = pricing_pb2.GetVersionRequest(rate_card_id="edge", at=ts(at_ms))
            return int(client.pricing.GetVersion(request).version)

        assert (at(H(2) - 1), at(H(2))) == (1, 2)


def test_a_simulation_over_a_window_holding_a_version_switch_prices_every_hour_of_it_by_the_simulated_version(
    server: ServerProcess,
) -> None:
    """README: "Every hour of the window is priced by the simulated version", the window widened to whole hours,
    and "the simulated amounts are what a publish from the window's start re-rates to". Version 1 (1 a unit) from
    H(0), version 2 (2 a unit) published ahead from H(2); 10 units at H(1) + 5 min (10) and 10 at H(3) + 5 min (20):
    30 now. Version 3 (3 a unit) simulated over [H(0), H(4)): 30 now, 60 simulated, delta 30; over [H(2), H(4)):
    20, 30, 10 (the 01:00 bucket only walked); over [H(1) + 30 min, H(2) + 1 ms), widened to [H(1), H(3)): the
    01:00 bucket, 10, 30, 20. The simulation changes nothing (still 30); publishing version 3 from H(2) re-rates by
    the simulated delta 10: 40."""
    with server.client() as client:
        card_with_customer(client, "switch", unit("1"))
        publish(client, "switch", draft(client, "switch", 1, unit("2")), H(2))
        send(client, "switch", "switch-1", H(1) + 5 * MINUTE_MS, 10)
        send(client, "switch", "switch-3", H(3) + 5 * MINUTE_MS, 10)
        v3 = draft(client, "switch", 1, unit("3"))
        assert simulate(client, "switch", v3, H(0), H(4)) == [("switch", "30", "60", "30"), ("total", "30", "60", "30")]
        assert simulate(client, "switch", v3, H(2), H(4))[0] == ("switch", "20", "30", "10")
        widened = simulate(client, "switch", v3, H(1) + 30 * MINUTE_MS, H(2) + 1)
        assert widened[0] == ("switch", "10", "30", "20")
        assert march(client, "switch").subtotal == "30"

        done = publish(client, "switch", v3, H(2))
        assert (done.rerated_amount_delta, march(client, "switch").subtotal) == ("10", "40")


def test_graduated_tiers_at_the_exact_edge_enter_no_next_tier_and_a_re_rating_from_the_edge_hour_prices_the_step(
    server: ServerProcess,
) -> None:
    """pricing.proto Tier: "covers quantities up to this bound (inclusive)", a tier's flat_price "added once when the
    tier is entered". Version 1 GRADUATED: up to 10 at 1 + flat 5, then 0.5 + flat 3. 10 units at H(1): p1(10) = 10
    + 5 = 15 (the second tier not entered: no 3); 1 more at H(2): p1(11) - p1(10) = 0.5 + 3 = 3.5; line 18.5.
    Version 2 (up to 10 at 2 + flat 5, then 1 + flat 4) published from H(2) re-rates the 02:00 bucket over the
    cumulative quantity: p2(11) - p2(10) = 1 + 4 = 5; the 01:00 hour keeps 15: line 20, delta 1.5."""
    with server.client() as client:
        card_with_customer(client, "gradedge", tiered(pricing_pb2.GRADUATED, [("10", "1", "5"), ("", "0.5", "3")]))
        send(client, "gradedge", "gradedge-1", H(1), 10)
        assert march(client, "gradedge").subtotal == "15"
        send(client, "gradedge", "gradedge-2", H(2), 1)
        assert march(client, "gradedge").subtotal == "18.5"

        v2 = draft(client, "gradedge", 1, tiered(pricing_pb2.GRADUATED, [("10", "2", "5"), ("", "1", "4")]))
        done = publish(client, "gradedge", v2, H(2))
        assert counts(done) == (1, 1, 1, "1.5")
        assert march(client, "gradedge").subtotal == "20"


def test_volume_tiers_at_the_exact_edge_simulate_the_whole_quantity_at_the_lower_tier(server: ServerProcess) -> None:
    """pricing.proto TierMode VOLUME: "the tier the whole quantity reaches prices all of it", up_to inclusive.
    Version 1 VOLUME: up to 10 at 2 + flat 1, then 1: 10 units at H(1) are 2 x 10 + 1 = 21; 1 more at H(2): p1(11)
    = 11, charged 11 - 21 = -10 (it gives back no more than the line's 21): line 11. Version 2 VOLUME (up to 10 at
    3, then 1) simulated over [H(1), H(2)): the 01:00 bucket, 21 now, p2(10) = 30 simulated, delta 9; over [H(0),
    H(3)): p2(11) = 11, so 11 now, 11 simulated, delta 0."""
    with server.client() as client:
        card_with_customer(client, "voledge", tiered(pricing_pb2.VOLUME, [("10", "2", "1"), ("", "1", "")]))
        send(client, "voledge", "voledge-1", H(1), 10)
        assert march(client, "voledge").subtotal == "21"
        send(client, "voledge", "voledge-2", H(2), 1)
        assert march(client, "voledge").subtotal == "11"

        v2 = draft(client, "voledge", 1, tiered(pricing_pb2.VOLUME, [("10", "3", ""), ("", "1", "")]))
        assert simulate(client, "voledge", v2, H(1), H(2))[0] == ("voledge", "21", "30", "9")
        assert simulate(client, "voledge", v2, H(0), H(3))[0] == ("voledge", "11", "11", "0")


def test_package_remainders_re_rated_from_a_later_hour_are_priced_over_the_periods_cumulative_quantity(
    server: ServerProcess,
) -> None:
    """pricing.proto PackagePrice: quantity rounded up to whole packages; README: re-rated buckets priced "over the
    period's cumulative quantity (so ... packages that straddle the effective hour come out as if the version had
    always been in force)". Version 1: packages of 10 at 5. 25 units at H(1): 3 packages, 15; 5 at H(2): 30 units
    are still 3 packages, 0; 1 at H(3): 4 packages, 5. Line 20. Version 2 (packages of 7 at 4) from H(2): H(2)
    p2(30) - p2(25) = 4 x 5 - 4 x 4 = 4; H(3) p2(31) - p2(30) = 4 x 5 - 4 x 5 = 0; 01:00 keeps 15: line 19. Two
    buckets re-rated (both changed), 2 events, delta (4 + 0) - (0 + 5) = -1. Simulating version 2 over [H(2), H(4))
    beforehand says the same: 5 now, 4 simulated, delta -1."""
    with server.client() as client:
        card_with_customer(client, "pkgrem", package("10", "5"))
        for name, at_ms, n in (("a", H(1), 25), ("b", H(2), 5), ("c", H(3), 1)):
            send(client, "pkgrem", f"pkgrem-{name}", at_ms, n)
        assert march(client, "pkgrem").subtotal == "20"

        v2 = draft(client, "pkgrem", 1, package("7", "4"))
        assert simulate(client, "pkgrem", v2, H(2), H(4))[0] == ("pkgrem", "5", "4", "-1")
        assert counts(publish(client, "pkgrem", v2, H(2))) == (1, 2, 2, "-1")
        assert march(client, "pkgrem").subtotal == "19"


def test_an_override_price_is_per_the_per_units_of_the_version_in_force_so_a_per_units_change_re_rates_it(
    server: ServerProcess,
) -> None:
    """contracts.proto PriceOverride.price: UNIT "the price per the rate's per_units (per_units is kept)"; TIERED
    "a flat unit price per the rate's per_units for the whole quantity; the tiers and their flat fees are dropped".
    Version 1: model t GRADUATED (up to 1000 at 0.05 + flat 1, then 0.03) per 1000; model u 9 per 100. Overrides
    (before any usage): t at 0.02, u at 0.5. 5,000 t units at H(1): 5 x 0.02 = 0.1 (not the tiers' 1 + 0.05 + 0.12
    = 1.17); 250 u units: 2.5 x 0.5 = 1.25; subtotal 1.35. Version 2, the same prices per 500 (t) and per 50 (u),
    simulated over March, then published from 2026-03-01: t 10 x 0.02 = 0.2, u 5 x 0.5 = 2.5: 2.7, delta 1.35; 2
    buckets, 2 events, 1 customer."""
    with server.client() as client:
        t_tiers = [("1000", "0.05", "1"), ("", "0.03", "")]
        card_with_customer(
            client, "perov", tiered(pricing_pb2.GRADUATED, t_tiers, "1000", model="t"), unit("9", "100", model="u")
        )
        override_price(client, "k-perov", "0.02", model="t")
        override_price(client, "k-perov", "0.5", model="u")
        send(client, "perov", "perov-t", H(1), 5000, model="t")
        send(client, "perov", "perov-u", H(1), 250, model="u")
        amounts = {line.dimensions["model"]: line.amount for line in march(client, "perov").lines}
        assert amounts == {"t": "0.1", "u": "1.25"}

        v2 = draft(
            client, "perov", 1, tiered(pricing_pb2.GRADUATED, t_tiers, "500", model="t"), unit("9", "50", model="u")
        )
        assert simulate(client, "perov", v2, MAR, H(2)) == [
            ("perov", "1.35", "2.7", "1.35"),
            ("total", "1.35", "2.7", "1.35"),
        ]
        assert counts(publish(client, "perov", v2, MAR)) == (1, 2, 2, "1.35")
        amounts = {line.dimensions["model"]: line.amount for line in march(client, "perov").lines}
        assert amounts == {"t": "0.2", "u": "2.5"}


def test_a_same_price_publish_counts_its_customer_and_leaves_adjustments_citing_equal_amounts(
    server: ServerProcess,
) -> None:
    """README: a customer none of whose buckets changes its amount has "its buckets only change version, each still
    with an adjustment entry, old and new amount equal ... it still counts in the reply's customers re-rated".
    Version 1 at 1 a unit; 10 units at H(1), 5 at H(2): 15. Version 2 with the same price from 2026-03-01: 1
    customer, 2 buckets, 2 events, delta 0; the line stays 15 with two adjustments, H(1) from [1] to 2, 10 -> 10,
    and H(2), 5 -> 5, each delta 0."""
    with server.client() as client:
        card_with_customer(client, "sameprice", unit("1"))
        send(client, "sameprice", "sameprice-1", H(1), 10)
        send(client, "sameprice", "sameprice-2", H(2), 5)
        assert counts(publish(client, "sameprice", draft(client, "sameprice", 1, unit("1")), MAR)) == (1, 2, 2, "0")
        (line,) = march(client, "sameprice").lines
        rows = [
            (a.hour.ToMilliseconds(), list(a.old_versions), a.new_version, a.old_amount, a.new_amount, a.delta)
            for a in line.adjustments
        ]
        assert line.amount == "15"
        assert rows == [(H(1), [1], 2, "10", "10", "0"), (H(2), [1], 2, "5", "5", "0")]


def test_a_rollbacks_copy_carries_its_note_its_prices_and_diffs_empty_against_the_version_it_copies(
    server: ServerProcess,
) -> None:
    """pricing.proto RollbackRateCardRequest: the copy is version latest+1, PUBLISHED, based_on_version =
    rollback_to_version = to_version, rollback_from_version = the version it replaced, no cohort, the change note
    "rollback of version F to version T: a copy of version T, effective from <time>"; RateCardVersion.created_by is
    the rollback's actor; README: "Every step is an audit entry naming who did it". Version 1 at 1 a unit, version
    2 at 2 from H(2); 10 units at H(3): 20. finance-lead rolls back to version 1 from H(3): version 3, from 2, note
    "rollback of version 2 to version 1: a copy of version 1, effective from 2026-03-01T03:00:00Z", 1 bucket
    re-rated, delta -10, the line 10. Diff 1 -> 3 is empty; 2 -> 3 is the one rate CHANGED, unit.price 2 -> 1. The
    audit entry: RollbackRateCard by finance-lead on rate_card/rbcopy/version/3, its diff naming version 3,
    rollback_from 2, rollback_to 1 and effective_from_ms H(3)."""
    with server.client() as client, server.client(actor="finance-lead") as finance:
        card_with_customer(client, "rbcopy", unit("1"))
        publish(client, "rbcopy", draft(client, "rbcopy", 1, unit("2")), H(2))
        send(client, "rbcopy", "rbcopy-1", H(3), 10)
        done = rollback(finance, "rbcopy", 1, H(3))
        copy = done.version
        assert (copy.version, copy.state, copy.based_on_version, copy.rollback_to_version) == (
            3,
            pricing_pb2.PUBLISHED,
            1,
            1,
        )
        assert (copy.rollback_from_version, copy.HasField("cohort"), copy.created_by) == (2, False, "finance-lead")
        assert copy.change_note == "rollback of version 2 to version 1: a copy of version 1, effective from " + (
            "2026-03-01T03:00:00Z"
        )
        assert list(copy.rates) == [unit("1")]
        assert counts(done) == (1, 1, 1, "-10") and march(client, "rbcopy").subtotal == "10"

        def diff(old: int, new: int) -> pricing_pb2.DiffVersionsResponse:
            request = pricing_pb2.DiffVersionsRequest(rate_card_id="rbcopy", from_version=old, to_version=new)
            answer: pricing_pb2.DiffVersionsResponse = client.pricing.DiffVersions(request)
            return answer

        assert diff(1, 3) == pricing_pb2.DiffVersionsResponse()
        (change,) = diff(2, 3).rates
        assert (change.kind, [(f.path, f.old_price, f.new_price) for f in change.fields]) == (
            pricing_pb2.CHANGED,
            [("unit.price", "2", "1")],
        )
        request = pricing_pb2.GetAuditLogRequest(target="rate_card/rbcopy/version/3")
        (entry,) = client.pricing.GetAuditLog(request).entries
        assert (entry.action, entry.actor) == ("RollbackRateCard", "finance-lead")
        written = json.loads(entry.diff)
        assert (written["version"], written["rollback_from"], written["rollback_to"]) == (3, 2, 1)
        assert written["effective_from_ms"] == H(3)


def test_refused_rollbacks_change_nothing_no_version_no_audit_entry_no_charge(server: ServerProcess) -> None:
    """README Rollback: "Refused, changing nothing": to a draft (FAILED_PRECONDITION), to an unknown version
    (NOT_FOUND), to prices already in force (FAILED_PRECONDITION naming the version in force), when no version is in
    force then (FAILED_PRECONDITION), an effective_from off the hour (INVALID_ARGUMENT naming it). Version 1 (1 a
    unit) is in force from H(5), version 2 a draft; 10 units at H(6): 10. Rollbacks to 2 from H(6) (a draft), to 9
    (unknown), to 1 from H(6) (version 1 in force), to 1 from H(2) (nothing in force) and to 1 from H(6) + 1 min
    (off the hour) are refused; after them the card's latest version is still 2, the audit log has no new entry
    and the charge is still 10."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="rbno", name="rbno", pricing_unit="USD"))
        draft(client, "rbno", 0, unit("1"))
        publish(client, "rbno", 1, H(5))
        open_contract(client, "rbno", "k-rbno", MAR, rate_card_id="rbno")
        send(client, "rbno", "rbno-1", H(6), 10)
        draft(client, "rbno", 1, unit("2"))
        before = audit_count(client)

        code, details = refusal(lambda: rollback(client, "rbno", 2, H(6)))
        assert code == S.FAILED_PRECONDITION, details
        code, details = refusal(lambda: rollback(client, "rbno", 9, H(6)))
        assert code == S.NOT_FOUND and "9" in details, details
        code, details = refusal(lambda: rollback(client, "rbno", 1, H(6)))
        assert code == S.FAILED_PRECONDITION and "version 1" in details, details
        code, details = refusal(lambda: rollback(client, "rbno", 1, H(2)))
        assert code == S.FAILED_PRECONDITION, details
        code, details = refusal(lambda: rollback(client, "rbno", 1, H(6) + MINUTE_MS))
        assert code == S.INVALID_ARGUMENT and "effective_from" in details, details

        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="rbno")).latest_version == 2
        assert audit_count(client) == before and march(client, "rbno").subtotal == "10"


def test_diff_of_a_version_with_itself_and_of_a_cohorts_version_with_the_same_prices_for_everyone_is_empty(
    server: ServerProcess,
) -> None:
    """README Diff: "A version compared with itself gives an empty answer"; "Prices are compared, not whom a
    version prices: a cohort's version and the same prices for everyone diff empty"; "an unknown card or version is
    NOT_FOUND, naming it". Version 2 (2 a unit) published for the cohort [dself]; version 3, the same price, for
    everyone; draft 4 at 5. Diff 2 -> 2, 4 -> 4, 2 -> 3 and 3 -> 2 are empty; 3 -> 4 is unit.price 2 -> 5; 3 -> 7
    is NOT_FOUND naming 7, card "nocard" NOT_FOUND naming it."""
    with server.client() as client:
        card_with_customer(client, "dself", unit("1"))
        publish(client, "dself", draft(client, "dself", 1, unit("2")), H(1), pricing_pb2.Cohort(customer_ids=["dself"]))
        publish(client, "dself", draft(client, "dself", 1, unit("2")), H(2))
        draft(client, "dself", 1, unit("5"))

        def diff(old: int, new: int, card: str = "dself") -> pricing_pb2.DiffVersionsResponse:
            request = pricing_pb2.DiffVersionsRequest(rate_card_id=card, from_version=old, to_version=new)
            answer: pricing_pb2.DiffVersionsResponse = client.pricing.DiffVersions(request)
            return answer

        empty = pricing_pb2.DiffVersionsResponse()
        assert [diff(2, 2), diff(4, 4), diff(2, 3), diff(3, 2)] == [empty] * 4
        assert [(f.path, f.new_price) for r in diff(3, 4).rates for f in r.fields] == [("unit.price", "5")]
        code, details = refusal(lambda: diff(3, 7))
        assert code == S.NOT_FOUND and "7" in details, details
        code, details = refusal(lambda: diff(1, 2, "nocard"))
        assert code == S.NOT_FOUND and "nocard" in details, details


def promotional(client: TariffClient, customer_id: str, grant_id: str, amount: str, priority: int, *only: str) -> None:
    grant = contracts_pb2.Grant(
        id=grant_id,
        contract_id=f"k-{customer_id}",
        kind=contracts_pb2.PROMOTIONAL,
        amount=amount,
        paid_amount="0",
        priority=priority,
        applicable_product_ids=only,
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def settled(client: TariffClient, customer_id: str) -> tuple[str, str, dict[str, str]]:
    """March's (subtotal, overage_amount, credits applied per grant)."""
    invoice = march(client, customer_id)
    return invoice.subtotal, invoice.overage_amount, {c.grant_id: c.credits for c in invoice.credits_applied}


def g1_g2_hour(client: TariffClient, name: str) -> None:
    """Card `name` in credits (a, b and b of model x at 1 a unit), g1 (20, any product, burns first) and g2 (10,
    `b` only); in H(1) an event charging b 20 then one charging a 6; 1 unit of b model x at H(3)."""
    rates = (unit("1", product_id="a"), unit("1", product_id="b"), unit("1", product_id="b", model="x"))
    card_with_customer(client, name, *rates, pricing_unit="credits")
    promotional(client, name, f"{name}-g1", "20", 1)
    promotional(client, name, f"{name}-g2", "10", 2, "b")
    send(client, name, f"{name}-b", H(1) + MINUTE_MS, 20, "eb")
    send(client, name, f"{name}-a", H(1) + 2 * MINUTE_MS, 6, "ea")
    send(client, name, f"{name}-x", H(3), 1, "eb", model="x")


def test_the_readme_g1_g2_hour_settled_again_by_product_leaves_nothing_overage(server: ServerProcess) -> None:
    """README: "grant g1 for any product holding 20, g2 for `b` only 10: an event charging `b` 20, then in the same
    hour one charging `a` 6, are 6 of overage on time; a publish that changes any bucket's amount of that customer's
    period settles g1 on `a`'s 6 and 14 of `b`, g2 on `b`'s other 6, and nothing is overage". On time: b's 20 from
    g1 (it burns first), a's 6 finds g1 empty: 6 overage; b model x's 1 at H(3) from g2. Subtotal 27, overage 6,
    g1 20, g2 1. Version 2 prices b model x at 2 from 2026-03-01: all 3 buckets change version (1 customer, 3
    buckets, 3 events) and only H(3)'s changes its amount (1 -> 2, delta 1), so the customer is settled again: H(1) by product, a's 6 from g1, b's 20 from g1
    (14) and g2 (6); H(3)'s 2 from g2. Subtotal 28, overage 0, g1 20, g2 8."""
    with server.client() as client:
        g1_g2_hour(client, "gg")
        assert settled(client, "gg") == ("27", "6", {"gg-g1": "20", "gg-g2": "1"})
        v2 = draft(client, "gg", 1, unit("2", product_id="b", model="x"))
        assert counts(publish(client, "gg", v2, MAR)) == (1, 3, 3, "1")
        assert settled(client, "gg") == ("28", "0", {"gg-g1": "20", "gg-g2": "8"})


def test_the_readme_g1_g2_hour_under_a_same_price_publish_keeps_its_6_of_overage(server: ServerProcess) -> None:
    """README: "a publish of the same prices leaves the 6 of overage" (no bucket changes its amount: the customer is
    not settled again, though it counts as re-rated). The hour of the test above; version 2 with the very same
    rates from 2026-03-01: 1 customer, 3 buckets (a, b, b model x), 3 events, delta 0; subtotal 27, overage 6, g1
    20, g2 1, as rated."""
    with server.client() as client:
        g1_g2_hour(client, "gs")
        v2 = draft(client, "gs", 1, unit("1", product_id="b", model="x"))
        assert counts(publish(client, "gs", v2, MAR)) == (1, 3, 3, "0")
        assert settled(client, "gs") == ("27", "6", {"gs-g1": "20", "gs-g2": "1"})


def test_the_readme_top_up_bought_at_71_keeps_the_next_20_overage_after_a_cut_to_51(server: ServerProcess) -> None:
    """README: "71 of overage bought a top-up, a cut takes those charges to 51, and the next 20 of charges after the
    purchase are overage, not the top-up's"; pricing.proto: "the cut gives back no overage while the top-up pays 20
    less". Card in credits, model a and b at 1 a unit; top-up policy below 2 recharge to 100 at 0.5, once a period;
    no grant. 71 units of a at H(1): nothing available, 71 overage, then the top-up is bought (100 credits, with
    March charged 71); 30 of b at H(2) draw it: 70 left. Subtotal 101, overage 71, top-up 30. Version 2 prices a at
    51 per 71 units from 2026-03-01: H(1) 71 -> 51, H(2) only its version (2 buckets, 2 events, delta -20); settled again the top-up pays only
    charges beyond 71: the 51 and b's first 20 are overage (71), b's other 10 from the top-up (90 left). Subtotal
    81, overage 71, top-up 10; no top-up bought or given back (50.00 USD of purchases)."""
    with server.client() as client:
        card_with_customer(client, "tu", unit("1", model="a"), unit("1", model="b"), pricing_unit="credits")
        policy = contracts_pb2.TopUpPolicy(threshold="2", recharge_to="100", price_per_credit="0.5", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="k-tu", top_up=policy))
        send(client, "tu", "tu-a", H(1), 71, model="a")
        send(client, "tu", "tu-b", H(2), 30, model="b")
        ((top_up, drawn),) = settled(client, "tu")[2].items()
        assert settled(client, "tu")[:2] == ("101", "71") and drawn == "30"

        v2 = draft(client, "tu", 1, unit("51", "71", model="a"))
        assert counts(publish(client, "tu", v2, MAR)) == (1, 2, 2, "-20")
        assert settled(client, "tu") == ("81", "71", {top_up: "10"})
        assert march(client, "tu").top_up_purchases == "50.00"


def rollback_chain(client: TariffClient, name: str) -> None:
    """Card `name`: version 1 at 1 from 2026-03-01, version 2 at 2 from H(1), version 3 the rollback to 1 from H(2),
    version 4 at 4 from H(3), version 5 the rollback to 3 from H(4) (a copy of a copy of version 1)."""
    card_with_customer(client, name, unit("1"))
    publish(client, name, draft(client, name, 1, unit("2")), H(1))
    rollback(client, name, 1, H(2))
    publish(client, name, draft(client, name, 1, unit("4")), H(3))
    rollback(client, name, 3, H(4))


def test_a_rollback_to_prices_a_copy_of_a_copy_holds_is_refused_naming_the_version_in_force(
    server: ServerProcess,
) -> None:
    """README Rollback: refused "when `to_version`'s prices are already in force at `effective_from` (that version,
    or a copy of it made by rollbacks: FAILED_PRECONDITION, naming the version in force)"; a retry while the copy a
    rollback to the same version made is in force from that hour answers with that copy. The chain above: version
    5 has rollback_to 3, rollback_from 4, based on 3, its prices version 1's. From H(5) a rollback to 1 or to 3 is
    refused naming version 5; to 1 from H(4) too (version 5 in force); to 1 from H(2) is a retry answered with
    version 3. Nothing is made: the latest version stays 5."""
    with server.client() as client:
        rollback_chain(client, "rbchain")
        five = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="rbchain", version=5))
        assert (five.rollback_to_version, five.rollback_from_version, five.based_on_version) == (3, 4, 3)
        assert list(five.rates) == [unit("1")]
        for to_version, at_ms in ((1, H(5)), (3, H(5)), (1, H(4))):
            code, details = refusal(lambda: rollback(client, "rbchain", to_version, at_ms))  # noqa: B023
            assert code == S.FAILED_PRECONDITION and "version 5 (" in details, details
        assert rollback(client, "rbchain", 1, H(2)).version.version == 3
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="rbchain")).latest_version == 5


def test_a_rollback_to_a_copy_while_the_version_it_copies_is_in_force_is_refused_without_calling_that_a_copy(
    server: ServerProcess,
) -> None:
    """README Rollback: refused, naming the version in force, when `to_version`'s prices are already in force by
    rollbacks: also when the version in force is the one `to_version` copies. In the chain above version 1 is in
    force at 2026-03-01T00:00:00Z and version 3 is its copy: a rollback to 3 from then is FAILED_PRECONDITION, and
    the message says version 1's prices are the ones version 3 copies, not that version 1 is "a copy of version 1"."""
    with server.client() as client:
        rollback_chain(client, "rborigin")
        code, details = refusal(lambda: rollback(client, "rborigin", 3, MAR))
        assert (code, details) == (
            S.FAILED_PRECONDITION,
            "rate card 'rborigin': version 1 (whose prices version 3 copies) is already in force at "
            "2026-03-01T00:00:00Z; rolling back to version 3 would change nothing",
        )
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="rborigin")).latest_version == 5


def test_a_simulation_from_a_version_switch_walks_graduated_tiers_over_the_hours_before_it(
    server: ServerProcess,
) -> None:
    """README: each line "is walked from its period's start, its hours before the window priced by the versions in
    force for them now"; pricing.proto: tiers are reached by the period's quantity whichever version priced the
    units before. Version 1 GRADUATED up to 10 at 1, then 0.5; version 2 (up to 10 at 2, then 1) published ahead
    from H(2). 8 units at H(1): p1(8) = 8; 8 at H(3): p2(16) - p2(8) = (20 + 6) - 16 = 10; 18 now. Version 3 (up to
    10 at 3, then 1.5) simulated over [H(2), H(4)): the 03:00 bucket, p3(16) - p3(8) = (30 + 9) - 24 = 15: 10 now, 15
    simulated, delta 5; over [H(0), H(4)): p3(8) = 24 and 15, 39 against 18, delta 21. Published from H(2): delta
    5, the line 8 + 15 = 23."""
    with server.client() as client:
        card_with_customer(client, "gradsw", tiered(pricing_pb2.GRADUATED, [("10", "1", ""), ("", "0.5", "")]))
        v2 = draft(client, "gradsw", 1, tiered(pricing_pb2.GRADUATED, [("10", "2", ""), ("", "1", "")]))
        publish(client, "gradsw", v2, H(2))
        send(client, "gradsw", "gradsw-1", H(1), 8)
        send(client, "gradsw", "gradsw-3", H(3), 8)
        assert march(client, "gradsw").subtotal == "18"

        v3 = draft(client, "gradsw", 1, tiered(pricing_pb2.GRADUATED, [("10", "3", ""), ("", "1.5", "")]))
        assert simulate(client, "gradsw", v3, H(2), H(4))[0] == ("gradsw", "10", "15", "5")
        assert simulate(client, "gradsw", v3, H(0), H(4))[0] == ("gradsw", "18", "39", "21")
        assert publish(client, "gradsw", v3, H(2)).rerated_amount_delta == "5"
        assert march(client, "gradsw").subtotal == "23"


def test_a_cohort_naming_an_empty_id_an_empty_attribute_value_or_unknown_customers_is_refused_changing_nothing(
    server: ServerProcess,
) -> None:
    """README Cohorts: refused, changing nothing (INVALID_ARGUMENT, naming the field): an id in customer_ids that is
    no customer ("all the unknown ones are named", in id order), an empty id, attribute key or attribute value.
    Draft 2 published for [""], for attributes {"segment": ""}, for ["zz", "cohref", "aa"]: each refused on
    cohort.customer_ids or cohort.attributes[segment], the last naming 'aa' then 'zz'; version 2 stays a DRAFT and
    the audit log has no new entry."""
    with server.client() as client:
        card_with_customer(client, "cohref", unit("1"))
        v2 = draft(client, "cohref", 1, unit("2"))
        before = audit_count(client)
        cohorts = [
            pricing_pb2.Cohort(customer_ids=[""]),
            pricing_pb2.Cohort(attributes={"segment": ""}),
            pricing_pb2.Cohort(customer_ids=["zz", "cohref", "aa"]),
        ]
        found = [refusal(lambda: publish(client, "cohref", v2, H(1), c)) for c in cohorts]  # noqa: B023
        assert [code for code, _ in found] == [S.INVALID_ARGUMENT] * 3
        assert found[0][1].startswith("cohort.customer_ids"), found[0]
        assert found[1][1].startswith("cohort.attributes[segment]"), found[1]
        assert found[2][1].startswith("cohort.customer_ids") and "'aa', 'zz'" in found[2][1], found[2]
        shown = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="cohref", version=v2))
        assert shown.state == pricing_pb2.DRAFT and audit_count(client) == before


def test_an_override_price_keeps_the_package_size_of_the_version_in_force_and_a_flat_fee_stays_the_overrides(
    server: ServerProcess,
) -> None:
    """contracts.proto PriceOverride.price: PACKAGE "the price of each started package (package_size is kept)",
    FLAT "the flat fee, due once the period's quantity is above zero". Version 1: model p packages of 10 at 5, model
    f flat 9; overrides (before usage) p at 2, f at 3. 25 p units at H(1): 3 packages x 2 = 6; 4 f units: 3. Version
    2 (packages of 7 at 9, flat 20) from 2026-03-01: p ceil(25 / 7) = 4 packages x 2 = 8, f still 3 (only its
    version changes): 2 buckets, 2 events, delta 2."""
    with server.client() as client:
        card_with_customer(client, "pkgov", package("10", "5", model="p"), flat("9", model="f"))
        override_price(client, "k-pkgov", "2", model="p")
        override_price(client, "k-pkgov", "3", model="f")
        send(client, "pkgov", "pkgov-p", H(1), 25, model="p")
        send(client, "pkgov", "pkgov-f", H(1), 4, model="f")
        assert {line.dimensions["model"]: line.amount for line in march(client, "pkgov").lines} == {"p": "6", "f": "3"}

        v2 = draft(client, "pkgov", 1, package("7", "9", model="p"), flat("20", model="f"))
        assert counts(publish(client, "pkgov", v2, MAR)) == (1, 2, 2, "2")
        assert {line.dimensions["model"]: line.amount for line in march(client, "pkgov").lines} == {"p": "8", "f": "3"}


def test_a_volume_drop_inside_one_hour_is_priced_as_one_step_when_re_rated_unlike_its_events_one_by_one(
    server: ServerProcess,
) -> None:
    """README: "a bucket is priced as one step, as if its events had arrived on time (the same as pricing them one by
    one except for a VOLUME price drop inside one hour bucket)"; pricing.proto Rate: a charge never gives back more
    than its line was charged so far. Version 1 VOLUME 1 a unit: 50 units at H(1), 50. Version 2 (VOLUME up to 50
    at 10, then 0.01) published ahead from H(2). At H(2) 10 units: p2(60) - p2(50) = 0.6 - 500, gives back only the
    line's 50 (line 0); then 1,000 units: p2(1060) - p2(60) = 10.6 - 0.6 = 10: the line is 10. Version 3, version
    2's prices, from H(2) prices the 02:00 bucket as one step: p2(1060) - p2(50) = 10.6 - 500, again at most the
    50 charged before it: -50, the line 0: 1 bucket, 2 events, delta -10."""
    with server.client() as client:
        card_with_customer(client, "voldrop", tiered(pricing_pb2.VOLUME, [("", "1", "")]))
        dearer_then_cheap = tiered(pricing_pb2.VOLUME, [("50", "10", ""), ("", "0.01", "")])
        publish(client, "voldrop", draft(client, "voldrop", 1, dearer_then_cheap), H(2))
        send(client, "voldrop", "voldrop-1", H(1), 50)
        send(client, "voldrop", "voldrop-2", H(2), 10)
        assert march(client, "voldrop").subtotal == "0"
        send(client, "voldrop", "voldrop-3", H(2) + MINUTE_MS, 1000)
        assert march(client, "voldrop").subtotal == "10"

        v3 = draft(client, "voldrop", 1, dearer_then_cheap)
        assert counts(publish(client, "voldrop", v3, H(2))) == (1, 1, 2, "-10")
        assert march(client, "voldrop").subtotal == "0"


def test_validation_findings_their_severities_and_what_publish_simulate_and_diff_make_of_them(
    server: ServerProcess,
) -> None:
    """README: "Validate it (exit status 1 if it has errors)"; pricing.proto Severity: an ERROR version "cannot be
    published (nor simulated)", a WARNING (a version without rates) publishes; SimulateVersionRequest: usage the
    version cannot price is FAILED_PRECONDITION naming the customer, the product and the hour, a period without usage
    gives zero totals; DiffVersionsRequest: a version diffed with itself is empty. Version 1 at 1 a unit, 10 units
    at H(3). Draft 2 prices `nope * 2`: one ERROR at rates[0].unit.price naming 'nope'; simulate and publish are
    INVALID_ARGUMENT naming version.rates[0].unit.price; diff 2 -> 2 is empty. Draft 3 has no rates: ok, one
    WARNING at `rates`; simulated over the hour of the usage it is FAILED_PRECONDITION naming customer "valid",
    product "units" and 2026-03-01T03:00:00Z; over [H(6), H(8)) zero totals. Nothing changed: the line is 10."""
    with server.client() as client:
        card_with_customer(client, "valid", unit("1"))
        send(client, "valid", "valid-1", H(3), 10)
        bad = draft(client, "valid", 1, unit("nope * 2"))
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="valid", version=bad))
        assert not report.ok and [(f.severity, f.path) for f in report.findings] == [
            (pricing_pb2.ERROR, "rates[0].unit.price")
        ]
        assert "'nope'" in report.findings[0].message
        for call in (lambda: simulate(client, "valid", bad, MAR, H(5)), lambda: publish(client, "valid", bad, H(4))):
            code, details = refusal(call)
            assert code == S.INVALID_ARGUMENT and details.startswith("version.rates[0].unit.price"), details
        request = pricing_pb2.DiffVersionsRequest(rate_card_id="valid", from_version=bad, to_version=bad)
        assert client.pricing.DiffVersions(request) == pricing_pb2.DiffVersionsResponse()

        empty = int(
            client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="valid")).version
        )
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id="valid", version=empty))
        assert report.ok and [(f.severity, f.path) for f in report.findings] == [(pricing_pb2.WARNING, "rates")]
        code, details = refusal(lambda: simulate(client, "valid", empty, MAR, H(5)))
        assert code == S.FAILED_PRECONDITION, details
        assert all(part in details for part in ('"valid"', '"units"', "2026-03-01T03:00:00Z")), details
        assert simulate(client, "valid", empty, H(6), H(8)) == [("total", "0", "0", "0")]
        assert march(client, "valid").subtotal == "10"


def test_a_publish_retried_without_effective_from_answers_as_the_first_call_re_rating_nothing(
    server: ServerProcess,
) -> None:
    """pricing.proto PublishVersion: "publishing a published version again, with the same effective_from or none,
    answers as the first call did (the version and its validation; the re-rating counts are zero)". Version 1 at 1
    a unit; 10 units at H(3); version 2 (2 a unit) from H(2): 1 customer, 1 bucket, 1 event, delta 10 (the line
    20). Published again with no effective_from: the same version (effective from H(2), not this hour), counts 0,
    delta "0", closed amount "0", no reason; the line stays 20."""
    with server.client() as client:
        card_with_customer(client, "pubretry", unit("1"))
        send(client, "pubretry", "pubretry-1", H(3), 10)
        first = publish(client, "pubretry", draft(client, "pubretry", 1, unit("2")), H(2))
        assert counts(first) == (1, 1, 1, "10")
        again = client.pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id="pubretry", version=2))
        assert again.version == first.version and again.version.effective_from.ToMilliseconds() == H(2)
        assert counts(again) == (0, 0, 0, "0")
        assert (again.closed_amount_left_alone, again.left_alone_reason) == ("0", "")
        assert march(client, "pubretry").subtotal == "20"


def test_graduated_tiers_per_100_units_at_the_edge_and_a_re_rating_moving_the_edge_onto_the_next_unit(
    server: ServerProcess,
) -> None:
    """pricing.proto Tier/TieredPrice: up_to in units (inclusive), unit_price per per_units, flat_price once the
    tier is entered. Version 1 GRADUATED per 100: up to 1000 at 2, then 1 + flat 5. 1,000 units at H(1): 10 x 2 =
    20 (tier 2 not entered); 1 at H(2): 0.01 x 1 + 5 = 5.01; line 25.01. Version 2 moves the edge to 1001 (up to 1001
    at 2, then 1 + flat 5) from H(2): the 02:00 bucket p2(1001) - p2(1000) = 0.01 x 2 = 0.02, tier 2 still not
    entered: line 20.02, 1 bucket, 1 event, delta 0.02 - 5.01 = -4.99."""
    with server.client() as client:
        v1_tiers = [("1000", "2", ""), ("", "1", "5")]
        card_with_customer(client, "grad100", tiered(pricing_pb2.GRADUATED, v1_tiers, "100"))
        send(client, "grad100", "grad100-1", H(1), 1000)
        assert march(client, "grad100").subtotal == "20"
        send(client, "grad100", "grad100-2", H(2), 1)
        assert march(client, "grad100").subtotal == "25.01"

        v2 = draft(client, "grad100", 1, tiered(pricing_pb2.GRADUATED, [("1001", "2", ""), ("", "1", "5")], "100"))
        assert counts(publish(client, "grad100", v2, H(2))) == (1, 1, 1, "-4.99")
        assert march(client, "grad100").subtotal == "20.02"


def test_the_readme_story_a_parameter_cut_diffed_published_rolled_back_and_each_step_in_the_audit_log(
    server: ServerProcess,
) -> None:
    """README: "the analyst changes one parameter": summary_base * gpt4_factor * complex_factor = 1 x 2.5 x 2 = 5,
    with gpt4_factor 2 it is 4; the diff shows "the parameter, and the ... rates it reprices, each with formula and
    price before and after"; "Every step is an audit entry naming who did it". The analyst drafts version 2
    (gpt4_factor=2, note "cut"), publishes it from H(2); finance-lead rolls back to 1 from H(3) (version 3). 1 summary
    at H(1) and 1 at H(2): 5 + 4 = 9. Diff 1 -> 2: parameter gpt4_factor CHANGED 2.5 -> 2; the rate REPRICED,
    unit.price written the same, priced 5 then 4. The card's audit entries after CreateRateCard: CreateDraftVersion
    (anonymous: version 1), PublishVersion, CreateDraftVersion and PublishVersion by analyst, RollbackRateCard by
    finance-lead; by actor analyst exactly its two; by action RollbackRateCard the one on version 3."""
    formula = "summary_base * gpt4_factor * complex_factor"
    with server.client() as client, server.client(actor="analyst") as analyst:
        with server.client(actor="finance-lead") as finance:
            client.pricing.CreateRateCard(
                pricing_pb2.CreateRateCardRequest(id="story", name="story", pricing_unit="credits")
            )
            first = pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="story",
                upsert_rates=[unit(formula)],
                set_parameters={"summary_base": "1", "gpt4_factor": "2.5", "complex_factor": "2"},
            )
            client.pricing.CreateDraftVersion(first)
            publish(client, "story", 1, MAR)
            open_contract(client, "story", "k-story", MAR, rate_card_id="story")
            cut = pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="story", based_on_version=1, set_parameters={"gpt4_factor": "2"}, change_note="cut"
            )
            assert analyst.pricing.CreateDraftVersion(cut).version == 2
            publish(analyst, "story", 2, H(2))
            send(client, "story", "story-1", H(1), 1)
            send(client, "story", "story-2", H(2), 1)
            assert march(client, "story").subtotal == "9"
            rollback(finance, "story", 1, H(3))

        request = pricing_pb2.DiffVersionsRequest(rate_card_id="story", from_version=1, to_version=2)
        diff = client.pricing.DiffVersions(request)
        assert [(p.name, p.old_value, p.new_value, p.kind) for p in diff.parameters] == [
            ("gpt4_factor", "2.5", "2", pricing_pb2.CHANGED)
        ]
        (rate,) = diff.rates
        assert rate.kind == pricing_pb2.REPRICED
        assert [(f.path, f.old_formula, f.new_formula, f.old_price, f.new_price) for f in rate.fields] == [
            ("unit.price", formula, formula, "5", "4")
        ]

        def entries(actor: str = "", action: str = "") -> list[tuple[str, str, str]]:
            request = pricing_pb2.GetAuditLogRequest(target="rate_card/story", actor=actor, action=action)
            return [(e.action, e.actor, e.target) for e in client.pricing.GetAuditLog(request).entries]

        assert entries()[1:] == [
            ("CreateDraftVersion", "anonymous", "rate_card/story/version/1"),
            ("PublishVersion", "anonymous", "rate_card/story/version/1"),
            ("CreateDraftVersion", "analyst", "rate_card/story/version/2"),
            ("PublishVersion", "analyst", "rate_card/story/version/2"),
            ("RollbackRateCard", "finance-lead", "rate_card/story/version/3"),
        ]
        assert [action for action, _, _ in entries(actor="analyst")] == ["CreateDraftVersion", "PublishVersion"]
        assert entries(action="RollbackRateCard") == [("RollbackRateCard", "finance-lead", "rate_card/story/version/3")]


def test_a_late_events_package_remainder_is_carried_into_the_first_re_rated_hour(server: ServerProcess) -> None:
    """README: "a late event there was charged at the top of the period's quantity when it arrived ...: a line's
    first re-rated hour also carries what those hours were charged less than on time, so the line is what rating its
    events on time with the new timeline ... charges, and a version with the very same prices leaves a tiered line as
    it was". Packages of 10 at 5. 5 units at H(3) arrive first (1 package: 5), then 5 late at H(1) (10 units, still
    1 package: 0), then 1 at H(4) (2 packages: 5): line 10. On time H(1) would be 5 and H(3) 0. Version 2, the same
    price, from H(3): H(3) p(10) - p(5) = 0 plus the 5 H(1) was charged less, H(4) 5: the line stays 10 (2 buckets
    change version, delta 0). Version 3, packages of 10 at 3, from H(3): H(3) 0 + 5, H(4) p3(11) - p3(10) = 3: line 8
    = on time 5 + 0 + 3, delta -2 (without the carry it would be 3), as simulating it over [H(3), H(5)) said
    beforehand: 10 now (5 + 5), 8 simulated, delta -2."""
    with server.client() as client:
        card_with_customer(client, "pkglate", package("10", "5"))
        for name, at_ms, n in (("a", H(3), 5), ("late", H(1), 5), ("b", H(4), 1)):
            send(client, "pkglate", f"pkglate-{name}", at_ms, n)
        assert march(client, "pkglate").subtotal == "10"

        same = publish(client, "pkglate", draft(client, "pkglate", 1, package("10", "5")), H(3))
        assert (counts(same), march(client, "pkglate").subtotal) == ((1, 2, 2, "0"), "10")
        v3 = draft(client, "pkglate", 1, package("10", "3"))
        assert simulate(client, "pkglate", v3, H(3), H(5))[0] == ("pkglate", "10", "8", "-2")
        cut = publish(client, "pkglate", v3, H(3))
        assert counts(cut) == (1, 2, 2, "-2")
        assert march(client, "pkglate").subtotal == "8"


def test_an_override_price_means_what_each_price_model_of_the_version_in_force_says_across_publishes(
    server: ServerProcess,
) -> None:
    """contracts.proto PriceOverride.price, by price model: UNIT per the rate's per_units, TIERED a flat unit price
    per per_units (tiers and flat fees dropped), PACKAGE per started package, FLAT the flat fee; a re-rating prices
    with "the contract's price overrides as they are now". Override price 2 (before usage); 25 units at H(1).
    Version 1 UNIT 9 per 10: 2.5 x 2 = 5. Each next version is simulated over [2026-03-01, H(2)), then published
    from 2026-03-01 (1 bucket, 1 event each): PACKAGE of 10 at 9: 3 packages x 2 = 6 (delta 1); VOLUME per 5 (up to
    10 at 5 + flat 100, then 1): 25 / 5 x 2 = 10 (delta 4); FLAT 50: 2 (delta -8); the rollback to version 1: 5
    again (delta 3)."""
    with server.client() as client:
        card_with_customer(client, "ovmodel", unit("9", "10"))
        override_price(client, "k-ovmodel", "2")
        send(client, "ovmodel", "ovmodel-1", H(1), 25)
        assert march(client, "ovmodel").subtotal == "5"

        volume = tiered(pricing_pb2.VOLUME, [("10", "5", "100"), ("", "1", "")], "5")
        for rate, before, after, delta in (
            (package("10", "9"), "5", "6", "1"),
            (volume, "6", "10", "4"),
            (flat("50"), "10", "2", "-8"),
        ):
            version = draft(client, "ovmodel", 1, rate)
            assert simulate(client, "ovmodel", version, MAR, H(2))[0] == ("ovmodel", before, after, delta)
            assert counts(publish(client, "ovmodel", version, MAR)) == (1, 1, 1, delta)
            assert march(client, "ovmodel").subtotal == after
        assert counts(rollback(client, "ovmodel", 1, MAR)) == (1, 1, 1, "3")
        assert march(client, "ovmodel").subtotal == "5"


def test_simulated_amounts_come_one_per_customer_and_product_by_id_unchanged_and_zero_ones_included(
    server: ServerProcess,
) -> None:
    """README: `simulate` "per customer and product ... prints the current amount, what version 2 would have charged
    ... and the delta, then the totals"; pricing.proto SimulateVersionResponse.amounts: by customer id, then product
    id, one per customer and product with usage in the window, also where nothing changes. Card `simorder`: a and b
    at 1 a unit, units at 0. Customers created in the order so-zb, so-m, so-aa each send at H(1) 1 b, 2 a and 3
    units. Version 2 prices a at 2; simulated over [2026-03-01, H(3)) without a customer filter: for so-aa, so-m,
    so-zb in turn, a 2 -> 4 (delta 2), b 1 -> 1 (0), units 0 -> 0 (0); totals 9, 15, 6. For customers so-m,
    so-idle (on the card, no usage: "gives no amounts") and so-m again: so-m's three rows only, totals 3 and 5."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="simorder", pricing_unit="USD"))
        draft(client, "simorder", 0, unit("1", product_id="b"), unit("1", product_id="a"), unit("0"))
        publish(client, "simorder", 1, MAR)
        for customer_id in ("so-zb", "so-m", "so-aa"):
            open_contract(client, customer_id, f"k-{customer_id}", MAR, rate_card_id="simorder")
            send(client, customer_id, f"{customer_id}-b", H(1), 1, "eb")
            send(client, customer_id, f"{customer_id}-a", H(1), 2, "ea")
            send(client, customer_id, f"{customer_id}-u", H(1), 3)
        v2 = draft(client, "simorder", 1, unit("2", product_id="a"))
        request = pricing_pb2.SimulateVersionRequest(
            rate_card_id="simorder", version=v2, period_start=ts(MAR), period_end=ts(H(3))
        )
        answer = client.pricing.SimulateVersion(request)
        rows = [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts]
        assert rows == [
            (customer_id, product_id, now, then, delta)
            for customer_id in ("so-aa", "so-m", "so-zb")
            for product_id, now, then, delta in (("a", "2", "4", "2"), ("b", "1", "1", "0"), ("units", "0", "0", "0"))
        ]
        totals = answer.totals
        assert (totals.current_amount, totals.simulated_amount, totals.delta) == ("9", "15", "6")

        open_contract(client, "so-idle", "k-so-idle", MAR, rate_card_id="simorder")
        request.customer_ids[:] = ["so-m", "so-idle", "so-m"]
        answer = client.pricing.SimulateVersion(request)
        assert [(a.customer_id, a.product_id) for a in answer.amounts] == [
            ("so-m", "a"),
            ("so-m", "b"),
            ("so-m", "units"),
        ]
        assert (answer.totals.current_amount, answer.totals.simulated_amount) == ("3", "5")


def test_a_rollback_before_a_later_effective_version_re_rates_only_the_hours_up_to_it_unlike_its_simulation(
    server: ServerProcess,
) -> None:
    """README: a customer's price at t comes from "the newest-effective published version"; simulate prices "every
    hour of the window ... by the simulated version, also hours a version that took effect later ... prices now
    (a version published effective after the window's start ...): publishing from the window's start leaves those
    hours to that version". Version 1 at 1, version 2 at 2 from H(2), version 3 at 3 published ahead from H(10). 10
    units at H(6) (20) and 10 at H(11) (30): 50. Version 1 simulated over [H(5), H(12)): 50 now, 10 + 10 = 20, delta
    -30. The rollback to 1 from H(5) (version 4, replacing 2) re-rates the 06:00 bucket only: 1 bucket, delta -10;
    the line 10 + 30 = 40; GetVersion at H(6) is 4, at H(11) still 3."""
    with server.client() as client:
        card_with_customer(client, "rblater", unit("1"))
        publish(client, "rblater", draft(client, "rblater", 1, unit("2")), H(2))
        publish(client, "rblater", draft(client, "rblater", 1, unit("3")), H(10))
        send(client, "rblater", "rblater-6", H(6), 10)
        send(client, "rblater", "rblater-11", H(11), 10)
        assert march(client, "rblater").subtotal == "50"
        assert simulate(client, "rblater", 1, H(5), H(12))[0] == ("rblater", "50", "20", "-30")

        done = rollback(client, "rblater", 1, H(5))
        assert (done.version.version, done.version.rollback_from_version) == (4, 2)
        assert counts(done) == (1, 1, 1, "-10") and march(client, "rblater").subtotal == "40"

        def at(at_ms: int) -> int:
            request = pricing_pb2.GetVersionRequest(rate_card_id="rblater", at=ts(at_ms))
            return int(client.pricing.GetVersion(request).version)

        assert (at(H(6)), at(H(11))) == (4, 3)


def test_decimal_quantities_reach_package_and_tier_edges_exactly_when_rated_simulated_and_re_rated(
    server: ServerProcess,
) -> None:
    """Money and quantities are exact decimals: 0.1 + 0.2 units are 0.3, not 0.30000000000000004 (which would start a
    fourth package and leave VOLUME's first tier). Packages of 0.1 at 1: 0.1 and 0.2 at H(1) are 3 packages, 3; 0.3
    more at H(2), 6 packages, 6. Version 2 (packages of 0.3 at 2) simulated over [H(2), H(3)): p2(0.6) - p2(0.3) =
    4 - 2 = 2 against 3, delta -1; published from H(2): 1 bucket, delta -1, the line 5. VOLUME up to 0.3 at 10, then
    1: 0.1 and 0.2 at H(1) are all in the first tier (up_to inclusive): 3."""
    with server.client() as client:
        card_with_customer(client, "decpkg", package("0.1", "1"))
        send(client, "decpkg", "decpkg-1", H(1), 0.1)
        send(client, "decpkg", "decpkg-2", H(1), 0.2)
        (line,) = march(client, "decpkg").lines
        assert (line.quantity, line.amount) == ("0.3", "3")
        send(client, "decpkg", "decpkg-3", H(2), 0.3)
        assert march(client, "decpkg").subtotal == "6"
        v2 = draft(client, "decpkg", 1, package("0.3", "2"))
        assert simulate(client, "decpkg", v2, H(2), H(3))[0] == ("decpkg", "3", "2", "-1")
        assert counts(publish(client, "decpkg", v2, H(2))) == (1, 1, 1, "-1")
        assert march(client, "decpkg").subtotal == "5"

        card_with_customer(client, "decvol", tiered(pricing_pb2.VOLUME, [("0.3", "10", ""), ("", "1", "")]))
        send(client, "decvol", "decvol-1", H(1), 0.1)
        send(client, "decvol", "decvol-2", H(1), 0.2)
        assert march(client, "decvol").subtotal == "3"
