"""docs/architecture.md §6 "Money and quantities", §7 "Guarantees" and §8 "Limits (defaults)", statement by
statement, over the wire: what the documents promise a client about exact money, refusals rather than rounding,
decimal texts in and out, and each limit exactly at it and one step past it.

The catalogue: product `p` (SUM of `n`, event_type `p`); credit rate cards, each with version 1 published from
2024-01-01: `card` prices `p` at 1 a unit, `halfpico` at 0.0000000000005 (half a pico), `third` at the formula
`1 / 3`, `even` at `0.000000000000000025 / 10` and `odd` at `0.000000000000000035 / 10` (2.5 and 3.5 x 10^-18: a
half at the 18th place). Customers are made by the tests that need them, one or more of their own each, so no test
depends on another's usage."""

from __future__ import annotations

import math
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import open_contract, preview, rejected_in, serving, unit
from tests.serverproc import ServerProcess

JAN_2024_MS = 1_704_067_200_000
CARDS = {
    "card": "1",
    "halfpico": "0.0000000000005",
    "third": "1 / 3",
    "even": "0.000000000000000025 / 10",
    "odd": "0.000000000000000035 / 10",
}


def publish_card(client: TariffClient, card: str, price: str) -> None:
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit="credits"))
    draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=[unit("p", price)])
    client.pricing.CreateDraftVersion(draft)
    publish = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=1, effective_from=stamp(JAN_2024_MS))
    client.pricing.PublishVersion(publish)


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="p", event_type="p", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    for card, price in CARDS.items():
        publish_card(client, card, price)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data_dir: Path = tmp_path_factory.mktemp("archdoc") / "data"
    yield from serving(ServerProcess(data_dir), catalogue)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TariffClient]:
    with server.client() as made:
        yield made


def audit_count(client: TariffClient) -> int:
    """Every entry of the audit log, page after page (a module's log outgrows a page: 1,001 customers are made)."""
    total, after = 0, 0
    while True:
        page = client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(after_seq=after, page_size=1000))
        total += len(page.entries)
        if not page.entries:
            return total
        after = page.entries[-1].seq


def customer(client: TariffClient, customer_id: str, card: str = "card", **fields: str) -> None:
    """`customer_id` on `card` from 2024-01-01 (monthly periods), overage at 1 USD unless given."""
    open_contract(client, customer_id, f"{customer_id}-k", JAN_2024_MS, None, rate_card_id=card, **fields)


def event(tx: str, customer_id: str, n: float, **fields: object) -> usage_pb2.UsageEvent:
    made = usage_pb2.UsageEvent(transaction_id=tx, customer_id=customer_id, timestamp_ms=now_ms(), **fields)  # type: ignore[arg-type]
    if not made.event_type:
        made.event_type = "p"
    if not made.values:
        made.values["n"] = n
    return made


def refused(call: Callable[[], object]) -> tuple[grpc.StatusCode, list[str]]:
    with pytest.raises(TariffError) as failed:
        call()
    return failed.value.code, [v.field for v in failed.value.field_violations]


def charges(client: TariffClient, customer_id: str) -> str:
    return str(client.get_balance(customer_id).period_charges)


def contract_with(client: TariffClient, customer_id: str, overage_price: str) -> contracts_pb2.Contract:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))  # a retry answers alike
    request = contracts_pb2.CreateContractRequest(
        customer_id=customer_id,
        rate_card_id="card",
        starting_at=stamp(JAN_2024_MS),
        overage_policy=contracts_pb2.ALLOW,
        overage_price=overage_price,
    )
    made: contracts_pb2.Contract = client.contracts.CreateContract(request)
    return made


# §6 Decimal input and Out: texts in, canonical texts out -------------------------------------------------------


@pytest.mark.parametrize(
    ("written", "answered"),
    [
        ("12.50", "12.5"),  # trailing zero dropped
        ("1E-7", "0.0000001"),  # Java's BigDecimal.toString(): no exponent out
        ("1.5e+2", "150"),  # an exponent with its sign
        ("1e-18", "0.000000000000000001"),  # the smallest step: 18 places
        ("999999999999999999.999999999999999999", "999999999999999999.999999999999999999"),  # the largest value
        ("1.0000000000000000000000", "1"),  # 22 places written, value 1: the places are the value's
    ],
)
def test_an_overage_price_is_answered_as_canonical_decimal_text(
    client: TariffClient, written: str, answered: str
) -> None:
    # Each a customer of its own: the contract's id is derived from its customer and start.
    made = contract_with(client, f"op-{zlib.crc32(written.encode())}", written)
    assert made.overage_price == answered


@pytest.mark.parametrize(
    "written",
    [
        "1e18",  # 10^18 itself
        "1000000000000000000",
        "1e-19",  # 19 places
        "0.0000000000000000001",
        "1.0000000000000000001",  # 19 places, not zeros
        "-1",  # an overage price is not negative
        "+1",
        " 1",
        "1 ",
        ".5",
        "1.",
        "007",
        "1_000",
        "\u0661",  # Arabic-Indic one
        "1." + "0" * 63,  # 65 characters, value 1
        "0x10",
        "Infinity",
        "NaN",
    ],
)
def test_an_overage_price_outside_the_grammar_or_range_is_refused_naming_it(client: TariffClient, written: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="op-refused"))
    before = audit_count(client)
    code, fields = refused(lambda: contract_with(client, "op-refused", written))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["overage_price"])
    assert audit_count(client) == before


def test_a_64_character_decimal_is_taken_and_65_refused(client: TariffClient) -> None:
    sixty_four = "1." + "0" * 62  # value 1, 64 characters
    assert len(sixty_four) == 64
    assert contract_with(client, "op-64", sixty_four).overage_price == "1"
    sixty_five = sixty_four + "0"
    code, fields = refused(lambda: contract_with(client, "op-65", sixty_five))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["overage_price"])


def test_a_draft_keeps_its_parameters_as_written_negative_ones_included(client: TariffClient) -> None:
    publish_card(client, "params", "1")
    request = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="params",
        based_on_version=1,
        set_parameters={"markup": "1.50", "discount": "-0.25", "tiny": "1E-7"},
    )
    made = client.pricing.CreateDraftVersion(request)
    assert dict(made.parameters) == {"markup": "1.50", "discount": "-0.25", "tiny": "1E-7"}


