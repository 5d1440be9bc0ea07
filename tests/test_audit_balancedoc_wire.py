"""An acceptance audit of balance.proto's and alerts.proto's comments, statement by statement, over the wire, on what
the earlier audits (test_audit_credits*_wire, test_audit_holds*_wire, test_audit_gateway*_wire, test_audit_watch2_wire,
test_audit_alerts*_wire, test_audit_estimates_wire, test_server_authorize_batch*) leave out: GrantBalance's worked
example (100 granted, 20 drawn, 15 held), a balance with no contract in force, what moves as_of_seq and what does
not, the exact details each balance alert carries, ListAlertRules' pages (the last one's empty token, a page_size
over 1,000), a rule's threshold as its retry key, the refusals of GetBalance and WatchBalance, what a watcher is sent
for a hold of nothing, an override, a top-up policy and a batch shared with another customer, a release retried
after its TTL and after an event named it, an AuthorizeBatches message refused whole, and an event alert fired for
every rule of its type. Amounts are worked out by hand in each docstring.

The catalogue is test_audit_gateway2_wire's (`work` events price `n` units at 1 credit each), one server for the
file (`--close-grace off`: no period closes by itself), each test on customers of its own; the one rule for every
customer is deleted by the test that makes it."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import release, serving
from tests.serverproc import ServerProcess
from tests.test_audit_credits2_wire import CARD_FROM_MS, customer, event, grant, hold, hold_request, rows, totals
from tests.test_audit_gateway2_wire import catalogue
from tests.test_audit_topups_wire import month_start_ms

STREAM_TIMEOUT_S = 20.0


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-balancedoc")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def refused(call: Callable[[], object]) -> tuple[str, list[str], str]:
    """(status name, the fields its violations name, its message) of a call that must fail."""
    with pytest.raises(TariffError) as refusal:
        call()
    error = refusal.value
    return error.code.name, [v.field for v in error.field_violations], error.details


def spend(client: TariffClient, customer_id: str, transaction_id: str, units: float) -> None:
    ack = client.ingest_batch([event(transaction_id, customer_id, units)])
    assert (ack.accepted, list(ack.rejected)) == (1, []), ack


def seq_of(client: TariffClient, customer_id: str) -> int:
    seq: int = client.get_balance(customer_id).as_of_seq
    return seq


def test_grant_balance_reads_as_its_worked_example(server: ServerProcess) -> None:
    """GrantBalance.remaining: "100 granted, 20 drawn, 15 held: remaining 80, held 15, and 65 available"; a grant
    not started yet shows its whole amount as remaining, which the totals count only once it starts. ALLOW customer
    `gbx`: a grant of 100, 20 units used (20 credits), a hold of 15 units; a grant of 7 starting tomorrow."""
    with server.client() as client:
        customer(client, "gbx", block=False)
        grant(client, "gbx", "now", "100")
        grant(client, "gbx", "later", "7", starts_at_ms=now_ms() + 86_400_000)
        spend(client, "gbx", "gbx-1", 20)
        assert hold(client, "gbx", 15, "gbx-h")[:2] == (True, "OK")
        assert rows(client, "gbx") == {"now": ("20", "80", "15", "0"), "later": ("0", "7", "0", "0")}
        assert totals(client, "gbx") == ("80", "15", "65")
        assert release(client, "gbx", "gbx-h") == "15"


def test_a_balance_with_no_contract_in_force_has_no_period_and_zero_charges(server: ServerProcess) -> None:
    """Balance.period_charges: with no contract in force now there is no current period: period_charges,
    overage_amount and overage_due "0", period_start and period_end unset. pricing_unit: empty for a customer with no
    contract; with none in force now, the card of its latest-starting contract ("credits"). `nc` has no contract;
    `ended` had one from the card's start for one hour, long over."""
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="nc", name="nc"))
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="ended", name="ended"))
        contract = contracts_pb2.CreateContractRequest(
            id="k-ended",
            customer_id="ended",
            rate_card_id="card",
            starting_at=stamp(CARD_FROM_MS),
            ending_before=stamp(CARD_FROM_MS + 3_600_000),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="1",
            currency="USD",
        )
        client.contracts.CreateContract(contract)
        for customer_id, unit in (("nc", ""), ("ended", "credits")):
            balance = client.get_balance(customer_id)
            assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("0", "0", "0")
            assert not balance.HasField("period_start") and not balance.HasField("period_end"), balance
            assert (balance.pricing_unit, balance.credits_remaining, balance.credits_available) == (unit, "0", "0")


