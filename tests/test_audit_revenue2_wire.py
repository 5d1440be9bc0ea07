"""A second acceptance audit of revenue recognition as a finance user reads it (README "Revenue", GetRevenueReport
in invoices.proto, `tariff revenue`), over the wire against a real server, every amount computed by hand from the
docs (the arithmetic in each docstring), none read back from the server. What tests/test_audit_revenue_wire.py and
the invoice audits already test is not repeated: here, overage recognised at each contract's own price across a
switch off the hour, spans that cut periods there, what the CLI prints against the RPC, rolled-over credit drawn at
its origin's cost basis, and a span longer than the report walks.

One rate card in credits: product `u` at 1 credit a unit. `--close-grace off`: the server closes nothing itself."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from google.protobuf.json_format import MessageToDict
from tariff import InvalidArgument, TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, usage_pb2

from tests.serverproc import ServerFactory, wait_for
from tests.test_audit_invoices_wire import JAN, ms, preview, ts
from tests.test_audit_revenue_wire import catalogue, customer_lines, grant, revenue, totals
from tests.test_cli import table_rows, tariff

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
SWITCH = ms("2026-01-16T00:30:00")  # off the hour
FEB16 = ms("2026-02-16T00:30:00")
MAR16 = ms("2026-03-16T00:30:00")


def contract(
    client: TariffClient, contract_id: str, customer_id: str, start_ms: int, end_ms: int | None, overage_price: str
) -> None:
    request = contracts_pb2.CreateContractRequest(
        id=contract_id,
        customer_id=customer_id,
        rate_card_id="audit-revenue",
        starting_at=ts(start_ms),
        overage_policy=contracts_pb2.ALLOW,
        overage_price=overage_price,
        currency="USD",
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(ts(end_ms))
    client.contracts.CreateContract(request)


def event(customer_id: str, transaction_id: str, units: float, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="u",
        timestamp_ms=at_ms,
        dimensions={"k": "a"},
        values={"n": units},
    )


def send(client: TariffClient, key: str, *events: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch(list(events), key)
    assert ack.accepted == len(events), ack.rejected


def switched(client: TariffClient) -> None:
    """Customer `s`: `s-old` from Jan 1 (overage at 0.333333 USD a credit), ended at SWITCH (Jan 16 00:30); `s-new`
    from SWITCH (overage at 0.7). No grant: every credit is overage."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="s", name="s"))
    contract(client, "s-old", "s", JAN, SWITCH, "0.333333")
    contract(client, "s-new", "s", SWITCH, None, "0.7")
    send(
        client,
        "s-usage",
        event("s", "old-1", 1.5, ms("2026-01-05T00:00:00")),
        event("s", "old-2", 0.5, SWITCH - 15 * MINUTE_MS),  # 00:15, in the switch's hour, before it: the old contract's
        event("s", "new-1", 2.5, SWITCH + 15 * MINUTE_MS),  # 00:45 in that same hour: the new contract's
        event("s", "new-2", 1, ms("2026-02-20T00:00:00")),
    )


