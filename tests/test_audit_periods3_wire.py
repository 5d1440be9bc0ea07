"""A third acceptance audit of billing period calendars and contract lifecycles over the wire, against a real server
driven only through gRPC as proto/tariff/v1/*.proto and README ("Contract switches", "Invoices and revenue") describe
them. The earlier audits (test_audit_periods_wire.py, test_audit_contracts_wire.py, test_audit_contracts3_wire.py,
test_server_cohorts.py) leave out what this file covers: anchors on the 29th, 30th and 31st and on Feb 29 across
leap and common years, off midnight; the boundary instant of a period (it opens the next one) for tiers and flat
fees; late events at a closed period's edge; a closed last period of a switched-away contract, whose monthly range
overlaps the next contract's open first period; a contract created afterwards inside a closed period's range; usage
after a contract's end and grants made for an ended contract; a switch between two rate cards; versions effective
exactly at a period boundary; top-ups across a switch, counted per contract period; invoices' totals as the sums of
their lines, and PreviewInvoice equal to the invoice ClosePeriod makes of the same usage.

Every amount asserted is computed by hand from the docs (the arithmetic is in the docstrings and comments), none read
back from the server. Everything happens in periods long over (2024 .. 2025), with `--close-grace off` so no period
closes by itself while a test runs.

Products (SUM of `n`): `units` (event type `work`) at 1 credit a unit; `grad` (event type `grad`), GRADUATED: up to
100 at 1 a unit plus a flat 10, then 0.5 a unit plus a flat 5; `flat` (event type `flat`), FLAT 7 a period. Rate
card `p3` (credits), version 1 in force from 2024-01-01. Rate card `p3-b` (credits): `units` at 2 a unit, from
2024-01-01. Rate card `p3-v` (credits): `units` at 1 a unit from 2024-01-01 (version 1), at 3 a unit from
2025-03-01T00:00:00Z (version 2, published before any usage). Rate card `p3-r` (credits): `grad` as on `p3`, from
2024-01-01 (version 1; one test publishes a version 2). Rate card `p3-c` (credits): `units` at 1 a unit from
2024-01-01 (version 1; one test publishes a cohort's version 2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, preview, rejected_in, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_cli import tariff

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def at(text: str) -> int:
    """Unix ms of an ISO-8601 UTC instant ("2024-02-29T12:00:00.500")."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def publish(client: TariffClient, card: str, version: int, rates: list[pricing_pb2.Rate], from_ms: int) -> None:
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, based_on_version=version - 1, upsert_rates=rates)
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=card, version=version, effective_from=stamp(from_ms))
    )


def unit_rate(product_id: str, price: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=price))


def graduated(tiers: list[pricing_pb2.Tier]) -> pricing_pb2.TieredPrice:
    return pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers)


def catalogue(client: TariffClient) -> None:
    for product_id, event_type in (("units", "work"), ("grad", "grad"), ("flat", "flat")):
        product = pricing_pb2.Product(id=product_id, event_type=event_type, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    tiers = [
        pricing_pb2.Tier(up_to="100", unit_price="1", flat_price="10"),
        pricing_pb2.Tier(up_to="", unit_price="0.5", flat_price="5"),
    ]
    since = at("2024-01-01T00:00:00")
    for card in ("p3", "p3-b", "p3-v", "p3-r", "p3-c"):
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
    publish(
        client,
        "p3",
        1,
        [
            unit_rate("units", "1"),
            pricing_pb2.Rate(
                product_id="grad", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers)
            ),
            pricing_pb2.Rate(product_id="flat", flat=pricing_pb2.FlatPrice(price="7")),
        ],
        since,
    )
    publish(client, "p3-b", 1, [unit_rate("units", "2")], since)
    publish(client, "p3-r", 1, [pricing_pb2.Rate(product_id="grad", tiered=graduated(tiers))], since)
    publish(client, "p3-v", 1, [unit_rate("units", "1")], since)
    publish(client, "p3-c", 1, [unit_rate("units", "1")], since)
    publish(client, "p3-v", 2, [unit_rate("units", "3")], at("2025-03-01T00:00:00"))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-periods3")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def contract(
    client: TariffClient, customer_id: str, contract_id: str, start_ms: int, end_ms: int | None = None, **fields: Any
) -> contracts_pb2.Contract:
    """A contract on card `p3` unless given (audit_fixtures.open_contract)."""
    fields.setdefault("rate_card_id", "p3")
    return open_contract(client, customer_id, contract_id, start_ms, end_ms, **fields)


def event(
    transaction_id: str, customer_id: str, n: float, at_ms: int, event_type: str = "work"
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        values={"n": n},
    )


def period_of(client: TariffClient, customer_id: str, at_ms: int) -> tuple[str, int, int]:
    invoice = preview(client, customer_id, at_ms)
    return invoice.contract_id, invoice.period_start.ToMilliseconds(), invoice.period_end.ToMilliseconds()


def close(client: TariffClient, customer_id: str, start_ms: int) -> invoices_pb2.Invoice:
    request = invoices_pb2.ClosePeriodRequest(customer_id=customer_id, period_start=stamp(start_ms))
    invoice: invoices_pb2.Invoice = client.invoices.ClosePeriod(request)
    return invoice


def lines(invoice: invoices_pb2.Invoice) -> list[tuple[str, str, str, int]]:
    """(line id, quantity, amount, events) of each line."""
    return [(line.line_id, line.quantity, line.amount, line.events) for line in invoice.lines]


def refusal(call: Any) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(TariffError) as failed:
        call()
    return failed.value.code, failed.value.details


def but_final_fields(invoice: invoices_pb2.Invoice) -> invoices_pb2.Invoice:
    copy = invoices_pb2.Invoice()
    copy.CopyFrom(invoice)
    for name in ("invoice_number", "status", "closed_at"):
        copy.ClearField(name)
    return copy


def assert_totals_are_the_sums_of_lines(invoice: invoices_pb2.Invoice) -> None:
    """invoices.proto: subtotal = sum of line amounts; each line's amount = its credits + overage; overage_amount =
    sum of lines' overage; overage_due = the lines' rounded amounts due + rounding_adjustment; total_due =
    overage_due + top_up_purchases; the invoice's credits_applied per grant = the lines' credits per grant."""
    amount = sum((Decimal(line.amount) for line in invoice.lines), Decimal(0))
    overage = sum((Decimal(line.overage) for line in invoice.lines), Decimal(0))
    assert Decimal(invoice.subtotal) == amount
    assert Decimal(invoice.overage_amount) == overage
    per_grant: dict[str, Decimal] = {}
    for line in invoice.lines:
        credits = sum((Decimal(c.credits) for c in line.credits_applied), Decimal(0))
        assert Decimal(line.amount) == credits + Decimal(line.overage)
        for c in line.credits_applied:
            per_grant[c.grant_id] = per_grant.get(c.grant_id, Decimal(0)) + Decimal(c.credits)
    assert {c.grant_id: Decimal(c.credits) for c in invoice.credits_applied} == per_grant
    dues = sum((Decimal(line.amount_due) for line in invoice.lines), Decimal(0))
    assert Decimal(invoice.overage_due) == dues + Decimal(invoice.rounding_adjustment)
    assert Decimal(invoice.total_due) == Decimal(invoice.overage_due) + Decimal(invoice.top_up_purchases)


# Calendars ---------------------------------------------------------------------------------------------------------


