"""An acceptance audit of alerts and WatchBalance over the wire when the balance changes without an ingested event
(alerts.proto, README "Watching balances and alerts", "Credits and the gateway"): a hold made, expiring by TTL or
released; an automatic top-up bought by a hold; GrantCredits; then a kill -9 restart, after which the same alerts
are served with the same seqs and none fires twice for a crossing it already fired for.

The catalogue is tests/test_audit_invoices_wire.py's (product `unit`: 1 credit per 1,000 units), with `--close-grace
off` so that the server closes no period by itself while a test runs."""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import charges, open_contract, refusal, serving, this_hour_ms
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_alerts_wire import STREAM_TIMEOUT_S, alerts_until, marker, rule, use
from tests.test_audit_invoices_wire import JAN, catalogue, customer, ts


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-alerts-combo") / "data", extra_args=["--close-grace", "off"])
    yield from serving(process, catalogue)


def grant(client: TariffClient, contract_id: str, grant_id: str, credits: str) -> None:
    made = contracts_pb2.Grant(
        id=grant_id, contract_id=contract_id, kind=contracts_pb2.PREPAID, amount=credits, paid_amount=credits
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def hold(client: TariffClient, customer_id: str, reservation_id: str, units: float, ttl_s: int = 60) -> None:
    """A hold of `units` of product `unit` (units / 1,000 credits) for `ttl_s` seconds."""
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id,
        event_type="unit",
        dimensions={"k": "a"},
        reserve=True,
        reservation_id=reservation_id,
        reservation_ttl=Duration(seconds=ttl_s),
    )
    request.values["n"] = units
    assert client.balance.Authorize(request).allowed


def of(alerts: list[alerts_pb2.Alert], customer_id: str) -> list[tuple[str, str, dict[str, str]]]:
    """The alerts of `customer_id`: rule, type and details (period_start_ms and at_ms left out)."""
    return [
        (
            a.rule_id,
            alerts_pb2.AlertType.Name(a.type),
            {k: v for k, v in a.details.items() if k not in ("period_start_ms", "at_ms")},
        )
        for a in alerts
        if a.customer_id == customer_id
    ]


def available(client: TariffClient, customer_id: str) -> str:
    return str(client.get_balance(customer_id).credits_available)


def test_a_hold_crosses_low_balance_its_expiry_clears_it_and_fires_reservation_expired_once(
    server: ServerProcess,
) -> None:
    """10 credits; LOW_BALANCE below 5, CREDITS_EXHAUSTED, RESERVATION_EXPIRED. A hold of 6 (TTL 3 s): available 4 is
    below 5 (LOW_BALANCE fires, credits_available 4). It expires: RESERVATION_EXPIRED (released 6) and available is
    10 again, which clears LOW_BALANCE. A hold of 7, released: LOW_BALANCE fires again (3), the release clears it and
    fires no RESERVATION_EXPIRED. A hold of 10 exhausts the credit (LOW_BALANCE 0 and CREDITS_EXHAUSTED 0)."""
    with server.client() as client:
        contract_id = customer(client, "hx", "USD", "1")
        grant(client, contract_id, "hx-g", "10")
        low = rule(client, alerts_pb2.LOW_BALANCE, "hx", "5")
        out = rule(client, alerts_pb2.CREDITS_EXHAUSTED, "hx")
        expired = rule(client, alerts_pb2.RESERVATION_EXPIRED, "hx")
        hold(client, "hx", "hx-r1", 6000, ttl_s=3)  # long enough to read 4 available on a loaded machine
        assert available(client, "hx") == "4"
        wait_for(lambda: available(client, "hx") == "10", timeout_s=30)
        hold(client, "hx", "hx-r2", 7000)
        assert available(client, "hx") == "3"
        client.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id="hx", reservation_id="hx-r2")
        )
        assert available(client, "hx") == "10"
        hold(client, "hx", "hx-r3", 10000)
        assert available(client, "hx") == "0"
        marker(client, "hx-m1")
        seen = alerts_until(client, "hx-m1")
        assert of(seen, "hx") == [
            (low, "LOW_BALANCE", {"credits_available": "4", "threshold": "5"}),
            (expired, "RESERVATION_EXPIRED", {"reservation_id": "hx-r1", "released": "6"}),
            (low, "LOW_BALANCE", {"credits_available": "3", "threshold": "5"}),
            (low, "LOW_BALANCE", {"credits_available": "0", "threshold": "5"}),
            (out, "CREDITS_EXHAUSTED", {"credits_available": "0"}),
        ]


