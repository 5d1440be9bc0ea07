"""An audit of re-rating where it meets credits (a retroactive PublishVersion, RollbackRateCard, SimulateVersion's
forecast of a publish), over the wire against a real server: expired grants, grants limited to products, priorities,
promotional and prepaid grants and their revenue, top-ups, and BLOCK contracts. Every amount asserted was computed
by hand from pricing.proto (PublishVersion, RollbackRateCard, SimulateVersion), contracts.proto (grants, top-ups),
README "Changing prices safely", "Credits and the gateway", "Invoices and revenue" and docs/architecture.md
"Re-rating and simulation", never read back from the server.

One rate card in credits: products `u` and `w` (SUM of `n`) at 1 credit a unit in version 1, in force since 2025.
Customers' contracts start on 2026-01-01; everything happens in periods long over (January 2026), with
`--close-grace off` so the server closes nothing by itself while a test runs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_audit_invoices_wire import JAN, MAR, but_final_fields, ms, preview, product, start_server, ts
from tests.test_audit_pricing_wire import month_start_ms, this_hour_ms
from tests.test_audit_revenue_wire import customer_lines, revenue, totals

CARD = "rerate-credits"
HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS


def rates(u: str, w: str) -> list[pricing_pb2.Rate]:
    return [
        pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price=price))
        for product_id, price in (("u", u), ("w", w))
    ]


def catalogue(client: TariffClient) -> None:
    for product_id in ("u", "w"):
        product(client, product_id)
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, name=CARD, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=rates("1", "1"))
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(ms("2025-01-01T00:00:00")))
    )


def customer(
    client: TariffClient,
    customer_id: str,
    overage_price: str,
    policy: contracts_pb2.OveragePolicy = contracts_pb2.ALLOW,
) -> str:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-c",
            customer_id=customer_id,
            rate_card_id=CARD,
            starting_at=ts(JAN),
            overage_policy=policy,
            overage_price=overage_price,
            currency="USD",
        )
    )
    return f"{customer_id}-c"


def grant(client: TariffClient, customer_id: str, grant_id: str, amount: str, paid: str, **fields: object) -> None:
    kind = contracts_pb2.PREPAID if paid != "0" else contracts_pb2.PROMOTIONAL
    client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=grant_id,
                contract_id=f"{customer_id}-c",
                kind=kind,
                amount=amount,
                paid_amount=paid,
                **fields,  # type: ignore[arg-type]
            )
        )
    )


def ingest(client: TariffClient, customer_id: str, rows: Sequence[tuple[str, float, int]], key: str) -> None:
    """rows: (product, n, timestamp ms), one batch."""
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"{customer_id}-{key}-{index}",
            customer_id=customer_id,
            event_type=product_id,
            timestamp_ms=at_ms,
            dimensions={"k": "a"},
            values={"n": n},
        )
        for index, (product_id, n, at_ms) in enumerate(rows)
    ]
    ack = client.ingest_batch(events, f"{customer_id}-{key}")
    assert ack.accepted == len(events), ack.rejected


def draft(client: TariffClient, u: str, w: str) -> int:
    made = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=rates(u, w))
    )
    return int(made.version)


def publish(client: TariffClient, version: int, from_ms: int = JAN) -> pricing_pb2.PublishVersionResponse:
    """Publishes `version` for everyone from from_ms (January 1: re-rating January)."""
    done: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version, effective_from=stamp(from_ms))
    )
    return done


def rerated(done: pricing_pb2.PublishVersionResponse) -> tuple[int, int, int, str]:
    return (done.customers_rerated, done.buckets_rerated, done.events_rerated, done.rerated_amount_delta)


def grants(client: TariffClient, customer_id: str) -> dict[str, tuple[str, str, str]]:
    """grant id -> (drawn, remaining, expired), from GetBalance."""
    return {g.grant_id: (g.drawn, g.remaining, g.expired) for g in client.get_balance(customer_id).grants}


def january(client: TariffClient, customer_id: str) -> tuple[str, dict[str, str], str, str, str, str]:
    """January's draft invoice: (subtotal, credits applied per grant, overage_amount, overage_due,
    top_up_purchases, total_due)."""
    invoice = preview(client, customer_id, JAN)
    applied = {c.grant_id: c.credits for c in invoice.credits_applied}
    return (
        invoice.subtotal,
        applied,
        invoice.overage_amount,
        invoice.overage_due,
        invoice.top_up_purchases,
        invoice.total_due,
    )


def lines(client: TariffClient, customer_id: str) -> dict[str, tuple[str, str, dict[str, str]]]:
    """January's lines: line id -> (amount, overage, credits applied per grant)."""
    invoice = preview(client, customer_id, JAN)
    return {
        line.line_id: (line.amount, line.overage, {c.grant_id: c.credits for c in line.credits_applied})
        for line in invoice.lines
    }


def adjustments(client: TariffClient, customer_id: str, line_id: str) -> list[tuple[list[int], int, str, str, str]]:
    """A January line's re-rating adjustments: (old_versions, new_version, old_amount, new_amount, delta)."""
    invoice = preview(client, customer_id, JAN)
    (line,) = [line for line in invoice.lines if line.line_id == line_id]
    return [(list(a.old_versions), a.new_version, a.old_amount, a.new_amount, a.delta) for a in line.adjustments]


