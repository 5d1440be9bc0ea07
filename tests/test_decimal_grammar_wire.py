"""Every decimal string a request carries is held to one grammar (engine/money.py DECIMAL_GRAMMAR, JSON's number),
over a real server: an optional '-', ASCII digits without leading zeros, optionally '.' and ASCII digits, optionally
an exponent ("1E-7", read as the value it writes, then held to the same range).

The server used to read them with Python's Decimal(text.strip()), so it accepted digit separators ("1_000"),
surrounding spaces, a '+' sign, leading zeros and other scripts' digits (Arabic-Indic "١٢"); a price literal
inside a formula was read by Python's own number syntax likewise. The server refuses them where a request enters
(server/convert.py), price fields of a draft included: each refusal is INVALID_ARGUMENT naming the field and saying
why, and changes nothing (the audit log, which records every admin change, does not grow; the balance is the
same). An amount of more than 28 digits is read exactly. A Duration with seconds and nanos
of different signs, or nanos past a second, is invalid per the protobuf spec: it was read as their sum
(seconds=1, nanos=-1,000,000 held for 999 ms), by Authorize and by AuthorizeBatches (in the kernel) alike.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import grpc
import pytest
from google.protobuf import duration_pb2
from tariff import TariffClient, TariffError
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, pricing_pb2

from tests.serverproc import ServerFactory
from tests.test_server_authorize_batches import stub
from tests.test_server_instants import CONTRACT, PRODUCT, audit_entries

CARD = "ai-credits"  # the demo's rate card (server/demo.py), version 1 published

# Texts outside the grammar, each of which Decimal() reads as a number.
HOSTILE = {
    "digit separators": "1_000",
    "a leading space": " 1",
    "a trailing space": "1 ",
    "a trailing newline": "1\n",
    "a plus sign": "+1",
    "a plus sign before an exponent": "+1e3",
    "an exponent after no fraction digits": "1.e3",
    "an exponent after a leading zero": "01e3",
    "Arabic-Indic digits": "\u0661\u0662",
    "full-width digits": "\uff11\uff12",
    "no fraction digits": "1.",
    "no whole digits": ".5",
    "leading zeros": "007",
}


def decimal_fields(client: TariffClient, text: str) -> dict[str, Callable[[], object]]:
    """A request per decimal field of a state-changing call, `text` in that field and sound values elsewhere."""
    contracts = client.contracts

    def grant(field: str) -> Callable[[], object]:
        new = contracts_pb2.Grant(
            id="g-probe", contract_id=CONTRACT, kind=contracts_pb2.PREPAID, amount="5", paid_amount="1"
        )
        setattr(new, field, text)
        return lambda: contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))

    def override(field: str) -> Callable[[], object]:
        new = contracts_pb2.PriceOverride(product_id=PRODUCT)
        setattr(new, field, text)
        return lambda: contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=CONTRACT, override=new))

    def top_up(field: str) -> Callable[[], object]:
        policy = contracts_pb2.TopUpPolicy(threshold="10", recharge_to="100", price_per_credit="0.9", max_per_period=1)
        setattr(policy, field, text)
        return lambda: contracts.SetTopUpPolicy(
            contracts_pb2.SetTopUpPolicyRequest(contract_id=CONTRACT, top_up=policy)
        )

    return {
        "grant.amount": grant("amount"),
        "grant.paid_amount": grant("paid_amount"),
        "grant.rollover_fraction": grant("rollover_fraction"),
        "override.multiplier": override("multiplier"),
        "override.price": override("price"),
        "overage_price": lambda: contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id="globex", rate_card_id=CARD, overage_price=text)
        ),
        "top_up.threshold": top_up("threshold"),
        "top_up.recharge_to": top_up("recharge_to"),
        "top_up.price_per_credit": top_up("price_per_credit"),
        "threshold": lambda: client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.LOW_BALANCE, threshold=text)
        ),
        "set_parameters[markup]": lambda: client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, set_parameters={"markup": text}
            )
        ),
    }


def refusal(call: Callable[[], object]) -> tuple[list[str], str]:
    """The fields an INVALID_ARGUMENT names, and why (the first violation's description)."""
    try:
        call()
    except TariffError as error:
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT, error
        return [v.field for v in error.field_violations], error.field_violations[0].description
    raise AssertionError("the call succeeded")


def balance(client: TariffClient) -> balance_pb2.Balance:
    """acme's balance, less the journal position it was read at."""
    read: balance_pb2.Balance = client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id="acme"))
    read.ClearField("as_of_seq")
    return read