def test_as_of_seq_moves_with_changes_and_not_for_what_changes_nothing(server: ServerProcess) -> None:
    """Balance.as_of_seq: a batch that accepts nothing, a denied or repeated hold and a repeated release do not move
    it; a hold placed and a release do, by one each. BLOCK customer `seqx` with 5 credits."""
    with server.client() as client:
        customer(client, "seqx", block=True)
        grant(client, "seqx", "g", "5")
        first = seq_of(client, "seqx")
        stale = usage_pb2.UsageEvent(
            transaction_id="seqx-old", customer_id="seqx", event_type="work", timestamp_ms=1, values={"n": 1}
        )
        assert client.ingest_batch([stale]).accepted == 0
        assert seq_of(client, "seqx") == first
        assert hold(client, "seqx", 9, "seqx-denied")[:2] == (False, "INSUFFICIENT_CREDIT")
        assert seq_of(client, "seqx") == first
        assert hold(client, "seqx", 2, "seqx-h")[:2] == (True, "OK")
        assert seq_of(client, "seqx") == first + 1
        assert hold(client, "seqx", 2, "seqx-h")[:2] == (True, "OK")
        assert seq_of(client, "seqx") == first + 1
        assert release(client, "seqx", "seqx-h") == "2"
        assert seq_of(client, "seqx") == first + 2
        assert release(client, "seqx", "seqx-h") == "2"
        assert seq_of(client, "seqx") == first + 2


def alerts_after(client: TariffClient, after_seq: int, count: int) -> list[alerts_pb2.Alert]:
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=after_seq), timeout=STREAM_TIMEOUT_S)
    got: list[alerts_pb2.Alert] = []
    for alert in stream:
        got.append(alert)
        if len(got) == count:
            stream.cancel()
            break
    return got


def newest_alert_seq(client: TariffClient) -> int:
    """The seq of the newest alert, fired on purpose: a fresh customer's SPEND_THRESHOLD of 1 reached."""
    marker_id = f"mark-{now_ms()}"
    customer(client, marker_id, block=False)
    client.alerts.CreateAlert(
        alerts_pb2.CreateAlertRequest(customer_id=marker_id, type=alerts_pb2.SPEND_THRESHOLD, threshold="1")
    )
    spend(client, marker_id, f"{marker_id}-1", 1)
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=STREAM_TIMEOUT_S)
    for alert in stream:
        if alert.customer_id == marker_id:
            stream.cancel()
            seq: int = alert.seq
            return seq
    raise AssertionError("no marker alert")


def test_balance_alerts_carry_exactly_the_details_their_type_names(server: ServerProcess) -> None:
    """Alert.details: credits_available and threshold (LOW_BALANCE), credits_available (CREDITS_EXHAUSTED),
    period_charges, threshold and period_start_ms (SPEND_THRESHOLD); journal_seq is the record whose change fired it.
    ALLOW customer `adx`: a grant of 10, rules LOW_BALANCE below 5, CREDITS_EXHAUSTED, SPEND_THRESHOLD at 2.5; one
    event of 12 units: 10 drawn, 2 overage, 0 available, 12 charged this month. Each alert fires once, from that
    batch's record."""
    with server.client() as client:
        customer(client, "adx", block=False)
        grant(client, "adx", "g", "10")
        for kind, threshold in (
            (alerts_pb2.LOW_BALANCE, "5"),
            (alerts_pb2.CREDITS_EXHAUSTED, ""),
            (alerts_pb2.SPEND_THRESHOLD, "2.5"),
        ):
            client.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(customer_id="adx", type=kind, threshold=threshold))
        after = newest_alert_seq(client)
        spend(client, "adx", "adx-1", 12)
        record = seq_of(client, "adx")
        fired = alerts_after(client, after, 3)
        assert sorted((alerts_pb2.AlertType.Name(a.type), dict(a.details)) for a in fired) == [
            ("CREDITS_EXHAUSTED", {"credits_available": "0"}),
            ("LOW_BALANCE", {"credits_available": "0", "threshold": "5"}),
            (
                "SPEND_THRESHOLD",
                {"period_charges": "12", "threshold": "2.5", "period_start_ms": str(month_start_ms())},
            ),
        ]
        assert {(a.customer_id, a.journal_seq) for a in fired} == {("adx", record)}
        assert [a.seq for a in fired] == [after + 1, after + 2, after + 3]


