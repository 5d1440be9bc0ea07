"""The fault soak: streaming load with retries, `kill -9` at seeded random moments, a check after every crash.

    python -m tests.soak --crashes 50 --clients 4 --seed 1 --backups 3 --out soak.json

One real server process (tests/serverproc.py) with a small catalogue built over the admin RPCs (two
products, UNIT prices, per customer a promotional and a prepaid grant, overage allowed). Load comes from:

- stream clients: `tariff.UsageStream` (the Python client's bidi stream, which reconnects and resends every
  unacknowledged batch with the same ids), several sender tasks each;
- one retry-storm client: every batch sent by unary IngestUsageBatch and resent 1-5 more times, some resends
  concurrent with the original, some after it, each retried through crashes until answered;
- one contract-ending client: over and over, a customer of its own with a contract (no grants) whose end it sets
  a second ahead, retries, moves, tries to move before usage recorded and, once passed, again; every call (and each
  of its small batches, dated before and after the end) retried through crashes until answered, each answer the
  one EndContract's rules (tests/reference_billing.py's ReferenceRating) give for the end held, the usage recorded
  and the time, between the moments before the first attempt and after the answer. The ends taken are journaled
  `end_contract` records, which the kills make the server replay: usage dated after them must stay
  NO_ACTIVE_CONTRACT, GetContract show them and GetBalance have no current period.

Each cycle: run the load for a seeded random while, `kill -9` the server, stop starting new batches, and
check the journal (tests/reference_billing.py, read straight from LMDB while the server is down): every
batch a client saw acknowledged is in it, every event exactly once, every journaled batch whole and
identical to what a client sent, each journaled outcome equal to the recomputation. Then restart, let the
clients resend until everything is acknowledged, and compare every read RPC that answers (GetBalance of
every customer, GetCustomer, ListCustomers, GetContract, ListProducts, GetRateCard, GetAuditLog) with the
reference computed from the journal at the same seq.

With `--backups N` (3 by default, 0: none), N cycles chosen by the seed also run `tariff backup` against the live
server while the clients ingest, some of them with the cycle's `kill -9` landing while it copies: it must complete, or
fail cleanly (exit 1, no DEST), never leaving its partial copy. After the soak, each completed backup is checked: its
journal is the original journal's first K records byte for byte (K its last seq: a prefix, each batch whole or absent),
a server started on it says the `replayed_records` the README promises (the records after its snapshot, all of them
when the explain index was not copied or is behind the snapshot), its reads equal the recomputation of that journal,
and every batch acknowledged before the backup started, resent, is all duplicates.

After the crashes: 10,000 conflicting duplicates (acknowledged transaction ids, other content) must all be
DUPLICATE_CONFLICT with balances unchanged, and identical resends all duplicates, before and after one more
`kill -9`. Finally SIGTERM, a from-scratch recomputation of the whole journal, and one more comparison.

Any disagreement raises `SoakFailure` (the CLI exits 1); the summary says what was exercised.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import json
import logging
import random
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import grpc
import grpc.aio
from google.protobuf import timestamp_pb2
from tariff import AsyncTariffClient
from tariff.client import RetryPolicy
from tariff.v1 import (
    balance_pb2,
    balance_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from tests.contract_ends import EndOutcome, refusal
from tests.reference_billing import HOUR_MS, ReferenceBilling, ReferenceRating, content_of, wire
from tests.serverproc import REPO_ROOT, ServerProcess

CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.enable_http_proxy", 0),
    ("grpc.initial_reconnect_backoff_ms", 50),
    ("grpc.min_reconnect_backoff_ms", 50),
    ("grpc.max_reconnect_backoff_ms", 250),
]
RPC_TIMEOUT_S = 15.0
QUIESCE_TIMEOUT_S = 180.0
RATE_CARD_ID = "soak-card"
EVENT_TYPE = "llm"
MODELS = ("big", "small")
REGIONS = ("eu", "us")
# UNIT prices in credits: tokens per 1,000 by model, and a flat fee per call.
TOKEN_PRICES = {"big": ("3", "1000"), "small": ("0.4", "1000")}
CALL_PRICE = "0.01"
CONFLICT_BATCH_EVENTS = 2_000
YEAR_MS = 366 * 24 * 3600 * 1000
SNAPSHOT_EVERY_RECORDS = 40
KILL_DURING_RESENDS_CHANCE = 0.25
# Of the backups, those whose cycle's kill -9 lands while the backup copies (its DEST.partial-<pid> exists).
KILL_DURING_BACKUP_CHANCE = 0.5
RESEND_CHUNK_EVENTS = 10_000  # a backup's check resends the batches acknowledged before it this many events a call
# The backup's line (server/backup.py BackupDone.line): the journal's last seq, the snapshot's, the explain index's.
BACKUP_LINE = re.compile(
    r"records up to seq (\d+) .*?(?:snapshot at seq (\d+)|no snapshot).*?(?:explain index covering seq (\d+)|no explain)"
)


class SoakFailure(AssertionError):
    """The server broke a promise (lost, doubled or half-applied usage, or a read that disagrees)."""


def check(condition: bool, message: str) -> None:
    if not condition:
        raise SoakFailure(message)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timestamp(ms: int) -> timestamp_pb2.Timestamp:
    return timestamp_pb2.Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def month_start_ms(at_ms: int) -> int:
    moment = datetime.fromtimestamp(at_ms / 1000, tz=UTC)
    return int(datetime(moment.year, moment.month, 1, tzinfo=UTC).timestamp() * 1000)


@dataclasses.dataclass(frozen=True)
class SoakConfig:
    crashes: int = 5
    clients: int = 2  # stream clients (each with SENDERS_PER_CLIENT concurrent senders) besides the storm client
    seed: int = 1
    customers: int = 6
    conflicts: int = 10_000
    run_s_min: float = 0.3  # load runs this long (seeded uniform) before each kill
    run_s_max: float = 1.5
    batch_events_max: int = 300
    sender_pause_s_max: float = 0.02  # each sender rests up to this long between batches: a soak, not a benchmark
    senders_per_client: int = 3
    backups: int = 0  # `tariff backup` runs during this many crash cycles (seeded), each checked after the soak


@dataclasses.dataclass
class TakenBackup:
    """One `tariff backup` run against the live server, and what the clients had seen acknowledged when it started."""

    destination: Path
    process: asyncio.subprocess.Process
    acked_before: list[SentBatch]
    line: str = ""


@dataclasses.dataclass
class SentBatch:
    batch_id: str
    message: usage_pb2.UsageBatch
    kind: str  # "stream" | "storm"
    acks: list[usage_pb2.IngestAck] = dataclasses.field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.message.events)


@dataclasses.dataclass
class SoakSummary:
    seed: int
    clients: int
    crashes_survived: int = 0
    checks_after_crash: int = 0
    kills_with_batches_in_flight: int = 0
    kills_during_resends: int = 0  # a second kill right after a restart, while clients resend
    batches_sent: int = 0
    batches_acknowledged: int = 0
    events_acknowledged_and_verified: int = 0
    events_committed_but_first_ack_lost: int = 0  # only ever acked as duplicates: the ack was lost in a crash
    journal_records: int = 0
    stream_resent_batches: int = 0
    stream_reconnects: int = 0
    storm_resends: int = 0
    duplicates_answered: int = 0
    conflicts_tried: int = 0
    conflicts_detected: int = 0
    identical_resends_tried: int = 0
    identical_resends_counted_as_duplicates: int = 0
    reads_compared: int = 0
    backups_taken: int = 0
    backups_completed: int = 0  # the others failed cleanly (exit 1, no DEST)
    backups_server_killed_mid_copy: int = 0
    backups_verified: int = 0  # restored, journal a prefix of the original's, reads and resends checked
    contracts_ended: int = 0  # the contract-ending client's customers whose contract ended (its end passed)
    contract_ends_taken: int = 0  # EndContract answers that set or moved an end (journaled)
    end_contract_records: int = 0  # in the journal: one per end taken
    contract_end_refusals: int = 0
    events_after_an_end_refused: int = 0  # NO_ACTIVE_CONTRACT
    elapsed_s: float = 0.0
    command: str = ""


class Load:
    """The clients' shared bookkeeping: what was sent, what was acknowledged, whether anyone is mid-batch."""

    def __init__(self, config: SoakConfig, customers: Sequence[str]) -> None:
        self.config = config
        self.customers = list(customers)
        self.sent: dict[str, SentBatch] = {}
        self.running = asyncio.Event()  # cleared: start no new batch
        self.stop = asyncio.Event()
        self.busy = 0  # senders between picking up a batch and its last answer
        self.storm_resends = 0
        # The contract-ending client's batches (some of their events are refused) and its customers, once whole.
        self.ending_sent: dict[str, SentBatch] = {}
        self.ending_customers: list[str] = []

    def make_batch(self, rng: random.Random, batch_id: str, kind: str) -> SentBatch:
        count = rng.randint(1, self.config.batch_events_max)
        at_ms = now_ms()
        events = []
        for i in range(count):
            tokens = float(rng.randint(0, 4_000)) + rng.choice((0.0, 0.0, 0.5, 0.25))
            events.append(
                usage_pb2.UsageEvent(
                    transaction_id=f"{batch_id}-e{i}",
                    customer_id=rng.choice(self.customers),
                    event_type=EVENT_TYPE,
                    timestamp_ms=at_ms - rng.randint(0, 3_000),
                    dimensions={"model": rng.choice(MODELS), "region": rng.choice(REGIONS)},
                    values={"tokens": tokens},
                )
            )
        sent = SentBatch(batch_id, usage_pb2.UsageBatch(batch_id=batch_id, events=events), kind)
        self.sent[batch_id] = sent
        return sent

    def record_ack(self, sent: SentBatch, ack: usage_pb2.IngestAck) -> None:
        where = f"batch {sent.batch_id} ({sent.size} events, {sent.kind}): {ack}"
        check(ack.batch_id == sent.batch_id, f"ack for another batch; {where}")
        check(not ack.rejected, f"no event of the load may be rejected; {where}")
        check(
            (ack.accepted, ack.duplicates) in ((sent.size, 0), (0, sent.size)),
            f"a batch is accepted whole or is all duplicates, never a mix; {where}",
        )
        sent.acks.append(ack)

    async def wait_turn(self) -> bool:
        """Waits until batches may start; False once the soak is stopping."""
        while not self.stop.is_set():
            await self.running.wait()
            if self.running.is_set() and not self.stop.is_set():
                return True
        return False


