"""Price formulas over a version's named parameters: `gpt4_cost_per_1k * markup`.

A formula is a decimal or an expression with + - * /, parentheses, unary minus, parameter names and the
functions min(a, b, ...), max(a, b, ...) and round(x, places). It is parsed with Python's own grammar but
only this whitelist of nodes is evaluated, and numbers are read from their source text as Decimals, never as
floats; a number must be in the wire's decimal grammar (engine/money.py DECIMAL_GRAMMAR, without its sign), so
Python's other spellings ("1_000", "1e3", "0x10", "1.", "+1") are refused. A formula neither begins nor ends with
whitespace. Formulas are evaluated once, when a version is validated, never per event.
"""

from __future__ import annotations

import ast
import decimal
from collections.abc import Mapping
from decimal import Decimal

from engine.money import DECIMAL_CONTEXT, GRAMMAR_TEXT, UNSIGNED_DECIMAL_GRAMMAR

FORMULA_TEXT_MAX = 1_000
FORMULA_DEPTH_MAX = 32


class FormulaError(Exception):
    """Why a formula cannot be evaluated, for a person."""


def evaluate(text: str, parameters: Mapping[str, Decimal]) -> Decimal:
    if not text.strip():
        raise FormulaError("is empty")
    if len(text) > FORMULA_TEXT_MAX:
        raise FormulaError(f"is longer than {FORMULA_TEXT_MAX} characters")
    if text != text.strip():
        raise FormulaError("begins or ends with whitespace: a decimal or a formula is written without it")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise FormulaError(f"is not a valid formula: {exc.msg}") from None
    try:
        result = _evaluate(tree.body, text, parameters, 0)
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
            if UNSIGNED_DECIMAL_GRAMMAR.fullmatch(literal) is None:
                raise FormulaError(f"{literal!r} is not a decimal: write {GRAMMAR_TEXT}")
            return Decimal(literal)
        case ast.Name(id=name):
            if name not in parameters:
                raise FormulaError(f"unknown parameter {name!r}")
            return parameters[name]
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return ctx.minus(_evaluate(operand, source, parameters, depth + 1))
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
                places = int(values[1]) if len(values) == 2 else 0
                if len(values) == 2 and values[1] != places:
                    raise FormulaError("round() takes a whole number of places")
                return values[0].quantize(Decimal(1).scaleb(-places), rounding=decimal.ROUND_HALF_EVEN, context=ctx)
            raise FormulaError(f"unknown function or wrong arguments: {function}()")
    raise FormulaError(f"{ast.get_source_segment(source, node)!r} is not allowed in a formula")
