"""AuthorizeStream answers a request it cannot decide in-band, as a reason, and goes on (docs/architecture.md §5:
"The unary call answers an unknown customer with NOT_FOUND and a malformed request with INVALID_ARGUMENT;
AuthorizeStream and AuthorizeBatches answer those in-band"): also a request with reserve=true, over a real
server process."""

from __future__ import annotations

from decimal import Decimal

import pytest
from google.protobuf import duration_pb2
from tariff import AlreadyExists
from tariff.v1 import balance_pb2

from tests.serverproc import ServerProcess

ACME = "acme"
EVENT_TYPE = "ai_action"
SUMMARY = {"action": "summary", "model": "gpt-4", "complexity": "complex", "data_source": "crm"}  # 5 credits


def _hold(request_id: str, **fields: object) -> balance_pb2.AuthorizeRequest:
    request = balance_pb2.AuthorizeRequest(
        request_id=request_id, customer_id=ACME, event_type=EVENT_TYPE, dimensions=SUMMARY, reserve=True
    )
    for name, value in fields.items():
        if name == "reservation_ttl":
            request.reservation_ttl.CopyFrom(value)  # type: ignore[arg-type]
        elif name == "dimensions":
            request.ClearField("dimensions")
            request.dimensions.update(value)  # type: ignore[call-overload]
        else:
            setattr(request, name, value)
    return request


def test_a_hold_request_that_cannot_hold_is_answered_in_band_and_the_stream_goes_on(
    demo_server: ServerProcess,
) -> None:
    requests = [
        _hold("first", reservation_id="res-1"),
        _hold("nobody", customer_id="nobody", reservation_id="res-2"),
        _hold("no-type", event_type="", reservation_id="res-3"),
        _hold("too-long", reservation_id="res-4", reservation_ttl=duration_pb2.Duration(seconds=7200)),
        _hold("last", reservation_id="res-5"),
    ]
    with demo_server.client() as client:
        answers = list(client.balance.AuthorizeStream(iter(requests)))
        got = {a.request_id: (a.allowed, a.reason) for a in answers}
        assert got == {
            "first": (True, "OK"),
            "nobody": (False, "UNKNOWN_CUSTOMER"),
            "no-type": (False, "INVALID_REQUEST"),
            "too-long": (False, "INVALID_REQUEST"),
            "last": (True, "OK"),
        }
        by_id = {a.request_id: a for a in answers}
        assert "event_type" in by_id["no-type"].message
        assert "reservation_ttl" in by_id["too-long"].message
        # The two holds placed are held; the refused requests held nothing.
        assert client.get_balance(ACME).credits_available == "49990"


def test_a_reservation_id_taken_by_another_request_ends_the_stream_with_already_exists(
    demo_server: ServerProcess,
) -> None:
    """balance.proto (AuthorizeResponse.reason): RESERVATION_CONFLICT is AuthorizeBatches' in-band answer; Authorize
    and AuthorizeStream end the call with ALREADY_EXISTS. The answers before it stand, and the conflict holds
    nothing."""
    requests = [
        _hold("first", reservation_id="res-c1"),
        _hold("conflict", reservation_id="res-c1", dimensions={"action": "enrichment", "model": "gpt-4"}),
        _hold("never", reservation_id="res-c2"),
    ]
    with demo_server.client() as client:
        before = Decimal(client.get_balance(ACME).credits_available)
        answers: list[balance_pb2.AuthorizeResponse] = []
        with pytest.raises(AlreadyExists) as ended:
            for answer in client.balance.AuthorizeStream(iter(requests)):
                answers.append(answer)
        assert "res-c1" in ended.value.details
        assert [(a.request_id, a.allowed, a.reason) for a in answers] == [("first", True, "OK")]
        assert Decimal(client.get_balance(ACME).credits_available) == before - 5  # only "first" is held