def test_overage_is_recognised_at_each_contracts_own_price_across_a_switch_off_the_hour(
    server_factory: ServerFactory,
) -> None:
    """README "Revenue": overage x the contract's overage price, rounded half-even to the pico once per customer,
    period and product. `s-old`'s one period Jan 1 - Feb 1 (it keeps its monthly end) holds the usage before the
    switch: 1.5 + 0.5 = 2 credits x 0.333333 = 0.666666 USD (exact at the pico, so not rounded at all; the invoice
    rounds it to cents: 0.67). `s-new`'s periods from Jan 16 00:30: 2.5 x 0.7 = 1.75, then Feb 16 00:30 - Mar 16
    00:30: 1 x 0.7 = 0.7. Nothing sold, nothing deferred. Over the three: 3.116666 recognised. Periods belong to the
    span their start falls in: [Jan 16 00:00, Jan 16 00:30) holds none, [Jan 16 00:30, Jan 16 00:30 + 1 ms) the new
    contract's first only, [Jan 2, Mar 1) the new contract's first two only."""
    with server_factory(name="rev2-switch", extra_args=["--close-grace", "off"]).client() as client:
        catalogue(client)
        switched(client)
        report = revenue(client, JAN, ms("2026-04-01T00:00:00"), "s")
        assert customer_lines(report) == [
            (JAN, "0", "0.666666", "0", "0"),
            (SWITCH, "0", "1.75", "0", "0"),
            (FEB16, "0", "0.7", "0", "0"),
            (MAR16, "0", "0", "0", "0"),
        ]
        assert [line.period_end.ToMilliseconds() for line in report.customer_lines] == [
            ms("2026-02-01T00:00:00"),
            FEB16,
            MAR16,
            ms("2026-04-16T00:30:00"),
        ]
        assert [(line.product_id, line.period_start.ToMilliseconds(), line.recognized) for line in report.lines] == [
            ("u", JAN, "0.666666"),
            ("u", SWITCH, "1.75"),
            ("u", FEB16, "0.7"),
        ]
        r = report.reconciliation
        assert (r.recognized_overage, r.recognized, r.recognized_credits, r.reconciles) == (
            "3.116666",
            "3.116666",
            "0",
            True,
        )
        assert [
            line.period_start.ToMilliseconds()
            for line in revenue(client, SWITCH - 30 * MINUTE_MS, SWITCH, "s").customer_lines
        ] == []
        assert customer_lines(revenue(client, SWITCH, SWITCH + 1, "s")) == [(SWITCH, "0", "1.75", "0", "0")]
        cut = revenue(client, ms("2026-01-02T00:00:00"), ms("2026-03-01T00:00:00"), "s")
        assert customer_lines(cut) == [(SWITCH, "0", "1.75", "0", "0"), (FEB16, "0", "0.7", "0", "0")]
        assert totals(cut)[5:] == ("2.45", True)
        # The invoices bill the same overage, each at its contract's price, rounded to cents.
        old, new = preview(client, "s", JAN), preview(client, "s", SWITCH)
        assert (old.contract_id, old.overage_amount, old.overage_due) == ("s-old", "2", "0.67")
        assert (new.contract_id, new.overage_amount, new.overage_due) == ("s-new", "2.5", "1.75")


