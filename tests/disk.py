"""A disk that fills up, for the tests of what the journal does when a write runs out of room."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable


def disk_with_room(room_bytes: int) -> Callable[[int, memoryview], int]:
    """An os.write for a disk that takes `room_bytes` more bytes, then answers ENOSPC."""
    write = os.write

    def fills_the_disk(fd: int, data: memoryview) -> int:
        nonlocal room_bytes
        if room_bytes <= 0:
            raise OSError(errno.ENOSPC, "No space left on device")
        written = write(fd, data[:room_bytes])
        room_bytes -= written
        return written

    return fills_the_disk