def expiring_in_seconds(seconds: int) -> tuple[int, int]:
    """(an expiry this many whole seconds from now, the start of the billing period it ends in: periods of
    contracts starting on January 1 start on a month's first day)."""
    expiry = (time.time_ns() // 1_000_000_000 + seconds) * 1000
    last_usable = datetime.fromtimestamp((expiry - 1) / 1000, UTC)
    return expiry, int(datetime(last_usable.year, last_usable.month, 1, tzinfo=UTC).timestamp() * 1000)


def revenue_by_period(
    client: TariffClient, customer_id: str, last_period_ms: int, breakage: str
) -> tuple[dict[int, tuple[str, str, str, str]], tuple[str, str, str, str, str, str, bool]]:
    """From January to the period starting at last_period_ms, once the reconciliation shows `breakage` (the
    server's clock records it a moment after it is due): (period start -> (recognized_credits, recognized_overage,
    breakage, deferred), the reconciliation)."""
    for _ in range(400):
        report = revenue(client, JAN, last_period_ms + 1, customer_id)
        if report.reconciliation.breakage == breakage:
            return {line[0]: line[1:] for line in customer_lines(report)}, totals(report)
        time.sleep(0.05)
    raise AssertionError(f"breakage {report.reconciliation.breakage}, not {breakage}")


def test_breakage_is_final_a_cut_breaks_the_credit_it_gives_back_a_rise_cannot_draw_broken_credit(
    server_factory: ServerFactory,
) -> None:
    """10 credits for 5 (0.5 a credit) expiring 5 s from now; 4 units of `u` on January 1 draw 4, then the
    server's clock breaks the other 6 (3 USD) in the period the expiry ends (this month). A cut to 0.5 from January
    1 re-rates the 4 to 2: the 2 given back land on the expired grant and break too (README: breakage, once
    recorded, is final; it only grows): 8 broken (4 USD), 2 drawn (1 USD recognised in January). A rise to 2 from
    January 1 then re-rates the usage to 8: the grant was usable at that hour, but only the 2 it still paid can be
    drawn again; the 8 broken stay broken, so 6 are overage at 0.5 USD: 3 USD due in January."""
    expiry, expiry_period = expiring_in_seconds(5)
    with start_server(server_factory, "expired") as client:
        catalogue(client)
        customer(client, "e", "0.5")
        grant(client, "e", "soon", "10", "5", expires_at=ts(expiry))
        ingest(client, "e", [("u", 4, JAN + HOUR_MS)], "jan")
        lines_by_period, _ = revenue_by_period(client, "e", expiry_period, "3")
        assert (lines_by_period[JAN], lines_by_period[expiry_period]) == (("2", "0", "0", "3"), ("0", "0", "3", "0"))
        assert grants(client, "e") == {"soon": ("4", "0", "6")}
        cut = publish(client, draft(client, "0.5", "0.5"))
        assert rerated(cut) == (1, 1, 1, "-2")
        lines_by_period, reconciliation = revenue_by_period(client, "e", expiry_period, "4")
        assert (lines_by_period[JAN], lines_by_period[expiry_period]) == (("1", "0", "0", "4"), ("0", "0", "4", "0"))
        assert reconciliation == ("0", "5", "1", "4", "0", "0", True)
        assert grants(client, "e") == {"soon": ("2", "0", "8")}
        assert january(client, "e") == ("2", {"soon": "2"}, "0", "0.00", "0.00", "0.00")
        rise = publish(client, draft(client, "2", "2"))
        assert rerated(rise) == (1, 1, 1, "6")
        assert grants(client, "e") == {"soon": ("2", "0", "8")}
        assert january(client, "e") == ("8", {"soon": "2"}, "6", "3.00", "0.00", "3.00")
        assert [
            [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in preview(client, "e", at).grant_balances]
            for at in (JAN, expiry_period)
        ] == [[("soon", "10", "2", "8", "0")], [("soon", "10", "2", "0", "8")]]
        lines_by_period, reconciliation = revenue_by_period(client, "e", expiry_period, "4")
        assert (lines_by_period[JAN], lines_by_period[expiry_period]) == (("1", "3", "0", "4"), ("0", "0", "4", "0"))
        assert reconciliation == ("0", "5", "1", "4", "0", "3", True)
        assert adjustments(client, "e", "u;k=a") == [([1], 2, "4", "2", "-2"), ([2], 3, "2", "8", "6")]


def test_grants_limited_to_a_product_and_priorities_are_settled_again_and_a_rollback_restores_the_draws(
    server_factory: ServerFactory,
) -> None:
    """`w-only` (5 credits, priority 1, only for `w`) and `any` (10, priority 2), both promotional. 6 units of `u`
    in hour 1 draw 6 of `any` (`w-only` cannot pay for `u`); 3 of `w` in hour 2 draw 3 of `w-only` (it burns
    first). Prices doubled from January 1: `u`'s 12 draw `any`'s 10, 2 overage; `w`'s 6 draw `w-only`'s 5 and
    nothing of `any` (spent), 1 overage: 3 overage at 1 USD. A rollback to version 1 from January 1 (version 3)
    puts back the first draws and clears the overage; each line then cites both re-ratings."""
    with start_server(server_factory, "applicable") as client:
        catalogue(client)
        customer(client, "p", "1")
        grant(client, "p", "w-only", "5", "0", priority=1, applicable_product_ids=["w"])
        grant(client, "p", "any", "10", "0", priority=2)
        ingest(client, "p", [("u", 6, JAN + HOUR_MS), ("w", 3, JAN + 2 * HOUR_MS)], "jan")
        assert lines(client, "p") == {"u;k=a": ("6", "0", {"any": "6"}), "w;k=a": ("3", "0", {"w-only": "3"})}
        assert rerated(publish(client, draft(client, "2", "2"))) == (1, 2, 2, "9")
        assert grants(client, "p") == {"w-only": ("5", "0", "0"), "any": ("10", "0", "0")}
        assert lines(client, "p") == {"u;k=a": ("12", "2", {"any": "10"}), "w;k=a": ("6", "1", {"w-only": "5"})}
        assert january(client, "p") == ("18", {"any": "10", "w-only": "5"}, "3", "3.00", "0.00", "3.00")
        back = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(JAN))
        )
        assert (back.version.version, back.version.rollback_from_version) == (3, 2)
        assert rerated(back) == (1, 2, 2, "-9")
        assert grants(client, "p") == {"w-only": ("3", "2", "0"), "any": ("6", "4", "0")}
        assert january(client, "p") == ("9", {"any": "6", "w-only": "3"}, "0", "0.00", "0.00", "0.00")
        assert adjustments(client, "p", "w;k=a") == [([1], 2, "3", "6", "3"), ([2], 3, "6", "3", "-3")]


