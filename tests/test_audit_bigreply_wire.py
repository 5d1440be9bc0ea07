"""Answers that grow with the data, under a server sending at most 1 MiB a message (`--message-mb-max 1`), over the
wire. README limits: an answer is kept within the limit (pages end early) or, when it cannot be, is
RESOURCE_EXHAUSTED naming the limit, and saying what to do that works; a call that would change state is refused
before it changes anything, or its error says what it did, so that nothing done is hidden.

One server for the file (`--message-mb-max 1`, no closing by itself), catalogue: product `calls` (event type `c`,
SUM of `n`, priced per `route`) and product `wide` (event type `w`, priced per 16 dimensions d0..d15), both at 1
credit a unit on rate card `card`, in force from 2024-01-01."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, refusal, serving
from tests.serverproc import ServerProcess

JAN_2024_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
FEB_2024_MS = 1_706_745_600_000  # 2024-02-01T00:00:00Z
WIDE_DIMENSIONS = [f"d{n}" for n in range(16)]
EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
# Lines of about 300 bytes each (a 120-character route shows in the line's id and its dimensions): 4,000 of them
# make an invoice of about 1.2 MB, more than 1 MiB.
LINES = 4_000


def catalogue(client: TariffClient) -> None:
    calls = pricing_pb2.Product(
        id="calls", event_type="c", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["route"]
    )
    wide = pricing_pb2.Product(
        id="wide", event_type="w", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=WIDE_DIMENSIONS
    )
    for product in (calls, wide):
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rates = [pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price="1")) for p in ("calls", "wide")]
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_2024_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audit-bigreply")
    process = ServerProcess(root / "data", extra_args=["--close-grace", "off", "--message-mb-max", "1"])
    yield from serving(process, catalogue)


def route(n: int) -> str:
    return f"{n:05d}" + "r" * 120


def big_january(client: TariffClient, customer_id: str) -> None:
    """The customer, on `card` from 2024-01-01, with LINES routes of 1 unit each on 2024-01-15: its January invoice
    has LINES lines of 1.00 each, 4,000.00 in all, more than 1 MiB."""
    open_contract(client, customer_id, f"k-{customer_id}", JAN_2024_MS, rate_card_id="card")
    at_ms = JAN_2024_MS + 14 * 86_400_000
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"{customer_id}-{n}",
            customer_id=customer_id,
            event_type="c",
            timestamp_ms=at_ms,
            values={"n": 1.0},
            dimensions={"route": route(n)},
        )
        for n in range(LINES)
    ]
    ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=events))
    assert ack.accepted == LINES and not ack.rejected, ack.rejected[:1]


def invoices_of(client: TariffClient, customer_id: str, page_token: str = "") -> list[str]:
    request = invoices_pb2.ListInvoicesRequest(customer_id=customer_id, page_size=1000, page_token=page_token)
    return [i.invoice_number for i in client.invoices.ListInvoices(request).invoices]


def test_an_invoice_larger_than_a_message_is_refused_before_closing_and_every_error_says_what_works(
    server: ServerProcess,
) -> None:
    """`big`'s January 2024 invoice has 4,000 lines of 1.00 (4,000.00), about 1.2 MB, more than the 1 MiB this
    server sends. PreviewInvoice of it is RESOURCE_EXHAUSTED naming the flag to raise (not "a shorter span, one
    customer", which no PreviewInvoice request can ask for). ClosePeriod of it is RESOURCE_EXHAUSTED before anything
    changes: no invoice is made, so the period stays open. Before the fix the period was closed (an invoice
    numbered) and the call answered RESOURCE_EXHAUSTED "ask for less (a shorter span, one customer)", hiding it.

    CloseDuePeriods then closes every ended period of `big` (January 2024 first); its answer cannot show even the
    first invoice, so its error names the invoices it made and how to read them. GetInvoice of the January invoice
    is RESOURCE_EXHAUSTED naming it and the flag; ListInvoices, whose page cannot hold it alone, names the
    page_token that pages on past it, and that token lists the customer's other invoices. ClosePeriod of the
    closed period answers, as a retry, that it is closed as that invoice."""
    with server.client() as client:
        big_january(client, "big")
        code, details = refusal(
            lambda: client.invoices.PreviewInvoice(
                invoices_pb2.PreviewInvoiceRequest(customer_id="big", period_start=stamp(JAN_2024_MS))
            )
        )
        assert code == EXHAUSTED and "--message-mb-max" in details and "shorter span" not in details, details
        assert f"{LINES:,} lines" in details, details
        close = invoices_pb2.ClosePeriodRequest(customer_id="big", period_start=stamp(JAN_2024_MS))
        code, details = refusal(lambda: client.invoices.ClosePeriod(close))
        assert code == EXHAUSTED and "--message-mb-max" in details and "shorter span" not in details, details
        assert "not closed" in details, details
        assert invoices_of(client, "big") == []
        # The period is still open: a late event is still taken.
        late = usage_pb2.UsageEvent(
            transaction_id="big-late",
            customer_id="big",
            event_type="c",
            timestamp_ms=FEB_2024_MS - 1000,
            values={"n": 1.0},
            dimensions={"route": route(0)},
        )
        assert client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=[late])).accepted == 1

        code, details = refusal(lambda: client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest()))
        assert code == EXHAUSTED and "--message-mb-max" in details and "shorter span" not in details, details
        january = "INV-00000001"  # the first invoice this server made: the first period CloseDuePeriods closed
        numbers = [january, *invoices_of(client, "big", january)]
        assert len(numbers) > 30
        assert (
            client.invoices.ListInvoices(
                invoices_pb2.ListInvoicesRequest(customer_id="big", page_size=1, page_token=january)
            )
            .invoices[0]
            .period_start.ToMilliseconds()
            == FEB_2024_MS
        )
        assert f"closed {len(numbers)} periods" in details and january in details and numbers[-1] in details, details

        code, details = refusal(
            lambda: client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=january))
        )
        assert code == EXHAUSTED and january in details and "--message-mb-max" in details, details
        assert "shorter span" not in details, details
        code, details = refusal(lambda: invoices_of(client, "big"))
        assert code == EXHAUSTED and f"page_token {january!r}" in details and "shorter span" not in details, details
        assert invoices_of(client, "big", january) == numbers[1:]
        code, details = refusal(lambda: client.invoices.ClosePeriod(close))
        assert code == EXHAUSTED and january in details and "--message-mb-max" in details, details


def test_an_override_that_would_make_the_contract_larger_than_a_message_is_refused_before_it_is_added(
    server: ServerProcess,
) -> None:
    """AddOverride answers the whole contract. Overrides of `wide` matching 16 dimensions, 250-character values
    each (about 4.3 KB an override): about 245 of them make the contract more than 1 MiB. The override that would
    is refused RESOURCE_EXHAUSTED, naming the flag, and is not added: GetContract still answers, with every override
    added before it. Before the fix the override was added, the call answered RESOURCE_EXHAUSTED "ask for less (a
    shorter span, one customer)", and GetContract failed from then on."""
    with server.client() as client:
        open_contract(client, "ovr", "k-ovr", JAN_2024_MS, rate_card_id="card")
        added = 0
        for n in range(400):
            match = {d: f"{n:04d}{d}" + "v" * 240 for d in WIDE_DIMENSIONS}
            override = contracts_pb2.PriceOverride(id=f"o{n}", product_id="wide", match=match, multiplier="2")
            try:
                client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k-ovr", override=override))
            except Exception as exc:
                code, details = exc.code, exc.details  # type: ignore[attr-defined]
                break
            added += 1
        assert 200 < added < 300
        assert code == EXHAUSTED and "--message-mb-max" in details and "shorter span" not in details, details
        assert "not added" in details, details
        contract = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-ovr"))
        assert [o.id for o in contract.overrides] == [f"o{n}" for n in range(added)]


