"""An acceptance audit of a contract switch combined with automatic top-ups over the wire against a real server
(contracts.proto TopUpPolicy and Contract.ending_before; README "Automatic top-up", "Contract switches", "Invoices
and revenue"). Fixtures as tests/test_audit_topups_wire.py's: one product at 1 credit a unit."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import preview, refusal, serving
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_audit_topups_wire import (
    DAY_MS,
    HOUR_MS,
    catalogue,
    month_start_ms,
    policy,
    set_policy,
    top_ups_of,
    use,
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-switch-topup")
    yield from serving(ServerProcess(root / "data"), catalogue)


def switched(client: TariffClient, customer_id: str, first: str, then: str) -> tuple[str, str, int]:
    """Contract <c>-1 in `first` from two months back until two days into the previous month, then <c>-2 in
    `then`; a PREPAID grant of 10 credits (paid 10) under the first. Returns the two contract ids and the switch."""
    start, switch = month_start_ms(2), month_start_ms(1) + 2 * DAY_MS
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    old, new = f"{customer_id}-1", f"{customer_id}-2"
    for contract_id, begin, end, currency in ((old, start, switch, first), (new, switch, None, then)):
        request = contracts_pb2.CreateContractRequest(
            id=contract_id, customer_id=customer_id, rate_card_id="card", starting_at=stamp(begin), currency=currency
        )
        if end is not None:
            request.ending_before.CopyFrom(stamp(end))
        client.contracts.CreateContract(request)
    grant = contracts_pb2.Grant(
        id=f"{customer_id}-g", contract_id=old, kind=contracts_pb2.PREPAID, amount="10", paid_amount="10"
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    return old, new, switch


def test_a_policy_buys_only_in_periods_of_a_contract_in_the_currency_it_was_set_in(server: ServerProcess) -> None:
    """x-1 (USD) then x-2 (JPY). The policy, set through x-1 (below 5 back to 10 at 0.9 USD a credit, 2 a
    period): 6 used on the previous month's first day (x-1's last period) leaves 4: it buys 6 there, 6 x 0.9 =
    5.40 USD on x-1's invoice. 6 used now (x-2's period: 4 from the grant, 2 from that top-up, 4 left) would buy 6
    at 0.9 JPY (5 JPY, about 150 times too cheap): a price set in USD is no price in JPY, so nothing is bought,
    x-2's invoice has no purchase. Set again through x-2 at 135 JPY: 1 used now (3 left) buys 7 credits, 945 JPY;
    6 used now (3 from the first top-up, 3 from the second: 4 left) buys 6, 810 JPY, x-2's cap: 1,755 JPY; 7 used
    now (4, then 3: 3 left) buys nothing (the cap). A late event of x-1's last period (1, dated an hour before the
    switch: no grant usable then holds credit, 1 of overage) leaves 3 available, below 5, x-1's period having
    bought once of 2: a JPY price is no USD price either, so nothing is bought (7 x 135 = 945 "USD" otherwise):
    x-1's invoice has 5.40 of purchases and 1.00 of overage (at 1 USD), 6.40 due."""
    prev = month_start_ms(1)
    with server.client() as client:
        old, new, switch = switched(client, "x", "USD", "JPY")
        set_policy(client, old, policy("5", "10", "0.9", 2))
        use(client, "x", "x1", 6, prev + DAY_MS)
        use(client, "x", "x2", 6)
        current = preview(client, "x", now_ms())
        assert (current.contract_id, current.currency) == (new, "JPY")
        period = current.period_start.ToMilliseconds()
        assert top_ups_of(client, "x") == {f"top-up-{prev}-1": "6"}
        assert current.top_up_purchases == "0"
        set_policy(client, new, policy("5", "10", "135", 2))
        for key, units in (("x3", 1), ("x5", 6), ("x6", 7)):
            use(client, "x", key, units)
        use(client, "x", "x4", 1, switch - HOUR_MS)
        made = {f"top-up-{prev}-1": "6", f"top-up-{period}-1": "7", f"top-up-{period}-2": "6"}
        assert top_ups_of(client, "x") == made
        assert client.get_balance("x").credits_available == "3"
        assert preview(client, "x", now_ms()).top_up_purchases == "1755"
        previous = preview(client, "x", prev)
        assert (previous.contract_id, previous.currency) == (old, "USD")
        assert (previous.top_up_purchases, previous.overage_due, previous.total_due) == ("5.40", "1.00", "6.40")


