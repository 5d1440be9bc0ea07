"""Exact amounts: decimal strings on the wire, integers at a fixed scale of 10^-12 inside.

LLM prices are fractions of a micro-dollar per token, so amounts are kept as integer counts of 10^-12 of
a unit ("picos"). A price computed from a rate (a Decimal) is rounded half-even to 10^-12 exactly once,
where it becomes a ledger amount; sums of picos are then exact. Binary floats never hold money: wire
quantities that arrive as doubles are read through their shortest round-trip text, exactly.
"""

from __future__ import annotations

import decimal
import re
from decimal import Decimal

from engine.errors import InvalidArgument

PICOS_PER_UNIT = 10**12
_PICO = Decimal(1).scaleb(-12)
# Wide enough that no product of a price, a quantity and a ratio loses a digit before the final rounding.
DECIMAL_CONTEXT = decimal.Context(prec=60, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])
DECIMAL_TEXT_MAX = 64
# Every decimal that enters (an amount, a price, a parameter, a usage value) is below 10^18 in magnitude and
# has at most 18 decimal places, so no product of a few of them comes near DECIMAL_CONTEXT's 60 digits.
MAGNITUDE_LIMIT = Decimal(10) ** 18
PLACES_MAX = 18

# The one grammar of a decimal a request carries (an amount, a price, a parameter, a number in a formula): JSON's
# number. An optional '-', then ASCII digits without leading zeros, then optionally '.' and ASCII digits, then
# optionally an exponent, 'e' or 'E' with an optional sign and ASCII digits: "0", "-1.5", "0.03", "12.50", "1E-7"
# (as Java's BigDecimal.toString() and JavaScript write small values). No '+' before the number, spaces, '_'
# separators, other scripts' digits, leading zeros, "1." or ".5", all of which Decimal() reads. Range and places
# are checked on the value, after it is read (parse_decimal): "1e18" and "1e-19" are refused there. The server
# holds new requests to the grammar where they enter (server/convert.py); the engine reads the texts it is given
# as it always has (parse_decimal), because the journal and snapshots hold texts that earlier releases accepted
# and replay must read them as they were read then. ([0-9], never \d, which matches any script's digits.)
DECIMAL_GRAMMAR = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# A number inside a formula: the grammar without the sign (a '-' there is the formula's minus).
UNSIGNED_DECIMAL_GRAMMAR = re.compile(r"(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
GRAMMAR_TEXT = (
    "an optional '-', ASCII digits without leading zeros, optionally '.' and digits, optionally 'e' or 'E', an"
    " optional sign and digits (JSON's number: no leading '+', no spaces)"
)


def is_decimal_text(text: str) -> bool:
    """Whether `text` is a decimal in the grammar of new requests (DECIMAL_GRAMMAR); says nothing of its range."""
    return DECIMAL_GRAMMAR.fullmatch(text) is not None


def decimal_text_problem(text: str) -> str | None:
    """Why a decimal a new request carries is not in DECIMAL_GRAMMAR, or None when it is (or is empty: whether a
    field may be empty, and the range, are parse_decimal's and the field's own rules)."""
    if not text or is_decimal_text(text):
        return None
    return f"{text!r} is not a decimal: write {GRAMMAR_TEXT}"


def decimal_range_problem(text: str) -> str | None:
    """Why the value of a decimal in DECIMAL_GRAMMAR is out of range (10^18 or more in magnitude, or more than
    PLACES_MAX decimal places), read exactly, or None when it is in range. Where a new request enters, with
    decimal_text_problem: parse_decimal's in_range normalizes in DECIMAL_CONTEXT, which rounds a value of more than
    60 significant digits ("0.1000...0001", 62 places, in 64 characters) and takes one below its smallest exponent
    ("1e-1000059") to 0, so it found both in range; it stays so for the texts that earlier releases journaled."""
    try:
        value = Decimal(text)
    except decimal.InvalidOperation:  # an exponent beyond what Decimal holds ("1e-99999999999999999999")
        value = Decimal("NaN")
    if value.is_finite() and (value.is_zero() or (value.copy_abs() < MAGNITUDE_LIMIT and _places(value) <= PLACES_MAX)):
        return None
    return f"{text!r} is out of range: below 10^18 with at most {PLACES_MAX} decimal places"


def _places(value: Decimal) -> int:
    """The decimal places of a finite, non-zero value, its trailing zeros not counted, exactly (any exponent)."""
    _, digits, exponent = value.as_tuple()
    assert isinstance(exponent, int)
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing_zeros))