async def stream_client(name: str, target: str, load: Load, seed: int, stats: dict[str, int]) -> None:
    retry = RetryPolicy(
        max_attempts=100_000, max_elapsed_s=QUIESCE_TIMEOUT_S, initial_backoff_s=0.05, max_backoff_s=0.5
    )
    async with AsyncTariffClient(target, channel_options=CHANNEL_OPTIONS) as client:
        stream = client.usage_stream(max_in_flight_batches=8, retry=retry, ack_timeout_s=30.0)
        counter = 0

        async def sender(k: int) -> None:
            nonlocal counter
            rng = random.Random(f"{seed}-{name}-{k}")
            while await load.wait_turn():
                load.busy += 1
                try:
                    counter += 1
                    sent = load.make_batch(rng, f"{name}-b{counter}", "stream")
                    ack = await stream.send(sent.message.events, sent.batch_id)
                    load.record_ack(sent, ack)
                finally:
                    load.busy -= 1
                await asyncio.sleep(rng.uniform(0, load.config.sender_pause_s_max))

        try:
            await asyncio.gather(*(sender(k) for k in range(load.config.senders_per_client)))
        finally:
            stats["stream_resent_batches"] += stream.resent_batches
            stats["stream_reconnects"] += stream.reconnects
            await stream.close()


RETRY_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.INTERNAL,  # a connection reset mid-message
}


async def send_until_answered(stub: Any, message: usage_pb2.UsageBatch, delay_s: float) -> usage_pb2.IngestAck:
    await asyncio.sleep(delay_s)
    deadline = time.monotonic() + QUIESCE_TIMEOUT_S
    while True:
        try:
            ack: usage_pb2.IngestAck = await stub.IngestUsageBatch(message, timeout=RPC_TIMEOUT_S)
            return ack
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRY_CODES or time.monotonic() > deadline:
                raise SoakFailure(f"batch {message.batch_id}: {exc.code().name} {exc.details()}") from exc
            await asyncio.sleep(0.05)


