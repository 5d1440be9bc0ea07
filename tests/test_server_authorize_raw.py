"""AuthorizeBatches and unary Authorize answered on raw bytes by the kernel, against a real demo server: every
answer, and every refusal of a whole message (status and message), is the one the per-request Python path
gives. AuthorizeStream stays on that path (one protobuf request at a time), so it is the reference here.

Demo prices (server/demo.py): a simple summary on gpt-4 is 2.5 credits, a complex one 5; acme holds 50,000.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
from google.protobuf.duration_pb2 import Duration
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tariff.v1 import balance_pb2, balance_pb2_grpc

from tests.serverproc import ServerFactory, ServerProcess
from tests.test_server_auth import STANDARD_KEYS, Keys

BATCHES = "/tariff.v1.BalanceService/AuthorizeBatches"
AUTHORIZE = "/tariff.v1.BalanceService/Authorize"


def request(
    request_id: str, customer_id: str = "acme", event_type: str = "ai_action", **dimensions: str
) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=request_id, customer_id=customer_id, event_type=event_type, dimensions=dimensions
    )


def batch_bytes(*requests: balance_pb2.AuthorizeRequest) -> bytes:
    return balance_pb2.AuthorizeBatch(requests=requests).SerializeToString()


def raw_batches(
    channel: grpc.Channel, messages: list[bytes], metadata: list[tuple[str, str]] | None = None
) -> list[balance_pb2.AuthorizeBatchResult]:
    call = channel.stream_stream(
        BATCHES, request_serializer=lambda b: b, response_deserializer=balance_pb2.AuthorizeBatchResult.FromString
    )
    return list(call(iter(messages), timeout=30, metadata=metadata))


def status_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    try:
        call()
    except grpc.RpcError as e:
        return e.code(), e.details() or ""
    return grpc.StatusCode.OK, ""


def stream_answers(channel: grpc.Channel, requests: list[bytes]) -> list[balance_pb2.AuthorizeResponse]:
    """The Python path's answers (AuthorizeStream), one request at a time, as raw request bytes."""
    call = channel.stream_stream(
        "/tariff.v1.BalanceService/AuthorizeStream",
        request_serializer=lambda b: b,
        response_deserializer=balance_pb2.AuthorizeResponse.FromString,
    )
    return list(call(iter(requests), timeout=30))


def in_band_invalid(request_id: str, field: str) -> balance_pb2.AuthorizeResponse:
    """What today's batch path answered a request without customer_id or event_type."""
    return balance_pb2.AuthorizeResponse(
        request_id=request_id,
        allowed=False,
        reason="INVALID_REQUEST",
        estimated_cost="0",
        credits_available="0",
        message=f"{field}: is required",
    )


def expected_answers(
    channel: grpc.Channel, requests: list[balance_pb2.AuthorizeRequest]
) -> list[balance_pb2.AuthorizeResponse]:
    """Each request answered as the Python path answers it: over AuthorizeStream, or in-band for the requests
    AuthorizeStream refuses with a status (no customer_id or event_type)."""
    priced = [r.SerializeToString() for r in requests if r.customer_id and r.event_type]
    streamed = iter(stream_answers(channel, priced))
    return [
        next(streamed)
        if r.customer_id and r.event_type
        else in_band_invalid(r.request_id, "event_type" if r.customer_id else "customer_id")
        for r in requests
    ]


SIMPLE = {"action": "summary", "model": "gpt-4", "complexity": "simple"}