def test_a_top_up_bought_by_a_hold_fires_once_and_the_low_balance_it_averts_does_not(server: ServerProcess) -> None:
    """5 credits; top-up below 3 to 10; LOW_BALANCE below 2, TOP_UP_EXECUTED. A hold of 4 leaves 1, below 3: the same
    step buys 9 (10 - 1), so the record leaves 10 available and LOW_BALANCE (evaluated after the record) stays
    quiet; TOP_UP_EXECUTED fires once, credits 9."""
    with server.client() as client:
        contract_id = customer(client, "tx", "USD", "1")
        grant(client, contract_id, "tx-g", "5")
        policy = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.5", max_per_period=2)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        low = rule(client, alerts_pb2.LOW_BALANCE, "tx", "2")
        bought = rule(client, alerts_pb2.TOP_UP_EXECUTED, "tx")
        hold(client, "tx", "tx-r1", 4000)
        assert available(client, "tx") == "10"
        marker(client, "tx-m1")
        seen = alerts_until(client, "tx-m1")
        [(rule_id, kind, details)] = of(seen, "tx")
        assert (rule_id, kind) == (bought, "TOP_UP_EXECUTED")
        assert details["credits"] == "9"
        assert details["grant_id"].startswith("top-up-")
        assert low not in {a.rule_id for a in seen}


def test_watch_balance_follows_a_hold_its_expiry_and_a_grant(server: ServerProcess) -> None:
    """WatchBalance sends the current balance, then one after the hold (available 2 of 5), one after its expiry
    (5 again, nothing held) and one after a grant of 1 (6)."""
    with server.client() as client:
        contract_id = customer(client, "wx", "USD", "1")
        grant(client, contract_id, "wx-g", "5")
        stream = iter(
            client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="wx"), timeout=STREAM_TIMEOUT_S)
        )
        assert next(stream).credits_available == "5"
        hold(client, "wx", "wx-r1", 3000, ttl_s=1)
        assert until(stream, "2").credits_held == "3"
        assert until(stream, "5").credits_held == "0"
        grant(client, contract_id, "wx-g2", "1")
        until(stream, "6")


def committed(client: TariffClient, rule_id: str) -> alerts_pb2.Alert:
    """The first alert of `rule_id`, once committed (WatchAlerts sends each alert as its record commits)."""
    call = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=STREAM_TIMEOUT_S)
    alerts: Iterator[alerts_pb2.Alert] = iter(call)
    for alert in alerts:
        if alert.rule_id == rule_id:
            call.cancel()
            return alert
    raise AssertionError(f"the stream ended before an alert of rule {rule_id!r}")


def until(stream: Iterator[balance_pb2.Balance], credits: str) -> balance_pb2.Balance:
    """The first balance the stream sends with `credits` available."""
    for balance in stream:
        if str(balance.credits_available) == credits:
            return balance
    raise AssertionError(f"the stream ended before credits_available {credits}")