async def storm_client(target: str, load: Load, seed: int) -> None:
    """Every batch sent 2-6 times in all: the original and 1-5 resends, some concurrent with it, some after."""
    rng = random.Random(f"{seed}-storm")
    counter = 0
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        while await load.wait_turn():
            load.busy += 1
            try:
                counter += 1
                sent = load.make_batch(rng, f"storm-b{counter}", "storm")
                resends = rng.randint(1, 5)
                delays = [0.0] + [
                    rng.choice((0.0, rng.uniform(0, 0.01), rng.uniform(0.01, 0.2))) for _ in range(resends)
                ]
                load.storm_resends += resends
                acks = await asyncio.gather(*(send_until_answered(stub, sent.message, d) for d in delays))
                for ack in acks:
                    load.record_ack(sent, ack)
                check(
                    sum(a.accepted for a in acks) <= sent.size,
                    f"storm batch {sent.batch_id}: accepted more than once over its resends: {acks}",
                )
            finally:
                load.busy -= 1
            await asyncio.sleep(rng.uniform(0, load.config.sender_pause_s_max))


# The contract-ending client: how far ahead of now it ends a contract, how much later it moves that end, and how
# long it rests between its customers.
END_AHEAD_MS = 1_200
Answer = TypeVar("Answer")
END_MOVED_MS = 300
ENDING_PAUSE_S = (0.5, 2.0)


async def until_answered(call: Callable[[], Awaitable[Answer]]) -> Answer | grpc.aio.AioRpcError:
    """The call's answer, retried through crashes (the server down, restarting): a response or the error it gave."""
    deadline = time.monotonic() + QUIESCE_TIMEOUT_S
    while True:
        try:
            return await call()
        except grpc.aio.AioRpcError as exc:
            if exc.code() not in RETRY_CODES or time.monotonic() > deadline:
                return exc
            await asyncio.sleep(0.05)


