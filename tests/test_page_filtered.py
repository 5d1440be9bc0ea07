"""_page with a filter (ListInvoices within period_start bounds): the same pages and tokens as paging the filtered
list, walked from the token instead of filtering every id for each page."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidArgument
from server.services.common import _page


@given(
    st.lists(st.integers(0, 999), unique=True, max_size=60),
    st.integers(1, 7),
    st.integers(0, 12),
)
def test_filtered_pages_are_those_of_the_filtered_list(numbers: list[int], modulus: int, page_size: int) -> None:
    ids = sorted(f"INV-{n:08}" for n in numbers)

    def keep(listed: str) -> bool:
        return int(listed[4:]) % modulus == 0

    kept = [i for i in ids if keep(i)]
    token, walked, pages = "", [], 0
    while True:
        page, next_token = _page(ids, page_size, token, keep)
        assert (page, next_token) == _page(kept, page_size, token)
        walked += page
        pages += 1
        if not next_token:
            break
        token = next_token
    assert walked == kept
    assert pages == max(1, -(-len(kept) // (page_size or 100)))


def test_a_token_outside_the_filter_is_not_one_the_list_issued() -> None:
    ids = ["INV-00000001", "INV-00000002", "INV-00000003"]
    with pytest.raises(InvalidArgument) as refused:
        _page(ids, 1, "INV-00000002", lambda listed: listed != "INV-00000002")
    assert refused.value.violations[0][0] == "page_token"
    assert _page(ids, 1, "INV-00000001", lambda listed: listed != "INV-00000002") == (["INV-00000003"], "")
