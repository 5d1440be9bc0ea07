"""An audit of billing periods and invoices over time, over the wire: what test_audit_periods3_wire.py and
test_audit_invoices3_wire.py leave out. VOLUME tiers reset at a leap-February boundary with credits drawn and
given back across it; a contract ending mid-period, not switched (its last period keeps its monthly end, its flat
fee not pro-rated); CloseDuePeriods over several customers on different anchors (29th, 30th, 31st, leap and common
Februaries), in period-end then contract-id order, with a later period closed by hand first, late events landing in
the open earlier one and refused in the closed one, closed twice, and after a kill -9.

Every amount asserted is computed by hand from the docs (the arithmetic is in the docstrings), none read back from
the server. Everything happens in periods long over (2023 .. 2025), with `--close-grace off`.

Products (SUM of `n`): `units` (event type `work`) at 1 credit a unit; `vol` (event type `vol`), VOLUME: up to 10
at 2 a unit, beyond at 1 a unit plus a flat 3; `flat` (event type `flat`), FLAT 7 a period. Rate card `cal`
(credits), version 1 in force from 2023-01-01; rate card `cal-r` the same (one test publishes a version 2)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, preview, refusal, rejected_in, serving
from tests.serverproc import ServerProcess
from tests.test_audit_periods3_wire import assert_totals_are_the_sums_of_lines, close, event, lines
from tests.test_cli import tariff


def at(text: str) -> int:
    """Unix ms of an ISO-8601 UTC instant ("2024-02-29T12:00:00.500")."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def catalogue(client: TariffClient) -> None:
    for product_id, event_type in (("units", "work"), ("vol", "vol"), ("flat", "flat")):
        product = pricing_pb2.Product(id=product_id, event_type=event_type, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    for card in ("cal", "cal-r"):
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
    volume = pricing_pb2.TieredPrice(
        mode=pricing_pb2.VOLUME,
        tiers=[
            pricing_pb2.Tier(up_to="10", unit_price="2"),
            pricing_pb2.Tier(up_to="", unit_price="1", flat_price="3"),
        ],
    )
    rates = [
        pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1")),
        pricing_pb2.Rate(product_id="vol", tiered=volume),
        pricing_pb2.Rate(product_id="flat", flat=pricing_pb2.FlatPrice(price="7")),
    ]
    for card in ("cal", "cal-r"):
        client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates))
        since = stamp(at("2023-01-01T00:00:00"))
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=since)
        )


def new_server(root: Path) -> ServerProcess:
    return ServerProcess(root / "data", extra_args=["--close-grace", "off"])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    yield from serving(new_server(tmp_path_factory.mktemp("audit-calendar")), catalogue)


@pytest.fixture(scope="module")
def closer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server of its own for CloseDuePeriods, which closes every customer's ended periods."""
    yield from serving(new_server(tmp_path_factory.mktemp("audit-calendar-close")), catalogue)


def contract(
    client: TariffClient, customer_id: str, contract_id: str, start_ms: int, end_ms: int | None = None, **fields: str
) -> contracts_pb2.Contract:
    fields.setdefault("rate_card_id", "cal")
    return open_contract(client, customer_id, contract_id, start_ms, end_ms, **fields)


def grant(client: TariffClient, grant_id: str, customer_id: str, contract_id: str, amount: str) -> None:
    made = contracts_pb2.Grant(
        id=grant_id,
        customer_id=customer_id,
        contract_id=contract_id,
        kind=contracts_pb2.PREPAID,
        amount=amount,
        paid_amount=amount,
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def span(invoice: invoices_pb2.Invoice) -> tuple[int, int]:
    return invoice.period_start.ToMilliseconds(), invoice.period_end.ToMilliseconds()


def credits(invoice: invoices_pb2.Invoice) -> dict[str, str]:
    return {c.grant_id: c.credits for c in invoice.credits_applied}


def balances(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, str, str]]:
    return {b.grant_id: (b.granted, b.drawn, b.remaining, b.expired) for b in invoice.grant_balances}


def dues(invoice: invoices_pb2.Invoice) -> tuple[str, str, str, str, str]:
    return (
        invoice.subtotal,
        invoice.overage_amount,
        invoice.overage_due,
        invoice.rounding_adjustment,
        invoice.total_due,
    )


# VOLUME across a leap-February boundary -----------------------------------------------------------------------------