def test_a_mixed_batch_gets_the_answers_of_the_per_request_path(demo_server: ServerProcess) -> None:
    requests = [
        request("ok", **SIMPLE),
        request("complex", action="summary", model="gpt-4", complexity="complex"),
        request("unknown", "nobody", **SIMPLE),
        request("no-customer", ""),
        request("no-type", event_type=""),
        request("feeds-nothing", event_type="other"),
        request("no-rate", action="nothing-priced"),
        balance_pb2.AuthorizeRequest(
            request_id="negative", customer_id="acme", event_type="ai_action", values={"n": -1.0}
        ),
        balance_pb2.AuthorizeRequest(
            request_id="nan", customer_id="acme", event_type="ai_action", values={"n": float("nan")}
        ),
        balance_pb2.AuthorizeRequest(
            request_id="inexact", customer_id="acme", event_type="ai_action", values={"n": 1e-50}
        ),
        balance_pb2.AuthorizeRequest(
            request_id="long", customer_id="acme", event_type="ai_action", dimensions={"k" * 300: "v"}
        ),
        balance_pb2.AuthorizeRequest(request_id="ttl", customer_id="acme", event_type="ai_action", dimensions=SIMPLE),
    ]
    requests[-1].reservation_ttl.seconds = 30  # without reserve it asks for nothing
    with grpc.insecure_channel(demo_server.target) as channel:
        (result,) = raw_batches(channel, [batch_bytes(*requests)])
        expected = expected_answers(channel, requests)
    assert list(result.responses) == expected
    assert [(a.reason, a.estimated_cost) for a in result.responses[:3]] == [
        ("OK", "2.5"),
        ("OK", "5"),
        ("UNKNOWN_CUSTOMER", "0"),
    ]
    assert result.responses[0].credits_available == "50000"


def delimited(field: int, body: bytes) -> bytes:
    """A length-delimited field on the wire (a field number below 16; the length as a varint)."""
    length, size = b"", len(body)
    while size >= 0x80:
        length, size = length + bytes([size & 0x7F | 0x80]), size >> 7
    return bytes([field << 3 | 2]) + length + bytes([size]) + body


def entry(field: int, key: bytes, value: bytes) -> bytes:
    """A map entry on the wire: field `field`, holding key = 1 and the value field given."""
    return delimited(field, delimited(1, key) + value)


def test_a_repeated_map_key_is_resolved_as_the_python_path_resolves_it(demo_server: ServerProcess) -> None:
    # protobuf takes the last of repeated map keys: model ends as gpt-4 (2.5 credits), not gpt-4o-mini.
    head = balance_pb2.AuthorizeRequest(request_id="dup", customer_id="acme", event_type="ai_action")
    dimension = lambda k, v: entry(4, k, delimited(2, v))  # noqa: E731
    value = lambda k, v: entry(5, k, b"\x11" + struct.pack("<d", v))  # noqa: E731
    raw = (
        head.SerializeToString()
        + dimension(b"action", b"summary")
        + dimension(b"model", b"gpt-4o-mini")
        + dimension(b"complexity", b"simple")
        + dimension(b"model", b"gpt-4")
        + value(b"n", -1.0)
        + value(b"n", 2.0)
    )
    message = delimited(1, raw)
    with grpc.insecure_channel(demo_server.target) as channel:
        (result,) = raw_batches(channel, [message])
        (expected,) = stream_answers(channel, [raw])
    assert list(result.responses) == [expected]
    assert (expected.reason, expected.estimated_cost) == ("OK", "2.5")


def test_whole_message_refusals_keep_their_status_and_message(demo_server: ServerProcess) -> None:
    too_many = batch_bytes(*[request(f"r{i}", **SIMPLE) for i in range(10_001)])
    with grpc.insecure_channel(demo_server.target) as channel:
        refusals = {
            name: status_of(lambda m=message: raw_batches(channel, [batch_bytes(request("first")), m]))  # type: ignore[misc]
            for name, message in [
                ("no-id", batch_bytes(request("a", **SIMPLE), request(""))),
                ("too-many", too_many),
                ("garbage", b"\x0a\x05ab"),
            ]
        }
    assert refusals == {
        "no-id": (
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[1].request_id: is required on AuthorizeBatches to correlate answers",
        ),
        "too-many": (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "an AuthorizeBatch holds at most 10000 requests, this one 10001",
        ),
        # A request 5 bytes long cut off 2 bytes in: the request is named (tests/test_audit_abdecode_wire.py).
        "garbage": (
            grpc.StatusCode.INVALID_ARGUMENT,
            "requests[0]: not an AuthorizeBatch: the request at index 0 does not decode: "
            "failed to decode Protobuf message: AuthorizeBatch.requests: buffer underflow",
        ),
    }