def test_a_retroactive_rise_fires_at_the_publish_a_rollback_clears_and_a_second_rise_fires_again(
    server: ServerProcess,
) -> None:
    """Card `rx` (unit at 1 per 1,000); 10 credits; LOW_BALANCE below 5, SPEND_THRESHOLD at 8. 4,000 units this hour:
    charges 4, available 6, nothing fires. v2 at 2 per 1,000 from this hour re-rates them: charges 8, available 2,
    both fire (at the publish's re-rating, once). A rollback to v1 from this hour: charges 4, available 6, both
    clear. A rollback to v2: both fire a second time, with the same amounts."""
    with server.client() as client:
        pricing = client.pricing
        pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="rx", name="rx", pricing_unit="credits"))
        for version, price in ((1, "1"), (2, "2")):
            rates = [pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price=price, per_units="1000"))]
            pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="rx", upsert_rates=rates))
            if version == 1:
                pricing.PublishVersion(
                    pricing_pb2.PublishVersionRequest(rate_card_id="rx", version=1, effective_from=ts(JAN))
                )
        open_contract(client, "rx", "rx-c", JAN, rate_card_id="rx")
        grant(client, "rx-c", "rx-g", "10")
        low = rule(client, alerts_pb2.LOW_BALANCE, "rx", "5")
        spend = rule(client, alerts_pb2.SPEND_THRESHOLD, "rx", "8")
        hour = this_hour_ms()
        use(client, "rx", "rx-1", 4000, max(hour, now_ms() - 1000))
        assert (available(client, "rx"), charges(client, "rx")) == ("6", "4")
        pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id="rx", version=2, effective_from=ts(hour)))
        assert (available(client, "rx"), charges(client, "rx")) == ("2", "8")
        pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id="rx", to_version=1, effective_from=ts(hour))
        )
        assert (available(client, "rx"), charges(client, "rx")) == ("6", "4")
        pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id="rx", to_version=2, effective_from=ts(hour))
        )
        assert (available(client, "rx"), charges(client, "rx")) == ("2", "8")
        marker(client, "rx-m1")
        seen = alerts_until(client, "rx-m1")
        fired = [
            (low, "LOW_BALANCE", {"credits_available": "2", "threshold": "5"}),
            (spend, "SPEND_THRESHOLD", {"period_charges": "8", "threshold": "8"}),
        ]
        assert of(seen, "rx") == fired + fired
        mine = [a for a in seen if a.customer_id == "rx"]
        assert mine[0].journal_seq == mine[1].journal_seq < mine[2].journal_seq == mine[3].journal_seq


def test_after_kill_9_the_same_alerts_are_served_and_none_fires_twice(server: ServerProcess) -> None:
    """The alerts so far, read again after kill -9, are the same (seqs, rules, times, details, journal records). A
    further change to each customer fires nothing again: hx (0 available, LOW_BALANCE still holding), tx (a hold
    leaving 9), rx (charges 8.002, available 1.998: both rules still holding)."""
    with server.client() as client:
        contract_id = customer(client, "dx", "USD", "1")
        grant(client, contract_id, "dx-g", "10")
        low = rule(client, alerts_pb2.LOW_BALANCE, "dx", "5")
        expired = rule(client, alerts_pb2.RESERVATION_EXPIRED, "dx")
        hold(client, "dx", "dx-r1", 6000, ttl_s=3)  # 4 available: LOW_BALANCE fires; it expires around the restart
        marker(client, "kx-m0")
        before = alerts_until(client, "kx-m0")
    server.kill9()
    server.restart()
    with server.client() as client:
        again = alerts_until(client, "kx-m0")
        assert again == before
        wait_for(lambda: available(client, "dx") == "10", timeout_s=30)
        # 0.000000000001 more: LOW_BALANCE still holds (no new crossing); CREDITS_EXHAUSTED clears, firing nothing.
        grant(client, "hx-c", "hx-g0", "0.000000000001")
        hold(client, "tx", "tx-r2", 1000)  # 10 - 1 = 9: above every threshold
        use(client, "rx", "rx-2", 1, now_ms())  # 0.002 more: LOW_BALANCE and SPEND_THRESHOLD still hold
        marker(client, "kx-m1")
        after = alerts_until(client, "kx-m1", before[-1].seq)
        assert of(after, "hx") == [] and of(after, "tx") == [] and of(after, "rx") == []
        assert of(before + after, "dx") == [
            (low, "LOW_BALANCE", {"credits_available": "4", "threshold": "5"}),
            (expired, "RESERVATION_EXPIRED", {"reservation_id": "dx-r1", "released": "6"}),
        ]


