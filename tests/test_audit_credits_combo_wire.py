"""An acceptance audit of prepaid credits, holds, invoices and recognised revenue TOGETHER, over the wire against a
real server (README "Credits and the gateway", "Invoices and revenue", "Revenue"; balance.proto, contracts.proto,
invoices.proto, usage.proto): several grants of different priorities, expiries, product lists and cost bases, a
rollover at a period's end, a hold outstanding across a grant's expiry and settled by an event dated before it,
multi-product events, a gauge whose falls give back overage then credit; then GetBalance, the drafts, the final
invoice and the revenue report must agree with each other and with amounts computed by hand (the arithmetic is in
each docstring), also after kill -9 and after a restart from a snapshot. The single-feature audits
(test_audit_credits*_wire.py, test_audit_holds*_wire.py, test_audit_revenue*_wire.py, test_audit_invoices*_wire.py,
test_audit_rollover2_wire.py) are not repeated.

Products (card `combo`, credits): `a` (event type `job`, SUM of `n`) at 1 credit a unit, `b` (event type `job`,
SUM of `m`) at 2, so a `job` with n=x, m=y costs x + 2y; `lvl` (event type `gauge`, LATEST of `level`) at 1, so a
gauge reading costs (new level - previous level), negative when it falls; `mix-level` (LATEST of `level`) and
`mix-sum` (SUM of `n`) at 1, both of event type `mix`, so one `mix` event can refund and charge at once. `--close-grace off`: the server closes
nothing by itself. Contracts start last month (periods: last month, then this month); overage at 0.5 USD a credit.
Grant ids are server-wide, so each is `<customer>.<name>`."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.serverproc import ServerFactory, ServerProcess, wait_for
from tests.test_audit_topups_wire import month_start_ms

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
CARD = "combo"


def catalogue(client: TariffClient) -> None:
    pricing = client.pricing
    for product_id, event_type, aggregation, key in (
        ("a", "job", pricing_pb2.SUM, "n"),
        ("b", "job", pricing_pb2.SUM, "m"),
        ("lvl", "gauge", pricing_pb2.LATEST, "level"),
        ("mix-level", "mix", pricing_pb2.LATEST, "level"),
        ("mix-sum", "mix", pricing_pb2.SUM, "n"),
    ):
        product = pricing_pb2.Product(id=product_id, event_type=event_type, aggregation=aggregation, value_key=key)
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=CARD, pricing_unit="credits"))
    rates = [
        pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price=price))
        for p, price in (("a", "1"), ("b", "2"), ("lvl", "1"), ("mix-level", "1"), ("mix-sum", "1"))
    ]
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id=CARD, upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id=CARD, version=1, effective_from=stamp(month_start_ms(3)))
    )


def start(server_factory: ServerFactory, name: str, *extra: str) -> ServerProcess:
    server = server_factory(name=name, extra_args=["--close-grace", "off", *extra])
    with server.client() as client:
        catalogue(client)
    return server


def customer(client: TariffClient, customer_id: str, starting_ms: int | None = None) -> None:
    """The customer, on an ALLOW contract (overage 0.5 USD) from `starting_ms` (by default the previous month's start)."""
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-c",
            customer_id=customer_id,
            rate_card_id=CARD,
            starting_at=stamp(month_start_ms(1) if starting_ms is None else starting_ms),
            overage_policy=contracts_pb2.ALLOW,
            overage_price="0.5",
            currency="USD",
        )
    )


def grant(
    client: TariffClient,
    customer_id: str,
    name: str,
    amount: str,
    paid: str,
    priority: int,
    *,
    products: tuple[str, ...] = (),
    expires_at_ms: int | None = None,
    rollover_fraction: str = "",
) -> None:
    made = contracts_pb2.Grant(
        id=f"{customer_id}.{name}",
        contract_id=f"{customer_id}-c",
        kind=contracts_pb2.PREPAID if paid != "0" else contracts_pb2.PROMOTIONAL,
        amount=amount,
        paid_amount=paid,
        priority=priority,
        applicable_product_ids=list(products),
        rollover_fraction=rollover_fraction,
    )
    if expires_at_ms is not None:
        made.expires_at.CopyFrom(stamp(expires_at_ms))
    client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=made))


