"""README "State after a restart is the state the journal implies", audited over the wire (tests/serverproc.py).

One scenario mixing the features (two rate cards with versions, a retroactive publish and a rollback, a contract
switch to another card, overrides, grants with expiry and rollover, a top-up policy that fires, alert rules that
fire, holds left open, released and expired by TTL, late, duplicate, conflicting and refused events, ClosePeriod
and CloseDuePeriods, final and draft invoices), then every read captured as serialized protos and compared byte for
byte after (a) `kill -9` (journal replay), (b) a start from a snapshot (`--snapshot-every 1`) and (c) a clean stop.
Retries of the scenario's keyed calls after the restarts answer as documented and change nothing.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf import text_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory, ServerProcess, wait_for

HOUR_MS = 3_600_000
CARD = "rc-card"
CARD2 = "rc-card2"
A, B, C, D = "rc-a", "rc-b", "rc-c", "rc-d"
A1, A2, B1 = "rc-a-1", "rc-a-2", "rc-b-1"
PRODUCTS = [
    pricing_pb2.Product(
        id="api",
        name="api",
        event_type="call",
        aggregation=pricing_pb2.SUM,
        value_key="n",
        pricing_dimensions=["model"],
        unit="tokens",
    ),
    pricing_pb2.Product(id="seats", name="seats", event_type="seat", aggregation=pricing_pb2.MAX, value_key="n"),
]


def month_start_ms(months_back: int) -> int:
    """The UTC start of the month `months_back` before the current one."""
    today = dt.datetime.now(dt.UTC)
    year, month = today.year, today.month - months_back
    while month < 1:
        year, month = year - 1, month + 12
    return int(dt.datetime(year, month, 1, tzinfo=dt.UTC).timestamp() * 1000)


M3, M2, M1, M0 = (month_start_ms(n) for n in (3, 2, 1, 0))  # M0: this month; A1 holds M3..M1, A2 from M1


def rate(product_id: str, price: str, **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, match=match, unit=pricing_pb2.UnitPrice(price=price))


def event(txn: str, customer: str, at_ms: int, n: float, model: str = "a", kind: str = "call") -> usage_pb2.UsageEvent:
    dims = {"model": model} if kind == "call" else {}
    return usage_pb2.UsageEvent(
        transaction_id=txn,
        customer_id=customer,
        event_type=kind,
        timestamp_ms=at_ms,
        dimensions=dims,
        values={"n": n},
    )


def ingest(client: TariffClient, batch_id: str, *events: usage_pb2.UsageEvent) -> usage_pb2.IngestAck:
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id=batch_id, events=events))
    return ack


def hold(customer: str, reservation_id: str, n: float, ttl_s: int) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=f"req-{reservation_id}",
        customer_id=customer,
        event_type="call",
        dimensions={"model": "a"},
        values={"n": n},
        reserve=True,
        reservation_id=reservation_id,
        reservation_ttl=Duration(seconds=ttl_s),
    )


def catalogue(client: TariffClient) -> None:
    for product in PRODUCTS:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    for card, prices in ((CARD, ("1", "2")), (CARD2, ("0.5", "3"))):
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, name=card, pricing_unit="credits"))
        draft = client.pricing.CreateDraftVersion(
            pricing_pb2.CreateDraftVersionRequest(
                rate_card_id=card,
                upsert_rates=[rate("api", prices[0]), rate("seats", prices[1])],
                set_parameters={"base": "1"},
                change_note="first",
                request_id=f"{card}-v1",
            )
        )
        client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id=card, version=draft.version, effective_from=stamp(M3 - 12 * 31 * 24 * HOUR_MS)
            )
        )


def contracts(client: TariffClient) -> None:
    for customer in (A, B):
        client.contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(id=customer, name=customer.upper(), attributes={"segment": "smb"})
        )
    specs = (
        (A1, A, CARD, M3, M1, contracts_pb2.ALLOW),
        (A2, A, CARD2, M1, None, contracts_pb2.ALLOW),
        (B1, B, CARD, M2, None, contracts_pb2.BLOCK),
    )
    for contract_id, customer, card, start, end, policy in specs:
        request = contracts_pb2.CreateContractRequest(
            id=contract_id,
            customer_id=customer,
            rate_card_id=card,
            starting_at=stamp(start),
            overage_policy=policy,
            overage_price="1.50",
            currency="USD",
        )
        if end is not None:
            request.ending_before.CopyFrom(stamp(end))
        client.contracts.CreateContract(request)
    client.contracts.AddOverride(
        contracts_pb2.AddOverrideRequest(
            contract_id=A2,
            override=contracts_pb2.PriceOverride(
                id="half-b", product_id="api", match={"model": "b"}, multiplier="5e-1"
            ),
        )
    )
    client.contracts.AddOverride(
        contracts_pb2.AddOverrideRequest(
            contract_id=A1, override=contracts_pb2.PriceOverride(product_id="api", match={"model": "c"}, price="0.25")
        )
    )


GRANTS = [
    contracts_pb2.Grant(
        id="g-prepaid",
        customer_id=A,
        contract_id=A1,
        kind=contracts_pb2.PREPAID,
        amount="1e2",
        paid_amount="50.00",
        rollover_fraction="0.50",
    ),
    contracts_pb2.Grant(
        id="g-promo",
        customer_id=A,
        contract_id=A1,
        kind=contracts_pb2.PROMOTIONAL,
        amount="30",
        paid_amount="0",
        priority=-1,
        expires_at=stamp(M3 + 10 * 24 * HOUR_MS),
    ),
    contracts_pb2.Grant(
        id="g-a2",
        customer_id=A,
        contract_id=A2,
        kind=contracts_pb2.PREPAID,
        amount="400",
        paid_amount="100",
        applicable_product_ids=["api"],
    ),
    contracts_pb2.Grant(
        id="g-b", customer_id=B, contract_id=B1, kind=contracts_pb2.PREPAID, amount="60", paid_amount="30"
    ),
]
POLICY = contracts_pb2.TopUpPolicy(threshold="2E2", recharge_to="300.0", price_per_credit="0.250", max_per_period=2)
ALERTS = [
    alerts_pb2.CreateAlertRequest(id="low-a", customer_id=A, type=alerts_pb2.LOW_BALANCE, threshold="250.00"),
    alerts_pb2.CreateAlertRequest(id="spend-b", customer_id=B, type=alerts_pb2.SPEND_THRESHOLD, threshold="20"),
    alerts_pb2.CreateAlertRequest(id="empty-b", customer_id=B, type=alerts_pb2.CREDITS_EXHAUSTED),
    alerts_pb2.CreateAlertRequest(id="topups", all=True, type=alerts_pb2.TOP_UP_EXECUTED),
    alerts_pb2.CreateAlertRequest(id="expired", all=True, type=alerts_pb2.RESERVATION_EXPIRED),
    alerts_pb2.CreateAlertRequest(id="gone", all=True, type=alerts_pb2.LOW_BALANCE, threshold="1"),
]


def credits_and_alerts(client: TariffClient) -> None:
    for grant in GRANTS:
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    for alert in ALERTS:
        client.alerts.CreateAlert(alert)
    client.alerts.DeleteAlertRule(alerts_pb2.DeleteAlertRuleRequest(id="gone"))
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=A2, top_up=POLICY))


DAY_MS = 24 * HOUR_MS
BATCH1 = [
    event("a-m3-1", A, M3 + DAY_MS, 20),
    event("a-m3-2", A, M3 + 12 * DAY_MS, 40, "c"),
    event("a-m3-seat", A, M3 + 2 * DAY_MS, 4, kind="seat"),
    event("a-m2-1", A, M2 + DAY_MS + 5, 70, "b"),
    event("b-m2-1", B, M2 + 3 * DAY_MS, 25),
    event("bad-1", A, M2 + DAY_MS, -1),  # refused: a negative value
    event("nobody-1", "rc-nobody", M2 + DAY_MS, 1),  # refused: unknown customer
]
BATCH2 = [
    event("a-m1-1", A, M1 + 2 * DAY_MS, 300),
    event("a-m1-2", A, M1 + 3 * DAY_MS, 200, "b"),
    event("b-m1-1", B, M1 + DAY_MS, 30),
]
BATCH3 = [event("a-m0-1", A, now_ms() - 2 * HOUR_MS, 150), event("a-m0-2", A, now_ms() - HOUR_MS, 80, "b")]
LATE = [event("a-m3-late", A, M3 + 20 * DAY_MS, 5), event("a-m1-late", A, M1 + 5 * DAY_MS, 10)]


HOLDS = [
    hold(A, "open-a", 10, 3600),
    hold(A, "released-a", 20, 3600),
    hold(B, "ttl-b", 1, 1),
    hold(B, "open-b", 1, 3600),
]


def usage_holds_and_closes(client: TariffClient) -> None:
    ingest(client, "b1", *BATCH1)
    client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=A, period_start=stamp(M3)))
    ingest(client, "b2", *BATCH2)
    ingest(client, "b1", *BATCH1)  # the same batch again: duplicates
    conflict = event("a-m3-1", A, M3 + DAY_MS, 21)  # the same id, another content: DUPLICATE_CONFLICT
    ingest(client, "b-conflict", conflict)
    ingest(client, "b3", *BATCH3)
    ingest(client, "late", *LATE)
    client.balance.Authorize(HOLDS[0])
    client.balance.Authorize(HOLDS[1])
    client.balance.ReleaseReservation(balance_pb2.ReleaseReservationRequest(customer_id=A, reservation_id="released-a"))
    client.balance.Authorize(HOLDS[2])  # expires in 1 s
    client.balance.Authorize(HOLDS[3])
    client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())


DRAFT_V2 = pricing_pb2.CreateDraftVersionRequest(
    rate_card_id=CARD2,
    based_on_version=1,
    upsert_rates=[rate("api", "0.75"), rate("api", "0.6", model="b")],
    set_parameters={"base": "2"},
    change_note="retro",
    request_id="v2",
)


def versions(client: TariffClient) -> None:
    """CARD2: v2 with a new price for api published from the start of this month (re-rating its usage), v3 a
    draft left unpublished, then a rollback to v1 from one hour later."""
    v2 = client.pricing.CreateDraftVersion(DRAFT_V2)
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD2, version=v2.version, effective_from=stamp(M0))
    )
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD2,
            based_on_version=2,
            remove_rates=[pricing_pb2.RateKey(product_id="seats")],
            request_id="v3",
        )
    )
    client.pricing.RollbackRateCard(
        pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD2, to_version=1, effective_from=stamp(M0 + HOUR_MS))
    )
    v5 = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=1, upsert_rates=[rate("api", "1.25")], request_id="card-v2"
        )
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=v5.version, effective_from=stamp(M1))
    )
    cohort = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=2, upsert_rates=[rate("api", "1.1")], request_id="card-v3"
        )
    )
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id=CARD,
            version=cohort.version,
            effective_from=stamp(M0 + 2 * HOUR_MS),
            cohort=pricing_pb2.Cohort(attributes={"segment": "smb"}),
        )
    )


def late_customer(client: TariffClient) -> None:
    """rc-c, created after the cohort's publish, joins it by its attributes; rc-d does not."""
    for customer, segment in ((C, "smb"), (D, "ent")):
        client.contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(id=customer, attributes={"segment": segment})
        )
        client.contracts.CreateContract(
            contracts_pb2.CreateContractRequest(
                id=f"{customer}-1", customer_id=customer, rate_card_id=CARD, starting_at=stamp(M0)
            )
        )
        ingest(client, f"{customer}-usage", event(f"{customer}-1", customer, now_ms() - HOUR_MS, 10))


