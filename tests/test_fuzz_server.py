"""Hostile input through one real server process: every RPC of every service in proto/tariff/v1, fuzzed.

Request messages are built generically from their descriptors by hypothesis (so a new RPC or field is fuzzed
without touching this file): strings from a vocabulary of real ids, empty, random Unicode and huge; maps from
empty to hundreds of entries; integers at their type's limits (timestamps at the int64 limits); doubles
including NaN, infinities, negatives and huge values; enum numbers the server does not know. UsageBatch gets
a strategy of its own, aimed at the demo customer so that events get past the first checks. Undecodable
requests (invalid UTF-8 in a string field, corrupt wire bytes) go through a raw channel.

For every call: the status is never UNKNOWN, never INTERNAL (every message here is one a client can send),
and the call ends before its deadline (server-streaming watch RPCs may legitimately run until it); the
server process stays alive; and a call that fails, or an ingest that accepts nothing, changes no state
(a fingerprint of what the server exposes: audit log, customers, products, balances, journal seq).

Examples per RPC: TARIFF_FUZZ_EXAMPLES (default 25 here; `make soak` runs more). Derandomized, so a run
is reproducible; the counts are printed at the end of the module.
"""

from __future__ import annotations

import collections
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, message, message_factory, timestamp_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tariff.v1 import (
    alerts_pb2,
    balance_pb2,
    contracts_pb2,
    invoices_pb2,
    pricing_pb2,
    usage_pb2,
)

from tests.serverproc import ServerProcess

EXAMPLES = int(os.environ.get("TARIFF_FUZZ_EXAMPLES", "25"))
USAGE_EXAMPLES = EXAMPLES * 3
DEADLINE_S = 10.0
CHANNEL_OPTIONS = [("grpc.enable_http_proxy", 0), ("grpc.max_receive_message_length", 64 * 1024 * 1024)]
MESSAGE_DEPTH_MAX = 3
FUZZ_SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)

FILES = (usage_pb2, balance_pb2, pricing_pb2, contracts_pb2, invoices_pb2, alerts_pb2)
METHODS: list[descriptor.MethodDescriptor] = [
    method for module in FILES for service in module.DESCRIPTOR.services_by_name.values() for method in service.methods
]
# Server-streaming RPCs that watch for changes: running until the deadline is their normal behaviour.
WATCHES = {"WatchBalance", "WatchAlerts"}
# A watch of a quiet server sends nothing (no heartbeat) until its deadline: a shorter one shows as much,
# sooner (a watch that answers is cancelled after three messages; a refusal comes at once).
WATCH_DEADLINE_S = 2.0
FORBIDDEN = {grpc.StatusCode.UNKNOWN, grpc.StatusCode.INTERNAL}
ACME = "acme"

INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)
INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
NOW_MS = int(time.time() * 1000)

# Real names from the demo catalogue (server/demo.py) and likely-troublesome texts, so that requests get past
# "does not exist" often enough to reach the deeper checks.
VOCABULARY = [
    "",
    " ",
    ACME,
    "acme-2026",
    "acme-prepaid-50k",
    "ai-credits",
    "ai_action",
    "summary",
    "enrichment",
    "gpt-4",
    "gpt-4o-mini",
    "complex",
    "simple",
    "crm",
    "web",
    "action",
    "model",
    "complexity",
    "data_source",
    "credits",
    "USD",
    "*",
    "0",
    "1",
    "-1",
    "0.5",
    "1e3",
    "1E+400",
    "NaN",
    "-Infinity",
    "sNaN",
    "99999999999999999999",
    "0.0000000000000000000001",
    "1/0",
    "summary_base * 2",
    "max(1, (2",
    "round(1.5)",
    "x" * 129,
    "é",
    "\u0000",
    "😀",
    "a\nb",
]

strings = st.one_of(
    st.sampled_from(VOCABULARY),
    st.text(max_size=24),
    st.integers(0, 300).map(lambda n: "k" * n),
    st.just("z" * 70_000),
)
doubles = st.one_of(
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, -1.0, 0.0, 1.0, 1e15, 1e308, 5e-324, 2.0**53 + 1]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def integers(bounds: tuple[int, int]) -> st.SearchStrategy[int]:
    low, high = bounds
    extremes = [v for v in (low, high, 0, 1, -1, NOW_MS, NOW_MS + 10**9, low + 1, high - 1) if low <= v <= high]
    return st.one_of(st.sampled_from(extremes), st.integers(low, high))


