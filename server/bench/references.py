"""The reference servers that Tariff's figures are ratios against: the same proto, no billing.

`python -m server.bench.references --mode noop|read --listen HOST:PORT` serves UsageService and
BalanceService on grpc.aio + uvloop, the same stack and streaming shape as `tariff serve`:

- noop: IngestUsage acks every batch as soon as it is parsed (the transport ceiling); Authorize,
  AuthorizeStream and GetBalance answer a constant (the no-op unary reference).
- read: the same, but IngestUsage also reads every field of every event in a Python loop first
  (the floor any per-event Python rating loop pays).

Nothing is journaled and nothing is priced: these bound what the transport and a Python loop cost.
The durable reference (raw bytes appended to an LMDB journal with group commit) is the sibling module
server/bench/journal_reference.py.
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from tariff.v1 import balance_pb2, balance_pb2_grpc, usage_pb2, usage_pb2_grpc

MESSAGE_BYTES_MAX = 64 * 1024 * 1024


def read_every_field(batch: usage_pb2.UsageBatch) -> int:
    """Touches every field of every event, as a rating loop must; returns a checksum so nothing is skipped."""
    touched = 0
    for event in batch.events:
        touched += len(event.transaction_id) + len(event.customer_id) + len(event.event_type)
        touched += event.timestamp_ms & 1
        for key, value in event.dimensions.items():
            touched += len(key) + len(value)
        for key, quantity in event.values.items():
            touched += len(key) + (quantity > 0)
        touched += len(event.reservation_id)
    return touched


class ReferenceUsage(usage_pb2_grpc.UsageServiceServicer):
    def __init__(self, read_events: bool) -> None:
        self.read_events = read_events

    def _ack(self, batch: usage_pb2.UsageBatch) -> usage_pb2.IngestAck:
        if self.read_events:
            read_every_field(batch)
        return usage_pb2.IngestAck(batch_id=batch.batch_id, accepted=len(batch.events))

    async def IngestUsage(
        self, request_iterator: AsyncIterator[usage_pb2.UsageBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[usage_pb2.IngestAck]:
        async for batch in request_iterator:
            yield self._ack(batch)

    async def IngestUsageBatch(
        self, request: usage_pb2.UsageBatch, context: grpc.aio.ServicerContext
    ) -> usage_pb2.IngestAck:
        return self._ack(request)


def _decision(request: balance_pb2.AuthorizeRequest) -> balance_pb2.AuthorizeResponse:
    return balance_pb2.AuthorizeResponse(
        request_id=request.request_id, allowed=True, reason="OK", estimated_cost="0", credits_available="0"
    )


class ReferenceBalance(balance_pb2_grpc.BalanceServiceServicer):
    async def GetBalance(
        self, request: balance_pb2.GetBalanceRequest, context: grpc.aio.ServicerContext
    ) -> balance_pb2.Balance:
        return balance_pb2.Balance(customer_id=request.customer_id, credits_remaining="0", credits_available="0")

    async def Authorize(
        self, request: balance_pb2.AuthorizeRequest, context: grpc.aio.ServicerContext
    ) -> balance_pb2.AuthorizeResponse:
        return _decision(request)

    async def AuthorizeStream(
        self, request_iterator: AsyncIterator[balance_pb2.AuthorizeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[balance_pb2.AuthorizeResponse]:
        async for request in request_iterator:
            yield _decision(request)

    async def AuthorizeBatches(
        self, request_iterator: AsyncIterator[balance_pb2.AuthorizeBatch], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[balance_pb2.AuthorizeBatchResult]:
        async for batch in request_iterator:
            yield balance_pb2.AuthorizeBatchResult(responses=[_decision(request) for request in batch.requests])


async def serve(listen: str, mode: str) -> None:
    server = grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", MESSAGE_BYTES_MAX),
            ("grpc.max_send_message_length", MESSAGE_BYTES_MAX),
        ]
    )
    usage_pb2_grpc.add_UsageServiceServicer_to_server(ReferenceUsage(read_events=mode == "read"), server)  # type: ignore[no-untyped-call]  # generated, unannotated
    balance_pb2_grpc.add_BalanceServiceServicer_to_server(ReferenceBalance(), server)  # type: ignore[no-untyped-call]  # generated, unannotated
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    if server.add_insecure_port(listen) == 0:
        raise SystemExit(f"could not listen on {listen}")
    await server.start()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m server.bench.references", description=__doc__)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--mode", choices=["noop", "read"], required=True)
    args = parser.parse_args(argv)
    import uvloop

    # SIGTERM's default action ends the process; there is no state to save.
    uvloop.run(serve(args.listen, args.mode))


if __name__ == "__main__":
    main()