@pytest.mark.parametrize("case", list(HOSTILE))
def test_a_decimal_outside_the_grammar_is_invalid_argument_naming_its_field_and_changes_nothing(
    server_factory: ServerFactory, case: str
) -> None:
    server = server_factory(demo=True)
    text = HOSTILE[case]
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="globex", name="Globex"))
        before, balance_before = audit_entries(client), balance(client)
        for field, call in decimal_fields(client, text).items():
            fields, why = refusal(call)
            assert fields == [field], field
            assert "decimal" in why and repr(text) in why, (field, why)
        assert audit_entries(client) == before
        assert balance(client) == balance_before
        assert server.running


def rate(price: pricing_pb2.UnitPrice | pricing_pb2.TieredPrice, action: str) -> pricing_pb2.Rate:
    if isinstance(price, pricing_pb2.UnitPrice):
        return pricing_pb2.Rate(product_id=PRODUCT, match={"action": action}, unit=price)
    return pricing_pb2.Rate(product_id=PRODUCT, match={"action": action}, tiered=price)


def price_cases(text: str) -> dict[str, pricing_pb2.UnitPrice | pricing_pb2.TieredPrice]:
    """A price per price field that may hold a literal, `text` in it, and the path the refusal names it by."""
    return {
        "unit.price": pricing_pb2.UnitPrice(price=text),
        "unit.per_units": pricing_pb2.UnitPrice(price="1", per_units=text),
        "tiered.tiers[0].up_to": pricing_pb2.TieredPrice(
            mode=pricing_pb2.GRADUATED,
            tiers=[pricing_pb2.Tier(up_to=text, unit_price="1"), pricing_pb2.Tier(unit_price="2")],
        ),
        "tiered.tiers[1].unit_price": pricing_pb2.TieredPrice(
            mode=pricing_pb2.GRADUATED,
            tiers=[pricing_pb2.Tier(up_to="10", unit_price="1"), pricing_pb2.Tier(unit_price=text)],
        ),
    }


def refused_prices(server_factory: ServerFactory, texts: list[str], says: tuple[str, ...] = ("decimal", "'+'")) -> None:
    """For each text, a draft with it in any one price field is INVALID_ARGUMENT naming that field, where the
    request enters, saying one of `says` in why, and changes nothing: no draft, no audit entry."""
    server = server_factory(demo=True)
    with server.client() as client:
        for text in texts:
            before = audit_entries(client)
            for path, price in price_cases(text).items():
                rates = [rate(pricing_pb2.UnitPrice(price="1"), "sound"), rate(price, "probe")]
                request = pricing_pb2.CreateDraftVersionRequest(
                    rate_card_id=CARD, based_on_version=1, upsert_rates=rates
                )
                fields, why = refusal(functools.partial(client.pricing.CreateDraftVersion, request))
                assert fields == [f"upsert_rates[1].{path}"], (text, path)
                assert any(said in why for said in says), (text, why)
            assert audit_entries(client) == before
            versions = client.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD)).versions
            assert [v.version for v in versions] == [1]


def test_a_price_literal_outside_the_grammar_is_refused_where_it_enters(server_factory: ServerFactory) -> None:
    refused_prices(server_factory, list(HOSTILE.values()))


def test_a_number_in_a_formula_follows_the_grammar(server_factory: ServerFactory) -> None:
    refused_prices(
        server_factory,
        [
            "summary_base * 1_000",
            "summary_base * 1.e3",
            "01e3 + summary_base",
            "summary_base * 1.",
            "01.5 * 2",
            "+summary_base",
            " summary_base * 2",
        ],
    )


def test_a_formula_with_a_comment_is_refused(server_factory: ServerFactory) -> None:
    # Formulas are parsed with Python's grammar, where '#' starts a comment: "summary_base * 2 # * 100" was
    # accepted and priced summary_base * 2, the rest of the text silently ignored; "0#_" priced 0.
    refused_prices(server_factory, ["summary_base * 2 # * 100", "0#_", "(summary_base # x\n)"], says=("'#'",))


def test_formulas_and_grammatical_literals_still_publish(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    with server.client() as client:
        prices = [
            "summary_base * 2",
            "-0.5 + summary_base",
            "round(summary_base / 3, 4)",
            "0.50",
            "0",
            "-0 + 1",
            "summary_base * 1e3",
            "2E-1 + summary_base",
            "1E-7",
        ]
        rates = [rate(pricing_pb2.UnitPrice(price=price), f"a{index}") for index, price in enumerate(prices)]
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, upsert_rates=rates, set_parameters={"markup": "-1.25"}
            )
        )
        report = client.pricing.ValidateVersion(
            pricing_pb2.ValidateVersionRequest(rate_card_id=CARD, version=draft.version)
        )
        assert report.ok, report
        client.pricing.PublishVersion(pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=draft.version))


