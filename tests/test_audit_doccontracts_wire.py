"""A sentence-by-sentence audit of contracts.proto and alerts.proto over the wire (customers, contracts, overrides,
grants, the top-up policy, alert rules): statements with numbers, defaults and limits the earlier audits leave
unpinned, each at its edge (exactly at a limit, one past it). Every amount is computed by hand in the docstrings.

Product `units` (event type `work`, SUM of `n`) at 1 credit a unit on rate card `card` (credits), in force from
2026-01-01. One server for the file (`--close-grace off`, `--message-mb-max 1`: answers of at most 1 MiB), each test
on customers of its own."""

from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import preview, refusal, serving
from tests.serverproc import ServerProcess

DAY_MS = 86_400_000
STREAM_TIMEOUT_S = 60.0
JAN_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate]))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-doccontracts")
    process = ServerProcess(root / "data", extra_args=["--close-grace", "off", "--message-mb-max", "1"])
    yield from serving(process, catalogue)


def customer(client: TariffClient, customer_id: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))


def unnamed(customer_id: str, start_ms: int, end_ms: int | None = None) -> contracts_pb2.CreateContractRequest:
    request = contracts_pb2.CreateContractRequest(
        customer_id=customer_id, rate_card_id="card", starting_at=stamp(start_ms)
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(stamp(end_ms))
    return request


def test_a_numbered_default_contract_id_keeps_the_start_and_cuts_the_customer_id(server: ServerProcess) -> None:
    """CreateContractRequest.id: without an id a contract is named after the customer id and the start's UTC date,
    "the customer id cut so that the id keeps to 128 characters", and ".2" is added when another contract holds
    that id. A customer id of 128 'L's starting 2026-01-01: the default id is 119 'L's + "-20260101" (119 + 9 =
    128). Another customer's contract holding it, the id is the customer id cut to 117 'L's + "-20260101.2"
    (117 + 11 = 128), the start's date whole, never 119 'L's + "-202601.2" (a date without its day). A retry
    answers the same contract."""
    long_id = "L" * 128
    taken = "L" * 119 + "-20260101"
    with server.client() as client:
        customer(client, long_id)
        customer(client, "holder")
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=taken, customer_id="holder", rate_card_id="card", starting_at=stamp(JAN_MS)
            )
        )
        made = client.contracts.CreateContract(unnamed(long_id, JAN_MS))
        again = client.contracts.CreateContract(unnamed(long_id, JAN_MS))
    assert (made.id, len(made.id)) == ("L" * 117 + "-20260101.2", 128)
    assert again.id == made.id


def test_an_overlapping_contract_is_failed_precondition_naming_the_contract_in_that_time(server: ServerProcess) -> None:
    """CreateContractRequest.starting_at: a customer's contracts must not overlap; one that would is
    FAILED_PRECONDITION naming the contract already in that time, nothing created. `ov` holds [Jan 1, Feb 1): a
    contract from Jan 31 overlaps it (refused), one from Feb 1 (its ending_before, not in it) does not; and the
    unnamed retry of Jan 1's request on a later start is refused the same way."""
    with server.client() as client:
        customer(client, "ov")
        client.contracts.CreateContract(unnamed("ov", JAN_MS, JAN_MS + 31 * DAY_MS))
        code, message = refusal(lambda: client.contracts.CreateContract(unnamed("ov", JAN_MS + 30 * DAY_MS)))
        assert code == grpc.StatusCode.FAILED_PRECONDITION
        assert "'ov-20260101'" in message
        missing, _ = refusal(lambda: client.contracts.GetContract(contracts_pb2.GetContractRequest(id="ov-20260131")))
        assert missing == grpc.StatusCode.NOT_FOUND
        after = client.contracts.CreateContract(unnamed("ov", JAN_MS + 31 * DAY_MS))
    assert after.id == "ov-20260201"


def test_an_unnamed_override_is_keyed_by_its_text_as_written(server: ServerProcess) -> None:
    """AddOverride: "Key: override.id; when empty, the override's content as the request writes it". A multiplier
    "0.50" sent twice without an id is one override (the retry adds nothing), held and answered as "0.5"; the same
    multiplier written "0.5" is another key, and adds a second override alike (both "0.5"): 2 overrides in all."""
    with server.client() as client:
        customer(client, "ok")
        client.contracts.CreateContract(unnamed("ok", JAN_MS))

        def add(multiplier: str) -> contracts_pb2.Contract:
            override = contracts_pb2.PriceOverride(product_id="units", multiplier=multiplier)
            request = contracts_pb2.AddOverrideRequest(contract_id="ok-20260101", override=override)
            made: contracts_pb2.Contract = client.contracts.AddOverride(request)
            return made

        first, retry, respelled = add("0.50"), add("0.50"), add("0.5")
    assert [o.multiplier for o in first.overrides] == [o.multiplier for o in retry.overrides] == ["0.5"]
    assert [o.multiplier for o in respelled.overrides] == ["0.5", "0.5"]
    assert len({o.id for o in respelled.overrides}) == 2