def enum_numbers(enum: descriptor.EnumDescriptor) -> st.SearchStrategy[int]:
    known = [value.number for value in enum.values]
    return st.one_of(st.sampled_from(known), integers(INT32))  # open enums: unknown numbers arrive as is


def scalar(field: descriptor.FieldDescriptor) -> st.SearchStrategy[Any]:
    kind = field.type
    FD = descriptor.FieldDescriptor
    if kind == FD.TYPE_STRING:
        return strings
    if kind == FD.TYPE_BYTES:
        return st.binary(max_size=64)
    if kind == FD.TYPE_BOOL:
        return st.booleans()
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return doubles if kind == FD.TYPE_DOUBLE else doubles.filter(lambda v: not math.isfinite(v) or abs(v) < 3e38)
    if kind == FD.TYPE_ENUM:
        assert field.enum_type is not None
        return enum_numbers(field.enum_type)
    if kind in (FD.TYPE_INT64, FD.TYPE_SINT64, FD.TYPE_SFIXED64):
        return integers(INT64)
    if kind in (FD.TYPE_UINT64, FD.TYPE_FIXED64):
        return integers(UINT64)
    if kind in (FD.TYPE_INT32, FD.TYPE_SINT32, FD.TYPE_SFIXED32):
        return integers(INT32)
    if kind in (FD.TYPE_UINT32, FD.TYPE_FIXED32):
        return integers(UINT32)
    raise AssertionError(f"no strategy for field {field.full_name} of type {kind}")


def is_map(field: descriptor.FieldDescriptor) -> bool:
    return field.message_type is not None and field.message_type.GetOptions().map_entry


@st.composite
def messages(draw: st.DrawFn, desc: descriptor.Descriptor, depth: int = 0) -> message.Message:
    """A random message of this type, field by field; each field set or left at its default."""
    built = message_factory.GetMessageClass(desc)()
    chosen_in_oneof = {oneof.name: draw(st.sampled_from([None, *oneof.fields])) for oneof in desc.oneofs}
    for field in desc.fields:
        oneof = field.containing_oneof
        if oneof is not None:
            if chosen_in_oneof[oneof.name] is not field:
                continue
        elif draw(st.integers(0, 3)) == 0:
            continue
        target = getattr(built, field.name)
        if is_map(field):
            assert field.message_type is not None
            key_field = field.message_type.fields_by_name["key"]
            value_field = field.message_type.fields_by_name["value"]
            if value_field.message_type is not None and depth >= MESSAGE_DEPTH_MAX:
                continue
            huge = draw(st.integers(0, 9)) == 0
            if huge:
                # Hundreds of entries: distinct keys, all values alike.
                value = draw(value_strategy(value_field, depth))
                for i in range(draw(st.integers(65, 600))):
                    _put(target, f"k{i}" if key_field.type == key_field.TYPE_STRING else i, value_field, value)
            else:
                for key, value in draw(
                    st.dictionaries(scalar(key_field), value_strategy(value_field, depth), max_size=5)
                ).items():
                    _put(target, key, value_field, value)
        elif field.is_repeated:
            if field.message_type is not None and depth >= MESSAGE_DEPTH_MAX:
                continue
            for item in draw(st.lists(value_strategy(field, depth), max_size=4)):
                if field.message_type is not None:
                    target.add().CopyFrom(item)
                else:
                    target.append(item)
        elif field.message_type is not None:
            if depth >= MESSAGE_DEPTH_MAX:
                continue
            target.CopyFrom(draw(value_strategy(field, depth)))
        else:
            setattr(built, field.name, draw(scalar(field)))
    return built


