"""Alert rules: the crossing logic of engine/alerts.py on constructed standings, and the same rules applied by
the billing machine after real usage batches and grants (fires once, clears, fires again; one customer or all),
replayed into identical alerts."""

from __future__ import annotations

import msgspec
import pytest
from tariff.v1 import usage_pb2

from engine import alerts
from engine import commands as cmd
from engine.alerts import AlertBook, AlertType, FiredAlert, Standing
from engine.billing import Billing
from engine.control import encode_state_parts
from engine.errors import AlreadyExists, InvalidArgument, NotFound, Repeated
from engine.ledger import GrantKind
from tests.engine_fixtures import ACTOR, EPOCH_MS, HOUR_MS, basic_world, picos
from tests.kernel_fixtures import usage_event


def _rule(book: AlertBook, kind: AlertType, threshold: str = "", customer_id: str = "acme") -> alerts.AlertRule:
    rule = alerts.parse_rule("", customer_id, not customer_id, kind, threshold, len(book.rules) + 1)
    book.rules[rule.id] = rule
    return rule


def _standing(available: str, charges: str = "0", period_start_ms: int | None = EPOCH_MS) -> Standing:
    return Standing(picos(available), picos(charges), period_start_ms, has_grants=True)


def test_low_balance_fires_once_per_crossing_clears_and_fires_again() -> None:
    book = AlertBook()
    _rule(book, AlertType.LOW_BALANCE, "100")
    fired = alerts.evaluate(book, "acme", _standing("150"), EPOCH_MS, 1)
    assert fired == []
    [first] = alerts.evaluate(book, "acme", _standing("90"), EPOCH_MS + 1, 2)
    assert (first.seq, first.type, first.customer_id, first.journal_seq) == (1, AlertType.LOW_BALANCE, "acme", 2)
    assert first.details == {"credits_available": "90", "threshold": "100"}
    # Still below: no new crossing, however far it falls.
    assert alerts.evaluate(book, "acme", _standing("50"), EPOCH_MS + 2, 3) == []
    assert alerts.evaluate(book, "acme", _standing("0"), EPOCH_MS + 3, 4) == []
    # Back at the threshold clears (the condition is strictly below), and the next fall fires again.
    assert alerts.evaluate(book, "acme", _standing("100"), EPOCH_MS + 4, 5) == []
    [again] = alerts.evaluate(book, "acme", _standing("99.5"), EPOCH_MS + 5, 6)
    assert again.seq == 2
    assert [a.seq for a in book.log] == [1, 2]


def test_a_rule_for_all_customers_fires_once_per_customer() -> None:
    book = AlertBook()
    rule = _rule(book, AlertType.CREDITS_EXHAUSTED, customer_id="")
    assert rule.customer_id == "" and rule.threshold_picos == 0
    assert alerts.customers_to_evaluate(book, ["acme", "globex"]) == ["acme", "globex"]
    fired = [a for c in ("acme", "globex", "acme") for a in alerts.evaluate(book, c, _standing("0"), EPOCH_MS, 1)]
    assert [(a.customer_id, a.seq) for a in fired] == [("acme", 1), ("globex", 2)]
    assert alerts.evaluate(book, "acme", _standing("5"), EPOCH_MS, 2) == []  # acme clears
    assert [a.customer_id for a in alerts.evaluate(book, "acme", _standing("0"), EPOCH_MS, 3)] == ["acme"]
    assert alerts.evaluate(book, "globex", _standing("0"), EPOCH_MS, 3) == []  # globex never cleared


def test_a_rule_for_one_customer_ignores_the_others() -> None:
    book = AlertBook()
    _rule(book, AlertType.LOW_BALANCE, "10", customer_id="acme")
    assert alerts.customers_to_evaluate(book, ["globex", "acme"]) == ["acme"]
    assert alerts.evaluate(book, "globex", _standing("1"), EPOCH_MS, 1) == []
    assert len(alerts.evaluate(book, "acme", _standing("1"), EPOCH_MS, 1)) == 1


def test_balance_conditions_need_a_grant() -> None:
    book = AlertBook()
    _rule(book, AlertType.LOW_BALANCE, "10")
    _rule(book, AlertType.CREDITS_EXHAUSTED)
    no_grants = Standing(0, 0, EPOCH_MS, has_grants=False)
    assert alerts.evaluate(book, "acme", no_grants, EPOCH_MS, 1) == []
    kinds = [a.type for a in alerts.evaluate(book, "acme", _standing("0"), EPOCH_MS, 2)]
    assert kinds == [AlertType.LOW_BALANCE, AlertType.CREDITS_EXHAUSTED]


