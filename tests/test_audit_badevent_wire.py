"""A UsageBatch that does not decode names what does not (README "What the server does today", Usage; usage.proto
IngestUsage): INVALID_ARGUMENT whose BadRequest violation is the event and its field (`events[3].customer_id`,
`events[1].dimensions` for a map entry), or `batch_id`, or `request` when the bad bytes are the batch's own framing;
the message says which event. The batch is refused whole: nothing of it is applied.

Catalogue: product `tok` (event `call`, SUM of `n`) at 1 a unit on card `card`; customer `acme` (contract from 5
hours ago). The batches are written by hand: no protobuf library writes a string that is not UTF-8.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tariff import TariffClient
from tariff.v1 import pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, charges, open_contract, serving, this_hour_ms, unit, varint
from tests.serverproc import ServerProcess

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
CUSTOMER = "acme"
p = pricing_pb2


def catalogue(client: TariffClient) -> None:
    product = p.Product(id="tok", event_type="call", aggregation=p.SUM, value_key="n")
    client.pricing.CreateProduct(p.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("tok", "1")]))
    client.pricing.PublishVersion(
        p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )
    open_contract(client, CUSTOMER, "acme-c", this_hour_ms() - 5 * HOUR_MS, rate_card_id="card")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-badevent")
    yield from serving(ServerProcess(root / "data"), catalogue)


def _field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def raw_event(tx: bytes, customer_id: bytes = CUSTOMER.encode(), model: bytes = b"gpt-4") -> bytes:
    """A UsageEvent's bytes: event `call`, an hour ago, dimension model, n = 1."""
    value = _field(1, b"n") + bytes([0x11]) + struct.pack("<d", 1.0)
    stamp_field = bytes([0x20]) + varint(this_hour_ms() - HOUR_MS)
    body = _field(1, tx) + _field(2, customer_id) + _field(3, b"call") + stamp_field
    return body + _field(5, _field(1, b"model") + _field(2, model)) + _field(6, value)


def batch(batch_id: bytes, *events: bytes) -> bytes:
    return _field(1, batch_id) + b"".join(_field(2, e) for e in events)


def refused(server: ServerProcess, data: bytes) -> tuple[grpc.StatusCode, str, str]:
    """(status, the BadRequest violation's field, its description) of IngestUsageBatch given `data`, refused."""
    with grpc.insecure_channel(server.target) as channel:
        unary = channel.unary_unary("/tariff.v1.UsageService/IngestUsageBatch")
        with pytest.raises(grpc.RpcError) as failed:
            unary(data, timeout=10)
    status = rpc_status.from_call(failed.value)
    assert status is not None, failed.value.details()
    (bad,) = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    request = error_details_pb2.BadRequest()
    bad.Unpack(request)
    (violation,) = request.field_violations
    return failed.value.code(), violation.field, violation.description


def test_a_customer_id_that_is_not_utf8_in_the_fourth_event_names_events_3_customer_id(server: ServerProcess) -> None:
    good = [raw_event(f"c{i}".encode()) for i in range(5)]
    data = batch(b"b-c", *good[:3], raw_event(b"c3", b"acme\xff"), good[4])
    code, field, why = refused(server, data)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "events[3].customer_id")
    assert why.startswith("not a UsageBatch: the event at index 3 does not decode"), why
    assert "not UTF-8" in why, why
    # Refused whole: nothing was applied, so the four good events are new when sent without the bad one.
    assert charges_of(server) == "0"
    with server.client() as client:
        unary = client.usage.IngestUsageBatch
        ack = unary(usage_pb2.UsageBatch.FromString(batch(b"b-c", *good[:3], good[4])))
        assert (ack.accepted, ack.duplicates, len(ack.rejected)) == (4, 0, 0)
    assert charges_of(server) == "4"


def charges_of(server: ServerProcess) -> str:
    with server.client() as client:
        return charges(client, CUSTOMER)


def test_a_dimension_value_that_is_not_utf8_names_the_events_dimensions(server: ServerProcess) -> None:
    data = batch(b"b-d", raw_event(b"d0"), raw_event(b"d1", model=b"caf\xe9"))  # Latin-1 "café"
    code, field, why = refused(server, data)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "events[1].dimensions")
    assert why.startswith("not a UsageBatch: the event at index 1 does not decode"), why


def test_a_batch_id_that_is_not_utf8_names_batch_id(server: ServerProcess) -> None:
    code, field, why = refused(server, batch(b"b-\xff", raw_event(b"i0")))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "batch_id")
    assert why.startswith("not a UsageBatch") and "not UTF-8" in why, why


def test_bytes_cut_off_in_a_key_after_the_events_name_the_request(server: ServerProcess) -> None:
    # Two sound events, then the first byte of a key whose varint never ends: the batch's own framing.
    code, field, why = refused(server, batch(b"b-k", raw_event(b"k0"), raw_event(b"k1")) + b"\xff")
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "request")
    assert why.startswith("not a UsageBatch"), why


def test_an_event_cut_off_by_the_end_of_the_bytes_names_that_event(server: ServerProcess) -> None:
    # The third event says it is 80 bytes long, and the batch ends 3 bytes into it.
    data = batch(b"b-e", raw_event(b"e0"), raw_event(b"e1")) + bytes([0x12, 80]) + b"\x0a\x01x"
    code, field, why = refused(server, data)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "events[2]")
    assert why.startswith("not a UsageBatch: the event at index 2 does not decode"), why


def test_ingest_usage_ends_the_stream_naming_the_event_and_its_field(server: ServerProcess) -> None:
    data = batch(b"b-s", raw_event(b"s0"), raw_event(b"s1\xc3"))
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream(
            "/tariff.v1.UsageService/IngestUsage", response_deserializer=usage_pb2.IngestAck.FromString
        )
        with pytest.raises(grpc.RpcError) as ended:
            list(stream(iter([data]), timeout=10))
    assert ended.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = str(ended.value.details())
    assert details.startswith("events[1].transaction_id: not a UsageBatch: the event at index 1"), details
