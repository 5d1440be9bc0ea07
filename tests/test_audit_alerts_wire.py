"""An acceptance audit of alerts over the wire against a real server (alerts.proto, README "Watching balances and
alerts"): what a billing user watching balances and spend relies on, each expectation taken from the docs.

The catalogue is tests/test_audit_invoices_wire.py's (product `unit`: 1 credit per 1,000 units), with `--close-grace
off` so that the server closes no period by itself while a test runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import alerts_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from tests.serverproc import ServerFactory, ServerProcess, wait_for
from tests.test_audit_invoices_wire import DAY_MS, JAN, catalogue, customer, ts
from tests.test_server_admin import CARD, CUSTOMER, MINUTE_MS, build_catalogue, ingest_one, llm
from tests.test_server_rerate import markup_draft

STREAM_TIMEOUT_S = 60.0


def rule(client: TariffClient, kind: alerts_pb2.AlertType, customer_id: str, threshold: str = "") -> str:
    request = alerts_pb2.CreateAlertRequest(customer_id=customer_id, type=kind, threshold=threshold)
    created: alerts_pb2.AlertRule = client.alerts.CreateAlert(request)
    return created.id


def use(client: TariffClient, customer_id: str, key: str, units: float, at_ms: int) -> None:
    """One event of `units` of product `unit` (units / 1,000 credits), acknowledged before the next."""
    event = usage_pb2.UsageEvent(
        transaction_id=key, customer_id=customer_id, event_type="unit", timestamp_ms=at_ms, dimensions={"k": "a"}
    )
    event.values["n"] = units
    ack = client.ingest_batch([event], key)
    assert ack.accepted == 1, ack.rejected


def alerts_until(client: TariffClient, marker_customer: str, after_seq: int = 0) -> list[alerts_pb2.Alert]:
    """The alerts after `after_seq` up to and including the first of `marker_customer`'s."""
    stream: Iterator[alerts_pb2.Alert] = iter(
        client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=after_seq), timeout=STREAM_TIMEOUT_S)
    )
    seen: list[alerts_pb2.Alert] = []
    for alert in stream:
        seen.append(alert)
        if alert.customer_id == marker_customer:
            return seen
    raise AssertionError(f"the stream ended before an alert of {marker_customer!r}: {seen}")


def shown(alerts: list[alerts_pb2.Alert]) -> list[tuple[str, str, dict[str, str]]]:
    return [(a.customer_id, alerts_pb2.AlertType.Name(a.type), dict(a.details)) for a in alerts]


def marker(client: TariffClient, customer_id: str) -> None:
    """A new customer whose SPEND_THRESHOLD fires at once: an alert known to come after every one before it."""
    customer(client, customer_id, "USD", "1")
    rule(client, alerts_pb2.SPEND_THRESHOLD, customer_id, "0.5")
    use(client, customer_id, f"{customer_id}-1", 1000, int(time.time() * 1000))


def marked(server: ServerProcess) -> TariffClient:
    """A client of `server`, with the catalogue."""
    client = server.client()
    catalogue(client)
    return client


def marked_server(server_factory: ServerFactory, name: str) -> TariffClient:
    return marked(server_factory(name=name, extra_args=["--close-grace", "off"]))


def test_a_grant_expiring_fires_low_balance_and_credits_exhausted(server_factory: ServerFactory) -> None:
    """A grant of 10 credits that expires two seconds from now is all customer x holds: once the server's clock
    records the expiry, no credit is available to x, which holds a grant (its expired one): LOW_BALANCE (below 5)
    and CREDITS_EXHAUSTED hold, and were clear at the previous evaluation (the grant's). They fire, at the
    expiry's record, before any later change of x."""
    with marked_server(server_factory, "expiry") as client:
        contract_id = customer(client, "x", "USD", "1")
        low = rule(client, alerts_pb2.LOW_BALANCE, "x", "5")
        exhausted = rule(client, alerts_pb2.CREDITS_EXHAUSTED, "x")
        expires_ms = int(time.time() * 1000) + 2000
        grant = contracts_pb2.Grant(
            id="x-g", contract_id=contract_id, kind=contracts_pb2.PREPAID, amount="10", paid_amount="10"
        )
        grant.expires_at.CopyFrom(ts(expires_ms))
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        request = invoices_pb2.GetRevenueReportRequest(
            period_start=ts(JAN), period_end=ts(expires_ms + DAY_MS), customer_id="x"
        )
        # The server's clock driver journals the AdvanceClock that breaks the grant's 10 credits.
        assert wait_for(lambda: client.invoices.GetRevenueReport(request).reconciliation.breakage != "0", 30)
        marker(client, "mark")
        seen = alerts_until(client, "mark")
        assert [(a.rule_id, a.customer_id) for a in seen[:-1]] == [(low, "x"), (exhausted, "x")]
        assert shown(seen[:-1]) == [
            ("x", "LOW_BALANCE", {"credits_available": "0", "threshold": "5"}),
            ("x", "CREDITS_EXHAUSTED", {"credits_available": "0"}),
        ]
        assert all(a.time.ToMilliseconds() >= expires_ms for a in seen[:-1])