def test_a_watcher_gets_alerts_of_holds_expiries_and_re_ratings_as_they_commit_with_no_later_change(
    server: ServerProcess,
) -> None:
    """WatchAlerts sends each new alert as it is committed: a watcher waiting gets, with nothing else happening after
    each, LOW_BALANCE fired by a hold (10 - 6 = 4 < 5), RESERVATION_EXPIRED and nothing else by its expiry (the
    clock's record), and SPEND_THRESHOLD fired by a retroactive rollback (card rx back to v2 from this hour: 3,000
    units cost 6 >= 5) at the record completing its re-rating."""
    with server.client() as client:
        marker(client, "lx-m0")
        last = alerts_until(client, "lx-m0")[-1].seq
        contract_id = customer(client, "lx", "USD", "1")
        grant(client, contract_id, "lx-g", "10")
        low = rule(client, alerts_pb2.LOW_BALANCE, "lx", "5")
        expired = rule(client, alerts_pb2.RESERVATION_EXPIRED, "lx")
        stream = iter(
            client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=last), timeout=STREAM_TIMEOUT_S)
        )
        hold(client, "lx", "lx-r1", 6000, ttl_s=1)
        first = next(stream)
        assert (first.rule_id, first.customer_id, dict(first.details)) == (
            low,
            "lx",
            {"credits_available": "4", "threshold": "5"},
        )
        second = next(stream)
        assert (second.rule_id, second.details["reservation_id"], second.details["released"]) == (
            expired,
            "lx-r1",
            "6",
        )
        assert second.journal_seq > first.journal_seq
        open_contract(client, "ly", "ly-c", JAN, rate_card_id="rx")
        spend = rule(client, alerts_pb2.SPEND_THRESHOLD, "ly", "5")
        hour = this_hour_ms()
        pricing = client.pricing
        pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id="rx", to_version=1, effective_from=ts(hour))
        )
        use(client, "ly", "ly-1", 3000, max(hour, now_ms() - 1000))  # 3 < 5
        pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id="rx", to_version=2, effective_from=ts(hour))
        )
        third = next(stream)
        while third.customer_id != "ly":  # rx's rules fire again too (cleared by the first rollback)
            third = next(stream)
        assert (third.rule_id, third.details["period_charges"]) == (spend, "6")


def test_a_grant_expiring_under_a_hold_is_seen_when_the_hold_ends_once(server: ServerProcess) -> None:
    """10 credits expiring in 6 s; CREDITS_EXHAUSTED, LOW_BALANCE below 5. A hold of 2 (available 8) is out when the
    grant expires: WatchBalance shows 0 available (2 remaining, all held) at the expiry. When the hold is released
    (nothing comes back: its grant has expired), both rules have fired once, with credits_available 0."""
    with server.client() as client:
        contract_id = customer(client, "ex", "USD", "1")
        ends_ms = now_ms() + 6000  # a slow setup on a loaded machine still ends before it
        made = contracts_pb2.Grant(
            id="ex-g",
            contract_id=contract_id,
            kind=contracts_pb2.PREPAID,
            amount="10",
            paid_amount="10",
            expires_at=ts(ends_ms),
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        low = rule(client, alerts_pb2.LOW_BALANCE, "ex", "5")
        out = rule(client, alerts_pb2.CREDITS_EXHAUSTED, "ex")
        stream = iter(
            client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="ex"), timeout=STREAM_TIMEOUT_S)
        )
        hold(client, "ex", "ex-r1", 2000)
        until(stream, "8")
        shown = until(stream, "0")
        assert (shown.credits_remaining, shown.credits_held) == ("2", "2")
        client.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id="ex", reservation_id="ex-r1")
        )
        assert available(client, "ex") == "0"
        marker(client, "ex-m1")
        seen = alerts_until(client, "ex-m1")
        assert of(seen, "ex") == [
            (low, "LOW_BALANCE", {"credits_available": "0", "threshold": "5"}),
            (out, "CREDITS_EXHAUSTED", {"credits_available": "0"}),
        ]


def test_a_falling_gauge_that_takes_charges_below_a_spend_threshold_clears_it(server: ServerProcess) -> None:
    """Card `gx`: product `lvl` (LATEST of `level`) at 1 a unit; SPEND_THRESHOLD at 5. Level 6: charges 6, it fires.
    Level 2: charges 2 (4 given back, no re-rating), below 5: cleared, as the docs now say (they said only a
    re-rating clears it). Level 7: charges 7 reach it again, and it fires a second time that period, with 7."""
    with server.client() as client:
        pricing = client.pricing
        product = pricing_pb2.Product(id="lvl", event_type="gauge", aggregation=pricing_pb2.LATEST, value_key="level")
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="gx", name="gx", pricing_unit="credits"))
        rates = [pricing_pb2.Rate(product_id="lvl", unit=pricing_pb2.UnitPrice(price="1"))]
        pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="gx", upsert_rates=rates))
        pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id="gx", version=1, effective_from=ts(JAN)))
        open_contract(client, "gx", "gx-c", JAN, rate_card_id="gx")
        spend = rule(client, alerts_pb2.SPEND_THRESHOLD, "gx", "5")
        start = now_ms() - 10_000
        for n, level in enumerate((6, 2, 7)):
            event = usage_pb2.UsageEvent(
                transaction_id=f"gx-{n}", customer_id="gx", event_type="gauge", timestamp_ms=start + n * 1000
            )
            event.values["level"] = level
            assert client.ingest_batch([event], f"gx-{n}").accepted == 1
            assert charges(client, "gx") == str(level)
        marker(client, "gx-m1")
        seen = alerts_until(client, "gx-m1")
        assert [d["period_charges"] for r, _, d in of(seen, "gx") if r == spend] == ["6", "7"]


