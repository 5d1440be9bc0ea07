"""Wire audit of pilot cohorts combined with other features (README "Cohorts", pricing.proto Cohort and
PublishVersionRequest.cohort): a retroactive cohort publish by attribute with a contract override, Authorize and
AuthorizeBatches estimates in and out of the cohort, ExplainLineItem, ListVersions/GetVersion, SimulateVersion,
a rollback after it, customers created after the publish, and a kill -9. Every amount is computed by hand in the
docstrings, never read back from the server.

Catalogue: product `units` (event type `work`, SUM of `n`, no pricing dimension), card `cc` in USD, version 1
UNIT 1 from s = this hour - 4h. Customers `a` and `c` (segment=ent) and `b` (segment=smb), contracts from s."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, refusal, release, serving
from tests.serverproc import ServerProcess
from tests.test_audit_contracts_wire import event
from tests.test_audit_pricing_wire import month_start_ms, this_hour_ms

CARD = "cc"
H = this_hour_ms()
S = H - 4 * HOUR_MS
LAST_MONTH = month_start_ms(1)
# Instants above are taken at import: conftest.py skips the module once a calendar month has turned since.
pytestmark = pytest.mark.clock_at_import


# Each test prices its own product (event type `work` + the card's id's tail) on its own card.
PRODUCTS = {
    "cc": ("units", "work"),
    "cr": ("units-r", "work-r"),
    "cn": ("units-n", "work-n"),
    "cp": ("units-p", "work-p"),
    "ct": ("units-t", "work-t"),
    "cs": ("units-s", "work-s"),
    "cg": ("units-g", "work-g"),
    "ce": ("units-e", "work-e"),
    "cq": ("units-q", "work-q"),
    "cb": ("units-b", "work-b"),
}


def _unit(card: str, price: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=PRODUCTS[card][0], unit=pricing_pb2.UnitPrice(price=price))


def _draft(client: TariffClient, base: int, price: str, card: str = CARD) -> int:
    rates = [_unit(card, price)]
    request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, based_on_version=base, upsert_rates=rates)
    return int(client.pricing.CreateDraftVersion(request).version)


def _publish(
    client: TariffClient, version: int, from_ms: int, cohort: pricing_pb2.Cohort | None = None, card: str = CARD
) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=version, effective_from=stamp(from_ms))
    if cohort is not None:
        request.cohort.CopyFrom(cohort)
    response: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
    return response


def _customer(client: TariffClient, customer_id: str, segment: str, card: str = CARD, start_ms: int = S) -> None:
    client.contracts.CreateCustomer(
        contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id, attributes={"segment": segment})
    )
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"k-{customer_id}", customer_id=customer_id, rate_card_id=card, starting_at=stamp(start_ms)
        )
    )


def _work(customer_id: str, transaction_id: str, at_ms: int, n: float, card: str = CARD) -> usage_pb2.UsageEvent:
    return event(transaction_id, customer_id, PRODUCTS[card][1], n, at_ms)


def _ingest(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch(list(events), batch_id=f"b-{events[0].transaction_id}")
    assert ack.accepted == len(events), ack.rejected


def _charges(client: TariffClient, customer_id: str) -> str:
    return str(client.get_balance(customer_id).period_charges)


def _catalogue(client: TariffClient) -> None:
    for card, (product_id, event_type) in PRODUCTS.items():
        product = pricing_pb2.Product(id=product_id, event_type=event_type, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="USD"))
        _draft(client, 0, "1", card)
        _publish(client, 1, LAST_MONTH if card == "cp" else S, card=card)
    for customer_id, segment in (("a", "ent"), ("b", "smb"), ("c", "ent")):
        _customer(client, customer_id, segment)
    override = contracts_pb2.PriceOverride(id="half", product_id="units", multiplier="0.5")
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k-a", override=override))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("audit-cohorts-combo")
    # Snapshots every few records, so that each kill -9 recovers from a snapshot and a journal tail.
    yield from serving(ServerProcess(root / "data", extra_args=["--snapshot-every", "3"]), _catalogue)


def _estimates(client: TariffClient, customer_ids: list[str], card: str = CARD) -> list[str]:
    """AuthorizeBatches' estimated_cost of 2 units for each customer."""
    event_type = PRODUCTS[card][1]
    requests = [
        balance_pb2.AuthorizeRequest(request_id=i, customer_id=i, event_type=event_type, values={"n": 2})
        for i in customer_ids
    ]
    results = list(client._raw_balance.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=requests)])))
    return [r.estimated_cost for r in results[0].responses]


def _line(client: TariffClient, customer_id: str) -> invoices_pb2.InvoiceLine:
    invoice = client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id))
    (line,) = invoice.lines
    found: invoices_pb2.InvoiceLine = line
    return found


