"""SortedKeys: ListCustomers' and ListAlertRules' sorted ids, kept from page to page and grown with their dict."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from server.services.common import SORTED_KEYS_INSERT_MAX, SortedKeys


@given(st.lists(st.lists(st.text(min_size=1, max_size=6), max_size=2 * SORTED_KEYS_INSERT_MAX), max_size=6))
def test_the_keys_are_those_of_the_dict_sorted_however_it_grew_between_reads(additions: list[list[str]]) -> None:
    """Whether a few keys were added between two reads (inserted) or many (sorted again)."""
    source: dict[str, object] = {}
    keys = SortedKeys()
    for added in additions:
        source.update(dict.fromkeys(added))
        assert keys.of(source) == sorted(source)


def test_a_read_of_an_unchanged_dict_sorts_nothing_and_another_dict_starts_over() -> None:
    source: dict[str, object] = dict.fromkeys(["b", "c", "a"])
    keys = SortedKeys()
    first = keys.of(source)
    assert keys.of(source) is first and first == ["a", "b", "c"]  # kept between pages
    source["aa"] = None
    assert keys.of(source) == ["a", "aa", "b", "c"]
    restored: dict[str, object] = dict.fromkeys(["b", "a", "c", "aa"])  # a restored state: same size, another dict
    restored_keys = keys.of(restored)
    assert restored_keys == ["a", "aa", "b", "c"] and restored_keys is not first
    assert keys.of({"z": None}) == ["z"]  # smaller: started over