def test_volume_tiers_start_anew_at_a_leap_february_boundary_and_credits_given_back_return_to_the_grant(
    server: ServerProcess,
) -> None:
    """`vol29`: from 2024-01-29T00:00Z: periods Jan 29 - Feb 29 (2024 is a leap year: Feb 29 exists, no clamp) -
    Mar 29 - Apr 29. Overage at 1.5 USD. PREPAID grant `g` of 20 credits (paid 20) under the contract.

    vol (VOLUME: the whole period quantity at 2 a unit up to 10, at 1 a unit + 3 beyond), in this order:
      - 8 units at Feb 28 23:00 (first period): 8 x 2 = 16, drawn from g (20 -> 4 left).
      - 3 units at Feb 28 23:59:59.999 (first period, 11 in all): 11 x 1 + 3 = 14, so the event is charged
        14 - 16 = -2: 2 credits given back to g (6 left). First period: vol 11 units, amount 14, credits 14,
        overage 0, due 0.00.
      - 4 units at Feb 29 00:00:00.000 (the boundary: the second period, whose quantity starts at 0): 4 x 2 = 8; g
        pays its 6, 2 overage.
      - 5 units at Mar 28 23:59:59.999 (second period, 9 in all, still the first tier): 9 x 2 = 18, charged 10, all
        overage. Second period: vol 9 units, amount 18, credits 6, overage 12, due 12 x 1.5 = 18.00.
      - 1 unit at Mar 29 00:00 (third period): 2, overage: due 3.00.
    The invoices' grant balances: g granted 20, drawn 14 by the first period's end, 20 by the second's."""
    boundary = at("2024-02-29T00:00:00")
    with server.client() as client:
        contract(client, "vol29", "vol29-c", at("2024-01-29T00:00:00"), overage_price="1.5")
        grant(client, "vol29-g", "vol29", "vol29-c", "20")
        rejected = rejected_in(
            client,
            event("v1", "vol29", 8, at("2024-02-28T23:00:00"), "vol"),
            event("v2", "vol29", 3, boundary - 1, "vol"),
            event("v3", "vol29", 4, boundary, "vol"),
            event("v4", "vol29", 5, at("2024-03-29T00:00:00") - 1, "vol"),
            event("v5", "vol29", 1, at("2024-03-29T00:00:00"), "vol"),
        )
        assert rejected == []
        first, second, third = (
            preview(client, "vol29", t) for t in (boundary - 1, boundary, at("2024-03-29T00:00:00"))
        )
        assert span(first) == (at("2024-01-29T00:00:00"), boundary)
        assert span(second) == (boundary, at("2024-03-29T00:00:00"))
        assert span(third) == (at("2024-03-29T00:00:00"), at("2024-04-29T00:00:00"))
        assert lines(first) == [("vol", "11", "14", 2)]
        assert lines(second) == [("vol", "9", "18", 2)]
        assert lines(third) == [("vol", "1", "2", 1)]
        assert credits(first) == {"vol29-g": "14"} and credits(second) == {"vol29-g": "6"} and credits(third) == {}
        assert dues(first) == ("14", "0", "0.00", "0.00", "0.00")
        assert dues(second) == ("18", "12", "18.00", "0.00", "18.00")
        assert dues(third) == ("2", "2", "3.00", "0.00", "3.00")
        assert balances(first) == {"vol29-g": ("20", "14", "6", "0")}
        assert balances(second) == {"vol29-g": ("20", "20", "0", "0")}
        for invoice in (first, second, third):
            assert_totals_are_the_sums_of_lines(invoice)
        # Closed in order, each final invoice is its draft.
        for draft in (first, second, third):
            final = close(client, "vol29", draft.period_start.ToMilliseconds())
            assert (final.subtotal, final.total_due, list(final.lines)) == (
                draft.subtotal,
                draft.total_due,
                list(draft.lines),
            )


