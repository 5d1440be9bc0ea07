"""DESIGN "State = snapshot + replay(journal); nothing acknowledged is lost; replay gives identical state", audited
over the wire for the journaled commands of the newest server-set rules (engine/commands.py SERVER_SET_FIELDS):
a publish with the very same prices (`rerate_keeps_unchanged_draws`: draws kept as rated) and one changing them, a
rollback and a cohort publish, LATEST products whose falling value refunds netted with the same event's charges
(`refunds_netted`, on usage records, Reserve and ReserveBatch), a draft left unpublished (`drafts_bounded`), and
CloseDuePeriods closing more periods than one slice (server/closer.py `close_due_slice`, 256 a command).
tests/test_audit_recovery_wire.py covers the older rules; this scenario's customers are its own.

Every read is captured as serialized bytes, then compared byte for byte after (1) `kill -9` with no snapshot
taken (the whole journal replayed), (2) a start that takes a snapshot, more commands after it, and `kill -9`
(snapshot + the journal's tail), and (3) more usage and commands on the recovered server, then `kill -9` again.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator

import grpc
import pytest
from google.protobuf import text_format
from google.protobuf.duration_pb2 import Duration
from google.protobuf.message import Message
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerProcess, wait_for, wait_for_log
from tests.test_audit_recovery_wire import (
    DAY_MS,
    HOUR_MS,
    Reads,
    month_start_ms,
    paged,
    put,
    scrubbed,
    watched_alerts,
)

M3, M2, M1, M0 = (month_start_ms(n) for n in (3, 2, 1, 0))
CARD, BULK_CARD = "q-card", "q-bulk"
QA, QB, QG = "q-a", "q-b", "q-g"
M12 = month_start_ms(12)
BULK = [f"q-n{n:02d}" for n in range(22)]  # 22 customers x 12 due periods: 264, past one slice of 256
BULK2 = [f"q-m{n:02d}" for n in range(22)]  # closed by the close-grace driver after a restart: 264 periods
_SNAPSHOT_LINE = re.compile(r"snapshot seq=(\d+) ")

PRODUCTS = [
    pricing_pb2.Product(
        id="call", name="call", event_type="call", aggregation=pricing_pb2.SUM, value_key="n", pricing_dimensions=["m"]
    ),
    pricing_pb2.Product(id="seat", name="seat", event_type="seat", aggregation=pricing_pb2.MAX, value_key="n"),
    pricing_pb2.Product(id="tok", name="tok", event_type="tok", aggregation=pricing_pb2.SUM, value_key="n"),
    pricing_pb2.Product(id="pkg", name="pkg", event_type="pkg", aggregation=pricing_pb2.SUM, value_key="n"),
    pricing_pb2.Product(
        id="login", name="login", event_type="login", aggregation=pricing_pb2.UNIQUE_COUNT, value_key="u"
    ),
    pricing_pb2.Product(id="mix-gauge", name="gauge", event_type="mix", aggregation=pricing_pb2.LATEST, value_key="g"),
    pricing_pb2.Product(id="mix-sum", name="sum", event_type="mix", aggregation=pricing_pb2.SUM, value_key="s"),
]


def unit(product_id: str, price: str, **match: str) -> pricing_pb2.Rate:
    return pricing_pb2.Rate(product_id=product_id, match=match, unit=pricing_pb2.UnitPrice(price=price))


RATES = [
    unit("call", "1"),
    unit("call", "2", m="b"),
    pricing_pb2.Rate(product_id="seat", flat=pricing_pb2.FlatPrice(price="5")),
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
    unit("login", "base * 2"),
    unit("mix-gauge", "1"),
    unit("mix-sum", "1"),
]


def ev(
    txn: str, customer: str, kind: str, at_ms: int, reservation: str = "", **values: float | str
) -> usage_pb2.UsageEvent:
    dims = {k: v for k, v in values.items() if isinstance(v, str)}
    nums = {k: float(v) for k, v in values.items() if not isinstance(v, str)}
    return usage_pb2.UsageEvent(
        transaction_id=txn,
        customer_id=customer,
        event_type=kind,
        timestamp_ms=at_ms,
        dimensions=dims,
        values=nums,
        reservation_id=reservation,
    )


def ingest(client: TariffClient, batch_id: str, *events: usage_pb2.UsageEvent) -> usage_pb2.IngestAck:
    ack: usage_pb2.IngestAck = client.usage.IngestUsageBatch(usage_pb2.UsageBatch(batch_id=batch_id, events=events))
    return ack


def hold(customer: str, rid: str, kind: str, ttl_s: int, **values: float | str) -> balance_pb2.AuthorizeRequest:
    dims = {k: v for k, v in values.items() if isinstance(v, str)}
    nums = {k: float(v) for k, v in values.items() if not isinstance(v, str)}
    return balance_pb2.AuthorizeRequest(
        request_id=f"req-{rid}",
        customer_id=customer,
        event_type=kind,
        dimensions=dims,
        values=nums,
        reserve=True,
        reservation_id=rid,
        reservation_ttl=Duration(seconds=ttl_s),
    )


def publish(
    client: TariffClient, card: str, draft: pricing_pb2.CreateDraftVersionRequest, from_ms: int, **cohort: str
) -> pricing_pb2.PublishVersionResponse:
    made = client.pricing.CreateDraftVersion(draft)
    request = pricing_pb2.PublishVersionRequest(rate_card_id=card, version=made.version, effective_from=stamp(from_ms))
    if cohort:
        request.cohort.CopyFrom(pricing_pb2.Cohort(attributes=cohort))
    answer: pricing_pb2.PublishVersionResponse = client.pricing.PublishVersion(request)
    return answer


def catalogue(client: TariffClient) -> None:
    for product in PRODUCTS:
        client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    for card in (CARD, BULK_CARD):
        client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, name=card, pricing_unit="credits"))
        draft = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=card, upsert_rates=RATES, set_parameters={"base": "0.25"}, request_id=f"{card}-v1"
        )
        publish(client, card, draft, M3 - 365 * DAY_MS)


def contract(
    client: TariffClient,
    cid: str,
    customer: str,
    card: str,
    start_ms: int,
    overage_price: str = "",
    blocked: bool = False,
) -> None:
    request = contracts_pb2.CreateContractRequest(
        id=cid, customer_id=customer, rate_card_id=card, starting_at=stamp(start_ms), currency="USD"
    )
    request.overage_price = overage_price
    if blocked:
        request.overage_policy = contracts_pb2.BLOCK
    client.contracts.CreateContract(request)


def customers(client: TariffClient) -> None:
    for customer, segment in ((QA, "smb"), (QB, "smb"), (QG, "ent")):
        client.contracts.CreateCustomer(
            contracts_pb2.CreateCustomerRequest(id=customer, attributes={"segment": segment})
        )
    contract(client, "qa-1", QA, CARD, M2, overage_price="1.5")
    contract(client, "qb-1", QB, CARD, M1, blocked=True)
    contract(client, "qg-1", QG, BULK_CARD, M1, overage_price="1")  # LATEST, MAX and UNIQUE_COUNT usage: never re-rated
    override = contracts_pb2.PriceOverride(id="half", product_id="call", match={"m": "b"}, multiplier="0.5")
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="qa-1", override=override))
    fixed = contracts_pb2.PriceOverride(product_id="tok", price="0.2")
    client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id="qg-1", override=fixed))
    for customer in BULK:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer))
        contract(client, f"{customer}-c", customer, BULK_CARD, M12)


def credits_and_alerts(client: TariffClient) -> None:
    grants = [
        # The promotional grant first: the rollover qa-pre makes at M1 (past already) is then recorded after both,
        # whenever the clock records it, so an invoice's grant_balances (in the order granted) list them alike on
        # the server never restarted.
        contracts_pb2.Grant(
            id="qa-promo",
            contract_id="qa-1",
            kind=contracts_pb2.PROMOTIONAL,
            amount="20",
            paid_amount="0",
            priority=-1,
            expires_at=stamp(M1 + 5 * DAY_MS),
        ),
        contracts_pb2.Grant(
            id="qa-pre",
            contract_id="qa-1",
            kind=contracts_pb2.PREPAID,
            amount="100",
            paid_amount="50",
            rollover_fraction="0.5",
        ),
        contracts_pb2.Grant(id="qb-pre", contract_id="qb-1", kind=contracts_pb2.PREPAID, amount="80", paid_amount="40"),
        contracts_pb2.Grant(
            id="qg-pre",
            contract_id="qg-1",
            kind=contracts_pb2.PREPAID,
            amount="10",
            paid_amount="10",
            applicable_product_ids=["mix-sum", "mix-gauge"],
        ),
    ]
    for grant in grants:
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    policy = contracts_pb2.TopUpPolicy(threshold="30", recharge_to="90", price_per_credit="0.5", max_per_period=2)
    client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id="qb-1", top_up=policy))
    for rule in (
        alerts_pb2.CreateAlertRequest(id="qa-low", customer_id=QA, type=alerts_pb2.LOW_BALANCE, threshold="60"),
        alerts_pb2.CreateAlertRequest(id="qb-spend", customer_id=QB, type=alerts_pb2.SPEND_THRESHOLD, threshold="25"),
        alerts_pb2.CreateAlertRequest(id="qg-empty", customer_id=QG, type=alerts_pb2.CREDITS_EXHAUSTED),
        alerts_pb2.CreateAlertRequest(id="q-topups", all=True, type=alerts_pb2.TOP_UP_EXECUTED),
        alerts_pb2.CreateAlertRequest(id="q-expired", all=True, type=alerts_pb2.RESERVATION_EXPIRED),
    ):
        client.alerts.CreateAlert(rule)


def past_usage(client: TariffClient) -> None:
    """Usage of M2 and M1, duplicates, a conflict, refused events; q-a's M2 closed by ClosePeriod."""
    first = [
        ev("qa-m2-1", QA, "call", M2 + DAY_MS, n=30, m="a"),
        ev("qa-m2-2", QA, "call", M2 + 2 * DAY_MS, n=10, m="b"),
        ev("qa-m1-1", QA, "call", M1 + DAY_MS, n=50, m="a"),
        ev("qa-m1-2", QA, "call", M1 + DAY_MS + 1, n=40, m="b"),
        ev("qg-m1-s", QG, "seat", M1 + DAY_MS + 2, n=3),
        ev("qb-m1-1", QB, "call", M1 + 2 * DAY_MS, n=20, m="a"),
        ev("qg-m1-1", QG, "mix", M1 + 2 * DAY_MS, g=5, s=0),
        ev("qg-m1-2", QG, "mix", M1 + 3 * DAY_MS, g=2, s=3),  # the gauge falls 3, the sum charges 3: netted
        ev("bad", QA, "call", M1 + DAY_MS, n=-1, m="a"),
        ev("nobody", "q-nobody", "call", M1 + DAY_MS, n=1, m="a"),
    ]
    ingest(client, "past", *first)
    client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=QA, period_start=stamp(M2)))
    ingest(client, "past", *first)  # duplicates
    ingest(client, "conflict", ev("qa-m1-1", QA, "call", M1 + DAY_MS, n=51, m="a"))