def scenario(client: TariffClient) -> None:
    catalogue(client)
    contracts(client)
    credits_and_alerts(client)
    usage_holds_and_closes(client)
    versions(client)
    late_customer(client)
    ingest(
        client,
        "after-versions",
        event("b-m0-1", B, now_ms() - HOUR_MS, 9),
        event("a-m0-3", A, now_ms() - HOUR_MS, 5, "c"),
    )


Reads = dict[str, bytes]


def put(reads: Reads, name: str, call: Callable[[Any], Message], request: Any) -> None:
    """`call(request)`'s serialized answer, or its refusal (code and message), deterministically serialized."""
    try:
        reads[name] = call(request).SerializeToString(deterministic=True)
    except TariffError as refused:
        reads[name] = f"refused {refused.code} {refused.details}".encode()


def watched_alerts(client: TariffClient, count: int | None) -> list[alerts_pb2.Alert]:
    """The alerts WatchAlerts sends from the oldest kept: `count` of them, or, when None, those sent in 2 s."""
    alerts: list[alerts_pb2.Alert] = []
    stream = client.alerts.WatchAlerts(
        alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=2.0 if count is None else 20.0
    )
    try:
        for alert in stream:
            alerts.append(alert)
            if count is not None and len(alerts) >= count:
                break
    except (grpc.RpcError, TariffError):
        pass
    stream.cancel()
    return alerts


