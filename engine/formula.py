"""Price formulas over a version's named parameters: `gpt4_cost_per_1k * markup`.

A formula is a decimal or an expression with + - * /, parentheses, unary minus, parameter names and the
functions min(a, b, ...), max(a, b, ...) and round(x, places). It is parsed with Python's own grammar but
only this whitelist of nodes is evaluated, and numbers are read from their source text as Decimals, never as
floats. Formulas are evaluated once, when a version is validated, never per event.

Evaluation reads a formula as earlier releases did (Python's spellings of a number, "1_000", "+1", surrounding
spaces): versions in the journal hold such texts. A price field a new request carries is first held to the
decimal grammar by `price_text_problem` (server/convert.py).
"""

from __future__ import annotations

import ast
import decimal
import keyword
import unicodedata
from collections.abc import Mapping
from decimal import Decimal

from engine.money import DECIMAL_CONTEXT, GRAMMAR_TEXT, UNSIGNED_DECIMAL_GRAMMAR, decimal_text_problem

FORMULA_TEXT_MAX = 1_000
FORMULA_DEPTH_MAX = 32
# round()'s largest count of places either way: scaleb takes no exponent shift past 2 x (Emax + prec) of the
# thread's default context (2,000,054), so no round() past it ever evaluated.
ROUND_PLACES_MAX = 2 * (decimal.DefaultContext.Emax + decimal.DefaultContext.prec)


class FormulaError(Exception):
    """Why a formula cannot be evaluated, for a person."""


def price_text_problem(text: str) -> str | None:
    """Why a price field a new request carries is not in the decimal grammar, or None when it is not refused for
    that. A literal must match DECIMAL_GRAMMAR (engine/money.py) whole; a formula neither begins nor ends with
    whitespace, has no '#' (a comment), no unary '+', and each number in it matches the grammar without its sign ("2", not "2.",
    "1_000" or "02"); and no price is longer than FORMULA_TEXT_MAX characters. Empty (the field's default) and a
    formula that does not parse are left to validation, which reports them as it always has."""
    if not text:
        return None
    if len(text) > FORMULA_TEXT_MAX:
        # Validation evaluates no longer text, so no version holding it could be published; and the checks below
        # parse the text, which must stay cheap. Such a text was accepted unchecked (a leading space, a '#', a
        # literal of 1,000 digits), the draft made with an error only validation showed.
        return f"is longer than {FORMULA_TEXT_MAX} characters: a price is a decimal or a formula of at most {FORMULA_TEXT_MAX:,}"
    try:
        read_as_number = Decimal(text.strip()).is_finite()
    except decimal.InvalidOperation:
        read_as_number = False
    if read_as_number:  # Decimal() reads it ("007", " 1", "1_000", other scripts' digits): a literal
        return decimal_text_problem(text)
    if text != text.strip():
        return "begins or ends with whitespace: a decimal or a formula is written without it"
    if "#" in text:  # Python's grammar reads the rest as a comment, which evaluation would silently ignore
        return "has a '#': a formula has no comments, and nothing in it is ignored"
    read_as = read_name_as(text)
    if read_as is not None:
        return read_as
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:
        return None
    for node in ast.walk(tree):
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd):
            return "has a unary '+': write the number or name without it"
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            literal = ast.get_source_segment(text, node)
            if literal is not None and UNSIGNED_DECIMAL_GRAMMAR.fullmatch(literal) is None:
                return f"{literal!r} is not a decimal: write {GRAMMAR_TEXT}"
    return None


def read_name_as(text: str) -> str | None:
    """Why `text` (a formula, or a parameter's name) would not be read as written, or None. Python's grammar, which
    formulas are parsed with, reads every name in its compatibility form (NFKC): the ligature "\ufb01" is the
    name "fi", so a formula writing it priced parameter fi, whatever a parameter named "\ufb01" held. What a
    new request writes must be in that form already: what it names is then what it wrote. Checked on requests
    only (server/convert.py): versions in the journal are evaluated as they always were."""
    normal = unicodedata.normalize("NFKC", text)
    if normal == text:
        return None
    return f"is read by formulas as {normal!r}: write it so (Unicode NFKC), what a formula names is what it says"


def keyword_name_problem(name: str) -> str | None:
    """Why no formula could name a parameter called `name`, a keyword of Python's grammar, or None. Formulas are
    parsed with that grammar, where `if`, `lambda` or `not` are no name (a formula writing one does not parse) and
    `None`, `True` and `False` are constants, not parameters; a soft keyword (`match`, `type`, `_`) is a name in an
    expression like any other. Checked on requests only (server/convert.py): journaled drafts replay as they were."""
    if keyword.iskeyword(name):
        return f"{name!r} is a keyword of the formula grammar: no formula could name it (use another name)"
    return None