def current_usage(client: TariffClient, now: int) -> None:
    """This month's usage of every price model, holds kept, released, settled, batched and expiring."""
    ingest(
        client,
        "now-1",
        ev("qa-0-1", QA, "call", now - 5 * HOUR_MS, n=20, m="a"),
        ev("qa-0-2", QA, "pkg", now - 5 * HOUR_MS, n=14),
        ev("qa-0-3", QA, "tok", now - 5 * HOUR_MS, n=120),
        ev("qg-0-5", QG, "login", now - 5 * HOUR_MS, u="u1"),
        ev("qg-0-6", QG, "login", now - 5 * HOUR_MS, u="u2"),
        ev("qg-0-7", QG, "login", now - 4 * HOUR_MS, u="u1"),
        ev("qb-0-1", QB, "call", now - 5 * HOUR_MS, n=40, m="a"),
        ev("qg-0-1", QG, "mix", now - 5 * HOUR_MS, g=6, s=1),
        ev("qg-0-2", QG, "mix", now - 4 * HOUR_MS, g=1, s=2),  # falls 5, charges 2
        ev("qg-0-3", QG, "tok", now - 4 * HOUR_MS, n=7),
    )
    b = client.balance
    b.Authorize(hold(QA, "qa-open", "call", 3600, n=10, m="a"))
    b.Authorize(hold(QA, "qa-rel", "call", 3600, n=5, m="b"))
    b.ReleaseReservation(balance_pb2.ReleaseReservationRequest(customer_id=QA, reservation_id="qa-rel"))
    b.Authorize(hold(QB, "qb-settle", "call", 3600, n=4, m="a"))
    batch = balance_pb2.AuthorizeBatch(
        requests=[
            hold(QG, "qg-batch", "mix", 3600, g=0, s=1),  # a falling gauge in a batched hold
            hold(QA, "qa-batch", "tok", 3600, n=30),
        ]
    )
    for _ in b.AuthorizeBatches(iter([batch])):
        pass
    b.Authorize(hold(QB, "qb-ttl", "call", 1, n=1, m="a"))  # expires after 1 s
    b.Authorize(hold(QG, "qg-mix", "mix", 3600, g=0.5, s=1))
    ingest(client, "settle", ev("qb-0-2", QB, "call", now - 3 * HOUR_MS, "qb-settle", n=5, m="a"))
    ingest(client, "topup", ev("qb-0-3", QB, "call", now - 3 * HOUR_MS, n=30, m="a"))  # crosses 30: top-up


