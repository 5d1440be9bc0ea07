"""A cross-read audit over the wire: the same money, shown by different RPCs, must agree exactly at every moment,
and with amounts computed by hand from the documents (never read back from the server).

One AI product line on one server: rate card `ai` (credits), products `in_tok` (SUM of input tokens, priced by
model x region per 1,000), `out_tok` (SUM of output tokens, GRADUATED per 1,000 with a flat fee on its first tier)
and `img` (COUNT of images). Customer `alw` (ALLOW, overage 0.5 USD a credit) has an override (model=small input
at half price), a PREPAID grant that expires while the module runs, a PROMOTIONAL grant for `img` only, a top-up
policy and alert rules; customer `blk` (BLOCK) holds credit through Authorize(reserve=true). Usage runs over the
last calendar month (P1, closed here) and the current one (P2), then version 2 is published effective from P2's
start (a retroactive re-rating), and finally the server is stopped and started again on the same data directory.

One server per module, one scenario built on it once: each test names, through `story(...)`, the tests whose state
it goes on from, and run alone (pytest -k) it runs them first. alw's and blk's month and a half comes first, in
order, up to version 2's publish (the re-rating's delta is theirs alone); the tests of other customers charged at
version 2 go on from it; those of customers whose prices version 2 leaves alone need nothing before them; and the
reads of every customer (the revenue sum, the restarts, CloseDuePeriods, the rollback) go on from every test before
them.

Identities, and the sentence that makes each a promise:
- invoices.proto ExplainLineItemRequest: "events plus adjustments sum to the line's amount"; InvoiceLine.amount:
  "the sum of credits_applied plus overage, and of the prices' amounts"; ExplainedEvent: "amount = sum of draws +
  overage"; Invoice.credits_applied: "The lines' credits summed per grant"; Invoice.subtotal: "The sum of the
  lines' amounts"; Invoice.overage_due: "the exact sum of the lines' unrounded amounts due, rounded half-even once".
- SimulatedAmount.current_amount (pricing.proto): "What the usage in the window is charged now" (the usage read
  per customer and product, open periods only) = the invoice lines of that product.
- balance.proto GrantBalance.remaining: "granted = drawn + remaining + expired (+ held) ... held is part of
  remaining"; Balance.credits_remaining: "Sum of remaining over started, unexpired grants"; credits_available:
  "credits_remaining - credits_held"; period_charges: "Everything charged in the current billing period";
  overage_due: "overage_amount priced at the contract's overage_price ... exact".
- invoices.proto InvoiceGrantBalance: "granted = drawn + remaining + expired".
- invoices.proto RevenueLine / README "Revenue": recognized = recognized_credits + recognized_overage; deferred
  rolls forward; "A closed period's lines never change once the customer's earlier periods are closed too".
- balance.proto Authorize: "Prices the described event exactly as ingestion would at the server's current time".
- alerts.proto: "a rule fires when its condition holds and did not at the previous evaluation".
- balance.proto WatchBalance: "The balance now" (its first message is GetBalance's answer).
- README "Reliability": a restart answers the same state (every read byte for byte).
"""

from __future__ import annotations

import contextlib
import functools
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.message import Message
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import alerts_pb2, balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import release, serving
from tests.serverproc import ServerProcess, wait_for

HOUR_MS = 3_600_000
MINUTE_MS = 60_000


def _month_start_ms(months_back: int) -> int:
    today = datetime.now(UTC)
    year, month = today.year, today.month - months_back
    while month < 1:
        year, month = year - 1, month + 12
    while month > 12:
        year, month = year + 1, month - 12
    return int(datetime(year, month, 1, tzinfo=UTC).timestamp() * 1000)


def _next_month_ms(at_ms: int) -> int:
    """The same day and time a calendar month later (days up to 28 only)."""
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    assert at.day <= 28
    later = at.replace(year=at.year + at.month // 12, month=at.month % 12 + 1)
    return int(later.timestamp() * 1000)


P1 = _month_start_ms(1)  # last calendar month: the contracts' first period (closed by the tests)
P2 = _month_start_ms(0)  # this calendar month: the current period
P3 = _month_start_ms(-1)
ALW = "alw"
BLK = "blk"
EXP = "exp"
HLD = "hld"
RRH = "rrh"
ROL = "rol"
TTL = "ttl"
SW = "sw"
WEX = "wex"
THR = "thr"
OVM = "ovm"
OVP = "ovp"
STATE: dict[str, Any] = {}

Step = Callable[[ServerProcess], None]
STORY: list[Step] = []  # the module's tests, in file order
DONE: dict[str, bool] = {}  # test name -> whether it passed, on the module's server


def story(*earlier: Step) -> Callable[[Step], Step]:
    """A test of the module's story, reading what the `earlier` tests left on the shared server: run without them
    (pytest -k), it runs them first (and theirs before them), so that each test passes alone. Each test runs once
    a server, whether pytest or a later test runs it first; one that needs a test that failed fails."""

    def wrap(test: Step) -> Step:
        @functools.wraps(test)
        def run(server: ServerProcess) -> None:
            if test.__name__ in DONE:
                if not DONE[test.__name__]:
                    pytest.fail(f"{test.__name__} failed, and what it leaves on the server is not there")
                return
            for before in earlier:
                before(server)
            DONE[test.__name__] = False
            test(server)
            DONE[test.__name__] = True

        STORY.append(run)
        return run

    return wrap


def catalogue(client: TariffClient) -> None:
    p = pricing_pb2
    products = [
        p.Product(
            id="in_tok", event_type="llm", aggregation=p.SUM, value_key="in", pricing_dimensions=["model", "region"]
        ),
        p.Product(id="out_tok", event_type="llm", aggregation=p.SUM, value_key="out"),
        p.Product(id="img", event_type="image", aggregation=p.COUNT),
    ]
    for product in products:
        client.pricing.CreateProduct(p.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(p.CreateRateCardRequest(id="ai", pricing_unit="credits"))
    tiers = [p.Tier(up_to="10000", unit_price="6", flat_price="5"), p.Tier(unit_price="3")]
    rates = [
        p.Rate(
            product_id="in_tok", match={"model": "big", "region": "us"}, unit=p.UnitPrice(price="3", per_units="1000")
        ),
        p.Rate(
            product_id="in_tok", match={"model": "big", "region": "eu"}, unit=p.UnitPrice(price="4", per_units="1000")
        ),
        p.Rate(product_id="in_tok", match={"model": "small"}, unit=p.UnitPrice(price="1", per_units="1000")),
        p.Rate(product_id="out_tok", tiered=p.TieredPrice(mode=p.GRADUATED, tiers=tiers, per_units="1000")),
        p.Rate(product_id="img", unit=p.UnitPrice(price="2")),
    ]
    client.pricing.CreateDraftVersion(p.CreateDraftVersionRequest(rate_card_id="ai", upsert_rates=rates))
    client.pricing.PublishVersion(p.PublishVersionRequest(rate_card_id="ai", version=1, effective_from=stamp(P1)))


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    if now_ms() - P2 < 8 * HOUR_MS:
        pytest.skip("the scenario dates usage in the current month's first hours, which have not all passed yet")
    root: Path = tmp_path_factory.mktemp("audit-crossread")
    STATE.clear()
    DONE.clear()
    yield from serving(ServerProcess(root / "data"), catalogue)


# -- requests ------------------------------------------------------------------------------------------------------


def customer(client: TariffClient, customer_id: str, policy: int, overage_price: str) -> None:
    c = contracts_pb2
    client.contracts.CreateCustomer(c.CreateCustomerRequest(id=customer_id))
    client.contracts.CreateContract(
        c.CreateContractRequest(
            id=f"k-{customer_id}",
            customer_id=customer_id,
            rate_card_id="ai",
            starting_at=stamp(P1),
            overage_policy=policy,  # type: ignore[arg-type]
            overage_price=overage_price,
            currency="USD",
        )
    )


def grant(
    client: TariffClient,
    customer_id: str,
    grant_id: str,
    amount: str,
    paid: str,
    *,
    priority: int,
    products: tuple[str, ...] = (),
    expires_at_ms: int | None = None,
) -> None:
    kind = contracts_pb2.PREPAID if paid != "0" else contracts_pb2.PROMOTIONAL
    new = contracts_pb2.Grant(
        id=grant_id,
        contract_id=f"k-{customer_id}",
        kind=kind,
        amount=amount,
        paid_amount=paid,
        priority=priority,
        applicable_product_ids=list(products),
    )
    if expires_at_ms is not None:
        new.expires_at.CopyFrom(stamp(expires_at_ms))
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))


def llm(
    tx: str, customer_id: str, at_ms: int, model: str, region: str, tokens_in: int, tokens_out: int, hold: str = ""
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=tx,
        customer_id=customer_id,
        event_type="llm",
        timestamp_ms=at_ms,
        dimensions={"model": model, "region": region},
        values={"in": float(tokens_in), "out": float(tokens_out)},
        reservation_id=hold,
    )