def test_a_currency_without_a_minor_unit_is_refused_saying_so(server: ServerProcess) -> None:
    """Contract.currency: XXX, XTS and XAU (ISO 4217 codes of three capital letters, with no minor unit) are
    INVALID_ARGUMENT naming currency; the message says what is missing (a minor unit), not "three capital letters",
    which XAU is. Nothing created."""
    with server.client() as client:
        customer(client, "cur")
        for code in ("XAU", "XXX", "XTS", "usd"):
            request = unnamed("cur", JAN_MS)
            request.currency = code
            status, message = refusal(partial(client.contracts.CreateContract, request))
            assert status == grpc.StatusCode.INVALID_ARGUMENT
            assert message.startswith(f"currency: '{code}' must be an ISO 4217 currency code that has a minor unit")
        made = client.contracts.CreateContract(unnamed("cur", JAN_MS))
    assert (made.id, made.currency) == ("cur-20260101", "USD")


def test_every_currency_of_iso_4217_list_one_with_a_minor_unit_is_taken_xad_too(server: ServerProcess) -> None:
    """Contract.currency "must be an ISO 4217 currency code that has a minor unit": XAD (Arab Accounting Dinar,
    list one since 2025, 2 decimal places) was refused as having none. It is taken, and its invoice rounds to
    cents."""
    with server.client() as client:
        customer(client, "xad")
        request = unnamed("xad", JAN_MS)
        request.currency = "XAD"
        made = client.contracts.CreateContract(request)
        draft = preview(client, "xad", JAN_MS)
    assert (made.currency, draft.currency, draft.minor_unit) == ("XAD", "XAD", 2)


def test_a_top_up_purchase_bound_exactly_at_the_limit_is_taken_one_past_it_refused(server: ServerProcess) -> None:
    """TopUpPolicy: recharge_to x price_per_credit above (2^127 - 1) x 10^-30 = 170141183.460469231731687303715884105727
    is INVALID_ARGUMENT naming top_up.recharge_to. recharge_to 1 (threshold 0.5) at the largest price of 18 places
    not above it, 170141183.460469231731687303, is taken and answered as sent; at ...304 (10^-18 more, above the
    bound) refused, the policy set before left as it was."""
    below = "170141183.460469231731687303"
    with server.client() as client:
        customer(client, "lim")
        client.contracts.CreateContract(unnamed("lim", JAN_MS))

        def policy(price: str) -> contracts_pb2.SetTopUpPolicyRequest:
            top_up = contracts_pb2.TopUpPolicy(
                threshold="0.5", recharge_to="1", price_per_credit=price, max_per_period=1
            )
            return contracts_pb2.SetTopUpPolicyRequest(contract_id="lim-20260101", top_up=top_up)

        taken = client.contracts.SetTopUpPolicy(policy(below)).top_up
        code, message = refusal(lambda: client.contracts.SetTopUpPolicy(policy(below[:-1] + "4")))
        held = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="lim-20260101")).top_up
    assert (taken.price_per_credit, taken.recharge_to, taken.currency) == (below, "1", "USD")
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("top_up.recharge_to:")
    assert held == taken


def use(client: TariffClient, customer_id: str, key: str, units: int, at_ms: int) -> None:
    """One event of `units` units (1 credit each), acknowledged before the next."""
    event = usage_pb2.UsageEvent(transaction_id=key, customer_id=customer_id, event_type="work", timestamp_ms=at_ms)
    event.values["n"] = units
    ack = client.ingest_batch([event], key)
    assert ack.accepted == 1, ack.rejected


def rule(client: TariffClient, customer_id: str, kind: alerts_pb2.AlertType, threshold: str = "") -> str:
    request = alerts_pb2.CreateAlertRequest(customer_id=customer_id, type=kind, threshold=threshold)
    made: alerts_pb2.AlertRule = client.alerts.CreateAlert(request)
    return made.id