def versions(client: TariffClient) -> dict[str, pricing_pb2.PublishVersionResponse]:
    """CARD: the same prices from M2 (nothing changes amount), new prices from M1, a rollback to v1 from this
    month, a cohort (smb) price from M0 + 2 h; a draft left unpublished."""
    p = client.pricing
    answers = {}
    same = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD, based_on_version=1, upsert_rates=[unit("call", "1")], change_note="same", request_id="same"
    )
    answers["same"] = publish(client, CARD, same, M2)
    changed = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD,
        based_on_version=2,
        upsert_rates=[unit("call", "1.25"), unit("mix-sum", "2"), unit("mix-gauge", "0.5")],
        set_parameters={"base": "0.5"},
        request_id="changed",
    )
    answers["changed"] = publish(client, CARD, changed, M1)
    rollback = pricing_pb2.RollbackRateCardRequest(rate_card_id=CARD, to_version=1, effective_from=stamp(M0))
    answers["rollback"] = p.RollbackRateCard(rollback)
    cohort = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD, based_on_version=1, upsert_rates=[unit("call", "1.1")], request_id="cohort"
    )
    answers["cohort"] = publish(client, CARD, cohort, M0 + 2 * HOUR_MS, segment="smb")
    p.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=3, change_note="left", request_id="left"
        )
    )
    return answers