def job(
    transaction_id: str, customer_id: str, n: float, m: float, at_ms: int, reservation_id: str = ""
) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="job",
        timestamp_ms=at_ms,
        values={"n": n, "m": m},
        reservation_id=reservation_id,
    )


def gauge(transaction_id: str, customer_id: str, level: float, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="gauge",
        timestamp_ms=at_ms,
        values={"level": level},
    )


def use(client: TariffClient, *events: usage_pb2.UsageEvent) -> None:
    """Each event its own batch, in the order given (a LATEST gauge's readings in time order)."""
    for one in events:
        ack = client.ingest_batch([one])
        assert ack.accepted == 1 and not ack.notices, ack


def plain(x: str) -> str:
    return format(Decimal(x).normalize(), "f")


Grants = dict[str, tuple[str, str, str, str, str]]


def grants(balance: balance_pb2.Balance, customer_id: str) -> Grants:
    """grant id without `<customer>.` -> (amount, drawn, remaining, held, expired), exact decimals normalised."""
    prefix = f"{customer_id}."
    return {
        g.grant_id.removeprefix(prefix): tuple(  # type: ignore[misc]
            plain(x) for x in (g.amount, g.drawn, g.remaining, g.held, g.expired)
        )
        for g in balance.grants
    }


def lines(invoice: invoices_pb2.Invoice, customer_id: str) -> dict[str, tuple[str, str, str, dict[str, str], str]]:
    """line id -> (quantity, amount, overage, credits per grant, amount_due)."""
    prefix = f"{customer_id}."
    return {
        line.line_id: (
            plain(line.quantity),
            plain(line.amount),
            plain(line.overage),
            {c.grant_id.removeprefix(prefix): plain(c.credits) for c in line.credits_applied if Decimal(c.credits)},
            line.amount_due,
        )
        for line in invoice.lines
    }


def balances(invoice: invoices_pb2.Invoice, customer_id: str) -> dict[str, tuple[str, str, str, str]]:
    """grant id -> (granted, drawn, remaining, expired) on the invoice."""
    prefix = f"{customer_id}."
    return {
        g.grant_id.removeprefix(prefix): tuple(  # type: ignore[misc]
            plain(x) for x in (g.granted, g.drawn, g.remaining, g.expired)
        )
        for g in invoice.grant_balances
    }


def preview(client: TariffClient, customer_id: str, at_ms: int) -> invoices_pb2.Invoice:
    found: invoices_pb2.Invoice = client.invoices.PreviewInvoice(
        invoices_pb2.PreviewInvoiceRequest(customer_id=customer_id, period_start=stamp(at_ms))
    )
    return found


def revenue(client: TariffClient, customer_id: str, start_ms: int, end_ms: int) -> invoices_pb2.RevenueReport:
    found: invoices_pb2.RevenueReport = client.invoices.GetRevenueReport(
        invoices_pb2.GetRevenueReportRequest(
            period_start=stamp(start_ms), period_end=stamp(end_ms), customer_id=customer_id
        )
    )
    return found


def money(*values: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(v) for v in values)