def test_a_negative_parameter_past_the_range_is_refused_naming_it(client: TariffClient) -> None:
    publish_card(client, "params2", "1")
    request = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="params2", based_on_version=1, set_parameters={"m": "-1e18"}
    )
    code, fields = refused(lambda: client.pricing.CreateDraftVersion(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(fields) == 1 and "m" in fields[0]


# §6 Grant amounts: exact at 12 places ---------------------------------------------------------------------------


def grant(client: TariffClient, customer_id: str, grant_id: str, amount: str) -> contracts_pb2.Grant:
    new = contracts_pb2.Grant(
        id=grant_id, contract_id=f"{customer_id}-k", kind=contracts_pb2.PREPAID, amount=amount, paid_amount="1"
    )
    made: contracts_pb2.Grant = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))
    return made


def test_a_grant_amount_exact_at_12_places_is_taken_and_one_past_it_or_zero_refused(client: TariffClient) -> None:
    customer(client, "g1")
    before = audit_count(client)
    for amount in ("1.0000000000015", "0", "0.0000000000001", "-1"):
        code, fields = refused(lambda amount=amount: grant(client, "g1", "g-bad", amount))  # type: ignore[misc]
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["grant.amount"]), amount
    assert audit_count(client) == before
    assert grant(client, "g1", "g-pico", "1.000000000001").amount == "1.000000000001"
    # 13 places written, its value exact at 12: taken, answered canonically.
    assert grant(client, "g1", "g-zero", "2.0000000000010").amount == "2.000000000001"
    assert client.get_balance("g1").credits_remaining == "3.000000000002"


# §6 Prices: rounded half-even to 18 places once, when compiled -----------------------------------------------------


def test_a_formula_price_is_rounded_to_18_places_once_and_charged_at_that(client: TariffClient) -> None:
    # 1 / 3 rounds to 0.333333333333333333; 10^12 units at it are 333333333333.333333 exactly (the exact third would
    # charge 333333333333.333333333333, a different number of picos).
    customer(client, "third1", "third")
    assert rejected_in(client, event("t1", "third1", 1e12)) == []
    assert charges(client, "third1") == "333333333333.333333"


@pytest.mark.parametrize(("card", "expected"), [("even", "0.0002"), ("odd", "0.0004")])
def test_a_price_with_a_half_at_the_19th_place_rounds_half_even(client: TariffClient, card: str, expected: str) -> None:
    # 2.5e-18 rounds to 2e-18 (2 is even) and 3.5e-18 to 4e-18; 10^14 units at them are 0.0002 and 0.0004 (unrounded
    # prices would charge 0.00025 and 0.00035, half-up would give 0.0003 for the first).
    customer(client, f"{card}1", card)
    assert rejected_in(client, event(f"{card}-t", f"{card}1", 1e14)) == []
    assert charges(client, f"{card}1") == expected


def draft_and_validate(client: TariffClient, card: str, price: str) -> pricing_pb2.ValidationReport:
    publish_card(client, card, "1")
    draft = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=card, based_on_version=1, upsert_rates=[unit("p", price)]
    )
    number = client.pricing.CreateDraftVersion(draft).version
    report: pricing_pb2.ValidationReport = client.pricing.ValidateVersion(
        pricing_pb2.ValidateVersionRequest(rate_card_id=card, version=number)
    )
    return report


def test_a_formula_that_rounds_to_10_18_is_an_error_naming_the_price(client: TariffClient) -> None:
    report = draft_and_validate(client, "rounds-up", "999999999999999999.9999999999999999999 * 1")
    assert not report.ok
    assert [f.path for f in report.findings if f.severity == pricing_pb2.ERROR] == ["rates[0].unit.price"]


def test_a_plain_price_of_19_places_is_refused_never_rounded(client: TariffClient) -> None:
    publish_card(client, "places19", "1")
    before = audit_count(client)
    rate = unit("p", "1.0000000000000000001")
    draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="places19", based_on_version=1, upsert_rates=[rate])
    try:
        made = client.pricing.CreateDraftVersion(draft)
    except TariffError as error:  # refused where it enters
        assert (error.code, [v.field for v in error.field_violations]) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            ["upsert_rates[0].unit.price"],
        )
        assert audit_count(client) == before
        return
    report = client.pricing.ValidateVersion(
        pricing_pb2.ValidateVersionRequest(rate_card_id="places19", version=made.version)
    )
    assert [f.path for f in report.findings if f.severity == pricing_pb2.ERROR] == ["rates[0].unit.price"]


def sum_of(terms: int) -> str:
    return " + ".join(["1"] * terms)


def test_a_formula_of_depth_32_is_valid_and_33_is_not(client: TariffClient) -> None:
    # "a + b + ..." of 33 terms is 32 operators deep; of 34 terms, 33 (the document's example of too deep).
    assert draft_and_validate(client, "depth33", sum_of(33)).ok
    deep = draft_and_validate(client, "depth34", sum_of(34))
    assert [f.path for f in deep.findings if f.severity == pricing_pb2.ERROR] == ["rates[0].unit.price"]


def test_a_price_of_1000_characters_is_taken_and_1001_refused_naming_it(client: TariffClient) -> None:
    publish_card(client, "long", "1")
    at_most = "1000" + " + 0" * 249  # 4 + 4 x 249 = 1,000 characters
    assert len(at_most) == 1000
    draft = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="long", based_on_version=1, upsert_rates=[unit("p", at_most)]
    )
    assert client.pricing.CreateDraftVersion(draft).rates[0].unit.price == at_most
    longer = "1" + at_most  # "11000 + 0 ...": 1,001 characters
    draft = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id="long", based_on_version=1, upsert_rates=[unit("p", longer)]
    )
    assert refused(lambda: client.pricing.CreateDraftVersion(draft)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["upsert_rates[0].unit.price"],
    )


# §6 Charges: rounded half-even to picos once per side of price(after) - price(before) ------------------------------


def test_charges_round_each_side_to_picos_half_even(client: TariffClient) -> None:
    # At 0.5 pico a unit: price(1) = 0.5 -> 0, price(2) = 1, price(3) = 1.5 -> 2 (half-even). Three events of a unit
    # are charged 0, 1 and 1 pico: 0.000000000002 in all, what the period's 3 units cost rounded once.
    customer(client, "half3", "halfpico")
    events = [event(f"h{i}", "half3", 1) for i in range(3)]
    assert rejected_in(client, *events) == []
    assert charges(client, "half3") == "0.000000000002"
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id="half3", period_start=client.get_balance("half3").period_start, line_id="p"
    )
    amounts = [e.amount for e in client.invoices.ExplainLineItem(request).events]
    assert amounts == ["0", "0.000000000001", "0.000000000001"]  # in the order rated
    customer(client, "half1", "halfpico")
    assert rejected_in(client, event("h1-only", "half1", 1)) == []
    assert charges(client, "half1") == "0"  # 0.5 pico rounds to the even 0


