"""Deleting alert rules over the wire against real servers (alerts.proto DeleteAlertRule, README "Watching balances
and alerts"): a deleted rule fires no more and is not listed, its alerts stay in WatchAlerts' log, a retry answers
as the first call did and changes nothing, an unknown id is NOT_FOUND, a deleted rule's id is never created again,
a key restricted to some customers deletes only what it may create, the audit log shows the deletion, and all of it
holds after kill -9 and from a snapshot written after the deletion.

The catalogue is tests/test_audit_invoices_wire.py's (product `unit`: 1 credit per 1,000 units), with `--close-grace
off` so that the server closes no period by itself while a test runs."""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from tariff import TariffClient
from tariff.v1 import alerts_pb2, contracts_pb2, pricing_pb2

from tests.audit_fixtures import refusal
from tests.serverproc import ServerFactory
from tests.test_audit_alerts_wire import alerts_until, marked, marker, use
from tests.test_audit_invoices_wire import customer
from tests.test_crash import peek_journal
from tests.test_server_auth import Keys

GONE = "d-low"  # the rule deleted
KEPT = "d-keep"  # the same condition under another id, kept


def create(client: TariffClient, rule_id: str, customer_id: str = "d", *, every: bool = False) -> alerts_pb2.AlertRule:
    """A LOW_BALANCE rule below 5 of `customer_id`'s, or (`every`) of every customer's."""
    request = alerts_pb2.CreateAlertRequest(id=rule_id, type=alerts_pb2.LOW_BALANCE, threshold="5")
    if every:
        request.all = True
    else:
        request.customer_id = customer_id
    made: alerts_pb2.AlertRule = client.alerts.CreateAlert(request)
    return made


def delete(client: TariffClient, rule_id: str) -> alerts_pb2.AlertRule:
    deleted: alerts_pb2.AlertRule = client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id=rule_id))
    return deleted


def rule_ids(client: TariffClient, page_token: str = "") -> list[str]:
    listed = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=1000, page_token=page_token))
    return [rule.id for rule in listed.rules]


def grant(client: TariffClient, grant_id: str, credits: str) -> None:
    made = contracts_pb2.Grant(
        id=grant_id, contract_id="d-c", kind=contracts_pb2.PREPAID, amount=credits, paid_amount=credits
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def crossing(client: TariffClient, name: str, after_seq: int) -> list[alerts_pb2.Alert]:
    """d's credit lifted by 10 (clearing every LOW_BALANCE below 5 of d's) then 10 spent (4 left: below again):
    d's alerts after `after_seq`, up to a marker committed after them."""
    grant(client, f"{name}-g", "10")
    use(client, "d", f"{name}-use", 10_000, int(time.time() * 1000))
    marker(client, f"{name}-m")
    return [alert for alert in alerts_until(client, f"{name}-m", after_seq) if alert.customer_id == "d"]


def newest_seq(client: TariffClient) -> int:
    seq: int = client.get_balance("d").as_of_seq
    return seq


def audit_actions(client: TariffClient, target: str) -> list[tuple[str, str]]:
    entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(target=target, page_size=1000)).entries
    return [(entry.action, entry.actor) for entry in entries]


def still_deleted(client: TariffClient, first: alerts_pb2.AlertRule) -> None:
    """What a deleted rule looks like from outside, whenever asked: not listed, the delete answers it again and
    changes nothing, and its id is not created again."""
    assert GONE not in rule_ids(client) and KEPT in rule_ids(client)
    seq = newest_seq(client)
    assert delete(client, GONE) == first
    code, details = refusal(lambda: create(client, GONE))
    assert code == grpc.StatusCode.ALREADY_EXISTS and f"alert rule {GONE!r} was deleted" in details, details
    assert newest_seq(client) == seq, "a retried delete and a refused create journal nothing"