def scenario(client: TariffClient, now: int) -> dict[str, pricing_pb2.PublishVersionResponse]:
    catalogue(client)
    customers(client)
    credits_and_alerts(client)
    past_usage(client)
    current_usage(client, now)
    answers = versions(client)
    closed = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
    assert closed.invoices_made >= 264 + 3, closed.invoices_made  # more than one slice
    ingest(
        client,
        "after",
        ev("qa-0-7", QA, "call", now - HOUR_MS, n=8, m="a"),
        ev("qg-0-4", QG, "mix", now - HOUR_MS, g=0, s=4),
        ev("qb-0-4", QB, "call", now - HOUR_MS, n=3, m="a"),
        ev("qg-0-8", QG, "mix", now - HOUR_MS, "qg-mix", g=0.5, s=1),  # settles the hold of a falling gauge
    )
    return answers


def more(client: TariffClient, tag: str, now: int) -> None:
    """Usage and commands after the restarts, alike each time but for their ids; resent events, duplicates."""
    resent = ingest(client, "past", ev("qa-m2-1", QA, "call", M2 + DAY_MS, n=30, m="a"))
    assert (resent.accepted, resent.duplicates) == (0, 1), resent
    ingest(
        client,
        f"{tag}-more",
        ev(f"{tag}-qa", QA, "call", now - HOUR_MS, n=6, m="b"),
        ev(f"{tag}-qg", QG, "mix", now - HOUR_MS, g=3, s=0),
        ev(f"{tag}-qg2", QG, "mix", now - HOUR_MS + 1, g=1, s=1),
        ev(f"{tag}-qb", QB, "call", now - HOUR_MS, n=12, m="a"),
        ev(f"{tag}-login", QG, "login", now - HOUR_MS, u=f"{tag}-u"),
    )
    client.balance.Authorize(hold(QG, f"{tag}-hold", "mix", 3600, g=0, s=2))
    grant = contracts_pb2.Grant(
        id=f"{tag}-g",
        contract_id="qg-1",
        kind=contracts_pb2.PROMOTIONAL,
        amount="5",
        paid_amount="0",
        expires_at=stamp(M0 + 40 * DAY_MS),
    )
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
    draft = pricing_pb2.CreateDraftVersionRequest(
        rate_card_id=CARD, based_on_version=1, upsert_rates=[unit("pkg", "9")], request_id=f"{tag}-draft"
    )
    client.pricing.CreateDraftVersion(draft)


