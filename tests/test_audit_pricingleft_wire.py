"""What the pricing workflow audit (tests/test_audit_pricingflow_wire.py) left, over the wire: a refused
RollbackRateCard names what the caller asked for, parameter names no formula can use are refused, an effective_from
off the hour is INVALID_ARGUMENT whatever the version's state, and SimulateVersion answers against the state a
publish's re-rating leaves, also while that re-rating runs. Amounts computed by hand from pricing.proto.

Card `lc` (USD): version 1 prices pa at 1 a unit and pb at 2, in force since 2025-12-01; version 2 (pa at 1, no
rate for pb) is published from 2027 (no usage then). Customer a's contract starts 2026-01-01; 10 pa and 5 pb on
2026-01-12 10:00."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import grpc
import pytest
from tariff import TariffClient
from tariff.v1 import contracts_pb2, pricing_pb2, usage_pb2

from tests.audit_fixtures import audit_count, refusal, serving, unit
from tests.serverproc import ServerProcess, wait_for_log
from tests.test_audit_invoices_wire import JAN, ms, ts

CARD = "lc"
W = ms("2026-01-10T00:00:00")
JAN12 = ms("2026-01-12T10:00:00")
FEB = ms("2026-02-01T00:00:00")
Y2027 = ms("2027-01-01T00:00:00")
HALF_PAST = ts(W + 1_800_000)


def _setup(client: TariffClient) -> None:
    for product_id in ("pa", "pb"):
        product = pricing_pb2.Product(id=product_id, event_type=product_id, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, name=CARD, pricing_unit="USD"))
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=[unit("pa", "1"), unit("pb", "2")])
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=ts(ms("2025-12-01T00:00:00")))
    )
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=1, remove_rates=[pricing_pb2.RateKey(product_id="pb")]
        )
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=2, effective_from=ts(Y2027))
    )
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="a", name="a"))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id="k-a",
            customer_id="a",
            rate_card_id=CARD,
            starting_at=ts(JAN),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="1",
            currency="USD",
        )
    )

    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"a-{p}", customer_id="a", event_type=p, timestamp_ms=JAN12, values={"n": n}
        )
        for p, n in (("pa", 10), ("pb", 5))
    ]
    assert client.ingest_batch(events, batch_id="a-jan12").accepted == 2


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # Each background slice of a re-rating (64 customers) is followed by a pause (a test-only knob): the re-rating
    # of `ls` (130 customers, 3 slices) lasts at least 600 ms, whatever the machine's speed.
    process = ServerProcess(
        tmp_path_factory.mktemp("audit-pricingleft") / "data",
        extra_args=["--close-grace", "off"],
        env={"TARIFF_TEST_RERATE_SLICE_PAUSE_MS": "300"},
    )
    yield from serving(process, _setup)


def test_a_refused_rollback_names_the_version_rolled_back_to_not_the_withdrawn_copy(server: ServerProcess) -> None:
    """Rolling `lc` back to version 2 from W would re-rate a's pb of Jan 12, which version 2 has no rate for:
    FAILED_PRECONDITION naming the card, the version asked for (2), the hour, then the customer, product and hour;
    not "version 2 ... cannot be published" (it is published) nor the copy's number 3 (never made)."""
    with server.client() as client:
        before = audit_count(client)
        code, details = refusal(
            lambda: client.pricing.RollbackRateCard(
                pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=2, effective_from=ts(W))
            )
        )
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "version 3" not in details, details
        asked = "rate card 'lc' cannot be rolled back to version 2 effective from 2026-01-10T00:00:00Z: "
        assert details.startswith(asked), details
        assert 'customer "a"' in details and 'product "pb"' in details and "2026-01-12T10:00:00Z" in details, details
        assert audit_count(client) == before
        card = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD))
        assert card.latest_version == 2


def test_a_parameter_named_by_a_keyword_of_the_formula_grammar_is_refused(server: ServerProcess) -> None:
    """Formulas are read with Python's grammar, where `if`, `lambda`, `None`, `True` are no names: a formula can
    never name such a parameter (ValidateVersion would flag one that tries). So CreateDraftVersion refuses the name:
    INVALID_ARGUMENT naming set_parameters[<name>], nothing made. A soft keyword (`match`, `type`, `_`) is a name in
    an expression like any other: match = 3 and a flat price of "match * 2" price 6."""
    with server.client() as client:
        latest = client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version
        for name in ("if", "None", "True", "lambda", "not"):
            request = pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, set_parameters={name: "1", "ok": "2"}
            )
            code, details = refusal(lambda request=request: client.pricing.CreateDraftVersion(request))  # type: ignore[misc]
            assert (code, details.split(": ", 1)[0]) == (grpc.StatusCode.INVALID_ARGUMENT, f"set_parameters[{name}]"), (
                details
            )
        assert client.pricing.GetRateCard(pricing_pb2.GetRateCardRequest(id=CARD)).latest_version == latest
        flat = pricing_pb2.Rate(product_id="pa", flat=pricing_pb2.FlatPrice(price="match * 2 + type + _"))
        made = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD,
                based_on_version=1,
                set_parameters={"match": "3", "type": "0", "_": "0"},
                upsert_rates=[flat],
            )
        ).version
        report = client.pricing.ValidateVersion(pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=made))
        assert (report.ok, list(report.findings)) == (True, [])
        diff = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id=CARD, from_version=1, to_version=made)
        )
        (change,) = diff.rates
        assert {f.path: f.new_price for f in change.fields}["flat.price"] == "6"


