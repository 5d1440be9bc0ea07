"""Every request field that names an id answers alike, over the wire (contracts.proto's id rule).

Before, only CreateAlert told a customer_id that is not an id at all from one that names nobody: every other
lookup (GetCustomer, CreateContract, GrantCredits, GetBalance, Authorize, PreviewInvoice, ListInvoices,
ExplainLineItem, AddOverride, PublishVersion's rate_card_id, ...) answered NOT_FOUND for both. Now an empty
id or one that breaks the rule is INVALID_ARGUMENT with a google.rpc.BadRequest violation naming the exact
field and why, a well-formed unknown one NOT_FOUND naming what does not exist, and neither changes anything.
The streams answer in-band, as the protos say: an AuthorizeStream or AuthorizeBatches request INVALID_REQUEST
(its message naming the field) or UNKNOWN_CUSTOMER, a usage event INVALID_EVENT or UNKNOWN_CUSTOMER, never
ending the stream or sinking the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import grpc
import pytest
from google.protobuf import message as pb_message
from google.protobuf import timestamp_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from tariff.v1 import (
    alerts_pb2,
    alerts_pb2_grpc,
    balance_pb2,
    balance_pb2_grpc,
    contracts_pb2,
    contracts_pb2_grpc,
    invoices_pb2,
    invoices_pb2_grpc,
    pricing_pb2,
    pricing_pb2_grpc,
    usage_pb2,
    usage_pb2_grpc,
)

from tests.serverproc import ServerFactory, ServerProcess

CUSTOMER = "acme"  # the demo's (server/demo.py)
CONTRACT = "acme-2026"
CARD = "ai-credits"
EVENT_TYPE = "ai_action"
MALFORMED = "not an id!"  # a space and a '!': outside the id rule
UNKNOWN = "nobody-here"  # well formed, names nothing
RULE_WHY = "must be 1-128 characters of letters, digits and ._:@-"


def _month_start() -> timestamp_pb2.Timestamp:
    now = datetime.now(UTC)
    return timestamp_pb2.Timestamp(seconds=int(datetime(now.year, now.month, 1, tzinfo=UTC).timestamp()))


def _next_month_start() -> timestamp_pb2.Timestamp:
    now = datetime.now(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return timestamp_pb2.Timestamp(seconds=int(datetime(year, month, 1, tzinfo=UTC).timestamp()))


@dataclass(frozen=True)
class Row:
    """One RPC's id field: `call(stubs, value)` sends the request with that field set to `value`; `found` is
    what a NOT_FOUND message must name for UNKNOWN (None: the field creates, so nothing can be unknown)."""

    rpc: str
    field: str
    call: Callable[[Stubs, str], object]
    found: str | None
    ruled: bool = True  # False: a field the id rule does not cover (reservation ids): only NOT_FOUND is checked


@dataclass(frozen=True)
class Stubs:
    contracts: contracts_pb2_grpc.ContractServiceStub
    pricing: pricing_pb2_grpc.PricingServiceStub
    balance: balance_pb2_grpc.BalanceServiceStub
    invoices: invoices_pb2_grpc.InvoiceServiceStub
    alerts: alerts_pb2_grpc.AlertServiceStub
    usage: usage_pb2_grpc.UsageServiceStub


def _grant(customer_id: str = CUSTOMER, contract_id: str = "", grant_id: str = "g-audit") -> contracts_pb2.Grant:
    return contracts_pb2.Grant(
        id=grant_id, customer_id=customer_id, contract_id=contract_id, kind=contracts_pb2.PROMOTIONAL, amount="5"
    )


def _override(override_id: str = "") -> contracts_pb2.PriceOverride:
    return contracts_pb2.PriceOverride(id=override_id, product_id=EVENT_TYPE, multiplier="2")


def _authorize(customer_id: str, reserve: bool = False, reservation_id: str = "") -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id="q-1",
        customer_id=customer_id,
        event_type=EVENT_TYPE,
        dimensions={"action": "summarize"},
        reserve=reserve,
        reservation_id=reservation_id,
    )


def _watch(s: Stubs, customer_id: str) -> object:
    return next(iter(s.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=customer_id), timeout=10)))


def _simulate(card: str, customer_ids: tuple[str, ...] = ()) -> pricing_pb2.SimulateVersionRequest:
    return pricing_pb2.SimulateVersionRequest(
        rate_card_id=card,
        version=1,
        period_start=_month_start(),
        period_end=_next_month_start(),
        customer_ids=customer_ids,
    )


C = pricing_pb2  # short for the table
ROWS: list[Row] = [
    # ContractService
    Row(
        "CreateCustomer", "id", lambda s, v: s.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=v)), None
    ),
    Row("GetCustomer", "id", lambda s, v: s.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=v)), "customer"),
    Row(
        "CreateContract",
        "customer_id",
        lambda s, v: s.contracts.CreateContract(contracts_pb2.CreateContractRequest(customer_id=v, rate_card_id=CARD)),
        "customer",
    ),
    Row(
        "CreateContract",
        "rate_card_id",
        lambda s, v: s.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(customer_id=CUSTOMER, rate_card_id=v, starting_at=_next_month_start())
        ),
        "rate card",
    ),
    Row(
        "CreateContract",
        "id",
        lambda s, v: s.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(id=v, customer_id=CUSTOMER, rate_card_id=CARD)
        ),
        None,
    ),
    Row("GetContract", "id", lambda s, v: s.contracts.GetContract(contracts_pb2.GetContractRequest(id=v)), "contract"),
    Row(
        "AddOverride",
        "contract_id",
        lambda s, v: s.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=v, override=_override())),
        "contract",
    ),
    Row(
        "AddOverride",
        "override.id",
        lambda s, v: s.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(contract_id=CONTRACT, override=_override(v))
        ),
        None,
    ),
    Row(
        "GrantCredits",
        "grant.customer_id",
        lambda s, v: s.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=_grant(customer_id=v))),
        "customer",
    ),
    Row(
        "GrantCredits",
        "grant.contract_id",
        lambda s, v: s.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(grant=_grant(customer_id="", contract_id=v))
        ),
        "contract",
    ),
    Row(
        "GrantCredits",
        "grant.id",
        lambda s, v: s.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=_grant(grant_id=v))),
        None,
    ),
    Row(
        "GrantCredits",
        "request_id",
        lambda s, v: s.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(grant=_grant(grant_id=""), request_id=v)
        ),
        None,
    ),
    Row(
        "SetTopUpPolicy",
        "contract_id",
        lambda s, v: s.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=v)),
        "contract",
    ),
    # PricingService
    Row(
        "CreateProduct",
        "product.id",
        lambda s, v: s.pricing.CreateProduct(
            C.CreateProductRequest(product=C.Product(id=v, event_type="x", aggregation=C.COUNT))
        ),
        None,
    ),
    Row("CreateRateCard", "id", lambda s, v: s.pricing.CreateRateCard(C.CreateRateCardRequest(id=v)), None),
    Row("GetRateCard", "id", lambda s, v: s.pricing.GetRateCard(C.GetRateCardRequest(id=v)), "rate card"),
    Row(
        "CreateDraftVersion",
        "rate_card_id",
        lambda s, v: s.pricing.CreateDraftVersion(C.CreateDraftVersionRequest(rate_card_id=v, based_on_version=1)),
        "rate card",
    ),
    Row(
        "CreateDraftVersion",
        "request_id",
        lambda s, v: s.pricing.CreateDraftVersion(
            C.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, request_id=v)
        ),
        None,
    ),
    Row(
        "ValidateVersion",
        "rate_card_id",
        lambda s, v: s.pricing.ValidateVersion(C.ValidateVersionRequest(rate_card_id=v, version=1)),
        "rate card",
    ),
    Row(
        "PublishVersion",
        "rate_card_id",
        lambda s, v: s.pricing.PublishVersion(C.PublishVersionRequest(rate_card_id=v, version=1)),
        "rate card",
    ),
    Row(
        "RollbackRateCard",
        "rate_card_id",
        lambda s, v: s.pricing.RollbackRateCard(C.RollbackRateCardRequest(rate_card_id=v, to_version=1)),
        "rate card",
    ),
    Row(
        "ListVersions",
        "rate_card_id",
        lambda s, v: s.pricing.ListVersions(C.ListVersionsRequest(rate_card_id=v)),
        "rate card",
    ),
    Row(
        "GetVersion",
        "rate_card_id",
        lambda s, v: s.pricing.GetVersion(C.GetVersionRequest(rate_card_id=v, version=1)),
        "rate card",
    ),
    Row(
        "DiffVersions",
        "rate_card_id",
        lambda s, v: s.pricing.DiffVersions(C.DiffVersionsRequest(rate_card_id=v, from_version=1, to_version=1)),
        "rate card",
    ),
    Row("SimulateVersion", "rate_card_id", lambda s, v: s.pricing.SimulateVersion(_simulate(v)), "rate card"),
    Row(
        "SimulateVersion",
        "customer_ids[1]",
        lambda s, v: s.pricing.SimulateVersion(_simulate(CARD, (CUSTOMER, v))),
        "customer",
    ),
    # BalanceService
    Row(
        "GetBalance",
        "customer_id",
        lambda s, v: s.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=v)),
        "customer",
    ),
    Row("Authorize", "customer_id", lambda s, v: s.balance.Authorize(_authorize(v)), "customer"),
    Row("Authorize(reserve)", "customer_id", lambda s, v: s.balance.Authorize(_authorize(v, True)), "customer"),
    Row(
        "ReleaseReservation",
        "customer_id",
        lambda s, v: s.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id=v, reservation_id="r-1")
        ),
        "customer",
    ),
    Row(
        "ReleaseReservation",
        "reservation_id",
        lambda s, v: s.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id=CUSTOMER, reservation_id=v)
        ),
        "reservation",
        ruled=False,
    ),
    Row("WatchBalance", "customer_id", _watch, "customer"),
    # InvoiceService
    Row(
        "PreviewInvoice",
        "customer_id",
        lambda s, v: s.invoices.PreviewInvoice(invoices_pb2.PreviewInvoiceRequest(customer_id=v)),
        "customer",
    ),
    Row(
        "ExplainLineItem",
        "customer_id",
        lambda s, v: s.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(customer_id=v, period_start=_month_start(), line_id="ai_action")
        ),
        "customer",
    ),
    Row(
        "ClosePeriod",
        "customer_id",
        lambda s, v: s.invoices.ClosePeriod(
            invoices_pb2.ClosePeriodRequest(customer_id=v, period_start=_month_start())
        ),
        "customer",
    ),
    Row(
        "ListInvoices",
        "customer_id",
        lambda s, v: s.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(customer_id=v)),
        "customer",
    ),
    Row(
        "GetRevenueReport",
        "customer_id",
        lambda s, v: s.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(
                customer_id=v, period_start=_month_start(), period_end=_next_month_start()
            )
        ),
        "customer",
    ),
    # AlertService
    Row(
        "CreateAlert",
        "customer_id",
        lambda s, v: s.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(customer_id=v, type=alerts_pb2.LOW_BALANCE, threshold="1")
        ),
        "customer",
    ),
    Row(
        "CreateAlert",
        "id",
        lambda s, v: s.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(id=v, customer_id=CUSTOMER, type=alerts_pb2.LOW_BALANCE, threshold="1")
        ),
        None,
    ),
    Row(
        "DeleteAlertRule",
        "id",
        lambda s, v: s.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id=v)),
        "alert rule",
    ),
]
# Lookups where an empty id is "every customer" (a filter), not a missing field.
EMPTY_MEANS_ALL = {("ListInvoices", "customer_id"), ("GetRevenueReport", "customer_id")}
# Fields an empty value leaves to the server (it names the record) or that are optional.
EMPTY_IS_DEFAULT = {
    ("CreateContract", "id"),
    ("AddOverride", "override.id"),
    ("GrantCredits", "grant.id"),
    ("GrantCredits", "request_id"),
    ("CreateDraftVersion", "request_id"),
    ("CreateAlert", "id"),
}
# Fields that may be left empty when another names the record: the violation an empty one gets.
EMPTY_WHY = {
    ("GrantCredits", "grant.customer_id"): ("grant.customer_id", "customer_id or contract_id is required"),
    ("GrantCredits", "grant.contract_id"): ("grant.customer_id", "customer_id or contract_id is required"),
    ("CreateAlert", "customer_id"): ("scope", "customer_id or all is required"),
}


@pytest.fixture
def server(server_factory: ServerFactory) -> ServerProcess:
    return server_factory(demo=True)


@pytest.fixture
def stubs(server: ServerProcess) -> Iterator[Stubs]:
    with grpc.insecure_channel(server.target) as channel:
        yield Stubs(
            contracts_pb2_grpc.ContractServiceStub(channel),
            pricing_pb2_grpc.PricingServiceStub(channel),
            balance_pb2_grpc.BalanceServiceStub(channel),
            invoices_pb2_grpc.InvoiceServiceStub(channel),
            alerts_pb2_grpc.AlertServiceStub(channel),
            usage_pb2_grpc.UsageServiceStub(channel),
        )


def _refusal(row: Row, stubs: Stubs, value: str) -> grpc.RpcError | str:
    """The call's error, or a line saying it was answered."""
    try:
        answer = row.call(stubs, value)
    except grpc.RpcError as error:
        return error
    shown = answer if isinstance(answer, pb_message.Message) else type(answer)
    return f"{row.rpc} {row.field}={value!r}: answered {str(shown)[:120]!r}, not refused"


