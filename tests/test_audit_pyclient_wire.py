"""An audit of the Python client's streaming helpers against a real server with a 1 MiB `--message-mb-max`.

README ("What the server does today", "Limits"): a message past `--message-mb-max` is refused by gRPC as it
arrives, the stream ending RESOURCE_EXHAUSTED at once. The client's docs: `UsageStream` / `usage_batcher` never
retry a RESOURCE_EXHAUSTED without RetryInfo (waiting cannot fix it): every unacknowledged send fails at once with
the typed error; `authorize_batcher` fails every check in flight "with the typed error" when its stream breaks,
and its `authorize()` answers within `timeout_s`.

gRPC's asyncio client overwrites a call's status with its own INTERNAL ("Internal error from Core") when a write
fails because the server has just ended the call: with several oversized batches pipelined, the server's
RESOURCE_EXHAUSTED was then often read as INTERNAL, which `UsageStream` retries (resending the same oversized
batch), and the authorize batcher reported "UNAVAILABLE: the AuthorizeBatches stream had ended" instead, or
hung: its reader of the ended stream failed the checks of the next stream and cancelled it, leaving a write on
it waiting for ever. The race does not happen every time, so the wire scenarios run for several rounds; a test
with a scripted AuthorizeBatches call checks the authorize batcher's side of it deterministically.

`UsageBatcher.close()` "flushes and stops": an event whose `add()` returned while `close()` waited for the last
ack was left in the buffer of a batcher that closed without error; now `add()` is refused once `close()` began.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import grpc.aio
import pytest
from tariff import AsyncTariffClient, RetryPolicy, TariffClient, TariffError, Usage, now_ms
from tariff.gateway import AuthorizeBatcher
from tariff.v1 import balance_pb2

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess

ROUNDS = 30  # batcher rounds: the race shows in some of them, not all
AUTHORIZE_ROUNDS = 20
OVERSIZED_BYTES = 1_500_000  # one dimension value: the message is past the server's 1 MiB
SAFETY_S = 30.0  # a bound on waiting for what must end, never a timing assertion


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("pyclient") / "data"
    yield from serving(ServerProcess(data_dir, demo=True, extra_args=["--message-mb-max", "1"]), _nothing)


def _nothing(client: TariffClient) -> None:
    """The demo's catalogue (acme, ai_action) is all the scenarios need."""


def oversized(transaction_id: str) -> Usage:
    return Usage(transaction_id, "acme", "ai_action", now_ms(), {"action": "x" * OVERSIZED_BYTES})


async def _batcher_round(client: AsyncTariffClient, round_no: int) -> tuple[str, int, int]:
    """Sixteen oversized events, one a batch, sixteen batches in flight: the refusal, reconnects, resent batches."""
    batcher = client.usage_batcher(batch_events_max=1, max_in_flight_batches=16, retry=RetryPolicy(max_attempts=3))
    stamp = time.time_ns()
    with pytest.raises(TariffError) as failed:
        async with asyncio.timeout(SAFETY_S):
            for i in range(16):
                await batcher.add(oversized(f"big-{stamp}-{round_no}-{i}"))
            await batcher.close()
    return f"{failed.value.code.name}: {failed.value.details}", batcher.stream.reconnects, batcher.stream.resent_batches


def test_a_batch_past_the_message_limit_fails_the_batcher_at_once_with_resource_exhausted(
    server: ServerProcess,
) -> None:
    async def scenario() -> list[tuple[str, int, int]]:
        async with server.async_client() as client:
            return [await _batcher_round(client, n) for n in range(ROUNDS)]

    rounds = asyncio.run(scenario())
    for refusal, reconnects, resent in rounds:
        assert refusal.startswith("RESOURCE_EXHAUSTED: ") and "larger than max" in refusal, rounds
        assert (reconnects, resent) == (0, 0), rounds


