"""engine/instants.py: the range of instants a request may name, and how messages write a time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from engine.errors import InvalidArgument
from engine.instants import LATEST_MS, check_instant, iso

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_the_range_is_1970_to_the_end_of_8999() -> None:
    assert iso(0) == "1970-01-01T00:00:00Z"
    assert iso(LATEST_MS) == "8999-12-31T23:59:59.999000Z"
    check_instant(0, "at")
    check_instant(LATEST_MS, "at")
    for outside in (-1, LATEST_MS + 1):
        with pytest.raises(InvalidArgument) as refused:
            check_instant(outside, "grant.starts_at")
        assert [field for field, _ in refused.value.violations] == ["grant.starts_at"]


@given(st.integers(0, LATEST_MS))
def test_iso_names_the_millisecond_exactly(ms: int) -> None:
    parsed = datetime.fromisoformat(iso(ms).replace("Z", "+00:00"))
    assert (parsed - EPOCH) // timedelta(milliseconds=1) == ms