def _violations(error: grpc.RpcError) -> list[tuple[str, str]]:
    status = rpc_status.from_call(error)
    if status is None:
        return []
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            return [(v.field, v.description) for v in bad_request.field_violations]
    return []


def _check_invalid(row: Row, stubs: Stubs, value: str, why: str) -> str | None:
    error = _refusal(row, stubs, value)
    if isinstance(error, str):
        return error
    found = (error.code(), _violations(error))
    violation = EMPTY_WHY.get((row.rpc, row.field), (row.field, why)) if not value else (row.field, why)
    wanted = (grpc.StatusCode.INVALID_ARGUMENT, [violation])
    if found != wanted:
        return f"{row.rpc} {row.field}={value!r}: {error.code().name} {error.details()!r} {found[1]}, not {wanted}"
    return None


def _check_unknown(row: Row, stubs: Stubs) -> str | None:
    assert row.found is not None
    error = _refusal(row, stubs, UNKNOWN)
    if isinstance(error, str):
        return error
    if error.code() != grpc.StatusCode.NOT_FOUND or f"{row.found} {UNKNOWN!r}" not in (error.details() or ""):
        return f"{row.rpc} {row.field}={UNKNOWN!r}: {error.code().name} {error.details()!r}, not NOT_FOUND naming it"
    return None