# §6 Overage due: exact at 10^-30 on a balance, rounded once on an invoice ---------------------------------------------


def test_overage_due_is_exact_at_30_places_on_a_balance_and_rounded_on_the_invoice(client: TariffClient) -> None:
    # 3 units at half a pico charge 2 picos, all overage (no grant); at 0.333333333333333333 USD a credit that is
    # 0.000000000000666666666666666666 USD exactly; the invoice rounds it to cents once: 0.00.
    customer(client, "due1", "halfpico", overage_price="0.333333333333333333")
    assert rejected_in(client, *[event(f"d{i}", "due1", 1) for i in range(3)]) == []
    balance = client.get_balance("due1")
    assert (balance.overage_amount, balance.overage_due) == ("0.000000000002", "0.000000000000666666666666666666")
    invoice = preview(client, "due1", balance.period_start.ToMilliseconds())
    assert invoice.overage_due in ("0", "0.00")


# §6 Quantities: doubles read through their shortest text, exactly ----------------------------------------------------


def test_a_tenth_is_read_as_the_decimal_0_1(client: TariffClient) -> None:
    # Three events of 0.1 at 1 a unit: 0.3 exactly (as doubles they sum to 0.30000000000000004).
    customer(client, "tenth")
    assert rejected_in(client, *[event(f"tenth{i}", "tenth", 0.1) for i in range(3)]) == []
    assert charges(client, "tenth") == "0.3"


def test_the_largest_double_below_10_15_is_taken_as_its_shortest_text(client: TariffClient) -> None:
    # The double below 10^15 is 999999999999999.875; its shortest round-trip text is 999999999999999.9.
    largest = math.nextafter(1e15, 0)
    assert repr(largest) == "999999999999999.9"
    customer(client, "big")
    assert rejected_in(client, event("big1", "big", largest)) == []
    assert charges(client, "big") == "999999999999999.9"


@pytest.mark.parametrize("value", [1e15, math.nan, math.inf, -math.inf, -1.0, 1e-19, 1.5e-18, 1e-50, 5e-324, 1e300])
def test_a_usage_value_out_of_range_rejects_the_event_invalid_event(client: TariffClient, value: float) -> None:
    customer(client, "badvalues")
    tx = f"bad-{value!r}"
    assert rejected_in(client, event(tx, "badvalues", value)) == [(tx, "INVALID_EVENT")]
    assert charges(client, "badvalues") == "0"


def test_a_usage_value_of_1e_18_is_taken(client: TariffClient) -> None:
    # 10^-18 credits rounds to 0 picos: taken, charging nothing.
    customer(client, "atto")
    assert rejected_in(client, event("atto1", "atto", 1e-18)) == []
    assert charges(client, "atto") == "0"


# §8 Limits of an event ------------------------------------------------------------------------------------------------


def test_64_dimensions_and_values_are_taken_and_65_rejected(client: TariffClient) -> None:
    customer(client, "dims")
    at_dims = {f"d{i}": "v" for i in range(64)}
    at_values = {"n": 1.0, **{f"v{i}": 1.0 for i in range(63)}}
    assert rejected_in(client, event("dims64", "dims", 1, dimensions=at_dims, values=at_values)) == []
    over_dims = {**at_dims, "d64": "v"}
    over_values = {**at_values, "v63": 1.0}
    assert rejected_in(
        client,
        event("dims65", "dims", 1, dimensions=over_dims),
        event("values65", "dims", 1, values=over_values),
    ) == [("dims65", "INVALID_EVENT"), ("values65", "INVALID_EVENT")]
    assert charges(client, "dims") == "1"


def test_256_byte_dimension_texts_and_transaction_ids_are_taken_and_257_rejected(client: TariffClient) -> None:
    customer(client, "texts")
    key, value, tx = "k" * 256, "é" * 128, "t" * 256  # 256 bytes each
    assert rejected_in(client, event(tx, "texts", 1, dimensions={key: value})) == []
    assert rejected_in(
        client,
        event("longkey", "texts", 1, dimensions={key + "k": "v"}),
        event("longvalue", "texts", 1, dimensions={"k": value + "x"}),
        event(tx + "t", "texts", 1),
    ) == [("longkey", "INVALID_EVENT"), ("longvalue", "INVALID_EVENT"), (tx + "t", "INVALID_EVENT")]
    assert charges(client, "texts") == "1"


def test_an_event_type_longer_than_a_products_is_accepted_charging_nothing(client: TariffClient) -> None:
    customer(client, "longtype")
    assert rejected_in(client, event("lt1", "longtype", 5, event_type="p" * 10_000)) == []
    assert charges(client, "longtype") == "0"


def test_a_batch_of_10000_events_is_taken_and_10001_refused_whole(client: TariffClient) -> None:
    customer(client, "batch")
    over = [event(f"b{i}", "batch", 1) for i in range(10_001)]
    code, _ = refused(lambda: client.ingest_batch(over))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert charges(client, "batch") == "0"
    assert rejected_in(client, *over[:10_000]) == []
    assert charges(client, "batch") == "10000"


# §8 Limits of requests -------------------------------------------------------------------------------------------------


def test_an_id_of_128_characters_is_taken_and_129_or_a_trailing_newline_refused(client: TariffClient) -> None:
    before = audit_count(client)
    for bad in ("i" * 129, "ok\n", "a/b", "", "a b"):
        request = contracts_pb2.CreateCustomerRequest(id=bad)
        code, fields = refused(lambda request=request: client.contracts.CreateCustomer(request))  # type: ignore[misc]
        assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["id"]), bad
    assert audit_count(client) == before
    made = client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="I" * 128))
    assert made.id == "I" * 128


