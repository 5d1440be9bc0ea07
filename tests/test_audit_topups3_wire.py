"""An acceptance audit of automatic top-ups over the wire against a real server, in combination with other
customers' grants (README "Automatic top-up" and "API keys": which grant ids are server-wide, which are a
customer's own; contracts.proto GrantCreditsRequest). Fixtures as tests/test_audit_topups_wire.py's: one product
at 1 credit a unit."""

from __future__ import annotations

from functools import partial

import grpc
from tariff import now_ms
from tariff.v1 import alerts_pb2, contracts_pb2

from server.convert import timestamp as stamp
from tests.audit_fixtures import preview, refusal
from tests.serverproc import ServerFactory
from tests.test_audit_topups_wire import (
    DAY_MS,
    answered,
    catalogue,
    customer,
    grants_of,
    month_start_ms,
    policy,
    set_policy,
    top_ups_of,
    use,
    watch,
)


def test_server_made_grant_ids_are_each_customers_own_while_granted_ids_are_server_wide(
    server_factory: ServerFactory,
) -> None:
    """Customers a and b, 10 credits each, below 5 back to 10 at 0.5: 6 used each buys 6, and both top-ups are
    `top-up-<period start>-1`, each customer's own (GetBalance, invoice 3.00 each, one TOP_UP_EXECUTED per
    customer for a rule watching all, naming the same grant id). c may grant under that id (not c's yet): 1
    credit; c's own top-up (8 used: 2 + 1 left, bought back to 10) then gets the id with a '+' (7 credits). A
    GrantCredits id is server-wide: a granting c's `c-g` is ALREADY_EXISTS naming only the id."""
    server = server_factory()
    cur = month_start_ms()
    made = f"top-up-{cur}-1"
    with server.client() as client:
        catalogue(client)
        rule = client.alerts.CreateAlert(alerts_pb2.CreateAlertRequest(all=True, type=alerts_pb2.TOP_UP_EXECUTED))
        contracts = {c: customer(client, c, credits="10", paid="10") for c in ("a", "b", "c")}
        for c in ("a", "b"):
            set_policy(client, contracts[c], policy("5", "10", "0.5", 2))
            use(client, c, f"{c}1", 6)
        for c in ("a", "b"):
            assert grants_of(client, c) == {f"{c}-g": ("10", "6", "4", "0"), made: ("6", "0", "6", "0")}
            assert preview(client, c, cur).top_up_purchases == "3.00"
        alerts = watch(client, 2)
        assert [(a.rule_id, a.customer_id, a.details["grant_id"], a.details["credits"]) for a in alerts] == [
            (rule.id, "a", made, "6"),
            (rule.id, "b", made, "6"),
        ]
        taken = contracts_pb2.Grant(
            id=made, contract_id=contracts["c"], kind=contracts_pb2.PREPAID, amount="1", paid_amount="1"
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=taken))
        set_policy(client, contracts["c"], policy("5", "10", "0.5", 2))
        use(client, "c", "c1", 8)
        assert top_ups_of(client, "c") == {f"{made}+": "7"}
        assert grants_of(client, "c")[made] == ("1", "0", "1", "0")
        assert preview(client, "c", cur).top_up_purchases == "3.50"
        clash = contracts_pb2.Grant(
            id="c-g", contract_id=contracts["a"], kind=contracts_pb2.PREPAID, amount="1", paid_amount="1"
        )
        code, details = refusal(lambda: client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=clash)))
        assert code == grpc.StatusCode.ALREADY_EXISTS and "c-g" in details and "'c'" not in details, details
        assert set(grants_of(client, "a")) == {"a-g", made}


