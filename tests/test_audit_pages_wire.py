"""An acceptance audit of every paged read (ListCustomers, ListRateCards, ListAlertRules, ListInvoices,
ExplainLineItem) and of SimulateVersion, as a demanding client uses them over the wire against a real server
(contracts.proto, pricing.proto, alerts.proto, invoices.proto, README), every amount computed by hand.

Paging: each item once across the pages, in the documented order, the last page's token empty, the page size's
default and maximum; a page_token the server did not issue for the request (garbage, another RPC's, another
customer's, outside the filters) is INVALID_ARGUMENT naming page_token, never a silent empty or shifted page;
a key restricted to some customers never sees another's item through any page or token.

Everything happens in periods long over (2026-01 .. 2026-03), with `--close-grace off` (tests/serverproc.py's
default) so the server closes nothing by itself while a test runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from tariff import TariffClient, TariffError
from tariff.v1 import alerts_pb2, contracts_pb2, invoices_pb2, pricing_pb2

from tests.serverproc import ServerFactory, ServerProcess
from tests.test_audit_invoices_wire import (
    CARD,
    FEB,
    JAN,
    MAR,
    catalogue,
    close,
    customer,
    ingest,
    override,
    preview,
    ts,
)
from tests.test_server_auth import Keys

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CUSTOMERS = ["c1", "c2", "c3", "c4", "c5"]
CARDS = [CARD, "card-b", "card-c"]
PORTAL = "c1-c3-portal"
PAGES_KEYS: dict[str, tuple[str, list[str] | None]] = {"ops-admin": ("admin", None), PORTAL: ("read", ["c1", "c3"])}


class World:
    def __init__(self, server: ServerProcess, keys: Keys, invoices: dict[str, list[str]]) -> None:
        self.server, self.keys, self.invoices = server, keys, invoices

    def portal(self) -> TariffClient:
        return self.server.client(api_key=self.keys.key[PORTAL])


def rule_id(customer_id: str) -> str:
    return f"rule-{customer_id}"


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Customers c1..c5, three rate cards, a CREDITS_EXHAUSTED rule per customer and one for every customer
    (rule-all), and final invoices: c1's January and February, c2's and c3's January (numbered in that order)."""
    root: Path = tmp_path_factory.mktemp("audit-pages")
    keys = Keys(root / "keys.json", PAGES_KEYS)
    server = ServerProcess(root / "data", extra_args=keys.args, api_key=keys.key["ops-admin"])
    server.start()
    try:
        with server.client() as admin:
            catalogue(admin)
            for card in CARDS[1:]:
                admin.pricing.CreateRateCard(
                    pricing_pb2.CreateRateCardRequest(id=card, name=card, pricing_unit="credits")
                )
            for customer_id in CUSTOMERS:
                customer(admin, customer_id, "USD", "1")
                admin.alerts.CreateAlert(
                    alerts_pb2.CreateAlertRequest(
                        id=rule_id(customer_id), customer_id=customer_id, type=alerts_pb2.CREDITS_EXHAUSTED
                    )
                )
            admin.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(id="rule-all", all=True, type=alerts_pb2.CREDITS_EXHAUSTED)
            )
            invoices: dict[str, list[str]] = {}
            for customer_id, start_ms in (("c1", JAN), ("c1", FEB), ("c2", JAN), ("c3", JAN)):
                invoices.setdefault(customer_id, []).append(close(admin, customer_id, start_ms).invoice_number)
        yield World(server, keys, invoices)
    finally:
        server.stop()


Lister = Callable[[TariffClient, int, str], tuple[list[str], str]]


def list_customers(client: TariffClient, page_size: int, token: str) -> tuple[list[str], str]:
    found = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=page_size, page_token=token))
    return [c.id for c in found.customers], found.next_page_token


def list_rate_cards(client: TariffClient, page_size: int, token: str) -> tuple[list[str], str]:
    found = client.pricing.ListRateCards(pricing_pb2.ListRateCardsRequest(page_size=page_size, page_token=token))
    return [c.id for c in found.rate_cards], found.next_page_token


def list_alert_rules(client: TariffClient, page_size: int, token: str) -> tuple[list[str], str]:
    found = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=page_size, page_token=token))
    return [r.id for r in found.rules], found.next_page_token


