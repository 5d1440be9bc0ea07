"""API keys audit over the wire, third pass: README "### API keys" against request bytes that do not parse.

test_server_auth.py, test_audit_security_wire.py and test_audit_security2_wire.py cover keys, roles and customers
with well-formed requests; nothing here repeats them. Here: a caller without a valid key, or whose key's role does
not allow the RPC, is told so whatever bytes it sends; before, a unary request that did not parse was answered
INVALID_ARGUMENT naming the message type, to a caller without any key too (streams were already refused first).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.serverproc import ServerProcess
from tests.test_server_auth import CHANNEL_OPTIONS, Keys

KEYS: dict[str, tuple[str, list[str] | None]] = {"ops-admin": ("admin", None), "finance": ("read", None)}
# Field 1 as a length-delimited value claiming 127 bytes, none following: no protobuf message parses it.
CORRUPT = b"\x0a\x7f"
# (method, server streaming, client streaming): one RPC of each kind, each for admin keys only.
ADMIN_ONLY = (
    ("/tariff.v1.InvoiceService/ClosePeriod", False, False),
    ("/tariff.v1.PricingService/CreateProduct", False, False),
)
# An RPC every role may call, answering a stream.
WATCH = ("/tariff.v1.BalanceService/WatchBalance", True, False)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Keys]]:
    root: Path = tmp_path_factory.mktemp("audit-keys3")
    keys = Keys(root / "keys.json", KEYS)
    server = ServerProcess(root / "data", demo=True, extra_args=keys.args, api_key=keys.key["ops-admin"])
    server.start()
    try:
        yield server, keys
    finally:
        server.stop()


def _raw(server: ServerProcess, method: str, streaming: bool, authorization: str | None) -> tuple[grpc.StatusCode, str]:
    metadata = [] if authorization is None else [("authorization", authorization)]
    with grpc.insecure_channel(server.target, options=CHANNEL_OPTIONS) as channel:
        try:
            if streaming:
                stream = channel.unary_stream(method, request_serializer=bytes, response_deserializer=bytes)
                list(stream(CORRUPT, metadata=metadata, timeout=10))
            else:
                unary = channel.unary_unary(method, request_serializer=bytes, response_deserializer=bytes)
                unary(CORRUPT, metadata=metadata, timeout=10)
        except grpc.RpcError as e:
            return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize(
    ("authorization", "expected"),
    [
        (None, "missing API key: send 'authorization: Bearer KEY'"),
        ("Bearer not-a-key", "invalid API key"),
        ("Basic dXNlcjpwYXNz", "invalid API key"),
    ],
    ids=["missing", "unknown", "other-scheme"],
)
def test_a_caller_without_a_valid_key_is_unauthenticated_whatever_bytes_it_sends(
    keyed: tuple[ServerProcess, Keys], authorization: str | None, expected: str
) -> None:
    """README: "A missing or unknown key is UNAUTHENTICATED" — on unary calls and answer streams alike, before the
    request is read: a keyless caller learns nothing of what the server would make of its bytes (not even the
    message type it expects)."""
    server, _ = keyed
    for method, streaming, _client_streaming in (*ADMIN_ONLY, WATCH):
        answer = _raw(server, method, streaming, authorization)
        assert answer == (grpc.StatusCode.UNAUTHENTICATED, expected), method


def test_a_key_lacking_the_role_is_permission_denied_whatever_bytes_it_sends(keyed: tuple[ServerProcess, Keys]) -> None:
    """README: a key asking for what its role does not allow is PERMISSION_DENIED naming the key and its role,
    whether or not the request it sent parses; the key allowed the RPC is the one told its bytes do not parse."""
    server, keys = keyed
    for method, streaming, _client_streaming in ADMIN_ONLY:
        name = method.rsplit("/", 1)[-1]
        read = _raw(server, method, streaming, f"Bearer {keys.key['finance']}")
        assert read == (grpc.StatusCode.PERMISSION_DENIED, f"key 'finance' has role 'read'; {name} needs admin")
        admin = _raw(server, method, streaming, f"Bearer {keys.key['ops-admin']}")
        assert admin[0] == grpc.StatusCode.INVALID_ARGUMENT and "could not be decoded" in admin[1], (method, admin)
    watched = _raw(server, WATCH[0], WATCH[1], f"Bearer {keys.key['finance']}")
    assert watched[0] == grpc.StatusCode.INVALID_ARGUMENT and "could not be decoded" in watched[1], watched
