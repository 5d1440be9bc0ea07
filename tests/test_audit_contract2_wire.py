"""A second audit of the wire contract (the names and rules of proto/tariff/v1/*.proto's comments and README that
clients and acceptance tests rely on), over a real demo server process, on what tests/test_audit_setup_wire.py,
tests/test_refusal_details_wire.py, tests/test_decimal_grammar_wire.py and tests/test_readme.py leave out.

contracts.proto (its top): "Amounts the server writes follow the same grammar, without an exponent or trailing
zeros". A contract's overage_price and top-up policy were written so, but its price overrides were echoed as the
request wrote them: AddOverride with multiplier "0.50" answered "0.50", price "1.5e1" answered "1.5e1" and multiplier
"-0" answered "-0", a negative zero, in AddOverride's and GetContract's answers alike.

balance.proto (AuthorizeResponse.reason): unary Authorize answers a malformed request "with the status ...
INVALID_ARGUMENT (with the field)", the message naming the field as the in-band one does ("values: at most 64
entries"). Past 64 dimensions or values the field was named twice: "values: values: at most 64 entries".

README ("Changing prices safely"): "A week later finance decides the cut should have applied from the 1st ... the
analyst drafts the cut (version 2), simulates it on this month's recorded usage and publishes it from the 1st", and
"simulate ... prints the current amount, what version 2 would have charged (for a complex GPT-4 summary, 4 credits
instead of 5) and the delta". The block is run on a fresh demo server, which has no usage: its simulate printed an
empty table and its publish re-rated nothing, so the example showed none of what the text says it does.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, pricing_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import serving
from tests.serverproc import ServerFactory, ServerProcess
from tests.test_readme import README_ADDRESS, blocks, cli_commands, example_env

CONTRACT = "acme-2026"  # the demo's contract (server/demo.py)
PRODUCT = "ai_action"  # the demo's product, priced by action, data_source, model and complexity


def nothing(client: TariffClient) -> None:
    """The demo catalogue is all these tests need."""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-contract2")
    yield from serving(ServerProcess(root / "data", demo=True, extra_args=["--close-grace", "off"]), nothing)


def overrides(contract: contracts_pb2.Contract) -> dict[str, tuple[str, str]]:
    """id -> (multiplier, price) of a contract's overrides, as the server wrote them."""
    return {o.id: (o.multiplier, o.price) for o in contract.overrides}


def test_an_overrides_decimals_are_written_without_an_exponent_or_trailing_zeros(server: ServerProcess) -> None:
    """contracts.proto: decimal strings are read in JSON's number grammar ("12.50", "1e3"), and "Amounts the server
    writes follow the same grammar, without an exponent or trailing zeros": a multiplier of "0.50" is written
    "0.5", a price of "1.5e1" is written "15" (and "2.000e-1" "0.2"), a multiplier of "-0" is written "0" (never
    "-0"), in AddOverride's answer and GetContract's."""
    written = {
        "ov-multiplier": ("0.5", ""),
        "ov-price": ("", "15"),
        "ov-small": ("", "0.2"),
        "ov-zero": ("0", ""),
    }
    requests = [
        contracts_pb2.PriceOverride(
            id="ov-multiplier", product_id=PRODUCT, match={"action": "summary"}, multiplier="0.50"
        ),
        contracts_pb2.PriceOverride(id="ov-price", product_id=PRODUCT, match={"action": "search"}, price="1.5e1"),
        contracts_pb2.PriceOverride(id="ov-small", product_id=PRODUCT, match={"action": "chat"}, price="2.000e-1"),
        contracts_pb2.PriceOverride(id="ov-zero", product_id=PRODUCT, match={"action": "enrichment"}, multiplier="-0"),
    ]
    with server.client() as client:
        answers = [
            client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=CONTRACT, override=o))
            for o in requests
        ]
        assert overrides(answers[-1]) == written
        got = client.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT))
        assert overrides(got) == written
        # The same request again is a retry: answered, nothing added (the key is the override's id).
        again = client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(contract_id=CONTRACT, override=requests[0])
        )
        assert overrides(again) == written


def test_other_decimals_a_request_set_are_written_as_contracts_proto_says(server: ServerProcess) -> None:
    """contracts.proto: a contract's decimals and an alert rule's threshold are answered without an exponent or
    trailing zeros ("12.50" is "12.5"); a rate card version's parameters and price fields are answered as the draft
    wrote them, and DiffVersions gives their value."""
    policy = contracts_pb2.TopUpPolicy(
        threshold="1.0e1", recharge_to="12.50", price_per_credit="0.900", max_per_period=1
    )
    with server.client() as client:
        customer = client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="decimals"))
        contract = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                customer_id=customer.id, rate_card_id="ai-credits", overage_price="2.50"
            )
        )
        assert contract.overage_price == "2.5"
        request = contracts_pb2.SetTopUpPolicyRequest(contract_id=contract.id, top_up=policy)
        top_up = client.contracts.SetTopUpPolicy(request).top_up
        assert (top_up.threshold, top_up.recharge_to, top_up.price_per_credit) == ("10", "12.5", "0.9")
        rule = client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(customer_id=customer.id, type=alerts_pb2.SPEND_THRESHOLD, threshold="4.50")
        )
        assert rule.threshold == "4.5"
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id="ai-credits", based_on_version=1, set_parameters={"gpt4_factor": "2.50", "extra": "1e-2"}
            )
        )
        kept = client.pricing.GetVersion(
            pricing_pb2.GetVersionRequest(rate_card_id="ai-credits", version=draft.version)
        )
        assert (kept.parameters["gpt4_factor"], kept.parameters["extra"]) == ("2.50", "1e-2")
        diff = client.pricing.DiffVersions(
            pricing_pb2.DiffVersionsRequest(rate_card_id="ai-credits", from_version=1, to_version=draft.version)
        )
        changed = {p.name: (p.old_value, p.new_value) for p in diff.parameters}
        assert changed == {"gpt4_factor": ("2.5", "2.50"), "extra": ("", "1e-2")}
        # 2.50 prices a complex GPT-4 summary as 2.5 does: the rate is not repriced, so it is not listed.
        assert list(diff.rates) == []