def image(tx: str, customer_id: str, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(transaction_id=tx, customer_id=customer_id, event_type="image", timestamp_ms=at_ms)


def ingest(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    ack = client.ingest_batch(list(events))
    assert (ack.accepted, list(ack.rejected), list(ack.notices)) == (len(events), [], [])


def authorize(client: TariffClient, event: usage_pb2.UsageEvent, **kwargs: Any) -> balance_pb2.AuthorizeResponse:
    return client.authorize(event.customer_id, event.event_type, dict(event.dimensions), dict(event.values), **kwargs)


def draft_big_us_input(client: TariffClient, based_on_version: int, price: str) -> None:
    """A draft of card `ai` changing only big/us input's price per 1,000 tokens."""
    rate = pricing_pb2.Rate(
        product_id="in_tok",
        match={"model": "big", "region": "us"},
        unit=pricing_pb2.UnitPrice(price=price, per_units="1000"),
    )
    client.pricing.CreateDraftVersion(
        pricing_pb2.CreateDraftVersionRequest(rate_card_id="ai", based_on_version=based_on_version, upsert_rates=[rate])
    )


def preview(client: TariffClient, customer_id: str, period_ms: int) -> invoices_pb2.Invoice:
    request = invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=stamp(period_ms))
    invoice: invoices_pb2.Invoice = client.invoices.PreviewInvoice(request)
    return invoice


def explain(client: TariffClient, customer_id: str, period_ms: int, line_id: str) -> list[invoices_pb2.ExplainedEvent]:
    """Every page of the line (page size 2, so that events and adjustments share pages), checking that each page
    states the same line amount."""
    events: list[invoices_pb2.ExplainedEvent] = []
    token, amounts = "", set()
    while True:
        page = client.invoices.ExplainLineItem(
            invoices_pb2.ExplainLineItemRequest(
                customer_id=customer_id, period_start=stamp(period_ms), line_id=line_id, page_size=2, page_token=token
            )
        )
        events.extend(page.events)
        amounts.add((page.line_amount, page.line_quantity))
        token = page.next_page_token
        if not token:
            break
    assert len(amounts) == 1, amounts
    return events


def charged(client: TariffClient, customer_id: str, period_ms: int) -> dict[str, str]:
    """transaction id -> what the event was charged over every line it fed (its ExplainLineItem entries)."""
    out: dict[str, Decimal] = {}
    for line in preview(client, customer_id, period_ms).lines:
        for event in explain(client, customer_id, period_ms, line.line_id):
            if event.transaction_id:
                out[event.transaction_id] = out.get(event.transaction_id, Decimal(0)) + D(event.amount)
    return {tx: plain(amount) for tx, amount in out.items()}


class Watcher:
    """A WatchBalance stream read on a thread from the start of a scenario, every message kept."""

    def __init__(self, server: ServerProcess, customer_id: str) -> None:
        self.client = server.client()
        self.stream = self.client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=customer_id))
        self.seen: list[bytes] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        with contextlib.suppress(grpc.RpcError, TariffError):
            for balance in self.stream:
                self.seen.append(balance.SerializeToString(deterministic=True))

    def last_is(self, client: TariffClient, customer_id: str) -> bool:
        """Whether the last message received is GetBalance's answer (waiting for it a while), but for as_of_seq:
        the server's journal seq, which other customers' records move on after the watcher's last message
        (balance.proto WatchBalance), so the watched one is at most GetBalance's."""

        def same() -> bool:
            if not self.seen:
                return False
            last = balance_pb2.Balance.FromString(self.seen[-1])
            now = client.get_balance(customer_id)
            if last.as_of_seq > now.as_of_seq:
                return False
            last.as_of_seq = now.as_of_seq
            return last == now

        return wait_for(same, timeout_s=10)

    def close(self) -> None:
        self.stream.cancel()
        self.thread.join(timeout=10)
        self.client.close()


def revenue(client: TariffClient, customer_id: str) -> invoices_pb2.RevenueReport:
    report: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(period_start=stamp(P1), period_end=stamp(P3), customer_id=customer_id)
    )
    return report


def revenue_rows(report: invoices_pb2.RevenueReport) -> list[tuple[int, str, str, str, str, str]]:
    """Each customer line's period start, recognized credits and overage, recognized, breakage and deferred."""
    return [
        (
            line.period_start.ToMilliseconds(),
            line.recognized_credits,
            line.recognized_overage,
            line.recognized,
            line.breakage,
            line.deferred,
        )
        for line in report.customer_lines
    ]


def simulate_current(client: TariffClient, customer_id: str, version: int) -> dict[str, Decimal]:
    """SimulateVersion's current_amount per product over P1 and P2 (the usage read the server offers per customer and
    product: what the usage is charged now; closed periods left out)."""
    answer = client.pricing.SimulateVersion(
        pricing_pb2.SimulateVersionRequest(
            rate_card_id="ai",
            version=version,
            period_start=stamp(P1),
            period_end=stamp(now_ms() + HOUR_MS),
            customer_ids=[customer_id],
        )
    )
    return {a.product_id: Decimal(a.current_amount) for a in answer.amounts}


# -- the cross-reads -------------------------------------------------------------------------------------------------


def D(text: str) -> Decimal:
    return Decimal(text or "0")


def cents(value: Decimal) -> str:
    return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


def plain(value: Decimal) -> str:
    """A decimal as the server writes amounts: no exponent, no trailing zeros."""
    text = format(value.normalize(), "f")
    return text if text != "-0" else "0"


def per_unit(amount: Decimal, quantity: Decimal) -> str:
    """amount / quantity rounded half-even to 12 decimal places, written as the server writes amounts."""
    return plain((amount / quantity).quantize(Decimal("1e-12"), rounding=ROUND_HALF_EVEN))


def invoice_agrees(client: TariffClient, invoice: invoices_pb2.Invoice) -> dict[str, Decimal]:
    """Every identity between an invoice, its lines, their ExplainLineItem pages and its grant balances; answers the
    credits drawn per grant on the invoice."""
    period_ms = invoice.period_start.ToMilliseconds()
    per_grant: dict[str, Decimal] = {}
    due = Decimal(0)
    for line in invoice.lines:
        where = f"{invoice.customer_id} {period_ms} {line.line_id}"
        credits = sum((D(c.credits) for c in line.credits_applied), Decimal(0))
        assert credits + D(line.overage) == D(line.amount), where
        assert sum((D(p.amount) for p in line.prices), Decimal(0)) == D(line.amount), where
        assert sum((D(p.quantity) for p in line.prices), Decimal(0)) == D(line.quantity), where
        assert sum(p.events for p in line.prices) == line.events, where
        pages = explain(client, invoice.customer_id, period_ms, line.line_id)
        rated = [e for e in pages if not e.HasField("adjustment")]
        adjusted = [e.adjustment for e in pages if e.HasField("adjustment")]
        assert sum((D(e.amount) for e in pages), Decimal(0)) == D(line.amount), where
        assert sum((D(e.quantity) for e in rated), Decimal(0)) == D(line.quantity), where
        assert len(rated) == line.events, where
        for e in rated:
            assert sum((D(d.credits) for d in e.draws), Decimal(0)) + D(e.overage) == D(e.amount), (where, e)
            assert e.unit_price == (per_unit(D(e.amount), D(e.quantity)) if D(e.quantity) else ""), (where, e)
        for p in line.prices:
            assert p.unit_price == (per_unit(D(p.amount), D(p.quantity)) if D(p.quantity) else "0"), (where, p)
        assert [a.SerializeToString(deterministic=True) for a in adjusted] == [
            a.SerializeToString(deterministic=True) for a in line.adjustments
        ], where
        if not line.adjustments:
            # Without a re-rating each event keeps its draws, so the pages' draws are the line's credits.
            drawn: dict[str, Decimal] = {}
            for e in rated:
                for d in e.draws:
                    drawn[d.grant_id] = drawn.get(d.grant_id, Decimal(0)) + D(d.credits)
            assert {g: v for g, v in drawn.items() if v} == {c.grant_id: D(c.credits) for c in line.credits_applied}, (
                where
            )
        for c in line.credits_applied:
            per_grant[c.grant_id] = per_grant.get(c.grant_id, Decimal(0)) + D(c.credits)
        unrounded = D(line.overage) * D(invoice.overage_price)
        assert line.amount_due == cents(unrounded), where
        due += unrounded
    assert [(c.grant_id, D(c.credits)) for c in invoice.credits_applied] == sorted(per_grant.items())
    assert D(invoice.subtotal) == sum((D(line.amount) for line in invoice.lines), Decimal(0))
    assert D(invoice.overage_amount) == sum((D(line.overage) for line in invoice.lines), Decimal(0))
    assert invoice.overage_due == cents(due)
    assert D(invoice.total_due) == D(invoice.overage_due) + D(invoice.top_up_purchases)
    for g in invoice.grant_balances:
        assert D(g.granted) == D(g.drawn) + D(g.remaining) + D(g.expired), g
    return per_grant


def balance_agrees(client: TariffClient, customer_id: str) -> balance_pb2.Balance:
    """Every identity inside one GetBalance, and between it and the current period's draft invoice."""
    balance = client.get_balance(customer_id)
    remaining = held = Decimal(0)
    for g in balance.grants:
        expired = g.HasField("expires_at") and g.expires_at.ToMilliseconds() <= now_ms() and not D(g.remaining)
        if expired:
            assert D(g.amount) == D(g.drawn) + D(g.expired) + D(g.held), g
            remaining += D(g.held)  # "plus what open reservations still hold on grants that have expired since"
        else:
            assert D(g.amount) == D(g.drawn) + D(g.remaining) + D(g.expired), g
            remaining += D(g.remaining)
        held += D(g.held)
    assert D(balance.credits_remaining) == remaining
    assert D(balance.credits_held) == held
    assert D(balance.credits_available) == remaining - held
    draft = preview(client, customer_id, now_ms())
    assert balance.period_start == draft.period_start
    assert D(balance.period_charges) == D(draft.subtotal)
    assert D(balance.overage_amount) == D(draft.overage_amount)
    assert D(balance.overage_due) == D(balance.overage_amount) * D(draft.overage_price)
    watched, read = watched_first(client, customer_id)
    assert watched == read
    return balance


