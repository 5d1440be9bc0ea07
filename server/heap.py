"""trim_heap: the freed pages of the C heap (glibc's arenas) returned to the system, after a snapshot or a
recovery."""

from __future__ import annotations

import ctypes
from collections.abc import Callable


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc's; other C libraries have none
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


_malloc_trim = _load_malloc_trim()


def trim_heap() -> None:
    """After a snapshot or a recovery. Their buffers (tens of MB of bytes at a million customers, in pieces glibc
    serves from its arenas, not from maps of their own) are freed by then, but glibc keeps freed pages, scattered between live objects,
    as the process's own. malloc_trim(0) returns every whole free page of every arena to the system
    (MADV_DONTNEED); ctypes releases the GIL for the call. It recovers only part of the heap a server that
    snapshots holds over one that does not (README, Memory)."""
    if _malloc_trim is not None:
        _malloc_trim(0)