def list_invoices(customer_id: str = "", **filters: Any) -> Lister:
    def listed(client: TariffClient, page_size: int, token: str) -> tuple[list[str], str]:
        request = invoices_pb2.ListInvoicesRequest(
            customer_id=customer_id, page_size=page_size, page_token=token, **filters
        )
        found = client.invoices.ListInvoices(request)
        return [i.invoice_number for i in found.invoices], found.next_page_token

    return listed


def every_page(client: TariffClient, lister: Lister, page_size: int) -> list[list[str]]:
    pages: list[list[str]] = []
    token = ""
    while True:
        page, token = lister(client, page_size, token)
        pages.append(page)
        assert len(pages) < 50, "the pages never end"
        if not token:
            return pages


def refusal(call: Callable[[], object]) -> TariffError:
    with pytest.raises(TariffError) as refused:
        call()
    return refused.value


def assert_page_token_refused(call: Callable[[], object], what: str) -> str:
    error = refusal(call)
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT, (what, error)
    assert [v.field for v in error.field_violations] == ["page_token"], (what, error)
    return error.details


def test_every_list_pages_each_item_once_in_id_order_to_an_empty_token(world: World) -> None:
    """page_size 1, 2, 0 (100) and past the maximum (read as 1,000): every item exactly once, in id (number) order,
    every page but the last full, the last page's next_page_token empty."""
    numbers = sorted(n for found in world.invoices.values() for n in found)
    expected: dict[str, tuple[Lister, list[str]]] = {
        "ListCustomers": (list_customers, CUSTOMERS),
        "ListRateCards": (list_rate_cards, sorted(CARDS)),
        "ListAlertRules": (list_alert_rules, sorted([*map(rule_id, CUSTOMERS), "rule-all"])),
        "ListInvoices": (list_invoices(), numbers),
        "ListInvoices(c1)": (list_invoices("c1"), world.invoices["c1"]),
        "ListInvoices(from FEB)": (list_invoices(period_start_from=ts(FEB)), [world.invoices["c1"][1]]),
    }
    with world.server.client() as admin:
        for what, (lister, items) in expected.items():
            for page_size in (1, 2, 0, 5_000):
                pages = every_page(admin, lister, page_size)
                size = page_size if 0 < page_size <= 1_000 else (100 if page_size == 0 else 1_000)
                assert [i for page in pages for i in page] == items, (what, page_size, pages)
                assert all(len(page) == size for page in pages[:-1]), (what, page_size, pages)
                assert 0 < len(pages[-1]) <= size, (what, page_size, pages)


def test_a_page_token_not_issued_for_the_request_is_invalid_argument_naming_page_token(world: World) -> None:
    """Tokens are the last item's id, so a made-up one used to be read as a position: "zzz" answered an empty last
    page (the client believes the list ends), another RPC's token skipped items silently, another customer's
    invoice number paged that customer's list from an arbitrary point."""
    c1_jan, c1_feb = world.invoices["c1"]
    c2_jan = world.invoices["c2"][0]
    refused: dict[str, tuple[Lister, str]] = {
        "garbage to ListCustomers": (list_customers, "zzz"),
        "a rate card's id to ListCustomers": (list_customers, CARD),
        "an alert rule's id to ListCustomers": (list_customers, rule_id("c2")),
        "a customer's id to ListRateCards": (list_rate_cards, "c1"),
        "garbage to ListRateCards": (list_rate_cards, "!"),
        "a customer's id to ListAlertRules": (list_alert_rules, "c3"),
        "garbage to ListInvoices": (list_invoices(), "garbage"),
        "a customer's id to ListInvoices": (list_invoices(), "c1"),
        "an unknown number to ListInvoices": (list_invoices(), "INV-00000099"),
        "c2's invoice to ListInvoices(c1)": (list_invoices("c1"), c2_jan),
        "a January invoice to ListInvoices(from FEB)": (list_invoices(period_start_from=ts(FEB)), c1_jan),
        "a February invoice to ListInvoices(before FEB)": (list_invoices(period_start_before=ts(FEB)), c1_feb),
        "an invoice to ListInvoices(DRAFT), which lists none": (
            list_invoices(status=invoices_pb2.INVOICE_DRAFT),
            c1_jan,
        ),
    }
    with world.server.client() as admin:
        for what, (lister, token) in refused.items():
            assert_page_token_refused(lambda: lister(admin, 2, token), what)  # noqa: B023 - called at once
        # The same tokens, issued by the same list for the same request, page on.
        assert list_invoices("c1")(admin, 1, c1_jan) == ([c1_feb], "")
        assert list_customers(admin, 2, "c2") == (["c3", "c4"], "c4")