def test_spend_threshold_fires_once_per_period() -> None:
    book = AlertBook()
    _rule(book, AlertType.SPEND_THRESHOLD, "50")
    period_2 = EPOCH_MS + 31 * 24 * HOUR_MS
    assert alerts.evaluate(book, "acme", _standing("0", "49.99"), EPOCH_MS, 1) == []
    [first] = alerts.evaluate(book, "acme", _standing("0", "50"), EPOCH_MS, 2)
    assert first.details["period_charges"] == "50"
    assert alerts.evaluate(book, "acme", _standing("0", "80"), EPOCH_MS, 3) == []
    # A new period whose first change already reaches the threshold: a new crossing, without a clear between.
    [second] = alerts.evaluate(book, "acme", _standing("0", "60", period_2), period_2, 4)
    assert second.details["period_start_ms"] == str(period_2)
    # No contract in force: nothing holds.
    assert alerts.evaluate(book, "acme", _standing("0", "60", None), period_2, 5) == []


def test_notices_fire_every_matching_rule_once_per_notice() -> None:
    book = AlertBook()
    _rule(book, AlertType.TOP_UP_EXECUTED, customer_id="")
    _rule(book, AlertType.TOP_UP_EXECUTED, customer_id="acme")
    _rule(book, AlertType.RESERVATION_EXPIRED, customer_id="globex")
    topped = alerts.notice(book, "TOP_UP_EXECUTED", "acme", {"amount": "100", "grant_id": "t-1"}, EPOCH_MS, 7)
    assert [(a.type, a.customer_id, a.journal_seq) for a in topped] == [(AlertType.TOP_UP_EXECUTED, "acme", 7)] * 2
    assert topped[0].details == {"amount": "100", "grant_id": "t-1"}
    assert "grant_id t-1" in topped[0].message
    assert len(alerts.notice(book, "TOP_UP_EXECUTED", "acme", {"amount": "100"}, EPOCH_MS, 8)) == 2  # no crossing
    assert alerts.notice(book, "RESERVATION_EXPIRED", "acme", {}, EPOCH_MS, 9) == []  # not acme's rule
    [expired] = alerts.notice(book, "RESERVATION_EXPIRED", "globex", {"reservation_id": "r-1"}, EPOCH_MS, 9)
    assert expired.seq == 5
    assert alerts.notice(book, "LOW_BALANCE", "acme", {}, EPOCH_MS, 10) == []  # not an event kind
    assert alerts.notice(book, "SOMETHING_ELSE", "acme", {}, EPOCH_MS, 10) == []


@pytest.mark.parametrize(
    ("customer_id", "all_customers", "kind", "threshold", "field"),
    [
        ("acme", False, "LOW_BALANCE", "-1", "threshold"),
        ("acme", False, "LOW_BALANCE", "0", "threshold"),
        ("acme", False, "LOW_BALANCE", "", "threshold"),
        ("acme", False, "SPEND_THRESHOLD", "1.0000000000001", "threshold"),
        ("acme", False, "SPEND_THRESHOLD", "abc", "threshold"),
        ("acme", False, "CREDITS_EXHAUSTED", "5", "threshold"),
        ("acme", False, "ALERT_TYPE_UNSPECIFIED", "", "type"),
        ("", False, "LOW_BALANCE", "5", "scope"),
        ("acme", True, "LOW_BALANCE", "5", "scope"),
    ],
)
def test_bad_rules_are_refused_naming_the_field(
    customer_id: str, all_customers: bool, kind: str, threshold: str, field: str
) -> None:
    with pytest.raises(InvalidArgument) as refused:
        alerts.parse_rule("", customer_id, all_customers, kind, threshold, 1)
    assert refused.value.violations[0][0] == field