def alerts_until_marker(client: TariffClient, name: str) -> list[alerts_pb2.Alert]:
    """Every alert up to a new customer `name`'s SPEND_THRESHOLD, which fires at once: an alert known to come
    after every one before it."""
    customer(client, name)
    client.contracts.CreateContract(unnamed(name, JAN_MS))
    rule(client, name, alerts_pb2.SPEND_THRESHOLD, "0.5")
    use(client, name, f"{name}-1", 1, now_ms())
    seen: list[alerts_pb2.Alert] = []
    for alert in client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=STREAM_TIMEOUT_S):
        seen.append(alert)
        if alert.customer_id == name:
            return seen
    raise AssertionError(f"the stream ended before {name!r}'s alert: {seen}")


def test_a_grant_not_yet_started_is_held_for_low_balance_and_credits_exhausted(server: ServerProcess) -> None:
    """AlertType: LOW_BALANCE is credits_available < threshold "for a customer holding at least one grant", and so
    is CREDITS_EXHAUSTED (credits_available <= 0). Customer `fut` (ALLOW, from 2026-01-01), rules LOW_BALANCE below
    5 and CREDITS_EXHAUSTED: 3 units used while it holds no grant fire nothing (3 of overage). A grant of 10 credits
    starting a year from now is held but not available: at the grant (a change), available 0 is below 5 and
    exhausted, both fire once, reading credits_available 0; 1 more unit used (still 0 available) fires neither
    again."""
    future_ms = now_ms() + 365 * DAY_MS
    with server.client() as client:
        customer(client, "fut")
        client.contracts.CreateContract(unnamed("fut", JAN_MS))
        low = rule(client, "fut", alerts_pb2.LOW_BALANCE, "5")
        out = rule(client, "fut", alerts_pb2.CREDITS_EXHAUSTED)
        use(client, "fut", "fut-1", 3, now_ms())
        grant = contracts_pb2.Grant(
            id="fut-g", customer_id="fut", kind=contracts_pb2.PROMOTIONAL, amount="10", starts_at=stamp(future_ms)
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        use(client, "fut", "fut-2", 1, now_ms())
        balance = client.get_balance("fut")
        seen = alerts_until_marker(client, "fut-marker")
    assert (balance.credits_available, balance.credits_remaining, balance.overage_amount) == ("0", "0", "4")
    assert [g.grant_id for g in balance.grants] == ["fut-g"]
    fired = [(a.rule_id, dict(a.details)) for a in seen if a.customer_id == "fut"]
    assert fired == [
        (low, {"credits_available": "0", "threshold": "5"}),
        (out, {"credits_available": "0"}),
    ]


def test_an_attribute_refusal_names_the_entry_it_refuses(server: ServerProcess) -> None:
    """CreateCustomerRequest.attributes: keys (non-empty) and values at most 256 bytes each; a refusal is
    INVALID_ARGUMENT naming the field, and "a value quoted in a message or violation may be cut, ending with '…'".
    A 40-character key whose value is 257 bytes was named by its first 32 characters without a mark, a key the
    request does not hold ("attributes[region-of-the-customer-headq]"): it is named whole, and the violation says
    the value is what is too long. A 300-byte key is named by its first 128 characters and "…". Nothing created."""
    key = "region-of-the-customer-headquarters-city"
    assert len(key) == 40
    with server.client() as client:
        cases = {
            "attr-1": ({key: "v" * 257}, f"attributes[{key}]", "a value is at most 256 bytes, not 257"),
            "attr-2": ({"k" * 300: "v"}, f"attributes[{'k' * 128}…]", "a key is at most 256 bytes, not 300"),
            "attr-3": ({"": "v"}, "attributes[]", "a key must not be empty"),
        }
        for customer_id, (attributes, field, why) in cases.items():
            request = contracts_pb2.CreateCustomerRequest(id=customer_id, attributes=attributes)
            with pytest.raises(TariffError) as refused:
                client.contracts.CreateCustomer(request)
            violations = [(v.field, v.description) for v in refused.value.field_violations]
            assert (refused.value.code, violations) == (grpc.StatusCode.INVALID_ARGUMENT, [(field, why)])
            lookup = contracts_pb2.GetCustomerRequest(id=customer_id)
            assert refusal(partial(client.contracts.GetCustomer, lookup))[0] == grpc.StatusCode.NOT_FOUND


def test_a_top_up_policy_is_cleared_and_set_on_a_contract_whose_answer_is_already_too_large(
    server: ServerProcess,
) -> None:
    """SetTopUpPolicy: "A policy that would make the answer (the whole contract) larger than --message-mb-max is
    RESOURCE_EXHAUSTED, not set". Contract `big-k` (its customer's only one) with a policy buying up to 50 credits
    below 10 at 1 USD; then 220 grants of 1 credit naming it, each for 40 products of 120-character ids (about 5
    KB a grant, 1.1 MB in all): GetContract is RESOURCE_EXHAUSTED (the contract is one message, never paged).
    Clearing the policy makes the answer smaller, never larger: it must clear (else nothing could stop the
    customer's purchases), and say it did though the contract cannot be sent. Before: refused, the policy left
    buying. Used after it, 211 units (220 credits, 211 used: 9 left, below 10) buy nothing: 9 available (the
    balance, 220 grants, is too large to send too; Authorize answers it), the invoice's top_up_purchases 0.00 (before:
    41 credits bought back to 50, 41.00 USD)."""
    products = [f"big{n:03d}" + "x" * 117 for n in range(40)]
    with server.client() as client:
        for n, product_id in enumerate(products):
            product = pricing_pb2.Product(id=product_id, event_type=f"big-e{n}", aggregation=pricing_pb2.COUNT)
            client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
        customer(client, "big")
        request = unnamed("big", JAN_MS)
        request.id = "big-k"
        client.contracts.CreateContract(request)
        top_up = contracts_pb2.TopUpPolicy(threshold="10", recharge_to="50", price_per_credit="1", max_per_period=5)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="big-k", top_up=top_up))
        for n in range(220):
            grant = contracts_pb2.Grant(
                id=f"big-g{n}",
                contract_id="big-k",
                kind=contracts_pb2.PROMOTIONAL,
                amount="1",
                applicable_product_ids=[*products, "units"],
            )
            client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        lookup = contracts_pb2.GetContractRequest(id="big-k")
        assert refusal(partial(client.contracts.GetContract, lookup))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        clear = contracts_pb2.SetTopUpPolicyRequest(contract_id="big-k")
        code, message = refusal(partial(client.contracts.SetTopUpPolicy, clear))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "cleared" in message, message
        use(client, "big", "big-1", 211, now_ms())
        authorize = balance_pb2.AuthorizeRequest(customer_id="big", event_type="work", values={"n": 0})
        decided = client.balance.Authorize(authorize)
        invoice = preview(client, "big", now_ms())
    assert decided.credits_available == "9"
    assert (invoice.top_up_purchases, invoice.total_due) == ("0.00", "0.00")