def grant_at_a_period_end(
    client: TariffClient, customer_id: str, anchor_ms: int, boundary_ms: int, rolls: bool
) -> None:
    """10 credits paid 10 for a contract whose period ends at `boundary_ms`: expiring there, or (`rolls`) rolling
    half over into the next period there (5 credits kept, 5 broken)."""
    contract_id = customer(client, customer_id, "USD", "1", start_ms=anchor_ms)
    grant = contracts_pb2.Grant(
        id=f"{customer_id}-g", contract_id=contract_id, kind=contracts_pb2.PREPAID, amount="10", paid_amount="10"
    )
    grant.starts_at.CopyFrom(ts(boundary_ms - 3000))  # in the period ending at the boundary
    if rolls:
        grant.rollover_fraction = "0.5"
    else:
        grant.expires_at.CopyFrom(ts(boundary_ms))
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


def test_a_period_end_fires_the_balance_rules_once_at_the_clock_and_the_close_fires_none_again(
    server_factory: ServerFactory,
) -> None:
    """Grants that expire (z) or roll half over (r) at a period's end leave z no credit and r 5: conditions that
    changed with no change of the customers' own. The AdvanceClock that records the expiry and the rollover
    evaluates both customers' rules, so LOW_BALANCE (below 8) and CREDITS_EXHAUSTED fire in its record; the
    server's own close (CloseDuePeriods), which evaluates the rules of every customer whose period it closed, finds
    them holding already and fires none again, and replay fires the same."""
    server = server_factory(name="closing", extra_args=["--close-grace", "off"])  # no snapshot: all is replayed
    with marked(server) as client:
        boundary = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=3)
        anchor_ms = int(boundary.replace(year=boundary.year - 1).timestamp() * 1000)
        boundary_ms = int(boundary.timestamp() * 1000)
        for customer_id, rolls in (("r", True), ("z", False)):
            grant_at_a_period_end(client, customer_id, anchor_ms, boundary_ms, rolls)
        low_r = rule(client, alerts_pb2.LOW_BALANCE, "r", "8")
        low_z = rule(client, alerts_pb2.LOW_BALANCE, "z", "8")
        exhausted_z = rule(client, alerts_pb2.CREDITS_EXHAUSTED, "z")
        set_up_seq = client.get_balance("r").as_of_seq
        assert time.time() * 1000 < boundary_ms, "set up before the period's end (3 s ahead)"

        # The server's clock driver journals the AdvanceClock that rolls r's grant over (and breaks z's). A balance
        # shows the rollover as soon as it is due (reads project it), so wait for the record itself: the journal's
        # next record, as_of_seq past the set-up's.
        def recorded() -> bool:
            balance = client.get_balance("r")
            return [g.kind for g in balance.grants][:1] == [contracts_pb2.ROLLOVER] and balance.as_of_seq > set_up_seq

        assert wait_for(recorded, 30)
        closed = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()).invoices
        assert {(i.customer_id, i.period_end.ToMilliseconds()) for i in closed} >= {
            ("r", boundary_ms),
            ("z", boundary_ms),
        }
        # The close compiled only the closed customers' tables: usage dated in a closed period is refused.
        late = usage_pb2.UsageEvent(
            transaction_id="z-late", customer_id="z", event_type="unit", timestamp_ms=boundary_ms - 1000
        )
        late.dimensions["k"] = "a"
        late.values["n"] = 1000
        ack = client.ingest_batch([late], "z-late")
        assert [usage_pb2.RejectReason.Name(r.reason) for r in ack.rejected] == ["PERIOD_CLOSED"]
        marker(client, "mark")
        seen = alerts_until(client, "mark")[:-1]
        assert [a.rule_id for a in seen] == [low_r, low_z, exhausted_z]
        assert shown(seen) == [
            ("r", "LOW_BALANCE", {"credits_available": "5", "threshold": "8"}),
            ("z", "LOW_BALANCE", {"credits_available": "0", "threshold": "8"}),
            ("z", "CREDITS_EXHAUSTED", {"credits_available": "0"}),
        ]
        # One record, the clock's: at or after the boundary, before the close (in the same millisecond when the
        # writer records the rollover itself first in the close's group: GetBalance shows it rolled before the
        # clock records it, so the close may come before the driver's look).
        [(at_ms, _)] = {(a.time.ToMilliseconds(), a.journal_seq) for a in seen}
        assert boundary_ms <= at_ms <= closed[0].closed_at.ToMilliseconds()
        everything = alerts_until(client, "mark")
    server.kill9()  # replaying the journal (the close's record too) fires the same alerts, none twice
    server.restart()
    with server.client() as client:
        marker(client, "mark-2")
        assert alerts_until(client, "mark") == everything
        again = alerts_until(client, "mark-2", everything[-1].seq)
        assert [(a.seq, a.customer_id) for a in again] == [(everything[-1].seq + 1, "mark-2")]


def refusal(client: TariffClient, request: alerts_pb2.CreateAlertRequest) -> tuple[str, list[str], str]:
    with pytest.raises(TariffError) as refused:
        client.alerts.CreateAlert(request)
    error = refused.value
    return error.code.name, [v.field for v in error.field_violations], error.details