def simulate(client: TariffClient, version: int) -> list[tuple[str, str, str, str, str]]:
    """SimulateVersion over January: (customer, product, current, simulated, delta), then the totals."""
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=CARD, version=version, period_start=ts(JAN), period_end=ts(ms("2026-02-01T00:00:00"))
    )
    answer = client.pricing.SimulateVersion(request)
    rows = [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in answer.amounts]
    t = answer.totals
    return [*rows, ("total", "", t.current_amount, t.simulated_amount, t.delta)]


def test_prepaid_revenue_follows_a_cut_and_a_rise_and_simulate_forecasts_each_publish_per_customer(
    server_factory: ServerFactory,
) -> None:
    """Customer r: `promo` 2 credits free (priority 0), `pre` 10 for 4 (0.4 a credit, priority 1); 6 units of `u`
    in January draw promo 2 and pre 4: 1.6 USD recognised, 2.4 deferred. Customer s: no grant, 2 units of `w`, all
    overage. A cut to 0.5: r's 3 give back 3 of `pre` (reverse burn order) and keep `promo`'s 2: 0.4 recognised,
    3.6 deferred; s's 1 halves its overage. A rise to 3: r's 18 draw promo 2, pre 10, 6 overage (0.5 USD: 3);
    4 recognised, nothing deferred; s's 6. Each time SimulateVersion, run before the publish, names per customer
    and product exactly the old and new amounts the publish then sets, and its delta total is the publish's."""
    with start_server(server_factory, "prepaid") as client:
        catalogue(client)
        customer(client, "r", "0.5")
        customer(client, "s", "0.5")
        grant(client, "r", "promo", "2", "0", priority=0)
        grant(client, "r", "pre", "10", "4", priority=1)
        ingest(client, "r", [("u", 6, JAN + HOUR_MS)], "jan")
        ingest(client, "s", [("w", 2, JAN + HOUR_MS)], "jan")
        assert customer_lines(revenue(client, JAN, MAR, "r"))[0] == (JAN, "1.6", "0", "0", "2.4")
        cut = draft(client, "0.5", "0.5")
        assert simulate(client, cut) == [
            ("r", "u", "6", "3", "-3"),
            ("s", "w", "2", "1", "-1"),
            ("total", "", "8", "4", "-4"),
        ]
        assert rerated(publish(client, cut)) == (2, 2, 2, "-4")
        assert grants(client, "r") == {"promo": ("2", "0", "0"), "pre": ("1", "9", "0")}
        assert january(client, "r") == ("3", {"promo": "2", "pre": "1"}, "0", "0.00", "0.00", "0.00")
        assert january(client, "s") == ("1", {}, "1", "0.50", "0.00", "0.50")
        report = revenue(client, JAN, MAR, "r")
        assert customer_lines(report)[0] == (JAN, "0.4", "0", "0", "3.6")
        assert totals(report) == ("0", "4", "0.4", "0", "3.6", "0", True)
        rise = draft(client, "3", "3")
        assert simulate(client, rise) == [
            ("r", "u", "3", "18", "15"),
            ("s", "w", "1", "6", "5"),
            ("total", "", "4", "24", "20"),
        ]
        assert rerated(publish(client, rise)) == (2, 2, 2, "20")
        assert grants(client, "r") == {"promo": ("2", "0", "0"), "pre": ("10", "0", "0")}
        assert january(client, "r") == ("18", {"promo": "2", "pre": "10"}, "6", "3.00", "0.00", "3.00")
        assert january(client, "s") == ("6", {}, "6", "3.00", "0.00", "3.00")
        report = revenue(client, JAN, MAR, "r")
        assert customer_lines(report)[0] == (JAN, "4", "3", "0", "0")
        assert totals(report) == ("0", "4", "4", "0", "0", "3", True)
        recognised = {g.grant_id: g.recognized_revenue for g in client.get_balance("r").grants}
        assert recognised == {"promo": "0", "pre": "4"}
        # r's January closed as re-rated; a rollback to version 1 then re-rates s (6 -> 2) and leaves r's 18 alone.
        draft_invoice = preview(client, "r", JAN)
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="r", period_start=ts(JAN)))
        assert (final.status, but_final_fields(final)) == (invoices_pb2.INVOICE_FINAL, but_final_fields(draft_invoice))
        back = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(JAN))
        )
        assert rerated(back) == (1, 1, 1, "-4")
        assert (back.closed_buckets_left_alone, back.closed_amount_left_alone) == (1, "18")
        assert grants(client, "r") == {"promo": ("2", "0", "0"), "pre": ("10", "0", "0")}
        assert customer_lines(revenue(client, JAN, MAR, "r"))[0] == (JAN, "4", "3", "0", "0")
        assert january(client, "s") == ("2", {}, "2", "1.00", "0.00", "1.00")