class ContractEnder:
    """One customer's story at a time (see the module's docstring): its contract's ends, and usage around them,
    against the rules of a ReferenceRating holding only that contract's start, end and hours of usage."""

    def __init__(self, channel: Any, load: Load, summary: SoakSummary, seed: int) -> None:
        self.contracts = contracts_pb2_grpc.ContractServiceStub(channel)
        self.usage = usage_pb2_grpc.UsageServiceStub(channel)
        self.load = load
        self.summary = summary
        self.rng = random.Random(f"{seed}-ender")
        self.batches = 0

    async def run(self) -> None:
        for n in itertools.count():
            if not await self.load.wait_turn():
                return
            self.load.busy += 1
            try:
                await self.story(f"soak-end-{n:03d}")
            finally:
                self.load.busy -= 1
            await asyncio.sleep(self.rng.uniform(*ENDING_PAUSE_S))

    async def story(self, customer_id: str) -> None:
        contract_id = f"{customer_id}-contract"
        start_ms = month_start_ms(now_ms())
        await self.create(customer_id, contract_id, start_ms)
        model = ReferenceRating([], [], [], [], customer_id=customer_id, contract_start_ms=start_ms, block=False)
        await self.end(contract_id, model, lambda _now: start_ms)  # at the start: INVALID_ARGUMENT
        await self.end(contract_id, model, lambda now: now - 60_000)  # retroactive
        await self.end(contract_id, model, lambda now: now + END_AHEAD_MS)  # taken
        await self.end(contract_id, model, lambda _now: model.contract_end_ms or 0)  # again: a retry
        await self.end(contract_id, model, lambda _now: (model.contract_end_ms or 0) + END_MOVED_MS)  # moved
        sent_ms = now_ms()
        await self.send(model, [sent_ms - 20, sent_ms - 10, sent_ms])
        await self.end(contract_id, model, lambda now: now + 100)  # before usage recorded in its hour
        await self.end(contract_id, model, lambda _now: (model.contract_end_ms or 0) + END_MOVED_MS)  # likewise
        end_ms = model.contract_end_ms
        if end_ms is None:  # a crash held the call past the second ahead: refused as before now
            self.load.ending_customers.append(customer_id)
            return
        await asyncio.sleep(max(0, end_ms - now_ms() + 50) / 1000)
        self.summary.contracts_ended += 1
        await self.send(model, [end_ms - 1, end_ms, now_ms()])  # before the end, at it, after it
        await self.end(contract_id, model, lambda now: now + HOUR_MS)  # passed: not moved
        await self.end(contract_id, model, lambda _now: end_ms)  # its end sent again: answered
        self.load.ending_customers.append(customer_id)

    async def create(self, customer_id: str, contract_id: str, start_ms: int) -> None:
        """The customer and its contract, open-ended, ALLOW, no grants (a retry that finds them made is answered)."""
        customer = contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id)
        contract = contracts_pb2.CreateContractRequest(
            id=contract_id,
            customer_id=customer_id,
            rate_card_id=RATE_CARD_ID,
            starting_at=timestamp(start_ms),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="1.5",
            currency="USD",
        )
        for answer in (
            await until_answered(lambda: self.contracts.CreateCustomer(customer, timeout=RPC_TIMEOUT_S)),
            await until_answered(lambda: self.contracts.CreateContract(contract, timeout=RPC_TIMEOUT_S)),
        ):
            if isinstance(answer, grpc.aio.AioRpcError):
                check(answer.code() == grpc.StatusCode.ALREADY_EXISTS, f"{customer_id}: {answer.details()}")

    async def end(self, contract_id: str, model: ReferenceRating, end_of: Callable[[int], int]) -> None:
        """EndContract at the end `end_of` names from now: the answer is the model's at an instant between the
        moments before the first attempt and after the answer (the model follows the server); GetContract then
        shows the end the model holds."""
        held = model.contract_end_ms
        before = now_ms()
        end_ms = end_of(before)
        request = contracts_pb2.EndContractRequest(contract_id=contract_id, ending_before=timestamp(end_ms))
        answer = await until_answered(lambda: self.contracts.EndContract(request, timeout=RPC_TIMEOUT_S))
        after = now_ms()
        got: EndOutcome
        if isinstance(answer, grpc.aio.AioRpcError):
            code, details = answer.code(), answer.details() or ""
            if code == grpc.StatusCode.INVALID_ARGUMENT and "ending_before" in details:
                got = ("after starting_at", None)
            else:
                check(code == grpc.StatusCode.FAILED_PRECONDITION, f"EndContract({contract_id}): {code} {details}")
                got = refusal(details)
            self.summary.contract_end_refusals += 1
        else:
            got = ("repeated" if end_ms == held else "ended", None)
        expected = set()
        for at_ms in (before, after):
            expected.add(model.end_contract(end_ms, at_ms))
            model.contract_end_ms = held  # end_contract takes an end it allows: taken below, as the server did
        check(got in expected, f"EndContract({contract_id}, {end_ms}) answered {got}, the rules {expected}")
        if got[0] == "ended":
            model.contract_end_ms = end_ms
            self.summary.contract_ends_taken += 1
        shown = await until_answered(
            lambda: self.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id), timeout=RPC_TIMEOUT_S)
        )
        check(not isinstance(shown, grpc.aio.AioRpcError), f"GetContract({contract_id}): {shown}")
        assert isinstance(shown, contracts_pb2.Contract)
        shown_ms = ms_of(shown.ending_before) if shown.HasField("ending_before") else None
        check(
            shown_ms == model.contract_end_ms,
            f"GetContract({contract_id}) ends at {shown_ms}, not {model.contract_end_ms}",
        )

    async def send(self, model: ReferenceRating, dates: Sequence[int]) -> None:
        """A batch of the customer's usage at these dates (one call each, `tokens` 1 on the small model): those before
        the end held accepted (or duplicates, when a resend finds them taken), the others NO_ACTIVE_CONTRACT."""
        self.batches += 1
        batch_id = f"ender-b{self.batches}"
        events = [
            usage_pb2.UsageEvent(
                transaction_id=f"{batch_id}-e{i}",
                customer_id=model.customer_id,
                event_type=EVENT_TYPE,
                timestamp_ms=date,
                dimensions={"model": "small", "region": "eu"},
                values={"tokens": 1.0},
            )
            for i, date in enumerate(dates)
        ]
        message = usage_pb2.UsageBatch(batch_id=batch_id, events=events)
        self.load.ending_sent[batch_id] = SentBatch(batch_id, message, "ending")
        ack = await send_until_answered(self.usage, message, 0.0)
        taken = [model.in_force(date) for date in dates]
        refused = [(i, usage_pb2.NO_ACTIVE_CONTRACT) for i, ok in enumerate(taken) if not ok]
        check(
            (ack.accepted + ack.duplicates, [(r.index, r.reason) for r in ack.rejected]) == (sum(taken), refused),
            f"batch {batch_id} of {model.customer_id}, dated {list(dates)}, contract ending {model.contract_end_ms}: "
            f"{ack}",
        )
        model.hours_recorded.update(date // HOUR_MS * HOUR_MS for date, ok in zip(dates, taken, strict=True) if ok)
        self.summary.events_after_an_end_refused += len(refused)


async def ending_client(target: str, load: Load, summary: SoakSummary, seed: int) -> None:
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        await ContractEnder(channel, load, summary, seed).run()


def ms_of(stamp: timestamp_pb2.Timestamp) -> int:
    return stamp.seconds * 1000 + stamp.nanos // 1_000_000


# ---------------------------------------------------------------------------------------------
# Setting up the catalogue


async def build_catalogue(target: str, customers: Sequence[str]) -> None:
    at = now_ms()
    start = timestamp(month_start_ms(at))
    expires = timestamp(at + YEAR_MS)
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        pricing = pricing_pb2_grpc.PricingServiceStub(channel)
        contracts = contracts_pb2_grpc.ContractServiceStub(channel)
        await pricing.CreateProduct(
            pricing_pb2.CreateProductRequest(
                product=pricing_pb2.Product(
                    id="tokens",
                    name="LLM tokens",
                    event_type=EVENT_TYPE,
                    aggregation=pricing_pb2.SUM,
                    value_key="tokens",
                    pricing_dimensions=["model"],
                    unit="tokens",
                )
            ),
            timeout=RPC_TIMEOUT_S,
        )
        await pricing.CreateProduct(
            pricing_pb2.CreateProductRequest(
                product=pricing_pb2.Product(
                    id="calls", name="LLM calls", event_type=EVENT_TYPE, aggregation=pricing_pb2.COUNT, unit="calls"
                )
            ),
            timeout=RPC_TIMEOUT_S,
        )
        await pricing.CreateRateCard(
            pricing_pb2.CreateRateCardRequest(id=RATE_CARD_ID, name="Soak prices", pricing_unit="credits"),
            timeout=RPC_TIMEOUT_S,
        )
        rates = [
            pricing_pb2.Rate(
                product_id="tokens", match={"model": model}, unit=pricing_pb2.UnitPrice(price=price, per_units=per)
            )
            for model, (price, per) in TOKEN_PRICES.items()
        ]
        rates.append(pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price=CALL_PRICE)))
        draft = await pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=RATE_CARD_ID, upsert_rates=rates, change_note="soak"),
            timeout=RPC_TIMEOUT_S,
        )
        await pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=RATE_CARD_ID, version=draft.version, effective_from=start),
            timeout=RPC_TIMEOUT_S,
        )
        for i, customer_id in enumerate(customers):
            await contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(
                    id=customer_id, name=f"Soak customer {i}", attributes={"segment": ("smb", "enterprise")[i % 2]}
                ),
                timeout=RPC_TIMEOUT_S,
            )
            contract_id = f"{customer_id}-contract"
            await contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    id=contract_id,
                    customer_id=customer_id,
                    rate_card_id=RATE_CARD_ID,
                    starting_at=start,
                    overage_policy=contracts_pb2.ALLOW,
                    overage_price="1.5",
                    currency="USD",
                ),
                timeout=RPC_TIMEOUT_S,
            )
            # Small grants, so that the soak drains them and runs into overage too.
            grants = [
                (f"{customer_id}-promo", contracts_pb2.PROMOTIONAL, "500", "0", 0),
                (f"{customer_id}-prepaid", contracts_pb2.PREPAID, str(2_000 * (i + 1)), str(1_500 * (i + 1)), 1),
            ]
            for grant_id, kind, amount, paid, priority in grants:
                await contracts.GrantCredits(
                    contracts_pb2.GrantCreditsRequest(
                        grant=contracts_pb2.Grant(
                            id=grant_id,
                            contract_id=contract_id,
                            kind=kind,
                            amount=amount,
                            paid_amount=paid,
                            priority=priority,
                            expires_at=expires,
                        )
                    ),
                    timeout=RPC_TIMEOUT_S,
                )


# ---------------------------------------------------------------------------------------------
# Checks