def test_a_policy_whose_one_purchase_could_cost_more_than_2_pow_127_e_minus_30_is_refused_naming_recharge_to(
    server_factory: ServerFactory,
) -> None:
    """The cost of a purchase is kept exact at 10^-30 in 128 bits, so recharge_to x price_per_credit (what one
    purchase can cost at most) must not exceed (2^127 - 1) x 10^-30 = 170141183.460469231731687303715884105727,
    though each is a valid decimal (below 10^18): 200,000 credits at 1,500 KRW, and 170141183.460469231732 credits
    at 1, are INVALID_ARGUMENT naming top_up.recharge_to, nothing changed; 170141183.460469231731 at 1 is the
    policy, and a purchase of all of it (1 credit, 1 used: 0 left, below 1) costs 170141183.460469231731, due
    170141183 KRW (no minor unit, half-even)."""
    server = server_factory()
    cur = month_start_ms()
    with server.client() as client:
        catalogue(client)
        contract_id = customer(client, "w", credits="1", paid="1", currency="KRW")
        for recharge_to, price in (("200000", "1500"), ("170141183.460469231732", "1")):
            over = policy("1", recharge_to, price, 1)
            code, details = refusal(partial(set_policy, client, contract_id, over))
            assert code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("top_up.recharge_to"), details
            assert not client.contracts.GetContract(contracts_pb2.GetContractRequest(id=contract_id)).HasField("top_up")
        set_policy(client, contract_id, policy("1", "170141183.460469231731", "1", 1))
        use(client, "w", "w1", 1)
        assert top_ups_of(client, "w") == {f"top-up-{cur}-1": "170141183.460469231731"}
        assert preview(client, "w", cur).top_up_purchases == "170141183"


def test_the_one_policy_of_a_customer_is_priced_in_the_currency_of_the_contract_it_was_set_through(
    server_factory: ServerFactory,
) -> None:
    """k1 (USD) from two months back until two days into the previous month, then k2 (JPY). The policy, set through
    k1 (below 5 back to 10 at 0.9), is the customer's: k2 shows it too. 10 credits; 6 used on the previous month's
    first day (k1's last period) buys 6 there: 6 x 0.9 = 5.40 USD on k1's invoice; 6 used now (4 from the grant, 2
    from that top-up: 4 left) buys nothing in k2's period: the price is USD's, not JPY's (it used to buy 6 at 0.9
    JPY, 5 JPY due; tests/test_audit_switch_topup_wire.py has the policy set again in JPY)."""
    server = server_factory()
    first, prev = month_start_ms(2), month_start_ms(1)
    switch = prev + 2 * DAY_MS
    with server.client() as client:
        catalogue(client)
        client.contracts.CreateCustomer(contracts_pb2.CreateCustomerRequest(id="x", name="x"))
        for contract_id, start, end, currency in (("k1", first, switch, "USD"), ("k2", switch, None, "JPY")):
            request = contracts_pb2.CreateContractRequest(
                id=contract_id, customer_id="x", rate_card_id="card", starting_at=stamp(start), currency=currency
            )
            if end is not None:
                request.ending_before.CopyFrom(stamp(end))
            client.contracts.CreateContract(request)
        grant = contracts_pb2.Grant(
            id="x-g", contract_id="k1", kind=contracts_pb2.PREPAID, amount="10", paid_amount="10"
        )
        client.contracts.GrantCredits(contracts_pb2.GrantCreditsRequest(grant=grant))
        top_up = policy("5", "10", "0.9", 2)
        set_policy(client, "k1", top_up)
        assert client.contracts.GetContract(contracts_pb2.GetContractRequest(id="k2")).top_up == answered(top_up)
        use(client, "x", "x1", 6, prev + DAY_MS)
        use(client, "x", "x2", 6)
        now = now_ms()
        current = preview(client, "x", now)
        assert top_ups_of(client, "x") == {f"top-up-{prev}-1": "6"}
        previous = preview(client, "x", prev)
        assert (previous.contract_id, previous.currency, previous.top_up_purchases) == ("k1", "USD", "5.40")
        assert (current.contract_id, current.currency, current.top_up_purchases) == ("k2", "JPY", "0")
