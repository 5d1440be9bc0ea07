"""Crash tests against a real server process: `kill -9` at random moments, restart, check nothing is lost.

docs/architecture.md §4: a batch is acknowledged only after its LMDB write transaction commits, and state = snapshot +
replay(journal). So after a `kill -9` and a restart on the same data directory:

- every batch whose ack the client received is still there (a resend is all duplicates);
- every other batch committed wholly or not at all (a resend is all duplicates or all accepted, never a mix);
- once everything is resent, every event is counted exactly once: the balance is exact to the last digit.

The test drives the raw generated stubs over its own grpc.aio channels so that it knows exactly which acks
arrived. All randomness (event mix, when to kill, resend order) comes from a seeded `random.Random`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import random
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable, Sequence
from decimal import Decimal
from typing import Any

import grpc
import grpc.aio
import pytest
from tariff.v1 import (
    balance_pb2,
    balance_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from server.journal import LmdbJournal
from tests.serverproc import ServerFactory, ServerProcess

CUSTOMER = "acme"
GRANT_ID = "acme-prepaid-50k"
PREPAID_CREDITS = Decimal(50_000)
COST_BASIS = Decimal(45_000) / Decimal(50_000)  # USD paid per credit: revenue recognised per credit drawn
EVENT_TYPE = "ai_action"
DEMO_RECORDS = 7  # the demo catalogue is 7 journaled commands (server/demo.py)
RPC_TIMEOUT_S = 15.0
ROUND_TIMEOUT_S = 90.0
FROZEN_WAIT_S = 0.5  # how long a kill round waits, the server frozen, for a command sent after the freeze

CHANNEL_OPTIONS = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]

# Demo prices (server/demo.py), credits per action; checked against Authorize before anything is sent.
EVENT_KINDS: tuple[tuple[dict[str, str], Decimal], ...] = (
    ({"action": "summary", "model": "gpt-4", "complexity": "simple", "data_source": "crm"}, Decimal("2.5")),
    ({"action": "summary", "model": "gpt-4o-mini", "complexity": "simple", "data_source": "crm"}, Decimal("0.5")),
    ({"action": "summary", "model": "gpt-4o-mini", "complexity": "complex", "data_source": "web"}, Decimal("1")),
)


def wire(value: Decimal) -> str:
    """The server's canonical decimal text (engine/money.py): no exponent, no trailing zeros."""
    if value == 0:
        return "0"
    text = format(value, "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclasses.dataclass(frozen=True)
class Batch:
    batch_id: str
    message: usage_pb2.UsageBatch
    cost: Decimal  # exact credits this batch burns when its events are accepted

    @property
    def size(self) -> int:
        return len(self.message.events)


def make_batches(rng: random.Random, tag: str, count: int, size: int, timestamp_ms: int) -> list[Batch]:
    batches = []
    for b in range(count):
        events = []
        cost = Decimal(0)
        for e in range(size):
            dimensions, price = EVENT_KINDS[rng.randrange(len(EVENT_KINDS))]
            cost += price
            events.append(
                usage_pb2.UsageEvent(
                    transaction_id=f"{tag}-b{b:04d}-e{e:04d}",
                    customer_id=CUSTOMER,
                    event_type=EVENT_TYPE,
                    timestamp_ms=timestamp_ms,
                    dimensions=dimensions,
                )
            )
        batch_id = f"{tag}-b{b:04d}"
        batches.append(Batch(batch_id, usage_pb2.UsageBatch(batch_id=batch_id, events=events), cost))
    return batches


def channel(server: ServerProcess) -> Any:
    return grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS)


async def get_balance(server: ServerProcess) -> balance_pb2.Balance:
    async with channel(server) as ch:
        stub = balance_pb2_grpc.BalanceServiceStub(ch)
        balance: balance_pb2.Balance = await stub.GetBalance(
            balance_pb2.GetBalanceRequest(customer_id=CUSTOMER), timeout=RPC_TIMEOUT_S
        )
        return balance


