"""An acceptance audit of customers, contracts and overrides over the wire, against one real server for the file
(contracts.proto: CreateCustomer, GetCustomer, CreateContract, GetContract, AddOverride; README "Contracts",
"Contract switches", "Ids", "Invoices and revenue"), as a demanding billing user reads them: every amount computed
by hand from the docs, none read back from the server.

The catalogue: products `units`, `grad`, `vol`, `pkg`, `flat` and `other` (event type = product id, SUM of `n`) and
`tokens` (event type `llm`, SUM of `n`, pricing dimension `model`). Rate card `card` (credits), in force from
2024-01-01:
- units: UNIT 2 per 10 units (25 units cost 5)
- grad: GRADUATED, per 1 unit, up to 10 at 1, then 0.5 with a flat 3 on entering (25 units: 10 + 7.5 + 3 = 20.5)
- vol: VOLUME, the same tiers (25 units: 25 x 0.5 + 3 = 15.5)
- pkg: PACKAGE of 10 at 4 (25 units: 3 packages, 12)
- flat: FLAT 7
- tokens: UNIT 1 per unit
- other: no rate.
Each test makes its own customers. The server runs with API keys (an admin key, and one restricted to customer
`mine`) and `--close-grace off`, so that no period closes while a test runs."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from engine.errors import MADE_BY_ANOTHER_REQUEST
from server.convert import timestamp as stamp
from tests.serverproc import ServerProcess
from tests.test_server_auth import Keys

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
KEYS: dict[str, tuple[str, list[str] | None]] = {"ops-admin": ("admin", None), "mine-admin": ("admin", ["mine"])}
RULE_WHY = "must be 1-128 characters of letters, digits and ._:@-"


def at(text: str) -> int:
    """Unix ms of an ISO-8601 UTC instant ("2025-03-15T00:00:00")."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


class World:
    def __init__(self, server: ServerProcess, keys: Keys) -> None:
        self.server, self.keys = server, keys

    def admin(self) -> TariffClient:
        return self.server.client()


def catalogue(client: TariffClient) -> None:
    for product_id in ("units", "grad", "vol", "pkg", "flat", "other"):
        product = pricing_pb2.Product(id=product_id, event_type=product_id, aggregation=pricing_pb2.SUM, value_key="n")
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    tokens = pricing_pb2.Product(
        id="tokens", event_type="llm", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["model"]
    )
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=tokens))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    tiers = [pricing_pb2.Tier(up_to="10", unit_price="1"), pricing_pb2.Tier(unit_price="0.5", flat_price="3")]
    rates = [
        pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="2", per_units="10")),
        pricing_pb2.Rate(
            product_id="grad", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.GRADUATED, tiers=tiers, per_units="1")
        ),
        pricing_pb2.Rate(
            product_id="vol", tiered=pricing_pb2.TieredPrice(mode=pricing_pb2.VOLUME, tiers=tiers, per_units="1")
        ),
        pricing_pb2.Rate(product_id="pkg", package=pricing_pb2.PackagePrice(package_size="10", package_price="4")),
        pricing_pb2.Rate(product_id="flat", flat=pricing_pb2.FlatPrice(price="7")),
        pricing_pb2.Rate(product_id="tokens", unit=pricing_pb2.UnitPrice(price="1")),
    ]
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id="card", version=1, effective_from=stamp(at("2024-01-01T00:00:00"))
        )
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root: Path = tmp_path_factory.mktemp("audit-contracts")
    keys = Keys(root / "keys.json", KEYS)
    server = ServerProcess(
        root / "data", extra_args=[*keys.args, "--close-grace", "off"], api_key=keys.key["ops-admin"]
    )
    server.start()
    try:
        with server.client() as admin:
            catalogue(admin)
        yield World(server, keys)
    finally:
        server.stop()


def month_start_ms() -> int:
    now = datetime.now(UTC)
    return int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp() * 1000)