def _explained(client: TariffClient, customer_id: str) -> list[tuple[str, int, str]]:
    """(transaction_id, version, amount) of every entry of the customer's one line (period from s)."""
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=customer_id, period_start=stamp(S), line_id=_line(client, customer_id).line_id
    )
    return [(e.transaction_id, e.version, e.amount) for e in client.invoices.ExplainLineItem(request).events]


def test_a_retroactive_cohort_publish_with_an_override_estimates_explains_and_survives_a_kill(
    server: ServerProcess,
) -> None:
    """Usage on v1 (UNIT 1): a 10 at s and 10 at s+1h, with its 0.5 multiplier: 5 + 5 = 10; b 10 at s+1h: 10;
    c 10 at s+2h: 10. Version 2 (UNIT 3) published for the cohort segment=ent from s+1h re-rates a's s+1h bucket
    (5 -> 10 x 3 x 0.5 = 15) and c's s+2h bucket (10 -> 30): 2 customers, 2 buckets, 2 events, net +30. a is 20,
    b stays 10, c is 30. Estimates now for n=2: a 2 x 3 x 0.5 = 3, b 2, c 6 (Authorize and AuthorizeBatches
    alike). a's line: v1 quantity 10 amount 5, v2 quantity 10 amount 15, one adjustment old [1] new 2, 5 -> 15.
    GetVersion at now answers v1 (outside cohorts), the card's current_version 1, ListVersions shows v2's
    cohort. d (segment=ent) created after the publish joins (attributes only): 2 units now cost 6; e (smb) 2."""
    with server.client() as client:
        _ingest(
            client,
            _work("a", "a1", S + 1, 10),
            _work("a", "a2", S + HOUR_MS + 1, 10),
            _work("b", "b1", S + HOUR_MS + 2, 10),
            _work("c", "c1", S + 2 * HOUR_MS + 1, 10),
        )
        assert [_charges(client, i) for i in "abc"] == ["10", "10", "10"]
        v2 = _draft(client, 1, "3")
        answer = _publish(client, v2, S + HOUR_MS, pricing_pb2.Cohort(attributes={"segment": "ent"}))
        counts = (answer.customers_rerated, answer.buckets_rerated, answer.events_rerated, answer.rerated_amount_delta)
        assert counts == (2, 2, 2, "30")
        assert [_charges(client, i) for i in "abc"] == ["20", "10", "30"]
        assert [client.authorize(i, "work", values={"n": 2}).estimated_cost for i in "abc"] == ["3", "2", "6"]
        assert _estimates(client, ["a", "b", "c"]) == ["3", "2", "6"]
        streamed = client._raw_balance.AuthorizeStream(
            iter(
                [
                    balance_pb2.AuthorizeRequest(request_id=i, customer_id=i, event_type="work", values={"n": 2})
                    for i in "abc"
                ]
            )
        )
        assert [r.estimated_cost for r in streamed] == ["3", "2", "6"]
        held = balance_pb2.AuthorizeRequest(
            request_id="hold-a", customer_id="a", event_type="work", values={"n": 2}, reserve=True, reservation_id="h-a"
        )
        plain = balance_pb2.AuthorizeRequest(request_id="c", customer_id="c", event_type="work", values={"n": 2})
        batch = balance_pb2.AuthorizeBatch(requests=[held, plain])
        (result,) = list(client._raw_balance.AuthorizeBatches(iter([batch])))
        assert [(r.estimated_cost, r.reservation_id) for r in result.responses] == [("3", "h-a"), ("6", "")]
        release = balance_pb2.ReleaseReservationRequest(customer_id="a", reservation_id="h-a")
        client.balance.ReleaseReservation(release)
        line = _line(client, "a")
        assert [(p.version, p.quantity, p.amount) for p in line.prices] == [(1, "10", "5"), (2, "10", "15")]
        assert [(list(j.old_versions), j.new_version, j.old_amount, j.new_amount) for j in line.adjustments] == [
            ([1], 2, "5", "15")
        ]
        assert _explained(client, "a") == [
            ("a1", 1, "5"),
            ("a2", 1, "5"),
            ("", 2, "10"),
        ]
        at_now = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=CARD, at=stamp(H + 1)))
        assert at_now.version == 1
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert card.current_version == 1
        listed = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
        assert [dict(v.cohort.attributes) for v in listed] == [{}, {"segment": "ent"}]
        diff = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=1, to_version=v2)
        )
        assert [(f.path, f.old_price, f.new_price) for r in diff.rates for f in r.fields] == [("unit.price", "1", "3")]
        # Prices are compared, not cohorts: a draft based on the cohort's version, for no cohort yet, diffs empty.
        based = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=v2)
        ).version
        same = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=v2, to_version=based)
        )
        assert (list(same.parameters), list(same.rates)) == ([], [])
        _customer(client, "d", "ent")
        _customer(client, "e", "smb")
        assert _estimates(client, ["d", "e"]) == ["6", "2"]
        server.kill9()
        server.restart()
    with server.client() as client:
        assert [_charges(client, i) for i in "abc"] == ["20", "10", "30"]
        assert _estimates(client, ["a", "b", "c", "d", "e"]) == ["3", "2", "6", "6", "2"]
        assert _explained(client, "a") == [("a1", 1, "5"), ("a2", 1, "5"), ("", 2, "10")]
        assert _explained(client, "b") == [("b1", 1, "10")]
        listed = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
        assert [dict(v.cohort.attributes) for v in listed] == [{}, {"segment": "ent"}, {}]  # v3: the draft