def _journal_seq(stubs: Stubs) -> int:
    return int(stubs.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=CUSTOMER), timeout=10).as_of_seq)


def test_every_id_field_is_invalid_argument_when_malformed_and_not_found_when_unknown(
    server: ServerProcess, stubs: Stubs
) -> None:
    seq = _journal_seq(stubs)
    audit = stubs.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000), timeout=10)
    wrong: list[str] = []
    for row in ROWS:
        if row.ruled:
            wrong.append(_check_invalid(row, stubs, MALFORMED, f"{MALFORMED!r} {RULE_WHY}") or "")
        if row.ruled and (row.rpc, row.field) not in EMPTY_MEANS_ALL | EMPTY_IS_DEFAULT:
            wrong.append(_check_invalid(row, stubs, "", "is required") or "")
        if row.found is not None:
            wrong.append(_check_unknown(row, stubs) or "")
    wrong = [line for line in wrong if line]
    assert not wrong, "\n".join(wrong)
    assert _journal_seq(stubs) == seq  # no refusal changed anything
    again = stubs.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000), timeout=10)
    assert list(again.entries) == list(audit.entries)
    assert server.running


# Ends an id may not have: "\n" passed the `$`-anchored match (`$` matches before a final newline too); "\r\n" and a
# NUL are held to the same rule.
LINE_ENDS = ("\n", "\r\n", "\x00")