def test_a_retroactive_rise_on_a_block_contract_is_overage_and_authorize_then_denies(
    server_factory: ServerFactory,
) -> None:
    """BLOCK only makes Authorize deny once credit is spent; usage that happened is recorded (contracts.proto), and
    re-rating is not usage the gateway could refuse: 8 units on 10 free credits, then the price doubled from
    January 1: 16, 10 drawn, 6 overage at 1 USD, on a BLOCK contract as on any."""
    with start_server(server_factory, "block") as client:
        catalogue(client)
        customer(client, "b", "1", contracts_pb2.BLOCK)
        grant(client, "b", "free", "10", "0")
        ingest(client, "b", [("u", 8, JAN + HOUR_MS)], "jan")
        assert rerated(publish(client, draft(client, "2", "2"))) == (1, 1, 1, "8")
        assert grants(client, "b") == {"free": ("10", "0", "0")}
        assert january(client, "b") == ("16", {"free": "10"}, "6", "6.00", "0.00", "6.00")
        assert client.get_balance("b").credits_available == "0"
        assert not client.authorize("b", "u", dimensions={"k": "a"}, values={"n": 1}).allowed


def top_ups_in_january(client: TariffClient, customer_id: str, max_per_period: int) -> None:
    """Below 1 credit, recharge to 4 at 0.5 USD a credit. 3 units of `u` in each of hours 1, 2, 3, one batch each:
    the first is all overage (no credit yet) and buys 4 (top-up 1, 2 USD); the second draws 3 of them (1 left, not
    below 1); the third draws the last 1, 2 overage, and buys 4 more (top-up 2): 9 charged, 4 drawn, 5 overage,
    top-ups 4 USD."""
    contract_id = customer(client, customer_id, "1")
    policy = contracts_pb2.TopUpPolicy(
        threshold="1", recharge_to="4", price_per_credit="0.5", max_per_period=max_per_period
    )
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
    for hour in (1, 2, 3):
        ingest(client, customer_id, [("u", 3, JAN + hour * HOUR_MS)], f"h{hour}")


TOP_UP_1, TOP_UP_2, TOP_UP_3 = (f"top-up-{JAN}-{n}" for n in (1, 2, 3))


def test_rerating_neither_buys_nor_gives_back_top_ups_and_the_cap_still_counts_them(
    server_factory: ServerFactory,
) -> None:
    """A purchase is a sale made when an event left credit below the threshold; re-rating changes charges, not
    sales. A cut to 0.5 from January 1 (4.5 charged) gives back no top-up: both stay bought (4 USD due); a rise to
    2 (18 charged) buys none either, though credit ends at 0: the 8 credits bought are drawn, 10 overage. The
    next event (1 unit, 2) is rated against nothing: 2 overage, and buys top-up 3 (the cap is 3); then 1 unit
    draws 2 of it, then 2 units draw its last 2 and leave 2 overage and credit at 0, with no fourth purchase."""
    with start_server(server_factory, "top-ups") as client:
        catalogue(client)
        top_ups_in_january(client, "t", 3)
        assert january(client, "t") == ("9", {TOP_UP_1: "4"}, "5", "5.00", "4.00", "9.00")
        assert rerated(publish(client, draft(client, "0.5", "0.5"))) == (1, 3, 3, "-4.5")
        invoice = preview(client, "t", JAN)
        assert (invoice.subtotal, invoice.top_up_purchases) == ("4.5", "4.00")
        assert sorted(grants(client, "t")) == [TOP_UP_1, TOP_UP_2]
        assert rerated(publish(client, draft(client, "2", "2"))) == (1, 3, 3, "13.5")
        assert grants(client, "t") == {TOP_UP_1: ("4", "0", "0"), TOP_UP_2: ("4", "0", "0")}
        assert january(client, "t") == ("18", {TOP_UP_1: "4", TOP_UP_2: "4"}, "10", "10.00", "4.00", "14.00")
        for hour, n in ((4, 1.0), (5, 1.0), (6, 2.0)):
            ingest(client, "t", [("u", n, JAN + hour * HOUR_MS)], f"h{hour}")
        assert grants(client, "t")[TOP_UP_3] == ("4", "0", "0")
        assert len(grants(client, "t")) == 3
        assert january(client, "t") == (
            "26",
            {TOP_UP_1: "4", TOP_UP_2: "4", TOP_UP_3: "4"},
            "14",
            "14.00",
            "6.00",
            "20.00",
        )


