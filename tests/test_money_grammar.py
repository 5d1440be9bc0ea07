"""The decimal grammar of new requests (engine/money.py DECIMAL_GRAMMAR) accepts exactly JSON's number: an optional
'-', ASCII digits without leading zeros, optionally '.' and ASCII digits, optionally 'e' or 'E', a sign and ASCII
digits. Every canonical text the server writes reads back to the same amount, a text with an exponent reads as
the value it writes ("1E-7" is 0.0000001) and is then held to the same range, and any other text is refused where
a request enters (decimal_text_problem, price_text_problem), whatever Decimal() would make of it. parse_decimal and
formulas read the texts they are given as earlier releases did, since the journal holds texts those accepted."""

from __future__ import annotations

from decimal import Context, Decimal

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from engine.errors import InvalidArgument
from engine.formula import FormulaError, evaluate, price_text_problem
from engine.money import (
    decimal_text_problem,
    format_picos,
    format_scaled,
    in_range,
    is_decimal_text,
    parse_decimal,
)

ASCII_DIGITS = "0123456789"
WIDE = Context(prec=100)  # exact for every value here (the default context's 28 digits would round some)


def in_grammar(text: str) -> bool:
    """The grammar, spelled out character by character (the reference the regular expression is checked against)."""
    body = text[1:] if text.startswith("-") else text
    exponent_at = min((body.index(e) for e in "eE" if e in body), default=len(body))
    body, exponent = body[:exponent_at], body[exponent_at + 1 :]
    if exponent_at < len(text) - (text[:1] == "-"):
        digits = exponent[1:] if exponent[:1] in ("+", "-") else exponent
        if not digits or any(c not in ASCII_DIGITS for c in digits):
            return False
    whole, dot, fraction = body.partition(".")
    if dot and not fraction:
        return False
    if not whole or any(c not in ASCII_DIGITS for c in whole + fraction):
        return False
    return whole == "0" or whole[0] != "0"


@given(st.integers(min_value=-(10**30) + 1, max_value=10**30 - 1))
def test_canonical_picos_read_back_to_the_same_amount(picos: int) -> None:
    text = format_picos(picos)
    assert is_decimal_text(text)
    assert parse_decimal(text, "amount", allow_negative=True) == Decimal(picos).scaleb(-12, WIDE)


@given(st.integers(min_value=-(10**36) + 1, max_value=10**36 - 1), st.integers(min_value=0, max_value=18))
def test_canonical_text_at_any_scale_is_in_the_grammar(value: int, places: int) -> None:
    text = format_scaled(value, places)
    assert is_decimal_text(text) and in_grammar(text)
    assert Decimal(text) == Decimal(value).scaleb(-places, WIDE)


texts = st.text(alphabet=st.sampled_from("0123456789-+._eE x\u0661\uff11\n"), max_size=12) | st.text(max_size=12)


@given(texts)
@example("1_000")
@example(" 1")
@example("+1")
@example("1e3")
@example("5E-1")
@example("1E-7")
@example("-2.5e+3")
@example("1e18")
@example("1e-19")
@example("1e")
@example("1.e3")
@example("01e3")
@example("1e3e3")
@example("\u0661\u0662")
@example("007")
@example("1.")
@example(".5")
@example("-0")
@example("0.50")
@example("Infinity")
@example("NaN")
def test_the_grammar_accepts_exactly_what_it_describes(text: str) -> None:
    assert is_decimal_text(text) == in_grammar(text)
    problem = decimal_text_problem(text)
    if in_grammar(text) or not text:
        assert problem is None
    else:
        assert problem is not None and repr(text) in problem
    if in_grammar(text) and in_range(Decimal(text)):
        assert parse_decimal(text, "amount", allow_negative=True) == Decimal(text)
    elif in_grammar(text):  # an exponent takes it past 10^18 or 18 places: refused by the range check
        with pytest.raises(InvalidArgument) as refused:
            parse_decimal(text, "amount", allow_negative=True)
        assert refused.value.violations[0][0] == "amount"


