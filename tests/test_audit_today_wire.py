"""README "What the server does today" and "Watching balances and alerts" audited over the wire, claim by claim,
against real server processes: alert rules fire as the table says (amounts computed by hand from the demo prices:
a complex GPT-4 summary costs 5 credits, a simple gpt-4o-mini one 0.5), a key restricted to one customer watches
that customer's alerts, and the audit log records the hour a publish or rollback without `effective_from` took
effect. The tests of tests/test_server_watch.py and the other tests/test_audit_*_wire.py files are not repeated.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import grpc
import pytest
from google.protobuf import duration_pb2
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp
from tests.demo_usage import ACME, CHEAP, COMPLEX, demo_batch
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_server_auth import BETA, Keys, add_beta, code_of

HOUR_MS = 3_600_000
STREAM_TIMEOUT_S = 20.0
GAMMA = "gamma"


def create_alert(client: TariffClient, request: alerts_pb2.CreateAlertRequest) -> alerts_pb2.AlertRule:
    rule: alerts_pb2.AlertRule = client.alerts.CreateAlert(request)
    return rule


def spend(
    client: TariffClient, batch_id: str, customer: str, count: int = 1, dimensions: dict[str, str] = COMPLEX
) -> None:
    ack = client.usage.IngestUsageBatch(demo_batch(batch_id, batch_id, count, customer=customer, dimensions=dimensions))
    assert ack.accepted == count, ack


def grant(client: TariffClient, grant_id: str, customer: str, amount: str) -> None:
    promo = contracts_pb2.Grant(id=grant_id, customer_id=customer, kind=contracts_pb2.PROMOTIONAL, amount=amount)
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=promo))


def watch_alerts(client: TariffClient, after_seq: int) -> Iterator[alerts_pb2.Alert]:
    request = alerts_pb2.WatchAlertsRequest(after_seq=after_seq)
    return iter(client.alerts.WatchAlerts(request, timeout=STREAM_TIMEOUT_S))


def summary(alert: alerts_pb2.Alert) -> tuple[int, str, str, dict[str, str]]:
    return alert.seq, alerts_pb2.AlertType.Name(alert.type), alert.customer_id, dict(alert.details)


# ---------------------------------------------------------------------------------------------------------------
# Alert rules: when each type fires, once per crossing, SPEND_THRESHOLD once a period, nothing without grants


def test_alert_types_fire_on_the_crossing_once_and_re_arm_only_once_cleared(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        add_beta(client)  # 100 prepaid credits
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=GAMMA, name="Gamma, no grants"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(id="gamma-2026", customer_id=GAMMA, rate_card_id="ai-credits")
        )
        spend(client, "beta-before", BETA, count=19)  # 100 - 19 x 5 = 5 available, 95 charged
        # Created while beta is already below 10: creating a rule fires nothing.
        low = create_alert(
            client, alerts_pb2.CreateAlertRequest(customer_id=BETA, type=alerts_pb2.LOW_BALANCE, threshold="10")
        )
        exhausted = create_alert(
            client, alerts_pb2.CreateAlertRequest(customer_id=BETA, type=alerts_pb2.CREDITS_EXHAUSTED)
        )
        spent = create_alert(
            client, alerts_pb2.CreateAlertRequest(customer_id=BETA, type=alerts_pb2.SPEND_THRESHOLD, threshold="99.5")
        )
        # A customer holding no grant has 0 available but is never LOW_BALANCE nor CREDITS_EXHAUSTED.
        create_alert(
            client, alerts_pb2.CreateAlertRequest(customer_id=GAMMA, type=alerts_pb2.LOW_BALANCE, threshold="1")
        )
        create_alert(client, alerts_pb2.CreateAlertRequest(customer_id=GAMMA, type=alerts_pb2.CREDITS_EXHAUSTED))
        spend(client, "gamma-1", GAMMA)  # 5 of overage, no grant: nothing fires
        stream = watch_alerts(client, 0)

        spend(client, "beta-1", BETA, dimensions=CHEAP)  # 4.5 available (below 10 at its first evaluation), 95.5
        first = next(stream)
        assert summary(first) == (1, "LOW_BALANCE", BETA, {"credits_available": "4.5", "threshold": "10"}), first
        assert first.rule_id == low.id
        spend(client, "beta-2", BETA, count=8, dimensions=CHEAP)  # 0.5 available, 99.5 charged: SPEND only
        assert summary(next(stream)) == (
            2,
            "SPEND_THRESHOLD",
            BETA,
            {"period_charges": "99.5", "threshold": "99.5", "period_start_ms": period_start_ms(client, BETA)},
        )
        spend(client, "beta-3", BETA, dimensions=CHEAP)  # 0 available: CREDITS_EXHAUSTED (<= 0)
        third = next(stream)
        assert (summary(third), third.rule_id) == (
            (3, "CREDITS_EXHAUSTED", BETA, {"credits_available": "0"}),
            exhausted.id,
        )
        spend(client, "beta-4", BETA)  # 5 more of overage: every condition still holds, nothing new
        grant(client, "beta-lift", BETA, "2")  # 2 available: CREDITS_EXHAUSTED clears; still below 10
        spend(client, "beta-5", BETA, count=4, dimensions=CHEAP)  # 0 again: CREDITS_EXHAUSTED re-armed, fires
        fourth = next(stream)
        assert (summary(fourth), fourth.rule_id) == (
            (4, "CREDITS_EXHAUSTED", BETA, {"credits_available": "0"}),
            exhausted.id,
        )
        # Nothing else was fired: the newest alert is seq 4 (5 is past it), LOW_BALANCE and SPEND_THRESHOLD once.
        code, _ = code_of(lambda: next(watch_alerts(client, 5)))
        assert code == grpc.StatusCode.OUT_OF_RANGE
        assert {r.id for r in client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules} >= {
            low.id,
            exhausted.id,
            spent.id,
        }


def period_start_ms(client: TariffClient, customer_id: str) -> str:
    """The customer's current period start in ms, as a SPEND_THRESHOLD alert reports it."""
    return str(client.get_balance(customer_id).period_start.ToMilliseconds())


