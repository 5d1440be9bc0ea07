"""An acceptance pass over contracts.proto and invoices.proto (ContractService, InvoiceService) over the wire: the
statements the earlier audits leave unpinned, each read as a billing user would rely on it. Every amount is
computed by hand in the docstrings.

Products `units` (SUM of `n`, event type `work`) and `more` (SUM of `m`, event type `extra`), at 1 credit a unit on rate
card `card` (credits), in force from 2026-01-01. One server for the file (`--close-grace off`), each test on
customers of its own; January 2026 has ended by the server's clock, so its periods can be closed."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from tariff import TariffClient
from tariff.v1 import contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import HOUR_MS, audit_count, preview, refusal, serving
from tests.serverproc import ServerProcess, wait_for

DAY_MS = 86_400_000
JAN_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
FEB_MS = JAN_MS + 31 * DAY_MS  # 2026-02-01T00:00:00Z
MAR_MS = FEB_MS + 28 * DAY_MS  # 2026-03-01T00:00:00Z


def catalogue(client: TariffClient) -> None:
    for product_id, event_type, value_key in (("units", "work", "n"), ("more", "extra", "m")):
        product = pricing_pb2.Product(
            id=product_id, event_type=event_type, aggregation=pricing_pb2.SUM, value_key=value_key
        )
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rates = [pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price="1")) for p in ("units", "more")]
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=rates))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="card", version=1, effective_from=stamp(JAN_MS))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-contractdoc")
    process = ServerProcess(root / "data", extra_args=["--close-grace", "off"])
    yield from serving(process, catalogue)


def customer(client: TariffClient, customer_id: str) -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))


def contract(
    client: TariffClient,
    customer_id: str,
    contract_id: str,
    start_ms: int,
    end_ms: int | None = None,
    *,
    overage_price: str = "",
    currency: str = "",
) -> contracts_pb2.Contract:
    """A contract on `card` (the documented defaults but for what is given)."""
    request = contracts_pb2.CreateContractRequest(
        id=contract_id,
        customer_id=customer_id,
        rate_card_id="card",
        starting_at=stamp(start_ms),
        overage_price=overage_price,
        currency=currency,
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(stamp(end_ms))
    made: contracts_pb2.Contract = client.contracts.CreateContract(request)
    return made


def grant(client: TariffClient, request_id: str = "", **fields: object) -> contracts_pb2.Grant:
    made: contracts_pb2.Grant = client.contracts.GrantCredits(
        contracts_pb2.GrantCreditsRequest(request_id=request_id, grant=contracts_pb2.Grant(**fields))  # type: ignore[arg-type]
    )
    return made


def work(
    client: TariffClient, customer_id: str, transaction_id: str, at_ms: int, event_type: str = "work", **values: float
) -> None:
    event = usage_pb2.UsageEvent(
        transaction_id=transaction_id, customer_id=customer_id, event_type=event_type, timestamp_ms=at_ms, values=values
    )
    assert not client.ingest_batch([event]).rejected


def grant_ids(client: TariffClient, contract_id: str) -> list[str]:
    return [g.id for g in client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)).grants]


def test_a_grant_starting_now_by_default_answers_its_retry_as_first_made(server: ServerProcess) -> None:
    """GrantCreditsRequest: starts_at defaults "to now when no contract is in force", and the top of
    contracts.proto: the same key with the same request answers what the first call made and changes nothing.
    `late`'s only contract ended on Feb 1, so a grant of 2 credits by request_id `late-r` starts at the instant it
    is made; the same request sent 20 ms later answers that grant (its starts_at the first call's, not the
    retry's now) and lists no second grant; 3 credits under that key is ALREADY_EXISTS."""
    with server.client() as client:
        customer(client, "late")
        contract(client, "late", "late-c", JAN_MS, FEB_MS)
        first = grant(client, "late-r", customer_id="late", amount="2", kind=contracts_pb2.PROMOTIONAL)
        time.sleep(0.02)
        again = grant(client, "late-r", customer_id="late", amount="2", kind=contracts_pb2.PROMOTIONAL)
        code, _ = refusal(
            lambda: grant(client, "late-r", customer_id="late", amount="3", kind=contracts_pb2.PROMOTIONAL)
        )
        listed = grant_ids(client, "late-c")
    assert first.starts_at.ToMilliseconds() > FEB_MS
    assert again == first
    assert code == grpc.StatusCode.ALREADY_EXISTS
    assert listed == ["late-r"]


def test_an_unnamed_contract_whose_default_id_and_its_dot_2_are_taken_is_dot_3_on_every_retry(
    server: ServerProcess,
) -> None:
    """CreateContractRequest.id: when another contract holds the default id ("one of this customer's from another
    start, named so by its request"), ".2" is added, ".3" while taken, and the key is the customer and the start.
    `dots` holds `dots-20260101` (from Feb 1) and `dots-20260101.2` (from Feb 2), both named so: an unnamed contract
    from Jan 1 to Feb 1 is `dots-20260101.3`, its retry answers `.3` again, and the same start with another end is
    ALREADY_EXISTS naming `.3`, nothing created."""
    with server.client() as client:
        customer(client, "dots")
        contract(client, "dots", "dots-20260101", FEB_MS, FEB_MS + DAY_MS)
        contract(client, "dots", "dots-20260101.2", FEB_MS + DAY_MS, FEB_MS + 2 * DAY_MS)
        made = contract(client, "dots", "", JAN_MS, FEB_MS)
        again = contract(client, "dots", "", JAN_MS, FEB_MS)
        before = audit_count(client)
        code, message = refusal(lambda: contract(client, "dots", "", JAN_MS, FEB_MS - DAY_MS))
        after = audit_count(client)
    assert (made.id, again.id) == ("dots-20260101.3", "dots-20260101.3")
    assert code == grpc.StatusCode.ALREADY_EXISTS and "'dots-20260101.3'" in message, message
    assert after == before


def test_a_contract_lists_its_own_grants_and_the_customers_and_a_retry_answers_it_as_it_is_now(
    server: ServerProcess,
) -> None:
    """Contract.grants: the grants naming the contract and those naming only its customer (every contract of the
    customer lists those), in creation order; GrantCreditsRequest: starts_at defaults to the start of the
    contract given, or in force now; and a retried CreateContract answers the contract "as it is now (a contract
    with its later grants, say)". `both-a` holds Jan 1 - Feb 11, `both-b` from Feb 11 (in force now). Grants `ga`
    (naming both-a: starts Jan 1), `gb` (both-b: Feb 11), `gc` (the customer: Feb 11, both-b's start): both-a
    lists [ga, gc], both-b [gb, gc], and both-a's CreateContract sent again answers [ga, gc]."""
    switch_ms = FEB_MS + 10 * DAY_MS
    with server.client() as client:
        customer(client, "both")
        contract(client, "both", "both-a", JAN_MS, switch_ms)
        contract(client, "both", "both-b", switch_ms)
        starts = [
            grant(client, id=grant_id, amount="1", kind=contracts_pb2.PROMOTIONAL, **owner).starts_at.ToMilliseconds()
            for grant_id, owner in (
                ("ga", {"contract_id": "both-a"}),
                ("gb", {"contract_id": "both-b"}),
                ("gc", {"customer_id": "both"}),
            )
        ]
        retried = contract(client, "both", "both-a", JAN_MS, switch_ms)
        lists = grant_ids(client, "both-a"), grant_ids(client, "both-b")
    assert starts == [JAN_MS, switch_ms, switch_ms]
    assert lists == (["ga", "gc"], ["gb", "gc"])
    assert [g.id for g in retried.grants] == ["ga", "gc"]


def test_the_one_top_up_policy_shows_on_every_contract_and_is_not_resent_through_another_currency(
    server: ServerProcess,
) -> None:
    """TopUpPolicy: one policy per customer, set through any of its contracts, which every contract of the
    customer shows, its currency "answered by the server: that of the contract the policy was set through"; sent
    through a contract in another currency with that currency set, it is INVALID_ARGUMENT naming
    top_up.currency, nothing changed. Set through the USD contract `cur-usd` as 1 / "5.0" / "0.20" / 3, both it
    and the EUR contract `cur-eur` answer 1 / 5 / 0.2 / 3 / USD; the same policy sent through `cur-eur` with
    currency USD is refused, and `cur-eur` still shows the USD one."""
    policy = contracts_pb2.TopUpPolicy(threshold="1", recharge_to="5.0", price_per_credit="0.20", max_per_period=3)
    shown = contracts_pb2.TopUpPolicy(
        threshold="1", recharge_to="5", price_per_credit="0.2", max_per_period=3, currency="USD"
    )
    with server.client() as client:
        customer(client, "cur")
        contract(client, "cur", "cur-usd", JAN_MS, FEB_MS)
        contract(client, "cur", "cur-eur", FEB_MS, currency="EUR")
        set_through = client.contracts.SetTopUpPolicy(
            contracts_pb2.SetTopUpPolicyRequest(contract_id="cur-usd", top_up=policy)
        )
        other = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="cur-eur"))
        read_back = contracts_pb2.TopUpPolicy()
        read_back.CopyFrom(other.top_up)
        before = audit_count(client)
        code, message = refusal(
            lambda: client.contracts.SetTopUpPolicy(
                contracts_pb2.SetTopUpPolicyRequest(contract_id="cur-eur", top_up=read_back)
            )
        )
        after = audit_count(client)
        still = client.contracts.GetContract(contracts_pb2.GetContractRequest(id="cur-eur")).top_up
    assert set_through.top_up == shown and other.top_up == shown
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("top_up.currency:"), message
    assert after == before and still == shown