def check_journal_against_sends(reference: ReferenceBilling, load: Load, extra_batch_ids: set[str]) -> None:
    """Every journaled batch is one a client sent, whole and unchanged; every acknowledged event is in once."""
    for record in reference.batches:
        sent = load.sent.get(record.batch_id)
        if sent is None:
            ending = load.ending_sent.get(record.batch_id)
            check(
                record.batch_id in extra_batch_ids or ending is not None,
                f"record {record.seq}: batch {record.batch_id!r} nobody sent",
            )
            if ending is not None:  # its outcomes the reference recomputed, its client checked
                check(
                    record.contents == tuple(content_of_pb(e) for e in ending.message.events),
                    f"record {record.seq}: batch {record.batch_id} journaled with other content than sent",
                )
            continue
        events = sent.message.events
        check(
            record.transaction_ids == tuple(e.transaction_id for e in events),
            f"record {record.seq}: batch {record.batch_id} journaled with other transaction ids than sent",
        )
        check(
            record.contents == tuple(content_of_pb(e) for e in events),
            f"record {record.seq}: batch {record.batch_id} journaled with other content than sent",
        )
        check(
            (record.accepted, record.duplicates, record.conflicts) in ((sent.size, 0, 0), (0, sent.size, 0)),
            f"record {record.seq}: batch {record.batch_id} was neither applied whole nor all duplicates: {record}",
        )
    for sent in load.sent.values():
        if not sent.acks:
            continue
        for event in sent.message.events:
            accepted = reference.accepted.get(event.transaction_id)
            check(accepted is not None, f"acknowledged event {event.transaction_id} is not in the journal")
            assert accepted is not None
            check(
                accepted.batch_id == sent.batch_id and accepted.content == content_of_pb(event),
                f"acknowledged event {event.transaction_id} is journaled with other content or in another batch",
            )


def content_of_pb(event: usage_pb2.UsageEvent) -> Any:
    # The same canonical tuple the reference builds from a journaled event.
    from engine import commands as cmd

    return content_of(
        cmd.UsageEvent(
            event.transaction_id,
            event.customer_id,
            event.event_type,
            event.timestamp_ms,
            dict(event.dimensions),
            dict(event.values),
            event.reservation_id,
        )
    )


def balance_fields(balance: balance_pb2.Balance) -> dict[str, Any]:
    return {
        "customer_id": balance.customer_id,
        "credits_remaining": balance.credits_remaining,
        "credits_held": balance.credits_held,
        "credits_available": balance.credits_available,
        "period_charges": balance.period_charges,
        "overage_amount": balance.overage_amount,
        "overage_due": balance.overage_due,
        "pricing_unit": balance.pricing_unit,
        "as_of_seq": balance.as_of_seq,
        "grants": [
            {
                "grant_id": g.grant_id,
                "kind": contracts_pb2.GrantKind.Name(g.kind),
                "amount": g.amount,
                "drawn": g.drawn,
                "remaining": g.remaining,
                "expired": g.expired,
                "priority": g.priority,
                "recognized_revenue": g.recognized_revenue,
            }
            for g in balance.grants
        ],
    }


async def read_balances(channel: Any, customers: Sequence[str]) -> dict[str, dict[str, Any]]:
    stub = balance_pb2_grpc.BalanceServiceStub(channel)
    balances = {}
    for customer_id in customers:
        balance = await stub.GetBalance(balance_pb2.GetBalanceRequest(customer_id=customer_id), timeout=RPC_TIMEOUT_S)
        balances[customer_id] = balance_fields(balance)
    return balances


async def compare_reads(target: str, reference: ReferenceBilling, customers: Sequence[str]) -> int:
    """Every read RPC that answers, against the reference at the same journal seq; returns how many reads."""
    reads = 0
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        at_ms = now_ms()
        balances = await read_balances(channel, customers)
        reads += len(balances)
        for customer_id, got in balances.items():
            want = reference.balance(customer_id, at_ms)
            check(got == want, f"GetBalance({customer_id}) differs from the reference:\n got {got}\nwant {want}")
        contracts = contracts_pb2_grpc.ContractServiceStub(channel)
        pricing = pricing_pb2_grpc.PricingServiceStub(channel)
        for customer_id in customers:
            customer = await contracts.GetCustomer(
                contracts_pb2.GetCustomerRequest(id=customer_id), timeout=RPC_TIMEOUT_S
            )
            got_customer = {
                "id": customer.id,
                "name": customer.name,
                "attributes": dict(customer.attributes),
                "created_at_ms": customer.created_at.seconds * 1000 + customer.created_at.nanos // 1_000_000,
            }
            check(got_customer == reference.customer(customer_id), f"GetCustomer({customer_id}): {got_customer}")
            contract_id = reference.customers[customer_id].contract_id
            contract = await contracts.GetContract(
                contracts_pb2.GetContractRequest(id=contract_id), timeout=RPC_TIMEOUT_S
            )
            got_contract = {
                "id": contract.id,
                "customer_id": contract.customer_id,
                "rate_card_id": contract.rate_card_id,
                "starting_at_ms": contract.starting_at.seconds * 1000 + contract.starting_at.nanos // 1_000_000,
                "ending_before_ms": ms_of(contract.ending_before) if contract.HasField("ending_before") else None,
                "overage_price": contract.overage_price,
                "currency": contract.currency,
                "grants": sorted(
                    (g.id, contracts_pb2.GrantKind.Name(g.kind), g.amount, g.paid_amount, g.priority)
                    for g in contract.grants
                ),
            }
            want_contract = reference.contract(contract_id)
            check(
                got_contract == want_contract, f"GetContract({contract_id}):\n got {got_contract}\nwant {want_contract}"
            )
            reads += 2
        listed = await contracts.ListCustomers(
            contracts_pb2.ListCustomersRequest(page_size=1000), timeout=RPC_TIMEOUT_S
        )
        check(
            [c.id for c in listed.customers] == sorted(reference.customers),
            f"ListCustomers: {[c.id for c in listed.customers]}",
        )
        products = await pricing.ListProducts(pricing_pb2.ListProductsRequest(), timeout=RPC_TIMEOUT_S)
        check(
            sorted(p.id for p in products.products) == sorted(reference.products),
            f"ListProducts: {products}",
        )
        card = await pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=RATE_CARD_ID), timeout=RPC_TIMEOUT_S)
        check(
            (card.pricing_unit, card.latest_version, card.current_version)
            == (reference.rate_cards[RATE_CARD_ID], len(reference.versions[RATE_CARD_ID]), 1),
            f"GetRateCard: {card}",
        )
        audit_seqs: list[int] = []
        after = 0
        while True:
            page = await pricing.GetAuditLog(
                pricing_pb2.GetAuditLogRequest(after_seq=after, page_size=1000), timeout=RPC_TIMEOUT_S
            )
            if not page.entries:
                break
            audit_seqs.extend(e.seq for e in page.entries)
            after = page.entries[-1].seq
        check(audit_seqs == reference.admin_seqs, f"GetAuditLog seqs {audit_seqs} != journal {reference.admin_seqs}")
        reads += 4
    return reads