def test_after_a_kill_9_restart_the_policy_still_buys_only_in_its_currency(server: ServerProcess) -> None:
    """x as the test before left it (run after it). After kill -9 and a restart (the journal replayed): the same
    three top-ups, 3 credits available, 1,755 JPY on x-2's invoice; another late event of x-1's last period (1,
    two hours before the switch: overage, 3 available, x-1's period having bought once of 2) still buys nothing:
    x-1's invoice has 5.40 of purchases and 2.00 of overage, 7.40 due."""
    prev = month_start_ms(1)
    with server.client() as client:
        made = top_ups_of(client, "x")
        assert len(made) == 3, (
            "runs after test_a_policy_buys_only_in_periods_of_a_contract_in_the_currency_it_was_set_in"
        )
        switch = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="x-2")).starting_at.ToMilliseconds()
    server.kill9()
    server.restart()
    with server.client() as client:
        assert top_ups_of(client, "x") == made
        assert client.get_balance("x").credits_available == "3"
        assert preview(client, "x", now_ms()).top_up_purchases == "1755"
        use(client, "x", "x7", 1, switch - 2 * HOUR_MS)
        assert top_ups_of(client, "x") == made
        previous = preview(client, "x", prev)
        assert (previous.top_up_purchases, previous.overage_due, previous.total_due) == ("5.40", "2.00", "7.40")


def wait_for_rollover(client: TariffClient, customer_id: str) -> None:
    """Until the clock driver has rolled the customer's grant over (its period's end is past): a slow machine may
    take a while."""
    for _ in range(300):
        if any(g.kind == contracts_pb2.ROLLOVER for g in client.get_balance(customer_id).grants):
            return
        time.sleep(0.05)
    raise AssertionError(f"{customer_id}'s grant did not roll over")


def customer_lines(client: TariffClient, customer_id: str, start_ms: int) -> dict[int, tuple[str, str, str, str]]:
    """period start -> (recognized_credits, recognized_overage, breakage, deferred) of the customer's lines."""
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=stamp(start_ms), period_end=stamp(now_ms()), customer_id=customer_id
    )
    report = client.invoices.GetRevenueReport(request)
    assert report.reconciliation.reconciles
    lines = report.customer_lines
    return {
        line.period_start.ToMilliseconds(): (
            line.recognized_credits,
            line.recognized_overage,
            line.breakage,
            line.deferred,
        )
        for line in lines
    }