def test_anchors_on_the_29th_30th_31st_and_feb_29_clamp_per_month_without_drifting_across_leap_years(
    server: ServerProcess,
) -> None:
    """contracts.proto Contract.starting_at: monthly periods anchored on the start (UTC); a day past a month's end is
    clamped to its last day, each boundary the anchor moved n months (so it never drifts to the clamped day).
    Off midnight the anchor keeps its time of day. One flat event (7 credits) in each period read, so each period
    bills its own flat fee once.

    - `a30`: from 2024-01-30T12:00Z: 2024-01-30 12:00 -> 02-29 12:00 (leap) -> 03-30 12:00; ... 2025-01-30 12:00 ->
      2025-02-28 12:00 (common) -> 2025-03-30 12:00.
    - `a29`: from 2025-01-29T00:00Z: 01-29 -> 02-28 -> 03-29.
    - `feb29`: from 2024-02-29T06:00Z: 02-29 -> 03-29 -> ... -> 2025-01-29 -> 2025-02-28 06:00 -> 2025-03-29 06:00.
    - `a31`: from 2024-12-31T23:00Z: 12-31 23:00 -> 2025-01-31 23:00 -> 02-28 23:00 -> 03-31 23:00 -> 04-30 23:00.

    The boundary instant opens the next period; one millisecond before it is the previous one's."""
    with server.client() as client:
        contract(client, "a30", "a30-c", at("2024-01-30T12:00:00"))
        contract(client, "a29", "a29-c", at("2025-01-29T00:00:00"))
        contract(client, "feb29", "feb29-c", at("2024-02-29T06:00:00"))
        contract(client, "a31", "a31-c", at("2024-12-31T23:00:00"))
        expected = {
            "a30": [
                ("2024-02-29T11:59:59.999", "2024-01-30T12:00:00", "2024-02-29T12:00:00"),
                ("2024-02-29T12:00:00", "2024-02-29T12:00:00", "2024-03-30T12:00:00"),
                ("2025-02-28T11:59:59.999", "2025-01-30T12:00:00", "2025-02-28T12:00:00"),
                ("2025-02-28T12:00:00", "2025-02-28T12:00:00", "2025-03-30T12:00:00"),
                ("2025-03-30T12:00:00", "2025-03-30T12:00:00", "2025-04-30T12:00:00"),
            ],
            "a29": [
                ("2025-02-27T23:59:59.999", "2025-01-29T00:00:00", "2025-02-28T00:00:00"),
                ("2025-02-28T00:00:00", "2025-02-28T00:00:00", "2025-03-29T00:00:00"),
            ],
            "feb29": [
                ("2024-03-29T05:59:59.999", "2024-02-29T06:00:00", "2024-03-29T06:00:00"),
                ("2025-02-28T06:00:00", "2025-02-28T06:00:00", "2025-03-29T06:00:00"),
                ("2025-03-29T05:00:00", "2025-02-28T06:00:00", "2025-03-29T06:00:00"),
            ],
            "a31": [
                ("2025-01-31T22:59:59.999", "2024-12-31T23:00:00", "2025-01-31T23:00:00"),
                ("2025-02-28T22:59:59.999", "2025-01-31T23:00:00", "2025-02-28T23:00:00"),
                ("2025-02-28T23:00:00", "2025-02-28T23:00:00", "2025-03-31T23:00:00"),
                ("2025-04-30T23:00:00", "2025-04-30T23:00:00", "2025-05-31T23:00:00"),
            ],
        }
        for customer_id, rows in expected.items():
            events = [
                event(f"{customer_id}-{i}", customer_id, 1, at(instant), "flat")
                for i, (instant, _, _) in enumerate(rows)
            ]
            assert rejected_in(client, *events) == []
            for instant, start, end in rows:
                invoice = preview(client, customer_id, at(instant))
                assert (invoice.period_start.ToMilliseconds(), invoice.period_end.ToMilliseconds()) == (
                    at(start),
                    at(end),
                ), (customer_id, instant)
                # One flat fee a period: 7 credits, however many events of the period (feb29's last two share one).
                assert invoice.subtotal == "7", (customer_id, instant)
        # ClosePeriod names a period by its exact start: the clamped Feb 29 is one; the unclamped Mar 1 is not, and
        # the refusal names the nearest start (Feb 29 12:00, a day before; Mar 30 12:00 is 29 days after).
        assert close(client, "a30", at("2024-02-29T12:00:00")).period_end.ToMilliseconds() == at("2024-03-30T12:00:00")
        code, details = refusal(lambda: close(client, "a30", at("2024-03-01T12:00:00")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "2024-02-29T12:00:00Z" in details


def test_the_boundary_instant_opens_the_next_period_for_tiers_and_flat_fees(server: ServerProcess) -> None:
    """`edge`: from 2025-01-31T00:00Z, so periods Jan 31 - Feb 28 and Feb 28 - Mar 31 (2025 is common).

    grad (cumulative per period, GRADUATED 1/unit + 10 up to 100, then 0.5/unit + 5):
      - 20 units at Jan 31 00:00:00.000 (the contract's start: first period) and 90 at Feb 27 23:59:59.999 (first):
        110 units: 10 + 100 x 1 + 5 + 10 x 0.5 = 120.
      - 20 units at Feb 28 00:00:00.000 (the boundary: second period): 10 + 20 = 30, its cumulative starting anew.
    flat: one event each at Feb 27 23:59:59.999 and Feb 28 00:00: 7 in each period.
    A grad event at Jan 30 23:59:59.999 (before the contract) is NO_ACTIVE_CONTRACT.
    Totals: first period 120 + 7 = 127 of overage at 1 USD: 127.00 due; second 30 + 7 = 37: 37.00."""
    boundary = at("2025-02-28T00:00:00")
    with server.client() as client:
        contract(client, "edge", "edge-c", at("2025-01-31T00:00:00"))
        rejected = rejected_in(
            client,
            event("g0", "edge", 1, at("2025-01-30T23:59:59.999"), "grad"),
            event("g1", "edge", 20, at("2025-01-31T00:00:00"), "grad"),
            event("g2", "edge", 90, boundary - 1, "grad"),
            event("g3", "edge", 20, boundary, "grad"),
            event("f1", "edge", 1, boundary - 1, "flat"),
            event("f2", "edge", 1, boundary, "flat"),
        )
        assert rejected == [("g0", "NO_ACTIVE_CONTRACT")]
        first, second = preview(client, "edge", boundary - 1), preview(client, "edge", boundary)
        assert lines(first) == [("flat", "1", "7", 1), ("grad", "110", "120", 2)]
        assert lines(second) == [("flat", "1", "7", 1), ("grad", "20", "30", 1)]
        assert (first.subtotal, first.overage_amount, first.total_due) == ("127", "127", "127.00")
        assert (second.subtotal, second.overage_amount, second.total_due) == ("37", "37", "37.00")
        for invoice in (first, second):
            assert_totals_are_the_sums_of_lines(invoice)


def test_a_closed_period_refuses_late_events_to_its_last_millisecond_and_the_next_takes_its_first(
    server: ServerProcess,
) -> None:
    """`late`: from 2025-01-31T00:00Z (periods Jan 31 - Feb 28 - Mar 31). 2 units on Feb 10 (first period: 2 credits),
    then ClosePeriod(Jan 31): the final invoice equals the draft read just before, but for number, status and
    closed_at. Late events: Feb 27 23:59:59.999 is PERIOD_CLOSED; Feb 28 00:00 (the boundary) is the next period's
    and accepted: 5 units there, 5 credits. The first period still previews as its final invoice (at any instant
    inside it), and closing it again answers the same invoice."""
    boundary = at("2025-02-28T00:00:00")
    with server.client() as client:
        contract(client, "late", "late-c", at("2025-01-31T00:00:00"))
        assert rejected_in(client, event("l1", "late", 2, at("2025-02-10T00:00:00"))) == []
        draft = preview(client, "late", at("2025-02-01T00:00:00"))
        final = close(client, "late", at("2025-01-31T00:00:00"))
        assert final.status == invoices_pb2.INVOICE_FINAL
        assert but_final_fields(final) == but_final_fields(draft)
        assert (final.subtotal, final.total_due) == ("2", "2.00")
        assert rejected_in(client, event("l2", "late", 3, boundary - 1), event("l3", "late", 5, boundary)) == [
            ("l2", "PERIOD_CLOSED")
        ]
        assert preview(client, "late", boundary - 1) == final
        assert close(client, "late", at("2025-01-31T00:00:00")) == final
        assert lines(preview(client, "late", boundary)) == [("units", "5", "5", 1)]


# Contract switches and ends -----------------------------------------------------------------------------------------


def test_a_closed_last_period_of_a_switched_away_contract_does_not_close_the_next_contracts_overlapping_days(
    server: ServerProcess,
) -> None:
    """`sw`: `sw-old` from 2025-01-15 ending 2025-02-01 (its one period keeps its monthly end: Jan 15 - Feb 15, holding
    the usage dated before Feb 1); `sw-new` from Feb 1 (periods Feb 1 - Mar 1 - Apr 1). README "Closing": afterwards
    events *for that period* are rejected with PERIOD_CLOSED. After ClosePeriod(Jan 15):
      - Jan 31 23:59:59.999 (sw-old's, closed): PERIOD_CLOSED;
      - Feb 1 00:00 and Feb 10 (sw-new's Feb period, open though inside sw-old's closed Jan 15 - Feb 15): accepted.
    Then ClosePeriod(Feb 1): Feb 14 is PERIOD_CLOSED, Mar 1 accepted. ClosePeriod(Feb 10), no period's start:
    INVALID_ARGUMENT naming the nearest start, Feb 1 (9 days before; Mar 1 is 19 days after, Jan 15 26 days before).
    Amounts: old 4 units on Jan 20 = 4; new 1 + 2 units = 3; March 8 units = 8."""
    jan15, feb1, mar1 = at("2025-01-15T00:00:00"), at("2025-02-01T00:00:00"), at("2025-03-01T00:00:00")
    with server.client() as client:
        contract(client, "sw", "sw-old", jan15, feb1)
        contract(client, "sw", "sw-new", feb1)
        assert rejected_in(client, event("o1", "sw", 4, at("2025-01-20T00:00:00"))) == []
        old = close(client, "sw", jan15)
        assert (old.contract_id, old.period_end.ToMilliseconds(), old.subtotal) == (
            "sw-old",
            at("2025-02-15T00:00:00"),
            "4",
        )
        after_old = rejected_in(
            client,
            event("o2", "sw", 100, feb1 - 1),
            event("n1", "sw", 1, feb1),
            event("n2", "sw", 2, at("2025-02-10T00:00:00")),
        )
        assert after_old == [("o2", "PERIOD_CLOSED")]
        new = preview(client, "sw", feb1)
        assert (new.contract_id, lines(new)) == ("sw-new", [("units", "3", "3", 2)])
        closed_new = close(client, "sw", feb1)
        assert but_final_fields(closed_new) == but_final_fields(new)
        assert rejected_in(client, event("n3", "sw", 16, at("2025-02-14T00:00:00")), event("n4", "sw", 8, mar1)) == [
            ("n3", "PERIOD_CLOSED")
        ]
        assert lines(preview(client, "sw", mar1)) == [("units", "8", "8", 1)]
        code, details = refusal(lambda: close(client, "sw", at("2025-02-10T00:00:00")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "2025-02-01T00:00:00Z" in details


def test_a_contract_created_later_inside_a_closed_periods_range_takes_its_own_events(server: ServerProcess) -> None:
    """`gone`: `gone-old` from 2025-01-15 ending 2025-02-01, its period Jan 15 - Feb 15 closed (3 units on Jan 20: 3).
    Then `gone-new` is created from 2025-02-05 (contracts never overlap: it starts after gone-old's end): its first
    period Feb 5 - Mar 5 is open, so Feb 10 (inside gone-old's closed range) is accepted (6 units: 6); Feb 3 (no
    contract in force) is NO_ACTIVE_CONTRACT; Jan 31 is PERIOD_CLOSED."""
    jan15, feb1, feb5 = at("2025-01-15T00:00:00"), at("2025-02-01T00:00:00"), at("2025-02-05T00:00:00")
    with server.client() as client:
        contract(client, "gone", "gone-old", jan15, feb1)
        assert rejected_in(client, event("g1", "gone", 3, at("2025-01-20T00:00:00"))) == []
        assert close(client, "gone", jan15).subtotal == "3"
        contract(client, "gone", "gone-new", feb5)
        rejected = rejected_in(
            client,
            event("g2", "gone", 6, at("2025-02-10T00:00:00")),
            event("g3", "gone", 1, at("2025-02-03T00:00:00")),
            event("g4", "gone", 1, at("2025-01-31T00:00:00")),
        )
        assert rejected == [("g3", "NO_ACTIVE_CONTRACT"), ("g4", "PERIOD_CLOSED")]
        assert period_of(client, "gone", at("2025-02-10T00:00:00")) == ("gone-new", feb5, at("2025-03-05T00:00:00"))
        assert lines(preview(client, "gone", feb5)) == [("units", "6", "6", 1)]


def test_usage_after_a_contracts_end_is_no_active_contract_and_a_grant_for_the_ended_contract_pays_its_late_usage(
    server: ServerProcess,
) -> None:
    """`end`: one contract from 2025-03-10 ending 2025-03-20T00:00Z, no successor; its one period keeps its monthly
    end (Mar 10 - Apr 10). Events: Mar 19 23:59:59.999 accepted (5 units, overage 5), Mar 20 00:00 (the end) and
    Mar 25 NO_ACTIVE_CONTRACT. Then a 3-credit grant under the ended contract: starts_at defaults to the contract's
    start (contracts.proto GrantCreditsRequest), so it pays the late event of Mar 15 (2 units: 2 credits). Invoice:
    7 units, 7 credits, grant 2, overage 5 at 1 USD = 5.00; the grant's balance 3 granted, 2 drawn, 1 remaining.
    A preview at Mar 25 (after the end, inside the last period's monthly range): FAILED_PRECONDITION naming the
    period that holds it."""
    mar10, mar20 = at("2025-03-10T00:00:00"), at("2025-03-20T00:00:00")
    with server.client() as client:
        contract(client, "end", "end-c", mar10, mar20)
        rejected = rejected_in(
            client,
            event("e1", "end", 5, mar20 - 1),
            event("e2", "end", 1, mar20),
            event("e3", "end", 1, at("2025-03-25T00:00:00")),
        )
        assert rejected == [("e2", "NO_ACTIVE_CONTRACT"), ("e3", "NO_ACTIVE_CONTRACT")]
        made = client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(id="end-g", contract_id="end-c", kind=contracts_pb2.PROMOTIONAL, amount="3")
            )
        )
        assert made.starts_at.ToMilliseconds() == mar10
        assert rejected_in(client, event("e4", "end", 2, at("2025-03-15T00:00:00"))) == []
        invoice = preview(client, "end", mar10)
        assert (invoice.period_start.ToMilliseconds(), invoice.period_end.ToMilliseconds()) == (
            mar10,
            at("2025-04-10T00:00:00"),
        )
        assert lines(invoice) == [("units", "7", "7", 2)]
        assert [(c.grant_id, c.credits) for c in invoice.credits_applied] == [("end-g", "2")]
        assert (invoice.overage_amount, invoice.total_due) == ("5", "5.00")
        assert [(g.grant_id, g.granted, g.drawn, g.remaining) for g in invoice.grant_balances] == [
            ("end-g", "3", "2", "1")
        ]
        assert_totals_are_the_sums_of_lines(invoice)
        # balance.proto Balance.period_charges: no contract is in force now, so no current period.
        balance = client.get_balance("end")
        assert (balance.period_charges, balance.HasField("period_start"), balance.HasField("period_end")) == (
            "0",
            False,
            False,
        )
        code, details = refusal(lambda: preview(client, "end", at("2025-03-25T00:00:00")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "2025-03-10T00:00:00Z" in details


def test_a_switch_between_rate_cards_prices_each_side_by_its_own_card_and_flat_fees_once_per_contract_period(
    server: ServerProcess,
) -> None:
    """`cards`: `cards-old` on `p3` from 2025-01-15 ending 2025-02-01; `cards-new` on `p3-b` (units at 2) from Feb 1.
    units: 10 on Jan 20 (old: 10 x 1 = 10), 10 on Feb 5 (new: 10 x 2 = 20), 1 on Jan 31 23:59:59.999 sent last (old:
    11 units, 11 credits). flat (only `p3` prices it): Jan 20 and Jan 31 on the old contract, one flat fee (7);
    Feb 5 under `cards-new` is NO_APPLICABLE_RATE (p3-b has no flat rate), though inside the old's monthly range.
    Grants: `c-old` 15 credits under cards-old (from Jan 15), `c-new` 100 under cards-new (from Feb
    1). Draw order (priority 0 both, creation order): Jan 20 10 units -> c-old 10 (left 5); Jan 20 flat 7 -> c-old 5,
    overage 2; Feb 5 20 credits -> c-old has 0 left, c-new 20; Jan 31 1 unit -> c-old 0, c-new starts Feb 1 so it
    cannot pay Jan 31: overage 1; flat on Jan 31 adds nothing (one fee a period).
    Old invoice: units 11 / 11, flat 2 events / 7; subtotal 18; credits c-old 15; overage 3 -> 3.00 due.
    New invoice: units 10 / 20; credits c-new 20; due 0.00. The old invoice's balances list both grants started
    before its end (Feb 15): c-old 15 drawn 15 remaining 0 expired 0; c-new
    granted 100, drawn 0 by its periods (the new contract's draws are the next invoice's), remaining 100."""
    jan15, feb1 = at("2025-01-15T00:00:00"), at("2025-02-01T00:00:00")
    with server.client() as client:
        contract(client, "cards", "cards-old", jan15, feb1)
        contract(client, "cards", "cards-new", feb1, rate_card_id="p3-b")
        for grant_id, contract_id, amount in (("c-old", "cards-old", "15"), ("c-new", "cards-new", "100")):
            grant = contracts_pb2.Grant(
                id=grant_id, contract_id=contract_id, kind=contracts_pb2.PROMOTIONAL, amount=amount
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        rejected = rejected_in(
            client,
            event("u1", "cards", 10, at("2025-01-20T00:00:00")),
            event("f1", "cards", 1, at("2025-01-20T00:00:00"), "flat"),
            event("u2", "cards", 10, at("2025-02-05T00:00:00")),
            event("f2", "cards", 1, at("2025-02-05T00:00:00"), "flat"),
            event("u3", "cards", 1, feb1 - 1),
            event("f3", "cards", 1, feb1 - 1, "flat"),
        )
        assert rejected == [("f2", "NO_APPLICABLE_RATE")]
        old, new = preview(client, "cards", jan15), preview(client, "cards", feb1)
        assert (old.contract_id, lines(old)) == ("cards-old", [("flat", "2", "7", 2), ("units", "11", "11", 2)])
        assert [(p.rate_card_id, p.version) for line in old.lines for p in line.prices] == [("p3", 1), ("p3", 1)]
        assert [(c.grant_id, c.credits) for c in old.credits_applied] == [("c-old", "15")]
        assert (old.subtotal, old.overage_amount, old.total_due) == ("18", "3", "3.00")
        assert (new.contract_id, lines(new)) == ("cards-new", [("units", "10", "20", 1)])
        assert [(p.rate_card_id, p.version) for line in new.lines for p in line.prices] == [("p3-b", 1)]
        assert [(c.grant_id, c.credits) for c in new.credits_applied] == [("c-new", "20")]
        assert (new.subtotal, new.overage_amount, new.total_due) == ("20", "0", "0.00")
        assert sorted((g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in old.grant_balances) == [
            ("c-new", "100", "0", "100", "0"),
            ("c-old", "15", "15", "0", "0"),
        ]
        for invoice in (old, new):
            assert_totals_are_the_sums_of_lines(invoice)
        assert but_final_fields(close(client, "cards", jan15)) == but_final_fields(old)
        assert but_final_fields(close(client, "cards", feb1)) == but_final_fields(new)


def test_a_version_effective_at_a_period_boundary_prices_each_side_of_it(server: ServerProcess) -> None:
    """`ver` on `p3-v` from 2025-02-01 (periods Feb 1 - Mar 1 - Apr 1); version 2 (units at 3) is in force from
    Mar 1 00:00, the boundary. 4 units at Feb 28 23:59:59.999 (version 1: 4) and 5 at Mar 1 00:00 (version 2: 15).
    Each invoice has one applied price: February version 1, 4 units, 4, unit price 1; March version 2, 5, 15,
    unit price 3."""
    mar1 = at("2025-03-01T00:00:00")
    with server.client() as client:
        contract(client, "ver", "ver-c", at("2025-02-01T00:00:00"), rate_card_id="p3-v")
        assert rejected_in(client, event("v1", "ver", 4, mar1 - 1), event("v2", "ver", 5, mar1)) == []
        february, march = preview(client, "ver", mar1 - 1), preview(client, "ver", mar1)
        shown = [
            [(p.version, p.quantity, p.amount, p.unit_price, p.events) for line in i.lines for p in line.prices]
            for i in (february, march)
        ]
        assert shown == [[(1, "4", "4", "1", 1)], [(2, "5", "15", "3", 1)]]
        assert (february.subtotal, march.subtotal) == ("4", "15")


def test_top_ups_across_a_switch_count_per_contract_period_and_each_invoice_bills_its_own(
    server: ServerProcess,
) -> None:
    """`tu`: `tu-old` from 2025-01-15 ending 2025-02-01 (period Jan 15 - Feb 15), `tu-new` from Feb 1 (Feb 1 - Mar 1).
    Top-up policy (set through tu-old, the customer's): threshold 10, recharge to 100, 0.5 USD a credit, at most 1 a
    period. No credit at first (contracts.proto TopUpPolicy: the purchase follows the draw):
      1. Jan 20, 30 units (old): 30 overage; available 0 < 10: buys 100 - 0 = 100 credits (50 USD), in the old
         contract's period.
      2. Feb 5, 95 units (new): 95 from the first top-up (5 left); 5 < 10: buys 100 - 5 = 95 (47.5 USD), counted in
         the new contract's period (its own max of 1).
      3. Feb 6, 100 units (new): 5 from the first, 95 from the second (creation order); 0 left, the new period's one
         purchase made: none.
      4. Jan 25, 10 units (old, late): nothing left: 10 overage; the old period's purchase made: none.
    Old invoice: 40 units, 40 overage at 1 USD = 40.00, top-ups 50.00, total 90.00.
    New invoice: 195 units, credits 100 + 95, overage 0, top-ups 47.50, total 47.50."""
    jan15, feb1 = at("2025-01-15T00:00:00"), at("2025-02-01T00:00:00")
    with server.client() as client:
        contract(client, "tu", "tu-old", jan15, feb1)
        contract(client, "tu", "tu-new", feb1)
        policy = contracts_pb2.TopUpPolicy(threshold="10", recharge_to="100", price_per_credit="0.5", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="tu-old", top_up=policy))
        for n, (units, when) in enumerate(
            ((30, "2025-01-20"), (95, "2025-02-05"), (100, "2025-02-06"), (10, "2025-01-25")), start=1
        ):
            assert rejected_in(client, event(f"t{n}", "tu", units, at(f"{when}T00:00:00"))) == []
        old, new = preview(client, "tu", jan15), preview(client, "tu", feb1)
        assert (lines(old), old.overage_amount, old.overage_due, old.top_up_purchases, old.total_due) == (
            [("units", "40", "40", 2)],
            "40",
            "40.00",
            "50.00",
            "90.00",
        )
        assert old.credits_applied == []
        assert (lines(new), new.overage_amount, new.overage_due, new.top_up_purchases, new.total_due) == (
            [("units", "195", "195", 2)],
            "0",
            "0.00",
            "47.50",
            "47.50",
        )
        assert sorted(Decimal(c.credits) for c in new.credits_applied) == [95, 100]
        for invoice in (old, new):
            assert_totals_are_the_sums_of_lines(invoice)
        assert but_final_fields(close(client, "tu", jan15)) == but_final_fields(old)
        assert but_final_fields(close(client, "tu", feb1)) == but_final_fields(new)


def test_close_period_at_no_start_names_the_nearest_start_of_any_period_an_ended_contract_included(
    server: ServerProcess,
) -> None:
    """invoices.proto ClosePeriodRequest: a period_start that is no period's start is INVALID_ARGUMENT saying the
    nearest one. `near`: one contract from 2025-01-10 ending 2025-03-20, no successor: periods Jan 10 - Feb 10 -
    Mar 10 - Apr 10 (the last keeps its monthly end). ClosePeriod(Mar 25), after the end but inside the last period:
    the nearest start is Mar 10 (15 days before; Apr 10 starts no period), not the contract's start Jan 10 (74 days
    before). ClosePeriod(Feb 12), while in force: Feb 10."""
    with server.client() as client:
        contract(client, "near", "near-c", at("2025-01-10T00:00:00"), at("2025-03-20T00:00:00"))
        for asked, nearest in (("2025-03-25", "2025-03-10"), ("2025-02-12", "2025-02-10")):
            code, details = refusal(partial(close, client, "near", at(f"{asked}T00:00:00")))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert f"the nearest period start is {nearest}T00:00:00Z" in details, details


def test_a_retroactive_publish_across_a_switch_leaves_the_closed_old_period_alone_and_re_rates_the_new_one(
    server: ServerProcess,
) -> None:
    """`rr`: `rr-old` on `p3-r` from 2025-01-15 ending 2025-02-01 (period Jan 15 - Feb 15), `rr-new` on `p3-r` from
    Feb 1 (Feb 1 - Mar 1). grad under version 1 (1/unit + 10 up to 100, then 0.5/unit + 5), cumulative per period:
      old: 50 units on Jan 20: 10 + 50 = 60.
      new: 60 on Feb 5 (10 + 60 = 70), 60 on Feb 6 (40 x 1 + 5 + 20 x 0.5 = 55): 120 units, 125.
    ClosePeriod(Jan 15) makes the old invoice final (60). Then version 2 (up to 100 at 2 a unit, beyond at 1, no flat
    fees) is published effective 2025-01-20T00:00Z: the old period's Jan 20 bucket is closed, left alone (1 bucket,
    1 event, 60), though its days overlap the new contract's open period; the new period's two buckets are re-rated:
    Feb 5 60 x 2 = 120 (+50), Feb 6 40 x 2 + 20 x 1 = 100 (+45): 2 buckets, 2 events, 1 customer, delta +95.
    A late event on Feb 7, 10 units, version 2 over the cumulative 120: 10. New invoice: 130 units, 230, one
    applied price (version 2, 130 units, 230, 3 events); adjustments Feb 5 70 -> 120 and Feb 6 55 -> 100.
    The old invoice stays as closed."""
    jan15, feb1 = at("2025-01-15T00:00:00"), at("2025-02-01T00:00:00")
    feb5, feb6 = at("2025-02-05T00:00:00"), at("2025-02-06T00:00:00")
    with server.client() as client:
        contract(client, "rr", "rr-old", jan15, feb1, rate_card_id="p3-r")
        contract(client, "rr", "rr-new", feb1, rate_card_id="p3-r")
        rejected = rejected_in(
            client,
            event("r1", "rr", 50, at("2025-01-20T00:00:00"), "grad"),
            event("r2", "rr", 60, feb5, "grad"),
            event("r3", "rr", 60, feb6, "grad"),
        )
        assert rejected == []
        assert lines(preview(client, "rr", feb1)) == [("grad", "120", "125", 2)]
        old = close(client, "rr", jan15)
        assert lines(old) == [("grad", "50", "60", 1)]
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="p3-r",
                based_on_version=1,
                upsert_rates=[
                    pricing_pb2.Rate(
                        product_id="grad",
                        tiered=graduated(
                            [
                                pricing_pb2.Tier(up_to="100", unit_price="2", flat_price="0"),
                                pricing_pb2.Tier(up_to="", unit_price="1", flat_price="0"),
                            ]
                        ),
                    )
                ],
            )
        )
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="p3-r", version=2, effective_from=stamp(at("2025-01-20T00:00:00"))
            )
        )
        assert (
            published.closed_buckets_left_alone,
            published.closed_events_left_alone,
            published.closed_amount_left_alone,
        ) == (1, 1, "60")
        assert (
            published.buckets_rerated,
            published.events_rerated,
            published.customers_rerated,
            published.rerated_amount_delta,
        ) == (2, 2, 1, "95")
        assert rejected_in(client, event("r4", "rr", 10, at("2025-02-07T00:00:00"), "grad")) == []
        new = preview(client, "rr", feb1)
        (line,) = new.lines
        assert (line.quantity, line.amount, line.events) == ("130", "230", 3)
        assert [(p.version, p.quantity, p.amount, p.events) for p in line.prices] == [(2, "130", "230", 3)]
        assert [(a.hour.ToMilliseconds(), a.old_amount, a.new_amount, a.delta) for a in line.adjustments] == [
            (feb5, "70", "120", "50"),
            (feb6, "55", "100", "45"),
        ]
        assert_totals_are_the_sums_of_lines(new)
        assert preview(client, "rr", jan15) == old


def test_a_rollover_on_a_31st_anchor_rolls_at_the_clamped_feb_28_and_lasts_to_mar_31(server: ServerProcess) -> None:
    """README "Rollover": a grant with rollover_fraction lasts until the end of the billing period it starts in; then
    fraction x remainder moves into ROLLOVER grant `rollover-<grant>-<period end ms>` with the same cost basis,
    usable until the end of the next period; the rest is breakage. `ro`: contract from 2025-01-31T00:00Z (periods
    Jan 31 - Feb 28 - Mar 31, the clamped calendar). Grant `ro-g`: 100 credits bought for 50 USD, fraction 0.5,
    starting 2025-02-10 (in the Jan 31 period). Both ends have long passed, so the clock driver rolls it at Feb 28
    (50 roll; 50 break) and the ROLLOVER grant, from Feb 28 to Mar 31 (not Mar 28, nor
    Mar 30), breaks whole. Invoices' balances: Jan 31 period: ro-g 100 granted, 50 drawn (the share that moved),
    0 remaining, 50 expired; Feb 28 period adds the rollover grant: 50, 0 drawn, 0 remaining, 50 expired."""
    jan31, feb28, mar31 = at("2025-01-31T00:00:00"), at("2025-02-28T00:00:00"), at("2025-03-31T00:00:00")
    with server.client() as client:
        contract(client, "ro", "ro-c", jan31)
        grant = contracts_pb2.Grant(
            id="ro-g",
            contract_id="ro-c",
            kind=contracts_pb2.PREPAID,
            amount="100",
            paid_amount="50",
            rollover_fraction="0.5",
        )
        grant.starts_at.CopyFrom(stamp(at("2025-02-10T00:00:00")))
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        rolled_id = f"rollover-ro-g-{feb28}"

        def expired() -> dict[str, str]:
            return {g.grant_id: g.expired for g in client.get_balance("ro").grants}

        assert wait_for(lambda: expired() == {"ro-g": "50", rolled_id: "50"}, 15), expired()
        (rolled,) = [g for g in client.get_balance("ro").grants if g.grant_id == rolled_id]
        # GrantBalance.recognized_revenue counts draws only: none here.
        assert (rolled.kind, rolled.amount, rolled.recognized_revenue) == (contracts_pb2.ROLLOVER, "50", "0")
        assert (rolled.starts_at.ToMilliseconds(), rolled.expires_at.ToMilliseconds()) == (feb28, mar31)

        def balances() -> list[list[tuple[str, str, str, str, str]]]:
            return [
                sorted(
                    (g.grant_id, g.granted, g.drawn, g.remaining, g.expired)
                    for g in preview(client, "ro", t).grant_balances
                )
                for t in (jan31, feb28)
            ]

        # GetBalance shows the rollover before the clock driver journals it (README "Rollover"), but the Feb 28
        # draft lists the ROLLOVER grant only once that record has made it: wait for the drafts themselves.
        expected = [
            [("ro-g", "100", "50", "0", "50")],
            [("ro-g", "100", "50", "0", "50"), (rolled_id, "50", "0", "0", "50")],
        ]
        assert wait_for(lambda: balances() == expected, 15), balances()


def test_a_switch_to_another_currency_bills_each_invoice_in_its_contracts_currency_and_the_customer_is_not_reported(
    server: ServerProcess,
) -> None:
    """`cur`: `cur-old` from 2025-01-15 ending 2025-02-01 in USD (overage 1 USD a credit), `cur-new` from Feb 1 in JPY
    (overage 150 JPY a credit, minor unit 0). No credit. 3 units on Jan 20: 3 USD ("3.00"); 2 units on Feb 5:
    2 x 150 = 300 JPY ("300"). invoices.proto GetRevenueReportRequest: a customer whose own contracts bill in two
    currencies cannot be reported: INVALID_ARGUMENT."""
    jan15, feb1 = at("2025-01-15T00:00:00"), at("2025-02-01T00:00:00")
    with server.client() as client:
        contract(client, "cur", "cur-old", jan15, feb1)
        contract(client, "cur", "cur-new", feb1, currency="JPY", overage_price="150")
        assert (
            rejected_in(
                client,
                event("c1", "cur", 3, at("2025-01-20T00:00:00")),
                event("c2", "cur", 2, at("2025-02-05T00:00:00")),
            )
            == []
        )
        old, new = preview(client, "cur", jan15), preview(client, "cur", feb1)
        assert (old.currency, old.minor_unit, old.overage_due, old.total_due) == ("USD", 2, "3.00", "3.00")
        assert (new.currency, new.minor_unit, new.overage_due, new.total_due) == ("JPY", 0, "300", "300")
        report = invoices_pb2.GetRevenueReportRequest(
            customer_id="cur", period_start=stamp(jan15), period_end=stamp(at("2025-03-01T00:00:00"))
        )
        code, _ = refusal(partial(client.invoices.GetRevenueReport, report))
        assert code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_grant_with_a_rollover_fraction_must_start_in_a_billing_period(server: ServerProcess) -> None:
    """contracts.proto Grant.rollover_fraction: such a grant lasts until the end of the billing period in which it
    starts. One starting when no contract of its customer is in force has no such period: it used to be granted and
    then never rolled over, paying in every later period as a grant without a fraction (100 credits at fraction 0.5
    from 2025-02-01, the contract from 2025-03-01: 10 credits drawn on Mar 5 and 10 more on May 5, two periods
    later, none rolled). Now it is FAILED_PRECONDITION, granting nothing:
      - `pre` (contract from 2025-03-01): starts_at 2025-02-01, before the contract: refused; starts_at 2025-03-01
        (its first period, Mar 1 - Apr 1): granted, and rolled over at Apr 1; a grant without a fraction may still
        start on Feb 1.
      - `later` (its only contract from 2027-03-01, after the server's clock): no starts_at and no contract, so from
        now, when no contract is in force: refused; naming the contract, it starts with it (2027-03-01): granted."""
    mar1 = at("2025-03-01T00:00:00")
    with server.client() as client:
        contract(client, "pre", "pre-c", mar1)
        contract(client, "later", "later-c", at("2027-03-01T00:00:00"))

        def rolling(
            grant_id: str, starts_at_ms: int | None = None, customer_id: str = "", contract_id: str = ""
        ) -> contracts_pb2.GrantCreditsRequest:
            grant = contracts_pb2.Grant(
                id=grant_id,
                customer_id=customer_id,
                contract_id=contract_id,
                kind=contracts_pb2.PROMOTIONAL,
                amount="100",
                rollover_fraction="0.5",
            )
            if starts_at_ms is not None:
                grant.starts_at.CopyFrom(stamp(starts_at_ms))
            return contracts_pb2.GrantCreditsRequest(grant=grant)

        for request in (
            rolling("pre-g", at("2025-02-01T00:00:00"), customer_id="pre"),
            rolling("later-g", customer_id="later"),
        ):
            code, details = refusal(partial(client.contracts.GrantCredits, request))
            assert code == grpc.StatusCode.FAILED_PRECONDITION, details
            assert "rollover" in details and "no contract" in details, details
        assert [list(client.get_balance(c).grants) for c in ("pre", "later")] == [[], []]

        assert (
            client.contracts.GrantCredits(rolling("pre-g", mar1, customer_id="pre")).starts_at.ToMilliseconds() == mar1
        )
        plain = contracts_pb2.Grant(
            id="pre-plain", customer_id="pre", kind=contracts_pb2.PROMOTIONAL, amount="1", priority=9
        )
        plain.starts_at.CopyFrom(stamp(at("2025-02-01T00:00:00")))
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=plain))
        made = client.contracts.GrantCredits(rolling("later-g", contract_id="later-c"))
        assert made.starts_at.ToMilliseconds() == at("2027-03-01T00:00:00")

        # pre-g rolls at its period's end, Apr 1 (50 roll, 50 break), its ROLLOVER grant lasting until May 1 (both
        # long past: the clock driver records them at once). Then usage: Mar 5, 10 units: pre-g holds nothing after
        # its rollover (breakage is final), the ROLLOVER grant starts Apr 1: pre-plain pays 1, 9 overage; May 5,
        # 10 units: overage 10.
        rolled_id = f"rollover-pre-g-{at('2025-04-01T00:00:00')}"

        def expired() -> dict[str, str]:
            return {g.grant_id: g.expired for g in client.get_balance("pre").grants}

        assert wait_for(lambda: expired() == {"pre-g": "50", "pre-plain": "0", rolled_id: "50"}, 15), expired()
        assert (
            rejected_in(
                client,
                event("p1", "pre", 10, at("2025-03-05T00:00:00")),
                event("p2", "pre", 10, at("2025-05-05T00:00:00")),
            )
            == []
        )
        shown = [
            ([(c.grant_id, c.credits) for c in invoice.credits_applied], invoice.overage_amount)
            for invoice in (preview(client, "pre", mar1), preview(client, "pre", at("2025-05-01T00:00:00")))
        ]
        assert shown == [([("pre-plain", "1")], "9"), ([], "10")]


