"""The explain index pages a line's re-rating adjustments after its events (server/explain_index.py): ordinals
in order, tokens bound to their line, and a token naming an adjustment the line does not have refused as stale."""

from __future__ import annotations

from pathlib import Path

import pytest

from server.explain_index import ExplainIndex, StaleToken


def test_adjustment_ordinals_page_in_order_and_a_token_past_them_is_stale(tmp_path: Path) -> None:
    index = ExplainIndex(tmp_path / "explain", map_size_bytes=1 << 20)
    try:
        first = index.page("acme", 0, "tokens", 2, "", adjustments=5)
        assert (first.events, first.adjustments) == ([], range(0, 2))
        second = index.page("acme", 0, "tokens", 2, first.next_token, adjustments=5)
        assert second.adjustments == range(2, 4)
        last = index.page("acme", 0, "tokens", 2, second.next_token, adjustments=5)
        assert (last.adjustments, last.next_token) == (range(4, 5), "")
        # The same token for another line, or for a line that has fewer adjustments than it names: stale.
        with pytest.raises(StaleToken):
            index.page("acme", 0, "other", 2, second.next_token, adjustments=5)
        with pytest.raises(StaleToken):
            index.page("acme", 0, "tokens", 2, second.next_token, adjustments=4)
        # No adjustments: one empty last page, as before.
        assert index.page("acme", 0, "tokens", 2, "") == index.page("acme", 0, "tokens", 2, "", adjustments=0)
        assert index.page("acme", 0, "tokens", 2, "").next_token == ""
    finally:
        index.close()
