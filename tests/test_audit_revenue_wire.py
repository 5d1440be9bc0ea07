"""An audit of recognised revenue and re-rating as a finance team reads them (GetRevenueReport in invoices.proto,
grants in contracts.proto, PublishVersion's re-rating in pricing.proto), over the wire against a real server, every
amount computed by hand from the docs, none read back from the server.

One rate card in credits: product `u` at 1 credit a unit (2 from version 2). Everything happens in periods long over
(2026-01 .. 2026-03), with `--close-grace off` so the server closes nothing by itself while a test runs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from decimal import Decimal
from fractions import Fraction

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import InvalidArgument, NotFound, TariffClient
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory
from tests.test_audit_invoices_wire import (
    FEB,
    JAN,
    MAR,
    close,
    ms,
    preview,
    product,
    start_server,
    ts,
    wait_for_breakage,
)

CARD = "audit-revenue"
HOUR_MS = 3_600_000
APR = ms("2026-04-01T00:00:00")


def unit_rate(price: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id="u", unit=pricing_pb2.UnitPrice(price=price, per_units="1"))


def catalogue(client: TariffClient) -> None:
    product(client, "u")
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, name=CARD, pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[unit_rate("1")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(ms("2025-01-01T00:00:00")))
    )


def customer(client: TariffClient, customer_id: str, overage_price: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-c",
            customer_id=customer_id,
            rate_card_id=CARD,
            starting_at=ts(JAN),
            overage_policy=contracts_pb2.ALLOW,
            overage_price=overage_price,
            currency="USD",
        )
    )


def grant(client: TariffClient, customer_id: str, grant_id: str, amount: str, paid: str, **fields: object) -> None:
    client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(
            grant=contracts_pb2.Grant(
                id=grant_id,
                contract_id=f"{customer_id}-c",
                kind=fields.pop("kind", contracts_pb2.PREPAID),  # type: ignore[arg-type]
                amount=amount,
                paid_amount=paid,
                **fields,  # type: ignore[arg-type]
            )
        )
    )


def ingest(client: TariffClient, customer_id: str, units: Sequence[float], first_ms: int, key: str) -> None:
    """One event a hour from first_ms + 1 h, of each of `units`."""
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"{customer_id}-{key}-{index}",
            customer_id=customer_id,
            event_type="u",
            timestamp_ms=first_ms + (index + 1) * HOUR_MS,
            dimensions={"k": "a"},
            values={"n": n},
        )
        for index, n in enumerate(units)
    ]
    ack = client.ingest_batch(events, f"{customer_id}-{key}")
    assert ack.accepted == len(events), ack.rejected


def revenue(client: TariffClient, start_ms: int, end_ms: int, customer_id: str) -> invoices_pb2.RevenueReport:
    found: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(period_start=ts(start_ms), period_end=ts(end_ms), customer_id=customer_id)
    )
    return found


def customer_lines(report: invoices_pb2.RevenueReport) -> list[tuple[int, str, str, str, str]]:
    """(period start, recognized_credits, recognized_overage, breakage, deferred) per customer line."""
    return [
        (
            line.period_start.ToMilliseconds(),
            line.recognized_credits,
            line.recognized_overage,
            line.breakage,
            line.deferred,
        )
        for line in report.customer_lines
    ]


def totals(report: invoices_pb2.RevenueReport) -> tuple[str, str, str, str, str, str, bool]:
    r = report.reconciliation
    return (
        r.deferred_start,
        r.prepaid_sold,
        r.recognized_credits,
        r.breakage,
        r.deferred_end,
        r.recognized_overage,
        r.reconciles,
    )


def three_grants_at_a_third(client: TariffClient, customer_id: str) -> None:
    """7 credits for 2.333331 and 11 for 3.666663 (0.333333 a credit), 13 for 1 (1/13 a credit, no finite
    decimal), burnt in that order; 17 events of 0.7 units in January (11.9 credits), 17 of 1.3 in February
    (22.1); overage at 0.5 USD."""
    customer(client, customer_id, "0.5")
    for grant_id, amount, paid, priority in (
        ("g1", "7", "2.333331", 1),
        ("g2", "11", "3.666663", 2),
        ("g3", "13", "1", 3),
    ):
        grant(client, customer_id, grant_id, amount, paid, priority=priority)
    ingest(client, customer_id, [0.7] * 17, JAN, "jan")
    ingest(client, customer_id, [1.3] * 17, FEB, "feb")


def test_grants_at_a_third_recognise_exactly_what_was_paid_over_many_odd_draws(server_factory: ServerFactory) -> None:
    """January draws g1 whole (2.333331) and 4.9 of g2 (4.9 x 0.333333 = 1.6333317): 3.9666627 recognised, 6.1 of
    g2 (2.0333313) and all of g3 (1) deferred. February draws the rest of g2 and g3 (3.0333313) and 22.1 - 19.1 = 3
    credits of overage (1.5 USD). Over both: 6.999994 recognised from credits = the 6.999994 paid, to the pico."""
    with start_server(server_factory, "thirds") as client:
        catalogue(client)
        three_grants_at_a_third(client, "t")
        report = revenue(client, JAN, APR, "t")
        assert customer_lines(report) == [
            (JAN, "3.9666627", "0", "0", "3.0333313"),
            (FEB, "3.0333313", "1.5", "0", "0"),
            (MAR, "0", "0", "0", "0"),
        ]
        assert totals(report) == ("0", "6.999994", "6.999994", "0", "0", "1.5", True)
        assert [(line.product_id, line.recognized, line.deferred) for line in report.lines] == [
            ("u", "3.9666627", ""),
            ("u", "4.5333313", ""),
        ]
        # A span that starts inside January counts February's period only, from January's deferred.
        split = revenue(client, JAN + 14 * 24 * HOUR_MS, FEB + 14 * 24 * HOUR_MS, "t")
        assert customer_lines(split) == [(FEB, "3.0333313", "1.5", "0", "0")]
        assert totals(split) == ("3.0333313", "0", "3.0333313", "0", "0", "1.5", True)
        # A span holding no period's start holds no line and moves nothing.
        empty = revenue(client, JAN + 1, FEB, "t")
        assert (list(empty.customer_lines), list(empty.lines)) == ([], [])
        assert totals(empty) == ("3.0333313", "0", "0", "0", "3.0333313", "0", True)


def test_a_retroactive_publish_re_rates_the_open_periods_revenue_and_never_a_closed_ones(
    server_factory: ServerFactory,
) -> None:
    """January closed, then version 2 (2 credits a unit) from January 1: January's 17 buckets (11.9 credits) are
    left alone, February's 17 re-rated to 44.2 credits (+22.1). February's draws are settled anew: the 19.1 credits
    left in g2 and g3 are drawn as before (3.0333313), the other 25.1 are overage: 12.55 USD recognised."""
    with start_server(server_factory, "rerate") as client:
        catalogue(client)
        three_grants_at_a_third(client, "t")
        close(client, "t", JAN)
        january = revenue(client, JAN, FEB, "t")
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[unit_rate("2")])
        )
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(JAN))
        )
        assert (published.customers_rerated, published.buckets_rerated, published.events_rerated) == (1, 17, 17)
        assert published.rerated_amount_delta == "22.1"
        assert (
            published.closed_buckets_left_alone,
            published.closed_events_left_alone,
            published.closed_amount_left_alone,
        ) == (17, 17, "11.9")
        assert published.left_alone_reason
        assert revenue(client, JAN, FEB, "t") == january
        assert customer_lines(revenue(client, JAN, MAR, "t")) == [
            (JAN, "3.9666627", "0", "0", "3.0333313"),
            (FEB, "3.0333313", "12.55", "0", "0"),
        ]
        february = preview(client, "t", FEB)
        assert (february.subtotal, february.overage_amount, february.overage_due) == ("44.2", "25.1", "12.55")


def test_promotional_top_up_and_rollover_grants_recognise_at_their_own_cost(server_factory: ServerFactory) -> None:
    """5 promotional credits (free), 10 bought for 3 (0.3) with rollover_fraction 0.25, and top-ups to 4 credits
    below 1 at 0.333333 a credit, at most 3 a period. The server's clock is past both period ends, so the 10 roll
    over at once, before any usage: 2.5 into a ROLLOVER grant, 7.5 broken in January (2.25 USD); the ROLLOVER grant
    (usable until March 1) breaks too, in February (0.75). January, 9 events of 1.1: four draw 4.4 of the promotion
    (0.6 left: a top-up of 3.4 for 1.1333322); then 0.6 + 0.5, 1.1, 1.1 (0.7 left: a top-up of 3.3 for
    1.0999989); then 0.7 + 0.4, 1.1 (1.8 left). Recognised: 3.4 + 1.5 of top-ups (1.1333322 + 0.4999995 =
    1.6333317); deferred: 1.8 of top-up (0.5999994) and the 2.5 rolled over (0.75) until February breaks them."""
    with start_server(server_factory, "kinds") as client:
        catalogue(client)
        customer(client, "k", "0.5")
        grant(client, "k", "promo", "5", "0", kind=contracts_pb2.PROMOTIONAL, priority=0)
        grant(client, "k", "roll", "10", "3", priority=1, rollover_fraction="0.25")
        policy = contracts_pb2.TopUpPolicy(
            threshold="1", recharge_to="4", price_per_credit="0.333333", max_per_period=3
        )
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="k-c", top_up=policy))
        wait_for_reconciled_breakage(client, "k", "3")
        ingest(client, "k", [1.1] * 9, JAN, "jan")
        report = revenue(client, JAN, MAR, "k")
        assert customer_lines(report) == [
            (JAN, "1.6333317", "0", "2.25", "1.3499994"),
            (FEB, "0", "0", "0.75", "0.5999994"),
        ]
        assert totals(report) == ("0", "5.2333311", "1.6333317", "3", "0.5999994", "0", True)
        january = preview(client, "k", JAN)
        assert (january.overage_amount, january.top_up_purchases) == ("0", "2.23")


def wait_for_reconciled_breakage(client: TariffClient, customer_id: str, breakage: str) -> None:
    """The server's clock records an expiry or a rollover's breakage a moment after it is due (its driver looks
    every 50 ms; GetBalance may show the grant expired a moment before)."""
    shown = ""
    for _ in range(400):
        shown = revenue(client, JAN, APR, customer_id).reconciliation.breakage
        if shown == breakage:
            return
        time.sleep(0.05)
    raise AssertionError(f"breakage {shown}, not {breakage}")


def test_a_grant_made_after_a_close_is_sold_in_the_first_open_period_and_the_closed_one_never_changes(
    server_factory: ServerFactory,
) -> None:
    """10 credits for 4 (0.4), 5 drawn in January, January closed: 2 recognised, 2 deferred. Then, with January
    final, two grants whose starts_at defaults to the contract's start (January 1): `late` 10 for 3 expiring on
    January 20 (broken at once: its last usable instant is in January) and `later` 20 for 5. January's revenue,
    final, must not change: both are sold in February, the first period open when they were made, and `late`'s
    3 USD of breakage is February's too. After February: 2 (`early`) + 5 (`later`) deferred."""
    with start_server(server_factory, "after-close") as client:
        catalogue(client)
        customer(client, "a", "1")
        grant(client, "a", "early", "10", "4")
        ingest(client, "a", [5], JAN, "jan")
        close(client, "a", JAN)
        january = revenue(client, JAN, FEB, "a")
        assert customer_lines(january) == [(JAN, "2", "0", "0", "2")]
        assert totals(january) == ("0", "4", "2", "0", "2", "0", True)
        grant(client, "a", "late", "10", "3", expires_at=ts(ms("2026-01-20T00:00:00")))
        grant(client, "a", "later", "20", "5")
        both = wait_for_breakage(client, "a", JAN, MAR)
        assert revenue(client, JAN, FEB, "a") == january
        assert customer_lines(both) == [(JAN, "2", "0", "0", "2"), (FEB, "0", "0", "3", "7")]
        assert totals(both) == ("0", "12", "2", "3", "7", "0", True)
        assert totals(revenue(client, FEB, MAR, "a")) == ("2", "8", "0", "3", "7", "0", True)
        # February's draft shows the same balances: 10 of `late` expired, 20 of `later` and 5 of `early` remaining.
        balances = {g.grant_id: (g.remaining, g.expired) for g in preview(client, "a", FEB).grant_balances}
        assert balances == {"early": ("5", "0"), "late": ("0", "10"), "later": ("20", "0")}