def test_list_invoices_with_a_status_the_proto_does_not_define_is_invalid_argument_naming_status(
    world: World,
) -> None:
    """status 7 (no InvoiceStatus has it: a newer client's, or a mistake) was read as FINAL and listed every final
    invoice, which a client asking for something else would take for its answer."""
    with world.server.client() as admin:
        error = refusal(lambda: list_invoices(status=7)(admin, 10, ""))
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
        assert [v.field for v in error.field_violations] == ["status"], error
        assert "7" in error.details, error
        listed = [
            number
            for page in every_page(admin, list_invoices(status=invoices_pb2.INVOICE_FINAL), 10)
            for number in page
        ]
        assert sorted(listed) == sorted(n for numbers in world.invoices.values() for n in numbers)


def test_a_restricted_key_pages_its_customers_only_and_learns_nothing_from_a_token(world: World) -> None:
    """PORTAL may see c1 and c3: ListCustomers and ListAlertRules page through theirs only (rule-all watches them
    too); another customer's id as a token is refused exactly as a made-up one (no hint that c2 exists), and so is
    another customer's invoice number on c1's invoices."""
    with world.portal() as portal:
        assert every_page(portal, list_customers, 1) == [["c1"], ["c3"]]
        assert every_page(portal, list_alert_rules, 2) == [["rule-all", "rule-c1"], ["rule-c3"]]
        assert every_page(portal, list_invoices("c1"), 1) == [[world.invoices["c1"][0]], [world.invoices["c1"][1]]]
        other = assert_page_token_refused(lambda: list_customers(portal, 1, "c2"), "another customer's id")
        unknown = assert_page_token_refused(lambda: list_customers(portal, 1, "c0"), "no customer's id")
        assert other == unknown and "c2" not in other, (other, unknown)
        assert_page_token_refused(lambda: list_alert_rules(portal, 1, rule_id("c2")), "another customer's rule")
        assert_page_token_refused(
            lambda: list_invoices("c1")(portal, 1, world.invoices["c2"][0]), "another customer's invoice"
        )
        everyone = refusal(lambda: list_invoices()(portal, 1, ""))
        assert everyone.code == grpc.StatusCode.PERMISSION_DENIED, everyone


def test_an_item_added_between_pages_shows_on_a_later_page_only_when_it_sorts_after_the_token(
    server_factory: ServerFactory,
) -> None:
    """Keyset paging (documented): ids added after the token's show on the following pages, ids before it never,
    and nothing shows twice."""
    with server_factory(name="added").client() as client:
        for customer_id in ("b", "d", "f"):
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
        first, token = list_customers(client, 2, "")
        assert (first, token) == (["b", "d"], "d")
        for customer_id in ("a", "c", "e", "g"):
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
        assert list_customers(client, 2, token) == (["e", "f"], "f")
        assert list_customers(client, 2, "f") == (["g"], "")


# ----------------------------------------------------------------------------------------------------------------
# ExplainLineItem and SimulateVersion on one customer's re-rated line, by hand.
#
# Version 1 (tests/test_audit_invoices_wire.py's catalogue), graduated tiers per unit: <= 100 at 1 plus a flat 10,
# <= 200 at 0.5 plus 5, above at 0.1 plus 2. Version 2: <= 50 at 2 plus a flat 1, above at 0.25.
#
# "re" in January: 60 units at 01:00, 60 at 05:00 -> v1: 70 (10 + 60), then 125 - 70 = 55.
#                   February: 30 units -> v1: 40.
# "done" in January: 150 units, closed before the publish -> v1: 10 + 100 + 5 + 25 = 140, left alone.
#                   February: 10 units -> v1: 20.
# Version 2 effective from January 1st re-rates the open periods: re's January buckets 70 -> 1 + 100 + 2.5 = 103.5
# (+33.5) and 55 -> 118.5 - 103.5 = 15 (-40); re's February 40 -> 61; done's February 20 -> 21.
# Then 10 more units for re at 07:00 in January, rated by v2 at 120 -> 130: 2.5. re's January line: 121.