def run_scenario(client: TariffClient, c: str, pause: Callable[[], TariffClient] | None = None) -> tuple[int, int]:
    """Last month (NOV) and this month (DEC) stand for the two periods. Grants, all from the contract's start:
    gA 10 credits paid 3 (0.3 a credit), priority 1, for `a` only, expiring a few seconds from now; gB 20 paid 10
    (0.5), priority 2; gP 6 promotional, priority 1; gR 8 paid 4 (0.5), priority 0, for `b` only, rolling over half.
    DEC has begun, so gR rolls over as soon as it is granted: 4 credits into rollover-<c>.gR-<DEC> (priority 0,
    `b` only, cost 0.5, usable in DEC), 4 broken in NOV.

    NOV 10: job n=3 m=1: a 3 from gA (priority 1, the earlier expiry before gP); b 2 from gP (gR's own credit
    is gone, the ROLLOVER grant starts in DEC).
    DEC, before gA expires: job n=4 m=3: a 4 from gA (gA drawn 7); b 6: 4 from the ROLLOVER grant (priority 0),
    2 from gP (gP drawn 4). gauge 5: lvl 5: gP 2 (drawn 6), gB 3. Hold h1 for job n=2: a 2 held on gA (3 left,
    1 available), so 18 available to `job` (which feeds `a` and `b`): gA 1 + gB 17.
    gA expires: 1 breaks, 2 stay held. The event settling h1, dated before the expiry, job n=1: the hold comes
    back, a 1 drawn from gA (drawn 8), the other 1 breaks with the batch (gA expired 2).
    After the expiry: gauge 2: lvl -3: no overage to give back, so credit in reverse burn order: gB 3 (drawn 0;
    lvl keeps gP 2). job n=25: a 25: gB 20, overage 5. gauge 9: lvl +7, all overage. gauge 4: lvl -5, given
    back from lvl's own overage (lvl overage 2).
    `pause`, when given, is called while h1 is held and before gA expires, and answers the client to go on with
    (a server restarted after the expiry, say). Answers (NOV start, DEC start)."""
    nov, dec = month_start_ms(1), month_start_ms(0)
    customer(client, c)
    expiry_ms = now_ms() + 6_000
    grant(client, c, "gA", "10", "3", 1, products=("a",), expires_at_ms=expiry_ms)
    grant(client, c, "gB", "20", "10", 2)
    grant(client, c, "gP", "6", "0", 1)
    grant(client, c, "gR", "8", "4", 0, products=("b",), rollover_fraction="0.5")
    use(client, job(f"{c}-nov", c, 3, 1, nov + 9 * DAY_MS))
    before = now_ms()
    use(client, job(f"{c}-e1", c, 4, 3, before), gauge(f"{c}-e2", c, 5, before + 1))
    request = balance_pb2.AuthorizeRequest(
        customer_id=c, event_type="job", values={"n": 2, "m": 0}, reserve=True, reservation_id="h1"
    )
    held = client.balance.Authorize(request)
    assert (held.allowed, held.reason, held.estimated_cost, held.credits_available) == (True, "OK", "2", "18"), held
    assert now_ms() < expiry_ms, "the setup took longer than the grant's life: nothing here was tested"
    if pause is not None:
        client = pause()
    assert wait_for(lambda: grants(client.get_balance(c), c)["gA"][4] == "1", 20), client.get_balance(c)
    assert grants(client.get_balance(c), c)["gA"] == ("10", "7", "0", "2", "1")
    use(client, job(f"{c}-e3", c, 1, 0, before + 2, reservation_id="h1"))
    after = max(now_ms(), expiry_ms + 1)
    use(
        client,
        gauge(f"{c}-e4", c, 2, after),
        job(f"{c}-e5", c, 25, 0, after + 1),
        gauge(f"{c}-e6", c, 9, after + 2),
        gauge(f"{c}-e7", c, 4, after + 3),
    )
    return nov, dec


def rollover_id(c: str, dec: int) -> str:
    return f"rollover-{c}.gR-{dec}"


def check_balance(client: TariffClient, c: str, dec: int) -> None:
    """DEC: a 30 (4 + 1 + 25), b 6, lvl 4 (its level): 40 charged; overage a 5 and lvl 2: 7, due 3.5 USD. Every
    grant is used up, broken or expired: nothing remains or is held."""
    balance = client.get_balance(c)
    assert grants(balance, c) == {
        "gA": ("10", "8", "0", "0", "2"),
        "gB": ("20", "20", "0", "0", "0"),
        "gP": ("6", "6", "0", "0", "0"),
        "gR": ("8", "4", "0", "0", "4"),
        rollover_id(c, dec).removeprefix(f"{c}."): ("4", "4", "0", "0", "0"),
    }, balance
    assert money(balance.period_charges, balance.overage_amount, balance.overage_due) == money("40", "7", "3.5")
    assert money(balance.credits_remaining, balance.credits_held, balance.credits_available) == money("0", "0", "0")