@pytest.mark.parametrize("paid", ["0.0000000000001", "0.0000000000005", "1.0000000000000001", "1e-13"])
def test_a_paid_amount_finer_than_the_pico_is_refused_not_rounded_away(
    server_factory: ServerFactory, paid: str
) -> None:
    """Revenue is kept in picos of the currency (10^-12): a grant paid 0.0000000000005 would be sold, recognised
    and deferred as 0 (half-even), the cash vanishing from the report. Refused instead, naming the field, nothing
    granted; a paid amount at 12 decimal places is recognised to the pico."""
    with start_server(server_factory, "fine-paid") as client:
        catalogue(client)
        customer(client, "f", "1")
        with pytest.raises(InvalidArgument) as refused:
            grant(client, "f", "fine", "1", paid)
        assert "grant.paid_amount" in str(refused.value)
        assert [
            g.grant_id for g in client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="f")).grants
        ] == []
        grant(client, "f", "exact", "3", "0.000000000001")
        ingest(client, "f", [1], JAN, "jan")
        assert customer_lines(revenue(client, JAN, FEB, "f")) == [(JAN, "0", "0", "0", "0.000000000001")]
        assert totals(revenue(client, JAN, FEB, "f"))[:2] == ("0", "0.000000000001")


def test_revenue_report_arguments_at_their_edges(server_factory: ServerFactory) -> None:
    """period_start and period_end are required, in range, in order; an unknown customer is NOT_FOUND naming it, a
    malformed id INVALID_ARGUMENT naming customer_id; a customer with no contract has no lines and nothing to
    reconcile; none changes anything."""
    with start_server(server_factory, "edges") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="bare", name="bare"))
        bare = revenue(client, JAN, FEB, "bare")
        assert (bare.currency, list(bare.customer_lines), list(bare.lines)) == ("", [], [])
        assert totals(bare) == ("0", "0", "0", "0", "0", "0", True)
        with pytest.raises(NotFound, match="nobody"):
            revenue(client, JAN, FEB, "nobody")
        with pytest.raises(InvalidArgument, match="customer_id"):
            revenue(client, JAN, FEB, "no body")
        for start, end, field in (
            (ts(JAN), ts(JAN), "period_end"),
            (ts(FEB), ts(JAN), "period_end"),
            (Timestamp(seconds=-1), ts(FEB), "period_start"),
            (ts(JAN), Timestamp(seconds=253_402_300_800), "period_end"),
            (Timestamp(seconds=0, nanos=-1), ts(FEB), "period_start"),
            (Timestamp(seconds=-1, nanos=999_500_000), ts(FEB), "period_start"),
            (None, ts(FEB), "period_start"),
            (ts(JAN), None, "period_end"),
        ):
            request = invoices_pb2.GetRevenueReportRequest(customer_id="bare")
            if start is not None:
                request.period_start.CopyFrom(start)
            if end is not None:
                request.period_end.CopyFrom(end)
            with pytest.raises(InvalidArgument) as refused:
                client.invoices.GetRevenueReport(request)
            assert str(refused.value).startswith(f"INVALID_ARGUMENT: {field}:"), (start, end, refused.value)