def test_a_contract_lists_its_own_grants_and_its_customers_unattached_ones_not_the_servers(
    server: ServerProcess,
) -> None:
    """contracts.proto Contract.grants: `lg-old` from 2025-01-15 ending 2025-02-01, `lg-new` from Feb 1. Grants:
    `lg-a` under lg-old, `lg-b` under lg-new, `lg-c` for the customer alone (starting Jan 20, in lg-old's time).
    A top-up policy (threshold 5, recharge to 50) buys one TOP_UP grant at the first event (available 1 + 2 + 3
    = 6, 2 units leave 4 < 5: buys 46). Each contract lists its own grant and lg-c, in creation order; the
    server's top-up is in GetBalance only."""
    jan15, feb1 = at("2025-01-15T00:00:00"), at("2025-02-01T00:00:00")
    with server.client() as client:
        contract(client, "lg", "lg-old", jan15, feb1)
        contract(client, "lg", "lg-new", feb1)
        for grant_id, owner, amount in (("lg-a", "lg-old", "1"), ("lg-b", "lg-new", "2"), ("lg-c", "", "3")):
            grant = contracts_pb2.Grant(
                id=grant_id, contract_id=owner, customer_id="lg", kind=contracts_pb2.PROMOTIONAL, amount=amount
            )
            if not owner:
                grant.starts_at.CopyFrom(stamp(at("2025-01-20T00:00:00")))
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        policy = contracts_pb2.TopUpPolicy(threshold="5", recharge_to="50", price_per_credit="1", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="lg-new", top_up=policy))
        assert rejected_in(client, event("lg1", "lg", 2, at("2025-02-05T00:00:00"))) == []
        listed = [
            [g.id for g in client.contracts.GetContract(contracts_pb2.GetContractRequest(id=c)).grants]
            for c in ("lg-old", "lg-new")
        ]
        assert listed == [["lg-a", "lg-c"], ["lg-b", "lg-c"]]
        top_ups = [(g.kind, g.amount) for g in client.get_balance("lg").grants if g.kind == contracts_pb2.TOP_UP]
        assert top_ups == [(contracts_pb2.TOP_UP, "46")]


