"""Alert rules and the alerts they fire: CreateAlert and DeleteAlertRule, the crossing logic, and the bounded alert
log.

Sans-I/O and deterministic: a rule's conditions are evaluated after each journal record for the customers it
touched, from the balance the kernel holds at that record's time, so replaying the journal fires exactly the
same alerts with the same sequence numbers. Balance conditions fire once per crossing: a rule fires for a
customer when its condition holds and had not held at the previous evaluation; it fires again only after an
evaluation found the condition cleared. SPEND_THRESHOLD fires once per billing period of a customer, unless the
period's charges fall below its threshold (a re-rating, or usage giving charges back such as a falling LATEST gauge:
cleared, so reaching it again fires again).
Event alerts (TOP_UP_EXECUTED, RESERVATION_EXPIRED) fire once per notice the rating kernel reports.

The state lives in BillingState (engine/control.py) so that snapshots hold it: the rules, which (rule,
customer) pairs stand fired, the newest ALERTS_KEPT alerts, the last alert sequence number and the deleted rules.
"""

from __future__ import annotations

import enum
import hashlib
import heapq
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

import msgspec

from engine.errors import InvalidArgument, LimitReached
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
    # The deleted rules by id, as they were (DeleteAlertRule): a retry of the delete is answered with one, and no
    # rule takes a deleted one's id again. Absent from snapshots of earlier releases (none was deleted then).
    deleted: dict[str, AlertRule] = {}


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


# Rules watching one customer, and rules watching every customer, held at most: each of them is evaluated after every
# change to a customer it watches, so unbounded they made each usage batch cost without limit. Checked when a
# command the server marked `rules_bounded` applies (engine/state.py); commands journaled before replay as they were.
ALERT_RULES_PER_SCOPE_MAX = 1_000


def check_rules_room(rules: Mapping[str, AlertRule], rule: AlertRule) -> None:
    """LimitReached (RESOURCE_EXHAUSTED) when the scope of `rule`, a new rule, holds ALERT_RULES_PER_SCOPE_MAX
    rules already. A scan of the rules: CreateAlert is rare, and a count kept beside them would have to follow
    every rebuild of the book."""
    held = sum(1 for each in rules.values() if each.customer_id == rule.customer_id)
    if held >= ALERT_RULES_PER_SCOPE_MAX:
        scope = f"customer {rule.customer_id!r}" if rule.customer_id else "every customer"
        raise LimitReached(
            f"{scope} is watched by {held:,} alert rules, the most a customer or every customer may be "
            f"({ALERT_RULES_PER_SCOPE_MAX:,}): delete one (DeleteAlertRule) before creating another"
        )


def delete_rule(book: AlertBook, rule_id: str) -> AlertRule:
    """Deletes the book's rule `rule_id` (which it holds) and returns it: kept among the deleted, its marks of which
    customers it stands fired for dropped. `book.rules` is replaced, not edited, so that what derives from it by
    identity (RuleIndex, the server's sorted ids) starts over and a reader holding the old dict reads on."""
    rule = book.rules[rule_id]
    book.rules = {held: kept for held, kept in book.rules.items() if held != rule_id}
    book.deleted[rule_id] = rule
    prefix = f"{rule_id}/"
    for key in [key for key in book.fired if key.startswith(prefix)]:
        del book.fired[key]
    return rule


class RuleIndex:
    """The rules by the customers they watch, each list in creation order (the order `book.rules` holds them: rules
    are added to it, and a deletion replaces the dict, which starts the index over), kept from one record to the
    next and grown with the book. Evaluating a record's
    customers used to scan every rule for each of them: with one LOW_BALANCE rule per customer, 10,000 customers
    made a batch of 1,000 events take 527 ms instead of 5. Derived, never stored: a snapshot holds the book only."""

    def __init__(self) -> None:
        self._start_over(None)

    def _start_over(self, rules: object) -> None:
        self._rules = rules  # the book's rules dict, by identity
        self._count = 0
        self._every: list[tuple[int, AlertRule]] = []  # (creation ordinal, rule) of the rules for every customer
        self._own: dict[str, list[tuple[int, AlertRule]]] = {}
        self._balance_every = False
        self._balance_customers: set[str] = set()

    def of(self, book: AlertBook) -> RuleIndex:
        """This index, brought up to the book's rules."""
        if book.rules is self._rules and len(book.rules) == self._count:
            return self  # no rule added since (skipping the ones indexed would walk them all)
        if book.rules is not self._rules or len(book.rules) < self._count:  # another book (a restore, a deletion)
            self._start_over(book.rules)
        for rule in itertools.islice(book.rules.values(), self._count, None):
            entry = (self._count, rule)
            self._count += 1
            if rule.customer_id:
                self._own.setdefault(rule.customer_id, []).append(entry)
            else:
                self._every.append(entry)
            if rule.type in BALANCE_TYPES:
                self._balance_every |= not rule.customer_id
                if rule.customer_id:
                    self._balance_customers.add(rule.customer_id)
        return self

    def watching(self, customer_id: str) -> Iterator[AlertRule]:
        """The rules that watch the customer (its own and those for every customer), in creation order."""
        own = self._own.get(customer_id)
        if own is None:
            return (rule for _, rule in self._every)
        return (rule for _, rule in heapq.merge(self._every, own, key=lambda entry: entry[0]))

    def balance_watched(self, touched: Iterable[str]) -> list[str]:
        """Of these customers, those some balance rule watches (in the order given)."""
        if self._balance_every:
            return list(touched)
        return [c for c in touched if c in self._balance_customers]


def customers_to_evaluate(book: AlertBook, touched: Iterable[str], index: RuleIndex | None = None) -> list[str]:
    """Of the customers a record touched, those some balance rule watches (in the order given). `index`: the
    caller's RuleIndex, kept between records (one is built for this call otherwise)."""
    return (index or RuleIndex()).of(book).balance_watched(touched)


def evaluate(
    book: AlertBook,
    customer_id: str,
    standing: Standing,
    at_ms: int,
    journal_seq: int,
    index: RuleIndex | None = None,
) -> list[FiredAlert]:
    """Applies one customer's standing after a record to every balance rule for it: fires the rules whose
    condition now holds and was clear, clears those whose condition no longer holds. Rules in creation order."""
    fired: list[FiredAlert] = []
    for rule in (index or RuleIndex()).of(book).watching(customer_id):
        if rule.type not in BALANCE_TYPES:
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
    book: AlertBook,
    kind: str,
    customer_id: str,
    details: Mapping[str, str],
    at_ms: int,
    journal_seq: int,
    index: RuleIndex | None = None,
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
        for rule in (index or RuleIndex()).of(book).watching(customer_id)
        if rule.type is alert_type
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


def alerts_after(
    book: AlertBook, after_seq: int, up_to_seq: int, limit: int, *, from_oldest: bool = False
) -> list[FiredAlert]:
    """At most `limit` alerts with after_seq < seq <= up_to_seq, oldest first; with `from_oldest`, an after_seq of 0
    reads from the oldest alert kept. Raises PrunedAlerts when alerts right after `after_seq` are no longer kept."""
    log = book.log  # one reference: a prune rebinds the list, never edits the one held here
    if not log:
        return []
    first = log[0].seq
    if from_oldest and after_seq == 0:
        after_seq = first - 1  # of this list: another thread's prune meanwhile binds the book a shorter one
    if after_seq >= up_to_seq:
        return []
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
