"""WatchBalance and WatchAlerts against a real server process (tests/serverproc.py): the first balance then a new
one after each batch; a watcher that never reads does not hold ingest back and later gets the newest balance;
alerts are delivered once each across a reconnect with after_seq and across kill -9 and a restart."""

from __future__ import annotations

import time
from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient, TariffError, Usage
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2

from tests.serverproc import ServerFactory, ServerProcess
from tests.test_server_auth import Keys, keyed  # noqa: F401 (the fixture)

GPT4_COMPLEX_SUMMARY = {"action": "summary", "data_source": "crm", "model": "gpt-4", "complexity": "complex"}  # 5
STREAM_TIMEOUT_S = 60.0


def _event(transaction_id: str, customer_id: str = "acme") -> Usage:
    return Usage(transaction_id, customer_id, "ai_action", int(time.time() * 1000), GPT4_COMPLEX_SUMMARY)


def _spend(client: TariffClient, *transaction_ids: str, customer_id: str = "acme") -> None:
    """One batch per id, each one event of 5 credits, each acknowledged (durable) before the next."""
    for transaction_id in transaction_ids:
        ack = client.ingest_batch([_event(transaction_id, customer_id)])
        assert ack.accepted == 1, ack


def _watch_balance(client: TariffClient, customer_id: str) -> Iterator[balance_pb2.Balance]:
    request = balance_pb2.WatchBalanceRequest(customer_id=customer_id)
    return iter(client.balance.WatchBalance(request, timeout=STREAM_TIMEOUT_S))


def test_watch_balance_sends_the_balance_then_a_new_one_after_each_batch(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        stream = _watch_balance(client, "acme")
        first = next(stream)
        assert (first.customer_id, first.credits_remaining) == ("acme", "50000")
        _spend(client, "watch-1")
        second = next(stream)
        assert second.credits_remaining == "49995" and second.as_of_seq > first.as_of_seq
        _spend(client, "watch-2")
        third = next(stream)
        assert third.credits_remaining == "49990" and third == client.get_balance("acme")


def test_watch_balance_of_an_unknown_customer_is_not_found(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        with pytest.raises(TariffError) as refused:
            next(_watch_balance(client, "nobody"))
        assert refused.value.code == grpc.StatusCode.NOT_FOUND
        with pytest.raises(TariffError) as missing:
            next(_watch_balance(client, ""))
        assert missing.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_watcher_that_never_reads_does_not_hold_ingest_back(demo_server: ServerProcess) -> None:
    batches = 120
    with demo_server.client() as client:
        # Many grants make each Balance about 15 KB, so a watcher that does not read fills its stream's flow-control
        # window (64 KiB: no BDP probing on its channel) after a few balances; the server must not wait for it.
        for index in range(150):
            grant = contracts_pb2.Grant(
                id=f"slow-{index}", customer_id="acme", kind=contracts_pb2.PROMOTIONAL, amount="1", priority=index + 1
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        watcher_options = [("grpc.enable_http_proxy", 0), ("grpc.http2.bdp_probe", 0)]
        with demo_server.client(channel_options=watcher_options) as watcher_client:
            stream = _watch_balance(watcher_client, "acme")
            first = next(stream)  # the stream is open; from here on nobody reads it until ingest is done
            _spend(client, *(f"slow-watch-{i}" for i in range(batches)))
            final = client.get_balance("acme")
            assert final.period_charges == str(5 * batches)
            received = [first]
            while received[-1].as_of_seq < final.as_of_seq:
                received.append(next(stream))
    assert received[-1] == final
    seqs = [balance.as_of_seq for balance in received]
    assert seqs == sorted(seqs)
    # Coalesced: far fewer balances than batches, the newest one winning.
    assert len(received) < batches // 2, len(received)


# Alerts ------------------------------------------------------------------------------------------------------


def _create_alert(
    client: TariffClient, kind: alerts_pb2.AlertType, threshold: str = "", customer_id: str = ""
) -> alerts_pb2.AlertRule:
    if customer_id:
        request = alerts_pb2.CreateAlertRequest(customer_id=customer_id, type=kind, threshold=threshold)
    else:
        request = alerts_pb2.CreateAlertRequest(all=True, type=kind, threshold=threshold)
    rule: alerts_pb2.AlertRule = client.alerts.CreateAlert(request)
    return rule


def _watch_alerts(client: TariffClient, after_seq: int) -> Iterator[alerts_pb2.Alert]:
    return iter(client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=after_seq), timeout=STREAM_TIMEOUT_S))


def _grant(client: TariffClient, grant_id: str, amount: str) -> None:
    grant = contracts_pb2.Grant(id=grant_id, customer_id="acme", kind=contracts_pb2.PROMOTIONAL, amount=amount)
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def test_alerts_reach_a_watcher_once_each_across_a_reconnect_and_a_kill_9(server_factory: ServerFactory) -> None:
    # Snapshots every 3 records: the restart reads some alerts from a snapshot and replays the rest.
    server = server_factory(demo=True, name="alerts", extra_args=["--snapshot-every", "3"])
    with server.client() as client:
        low = _create_alert(client, alerts_pb2.LOW_BALANCE, "49999", customer_id="acme")
        spend = _create_alert(client, alerts_pb2.SPEND_THRESHOLD, "10")
        assert (low.customer_id, low.threshold, spend.all, spend.threshold) == ("acme", "49999", True, "10")
        assert _create_alert(client, alerts_pb2.LOW_BALANCE, "49999", customer_id="acme") == low  # a retry

        first_watch = _watch_alerts(client, 0)
        _spend(client, "alert-1")  # 49995 left: LOW_BALANCE crosses
        alert_1 = next(first_watch)
        assert (alert_1.seq, alert_1.type, alert_1.rule_id, alert_1.customer_id) == (
            1,
            alerts_pb2.LOW_BALANCE,
            low.id,
            "acme",
        )
        assert alert_1.details["credits_available"] == "49995"
        del first_watch  # the watcher goes away, having seen seq 1

        _spend(client, "alert-2")  # 10 charged this period: SPEND_THRESHOLD; LOW_BALANCE still holds, no new one
        _grant(client, "lift", "20")  # 50010: LOW_BALANCE clears
        _spend(client, "alert-3")  # 50005
        _spend(client, "alert-4")  # 50000, not below 49999
        _spend(client, "alert-5")  # 49995: LOW_BALANCE crosses again

        resumed = _watch_alerts(client, 1)
        alert_2, alert_3 = next(resumed), next(resumed)
        assert [(a.seq, a.type) for a in (alert_2, alert_3)] == [
            (2, alerts_pb2.SPEND_THRESHOLD),
            (3, alerts_pb2.LOW_BALANCE),
        ]
        before_crash = [alert_1, alert_2, alert_3]

    server.kill9()
    server.restart()
    with server.client() as client:
        after_restart = _watch_alerts(client, 1)
        assert [next(after_restart), next(after_restart)] == [alert_2, alert_3]
        everything = _watch_alerts(client, 0)
        assert [next(everything) for _ in range(3)] == before_crash
        _grant(client, "lift-2", "20")  # clears
        _spend(client, "alert-6", "alert-7", "alert-8")  # 50015 -> 50000 -> not below
        _spend(client, "alert-9")  # 49995: crosses a third time
        alert_4 = next(after_restart)
        assert (alert_4.seq, alert_4.type) == (4, alerts_pb2.LOW_BALANCE)
        assert next(everything) == alert_4
        rules = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest())
        assert sorted(r.id for r in rules.rules) == sorted([low.id, spend.id])

        with pytest.raises(TariffError) as past:
            next(_watch_alerts(client, 5))
        assert past.value.code == grpc.StatusCode.OUT_OF_RANGE


