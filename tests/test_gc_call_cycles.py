"""A call through the call gate leaves no reference cycle holding grpc.aio's per-call state: reference counting frees
each call's RPCState and servicer context at its end, so no collection of an older generation frees hundreds of
them at once (up to 11 ms holding the GIL, on whichever thread collected)."""

from __future__ import annotations

import asyncio
import gc
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc

from server.auth import CallGate
from server.errors import UndecodableRequests

UNARY = "/test.Gate/Unary"
STREAM = "/test.Gate/Stream"
CALLS = 20
# grpc.aio's own per-call objects that a cycle through the context would keep (grpc's handler lookup leaves a
# closure cycle of its own behind every call, whatever the handler does: not counted here).
CALL_STATE_TYPES = ("RPCState", "_ServicerContext")


def _identity(payload: bytes) -> bytes:
    return payload


async def _unary(request: bytes, context: Any) -> bytes:
    return request


async def _stream(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    async for request in requests:
        yield request


class _Handlers(grpc.GenericRpcHandler):  # type: ignore[misc]
    def service(self, details: Any) -> Any:
        if details.method == UNARY:
            return grpc.unary_unary_rpc_method_handler(_unary, _identity, _identity)
        if details.method == STREAM:
            return grpc.stream_stream_rpc_method_handler(_stream, _identity, _identity)
        return None


def _garbage_types() -> Counter[str]:
    """What a full collection finds unreachable (kept, counted by type, then freed)."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        found = Counter(type(item).__qualname__ for item in gc.garbage)
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.collect()
    return found


async def _calls_then_garbage() -> tuple[Counter[str], int]:
    gate = CallGate(None, lambda contract_id: None)
    server = grpc.aio.server(interceptors=[UndecodableRequests(), gate])  # the server's interceptors (server/app.py)
    server.add_generic_rpc_handlers((_Handlers(),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            unary = channel.unary_unary(UNARY, request_serializer=_identity, response_deserializer=_identity)
            stream = channel.stream_stream(STREAM, request_serializer=_identity, response_deserializer=_identity)
            await unary(b"warm")  # the first call builds what lives on (the gate's cached handlers, the channel)
            _garbage_types()
            for n in range(CALLS):
                assert await unary(b"%d" % n) == b"%d" % n
            answers = [answer async for answer in stream(iter([b"a", b"b"]))]
            assert answers == [b"a", b"b"]
            await asyncio.sleep(0.05)  # the server's side of the last call ends after the client has its answer
            return _garbage_types(), gate.rpcs_running
    finally:
        await server.stop(None)


def test_calls_through_the_gate_leave_no_cycle_holding_their_state_and_free_their_places() -> None:
    garbage, running = asyncio.run(_calls_then_garbage())
    assert {name: garbage[name] for name in CALL_STATE_TYPES} == {name: 0 for name in CALL_STATE_TYPES}
    assert running == 0