def test_the_cli_prints_the_reports_figures_and_its_months_are_the_periods_starting_in_them(
    server_factory: ServerFactory,
) -> None:
    """README: `tariff revenue --from YYYY-MM [--to YYYY-MM] [--customer ID] [--json]` prints both tables and the
    reconciliation of the periods starting from --from's month through --to's. The switched customer above:
    `--from 2026-01` is [Jan 1, Feb 1): the periods of Jan 1 and Jan 16 00:30, 0.666666 + 1.75 = 2.416666;
    `--from 2026-01 --to 2026-02` adds Feb 16 00:30's 0.7: 3.116666. `--json` is the RPC's report, field for
    field; the text shows the same decimals, none rounded. --to before --from is a usage error (exit 2)."""
    server = server_factory(name="rev2-cli", extra_args=["--close-grace", "off"])
    with server.client() as client:
        catalogue(client)
        switched(client)
        rpc = revenue(client, JAN, ms("2026-02-01T00:00:00"), "s")
        both = revenue(client, JAN, ms("2026-03-01T00:00:00"), "s")
    shown = json.loads(tariff(server, "revenue", "--from", "2026-01", "--customer", "s", "--json").stdout)
    assert shown == MessageToDict(rpc, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    assert shown["reconciliation"]["recognized"] == "2.416666"
    two = json.loads(
        tariff(server, "revenue", "--from", "2026-01", "--to", "2026-02", "--customer", "s", "--json").stdout
    )
    assert two == MessageToDict(both, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
    assert two["reconciliation"]["recognized"] == "3.116666"
    rows = table_rows(tariff(server, "revenue", "--from", "2026-01", "--to", "2026-02", "--customer", "s").stdout)
    assert ["2026-01-01 00:00:00Z", "s", "0.666666", "0", "0.666666", "0", "0"] in rows
    assert ["2026-01-16 00:30:00Z", "s", "1.75", "0", "1.75", "0", "0"] in rows
    assert ["2026-02-16 00:30:00Z", "s", "0.7", "0", "0.7", "0", "0"] in rows
    assert ["2026-01-16 00:30:00Z", "u", "1.75", "0", "1.75", "0"] in rows
    assert ["recognised from overage", "3.116666"] in rows and ["reconciles", "yes"] in rows
    backwards = tariff(server, "revenue", "--from", "2026-02", "--to", "2026-01", "--customer", "s", check=False)
    assert backwards.returncode == 2 and "--to" in backwards.stderr


def month_start(moment: datetime, months: int) -> datetime:
    """The first of the month `months` after moment's (negative: before), 00:00 UTC."""
    index = moment.year * 12 + moment.month - 1 + months
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def test_rolled_over_credit_drawn_in_the_next_period_is_recognised_at_its_origins_cost_basis(
    server_factory: ServerFactory,
) -> None:
    """Contract from P1 = the previous month's 1st at 00:30 (off the hour): P1 to P2 (this month's 1st 00:30) is
    over, P2 to P3 (next month's 1st 00:30) runs. Grant R: 3 credits paid 1 USD (1/3 a credit, no finite decimal),
    fraction 0.5, from P1. The clock is past P2, so R rolls over at once, before any usage: 0.5 x 3 = 1.5 into
    rollover-R-<P2> (usable until P3), 1.5 break in P1 at cost basis: 1 x 1.5 / 3 = 0.5. Then 0.7 credits of usage
    dated in P2 draw on the ROLLOVER grant, which shares R's ledger: consumed 1.5 + 0.7 = 2.2, worth 2.2 / 3 =
    0.7333...|3 -> 0.733333333333, so P2 recognises 0.733333333333 - 0.5 = 0.233333333333. Deferred: P1 1 - 0.5 =
    0.5, P2 0.5 - 0.233333333333 = 0.266666666667 (the rolled grant's 0.8 left breaks at P3, not recorded yet, though
    P2's draft already shows it expired: README "Deferred"). GetBalance's recognised revenue of the ROLLOVER grant
    (paid 1.5 x 1 / 3 = 0.5): 0.7 x 0.5 / 1.5 = 0.233333333333, R's 0 (what rolled out is not usage's)."""
    now = datetime.now(UTC)
    p1, p2, p3 = (month_start(now, months) + timedelta(minutes=30) for months in (-1, 0, 1))
    if now < p2 + timedelta(hours=2):
        pytest.skip("the current period started under two hours ago: no room for usage dated in it an hour back")
    p1_ms, p2_ms, p3_ms = (int(p.timestamp() * 1000) for p in (p1, p2, p3))
    rolled = f"rollover-R-{p2_ms}"
    with server_factory(name="rev2-rollover", extra_args=["--close-grace", "off"]).client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="r", name="r"))
        contract(client, "r-c", "r", p1_ms, None, "1")
        grant(client, "r", "R", "3", "1", rollover_fraction="0.5")
        assert wait_for(lambda: rolled in {g.grant_id for g in client.get_balance("r").grants}, 15)
        send(client, "r-usage", event("r", "r-1", 0.7, int(now.timestamp() * 1000) - HOUR_MS))
        report = revenue(client, p1_ms, p3_ms, "r")
        assert customer_lines(report) == [
            (p1_ms, "0", "0", "0.5", "0.5"),
            (p2_ms, "0.233333333333", "0", "0", "0.266666666667"),
        ]
        assert totals(report) == ("0", "1", "0.233333333333", "0.5", "0.266666666667", "0", True)
        assert [(line.product_id, line.recognized_credits, line.breakage) for line in report.lines] == [
            ("u", "0.233333333333", "0")
        ]
        grants = {g.grant_id: (g.amount, g.drawn, g.recognized_revenue) for g in client.get_balance("r").grants}
        assert grants == {"R": ("3", "1.5", "0"), rolled: ("1.5", "0.7", "0.233333333333")}
        balances = [
            {g.grant_id: (g.granted, g.drawn, g.remaining, g.expired) for g in preview(client, "r", at).grant_balances}
            for at in (p1_ms, p2_ms)
        ]
        assert balances[0] == {"R": ("3", "1.5", "0", "1.5")}
        assert balances[1][rolled] == ("1.5", "0.7", "0", "0.8")


