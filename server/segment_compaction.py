"""When the writer merges the stored dedupe segments (the base and each snapshot's changes since the one before),
after a snapshot: the rule and its thresholds."""

from __future__ import annotations

# The stored dedupe segments are merged into a new base once they hold more than the table by this fraction of it
# (ids removed or put again since the base), and the newest ones are merged once there are more than this many (see
# segments_to_compact).
DEDUPE_COMPACT_FACTOR = 0.5
DEDUPE_SEGMENTS_MAX = 8
# Less waste than this is left: a merge rewrites and fsyncs two files for it (a server seeded with no usage yet
# would merge its empty segments at every snapshot).
DEDUPE_WASTE_BYTES_MIN = 64 * 1024


def segments_to_compact(segment_bytes: list[int], table_base_bytes: int) -> int:
    """How many of the newest dedupe segments (sizes oldest first, the first a base) to merge into one, 0 for none;
    `table_base_bytes` is what a base of the table they add up to would take.

    - Waste: once the segments hold more than (1 + DEDUPE_COMPACT_FACTOR) times that (entries since removed or put
      again: a window that has filled and slides), all of them merge into a new base. A restore reads at most that
      much more than the table (or DEDUPE_WASTE_BYTES_MIN more).
    - Count: otherwise, once there are more than DEDUPE_SEGMENTS_MAX, the newest ones merge, never the base: from
      the oldest segment after the base whose newer ones add up to its size (so the sizes after the base fall
      geometrically and merges are rare), else all after the base.

    While the window fills, segments hold only new ids: merging them saves no byte a restore reads, so nothing is
    merged until there are too many, and the base is never rewritten for them. The rule before (merge from the
    oldest segment whose newer ones reach half its size) rewrote every id about three times while the window
    grew: at 2,000,000 ids, 80 MB a merge, and the snapshot's thread took about 1 µs of CPU per ingested event."""
    count = len(segment_bytes)
    waste_bytes = sum(segment_bytes) - table_base_bytes
    if count >= 2 and waste_bytes > max(DEDUPE_COMPACT_FACTOR * table_base_bytes, DEDUPE_WASTE_BYTES_MIN):
        return count
    if count <= DEDUPE_SEGMENTS_MAX:
        return 0
    for start in range(1, count - 1):
        if sum(segment_bytes[start + 1 :]) >= segment_bytes[start]:
            return count - start
    return max(2, count - 1)
