"""GetVersion and SimulateVersion name what is wrong with the request itself before what the state lacks, as
PublishVersion and RollbackRateCard do (README, "wrong whatever the state"): a request that is malformed is
INVALID_ARGUMENT naming the field whichever card it names, and NOT_FOUND is for a well-formed request the state does
not hold. Before, an unknown card answered NOT_FOUND first, so fixing the card id only revealed the next error.

One server with no catalogue: every card named here is unknown."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import TariffClient
from tariff.v1 import pricing_pb2

from tests.audit_fixtures import refusal, serving
from tests.serverproc import ServerProcess

HOUR_S = 3_600


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-checkorder")
    yield from serving(ServerProcess(root / "data"), lambda client: None)


def simulate(client: TariffClient, customer_ids: tuple[str, ...] = (), period_end: Timestamp | None = None) -> object:
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id="nocard", version=1, period_start=Timestamp(seconds=0), period_end=Timestamp(seconds=HOUR_S)
    )
    request.customer_ids.extend(customer_ids)
    if period_end is not None:
        request.period_end.CopyFrom(period_end)
    return client.pricing.SimulateVersion(request)


def test_get_version_of_an_unknown_card_names_a_missing_version_first(server: ServerProcess) -> None:
    with server.client() as client:
        code, details = refusal(lambda: client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="nocard")))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "version" in details, details
        out_of_range = Timestamp(seconds=253_402_300_800)  # 10000-01-01: past what a Timestamp may hold
        by_time = pricing_pb2.GetVersionRequest(rate_card_id="nocard", at=out_of_range)
        code, details = refusal(lambda: client.pricing.GetVersion(by_time))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "at" in details, details
        code, details = refusal(
            lambda: client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="nocard", version=1))
        )
        assert code == grpc.StatusCode.NOT_FOUND and "nocard" in details, details


def test_simulate_version_of_an_unknown_card_names_a_malformed_field_first(server: ServerProcess) -> None:
    with server.client() as client:
        code, details = refusal(lambda: simulate(client, customer_ids=("bad id",)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "customer_ids[0]" in details, details
        code, details = refusal(lambda: simulate(client, period_end=Timestamp(seconds=253_402_300_800)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "period_end" in details, details
        code, details = refusal(lambda: simulate(client, period_end=Timestamp(seconds=0)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "period_end" in details, details
        code, details = refusal(lambda: simulate(client))
        assert code == grpc.StatusCode.NOT_FOUND and "nocard" in details, details