def routes_priced(first: int, count: int) -> list[pricing_pb2.Rate]:
    """`count` rates of `calls` at 1, one a route from `first` on: about 160 bytes each."""
    unit = pricing_pb2.UnitPrice(price="1")
    return [
        pricing_pb2.Rate(product_id="calls", match={"route": route(n)}, unit=unit) for n in range(first, first + count)
    ]


def test_a_draft_larger_than_a_message_is_not_made_and_unpaged_version_reads_say_what_works(
    server: ServerProcess,
) -> None:
    """Rate card `many`: draft 1 with 3,500 rates of a route each (about 0.55 MB). Draft 2 based on it adding 3,500
    more (about 1.1 MB in all, more than 1 MiB) is RESOURCE_EXHAUSTED before it is made: ListVersions shows draft 1
    only, and the next draft is numbered 2. Before the fix draft 2 was made and the call answered RESOURCE_EXHAUSTED
    "ask for less (a shorter span, one customer)". Draft 2 from scratch with the other 3,500 rates is made; then
    ListVersions (about 1.1 MB in all) pages them, a version a page (a page ends before 1 MiB less 64 KiB); GetVersion
    reads each; DiffVersions
    of the two (every rate removed and added) names the flag, not a span no DiffVersions request has."""
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="many", pricing_unit="credits"))
        first = pricing_pb2.CreateDraftVersionRequest(rate_card_id="many", upsert_rates=routes_priced(0, 3500))
        assert client.pricing.CreateDraftVersion(first).version == 1
        grown = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="many", based_on_version=1, upsert_rates=routes_priced(3500, 3500)
        )
        code, details = refusal(lambda: client.pricing.CreateDraftVersion(grown))
        assert code == EXHAUSTED and "not made" in details and "shorter span" not in details, details
        listed = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="many")).versions
        assert [v.version for v in listed] == [1]
        other = pricing_pb2.CreateDraftVersionRequest(rate_card_id="many", upsert_rates=routes_priced(3500, 3500))
        assert client.pricing.CreateDraftVersion(other).version == 2
        page = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id="many"))
        assert [v.version for v in page.versions] == [1] and page.next_page_token == "1"
        following = pricing_pb2.ListVersionsRequest(rate_card_id="many", page_token="1")
        page = client.pricing.ListVersions(following)
        assert [v.version for v in page.versions] == [2] and not page.next_page_token
        for number in (1, 2):
            version = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="many", version=number))
            assert len(version.rates) == 3500
        diff = pricing_pb2.DiffVersionsRequest(rate_card_id="many", from_version=1, to_version=2)
        code, details = refusal(lambda: client.pricing.DiffVersions(diff))
        assert code == EXHAUSTED and "--message-mb-max" in details and "shorter span" not in details, details