def test_a_decimal_with_an_exponent_is_read_as_the_value_it_writes(server_factory: ServerFactory) -> None:
    """JSON's number has an exponent, and Java's BigDecimal.toString() and JavaScript write small values with
    one ("1E-7"): read exactly, then held to the same range and places as any decimal."""
    server = server_factory(demo=True)
    with server.client() as client:
        grant = contracts_pb2.Grant(
            id="g-exp",
            contract_id=CONTRACT,
            kind=contracts_pb2.PREPAID,
            amount="1e3",
            paid_amount="9E+2",
            rollover_fraction="5E-1",
        )
        made = client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        assert (made.amount, made.paid_amount, made.rollover_fraction) == ("1000", "900", "0.5")
        [read] = [g for g in balance(client).grants if g.grant_id == "g-exp"]
        assert (read.amount, read.remaining) == ("1000", "1000")
        request = alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.LOW_BALANCE, threshold="1E-7")
        assert client.alerts.CreateAlert(request).threshold == "0.0000001"
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=CARD, based_on_version=1, set_parameters={"markup": "1.25e-1"}
            )
        )
        assert draft.parameters["markup"] == "1.25e-1"  # the text as written, as every parameter is kept
        before = audit_entries(client)
        for field, text in (("grant.amount", "1e18"), ("grant.amount", "1e-13"), ("threshold", "1e-19")):
            if field == "threshold":
                call = functools.partial(
                    client.alerts.CreateAlert,
                    alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.LOW_BALANCE, threshold=text),
                )
            else:
                too = contracts_pb2.Grant(id="g-too", contract_id=CONTRACT, kind=contracts_pb2.PREPAID, amount=text)
                call = functools.partial(client.contracts.GrantCredits, contracts_pb2.GrantCreditsRequest(grant=too))
            fields, why = refusal(call)
            assert fields == [field] and repr(text) in why, (text, why)
        assert audit_entries(client) == before


MIXED_DURATIONS = {
    "positive seconds, negative nanos": duration_pb2.Duration(seconds=1, nanos=-1_000_000),
    "negative seconds, positive nanos": duration_pb2.Duration(seconds=-1, nanos=999_000_000),
    "nanos of a second": duration_pb2.Duration(seconds=0, nanos=1_000_000_000),
    "nanos below minus a second": duration_pb2.Duration(seconds=0, nanos=-1_000_000_000),
}


@pytest.mark.parametrize("case", list(MIXED_DURATIONS))
def test_an_invalid_duration_is_invalid_argument_naming_its_field_and_holds_nothing(
    server_factory: ServerFactory, case: str
) -> None:
    server = server_factory(demo=True)
    with server.client() as client:
        before = balance(client)
        request = balance_pb2.AuthorizeRequest(
            request_id="probe",
            customer_id="acme",
            event_type="ai_action",
            dimensions={"action": "summary", "model": "gpt-4", "complexity": "simple"},
            reserve=True,
            reservation_ttl=MIXED_DURATIONS[case],
        )
        fields, why = refusal(lambda: client.balance.Authorize(request))
        assert fields == ["reservation_ttl"]
        assert "sign" in why or "nanos" in why, why
        assert balance(client) == before
        # AuthorizeBatches reads the same Duration in the kernel: refused in-band, nothing held.
        channel, balance_stub = stub(server)
        with channel:
            [result] = balance_stub.AuthorizeBatches(iter([balance_pb2.AuthorizeBatch(requests=[request])]), timeout=10)
        [answer] = result.responses
        assert (answer.allowed, answer.reason) == (False, "INVALID_REQUEST")
        assert answer.message.startswith("reservation_ttl: ") and (
            "sign" in answer.message or "nanos" in answer.message
        )
        assert balance(client) == before
        request.reservation_ttl.CopyFrom(duration_pb2.Duration(seconds=1, nanos=1_000_000))
        assert client.balance.Authorize(request).allowed
        assert balance(client).credits_held == "2.5"


# Below 10^18 at 12 places: 30 digits, past the 28 of Decimal's default context, which rounded 10^18 - 10^-12 to
# 10^18 in the range check and the amount times 10^12 in the exactness check, refusing both as out of range or
# as having more than 12 places.
LONGEST = "999999999999999999.999999999999"


def test_an_amount_longer_than_28_digits_is_read_exactly(server_factory: ServerFactory) -> None:
    server = server_factory(demo=True)
    with server.client() as client:
        new = contracts_pb2.Grant(id="g-long", contract_id=CONTRACT, kind=contracts_pb2.PROMOTIONAL, amount=LONGEST)
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))
        [grant] = [g for g in balance(client).grants if g.grant_id == "g-long"]
        assert grant.amount == LONGEST
        request = alerts_pb2.CreateAlertRequest(customer_id="acme", type=alerts_pb2.LOW_BALANCE, threshold=LONGEST)
        assert client.alerts.CreateAlert(request).threshold == LONGEST