# ---------------------------------------------------------------------------------------------------------------
# A key restricted to one customer watches that customer's alerts (as it watches its balance)

KEYS: dict[str, tuple[str, list[str] | None]] = {
    "ops-admin": ("admin", None),
    "acme-gateway": ("ingest", [ACME]),
    "acme-portal": ("read", [ACME]),
}


@pytest.fixture
def keyed_server(server_factory: ServerFactory, tmp_path_factory: pytest.TempPathFactory) -> tuple[ServerProcess, Keys]:
    keys = Keys(tmp_path_factory.mktemp("today-keys") / "keys.json", KEYS)
    server = server_factory(demo=True, name="today-keyed", extra_args=keys.args, api_key=keys.key["ops-admin"])
    return server, keys


def test_a_restricted_key_lists_and_watches_only_its_customers_rules_and_alerts(
    keyed_server: tuple[ServerProcess, Keys],
) -> None:
    server, keys = keyed_server
    with server.client() as admin:
        add_beta(admin)
        acme_low = create_alert(
            admin, alerts_pb2.CreateAlertRequest(customer_id=ACME, type=alerts_pb2.LOW_BALANCE, threshold="49999")
        )
        create_alert(  # beta's: never listed nor sent to acme's keys
            admin, alerts_pb2.CreateAlertRequest(customer_id=BETA, type=alerts_pb2.LOW_BALANCE, threshold="99")
        )
        everyone = create_alert(admin, alerts_pb2.CreateAlertRequest(all=True, type=alerts_pb2.CREDITS_EXHAUSTED))
        spend(admin, "beta-a", BETA)  # beta 95 available: LOW_BALANCE seq 1 (beta's)
        spend(admin, "acme-a", ACME)  # acme 49995: LOW_BALANCE seq 2 (acme's)
        spend(admin, "beta-b", BETA, count=19)  # beta 0: CREDITS_EXHAUSTED seq 3 (beta's)
        assert [summary(next(watch_alerts(admin, seq)))[:3] for seq in (0, 1, 2)] == [
            (1, "LOW_BALANCE", BETA),
            (2, "LOW_BALANCE", ACME),
            (3, "CREDITS_EXHAUSTED", BETA),
        ]
    with server.client(api_key=keys.key["acme-portal"]) as portal:
        rules = portal.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest())
        assert sorted(r.id for r in rules.rules) == sorted([acme_low.id, everyone.id]), rules
        stream = watch_alerts(portal, 0)
        own = next(stream)
        assert summary(own) == (2, "LOW_BALANCE", ACME, {"credits_available": "49995", "threshold": "49999"})
        with server.client() as admin:
            spend(admin, "beta-c", BETA)  # beta's overage: nothing new for beta either
            grant(admin, "acme-lift", ACME, "10")  # acme 50005, not below 49999: LOW_BALANCE clears
            spend(admin, "acme-b", ACME, count=3)  # acme 49990: LOW_BALANCE again, seq 4
            spend(admin, "beta-d", BETA)  # nothing new
            grant(admin, "beta-lift", BETA, "1")  # beta 1: its CREDITS_EXHAUSTED clears
            spend(admin, "beta-e", BETA)  # beta 0: CREDITS_EXHAUSTED again, seq 5 (beta's)
            spend(admin, "acme-c", ACME)  # acme 49985: still below, nothing new
        again = next(stream)
        assert summary(again) == (4, "LOW_BALANCE", ACME, {"credits_available": "49990", "threshold": "49999"})
    with server.client(api_key=keys.key["acme-gateway"]) as gateway:
        rules = gateway.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=1))
        assert [r.id for r in rules.rules] == [min(acme_low.id, everyone.id)], rules
        # Resumes after the seq it last received; beta's seq 5 is skipped, so acme's newest is the last sent.
        resumed = watch_alerts(gateway, own.seq)
        assert next(resumed) == again
        with server.client() as admin:
            grant(admin, "acme-lift-2", ACME, "20")  # acme 50005: LOW_BALANCE clears
            spend(admin, "acme-d", ACME, count=3)  # acme 49990: LOW_BALANCE, seq 6
        assert summary(next(resumed)) == (6, "LOW_BALANCE", ACME, {"credits_available": "49990", "threshold": "49999"})
    with server.client(api_key=keys.key["acme-portal"]) as portal:
        code, details = code_of(
            lambda: portal.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(all=True, type=alerts_pb2.TOP_UP_EXECUTED))
        )
        assert code == grpc.StatusCode.PERMISSION_DENIED, details