def test_a_version_with_the_same_prices_published_from_the_first_leaves_top_up_draws_as_rated(
    server_factory: ServerFactory,
) -> None:
    """docs/architecture.md, "Re-rating and simulation": settled again, the draws are "what rating the usage on
    time with the final timeline would have drawn". A version with version 1's prices, published from January 1,
    changes no charge: rated on time, hour 1 (3) was all overage, bought top-up 1 after its draw (README: "the
    purchase follows the draw"), so January's 5 overage and its draws must stay as they were."""
    with start_server(server_factory, "top-ups-same") as client:
        catalogue(client)
        top_ups_in_january(client, "t", 3)
        before = january(client, "t")
        assert before == ("9", {TOP_UP_1: "4"}, "5", "5.00", "4.00", "9.00")
        same = publish(client, draft(client, "1", "1"))
        assert rerated(same)[3] == "0"
        assert january(client, "t") == before


def two_top_ups_in_january(client: TariffClient, customer_id: str) -> None:
    """Below 2, recharge to 10 at 0.5 USD a credit, up to 3 a period; `u` at 1: 4 units in hour 1 (all overage, no
    credit yet: buys top-up 1, 10 credits, with January charged 4), 9 in hour 2 (drawn from top-up 1, 1 left: buys
    top-up 2, 9 credits, January charged 13), 2 in hour 3 (1 from each). 15 charged, 11 drawn, 4 overage (4 USD),
    19 credits bought (9.50 USD), 13.50 due."""
    customer(client, customer_id, "1")
    policy = contracts_pb2.TopUpPolicy(threshold="2", recharge_to="10", price_per_credit="0.5", max_per_period=3)
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{customer_id}-c", top_up=policy))
    for hour, n in ((1, 4), (2, 9), (3, 2)):
        ingest(client, customer_id, [("u", n, JAN + hour * HOUR_MS)], f"h{hour}")


TWO_TOP_UPS_RATED = ("15", {TOP_UP_1: "10", TOP_UP_2: "1"}, "4", "4.00", "9.50", "13.50")
# After u at 1.5 from January 1 (see the test below).
TWO_TOP_UPS_RERATED = ("22.5", {TOP_UP_1: "10", TOP_UP_2: "8.5"}, "4", "4.00", "9.50", "13.50")


def test_two_top_ups_each_pay_only_the_charges_after_the_draw_that_bought_it_when_a_rise_re_rates_them(
    server_factory: ServerFactory,
) -> None:
    """docs/architecture.md "Re-rating and simulation": settled again, a top-up pays only its period's charges beyond
    those at which it was bought (4 for top-up 1, 13 for top-up 2). u at 1.5 from January 1: hours 1, 2, 3 cost 6,
    13.5, 3 (22.5). Hour 1: its first 4 are overage, as when rated (they bought top-up 1), the other 2 draw top-up 1
    (8 left). Hour 2 (charges 6 -> 19.5): up to 13 without top-up 2, so 7 from top-up 1 (1 left); the other 6.5 in
    burn order, 1 from top-up 1 and 5.5 from top-up 2 (3.5 left). Hour 3: 3 from top-up 2 (0.5 left). Overage
    stays 4; drawn 10 and 8.5. No top-up is bought or given back (19 credits, 9.50 USD). Before the rule, both
    top-ups paid from January 1: hour 1 all from top-up 1, 0.5 of hour 2 and all of hour 3 overage (3.5)."""
    with start_server(server_factory, "two-top-ups") as client:
        catalogue(client)
        two_top_ups_in_january(client, "t")
        assert january(client, "t") == TWO_TOP_UPS_RATED
        assert grants(client, "t") == {TOP_UP_1: ("10", "0", "0"), TOP_UP_2: ("1", "8", "0")}
        assert rerated(publish(client, draft(client, "1.5", "1.5"))) == (1, 3, 3, "7.5")
        assert january(client, "t") == TWO_TOP_UPS_RERATED
        assert grants(client, "t") == {TOP_UP_1: ("10", "0", "0"), TOP_UP_2: ("8.5", "0.5", "0")}
        assert client.get_balance("t").credits_available == "0.5"