def test_create_alert_refuses_what_it_cannot_honour_exactly_naming_the_field(server_factory: ServerFactory) -> None:
    """A threshold is exact at 12 decimal places: one more place is refused, never rounded (a 1e-13 alert would
    otherwise watch 0, a condition that never holds); a customer that is not an id, or does not exist, is refused;
    nothing is created by a refusal."""
    with marked_server(server_factory, "refusals") as client:
        customer(client, "c", "USD", "1")
        bad = alerts_pb2.CreateAlertRequest
        for threshold in ("0.0000000000001", "1e-13", "10.0000000000005", "1E-13"):
            code, fields, details = refusal(
                client, bad(customer_id="c", type=alerts_pb2.LOW_BALANCE, threshold=threshold)
            )
            assert (code, fields) == ("INVALID_ARGUMENT", ["threshold"]), (threshold, details)
        for threshold in ("1e18", "-5", "0", "0.000", "", "five", "1_000", " 1"):
            code, fields, details = refusal(
                client, bad(customer_id="c", type=alerts_pb2.SPEND_THRESHOLD, threshold=threshold)
            )
            assert (code, fields) == ("INVALID_ARGUMENT", ["threshold"]), (threshold, details)
        assert refusal(client, bad(customer_id="nobody", type=alerts_pb2.CREDITS_EXHAUSTED))[0] == "NOT_FOUND"
        code, fields, _ = refusal(client, bad(customer_id="c d", type=alerts_pb2.CREDITS_EXHAUSTED))
        assert (code, fields) == ("INVALID_ARGUMENT", ["customer_id"])
        code, fields, _ = refusal(client, bad(customer_id="c", type=alerts_pb2.CREDITS_EXHAUSTED, id="has space"))
        assert (code, fields) == ("INVALID_ARGUMENT", ["id"])
        unknown_type = bad(customer_id="c")
        unknown_type.ParseFromString(unknown_type.SerializeToString() + bytes([0x18, 45]))  # type = 45: no AlertType
        code, fields, _ = refusal(client, unknown_type)
        assert (code, fields) == ("INVALID_ARGUMENT", ["type"])
        assert list(client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules) == []

        finest = bad(customer_id="c", type=alerts_pb2.LOW_BALANCE, threshold="0.000000000001")
        created = client.alerts.CreateAlert(finest)
        assert created.threshold == "0.000000000001"
        assert client.alerts.CreateAlert(finest) == created  # a retry: the same rule, no other
        named = bad(customer_id="c", type=alerts_pb2.SPEND_THRESHOLD, threshold="2.5", id="c-spend")
        assert client.alerts.CreateAlert(named).id == "c-spend"
        assert client.alerts.CreateAlert(named).threshold == "2.5"
        changed = bad(customer_id="c", type=alerts_pb2.SPEND_THRESHOLD, threshold="3", id="c-spend")
        code, fields, details = refusal(client, changed)
        assert code == "ALREADY_EXISTS", details
        listed = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()).rules
        assert sorted((r.id, r.threshold) for r in listed) == sorted(
            [(created.id, "0.000000000001"), ("c-spend", "2.5")]
        )


def test_a_price_cut_that_lowers_spend_below_a_threshold_lets_it_fire_again_with_the_corrected_charges(
    server_factory: ServerFactory,
) -> None:
    """SPEND_THRESHOLD fires once per period, unless a re-rating lowers the period's charges below the threshold
    (alerts.proto): the first alert read prices since withdrawn, so reaching the threshold again at the corrected
    prices fires a second one, naming the corrected charges. 10k tokens in and out cost 0.9 x markup: 1.08 at the
    published 1.2, 0.45 at 0.5 from the period's start."""
    server = server_factory()
    with server.client() as client:
        cat = build_catalogue(client)
        spend = client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(customer_id=CUSTOMER, type=alerts_pb2.SPEND_THRESHOLD, threshold="1")
        ).id
        tokens = ("gpt-4", "us", 10_000, 10_000)
        ingest_one(client, llm("e1", cat.h0 + 10 * MINUTE_MS, *tokens))  # 1.08: fires
        cut = markup_draft(client, "0.5")
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=cut, effective_from=ts(cat.h0))
        )
        assert client.get_balance(CUSTOMER).period_charges == "0.45"  # below 1: cleared
        ingest_one(client, llm("e2", cat.h0 + 20 * MINUTE_MS, *tokens))  # 0.9: nothing
        ingest_one(client, llm("e3", cat.h0 + 30 * MINUTE_MS, *tokens))  # 1.35: fires again
        stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=STREAM_TIMEOUT_S)
        alerts = iter(stream)
        first, second = next(alerts), next(alerts)
        assert [(a.seq, a.rule_id, a.details["period_charges"]) for a in (first, second)] == [
            (1, spend, "1.08"),
            (2, spend, "1.35"),
        ]
        assert first.details["period_start_ms"] == second.details["period_start_ms"]
        assert client.get_balance(CUSTOMER).period_charges == "1.35"
