"""An AuthorizeBatch that does not decode names what does not (balance.proto AuthorizeBatches; README "What the
server does today", Balance): INVALID_ARGUMENT whose BadRequest violation is the request and its field
(`requests[2].customer_id`, `requests[1].dimensions` for a map entry), or `requests[2]` for a request cut off, or
`request` when the bad bytes are the message's own framing; the message says which request. The message is refused
whole, the stream ends: none of its holds is placed.

Catalogue: product `s` (event `s`, SUM of `n`) at 1 credit a unit on card `card`; customer `acme` (contract from 5
hours ago, a PREPAID grant of 100 credits). The messages are written by hand: no protobuf library writes a string
that is not UTF-8 or a field of the wrong wire type.
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
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, serving, this_hour_ms, unit, varint
from tests.serverproc import ServerProcess

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
CUSTOMER = "acme"
BATCHES = "/tariff.v1.BalanceService/AuthorizeBatches"
NOTHING_HELD = ("0", "100")  # (credits held, available): nothing held of the 100 credits granted
# AuthorizeRequest's fields by number (balance.proto).
REQUEST_FIELDS = [
    "request_id",
    "customer_id",
    "event_type",
    "dimensions",
    "values",
    "reserve",
    "reservation_ttl",
    "reservation_id",
]


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="s", event_type="s", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("s", "1")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )
    open_contract(client, CUSTOMER, "acme-c", this_hour_ms() - 5 * HOUR_MS, rate_card_id="card")
    grant = contracts_pb2.Grant(
        id="acme-g", contract_id="acme-c", kind=contracts_pb2.PREPAID, amount="100", paid_amount="100"
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-abdecode")
    yield from serving(ServerProcess(root / "data"), catalogue)


def _field(number: int, payload: bytes) -> bytes:
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def hold(
    request_id: bytes, customer_id: bytes = CUSTOMER.encode(), model: bytes = b"gpt-4", tail: bytes = b""
) -> bytes:
    """An AuthorizeRequest's bytes: a hold of n = 2 (2 credits) for event `s`, dimension model, then `tail`."""
    value = _field(1, b"n") + bytes([0x11]) + struct.pack("<d", 2.0)
    body = _field(1, request_id) + _field(2, customer_id) + _field(3, b"s")
    return body + _field(4, _field(1, b"model") + _field(2, model)) + _field(5, value) + bytes([0x30, 1]) + tail


def message(*requests: bytes) -> bytes:
    return b"".join(_field(1, r) for r in requests)


def refused(server: ServerProcess, data: bytes) -> tuple[grpc.StatusCode, str, str]:
    """(status, the BadRequest violation's field, its description) of the AuthorizeBatches stream sent `data` as
    its one message, which must end it refused, no answer sent."""
    with grpc.insecure_channel(server.target) as channel:
        stream = channel.stream_stream(BATCHES, request_serializer=lambda b: b, response_deserializer=lambda b: b)
        answers: list[bytes] = []
        with pytest.raises(grpc.RpcError) as ended:
            answers.extend(stream(iter([data]), timeout=10))
    assert answers == []
    status = rpc_status.from_call(ended.value)
    assert status is not None, ended.value.details()
    (bad,) = [d for d in status.details if d.Is(error_details_pb2.BadRequest.DESCRIPTOR)]
    request = error_details_pb2.BadRequest()
    bad.Unpack(request)
    (violation,) = request.field_violations
    return ended.value.code(), violation.field, violation.description


def balance_of(server: ServerProcess) -> tuple[str, str]:
    with server.client() as client:
        balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=CUSTOMER))
    return str(balance.credits_held), str(balance.credits_available)


def test_a_customer_id_that_is_not_utf8_in_the_third_request_names_requests_2_customer_id(
    server: ServerProcess,
) -> None:
    before = balance_of(server)
    data = message(hold(b"c0"), hold(b"c1"), hold(b"c2", b"acme\xff"), hold(b"c3"))
    code, field, why = refused(server, data)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "requests[2].customer_id")
    assert why.startswith("not an AuthorizeBatch: the request at index 2 does not decode"), why
    assert "not UTF-8" in why, why
    # Refused whole: the three sound holds before and after it were not placed.
    assert balance_of(server) == before == NOTHING_HELD


def test_a_request_id_that_is_not_utf8_names_requests_1_request_id(server: ServerProcess) -> None:
    code, field, why = refused(server, message(hold(b"i0"), hold(b"i1\xc3"), hold(b"i2")))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "requests[1].request_id")
    assert why.startswith("not an AuthorizeBatch: the request at index 1 does not decode"), why
    assert balance_of(server) == NOTHING_HELD


def test_a_dimension_value_that_is_not_utf8_names_the_requests_dimensions(server: ServerProcess) -> None:
    data = message(hold(b"d0"), hold(b"d1"), hold(b"d2", model=b"caf\xe9"))  # Latin-1 "café"
    code, field, why = refused(server, data)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "requests[2].dimensions")
    assert why.startswith("not an AuthorizeBatch: the request at index 2 does not decode"), why
    assert balance_of(server) == NOTHING_HELD


def test_a_value_entry_whose_value_is_not_a_double_names_the_requests_values(server: ServerProcess) -> None:
    entry = _field(1, b"n") + _field(2, b"x")  # the value as a string, not a 64-bit double
    code, field, _why = refused(server, message(hold(b"v0"), hold(b"v1", tail=_field(5, entry))))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "requests[1].values")
    assert balance_of(server) == NOTHING_HELD


@pytest.mark.parametrize("number", range(1, 9), ids=REQUEST_FIELDS)
def test_each_field_of_a_request_sent_with_a_wire_type_it_never_has_is_named(
    server: ServerProcess, number: int
) -> None:
    bad = varint(number << 3 | 5) + bytes(4)  # the field as a 32-bit fixed value
    code, field, why = refused(server, message(hold(b"w0"), hold(b"w1"), hold(b"w2", tail=bad)))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, f"requests[2].{REQUEST_FIELDS[number - 1]}")
    assert why.startswith("not an AuthorizeBatch: the request at index 2 does not decode"), why
    assert balance_of(server) == NOTHING_HELD


def test_a_reservation_ttl_whose_seconds_do_not_decode_names_the_requests_reservation_ttl(
    server: ServerProcess,
) -> None:
    ttl = _field(7, _field(1, b"30"))  # Duration.seconds as a string, not a varint
    code, field, _why = refused(server, message(hold(b"t0"), hold(b"t1", tail=ttl)))
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "requests[1].reservation_ttl")
    assert balance_of(server) == NOTHING_HELD


def test_a_request_cut_off_by_the_end_of_the_bytes_names_that_request(server: ServerProcess) -> None:
    # The third request says it is 80 bytes long, and the message ends 4 bytes into it.
    data = message(hold(b"e0"), hold(b"e1")) + bytes([0x0A, 80]) + b"\x0a\x02e2"
    code, field, why = refused(server, data)
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "requests[2]")
    assert why.startswith("not an AuthorizeBatch: the request at index 2 does not decode"), why
    assert balance_of(server) == NOTHING_HELD


def test_bytes_cut_off_in_a_key_after_the_requests_name_the_request(server: ServerProcess) -> None:
    # Two sound holds, then the first byte of a key whose varint never ends: the message's own framing.
    code, field, why = refused(server, message(hold(b"k0"), hold(b"k1")) + b"\xff")
    assert (code, field) == (grpc.StatusCode.INVALID_ARGUMENT, "request")
    assert why.startswith("could not be decoded"), why
    assert balance_of(server) == NOTHING_HELD
