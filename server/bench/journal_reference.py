"""The raw-bytes journal reference: what durable ingest costs with no rating at all.

`python -m server.bench.journal_reference --listen HOST:PORT --data-dir DIR --batch-events N` serves
UsageService's IngestUsage and IngestUsageBatch through a generic handler with no deserializer, so
each UsageBatch arrives as the bytes sent. Every batch is appended to an LMDB journal (sync commit)
by one writer thread with group commit: all batches waiting when a commit starts go into that
commit. Each batch is then answered with a fixed IngestAck (accepted = N), encoded once at start, and
only after its commit. Ingest over this is the rating's whole cost as a ratio: the transport, the
journal and the fsync are the same, and so is the file's next pages kept in the page cache after each commit
(server/pages_ahead.py), as the server's journal does.
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import lmdb
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tariff.v1 import usage_pb2

from server.pages_ahead import PagesAhead

MESSAGE_BYTES_MAX = 64 * 1024 * 1024
MAP_SIZE_BYTES = 32 * 1024 * 1024 * 1024
SERVICE = "tariff.v1.UsageService"

Pending = tuple[bytes, asyncio.Future[None]]


class GroupCommitJournal:
    """One writer thread; `append` resolves once the batch's group is committed (fsync) to LMDB."""

    def __init__(self, directory: Path, loop: asyncio.AbstractEventLoop) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.env = lmdb.open(str(directory), map_size=MAP_SIZE_BYTES, sync=True, metasync=True)
        self.pages_ahead = PagesAhead(directory / "data.mdb", self.env.info()["map_size"])
        self.page_bytes: int = self.env.stat()["psize"]
        self.loop = loop
        self.waiting: queue.SimpleQueue[Pending] = queue.SimpleQueue()
        self.seq = 0
        threading.Thread(target=self._write, name="journal-writer", daemon=True).start()

    def append(self, batch: bytes) -> asyncio.Future[None]:
        done: asyncio.Future[None] = self.loop.create_future()
        self.waiting.put((batch, done))
        return done

    def _write(self) -> None:
        while True:
            group = [self.waiting.get()]
            while True:  # everything already waiting joins this commit
                try:
                    group.append(self.waiting.get_nowait())
                except queue.Empty:
                    break
            with self.env.begin(write=True) as txn:
                for batch, _ in group:
                    self.seq += 1
                    txn.put(self.seq.to_bytes(8, "big"), batch, append=True)
            self.pages_ahead.after_commit((self.env.info()["last_pgno"] + 1) * self.page_bytes)
            self.loop.call_soon_threadsafe(_resolve, [done for _, done in group])


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for done in futures:
        if not done.done():
            done.set_result(None)


def _handler(journal_of: list[GroupCommitJournal], ack: bytes) -> grpc.GenericRpcHandler:
    async def ingest_usage(requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        journal = journal_of[0]
        # Acks go out in order, each after its batch's commit, while later batches are already read.
        acks: asyncio.Queue[asyncio.Future[None] | None] = asyncio.Queue()

        async def read() -> None:
            async for batch in requests:
                acks.put_nowait(journal.append(batch))
            acks.put_nowait(None)

        reader = asyncio.ensure_future(read())
        try:
            while (committed := await acks.get()) is not None:
                await committed
                yield ack
        finally:
            reader.cancel()

    async def ingest_usage_batch(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await journal_of[0].append(request)
        return ack

    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "IngestUsage": grpc.stream_stream_rpc_method_handler(ingest_usage),
            "IngestUsageBatch": grpc.unary_unary_rpc_method_handler(ingest_usage_batch),
        },
    )


async def serve(listen: str, data_dir: Path, batch_events: int) -> None:
    ack = usage_pb2.IngestAck(accepted=batch_events).SerializeToString()
    journal_of: list[GroupCommitJournal] = []
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ]
    )
    server.add_generic_rpc_handlers((_handler(journal_of, ack),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"could not listen on {listen}")
    journal_of.append(GroupCommitJournal(data_dir, asyncio.get_running_loop()))
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server.bench.journal_reference", description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--batch-events", type=int, required=True, help="events per batch, the acks' accepted")
    args = parser.parse_args(argv)
    import uvloop

    # SIGTERM's default action ends the process; the journal is a throwaway in the bench's work dir.
    uvloop.run(serve(args.listen, args.data_dir, args.batch_events))


if __name__ == "__main__":
    main()