def parse_decimal(text: str, field: str, *, allow_negative: bool = False) -> Decimal:
    """A finite decimal from its text; raises InvalidArgument naming `field`. Lenient as it always was (surrounding
    spaces, '+', '_', exponents): it reads journaled and snapshotted texts too. New requests are held to
    DECIMAL_GRAMMAR before they get here (server/convert.py)."""
    if not text or len(text) > DECIMAL_TEXT_MAX:
        raise InvalidArgument.field(field, f"must be a decimal string of 1 to {DECIMAL_TEXT_MAX} characters")
    try:
        value = Decimal(text.strip())
    except decimal.InvalidOperation:
        raise InvalidArgument.field(field, f"{text!r} is not a decimal number") from None
    if not value.is_finite():
        raise InvalidArgument.field(field, f"{text!r} is not a finite number")
    if not in_range(value):
        raise InvalidArgument.field(
            field, f"{text!r} is out of range: below 10^18 with at most {PLACES_MAX} decimal places"
        )
    if value < 0 and not allow_negative:
        raise InvalidArgument.field(field, f"{text!r} must not be negative")
    return value


def in_range(value: Decimal) -> bool:
    """Finite, below 10^18 in magnitude, at most 18 decimal places (exponent >= -18 once normalized)."""
    if not value.is_finite():
        return False
    if value == 0:
        return True
    # copy_abs, not abs(): abs() rounds to the thread's context (28 digits), taking 999...9.99...9 to 10^18.
    return value.copy_abs() < MAGNITUDE_LIMIT and value.normalize(DECIMAL_CONTEXT).as_tuple().exponent >= -PLACES_MAX  # type: ignore[operator]


def to_picos(value: Decimal) -> int:
    """Rounds half-even to 10^-12: the one place a computed price becomes a ledger amount."""
    # Every step in DECIMAL_CONTEXT: the default context's 28 digits would round an amount of 10^16 or more.
    quantized = value.quantize(_PICO, rounding=decimal.ROUND_HALF_EVEN, context=DECIMAL_CONTEXT)
    return int(quantized.scaleb(12, context=DECIMAL_CONTEXT))


def round_ratio(numerator: int, denominator: int) -> int:
    """numerator / denominator rounded half-even to an integer, exactly (no intermediate rounding).

    The integer form of to_picos for prices that are ratios of integers: a unit price times an integral
    quantity, a cost basis times credits drawn. Used on the hot path, where it is several times faster
    than the same arithmetic in Decimal, and exact where a 60-digit Decimal quotient would be rounded twice.
    """
    assert denominator > 0
    quotient, remainder = divmod(numerator, denominator)
    twice = remainder + remainder
    if twice > denominator or (twice == denominator and quotient & 1):
        quotient += 1
    return quotient


def picos_to_decimal(picos: int) -> Decimal:
    return Decimal(picos).scaleb(-12, context=DECIMAL_CONTEXT)


def format_picos(picos: int) -> str:
    """Canonical wire text: no exponent, no trailing zeros ("49995", "0.03", "-1.5")."""
    return format_scaled(picos, 12)


def format_scaled(value: int, places: int) -> str:
    """The canonical wire text of value x 10^-places: format_decimal's text, in integer arithmetic (reads that
    format many amounts, such as an invoice's, spent most of their time building and formatting Decimals)."""
    if not value:
        return "0"
    magnitude = -value if value < 0 else value
    whole, fraction = divmod(magnitude, 10**places)
    sign = "-" if value < 0 else ""
    if not fraction:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{fraction:0{places}d}".rstrip("0")


def format_decimal(value: Decimal) -> str:
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text
