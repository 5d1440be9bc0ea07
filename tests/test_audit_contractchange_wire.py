"""An audit of a customer's contract changing inside a billing period, as a finance team does it (README "Contract
switches", "Invoices and revenue"; contracts.proto Contract, CreateContractRequest; invoices.proto
PreviewInvoiceRequest; balance.proto Balance, AuthorizeResponse). Earlier audits (test_audit_contracts*_wire.py,
test_audit_periods*_wire.py, test_audit_calendar_wire.py, test_audit_override_*_wire.py) cover a switch's routing,
its overrides, its grants' revenue and its currencies; this file adds what they leave out: an upgrade from an ALLOW
contract to a BLOCK one with another overage price and its own override, with events just before, at and after the
switch, late events of the old side, a grant paying both, and both invoices closed and compared with their drafts;
a gap between two contracts; contracts enclosing or swallowing another; Authorize as the clock crosses a switch.

Every amount asserted is computed by hand from the docs (the arithmetic is in each docstring).

Product `units` (event type `work`, SUM of `n`) at 1 credit a unit on rate card `card` (credits), in force from
2025-01-01. One server for the file (`--close-grace off`: no period closes by itself), each test its own customer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import pytest
from tariff import TariffClient, TariffError, now_ms
from tariff.v1 import balance_pb2, contracts_pb2, invoices_pb2, pricing_pb2, usage_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import preview, refusal, rejected, serving, usage
from tests.serverproc import ServerProcess


def at(text: str) -> int:
    """Unix ms of an ISO-8601 UTC instant."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


def catalogue(client: TariffClient) -> None:
    product = pricing_pb2.Product(id="units", event_type="work", aggregation=pricing_pb2.SUM, value_key="n")
    client.pricing.CreateProduct(pricing_pb2.CreateProductRequest(product=product))
    client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id="card", pricing_unit="credits"))
    rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1"))
    client.pricing.CreateDraftVersion(pricing_pb2.CreateDraftVersionRequest(rate_card_id="card", upsert_rates=[rate]))
    client.pricing.PublishVersion(
        pricing_pb2.PublishVersionRequest(
            rate_card_id="card", version=1, effective_from=stamp(at("2025-01-01T00:00:00"))
        )
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root: Path = tmp_path_factory.mktemp("audit-contractchange")
    yield from serving(ServerProcess(root / "data", extra_args=["--close-grace", "off"]), catalogue)


def contract(
    client: TariffClient, customer_id: str, contract_id: str, start_ms: int, end_ms: int | None = None, **fields: Any
) -> str:
    """A contract on `card` (ALLOW, overage at 1 USD unless given), creating the customer on its first one."""
    try:
        client.contracts.GetCustomer(contracts_pb2.GetCustomerRequest(id=customer_id))
    except TariffError:
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id=customer_id))
    fields.setdefault("overage_policy", contracts_pb2.ALLOW)
    fields.setdefault("rate_card_id", "card")
    request = contracts_pb2.CreateContractRequest(
        id=contract_id, customer_id=customer_id, starting_at=stamp(start_ms), **fields
    )
    if end_ms is not None:
        request.ending_before.CopyFrom(stamp(end_ms))
    client.contracts.CreateContract(request)
    return contract_id


def close(client: TariffClient, customer_id: str, start_ms: int) -> invoices_pb2.Invoice:
    request = invoices_pb2.ClosePeriodRequest(customer_id=customer_id, period_start=stamp(start_ms))
    invoice: invoices_pb2.Invoice = client.invoices.ClosePeriod(request)
    return invoice


def summary(i: invoices_pb2.Invoice) -> tuple[object, ...]:
    return (
        i.contract_id,
        i.period_start.ToMilliseconds(),
        i.period_end.ToMilliseconds(),
        [(line.quantity, line.amount, line.events, line.overage, line.amount_due) for line in i.lines],
        [(c.grant_id, c.credits) for c in i.credits_applied],
        (i.subtotal, i.overage_amount, i.overage_due, i.total_due, i.currency),
    )