# ---------------------------------------------------------------------------------------------------------------
# The audit log: a publish or rollback without effective_from records the hour it took effect


def test_publish_and_rollback_without_effective_from_audit_the_hour_they_took_effect(
    demo_server: ServerProcess,
) -> None:
    with demo_server.client() as client:
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="ai-credits", based_on_version=1, set_parameters={"gpt4_factor": "2"}
            )
        )
        before = now_ms()
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="ai-credits", version=draft.version)
        )
        rolled_back = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id="ai-credits", to_version=1)
        )
        after = now_ms()
        entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target="rate_card/ai-credits")).entries
    effective = {
        answer.version.version: answer.version.effective_from.ToMilliseconds() for answer in (published, rolled_back)
    }
    # The hour the call was applied in, as README says of an effective_from left out.
    for number, effective_ms in effective.items():
        assert before - before % HOUR_MS <= effective_ms <= after - after % HOUR_MS, (number, effective_ms)
    audited = {
        entry.action: json.loads(entry.diff)["effective_from_ms"]
        for entry in entries
        if entry.target != "rate_card/ai-credits/version/1" and entry.action in ("PublishVersion", "RollbackRateCard")
    }
    assert audited == {
        "PublishVersion": effective[draft.version],
        "RollbackRateCard": effective[rolled_back.version.version],
    }, entries


# ---------------------------------------------------------------------------------------------------------------
# Event alerts: TOP_UP_EXECUTED and RESERVATION_EXPIRED, once per event, amounts in the pricing unit


