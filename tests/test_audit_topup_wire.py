"""Credits lifecycle edges of automatic top-ups over the wire, every amount computed by hand from the docs (README
"Automatic top-up", contracts.proto TopUpPolicy, docs/architecture.md "Credits: holds, top-ups, breakage"), and how a
grant's retry compares its instants (README "Every state-changing call is safe to retry").

Products from tests/test_audit_credits2_wire.py: `units` (event type `work`) and `extra` (event type `other`), SUM of
`n`, 1 credit a unit; an event type no product reads (`nothing`) is accepted charging nothing. Every policy here
costs 1 USD a credit, so a purchase of N credits is N.00 on the invoice."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, now_ms
from tariff.v1 import alerts_pb2, contracts_pb2, invoices_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import preview, refusal, release, serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits2_wire import (
    DAY_MS,
    HOUR_MS,
    ask,
    catalogue,
    charges,
    customer,
    event,
    grant,
    hold,
    new_grant,
    rows,
    totals,
    use,
)
from tests.test_audit_gateway2_wire import answer_of, batched, request
from tests.test_audit_topups_wire import month_start_ms, one_month_before


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-topup")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def set_policy(client: TariffClient, contract_id: str, threshold: str, recharge_to: str, max_per_period: int) -> None:
    top_up = contracts_pb2.TopUpPolicy(
        threshold=threshold, recharge_to=recharge_to, price_per_credit="1", max_per_period=max_per_period
    )
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=top_up))


def top_ups(client: TariffClient, customer_id: str) -> dict[str, str]:
    """TOP_UP grant id -> amount."""
    balance = client.get_balance(customer_id)
    return {g.grant_id: g.amount for g in balance.grants if g.kind == contracts_pb2.TOP_UP}


def last_month_customer(client: TariffClient, customer_id: str) -> str:
    """ALLOW, a contract from the start of last month (so late usage of last month's period is rated)."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract = contracts_pb2.CreateContractRequest(
        id=f"k-{customer_id}",
        customer_id=customer_id,
        rate_card_id="card",
        starting_at=stamp(month_start_ms(1)),
        overage_policy=contracts_pb2.ALLOW,
        overage_price="1",
        currency="USD",
    )
    client.contracts.CreateContract(contract)
    return f"k-{customer_id}"


def test_credit_for_other_products_keeps_a_block_customer_from_both_usage_and_top_up(server: ServerProcess) -> None:
    """README "Automatic top-up": the threshold reads the customer's available credit, GetBalance's
    credits_available, whatever products its grants apply to. BLOCK, one grant of 100 for `extra` only; policy below
    10 back to 50. `units` usage has no credit: Authorize and a hold are denied (0 available to it), and nothing is
    bought, since the customer has 100 available. Ingested anyway, 2 units are overage and buy nothing. 95 units of
    `extra` leave 5 < 10: one TOP_UP of 50 - 5 = 45 (for every product), after which 1 unit of `units` is allowed
    with 45 available to it."""
    with server.client() as client:
        contract_id = customer(client, "xo", block=True)
        grant(client, "xo", "x", "100", products=("extra",))
        set_policy(client, contract_id, "10", "50", 3)
        assert ask(client, "xo", 1) == (False, "INSUFFICIENT_CREDIT", "1", "0")
        assert hold(client, "xo", 1, "r1") == (False, "INSUFFICIENT_CREDIT", "1", "0", "")
        use(client, event("xo-1", "xo", 2))
        assert top_ups(client, "xo") == {}
        assert charges(client, "xo") == ("2", "2")
        assert totals(client, "xo") == ("100", "0", "100")
        use(client, event("xo-2", "xo", 95, event_type="other"))
        assert top_ups(client, "xo") == {f"top-up-{month_start_ms()}-1": "45"}
        assert totals(client, "xo") == ("50", "0", "50")
        assert ask(client, "xo", 1) == (True, "OK", "1", "45")