def test_list_alert_rules_last_page_has_no_token_and_a_token_is_the_last_rules_id(server: ServerProcess) -> None:
    """ListAlertRules: id order; next_page_token is the page's last rule's id, empty on the last page (also when
    that page is full); page_size above 1,000 is read as 1,000, not refused."""
    with server.client() as client:
        customer(client, "lrx", block=False)
        for name in ("lrx-b", "lrx-a", "lrx-c"):
            client.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(id=name, customer_id="lrx", type=alerts_pb2.CREDITS_EXHAUSTED)
            )
        listing = alerts_pb2.ListAlertRulesRequest
        every = client.alerts.ListAlertRules(listing(page_size=5000))
        ids = [r.id for r in every.rules]
        assert ids == sorted(ids) and {"lrx-a", "lrx-b", "lrx-c"} <= set(ids)
        assert every.next_page_token == ""
        whole = client.alerts.ListAlertRules(listing(page_size=len(ids)))
        assert ([r.id for r in whole.rules], whole.next_page_token) == (ids, "")
        first = client.alerts.ListAlertRules(listing(page_size=len(ids) - 1))
        assert ([r.id for r in first.rules], first.next_page_token) == (ids[:-1], ids[-2])
        rest = client.alerts.ListAlertRules(listing(page_size=len(ids) - 1, page_token=first.next_page_token))
        assert ([r.id for r in rest.rules], rest.next_page_token) == (ids[-1:], "")


def test_a_rule_without_id_is_one_rule_however_its_threshold_is_spelled(server: ServerProcess) -> None:
    """CreateAlert: the same request again (with no id, the same scope, type and threshold) answers the rule it
    created. A threshold is a decimal exact at 12 places: "5", "5.0" and "5.000000000000" are one threshold, so one
    rule; "5.000000000001" is another."""
    with server.client() as client:
        customer(client, "thx", block=False)

        def make(threshold: str, rule_id: str = "") -> alerts_pb2.AlertRule:
            made: alerts_pb2.AlertRule = client.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(
                    id=rule_id, customer_id="thx", type=alerts_pb2.LOW_BALANCE, threshold=threshold
                )
            )
            return made

        first = make("5")
        assert first.id.startswith("alert-") and first.threshold == "5"
        assert make("5.0") == first
        assert make("5.000000000000") == first
        other = make("5.000000000001")
        assert other.id != first.id and other.threshold == "5.000000000001"
        named = make("5", "thx-low")
        assert make("5.00", "thx-low") == named
        code, fields, _ = refused(functools.partial(make, "5.0000000000001"))
        assert (code, fields) == ("INVALID_ARGUMENT", ["threshold"])


def test_get_and_watch_balance_refuse_a_bad_or_unknown_customer_naming_it(server: ServerProcess) -> None:
    """GetBalance and WatchBalance: an unknown customer is NOT_FOUND; an empty or malformed customer_id is
    INVALID_ARGUMENT naming customer_id; a watch's first balance is GetBalance's."""
    with server.client() as client:
        customer(client, "wbx", block=False)
        grant(client, "wbx", "g", "3")

        def watch_first(customer_id: str) -> balance_pb2.Balance:
            stream = client.balance.WatchBalance(
                balance_pb2.WatchBalanceRequest(customer_id=customer_id), timeout=STREAM_TIMEOUT_S
            )
            first: balance_pb2.Balance = next(iter(stream))
            stream.cancel()
            return first

        assert watch_first("wbx") == client.get_balance("wbx")
        for call in (client.get_balance, watch_first):
            assert refused(functools.partial(call, "nobody-wbx"))[0] == "NOT_FOUND"
            for bad in ("", "a b"):
                code, fields, _ = refused(functools.partial(call, bad))
                assert (code, fields) == ("INVALID_ARGUMENT", ["customer_id"]), (call, bad)