def _rollback(client: TariffClient, card: str, to_version: int, from_ms: int) -> pricing_pb2.PublishVersionResponse:
    request = pricing_pb2.RollbackRateCardRequest(
        rate_card_id=card, to_version=to_version, effective_from=stamp(from_ms)
    )
    response: pricing_pb2.PublishVersionResponse = client.pricing.RollbackRateCard(request)
    return response


def _rerated(answer: pricing_pb2.PublishVersionResponse) -> tuple[int, int, int, str]:
    return (answer.customers_rerated, answer.buckets_rerated, answer.events_rerated, answer.rerated_amount_delta)


def test_rollbacks_after_a_cohort_publish_leave_members_their_newer_cohort_version_only(server: ServerProcess) -> None:
    """Card cr: v1 UNIT 1 from s, v2 UNIT 2 for everyone from s+1h, v3 UNIT 3 for the cohort [ra] from s+2h, all
    before usage. ra and rb each use 10 units at s+1h, s+2h and s+3h: ra 20 + 30 + 30 = 80, rb 20 + 20 + 20 = 60.
    Rollback to v1 from s+1h: v4 (v1's prices) replaces v2 outside cohorts (rollback_from_version 2); ra keeps v3
    (effective s+2h, newer than s+1h) for s+2h and s+3h: ra 10 + 30 + 30 = 70 (-10), rb 30 (-30): 2 customers,
    4 buckets, 4 events, -40. Now (s+4h) 2 units: ra 6 (v3), rb 2 (v4); GetVersion(now) 4.
    Rollback to v2 from s+3h: v5 (v2's prices) replaces v4; ra's v3 (s+2h) is older than s+3h, so v5 prices ra's
    s+3h too: ra 10 + 30 + 20 = 60 (-10), rb 10 + 10 + 20 = 40 (+10): 2 customers, 2 buckets, 2 events, 0. Now 2
    units cost 4 for both. ra's line: v2's 10 units (20), v3's 10 (30), v5's 10 (30 at v3, re-rated to 20 by v5),
    adjustments s+1h [2] -> 4 20 -> 10, s+3h [3] -> 5 30 -> 20. The same after a kill -9. Then a rollback to v3,
    the cohort's version, from now: v6, a copy of v3's prices for everyone outside cohorts (rollback_from 5):
    2 units cost 6 for both."""
    card = "cr"
    with server.client() as client:
        for customer_id in ("ra", "rb"):
            _customer(client, customer_id, "any", card)
        assert _publish(client, _draft(client, 1, "2", card), S + HOUR_MS, card=card).version.version == 2
        v3 = _publish(
            client, _draft(client, 2, "3", card), S + 2 * HOUR_MS, pricing_pb2.Cohort(customer_ids=["ra"]), card
        )
        assert v3.version.version == 3
        _ingest(
            client,
            *[_work(i, f"{i}{h}", S + h * HOUR_MS + 1, 10, card) for i in ("ra", "rb") for h in (1, 2, 3)],
        )
        assert [_charges(client, i) for i in ("ra", "rb")] == ["80", "60"]
        first = _rollback(client, card, 1, S + HOUR_MS)
        assert (first.version.version, first.version.rollback_from_version, first.version.HasField("cohort")) == (
            4,
            2,
            False,
        )
        assert _rerated(first) == (2, 4, 4, "-40")
        assert [_charges(client, i) for i in ("ra", "rb")] == ["70", "30"]
        assert _estimates(client, ["ra", "rb"], card) == ["6", "2"]
        at_now = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=card, at=stamp(H + 1)))
        assert at_now.version == 4
        second = _rollback(client, card, 2, S + 3 * HOUR_MS)
        assert (second.version.version, second.version.rollback_from_version) == (5, 4)
        assert _rerated(second) == (2, 2, 2, "0")
        assert [_charges(client, i) for i in ("ra", "rb")] == ["60", "40"]
        assert _estimates(client, ["ra", "rb"], card) == ["4", "4"]
        line = _line(client, "ra")
        assert [(p.version, p.quantity, p.amount) for p in line.prices] == [
            (3, "10", "30"),
            (4, "10", "10"),
            (5, "10", "20"),
        ]
        adjustments = [(list(j.old_versions), j.new_version, j.old_amount, j.new_amount) for j in line.adjustments]
        assert adjustments == [([2], 4, "20", "10"), ([3], 5, "30", "20")]
        server.kill9()
        server.restart()
    with server.client() as client:
        assert [_charges(client, i) for i in ("ra", "rb")] == ["60", "40"]
        assert _estimates(client, ["ra", "rb"], card) == ["4", "4"]
        # A rollback to the cohort's version: its copy (v6, UNIT 3) is for everyone outside cohorts from now.
        third = _rollback(client, card, 3, H)
        copy = third.version
        assert (copy.version, copy.rollback_to_version, copy.rollback_from_version) == (6, 3, 5)
        assert (copy.HasField("cohort"), _rerated(third)) == (False, (0, 0, 0, "0"))
        assert _estimates(client, ["ra", "rb"], card) == ["6", "6"]