def test_sub_millisecond_bounds_select_the_periods_starting_in_the_span_they_name(
    server_factory: ServerFactory,
) -> None:
    """Periods starting in [period_start, period_end): February's period starts before February 1 + 0.5 ms, so a
    span ending then holds it, and a span starting then does not."""
    with start_server(server_factory, "sub-ms") as client:
        catalogue(client)
        customer(client, "m", "1")
        grant(client, "m", "g", "10", "4")

        def starts(start: Timestamp, end: Timestamp) -> list[int]:
            report = client.invoices.GetRevenueReport(
                invoices_pb2.GetRevenueReportRequest(period_start=start, period_end=end, customer_id="m")
            )
            return [line.period_start.ToMilliseconds() for line in report.customer_lines]

        half_ms_after_feb = Timestamp(seconds=FEB // 1000, nanos=500_000)
        assert starts(ts(JAN), half_ms_after_feb) == [JAN, FEB]
        assert starts(half_ms_after_feb, ts(APR)) == [MAR]
        # A span from January 1 + 0.5 ms sells nothing in it: the grant was sold at January's start, before it.
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                period_start=Timestamp(seconds=JAN // 1000, nanos=500_000), period_end=ts(FEB), customer_id="m"
            )
        )
        assert (list(report.customer_lines), report.reconciliation.prepaid_sold) == ([], "0")


