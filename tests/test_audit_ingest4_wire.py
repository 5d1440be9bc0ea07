"""A fourth acceptance audit of the usage path over the wire (usage.proto RejectReason, docs/architecture.md §5
steps 5 and 6), past tests/test_audit_usage_wire.py, tests/test_audit_usage2_wire.py and
tests/test_audit_usage3_wire.py: which reason an event gets when it feeds several products and more than one
thing about it is wrong (a value one product needs is missing, another product has no rate), and that
Authorize answers the same event alike; and charges at the documented limits (a price just under 10^18 on values
of 10^9) whose lines each fit but whose period totals would not, on ingestion and on a re-rating publish (the
defects found: each panicked the writer and the server stopped).

Catalogue (one event type `multi` feeding three products; pricing unit credits, every version from 2024-01-01):

    product   aggregation  value key   card `no-peak`   card `no-count`
    m_count   COUNT                    3 a unit         (no rate)
    m_peak    MAX          g           (no rate)        5 a unit
    m_sum     SUM          n           1 a unit         1 a unit

and `big` (event type `b`, SUM of n, pricing dimension k), priced by the overflow tests' own rate cards.

An event's products are taken in product-id order (m_count, m_peak, m_sum), each its measure (the value it
reads) and then its rate; the first of them that refuses names the event's reason."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, charges, serving, this_hour_ms, unit
from tests.serverproc import ServerProcess
from tests.test_audit_usage2_wire import refusal
from tests.test_audit_usage_wire import event

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
REJECT = usage_pb2.RejectReason


def catalogue(client: TariffClient) -> None:
    products = [
        pricing_pb2.Product(id="m_sum", event_type="multi", aggregation=pricing_pb2.SUM, value_key="n"),
        pricing_pb2.Product(id="m_count", event_type="multi", aggregation=pricing_pb2.COUNT),
        pricing_pb2.Product(id="m_peak", event_type="multi", aggregation=pricing_pb2.MAX, value_key="g"),
        pricing_pb2.Product(
            id="big", event_type="b", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["k"]
        ),
    ]
    for product in products:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    cards = {
        "no-peak": [unit("m_sum", "1"), unit("m_count", "3")],
        "no-count": [unit("m_sum", "1"), unit("m_peak", "5")],
    }
    for card, rates in cards.items():
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
        client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=rates))
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=stamp(CARD_FROM_MS))
        )
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=f"on-{card}", name=card))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=f"k-{card}",
                customer_id=f"on-{card}",
                rate_card_id=card,
                starting_at=stamp(this_hour_ms() - 5 * HOUR_MS),
            )
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("audit-ingest4") / "data")
    try:
        yield from serving(process, catalogue)
    finally:
        print(f"--- {process!r} (tail) ---\n{process.log_tail(40)}")


def test_an_event_wrong_twice_over_is_refused_for_its_first_product_in_id_order_measure_before_rate(
    server: ServerProcess,
) -> None:
    """Each event of one batch feeds m_count, m_peak and m_sum (in that order):
        0  on-no-peak  {n: 2}        m_count fine; m_peak: `g` missing         INVALID_EVENT (not the missing rate)
        1  on-no-peak  {n: 2, g: 1}  m_count fine; m_peak: no rate             NO_APPLICABLE_RATE
        2  on-no-count {n: 2}        m_count: no rate (COUNT reads no value)   NO_APPLICABLE_RATE (before m_peak's g)
        3  on-no-count {g: 1}        m_count: no rate                          NO_APPLICABLE_RATE (before m_sum's n)
        4  on-no-peak  {g: 1}        m_count fine; m_peak: no rate             NO_APPLICABLE_RATE (before m_sum's n)
    Nothing is accepted and nothing charged; Authorize of the same usage answers alike (a missing value is
    INVALID_ARGUMENT naming it on the unary call, a missing rate the in-band NO_APPLICABLE_RATE)."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        batch = [
            event("w0", "on-no-peak", "multi", at_ms, {"n": 2}),
            event("w1", "on-no-peak", "multi", at_ms, {"n": 2, "g": 1}),
            event("w2", "on-no-count", "multi", at_ms, {"n": 2}),
            event("w3", "on-no-count", "multi", at_ms, {"g": 1}),
            event("w4", "on-no-peak", "multi", at_ms, {"g": 1}),
        ]
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=batch))
        no_rate = "rate card '{}' version 1 has no rate for product '{}' with {{}}"
        assert (ack.accepted, ack.duplicates) == (0, 0)
        assert [(r.index, r.transaction_id, r.reason, r.message) for r in ack.rejected] == [
            (0, "w0", REJECT.INVALID_EVENT, "values['g'] is required by product 'm_peak'"),
            (1, "w1", REJECT.NO_APPLICABLE_RATE, no_rate.format("no-peak", "m_peak")),
            (2, "w2", REJECT.NO_APPLICABLE_RATE, no_rate.format("no-count", "m_count")),
            (3, "w3", REJECT.NO_APPLICABLE_RATE, no_rate.format("no-count", "m_count")),
            (4, "w4", REJECT.NO_APPLICABLE_RATE, no_rate.format("no-peak", "m_peak")),
        ]
        assert (charges(client, "on-no-peak"), charges(client, "on-no-count")) == ("0", "0")

        def authorize(customer_id: str, values: dict[str, float]) -> balance_pb2.AuthorizeResponse:
            request = balance_pb2.AuthorizeRequest(customer_id=customer_id, event_type="multi", values=values)
            answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(request)
            return answer

        assert refusal(lambda: authorize("on-no-peak", {"n": 2})) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "values: values['g'] is required by product 'm_peak'",
        )
        unpriced: list[tuple[str, dict[str, float]]] = [
            ("on-no-peak", {"n": 2, "g": 1}),
            ("on-no-count", {"n": 2}),
            ("on-no-count", {"g": 1}),
            ("on-no-peak", {"g": 1}),
        ]
        for customer_id, values in unpriced:
            answer = authorize(customer_id, values)
            assert (answer.allowed, answer.reason) == (False, "NO_APPLICABLE_RATE"), (customer_id, values)