def test_a_cohort_version_effective_at_a_period_boundary_prices_its_members_from_that_instant(
    server: ServerProcess,
) -> None:
    """pricing.proto Cohort and PublishVersionRequest.cohort: at time t a customer's price comes from the newest
    effective version whose cohort contains it; membership is decided at publish and, for a customer created
    later, when it is created. On `p3-c`, version 2 (units at 5) for the cohort {tier: gold}, effective
    2025-03-01T00:00Z, the boundary of contracts from 2025-02-01 (periods Feb 1 - Mar 1 - Apr 1). `coh-a` (gold,
    before the publish), `coh-b` (gold, created after it: joins), `coh-c` (silver). 1 unit each at Feb 28
    23:59:59.999 and at Mar 1 00:00: gold members pay 1 (version 1) in February and 5 (version 2) in March;
    coh-c pays 1 and 1 (version 1)."""
    feb1, mar1 = at("2025-02-01T00:00:00"), at("2025-03-01T00:00:00")
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="coh-a", attributes={"tier": "gold"}))
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="p3-c",
                based_on_version=1,
                upsert_rates=[unit_rate("units", "5")],
            )
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="p3-c",
                version=2,
                effective_from=stamp(mar1),
                cohort=pricing_pb2.Cohort(attributes={"tier": "gold"}),
            )
        )
        for customer_id, tier in (("coh-b", "gold"), ("coh-c", "silver")):
            client.contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(id=customer_id, attributes={"tier": tier})
            )
        shown = {}
        for customer_id in ("coh-a", "coh-b", "coh-c"):
            contract(client, customer_id, f"{customer_id}-k", feb1, rate_card_id="p3-c")
            assert (
                rejected_in(
                    client,
                    event(f"{customer_id}-1", customer_id, 1, mar1 - 1),
                    event(f"{customer_id}-2", customer_id, 1, mar1),
                )
                == []
            )
            shown[customer_id] = [
                [(p.version, p.amount) for line in preview(client, customer_id, t).lines for p in line.prices]
                for t in (feb1, mar1)
            ]
        assert shown == {
            "coh-a": [[(1, "1")], [(2, "5")]],
            "coh-b": [[(1, "1")], [(2, "5")]],
            "coh-c": [[(1, "1")], [(1, "1")]],
        }


