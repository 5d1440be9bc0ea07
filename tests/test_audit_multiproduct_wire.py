"""Audit: one usage event feeding several products, with grants restricted to some of them (README "Credits and
the gateway", docs/architecture.md §3 burn order and step 7 "Draw"; balance.proto). Combinations the
test_audit_credits*_wire.py modules do not cover: holds split over product-restricted grants, BLOCK decided per
product's credit, and one event's refund and charge on grants restricted differently.

Products (card `combo`, credits, from tests/test_audit_credits_combo_wire.py): `a` (SUM of `n`) at 1 and `b` (SUM
of `m`) at 2, both of event type `job`; `mix-level` (LATEST of `level`) and `mix-sum` (SUM of `n`) at 1, both of
event type `mix`. Grant ids are server-wide, so each is `<customer>.<name>`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tariff import TariffClient, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import serving
from tests.serverproc import ServerProcess, wait_for
from tests.test_audit_credits_combo_wire import balances, grant, grants, job, lines, money, plain, preview, revenue, use
from tests.test_audit_credits_combo_wire import catalogue as combo_catalogue
from tests.test_audit_topups_wire import month_start_ms


def catalogue(client: TariffClient) -> None:
    """combo's card, and a second one `calls` for event type `call`: `call-eu` (SUM of `s`, only region=eu) at 1
    and `call-all` (COUNT) at 0.5."""
    combo_catalogue(client)
    pricing = client.pricing
    for product_id, aggregation, key, filters in (
        ("call-eu", pricing_pb2.SUM, "s", {"region": "eu"}),
        ("call-all", pricing_pb2.COUNT, "", {}),
    ):
        product = pricing_pb2.Product(
            id=product_id, event_type="call", aggregation=aggregation, value_key=key, filters=filters
        )
        pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="calls", pricing_unit="credits"))
    rates = [
        pricing_pb2.Rate(product_id=p, unit=pricing_pb2.UnitPrice(price=price))
        for p, price in (("call-eu", "1"), ("call-all", "0.5"))
    ]
    pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="calls", upsert_rates=rates))
    pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(rate_card_id="calls", version=1, effective_from=stamp(month_start_ms(3)))
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-multiproduct")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def customer(client: TariffClient, customer_id: str, policy: int, card: str = "combo") -> None:
    client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id, name=customer_id))
    client.contracts.CreateContract(
        contracts_pb2.CreateContractRequest(
            id=f"{customer_id}-c",
            customer_id=customer_id,
            rate_card_id=card,
            starting_at=stamp(month_start_ms(1)),
            overage_policy=policy,  # type: ignore[arg-type]
            overage_price="0.5",
            currency="USD",
        )
    )


def authorize(
    client: TariffClient,
    customer_id: str,
    event_type: str,
    values: dict[str, float],
    reservation_id: str = "",
    dimensions: dict[str, str] | None = None,
) -> balance_pb2.AuthorizeResponse:
    request = balance_pb2.AuthorizeRequest(
        customer_id=customer_id,
        event_type=event_type,
        values=values,
        dimensions=dimensions or {},
        reserve=bool(reservation_id),
        reservation_id=reservation_id,
    )
    answer: balance_pb2.AuthorizeResponse = client.balance.Authorize(request)
    return answer


Explained = list[tuple[str, str, str, dict[str, str], str]]


def explained(client: TariffClient, customer_id: str, line_id: str) -> Explained:
    """ExplainLineItem of this month's line: (transaction id, quantity, amount, draws per grant, overage) each."""
    request = invoices_pb2.ExplainLineItemRequest(
        customer_id=customer_id, period_start=stamp(month_start_ms(0)), line_id=line_id
    )
    answer = client.invoices.ExplainLineItem(request)
    prefix = f"{customer_id}."
    return [
        (
            e.transaction_id,
            plain(e.quantity),
            plain(e.amount),
            {d.grant_id.removeprefix(prefix): plain(d.credits) for d in e.draws},
            plain(e.overage or "0"),
        )
        for e in answer.events
    ]


def mix(transaction_id: str, customer_id: str, level: float, n: float, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="mix",
        timestamp_ms=at_ms,
        values={"level": level, "n": n},
    )