def _created_at_ms(client: TariffClient, customer_id: str) -> int:
    customer = client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=customer_id))
    return int(customer.created_at.ToMilliseconds())


def _simulated(client: TariffClient, card: str, version: int, customer_id: str) -> tuple[str, str, str]:
    request = pricing_pb2.SimulateVersionRequest(
        rate_card_id=card,
        version=version,
        period_start=stamp(S + HOUR_MS),
        period_end=stamp(H + HOUR_MS),
        customer_ids=[customer_id],
    )
    (amount,) = client.pricing.SimulateVersion(request).amounts
    return amount.current_amount, amount.simulated_amount, amount.delta


def test_a_cohort_by_creation_time_attribute_and_id_takes_in_later_customers_and_contracts(
    server: ServerProcess,
) -> None:
    """Card cn, v1 UNIT 1 from s. n1 (ent) with a contract; nx (ent) without one yet. v2 (UNIT 5) for the cohort
    {segment=ent, created strictly after n1's creation} from s+1h: n1 is not in it (created at that instant), nx
    is in (created after n1) but has no contract yet. v3 (UNIT 7) for the cohort [nx] from s+1h (later
    published: it wins for nx). Then n2 (ent) and n3 (smb) are created, and every one of n2, n3 and nx gets a
    contract from s. 10 units each at s+1h (late): n1 10 (v1), n2 50 (v2), n3 10 (v1), nx 70 (v3). 2 units now:
    n1 2, n2 10, n3 2, nx 14. A 0.5 multiplier added to n2's contract: 2 units now 5; 10 more at s+2h: 25, n2 75.
    SimulateVersion of v1 over [s+1h, now+1h) for n2: current 75, simulated 10 x 0.5 + 10 x 0.5 = 10 (overrides
    as they are, as a publish re-prices), delta -65; of v2 (a published cohort version) for n1, outside its
    cohort: current 10, simulated 50, delta 40. ListVersions: v2 with its attributes and creation time, v3 with
    its ids. The same after a kill -9."""
    card = "cn"
    with server.client() as client:
        _customer(client, "n1", "ent", card)
        client.contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(id="nx", name="nx", attributes={"segment": "ent"})
        )
        t1 = _created_at_ms(client, "n1")
        assert _created_at_ms(client, "nx") > t1
        by_time = pricing_pb2.Cohort(attributes={"segment": "ent"}, customers_created_after=stamp(t1))
        assert _publish(client, _draft(client, 1, "5", card), S + HOUR_MS, by_time, card).customers_rerated == 0
        by_id = pricing_pb2.Cohort(customer_ids=["nx"])
        assert _publish(client, _draft(client, 1, "7", card), S + HOUR_MS, by_id, card).version.version == 3
        _customer(client, "n2", "ent", card)
        _customer(client, "n3", "smb", card)
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(id="k-nx", customer_id="nx", rate_card_id=card, starting_at=stamp(S))
        )
        ids = ["n1", "n2", "n3", "nx"]
        _ingest(client, *[_work(i, f"{i}-1", S + HOUR_MS + 1, 10, card) for i in ids])
        assert [_charges(client, i) for i in ids] == ["10", "50", "10", "70"]
        assert _estimates(client, ids, card) == ["2", "10", "2", "14"]
        override = contracts_pb2.PriceOverride(id="half-n2", product_id=PRODUCTS[card][0], multiplier="0.5")
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k-n2", override=override))
        assert _estimates(client, ["n2"], card) == ["5"]
        _ingest(client, _work("n2", "n2-2", S + 2 * HOUR_MS + 1, 10, card))
        assert _charges(client, "n2") == "75"
        assert [(p.version, p.quantity, p.amount) for p in _line(client, "n2").prices] == [(2, "20", "75")]
        assert [(p.version, p.quantity, p.amount) for p in _line(client, "nx").prices] == [(3, "10", "70")]
        assert _explained(client, "n2") == [("n2-1", 2, "50"), ("n2-2", 2, "25")]
        assert _simulated(client, card, 1, "n2") == ("75", "10", "-65")
        assert _simulated(client, card, 2, "n1") == ("10", "50", "40")
        listed = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=card)).versions
        cohorts = [
            (list(v.cohort.customer_ids), dict(v.cohort.attributes), v.cohort.customers_created_after.ToMilliseconds())
            for v in listed
        ]
        assert cohorts == [([], {}, 0), ([], {"segment": "ent"}, t1), (["nx"], {}, 0)]
        server.kill9()
        server.restart()
    with server.client() as client:
        assert [_charges(client, i) for i in ids] == ["10", "75", "10", "70"]
        assert _estimates(client, ids, card) == ["2", "5", "2", "14"]