def test_watch_alerts_from_the_newest_seq_waits_for_the_next(server: ServerProcess) -> None:
    """WatchAlerts: every alert with seq > after_seq: after_seq equal to the newest is not OUT_OF_RANGE (one past it
    is); the stream's first alert is the next one fired."""
    with server.client() as client:
        newest = newest_alert_seq(client)
        code, _, _ = refused(lambda: alerts_after(client, newest + 1, 1))
        assert code == "OUT_OF_RANGE"
        stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=newest), timeout=STREAM_TIMEOUT_S)
        nxt = newest_alert_seq(client)
        first = next(iter(stream))
        stream.cancel()
        assert (first.seq, nxt) == (newest + 1, newest + 1)


def watch(client: TariffClient, customer_id: str) -> tuple[grpc.Future, Iterator[balance_pb2.Balance]]:
    stream = client.balance.WatchBalance(
        balance_pb2.WatchBalanceRequest(customer_id=customer_id), timeout=STREAM_TIMEOUT_S
    )
    return stream, iter(stream)


def amounts(balance: balance_pb2.Balance) -> tuple[str, str, str, str]:
    return balance.credits_remaining, balance.credits_held, balance.credits_available, balance.period_charges


def test_a_hold_that_holds_nothing_is_still_sent_with_its_seq_and_a_denied_hold_names_no_reservation(
    server: ServerProcess,
) -> None:
    """WatchBalance: the balance again "after every committed change that touches the customer (... a hold, its
    release ...)"; "a balance equal to the previous one is not sent again" compares as_of_seq too. ALLOW `zhx` with
    no credit: a hold of 4 units is OVERAGE_ALLOWED and holds the credit there is, 0: the amounts stay (0, 0, 0, 0)
    but the hold is a journaled change of zhx, sent with its later as_of_seq, and so is its release. AuthorizeResponse.reservation_id:
    empty when the hold was not allowed (BLOCK `zdx` with no credit, naming "zdx-h"), and nothing is held under it."""
    with server.client() as client:
        customer(client, "zhx", block=False)
        stream, balances = watch(client, "zhx")
        first = next(balances)
        assert hold(client, "zhx", 4, "zhx-h") == (True, "OVERAGE_ALLOWED", "4", "0", "zhx-h")
        second = next(balances)
        assert release(client, "zhx", "zhx-h") == "0"
        third = next(balances)
        stream.cancel()
        assert amounts(first) == amounts(second) == amounts(third) == ("0", "0", "0", "0")
        assert first.as_of_seq < second.as_of_seq < third.as_of_seq

        customer(client, "zdx", block=True)
        assert hold(client, "zdx", 1, "zdx-h") == (False, "INSUFFICIENT_CREDIT", "1", "0", "")
        assert refused(lambda: release(client, "zdx", "zdx-h"))[0] == "NOT_FOUND"