def test_a_contract_without_id_is_keyed_by_customer_and_start_even_when_its_default_id_is_taken(
    server: ServerProcess,
) -> None:
    """contracts.proto CreateContract: "Key: id; when empty, the customer and the start", the id then the customer id
    and the start's UTC date. Another contract may already hold that id: `idb`'s explicit `ida-20250101`, or `ida`'s
    own explicit `ida-20250301` starting Feb 1. Such a call's key (customer, start) is new, so it makes a contract,
    under the id with ".2" added (".3", ... while taken); a retry answers the same contract, and the same key with
    another request is ALREADY_EXISTS. It used to be ALREADY_EXISTS "contract 'ida-20250101' already exists", for
    the first call and every retry alike."""
    with server.client() as client:
        contract(client, "idb", "ida-20250101", at("2025-01-01T00:00:00"), at("2025-02-01T00:00:00"))
        contract(client, "ida", "ida-20250301", at("2025-02-01T00:00:00"), at("2025-03-01T00:00:00"))

        def unnamed(start: str, end: str | None = None) -> contracts_pb2.CreateContractRequest:
            request = contracts_pb2.CreateContractRequest(
                customer_id="ida", rate_card_id="p3", starting_at=stamp(at(start))
            )
            if end is not None:
                request.ending_before.CopyFrom(stamp(at(end)))
            return request

        for request, contract_id in (
            (unnamed("2025-01-01T00:00:00", "2025-02-01T00:00:00"), "ida-20250101.2"),
            (unnamed("2025-03-01T00:00:00"), "ida-20250301.2"),
        ):
            made = client.contracts.CreateContract(request)
            assert (made.id, made.customer_id, made.starting_at) == (contract_id, "ida", request.starting_at)
            assert client.contracts.CreateContract(request) == made
            assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)) == made
        code, details = refusal(
            partial(client.contracts.CreateContract, unnamed("2025-03-01T00:00:00", "2025-04-01T00:00:00"))
        )
        assert code == grpc.StatusCode.ALREADY_EXISTS, details
        owners = {
            k: client.contracts.GetContract(contracts_pb2.GetContractRequest(id=k)).customer_id
            for k in ("ida-20250101", "ida-20250301")
        }
        assert owners == {"ida-20250101": "idb", "ida-20250301": "ida"}