def test_a_customer_name_and_attributes_at_their_limits_are_taken_and_past_them_refused(client: TariffClient) -> None:
    before = audit_count(client)
    cases: list[tuple[contracts_pb2.CreateCustomerRequest, str]] = [
        (contracts_pb2.CreateCustomerRequest(id="n1", name="é" * 128 + "x"), "name"),  # 257 bytes
        (contracts_pb2.CreateCustomerRequest(id="n1", attributes={f"k{i}": "v" for i in range(65)}), "attributes"),
        (contracts_pb2.CreateCustomerRequest(id="n1", attributes={"k": "v" * 257}), "attributes[k]"),
    ]
    for request, field in cases:
        code, fields = refused(lambda request=request: client.contracts.CreateCustomer(request))  # type: ignore[misc]
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        assert fields and fields[0].startswith(field), (field, fields)
    assert audit_count(client) == before
    at = contracts_pb2.CreateCustomerRequest(
        id="n1", name="é" * 128, attributes={**{f"k{i}": "v" for i in range(63)}, "k": "v" * 256}
    )
    made = client.contracts.CreateCustomer(at)
    assert (made.name, len(made.attributes)) == ("é" * 128, 64)


def test_a_contract_currency_without_a_minor_unit_is_refused_and_empty_is_usd(client: TariffClient) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="cur"))
    request = contracts_pb2.CreateContractRequest(
        customer_id="cur", rate_card_id="card", starting_at=stamp(JAN_2024_MS), currency="XAU"
    )
    assert refused(lambda: client.contracts.CreateContract(request)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["currency"],
    )
    request.currency = ""
    assert client.contracts.CreateContract(request).currency == "USD"


def test_instants_are_taken_up_to_8999_12_31_and_refused_past_it(client: TariffClient) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="far"))
    last_ms = 221_845_391_999_999  # 8999-12-31T23:59:59.999Z: 221,845,305,600,000 (8999-12-31) + 86,399,999
    past_ms = last_ms + 1  # 9000-01-01T00:00:00Z
    request = contracts_pb2.CreateContractRequest(customer_id="far", rate_card_id="card", starting_at=stamp(past_ms))
    assert refused(lambda: client.contracts.CreateContract(request)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["starting_at"],
    )
    request.starting_at.CopyFrom(stamp(last_ms))
    assert client.contracts.CreateContract(request).starting_at.ToMilliseconds() == last_ms


def test_a_timestamps_nanos_past_a_second_is_refused(client: TariffClient) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="nanos"))
    request = contracts_pb2.CreateContractRequest(customer_id="nanos", rate_card_id="card")
    request.starting_at.seconds = JAN_2024_MS // 1000
    request.starting_at.nanos = 1_000_000_000
    assert refused(lambda: client.contracts.CreateContract(request)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["starting_at"],
    )


def test_an_authorize_request_id_past_256_bytes_is_refused_naming_it(client: TariffClient) -> None:
    customer(client, "authz")
    request = balance_pb2.AuthorizeRequest(request_id="r" * 257, customer_id="authz", event_type="p", values={"n": 1})
    code, fields = refused(lambda: client.balance.Authorize(request))
    assert (code, fields) == (grpc.StatusCode.INVALID_ARGUMENT, ["request_id"])
    request.request_id = "r" * 256
    assert client.balance.Authorize(request).request_id == "r" * 256


def test_a_top_up_policy_of_more_than_1000_a_period_is_refused(client: TariffClient) -> None:
    customer(client, "topup")
    policy = contracts_pb2.TopUpPolicy(threshold="10", recharge_to="100", price_per_credit="0.9", max_per_period=1001)
    request = contracts_pb2.SetTopUpPolicyRequest(contract_id="topup-k", top_up=policy)
    assert refused(lambda: client.contracts.SetTopUpPolicy(request)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["top_up.max_per_period"],
    )
    request.top_up.max_per_period = 1000
    assert client.contracts.SetTopUpPolicy(request).top_up.max_per_period == 1000


def test_a_negative_page_size_is_refused(client: TariffClient) -> None:
    request = alerts_pb2.ListAlertRulesRequest(page_size=-1)
    assert refused(lambda: client.alerts.ListAlertRules(request)) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_size"])


# §7 Guarantees a client can see ---------------------------------------------------------------------------------------


def test_a_retry_answers_what_the_first_call_made_and_another_request_under_its_key_is_already_exists(
    client: TariffClient,
) -> None:
    first = client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="retry", name="Retry"))
    before = audit_count(client)
    again = client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="retry", name="Retry"))
    assert again == first
    other = contracts_pb2.CreateCustomerRequest(id="retry", name="Another")
    assert refused(lambda: client.contracts.CreateCustomer(other))[0] == grpc.StatusCode.ALREADY_EXISTS
    assert audit_count(client) == before
    assert client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="retry")).name == "Retry"


def test_a_malformed_reference_is_invalid_argument_and_a_well_formed_unknown_one_not_found(
    client: TariffClient,
) -> None:
    malformed = contracts_pb2.GetCustomerRequest(id="no such/customer")
    assert refused(lambda: client.contracts.GetCustomer(malformed)) == (grpc.StatusCode.INVALID_ARGUMENT, ["id"])
    unknown = contracts_pb2.GetCustomerRequest(id="nobody")
    assert refused(lambda: client.contracts.GetCustomer(unknown))[0] == grpc.StatusCode.NOT_FOUND


def test_a_resent_event_is_a_duplicate_and_another_under_its_id_a_conflict_changing_nothing(
    client: TariffClient,
) -> None:
    customer(client, "dedupe")
    sent = event("once", "dedupe", 2)
    assert rejected_in(client, sent) == []
    ack = client.ingest_batch([sent])
    assert (ack.accepted, ack.duplicates, len(ack.rejected)) == (0, 1, 0)
    changed = usage_pb2.UsageEvent()
    changed.CopyFrom(sent)
    changed.values["n"] = 3
    assert rejected_in(client, changed) == [("once", "DUPLICATE_CONFLICT")]
    assert charges(client, "dedupe") == "2"


def test_an_error_status_stays_small_whatever_the_request(client: TariffClient) -> None:
    # An id of 100,000 characters is refused with a message of at most 512 bytes.
    request = contracts_pb2.CreateCustomerRequest(id="x" * 100_000)
    with pytest.raises(TariffError) as failed:
        client.contracts.CreateCustomer(request)
    assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(failed.value.details.encode()) <= 512