def test_pages_of_customers_and_rules_are_100_by_default_and_1000_at_most(server: ServerProcess) -> None:
    """Paged lists: page_size items a page, 100 when 0, more than 1,000 read as 1,000 (ListCustomers' uint32 and
    ListAlertRules' int32 at their largest too), the token the page's last id, every item once. 1,001 customers
    `pg-0000`..`pg-1000` and 1,001 rules, one for each of them (RESERVATION_EXPIRED, which nothing here fires), added to
    what the module holds: a first page of 100 when 0, of 1,000 at 1,001 and at the largest size, the next page
    taking the rest, none twice."""
    with server.client() as client:
        for n in range(1_001):
            customer(client, f"pg-{n:04d}")
            rule_request = alerts_pb2.CreateAlertRequest(  # one a customer: every customer's rules are 1,000 at most
                customer_id=f"pg-{n:04d}", type=alerts_pb2.RESERVATION_EXPIRED, id=f"pg-{n:04d}"
            )
            client.alerts.CreateAlert(rule_request)

        def customers(size: int, token: str = "") -> tuple[list[str], str]:
            page = client.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(page_size=size, page_token=token))
            return [c.id for c in page.customers], page.next_page_token

        def rules(size: int, token: str = "") -> tuple[list[str], str]:
            page = client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(page_size=size, page_token=token))
            return [r.id for r in page.rules], page.next_page_token

        for listed, largest in ((customers, 2**32 - 1), (rules, 2**31 - 1)):
            default, default_token = listed(0)
            assert (len(default), default_token) == (100, default[-1])
            for size in (1_001, largest):
                first, token = listed(size)
                assert (len(first), token) == (1_000, first[-1])
                rest, last_token = listed(size, token)
                assert last_token == "" and first[-1] < rest[0]
                every = first + rest
                assert every == sorted(set(every)) and {f"pg-{n:04d}" for n in range(1_001)} <= set(every)