def test_a_policy_set_below_its_threshold_buys_at_the_next_rated_event_even_one_feeding_no_product(
    server: ServerProcess,
) -> None:
    """README: "A policy set while available credit is already below `threshold` buys at the customer's next rated
    event (one that draws nothing ... included) or hold placed, not when it is set (nor at an `Authorize` without
    `reserve`, a denied hold or a repeated one)". BLOCK, 3 credits; r0 holds 1 (2 available); policy below 5 back to
    20. Setting it, an Authorize without reserve, a denied hold (4 units) and r0 again buy nothing. An event of a type
    no product reads is rated (accepted, charging nothing) and buys 20 - 2 = 18 (remaining 3 + 18 = 21, 1 held)."""
    with server.client() as client:
        contract_id = customer(client, "np", block=True)
        grant(client, "np", "g", "3")
        assert hold(client, "np", 1, "r0") == (True, "OK", "1", "2", "r0")
        set_policy(client, contract_id, "5", "20", 1)
        assert ask(client, "np", 4) == (False, "INSUFFICIENT_CREDIT", "4", "2")
        assert hold(client, "np", 4, "r1") == (False, "INSUFFICIENT_CREDIT", "4", "2", "")
        assert hold(client, "np", 1, "r0") == (True, "OK", "1", "2", "r0")
        assert top_ups(client, "np") == {}
        use(client, event("np-1", "np", 1, event_type="nothing"))
        assert top_ups(client, "np") == {f"top-up-{month_start_ms()}-1": "18"}
        assert totals(client, "np") == ("21", "1", "20")
        assert charges(client, "np") == ("0", "0")


def test_max_per_period_counts_each_billing_period_apart_late_usage_included(server: ServerProcess) -> None:
    """ALLOW, contract from last month, g 10 (from last month); policy below 5 back to 20, once a period.
    - 8 units dated last month draw g (2 left < 5): last period's purchase, 18, usable from last month.
    - 19 units now draw g's 2 then 17 of it (1 left < 5): this period's purchase, 19.
    - 16 units now draw 1 + 15 (4 left < 5): this period's cap is reached, nothing bought.
    - 1 unit dated last month: nothing left usable then (this period's top-up starts this month): 1 of overage in
      last period, whose cap is reached too: nothing bought.
    Last period's invoice: 18.00 of purchases, 1.00 of overage, 19.00 due; this period's: 19.00 of purchases."""
    last, this = month_start_ms(1), month_start_ms()
    with server.client() as client:
        contract_id = last_month_customer(client, "mp")
        grant(client, "mp", "g", "10")
        set_policy(client, contract_id, "5", "20", 1)
        use(client, event("mp-1", "mp", 8, at_ms=this - DAY_MS))
        assert top_ups(client, "mp") == {f"top-up-{last}-1": "18"}
        use(client, event("mp-2", "mp", 19))
        use(client, event("mp-3", "mp", 16))
        use(client, event("mp-4", "mp", 1, at_ms=this - DAY_MS))
        assert top_ups(client, "mp") == {f"top-up-{last}-1": "18", f"top-up-{this}-1": "19"}
        assert totals(client, "mp") == ("4", "0", "4")
        old, new = preview(client, "mp", last), preview(client, "mp", this)
        assert (old.top_up_purchases, old.overage_due, old.total_due) == ("18.00", "1.00", "19.00")
        assert (new.top_up_purchases, new.overage_due, new.total_due) == ("19.00", "0.00", "19.00")


def test_a_grant_not_started_yet_is_not_available_to_the_threshold(server: ServerProcess) -> None:
    """balance.proto GrantBalance.remaining: a grant that has not started "Balance.credits_remaining and the credit
    available count only once it starts". g 3 now, f 100 from in an hour; policy below 5 back to 20. 1 unit leaves
    2 available (f not counted): one purchase of 18; 20 available, f's 100 shown but not counted."""
    with server.client() as client:
        contract_id = customer(client, "fu", block=False)
        grant(client, "fu", "g", "3")
        grant(client, "fu", "f", "100", starts_at_ms=now_ms() + HOUR_MS)
        set_policy(client, contract_id, "5", "20", 2)
        use(client, event("fu-1", "fu", 1))
        assert top_ups(client, "fu") == {f"top-up-{month_start_ms()}-1": "18"}
        assert totals(client, "fu") == ("20", "0", "20")
        assert rows(client, "fu")["f"] == ("0", "100", "0", "0")