def customer(client: TariffClient, customer_id: str, **contract: Any) -> str:
    """The customer and a contract `k-<customer>` on `card` (from this month's start unless starting_at is given)."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    contract.setdefault("starting_at", stamp(month_start_ms()))
    request = contracts_pb2.CreateContractRequest(
        id=f"k-{customer_id}", customer_id=customer_id, rate_card_id="card", **contract
    )
    client.contracts.CreateContract(request)
    return f"k-{customer_id}"


def event(
    transaction_id: str, customer_id: str, event_type: str, n: float, at_ms: int, **dimensions: str
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type=event_type,
        timestamp_ms=at_ms,
        values={"n": n},
        dimensions=dimensions,
    )


def rated(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch(list(events))
    assert ack.accepted == len(events), ack


def refusal(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, list[tuple[str, str]]]:
    with pytest.raises(TariffError) as failed:
        call()
    error = failed.value
    return error.code, error.details, [(v.field, v.description) for v in error.field_violations]


def preview(client: TariffClient, customer_id: str, at_ms: int | None = None) -> invoices_pb2.Invoice:
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id)
    if at_ms is not None:
        request.period_start.CopyFrom(stamp(at_ms))
    invoice: invoices_pb2.Invoice = client.invoices.PreviewInvoice(request)
    return invoice


def lines(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str]]:
    """line id -> (quantity, amount)."""
    return {line.line_id: (line.quantity, line.amount) for line in invoice.lines}


def add_override(client: TariffClient, contract_id: str, **fields: Any) -> contracts_pb2.Contract:
    answer: contracts_pb2.Contract = client.contracts.AddOverride(
        contracts_pb2.AddOverrideRequest(contract_id=contract_id, override=contracts_pb2.PriceOverride(**fields))
    )
    return answer


# Customers --------------------------------------------------------------------------------------------------------


def test_create_customer_is_idempotent_and_get_customer_names_what_it_cannot_find(world: World) -> None:
    with world.admin() as client:
        request = contracts_pb2.CreateCustomerRequest(id="cu1", name="Cu One", attributes={"segment": "smb"})
        first = client.contracts.CreateCustomer(request)
        again = client.contracts.CreateCustomer(request)
        assert again == first and (first.name, dict(first.attributes)) == ("Cu One", {"segment": "smb"})
        changed = contracts_pb2.CreateCustomerRequest(id="cu1", name="Someone Else")
        code, message, _ = refusal(lambda: client.contracts.CreateCustomer(changed))
        assert (code, message) == (
            grpc.StatusCode.ALREADY_EXISTS,
            "customer 'cu1' already exists" + MADE_BY_ANOTHER_REQUEST,
        )
        assert client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id="cu1")) == first
        unnamed = client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="cu2"))
        assert unnamed.name == "cu2"  # the name defaults to the id
        get = client.contracts.GetCustomer
        assert refusal(lambda: get(contracts_pb2.GetCustomerRequest(id="nobody")))[:2] == (
            grpc.StatusCode.NOT_FOUND,
            "customer 'nobody' does not exist",
        )
        assert refusal(lambda: get(contracts_pb2.GetCustomerRequest()))[:2] == (
            grpc.StatusCode.INVALID_ARGUMENT,
            "id: is required",
        )
        code, _, violations = refusal(lambda: get(contracts_pb2.GetCustomerRequest(id="not an id!")))
        assert (code, violations) == (grpc.StatusCode.INVALID_ARGUMENT, [("id", f"'not an id!' {RULE_WHY}")])
        code, _, violations = refusal(
            lambda: client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="a/b"))
        )
        assert (code, violations) == (grpc.StatusCode.INVALID_ARGUMENT, [("id", f"'a/b' {RULE_WHY}")])


def test_a_customer_name_is_at_most_256_bytes_so_that_a_page_of_customers_stays_readable(world: World) -> None:
    """A name had no bound: eight customers named with 2 MB each (every request under the 16 MiB message limit) made
    ListCustomers' default page larger than any client reads (RESOURCE_EXHAUSTED, for every caller). A name is now
    held to 256 bytes of UTF-8, as an attribute's value: 256 (128 x 'é') is kept whole, 257 is INVALID_ARGUMENT
    naming `name`, and nothing is created."""
    with world.admin() as client:
        longest = "é" * 128
        made = client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="long-name", name=longest))
        assert made.name == longest
        too_long = contracts_pb2.CreateCustomerRequest(id="too-long-name", name=longest + "x")
        code, _, violations = refusal(lambda: client.contracts.CreateCustomer(too_long))
        assert (code, violations) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            [("name", "must be at most 256 bytes (UTF-8), not 257")],
        )
        lookup = contracts_pb2.GetCustomerRequest(id="too-long-name")
        assert refusal(lambda: client.contracts.GetCustomer(lookup))[0] == grpc.StatusCode.NOT_FOUND


# Contracts --------------------------------------------------------------------------------------------------------


def test_create_contract_refusals_name_the_field_and_create_nothing(world: World) -> None:
    """Every refusal leaves no contract `bad` behind."""
    with world.admin() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="cv"))
        start, end = stamp(at("2025-06-01T00:00:00")), stamp(at("2025-06-01T00:00:00"))

        def create(**fields: Any) -> Callable[[], object]:
            request = {"id": "bad", "customer_id": "cv", "rate_card_id": "card", "starting_at": start, **fields}
            return lambda: client.contracts.CreateContract(contracts_pb2.CreateContractRequest(**request))

        invalid = grpc.StatusCode.INVALID_ARGUMENT
        expected: list[tuple[Callable[[], object], grpc.StatusCode, str]] = [
            (create(customer_id=""), invalid, "customer_id: is required"),
            (create(rate_card_id=""), invalid, "rate_card_id: is required"),
            (create(customer_id="ghost"), grpc.StatusCode.NOT_FOUND, "customer 'ghost' does not exist"),
            (create(rate_card_id="no-card"), grpc.StatusCode.NOT_FOUND, "rate card 'no-card' does not exist"),
            (create(ending_before=end), invalid, "ending_before: must be after starting_at"),
            (create(overage_price="-1"), invalid, "overage_price: '-1' must not be negative"),
            (create(overage_policy=7), invalid, "overage_policy: unknown value 7"),
        ]
        for call, code, message in expected:
            assert refusal(call)[:2] == (code, message)
        for field, value in (("customer_id", "a b"), ("rate_card_id", "card!"), ("id", "k 1")):
            code, _, violations = refusal(create(**{field: value}))
            assert (code, violations) == (invalid, [(field, f"{value!r} {RULE_WHY}")]), field
        for price in ("1e-19", "1.", "+1", "0.5 "):
            code, _, violations = refusal(create(overage_price=price))
            assert code == invalid and [field for field, _ in violations] == ["overage_price"], price
        for currency in ("usd", "US Dollar", "€", "USDX"):
            code, _, violations = refusal(create(currency=currency))
            assert code == invalid and [field for field, _ in violations] == ["currency"], currency
        assert refusal(lambda: client.contracts.GetContract(contracts_pb2.GetContractRequest(id="bad")))[:2] == (
            grpc.StatusCode.NOT_FOUND,
            "contract 'bad' does not exist",
        )


def test_create_contract_retries_answer_the_same_contract_and_a_changed_one_already_exists(world: World) -> None:
    """Without an id the contract is named after the customer and its start's UTC date; the same request again is
    the same contract, a changed one (another end) ALREADY_EXISTS, and GetContract answers what was created."""
    with world.admin() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="cr"))
        request = contracts_pb2.CreateContractRequest(
            customer_id="cr",
            rate_card_id="card",
            starting_at=stamp(at("2025-01-01T00:00:00")),
            ending_before=stamp(at("2025-02-01T00:00:00")),
            overage_policy=contracts_pb2.BLOCK,
            overage_price="0.25",
            currency="EUR",
        )
        first = client.contracts.CreateContract(request)
        assert first.id == "cr-20250101"
        assert (first.overage_policy, first.overage_price, first.currency) == (contracts_pb2.BLOCK, "0.25", "EUR")
        assert client.contracts.CreateContract(request) == first
        assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id="cr-20250101")) == first
        changed = contracts_pb2.CreateContractRequest()
        changed.CopyFrom(request)
        changed.ending_before.CopyFrom(stamp(at("2025-02-02T00:00:00")))
        assert refusal(lambda: client.contracts.CreateContract(changed))[:2] == (
            grpc.StatusCode.ALREADY_EXISTS,
            "contract 'cr-20250101' already exists" + MADE_BY_ANOTHER_REQUEST,
        )
        defaults = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="cr-2", customer_id="cr", rate_card_id="card", starting_at=stamp(at("2025-03-01T00:00:00"))
            )
        )
        assert (defaults.overage_policy, defaults.overage_price, defaults.currency) == (contracts_pb2.ALLOW, "1", "USD")
        assert not defaults.HasField("ending_before")


def test_successive_contracts_route_usage_by_event_time_and_never_overlap(world: World) -> None:
    """s1 runs 2025-01-01 to 2025-03-15 (its periods start on the 1st), s2 from 2025-03-15 on (periods start on the
    15th). A contract starting a second before s1's end overlaps it: FAILED_PRECONDITION, nothing created. s1 has an
    override (price 9 per 10 units). An event of 10 units a millisecond before the switch is s1's (period March 1 -
    April 1, 9 credits: s1's override), 30 at the switch are s2's (March 15 - April 15, the card's 6), one before s1
    NO_ACTIVE_CONTRACT. The month of the switch has two drafts, each with its own usage."""
    with world.admin() as client:
        customer(
            client, "sw", starting_at=stamp(at("2025-01-01T00:00:00")), ending_before=stamp(at("2025-03-15T00:00:00"))
        )
        overlapping = contracts_pb2.CreateContractRequest(
            id="sw-x", customer_id="sw", rate_card_id="card", starting_at=stamp(at("2025-03-14T23:59:59"))
        )
        code, message, _ = refusal(lambda: client.contracts.CreateContract(overlapping))
        assert (code, message) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "customer 'sw' already has contract 'k-sw' in that time",
        )
        assert refusal(lambda: client.contracts.GetContract(contracts_pb2.GetContractRequest(id="sw-x")))[0] == (
            grpc.StatusCode.NOT_FOUND
        )
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id="sw-2", customer_id="sw", rate_card_id="card", starting_at=stamp(at("2025-03-15T00:00:00"))
            )
        )
        add_override(client, "k-sw", product_id="units", price="9")  # s1's own price: 9 per 10 units, not s2's
        switch = at("2025-03-15T00:00:00")
        ack = client.ingest_batch(
            [
                event("sw-a", "sw", "units", 10, switch - 1),
                event("sw-b", "sw", "units", 30, switch),
                event("sw-c", "sw", "units", 50, at("2024-12-31T23:00:00")),
            ]
        )
        assert ack.accepted == 2 and [(r.transaction_id, r.reason) for r in ack.rejected] == [
            ("sw-c", usage_pb2.NO_ACTIVE_CONTRACT)
        ]
        old = preview(client, "sw", at("2025-03-10T00:00:00"))
        assert (old.contract_id, old.period_start.ToMilliseconds(), old.period_end.ToMilliseconds()) == (
            "k-sw",
            at("2025-03-01T00:00:00"),
            at("2025-04-01T00:00:00"),
        )
        assert lines(old) == {"units": ("10", "9")}
        for instant in ("2025-03-20T00:00:00", "2025-04-05T00:00:00"):  # the first in both: the new one's
            new = preview(client, "sw", at(instant))
            assert (new.contract_id, new.period_start.ToMilliseconds(), new.period_end.ToMilliseconds()) == (
                "sw-2",
                at("2025-03-15T00:00:00"),
                at("2025-04-15T00:00:00"),
            )
            assert lines(new) == {"units": ("30", "6")}


def test_periods_anchored_on_the_31st_end_on_short_months_last_day_without_drifting(world: World) -> None:
    """Anchored on 2024-01-31: periods end 2024-02-29 (leap year), 2024-03-31, 2024-04-30, ..., 2025-02-28: each
    computed from the anchor, so March's period still ends on the 31st after February's clamp."""
    with world.admin() as client:
        customer(client, "an", starting_at=stamp(at("2024-01-31T00:00:00")))
        expected = [
            ("2024-02-10", "2024-01-31", "2024-02-29"),
            ("2024-03-10", "2024-02-29", "2024-03-31"),
            ("2024-04-10", "2024-03-31", "2024-04-30"),
            ("2024-05-31", "2024-05-31", "2024-06-30"),
            ("2025-02-10", "2025-01-31", "2025-02-28"),
            ("2025-03-30", "2025-02-28", "2025-03-31"),
        ]
        for index, (day, start, end) in enumerate(expected):
            rated(client, event(f"an-{index}", "an", "units", 10 * (index + 1), at(day + "T12:00:00")))
            invoice = preview(client, "an", at(day + "T12:00:00"))
            period = (invoice.period_start.ToMilliseconds(), invoice.period_end.ToMilliseconds())
            assert period == (at(start + "T00:00:00"), at(end + "T00:00:00")), day
            assert lines(invoice) == {"units": (str(10 * (index + 1)), str(2 * (index + 1)))}, day


# Overrides --------------------------------------------------------------------------------------------------------


def test_override_prices_follow_the_proto_for_every_price_model(world: World) -> None:
    """25 units with an override, per model (proto PriceOverride.price): UNIT price 3 per 10 kept: 7.5; GRADUATED
    and VOLUME price 0.2 per 1 unit, tiers and flat fees dropped: 5; PACKAGE price 5 per started package of 10: 15;
    FLAT 9; a multiplier 1.5 on GRADUATED: 1.5 x 20.5 = 30.75. Authorize estimates what ingesting charges, and the
    draft's line shows it."""
    cases = [  # product, override, amount, the line's unit_price (amount / 25)
        ("units", {"price": "3"}, "7.5", "0.3"),
        ("grad", {"price": "0.2"}, "5", "0.2"),
        ("vol", {"price": "0.2"}, "5", "0.2"),
        ("pkg", {"price": "5"}, "15", "0.6"),
        ("flat", {"price": "9"}, "9", "0.36"),
        ("grad", {"multiplier": "1.5"}, "30.75", "1.23"),
        ("vol", {"multiplier": "0.1"}, "1.55", "0.062"),
    ]
    with world.admin() as client:
        for index, (product_id, adjustment, amount, unit_price) in enumerate(cases):
            customer_id = f"ov{index}"
            contract_id = customer(client, customer_id)
            answer = add_override(client, contract_id, id="o", product_id=product_id, **adjustment)
            assert [(o.id, o.product_id, o.HasField("starting_at")) for o in answer.overrides] == [
                ("o", product_id, False)
            ]
            estimate = client.authorize(customer_id, product_id, values={"n": 25})
            assert (estimate.allowed, estimate.estimated_cost) == (True, amount), product_id
            rated(client, event(f"{customer_id}-1", customer_id, product_id, 25, now_ms()))
            assert client.get_balance(customer_id).period_charges == amount, product_id
            (line,) = preview(client, customer_id).lines
            assert (line.line_id, line.quantity, line.amount) == (product_id, "25", amount), product_id
            assert [(p.quantity, p.amount, p.unit_price) for p in line.prices] == [("25", amount, unit_price)]


def test_without_overrides_the_card_prices_as_documented(world: World) -> None:
    """The baseline the override test departs from: 25 units cost 5, 20.5, 15.5, 12 and 7."""
    with world.admin() as client:
        customer(client, "base")
        expected = {"units": "5", "grad": "20.5", "vol": "15.5", "pkg": "12", "flat": "7"}
        now = now_ms()
        rated(client, *(event(f"base-{p}", "base", p, 25, now) for p in expected))
        assert {line: amount for line, (_, amount) in lines(preview(client, "base")).items()} == expected


def test_the_most_specific_override_wins_within_its_window_read_at_each_events_time(world: World) -> None:
    """tokens at 1 a unit. Overrides: any model x3 (`first`), then any model x2 (`all`, added last: it wins over
    the equally specific `first`), and model=big at price 3 a unit only within [start + 1 day, start + 2 days). An
    event is charged the curve in force at its own time, from the period's cumulative quantity: 10 big tokens
    before the window: 2 x 10 = 20; 10 big inside it (more specific): 3 x 20 - 3 x 10 = 30; 10 small inside the
    window: 2 x 10 = 20. Lines: big 20 tokens, 50; small 10, 20."""
    with world.admin() as client:
        start = at("2025-05-01T00:00:00")  # a past month: every instant below is before now
        contract_id = customer(client, "sp", starting_at=stamp(start))
        add_override(client, contract_id, id="first", product_id="tokens", multiplier="3")
        add_override(client, contract_id, id="all", product_id="tokens", multiplier="2", match={"model": "*"})
        add_override(
            client,
            contract_id,
            id="big",
            product_id="tokens",
            price="3",
            match={"model": "big"},
            starting_at=stamp(start + DAY_MS),
            ending_before=stamp(start + 2 * DAY_MS),
        )
        rated(client, event("sp-1", "sp", "llm", 10, start + HOUR_MS, model="big"))
        rated(client, event("sp-2", "sp", "llm", 10, start + DAY_MS, model="big"))
        rated(client, event("sp-3", "sp", "llm", 10, start + DAY_MS, model="small"))
        assert lines(preview(client, "sp", start)) == {
            "tokens;model=big": ("20", "50"),
            "tokens;model=small": ("10", "20"),
        }


def test_an_override_whose_match_names_no_pricing_dimension_is_refused(world: World) -> None:
    """tokens is priced per `model`; an override matching `modle` (a typo) or `region` could never match an event
    (overrides match on pricing dimensions only) and would silently leave the card's price: refused as a rate with
    such a match is, naming the entry, and the contract keeps no override."""
    with world.admin() as client:
        contract_id = customer(client, "typo")
        for key in ("modle", "region"):
            code, _, violations = refusal(
                partial(add_override, client, contract_id, product_id="tokens", price="0", match={key: "big"})
            )
            assert (code, violations) == (
                grpc.StatusCode.INVALID_ARGUMENT,
                [(f"override.match.{key}", f"{key!r} is not a pricing dimension of 'tokens' (['model'])")],
            ), key
        # An event's dimension value is at most 256 bytes (longer is INVALID_EVENT): a longer one could never match.
        code, _, violations = refusal(
            partial(add_override, client, contract_id, product_id="tokens", price="0", match={"model": "m" * 257})
        )
        assert (code, violations) == (
            grpc.StatusCode.INVALID_ARGUMENT,
            [("override.match.model", "values are at most 256 bytes (an event's dimension value is), not 257")],
        )
        assert not client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)).overrides
        rated(client, event("typo-1", "typo", "llm", 4, now_ms(), model="big"))
        assert lines(preview(client, "typo")) == {"tokens;model=big": ("4", "4")}