def every_read(client: TariffClient, alerts: int | None = None) -> Reads:
    reads: Reads = {}
    c, p, i = client.contracts, client.pricing, client.invoices
    put(reads, "ListProducts", p.ListProducts, pricing_pb2.ListProductsRequest())
    put(reads, "ListCustomers", c.ListCustomers, contracts_pb2.ListCustomersRequest(page_size=1000))
    put(reads, "ListAlertRules", client.alerts.ListAlertRules, alerts_pb2.ListAlertRulesRequest())
    paged(reads, "GetAuditLog", p.GetAuditLog, pricing_pb2.GetAuditLogRequest(page_size=100), "after_seq")
    paged(reads, "ListInvoices", i.ListInvoices, invoices_pb2.ListInvoicesRequest(page_size=100), "page_token")
    span = invoices_pb2.GetRevenueReportRequest(period_start=stamp(M3 - DAY_MS), period_end=stamp(M0 + 40 * DAY_MS))
    put(reads, "GetRevenueReport", i.GetRevenueReport, span)
    for card in (CARD, BULK_CARD):
        put(reads, f"GetRateCard {card}", p.GetRateCard, pricing_pb2.GetRateCardRequest(id=card))
        put(reads, f"ListVersions {card}", p.ListVersions, pricing_pb2.ListVersionsRequest(rate_card_id=card))
        for at in (M2, M1, M0, M0 + 2 * HOUR_MS):
            request = pricing_pb2.GetVersionRequest(rate_card_id=card, at=stamp(at))
            put(reads, f"GetVersion {card} at {at}", p.GetVersion, request)
    for customer in (QA, QB, QG, BULK[0], BULK[-1]):
        put(
            reads,
            f"GetBalance {customer}",
            client.balance.GetBalance,
            balance_pb2.GetBalanceRequest(customer_id=customer),
        )
        for start in (M3, M2, M1, M0):
            invoice_and_lines(reads, client, customer, start)
        listed = invoices_pb2.ListInvoicesRequest(customer_id=customer)
        put(reads, f"ListInvoices {customer}", i.ListInvoices, listed)
        for invoice in i.ListInvoices(listed).invoices:
            number = invoice.invoice_number
            put(reads, f"GetInvoice {number}", i.GetInvoice, invoices_pb2.GetInvoiceRequest(invoice_number=number))
        span = invoices_pb2.GetRevenueReportRequest(
            customer_id=customer, period_start=stamp(M2), period_end=stamp(M0 + 40 * DAY_MS)
        )
        put(reads, f"GetRevenueReport {customer}", i.GetRevenueReport, span)
    for index, alert in enumerate(watched_alerts(client, alerts)):
        reads[f"Alert {index}"] = alert.SerializeToString(deterministic=True)
    return reads


def invoice_and_lines(reads: Reads, client: TariffClient, customer: str, start_ms: int) -> None:
    name = f"PreviewInvoice {customer} {start_ms}"
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer, period_start=stamp(start_ms))
    put(reads, name, client.invoices.PreviewInvoice, request)
    if reads[name].startswith(b"refused"):
        return
    for line in invoices_pb2.Invoice.FromString(reads[name]).lines:
        explain = invoices_pb2.ExplainLineItemRequest(
            customer_id=customer, period_start=stamp(start_ms), line_id=line.line_id, page_size=2
        )
        for page in range(50):
            put(reads, f"Explain {customer} {start_ms} {line.line_id} {page}", client.invoices.ExplainLineItem, explain)
            token = client.invoices.ExplainLineItem(explain).next_page_token
            if not token:
                break
            explain.page_token = token


KINDS: dict[str, type[Message]] = {
    "GetBalance": balance_pb2.Balance,
    "PreviewInvoice": invoices_pb2.Invoice,
    "GetInvoice": invoices_pb2.Invoice,
    "ListInvoices": invoices_pb2.ListInvoicesResponse,
    "GetRevenueReport": invoices_pb2.RevenueReport,
    "Explain": invoices_pb2.ExplainLineItemResponse,
    "Alert": alerts_pb2.Alert,
    "GetAuditLog": pricing_pb2.GetAuditLogResponse,
    "ListProducts": pricing_pb2.ListProductsResponse,
    "ListCustomers": contracts_pb2.ListCustomersResponse,
    "ListAlertRules": alerts_pb2.ListAlertRulesResponse,
    "GetRateCard": pricing_pb2.RateCard,
    "ListVersions": pricing_pb2.ListVersionsResponse,
    "GetVersion": pricing_pb2.RateCardVersion,
}