def test_an_upgrade_mid_month_bills_each_side_at_its_own_overrides_policy_and_overage_price(
    server: ServerProcess,
) -> None:
    """`up-a` from 2025-06-01 to S = 2025-06-16 (ALLOW, overage 2 USD a credit), `up-b` from S (BLOCK, overage 3 USD
    a credit, its own override: units at price 0.5). PROMOTIONAL grant `up.g` of 10 under up-a, no starts_at: it pays
    from Jun 1, and under up-b too (the credit is the customer's). One batch, in order:
    - S - 1 ms, 6 units: up-a, 6 credits: g 6 (4 left);
    - S, 6 units: up-b (in force at its start), 6 x 0.5 = 3: g 3 (1 left);
    - S + 1 ms, 4 units: up-b, 2: g 1, overage 1 (BLOCK does not refuse usage that happened).
    Then, late, S - 1 h, 4 units: up-a, 4 at up-a's price 1 (not up-b's override): g is spent, overage 4.
    up-a's last period (Jun 1 - Jul 1, its monthly end): 10 units, 10 credits, g 6, overage 4, due 4 x 2 = 8.00.
    up-b's first (Jun 16 - Jul 16): 10 units, 5 credits, g 4, overage 1, due 1 x 3 = 3.00. Both have ended: closed,
    each equals its draft but for number, status and closed_at; a late event for either is then PERIOD_CLOSED."""
    s = at("2025-06-16T00:00:00")
    jun1, jul1, jul16 = at("2025-06-01T00:00:00"), at("2025-07-01T00:00:00"), at("2025-07-16T00:00:00")
    with server.client() as client:
        contract(client, "up", "up-a", jun1, s, overage_price="2")
        contract(client, "up", "up-b", s, overage_price="3", overage_policy=contracts_pb2.BLOCK)
        client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id="up-b", override=contracts_pb2.PriceOverride(id="half", product_id="units", price="0.5")
            )
        )
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(id="up.g", contract_id="up-a", kind=contracts_pb2.PROMOTIONAL, amount="10")
            )
        )
        assert rejected(client, usage("u1", "up", 6, s - 1), usage("u2", "up", 6, s), usage("u3", "up", 4, s + 1)) == []
        assert rejected(client, usage("u4", "up", 4, s - 3_600_000)) == []
        old = ("up-a", jun1, jul1, [("10", "10", 2, "4", "8.00")], [("up.g", "6")], ("10", "4", "8.00", "8.00", "USD"))
        new = ("up-b", s, jul16, [("10", "5", 2, "1", "3.00")], [("up.g", "4")], ("5", "1", "3.00", "3.00", "USD"))
        drafts = (preview(client, "up", jun1), preview(client, "up", s))
        assert [summary(d) for d in drafts] == [old, new]
        closed = (close(client, "up", jun1), close(client, "up", s))
        assert [summary(c) for c in closed] == [old, new]
        for draft, final in zip(drafts, closed, strict=True):
            assert final.status == invoices_pb2.INVOICE_FINAL
            for field in ("invoice_number", "status", "closed_at"):
                final.ClearField(field)
                draft.ClearField(field)
            assert final == draft
        late = rejected(client, usage("u5", "up", 1, s - 2), usage("u6", "up", 1, s + 2))
        assert late == [("u5", usage_pb2.PERIOD_CLOSED), ("u6", usage_pb2.PERIOD_CLOSED)]