def every_read(client: TariffClient, alerts: int | None = None) -> Reads:
    """Every read of the scenario's records (paged lists in one page), keyed by what was asked."""
    reads: Reads = {}
    c, p, i = client.contracts, client.pricing, client.invoices
    put(reads, "ListProducts", p.ListProducts, pricing_pb2.ListProductsRequest())
    put(reads, "ListRateCards", p.ListRateCards, pricing_pb2.ListRateCardsRequest())
    put(reads, "ListCustomers", c.ListCustomers, contracts_pb2.ListCustomersRequest())
    put(reads, "ListAlertRules", client.alerts.ListAlertRules, alerts_pb2.ListAlertRulesRequest())
    put(reads, "GetAuditLog", p.GetAuditLog, pricing_pb2.GetAuditLogRequest(page_size=1000))
    put(reads, "ListInvoices", i.ListInvoices, invoices_pb2.ListInvoicesRequest(page_size=1000))
    span = invoices_pb2.GetRevenueReportRequest(period_start=stamp(M3 - DAY_MS), period_end=stamp(M0 + 40 * DAY_MS))
    put(reads, "GetRevenueReport", i.GetRevenueReport, span)
    for card in (CARD, CARD2):
        put(reads, f"GetRateCard {card}", p.GetRateCard, pricing_pb2.GetRateCardRequest(id=card))
        put(reads, f"ListVersions {card}", p.ListVersions, pricing_pb2.ListVersionsRequest(rate_card_id=card))
        numbers = [v.version for v in p.ListVersions(pricing_pb2.ListVersionsRequest(rate_card_id=card)).versions]
        for n in numbers:
            put(
                reads,
                f"GetVersion {card} {n}",
                p.GetVersion,
                pricing_pb2.GetVersionRequest(rate_card_id=card, version=n),
            )
            for m in numbers:
                diff = pricing_pb2.DiffVersionsRequest(rate_card_id=card, from_version=n, to_version=m)
                put(reads, f"DiffVersions {card} {n} {m}", p.DiffVersions, diff)
        for at in (M3, M1, M0, M0 + HOUR_MS, M0 + 2 * HOUR_MS):
            put(
                reads,
                f"GetVersion {card} at {at}",
                p.GetVersion,
                pricing_pb2.GetVersionRequest(rate_card_id=card, at=stamp(at)),
            )
    for customer in (A, B, C, D):
        put(reads, f"GetCustomer {customer}", c.GetCustomer, contracts_pb2.GetCustomerRequest(id=customer))
        put(
            reads,
            f"GetBalance {customer}",
            client.balance.GetBalance,
            balance_pb2.GetBalanceRequest(customer_id=customer),
        )
        for start in (M3, M2, M1, M0):
            invoices(reads, client, customer, start)
    for contract in (A1, A2, B1, f"{C}-1", f"{D}-1"):
        put(reads, f"GetContract {contract}", c.GetContract, contracts_pb2.GetContractRequest(id=contract))
    for invoice in i.ListInvoices(invoices_pb2.ListInvoicesRequest(page_size=1000)).invoices:
        number = invoice.invoice_number
        put(reads, f"GetInvoice {number}", i.GetInvoice, invoices_pb2.GetInvoiceRequest(invoice_number=number))
    for index, alert in enumerate(watched_alerts(client, alerts)):
        reads[f"Alert {index}"] = alert.SerializeToString(deterministic=True)
    paged_and_filtered(reads, client)
    return reads