def test_a_grant_expiring_at_the_period_end_is_expired_on_that_invoice_and_one_a_millisecond_later_on_the_next(
    server: ServerProcess,
) -> None:
    """invoices.proto InvoiceGrantBalance: the balances at the end of the invoice's period; expired: what was left
    of a grant that expired by the period's end. `gx`: contract from 2025-02-01 (periods Feb 1 - Mar 1 - Apr 1).
    `gx-at`: 10 credits expiring Mar 1 00:00 (the period's end), `gx-after`: 10 expiring Mar 1 00:00:00.001. Both
    expiries long passed, the clock driver breaks both. February's invoice: gx-at 10 granted, 0 drawn, 0
    remaining, 10 expired; gx-after 10, 0, 10, 0 (it was still usable at Feb's end). March's: both expired."""
    with server.client() as client:
        contract(client, "gx", "gx-c", at("2025-02-01T00:00:00"))
        mar1 = at("2025-03-01T00:00:00")
        for grant_id, expires in (("gx-at", mar1), ("gx-after", mar1 + 1)):
            grant = contracts_pb2.Grant(id=grant_id, contract_id="gx-c", kind=contracts_pb2.PROMOTIONAL, amount="10")
            grant.expires_at.CopyFrom(stamp(expires))
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))

        def expired() -> dict[str, str]:
            return {g.grant_id: g.expired for g in client.get_balance("gx").grants}

        assert wait_for(lambda: expired() == {"gx-at": "10", "gx-after": "10"}, 15), expired()
        balances = [
            sorted(
                (g.grant_id, g.granted, g.drawn, g.remaining, g.expired)
                for g in preview(client, "gx", t).grant_balances
            )
            for t in (at("2025-02-01T00:00:00"), mar1)
        ]
        assert balances == [
            [("gx-after", "10", "0", "10", "0"), ("gx-at", "10", "0", "0", "10")],
            [("gx-after", "10", "0", "0", "10"), ("gx-at", "10", "0", "0", "10")],
        ]