def test_a_gap_between_two_contracts_rates_nothing_and_previews_no_period(server: ServerProcess) -> None:
    """`gap-a` from 2025-03-01 to Mar 10, `gap-b` from Mar 20 (overage 1). Events: Mar 10 00:00 (gap-a's end: in no
    contract, the gap's first instant) and Mar 15 are NO_ACTIVE_CONTRACT (usage.proto); Mar 10 - 1 ms is gap-a's,
    Mar 20 gap-b's. PreviewInvoice at Mar 15 is FAILED_PRECONDITION naming gap-a's period that holds it (Mar 1 -
    Apr 1); at Mar 25 gap-b's first period (Mar 20 - Apr 20): the instant is in both, the new one's is read."""
    mar10, mar20 = at("2025-03-10T00:00:00"), at("2025-03-20T00:00:00")
    with server.client() as client:
        contract(client, "gap", "gap-a", at("2025-03-01T00:00:00"), mar10)
        contract(client, "gap", "gap-b", mar20)
        events = (
            usage("g1", "gap", 1, mar10 - 1),
            usage("g2", "gap", 2, mar10),
            usage("g3", "gap", 3, at("2025-03-15T00:00:00")),
            usage("g4", "gap", 4, mar20),
        )
        assert rejected(client, *events) == [("g2", usage_pb2.NO_ACTIVE_CONTRACT), ("g3", usage_pb2.NO_ACTIVE_CONTRACT)]
        code, message = refusal(lambda: preview(client, "gap", at("2025-03-15T00:00:00")))
        assert code == grpc.StatusCode.FAILED_PRECONDITION and "gap-a" in message, message
        a, b = preview(client, "gap", at("2025-03-05T00:00:00")), preview(client, "gap", at("2025-03-25T00:00:00"))
        assert (a.contract_id, [line.quantity for line in a.lines], a.total_due) == ("gap-a", ["1"], "1.00")
        assert (b.contract_id, b.period_start.ToMilliseconds(), [line.quantity for line in b.lines], b.total_due) == (
            "gap-b",
            mar20,
            ["4"],
            "4.00",
        )


def test_a_contract_enclosing_or_swallowing_another_is_refused_naming_it_and_one_touching_it_is_taken(
    server: ServerProcess,
) -> None:
    """contracts.proto CreateContractRequest: a customer's contracts must not overlap, FAILED_PRECONDITION naming the
    contract in that time. `ov-a` from 2025-05-10 to May 20. Refused: May 1 - Jun 1 (encloses it), May 1 open-ended
    (swallows it), May 19 - May 21, May 11 - May 12 (inside it). Taken: May 1 - May 10 and May 20 open-ended."""
    may10, may20 = at("2025-05-10T00:00:00"), at("2025-05-20T00:00:00")
    with server.client() as client:
        contract(client, "ov", "ov-a", may10, may20)
        spans = [
            ("2025-05-01", "2025-06-01"),
            ("2025-05-01", None),
            ("2025-05-19", "2025-05-21"),
            ("2025-05-11", "2025-05-12"),
        ]
        for n, (start, end) in enumerate(spans):
            request = contracts_pb2.CreateContractRequest(
                id=f"ov-x{n}", customer_id="ov", rate_card_id="card", starting_at=stamp(at(f"{start}T00:00:00"))
            )
            if end is not None:
                request.ending_before.CopyFrom(stamp(at(f"{end}T00:00:00")))
            code, message = refusal(partial(client.contracts.CreateContract, request))
            assert (code, message) == (
                grpc.StatusCode.FAILED_PRECONDITION,
                "customer 'ov' already has contract 'ov-a' in that time",
            ), (start, end)
        contract(client, "ov", "ov-before", at("2025-05-01T00:00:00"), may10)
        contract(client, "ov", "ov-after", may20)
        assert rejected(client, usage("o1", "ov", 1, may10 - 1), usage("o2", "ov", 2, may20)) == []
        assert preview(client, "ov", may10 - 1).contract_id == "ov-before"
        assert preview(client, "ov", may20).contract_id == "ov-after"