def watched_first(client: TariffClient, customer_id: str) -> tuple[balance_pb2.Balance, balance_pb2.Balance]:
    """WatchBalance's first message, read between two equal GetBalance answers (as_of_seq is the server's journal
    seq: another customer's change, a clock record say, moves it in between); tried a few times."""
    for _ in range(5):
        before = client.get_balance(customer_id)
        watch = client.balance.WatchBalance(balance_pb2.WatchBalanceRequest(customer_id=customer_id), timeout=10)
        first: balance_pb2.Balance = next(iter(watch))
        watch.cancel()
        if client.get_balance(customer_id) == before:
            return first, before
    raise AssertionError("the balance kept changing")


def grants_of(balance: balance_pb2.Balance) -> dict[str, tuple[str, str, str, str, str]]:
    """grant id -> (amount, drawn, remaining, held, expired)."""
    return {g.grant_id: (g.amount, g.drawn, g.remaining, g.held, g.expired) for g in balance.grants}


def lines_of(invoice: invoices_pb2.Invoice) -> dict[str, tuple[str, str, str, dict[str, str]]]:
    """line id -> (quantity, amount, overage, credits per grant)."""
    return {
        line.line_id: (line.quantity, line.amount, line.overage, {c.grant_id: c.credits for c in line.credits_applied})
        for line in invoice.lines
    }


def by_product(invoice: invoices_pb2.Invoice) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    for line in invoice.lines:
        out[line.product_id] = out.get(line.product_id, Decimal(0)) + D(line.amount)
    return out


def alerts_through(client: TariffClient, marker: str) -> list[alerts_pb2.Alert]:
    """Every alert so far: `marker`, a new customer with a SPEND_THRESHOLD rule met by its first image, fires one
    alert known to come after every alert before it."""
    customer(client, marker, contracts_pb2.ALLOW, "1")
    client.alerts.CreateAlert(
        alerts_pb2.CreateAlertRequest(
            customer_id=marker, type=alerts_pb2.SPEND_THRESHOLD, threshold="1", id=f"{marker}-spend"
        )
    )
    ingest(client, image(f"{marker}-1", marker, now_ms() - MINUTE_MS))
    seen: list[alerts_pb2.Alert] = []
    for alert in client.alerts.WatchAlerts(alerts_pb2.WatchAlertsRequest(after_seq=0), timeout=20):
        if alert.customer_id == marker:
            return [a for a in seen if not a.customer_id.startswith("marker")]
        seen.append(alert)
    raise AssertionError("the alert stream ended early")


def fired(alerts: list[alerts_pb2.Alert]) -> list[tuple[str, str, dict[str, str]]]:
    kept = ("credits_available", "threshold", "period_charges", "credits", "released")
    return [
        (a.customer_id, alerts_pb2.AlertType.Name(a.type), {k: v for k, v in a.details.items() if k in kept})
        for a in alerts
    ]


# -- the story -------------------------------------------------------------------------------------------------------


@story()
def test_p1_usage_agrees_across_authorize_invoice_explain_balance_and_simulate(server: ServerProcess) -> None:
    with server.client() as client:
        customer(client, ALW, contracts_pb2.ALLOW, "0.5")
        client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id=f"k-{ALW}",
                override=contracts_pb2.PriceOverride(
                    id="small-half", product_id="in_tok", match={"model": "small"}, multiplier="0.5"
                ),
            )
        )
        grant(client, ALW, "a-promo", "20", "0", priority=0, products=("img",))
        expiry_ms = now_ms() + 12_000  # a loaded CI machine may take seconds to rate P1
        STATE["expiry_ms"] = expiry_ms
        grant(client, ALW, "a-pre", "200", "120", priority=1, expires_at_ms=expiry_ms)
        policy = contracts_pb2.TopUpPolicy(threshold="30", recharge_to="100", price_per_credit="0.8", max_per_period=2)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"k-{ALW}", top_up=policy))
        for rule_id, kind, threshold in (
            ("alw-low", alerts_pb2.LOW_BALANCE, "30"),
            ("alw-spend", alerts_pb2.SPEND_THRESHOLD, "100"),
            ("alw-topup", alerts_pb2.TOP_UP_EXECUTED, ""),
            ("blk-out", alerts_pb2.CREDITS_EXHAUSTED, ""),
        ):
            watched = BLK if rule_id.startswith("blk") else ALW
            if watched == BLK:
                customer(client, BLK, contracts_pb2.BLOCK, "0.5")
                grant(client, BLK, "b-pre", "50", "40", priority=0)
            client.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(customer_id=watched, type=kind, threshold=threshold, id=rule_id)
            )

        # e1: input 10,000 big/us at 3 per 1k = 30; output 4,000: flat 5 + 4 x 6 = 29; 59 in all, from a-pre.
        e1 = llm("e1", ALW, P1 + 2 * 24 * HOUR_MS, "big", "us", 10_000, 4_000)
        # e2: input 20,000 small/us at 1 per 1k x 0.5 (override) = 10; output to 12,000: price(12,000) = 5 + 60 + 6
        # = 71, less the 29 before = 42; 52 in all, from a-pre (drawn 111, 89 left).
        e2 = llm("e2", ALW, P1 + 9 * 24 * HOUR_MS, "small", "us", 20_000, 8_000)
        # (Authorize prices usage at the server's current time, in P2, so it does not estimate these P1 events.)
        ingest(client, e1)
        ingest(client, e2)
        # three images at 2 each, from the promotional grant (the only one first in burn order for img).
        ingest(client, *(image(f"i{n}", ALW, P1 + (10 + n) * 24 * HOUR_MS) for n in range(3)))
        assert now_ms() < expiry_ms, "the machine took longer than the grant's 12 s to rate P1's usage"

        invoice = preview(client, ALW, P1)
        assert preview(client, ALW, P1 + 17 * 24 * HOUR_MS + 12_345) == invoice  # "Any instant inside the period"
        assert lines_of(invoice) == {
            "img": ("3", "6", "0", {"a-promo": "6"}),
            "in_tok;model=big;region=us": ("10000", "30", "0", {"a-pre": "30"}),
            "in_tok;model=small;region=us": ("20000", "10", "0", {"a-pre": "10"}),
            "out_tok": ("12000", "71", "0", {"a-pre": "71"}),
        }
        assert invoice_agrees(client, invoice) == {"a-pre": Decimal(111), "a-promo": Decimal(6)}
        assert (invoice.subtotal, invoice.overage_due, invoice.total_due) == ("117", "0.00", "0.00")
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances] == [
            ("a-promo", "20", "6", "14", "0"),
            ("a-pre", "200", "111", "89", "0"),
        ]
        assert (
            simulate_current(client, ALW, 1)
            == by_product(invoice)
            == {"img": Decimal(6), "in_tok": Decimal(40), "out_tok": Decimal(71)}
        )
        balance = balance_agrees(client, ALW)
        assert grants_of(balance) == {"a-promo": ("20", "6", "14", "0", "0"), "a-pre": ("200", "111", "89", "0", "0")}
        # P1's charges are not the current period's: the balance's period is P2, which has none yet.
        assert (balance.credits_remaining, balance.credits_available, balance.period_charges) == ("103", "103", "0")


@story(test_p1_usage_agrees_across_authorize_invoice_explain_balance_and_simulate)
def test_holds_under_block_agree_with_balance_authorize_and_the_settled_event(server: ServerProcess) -> None:
    """Runs while a-pre's expiry approaches. blk: 50 credits (paid 40), BLOCK, usage in P2's fifth and sixth hours."""
    with server.client() as client:
        # h1: input 10,000 big/us = 30, output 1,000: 5 + 6 = 11; 41 held, 9 left.
        h1 = llm("b1", BLK, P2 + 4 * HOUR_MS, "big", "us", 10_000, 1_000, hold="h1")
        answer = authorize(client, h1, reserve=True, reservation_id="h1", reservation_ttl_s=600)
        assert (answer.reason, answer.estimated_cost, answer.credits_available) == ("OK", "41", "9")
        balance = balance_agrees(client, BLK)
        assert grants_of(balance) == {"b-pre": ("50", "0", "50", "41", "0")}
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("50", "41", "9")
        # 5,000 input more would cost 15 > 9: denied; 3,000 costs exactly the 9 left: allowed (contracts.proto BLOCK).
        over = authorize(client, llm("x", BLK, 0, "big", "us", 5_000, 0))
        assert (over.allowed, over.reason, over.estimated_cost) == (False, "INSUFFICIENT_CREDIT", "15")
        exact = authorize(client, llm("x", BLK, 0, "big", "us", 3_000, 0), reserve=True, reservation_id="h2")
        assert (exact.allowed, exact.estimated_cost, exact.credits_available) == (True, "9", "0")
        assert authorize(client, image("x", BLK, 0)).reason == "INSUFFICIENT_CREDIT"
        assert release(client, BLK, "h2") == "9"
        # The settling event is charged what Authorize estimated: 41, drawn from b-pre; 9 left.
        ingest(client, h1)
        assert charged(client, BLK, P2) == {"b1": "41"}
        assert grants_of(balance_agrees(client, BLK)) == {"b-pre": ("50", "41", "9", "0", "0")}
        # b2: 30 more, past the credit: 9 from b-pre, 21 overage (ingestion never refuses usage under BLOCK).
        b2 = llm("b2", BLK, P2 + 5 * HOUR_MS, "big", "us", 10_000, 0)
        assert authorize(client, b2).reason == "INSUFFICIENT_CREDIT"
        ingest(client, b2)
        balance = balance_agrees(client, BLK)
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("71", "21", "10.5")
        invoice = preview(client, BLK, P2)
        assert invoice_agrees(client, invoice) == {"b-pre": Decimal(50)}
        assert lines_of(invoice) == {
            "in_tok;model=big;region=us": ("20000", "60", "21", {"b-pre": "39"}),
            "out_tok": ("1000", "11", "0", {"b-pre": "11"}),
        }