def test_charges_that_would_overflow_a_periods_totals_refuse_the_event_and_the_server_goes_on(
    server: ServerProcess,
) -> None:
    """docs/architecture.md §6: ledger amounts are 128-bit picos "with checked arithmetic (a charge that would
    overflow rejects the event, INVALID_EVENT)". Each line's price fits, but a period's lines add up: product
    `big` (SUM of n, pricing dimension k) at 10^17 credits a unit, no credit. 10^9 units on line k=a charge
    10^26 credits = 10^38 picos (under 2^127, about 1.7 x 10^38); the same on line k=b would take the period's
    charges (and overage) to 2 x 10^38 picos, which 128 bits cannot hold: that event is refused, the one before
    it stands, and the server goes on ingesting (it used to stop its writer: UNAVAILABLE from then on).
    Authorize of the same usage is refused alike, before it is priced."""
    at_ms = now_ms() - 2_000
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="dear", pricing_unit="credits"))
        rates = [unit("big", "100000000000000000")]
        client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id="dear", upsert_rates=rates)
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="dear", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="whale", name="whale"))
        start = stamp(this_hour_ms() - 5 * HOUR_MS)
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-whale", customer_id="whale", rate_card_id="dear", starting_at=start
            )
        )

        def ingest(*events: usage_pb2.UsageEvent) -> usage_pb2.IngestAck:
            ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=events))
            return ack

        first = ingest(event("wa", "whale", "b", at_ms, {"n": 1e9}, {"k": "a"}))
        assert (first.accepted, list(first.rejected)) == (1, [])
        assert charges(client, "whale") == "100000000000000000000000000"  # 10^9 x 10^17
        second = ingest(
            event("wb", "whale", "b", at_ms, {"n": 1e9}, {"k": "b"}),  # the overflowing one
            event("wc", "whale", "b", at_ms, {"n": 1}, {"k": "c"}),  # 10^17 more: fits
        )
        assert (second.accepted, second.duplicates) == (1, 0)
        assert [(r.index, r.transaction_id, r.reason, r.message) for r in second.rejected] == [
            (0, "wb", REJECT.INVALID_EVENT, "the charge for product 'big' is out of range")
        ]
        balance = client.get_balance("whale")
        assert (balance.period_charges, balance.overage_amount) == ("100000000100000000000000000",) * 2
        request = balance_pb2.AuthorizeRequest(
            customer_id="whale", event_type="b", dimensions={"k": "b"}, values={"n": 1e9}
        )
        code, message = refusal(lambda: client.balance.Authorize(request))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "the charge for product 'big' is out of range" in message
        # The writer goes on: the refused event, made smaller, is accepted under its id.
        third = ingest(event("wb", "whale", "b", at_ms, {"n": 2}, {"k": "b"}))
        assert (third.accepted, list(third.rejected)) == (1, [])
        assert charges(client, "whale") == "100000000300000000000000000"