def prepaid_grant(balance: balance_pb2.Balance) -> balance_pb2.GrantBalance:
    grants = [g for g in balance.grants if g.grant_id == GRANT_ID]
    assert len(grants) == 1, f"expected the demo grant {GRANT_ID!r} once in {balance}"
    return grants[0]


def assert_balance_exact(balance: balance_pb2.Balance, drawn: Decimal) -> None:
    """The demo customer's balance after exactly `drawn` credits of usage (no overage at these volumes)."""
    remaining = wire(PREPAID_CREDITS - drawn)
    grant = prepaid_grant(balance)
    observed = {
        "credits_remaining": balance.credits_remaining,
        "credits_available": balance.credits_available,
        "credits_held": balance.credits_held,
        "period_charges": balance.period_charges,
        "overage_amount": balance.overage_amount,
        "grant.amount": grant.amount,
        "grant.drawn": grant.drawn,
        "grant.remaining": grant.remaining,
        "grant.recognized_revenue": grant.recognized_revenue,
    }
    expected = {
        "credits_remaining": remaining,
        "credits_available": remaining,
        "credits_held": "0",
        "period_charges": wire(drawn),
        "overage_amount": "0",
        "grant.amount": wire(PREPAID_CREDITS),
        "grant.drawn": wire(drawn),
        "grant.remaining": remaining,
        "grant.recognized_revenue": wire(drawn * COST_BASIS),
    }
    assert observed == expected


async def check_demo_prices(server: ServerProcess) -> None:
    """The test's price table agrees with the server's, so a balance mismatch later means lost or double events."""
    async with channel(server) as ch:
        stub = balance_pb2_grpc.BalanceServiceStub(ch)
        for dimensions, price in EVENT_KINDS:
            answer = await stub.Authorize(
                balance_pb2.AuthorizeRequest(
                    request_id="price-check", customer_id=CUSTOMER, event_type=EVENT_TYPE, dimensions=dimensions
                ),
                timeout=RPC_TIMEOUT_S,
            )
            assert answer.allowed, answer
            assert Decimal(answer.estimated_cost) == price, (dimensions, answer)


# ---------------------------------------------------------------------------------------------
# One round: send batches over concurrent IngestUsage streams, maybe kill -9 the server midway


@dataclasses.dataclass(frozen=True)
class KillPlan:
    after_acks: int  # kill once this many acks (over all streams) have arrived...
    delay_s: float  # ...and this much longer


@dataclasses.dataclass
class RoundResult:
    acks: dict[str, usage_pb2.IngestAck] = dataclasses.field(default_factory=dict)
    killed: bool = False
    sent_at_kill: int = 0  # batches handed to grpc when the kill was sent
    acked_at_kill: int = 0
    stream_errors: list[str] = dataclasses.field(default_factory=list)


async def ingest_stream(
    stub: Any,
    batches: Sequence[Batch],
    window: int,
    on_sent: Callable[[], None],
    on_ack: Callable[[usage_pb2.IngestAck], None],
    last_held: asyncio.Event | None = None,
) -> None:
    """One IngestUsage stream: at most `window` batches unacknowledged at a time; acks checked to come in order.
    With `last_held`, the last batch waits for it: a round with a kill never sends every batch before the kill."""
    received = 0
    last_seq = 0
    finished = False
    progress = asyncio.Event()

    async def requests() -> AsyncIterator[usage_pb2.UsageBatch]:
        for i, batch in enumerate(batches):
            while i - received >= window and not finished:
                progress.clear()
                await progress.wait()
            if last_held is not None and i == len(batches) - 1:
                await last_held.wait()
            if finished:  # the call is over (the server was killed): grpc does not stop this generator itself
                return
            on_sent()
            yield batch.message

    call = stub.IngestUsage(requests())
    try:
        async for ack in call:
            assert received < len(batches), f"more acks than batches on one stream: {ack}"
            assert ack.batch_id == batches[received].batch_id, "acks must come one per batch, in the order sent"
            if ack.accepted:
                assert ack.journal_seq > last_seq, f"journal seqs must grow along a stream: {last_seq}, then {ack}"
            else:  # a batch that accepted nothing takes no journal record: it is acked with the current seq
                assert ack.journal_seq >= last_seq, f"journal seqs never go back: {last_seq}, then {ack}"
            last_seq = ack.journal_seq
            received += 1
            progress.set()
            on_ack(ack)
        assert received == len(batches), f"the stream ended after {received} of {len(batches)} acks without an error"
    finally:
        finished = True
        progress.set()