def test_add_override_refusals_name_the_field(world: World) -> None:
    with world.admin() as client:
        contract_id = customer(client, "ovr")
        start = stamp(month_start_ms())
        invalid = grpc.StatusCode.INVALID_ARGUMENT
        expected: list[tuple[dict[str, Any], str]] = [
            ({"price": "1"}, "override.product_id: is required"),
            ({"product_id": "nothing", "price": "1"}, "override.product_id: unknown product 'nothing'"),
            ({"product_id": "units"}, "override: set exactly one of multiplier and price"),
            ({"product_id": "units", "price": "-1"}, "override.price: '-1' must not be negative"),
            ({"product_id": "units", "multiplier": "-2"}, "override.multiplier: '-2' must not be negative"),
            (
                {"product_id": "units", "price": "1", "starting_at": start, "ending_before": start},
                "override.ending_before: must be after starting_at",
            ),
        ]
        for fields, message in expected:
            assert refusal(partial(add_override, client, contract_id, **fields))[:2] == (invalid, message), fields
        code, _, violations = refusal(
            lambda: add_override(client, contract_id, id="o 1", product_id="units", price="1")
        )
        assert (code, violations) == (invalid, [("override.id", f"'o 1' {RULE_WHY}")])
        code, _, violations = refusal(lambda: add_override(client, contract_id, product_id="units", price="1e-19"))
        assert code == invalid and [field for field, _ in violations] == ["override.price"]
        override = contracts_pb2.PriceOverride(product_id="units", price="1")
        call = client.contracts.AddOverride
        assert refusal(lambda: call(contracts_pb2.AddOverrideRequest(contract_id="nope", override=override)))[:2] == (
            grpc.StatusCode.NOT_FOUND,
            "contract 'nope' does not exist",
        )
        assert refusal(lambda: call(contracts_pb2.AddOverrideRequest(override=override)))[:2] == (
            invalid,
            "contract_id: is required",
        )
        assert not client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)).overrides


