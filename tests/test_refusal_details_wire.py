"""A refusal always reaches the client with its own status code, over a real server (server/errors.py).

A refusal's message travels in the `grpc-message` trailer and its rich details (a google.rpc.Status holding the
message again and, for INVALID_ARGUMENT, a google.rpc.BadRequest with one field violation per problem) in the
`grpc-status-details-bin` trailer. The server put every violation there, so a PublishVersion refused with 48
findings sent about 21 KB of trailers, past gRPC's 16 KB limit: the client got RESOURCE_EXHAUSTED "received
metadata size exceeds hard limit" instead of INVALID_ARGUMENT, and none of the findings. A single long value
quoted in a message did the same. The server now bounds both, for every call: the message to
MESSAGE_BYTES_MAX bytes, the details to DETAILS_BYTES_MAX, keeping the first violations and a last one saying
how many more there are (ValidateVersion still lists every finding of a version in its response).

CreateAlert answered NOT_FOUND for a customer_id that is not an id at all; it is INVALID_ARGUMENT naming
`customer_id` now, as for every id, and a well-formed unknown one stays NOT_FOUND. A threshold rule without a
threshold said the threshold "must be a decimal string of 1 to 64 characters"; it says it is required.
"""

from __future__ import annotations

import base64
import urllib.parse
from collections.abc import Iterator

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_status import rpc_status
from tariff.v1 import alerts_pb2, alerts_pb2_grpc, contracts_pb2, contracts_pb2_grpc, pricing_pb2, pricing_pb2_grpc

from tests.serverproc import ServerFactory, ServerProcess

CARD = "ai-credits"  # the demo's rate card (server/demo.py), version 1 published
PRODUCT = "ai_action"  # the demo's product, priced by its "action" dimension
BAD_RATES = 48
# The bounds README documents ("What the server does today", Refusals): the message's UTF-8 bytes, and the
# serialized google.rpc.Status (the message again, and the details).
MESSAGE_BYTES_MAX = 512
DETAILS_BYTES_MAX = 4096
# Java's default limit on received metadata, and C-core's soft one (above it some calls fail, all above 16 KiB).
METADATA_LIMIT = 8 * 1024


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(demo=True)


@pytest.fixture
def channel(server: ServerProcess) -> Iterator[grpc.Channel]:
    """A channel with gRPC's default options (no larger metadata limit than any client has)."""
    with grpc.insecure_channel(server.target) as opened:
        yield opened


def refused(error: grpc.RpcError) -> status_pb2.Status:
    """The rich status of a refusal, after checking that its trailers as sent stay under METADATA_LIMIT."""
    trailers = error.trailing_metadata() or ()
    sent = 0
    for key, value in trailers:
        raw = value if isinstance(value, bytes) else value.encode()
        sent += len(key) + (len(base64.b64encode(raw)) if key.endswith("-bin") else len(raw)) + 32
    message = error.details() or ""
    sent += len("grpc-message") + len(urllib.parse.quote(message, safe=" ")) + 32 + len("grpc-status") + 2 + 32
    assert sent < METADATA_LIMIT, sent
    assert len(message.encode()) <= MESSAGE_BYTES_MAX, message
    status = rpc_status.from_call(error)
    assert status is not None, "no rich status"
    assert status.ByteSize() <= DETAILS_BYTES_MAX, status.ByteSize()
    assert status.message == message
    return status


def violations(status: status_pb2.Status) -> list[error_details_pb2.BadRequest.FieldViolation]:
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return list(bad_request.field_violations)
    raise AssertionError(f"no BadRequest in {status}")


def bad_draft(pricing: pricing_pb2_grpc.PricingServiceStub) -> int:
    """A draft of the demo card with BAD_RATES rates, each priced by a parameter the version does not have."""
    rates = [
        pricing_pb2.Rate(
            product_id=PRODUCT,
            match={"action": f"action_{i:03}"},
            unit=pricing_pb2.UnitPrice(price=f"undefined_parameter_number_{i:03} * 2"),
        )
        for i in range(BAD_RATES)
    ]
    request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=0, upsert_rates=rates)
    draft: pricing_pb2.RateCardVersion = pricing.CreateDraftVersion(request, timeout=10)
    return draft.version