def test_an_error_status_with_many_violations_keeps_its_details_within_4096_bytes(client: TariffClient) -> None:
    # A tiered price of 1,000 tiers, each priced at 10^18 (out of range): 1,000 findings, which PublishVersion
    # answers as violations, the first ones and a count.
    publish_card(client, "manybad", "1")
    tiers = [pricing_pb2.Tier(up_to=str(i + 1), unit_price="1e18") for i in range(999)]
    tiers.append(pricing_pb2.Tier(unit_price="1e18"))
    rate = pricing_pb2.Rate(product_id="p", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers))
    request = pricing_pb2.CreateDraftVersionRequest(rate_card_id="manybad", based_on_version=1, upsert_rates=[rate])
    number = client.pricing.CreateDraftVersion(request).version
    publish = pricing_pb2.PublishVersionRequest(
        rate_card_id="manybad", version=number, effective_from=stamp(JAN_2024_MS)
    )
    with pytest.raises(TariffError) as failed:
        client.pricing.PublishVersion(publish)
    assert failed.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(failed.value.details.encode()) <= 512
    status = failed.value.status
    assert status is not None
    assert len(status.SerializeToString()) <= 4096  # the google.rpc.Status, message included
    assert failed.value.details.endswith("(1000 violations in all; ValidateVersion lists them all)")
    named = [v.field for v in failed.value.field_violations]
    assert named[0] == "version.rates[0].tiered.tiers[0].unit_price" and named[-1] == ""  # "N more" comes last


# §6 and §8: a price field's value is held by validation, its text by the grammar where it enters -------------------


@pytest.mark.parametrize(
    ("price", "valid"),
    [
        ("1e18", False),  # 10^18: out of range
        ("1e-19", False),  # 19 places
        ("1.0000000000000000001", False),
        ("-1", False),  # negative
        ("1." + "0" * 63, True),  # 65 characters, value 1: a price field is held to 1,000 characters, not 64
        ("1e-19 * 1e3", True),  # numbers in a formula are held to their form only: 1e-16
    ],
)
def test_a_price_literals_value_is_a_validation_error_naming_it_and_refuses_the_publish(
    client: TariffClient, price: str, valid: bool
) -> None:
    card = f"lit-{zlib.crc32(price.encode())}"
    report = draft_and_validate(client, card, price)
    errors = [f.path for f in report.findings if f.severity == pricing_pb2.ERROR]
    assert errors == ([] if valid else ["rates[0].unit.price"])
    publish = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=2, effective_from=stamp(JAN_2024_MS))
    if valid:
        client.pricing.PublishVersion(publish)
        return
    before = audit_count(client)
    assert refused(lambda: client.pricing.PublishVersion(publish)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["version.rates[0].unit.price"],
    )
    assert audit_count(client) == before


def test_numbers_in_a_formula_are_held_to_their_form_only_and_the_value_is_charged(client: TariffClient) -> None:
    # 1e-19 * 1e3 = 10^-16 a unit; 10^4 units cost 10^-12, one pico.
    publish_card(client, "formula-small", "1e-19 * 1e3")
    customer(client, "fsmall", "formula-small")
    assert rejected_in(client, event("fs1", "fsmall", 1e4)) == []
    assert charges(client, "fsmall") == "0.000000000001"


# §6: a charge past 128 bits of picos is refused, by ingestion and by Authorize alike -----------------------------------


def test_a_charge_out_of_range_rejects_the_event_and_authorize_names_the_request(client: TariffClient) -> None:
    # 999999999999999.9 units at 999999999999999999 credits is about 10^33 credits, 10^45 picos: past 2^127.
    publish_card(client, "huge", "999999999999999999")
    customer(client, "huge1", "huge")
    assert rejected_in(client, event("huge-t", "huge1", 999999999999999.9)) == [("huge-t", "INVALID_EVENT")]
    assert charges(client, "huge1") == "0"
    request = balance_pb2.AuthorizeRequest(
        request_id="huge-r", customer_id="huge1", event_type="p", values={"n": 999999999999999.9}, reserve=True
    )
    with pytest.raises(TariffError) as failed:
        client.balance.Authorize(request)
    assert (failed.value.code, [v.field for v in failed.value.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["request"],
    )
    assert "out of range" in failed.value.details
    assert client.get_balance("huge1").credits_held == "0"


def test_the_authorize_streams_answer_a_charge_out_of_range_in_band_holding_nothing(client: TariffClient) -> None:
    # As above; the next request on the stream is answered as usual (1 unit: 999999999999999999 credits, overage).
    publish_card(client, "huge2", "999999999999999999")
    customer(client, "huge2c", "huge2")
    values = {"n": 999999999999999.9}
    out_of_range = balance_pb2.AuthorizeRequest(
        request_id="s1", customer_id="huge2c", event_type="p", values=values, reserve=True
    )
    within = balance_pb2.AuthorizeRequest(request_id="s2", customer_id="huge2c", event_type="p", values={"n": 1})
    answers = list(client.balance.AuthorizeStream(iter([out_of_range, within])))
    assert [(a.request_id, a.reason, a.allowed) for a in answers] == [
        ("s1", "INVALID_REQUEST", False),
        ("s2", "OVERAGE_ALLOWED", True),
    ]
    assert answers[0].message == "the charge for product 'p' is out of range"
    assert answers[1].estimated_cost == "999999999999999999"
    batch = balance_pb2.AuthorizeBatch(requests=[out_of_range])
    (result,) = list(client.balance.AuthorizeBatches(iter([batch])))
    assert [(a.request_id, a.reason) for a in result.responses] == [("s1", "INVALID_REQUEST")]
    assert client.get_balance("huge2c").credits_held == "0"


# §6 Overage due: 45 integer digits printed whole; an invoice rounds half-even once to the minor unit ---------------------


def test_overage_due_at_its_largest_is_printed_whole(client: TariffClient) -> None:
    # 99999999999999.9 units at 10^12 credits: 99999999999999900000000000 credits of overage, at an overage price of
    # 999999999999999999.999999999999999999 = 10^18 - 10^-18 a credit:
    # 99999999999999900000000000 x 10^18 - 99999999999999900000000000 x 10^-18
    # = 99999999999999900000000000000000000000000000 - 99999999.9999999
    # = 99999999999999899999999999999999999900000000.0000001 (balance.proto's example).
    publish_card(client, "tera", "1000000000000")
    customer(client, "largest", "tera", overage_price="999999999999999999.999999999999999999")
    assert rejected_in(client, event("largest-t", "largest", 99999999999999.9)) == []
    balance = client.get_balance("largest")
    assert balance.overage_amount == "99999999999999900000000000"
    assert balance.overage_due == "99999999999999899999999999999999999900000000.0000001"
    # Rounded to cents once on the invoice: .0000001 rounds to .00.
    invoice = preview(client, "largest", balance.period_start.ToMilliseconds())
    assert invoice.overage_due == "99999999999999899999999999999999999900000000.00"


@pytest.mark.parametrize(("units", "balance_due", "invoice_due"), [(2.5, "2.5", "2"), (3.5, "3.5", "4")])
def test_overage_due_in_yen_is_exact_on_the_balance_and_half_even_on_the_invoice(
    client: TariffClient, units: float, balance_due: str, invoice_due: str
) -> None:
    # At 1 JPY a credit, 2.5 and 3.5 credits of overage are 2.5 and 3.5 JPY; yen have no minor unit, so the invoice
    # rounds half-even to 2 and 4.
    name = f"yen{int(units * 10)}"
    customer(client, name, currency="JPY")
    assert rejected_in(client, event(f"{name}-t", name, units)) == []
    balance = client.get_balance(name)
    assert (balance.overage_due, balance.currency) == (balance_due, "JPY")
    assert preview(client, name, balance.period_start.ToMilliseconds()).overage_due == invoice_due


# §8: a Duration a request names, and a list's page size -----------------------------------------------------------------


@pytest.mark.parametrize(("seconds", "nanos"), [(0, 1_500_000), (1, 1), (1, -1_000_000), (0, 1_000_000_000)])
def test_a_reservation_ttl_not_of_whole_milliseconds_or_invalid_is_refused_naming_it(
    client: TariffClient, seconds: int, nanos: int
) -> None:
    customer(client, "ttl")
    request = balance_pb2.AuthorizeRequest(
        request_id=f"ttl-{seconds}-{nanos}", customer_id="ttl", event_type="p", values={"n": 1}, reserve=True
    )
    request.reservation_ttl.seconds, request.reservation_ttl.nanos = seconds, nanos
    assert refused(lambda: client.balance.Authorize(request)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["reservation_ttl"],
    )
    assert client.get_balance("ttl").credits_held == "0"


# §7 Every state-changing call is safe to retry ------------------------------------------------------------------------


def seq(client: TariffClient) -> int:
    """The journal's sequence number as a balance reads it: it moves with every record that changed state."""
    return int(client.get_balance("seq-probe").as_of_seq)


def test_a_close_due_periods_finding_nothing_due_writes_nothing(client: TariffClient) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="seq-probe"))
    client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())  # whatever is due now is closed
    before = seq(client)
    again = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
    assert again.invoices_made == 0
    assert seq(client) == before