def test_bad_alert_rules_are_refused_naming_the_field_and_change_nothing(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        seq = client.get_balance("acme").as_of_seq
        cases = [
            (
                alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.LOW_BALANCE, threshold="-1"),
                "threshold",
            ),
            (
                alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.CREDITS_EXHAUSTED, threshold="1"),
                "threshold",
            ),
            (alerts_pb2.CreateAlertRequest(customer_id="acme", threshold="1"), "type"),
            (alerts_pb2.CreateAlertRequest(type=alerts_pb2.LOW_BALANCE, threshold="1"), "scope"),
        ]
        for request, field in cases:
            with pytest.raises(TariffError) as refused:
                client.alerts.CreateAlert(request)
            assert refused.value.code == grpc.StatusCode.INVALID_ARGUMENT
            assert [v.field for v in refused.value.field_violations] == [field], refused.value
        with pytest.raises(TariffError) as unknown:
            client.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(customer_id="nobody", type=alerts_pb2.CREDITS_EXHAUSTED)
            )
        assert unknown.value.code == grpc.StatusCode.NOT_FOUND
        assert client.get_balance("acme").as_of_seq == seq
        assert list(client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules) == []


def test_a_restricted_key_watches_only_its_customers(keyed: tuple[ServerProcess, Keys]) -> None:  # noqa: F811
    server, keys = keyed
    with server.client(api_key=keys.key["acme-portal"]) as portal:
        assert next(_watch_balance(portal, "acme")).customer_id == "acme"
        with pytest.raises(TariffError) as refused:
            next(_watch_balance(portal, "beta"))
        assert refused.value.code == grpc.StatusCode.PERMISSION_DENIED
        # Alerts too: beta's rule is not listed to acme's key (tests/test_audit_today_wire.py watches them).
        with server.client() as admin:
            _create_alert(admin, alerts_pb2.LOW_BALANCE, "99", customer_id="beta")
        assert list(portal.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules) == []


def test_shutdown_ends_watch_streams_with_unavailable(demo_server: ServerProcess) -> None:
    with demo_server.client() as client:
        balances = _watch_balance(client, "acme")
        next(balances)
        _create_alert(client, alerts_pb2.LOW_BALANCE, "49999", customer_id="acme")
        _spend(client, "shutdown-1")  # fires one alert, so the alert stream can be seen open
        watched_alerts = _watch_alerts(client, 0)
        next(watched_alerts)  # both streams are open on the server now
        assert demo_server.terminate() == 0
        for stream in (balances, watched_alerts):
            with pytest.raises(TariffError) as ended:
                for _ in stream:  # what was sent before the shutdown, then the end
                    pass
            assert ended.value.code == grpc.StatusCode.UNAVAILABLE
            assert "the server is shutting down: watch again" in ended.value.details, ended.value