def shown(name: str, blob: bytes | None) -> str:
    """A read's bytes as text, when its kind is known and it is no refusal."""
    kind = KINDS.get(name.split(" ")[0])
    if blob is None or kind is None or blob.startswith(b"refused"):
        return repr(blob)
    return text_format.MessageToString(kind.FromString(blob), as_one_line=True)


def unlike(before: Reads, after: Reads) -> list[str]:
    """The reads that differ, each shown before and after."""
    return [
        f"{name}:\n  before {shown(name, before.get(name))}\n  after  {shown(name, after.get(name))}"
        for name in sorted(set(before) | set(after))
        if before.get(name) != after.get(name)
    ]


def alert_count(reads: Reads) -> int:
    return sum(1 for name in reads if name.startswith("Alert "))


def expired_alert(client: TariffClient, reservation_id: str) -> bool:
    """Whether WatchAlerts sends (within 20 s) the RESERVATION_EXPIRED alert of the hold."""
    stream = client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=20.0)
    try:
        return any(alert.details.get("reservation_id") == reservation_id for alert in stream)
    except (grpc.RpcError, TariffError):
        return False
    finally:
        stream.cancel()


def snapshots(server: ServerProcess) -> list[int]:
    return [int(seq) for seq in _SNAPSHOT_LINE.findall(server.log_path.read_text(errors="replace"))]


def tail(client: TariffClient, now: int) -> None:
    """Two records after more()'s: an event netting a refund and a charge, a release."""
    ingest(client, "tail", ev("tail-qg", QG, "mix", now - HOUR_MS + 2, g=0.5, s=2))
    release = balance_pb2.ReleaseReservationRequest(customer_id=QG, reservation_id="s1-hold")
    client.balance.ReleaseReservation(release)


def timeless(reads: Reads) -> dict[str, str]:
    """The reads as text without the times and sequence numbers that differ between two servers told the same
    story at other moments (tests/test_audit_recovery_wire.py `scrubbed`)."""
    shown: dict[str, str] = {}
    for name, blob in reads.items():
        kind = KINDS.get(name.split(" ")[0])
        if kind is None or blob.startswith(b"refused"):
            shown[name] = repr(blob)
        else:
            message = scrubbed(kind.FromString(blob))
            if "next_page_token" in message.DESCRIPTOR.fields_by_name:
                message.ClearField("next_page_token")  # opaque: names the journal's seqs
            text = text_format.MessageToString(message, as_one_line=True)
            # A CloseDuePeriods RPC's later slices close what was due at its start: their grace is the time since.
            shown[name] = re.sub(r"(?<=at_ms )\d+|(?<=grace_ms\\\":)\d+", "<ms>", text)
    return shown


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    process = ServerProcess(tmp_path_factory.mktemp("replayeq") / "data", extra_args=["--snapshot-every", "1000000"])
    process.start()
    try:
        yield process
    finally:
        process.stop()


