"""RuleIndex: the alert rules by the customers they watch, kept between records and grown with the book, give the
rules a scan of every rule would, in the same (creation) order: replay fires the same alerts in the same order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from engine import alerts

CUSTOMERS = ["acme", "globex", "initech", ""]  # "": a rule for every customer
ASKED = ["acme", "globex", "initech", "nobody"]
TYPES = list(alerts.AlertType)


def scanned(book: alerts.AlertBook, customer_id: str) -> list[alerts.AlertRule]:
    return [rule for rule in book.rules.values() if rule.applies_to(customer_id)]


@given(st.lists(st.lists(st.tuples(st.sampled_from(CUSTOMERS), st.sampled_from(TYPES)), max_size=5), max_size=6))
def test_the_index_gives_the_rules_a_scan_gives_in_creation_order_as_rules_are_added(
    additions: list[list[tuple[str, alerts.AlertType]]],
) -> None:
    book = alerts.AlertBook(rules={}, fired={}, log=[])
    index = alerts.RuleIndex()
    for added in additions:
        for customer_id, alert_type in added:
            rule_id = f"rule-{len(book.rules)}"
            book.rules[rule_id] = alerts.AlertRule(rule_id, customer_id, alert_type, 0, len(book.rules))
        for customer_id in ASKED:
            assert list(index.of(book).watching(customer_id)) == scanned(book, customer_id)
        balance = [c for c in ASKED if any(r.type in alerts.BALANCE_TYPES for r in scanned(book, c))]
        assert alerts.customers_to_evaluate(book, ASKED, index) == balance


def test_another_book_a_restore_s_starts_the_index_over() -> None:
    first = alerts.AlertBook(rules={"a": alerts.AlertRule("a", "acme", alerts.AlertType.LOW_BALANCE, 1, 1)})
    index = alerts.RuleIndex()
    assert [r.id for r in index.of(first).watching("acme")] == ["a"]
    restored = alerts.AlertBook(rules={"b": alerts.AlertRule("b", "", alerts.AlertType.CREDITS_EXHAUSTED, 0, 1)})
    assert [r.id for r in index.of(restored).watching("acme")] == ["b"]
    assert alerts.customers_to_evaluate(restored, ["globex"], index) == ["globex"]