def test_a_grant_made_after_a_customers_last_period_closed_leaves_that_period_alone(
    server_factory: ServerFactory,
) -> None:
    """A contract of January only (ending February 1), closed. A grant of 10 credits for 4 made afterwards has no
    open period to be sold in: it is sold when it was made (today), in the reconciliation of a span holding that
    time, and January's line stays as it was closed."""
    with start_server(server_factory, "last-closed") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="z", name="z"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="z-c", customer_id="z", rate_card_id=CARD, starting_at=ts(JAN), ending_before=ts(FEB), currency="USD"
            )
        )
        close(client, "z", JAN)
        january = revenue(client, JAN, FEB, "z")
        grant(client, "z", "after", "10", "4")
        assert revenue(client, JAN, FEB, "z") == january
        far = ms("9000-01-01T00:00:00") - 1
        through_today = revenue(client, JAN, far, "z")
        assert customer_lines(through_today) == [(JAN, "0", "0", "0", "0")]
        assert totals(through_today) == ("0", "4", "0", "0", "4", "0", True)


def test_a_customer_billed_in_two_currencies_is_refused_saying_why_not_to_ask_per_customer(
    server_factory: ServerFactory,
) -> None:
    """A report is in one currency. Across customers billed in two, asking per customer is the remedy; a customer
    whose own contracts bill in two (USD in January, EUR from February) cannot be reported in one, and being told
    to ask per customer, when it did, leaves the caller nowhere: the refusal names the customer and the currencies."""
    with start_server(server_factory, "currencies") as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="two", name="two"))
        for suffix, currency, start, end in (("usd", "USD", JAN, FEB), ("eur", "EUR", FEB, None)):
            request = contracts_pb2.CreateContractRequest(
                id=f"two-{suffix}", customer_id="two", rate_card_id=CARD, starting_at=ts(start), currency=currency
            )
            if end is not None:
                request.ending_before.CopyFrom(ts(end))
            client.contracts.CreateContract(request)
        customer(client, "one", "1")
        with pytest.raises(InvalidArgument) as everyone:
            revenue(client, JAN, FEB, "")
        assert "ask per customer" in str(everyone.value)
        with pytest.raises(InvalidArgument) as refused:
            revenue(client, JAN, FEB, "two")
        message = str(refused.value)
        assert message.startswith("INVALID_ARGUMENT: customer_id: customer 'two' has contracts in ['EUR', 'USD']")
        assert "ask per customer" not in message