def test_an_effective_from_off_the_hour_is_invalid_whatever_the_state(server: ServerProcess) -> None:
    """A request wrong whatever the state is INVALID_ARGUMENT (gRPC's guidance), checked before the state is: an
    effective_from half past an hour on PublishVersion of a published version (1), an unknown one (99), and on
    RollbackRateCard to a draft and to an unknown version. Nothing changes."""
    with server.client() as client:
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1)
        ).version
        before = audit_count(client)
        p = client.pricing
        calls = [
            lambda: p.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=HALF_PAST)
            ),
            lambda: p.PublishVersion(
                pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=99, effective_from=HALF_PAST)
            ),
            lambda: p.RollbackRateCard(
                pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=draft, effective_from=HALF_PAST)
            ),
            lambda: p.RollbackRateCard(
                pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=99, effective_from=HALF_PAST)
            ),
        ]
        for index, call in enumerate(calls):
            code, details = refusal(call)
            assert (index, code, details.split(": ", 1)[0]) == (
                index,
                grpc.StatusCode.INVALID_ARGUMENT,
                "effective_from",
            ), details
        assert audit_count(client) == before


SLOW = "ls"
SLOW_CUSTOMERS = [f"s{n:03d}" for n in range(130)]


def test_simulate_answers_against_the_state_the_running_rerating_leaves(server: ServerProcess) -> None:
    """Card `ls` (USD): pc at 1 a unit since 2025-12-01, a draft at 3. 130 customers, contracts from Jan 1, each
    2 units on Jan 12 10:00 and 2 on Jan 20 10:00 (4 charged). Version 2 is published from W, its re-rating paced;
    SimulateVersion of version 2 from Jan 15 asked once the publish is journaled (its re-rating started): against
    the state that re-rating leaves, each customer's Jan 20 hour is 6 now and 6 simulated, delta 0 (780 in all).
    Beside it, a customer not re-rated yet read 2 now and 6 + (6 - 2) = 10 simulated (Jan 12's difference carried
    in), neither the state before the publish (2 -> 10 is not 2 -> 6) nor after it."""
    with server.client() as client:
        product = pricing_pb2.Product(id="pc", event_type="pc", aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=SLOW, name=SLOW, pricing_unit="USD"))
        for price in ("1", "3"):
            client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id=SLOW, upsert_rates=[unit("pc", price)])
            )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=SLOW, version=1, effective_from=ts(ms("2025-12-01T00:00:00"))
            )
        )
        for customer_id in SLOW_CUSTOMERS:
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
            client.contracts.CreateContract(
                contracts_pb2.CreateContractRequest(
                    id=f"k-{customer_id}",
                    customer_id=customer_id,
                    rate_card_id=SLOW,
                    starting_at=ts(JAN),
                    overage_policy=contracts_pb2.ALLOW,
                    overage_price="1",
                    currency="USD",
                )
            )
        events = [
            usage_pb2.UsageEvent(
                transaction_id=f"{c}-{at}", customer_id=c, event_type="pc", timestamp_ms=at, values={"n": 2}
            )
            for c in SLOW_CUSTOMERS
            for at in (JAN12, ms("2026-01-20T10:00:00"))
        ]
        assert client.ingest_batch(events, batch_id="slow").accepted == len(events)
        answers: list[object] = []

        def publish() -> None:
            with server.client() as other:
                request = pricing_pb2.PublishVersionRequest(rate_card_id=SLOW, version=2, effective_from=ts(W))
                answers.append(other.pricing.PublishVersion(request, timeout=120))

        caller = threading.Thread(target=publish)
        caller.start()
        try:
            wait_for_log(server, f"re-rating started rate_card={SLOW}", 60)
            simulated = client.pricing.SimulateVersion(
                pricing_pb2.SimulateVersionRequest(
                    rate_card_id=SLOW, version=2, period_start=ts(ms("2026-01-15T00:00:00")), period_end=ts(FEB)
                ),
                timeout=120,
            )
        finally:
            caller.join(120)
        wrong = [(a.customer_id, a.current_amount, a.simulated_amount) for a in simulated.amounts if a.delta != "0"]
        assert wrong == [], wrong[:3]
        assert [(a.customer_id, a.current_amount, a.simulated_amount) for a in simulated.amounts] == [
            (c, "6", "6") for c in SLOW_CUSTOMERS
        ]
        assert (simulated.totals.current_amount, simulated.totals.simulated_amount) == ("780", "780")
        (published,) = answers
        assert isinstance(published, pricing_pb2.PublishVersionResponse)
        # Each customer's Jan 12 and Jan 20 hours, 2 units each from 1 to 3 (4 more an hour): 130 x 2 x 4 = 1040 more.
        assert (published.customers_rerated, published.buckets_rerated, published.rerated_amount_delta) == (
            130,
            260,
            "1040",
        )