@story(test_holds_under_block_agree_with_balance_authorize_and_the_settled_event)
def test_p2_expiry_top_up_and_holds_agree(server: ServerProcess) -> None:
    with server.client() as client:
        expiry_ms = STATE["expiry_ms"]
        STATE["watcher"] = Watcher(server, ALW)
        # The expiry: a-pre's 89 break; available 14 (a-promo only) < 30.
        assert wait_for(lambda: client.get_balance(ALW).credits_available == "14", timeout_s=30)
        early = client.get_balance(ALW)
        # Read before or after the clock records the expiry (LOW_BALANCE fires with that record), the balance is
        # the same but for as_of_seq (balance.proto Balance.credits_remaining: "answers as once it is recorded").
        alerts_through(client, "marker-0")
        late = client.get_balance(ALW)
        early.as_of_seq = late.as_of_seq
        assert early == late
        balance = balance_agrees(client, ALW)
        assert grants_of(balance)["a-pre"] == ("200", "111", "0", "0", "89")
        assert now_ms() >= expiry_ms
        # e4, an hour into P2: input 20,000 big/us = 60, output 1,000: 5 + 6 = 11; 71, all overage (a-promo pays
        # img only; a-pre's breakage is final). It leaves 14 < 30: a top-up of 100 - 14 = 86 at 0.8 (68.8 USD).
        e4 = llm("e4", ALW, P2 + HOUR_MS + 5 * MINUTE_MS, "big", "us", 20_000, 1_000)
        answer = authorize(client, e4)
        assert (answer.reason, answer.estimated_cost, answer.credits_available) == ("OVERAGE_ALLOWED", "71", "0")
        ingest(client, e4)
        topups = [g for g in client.get_balance(ALW).grants if g.kind == contracts_pb2.TOP_UP]
        assert [(g.amount, g.drawn, g.starts_at.ToMilliseconds()) for g in topups] == [("86", "0", P2)]
        STATE["topup"] = topup = topups[0].grant_id
        # e5, through a hold: input 5,000 big/eu at 4 per 1k = 20, output to 2,000: 17 - 11 = 6; 26 held on the
        # top-up (the only grant for these products), 60 of it left to them; 100 - 26 = 74 available in all.
        e5 = llm("e5", ALW, P2 + 2 * HOUR_MS + 5 * MINUTE_MS, "big", "eu", 5_000, 1_000, hold="h5")
        held = authorize(client, e5, reserve=True, reservation_id="h5")
        assert (held.reason, held.estimated_cost, held.credits_available) == ("OK", "26", "60")
        balance = balance_agrees(client, ALW)
        assert grants_of(balance)[topup] == ("86", "0", "86", "26", "0")
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("100", "26", "74")
        ingest(client, e5)
        # Settled, it drew what it held, from the same grant: 20 on its in_tok line, 6 on out_tok.
        assert grants_of(client.get_balance(ALW))[topup] == ("86", "26", "60", "0", "0")
        e5_draws = [
            (e.amount, [(d.grant_id, d.credits) for d in e.draws], e.overage)
            for line_id in ("in_tok;model=big;region=eu", "out_tok")
            for e in explain(client, ALW, P2, line_id)
            if e.transaction_id == "e5"
        ]
        assert e5_draws == [("20", [(topup, "20")], "0"), ("6", [(topup, "6")], "0")]
        # An image hold: 2 on a-promo (burns first for img), 12 + 60 = 72 left to img; released whole.
        pic = authorize(client, image("x", ALW, 0), reserve=True, reservation_id="hi")
        assert (pic.estimated_cost, pic.credits_available) == ("2", "72")
        assert grants_of(client.get_balance(ALW))["a-promo"] == ("20", "6", "14", "2", "0")
        assert release(client, ALW, "hi") == "2"
        # e6: input 10,000 small/eu: 10 x 0.5 = 5 (override), output 0; from the top-up. P2 charges 71 + 26 + 5 = 102.
        e6 = llm("e6", ALW, P2 + 3 * HOUR_MS + 5 * MINUTE_MS, "small", "eu", 10_000, 0)
        assert authorize(client, e6).estimated_cost == "5"
        ingest(client, e6)
        balance = balance_agrees(client, ALW)
        assert grants_of(balance) == {
            "a-promo": ("20", "6", "14", "0", "0"),
            "a-pre": ("200", "111", "0", "0", "89"),
            topup: ("86", "31", "55", "0", "0"),
        }
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("102", "71", "35.5")
        invoice = preview(client, ALW, P2)
        assert invoice_agrees(client, invoice) == {topup: Decimal(31)}
        assert (invoice.overage_due, invoice.top_up_purchases, invoice.total_due) == ("35.50", "68.80", "104.30")
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances] == [
            ("a-promo", "20", "6", "14", "0"),
            ("a-pre", "200", "111", "0", "89"),
            (topup, "86", "31", "55", "0"),
        ]
        assert simulate_current(client, ALW, 1) == {
            "img": Decimal(6),
            "in_tok": Decimal(40 + 60 + 20 + 5),
            "out_tok": Decimal(71 + 17),
        }
        # Each event was charged what Authorize estimated for it just before (balance.proto Authorize).
        assert {tx: a for tx, a in charged(client, ALW, P2).items()} == {"e4": "71", "e5": "26", "e6": "5"}
        # Every grant applies to img (a-promo for img, the top-up for all): Authorize's credit is the balance's.
        assert authorize(client, image("x", ALW, 0)).credits_available == balance.credits_available == "69"
        assert STATE["watcher"].last_is(client, ALW), "WatchBalance's last message is not GetBalance's answer"


@story(test_p2_expiry_top_up_and_holds_agree)
def test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement(server: ServerProcess) -> None:
    with server.client() as client:
        draft = preview(client, ALW, P1)
        closed = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=ALW, period_start=stamp(P1)))
        for field in ("invoice_number", "status", "closed_at"):
            draft.ClearField(field)
        final = invoices_pb2.Invoice()
        final.CopyFrom(closed)
        for field in ("invoice_number", "status", "closed_at"):
            final.ClearField(field)
        assert final == draft, "invoices.proto: a draft and the final invoice are equal field by field"
        STATE["p1_invoice"] = closed
        STATE["p1_revenue"] = [
            line for line in revenue(client, ALW).customer_lines if line.period_start.ToMilliseconds() == P1
        ]
        # Version 2: big/us input at 2 per 1k (was 3), from P2's start: e4's bucket 60 -> 40, b1's and b2's 30 -> 20.
        draft_big_us_input(client, based_on_version=1, price="2")
        simulated = client.pricing.SimulateVersion(
            pricing_pb2.SimulateVersionRequest(
                rate_card_id="ai",
                version=2,
                period_start=stamp(P2),
                period_end=stamp(now_ms() + HOUR_MS),
                customer_ids=[ALW, BLK],
            )
        )
        assert simulated.totals.delta == "-40"
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(rate_card_id="ai", version=2, effective_from=stamp(P2))
        )
        assert published.rerated_amount_delta == "-40"
        # alw, by docs/architecture.md "Top-ups" and pricing.proto PublishVersionRequest: the top-up was bought at
        # P2 charges of 71 and pays, settled again, only the charges beyond 71. The cut makes e4's hour 51 (in 40 +
        # out 11, overage); e5's hour (in_tok 20, then out_tok 6, by product id) reaches 71 after its in_tok 20,
        # which stay overage, so the top-up pays out_tok's 6 and e6's 5: drawn 11, 75 left. Overage 51 + 20 = 71
        # (the cut gave back no overage: the top-up still holds credit), 35.5 USD. P2's charges 82, below 100.
        topup = STATE["topup"]
        balance = balance_agrees(client, ALW)
        assert grants_of(balance)[topup] == ("86", "11", "75", "0", "0")
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("82", "71", "35.5")
        invoice = preview(client, ALW, P2)
        assert invoice_agrees(client, invoice) == {topup: Decimal(11)}
        line = {line.line_id: line for line in invoice.lines}["in_tok;model=big;region=us"]
        assert [(a.old_amount, a.new_amount, a.delta) for a in line.adjustments] == [("60", "40", "-20")]
        assert lines_of(invoice) == {
            "in_tok;model=big;region=eu": ("5000", "20", "20", {}),
            "in_tok;model=big;region=us": ("20000", "40", "40", {}),
            "in_tok;model=small;region=eu": ("10000", "5", "0", {topup: "5"}),
            "out_tok": ("2000", "17", "11", {topup: "6"}),
        }
        assert (invoice.overage_due, invoice.top_up_purchases, invoice.total_due) == ("35.50", "68.80", "104.30")
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances] == [
            ("a-promo", "20", "6", "14", "0"),
            ("a-pre", "200", "111", "0", "89"),
            (topup, "86", "11", "75", "0"),
        ]
        # blk: 20 + 11 + 20 = 51 charged, b-pre's 50 all drawn, 1 overage.
        balance = balance_agrees(client, BLK)
        assert grants_of(balance) == {"b-pre": ("50", "50", "0", "0", "0")}
        assert (
            simulate_current(client, BLK, 2)
            == by_product(preview(client, BLK, P2))
            == {"in_tok": Decimal(40), "out_tok": Decimal(11)}
        )
        assert (balance.period_charges, balance.overage_amount) == ("51", "1")
        assert invoice_agrees(client, preview(client, BLK, P2)) == {"b-pre": Decimal(50)}
        # SimulateVersion reads the open period only now (P1 is closed), and v2 prices it as it is charged.
        assert (
            simulate_current(client, ALW, 2)
            == {k: v for k, v in by_product(invoice).items()}
            == {"in_tok": Decimal(65), "out_tok": Decimal(17)}
        )
        # e7 after the re-rating: 40,000 small/us input, 40 x 0.5 = 20 (override), from the top-up (75 -> 55).
        # P2's charges 82 -> 102: SPEND_THRESHOLD fires again (it cleared when the cut took them to 82).
        e7 = llm("e7", ALW, P2 + 4 * HOUR_MS, "small", "us", 40_000, 0)
        assert authorize(client, e7).estimated_cost == "20"
        ingest(client, e7)
        assert charged(client, ALW, P2)["e7"] == "20"
        balance = balance_agrees(client, ALW)
        assert grants_of(balance)[topup] == ("86", "31", "55", "0", "0")
        assert (balance.period_charges, balance.overage_amount) == ("102", "71")
        assert invoice_agrees(client, preview(client, ALW, P2)) == {topup: Decimal(31)}
        assert STATE["watcher"].last_is(client, ALW), "WatchBalance's last message is not GetBalance's answer"
        STATE["watcher"].close()
        # Every grant's drawn (GetBalance) is what the invoices of P1 and P2 drew from it.
        for who in (ALW, BLK):
            drawn: dict[str, Decimal] = {}
            for period in (P1, P2):
                for c in preview(client, who, period).credits_applied:
                    drawn[c.grant_id] = drawn.get(c.grant_id, Decimal(0)) + D(c.credits)
            shown = {g.grant_id: D(g.drawn) for g in client.get_balance(who).grants if D(g.drawn)}
            assert shown == drawn, who
        # The closed period is untouched.
        assert (
            client.invoices.GetInvoice(invoices_pb2.GetInvoiceRequest(invoice_number=closed.invoice_number)) == closed
        )
        assert preview(client, ALW, P1) == closed
        assert invoice_agrees(client, closed) == {"a-pre": Decimal(111), "a-promo": Decimal(6)}