def version_2(client: TariffClient) -> int:
    tiers = [pricing_pb2.Tier(up_to="50", unit_price="2", flat_price="1"), pricing_pb2.Tier(unit_price="0.25")]
    rate = pricing_pb2.Rate(product_id="grad", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers))
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=[rate])
    )
    number: int = draft.version
    return number


def simulated(client: TariffClient, version: int, start_ms: int, end_ms: int, ids: Sequence[str] = ()) -> Any:
    return client.pricing.SimulateVersion(
        pricing_pb2.SimulateVersionRequest(
            rate_card_id=CARD, version=version, period_start=ts(start_ms), period_end=ts(end_ms), customer_ids=ids
        )
    )


def amounts_of(simulation: Any) -> list[tuple[str, str, str, str, str]]:
    return [(a.customer_id, a.product_id, a.current_amount, a.simulated_amount, a.delta) for a in simulation.amounts]


def totals_of(simulation: Any) -> tuple[str, str, str]:
    totals = simulation.totals
    return totals.current_amount, totals.simulated_amount, totals.delta


def explain(
    client: TariffClient, customer_id: str, page_size: int, token: str = "", start_ms: int = JAN, line: str = "grad;k=a"
) -> invoices_pb2.ExplainLineItemResponse:
    found: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(
        invoices_pb2.ExplainLineItemRequest(
            customer_id=customer_id, period_start=ts(start_ms), line_id=line, page_size=page_size, page_token=token
        )
    )
    return found


def explained_pages(client: TariffClient, customer_id: str, page_size: int) -> list[list[tuple[str, bool]]]:
    pages: list[list[tuple[str, bool]]] = []
    token = ""
    while True:
        found = explain(client, customer_id, page_size, token)
        pages.append([(e.amount, e.HasField("adjustment")) for e in found.events])
        token = found.next_page_token
        if not token:
            return pages


def re_rated_world(client: TariffClient) -> None:
    catalogue(client)
    for customer_id in ("re", "done"):
        customer(client, customer_id, "USD", "1")
    ingest(client, "re", [("grad", "a", 60, JAN + HOUR_MS), ("grad", "a", 60, JAN + 5 * HOUR_MS)])
    ingest(client, "re", [("grad", "a", 30, FEB + HOUR_MS)])
    ingest(client, "done", [("grad", "a", 150, JAN + 2 * HOUR_MS), ("grad", "a", 10, FEB + 2 * HOUR_MS)])
    close(client, "done", JAN)