def test_a_contract_whose_answer_would_show_too_many_grants_is_not_created(server: ServerProcess) -> None:
    """Customer `rich`, no contract, 220 promotional grants of 1 credit given with customer_id alone, each
    applicable to 40 products of 120-character ids (about 5 KB a grant, 1.1 MB in all). GetBalance (one message,
    every grant) is RESOURCE_EXHAUSTED naming the flag, not a span no GetBalance request has. CreateContract for
    `rich` answers the contract with those grants: it is refused RESOURCE_EXHAUSTED before the contract is made
    (GetContract: NOT_FOUND). Before the fix the contract was made and the call answered RESOURCE_EXHAUSTED "ask for
    less (a shorter span, one customer)", hiding it."""
    products = [f"p{n:03d}" + "x" * 117 for n in range(40)]
    with server.client() as client:
        for n, product_id in enumerate(products):
            product = pricing_pb2.Product(id=product_id, event_type=f"e{n}", aggregation=pricing_pb2.COUNT)
            client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rich", name="rich"))
        for n in range(220):
            grant = contracts_pb2.Grant(
                id=f"g{n}",
                customer_id="rich",
                kind=contracts_pb2.PROMOTIONAL,
                amount="1",
                paid_amount="0",
                applicable_product_ids=products,
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        code, details = refusal(lambda: client.get_balance("rich"))
        assert code == EXHAUSTED and "--message-mb-max" in details and "shorter span" not in details, details
        create = contracts_pb2.CreateContractRequest(
            id="k-rich", customer_id="rich", rate_card_id="card", starting_at=stamp(JAN_2024_MS)
        )
        code, details = refusal(lambda: client.contracts.CreateContract(create))
        assert code == EXHAUSTED and "not created" in details and "shorter span" not in details, details
        code, _ = refusal(lambda: client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k-rich")))
        assert code == grpc.StatusCode.NOT_FOUND