@story(test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement)
def test_revenue_agrees_with_invoices_and_grants_by_hand(server: ServerProcess) -> None:
    """P1: a-pre's 111 drawn at 0.6 = 66.6 recognised, 120 sold, 53.4 deferred. P2: the top-up sold 68.8, its 31
    drawn at 0.8 = 24.8, overage 71 x 0.5 = 35.5, a-pre's 89 broken at 0.6 = 53.4, deferred 53.4 + 68.8 - 24.8 -
    53.4 = 44 = the top-up's 55 left at 0.8. By product in P2: in_tok 60 overage (30) + 25 drawn (20) = 50,
    out_tok 11 overage (5.5) + 6 drawn (4.8) = 10.3."""
    with server.client() as client:
        report = revenue(client, ALW)
        rows = revenue_rows(report)
        assert rows == [(P1, "66.6", "0", "66.6", "0", "53.4"), (P2, "24.8", "35.5", "60.3", "53.4", "44")]
        products = {(line.period_start.ToMilliseconds(), line.product_id): line.recognized for line in report.lines}
        assert products == {
            (P1, "img"): "0",
            (P1, "in_tok"): "24",
            (P1, "out_tok"): "42.6",
            (P2, "in_tok"): "50",
            (P2, "out_tok"): "10.3",
        }
        r = report.reconciliation
        assert (r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end, r.reconciles) == (
            "0",
            "188.8",
            "91.4",
            "53.4",
            "44",
            True,
        )
        assert [line for line in report.customer_lines if line.period_start.ToMilliseconds() == P1] == STATE[
            "p1_revenue"
        ]
        # blk: b-pre sold 40 in P1 (it starts at the contract's start), nothing drawn there; P2 draws all 50 at 0.8 =
        # 40, overage 1 x 0.5 = 0.5, deferred 0.
        rows = revenue_rows(revenue(client, BLK))
        assert rows == [(P1, "0", "0", "0", "0", "40"), (P2, "40", "0.5", "40.5", "0", "0")]


@story(test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement)
def test_a_span_starts_with_the_deferred_the_span_before_it_ends_with(server: ServerProcess) -> None:
    """invoices.proto RevenueReconciliation: deferred_start + prepaid_sold - recognized_credits - breakage =
    deferred_end over the span; a span starting at P2 starts with what P1's line left deferred."""
    with server.client() as client:
        for who in ("", ALW, BLK):
            spans = [
                client.invoices.GetRevenueReport(
                    invoices_pb2.GetRevenueReportRequest(period_start=stamp(a), period_end=stamp(b), customer_id=who)
                ).reconciliation
                for a, b in ((P1, P2), (P2, P3))
            ]
            assert spans[0].deferred_end == spans[1].deferred_start, who
            assert all(span.reconciles for span in spans), who
        assert spans[0].deferred_end == "40"  # blk's P1


@story(test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement)
def test_the_report_for_every_customer_is_the_sum_of_the_reports_per_customer(server: ServerProcess) -> None:
    """invoices.proto RevenueLine: product lines by product, customer lines by customer, of the same periods; so the
    report for all customers holds each customer's lines, and its product lines and reconciliation are their sums."""
    with server.client() as client:
        everyone = client.invoices.GetRevenueReport(
            invoices_pb2.GetRevenueReportRequest(period_start=stamp(P1), period_end=stamp(P3))
        )
        customers = sorted({line.customer_id for line in everyone.customer_lines})
        assert {ALW, BLK} <= set(customers)
        alone = {who: revenue(client, who) for who in customers}
        assert list(everyone.customer_lines) == [line for who in customers for line in alone[who].customer_lines]
        fields = ("recognized", "recognized_credits", "recognized_overage", "breakage")
        summed: dict[tuple[int, str], list[Decimal]] = {}
        for report in alone.values():
            for line in report.lines:
                key = (line.period_start.ToMilliseconds(), line.product_id)
                row = summed.setdefault(key, [Decimal(0)] * len(fields))
                for n, field in enumerate(fields):
                    row[n] += D(getattr(line, field))
        shown = {
            (line.period_start.ToMilliseconds(), line.product_id): [D(getattr(line, f)) for f in fields]
            for line in everyone.lines
        }
        assert shown == summed
        r = everyone.reconciliation
        for field in (
            "deferred_start",
            "prepaid_sold",
            "recognized_credits",
            "breakage",
            "deferred_end",
            "recognized_overage",
            "recognized",
        ):
            assert D(getattr(r, field)) == sum(
                (D(getattr(a.reconciliation, field)) for a in alone.values()), Decimal(0)
            ), field


@story(test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement)
def test_alerts_fired_once_each_at_the_documented_crossings(server: ServerProcess) -> None:
    with server.client() as client:
        # By customer (the two customers' alerts interleave as the clock recorded a-pre's expiry).
        # alw's and blk's: tests of other customers that run alone first may have fired theirs before.
        ours = [a for a in alerts_through(client, "marker-1") if a.customer_id in (ALW, BLK)]
        seen = sorted(fired(ours), key=lambda a: a[0])
        assert seen == [
            (ALW, "LOW_BALANCE", {"credits_available": "14", "threshold": "30"}),  # a-pre's expiry
            (ALW, "TOP_UP_EXECUTED", {"credits": "86"}),  # e4
            (ALW, "SPEND_THRESHOLD", {"period_charges": "102", "threshold": "100"}),  # e6
            (ALW, "SPEND_THRESHOLD", {"period_charges": "102", "threshold": "100"}),  # e7, after the cut cleared it
            (BLK, "CREDITS_EXHAUSTED", {"credits_available": "0"}),  # h2 took the last 9
            (BLK, "CREDITS_EXHAUSTED", {"credits_available": "0"}),  # b2 took them again after h2's release
        ]
        STATE["alerts"] = [a.SerializeToString(deterministic=True) for a in alerts_through(client, "marker-2")]