def check_invoices(client: TariffClient, c: str, nov: int, dec: int) -> None:
    """NOV: a 3 (gA 3), b 2 (gP 2), nothing due. Its balances: gA 3 drawn (it expires in DEC), gP 2, gB none,
    gR 4 drawn (rolled over) and 4 expired.
    DEC: a 30 = gA 5 + gB 20 + overage 5 (2.50 due); b 6 = ROLLOVER 4 + gP 2; lvl 4 = gP 2 + overage 2 (1.00 due).
    Subtotal 40, overage 7, 3.50 due, no top-up."""
    roll = rollover_id(c, dec).removeprefix(f"{c}.")
    november = preview(client, c, nov)
    assert lines(november, c) == {
        "a": ("3", "3", "0", {"gA": "3"}, "0.00"),
        "b": ("1", "2", "0", {"gP": "2"}, "0.00"),
    }
    assert balances(november, c) == {
        "gA": ("10", "3", "7", "0"),
        "gB": ("20", "0", "20", "0"),
        "gP": ("6", "2", "4", "0"),
        "gR": ("8", "4", "0", "4"),
    }
    assert (november.subtotal, november.overage_amount, november.total_due) == ("5", "0", "0.00")
    december = preview(client, c, dec)
    assert lines(december, c) == {
        "a": ("30", "30", "5", {"gA": "5", "gB": "20"}, "2.50"),
        "b": ("3", "6", "0", {roll: "4", "gP": "2"}, "0.00"),
        "lvl": ("4", "4", "2", {"gP": "2"}, "1.00"),
    }
    assert {g.grant_id.removeprefix(f"{c}."): Decimal(g.credits) for g in december.credits_applied} == {
        "gA": 5,
        "gB": 20,
        "gP": 4,
        roll: 4,
    }
    assert balances(december, c) == {
        "gA": ("10", "8", "0", "2"),
        "gB": ("20", "20", "0", "0"),
        "gP": ("6", "6", "0", "0"),
        "gR": ("8", "4", "0", "4"),
        roll: ("4", "4", "0", "0"),
    }
    assert money(december.subtotal, december.overage_amount) == money("40", "7")
    assert (december.overage_due, december.top_up_purchases, december.total_due, december.rounding_adjustment) == (
        "3.50",
        "0.00",
        "3.50",
        "0.00",
    )


def check_revenue(client: TariffClient, c: str, nov: int, dec: int) -> None:
    """Sold in NOV: gA 3 + gB 10 + gR 4 = 17 (gP is free; the ROLLOVER grant is no sale). NOV: recognised gA 3 x 0.3
    = 0.9, breakage gR 4 x 0.5 = 2, deferred 17 - 0.9 - 2 = 14.1 (gA 7 x 0.3, gB 10, the rolled 4 x 0.5).
    DEC: recognised gA 8 x 0.3 - 0.9 = 1.5, gB 20 x 0.5 = 10, ROLLOVER 4 x 0.5 = 2: 13.5; breakage gA 2 x 0.3 = 0.6;
    deferred 14.1 - 13.5 - 0.6 = 0; overage 7 x 0.5 = 3.5. By product in DEC: a 1.5 + 10 credits and 2.5 overage,
    b 2 credits, lvl 1 overage."""
    report = revenue(client, c, nov, month_start_ms(-1))
    assert [
        (
            line.period_start.ToMilliseconds(),
            *money(line.recognized_credits, line.recognized_overage, line.breakage, line.deferred),
        )
        for line in report.customer_lines
    ] == [(nov, *money("0.9", "0", "2", "14.1")), (dec, *money("13.5", "3.5", "0.6", "0"))]
    by_product = {
        (line.period_start.ToMilliseconds(), line.product_id): money(line.recognized_credits, line.recognized_overage)
        for line in report.lines
        if Decimal(line.recognized)
    }
    assert by_product == {
        (nov, "a"): money("0.9", "0"),
        (dec, "a"): money("11.5", "2.5"),
        (dec, "b"): money("2", "0"),
        (dec, "lvl"): money("0", "1"),
    }
    r = report.reconciliation
    assert money(r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end) == money(
        "0", "17", "14.4", "2.6", "0"
    )
    assert r.reconciles


def test_grants_a_hold_across_an_expiry_a_rollover_and_refunds_agree_on_balance_invoices_and_revenue(
    server_factory: ServerFactory,
) -> None:
    server = start(server_factory, "combo")
    with server.client() as client:
        nov, dec = run_scenario(client, "mix")
        check_balance(client, "mix", dec)
        check_invoices(client, "mix", nov, dec)
        check_revenue(client, "mix", nov, dec)