async def _authorize_round(client: AsyncTariffClient) -> list[str]:
    """Sixteen oversized checks, each its own AuthorizeBatch message: what each raised or answered."""
    async with client.authorize_batcher(batch_requests_max=1, timeout_s=SAFETY_S / 3) as batcher:
        checks = [batcher.authorize("acme", "ai_action", {"action": "x" * OVERSIZED_BYTES}) for _ in range(16)]
        async with asyncio.timeout(SAFETY_S):
            outcomes = await asyncio.gather(*checks, return_exceptions=True)
    return [f"{o.code.name}: {o.details}" if isinstance(o, TariffError) else repr(o) for o in outcomes]


def test_oversized_authorize_checks_each_fail_with_resource_exhausted_and_the_batcher_never_hangs(
    server: ServerProcess,
) -> None:
    async def scenario() -> list[list[str]]:
        async with server.async_client() as client:
            rounds = [await _authorize_round(client) for _ in range(AUTHORIZE_ROUNDS)]
            async with client.authorize_batcher() as batcher:  # a fresh stream still answers
                answer = await batcher.authorize("acme", "ai_action", {"action": "summary"})
            assert answer.allowed, answer
            return rounds

    for outcomes in asyncio.run(scenario()):
        assert all(o.startswith("RESOURCE_EXHAUSTED: ") and "larger than max" in o for o in outcomes), outcomes


class _FakeCall:
    """An AuthorizeBatches call the test steers: what its write raises, and when its read ends with `status`."""

    def __init__(self, write_error: BaseException | None) -> None:
        self.write_error = write_error
        self.written: list[balance_pb2.AuthorizeBatch] = []
        self.answers: asyncio.Queue[balance_pb2.AuthorizeBatchResult | grpc.RpcError] = asyncio.Queue()
        self.cancelled = False

    async def write(self, batch: balance_pb2.AuthorizeBatch) -> None:
        self.written.append(batch)
        if self.write_error is not None:
            raise self.write_error

    async def read(self) -> balance_pb2.AuthorizeBatchResult:
        answer = await self.answers.get()
        if isinstance(answer, grpc.RpcError):
            raise answer
        return answer

    def cancel(self) -> bool:
        self.cancelled = True
        return True

    async def done_writing(self) -> None:
        return None

    def add_done_callback(self, callback: object) -> None:
        return None


class _FakeStub:
    def __init__(self, calls: list[_FakeCall]) -> None:
        self.calls = calls
        self.opened = 0

    def AuthorizeBatches(self) -> _FakeCall:
        call = self.calls[self.opened]
        self.opened += 1
        return call


async def _settle() -> None:
    """Lets every task that can run, run (the fakes never wait on anything but the test)."""
    for _ in range(200):
        await asyncio.sleep(0)


def _described(outcome: object) -> str:
    if isinstance(outcome, TariffError):
        return f"{outcome.code.name}: {outcome.details}"
    return outcome.reason if isinstance(outcome, balance_pb2.AuthorizeResponse) else repr(outcome)


def test_checks_on_an_authorize_stream_ended_under_a_write_get_its_status_and_the_next_stream_is_left_alone() -> None:
    """Stream 1 ends under the writes of two checks (the server refused a message); its reader then reads the
    server's status. Both checks get that status (not the write's own error), and a third check, on stream 2, its
    answer: the reader of stream 1 neither cancels stream 2 nor fails its checks."""

    async def scenario() -> tuple[list[str], bool]:
        first_call = _FakeCall(asyncio.InvalidStateError("the call has ended"))
        second_call = _FakeCall(None)
        batcher = AuthorizeBatcher(_FakeStub([first_call, second_call]), batch_requests_max=1, timeout_s=SAFETY_S)
        checks = [asyncio.ensure_future(batcher.authorize("acme", "ai_action")) for _ in range(2)]
        await _settle()
        refused = grpc.aio.AioRpcError(grpc.StatusCode.RESOURCE_EXHAUSTED, details="message larger than max")
        await first_call.answers.put(refused)
        await _settle()
        checks.append(asyncio.ensure_future(batcher.authorize("acme", "ai_action")))
        await _settle()
        for batch in second_call.written:
            responses = [balance_pb2.AuthorizeResponse(request_id=r.request_id, reason="OK") for r in batch.requests]
            await second_call.answers.put(balance_pb2.AuthorizeBatchResult(responses=responses))
        outcomes = await asyncio.wait_for(asyncio.gather(*checks, return_exceptions=True), SAFETY_S)
        return [_described(o) for o in outcomes], second_call.cancelled

    outcomes, second_cancelled = asyncio.run(scenario())
    refused = "RESOURCE_EXHAUSTED: message larger than max"
    expected = [refused, refused, "OK"]
    assert outcomes == expected, f"{outcomes}, stream 2 cancelled: {second_cancelled}"
    assert not second_cancelled