def paged(reads: Reads, name: str, call: Callable[[Any], Any], request: Any, token: str) -> None:
    """Every page of a paged list, `request` given the previous page's token in its field `token` each time."""
    for page in range(200):
        put(reads, f"{name} page {page}", call, request)
        answer = reads[f"{name} page {page}"]
        if answer.startswith(b"refused"):
            return
        following = getattr(call(request), "next_page_token" if token == "page_token" else "next_after_seq")
        if not following:
            return
        setattr(request, token, following)


def paged_and_filtered(reads: Reads, client: TariffClient) -> None:
    """The lists a page of 1 and 2 at a time, and the filters of the invoices, the audit log and revenue."""
    c, p, i = client.contracts, client.pricing, client.invoices
    for size in (1, 2):
        paged(
            reads,
            f"ListCustomers {size}",
            c.ListCustomers,
            contracts_pb2.ListCustomersRequest(page_size=size),
            "page_token",
        )
        paged(
            reads,
            f"ListRateCards {size}",
            p.ListRateCards,
            pricing_pb2.ListRateCardsRequest(page_size=size),
            "page_token",
        )
        rules = alerts_pb2.ListAlertRulesRequest(page_size=size)
        paged(reads, f"ListAlertRules {size}", client.alerts.ListAlertRules, rules, "page_token")
        paged(
            reads,
            f"ListInvoices {size}",
            i.ListInvoices,
            invoices_pb2.ListInvoicesRequest(page_size=size),
            "page_token",
        )
        audit = pricing_pb2.GetAuditLogRequest(page_size=size * 3)
        paged(reads, f"GetAuditLog {size}", p.GetAuditLog, audit, "after_seq")
    for customer in (A, B, C):
        for status in (invoices_pb2.INVOICE_DRAFT, invoices_pb2.INVOICE_FINAL):
            listed = invoices_pb2.ListInvoicesRequest(customer_id=customer, status=status, period_start_from=stamp(M2))
            put(reads, f"ListInvoices {customer} {status}", i.ListInvoices, listed)
        span = invoices_pb2.GetRevenueReportRequest(customer_id=customer, period_start=stamp(M2), period_end=stamp(M0))
        put(reads, f"GetRevenueReport {customer}", i.GetRevenueReport, span)
    for target, action in (("rate_card/", ""), ("customer/", ""), ("", "GrantCredits"), ("contract/rc-a", "")):
        audit = pricing_pb2.GetAuditLogRequest(target=target, action=action, actor="anonymous", page_size=1000)
        put(reads, f"GetAuditLog {target} {action}", p.GetAuditLog, audit)
    span_ms = now_ms() - DAY_MS
    timed = pricing_pb2.GetAuditLogRequest(start_time=stamp(span_ms), end_time=stamp(span_ms + 2 * DAY_MS))
    put(reads, "GetAuditLog timed", p.GetAuditLog, timed)


def invoices(reads: Reads, client: TariffClient, customer: str, start_ms: int) -> None:
    """The customer's invoice for the period at `start_ms` (PreviewInvoice) and each of its lines explained."""
    name = f"PreviewInvoice {customer} {start_ms}"
    put(
        reads,
        name,
        client.invoices.PreviewInvoice,
        invoices_pb2.PreviewInvoiceRequest(customer_id=customer, period_start=stamp(start_ms)),
    )
    if reads[name].startswith(b"refused"):
        return
    invoice = invoices_pb2.Invoice.FromString(reads[name])
    for line in invoice.lines:
        request = invoices_pb2.ExplainLineItemRequest(
            customer_id=customer, period_start=invoice.period_start, line_id=line.line_id, page_size=1000
        )
        put(reads, f"Explain {customer} {start_ms} {line.line_id}", client.invoices.ExplainLineItem, request)