def test_a_watcher_is_not_sent_the_changes_of_a_batch_or_message_that_changed_only_others(
    server: ServerProcess,
) -> None:
    """WatchBalance: "a change of another customer wakes no watcher", also when it shares a usage batch or an
    AuthorizeBatches message with a request of the watched customer that changed nothing. BLOCK `owx` (no credit)
    and ALLOW `oax` (grant 10) are watched from (0, 0, 0, 0) and (10, 0, 10, 0). One batch: oax 2 units (accepted),
    owx's event dated 1970 (rejected). One message: oax holds 1 unit (allowed), owx 1 unit (denied: no credit). Then
    a grant of 5 to owx: owx's second balance is (5, 0, 5, 0), nothing sent between; oax's second is after the batch
    (8, 0, 8, 2), its third after the message's hold (8, 1, 7, 2)."""
    with server.client() as client:
        customer(client, "owx", block=True)
        customer(client, "oax", block=False)
        grant(client, "oax", "g", "10")
        owx_stream, owx = watch(client, "owx")
        oax_stream, oax = watch(client, "oax")
        assert amounts(next(owx)) == ("0", "0", "0", "0")
        assert amounts(next(oax)) == ("10", "0", "10", "0")
        stale = usage_pb2.UsageEvent(
            transaction_id="owx-old", customer_id="owx", event_type="work", timestamp_ms=1, values={"n": 1}
        )
        ack = client.ingest_batch([event("oax-1", "oax", 2), stale])
        assert (ack.accepted, [r.index for r in ack.rejected]) == (1, [1])
        assert amounts(next(oax)) == ("8", "0", "8", "2")
        message = balance_pb2.AuthorizeBatch(
            requests=[
                hold_request("oax", 1, "oax-h", request_id="a"),
                hold_request("owx", 1, "owx-h", request_id="b"),
            ]
        )
        (result,) = list(client.balance.AuthorizeBatches(iter([message]), timeout=STREAM_TIMEOUT_S))
        assert [(a.allowed, a.reason) for a in result.responses] == [(True, "OK"), (False, "INSUFFICIENT_CREDIT")]
        assert amounts(next(oax)) == ("8", "1", "7", "2")
        grant(client, "owx", "g", "5")
        second = next(owx)
        owx_stream.cancel()
        oax_stream.cancel()
        assert amounts(second) == ("5", "0", "5", "0")
        assert release(client, "oax", "oax-h") == "1"


def test_low_balance_fires_for_a_customer_whose_only_grant_starts_later(server: ServerProcess) -> None:
    """AlertType LOW_BALANCE: "a customer whose only grant starts later has 0 available and fires it", and
    CREDITS_EXHAUSTED alike: ALLOW `fgx`, rules LOW_BALANCE below 1 and CREDITS_EXHAUSTED; a grant of 50 starting
    tomorrow is the change: both fire, with credits_available "0"."""
    with server.client() as client:
        customer(client, "fgx", block=False)
        for kind, threshold in ((alerts_pb2.LOW_BALANCE, "1"), (alerts_pb2.CREDITS_EXHAUSTED, "")):
            client.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(customer_id="fgx", type=kind, threshold=threshold))
        after = newest_alert_seq(client)
        grant(client, "fgx", "later", "50", starts_at_ms=now_ms() + 86_400_000)
        assert totals(client, "fgx") == ("0", "0", "0")
        fired = alerts_after(client, after, 2)
        assert sorted((a.customer_id, alerts_pb2.AlertType.Name(a.type), dict(a.details)) for a in fired) == [
            ("fgx", "CREDITS_EXHAUSTED", {"credits_available": "0"}),
            ("fgx", "LOW_BALANCE", {"credits_available": "0", "threshold": "1"}),
        ]


def test_an_expiry_fires_for_every_rule_of_its_type_watching_the_customer(server: ServerProcess) -> None:
    """README: RESERVATION_EXPIRED "fire[s] once per event ..., for every rule of their type watching the customer":
    a rule for `rex` and one for every customer; a hold of 2 units (of 6 credits) with a 300 ms TTL runs out: two
    alerts, one per rule, each with reservation_id "rex-h" and released "2". The rule for every customer is deleted
    afterwards, so that it fires for no other test."""
    with server.client() as client:
        customer(client, "rex", block=True)
        grant(client, "rex", "g", "6")
        mine = client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(id="rex-exp", customer_id="rex", type=alerts_pb2.RESERVATION_EXPIRED)
        )
        every = client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(id="all-exp", all=True, type=alerts_pb2.RESERVATION_EXPIRED)
        )
        try:
            after = newest_alert_seq(client)
            assert hold(client, "rex", 2, "rex-h", ttl=Duration(nanos=300_000_000))[:2] == (True, "OK")
            fired = alerts_after(client, after, 2)
        finally:
            client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id=every.id))
        assert sorted(
            (a.rule_id, a.customer_id, a.details["reservation_id"], a.details["released"]) for a in fired
        ) == [
            (every.id, "rex", "rex-h", "2"),
            (mine.id, "rex", "rex-h", "2"),
        ]
        assert fired[0].journal_seq == fired[1].journal_seq
        assert totals(client, "rex") == ("6", "0", "6")