def test_a_cohort_publish_over_a_closed_period_counts_only_its_members_usage_left_alone(server: ServerProcess) -> None:
    """Card cp, v1 UNIT 1 from last month's start m. p1, p2 and p3 with contracts from m (calendar months); p3's
    contract has a price override of 4. 10 units each at m+1h+1 (last month) and at s+1h+1 (this month): p1 10 +
    10, p2 10 + 10, p3 40 + 40. Last month's periods of p1 and p2 are closed. v2 (UNIT 2) for the cohort [p1, p3]
    from m: p1's last-month bucket (10) is left alone, closed: 1 bucket, 1 event, 10 (p2's closed usage is no
    member's, not counted); p1's this-month bucket 10 -> 20; p3's two buckets change version, not amount (the
    override's 4 replaces either price): 2 customers, 3 buckets, 3 events, net +10. p2 keeps 10, its line no
    adjustment; p3's lines each one adjustment [1] -> 2, 40 -> 40."""
    card = "cp"
    if month_start_ms(0) > S:
        pytest.skip("s lies in last month during the first hours of a month: this month's usage would be last month's")
    with server.client() as client:
        for customer_id in ("p1", "p2", "p3"):
            _customer(client, customer_id, "any", card, LAST_MONTH)
        override = contracts_pb2.PriceOverride(id="four", product_id=PRODUCTS[card][0], price="4")
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k-p3", override=override))
        ids = ["p1", "p2", "p3"]
        _ingest(
            client,
            *[_work(i, f"{i}-{at}", at + 1, 10, card) for i in ids for at in (LAST_MONTH + HOUR_MS, S + HOUR_MS)],
        )
        for customer_id in ("p1", "p2"):
            client.invoices.ClosePeriod(
                invoices_pb2.ClosePeriodRequest(customer_id=customer_id, period_start=stamp(LAST_MONTH))
            )
        assert [_charges(client, i) for i in ids] == ["10", "10", "40"]
        answer = _publish(
            client, _draft(client, 1, "2", card), LAST_MONTH, pricing_pb2.Cohort(customer_ids=["p3", "p1"]), card
        )
        assert _rerated(answer) == (2, 3, 3, "10")
        closed = (answer.closed_buckets_left_alone, answer.closed_events_left_alone, answer.closed_amount_left_alone)
        assert closed == (1, 1, "10")
        assert list(answer.version.cohort.customer_ids) == ["p1", "p3"]
        assert [_charges(client, i) for i in ids] == ["20", "10", "40"]
        assert list(_line(client, "p2").adjustments) == []
        for period_start in (LAST_MONTH, S):
            invoice = client.invoices.PreviewInvoice(
                invoices_pb2.PreviewInvoiceRequest(customer_id="p3", period_start=stamp(period_start))
            )
            (line,) = invoice.lines
            adjustments = [(list(j.old_versions), j.new_version, j.old_amount, j.new_amount) for j in line.adjustments]
            assert (line.amount, adjustments) == ("40", [([1], 2, "40", "40")])


def test_customers_created_after_cohort_publishes_that_split_and_grew_timelines_get_their_own_versions(
    server: ServerProcess,
) -> None:
    """Card ct, v1 UNIT 1 from s. m1 (group b), m2 and o1 (group c) share one timeline. v2 (2) for [m1, m2] from
    s+1h; v3 (3) for [m1] from s+2h; v4 (4) for the cohort group=c (m2, o1) from s+3h. 2 units now (s+4h): m1
    2 x 3 = 6 (v3), m2 8 (v4), o1 8 (v4). Created afterwards: x (group a, in no cohort) 2 (v1 only, though o1's
    timeline, which held v1 only, took v4 in), y (group c) 8 (v1 and v4). Late usage of 10 at s+3h for x and y:
    10 and 40. The same after a kill -9."""
    card = "ct"
    groups = {"m1": "b", "m2": "c", "o1": "c", "x": "a", "y": "c"}
    with server.client() as client:

        def customer(customer_id: str) -> None:
            client.contracts.CreateCustomer(
                contracts_pb2.CreateCustomerRequest(
                    id=customer_id, name=customer_id, attributes={"group": groups[customer_id]}
                )
            )
            client.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    id=f"k-{customer_id}", customer_id=customer_id, rate_card_id=card, starting_at=stamp(S)
                )
            )

        for customer_id in ("m1", "m2", "o1"):
            customer(customer_id)
        cohorts = [
            pricing_pb2.Cohort(customer_ids=["m1", "m2"]),
            pricing_pb2.Cohort(customer_ids=["m1"]),
            pricing_pb2.Cohort(attributes={"group": "c"}),
        ]
        for hours, cohort in enumerate(cohorts, start=1):
            _publish(client, _draft(client, 1, str(hours + 1), card), S + hours * HOUR_MS, cohort, card)
        assert _estimates(client, ["m1", "m2", "o1"], card) == ["6", "8", "8"]
        customer("x")
        customer("y")
        assert _estimates(client, ["x", "y"], card) == ["2", "8"]
        _ingest(client, *[_work(i, f"{i}-late", S + 3 * HOUR_MS + 1, 10, card) for i in ("x", "y")])
        assert [_charges(client, i) for i in ("x", "y")] == ["10", "40"]
        server.kill9()
        server.restart()
    with server.client() as client:
        assert _estimates(client, ["m1", "m2", "o1", "x", "y"], card) == ["6", "8", "8", "2", "8"]
        assert [_charges(client, i) for i in ("x", "y")] == ["10", "40"]


