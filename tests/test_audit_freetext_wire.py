"""Free texts a person reads, over the wire: what a request's names, notes and attribute entries may hold.

The rule (README "Limits", the proto comments of each field): a free text a new request stores and a person later
reads (a customer's `name` and `attributes`; a product's `name`, `event_type`, `unit`, `value_key`, `filters` and
`pricing_dimensions`; a rate card's `name`; a draft's `change_note` and its rates' `match`; a cohort's
`attributes`; an override's `match` values) holds no control character (C0, DEL, C1: NUL, ESC, CR, LF, NEL, CSI...),
no line or paragraph separator (U+2028, U+2029) and no bidirectional control (U+202A-U+202E, U+2066-U+2069,
U+200E, U+200F, U+061C): such a text would break an invoice's, an audit log's or a CLI table's rows, or show
reversed ("Trojan Source"). One that does is INVALID_ARGUMENT naming the field, the character's position (the
first character is 1) and its code point, and nothing is made or changed. A change note, written in lines, may hold
a line feed and a tab, nothing else of those. Any other text is taken and read back exactly: letters of any script,
accents, emoji (a zero-width joiner included).

Catalogue: product `tok` (event `call`, SUM of `n`, priced by `model`) on card `card` (version 1, published, unit
price 1), a draft version 2 of it (unit price 2, for the cohort checks), customer `acme` with contract `acme-c`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tariff import TariffClient, TariffError
from tariff.v1 import contracts_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, open_contract, serving, this_hour_ms, unit
from tests.serverproc import ServerProcess

CARD_FROM_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
CUSTOMER = "acme"
CONTRACT = "acme-c"
DRAFT = 2
p = pricing_pb2
c = contracts_pb2

BIDI = "a bidirectional control"
CONTROL = "a control character"
LINE_BREAK = "a line break"
# character -> (its code point as named, what it is named as)
REFUSED = {
    "\u202e": ("U+202E", BIDI),  # RIGHT-TO-LEFT OVERRIDE: the Trojan Source one
    "\u202a": ("U+202A", BIDI),
    "\u2066": ("U+2066", BIDI),
    "\u2069": ("U+2069", BIDI),
    "\u200e": ("U+200E", BIDI),
    "\u200f": ("U+200F", BIDI),
    "\u061c": ("U+061C", BIDI),
    "\x00": ("U+0000", CONTROL),
    "\x1b": ("U+001B", CONTROL),
    "\t": ("U+0009", CONTROL),
    "\x7f": ("U+007F", CONTROL),
    "\x80": ("U+0080", CONTROL),
    "\x9b": ("U+009B", CONTROL),
    "\x9f": ("U+009F", CONTROL),
    "\n": ("U+000A", LINE_BREAK),
    "\r": ("U+000D", LINE_BREAK),
    "\x85": ("U+0085", LINE_BREAK),
    "\u2028": ("U+2028", LINE_BREAK),
    "\u2029": ("U+2029", LINE_BREAK),
}
# Texts a person writes: accents, CJK, Arabic and Hebrew letters (no bidi control), emoji, a zero-width joiner.
ORDINARY = "Café Zürich – 東京"
ARABIC = "بطاقة الأسعار"
HEBREW = "עברית"
EMOJI = "👩\u200d💻 🚀"


def why(position: int, char: str, what: str) -> str:
    code, kind = REFUSED[char]
    return f"character {position} is {code} ({kind}), which {what} may not hold"


def catalogue(client: TariffClient) -> None:
    product = p.Product(id="tok", event_type="call", aggregation=p.SUM, value_key="n", pricing_dimensions=["model"])
    client.pricing.CreateProduct(p.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card", name="card", pricing_unit="credits"))
    client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[unit("tok", "1")]))
    client.pricing.PublishVersion(
        p.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(CARD_FROM_MS))
    )
    client.pricing.CreateDraftVersion(
        p.CreateDraftVersionRequest(rate_card_id="card", based_on_version=1, upsert_rates=[unit("tok", "2")])
    )
    open_contract(client, CUSTOMER, CONTRACT, this_hour_ms() - 5 * HOUR_MS, rate_card_id="card")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-freetext")
    yield from serving(ServerProcess(root / "data"), catalogue)


@pytest.fixture
def client(server: ServerProcess) -> Iterator[TariffClient]:
    with server.client() as made:
        yield made


def violation(call: Callable[[], object]) -> tuple[grpc.StatusCode, str, str, str]:
    """(status, the first BadRequest violation's field and description, the status message) of `call()`, refused."""
    with pytest.raises(TariffError) as failed:
        call()
    status = rpc_status.from_call(failed.value.__cause__)
    field, description = "", ""
    if status is not None:
        for detail in status.details:
            if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
                bad = error_details_pb2.BadRequest()
                detail.Unpack(bad)
                field, description = bad.field_violations[0].field, bad.field_violations[0].description
    return failed.value.code, field, description, failed.value.details


def refused(call: Callable[[], object], field: str, description: str) -> None:
    code, named, said, message = violation(call)
    assert (code, named, said) == (grpc.StatusCode.INVALID_ARGUMENT, field, description)
    assert message == f"{field}: {description}"


def found(get: Callable[[], object]) -> bool:
    """Whether `get()` finds what it reads: False when it answers NOT_FOUND."""
    try:
        get()
    except TariffError as exc:
        assert exc.code == grpc.StatusCode.NOT_FOUND
        return False
    return True


def customer_exists(client: TariffClient, customer_id: str) -> bool:
    return found(lambda: client.contracts.GetCustomer(c.GetCustomerRequest(id=customer_id)))


def product_ids(client: TariffClient) -> list[str]:
    return [each.id for each in client.pricing.ListProducts(p.ListProductsRequest()).products]


def card_exists(client: TariffClient, card_id: str) -> bool:
    return found(lambda: client.pricing.GetRateCard(p.GetRateCardRequest(id=card_id)))


def latest_version(client: TariffClient) -> int:
    latest: int = client.pricing.GetRateCard(p.GetRateCardRequest(id="card")).latest_version
    return latest


def draft(client: TariffClient, **fields: object) -> p.RateCardVersion:
    request = p.CreateDraftVersionRequest(rate_card_id="card", based_on_version=1, **fields)  # type: ignore[arg-type]
    made: p.RateCardVersion = client.pricing.CreateDraftVersion(request)
    return made


def overrides(client: TariffClient) -> list[c.PriceOverride]:
    return list(client.contracts.GetContract(c.GetContractRequest(id=CONTRACT)).overrides)


# --- customers ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("char", list(REFUSED), ids=ascii)
def test_a_customer_name_holding_a_control_or_bidi_character_is_refused_naming_it_and_no_customer_is_made(
    client: TariffClient, char: str
) -> None:
    customer_id = f"named-{ord(char):x}"
    request = c.CreateCustomerRequest(id=customer_id, name=f"abc{char}def")
    refused(lambda: client.contracts.CreateCustomer(request), "name", why(4, char, "a name"))
    assert not customer_exists(client, customer_id)


def test_the_position_counts_characters_not_bytes(client: TariffClient) -> None:
    request = c.CreateCustomerRequest(id="counted", name=f"{ORDINARY}\u202e")  # 16 characters, 24 bytes, before it
    refused(lambda: client.contracts.CreateCustomer(request), "name", why(17, "\u202e", "a name"))
    assert not customer_exists(client, "counted")


def test_a_customer_attribute_key_or_value_holding_one_is_refused_naming_the_entry_and_no_customer_is_made(
    client: TariffClient,
) -> None:
    keyed = c.CreateCustomerRequest(id="keyed", name="Keyed", attributes={"segment": "smb", "re\u202egion": "eu"})
    # The entry is named with the character escaped: the answer does not carry it either.
    field = "attributes[re\\u202egion]"
    refused(lambda: client.contracts.CreateCustomer(keyed), field, why(3, "\u202e", "an attribute key"))
    valued = c.CreateCustomerRequest(id="valued", name="Valued", attributes={"region": "eu\x1b[31m"})
    refused(lambda: client.contracts.CreateCustomer(valued), "attributes[region]", why(3, "\x1b", "an attribute value"))
    assert (customer_exists(client, "keyed"), customer_exists(client, "valued")) == (False, False)


def test_an_ordinary_non_ascii_customer_name_and_attributes_are_taken_and_read_back_exactly(
    client: TariffClient,
) -> None:
    attributes = {"région": "Île-de-France", "שפה": HEBREW, "لغة": ARABIC, "emoji": EMOJI}
    made = client.contracts.CreateCustomer(c.CreateCustomerRequest(id="cafe", name=ORDINARY, attributes=attributes))
    read = client.contracts.GetCustomer(c.GetCustomerRequest(id="cafe"))
    listed = [each for each in client.contracts.ListCustomers(c.ListCustomersRequest()).customers if each.id == "cafe"]
    for customer in (made, read, *listed):
        assert (customer.name, dict(customer.attributes)) == (ORDINARY, attributes)
    assert len(listed) == 1


# --- products -------------------------------------------------------------------------------------------------


def product(**fields: object) -> p.CreateProductRequest:
    shape: dict[str, object] = {"event_type": "call", "aggregation": p.SUM, "value_key": "n"}
    return p.CreateProductRequest(product=p.Product(**{**shape, **fields}))  # type: ignore[arg-type]


PRODUCT_CASES = {
    "name": (product(id="p-name", name="Tokens\u2066x"), "product.name", why(7, "\u2066", "a name")),
    "event_type": (product(id="p-event", event_type="call\n"), "product.event_type", why(5, "\n", "an event type")),
    "unit": (product(id="p-unit", unit="\x00tokens"), "product.unit", why(1, "\x00", "a unit")),
    "value_key": (product(id="p-value", value_key="n\x7f"), "product.value_key", why(2, "\x7f", "a value key")),
    "filter key": (
        product(id="p-fkey", filters={"reg\u200fion": "eu"}),
        "product.filters.reg\\u200fion",
        why(4, "\u200f", "a filter key"),
    ),
    "filter value": (
        product(id="p-fvalue", filters={"region": "e\x9bu"}),
        "product.filters.region",
        why(2, "\x9b", "a filter value"),
    ),
    "pricing dimension": (
        product(id="p-dim", pricing_dimensions=["model", "mo\u061cdel"]),
        "product.pricing_dimensions[1]",
        why(3, "\u061c", "a pricing dimension"),
    ),
}


@pytest.mark.parametrize("case", list(PRODUCT_CASES))
def test_a_product_text_holding_one_is_refused_naming_the_field_and_no_product_is_made(
    client: TariffClient, case: str
) -> None:
    request, field, description = PRODUCT_CASES[case]
    before = product_ids(client)
    refused(lambda: client.pricing.CreateProduct(request), field, description)
    assert product_ids(client) == before
    assert request.product.id not in before


def test_an_ordinary_non_ascii_product_is_taken_and_read_back_exactly(client: TariffClient) -> None:
    request = product(
        id="p-cafe",
        name=f"{ORDINARY} {EMOJI}",
        event_type="appel",
        value_key="quantité",
        unit="トークン",
        filters={"région": "Zürich", "שפה": HEBREW},
        pricing_dimensions=["modèle", "لغة"],
    )
    client.pricing.CreateProduct(request)
    listed = [each for each in client.pricing.ListProducts(p.ListProductsRequest()).products if each.id == "p-cafe"]
    assert listed == [request.product]


# --- rate cards and versions -----------------------------------------------------------------------------------


def test_a_rate_card_name_holding_one_is_refused_naming_it_and_no_card_is_made(client: TariffClient) -> None:
    request = p.CreateRateCardRequest(id="card-rlo", name="Prices\u202eevil", pricing_unit="credits")
    refused(lambda: client.pricing.CreateRateCard(request), "name", why(7, "\u202e", "a name"))
    assert not card_exists(client, "card-rlo")


def test_an_arabic_rate_card_name_is_taken_and_read_back_exactly(client: TariffClient) -> None:
    client.pricing.CreateRateCard(p.CreateRateCardRequest(id="card-ar", name=ARABIC, pricing_unit="USD"))
    assert client.pricing.GetRateCard(p.GetRateCardRequest(id="card-ar")).name == ARABIC


@pytest.mark.parametrize("char", ["\r", "\x1b", "\u202e", "\u2028"], ids=ascii)
def test_a_change_note_holding_a_control_other_than_newline_and_tab_is_refused_and_no_draft_is_made(
    client: TariffClient, char: str
) -> None:
    before = latest_version(client)
    note = f"line one\n\tline{char} two"
    refused(lambda: draft(client, change_note=note), "change_note", why(15, char, "a change note"))
    assert latest_version(client) == before


def test_a_change_note_of_several_lines_and_tabs_in_any_script_is_taken_and_read_back_exactly(
    client: TariffClient,
) -> None:
    note = f"Prix réduits pour {ORDINARY}:\n\t– {HEBREW}\n\t– {ARABIC} {EMOJI}\n"
    made = draft(client, change_note=note, upsert_rates=[unit("tok", "3")])
    read = client.pricing.GetVersion(p.GetVersionRequest(rate_card_id="card", version=made.version))
    assert (made.change_note, read.change_note) == (note, note)


def test_a_rate_match_key_or_value_holding_one_is_refused_naming_the_entry_and_no_draft_is_made(
    client: TariffClient,
) -> None:
    before = latest_version(client)
    keyed = [unit("tok", "1"), unit("tok", "4", **{"mo\x00del": "gpt"})]
    field = "upsert_rates[1].match.mo\\x00del"
    refused(lambda: draft(client, upsert_rates=keyed), field, why(3, "\x00", "a match key"))
    valued = [unit("tok", "4", model="gpt\u20694")]
    refused(
        lambda: draft(client, upsert_rates=valued), "upsert_rates[0].match.model", why(4, "\u2069", "a match value")
    )
    assert latest_version(client) == before


def test_ordinary_non_ascii_rate_matches_are_taken_and_read_back_exactly(client: TariffClient) -> None:
    rates = [unit("tok", "4", model="café"), unit("tok", "5", model=ARABIC), unit("tok", "6", model=EMOJI)]
    made = draft(client, upsert_rates=rates)
    read = client.pricing.GetVersion(p.GetVersionRequest(rate_card_id="card", version=made.version))
    assert {r.match["model"]: r.unit.price for r in read.rates if r.match} == {"café": "4", ARABIC: "5", EMOJI: "6"}


def publish_for(client: TariffClient, attributes: dict[str, str]) -> p.PublishVersionResponse:
    request = p.PublishVersionRequest(
        rate_card_id="card",
        version=DRAFT,
        effective_from=stamp(this_hour_ms() + 24 * HOUR_MS),
        cohort=p.Cohort(attributes=attributes),
    )
    published: p.PublishVersionResponse = client.pricing.PublishVersion(request)
    return published


def test_a_cohort_attribute_key_or_value_holding_one_is_refused_naming_the_entry_and_nothing_is_published(
    client: TariffClient,
) -> None:
    keyed = {"seg\u202ament": "smb"}
    refused(
        lambda: publish_for(client, keyed), "cohort.attributes[seg\\u202ament]", why(4, "\u202a", "an attribute key")
    )
    valued = {"segment": "smb\x85"}
    refused(lambda: publish_for(client, valued), "cohort.attributes[segment]", why(4, "\x85", "an attribute value"))
    version = client.pricing.GetVersion(p.GetVersionRequest(rate_card_id="card", version=DRAFT))
    assert version.state == p.DRAFT


def test_an_ordinary_non_ascii_cohort_is_published_and_read_back_exactly(client: TariffClient) -> None:
    attributes = {"région": "Île-de-France", "שפה": HEBREW}
    published = publish_for(client, attributes)
    read = client.pricing.GetVersion(p.GetVersionRequest(rate_card_id="card", version=DRAFT))
    assert dict(published.version.cohort.attributes) == dict(read.cohort.attributes) == attributes
    assert read.state == p.PUBLISHED


# --- overrides ------------------------------------------------------------------------------------------------


def add_override(client: TariffClient, override_id: str, model: str) -> c.Contract:
    override = c.PriceOverride(id=override_id, product_id="tok", match={"model": model}, multiplier="0.5")
    made: c.Contract = client.contracts.AddOverride(c.AddOverrideRequest(contract_id=CONTRACT, override=override))
    return made


def test_an_override_match_value_holding_one_is_refused_naming_the_entry_and_the_contract_is_unchanged(
    client: TariffClient,
) -> None:
    before = overrides(client)
    refused(
        lambda: add_override(client, "o-bidi", "gpt\u200e4"), "override.match.model", why(4, "\u200e", "a match value")
    )
    assert overrides(client) == before


def test_an_ordinary_non_ascii_override_match_is_taken_and_read_back_exactly(client: TariffClient) -> None:
    add_override(client, "o-cafe", "模型-4 café")
    held = {o.id: dict(o.match) for o in overrides(client)}
    assert held["o-cafe"] == {"model": "模型-4 café"}