def test_an_id_ending_in_a_newline_is_invalid_argument_naming_the_field_and_makes_nothing(
    server: ServerProcess, stubs: Stubs
) -> None:
    """Before, the id rule was checked with a `$`-anchored re.match, which also matches before a trailing "\n":
    CreateCustomer(id="probe\n") made a customer beside "probe" (ListCustomers ['acme', 'probe', 'probe\n']), and
    so did every field creating a record (a product, rate card, contract, override, grant, draft's request_id,
    alert rule); a lookup answered NOT_FOUND. Now each is INVALID_ARGUMENT naming the field and the rule, and
    nothing is journaled."""
    stubs.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="probe"), timeout=10)
    seq = _journal_seq(stubs)
    audit = stubs.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000), timeout=10)
    contract = stubs.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT), timeout=10)
    wrong: list[str] = []
    for row in ROWS:
        for ending in LINE_ENDS if row.ruled else ():
            for value in (f"probe{ending}", f"{UNKNOWN}{ending}"):
                wrong.append(_check_invalid(row, stubs, value, f"{value!r} {RULE_WHY}") or "")
    wrong = [line for line in wrong if line]
    assert not wrong, "\n".join(wrong)
    assert _journal_seq(stubs) == seq  # no refusal changed anything
    again = stubs.pricing.GetAuditLog(pricing_pb2.GetAuditLogRequest(page_size=1000), timeout=10)
    assert list(again.entries) == list(audit.entries)
    customers = stubs.contracts.ListCustomers(contracts_pb2.ListCustomersRequest(), timeout=10).customers
    assert [c.id for c in customers] == [CUSTOMER, "probe"]
    products = stubs.pricing.ListProducts(pricing_pb2.ListProductsRequest(), timeout=10).products
    assert [p.id for p in products] == [EVENT_TYPE]
    cards = stubs.pricing.ListRateCards(pricing_pb2.ListRateCardsRequest(), timeout=10).rate_cards
    assert [c.id for c in cards] == [CARD]
    versions = stubs.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD), timeout=10).versions
    assert [v.version for v in versions] == [1]
    assert not stubs.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest(), timeout=10).rules
    assert stubs.contracts.GetContract(contracts_pb2.GetContractRequest(id=CONTRACT), timeout=10) == contract
    assert server.running