def test_an_allow_hold_holds_each_products_credit_on_its_own_grants_and_the_settling_event_draws_them(
    server: ServerProcess,
) -> None:
    """`ga` 2 credits for `a` only, `gb` 4 for `b` only (ALLOW). A job n=3, m=2 costs 3 + 4 = 7: `a`'s 3 can hold
    2 (ga), `b`'s 4 holds 4 (gb): 6 held, 1 would be overage. credits_available before 6, after the hold 0.
    Settling with n=1, m=1 (cost 1 + 2 = 3): the hold comes back, ga draws 1, gb 2; no overage."""
    with server.client() as client:
        customer(client, "ap", contracts_pb2.ALLOW)
        grant(client, "ap", "ga", "2", "2", 1, products=("a",))
        grant(client, "ap", "gb", "4", "4", 1, products=("b",))
        held = authorize(client, "ap", "job", {"n": 3, "m": 2}, "r1")
        assert (held.allowed, held.reason, held.estimated_cost) == (True, "OVERAGE_ALLOWED", "7"), held
        assert held.credits_available == "0", held
        balance = client.get_balance("ap")
        assert grants(balance, "ap") == {"ga": ("2", "0", "2", "2", "0"), "gb": ("4", "0", "4", "4", "0")}
        assert (balance.credits_held, balance.credits_available) == ("6", "0"), balance
        again = authorize(client, "ap", "job", {"n": 3, "m": 2}, "r1")
        assert (again.allowed, again.reason, again.estimated_cost, again.credits_available) == (
            True,
            "OVERAGE_ALLOWED",
            "7",
            "0",
        ), again
        assert again.message.startswith("already held"), again
        assert client.get_balance("ap").credits_held == "6"
        use(client, job("ap-1", "ap", 1, 1, now_ms(), reservation_id="r1"))
        after = authorize(client, "ap", "job", {"n": 3, "m": 2}, "r1")
        assert (after.reason, after.estimated_cost, after.credits_available) == ("OVERAGE_ALLOWED", "7", "3"), after
        assert "already settled" in after.message and "nothing is held" in after.message, after
        balance = client.get_balance("ap")
        assert grants(balance, "ap") == {"ga": ("2", "1", "1", "0", "0"), "gb": ("4", "2", "2", "0", "0")}
        assert (balance.credits_held, balance.credits_available, balance.overage_amount) == ("0", "3", "0")


def test_block_denies_a_job_whose_one_product_lacks_credit_though_the_total_would_cover_it(
    server: ServerProcess,
) -> None:
    """BLOCK; `ga` 2 for `a` only, `gb` 10 for `b` only. A job n=3, m=1 costs 3 + 2 = 5 of the 12 available to
    its products, but `a`'s 3 finds only 2: a positive charge not covered, so INSUFFICIENT_CREDIT, and a hold
    holds nothing. n=2, m=5 (2 + 10 = 12) is covered product by product: OK."""
    with server.client() as client:
        customer(client, "bl", contracts_pb2.BLOCK)
        grant(client, "bl", "ga", "2", "2", 1, products=("a",))
        grant(client, "bl", "gb", "10", "10", 1, products=("b",))
        denied = authorize(client, "bl", "job", {"n": 3, "m": 1}, "r1")
        assert (denied.allowed, denied.reason, denied.estimated_cost) == (False, "INSUFFICIENT_CREDIT", "5"), denied
        assert denied.credits_available == "12", denied
        assert client.get_balance("bl").credits_held == "0"
        fits = authorize(client, "bl", "job", {"n": 2, "m": 5}, "r2")
        assert (fits.allowed, fits.reason, fits.estimated_cost, fits.credits_available) == (True, "OK", "12", "0")