def test_a_publish_re_rating_past_what_a_periods_totals_hold_is_refused_and_changes_nothing(
    server: ServerProcess,
) -> None:
    """The same limit on a re-rating (README "Changing prices safely": a version effective before usage already
    rated re-rates it; one whose usage cannot be priced again is refused, changing nothing). Rate card `dear2`
    prices `big` at 10^17 a unit; customer `whale2` has 10^9 units on line k=a (10^38 picos) and 5 x 10^8 on
    k=b: 1.5 x 10^26 credits. Version 2 at 1.5 x 10^17 from the contract's start would re-rate them to 1.5 x
    10^38 + 0.75 x 10^38 picos, past 2^127: each line fits, their period does not. SimulateVersion says so and the publish is refused
    (it used to stop the writer), version 2 stays a draft, the charges stay, and ingestion goes on."""
    at_ms = now_ms() - 2_000
    start_ms = this_hour_ms() - 5 * HOUR_MS
    with server.client() as client:
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="dear2", pricing_unit="credits"))
        first = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="dear2", upsert_rates=[unit("big", "100000000000000000")]
        )
        client.pricing.CreateDraftVersion(first)
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="dear2", version=1, effective_from=stamp(CARD_FROM_MS))
        )
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="whale2", name="whale2"))
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="k-whale2", customer_id="whale2", rate_card_id="dear2", starting_at=stamp(start_ms)
            )
        )
        batch = [
            event("va", "whale2", "b", at_ms, {"n": 1e9}, {"k": "a"}),
            event("vb", "whale2", "b", at_ms, {"n": 5e8}, {"k": "b"}),
        ]
        ack = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(events=batch))
        assert (ack.accepted, list(ack.rejected)) == (2, [])
        assert charges(client, "whale2") == "150000000000000000000000000"
        second = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id="dear2", based_on_version=1, upsert_rates=[unit("big", "150000000000000000")]
        )
        client.pricing.CreateDraftVersion(second)
        simulate = pricing_pb2.SimulateVersionRequest(
            rate_card_id="dear2", version=2, period_start=stamp(start_ms), period_end=stamp(now_ms())
        )
        code, message = refusal(lambda: client.pricing.SimulateVersion(simulate))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, message)
        assert 'the charge for product "big" is out of range' in message, message
        publish = pricing_pb2.PublishVersionRequest(rate_card_id="dear2", version=2, effective_from=stamp(start_ms))
        code, message = refusal(lambda: client.pricing.PublishVersion(publish))
        assert code == grpc.StatusCode.FAILED_PRECONDITION, (code, message)
        assert 'the charge for product "big" is out of range' in message, message
        version = client.pricing.GetVersion(pricing_pb2.GetVersionRequest(rate_card_id="dear2", version=2))
        assert not version.HasField("effective_from")
        assert charges(client, "whale2") == "150000000000000000000000000"
        more = client.usage.IngestUsageBatch(
            usage_pb2.UsageBatch(events=[event("vc", "whale2", "b", at_ms, {"n": 1}, {"k": "c"})])
        )
        assert (more.accepted, list(more.rejected)) == (1, [])
        assert charges(client, "whale2") == "150000000100000000000000000"