def test_top_ups_bought_by_holds_then_the_holds_end(server: ServerProcess) -> None:
    """BLOCK, g 10; policy below 5 back to 20, twice a period. r1 holds 7 of g (3 left < 5): buys 17 (t1), its answer
    counting them: 20. r2 holds 16: g's 3 then 13 of t1 (4 left < 5): buys 16 (t2): 20 (remaining 10 + 17 + 16 = 43
    with the 23 held in it). Releasing r1 gives g 7 back: 27. An event of 10 units settling r2 gives its 16 back (g 10, t1 17, t2 16) and draws g's 10: 33 available,
    nothing held, nothing bought. Purchases 17 + 16 = 33.00 due."""
    this = month_start_ms()
    with server.client() as client:
        contract_id = customer(client, "ho", block=True)
        grant(client, "ho", "g", "10")
        set_policy(client, contract_id, "5", "20", 2)
        assert hold(client, "ho", 7, "r1") == (True, "OK", "7", "20", "r1")
        assert hold(client, "ho", 16, "r2") == (True, "OK", "16", "20", "r2")
        assert top_ups(client, "ho") == {f"top-up-{this}-1": "17", f"top-up-{this}-2": "16"}
        assert totals(client, "ho") == ("43", "23", "20")
        assert release(client, "ho", "r1") == "7"
        assert totals(client, "ho") == ("43", "16", "27")
        use(client, event("ho-1", "ho", 10, reservation_id="r2"))
        assert totals(client, "ho") == ("33", "0", "33")
        assert rows(client, "ho")["g"] == ("10", "0", "0", "0")
        assert preview(client, "ho", now_ms()).top_up_purchases == "33.00"


def test_held_credit_on_an_expired_grant_is_not_available_to_the_threshold(server: ServerProcess) -> None:
    """README "Expiry and breakage": credit a hold still holds on an expired grant counts in credits_held and
    credits_remaining, never in credits_available. ALLOW, s 10 expiring in 1.5 s (the only grant); policy below 5
    back to 20. r1 (TTL 120 s) holds 3 of s: 7 available, nothing bought. s expires: 7 break, the 3 stay held
    (remaining 3, held 3, available 0); nothing is bought until an event (README: credit "a grant's expiry or
    rollover took below it" buys at the next rated event or hold, "the clock buys nothing"): one feeding no product buys 20 - 0 = 20
    (remaining 23, held 3, available 20). Releasing r1 answers 3, which break: s expired 10; 20 remaining and
    available."""
    with server.client() as client:
        contract_id = customer(client, "xh", block=False)
        grant(client, "xh", "s", "10", expires_at_ms=now_ms() + 1500)
        set_policy(client, contract_id, "5", "20", 2)
        assert hold(client, "xh", 3, "r1", ttl=Duration(seconds=120)) == (True, "OK", "3", "7", "r1")
        assert wait_for(lambda: rows(client, "xh")["s"] == ("0", "0", "3", "7"), 10)
        assert totals(client, "xh") == ("3", "3", "0")
        assert top_ups(client, "xh") == {}
        use(client, event("xh-1", "xh", 1, event_type="nothing"))
        assert top_ups(client, "xh") == {f"top-up-{month_start_ms()}-1": "20"}
        assert totals(client, "xh") == ("23", "3", "20")
        assert release(client, "xh", "r1") == "3"
        assert rows(client, "xh")["s"] == ("0", "0", "0", "10")
        assert totals(client, "xh") == ("20", "0", "20")


def test_one_authorize_batch_of_holds_buys_after_each_hold_and_each_answer_counts_it(server: ServerProcess) -> None:
    """AuthorizeBatches applies a message's holds as the same Reserve commands one after the other would be. BLOCK,
    g 10; policy below 5 back to 20, twice. One message: h1 holds 7 (3 left < 5: buys 17, answers 20), h2 holds 16
    (g's 3 and 13 of the top-up: 4 left < 5, buys 16, answers 20), h3 holds 18 (2 left < 5, the cap reached:
    answers 2). Remaining 10 + 17 + 16 = 43, 41 held, 2 available."""
    this = month_start_ms()
    with server.client() as client:
        contract_id = customer(client, "ab", block=True)
        grant(client, "ab", "g", "10")
        set_policy(client, contract_id, "5", "20", 2)
        message = [
            request("ab", {"n": 7}, reservation_id="h1", request_id="1"),
            request("ab", {"n": 16}, reservation_id="h2", request_id="2"),
            request("ab", {"n": 18}, reservation_id="h3", request_id="3"),
        ]
        answers = [answer_of(a) for a in batched(client, message)]
        assert answers == [
            (True, "OK", "7", "20", "h1"),
            (True, "OK", "16", "20", "h2"),
            (True, "OK", "18", "2", "h3"),
        ]
        assert top_ups(client, "ab") == {f"top-up-{this}-1": "17", f"top-up-{this}-2": "16"}
        assert totals(client, "ab") == ("43", "41", "2")