def test_a_span_of_more_periods_than_the_report_walks_is_refused_not_cut_short(server_factory: ServerFactory) -> None:
    """GetRevenueReport reports "the billing periods that start in [period_start, period_end)", at most 1,200 of a
    contract (a century of months). A contract from Jan 1, 2026, open-ended, and a grant of 10 credits paid 4
    starting on 2130-06-01: the span [2026-01-01, 2131-01-01) holds 105 x 12 = 1,260 monthly periods, and the grant
    is sold in 2130-06's. The server answered 1,200 lines that stop at 2125-12 (deferred 0 on the last) while its
    reconciliation sold and deferred 4 that no line showed, saying nothing. Refused instead, naming period_end, the
    contract and where its 1,200th period ends; [2026-01-01, 2126-01-01) (exactly 1,200) is answered in full, and so
    is [2130-01-01, 2131-01-01): 12 lines, 2130-06 selling the 4 (deferred 4 from then). `tariff revenue` alike."""
    server = server_factory(name="rev2-long", extra_args=["--close-grace", "off"])
    with server.client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="l", name="l"))
        contract(client, "l-c", "l", JAN, None, "1")
        grant(client, "l", "far", "10", "4", starts_at=ts(ms("2130-06-01T00:00:00")))
        with pytest.raises(InvalidArgument) as refused:
            revenue(client, JAN, ms("2131-01-01T00:00:00"), "l")
        message = str(refused.value)
        assert message.startswith(
            "INVALID_ARGUMENT: period_end: the span holds more than 1200 billing periods of contract 'l-c'"
        ), message
        assert "2126-01-01T00:00:00Z" in message
        with pytest.raises(InvalidArgument, match="period_end: the span holds more than 1200"):
            revenue(client, JAN, ms("2131-01-01T00:00:00"), "")
        century = revenue(client, JAN, ms("2126-01-01T00:00:00"), "l")
        assert len(century.customer_lines) == 1200
        assert century.customer_lines[-1].period_start.ToMilliseconds() == ms("2125-12-01T00:00:00")
        assert totals(century)[1:5] == ("0", "0", "0", "0")
        late = revenue(client, ms("2130-01-01T00:00:00"), ms("2131-01-01T00:00:00"), "l")
        assert [line.deferred for line in late.customer_lines] == ["0"] * 5 + ["4"] * 7
        assert late.customer_lines[5].period_start.ToMilliseconds() == ms("2130-06-01T00:00:00")
        assert totals(late)[:5] == ("0", "4", "0", "0", "4")
    # The CLI says the same and exits non-zero; --to 2125-12 (the 1,200th month) prints all 1,200.
    refused_cli = tariff(server, "revenue", "--from", "2026-01", "--to", "2130-12", "--customer", "l", check=False)
    assert "period_end: the span holds more than 1200 billing periods" in refused_cli.stderr
    shown = tariff(server, "revenue", "--from", "2026-01", "--to", "2125-12", "--customer", "l", "--json")
    assert len(json.loads(shown.stdout)["customer_lines"]) == 1200