@pytest.mark.parametrize("snapshot_every", ["100000", "4"])
def test_a_re_rating_of_top_ups_replays_alike_after_a_restart(tmp_path: Path, snapshot_every: str) -> None:
    """Replay applies the journaled publish as it applied, from the journal alone or from a snapshot taken on the way
    (which keeps each purchase's charges when bought): after kill -9 and a restart, GetBalance and January's draft
    invoice are as after the publish (the amounts of the test above: 0.5 credits available)."""
    process = ServerProcess(tmp_path / "data", extra_args=["--close-grace", "off", "--snapshot-every", snapshot_every])
    process.start()
    try:
        with process.client() as client:
            catalogue(client)
            two_top_ups_in_january(client, "t")
            publish(client, draft(client, "1.5", "1.5"))
            assert january(client, "t") == TWO_TOP_UPS_RERATED
            before = (grants(client, "t"), lines(client, "t"), client.get_balance("t").credits_available)
        process.kill9()
        process.restart()
        with process.client() as client:
            assert january(client, "t") == TWO_TOP_UPS_RERATED
            assert (grants(client, "t"), lines(client, "t"), client.get_balance("t").credits_available) == before
            assert grants(client, "t")[TOP_UP_2] == ("8.5", "0.5", "0")
    finally:
        process.stop()


def test_simulate_matches_a_publish_per_customer_except_hours_a_cohort_version_keeps_as_documented(
    server_factory: ServerFactory,
) -> None:
    """c1 and c2 each have 5 free credits and use 4 units of `u` on January 1 and 4 on January 12. A pilot version
    (u at 2) for c1 from January 11 re-rates c1's second hour to 8: 5 + 7 overage. Then version 3 (u at 3) for
    everyone from January 1: SimulateVersion prices every hour of January by version 3 (c1 12 -> 24, c2 8 -> 24),
    but the publish leaves c1's January 12 to the pilot's version, newer-effective there (README: it re-rates to
    the simulated amounts only for customers without one): c1 12 -> 20 (+8), c2 8 -> 24 (+16), 24 in all, 3
    buckets. c1's draws: 12 (5 credits, 7 overage) then 8 overage; c2's 5 credits and 19 overage."""
    with start_server(server_factory, "cohort") as client:
        catalogue(client)
        second = JAN + 11 * DAY_MS + HOUR_MS
        for who in ("c1", "c2"):
            customer(client, who, "1")
            grant(client, who, f"{who}-free", "5", "0")
            ingest(client, who, [("u", 4, JAN + HOUR_MS), ("u", 4, second)], "jan")
        pilot = pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=draft(client, "2", "2"),
            effective_from=stamp(JAN + 10 * DAY_MS),
            cohort=pricing_pb2.Cohort(customer_ids=["c1"]),
        )
        assert rerated(client.pricing.PublishVersion(pilot)) == (1, 1, 1, "4")
        assert january(client, "c1") == ("12", {"c1-free": "5"}, "7", "7.00", "0.00", "7.00")
        everyone = draft(client, "3", "3")
        assert simulate(client, everyone) == [
            ("c1", "u", "12", "24", "12"),
            ("c2", "u", "8", "24", "16"),
            ("total", "", "20", "48", "28"),
        ]
        assert rerated(publish(client, everyone)) == (2, 3, 3, "24")
        assert january(client, "c1") == ("20", {"c1-free": "5"}, "15", "15.00", "0.00", "15.00")
        assert january(client, "c2") == ("24", {"c2-free": "5"}, "19", "19.00", "0.00", "19.00")
        assert adjustments(client, "c1", "u;k=a") == [([1], 2, "4", "8", "4"), ([1], 3, "4", "12", "8")]


def test_simulate_leaves_out_a_closed_periods_usage_as_the_publish_leaves_it_alone(
    server_factory: ServerFactory,
) -> None:
    """README: simulate leaves out usage in closed periods (a publish leaves it alone too). j's January is closed,
    k's is open; both used 3 units of `u` on 10 free credits. Simulating u at 2 over January shows k only; the
    publish re-rates k alone (3 -> 6, drawn from its grant) and counts j's 3 as left alone, j's draws unchanged."""
    with start_server(server_factory, "closed") as client:
        catalogue(client)
        for who in ("j", "k"):
            customer(client, who, "1")
            grant(client, who, f"{who}-free", "10", "0")
            ingest(client, who, [("u", 3, JAN + HOUR_MS)], "jan")
        client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="j", period_start=ts(JAN)))
        rise = draft(client, "2", "2")
        assert simulate(client, rise) == [("k", "u", "3", "6", "3"), ("total", "", "3", "6", "3")]
        done = publish(client, rise)
        assert rerated(done) == (1, 1, 1, "3")
        assert (done.closed_buckets_left_alone, done.closed_amount_left_alone) == (1, "3")
        assert (grants(client, "j"), grants(client, "k")) == (
            {"j-free": ("3", "7", "0")},
            {"k-free": ("6", "4", "0")},
        )


