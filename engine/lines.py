"""Invoice line identity: a line is one product and one combination of its pricing-dimension values in a
period, and its id is a readable, stable text of that pair, the same in a draft, the final invoice, an
export and an ExplainLineItem request.

The id is the product id, then `;key=value` for each pricing dimension in key order. `%`, `;`, `=` and every
character outside printable ASCII inside an id, key or value are percent-escaped (as UTF-8), so distinct lines
never share an id, an id parses back, and an id is printable ASCII.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

_SAFE = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%;=")
# A character quote() would escape: text without one is its own escape (the common case, and the cheap one).
_NEEDS_ESCAPE = re.compile(r"[^\x20-\x7e]|[%;=]")


def _escape(text: str) -> str:
    return quote(text, safe=_SAFE) if _NEEDS_ESCAPE.search(text) else text


def line_id(product_id: str, dimensions: dict[str, str]) -> str:
    """The id of the line of `product_id` for these pricing-dimension values."""
    parts = [_escape(product_id)]
    parts.extend(f"{_escape(key)}={_escape(dimensions[key])}" for key in sorted(dimensions))
    return ";".join(parts)


def parse_line_id(line: str) -> tuple[str, dict[str, str]]:
    """(product id, pricing-dimension values) of a line id; ValueError for text no line id has."""
    product, *pairs = line.split(";")
    if not product:
        raise ValueError("a line id starts with a product id")
    dimensions: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"{pair!r} is not key=value")
        if unquote(key) in dimensions:
            raise ValueError(f"dimension {unquote(key)!r} appears twice")
        dimensions[unquote(key)] = unquote(value)
    if line_id(unquote(product), dimensions) != line:
        raise ValueError("not a line id in its canonical form (dimensions in key order, escaped)")
    return unquote(product), dimensions