def summary(transaction_id: str) -> Usage:
    return Usage(transaction_id, "acme", "ai_action", now_ms(), {"action": "summary"})


def test_an_event_added_while_the_batcher_closes_is_sent_or_refused_never_dropped(server: ServerProcess) -> None:
    """close() "flushes and stops": an add() that returned while close() waited for the last ack must not leave
    its event in the buffer of a batcher that then closed without error."""

    async def scenario() -> tuple[str, int, int]:
        async with server.async_client() as client:
            batcher = client.usage_batcher(flush_interval_ms=60_000)  # only a flush or close sends
            stamp = time.time_ns()
            await batcher.add(summary(f"closing-{stamp}-1"))
            closing = asyncio.ensure_future(batcher.close())
            for _ in range(5):  # close() now waits for the ack of the first event
                await asyncio.sleep(0)
            try:
                await batcher.add(summary(f"closing-{stamp}-2"))
                added = "added"
            except RuntimeError as refused:
                added = f"refused: {refused}"
            async with asyncio.timeout(SAFETY_S):
                await closing
            return added, batcher.buffered, batcher.accepted

    added, buffered, accepted = asyncio.run(scenario())
    assert buffered == 0, f"the second event ({added}) was left unsent in a closed batcher"
    assert (added, accepted) in {("added", 2), ("refused: UsageBatcher is closed", 1)}, (added, accepted)


def test_a_stream_that_stops_answering_is_given_up_and_the_next_check_opens_a_new_one() -> None:
    """The gateway module: "Each `authorize()` answers or raises `DeadlineExceeded` within `timeout_s`", and a
    broken stream is replaced by the next check. A stream that neither answers nor ends (a server or connection
    gone silent) was kept for ever: every later check was written on it and timed out too. Now the first check to
    time out on it gives it up (cancelled), and the next check is answered on a new stream."""

    async def scenario() -> tuple[list[str], bool, int]:
        silent_call = _FakeCall(None)
        second_call = _FakeCall(None)
        stub = _FakeStub([silent_call, second_call])
        batcher = AuthorizeBatcher(stub, batch_requests_max=1, timeout_s=0.2)
        outcomes: list[object] = []
        try:
            await batcher.authorize("acme", "ai_action")
        except TariffError as e:
            outcomes.append(e)
        later = asyncio.ensure_future(batcher.authorize("acme", "ai_action"))
        await _settle()
        for batch in second_call.written:
            responses = [balance_pb2.AuthorizeResponse(request_id=r.request_id, reason="OK") for r in batch.requests]
            await second_call.answers.put(balance_pb2.AuthorizeBatchResult(responses=responses))
        outcomes.extend(await asyncio.gather(later, return_exceptions=True))
        return [_described(o) for o in outcomes], silent_call.cancelled, stub.opened

    outcomes, silent_cancelled, streams_opened = asyncio.run(scenario())
    assert outcomes == ["DEADLINE_EXCEEDED: no answer to an authorize check within 0.2 s", "OK"], outcomes
    assert silent_cancelled and streams_opened == 2