def test_one_events_refund_goes_back_to_its_products_grant_and_its_charge_draws_only_an_applicable_one(
    server: ServerProcess,
) -> None:
    """ALLOW; `gl` 5 for `mix-level` only (priority 1), `gs` 10 for `mix-sum` only (priority 2). mix level=5, n=0:
    gl draws 5. mix level=2, n=3: mix-level refunds 3 to gl (drawn 2), mix-sum's 3 cannot draw gl and draws gs.
    Then mix level=2, n=0 (nothing) and an Authorize of level=0, n=4 (refund 2, charge 4): estimated 2."""
    t = now_ms()
    with server.client() as client:
        customer(client, "rf", contracts_pb2.ALLOW)
        grant(client, "rf", "gl", "5", "5", 1, products=("mix-level",))
        grant(client, "rf", "gs", "10", "10", 2, products=("mix-sum",))
        use(client, mix("rf-1", "rf", 5, 0, t - 2000), mix("rf-2", "rf", 2, 3, t - 1000))
        balance = client.get_balance("rf")
        assert grants(balance, "rf") == {"gl": ("5", "2", "3", "0", "0"), "gs": ("10", "3", "7", "0", "0")}
        assert (balance.period_charges, balance.overage_amount, balance.credits_available) == ("5", "0", "10")
        probe = authorize(client, "rf", "mix", {"level": 0, "n": 4})
        assert (probe.allowed, probe.reason, probe.estimated_cost, probe.credits_available) == (True, "OK", "2", "10")


def test_block_decides_by_burn_order_product_by_product_as_ingestion_then_draws(server: ServerProcess) -> None:
    """BLOCK; `gall` 3 for every product (priority 1), `ga` 2 for `a` only (priority 2). A job n=2, m=1.5 costs
    2 + 3 = 5, the 5 available to its products. Charges draw in product-id order, each in burn order: `a`'s 2 from
    gall (priority 1), `b`'s 3 finds gall's 1 and cannot use ga: 2 uncovered, so INSUFFICIENT_CREDIT, as ingesting
    it shows (the event is still rated, its rest overage): gall drawn 3, ga 0, overage 2."""
    with server.client() as client:
        customer(client, "gr", contracts_pb2.BLOCK)
        grant(client, "gr", "gall", "3", "3", 1)
        grant(client, "gr", "ga", "2", "2", 2, products=("a",))
        probe = authorize(client, "gr", "job", {"n": 2, "m": 1.5})
        assert (probe.allowed, probe.reason, probe.estimated_cost, probe.credits_available) == (
            False,
            "INSUFFICIENT_CREDIT",
            "5",
            "5",
        ), probe
        use(client, job("gr-1", "gr", 2, 1.5, now_ms()))
        balance = client.get_balance("gr")
        assert grants(balance, "gr") == {"gall": ("3", "3", "0", "0", "0"), "ga": ("2", "0", "2", "0", "0")}
        assert money(balance.period_charges, balance.overage_amount) == money("5", "2")


def test_a_refund_to_an_expired_restricted_grant_breaks_when_the_other_product_cannot_draw_it(
    server: ServerProcess,
) -> None:
    """ALLOW (overage 0.5 USD); `gl` 6 paid 6 for `mix-level` only, expiring a few seconds from now, the only grant.
    mix level=5 n=0: gl draws 5; the expiry breaks its 1. A late mix dated before the expiry, level=2 n=3:
    mix-level's -3 goes back to gl, mix-sum's 3 cannot draw gl (not its product): 3 of overage, and the 3 given
    back break with the event. gl: drawn 2, expired 4; charges 5 - 3 + 3 = 5, overage 3 (1.50 USD due); revenue:
    2 recognised, 4 breakage, nothing deferred."""
    c = "ex"
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        expiry_ms = now_ms() + 6_000  # a slow setup on a loaded machine still ends before it
        grant(client, c, "gl", "6", "6", 1, products=("mix-level",), expires_at_ms=expiry_ms)
        at = now_ms()
        use(client, mix(f"{c}-1", c, 5, 0, at))
        assert at < expiry_ms, "the setup took longer than the grant's life: nothing here was tested"
        assert wait_for(lambda: grants(client.get_balance(c), c)["gl"][4] == "1", 20), client.get_balance(c)
        use(client, mix(f"{c}-2", c, 2, 3, at + 1))
        balance = client.get_balance(c)
        assert grants(balance, c) == {"gl": ("6", "2", "0", "0", "4")}, balance
        assert money(balance.period_charges, balance.overage_amount) == money("5", "3")
        this_month = month_start_ms(0)
        invoice = preview(client, c, this_month)
        assert lines(invoice, c) == {
            "mix-level": ("2", "2", "0", {"gl": "2"}, "0.00"),
            "mix-sum": ("3", "3", "3", {}, "1.50"),
        }
        assert balances(invoice, c) == {"gl": ("6", "2", "0", "4")}, invoice
        report = revenue(client, c, this_month, month_start_ms(-1))
        assert [money(x.recognized_credits, x.breakage, x.deferred) for x in report.customer_lines] == [
            money("2", "4", "0")
        ]