def test_a_grant_lapsing_after_a_switch_breaks_on_the_new_contracts_line_though_the_old_invoice_lists_it_expired(
    server_factory: ServerFactory,
) -> None:
    """`w-old` from Jan 1 ended at SWITCH (Jan 16 00:30): its last period keeps its monthly end, Jan 1 - Feb 1;
    `w-new` from SWITCH: Jan 16 00:30 - Feb 16 00:30, ... Grant g under w-old: 10 credits paid 4 (0.4), from Jan 1,
    expiring Jan 25 (after the switch, before Feb 1), never drawn. It is sold in Jan 1's period (4). It lapses under
    w-new, so its breakage, 10 x 0.4 = 4, counts in the period in force at its last usable instant, w-new's Jan 16
    00:30 line, where the old line keeps deferring 4: lines roll forward (4 + 0 - 0 - 4 = 0). Both periods'
    invoices list g as 10 expired (an invoice shows the balances at its period's end, and w-old's last period ends
    Feb 1), so here the old line's deferred (4) is not the paid value of its invoice's remaining (0): README
    "Deferred" names this exception, as it names the rollover's. A span from Jan 16 00:00 to Feb 1 holds w-new's
    first period only: deferred at start 4 (sold in Jan 1's period), breakage 4, deferred at end 0."""
    with server_factory(name="rev2-lapse", extra_args=["--close-grace", "off"]).client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="w", name="w"))
        contract(client, "w-old", "w", JAN, SWITCH, "1")
        contract(client, "w-new", "w", SWITCH, None, "1")
        lapsing = contracts_pb2.Grant(
            id="g",
            contract_id="w-old",
            kind=contracts_pb2.PREPAID,
            amount="10",
            paid_amount="4",
            expires_at=ts(ms("2026-01-25T00:00:00")),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=lapsing))
        assert wait_for(lambda: revenue(client, JAN, MAR16, "w").reconciliation.breakage == "4", 15)
        report = revenue(client, JAN, MAR16, "w")
        assert customer_lines(report) == [
            (JAN, "0", "0", "0", "4"),
            (SWITCH, "0", "0", "4", "0"),
            (FEB16, "0", "0", "0", "0"),
        ]
        assert totals(report) == ("0", "4", "0", "4", "0", "0", True)
        # A span from Jan 16 00:00 holds w-new's first period only: the 4 sold in Jan 1's period are deferred at its
        # start, and break in it.
        cut = revenue(client, SWITCH - 30 * MINUTE_MS, ms("2026-02-01T00:00:00"), "w")
        assert customer_lines(cut) == [(SWITCH, "0", "0", "4", "0")]
        assert totals(cut) == ("4", "0", "0", "4", "0", "0", True)
        for at, contract_id in ((JAN, "w-old"), (SWITCH, "w-new")):
            invoice = preview(client, "w", at)
            balances = [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances]
            assert (invoice.contract_id, balances) == (contract_id, [("g", "10", "0", "0", "10")])