def test_event_alerts_carry_the_period_start_and_the_instant_and_the_time_of_their_record(
    server: ServerProcess,
) -> None:
    """A top-up bought by a hold (5 credits, below 3 to 10, a hold of 4: 9 bought) and that hold's expiry (a second
    hold of 8.5 leaves 1.5, below LOW_BALANCE's 2, the cap of one purchase reached): each event alert's
    period_start_ms is the balance's period_start, and at_ms the instant of the change, which is the alert's time."""
    with server.client() as client:
        contract_id = customer(client, "px", "USD", "1")
        grant(client, contract_id, "px-g", "5")
        policy = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.5", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        bought = rule(client, alerts_pb2.TOP_UP_EXECUTED, "px")
        expired = rule(client, alerts_pb2.RESERVATION_EXPIRED, "px")
        low = rule(client, alerts_pb2.LOW_BALANCE, "px", "2")
        before_ms = now_ms()
        hold(client, "px", "px-r1", 4000, ttl_s=3)  # 14 remaining, 4 held: 10 available after the top-up
        hold(client, "px", "px-r2", 8500)  # 1.5 available, no top-up (the cap): LOW_BALANCE fires (1.5 < 2)
        wait_for(lambda: available(client, "px") == "5.5", timeout_s=30)  # px-r1 expired
        # GetBalance shows px-r1 expired from its TTL on, before the clock's AdvanceClock records it; that record's
        # time is the alert's at_ms, so the upper bound is read once the alert itself is committed.
        committed(client, expired)
        after_ms = now_ms()
        balance = client.get_balance("px")
        start_ms = balance.period_start.ToMilliseconds()
        marker(client, "px-m1")
        mine = [a for a in alerts_until(client, "px-m1") if a.customer_id == "px"]
        assert [a.rule_id for a in mine] == [bought, low, expired]
        assert mine[1].details["credits_available"] == "1.5"
        assert mine[2].details["released"] == "4"
        for alert in (mine[0], mine[2]):
            assert alert.details["period_start_ms"] == str(start_ms)
            assert before_ms <= int(alert.details["at_ms"]) <= after_ms
            assert alert.time.ToMilliseconds() == int(alert.details["at_ms"])


def test_watch_balance_sends_the_balance_a_retroactive_rollback_changes(server: ServerProcess) -> None:
    """Card rx is at v2 (2 per 1,000) from this hour. 1,000 units this hour: charges 2, available 8 of 10. A rollback
    to v1 from this hour re-rates them: a watcher gets charges 1, available 9, with no other change."""
    with server.client() as client:
        open_contract(client, "wb", "wb-c", JAN, rate_card_id="rx")
        grant(client, "wb-c", "wb-g", "10")
        hour = this_hour_ms()
        use(client, "wb", "wb-1", 1000, max(hour, now_ms() - 1000))
        stream = iter(
            client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id="wb"), timeout=STREAM_TIMEOUT_S)
        )
        first = next(stream)
        assert (first.credits_available, first.period_charges) == ("8", "2")
        client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id="rx", to_version=1, effective_from=ts(hour))
        )
        assert until(stream, "9").period_charges == "1"