DAY_MS = 86_400_000


def test_a_contract_named_by_nothing_but_its_customer_and_card_gets_the_documented_defaults(
    server: ServerProcess,
) -> None:
    """contracts.proto: CreateContractRequest.id "when empty, the customer id and the start's UTC date
    ("acme-20261201"), or its Unix ms when the start is not at midnight"; starting_at "The start of the current UTC
    day when unset"; overage_policy UNSPECIFIED "Treated as ALLOW"; overage_price "1" when unset; currency "USD"
    when unset; ending_before unset: open-ended. CreateCustomerRequest.name: "the id when empty". A grant without
    starts_at starts at its contract's start."""
    with server.client() as client:
        before_ms = now_ms()
        customer = client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="defaults"))
        contract = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id="defaults", rate_card_id="ai-credits")
        )
        after_ms = now_ms()
        start_ms = contract.starting_at.ToMilliseconds()
        assert start_ms % DAY_MS == 0 and before_ms // DAY_MS * DAY_MS <= start_ms <= after_ms // DAY_MS * DAY_MS
        day = datetime.fromtimestamp(start_ms / 1000, UTC).strftime("%Y%m%d")
        assert customer.name == "defaults"
        assert contract.id == f"defaults-{day}"
        assert (contract.overage_policy, contract.overage_price, contract.currency) == (contracts_pb2.ALLOW, "1", "USD")
        assert not contract.HasField("ending_before") and not contract.HasField("top_up")
        grant = client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                request_id="defaults-credit",
                grant=contracts_pb2.Grant(contract_id=contract.id, kind=contracts_pb2.PROMOTIONAL, amount="3"),
            )
        )
        assert (grant.id, grant.customer_id, grant.paid_amount, grant.rollover_fraction) == (
            "defaults-credit",
            "defaults",
            "0",
            "0",
        )
        assert grant.starts_at.ToMilliseconds() == start_ms and not grant.HasField("expires_at")
        # A start off midnight names the contract by its Unix ms.
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="defaults-2"))
        later_ms = start_ms + 90_000
        second = client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                customer_id="defaults-2", rate_card_id="ai-credits", starting_at=stamp(later_ms)
            )
        )
        assert second.id == f"defaults-2-{later_ms}"


SUMMARY = {"action": "summary", "model": "gpt-4", "complexity": "complex", "data_source": "crm"}  # 5 credits


@pytest.mark.parametrize(
    ("usage", "field", "message"),
    [
        ({"values": {f"v{i}": 1.0 for i in range(65)}}, "values", "values: at most 64 entries"),
        ({"dimensions": {f"d{i}": "x" for i in range(65)}}, "dimensions", "dimensions: at most 64 entries"),
    ],
)
def test_a_malformed_authorize_names_its_field_once(
    server: ServerProcess, usage: dict[str, dict[str, str] | dict[str, float]], field: str, message: str
) -> None:
    """The in-band answer's message ("values: at most 64 entries", on AuthorizeStream) is unary Authorize's status
    message, and its BadRequest violation names the field with the reason ("at most 64 entries"), the field's name
    not repeated."""
    request = balance_pb2.AuthorizeRequest(request_id="q", customer_id="acme", event_type=PRODUCT)
    for name, entries in usage.items():
        getattr(request, name).update(entries)
    with server.client() as client:
        (in_band,) = client.balance.AuthorizeStream(iter([request]))
        assert (in_band.reason, in_band.message) == ("INVALID_REQUEST", message)
        with pytest.raises(TariffError) as refused:
            client.balance.Authorize(request)
    assert (refused.value.code, refused.value.details) == (grpc.StatusCode.INVALID_ARGUMENT, message)
    described = [(v.field, v.description) for v in refused.value.field_violations]
    assert described == [(field, message.removeprefix(f"{field}: "))]


def test_the_readmes_retroactive_cut_simulates_and_re_rates_the_usage_it_talks_about(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    """The README block of the cut "from the 1st", run as written on a fresh demo server: its simulate prints the
    complex GPT-4 summary's 5 credits, version 2's 4 and the delta -1, and its publish from the 1st re-rates that
    usage (acme's 50,000 credits less 4)."""
    (block,) = [b for b in blocks("cli") if "ratecard simulate" in b.code]
    demo = server_factory(demo=True, name="cut")
    env = {**example_env(), "TARIFF_SERVER": demo.target}
    printed: list[tuple[str, str]] = []
    for command in cli_commands(block.code.replace(README_ADDRESS, demo.target)):
        done = subprocess.run(
            ["bash", "-c", command], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        printed.append((command, done.stdout))
    (simulated,) = [out for command, out in printed if command.startswith("tariff ratecard simulate")]
    assert re.search(r"^acme\s+ai_action\s+5\s+4\s+-1\s*$", simulated, re.M), simulated
    with demo.client() as client:
        assert client.get_balance("acme").credits_remaining == "49996"