def test_revenue_stays_at_the_pico_of_a_currency_without_minor_units_and_top_ups_sell_rounded_one_by_one(
    server_factory: ServerFactory,
) -> None:
    """A JPY contract (no minor unit on invoices), overage at 0.5 JPY a credit, no grant; top-ups below 1 credit back
    to 5 at 0.0000000000003 JPY a credit, twice a period. Events in their own batches: 3 credits (all overage; it
    leaves 0 available: a top-up of 5 for 5 x 0.0000000000003 = 0.0000000000015), 5 (drawn from it; 0 left: a
    second top-up of 5, 0.0000000000015), 2 (drawn from the second). README "Revenue": amounts at 10^-12 of the
    currency, not its minor unit: overage 3 x 0.5 = 1.5 JPY recognised, where the invoice rounds it half-even to 2;
    each top-up sold at its cost at the pico, rounded half-even purchase by purchase: 0.0000000000015 ->
    0.000000000002, twice, 0.000000000004 sold (the invoice's top_up_purchases sums the exact 0.000000000003 and
    rounds it once to the yen: 0). Recognised, cumulatively at the exact cost basis: the first drawn whole
    (0.0000000000015 -> 0.000000000002), the second 2 of 5: 0.0000000000015 x 2 / 5 = 0.0000000000006 ->
    0.000000000001; 0.000000000003 in all. Deferred 0.000000000004 - 0.000000000003 = 0.000000000001."""
    with server_factory(name="rev2-jpy", extra_args=["--close-grace", "off"]).client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="y", name="y"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="y-c",
                customer_id="y",
                rate_card_id="audit-revenue",
                starting_at=ts(JAN),
                overage_policy=contracts_pb2.ALLOW,
                overage_price="0.5",
                currency="JPY",
            )
        )
        policy = contracts_pb2.TopUpPolicy(
            threshold="1", recharge_to="5", price_per_credit="0.0000000000003", max_per_period=2
        )
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="y-c", top_up=policy))
        for index, credits in enumerate((3, 5, 2)):
            send(client, f"y-{index}", event("y", f"y-{index}", credits, JAN + (index + 1) * 24 * HOUR_MS))
        report = revenue(client, JAN, ms("2026-02-01T00:00:00"), "y")
        assert report.currency == "JPY"
        assert customer_lines(report) == [(JAN, "0.000000000003", "1.5", "0", "0.000000000001")]
        assert totals(report) == (
            "0",
            "0.000000000004",
            "0.000000000003",
            "0",
            "0.000000000001",
            "1.5",
            True,
        )
        invoice = preview(client, "y", JAN)
        assert (invoice.minor_unit, invoice.overage_amount, invoice.overage_due) == (0, "3", "2")
        assert (invoice.top_up_purchases, invoice.total_due) == ("0", "2")


def test_breakage_after_the_last_contract_ended_counts_when_recorded_not_in_a_period_the_contract_never_had(
    server_factory: ServerFactory,
) -> None:
    """Contract `e-c` from Jan 1 ended at Jan 20, no contract after it: its one period Jan 1 - Feb 1. Grant g: 10
    credits paid 4, from Jan 1, expiring Mar 10, never drawn, granted today (so its breakage, 10 x 0.4 = 4, is
    recorded at once, today). No period of the customer holds its last usable instant (Mar 9), nor the instant it
    was recorded: as for a sale with no open period left (README "Revenue"), it counts at the instant the server
    recorded it, in a span's reconciliation, on no line. The server put it at the start of the month of the
    recording (a period the ended contract never had), so a span ending before the recording, after that month's
    1st, already counted it. The one line (Jan 1) sells 4 and defers 4; a span ending before the recording defers
    4 at its end, one ending after it breaks 4 and defers 0."""
    with server_factory(name="rev2-after-end", extra_args=["--close-grace", "off"]).client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="e", name="e"))
        contract(client, "e-c", "e", JAN, ms("2026-01-20T00:00:00"), "1")
        before_ms = int(datetime.now(UTC).timestamp() * 1000)
        grant(client, "e", "g", "10", "4", expires_at=ts(ms("2026-03-10T00:00:00")))
        far = ms("8999-01-01T00:00:00")
        assert wait_for(lambda: revenue(client, JAN, far, "e").reconciliation.breakage == "4", 15)
        after_ms = int(datetime.now(UTC).timestamp() * 1000) + 1
        until_before = revenue(client, JAN, before_ms, "e")
        assert customer_lines(until_before) == [(JAN, "0", "0", "0", "4")]
        assert totals(until_before) == ("0", "4", "0", "0", "4", "0", True)
        until_after = revenue(client, JAN, after_ms, "e")
        assert customer_lines(until_after) == [(JAN, "0", "0", "0", "4")]
        assert totals(until_after) == ("0", "4", "0", "4", "0", "0", True)
        assert totals(revenue(client, before_ms, after_ms, "e")) == ("4", "0", "0", "4", "0", "0", True)