def test_a_closed_period_previews_as_its_final_invoice(server: ServerProcess) -> None:
    """README "Draft = final": "A closed period previews as its final invoice". `fin` used 1.5 units in January
    (overage 1.5 at 1 USD: 1.50 due); once closed, PreviewInvoice of any instant in January answers the final
    invoice field by field, its number, FINAL status and closed_at included."""
    with server.client() as client:
        customer(client, "fin")
        contract(client, "fin", "fin-c", JAN_MS)
        work(client, "fin", "fin-1", JAN_MS + HOUR_MS, n=1.5)
        final = client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="fin", period_start=stamp(JAN_MS))
        )
        previewed = preview(client, "fin", JAN_MS + 10 * DAY_MS)
    assert (final.status, final.total_due) == (invoices_pb2.INVOICE_FINAL, "1.50")
    assert previewed == final


def test_invoice_filters_take_any_valid_timestamp_compared_to_the_nanosecond(server: ServerProcess) -> None:
    """contracts.proto: "The bounds of a filter (..., period_start_from, period_start_before) may be any valid
    Timestamp", "compared to the nanosecond: a period starting at t is in a span or filter ending at t + 0.5 ms";
    ListInvoicesRequest.status: DRAFT lists none, a value InvoiceStatus does not define is INVALID_ARGUMENT naming
    status; a filter's nanos outside 0-999,999,999 is INVALID_ARGUMENT naming it. `filt`'s January invoice (period
    start Jan 1) is listed from the year 1000 and before 9999-12-31T23:59:59Z (outside the range a request may
    set), before Jan 1 + 0.5 ms, and not from Jan 1 + 0.5 ms."""
    half_ms_past_jan = Timestamp(seconds=JAN_MS // 1000, nanos=500_000)

    def listed(**fields: object) -> list[str]:
        request = invoices_pb2.ListInvoicesRequest(customer_id="filt", **fields)  # type: ignore[arg-type]
        return [invoice.invoice_number for invoice in client.invoices.ListInvoices(request).invoices]

    with server.client() as client:
        customer(client, "filt")
        contract(client, "filt", "filt-c", JAN_MS)
        number = client.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id="filt", period_start=stamp(JAN_MS))
        ).invoice_number
        year_1000, year_9999 = Timestamp(seconds=-30_610_224_000), Timestamp(seconds=253_402_300_799)
        assert listed(period_start_from=year_1000, period_start_before=year_9999) == [number]
        assert listed(period_start_before=half_ms_past_jan) == [number]
        assert listed(period_start_from=half_ms_past_jan) == []
        assert listed(status=invoices_pb2.INVOICE_DRAFT) == []
        assert listed(status=invoices_pb2.INVOICE_FINAL) == listed() == [number]
        code, message = refusal(lambda: listed(status=7))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("status:"), message
        code, message = refusal(lambda: listed(period_start_before=Timestamp(seconds=0, nanos=-1)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("period_start_before:"), message


Call = Callable[[TariffClient, str], object]
JAN = stamp(JAN_MS)
RECORD_FINDERS: list[tuple[str, str, Call]] = [
    (
        "PreviewInvoice",
        "customer_id",
        lambda client, v: client.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=v)),
    ),
    (
        "ExplainLineItem",
        "customer_id",
        lambda client, v: client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id=v, period_start=JAN, line_id="units")
        ),
    ),
    (
        "ClosePeriod",
        "customer_id",
        lambda client, v: client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=v, period_start=JAN)),
    ),
    (
        "ListInvoices",
        "customer_id",
        lambda client, v: client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id=v)),
    ),
    (
        "GetRevenueReport",
        "customer_id",
        lambda client, v: client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(customer_id=v, period_start=JAN, period_end=stamp(FEB_MS))
        ),
    ),
    ("GetContract", "id", lambda client, v: client.contracts.GetContract(contracts_pb2.GetContractRequest(id=v))),
    (
        "AddOverride",
        "contract_id",
        lambda client, v: client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id=v, override=contracts_pb2.PriceOverride(product_id="units", price="1")
            )
        ),
    ),
    (
        "SetTopUpPolicy",
        "contract_id",
        lambda client, v: client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=v)),
    ),
]
# Where an empty customer_id means every customer's (ListInvoicesRequest, GetRevenueReportRequest).
EVERY_CUSTOMER_WHEN_EMPTY = {"ListInvoices", "GetRevenueReport"}