def half_even(value: Fraction) -> Fraction:
    """value rounded half-even to 10^-12."""
    picos = value * 10**12
    return Fraction(round(picos), 10**12)  # round() on a Fraction is half-even


def text(value: Fraction) -> str:
    """A decimal the server's way: no exponent, no trailing zeros."""
    as_decimal = Decimal(value.numerator) / Decimal(value.denominator)
    return f"{as_decimal.quantize(Decimal('1e-12')).normalize():f}"


def test_ninety_odd_draws_on_three_awkward_cost_bases_recognise_to_the_pico_with_no_drift(
    server_factory: ServerFactory,
) -> None:
    """Grants of 5 credits for 1.666665, 7 for 2 (2/7 a credit) and 11 for 3.333333, burnt in that order; 30 events a
    month of 0.37, 0.113, 0.5, 0.29, ... units in January, February and March (9.394 units a month), the last 5.182
    over the 23 credits as overage at 0.7. Each period's recognition, computed here independently (a grant's value
    of its cumulative draw, rounded half-even to the pico, differenced), and the three periods together recognise
    exactly the 6.999998 paid, with 3.6274 of overage."""
    grants = [
        ("a", Fraction(5), Fraction("1.666665")),
        ("b", Fraction(7), Fraction(2)),
        ("c", Fraction(11), Fraction("3.333333")),
    ]
    sizes = [Fraction(s) for s in ("0.37", "0.113", "0.5", "0.29")]
    with start_server(server_factory, "drift") as client:
        catalogue(client)
        customer(client, "d", "0.7")
        for priority, (grant_id, amount, paid) in enumerate(grants):
            grant(
                client, "d", grant_id, str(amount), str(Decimal(paid.numerator) / paid.denominator), priority=priority
            )
        months = [JAN, FEB, MAR]
        month_units = [sizes[i % 4] for i in range(30)]
        for start in months:
            ingest(client, "d", [float(u) for u in month_units], start, f"m{start}")
        drawn = dict.fromkeys([g for g, _, _ in grants], Fraction(0))
        expected = []
        for _ in months:
            before = {g: half_even(paid * drawn[g] / amount) for g, amount, paid in grants}
            overage = Fraction(0)
            for units in month_units:
                for g, amount, _ in grants:
                    take = min(units, amount - drawn[g])
                    drawn[g] += take
                    units -= take
                overage += units
            after = {g: half_even(paid * drawn[g] / amount) for g, amount, paid in grants}
            left = sum((paid * (amount - drawn[g]) / amount for g, amount, paid in grants), Fraction(0))
            recognised = sum((after[g] - before[g] for g in after), Fraction(0))
            expected.append((text(recognised), text(half_even(overage * Fraction("0.7"))), "0", text(half_even(left))))
        report = revenue(client, JAN, APR, "d")
        assert [line[1:] for line in customer_lines(report)] == expected
        assert expected[2][1] == "3.6274" and expected[2][3] == "0"
        assert totals(report) == ("0", "6.999998", "6.999998", "0", "0", "3.6274", True)


def test_a_rollover_grant_made_after_a_close_breaks_in_the_first_open_period(server_factory: ServerFactory) -> None:
    """January closed with no grant. Then 10 credits for 3 (0.3) with rollover_fraction 0.5, starts_at defaulting to
    January 1: the server's clock is past both period ends, so 5 roll over at February 1 and 5 break, then the
    ROLLOVER grant (until March 1) breaks its 5. January stays as closed; February sells 3 and breaks 1.5 + 1.5."""
    with start_server(server_factory, "rollover-after-close") as client:
        catalogue(client)
        customer(client, "r", "1")
        close(client, "r", JAN)
        january = revenue(client, JAN, FEB, "r")
        assert customer_lines(january) == [(JAN, "0", "0", "0", "0")]
        grant(client, "r", "roll", "10", "3", rollover_fraction="0.5")
        wait_for_reconciled_breakage(client, "r", "3")
        assert revenue(client, JAN, FEB, "r") == january
        report = revenue(client, JAN, MAR, "r")
        assert customer_lines(report) == [(JAN, "0", "0", "0", "0"), (FEB, "0", "0", "3", "0")]
        assert totals(report) == ("0", "3", "0", "3", "0", "0", True)