def test_breakage_after_a_contract_ended_inside_its_last_period_counts_on_that_periods_line(
    server_factory: ServerFactory,
) -> None:
    """Contract `x-c` from this month's 1st (M), ended an hour ago, no contract after it: its last (one) period is
    M to next month's 1st, which holds now. Grant g: 10 credits paid 4, expiring 3 seconds from now, never drawn.
    Its last usable instant is after the contract's end but inside that period: README "Breakage", in the period
    of the grant's last usable instant, M's: M's line breaks 4 and defers 0."""
    now = datetime.now(UTC)
    m = month_start(now, 0)
    if now < m + timedelta(hours=3):
        pytest.skip("this month started under three hours ago: no room for a contract ended an hour ago")
    m_ms, next_ms = int(m.timestamp() * 1000), int(month_start(now, 1).timestamp() * 1000)
    now_ms = int(now.timestamp() * 1000)
    with server_factory(name="rev2-ended-inside", extra_args=["--close-grace", "off"]).client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="x", name="x"))
        contract(client, "x-c", "x", m_ms, now_ms - HOUR_MS, "1")
        grant(client, "x", "g", "10", "4", expires_at=ts(now_ms + 3000))
        assert wait_for(lambda: revenue(client, m_ms, next_ms, "x").reconciliation.breakage == "4", 20)
        report = revenue(client, m_ms, next_ms, "x")
        assert customer_lines(report) == [(m_ms, "0", "0", "4", "0")]
        assert totals(report) == ("0", "4", "0", "4", "0", "0", True)


def test_a_grant_starting_after_every_contract_ended_is_sold_when_it_starts_on_no_line(
    server_factory: ServerFactory,
) -> None:
    """Contract `v-c` from Jan 1 ended at Jan 20, no contract after it: one period, Jan 1 - Feb 1. Grant g: 10
    credits paid 4 starting on Mar 10, with no contract then or later: no period holds its start, so, as a sale
    with no open period left (README "Revenue"), it is sold at that instant, in a span's reconciliation, on no
    line. The server sold it at Mar 1, the start of a period the ended contract never had: a span ending Mar 5
    sold and deferred 4 of a grant that had not started."""
    with server_factory(name="rev2-sold-after-end", extra_args=["--close-grace", "off"]).client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="v", name="v"))
        contract(client, "v-c", "v", JAN, ms("2026-01-20T00:00:00"), "1")
        grant(client, "v", "g", "10", "4", starts_at=ts(ms("2026-03-10T00:00:00")))
        early = revenue(client, JAN, ms("2026-03-05T00:00:00"), "v")
        assert customer_lines(early) == [(JAN, "0", "0", "0", "0")]
        assert totals(early) == ("0", "0", "0", "0", "0", "0", True)
        later = revenue(client, JAN, ms("2026-03-10T00:00:00") + 1, "v")
        assert customer_lines(later) == [(JAN, "0", "0", "0", "0")]
        assert totals(later) == ("0", "4", "0", "0", "4", "0", True)