@pytest.mark.parametrize("value", ["", "a b", "nobody"])
def test_a_customer_or_contract_id_is_answered_alike_by_every_invoice_and_contract_call(
    server: ServerProcess, value: str
) -> None:
    """contracts.proto: a field naming a record to find, on every service: empty is INVALID_ARGUMENT "is required"
    naming it (but where the field says empty means every customer: ListInvoices, GetRevenueReport), breaking the
    id rule is INVALID_ARGUMENT naming it, a well-formed id of no record NOT_FOUND naming the id; none changes
    anything. Each call in RECORD_FINDERS answers "", "a b" and "nobody" so."""
    with server.client() as client:
        before = audit_count(client)
        for name, field, call in RECORD_FINDERS:
            if not value and name in EVERY_CUSTOMER_WHEN_EMPTY:
                continue
            code, message = refusal(partial(call, client, value))
            if not value:
                assert (code, message) == (grpc.StatusCode.INVALID_ARGUMENT, f"{field}: is required"), (name, message)
            elif value == "a b":
                assert code == grpc.StatusCode.INVALID_ARGUMENT, (name, message)
                assert message.startswith(f"{field}: 'a b'"), (name, message)
            else:
                assert code == grpc.StatusCode.NOT_FOUND and "'nobody'" in message, (name, message)
        assert audit_count(client) == before