def test_add_override_retries_add_once_and_a_changed_override_under_the_same_id_already_exists(world: World) -> None:
    with world.admin() as client:
        contract_id = customer(client, "ovi")
        unnamed = add_override(client, contract_id, product_id="units", price="3")
        assert add_override(client, contract_id, product_id="units", price="3") == unnamed
        (only,) = unnamed.overrides
        assert only.id.startswith("override-")
        named = add_override(client, contract_id, id="fixed", product_id="units", price="3")
        assert add_override(client, contract_id, id="fixed", product_id="units", price="3") == named
        code, message, _ = refusal(lambda: add_override(client, contract_id, id="fixed", product_id="units", price="4"))
        assert (code, message) == (
            grpc.StatusCode.ALREADY_EXISTS,
            f"contract {contract_id!r} already has an override 'fixed'",
        )
        assert [
            o.id for o in client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)).overrides
        ] == [
            only.id,
            "fixed",
        ]


def test_an_override_added_mid_period_prices_only_usage_rated_after_it(world: World) -> None:
    """UNIT 2 per 10: 25 units cost 5. Then price 3 per 10: Authorize estimates 25 more at 7.5, ingesting them
    charges 3 x 50 / 10 - 3 x 25 / 10 = 7.5 (the override's curve from the period's cumulative quantity), and the
    first 5 stay: the draft's line is 50 units, 12.5 (README: usage already rated keeps its amount)."""
    with world.admin() as client:
        contract_id = customer(client, "mid")
        rated(client, event("mid-1", "mid", "units", 25, now_ms()))
        add_override(client, contract_id, product_id="units", price="3")
        assert client.authorize("mid", "units", values={"n": 25}).estimated_cost == "7.5"
        rated(client, event("mid-2", "mid", "units", 25, now_ms()))
        assert lines(preview(client, "mid")) == {"units": ("50", "12.5")}