def test_a_kill_9_right_after_a_retroactive_rise_fires_its_alerts_once(server: ServerProcess) -> None:
    """Card `kz` (unit at 1 per 1,000); 10 credits; LOW_BALANCE below 5, SPEND_THRESHOLD at 8, CREDITS_EXHAUSTED.
    4,000 units this hour (charges 4, available 6). v2 at 2.5 per 1,000 from this hour, and kill -9 as soon as it
    is answered (its re-rating complete or not): after the restart charges are 10 and available 0, and LOW_BALANCE,
    SPEND_THRESHOLD and CREDITS_EXHAUSTED have each fired once, in one record."""
    with server.client() as client:
        pricing = client.pricing
        pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="kz", name="kz", pricing_unit="credits"))
        for price in ("1", "2.5"):
            rates = [pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price=price, per_units="1000"))]
            pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="kz", upsert_rates=rates))
        pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id="kz", version=1, effective_from=ts(JAN)))
        open_contract(client, "kz", "kz-c", JAN, rate_card_id="kz")
        grant(client, "kz-c", "kz-g", "10")
        low = rule(client, alerts_pb2.LOW_BALANCE, "kz", "5")
        spend = rule(client, alerts_pb2.SPEND_THRESHOLD, "kz", "8")
        out = rule(client, alerts_pb2.CREDITS_EXHAUSTED, "kz")
        hour = this_hour_ms()
        use(client, "kz", "kz-1", 4000, max(hour, now_ms() - 1000))
        pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id="kz", version=2, effective_from=ts(hour)))
    server.kill9()
    server.restart()
    with server.client() as client:
        wait_for(lambda: charges(client, "kz") == "10", timeout_s=30)
        assert available(client, "kz") == "0"
        marker(client, "kz-m1")
        mine = [a for a in alerts_until(client, "kz-m1") if a.customer_id == "kz"]
        assert of(mine, "kz") == [
            (low, "LOW_BALANCE", {"credits_available": "0", "threshold": "5"}),
            (spend, "SPEND_THRESHOLD", {"period_charges": "10", "threshold": "8"}),
            (out, "CREDITS_EXHAUSTED", {"credits_available": "0"}),
        ]
        assert len({a.journal_seq for a in mine}) == 1


def test_two_holds_of_one_authorize_batch_that_buy_two_top_ups_fire_two_alerts(server: ServerProcess) -> None:
    """5 credits, top-up below 3 to 10 (twice a period). One AuthorizeBatches message holds 4 (1 left: 9 bought,
    10 available) then 8 (2 left: 8 bought, 10 available): two TOP_UP_EXECUTED alerts, credits 9 then 8, distinct
    grants, one record."""
    with server.client() as client:
        contract_id = customer(client, "bx", "USD", "1")
        grant(client, contract_id, "bx-g", "5")
        policy = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.5", max_per_period=2)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        bought = rule(client, alerts_pb2.TOP_UP_EXECUTED, "bx")
        requests = []
        for n, units in enumerate((4000, 8000)):
            request = balance_pb2.AuthorizeRequest(
                request_id=f"bx-{n}", customer_id="bx", event_type="unit", dimensions={"k": "a"}, reserve=True
            )
            request.values["n"] = units
            requests.append(request)
        [result] = list(client.balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)])))
        assert [r.allowed for r in result.responses] == [True, True]
        assert available(client, "bx") == "10"
        marker(client, "bx-m1")
        mine = [a for a in alerts_until(client, "bx-m1") if a.customer_id == "bx"]
        assert [(a.rule_id, a.details["credits"]) for a in mine] == [(bought, "9"), (bought, "8")]
        assert mine[0].details["grant_id"] != mine[1].details["grant_id"]
        assert mine[0].journal_seq == mine[1].journal_seq


def test_a_grant_expiring_by_the_clock_fires_low_balance_and_buys_no_top_up(server: ServerProcess) -> None:
    """1 credit that never expires and 5 expiring in 6 s; top-up below 3 to 10; LOW_BALANCE below 2 and
    TOP_UP_EXECUTED. At the expiry available is 1 (below 2: LOW_BALANCE fires, at the clock's record), and no top-up
    is bought: only a rated event or a hold buys one (README "Automatic top-up")."""
    with server.client() as client:
        contract_id = customer(client, "gy", "USD", "1")
        grant(client, contract_id, "gy-g1", "1")
        made = contracts_pb2.Grant(
            id="gy-g5",
            contract_id=contract_id,
            kind=contracts_pb2.PREPAID,
            amount="5",
            paid_amount="5",
            expires_at=ts(now_ms() + 6000),  # a slow setup still ends before it
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))
        policy = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.5", max_per_period=2)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        low = rule(client, alerts_pb2.LOW_BALANCE, "gy", "2")
        rule(client, alerts_pb2.TOP_UP_EXECUTED, "gy")
        wait_for(lambda: available(client, "gy") == "1", timeout_s=30)
        marker(client, "gy-m1")
        seen = alerts_until(client, "gy-m1")
        assert of(seen, "gy") == [(low, "LOW_BALANCE", {"credits_available": "1", "threshold": "2"})]
        assert available(client, "gy") == "1"