def _invoice_amount(client: TariffClient, customer_id: str, at_ms: int) -> str:
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=stamp(at_ms))
    return str(sum((Decimal(line.amount) for line in client.invoices.PreviewInvoice(request).lines), Decimal(0)))


def test_a_cohort_member_switching_contracts_keeps_its_cohort_version_on_both(server: ServerProcess) -> None:
    """Card cs, v1 UNIT 1 from s. w1 has contract k-w1 from s to s+2h and k-w1b from s+2h, on the card; w2 one
    from s, all on one timeline. v2 (UNIT 5) for the cohort [w1] from s+1h, before usage. 10 units each at
    s+1h+1 and s+2h+1: w1 50 in k-w1's period and 50 in k-w1b's, w2 10 + 10 = 20. 2 units now: w1 10, w2 2. The
    same after a kill -9."""
    card = "cs"
    with server.client() as client:
        _customer(client, "w2", "any", card)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="w1", name="w1"))
        for contract_id, start, end in (("k-w1", S, S + 2 * HOUR_MS), ("k-w1b", S + 2 * HOUR_MS, None)):
            request = contracts_pb2.CreateContractRequest(
                id=contract_id, customer_id="w1", rate_card_id=card, starting_at=stamp(start)
            )
            if end is not None:
                request.ending_before.CopyFrom(stamp(end))
            client.contracts.CreateContract(request)
        _publish(client, _draft(client, 1, "5", card), S + HOUR_MS, pricing_pb2.Cohort(customer_ids=["w1"]), card)
        _ingest(client, *[_work(i, f"{i}-{h}", S + h * HOUR_MS + 1, 10, card) for i in ("w1", "w2") for h in (1, 2)])
        amounts = [_invoice_amount(client, "w1", S), _invoice_amount(client, "w1", H), _invoice_amount(client, "w2", H)]
        assert amounts == ["50", "50", "20"]
        assert _estimates(client, ["w1", "w2"], card) == ["10", "2"]
        server.kill9()
        server.restart()
    with server.client() as client:
        assert _estimates(client, ["w1", "w2"], card) == ["10", "2"]
        amounts = [_invoice_amount(client, "w1", S), _invoice_amount(client, "w1", H), _invoice_amount(client, "w2", H)]
        assert amounts == ["50", "50", "20"]


def _graduated(card: str, first: str, flat: str, then: str, then_flat: str) -> pricing_pb2.Rate:
    """GRADUATED: up to 100 units at `first` a unit with a flat `flat`, beyond at `then` with a flat `then_flat`."""
    tiers = [
        pricing_pb2.Tier(up_to="100", unit_price=first, flat_price=flat),
        pricing_pb2.Tier(unit_price=then, flat_price=then_flat),
    ]
    curve = pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers)
    return pricing_pb2.Rate(product_id=PRODUCTS[card][0], tiered=curve)


def _draft_rate(client: TariffClient, card: str, base: int, rate: pricing_pb2.Rate) -> int:
    request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, based_on_version=base, upsert_rates=[rate])
    return int(client.pricing.CreateDraftVersion(request).version)


