"""The Python client's UsageStream against a real server that stops answering mid-stream (SIGSTOP after a first ack),
on its own 127.0.0.1 port.

The stream is noticed after `ack_timeout_s` without an ack; the reconnects then follow the retry policy (README
"usage send": "the reconnects then follow --retry-s"). They did not: the stopped server's connection stays open (no
keepalive), so each new call on it counted as connected and waited another whole `ack_timeout_s`: `usage send
--retry-s 2` gave up 120 s after the server stopped, not about 62 s. A reconnect now waits for the server's answer
(its first ack, which carries its response headers) at most what remains of `max_elapsed_s` (at least
`min_connect_s`).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from tariff import AsyncTariffClient, RetryPolicy, Unavailable, Usage, now_ms

from tests.serverproc import ServerProcess

ACK_TIMEOUT_S = 8.0
MAX_ELAPSED_S = 1.0


def usage(transaction_id: str) -> Usage:
    dimensions = {"action": "summary", "model": "gpt-4", "complexity": "complex"}
    return Usage(transaction_id, "acme", "ai_action", now_ms(), dimensions=dimensions)


def all_stopped(pid: int) -> bool:
    """Whether every thread of the process is in state T (kill(2) returns before they all are)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            return False
        if not stat[stat.rindex(")") + 1 :].split()[0].startswith("T"):
            return False
    return True


def test_a_stream_whose_server_stops_mid_stream_gives_up_after_the_ack_timeout_plus_the_retry_budget(
    tmp_path: Path,
) -> None:
    with ServerProcess(tmp_path / "data", demo=True) as server:
        assert server.pid is not None
        pid = server.pid

        async def run() -> tuple[float, BaseException]:
            async with AsyncTariffClient(server.target) as client:
                retry = RetryPolicy(max_elapsed_s=MAX_ELAPSED_S)
                stream = client.usage_stream(ack_timeout_s=ACK_TIMEOUT_S, retry=retry)
                assert (await stream.send([usage("midstop-0")])).accepted == 1
                os.kill(pid, signal.SIGSTOP)
                try:
                    while not all_stopped(pid):
                        await asyncio.sleep(0.01)
                    started = time.monotonic()
                    with pytest.raises(Exception) as failure:
                        # Bounds the test, far above both the fixed and the broken behaviour.
                        await asyncio.wait_for(stream.send([usage("midstop-1")]), 60)
                    elapsed = time.monotonic() - started
                    await stream.abort()
                finally:
                    os.kill(pid, signal.SIGCONT)
                return elapsed, failure.value

        elapsed, error = asyncio.run(run())
        # A bound on a failure mode, not a speed measurement: ack_timeout_s + max_elapsed_s + min_connect_s (10 s) is
        # promised; each reconnect waited another ack_timeout_s (16 s and more).
        assert elapsed < ACK_TIMEOUT_S + 4, f"gave up after {elapsed:.1f} s: {error!r}"
        assert isinstance(error, Unavailable), repr(error)
        assert "no answer from the server within" in str(error), repr(error)