def test_an_override_on_a_product_the_card_does_not_price_adds_no_rate(world: World) -> None:
    """`other` exists but `card` has no rate for it: the override is kept (a later version may price the product),
    and the product's usage stays NO_APPLICABLE_RATE; the override prices nothing by itself (README "Contracts")."""
    with world.admin() as client:
        contract_id = customer(client, "unp")
        answer = add_override(client, contract_id, id="o", product_id="other", price="1")
        assert [o.product_id for o in answer.overrides] == ["other"]
        ack = client.ingest_batch([event("unp-1", "unp", "other", 5, now_ms())])
        assert ack.accepted == 0 and [r.reason for r in ack.rejected] == [usage_pb2.NO_APPLICABLE_RATE]
        assert not preview(client, "unp").lines


# Overage policy ---------------------------------------------------------------------------------------------------


def test_block_denies_at_zero_credit_and_allow_bills_overage_at_its_price(world: World) -> None:
    """No grant. BLOCK: Authorize of 25 units (5 credits) is denied INSUFFICIENT_CREDIT, usage that happened is still
    recorded (5 of overage). ALLOW at overage_price 0.45 per credit: allowed; 5 credits of overage are due 2.25
    USD."""
    with world.admin() as client:
        customer(client, "blk", overage_policy=contracts_pb2.BLOCK)
        customer(client, "alw", overage_policy=contracts_pb2.ALLOW, overage_price="0.45")
        for units in (25, 0):  # no credit at all: even usage that would cost nothing is denied (README "Balances")
            denied = client.authorize("blk", "units", values={"n": units})
            assert (denied.allowed, denied.reason) == (False, "INSUFFICIENT_CREDIT"), units
        allowed = client.authorize("alw", "units", values={"n": 25})
        assert (allowed.allowed, allowed.estimated_cost) == (True, "5")
        now = now_ms()
        rated(client, event("blk-1", "blk", "units", 25, now), event("alw-1", "alw", "units", 25, now))
        blocked, billed = preview(client, "blk"), preview(client, "alw")
        assert (blocked.overage_amount, blocked.overage_due) == ("5", "5.00")
        assert (billed.overage_amount, billed.overage_due, billed.total_due, billed.currency) == (
            "5",
            "2.25",
            "2.25",
            "USD",
        )


