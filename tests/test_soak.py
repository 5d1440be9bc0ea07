"""The short fault soak (tests/soak.py) inside the suite, and a full LMDB map checked against the journal.

`make soak` runs the long soak (50 crashes); here 5 crashes keep the suite's time bounded while exercising the
same checks: after every `kill -9` every acknowledged event is in the journal exactly once, nothing is
half-applied, and every read RPC agrees with tests/reference_billing.py's recomputation of the journal; one of the
cycles also takes a `tariff backup` under load, restored and checked.
"""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import grpc
import grpc.aio
import pytest
from tariff.v1 import usage_pb2_grpc

from tests.reference_billing import ReferenceBilling
from tests.serverproc import ServerFactory
from tests.soak import (
    CHANNEL_OPTIONS,
    RPC_TIMEOUT_S,
    Load,
    SentBatch,
    SoakConfig,
    build_catalogue,
    check_journal_against_sends,
    compare_reads,
    run_soak,
)

SHORT_CRASHES = 5
BACKUPS = 1
CONFLICTS = 10_000


@pytest.mark.slow
def test_short_soak_survives_kill9_with_every_acknowledged_event_once_and_reads_equal_to_the_reference(
    tmp_path: Path,
) -> None:
    config = SoakConfig(crashes=SHORT_CRASHES, clients=2, seed=20261126, conflicts=CONFLICTS, backups=BACKUPS)
    summary = run_soak(config, tmp_path)  # raises SoakFailure on any broken promise
    # Some cycles kill twice (again while clients resend); the conflict phase kills once more.
    assert summary.checks_after_crash == SHORT_CRASHES + summary.kills_during_resends
    assert summary.crashes_survived == summary.checks_after_crash + 1
    assert summary.kills_with_batches_in_flight >= 1
    assert summary.batches_acknowledged == summary.batches_sent > 0
    assert summary.events_acknowledged_and_verified >= CONFLICTS
    assert summary.storm_resends > 0 and summary.duplicates_answered > 0
    # Both rounds (before and after the crash) refuse every conflict and count every identical resend.
    assert summary.conflicts_tried == summary.conflicts_detected == 2 * CONFLICTS
    assert summary.identical_resends_tried == summary.identical_resends_counted_as_duplicates == 2 * CONFLICTS
    # Backups taken while clients ingest (some with the kill landing mid-copy): each completed one restored and checked.
    assert summary.backups_taken == BACKUPS and summary.backups_verified == summary.backups_completed
    # Contracts ended under the load: each end taken journaled once, replayed through the kills (usage after it
    # refused, GetContract and GetBalance checked against the journal after every crash).
    assert summary.contract_ends_taken == summary.end_contract_records > 0 and summary.contract_end_refusals > 0
    assert summary.contracts_ended > 0 and summary.events_after_an_end_refused > 0
    print(summary)