def test_authorize_follows_the_contract_in_force_as_the_clock_crosses_a_switch(server: ServerProcess) -> None:
    """`live-a` from today's UTC midnight to S (a few seconds ahead; ALLOW, overage 2), `live-b` from S (BLOCK, its
    override: units at 0.5). No credit. Before S: Authorize of 2 units is OVERAGE_ALLOWED at the old price, estimate 2,
    and the balance's period is live-a's. Once the clock passes S: the same request is INSUFFICIENT_CREDIT (BLOCK, no
    credit) at the new price, estimate 1, and the balance's period is live-b's (from S), its charges 0 (the old
    contract's do not count). 3 units dated S - 1 ms, rated after S, stay live-a's: 3 credits, due 3 x 2 = 6.00."""
    now = now_ms()
    day = now - now % 86_400_000
    s = now + 4_000
    with server.client() as client:
        contract(client, "live", "live-a", day, s, overage_price="2")
        contract(client, "live", "live-b", s, overage_policy=contracts_pb2.BLOCK)
        client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id="live-b", override=contracts_pb2.PriceOverride(id="half", product_id="units", price="0.5")
            )
        )
        before = client.authorize("live", "work", values={"n": 2})
        if now_ms() >= s:
            pytest.skip("the machine took longer than the switch's lead")
        assert (before.allowed, before.reason, before.estimated_cost) == (True, "OVERAGE_ALLOWED", "2")
        assert client.get_balance("live").period_start.ToMilliseconds() == day
        while now_ms() <= s + 100:
            time.sleep(0.1)
        after = client.authorize("live", "work", values={"n": 2})
        assert (after.allowed, after.reason, after.estimated_cost) == (False, "INSUFFICIENT_CREDIT", "1")
        assert rejected(client, usage("l1", "live", 3, s - 1)) == []
        balance: balance_pb2.Balance = client.get_balance("live")
        assert (balance.period_start.ToMilliseconds(), balance.period_charges, balance.overage_amount) == (s, "0", "0")
        old = preview(client, "live", day)
        assert (old.contract_id, old.overage_amount, old.total_due) == ("live-a", "3", "6.00")


def test_a_switch_to_a_card_in_another_pricing_unit_is_refused_since_grants_are_in_one(server: ServerProcess) -> None:
    """contracts.proto Grant.amount is in the rate card's pricing unit, and a grant pays the customer's usage under
    later contracts too: so a customer's contracts price in one unit (CreateContractRequest.rate_card_id). `pu-a`
    on `card` (credits) from 2025-08-01 to S = Aug 16; `pu-b` from S on `card-eur` (pricing unit EUR, units at 1 EUR)
    would let a PREPAID grant of 10 credits bought for 10 USD pay 4 EUR of usage credit for credit (the server
    took it: the EUR invoice showed 4 EUR paid by 4 credits). It is FAILED_PRECONDITION naming pu-a and both units,
    nothing created; a contract from S on another card in credits is taken, and a customer of its own may start on
    `card-eur`."""
    rate = pricing_pb2.Rate(product_id="units", unit=pricing_pb2.UnitPrice(price="1"))
    s = at("2025-08-16T00:00:00")
    with server.client() as client:
        for card, unit in (("card-eur", "EUR"), ("card-2", "credits")):
            client.pricing.CreateRateCard(pricing_pb2.CreateRateCardRequest(id=card, pricing_unit=unit))
            client.pricing.CreateDraftVersion(
                pricing_pb2.CreateDraftVersionRequest(rate_card_id=card, upsert_rates=[rate])
            )
            publish = pricing_pb2.PublishVersionRequest(
                rate_card_id=card, version=1, effective_from=stamp(at("2025-01-01T00:00:00"))
            )
            client.pricing.PublishVersion(publish)
        contract(client, "pu", "pu-a", at("2025-08-01T00:00:00"), s)
        code, message = refusal(lambda: contract(client, "pu", "pu-b", s, rate_card_id="card-eur", currency="EUR"))
        assert (code, message) == (
            grpc.StatusCode.FAILED_PRECONDITION,
            "customer 'pu' has contract 'pu-a' priced in 'credits', the unit of its grants: "
            "rate card 'card-eur' prices in 'EUR'",
        )
        missing, _ = refusal(lambda: client.contracts.GetContract(contracts_pb2.GetContractRequest(id="pu-b")))
        assert missing == grpc.StatusCode.NOT_FOUND
        contract(client, "pu", "pu-c", s, rate_card_id="card-2")
        contract(client, "pu-eur", "pu-eur-a", s, rate_card_id="card-eur", currency="EUR")