def test_a_usage_event_or_stream_request_for_a_customer_id_ending_in_a_newline_names_it_escaped(stubs: Stubs) -> None:
    """The kernel holds an event's customer_id to the rule over the whole text (engine/kernel/src/account.rs is_id):
    "acme\n" names no customer, its message says why. The message quotes the id as Python's repr does (as
    INVALID_ARGUMENT messages quote one, engine/control.py quoted_id): before, the kernel's quote kept the newline
    (or NUL) raw, breaking the message's line."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"t-ends-{index}",
            customer_id=f"{CUSTOMER}{ending}",
            event_type=EVENT_TYPE,
            timestamp_ms=now_ms,
            dimensions={"action": "summarize"},
        )
        for index, ending in enumerate(LINE_ENDS)
    ]
    ack = stubs.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b-ends", events=events), timeout=10)
    assert ack.accepted == 0, ack
    assert [(r.index, r.reason, r.message) for r in ack.rejected] == [
        (index, usage_pb2.UNKNOWN_CUSTOMER, f"customer_id: {CUSTOMER + ending!r} {RULE_WHY}, so no customer has it")
        for index, ending in enumerate(LINE_ENDS)
    ]
    requests = [_authorize(CUSTOMER + ending) for ending in LINE_ENDS]
    answers = list(stubs.balance.AuthorizeStream(iter(requests), timeout=10))
    assert [(a.reason, a.message) for a in answers] == [
        ("INVALID_REQUEST", f"customer_id: {CUSTOMER + ending!r} {RULE_WHY}") for ending in LINE_ENDS
    ]


def test_a_stream_answers_a_malformed_customer_id_in_band_naming_the_field(stubs: Stubs) -> None:
    """AuthorizeStream and AuthorizeBatches answer INVALID_REQUEST naming the field, an unknown customer
    UNKNOWN_CUSTOMER, and the stream goes on."""
    for reserve in (False, True):
        requests = [_authorize(customer_id, reserve) for customer_id in (MALFORMED, UNKNOWN, CUSTOMER)]
        for index, request in enumerate(requests):
            request.request_id = f"q-{reserve}-{index}"
        answers = list(stubs.balance.AuthorizeStream(iter(requests), timeout=10))
        reasons = [(a.reason, a.message.split(":")[0]) for a in answers]
        assert reasons[0] == ("INVALID_REQUEST", "customer_id"), (reserve, answers[0])
        assert answers[1].reason == "UNKNOWN_CUSTOMER", (reserve, answers[1])
        assert answers[2].allowed, (reserve, answers[2])
        batch = balance_pb2.AuthorizeBatch(requests=requests)
        (result,) = stubs.balance.AuthorizeBatches(iter([batch]), timeout=10)
        in_batch = list(result.responses)
        assert (in_batch[0].reason, in_batch[0].message.split(":")[0]) == ("INVALID_REQUEST", "customer_id"), (
            reserve,
            in_batch[0],
        )
        assert in_batch[1].reason == "UNKNOWN_CUSTOMER", (reserve, in_batch[1])
        assert in_batch[2].allowed, (reserve, in_batch[2])


def test_a_usage_event_with_a_malformed_customer_id_is_rejected_in_band_naming_it(stubs: Stubs) -> None:
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    events = [
        usage_pb2.UsageEvent(
            transaction_id=f"t-ids-{index}",
            customer_id=customer_id,
            event_type=EVENT_TYPE,
            timestamp_ms=now_ms,
            dimensions={"action": "summarize"},
        )
        for index, customer_id in enumerate((MALFORMED, UNKNOWN, CUSTOMER))
    ]
    ack = stubs.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id="b-ids", events=events), timeout=10)
    rejected = {r.index: r for r in ack.rejected}
    assert ack.accepted == 1, ack  # the bad events do not sink the batch
    # UNKNOWN_CUSTOMER as before the id rule (the batch digest covers reasons: old journals replay), the message
    # naming the field and the rule.
    assert rejected[0].reason == usage_pb2.UNKNOWN_CUSTOMER, rejected[0]
    assert rejected[0].message == f"customer_id: {MALFORMED!r} {RULE_WHY}, so no customer has it", rejected[0]
    assert rejected[1].reason == usage_pb2.UNKNOWN_CUSTOMER, rejected[1]
    assert UNKNOWN in rejected[1].message, rejected[1]


def test_a_cohort_id_breaking_the_rule_is_named_with_its_index(stubs: Stubs) -> None:
    """A cohort names existing customers (an unknown one is INVALID_ARGUMENT, pricing.proto); one that is not an
    id at all is refused naming its index and the rule, where it was "no such customer"."""

    def publish(customer_id: str) -> grpc.RpcError:
        cohort = pricing_pb2.Cohort(customer_ids=[CUSTOMER, customer_id])
        request = pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, cohort=cohort)
        with pytest.raises(grpc.RpcError) as refusal:
            stubs.pricing.PublishVersion(request, timeout=10)
        return refusal.value

    malformed = publish(MALFORMED)
    assert malformed.code() == grpc.StatusCode.INVALID_ARGUMENT, malformed
    assert _violations(malformed) == [("cohort.customer_ids[1]", f"{MALFORMED!r} {RULE_WHY}")]
    unknown = publish(UNKNOWN)
    assert unknown.code() == grpc.StatusCode.INVALID_ARGUMENT, unknown
    assert _violations(unknown) == [("cohort.customer_ids", f"no such customer: {UNKNOWN!r}")]


def test_a_product_id_in_a_request_is_held_to_the_id_rule(stubs: Stubs) -> None:
    """An override's, a grant's or a draft rate's product_id that is not an id at all is INVALID_ARGUMENT naming
    it and the rule, where it was "unknown product ''" (empty) or accepted into a draft; an unknown one is
    answered as before (INVALID_ARGUMENT "unknown product", a draft's ValidateVersion finding)."""

    def override(product_id: str) -> object:
        request = contracts_pb2.AddOverrideRequest(
            contract_id=CONTRACT, override=contracts_pb2.PriceOverride(product_id=product_id, multiplier="2")
        )
        return stubs.contracts.AddOverride(request, timeout=10)

    def grant(product_id: str) -> object:
        request = contracts_pb2.GrantCreditsRequest(grant=_grant(), request_id="g-products")
        request.grant.id, request.grant.applicable_product_ids[:] = "", [EVENT_TYPE, product_id]
        return stubs.contracts.GrantCredits(request, timeout=10)

    def draft(product_id: str) -> object:
        rate = pricing_pb2.Rate(product_id=product_id, unit=pricing_pb2.UnitPrice(price="1"))
        request = pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, based_on_version=1, upsert_rates=[rate])
        return stubs.pricing.CreateDraftVersion(request, timeout=10)

    cases: list[tuple[Callable[[str], object], str]] = [
        (override, "override.product_id"),
        (grant, "grant.applicable_product_ids[1]"),
        (draft, "upsert_rates[0].product_id"),
    ]
    for call, field in cases:
        for value, why in ((MALFORMED, f"{MALFORMED!r} {RULE_WHY}"), ("", "is required")):
            with pytest.raises(grpc.RpcError) as refusal:
                call(value)
            assert refusal.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, refusal.value)
            assert _violations(refusal.value) == [(field, why)], field
    for call, field in cases[:2]:
        with pytest.raises(grpc.RpcError) as unknown:
            call(UNKNOWN)
        assert _violations(unknown.value) == [(field, f"unknown product {UNKNOWN!r}")], field
    versions = stubs.pricing.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=CARD), timeout=10).versions
    assert [v.version for v in versions] == [1]  # no draft was made