def test_a_cheaper_volume_tier_gives_back_the_lines_overage_first_then_the_last_grant_burnt(
    server: ServerProcess,
) -> None:
    """docs/architecture.md §"Draw": a negative charge gives back the aggregate's own overage first, then credits to
    the grants it drew from, in reverse burn order. `volgb`: from 2025-01-30T00:00Z (2025 common: periods Jan 30 -
    Feb 28 - Mar 30), overage at 1 USD; PREPAID `gb-1` (priority 1, 5 credits) and `gb-2` (priority 2, 10).
      - 8 vol units on Feb 27 23:59:59.999 (first period): 8 x 2 = 16: gb-1 5, gb-2 10, overage 1.
      - 3 more at the same instant (11 in all): 11 x 1 + 3 = 14, charged -2: overage 1 -> 0, then gb-2 (burnt last)
        10 -> 9. First period: vol 11 units, amount 14, credits gb-1 5 + gb-2 9, overage 0, due 0.00.
      - 9 units at Feb 28 00:00 (the boundary: second period, a VOLUME quantity starting anew): 9 x 2 = 18: gb-2's
        1 left, overage 17: due 17.00.
    Balances: by the first period's end gb-1 5 drawn (0 left), gb-2 9 (1 left); by the second's gb-2 all drawn, and
    gb-1 (spent in the first period, touched by nothing in the second) left out: invoices.proto Invoice.grant_balances."""
    boundary = at("2025-02-28T00:00:00")
    with server.client() as client:
        contract(client, "volgb", "volgb-c", at("2025-01-30T00:00:00"))
        for grant_id, priority, amount in (("gb-1", 1, "5"), ("gb-2", 2, "10")):
            made = contracts_pb2.Grant(
                id=grant_id,
                customer_id="volgb",
                contract_id="volgb-c",
                kind=contracts_pb2.PREPAID,
                amount=amount,
                paid_amount=amount,
                priority=priority,
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        assert rejected_in(client, event("gb1", "volgb", 8, boundary - 1, "vol")) == []
        assert rejected_in(client, event("gb2", "volgb", 3, boundary - 1, "vol")) == []
        assert rejected_in(client, event("gb3", "volgb", 9, boundary, "vol")) == []
        first, second = preview(client, "volgb", boundary - 1), preview(client, "volgb", boundary)
        assert span(first) == (at("2025-01-30T00:00:00"), boundary)
        assert span(second) == (boundary, at("2025-03-30T00:00:00"))
        assert lines(first) == [("vol", "11", "14", 2)] and lines(second) == [("vol", "9", "18", 1)]
        assert credits(first) == {"gb-1": "5", "gb-2": "9"} and credits(second) == {"gb-2": "1"}
        assert dues(first) == ("14", "0", "0.00", "0.00", "0.00")
        assert dues(second) == ("18", "17", "17.00", "0.00", "17.00")
        assert balances(first) == {"gb-1": ("5", "5", "0", "0"), "gb-2": ("10", "9", "1", "0")}
        assert balances(second) == {"gb-2": ("10", "10", "0", "0")}
        for invoice in (first, second):
            assert_totals_are_the_sums_of_lines(invoice)


def test_a_retroactive_publish_re_rates_volume_per_period_across_a_clamped_boundary_and_settles_credits_anew(
    server: ServerProcess,
) -> None:
    """`rr31` on `cal-r` from 2025-01-31T00:00Z (periods Jan 31 - Feb 28 (clamped) - Mar 31), overage at 1 USD, PREPAID
    `rr31-g` of 20. vol under version 1 (VOLUME 2 a unit up to 10, beyond 1 a unit + 3):
      - 8 units on Feb 27 23:00 (first period): 16, all from the grant (4 left).
      - 4 units on Feb 28 00:00 (the boundary: second period): 8 (grant 4, overage 4); 5 units on Mar 1 00:00
        (9 in all): 18, charged 10 (overage). Second period 18: credits 4, overage 14.
    Version 2 (VOLUME 3 a unit up to 10, beyond 1 a unit + 3) published effective 2025-02-01T00:00Z re-rates both
    open periods, each walked from its own start (the VOLUME quantity starting anew at Feb 28): first period's
    bucket 8 x 3 = 24 (16 -> 24, +8); second period's buckets 4 x 3 = 12 (8 -> 12, +4) and 9 x 3 - 12 = 15
    (10 -> 15, +5): 3 buckets, 3 events, 1 customer, delta +17. Draws settled again in time order: the first period
    24 = 20 credits + 4 overage (due 4.00); the second 27, all overage (due 27.00)."""
    boundary = at("2025-02-28T00:00:00")
    mar1 = at("2025-03-01T00:00:00")
    with server.client() as client:
        contract(client, "rr31", "rr31-c", at("2025-01-31T00:00:00"), rate_card_id="cal-r")
        grant(client, "rr31-g", "rr31", "rr31-c", "20")
        rejected = rejected_in(
            client,
            event("r1", "rr31", 8, at("2025-02-27T23:00:00"), "vol"),
            event("r2", "rr31", 4, boundary, "vol"),
            event("r3", "rr31", 5, mar1, "vol"),
        )
        assert rejected == []
        assert lines(preview(client, "rr31", boundary - 1)) == [("vol", "8", "16", 1)]
        assert dues(preview(client, "rr31", boundary)) == ("18", "14", "14.00", "0.00", "14.00")
        volume = pricing_pb2.TieredPrice(
            mode=pricing_pb2.VOLUME,
            tiers=[
                pricing_pb2.Tier(up_to="10", unit_price="3"),
                pricing_pb2.Tier(up_to="", unit_price="1", flat_price="3"),
            ],
        )
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="cal-r",
                based_on_version=1,
                upsert_rates=[pricing_pb2.Rate(product_id="vol", tiered=volume)],
            )
        )
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="cal-r", version=2, effective_from=stamp(at("2025-02-01T00:00:00"))
            )
        )
        assert (
            published.buckets_rerated,
            published.events_rerated,
            published.customers_rerated,
            published.rerated_amount_delta,
        ) == (3, 3, 1, "17")
        first, second = preview(client, "rr31", boundary - 1), preview(client, "rr31", boundary)
        assert lines(first) == [("vol", "8", "24", 1)] and lines(second) == [("vol", "9", "27", 2)]
        adjustments = [
            [(a.hour.ToMilliseconds(), a.old_amount, a.new_amount, a.delta) for a in i.lines[0].adjustments]
            for i in (first, second)
        ]
        assert adjustments == [
            [(at("2025-02-27T23:00:00"), "16", "24", "8")],
            [(boundary, "8", "12", "4"), (mar1, "10", "15", "5")],
        ]
        assert credits(first) == {"rr31-g": "20"} and credits(second) == {}
        assert dues(first) == ("24", "4", "4.00", "0.00", "4.00")
        assert dues(second) == ("27", "27", "27.00", "0.00", "27.00")
        for invoice in (first, second):
            assert_totals_are_the_sums_of_lines(invoice)