def test_available_credit_equal_to_the_threshold_buys_nothing_and_a_picocredit_below_buys_the_difference(
    server: ServerProcess,
) -> None:
    """README "below `threshold`": g 10, policy below 5 back to 20 at 1 USD. 5 units leave 5, not below 5: nothing. 10^-12
    units more leave 4.999999999999: buys 20 - 4.999999999999 = 15.000000000001, costing 15.000000000001 USD, due
    15.00 (half-even to the cent)."""
    with server.client() as client:
        contract_id = customer(client, "eq", block=False)
        grant(client, "eq", "g", "10")
        set_policy(client, contract_id, "5", "20", 1)
        use(client, event("eq-1", "eq", 5))
        assert top_ups(client, "eq") == {}
        use(client, event("eq-2", "eq", 1e-12))
        assert top_ups(client, "eq") == {f"top-up-{month_start_ms()}-1": "15.000000000001"}
        assert totals(client, "eq") == ("20", "0", "20")
        assert preview(client, "eq", now_ms()).top_up_purchases == "15.00"


def test_a_cleared_and_set_again_policy_keeps_counting_the_periods_purchases(server: ServerProcess) -> None:
    """max_per_period counts the billing period's purchases, whatever policy bought them. g 10, policy below 5 back
    to 20 once a period: 6 units buy 16 (20 available). Cleared, then set again: 16 units leave 4 < 5, but the period
    has its one purchase: nothing bought. Raised to twice: 0 units of `work` (rated, costing 0) buy 16."""
    this = month_start_ms()
    with server.client() as client:
        contract_id = customer(client, "cl", block=False)
        grant(client, "cl", "g", "10")
        set_policy(client, contract_id, "5", "20", 1)
        use(client, event("cl-1", "cl", 6))
        assert top_ups(client, "cl") == {f"top-up-{this}-1": "16"}
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id))
        set_policy(client, contract_id, "5", "20", 1)
        use(client, event("cl-2", "cl", 16))
        assert top_ups(client, "cl") == {f"top-up-{this}-1": "16"}
        set_policy(client, contract_id, "5", "20", 2)
        use(client, event("cl-3", "cl", 0))
        assert top_ups(client, "cl") == {f"top-up-{this}-1": "16", f"top-up-{this}-2": "16"}
        assert totals(client, "cl") == ("20", "0", "20")


def test_the_credit_available_is_counted_when_the_event_is_rated_not_at_its_timestamp(server: ServerProcess) -> None:
    """A grant pays usage dated from its start; the threshold reads the credit available when the event is rated
    (README: "a grant not started yet counts once it starts"; the period's start only for an event of a later
    period). f 100 starts in 60 s (the only grant); policy below 5 back to 20. An event dated 120 s ahead (within the
    5-minute future skew, in this period unless it ends within those 2 minutes) draws 10 from f: f 90, yet 0 is
    available now, below 5: a purchase of 20, 20 available now (f's 90 joins in a minute)."""
    at_ms = now_ms() + 120_000
    if at_ms >= month_start_ms(-1):
        pytest.skip("the event must be dated in the current billing period")
    with server.client() as client:
        contract_id = customer(client, "fs", block=False)
        grant(client, "fs", "f", "100", starts_at_ms=now_ms() + 60_000)
        set_policy(client, contract_id, "5", "20", 1)
        use(client, event("fs-1", "fs", 10, at_ms=at_ms))
        assert rows(client, "fs")["f"] == ("10", "90", "0", "0")
        assert charges(client, "fs") == ("10", "0")
        assert top_ups(client, "fs") == {f"top-up-{month_start_ms()}-1": "20"}
        assert totals(client, "fs") == ("20", "0", "20")