# ---------------------------------------------------------------------------------------------
# The soak


class Soak:
    def __init__(self, config: SoakConfig, work_dir: Path) -> None:
        self.config = config
        # Snapshots every few dozen records, so that kills also land in snapshot writes and recovery goes
        # through snapshot + replay.
        self.server = ServerProcess(work_dir / "data", extra_args=["--snapshot-every", str(SNAPSHOT_EVERY_RECORDS)])
        self.journal_dir = self.server.data_dir / "journal"
        self.customers = [f"soak-{i:02d}" for i in range(config.customers)]
        self.load = Load(config, self.customers)
        self.reference = ReferenceBilling()
        self.summary = SoakSummary(seed=config.seed, clients=config.clients)
        self.extra_batch_ids: set[str] = set()  # the conflict phase's batches
        self.stats = {"stream_resent_batches": 0, "stream_reconnects": 0}
        self.rng = random.Random(config.seed)
        # Its own generator: the backups draw nothing from the one that times the kills and the resends.
        self.backup_rng = random.Random(f"{config.seed}-backups")
        self.backup_cycles = set(self.backup_rng.sample(range(config.crashes), min(config.backups, config.crashes)))
        self.backups: list[TakenBackup] = []  # the completed ones

    async def run(self) -> SoakSummary:
        started = time.monotonic()
        try:
            await asyncio.to_thread(self.server.start)
            await build_catalogue(self.server.target, self.customers)
            load = self.load
            load.running.set()
            tasks = [
                asyncio.create_task(stream_client(f"c{i}", self.server.target, load, self.config.seed, self.stats))
                for i in range(self.config.clients)
            ]
            tasks.append(asyncio.create_task(storm_client(self.server.target, load, self.config.seed)))
            tasks.append(asyncio.create_task(ending_client(self.server.target, load, self.summary, self.config.seed)))
            try:
                for crash in range(self.config.crashes):
                    await self._crash_cycle(crash, tasks)
                load.running.clear()
                await self._quiesce(tasks)
            finally:
                load.stop.set()
                load.running.set()  # wake the senders so that they see stop
                done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), QUIESCE_TIMEOUT_S)
            for outcome in done:
                if isinstance(outcome, BaseException):
                    raise outcome
            await self._conflicts()
            await self._final_check()
            await self._verify_backups()
        finally:
            self.server.stop()
        self.summary.elapsed_s = round(time.monotonic() - started, 1)
        return self.summary

    async def _crash_cycle(self, crash: int, tasks: Sequence[asyncio.Task[None]]) -> None:
        run_s = self.rng.uniform(self.config.run_s_min, self.config.run_s_max)
        backup = await self._backup_during_load(run_s) if crash in self.backup_cycles else None
        if backup is None:
            await asyncio.sleep(run_s)
        in_flight_at_kill = self.load.busy
        self.server.kill9()
        self.load.running.clear()
        # Down: what the clients saw acknowledged must already be in the journal, whole and once.
        self.reference.feed_journal(self.journal_dir)
        check_journal_against_sends(self.reference, self.load, self.extra_batch_ids)
        self.reference.check_conservation()
        self.summary.checks_after_crash += 1
        if in_flight_at_kill:
            self.summary.kills_with_batches_in_flight += 1
        await asyncio.to_thread(self.server.start)
        self.summary.crashes_survived += 1
        if backup is not None:
            await self._backup_finished(backup)
        if self.rng.random() < KILL_DURING_RESENDS_CHANCE:
            # Again, while the clients reconnect and resend what the first crash left unacknowledged.
            await asyncio.sleep(self.rng.uniform(0, 0.3))
            self.server.kill9()
            self.reference.feed_journal(self.journal_dir)
            check_journal_against_sends(self.reference, self.load, self.extra_batch_ids)
            self.summary.checks_after_crash += 1
            self.summary.kills_during_resends += 1
            await asyncio.to_thread(self.server.start)
            self.summary.crashes_survived += 1
        await self._quiesce(tasks)
        # Up and idle: every batch has been acknowledged by now; every read agrees with the journal.
        self.reference.feed_journal(self.journal_dir)
        unacked = [b.batch_id for b in self.load.sent.values() if not b.acks]
        check(not unacked, f"after the resends, batches still unacknowledged: {unacked[:5]}")
        check_journal_against_sends(self.reference, self.load, self.extra_batch_ids)
        self.summary.reads_compared += await compare_reads(
            self.server.target, self.reference, self.read_customers(self.reference)
        )
        print(
            f"crash {crash + 1}/{self.config.crashes}: {len(self.load.sent)} batches, "
            f"{len(self.reference.accepted)} events verified, journal seq {self.reference.last_seq}",
            flush=True,
        )
        self.load.running.set()

    async def _backup_during_load(self, run_s: float) -> TakenBackup:
        """Starts `tariff backup` while the clients ingest; returns just before the cycle's kill -9: once the backup
        is done and the run's while is over, or (KILL_DURING_BACKUP_CHANCE) while it copies."""
        lead_s = self.backup_rng.uniform(0, run_s)
        await asyncio.sleep(lead_s)
        destination = self.server.data_dir.parent / "backups" / f"backup-{self.summary.backups_taken}"
        destination.parent.mkdir(exist_ok=True)
        # Acknowledged before the backup starts: committed before its read transaction, so in its copy.
        acked_before = [b for b in self.load.sent.values() if b.acks]
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "server.cli", "backup", "--data-dir", str(self.server.data_dir)),
            *("--to", str(destination)),
            cwd=REPO_ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        self.summary.backups_taken += 1
        taken = TakenBackup(destination, process, acked_before)
        if self.backup_rng.random() >= KILL_DURING_BACKUP_CHANCE:
            await process.wait()
            await asyncio.sleep(max(0.0, run_s - lead_s))
            return taken
        partial = destination.with_name(f"{destination.name}.partial-{process.pid}")
        deadline = time.monotonic() + QUIESCE_TIMEOUT_S
        while process.returncode is None and not partial.exists():
            check(time.monotonic() < deadline, f"tariff backup into {destination} started no copy")
            await asyncio.sleep(0.002)
        await asyncio.sleep(self.backup_rng.uniform(0, 0.02))
        if process.returncode is None and partial.exists():
            self.summary.backups_server_killed_mid_copy += 1
        return taken

    async def _backup_finished(self, taken: TakenBackup) -> None:
        """Completed (exit 0, DEST) or failed cleanly (exit 1, no DEST); never a leftover DEST.partial-<pid>."""
        stdout, stderr = await asyncio.wait_for(taken.process.communicate(), QUIESCE_TIMEOUT_S)
        code, name = taken.process.returncode, taken.destination.name
        where = f"tariff backup into {taken.destination}: exit {code}, {stdout.decode()!r} {stderr.decode()!r}"
        check(not list(taken.destination.parent.glob(f"{name}.partial-*")), f"{where}: its partial copy left behind")
        check(code in (0, 1) and taken.destination.exists() == (code == 0), where)
        if code == 0:
            taken.line = stdout.decode()
            self.backups.append(taken)
            self.summary.backups_completed += 1

    async def _verify_backups(self) -> None:
        """Each completed backup: its journal is the original's first K records, byte for byte (K its last seq); a
        server started on it replays what the README says, reads as the recomputation of that journal, and answers
        every batch acknowledged before the backup started with all duplicates."""
        for taken in self.backups:
            found = BACKUP_LINE.search(taken.line)
            check(found is not None, f"tariff backup printed {taken.line!r}")
            assert found is not None
            last_seq, snapshot_seq = int(found[1]), int(found[2] or 0)
            copied_journal = taken.destination / "journal"
            check(
                same_first_records(copied_journal, self.journal_dir, last_seq),
                f"{taken.destination}: its journal is not the original's first {last_seq} records",
            )
            # The explain index copied and not behind the snapshot: the snapshot loaded; else the whole journal.
            index_usable = found[3] is not None and int(found[3]) >= snapshot_seq
            replayed = last_seq - snapshot_seq if index_usable else last_seq
            restored = ServerProcess(taken.destination)
            await asyncio.to_thread(restored.start)
            try:
                check(
                    serving_replayed_records(restored) == replayed,
                    f"{taken.destination}: not replayed_records={replayed}: {restored.log_tail(3)}",
                )
                reference = ReferenceBilling.from_journal(copied_journal)
                self.summary.reads_compared += await compare_reads(
                    restored.target, reference, self.read_customers(reference)
                )
                await resend_all_duplicates(restored.target, taken.acked_before)
                check(await asyncio.to_thread(restored.terminate) == 0, f"{restored!r}: SIGTERM exit code")
            finally:
                restored.stop()
            self.summary.backups_verified += 1
        print(
            f"backups: {self.summary.backups_taken} taken, {self.summary.backups_completed} completed, "
            f"{self.summary.backups_server_killed_mid_copy} with the server killed mid-copy, "
            f"{self.summary.backups_verified} verified",
            flush=True,
        )

    def read_customers(self, reference: ReferenceBilling) -> list[str]:
        """The load's customers, and the contract-ending client's whose story the reference holds whole."""
        ending = [
            c for c in self.load.ending_customers if c in reference.customers and reference.customers[c].contract_id
        ]
        return [*self.customers, *ending]

    async def _quiesce(self, tasks: Sequence[asyncio.Task[None]]) -> None:
        """Waits until no sender is mid-batch (every resend answered); a client that died re-raises here."""
        deadline = time.monotonic() + QUIESCE_TIMEOUT_S
        while self.load.busy:
            for task in tasks:
                if task.done():
                    task.result()
            check(time.monotonic() < deadline, f"{self.load.busy} senders still busy after {QUIESCE_TIMEOUT_S} s")
            await asyncio.sleep(0.02)

    async def _conflicts(self) -> None:
        """Acknowledged ids resent with other content: all DUPLICATE_CONFLICT, nothing changes; also after a crash."""
        acked_events = [e for b in self.load.sent.values() if b.acks for e in b.message.events]
        count = min(self.config.conflicts, len(acked_events))
        check(count == self.config.conflicts, f"only {len(acked_events)} acknowledged events to conflict with")
        originals = self.rng.sample(acked_events, count)
        conflicting = []
        for event in originals:
            changed = usage_pb2.UsageEvent()
            changed.CopyFrom(event)
            changed.values["tokens"] = event.values["tokens"] + 1.0  # same id, one value different
            conflicting.append(changed)
        async with grpc.aio.insecure_channel(self.server.target, options=CHANNEL_OPTIONS) as channel:
            stub = usage_pb2_grpc.UsageServiceStub(channel)
            for round_no in range(2):
                before = await read_balances(channel, self.customers)
                for i in range(0, count, CONFLICT_BATCH_EVENTS):
                    chunk = conflicting[i : i + CONFLICT_BATCH_EVENTS]
                    batch_id = f"conflict-r{round_no}-{i}"
                    self.extra_batch_ids.add(batch_id)
                    ack = await stub.IngestUsageBatch(
                        usage_pb2.UsageBatch(batch_id=batch_id, events=chunk), timeout=RPC_TIMEOUT_S
                    )
                    self.summary.conflicts_tried += len(chunk)
                    check((ack.accepted, ack.duplicates) == (0, 0), f"{batch_id}: conflicts accepted or counted: {ack}")
                    check(
                        [(r.index, r.transaction_id, r.reason) for r in ack.rejected]
                        == [(j, e.transaction_id, usage_pb2.DUPLICATE_CONFLICT) for j, e in enumerate(chunk)],
                        f"{batch_id}: every event must be refused as DUPLICATE_CONFLICT",
                    )
                    self.summary.conflicts_detected += len(ack.rejected)
                    same_id = f"resend-r{round_no}-{i}"
                    self.extra_batch_ids.add(same_id)
                    resent = await stub.IngestUsageBatch(
                        usage_pb2.UsageBatch(batch_id=same_id, events=originals[i : i + CONFLICT_BATCH_EVENTS]),
                        timeout=RPC_TIMEOUT_S,
                    )
                    self.summary.identical_resends_tried += len(chunk)
                    check(
                        (resent.accepted, resent.duplicates, len(resent.rejected)) == (0, len(chunk), 0),
                        f"{same_id}: identical resends must all be duplicates: {resent}",
                    )
                    self.summary.identical_resends_counted_as_duplicates += resent.duplicates
                after = await read_balances(channel, self.customers)
                for customer_id in self.customers:
                    before[customer_id].pop("as_of_seq")
                    after[customer_id].pop("as_of_seq")
                check(before == after, f"round {round_no}: conflicts or duplicates changed a balance")
                if round_no == 0:
                    self.server.kill9()
                    await asyncio.to_thread(self.server.start)
                    self.summary.crashes_survived += 1

    async def _final_check(self) -> None:
        code = await asyncio.to_thread(self.server.terminate)
        check(code == 0, f"SIGTERM exit code {code}")
        self.reference.feed_journal(self.journal_dir)
        scratch = ReferenceBilling.from_journal(self.journal_dir)
        scratch.check_conservation()
        check_journal_against_sends(scratch, self.load, self.extra_batch_ids)
        check(
            scratch.accepted == self.reference.accepted and scratch.last_seq == self.reference.last_seq,
            "a from-scratch recomputation disagrees with the incremental one",
        )
        at_ms = now_ms()
        for customer_id in self.customers:
            check(
                scratch.balance(customer_id, at_ms) == self.reference.balance(customer_id, at_ms),
                f"{customer_id}: from-scratch and incremental balances differ",
            )
        await asyncio.to_thread(self.server.start)
        self.summary.reads_compared += await compare_reads(self.server.target, scratch, self.read_customers(scratch))
        await asyncio.to_thread(self.server.terminate)

        sent = self.load.sent.values()
        self.summary.batches_sent = len(self.load.sent)
        self.summary.batches_acknowledged = sum(1 for b in sent if b.acks)
        self.summary.events_acknowledged_and_verified = sum(b.size for b in sent if b.acks)
        load_accepted = sum(1 for transaction_id in scratch.accepted if not transaction_id.startswith("ender-"))
        check(
            self.summary.events_acknowledged_and_verified == load_accepted,
            f"{load_accepted} events of the load in the journal, {self.summary.events_acknowledged_and_verified} sent",
        )
        self.summary.events_committed_but_first_ack_lost = sum(
            b.size for b in sent if b.acks and all(a.accepted == 0 for a in b.acks)
        )
        self.summary.journal_records = scratch.last_seq
        self.summary.end_contract_records = scratch.ends_journaled
        self.summary.duplicates_answered = sum(a.duplicates for b in sent for a in b.acks)
        self.summary.storm_resends = self.load.storm_resends
        self.summary.stream_resent_batches = self.stats["stream_resent_batches"]
        self.summary.stream_reconnects = self.stats["stream_reconnects"]
        check(wire(scratch.total_charges()) != "0", "the soak charged nothing: the catalogue is not exercised")