def test_alerts_after_pages_and_refuses_pruned_seqs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(alerts, "ALERTS_KEPT", 10)
    book = AlertBook()
    _rule(book, AlertType.TOP_UP_EXECUTED)
    for seq in range(1, 12):
        alerts.notice(book, "TOP_UP_EXECUTED", "acme", {}, EPOCH_MS, seq)
    assert [a.seq for a in alerts.alerts_after(book, 0, 11, 100)] == list(range(1, 12))  # 11 <= 10 + 10% kept
    alerts.notice(book, "TOP_UP_EXECUTED", "acme", {}, EPOCH_MS, 12)
    assert [a.seq for a in book.log] == list(range(3, 13))  # pruned to the newest 10
    with pytest.raises(alerts.PrunedAlerts) as pruned:
        alerts.alerts_after(book, 1, 12, 100)
    assert pruned.value.first_kept == 3
    assert [a.seq for a in alerts.alerts_after(book, 2, 12, 100)] == list(range(3, 13))
    assert [a.seq for a in alerts.alerts_after(book, 5, 8, 100)] == [6, 7, 8]  # up to the committed seq
    assert [a.seq for a in alerts.alerts_after(book, 5, 12, 2)] == [6, 7]
    assert alerts.alerts_after(book, 12, 12, 100) == []


# The billing machine: rules applied after real batches and admin commands ------------------------------------


def _billing() -> Billing:
    world = basic_world()
    world.grant("g-1", "100")
    world.customer("globex")
    world.contract("c-globex", customer_id="globex")
    world.grant("g-globex", "100", customer_id="globex")
    return Billing(world.engine)


def _create_alert(billing: Billing, kind: str, threshold: str = "", customer_id: str = "acme") -> object:
    command = cmd.CreateAlert(EPOCH_MS, ACTOR, "", customer_id, not customer_id, kind, threshold)
    return billing.apply(command, billing.last_seq + 1)


def _batch(*events: tuple[str, str, float]) -> bytes:
    """Events as (transaction id, customer, tokens), one credit per token."""
    return usage_pb2.UsageBatch(
        batch_id="b",
        events=[usage_event(t, EPOCH_MS + HOUR_MS, {"tokens": n}, customer_id=c) for t, c, n in events],
    ).SerializeToString()


def _run(billing: Billing, journal: list[object], batch: bytes) -> list[FiredAlert]:
    done = billing.ingest(batch, EPOCH_MS + 2 * HOUR_MS)
    journal.append((batch, done.digest, list(done.alerts)))
    return list(done.alerts)


def test_billing_fires_after_batches_and_a_grant_clears_and_replay_repeats_them() -> None:
    billing = _billing()
    journal: list[object] = []
    start_seq = billing.last_seq
    snapshot = billing.encode_snapshot()
    rule = _create_alert(billing, "LOW_BALANCE", "30", customer_id="")
    journal.append(("alert", rule))
    assert _run(billing, journal, _batch(("t1", "acme", 50), ("t2", "globex", 10))) == []
    fired = _run(billing, journal, _batch(("t3", "acme", 30), ("t4", "acme", 1)))
    assert [(a.customer_id, a.details["credits_available"]) for a in fired] == [("acme", "19")]
    assert _run(billing, journal, _batch(("t5", "acme", 9))) == []  # still below
    # A grant lifts acme above the threshold: the condition clears (nothing fires), and falling again fires.
    grant = cmd.GrantCredits(
        EPOCH_MS, ACTOR, "g-2", "acme", "", GrantKind.PREPAID, "100", "0", 0, (), EPOCH_MS, None, ""
    )
    billing.apply(grant, billing.last_seq + 1)
    assert billing.take_fired() == []
    journal.append(("grant", grant))
    again = _run(billing, journal, _batch(("t6", "acme", 90), ("t7", "globex", 80)))
    assert [(a.seq, a.customer_id) for a in again] == [(2, "acme"), (3, "globex")]
    assert [a.seq for a in billing.engine.state.alerts.log] == [1, 2, 3]

    # A replay of the same records from the snapshot fires the same alerts with the same seqs.
    replayed = Billing.from_snapshot(snapshot)
    assert replayed.last_seq == start_seq
    for entry in journal:
        seq = replayed.last_seq + 1
        match entry:
            case ("alert", _):
                _create_alert(replayed, "LOW_BALANCE", "30", customer_id="")
            case ("grant", command):
                assert isinstance(command, cmd.GrantCredits)
                replayed.apply(command, seq)
            case (bytes() as batch, digest, fired_then):
                replayed.replay(seq, batch, EPOCH_MS + 2 * HOUR_MS, digest, fired_then)  # type: ignore[arg-type]
    assert replayed.engine.state.alerts == billing.engine.state.alerts