def test_simulate_then_publish_re_rates_to_the_simulated_amounts(server_factory: ServerFactory) -> None:
    """SimulateVersion over January and February, then PublishVersion effective from January 1st: each customer's
    simulated amount is what its open lines hold after the publish, the totals' delta the publish's
    rerated_amount_delta; done's closed January is left out of both (its 140 counted as left alone). "ov" has a
    0.3333 multiplier on grad and 33 + 77 January units: v1 120 x 0.3333 = 39.996, v2 (1 + 100 + 60 x 0.25 = 116)
    x 0.3333 = 38.6628, the same override in the simulation as in the re-rating."""
    with server_factory(name="simulate").client() as client:
        re_rated_world(client)
        customer(client, "ov", "USD", "1")
        override(client, "ov-c", "grad", multiplier="0.3333")
        ingest(client, "ov", [("grad", "a", 33, JAN + HOUR_MS), ("grad", "a", 77, JAN + 9 * HOUR_MS)])
        number = version_2(client)
        simulation = simulated(client, number, JAN, MAR)
        assert amounts_of(simulation) == [
            ("done", "grad", "20", "21", "1"),
            ("ov", "grad", "39.996", "38.6628", "-1.3332"),
            ("re", "grad", "165", "179.5", "14.5"),
        ]
        assert totals_of(simulation) == ("224.996", "239.1628", "14.1668")
        assert amounts_of(simulated(client, number, JAN, MAR, ["done"])) == [("done", "grad", "20", "21", "1")]
        # An hour without usage, and the closed period alone: no amounts, zero totals.
        for start_ms, end_ms in ((JAN + 3 * HOUR_MS, JAN + 4 * HOUR_MS), (JAN + 2 * HOUR_MS, JAN + 3 * HOUR_MS)):
            empty = simulated(client, number, start_ms, end_ms, ["done"] if start_ms == JAN + 2 * HOUR_MS else ())
            assert (amounts_of(empty), totals_of(empty)) == ([], ("0", "0", "0"))
        backwards = refusal(lambda: simulated(client, number, FEB, JAN))
        assert [v.field for v in backwards.field_violations] == ["period_end"], backwards
        # From 04:00 on: re's 05:00 bucket priced over the period's cumulative 120 units, 55 -> 15.
        assert amounts_of(simulated(client, number, JAN + 4 * HOUR_MS, FEB, ["re"])) == [
            ("re", "grad", "55", "15", "-40")
        ]
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=number, effective_from=ts(JAN))
        )
        assert (published.rerated_amount_delta, published.closed_amount_left_alone) == ("14.1668", "140")
        lines = {
            (customer_id, start_ms): [line.amount for line in preview(client, customer_id, start_ms).lines]
            for customer_id in ("re", "done", "ov")
            for start_ms in (JAN, FEB)
        }
        assert lines == {
            ("re", JAN): ["118.5"],
            ("re", FEB): ["61"],
            ("done", JAN): ["140"],
            ("done", FEB): ["21"],
            ("ov", JAN): ["38.6628"],
            ("ov", FEB): [],
        }
        assert Decimal("118.5") + Decimal("61") == Decimal("179.5")


def test_explain_pages_events_then_adjustments_summing_to_the_line_across_a_restart(
    server_factory: ServerFactory,
) -> None:
    """re's January line after the publish and one more event: events 70, 55, 2.5 (each at the amount it was
    charged), then adjustments +33.5 and -40, summing to 121, at every page size; tokens still page the same after
    kill -9 and a start on the same data; other customers', periods' and lines' tokens are refused."""
    server = server_factory(name="explain")
    with server.client() as client:
        re_rated_world(client)
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version_2(client), effective_from=ts(JAN))
        )
        ingest(client, "re", [("grad", "a", 10, JAN + 7 * HOUR_MS)])
        expected = [("70", False), ("55", False), ("2.5", False), ("33.5", True), ("-40", True)]
        for page_size in (1, 2, 3, 4, 5, 0):
            pages = explained_pages(client, "re", page_size)
            size = page_size or 100
            assert [e for page in pages for e in page] == expected, (page_size, pages)
            assert all(len(page) == size for page in pages[:-1]) and 0 < len(pages[-1]) <= size, (page_size, pages)
        first = explain(client, "re", 2)
        assert (first.line_amount, first.line_quantity) == ("121", "130")
        assert sum(Decimal(amount) for amount, _ in expected) == Decimal("121")
        at_adjustments = explain(client, "re", 3).next_page_token
        # done's January, closed before the publish: its one event, no adjustment.
        closed = explain(client, "done", 1)
        assert ([(e.amount, e.HasField("adjustment")) for e in closed.events], closed.line_amount) == (
            [("140", False)],
            "140",
        )
        assert closed.next_page_token == "", "a full last page ends the line"
        for what, call in {
            "another customer": lambda: explain(client, "done", 2, first.next_page_token),
            "another period": lambda: explain(client, "re", 2, first.next_page_token, FEB),
            "garbage": lambda: explain(client, "re", 2, "not-a-token"),
            "an invoice number": lambda: explain(client, "re", 2, "INV-00000001"),
        }.items():
            assert_page_token_refused(call, what)
        unknown = refusal(lambda: explain(client, "re", 2, line="grad;k=zz"))
        assert unknown.code == grpc.StatusCode.NOT_FOUND and "grad;k=zz" in unknown.details, unknown
        too_big = refusal(lambda: explain(client, "re", 1_001))
        assert [v.field for v in too_big.field_violations] == ["page_size"], too_big
    server.kill9()
    server.start()
    with server.client() as client:
        rest = explain(client, "re", 2, first.next_page_token)
        assert [(e.amount, e.HasField("adjustment")) for e in rest.events] == expected[2:4] and rest.next_page_token
        last = explain(client, "re", 2, at_adjustments)
        assert [(e.amount, e.adjustment.old_amount, e.adjustment.new_amount) for e in last.events] == [
            ("33.5", "70", "103.5"),
            ("-40", "55", "15"),
        ]
        assert last.next_page_token == ""
        # An event rated between two pages shows on a later one: 10 units at 08:00, by v2 from 130 to 140: 2.5.
        first_event = explain(client, "re", 1)
        ingest(client, "re", [("grad", "a", 10, JAN + 8 * HOUR_MS)])
        on = explain(client, "re", 0, first_event.next_page_token)
        assert [e.amount for e in on.events] == ["55", "2.5", "2.5", "33.5", "-40"], on
        assert on.line_amount == "123.5" == str(sum(Decimal(e.amount) for e in [*first_event.events, *on.events]))


