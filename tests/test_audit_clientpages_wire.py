"""The Python client's all-pages helpers over the wire. README ("Paged lists"): ListRateCards and ListVersions are
paged alike (100 a page when page_size is 0, the last page's next_page_token empty), and the client's
`list_rate_cards()` reads every page. A client that read `ListVersions(...).versions` sees only the first page
since ListVersions became paged, so the client offers `list_versions()` reading every page as `list_rate_cards()`
does, on the sync and the async client; likewise `list_customers()` and `list_alert_rules()` for the other paged
lists of one kind of record (ListCustomers, ListAlertRules). The CLI's `tariff ratecard versions CARD` ("Every
version of a rate card, drafts included") and `tariff ratecards show CARD` (its versions) read every page too.

One server for the file, catalogue: rate cards `paged` (drafts 1, 2 and 3, no rates) and `other` (no version);
customers `c1`, `c2`, `c3` (no contract); LOW_BALANCE alert rules on each of them (threshold 1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import pytest
from tariff import NotFound, TariffClient
from tariff.v1 import alerts_pb2, contracts_pb2, pricing_pb2

from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess
from tests.test_cli import table_rows, tariff

CARD = "paged"
VERSIONS = [1, 2, 3]
CUSTOMERS = ["c1", "c2", "c3"]


def catalogue(client: TariffClient) -> None:
    for card_id in (CARD, "other"):
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card_id, pricing_unit="credits"))
    for number in VERSIONS:
        note = f"draft {number}"
        made = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, change_note=note)
        )
        assert made.version == number
    for customer_id in CUSTOMERS:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
        rule = alerts_pb2.CreateAlertRequest(customer_id=customer_id, type=alerts_pb2.LOW_BALANCE, threshold="1")
        client.alerts.CreateAlert(rule)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-clientpages") / "data")
    yield from serving(process, catalogue)


def test_list_versions_pages_of_two_are_two(server: ServerProcess) -> None:
    """The raw RPC with page_size 2: versions 1 and 2 with token "2", then version 3 and no token (so the helper
    below is read over more than one page)."""
    with server.client() as client:
        first = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD, page_size=2))
        assert [v.version for v in first.versions] == [1, 2] and first.next_page_token == "2"
        rest = client.pricing.ListVersions(
            pricing_pb2.ListVersionsRequest(rate_card_id=CARD, page_size=2, page_token=first.next_page_token)
        )
        assert [v.version for v in rest.versions] == [3] and not rest.next_page_token


def test_list_versions_reads_every_page_sync(server: ServerProcess) -> None:
    with server.client() as client:
        listed = client.list_versions(CARD, page_size=2)
        assert [v.version for v in listed] == VERSIONS
        assert [v.change_note for v in listed] == [f"draft {n}" for n in VERSIONS]
        assert [v.version for v in client.list_versions(CARD, page_size=1)] == VERSIONS
        assert [v.version for v in client.list_versions(CARD)] == VERSIONS, "page_size 0: the server's 100"
        assert client.list_versions("other") == []
        with pytest.raises(NotFound):
            client.list_versions("nope")


def test_list_versions_reads_every_page_async(server: ServerProcess) -> None:
    async def main() -> None:
        async with server.async_client() as client:
            listed = await client.list_versions(CARD, page_size=2)
            assert [v.version for v in listed] == VERSIONS
            assert await client.list_versions("other") == []
            with pytest.raises(NotFound):
                await client.list_versions("nope")

    asyncio.run(main())


def test_list_rate_cards_reads_every_page(server: ServerProcess) -> None:
    """The existing helper over pages of one card each (its test elsewhere reads a single page)."""
    with server.client() as client:
        assert [c.id for c in client.list_rate_cards(page_size=1)] == ["other", CARD]

    async def main() -> None:
        async with server.async_client() as client:
            assert [c.id for c in await client.list_rate_cards(page_size=1)] == ["other", CARD]

    asyncio.run(main())


def test_list_customers_and_alert_rules_read_every_page_sync(server: ServerProcess) -> None:
    with server.client() as client:
        first = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=2))
        assert [c.id for c in first.customers] == CUSTOMERS[:2] and first.next_page_token
        assert [c.id for c in client.list_customers(page_size=2)] == CUSTOMERS
        assert [c.id for c in client.list_customers()] == CUSTOMERS
        rules = client.list_alert_rules(page_size=2)
        assert sorted(r.customer_id for r in rules) == CUSTOMERS and [r.id for r in rules] == sorted(
            r.id for r in rules
        )
        assert [r.id for r in rules] == [r.id for r in client.list_alert_rules()]


def test_list_customers_and_alert_rules_read_every_page_async(server: ServerProcess) -> None:
    async def main() -> None:
        async with server.async_client() as client:
            assert [c.id for c in await client.list_customers(page_size=2)] == CUSTOMERS
            assert sorted(r.customer_id for r in await client.list_alert_rules(page_size=1)) == CUSTOMERS

    asyncio.run(main())


def test_the_cli_lists_every_version_of_a_card_of_more_than_a_page(server: ServerProcess) -> None:
    """Card `many` with 101 drafts (a ListVersions page holds 100 when page_size is 0): `tariff ratecard versions`
    and `tariff ratecards show` list all 101, in JSON and as a table. Before the fix they listed versions 1 to 100
    (and the JSON of `versions` carried next_page_token "100")."""
    many = list(range(1, 102))
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="many", pricing_unit="credits"))
        for _ in many:
            client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="many"))
    listed = json.loads(tariff(server, "ratecard", "versions", "many", "--json").stdout)
    assert [v["version"] for v in listed["versions"]] == many and "next_page_token" not in listed
    table = table_rows(tariff(server, "ratecard", "versions", "many").stdout)
    assert [row[0] for row in table if row[0].isdigit()] == [str(n) for n in many]
    shown = json.loads(tariff(server, "ratecards", "show", "many", "--json").stdout)
    assert [v["version"] for v in shown["versions"]] == many