def differences(before: Reads, after: Reads) -> list[str]:
    found = [f"{name}: missing after" for name in before if name not in after]
    found += [f"{name}: new after" for name in after if name not in before]
    for name in before:
        if name in after and before[name] != after[name]:
            found.append(f"{name}:\n  before {before[name]!r}\n  after  {after[name]!r}")
    return found


def alert_count(reads: Reads) -> int:
    return sum(1 for name in reads if name.startswith("Alert "))


_SNAPSHOT_LINE = re.compile(r"snapshot seq=(\d+) ")


def restarted(server: ServerProcess, how: str, alerts: int) -> tuple[Reads, Reads]:
    """The reads, then the retries' answers, after `how` ("kill9" or "stop") and a start."""
    if how == "kill9":
        server.kill9()
    else:
        server.terminate()
    server.restart()
    with server.client() as client:
        return every_read(client, alerts), retries(client)


def scenario_read(client: TariffClient) -> tuple[Reads, Reads]:
    """The scenario run, a hold's TTL let run out and one more batch taken: every read, and every retry's answer
    (which changes nothing: read again after them, every read is the same)."""
    scenario(client)
    assert wait_for(lambda: client.get_balance(B).credits_held == "1", 10)  # ttl-b expired, open-b held
    ingest(client, "after-ttl", event("b-m0-2", B, now_ms() - HOUR_MS, 2))
    before = every_read(client)
    retried = retries(client)
    assert differences(before, every_read(client, alert_count(before))) == []  # the retries changed nothing
    return before, retried


def test_every_read_and_retry_is_the_same_after_kill9_snapshot_load_and_clean_stop(
    server_factory: ServerFactory,
) -> None:
    server: ServerProcess = server_factory()
    with server.client() as client:
        before, retried = scenario_read(client)
    count = alert_count(before)
    for phase in ("kill9 (journal replay)", "kill9 after retries"):
        reads, answers = restarted(server, "kill9", count)
        assert differences(before, reads) == [], phase
        assert differences(retried, answers) == [], phase
    server.kill9()
    server.extra_args = (*server.extra_args, "--snapshot-every", "1", "--snapshot-journal-factor", "0")
    server.restart()
    with server.client() as client:  # one change more (a customer joining the cohort), then a snapshot
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rc-z", attributes={"segment": "smb"}))
        assert wait_for(lambda: bool(_SNAPSHOT_LINE.search(server.log_path.read_text(errors="replace"))), 15)
        with_z, retried_z = every_read(client, count), retries(client)
    for phase, how in (("snapshot load", "kill9"), ("clean stop", "stop")):
        reads, answers = restarted(server, how, count)
        assert differences(with_z, reads) == [], phase
        assert differences(retried_z, answers) == [], phase


def retries(client: TariffClient) -> Reads:
    """Every keyed call of the scenario sent again, each answer (or refusal) serialized: a retry answers what the
    first call made as it is now, so with no change between them two rounds answer byte for byte alike."""
    answers: Reads = {}
    c, p = client.contracts, client.pricing
    for customer in (A, B):
        again = contracts_pb2.CreateCustomerRequest(id=customer, name=customer.upper(), attributes={"segment": "smb"})
        put(answers, f"CreateCustomer {customer}", c.CreateCustomer, again)
    for grant in GRANTS:
        put(answers, f"GrantCredits {grant.id}", c.GrantCredits, contracts_pb2.GrantCreditsRequest(grant=grant))
    for alert in ALERTS:  # "gone" was deleted: ALREADY_EXISTS
        put(answers, f"CreateAlert {alert.id}", client.alerts.CreateAlert, alert)
    put(answers, "DeleteAlertRule gone", client.alerts.DeleteAlertRule, alerts_pb2.DeleteAlertRuleRequest(id="gone"))
    put(answers, "SetTopUpPolicy", c.SetTopUpPolicy, contracts_pb2.SetTopUpPolicyRequest(contract_id=A2, top_up=POLICY))
    for batch_id, batch in (("b1", BATCH1), ("b2", BATCH2), ("b3", BATCH3), ("late", LATE)):
        put(
            answers,
            f"batch {batch_id}",
            client.usage.IngestUsageBatch,
            usage_pb2.UsageBatch(batch_id=batch_id, events=batch),
        )
    for request in HOLDS:
        put(answers, f"Authorize {request.reservation_id}", client.balance.Authorize, request)
    released = balance_pb2.ReleaseReservationRequest(customer_id=A, reservation_id="released-a")
    put(answers, "Release released-a", client.balance.ReleaseReservation, released)
    closed = invoices_pb2.ClosePeriodRequest(customer_id=A, period_start=stamp(M3))
    put(answers, "ClosePeriod", client.invoices.ClosePeriod, closed)
    put(answers, "CloseDuePeriods", client.invoices.CloseDuePeriods, invoices_pb2.CloseDuePeriodsRequest())
    put(answers, "Draft v2", p.CreateDraftVersion, DRAFT_V2)
    published = pricing_pb2.PublishVersionRequest(rate_card_id=CARD2, version=2, effective_from=stamp(M0))
    put(answers, "Publish v2", p.PublishVersion, published)
    rollback = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD2, to_version=1, effective_from=stamp(M0 + HOUR_MS))
    put(answers, "Rollback", p.RollbackRateCard, rollback)
    return answers