def test_now_in_a_gap_has_no_current_period_and_authorize_is_no_active_contract(server: ServerProcess) -> None:
    """`now-a` from 2025-09-01 ending yesterday's UTC midnight, `now-b` from tomorrow's; a PROMOTIONAL grant of 5
    under now-a. Now is in the gap: balance.proto Balance has no current period (period_start and period_end unset,
    period_charges, overage_amount and overage_due "0"), its pricing unit the latest-starting contract's (credits);
    Authorize is NO_ACTIVE_CONTRACT, not allowed, answered the whole available credit, 5 (AuthorizeResponse
    credits_available); PreviewInvoice with no period_start is FAILED_PRECONDITION (invoices.proto)."""
    today = now_ms() - now_ms() % 86_400_000
    with server.client() as client:
        contract(client, "now", "now-a", at("2025-09-01T00:00:00"), today - 86_400_000)
        contract(client, "now", "now-b", today + 86_400_000)
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(id="now.g", contract_id="now-a", kind=contracts_pb2.PROMOTIONAL, amount="5")
            )
        )
        if not today + 1_000 < now_ms() < today + 86_400_000 - 1_000:
            pytest.skip("too close to midnight")
        balance = client.get_balance("now")
        assert (balance.HasField("period_start"), balance.HasField("period_end")) == (False, False)
        assert (balance.period_charges, balance.overage_amount, balance.overage_due, balance.pricing_unit) == (
            "0",
            "0",
            "0",
            "credits",
        )
        answer = client.authorize("now", "work", values={"n": 1})
        assert (answer.allowed, answer.reason, answer.credits_available) == (False, "NO_ACTIVE_CONTRACT", "5")
        request = invoices_pb2.PreviewInvoiceRequest(customer_id="now")
        code, _ = refusal(partial(client.invoices.PreviewInvoice, request))
        assert code == grpc.StatusCode.FAILED_PRECONDITION


def test_a_hold_made_under_the_old_contract_is_settled_under_the_new_ones_block_and_price(
    server: ServerProcess,
) -> None:
    """`hold-a` from today's UTC midnight to S (seconds ahead; ALLOW), `hold-b` from S (BLOCK, units at 0.5); a
    PROMOTIONAL grant of 5 under hold-a (it pays both). Before S a reserve of 4 units holds 4 (hold-a's price 1).
    After S, under BLOCK: available is 5 - 4 = 1, so 2 units (estimate 2 x 0.5 = 1) are allowed and 3 units (1.5)
    are INSUFFICIENT_CREDIT. The settling event of 4 units dated after S is hold-b's: 2 credits, the hold given back:
    the grant holds 3, nothing held; hold-b's first period charges 2, no overage."""
    now = now_ms()
    day = now - now % 86_400_000
    s = now + 4_000
    with server.client() as client:
        contract(client, "hold", "hold-a", day, s)
        contract(client, "hold", "hold-b", s, overage_policy=contracts_pb2.BLOCK)
        client.contracts.AddOverride(
            contracts_pb2.AddOverrideRequest(
                contract_id="hold-b", override=contracts_pb2.PriceOverride(id="half", product_id="units", price="0.5")
            )
        )
        client.contracts.GrantCredits(
            contracts_pb2.GrantCreditsRequest(
                grant=contracts_pb2.Grant(id="hold.g", contract_id="hold-a", kind=contracts_pb2.PROMOTIONAL, amount="5")
            )
        )
        held = client.authorize(
            "hold", "work", values={"n": 4}, reserve=True, reservation_id="hold-r", reservation_ttl_s=600
        )
        if now_ms() >= s:
            pytest.skip("the machine took longer than the switch's lead")
        assert (held.allowed, held.reason, held.estimated_cost) == (True, "OK", "4")
        assert client.get_balance("hold").credits_held == "4"
        while now_ms() <= s + 100:
            time.sleep(0.1)
        two, three = (
            client.authorize("hold", "work", values={"n": 2}),
            client.authorize("hold", "work", values={"n": 3}),
        )
        assert (two.allowed, two.reason, two.estimated_cost, two.credits_available) == (True, "OK", "1", "1")
        assert (three.allowed, three.reason, three.estimated_cost) == (False, "INSUFFICIENT_CREDIT", "1.5")
        settle = usage("h1", "hold", 4, s + 50)
        settle.reservation_id = "hold-r"
        assert rejected(client, settle) == []
        balance = client.get_balance("hold")
        assert (balance.credits_remaining, balance.credits_held, balance.period_charges, balance.overage_amount) == (
            "3",
            "0",
            "2",
            "0",
        )
        assert balance.period_start.ToMilliseconds() == s
