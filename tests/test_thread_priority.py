"""The writer's threads run at a lower priority than the event loop's (server/app.py, Linux)."""

from __future__ import annotations

import os
import sys
import threading

import pytest

from server.scheduling import BACKGROUND_NICE, lower_background_threads

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="nice is per thread on Linux only")


def test_the_writers_threads_are_lowered_and_no_other_thread_is() -> None:
    release = threading.Event()
    rating = threading.Thread(target=release.wait, name="tariff-rating", daemon=True)
    other = threading.Thread(target=release.wait, name="not-a-writer", daemon=True)
    rating.start()
    other.start()
    try:
        nice_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        assert "tariff-rating" in lower_background_threads()
        assert rating.native_id is not None and other.native_id is not None
        assert os.getpriority(os.PRIO_PROCESS, rating.native_id) == min(nice_before + BACKGROUND_NICE, 19)
        assert os.getpriority(os.PRIO_PROCESS, other.native_id) == nice_before
        assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == nice_before
    finally:
        release.set()
        rating.join()
        other.join()