# Hidden state (distinct values seen, the latest value, tiers reached, flat fees charged, top-ups bought, holds, the
# alert rules' last evaluation) shows only in what later usage does. Four identical customers (clones) are set up
# alike; each is probed (the same calls) after another kind of start: before any restart, after `kill -9`, after a
# snapshot load and after a clean stop. Their answers, ids and server times aside, must be the same.
PROBE_CARD = "rc-probe"
PROBE_PRODUCTS = [
    pricing_pb2.Product(
        id="uniq", name="uniq", event_type="login", aggregation=pricing_pb2.UNIQUE_COUNT, value_key="user"
    ),
    pricing_pb2.Product(id="gauge", name="gauge", event_type="gauge", aggregation=pricing_pb2.LATEST, value_key="n"),
    pricing_pb2.Product(
        id="pings", name="pings", event_type="ping", aggregation=pricing_pb2.COUNT, pricing_dimensions=["region"]
    ),
    pricing_pb2.Product(id="tok", name="tok", event_type="tok", aggregation=pricing_pb2.SUM, value_key="n"),
    pricing_pb2.Product(id="pkg", name="pkg", event_type="pkg", aggregation=pricing_pb2.SUM, value_key="n"),
    pricing_pb2.Product(id="seat", name="seat", event_type="seat2", aggregation=pricing_pb2.MAX, value_key="n"),
]
PROBE_RATES = [
    pricing_pb2.Rate(product_id="uniq", unit=pricing_pb2.UnitPrice(price="base * 2")),
    pricing_pb2.Rate(product_id="gauge", unit=pricing_pb2.UnitPrice(price="0.5")),
    pricing_pb2.Rate(product_id="pings", unit=pricing_pb2.UnitPrice(price="0.1")),
    pricing_pb2.Rate(product_id="pings", match={"region": "eu"}, unit=pricing_pb2.UnitPrice(price="0.2")),
    pricing_pb2.Rate(
        product_id="tok",
        tiered=pricing_pb2.TieredPrice(
            mode=pricing_pb2.GRADUATED,
            tiers=[
                pricing_pb2.Tier(up_to="100", unit_price="0.1"),
                pricing_pb2.Tier(unit_price="0.05", flat_price="1"),
            ],
        ),
    ),
    pricing_pb2.Rate(product_id="pkg", package=pricing_pb2.PackagePrice(package_size="10", package_price="3")),
    pricing_pb2.Rate(product_id="seat", flat=pricing_pb2.FlatPrice(price="5")),
]
CLONES = ("k0", "k1", "k2", "k3")


def probe_event(txn: str, clone: str, kind: str, at_ms: int, **fields: Any) -> usage_pb2.UsageEvent:
    values = {"n": float(fields.pop("n"))} if "n" in fields else {}
    return usage_pb2.UsageEvent(
        transaction_id=f"{clone}-{txn}",
        customer_id=clone,
        event_type=kind,
        timestamp_ms=at_ms,
        dimensions=fields,
        values=values,
    )


def probe_catalogue(client: TariffClient) -> None:
    for product in PROBE_PRODUCTS:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=PROBE_CARD, pricing_unit="credits"))
    draft = client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=PROBE_CARD, upsert_rates=PROBE_RATES, set_parameters={"base": "0.25"}
        )
    )
    publish = pricing_pb2.PublishVersionRequest(
        rate_card_id=PROBE_CARD, version=draft.version, effective_from=stamp(M2)
    )
    client.pricing.PublishVersion(publish)


def probe_hold(clone: str, name: str, n: float) -> balance_pb2.AuthorizeRequest:
    return balance_pb2.AuthorizeRequest(
        request_id=f"{clone}-{name}",
        customer_id=clone,
        event_type="tok",
        values={"n": n},
        reserve=True,
        reservation_id=f"{clone}-{name}",
        reservation_ttl=Duration(seconds=3600),
    )