# A contract ending mid-period, not switched ------------------------------------------------------------------------


def test_a_contract_ending_mid_period_keeps_its_last_periods_monthly_end_and_a_whole_flat_fee(
    server: ServerProcess,
) -> None:
    """`end31`: from 2023-12-31T00:00Z ending 2024-03-10T12:00Z, no next contract. Periods (anchor the 31st, 2024 a
    leap year): Dec 31 - Jan 31 - Feb 29 - Mar 31; the last keeps its monthly end (Contract.ending_before).
    A flat event in the last period (Mar 1) costs the whole 7 (FlatPrice: once per period with quantity above 0;
    nothing pro-rates it, README "Contract switches"), 11 vol units on Mar 5 cost 11 x 1 + the tier's whole flat 3
    = 14, and 3 units at Mar 10 11:59:59.999 cost 3: that period's subtotal 24, due 24.00.
    An event at Mar 10 12:00 (ending_before) is NO_ACTIVE_CONTRACT, as is one on Mar 20.
    PreviewInvoice at Mar 20 (no contract in force, inside the ended contract's last period) is
    FAILED_PRECONDITION naming that period (its start Feb 29). ClosePeriod(Feb 29) before Mar 31 would be refused,
    but Mar 31 2024 is long past: it closes, and no period starting Mar 31 exists (INVALID_ARGUMENT naming the
    nearest start, Feb 29)."""
    last_start = at("2024-02-29T00:00:00")
    end = at("2024-03-10T12:00:00")
    with server.client() as client:
        contract(client, "end31", "end31-c", at("2023-12-31T00:00:00"), end)
        rejected = rejected_in(
            client,
            event("e1", "end31", 1, at("2024-03-01T00:00:00"), "flat"),
            event("e2", "end31", 3, end - 1),
            event("e3", "end31", 1, end),
            event("e4", "end31", 1, at("2024-03-20T00:00:00")),
            event("e5", "end31", 1, at("2024-02-28T23:59:59.999"), "flat"),
            event("e6", "end31", 11, at("2024-03-05T00:00:00"), "vol"),
        )
        assert rejected == [("e3", "NO_ACTIVE_CONTRACT"), ("e4", "NO_ACTIVE_CONTRACT")]
        last = preview(client, "end31", end - 1)
        assert span(last) == (last_start, at("2024-03-31T00:00:00"))
        assert lines(last) == [("flat", "1", "7", 1), ("units", "3", "3", 1), ("vol", "11", "14", 1)]
        assert dues(last) == ("24", "24", "24.00", "0.00", "24.00")
        before = preview(client, "end31", last_start - 1)
        assert span(before) == (at("2024-01-31T00:00:00"), last_start)
        assert lines(before) == [("flat", "1", "7", 1)]
        code, details = refusal(lambda: preview(client, "end31", at("2024-03-20T00:00:00")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "2024-02-29T00:00:00Z" in details
        # ExplainLineItem names the ended contract's last period by its exact start (the clamped Feb 29); Mar 1 is
        # no period's start.
        explained = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id="end31", period_start=stamp(last_start), line_id="units")
        )
        assert [(e.transaction_id, e.quantity, e.amount) for e in explained.events] == [("e2", "3", "3")]
        assert (explained.line_amount, explained.line_quantity, explained.next_page_token) == ("3", "3", "")
        code, details = refusal(
            lambda: client.invoices.ExplainLineItem(
                invoices_pb2.ExplainLineItemRequest(
                    customer_id="end31", period_start=stamp(at("2024-03-01T00:00:00")), line_id="units"
                )
            )
        )
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "period_start" in details
        final = close(client, "end31", last_start)
        assert (span(final), final.total_due) == (span(last), "24.00")
        code, details = refusal(lambda: close(client, "end31", at("2024-03-31T00:00:00")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert "2024-02-29T00:00:00Z" in details


def test_a_switch_at_a_clamped_boundary_anchors_the_next_contract_on_the_28th(server: ServerProcess) -> None:
    """`sw28`: `sw28-old` from 2025-01-31 ending 2025-02-28 (exactly its first period's clamped end: its only period,
    Jan 31 - Feb 28), `sw28-new` from Feb 28, anchored on its own start (README "Contract switches"): Feb 28 - Mar 28
    - Apr 28, not the old anchor's Mar 31. A flat event each side of the switch (Feb 27 23:59:59.999, Feb 28 00:00)
    and on Mar 28 00:00: 7 in each of three periods. ClosePeriod(Feb 28) closes the new contract's first period (the
    old one has none starting there); ClosePeriod(Mar 31) is no period's start (the nearest is Mar 28)."""
    feb28, mar28 = at("2025-02-28T00:00:00"), at("2025-03-28T00:00:00")
    with server.client() as client:
        contract(client, "sw28", "sw28-old", at("2025-01-31T00:00:00"), feb28)
        contract(client, "sw28", "sw28-new", feb28)
        flat = [event(f"s{i}", "sw28", 1, t, "flat") for i, t in enumerate((feb28 - 1, feb28, mar28))]
        assert rejected_in(client, *flat) == []
        shown = [
            (i.contract_id, *span(i), i.subtotal)
            for i in (preview(client, "sw28", t) for t in (feb28 - 1, feb28, mar28))
        ]
        assert shown == [
            ("sw28-old", at("2025-01-31T00:00:00"), feb28, "7"),
            ("sw28-new", feb28, mar28, "7"),
            ("sw28-new", mar28, at("2025-04-28T00:00:00"), "7"),
        ]
        assert (
            close(client, "sw28", feb28).contract_id,
            close(client, "sw28", at("2025-01-31T00:00:00")).contract_id,
        ) == ("sw28-new", "sw28-old")
        code, details = refusal(lambda: close(client, "sw28", at("2025-03-31T00:00:00")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "2025-03-28T00:00:00Z" in details


# CloseDuePeriods over several anchors ------------------------------------------------------------------------------


def close_due(client: TariffClient) -> list[invoices_pb2.Invoice]:
    return list(client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices)


def listed(client: TariffClient) -> list[invoices_pb2.Invoice]:
    return list(client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(page_size=1000)).invoices)


def summary(invoice: invoices_pb2.Invoice) -> tuple[str, str, int, int, str]:
    return (invoice.invoice_number, invoice.contract_id, *span(invoice), invoice.total_due)


def test_close_due_periods_closes_every_anchor_in_end_then_contract_order_once_and_again_after_kill_9(
    closer: ServerProcess,
) -> None:
    """Contracts (overage at 1 USD, `units` 1 credit a unit, `flat` 7), on a server of their own:
      - `c-a`: 2025-01-31 ending 2025-04-01: periods Jan 31 - Feb 28 (2025 common, clamped) - Mar 31 - Apr 30 (the
        last keeps its monthly end). Usage: 2 units Feb 1 (first), 5 units Mar 1 (second), 1 unit Mar 31 00:00 (the
        boundary: third).
      - `c-b`: 2025-02-28T12:00 ending 2025-03-28T12:00: one period, Feb 28 12:00 - Mar 28 12:00. Usage: flat on
        Mar 28 11:59:59.999: 7.
      - `c-c`: 2023-12-31 ending 2024-02-29T00:00:00.001: periods Dec 31 - Jan 31 - Feb 29 (2024 leap) - Mar 31 (the
        last holds one millisecond of contract). Usage: 4 units Jan 30, 6 units Feb 29 00:00:00.000.
      - `c-d`: 2025-01-28 ending 2025-02-28 (exactly its first period's end: one period, no empty second). Usage:
        9 units Feb 27.
    ClosePeriod(c-a, Feb 28) first, by hand, while c-a's first period is open: INV-00000001 (5.00). Then late
    events: 3 units on c-a's Feb 27 (open first period: accepted, first period 2 + 3 = 5), 1 on Mar 30 (closed
    second: PERIOD_CLOSED).
    CloseDuePeriods then closes the rest, the earliest period end first, then by contract id (c-a's Feb 28 end ties
    c-d's: c-a first):
      INV-2 c-c Dec 31 - Jan 31 2024: 4.00; INV-3 c-c Jan 31 - Feb 29: 0.00; INV-4 c-c Feb 29 - Mar 31: 6.00;
      INV-5 c-a Jan 31 - Feb 28 2025: 5.00; INV-6 c-d Jan 28 - Feb 28: 9.00; INV-7 c-b Feb 28 12:00 - Mar 28 12:00:
      7.00; INV-8 c-a Mar 31 - Apr 30: 1.00.
    Again: nothing (an empty answer). After kill -9 and a restart: nothing again, the same eight invoices listed;
    a contract `c-e` created then, from 2025-06-30 ending 2025-07-01 (one period Jun 30 - Jul 30, 2 units on Jun 30:
    2.00), is closed by the next CloseDuePeriods alone as INV-00000009."""
    with closer.client() as client:
        contract(client, "c-a", "c-a", at("2025-01-31T00:00:00"), at("2025-04-01T00:00:00"))
        contract(client, "c-b", "c-b", at("2025-02-28T12:00:00"), at("2025-03-28T12:00:00"))
        contract(client, "c-c", "c-c", at("2023-12-31T00:00:00"), at("2024-02-29T00:00:00.001"))
        contract(client, "c-d", "c-d", at("2025-01-28T00:00:00"), at("2025-02-28T00:00:00"))
        rejected = rejected_in(
            client,
            event("a1", "c-a", 2, at("2025-02-01T00:00:00")),
            event("a2", "c-a", 5, at("2025-03-01T00:00:00")),
            event("a3", "c-a", 1, at("2025-03-31T00:00:00")),
            event("b1", "c-b", 1, at("2025-03-28T11:59:59.999"), "flat"),
            event("c1", "c-c", 4, at("2024-01-30T00:00:00")),
            event("c2", "c-c", 6, at("2024-02-29T00:00:00")),
            event("d1", "c-d", 9, at("2025-02-27T00:00:00")),
        )
        assert rejected == []
        by_hand = close(client, "c-a", at("2025-02-28T00:00:00"))
        assert summary(by_hand) == ("INV-00000001", "c-a", at("2025-02-28T00:00:00"), at("2025-03-31T00:00:00"), "5.00")
        late = rejected_in(
            client,
            event("a4", "c-a", 3, at("2025-02-27T00:00:00")),
            event("a5", "c-a", 1, at("2025-03-30T00:00:00")),
        )
        assert late == [("a5", "PERIOD_CLOSED")]
        closed = close_due(client)
        assert [summary(invoice) for invoice in closed] == [
            ("INV-00000002", "c-c", at("2023-12-31T00:00:00"), at("2024-01-31T00:00:00"), "4.00"),
            ("INV-00000003", "c-c", at("2024-01-31T00:00:00"), at("2024-02-29T00:00:00"), "0.00"),
            ("INV-00000004", "c-c", at("2024-02-29T00:00:00"), at("2024-03-31T00:00:00"), "6.00"),
            ("INV-00000005", "c-a", at("2025-01-31T00:00:00"), at("2025-02-28T00:00:00"), "5.00"),
            ("INV-00000006", "c-d", at("2025-01-28T00:00:00"), at("2025-02-28T00:00:00"), "9.00"),
            ("INV-00000007", "c-b", at("2025-02-28T12:00:00"), at("2025-03-28T12:00:00"), "7.00"),
            ("INV-00000008", "c-a", at("2025-03-31T00:00:00"), at("2025-04-30T00:00:00"), "1.00"),
        ]
        assert lines(closed[3]) == [("units", "5", "5", 2)]
        for invoice in closed:
            assert invoice.status == invoices_pb2.INVOICE_FINAL
            assert_totals_are_the_sums_of_lines(invoice)
        assert close_due(client) == []
        before = listed(client)
        assert [i.invoice_number for i in before] == [f"INV-{n:08d}" for n in range(1, 9)]
    closer.kill9()
    closer.start()
    with closer.client() as client:
        assert close_due(client) == []
        assert listed(client) == before
        contract(client, "c-e", "c-e", at("2025-06-30T00:00:00"), at("2025-07-01T00:00:00"))
        assert rejected_in(client, event("e1", "c-e", 2, at("2025-06-30T00:00:00"))) == []
        assert [summary(i) for i in close_due(client)] == [
            ("INV-00000009", "c-e", at("2025-06-30T00:00:00"), at("2025-07-30T00:00:00"), "2.00")
        ]
        assert close_due(client) == []


# The current period, read against the server's clock ---------------------------------------------------------------


def monthly(anchor_ms: int, ts_ms: int) -> tuple[int, int]:
    """The period holding ts_ms, by hand: the anchor moved n months, a day past a month's end clamped to its last day,
    each boundary from the anchor (contracts.proto Contract.starting_at; engine/contracts.py)."""
    anchor = datetime.fromtimestamp(anchor_ms / 1000, UTC)

    def moved(months: int) -> int:
        index = anchor.month - 1 + months
        year, month = anchor.year + index // 12, index % 12 + 1
        last_day = (
            datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC) - datetime(year, month, 1, tzinfo=UTC)
        ).days
        return int(anchor.replace(year=year, month=month, day=min(anchor.day, last_day)).timestamp() * 1000)

    months = 0
    while moved(months + 1) <= ts_ms:
        months += 1
    return moved(months), moved(months + 1)


def test_the_current_period_of_clamped_anchors_is_the_same_in_the_balance_the_draft_and_a_refused_close(
    server: ServerProcess,
) -> None:
    """contracts.proto / balance.proto: GetBalance's period is that of the contract in force now; PreviewInvoice
    without period_start reads the current period; ClosePeriod of it is FAILED_PRECONDITION saying when it ends, and
    the period before it (long over) closes. Anchors: Feb 29 2024 06:00, Jan 31 2025 00:00, Mar 30 2023 12:00; the
    expected period is computed by hand (`monthly`) from the test's clock, before and after the calls (a boundary
    passing in between admits either)."""
    anchors = {
        "now29": at("2024-02-29T06:00:00"),
        "now31": at("2025-01-31T00:00:00"),
        "now30": at("2023-03-30T12:00:00"),
    }
    with server.client() as client:
        for customer_id, anchor_ms in anchors.items():
            contract(client, customer_id, f"{customer_id}-c", anchor_ms)
            before = monthly(anchor_ms, now_ms())
            balance = client.get_balance(customer_id)
            draft = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id))
            current = partial(close, client, customer_id, draft.period_start.ToMilliseconds())
            code, details = refusal(current)
            after = monthly(anchor_ms, now_ms())
            shown = (balance.period_start.ToMilliseconds(), balance.period_end.ToMilliseconds())
            assert shown in (before, after), customer_id
            assert span(draft) == shown, customer_id
            assert code == grpc.StatusCode.FAILED_PRECONDITION
            assert iso_z(shown[1]) in details, (customer_id, details)
            previous = monthly(anchor_ms, shown[0] - 1)
            final = close(client, customer_id, previous[0])
            assert (span(final), final.status) == (previous, invoices_pb2.INVOICE_FINAL), customer_id