def test_a_request_id_over_256_bytes_is_refused_on_every_authorize_call_and_holds_nothing(
    demo_server: ServerProcess,
) -> None:
    # A request_id is echoed in the answer and a hold's is journaled with it: bounded like reservation_id. On
    # AuthorizeBatches it refuses the whole message, as a missing one does (no answer to correlate it by).
    longest, too_long = "r" * 256, "r" * 257
    longest_in_utf8, too_long_in_utf8 = "é" * 128, "é" * 129  # bytes count, not characters
    holding = balance_pb2.AuthorizeRequest(
        request_id=too_long, customer_id="acme", event_type="ai_action", dimensions=SIMPLE, reserve=True
    )
    with grpc.insecure_channel(demo_server.target) as channel:
        stub = balance_pb2_grpc.BalanceServiceStub(channel)
        (answered,) = raw_batches(
            channel, [batch_bytes(request(longest, **SIMPLE), request("é", **SIMPLE), request(longest_in_utf8))]
        )
        refused_utf8 = status_of(lambda: raw_batches(channel, [batch_bytes(request(too_long_in_utf8))]))
        refused_batch = status_of(
            lambda: raw_batches(channel, [batch_bytes(request("first", **SIMPLE)), batch_bytes(request("a"), holding)])
        )
        refused_unary = status_of(lambda: stub.Authorize(holding, timeout=10))
        refused_stream = status_of(lambda: stream_answers(channel, [holding.SerializeToString()]))
        balance = stub.GetBalance(balance_pb2.GetBalanceRequest(customer_id="acme"), timeout=10)
    assert [(a.request_id, a.reason) for a in answered.responses] == [
        (longest, "OK"),
        ("é", "OK"),
        (longest_in_utf8, "OK"),
    ]
    assert refused_utf8 == (grpc.StatusCode.INVALID_ARGUMENT, "requests[0].request_id: must be at most 256 bytes")
    assert refused_batch == (grpc.StatusCode.INVALID_ARGUMENT, "requests[1].request_id: must be at most 256 bytes")
    assert refused_unary == (grpc.StatusCode.INVALID_ARGUMENT, "request_id: must be at most 256 bytes")
    assert refused_stream == (grpc.StatusCode.INVALID_ARGUMENT, "request_id: must be at most 256 bytes")
    assert (balance.credits_available, balance.credits_remaining) == ("50000", "50000"), "nothing was held"