def test_event_alerts_fire_once_per_event_with_amounts_in_the_pricing_unit(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        topped = create_alert(client, alerts_pb2.CreateAlertRequest(customer_id=ACME, type=alerts_pb2.TOP_UP_EXECUTED))
        expired = create_alert(client, alerts_pb2.CreateAlertRequest(all=True, type=alerts_pb2.RESERVATION_EXPIRED))
        policy = contracts_pb2.TopUpPolicy(
            threshold="49999", recharge_to="50000", price_per_credit="0.9", max_per_period=2
        )
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="acme-2026", top_up=policy))
        stream = watch_alerts(client, 0)
        spend(client, "topped-1", ACME, dimensions=CHEAP)  # 49999.5: not below 49999, no purchase
        spend(client, "topped-2", ACME)  # 49994.5 < 49999: buys 50000 - 49994.5 = 5.5 credits
        bought = next(stream)
        assert (bought.seq, bought.type, bought.rule_id, bought.customer_id) == (
            1,
            alerts_pb2.TOP_UP_EXECUTED,
            topped.id,
            ACME,
        )
        assert bought.details["credits"] == "5.5", bought
        assert bought.details["grant_id"].startswith("top-up-") and "_picos" not in str(bought), bought
        assert client.get_balance(ACME).credits_available == "50000"
        hold = client.balance.Authorize(
            balance_pb2.AuthorizeRequest(
                customer_id=ACME,
                event_type="ai_action",
                dimensions=COMPLEX,
                reserve=True,
                reservation_id="gw-1",
                reservation_ttl=duration_pb2.Duration(nanos=200_000_000),
            )
        )
        assert hold.allowed, hold
        # The hold leaves 50000 - 5 = 49995 available, below 49999: the second (and last) purchase, 5 credits.
        again = next(stream)
        assert (again.seq, again.type, again.details["credits"]) == (2, alerts_pb2.TOP_UP_EXECUTED, "5"), again
        lapsed = next(stream)  # the clock driver expires the hold 200 ms on
        assert (lapsed.seq, lapsed.type, lapsed.rule_id, lapsed.customer_id) == (
            3,
            alerts_pb2.RESERVATION_EXPIRED,
            expired.id,
            ACME,
        )
        assert (lapsed.details["reservation_id"], lapsed.details["released"]) == ("gw-1", "5"), lapsed
        assert "5000000000000" not in lapsed.message, lapsed.message
        assert client.get_balance(ACME).credits_available == "50005"  # the second purchase, the hold given back


# ---------------------------------------------------------------------------------------------------------------
# A contract switch mid-period: each contract keeps its own monthly periods; the credit is the customer's

DAY_MS = 24 * HOUR_MS
SWITCHER = "switcher"


def usage_at(transaction_id: str, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=SWITCHER,
        event_type="ai_action",
        timestamp_ms=at_ms,
        dimensions=COMPLEX,
    )