def test_a_release_answers_alike_whatever_happens_to_the_hold_after_it(server: ServerProcess) -> None:
    """ReleaseReservation: "again, it answers the same amount and changes nothing", also once the TTL the released
    hold had has passed (it was released, not expired) and after an event naming it (noticed RELEASED, rated as any
    event, settling nothing). BLOCK `rax` with 10 credits: a hold of 3 units with a 200 ms TTL, released: "3", 10
    available. An event of 2 units naming it: noticed, charged 2 (8 left). Past the TTL, the release answers "3"
    again and the balance stays (8, 0, 8). A hold of 1 unit with a 200 ms TTL, not released, runs out: its release
    is FAILED_PRECONDITION, twice alike."""
    with server.client() as client:
        customer(client, "rax", block=True)
        grant(client, "rax", "g", "10")
        short = Duration(nanos=200_000_000)
        assert hold(client, "rax", 3, "rax-h", ttl=short)[:2] == (True, "OK")
        assert release(client, "rax", "rax-h") == "3"
        assert totals(client, "rax") == ("10", "0", "10")
        ack = client.ingest_batch([event("rax-1", "rax", 2, reservation_id="rax-h")])
        assert ack.accepted == 1
        assert [usage_pb2.NoticeReason.Name(n.reason) for n in ack.notices] == ["NOTICE_RESERVATION_RELEASED"]
        assert hold(client, "rax", 1, "rax-x", ttl=short)[:2] == (True, "OK")
        deadline = now_ms() + 10_000
        while totals(client, "rax") != ("8", "0", "8") and now_ms() < deadline:
            time.sleep(0.05)
        assert release(client, "rax", "rax-h") == "3"
        assert release(client, "rax", "rax-h") == "3"
        assert totals(client, "rax") == ("8", "0", "8")
        for _ in range(2):
            code, _, details = refused(lambda: release(client, "rax", "rax-x"))
            assert code == "FAILED_PRECONDITION" and "expired" in details, details


def refused_after(
    client: TariffClient, messages: list[balance_pb2.AuthorizeBatch]
) -> tuple[str, list[str], list[tuple[str, bool]]]:
    """Sends `messages` on one AuthorizeBatches stream that must end refused: (status name, the fields named, the
    (request_id, allowed) of each answer received before the refusal)."""
    answered: list[tuple[str, bool]] = []

    def read() -> None:
        for result in client.balance.AuthorizeBatches(iter(messages), timeout=STREAM_TIMEOUT_S):
            answered.extend((a.request_id, a.allowed) for a in result.responses)

    code, fields, _ = refused(read)
    return code, fields, answered