def test_a_deleted_rule_fires_no_more_is_not_listed_and_keeps_its_alerts(server_factory: ServerFactory) -> None:
    server = server_factory(extra_args=["--close-grace", "off"], name="delete")
    with marked(server) as client:
        customer(client, "d", "USD", "1")
        grant(client, "d-g", "10")
        created = create(client, GONE)
        create(client, KEPT)
        use(client, "d", "d-use", 6_000, int(time.time() * 1000))  # 4 credits left: both fire
        marker(client, "m1")
        fired = [a for a in alerts_until(client, "m1") if a.customer_id == "d"]
        assert [a.rule_id for a in fired] == [GONE, KEPT]

        # A page token naming the rule goes on after it once it is deleted.
        after_gone = rule_ids(client, GONE)
        seq = newest_seq(client)
        first = delete(client, GONE)
        assert first == created
        assert newest_seq(client) == seq + 1, "the deletion is one journal record"
        assert rule_ids(client, GONE) == after_gone
        assert GONE not in rule_ids(client) and KEPT in rule_ids(client)

        # The same crossing again: the kept rule fires, the deleted one does not.
        assert [a.rule_id for a in crossing(client, "x1", fired[-1].seq)] == [KEPT]
        # Its alert stays in the log, once.
        assert [a.seq for a in alerts_until(client, "x1-m") if a.rule_id == GONE] == [fired[0].seq]

        still_deleted(client, first)
        audited = audit_actions(client, f"alert/{GONE}")
        assert audited == [("CreateAlert", "anonymous"), ("DeleteAlertRule", "anonymous")], audited
        (entry,) = client.pricing.GetAuditLog(
            pricing_pb2.GetAuditLogRequest(action="DeleteAlertRule", page_size=1000)
        ).entries
        assert (entry.seq, entry.target) == (seq + 1, f"alert/{GONE}")
        shown = {"customer_id": "d", "all_customers": False, "alert_type": "LOW_BALANCE", "threshold": "5"}
        assert json.loads(entry.diff) == {"type": "delete_alert_rule", "id": GONE, **shown}, (
            "the rule, as CreateAlert's"
        )

        # An unknown id, a malformed one: refused, naming it; nothing journaled.
        seq = newest_seq(client)
        code, details = refusal(lambda: delete(client, "no-such-rule"))
        assert code == grpc.StatusCode.NOT_FOUND and "'no-such-rule'" in details, details
        code, details = refusal(lambda: delete(client, "not an id"))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "id" in details, details
        code, details = refusal(lambda: delete(client, ""))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "id: is required" in details, details

        # A rule created without an id is named after its content: the same request again, once it is deleted, is
        # refused (a late retry cannot bring it back); under an id of its own it is created.
        request = alerts_pb2.CreateAlertRequest(customer_id="d", type=alerts_pb2.CREDITS_EXHAUSTED)
        named = client.alerts.CreateAlert(request)
        assert delete(client, named.id) == named
        code, details = refusal(functools.partial(client.alerts.CreateAlert, request))
        assert code == grpc.StatusCode.ALREADY_EXISTS and f"{named.id!r} was deleted" in details, details
        assert "with an id" in details, details
        request.id = "d-out"
        assert client.alerts.CreateAlert(request).id == "d-out"
        assert newest_seq(client) == seq + 3, "two records: the delete and the create under its own id"

    # kill -9: the journal replays the deletion.
    server.kill9()
    server.start()
    with server.client() as client:
        still_deleted(client, first)
        assert [a.rule_id for a in crossing(client, "x2", alerts_until(client, "x1-m")[-1].seq)] == [KEPT]
    # A clean stop writes a snapshot after the deletion, and the restart restores it alone.
    assert server.terminate() == 0
    snapshot_seq, last_seq = peek_journal(server)
    assert snapshot_seq == last_seq
    server.start()
    with server.client() as client:
        still_deleted(client, first)
        assert [a.rule_id for a in crossing(client, "x3", alerts_until(client, "x2-m")[-1].seq)] == [KEPT]
        assert [a.rule_id for a in alerts_until(client, "x3-m") if a.customer_id == "d"].count(GONE) == 1


KEYS: dict[str, tuple[str, list[str] | None]] = {
    "ops-admin": ("admin", None),
    "acme-admin": ("admin", ["acme"]),
    "acme-portal": ("read", ["acme"]),
}


def test_a_restricted_key_deletes_only_the_rules_it_may_create(server_factory: ServerFactory, tmp_path: Path) -> None:
    """CreateAlert's rule (server/auth.py): a key restricted to acme creates rules for acme only, so it deletes
    acme's rules only. Beta's rule, the rule for every customer and an unknown id are PERMISSION_DENIED alike (a
    restricted key learns nothing of what exists); a read key may delete nothing. Once deleted, acme's rule answers
    its retry for that key too; a token naming beta's deleted rule is refused to it as a made-up one."""
    keys = Keys(tmp_path / "keys.json", KEYS)
    server = server_factory(extra_args=["--close-grace", "off", *keys.args], api_key=keys.key["ops-admin"])
    with marked(server) as admin:
        for name in ("acme", "beta"):
            customer(admin, name, "USD", "1")
        own = create(admin, "acme-low", customer_id="acme")
        create(admin, "beta-low", customer_id="beta")
        create(admin, "all-low", every=True)

    def as_key(key_name: str, call: Callable[[TariffClient], object]) -> tuple[grpc.StatusCode, str]:
        with server.client(api_key=keys.key[key_name]) as client:
            return refusal(lambda: call(client))

    foreign = [as_key("acme-admin", functools.partial(delete, rule_id=i)) for i in ("beta-low", "all-low", "nope")]
    assert [code for code, _ in foreign] == [grpc.StatusCode.PERMISSION_DENIED] * 3, foreign
    assert [d.replace("all-low", "beta-low").replace("nope", "beta-low") for _, d in foreign] == [foreign[0][1]] * 3
    code, details = as_key("acme-portal", functools.partial(delete, rule_id="acme-low"))
    assert code == grpc.StatusCode.PERMISSION_DENIED and "'read'" in details, details
    code, details = as_key("acme-admin", functools.partial(create, rule_id="x", every=True))
    assert code == grpc.StatusCode.PERMISSION_DENIED, "CreateAlert's rule, which DeleteAlertRule follows"
    with server.client() as admin:
        assert sorted(rule_ids(admin)) == ["acme-low", "all-low", "beta-low"], "nothing deleted"

    with server.client(api_key=keys.key["acme-admin"]) as acme:
        assert delete(acme, "acme-low") == own
        assert delete(acme, "acme-low") == own  # the retry, answered as the first call
        assert rule_ids(acme) == ["all-low"]
    with server.client() as admin:
        assert sorted(rule_ids(admin)) == ["all-low", "beta-low"]
        audited = audit_actions(admin, "alert/acme-low")
        assert audited == [("CreateAlert", "ops-admin"), ("DeleteAlertRule", "acme-admin")], audited
        delete(admin, "beta-low")
    made_up, deleted = (
        as_key("acme-portal", functools.partial(rule_ids, page_token=token)) for token in ("made-up", "beta-low")
    )
    assert made_up == deleted and made_up[0] == grpc.StatusCode.INVALID_ARGUMENT, (made_up, deleted)
    with server.client(api_key=keys.key["acme-admin"]) as acme:
        assert rule_ids(acme, "acme-low") == ["all-low"], "its own deleted rule's token goes on after it"