def test_a_grant_retried_with_its_expiry_written_to_the_millisecond_is_the_same_request(server: ServerProcess) -> None:
    """README "Every state-changing call is safe to retry": "an instant is compared as kept, in whole milliseconds": a
    grant of 10 expiring at a whole second plus 0.5 ms is kept expiring at that second; the same id sent again with
    the whole second answers the grant again and grants nothing more (10 available), while its amount written `10.0`
    is another request (ALREADY_EXISTS)."""
    expiry_ms = (now_ms() + DAY_MS) // 1000 * 1000
    with server.client() as client:
        customer(client, "ms", block=False)
        first = new_grant("ms", "g", "10", expires_at_ms=expiry_ms)
        first.expires_at.nanos += 500_000
        granted = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=first))
        assert granted.expires_at.ToMilliseconds() == expiry_ms and granted.expires_at.nanos == 0
        again = new_grant("ms", "g", "10", expires_at_ms=expiry_ms)
        assert client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=again)) == granted
        respelt = new_grant("ms", "g", "10.0", expires_at_ms=expiry_ms)
        code, _ = refusal(partial(client.contracts.GrantCredits, contracts_pb2.GrantCreditsRequest(grant=respelt)))
        assert code == grpc.StatusCode.ALREADY_EXISTS
        assert totals(client, "ms") == ("10", "0", "10")


def test_a_hold_that_bought_a_top_up_outlives_its_periods_close_and_settles_in_the_next(server: ServerProcess) -> None:
    """A contract whose first period P ends at B, 3 s from now; g 10; policy below 5 back to 20, once a period. In P,
    r1 (TTL 120 s) holds 7 (3 left < 5): buys 17 in P. Once B has passed P is closed: its invoice bills the 17.00, no
    usage, g listed with its 10 remaining (a hold is not consumption). An event dated in P settling r1 is refused
    PERIOD_CLOSED and the hold stays; one dated after B settles it (7 back to g, 7 drawn: g 3, t 17, 20 available,
    not below 5: nothing bought in B), charged in B: 7, no overage."""
    boundary = (now_ms() // 1000 + 3) * 1000
    if datetime.fromtimestamp(boundary / 1000, UTC).day > 28:
        pytest.skip("the boundary must fall on a day every month has")
    start = one_month_before(boundary)
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="pc", name="pc"))
        contract = contracts_pb2.CreateContractRequest(
            id="k-pc",
            customer_id="pc",
            rate_card_id="card",
            starting_at=stamp(start),
            overage_price="1",
            currency="USD",
        )
        client.contracts.CreateContract(contract)
        grant(client, "pc", "g", "10")
        set_policy(client, "k-pc", "5", "20", 1)
        assert hold(client, "pc", 7, "r1", ttl=Duration(seconds=120)) == (True, "OK", "7", "20", "r1")
        assert top_ups(client, "pc") == {f"top-up-{start}-1": "17"}
        assert wait_for(lambda: now_ms() > boundary + 100, 10)
        close = invoices_pb2.ClosePeriodRequest(customer_id="pc", period_start=stamp(start))
        invoice = client.invoices.ClosePeriod(close)
        assert (invoice.top_up_purchases, invoice.subtotal, invoice.overage_amount) == ("17.00", "0", "0")
        listed = {g.grant_id: (g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances}
        assert listed["pc.g"] == ("10", "0", "10", "0")
        late = client.ingest_batch([event("pc-1", "pc", 7, reservation_id="r1", at_ms=boundary - 1000)])
        assert [r.reason for r in late.rejected] == [usage_pb2.PERIOD_CLOSED]
        assert totals(client, "pc") == ("27", "7", "20")
        use(client, event("pc-2", "pc", 7, reservation_id="r1", at_ms=now_ms()))
        assert rows(client, "pc")["g"] == ("7", "3", "0", "0")
        assert totals(client, "pc") == ("20", "0", "20")
        assert charges(client, "pc") == ("7", "0")
        assert top_ups(client, "pc") == {f"top-up-{start}-1": "17"}


def test_top_ups_bought_by_one_message_of_holds_each_fire_their_alert_and_low_balance_reads_after_them(
    server: ServerProcess,
) -> None:
    """README alerts: TOP_UP_EXECUTED fires once per purchase ("a top-up a hold triggered included"); LOW_BALANCE is
    evaluated from the balance after the change. BLOCK, g 10; policy below 5 back to 20, twice; rules TOP_UP_EXECUTED
    and LOW_BALANCE below 8. One AuthorizeBatches message holding 7 then 16 buys 17 then 16 (as above): two
    TOP_UP_EXECUTED alerts, of one journal record, and no LOW_BALANCE (20 available after it, though 3 and 4 were
    left between). A hold of 13 then leaves 7: not below 5 (nothing bought) but below 8: LOW_BALANCE with 7."""
    this = month_start_ms()
    with server.client() as client:
        contract_id = customer(client, "al", block=True)
        grant(client, "al", "g", "10")
        set_policy(client, contract_id, "5", "20", 2)
        for alert_type, threshold in ((alerts_pb2.TOP_UP_EXECUTED, ""), (alerts_pb2.LOW_BALANCE, "8")):
            rule = alerts_pb2.CreateAlertRequest(customer_id="al", type=alert_type, threshold=threshold)
            client.alerts.CreateAlert(rule)
        message = [
            request("al", {"n": 7}, reservation_id="h1", request_id="1"),
            request("al", {"n": 16}, reservation_id="h2", request_id="2"),
        ]
        assert [answer_of(a)[3] for a in batched(client, message)] == ["20", "20"]
        assert hold(client, "al", 13, "h3") == (True, "OK", "13", "7", "h3")
        stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=30.0)
        seen: list[alerts_pb2.Alert] = []
        for alert in stream:
            if alert.customer_id == "al":
                seen.append(alert)
            if alert.type == alerts_pb2.LOW_BALANCE and alert.customer_id == "al":
                break
        bought = [(a.details["grant_id"], a.details["credits"], a.journal_seq) for a in seen[:2]]
        seq = bought[0][2]
        assert bought == [(f"top-up-{this}-1", "17", seq), (f"top-up-{this}-2", "16", seq)]
        assert [alerts_pb2.AlertType.Name(a.type) for a in seen] == ["TOP_UP_EXECUTED"] * 2 + ["LOW_BALANCE"]
        assert (seen[2].details["credits_available"], seen[2].details["threshold"]) == ("7", "8")