def test_a_publish_refused_with_many_findings_is_invalid_argument_with_the_first_ones(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    pricing = pricing_pb2_grpc.PricingServiceStub(channel)
    number = bad_draft(pricing)
    report = pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=number), timeout=10)
    paths = [f"rates[{i}].unit.price" for i in range(BAD_RATES)]
    assert not report.ok
    assert [f.path for f in report.findings] == paths  # the response body lists them all
    with pytest.raises(grpc.RpcError) as publish:
        pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=number), timeout=10)
    assert publish.value.code() == grpc.StatusCode.INVALID_ARGUMENT, publish.value
    status = refused(publish.value)
    listed = violations(status)
    *first, more = listed
    assert len(first) >= 10, len(first)  # the bound holds a useful number of findings
    assert [v.field for v in first] == [f"version.{path}" for path in paths[: len(first)]]
    assert [v.description for v in first] == [f.message for f in report.findings[: len(first)]]
    assert more.field == ""
    assert f"and {BAD_RATES - len(first)} more" in more.description, more.description
    assert "ValidateVersion" in more.description, more.description
    assert status.message.startswith(f"version.{paths[0]}: {report.findings[0].message}"), status.message
    assert f"{BAD_RATES} violations in all" in status.message, status.message
    versions = pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD), timeout=10).versions
    drafts = [v.version for v in versions if v.state == pricing_pb2.DRAFT]
    assert drafts == [number]  # nothing published: the draft this server made is still one
    assert server.running


def test_a_refusal_quoting_a_long_value_keeps_its_code(server: ServerProcess, channel: grpc.Channel) -> None:
    """Any call: a message or a violation quoting a 20,000-character value is cut, never RESOURCE_EXHAUSTED."""
    contracts = contracts_pb2_grpc.ContractServiceStub(channel)
    pricing = pricing_pb2_grpc.PricingServiceStub(channel)
    long_id = "x" * 20_000
    with pytest.raises(grpc.RpcError) as bad_id:
        contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=long_id + "!"), timeout=10)
    assert bad_id.value.code() == grpc.StatusCode.INVALID_ARGUMENT, bad_id.value
    (violation,) = violations(refused(bad_id.value))
    assert violation.field == "id"
    assert violation.description.startswith("'xxx"), violation.description
    with pytest.raises(grpc.RpcError) as too_long:  # past 128 characters: not an id, so no lookup
        pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id="r" * 20_000), timeout=10)
    assert too_long.value.code() == grpc.StatusCode.INVALID_ARGUMENT, too_long.value
    (violation,) = violations(refused(too_long.value))
    assert (violation.field, violation.description[:4]) == ("id", "'rrr"), violation
    with pytest.raises(grpc.RpcError) as no_service:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service="s" * 20_000), timeout=10)
    assert no_service.value.code() == grpc.StatusCode.NOT_FOUND, no_service.value
    assert no_service.value.details().startswith("unknown service 'sss"), no_service.value.details()
    assert len(no_service.value.details().encode()) <= MESSAGE_BYTES_MAX
    with pytest.raises(grpc.RpcError) as missing:  # a short refusal is sent whole, as before
        contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=""), timeout=10)
    status = refused(missing.value)
    assert [(v.field, v.description) for v in violations(status)] == [("id", status.message.removeprefix("id: "))]
    assert server.running


def test_create_alert_tells_a_malformed_customer_id_from_an_unknown_one(
    server: ServerProcess, channel: grpc.Channel
) -> None:
    alerts = alerts_pb2_grpc.AlertServiceStub(channel)

    def create(customer_id: str, alert_type: alerts_pb2.AlertType, threshold: str) -> grpc.RpcError:
        request = alerts_pb2.CreateAlertRequest(customer_id=customer_id, type=alert_type, threshold=threshold)
        with pytest.raises(grpc.RpcError) as refusal:
            alerts.CreateAlert(request, timeout=10)
        return refusal.value

    malformed = create("not an id!", alerts_pb2.LOW_BALANCE, "10")
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT, malformed
    assert [v.field for v in violations(refused(malformed))] == ["customer_id"]
    unknown = create("nobody", alerts_pb2.LOW_BALANCE, "10")
    assert unknown.code() == grpc.StatusCode.NOT_FOUND, unknown
    assert unknown.details() == "customer 'nobody' does not exist"
    for kind in (alerts_pb2.SPEND_THRESHOLD, alerts_pb2.LOW_BALANCE):
        no_threshold = create("acme", kind, "")
        assert no_threshold.code() == grpc.StatusCode.INVALID_ARGUMENT, no_threshold
        name = alerts_pb2.AlertType.Name(kind)
        described = [(v.field, v.description) for v in violations(refused(no_threshold))]
        assert described == [("threshold", f"is required for {name}")], described
    rules = alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(), timeout=10).rules
    assert list(rules) == []  # nothing was created
    created = alerts.CreateAlert(
        alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.SPEND_THRESHOLD, threshold="5"), timeout=10
    )
    assert created.customer_id == "acme"  # the demo's customer: this server is the one answering
    assert server.running