def same_first_records(copied_journal: Path, original_journal: Path, count: int) -> bool:
    """Whether `copied_journal` holds exactly the original's records 1..count, byte for byte (both read in step: a
    long soak's journal is hundreds of MB)."""
    copied = ReferenceBilling.read_journal(copied_journal)
    original = itertools.islice(ReferenceBilling.read_journal(original_journal), count)
    seqs = itertools.count(1)
    pairs = itertools.zip_longest(copied, original)
    return all(c == o and c[0] == next(seqs) for c, o in pairs) and next(seqs) == count + 1


def serving_replayed_records(server: ServerProcess) -> int:
    """The `replayed_records` of the server's `serving` line (README, The operator's log)."""
    found = re.search(r" tariff: serving .* replayed_records=(\d+) ", server.log_path.read_text())
    check(found is not None, f"no serving line: {server.log_tail(3)}")
    assert found is not None
    return int(found[1])


async def resend_all_duplicates(target: str, batches: Sequence[SentBatch]) -> None:
    """The batches' events, resent with their transaction ids (RESEND_CHUNK_EVENTS a call): every one a duplicate."""
    events = [e for b in batches for e in b.message.events]
    async with grpc.aio.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = usage_pb2_grpc.UsageServiceStub(channel)
        for i in range(0, len(events), RESEND_CHUNK_EVENTS):
            chunk = events[i : i + RESEND_CHUNK_EVENTS]
            ack = await stub.IngestUsageBatch(
                usage_pb2.UsageBatch(batch_id=f"backup-check-{i}", events=chunk), timeout=RPC_TIMEOUT_S
            )
            check(
                (ack.accepted, ack.duplicates, len(ack.rejected)) == (0, len(chunk), 0),
                f"{target}: an event acknowledged before the backup is not in it: {ack.accepted} accepted",
            )