async def send_round(
    server: ServerProcess, streams: Sequence[Sequence[Batch]], window: int, kill: KillPlan | None = None
) -> RoundResult:
    """Sends each list of batches over its own IngestUsage stream, concurrently, and collects the acks.

    With a kill plan, a thread sends SIGKILL `delay_s` after the `after_acks`-th ack has been read: a thread,
    not a task, so that the moment does not depend on when the event loop gets round to it. Meanwhile the
    streams keep sending, so batches are in flight when the process dies.
    """
    result = RoundResult()
    sent = 0
    killer: threading.Thread | None = None
    loop = asyncio.get_running_loop()
    # A fast server can take every batch in the few milliseconds between the kill's moment and the signal landing;
    # each stream's last batch waits for the kill, so the kill always leaves batches unsent.
    last_held = asyncio.Event() if kill is not None else None

    def kill_later(plan: KillPlan) -> None:
        time.sleep(plan.delay_s)
        result.sent_at_kill, result.acked_at_kill = sent, len(result.acks)
        server.kill9()
        result.killed = True
        if last_held is not None:
            loop.call_soon_threadsafe(last_held.set)

    def on_sent() -> None:
        nonlocal sent
        sent += 1

    def on_ack(ack: usage_pb2.IngestAck) -> None:
        nonlocal killer
        assert ack.batch_id not in result.acks, f"batch {ack.batch_id} acked twice in one round"
        result.acks[ack.batch_id] = ack
        if kill is not None and killer is None and len(result.acks) >= kill.after_acks:
            killer = threading.Thread(target=kill_later, args=(kill,), name="kill9", daemon=True)
            killer.start()

    async with channel(server) as ch:
        stub = usage_pb2_grpc.UsageServiceStub(ch)
        tasks = [
            asyncio.create_task(ingest_stream(stub, batches, window, on_sent, on_ack, last_held)) for batches in streams
        ]
        outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), ROUND_TIMEOUT_S)
    if killer is not None:
        await asyncio.to_thread(killer.join)
    for outcome in outcomes:
        if outcome is None:
            continue
        if result.killed and isinstance(outcome, grpc.aio.AioRpcError):
            result.stream_errors.append(f"{outcome.code().name}: {outcome.details()}")
            continue
        raise outcome
    if kill is not None:
        assert result.killed, f"the streams ended before the planned kill {kill}: {len(result.acks)} acks"
    return result


def split(batches: Sequence[Batch], streams: int) -> list[list[Batch]]:
    return [list(batches[i::streams]) for i in range(streams)]


# ---------------------------------------------------------------------------------------------
# The ledger the test keeps of what it knows was committed