def clone_setup(client: TariffClient, clone: str) -> None:
    """The clone's customer, contract (from last month), grants, policy, rules, usage and an open hold."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=clone))
    contract = contracts_pb2.CreateContractRequest(
        id=f"{clone}-c", customer_id=clone, rate_card_id=PROBE_CARD, starting_at=stamp(M1), overage_price="2"
    )
    client.contracts.CreateContract(contract)
    # The promotional grant first: the rollover the prepaid one makes at this month's start (past already) is
    # then recorded after both, whenever the clock records it, alike for every clone.
    for grant in (
        contracts_pb2.Grant(
            id=f"{clone}-p",
            contract_id=f"{clone}-c",
            kind=contracts_pb2.PROMOTIONAL,
            amount="8",
            paid_amount="0",
            priority=-1,
            applicable_product_ids=["pings", "uniq"],
        ),
        contracts_pb2.Grant(
            id=f"{clone}-g",
            contract_id=f"{clone}-c",
            kind=contracts_pb2.PREPAID,
            amount="60",
            paid_amount="30",
            rollover_fraction="0.5",
        ),
    ):
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    policy = contracts_pb2.TopUpPolicy(threshold="20", recharge_to="45", price_per_credit="0.5", max_per_period=2)
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{clone}-c", top_up=policy))
    for kind, threshold in (
        (alerts_pb2.LOW_BALANCE, "30"),
        (alerts_pb2.SPEND_THRESHOLD, "15"),
        (alerts_pb2.CREDITS_EXHAUSTED, ""),
    ):
        rule = alerts_pb2.CreateAlertRequest(id=f"{clone}-{kind}", customer_id=clone, type=kind, threshold=threshold)
        client.alerts.CreateAlert(rule)
    old, now = M1 + DAY_MS, M0 + 60_000
    ingest(
        client,
        f"{clone}-setup",
        *[
            probe_event("u1-old", clone, "login", old, user="u1"),
            probe_event("tok-old", clone, "tok", old, n=40),
            probe_event("u1", clone, "login", now, user="u1"),
            probe_event("u2", clone, "login", now + 1, user="u2"),
            probe_event("g1", clone, "gauge", now + 10, n=8),
            probe_event("p1", clone, "ping", now + 2, region="eu"),
            probe_event("p2", clone, "ping", now + 3, region="us"),
            probe_event("t1", clone, "tok", now + 4, n=90),
            probe_event("pk1", clone, "pkg", now + 5, n=4),
            probe_event("s1", clone, "seat2", now + 6, n=3),
        ],
    )
    client.balance.Authorize(probe_hold(clone, "open", 30))
    client.balance.Authorize(probe_hold(clone, "released", 5))
    released = balance_pb2.ReleaseReservationRequest(customer_id=clone, reservation_id=f"{clone}-released")
    client.balance.ReleaseReservation(released)


_MS_IN_TEXT = re.compile(r"(?<=released at )\d+|(?<=settled at )\d+|(?<=expired at )\d+")
VOLATILE = {"created_at", "time", "closed_at", "published_at", "as_of_seq", "journal_seq", "seq"}


def scrubbed(message: Message) -> Message:
    """A copy without the fields that differ between clones by when the server did things (times, seqs)."""
    copy = type(message)()
    copy.CopyFrom(message)
    _scrub(copy)
    return copy


def _scrub(message: Message) -> None:
    for field, value in message.ListFields():
        if field.name in VOLATILE:
            message.ClearField(field.name)
        elif field.name == "details":
            value.pop("at_ms", None)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in [value] if isinstance(value, Message) else value:
                _scrub(item)


def probe(client: TariffClient, clone: str, alerts: int | None = None) -> tuple[list[str], int]:
    """The same calls on one clone: their answers as text, the clone's id and server times left out, and how many
    alerts the server then holds (`alerts`: how many it should, read in full; None: those sent within 2 s)."""
    answers: list[Message] = []
    now = M0 + 60_000
    answers.append(
        ingest(
            client,
            f"{clone}-probe",
            *[
                probe_event("u1-again", clone, "login", now + 20, user="u1"),  # seen: adds nothing
                probe_event("u3", clone, "login", now + 21, user="u3"),
                probe_event("g0", clone, "gauge", now + 5, n=100),  # older than g1: does not move the gauge
                probe_event("g2", clone, "gauge", now + 22, n=11),
                probe_event("p3", clone, "ping", now + 23, region="eu"),
                probe_event("t2", clone, "tok", now + 24, n=30),  # crosses into the second tier: its flat fee
                probe_event("pk2", clone, "pkg", now + 25, n=7),  # a second package
                probe_event("s2", clone, "seat2", now + 26, n=2),  # the flat fee is charged once
                probe_event("t1", clone, "tok", now + 4, n=90),  # a duplicate
                probe_event("p2", clone, "ping", now + 3, region="eu"),  # a conflict
            ],
        )
    )
    answers.append(client.balance.Authorize(probe_hold(clone, "open", 30)))
    answers.append(client.balance.Authorize(probe_hold(clone, "released", 5)))
    answers.append(client.balance.Authorize(probe_hold(clone, "big", 40)))
    answers.append(ingest(client, f"{clone}-more", probe_event("t3", clone, "tok", now + 30, n=200)))
    answers.append(client.balance.GetBalance(balance_pb2.GetBalanceRequest(customer_id=clone)))
    for start in (M1, M0):
        invoice = client.invoices.PreviewInvoice(
            invoices_pb2.PreviewInvoiceRequest(customer_id=clone, period_start=stamp(start))
        )
        answers.append(invoice)
        for line in invoice.lines:
            request = invoices_pb2.ExplainLineItemRequest(
                customer_id=clone, period_start=invoice.period_start, line_id=line.line_id, page_size=1000
            )
            answers.append(client.invoices.ExplainLineItem(request))
    every_alert = watched_alerts(client, alerts)
    answers += [alert for alert in every_alert if alert.customer_id == clone]
    shown = [
        f"{type(answer).__name__} {text_format.MessageToString(scrubbed(answer), as_one_line=True)}"
        for answer in answers
    ]
    return [_MS_IN_TEXT.sub("<ms>", re.sub(rf"\b{clone}\b", "K", text)) for text in shown], len(every_alert)


def unlike(phase: str, control: list[str], probed: list[str]) -> str:
    """The first answer that differs from the control's, both in full."""
    for index, (expected, found) in enumerate(zip(control, probed, strict=False)):
        if expected != found:
            return f"{phase}: answer {index}\n  control {expected}\n  probed  {found}"
    return f"{phase}: {len(control)} answers, then {len(probed)}"