def test_a_rollover_at_the_old_contracts_last_period_end_and_balances_invoices_revenue_closes_across_the_switch(
    server: ServerProcess,
) -> None:
    """y-1 then y-2, both USD at 1 a unit of overage (README "Contract switches", "Rollover", "Deferred"). y-g (10,
    paid 10, from y-1's start) and R (10, paid 10, half rolling over, from the previous month's start, in y-1's
    last period): same priority, R not expiring: y-g burns first (creation order). 2 used in y-1's last period and
    2 in y-2's first (Nov 2 and 4 for a switch on Nov 3), both from y-g. At y-1's monthly end (this month's start)
    R rolls over: 5 into rollover-R-<this month> (paid 5, usable until next month's start), 5 break in y-1's last
    period. 15 used now: the rollover first (earlier expiry), then y-g's 6: 4 of overage: GetBalance in y-2's
    period: charges 15, overage 4, overage_due 4 (y-2's price). Invoices: y-1's last has the 2 units only (y-g 2
    drawn 8 left, R 5 drawn 5 expired), y-2's first 2 units (y-g 6 left, the rollover 5), the current 15, 4.00
    due. Revenue (deferred rolls forward): 10 after y-1's first period, 10 + 10 - 2 - 5 = 13, 13 - 2 = 11, then
    11 - 11 = 0 with 4 of overage. w (USD then USD, policy below 5 back to 10 at 0.5 set through w-1): 6 used in
    w-1's last period buys 6 (3.00 on its invoice, sold there: deferred 10 + 3 - 6 = 7), 6 used now (4 from w-g, 2
    from that top-up) buys 6 in w-2's period (3.00 there: recognised 4 + 1, deferred 7 + 3 - 5 = 5). ClosePeriod
    closes y-1's last period (ended at this month's start) and y-2's first; y-2's current is FAILED_PRECONDITION;
    CloseDuePeriods then closes the rest of y's and w's ended periods, the earliest end first, then contract id."""
    first, prev, cur = month_start_ms(2), month_start_ms(1), month_start_ms()
    if now_ms() < cur + 2 * DAY_MS + HOUR_MS:
        pytest.skip("in the first two days of a month the new contract's current period is its first")
    with server.client() as client:
        old, new, switch = switched(client, "y", "USD", "USD")
        rolling = contracts_pb2.Grant(
            id="R",
            contract_id=old,
            kind=contracts_pb2.PREPAID,
            amount="10",
            paid_amount="10",
            rollover_fraction="0.5",
            starts_at=stamp(prev),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=rolling))
        use(client, "y", "y1", 2, prev + DAY_MS)
        use(client, "y", "y2", 2, switch + DAY_MS)
        wait_for_rollover(client, "y")
        rolled = f"rollover-R-{cur}"
        use(client, "y", "y3", 15)
        balance = client.get_balance("y")
        assert (balance.period_start.ToMilliseconds(), balance.credits_remaining) == (cur + 2 * DAY_MS, "0")
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("15", "4", "4")
        shown = {}
        for at_ms in (prev, switch, now_ms()):
            invoice = preview(client, "y", at_ms)
            grants = {g.grant_id: (g.drawn, g.remaining, g.expired) for g in invoice.grant_balances}
            shown[invoice.contract_id, invoice.period_start.ToMilliseconds()] = (
                [
                    (line.quantity, {c.grant_id: c.credits for c in line.credits_applied}, line.overage)
                    for line in invoice.lines
                ],
                grants,
                invoice.total_due,
            )
        assert shown == {
            (old, prev): ([("2", {"y-g": "2"}, "0")], {"y-g": ("2", "8", "0"), "R": ("5", "0", "5")}, "0.00"),
            (new, switch): (
                [("2", {"y-g": "2"}, "0")],
                {"y-g": ("4", "6", "0"), "R": ("5", "0", "5"), rolled: ("0", "5", "0")},
                "0.00",
            ),
            (new, cur + 2 * DAY_MS): (
                [("15", {rolled: "5", "y-g": "6"}, "4")],
                {"y-g": ("10", "0", "0"), "R": ("5", "0", "5"), rolled: ("5", "0", "0")},
                "4.00",
            ),
        }
        assert customer_lines(client, "y", first) == {
            first: ("0", "0", "0", "10"),
            prev: ("2", "0", "5", "13"),
            switch: ("2", "0", "0", "11"),
            cur + 2 * DAY_MS: ("11", "4", "0", "0"),
        }
        old_w, new_w, _ = switched(client, "w", "USD", "USD")
        set_policy(client, old_w, policy("5", "10", "0.5", 2))
        use(client, "w", "w1", 6, prev + DAY_MS)
        use(client, "w", "w2", 6)
        assert top_ups_of(client, "w") == {f"top-up-{prev}-1": "6", f"top-up-{cur + 2 * DAY_MS}-1": "6"}
        assert [preview(client, "w", at).top_up_purchases for at in (prev, switch, now_ms())] == [
            "3.00",
            "0.00",
            "3.00",
        ]
        assert customer_lines(client, "w", first) == {
            first: ("0", "0", "0", "10"),
            prev: ("6", "0", "0", "7"),
            switch: ("0", "0", "0", "7"),
            cur + 2 * DAY_MS: ("5", "0", "0", "5"),
        }
        closed = []
        for start_ms in (prev, switch, switch):
            request = invoices_pb2.ClosePeriodRequest(customer_id="y", period_start=stamp(start_ms))
            invoice = client.invoices.ClosePeriod(request)
            closed.append((invoice.invoice_number, invoice.contract_id, invoice.status, invoice.total_due))
        assert closed[2] == closed[1] and closed[0][1:] == (old, invoices_pb2.INVOICE_FINAL, "0.00")
        assert closed[1][1:] == (new, invoices_pb2.INVOICE_FINAL, "0.00")
        current = invoices_pb2.ClosePeriodRequest(customer_id="y", period_start=stamp(cur + 2 * DAY_MS))
        code, details = refusal(lambda: client.invoices.ClosePeriod(current))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "has not ended" in details, details
        due = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices
        ours = [(i.contract_id, i.period_start.ToMilliseconds(), i.total_due) for i in due if i.customer_id in "wy"]
        assert ours == [(old_w, first, "0.00"), (old, first, "0.00"), (old_w, prev, "3.00"), (new_w, switch, "0.00")]