def at(ms: int, extra_nanos: int = 0) -> Timestamp:
    instant = stamp(ms)
    instant.nanos += extra_nanos
    return instant


def test_a_retry_naming_the_same_instants_to_the_millisecond_is_the_same_contract_and_override(
    server: ServerProcess,
) -> None:
    """README "Every state-changing call is safe to retry": "an instant is compared as kept, in whole milliseconds
    (what a request sets has what is finer dropped first)". A contract `subms-k` from Jan 1 + 0.5 ms to Feb 1 +
    0.7 ms is kept from Jan 1 to Feb 1, and sent again with the whole milliseconds answers it; an unnamed
    contract from Feb 1 + 1,234.5 ms (id `subms-1769904001234`, the start's Unix ms) is answered by the same
    request from Feb 1 + 1,234 ms and + 1,234.9 ms; an override `o` from Jan 2 + 0.5 ms, and an unnamed one
    (keyed by its content) from Jan 4 + 0.5 ms, sent again from the whole millisecond add nothing: 2 overrides,
    and no audit entry for the retries."""
    feb_start_ms = FEB_MS + 1234
    with server.client() as client:
        customer(client, "subms")

        def named(start: Timestamp, end: Timestamp) -> contracts_pb2.Contract:
            request = contracts_pb2.CreateContractRequest(
                id="subms-k", customer_id="subms", rate_card_id="card", starting_at=start, ending_before=end
            )
            made: contracts_pb2.Contract = client.contracts.CreateContract(request)
            return made

        def unnamed(start: Timestamp) -> str:
            request = contracts_pb2.CreateContractRequest(
                customer_id="subms", rate_card_id="card", starting_at=start, ending_before=stamp(FEB_MS + DAY_MS)
            )
            return str(client.contracts.CreateContract(request).id)

        def override(override_id: str, start: Timestamp) -> list[str]:
            adding = contracts_pb2.PriceOverride(id=override_id, product_id="units", price="2", starting_at=start)
            request = contracts_pb2.AddOverrideRequest(contract_id="subms-k", override=adding)
            return [o.id for o in client.contracts.AddOverride(request).overrides]

        kept = named(at(JAN_MS, 500_000), at(FEB_MS, 700_000))
        first_unnamed = unnamed(at(feb_start_ms, 500_000))
        override("o", at(JAN_MS + DAY_MS, 500_000))
        made = override("", at(JAN_MS + 3 * DAY_MS, 500_000))
        before = audit_count(client)
        assert named(stamp(JAN_MS), stamp(FEB_MS)).id == "subms-k"
        assert unnamed(stamp(feb_start_ms)) == unnamed(at(feb_start_ms, 900_000)) == first_unnamed
        assert override("o", stamp(JAN_MS + DAY_MS)) == made
        assert override("", stamp(JAN_MS + 3 * DAY_MS)) == made
        after = audit_count(client)
    assert (kept.starting_at, kept.ending_before) == (stamp(JAN_MS), stamp(FEB_MS))
    assert first_unnamed == "subms-1769904001234"
    assert len(made) == 2 and made[0] == "o"
    assert after == before