def test_a_contract_switch_mid_period_keeps_each_contracts_periods_and_the_customers_credit(
    demo_server: ServerProcess,
) -> None:
    now = now_ms()  # read once: two reads straddling an hour gave an instant off the hour
    hour = now - now % HOUR_MS
    switch_ms = hour - 2 * DAY_MS
    with demo_server.client() as client:
        # The demo's prices from 60 days back (version 1 is in force from the 1st only): a copy, same prices.
        copy = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="ai-credits", based_on_version=1)
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="ai-credits", version=copy.version, effective_from=timestamp(hour - 60 * DAY_MS)
            )
        )
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=SWITCHER, name="Switcher"))
        for contract_id, starting_at, ending_before in (
            ("switcher-old", hour - 40 * DAY_MS, switch_ms),
            ("switcher-new", switch_ms, None),
        ):
            request = contracts_pb2.CreateContractRequest(
                id=contract_id, customer_id=SWITCHER, rate_card_id="ai-credits", starting_at=timestamp(starting_at)
            )
            if ending_before is not None:
                request.ending_before.CopyFrom(timestamp(ending_before))
            client.contracts.CreateContract(request)
        create_alert(
            client, alerts_pb2.CreateAlertRequest(customer_id=SWITCHER, type=alerts_pb2.SPEND_THRESHOLD, threshold="5")
        )
        stream = watch_alerts(client, 0)
        old_usage = usage_pb2.UsageBatch(batch_id="old", events=[usage_at("old-1", switch_ms - HOUR_MS)])
        assert client.usage.IngestUsageBatch(old_usage).accepted == 1
        # 5 charged in the old contract's last period; the balance is the new contract's period: nothing charged.
        balance = client.get_balance(SWITCHER)
        assert (balance.period_start.ToMilliseconds(), balance.period_charges) == (switch_ms, "0")
        new_usage = usage_pb2.UsageBatch(batch_id="new", events=[usage_at("new-1", switch_ms + HOUR_MS)])
        assert client.usage.IngestUsageBatch(new_usage).accepted == 1
        reached = next(stream)  # SPEND_THRESHOLD counts the new contract's period only: 5, reached by this batch
        assert summary(reached) == (
            1,
            "SPEND_THRESHOLD",
            SWITCHER,
            {"period_charges": "5", "threshold": "5", "period_start_ms": str(switch_ms)},
        )
        old = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=SWITCHER, period_start=timestamp(switch_ms - HOUR_MS))
        )
        new = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=SWITCHER))
        # The old contract's last period keeps its monthly bounds, past the contract's end; each invoice holds its
        # own contract's usage.
        old_start, old_end = old.period_start.ToMilliseconds(), old.period_end.ToMilliseconds()
        assert (old.contract_id, old.subtotal, old.total_due) == ("switcher-old", "5", "5.00")
        assert old_start <= switch_ms - HOUR_MS and old_end > switch_ms and 28 <= (old_end - old_start) // DAY_MS <= 31
        assert (new.contract_id, new.period_start.ToMilliseconds(), new.subtotal) == ("switcher-new", switch_ms, "5")
        code, details = code_of(
            lambda: client.invoices.ClosePeriod(
                invoices_pb2.ClosePeriodRequest(customer_id=SWITCHER, period_start=old.period_start)
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "has not ended" in details, details
        # A grant for the old contract is the customer's credit: it pays usage under the new one too.
        old_grant = contracts_pb2.Grant(
            id="switcher-credit", contract_id="switcher-old", kind=contracts_pb2.PROMOTIONAL, amount="100"
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=old_grant))
        later = usage_pb2.UsageBatch(batch_id="later", events=[usage_at("new-2", switch_ms + 2 * HOUR_MS)])
        assert client.usage.IngestUsageBatch(later).accepted == 1
        balance = client.get_balance(SWITCHER)
        assert (balance.credits_available, balance.period_charges) == ("95", "10")
        assert [(g.grant_id, g.drawn) for g in balance.grants] == [("switcher-credit", "5")]


# ---------------------------------------------------------------------------------------------------------------
# The alert log keeps the newest 10,000 alerts (up to 11,000 between prunes), across a kill -9


def test_the_alert_log_keeps_the_newest_10000_and_refuses_older_seqs_naming_the_oldest_kept(
    server_factory: ServerFactory,
) -> None:
    server = server_factory(demo=True, name="pruned")
    rules, customers = 110, 101  # one batch fires 110 x 101 = 11,110 alerts
    with server.client() as client:
        for index in range(rules):  # every customer's 5 credits reach each threshold, 0.01 to 1.10
            threshold = str(Decimal(index + 1) / 100)
            create_alert(
                client, alerts_pb2.CreateAlertRequest(all=True, type=alerts_pb2.SPEND_THRESHOLD, threshold=threshold)
            )
        for index in range(customers):
            customer_id = f"kept-{index:03}"
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
            client.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(customer_id=customer_id, rate_card_id="ai-credits")
            )
        events = [
            demo_batch("kept", f"kept-{i:03}", 1, customer=f"kept-{i:03}", dimensions=COMPLEX).events[0]
            for i in range(customers)
        ]
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="kept", events=events))
        assert ack.accepted == customers, ack
    # The 11,001st alert pruned the log to the newest 10,000: seqs 1,002 to 11,001, then 11,002 to 11,110 appended.
    for restarted in (False, True):
        if restarted:
            server.kill9()
            server.restart()
        with server.client() as client:
            code, details = code_of(lambda: next(watch_alerts(client, 1000)))
            assert code == grpc.StatusCode.FAILED_PRECONDITION, (restarted, code, details)
            assert "the oldest kept is 1002" in details and "after_seq 1001" in details, details
            assert [next(watch_alerts(client, seq)).seq for seq in (0, 1001, 11_109)] == [1002, 1002, 11_110]
            code, details = code_of(lambda: next(watch_alerts(client, 11_111)))
            assert code == grpc.StatusCode.OUT_OF_RANGE, (restarted, code, details)