def test_a_retroactive_cohort_publish_carries_a_late_events_earlier_hours_for_its_members_only(
    server: ServerProcess,
) -> None:
    """README "Changing prices safely", for a cohort. Card cg: v2 GRADUATED 1 a unit to 100 + 10, then 0.5 + 5
    (p(q) = q + 10 to 100, then 115 + 0.5 (q - 100)) for everyone from s, before usage. g1 (a 0.5 multiplier), g2
    and g3 each: 50 units at s, 100 at s+2h, then 50 at s+30m arriving last: 60, 80, 25 = 165 (g1 30, 40, 12.5 =
    82.5). v3 with the same prices for the cohort [g1, g2] from s+1h keeps s+2h at 80 (g1 40): s's bucket, 100
    units, was charged 85 where on time it is p(100) = 110, and s+2h's p(200) - p(100) = 55 carries the 25: 2
    customers, 2 buckets (their version changed), 2 events, 0. v4 for [g1, g2] from s+1h, 0.5 a unit to 100 + 10,
    then 0.25 + 5 (p'(100) = 60, p'(200) = 90): g2's s+2h is 90 - 60 + 25 = 55 (-25), its line 140; g1's 0.5 x
    30 + 12.5 = 27.5 (-12.5), its line 70: -37.5. g3, outside the cohort, keeps 165, no adjustment."""
    card = "cg"
    with server.client() as client:
        for customer_id in ("g1", "g2", "g3"):
            _customer(client, customer_id, "any", card)
        override = contracts_pb2.PriceOverride(id="half-g1", product_id=PRODUCTS[card][0], multiplier="0.5")
        client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="k-g1", override=override))
        _publish(client, _draft_rate(client, card, 1, _graduated(card, "1", "10", "0.5", "5")), S, card=card)
        ids = ["g1", "g2", "g3"]
        _ingest(client, *[_work(i, f"{i}-a", S, 50, card) for i in ids])
        _ingest(client, *[_work(i, f"{i}-b", S + 2 * HOUR_MS, 100, card) for i in ids])
        _ingest(client, *[_work(i, f"{i}-c", S + HOUR_MS // 2, 50, card) for i in ids])
        assert [_charges(client, i) for i in ids] == ["82.5", "165", "165"]
        members = pricing_pb2.Cohort(customer_ids=["g1", "g2"])
        same_prices = _draft_rate(client, card, 2, _graduated(card, "1", "10", "0.5", "5"))
        same = _publish(client, same_prices, S + HOUR_MS, members, card)
        assert _rerated(same) == (2, 2, 2, "0")
        assert [_charges(client, i) for i in ids] == ["82.5", "165", "165"]
        cheaper = _draft_rate(client, card, 2, _graduated(card, "0.5", "10", "0.25", "5"))
        assert _rerated(_publish(client, cheaper, S + HOUR_MS, members, card)) == (2, 2, 2, "-37.5")
        assert [_charges(client, i) for i in ids] == ["70", "140", "165"]
        assert list(_line(client, "g3").adjustments) == []
        adjustments = [(list(j.old_versions), j.new_version, j.new_amount) for j in _line(client, "g2").adjustments]
        assert adjustments == [([2], 3, "80"), ([3], 4, "55")]


def test_an_empty_cohort_is_everyone_and_a_cohort_retried_in_another_spelling_is_the_same(
    server: ServerProcess,
) -> None:
    """README Cohorts, pricing.proto RateCardVersion.cohort, architecture §5 Cohorts: a cohort with no criterion
    is everyone (stored as no cohort: the card's current version, no cohort shown; a draft shows none either); a
    retry with the same cohort answers as the first call, the ids in another order and repeated,
    customers_created_after finer than a millisecond (dropped, as README "Times" says) the same cohort; another
    cohort is FAILED_PRECONDITION. The audit entry's diff holds the cohort as requested, the version it
    normalised. Card ce: e1, e2; v2 (UNIT 2) with an empty cohort from s+1h; v3 (UNIT 3) for [e1, e2] created
    after s from s+2h. 2 units now: 6 for both; GetVersion(now) 2."""
    card = "ce"
    with server.client() as client:
        for customer_id in ("e1", "e2"):
            _customer(client, customer_id, "any", card)
        v2 = _publish(client, _draft(client, 1, "2", card), S + HOUR_MS, pricing_pb2.Cohort(), card)
        assert not v2.version.HasField("cohort")
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=card)).current_version == 2
        after = stamp(S)
        cohort = pricing_pb2.Cohort(customer_ids=["e2", "e1"], customers_created_after=after)
        v3 = _publish(client, _draft(client, 2, "3", card), S + 2 * HOUR_MS, cohort, card)
        assert list(v3.version.cohort.customer_ids) == ["e1", "e2"]
        entry = client.pricing.GetAuditLog(
            pricing_pb2.GetAuditLogRequest(target=f"rate_card/{card}/version/3", action="PublishVersion")
        ).entries[0]
        # The journaled command (and so the audit diff) holds the cohort as requested; the version, normalised.
        assert json.loads(entry.diff)["cohort"]["customer_ids"] == ["e2", "e1"]
        finer = pricing_pb2.Cohort(customer_ids=["e1", "e2", "e1"], customers_created_after=after)
        finer.customers_created_after.nanos += 400_000
        again = _publish(client, 3, S + 2 * HOUR_MS, finer, card)
        assert (again.version.version, again.version.published_at) == (3, v3.version.published_at)
        assert again.version.cohort.customers_created_after == after  # to the millisecond, as stored
        draft = client.pricing.GetVersion(
            pricing_pb2.GetVersionRequest(rate_card_id=card, version=_draft(client, 3, "4", card))
        )
        assert (draft.state, draft.HasField("cohort")) == (pricing_pb2.DRAFT, False)
        code, _ = refusal(lambda: _publish(client, 3, S + 2 * HOUR_MS, pricing_pb2.Cohort(customer_ids=["e1"]), card))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert _estimates(client, ["e1", "e2"], card) == ["6", "6"]
        at_now = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id=card, at=stamp(H + 1)))
        assert at_now.version == 2