def test_a_simulation_prices_every_bucket_by_the_version_even_where_a_later_one_prices_it(
    server_factory: ServerFactory,
) -> None:
    """As documented: SimulateVersion prices every bucket of the window by `version`. vip is in the cohort of
    version 2 (2 a unit, effective January 10th); version 3 (3 a unit, everyone) simulated from January 1st prices
    both of vip's units at 3, while publishing it effective January 1st leaves vip's January 12th unit to version 2,
    which took effect later for vip (3 + 2 = 5, not 6). plain has no later version: simulation and publish agree."""
    with server_factory(name="cohort").client() as client:
        catalogue(client)
        for customer_id in ("plain", "vip"):
            customer(client, customer_id, "USD", "1")
            ingest(client, customer_id, [("unit", "x", 1, JAN + HOUR_MS), ("unit", "x", 1, JAN + 11 * DAY_MS)])

        def draft(price: str) -> int:
            rate = pricing_pb2.Rate(product_id="unit", unit=pricing_pb2.UnitPrice(price=price, per_units="1"))
            request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=[rate])
            number: int = client.pricing.CreateDraftVersion(request).version
            return number

        cohort = pricing_pb2.Cohort(customer_ids=["vip"])
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=CARD, version=draft("2"), effective_from=ts(JAN + 9 * DAY_MS), cohort=cohort
            )
        )
        everyone = draft("3")
        assert amounts_of(simulated(client, everyone, JAN, FEB)) == [
            ("plain", "unit", "0.002", "6", "5.998"),
            ("vip", "unit", "2.001", "6", "3.999"),
        ]
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=everyone, effective_from=ts(JAN))
        )
        assert [(c, [line.amount for line in preview(client, c).lines]) for c in ("plain", "vip")] == [
            ("plain", ["6"]),
            ("vip", ["5"]),
        ]


def test_a_page_of_large_customers_stays_within_what_a_client_reads_by_default(server_factory: ServerFactory) -> None:
    """200 customers with 64 attributes of 256-byte keys and values each (about 33 KB a customer, 6.6 MB in all):
    page_size 1,000 used to answer them in one 6.6 MB message, over the 4 MiB a gRPC client reads by default (and
    560 of them passed the server's own 16 MiB limit: RESOURCE_EXHAUSTED for every caller, every page). Each page
    now stays within 4 MiB, and paging on from its token lists every customer exactly once, in id order."""
    server = server_factory()
    ids = [f"big-{index:03d}" for index in range(200)]
    with server.client() as admin:
        for customer_id in ids:
            attributes = {f"{key:03d}".ljust(256, "k"): "v" * 256 for key in range(64)}
            admin.contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id, attributes=attributes)
            )
        listed: list[str] = []
        token, pages = "", 0
        while True:
            page = admin.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=1_000, page_token=token))
            assert page.ByteSize() <= 4 * 1024 * 1024, page.ByteSize()
            listed += [c.id for c in page.customers]
            token, pages = page.next_page_token, pages + 1
            if not token:
                break
            assert token == page.customers[-1].id
        assert listed == ids and pages == 2, (pages, len(listed))