def iso_z(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# A backlog of due periods larger than one answer -------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_answers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server sending at most 1 MiB a message, so that a backlog of a few thousand empty periods outgrows one."""
    root = tmp_path_factory.mktemp("audit-calendar-backlog")
    process = ServerProcess(root / "data", extra_args=["--close-grace", "off", "--message-mb-max", "1"])
    yield from serving(process, catalogue)


def test_close_due_periods_with_a_backlog_larger_than_its_answer_answers_what_fits_and_pages_the_rest(
    small_answers: ServerProcess,
) -> None:
    """README limits: an answer is kept within --message-mb-max (lists end early). Sixteen customers with contracts from
    1970-01-01T00:00:01Z, each with 683 ended monthly periods by 2026-12 (one month more from 2027-01-01, and so
    on): 10,928 or more periods due, about 110 bytes an empty invoice, more than 1 MiB in all. CloseDuePeriods
    closes them all (in journaled slices of 256), and answers the first invoices that fit (fewer than made, never
    none), how many it made, and a next_page_token: the number of the last one shown, from which ListInvoices
    (no customer, no filters) pages on through the rest, each invoice exactly once, numbered INV-00000001 on
    without gap. A second call closes nothing and answers nothing. Before the fix the call closed every period and
    then answered RESOURCE_EXHAUSTED ("the answer is ... bytes, more than this server sends"), its invoices shown
    to no one and the retry answering none. `tariff invoices close --all` then prints every invoice a second such
    backlog makes."""
    with small_answers.client() as client:
        for n in range(16):
            contract(client, f"old{n}", f"old{n}", at("1970-01-01T00:00:01"))
        # Closed in journaled slices of 256 periods (43 commits): on a loaded 2-core machine that has taken more than
        # the client's default 10 s deadline, which is no part of what this test checks.
        answer = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest(), timeout=120)
        made = answer.invoices_made
        assert made >= 10928 and made % 16 == 0
        shown = [i.invoice_number for i in answer.invoices]
        assert 0 < len(shown) < made
        assert shown == [f"INV-{n:08d}" for n in range(1, len(shown) + 1)]
        assert answer.next_page_token == shown[-1]
        rest: list[str] = []
        token = answer.next_page_token
        while token:
            page = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(page_size=1000, page_token=token))
            rest += [i.invoice_number for i in page.invoices]
            token = page.next_page_token
        assert shown + rest == [f"INV-{n:08d}" for n in range(1, made + 1)]
        again = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
        assert (list(again.invoices), again.invoices_made, again.next_page_token) == ([], 0, "")
        # `tariff invoices close --all` shows every invoice the call made, those beyond its answer listed after it.
        for n in range(16):
            contract(client, f"older{n}", f"older{n}", at("1970-01-01T00:00:01"))
    closing = tariff(small_answers, "invoices", "close", "--all", "--json", env={"TARIFF_TIMEOUT_S": "100"})
    printed = json.loads(closing.stdout)["invoices"]
    numbers = [i["invoice_number"] for i in printed]
    assert len(numbers) >= made and len(numbers) % 16 == 0
    assert numbers == [f"INV-{n:08d}" for n in range(made + 1, made + len(numbers) + 1)]