def test_setting_the_top_up_policy_held_writes_nothing(client: TariffClient) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="seq-probe"))
    customer(client, "samepolicy")
    policy = contracts_pb2.TopUpPolicy(threshold="10", recharge_to="100", price_per_credit="0.9", max_per_period=2)
    request = contracts_pb2.SetTopUpPolicyRequest(contract_id="samepolicy-k", top_up=policy)
    first = client.contracts.SetTopUpPolicy(request)
    before = seq(client)
    assert client.contracts.SetTopUpPolicy(request) == first
    assert seq(client) == before


def test_a_contract_made_without_an_id_is_named_by_its_content_so_a_retry_makes_no_other(client: TariffClient) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="noid"))
    request = contracts_pb2.CreateContractRequest(
        customer_id="noid", rate_card_id="card", starting_at=stamp(JAN_2024_MS)
    )
    first = client.contracts.CreateContract(request)
    before = audit_count(client)
    again = client.contracts.CreateContract(request)
    assert (again.id, again) == (first.id, first)
    assert audit_count(client) == before


def test_an_alert_rule_made_without_an_id_is_named_alert_hash_and_a_deleted_ones_id_is_not_reused(
    client: TariffClient,
) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="alerted"))
    request = alerts_pb2.CreateAlertRequest(customer_id="alerted", type=alerts_pb2.SPEND_THRESHOLD, threshold="5.50")
    first = client.alerts.CreateAlert(request)
    assert first.id.startswith("alert-") and first.threshold == "5.5"
    assert client.alerts.CreateAlert(request) == first
    client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id=first.id))
    assert refused(lambda: client.alerts.CreateAlert(request))[0] == grpc.StatusCode.ALREADY_EXISTS


def test_holds_naming_no_reservation_get_new_ids_and_a_release_retried_answers_as_the_first(
    client: TariffClient,
) -> None:
    customer(client, "holder")
    grant(client, "holder", "holder-g", "100")
    request = balance_pb2.AuthorizeRequest(customer_id="holder", event_type="p", values={"n": 3}, reserve=True)
    one, two = client.balance.Authorize(request), client.balance.Authorize(request)
    assert one.allowed and two.allowed and one.reservation_id != two.reservation_id
    assert client.get_balance("holder").credits_held == "6"
    release = balance_pb2.ReleaseReservationRequest(customer_id="holder", reservation_id=one.reservation_id)
    assert client.balance.ReleaseReservation(release).released_amount == "3"
    assert client.balance.ReleaseReservation(release).released_amount == "3"
    assert client.get_balance("holder").credits_held == "3"


# §8 The future skew ------------------------------------------------------------------------------------------------------


def test_an_event_past_the_future_skew_is_timestamp_out_of_range_and_one_within_it_taken(client: TariffClient) -> None:
    # 300 s by default: 10 minutes ahead is past it, 1 minute ahead within it, whatever the few ms between.
    customer(client, "skew")
    ahead = event("skew-far", "skew", 1)
    ahead.timestamp_ms += 600_000
    near = event("skew-near", "skew", 2)
    near.timestamp_ms += 60_000
    assert rejected_in(client, ahead, near) == [("skew-far", "TIMESTAMP_OUT_OF_RANGE")]
    assert charges(client, "skew") == "2"


# §6 Free-text input; §7 Bad input gets a precise answer ---------------------------------------------------------------


def test_a_shown_text_with_a_control_is_refused_naming_the_field_position_and_code_point(client: TariffClient) -> None:
    before = audit_count(client)
    request = contracts_pb2.CreateCustomerRequest(id="shown", name="abc\u202edef")
    with pytest.raises(TariffError) as failed:
        client.contracts.CreateCustomer(request)
    assert (failed.value.code, [v.field for v in failed.value.field_violations]) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["name"],
    )
    assert "character 4 is U+202E" in failed.value.details
    assert audit_count(client) == before
    publish_card(client, "noted", "1")
    note = "first line\n\tsecond line"  # a change note may hold LF and tab, not CR
    draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="noted", based_on_version=1, change_note=note)
    assert client.pricing.CreateDraftVersion(draft).change_note == note
    draft.change_note = "a\rb"
    assert refused(lambda: client.pricing.CreateDraftVersion(draft)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["change_note"],
    )