def test_a_grant_starting_inside_an_hour_is_judged_at_that_hours_start_when_rerated(
    server_factory: ServerFactory,
) -> None:
    """docs/architecture.md: settled again, grants are judged usable at the bucket's hour start (a grant starting
    inside an hour is taken as of that hour's start). 5 free credits starting at 01:15 on January 1; an event of
    2 units at 01:30 draws 2 of them when rated (usable at its time). A version with the same prices published
    from January 1 changes no bucket's amount, so nothing is settled again: 2 drawn, as rated. u at 2 from January
    1 makes the bucket 4 and settles the hour 01:00 again: the grant had not started at 01:00, so the 4 are
    overage (4.00 due at 1)."""
    with start_server(server_factory, "mid-hour") as client:
        catalogue(client)
        customer(client, "m", "1")
        grant(client, "m", "late", "5", "0", starts_at=ts(JAN + HOUR_MS + 15 * 60_000))
        ingest(client, "m", [("u", 2, JAN + HOUR_MS + 30 * 60_000)], "jan")
        assert january(client, "m") == ("2", {"late": "2"}, "0", "0.00", "0.00", "0.00")
        assert rerated(publish(client, draft(client, "1", "1"))) == (1, 1, 1, "0")
        assert january(client, "m") == ("2", {"late": "2"}, "0", "0.00", "0.00", "0.00")
        assert grants(client, "m") == {"late": ("2", "3", "0")}
        assert rerated(publish(client, draft(client, "2", "1"))) == (1, 1, 1, "2")
        assert january(client, "m") == ("4", {}, "4", "4.00", "0.00", "4.00")
        assert grants(client, "m") == {"late": ("0", "5", "0")}


def test_get_balance_follows_a_publish_from_the_current_hour_through_a_rise_and_a_cut(
    server_factory: ServerFactory,
) -> None:
    """The current period: a contract from last month's start, 10 credits for 5 (0.5 a credit), overage at 0.5 USD;
    6 units of `u` this hour: 6 charged, 6 drawn, 4 available, 3 USD recognised. u at 2 from this hour: 12, the
    grant's 10 drawn, 2 overage (1 USD), nothing available, 5 recognised. u at 0.5 from this hour: 3, 3 drawn, 7
    available, no overage, 1.5 recognised. Each time SimulateVersion over this hour forecasts the publish's delta."""
    hour = this_hour_ms()
    with start_server(server_factory, "now") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="g", name="g"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="g-c", customer_id="g", rate_card_id=CARD, starting_at=ts(month_start_ms(1)), overage_price="0.5"
            )
        )
        grant(client, "g", "pre", "10", "5")
        ingest(client, "g", [("u", 6, hour + 1)], "now")

        def balance() -> tuple[str, str, str, str, str, dict[str, tuple[str, str]]]:
            b = client.get_balance("g")
            by_grant = {g.grant_id: (g.drawn, g.recognized_revenue) for g in b.grants}
            return (
                b.period_charges,
                b.overage_amount,
                b.overage_due,
                b.credits_remaining,
                b.credits_available,
                by_grant,
            )

        def forecast_and_publish(u: str) -> tuple[str, str]:
            version = draft(client, u, u)
            request = pricing_pb2.SimulateVersionRequest(
                rate_card_id=CARD, version=version, period_start=ts(hour), period_end=ts(hour + HOUR_MS)
            )
            forecast = client.pricing.SimulateVersion(request).totals.delta
            done: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version, effective_from=ts(hour))
            )
            return forecast, done.rerated_amount_delta

        assert balance() == ("6", "0", "0", "4", "4", {"pre": ("6", "3")})
        assert forecast_and_publish("2") == ("6", "6")
        assert balance() == ("12", "2", "1", "0", "0", {"pre": ("10", "5")})
        assert forecast_and_publish("0.5") == ("-9", "-9")
        assert balance() == ("3", "0", "0", "7", "7", {"pre": ("3", "1.5")})


def test_a_cut_leaves_an_open_hold_as_it_was_and_the_settling_event_is_priced_at_the_new_price(
    server_factory: ServerFactory,
) -> None:
    """BLOCK, 10 free credits, this hour: 4 units of `u` (4 drawn), then a hold for 3 units (3 held: 6 remaining,
    3 available). u at 0.5 from this hour: the usage costs 2 (8 remaining); the hold is not re-rated (re-rating
    never creates, changes or ends a reservation): 3 held, 5 available. The event settling it, 3 units, costs 1.5
    at the price in force: the hold gives back 3 and 1.5 is drawn: 6.5 remaining and available, 3.5 charged."""
    hour = this_hour_ms()
    with start_server(server_factory, "hold") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="h", name="h"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="h-c",
                customer_id="h",
                rate_card_id=CARD,
                starting_at=ts(month_start_ms(1)),
                overage_policy=contracts_pb2.BLOCK,
            )
        )
        grant(client, "h", "free", "10", "0")
        ingest(client, "h", [("u", 4, hour + 1)], "used")
        held = client.authorize("h", "u", {"k": "a"}, {"n": 3}, reserve=True, reservation_id="h1")
        assert (held.allowed, held.estimated_cost) == (True, "3")

        def balance() -> tuple[str, str, str, str, str]:
            b = client.get_balance("h")
            return (b.period_charges, b.overage_amount, b.credits_remaining, b.credits_held, b.credits_available)

        assert balance() == ("4", "0", "6", "3", "3")
        done = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=draft(client, "0.5", "0.5"), effective_from=ts(hour)
            )
        )
        assert rerated(done) == (1, 1, 1, "-2")
        assert balance() == ("2", "0", "8", "3", "5")
        settling = usage_pb2.UsageEvent(
            transaction_id="settle",
            customer_id="h",
            event_type="u",
            timestamp_ms=hour + 2,
            dimensions={"k": "a"},
            values={"n": 3},
            reservation_id="h1",
        )
        ack = client.ingest_batch([settling], "h-settle")
        assert (ack.accepted, list(ack.notices)) == (1, [])
        assert balance() == ("3.5", "0", "6.5", "0", "6.5")