def rolled_state(client: TariffClient, customer_id: str, rolled: str) -> bool:
    """Whether the balance shows the rollover to `rolled` recorded; before that, it must be one of the two states the
    README documents for the grant R (100, fraction 0.5, 40 drawn, 26 held): before its period's end, or after the
    end and before the record."""
    balance = client.get_balance(customer_id)
    lines = {g.grant_id: (g.drawn, g.remaining, g.held, g.expired) for g in balance.grants}
    if rolled in lines:
        return True
    totals_seen = (balance.credits_remaining, balance.credits_held, balance.credits_available)
    assert lines == {f"{customer_id}.R": ("40", "60", "26", "0")}, lines
    assert totals_seen in (("60", "26", "34"), ("26", "26", "0")), totals_seen
    return False


def test_the_readmes_rollover_of_held_credit_then_a_top_up_the_settling_event_buys(server: ServerProcess) -> None:
    """README "Held credit at a rollover", its example: R 100 with fraction 0.5, 40 drawn, r1 holding 20 and r2 6 at
    the period's end B: 30 roll over (17 available, 10 and 3 still held by r1 and r2), 30 break. Policy below 20 back
    to 50: 17 available after the rollover buys nothing (the clock buys nothing). An event dated after B settling r2
    with 1 unit: r2's 3 back to the ROLLOVER grant, 1 drawn from it: 19 < 20, a purchase of 31 counted in B's period.
    Releasing r1 answers 10 (its share that broke is no longer held): 19 + 31 + 10 = 60 available. Until the
    rollover is recorded a balance is the one before B (60 remaining, 26 held, 34 available) or, from B on, the
    README's moment before the record: R listed as before (40 drawn, 60 remaining, 26 held) while the totals count
    only the 26 held on it (26, 26, 0)."""
    boundary = (now_ms() // 1000 + 3) * 1000
    if datetime.fromtimestamp(boundary / 1000, UTC).day > 28:
        pytest.skip("the boundary must fall on a day every month has")
    start = one_month_before(boundary)
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="ro", name="ro"))
        contract = contracts_pb2.CreateContractRequest(
            id="k-ro",
            customer_id="ro",
            rate_card_id="card",
            starting_at=stamp(start),
            overage_price="1",
            currency="USD",
        )
        client.contracts.CreateContract(contract)
        rolling = new_grant("ro", "R", "100")
        rolling.rollover_fraction = "0.5"
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=rolling))
        set_policy(client, "k-ro", "20", "50", 1)
        use(client, event("ro-1", "ro", 40))
        assert hold(client, "ro", 20, "r1", ttl=Duration(seconds=120)) == (True, "OK", "20", "40", "r1")
        assert hold(client, "ro", 6, "r2", ttl=Duration(seconds=120)) == (True, "OK", "6", "34", "r2")
        rolled = f"rollover-ro.R-{boundary}"
        seen_rolled = wait_for(lambda: rolled_state(client, "ro", rolled), 15)
        assert seen_rolled
        assert rows(client, "ro") == {"R": ("70", "0", "0", "30"), rolled: ("0", "30", "13", "0")}
        assert totals(client, "ro") == ("30", "13", "17")
        assert top_ups(client, "ro") == {}
        use(client, event("ro-2", "ro", 1, reservation_id="r2", at_ms=now_ms()))
        assert top_ups(client, "ro") == {f"top-up-{boundary}-1": "31"}
        assert release(client, "ro", "r1") == "10"
        assert rows(client, "ro")[rolled] == ("1", "29", "0", "0")
        assert totals(client, "ro") == ("60", "0", "60")
        assert preview(client, "ro", boundary).top_up_purchases == "31.00"