def test_late_usage_of_an_open_old_period_moves_the_revenue_of_the_new_contracts_period_closed_before_it(
    server: ServerProcess,
) -> None:
    """invoices.proto RevenueLine: a closed period's lines never change once the customer's earlier periods are
    closed too (late usage of an open earlier one draws credits before it); each line's deferred is the previous
    line's + sold - recognized_credits - breakage. `rv`: `rv-old` from 2025-01-15 ending 2025-02-01, `rv-new` from
    Feb 1. `rv-g`: 100 credits bought for 50 USD under rv-old (0.5 USD a credit).
      Jan 20, 10 units (old): 10 credits, 5 USD. Feb 5, 20 units (new): 20 credits, 10 USD.
      Lines: Jan 15: 5 recognised, 50 - 5 = 45 deferred; Feb 1: 10, 45 - 10 = 35.
    ClosePeriod(Feb 1), the old period still open: the final invoice shows rv-g drawn 10 + 20 = 30, 70 remaining.
    Jan 25, 30 units (old, late, accepted): 30 credits, 15 USD.
      Lines: Jan 15: 5 + 15 = 20 recognised, 30 deferred; Feb 1 (closed, but an earlier period was open): 10, 20.
      Reconciliation: 0 + 50 - 30 - 0 = 20.
    The closed invoice keeps its balances (70 remaining, 35 USD) while its line's deferred is 20; the old invoice
    shows drawn 10 + 30 = 40, remaining 60: 30 USD, its line's deferred."""
    jan15, feb1, mar1 = at("2025-01-15T00:00:00"), at("2025-02-01T00:00:00"), at("2025-03-01T00:00:00")
    with server.client() as client:
        contract(client, "rv", "rv-old", jan15, feb1)
        contract(client, "rv", "rv-new", feb1)
        grant = contracts_pb2.Grant(
            id="rv-g", contract_id="rv-old", kind=contracts_pb2.PREPAID, amount="100", paid_amount="50"
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))

        def revenue() -> tuple[list[tuple[int, str, str]], tuple[str, str, str, str, bool]]:
            request = invoices_pb2.GetRevenueReportRequest(
                customer_id="rv", period_start=stamp(jan15), period_end=stamp(mar1)
            )
            report = client.invoices.GetRevenueReport(request)
            r = report.reconciliation
            lines = [
                (line.period_start.ToMilliseconds(), line.recognized_credits, line.deferred)
                for line in report.customer_lines
            ]
            return lines, (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.deferred_end, r.reconciles)

        assert (
            rejected_in(
                client,
                event("v1", "rv", 10, at("2025-01-20T00:00:00")),
                event("v2", "rv", 20, at("2025-02-05T00:00:00")),
            )
            == []
        )
        assert revenue() == ([(jan15, "5", "45"), (feb1, "10", "35")], ("0", "50", "15", "35", True))
        closed = close(client, "rv", feb1)
        assert [(g.grant_id, g.drawn, g.remaining) for g in closed.grant_balances] == [("rv-g", "30", "70")]
        assert rejected_in(client, event("v3", "rv", 30, at("2025-01-25T00:00:00"))) == []
        assert revenue() == ([(jan15, "20", "30"), (feb1, "10", "20")], ("0", "50", "30", "20", True))
        assert preview(client, "rv", feb1) == closed
        old = preview(client, "rv", jan15)
        assert [(g.grant_id, g.drawn, g.remaining) for g in old.grant_balances] == [("rv-g", "40", "60")]