def test_a_contract_ended_days_ago_keeps_its_running_last_period_open_until_its_monthly_end(
    closer: ServerProcess,
) -> None:
    """Contract.ending_before: the last period keeps its monthly end and is closed once that has passed. `recent`:
    from 10 days ago (a whole second) ending 1 day ago, so its one period runs from its start for a month, past
    now. Usage 4 units 5 days ago. Now: GetBalance shows no period (none in force now: charges "0", period unset);
    PreviewInvoice without an instant is FAILED_PRECONDITION naming that period; read at its start it is the draft
    (4 units, 4.00); ClosePeriod is FAILED_PRECONDITION saying when it ends (the anchor a month on, by hand), and
    CloseDuePeriods makes no invoice of it."""
    day_ms = 86_400_000
    start_ms = (now_ms() - 10 * day_ms) // 1000 * 1000
    end_ms = start_ms + 9 * day_ms
    period = monthly(start_ms, start_ms)
    with closer.client() as client:
        contract(client, "recent", "recent-c", start_ms, end_ms)
        assert rejected_in(client, event("r1", "recent", 4, start_ms + 5 * day_ms)) == []
        balance = client.get_balance("recent")
        assert balance.period_charges == "0"
        assert not balance.HasField("period_start") and not balance.HasField("period_end")
        code, details = refusal(
            lambda: client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id="recent"))
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and iso_z(start_ms) in details
        draft = preview(client, "recent", start_ms)
        assert (span(draft), lines(draft), draft.total_due) == (period, [("units", "4", "4", 1)], "4.00")
        code, details = refusal(lambda: close(client, "recent", start_ms))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and iso_z(period[1]) in details
        assert all(i.customer_id != "recent" for i in close_due(client))