# Keys restricted to one customer --------------------------------------------------------------------------------


def test_a_key_restricted_to_one_customer_reaches_no_other_contract_and_learns_nothing(world: World) -> None:
    """`mine-admin` is restricted to customer `mine`. Another customer's contract and an unknown one answer alike
    (PERMISSION_DENIED, the same words but the id); its own contract answers."""
    with world.admin() as admin:
        mine = customer(admin, "mine")
        theirs = customer(admin, "theirs")
    with world.server.client(api_key=world.keys.key["mine-admin"]) as client:
        assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id=mine)).customer_id == "mine"
        override = contracts_pb2.PriceOverride(product_id="units", price="0")
        calls: dict[str, Callable[[str], object]] = {
            "GetContract": lambda i: client.contracts.GetContract(contracts_pb2.GetContractRequest(id=i)),
            "AddOverride": lambda i: client.contracts.AddOverride(
                contracts_pb2.AddOverrideRequest(contract_id=i, override=override)
            ),
        }
        for name, call in calls.items():
            foreign, unknown = refusal(partial(call, theirs)), refusal(partial(call, "k-ghost"))
            assert foreign[0] == unknown[0] == grpc.StatusCode.PERMISSION_DENIED, name
            assert foreign[1].replace(theirs, "k-ghost") == unknown[1], name
            assert "theirs" not in foreign[1].replace(theirs, ""), name
        for customer_id in ("theirs", "ghost"):
            sneak = contracts_pb2.CreateContractRequest(id="sneak", customer_id=customer_id, rate_card_id="card")
            assert refusal(partial(client.contracts.CreateContract, sneak))[0] == grpc.StatusCode.PERMISSION_DENIED
            lookup = contracts_pb2.GetCustomerRequest(id=customer_id)
            assert refusal(partial(client.contracts.GetCustomer, lookup))[0] == grpc.StatusCode.PERMISSION_DENIED
    with world.admin() as admin:
        assert not admin.contracts.GetContract(contracts_pb2.GetContractRequest(id=theirs)).overrides