def test_top_ups_count_per_period_with_the_boundary_instant_in_the_next_period(server: ServerProcess) -> None:
    """contracts.proto TopUpPolicy: at most max_per_period purchases per billing period; a purchase counts in the
    period of the event that triggered it and is usable from that period's start (README "Automatic top-up":
    id top-up-<period start ms>-<n>). `tb`: contract from 2025-02-01 (periods Feb 1 - Mar 1 - Apr 1); threshold
    10, recharge to 20, 1 USD a credit, 1 a period; no credit at first. Events in order:
      1. Feb 28 23:59:59.999, 5 units: 5 overage; 0 < 10: buys 20 (Feb's one).
      2. Feb 28 23:59:59.999, 25 units: 20 from it, 5 overage; Feb's purchase made: none.
      3. Mar 1 00:00 (the boundary: March), 5 units: 5 overage; buys 20 (March's one), usable from Mar 1.
      4. Feb 27, 3 units (late, February): March's top-up starts Mar 1: 3 overage.
    February: 33 units, credits 20, overage 13 (13.00 USD), top-ups 20.00, total 33.00.
    March: 5 units, overage 5 (5.00), top-ups 20.00, total 25.00."""
    feb1, mar1 = at("2025-02-01T00:00:00"), at("2025-03-01T00:00:00")
    with server.client() as client:
        contract(client, "tb", "tb-c", feb1)
        policy = contracts_pb2.TopUpPolicy(threshold="10", recharge_to="20", price_per_credit="1", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="tb-c", top_up=policy))
        for n, (units, when) in enumerate(
            ((5, mar1 - 1), (25, mar1 - 1), (5, mar1), (3, at("2025-02-27T00:00:00"))), 1
        ):
            assert rejected_in(client, event(f"tb{n}", "tb", units, when)) == []
        february, march = preview(client, "tb", feb1), preview(client, "tb", mar1)
        shown = [
            (
                lines(i),
                [(c.grant_id, c.credits) for c in i.credits_applied],
                i.overage_amount,
                i.overage_due,
                i.top_up_purchases,
                i.total_due,
            )
            for i in (february, march)
        ]
        assert shown == [
            ([("units", "33", "33", 3)], [(f"top-up-{feb1}-1", "20")], "13", "13.00", "20.00", "33.00"),
            ([("units", "5", "5", 1)], [], "5", "5.00", "20.00", "25.00"),
        ]
        top_ups = {g.grant_id: g.starts_at.ToMilliseconds() for g in client.get_balance("tb").grants}
        assert top_ups == {f"top-up-{feb1}-1": feb1, f"top-up-{mar1}-1": mar1}


def test_the_cli_finds_a_period_starting_in_a_month_whose_contract_ended_within_it(server: ServerProcess) -> None:
    """README "Invoices and revenue": `--period YYYY-MM` is the period that starts in that calendar month (UTC), the
    earlier one when two contracts' periods start in it. `trial`: `trial-1` from 2025-01-05 ending 2025-01-10 and
    `trial-2` from 2025-01-10 ending 2025-01-20, nothing after: periods Jan 5 - Feb 5 and Jan 10 - Feb 10 start in
    January, and neither contract is in force on Jan 1 nor on Jan 31 (the old CLI looked only there, and said
    "customer 'trial' has no period starting in 2025-01"). 2 units on Jan 6 (trial-1's), 3 on Jan 12 (trial-2's):
    `invoices preview trial --period 2025-01` shows the earlier, Jan 5 - Feb 5, subtotal 2; `close` closes it.
    February has no period starting in it: the CLI says so."""
    with server.client() as client:
        contract(client, "trial", "trial-1", at("2025-01-05T00:00:00"), at("2025-01-10T00:00:00"))
        contract(client, "trial", "trial-2", at("2025-01-10T00:00:00"), at("2025-01-20T00:00:00"))
        assert (
            rejected_in(
                client,
                event("tr1", "trial", 2, at("2025-01-06T00:00:00")),
                event("tr2", "trial", 3, at("2025-01-12T00:00:00")),
            )
            == []
        )
    shown = tariff(server, "invoices", "preview", "trial", "--period", "2025-01").stdout
    assert "2025-01-05 00:00:00Z .. 2025-02-05 00:00:00Z" in shown, shown
    (closed,) = json.loads(tariff(server, "invoices", "close", "trial", "--period", "2025-01", "--json").stdout)[
        "invoices"
    ]
    assert (closed["contract_id"], closed["period_start"], closed["subtotal"]) == (
        "trial-1",
        "2025-01-05T00:00:00Z",
        "2",
    )
    missing = tariff(server, "invoices", "preview", "trial", "--period", "2025-02", check=False)
    assert "customer 'trial' has no period starting in 2025-02" in missing.stderr + missing.stdout


def test_the_cli_reads_the_earlier_of_two_periods_starting_in_a_month_after_a_switch_from_an_older_anchor(
    server: ServerProcess,
) -> None:
    """README: `--period YYYY-MM` is the period that starts in that month, the earlier one when two contracts'
    periods start in it. `tri`: `tri-a` from 2024-12-20 ending 2025-01-03 (its last period Dec 20 - Jan 20),
    `tri-b` from Jan 3 ending Jan 8 (Jan 3 - Feb 3), `tri-c` from Jan 8 (Jan 8 - Feb 8, ...). January holds the
    starts of tri-b's and tri-c's periods: the earlier is Jan 3 (the old CLI, reading Jan 1's period and then the
    one at its end, Jan 20, under tri-c, answered Jan 8). 4 units on Jan 4 (tri-b's): subtotal 4."""
    with server.client() as client:
        contract(client, "tri", "tri-a", at("2024-12-20T00:00:00"), at("2025-01-03T00:00:00"))
        contract(client, "tri", "tri-b", at("2025-01-03T00:00:00"), at("2025-01-08T00:00:00"))
        contract(client, "tri", "tri-c", at("2025-01-08T00:00:00"))
        assert rejected_in(client, event("tri1", "tri", 4, at("2025-01-04T00:00:00"))) == []
    shown = tariff(server, "invoices", "preview", "tri", "--period", "2025-01", "--json").stdout
    invoice = json.loads(shown)
    assert (invoice["contract_id"], invoice["period_start"], invoice["subtotal"]) == (
        "tri-b",
        "2025-01-03T00:00:00Z",
        "4",
    )


def test_a_restart_answers_the_same_contracts_grants_and_invoices(server: ServerProcess) -> None:
    """Replay stays exact for what this file's fixes added: `rs-x` holds `rs-20250101` (explicit), so `rs`'s unnamed
    contract from 2025-01-01 is `rs-20250101.2`; a rollover grant starting before it is refused; `rs-g`, 10 credits
    under it (no fraction: nothing the clock driver changes while the test reads), granted; 4 units on Jan 2 draw 4
    of it. After a restart the contract, the
    balance and the January draft are as before, and the unnamed request still answers its contract."""
    with server.client() as client:
        contract(client, "rs-x", "rs-20250101", at("2025-01-01T00:00:00"))
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rs"))
        unnamed = contracts_pb2.CreateContractRequest(
            customer_id="rs", rate_card_id="p3", starting_at=stamp(at("2025-01-01T00:00:00"))
        )
        made = client.contracts.CreateContract(unnamed)
        assert made.id == "rs-20250101.2"
        early = contracts_pb2.Grant(
            id="rs-early", customer_id="rs", kind=contracts_pb2.PROMOTIONAL, amount="1", rollover_fraction="0.5"
        )
        early.starts_at.CopyFrom(stamp(at("2024-12-01T00:00:00")))
        code, _ = refusal(partial(client.contracts.GrantCredits, contracts_pb2.GrantCreditsRequest(grant=early)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        grant = contracts_pb2.Grant(id="rs-g", contract_id=made.id, kind=contracts_pb2.PROMOTIONAL, amount="10")
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        assert rejected_in(client, event("rs1", "rs", 4, at("2025-01-02T00:00:00"))) == []
        before = (
            client.contracts.GetContract(contracts_pb2.GetContractRequest(id=made.id)),
            preview(client, "rs", at("2025-01-01T00:00:00")),
            [(g.grant_id, g.drawn, g.remaining, g.expired) for g in client.get_balance("rs").grants],
        )
        assert [c.credits for c in before[1].credits_applied] == ["4"]
    server.restart()
    with server.client() as client:
        after = (
            client.contracts.GetContract(contracts_pb2.GetContractRequest(id=made.id)),
            preview(client, "rs", at("2025-01-01T00:00:00")),
            [(g.grant_id, g.drawn, g.remaining, g.expired) for g in client.get_balance("rs").grants],
        )
        assert after == before
        assert client.contracts.CreateContract(unnamed) == before[0]
