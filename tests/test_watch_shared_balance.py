"""WatchBalance's watchers of one customer share the balance read after a change (server/watch.py
WatchedCustomer): one read per change, not one per watcher, and every watcher's messages are those balance.proto
WatchBalance documents (the balance now, then the newest after each committed change, nothing equal to the last
sent, a grant's start sent then). In process: BalanceService on the machine the server runs, the writer's
`committed` called by hand, the clock a variable; the kernel's reads counted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from types import SimpleNamespace
from typing import cast

import pytest
from tariff.v1 import balance_pb2

from engine.balances import BalanceView
from engine.billing import Billing
from server.sequencer import Sequencer
from server.services.balance import BalanceService, _sent_balance_bytes
from server.services.common import Context
from server.watch import SharedBalance, WatchedCustomer, WatchHub
from tests.credits_fixtures import Ledger, event
from tests.engine_fixtures import EPOCH_MS, basic_world

T0_MS = EPOCH_MS + 3_600_000
WATCHERS = 5
WAIT_S = 10.0


class Machine:
    """The balance service of a world where "acme" has a grant of 100 (1 credit a token), a clock at `now_ms`,
    and a count of the kernel's balance reads."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        world = basic_world()
        world.apply(world.grant_command("g0", "100"))
        self.ledger = Ledger(world)
        self.billing: Billing = self.ledger.billing
        self.now_ms = T0_MS
        self.reads = 0
        read = self.billing.balance_encoded

        def counted(customer_id: str, now_ms: int) -> BalanceView:
            self.reads += 1
            return read(customer_id, now_ms)

        monkeypatch.setattr(self.billing, "balance_encoded", counted)
        sequencer = cast(Sequencer, SimpleNamespace(committed=None, read_ms=lambda now_ms: now_ms))
        self.hub = WatchHub(self.billing, sequencer)
        self.service = BalanceService(self.billing, sequencer, clock_ms=lambda: self.now_ms, watch=self.hub)

    def watch(self) -> AsyncIterator[bytes]:
        request = balance_pb2.WatchBalanceRequest(customer_id="acme")
        return self.service.WatchBalance(request, cast(Context, None))

    def balance_now(self) -> bytes:
        """What GetBalance answers now (not counted)."""
        return _sent_balance_bytes(Billing.balance_encoded(self.billing, "acme", self.now_ms))

    def spend(self, transaction_id: str, tokens: float) -> None:
        ack = self.ledger.ingest([event(transaction_id, self.now_ms, tokens)], self.now_ms)
        assert ack.accepted == 1, ack


async def _next_of_each(streams: list[AsyncIterator[bytes]], meanwhile: Callable[[], None]) -> list[bytes]:
    """Each stream's next message, `meanwhile` called once every stream waits for a change."""
    waiting = [asyncio.ensure_future(anext(stream)) for stream in streams]
    for _ in range(3):
        await asyncio.sleep(0)  # each stream reaches its wait
    assert not any(task.done() for task in waiting), "a stream sent a balance before anything changed"
    meanwhile()
    return list(await asyncio.wait_for(asyncio.gather(*waiting), WAIT_S))


def test_watchers_of_one_customer_share_one_read_per_change(monkeypatch: pytest.MonkeyPatch) -> None:
    """5 watchers of acme (100 granted). Each first balance is read for its watcher (5 reads), 100 remaining;
    after a batch of 30 tokens is committed, all 5 get the same balance, 70 remaining, read once; after one of 5
    more, 65, read once again. Each balance is GetBalance's at that moment."""
    machine = Machine(monkeypatch)

    async def run() -> None:
        streams = [machine.watch() for _ in range(WATCHERS)]
        first = [await asyncio.wait_for(anext(stream), WAIT_S) for stream in streams]
        assert machine.reads == WATCHERS
        assert set(first) == {machine.balance_now()}
        assert balance_pb2.Balance.FromString(first[0]).credits_remaining == "100"
        for tokens, remaining in ((30, "70"), (5, "65")):
            reads = machine.reads
            machine.now_ms += 1_000

            def commit(tokens: int = tokens) -> None:
                machine.spend(f"t{tokens}", tokens)
                machine.hub.committed({"acme"}, 0)

            sent = await _next_of_each(streams, commit)
            assert machine.reads == reads + 1
            assert set(sent) == {machine.balance_now()}
            assert balance_pb2.Balance.FromString(sent[0]).credits_remaining == remaining
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]  # an async generator

    asyncio.run(run())
    assert machine.hub.balance_watchers == 0


def test_a_grant_starting_later_is_sent_at_its_start_from_one_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A grant of 50 starting 1 s after the watchers' first balances (100 remaining): once the clock passes its
    start, each watcher wakes by itself and sends 150 remaining, read once for all 5."""
    machine = Machine(monkeypatch)
    start_ms = T0_MS + 1_000
    machine.ledger.run(machine.ledger.world.grant_command("later", "50", starts_at_ms=start_ms, at_ms=T0_MS))

    async def run() -> None:
        streams = [machine.watch() for _ in range(WATCHERS)]
        for stream in streams:
            first = balance_pb2.Balance.FromString(await asyncio.wait_for(anext(stream), WAIT_S))
            assert first.credits_remaining == "100"
        reads = machine.reads

        def clock_passes_the_start() -> None:
            machine.now_ms = start_ms + 1

        sent = await _next_of_each(streams, clock_passes_the_start)
        assert machine.reads == reads + 1
        assert set(sent) == {machine.balance_now()}
        assert balance_pb2.Balance.FromString(sent[0]).credits_remaining == "150"
        for stream in streams:
            await stream.aclose()  # type: ignore[attr-defined]

    asyncio.run(run())


def test_a_read_is_shared_only_until_a_change_or_its_next_change() -> None:
    """WatchedCustomer.balance: a read kept since the last change is shared while the clock is before its
    next_change_ms and not earlier than the read; a change, a first balance (`fresh`), the clock reaching
    next_change_ms or going back each read again."""
    customer = WatchedCustomer()
    reads: list[int] = []

    def read(now_ms: int) -> SharedBalance:
        reads.append(now_ms)
        return SharedBalance(f"at {now_ms}".encode(), 2_000)

    assert customer.balance(1_000, read, fresh=False).data == b"at 1000"
    assert customer.balance(1_500, read, fresh=False).data == b"at 1000"  # shared
    assert customer.balance(1_600, read, fresh=True).data == b"at 1600"  # a first balance: read for it
    assert customer.balance(1_700, read, fresh=False).data == b"at 1600"
    customer.changed()
    assert customer.balance(1_800, read, fresh=False).data == b"at 1800"
    assert customer.balance(1_700, read, fresh=False).data == b"at 1700"  # the clock went back
    assert customer.balance(2_000, read, fresh=False).data == b"at 2000"  # its next change came
    assert reads == [1_000, 1_600, 1_800, 1_700, 2_000]