@dataclasses.dataclass
class Known:
    """What the client knows about each batch, from the acks it received."""

    batches: dict[str, Batch]
    committed_round: dict[str, int] = dataclasses.field(default_factory=dict)  # first round with an accepting ack
    lost_ack: dict[str, int] = dataclasses.field(default_factory=dict)  # committed before, its ack never came
    accepted_total: int = 0

    def record(self, round_no: int, acks: dict[str, usage_pb2.IngestAck]) -> None:
        for batch_id, ack in acks.items():
            batch = self.batches[batch_id]
            size = batch.size
            where = f"round {round_no}, batch {batch_id} ({size} events): {ack}"
            assert not ack.rejected, f"no event should be rejected; {where}"
            assert ack.accepted + ack.duplicates == size, f"accepted + duplicates must cover the batch; {where}"
            self.accepted_total += ack.accepted
            if batch_id in self.committed_round or batch_id in self.lost_ack:
                assert (ack.accepted, ack.duplicates) == (0, size), (
                    f"a batch already acknowledged must be all duplicates when resent; {where}"
                )
            elif round_no == 0:
                assert (ack.accepted, ack.duplicates) == (size, 0), f"a first send must be all accepted; {where}"
                self.committed_round[batch_id] = 0
            elif ack.accepted == size:
                self.committed_round[batch_id] = round_no
            else:
                # It committed in an earlier round but its ack was lost in the crash: all of it, atomically.
                assert (ack.accepted, ack.duplicates) == (0, size), (
                    f"an unacknowledged batch must have committed wholly or not at all, never half; {where}"
                )
                self.lost_ack[batch_id] = round_no

    def acked(self) -> set[str]:
        return set(self.committed_round) | set(self.lost_ack)

    def drawn_bounds_before(self, round_no: int) -> tuple[Decimal, Decimal]:
        """Credits the server must hold as drawn when round `round_no` starts: (at least, at most).

        Exact unless a batch's ack was lost and it stayed unacknowledged over several rounds (then it
        committed in one of them, the test cannot tell which).
        """
        low = sum((self.batches[b].cost for b, r in self.committed_round.items() if r < round_no), start=Decimal(0))
        ambiguous = Decimal(0)
        for batch_id, first_seen in self.lost_ack.items():
            if first_seen <= round_no:
                low += self.batches[batch_id].cost
            else:
                ambiguous += self.batches[batch_id].cost
        return low, low + ambiguous


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.mark.slow
@pytest.mark.parametrize(
    ("seed", "kills", "snapshot_every"),
    [
        pytest.param(101, 1, None, id="seed101-1kill"),
        pytest.param(202, 1, None, id="seed202-1kill"),
        pytest.param(303, 1, 4, id="seed303-1kill-snapshots"),
        pytest.param(404, 1, 10, id="seed404-1kill-snapshots"),
        pytest.param(505, 2, None, id="seed505-2kills"),
        pytest.param(606, 2, 4, id="seed606-2kills-snapshots"),
    ],
)
def test_kill9_mid_stream_loses_no_acknowledged_event_and_counts_each_once(
    server_factory: ServerFactory, seed: int, kills: int, snapshot_every: int | None
) -> None:
    """`kill -9` with batches in flight (snapshot_every: snapshots taken all along, so a kill may land in one)."""
    rng = random.Random(seed)
    batch_count, batch_size, stream_count = 60, 200, 2
    window = rng.randint(4, 12)  # unacknowledged batches per stream
    extra_args = ["--snapshot-every", str(snapshot_every)] if snapshot_every else []
    server = server_factory(demo=True, extra_args=extra_args)

    async def main() -> None:
        await check_demo_prices(server)
        batches = make_batches(rng, f"s{seed}", batch_count, batch_size, now_ms())
        known = Known({b.batch_id: b for b in batches})
        total_events = sum(b.size for b in batches)
        total_cost = sum((b.cost for b in batches), start=Decimal(0))
        drawn_after_restart: list[tuple[int, Decimal]] = []  # (round that followed, credits drawn then)

        round_no = 0
        order = list(batches)
        while True:
            kill = None
            if round_no < kills:
                # Leave more batches than the windows hold, so that the kill lands before the last is sent.
                kill = KillPlan(rng.randint(1, batch_count - stream_count * window - 8), rng.uniform(0.0, 0.003))
            result = await send_round(server, split(order, stream_count), window, kill)
            known.record(round_no, result.acks)
            if kill is None:
                assert set(result.acks) == set(known.batches), "a round without a kill must ack every batch"
                break
            # The kill must have caught batches in flight, or the round proves nothing.
            assert result.sent_at_kill > result.acked_at_kill, result
            assert len(result.acks) < batch_count, result
            await asyncio.to_thread(server.restart)
            balance = await get_balance(server)
            drawn_after_restart.append((round_no + 1, Decimal(prepaid_grant(balance).drawn)))
            round_no += 1
            order = list(batches)
            rng.shuffle(order)  # resend everything, acked or not, in a new order

        # Each event counted exactly once over all rounds: newly accepted once, or its batch's ack was lost.
        lost = sum(known.batches[b].size for b in known.lost_ack)
        assert known.accepted_total + lost == total_events
        assert known.acked() == set(known.batches)

        # The state each restart recovered: everything acknowledged before it, nothing half-applied.
        for next_round, drawn in drawn_after_restart:
            low, high = known.drawn_bounds_before(next_round)
            assert low <= drawn <= high, (
                f"after restart (before round {next_round}) the server had drawn {drawn} credits;"
                f" the acknowledged batches alone make {low}, at most {high} could have committed"
            )

        assert_balance_exact(await get_balance(server), total_cost)

        # And once more, everything is a duplicate: nothing changes.
        final = await send_round(server, split(batches, 1), window)
        assert all((a.accepted, a.duplicates) == (0, batch_size) for a in final.acks.values()), final.acks
        assert_balance_exact(await get_balance(server), total_cost)

    asyncio.run(main())


