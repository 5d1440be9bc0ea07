"""Alert rules and the alerts they fire: CreateAlert, the crossing logic, and the bounded alert log.

Sans-I/O and deterministic: a rule's conditions are evaluated after each journal record for the customers it
touched, from the balance the kernel holds at that record's time, so replaying the journal fires exactly the
same alerts with the same sequence numbers. Balance conditions fire once per crossing: a rule fires for a
customer when its condition holds and had not held at the previous evaluation; it fires again only after an
evaluation found the condition cleared. SPEND_THRESHOLD fires once per billing period of a customer, unless a
re-rating lowers the period's charges below its threshold (cleared: reaching it again fires again).
Event alerts (TOP_UP_EXECUTED, RESERVATION_EXPIRED) fire once per notice the rating kernel reports.

The state lives in BillingState (engine/control.py) so that snapshots hold it: the rules, which (rule,
customer) pairs stand fired, the newest ALERTS_KEPT alerts and the last alert sequence number.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import msgspec

from engine.errors import InvalidArgument
from engine.money import DECIMAL_CONTEXT, format_picos, parse_decimal, to_picos

# The alert log keeps this many of the newest alerts (snapshots and restarts included); a watcher asking for
# alerts after an older seq is refused (see alerts_after).
ALERTS_KEPT = 10_000


class AlertType(enum.StrEnum):
    LOW_BALANCE = "LOW_BALANCE"
    SPEND_THRESHOLD = "SPEND_THRESHOLD"
    CREDITS_EXHAUSTED = "CREDITS_EXHAUSTED"
    TOP_UP_EXECUTED = "TOP_UP_EXECUTED"
    RESERVATION_EXPIRED = "RESERVATION_EXPIRED"


THRESHOLD_TYPES = frozenset({AlertType.LOW_BALANCE, AlertType.SPEND_THRESHOLD})
BALANCE_TYPES = frozenset({AlertType.LOW_BALANCE, AlertType.SPEND_THRESHOLD, AlertType.CREDITS_EXHAUSTED})
NOTICE_TYPES = frozenset({AlertType.TOP_UP_EXECUTED, AlertType.RESERVATION_EXPIRED})


class AlertRule(msgspec.Struct, frozen=True, gc=False):
    id: str
    customer_id: str  # "" for every customer
    type: AlertType
    threshold_picos: int  # 0 for the types that take none
    created_seq: int

    def applies_to(self, customer_id: str) -> bool:
        return not self.customer_id or self.customer_id == customer_id


class FiredAlert(msgspec.Struct, frozen=True, array_like=True, gc=False):
    seq: int
    rule_id: str
    customer_id: str
    type: AlertType
    message: str
    at_ms: int
    journal_seq: int  # the journal record whose change fired it
    details: dict[str, str]


@dataclass(frozen=True, slots=True)
class Standing:
    """What balance conditions read of one customer at one moment (picos)."""

    available_picos: int
    period_charges_picos: int
    period_start_ms: int | None  # None: no contract in force
    has_grants: bool


class AlertBook(msgspec.Struct):
    """The alert state a snapshot keeps (a field of BillingState)."""

    rules: dict[str, AlertRule] = {}
    # "rule_id/customer_id" -> the period start (SPEND_THRESHOLD) or 0: the rule's condition held for that
    # customer at the last evaluation and it fired. Absent: clear. Ids hold no "/".
    fired: dict[str, int] = {}
    log: list[FiredAlert] = []  # the newest ALERTS_KEPT alerts, oldest first
    last_seq: int = 0


class PrunedAlerts(Exception):
    """Alerts a watcher asked for are no longer kept: `first_kept` is the oldest seq still held."""

    def __init__(self, first_kept: int) -> None:
        super().__init__(first_kept)
        self.first_kept = first_kept


def parse_rule(
    rule_id: str, customer_id: str, all_customers: bool, type_name: str, threshold: str, seq: int
) -> AlertRule:
    """A rule from CreateAlert's fields, checked completely (InvalidArgument naming the field); the id, when
    empty, is named after the content, so the same request twice is the same rule (a retry creates one)."""
    if customer_id and all_customers:
        raise InvalidArgument.field("scope", "set customer_id or all, not both")
    if not customer_id and not all_customers:
        raise InvalidArgument.field("scope", "customer_id or all is required")
    try:
        kind = AlertType(type_name)
    except ValueError:
        raise InvalidArgument.field("type", f"must be one of {', '.join(AlertType)}, not {type_name!r}") from None
    threshold_picos = 0
    if kind in THRESHOLD_TYPES:
        if not threshold:
            raise InvalidArgument.field("threshold", f"is required for {kind}")
        value = parse_decimal(threshold, "threshold")  # refuses a negative one
        threshold_picos = to_picos(value)
        if threshold_picos != value.scaleb(12, context=DECIMAL_CONTEXT):  # exact, where `* 10**12` rounds at 28 digits
            raise InvalidArgument.field("threshold", f"{threshold!r} has more than 12 decimal places")
        if threshold_picos <= 0:
            raise InvalidArgument.field("threshold", f"must be greater than 0 for {kind}")
    elif threshold:
        raise InvalidArgument.field("threshold", f"{kind} takes no threshold")
    if not rule_id:
        content = f"{customer_id}\n{int(all_customers)}\n{kind}\n{threshold_picos}".encode()
        rule_id = "alert-" + hashlib.blake2b(content, digest_size=8).hexdigest()
    return AlertRule(rule_id, customer_id, kind, threshold_picos, seq)


def customers_to_evaluate(book: AlertBook, touched: Iterable[str]) -> list[str]:
    """Of the customers a record touched, those some balance rule watches (in the order given)."""
    rules = [r for r in book.rules.values() if r.type in BALANCE_TYPES]
    if not rules:
        return []
    if any(not r.customer_id for r in rules):
        return list(touched)
    named = {r.customer_id for r in rules}
    return [c for c in touched if c in named]


def evaluate(book: AlertBook, customer_id: str, standing: Standing, at_ms: int, journal_seq: int) -> list[FiredAlert]:
    """Applies one customer's standing after a record to every balance rule for it: fires the rules whose
    condition now holds and was clear, clears those whose condition no longer holds. Rules in creation order."""
    fired: list[FiredAlert] = []
    for rule in book.rules.values():
        if rule.type not in BALANCE_TYPES or not rule.applies_to(customer_id):
            continue
        key = f"{rule.id}/{customer_id}"
        holds, mark, details = _condition(rule, standing)
        previous = book.fired.get(key)
        if not holds:
            if previous is not None:
                del book.fired[key]
            continue
        if previous is not None and previous == mark:
            continue  # still holding since it fired: no new crossing
        book.fired[key] = mark
        fired.append(_fire(book, rule, customer_id, _message(rule, customer_id, details), at_ms, journal_seq, details))
    return fired


def notice(
    book: AlertBook, kind: str, customer_id: str, details: Mapping[str, str], at_ms: int, journal_seq: int
) -> list[FiredAlert]:
    """An event the rating kernel reported (TOP_UP_EXECUTED, RESERVATION_EXPIRED) for a customer: every rule of
    that type for the customer fires once. An unknown kind fires nothing."""
    try:
        alert_type = AlertType(kind)
    except ValueError:
        return []
    if alert_type not in NOTICE_TYPES:
        return []
    shown = dict(sorted(details.items()))
    message = _notice_message(alert_type, customer_id, shown)
    return [
        _fire(book, rule, customer_id, message, at_ms, journal_seq, shown)
        for rule in book.rules.values()
        if rule.type is alert_type and rule.applies_to(customer_id)
    ]


def as_shown(alert: FiredAlert) -> tuple[str, dict[str, str]]:
    """The message and details of an alert as clients see them. The rating kernel reports an event alert's
    amounts in picos (`credits_picos`, `released_picos`), and the alert is journaled so (replay compares it);
    clients get them as decimals in the pricing unit, named without `_picos` (`credits`, `released`), as every
    other amount. Balance alerts are shown as fired."""
    if alert.type not in NOTICE_TYPES:
        return alert.message, alert.details
    details = {
        (key.removesuffix(_PICOS_SUFFIX) if key.endswith(_PICOS_SUFFIX) else key): (
            format_picos(int(value)) if key.endswith(_PICOS_SUFFIX) else value
        )
        for key, value in alert.details.items()
    }
    return _notice_message(alert.type, alert.customer_id, details), details


_PICOS_SUFFIX = "_picos"


def _notice_message(alert_type: AlertType, customer_id: str, details: Mapping[str, str]) -> str:
    described = ", ".join(f"{k} {v}" for k, v in details.items())
    return f"{alert_type} for customer {customer_id!r}" + (f": {described}" if described else "")


def alerts_after(book: AlertBook, after_seq: int, up_to_seq: int, limit: int) -> list[FiredAlert]:
    """At most `limit` alerts with after_seq < seq <= up_to_seq, oldest first. Raises PrunedAlerts when alerts
    right after `after_seq` are no longer kept."""
    log = book.log  # one reference: a prune rebinds the list, never edits the one held here
    if not log or after_seq >= up_to_seq:
        return []
    first = log[0].seq
    if after_seq + 1 < first:
        raise PrunedAlerts(first)
    start = after_seq + 1 - first
    stop = min(up_to_seq - first + 1, start + limit, len(log))
    return log[start:stop]


def _condition(rule: AlertRule, standing: Standing) -> tuple[bool, int, dict[str, str]]:
    """(holds, the mark it fires under, what the alert reports)."""
    available = format_picos(standing.available_picos)
    if rule.type is AlertType.LOW_BALANCE:
        holds = standing.has_grants and standing.available_picos < rule.threshold_picos
        return holds, 0, {"credits_available": available, "threshold": format_picos(rule.threshold_picos)}
    if rule.type is AlertType.CREDITS_EXHAUSTED:
        return standing.has_grants and standing.available_picos <= 0, 0, {"credits_available": available}
    period_start = standing.period_start_ms
    holds = period_start is not None and standing.period_charges_picos >= rule.threshold_picos
    details = {
        "period_charges": format_picos(standing.period_charges_picos),
        "threshold": format_picos(rule.threshold_picos),
        "period_start_ms": str(period_start),
    }
    return holds, period_start or 0, details


def _message(rule: AlertRule, customer_id: str, details: dict[str, str]) -> str:
    if rule.type is AlertType.LOW_BALANCE:
        return (
            f"credits available to customer {customer_id!r} fell below {details['threshold']}: "
            f"{details['credits_available']}"
        )
    if rule.type is AlertType.CREDITS_EXHAUSTED:
        return f"customer {customer_id!r} has no credits available"
    return (
        f"customer {customer_id!r} was charged {details['period_charges']} this period, reaching the threshold "
        f"{details['threshold']}"
    )


def _fire(
    book: AlertBook,
    rule: AlertRule,
    customer_id: str,
    message: str,
    at_ms: int,
    journal_seq: int,
    details: dict[str, str],
) -> FiredAlert:
    book.last_seq += 1
    alert = FiredAlert(book.last_seq, rule.id, customer_id, rule.type, message, at_ms, journal_seq, details)
    book.log.append(alert)
    if len(book.log) > ALERTS_KEPT + ALERTS_KEPT // 10:
        # A new list, so a reader holding the old one reads on undisturbed; pruned in steps, not per alert.
        book.log = book.log[-ALERTS_KEPT:]
    return alert