def test_every_balance_above_replays_alike_after_a_kill_9(server: ServerProcess) -> None:
    """Replay repeats every purchase exactly (README "Automatic top-up"): after kill -9 and a restart (the journal
    replayed), then after a clean stop and a start (the snapshot restored), each customer of this module without an open hold (which a slow machine could see expire meanwhile)
    shows the same grants (amount, drawn, remaining, held, expired), charges and invoice purchases. Runs last, after
    the tests above made their customers (alone, it checks nothing but itself)."""

    def state(client: TariffClient, customer_id: str) -> tuple[object, ...]:
        balance = client.get_balance(customer_id)
        grants = [(g.grant_id, g.amount, g.drawn, g.remaining, g.held, g.expired) for g in balance.grants]
        purchases = preview(client, customer_id, now_ms()).top_up_purchases
        return (grants, balance.period_charges, balance.overage_amount, purchases)

    with server.client() as client:
        listed = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=100)).customers
        ids = [c.id for c in listed if client.get_balance(c.id).credits_held == "0"]
        before = {customer_id: state(client, customer_id) for customer_id in ids}
    server.kill9()
    server.restart()
    with server.client() as client:
        for customer_id, seen in before.items():
            assert state(client, customer_id) == seen, ("replayed", customer_id)
    server.restart()  # a clean stop writes a snapshot, which the next start restores
    with server.client() as client:
        for customer_id, seen in before.items():
            assert state(client, customer_id) == seen, ("restored", customer_id)
        # The caps still count each period's purchases: mp (4 left, both periods' one purchase made) buys nothing
        # for 1 unit more (3 left); fu (g 2, its top-up 18, one of two made) buys 20 - 4 = 16 for 16 units.
        this = month_start_ms()
        if "mp" in before and "fu" in before:
            use(client, event("mp-5", "mp", 1), event("fu-2", "fu", 16))
            assert top_ups(client, "mp") == {f"top-up-{month_start_ms(1)}-1": "18", f"top-up-{this}-1": "19"}
            assert top_ups(client, "fu") == {f"top-up-{this}-1": "18", f"top-up-{this}-2": "16"}
            assert (totals(client, "mp")[2], totals(client, "fu")[2]) == ("3", "20")