def run_soak(config: SoakConfig, work_dir: Path) -> SoakSummary:
    return asyncio.run(Soak(config, work_dir).run())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__.split("\n")[0])
    parser.add_argument("--crashes", type=int, default=50)
    parser.add_argument("--clients", type=int, default=3, help="stream clients (plus one retry-storm client)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--customers", type=int, default=6)
    parser.add_argument("--conflicts", type=int, default=10_000)
    parser.add_argument(
        "--backups", type=int, default=3, help="crash cycles (seeded) that run `tariff backup` while clients ingest"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the JSON summary here")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the server's data here (default: a temp dir)")
    args = parser.parse_args(argv)
    # Every crash makes each stream log its reconnect; the summary counts them instead.
    logging.getLogger("tariff.client").setLevel(logging.ERROR)
    config = SoakConfig(
        crashes=args.crashes,
        clients=args.clients,
        seed=args.seed,
        customers=args.customers,
        conflicts=args.conflicts,
        backups=args.backups,
    )
    command = " ".join(["python -m tests.soak", *(argv if argv is not None else sys.argv[1:])])
    work_dir = args.work_dir or Path(tempfile.mkdtemp(prefix="tariff-soak-"))
    try:
        summary = run_soak(config, work_dir)
    except Exception as failure:
        # The data directory and the server's log stay for the post-mortem.
        print(f"SOAK FAILED: {failure!r}\nserver data and log kept in {work_dir}", file=sys.stderr)
        return 1
    if args.work_dir is None:
        shutil.rmtree(work_dir, ignore_errors=True)
    summary.command = command
    text = json.dumps(dataclasses.asdict(summary), indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