def test_a_hold_on_an_event_refunding_one_product_holds_only_what_the_other_products_charge_draws(
    server: ServerProcess,
) -> None:
    """ALLOW; `gl` 5 for `mix-level` only (priority 1), `gs` 2 for `mix-sum` only (priority 2). mix level=5 n=0:
    gl draws 5. A hold for mix level=2 n=3 (cost -3 + 3 = 0): its refund would give gl 3, its charge draws gs 2
    and 1 of overage (mix-sum cannot draw gl): gs 2 held, OVERAGE_ALLOWED, available to its products 2 - 2 = 0.
    The settling event (the same usage) gives gs back, refunds gl 3, draws gs 2 and 1 of overage: gl drawn 2,
    remaining 3; gs drawn 2; charges 5 + 0 = 5, overage 1."""
    c = "hr"
    t = now_ms()
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        grant(client, c, "gl", "5", "5", 1, products=("mix-level",))
        grant(client, c, "gs", "2", "2", 2, products=("mix-sum",))
        use(client, mix(f"{c}-1", c, 5, 0, t - 1000))
        held = authorize(client, c, "mix", {"level": 2, "n": 3}, "r1")
        assert (held.allowed, held.reason, held.estimated_cost, held.credits_available) == (
            True,
            "OVERAGE_ALLOWED",
            "0",
            "0",
        ), held
        balance = client.get_balance(c)
        assert grants(balance, c) == {"gl": ("5", "5", "0", "0", "0"), "gs": ("2", "0", "2", "2", "0")}, balance
        settling = mix(f"{c}-2", c, 2, 3, now_ms())
        settling.reservation_id = "r1"
        use(client, settling)
        balance = client.get_balance(c)
        assert grants(balance, c) == {"gl": ("5", "2", "3", "0", "0"), "gs": ("2", "2", "0", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount, balance.credits_held) == money("5", "1", "0")


def test_a_gauge_fall_gives_back_its_overage_first_while_the_other_product_charges_overage(
    server: ServerProcess,
) -> None:
    """ALLOW; `g` 3 for every product. mix level=5 n=0: g 3, 2 overage. mix level=3 n=2: mix-level's -2 gives back
    its own 2 of overage first (nothing to g), mix-sum's 2 finds g empty: 2 of overage. g drawn 3; charges
    5 - 2 + 2 = 5, overage 2 - 2 + 2 = 2; lines: mix-level 3 (g 3, no overage), mix-sum 2 (2 overage, 1.00 USD)."""
    c = "ov"
    t = now_ms()
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        grant(client, c, "g", "3", "3", 1)
        use(client, mix(f"{c}-1", c, 5, 0, t - 1000), mix(f"{c}-2", c, 3, 2, t))
        balance = client.get_balance(c)
        assert grants(balance, c) == {"g": ("3", "3", "0", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount) == money("5", "2")
        assert lines(preview(client, c, month_start_ms(0)), c) == {
            "mix-level": ("3", "3", "0", {"g": "3"}, "0.00"),
            "mix-sum": ("2", "2", "2", {}, "1.00"),
        }
        assert explained(client, c, "mix-level") == [
            (f"{c}-1", "5", "5", {"g": "3"}, "2"),
            (f"{c}-2", "-2", "-2", {}, "-2"),
        ]
        assert explained(client, c, "mix-sum") == [(f"{c}-1", "0", "0", {}, "0"), (f"{c}-2", "2", "2", {}, "2")]


def test_a_top_up_bought_when_a_restricted_grant_runs_low_pays_the_product_it_does_not_cover(
    server: ServerProcess,
) -> None:
    """ALLOW; `ga` 5 for `a` only; top-up threshold 2, recharge to 10 at 1 USD, once a period. job n=4 m=0: ga
    draws 4, available 1 < 2: one TOP_UP of 10 - 1 = 9 credits. job n=0 m=3 (b costs 6): ga does not apply, the
    top-up (every product) pays 6; available 1 + 3 = 4, no second purchase. No overage; charges 10."""
    c = "tu"
    t = now_ms()
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        grant(client, c, "ga", "5", "5", 1, products=("a",))
        policy = contracts_pb2.TopUpPolicy(threshold="2", recharge_to="10", price_per_credit="1", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{c}-c", top_up=policy))
        use(client, job(f"{c}-1", c, 4, 0, t - 1000))
        use(client, job(f"{c}-2", c, 0, 3, t))
        balance = client.get_balance(c)
        got = {k.split("-")[0]: v for k, v in grants(balance, c).items()}
        assert got == {"ga": ("5", "4", "1", "0", "0"), "top": ("9", "6", "3", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount, balance.credits_available) == money("10", "0", "4")


def call(transaction_id: str, customer_id: str, region: str, s: float, at_ms: int) -> usage_pb2.UsageEvent:
    return usage_pb2.UsageEvent(
        transaction_id=transaction_id,
        customer_id=customer_id,
        event_type="call",
        timestamp_ms=at_ms,
        dimensions={"region": region},
        values={"s": s},
    )


def test_credit_available_counts_only_grants_of_the_products_the_filters_let_the_usage_feed(
    server: ServerProcess,
) -> None:
    """BLOCK on `calls`; `geu` 10 for `call-eu` only. A call region=us s=4 feeds only `call-all` (0.5): no grant
    applies to it, so credits_available 0 and INSUFFICIENT_CREDIT; ingested, 0.5 of overage, geu untouched. A call
    region=eu s=4 feeds both (4 + 0.5 = 4.5): available 10, but call-all's 0.5 cannot draw geu: denied too;
    ingested, geu draws 4 and call-all 0.5 more overage."""
    c = "fl"
    t = now_ms()
    with server.client() as client:
        customer(client, c, contracts_pb2.BLOCK, card="calls")
        grant(client, c, "geu", "10", "10", 1, products=("call-eu",))
        us = authorize(client, c, "call", {"s": 4}, dimensions={"region": "us"})
        assert (us.allowed, us.reason, us.estimated_cost, us.credits_available) == (
            False,
            "INSUFFICIENT_CREDIT",
            "0.5",
            "0",
        ), us
        eu = authorize(client, c, "call", {"s": 4}, dimensions={"region": "eu"})
        assert (eu.allowed, eu.reason, eu.estimated_cost, eu.credits_available) == (
            False,
            "INSUFFICIENT_CREDIT",
            "4.5",
            "10",
        ), eu
        use(client, call(f"{c}-1", c, "us", 4, t - 1000))
        balance = client.get_balance(c)
        assert grants(balance, c) == {"geu": ("10", "0", "10", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount) == money("0.5", "0.5")
        use(client, call(f"{c}-2", c, "eu", 4, t))
        balance = client.get_balance(c)
        assert grants(balance, c) == {"geu": ("10", "4", "6", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount) == money("5", "1")


def test_a_refund_spread_over_two_grants_comes_back_in_reverse_burn_order_at_each_cost_basis(
    server: ServerProcess,
) -> None:
    """ALLOW; `g1` 2 paid 1 (0.5 USD a credit, priority 1), `g2` 10 paid 10 (priority 2). mix level=5 n=0: g1 2,
    g2 3. mix level=1 n=4: mix-level's -4 gives back g2's 3 then g1's 1 (reverse burn order), then mix-sum's 4
    draws g1 1 and g2 3. g1 drawn 2 (revenue 1), g2 drawn 3 (revenue 3); lines: mix-level 1 ({g1: 1}), mix-sum 4
    ({g1: 1, g2: 3}); revenue: 1 + 3 = 4 USD recognised from credits, 7 USD still deferred (g2's 7 credits)."""
    c = "rb"
    t = now_ms()
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        grant(client, c, "g1", "2", "1", 1)
        grant(client, c, "g2", "10", "10", 2)
        use(client, mix(f"{c}-1", c, 5, 0, t - 1000), mix(f"{c}-2", c, 1, 4, t))
        balance = client.get_balance(c)
        assert grants(balance, c) == {"g1": ("2", "2", "0", "0", "0"), "g2": ("10", "3", "7", "0", "0")}, balance
        assert [money(g.recognized_revenue) for g in balance.grants] == [money("1"), money("3")]
        assert money(balance.period_charges, balance.overage_amount) == money("5", "0")
        this_month = month_start_ms(0)
        assert lines(preview(client, c, this_month), c) == {
            "mix-level": ("1", "1", "0", {"g1": "1"}, "0.00"),
            "mix-sum": ("4", "4", "0", {"g1": "1", "g2": "3"}, "0.00"),
        }
        assert explained(client, c, "mix-level") == [
            (f"{c}-1", "5", "5", {"g1": "2", "g2": "3"}, "0"),
            (f"{c}-2", "-4", "-4", {"g1": "-1", "g2": "-3"}, "0"),
        ]
        assert explained(client, c, "mix-sum") == [
            (f"{c}-1", "0", "0", {}, "0"),
            (f"{c}-2", "4", "4", {"g1": "1", "g2": "3"}, "0"),
        ]
        report = revenue(client, c, this_month, month_start_ms(-1))
        assert [money(x.recognized_credits, x.recognized, x.deferred) for x in report.customer_lines] == [
            money("4", "4", "7")
        ], report


def test_a_hold_on_a_restricted_grant_across_its_expiry_settled_before_it_draws_only_for_its_product(
    server: ServerProcess,
) -> None:
    """ALLOW; `ga` 4 paid 4 for `a` only, expiring a few seconds from now, the only grant. A hold for job n=3 m=0
    holds ga 3. The expiry breaks the free 1 (ga: remaining 0, held 3, expired 1; credits_remaining 3, held 3,
    available 0). The settling event, dated before the expiry, n=1 m=2 (1 + 4 = 5): the 3 come back, `a` draws 1,
    `b`'s 4 cannot draw ga (overage), the 2 left break with it. ga drawn 1, expired 3; charges 5, overage 4;
    revenue: 1 recognised, 3 breakage, nothing deferred."""
    c = "hx"
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        expiry_ms = now_ms() + 6_000  # a slow setup on a loaded machine still ends before it
        grant(client, c, "ga", "4", "4", 1, products=("a",), expires_at_ms=expiry_ms)
        at = now_ms()
        held = authorize(client, c, "job", {"n": 3, "m": 0}, "r1")
        assert (held.allowed, held.reason, held.estimated_cost, held.credits_available) == (True, "OK", "3", "1")
        assert at < expiry_ms, "the setup took longer than the grant's life: nothing here was tested"
        assert wait_for(lambda: grants(client.get_balance(c), c)["ga"][4] == "1", 20), client.get_balance(c)
        balance = client.get_balance(c)
        assert grants(balance, c) == {"ga": ("4", "0", "0", "3", "1")}, balance
        assert money(balance.credits_remaining, balance.credits_held, balance.credits_available) == money("3", "3", "0")
        use(client, job(f"{c}-1", c, 1, 2, at + 1, reservation_id="r1"))
        balance = client.get_balance(c)
        assert grants(balance, c) == {"ga": ("4", "1", "0", "0", "3")}, balance
        assert money(balance.period_charges, balance.overage_amount, balance.credits_remaining) == money("5", "4", "0")
        this_month = month_start_ms(0)
        invoice = preview(client, c, this_month)
        assert lines(invoice, c) == {"a": ("1", "1", "0", {"ga": "1"}, "0.00"), "b": ("2", "4", "4", {}, "2.00")}
        assert balances(invoice, c) == {"ga": ("4", "1", "0", "3")}, invoice
        report = revenue(client, c, this_month, month_start_ms(-1))
        assert [money(x.recognized_credits, x.breakage, x.deferred) for x in report.customer_lines] == [
            money("1", "3", "0")
        ], report


def test_holds_in_one_authorize_batches_message_keep_each_products_credit_apart_under_block(
    server: ServerProcess,
) -> None:
    """BLOCK; `ga` 2 for `a` only, `gb` 2 for `b` only. One AuthorizeBatches message: hold r1 job n=2 (a: 2) holds
    ga 2, available to its products 4 - 2 = 2; hold r2 job m=1 (b: 2) holds gb 2, available 0; hold r3 job n=0.5
    finds ga fully held: INSUFFICIENT_CREDIT; a probe without reserve, job n=1, is decided before the message's
    holds: OK, 4 available. One batch settling r1 (n=2) and r2 (m=1) draws ga 2 and gb 2, no overage."""
    c = "ab"
    with server.client() as client:
        customer(client, c, contracts_pb2.BLOCK)
        grant(client, c, "ga", "2", "2", 1, products=("a",))
        grant(client, c, "gb", "2", "2", 1, products=("b",))

        def ask(values: dict[str, float], reservation_id: str = "") -> balance_pb2.AuthorizeRequest:
            return balance_pb2.AuthorizeRequest(
                customer_id=c,
                event_type="job",
                values=values,
                reserve=bool(reservation_id),
                reservation_id=reservation_id,
                request_id=reservation_id or "probe",
            )

        message = balance_pb2.AuthorizeBatch(
            requests=[
                ask({"n": 2, "m": 0}, "r1"),
                ask({"n": 0, "m": 1}, "r2"),
                ask({"n": 0.5, "m": 0}, "r3"),
                ask({"n": 1, "m": 0}),
            ]
        )
        answers = next(iter(client.balance.AuthorizeBatches(iter([message])))).responses
        assert [(a.request_id, a.allowed, a.reason, a.estimated_cost, a.credits_available) for a in answers] == [
            ("r1", True, "OK", "2", "2"),
            ("r2", True, "OK", "2", "0"),
            ("r3", False, "INSUFFICIENT_CREDIT", "0.5", "0"),
            ("probe", True, "OK", "1", "4"),
        ]
        balance = client.get_balance(c)
        assert grants(balance, c) == {"ga": ("2", "0", "2", "2", "0"), "gb": ("2", "0", "2", "2", "0")}, balance
        t = now_ms()
        ack = client.ingest_batch([job(f"{c}-1", c, 2, 0, t, "r1"), job(f"{c}-2", c, 0, 1, t, "r2")])
        assert ack.accepted == 2 and not ack.notices, ack
        balance = client.get_balance(c)
        assert grants(balance, c) == {"ga": ("2", "2", "0", "0", "0"), "gb": ("2", "2", "0", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount, balance.credits_held) == money("4", "0", "0")


def test_block_denies_an_event_netting_to_zero_while_no_credit_is_available_though_ingesting_it_adds_no_overage(
    server: ServerProcess,
) -> None:
    """Pins README "Balances" / docs/architecture.md "Authorize": under BLOCK, while no credit is available to the
    usage's products at all, even usage that would cost nothing is denied. `g` 5 for every product; mix level=5
    n=0 draws it all. mix level=2 n=3 costs -3 + 3 = 0: denied INSUFFICIENT_CREDIT (0 available), though ingesting
    it gives g 3 back and draws them again (refunds settle first): g drawn 5, charges 5, no overage."""
    c = "bz"
    t = now_ms()
    with server.client() as client:
        customer(client, c, contracts_pb2.BLOCK)
        grant(client, c, "g", "5", "5", 1)
        use(client, mix(f"{c}-1", c, 5, 0, t - 1000))
        probe = authorize(client, c, "mix", {"level": 2, "n": 3})
        assert (probe.allowed, probe.reason, probe.estimated_cost, probe.credits_available) == (
            False,
            "INSUFFICIENT_CREDIT",
            "0",
            "0",
        ), probe
        use(client, mix(f"{c}-2", c, 2, 3, t))
        balance = client.get_balance(c)
        assert grants(balance, c) == {"g": ("5", "5", "0", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount) == money("5", "0")


def test_an_event_before_the_settling_one_in_its_batch_cannot_draw_the_held_credit(server: ServerProcess) -> None:
    """ALLOW; `g` 5 for every product. A hold for job n=3 m=0 holds 3 (2 available). One batch: job n=0 m=2 (b: 4)
    first, then the job n=3 m=0 settling the hold. The first draws the 2 available and 2 of overage (the hold is
    still out); the second gets its 3 back and draws them. Lines: a 3 ({g: 3}), b 4 ({g: 2}, overage 2, 1.00 USD)."""
    c = "bo"
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        grant(client, c, "g", "5", "5", 1)
        held = authorize(client, c, "job", {"n": 3, "m": 0}, "r1")
        assert (held.reason, held.estimated_cost, held.credits_available) == ("OK", "3", "2"), held
        t = now_ms()
        batch = [job(f"{c}-1", c, 0, 2, t), job(f"{c}-2", c, 3, 0, t, "r1")]
        ack = client.ingest_batch(batch)
        assert ack.accepted == 2 and not ack.notices, ack
        resent = client.ingest_batch(batch)
        assert (resent.accepted, resent.duplicates, list(resent.notices)) == (0, 2, []), resent
        balance = client.get_balance(c)
        assert grants(balance, c) == {"g": ("5", "5", "0", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount) == money("7", "2")
        assert lines(preview(client, c, month_start_ms(0)), c) == {
            "a": ("3", "3", "0", {"g": "3"}, "0.00"),
            "b": ("2", "4", "2", {"g": "2"}, "1.00"),
        }


def test_equal_priority_grants_burn_narrowest_list_first_for_each_product_of_one_event(server: ServerProcess) -> None:
    """docs/architecture.md §3 burn order (priority, expiry, narrowest product list, creation); all priority 1,
    never expiring, created `gall` (every product), `gab` (a, b), `ga` (a), 5 credits each. job n=3 m=4 (a 3,
    b 8): a draws ga 3 (narrowest); b draws gab 5 then gall 3 (no list is the widest). Lines: a {ga: 3},
    b {gab: 5, gall: 3}."""
    c = "nw"
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        grant(client, c, "gall", "5", "5", 1)
        grant(client, c, "gab", "5", "5", 1, products=("a", "b"))
        grant(client, c, "ga", "5", "5", 1, products=("a",))
        use(client, job(f"{c}-1", c, 3, 4, now_ms()))
        balance = client.get_balance(c)
        assert grants(balance, c) == {
            "ga": ("5", "3", "2", "0", "0"),
            "gab": ("5", "5", "0", "0", "0"),
            "gall": ("5", "3", "2", "0", "0"),
        }, balance
        assert lines(preview(client, c, month_start_ms(0)), c) == {
            "a": ("3", "3", "0", {"ga": "3"}, "0.00"),
            "b": ("4", "8", "0", {"gab": "5", "gall": "3"}, "0.00"),
        }


def test_a_hold_that_leaves_credit_below_the_threshold_buys_and_the_top_up_pays_the_product_without_a_grant(
    server: ServerProcess,
) -> None:
    """ALLOW; `ga` 2 for `a` only; top-up threshold 2, recharge to 10 at 1 USD, once a period. A hold for job n=1
    m=2 (a 1, b 4: 5) holds ga 1 (b has no grant: OVERAGE_ALLOWED); available 1 < 2, so the hold buys 10 - 1 = 9,
    and its answer counts them: 10. The settling event (the same usage) gives ga 1 back, a draws it, b's 4 draw
    the top-up: ga drawn 1, top-up drawn 4; charges 5, no overage, available 1 + 5 = 6."""
    c = "ht"
    with server.client() as client:
        customer(client, c, contracts_pb2.ALLOW)
        grant(client, c, "ga", "2", "2", 1, products=("a",))
        policy = contracts_pb2.TopUpPolicy(threshold="2", recharge_to="10", price_per_credit="1", max_per_period=1)
        client.contracts.SetTopUpPolicy(contracts_pb2.SetTopUpPolicyRequest(contract_id=f"{c}-c", top_up=policy))
        held = authorize(client, c, "job", {"n": 1, "m": 2}, "r1")
        assert (held.allowed, held.reason, held.estimated_cost, held.credits_available) == (
            True,
            "OVERAGE_ALLOWED",
            "5",
            "10",
        ), held
        got = {k.split("-")[0]: v for k, v in grants(client.get_balance(c), c).items()}
        assert got == {"ga": ("2", "0", "2", "1", "0"), "top": ("9", "0", "9", "0", "0")}, got
        use(client, job(f"{c}-1", c, 1, 2, now_ms(), reservation_id="r1"))
        balance = client.get_balance(c)
        got = {k.split("-")[0]: v for k, v in grants(balance, c).items()}
        assert got == {"ga": ("2", "1", "1", "0", "0"), "top": ("9", "4", "5", "0", "0")}, balance
        assert money(balance.period_charges, balance.overage_amount, balance.credits_available) == money("5", "0", "6")
