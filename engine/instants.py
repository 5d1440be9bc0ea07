"""The instants the server accepts: one range for every time a request names, so that every period computed
from them (months after a contract's start, a grant's expiry) stays within the calendar's arithmetic."""

from __future__ import annotations

from engine.errors import InvalidArgument

# Instants a request may name: 1970-01-01 to the end of year 8999 (UTC), room left for the periods after them.
LATEST_MS = 221_845_392_000_000 - 1


def check_instant(ms: int, field: str) -> None:
    """INVALID_ARGUMENT naming `field` for an instant before 1970 or after 8999."""
    if not 0 <= ms <= LATEST_MS:
        raise InvalidArgument.field(field, "must lie between 1970-01-01 and 8999-12-31 (UTC)")