@story()
def test_credit_held_on_an_expired_grant_agrees_across_balance_invoice_and_revenue(server: ServerProcess) -> None:
    """balance.proto GrantBalance.remaining: "0 once expired, when what holds still take from it shows in held alone
    (amount = drawn + expired + held then)"; invoices.proto RevenueLine: "credit an open reservation still holds on a
    grant expired by the period's end stays deferred until the hold ends, where the invoice shows it expired"; README
    "Expiry and breakage": the settling event dated before the expiry draws on it, what it leaves breaks with its
    batch. exp: one grant, 50 credits paid 25 (0.5 a credit), expiring seconds from now; input small/us at 1 per 1k
    (versions 1 and 2 alike: it needs no test before it)."""
    with server.client() as client:
        customer(client, EXP, contracts_pb2.ALLOW, "1")
        customer(client, WEX, contracts_pb2.ALLOW, "1")
        expiry_ms = now_ms() + 8_000  # room for a loaded machine
        grant(client, EXP, "g-exp", "50", "25", priority=0, expires_at_ms=expiry_ms)
        # wex: 10 credits all held when they expire, so that nothing breaks and nothing is recorded then; a
        # watcher is still sent the balance (balance.proto WatchBalance: "when a grant on which reservations hold
        # credit expires ... also when they hold all it has left").
        grant(client, WEX, "w-g", "10", "0", priority=0, expires_at_ms=expiry_ms)
        watcher = Watcher(server, WEX)
        all_held = authorize(client, llm("w1", WEX, 0, "small", "us", 10_000, 0), reserve=True, reservation_id="hw")
        assert (all_held.estimated_cost, all_held.credits_available) == ("10", "0")
        ingest(client, llm("x1", EXP, P2 + HOUR_MS, "small", "us", 15_000, 0))  # 15 drawn
        settle = llm("x2", EXP, P2 + 2 * HOUR_MS, "small", "us", 4_000, 0, hold="hx")
        held = authorize(client, llm("x2", EXP, 0, "small", "us", 10_000, 0), reserve=True, reservation_id="hx")
        assert (held.reason, held.estimated_cost, held.credits_available) == ("OK", "10", "25")
        first = client.get_balance(EXP)
        assert now_ms() < expiry_ms, "the machine took longer than the grants' 8 s to rate and hold"
        assert grants_of(first) == {"g-exp": ("50", "15", "35", "10", "0")}
        balance_agrees(client, EXP)
        # Expired: 25 break, the 10 held stay held (and deferred: 25 sold - 7.5 drawn - 12.5 broken = 5).
        assert wait_for(lambda: client.get_balance(EXP).grants[0].expired == "25", timeout_s=30)
        alerts_through(client, "marker-4")  # the expiry recorded by now (any record after it)
        assert wait_for(lambda: now_ms() > expiry_ms + 500, timeout_s=10)
        assert grants_of(client.get_balance(WEX)) == {"w-g": ("10", "0", "0", "10", "0")}
        assert watcher.last_is(client, WEX), "WatchBalance's last message is not GetBalance's answer"
        watcher.close()
        balance = balance_agrees(client, EXP)
        assert grants_of(balance) == {"g-exp": ("50", "15", "0", "10", "25")}
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("10", "10", "0")
        invoice = preview(client, EXP, P2)
        invoice_agrees(client, invoice)
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances] == [
            ("g-exp", "50", "15", "0", "35")
        ]
        line = [x for x in revenue(client, EXP).customer_lines if x.period_start.ToMilliseconds() == P2]
        assert [(x.recognized_credits, x.breakage, x.deferred) for x in line] == [("7.5", "12.5", "5")]
        # The settling event, dated before the expiry, gets the 10 back, draws 4 of them; 6 break with it.
        ingest(client, settle)
        balance = balance_agrees(client, EXP)
        assert grants_of(balance) == {"g-exp": ("50", "19", "0", "0", "31")}
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("0", "0", "0")
        invoice = preview(client, EXP, P2)
        assert invoice_agrees(client, invoice) == {"g-exp": Decimal(19)}
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in invoice.grant_balances] == [
            ("g-exp", "50", "19", "0", "31")
        ]
        line = [x for x in revenue(client, EXP).customer_lines if x.period_start.ToMilliseconds() == P2]
        assert [(x.recognized_credits, x.breakage, x.deferred) for x in line] == [("9.5", "15.5", "0")]


@story(test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement)
def test_a_hold_that_buys_a_top_up_agrees_with_the_event_that_settles_it(server: ServerProcess) -> None:
    """contracts.proto TopUpPolicy: "When a rated event or a hold leaves the customer's available credit below
    threshold, one TOP_UP grant of (recharge_to - available) credits is bought"; balance.proto Authorize: the
    answer's credit is "after this request's own hold, and after the top-up that hold bought"; the settling event is
    charged what was estimated, and draws in burn order. hld: g1 25 credits paid 25; top-up below 5 to 30 at 1."""
    with server.client() as client:
        customer(client, HLD, contracts_pb2.ALLOW, "1")
        grant(client, HLD, "g1", "25", "25", priority=0)
        policy = contracts_pb2.TopUpPolicy(threshold="5", recharge_to="30", price_per_credit="1", max_per_period=3)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"k-{HLD}", top_up=policy))
        ingest(client, llm("y1", HLD, P2 + HOUR_MS, "big", "us", 10_000, 0))  # v2: 2 per 1k = 20 from g1, 5 left
        # The hold: big/eu 5,000 at 4 per 1k = 20, beyond the 5 there are: OVERAGE_ALLOWED, holds the 5; that
        # leaves 0 < 5 available, so it buys 30 - 0 = 30.
        hold = authorize(client, llm("y2", HLD, 0, "big", "eu", 5_000, 0), reserve=True, reservation_id="hy")
        assert (hold.reason, hold.estimated_cost, hold.credits_available) == ("OVERAGE_ALLOWED", "20", "30")
        balance = balance_agrees(client, HLD)
        topups = [g.grant_id for g in balance.grants if g.kind == contracts_pb2.TOP_UP]
        assert len(topups) == 1
        topup = topups[0]
        assert grants_of(balance) == {"g1": ("25", "20", "5", "5", "0"), topup: ("30", "0", "30", "0", "0")}
        assert (balance.credits_remaining, balance.credits_held, balance.credits_available) == ("35", "5", "30")
        assert authorize(client, image("x", HLD, 0)).credits_available == "30"
        invoice = preview(client, HLD, P2)
        invoice_agrees(client, invoice)
        assert (invoice.top_up_purchases, invoice.total_due) == ("30.00", "30.00")
        # Settled: the 5 held come back, the 20 draw g1's 5 then 15 of the top-up.
        ingest(client, llm("y2", HLD, P2 + 2 * HOUR_MS, "big", "eu", 5_000, 0, hold="hy"))
        assert charged(client, HLD, P2) == {"y1": "20", "y2": "20"}
        drawn = [
            [(d.grant_id, d.credits) for d in e.draws]
            for e in explain(client, HLD, P2, "in_tok;model=big;region=eu")
            if e.transaction_id == "y2"
        ]
        assert drawn == [[("g1", "5"), (topup, "15")]]
        balance = balance_agrees(client, HLD)
        assert grants_of(balance) == {"g1": ("25", "25", "0", "0", "0"), topup: ("30", "15", "15", "0", "0")}
        assert invoice_agrees(client, preview(client, HLD, P2)) == {"g1": Decimal(25), topup: Decimal(15)}
        # Revenue: g1 sold 25 in P1 (from the contract's start), nothing drawn there; P2 sells the top-up (30) and
        # recognises 25 + 15 = 40: deferred 25 + 30 - 40 = 15, the top-up's 15 left at 1.
        rows = [
            (x.period_start.ToMilliseconds(), x.recognized_credits, x.deferred)
            for x in revenue(client, HLD).customer_lines
        ]
        assert rows == [(P1, "0", "25"), (P2, "40", "15")]
        assert revenue(client, HLD).reconciliation.prepaid_sold == "55"


@story(test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement)
def test_an_open_hold_through_a_cohort_re_rating_agrees_across_balance_release_and_invoice(
    server: ServerProcess,
) -> None:
    """pricing.proto PublishVersionRequest: open holds "take their place in time", a top-up pays only the charges
    beyond those at which it was bought; AuthorizeRequest.reserve: the release "gives back what it holds now".
    rrh: rg1 25 credits paid 25, top-up below 5 to 30 at 1; version 3 (big/us input at 1 per 1k) for rrh alone."""
    with server.client() as client:
        customer(client, RRH, contracts_pb2.ALLOW, "1")
        grant(client, RRH, "rg1", "25", "25", priority=0)
        policy = contracts_pb2.TopUpPolicy(threshold="5", recharge_to="30", price_per_credit="1", max_per_period=3)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"k-{RRH}", top_up=policy))
        # r1: 10,000 big/us at v2's 2 per 1k = 20 (rg1, 5 left); r2: 5,000 = 10: rg1's 5 and 5 overage, leaving 0:
        # a top-up of 30 bought at charges of 30.
        ingest(client, llm("r1", RRH, P2 + HOUR_MS, "big", "us", 10_000, 0))
        ingest(client, llm("r2", RRH, P2 + 2 * HOUR_MS, "big", "us", 5_000, 0))
        topup = next(g.grant_id for g in client.get_balance(RRH).grants if g.kind == contracts_pb2.TOP_UP)
        # The hold: 2,500 big/eu at 4 per 1k = 10, on the top-up.
        hold = authorize(client, llm("r3", RRH, 0, "big", "eu", 2_500, 0), reserve=True, reservation_id="hz")
        assert (hold.reason, hold.estimated_cost, hold.credits_available) == ("OK", "10", "20")
        assert grants_of(balance_agrees(client, RRH)) == {
            "rg1": ("25", "25", "0", "0", "0"),
            topup: ("30", "0", "30", "10", "0"),
        }
        draft_big_us_input(client, based_on_version=2, price="1")
        published = client.pricing.PublishVersion(
            pricing_pb2.PublishVersionRequest(
                rate_card_id="ai", version=3, effective_from=stamp(P2), cohort=pricing_pb2.Cohort(customer_ids=[RRH])
            )
        )
        assert (published.customers_rerated, published.rerated_amount_delta) == (1, "-15")
        # Settled again: r1 10 and r2 5 from rg1 (charges 15, below the 30 the top-up was bought at: withheld);
        # the hold, made after both, is taken again in burn order from what is left: rg1's 10.
        balance = balance_agrees(client, RRH)
        assert grants_of(balance) == {"rg1": ("25", "15", "10", "10", "0"), topup: ("30", "0", "30", "0", "0")}
        assert (balance.period_charges, balance.overage_amount) == ("15", "0")
        assert invoice_agrees(client, preview(client, RRH, P2)) == {"rg1": Decimal(15)}
        assert authorize(client, image("x", RRH, 0)).credits_available == balance.credits_available == "30"
        assert release(client, RRH, "hz") == balance.credits_held == "10"
        # Revenue reads the settled draws: rg1 sold 25 in P1; P2 sells the top-up (30) and recognises rg1's 15.
        rows = [
            (x.period_start.ToMilliseconds(), x.recognized, x.deferred) for x in revenue(client, RRH).customer_lines
        ]
        assert rows == [(P1, "0", "25"), (P2, "15", "40")]
        balance = balance_agrees(client, RRH)
        assert grants_of(balance)["rg1"] == ("25", "15", "10", "0", "0")
        assert balance.credits_available == "40"