def same_state(client: TariffClient, c: str, nov: int, dec: int) -> tuple[bytes, ...]:
    """What a restart must give back exactly: the balance, both drafts and the revenue report."""
    return (
        client.get_balance(c).SerializeToString(deterministic=True),
        preview(client, c, nov).SerializeToString(deterministic=True),
        preview(client, c, dec).SerializeToString(deterministic=True),
        revenue(client, c, nov, month_start_ms(-1)).SerializeToString(deterministic=True),
    )


@pytest.mark.parametrize("snapshot_every", ["5000", "1"])
def test_the_same_scenario_through_kill_9_while_the_hold_is_out_and_the_grant_expires_while_down(
    server_factory: ServerFactory, snapshot_every: str
) -> None:
    """The scenario above, the server killed (-9) while h1 holds 2 on gA and restarted only once gA's expiry has
    passed (its breakage recorded when it serves again, the hold still open: its TTL is 60 s), then killed again
    at the end; with a snapshot after every record too. Every figure is the hand-computed one after each start,
    the state identical across the second restart, and closing NOV gives its draft back as final."""
    server = start(server_factory, f"combo-{snapshot_every}", "--snapshot-every", snapshot_every)
    client = server.client()

    def crash() -> TariffClient:
        """Down from before gA's expiry (6 s after it was granted) until after it."""
        client.close()
        server.kill9()
        time.sleep(7)
        server.restart()
        restarted = server.client()
        assert grants(restarted.get_balance("mix"), "mix")["gA"][3] == "2", "h1 lost its hold"
        return restarted

    nov, dec = run_scenario(client, "mix", crash)
    with server.client() as client:
        check_balance(client, "mix", dec)
        check_invoices(client, "mix", nov, dec)
        check_revenue(client, "mix", nov, dec)
        before = same_state(client, "mix", nov, dec)
    server.kill9()
    server.restart()
    with server.client() as client:
        assert same_state(client, "mix", nov, dec) == before
        draft = preview(client, "mix", nov)
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id="mix", period_start=stamp(nov)))
        assert final.invoice_number == "INV-00000001"
        for name in ("invoice_number", "status", "closed_at"):
            final.ClearField(name)
            draft.ClearField(name)
        assert final == draft
        check_revenue(client, "mix", nov, dec)