def test_full_map_refuses_whole_batches_from_concurrent_clients_and_a_bigger_map_serves_them(
    server_factory: ServerFactory,
) -> None:
    """Concurrent writers fill a 1 MiB map: each batch is acknowledged (and journaled whole) or refused with
    RESOURCE_EXHAUSTED (and absent from the journal); reads still answer and equal the reference; after a
    restart with a bigger map the refused batches are accepted and the acknowledged ones are duplicates."""
    server = server_factory(extra_args=["--map-size-mb", "1"], name="full-map")
    customers = [f"soak-{i:02d}" for i in range(3)]
    journal_dir = server.data_dir / "journal"
    writers = 3

    async def fill() -> tuple[Load, list[SentBatch]]:
        await build_catalogue(server.target, customers)
        load = Load(SoakConfig(batch_events_max=400), customers)
        refused: list[SentBatch] = []

        async def writer(k: int) -> None:
            rng = random.Random(k)
            # wait_for_ready: CHANNEL_OPTIONS' 50 ms reconnect backoff also makes gRPC's connect timeout its 100 ms
            # floor, which a starved server's handshake can miss (UNAVAILABLE, "connection attempt timed out
            # before receiving SETTINGS frame", seen under pytest -n 3 at load 6); the call then waits for the
            # channel within its own timeout, and every refusal the server sends is still checked below.
            async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
                stub = usage_pb2_grpc.UsageServiceStub(channel)
                for n in range(500):
                    sent = load.make_batch(rng, f"fill-w{k}-b{n}", "storm")
                    try:
                        ack = await stub.IngestUsageBatch(sent.message, timeout=RPC_TIMEOUT_S, wait_for_ready=True)
                    except grpc.aio.AioRpcError as exc:
                        # Also for a batch pipelined behind the commit that found the map full.
                        assert exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, exc
                        refused.append(sent)
                        return
                    load.record_ack(sent, ack)
                    assert ack.accepted == sent.size
                raise AssertionError("a 1 MiB map never filled up")

        await asyncio.gather(*(writer(k) for k in range(writers)))
        return load, refused

    load, refused = asyncio.run(fill())
    assert len(refused) == writers
    assert any(sent.acks for sent in load.sent.values()), "the map was full before the first batch"
    assert server.running, "a full map must not stop the server"

    # Journal read while the full server runs: acknowledged batches whole, refused ones absent.
    reference = ReferenceBilling.from_journal(journal_dir)
    check_journal_against_sends(reference, load, set())
    journaled = {record.batch_id for record in reference.batches}
    assert journaled == {b.batch_id for b in load.sent.values() if b.acks}
    asyncio.run(compare_reads(server.target, reference, customers))

    server.terminate()
    server.extra_args = ("--map-size-mb", "64")
    server.start()

    async def after_growth() -> None:
        async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            stub = usage_pb2_grpc.UsageServiceStub(channel)
            for sent in refused:
                ack = await stub.IngestUsageBatch(sent.message, timeout=RPC_TIMEOUT_S, wait_for_ready=True)
                assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (sent.size, 0, []), ack
                load.record_ack(sent, ack)
            for sent in [b for b in load.sent.values() if b not in refused]:
                ack = await stub.IngestUsageBatch(sent.message, timeout=RPC_TIMEOUT_S, wait_for_ready=True)
                assert (ack.accepted, ack.duplicates, list(ack.rejected)) == (0, sent.size, []), ack
                load.record_ack(sent, ack)

    asyncio.run(after_growth())
    reference.feed_journal(journal_dir)
    check_journal_against_sends(reference, load, set())
    assert set(reference.accepted) == {e.transaction_id for b in load.sent.values() for e in b.message.events}
    asyncio.run(compare_reads(server.target, reference, customers))


def test_reference_refuses_a_journal_outcome_it_cannot_recompute(server_factory: ServerFactory) -> None:
    """The reference is not a mirror: a journaled outcome that disagrees with its own dedupe is reported."""
    server = server_factory(name="reference-check")
    customers = ["soak-00"]
    load = Load(SoakConfig(batch_events_max=5), customers)

    async def ingest() -> SentBatch:
        await build_catalogue(server.target, customers)
        sent = load.make_batch(random.Random(1), "one", "storm")
        async with grpc.aio.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
            stub = usage_pb2_grpc.UsageServiceStub(channel)
            load.record_ack(sent, await stub.IngestUsageBatch(sent.message, timeout=RPC_TIMEOUT_S))
        return sent

    sent = asyncio.run(ingest())
    server.terminate()
    reference = ReferenceBilling.from_journal(server.data_dir / "journal")
    assert set(reference.accepted) == {e.transaction_id for e in sent.message.events}
    # The same record applied to a reference that already holds its events: the journaled "all accepted"
    # outcome now contradicts the recomputation (all duplicates), which is how a double count would show.
    last_seq = reference.last_seq
    blob = next(iter(ReferenceBilling.read_journal(server.data_dir / "journal", last_seq - 1)))[1]
    with pytest.raises(AssertionError, match="journaled accepted/duplicates/rejected"):
        reference.apply(last_seq + 1, blob)
    # And a batch nobody sent is reported by the cross-check.
    other = Load(SoakConfig(), customers)
    with pytest.raises(AssertionError, match="nobody sent"):
        check_journal_against_sends(reference, other, set())