def test_every_contract_answers_the_policys_currency_and_a_request_naming_another_is_refused(
    server: ServerProcess,
) -> None:
    """v-1 (USD) then v-2 (JPY). Set through v-1 at 0.9, the policy shows currency USD on both contracts (v-2's
    own currency being JPY). The policy as v-2 answers it (0.9, USD) sent back through v-2 is INVALID_ARGUMENT
    naming top_up.currency, nothing changed (it would reprice 0.9 USD as 0.9 JPY); through v-1 it is the policy in
    force (no change). Set through v-2 at 135 naming JPY, both show 135 JPY; without a currency, the same."""
    with server.client() as client:
        old, new, _ = switched(client, "v", "USD", "JPY")
        usd = policy("5", "10", "0.9", 2)
        set_policy(client, old, usd)
        shown = contracts_pb2.TopUpPolicy()
        shown.CopyFrom(usd)
        shown.currency = "USD"
        for contract_id in (old, new):
            contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id))
            assert contract.top_up == shown, contract_id
        code, details = refusal(lambda: set_policy(client, new, shown))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("top_up.currency"), details
        assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id=new)).top_up == shown
        assert set_policy(client, old, shown).top_up == shown
        yen = policy("5", "10", "135", 2)
        yen.currency = "JPY"
        assert set_policy(client, new, yen).top_up == yen
        assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id=old)).top_up == yen
        yen.ClearField("currency")
        answered = set_policy(client, new, yen).top_up
        assert (answered.price_per_credit, answered.currency) == ("135", "JPY")


def test_restored_from_a_snapshot_the_policy_keeps_its_currency(server_factory: ServerFactory) -> None:
    """u-1 (USD) then u-2 (JPY), snapshots after every record. The policy set through u-1 (below 5 back to 10 at
    0.9): 6 used now (4 left) buys nothing in u-2's period. After kill -9 and a restart from the snapshot: the
    policy still answers USD, and 1 more used now (3 left) still buys nothing."""
    server = server_factory(extra_args=["--snapshot-every", "1", "--snapshot-journal-factor", "0"])
    with server.client() as client:
        catalogue(client)
        old, new, _ = switched(client, "u", "USD", "JPY")
        set_policy(client, old, policy("5", "10", "0.9", 2))
        use(client, "u", "u1", 6)
        assert top_ups_of(client, "u") == {}
    server.kill9()
    server.restart()
    with server.client() as client:
        assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id=new)).top_up.currency == "USD"
        use(client, "u", "u2", 1)
        assert top_ups_of(client, "u") == {}
        assert client.get_balance("u").credits_available == "3"