def test_usage_a_publish_cannot_re_rate_refuses_only_the_publishes_that_concern_its_customer(
    server: ServerProcess,
) -> None:
    """pricing.proto PublishVersionRequest.effective_from: usage in an hour holding a period boundary off the hour
    refuses a publish that would re-rate it, "the customers the publish concerns". Card cq: q1's contract from s,
    q2's from s+30m (its period starts off the hour); 10 units each at s+40m. v2 (UNIT 2) for the cohort [q1]
    from s re-rates q1 only (1 customer, 1 bucket, 1 event, +10): q2's hour is not its to price. v3 (UNIT 3) for
    everyone from s is FAILED_PRECONDITION naming q2, changing nothing: q1 20, q2 10."""
    card = "cq"
    with server.client() as client:
        _customer(client, "q1", "any", card)
        _customer(client, "q2", "any", card, S + HOUR_MS // 2)
        _ingest(client, *[_work(i, f"{i}-1", S + 40 * 60_000, 10, card) for i in ("q1", "q2")])
        cohort = pricing_pb2.Cohort(customer_ids=["q1"])
        assert _rerated(_publish(client, _draft(client, 1, "2", card), S, cohort, card)) == (1, 1, 1, "10")
        v3 = _draft(client, 1, "3", card)
        code, details = refusal(lambda: _publish(client, v3, S, card=card))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and 'customer "q2"' in details, details
        assert [_charges(client, i) for i in ("q1", "q2")] == ["20", "10"]


def test_a_retroactive_cohort_publish_settles_its_members_credit_again_and_blocks_them_only(
    server: ServerProcess,
) -> None:
    """Card cb, BLOCK contracts from s, each customer a promotional grant of 25. k1 and k2 use 10 units at s and 10
    at s+1h: 20 drawn, 5 left each. v2 (UNIT 3) for the cohort [k1] from s+1h: k1's s+1h bucket 10 -> 30, charges
    40: the grant pays 25, overage 15 (a rise draws in burn order, the rest overage; BLOCK takes it as ALLOW does).
    k2 keeps 5 credits, charges 20, no overage. Holds of 2 units made now (before the publish, 2 each, 3 left
    available): the usage, dated before the hold's hour, draws first, so k1's hold shrinks to the credit left, 0;
    k2's still holds 2. Then released. Authorize 2 units now: k1 costs 6 with 0 available, denied
    INSUFFICIENT_CREDIT; k2 costs 2 with 5 available, allowed."""
    card = "cb"
    with server.client() as client:
        for customer_id in ("k1", "k2"):
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
            client.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    id=f"k-{customer_id}",
                    customer_id=customer_id,
                    rate_card_id=card,
                    starting_at=stamp(S),
                    overage_policy=contracts_pb2.BLOCK,
                    overage_price="1",
                    currency="USD",
                )
            )
            grant = contracts_pb2.Grant(
                id=f"g-{customer_id}", contract_id=f"k-{customer_id}", kind=contracts_pb2.PROMOTIONAL, amount="25"
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        ids = ["k1", "k2"]
        _ingest(client, *[_work(i, f"{i}-{h}", S + h * HOUR_MS + 1, 10, card) for i in ids for h in (0, 1)])
        for customer_id in ids:
            hold = client.authorize(
                customer_id, PRODUCTS[card][1], values={"n": 2}, reserve=True, reservation_id=f"h-{customer_id}"
            )
            assert (hold.allowed, hold.estimated_cost, hold.credits_available) == (True, "2", "3")
        cohort = pricing_pb2.Cohort(customer_ids=["k1"])
        assert _rerated(_publish(client, _draft(client, 1, "3", card), S + HOUR_MS, cohort, card)) == (1, 1, 1, "20")
        balances = [client.get_balance(i) for i in ids]
        assert [(b.period_charges, b.credits_remaining, b.overage_amount, b.credits_held) for b in balances] == [
            ("40", "0", "15", "0"),
            ("20", "5", "0", "2"),
        ]
        for customer_id in ids:
            release(client, customer_id, f"h-{customer_id}")
        answers = [client.authorize(i, PRODUCTS[card][1], values={"n": 2}) for i in ids]
        assert [(a.allowed, a.reason, a.estimated_cost, a.credits_available) for a in answers] == [
            (False, "INSUFFICIENT_CREDIT", "6", "0"),
            (True, "OK", "2", "5"),
        ]