def test_list_alert_rules_pages_and_refuses_a_negative_page_size(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        ids = [f"rule-{index}" for index in range(3)]
        for rule_id in ids:
            create_alert(
                client, alerts_pb2.CreateAlertRequest(id=rule_id, customer_id=ACME, type=alerts_pb2.CREDITS_EXHAUSTED)
            )
        first = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=2))
        rest = client.alerts.ListAlertRules(
            alerts_pb2.ListAlertRulesRequest(page_size=2, page_token=first.next_page_token)
        )
        assert ([r.id for r in first.rules], [r.id for r in rest.rules], rest.next_page_token) == (ids[:2], ids[2:], "")
        # page_size is an int32 here: a negative one is refused, not answered with an empty page and no next token.
        with pytest.raises(TariffError) as refused:
            client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=-1))
        assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
        assert [v.field for v in refused.value.field_violations] == ["page_size"], refused.value


# ---------------------------------------------------------------------------------------------------------------
# WatchBalance: open watches count against --max-concurrent-rpcs


def test_open_watches_count_against_max_concurrent_rpcs(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True, name="watch-limit", extra_args=["--max-concurrent-rpcs", "2"])
    with server.client() as client:
        request = balance_pb2.WatchBalanceRequest(customer_id=ACME)
        first = client.balance.WatchBalance(request, timeout=STREAM_TIMEOUT_S)
        assert next(first).credits_available == "50000"  # the first message: the balance now
        spend(client, "limit-1", ACME)  # one place left: the batch is served
        assert next(first).credits_available == "49995"  # then one after the change
        second = client.balance.WatchBalance(request, timeout=STREAM_TIMEOUT_S)
        assert next(second).credits_available == "49995"
        # Two watches open: every further call is refused until one ends.
        for call in (lambda: client.get_balance(ACME), lambda: spend(client, "limit-2", ACME)):
            code, details = code_of(call)
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED, (code, details)
        first.cancel()
        second.cancel()


def test_spend_threshold_fires_once_a_period_unless_a_rerating_lowers_the_charges_below_it(
    demo_server: ServerProcess,
) -> None:
    with demo_server.client() as client:
        create_alert(
            client, alerts_pb2.CreateAlertRequest(customer_id=ACME, type=alerts_pb2.SPEND_THRESHOLD, threshold="10")
        )
        stream = watch_alerts(client, 0)
        spend(client, "spend-1", ACME, count=2)  # 2 x 5 = 10: reached
        assert summary(next(stream))[:2] == (1, "SPEND_THRESHOLD")
        spend(client, "spend-2", ACME)  # 15: still reached, nothing new
        # GPT-4 20% cheaper from the start of version 1: the 3 summaries cost 4 each, 12, still >= 10: nothing new.
        # A second cut to 2 credits each: 6, below 10: cleared.
        in_force = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="ai-credits", version=1))
        for factor in ("2", "1"):
            draft = client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(
                    rate_card_id="ai-credits", based_on_version=1, set_parameters={"gpt4_factor": factor}
                )
            )
            client.pricing.PublishVersion(
                pricing_pb2.PublishVersionRequest(
                    rate_card_id="ai-credits", version=draft.version, effective_from=in_force.effective_from
                )
            )
        assert client.get_balance(ACME).period_charges == "6"
        spend(client, "spend-3", ACME, count=2)  # 6 + 2 x 2 = 10: reached again in the same period
        again = next(stream)
        assert summary(again)[:2] == (2, "SPEND_THRESHOLD") and again.details["period_charges"] == "10", again