def test_kill9_during_admin_commands(server_factory: ServerFactory) -> None:
    rng = random.Random(7)
    count, concurrency = 300, 24
    server = server_factory()
    kill_after = rng.randint(40, 200)
    segments = [rng.choice(["smb", "mid", "enterprise"]) for _ in range(count)]

    def request(i: int) -> contracts_pb2.CreateCustomerRequest:
        return contracts_pb2.CreateCustomerRequest(
            id=f"cust-{i:04d}", name=f"Customer {i}", attributes={"segment": segments[i], "n": str(i)}
        )

    async def main() -> None:
        ok: dict[int, contracts_pb2.Customer] = {}
        failed: dict[int, str] = {}  # unanswered: why
        in_flight_at_kill = 0
        enough = asyncio.Event()
        sent_while_frozen = asyncio.Event()
        frozen = killed = False
        gate = asyncio.Semaphore(concurrency)

        async def create(stub: Any, i: int) -> None:
            nonlocal in_flight_at_kill
            async with gate:
                if killed:
                    failed[i] = "not sent: the server was already killed"
                    return
                if frozen:
                    sent_while_frozen.set()
                try:
                    customer: contracts_pb2.Customer = await stub.CreateCustomer(request(i), timeout=RPC_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    assert killed, f"CreateCustomer {i} failed before the kill: {exc.code().name} {exc.details()}"
                    in_flight_at_kill += 1
                    failed[i] = exc.code().name
                    return
                ok[i] = customer
                if len(ok) >= kill_after:
                    enough.set()

        async with channel(server) as ch:
            stub = contracts_pb2_grpc.ContractServiceStub(ch)
            tasks = [asyncio.create_task(create(stub, i)) for i in range(count)]
            await asyncio.wait_for(enough.wait(), ROUND_TIMEOUT_S)
            # A fast server answers every command in flight in the moment before SIGKILL lands. Frozen first (at
            # whatever point it is, a commit included), it cannot answer a command sent after the freeze; when none
            # is sent within the wait, every slot of the gate holds a command the frozen server has not answered.
            assert server.pid is not None
            os.kill(server.pid, signal.SIGSTOP)
            frozen = True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sent_while_frozen.wait(), FROZEN_WAIT_S)
            server.kill9()
            killed = True
            await asyncio.wait_for(asyncio.gather(*tasks), ROUND_TIMEOUT_S)

        assert len(ok) >= kill_after and in_flight_at_kill > 0, f"the kill must land with commands in flight: {failed}"
        for i, customer in ok.items():
            assert (customer.id, customer.name) == (f"cust-{i:04d}", f"Customer {i}")

        await asyncio.to_thread(server.restart)
        async with channel(server) as ch:
            stub = contracts_pb2_grpc.ContractServiceStub(ch)
            for i in sorted(ok):
                got = await stub.GetCustomer(
                    contracts_pb2.GetCustomerRequest(id=f"cust-{i:04d}"), timeout=RPC_TIMEOUT_S
                )
                want = request(i)
                assert (got.id, got.name, dict(got.attributes)) == (want.id, want.name, dict(want.attributes))
                assert got.created_at == ok[i].created_at
                # A retry (same id, same request) is answered as the first call was, and changes nothing.
                assert await stub.CreateCustomer(want, timeout=RPC_TIMEOUT_S) == got
            # An unanswered command committed wholly or not at all; retrying it settles which.
            for i in sorted(failed):
                want = request(i)
                try:
                    got = await stub.GetCustomer(contracts_pb2.GetCustomerRequest(id=want.id), timeout=RPC_TIMEOUT_S)
                except grpc.aio.AioRpcError as exc:
                    assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
                    created = await stub.CreateCustomer(want, timeout=RPC_TIMEOUT_S)
                    assert created.id == want.id
                    continue
                assert (got.id, got.name, dict(got.attributes)) == (want.id, want.name, dict(want.attributes))
                assert await stub.CreateCustomer(want, timeout=RPC_TIMEOUT_S) == got

            listed: list[str] = []
            token = ""
            while True:
                page = await stub.ListCustomers(
                    contracts_pb2.ListCustomersRequest(page_size=1000, page_token=token), timeout=RPC_TIMEOUT_S
                )
                listed.extend(c.id for c in page.customers)
                token = page.next_page_token
                if not token:
                    break
            assert listed == [f"cust-{i:04d}" for i in range(count)]

    asyncio.run(main())