def test_exponents_read_as_the_values_they_write() -> None:
    assert [parse_decimal(t, "amount") for t in ("1e3", "5E-1", "1E-7", "2.5e+2", "1e-18")] == [
        Decimal(1000),
        Decimal("0.5"),
        Decimal("0.0000001"),
        Decimal(250),
        Decimal("0.000000000000000001"),
    ]


@given(texts)
@example(" 1")
@example("+1")
@example("1_000")
@example("1e3")
@example("\u0661\u0662")
@example("1.")
def test_stored_texts_are_read_as_earlier_releases_read_them(text: str) -> None:
    """parse_decimal reads any text Decimal() reads once stripped, in range: the journal and snapshots hold texts
    earlier releases accepted, and replay must give the state they gave."""
    try:
        expected: Decimal | None = Decimal(text.strip())
    except ArithmeticError:
        expected = None
    try:
        value: Decimal | None = parse_decimal(text, "amount", allow_negative=True)
    except InvalidArgument as refused:
        assert refused.violations[0][0] == "amount"
        value = None
    if value is not None:
        assert value == expected
    elif expected is not None and expected.is_finite() and 0 < len(text) <= 64:
        assert expected.copy_abs() >= Decimal(10) ** 18 or expected.as_tuple().exponent < -18  # type: ignore[operator]


@given(texts)
@example("0#_")  # '#' starts a comment in Python's grammar: the rest was ignored
def test_a_number_in_a_formula_follows_the_same_grammar(text: str) -> None:
    """As a price, and as a number inside a formula, a new text passes intake and is read exactly when the
    grammar accepts it; otherwise intake refuses it, or it is a formula of its own ("-1 - 1", "(1)")."""
    parameters = {"rate": Decimal(2)}
    for formula, times in ((text, 1), (f"rate * {text}", 2)):
        problem = price_text_problem(formula)
        if in_grammar(text):
            assert problem is None
            if abs(Decimal(text).adjusted()) < 1_000:  # else past the context's exponents: a validation error
                assert evaluate(formula, parameters) == Decimal(text) * times
        elif problem is None and text:
            try:
                evaluate(formula, parameters)
            except FormulaError:
                continue
            # Read only as a formula of its own, never through another spelling of a number, and never with
            # whitespace around the whole price.
            assert not any(c in text for c in "_\u0661\uff11") and not text.startswith("+")
            assert formula == formula.strip()


@pytest.mark.parametrize("text", ["round(1, 100)", "round(2.5, 1000000000000)"])
def test_round_past_the_formula_precision_says_so(text: str) -> None:
    # These were refused as "divides by zero or overflows", which names neither round() nor its places.
    with pytest.raises(FormulaError, match=r"round\(\) to \d+ places is beyond the 60 significant digits"):
        evaluate(text, {})


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("round(2.5)", "2"),
        ("round(3.5)", "4"),
        ("round(0.125, 2)", "0.12"),
        ("round(15, -1)", "20"),
        ("round(25, -1)", "20"),
    ],
)
def test_round_is_half_even_to_the_places_pricing_proto_documents(text: str, value: str) -> None:
    assert evaluate(text, {}) == Decimal(value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("x.y", "is not allowed in a formula"),
        ("a + x.y", "holds 'x.y', which is not allowed in a formula"),
        ("a if a else 1", "is not allowed in a formula"),
        ("2 * [1]", "holds '[1]', which is not allowed in a formula"),
    ],
)
def test_a_construct_a_formula_may_not_hold_is_quoted_once(text: str, problem: str) -> None:
    """ValidateVersion's finding reads "'<formula>' <problem>": the formula is quoted by the caller, so a construct
    that is the whole formula is not quoted again ("'x.y' 'x.y' is not allowed" before), and a part of it is."""
    with pytest.raises(FormulaError) as refused:
        evaluate(text, {"a": Decimal(1)})
    assert str(refused.value) == problem