def test_a_restricted_key_is_refused_a_batch_naming_another_customer(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    keys = Keys(tmp_path / "keys.json", STANDARD_KEYS)
    server = server_factory(demo=True, extra_args=keys.args, api_key=keys.key["ops-admin"], name="keyed")
    metadata = [("authorization", f"Bearer {keys.key['acme-meter']}")]
    with grpc.insecure_channel(server.target) as channel:
        (allowed,) = raw_batches(channel, [batch_bytes(request("a", **SIMPLE))], metadata)
        foreign = status_of(lambda: raw_batches(channel, [batch_bytes(request("a"), request("b", "beta"))], metadata))
        unnamed = status_of(lambda: raw_batches(channel, [batch_bytes(request("a", ""))], metadata))
        # The customer check comes before the batch limit and the request ids, as the key's check always did.
        first = status_of(lambda: raw_batches(channel, [batch_bytes(request(""), request("b", "beta"))], metadata))
    assert [(a.request_id, a.reason) for a in allowed.responses] == [("a", "OK")]
    assert foreign == (
        grpc.StatusCode.PERMISSION_DENIED,
        "requests[1].customer_id: key 'acme-meter' may not touch customer 'beta'",
    )
    assert unnamed == (
        grpc.StatusCode.PERMISSION_DENIED,
        "key 'acme-meter' is restricted to some customers: requests[0].customer_id is required",
    )
    assert first == foreign


def test_unary_authorize_answers_and_refuses_as_the_per_request_path(demo_server: ServerProcess) -> None:
    with grpc.insecure_channel(demo_server.target) as channel:
        stub = balance_pb2_grpc.BalanceServiceStub(channel)
        simple = request("u", **SIMPLE)
        answered = stub.Authorize(simple, timeout=10)
        (streamed,) = stream_answers(channel, [simple.SerializeToString()])
        raw = channel.unary_unary(AUTHORIZE, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        statuses = [
            status_of(lambda r=r: stub.Authorize(r, timeout=10))  # type: ignore[misc]
            for r in [
                request("x", "nobody"),
                request("x", ""),
                request("x", event_type=""),
                balance_pb2.AuthorizeRequest(customer_id="acme", event_type="ai_action", values={"n": -1.0}),
                balance_pb2.AuthorizeRequest(
                    customer_id="acme", event_type="ai_action", reserve=True, reservation_ttl=Duration(seconds=0)
                ),
            ]
        ]
        garbage = status_of(lambda: raw(b"\x0a\x05ab", timeout=10))
    assert answered == streamed
    assert (answered.reason, answered.estimated_cost) == ("OK", "2.5")
    assert statuses == [
        (grpc.StatusCode.NOT_FOUND, "customer 'nobody' does not exist"),
        (grpc.StatusCode.INVALID_ARGUMENT, "customer_id: is required"),
        (grpc.StatusCode.INVALID_ARGUMENT, "event_type: is required"),
        (grpc.StatusCode.INVALID_ARGUMENT, "values: values['n'] is -1.0: must not be negative"),
        (grpc.StatusCode.INVALID_ARGUMENT, "reservation_ttl: must be positive"),
    ]
    assert garbage == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "request: could not be decoded: Error parsing message with type 'tariff.v1.AuthorizeRequest': Wire format was corrupt",
    )


# Generated requests: the raw path's answers equal the per-request path's, whatever the request holds.

TEXT = st.sampled_from(["", "acme", "nobody", "ai_action", "summary", "gpt-4", "gpt-4o-mini", "simple", "complex"])
DIMENSION_KEYS = st.sampled_from(["action", "model", "complexity", "data_source", "other"])
ANY_VALUE = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, 0.1, 1e-18, 1e-19, 1e-50, 1e15, 999_999_999_999_999.9, -0.0, 5e-324]),
)
EXACT_VALUE = st.sampled_from([0.0, 0.5, 1200.0, 1e-18, 999_999_999_999_999.9])
# At most one value may be refused: with several, the Python path names the first in its map's iteration order,
# which protobuf leaves undefined (the raw path names the first on the wire).
REQUESTS = st.builds(
    lambda customer, event_type, dimensions, free, exact: balance_pb2.AuthorizeRequest(
        customer_id=customer, event_type=event_type, dimensions=dimensions, values={**exact, **free}
    ),
    st.sampled_from(["acme", "acme", "nobody", ""]),
    st.sampled_from(["ai_action", "ai_action", "other", ""]),
    st.dictionaries(DIMENSION_KEYS, TEXT, max_size=5),
    st.dictionaries(st.just("n"), ANY_VALUE, max_size=1),
    st.dictionaries(st.sampled_from(["tokens", "seconds"]), EXACT_VALUE, max_size=2),
)


def numbered(requests: list[balance_pb2.AuthorizeRequest]) -> Iterator[balance_pb2.AuthorizeRequest]:
    for index, r in enumerate(requests):
        r.request_id = f"g{index}"
        yield r


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(REQUESTS, min_size=1, max_size=30))
def test_generated_batches_get_the_answers_of_the_per_request_path(
    demo_server: ServerProcess, requests: list[balance_pb2.AuthorizeRequest]
) -> None:
    requests = list(numbered(requests))
    with grpc.insecure_channel(demo_server.target) as channel:
        (result,) = raw_batches(channel, [batch_bytes(*requests)])
        expected = expected_answers(channel, requests)
    assert list(result.responses) == expected