def test_hidden_state_acts_alike_after_kill9_snapshot_load_and_clean_stop(server_factory: ServerFactory) -> None:
    server: ServerProcess = server_factory()
    with server.client() as client:
        probe_catalogue(client)
        for clone in CLONES:
            clone_setup(client, clone)
        before = len(watched_alerts(client, None))
        control, total = probe(client, "k0")
    fired = total - before  # by the probe
    server.kill9()
    server.restart()
    with server.client() as client:
        probed, total = probe(client, "k1", total + fired)
        assert probed == control, unlike("after kill -9 (journal replay)", control, probed)
    server.kill9()
    server.extra_args = (*server.extra_args, "--snapshot-every", "1", "--snapshot-journal-factor", "0")
    server.restart()
    with server.client() as client:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="rc-zz"))
        assert wait_for(lambda: bool(_SNAPSHOT_LINE.search(server.log_path.read_text(errors="replace"))), 15)
    server.kill9()
    server.restart()
    with server.client() as client:
        probed, total = probe(client, "k2", total + fired)
        assert probed == control, unlike("after a snapshot load", control, probed)
    server.terminate()
    server.restart()
    with server.client() as client:
        probed, total = probe(client, "k3", total + fired)
        assert probed == control, unlike("after a clean stop", control, probed)


def test_a_resend_of_an_accepted_event_is_a_duplicate_after_a_start_with_a_smaller_future_skew(
    server_factory: ServerFactory,
) -> None:
    """README: an identical resend is a duplicate, "Both answers are the same after a restart", and
    `--future-skew-s` may change between starts. An event dated 5 minutes ahead, accepted under a skew of 10
    minutes, resent after a start with a skew of 0: still a duplicate (it was counted), not TIMESTAMP_OUT_OF_RANGE,
    which would tell an at-least-once sender that the event it resent was never counted. A batch mixing such a
    resend with a new event is journaled and replays alike."""
    server = server_factory(extra_args=["--future-skew-s", "600"])
    with server.client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="skew"))
        contract = contracts_pb2.CreateContractRequest(
            id="skew-1", customer_id="skew", rate_card_id=CARD, starting_at=stamp(M1)
        )
        client.contracts.CreateContract(contract)
        batch = [event("ahead", "skew", now_ms() + 300_000, 5), event("now", "skew", now_ms() - 1_000, 1)]
        assert ingest(client, "sent", *batch).accepted == 2
        resent = ingest(client, "sent", *batch)
        assert (resent.duplicates, list(resent.rejected)) == (2, [])
        balance = client.get_balance("skew")
    server.kill9()
    server.extra_args = ("--future-skew-s", "0")
    server.restart()
    with server.client() as client:
        resent = ingest(client, "sent", *batch)
        assert (resent.accepted, resent.duplicates, list(resent.rejected)) == (0, 2, []), resent
        mixed = ingest(client, "mixed", batch[0], event("later", "skew", now_ms() - 1_000, 2))
        assert (mixed.accepted, mixed.duplicates, list(mixed.rejected)) == (1, 1, []), mixed
        after = client.get_balance("skew")
    assert after.period_charges == "8" and balance.period_charges == "6"  # 5 + 1, then 2 more: at 1 a unit
    server.kill9()
    server.restart()  # the mixed batch replays under its own rule
    with server.client() as client:
        assert client.get_balance("skew") == after


def test_a_hold_retried_without_a_ttl_after_a_start_with_a_lower_ttl_limit_is_already_held(
    server_factory: ServerFactory,
) -> None:
    """README: a request naming no TTL is never refused for one, and a retry answers what the first call made,
    also after a restart. A hold asked with no TTL (60 s) is retried, identical, after a start with
    `--reservation-ttl-max-s 30`: it should be "already held"; it is ALREADY_EXISTS "used by a different request"."""
    server = server_factory()
    with server.client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="ttl"))
        contract = contracts_pb2.CreateContractRequest(
            id="ttl-1", customer_id="ttl", rate_card_id=CARD, starting_at=stamp(M1)
        )
        client.contracts.CreateContract(contract)
        request = hold("ttl", "no-ttl", 3, 60)
        request.ClearField("reservation_ttl")
        first = client.balance.Authorize(request)
    server.kill9()
    server.extra_args = ("--reservation-ttl-max-s", "30")
    server.restart()
    with server.client() as client:
        again = client.balance.Authorize(request)
    assert (again.reservation_id, again.estimated_cost) == (first.reservation_id, first.estimated_cost)
    assert again.message.startswith("already held")