@pytest.fixture(scope="module")
def control(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A server told the same story, never restarted."""
    process = ServerProcess(tmp_path_factory.mktemp("control") / "data")
    process.start()
    try:
        yield process
    finally:
        process.stop()


def test_every_read_is_byte_for_byte_the_same_after_replay_and_after_a_snapshot_and_its_tail(
    server: ServerProcess, control: ServerProcess
) -> None:
    now = now_ms()
    with server.client() as client:
        answers = scenario(client, now)
        # Reads show qb-ttl expired once due; its RESERVATION_EXPIRED alert says the clock has journaled it.
        assert expired_alert(client, "qb-ttl")
        before = every_read(client)
    count = alert_count(before)
    assert answers["same"].customers_rerated >= 1 and answers["changed"].rerated_amount_delta != "0"
    assert snapshots(server) == []

    server.kill9()
    server.restart()  # (1) the whole journal replayed
    with server.client() as client:
        found = unlike(before, every_read(client, count))
        assert not found, "\n".join(["after kill -9 (journal replay)", *found])

    server.kill9()
    server.extra_args = ("--snapshot-every", "4", "--snapshot-journal-factor", "0")  # after more()'s 4 records
    server.restart()  # (2) a snapshot, then a tail after it
    with server.client() as client:
        more(client, "s1", now)
        assert wait_for(lambda: bool(snapshots(server)), 15)
        server.extra_args = ("--snapshot-every", "1000000")
        tail(client, now)
        before = every_read(client)
        seq = client.get_balance(QA).as_of_seq
    taken = max(snapshots(server))
    assert taken < seq
    server.kill9()
    server.restart()
    with server.client() as client:
        after = every_read(client, alert_count(before))
    found = unlike(before, after)
    assert not found, "\n".join([f"after a snapshot at {taken} and replay to {seq}", *found])

    with server.client() as client:  # (3) on the recovered server, more of the same, then kill -9 again
        more(client, "s2", now)
        before = every_read(client)
    server.kill9()
    server.restart()
    with server.client() as client:
        found = unlike(before, every_read(client, alert_count(before)))
        assert not found, "\n".join(["after more on a recovered server", *found])

    with control.client() as client:  # the same story on a server never restarted
        scenario(client, now)
        assert expired_alert(client, "qb-ttl")
        more(client, "s1", now)
        tail(client, now)
        more(client, "s2", now)
        told = timeless(every_read(client, alert_count(before)))
    recovered = timeless(before)
    found = [
        f"{name}:\n  never restarted {told.get(name)}\n  recovered       {recovered.get(name)}"
        for name in sorted(set(told) | set(recovered))
        if told.get(name) != recovered.get(name)
    ]
    assert not found, "\n".join(["against a server never restarted", *found])


def test_periods_the_close_grace_driver_closes_in_slices_after_a_restart_replay_alike(server: ServerProcess) -> None:
    """264 periods due at a start with --close-grace 0s: the driver journals two CloseDuePeriods slices (256, 8);
    every read after them is the same after kill -9 and a replay."""
    with server.client() as client:
        for customer in BULK2:
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer))
            contract(client, f"{customer}-c", customer, BULK_CARD, M12)
    server.kill9()
    server.extra_args = ("--snapshot-every", "1000000", "--close-grace", "0s")
    server.restart()
    last = invoices_pb2.ListInvoicesRequest(customer_id=BULK2[-1])
    with server.client() as client:
        assert wait_for(lambda: len(client.invoices.ListInvoices(last).invoices) == 12, 30)
        before = every_read(client)
    log = server.log_path.read_text(errors="replace")
    assert "closed 256 billing periods past their grace" in log and "closed 8 billing periods past their grace" in log
    server.kill9()
    server.extra_args = ("--snapshot-every", "1000000")
    server.restart()
    with server.client() as client:
        found = unlike(before, every_read(client, alert_count(before)))
        assert not found, "\n".join(["the driver's slices replayed", *found])


WIDE = [f"w-{n:03d}" for n in range(200)]  # four re-rating slices of 64 customers
TOUCHED = (WIDE[-1], WIDE[-3])


def wide_reads(client: TariffClient) -> Reads:
    """The wide story's reads: every balance, a few invoices explained, the audit log and the versions."""
    reads: Reads = {}
    for customer in WIDE:
        request = balance_pb2.GetBalanceRequest(customer_id=customer)
        put(reads, f"GetBalance {customer}", client.balance.GetBalance, request)
    for customer in WIDE[:3] + WIDE[-3:]:
        invoice_and_lines(reads, client, customer, M0)
    audit = pricing_pb2.GetAuditLogRequest(page_size=200)
    paged(reads, "GetAuditLog", client.pricing.GetAuditLog, audit, "after_seq")
    versions = pricing_pb2.ListVersionsRequest(rate_card_id=CARD)
    put(reads, "ListVersions", client.pricing.ListVersions, versions)
    return reads


def test_a_start_from_a_snapshot_taken_while_a_publish_rerates_ends_as_a_server_never_stopped(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """A retroactive publish keeping one price (call) and changing another (call m=b) re-rates 200 customers in
    four slices, paced (the test-only TARIFF_TEST_RERATE_SLICE_PAUSE_MS) so that a snapshot is taken while it is
    pending (engine/pending.py: the snapshot holds the pending set and the publish's rules, the server-set
    rerate_keeps_unchanged_draws among them) and the server is killed (-9) before it completes. Started again from
    that snapshot it completes the re-rating; the caller's retry is answered as the committed publish. Every
    customer's charges are then at the publish's prices, and every read byte for byte the same after another kill
    -9 (the completion record replayed on that snapshot). Before the fix, the restored machine re-rated its pending
    customers without the publish's timeline (Billing.from_snapshot compiled no tables): it kept their old prices,
    and the replay of the completion record refused to start the server ("re-rating changed between releases")."""
    server = ServerProcess(
        tmp_path_factory.mktemp("wide") / "data",
        extra_args=["--snapshot-every", "1", "--snapshot-journal-factor", "0"],
        env={"TARIFF_TEST_RERATE_SLICE_PAUSE_MS": "700"},
    )
    server.start()
    try:
        now = now_ms()
        request = wide_setup(server, now)
        publisher = threading.Thread(target=publish_unanswered, args=(server, request))
        publisher.start()
        wait_for_log(server, "re-rating started", 30)
        log = server.log_path.read_text(errors="replace")
        publish_seq = int(re.findall(r"re-rating started .*seq=(\d+)", log)[-1])
        toucher = threading.Thread(target=touch, args=(server, now, True))  # acknowledged or not before the kill
        toucher.start()
        assert wait_for(lambda: max(snapshots(server)) >= publish_seq, 15)
        server.kill9()
        publisher.join()
        toucher.join()
        assert "re-rating done" not in server.log_path.read_text(errors="replace"), "the kill came too late"
        server.extra_args = ("--snapshot-every", "1000000")
        server.restart()
        with server.client() as client:
            again = client.pricing.PublishVersion(request, timeout=60)  # waits for the re-rating's completion
        touch(server, now)  # resent: counted once whether acknowledged before the kill or not
        with server.client() as client:
            assert again.version.state == pricing_pb2.PUBLISHED
            recovered = wide_reads(client)
        server.kill9()
        server.restart()
        with server.client() as client:
            found = unlike(recovered, wide_reads(client))
        assert not found, "\n".join(["the completion replayed", *found])
    finally:
        server.stop()
    for n, customer in enumerate(WIDE):  # 2 events of 3 at 1 (call), or at 3 (call m=b; v1: 2), 1 more if touched
        charges = 6 if n % 2 == 0 else 18 + 3 * (customer in TOUCHED)
        balance = balance_pb2.Balance.FromString(recovered[f"GetBalance {customer}"])
        assert (balance.period_charges, balance.overage_amount) == (str(charges), str(max(charges - 8, 0))), customer


def wide_setup(server: ServerProcess, now: int) -> pricing_pb2.PublishVersionRequest:
    """200 customers with two grants each and usage 3 and 2 hours ago (call, or call m=b every other one); the
    publish of a draft keeping call's price and tripling call m=b's from 3 hours ago."""
    hour = now - now % HOUR_MS - 3 * HOUR_MS
    with server.client() as client:
        catalogue(client)
        for customer in WIDE:
            client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer))
            contract(client, f"{customer}-c", customer, CARD, M1, overage_price="1")
            grants = [
                contracts_pb2.Grant(id=f"{customer}-p", kind=contracts_pb2.PREPAID, amount="5", paid_amount="5"),
                contracts_pb2.Grant(
                    id=f"{customer}-b",
                    kind=contracts_pb2.PROMOTIONAL,
                    amount="3",
                    paid_amount="0",
                    priority=-1,
                    applicable_product_ids=["call"],
                ),
            ]
            for grant in grants:
                grant.contract_id = f"{customer}-c"
                client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        usage = [
            ev(f"{customer}-{k}", customer, "call", hour + k * HOUR_MS + n, n=3, m="ab"[n % 2])
            for n, customer in enumerate(WIDE)
            for k in range(2)
        ]
        ingest(client, "wide", *usage)
        draft = pricing_pb2.CreateDraftVersionRequest(
            rate_card_id=CARD, based_on_version=1, upsert_rates=[unit("call", "1"), unit("call", "3", m="b")]
        )
        version = client.pricing.CreateDraftVersion(draft).version
    return pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=version, effective_from=stamp(hour))


def publish_unanswered(server: ServerProcess, request: pricing_pb2.PublishVersionRequest) -> None:
    """The publish whose caller the kill leaves without an answer."""
    try:
        with server.client() as client:
            client.pricing.PublishVersion(request, timeout=60)
    except TariffError:
        pass


def touch(server: ServerProcess, now: int, killed: bool = False) -> None:
    """Usage of two customers the re-rating has not reached yet: re-rated on touch. `killed`: the server may be
    killed meanwhile."""
    try:
        with server.client() as client:
            for k, customer in enumerate(TOUCHED):
                ingest(client, f"touch-{k}", ev(f"touch-{k}", customer, "call", now - 1_000, n=1, m="b"))
    except TariffError:
        if not killed:
            raise
