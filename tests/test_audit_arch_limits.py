"""Limits docs/architecture.md §6 and §8 state, held by the code at their edges: a decimal string is any finite
decimal below 10^18 with at most 18 places (whatever its number of digits, also past the 28 of Python's default
decimal context), held exactly in picos or at 10^-18, never rounded; and a list page holds at most 1,000 entries
whatever page size is asked."""

from __future__ import annotations

from decimal import Decimal

import pytest

from engine.alerts import parse_rule
from engine.errors import InvalidArgument
from engine.grants import _grant_amount_picos
from engine.money import parse_decimal, picos_to_decimal, to_picos
from engine.ratecard import price_field_value
from engine.tables import TablesError, fixed
from server.services.common import PAGE_SIZE_MAX, _page

# The largest decimal §6 admits: below 10^18, 18 decimal places, 36 digits (more than Python's default 28).
LARGEST = "999999999999999999.999999999999999999"


def test_the_largest_decimal_below_10_18_with_18_places_is_accepted_exactly() -> None:
    assert parse_decimal(LARGEST, "amount") == Decimal(LARGEST)
    assert parse_decimal("-" + LARGEST, "parameter", allow_negative=True) == Decimal("-" + LARGEST)


def test_10_18_itself_is_refused() -> None:
    with pytest.raises(InvalidArgument):
        parse_decimal("1000000000000000000", "amount")


def test_a_price_field_of_the_largest_decimal_is_valid_and_exact() -> None:
    value, why = price_field_value(LARGEST, {})
    assert why == ""
    assert value == Decimal(LARGEST)


def test_a_negative_page_size_is_invalid_argument_not_a_page_past_the_cap() -> None:
    ids = [f"rule-{i:05d}" for i in range(PAGE_SIZE_MAX * 3)]
    with pytest.raises(InvalidArgument, match="page_size"):
        _page(ids, -1, "")


@pytest.mark.parametrize("page_size", [0, 1, PAGE_SIZE_MAX, PAGE_SIZE_MAX + 1, 2**31 - 1])
def test_a_page_holds_at_most_the_cap(page_size: int) -> None:
    ids = [f"rule-{i:05d}" for i in range(PAGE_SIZE_MAX * 3)]
    page, token = _page(ids, page_size, "")
    assert len(page) == min(page_size or 100, PAGE_SIZE_MAX)
    assert token == page[-1]


# Exact at 12 places with 29 significant digits: more than Python's default context (28) holds.
WIDE_CREDITS = "99999999999999999.999999999999"
WIDE_CREDITS_PICOS = 99999999999999999_999999999999


def test_to_picos_and_back_are_exact_past_28_digits() -> None:
    assert to_picos(Decimal(WIDE_CREDITS)) == WIDE_CREDITS_PICOS
    assert picos_to_decimal(WIDE_CREDITS_PICOS) == Decimal(WIDE_CREDITS)


def test_a_grant_amount_past_28_digits_is_held_exactly_not_rounded() -> None:
    assert _grant_amount_picos(WIDE_CREDITS) == WIDE_CREDITS_PICOS
    with pytest.raises(InvalidArgument, match=r"grant\.amount"):
        _grant_amount_picos("9999999999999999.9999999999999")  # 13 places, 29 digits: refused, never rounded


def test_an_alert_threshold_past_28_digits_is_held_exactly() -> None:
    rule = parse_rule("", "acme", False, "LOW_BALANCE", WIDE_CREDITS, 1)
    assert rule.threshold_picos == WIDE_CREDITS_PICOS


def test_the_kernel_tables_hold_a_price_past_28_digits_exactly() -> None:
    # §6: every price becomes an integer count of 10^-18, a literal with more places refused, never rounded.
    assert fixed("123456789012.123456789012345678", "price") == "123456789012123456789012345678"
    assert fixed(LARGEST, "price") == "999999999999999999999999999999999999"
    with pytest.raises(TablesError):
        fixed("12345678901.1234567890123456789", "price")  # 19 places, 30 digits