@story()
def test_a_grant_rolled_over_at_an_ended_period_agrees_across_balance_invoices_and_revenue(
    server: ServerProcess,
) -> None:
    """contracts.proto Grant.rollover_fraction and README "Rollover": a grant with a rollover_fraction lasts until the
    end of the period it starts in, where the share moves into a ROLLOVER grant usable until the next period's end
    and the rest breaks; GrantBalance.drawn: "for a grant that rolled over, also what moved into its ROLLOVER
    grant"; InvoiceGrantBalance the same; revenue: "credits a grant rolled over at the period's end stay deferred".
    rol: ro-g 100 credits paid 50, fraction 0.5, starting with the contract in P1 (already ended): 50 roll, 50 break
    at once; then 10 of P2 usage draw on the ROLLOVER grant."""
    with server.client() as client:
        customer(client, ROL, contracts_pb2.ALLOW, "1")
        new = contracts_pb2.Grant(
            id="ro-g",
            contract_id=f"k-{ROL}",
            kind=contracts_pb2.PREPAID,
            amount="100",
            paid_amount="50",
            rollover_fraction="0.5",
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=new))
        ingest(client, llm("o1", ROL, P2 + HOUR_MS, "small", "us", 10_000, 0))  # 10 credits at 1 per 1k
        balance = balance_agrees(client, ROL)
        rolled = f"rollover-ro-g-{P2}"
        assert grants_of(balance) == {"ro-g": ("100", "50", "0", "0", "50"), rolled: ("50", "10", "40", "0", "0")}
        p1 = preview(client, ROL, P1)
        invoice_agrees(client, p1)
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in p1.grant_balances] == [
            ("ro-g", "100", "50", "0", "50")
        ]
        p2 = preview(client, ROL, P2)
        assert invoice_agrees(client, p2) == {rolled: Decimal(10)}
        # The draft shows the ROLLOVER grant as closing will: it expires at P2's end, its 40 left expired then. ro-g,
        # which broke in P1, stays listed: leaving it out would change the sum of expired (Invoice.grant_balances).
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in p2.grant_balances] == [
            ("ro-g", "100", "50", "0", "50"),
            (rolled, "50", "10", "0", "40"),
        ]
        # And so on every later invoice: the draft of P3 (the contract's next period) lists both, as broken.
        p3 = preview(client, ROL, P3 + HOUR_MS)
        assert [(g.grant_id, g.granted, g.drawn, g.remaining, g.expired) for g in p3.grant_balances] == [
            ("ro-g", "100", "50", "0", "50"),
            (rolled, "50", "10", "0", "40"),
        ]
        # Sold 50 in P1; 50 broken at 0.5 = 25 in P1, the rolled 25 stay deferred; P2 recognises 10 x 0.5 = 5.
        rows = [
            (x.period_start.ToMilliseconds(), x.recognized, x.breakage, x.deferred)
            for x in revenue(client, ROL).customer_lines
        ]
        assert rows == [(P1, "0", "25", "25"), (P2, "5", "0", "20")]


@story()
def test_a_hold_whose_ttl_runs_out_gives_back_what_the_alert_says(server: ServerProcess) -> None:
    """alerts.proto RESERVATION_EXPIRED: details "released (the credits the hold gave back)"; the balance gets them
    back. ttl: t-g 10 promotional credits; a hold of 3 (3,000 small/us input) for 3 s (room to read it held on a loaded machine)."""
    with server.client() as client:
        customer(client, TTL, contracts_pb2.ALLOW, "1")
        grant(client, TTL, "t-g", "10", "0", priority=0)
        client.alerts.CreateAlert(
            alerts_pb2.CreateAlertRequest(customer_id=TTL, type=alerts_pb2.RESERVATION_EXPIRED, id="ttl-expired")
        )
        hold = authorize(
            client, llm("t1", TTL, 0, "small", "us", 3_000, 0), reserve=True, reservation_id="ht", reservation_ttl_s=3
        )
        assert (hold.estimated_cost, hold.credits_available) == ("3", "7")
        assert grants_of(balance_agrees(client, TTL)) == {"t-g": ("10", "0", "10", "3", "0")}
        assert wait_for(lambda: client.get_balance(TTL).credits_held == "0", timeout_s=30)
        expired = [a for a in alerts_through(client, "marker-5") if a.customer_id == TTL]
        assert [(alerts_pb2.AlertType.Name(a.type), a.details["released"]) for a in expired] == [
            ("RESERVATION_EXPIRED", "3")
        ]
        balance = balance_agrees(client, TTL)
        assert grants_of(balance) == {"t-g": ("10", "0", "10", "0", "0")}
        assert balance.credits_available == "10"


@story(test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement)
def test_a_contract_switch_splits_the_month_alike_in_invoices_balance_and_revenue(server: ServerProcess) -> None:
    """contracts.proto Contract.ending_before and README "Contract switches": the old contract's last period keeps
    its monthly end and holds the usage before the switch, the new contract's periods start at the switch; a flat
    fee is charged in both; InvoiceGrantBalance.drawn: "Drawn by the usage of this period and every earlier one";
    RevenueLine: the old line's deferred "leaves that period's draws out (they are the next line's)". sw: s-g 100
    credits paid 100 from P1; k1 from P1 to P1 + 20 days, k2 from there."""
    switch_ms = P1 + 20 * 24 * HOUR_MS
    with server.client() as client:
        c = contracts_pb2
        client.contracts.CreateCustomer(c.CreateCustomerRequest(id=SW))
        for contract_id, start_ms in ((f"k-{SW}", P1), (f"k2-{SW}", switch_ms)):
            request = c.CreateContractRequest(
                id=contract_id, customer_id=SW, rate_card_id="ai", starting_at=stamp(start_ms), overage_price="1"
            )
            if start_ms == P1:
                request.ending_before.CopyFrom(stamp(switch_ms))
            client.contracts.CreateContract(request)
        grant(client, SW, "s-g", "100", "100", priority=0)
        # s1 under k1: 30,000 small/us = 30, output 1,000: 5 + 6 = 11; 41. s2 under k2 (before P1's monthly end):
        # 20 + 11 (the flat fee again, a new period) = 31. s3 under k2 in P2's first day: v2 big/us 2 per 1k = 20.
        ingest(
            client,
            llm("s1", SW, P1 + 2 * 24 * HOUR_MS, "small", "us", 30_000, 1_000),
            llm("s2", SW, P1 + 25 * 24 * HOUR_MS, "small", "us", 20_000, 1_000),
            llm("s3", SW, P2 + HOUR_MS, "big", "us", 10_000, 0),
        )
        old = preview(client, SW, P1)
        new = preview(client, SW, P1 + 25 * 24 * HOUR_MS)
        assert (old.contract_id, old.period_start.ToMilliseconds(), old.period_end.ToMilliseconds()) == (
            f"k-{SW}",
            P1,
            P2,
        )
        assert (new.contract_id, new.period_start.ToMilliseconds()) == (f"k2-{SW}", switch_ms)
        assert invoice_agrees(client, old) == {"s-g": Decimal(41)}
        assert invoice_agrees(client, new) == {"s-g": Decimal(51)}
        assert (old.subtotal, new.subtotal) == ("41", "51")
        assert [(g.grant_id, g.drawn, g.remaining) for g in old.grant_balances] == [("s-g", "41", "59")]
        assert [(g.grant_id, g.drawn, g.remaining) for g in new.grant_balances] == [("s-g", "92", "8")]
        balance = balance_agrees(client, SW)
        # The balance's period is k2's in force now: its first (51 charged), or from the 21st its second (none).
        second_ms = _next_month_ms(switch_ms)
        current = (switch_ms, "51") if now_ms() < second_ms else (second_ms, "0")
        assert (balance.period_start.ToMilliseconds(), balance.period_charges) == current
        assert grants_of(balance)["s-g"] == ("100", "92", "8", "0", "0")
        rows = [(x.period_start.ToMilliseconds(), x.recognized, x.deferred) for x in revenue(client, SW).customer_lines]
        # k2's second period (a month after the switch, before P3) starts in the span too: nothing in it.
        assert rows == [(P1, "41", "59"), (switch_ms, "51", "8"), (second_ms, "0", "8")]


@story()
def test_thresholds_met_exactly_fire_spend_but_not_low_balance(server: ServerProcess) -> None:
    """README "Watching balances and alerts": "A threshold met exactly is SPEND_THRESHOLD's condition (charges reach
    it) and not LOW_BALANCE's (a balance equal to it is not below it)", and each fires once until cleared. thr: 10
    promotional credits; LOW_BALANCE below 4, SPEND_THRESHOLD at 6."""
    with server.client() as client:
        customer(client, THR, contracts_pb2.ALLOW, "1")
        grant(client, THR, "th-g", "10", "0", priority=0)
        for rule_id, kind, threshold in (
            ("thr-low", alerts_pb2.LOW_BALANCE, "4"),
            ("thr-spend", alerts_pb2.SPEND_THRESHOLD, "6"),
        ):
            client.alerts.CreateAlert(
                alerts_pb2.CreateAlertRequest(customer_id=THR, type=kind, threshold=threshold, id=rule_id)
            )
        ingest(client, llm("t1", THR, P2 + HOUR_MS, "small", "us", 6_000, 0))  # 6: available 4, charges 6
        ingest(client, llm("t2", THR, P2 + HOUR_MS, "small", "us", 1, 0))  # 0.001: available 3.999
        ingest(client, llm("t3", THR, P2 + HOUR_MS, "small", "us", 1, 0))  # 0.001: available 3.998
        balance = balance_agrees(client, THR)
        assert (balance.credits_available, balance.period_charges) == ("3.998", "6.002")
        seen = [a for a in alerts_through(client, "marker-6") if a.customer_id == THR]
        assert fired(seen) == [
            (THR, "SPEND_THRESHOLD", {"period_charges": "6", "threshold": "6"}),
            (THR, "LOW_BALANCE", {"credits_available": "3.999", "threshold": "4"}),
        ]