def test_the_cli_takes_the_last_month_the_server_holds(server_factory: ServerFactory) -> None:
    """`tariff revenue` takes months from 1970-01 to 8999-12 (its error for 9000-01 says so). --from 8999-12 is the
    span [8999-12-01, 9000-01-01): its end is the first instant past the server's range, which an exclusive end may
    be, since every period starting in it starts by 8999-12-31T23:59:59.999. The switched customer has periods
    then (its new contract is open-ended): the one starting 8999-11-16 00:30 is not in the span, the one starting
    8999-12-16 00:30 is, with nothing recognised. The RPC takes that end too; one a millisecond later is refused
    naming period_end."""
    server = server_factory(name="rev2-cli-last", extra_args=["--close-grace", "off"])
    last = ms("8999-12-01T00:00:00")
    with server.client() as client:
        catalogue(client)
        switched(client)
        report = revenue(client, last, ms("9000-01-01T00:00:00"), "s")
        assert customer_lines(report) == [(ms("8999-12-16T00:30:00"), "0", "0", "0", "0")]
        with pytest.raises(InvalidArgument, match=r"^INVALID_ARGUMENT: period_end:"):
            revenue(client, last, ms("9000-01-01T00:00:00") + 1, "s")
    shown = tariff(server, "revenue", "--from", "8999-12", "--customer", "s", "--json")
    lines = json.loads(shown.stdout)["customer_lines"]
    assert [line["period_start"] for line in lines] == ["8999-12-16T00:30:00Z"]
    beyond = tariff(server, "revenue", "--from", "9000-01", "--customer", "s", check=False)
    assert beyond.returncode == 2 and "8999-12" in beyond.stderr


def test_closing_a_period_that_starts_off_the_hour_freezes_its_revenue_at_the_boundary_hour(
    server_factory: ServerFactory,
) -> None:
    """Contract `h-c` from Jan 1 00:30 (periods Jan 1 00:30 - Feb 1 00:30, ...), overage at 0.25 USD a credit; grant
    g: 10 credits paid 3 (0.3 a credit). January: 4 credits on Jan 15 and 2 at Feb 1 00:15 (before 00:30: still
    January's period): 6 drawn, 1.8 recognised, 1.2 deferred, no overage; its invoice owes 0.00. Closed (a
    period_start of Jan 1 00:00 is no period's start: INVALID_ARGUMENT naming period_start and the nearest,
    Jan 1 00:30). Then an event at Feb 1 00:20 is refused PERIOD_CLOSED, and one at Feb 1 00:40 (5 credits, in the
    same hour, February's period) draws g's last 4 (1.2 recognised) and 1 of overage (0.25). January's revenue
    and final invoice stay as closed."""
    start = JAN + 30 * MINUTE_MS
    feb = ms("2026-02-01T00:30:00")
    with server_factory(name="rev2-off-hour-close", extra_args=["--close-grace", "off"]).client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="h", name="h"))
        contract(client, "h-c", "h", start, None, "0.25")
        grant(client, "h", "g", "10", "3")
        send(client, "h-jan", event("h", "h-1", 4, ms("2026-01-15T00:00:00")), event("h", "h-2", 2, feb - 15 * 60_000))
        with pytest.raises(InvalidArgument) as refused:
            client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="h", period_start=ts(JAN)))
        assert str(refused.value).startswith("INVALID_ARGUMENT: period_start:"), refused.value
        assert "2026-01-01T00:30:00Z" in str(refused.value)
        closed = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="h", period_start=ts(start)))
        assert (closed.subtotal, closed.overage_amount, closed.total_due) == ("6", "0", "0.00")
        january = revenue(client, start, feb, "h")
        assert customer_lines(january) == [(start, "1.8", "0", "0", "1.2")]
        late = client.ingest_batch([event("h", "h-3", 1, feb - 10 * 60_000)], "h-late")
        assert [usage_pb2.RejectReason.Name(r.reason) for r in late.rejected] == ["PERIOD_CLOSED"]
        send(client, "h-feb", event("h", "h-4", 5, feb + 10 * 60_000))
        assert revenue(client, start, feb, "h") == january
        both = revenue(client, start, ms("2026-03-01T00:30:00"), "h")
        assert customer_lines(both) == [(start, "1.8", "0", "0", "1.2"), (feb, "1.2", "0.25", "0", "0")]
        assert totals(both) == ("0", "3", "3", "0", "0", "0.25", True)
        again = client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=closed.invoice_number))
        assert again == closed
