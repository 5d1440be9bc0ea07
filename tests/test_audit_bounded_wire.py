"""Work a single request makes, bounded over the wire: a request whose work grows with the data is done in slices the
writer takes one at a time, so that no one command holds it (and every usage batch and read behind it) for long.

One server for the file (no closing by itself), catalogue: product `calls` (event type `c`, SUM of `n`) at 1 credit
a unit on rate card `card`, in force from 1990-01-01."""

from __future__ import annotations

import json
from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import invoices_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, refusal, serving
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


PAGE_BYTES = 4 * 1024 * 1024  # a list page's most: what a gRPC client reads by default (README "Paged lists")


def list_versions(client: TariffClient, page_size: int = 0, page_token: str = "") -> pricing_pb2.ListVersionsResponse:
    request = pricing_pb2.ListVersionsRequest(rate_card_id="wide", page_size=page_size, page_token=page_token)
    answer: pricing_pb2.ListVersionsResponse = client.pricing.ListVersions(request)
    return answer


def test_list_versions_pages_a_card_of_many_large_versions(server: ServerProcess) -> None:
    """Rate card `wide`: draft 1 with 10,000 rates (`calls` for k = v0 .. v9999, a version's most), drafts 2 to 20
    each based on the one before with nothing changed: 20 versions of 10,000 rates, about 250 KB each, 5 MB in all.

    ListVersions without page_size answers the first versions that fit a page's 4 MiB (16 of them), and a
    next_page_token naming the last one's number ("16"); that token answers 17 to 20 and an empty token. page_size
    2 answers versions 1 and 2 and token "2". A token the list never issued ("0", "21", "02", "x") is
    INVALID_ARGUMENT naming page_token.

    Before the fix every version was answered in one message (5 MB, more than a default gRPC client reads, made
    on the event loop whole: 62 such versions held it 4.5 s, then were refused past --message-mb-max)."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="wide", pricing_unit="credits"))
        unit = pricing_pb2.UnitPrice(price="1")
        rates = [pricing_pb2.Rate(product_id="calls", match={"k": f"v{n}"}, unit=unit) for n in range(10_000)]
        made = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="wide", upsert_rates=rates)
        )
        assert made.version == 1 and len(made.rates) == 10_000
        for number in range(2, 21):
            request = pricing_pb2.CreateDraftVersionRequest(rate_card_id="wide", based_on_version=number - 1)
            assert client.pricing.CreateDraftVersion(request).version == number

        first = list_versions(client)
        assert first.ByteSize() <= PAGE_BYTES, f"{first.ByteSize():,} bytes, {len(first.versions)} versions"
        shown = [v.version for v in first.versions]
        assert shown == list(range(1, 17)) and first.next_page_token == "16", (shown, first.next_page_token)
        rest = list_versions(client, page_token=first.next_page_token)
        assert [v.version for v in rest.versions] == [17, 18, 19, 20] and not rest.next_page_token
        assert all(len(v.rates) == 10_000 for v in rest.versions)

        two = list_versions(client, page_size=2)
        assert [v.version for v in two.versions] == [1, 2] and two.next_page_token == "2"
        for token in ("0", "21", "02", "x"):
            code, details = refusal(lambda: list_versions(client, page_token=token))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT and "page_token" in details, (token, details)


FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01, on an hour: a publish there re-rates nothing


def test_customer_id_lists_hold_at_most_10000_ids(server: ServerProcess) -> None:
    """SimulateVersion's customer_ids and a PublishVersion cohort's customer_ids hold at most 10,000 ids (README
    "Limits"): 10,001 (the one customer `sim` named 10,001 times) is INVALID_ARGUMENT naming the field and the
    limit, and nothing is published (card `card` keeps 1 as its current version, draft 2 stays a draft); 10,000 is
    taken (the simulation of `sim`, without usage: no amounts, totals 0).

    Before the fix any number was taken, each id checked on the event loop: 4,000,000 ids (12 MB) held it 1.5 s for
    a SimulateVersion and 3.1 s for a publish, whose journal record kept all 4,000,000."""
    with server.client() as client:
        open_contract(client, "sim", "k-sim", JAN_2010_MS, rate_card_id="card")
        draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", based_on_version=1)
        assert client.pricing.CreateDraftVersion(draft).version == 2

        def simulate(count: int) -> pricing_pb2.SimulateVersionResponse:
            request = pricing_pb2.SimulateVersionRequest(
                rate_card_id="card",
                version=2,
                period_start=stamp(JAN_2010_MS),
                period_end=stamp(JAN_2010_MS + 31 * 86_400_000),
                customer_ids=["sim"] * count,
            )
            answer: pricing_pb2.SimulateVersionResponse = client.pricing.SimulateVersion(request)
            return answer

        code, details = refusal(lambda: simulate(10_001))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "customer_ids" in details and "10,000" in details, details
        assert not simulate(10_000).amounts

        publish = pricing_pb2.PublishVersionRequest(
            rate_card_id="card",
            version=2,
            effective_from=stamp(FAR_FUTURE_MS),
            cohort=pricing_pb2.Cohort(customer_ids=["sim"] * 10_001),
        )
        code, details = refusal(lambda: client.pricing.PublishVersion(publish))
        assert code == grpc.StatusCode.INVALID_ARGUMENT, details
        assert "cohort.customer_ids" in details and "10,000" in details, details
        version = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="card", version=2))
        assert version.state == pricing_pb2.DRAFT


def test_a_draft_removes_at_most_what_a_version_holds(server: ServerProcess) -> None:
    """CreateDraftVersion's remove_parameters hold at most 1,000 names and remove_rates at most 10,000 keys, what
    a version holds (README "Limits"): rate card `rm`, draft 1 with parameters p0 .. p999 and 10,000 rates of
    `calls` (k = v0 .. v9999), a version's most. A draft based on it removing every parameter and p0 again (1,001),
    or every rate and the first again (10,001), is INVALID_ARGUMENT naming the field and the limit, and no draft is
    made; removing each once (1,000 and 10,000) is taken: draft 2, empty.

    Before the fix any number was checked one by one, the refusal listing each repeat ("no such parameter in the
    base version"): 1,500,000 rate keys (a 16 MB request) held the event loop 7 s, 4,000,000 parameter names held
    the writer 14 s, and every usage batch behind it."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="rm", pricing_unit="credits"))
        unit = pricing_pb2.UnitPrice(price="1")
        rates = [pricing_pb2.Rate(product_id="calls", match={"k": f"v{n}"}, unit=unit) for n in range(10_000)]
        names = [f"p{n}" for n in range(1_000)]
        first = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="rm", set_parameters=dict.fromkeys(names, "1"), upsert_rates=rates
        )
        assert client.pricing.CreateDraftVersion(first).version == 1
        keys = [pricing_pb2.RateKey(product_id="calls", match={"k": f"v{n}"}) for n in range(10_000)]

        def draft(parameters: list[str], rate_keys: list[pricing_pb2.RateKey]) -> pricing_pb2.RateCardVersion:
            request = pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="rm", based_on_version=1, remove_parameters=parameters, remove_rates=rate_keys
            )
            made: pricing_pb2.RateCardVersion = client.pricing.CreateDraftVersion(request)
            return made

        for field, (parameters, rate_keys), limit in (
            ("remove_parameters", ([*names, "p0"], []), "1,000"),
            ("remove_rates", ([], [*keys, keys[0]]), "10,000"),
        ):
            code, details = refusal(lambda: draft(parameters, rate_keys))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT, (field, details)
            assert details.startswith(f"{field}:") and limit in details, (field, details)
        listed = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="rm")).versions
        assert [v.version for v in listed] == [1]
        made = draft(names, keys)
        assert (made.version, dict(made.parameters), list(made.rates)) == (2, {}, [])