def test_a_rollover_grants_draws_are_settled_again_at_its_cost_basis_and_rolled_credit_pays_no_earlier_period(
    server_factory: ServerFactory,
) -> None:
    """A contract from last month's start, overage at 1 USD. 4 units of `u` last month, rated with no credit: 4
    overage. Then 10 credits for 3 (0.3) with rollover_fraction 0.5, starting last month: that period is over, so it
    rolls over at once, 5 into `rollover-roll-<this month's start>` (usable this month, cost 0.3) and 5 broken (1.5
    USD, last month's). 3 units this hour draw 3 of the rolled grant (0.9 recognised). u at 2 from last month's
    start: last month's 8 stay overage (the rolled credit is usable from this month only, the original grant has
    nothing left); this month's 6 draw the rolled 5 (1.5) and 1 is overage. u at 0.5 instead: last month 2
    overage; this month 1.5 drawn (0.45), 1.05 deferred."""
    last, this = month_start_ms(1), month_start_ms(0)
    hour = this_hour_ms()
    rolled = f"rollover-roll-{this}"
    with start_server(server_factory, "rollover") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="o", name="o"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(id="o-c", customer_id="o", rate_card_id=CARD, starting_at=ts(last))
        )
        ingest(client, "o", [("u", 4, last + HOUR_MS)], "last")
        grant(client, "o", "roll", "10", "3", rollover_fraction="0.5")
        for _ in range(400):
            if rolled in grants(client, "o"):
                break
            time.sleep(0.05)
        ingest(client, "o", [("u", 3, hour + 1)], "this")
        assert grants(client, "o")[rolled] == ("3", "2", "0")

        def revenue_lines() -> list[tuple[int, str, str, str, str]]:
            return customer_lines(revenue(client, last, this + 1, "o"))

        assert revenue_lines() == [(last, "0", "4", "1.5", "1.5"), (this, "0.9", "0", "0", "0.6")]
        rise = publish(client, draft(client, "2", "2"), last)
        assert rerated(rise) == (1, 2, 2, "7")
        assert grants(client, "o")[rolled] == ("5", "0", "0")
        balance = client.get_balance("o")
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("6", "1", "1")
        assert revenue_lines() == [(last, "0", "8", "1.5", "1.5"), (this, "1.5", "1", "0", "0")]
        # Invoices: the original grant "drew" the 5 that rolled, broke 5; the rolled grant is listed from this period.
        assert [
            [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in preview(client, "o", at).grant_balances]
            for at in (last, this)
        ] == [
            [("roll", "10", "5", "0", "5")],
            [("roll", "10", "5", "0", "5"), (rolled, "5", "5", "0", "0")],
        ]
        cut = publish(client, draft(client, "0.5", "0.5"), last)
        assert rerated(cut) == (1, 2, 2, "-10.5")
        assert grants(client, "o")[rolled] == ("1.5", "3.5", "0")
        assert revenue_lines() == [(last, "0", "2", "1.5", "1.5"), (this, "0.45", "0", "0", "1.05")]


def test_a_grant_made_after_usage_was_rated_pays_it_once_its_hours_are_re_rated(server_factory: ServerFactory) -> None:
    """3 units on January 1 with no credit: 3 overage. Then 5 free credits, starts_at defaulting to the contract's
    start (GrantCredits: "so it also pays for that contract's late usage"): usage already rated is not settled
    again by the grant (still 3 overage). A version with the same prices from January 1 changes no bucket's
    amount, so nothing is settled again (still 3 overage). u at 2 from January 1 makes the bucket 6 and settles
    January again as rating on time with the final timeline would have (docs/architecture.md): the grant, usable
    since January 1, pays 5 of the 6, 1 is overage."""
    with start_server(server_factory, "late-grant") as client:
        catalogue(client)
        customer(client, "l", "1")
        ingest(client, "l", [("u", 3, JAN + HOUR_MS)], "jan")
        grant(client, "l", "late", "5", "0")
        assert january(client, "l") == ("3", {}, "3", "3.00", "0.00", "3.00")
        assert rerated(publish(client, draft(client, "1", "1"))) == (1, 1, 1, "0")
        assert january(client, "l") == ("3", {}, "3", "3.00", "0.00", "3.00")
        assert grants(client, "l") == {"late": ("0", "5", "0")}
        assert rerated(publish(client, draft(client, "2", "1"))) == (1, 1, 1, "3")
        assert january(client, "l") == ("6", {"late": "5"}, "1", "1.00", "0.00", "1.00")
        assert grants(client, "l") == {"late": ("5", "0", "0")}