def test_billing_lists_touched_customers_only_while_watched() -> None:
    billing = _billing()
    assert billing.ingest(_batch(("t1", "acme", 1)), EPOCH_MS + 2 * HOUR_MS).touched == ()
    billing.set_watching(True)
    done = billing.ingest(_batch(("t2", "globex", 1), ("t3", "acme", 1), ("t4", "globex", 1)), EPOCH_MS + 2 * HOUR_MS)
    assert done.touched == ("globex", "acme")
    refused = billing.ingest(_batch(("t5", "nobody", 1)), EPOCH_MS + 2 * HOUR_MS)
    assert refused.touched == ()
    # A duplicate changes nothing, so touches nothing: only the accepted event's customer is listed.
    mixed = billing.ingest(_batch(("t2", "globex", 1), ("t7", "acme", 2)), EPOCH_MS + 2 * HOUR_MS)
    assert (mixed.duplicates, mixed.touched) == (1, ("acme",))
    billing.set_watching(False)
    assert billing.ingest(_batch(("t6", "acme", 1)), EPOCH_MS + 2 * HOUR_MS).touched == ()


def test_create_alert_is_checked_and_a_retry_creates_one_rule() -> None:
    billing = _billing()
    seq = billing.last_seq
    with pytest.raises(NotFound):
        _create_alert(billing, "LOW_BALANCE", "5", customer_id="nobody")
    with pytest.raises(InvalidArgument):
        _create_alert(billing, "LOW_BALANCE", "-5")
    assert billing.last_seq == seq and billing.engine.state.alerts.rules == {}
    rule = _create_alert(billing, "LOW_BALANCE", "5")
    assert isinstance(rule, alerts.AlertRule) and rule.id.startswith("alert-")
    with pytest.raises(Repeated) as repeated:
        _create_alert(billing, "LOW_BALANCE", "5")
    assert repeated.value.result == rule
    named = cmd.CreateAlert(EPOCH_MS, ACTOR, rule.id, "acme", False, "LOW_BALANCE", "6")
    with pytest.raises(AlreadyExists):
        billing.apply(named, billing.last_seq + 1)
    assert list(billing.engine.state.alerts.rules) == [rule.id]


def test_a_snapshot_splits_the_alert_book_into_parts_byte_for_byte() -> None:
    billing = _billing()
    _create_alert(billing, "TOP_UP_EXECUTED", customer_id="")
    _create_alert(billing, "CREDITS_EXHAUSTED", customer_id="")
    book = billing.engine.state.alerts
    for index in range(20):
        alerts.notice(book, "TOP_UP_EXECUTED", f"c-{index}", {"amount": "1"}, EPOCH_MS, index + 1)
        alerts.evaluate(book, f"c-{index}", Standing(0, 0, EPOCH_MS, has_grants=True), EPOCH_MS, index + 1)
    state = billing.engine.state
    parts = list(encode_state_parts(state, 3))
    assert b"".join(parts) == msgspec.json.encode(state)
    # 20 TOP_UP_EXECUTED alerts in the log, at most 3 a part: the log is split, not encoded in one part.
    assert sum(1 for part in parts if b'"TOP_UP_EXECUTED"' in part) >= 20 // 3
    assert Billing.from_snapshot(billing.encode_snapshot()).engine.state.alerts == book


def test_close_due_periods_evaluates_the_customers_it_closed_only_when_the_server_set_alerts_evaluated() -> None:
    """acme's one grant expires at the end of its January: no credit is left, a change of no record of acme's. The
    server's CloseDuePeriods (alerts_evaluated) fires the customers' rules at the close, as ClosePeriod does; one
    recorded by an earlier release (without the field) replays as it did then: no alert, and the same audit
    entry either way (the field is the server's: commands.SERVER_SET_FIELDS)."""
    feb_ms = EPOCH_MS + 31 * 24 * HOUR_MS
    fired_by: dict[bool, list[tuple[str, AlertType, str]]] = {}
    entries: dict[bool, str] = {}
    for evaluated in (False, True):
        world = basic_world()
        world.grant("g-1", "100", expires_at_ms=feb_ms)
        billing = Billing(world.engine)
        _create_alert(billing, "CREDITS_EXHAUSTED")
        billing.apply(cmd.AdvanceClock(feb_ms, "clock"), billing.last_seq + 1)
        assert billing.take_fired() == []  # the expiry evaluates no rule (the kernel names no customer)
        close = cmd.CloseDuePeriods(
            feb_ms + 24 * HOUR_MS, ACTOR, 0, 1, rollovers_shown=True, alerts_evaluated=evaluated
        )
        closed = billing.apply(close, billing.last_seq + 1)
        assert [i.customer_id for i in closed] == ["acme"]  # type: ignore[attr-defined]
        fired_by[evaluated] = [(a.customer_id, a.type, a.details["credits_available"]) for a in billing.take_fired()]
        entries[evaluated] = billing.engine.state.audit[-1].diff
    assert fired_by == {False: [], True: [("acme", AlertType.CREDITS_EXHAUSTED, "0")]}
    assert entries[False] == entries[True] and "alerts_evaluated" not in entries[True]


