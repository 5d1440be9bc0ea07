"""Every instant a request names is held to one range, 1970-01-01 to 8999-12-31 (UTC), over a real server.

A contract starting at 10000-01-01 used to stop the writer (the default contract id formats the start's date,
and Python's datetime ends at year 9999), so the server shut down on one bad request; a start in year 1 was
accepted. Each refusal is INVALID_ARGUMENT naming the field, and changes nothing (the audit log, which records
every admin change, does not grow); the server serves on. A filter's bound is only compared, so any valid
Timestamp is accepted there.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc
import pytest
from google.protobuf import timestamp_pb2
from tariff import TariffClient, TariffError
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory

LATEST_MS = 221_845_392_000_000 - 1  # 8999-12-31T23:59:59.999Z
YEAR_10000_S = 253_402_300_800  # 10000-01-01T00:00:00Z: past Python's datetime
CONTRACT = "acme-2026"  # the demo's contract (server/demo.py)
PRODUCT = "ai_action"


OUT_OF_RANGE = {
    "before 1970": stamp(-1),
    "year 1": timestamp_pb2.Timestamp(seconds=-62_135_596_800),
    "after 8999": stamp(LATEST_MS + 1),
    "year 10000 at midnight": timestamp_pb2.Timestamp(seconds=YEAR_10000_S),
    "int64 seconds": timestamp_pb2.Timestamp(seconds=2**63 - 1),
    "negative nanos": timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=-1),
    "a second of nanos": timestamp_pb2.Timestamp(seconds=1_800_000_000, nanos=1_000_000_000),
}


def audit_entries(client: TariffClient) -> int:
    request = pricing_pb2.GetAuditLogRequest(page_size=1000)
    return len(client.pricing.GetAuditLog(request).entries)


def refused_field(call: Callable[[], object]) -> list[str]:
    try:
        call()
    except TariffError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
        return [v.field for v in error.field_violations]
    raise AssertionError("the call succeeded")


def state_changes(client: TariffClient, at: timestamp_pb2.Timestamp) -> dict[str, Callable[[], object]]:
    """A request per state-changing field that takes an instant, `at` in that field and sound values elsewhere."""
    contracts, pricing = client.contracts, client.pricing
    return {
        "starting_at": lambda: contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id="globex", rate_card_id="ai-credits", starting_at=at)
        ),
        "ending_before": lambda: contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id="globex", rate_card_id="ai-credits", ending_before=at)
        ),
        "override.starting_at": lambda: contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id=CONTRACT,
                override=contracts_pb2.PriceOverride(product_id=PRODUCT, multiplier="0.5", starting_at=at),
            )
        ),
        "override.ending_before": lambda: contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id=CONTRACT,
                override=contracts_pb2.PriceOverride(product_id=PRODUCT, multiplier="0.5", ending_before=at),
            )
        ),
        "grant.starts_at": lambda: contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(
                    contract_id=CONTRACT, kind=contracts_pb2.PROMOTIONAL, amount="5", starts_at=at
                )
            )
        ),
        "grant.expires_at": lambda: contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(
                    contract_id=CONTRACT, kind=contracts_pb2.PROMOTIONAL, amount="5", expires_at=at
                )
            )
        ),
        "effective_from": lambda: pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="ai-credits", version=2, effective_from=at)
        ),
        "cohort.customers_created_after": lambda: pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="ai-credits", version=2, cohort=pricing_pb2.Cohort(customers_created_after=at)
            )
        ),
        "period_start": lambda: client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="acme", period_start=at)
        ),
    }


def reads(client: TariffClient, at: timestamp_pb2.Timestamp) -> dict[str, Callable[[], object]]:
    """A read per field that takes an instant a period is computed from."""
    return {
        "at": lambda: client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="ai-credits", at=at)),
        "period_start": lambda: client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="acme", period_start=at)
        ),
        "period_end": lambda: client.pricing.SimulateVersion(
            pricing_pb2.SimulateVersionRequest(
                rate_card_id="ai-credits", version=1, period_start=stamp(0), period_end=at
            )
        ),
    }


@pytest.mark.parametrize("case", list(OUT_OF_RANGE))
def test_an_instant_out_of_range_is_invalid_argument_naming_its_field_and_changes_nothing(
    server_factory: ServerFactory, case: str
) -> None:
    server = server_factory(demo=True)
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="globex", name="Globex"))
        client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="ai-credits"))
        before = audit_entries(client)
        at = OUT_OF_RANGE[case]
        for field, call in state_changes(client, at).items():
            assert refused_field(call) == [field], field
        for field, call in reads(client, at).items():
            assert refused_field(call) == [field], field
        assert audit_entries(client) == before
        assert server.running
        # The writer still applies commands.
        created = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id="globex", rate_card_id="ai-credits", starting_at=stamp(0))
        )
        assert created.id == "globex-19700101"


def test_the_range_ends_are_accepted(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    with server.client() as client:
        for customer in ("first", "last"):
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer, name=customer))
        first = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id="first", rate_card_id="ai-credits", starting_at=stamp(0))
        )
        assert (first.id, first.starting_at.seconds) == ("first-19700101", 0)
        last_day_ms = LATEST_MS + 1 - 86_400_000  # 8999-12-31T00:00Z
        last = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                customer_id="last",
                rate_card_id="ai-credits",
                starting_at=stamp(last_day_ms),
                ending_before=stamp(LATEST_MS),
            )
        )
        assert last.id == "last-89991231"
        assert (last.ending_before.seconds, last.ending_before.nanos) == (LATEST_MS // 1000, 999_000_000)
        invoice = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id="last", period_start=stamp(LATEST_MS - 1))
        )
        assert invoice.period_start.seconds == last_day_ms // 1000
        # The message names the instant exactly (a float of seconds made it 23:59:59.998993 this late).
        with pytest.raises(TariffError) as uncovered:
            client.invoices.PreviewInvoice(
                invoices_pb2.PreviewInvoiceRequest(customer_id="last", period_start=stamp(LATEST_MS))
            )
        assert uncovered.value.code == grpc.StatusCode.FAILED_PRECONDITION
        assert "is in force at 8999-12-31T23:59:59.999000Z:" in uncovered.value.details


def test_a_filters_bound_may_be_any_valid_timestamp(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    with server.client() as client:
        latest = timestamp_pb2.Timestamp(seconds=YEAR_10000_S - 1)  # the largest valid Timestamp's second
        entries = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(end_time=latest)).entries
        assert entries  # the demo's set-up is in it
        listed = client.invoices.ListInvoices(
            invoices_pb2.ListInvoicesRequest(customer_id="acme", period_start_before=latest)
        )
        assert list(listed.invoices) == []
        bad = timestamp_pb2.Timestamp(seconds=0, nanos=-1)
        assert refused_field(lambda: client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(start_time=bad))) == [
            "start_time"
        ]