def evaluate(text: str, parameters: Mapping[str, Decimal]) -> Decimal:
    if not text.strip():
        raise FormulaError("is empty")
    if len(text) > FORMULA_TEXT_MAX:
        raise FormulaError(f"is longer than {FORMULA_TEXT_MAX} characters")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"is not a valid formula: {exc.msg}") from None
    source = text.strip()
    try:
        result = _evaluate(tree.body, source, parameters, 0)
    except (decimal.InvalidOperation, decimal.DivisionByZero, ZeroDivisionError):
        raise FormulaError("divides by zero or overflows") from None
    if not result.is_finite():
        raise FormulaError("is not finite")
    return result


def _evaluate(node: ast.expr, source: str, parameters: Mapping[str, Decimal], depth: int) -> Decimal:
    if depth > FORMULA_DEPTH_MAX:
        raise FormulaError(f"nests deeper than {FORMULA_DEPTH_MAX}")
    ctx = DECIMAL_CONTEXT
    match node:
        case ast.Constant(value=bool()):
            raise FormulaError("booleans are not numbers")
        case ast.Constant(value=int() | float()):
            literal = ast.get_source_segment(source, node)
            assert literal is not None
            try:
                return Decimal(literal.replace("_", ""))
            except decimal.InvalidOperation:
                raise FormulaError(f"{literal!r} is not a decimal number") from None
        case ast.Name(id=name):
            if name not in parameters:
                raise FormulaError(f"unknown parameter {name!r}")
            return parameters[name]
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return ctx.minus(_evaluate(operand, source, parameters, depth + 1))
        case ast.UnaryOp(op=ast.UAdd(), operand=operand):
            return _evaluate(operand, source, parameters, depth + 1)
        case ast.BinOp(left=left, op=op, right=right):
            a = _evaluate(left, source, parameters, depth + 1)
            b = _evaluate(right, source, parameters, depth + 1)
            if isinstance(op, ast.Add):
                return ctx.add(a, b)
            if isinstance(op, ast.Sub):
                return ctx.subtract(a, b)
            if isinstance(op, ast.Mult):
                return ctx.multiply(a, b)
            if isinstance(op, ast.Div):
                if b == 0:
                    raise FormulaError("divides by zero")
                return ctx.divide(a, b)
            raise FormulaError("only + - * / are allowed")
        case ast.Call(func=ast.Name(id=function), args=args, keywords=[]):
            values = [_evaluate(arg, source, parameters, depth + 1) for arg in args]
            if function in ("min", "max") and values:
                return min(values) if function == "min" else max(values)
            if function == "round" and len(values) in (1, 2):
                return _round(values[0], values[1] if len(values) == 2 else Decimal(0))
            raise FormulaError(f"unknown function or wrong arguments: {function}()")
    # The caller names the formula first: a part of it is quoted, the whole is not quoted twice.
    segment = ast.get_source_segment(source, node)
    if segment == source:
        raise FormulaError("is not allowed in a formula")
    raise FormulaError(f"holds {segment!r}, which is not allowed in a formula")


def _round(value: Decimal, places_value: Decimal) -> Decimal:
    """round(value, places): half-even to `places` decimal places. A count that is infinite (an operation's overflow
    in DECIMAL_CONTEXT is one), or beyond ROUND_PLACES_MAX, or one whose quantum passes the largest exponent
    (round(1, -1000000)) is a FormulaError: those raised OverflowError, ValueError or decimal.Overflow, which
    stopped the writer at a publish, and a count of a million digits took minutes to read as an int."""
    if not places_value.is_finite() or places_value.copy_abs() > ROUND_PLACES_MAX:
        if not places_value.is_finite() or places_value != places_value.to_integral_value():
            raise FormulaError("round() takes a whole number of places")
        if places_value > 0:  # as the 60-digit quantize refuses a count below ROUND_PLACES_MAX
            raise FormulaError(
                f"round() to {places_value} places is beyond the {DECIMAL_CONTEXT.prec} significant digits a formula carries"
            )
        raise FormulaError(f"round() to {places_value} places is beyond any exponent a formula holds")
    places = int(places_value)
    if places_value != places:
        raise FormulaError("round() takes a whole number of places")
    try:
        # The quantum in the thread's context, as ever (what it rounds an exponent below its smallest to is kept).
        quantum = Decimal(1).scaleb(-places)
    except decimal.Overflow:
        raise FormulaError(f"round() to {places} places is beyond any exponent a formula holds") from None
    try:
        return value.quantize(quantum, rounding=decimal.ROUND_HALF_EVEN, context=DECIMAL_CONTEXT)
    except decimal.InvalidOperation:
        # The result would need more digits than the context carries: say which call, not "overflows".
        raise FormulaError(
            f"round() to {places} places is beyond the {DECIMAL_CONTEXT.prec} significant digits a formula carries"
        ) from None