# Instants at the calendar's edges, as (seconds, nanos): the server's range is 1970-01-01 to 8999-12-31
# (engine/instants.py); a start at midnight of 10000-01-01 once stopped the writer (the default contract id
# formats its date, past Python's datetime), which random seconds at midnight almost never hit.
DAY_S = 86_400
LATEST_S = 221_845_391_999  # 8999-12-31T23:59:59Z
EDGE_INSTANTS = [
    (0, 0),
    (-1, 999_000_000),
    (LATEST_S, 999_000_000),
    (LATEST_S + 1, 0),
    (253_402_300_800, 0),  # 10000-01-01T00:00:00Z
    (-62_135_596_800, 0),  # 0001-01-01T00:00:00Z
    (NOW_MS // 1000 // DAY_S * DAY_S, 0),
    (NOW_MS // 1000, -1),
    (NOW_MS // 1000, 1_000_000_000),
]


def timestamps(depth: int) -> st.SearchStrategy[message.Message]:
    edges = st.sampled_from(EDGE_INSTANTS).map(lambda edge: timestamp_pb2.Timestamp(seconds=edge[0], nanos=edge[1]))
    return st.one_of(edges, messages(timestamp_pb2.Timestamp.DESCRIPTOR, depth + 1))


def value_strategy(field: descriptor.FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.message_type is None:
        return scalar(field)
    if field.message_type.full_name == "google.protobuf.Timestamp":
        return timestamps(depth)
    return messages(field.message_type, depth + 1)


def _put(target: Any, key: Any, value_field: descriptor.FieldDescriptor, value: Any) -> None:
    if value_field.message_type is not None:
        target[key].CopyFrom(value)
    else:
        target[key] = value


# The usage hot path: events aimed at the demo customer, with hostile fields mixed in.
DEMO_DIMENSIONS = {
    "action": ["summary", "enrichment", "other"],
    "model": ["gpt-4", "gpt-4o-mini", ""],
    "complexity": ["simple", "complex"],
    "data_source": ["crm", "web"],
}


@st.composite
def usage_events(draw: st.DrawFn) -> usage_pb2.UsageEvent:
    dimensions = {key: draw(st.sampled_from(values)) for key, values in DEMO_DIMENSIONS.items() if draw(st.booleans())}
    if draw(st.integers(0, 4)) == 0:
        dimensions.update(draw(st.dictionaries(strings, strings, max_size=3)))
    if draw(st.integers(0, 9)) == 0:
        dimensions.update({f"d{i}": "v" for i in range(draw(st.integers(60, 300)))})
    values = draw(st.dictionaries(st.sampled_from(["n", "tokens", ""]) | strings, doubles, max_size=3))
    return usage_pb2.UsageEvent(
        transaction_id=draw(st.one_of(st.uuids().map(str), strings)),
        customer_id=draw(st.sampled_from([ACME, ACME, ACME, "nobody", ""]) | strings),
        event_type=draw(st.sampled_from(["ai_action", "ai_action", "other", ""]) | strings),
        timestamp_ms=draw(
            st.one_of(
                st.integers(NOW_MS - 3_600_000, NOW_MS),  # within the demo contract
                st.sampled_from([0, -1, INT64[0], INT64[1], NOW_MS + 10 * 60_000]),
                integers(INT64),
            )
        ),
        dimensions=dimensions,
        values=values,
        reservation_id=draw(st.sampled_from(["", "", "", "r-1"]) | strings),
    )


usage_batches = st.builds(
    lambda batch_id, events: usage_pb2.UsageBatch(batch_id=batch_id, events=events),
    strings,
    st.lists(usage_events(), max_size=12),
)


# ---------------------------------------------------------------------------------------------
# The server, calls and the state fingerprint


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """ONE demo server for the whole module; its log tail is printed at teardown."""
    server = ServerProcess(tmp_path_factory.mktemp("fuzz") / "data", demo=True)
    server.start()
    try:
        yield server
    finally:
        alive = server.running
        server.stop()
        print(f"--- fuzz server (alive at teardown: {alive}); log tail ---\n{server.log_tail(30)}")
        print(f"fuzz inputs tried per RPC: {dict(TRIED)}; total {sum(TRIED.values())}")


@pytest.fixture(scope="module")
def channel(fuzz_server: ServerProcess) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(fuzz_server.target, options=CHANNEL_OPTIONS) as chan:
        yield chan


TRIED: collections.Counter[str] = collections.Counter()


def _path(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def _deadline_s(method: descriptor.MethodDescriptor) -> float:
    return WATCH_DEADLINE_S if method.name in WATCHES else DEADLINE_S


def invoke(chan: grpc.Channel, method: descriptor.MethodDescriptor, requests: Sequence[message.Message]) -> Any:
    """Calls the method with these requests (one unless the client streams); returns (code, responses)."""
    response_class = message_factory.GetMessageClass(method.output_type)
    kwargs = {"request_serializer": lambda m: m.SerializeToString(), "response_deserializer": response_class.FromString}
    path = _path(method)
    responses: list[message.Message] = []
    deadline_s = _deadline_s(method)
    try:
        if method.client_streaming and method.server_streaming:
            # Appended one by one: the answers before a stream's error are kept (list() would drop them).
            for response in chan.stream_stream(path, **kwargs)(iter(requests), timeout=deadline_s):
                responses.append(response)
        elif method.client_streaming:
            responses = [chan.stream_unary(path, **kwargs)(iter(requests), timeout=deadline_s)]
        elif method.server_streaming:
            call = chan.unary_stream(path, **kwargs)(requests[0], timeout=deadline_s)
            for response in call:
                responses.append(response)
                if len(responses) >= 3:  # a watch that answers is alive; enough
                    call.cancel()
                    break
        else:
            responses = [chan.unary_unary(path, **kwargs)(requests[0], timeout=deadline_s)]
    except grpc.RpcError as exc:
        return exc.code(), responses, exc.details()
    return grpc.StatusCode.OK, responses, ""


def fingerprint(chan: grpc.Channel) -> dict[str, Any]:
    """What the server exposes, compactly: equal fingerprints mean no visible state changed."""
    get_audit = chan.unary_unary(
        "/tariff.v1.PricingService/GetAuditLog",
        request_serializer=pricing_pb2.GetAuditLogRequest.SerializeToString,
        response_deserializer=pricing_pb2.GetAuditLogResponse.FromString,
    )
    audit: list[tuple[int, str, str]] = []
    after = 0
    while True:
        page = get_audit(pricing_pb2.GetAuditLogRequest(after_seq=after, page_size=1000), timeout=DEADLINE_S)
        if not page.entries:
            break
        audit.extend((e.seq, e.action, e.target) for e in page.entries)
        after = page.entries[-1].seq
    customers = chan.unary_unary(
        "/tariff.v1.ContractService/ListCustomers",
        request_serializer=contracts_pb2.ListCustomersRequest.SerializeToString,
        response_deserializer=contracts_pb2.ListCustomersResponse.FromString,
    )(contracts_pb2.ListCustomersRequest(page_size=1000), timeout=DEADLINE_S)
    products = chan.unary_unary(
        "/tariff.v1.PricingService/ListProducts",
        request_serializer=pricing_pb2.ListProductsRequest.SerializeToString,
        response_deserializer=pricing_pb2.ListProductsResponse.FromString,
    )(pricing_pb2.ListProductsRequest(), timeout=DEADLINE_S)
    get_balance = chan.unary_unary(
        "/tariff.v1.BalanceService/GetBalance",
        request_serializer=balance_pb2.GetBalanceRequest.SerializeToString,
        response_deserializer=balance_pb2.Balance.FromString,
    )
    balances = {}
    for customer in list(customers.customers)[:5]:
        balance = get_balance(balance_pb2.GetBalanceRequest(customer_id=customer.id), timeout=DEADLINE_S)
        balances[customer.id] = balance.SerializeToString(deterministic=True)
    seq = get_balance(balance_pb2.GetBalanceRequest(customer_id=ACME), timeout=DEADLINE_S).as_of_seq
    return {
        "audit": audit,
        "customers": [c.SerializeToString(deterministic=True) for c in customers.customers],
        "products": [p.SerializeToString(deterministic=True) for p in products.products],
        "balances": balances,
        "journal_seq": seq,
    }


class _Where:
    """An assertion message computed on demand."""

    def __init__(self, render: Callable[[], str]) -> None:
        self.render = render

    def __str__(self) -> str:
        return self.render()

    __repr__ = __str__


def check_call(
    server: ServerProcess,
    chan: grpc.Channel,
    method: descriptor.MethodDescriptor,
    requests: Sequence[message.Message],
) -> None:
    before = fingerprint(chan)
    started = time.monotonic()
    code, responses, details = invoke(chan, method, requests)
    elapsed_s = time.monotonic() - started
    TRIED[method.name] += 1
    # Built only when an assertion fails: printing a message with huge fields is slow.
    where = _Where(lambda: f"{_path(method)} -> {code.name} {details!r}; request {str(requests)[:500]}")
    assert server.running, f"the server died; {where}\n{server.log_tail(30)}"
    assert code not in FORBIDDEN, where
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        assert method.name in WATCHES, f"the call hung until its deadline ({elapsed_s:.1f} s); {where}"
    after = fingerprint(chan)
    acks = [r for r in responses if isinstance(r, usage_pb2.IngestAck)]
    if code != grpc.StatusCode.OK and not acks:
        assert after == before, f"a refused call changed state; {where}"
    elif acks and all(ack.accepted == 0 for ack in acks):
        # Batches acknowledged before a stream failed, or a whole call: nothing accepted, nothing moved, the
        # journal seq included (a batch that accepts nothing takes no journal record).
        assert after == before, f"batches that accepted nothing changed state; {where}"
    if method.output_type.full_name == "tariff.v1.IngestAck":
        # One ack per batch, in order: every event accepted, a duplicate or rejected once, with its own index.
        assert len(responses) <= len(requests), where
        for batch, ack in zip(requests, responses, strict=False):
            assert isinstance(batch, usage_pb2.UsageBatch) and isinstance(ack, usage_pb2.IngestAck)
            assert ack.batch_id == batch.batch_id, where
            assert ack.accepted + ack.duplicates + len(ack.rejected) == len(batch.events), where
            assert sorted(r.index for r in ack.rejected) == sorted({r.index for r in ack.rejected}), where
            assert all(r.index < len(batch.events) for r in ack.rejected), where


# ---------------------------------------------------------------------------------------------
# The tests


@pytest.mark.parametrize("method", METHODS, ids=_path)
def test_every_rpc_survives_random_requests(
    fuzz_server: ServerProcess, channel: grpc.Channel, method: descriptor.MethodDescriptor
) -> None:
    requests = st.lists(messages(method.input_type), min_size=1, max_size=3 if method.client_streaming else 1)

    @FUZZ_SETTINGS
    @given(requests)
    def run(batch: list[message.Message]) -> None:
        check_call(fuzz_server, channel, method, batch)

    run()


def _method(service: str, name: str) -> descriptor.MethodDescriptor:
    return next(m for m in METHODS if m.containing_service.name == service and m.name == name)


@pytest.mark.parametrize("name", ["IngestUsageBatch", "IngestUsage"])
def test_usage_batches_aimed_at_the_demo_customer(fuzz_server: ServerProcess, channel: grpc.Channel, name: str) -> None:
    method = _method("UsageService", name)
    requests = st.lists(usage_batches, min_size=1, max_size=1 if name == "IngestUsageBatch" else 3)

    @settings(FUZZ_SETTINGS, max_examples=USAGE_EXAMPLES)
    @given(requests)
    def run(batches: list[usage_pb2.UsageBatch]) -> None:
        check_call(fuzz_server, channel, method, batches)

    run()


def test_authorize_stream_with_hostile_requests(fuzz_server: ServerProcess, channel: grpc.Channel) -> None:
    method = _method("BalanceService", "AuthorizeStream")
    requests = st.lists(
        st.builds(
            lambda event, request_id: balance_pb2.AuthorizeRequest(
                request_id=request_id,
                customer_id=event.customer_id,
                event_type=event.event_type,
                dimensions=event.dimensions,
                values=event.values,
            ),
            usage_events(),
            strings,
        ),
        min_size=1,
        max_size=5,
    )

    @settings(FUZZ_SETTINGS, max_examples=USAGE_EXAMPLES)
    @given(requests)
    def run(batch: list[balance_pb2.AuthorizeRequest]) -> None:
        check_call(fuzz_server, channel, method, batch)

    run()


# Undecodable requests: bytes a protobuf string must never hold, and wire garbage.
PLACEHOLDER = "Q" * 8
INVALID_UTF8 = [b"\xff\xfe\xfd\xfc\xfb\xfa\xf9\xf8", b"\xc3\x28\xa0\xa1\xe2\x28\xa1\x00", b"\xed\xa0\x80\xed\xbf\xbfQQ"]


def _string_paths(desc: descriptor.Descriptor, depth: int = 0) -> Iterator[list[descriptor.FieldDescriptor]]:
    """Paths to every singular string field (through singular and repeated sub-messages)."""
    for field in desc.fields:
        if field.type == field.TYPE_STRING and not field.is_repeated:
            yield [field]
        elif field.message_type is not None and not is_map(field) and depth < 2:
            for rest in _string_paths(field.message_type, depth + 1):
                yield [field, *rest]


def _with_placeholder(desc: descriptor.Descriptor, path: list[descriptor.FieldDescriptor]) -> bytes:
    built = message_factory.GetMessageClass(desc)()
    target: Any = built
    for field in path[:-1]:
        target = getattr(target, field.name).add() if field.is_repeated else getattr(target, field.name)
    setattr(target, path[-1].name, PLACEHOLDER)
    blob: bytes = built.SerializeToString()
    assert blob.count(PLACEHOLDER.encode()) == 1
    return blob


def raw_call(chan: grpc.Channel, method: descriptor.MethodDescriptor, body: bytes) -> tuple[grpc.StatusCode, str]:
    path = _path(method)
    deadline_s = _deadline_s(method)
    try:
        if method.client_streaming and method.server_streaming:
            list(chan.stream_stream(path)(iter([body]), timeout=deadline_s))
        elif method.client_streaming:
            chan.stream_unary(path)(iter([body]), timeout=deadline_s)
        elif method.server_streaming:
            for _ in chan.unary_stream(path)(body, timeout=deadline_s):
                break
        else:
            chan.unary_unary(path)(body, timeout=deadline_s)
    except grpc.RpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


@pytest.mark.parametrize("method", METHODS, ids=_path)
def test_invalid_utf8_in_any_string_field_is_invalid_argument_and_changes_nothing(
    fuzz_server: ServerProcess, channel: grpc.Channel, method: descriptor.MethodDescriptor
) -> None:
    before = fingerprint(channel)
    paths = list(_string_paths(method.input_type))
    for path in paths:
        blob = _with_placeholder(method.input_type, path)
        for bad in INVALID_UTF8:
            code, details = raw_call(channel, method, blob.replace(PLACEHOLDER.encode(), bad))
            TRIED[f"{method.name} (invalid UTF-8)"] += 1
            where = f"{_path(method)} with invalid UTF-8 in {'.'.join(f.name for f in path)}: {code.name} {details!r}"
            assert code == grpc.StatusCode.INVALID_ARGUMENT, where
    assert fuzz_server.running
    assert fingerprint(channel) == before


@pytest.mark.parametrize("method", METHODS, ids=_path)
def test_wire_garbage_never_answers_unknown_and_a_refusal_changes_nothing(
    fuzz_server: ServerProcess, channel: grpc.Channel, method: descriptor.MethodDescriptor
) -> None:
    @FUZZ_SETTINGS
    @given(st.binary(min_size=1, max_size=200))
    def run(body: bytes) -> None:
        before = fingerprint(channel)
        code, details = raw_call(channel, method, body)
        TRIED[f"{method.name} (raw bytes)"] += 1
        where = f"{_path(method)} with raw bytes {body[:40]!r}: {code.name} {details!r}"
        assert fuzz_server.running, where
        assert code not in FORBIDDEN, where
        if code == grpc.StatusCode.DEADLINE_EXCEEDED:
            assert method.name in WATCHES, where
        # Random bytes may decode as a valid request (then it may change state, as a client's request may).
        if code != grpc.StatusCode.OK:
            assert fingerprint(channel) == before, where

    run()


def test_the_server_is_alive_and_credits_are_conserved_after_the_fuzzing(
    fuzz_server: ServerProcess, channel: grpc.Channel
) -> None:
    assert fuzz_server.running
    acme = balance_pb2.Balance.FromString(fingerprint(channel)["balances"][ACME])
    assert acme.grants
    for grant in acme.grants:
        assert Decimal(grant.drawn) + Decimal(grant.remaining) + Decimal(grant.expired) == Decimal(grant.amount)
        assert Decimal(grant.remaining) >= 0