def test_decimals_a_grant_and_a_top_up_policy_set_are_answered_without_exponent_or_signed_zero(
    server: ServerProcess,
) -> None:
    """contracts.proto "Decimal strings": amounts the server writes have no exponent or trailing zeros, and so do
    the decimals a request set. A grant of "2.500e1" credits paid "1E-12" is answered 25 / 0.000000000001, one of
    "1E2" paid "-0.0" 100 / 0 (never "-0"), a rollover_fraction of "10e-1" is 1 and "-0" is 0; a top-up policy
    "1e0" / "1E+1" / "-0" answers 1 / 10 / 0, and SetTopUpPolicy compares values: "10.50" / "20" / "1" sent
    again as "1.05e1" / "2E1" / "1.0" changes nothing (no audit entry) and answers 10.5 / 20 / 1."""
    with server.client() as client:
        customer(client, "dec")
        contract(client, "dec", "dec-c", JAN_MS)

        def granted(grant_id: str, amount: str, paid: str, rollover: str = "0") -> tuple[str, str, str]:
            made = grant(
                client,
                id=grant_id,
                contract_id="dec-c",
                amount=amount,
                paid_amount=paid,
                kind=contracts_pb2.PREPAID,
                rollover_fraction=rollover,
            )
            return made.amount, made.paid_amount, made.rollover_fraction

        def policy(threshold: str, recharge_to: str, price: str) -> tuple[str, str, str]:
            top_up = contracts_pb2.TopUpPolicy(
                threshold=threshold, recharge_to=recharge_to, price_per_credit=price, max_per_period=1
            )
            request = contracts_pb2.SetTopUpPolicyRequest(contract_id="dec-c", top_up=top_up)
            answered = client.contracts.SetTopUpPolicy(request).top_up
            return answered.threshold, answered.recharge_to, answered.price_per_credit

        assert granted("dec-a", "2.500e1", "1E-12", "10e-1") == ("25", "0.000000000001", "1")
        assert granted("dec-b", "1E2", "-0.0", "-0") == ("100", "0", "0")
        assert policy("1e0", "1E+1", "-0") == ("1", "10", "0")
        assert policy("10.50", "20", "1") == ("10.5", "20", "1")
        before = audit_count(client)
        assert policy("1.05e1", "2E1", "1.0") == ("10.5", "20", "1")
        assert audit_count(client) == before


def test_recognised_overage_rounds_half_even_per_product_and_the_customer_line_sums_the_products(
    server: ServerProcess,
) -> None:
    """README "Recognised from overage": overage x the contract's overage price, rounded half-even to the pico
    once per customer, period and product. At an overage price of 0.0000000000005 (5 x 10^-13), 1 unit of each
    product is 0.5 pico a product: 0 each (half to even), so the customer line and the reconciliation are 0, not
    the 1 pico one rounding of the sum (1 pico) would give. At 0.0000000000015, 1.5 pico a product: 2 each (half
    to even), 4 on the customer line, not 3. The invoice's overage_due rounds the 2 units once to cents: 0.00."""
    found = {}
    with server.client() as client:
        for customer_id, price in (("half", "0.0000000000005"), ("threehalves", "0.0000000000015")):
            customer(client, customer_id)
            contract(client, customer_id, f"{customer_id}-c", JAN_MS, overage_price=price)
            work(client, customer_id, f"{customer_id}-u", JAN_MS + HOUR_MS, n=1)
            work(client, customer_id, f"{customer_id}-m", JAN_MS + HOUR_MS, "extra", m=1)
            report = client.invoices.GetRevenueReport(
                invoices_pb2.GetRevenueReportRequest(
                    customer_id=customer_id, period_start=stamp(JAN_MS), period_end=stamp(FEB_MS)
                )
            )
            invoice = preview(client, customer_id, JAN_MS)
            found[customer_id] = (
                [(line.product_id, line.recognized_overage) for line in report.lines],
                [line.recognized_overage for line in report.customer_lines],
                report.reconciliation.recognized_overage,
                (invoice.overage_amount, invoice.overage_due),
            )
    assert found["half"] == ([("more", "0"), ("units", "0")], ["0"], "0", ("2", "0.00"))
    assert found["threehalves"] == (
        [("more", "0.000000000002"), ("units", "0.000000000002")],
        ["0.000000000004"],
        "0.000000000004",
        ("2", "0.00"),
    )