def test_usage_texts_are_not_held_to_the_shown_text_rule(client: TariffClient) -> None:
    # An event's dimension values are the events' as sent: an ESC in one is taken.
    customer(client, "esc")
    assert rejected_in(client, event("esc1", "esc", 1, dimensions={"k": "a\x1bb"})) == []
    assert charges(client, "esc") == "1"


def test_an_events_customer_id_breaking_the_id_rule_is_unknown_customer_naming_the_rule(client: TariffClient) -> None:
    ack = client.ingest_batch([event("rule1", "bad/id", 1), event("rule2", "nobody-at-all", 1)])
    answers = [(r.transaction_id, usage_pb2.RejectReason.Name(r.reason)) for r in ack.rejected]
    assert answers == [("rule1", "UNKNOWN_CUSTOMER"), ("rule2", "UNKNOWN_CUSTOMER")]
    assert ack.rejected[0].message.startswith("customer_id: 'bad/id' must be 1-128 characters")
    assert "does not exist" in ack.rejected[1].message


# §7 Nothing acknowledged is lost; retries hold across a restart ----------------------------------------------------------


def test_what_was_acknowledged_survives_a_kill_and_its_retries_answer_the_same(server: ServerProcess) -> None:
    with server.client() as client:
        customer(client, "durable")
        sent = event("durable-1", "durable", 7)
        assert rejected_in(client, sent) == []
        made = client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="durable"))
    server.kill9()
    server.restart()
    with server.client() as client:
        assert charges(client, "durable") == "7"
        ack = client.ingest_batch([sent])
        assert (ack.accepted, ack.duplicates) == (0, 1)
        retry = contracts_pb2.CreateCustomerRequest(id="durable", name="durable")
        assert client.contracts.CreateCustomer(retry) == made
        other = contracts_pb2.CreateCustomerRequest(id="durable", name="someone else")
        assert refused(lambda: client.contracts.CreateCustomer(other))[0] == grpc.StatusCode.ALREADY_EXISTS
        assert charges(client, "durable") == "7"


# §8 List page size: 100 by default, at most 1,000 ----------------------------------------------------------------------


def test_a_list_page_is_100_by_default_and_at_most_1000_whatever_is_asked(client: TariffClient) -> None:
    # 1,001 customers of this test's own (ids "page-0000" up to "page-1000"), besides the module's others.
    for i in range(1_001):
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=f"page-{i:04d}"))
    default = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest())
    assert (len(default.customers), bool(default.next_page_token)) == (100, True)
    asked = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=5_000))
    assert (len(asked.customers), bool(asked.next_page_token)) == (1_000, True)


def test_a_reservation_id_past_256_bytes_is_refused_by_authorize_and_rejects_a_usage_event(
    client: TariffClient,
) -> None:
    customer(client, "resv")
    grant(client, "resv", "resv-g", "100")
    request = balance_pb2.AuthorizeRequest(
        request_id="a", customer_id="resv", event_type="p", values={"n": 1}, reserve=True, reservation_id="x" * 257
    )
    assert refused(lambda: client.balance.Authorize(request)) == (grpc.StatusCode.INVALID_ARGUMENT, ["reservation_id"])
    assert client.get_balance("resv").credits_held == "0"
    request.reservation_id = "x" * 256
    assert client.balance.Authorize(request).reservation_id == "x" * 256
    assert client.get_balance("resv").credits_held == "1"
    ack = client.ingest_batch([event("resv-long", "resv", 1, reservation_id="y" * 257)])
    assert [(r.transaction_id, usage_pb2.RejectReason.Name(r.reason), r.message) for r in ack.rejected] == [
        ("resv-long", "INVALID_EVENT", "reservation_id is longer than 256 bytes")
    ]


def test_explain_line_item_refuses_a_page_size_past_1000_where_the_lists_cap_it(client: TariffClient) -> None:
    customer(client, "explained")
    assert rejected_in(client, event("explained-1", "explained", 2)) == []
    start = client.get_balance("explained").period_start

    def explain(page_size: int) -> invoices_pb2.ExplainLineItemResponse:
        request = invoices_pb2.ExplainLineItemRequest(
            customer_id="explained", period_start=start, line_id="p", page_size=page_size
        )
        answer: invoices_pb2.ExplainLineItemResponse = client.invoices.ExplainLineItem(request)
        return answer

    assert len(explain(1_000).events) == 1
    assert refused(lambda: explain(1_001)) == (grpc.StatusCode.INVALID_ARGUMENT, ["page_size"])
    # A list answers a page_size past 1,000 (read as 1,000, pinned with full pages in test_audit_invoicedoc_wire.py)
    # where ExplainLineItem refuses it: the call raises if refused.
    client.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1_001))


# §8 Instants: a part finer than a millisecond ------------------------------------------------------------------------------


def test_a_period_start_past_a_whole_millisecond_is_refused_by_a_close_and_dropped_by_a_preview(
    client: TariffClient,
) -> None:
    # A close names a period by its exact start: 2024-01-01T00:00:00.000000001Z is none. A preview locates the period
    # holding the instant, as the whole millisecond would.
    customer(client, "finestart")
    finer = stamp(JAN_2024_MS)
    finer.nanos = 1
    close = invoices_pb2.ClosePeriodRequest(customer_id="finestart", period_start=finer)
    assert refused(lambda: client.invoices.ClosePeriod(close)) == (grpc.StatusCode.INVALID_ARGUMENT, ["period_start"])
    located = preview(client, "finestart", JAN_2024_MS)
    request = invoices_pb2.PreviewInvoiceRequest(customer_id="finestart", period_start=finer)
    assert client.invoices.PreviewInvoice(request).period_start == located.period_start


def test_an_effective_from_off_the_hour_by_a_nanosecond_is_refused(client: TariffClient) -> None:
    publish_card(client, "finehour", "1")
    number = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="finehour", based_on_version=1)
    ).version
    request = pricing_pb2.PublishVersionRequest(rate_card_id="finehour", version=number)
    request.effective_from.seconds, request.effective_from.nanos = 4_102_444_800, 1  # 2100-01-01 and 1 ns
    assert refused(lambda: client.pricing.PublishVersion(request)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        ["effective_from"],
    )


def test_authorize_estimates_an_event_type_no_product_has_at_0(client: TariffClient) -> None:
    customer(client, "longtype2")
    request = balance_pb2.AuthorizeRequest(
        request_id="lt", customer_id="longtype2", event_type="p" * 1000, values={"n": 5}
    )
    answer = client.balance.Authorize(request)
    assert (answer.allowed, answer.estimated_cost) == (True, "0")