def peek_journal(server: ServerProcess) -> tuple[int, int]:
    """(seq of the newest snapshot, last journal seq), read while the server is down."""
    assert not server.running
    journal = LmdbJournal(server.data_dir / "journal", map_size_bytes=1 << 30)
    try:
        snapshot = journal.load_snapshot()
        return (snapshot[0] if snapshot else 0), journal.last_seq()
    finally:
        journal.close()


def test_recovery_from_snapshot_plus_journal(server_factory: ServerFactory) -> None:
    rng = random.Random(3)
    server = server_factory(demo=True, extra_args=["--snapshot-every", "3"])

    async def main() -> None:
        await check_demo_prices(server)
        batches = make_batches(rng, "snap", 30, 50, now_ms())
        result = await send_round(server, split(batches, 1), 8)
        assert all(a.accepted == 50 for a in result.acks.values()) and len(result.acks) == len(batches)
        drawn = sum((b.cost for b in batches), start=Decimal(0))
        assert_balance_exact(await get_balance(server), drawn)

        server.kill9()
        snapshot_seq, last_seq = peek_journal(server)
        assert DEMO_RECORDS < snapshot_seq <= last_seq, "snapshots must have been taken during the ingest"
        # Restarted with a snapshot interval it cannot reach, so that the two single-batch commits below exist only
        # in the journal after the newest snapshot. With --snapshot-every 3 they did only when the kill left no
        # record after the snapshot: a recovery's replayed records count toward the next snapshot, and one left
        # behind (the snapshot's thread still writing at the kill) made the tail's second commit due one.
        server.extra_args = ("--snapshot-every", "1000000")
        await asyncio.to_thread(server.restart)
        assert_balance_exact(await get_balance(server), drawn)

        tail = make_batches(rng, "tail", 2, 40, now_ms())
        async with channel(server) as ch:
            stub = usage_pb2_grpc.UsageServiceStub(ch)
            for batch in tail:
                ack = await stub.IngestUsageBatch(batch.message, timeout=RPC_TIMEOUT_S)
                assert (ack.accepted, ack.duplicates, len(ack.rejected)) == (40, 0, 0), ack
        drawn += sum((b.cost for b in tail), start=Decimal(0))
        server.kill9()
        snapshot_seq_2, last_seq_2 = peek_journal(server)
        assert snapshot_seq <= snapshot_seq_2 < last_seq_2 == last_seq + 2, (snapshot_seq_2, last_seq_2)
        await asyncio.to_thread(server.restart)
        recovered = await get_balance(server)
        assert_balance_exact(recovered, drawn)
        assert recovered.as_of_seq == last_seq_2

        # SIGTERM writes a final snapshot; a restart from it alone answers the same.
        assert await asyncio.to_thread(server.terminate) == 0
        assert peek_journal(server) == (last_seq_2, last_seq_2)
        await asyncio.to_thread(server.restart)
        assert await get_balance(server) == recovered

    asyncio.run(main())
