"""The instants the server accepts: one range for every time a request names, so that every period computed
from them (months after a contract's start, a grant's expiry) stays within the calendar's arithmetic."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from engine.errors import InvalidArgument

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Instants a request may name: 1970-01-01 to the end of year 8999 (UTC), room left for the periods after them.
LATEST_MS = 221_845_392_000_000 - 1


def check_instant(ms: int, field: str) -> None:
    """INVALID_ARGUMENT naming `field` for an instant before 1970 or after 8999."""
    if not 0 <= ms <= LATEST_MS:
        raise InvalidArgument.field(field, "must lie between 1970-01-01 and 8999-12-31 (UTC)")


def iso(ms: int) -> str:
    """A time as messages name it, `2026-12-01T00:00:00Z` (`.123000` when it has milliseconds): computed on
    integers, as a float of seconds drifts by microseconds late in the range (8999-12-31T23:59:59.998993Z)."""
    return (_EPOCH + timedelta(milliseconds=ms)).isoformat().replace("+00:00", "Z")