def test_a_rollover_in_a_period_starting_at_the_epoch_breaks_on_that_periods_line(server: ServerProcess) -> None:
    """contracts.proto: times lie from 1970-01-01T00:00:00Z; README "Breakage": the part of a rollover grant's
    remainder that did not roll over breaks at its cost basis in the period of the grant's last usable instant.
    `epoch`'s contract runs from 1970-01-01T00:00:00Z (Unix ms 0) to Mar 1; a grant of 3 credits paid 1 USD,
    rollover_fraction 0.5, from its start, never drawn: at Feb 1, 1.5 credits roll over and 1.5 break (1 x 1.5 / 3
    = 0.5 on January's line, deferred 0.5 left); the ROLLOVER grant's 1.5 lapse at Mar 1 (0.5 on February's line,
    deferred 0). Over the span: sold 1, breakage 1, deferred at the end 0, never 0.5 left deferred with no credit
    left to draw (a period starting at ms 0 read as "no period")."""
    mar_1970_ms = 59 * DAY_MS
    with server.client() as client:
        customer(client, "epoch")
        contract(client, "epoch", "epoch-c", 0, mar_1970_ms)
        grant(
            client,
            id="epoch-g",
            contract_id="epoch-c",
            amount="3",
            paid_amount="1",
            kind=contracts_pb2.PREPAID,
            rollover_fraction="0.5",
        )
        granted_seq = client.get_balance("epoch").as_of_seq
        # The clock records the rollover and the lapse (both long due) in journaled commands of its own.
        assert wait_for(lambda: client.get_balance("epoch").as_of_seq > granted_seq, 10.0)
        report = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                customer_id="epoch", period_start=stamp(0), period_end=stamp(mar_1970_ms + 31 * DAY_MS)
            )
        )
    lines = [(line.period_start.ToMilliseconds(), line.breakage, line.deferred) for line in report.customer_lines]
    totals = report.reconciliation
    assert lines == [(0, "0.5", "0.5"), (31 * DAY_MS, "0.5", "0")]
    assert (totals.prepaid_sold, totals.breakage, totals.deferred_end, totals.reconciles) == ("1", "1", "0", True)


def test_an_override_starting_at_the_epoch_is_held_and_keyed_as_one_without_a_start(server: ServerProcess) -> None:
    """PriceOverride.starting_at: unset is in force from the contract's start, left unset in answers; 1970-01-01
    (Unix ms 0, before every contract's start) is read as unset: answered unset, and the same request as one
    leaving it unset, for an unnamed override (its content the key) and a named one alike. A start 1 ms later is
    held and answered as sent. 3 overrides in all."""
    with server.client() as client:
        customer(client, "zero")
        contract(client, "zero", "zero-c", JAN_MS)

        def add(override_id: str, start: Timestamp | None) -> list[tuple[str, str]]:
            override = contracts_pb2.PriceOverride(id=override_id, product_id="units", price="2")
            if start is not None:
                override.starting_at.CopyFrom(start)
            request = contracts_pb2.AddOverrideRequest(contract_id="zero-c", override=override)
            return [
                (o.id, o.starting_at.ToJsonString() if o.HasField("starting_at") else "")
                for o in client.contracts.AddOverride(request).overrides
            ]

        unnamed = add("", stamp(0))
        assert add("", None) == unnamed and len(unnamed) == 1 and unnamed[0][1] == ""
        assert add("z", stamp(0))[1:] == [("z", "")] == add("z", None)[1:]
        assert add("z1", stamp(1))[2:] == [("z1", "1970-01-01T00:00:00.001Z")]
