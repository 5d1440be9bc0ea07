"""Amount texts built in integer arithmetic (engine.money.format_scaled, the invoice's minor-unit text) are the
same texts the Decimal formatting gave: canonical, exact, for any integer and scale."""

from __future__ import annotations

from decimal import Context, Decimal

from hypothesis import example, given
from hypothesis import strategies as st

from engine.money import (
    format_decimal,
    format_picos,
    format_scaled,
    in_range,
    parse_decimal,
    picos_to_decimal,
    to_picos,
)
from engine.tables import fixed
from server.services.invoices import minor_text, quantity_text

# Exact: the default context's 28 digits rounded longer values (format_scaled is exact at any length).
WIDE = Context(prec=100)
amounts = st.integers(min_value=-(10**40), max_value=10**40) | st.sampled_from(
    [0, 1, -1, 10**12, -(10**18), 5 * 10**11]
)


@given(amounts, st.integers(min_value=0, max_value=30))
def test_format_scaled_is_the_decimal_text_of_the_value(value: int, places: int) -> None:
    assert format_scaled(value, places) == format_decimal(Decimal(value).scaleb(-places, WIDE))


@given(amounts)
def test_picos_and_quantities_keep_their_canonical_text(value: int) -> None:
    assert format_picos(value) == format_decimal(Decimal(value).scaleb(-12, WIDE))
    assert quantity_text(value) == format_decimal(Decimal(value).scaleb(-18, WIDE))


def test_canonical_text_has_no_exponent_and_no_trailing_zeros() -> None:
    assert format_picos(49_995 * 10**12) == "49995"
    assert format_picos(30 * 10**9) == "0.03"
    assert format_picos(-15 * 10**11) == "-1.5"
    assert format_picos(1) == "0.000000000001"


@given(amounts, st.integers(min_value=0, max_value=4))
def test_minor_text_shows_exactly_the_currency_places(amount_minor: int, places: int) -> None:
    assert minor_text(amount_minor, places) == f"{Decimal(amount_minor).scaleb(-places, WIDE):.{places}f}"
    assert minor_text(-5, 2) == "-0.05" and minor_text(1500, 0) == "1500" and minor_text(1230, 2) == "12.30"


# Below 10^18 with 18 places is 36 digits: Decimal's default context keeps 28, and rounded such a price in the
# kernel's tables (123456789012.123456789012345678 was held as ...012345700), and amounts of 30 digits in picos.
long_prices = st.integers(min_value=1, max_value=10**36 - 1).map(lambda n: Decimal(n).scaleb(-18, WIDE))
long_amounts = st.integers(min_value=-(10**30) + 1, max_value=10**30 - 1)


@given(long_prices)
@example(Decimal("123456789012.123456789012345678"))
def test_a_price_of_any_length_in_range_is_held_exactly_in_the_tables(price: Decimal) -> None:
    assert int(fixed(format_decimal(price), "price")) == price.scaleb(18, WIDE)
    assert in_range(price) and parse_decimal(format_decimal(price), "price") == price


@given(long_amounts)
@example(10**30 - 1)
def test_picos_of_any_length_in_range_convert_exactly(picos: int) -> None:
    assert to_picos(picos_to_decimal(picos)) == picos
    assert picos_to_decimal(picos) == Decimal(picos).scaleb(-12, WIDE)
    assert parse_decimal(format_picos(picos), "amount", allow_negative=True) == Decimal(picos).scaleb(-12, WIDE)