def test_a_hold_released_after_its_ttl_fires_reservation_expired_once_whoever_records_the_expiry(
    server: ServerProcess,
) -> None:
    """Holds of 2 with a TTL of 1 ms, each released at once: the release lands after the instant the hold ended, so
    it finds it expired (FAILED_PRECONDITION) whether the server's clock recorded the expiry first or the release
    records it. Either way each hold fires RESERVATION_EXPIRED exactly once (released 2), and 10 are available."""
    with server.client() as client:
        contract_id = customer(client, "rz", "USD", "1")
        grant(client, contract_id, "rz-g", "10")
        expired = rule(client, alerts_pb2.RESERVATION_EXPIRED, "rz")
        for n in range(5):
            request = balance_pb2.AuthorizeRequest(
                customer_id="rz",
                event_type="unit",
                dimensions={"k": "a"},
                reserve=True,
                reservation_id=f"rz-r{n}",
                reservation_ttl=Duration(nanos=1_000_000),
            )
            request.values["n"] = 2000
            assert client.balance.Authorize(request).allowed
            time.sleep(0.002)  # past the 1 ms: the hold has ended however fast the release comes
            late = balance_pb2.ReleaseReservationRequest(customer_id="rz", reservation_id=f"rz-r{n}")
            code, _ = refusal(functools.partial(client.balance.ReleaseReservation, late))
            assert code == grpc.StatusCode.FAILED_PRECONDITION
        wait_for(lambda: available(client, "rz") == "10", timeout_s=30)
        marker(client, "rz-m1")
        seen = alerts_until(client, "rz-m1")
        assert sorted(of(seen, "rz"), key=lambda a: a[2]["reservation_id"]) == [
            (expired, "RESERVATION_EXPIRED", {"reservation_id": f"rz-r{n}", "released": "2"}) for n in range(5)
        ]


def test_spend_threshold_fires_once_a_period_and_again_in_the_next_after_close_period(server: ServerProcess) -> None:
    """A contract whose period ends 3 s from now (monthly, anchored a year back); SPEND_THRESHOLD at 2. 3 credits
    of usage: it fires (charges 3, the old period's start). More usage in that period fires nothing. After the end,
    ClosePeriod of the old period evaluates the customer: the new period's charges are 0, so the rule is cleared
    (no alert). 2 credits in the new period reach it: it fires again, with charges 2 and the new period's start."""
    with server.client() as client:
        boundary = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        anchor_ms = int(boundary.replace(year=boundary.year - 1).timestamp() * 1000)
        boundary_ms = int(boundary.timestamp() * 1000)
        customer(client, "sp", "USD", "1", start_ms=anchor_ms)
        spend = rule(client, alerts_pb2.SPEND_THRESHOLD, "sp", "2")
        use(client, "sp", "sp-1", 3000, now_ms())
        old_start_ms = client.get_balance("sp").period_start.ToMilliseconds()
        assert client.get_balance("sp").period_end.ToMilliseconds() == boundary_ms
        use(client, "sp", "sp-2", 1000, now_ms())
        wait_for(lambda: now_ms() > boundary_ms + 100, timeout_s=30)
        client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="sp", period_start=ts(old_start_ms)))
        use(client, "sp", "sp-3", 2000, now_ms())
        assert charges(client, "sp") == "2"
        marker(client, "sp-m1")
        seen = [a for a in alerts_until(client, "sp-m1") if a.customer_id == "sp"]
        assert [(a.rule_id, a.details["period_charges"], a.details["period_start_ms"]) for a in seen] == [
            (spend, "3", str(old_start_ms)),
            (spend, "2", str(boundary_ms)),
        ]