def test_a_values_key_of_256_bytes_is_taken_and_257_rejected(client: TariffClient) -> None:
    customer(client, "valuekeys")
    assert rejected_in(
        client,
        event("vk-257", "valuekeys", 1, values={"n": 1.0, "k" * 257: 1.0}),
        event("vk-256", "valuekeys", 1, values={"n": 1.0, "k" * 256: 1.0}),
    ) == [("vk-257", "INVALID_EVENT")]
    assert charges(client, "valuekeys") == "1"


def test_a_price_per_units_is_an_exact_ratio_rounded_to_picos_once_per_side(client: TariffClient) -> None:
    # 1 credit per 3 units is not rounded at 18 places: 10^12 units cost 333333333333.333333333333 (whole picos).
    # Two events of a unit: price(1) = 0.333333333333(3) -> 0.333333333333, price(2) = 0.666666666666(6) ->
    # 0.666666666667, so they are charged 0.333333333333 and 0.333333333334: 0.666666666667 in all.
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="per3", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="p", unit=pricing_pb2.UnitPrice(price="1", per_units="3"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="per3", upsert_rates=[rate]))
    publish = pricing_pb2.PublishVersionRequest(rate_card_id="per3", version=1, effective_from=stamp(JAN_2024_MS))
    client.pricing.PublishVersion(publish)
    customer(client, "per-many", "per3")
    assert rejected_in(client, event("per-many-1", "per-many", 1e12)) == []
    assert charges(client, "per-many") == "333333333333.333333333333"
    customer(client, "per-two", "per3")
    assert rejected_in(client, event("per-two-1", "per-two", 1), event("per-two-2", "per-two", 1)) == []
    assert charges(client, "per-two") == "0.666666666667"
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id="per-two", period_start=client.get_balance("per-two").period_start, line_id="p"
    )
    explained = client.invoices.ExplainLineItem(request)
    assert sorted(e.amount for e in explained.events) == ["0.333333333333", "0.333333333334"]


def test_a_request_id_keys_a_grant_and_a_draft_so_a_retry_makes_nothing_and_another_request_is_already_exists(
    client: TariffClient,
) -> None:
    customer(client, "keyed")
    new = contracts_pb2.Grant(contract_id="keyed-k", kind=contracts_pb2.PREPAID, amount="5", paid_amount="1")
    request = contracts_pb2.GrantCreditsRequest(grant=new, request_id="grant-key")
    first = client.contracts.GrantCredits(request)
    before = audit_count(client)
    assert client.contracts.GrantCredits(request) == first
    request.grant.amount = "6"
    assert refused(lambda: client.contracts.GrantCredits(request))[0] == grpc.StatusCode.ALREADY_EXISTS
    assert client.get_balance("keyed").credits_remaining == "5"
    publish_card(client, "keyedcard", "1")
    draft = pricing_pb2.CreateDraftVersionRequest(rate_card_id="keyedcard", based_on_version=1, request_id="draft-key")
    made = client.pricing.CreateDraftVersion(draft)
    assert client.pricing.CreateDraftVersion(draft) == made
    draft.change_note = "another"
    assert refused(lambda: client.pricing.CreateDraftVersion(draft))[0] == grpc.StatusCode.ALREADY_EXISTS
    # The card's creation, its version 1's draft and publish, and the keyed draft: 4 entries, none of a retry's.
    assert audit_count(client) == before + 4


# §6 Revenue: drawn x paid_amount / amount, from the cumulative draw, rounded half-even to picos once -------------------


def test_revenue_is_recognised_from_the_cumulative_draw_rounded_once(client: TariffClient) -> None:
    # A grant of 3 credits paid 1 USD, drawn 1 then 1: 2 x 1 / 3 = 0.666666666666(6) USD rounds to 0.666666666667
    # (the draws rounded one by one would give 0.333333333333 twice, 0.666666666666); 0.333333333333 stays deferred.
    customer(client, "revenue")
    new = contracts_pb2.Grant(
        id="revenue-g", contract_id="revenue-k", kind=contracts_pb2.PREPAID, amount="3", paid_amount="1"
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))
    assert rejected_in(client, event("revenue-1", "revenue", 1), event("revenue-2", "revenue", 1)) == []
    balance = client.get_balance("revenue")
    request = invoices_pb2.GetRevenueReportRequest(
        period_start=balance.period_start, period_end=balance.period_end, customer_id="revenue"
    )
    report = client.invoices.GetRevenueReport(request)
    (line,) = report.customer_lines
    assert (line.recognized, line.deferred) == ("0.666666666667", "0.333333333333")
    assert report.reconciliation.reconciles


# §6 Decimal input: not negative unless the field allows it (parameters may be) ------------------------------------------


def negative_request(client: TariffClient, message: str, name: str) -> Callable[[], object]:
    """The call setting `message`'s field `name` to "-1", sound values elsewhere, on customer `negative`."""
    contracts = client.contracts
    if message == "override":
        override = contracts_pb2.PriceOverride(product_id="p")
        setattr(override, name, "-1")
        request = contracts_pb2.AddOverrideRequest(contract_id="negative-k", override=override)
        return lambda: contracts.AddOverride(request)
    if message == "top_up":
        policy = contracts_pb2.TopUpPolicy(threshold="10", recharge_to="100", price_per_credit="0.9", max_per_period=1)
        setattr(policy, name, "-1")
        top_up = contracts_pb2.SetTopUpPolicyRequest(contract_id="negative-k", top_up=policy)
        return lambda: contracts.SetTopUpPolicy(top_up)
    new = contracts_pb2.Grant(id="neg-g", contract_id="negative-k", kind=contracts_pb2.PREPAID, amount="1")
    new.paid_amount = "1"
    setattr(new, name, "-1")
    grant_request = contracts_pb2.GrantCreditsRequest(grant=new)
    return lambda: contracts.GrantCredits(grant_request)


@pytest.mark.parametrize(
    "field",
    [
        "override.multiplier",
        "override.price",
        "top_up.threshold",
        "top_up.recharge_to",
        "top_up.price_per_credit",
        "grant.paid_amount",
        "grant.rollover_fraction",
    ],
)
def test_a_negative_decimal_is_refused_naming_its_field_and_changes_nothing(client: TariffClient, field: str) -> None:
    customer(client, "negative")
    message, name = field.split(".")
    before = audit_count(client)
    assert refused(negative_request(client, message, name)) == (grpc.StatusCode.INVALID_ARGUMENT, [field])
    assert audit_count(client) == before