@story(*STORY)
def test_each_grants_recognized_revenue_sums_to_the_report(server: ServerProcess) -> None:
    """balance.proto GrantBalance.recognized_revenue: "Revenue recognised from this grant's draws by usage: drawn x
    paid_amount / amount", what rolled over left out; the report's recognized_credits over every period holding
    the draws (P1 and P2, and sw's periods, all starting in [P1, P3)) is their sum."""
    with server.client() as client:
        for who in (ALW, BLK, EXP, HLD, RRH, ROL, TTL, SW, WEX, THR):
            grants = client.get_balance(who).grants
            total = sum((D(g.recognized_revenue) for g in grants), Decimal(0))
            assert D(revenue(client, who).reconciliation.recognized_credits) == total, who


@story(test_period_close_and_a_retroactive_publish_keep_every_read_in_agreement)
def test_overrides_on_the_tiered_product_price_alike_in_authorize_explain_invoice_and_simulate(
    server: ServerProcess,
) -> None:
    """contracts.proto PriceOverride: a multiplier "multiplies the amount the rate card's price gives for the
    period's cumulative quantity (every price model, tiers and flat fees included)"; a price on a TIERED rate is "a
    flat unit price per the rate's per_units for the whole quantity; the tiers and their flat fees are dropped".
    ovm: out_tok x 0.5; ovp: out_tok at 2 per 1k. 3,000 output tokens then 9,000 more (to 12,000)."""
    with server.client() as client:
        for who, field in ((OVM, "multiplier"), (OVP, "price")):
            customer(client, who, contracts_pb2.ALLOW, "1")
            override = contracts_pb2.PriceOverride(product_id="out_tok")
            setattr(override, field, "0.5" if field == "multiplier" else "2")
            client.contracts.AddOverride(contracts_pb2.AddOverrideRequest(contract_id=f"k-{who}", override=override))
        # ovm: (5 + 18) x 0.5 = 11.5, then (5 + 60 + 6) x 0.5 - 11.5 = 24. ovp: 6, then 18.
        for who, costs in ((OVM, ("11.5", "24")), (OVP, ("6", "18"))):
            events = [
                llm(f"{who}-1", who, P2 + HOUR_MS, "small", "us", 0, 3_000),
                llm(f"{who}-2", who, P2 + 2 * HOUR_MS, "small", "us", 0, 9_000),
            ]
            for event, cost in zip(events, costs, strict=True):
                assert authorize(client, event).estimated_cost == cost, who
                ingest(client, event)
            assert charged(client, who, P2) == {f"{who}-1": costs[0], f"{who}-2": costs[1]}
            invoice = preview(client, who, P2)
            invoice_agrees(client, invoice)
            total = D(costs[0]) + D(costs[1])
            assert by_product(invoice)["out_tok"] == total
            assert simulate_current(client, who, 2)["out_tok"] == total


def reads(client: TariffClient) -> dict[str, bytes]:
    out: dict[str, bytes] = {}

    def put(name: str, message: Message) -> None:
        out[name] = message.SerializeToString(deterministic=True)

    for who in (ALW, BLK, EXP, HLD, RRH, ROL, TTL, SW, WEX, THR, OVM, OVP):
        put(f"balance {who}", client.get_balance(who))
        put(f"revenue {who}", revenue(client, who))
        for period in (P1, P2):
            invoice = preview(client, who, period)
            put(f"preview {who} {period}", invoice)
            for line in invoice.lines:
                start_ms = invoice.period_start.ToMilliseconds()
                for n, event in enumerate(explain(client, who, start_ms, line.line_id)):
                    put(f"explain {who} {period} {line.line_id} {n}", event)
    put("invoices", client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest()))
    for version in (1, 2):
        request = pricing_pb2.SimulateVersionRequest(
            rate_card_id="ai", version=version, period_start=stamp(P1), period_end=stamp(P3), customer_ids=[ALW, BLK]
        )
        put(f"simulate {version}", client.pricing.SimulateVersion(request))
    put("rules", client.alerts.ListAlertRules(alerts_pb2.ListAlertRulesRequest()))
    return out


@story(*STORY)
def test_a_clean_restart_answers_every_read_byte_for_byte(server: ServerProcess) -> None:
    with server.client() as client:
        before = reads(client)
    server.restart()
    with server.client() as client:
        after = reads(client)
        assert {k for k in before if before[k] != after.get(k)} == set()
        assert [a.SerializeToString(deterministic=True) for a in alerts_through(client, "marker-3")][
            : len(STATE["alerts"])
        ] == STATE["alerts"]


@story(*STORY)
def test_close_due_periods_closes_as_previewed_and_a_kill_restart_replays_every_read(server: ServerProcess) -> None:
    """invoices.proto: CloseDuePeriods closes "each as ClosePeriod would" (the draft and the final equal but for
    invoice_number, status and closed_at); blk's P1 revenue line does not change by its close. README
    "Reliability": after kill -9 the journal replays to the same state."""
    with server.client() as client:
        draft = preview(client, BLK, P1)
        before_line = [line for line in revenue(client, BLK).customer_lines if line.period_start.ToMilliseconds() == P1]
        span = invoices_pb2.GetRevenueReportRequest(period_start=stamp(P1), period_end=stamp(P3))
        before_all = client.invoices.GetRevenueReport(span)
        made = client.invoices.CloseDuePeriods(invoices_pb2.CloseDuePeriodsRequest())
        # Closing moves no money: every customer's revenue reads as before (sw's old contract's P1 closed too).
        assert client.invoices.GetRevenueReport(span) == before_all
        listed = client.invoices.ListInvoices(invoices_pb2.ListInvoicesRequest(page_size=1000)).invoices
        numbers = [i.invoice_number for i in made.invoices]
        assert [i for i in listed if i.invoice_number in numbers] == list(made.invoices)
        assert f"k-{SW}" in [i.contract_id for i in made.invoices]
        final = [i for i in made.invoices if i.customer_id == BLK]
        assert len(final) == 1
        closed = invoices_pb2.Invoice()
        closed.CopyFrom(final[0])
        assert preview(client, BLK, P1) == closed
        for field in ("invoice_number", "status", "closed_at"):
            closed.ClearField(field)
            draft.ClearField(field)
        assert closed == draft
        after_line = [line for line in revenue(client, BLK).customer_lines if line.period_start.ToMilliseconds() == P1]
        assert after_line == before_line
        before = reads(client)
    server.kill9()
    server.start()
    with server.client() as client:
        after = reads(client)
        assert {k for k in before if before[k] != after.get(k)} == set()


@story(*STORY)
def test_a_rollback_keeps_every_read_of_every_customer_in_agreement(server: ServerProcess) -> None:
    """pricing.proto RollbackRateCard: a copy of version 1 published from P2 through PublishVersion's path, re-rating
    every customer outside cohorts (rrh too: the copy, published later, takes over from its cohort's version 3 at
    the same hour). Every identity above holds for every customer; alw and blk by hand: alw's big/us input line back
    to 60 (two adjustments: 60 -> 40, 40 -> 60), P2's charges 71 + 26 + 5 + 20 = 122, the top-up released once the
    charges reach the 71 it was bought at (the end of e4's hour): it pays 26 + 5 + 20 = 51, overage 71 (35.5
    USD); blk back to 41 + 30 = 71, b-pre's 50 drawn, 21 overage. A clean restart then answers the same."""
    with server.client() as client:
        answer = client.pricing.RollbackRateCard(
            pricing_pb2.RollbackRateCardRequest(rate_card_id="ai", to_version=1, effective_from=stamp(P2))
        )
        assert answer.version.rollback_to_version == 1
        for who in (ALW, BLK, EXP, HLD, RRH, ROL, TTL, SW, WEX, THR, OVM, OVP):
            balance = balance_agrees(client, who)
            for period in (P1, P2):
                invoice_agrees(client, preview(client, who, period))
            report = revenue(client, who)
            assert report.reconciliation.reconciles, who
            total = sum((D(g.recognized_revenue) for g in balance.grants), Decimal(0))
            assert D(report.reconciliation.recognized_credits) == total, who
        topup = STATE["topup"]
        balance = client.get_balance(ALW)
        assert grants_of(balance)[topup] == ("86", "51", "35", "0", "0")
        assert (balance.period_charges, balance.overage_amount, balance.overage_due) == ("122", "71", "35.5")
        line = {x.line_id: x for x in preview(client, ALW, P2).lines}["in_tok;model=big;region=us"]
        assert [(a.old_amount, a.new_amount) for a in line.adjustments] == [("60", "40"), ("40", "60")]
        balance = client.get_balance(BLK)
        assert grants_of(balance) == {"b-pre": ("50", "50", "0", "0", "0")}
        assert (balance.period_charges, balance.overage_amount) == ("71", "21")
        before = reads(client)
    server.restart()
    with server.client() as client:
        after = reads(client)
        assert {k for k in before if before[k] != after.get(k)} == set()
