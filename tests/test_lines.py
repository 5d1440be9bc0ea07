"""Invoice line ids: readable, stable, and one id per (product, dimension values)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.lines import line_id, parse_line_id


def test_a_line_id_names_the_product_then_its_dimensions_in_key_order() -> None:
    assert line_id("tokens", {"region": "eu", "model": "gpt4"}) == "tokens;model=gpt4;region=eu"
    assert line_id("storage", {}) == "storage"


def test_separators_inside_values_are_escaped() -> None:
    assert line_id("p;1", {"k=": "a%b;c"}) == "p%3B1;k%3D=a%25b%3Bc"


texts = st.text(min_size=1, max_size=12)


@given(texts, st.dictionaries(texts, st.text(max_size=12), max_size=4))
def test_a_line_id_parses_back_to_its_product_and_dimensions(product: str, dimensions: dict[str, str]) -> None:
    assert parse_line_id(line_id(product, dimensions)) == (product, dimensions)


@given(
    texts,
    st.dictionaries(texts, st.text(max_size=6), max_size=3),
    texts,
    st.dictionaries(texts, st.text(max_size=6), max_size=3),
)
def test_distinct_lines_have_distinct_ids(p1: str, d1: dict[str, str], p2: str, d2: dict[str, str]) -> None:
    if (p1, d1) != (p2, d2):
        assert line_id(p1, d1) != line_id(p2, d2)


@pytest.mark.parametrize("text", ["", ";a=b", "p;a", "p;=b", "p;b=1;a=2", "p;a=1;a=2"])
def test_text_that_is_no_line_id_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_line_id(text)


@given(st.text(max_size=12), st.dictionaries(st.text(max_size=6), st.text(max_size=12), max_size=3))
def test_text_without_a_character_to_escape_is_kept_as_is_and_other_text_is_quoted(
    product: str, dimensions: dict[str, str]
) -> None:
    from urllib.parse import quote

    safe = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in "%;=")
    expected = ";".join(
        [
            quote(product, safe=safe),
            *(f"{quote(k, safe=safe)}={quote(dimensions[k], safe=safe)}" for k in sorted(dimensions)),
        ]
    )
    assert line_id(product, dimensions) == expected