def test_a_deleted_rule_fires_no_more_even_with_another_created_before_the_next_evaluation() -> None:
    """Rule A (every customer, below 30) fires for acme; A is deleted and rule B (acme only, below 60) created before
    any evaluation, so the book holds as many rules as the index has seen: acme falling further fires B, never A.
    The delete again answers A and changes nothing; A's id is not created again; replay from a snapshot taken
    before, and a snapshot taken after, hold the same book (A among the deleted, its alerts in the log)."""
    billing = _billing()
    journal: list[object] = []
    snapshot = billing.encode_snapshot()
    created = cmd.CreateAlert(EPOCH_MS, ACTOR, "a", "", True, "LOW_BALANCE", "30")
    billing.apply(created, billing.last_seq + 1)
    journal.append(created)
    [first] = _run(billing, journal, _batch(("t1", "acme", 71)))
    assert (first.rule_id, first.customer_id) == ("a", "acme")
    delete = cmd.DeleteAlertRule(EPOCH_MS, ACTOR, "a")
    gone = billing.apply(delete, billing.last_seq + 1)
    journal.append(delete)
    assert isinstance(gone, alerts.AlertRule) and gone.id == "a"
    other = cmd.CreateAlert(EPOCH_MS, ACTOR, "b", "acme", False, "LOW_BALANCE", "60")
    billing.apply(other, billing.last_seq + 1)
    journal.append(other)
    book = billing.engine.state.alerts
    assert (list(book.rules), list(book.deleted), book.fired) == (["b"], ["a"], {})
    # acme at 29 credits: B's condition holds (it fires, first evaluated now); A's would hold and not fire again.
    # Clearing to 100 and falling to 20 would fire A again, were it still evaluated.
    assert [a.rule_id for a in _run(billing, journal, _batch(("t2", "acme", 0.5)))] == ["b"]
    grant = cmd.GrantCredits(
        EPOCH_MS, ACTOR, "g-2", "acme", "", GrantKind.PREPAID, "71", "0", 0, (), EPOCH_MS, None, ""
    )
    billing.apply(grant, billing.last_seq + 1)
    journal.append(grant)
    assert billing.take_fired() == []
    assert [a.rule_id for a in _run(billing, journal, _batch(("t3", "acme", 80)))] == ["b"]
    seq = billing.last_seq
    with pytest.raises(Repeated) as repeated:
        billing.apply(delete, seq + 1)
    assert repeated.value.result == gone and billing.last_seq == seq
    with pytest.raises(NotFound, match="alert rule 'c' does not exist"):
        billing.apply(cmd.DeleteAlertRule(EPOCH_MS, ACTOR, "c"), seq + 1)
    with pytest.raises(AlreadyExists, match="'a' was deleted"):
        billing.apply(created, seq + 1)
    assert billing.last_seq == seq and list(book.rules) == ["b"]

    replayed = Billing.from_snapshot(snapshot)
    for entry in journal:
        if isinstance(entry, tuple):
            batch, digest, fired_then = entry
            replayed.replay(replayed.last_seq + 1, batch, EPOCH_MS + 2 * HOUR_MS, digest, fired_then)
        else:
            assert isinstance(entry, cmd.CreateAlert | cmd.DeleteAlertRule | cmd.GrantCredits)
            replayed.apply(entry, replayed.last_seq + 1)
    assert replayed.engine.state.alerts == book
    assert [a.rule_id for a in book.log] == ["a", "b", "b"]
    assert Billing.from_snapshot(billing.encode_snapshot()).engine.state.alerts == book
