"""What many WatchBalance streams on one customer cost the server per commit touching that customer:
`python -m server.bench.watch_fanout [--watchers 0 200] [--grants 300] [--batches 200]`.

Starts `tariff serve --demo` on a fresh data directory (tests/serverproc.py), gives "acme" `--grants` PROMOTIONAL
grants (so that its balance, a few dozen KB, costs something to build), then for each `--watchers` count opens
that many WatchBalance streams on "acme" (read as fast as they come, from a client thread of their own) and ingests
`--batches` batches of one acme event each, one at a time, each acknowledged (durable) before the next: one
commit touching acme each. It reads the event loop's time on a CPU (the main thread's `schedstat`) and the whole
process's (`/proc/PID/stat`) around the ingest, and prints both per commit, and checks that every watcher's last
balance is the one GetBalance answers at the end. A measurement, not a test: it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import grpc
from tariff import Usage
from tariff.v1 import balance_pb2, balance_pb2_grpc, contracts_pb2

from tests.serverproc import ServerProcess

CUSTOMER = "acme"
# One event of 5 credits with the demo catalogue (tests/test_server_watch.py).
DIMENSIONS = {"action": "summary", "data_source": "crm", "model": "gpt-4", "complexity": "complex"}
CHANNELS = 4  # the watchers' streams are spread over this many connections
WAIT_S = 120.0


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--watchers", type=int, nargs="+", default=[0, 200])
    parser.add_argument("--grants", type=int, default=300)
    parser.add_argument("--batches", type=int, default=200)
    return parser.parse_args()


def _loop_cpu_ns(pid: int) -> int:
    return int(Path(f"/proc/{pid}/task/{pid}/schedstat").read_text().split()[0])


def _process_cpu_ns(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class Watchers:
    """`count` WatchBalance streams on CUSTOMER, read on a thread of their own; `last[i]` is stream i's last
    balance and `received` counts every balance received."""

    def __init__(self, target: str, count: int) -> None:
        self.target = target
        self.count = count
        self.last: list[balance_pb2.Balance | None] = [None] * count
        self.received = 0
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def __enter__(self) -> Watchers:
        self._thread.start()
        deadline = time.monotonic() + WAIT_S
        while any(balance is None for balance in self.last):
            if time.monotonic() > deadline:
                raise TimeoutError("the watchers did not all receive their first balance")
            time.sleep(0.05)
        return self

    def __exit__(self, *_: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(WAIT_S)

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        options = [("grpc.enable_http_proxy", 0)]
        channels = [grpc.aio.insecure_channel(self.target, options=options) for _ in range(CHANNELS)]
        tasks = [asyncio.create_task(self._watch(channels[i % CHANNELS], i)) for i in range(self.count)]
        await self._stop.wait()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in channels:
            await channel.close()

    async def _watch(self, channel: grpc.aio.Channel, index: int) -> None:
        stub = balance_pb2_grpc.BalanceServiceStub(channel)  # type: ignore[no-untyped-call]  # generated, unannotated
        async for balance in stub.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=CUSTOMER)):
            self.last[index] = balance
            self.received += 1


def _run(server: ServerProcess, watchers: int, batches: int, first_id: int) -> None:
    pid = server.pid
    assert pid is not None
    with server.client() as client, Watchers(server.target, watchers) as watching:
        time.sleep(0.5)  # the first balances sent
        received_before = watching.received
        loop_before, process_before = _loop_cpu_ns(pid), _process_cpu_ns(pid)
        for index in range(first_id, first_id + batches):
            usage = Usage(f"fanout-{index}", CUSTOMER, "ai_action", int(time.time() * 1000), DIMENSIONS)
            ack = client.ingest_batch([usage])
            assert ack.accepted == 1, ack
        final = client.get_balance(CUSTOMER)
        deadline = time.monotonic() + WAIT_S
        while any(b is None or b.as_of_seq < final.as_of_seq for b in watching.last):
            if time.monotonic() > deadline:
                raise TimeoutError("the watchers did not all receive the last balance")
            time.sleep(0.05)
        loop_ns, process_ns = _loop_cpu_ns(pid) - loop_before, _process_cpu_ns(pid) - process_before
        assert all(balance == final for balance in watching.last), "a watcher's last balance is not GetBalance's"
        sent = watching.received - received_before
    print(
        f"{watchers:>5} watchers: {batches} commits, {sent:,} balances sent; per commit: event loop "
        f"{loop_ns / batches / 1000:,.0f} µs, process {process_ns / batches / 1000:,.0f} µs"
    )


def main() -> None:
    arguments = _arguments()
    work = Path(tempfile.mkdtemp(prefix="watch-fanout-"))
    server = ServerProcess(work / "data", demo=True)
    try:
        server.start()
        with server.client() as client:
            for index in range(arguments.grants):
                grant = contracts_pb2.Grant(
                    id=f"fanout-{index}", customer_id=CUSTOMER, kind=contracts_pb2.PROMOTIONAL, amount="1"
                )
                client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
            size = client.get_balance(CUSTOMER).ByteSize()
        print(f"{CUSTOMER}: {arguments.grants + 1} grants, a balance of {size:,} bytes")
        for round_index, watchers in enumerate(arguments.watchers):
            _run(server, watchers, arguments.batches, round_index * arguments.batches)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