def test_a_contract_holds_at_most_1000_overrides_and_a_retry_of_one_it_holds_still_answers(world: World) -> None:
    """1,000 overrides (999 named, the last named after its content) fill the contract: another is RESOURCE_EXHAUSTED
    naming the limit and changes nothing, named or not; a retry of one it holds, by id or by content, answers the
    contract as a retry does. Before, overrides were unbounded, and each one is read where the contract's usage is
    priced and returned by every GetContract and AddOverride."""
    with world.admin() as client:
        contract_id = customer(client, "crowded")
        for index in range(999):
            add_override(client, contract_id, id=f"o{index}", product_id="units", multiplier="1")
        unnamed = {"product_id": "units", "multiplier": "1", "match": {}}
        full = add_override(client, contract_id, **unnamed)
        assert len(full.overrides) == 1_000
        for fields in ({"id": "o1000", "product_id": "units", "multiplier": "1"}, {**unnamed, "multiplier": "2"}):
            code, details, _ = refusal(partial(add_override, client, contract_id, **fields))
            assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "1000" in details, (fields, details)
        assert add_override(client, contract_id, id="o998", product_id="units", multiplier="1") == full
        assert add_override(client, contract_id, **unnamed) == full
        got = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id))
        assert len(got.overrides) == 1_000
