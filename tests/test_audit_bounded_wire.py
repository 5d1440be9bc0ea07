"""Work a single request makes, bounded over the wire: a request whose work grows with the data is done in slices the
writer takes one at a time, so that no one command holds it (and every usage batch and read behind it) for long.

One server for the file (no closing by itself), catalogue: product `calls` (event type `c`, SUM of `n`) at 1 credit
a unit on rate card `card`, in force from 1990-01-01."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from tariff import TariffClient
from tariff.v1 import invoices_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, serving
from tests.serverproc import ServerProcess

JAN_1990_MS = 631_152_000_000  # 1990-01-01T00:00:00Z
JAN_2010_MS = 1_262_304_000_000  # 2010-01-01T00:00:00Z: 20 years, 240 monthly periods after JAN_1990_MS
PERIODS_A_CONTRACT = 240


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="calls", event_type="c", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="calls", unit=pricing_pb2.UnitPrice(price="1"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate]))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_1990_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audit-bounded")
    process = ServerProcess(root / "data", extra_args=["--close-grace", "off"])
    yield from serving(process, catalogue)


def audit_of(client: TariffClient, action: str) -> list[pricing_pb2.AuditEntry]:
    entries: list[pricing_pb2.AuditEntry] = []
    after_seq = 0
    while True:
        page = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=after_seq, page_size=1000))
        entries += [e for e in page.entries if e.action == action]
        if not page.next_after_seq:
            return entries
        after_seq = page.next_after_seq


def test_close_due_periods_closes_a_backlog_in_slices_of_256_periods(server: ServerProcess) -> None:
    """Customers `old-0` and `old-1` each have a contract from 1990-01-01 to 2010-01-01: 240 monthly periods each,
    480 due, none closed. One CloseDuePeriods closes all 480 (invoices_made 480, every invoice shown: they have no
    usage, 0.00 due, a few hundred bytes each) in period end order, then contract id (INV-00000001 is old-0's
    January 1990, INV-00000002 old-1's, INV-00000480 old-1's December 2009), as journaled commands of at most 256
    periods each, as closing by itself makes them (README "Closing by itself"): two audit entries, 256 and 224
    periods, each with periods_max 256.

    Before the fix the call was one command closing all 480 (one audit entry, periods_max 0): a backlog of
    thousands held the writer, and every usage batch and read queued behind it, for as long as they all took."""
    with server.client() as client:
        for n in range(2):
            open_contract(client, f"old-{n}", f"k-old-{n}", JAN_1990_MS, JAN_2010_MS, rate_card_id="card")
        answer = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
        assert answer.invoices_made == 2 * PERIODS_A_CONTRACT
        assert len(answer.invoices) == 2 * PERIODS_A_CONTRACT and not answer.next_page_token
        first, second, last = answer.invoices[0], answer.invoices[1], answer.invoices[-1]
        assert (first.invoice_number, first.customer_id, first.period_start.ToMilliseconds()) == (
            "INV-00000001",
            "old-0",
            JAN_1990_MS,
        )
        assert (second.invoice_number, second.customer_id) == ("INV-00000002", "old-1")
        assert (last.invoice_number, last.customer_id, last.period_end.ToMilliseconds()) == (
            "INV-00000480",
            "old-1",
            JAN_2010_MS,
        )
        assert all(i.total_due == "0" or i.total_due == "0.00" for i in answer.invoices), answer.invoices[0].total_due

        closes = audit_of(client, "CloseDuePeriods")
        assert [json.loads(e.diff).get("periods_max") for e in closes] == [256, 256], [e.diff for e in closes]
        assert len({e.seq for e in closes}) == 2

        again = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
        assert again.invoices_made == 0 and not again.invoices
        assert len(audit_of(client, "CloseDuePeriods")) == 2  # nothing due: nothing journaled