def test_a_message_refused_whole_holds_nothing_of_its_own_nor_behind_it(server: ServerProcess) -> None:
    """AuthorizeBatches: a message with a request without request_id, or with one over 256 bytes, "is refused whole
    (INVALID_ARGUMENT naming requests[i].request_id; nothing of it is decided or held, the answers to the messages
    before it are sent, then the stream ends)"; "After a message refused whole, no message sent behind it is decided
    or held". BLOCK `mwx` with 10 credits; messages sent at once: [hold 1 unit "mwx-1"], [hold 2 units "mwx-2", a
    request with no request_id (or one of 257 bytes)], [hold 3 units "mwx-3"]: one answer (mwx-1 allowed), then
    INVALID_ARGUMENT naming requests[1].request_id; only mwx-1 is held: (10, 1, 9)."""
    with server.client() as client:
        customer(client, "mwx", block=True)
        grant(client, "mwx", "g", "10")
        for n, bad_id in enumerate(("", "q" * 257)):
            made = [f"mwx-{n}-{i}" for i in (1, 2, 3)]
            messages = [
                balance_pb2.AuthorizeBatch(requests=[hold_request("mwx", 1, made[0], request_id="a")]),
                balance_pb2.AuthorizeBatch(
                    requests=[
                        hold_request("mwx", 2, made[1], request_id="b"),
                        hold_request("mwx", 1, "", request_id=bad_id),
                    ]
                ),
                balance_pb2.AuthorizeBatch(requests=[hold_request("mwx", 3, made[2], request_id="c")]),
            ]
            code, fields, answered = refused_after(client, messages)
            assert (code, fields, answered) == ("INVALID_ARGUMENT", ["requests[1].request_id"], [("a", True)])
            assert totals(client, "mwx") == ("10", "1", "9")
            assert release(client, "mwx", made[0]) == "1"
            for never in made[1:]:
                assert refused(functools.partial(release, client, "mwx", never))[0] == "NOT_FOUND"


def test_a_page_size_over_1000_lists_1000_rules_and_pages_on(server: ServerProcess) -> None:
    """ListAlertRules: page_size "at most 1,000"; README "Paged lists": "more than 1,000 read as 1,000". With at
    least 1,001 rules (600 CREDITS_EXHAUSTED rules of `pgx`, 401 of `pgy`: each under the 1,000 a customer may
    have), page_size 5,000 answers the first 1,000 in id order and the 1,000th's id as next_page_token; the next page
    holds the rest, with no token."""
    with server.client() as client:
        for customer_id, count in (("pgx", 600), ("pgy", 401)):
            customer(client, customer_id, block=False)
            for n in range(count):
                client.alerts.CreateAlert(
                    alerts_pb2.CreateAlertRequest(
                        id=f"{customer_id}-{n:04d}", customer_id=customer_id, type=alerts_pb2.CREDITS_EXHAUSTED
                    )
                )
        listing = alerts_pb2.ListAlertRulesRequest
        first = client.alerts.ListAlertRules(listing(page_size=5000))
        ids = [r.id for r in first.rules]
        assert len(ids) == 1000 and ids == sorted(ids) and first.next_page_token == ids[-1]
        rest = client.alerts.ListAlertRules(listing(page_size=5000, page_token=first.next_page_token))
        more = [r.id for r in rest.rules]
        assert rest.next_page_token == "" and more == sorted(more) and more[0] > ids[-1]
        assert {f"pgx-{n:04d}" for n in range(600)} | {f"pgy-{n:04d}" for n in range(401)} <= set(ids + more)


def test_an_override_and_a_top_up_policy_are_each_sent_to_a_watcher(server: ServerProcess) -> None:
    """README "Watching balances and alerts": the newest balance "after every committed change that touches the
    customer (... a grant, a contract, an override ...)". ALLOW `ovx` (contract from this month's start, grant 4):
    watched from (4, 0, 4, 0); an override halving `units` (priced only for what is rated after it): a balance with a
    later as_of_seq, amounts alike; a top-up policy (below 1, back to 10): another; then 4 units cost 2, leaving 2
    (not below 1: nothing bought): (2, 0, 2, 2).
    """
    with server.client() as client:
        contract_id = customer(client, "ovx", block=False)
        grant(client, "ovx", "g", "4")
        stream, balances = watch(client, "ovx")
        first = next(balances)
        assert amounts(first) == ("4", "0", "4", "0")
        override = contracts_pb2.PriceOverride(id="ovx-half", product_id="units", multiplier="0.5")
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=override))
        after_override = next(balances)
        policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="10", price_per_credit="1", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=contract_id, top_up=policy))
        after_policy = next(balances)
        spend(client, "ovx", "ovx-1", 4)
        after_usage = next(balances)
        stream.cancel()
        assert amounts(after_override) == amounts(after_policy) == ("4", "0", "4", "0")
        assert first.as_of_seq < after_override.as_of_seq < after_policy.as_of_seq < after_usage.as_of_seq
        assert amounts(after_usage) == ("2", "0", "2", "2")
