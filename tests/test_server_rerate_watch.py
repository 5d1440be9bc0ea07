"""A retroactive publish against a real server process (tests/serverproc.py) is a change like any other for
watchers: a WatchBalance stream receives the re-rated balance, and a SPEND_THRESHOLD rule the re-rating crosses
fires once, through WatchAlerts, the same after a restart replays the publish."""

from __future__ import annotations

from tariff.v1 import alerts_pb2, balance_pb2, pricing_pb2

from tests.serverproc import ServerFactory
from tests.test_server_admin import CARD, CUSTOMER, MINUTE_MS, assert_amount, build_catalogue, ingest_one, llm, ts
from tests.test_server_rerate import markup_draft

STREAM_TIMEOUT_S = 60.0


def test_a_retroactive_publish_sends_watchers_the_new_balance_and_fires_the_alert_it_crosses(
    server_factory: ServerFactory,
) -> None:
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)  # v1 from h0: gpt-4 us 0.036 in, 0.072 out per 1k tokens (markup 1.2)
        ingest_one(client, llm("e1", cat.h0 + 10 * MINUTE_MS, "gpt-4", "us", 10_000, 10_000))  # 1.08
        rule = client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(customer_id=CUSTOMER, type=alerts_pb2.SPEND_THRESHOLD, threshold="1.2")
        )
        watch = balance_pb2.WatchBalanceRequest(customer_id=CUSTOMER)
        stream = iter(client.balance.WatchBalance(watch, timeout=STREAM_TIMEOUT_S))
        first = next(stream)
        assert_amount(first.period_charges, "1.08")

        # Markup 1.5 from h0 re-rates e1 to 0.45 + 0.9 = 1.35, crossing the 1.2 threshold.
        v2 = markup_draft(client, "1.5")
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v2, effective_from=ts(cat.h0))
        )
        assert (published.customers_rerated, published.buckets_rerated) == (1, 2)
        second = next(stream)
        assert_amount(second.period_charges, "1.35")
        assert second.as_of_seq > first.as_of_seq
        assert second == client.get_balance(CUSTOMER)

        alerts = iter(client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=STREAM_TIMEOUT_S))
        alert = next(alerts)
        assert (alert.seq, alert.rule_id, alert.customer_id, alert.type) == (
            1,
            rule.id,
            CUSTOMER,
            alerts_pb2.SPEND_THRESHOLD,
        )
        assert alert.journal_seq == second.as_of_seq  # the publish's record
        assert (alert.details["period_charges"], alert.details["threshold"]) == ("1.35", "1.2")

    # The replay re-rates and fires the same alert (recovery refuses a record whose alerts differ).
    server.terminate()
    server.restart()
    with server.client() as client:
        assert_amount(client.get_balance(CUSTOMER).period_charges, "1.35")
        alerts = iter(client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=STREAM_TIMEOUT_S))
        again = next(alerts)
        assert (again.seq, again.journal_seq, again.details["period_charges"]) == (1, alert.journal_seq, "1.35")