def month_before(at_ms: int) -> int:
    """The same instant a calendar month earlier (the day of the month is at most 28 in the tests' months)."""
    at = datetime.fromtimestamp(at_ms / 1000, UTC)
    assert at.day <= 28, "run on a day of the month an earlier month has too"
    month = at.year * 12 + at.month - 2
    return int(at.replace(year=month // 12, month=month % 12 + 1).timestamp() * 1000)


def test_holds_a_rollover_and_top_ups_across_a_live_period_end_agree_on_balance_invoices_and_revenue(
    server_factory: ServerFactory,
) -> None:
    """A contract anchored so that its first period P1 ends at T, a few seconds from now; P2 follows. Top-ups:
    below 3, recharge to 10 at 0.25 USD a credit, once a period. Grants: gR 10 paid 5 (0.5 a credit), priority 0,
    rolling over half; gB 4 paid 4 (1), priority 1.

    Before T: job n=5: a 5 from gR (5 left). Hold h1 for n=3: 3 on gR (available 6). Hold h2 for n=4: gR 2, gB 2
    (available 2 < 3): the hold buys TU1 = top-up-<P1>-1, 10 - 2 = 8 credits for 2, usable from P1's start.
    At T gR rolls over: nothing free, 5 held, so floor(0.5 x (0 + 5)) = 2.5 rolls, shares floored cumulatively,
    the remainder (0) first then holds by id: h1 floor(0.5 x 3) = 1.5, h2 2.5 - 1.5 = 1 on the ROLLOVER grant
    rollover-<c>.gR-<T> (2.5 paid 1.25, all held); 2.5 breaks in P1. gR: drawn 5 + 2.5 rolled, expired 2.5.
    After T: the event settling h1, job n=1 (in P2): the hold's 1.5 comes back to the ROLLOVER grant, a 1 draws 1
    from it (available 0.5 + 2 + 8, no purchase). ReleaseReservation(h2) gives back 1 (ROLLOVER) + 2 (gB) = 3.
    job n=20: ROLLOVER 1.5, gB 4, TU1 8, overage 6.5 (3.25 USD due); then available 0 < 3 buys TU2 =
    top-up-<T>-1, 10 credits for 2.5.

    P1's invoice (closed after T, equal to its draft): a 5 (gR 5), 2.00 of top-ups, total 2.00; balances gR
    (10, 7.5, 0, 2.5), gB (4, 0, 4, 0), TU1 (8, 0, 8, 0). P2's draft: a 21 = ROLLOVER 2.5 + gB 4 + TU1 8 +
    overage 6.5 (3.25); 2.50 of top-ups; total 5.75. GetBalance: 21 charged, 6.5 overage, only TU2's 10 left.
    Revenue: P1 sold gR 5 + gB 4 + TU1 2 = 11, recognised gR 5 x 0.5 = 2.5, breakage 2.5 x 0.5 = 1.25,
    deferred 7.25; P2 sold TU2 2.5, recognised ROLLOVER 2.5 x 0.5 + gB 4 + TU1 8 x 0.25 = 7.25, overage 3.25,
    deferred 2.5. (Every `job` here has m=0: a `b` line of nothing.)"""
    server = start(server_factory, "live-end")
    c = "edge"
    with server.client() as client:
        end_ms = now_ms() + 8_000
        p1 = month_before(end_ms)
        customer(client, c, starting_ms=p1)
        policy = contracts_pb2.TopUpPolicy(threshold="3", recharge_to="10", price_per_credit="0.25", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{c}-c", top_up=policy))
        grant(client, c, "gR", "10", "5", 0, rollover_fraction="0.5")
        grant(client, c, "gB", "4", "4", 1)
        use(client, job(f"{c}-e1", c, 5, 0, now_ms()))
        for reservation_id, n in (("h1", 3), ("h2", 4)):
            request = balance_pb2.AuthorizeRequest(
                customer_id=c, event_type="job", values={"n": n, "m": 0}, reserve=True, reservation_id=reservation_id
            )
            held = client.balance.Authorize(request)
            assert (held.allowed, held.reason, held.estimated_cost) == (True, "OK", str(n)), held
        assert now_ms() < end_ms, "the setup took longer than the period: nothing here was tested"
        tu1, tu2, roll = f"top-up-{p1}-1", f"top-up-{end_ms}-1", f"rollover-{c}.gR-{end_ms}"
        assert grants(client.get_balance(c), c) == {
            "gR": ("10", "5", "5", "5", "0"),
            "gB": ("4", "0", "4", "2", "0"),
            tu1: ("8", "0", "8", "0", "0"),
        }
        assert wait_for(lambda: roll in grants(client.get_balance(c), c), 30), client.get_balance(c)
        assert grants(client.get_balance(c), c) == {
            "gR": ("10", "7.5", "0", "0", "2.5"),
            "gB": ("4", "0", "4", "2", "0"),
            tu1: ("8", "0", "8", "0", "0"),
            roll: ("2.5", "0", "2.5", "2.5", "0"),
        }
        after = max(now_ms(), end_ms)
        use(client, job(f"{c}-e2", c, 1, 0, after, reservation_id="h1"))
        released = client.balance.ReleaseReservation(
            balance_pb2.ReleaseReservationRequest(customer_id=c, reservation_id="h2")
        )
        assert Decimal(released.released_amount) == 3
        use(client, job(f"{c}-e3", c, 20, 0, after + 1))

        balance = client.get_balance(c)
        assert grants(balance, c) == {
            "gR": ("10", "7.5", "0", "0", "2.5"),
            "gB": ("4", "4", "0", "0", "0"),
            tu1: ("8", "8", "0", "0", "0"),
            roll: ("2.5", "2.5", "0", "0", "0"),
            tu2: ("10", "0", "10", "0", "0"),
        }, balance
        assert money(balance.period_charges, balance.overage_amount, balance.overage_due) == money("21", "6.5", "3.25")
        assert money(balance.credits_remaining, balance.credits_held, balance.credits_available) == money(
            "10", "0", "10"
        )

        second = preview(client, c, end_ms)
        assert lines(second, c) == {
            "a": ("21", "21", "6.5", {roll: "2.5", "gB": "4", tu1: "8"}, "3.25"),
            "b": ("0", "0", "0", {}, "0.00"),
        }
        assert (second.overage_due, second.top_up_purchases, second.total_due) == ("3.25", "2.50", "5.75")
        assert balances(second, c) == {
            "gR": ("10", "7.5", "0", "2.5"),
            "gB": ("4", "4", "0", "0"),
            tu1: ("8", "8", "0", "0"),
            roll: ("2.5", "2.5", "0", "0"),
            tu2: ("10", "0", "10", "0"),
        }
        draft = preview(client, c, p1)
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=c, period_start=stamp(p1)))
        assert lines(final, c) == {
            "a": ("5", "5", "0", {"gR": "5"}, "0.00"),
            "b": ("0", "0", "0", {}, "0.00"),
        }
        assert (final.overage_due, final.top_up_purchases, final.total_due) == ("0.00", "2.00", "2.00")
        assert balances(final, c) == {
            "gR": ("10", "7.5", "0", "2.5"),
            "gB": ("4", "0", "4", "0"),
            tu1: ("8", "0", "8", "0"),
        }
        for name in ("invoice_number", "status", "closed_at"):
            final.ClearField(name)
            draft.ClearField(name)
        assert final == draft

        report = revenue(client, c, p1, end_ms + 1)
        assert [
            (
                line.period_start.ToMilliseconds(),
                *money(line.recognized_credits, line.recognized_overage, line.breakage, line.deferred),
            )
            for line in report.customer_lines
        ] == [(p1, *money("2.5", "0", "1.25", "7.25")), (end_ms, *money("7.25", "3.25", "0", "2.5"))]
        r = report.reconciliation
        assert money(r.deferred_start, r.prepaid_sold, r.recognized_credits, r.breakage, r.deferred_end) == money(
            "0", "13.5", "9.75", "1.25", "2.5"
        )
        assert r.reconciles
        before = same_state(client, c, p1, end_ms)
    server.kill9()
    server.restart()
    with server.client() as client:
        assert same_state(client, c, p1, end_ms) == before


def test_credit_held_on_an_expired_grant_when_its_period_closes_stays_deferred_until_the_hold_ends(
    server_factory: ServerFactory,
) -> None:
    """README "Revenue" (deferred): a customer line's deferred equals the paid value of the grant balances on its
    period's invoice, except as listed; credit an open hold still holds on a grant that expired in the period is one
    such exception. A contract anchored so that P1 ends at T, a few seconds from now. gA 10 paid 5 (0.5 a credit),
    priority 1, expiring at T - 4 s; gB 10 paid 10, priority 2.

    Before gA's expiry: job n=4: a 4 from gA. Hold h1 (TTL 14 s) for n=5: 5 held on gA. At the expiry the 1 unheld
    breaks; the 5 stay held (GetBalance: gA drawn 4, held 5, expired 1). After T, P1 is closed with the hold still
    open: its invoice shows gA (10, 4, 0, 6) (a grant that expired by the period's end shows what it holds as
    expired) and gB (10, 0, 10, 0), paid value 10; its revenue line: sold 15, recognised 4 x 0.5 = 2, breakage only
    the 1 recorded (0.5), deferred 12.5: the held 5 (2.5) are not broken yet. An event settling h1 is dated before
    the expiry, in P1, and is refused PERIOD_CLOSED; so the hold runs out, and its 5 break then, in the first period
    still open (P2): breakage 2.5, deferred 10, and P1's line does not change."""
    server = start(server_factory, "held-expired")
    c = "held"
    with server.client() as client:
        end_ms = now_ms() + 8_000
        expiry_ms = end_ms - 4_000
        p1 = month_before(end_ms)
        customer(client, c, starting_ms=p1)
        grant(client, c, "gA", "10", "5", 1, expires_at_ms=expiry_ms)
        grant(client, c, "gB", "10", "10", 2)
        use(client, job(f"{c}-e1", c, 4, 0, now_ms()))
        request = balance_pb2.AuthorizeRequest(
            customer_id=c, event_type="job", values={"n": 5, "m": 0}, reserve=True, reservation_id="h1"
        )
        request.reservation_ttl.FromSeconds(14)
        assert client.balance.Authorize(request).allowed
        assert now_ms() < expiry_ms, "the setup took longer than the grant's life: nothing here was tested"
        assert wait_for(lambda: now_ms() > end_ms, 20)
        assert grants(client.get_balance(c), c)["gA"] == ("10", "4", "0", "5", "1")
        final = client.invoices.ClosePeriod(invoices_pb2.ClosePeriodRequest(customer_id=c, period_start=stamp(p1)))
        assert balances(final, c) == {"gA": ("10", "4", "0", "6"), "gB": ("10", "0", "10", "0")}
        report = revenue(client, c, p1, end_ms + 1)
        p1_line = (p1, *money("2", "0.5", "12.5"))
        assert [
            (line.period_start.ToMilliseconds(), *money(line.recognized_credits, line.breakage, line.deferred))
            for line in report.customer_lines
        ] == [p1_line, (end_ms, *money("0", "0", "12.5"))]
        ack = client.ingest_batch([job(f"{c}-e2", c, 1, 0, expiry_ms - 1, reservation_id="h1")])
        assert [r.reason for r in ack.rejected] == [usage_pb2.PERIOD_CLOSED], ack
        assert wait_for(lambda: grants(client.get_balance(c), c)["gA"][3] == "0", 30), client.get_balance(c)
        assert grants(client.get_balance(c), c)["gA"] == ("10", "4", "0", "0", "6")
        report = revenue(client, c, p1, end_ms + 1)
        assert [
            (line.period_start.ToMilliseconds(), *money(line.recognized_credits, line.breakage, line.deferred))
            for line in report.customer_lines
        ] == [p1_line, (end_ms, *money("0", "2.5", "10"))]
        assert report.reconciliation.reconciles


def test_an_event_whose_refund_gives_back_to_an_expired_grant_draws_it_for_its_own_charges_first(
    server_factory: ServerFactory,
) -> None:
    """README "Expiry and breakage" / docs/architecture.md: an event's refunds are settled before its charges, so a
    late event dated before a grant's expiry whose refund gives credit back to the expired grant pays its own
    charges from that credit first (netted, as a settling event draws its hold), and only what it leaves breaks with
    it. g 8 paid 8 (1 a credit), expiring a few seconds from now. mix level=5 n=0: mix-level 5 from g (3 left). The
    expiry breaks the 3. A late mix dated before the expiry, level=2 n=3: mix-level -3 gives 3 back to g, mix-sum +3
    draws them, nothing is left to break: g drawn 5, expired 3; 5 charged (5 - 3 + 3), no overage; revenue: 5
    recognised (mix-level 2, mix-sum 3), 3 breakage, nothing deferred."""
    server = start(server_factory, "netted")
    c = "net"
    with server.client() as client:
        customer(client, c)
        expiry_ms = now_ms() + 3_000
        grant(client, c, "g", "8", "8", 1, expires_at_ms=expiry_ms)
        at = now_ms()
        mix = usage_pb2.UsageEvent(transaction_id=f"{c}-1", customer_id=c, event_type="mix", timestamp_ms=at)
        mix.values.update({"level": 5, "n": 0})
        use(client, mix)
        assert at < expiry_ms, "the setup took longer than the grant's life: nothing here was tested"
        assert wait_for(lambda: grants(client.get_balance(c), c)["g"][4] == "3", 20), client.get_balance(c)
        late = usage_pb2.UsageEvent(transaction_id=f"{c}-2", customer_id=c, event_type="mix", timestamp_ms=at + 1)
        late.values.update({"level": 2, "n": 3})
        use(client, late)
        balance = client.get_balance(c)
        assert grants(balance, c) == {"g": ("8", "5", "0", "0", "3")}, balance
        assert money(balance.period_charges, balance.overage_amount) == money("5", "0")
        dec = month_start_ms(0)
        assert lines(preview(client, c, dec), c) == {
            "mix-level": ("2", "2", "0", {"g": "2"}, "0.00"),
            "mix-sum": ("3", "3", "0", {"g": "3"}, "0.00"),
        }
        report = revenue(client, c, dec, month_start_ms(-1))
        assert [money(x.recognized_credits, x.breakage, x.deferred) for x in report.customer_lines] == [
            money("5", "3", "0")
        ]
